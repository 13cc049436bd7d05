"""The one OpenCL runtime every kernel family uses: program build and cache, buffers and
pools, launch sizing (with a fallback when the driver refuses a size), timing, fault
injection and error translation.

Programs are built from ``data_dir("kernels_cl") / f"{name}.cl"`` (``#include "x.clh"``
lines pasted in, see :func:`kernel_source`) with ``-D NAME=VALUE`` options (never
fast-math), cached per context and ``(name, sorted defines)`` in-process; PoCL
additionally keeps compiled binaries on disk, so a second process builds quickly. A
kernel's geometry defines come from :mod:`convcli.backends.opencl.geometry`, and
``kernels_cl/geometry.clh`` stops a build that lacks one with ``#error``.

Launch sizes come from the device and the kernel (:func:`fit_local_size`): a wanted
work-group size is shrunk to ``CL_KERNEL_WORK_GROUP_SIZE`` and
``CL_DEVICE_MAX_WORK_ITEM_SIZES``, and a launch the driver still refuses
(``INVALID_WORK_GROUP_SIZE``, ``INVALID_WORK_ITEM_SIZE``, ``OUT_OF_RESOURCES``) is retried
with half the work-group, down to one item (:meth:`Runtime.enqueue`).

Build seconds (and the first-launch JIT PoCL does per kernel) go to
``RunInfo.timings["build"]``, kernel seconds from profiling events to ``["compute"]``,
host-device transfers (and packing weights for them) to ``["upload"]`` /
``["download"]``. On CPU devices the arrays are wrapped with ``USE_HOST_PTR`` and the
result is mapped, not copied.

Every pyopencl error (and ``MemoryError``) during a build or a run becomes a one-line
:class:`~convcli.errors.BackendError` naming the OpenCL error, so that ``backend="auto"``
falls back to NumPy and ``backend="opencl"`` reports it; a program that does not build
raises :class:`BuildFailed` (a BackendError), on which a fast path gives way to the
generic kernel.

Fault injection (tests of the fallback paths): the environment variable
``CONVCLI_FAULT`` holds a comma-separated list of steps that then fail as the OpenCL
driver would fail them, checked at every call:

``init``
    device/context creation fails (``clCreateContext``, ``DEVICE_NOT_AVAILABLE``);
    :func:`convcli.backends.get_backend` remembers that failure for the process.
``build``
    every program request fails (``clBuildProgram``, ``BUILD_PROGRAM_FAILURE``), cached
    programs included.
``alloc``
    every buffer creation fails (``clCreateBuffer``, ``MEM_OBJECT_ALLOCATION_FAILURE``).
``run``
    every kernel launch fails (``clEnqueueNDRangeKernel``, ``OUT_OF_RESOURCES``).
``lost``
    every kernel launch fails as on a lost device (``DEVICE_NOT_AVAILABLE``).

``alloc``, ``run`` and ``lost`` are also checked when
:meth:`~convcli.backends.opencl.backend.OpenCLBackend.run` starts, so they hit every
algorithm, whichever helpers its path uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convcli.backends import build_index
from convcli.backends.opencl.device import DeviceLimits, import_cl
from convcli.backends.opencl.settings import DEFAULT, Settings
from convcli.errors import BackendError
from convcli.plan import kept_record, same_values, sample_matches
from convcli.resources import data_dir
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec, source_index

if TYPE_CHECKING:  # pragma: no cover - typing only; pyopencl is imported lazily
    import pyopencl as cl

FAULT_ENV = "CONVCLI_FAULT"
# CL_PROFILING_COMMAND_START and _END (cl.h)
_PROFILE_START, _PROFILE_END = 0x1282, 0x1283
_PAGE = 4096
# outputs this large are pooled (see Runtime.output), this many per runtime
POOL_MIN_BYTES = 1 << 20
POOL_SIZE = 3
# outputs up to this size are copied out of a kept device buffer (Runtime.output): a
# fresh wrapped array, mapped and unmapped, cost 30 us more than copying 200 KB (a
# mobilenet layer's 1x1 output) and as much as copying 800 KB
SMALL_OUTPUT_BYTES = 512 * 1024
# those kept buffers, one per size, the least recently used dropped past this many bytes
SMALL_KEPT_BYTES = 16 << 20
# a program build slower than this was a compile, not a load from the driver's cache
REAL_BUILD_S = 0.25
# buffers of named constants (index maps, FFT twiddles, a native filter's taps) kept
_CONSTANTS_SIZE = 256
# Packed weights on the device, reused while the caller passes equal weights: packing
# and uploading a 256x256x3x3 layer took 1-2.5 ms of a 6 ms call. Equality is checked
# exactly (a comparison with a private copy, ~0.2 ms), so weights edited in place are
# never served stale.
_PACKED_SIZE = 8


# --------------------------------------------------------------------------- errors


def _error_line(exc: BaseException) -> str:
    """A one-line description naming the OpenCL error (``routine failed: NAME``)."""
    code = getattr(exc, "code", None)
    routine = getattr(exc, "routine", None)
    name = None
    if isinstance(code, int):
        try:
            cl = import_cl()
            name = cl.status_code.to_string(code)
        except (BackendError, ValueError, KeyError):
            name = None
    if name and routine:
        text = f"{routine} failed: {name}"
    else:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MemoryError) and not name:
        text = f"out of host memory ({text})"
    # a build failure's log: keep its first error line, it says what went wrong
    record = getattr(exc, "what", None)
    what = record.what() if callable(getattr(record, "what", None)) else str(record or "")
    if _INJECTED in what:  # say so: a forgotten CONVCLI_FAULT must not look like a bug
        text += f" {_INJECTED}"
    first = build_log_error(what)
    if first is not None:
        text += f" ({first})"
    return " ".join(text.split())


# The first error of a build log, as each compiler writes it: PoCL
# "error: <file>:12:3: msg", clang-based drivers "<file>:12:3: error: msg" (rusticl's
# file is "input.cl", Oclgrind's "<source>"), Intel's CPU runtime "1:12:3: error: msg"
# (a source index first), and a bare "error: msg".
_LOG_ERRORS = (
    re.compile(r"^\s*error:\s*(?:\S*?:)?(?P<line>\d+):(?P<col>\d+):\s*(?P<msg>.*)"),
    re.compile(r"^\s*(?:\S*?:)?(?P<line>\d+):(?P<col>\d+):\s*(?:fatal\s+)?error:\s*(?P<msg>.*)"),
    re.compile(r"^\s*(?:fatal\s+)?error:\s*(?P<msg>.*)"),
)


def build_log_error(log: str) -> str | None:
    """``"line L:C: message"`` (or the bare message) of a build log's first error line,
    or None when the log names no error."""
    for line in log.splitlines():
        for pattern in _LOG_ERRORS:
            found = pattern.match(line)
            if found:
                fields = found.groupdict()
                where = f"line {fields['line']}:{fields['col']}: " if fields.get("line") else ""
                return f"{where}{found.group('msg').strip()[:200]}"
    return None


# os.environ's own mapping, read without its key encoding (0.8 us a lookup, five a
# warm call); it is what setting and deleting os.environ's items change
_ENVIRON = getattr(os.environ, "_data", None)
_FAULT_KEY = os.environ.encodekey(FAULT_ENV) if hasattr(os.environ, "encodekey") else None


def _fault_env() -> object:
    """The (encoded) value of ``CONVCLI_FAULT``, or None."""
    if _ENVIRON is not None and _FAULT_KEY is not None:
        return _ENVIRON.get(_FAULT_KEY)
    return os.environ.get(FAULT_ENV)


def _fault_steps() -> set[str]:
    return {s.strip().lower() for s in os.environ.get(FAULT_ENV, "").split(",") if s.strip()}


_INJECTED = "(injected by CONVCLI_FAULT)"
_FAULTS = {
    "init": ("clCreateContext", "DEVICE_NOT_AVAILABLE", "RuntimeError"),
    "build": ("clBuildProgram", "BUILD_PROGRAM_FAILURE", "RuntimeError"),
    "alloc": ("clCreateBuffer", "MEM_OBJECT_ALLOCATION_FAILURE", "MemoryError"),
    "run": ("clEnqueueNDRangeKernel", "OUT_OF_RESOURCES", "RuntimeError"),
    "lost": ("clEnqueueNDRangeKernel", "DEVICE_NOT_AVAILABLE", "RuntimeError"),
}


_REFUSED = ("INVALID_WORK_GROUP_SIZE", "INVALID_WORK_ITEM_SIZE", "OUT_OF_RESOURCES")


def launch_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a driver refusing a launch for its size or resources (not one
    injected by ``CONVCLI_FAULT``): a smaller work-group or another kernel may run."""
    code = getattr(exc, "code", None)
    if not isinstance(code, int) or _INJECTED in str(exc):
        return False
    cl = import_cl()
    return code in {int(getattr(cl.status_code, name, -9999)) for name in _REFUSED}


