"""Backends: NumPy (reference, always available) and OpenCL (lazy pyopencl).

A backend object has ``name``, ``device_name``, ``supports(spec) -> str | None`` (a
reason it cannot run ``spec``) and ``run(x, weight, bias, spec, *, algo, info)``
taking a batched array and returning the batched result in the compute dtype; ``run``
sets ``info.algo`` to the algorithm it used and adds seconds to ``info.timings`` under
``build``, ``upload``, ``compute`` and ``download``. A forced ``algo`` a backend cannot
apply (e.g. ``separable`` on a rank-2 kernel) raises ConvValueError; failures of the
device raise BackendError (``auto`` then falls back to NumPy).
Backends never see paths or user options, only arrays and a :class:`ConvSpec`.
"""

from __future__ import annotations

from typing import Literal

from convcli.backends.numpy import NumpyBackend
from convcli.errors import BackendError

BackendName = Literal["auto", "opencl", "numpy"]
BACKEND_NAMES: tuple[str, ...] = ("auto", "opencl", "numpy")

_NUMPY = NumpyBackend()
_OPENCL: dict[str | None, object] = {}


def started_opencl(device: str | None = None):
    """The OpenCL backend already started for ``device``; False when it failed to start;
    None when it has not been asked for yet (nothing is started here)."""
    found = _OPENCL.get(device)
    if found is None and device not in _OPENCL:
        return None
    return False if isinstance(found, BaseException) else found


def get_backend(name: str, device: str | None = None):
    """The backend called ``name`` ("numpy" or "opencl"); OpenCL ones cached per device.

    Raises BackendUnavailable when the OpenCL device cannot be initialised (the failure
    is cached too: initialising is slow to retry).
    """
    if name == "numpy":
        return _NUMPY
    if name != "opencl":
        raise ValueError(f"unknown backend {name!r}")
    if device not in _OPENCL:
        from convcli.backends.opencl.backend import OpenCLBackend

        try:
            _OPENCL[device] = OpenCLBackend.create(device)
        except BackendError as exc:
            _OPENCL[device] = exc
    found = _OPENCL[device]
    if isinstance(found, BaseException):
        raise found
    return found
