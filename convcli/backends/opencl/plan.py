"""Which OpenCL kernel family runs a convolution, and running it.

:func:`run` is called by the backend before its generic direct kernel
(:mod:`.direct`). It picks an algorithm by a small cost model (:func:`choose`, or honours
a forced one), runs it on its family's module and returns the result, or returns None
when no fast path applies so that the generic kernel runs.

Algorithms (``info.algo``) and the families that run them:

* ``separable``: rank-1 depthwise kernels (Gaussian, box, Sobel...) as a vertical and a
  horizontal pass (:mod:`.separable`).
* ``direct``: ``dw_direct`` (:mod:`.depthwise`) for depthwise layers and image filters
  (and forced ``direct`` on any layer); ``dw_channels`` on CPU devices for depthwise
  layers with many channels on small maps, or ``dw_blocks`` (the input copied into
  padded blocks of 8 channels first) where the layer has one channel per group and
  enough taps per input pixel; ``dw_groups`` on CPU devices for grouped layers of as
  many input as output channels a group, a multiple of 8 (block-diagonal layers).
* ``gemm``: ``dense_gemm``, ``pointwise``, ``gemm_1x1`` (:mod:`.gemm`) or ``dense_flat``
  (:mod:`.dense_flat`) for multi-channel layers, and
  the Winograd forms of 3x3 layers when the cost model says so (:mod:`.winograd`).
* ``fft``: overlap-save FFT tiles (:mod:`.fft`) for large depthwise kernels that are not
  separable; ``auto`` picks it on CPU devices when its estimate beats direct taps (one
  SVD decides both this and ``separable``). Kernels wider than the tiles hold (over 128
  pixels across) go to NumPy's FFT on the host, with a notice: under ``auto`` when it is
  estimated well below the direct taps (a 1001x1001 kernel: seconds instead of minutes),
  and always under a forced ``fft``.

On GPU-type devices :func:`convcli.backends.opencl.gpu.device_plan` swaps the
CPU-shaped kernels for the GPU-shaped ones (:mod:`.gpu`; FFT tiles with a work-group per
tile pair, :mod:`.fft_local`).

The CPU-shaped kernels follow what was measured on PoCL (see the ``.cl`` headers):
float8 vectors written by hand, taps fully unrolled with the kernel geometry as ``-D``
defines, no ``fma()``, ``vload8()`` or ``vstore8()`` builtins (PoCL leaves them as
out-of-line calls), no ``float16`` vectors, no ``__local`` tiling, no fast-math. Padding
modes are applied inside the kernels through index maps built by
:func:`convcli.spec.source_index`, never by a padded copy of the input.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from convcli.backends.opencl import (
    depthwise,
    direct,
    fft,
    fft_local,
    gemm,
    gpu,
    separable,
    winograd,
)
from convcli.backends.opencl.runtime import BuildFailed, NoFit, launch_refused
from convcli.backends.opencl.settings import DEFAULT, Settings
from convcli.errors import ConvValueError
from convcli.plan import separable_factors
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec


@dataclass(frozen=True)
class Plan:
    """What :func:`run` will do for a spec: the algorithm and the kernel that runs it."""

    algo: str
    kernel: str


def _gemm_kernel(spec: ConvSpec, s: Settings, cpu: bool) -> str:
    if gemm.pointwise_applies(spec, s):
        return "pointwise"
    if gemm.gemm1x1_applies(spec, cpu, s):
        return "gemm_1x1"
    return "winograd" if winograd.pays(spec, s) else "dense_gemm"


def choose(
    spec: ConvSpec,
    weight: np.ndarray,
    algo: str = "auto",
    *,
    cpu: bool = True,
    settings: Settings = DEFAULT,
) -> tuple[Plan | None, tuple[np.ndarray, np.ndarray] | None]:
    """Pick the fast path for ``spec`` (and the separable factors when it is used).

    Returns ``(None, None)`` when the generic direct kernel should run. Raises
    ConvValueError when ``algo`` is forced to something no OpenCL path can do. ``cpu``:
    the device is a CPU (``auto`` runs FFT tiles only there: one tile per work-item).
    """
    s = settings
    if algo not in ("auto", "direct", "separable", "gemm", "fft"):
        raise ConvValueError(f"unknown algo='{algo}'")
    if algo == "fft":
        reason = fft.why_not(spec, None, s)
        if reason is not None and _too_wide_for_tiles(spec, s):
            return Plan("fft", "host_fft"), None
        if reason is not None:
            raise ConvValueError(f"algo='fft' is not available on the OpenCL backend: it {reason}")
        return Plan("fft", "fft_conv"), None
    why_not = None
    if spec.dtype not in ("float32", "float16"):
        why_not = f"supports float32 and float16 only, got {spec.dtype}"
    elif min(spec.pad) < 0:
        why_not = "does not support negative padding"
    if why_not is not None:
        if algo in ("separable", "gemm"):
            raise ConvValueError(f"algo='{algo}' on the OpenCL backend {why_not}")
        return None, None
    if algo == "auto" and (_host_fc_pays(spec, s) or (cpu and _host_pointwise_pays(spec, s))):
        return Plan("gemm", "host_gemm"), None
    one_channel = spec.cin_g == 1
    taps = spec.kh * spec.kw
    if algo in ("auto", "direct") and depthwise.blocks_pays(spec, cpu, s):
        return Plan("direct", "dw_blocks"), None
    if algo in ("auto", "direct") and depthwise.channels_pays(spec, cpu, s):
        return Plan("direct", "dw_channels"), None
    if algo in ("auto", "direct") and depthwise.groups_pays(spec, cpu, s):
        return Plan("direct", "dw_groups"), None
    if algo == "separable":
        if not one_channel:
            raise ConvValueError(
                "algo='separable' needs a depthwise convolution (one input channel per group)"
            )
        if max(spec.kh, spec.kw) > s.dw_max_taps:
            raise ConvValueError(f"algo='separable' supports kernels up to {s.dw_max_taps} taps")
        factors = separable_factors(weight)
        if factors is None:
            raise ConvValueError("algo='separable' needs a rank-1 kernel")
        return Plan("separable", "dw_direct"), factors
    if algo == "gemm":
        if taps > s.dense_max_taps:
            raise ConvValueError(
                f"algo='gemm' on the OpenCL backend supports kernels up to {s.dense_max_taps} taps"
            )
        return Plan("gemm", _gemm_kernel(spec, s, cpu)), None
    if one_channel:
        # Separable passes cost ~kh+kw taps plus a round trip of the intermediate
        # through the caches; they pay from 5x5 on (3x3: direct is faster). FFT tiles
        # pay for large kernels that are not separable.
        pays = taps >= 16 and min(spec.kh, spec.kw) > 1 and max(spec.kh, spec.kw) <= s.dw_max_taps
        by_fft = algo == "auto" and cpu and fft.pays(spec, s)
        if algo == "auto" and (pays or by_fft):
            factors = separable_factors(weight)  # once, for both choices
            if pays and factors is not None:
                return Plan("separable", "dw_direct"), factors
            if by_fft and factors is None:
                return Plan("fft", "fft_conv"), None
        if algo == "auto" and _host_fft_pays(spec, s):
            return Plan("fft", "host_fft"), None
        if taps <= s.dw_max_taps and depthwise.wide_pays(spec, cpu, s):
            return Plan("direct", "dw_wide"), None
        if taps <= s.dw_max_taps:
            return Plan("direct", "dw_direct"), None
        return None, None
    if algo == "auto" and _host_fft_pays(spec, s):
        return Plan("fft", "host_fft"), None
    if algo == "auto" and spec.cout_g >= 4 and taps <= s.dense_max_taps:
        # Channel-heavy layers: implicit GEMM with a register tile of channel vectors,
        # its Winograd form for wide 3x3 layers, or a plain GEMM for pointwise layers.
        return Plan("gemm", _gemm_kernel(spec, s, cpu)), None
    if taps <= s.dw_max_taps:
        # Forced 'direct', or few output channels per group: vectorise along the width.
        return Plan("direct", "dw_direct"), None
    return None, None


# choose()'s answers that do not depend on the weights' values, per (spec, algo, cpu,
# settings): plan_algo and run ask at every call (twice a warm small layer's 5 us).
_PLANS: dict[tuple, tuple[Plan | None, None]] = {}


def remembered(
    spec: ConvSpec, algo: str, cpu: bool, settings: Settings = DEFAULT
) -> tuple[Plan | None, None] | None:
    """:func:`planned`'s remembered answer (a weight-independent one), or None."""
    return _PLANS.get((spec, algo, cpu, settings))


