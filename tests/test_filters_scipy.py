"""Every built-in filter against scipy.ndimage on the same data, chunked, every padding mode.

The README ("What it computes") maps our padding names onto scipy's: reflect→mirror, symmetric→reflect,
replicate→nearest, wrap→grid-wrap, zero/constant→constant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.ndimage as ndi

from convpipe import filter_array
from convpipe.filters import FILTERS

SCIPY_MODES = {
    "reflect": "mirror",
    "symmetric": "reflect",
    "replicate": "nearest",
    "wrap": "grid-wrap",
    "zero": "constant",
    "constant": "constant",
}
CVAL = {"constant": 3.5}

rng = np.random.default_rng(42)
IMAGE_2D = rng.normal(100.0, 20.0, (37, 29)).astype(np.float32)
IMAGE_3D = rng.normal(100.0, 20.0, (9, 11, 13)).astype(np.float32)
CHUNKS = {2: (8, 7), 3: (4, 5, 6)}


def ours(image: np.ndarray, step: dict[str, Any], padding: str) -> np.ndarray:
    step = {**step, "padding": padding, "cval": CVAL.get(padding, 0.0)}
    return filter_array(image, [step], chunks=CHUNKS[image.ndim], dtype="float64").compute()


def scipy_kwargs(padding: str) -> dict[str, Any]:
    return {"mode": SCIPY_MODES[padding], "cval": CVAL.get(padding, 0.0)}


SMOOTHING = {"sobel": [1.0, 2.0, 1.0], "prewitt": [1.0, 1.0, 1.0], "scharr": [3.0, 10.0, 3.0]}


def derivative(operator: str) -> Any:
    """scipy's sobel/prewitt (and the same for scharr) along one axis.

    scipy runs them as 1-D passes, each padding its own input. That equals one padding of the
    image except with a non-zero constant, where the second pass pads the smoothed image with
    cval again. The README ("Filters") applies each derivative as one kernel, padding once; so there we
    compare with scipy's n-D correlate of the same kernel.
    """

    def apply(image: np.ndarray, axis: int, **kw: Any) -> np.ndarray:
        factors = [[-1.0, 0.0, 1.0] if a == axis else SMOOTHING[operator] for a in range(image.ndim)]
        if kw.get("cval", 0.0) != 0.0:
            kernel = np.array(factors[0])
            for factor in factors[1:]:
                kernel = np.multiply.outer(kernel, factor)
            return ndi.correlate(image, kernel, **kw)
        if operator in ("sobel", "prewitt"):
            return getattr(ndi, operator)(image, axis=axis, **kw)
        out = image
        for a, factor in enumerate(factors):
            out = ndi.correlate1d(out, factor, axis=a, **kw)
        return out

    return apply


def magnitude(function: Any, image: np.ndarray, **kw: Any) -> np.ndarray:
    return np.sqrt(sum(function(image, axis=a, **kw) ** 2 for a in range(image.ndim)))


def gaussian_laplace(image: np.ndarray, sigma: float, **kw: Any) -> np.ndarray:
    """scipy's LoG; with a non-zero constant, the same sum of kernels padded once (see above)."""
    if kw.get("cval", 0.0) == 0.0:
        return ndi.gaussian_laplace(image, sigma, **kw)
    impulse = np.zeros((2 * int(4.0 * sigma + 0.5) + 1,) * image.ndim)
    impulse[(impulse.shape[0] // 2,) * image.ndim] = 1.0
    kernel = ndi.gaussian_laplace(impulse, sigma, mode="constant")
    return ndi.correlate(image, kernel, **kw)


# filter step → the same thing written with scipy.ndimage
CASES: list[tuple[str, dict[str, Any], Any]] = [
    (
        "gaussian",
        {"filter": "gaussian", "sigma": 1.3},
        lambda x, kw: ndi.gaussian_filter(x, 1.3, **kw),
    ),
    (
        "gaussian-per-axis",
        {"filter": "gaussian", "sigma": [0.7, 2.1], "truncate": 3.0},
        lambda x, kw: ndi.gaussian_filter(x, [0.7, 2.1], truncate=3.0, **kw),
    ),
    ("box", {"filter": "box", "size": 5}, lambda x, kw: ndi.uniform_filter(x, 5, **kw)),
    (
        "mean-alias",
        {"filter": "mean", "size": [3, 1]},
        lambda x, kw: ndi.uniform_filter(x, [3, 1], **kw),
    ),
    # Even sizes: `same` puts the extra pixel after (PyTorch); scipy puts it before, so
    # scipy needs origin -1 to agree.
    (
        "box-even",
        {"filter": "uniform", "size": 4},
        lambda x, kw: ndi.uniform_filter(x, 4, origin=-1, **kw),
    ),
    ("median", {"filter": "median", "size": 3}, lambda x, kw: ndi.median_filter(x, 3, **kw)),
    (
        "median-even",
        {"filter": "median", "size": [4, 2]},
        lambda x, kw: ndi.median_filter(x, [4, 2], origin=-1, **kw),
    ),
    ("minimum", {"filter": "minimum", "size": 3}, lambda x, kw: ndi.minimum_filter(x, 3, **kw)),
    (
        "maximum",
        {"filter": "maximum", "size": [5, 3]},
        lambda x, kw: ndi.maximum_filter(x, [5, 3], **kw),
    ),
    ("laplacian", {"filter": "laplacian"}, lambda x, kw: ndi.laplace(x, **kw)),
    (
        "laplacian-8",
        {"filter": "laplacian", "neighbours": 8},
        lambda x, kw: ndi.correlate(x, np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], float), **kw),
    ),
    ("sharpen", {"filter": "sharpen", "amount": 0.7}, lambda x, kw: x - 0.7 * ndi.laplace(x, **kw)),
    (
        "unsharp",
        {"filter": "unsharp", "sigma": 1.5, "amount": 2.0},
        lambda x, kw: x + 2.0 * (x - ndi.gaussian_filter(x, 1.5, **kw)),
    ),
    (
        "sobel-y",
        {"filter": "sobel", "output": "y"},
        lambda x, kw: derivative("sobel")(x, axis=0, **kw),
    ),
    (
        "sobel-x",
        {"filter": "sobel", "output": "x"},
        lambda x, kw: derivative("sobel")(x, axis=1, **kw),
    ),
    ("sobel", {"filter": "sobel"}, lambda x, kw: magnitude(derivative("sobel"), x, **kw)),
    ("prewitt", {"filter": "prewitt"}, lambda x, kw: magnitude(derivative("prewitt"), x, **kw)),
    ("scharr", {"filter": "scharr"}, lambda x, kw: magnitude(derivative("scharr"), x, **kw)),
    ("log", {"filter": "log", "sigma": 1.2}, lambda x, kw: gaussian_laplace(x, 1.2, **kw)),
    (
        "dog",
        {"filter": "dog", "sigma": 1.0, "sigma2": 2.0},
        lambda x, kw: ndi.gaussian_filter(x, 1.0, **kw) - ndi.gaussian_filter(x, 2.0, **kw),
    ),
    (
        "convolve-flip",
        {"filter": "convolve", "kernel": [[1, 2, 0], [0, -1, 3], [4, 0, 1]], "flip": True},
        lambda x, kw: ndi.convolve(x, np.array([[1, 2, 0], [0, -1, 3], [4, 0, 1]], float), **kw),
    ),
    (
        "convolve-normalize",
        {"filter": "convolve", "kernel": [[1, 2, 1]], "normalize": True},
        lambda x, kw: ndi.correlate(x, np.array([[0.25, 0.5, 0.25]]), **kw),
    ),
]


