"""Shared fixtures: backends, tolerances and the naive reference."""

from __future__ import annotations

import numpy as np
import pytest

from convcli import backends
from convcli.errors import BackendError

# Tolerances, stated once: relative to max|reference| of the output.
RTOL = {
    "float16": 2e-3,
    "float32": 2e-5,
    "float64": 1e-10,
    "complex64": 2e-5,
    "complex128": 1e-10,
}


def opencl_available() -> bool:
    try:
        backends.get_backend("opencl")
    except (BackendError, ImportError):
        return False
    return True


@pytest.fixture(params=["numpy", "opencl"])
def backend(request) -> str:
    """Every backend; OpenCL tests skip only where no OpenCL device exists."""
    if request.param == "opencl" and not opencl_available():
        pytest.skip("no OpenCL device")
    return request.param


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: str | None = None) -> None:
    """Shapes and dtypes equal; values within RTOL of the reference's magnitude."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    dtype = dtype or str(actual.dtype)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = float(np.max(np.abs(actual.astype(np.complex128) - expected))) if expected.size else 0.0
    assert err <= RTOL[dtype] * max(scale, 1e-30) + 1e-30, (
        f"max abs error {err:.3g} > {RTOL[dtype]} x {scale:.3g}"
    )