def inject_fault(step: str) -> None:
    """Raise the pyopencl error of ``step`` when ``CONVCLI_FAULT`` names it (see module doc).

    ``run`` and ``lost`` are both checked by the ``"run"`` step (kernel launches).
    """
    if not _fault_env():  # every launch and buffer asks: the usual answer first
        return
    steps = _fault_steps()
    names = [step] + (["lost"] if step == "run" else [])
    for name in names:
        if name in steps:
            cl = import_cl()
            routine, status, kind = _FAULTS[name]
            code = getattr(cl.status_code, status)
            record = cl._cl._ErrorRecord(routine, code, f"{routine} failed: {status} {_INJECTED}")
            raise getattr(cl, kind)(record)


class BuildFailed(BackendError):
    """A program did not build (or its kernel could not be created) on this device, e.g.
    a compiler without clang's vector attributes: under ``algo='auto'`` a fast path
    gives way to the generic kernel."""


class NoFit(BackendError):
    """A work-group's tiles do not fit the device's local memory even for one item: the
    caller runs the generic kernel."""


class translate_errors:
    """Turn pyopencl errors and MemoryError inside the block into one-line BackendError
    (or the subclass ``error``).

    A class rather than a generator-based context manager: a warm call enters several,
    and each generator-based one cost about 2 us.
    """

    __slots__ = ("error", "what")

    def __init__(self, what: str, error: type[BackendError] = BackendError) -> None:
        self.what = what
        self.error = error

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        if isinstance(exc, MemoryError | import_cl().Error):
            raise self.error(f"{self.what}: {_error_line(exc)}") from exc
        return False


_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_]+\.clh)"[ \t]*$', re.MULTILINE)


def kernel_source(path: Path) -> str:
    """The text of a kernel file with its ``#include "x.clh"`` lines (files beside it)
    pasted in, so the program handed to the driver, and cached by PoCL under its text,
    is complete: no include path, no stale cache entry when a header changes."""

    def read(p: Path) -> str:
        try:
            return p.read_text(encoding="utf-8")
        except OSError as exc:
            raise BuildFailed(f"OpenCL kernel source {p} cannot be read ({exc})") from exc

    return _INCLUDE.sub(lambda m: read(path.parent / m.group(1)), read(path))


# ------------------------------------------------------------------------ helpers


def aligned_empty(shape: Sequence[int], dtype: np.dtype | str, align: int = _PAGE) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an ``align`` boundary.

    PoCL uses a ``USE_HOST_PTR`` buffer in place when its memory is well aligned.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _page_view(
    owner: np.ndarray, shape: Sequence[int], dtype: np.dtype, offset: int = 0
) -> np.ndarray:
    """The array of ``shape`` and ``dtype`` ``offset`` bytes past the first page
    boundary of ``owner``."""
    off = (-owner.ctypes.data) % _PAGE + offset
    count = math.prod(shape) * dtype.itemsize
    return owner[off : off + count].view(dtype).reshape(shape)


