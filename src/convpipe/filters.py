"""The filter registry: each filter's keys, and the operation it builds (README, "Filters").

A filter is added here and nowhere else: its parameter model gives validation and the
``convpipe filters`` listing, its ``build`` gives the operation the engine runs, the plan
measures and the tests check against the whole-image reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, model_validator

from convpipe import kernels
from convpipe.errors import ParamError
from convpipe.geometry import PAD_KEYWORDS, PADDING_ALIASES, PADDING_MODES
from convpipe.ops import Gradient, Linear, Op, Part, Pointwise, Rank
from convpipe.params import (
    MAX_TAPS,
    MAX_WINDOW,
    Boolean,
    Number,
    OptionalNumber,
    OptionalText,
    Sigma,
    Size,
    Truncate,
    as_plain,
    fail,
    integer,
    number,
    one_of,
    optional,
    per_axis,
    shown,
)

#: What a step does with nodata samples (README, "Nodata").
NODATA_POLICIES = ("propagate", "ignore", "fill")


def _pad(value: Any) -> Any:
    if isinstance(value, str):
        if value not in PAD_KEYWORDS:
            raise fail(f"must be same, valid, full, an integer >= 0 or a list of them (got {shown(value)})")
        return value
    return per_axis(integer(0, MAX_TAPS), f"same, valid, full or an integer from 0 to {MAX_TAPS}")(value)


def _share(value: Any) -> float:
    share = number(value)
    if not 0 < share <= 1:
        raise fail(f"must be in (0, 1] (got {share:g})")
    return share


def _padding(value: Any) -> str:
    names = [*PADDING_MODES, *PADDING_ALIASES]
    if value not in names:
        raise fail(f"must be one of {', '.join(names)} (got {shown(value)})")
    return str(PADDING_ALIASES.get(value, value))


class Step(BaseModel):
    """The keys every step takes (README, "Config keys"); filters subclass it with their own."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    filter: str = Field(description="the filter's name")
    pad: Annotated[str | int | tuple[int, ...], PlainValidator(_pad), as_plain] = Field(
        "same", description="same, valid, full, or pixels per border (one value or one per axis)"
    )
    padding: Annotated[str, PlainValidator(_padding)] = Field(
        "reflect",
        description="what lies outside the image: reflect, symmetric, replicate, wrap, zero, constant",
    )
    cval: Number = Field(0.0, description="the value outside the image for padding: constant")
    stride: Size = Field(1, description="keep every n-th output (one value or one per axis)")
    flip: Boolean = Field(False, description="flip the kernel: true convolution instead of correlation")
    nodata: Annotated[str, PlainValidator(one_of(*NODATA_POLICIES))] = Field(
        "propagate", description='what nodata samples do to this step: propagate, ignore or fill (README, "Nodata")'
    )
    min_valid: Annotated[float, PlainValidator(_share)] = Field(
        0.5, description="with nodata: ignore, the least valid share of a window for a valid output (0 < x <= 1)"
    )
    fill_value: OptionalNumber = Field(
        None, description="the value nodata samples take; required with nodata: fill, and only then (no default)"
    )

    common_keys: ClassVar[tuple[str, ...]] = (
        "filter",
        "pad",
        "padding",
        "cval",
        "stride",
        "flip",
        "nodata",
        "min_valid",
        "fill_value",
    )

    @model_validator(mode="after")
    def _zero_pads_with_zero(self) -> Step:
        """``cval`` is read only by ``padding: constant``, as scipy.ndimage reads it only in
        ``mode='constant'``: ``zero`` pads with 0 whatever ``cval`` says."""
        if self.padding == "zero" and self.cval != 0:
            object.__setattr__(self, "cval", 0.0)
        return self

    @model_validator(mode="after")
    def _nodata_keys(self) -> Step:
        if self.nodata == "fill" and self.fill_value is None:
            raise fail("nodata: fill needs fill_value (the value nodata samples take)")
        if self.fill_value is not None and self.nodata != "fill":
            raise fail("fill_value: only with nodata: fill")
        return self


