"""The OpenCL backend: pyopencl, kernels from ``kernels_cl/*.cl``, any GPU or CPU device.

pyopencl is imported only inside this module's functions, and this module only when
OpenCL is requested, so ``import convcli`` and the NumPy backend work without OpenCL.

Device choice (:meth:`OpenCLBackend.create`, :func:`list_devices`), first that applies:

1. the ``device`` argument: ``"P:D"`` (platform and device indices), ``"D"`` (device D of
   platform 0) or a case-insensitive substring of the device, platform or type name
   (``"pthread"``, ``"nvidia"``, ``"gpu"``);
2. the environment variable ``CONVCLI_DEVICE``, same syntax;
3. ``PYOPENCL_CTX`` as pyopencl reads it (``"P"`` or ``"P:D"``, indices or substrings);
4. the best device by :func:`device_rank`: discrete GPUs, then integrated GPUs, then
   accelerators, then CPUs, and simulators or software rasterisers (Oclgrind, Mesa's
   llvmpipe) last, so they run only when named or when nothing else exists; ties in
   platform order.

Launch sizes come from the device and the kernel (:func:`fit_local_size`): a wanted
work-group size is shrunk to ``CL_KERNEL_WORK_GROUP_SIZE`` and
``CL_DEVICE_MAX_WORK_ITEM_SIZES``, and a launch the driver still refuses
(``INVALID_WORK_GROUP_SIZE``, ``INVALID_WORK_ITEM_SIZE``, ``OUT_OF_RESOURCES``) is retried
with half the work-group, down to one item (:meth:`OpenCLBackend.enqueue`).

Programs are built from ``data_dir("kernels_cl") / f"{name}.cl"`` with ``-D NAME=VALUE``
options (never fast-math), cached per context and ``(name, sorted defines)`` in-process;
PoCL additionally keeps compiled binaries on disk, so a second process builds quickly.
Build seconds (and the first-launch JIT PoCL does per kernel) go to
``RunInfo.timings["build"]``, kernel seconds from profiling events to ``["compute"]``,
host-device transfers to ``["upload"]`` / ``["download"]``. On CPU devices the arrays
are wrapped with ``USE_HOST_PTR`` and the result is mapped, not copied.

Every pyopencl error (and ``MemoryError``) during a build or a run becomes a one-line
:class:`~convcli.errors.BackendError` naming the OpenCL error, so that ``backend="auto"``
falls back to NumPy and ``backend="opencl"`` reports it.

Fault injection (tests of the fallback paths): the environment variable
``CONVCLI_FAULT`` holds a comma-separated list of steps that then fail as the OpenCL
driver would fail them, checked at every call:

``init``
    device/context creation fails (``clCreateContext``, ``DEVICE_NOT_AVAILABLE``);
    :func:`convcli.backends.opencl_backend` remembers that failure for the process.
``build``
    every program request fails (``clBuildProgram``, ``BUILD_PROGRAM_FAILURE``), cached
    programs included.
``alloc``
    every buffer creation fails (``clCreateBuffer``, ``MEM_OBJECT_ALLOCATION_FAILURE``).
``run``
    every kernel launch fails (``clEnqueueNDRangeKernel``, ``OUT_OF_RESOURCES``).
``lost``
    every kernel launch fails as on a lost device (``DEVICE_NOT_AVAILABLE``).

``alloc``, ``run`` and ``lost`` are also checked when :meth:`OpenCLBackend.run` starts,
so they hit every algorithm, whichever helpers its path uses.

The specialised kernels of :mod:`convcli.backends.opencl_fast` use this object's
helpers (:meth:`OpenCLBackend.kernel`, :meth:`~OpenCLBackend.input_buffer`,
:meth:`~OpenCLBackend.output`, :meth:`~OpenCLBackend.launch`, ...), so timings and fault
injection cover them too.
"""

from __future__ import annotations

import contextlib
import functools
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convcli.backends import build_index
from convcli.errors import BackendError, BackendUnavailable, ConvValueError
from convcli.resources import data_dir
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec

if TYPE_CHECKING:  # pragma: no cover - typing only; pyopencl is imported lazily
    import pyopencl as cl

PADDING_MODE_IDS = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3, "symmetric": 4}
FAULT_ENV = "CONVCLI_FAULT"
DEVICE_ENV = "CONVCLI_DEVICE"
# One local size for every launch of the generic kernel: PoCL JIT-compiles each new
# local size at first launch, and on CPUs the size barely matters (notes, item 6).
LOCAL_SIZE = (8, 4, 1)
_PAGE = 4096
# outputs this large are pooled (see OpenCLBackend.output), this many per backend
POOL_MIN_BYTES = 1 << 20
POOL_SIZE = 3
# outputs up to this size are copied out of a kept device buffer (OpenCLBackend.output)
SMALL_OUTPUT_BYTES = 64 * 1024
# a program build slower than this was a compile, not a load from the driver's cache
REAL_BUILD_S = 0.25
_WEIGHT_CACHE_SIZE = 32
# Devices that run OpenCL in software for testing or display, not for speed: matched
# (lower case) against the device and platform names.
_SOFTWARE = ("oclgrind", "llvmpipe", "softpipe", "swiftshader", "lavapipe")


