"""Backend-neutral planning helpers: kernel structure the algorithms exploit."""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections import OrderedDict

import numpy as np

# A rank-1 factorisation is accepted when it reproduces the kernel to this fraction of
# max|kernel| in float64: far below float32 rounding of the convolution itself. Float64
# and complex128 kernels are held to 1000 of their own epsilons (2.2e-13) instead: at
# 1e-7 a kernel only nearly rank 1 ran separable, 1e-7 off the direct sum torch makes.
SEPARABLE_RTOL = 1e-7


# A kernel whose rank-1 guess (its largest entry's row times its column) misses by more
# than this fraction of max|kernel| is not rank 1 within SEPARABLE_RTOL: no SVD is run
# (an SVD of a 1001x1001 kernel takes seconds; the guess is O(kH*kW)).
_QUICK_REJECT = 1e-4
_CACHE: OrderedDict[tuple, tuple[np.ndarray, np.ndarray] | None] = OrderedDict()
_CACHE_SIZE = 8
_LOCK = threading.Lock()


def _clearly_not_rank1(w: np.ndarray) -> bool:
    """Whether some 2-D kernel of ``w`` ``(K, kH, kW)`` is far from rank 1."""
    for k in w:
        i, j = np.unravel_index(int(np.argmax(np.abs(k))), k.shape)
        pivot = k[i, j]
        if pivot == 0:
            continue
        guess = np.outer(k[:, j], k[i, :] / pivot)
        if float(np.abs(guess - k).max()) > _QUICK_REJECT * abs(pivot):
            return True
    return False


def separable_factors(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rank-1 factors of every 2-D kernel in ``weight``, or None if one is not rank 1.

    Cached by the weight's content (the cost model, tiles and the run ask for the same
    weight in turn).
    """
    w = np.ascontiguousarray(weight)
    key = (w.shape, w.dtype.str, hashlib.blake2b(w.tobytes(), digest_size=16).digest())
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    factors = _separable_factors(w)
    with _LOCK:
        _CACHE[key] = factors
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return factors


def _separable_factors(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Rank-1 factors of every 2-D kernel in ``weight``, or None if one is not rank 1.

    ``weight`` is ``(C_out, C_in/groups, kH, kW)``. Returns ``(col, row)`` of shapes
    ``(C_out, C_in/groups, kH)`` and ``(C_out, C_in/groups, kW)`` (in float64 or
    complex128) with ``weight[o, i] == outer(col[o, i], row[o, i])`` within
    ``SEPARABLE_RTOL`` (float64 and complex128 weights: 1000 epsilons). Gaussian, box,
    Sobel, Prewitt and binomial kernels are rank 1.
    """
    w = np.asarray(weight)
    rtol = SEPARABLE_RTOL
    if w.dtype.kind in "fc":
        rtol = min(rtol, 1000 * float(np.finfo(w.dtype).eps))
    work = np.complex128 if np.iscomplexobj(w) else np.float64
    w = w.astype(work).reshape(-1, w.shape[2], w.shape[3])
    # NaN or inf: no factors (LAPACK's SVD raises on NaN and never returns on inf), and
    # a separable run would spread them differently from the direct sum torch computes
    if not np.isfinite(w).all() or _clearly_not_rank1(w):
        return None
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    scale = np.sqrt(s[:, 0])[:, None]
    col = u[:, :, 0] * scale
    row = vh[:, 0, :] * scale
    approx = col[:, :, None] * row[:, None, :]
    tol = rtol * max(float(np.abs(w).max()), np.finfo(np.float64).tiny)
    if float(np.abs(approx - w).max()) > tol:
        return None
    shape = weight.shape
    return col.reshape(shape[0], shape[1], shape[2]), row.reshape(shape[0], shape[1], shape[3])