def per_axis_values(value: Any, ndim: int, key: str) -> tuple[Any, ...]:
    """Broadcast a scalar to every spatial axis; check a list has one value per axis."""
    if isinstance(value, tuple):
        if len(value) != ndim:
            raise ParamError(key, f"needs one value per spatial axis ({ndim}), got {len(value)}")
        return value
    return (value,) * ndim


def _separable(factors: Sequence[np.ndarray], weight: float = 1.0) -> Part:
    return Part(weight, factors=tuple(np.asarray(f, dtype=np.float64) for f in factors))


def _identity(ndim: int) -> Part:
    return _separable([np.ones(1)] * ndim)


def _gaussian_part(sigma: Any, truncate: float, ndim: int, weight: float = 1.0) -> Part:
    sigmas = per_axis_values(sigma, ndim, "sigma")
    return _separable([kernels.gaussian_1d(s, truncate) for s in sigmas], weight)


def _laplacian_parts(neighbours: int | None, ndim: int, weight: float) -> tuple[Part, ...]:
    neighbours = 2 * ndim if neighbours is None else neighbours
    if neighbours not in (2 * ndim, 3**ndim - 1):
        raise ParamError("neighbours", f"must be {2 * ndim} or {3**ndim - 1} in {ndim}-D (got {neighbours})")
    if neighbours == 2 * ndim:  # a sum of 1-D second differences, one per axis
        second = np.array([1.0, -2.0, 1.0])
        return tuple(
            _separable([second if a == axis else np.ones(1) for a in range(ndim)], weight) for axis in range(ndim)
        )
    return (Part(weight, dense=kernels.laplacian(ndim, neighbours)),)


# --- the filters' own keys -------------------------------------------------------------------


class Convolve(Step):
    kernel: Any = Field(
        None,
        description="the kernel as a nested list, one level per spatial axis; "
        "give exactly one of kernel and kernel_file (no default)",
    )
    kernel_file: OptionalText = Field(
        None,
        description="a NumPy .npy file holding the kernel (numbers, no pickled objects); "
        "give exactly one of kernel and kernel_file (no default)",
    )
    normalize: Boolean = Field(False, description="divide the kernel by its sum")

    @model_validator(mode="after")
    def _one_kernel(self) -> Convolve:
        if (self.kernel is None) == (self.kernel_file is None):
            raise fail("give exactly one of kernel or kernel_file")
        return self


class Box(Step):
    size: Size = Field(3, description="window size (one value or one per axis)")


class Gaussian(Step):
    sigma: Sigma = Field(description="standard deviation in pixels (one value or one per axis)")
    truncate: Truncate = Field(4.0, description="kernel radius in sigmas: radius = int(truncate*sigma + 0.5)")

    sigma_keys: ClassVar[tuple[str, ...]] = ("sigma",)

    @model_validator(mode="after")
    def _kernel_length(self) -> Gaussian:
        # Each key is within its range, but together they could still ask for a kernel longer
        # than MAX_TAPS: say so with both numbers, before anything is built.
        for key in self.sigma_keys:
            value = getattr(self, key)
            sigma = max(value) if isinstance(value, tuple) else value
            taps = 2 * kernels.gaussian_radius(sigma, self.truncate) + 1
            if taps > MAX_TAPS:
                raise fail(
                    f"{key}: {sigma:g} with truncate {self.truncate:g} makes a kernel of {taps} taps "
                    f"(2*int(truncate*sigma + 0.5) + 1); at most {MAX_TAPS}: lower {key} or truncate"
                )
        return self


class RankParams(Step):
    size: Size = Field(3, description="window size (one value or one per axis)")


class Laplacian(Step):
    neighbours: Annotated[int | None, PlainValidator(optional(integer(1, 26)))] = Field(
        None, description="4 or 8 in 2-D, 6 or 26 in 3-D (default: the face neighbours, 4 in 2-D and 6 in 3-D)"
    )