def planned(
    spec: ConvSpec,
    weight: np.ndarray,
    algo: str = "auto",
    *,
    cpu: bool = True,
    settings: Settings = DEFAULT,
) -> tuple[Plan | None, tuple[np.ndarray, np.ndarray] | None]:
    """:func:`choose`, remembered where the weights' values cannot change the answer:
    choose() reads them only for depthwise layers under 'auto' or 'separable' (rank-1
    and FFT tests), and not at all for the layers dw_channels takes."""
    key = (spec, algo, cpu, settings)
    hit = _PLANS.get(key)
    if hit is not None:
        return hit
    plan, factors = choose(spec, weight, algo, cpu=cpu, settings=settings)
    if not _reads_values(spec, algo, cpu, settings) or (
        plan is not None and plan.kernel in ("dw_channels", "dw_blocks", "dw_groups")
    ):
        if len(_PLANS) > 1024:
            _PLANS.clear()
        _PLANS[key] = (plan, None)
    return plan, factors


def _reads_values(spec: ConvSpec, algo: str, cpu: bool, s: Settings) -> bool:
    """Whether :func:`choose` reads the weights' values for ``spec``: 'separable' on a
    depthwise layer, and 'auto' where a separable run or FFT tiles could pay (the rank-1
    test). A 3x3 depthwise layer's plan (9 taps: never separable-eligible) does not."""
    if spec.cin_g != 1 or algo not in ("auto", "separable"):
        return False
    if algo == "separable":
        return True
    pays = (
        spec.kh * spec.kw >= 16
        and min(spec.kh, spec.kw) > 1
        and max(spec.kh, spec.kw) <= s.dw_max_taps
    )
    return pays or (cpu and fft.pays(spec, s))