@pytest.mark.parametrize("padding", sorted(SCIPY_MODES))
@pytest.mark.parametrize(("name", "step", "expected"), CASES, ids=[c[0] for c in CASES])
def test_2d_filter_matches_scipy(name: str, step: dict[str, Any], expected: Any, padding: str) -> None:
    image = IMAGE_2D.astype(np.float64)
    np.testing.assert_allclose(ours(image, step, padding), expected(image, scipy_kwargs(padding)), rtol=1e-9, atol=1e-9)


CASES_3D: list[tuple[str, dict[str, Any], Any]] = [
    (
        "gaussian",
        {"filter": "gaussian", "sigma": [0.5, 1.0, 1.5]},
        lambda x, kw: ndi.gaussian_filter(x, [0.5, 1, 1.5], **kw),
    ),
    ("laplacian-6", {"filter": "laplacian"}, lambda x, kw: ndi.laplace(x, **kw)),
    (
        "laplacian-26",
        {"filter": "laplacian", "neighbours": 26},
        lambda x, kw: ndi.correlate(x, np.where(np.arange(27).reshape(3, 3, 3) == 13, -26.0, 1.0), **kw),
    ),
    ("sobel", {"filter": "sobel"}, lambda x, kw: magnitude(derivative("sobel"), x, **kw)),
    (
        "sobel-z",
        {"filter": "sobel", "output": "z"},
        lambda x, kw: derivative("sobel")(x, axis=0, **kw),
    ),
    ("median", {"filter": "median", "size": 3}, lambda x, kw: ndi.median_filter(x, 3, **kw)),
    ("log", {"filter": "log", "sigma": 1.0}, lambda x, kw: gaussian_laplace(x, 1.0, **kw)),
]


@pytest.mark.parametrize("padding", sorted(SCIPY_MODES))
@pytest.mark.parametrize(("name", "step", "expected"), CASES_3D, ids=[c[0] for c in CASES_3D])
def test_3d_filter_matches_scipy(name: str, step: dict[str, Any], expected: Any, padding: str) -> None:
    image = IMAGE_3D.astype(np.float64)
    np.testing.assert_allclose(ours(image, step, padding), expected(image, scipy_kwargs(padding)), rtol=1e-9, atol=1e-9)


def test_pointwise_filters() -> None:
    image = IMAGE_2D.astype(np.float64)
    run = lambda step: ours(image, step, "reflect")  # noqa: E731
    np.testing.assert_array_equal(run({"filter": "abs"}), np.abs(image))
    np.testing.assert_array_equal(
        run({"filter": "threshold", "value": 100, "above": 5, "below": -1}),
        np.where(image > 100, 5.0, -1.0),
    )
    np.testing.assert_array_equal(run({"filter": "clip", "min": 90, "max": 110}), np.clip(image, 90, 110))
    np.testing.assert_array_equal(run({"filter": "clip", "max": 110}), np.minimum(image, 110))
    rescaled = run({"filter": "rescale", "min": -1, "max": 1})
    expected = (image - image.min()) / (image.max() - image.min()) * 2 - 1
    np.testing.assert_allclose(rescaled, expected, rtol=1e-12, atol=1e-12)


def test_every_registered_filter_is_checked_here() -> None:
    """A filter added to the registry must get a scipy (or numpy) comparison above."""
    checked = {step["filter"] for _, step, _ in CASES + CASES_3D}
    checked |= {"abs", "threshold", "clip", "rescale"}
    aliases = {alias: name for name, f in FILTERS.items() for alias in f.aliases}
    assert {aliases.get(name, name) for name in checked} == set(FILTERS)
