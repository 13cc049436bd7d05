"""The NumPy backend: the reference implementation and the fallback, with fast paths.

Algorithms (``algo=``; ``"auto"`` picks one with :func:`choose_algo`'s cost model):

``direct``
    Every output from the kernel taps, no transform of the kernel. Dense layers use
    :func:`conv2d_direct`, the reference im2col + matmul per group (the column matrix is
    a gathered ``(pixels, C_in/groups*kH*kW)`` copy). Depthwise layers (``C_in/groups ==
    1``: image filters) accumulate ``weight[tap] * shifted input`` in cache-sized pieces
    (channels innermost for many channels); those with 5x5 kernels and larger run as
    small GEMMs against banded tap matrices (:func:`_depthwise_gemm`).
``gemm``
    The convolution as one matrix product over (channels x taps) per group, without the
    reference's gather: the padded input is split into ``stride`` phases and flattened.
    Within a phase the taps form a grid, so one strided view per phase copies every tap
    of a band into the column matrix (stride 2 with dilation 2, W7, is a single phase:
    a dense stride-1 layer on the even rows and columns). Narrow outputs are computed
    on a grid ``col_off`` columns wider, then cropped, so each copy is one long run;
    wide ones are written straight into the output. Wide outputs with few output
    channels (W9) instead keep each input row once per column tap and run one GEMM per
    output row over rows the output rows share (:func:`_gemm_shared_rows`): kH times
    fewer copies. A 1x1 kernel with stride 1 and no
    padding is a single matmul over channels with no copy; a kernel as large as its
    stride (non-overlapping patches: convnext's stem and downsampling layers) is one
    transposed copy per image and a GEMM with the weight as a view (:func:`_patches`).
    Layers of 0.1 GFLOP or more
    run as chunks of bands on a small thread pool, each thread on its own CPU for the
    call, with BLAS held at one thread (through ``threadpoolctl``; see
    :class:`_OneThreadBlas` and :func:`_spread_plan`); smaller ones leave the threading
    to BLAS. (``direct`` on dense layers is also a GEMM; ``gemm`` names the formulation
    whose cost is dominated by the matrix product rather than by the gather.)
``separable``
    Rank-1 kernels (:func:`convcli.plan.separable_factors`: Gaussian, box, Sobel) as two
    1-D passes, each one GEMM per band of rows against slabs of a banded Toeplitz
    matrix, so a 31-tap pass runs at BLAS speed; image filters (one kernel for every
    channel) put all planes side by side in the same GEMMs. Works for every padding
    mode, stride, dilation and groups.
``fft``
    Large non-separable kernels: overlap-save by bands of output rows (memory bounded),
    ``numpy.fft.rfft2`` in float32 for float32 input (``fft2`` for complex), the kernel
    dilated with zeros and flipped (correlation), the stride applied by subsampling.

Every algorithm gathers padding through the index maps of
:func:`convcli.spec.source_index` by bands of output rows, so no padded copy of a whole
large input is made and memory stays within tens of MB (``CHUNK_BYTES``) whatever the
image size. float16 is computed in float32 and rounded once at the end (torch's CPU
behaviour); complex inputs use the weight as is (no conjugation).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import as_strided, sliding_window_view

from convcli.errors import ConvValueError
from convcli.plan import separable_factors
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec, source_index

CHUNK_BYTES = 64 * 2**20
# column matrix per GEMM: in L2 when bands run on our threads, larger when BLAS threads
# it (W7 with 2, 3, 6 and 16 MiB: 2.42, 1.92, 1.83 and 2.18 ms; W6 within noise)
GEMM_BYTES = 2**20
BLAS_GEMM_BYTES = 6 * 2**20
# problems smaller than this run on one thread (see _gemm_threads)
THREADED_MIN_FLOPS = 10**8
# From this many multiply-adds on, a call that runs its GEMMs on one thread puts BLAS on
# one thread too (see _quiet_blas). OpenBLAS runs GEMMs below 2**18 M*N*K on one
# thread anyway, and the switch costs about 16 us.
QUIET_BLAS_MACS = 2**18
# at least this many output pixels per gemm task (the GEMM's N)
GEMM_MIN_PIXELS = 512
# outputs narrower than this compute junk columns instead of short copies (_gemm_plan),
# when they have fewer output channels per group than JUNK_MAX_COUT: junk columns save
# copy work per column but cost GEMM work per output channel (W7, 32 channels: 1.79 ms
# with junk, 2.10 without; W6, 256: 6.22 with, 5.80 without; W5, 64: 13.9 and 13.5)
JUNK_BELOW = 64
JUNK_MAX_COUT = 64
# largest per-thread work array the gemm path keeps between calls (see _scratch)
SCRATCH_KEEP = 32 * 2**20
# worker threads of the gemm path; None: the CPUs this process may run on
THREADS: int | None = None
# move each worker of the gemm path to a CPU other than the caller's (_spread_plan)
SPREAD_WORKERS = True
# flat positions per piece of the depthwise tap loop (x channels): stays in L2
TAP_PIECE = 48 * 1024


def compute_dtype(dtype: np.dtype | str) -> np.dtype:
    """The dtype arithmetic is done in (float16 accumulates in float32)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def gather_rows(x: np.ndarray, spec: ConvSpec, row0: int, row1: int) -> np.ndarray:
    """Rows ``row0:row1`` of the vertically padded input (padded coordinates).

    ``x`` is ``(N, C, H, W)``; the result is ``(N, C, row1-row0, W)``, a new array with
    the padding mode applied (zeros where mode ``zeros`` pads).
    """
    top, bottom = spec.pad[0], spec.pad[1]
    ridx, rvalid = source_index(spec.h, top, bottom, spec.padding_mode)
    ridx, rvalid = ridx[row0:row1], rvalid[row0:row1]
    band = x[:, :, ridx]
    if not rvalid.all():
        band[:, :, ~rvalid, :] = 0
    return band


def gather_padded(x: np.ndarray, spec: ConvSpec, row0: int, row1: int) -> np.ndarray:
    """Rows ``row0:row1`` of the fully padded input: ``(N, C, row1-row0, W+left+right)``."""
    cidx, cvalid = source_index(spec.w, spec.pad[2], spec.pad[3], spec.padding_mode)
    band = gather_rows(x, spec, row0, row1)[:, :, :, cidx]
    if not cvalid.all():
        band[:, :, :, ~cvalid] = 0
    return band


