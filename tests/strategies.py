"""Hypothesis strategies for images, chunkings and chains of steps.

What they draw from is the README's "What it computes", "Config keys" and "Filters".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from convpipe.geometry import PADDING_ALIASES, PADDING_MODES

PADDINGS = sorted([*PADDING_MODES, *PADDING_ALIASES])


def per_axis(ndim: int, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A single value for every axis, or a list with one per axis."""
    return st.one_of(values, st.lists(values, min_size=ndim, max_size=ndim))


def common_keys(ndim: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "pad": st.one_of(st.sampled_from(["same", "valid", "full"]), per_axis(ndim, st.integers(0, 4))),
            "padding": st.sampled_from(PADDINGS),
            "cval": st.sampled_from([0.0, -1.5, 7.25]),
            "stride": per_axis(ndim, st.integers(1, 3)),
        },
    )


def own_keys(ndim: int) -> st.SearchStrategy[dict[str, Any]]:
    """One filter and its own keys, kernels kept small (odd and even sizes)."""
    kernel = st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim).flatmap(
        lambda shape: st.lists(
            st.integers(-3, 3).map(float),
            min_size=int(np.prod(shape)),
            max_size=int(np.prod(shape)),
        ).map(lambda values: np.array(values).reshape(shape).tolist())
    )
    sigma = st.sampled_from([0.4, 0.8, 1.3])
    size = per_axis(ndim, st.integers(1, 4))
    axis = st.sampled_from(["magnitude", *"zyx"[3 - ndim :]])
    neighbours = st.sampled_from([None, 2 * ndim, 3**ndim - 1])
    threshold = st.floats(-50, 50).map(lambda v: round(v, 2) + 0.00123)
    return st.one_of(
        st.fixed_dictionaries({"filter": st.just("convolve"), "kernel": kernel, "flip": st.booleans()}),
        st.fixed_dictionaries({"filter": st.sampled_from(["box", "mean", "uniform"]), "size": size}),
        st.fixed_dictionaries({"filter": st.just("gaussian"), "sigma": per_axis(ndim, sigma)}),
        st.fixed_dictionaries({"filter": st.sampled_from(["median", "minimum", "maximum"]), "size": size}),
        st.fixed_dictionaries({"filter": st.just("laplacian"), "neighbours": neighbours}),
        st.fixed_dictionaries({"filter": st.just("sharpen"), "amount": st.sampled_from([0.5, 1.0])}),
        st.fixed_dictionaries({"filter": st.just("unsharp"), "sigma": sigma, "amount": st.just(1.5)}),
        st.fixed_dictionaries({"filter": st.sampled_from(["sobel", "prewitt", "scharr"]), "output": axis}),
        st.fixed_dictionaries({"filter": st.just("log"), "sigma": sigma}),
        st.fixed_dictionaries({"filter": st.just("dog"), "sigma": st.just(0.5), "sigma2": sigma}),
        st.fixed_dictionaries({"filter": st.just("threshold"), "value": threshold}),
        st.fixed_dictionaries({"filter": st.just("abs")}),
        st.fixed_dictionaries({"filter": st.just("clip"), "min": st.just(-20.0), "max": st.just(40.0)}),
        st.fixed_dictionaries({"filter": st.just("rescale"), "min": st.just(-1.0), "max": st.just(2.0)}),
    )


@st.composite
def step(draw: st.DrawFn, ndim: int) -> dict[str, Any]:
    return {**draw(own_keys(ndim)), **draw(common_keys(ndim))}


@st.composite
def case(draw: st.DrawFn, max_steps: int = 3) -> tuple[np.ndarray, tuple[int, ...], list[dict[str, Any]]]:
    """An image (2-D or 3-D, float32 or uint16), a processing block shape and a chain."""
    ndim = draw(st.sampled_from([2, 2, 3]))
    largest = 20 if ndim == 2 else 8
    shape = tuple(draw(st.lists(st.integers(1, largest), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(["float32", "uint16"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if dtype == "uint16":
        image = rng.integers(0, 60, shape).astype(np.uint16)
    else:
        image = rng.normal(0.0, 10.0, shape).astype(np.float32)
    chunks = tuple(draw(st.integers(min(2, n), max(2, n))) for n in shape)
    steps = draw(st.lists(step(ndim), min_size=1, max_size=max_steps))
    return image, chunks, steps
