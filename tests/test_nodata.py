"""Nodata (README, "Nodata"): every policy, padding, pad, stride and chunking equals a plain
whole-image reference written with numpy masked arithmetic and sliding windows.

The reference follows the README's definitions directly: ``propagate`` marks an output whose
window has a nodata sample under a non-zero coefficient; ``ignore`` is normalized convolution
(Σ w·x·v / Σ w·v, times Σ w) for non-negative kernels and, for signed ones, the kernel applied
to the window with each nodata sample replaced by the |w|-weighted mean of its valid samples;
rank filters over the valid samples; ``fill`` replaces nodata before the step.
"""

from __future__ import annotations

import warnings
from typing import Any

import dask
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from reference import pad_step_input
from strategies import common_keys

import convpipe
from convpipe.config import from_dict
from convpipe.errors import ConfigError
from convpipe.nodata import SHARE_TOLERANCE
from convpipe.ops import Gradient, Linear, Pointwise, Rank
from convpipe.plan import Plan, StepPlan, bind

# --- the reference ---------------------------------------------------------------------------------


def _windows(image: np.ndarray, step: StepPlan, cval: float | None = None) -> np.ndarray:
    if cval is not None and step.config.padding in ("constant", "zero"):
        widths = [(a.pad_before, a.pad_after) for a in step.axes]
        padded = np.pad(image, widths, mode="constant", constant_values=cval)
    else:
        padded = pad_step_input(image, step)
    view = sliding_window_view(padded, tuple(a.size for a in step.axes))
    return view[tuple(slice(None, None, a.stride) for a in step.axes)]


def _linear(x: np.ndarray, v: np.ndarray, step: StepPlan, kernel: np.ndarray, policy: str) -> tuple[Any, Any]:
    X = _windows(x, step)
    V = _windows(v.astype(np.float64), step, cval=1.0) > 0.5  # constant padding is valid data
    axes = tuple(range(x.ndim, 2 * x.ndim))
    taps = kernel != 0
    if policy != "ignore":
        ok = np.all(V | ~taps, axis=axes)
        return np.sum(np.where(taps, np.where(V, X, 0) * kernel, 0), axis=axes), ok
    share = np.sum(np.abs(kernel) * V, axis=axes)
    ok = share >= (step.config.min_valid - SHARE_TOLERANCE) * np.abs(kernel).sum()
    safe = np.where(ok, share, 1)
    if (kernel >= 0).all():  # normalized convolution, scaled so a full window is the plain filter
        value = np.sum(kernel * np.where(V, X, 0), axis=axes) / safe * kernel.sum()
        return value, ok
    mean = np.sum(np.abs(kernel) * np.where(V, X, 0), axis=axes) / safe
    filled = np.where(V, X, mean[(...,) + (None,) * x.ndim])
    return np.sum(kernel * filled, axis=axes), ok


