"""conv2d on dask arrays: a lazy result computed block by block on convcli's backends.

Every output block is computed from exactly the input it needs, gathered by index, so
the result equals the NumPy path's for every padding mode, stride, dilation and group
count, whatever the chunks (a kernel's reach may span many chunks):

1. The output is cut into blocks: the input's batch chunks; whole groups of channels
   (all channels when ``groups == 1``); rows and columns in blocks of about one input
   chunk's worth (``ceil(chunk / stride)``), so a stride-1 'same' result is chunked as
   its input.
2. Output rows ``r0:r1`` read padded rows ``r0*stride .. (r1-1)*stride + d*(k-1)``.
   :func:`convcli.spec.source_index` maps each padded position to its source row (and
   marks zero padding), so the padding mode is applied by construction, not by a halo
   exchange with boundary rules.
3. The source rows (and columns, and channels) a block needs are cut into runs within
   input chunks; a ``getitem`` task per run slices it out of its input block, and the
   block's task assembles the runs, indexes the padded window out of them and runs
   :func:`convcli.conv2d` on it with zero padding. A task holds only its window.

The graph is built by hand (a ``HighLevelGraph`` with the input as its dependency):
``map_overlap`` limits a halo to one chunk and handles the modes by its own boundary
rules, which is where other libraries went wrong.
"""

from __future__ import annotations

import math
import operator
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from convcli.errors import ConvTypeError, ConvValueError
from convcli.spec import ConvSpec, IntPair, Padding, make_spec, source_index

# OpenCL kernels are shared objects whose arguments are set before each launch, so two
# threads must not run on one device at once; NumPy blocks run side by side
_DEVICE_LOCKS: dict[str | None, threading.Lock] = {}
_DEVICE_LOCKS_LOCK = threading.Lock()


def is_dask_array(x: object) -> bool:
    """True for a ``dask.array.Array`` (without importing dask when it is not loaded)."""
    import sys

    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


@dataclass(frozen=True)
class _Run:
    """Source indices ``lo:hi`` of input chunk ``chunk`` (local ``lo - start``)."""

    chunk: int
    lo: int
    hi: int
    start: int

    @property
    def local(self) -> slice:
        return slice(self.lo - self.start, self.hi - self.start)

    @property
    def size(self) -> int:
        return self.hi - self.lo


def _runs(needed: np.ndarray, bounds: np.ndarray) -> list[_Run]:
    """Cut sorted unique source indices into runs of consecutive ones within chunks.

    ``bounds`` are the chunk edges (``0, c0, c0+c1, ..., size``).
    """
    if needed.size == 0:
        return []
    chunk_of = np.searchsorted(bounds, needed, side="right") - 1
    # a run ends where the next index is not consecutive or lies in another chunk
    cut = np.flatnonzero((np.diff(needed) != 1) | (np.diff(chunk_of) != 0)) + 1
    runs = []
    for part, chunks in zip(np.split(needed, cut), np.split(chunk_of, cut), strict=True):
        c = int(chunks[0])
        runs.append(_Run(c, int(part[0]), int(part[-1]) + 1, int(bounds[c])))
    return runs


@dataclass(frozen=True)
class _AxisWindow:
    """What one block needs along a spatial axis.

    ``runs`` hold the needed source indices, in order; ``take`` indexes, for each padded
    position of the window, the concatenation of the runs; ``valid`` is False where
    zero padding applies.
    """

    runs: list[_Run]
    take: np.ndarray
    valid: np.ndarray

    @property
    def span(self) -> slice | None:
        """``take`` as a slice where it is one (no padding mode folds it back)."""
        t = self.take
        if t.size and t[-1] - t[0] == t.size - 1 and (np.diff(t) == 1).all():
            return slice(int(t[0]), int(t[-1]) + 1)
        return None


def _axis_windows(
    size: int,
    chunks: tuple[int, ...],
    out_chunks: tuple[int, ...],
    before: int,
    after: int,
    mode: str,
    stride: int,
    reach: int,
) -> list[_AxisWindow]:
    """The window of every output block along one axis (``reach = d*(k-1)+1``)."""
    index, valid = source_index(size, before, after, mode)
    bounds = np.concatenate([[0], np.cumsum(chunks)])
    windows = []
    r0 = 0
    for rows in out_chunks:
        r1 = r0 + rows
        # padded positions, counted from the first padded position (rows >= 1: an
        # output axis is never empty)
        q0, q1 = r0 * stride, (r1 - 1) * stride + reach
        src, ok = index[q0:q1], valid[q0:q1]
        needed = np.unique(src[ok])
        take = np.searchsorted(needed, src) if needed.size else np.zeros_like(src)
        # zero-padded positions may sort past the last needed index: any index will do
        take = np.minimum(take, max(needed.size - 1, 0))
        windows.append(_AxisWindow(_runs(needed, bounds), take, ok.copy()))
        r0 = r1
    return windows


