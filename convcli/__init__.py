"""convcli: torch-exact 2D convolution on OpenCL with a NumPy fallback."""

from __future__ import annotations

from convcli.api import ALGOS, Conv2d, conv2d
from convcli.errors import (
    BackendError,
    BackendUnavailable,
    ConvcliError,
    ConvTypeError,
    ConvValueError,
    InputError,
    LimitError,
)
from convcli.filters import Filter
from convcli.runinfo import RunInfo
from convcli.spec import PADDING_MODES, ConvSpec
from convcli.zarr_store import zarr_conv2d

__version__ = "0.1.0"

__all__ = [
    "ALGOS",
    "PADDING_MODES",
    "BackendError",
    "BackendUnavailable",
    "Conv2d",
    "ConvSpec",
    "ConvTypeError",
    "ConvValueError",
    "ConvcliError",
    "Filter",
    "InputError",
    "LimitError",
    "RunInfo",
    "__version__",
    "conv2d",
    "zarr_conv2d",
]
