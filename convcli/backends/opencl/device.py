"""OpenCL devices: discovery, ranking, limits, listing and the self-test.

pyopencl is imported only inside these functions (:func:`import_cl`), so ``import
convcli`` and the NumPy backend work without OpenCL.

Device choice (:meth:`~convcli.backends.opencl.backend.OpenCLBackend.create`,
:func:`list_devices`), first that applies:

1. the ``device`` argument: ``"P:D"`` (platform and device indices), ``"D"`` (device D of
   platform 0) or a case-insensitive substring of the device, platform or type name
   (``"pthread"``, ``"nvidia"``, ``"gpu"``);
2. the environment variable ``CONVCLI_DEVICE``, same syntax;
3. ``PYOPENCL_CTX`` as pyopencl reads it (``"P"`` or ``"P:D"``, indices or substrings);
4. the best device by :func:`device_rank`: discrete GPUs, then integrated GPUs, then
   accelerators, then CPUs, and simulators or software rasterisers (Oclgrind, Mesa's
   llvmpipe) last, so they run only when named or when nothing else exists; ties in
   platform order.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from convcli.errors import BackendError, BackendUnavailable, ConvValueError
from convcli.runinfo import RunInfo

DEVICE_ENV = "CONVCLI_DEVICE"
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
    before PoCL starts, and ``import_cl`` runs on every OpenCL call."""
    pin_pocl_threads()


def import_cl():
    """pyopencl, imported on first use; BackendUnavailable when it cannot be imported."""
    _pin_once()
    try:
        import pyopencl as cl
    except ImportError as exc:  # also OSError-like failures surface as ImportError
        raise BackendUnavailable(f"pyopencl is not importable ({exc})") from exc
    _cache_or_none(cl)
    return cl


@functools.cache
def _cache_or_none(cl: Any) -> None:
    """Turn pyopencl's disk caches off where their folder cannot be made (a read-only
    or missing HOME): its first kernel call otherwise fails with a FileNotFoundError
    for ``~/.cache`` (pytools' invoker cache), a whole run lost to a cache."""
    if getattr(cl, "_PYOPENCL_NO_CACHE", True):
        return
    try:
        import platformdirs

        for app in ("pytools", "pyopencl"):
            os.makedirs(platformdirs.user_cache_dir(app, app), exist_ok=True)
    except ImportError:
        return
    except OSError:
        cl._PYOPENCL_NO_CACHE = True


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
    cl = import_cl()
    t = int(device.type)
    for name in ("GPU", "ACCELERATOR", "CPU", "CUSTOM"):
        if t & int(getattr(cl.device_type, name, 0)):
            return name
    return "OTHER"


# PoCL's "basic" CPU device runs each command in the thread that waits for it: no worker
# thread to wake and none to wake the caller back. A warm small layer's call (a launch
# and its wait) took 2-7 us of driver time there against 30-50 us (median; 10-15 min) on
# PoCL's threaded "pthread" device, and on 2 cores every mobilenet_v3_small and
# shufflenet layer up to ~5M multiply-adds ran as fast or faster on it. Added beside
# the threaded device (POCL_DEVICES) when PoCL starts, where the user has not chosen
# PoCL's devices and no PoCL but pyopencl's own (a CPU-only build) is registered (a
# system PoCL may have GPU drivers that a device list would hide); the environment is
# restored once PoCL has read it. Hidden from listing, ranking and device indices: the
# backend of the threaded device runs small layers on it (OpenCLBackend.runtime_for).
POCL_DEVICES_ENV = "POCL_DEVICES"
INLINE_DEVICES = "pthread basic"
# PoCL 3's device names; PoCL 4 renamed its drivers ("cpu", "cpu-minimal"), so the
# device is only asked of the PoCL releases whose names this knows (INLINE_POCL_MAJORS)
_INLINE_PREFIX = "basic-"
_THREADED_PREFIX = "pthread-"
INLINE_POCL_MAJORS = ("3",)
_inline: dict[str, Any] = {"asked": False, "set": False, "devices": {}}