def reference_step(x: np.ndarray, v: np.ndarray, step: StepPlan) -> tuple[np.ndarray, np.ndarray]:
    """One step on the whole image: (values, validity)."""
    policy = step.config.nodata
    if policy == "fill":
        x, v = np.where(v, x, step.config.fill_value), np.ones_like(v)
    op = step.op
    if isinstance(op, Linear):
        return _linear(x, v, step, op.kernel(), policy)
    if isinstance(op, Gradient):
        parts = [_linear(x, v, step, c.kernel(), policy) for c in op.components]
        if not op.magnitude:
            return parts[0]
        return np.sqrt(sum(p[0] ** 2 for p in parts)), np.logical_and.reduce([p[1] for p in parts])
    if isinstance(op, Rank):
        X = _windows(x, step)
        V = _windows(v.astype(np.float64), step, cval=1.0) > 0.5
        flat_x = X.reshape(*X.shape[: x.ndim], -1)
        flat_v = V.reshape(flat_x.shape)
        n = flat_x.shape[-1]
        if policy != "ignore":
            rank = {"median": n // 2, "minimum": 0, "maximum": n - 1}[op.statistic]
            return np.sort(flat_x, axis=-1)[..., rank], flat_v.all(axis=-1)
        count = flat_v.sum(axis=-1)
        ok = count >= (step.config.min_valid - SHARE_TOLERANCE) * n
        ordered = np.sort(np.where(flat_v, flat_x, np.inf), axis=-1)
        rank = {"median": count // 2, "minimum": np.zeros_like(count), "maximum": count - 1}[op.statistic]
        picked = np.take_along_axis(ordered, np.clip(rank, 0, n - 1)[..., None], axis=-1)[..., 0]
        return np.where(ok, picked, 0), ok
    assert isinstance(op, Pointwise)
    # (the chains drawn here hold no rescale: its range is a global pass, tested elsewhere)
    one = (0,) * x.ndim  # a pointwise step's window is one sample, padded like any other
    X = _windows(x, step)[(..., *one)]
    V = _windows(v.astype(np.float64), step, cval=1.0)[(..., *one)] > 0.5
    return op.apply(X, (1,) * x.ndim), V


def reference(image: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    x = image.astype(np.float64)
    v = np.isfinite(x)
    if plan.nodata is not None and not np.isnan(plan.nodata):
        v &= x != plan.nodata
    x = np.where(v, x, 0)
    for step in plan.steps:
        x, v = reference_step(x, v, step)
        x = np.where(v, x, 0)
    return x, v


# --- the cases ---------------------------------------------------------------------------------------


def own_keys() -> st.SearchStrategy[dict[str, Any]]:
    size = st.integers(1, 4)
    kernel = st.lists(st.integers(1, 3), min_size=2, max_size=2).flatmap(
        lambda shape: (
            st.lists(st.integers(-2, 3).map(float), min_size=shape[0] * shape[1], max_size=shape[0] * shape[1])
            .filter(lambda values: any(values))
            .map(lambda values: np.array(values).reshape(shape).tolist())
        )
    )
    return st.one_of(
        st.fixed_dictionaries({"filter": st.just("gaussian"), "sigma": st.sampled_from([0.6, 1.2])}),
        st.fixed_dictionaries({"filter": st.just("box"), "size": size}),
        st.fixed_dictionaries({"filter": st.just("convolve"), "kernel": kernel}),
        st.fixed_dictionaries(
            {"filter": st.sampled_from(["sobel", "prewitt"]), "output": st.sampled_from(["magnitude", "x"])}
        ),
        st.fixed_dictionaries({"filter": st.just("sharpen"), "amount": st.just(1.0)}),
        st.fixed_dictionaries({"filter": st.just("laplacian")}),
        st.fixed_dictionaries({"filter": st.sampled_from(["median", "minimum", "maximum"]), "size": size}),
        st.fixed_dictionaries({"filter": st.just("abs")}),
    )


@st.composite
def nodata_step(draw: st.DrawFn) -> dict[str, Any]:
    step = {**draw(own_keys()), **draw(common_keys(2))}
    policy = draw(st.sampled_from(["propagate", "ignore", "fill"]))
    step["nodata"] = policy
    if policy == "ignore":
        step["min_valid"] = draw(st.sampled_from([0.2, 0.5, 1.0]))
    if policy == "fill":
        step["fill_value"] = draw(st.sampled_from([0.0, 3.5]))
    return step


@st.composite
def case(draw: st.DrawFn) -> tuple[np.ndarray, float | str, tuple[int, ...], list[dict[str, Any]]]:
    shape = tuple(draw(st.lists(st.integers(1, 18), min_size=2, max_size=2)))
    kind = draw(st.sampled_from(["float32-nan", "float32-number", "uint16"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    holes = rng.random(shape) < draw(st.sampled_from([0.0, 0.1, 0.4, 0.9, 1.0]))
    if draw(st.booleans()):  # a swath edge along the border
        holes[:, : draw(st.integers(0, shape[1]))] = True
    if kind == "uint16":
        image, nodata = rng.integers(1, 60, shape).astype(np.uint16), 0.0
    else:
        image = rng.normal(0.0, 10.0, shape).astype(np.float32)
        nodata = "nan" if kind == "float32-nan" else -9999.0
    image[holes] = np.nan if nodata == "nan" else nodata
    chunks = tuple(draw(st.integers(min(2, n), max(2, n))) for n in shape)
    steps = draw(st.lists(nodata_step(), min_size=1, max_size=3))
    return image, nodata, chunks, steps


def bound(image: np.ndarray, nodata: float | str, chunks: tuple[int, ...], steps: list[dict[str, Any]]) -> Plan:
    config = from_dict(
        {
            "input": {"path": "<array>", "chunks": list(chunks), "nodata": nodata},
            "output": {"path": "<none>", "dtype": "float64", "nodata": "nan"},
            "pipeline": steps,
        }
    )
    try:
        return bind(config, image.shape, image.dtype, image.shape)
    except ConfigError as error:
        assert "would be empty" in str(error)
        assume(False)
        raise


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case())
def test_every_policy_equals_the_masked_whole_image_reference(example: Any) -> None:
    image, nodata, chunks, steps = example
    plan = bound(image, nodata, chunks, steps)
    expected, valid = reference(image, plan)
    with dask.config.set(scheduler="sync"):
        got = convpipe.filter_array(
            image, steps, chunks=chunks, dtype="float64", nodata=nodata, output_nodata="nan"
        ).compute()
    assert got.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(got), ~valid, err_msg="nodata where the reference has none, or not")
    scale = max(
        1.0,
        float(np.abs(expected).max(initial=0.0)),
        float(np.nanmax(np.abs(np.where(image == -9999, 0, image)), initial=0.0)),
    )
    np.testing.assert_allclose(got[valid], expected[valid], rtol=1e-9, atol=1e-9 * scale)


# --- what a user sees -------------------------------------------------------------------------------


def test_a_gaussian_beside_a_swath_edge_is_normalized_not_dragged_down() -> None:
    image = np.full((32, 40), 100.0, dtype=np.float32)
    image[:, :12] = -9999.0
    steps = [{"filter": "gaussian", "sigma": 2.0, "nodata": "ignore"}]
    with dask.config.set(scheduler="sync"):
        out = convpipe.filter_array(image, steps, chunks=(8, 8), nodata=-9999, output_nodata="nan").compute()
    valid = ~np.isnan(out)
    assert valid[:, 12:].all() and not valid[:, :10].any()  # min_valid 0.5: the edge column stays
    np.testing.assert_allclose(out[valid], 100.0, rtol=1e-6)  # no band of wrong values


def test_a_derivative_does_not_turn_a_mask_border_into_an_edge() -> None:
    image = np.full((24, 24), 50.0, dtype=np.float32)
    image[6:14, 6:14] = np.nan  # a cloud hole
    with dask.config.set(scheduler="sync"):
        ignored = convpipe.filter_array(image, [{"filter": "sobel", "nodata": "ignore"}], chunks=(5, 7)).compute()
        propagated = convpipe.filter_array(image, [{"filter": "sobel"}], chunks=(5, 7)).compute()
    assert np.nanmax(np.abs(ignored)) < 1e-4  # flat data: no edge anywhere, hole border included
    assert np.isnan(propagated).sum() > np.isnan(ignored).sum()


def test_an_input_without_nodata_runs_as_before() -> None:
    image = np.random.default_rng(2).integers(0, 1000, (30, 30)).astype(np.uint16)
    steps = [{"filter": "gaussian", "sigma": 1.0, "nodata": "ignore"}]
    plain = [{"filter": "gaussian", "sigma": 1.0}]
    with dask.config.set(scheduler="sync"):
        a = convpipe.filter_array(image, steps, chunks=(7, 7)).compute()
        b = convpipe.filter_array(image, plain, chunks=(7, 7)).compute()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("step", "output", "message"),
    [
        ({"nodata": "fill"}, {}, "nodata: fill needs fill_value"),
        ({"nodata": "ignore", "min_valid": 0}, {}, "min_valid: must be in (0, 1]"),
        ({"nodata": "ignore", "min_valid": 1.5}, {}, "min_valid: must be in (0, 1]"),
        ({"nodata": "sometimes"}, {}, "nodata"),
        ({}, {"nodata": 300, "dtype": "uint8"}, "output.nodata: 300 does not fit the output dtype uint8"),
        ({}, {"dtype": "uint8"}, "output.nodata: the input's nodata value -9999"),
    ],
)
def test_bad_nodata_settings_are_one_clear_error(step: dict[str, Any], output: dict[str, Any], message: str) -> None:
    image = np.zeros((8, 8), dtype=np.float32)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        config = from_dict(
            {
                "input": {"path": "<array>", "nodata": -9999},
                "output": {"path": "<none>", **output},
                "pipeline": [{"filter": "box", "size": 3, **step}],
            }
        )
        bind(config, image.shape, image.dtype, image.shape)


def _scene() -> np.ndarray:
    """A float32 scene with a swath edge and a cloud hole marked -9999."""
    rng = np.random.default_rng(9)
    y, x = np.mgrid[0:96, 0:80]
    scene = (np.sin(y / 9.0) * np.cos(x / 7.0) * 50 + 200 + rng.normal(0, 1, y.shape)).astype(np.float32)
    scene[:, :20] = -9999.0  # the swath edge
    scene[40:55, 45:60] = -9999.0  # a cloud
    return scene


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_a_geotiff_scene_keeps_its_nodata_where_readers_look(tmp_path: Any, suffix: str) -> None:
    import tifffile
    import zarr
    from test_formats import config_for, geotiff  # a GeoTIFF whose GDAL_NODATA is -9999

    scene = _scene()
    source = geotiff(tmp_path / "scene.tif", scene)
    out = tmp_path / f"edges{suffix}"
    steps = [{"filter": "gaussian", "sigma": 1.5, "nodata": "ignore"}, {"filter": "sobel"}]
    convpipe.run(config_for(source, out, steps, chunks=[32, 32] if suffix == ".tif" else None))
    if suffix == ".tif":
        with tifffile.TiffFile(out) as tif:
            written = tif.pages.first.asarray()
            assert tif.pages.first.tags[42113].value.strip("\x00") == "-9999"
    else:
        array = zarr.open_array(str(out), mode="r")
        written = array[...]
        assert array.attrs["nodata"] == -9999 and array.fill_value == -9999
        assert array.attrs["geo"]["nodata"] == "-9999"
    assert (written[:, :19] == -9999).all()  # the swath stays nodata
    assert (written[44:51, 49:56] == -9999).all()  # so does the middle of the cloud
    assert np.isfinite(written).all() and (written[:, 25:40] > -9999).all()
    with dask.config.set(scheduler="sync"):
        expected = convpipe.filter_array(scene, steps, chunks=(17, 23), nodata=-9999).compute()
    np.testing.assert_allclose(written, expected, rtol=1e-5, atol=1e-3)


def test_rescale_takes_its_range_from_valid_samples_only() -> None:
    scene = _scene()
    steps = [{"filter": "rescale", "min": 0.0, "max": 1.0}]
    with dask.config.set(scheduler="sync"):
        out = convpipe.filter_array(scene, steps, chunks=(16, 16), nodata=-9999, output_nodata="nan").compute()
    valid = scene != -9999
    np.testing.assert_array_equal(np.isnan(out), ~valid)
    assert out[valid].min() == pytest.approx(0.0, abs=1e-6) and out[valid].max() == pytest.approx(1.0, abs=1e-6)


def test_ome_zarr_pyramid_levels_average_valid_samples_only(tmp_path: Any) -> None:
    import zarr
    from test_formats import config_for, geotiff

    scene = _scene()
    source = geotiff(tmp_path / "scene.tif", scene)
    out = tmp_path / "levels.ome.zarr"
    convpipe.run(config_for(source, out, [{"filter": "box", "size": 1}], pyramid=2))
    group = zarr.open_group(str(out), mode="r")
    below = group["0"][...]
    for level in (1, 2):
        got = group[str(level)][...]
        valid = below != -9999
        h, w = got.shape
        padded = np.zeros((2 * h, 2 * w), dtype=np.float64)
        count = np.zeros_like(padded)
        padded[: below.shape[0], : below.shape[1]] = np.where(valid, below, 0)
        count[: below.shape[0], : below.shape[1]] = valid
        total = padded.reshape(h, 2, w, 2).sum(axis=(1, 3))
        cells = count.reshape(h, 2, w, 2).sum(axis=(1, 3))
        expected = np.where(cells > 0, total / np.maximum(cells, 1), -9999)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        assert (got[cells == 0] == -9999).all() and (got[:, : 20 // 2**level - 1] == -9999).all()
        below = got


def test_a_nodata_output_read_back_as_input_keeps_its_nodata(tmp_path: Any) -> None:
    """What convpipe writes (a Zarr array's attribute, an OME-Zarr image's) it reads back."""
    from test_formats import config_for, geotiff

    source = geotiff(tmp_path / "scene.tif", _scene())
    for name in ("plain.zarr", "image.ome.zarr"):
        out = tmp_path / name
        convpipe.run(config_for(source, out, [{"filter": "box", "size": 1}]))
        assert convpipe.make_plan(config_for(out, tmp_path / f"again-{name}", [{"filter": "box"}])).nodata == -9999


@pytest.mark.parametrize(("padding", "boundary"), [("replicate", "extend"), ("wrap", "wrap"), ("constant", "fill")])
def test_ignore_matches_astropys_interpolating_convolution(padding: str, boundary: str) -> None:
    """An independent implementation of normalized convolution: astropy's convolve with
    nan_treatment='interpolate' (its boundary rules matching ours; 'fill' counts the fill
    value as data, as constant padding is)."""
    from astropy.convolution import convolve
    from astropy.utils.exceptions import AstropyUserWarning

    rng = np.random.default_rng(4)
    image = rng.normal(50, 5, (60, 70))
    image[rng.random(image.shape) < 0.3] = np.nan
    image[:, :15] = np.nan
    steps = [
        {"filter": "gaussian", "sigma": 1.5, "padding": padding, "cval": 40.0, "nodata": "ignore", "min_valid": 0.01}
    ]
    plan = bound(image, "nan", (13, 17), steps)
    kernel = plan.steps[0].op.kernel()
    with dask.config.set(scheduler="sync"):
        ours = convpipe.filter_array(image, steps, chunks=(13, 17), dtype="float64").compute()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)  # "NaN values detected": the swath's far side
        theirs = convolve(
            image, kernel, boundary=boundary, fill_value=40.0, nan_treatment="interpolate", normalize_kernel=True
        )
    valid = ~np.isnan(ours)
    assert valid.sum() > 0.75 * valid.size  # all but the swath's far side
    np.testing.assert_allclose(ours[valid], theirs[valid], rtol=1e-10, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["float32", "float64", "uint16", "int16"]),
    st.lists(st.sampled_from([0.0, 1.0, -9999.0, 7.5, 65535.0, np.nan, np.inf, -np.inf]), min_size=0, max_size=12),
    st.sampled_from([None, -9999.0, 0.0, 7.5, np.nan]),
)
def test_the_quick_all_valid_check_agrees_with_the_mask(dtype: str, values: list[float], nodata: float | None) -> None:
    from convpipe.block import all_valid, valid_samples

    data = np.array(values, dtype=np.float64)
    if np.dtype(dtype).kind != "f":
        data = data[np.isfinite(data)]
        info = np.iinfo(dtype)
        data = data[(data >= info.min) & (data <= info.max)]
    data = data.astype(dtype)
    assert all_valid(data, nodata) == bool(valid_samples(data, nodata).all())


@pytest.mark.parametrize("chunks", [(2, 2), (5, 7), (16, 9), (64, 64)])
def test_a_float32_gaussian_beside_nodata_is_the_masked_reference_to_float32_rounding(chunks: tuple[int, int]) -> None:
    """The README's promise for ``ignore``: whatever the chunking, float32 computation differs
    from the float64 masked reference by float32 rounding only."""
    scene = _scene()[:40, :50]
    steps = [{"filter": "gaussian", "sigma": 1.5, "nodata": "ignore"}]
    plan = bound(scene, -9999.0, chunks, steps)
    expected, valid = reference(scene, plan)
    with dask.config.set(scheduler="sync"):
        got = convpipe.filter_array(scene, steps, chunks=chunks, nodata=-9999, output_nodata="nan").compute()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), ~valid)
    np.testing.assert_allclose(got[valid], expected[valid], rtol=4 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("chunks", [(1, 2, 7, 9), (2, 3, 20, 24)])
def test_time_and_bands_each_keep_their_own_nodata_holes(chunks: tuple[int, ...]) -> None:
    """A tcyx scene: every (t, c) plane is filtered alone, its holes its own, as the 2-D
    masked reference computes it, whatever the chunking along t and c."""
    rng = np.random.default_rng(8)
    scene = rng.normal(100.0, 10.0, (2, 3, 20, 24)).astype(np.float32)
    scene[rng.random(scene.shape) < 0.15] = -9999.0
    scene[1, 2, :, :10] = -9999.0  # a swath edge in one band of one time only
    scene[0, 1] = -9999.0  # a band with no valid sample
    steps = [{"filter": "gaussian", "sigma": 1.0, "nodata": "ignore"}, {"filter": "sobel"}]
    with dask.config.set(scheduler="sync"):
        got = convpipe.filter_array(
            scene, steps, axes="tcyx", chunks=chunks, dtype="float64", nodata=-9999, output_nodata="nan"
        ).compute()
    for t, c in np.ndindex(2, 3):
        plane = scene[t, c]
        expected, valid = reference(plane, bound(plane, -9999.0, plane.shape, steps))
        np.testing.assert_array_equal(np.isnan(got[t, c]), ~valid, err_msg=f"t={t} c={c}")
        np.testing.assert_allclose(got[t, c][valid], expected[valid], rtol=1e-9, atol=1e-9)
    assert np.isnan(got[0, 1]).all()


def test_32_bit_integer_nodata_at_the_types_limit_is_found_in_float32_blocks() -> None:
    image = np.full((16, 32), 7, dtype=np.uint32)
    image[:, :16] = 4294967295  # GDAL's usual UInt32 nodata, rounded up when read as float32
    steps = [{"filter": "box", "size": 3}]
    plan = bound(image, 4294967295.0, (8, 8), steps)
    _, valid = reference(image, plan)
    with dask.config.set(scheduler="sync"):
        got = convpipe.filter_array(image, steps, chunks=(8, 8), nodata=4294967295, output_nodata="nan").compute()
    np.testing.assert_array_equal(np.isnan(got), ~valid)


@pytest.mark.parametrize("step", [{"filter": "gaussian", "sigma": 1.0}, {"filter": "sobel"}, {"filter": "minimum"}])
def test_a_window_with_no_valid_sample_is_nodata_however_low_min_valid_is(step: dict[str, Any]) -> None:
    image = np.full((20, 30), 5.0, dtype=np.float32)
    image[:, :15] = -9999.0
    steps = [{**step, "nodata": "ignore", "min_valid": 1e-6}]
    with dask.config.set(scheduler="sync"):
        got = convpipe.filter_array(image, steps, chunks=(7, 7), nodata=-9999, output_nodata="nan").compute()
    assert np.isnan(got[:, :10]).all() and np.isfinite(got[:, 16:]).all()


def test_a_float32_files_inexact_nodata_is_compared_as_float32_holds_it(tmp_path: Any) -> None:
    """ArcGIS and GDAL write -3.4e38 (or -3.40282346639e+038) for float32 nodata: GDAL casts it."""
    import tifffile
    from test_formats import GEOKEYS, config_for

    image = np.full((32, 32), 10.0, dtype=np.float32)
    image[:, :8] = np.float32(-3.4e38)
    tags = [
        (33550, "d", 3, (10.0, 10.0, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4600000.0, 0.0), True),
        (34735, "H", len(GEOKEYS), GEOKEYS, True),
        (42113, "s", 0, "-3.4e+38", True),
    ]
    tifffile.imwrite(tmp_path / "in.tif", image, extratags=tags)

    plan = convpipe.make_plan(config_for(tmp_path / "in.tif", tmp_path / "out.zarr", [{"filter": "box"}]))
    assert plan.nodata == float(np.float32(-3.4e38))
    convpipe.run(config_for(tmp_path / "in.tif", tmp_path / "out.tif", [{"filter": "box"}]))
    written = tifffile.imread(tmp_path / "out.tif")
    assert (written[:, :7] == np.float32(-3.4e38)).all() and (written[:, 9:] == 10).all()


def test_a_tiff_output_of_a_zarr_input_with_nodata_records_it(tmp_path: Any) -> None:
    import tifffile
    import zarr
    from test_formats import config_for

    array = zarr.create_array(str(tmp_path / "in.zarr"), shape=(64, 64), chunks=(32, 32), dtype="float32")
    array[...] = np.where(np.arange(64)[None, :] < 20, -9999.0, 3.0).astype(np.float32).repeat(64, axis=0)
    array.attrs["nodata"] = -9999
    for fmt in ("geotiff", "cog"):
        out = tmp_path / f"{fmt}.tif"
        convpipe.run(config_for(tmp_path / "in.zarr", out, [{"filter": "box"}], format=fmt))
        with tifffile.TiffFile(out) as tif:
            assert tif.pages.first.tags[42113].value.strip("\x00") == "-9999"
            if fmt == "cog":
                assert 'STATISTICS_MINIMUM" sample="0">3' in tif.pages.first.tags[42112].value