def real_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype in (np.float64, np.complex128) else np.dtype(np.float32)


def compute_dtype(dtype: np.dtype | str) -> np.dtype:
    """The dtype results come back in (float16 is computed and returned as float32)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def fit_local_size(
    wanted: Sequence[int], group_limit: int, item_sizes: Sequence[int]
) -> tuple[int, ...]:
    """The local size to launch for ``wanted``: each dimension at most the device's
    ``item_sizes`` and the product at most ``group_limit``, halving the largest
    dimension until both hold (so a power-of-two request stays one)."""
    local = [max(1, int(v)) for v in wanted]
    for d, cap in enumerate(item_sizes[: len(local)]):
        while local[d] > max(1, int(cap)):
            local[d] = ceil_div(local[d], 2)
    while math.prod(local) > max(1, group_limit):
        d = max(range(len(local)), key=lambda i: local[i])
        local[d] = ceil_div(local[d], 2)
    return tuple(local)


def _define_text(value: int | float | str | bool) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _defines_key(defines: dict[str, int | float | str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, _define_text(v)) for k, v in defines.items()))


def _build_options(defines: tuple[tuple[str, str], ...]) -> list[str]:
    options = [f"-D{k}={v}" for k, v in defines]
    if any(k == "REAL" and v == "double" for k, v in defines):
        options.append("-DUSE_FP64=1")
    return options


def program_key(fingerprint: str, name: str, defines: dict[str, int | float | str]) -> str:
    """The build index's key of ``kernels_cl/{name}.cl`` built with ``defines`` on the
    device with ``fingerprint`` (see :mod:`convcli.backends.build_index`)."""
    source = kernel_source(data_dir("kernels_cl") / f"{name}.cl")
    return build_index.program_key(fingerprint, source, _build_options(_defines_key(defines)))


# ------------------------------------------------------------------------ runtime


@contextlib.contextmanager
def _compiler_stderr() -> Iterator[None]:
    """Keep the OpenCL compiler off the user's terminal while a program builds.

    PoCL's clang writes its diagnostics summary ("6 warnings and 2 errors generated.")
    straight to file descriptor 2, even for a build that fails and falls back to another
    kernel; the diagnostics themselves are in the build log (and the error). File
    descriptor 2 points at a scratch file for the build (builds are rare and cached);
    anything another thread writes to stderr meanwhile goes there too.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no fd 2 (or no sys.stderr): nothing to hide
        yield
        return
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


class _Current:
    """:meth:`Runtime.current`'s context manager (a class: see translate_errors)."""

    __slots__ = ("backend", "info", "previous")

    def __init__(self, backend: Runtime, info: RunInfo | None) -> None:
        self.backend, self.info = backend, info

    def __enter__(self) -> None:
        self.backend._lock.acquire()
        self.previous, self.backend._info = self.backend._info, self.info

    def __exit__(self, *exc: object) -> None:
        self.backend._info = self.previous
        self.backend._lock.release()


