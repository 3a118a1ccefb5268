"""The ``convpipe`` command: parses arguments, calls the API, turns errors into one line.

Exit status (README, "Exit status"): 0 success, 2 bad usage or config, 1 a failure while
running, 130 interrupted (SIGINT), 143 terminated (SIGTERM, what SLURM sends at walltime and
Kubernetes at eviction). ``--debug``, anywhere on the line, shows the traceback before the
one-line message (the exit status stays the same) and lets Python's warnings through.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shlex
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import click

from convpipe import config as config_module
from convpipe import report
from convpipe._version import __version__
from convpipe.errors import ConvpipeError
from convpipe.memory import tune_allocator
from convpipe.plan import Plan
from convpipe.run import LEASE_SECONDS, check_run, make_plan, run

F = TypeVar("F", bound=Callable[..., object])

config_argument = click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False, path_type=Path))


def _parse_memory(context: click.Context, parameter: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(value))
    except (ValueError, TypeError):
        raise click.BadParameter(f"expected a size like 2GB or 512MiB (got {value!r})") from None


memory_option = click.option(
    "--memory",
    callback=_parse_memory,
    metavar="SIZE",
    help="Memory budget for the whole run, e.g. 2GB: blocks shrink until the estimate fits.",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set pipeline[0].sigma=3 (repeatable).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="convpipe")
@click.option(
    "--debug",
    is_flag=True,
    help="Show tracebacks above the one-line errors, and Python's warnings (anywhere on the line).",
)
def cli(debug: bool) -> None:
    """Run chains of convolution filters over images larger than memory.

    \b
    Example:
      convpipe validate configs/edges.yaml
      convpipe plan configs/edges.yaml
      convpipe run configs/edges.yaml --set pipeline[0].sigma=3
    """


scheduler_option = click.option(
    "--scheduler",
    help="threads (default), processes, sync, local-cluster, or a dask.distributed scheduler address "
    "(tcp://host:8786). Without it, a config's cluster: section starts batch jobs.",
)
workers_option = click.option(
    "--workers", type=click.IntRange(min=1), help="Threads, processes or cluster workers (default: all cores)."
)
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
resume_option = click.option(
    "--resume", is_flag=True, help="Finish an interrupted output: write only its missing blocks."
)


def json_option(what: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON on stdout, for scripts.")


@cli.command("run")
@config_argument
@set_option
@scheduler_option
@workers_option
@click.option("--memory-limit", help="Memory per worker for --scheduler local-cluster, e.g. 4GB (default: auto).")
@memory_option
@overwrite_option
@resume_option
@click.option(
    "--lock-lease",
    type=click.FloatRange(min=2, max=86400),
    default=LEASE_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="How long the output's lease lasts unrenewed: a run that died holding it is taken over after this.",
)
@click.option("--dry-run", is_flag=True, help="Make every check the run makes, print the plan, write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary.")
@json_option("a last line summing up the run (with --dry-run: the plan)")
def run_command(
    config_path: Path,
    overrides: tuple[str, ...],
    scheduler: str | None,
    workers: int | None,
    memory_limit: str | None,
    memory: int | None,
    overwrite: bool,
    resume: bool,
    lock_lease: float,
    dry_run: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Compute the chain and write the output, block by block.

    Shows a progress bar on a terminal and a progress line every 10 s in a batch log.

    \b
    Example:
      convpipe run configs/edges.yaml --overwrite --set output.dtype=uint16
      convpipe run configs/edges.yaml --resume      # after a crash or a walltime kill
    """
    config = config_module.load(config_path, overrides)
    _STREAMED[0] = config_module.output_format(config.output, "") in config_module.TIFF_FORMATS
    if dry_run:
        checked = check_run(
            config, scheduler_name=scheduler, workers=workers, memory=memory, overwrite=overwrite or None, resume=resume
        )
        _print_plan(checked.plan, workers, memory, as_json, config_path, config.output.location.display)
        return
    progress = None if quiet else ("bar" if sys.stderr.isatty() else "log")
    with _announcing(not quiet):
        result = run(
            config,
            scheduler_name=scheduler,
            workers=workers,
            memory_limit=memory_limit,
            memory=memory,
            overwrite=overwrite or None,
            resume=resume,
            progress=progress,
            lease_seconds=lock_lease,
            notify=None if quiet else lambda message: click.echo(f"convpipe: {message}", err=True),
        )
    if result.took_over and not quiet:
        click.echo(f"took over {result.output} from a run that stopped ({result.took_over})", err=True)
    if not quiet:
        click.echo(report.describe_run(result, resume), err=True)
    if as_json:
        click.echo(report.to_json(report.run_data(result), indent=None))