class Sharpen(Laplacian):
    amount: Number = Field(1.0, description="image - amount * laplacian(image)")


class Unsharp(Gaussian):
    amount: Number = Field(1.0, description="image + amount * (image - gaussian(image))")


class GradientParams(Step):
    output: Annotated[str, PlainValidator(one_of("magnitude", "z", "y", "x"))] = Field(
        "magnitude", description="magnitude, or the axis letter of one derivative"
    )


class DifferenceOfGaussians(Gaussian):
    sigma2: Sigma = Field(description="the second, subtracted Gaussian's sigma")

    sigma_keys: ClassVar[tuple[str, ...]] = ("sigma", "sigma2")


class Threshold(Step):
    value: Number = Field(description="pixels above this become `above`, the rest `below`")
    above: Number = Field(1.0, description="value where the pixel > value")
    below: Number = Field(0.0, description="value elsewhere")


class NoKeys(Step):
    pass


class Clip(Step):
    min: OptionalNumber = Field(None, description="lower bound (default: none, unbounded)")
    max: OptionalNumber = Field(None, description="upper bound (default: none, unbounded)")

    @model_validator(mode="after")
    def _ordered(self) -> Clip:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise fail(f"min must be <= max (got min {self.min:g}, max {self.max:g})")
        return self


class Rescale(Step):
    min: Number = Field(0.0, description="the output value of the image's minimum")
    max: Number = Field(1.0, description="the output value of the image's maximum")


# --- how each filter becomes an operation (in spatial dimensions) ----------------------------


def _holds_bool(nested: Any) -> bool:
    if isinstance(nested, list):
        return any(_holds_bool(item) for item in nested)
    return isinstance(nested, bool)


#: The first bytes of every file numpy.save writes.
NPY_MAGIC = b"\x93NUMPY"


def _check_kernel_shape(key: str, shape: Sequence[int]) -> None:
    """A kernel no longer than MAX_TAPS along any axis and of at most MAX_WINDOW coefficients."""
    if any(n > MAX_TAPS for n in shape) or math.prod(shape) > MAX_WINDOW:
        raise ParamError(
            key,
            f"a kernel of shape {tuple(shape)} is too large: at most {MAX_TAPS} taps along an axis "
            f"and {MAX_WINDOW} coefficients in all",
        )


def _nested_shape(nested: Any) -> list[int]:
    """The shape a nested list claims along its first items (np.array checks the rest)."""
    shape = []
    while isinstance(nested, list) and nested:
        shape.append(len(nested))
        nested = nested[0]
    return shape


def _read_kernel_file(path: str) -> np.ndarray:
    """A .npy file, recognised by its first bytes; its header is read before its data, so a
    file that is no .npy, holds objects or is too large is refused without loading it."""
    key = "kernel_file"
    try:
        with open(path, "rb") as file:
            if file.read(len(NPY_MAGIC)) != NPY_MAGIC:
                raise ParamError(
                    key, f"{path} is not a NumPy .npy file (allowed: an array of numbers saved with numpy.save)"
                )
            file.seek(0)
            version = np.lib.format.read_magic(file)
            header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version in header:
                shape, _, dtype = header[version](file)
                if dtype.hasobject:
                    raise ParamError(key, f"{path} holds Python objects; it must hold numbers")
                _check_kernel_shape(key, shape)
            file.seek(0)
            return np.asarray(np.load(file, allow_pickle=False))
    except ParamError:
        raise
    except FileNotFoundError:
        raise ParamError(key, f"{path}: no such file") from None
    except OSError as error:
        raise ParamError(key, f"cannot read {path} ({error.strerror or error})") from None
    except ValueError as error:
        raise ParamError(key, f"{path} is not a readable .npy file ({shown(str(error))})") from None