def for_device(
    spec: ConvSpec,
    weight: np.ndarray,
    algo: str = "auto",
    *,
    cpu: bool = True,
    settings: Settings = DEFAULT,
) -> tuple[Plan | None, tuple[np.ndarray, np.ndarray] | None]:
    """:func:`planned`, with the GPU-shaped kernels in place of the CPU-shaped ones where
    the device wants them (:func:`convcli.backends.opencl.gpu.device_plan`)."""
    plan, factors = planned(spec, weight, algo, cpu=cpu, settings=settings)
    return gpu.device_plan(plan, spec, algo, cpu, settings), factors


def _host_fc_pays(spec: ConvSpec, s: Settings) -> bool:
    """Whether ``auto`` runs ``spec`` on the host: a 1x1 layer on 1x1 maps (a matrix
    product) of at most ``settings.host_fc_max_macs`` multiply-adds."""
    return (
        s.host_fc_max_macs > 0
        and spec.h == spec.w == spec.kh == spec.kw == 1
        and not any(spec.pad)
        and spec.macs <= s.host_fc_max_macs
    )


def _host_pointwise_pays(spec: ConvSpec, s: Settings) -> bool:
    """Whether ``auto`` on a CPU device runs ``spec`` on the host: a 1x1 layer without
    padding or groups, float32, of at most ``settings.host_pointwise_max_batch`` images
    (``host_pointwise_strided_max_batch`` when strided) and
    ``settings.host_pointwise_max_out_bytes`` of output (see the settings for what was
    measured)."""
    return (
        0 < spec.n <= s.host_pointwise_max_batch
        and (spec.stride == (1, 1) or spec.n <= s.host_pointwise_strided_max_batch)
        and spec.kh == spec.kw == 1
        and spec.groups == 1
        and spec.dtype == "float32"
        and not any(spec.pad)
        and 4 * spec.n * spec.c_out * spec.h_out * spec.w_out <= s.host_pointwise_max_out_bytes
    )


def _too_wide_for_tiles(spec: ConvSpec, s: Settings) -> bool:
    """Whether only the kernel's extent keeps the device's FFT tiles from ``spec``."""
    point = replace(spec, kh=1, kw=1, dilation=(1, 1))
    return fft.why_not(spec, None, s) is not None and fft.why_not(point, None, s) is None