@cli.command("validate")
@config_argument
@set_option
@scheduler_option
@workers_option
@memory_option
@overwrite_option
@resume_option
@json_option("the result")
def validate_command(
    config_path: Path,
    overrides: tuple[str, ...],
    scheduler: str | None,
    workers: int | None,
    memory: int | None,
    overwrite: bool,
    resume: bool,
    as_json: bool,
) -> None:
    """Make every check `convpipe run` makes before computing, with the same options and exit
    status; read no pixels. One difference: an output already there (which `run` replaces
    only with --overwrite, or finishes with --resume) is reported, not refused, unless one of
    those flags is given: the config is valid whatever a run left.

    \b
    Example:
      convpipe validate configs/edges.yaml && echo ok
      convpipe validate configs/edges.yaml --overwrite --scheduler processes
    """
    config = config_module.load(config_path, overrides)
    as_run = overwrite or resume or config.output.overwrite
    checked = check_run(
        config,
        scheduler_name=scheduler,
        workers=workers,
        memory=memory,
        overwrite=overwrite or (None if as_run else True),  # what --overwrite may replace is checked
        resume=resume,
    )
    existing = None if as_run or checked.found == "missing" else config.output.location.display
    if as_json:
        data = report.validated_data(config_path, config.output.location.display, checked.plan)
        click.echo(report.to_json({**data, "output_exists": checked.found != "missing"}))
    else:
        click.echo(report.describe_validated(config_path, checked.plan))
        if existing is not None:
            click.echo(f"note: {existing} exists: `convpipe run` needs --overwrite to replace it or --resume")


@cli.command("plan")
@config_argument
@set_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Workers to estimate memory for (default: all cores).",
)
@memory_option
@json_option("the plan")
def plan_command(
    config_path: Path, overrides: tuple[str, ...], workers: int | None, memory: int | None, as_json: bool
) -> None:
    """Steps, pads, halos, shapes, blocks and memory; reads no pixels.

    \b
    Example:
      convpipe plan configs/edges.yaml --set input.chunks=[1024,1024]
      convpipe plan configs/edges.yaml --json | python -m json.tool
    """
    config = config_module.load(config_path, overrides)
    plan = make_plan(config, memory, workers)
    _print_plan(plan, workers, memory, as_json, config_path, config.output.location.display)


def _print_plan(
    plan: Plan, workers: int | None, memory: int | None, as_json: bool, config_path: Path, output: str
) -> None:
    if as_json:
        data = report.plan_data(plan, workers, memory, config=str(config_path), output_path=output)
        click.echo(report.to_json(data))
    else:
        click.echo(report.describe_plan(plan, workers, memory))


@cli.command("info")
@click.argument("path")
@json_option("what the file holds")
def info_command(path: str, as_json: bool) -> None:
    """Shape, dtype, chunks, axes, codecs of a TIFF or Zarr; for an output, its provenance and
    whether it is complete.

    \b
    Example:
      convpipe info out/edges.zarr
      convpipe info out/edges.zarr --json
    """
    from convpipe.io.info import describe

    info = describe(path)
    click.echo(report.to_json(info) if as_json else report.describe_info(info))


@cli.command("filters")
@json_option("the filters and their keys")
def filters_command(as_json: bool) -> None:
    """Every filter and its keys.

    \b
    Example:
      convpipe filters | grep -A3 gaussian
    """
    click.echo(report.to_json(report.filters_data()) if as_json else report.describe_filters())


