"""Every code block of the README runs as written, so the README can never drift from the tool.

The blocks run in README order in one project folder: a copy of ``configs/`` and ``scripts/``
with ``.venv`` linked, in the state the demo leaves (a sample image, smaller than the demo's,
and ``out/edges.zarr``). Shell blocks run in bash with ``set -euo pipefail``; of a ``console``
block, the ``$`` lines. What a test machine cannot do is replaced, each in one place below:
``pip install`` lines are checked against the installed packages instead of run, the two
setup commands are checked to be what CI runs, ``sbatch`` runs its job script in the
foreground, and the local S3 server listens on a free port instead of 9000.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

import convpipe
from convpipe.io import zarr_output

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, for test ids and messages
    language: str
    text: str

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.language}"


def readme_blocks() -> list[Block]:
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            if language is None:
                language, start, lines = line[3:].strip(), number, []
            else:
                blocks.append(Block(start, language, "\n".join(lines) + "\n"))
                language = None
        elif language is not None:
            lines.append(line)
    assert language is None, "an unclosed code block"
    return [b for b in blocks if b.language]  # untagged blocks are diagrams


BLOCKS = readme_blocks()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder as the demo leaves it, with a 1024² sample instead of 16384²."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "configs", folder / "configs")
    shutil.copytree(ROOT / "scripts", folder / "scripts")
    (folder / ".venv").symlink_to(ROOT / ".venv" if (ROOT / ".venv").exists() else VENV_BIN.parent)
    fake = folder / "fake-bin"
    fake.mkdir()
    sbatch = fake / "sbatch"
    # the job script, in the foreground, with the cores SLURM would give it
    sbatch.write_text('#!/bin/bash\nSLURM_CPUS_PER_TASK=2 exec bash "$@"\n')
    sbatch.chmod(0o755)
    for command in (
        [sys.executable, "scripts/make_sample.py", "--shape", "1024", "1024"],
        [str(VENV_BIN / "convpipe"), "run", "configs/edges.yaml", "--overwrite", "--quiet"],
    ):
        subprocess.run(command, cwd=folder, check=True, capture_output=True, env=shell_env(folder))
    return folder


def shell_env(folder: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{folder / 'fake-bin'}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


def pip_installs(script: str) -> list[str]:
    """The requirements of a block's ``pip install`` lines."""
    found = []
    for line in script.splitlines():
        words = line.split("#")[0].split()
        if words[:2] == ["pip", "install"]:
            found += [w.strip("'\"") for w in words[2:] if not w.startswith("-")]
    return found


def shell_script(block: Block) -> str:
    lines = block.text.splitlines()
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    kept = []
    for line in lines:
        command = line.split("#")[0].strip()
        if command.startswith("pip install") or command in ("./scripts/demo", "./scripts/test"):
            continue  # checked by the test instead (module docstring)
        kept.append(line)
        if command.endswith("&"):  # a server started in the background: wait until it listens
            kept.append('for _ in $(seq 100); do (: </dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done')
    return "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "\n".join(kept) + "\n"


def run_shell(block: Block, project: Path) -> subprocess.CompletedProcess[str]:
    port = free_port()
    script = shell_script(block).replace("9000", str(port))
    env = {**shell_env(project), "PORT": str(port)}
    return subprocess.run(["bash", "-c", script], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def check_setup_commands(block: Block) -> None:
    """The two setup commands are what a fresh machine runs in CI."""
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("./scripts/demo", "./scripts/test"):
        if command in block.text:
            assert command in ci, f"README line {block.line}: {command} is not what .ci/run runs"


def check_yaml(block: Block, project: Path) -> None:
    data = yaml.safe_load(block.text)
    named = re.match(r"# (configs/\S+\.yaml)", block.text)
    if named:  # a config file shown whole: the README shows it as it is
        assert data == yaml.safe_load((ROOT / named[1]).read_text()), (
            f"README line {block.line} differs from {named[1]}"
        )
    if "pipeline" not in data:  # a section of a config: shown inside the demo's
        data = {**yaml.safe_load((project / "configs" / "edges.yaml").read_text()), **data}
    convpipe.from_dict(data, base_dir=project / "configs")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_code_block_runs_as_written(
    block: Block, project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for requirement in pip_installs(block.text):
        name = re.split(r"[\[<>=]", requirement)[0]
        if name != ".":
            assert importlib.util.find_spec(name.replace("-", "_")), f"README line {block.line}: {name} missing"
        else:
            assert (ROOT / "pyproject.toml").exists()
    check_setup_commands(block)
    if block.language == "yaml":
        check_yaml(block, project)
    elif block.language == "python" and block.text.startswith("# Snakefile"):
        check_snakemake(block, project, tmp_path)
    elif block.language == "python":
        monkeypatch.chdir(project)
        exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})
    elif block.language == "groovy":
        check_nextflow(block, project, tmp_path)
    elif block.language in ("bash", "console"):
        done = run_shell(block, project)
        assert done.returncode == 0, f"README line {block.line}: exit {done.returncode}\n{done.stderr[-3000:]}"
    else:
        pytest.fail(f"README line {block.line}: no way to run a {block.language!r} block")


