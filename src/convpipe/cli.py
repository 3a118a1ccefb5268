"""The ``convpipe`` command: parses arguments, calls the API, turns errors into one line.

Exit status (README, "Exit status"): 0 success, 2 bad usage or config, 1 a failure while
running, 130 interrupted (SIGINT), 143 terminated (SIGTERM, what SLURM sends at walltime and
Kubernetes at eviction). ``--debug`` shows the traceback instead of the one-line message.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import click

from convpipe import config as config_module
from convpipe import report
from convpipe._version import __version__
from convpipe.errors import ConvpipeError
from convpipe.memory import use_one_arena
from convpipe.run import LEASE_SECONDS, check_output, make_plan, run

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
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Run chains of convolution filters over images larger than memory.

    \b
    Example:
      convpipe validate configs/edges.yaml
      convpipe plan configs/edges.yaml
      convpipe run configs/edges.yaml --set pipeline[0].sigma=3
    """


@cli.command("run")
@config_argument
@set_option
@click.option(
    "--scheduler",
    help="threads (default), processes, sync, local-cluster, or a dask.distributed scheduler address "
    "(tcp://host:8786). Without it, a config's cluster: section starts batch jobs.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Threads, processes or cluster workers (default: all cores)."
)
@click.option("--memory-limit", help="Memory per worker for --scheduler local-cluster, e.g. 4GB (default: auto).")
@memory_option
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--resume", is_flag=True, help="Finish an interrupted output: write only its missing blocks.")
@click.option(
    "--lock-lease",
    type=click.FloatRange(min=2, max=86400),
    default=LEASE_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="How long the output's lease lasts unrenewed: a run that died holding it is taken over after this.",
)
@click.option("--dry-run", is_flag=True, help="Check and plan, print the plan, write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary.")
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
) -> None:
    """$ convpipe run CONFIG: compute the chain and write the output, block by block.

    Shows a progress bar on a terminal and a progress line every 10 s in a batch log.

    \b
    Example:
      convpipe run configs/edges.yaml --overwrite --set output.dtype=uint16
      convpipe run configs/edges.yaml --resume      # after a crash or a walltime kill
    """
    config = config_module.load(config_path, overrides)
    if dry_run:
        plan = make_plan(config, memory, workers)
        check_output(config, plan, overwrite=overwrite or config.output.overwrite, resume=resume)
        click.echo(report.describe_plan(plan, workers, memory))
        return
    progress = None if quiet else ("bar" if sys.stderr.isatty() else "log")
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
        plan = result.plan
        if resume and result.blocks == 0 and result.resumed_from == plan.num_blocks:
            click.echo(f"{result.output} is already complete; nothing to do", err=True)
            return
        resumed = f" (resumed: {result.resumed_from} were already there)" if result.resumed_from else ""
        click.echo(
            f"wrote {result.output}: {plan.output_shape} {plan.output_dtype}, "
            f"{result.blocks} blocks in {result.seconds:.1f} s (task graph {result.graph_seconds:.3f} s){resumed}",
            err=True,
        )


@cli.command("validate")
@config_argument
@set_option
def validate_command(config_path: Path, overrides: tuple[str, ...]) -> None:
    """$ convpipe validate CONFIG: check the config and the input's shape; read no pixels.

    \b
    Example:
      convpipe validate configs/edges.yaml && echo ok
    """
    config = config_module.load(config_path, overrides)
    plan = make_plan(config)
    click.echo(
        f"ok: {config_path}: input {plan.input_shape} {plan.input_dtype} -> "
        f"output {plan.output_shape} {plan.output_dtype}, {len(plan.steps)} steps, {plan.num_blocks} blocks"
    )


@cli.command("plan")
@config_argument
@set_option
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Workers to estimate memory for (default: all cores).",
)
@memory_option
def plan_command(config_path: Path, overrides: tuple[str, ...], workers: int | None, memory: int | None) -> None:
    """$ convpipe plan CONFIG: steps, pads, halos, shapes, blocks and memory; reads no pixels.

    \b
    Example:
      convpipe plan configs/edges.yaml --set input.chunks=[1024,1024]
    """
    config = config_module.load(config_path, overrides)
    click.echo(report.describe_plan(make_plan(config, memory, workers), workers, memory))


@cli.command("info")
@click.argument("path")
def info_command(path: str) -> None:
    """$ convpipe info PATH: shape, dtype, chunks, axes, codecs of a TIFF or Zarr; for an output,
    whether it is complete.

    \b
    Example:
      convpipe info out/edges.zarr
    """
    from convpipe.io.info import describe

    click.echo(report.describe_info(describe(path)))


@cli.command("filters")
def filters_command() -> None:
    """$ convpipe filters: every filter and its keys.

    \b
    Example:
      convpipe filters | grep -A3 gaussian
    """
    click.echo(report.describe_filters())


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
    """$ convpipe preview CONFIG: a PNG of the input and the output side by side.

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


def main(argv: list[str] | None = None) -> None:
    """Entry point: one readable line per error, and the documented exit status."""
    use_one_arena()  # this process is ours: see convpipe.memory
    signal.signal(signal.SIGTERM, _terminate)
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="convpipe", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.UsageError as error:
        command = f" {error.ctx.info_name}" if error.ctx is not None and error.ctx.parent is not None else ""
        click.echo(f"convpipe: error: {error.format_message()} (see convpipe{command} --help)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        click.echo(f"convpipe: error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except (click.Abort, KeyboardInterrupt) as stop:
        # Blocks being written when the interrupt came have finished (and are recorded);
        # zarr's event loop would log their cancelled reads as errors.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # click turns a KeyboardInterrupt (Terminated included) into Abort, raised from it
        terminated = isinstance(stop, Terminated) or isinstance(stop.__cause__, Terminated)
        what, status = ("terminated (SIGTERM)", 143) if terminated else ("interrupted", 130)
        resume = " (run it again with --resume to finish a partial output)" if _running(args) else ""
        click.echo(f"convpipe: {what}{resume}", err=True)
        if argv is None:
            # The command's own process: the lease is released and the blocks in flight are
            # written, so leave now. A normal interpreter shutdown could meet a store request
            # still completing in obstore's runtime threads and abort (PyO3/pyo3#4874).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        sys.exit(status)
    except ConvpipeError as error:
        if debug:
            raise
        click.echo(f"convpipe: error: {error}", err=True)
        sys.exit(error.exit_code)
    except Exception as error:
        if debug:
            raise
        from convpipe.io.stores import redact

        click.echo(
            redact(f"convpipe: internal error: {type(error).__name__}: {error} (rerun with --debug for details)"),
            err=True,
        )
        sys.exit(1)
    sys.exit(0)


def _running(args: list[str]) -> bool:
    return "run" in args and "--dry-run" not in args
