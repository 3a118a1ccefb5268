"""The plan: block layout, task count and memory estimate, from integers alone."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from convpipe.config import from_dict
from convpipe.errors import ConfigError
from convpipe.plan import PROCESS_BYTES, STREAM_BATCH_MOST, TARGET_BLOCK_BYTES, Plan, bind
from convpipe.traversal import MAX_CACHE_BYTES


def plan_for(steps: list[dict[str, Any]], shape: tuple[int, ...], storage: tuple[int, ...], **inp: Any) -> Plan:
    config = from_dict({"input": {"path": "in.zarr", **inp}, "output": {"path": "out.zarr"}, "pipeline": steps})
    return bind(config, shape, np.dtype("uint16"), storage)


def test_default_block_grows_storage_chunks_toward_the_target() -> None:
    plan = plan_for([{"filter": "gaussian", "sigma": 2}], (16384, 16384), (512, 512))
    block = plan.input_block
    assert all(b % 512 == 0 for b in block)  # whole storage chunks
    assert TARGET_BLOCK_BYTES / 2 < math.prod(block) * 4 <= TARGET_BLOCK_BYTES
    assert plan.block_shape == block  # stride 1: output blocks are input blocks


def test_default_block_never_exceeds_the_image() -> None:
    plan = plan_for([{"filter": "box"}], (300, 7000), (64, 64))
    assert plan.input_block[0] == 300
    assert plan.chunks[0] == (300,)


@pytest.mark.parametrize("stride", [2, 3, 5])
def test_default_block_is_a_multiple_of_the_total_stride(stride: int) -> None:
    steps = [{"filter": "box", "stride": stride}, {"filter": "sobel", "stride": 2}]
    plan = plan_for(steps, (5000, 5000), (500, 500))
    for length in plan.input_block:
        assert length % (2 * stride) == 0
    assert plan.block_shape == tuple(b // (2 * stride) for b in plan.input_block)


def test_explicit_chunks_set_the_block_and_the_layout() -> None:
    plan = plan_for([{"filter": "median", "stride": [2, 1]}], (100, 90), (10, 10), chunks=[40, 64])
    assert plan.block_shape == (20, 64)
    assert plan.chunks == ((20, 20, 10), (64, 26))
    assert plan.num_blocks == 6


def test_task_count_includes_the_rescale_passes() -> None:
    steps = [{"filter": "gaussian", "sigma": 1}, {"filter": "rescale"}, {"filter": "sobel"}, {"filter": "rescale"}]
    plan = plan_for(steps, (100, 100), (50, 50), chunks=[50, 50])
    assert plan.num_blocks == 4
    assert plan.range_passes == 2
    assert plan.task_count == 4 * 3 + 2


def test_memory_estimate_scales_with_block_and_workers_not_image() -> None:
    steps = [{"filter": "gaussian", "sigma": 2}, {"filter": "sobel"}]
    small = plan_for(steps, (4096, 4096), (512, 512), chunks=[1024, 1024])
    large = plan_for(steps, (65536, 65536), (512, 512), chunks=[1024, 1024])
    assert small.memory_per_block() == large.memory_per_block()
    assert large.memory_estimate(4) - large.memory_estimate(2) == 2 * large.memory_per_block()
    bigger_blocks = plan_for(steps, (4096, 4096), (512, 512), chunks=[2048, 2048])
    assert bigger_blocks.memory_per_block() > 3 * small.memory_per_block()
    # At least the float32 block itself, the uint16 input read and the output.
    assert small.memory_per_block() >= (1024 + 20) ** 2 * (4 + 2) + 1024**2 * 8


def test_a_volumes_cache_is_never_more_than_the_cap() -> None:
    steps = [{"filter": "gaussian", "sigma": 1.5}, {"filter": "sobel"}]
    volume = plan_for(steps, (256, 2048, 2048), (32, 256, 256))
    assert 0 < volume.cache_bytes <= MAX_CACHE_BYTES  # a band's chunks (tests/test_traversal.py)
    huge = plan_for(steps, (4096, 65536, 65536), (32, 256, 256))
    assert huge.cache_bytes == MAX_CACHE_BYTES
    assert huge.memory_estimate(2) - huge.memory_estimate(1) == huge.memory_per_block()


def test_halo_per_step_accumulates() -> None:
    steps = [{"filter": "gaussian", "sigma": 2}, {"filter": "sharpen"}, {"filter": "sobel", "stride": 2}]
    plan = plan_for(steps, (1000, 1000), (100, 100))
    assert [plan.halo(k)[0] for k in range(3)] == [(8, 8), (9, 9), (10, 9)]


def test_a_memory_budget_shrinks_blocks_until_the_estimate_fits() -> None:
    steps = [{"filter": "gaussian", "sigma": 2}, {"filter": "sobel", "stride": 2}]
    plan = plan_for(steps, (16384, 16384), (512, 512))
    budget = PROCESS_BYTES + (plan.memory_estimate(2) - PROCESS_BYTES) // 3
    fitted = plan.fitted(budget, workers=2)
    assert fitted.memory_estimate(2) <= budget
    assert math.prod(fitted.input_block) < math.prod(plan.input_block)
    assert all(b % 2 == 0 for b in fitted.input_block)  # still a multiple of the stride
    assert fitted.output_shape == plan.output_shape
    assert plan.fitted(plan.memory_estimate(2), workers=2) == plan  # fits already: unchanged


def test_an_impossible_memory_budget_is_a_clear_error() -> None:
    plan = plan_for([{"filter": "gaussian", "sigma": 2}], (4096, 4096), (512, 512))
    with pytest.raises(ConfigError, match="--memory: 10 MiB is not enough for 2 workers"):
        plan.fitted(10 * 2**20, workers=2)


def test_a_tiff_writer_holds_two_batches_of_blocks_at_most_whatever_the_cluster() -> None:
    """The process writing a GeoTIFF or COG is fed two blocks per worker at a time, capped:
    its memory does not follow a cluster's thread count (README, "Memory")."""
    config = from_dict(
        {"input": {"path": "in.zarr"}, "output": {"path": "out.tif", "format": "cog"}, "pipeline": [{"filter": "box"}]}
    )
    plan = bind(config, (16384, 16384), np.dtype("uint16"), (512, 512))
    block = math.prod(plan.block_shape) * 4
    assert plan.writer_bytes(2) - plan.writer_bytes(1) == 2 * 2 * block
    assert plan.writer_bytes(64) == plan.writer_bytes(8) == plan.writer_bytes(STREAM_BATCH_MOST)