def _split(total: int, size: int) -> tuple[int, ...]:
    """``total`` in pieces of ``size`` (the last one shorter); ``(0,)`` when empty."""
    if total == 0:
        return (0,)
    size = max(1, size)
    return tuple(min(size, total - s) for s in range(0, total, size))


def _device_lock(backend: str, device: str | None) -> threading.Lock | None:
    """The lock of the OpenCL device a block will run on, or None for NumPy."""
    if backend == "numpy":
        return None
    from convcli import backends
    from convcli.errors import BackendError

    try:
        backends.get_backend("opencl", device)
    except (BackendError, ImportError):
        # 'auto' then runs on NumPy; 'opencl' raises its own error in conv2d
        return None
    with _DEVICE_LOCKS_LOCK:
        return _DEVICE_LOCKS.setdefault(device, threading.Lock())


def _assemble(
    pieces: list[np.ndarray],
    shape: tuple[int, int, int, int],
    dtype: np.dtype,
    channel_sizes: list[int],
    rows: _AxisWindow,
    cols: _AxisWindow,
) -> np.ndarray:
    """The padded window ``(N, C, len(rows.take), len(cols.take))`` from the runs."""
    n, c = shape[0], shape[1]
    out_shape = (n, c, rows.take.size, cols.take.size)
    if not pieces:
        # the window lies wholly in zero padding
        return np.zeros(out_shape, dtype=dtype)
    nr = sum(r.size for r in rows.runs)
    nc = sum(r.size for r in cols.runs)
    compact = np.empty((n, c, nr, nc), dtype=dtype)
    it = iter(pieces)
    c0 = 0
    for cs in channel_sizes:
        y0 = 0
        for rr in rows.runs:
            x0 = 0
            for cr in cols.runs:
                compact[:, c0 : c0 + cs, y0 : y0 + rr.size, x0 : x0 + cr.size] = next(it)
                x0 += cr.size
            y0 += rr.size
        c0 += cs
    # where no padding folds the window back, it is the compact array itself (a view of
    # this block's own copy: zeroing it below touches nothing shared)
    rspan, cspan = rows.span, cols.span
    window = compact[:, :, rows.take] if rspan is None else compact[:, :, rspan]
    window = window[:, :, :, cols.take] if cspan is None else window[:, :, :, cspan]
    if not rows.valid.all():
        window[:, :, ~rows.valid, :] = 0
    if not cols.valid.all():
        window[:, :, :, ~cols.valid] = 0
    return window


def _block(
    pieces: list[np.ndarray],
    weight: np.ndarray,
    bias: np.ndarray | None,
    geometry: tuple,
    options: dict[str, Any],
) -> np.ndarray:
    """One output block: assemble its window, then conv2d with zero padding."""
    from convcli.api import conv2d

    shape, dtype, channel_sizes, rows, cols, stride, dilation, groups = geometry
    window = _assemble(pieces, shape, dtype, channel_sizes, rows, cols)
    lock = _device_lock(options["backend"], options["device"])
    kwargs = dict(stride=stride, padding=0, dilation=dilation, groups=groups, **options)
    if lock is None:
        return conv2d(window, weight, bias, **kwargs)
    with lock:
        return conv2d(window, weight, bias, **kwargs)


def _concrete(array: object, name: str) -> np.ndarray | None:
    """Weights and bias as NumPy arrays (a small dask array is computed here)."""
    if array is None:
        return None
    if is_dask_array(array):
        return np.asarray(array.compute())
    if not isinstance(array, np.ndarray):
        raise ConvTypeError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
    return array


