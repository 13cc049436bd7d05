"""The NumPy backend: the reference implementation and the fallback, with fast paths."""

from __future__ import annotations

from convcli.backends.numpy.backend import NumpyBackend, compute_dtype, gather_rows

__all__ = ["NumpyBackend", "compute_dtype", "gather_rows"]