@cli.command("preview")
@config_argument
@click.option(
    "-o",
    "--output",
    "output_png",
    required=True,
    metavar="PNG",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The picture to write (.png); an existing one is replaced.",
)
@click.option(
    "--region",
    metavar="Y0:Y1,X0:X1",
    help="Only this part, in input pixels: one start:stop per spatial axis (z0:z1,y0:y1,x0:x1 for 3-D, "
    "or just y and x for the middle z slice). Default: the whole image, shrunk to 1024 px.",
)
@set_option
def preview_command(config_path: Path, output_png: Path, region: str | None, overrides: tuple[str, ...]) -> None:
    """A PNG of the input and the output side by side.

    One panel each, with a title and a colour bar, drawn in the same coordinates (input pixels, or
    the physical units the input's file gives).
    With --region only the blocks that region needs are computed, and the output panel shows
    the output samples whose input position falls in the region (strides taken into account).
    Without it, both panels are an overview of the whole image: means of f x f pixels, at most
    1024 px along the long side. 3-D data shows the middle z slice; t and c show index 0.
    Nothing is written but the PNG.

    \b
    Example:
      convpipe preview configs/edges.yaml -o out/preview.png
      convpipe preview configs/edges.yaml -o out/detail.png --region 8000:9024,8000:9024
      convpipe preview configs/volume-3d.yaml -o out/vol.png --region 0:512,0:512
    """
    from convpipe.preview import preview

    config = config_module.load(config_path, overrides)
    result = preview(config, output_png, region)
    click.echo(
        f"wrote {result.path}: input {result.input.shape[0]}×{result.input.shape[1]}, "
        f"output {result.output.shape[0]}×{result.output.shape[1]} shown, in {result.seconds:.1f} s",
        err=True,
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a run stops as it does on Ctrl-C: blocks in
    flight finish, the lease is released, the output stays partial and resumable."""


def _terminate(signum: int, frame: object) -> None:
    # Once: a second SIGTERM or Ctrl-C must not cut short the wait for the blocks in flight.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated()


#: Longest error line printed (one once echoed a list of millions of items built from YAML aliases).
MAX_LINE = 500


def _line(text: str) -> str:
    """One readable line: cut at ``MAX_LINE`` characters, saying so."""
    text = " ".join(text.split("\n"))
    if len(text) <= MAX_LINE:
        return text
    return text[:MAX_LINE] + f"… (cut at {MAX_LINE} of {len(text)} characters; --debug shows it all)"


def _say(text: str) -> None:
    click.echo(_line(text), err=True)


@contextlib.contextmanager
def _quiet(debug: bool, own_process: bool) -> Iterator[None]:
    """Outside --debug, no Python warnings (RuntimeWarning, ZarrUserWarning, ...) and no asyncio
    log lines ("Task was destroyed but it is pending!") on stderr: the user cannot act on them,
    and errors come as one line anyway. Worker processes inherit it through PYTHONWARNINGS. In
    the command's own process this lasts until exit (pending tasks are reported at shutdown);
    called in-process (tests, notebooks) it is undone afterwards."""
    if debug:
        yield
        return
    asyncio_log = logging.getLogger("asyncio")
    saved = (asyncio_log.level, os.environ.get("PYTHONWARNINGS"))
    with contextlib.ExitStack() as stack:
        if not own_process:
            stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        os.environ["PYTHONWARNINGS"] = "ignore"
        asyncio_log.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            if not own_process:
                asyncio_log.setLevel(saved[0])
                if saved[1] is None:
                    os.environ.pop("PYTHONWARNINGS", None)
                else:
                    os.environ["PYTHONWARNINGS"] = saved[1]


class _Announce(logging.Handler):
    """convpipe's log messages (the dashboard's address) as ``convpipe: ...`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"convpipe: {record.getMessage()}", err=True)


@contextlib.contextmanager
def _announcing(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    log = logging.getLogger("convpipe")
    handler, level = _Announce(logging.INFO), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one readable line per error, and the documented exit status."""
    if argv is None:  # the command's own process, not a caller's (a test, a notebook)
        tune_allocator()  # see convpipe.memory
        # What is alive now (the imported modules, mostly) lives as long as the command:
        # frozen, the collector stops rescanning it through the run (README, "Performance").
        gc.freeze()
    signal.signal(signal.SIGTERM, _terminate)
    given = sys.argv[1:] if argv is None else argv
    debug = "--debug" in given  # anywhere on the line, before or after the command
    args = [a for a in given if a != "--debug"]
    with _quiet(debug, own_process=argv is None):
        status = _main(args, debug, own_process=argv is None)
    sys.exit(status)


def _main(args: list[str], debug: bool, *, own_process: bool) -> int:
    """Run the command; returns its exit status."""
    try:
        cli.main(args=args, prog_name="convpipe", standalone_mode=False)
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.UsageError as error:
        command = f" {error.ctx.info_name}" if error.ctx is not None and error.ctx.parent is not None else ""
        _say(f"convpipe: error: {error.format_message()} (see convpipe{command} --help)")
        return error.exit_code
    except click.ClickException as error:
        _say(f"convpipe: error: {error.format_message()}")
        return error.exit_code
    except (click.Abort, KeyboardInterrupt) as stop:
        # Blocks being written when the interrupt came have finished (and are recorded);
        # zarr's event loop would log their cancelled reads as errors.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # click turns a KeyboardInterrupt (Terminated included) into Abort, raised from it
        terminated = isinstance(stop, Terminated) or isinstance(stop.__cause__, Terminated)
        what, status = ("terminated (SIGTERM)", 143) if terminated else ("interrupted", 130)
        _say(f"convpipe: {what}{_how_to_finish(args)}")
        if own_process:
            # The command's own process: the lease is released and the blocks in flight are
            # written, so leave now. A normal interpreter shutdown could meet a store request
            # still completing in obstore's runtime threads and abort (PyO3/pyo3#4874).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        return status
    except ConvpipeError as error:
        if debug:
            traceback.print_exc()
        _say(f"convpipe: error: {error}")
        return error.exit_code
    except Exception as error:
        if debug:
            traceback.print_exc()
            return 1
        from convpipe.io.stores import redact

        _say(redact(f"convpipe: internal error: {type(error).__name__}: {error} (rerun with --debug for details)"))
        return 1
    return 0


#: Whether the run in this process writes a GeoTIFF or COG: published only when whole, so an
#: interrupted one is written again, not resumed.
_STREAMED = [False]


def _how_to_finish(args: list[str]) -> str:
    """For an interrupted ``run``: the command that finishes its output (README, "Resume")."""
    words = [a for a in args if not a.startswith("-")]
    if not words or words[0] != "run" or "--dry-run" in args:
        return ""
    if _STREAMED[0]:
        return f"; the file was left as it was; write it with: convpipe {shlex.join(args)}"
    again = [a for a in args if a != "--overwrite"]
    if "--resume" not in again:
        again.append("--resume")
    return f"; finish the output with: convpipe {shlex.join(again)}"
