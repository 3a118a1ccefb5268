"""Kernel builders, as plain numpy, following scipy.ndimage's conventions.

A kernel is applied as cross-correlation (README, "What it computes"): weight ``k[j]`` multiplies the sample at
window offset ``j``. Separable kernels are returned as one 1-D array per spatial axis so the
engine can run them as 1-D passes.
"""

from __future__ import annotations

import numpy as np

#: Derivative and cross-axis smoothing of the gradient operators (scipy.ndimage.sobel/prewitt).
DERIVATIVE = np.array([-1.0, 0.0, 1.0])
GRADIENT_SMOOTHING: dict[str, np.ndarray] = {
    "sobel": np.array([1.0, 2.0, 1.0]),
    "prewitt": np.array([1.0, 1.0, 1.0]),
    "scharr": np.array([3.0, 10.0, 3.0]),
}


def gaussian_radius(sigma: float, truncate: float) -> int:
    """Half-width of a Gaussian kernel, as scipy.ndimage.gaussian_filter chooses it."""
    return int(truncate * sigma + 0.5)


def gaussian_1d(sigma: float, truncate: float = 4.0, order: int = 0) -> np.ndarray:
    """scipy.ndimage's sampled Gaussian (or its ``order``-th derivative), normalised to sum 1.

    Same algorithm as scipy's private ``_gaussian_kernel1d``: the derivative is the
    normalised Gaussian times a polynomial, so ``order=2`` is exactly what
    ``gaussian_laplace`` uses.
    """
    radius = gaussian_radius(sigma, truncate)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    if sigma == 0:
        phi = (x == 0).astype(np.float64)
    else:
        phi = np.exp(-0.5 / sigma**2 * x**2)
        phi /= phi.sum()
    if order == 0:
        return phi
    exponents = np.arange(order + 1)
    q = np.zeros(order + 1)
    q[0] = 1.0
    derivative = np.diag(exponents[1:].astype(np.float64), 1)
    step = np.diag(np.ones(order) / -(sigma**2), -1)
    for _ in range(order):
        q = (derivative + step).dot(q)
    return (x[:, None] ** exponents).dot(q) * phi


def box_1d(size: int) -> np.ndarray:
    """Uniform weights summing to 1."""
    return np.full(size, 1.0 / size)


def laplacian(ndim: int, neighbours: int) -> np.ndarray:
    """The 3x3(x3) discrete Laplacian: face neighbours (2*ndim) or all neighbours (3**ndim - 1)."""
    if neighbours == 3**ndim - 1:
        kernel = np.ones((3,) * ndim)
    elif neighbours == 2 * ndim:
        kernel = np.zeros((3,) * ndim)
        for axis in range(ndim):
            index = [1] * ndim
            for offset in (0, 2):
                index[axis] = offset
                kernel[tuple(index)] = 1.0
    else:
        raise ValueError(f"neighbours must be {2 * ndim} or {3**ndim - 1} in {ndim}-D")
    kernel[(1,) * ndim] = -neighbours
    return kernel


def outer(factors: list[np.ndarray]) -> np.ndarray:
    """The n-D kernel of a separable one: the outer product of its 1-D factors."""
    kernel = np.asarray(factors[0], dtype=np.float64)
    for factor in factors[1:]:
        kernel = np.multiply.outer(kernel, factor)
    return kernel


def gradient_factors(operator: str, ndim: int, axis: int) -> list[np.ndarray]:
    """Separable factors of the derivative along ``axis``, smoothed across the other axes."""
    smoothing = GRADIENT_SMOOTHING[operator]
    return [DERIVATIVE if a == axis else smoothing for a in range(ndim)]


def embed_centred(kernel: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Place an odd-sized kernel in the centre of a larger zero kernel (README, "Filters": composites)."""
    out = np.zeros(shape)
    index = tuple(
        slice((big - small) // 2, (big - small) // 2 + small) for big, small in zip(shape, kernel.shape, strict=True)
    )
    out[index] = kernel
    return out