def _rows_per_chunk(spec: ConvSpec, n: int, itemsize: int) -> int:
    per_row = max(1, n * spec.w_out * spec.c_in * spec.kh * spec.kw * itemsize)
    return max(1, min(spec.h_out, CHUNK_BYTES // per_row))


def conv2d_direct(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec
) -> np.ndarray:
    """Direct convolution of batched ``x`` ``(N, C, H, W)``; returns ``(N, C_out, Ho, Wo)``."""
    work = compute_dtype(spec.dtype)
    x = np.asarray(x, dtype=work)
    weight = np.asarray(weight, dtype=work)
    sh, sw = spec.stride
    dh, dw = spec.dilation
    ho, wo = spec.h_out, spec.w_out
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    out = np.empty((spec.n, spec.c_out, ho, wo), dtype=work)
    if spec.n == 0:
        return out
    ekh = dh * (spec.kh - 1) + 1
    ekw = dw * (spec.kw - 1) + 1
    # weight matrices per group: (cin_g*kh*kw, cout_g)
    wmats = [weight[gi * cout_g : (gi + 1) * cout_g].reshape(cout_g, -1).T for gi in range(g)]
    # batch chunks so that one output row of columns fits the budget
    per_image = max(1, wo * spec.c_in * spec.kh * spec.kw * work.itemsize)
    n_step = max(1, min(spec.n, CHUNK_BYTES // per_image))
    for n0 in range(0, spec.n, n_step):
        xs = x[n0 : n0 + n_step]
        nn = xs.shape[0]
        rows = _rows_per_chunk(spec, nn, work.itemsize)
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            band = gather_padded(xs, spec, r0 * sh, (r1 - 1) * sh + ekh)
            win = sliding_window_view(band, (ekh, ekw), axis=(2, 3))
            # (N, C, R, Wo, kh, kw) after stride and dilation sub-sampling
            win = win[:, :, ::sh, : (wo - 1) * sw + 1 : sw, ::dh, ::dw]
            for gi in range(g):
                part = win[:, gi * cin_g : (gi + 1) * cin_g]
                cols = part.transpose(0, 2, 3, 1, 4, 5).reshape(nn * (r1 - r0) * wo, -1)
                res = cols @ wmats[gi]
                out[n0 : n0 + nn, gi * cout_g : (gi + 1) * cout_g, r0:r1, :] = res.reshape(
                    nn, r1 - r0, wo, cout_g
                ).transpose(0, 3, 1, 2)
    if bias is not None:
        out += np.asarray(bias, dtype=work)[None, :, None, None]
    return out


# ---------------------------------------------------------------------------------------
# Padding by index maps, for any arithmetic sequence of padded positions


def _axis_map(pos: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Source index and validity for unpadded coordinates ``pos`` (may lie outside)."""
    before = max(0, -int(pos.min()))
    after = max(0, int(pos.max()) - size + 1)
    idx, valid = source_index(size, before, after, mode)
    return idx[pos + before], valid[pos + before]


def _interior(pos: np.ndarray, size: int) -> tuple[int, int]:
    """The contiguous range of ``pos`` (monotonic) that lies inside ``0..size-1``."""
    inside = np.flatnonzero((pos >= 0) & (pos < size))
    if inside.size == 0:
        return 0, 0
    return int(inside[0]), int(inside[-1]) + 1


def _gather2d(
    x: np.ndarray, rpos: np.ndarray, cpos: np.ndarray, mode: str, out: np.ndarray
) -> None:
    """``out[..., r, c] = padded x at (rpos[r], cpos[c])`` (unpadded coordinates).

    ``rpos``/``cpos`` are increasing arithmetic sequences. The interior is one strided
    slice copy; only the border rows and columns go through the index maps (fancy
    indexing is 5-10x slower than a slice copy, and W1 is memory-bound).
    """
    h, w = x.shape[-2:]
    r0, r1 = _interior(rpos, h)
    c0, c1 = _interior(cpos, w)
    rs = int(rpos[1] - rpos[0]) if rpos.size > 1 else 1
    cs = int(cpos[1] - cpos[0]) if cpos.size > 1 else 1
    rows = slice(int(rpos[r0]), int(rpos[r1 - 1]) + 1, rs) if r1 > r0 else slice(0, 0)
    if r1 > r0 and c1 > c0:
        out[..., r0:r1, c0:c1] = x[..., rows, int(cpos[c0]) : int(cpos[c1 - 1]) + 1 : cs]
    if mode == "zeros":
        # every position outside the image is a zero: slices, no index maps (a W7 image
        # took 0.14 ms through the maps, most of its gather)
        out[..., :r0, :] = 0
        out[..., r1:, :] = 0
        out[..., r0:r1, :c0] = 0
        out[..., r0:r1, c1:] = 0
        return
    ridx, rval = _axis_map(rpos, h, mode)
    cidx, cval = _axis_map(cpos, w, mode)
    border_c = np.r_[0:c0, c1 : cpos.size]
    if border_c.size and r1 > r0:
        vals = x[..., rows, :][..., cidx[border_c]]
        vals[..., ~cval[border_c]] = 0
        out[..., r0:r1, border_c] = vals
    border_r = np.r_[0:r0, r1 : rpos.size]
    if border_r.size:
        vals = x[..., ridx[border_r], :][..., cidx]
        vals[..., ~rval[border_r], :] = 0
        vals[..., ~cval] = 0
        out[..., border_r, :] = vals


class _Phases:
    """The padded input of a band of output rows, split by stride phase and flattened.

    Output ``(r, c)`` of the band reads tap ``(i, j)`` at ``flat[:, :, phase, off + r*wq
    + c]``: every tap is a contiguous slice of length ``rows * wq`` (columns ``wo..wq-1``
    of each row are junk and cropped by the caller).

    Within one phase the taps form a grid: kernel rows ``i0, i0+mi, ...`` read phase rows
    ``ro0, ro0+step, ...`` (likewise columns), so one strided view of the phase covers
    all its taps (``grids``). With stride 2, dilation 2 and even padding every tap lands
    in one phase: the layer is a dense stride-1 3x3 on the even rows and columns.
    """

    def __init__(self, spec: ConvSpec) -> None:
        sh, sw = spec.stride
        dh, dw = spec.dilation
        self.spec = spec
        taps = []
        phases: dict[tuple[int, int], int] = {}
        for i in range(spec.kh):
            for j in range(spec.kw):
                ph = ((i * dh) % sh, (j * dw) % sw)
                phases.setdefault(ph, len(phases))
                taps.append((phases[ph], (i * dh) // sh, (j * dw) // sw))
        self.phases = list(phases)
        self.row_off = (spec.kh - 1) * dh // sh
        self.col_off = (spec.kw - 1) * dw // sw
        self.wq = spec.w_out + self.col_off
        self.taps = [(p, ro * self.wq + co) for p, ro, co in taps]
        rows, cols = _axis_grids(spec.kh, sh, dh), _axis_grids(spec.kw, sw, dw)
        # (phase, kernel rows, first phase row, row step, kernel cols, first col, col step)
        self.grids = [
            (phases[(a, b)], ii, ro, rs, jj, co, cs)
            for a, ii, ro, rs in rows
            for b, jj, co, cs in cols
        ]

    def rows_needed(self, rows: int) -> int:
        # +1: the junk columns of the last row read up to col_off past its end
        return rows + self.row_off + 1

    def weights(self, weight: np.ndarray) -> np.ndarray:
        """``(G, C_out/G, K)`` weight matrices with K in the grids' column order."""
        s = self.spec
        w5 = weight.reshape(s.groups, s.cout_g, s.cin_g, s.kh, s.kw)
        parts = []
        for _, ii, _, _, jj, _, _ in self.grids:
            # a phase's taps are every m-th kernel row/column: a strided view, no gather
            rows = slice(ii[0], ii[-1] + 1, ii[1] - ii[0] if len(ii) > 1 else 1)
            cols = slice(jj[0], jj[-1] + 1, jj[1] - jj[0] if len(jj) > 1 else 1)
            parts.append(w5[..., rows, cols].reshape(s.groups, s.cout_g, -1))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)

    def fill(self, x: np.ndarray, r0: int, flat: np.ndarray) -> None:
        """Phase rows from output row ``r0`` on into ``flat`` ``(N, C, n_phases, R, wq)``."""
        spec = self.spec
        sh, sw = spec.stride
        for k, (a, b) in enumerate(self.phases):
            rpos = (r0 * sh + a - spec.pad[0]) + sh * np.arange(flat.shape[3])
            cpos = (b - spec.pad[2]) + sw * np.arange(self.wq)
            _gather2d(x, rpos, cpos, spec.padding_mode, flat[:, :, k])

    def gather(self, x: np.ndarray, r0: int, r1: int, work: np.dtype) -> np.ndarray:
        """``(N, C, n_phases, rows_needed * wq)`` for output rows ``r0:r1``."""
        nr = self.rows_needed(r1 - r0)
        flat = np.empty((x.shape[0], x.shape[1], len(self.phases), nr, self.wq), dtype=work)
        self.fill(x, r0, flat)
        return flat.reshape(x.shape[0], x.shape[1], len(self.phases), nr * self.wq)


@functools.lru_cache(maxsize=256)
def _phases(spec: ConvSpec) -> _Phases:
    """The :class:`_Phases` of ``spec``, built once (it holds only spec geometry)."""
    return _Phases(spec)


def _axis_grids(k: int, stride: int, dil: int) -> list[tuple[int, list[int], int, int]]:
    """Per phase of one axis: (phase, kernel taps, first phase offset, offset step)."""
    taps: dict[int, list[int]] = {}
    for i in range(k):
        taps.setdefault((i * dil) % stride, []).append(i)
    # consecutive taps of a phase are stride/gcd apart, i.e. dil/gcd phase positions
    step = dil // math.gcd(stride, dil)
    return [(a, ii, (ii[0] * dil) // stride, step) for a, ii in sorted(taps.items())]


def _band_rows(spec: ConvSpec, bytes_per_row: int, budget: int) -> int:
    return max(1, min(spec.h_out, budget // max(1, bytes_per_row)))


# ---------------------------------------------------------------------------------------
# threads: bands side by side, BLAS on one thread each


def _threads() -> int:
    """Worker threads for the gemm path (``THREADS``, else the CPUs we may run on)."""
    if THREADS is not None:
        return max(1, THREADS)
    mask = _affinity()
    return max(1, len(mask)) if mask is not None else os.cpu_count() or 1


class _OneThreadBlas:
    """Puts BLAS on one thread while our own threads run GEMMs side by side.

    Why: OpenBLAS splits each GEMM over its threads and its idle threads spin for about
    0.1 s after each call, so on two cores the column copies of a band could not run
    beside the GEMM of another (they fought the spinning thread), and two GEMMs from two
    threads wait for each other's BLAS threads. One BLAS thread per band, bands on our
    threads, keeps both cores busy with copies and GEMMs alike (W7: 2.8 -> 1.4 ms).

    The setting is process-wide, so it is changed for as short as possible: set when the
    first concurrent call enters, restored to each library's own value when the last one
    leaves. The BLAS libraries the process has loaded are found and set by
    ``threadpoolctl`` (OpenBLAS, MKL, BLIS, on every platform); where it finds none,
    ``available`` is False and the gemm path runs on one thread with BLAS's own threading.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: list[int] = []
        self._libs: list | None = None  # None: not looked up yet

    def _lookup(self) -> list:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # a dependency, but the backend must work without it
            return []
        return [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]

    @property
    def available(self) -> bool:
        if self._libs is None:
            self._libs = self._lookup()
        return bool(self._libs)

    def get(self) -> int:
        """BLAS's thread count now (the largest over the loaded BLAS libraries)."""
        return max(int(lc.get_num_threads()) for lc in self._libs)

    def put(self, threads: int) -> None:
        """Set every loaded BLAS library to ``threads``."""
        for lc in self._libs:
            lc.set_num_threads(threads)

    def threads(self) -> int:
        """BLAS's thread count outside our calls (while one runs: the caller's saved one)."""
        with self._lock:
            return max(self._saved) if self._users else self.get()

    def __enter__(self) -> None:
        if not self.available:
            return
        with self._lock:
            if self._users == 0:
                self._saved = [int(lc.get_num_threads()) for lc in self._libs]
                self.put(1)
            self._users += 1

    def __exit__(self, *exc: object) -> None:
        if not self.available:
            return
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for lc, threads in zip(self._libs, self._saved, strict=True):
                    lc.set_num_threads(threads)


_ONE_THREAD_BLAS = _OneThreadBlas()
_POOL: tuple[ThreadPoolExecutor, int] | None = None  # (pool, its workers)
_POOL_LOCK = threading.Lock()


def _run_parallel(work: Callable[[int], None], threads: int) -> None:
    """``work(k)`` for ``k`` in ``range(threads)``: ``k = 0`` on the calling thread."""
    global _POOL
    if threads == 1:
        work(0)
        return
    with _POOL_LOCK:
        if _POOL is None or _POOL[1] < threads - 1:
            if _POOL is not None:
                _POOL[0].shutdown(wait=False)
            _POOL = (
                ThreadPoolExecutor(threads - 1, thread_name_prefix="convcli-numpy"),
                threads - 1,
            )
        pool = _POOL[0]
    plan = _spread_plan()
    if plan is not None:
        # the caller stays on its CPU for the call (its own setting is restored after)
        here, cpus, mask = plan
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {here})
        places = [{cpus[(k - 1) % len(cpus)]} for k in range(1, threads)]
    else:
        # no spreading: the workers may run wherever the caller may
        places = [_affinity()] * (threads - 1)
    try:
        futures = [pool.submit(_on_own_cpu, work, k, places[k - 1]) for k in range(1, threads)]
        try:
            work(0)
        finally:
            for f in futures:
                f.result()
    finally:
        if plan is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, mask)


def _current_cpu() -> int | None:
    """The CPU the calling thread runs on (glibc's ``sched_getcpu``), or None."""
    global _SCHED_GETCPU
    if _SCHED_GETCPU is None:
        try:
            import ctypes

            _SCHED_GETCPU = ctypes.CDLL(None).sched_getcpu
        except (OSError, AttributeError):  # not glibc: no spreading
            _SCHED_GETCPU = False
    if not _SCHED_GETCPU:
        return None
    cpu = int(_SCHED_GETCPU())
    return cpu if cpu >= 0 else None


_SCHED_GETCPU = None


def _spread_plan() -> tuple[int, list[int], set[int]] | None:
    """(the caller's CPU, the CPUs our workers take in order, the caller's affinity),
    or None to leave the threads where the scheduler puts them.

    Why: the threads hand Python's GIL back and forth between NumPy calls, and Linux
    often wakes a thread on the CPU of the thread that woke it, so the caller and a
    worker ended up sharing one CPU: after 0.5 s of idle, W9's first three calls took
    19-25 ms against 12-14 ms for the next ones, and in the slow calls the caller had
    moved onto the worker's CPU. Pinned for the call, each keeps its own CPU.
    """
    mask = _affinity()
    if not SPREAD_WORKERS or mask is None:
        return None
    here = _current_cpu()
    if here is None or here not in mask or len(mask) < 2:
        return None
    return here, [c for c in sorted(mask) if c != here], mask


def _affinity() -> set[int] | None:
    """The calling thread's CPUs, or None where that cannot be known (not Linux)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return None


def _on_own_cpu(work: Callable[[int], None], k: int, place: set[int] | None) -> None:
    """``work(k)`` on a worker, first moved to the CPUs ``place`` (if known)."""
    if place:
        # OSError: the CPU went away (hotplug, cgroup change): run where we are
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, place)
    work(k)


# ---------------------------------------------------------------------------------------
# gemm


def _gemm_threads(spec: ConvSpec) -> int:
    """Our threads for the gemm path; 1 leaves the threading to BLAS.

    Below ``THREADED_MIN_FLOPS`` BLAS's own threads win: waking ours costs about 0.25
    ms. Above it ours win now that each keeps its own CPU for the call (see
    :func:`_spread_plan`): as the bench times them (0.5 s of idle, a warm-up, one run),
    W6 took 6.4-7.0 ms on our threads against 8.1-9.6 on BLAS's, W7 2.5-2.95 against
    3.5-4.1, because BLAS's threads, woken after idle, shared a CPU with the caller.
    """
    if not _ONE_THREAD_BLAS.available or 2 * spec.macs < THREADED_MIN_FLOPS:
        return 1
    if THREADS is None:
        # a process that limited BLAS's threads (OPENBLAS_NUM_THREADS=1) gets no more here
        return max(1, min(_threads(), _ONE_THREAD_BLAS.threads()))
    return _threads()


def _gemm_plan(spec: ConvSpec, itemsize: int, threads: int) -> tuple[int, int, int, int]:
    """(column matrix row width, images per GEMM, rows per GEMM, rows per chunk).

    A GEMM covers ``m`` images x ``rows`` output rows, its column matrix within
    ``GEMM_BYTES`` but at least ``GEMM_MIN_PIXELS`` wide. A chunk (``m`` images x
    ``crows`` rows, a multiple of ``rows``) is the unit the threads share: each gathers
    its own phase-split input (within ``CHUNK_BYTES/4``), then runs its GEMMs. About two
    chunks per thread let a thread that starts late (a parked thread took 0.5 ms to wake
    on the shared machine) take fewer, without a barrier between gather and GEMMs.

    Junk columns (``wq = wo + col_off`` wide rows) make each tap's copy one long
    contiguous run; without them the GEMM writes straight into the output. Narrow outputs
    with few channels (W7: 32 columns, 32 channels per group) take the junk and crop, as
    short runs cost more; with many channels (W6) the extra GEMM columns cost more.
    """
    n, ho = spec.n, spec.h_out
    wq = spec.w_out + (spec.kw - 1) * spec.dilation[1] // spec.stride[1]
    junk = spec.w_out < JUNK_BELOW and spec.cout_g < JUNK_MAX_COUT
    lw = wq if junk else spec.w_out
    per_row = spec.c_in * spec.kh * spec.kw * lw * itemsize
    # one thread: few large GEMMs, which BLAS threads itself
    budget = GEMM_BYTES if threads > 1 else BLAS_GEMM_BYTES
    m = max(1, min(n, budget // max(1, per_row * ho)))
    if n >= threads > 1:
        m = min(m, max(1, n // (2 * threads)))
    rows = ho
    if m == 1:
        # a GEMM over fewer pixels re-reads the weights for little work (W6: 256x2304)
        rows = max(_band_rows(spec, per_row, budget), -(-GEMM_MIN_PIXELS // lw))
        rows = -(-ho // -(-ho // rows))  # equal bands
    nph = len({(i * spec.dilation[0]) % spec.stride[0] for i in range(spec.kh)}) * len(
        {(j * spec.dilation[1]) % spec.stride[1] for j in range(spec.kw)}
    )
    in_row = m * spec.c_in * nph * wq * itemsize
    halo = (spec.kh - 1) * spec.dilation[0] // spec.stride[0] + 1
    fits = max(rows, ((CHUNK_BYTES // 4) // max(1, in_row) - halo) // rows * rows)
    # about two chunks per thread where the images alone do not give them
    share = -(-ho * -(-n // m) // (2 * threads))
    return lw, m, rows, min(fits, -(-share // rows) * rows, -(-ho // rows) * rows)


_SCRATCH = threading.local()


def _scratch(key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A work array of this thread, kept between calls when under ``SCRATCH_KEEP`` bytes.

    Fresh memory costs a page fault per 4 KiB at first touch: W7's ~4 MB of column
    matrices and phase copies per call took as long as its GEMMs, and an 8 MB band
    allocated per call made the gemm path 3x slower once the allocator handed pages back.
    """
    size = math.prod(shape) * dtype.itemsize
    kept = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = kept.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=np.uint8)
        if size <= SCRATCH_KEEP:
            kept[key] = buf
    return buf[:size].view(dtype).reshape(shape)


def _lead(length: int, itemsize: int) -> int:
    """A row stride >= ``length`` that is an odd number of cache lines (64 B).

    Rows a multiple of 2-4 KiB apart share L1 sets: measured with one BLAS thread, a
    (16, 147) x (147, L) product ran at 43-65 GFLOP/s for L = 1024, 1536, 2048, 3072,
    4096, 6144, 8192 and at 73-79 with an odd number of cache lines per row.
    """
    line = max(1, 64 // itemsize)
    return -(-length // (2 * line)) * 2 * line + line


def _patches_apply(spec: ConvSpec) -> bool:
    """Kernel as large as its stride, no dilation, no padding: every input pixel feeds
    one output (convnext's 4x4/4 stem, its 2x2/2 downsampling layers)."""
    return (
        (spec.kh, spec.kw) == spec.stride
        and spec.kh * spec.kw > 1
        and spec.dilation == (1, 1)
        and spec.pad == (0, 0, 0, 0)
    )


def _patches(x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype) -> np.ndarray:
    """Non-overlapping patches: the column matrix is one transposed copy of the input,
    its rows in the weight's own (channel, row, column) order, so the weight matrix is a
    view (the phase split would reorder a 384->768 2x2 layer's 4.7 MB of weights at every
    call and run its one GEMM on a single thread). Jobs split the output channels among
    the threads when there are fewer images than threads."""
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    n, ho, wo, kh, kw = spec.n, spec.h_out, spec.w_out, spec.kh, spec.kw
    wm = weight.reshape(g, cout_g, cin_g * kh * kw)
    out = np.empty((n, g, cout_g, ho * wo), dtype=work)
    threads = _gemm_threads(spec)
    parts = max(1, min(cout_g // 8, -(-threads // n)))
    step = -(-cout_g // parts)

    def job(i: int, o0: int) -> None:
        # the patches of image i: (C, kh, kw, Ho, Wo); each job copies its own
        v = x[i, :, : ho * kh, : wo * kw].reshape(spec.c_in, ho, kh, wo, kw)
        cols = v.transpose(0, 2, 4, 1, 3).reshape(g, cin_g * kh * kw, ho * wo)
        o1 = min(cout_g, o0 + step)
        np.matmul(wm[:, o0:o1], cols, out=out[i, :, o0:o1])

    _run_jobs(job, [(i, o0) for i in range(n) for o0 in range(0, cout_g, step)], threads, spec)
    return out.reshape(n, spec.c_out, ho, wo)


def _gemm(x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype) -> np.ndarray:
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    if spec.kh == spec.kw == 1 and spec.stride == (1, 1) and spec.pad == (0, 0, 0, 0):
        return _pointwise(x, weight, spec, work)
    if _patches_apply(spec):
        return _patches(x, weight, spec, work)
    if _shared_rows(spec):
        return _gemm_shared_rows(x, weight, spec, work)
    threads = _gemm_threads(spec)
    ph = _phases(spec)
    k_all = cin_g * spec.kh * spec.kw
    # weight columns in the order the phase grids lay out the column matrix
    wm = ph.weights(weight)
    lw, m, rows, crows = _gemm_plan(spec, work.itemsize, threads)
    junk = lw != wo
    out = np.empty((n, spec.c_out, ho, wo), dtype=work)
    out_g = out.reshape(n, g, cout_g, ho * wo)

    def buffers() -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        # per-thread buffers, reused by every chunk the thread takes
        flat = _scratch("flat", (m, spec.c_in, len(ph.phases), ph.rows_needed(crows), ph.wq), work)
        cols = _scratch("cols", (m, g, k_all, _lead(rows * lw, work.itemsize)), work)
        res = _scratch("res", (m, g, cout_g, rows * lw), work) if junk else None
        return flat, cols, res

    def chunk(n0: int, t0: int) -> None:
        """Images ``n0..n0+m``, output rows ``t0..t0+crows``: gather, then the GEMMs."""
        flat, cols, res = buffers()
        mm, t1 = min(m, n - n0), min(ho, t0 + crows)
        ph.fill(x[n0 : n0 + mm], t0, flat[:mm, :, :, : ph.rows_needed(t1 - t0)])
        fs = flat.strides
        for r0 in range(t0, t1, rows):
            nr = min(rows, t1 - r0)
            k0 = 0
            for p, ii, ro, rs, jj, co, cs in ph.grids:
                kk = cin_g * len(ii) * len(jj)
                shape = (mm, g, cin_g, len(ii), len(jj), nr, lw)
                # every tap of the phase in one strided view (junk columns run into the
                # next row; the buffer's extra row keeps that in bounds, ndarray checks)
                src = np.ndarray(
                    shape,
                    dtype=work,
                    buffer=flat,
                    offset=p * fs[2] + (r0 - t0 + ro) * fs[3] + co * fs[4],
                    strides=(fs[0], cin_g * fs[1], fs[1], rs * fs[3], cs * fs[4], fs[3], fs[4]),
                )
                cols[:mm, :, k0 : k0 + kk, : nr * lw].reshape(shape)[...] = src
                k0 += kk
            c = cols[:mm, :, :, : nr * lw]
            if junk:
                r = np.matmul(wm, c, out=res[:mm, :, :, : nr * lw])
                out[n0 : n0 + mm, :, r0 : r0 + nr] = r.reshape(mm, spec.c_out, nr, lw)[..., :wo]
            else:
                np.matmul(wm, c, out=out_g[n0 : n0 + mm, :, :, r0 * wo : (r0 + nr) * wo])

    jobs = [(n0, t0) for n0 in range(0, n, m) for t0 in range(0, ho, crows)]
    _run_jobs(chunk, jobs, threads, spec)
    return out


def _pointwise(x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype) -> np.ndarray:
    """1x1, stride 1, no padding: matmuls over channels straight on the input (no copy),
    in pieces of images and pixels on our threads (each GEMM on one BLAS thread)."""
    g, cin_g, cout_g, n = spec.groups, spec.cin_g, spec.cout_g, spec.n
    hw = spec.h * spec.w
    wm = weight.reshape(g, cout_g, cin_g)
    xs = x.reshape(n, g, cin_g, hw)
    out = np.empty((n, g, cout_g, hw), dtype=work)
    threads = _gemm_threads(spec)
    # about two pieces per thread, whole images where there are enough of them
    pieces = max(1, -(-2 * threads // n)) if threads > 1 else 1
    step = -(-hw // pieces)
    step = min(hw, -(-step // 16) * 16)

    def piece(i: int, p0: int) -> None:
        np.matmul(wm, xs[i, :, :, p0 : p0 + step], out=out[i, :, :, p0 : p0 + step])

    if threads == 1:
        with _quiet_blas(spec):
            np.matmul(wm, xs, out=out)
    else:
        _run_jobs(piece, [(i, p0) for i in range(n) for p0 in range(0, hw, step)], threads)
    return out.reshape(n, spec.c_out, spec.h, spec.w)


def _quiet_blas(spec: ConvSpec) -> contextlib.AbstractContextManager:
    """One BLAS thread for a call that runs its GEMMs on one thread of ours.

    OpenBLAS's idle threads spin for about 0.1 s after each threaded call: a 240->40 1x1
    layer on a 14x14 map left 8 ms of CPU burnt in the 20 ms after the call returned,
    taken from whatever the caller ran next (torch, OpenCV, its own NumPy). Our own
    threads sleep on a lock when idle. Tiny problems skip the switch (see
    QUIET_BLAS_MACS).
    """
    if spec.macs < QUIET_BLAS_MACS:
        return contextlib.nullcontext()
    return _ONE_THREAD_BLAS


def _run_jobs(
    job: Callable[..., None], args: list[tuple], threads: int, spec: ConvSpec | None = None
) -> None:
    """``job(*a)`` for every ``a`` in ``args`` on up to ``threads`` threads (BLAS on one
    thread each while more than one runs; on one thread also with ``spec``, see
    :func:`_quiet_blas`). Jobs are taken as threads come free: a thread that starts late
    simply takes fewer."""
    pending = iter(args)
    lock = threading.Lock()

    def worker(_: int) -> None:
        while True:
            with lock:
                a = next(pending, None)
            if a is None:
                return
            job(*a)

    threads = min(threads, len(args))
    if threads > 1:
        with _ONE_THREAD_BLAS:
            _run_parallel(worker, threads)
    elif spec is not None:
        with _quiet_blas(spec):
            worker(0)
    else:
        worker(0)


# GEMMs per output row over columns that the rows share (see _gemm_shared_rows); None:
# the rule in _shared_rows, True/False force it where it applies (tests, A/B runs).
SHARED_ROWS: bool | None = None
# It pays where copies weigh against the GEMMs (few output channels per group) and rows
# are wide (each output row is one GEMM of N = W_out columns). Measured against the
# column matrix of every tap (ms, 2 cores): W9 12.2-15.2 vs 14.9-16.9, 3->16 3x3 on
# 960x540 8.4 vs 9.1, 16->16 5x5 on 512^2 31.1 vs 34.3; but 64->64 3x3 on 224^2 26.0 vs
# 25.1, a 3->64 7x7 stem (112 wide) 2.7 vs 2.3, W5 (56 wide) 14.9 vs 13.7.
SHARED_ROWS_MIN_WIDTH = 128
SHARED_ROWS_MAX_COUT = 32
# column bytes per band (per thread): W9 took 14.5, 13.4, 12.2, 12.6 and 14.2 ms with
# 0.5, 1, 2, 4 and 8 MiB
SHARED_ROWS_BYTES = 2 * 2**20
# output columns per GEMM: OpenBLAS ran (16 x 147) x (147 x N) at 108, 94, 101, 77 and 67
# GFLOP/s per thread for N = 64, 128, 256, 512 and 1024; W9 took 12.9, 10.7, 10.7 and
# 11.1 ms with pieces of 512, 256, 128 and 64
SHARED_ROWS_PIECE = 256


def _shared_rows_apply(spec: ConvSpec) -> bool:
    """Kernel rows ``i*dh`` of output row ``r`` (padded row ``sh*r + i*dh``) lie on one
    grid of step ``dh`` for every row when ``dh`` divides ``sh``, so that consecutive
    (kernel row, channel, column tap) columns are equally spaced (see
    :func:`_gemm_shared_rows`)."""
    return spec.kh > 1 and spec.stride[0] % spec.dilation[0] == 0


def _shared_rows(spec: ConvSpec) -> bool:
    if not _shared_rows_apply(spec):
        return False
    if SHARED_ROWS is not None:
        return SHARED_ROWS
    return spec.w_out >= SHARED_ROWS_MIN_WIDTH and spec.cout_g <= SHARED_ROWS_MAX_COUT


def _pieces(width: int) -> list[tuple[int, int, int]]:
    """(first column, piece width, pieces) covering ``width`` columns: pieces of
    SHARED_ROWS_PIECE columns, then one for the rest."""
    piece = min(width, SHARED_ROWS_PIECE)
    count, rest = divmod(width, piece)
    return [(0, piece, count)] + ([(count * piece, rest, 1)] if rest else [])


def _gemm_shared_rows(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype
) -> np.ndarray:
    """The gemm path with one column matrix per band that every output row shares.

    The column matrix of every tap holds each input row ``kH`` times (once per kernel
    row). Here a band keeps each padded input row once, as ``C_in/groups x kW`` copies
    shifted by the column taps (``C[g, u, c, j, :]`` = padded row ``y0 + u*dh``, columns
    ``sw*p + j*dw``), each ``L`` elements long. Output row ``r`` needs rows ``u = r*sh/dh
    + i`` for kernel rows ``i``: with the (kernel row, channel, column tap) order those
    are ``kH*C_in/groups*kW`` rows exactly ``L`` apart, i.e. an ordinary strided matrix
    starting ``r*sh/dh`` rows in, and one GEMM per output row (batched by ``np.matmul``)
    reads it in place and writes its output row in place. W9 copies 7x less, and its
    GEMMs ran 77-80 GFLOP/s per thread (``L`` an odd number of cache lines).
    """
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    step = sh // dh  # grid rows between consecutive output rows
    item = work.itemsize
    lead = _lead(wo, item)
    kc = cin_g * spec.kw
    # (G, 1, C_out/G, K) with K in (kernel row, channel, column tap) order
    w5 = weight.reshape(g, cout_g, cin_g, spec.kh, spec.kw)
    wm = np.ascontiguousarray(w5.transpose(0, 1, 3, 2, 4)).reshape(g, 1, 1, cout_g, -1)
    # column taps by stride phase: a phase's taps are every `jstep`-th kernel column and
    # read the phase's columns `cstep` apart from `c0` on
    grids = _axis_grids(spec.kw, sw, dw)
    wq = wo + max(c0 + (len(jj) - 1) * cstep for _, jj, c0, cstep in grids)
    per_row = spec.c_in * spec.kw * lead * item * step
    rows = max(1, min(ho, SHARED_ROWS_BYTES // max(1, per_row)))
    rows = -(-ho // -(-ho // rows))  # equal bands
    nu_max = step * (rows - 1) + spec.kh
    out = np.empty((n, spec.c_out, ho, wo), dtype=work)

    def band(i: int, r0: int) -> None:
        nr = min(rows, ho - r0)
        nu = step * (nr - 1) + spec.kh
        cols = _scratch("shared_cols", (g, nu_max, kc, lead), work)
        phase = _scratch("shared_phase", (spec.c_in, nu_max, wq), work)
        rpos = sh * r0 - spec.pad[0] + dh * np.arange(nu)
        dst = cols[:, :nu].reshape(g, nu, cin_g, spec.kw, lead)
        for b, jj, c0, cstep in grids:
            cpos = b - spec.pad[2] + sw * np.arange(wq)
            _gather2d(x[i], rpos, cpos, spec.padding_mode, phase[:, :nu])
            # every tap of the phase in one strided view, as in _gemm
            ps = phase.strides
            src = np.ndarray(
                (g, nu, cin_g, len(jj), wo),
                dtype=work,
                buffer=phase,
                offset=c0 * item,
                strides=(cin_g * ps[0], ps[1], ps[0], cstep * item, item),
            )
            jstep = jj[1] - jj[0] if len(jj) > 1 else 1
            dst[:, :, :, jj[0] : jj[-1] + 1 : jstep, :wo] = src
        cs = cols.strides
        # each output row in pieces of `piece` columns: OpenBLAS runs these small
        # products faster than one long one (see SHARED_ROWS_PIECE), then the rest
        for c0, width, count in _pieces(wo):
            b_view = np.ndarray(
                (g, nr, count, spec.kh * kc, width),
                dtype=work,
                buffer=cols,
                offset=c0 * item,
                strides=(cs[0], step * cs[1], width * item, cs[2], item),
            )
            o_view = np.ndarray(
                (g, nr, count, cout_g, width),
                dtype=work,
                buffer=out,
                offset=((i * spec.c_out * ho + r0) * wo + c0) * item,
                strides=(cout_g * ho * wo * item, wo * item, width * item, ho * wo * item, item),
            )
            np.matmul(wm, b_view, out=o_view)

    jobs = [(i, r0) for i in range(n) for r0 in range(0, ho, rows)]
    _run_jobs(band, jobs, _gemm_threads(spec), spec)
    return out


# ---------------------------------------------------------------------------------------
# direct, depthwise: tap accumulation


# Depthwise layers with this many channels or more (one per group, zero padding) run
# channels-last (see _depthwise_channels_last): CPU ms against the planar tap loop,
# 1152 channels 7x7 5x5 0.70 vs 2.11, 768 7x7 7x7 0.90 vs 2.92, N=8 384 14x14 7x7 15.0
# vs 37.4, 96 56x56 7x7 7.2 vs 12.3, 32 112x112 3x3 3.1 vs 3.9; N=8 58 56x56 3x3 s2
# 4.1 vs 3.4.
CHANNELS_LAST_MIN = 64
# bytes of one band's accumulator in the channels-last loop (stays in L2)
CHANNELS_LAST_BAND = 256 * 1024


def _channels_last_pays(spec: ConvSpec) -> bool:
    return (
        spec.cin_g == 1
        and spec.cout_g == 1
        and spec.c_out >= CHANNELS_LAST_MIN
        and spec.padding_mode == "zeros"
    )


def _depthwise_channels_last(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype
) -> np.ndarray:
    """Depthwise taps with the channels innermost: each tap is one multiply-add over
    ``(rows, W_out, C)``, whose rows of ``W_out * C`` contiguous values vectorise well
    whatever the map size (planar loops ran ``W_out``-long rows: 7 values on a 7x7 map).
    The taps accumulate in the same order as :func:`_direct_depthwise`'s."""
    n, c, h, w = x.shape
    kh, kw = spec.kh, spec.kw
    sh, sw = spec.stride
    dh, dw = spec.dilation
    top, bottom, left, right = spec.pad
    ho, wo = spec.h_out, spec.w_out
    xp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=work)
    xp[:, top : top + h, left : left + w, :] = x.transpose(0, 2, 3, 1)
    taps = np.ascontiguousarray(weight.reshape(c, kh * kw).T.astype(work, copy=False))
    out = np.empty((n, c, ho, wo), dtype=work)
    rows = max(1, min(ho, CHANNELS_LAST_BAND // max(1, wo * c * work.itemsize)))
    acc = np.empty((rows, wo, c), dtype=work)
    tmp = np.empty_like(acc)
    for b in range(n):
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            a, t = acc[: r1 - r0], tmp[: r1 - r0]
            for i in range(kh):
                y0 = r0 * sh + i * dh
                for j in range(kw):
                    x0 = j * dw
                    src = xp[
                        b, y0 : y0 + (r1 - r0 - 1) * sh + 1 : sh, x0 : x0 + (wo - 1) * sw + 1 : sw
                    ]
                    if i == j == 0:
                        np.multiply(src, taps[0], out=a)
                    else:
                        np.multiply(src, taps[i * kw + j], out=t)
                        a += t
            out[b, :, r0:r1] = a.transpose(2, 0, 1)
    return out


# Depthwise layers (one channel per group, zero padding, real dtypes) with at least this
# many kernel taps and multiply-adds run as GEMMs over row blocks (see _depthwise_gemm);
# None in DW_GEMM: that rule, True/False force it where it applies (tests, A/B runs).
# ms against the channels-last tap loop (min of 7, 2 cores): 7x7 kernels 96ch 56^2 2.6
# vs 7.8, 192ch 28^2 1.7 vs 3.5, N=8 384ch 14^2 6.9 vs 20.1, N=8 768ch 7^2 3.3 vs 7.9;
# 5x5 N=8 672ch 14^2 s2 2.9 vs 4.6, 240ch 14^2 0.49 vs 0.56, but 576ch 7^2 0.43 vs 0.36
# (under a million multiply-adds: the band set-up weighs); 3x3 within noise.
DW_GEMM: bool | None = None
DW_GEMM_MIN_TAPS = 25
DW_GEMM_MIN_MACS = 10**6
# output columns per block (the GEMM's N)
DW_GEMM_BLOCK = 8
DW_GEMM_MIN_JOB_BYTES = 128 * 1024


def _depthwise_gemm_applies(spec: ConvSpec) -> bool:
    return (
        spec.cin_g == 1
        and spec.cout_g == 1
        and spec.padding_mode == "zeros"
        and min(spec.pad) >= 0
        and np.dtype(spec.dtype).kind == "f"
    )


def _depthwise_gemm_pays(spec: ConvSpec) -> bool:
    if not _depthwise_gemm_applies(spec):
        return False
    if DW_GEMM is not None:
        return DW_GEMM
    return spec.kh * spec.kw >= DW_GEMM_MIN_TAPS and spec.macs >= DW_GEMM_MIN_MACS


def _depthwise_gemm(x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype):
    """Depthwise taps as one small GEMM per channel over blocks of output columns.

    A block of B = DW_GEMM_BLOCK output columns of one output row reads kH input rows of
    ``span`` columns; with those kH x span values as a row of a matrix (one row per
    block), the block's outputs are that row times a ``(kH*span, B)`` banded matrix of
    the channel's taps (zeros off the band). The tap loop passes over the whole output
    twice per tap (a multiply, an add); the GEMM reads each block's values once and runs
    at BLAS speed, computing ``span / kW`` times the products (the zeros of the band).
    Channels run in chunks whose row matrix stays in L2, on the gemm path's threads.
    """
    n, c, h, w = x.shape
    kh, kw = spec.kh, spec.kw
    sh, sw = spec.stride
    dh, dw = spec.dilation
    top, bottom, left, right = spec.pad
    ho, wo = spec.h_out, spec.w_out
    b = DW_GEMM_BLOCK
    nb = -(-wo // b)
    span = (b - 1) * sw + (kw - 1) * dw + 1
    item = work.itemsize
    wp = max(w + left + right, (nb - 1) * b * sw + span)
    xp = np.zeros((c, n, h + top + bottom, wp), dtype=work)
    xp[:, :, top : top + h, left : left + w] = x.transpose(1, 0, 2, 3)
    band = np.zeros((c, kh, span, b), dtype=work)
    taps = weight.reshape(c, kh, kw)
    for j in range(kw):
        for q in range(b):
            band[:, :, j * dw + q * sw, q] = taps[:, :, j]
    band = band.reshape(c, kh * span, b)
    s = xp.strides
    rows = as_strided(
        xp, (c, n, ho, nb, kh, span), (s[0], s[1], s[2] * sh, b * sw * item, s[2] * dh, item)
    )
    out = np.empty((n, c, ho, wo), dtype=work)
    # a job's row matrix: in L2, and at most a quarter of a large input (the padded copy
    # is another), so that the call stays within what budget.conv_need prices for it;
    # small inputs take 128 KiB (each job costs ~10 us of calls: 768 channels of a 7x7
    # map in 59 jobs ran 1.5x slower than in 9)
    limit = min(GEMM_BYTES, max(x.size * item // 4, DW_GEMM_MIN_JOB_BYTES))
    per_row = n * nb * kh * span * item  # one output row of one channel
    nr = max(1, min(ho, limit // per_row))
    step = max(1, limit // (per_row * ho)) if nr == ho else 1

    def chunk(c0: int, r0: int) -> None:
        c1, r1 = min(c, c0 + step), min(ho, r0 + nr)
        mat = rows[c0:c1, :, r0:r1].reshape(c1 - c0, n * (r1 - r0) * nb, kh * span)  # a copy
        y = np.matmul(mat, band[c0:c1]).reshape(c1 - c0, n, r1 - r0, nb * b)
        out[:, c0:c1, r0:r1] = y[..., :wo].transpose(1, 0, 2, 3)

    jobs = [(c0, r0) for c0 in range(0, c, step) for r0 in range(0, ho, nr)]
    _run_jobs(chunk, jobs, _gemm_threads(spec), spec)
    return out


def _direct_depthwise(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype
) -> np.ndarray:
    if _depthwise_gemm_pays(spec):
        return _depthwise_gemm(x, weight, spec, work)
    if _channels_last_pays(spec):
        return _depthwise_channels_last(x, weight, spec, work)
    g, cout_g = spec.groups, spec.cout_g
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    ph = _phases(spec)
    wt = weight.reshape(g, cout_g, 1, len(ph.taps))
    out = np.empty((n, spec.c_out, ho, wo), dtype=work)
    per_row = spec.c_in * len(ph.phases) * ph.wq * work.itemsize
    rows = _band_rows(spec, per_row, CHUNK_BYTES // 4)
    # pieces of flat positions small enough for the accumulator to stay in L2
    piece = max(256, TAP_PIECE // max(1, spec.c_out))
    for b in range(n):
        xb = x[b : b + 1]
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            flat = ph.gather(xb, r0, r1, work)[0].reshape(g, 1, len(ph.phases), -1)
            length = (r1 - r0) * ph.wq
            acc = np.empty((g, cout_g, length), dtype=work)
            tmp = np.empty((g, cout_g, min(piece, length)), dtype=work)
            for q0 in range(0, length, piece):
                q1 = min(length, q0 + piece)
                a = acc[:, :, q0:q1]
                tm = tmp[:, :, : q1 - q0]
                for t, (p, off) in enumerate(ph.taps):
                    src = flat[:, :, p, off + q0 : off + q1]
                    if t == 0:
                        np.multiply(src, wt[:, :, :, 0], out=a)
                    else:
                        np.multiply(src, wt[:, :, :, t], out=tm)
                        a += tm
            out[b, :, r0:r1] = acc.reshape(spec.c_out, r1 - r0, ph.wq)[..., :wo]
    return out


# ---------------------------------------------------------------------------------------
# separable: two banded-Toeplitz passes


def _toeplitz(taps: np.ndarray, block: int, step: int, dil: int, work: np.dtype) -> np.ndarray:
    """``(block, L)`` with ``T[o, o*step + t*dil] = taps[t]``; ``L`` covers the block."""
    span = (block - 1) * step + (taps.size - 1) * dil + 1
    mat = np.zeros((block, span), dtype=work)
    o = np.arange(block)[:, None]
    mat[o, o * step + np.arange(taps.size)[None, :] * dil] = taps.astype(work)[None, :]
    return mat


def _block(k_eff: int) -> int:
    """Outputs per Toeplitz block: just wide enough for the kernel span.

    Each pass is one GEMM whose K is a block of ``block*stride`` inputs and whose N (or M)
    covers every block of the band, so the matmul does ``2 * m * block * stride`` flops
    per output (``m`` = 2 slabs when the block spans the kernel).
    """
    return max(16, -(-k_eff // 16) * 16)


def _slabs(
    taps: np.ndarray, block: int, step: int, dil: int, work: np.dtype
) -> tuple[np.ndarray, int]:
    """Toeplitz ``(block, L)`` cut into ``m`` slabs of ``P = block*step`` columns.

    Output block ``k`` reads inputs ``k*P .. k*P+L-1``, i.e. slab ``j`` of input block
    ``k+j``. Returned stacked as ``(m*block, P)``: one GEMM against the input viewed as
    ``(P, blocks*...)`` gives every partial product, so a pass costs one BLAS call per
    band instead of one per block (hundreds of small calls made OpenBLAS's threads spin
    when the machine was busy: 17 s instead of 0.6 s on a 4096^2 image).
    """
    mat = _toeplitz(taps, block, step, dil, work)
    span = mat.shape[1]
    p = block * step
    m = -(-span // p)
    padded = np.zeros((block, m * p), dtype=work)
    padded[:, :span] = mat
    return np.ascontiguousarray(
        padded.reshape(block, m, p).transpose(1, 0, 2).reshape(m * block, p)
    ), m


def _pass(src: np.ndarray, stack: np.ndarray, m: int, block: int, nblocks: int) -> np.ndarray:
    """One 1-D pass along axis 0 of ``src`` ``(nbx*P, S)``: returns ``(block, nblocks, S)``.

    Row ``i`` of block ``k`` of the result is output ``k*block + i`` (blocks stay
    interleaved: the other pass does not care about the order of its rows).
    """
    p = stack.shape[1]
    nbx = src.shape[0] // p
    width = src.shape[1]
    # (P, nbx*S): the contraction axis first, one row copy of the band
    y = np.ascontiguousarray(src.reshape(nbx, p, width).swapaxes(0, 1)).reshape(p, nbx * width)
    z = (stack @ y).reshape(m, block, nbx, width)
    res = z[0, :, :nblocks].copy()
    for j in range(1, m):
        res += z[j, :, j : j + nblocks]
    return res


def _separable(
    x: np.ndarray,
    weight: np.ndarray,
    spec: ConvSpec,
    work: np.dtype,
    factors: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    colf, rowf = factors  # (C_out, cin_g, kH), (C_out, cin_g, kW)
    sh, sw = spec.stride
    dh, dw = spec.dilation
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    ekh = dh * (spec.kh - 1) + 1
    ekw = dw * (spec.kw - 1) + 1
    bv, bh = _block(ekh), _block(ekw)
    nbh = -(-wo // bh)
    # one kernel for every plane (an image filter): all planes go side by side through
    # the same two GEMMs per band
    shared = spec.cin_g == 1 and spec.cout_g == 1 and bool(np.all(weight == weight[:1]))
    pairs = [(0, 0)] if shared else [(o, c) for o in range(spec.c_out) for c in range(spec.cin_g)]
    tv, th = {}, {}
    for o, c in pairs:
        tv[o, c], mv = _slabs(colf[o, c], bv, sh, dh, work)
        stack, mh = _slabs(rowf[o, c], bh, sw, dw, work)
        th[o, c] = np.ascontiguousarray(stack.T)
    pv, ph = bv * sh, bh * sw
    wy = (nbh + mh - 1) * ph  # input columns the horizontal GEMM reads
    cols_needed = min(wy, (wo - 1) * sw + ekw)
    cpos = np.arange(cols_needed) - spec.pad[2]
    per_row = n * spec.c_in * sh * wy * work.itemsize * 3
    rows = _band_rows(spec, per_row, CHUNK_BYTES // 4)
    rows = max(bv, rows // bv * bv)
    out = np.zeros((n, spec.c_out, ho, wo), dtype=work)

    def both(src: np.ndarray, key: tuple[int, int], nr: int, nbv: int) -> np.ndarray:
        """``src`` ``(in_rows, S)`` with S = planes*wy -> ``(nr, planes, wo)``."""
        planes = src.shape[1] // wy
        mid = _pass(src, tv[key], mv, bv, nbv)  # (bv, nbv, planes*wy)
        # horizontal: the contraction axis is contiguous, so the input is a free view
        # (rows*blocks, P_h) and the slabs sit side by side in th: (P_h, mh*bh)
        nbx = nbh + mh - 1
        z = (mid.reshape(-1, ph) @ th[key]).reshape(bv, nbv, planes, nbx, mh, bh)
        res = z[:, :, :, :nbh, 0].copy()
        for j in range(1, mh):
            res += z[:, :, :, j : j + nbh, j]
        # (bv, nbv, planes, nbh, bh) -> (nbv, bv, planes, nbh*bh): outputs in order
        res = res.transpose(1, 0, 2, 3, 4).reshape(nbv * bv, planes, nbh * bh)
        return res[:nr, :, :wo]

    for r0 in range(0, ho, rows):
        r1 = min(ho, r0 + rows)
        nr = r1 - r0
        nbv = -(-nr // bv)
        in_rows = (nbv + mv - 1) * pv
        used = min(in_rows, (r1 - 1) * sh + ekh - r0 * sh)
        rpos = np.arange(r0 * sh, r0 * sh + used) - spec.pad[0]
        buf = np.zeros((in_rows, n, spec.c_in, wy), dtype=work)
        _gather2d(
            x, rpos, cpos, spec.padding_mode, buf.transpose(1, 2, 0, 3)[:, :, :used, :cols_needed]
        )
        if shared:
            res = both(buf.reshape(in_rows, -1), (0, 0), nr, nbv)
            out[:, :, r0:r1] = res.reshape(nr, n, spec.c_out, wo).transpose(1, 2, 0, 3)
            continue
        for b in range(n):
            for o in range(spec.c_out):
                gi = o // spec.cout_g
                for c in range(spec.cin_g):
                    src = buf[:, b, gi * spec.cin_g + c]
                    out[b, o, r0:r1] += both(src, (o, c), nr, nbv)[:, 0]
    return out


# ---------------------------------------------------------------------------------------
# fft: overlap-save by bands of output rows


@functools.lru_cache(maxsize=4096)
def _good_size(n: int) -> int:
    """Smallest 2-3-5-smooth integer >= n (fast sizes for pocketfft).

    Enumerates the products 2^a 3^b 5^c instead of stepping up from ``n``: near 10**9
    smooth numbers lie millions apart, and a cost model may price absurd sizes.
    """
    if n <= 1:
        return 1
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _fft_plan(spec: ConvSpec) -> tuple[int, int, int, int]:
    """(output rows per band, fft height, fft width, spectrum bytes of the kernel)."""
    sh, sw = spec.stride
    ekh = spec.dilation[0] * (spec.kh - 1) + 1
    ekw = spec.dilation[1] * (spec.kw - 1) + 1
    fw = _good_size((spec.w_out - 1) * sw + ekw)
    # bands about 4 kernel heights tall (>= 256 rows): overlap (ekh-1) stays < 25 %
    target = max(256, 4 * ekh)
    rows = max(1, min(spec.h_out, (target - ekh) // sh + 1))
    fh = _good_size((rows - 1) * sh + ekh)
    cplx = np.dtype(compute_dtype(spec.dtype)).kind == "c"
    width = fw if cplx else fw // 2 + 1
    itemsize = (
        2 * compute_dtype(spec.dtype).itemsize if not cplx else compute_dtype(spec.dtype).itemsize
    )
    kbytes = spec.c_out * spec.cin_g * fh * width * itemsize
    return rows, fh, fw, kbytes


def _fft(x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype) -> np.ndarray:
    sh, sw = spec.stride
    dh, dw = spec.dilation
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    ekh = dh * (spec.kh - 1) + 1
    ekw = dw * (spec.kw - 1) + 1
    rows, fh, fw, _ = _fft_plan(spec)
    cplx = work.kind == "c"
    fwd = np.fft.fft2 if cplx else np.fft.rfft2
    # correlation = convolution with the flipped kernel; dilation = zeros between taps
    kern = np.zeros((spec.c_out, spec.cin_g, ekh, ekw), dtype=work)
    kern[:, :, ::dh, ::dw] = weight
    kf = fwd(kern[:, :, ::-1, ::-1], s=(fh, fw))
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    cols_needed = (wo - 1) * sw + ekw
    cpos = np.arange(cols_needed) - spec.pad[2]
    out = np.empty((n, spec.c_out, ho, wo), dtype=work)
    for r0 in range(0, ho, rows):
        r1 = min(ho, r0 + rows)
        in_rows = (r1 - 1 - r0) * sh + ekh
        band = np.empty((n, spec.c_in, in_rows, cols_needed), dtype=work)
        rpos = np.arange(r0 * sh, r0 * sh + in_rows) - spec.pad[0]
        _gather2d(x, rpos, cpos, spec.padding_mode, band)
        xf = fwd(band, s=(fh, fw)).reshape(n, g, cin_g, fh, -1)
        if cin_g == 1:
            prod = xf * kf.reshape(g, cout_g, fh, -1)  # (n, g, cout_g, fh, fw')
        else:
            prod = np.einsum("goc...,ngc...->ngo...", kf.reshape(g, cout_g, cin_g, fh, -1), xf)
        prod = prod.reshape(n, spec.c_out, fh, -1)
        y = np.fft.ifft2(prod, s=(fh, fw)) if cplx else np.fft.irfft2(prod, s=(fh, fw))
        sub = y[:, :, ekh - 1 : ekh - 1 + (r1 - r0 - 1) * sh + 1 : sh]
        out[:, :, r0:r1] = sub[:, :, :, ekw - 1 : ekw - 1 + (wo - 1) * sw + 1 : sw]
    return out


# ---------------------------------------------------------------------------------------
# cost model

NUMPY_ALGOS: tuple[str, ...] = ("direct", "gemm", "separable", "fft")

# Effective throughputs of this machine's NumPy (OpenBLAS, 2 Zen 4 cores), fitted to
# benchmarks/numpy_crossover.py (RGB 1024^2, one BLAS thread because the machine was
# shared; only the ratios matter). They include each path's overheads, hence low values.
# Measured crossovers (ms, direct / separable / fft): rank-1 kernels 3x3 61/95/310,
# 5x5 71/71/243, 7x7 160/87/347, 21x21 725/65/156 -> separable from 5x5 up; rank-2
# kernels 9x9 159/-/227, 11x11 344/-/142, 15x15 257/-/140 -> fft from about 11x11.
# Dense layers: gemm beat the reference im2col on all of W5-W9 (1.2-2.4x).
GEMM_FLOPS = 100e9  # sgemm with K >= 64: 90-150 GFLOP/s
TOEPLITZ_FLOPS = 40e9  # the banded matmuls of the separable passes
SEPARABLE_PASSES = 20  # memory passes over each channel plane (gathers, zeroing, sums)
TAP_ELEMS = 3e9  # tap loop: multiply + add per output element and tap, in cache
COPY_BYTES = 8e9  # slice copies into the column matrix (read + write)
GATHER_ELEMS = 0.25e9  # the reference im2col's 6-D transpose gather, elements/s
FFT_ELEMS = 0.75e9  # complex64 rfft2+irfft2: elements * log2(size) per second
FFT_MAC_FLOPS = 5e9  # complex multiply-accumulate of spectra over input channels
FFT_KERNEL_BYTES = 256 * 2**20
# LAPACK's SVD (the rank-1 check of a kernel that passed plan's quick test): about 22 k^3
# flops for a k x k kernel at ~4 GFLOP/s (three 1001x1001 kernels took 18 s).
SVD_FLOPS = 4e9


def svd_seconds(spec: ConvSpec) -> float:
    """Rough time of the rank-1 check's SVDs, one per kernel of the weight."""
    small, large = sorted((spec.kh, spec.kw))
    return spec.c_out * spec.cin_g * 22.0 * small * small * large / SVD_FLOPS


def algo_reason(spec: ConvSpec, algo: str, factors: object = True) -> str | None:
    """Why ``algo`` cannot run ``spec`` on NumPy, or None (``factors``: the rank-1 check)."""
    if algo not in NUMPY_ALGOS:
        return f"unknown algo {algo!r}; NumPy runs {list(NUMPY_ALGOS)}"
    if algo == "separable" and factors is None:
        return "algo='separable' needs rank-1 kernels, but a kernel of this weight is not rank 1"
    if algo == "fft":
        kbytes = _fft_plan(spec)[3]
        if kbytes > FFT_KERNEL_BYTES:
            return (
                f"algo='fft' would hold {kbytes / 2**20:.0f} MiB of kernel spectra "
                f"({spec.c_out}x{spec.cin_g} kernels); use 'gemm' or 'direct'"
            )
    return None


def estimate_seconds(spec: ConvSpec, algo: str) -> float:
    """Rough time of ``algo`` on ``spec`` (comparable between algorithms only)."""
    sh, sw = spec.stride
    ekh = spec.dilation[0] * (spec.kh - 1) + 1
    ekw = spec.dilation[1] * (spec.kw - 1) + 1
    taps = spec.kh * spec.kw
    wq = spec.w_out + (ekw - 1) // sw
    grid = spec.n * spec.h_out * wq  # outputs computed incl. junk columns
    item = compute_dtype(spec.dtype).itemsize
    inputs = spec.n * spec.c_in * spec.h * spec.w
    cplx = 4.0 if np.dtype(spec.dtype).kind == "c" else 1.0
    if algo == "gemm":
        flops = 2.0 * grid * spec.c_out * spec.cin_g * taps * cplx
        copies = grid * spec.c_in * taps * item * 2
        # every core works: bands on our threads, or BLAS's threads on fewer, larger GEMMs
        par = _threads()
        if spec.kh == spec.kw == 1 and spec.stride == (1, 1) and spec.pad == (0, 0, 0, 0):
            copies = 0
        # a matmul with one or two output rows per group runs at matrix-vector speed
        eff = min(1.0, spec.cout_g / 16) * min(1.0, spec.cin_g * taps / 32)
        whole = flops / (GEMM_FLOPS * max(eff, 0.02)) + (copies + inputs * item) / COPY_BYTES
        return whole / min(par, spec.n * spec.h_out)
    if algo == "direct":
        if spec.cin_g == 1:
            return 2.0 * grid * spec.c_out * taps * cplx / TAP_ELEMS + inputs * item / COPY_BYTES
        pix = spec.n * spec.h_out * spec.w_out
        return 2.0 * spec.macs * cplx / GEMM_FLOPS + pix * spec.c_in * taps / GATHER_ELEMS
    if algo == "separable":
        bv, bh = _block(ekh), _block(ekw)
        mv = -(-((bv - 1) * sh + ekh) // (bv * sh))
        mh = -(-((bh - 1) * sw + ekw) // (bh * sw))
        pairs = spec.n * spec.c_out * spec.cin_g
        wp = (spec.w_out - 1) * sw + ekw
        flops = 2.0 * pairs * spec.h_out * (wp * mv * bv * sh + spec.w_out * mh * bh * sw) * cplx
        passes = pairs * spec.h_out * wp * item * SEPARABLE_PASSES / COPY_BYTES
        return flops / TOEPLITZ_FLOPS + passes
    if algo == "fft":
        rows, fh, fw, _ = _fft_plan(spec)
        bands = -(-spec.h_out // rows)
        size = fh * fw
        per = size * np.log2(size)
        ffts = spec.n * (spec.c_in + spec.c_out) * bands * per
        # the per-frequency channel sum (einsum on complex64) runs far below GEMM speed
        mults = spec.n * spec.c_out * spec.cin_g * bands * size * 8 / FFT_MAC_FLOPS
        return ffts / FFT_ELEMS + mults
    raise ValueError(algo)


def _tuning() -> tuple:
    """The module values the cost model reads (tests and A/B runs patch them)."""
    return (
        _threads(),
        GEMM_FLOPS,
        TOEPLITZ_FLOPS,
        SEPARABLE_PASSES,
        TAP_ELEMS,
        COPY_BYTES,
        GATHER_ELEMS,
        FFT_ELEMS,
        FFT_MAC_FLOPS,
        FFT_KERNEL_BYTES,
    )


@functools.lru_cache(maxsize=1024)
def _cheapest(spec: ConvSpec, tuning: tuple) -> tuple[str, bool]:
    """(cheapest algorithm but separable, whether separable would beat it) for ``spec``:
    what :func:`choose_algo` decides before it looks at the weights. Cached per spec and
    tuning: the estimates took about a third of a small layer's call."""
    costs = {}
    for algo in ("gemm", "direct", "fft"):
        if algo == "direct" and spec.cin_g > 1:
            continue  # gemm computes the same products without the slow gather
        if algo == "gemm" and spec.cin_g == 1 and spec.cout_g < 4:
            continue  # a matrix-vector product over a copied column matrix: never pays
        if algo_reason(spec, algo) is None:
            costs[algo] = estimate_seconds(spec, algo)
    best = min(costs, key=costs.__getitem__)
    separable = spec.kh * spec.kw > 1 and (
        estimate_seconds(spec, "separable") + svd_seconds(spec) < costs[best]
    )
    return best, separable


def choose_algo(spec: ConvSpec, weight: np.ndarray) -> tuple[str, object]:
    """The cheapest applicable algorithm by :func:`estimate_seconds`, and the factors.

    The rank-1 check (an SVD per kernel) runs only when ``separable`` would win, so that
    a 256x128 1x1 layer does not pay for 32768 tiny SVDs.
    """
    best, separable = _cheapest(spec, _tuning())
    if separable:
        factors = separable_factors(weight)
        if factors is not None:
            return "separable", factors
    return best, None


class NumpyBackend:
    """Runs convolutions with NumPy on the host.

    ``algo`` is one of ``auto``, ``direct``, ``separable``, ``fft`` and ``gemm`` (see the
    module docstring); ``auto`` takes the cheapest by :func:`estimate_seconds`. A forced
    algorithm that cannot apply raises :class:`~convcli.errors.ConvValueError` with the
    reason.
    """

    name = "numpy"
    device_name = "host CPU (NumPy)"

    def supports(self, spec: ConvSpec) -> str | None:
        """Reason why ``spec`` cannot run here, or None (NumPy runs everything)."""
        return None

    def plan_algo(self, spec: ConvSpec, weight: np.ndarray) -> str:
        """The algorithm ``algo="auto"`` runs for ``spec`` (tiles reuse the whole's)."""
        return "direct" if spec.n == 0 else choose_algo(spec, weight)[0]

    def fixed_plan(self, spec: ConvSpec) -> str | None:
        """What :meth:`plan_algo` answers for ``spec`` whatever the weights' values, or
        None where a rank-1 test of the weights decides."""
        if spec.n == 0:
            return "direct"
        best, separable = _cheapest(spec, _tuning())
        return None if separable else best

    def run(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None,
        spec: ConvSpec,
        *,
        algo: str = "auto",
        info: RunInfo,
    ) -> np.ndarray:
        """Convolve batched ``x``; returns the result in the compute dtype.

        Records the algorithm used in ``info.algo`` and its time under
        ``info.timings["compute"]``.
        """
        t0 = time.perf_counter()
        work = compute_dtype(spec.dtype)
        factors = None
        if spec.n == 0:
            algo = "direct" if algo == "auto" else algo
        elif algo == "auto":
            algo, factors = choose_algo(spec, weight)
        else:
            if algo == "separable":
                factors = separable_factors(weight)
            reason = algo_reason(spec, algo, factors)
            if reason is not None:
                raise ConvValueError(reason)
        out = self._run(x, weight, spec, algo, work, factors)
        if bias is not None:
            out += np.asarray(bias, dtype=work)[None, :, None, None]
        info.algo = algo
        info.timings["compute"] = info.timings.get("compute", 0.0) + time.perf_counter() - t0
        return out

    @staticmethod
    def _run(x, weight, spec, algo, work, factors) -> np.ndarray:
        if spec.n == 0:
            return np.empty((0, spec.c_out, spec.h_out, spec.w_out), dtype=work)
        xw = np.asarray(x, dtype=work)
        ww = np.asarray(weight, dtype=work)
        if algo == "direct":
            if spec.cin_g == 1:
                return _direct_depthwise(xw, ww, spec, work)
            return conv2d_direct(xw, ww, None, spec)
        if algo == "gemm":
            return _gemm(xw, ww, spec, work)
        if algo == "separable":
            return _separable(xw, ww, spec, work, factors)
        return _fft(xw, ww, spec, work)
