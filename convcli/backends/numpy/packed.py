"""Weights prepared for a path (reordered, banded, transposed), kept between calls.

Networks call a layer again and again with the same weight array; preparing its
matrices anew each time cost more than the layer's GEMM in some layers (the stride
phases' reordered weights of a 256->512 3x3 stride-2 layer: 2.4 ms beside a 1.3 ms
GEMM). An entry is reused while the weight holds the same values
(:func:`convcli.plan.same_values`: ``Conv2d``'s frozen weights by identity, any other
array by a full comparison with a kept copy, far cheaper than the preparation).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

import numpy as np

from convcli.plan import is_frozen, kept_record, same_values

T = TypeVar("T")

# at most this many entries, holding at most this many bytes (kept copies included):
# a network's layers (called in turn, so that fewer entries than layers would drop each
# before its next use), or a few of the largest. A network's prepared weights: 65 MB
# for convnext_tiny (its depthwise layers' whole-row bands: 4.8 MB each for 384
# channels on 14x14, 7.4 MB for 768 on 7x7), 60 MB for efficientnet_b0, 21 MB for
# mobilenet_v3_small
_SIZE = 64
_BYTES = 96 * 2**20
_ENTRIES: list[tuple[Hashable, np.ndarray, object]] = []
_LOCK = threading.Lock()


def prepared(key: Hashable, weight: np.ndarray, make: Callable[[], T]) -> T:
    """``make()``, or what it returned for an earlier call with an equal ``key`` and a
    weight of the same values. ``key`` names the preparation and every value it depends
    on besides the weight (path, geometry, dtype). The result is shared: read-only use."""
    with _LOCK:
        for i, (k, kept, value) in enumerate(_ENTRIES):
            if k == key and same_values(kept, weight):
                _ENTRIES.insert(0, _ENTRIES.pop(i))  # by index: remove() would compare arrays
                return value  # type: ignore[return-value]
    value = make()
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    kept = kept_record(weight)
    with _LOCK:
        _ENTRIES.insert(0, (key, kept, value))
        del _ENTRIES[_SIZE:]
        while len(_ENTRIES) > 1 and sum(_bytes(e) for e in _ENTRIES) > _BYTES:
            _ENTRIES.pop()
    return value


def _bytes(entry: tuple[Hashable, np.ndarray, object]) -> int:
    _, kept, value = entry
    size = 0 if is_frozen(kept) else kept.nbytes
    return size + (value.nbytes if isinstance(value, np.ndarray) else 0)


def clear() -> None:
    """Drop every kept preparation (tests)."""
    with _LOCK:
        _ENTRIES.clear()
