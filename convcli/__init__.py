"""convcli: torch-exact 2D convolution on OpenCL with a NumPy fallback.

The API is imported on first use (PEP 562), so that the command line's ``--help`` and
option errors answer without loading NumPy and the backends.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from convcli.errors import (
    BackendError,
    BackendUnavailable,
    ConvcliError,
    ConvTypeError,
    ConvValueError,
    InputError,
    LimitError,
)
from convcli.names import ALGOS, PADDING_MODES
from convcli.runinfo import RunInfo

if TYPE_CHECKING:  # pragma: no cover - what the lazy names are, for type checkers
    from convcli.api import Conv2d, conv2d
    from convcli.filters import Filter
    from convcli.spec import ConvSpec
    from convcli.zarr_store import zarr_conv2d

__version__ = "0.1.0"

_LAZY = {
    "Conv2d": "convcli.api",
    "conv2d": "convcli.api",
    "ConvSpec": "convcli.spec",
    "Filter": "convcli.filters",
    "zarr_conv2d": "convcli.zarr_store",
}

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


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'convcli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
