"""Physical coordinates through the chain: where each output sample sits, in the input's units.

Every axis carries an affine map from sample index to physical position, as OME-NGFF
writes it: ``position(i) = translation + i * scale``, the position of the *centre* of
sample i. A step with kernel size F, pad P_before and stride S puts the centre of its output
sample j at input sample ``j*S + (F - 1)/2 - P_before``, so it multiplies the scale by S and
moves the translation by ``((F - 1)/2 - P_before) * scale``. GeoTIFF's corner convention is a
half sample away (``convpipe.io.geotiff``). Pure arithmetic, like ``geometry``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from convpipe.geometry import AxisStep


@dataclass(frozen=True)
class AxisFrame:
    """One axis's physical frame: sample spacing, position of sample 0's centre, unit."""

    scale: float = 1.0
    translation: float = 0.0
    unit: str | None = None

    def through(self, step: AxisStep) -> AxisFrame:
        """The frame of this axis after one step."""
        centre = (step.size - 1) / 2 - step.pad_before  # in input samples
        return AxisFrame(self.scale * step.stride, self.translation + centre * self.scale, self.unit)

    def halved(self) -> AxisFrame:
        """The frame after a 2x mean: sample j averages input samples 2j and 2j+1."""
        return AxisFrame(self.scale * 2, self.translation + self.scale / 2, self.unit)


Frame = tuple[AxisFrame, ...]


def identity(ndim: int) -> Frame:
    """Sample indices as coordinates: what an image without physical metadata has."""
    return (AxisFrame(),) * ndim


def through_chain(frame: Frame, steps: Sequence[Sequence[AxisStep]]) -> Frame:
    """The frame after every step (each step given as its per-axis geometry)."""
    for axes in steps:
        frame = tuple(f.through(a) for f, a in zip(frame, axes, strict=True))
    return frame


def halved(frame: Frame, axes: Sequence[int]) -> Frame:
    """The frame of a pyramid level made by a 2x mean along ``axes``."""
    return tuple(f.halved() if d in axes else f for d, f in enumerate(frame))


def is_identity(frame: Frame) -> bool:
    return all(f.scale == 1.0 and f.translation == 0.0 and f.unit is None for f in frame)