def _host_fft_pays(spec: ConvSpec, s: Settings) -> bool:
    """Whether ``auto`` should run NumPy's FFT on the host: the kernel is too wide for the
    device's FFT tiles, and the host's FFT is estimated well below the direct taps."""
    from convcli.backends import get_backend

    if spec.kh * spec.kw < 64 or not _too_wide_for_tiles(spec, s):
        return False
    numpy = get_backend("numpy")
    if numpy.algo_reason(spec, "fft") is not None:
        return False
    direct_s = fft.direct_seconds(spec) * spec.cin_g
    return numpy.estimate_seconds(spec, "fft") < fft._MARGIN * direct_s


def programs(
    spec: ConvSpec,
    weight: np.ndarray,
    algo: str,
    *,
    cpu: bool,
    local_mem: int | None,
    settings: Settings = DEFAULT,
) -> list[tuple[str, dict[str, int | str]]] | None:
    """The programs (kernel file, build defines) a run of ``spec`` builds on a device,
    found without the device: what the cost model prices before starting OpenCL.

    ``cpu`` and ``local_mem`` describe the device (from its record when it is not
    started). None when this cannot be told (the GPU kernels of
    :mod:`convcli.backends.opencl.gpu`, an ``algo`` that no path here runs): the caller
    then assumes nothing is built.
    """
    s = settings
    try:
        plan, factors = choose(spec, weight, algo, cpu=cpu, settings=s)
        plan = gpu.device_plan(plan, spec, algo, cpu, s)
    except ConvValueError:
        return None
    if spec.n == 0:
        return []
    if plan is not None and plan.kernel == "fft_local":
        return fft_local.programs(spec, local_mem, s)
    if plan is not None and plan.kernel in ("direct_local", "gemm_local"):
        return None  # the GPU kernels' builds are not predicted
    if plan is None:
        return [("conv2d_direct", direct._direct_config(spec, np.dtype(spec.dtype), cpu).defines)]
    if plan.kernel in ("host_fft", "host_gemm"):
        return []
    if plan.algo == "fft":
        return [("fft_conv", fft.build_defines(spec, local_mem, spec.has_bias, s))]
    if plan.algo == "separable":
        col = factors[0].reshape(spec.c_out, spec.kh).astype(np.float32)
        vertical, horizontal = separable.passes(spec)
        if separable.runs_boxsum(spec, col):
            first = ("sep_boxsum", separable.boxsum_defines(spec, s))
        else:
            first = ("dw_direct", depthwise.defines(vertical, s))
        return [first, ("dw_direct", depthwise.defines(horizontal, s))]
    if plan.kernel == "winograd":
        return winograd.programs(spec, cpu, s)
    if plan.kernel == "dw_wide":
        return depthwise.wide_programs(spec, s)
    if plan.kernel == "dw_blocks":
        return depthwise.blocks_programs(spec, s)
    if plan.kernel == "dw_groups":
        return [("dw_groups", depthwise.groups_defines(spec, s))]
    if plan.kernel == "dense_gemm":
        return gemm.dense_programs(spec, cpu, s)
    if plan.kernel == "pointwise":
        return [("pointwise", gemm.pointwise_defines(spec, s))]
    if plan.kernel == "gemm_1x1":
        return [("gemm_1x1", gemm.gemm1x1_defines(spec, s))]
    return [("dw_direct", depthwise.defines(spec, s))]