def _only_bundled_pocl(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether no OpenCL vendor file but pyopencl's own names a PoCL library: the ICD
    loader's ``OCL_ICD_VENDORS`` (a folder, an ``.icd`` file or a library) or the
    system's ``/etc/OpenCL/vendors``."""
    if environ.get("OCL_ICD_FILENAMES", "").strip():
        return False  # the loader is told of other libraries, maybe another PoCL
    where = environ.get("OCL_ICD_VENDORS", "").strip() or "/etc/OpenCL/vendors"
    if "pocl" in os.path.basename(where).lower():
        return False
    files = []
    if os.path.isdir(where):
        try:
            files = [os.path.join(where, n) for n in os.listdir(where) if n.endswith(".icd")]
        except OSError:
            return False
    elif where.endswith(".icd"):
        files = [where]
    for name in files:
        try:
            with open(name, encoding="utf-8", errors="replace") as f:
                if "pocl" in (name + f.read(4096)).lower():
                    return False
        except OSError:
            continue
    return True


def _bundled_pocl_major() -> str:
    """The major version of pyopencl's bundled PoCL (``pocl-binary-distribution``), or
    "" where it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("pocl-binary-distribution").split(".")[0]
    except metadata.PackageNotFoundError:
        return ""


def _ask_inline_device() -> bool:
    """Set ``POCL_DEVICES`` for the first platform query (see INLINE_DEVICES); whether
    it was set (and must be removed once PoCL has read it: :func:`_all_devices`)."""
    if _inline["asked"]:
        return False
    _inline["asked"] = True
    if POCL_DEVICES_ENV in os.environ or not _only_bundled_pocl():
        return False
    if _bundled_pocl_major() not in INLINE_POCL_MAJORS:
        return False
    os.environ[POCL_DEVICES_ENV] = INLINE_DEVICES
    _inline["set"] = True
    return True


def _hidden(plat: Any, dev: Any) -> bool:
    """Whether ``dev`` is the basic device convcli added (see INLINE_DEVICES), kept as
    the companion of its platform's threaded CPU device."""
    if not _inline["set"] or not dev.name.startswith(_INLINE_PREFIX):
        return False
    if "portable computing language" not in plat.name.lower():
        return False
    _inline["devices"].setdefault(plat.int_ptr, dev)
    return True


def inline_device(platform: Any, device: Any) -> Any | None:
    """The hidden basic device beside ``device`` (PoCL's threaded CPU device), or None."""
    if not device.name.startswith(_THREADED_PREFIX):
        return None
    return _inline["devices"].get(platform.int_ptr)


def _all_devices() -> list[_Found]:
    """Every device of every platform; [] when there is no platform (no ICD). The basic
    device convcli adds beside PoCL's threaded one (INLINE_DEVICES) is left out."""
    cl = import_cl()
    asked = _ask_inline_device()
    try:
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
            shown = [dev for dev in devices if not _hidden(plat, dev)]
            found += [_Found(pi, di, plat, dev) for di, dev in enumerate(shown)]
        return found
    finally:
        if asked:  # PoCL has read it: the caller's environment (and children's) as it was
            os.environ.pop(POCL_DEVICES_ENV, None)


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


def no_device_reason() -> str:
    """Why no device was found, with the one cause we can see: PoCL lists no device
    when it cannot make its kernel cache folder (a read-only or missing HOME)."""
    folder = os.environ.get("POCL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "pocl",
        "kcache",
    )
    blocker = next((p for p in Path(folder).absolute().parents if p.exists()), None)
    writable = blocker is not None and blocker.is_dir() and os.access(blocker, os.W_OK)
    if Path(folder).is_dir() or writable:
        return "no OpenCL platform or device found"
    return (
        "no OpenCL platform or device found (PoCL lists none when it cannot make its "
        f"cache folder {folder}: set POCL_CACHE_DIR to a writable folder)"
    )


def auto_device_problem() -> str | None:
    """Why ``backend="auto"`` uses no listed device (``CONVCLI_DEVICE`` or
    ``PYOPENCL_CTX`` naming none of them), or None when it picks one or none is listed."""
    try:
        found = _all_devices()
        if found:
            _select(found, None)
    except BackendError as exc:
        return str(exc)
    return None


def _select(found: Sequence[_Found], device: str | None) -> _Found:
    if not found:
        raise BackendUnavailable(no_device_reason())
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


def find_device(device: str) -> str:
    """The label (``P:D name``) of the OpenCL device ``device`` names (a ``P:D`` index or
    a name substring, as ``conv2d``'s ``device`` argument), without starting it.

    Raises
    ------
    BackendUnavailable
        No device matches (the message lists those there are), or no OpenCL at all.
    """
    return _select(_all_devices(), device).label


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
    from convcli.backends.opencl import fft

    return bool(fft._tiles(limits.local_mem_bytes))


def check_device(index: str) -> DeviceCheck:
    """Run a few small convolutions on device ``index`` (``"P:D"``) and compare them
    with the NumPy backend: one per kernel family (generic, depthwise, separable, dense,
    Winograd, pointwise, FFT where local memory allows, float64 where the device has
    it). Never raises for a device failure: it is reported in ``failures``."""
    from convcli.backends.numpy import NumpyBackend
    from convcli.backends.opencl.backend import OpenCLBackend
    from convcli.spec import make_spec

    t_start = time.perf_counter()
    try:
        be = OpenCLBackend.create(index)
    except BackendError as exc:
        return DeviceCheck(index, "?", 0, 1, 0.0, time.perf_counter() - t_start, (str(exc),))
    # the device named, not the inline one beside it that small layers use, nor the
    # host's matrix product that a CPU device's 1x1 layers use
    be.settings = replace(be.settings, inline_max_macs=0, host_pointwise_max_batch=0)
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