AFFINITY_ENV = "POCL_AFFINITY"


def pin_pocl_threads(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Ask PoCL to pin its CPU worker thread i to CPU i (``POCL_AFFINITY=1``).

    PoCL's workers sleep between kernels and are woken for each one. Unpinned, Linux
    often wakes the second worker on the CPU where the first already runs, and a short
    kernel then runs on one core from start to end: a 0.15 ms test kernel took exactly
    2x its time in 5-27 of 40 rounds unpinned and in none pinned, and W7 (a 1 ms layer)
    ran 1.8-2.2 ms unpinned against 1.2-1.3 ms pinned. Set only when the user has not
    chosen and this process may run on every CPU: PoCL pins to CPUs 0..n-1 whatever the
    process's affinity, so under ``taskset`` or a cpuset it would escape the limit.
    Must run before PoCL starts (the first platform query). Returns whether it set it.
    """
    if AFFINITY_ENV in environ:
        return False
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux: PoCL's pinning is Linux-only anyway
        return False
    if allowed != set(range(os.cpu_count() or 0)):
        return False
    environ[AFFINITY_ENV] = "1"
    return True


@functools.cache
def _pin_once() -> None:
    """:func:`pin_pocl_threads` for this process, once: only its first call can act
    before PoCL starts, and ``_import_cl`` runs on every OpenCL call."""
    pin_pocl_threads()


def _import_cl():
    """pyopencl, imported on first use; BackendUnavailable when it cannot be imported."""
    _pin_once()
    try:
        import pyopencl as cl
    except ImportError as exc:  # also OSError-like failures surface as ImportError
        raise BackendUnavailable(f"pyopencl is not importable ({exc})") from exc
    return cl


# --------------------------------------------------------------------------- errors


def _error_line(exc: BaseException) -> str:
    """A one-line description naming the OpenCL error (``routine failed: NAME``)."""
    code = getattr(exc, "code", None)
    routine = getattr(exc, "routine", None)
    name = None
    if isinstance(code, int):
        try:
            cl = _import_cl()
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
    cl = _import_cl()
    return code in {int(getattr(cl.status_code, name, -9999)) for name in _REFUSED}


def inject_fault(step: str) -> None:
    """Raise the pyopencl error of ``step`` when ``CONVCLI_FAULT`` names it (see module doc).

    ``run`` and ``lost`` are both checked by the ``"run"`` step (kernel launches).
    """
    if not os.environ.get(FAULT_ENV):  # every launch and buffer asks: the usual answer first
        return
    steps = _fault_steps()
    names = [step] + (["lost"] if step == "run" else [])
    for name in names:
        if name in steps:
            cl = _import_cl()
            routine, status, kind = _FAULTS[name]
            code = getattr(cl.status_code, status)
            record = cl._cl._ErrorRecord(routine, code, f"{routine} failed: {status} {_INJECTED}")
            raise getattr(cl, kind)(record)


class translate_errors:
    """Turn pyopencl errors and MemoryError inside the block into one-line BackendError.

    A class rather than a generator-based context manager: a warm call enters several,
    and each generator-based one cost about 2 us.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        if isinstance(exc, MemoryError | _import_cl().Error):
            raise BackendError(f"{self.what}: {_error_line(exc)}") from exc
        return False


# ------------------------------------------------------------------------ devices


@dataclass(frozen=True)
class DeviceInfo:
    """One OpenCL device as ``convcli devices`` lists it."""

    index: str  # "P:D"
    platform: str
    name: str
    type: str  # "GPU", "CPU", "ACCELERATOR", ...
    compute_units: int
    global_mem_bytes: int
    max_alloc_bytes: int
    fp64: bool
    fp16: bool
    default: bool
    local_mem_bytes: int = 0
    max_work_group_size: int = 1
    max_work_item_sizes: tuple[int, ...] = (1, 1, 1)
    # "discrete", "integrated" (GPUs sharing host memory), "software" (a simulator or
    # software rasteriser) or "" (CPUs, accelerators)
    kind: str = ""


@dataclass(frozen=True)
class DeviceLimits:
    """What a device can run: the limits launches and tests are sized by."""

    type: str  # "GPU", "CPU", ...
    kind: str  # as DeviceInfo.kind
    fp64: bool
    local_mem_bytes: int
    max_work_group_size: int
    max_work_item_sizes: tuple[int, ...]

    @property
    def is_cpu(self) -> bool:
        return self.type == "CPU"

    @classmethod
    def of(cls, device: Any, platform: Any) -> DeviceLimits:
        sizes = tuple(int(v) for v in device.max_work_item_sizes)
        return cls(
            type=_type_name(device),
            kind=_kind(device, platform),
            fp64=_has_fp64(device),
            local_mem_bytes=int(device.local_mem_size),
            max_work_group_size=int(device.max_work_group_size),
            max_work_item_sizes=(*sizes, 1, 1, 1)[:3],
        )


@dataclass(frozen=True)
class _Found:
    pi: int
    di: int
    platform: Any
    device: Any

    @property
    def type(self) -> str:
        return _type_name(self.device)

    @property
    def label(self) -> str:
        return f"{self.pi}:{self.di} {self.device.name.strip()}"


def _type_name(device: Any) -> str:
    cl = _import_cl()
    t = int(device.type)
    for name in ("GPU", "ACCELERATOR", "CPU", "CUSTOM"):
        if t & int(getattr(cl.device_type, name, 0)):
            return name
    return "OTHER"


def _all_devices() -> list[_Found]:
    """Every device of every platform; [] when there is no platform (no ICD)."""
    cl = _import_cl()
    try:
        platforms = cl.get_platforms()
    except cl.Error:
        return []
    found = []
    for pi, plat in enumerate(platforms):
        try:
            devices = plat.get_devices()
        except cl.Error:  # a platform without devices raises DEVICE_NOT_FOUND
            continue
        found += [_Found(pi, di, plat, dev) for di, dev in enumerate(devices)]
    return found


def _kind(device: Any, platform: Any) -> str:
    """The device's kind: software, discrete or integrated GPU, or "" (DeviceInfo.kind)."""
    names = f"{device.name} {platform.name}".lower()
    if any(word in names for word in _SOFTWARE):
        return "software"
    if _type_name(device) != "GPU":
        return ""
    try:
        unified = bool(device.host_unified_memory)
    except Exception:  # deprecated in OpenCL 2.0: a driver may refuse the query
        unified = False
    return "integrated" if unified else "discrete"


def device_rank(type_name: str, kind: str) -> int:
    """Preference of a device for ``backend="auto"`` (lower first): discrete GPUs,
    integrated GPUs, accelerators, CPUs, other types, then simulators and software
    rasterisers, which report GPUs but run slower than any CPU device."""
    if kind == "software":
        return 9
    if type_name == "GPU":
        return 0 if kind == "discrete" else 1
    return {"ACCELERATOR": 2, "CPU": 3}.get(type_name, 4)


def _preferred(found: Sequence[_Found]) -> list[_Found]:
    def key(f: _Found) -> tuple[int, int, int]:
        return (device_rank(f.type, _kind(f.device, f.platform)), f.pi, f.di)

    return sorted(found, key=key)


def _matches(f: _Found, needle: str) -> bool:
    hay = f"{f.device.name} {f.platform.name} {f.platform.vendor} {f.type}".lower()
    return needle.lower() in hay


def _pick(found: Sequence[_Found], spec: str, source: str) -> _Found:
    """Resolve a ``P:D`` / ``D`` / substring device spec."""
    text = spec.strip()
    if re.fullmatch(r"\d+:\d+", text):
        pi, di = (int(v) for v in text.split(":"))
        hits = [f for f in found if f.pi == pi and f.di == di]
    elif re.fullmatch(r"\d+", text):
        hits = [f for f in found if f.pi == 0 and f.di == int(text)]
    else:
        hits = _preferred([f for f in found if _matches(f, text)]) if text else []
    if not hits:
        have = ", ".join(f.label for f in found) or "none"
        raise BackendUnavailable(
            f"no OpenCL device matches {spec!r} (from {source}); devices: {have}"
        )
    return hits[0]


def _pick_pyopencl_ctx(found: Sequence[_Found], value: str) -> _Found:
    """pyopencl's ``PYOPENCL_CTX``: ``P`` or ``P:D``, each an index or a name substring."""
    parts = value.split(":")
    plats = sorted({(f.pi, f.platform.name) for f in found})
    p = parts[0].strip()
    if p.isdigit():
        chosen = [pi for pi, _ in plats if pi == int(p)]
    else:
        chosen = [pi for pi, name in plats if p.lower() in name.lower()]
    if not chosen:
        raise BackendUnavailable(f"no OpenCL platform matches PYOPENCL_CTX={value!r}")
    in_plat = [f for f in found if f.pi == chosen[0]]
    if len(parts) < 2 or not parts[1].strip():
        return _preferred(in_plat)[0]
    d = parts[1].strip()
    hits = (
        [f for f in in_plat if f.di == int(d)]
        if d.isdigit()
        else [f for f in in_plat if d.lower() in f.device.name.lower()]
    )
    if not hits:
        raise BackendUnavailable(f"no OpenCL device matches PYOPENCL_CTX={value!r}")
    return hits[0]


def _select(found: Sequence[_Found], device: str | None) -> _Found:
    if not found:
        raise BackendUnavailable("no OpenCL platform or device found")
    if device is not None and str(device).strip():
        return _pick(found, str(device), "device argument")
    env = os.environ.get(DEVICE_ENV, "").strip()
    if env:
        return _pick(found, env, DEVICE_ENV)
    ctx_env = os.environ.get("PYOPENCL_CTX", "").strip()
    if ctx_env:
        return _pick_pyopencl_ctx(found, ctx_env)
    return _preferred(found)[0]


def _has_fp64(device: Any) -> bool:
    if "cl_khr_fp64" in device.extensions:
        return True
    try:
        return int(device.double_fp_config) != 0
    except Exception:  # older drivers raise INVALID_VALUE for the query
        return False


def list_devices() -> list[DeviceInfo]:
    """Every OpenCL device, with the one ``backend="auto"`` would pick marked ``default``.

    Returns [] when pyopencl is not importable or there is no platform; never raises
    for that.
    """
    try:
        found = _all_devices()
    except BackendError:
        return []
    try:
        chosen = _select(found, None) if found else None
    except BackendError:
        chosen = None
    out = []
    for f in found:
        d = f.device
        limits = DeviceLimits.of(d, f.platform)
        out.append(
            DeviceInfo(
                index=f"{f.pi}:{f.di}",
                platform=f.platform.name.strip(),
                name=d.name.strip(),
                type=f.type,
                compute_units=int(d.max_compute_units),
                global_mem_bytes=int(d.global_mem_size),
                max_alloc_bytes=int(d.max_mem_alloc_size),
                fp64=_has_fp64(d),
                fp16="cl_khr_fp16" in d.extensions,
                default=chosen is not None and (f.pi, f.di) == (chosen.pi, chosen.di),
                local_mem_bytes=limits.local_mem_bytes,
                max_work_group_size=limits.max_work_group_size,
                max_work_item_sizes=limits.max_work_item_sizes,
                kind=limits.kind,
            )
        )
    return out


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


def _real_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype in (np.float64, np.complex128) else np.dtype(np.float32)


def compute_dtype(dtype: np.dtype | str) -> np.dtype:
    """The dtype results come back in (float16 is computed and returned as float32)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def _ceil_div(a: int, b: int) -> int:
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
            local[d] = _ceil_div(local[d], 2)
    while math.prod(local) > max(1, group_limit):
        d = max(range(len(local)), key=lambda i: local[i])
        local[d] = _ceil_div(local[d], 2)
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
    source = _kernel_source(data_dir("kernels_cl") / f"{name}.cl")
    return build_index.program_key(fingerprint, source, _build_options(_defines_key(defines)))


# ------------------------------------------------------------------------ backend


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
    """:meth:`OpenCLBackend.current`'s context manager (a class: see translate_errors)."""

    __slots__ = ("backend", "info", "previous")

    def __init__(self, backend: OpenCLBackend, info: RunInfo | None) -> None:
        self.backend, self.info = backend, info

    def __enter__(self) -> None:
        self.backend._lock.acquire()
        self.previous, self.backend._info = self.backend._info, self.info

    def __exit__(self, *exc: object) -> None:
        self.backend._info = self.previous
        self.backend._lock.release()


class OpenCLBackend:
    """Runs convolutions on one OpenCL device (one context and one profiling queue).

    Use :meth:`create`; attributes ``device_name``, ``ctx``, ``queue``, ``device``,
    ``is_cpu``, ``has_fp64`` and ``max_alloc_bytes`` describe the device.
    """

    name = "opencl"

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
        self._weights: OrderedDict[tuple, Any] = OrderedDict()
        self._scratch: dict[str, Any] = {}
        # pooled outputs: [owner array, device buffer, references to owner while idle]
        self._pool: list[list[Any]] = []
        # small outputs' device buffers by size (see output)
        self._small: dict[int, Any] = {}
        self._lock = threading.RLock()
        self._info: RunInfo | None = None

    # ---- creation -------------------------------------------------------------
    @classmethod
    def create(cls, device: str | None = None) -> OpenCLBackend:
        """Open a context and a profiling queue on the selected device.

        Raises
        ------
        BackendUnavailable
            pyopencl not importable, no platform, no device matching ``device`` (or the
            environment's choice), or the context cannot be created. One line.
        """
        t0 = time.perf_counter()
        # a fresh process's start-up (pyopencl's import, the driver's first platform
        # query) is what the cost model weighs; a later context in the same process
        # opens in microseconds and teaches nothing
        fresh = "pyopencl" not in sys.modules
        cl = _import_cl()
        found = _all_devices()
        chosen = _select(found, device)
        try:
            inject_fault("init")
            ctx = cl.Context([chosen.device])
            queue = cl.CommandQueue(
                ctx, chosen.device, properties=cl.command_queue_properties.PROFILING_ENABLE
            )
        except (cl.Error, MemoryError) as exc:
            raise BackendUnavailable(
                f"cannot open OpenCL device {chosen.label}: {_error_line(exc)}"
            ) from exc
        backend = cls(cl, chosen.platform, chosen.device, ctx, queue)
        backend.request = device
        # what the next process's cost model needs before it starts OpenCL
        build_index.save_device(
            device,
            build_index.DeviceRecord(
                fingerprint=backend.fingerprint,
                label=backend.device_name,
                is_cpu=backend.is_cpu,
                local_mem=backend.limits.local_mem_bytes,
                startup_s=time.perf_counter() - t0 if fresh else None,
            ),
        )
        return backend

    def __repr__(self) -> str:
        return f"OpenCLBackend({self.device_name!r})"

    # ---- capability -----------------------------------------------------------
    def supports(self, spec: ConvSpec) -> str | None:
        """Reason why ``spec`` cannot run on this device, or None."""
        if spec.dtype in ("float64", "complex128") and not self.has_fp64:
            return f"{self.device_name} has no fp64 support, needed for {spec.dtype}"
        # the kernels index a plane and an output plane with 32-bit ints
        limit = 2**31 - 1
        if spec.h * spec.w >= limit or spec.h_out * spec.w_out >= limit:
            return "an image plane of 2**31 pixels or more is beyond 32-bit kernel indexing"
        # strides, dilations and padded sizes are 32-bit ints in the kernels too (a
        # stride of 3e9 wrapped negative and the kernel ran for minutes)
        padded = (spec.h + spec.pad[0] + spec.pad[1], spec.w + spec.pad[2] + spec.pad[3])
        extents = (spec.dilation[0] * (spec.kh - 1) + 1, spec.dilation[1] * (spec.kw - 1) + 1)
        if max(*padded, *extents, *spec.stride, *map(abs, spec.pad)) >= limit:
            return "a stride, dilation or padding of 2**31 or more is beyond 32-bit kernel indexing"
        return None

    def plan_algo(self, spec: ConvSpec, weight: np.ndarray) -> str:
        """The algorithm ``algo="auto"`` runs for ``spec`` (tiles reuse the whole's)."""
        fast = _fast_module()
        if fast is None:
            return "direct"
        from convcli.backends import opencl_gpu

        plan = fast.planned(spec, weight, "auto", cpu=self.is_cpu)[0]
        # after no fast plan too: a GPU device runs FFT tiles where the CPU plan has none
        plan = opencl_gpu.device_plan(plan, spec, "auto", self.is_cpu)
        return "direct" if plan is None else plan.algo

    def fixed_plan(self, spec: ConvSpec) -> str | None:
        """What :meth:`plan_algo` answered for ``spec`` if that answer cannot depend on
        the weights' values, else None (also when it has not been asked yet)."""
        fast = _fast_module()
        found = fast.remembered(spec, "auto", self.is_cpu) if fast is not None else None
        if found is None:
            return None
        from convcli.backends import opencl_gpu

        plan = opencl_gpu.device_plan(found[0], spec, "auto", self.is_cpu)
        return "direct" if plan is None else plan.algo

    # ---- programs and kernels -------------------------------------------------
    def current(self, info: RunInfo | None) -> _Current:
        """Account builds without an explicit ``info`` to ``info`` inside the block."""
        return _Current(self, info)

    def _add(self, info: RunInfo | None, key: str, seconds: float) -> None:
        info = info if info is not None else self._info
        if info is not None:
            info.timings[key] = info.timings.get(key, 0.0) + seconds

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
        RunInfo of the current :meth:`run`) under ``timings["build"]``. Raises
        BackendError when the build fails.
        """
        defines = dict(defines or {})
        # the defines as given: a call site passes them in one order, and this lookup
        # costs a tenth of the canonical key's sorting and formatting (a small layer's
        # call spent 17 us on it)
        given = (name, *defines.items())
        with translate_errors(f"building OpenCL program {name}"):
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
        source = _kernel_source(data_dir("kernels_cl") / f"{name}.cl")
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
                raise BackendError(f"OpenCL program {name} built without any kernel")
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
        """The kernel ``kernel_name`` (default: ``name``) of :meth:`program`, fetched once."""
        defines = dict(defines or {})
        prg = self.program(name, defines, info)
        key = (id(prg), kernel_name or name)
        with self._lock:
            knl = self._kernels.get(key)
            if knl is None:
                with translate_errors(f"creating OpenCL kernel {kernel_name or name}"):
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
        wanted = tuple(int(v) for v in (wanted_local or (1,) * len(global_size)))
        while True:
            local = self.local_size(kernel, wanted)
            pairs = zip(global_size, local, strict=True)
            gsize = tuple(_ceil_div(int(g), lv) * lv for g, lv in pairs)
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

    @staticmethod
    def event_seconds(event: Any) -> float:
        """Run time of a finished event from its profiling counters."""
        return (event.profile.end - event.profile.start) * 1e-9

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
        ``_WEIGHT_CACHE_SIZE`` buffers are kept, so tiles and repeated layers upload once.
        """
        with self._lock:
            buf = self._weights.get(key)
            if buf is not None:
                self._weights.move_to_end(key)
                return buf
        t0 = time.perf_counter()
        data = np.ascontiguousarray(make())
        mf = self._cl.mem_flags
        with translate_errors("uploading to the OpenCL device"):
            buf = self._buffer(mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=data)
        with self._lock:
            self._weights[key] = buf
            while len(self._weights) > _WEIGHT_CACHE_SIZE:
                self._weights.popitem(last=False)
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
        if out.size == 0:
            return out
        with translate_errors("downloading from the OpenCL device"):
            if self.is_cpu and self._small.get(buf.size) is not buf:
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

    # ---- running --------------------------------------------------------------
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
        """Convolve batched ``x``; returns ``(N, C_out, Ho, Wo)`` in the compute dtype.

        Tries :mod:`convcli.backends.opencl_fast` first; when no fast path applies, runs
        the generic direct kernel. Raises ConvValueError for a forced ``algo`` that
        cannot run this convolution, BackendError for device failures.
        """
        with self.current(info), translate_errors("OpenCL"):
            # the fault switches act on every run, whichever path allocates and launches
            inject_fault("alloc")
            inject_fault("run")
            out = None
            fast = _fast_module()
            if fast is not None:
                out = fast.run(self, x, weight, bias, spec, algo=algo, info=info)
            if out is None:
                if algo not in ("auto", "direct"):
                    raise ConvValueError(
                        f"algo='{algo}' is not available on the OpenCL backend for this "
                        f"convolution (kernel {spec.kh}x{spec.kw}, groups={spec.groups}, "
                        f"dtype {spec.dtype})"
                    )
                out = self.run_direct(x, weight, bias, spec, info=info)
            return out

    def run_direct(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None,
        spec: ConvSpec,
        *,
        info: RunInfo,
    ) -> np.ndarray:
        """The generic kernel ``conv2d_direct``: every stride, dilation, group, mode, dtype."""
        reason = self.supports(spec)
        if reason is not None:
            raise BackendError(reason)
        info.algo = "direct"
        dtype = np.dtype(spec.dtype)
        work = compute_dtype(dtype)
        shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
        if spec.n == 0:
            return np.empty(shape, dtype=work)
        xin = x
        with self.current(info), translate_errors("OpenCL direct convolution"):
            cfg = _direct_config(spec, dtype, self.is_cpu)
            knl = self.kernel("conv2d_direct", cfg.defines, info)
            wkey = ("conv2d_direct", cfg.cb, work.str, self.content_key(weight))
            wbuf = self.constant_buffer(
                wkey, lambda: _pack_weight(weight, spec, cfg.cb, work), info
            )
            bbuf = None
            if bias is not None:
                bkey = ("conv2d_direct bias", cfg.cb, work.str, self.content_key(bias))
                bbuf = self.constant_buffer(
                    bkey, lambda: _pack_bias(bias, spec, cfg.cb, work), info
                )
            if dtype == np.float16:
                # converted on the host: the kernel then needs no half loads, which PoCL
                # compiles to out-of-line calls (see the kernel's header)
                t0 = time.perf_counter()
                x = aligned_empty(x.shape, np.float32)
                x[...] = xin
                self._add(info, "upload", time.perf_counter() - t0)
            xbuf = self.input_buffer(np.ascontiguousarray(x), info)
            out, ybuf = self.output(shape, work)
            i32 = np.int32
            args = (
                xbuf,
                wbuf,
                bbuf,
                ybuf,
                i32(spec.h),
                i32(spec.w),
                i32(spec.h_out),
                i32(spec.w_out),
                i32(spec.cin_g),
                i32(spec.cout_g),
                i32(cfg.n_cob),
                i32(spec.groups),
                i32(spec.pad[0]),
                i32(spec.pad[2]),
            )
            gx = _ceil_div(spec.w_out, cfg.wb)
            gy = _ceil_div(spec.h_out, int(cfg.defines["RB"]))
            gz = spec.n * spec.groups * cfg.n_cob
            self.launch(knl, (gx, gy, gz), LOCAL_SIZE, args, info)
            out = self.fetch(out, ybuf, info)
        return out


