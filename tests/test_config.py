"""Config validation as a user sees it: every bad value is a ConfigError naming its place.

The README's "Config keys": ``pipeline[1].sigma: must be > 0 (got -2)``. Checks that need the input's shape
(per-axis list lengths, kernels, empty outputs, axes) happen in ``convpipe.plan.bind``.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from convpipe import filters
from convpipe.config import Config, apply_override, from_dict, load
from convpipe.errors import ConfigError
from convpipe.plan import bind

BASE: dict[str, Any] = {
    "input": {"path": "in.zarr"},
    "output": {"path": "out.zarr"},
    "pipeline": [{"filter": "gaussian", "sigma": 1.0}],
}

SHAPE_2D = (40, 50)


def config(**sections: Any) -> dict[str, Any]:
    """BASE with whole sections replaced (``input``, ``output``, ``pipeline``)."""
    data = copy.deepcopy(BASE)
    data.update(copy.deepcopy(sections))
    return data


def with_input(**keys: Any) -> dict[str, Any]:
    return config(input={"path": "in.zarr", **keys})


def with_output(**keys: Any) -> dict[str, Any]:
    return config(output={"path": "out.zarr", **keys})


def second_step(**step: Any) -> dict[str, Any]:
    """A valid first step, then ``step`` at pipeline[1], so the index in messages is tested."""
    return config(pipeline=[{"filter": "box"}, step])


def write_yaml(folder: Path, data: Any, name: str = "config.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def bind_2d(data: dict[str, Any], shape: tuple[int, ...] = SHAPE_2D, dtype: Any = np.uint16):
    return bind(from_dict(data, "/data"), shape, np.dtype(dtype), shape)


def check_message(error: pytest.ExceptionInfo[ConfigError], start: str, fragments: tuple[str, ...]) -> None:
    message = str(error.value)
    assert message.startswith(start), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message, message


# --- errors found by the config alone ------------------------------------------------------

KNOWN = ", ".join(filters.FILTERS)

CONFIG_ERRORS = [
    # sections
    (
        "unknown section",
        {**BASE, "inptu": {}},
        "inptu: ",
        ("unknown section", "did you mean input?"),
    ),
    ("missing input", {k: v for k, v in BASE.items() if k != "input"}, "input: ", ("is required",)),
    (
        "missing output",
        {k: v for k, v in BASE.items() if k != "output"},
        "output: ",
        ("is required",),
    ),
    (
        "missing pipeline",
        {k: v for k, v in BASE.items() if k != "pipeline"},
        "pipeline: ",
        ("required",),
    ),
    ("input not a mapping", config(input="in.zarr"), "input: ", ("mapping", "'in.zarr'")),
    ("input.path missing", config(input={}), "input.path: ", ("is required",)),
    ("input.path empty", with_input(path=""), "input.path: ", ("non-empty string",)),
    (
        "input unknown key",
        with_input(axs="yx"),
        "input.axs: ",
        ("unknown key", "did you mean axes?"),
    ),
    ("output unknown key", with_output(dtyp="uint8"), "output.dtyp: ", ("did you mean dtype?",)),
    ("pipeline empty", config(pipeline=[]), "pipeline: ", ("non-empty list",)),
    ("pipeline a mapping", config(pipeline={"filter": "box"}), "pipeline: ", ("non-empty list",)),
    ("pipeline a string", config(pipeline="box"), "pipeline: ", ("non-empty list",)),
    # steps
    (
        "step not a mapping",
        config(pipeline=[{"filter": "box"}, "box"]),
        "pipeline[1]: ",
        ("mapping",),
    ),
    ("step without filter", second_step(sigma=1), "pipeline[1].filter: ", ("is required", KNOWN)),
    (
        "unknown filter",
        second_step(filter="gausian"),
        "pipeline[1].filter: ",
        ("unknown filter 'gausian'", "did you mean gaussian?", KNOWN),
    ),
    ("filter not a string", second_step(filter=3), "pipeline[1].filter: ", ("unknown filter 3",)),
    (
        "unknown step key",
        second_step(filter="box", sizee=3),
        "pipeline[1].sizee: ",
        (
            "unknown key",
            "did you mean size?",
            "allowed: filter, pad, padding, cval, stride, flip, nodata, min_valid, fill_value, size",
        ),
    ),
    (
        "key of another filter",
        second_step(filter="box", sigma=2),
        "pipeline[1].sigma: ",
        ("unknown key", "size"),
    ),
    (
        "required key missing",
        second_step(filter="gaussian"),
        "pipeline[1].sigma: ",
        ("is required",),
    ),
    (
        "threshold value missing",
        second_step(filter="threshold"),
        "pipeline[1].value: ",
        ("required",),
    ),
    # wrong types
    (
        "string sigma",
        second_step(filter="gaussian", sigma="2"),
        "pipeline[1].sigma: ",
        ("must be a number", "'2'"),
    ),
    (
        "NaN sigma",
        second_step(filter="gaussian", sigma=math.nan),
        "pipeline[1].sigma: ",
        ("must be a number",),
    ),
    ("bool size", second_step(filter="box", size=True), "pipeline[1].size: ", ("integer", "True")),
    (
        "float stride",
        second_step(filter="box", stride=1.5),
        "pipeline[1].stride: ",
        ("integer", "1.5"),
    ),
    (
        "float stride in a list",
        second_step(filter="box", stride=[1, 1.5]),
        "pipeline[1].stride: ",
        ("item 1", "1.5"),
    ),
    ("string cval", second_step(filter="box", cval="0"), "pipeline[1].cval: ", ("number",)),
    (
        "string flip",
        second_step(filter="box", flip="yes"),
        "pipeline[1].flip: ",
        ("true or false", "'yes'"),
    ),
    (
        "string amount",
        second_step(filter="sharpen", amount="1"),
        "pipeline[1].amount: ",
        ("number",),
    ),
    # out of range
    (
        "negative sigma",
        second_step(filter="gaussian", sigma=-2),
        "pipeline[1].sigma: ",
        ("must be > 0 (got -2)",),
    ),
    (
        "zero sigma",
        second_step(filter="gaussian", sigma=0),
        "pipeline[1].sigma: ",
        ("must be > 0 (got 0)",),
    ),
    (
        "zero sigma in a list",
        second_step(filter="gaussian", sigma=[1, 0]),
        "pipeline[1].sigma: ",
        ("item 1", "> 0"),
    ),
    (
        "zero truncate",
        second_step(filter="gaussian", sigma=1, truncate=0),
        "pipeline[1].truncate: ",
        ("must be > 0 (got 0)",),
    ),
    ("zero sigma2", second_step(filter="dog", sigma=1, sigma2=0), "pipeline[1].sigma2: ", ("> 0",)),
    ("zero size", second_step(filter="box", size=0), "pipeline[1].size: ", (">= 1 (got 0)",)),
    ("zero median size", second_step(filter="median", size=0), "pipeline[1].size: ", (">= 1",)),
    ("zero stride", second_step(filter="box", stride=0), "pipeline[1].stride: ", (">= 1 (got 0)",)),
    ("negative pad", second_step(filter="box", pad=-1), "pipeline[1].pad: ", (">= 0 (got -1)",)),
    (
        "negative pad in a list",
        second_step(filter="box", pad=[1, -1]),
        "pipeline[1].pad: ",
        ("item 1", ">= 0"),
    ),
    ("empty pad list", second_step(filter="box", pad=[]), "pipeline[1].pad: ", ("non-empty list",)),
    (
        "bad pad keyword",
        second_step(filter="box", pad="samee"),
        "pipeline[1].pad: ",
        ("same, valid, full", "'samee'"),
    ),
    (
        "bad padding",
        second_step(filter="box", padding="mirrror"),
        "pipeline[1].padding: ",
        ("reflect", "symmetric", "replicate", "wrap", "zero", "constant", "'mirrror'"),
    ),
    (
        "sobel output letter",
        second_step(filter="sobel", output="q"),
        "pipeline[1].output: ",
        ("magnitude", "'q'"),
    ),
    (
        "clip min > max",
        second_step(filter="clip", min=3, max=1),
        "pipeline[1]: ",
        ("min must be <= max", "3", "1"),
    ),
    # convolve's kernel sources
    (
        "convolve with neither",
        second_step(filter="convolve"),
        "pipeline[1]: ",
        ("exactly one of kernel or kernel_file",),
    ),
    (
        "convolve with both",
        second_step(filter="convolve", kernel=[[1]], kernel_file="k.npy"),
        "pipeline[1]: ",
        ("exactly one of kernel or kernel_file",),
    ),
    (
        "string normalize",
        second_step(filter="convolve", kernel=[[1]], normalize="yes"),
        "pipeline[1].normalize: ",
        ("true or false",),
    ),
    # output and input sections
    (
        "unknown output dtype",
        with_output(dtype="uint9"),
        "output.dtype: ",
        ("'uint9'", "input", "float32", "uint8", "uint16"),
    ),
    ("bad axes letter", with_input(axes="yq"), "input.axes: ", ("tczyx", "'yq'")),
    ("repeated axes letter", with_input(axes="yy"), "input.axes: ", ("repeat", "'yy'")),
    ("no spatial axis", with_input(axes="tc"), "input.axes: ", ("spatial",)),
    ("axes not a string", with_input(axes=3), "input.axes: ", ("tczyx",)),
    ("chunks not a list", with_input(chunks="a"), "input.chunks: ", ("list",)),
    ("zero chunk", with_input(chunks=[10, 0]), "input.chunks: ", ("item 1", ">= 1")),
    ("float chunk", with_input(chunks=[10, 10.5]), "input.chunks: ", ("item 1", "10.5")),
    ("negative series", with_input(series=-1), "input.series: ", (">= 0",)),
    ("infinite cval", second_step(filter="box", padding="constant", cval=math.inf), "pipeline[1].cval: ", ("finite",)),
    ("infinite amount", second_step(filter="sharpen", amount=-math.inf), "pipeline[1].amount: ", ("finite",)),
]


@pytest.mark.parametrize(
    ("data", "start", "fragments"),
    [pytest.param(data, start, fragments, id=name) for name, data, start, fragments in CONFIG_ERRORS],
)
def test_config_errors_name_their_place(data: Any, start: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as error:
        from_dict(data, "/data")
    check_message(error, start, fragments)


def test_a_second_problem_is_counted_not_hidden() -> None:
    with pytest.raises(ConfigError) as error:
        from_dict(second_step(filter="gaussian", sigma=-2, truncate=0), "/data")
    check_message(error, "pipeline[1].sigma: must be > 0 (got -2)", ("1 more problem",))


# --- errors that need the input's shape and dtype (convpipe.plan.bind) ----------------------

BIND_ERRORS = [
    # per-axis lists of the wrong length
    (
        "sigma list too long",
        second_step(filter="gaussian", sigma=[1, 2, 3]),
        SHAPE_2D,
        "pipeline[1].sigma: ",
        ("one value per spatial axis (2)", "3"),
    ),
    (
        "size list too short",
        second_step(filter="box", size=[3]),
        SHAPE_2D,
        "pipeline[1].size: ",
        ("one value per spatial axis (2)",),
    ),
    (
        "stride list too long",
        second_step(filter="box", stride=[1, 2, 3]),
        SHAPE_2D,
        "pipeline[1].stride: ",
        ("one value per spatial axis",),
    ),
    (
        "pad list too long",
        second_step(filter="box", pad=[1, 2, 3]),
        SHAPE_2D,
        "pipeline[1].pad: ",
        ("one value per spatial axis",),
    ),
    (
        "size list on t,y,x,c data",
        config(
            input={"path": "in.zarr", "axes": "tyxc"},
            pipeline=[{"filter": "box", "size": [3, 3, 3]}],
        ),
        (2, 40, 50, 3),
        "pipeline[0].size: ",
        ("one value per spatial axis (2)",),
    ),
    # kernels
    (
        "ragged kernel",
        second_step(filter="convolve", kernel=[[1, 2], [3]]),
        SHAPE_2D,
        "pipeline[1].kernel: ",
        ("rectangular",),
    ),
    (
        "empty kernel",
        second_step(filter="convolve", kernel=[]),
        SHAPE_2D,
        "pipeline[1].kernel: ",
        ("empty",),
    ),
    (
        "empty rows kernel",
        second_step(filter="convolve", kernel=[[]]),
        SHAPE_2D,
        "pipeline[1].kernel: ",
        ("empty",),
    ),
    (
        "non-numeric kernel",
        second_step(filter="convolve", kernel=[["a", 1]]),
        SHAPE_2D,
        "pipeline[1].kernel: ",
        ("numbers",),
    ),
    (
        "string kernel",
        second_step(filter="convolve", kernel="abc"),
        SHAPE_2D,
        "pipeline[1].kernel: ",
        ("nested list",),
    ),
    (
        "NaN in kernel",
        second_step(filter="convolve", kernel=[[1, math.nan]]),
        SHAPE_2D,
        "pipeline[1].kernel: ",
        ("finite",),
    ),
    (
        "1-D kernel on 2-D data",
        second_step(filter="convolve", kernel=[1, 2, 1]),
        SHAPE_2D,
        "pipeline[1].kernel: ",
        ("1 dimensions", "2 spatial axes"),
    ),
    (
        "2-D kernel on 3-D data",
        second_step(filter="convolve", kernel=[[1, 2, 1]]),
        (5, 40, 50),
        "pipeline[1].kernel: ",
        ("2 dimensions", "3 spatial axes"),
    ),
    (
        "normalize a zero-sum kernel",
        second_step(filter="convolve", kernel=[[1, -1]], normalize=True),
        SHAPE_2D,
        "pipeline[1].normalize: ",
        ("sums to 0",),
    ),
    # filter keys that depend on the dimensionality
    (
        "sobel z on 2-D data",
        second_step(filter="sobel", output="z"),
        SHAPE_2D,
        "pipeline[1].output: ",
        ("magnitude", "y, x", "'z'"),
    ),
    (
        "laplacian neighbours 5",
        second_step(filter="laplacian", neighbours=5),
        SHAPE_2D,
        "pipeline[1].neighbours: ",
        ("4 or 8", "(got 5)"),
    ),
    (
        "laplacian neighbours 8 in 3-D",
        second_step(filter="laplacian", neighbours=8),
        (5, 40, 50),
        "pipeline[1].neighbours: ",
        ("6 or 26",),
    ),
    (
        "sharpen neighbours 5",
        second_step(filter="sharpen", neighbours=5),
        SHAPE_2D,
        "pipeline[1].neighbours: ",
        ("4 or 8",),
    ),
    # input axes and chunks against the data
    (
        "axes too long for the data",
        with_input(axes="zyx"),
        SHAPE_2D,
        "input.axes: ",
        ("'zyx'", "3", "2"),
    ),
    ("4-D data without axes", BASE, (2, 3, 40, 50), "input.axes: ", ("4 dimensions", "axes")),
    ("1-D data without axes", BASE, (50,), "input.axes: ", ("1 dimensions",)),
    (
        "chunks of the wrong length",
        with_input(chunks=[10]),
        SHAPE_2D,
        "input.chunks: ",
        ("one block length per dimension (2)", "1"),
    ),
]


@pytest.mark.parametrize(
    ("data", "shape", "start", "fragments"),
    [pytest.param(d, shape, start, frag, id=name) for name, d, shape, start, frag in BIND_ERRORS],
)
def test_shape_dependent_errors_name_their_place(
    data: dict[str, Any], shape: tuple[int, ...], start: str, fragments: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as error:
        bind_2d(data, shape)
    check_message(error, start, fragments)


@pytest.mark.parametrize("dtype", ["bool", "complex64", "complex128"])
def test_non_numeric_input_dtypes_are_rejected_with_what_is_supported(dtype: str) -> None:
    with pytest.raises(ConfigError) as error:
        bind_2d(BASE, dtype=dtype)
    check_message(error, "input: ", (dtype, "not supported", "uint8", "uint16", "float32"))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "float32", "float64"])
def test_numeric_input_dtypes_are_accepted(dtype: str) -> None:
    assert bind_2d(BASE, dtype=dtype).output_shape == SHAPE_2D


def test_an_empty_output_names_the_step_and_shows_the_formula() -> None:
    # Step 0 (5 wide, valid, stride 4): 40 -> floor((40 - 5) / 4) + 1 = 9 rows.
    # Step 1 (13 wide, pad 1, stride 2) on 9 rows: floor((9 + 1 + 1 - 13) / 2) + 1 = 0.
    data = config(
        pipeline=[
            {"filter": "box", "size": 5, "pad": "valid", "stride": 4},
            {"filter": "box", "size": 13, "pad": 1, "stride": 2},
        ]
    )
    with pytest.raises(ConfigError) as error:
        bind_2d(data)
    check_message(
        error,
        "pipeline[1]: ",
        (
            "empty",
            "axis y",
            "floor((N + P_before + P_after - F) / S) + 1 = ",
            "floor((9 + 1 + 1 - 13) / 2) + 1 = 0",
        ),
    )


def test_an_output_of_one_pixel_is_not_empty() -> None:
    data = config(
        pipeline=[
            {"filter": "box", "size": 5, "pad": "valid", "stride": 4},  # (9, 12)
            {"filter": "box", "size": 9, "pad": "valid"},
        ]
    )
    assert bind_2d(data).output_shape == (1, 4)


def test_valid_per_axis_lists_bind_on_3d_data() -> None:
    data = config(pipeline=[{"filter": "gaussian", "sigma": [1, 2, 3], "stride": [1, 2, 2]}])
    plan = bind_2d(data, (5, 40, 50))
    assert [a.size for a in plan.steps[0].axes] == [9, 17, 25]
    assert plan.output_shape == (5, 20, 25)


# --- what is accepted ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("mirror", "reflect"),
        ("nearest", "replicate"),
        ("edge", "replicate"),
        ("circular", "wrap"),
        ("reflect", "reflect"),
        ("symmetric", "symmetric"),
        ("replicate", "replicate"),
        ("wrap", "wrap"),
        ("zero", "zero"),
        ("constant", "constant"),
    ],
)
def test_padding_aliases_resolve_to_the_canonical_mode(given: str, canonical: str) -> None:
    step = from_dict(second_step(filter="box", padding=given), "/data").pipeline[1]
    assert step.padding == canonical


@pytest.mark.parametrize("alias", ["mean", "uniform"])
def test_filter_aliases_are_accepted(alias: str) -> None:
    assert bind_2d(config(pipeline=[{"filter": alias, "size": 3}])).output_shape == SHAPE_2D


def test_defaults_are_filled_in() -> None:
    cfg = from_dict(BASE, "/data")
    step = cfg.pipeline[0]
    assert (step.pad, step.padding, step.cval, step.stride, step.flip) == (
        "same",
        "reflect",
        0.0,
        1,
        False,
    )
    assert step.truncate == 4.0
    assert cfg.output.dtype == "float32"
    assert cfg.output.overwrite is False
    assert cfg.input.axes is None
    assert cfg.input.chunks is None


# --- YAML files ---------------------------------------------------------------------------

YAML_ERRORS = [
    ("empty file", "", ("empty", "input, output and pipeline")),
    ("only a comment", "# nothing here\n", ("empty",)),
    ("a list", "- 1\n- 2\n", ("mapping", "list")),
    ("a scalar", "hello\n", ("mapping", "str")),
    (
        "unclosed bracket",
        "input: {path: in.zarr\noutput: x\n",
        ("invalid YAML", "line ", "column "),
    ),
    ("bad indentation", "input:\n  path: a\n bad: 2\n", ("invalid YAML", "line 3, column 2")),
    ("tab indentation", "input:\n\tpath: x\n", ("invalid YAML", "line 2, column 1")),
    (
        "a key given twice",
        "input: {path: a}\noutput: {path: b}\npipeline:\n  - filter: gaussian\n    sigma: 1\n    sigma: 2\n",
        ("invalid YAML", "line 6, column 5", "'sigma' is given twice"),
    ),
]


@pytest.mark.parametrize(("text", "fragments"), [pytest.param(t, f, id=name) for name, t, f in YAML_ERRORS])
def test_bad_files_name_the_file(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load(path)
    check_message(error, f"{path}: ", fragments)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path / "nope.yaml")
    check_message(error, str(tmp_path / "nope.yaml"), ("no such config file",))


def test_errors_inside_a_file_name_the_key(tmp_path: Path) -> None:
    text = (
        "input: {path: in.zarr}\n"
        "output: {path: out.zarr}\n"
        "pipeline:\n"
        "  - filter: box\n"
        "  - filter: gaussian\n"
        "    sigma: -2\n"
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load(path)
    assert str(error.value) == "pipeline[1].sigma: must be > 0 (got -2)"


# --- --set overrides ----------------------------------------------------------------------


def test_override_sets_a_nested_key_in_a_list_item_as_a_number() -> None:
    data = config()
    apply_override(data, "pipeline[0].sigma=3")
    assert data["pipeline"][0]["sigma"] == 3
    assert isinstance(data["pipeline"][0]["sigma"], int)


@pytest.mark.parametrize(
    ("assignment", "path", "expected"),
    [
        ("input.chunks=[64,64]", ("input", "chunks"), [64, 64]),
        ("output.dtype=uint8", ("output", "dtype"), "uint8"),
        ("output.overwrite=true", ("output", "overwrite"), True),
        ("pipeline[0].sigma=2.5", ("pipeline", 0, "sigma"), 2.5),
        ("pipeline[0].sigma=[1, 2]", ("pipeline", 0, "sigma"), [1, 2]),
        ("pipeline[0].padding=nearest", ("pipeline", 0, "padding"), "nearest"),
        ("pipeline[0].filter=box", ("pipeline", 0, "filter"), "box"),
        ("input.axes=yx", ("input", "axes"), "yx"),
        # a path typed with --set is relative to the current directory (README, "Config keys")
        ("input.path=a=b.zarr", ("input", "path"), os.path.abspath("a=b.zarr")),
    ],
)
def test_override_values_are_read_as_yaml(assignment: str, path: tuple[Any, ...], expected: Any) -> None:
    data = config()
    apply_override(data, assignment)
    node: Any = data
    for part in path:
        node = node[part]
    assert node == expected
    assert type(node) is type(expected)


def test_override_creates_a_missing_section_key() -> None:
    data = config(output={"path": "out.zarr"})
    apply_override(data, "output.dtype=uint16")
    assert data["output"] == {"path": "out.zarr", "dtype": "uint16"}


OVERRIDE_ERRORS = [
    ("index past the end", "pipeline[3].sigma=1", ("pipeline[3]", "does not exist")),
    ("replace a missing step", "pipeline[1]=3", ("pipeline[1]", "does not exist")),
    ("index into a mapping", "input[0]=x", ("input[0]", "does not exist")),
    ("key on a list", "pipeline.sigma=1", ("pipeline.sigma", "does not exist")),
    ("index into a string", "input.path[0]=x", ("does not exist",)),
    ("no equals sign", "pipeline[0].sigma", ("KEY=VALUE",)),
    ("no key", "=3", ("KEY=VALUE",)),
    ("missing dot", "pipeline[0]sigma=1", ("'pipeline[0]sigma'",)),
    ("non-numeric index", "pipeline[x].sigma=1", ("'pipeline[x]'",)),
    ("negative index", "pipeline[-1].sigma=1", ("'pipeline[-1]'",)),
    ("empty key part", "input..path=1", ("''",)),
]


@pytest.mark.parametrize(
    ("assignment", "fragments"),
    [pytest.param(a, f, id=name) for name, a, f in OVERRIDE_ERRORS],
)
def test_bad_overrides_name_the_assignment(assignment: str, fragments: tuple[str, ...]) -> None:
    data = config()
    before = copy.deepcopy(data)
    with pytest.raises(ConfigError) as error:
        apply_override(data, assignment)
    check_message(error, f"--set {assignment}: ", fragments)
    if assignment.startswith("pipeline"):
        assert data["pipeline"] == before["pipeline"]


def test_load_applies_overrides_in_order_then_validates(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, BASE)
    cfg = load(path, ["pipeline[0].sigma=3", "input.chunks=[16,16]", "pipeline[0].sigma=4"])
    assert cfg.pipeline[0].sigma == 4.0
    assert cfg.input.chunks == (16, 16)
    with pytest.raises(ConfigError) as error:
        load(path, ["pipeline[0].sigma=-1"])
    check_message(error, "pipeline[0].sigma: ", ("> 0",))
    with pytest.raises(ConfigError) as error:
        load(path, ["pipeline[5].sigma=1"])
    check_message(error, "--set pipeline[5].sigma=1: ", ("does not exist",))


def test_overrides_on_an_empty_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as error:
        load(path, ["output.dtype=uint8"])
    check_message(error, str(path), ("mapping",))


# --- paths --------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = write_yaml(
        folder,
        config(
            input={"path": "../data/in.zarr"},
            output={"path": "out/result.zarr"},
            pipeline=[{"filter": "convolve", "kernel_file": "kernels/k.npy"}],
        ),
    )
    (folder / "kernels").mkdir()
    np.save(folder / "kernels" / "k.npy", np.full((3, 3), 1 / 9))
    monkeypatch.chdir(elsewhere)
    cfg = load(Path("..") / "configs" / "config.yaml")
    assert os.path.normpath(cfg.input.path) == str(tmp_path / "data" / "in.zarr")
    assert os.path.normpath(cfg.output.path) == str(folder / "out" / "result.zarr")
    assert Path(cfg.input.path).is_absolute()
    assert Path(cfg.output.path).is_absolute()
    # The kernel file is found next to the config, not in the working directory.
    plan = bind(cfg, SHAPE_2D, np.dtype(np.uint16), SHAPE_2D)
    assert plan.steps[0].out_shape == SHAPE_2D
    assert path.exists()


def test_absolute_and_home_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_yaml(
        tmp_path / "configs",
        config(input={"path": str(tmp_path / "abs.zarr")}, output={"path": "~/out.zarr"}),
    )
    cfg = load(path)
    assert Path(cfg.input.path) == tmp_path / "abs.zarr"
    assert Path(cfg.output.path) == tmp_path / "home" / "out.zarr"


def test_resolved_paths_are_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_yaml(tmp_path / "configs", config(input={"path": "../data/in.zarr"}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load(Path("..") / "configs" / "config.yaml")
    assert cfg.input.path == str(tmp_path / "data" / "in.zarr")
    assert cfg.output.path == str(tmp_path / "configs" / "out.zarr")


def test_kernel_file_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_yaml(
        tmp_path / "configs",
        config(pipeline=[{"filter": "convolve", "kernel_file": "k.npy"}]),
    )
    monkeypatch.chdir(tmp_path)
    cfg = load(Path("configs") / "config.yaml")
    assert Path(cfg.pipeline[0].kernel_file) == tmp_path / "configs" / "k.npy"
    assert Path(cfg.pipeline[0].kernel_file).is_absolute()


# --- the resolved config (recorded in the output) -----------------------------------------


def test_resolved_config_holds_every_default_and_round_trips() -> None:
    cfg = from_dict(second_step(filter="gaussian", sigma=[1, 2], padding="mirror"), "/data")
    resolved = cfg.resolved()
    assert resolved["pipeline"][1]["padding"] == "reflect"
    assert resolved["pipeline"][1]["sigma"] == [1.0, 2.0]
    assert resolved["pipeline"][0]["size"] == 3
    assert resolved["output"]["dtype"] == "float32"
    # It is plain data (YAML-safe) and is itself a valid config giving the same result.
    again = from_dict(yaml.safe_load(yaml.safe_dump(resolved)), "/elsewhere")
    assert isinstance(again, Config)
    assert again.pipeline == cfg.pipeline
    assert again.input.path == cfg.input.path


def test_resolved_config_with_per_axis_lists_does_not_warn() -> None:
    data = config(
        input={"path": "in.zarr", "chunks": [16, 16]},
        pipeline=[
            {"filter": "box", "size": [3, 5], "pad": [1, 2], "stride": [1, 2]},
            {"filter": "dog", "sigma": [1, 2], "sigma2": [2, 3]},
        ],
    )
    cfg = from_dict(data, "/data")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolved = cfg.resolved()
    assert resolved["input"]["chunks"] == [16, 16]
    assert resolved["pipeline"][0]["pad"] == [1, 2]
    assert resolved["pipeline"][1]["sigma2"] == [2.0, 3.0]


# --- messages that were once wrong ---------------------------------------------------------


def test_an_infinite_sigma_says_it_must_be_finite() -> None:
    with pytest.raises(ConfigError) as error:
        from_dict(second_step(filter="gaussian", sigma=math.inf), "/data")
    check_message(error, "pipeline[1].sigma: ", ("finite",))


def test_a_boolean_in_a_kernel_is_rejected() -> None:
    with pytest.raises(ConfigError) as error:
        bind_2d(second_step(filter="convolve", kernel=[[0, True, 0]]))
    check_message(error, "pipeline[1].kernel: ", ("number",))


def test_a_scalar_kernel_says_it_must_be_a_nested_list() -> None:
    with pytest.raises(ConfigError) as error:
        bind_2d(second_step(filter="convolve", kernel=5))
    check_message(error, "pipeline[1].kernel: ", ("list",))
    assert "empty" not in str(error.value)


# --- paths as URLs, and storage settings ------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("s3://bucket/scenes/a.zarr/", "s3://bucket/scenes/a.zarr"),
        ("gs://bucket/a.zarr", "gs://bucket/a.zarr"),
        ("az://container/a.zarr", "az://container/a.zarr"),
        ("https://example.org/data/a.ome.zarr", "https://example.org/data/a.ome.zarr"),
    ],
)
def test_a_url_is_kept_as_a_url_never_resolved_as_a_local_path(tmp_path: Path, given: str, kept: str) -> None:
    cfg = from_dict(config(input={"path": given}), base_dir=tmp_path)
    assert cfg.input.path == kept


def test_a_file_url_is_a_local_path(tmp_path: Path) -> None:
    cfg = from_dict(config(input={"path": f"file://{tmp_path}/in.zarr"}), base_dir="/elsewhere")
    assert cfg.input.path == str(tmp_path / "in.zarr")


@pytest.mark.parametrize(
    ("section", "value", "words"),
    [
        ("input", "ftp://host/a.zarr", "input.path"),
        ("input", "s3:/bucket/a.zarr", "input.path"),
        ("output", "https://example.org/out.zarr", "read-only"),
    ],
)
def test_bad_urls_are_one_clear_error(section: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        from_dict(config(**{section: {"path": value}}))


def test_storage_keys_are_checked_and_secrets_never_recorded() -> None:
    with pytest.raises(ConfigError, match=r"input\.storage: .*unknown key 'endpont'"):
        from_dict(config(input={"path": "s3://b/a.zarr", "storage": {"endpont": "http://127.0.0.1:9000"}}))
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-not-real"
    storage = {"endpoint": "http://127.0.0.1:9000", "secret_access_key": secret}
    cfg = from_dict(config(input={"path": "s3://b/a.zarr", "storage": storage}))
    resolved = cfg.resolved()
    assert resolved["input"]["storage"] == {"endpoint": "http://127.0.0.1:9000", "secret_access_key": "***"}
    assert secret not in repr(resolved)
    with pytest.raises(ConfigError) as error:
        from_dict(config(input={"path": "s3://b/a.zarr", "storage": {"secret_access_key": 12345678}}))
    assert "12345678" not in str(error.value)
