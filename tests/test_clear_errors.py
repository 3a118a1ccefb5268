"""Failures that were "internal error" are one clear line with the documented exit status.

README, "Commands and exit status": exit 2 for a config or usage problem, 1 for a failure
while reading or running; one line on stderr naming the thing; nothing written. Also: inputs
recognised by content, `--set` paths relative to the current directory, the `filters` text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from cli_tools import assert_one_line_error, invoke
from conftest import tmpfs


def setup(folder: Path, output: str = "out.zarr", input_path: str = "in.zarr", step: str = "{filter: box}") -> Path:
    if not (folder / "in.zarr").exists():
        zarr.create_array(str(folder / "in.zarr"), data=np.arange(40 * 50, dtype=np.uint16).reshape(40, 50))
    config = folder / "config.yaml"
    config.write_text(f"input: {{path: {input_path}}}\noutput: {{path: {output}}}\npipeline:\n  - {step}\n")
    return config


# --- 3. output locations -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["validate"], ["run", "--quiet"]], ids=lambda c: c[0])
@pytest.mark.parametrize("output", ["afile/out.zarr", "afile/deeper/out.tif"])
def test_clear_errors_output_under_a_regular_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], output: str
) -> None:
    (tmp_path / "afile").write_text("mine")
    code, _, err = invoke(capsys, *command, setup(tmp_path, output))
    assert code == 2, err
    assert_one_line_error(err, "output.path", f"{tmp_path / 'afile'} is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "config.yaml", "in.zarr"]


@pytest.mark.parametrize("link", ["dangling.zarr", "dangling/out.zarr", "dangling.tif"])
def test_clear_errors_output_through_a_dangling_symlink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str
) -> None:
    name = link.split("/")[0]
    (tmp_path / name).symlink_to(tmp_path / "nowhere" / "x")
    code, _, err = invoke(capsys, "run", "--quiet", setup(tmp_path, link))
    assert code == 2, err
    assert_one_line_error(err, "output.path", f"{tmp_path / name} is a symbolic link to", "which does not exist")
    assert not (tmp_path / "nowhere").exists()
    assert not list(tmp_path.glob("*.convpipe-lock"))


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write in: a read-only tmpfs for root (whom permissions do not stop;
    skipped where mount is not permitted), else a folder without write permission."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with tmpfs(folder, "ro,size=64k"):
        yield folder


@pytest.mark.parametrize("output", ["ro/out.zarr", "ro/out.tif"])
def test_clear_errors_output_on_a_read_only_mount(
    tmp_path: Path, read_only_folder: Path, capsys: pytest.CaptureFixture[str], output: str
) -> None:
    code, _, err = invoke(capsys, "run", "--quiet", setup(tmp_path, output))
    assert code == 2, err
    why = "read-only filesystem" if os.geteuid() == 0 else "not writable"
    assert_one_line_error(err, "output.path", str(read_only_folder), why)
    assert list(read_only_folder.iterdir()) == []


# --- 3. inputs and schedulers --------------------------------------------------------------------


def test_clear_errors_ome_zarr_dataset_without_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(capsys, "run", "--quiet", setup(tmp_path, "image.ome.zarr"))
    assert code == 0, err
    metadata = tmp_path / "image.ome.zarr" / "zarr.json"
    document = json.loads(metadata.read_text())
    del document["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"]
    metadata.write_text(json.dumps(document))
    code, _, err = invoke(capsys, "run", "--quiet", setup(tmp_path, "again.zarr", input_path="image.ome.zarr"))
    assert code == 1, err
    assert_one_line_error(err, "image.ome.zarr", 'datasets[0] has no "path"', "input.array")
    assert not (tmp_path / "again.zarr").exists()


@pytest.mark.parametrize("address", ["tcp://[::1", "tcp://host:port", "tcp://"])
def test_clear_errors_malformed_scheduler_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    code, _, err = invoke(capsys, "run", "--quiet", setup(tmp_path), "--scheduler", address)
    assert code == 2, err
    assert_one_line_error(err, "--scheduler", "is not a scheduler address like tcp://host:8786")
    assert not (tmp_path / "out.zarr").exists()


# --- 4. types by content -------------------------------------------------------------------------


def test_clear_errors_a_tiff_is_read_whatever_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    tifffile.imwrite(tmp_path / "scan.dat", image)
    code, _, err = invoke(capsys, "run", "--quiet", setup(tmp_path, input_path="scan.dat"))
    assert code == 0, err  # before: "no such file or directory"
    assert zarr.open_array(str(tmp_path / "out.zarr")).shape == (40, 50)


def test_clear_errors_a_file_neither_tiff_nor_zarr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    code, _, err = invoke(capsys, "validate", setup(tmp_path, input_path="notes.txt"))
    assert code == 1, err
    assert_one_line_error(err, "notes.txt", "not a TIFF", "nor a Zarr")


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda path: path.write_text("1 2 3\n4 5 6\n"), ("is not a NumPy .npy file", "numpy.save")),
        (lambda path: np.save(path, np.array([{"a": 1}], dtype=object)), ("holds Python objects",)),
        (lambda path: None, ("no such file",)),
    ],
    ids=["text", "objects", "missing"],
)
def test_clear_errors_kernel_file_not_npy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, fragments: tuple[str, ...]
) -> None:
    kernel = tmp_path / "kernel.npy"
    make(kernel)  # type: ignore[operator]
    config = setup(tmp_path, step="{filter: convolve, kernel_file: kernel.npy}")
    code, _, err = invoke(capsys, "validate", config)
    assert code == 2, err
    assert_one_line_error(err, "pipeline[0].kernel_file", *fragments)
    assert "allow_pickle" not in err


# --- 6. the filters reference --------------------------------------------------------------------


def test_clear_errors_filters_text_says_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = invoke(capsys, "filters")
    assert code == 0
    for line in out.splitlines():
        assert line.count("default") <= 1, line
    kernel_lines = [line for line in out.splitlines() if line.split()[:1] in (["kernel"], ["kernel_file"])]
    assert len(kernel_lines) == 2
    for line in kernel_lines:
        assert "exactly one of kernel and kernel_file" in line


# --- 7. --set paths ------------------------------------------------------------------------------


def test_clear_errors_set_paths_are_relative_to_the_current_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    config = setup(configs)  # in.zarr beside the config, written there as a config path
    shell = tmp_path / "shell"
    shell.mkdir()
    monkeypatch.chdir(shell)
    code, _, err = invoke(capsys, "run", "--quiet", config, "--set", "output.path=out/x.zarr")
    assert code == 0, err
    assert (shell / "out" / "x.zarr").is_dir()
    assert not (configs / "out").exists()  # before: configs/out/x.zarr, without a word


def test_clear_errors_info_reads_a_tiff_whatever_its_name_and_an_ome_zarr_level_without_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = tmp_path / "scan.dat"
    tifffile.imwrite(scan, np.zeros((16, 24), np.uint16))
    code, out, err = invoke(capsys, "info", scan)
    assert code == 0, err
    assert "(16, 24)" in out
    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w")
    group.create_array("0", shape=(8, 8), dtype="uint8")
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": ["y", "x"], "datasets": [{}]}]}
    code, out, err = invoke(capsys, "info", tmp_path / "image.ome.zarr")
    assert code == 0, err
    assert "names no path" in out