def run(
    backend,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    *,
    algo: str,
    info: RunInfo,
) -> np.ndarray | None:
    """Run ``spec`` on a fast OpenCL path, or return None for the generic kernel.

    Parameters
    ----------
    backend : OpenCLBackend
        The runtime the kernels run on; its ``settings`` tune them.
    x : ndarray
        Batched ``(N, C_in, H, W)`` input, contiguous, of ``spec.dtype``.
    weight, bias : ndarray
        As given to :func:`convcli.conv2d`.
    spec : ConvSpec
        The validated problem.
    algo : {'auto', 'direct', 'separable', 'gemm', 'fft'}
        ``'auto'`` chooses by a cost model; a forced algorithm no path here can do
        raises ConvValueError (``'direct'`` then returns None for the generic kernel).
    info : RunInfo
        ``algo`` is set; seconds are added under ``build``, ``upload``, ``compute``
        (profiling events) and ``download``.

    Returns
    -------
    ndarray or None
        ``(N, C_out, H_out, W_out)`` in float32, or None when no fast path applies.
    """
    s = backend.settings
    hit = backend.replays.get((spec, algo))
    if hit is not None and hit[1] is s and _replayable(x, weight, bias):
        with backend.current(info):
            try:
                out = _checked(backend, hit[2], x, weight, bias, info)
            except BaseException:
                backend.replays.pop((spec, algo), None)  # the next run plans afresh
                raise
        info.algo = hit[0]
        return out
    plan, factors = for_device(spec, weight, algo, cpu=backend.is_cpu, settings=s)
    if plan is None:
        return None
    if spec.n == 0:
        info.algo = plan.algo
        return np.zeros((0, spec.c_out, spec.h_out, spec.w_out), dtype=np.float32)
    if plan.kernel == "host_fft":
        from convcli.backends.numpy import NumpyBackend

        note = (
            f"a {spec.kh}x{spec.kw} kernel is too wide for the device's FFT tiles: "
            "its FFT ran on the host (NumPy)"
        )
        if note not in info.notices:
            info.notices.append(note)
        return NumpyBackend().run(x, weight, bias, spec, algo="fft", info=info)
    if plan.kernel == "host_gemm":
        from convcli.backends import get_backend

        _note_host_fc(info, spec)
        numpy = get_backend("numpy")
        # 1x1 taps: NumPy's choice never reads the weights' values
        out = numpy.run(x, weight, bias, spec, algo="auto", info=info)
        _keep_host_fc(backend, spec, algo, numpy, info.algo, x, weight, bias)
        return out
    xf = np.ascontiguousarray(x, dtype=np.float32)
    wf = np.ascontiguousarray(weight, dtype=np.float32)
    bf = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    # One call at a time: kernel objects (set_args) and the pools are shared.
    backend.offered = None
    with backend.current(info):
        if plan.algo == "fft" and plan.kernel != "fft_local":
            # its build failures are reported, not passed to the generic kernel
            return fft.run(backend, xf, wf, bf, spec, info=info)
        try:
            if plan.kernel == "fft_local":
                # sets info.algo itself: "direct" where it fell back to direct taps
                return fft_local.run(backend, xf, wf, bf, spec, algo=algo, info=info)
            out = _checked(backend, _family(plan), xf, wf, bf, info, spec, factors)
        except NoFit:
            return None  # auto or direct (all it serves): the generic kernel runs it
        except BuildFailed:
            if algo in ("auto", "direct"):
                return None  # the generic kernel can run this
            raise
        except backend._cl.Error as exc:
            if algo in ("auto", "direct") and launch_refused(exc):
                # refused even with one item per group: the generic kernel may fit
                return None
            raise
    info.algo = plan.algo
    _keep_replay(backend, spec, algo, plan, xf is x and wf is weight and bf is bias)
    return out


def _family(plan: Plan):
    """The run of ``plan``'s kernel family: ``f(rt, x, weight, bias, spec, factors,
    info)``."""
    kernel, algo = plan.kernel, plan.algo
    if kernel == "direct_local" and algo == "separable":
        return lambda rt, x, w, b, spec, factors, info: gpu.run_separable(
            rt, x, b, spec, factors, info
        )
    if algo == "separable":
        return lambda rt, x, w, b, spec, factors, info: separable.run(rt, x, b, spec, factors, info)
    if kernel == "winograd":

        def run_winograd(rt, x, w, b, spec, factors, info):
            if winograd.whole(spec, rt.is_cpu, rt.settings):
                return winograd.run_whole(rt, x, w, b, spec, info)
            return winograd.run(rt, x, w, b, spec, info)

        return run_winograd
    run = {
        "direct_local": gpu.run_local,
        "gemm_local": gpu.run_gemm,
        "dense_gemm": gemm.run_dense,
        "pointwise": gemm.run_pointwise,
        "gemm_1x1": gemm.run_gemm1x1,
        "dw_channels": depthwise.run_channels,
        "dw_blocks": depthwise.run_blocks,
        "dw_groups": depthwise.run_groups,
        "dw_wide": depthwise.run_wide,
    }.get(kernel, depthwise.run)
    return lambda rt, x, w, b, spec, factors, info: run(rt, x, w, b, spec, info)


