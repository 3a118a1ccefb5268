"""convpipe: chains of convolution filters over images larger than memory.

The same API the CLI uses, for notebooks and scripts::

    import convpipe
    config = convpipe.load_config("configs/edges.yaml", overrides=["pipeline[0].sigma=3"])
    plan = convpipe.make_plan(config)     # shapes, halos, blocks; reads no pixels
    lazy = convpipe.to_dask(config)       # the result as a lazy Dask array
    convpipe.run(config)                  # write it to config.output.path
    convpipe.preview(config, "p.png", region="0:512,0:512")   # input and output side by side

or, on an array already in memory::

    edges = convpipe.filter_array(image, [{"filter": "gaussian", "sigma": 2}, {"filter": "sobel"}])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from convpipe._version import __version__
from convpipe.config import Config, from_dict
from convpipe.config import load as load_config
from convpipe.engine import to_dask as _to_dask
from convpipe.errors import ConfigError, ConvpipeError, RunError
from convpipe.plan import Plan, bind
from convpipe.preview import preview
from convpipe.run import RunResult, input_spec, make_plan, run

if TYPE_CHECKING:
    import dask.array as da


def to_dask(config: Config) -> da.Array:
    """The config's result as a lazy Dask array (compute it, slice it, or store it yourself)."""
    plan = make_plan(config)
    return _to_dask(plan, input_spec(config, plan))


def filter_array(
    image: np.ndarray,
    pipeline: list[dict[str, Any]],
    *,
    axes: str | None = None,
    chunks: tuple[int, ...] | None = None,
    dtype: str = "float32",
    nodata: float | str | None = None,
    output_nodata: float | str | None = None,
) -> da.Array:
    """Run a chain over an in-memory array; returns a lazy Dask array.

    ``nodata`` marks missing samples (a number or ``"nan"``), as ``input.nodata`` does;
    ``output_nodata`` is what they become, as ``output.nodata``.

    >>> filter_array(np.ones((64, 64)), [{"filter": "box", "size": 3}]).compute().mean()
    np.float32(1.0)
    """
    image = np.asarray(image)
    source = {"path": "<array>", "axes": axes, "chunks": list(chunks) if chunks else None, "nodata": nodata}
    config = from_dict(
        {
            "input": source,
            "output": {"path": "<none>", "dtype": dtype, "nodata": output_nodata},
            "pipeline": pipeline,
        }
    )
    bound = bind(config, image.shape, image.dtype, image.shape)
    return _to_dask(bound, image)


__all__ = [
    "Config",
    "ConfigError",
    "ConvpipeError",
    "Plan",
    "RunError",
    "RunResult",
    "__version__",
    "filter_array",
    "from_dict",
    "load_config",
    "make_plan",
    "preview",
    "run",
    "to_dask",
]
