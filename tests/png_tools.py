"""Reading a preview's PNG where the image's pixels are drawn: the figures it saves, and the
colour at the centre of each shown pixel of a mask (through the figure's own transforms)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import matplotlib.figure
import numpy as np
import pytest

MAGENTA = np.array([1.0, 0.0, 1.0])


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[matplotlib.figure.Figure]]:
    """Every figure the preview saves, to map image pixels to PNG pixels."""
    figures: list[matplotlib.figure.Figure] = []
    save = matplotlib.figure.Figure.savefig

    def keep(figure: matplotlib.figure.Figure, *args: Any, **options: Any) -> None:
        figures.append(figure)
        save(figure, *args, **options)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    yield figures


def png_colours(
    png: np.ndarray, figure: matplotlib.figure.Figure, panel: int, mask: np.ndarray, margin: int = 2
) -> np.ndarray:
    """The PNG's RGB at the centre of each shown pixel of ``mask`` in panel ``panel`` (0: input,
    1: output); the ``margin`` outermost pixels, under the axes' frame, are left out."""
    axes = [ax for ax in figure.axes if ax.images][panel]
    image = axes.images[0]
    rows, cols = image.get_array().shape[:2]
    left, right, bottom, top = image.get_extent()
    inner = np.zeros_like(mask)
    inner[margin:-margin, margin:-margin] = True
    r, c = np.nonzero(mask & inner)
    points = np.column_stack([left + (c + 0.5) * (right - left) / cols, top + (r + 0.5) * (bottom - top) / rows])
    display = axes.transData.transform(points)
    return png[np.floor(png.shape[0] - display[:, 1]).astype(int), np.floor(display[:, 0]).astype(int), :3]


def is_colour(rgb: np.ndarray, colour: np.ndarray = MAGENTA, tolerance: float = 0.05) -> np.ndarray:
    return np.all(np.abs(rgb - colour) < tolerance, axis=-1)