def _load_kernel(params: Convolve) -> np.ndarray:
    if params.kernel_file is not None:
        key, kernel = "kernel_file", _read_kernel_file(params.kernel_file)
    else:
        key = "kernel"
        if not isinstance(params.kernel, list):
            raise ParamError(key, f"must be a nested list, one level per spatial axis (got {shown(params.kernel)})")
        _check_kernel_shape(key, _nested_shape(params.kernel))
        if _holds_bool(params.kernel):
            raise ParamError(key, "must hold numbers (got true/false)")
        try:
            kernel = np.array(params.kernel, dtype=np.float64)
        except (ValueError, TypeError):
            raise ParamError(key, "must be a rectangular nested list of numbers") from None
    if kernel.dtype.kind not in "biuf" or kernel.dtype == bool:
        raise ParamError(key, f"must hold numbers (got {kernel.dtype})")
    if kernel.ndim == 0:
        raise ParamError(key, "must be an array with one dimension per spatial axis (got a single number)")
    if kernel.size == 0:
        raise ParamError(key, "must not be empty")
    _check_kernel_shape(key, kernel.shape)
    if not np.isfinite(kernel).all():
        raise ParamError(key, "must hold finite numbers (no NaN or infinity)")
    return kernel.astype(np.float64)


def build_convolve(params: Convolve, axes: str) -> Op:
    kernel = _load_kernel(params)
    key = "kernel_file" if params.kernel_file is not None else "kernel"
    if kernel.ndim != len(axes):
        raise ParamError(key, f"has {kernel.ndim} dimensions; the image has {len(axes)} spatial axes ({axes})")
    if params.normalize:
        total = kernel.sum()
        if total == 0:
            raise ParamError("normalize", "the kernel sums to 0, so it cannot be normalised")
        kernel = kernel / total
    return Linear((Part(1.0, dense=kernel),))


def build_box(params: Box, axes: str) -> Op:
    sizes = per_axis_values(params.size, len(axes), "size")
    return Linear((_separable([kernels.box_1d(s) for s in sizes]),))


def build_gaussian(params: Gaussian, axes: str) -> Op:
    return Linear((_gaussian_part(params.sigma, params.truncate, len(axes)),))


def build_rank(statistic: str) -> Callable[[RankParams, str], Op]:
    def build(params: RankParams, axes: str) -> Op:
        sizes = per_axis_values(params.size, len(axes), "size")
        if math.prod(sizes) > MAX_WINDOW:  # a rank filter holds the whole window of every sample
            window = "x".join(str(n) for n in sizes)
            raise ParamError("size", f"a {window} window is {math.prod(sizes)} samples; at most {MAX_WINDOW}")
        return Rank(statistic, sizes)  # type: ignore[arg-type]

    return build


def build_laplacian(params: Laplacian, axes: str) -> Op:
    return Linear(_laplacian_parts(params.neighbours, len(axes), 1.0))


def build_sharpen(params: Sharpen, axes: str) -> Op:
    ndim = len(axes)
    return Linear((_identity(ndim), *_laplacian_parts(params.neighbours, ndim, -params.amount)))


def build_unsharp(params: Unsharp, axes: str) -> Op:
    ndim = len(axes)
    identity = Part(1.0 + params.amount, factors=_identity(ndim).factors)
    return Linear((identity, _gaussian_part(params.sigma, params.truncate, ndim, -params.amount)))


def build_gradient(operator: str) -> Callable[[GradientParams, str], Op]:
    def build(params: GradientParams, axes: str) -> Op:
        ndim = len(axes)
        components = tuple(
            Linear((_separable(kernels.gradient_factors(operator, ndim, axis)),)) for axis in range(ndim)
        )
        if params.output == "magnitude":
            return Gradient(components, magnitude=True)
        if params.output not in axes:
            raise ParamError(
                "output",
                f"must be magnitude or one of the spatial axes {', '.join(axes)} (got {params.output!r})",
            )
        return Gradient((components[axes.index(params.output)],), magnitude=False)

    return build


def build_log(params: Gaussian, axes: str) -> Op:
    ndim = len(axes)
    sigmas = per_axis_values(params.sigma, ndim, "sigma")
    return Linear(
        tuple(
            _separable(
                [kernels.gaussian_1d(s, params.truncate, order=2 if a == axis else 0) for a, s in enumerate(sigmas)]
            )
            for axis in range(ndim)
        )
    )


