"""Threads of the NumPy backend: a small pool, one CPU per thread for a call, BLAS held
at one thread while ours run GEMMs side by side, and per-thread scratch arrays.

Layers of 0.1 GFLOP or more run as chunks on the pool, each thread on its own CPU for
the call, with BLAS at one thread (through ``threadpoolctl``; see :class:`OneThreadBlas`
and :func:`spread_plan`); smaller ones leave the threading to BLAS.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from convcli.backends.numpy.settings import Settings
from convcli.spec import ConvSpec


def worker_count(settings: Settings) -> int:
    """Worker threads for the gemm path (``settings.threads``, else the CPUs we may run
    on)."""
    if settings.threads is not None:
        return max(1, settings.threads)
    mask = affinity()
    return max(1, len(mask)) if mask is not None else os.cpu_count() or 1


class OneThreadBlas:
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


ONE_THREAD_BLAS = OneThreadBlas()
_POOL: tuple[ThreadPoolExecutor, int] | None = None  # (pool, its workers)
_POOL_LOCK = threading.Lock()


def run_parallel(work: Callable[[int], None], threads: int, *, spread: bool = True) -> None:
    """``work(k)`` for ``k`` in ``range(threads)``: ``k = 0`` on the calling thread; with
    ``spread``, each thread on a CPU of its own for the call (see :func:`spread_plan`)."""
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
    plan = spread_plan() if spread else None
    if plan is not None:
        # the caller stays on its CPU for the call (its own setting is restored after)
        here, cpus, mask = plan
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {here})
        places = [{cpus[(k - 1) % len(cpus)]} for k in range(1, threads)]
    else:
        # no spreading: the workers may run wherever the caller may
        places = [affinity()] * (threads - 1)
    try:
        # each worker in a copy of the caller's context: NumPy's errstate lives there
        futures = [
            pool.submit(contextvars.copy_context().run, on_own_cpu, work, k, places[k - 1])
            for k in range(1, threads)
        ]
        try:
            work(0)
        finally:
            for f in futures:
                f.result()
    finally:
        if plan is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, mask)


def current_cpu() -> int | None:
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


def spread_plan() -> tuple[int, list[int], set[int]] | None:
    """(the caller's CPU, the CPUs our workers take in order, the caller's affinity),
    or None to leave the threads where the scheduler puts them.

    Why: the threads hand Python's GIL back and forth between NumPy calls, and Linux
    often wakes a thread on the CPU of the thread that woke it, so the caller and a
    worker ended up sharing one CPU: after 0.5 s of idle, W9's first three calls took
    19-25 ms against 12-14 ms for the next ones, and in the slow calls the caller had
    moved onto the worker's CPU. Pinned for the call, each keeps its own CPU.
    """
    mask = affinity()
    if mask is None:
        return None
    here = current_cpu()
    if here is None or here not in mask or len(mask) < 2:
        return None
    return here, [c for c in sorted(mask) if c != here], mask


def affinity() -> set[int] | None:
    """The calling thread's CPUs, or None where that cannot be known (not Linux)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return None


def on_own_cpu(work: Callable[[int], None], k: int, place: set[int] | None) -> None:
    """``work(k)`` on a worker, first moved to the CPUs ``place`` (if known)."""
    if place:
        # OSError: the CPU went away (hotplug, cgroup change): run where we are
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, place)
    work(k)


def gemm_threads(spec: ConvSpec, settings: Settings, *, large: bool | None = None) -> int:
    """Our threads for the gemm path; 1 leaves the threading to BLAS.

    Below ``settings.threaded_min_flops`` BLAS's own threads win: waking ours costs about
    0.25 ms. Above it ours win now that each keeps its own CPU for the call (see
    :func:`spread_plan`): as the bench times them (0.5 s of idle, a warm-up, one run),
    W6 took 6.4-7.0 ms on our threads against 8.1-9.6 on BLAS's, W7 2.5-2.95 against
    3.5-4.1, because BLAS's threads, woken after idle, shared a CPU with the caller.
    ``large`` overrides that size rule for paths whose work is not the layer's flops.
    """
    if large is None:
        large = 2 * spec.macs >= settings.threaded_min_flops
    if not ONE_THREAD_BLAS.available or not large:
        return 1
    if settings.threads is None:
        # a process that limited BLAS's threads (OPENBLAS_NUM_THREADS=1) gets no more here
        return max(1, min(worker_count(settings), ONE_THREAD_BLAS.threads()))
    return worker_count(settings)


_SCRATCH = threading.local()


def clear_scratch() -> None:
    """Drop the calling thread's kept work arrays (tests that count allocations)."""
    _SCRATCH.__dict__.clear()


def scratch(key: str, shape: tuple[int, ...], dtype: np.dtype, keep: int) -> np.ndarray:
    """A work array of this thread, kept between calls when under ``keep`` bytes.

    Fresh memory costs a page fault per 4 KiB at first touch: W7's ~4 MB of column
    matrices and phase copies per call took as long as its GEMMs, and an 8 MB band
    allocated per call made the gemm path 3x slower once the allocator handed pages back.
    """
    size = math.prod(shape) * dtype.itemsize
    kept = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = kept.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(max(size, 1), dtype=np.uint8)
        if size <= keep:
            kept[key] = buf
    return buf[:size].view(dtype).reshape(shape)


def quiet_blas(spec: ConvSpec, settings: Settings) -> contextlib.AbstractContextManager:
    """One BLAS thread for a call that runs its GEMMs on one thread of ours.

    OpenBLAS's idle threads spin for about 0.1 s after each threaded call: a 240->40 1x1
    layer on a 14x14 map left 8 ms of CPU burnt in the 20 ms after the call returned,
    taken from whatever the caller ran next (torch, OpenCV, its own NumPy). Our own
    threads sleep on a lock when idle. Tiny problems skip the switch (see
    ``settings.quiet_blas_macs``).
    """
    if spec.macs < settings.quiet_blas_macs:
        return contextlib.nullcontext()
    return ONE_THREAD_BLAS


def run_jobs(
    job: Callable[..., None],
    args: list[tuple],
    threads: int,
    settings: Settings,
    spec: ConvSpec | None = None,
) -> None:
    """``job(*a)`` for every ``a`` in ``args`` on up to ``threads`` threads (BLAS on one
    thread each while more than one runs; on one thread also with ``spec``, see
    :func:`quiet_blas`). Jobs are taken as threads come free: a thread that starts late
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
        with ONE_THREAD_BLAS:
            run_parallel(worker, threads, spread=settings.spread_workers)
    elif spec is not None:
        with quiet_blas(spec, settings):
            worker(0)
    else:
        worker(0)