class Runtime:
    """One OpenCL device's context and profiling queue, with every cache and pool kept
    on it: programs and kernels, launch sizes, constant and packed-weight buffers,
    scratch buffers and pooled outputs.

    Attributes ``device_name``, ``ctx``, ``queue``, ``device``, ``limits``, ``is_cpu``,
    ``has_fp64`` and ``max_alloc_bytes`` describe the device; ``settings`` holds the
    kernel families' tuning (:class:`~convcli.backends.opencl.settings.Settings`).
    """

    def __init__(self, cl_module: Any, platform: Any, device: Any, ctx: Any, queue: Any) -> None:
        self._cl = cl_module
        self.platform = platform
        self.device = device
        self.ctx = ctx
        self.queue = queue
        self.device_name = f"{device.name.strip()} ({platform.name.strip()})"
        self.limits = DeviceLimits.of(device, platform)
        # by the type the device is ranked by: Oclgrind sets every type bit, CPU too
        self.is_cpu = self.limits.is_cpu
        self.has_fp64 = self.limits.fp64
        self.max_alloc_bytes = int(device.max_mem_alloc_size)
        # what a driver's binary cache is keyed by, besides the source and options
        self.fingerprint = "|".join(
            str(v).strip()
            for v in (platform.name, platform.version, device.name, device.driver_version)
        )
        self.request: str | None = None  # the device argument it was created for
        self._programs: dict[tuple, Any] = {}
        self._given: dict[tuple, Any] = {}  # program() by its arguments as given
        self._kernels: dict[tuple, Any] = {}
        self._fits: dict[tuple, tuple[int, ...]] = {}  # local_size() by (limit, wanted)
        self._launched: set[tuple] = set()  # (kernel, local size) launched once
        self._typed: set[int] = set()  # kernels whose scalar arguments' dtypes are set
        self.settings: Settings = DEFAULT
        self._constants: OrderedDict[tuple, Any] = OrderedDict()
        # packed weights: (key, weight record, bias record, weight buffer, bias buffer)
        self._packed: list[tuple] = []
        # packed weights served before their full comparison (see defer_weight_checks):
        # (key, weight record, given weight) still to compare, whether one differed,
        # and the thread whose run they belong to (native strips fetch outside the lock)
        self._pending: list[tuple[tuple, np.ndarray, np.ndarray]] | None = None
        self._stale = False
        self._pending_thread = 0
        # keys whose late comparison once failed: compared in full before the launches
        # from then on (weights changed in place again, or another array of the shape
        # that the sample cannot tell apart, would run every call twice and repack)
        self._compare_first: set[tuple] = set()
        self._scratch: dict[str, Any] = {}
        # pooled outputs: [owner array, device buffer, references to owner while idle]
        self._pool: list[list[Any]] = []
        # small outputs' device buffers by size (see output), and by id for fetch
        self._small: OrderedDict[int, Any] = OrderedDict()
        self._small_ids: dict[int, Any] = {}
        # pyopencl's buffer read without enqueue_copy's dispatch on argument types (and
        # its two driver queries): 0.7 us against 3 us a small result
        self._read = getattr(cl_module._cl, "_enqueue_read_buffer", None)
        self._lock = threading.RLock()
        self._info: RunInfo | None = None
        # warm launches (see offer_replay): (spec, algo) -> (algo run, settings, replay)
        self.replays: dict[tuple, tuple[str, Settings, Callable[..., np.ndarray]]] = {}
        self.offered: Callable[..., np.ndarray] | None = None

    # ---- programs and kernels -------------------------------------------------
    def current(self, info: RunInfo | None) -> _Current:
        """Account builds without an explicit ``info`` to ``info`` inside the block."""
        return _Current(self, info)

    def _add(self, info: RunInfo | None, key: str, seconds: float) -> None:
        info = info if info is not None else self._info
        if info is not None:
            info.timings[key] = info.timings.get(key, 0.0) + seconds

    def offer_replay(self, launch: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        """Offer ``launch(x, weight, bias, info) -> out``: a kernel family's launch of a
        spec with everything that depends only on the spec (kernel, index maps, launch
        sizes, size arguments) bound, for :func:`~convcli.backends.opencl.plan.run` to
        keep and call on later runs of the spec instead of planning and building the
        launch again (a warm small layer's call spent 15-20 us there). Returns it.

        The arrays are passed anew at every call, so weights still go through
        :meth:`packed_weights`' check; the ``build`` fault is still injected at each.
        """

        def replay(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, info: RunInfo):
            inject_fault("build")  # a program request at every call, as program() does
            return launch(x, weight, bias, info)

        self.offered = replay
        return replay

    def built_any(self) -> bool:
        """Whether this backend has built (or loaded) a program: the runtime's compiler
        memory is then part of the process."""
        return bool(self._programs)

    def program(
        self,
        name: str,
        defines: dict[str, int | float | str] | None = None,
        info: RunInfo | None = None,
    ) -> cl.Program:
        """The program ``kernels_cl/{name}.cl`` built with ``-D K=V`` for ``defines``.

        Cached per ``(name, sorted defines)``; build seconds go to ``info`` (or the
        RunInfo of the current run, see :meth:`current`) under ``timings["build"]``.
        Raises BuildFailed when the build fails.
        """
        defines = dict(defines or {})
        # the defines as given: a call site passes them in one order, and this lookup
        # costs a tenth of the canonical key's sorting and formatting (a small layer's
        # call spent 17 us on it)
        given = (name, *defines.items())
        with translate_errors(f"building OpenCL program {name}", BuildFailed):
            inject_fault("build")
            prg = self._given.get(given)
            if prg is not None:
                return prg
            key = (name, _defines_key(defines))
            with self._lock:
                prg = self._programs.get(key)
                if prg is None:
                    t0 = time.perf_counter()
                    prg = self._build(name, key[1])
                    self._add(info, "build", time.perf_counter() - t0)
                    self._programs[key] = prg
                self._given[given] = prg
        return prg

    def has_program(self, name: str, defines: dict[str, int | float | str]) -> bool:
        """Whether :meth:`program` holds ``name`` built with ``defines`` already."""
        return (name, _defines_key(defines)) in self._programs

    def _build(self, name: str, defines: tuple[tuple[str, str], ...]) -> Any:
        source = kernel_source(data_dir("kernels_cl") / f"{name}.cl")
        options = _build_options(defines)
        key = build_index.program_key(self.fingerprint, source, options)
        cached = build_index.is_built(key)
        t0 = time.perf_counter()
        prg = self._build_once(source, options)
        if not prg.kernel_names.strip():
            # PoCL's disk cache has returned programs without kernels; a distinct option
            # string bypasses the bad cache entry.
            prg = self._build_once(source, [*options, f"-DCONVCLI_REBUILD={os.getpid()}"])
            if not prg.kernel_names.strip():
                raise BuildFailed(f"OpenCL program {name} built without any kernel")
            return prg
        if not cached:
            build_index.mark_built(key)
            seconds = time.perf_counter() - t0
            # a driver's cache hit the index did not know of takes tens of ms: only
            # real compiles teach the build time
            compiled = seconds > REAL_BUILD_S
            build_index.note_build(self.request, self.fingerprint, seconds, compiled)
        return prg

    def _build_once(self, source: str, options: list[str]) -> Any:
        cl = self._cl
        with warnings.catch_warnings(), _compiler_stderr():
            # a non-empty build log is a warning in pyopencl; pytest makes warnings errors
            warnings.simplefilter("ignore", cl.CompilerWarning)
            return cl.Program(self.ctx, source).build(options=options)

    def kernel(
        self,
        name: str,
        defines: dict[str, int | float | str] | None = None,
        info: RunInfo | None = None,
        kernel_name: str | None = None,
    ) -> cl.Kernel:
        """The kernel ``kernel_name`` (default: ``name``) of :meth:`program`, fetched once.

        Raises BuildFailed when the program does not build or has no such kernel.
        """
        try:
            prg = self.program(name, defines, info)
        except BuildFailed:
            raise
        except BackendError as exc:
            raise BuildFailed(str(exc)) from exc
        key = (id(prg), kernel_name or name)
        with self._lock:
            knl = self._kernels.get(key)
            if knl is None:
                with translate_errors(f"creating OpenCL kernel {kernel_name or name}", BuildFailed):
                    knl = getattr(prg, kernel_name or name)
                self._kernels[key] = knl
        return knl

    def launch(
        self,
        kernel: cl.Kernel,
        global_size: Sequence[int],
        local_size: Sequence[int] | None,
        args: Sequence[Any],
        info: RunInfo | None = None,
        *,
        wait: bool = True,
    ) -> cl.Event:
        """:meth:`enqueue` ``kernel``; kernel seconds (profiling) go to
        ``timings["compute"]``.

        With ``wait`` (the default) the call waits for the kernel.
        """
        with translate_errors("running OpenCL kernel " + kernel.function_name):
            event = self.enqueue(kernel, global_size, local_size, args, info)
            if wait:
                event.wait()
                self._add(info, "compute", self.event_seconds(event))
        return event

    def local_size(self, kernel: cl.Kernel, wanted: Sequence[int]) -> tuple[int, ...]:
        """``wanted`` shrunk to what the device runs for ``kernel`` (see
        :func:`fit_local_size`): ``CL_KERNEL_WORK_GROUP_SIZE`` (a register-hungry kernel
        can be limited below the device maximum on GPUs), the device's work-item sizes,
        and any smaller size a refused launch of this kernel has taught."""
        key = (self._group_limit(kernel), tuple(wanted))
        fit = self._fits.get(key)
        if fit is None:  # a pure function of the key, asked at every launch
            fit = fit_local_size(key[1], key[0], self.limits.max_work_item_sizes)
            self._fits[key] = fit
        return fit

    def _group_limit(self, kernel: cl.Kernel) -> int:
        key = ("wg", id(kernel))
        with self._lock:
            limit = self._kernels.get(key)
            if limit is None:
                with translate_errors("querying OpenCL kernel"):
                    limit = int(
                        kernel.get_work_group_info(
                            self._cl.kernel_work_group_info.WORK_GROUP_SIZE, self.device
                        )
                    )
                limit = max(1, min(limit, self.limits.max_work_group_size))
                self._kernels[key] = limit
        return limit

    def enqueue(
        self,
        kernel: cl.Kernel,
        global_size: Sequence[int],
        wanted_local: Sequence[int] | None,
        args: Sequence[Any],
        info: RunInfo | None = None,
    ) -> cl.Event:
        """Enqueue ``kernel`` over at least ``global_size`` items in work-groups of at
        most ``wanted_local`` (None: one item per group, the kernels' only assumption
        being that items past ``global_size`` return at once).

        The local size is :meth:`local_size`'s fit; the global size is rounded up to a
        multiple of it. A launch the driver refuses for its size (``INVALID_WORK_GROUP_SIZE``,
        ``INVALID_WORK_ITEM_SIZE``, ``OUT_OF_RESOURCES``: registers or local memory a
        query did not show) is retried with half the work-group, and the smaller limit
        is kept for the kernel; at one item the error is raised (pyopencl's, for
        :func:`translate_errors`).

        A kernel's first launch with each local size waits for it: its wall time beyond
        its run time is the driver's compile at first launch (PoCL JIT-compiles each
        kernel and local size then), added to ``timings["build"]`` of ``info`` (or of the
        current run).
        """
        inject_fault("run")
        if id(kernel) not in self._typed:
            self._type_scalars(kernel, args)
        wanted = tuple(int(v) for v in (wanted_local or (1,) * len(global_size)))
        while True:
            local = self.local_size(kernel, wanted)
            pairs = zip(global_size, local, strict=True)
            gsize = tuple(ceil_div(int(g), lv) * lv for g, lv in pairs)
            first = (id(kernel), local) not in self._launched
            try:
                if first:
                    self.queue.finish()  # the wait below must not include earlier kernels
                t0 = time.perf_counter()
                event = kernel(self.queue, gsize, local, *args)
                if first:
                    event.wait()
                    wall = time.perf_counter() - t0
                    self._launched.add((id(kernel), local))
                    self._add(info, "build", max(0.0, wall - self.event_seconds(event)))
                return event
            except self._cl.Error as exc:
                items = math.prod(local)
                if not launch_refused(exc) or items <= 1:
                    raise
                with self._lock:
                    self._kernels[("wg", id(kernel))] = max(1, items // 2)

    def _type_scalars(self, kernel: cl.Kernel, args: Sequence[Any]) -> None:
        """Tell pyopencl the dtypes of ``kernel``'s scalar arguments (numpy scalars in
        ``args``; the positions of buffers and local memory get None), once per kernel.

        Without them pyopencl sets each scalar through its generic path, 6 us apiece on
        PoCL: a dense_gemm launch's six sizes cost 38 us of a 120 us call; with them it
        packs them with ``struct`` (well under a microsecond). A kernel's arguments have
        the same kinds at every launch (its signature), so the first launch's tell.
        """
        with self._lock:
            if id(kernel) in self._typed:
                return
            dtypes = [a.dtype if isinstance(a, np.generic) else None for a in args]
            if any(d is not None for d in dtypes):
                with translate_errors("setting OpenCL kernel arguments"):
                    kernel.set_scalar_arg_dtypes(dtypes)
            self._typed.add(id(kernel))

    def enqueue_rows(
        self,
        kernel: cl.Kernel,
        global_size: tuple[int, int, int],
        args: Sequence[Any],
        *,
        fixed_from: int = 0,
        fill_to: int = 0,
    ) -> cl.Event:
        """:meth:`enqueue` a kernel whose dimension 0 runs along output rows: the
        work-group wanted is ``settings.local_x`` items along a row, or the next power
        of two above a row's item count when a row has fewer (from ``fixed_from`` items
        per row on, always ``local_x``: each new local size is a first-launch compile).
        With ``fill_to``, a work-group also takes several rows (dimension 1) until it has
        about that many items."""
        items = global_size[0]
        local_x = self.settings.local_x
        if fixed_from and items >= fixed_from:
            lx = local_x
        else:
            lx = min(local_x, 1 << max(0, items - 1).bit_length())
        ly = max(1, fill_to // lx)
        return self.enqueue(kernel, global_size, (lx, ly, 1), args)

    def static_local(self, kernel: cl.Kernel) -> int:
        """``CL_KERNEL_LOCAL_MEM_SIZE``: the kernel's own local memory (0 when the driver
        does not say)."""
        cl = self._cl
        try:
            return int(
                kernel.get_work_group_info(cl.kernel_work_group_info.LOCAL_MEM_SIZE, self.device)
            )
        except cl.Error:
            return 0

    def fit_local_memory(
        self, kernel: cl.Kernel, wanted: Sequence[int], need: Callable[[tuple[int, ...]], int]
    ) -> tuple[tuple[int, ...], int]:
        """The local size to launch and the bytes of local memory it needs
        (``need(local)``): :meth:`local_size`'s fit of ``wanted`` (two dimensions),
        shrunk (rows first) until ``need`` fits ``CL_DEVICE_LOCAL_MEM_SIZE`` less the
        kernel's own local memory. Raises NoFit when even one item's tiles do not fit."""
        limit = self.limits.local_mem_bytes - self.static_local(kernel)
        lx, ly = wanted[0], wanted[1]
        while True:
            local = self.local_size(kernel, (lx, ly, 1))
            nbytes = need(local)
            if nbytes <= limit:
                return local, nbytes
            if local[0] == 1 and local[1] == 1:
                raise NoFit(f"{nbytes} bytes of tiles exceed the device's {limit} of local memory")
            lx, ly = (local[0], max(1, local[1] // 2)) if local[1] > 1 else (local[0] // 2, 1)

    @staticmethod
    def event_seconds(event: Any) -> float:
        """Run time of a finished event from its profiling counters.

        Asked directly by the standard's numbers (``CL_PROFILING_COMMAND_START``/``END``):
        pyopencl's ``event.profile.end`` looks the name up at every read, 4 us a call's
        two events.
        """
        return (
            event.get_profiling_info(_PROFILE_END) - event.get_profiling_info(_PROFILE_START)
        ) * 1e-9

    def add_compute(self, info: RunInfo | None, events: Sequence[Any]) -> None:
        """Kernel seconds of ``events`` to ``timings["compute"]`` (complete by the time
        this is asked after :meth:`fetch`: no extra thread wake-up)."""
        total = 0.0
        for ev in events:
            ev.wait()
            total += self.event_seconds(ev)
        self._add(info, "compute", total)

    # ---- buffers --------------------------------------------------------------
    def _buffer(self, flags: int, size: int = 0, hostbuf: np.ndarray | None = None) -> Any:
        inject_fault("alloc")
        if hostbuf is not None:
            return self._cl.Buffer(self.ctx, flags, hostbuf=hostbuf)
        return self._cl.Buffer(self.ctx, flags, max(1, int(size)))

    def _wraps(self, array: np.ndarray) -> bool:
        return self.is_cpu and array.flags.c_contiguous and array.flags.writeable

    def input_buffer(self, array: np.ndarray, info: RunInfo | None = None) -> cl.Buffer:
        """A read-only device buffer holding ``array`` (C-contiguous).

        CPU devices wrap the array itself (``USE_HOST_PTR``, no copy; keep ``array``
        alive and unchanged until the kernels finished); other devices copy it into a
        reusable scratch buffer. Seconds go to ``timings["upload"]``.
        """
        mf = self._cl.mem_flags
        t0 = time.perf_counter()
        with translate_errors("uploading to the OpenCL device"):
            if self._wraps(array):
                buf = self._buffer(mf.READ_ONLY | mf.USE_HOST_PTR, hostbuf=array)
            elif self.is_cpu:
                data = np.ascontiguousarray(array)
                buf = self._buffer(mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=data)
            else:
                buf = self.scratch("input", array.nbytes)
                data = np.ascontiguousarray(array)
                self._cl.enqueue_copy(self.queue, buf, data, is_blocking=True)
        self._add(info, "upload", time.perf_counter() - t0)
        return buf

    def wrapped_offset(self, array: np.ndarray, line: int = 64) -> int:
        """Bytes past a ``line``-byte boundary at which :meth:`input_buffer`'s buffer of
        ``array`` starts: the array's own misalignment when it is wrapped, else 0."""
        return array.ctypes.data % line if self._wraps(array) else 0

    def constant_buffer(
        self, key: tuple, make: Callable[[], np.ndarray], info: RunInfo | None = None
    ) -> cl.Buffer:
        """A cached read-only buffer of ``make()`` (packed weights, bias) under ``key``.

        ``key`` must identify the content (see :meth:`content_key`); the last
        ``_CONSTANTS_SIZE`` buffers are kept, so tiles and repeated calls upload once.
        Weights go to :meth:`packed_weights` instead, which needs no hash of them.
        """
        with self._lock:
            buf = self._constants.get(key)
            if buf is not None:
                self._constants.move_to_end(key)
                return buf
        t0 = time.perf_counter()
        data = np.ascontiguousarray(make())
        mf = self._cl.mem_flags
        with translate_errors("uploading to the OpenCL device"):
            buf = self._buffer(mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=data)
        with self._lock:
            self._constants[key] = buf
            while len(self._constants) > _CONSTANTS_SIZE:
                self._constants.popitem(last=False)
        self._add(info, "upload", time.perf_counter() - t0)
        return buf

    @staticmethod
    def content_key(*arrays: np.ndarray | None) -> tuple:
        """A key for :meth:`constant_buffer` from the dtypes, shapes and bytes of arrays."""
        h = hashlib.blake2b(digest_size=16)
        parts: list[Any] = []
        for a in arrays:
            if a is None:
                parts.append(None)
                continue
            a = np.ascontiguousarray(a)
            parts.append((a.dtype.str, a.shape))
            h.update(memoryview(a).cast("B"))
        return (tuple(parts), h.hexdigest())

    def upload(self, array: np.ndarray, dtype: np.dtype | str = np.float32) -> cl.Buffer:
        """A read-only buffer holding a copy of ``array`` as ``dtype`` (not cached)."""
        data = np.ascontiguousarray(array, dtype=dtype)
        mf = self._cl.mem_flags
        with translate_errors("uploading to the OpenCL device"):
            return self._buffer(mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=data)

    def index_map(
        self,
        size: int,
        before: int,
        after: int,
        mode: str,
        step: int = 1,
        length: int = 0,
        info: RunInfo | None = None,
    ) -> cl.Buffer:
        """The padded -> source index map of an axis (-1 where zeros pad), cached.

        With ``step``/``length``: entry v maps padded index ``v * step`` (a layer whose
        stride equals its dilation reads only those), -1 past the padded edge.
        """

        key = ("index_map", size, before, after, mode, step, length)
        buf = self._constants.get(key)  # asked at every launch: the usual answer first
        if buf is not None:
            return buf

        def make() -> np.ndarray:
            idx, valid = source_index(size, before, after, mode)
            arr = np.where(valid, idx, -1).astype(np.int32)
            if length:
                full = np.full(length * step, -1, dtype=np.int32)
                full[: min(arr.size, full.size)] = arr[: full.size]
                arr = np.ascontiguousarray(full[::step])
            return arr

        return self.constant_buffer(key, make, info)

    def index_maps(self, spec: ConvSpec, info: RunInfo | None = None) -> tuple[Any, Any]:
        """The row and column index maps of ``spec``'s padding (:meth:`index_map`)."""
        pad, mode = spec.pad, spec.padding_mode
        rows = self.index_map(spec.h, pad[0], pad[1], mode, info=info)
        return rows, self.index_map(spec.w, pad[2], pad[3], mode, info=info)

    def packed_weights(
        self,
        pack: Callable[..., tuple[np.ndarray, np.ndarray]],
        weight: np.ndarray,
        bias: np.ndarray | None,
        spec: ConvSpec,
        block: Any,
        info: RunInfo | None = None,
    ) -> tuple[cl.Buffer, cl.Buffer]:
        """Device buffers of ``pack(weight, bias, spec, block)`` (weights and bias as a
        kernel reads them), reused while the caller passes equal weights and bias.

        The last ``_PACKED_SIZE`` are kept, so repeated layers and the tiles of one call
        upload once. A frozen array (``Conv2d``'s weights, see
        :func:`convcli.plan.frozen_copy`) is its own record; any other is compared in
        full with a private copy, so an in-place change is never served stale. Packing
        and upload seconds go to ``timings["upload"]``.
        """
        t0 = time.perf_counter()
        key = (pack, weight.shape, spec.groups, spec.dtype, block)
        pending = self._deferred()
        with self._lock:
            for i, entry in enumerate(self._packed):
                k, w_copy, b_copy, wbuf, bbuf = entry
                if k != key or not _same(b_copy, bias):
                    continue
                if (
                    pending is not None
                    and key not in self._compare_first
                    and sample_matches(w_copy, weight)
                ):
                    # compared in full by fetch(), while the kernels run
                    pending.append((key, w_copy, weight))
                    self._packed.insert(0, self._packed.pop(i))
                    self._add(info, "upload", time.perf_counter() - t0)
                    return wbuf, bbuf
                if _same(w_copy, weight):
                    # by index: list.remove would compare the entries' arrays with ==
                    self._packed.insert(0, self._packed.pop(i))
                    self._add(info, "upload", time.perf_counter() - t0)
                    return wbuf, bbuf
        wp, bp = pack(weight, bias, spec, block)
        wbuf, bbuf = self.upload(wp, wp.dtype), self.upload(bp, bp.dtype)
        with self._lock:
            self._packed.insert(0, (key, _kept(weight), _kept(bias), wbuf, bbuf))
            del self._packed[_PACKED_SIZE:]
        self._add(info, "upload", time.perf_counter() - t0)
        return wbuf, bbuf

    def defer_weight_checks(self) -> None:
        """Until :meth:`deferred_checks_held`: :meth:`packed_weights` serves kept
        buffers whose weight record matches the given weights on a sample, and leaves
        the full comparison (a read of both: 0.25 ms for 9.4 MB, with the device idle
        when done before the launches) to :meth:`fetch`, which runs it while the
        kernels run."""
        self._pending_thread = threading.get_ident()
        self._pending = [] if self.settings.late_weight_checks else None
        self._stale = False

    def _deferred(self) -> list[tuple[tuple, np.ndarray, np.ndarray]] | None:
        """The calling thread's pending comparisons, or None: a thread that did not
        defer them (a native strip's :meth:`fetch`, which runs outside the lock held by
        the deferring run) neither adds to them nor runs them, else the run's own check
        could find them taken while they are still being compared."""
        pending = self._pending
        if pending is None or self._pending_thread != threading.get_ident():
            return None
        return pending

    def _check_pending(self) -> None:
        """The deferred full comparisons; a kept entry that differs is dropped."""
        pending = self._pending
        while pending:
            key, kept, given = pending.pop()
            if not same_values(kept, given):
                self._stale = True
                with self._lock:
                    self._packed = [e for e in self._packed if e[1] is not kept]
                    if len(self._compare_first) >= 1024:
                        self._compare_first.clear()
                    self._compare_first.add(key)

    def deferred_checks_held(self) -> bool:
        """End :meth:`defer_weight_checks`: run the comparisons still pending and
        answer whether every weight served since matched in full (if not, the run's
        results are stale: run it again, and the weights are packed afresh)."""
        if self._pending is None:
            return True
        try:
            self._check_pending()
            return not self._stale
        finally:
            self._pending, self._stale = None, False

    def scratch(self, role: str, nbytes: int) -> cl.Buffer:
        """A device buffer of at least ``nbytes`` reused across calls for ``role``."""
        with self._lock:
            buf = self._scratch.get(role)
            if buf is None or buf.size < nbytes:
                self._scratch.pop(role, None)
                buf = self._buffer(self._cl.mem_flags.READ_WRITE, size=nbytes)
                self._scratch[role] = buf
        return buf

    def output(
        self, shape: Sequence[int], dtype: np.dtype | str, offset: int = 0
    ) -> tuple[np.ndarray, cl.Buffer]:
        """A host result array and the device buffer kernels write it through.

        On CPU devices the buffer wraps the page-aligned array itself; elsewhere it is a
        device buffer of the same size. With ``offset`` (bytes, under a page) the array
        starts that far into the buffer, where kernels must write it (a kernel can then
        give its output the cache-line alignment of its input, see
        :meth:`wrapped_offset`). Call :meth:`fetch` after the kernels. Outputs of
        ``POOL_MIN_BYTES`` or more come from a small pool and are reused once the caller
        has dropped them: a fresh 50 MB array cost 10-40 ms of page faults inside the
        kernel (glibc maps blocks over 32 MB afresh every time), more than a whole 3x3
        filter. An entry is reused only when nothing but the pool refers to its memory
        (no view, no base chain), so a result a caller still holds is never overwritten.
        """
        dtype = np.dtype(dtype)
        nbytes = max(1, math.prod(shape) * dtype.itemsize) + offset
        if self.is_cpu and nbytes <= SMALL_OUTPUT_BYTES:
            # a small result is copied out of a device buffer kept per size: wrapping a
            # fresh array in a buffer cost more (10 us a call) than the copy (see fetch)
            with self._lock:
                buf = self._small.get(nbytes)
                if buf is None:
                    with translate_errors("allocating OpenCL output"):
                        buf = self._buffer(self._cl.mem_flags.READ_WRITE, size=nbytes)
                    self._small[nbytes] = buf
                    self._small_ids[id(buf)] = buf
                    kept = sum(self._small)  # the keys are the sizes
                    while kept > SMALL_KEPT_BYTES and len(self._small) > 1:
                        size, dropped = self._small.popitem(last=False)
                        del self._small_ids[id(dropped)]
                        kept -= size
                else:
                    self._small.move_to_end(nbytes)
            # the array keeps the offset's place in a cache line, as a wrapped one would
            size = math.prod(shape) * dtype.itemsize
            owner = np.empty(size + 64, dtype=np.uint8)
            start = (offset - owner.ctypes.data) % 64
            return owner[start : start + size].view(dtype).reshape(shape), buf
        with self._lock:
            for entry in self._pool:
                # entry[0] is not bound to a local name here: idle means exactly entry[2]
                if entry[1].size >= nbytes and sys.getrefcount(entry[0]) <= entry[2]:
                    return _page_view(entry[0], shape, dtype, offset), entry[1]
            owner = np.empty(nbytes + _PAGE, dtype=np.uint8)
            raw = _page_view(owner, (nbytes,), np.dtype(np.uint8))
            mf = self._cl.mem_flags
            with translate_errors("allocating OpenCL output"):
                if self.is_cpu:
                    buf = self._buffer(mf.WRITE_ONLY | mf.USE_HOST_PTR, hostbuf=raw)
                else:
                    buf = self._buffer(mf.WRITE_ONLY, size=nbytes)
            del raw
            if nbytes >= POOL_MIN_BYTES:
                entry = [owner, buf, 0]
                # references while idle (the entry, the buffer's host view, the call
                # argument), measured rather than assumed: numpy collapses view chains
                entry[2] = sys.getrefcount(owner) - 1  # less this function's local name
                self._pool.insert(0, entry)
                del self._pool[POOL_SIZE:]
            return _page_view(owner, shape, dtype, offset), buf

    def fetch(
        self, out: np.ndarray, buf: cl.Buffer, info: RunInfo | None = None, offset: int = 0
    ) -> np.ndarray:
        """Bring the result of :meth:`output` to ``out`` (a map on CPUs, a copy elsewhere);
        ``offset`` as given to :meth:`output`.

        Blocks until every queued kernel is done; ``timings["download"]`` gets the map or
        copy command's own time from its profiling event, not the wait for the kernels.
        """
        cl = self._cl
        if self._pending and self._deferred():
            self._check_pending()  # the device runs the kernels meanwhile
        if out.size == 0:
            return out
        with translate_errors("downloading from the OpenCL device"):
            if self._small_ids.get(id(buf)) is buf and self._read is not None:
                event = self._read(self.queue, buf, out, src_offset=offset, is_blocking=True)
            elif self.is_cpu and self._small_ids.get(id(buf)) is not buf:
                # mapping a USE_HOST_PTR buffer makes the host memory current, no copy
                flags = cl.map_flags.READ
                mapped, event = cl.enqueue_map_buffer(
                    self.queue, buf, flags, offset, out.shape, out.dtype, is_blocking=True
                )
                if mapped.ctypes.data != out.ctypes.data:  # the driver used its own memory
                    out[...] = mapped
                mapped.base.release(self.queue)
            else:
                event = cl.enqueue_copy(self.queue, out, buf, src_offset=offset, is_blocking=True)
        self._add(info, "download", self.event_seconds(event))
        return out

    def collect(
        self,
        out: np.ndarray,
        buf: cl.Buffer,
        events: Sequence[Any],
        info: RunInfo | None = None,
        offset: int = 0,
    ) -> np.ndarray:
        """:meth:`fetch` the result of the kernels ``events`` (the one blocking call of
        a run: it waits for them), then add their seconds (:meth:`add_compute`)."""
        self.fetch(out, buf, info, offset)
        self.add_compute(info, events)
        return out


def _same(kept: np.ndarray | None, given: np.ndarray | None) -> bool:
    """:func:`convcli.plan.same_values`, for a bias that may be None."""
    if kept is None or given is None:
        return kept is given
    return same_values(kept, given)


def _kept(a: np.ndarray | None) -> np.ndarray | None:
    """:func:`convcli.plan.kept_record`, for a bias that may be None."""
    return None if a is None else kept_record(a)

    # ---- running --------------------------------------------------------------