def test_every_kind_of_block_is_run() -> None:
    """A block in a language the test does not know fails above; this one guards the parser."""
    kinds = {b.language for b in BLOCKS}
    assert {"bash", "console", "yaml", "python", "groovy"} <= kinds
    assert len(BLOCKS) >= 12


# --- workflow managers: the rule's command, killed and run again --------------------------------


def resumable_project(folder: Path) -> Path:
    """An input and a config with many small blocks, so that a run can be killed part way."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    image = (rng.random((1152, 1152)) * 60000).astype(np.uint16)
    zarr.create_array(str(folder / "in.zarr"), data=image, chunks=(64, 64))
    config = {
        "input": {"path": "in.zarr", "chunks": [96, 96]},
        "output": {"path": "out/edges.zarr"},
        "pipeline": [{"filter": "gaussian", "sigma": 3.0}, {"filter": "median", "size": 5}, {"filter": "sobel"}],
    }
    path = folder / "edges.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def digest(path: Path) -> dict[str, bytes]:
    return {
        str(file.relative_to(path)): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file() and ".convpipe-lock" not in file.parts
    }


def kill_part_way(command: str, cwd: Path, output: Path, env: dict[str, str]) -> None:
    """Run ``command`` in bash and SIGKILL its process group once some blocks are written."""
    process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not output.exists() or zarr_output.count_written(str(output)) < 40:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert zarr.open_array(str(output), mode="r").attrs["convpipe"]["complete"] is False


def uninterrupted(command: str, cwd: Path, output: Path, env: dict[str, str]) -> dict[str, bytes]:
    """The output of ``command`` run to the end undisturbed, then removed for the real test."""
    subprocess.run(["bash", "-c", command], cwd=cwd, env=env, check=True, timeout=300)
    found = digest(output)
    shutil.rmtree(output)
    return found


def check_snakemake(block: Block, project: Path, tmp_path: Path) -> None:
    shell = re.search(r'shell:\s*"(.*)"', block.text)
    assert shell, f"README line {block.line}: no shell command in the rule"
    config = resumable_project(tmp_path / "snake")
    summary = tmp_path / "snake" / "out" / "edges.json"
    summary.parent.mkdir()  # Snakemake makes an output's folder before the job runs
    command = shell[1].replace("{input.config}", str(config)).replace("{output}", str(summary))
    output, folder, env = tmp_path / "snake" / "out" / "edges.zarr", tmp_path / "snake", shell_env(project)
    expected = uninterrupted(command, folder, output, env)
    kill_part_way(command, folder, output, env)
    subprocess.run(["bash", "-c", command], cwd=folder, env=env, check=True, timeout=300)
    assert digest(output) == expected
    assert convpipe_summary(summary)["output"].endswith("edges.zarr")


def check_nextflow(block: Block, project: Path, tmp_path: Path) -> None:
    script = re.search(r'"""\n(.*?)\n\s*"""', block.text, re.S)
    assert script, f"README line {block.line}: no script in the process"
    config = resumable_project(tmp_path / "nf")
    output = tmp_path / "nf" / "results" / "edges.zarr"
    command = script[1].strip().replace("${config}", str(config)).replace("${params.out}", str(output))
    first, retry = tmp_path / "work" / "a1", tmp_path / "work" / "b2"  # a retry gets a new work directory
    first.mkdir(parents=True)
    retry.mkdir(parents=True)
    env = shell_env(project)
    expected = uninterrupted(command, first, output, env)
    kill_part_way(command, first, output, env)
    subprocess.run(["bash", "-c", command], cwd=retry, env=env, check=True, timeout=300)
    assert digest(output) == expected
    assert convpipe_summary(retry / "edges.json")["output"].endswith("edges.zarr")


def convpipe_summary(path: Path) -> dict[str, object]:
    lines = path.read_text().strip().splitlines()
    assert lines, f"{path} is empty"
    return json.loads(lines[-1])
