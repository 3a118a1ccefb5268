"""The heart of the README's "What it computes": any chain, any chunking, equals the whole-image reference.

Random images (2-D and 3-D, float32 and uint16), processing blocks down to 2 pixels (so halos
are often deeper than a block and strides rarely divide it), kernels of odd and even sizes,
every padding name, every pad form and strides 1–3 per axis, in chains of 1–3 steps.
"""

from __future__ import annotations

from typing import Any

import dask
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from reference import reference, rescale_is_well_conditioned
from strategies import case

import convpipe
from convpipe.config import from_dict
from convpipe.errors import ConfigError
from convpipe.plan import Plan, bind


def bound(image: np.ndarray, chunks: tuple[int, ...], steps: list[dict[str, Any]], dtype: str) -> Plan:
    config = from_dict(
        {
            "input": {"path": "<array>", "chunks": list(chunks)},
            "output": {"path": "<none>", "dtype": dtype},
            "pipeline": steps,
        }
    )
    try:
        return bind(config, image.shape, image.dtype, image.shape)
    except ConfigError as error:
        assert "would be empty" in str(error)  # the only config these strategies may break
        assume(False)
        raise


def assert_matches_reference(got: np.ndarray, expected: np.ndarray, image: np.ndarray, rtol: float) -> None:
    assert got.shape == expected.shape
    # NaN only where the reference has it; elsewhere equal up to rounding of the largest
    # magnitude met along the chain.
    scale = max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)), float(np.abs(image).max(initial=0)))
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale, equal_nan=True)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case())
def test_chunked_chain_equals_whole_image_reference(example: Any) -> None:
    image, chunks, steps = example
    plan = bound(image, chunks, steps, "float64")
    assume(rescale_is_well_conditioned(image, plan))
    expected = reference(image, plan)
    with dask.config.set(scheduler="sync"):
        got = convpipe.filter_array(image, steps, chunks=chunks, dtype="float64").compute()
    assert_matches_reference(got, expected, image, rtol=1e-9)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(case(max_steps=2))
def test_float32_computation_is_within_float32_rounding(example: Any) -> None:
    image, chunks, steps = example
    assume(not any(s["filter"] == "threshold" for s in steps))  # a step function amplifies rounding
    plan = bound(image, chunks, steps, "float32")
    assume(rescale_is_well_conditioned(image, plan))
    assert plan.compute_dtype == np.float32
    expected = reference(image, plan)
    with dask.config.set(scheduler="sync"):
        got = convpipe.filter_array(image, steps, chunks=chunks).compute()
    assert got.dtype == np.float32
    assert_matches_reference(got, expected, image, rtol=2e-5)


@pytest.mark.parametrize("padding", ["reflect", "symmetric", "replicate", "wrap", "zero", "constant"])
def test_halo_much_deeper_than_blocks_and_the_image(padding: str) -> None:
    """A 25-wide kernel on a 6x5 image cut in 2x2 blocks: padding repeats its rule."""
    image = np.arange(30, dtype=np.float64).reshape(6, 5) ** 1.5
    steps = [
        {"filter": "gaussian", "sigma": 3.0, "padding": padding, "cval": 2.0},
        {
            "filter": "convolve",
            "kernel": [[1.0, -2.0, 0.5, 3.0]],
            "pad": 6,
            "stride": [3, 2],
            "padding": padding,
        },
    ]
    plan = bound(image, (2, 2), steps, "float64")
    got = convpipe.filter_array(image, steps, chunks=(2, 2), dtype="float64").compute()
    assert_matches_reference(got, reference(image, plan), image, rtol=1e-10)


def test_wrap_reaches_the_far_side_of_the_image() -> None:
    """dask-image#242: wrap must read the opposite border, not the neighbouring block."""
    image = np.zeros((12, 12))
    image[:, -1] = 100.0  # only the last column is bright
    out = convpipe.filter_array(
        image, [{"filter": "box", "size": 3, "padding": "wrap"}], chunks=(4, 4), dtype="float64"
    ).compute()
    np.testing.assert_allclose(out[:, 0], 100.0 / 3)  # the first column sees the last one
    np.testing.assert_allclose(out[:, 5], 0.0)


def test_non_spatial_axes_are_carried_through_plane_by_plane() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(3, 2, 17, 19)).astype(np.float32)  # t, c, y, x
    steps = [{"filter": "gaussian", "sigma": 1.0}, {"filter": "sobel", "stride": 2}]
    got = convpipe.filter_array(image, steps, axes="tcyx", chunks=(1, 2, 5, 6), dtype="float64").compute()
    assert got.shape == (3, 2, 9, 10)
    for t in range(3):
        for c in range(2):
            plane = convpipe.filter_array(image[t, c], steps, dtype="float64").compute()
            np.testing.assert_allclose(got[t, c], plane, rtol=1e-12)
