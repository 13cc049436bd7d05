"""``backend='auto'``: NumPy when it finishes before OpenCL would have started.

OpenCL's kernels run several times faster than NumPy's, but before the first one runs a
process pays for pyopencl's import and a context (:data:`STARTUP_S`), and every program
the run needs is fetched from the driver's binary cache (:data:`CACHED_BUILD_S`) or, when
it is not there, compiled (:data:`BUILD_S`: about 1.5 s a kernel on PoCL, 10 s and more on
Mesa's rusticl). A 512x512 image is blurred by NumPy in about 15 ms, so a small job runs
on NumPy without importing pyopencl at all, and a large one still goes to OpenCL.

The choice compares NumPy's estimated seconds (:meth:`convcli.backends.numpy.
NumpyBackend.estimate_seconds`) with what OpenCL would add: the start-up when this process has not
started it, and each program the run needs (:func:`convcli.backends.opencl.plan.programs`)
that the backend does not hold, priced by whether the build index says the driver has
cached it (:mod:`convcli.backends.build_index`); a program the index has no marker for
costs a compile times the chance that such a program was compiled before on this device
(after an upgrade the driver's cache is full of binaries the index never saw, and the
model learns that from the first few fast builds). OpenCL's own run time is taken as
NumPy's divided by :data:`OPENCL_SPEEDUP`.

A build is paid once and then cached, so a job that NumPy runs only because of an
uncached build adds the time OpenCL would have saved it to a running account; once the
account reaches the build's cost the next such job builds (the ski-rental rule: never more
than twice the best choice in hindsight), so repeated mid-sized jobs do not stay on NumPy.

Not weighed (OpenCL is tried as before): a named ``device`` (the caller asked for that
device) and runs with ``CONVCLI_FAULT`` set (fault injection exercises OpenCL).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from convcli.backends import build_index
from convcli.spec import ConvSpec

# PoCL on this machine's 2 cores: pyopencl's import, our OpenCL modules, the device
# query and a context took 0.2-0.35 s in a fresh process (measured and kept per device in
# the build index: this value is used until a first start has been measured)
STARTUP_S = 0.3
# a program PoCL had not cached: 0.9-1.8 s for dw_direct variants (up to 10 s for a 49-tap
# one); the index keeps the mean of the builds seen on each device
BUILD_S = 1.5
# a program in PoCL's disk cache: loaded, plus the first launch's compile, 40-50 ms
CACHED_BUILD_S = 0.05
# OpenCL (PoCL) against NumPy's estimate on the same problem, warm: 2.5-25x on RGB
# images of 256^2-4096^2 with Gaussian, box and 3x3 kernels (the low end for large
# separable kernels)
OPENCL_SPEEDUP = 4.0
# NumPy's estimates are throughputs fitted to choose among its own algorithms (idle
# machine, one BLAS thread: only their ratios mattered); whole runs took 2.2-4x them
# here (RGB 512^2-4096^2 Gaussian blurs, more on a busy machine)
NUMPY_SCALE = 2.5
FAULT_ENV = "CONVCLI_FAULT"
# calls whose programs the started backend holds: OpenCL without pricing again (a warm
# call of a small layer spent 100 us on the pricing)
_HELD: set[tuple] = set()
# NumPy-first decisions made before OpenCL started, by (spec, algo, the build index's
# state): the NumPy settings they were made with. Such a decision reads only the spec,
# NumPy's settings and the index's start-up time (found through the environment; a
# write to the index changes its state), unless NumPy's estimate read the weights'
# values (then it is not kept). Pricing it again took about 20 us a call.
_DECIDED: dict[tuple, object] = {}


def _numpy_seconds(spec: ConvSpec, weight: np.ndarray, algo: str) -> tuple[float | None, bool]:
    """(NumPy's estimated seconds, or None when ``algo`` cannot run there; whether the
    estimate read the weights' values: only where a separable run could win)."""
    from convcli.backends import get_backend
    from convcli.backends.numpy import cost

    numpy = get_backend("numpy")
    if spec.n == 0:
        return 0.0, False
    by_values = False
    if algo == "auto":
        algo, by_values = cost.cheapest(spec, numpy.settings, cost.worker_count(numpy.settings))
        if by_values:
            algo, _ = numpy.choose_algo(spec, weight)
    elif numpy.algo_reason(spec, algo) is not None:
        return None, False
    return numpy.estimate_seconds(spec, algo) * NUMPY_SCALE, by_values


def startup_seconds(record: build_index.DeviceRecord | None) -> float:
    """Seconds to start OpenCL in this process: as measured on the device's first start
    (the build index keeps it), else :data:`STARTUP_S`."""
    return STARTUP_S if record is None or record.startup_s is None else record.startup_s


def _device(
    backend: Any | None, record: build_index.DeviceRecord | None
) -> tuple[bool, int | None, str | None]:
    """(is a CPU, local memory, fingerprint) of the started ``backend``, else of the
    device's record; else the most common device, nothing known of it."""
    if backend is not None:
        return backend.is_cpu, backend.limits.local_mem_bytes, backend.fingerprint
    if record is not None:
        return record.is_cpu, record.local_mem, record.fingerprint
    return True, None, None


def program_seconds(
    needed: list[tuple[str, dict[str, int | str]]],
    *,
    backend: Any | None,
    record: build_index.DeviceRecord | None,
) -> tuple[float, float, list[str]]:
    """(seconds of cached programs, seconds of uncached builds, the uncached keys) of the
    programs ``needed`` (kernel file, build defines) that ``backend`` (the started
    backend, or None) does not hold."""
    from convcli.backends.opencl import runtime

    cpu, local_mem, fingerprint = _device(backend, record)
    if record is None or record.fingerprint != fingerprint:
        record = build_index.DeviceRecord(fingerprint or "", "", cpu, local_mem or 0, STARTUP_S)
    # a program without a marker: compiled with the chance seen on this device, else
    # loaded from the driver's cache
    chance = 1.0 if build_index.driver_cache_off() else record.compile_chance()
    build_s = BUILD_S if record.build_s is None else record.build_s
    unmarked = chance * build_s + (1 - chance) * CACHED_BUILD_S
    cached = uncached = 0.0
    keys = []
    for name, defines in needed:
        if backend is not None and backend.has_program(name, defines):
            continue
        key = None
        if fingerprint is not None:
            key = runtime.program_key(fingerprint, name, defines)
        if key is not None and build_index.is_built(key):
            cached += CACHED_BUILD_S
        else:
            uncached += unmarked
            keys.append(key or name)
    return cached, uncached, keys


def _build_seconds(
    spec: ConvSpec,
    weight: np.ndarray,
    algo: str,
    *,
    backend: Any | None,
    record: build_index.DeviceRecord | None,
) -> tuple[float, float, list[str]]:
    """:func:`program_seconds` of the programs an OpenCL run of ``spec`` needs."""
    from convcli.backends.opencl import plan as opencl_plan
    from convcli.backends.opencl.settings import DEFAULT

    cpu, local_mem, _ = _device(backend, record)
    settings = DEFAULT if backend is None else backend.settings
    needed = opencl_plan.programs(
        spec, weight, algo, cpu=cpu, local_mem=local_mem, settings=settings
    )
    if needed is None:
        return 0.0, 0.0, []
    return program_seconds(needed, backend=backend, record=record)


def _runs_on_the_host(
    spec: ConvSpec, weight: np.ndarray, algo: str, record: build_index.DeviceRecord
) -> bool:
    """Whether the OpenCL backend, once started on the recorded device with its default
    settings, would run ``spec`` as NumPy on the host (a CPU device's 1x1 layers of a
    few images, squeeze-and-excitation products, the widest FFTs): OpenCL's speed-up
    is then not had, and its start is paid for nothing."""
    from convcli.backends.opencl import plan as opencl_plan
    from convcli.backends.opencl.settings import DEFAULT
    from convcli.errors import ConvValueError

    try:
        plan, _ = opencl_plan.planned(spec, weight, algo, cpu=record.is_cpu, settings=DEFAULT)
    except ConvValueError:
        return False
    return plan is not None and plan.kernel in ("host_gemm", "host_fft")


def opencl_once(
    needed: list[tuple[str, dict[str, int | str]]],
    device: str | None,
    started: Any | None,
    most: float = math.inf,
) -> float:
    """What OpenCL costs once before a job that needs the programs ``needed``: starting
    it (unless ``started``, this process's backend, is given) and the programs it does
    not hold, as :func:`numpy_first` prices conv2d's. A start-up of ``most`` seconds or
    more is returned without looking at the programs (no OpenCL module is imported for
    a job NumPy finishes first)."""
    record = build_index.load_device(device)
    startup = 0.0 if started is not None else startup_seconds(record)
    if startup >= most:
        return startup
    cached, uncached, _ = program_seconds(needed, backend=started, record=record)
    return startup + cached + uncached


def numpy_first(spec: ConvSpec, weight: np.ndarray, device: str | None, algo: str) -> bool:
    """Whether ``backend='auto'`` should run ``spec`` on NumPy without trying OpenCL."""
    from convcli import backends

    if device is not None or os.environ.get(FAULT_ENV):
        return False
    started = backends.started_opencl(device)
    if started is False:
        return False  # it failed to start: the usual fallback says so
    held = (spec, algo, device, id(weight), id(started))
    if started is not None and held in _HELD:
        return False  # the started backend holds every program this needs
    known = None
    if started is None:
        known = (spec, algo, build_index.state())
        made_with = _DECIDED.get(known)
        if made_with is not None and made_with is backends.get_backend("numpy").settings:
            return True
    numpy_s, by_values = _numpy_seconds(spec, weight, algo)
    if numpy_s is None:
        return False
    gain = numpy_s * (1.0 - 1.0 / OPENCL_SPEEDUP)  # what OpenCL's faster kernels save
    record = build_index.load_device(device)
    startup = 0.0
    if started is None:
        startup = startup_seconds(record)
        if gain <= startup:
            # decided before any OpenCL module is imported
            if not by_values:
                if len(_DECIDED) >= 4096:
                    _DECIDED.clear()
                _DECIDED[known] = backends.get_backend("numpy").settings
            return True
        if record is None:
            # never started with this index: nothing known of the device or its
            # cache; the first job worth the start-up starts it, and the index learns
            return False
    if started is None and _runs_on_the_host(spec, weight, algo, record):
        return True  # started, OpenCL would hand it to NumPy: a start for nothing
    cached, uncached, keys = _build_seconds(
        spec, weight, algo, backend=started or None, record=record
    )
    if gain > startup + cached + uncached:
        if started is not None and cached == uncached == 0.0:
            # stays so while the backend lives (its programs are never dropped); a
            # weight changed in place at the same address at worst costs an unpriced
            # build, as every build did before this choice existed
            if len(_HELD) >= 4096:
                _HELD.clear()
            _HELD.add(held)
        return False
    if gain <= startup + cached or not keys:
        return True
    # NumPy only because of builds that are paid once: count what OpenCL would have
    # saved, and build once that reaches the builds' cost
    account = build_index.regret_key(keys)
    saved = build_index.add_regret(account, gain - startup - cached)
    if saved >= uncached:
        build_index.clear_regret(account)
        return False
    return True