# Arrays made by frozen_copy, by id (the weak values drop out with the arrays).
_FROZEN: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def frozen_copy(array: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous copy of ``array`` that :func:`is_frozen` recognises.

    Its memory is an immutable ``bytes`` object, so the copy cannot be made writable
    again (``flags.writeable = True`` raises ``ValueError``) and no writable view of it
    exists: its contents never change, and a cache may keep what it derived from it
    (packed weights) without comparing contents again. (A plain read-only array could be
    made writable, changed and made read-only again between two calls, unseen.)
    ``Conv2d`` keeps its weights so.
    """
    a = np.asarray(array)
    if a.dtype.hasobject:  # no bytes hold it: a plain read-only copy, never trusted
        copy = np.array(a, copy=True, order="C")
        copy.flags.writeable = False
        return copy  # (conv2d refuses its dtype)
    copy = np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=a.dtype).reshape(a.shape)
    _FROZEN[id(copy)] = copy
    return copy


def is_frozen(array: np.ndarray) -> bool:
    """Whether ``array`` is one that :func:`frozen_copy` made."""
    return not array.flags.writeable and _FROZEN.get(id(array)) is array


def kept_record(array: np.ndarray) -> np.ndarray:
    """What :func:`same_values` compares with later: a frozen array itself, else a copy
    (a cache that keeps what it derived from ``array`` keeps this beside it)."""
    return array if is_frozen(array) else array.copy()


def same_values(kept: np.ndarray, given: np.ndarray) -> bool:
    """Whether ``given`` holds what ``kept`` (from :func:`kept_record`) held when kept.

    A frozen array is its own record and needs no comparison while it stays frozen; any
    other array is compared in full with the copy, so that an in-place change of a weight
    array never gives stale results.
    """
    if kept is given:
        return is_frozen(given)
    if kept.shape != given.shape or kept.dtype != given.dtype:
        return False
    if kept.nbytes <= 1 << 12:
        return kept.tobytes() == given.tobytes()  # one memcmp: 2 us, not array_equal's 7
    memcmp = _libc_memcmp()
    if memcmp is not None and kept.flags.c_contiguous and given.flags.c_contiguous:
        # libc's memcmp reads both once: 250 us for a 512x512x3x3 layer's 9.4 MB against
        # array_equal's 430 (which writes a bool array and reads it again), and stops at
        # the first difference (a cache holding several weights of one shape compares
        # each: another layer's weights differ in their first bytes). 4.7 us for 110 KB
        # against 14 with tobytes() (two copies) or a sample by array_equal first.
        return memcmp(kept.ctypes.data, given.ctypes.data, kept.nbytes) == 0
    # a sample first: a cache holding several weights of one shape compares each
    if not _sample_equal(kept, given):
        return False
    return bool(np.array_equal(kept, given))


def _sample_equal(kept: np.ndarray, given: np.ndarray) -> bool:
    flat_kept, flat_given = kept.reshape(-1), given.reshape(-1)
    step = max(1, flat_kept.size // 64)
    return bool(np.array_equal(flat_kept[::step], flat_given[::step]))


def sample_matches(kept: np.ndarray, given: np.ndarray) -> bool:
    """Whether :func:`same_values` would compare ``kept`` and ``given`` in full (large
    arrays of one shape and dtype, ``kept`` a copy) and 64 values spread over them
    agree: a cache may then use what it derived from ``kept`` at once, provided it
    calls :func:`same_values` before the result leaves it."""
    return (
        kept is not given
        and kept.shape == given.shape
        and kept.dtype == given.dtype
        and kept.nbytes > 1 << 16
        and _sample_equal(kept, given)
    )


_MEMCMP: list = []


def _libc_memcmp():
    """The C library's ``memcmp`` through ctypes (looked up once), or None where it
    cannot be found."""
    if not _MEMCMP:
        memcmp = None
        try:
            import ctypes

            lib = ctypes.cdll.msvcrt if os.name == "nt" else ctypes.CDLL(None)
            memcmp = lib.memcmp
            memcmp.restype = ctypes.c_int
            memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        except (OSError, AttributeError, TypeError):
            memcmp = None
        _MEMCMP.append(memcmp)
    return _MEMCMP[0]
