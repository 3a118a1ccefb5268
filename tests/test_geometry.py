"""The README's tables and formula ("What it computes"), checked with literal numbers and against numpy.pad."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from convpipe.geometry import (
    CONSTANT,
    PADDING_MODES,
    AxisStep,
    axis_gather,
    axis_needs,
    canonical_padding,
    chain_halo,
    output_length,
    pad_widths,
    padding_source,
)


@pytest.mark.parametrize(
    ("pad", "size", "expected"),
    [
        ("same", 3, (1, 1)),
        ("same", 5, (2, 2)),
        ("same", 4, (1, 2)),  # even F: the extra pixel goes after (PyTorch/TensorFlow)
        ("same", 2, (0, 1)),
        ("same", 1, (0, 0)),
        ("valid", 5, (0, 0)),
        ("full", 5, (4, 4)),
        ("full", 4, (3, 3)),
        (0, 3, (0, 0)),
        (7, 3, (7, 7)),
    ],
)
def test_pad_widths_follow_the_spec_table(pad: str | int, size: int, expected: tuple[int, int]) -> None:
    assert pad_widths(pad, size) == expected


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8])
@pytest.mark.parametrize("n", [1, 5, 16])
def test_output_lengths_of_the_pad_keywords(size: int, n: int) -> None:
    def length(pad: str | int) -> int:
        return output_length(n, size, *pad_widths(pad, size), 1)

    assert length("same") == n
    assert length("valid") == n - size + 1
    assert length("full") == n + size - 1
    assert length(2) == n + 4 - size + 1


def test_output_length_with_stride() -> None:
    assert output_length(10, 3, 1, 1, 2) == 5  # floor((10 + 2 - 3) / 2) + 1
    assert output_length(11, 3, 0, 0, 3) == 3  # floor(8 / 3) + 1
    assert output_length(3, 5, 0, 0, 1) == -1  # an empty output, for the config to reject


# The row `a b c d` padded by 2 on each side, straight from the README ("What it computes").
README_ROWS = {
    "reflect": "c b a b c d c b",
    "mirror": "c b a b c d c b",
    "symmetric": "b a a b c d d c",
    "replicate": "a a a b c d d d",
    "edge": "a a a b c d d d",
    "nearest": "a a a b c d d d",
    "wrap": "c d a b c d a b",
    "circular": "c d a b c d a b",
    "zero": "0 0 a b c d 0 0",
    "constant": "v v a b c d v v",
}


@pytest.mark.parametrize(("mode", "row"), README_ROWS.items())
def test_padding_rows_match_the_spec(mode: str, row: str) -> None:
    sources = padding_source(np.arange(-2, 6), 4, mode)
    fill = "0" if mode == "zero" else "v"
    shown = " ".join(fill if s == CONSTANT else "abcd"[s] for s in sources)
    assert shown == row


def numpy_pad(values: np.ndarray, before: int, after: int, mode: str, fill: float) -> np.ndarray:
    """The row padded by numpy.pad itself, constant modes filled with ``fill``."""
    numpy_mode = PADDING_MODES[mode]
    if numpy_mode == "constant":
        return np.pad(values, (before, after), constant_values=fill)
    return np.pad(values, (before, after), mode=numpy_mode)


@given(
    n=st.integers(1, 9),
    before=st.integers(0, 30),
    after=st.integers(0, 30),
    mode=st.sampled_from(sorted(PADDING_MODES)),
)
def test_padding_source_equals_numpy_pad_even_far_beyond_the_image(n: int, before: int, after: int, mode: str) -> None:
    values = np.arange(10, 10 + n)
    expected = numpy_pad(values, before, after, mode, fill=-1)
    sources = padding_source(np.arange(-before, n + after), n, mode)
    got = np.where(sources == CONSTANT, -1, values[np.maximum(sources, 0)])
    np.testing.assert_array_equal(got, expected)


def test_aliases_resolve_and_unknown_modes_fail() -> None:
    assert canonical_padding("mirror") == "reflect"
    assert canonical_padding("nearest") == "replicate"
    assert canonical_padding("circular") == "wrap"
    with pytest.raises(ValueError, match="unknown padding"):
        canonical_padding("periodic")


def test_chain_halo_composes_strides() -> None:
    gaussian = AxisStep(17, 8, 8, 1, 100)
    sobel_strided = AxisStep(3, 1, 1, 2, 100)
    # Output [a, b) of the strided sobel reads gaussian outputs [2a - 1, 2b); those read input
    # 8 more on each side.
    assert chain_halo([gaussian, sobel_strided]) == (2, 9, 8)
    # The other way round the gaussian's halo of 8 is counted in sobel outputs, 2 pixels each.
    assert chain_halo([sobel_strided, gaussian]) == (2, 1 + 2 * 8, 0 + 2 * 8)


@given(
    n=st.integers(1, 20),
    size=st.integers(1, 6),
    stride=st.integers(1, 3),
    before=st.integers(0, 8),
    after=st.integers(0, 8),
    mode=st.sampled_from(sorted(PADDING_MODES)),
    data=st.data(),
)
def test_gathered_windows_equal_the_whole_padded_axis(
    n: int, size: int, stride: int, before: int, after: int, mode: str, data: st.DataObject
) -> None:
    """Any subset of outputs, gathered from only the samples it needs, sees the right windows."""
    step = AxisStep(size, before, after, stride, n)
    if step.n_out < 1:
        return
    wanted = np.array(sorted(data.draw(st.sets(st.integers(0, step.n_out - 1), min_size=1))))
    values = np.arange(100.0, 100.0 + n)
    padded = numpy_pad(values, before, after, mode, fill=-7.0)
    expected = np.stack([padded[i * stride : i * stride + size] for i in wanted])

    have = axis_needs(wanted, step, mode)
    held = np.concatenate([values[have], [-7.0]])
    gather = axis_gather(wanted, have, step, mode)
    window = held[gather.take]
    starts = np.arange(0, len(window) - size + 1, stride)
    got = np.stack([window[s : s + size] for s in starts])[gather.keep]
    np.testing.assert_array_equal(got, expected)