def _checked(rt, run, x, weight, bias, info: RunInfo, *more):
    """``run(rt, x, weight, bias, *more, info)`` (or a kept launch, ``run(x, weight,
    bias, info)``, without ``more``) with the packed weights' full comparison deferred
    until the kernels are queued (:meth:`Runtime.defer_weight_checks`), and run again
    with fresh weights when it finds them changed. Weights of 64 KB or less (compared
    in microseconds) run as they are."""
    args = (rt, x, weight, bias, *more, info) if more else (x, weight, bias, info)
    if weight.nbytes <= 1 << 16 or not rt.settings.late_weight_checks:
        return run(*args)
    rt.defer_weight_checks()
    try:
        out = run(*args)
    except BaseException:
        rt.deferred_checks_held()
        raise
    if rt.deferred_checks_held():
        return out
    return run(*args)  # the weights changed in place since they were packed


_HOST_NOTES = (
    "a 1x1 layer on 1x1 maps ran as a matrix product on the host (NumPy)",
    "a 1x1 layer ran as a matrix product on the host (NumPy): on a CPU device it needs no launch",
)


def _note_host_fc(info: RunInfo, spec: ConvSpec) -> None:
    note = _HOST_NOTES[spec.h * spec.w > 1]
    if note not in info.notices:
        info.notices.append(note)


def _keep_host_fc(backend, spec: ConvSpec, algo: str, numpy, ran: str, x, weight, bias) -> None:
    """Keep, as the replay of ``(spec, algo)``, the matrix product NumPy's backend just
    ran for a 1x1 layer (``host_gemm``), without its planning: its own ``pointwise``
    and the same bias pass (bit-identical), where that was its one-thread ``gemm`` path
    for stride 1. The squeeze-and-excitation layers of efficientnet, regnet and
    mobilenet (32 a network) spent 24 us a warm call there, half of it choosing and
    dispatching. The replay checks that NumPy's settings and threads are the ones the
    choice was made for, else runs NumPy's backend as before. Strided layers and those
    NumPy splits over its threads run NumPy's backend at every call."""
    from convcli.backends.numpy import gemm as np_gemm

    nset = numpy.settings
    if (
        ran != "gemm"
        or spec.dtype != "float32"
        or not _replayable(x, weight, bias)
        or (spec.kh, spec.kw, spec.stride, spec.pad) != (1, 1, (1, 1), (0, 0, 0, 0))
        or np_gemm.pointwise_threads(spec, nset) != 1
        or np_gemm.gemm_adds_bias(spec)
        or remembered(spec, algo, backend.is_cpu, backend.settings) is None
    ):
        return
    threads = numpy.threads()
    f32 = np.dtype(np.float32)

    def replay(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, info: RunInfo):
        _note_host_fc(info, spec)
        # the thread rule also follows BLAS's thread count (a caller's threadpool_limits
        # that has ended): a layer large enough for NumPy's threads takes them again
        if (
            numpy.settings is not nset
            or numpy.threads() != threads
            or np_gemm.pointwise_threads(spec, nset) != 1
        ):
            return numpy.run(x, weight, bias, spec, algo="auto", info=info)
        t0 = time.perf_counter()
        # NumPy's gemm path for these layers, then NumpyBackend.run's bias pass
        out = np_gemm.pointwise(x, weight, spec, f32, nset)
        if bias is not None:
            out += bias[None, :, None, None]
        info.timings["compute"] = info.timings.get("compute", 0.0) + time.perf_counter() - t0
        return out

    if len(backend.replays) >= 1024:
        backend.replays.clear()
    backend.replays[(spec, algo)] = ("gemm", backend.settings, replay)


def _replayable(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> bool:
    """Whether a kept launch can take these arrays as they are (float32, contiguous):
    the run that kept it converted nothing either."""
    f32 = np.float32
    return (
        x.dtype == f32
        and weight.dtype == f32
        and x.flags.c_contiguous
        and weight.flags.c_contiguous
        and (bias is None or (bias.dtype == f32 and bias.flags.c_contiguous))
    )


def _keep_replay(backend, spec: ConvSpec, algo: str, plan: Plan, as_given: bool) -> None:
    """Keep the launch the run's family offered (``Runtime.offer_replay``) for ``(spec,
    algo)``, where the plan cannot depend on the weights' values (:func:`remembered`)
    and the arrays ran as given (a float16 run converts them first)."""
    launch, backend.offered = backend.offered, None
    if launch is None or not as_given:
        return
    s = backend.settings
    if remembered(spec, algo, backend.is_cpu, s) is None:
        return
    if len(backend.replays) >= 1024:
        backend.replays.clear()
    backend.replays[(spec, algo)] = (plan.algo, s, launch)