def conv2d(
    x: Any,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    *,
    backend: str = "auto",
    device: str | None = None,
    algo: str = "auto",
    max_memory: int | None = None,
) -> Any:
    """:func:`convcli.conv2d` on a dask array: a lazy dask array of the same values.

    Parameters are those of :func:`convcli.conv2d`; ``x`` is a ``dask.array.Array`` of
    shape ``(N, C_in, H, W)`` or ``(C_in, H, W)`` with any chunks (known sizes). Nothing
    is computed here; each output block runs :func:`convcli.conv2d` with ``backend``,
    ``device``, ``algo`` and ``max_memory`` when the result is computed (on whatever
    scheduler computes it: threads, processes or a cluster). ``backend='auto'`` is
    resolved per block, where the block runs.

    The output's blocks: the input's batch chunks; channels in whole groups (all
    channels when ``groups == 1``, which then needs every input channel per block);
    rows and columns in blocks of ``ceil(input chunk / stride)``.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.ones((1, 6, 6), dtype="float32", chunks=3)
    >>> w = np.ones((1, 1, 3, 3), dtype="float32")
    >>> y = conv2d(x, w, padding=1, padding_mode="replicate", backend="numpy")
    >>> y.chunks
    ((1,), (3, 3), (3, 3))
    >>> float(y.sum().compute())
    324.0
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    from convcli import backends
    from convcli.api import ALGOS

    weight = _concrete(weight, "weight")
    bias = _concrete(bias, "bias")
    if any(math.isnan(c) for axis in x.chunks for c in axis):
        raise ConvValueError(
            "the input dask array has unknown chunk sizes; call its compute_chunk_sizes() first"
        )
    # validation needs only the shape and dtype: a zero-strided stand-in costs no memory
    stand_in = np.broadcast_to(np.zeros((), dtype=x.dtype), x.shape)
    spec = make_spec(
        stand_in,
        weight,
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
    )
    if backend not in backends.BACKEND_NAMES:
        raise ConvValueError(
            f"backend must be one of {list(backends.BACKEND_NAMES)}, but got backend='{backend}'"
        )
    if algo not in ALGOS:
        raise ConvValueError(f"algo must be one of {list(ALGOS)}, but got algo='{algo}'")
    if max_memory is not None and max_memory <= 0:
        raise ConvValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
    options = {"backend": backend, "device": device, "algo": algo, "max_memory": max_memory}

    xb = x if spec.batched else x[None]
    out_chunks, plan = _plan(spec, xb.chunks)
    token = tokenize(xb, weight, bias, spec, options)
    name = f"convcli-conv2d-{token}"
    piece_name = f"convcli-conv2d-piece-{token}"
    weight_name = f"convcli-conv2d-weight-{token}"
    dsk: dict[tuple, Any] = {}
    for cb, (g0, g1) in enumerate(plan["groups"]):
        o0, o1 = g0 * spec.cout_g, g1 * spec.cout_g
        dsk[(weight_name, cb)] = (
            weight[o0:o1],
            None if bias is None else bias[o0:o1],
        )
    dtype = np.dtype(spec.dtype)
    for b, nb in enumerate(xb.chunks[0]):
        for cb, (g0, g1) in enumerate(plan["groups"]):
            channel_runs = plan["channels"][cb]
            for i, rows in enumerate(plan["rows"]):
                for j, cols in enumerate(plan["cols"]):
                    keys = []
                    if rows.runs and cols.runs:
                        for cr in channel_runs:
                            for rr in rows.runs:
                                for colr in cols.runs:
                                    key = (piece_name, b, cr.chunk, rr.chunk, colr.chunk)
                                    key += (cr.lo, cr.hi, rr.lo, rr.hi, colr.lo, colr.hi)
                                    dsk[key] = (
                                        operator.getitem,
                                        (xb.name, b, cr.chunk, rr.chunk, colr.chunk),
                                        (slice(None), cr.local, rr.local, colr.local),
                                    )
                                    keys.append(key)
                    geometry = (
                        (nb, (g1 - g0) * spec.cin_g),
                        dtype,
                        [cr.size for cr in channel_runs],
                        rows,
                        cols,
                        spec.stride,
                        spec.dilation,
                        g1 - g0,
                    )
                    dsk[(name, b, cb, i, j)] = (
                        _block,
                        keys,
                        (operator.getitem, (weight_name, cb), 0),
                        (operator.getitem, (weight_name, cb), 1),
                        geometry,
                        options,
                    )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[xb])
    out = da.Array(graph, name, chunks=out_chunks, meta=np.empty((0, 0, 0, 0), dtype=dtype))
    return out if spec.batched else out[0]


def _plan(spec: ConvSpec, chunks: tuple[tuple[int, ...], ...]) -> tuple[tuple, dict]:
    """Output chunks and, per output block index, what it reads from the input."""
    sh, sw = spec.stride
    dh, dw = spec.dilation
    # channels: whole groups per block, about one input channel chunk's worth (one
    # block of all channels when groups == 1)
    per = min(spec.groups, max(1, chunks[1][0] // spec.cin_g))
    group_blocks = [(g, min(spec.groups, g + per)) for g in range(0, spec.groups, per)]
    c_bounds = np.concatenate([[0], np.cumsum(chunks[1])])
    channels = [
        _runs(np.arange(g0 * spec.cin_g, g1 * spec.cin_g), c_bounds) for g0, g1 in group_blocks
    ]
    row_chunks = _split(spec.h_out, -(-chunks[2][0] // sh))
    col_chunks = _split(spec.w_out, -(-chunks[3][0] // sw))
    rows = _axis_windows(
        spec.h, chunks[2], row_chunks, spec.pad[0], spec.pad[1], spec.padding_mode, sh,
        dh * (spec.kh - 1) + 1,
    )  # fmt: skip
    cols = _axis_windows(
        spec.w, chunks[3], col_chunks, spec.pad[2], spec.pad[3], spec.padding_mode, sw,
        dw * (spec.kw - 1) + 1,
    )  # fmt: skip
    out_chunks = (
        chunks[0],
        tuple((g1 - g0) * spec.cout_g for g0, g1 in group_blocks),
        row_chunks,
        col_chunks,
    )
    return out_chunks, {"groups": group_blocks, "channels": channels, "rows": rows, "cols": cols}