def build_dog(params: DifferenceOfGaussians, axes: str) -> Op:
    ndim = len(axes)
    return Linear(
        (
            _gaussian_part(params.sigma, params.truncate, ndim),
            _gaussian_part(params.sigma2, params.truncate, ndim, weight=-1.0),
        )
    )


def build_pointwise(function: str, keys: Sequence[str]) -> Callable[[Step, str], Op]:
    def build(params: Step, axes: str) -> Op:
        values = tuple((key, getattr(params, key)) for key in keys)
        return Pointwise(function, values, len(axes))  # type: ignore[arg-type]

    return build


@dataclass(frozen=True)
class Filter:
    """A registry entry: its name, aliases, keys and the operation it builds."""

    name: str
    params: type[Step]
    build: Callable[[Any, str], Op]
    summary: str
    aliases: tuple[str, ...] = ()

    def own_keys(self) -> dict[str, Any]:
        """The filter's keys beyond the common ones, with their pydantic field info."""
        return {k: v for k, v in self.params.model_fields.items() if k not in Step.common_keys}


FILTERS: dict[str, Filter] = {
    f.name: f
    for f in [
        Filter("convolve", Convolve, build_convolve, "a kernel as written (cross-correlation)"),
        Filter("box", Box, build_box, "mean of the window", ("mean", "uniform")),
        Filter("gaussian", Gaussian, build_gaussian, "Gaussian blur, as scipy.ndimage.gaussian_filter"),
        Filter("median", RankParams, build_rank("median"), "median of the window (rank n//2)"),
        Filter("minimum", RankParams, build_rank("minimum"), "minimum of the window"),
        Filter("maximum", RankParams, build_rank("maximum"), "maximum of the window"),
        Filter("laplacian", Laplacian, build_laplacian, "3x3(x3) discrete Laplacian"),
        Filter("sharpen", Sharpen, build_sharpen, "image - amount * laplacian(image)"),
        Filter("unsharp", Unsharp, build_unsharp, "image + amount * (image - gaussian(image))"),
        Filter(
            "sobel",
            GradientParams,
            build_gradient("sobel"),
            "Sobel gradient magnitude or derivative",
        ),
        Filter(
            "prewitt",
            GradientParams,
            build_gradient("prewitt"),
            "Prewitt gradient magnitude or derivative",
        ),
        Filter(
            "scharr",
            GradientParams,
            build_gradient("scharr"),
            "Scharr gradient magnitude or derivative",
        ),
        Filter("log", Gaussian, build_log, "Laplacian of Gaussian, as scipy.ndimage.gaussian_laplace"),
        Filter("dog", DifferenceOfGaussians, build_dog, "gaussian(sigma) - gaussian(sigma2)"),
        Filter(
            "threshold",
            Threshold,
            build_pointwise("threshold", ("value", "above", "below")),
            "above where pixel > value, else below",
        ),
        Filter("abs", NoKeys, build_pointwise("abs", ()), "absolute value"),
        Filter("clip", Clip, build_pointwise("clip", ("min", "max")), "limit values to [min, max]"),
        Filter(
            "rescale",
            Rescale,
            build_pointwise("rescale", ("min", "max")),
            "map the image's global range to [min, max] (one extra pass)",
        ),
    ]
}

ALIASES: dict[str, str] = {alias: f.name for f in FILTERS.values() for alias in f.aliases}


def lookup(name: str) -> Filter | None:
    """The filter called ``name`` or one of its aliases."""
    return FILTERS.get(ALIASES.get(name, name))


def build_op(step: Step, axes: str) -> Op:
    """The operation of a validated step over the given spatial axes, flipped if asked."""
    entry = lookup(step.filter)
    assert entry is not None, f"unvalidated step {step.filter!r}"
    op = entry.build(step, axes)
    return op.flipped() if step.flip else op