@dataclass(frozen=True)
class _DirectConfig:
    cb: int
    wb: int
    n_cob: int
    defines: dict[str, int | str]


def _direct_config(spec: ConvSpec, dtype: np.dtype, is_cpu: bool = True) -> _DirectConfig:
    """Block sizes and build defines of ``conv2d_direct`` for ``spec``.

    Register budget (16 AVX2 registers of 8 floats): CB accumulators of WB lanes, twice
    for complex. float32 takes 8 channels x 8 columns; double and complex use 4 channels,
    double 4 columns.
    """
    real = _real_dtype(dtype)
    complex_ = dtype.kind == "c"
    wide = real == np.float64
    cb_max = 4 if (wide or complex_) else 8
    # 256-bit vectors at most: PoCL compiles for AVX2 here, and double8 arguments of the
    # vload/vstore builtins change the ABI without AVX-512 (the kernel crashed)
    wb_max = 4 if wide else 8
    # the fewest blocks of at most cb_max channels, then equal-sized blocks (no waste)
    n_cob = -(-spec.cout_g // cb_max)
    cb = -(-spec.cout_g // n_cob)
    n_cob = -(-spec.cout_g // cb)
    wb = wb_max if spec.w_out >= wb_max else (4 if spec.w_out >= 4 else 2)
    defines: dict[str, int | str] = {
        "REAL": "double" if wide else "float",
        "COMPLEX": int(complex_),
        "KH": spec.kh,
        "KW": spec.kw,
        "SH": spec.stride[0],
        "SW": spec.stride[1],
        "DH": spec.dilation[0],
        "DW": spec.dilation[1],
        "MODE": PADDING_MODE_IDS[spec.padding_mode],
        "CB": cb,
        "WB": wb,
        "HAS_BIAS": int(spec.has_bias),
        # rows per work-item: amortises the set-up on CPUs; GPUs want the parallelism
        "RB": 4 if is_cpu else 1,
    }
    return _DirectConfig(cb=cb, wb=wb, n_cob=n_cob, defines=defines)


def _pack_weight(weight: np.ndarray, spec: ConvSpec, cb: int, work: np.dtype) -> np.ndarray:
    """``(C_out, cin_g, kh, kw)`` -> ``(G, n_cob, cin_g, kh, kw, CB)``, zero past cout_g."""
    g, cout_g = spec.groups, spec.cout_g
    n_cob = -(-cout_g // cb)
    w = np.asarray(weight, dtype=work).reshape(g, cout_g, spec.cin_g, spec.kh, spec.kw)
    packed = np.zeros((g, n_cob * cb, spec.cin_g, spec.kh, spec.kw), dtype=work)
    packed[:, :cout_g] = w
    packed = packed.reshape(g, n_cob, cb, spec.cin_g, spec.kh, spec.kw)
    packed = np.ascontiguousarray(packed.transpose(0, 1, 3, 4, 5, 2))
    return packed.view(_real_dtype(work)) if work.kind == "c" else packed


def _pack_bias(bias: np.ndarray, spec: ConvSpec, cb: int, work: np.dtype) -> np.ndarray:
    """``(C_out,)`` -> ``(G, n_cob, CB)``, zero past cout_g."""
    g, cout_g = spec.groups, spec.cout_g
    n_cob = -(-cout_g // cb)
    packed = np.zeros((g, n_cob * cb), dtype=work)
    packed[:, :cout_g] = np.asarray(bias, dtype=work).reshape(g, cout_g)
    return packed.view(_real_dtype(work)) if work.kind == "c" else packed


def _fast_module() -> Any:
    """``convcli.backends.opencl_fast`` when it exists, else None."""
    try:
        from convcli.backends import opencl_fast
    except ModuleNotFoundError as exc:
        if exc.name != "convcli.backends.opencl_fast":
            raise
        return None
    return opencl_fast


_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_]+\.clh)"[ \t]*$', re.MULTILINE)


def _kernel_source(path: Path) -> str:
    """The text of a kernel file with its ``#include "x.clh"`` lines (files beside it)
    pasted in, so the program handed to the driver, and cached by PoCL under its text,
    is complete: no include path, no stale cache entry when a header changes."""

    def read(p: Path) -> str:
        try:
            return p.read_text(encoding="utf-8")
        except OSError as exc:
            raise BackendError(f"OpenCL kernel source {p} cannot be read ({exc})") from exc

    return _INCLUDE.sub(lambda m: read(path.parent / m.group(1)), read(path))


# ---------------------------------------------------------------------- self-test


@dataclass(frozen=True)
class DeviceCheck:
    """The self-test of one device (:func:`check_device`)."""

    index: str  # "P:D"
    name: str
    passed: int  # cases within tolerance of NumPy
    total: int
    build_seconds: float  # program builds and first-launch compiles of every case
    seconds: float  # the whole check, builds included
    failures: tuple[str, ...]  # "case: what went wrong"

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.passed == self.total


def _check_cases(limits: DeviceLimits) -> list[tuple[str, dict[str, Any]]]:
    """Small convolutions covering each kernel family the device would run."""
    t = np.exp(-(np.linspace(-2.0, 2.0, 5) ** 2))
    gauss = np.tile(np.outer(t, t)[None, None], (3, 1, 1, 1))
    disk = (np.hypot(*np.mgrid[-4:5, -4:5]) <= 4.2).astype(np.float64)
    cases = [
        # (name, {x: shape, w: shape or taps, options})
        ("generic complex64", dict(x=(1, 2, 9, 13), w=(3, 2, 3, 2), dtype="complex64", pad=1)),
        ("depthwise 3x3", dict(x=(1, 3, 12, 40), w=(3, 1, 3, 3), groups=3, pad=1)),
        ("separable 5x5", dict(x=(1, 3, 12, 40), w=gauss, groups=3, pad=2, mode="reflect")),
        ("dense 3x3", dict(x=(2, 4, 10, 21), w=(8, 4, 3, 3), pad=1, stride=2)),
        ("winograd 3x3", dict(x=(1, 32, 10, 18), w=(32, 32, 3, 3), pad=1)),
        ("pointwise 1x1", dict(x=(1, 128, 32, 33), w=(8, 128, 1, 1))),
    ]
    if _fft_fits(limits):
        fft_w = np.tile(disk[None, None], (2, 1, 1, 1))
        cases.append(("fft 9x9", dict(x=(1, 2, 30, 41), w=fft_w, groups=2, pad=4, algo="fft")))
    if limits.fp64:
        cases.append(("generic float64", dict(x=(1, 2, 9, 13), w=(3, 2, 2, 3), dtype="float64")))
    return cases


def _fft_fits(limits: DeviceLimits) -> bool:
    from convcli.backends import opencl_fft

    return bool(opencl_fft._tiles(limits.local_mem_bytes))


def check_device(index: str) -> DeviceCheck:
    """Run a few small convolutions on device ``index`` (``"P:D"``) and compare them
    with the NumPy backend: one per kernel family (generic, depthwise, separable, dense,
    Winograd, pointwise, FFT where local memory allows, float64 where the device has
    it). Never raises for a device failure: it is reported in ``failures``."""
    from convcli.backends.numpy_backend import NumpyBackend
    from convcli.spec import make_spec

    t_start = time.perf_counter()
    try:
        be = OpenCLBackend.create(index)
    except BackendError as exc:
        return DeviceCheck(index, "?", 0, 1, 0.0, time.perf_counter() - t_start, (str(exc),))
    numpy_be = NumpyBackend()
    rng = np.random.default_rng(0)
    passed, build, failures = 0, 0.0, []
    cases = _check_cases(be.limits)
    for name, c in cases:
        dtype = np.dtype(c.get("dtype", "float32"))
        x = rng.standard_normal(c["x"])
        w = c["w"] if isinstance(c["w"], np.ndarray) else rng.standard_normal(c["w"])
        if dtype.kind == "c":
            x = x + 1j * rng.standard_normal(x.shape)
            w = w + 1j * rng.standard_normal(w.shape)
        x, w = x.astype(dtype), w.astype(dtype)
        b = rng.standard_normal(w.shape[0]).astype(dtype)
        spec = make_spec(
            x,
            w,
            b,
            stride=c.get("stride", 1),
            padding=c.get("pad", 0),
            groups=c.get("groups", 1),
            padding_mode=c.get("mode", "zeros"),
        )
        info = RunInfo()
        try:
            y = be.run(x, w, b, spec, algo=c.get("algo", "auto"), info=info)
        except (BackendError, ConvValueError) as exc:
            failures.append(f"{name}: {exc}")
            continue
        finally:
            build += info.timings.get("build", 0.0)
        ref = numpy_be.run(x, w, b, spec, algo="direct", info=RunInfo())
        scale = float(np.max(np.abs(ref))) or 1.0
        err = float(np.max(np.abs(y.astype(np.complex128) - ref))) / scale
        tol = 1e-10 if dtype in (np.float64, np.complex128) else 1e-5
        if err <= tol:
            passed += 1
        else:
            failures.append(f"{name}: error {err:.2g} of the largest value (over {tol:g})")
    return DeviceCheck(
        index=index,
        name=be.device_name,
        passed=passed,
        total=len(cases),
        build_seconds=build,
        seconds=time.perf_counter() - t_start,
        failures=tuple(failures),
    )


def check_devices() -> list[DeviceCheck]:
    """:func:`check_device` on every device :func:`list_devices` lists."""
    return [check_device(d.index) for d in list_devices()]
