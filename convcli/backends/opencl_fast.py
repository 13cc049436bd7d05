"""Fast OpenCL paths: separable passes, a float8 depthwise kernel, register-blocked GEMMs.

:func:`run` is called by the OpenCL backend before its generic direct kernel. It picks
an algorithm by a small cost model (or honours a forced one), runs it and returns the
result, or returns None when no fast path applies so that the generic kernel runs.

Algorithms (``info.algo``):

* ``separable``: rank-1 depthwise kernels (Gaussian, box, Sobel...) as a vertical pass
  into a reused scratch buffer, then a horizontal pass (``dw_direct.cl`` with KW = 1 and
  KH = 1); constant column factors (box filters) run the vertical pass by running sums
  (``sep_boxsum.cl``).
* ``direct``: ``dw_direct.cl``, float8 along the output width, several output rows per
  work-item sharing loaded input rows; depthwise layers and image filters (and forced
  ``direct`` on any layer). On CPU devices, depthwise layers with many channels on
  small maps (CNN layers: at least 32 channels, outputs at most 32 wide, zero padding)
  run ``dw_channels.cl`` instead: float8 across 8 output channels, one launch for all
  channels, the taps packed as aligned float8 (:func:`_dw_channels_pays`).
* ``gemm``: ``dense_gemm.cl``, an implicit GEMM with a register tile of float8
  output-channel vectors x output columns and weights packed on the host; multi-channel
  layers, 1x1 included. Wide 1x1 layers with stride 1 and no padding run
  ``pointwise.cl`` instead: a plain GEMM whose float8 vectors run along the contiguous
  pixels. 3x3 layers whose stride equals their dilation (a stride-1 3x3
  on the grid of every stride-th row and column) run it in Winograd F(2x2, 3x3) form
  when the cost model says so: ``winograd_input.cl`` (V = B^T d B per 4x4 tile),
  ``winograd_gemm.cl`` (16 GEMMs per group, 2.25x fewer multiply-adds) and
  ``winograd_output.cl`` (Y = A^T M A + bias), in chunks of tile rows; with few input
  channels per group ``winograd_gemm_out.cl`` does the GEMMs and the output transform
  in one item, so M never goes to memory. Still reported as ``gemm``: it is the same
  GEMM, reassociated.
* ``fft``: :mod:`convcli.backends.opencl_fft` (``fft_conv.cl``), overlap-save FFT tiles
  for large depthwise kernels that are not separable; ``auto`` picks it on CPU devices
  when its estimate beats direct taps (one SVD decides both this and ``separable``).
  Kernels wider than the tiles hold (over 128 pixels across) go to NumPy's FFT on the
  host, with a notice: under ``auto`` when it is estimated well below the direct taps (a
  1001x1001 kernel: seconds instead of minutes), and always under a forced ``fft``.

The kernels follow what was measured on PoCL (see the ``.cl`` headers): float8 vectors
written by hand, taps fully unrolled with the kernel geometry as ``-D`` defines, no
``fma()``, ``vload8()`` or ``vstore8()`` builtins (PoCL leaves them as out-of-line
calls), no ``float16`` vectors, no ``__local`` tiling, no fast-math. The image filters
(``dw_direct``, ``sep_boxsum``) take image sizes as kernel arguments, so images of any
size with the same filter share one build (``dense_gemm`` still bakes them in: its
layers repeat one size). Padding modes are applied
inside the kernels through index maps built by :func:`convcli.spec.source_index`, never
by a padded copy of the input.

On CPU devices the input is wrapped with ``USE_HOST_PTR`` and the output is a
page-aligned array wrapped the same way and mapped, so no host copies are made; output
arrays are recycled from a small pool once the caller has dropped them (the backend's
:meth:`~convcli.backends.opencl_backend.OpenCLBackend.output`, shared with the generic
kernel).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from convcli.errors import ConvValueError
from convcli.plan import is_frozen, separable_factors
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec, source_index

# Work-items per work-group wanted along the width (the backend shrinks it to what the
# device and kernel allow, OpenCLBackend.enqueue): 64, or the next power of two above the
# row's item count when a row has fewer (no groups of mostly idle items: 64 on a 7x7
# depthwise layer ran 2.4x slower than 1). dw_direct with runtime sizes builds once for
# every image size, and PoCL JIT-compiles each new local size at first launch (0.4 s
# per pass, measured), so it uses 64 from DW_FIXED_ITEMS items per row on. PoCL's
# per-group overhead made 8 items per group 2.5x slower than 64 on a memory-bound
# kernel.
LOCAL_X = 64
DW_FIXED_ITEMS = 17
# dw_direct bakes image sizes into the build for input planes up to this many pixels:
# CNN feature maps, whose sizes repeat, ran 3-15% faster with constant sizes (A/B in
# one process, 7x7 to 136x136 depthwise 3x3). Larger planes (photos, whose sizes vary)
# take sizes as arguments, within noise of constants on 2048x2048.
DW_FIXED_PIXELS = 256 * 256


@dataclass(frozen=True)
class Plan:
    """What :func:`run` will do for a spec: the algorithm and the kernel that runs it."""

    algo: str
    kernel: str


# (COB, XB) override for A/B experiments; None = the measured defaults below.
DENSE_TILE: tuple[int, int] | None = None


def _dense_blocking(cout_g: int, kh: int, kw: int) -> tuple[int, int]:
    """(COB float8 channel vectors, XB columns) per work-item for dense_gemm.

    4 x 2 was the best tile for wide layers on PoCL/AVX2 (14 of 16 ymm registers);
    narrow groups trade channel vectors for columns to keep the tile as large.
    """
    if DENSE_TILE is not None:
        return DENSE_TILE
    vecs = math.ceil(cout_g / 8)
    if vecs >= 4:
        return 4, 2
    if vecs == 3:
        return 3, 3
    if vecs == 2:
        return 2, 4
    return 1, 6


# Kernel taps are fully unrolled (accumulators in registers): beyond these sizes the
# unrolled bodies take seconds to compile and the generic kernel runs instead.
DW_MAX_TAPS = 256
DENSE_MAX_TAPS = 64
# Unrolled multiply-adds per dw_direct item: ROWS output rows share loaded input rows.
_DW_MAX_BODY = 1024


# Bytes of packed weights an input-channel chunk may take (half of a 32 KB L1).
DENSE_L1_BYTES = 16 * 1024
# Column groups per dense_gemm item when weights do not fit L1 (None = choose).
DENSE_STRIP: int | None = None


def _dense_strip(spec: ConvSpec, cob: int, xb: int, cpu: bool = True) -> tuple[int, int]:
    """(STRIP column groups per item, CI_CHUNK input channels per weight chunk).

    A block's weights (C_in/groups x taps x COB float8) stream from L2 once per item;
    when they exceed L1, an item takes a strip of column groups and walks the input
    channels in chunks whose weights stay in L1 for the whole strip. CPUs only (``cpu``):
    the strip's partial sums (``part[STRIP][COB][XB]``, up to 2 KB per item) are private
    memory, which spills to slow memory on GPUs, and their caches are not a CPU's L1.
    """
    per_ci = spec.kh * spec.kw * cob * 32
    chunks = math.ceil(spec.cin_g * per_ci / DENSE_L1_BYTES)
    groups = math.ceil(spec.w_out / xb)
    wanted = 1 if chunks <= 1 or not cpu else min(8, groups)
    strip = DENSE_STRIP if DENSE_STRIP is not None else wanted
    if strip <= 1:
        return 1, spec.cin_g
    return strip, math.ceil(spec.cin_g / chunks)


def _dw_rows(kh: int, kw: int) -> int:
    """Output rows per dw_direct work-item (independent chains sharing loaded rows).

    Vertical passes (kw == 1) reuse each loaded row for up to 8 outputs: 8 rows were
    1.3-1.5x faster than 4 there; 2-D kernels keep 4 (accumulators + taps in registers).
    """
    for rows in (8, 4, 2) if kw == 1 else (4, 2):
        if rows * kh * kw <= _DW_MAX_BODY:
            return rows
    return 1


# Winograd F(2x2, 3x3) override for A/B experiments and tests: None = the cost model.
WINOGRAD: bool | None = None
# Winograd cuts multiply-adds 2.25x (saving ~ CIN_G*COUT_G per tile and group) but
# writes and reads 16 transformed values per tile and input or output channel (cost ~
# CIN_G + COUT_G). Kernel time ratios dense/Winograd measured on PoCL (in->out per
# group): 16->16 0.87, 32->8 0.65, 8->16 0.31, 16->32 1.27, W7's 16->32 stride 2 1.1,
# 32->32 1.33, 64->64 1.47, 256->256 1.66. It runs when CIN_G*COUT_G/(CIN_G+COUT_G)
# reaches this (16->32: 10.7, 16->16: 8).
WINO_MIN_RATIO = 10.0
# Bytes of transformed input and GEMM output planes per chunk of tile rows.
WINO_CHUNK_BYTES = 8 << 20
# (KB output channels, XV float8 vectors of 8 tiles) per GEMM work-item; None =
# _wino_tile's choice.
WINO_TILE: tuple[int, int] | None = None
# GEMMs and output transform in one kernel (winograd_gemm_out) for layers with few
# input channels per group, whose 16 GEMM results per tile and output channel are
# traffic rather than work; None = the rule in _wino_fused.
WINO_FUSED: bool | None = None
WINO_FUSED_MAX_CIN = 32
# Weights of at least this size are checked against the cache while the device runs the
# first input transform (W6's 2.4 MB: 0.3 ms with cold caches); smaller ones before it.
WINO_OVERLAP_BYTES = 1 << 20
# V per chunk for the fused kernel, which reads it back in its own, slower walk: W7 ran
# 2 chunks of 2 MB at 1.82-1.85 ms CPU per call against 1.93-1.95 for one of 4 MB.
WINO_FUSED_CHUNK_BYTES = 2 << 20


def _winograd_applies(spec: ConvSpec) -> bool:
    """3x3 with stride equal to dilation per axis: a stride-1 3x3 on a virtual grid."""
    return (
        spec.kh == 3
        and spec.kw == 3
        and spec.stride[0] == spec.dilation[0]
        and spec.stride[1] == spec.dilation[1]
    )


def _winograd_pays(spec: ConvSpec) -> bool:
    """Whether a 'gemm' layer runs as Winograd. Depends on the layer only (channels,
    kernel, stride, dilation), never on the image or batch size, so row bands and batch
    pieces of a tiled call run the same kernels as the whole."""
    if not _winograd_applies(spec):
        return False
    if WINOGRAD is not None:
        return WINOGRAD
    return spec.cin_g * spec.cout_g >= WINO_MIN_RATIO * (spec.cin_g + spec.cout_g)


def _wino_fused(spec: ConvSpec, cpu: bool = True) -> bool:
    """Whether the GEMMs and the output transform run as one kernel (layer-only too).

    CPU devices only (``cpu``): the item's 16 x KB x XV float8 GEMM results (about 6 KB)
    wait in private memory, which stays in a CPU's L1 but spills on GPUs; the split
    kernels keep a 12-accumulator tile (untested on a GPU: none was lent).
    """
    if WINO_FUSED is not None:
        return WINO_FUSED
    return cpu and spec.cin_g <= WINO_FUSED_MAX_CIN


# The whole layer as one winograd_fused launch (input transform into private memory,
# GEMMs, output transform) for up to WINO_WHOLE_MAX_CIN input channels per group, on CPU
# devices only: 16 x CIN_G x 2 float8 of transformed input per item (16 KB at 16
# channels, 64 KB at 64) would spill on a GPU, and one item per 16 tiles and group gives
# W7 256 items, far too few for a GPU; the split kernels keep their many items there
# (untested on a GPU: none was lent). Wall time
# against the two- or three-kernel forms (ms, PoCL, 2 cores, A/B in one process): W7
# 0.86 vs 1.24, N1 16->64 112^2 0.99 vs 1.19, N1 32->32 56^2 0.64 vs 0.70, N2 48->48
# 40^2 0.92 vs 1.14, W5 (64->64) 7.7 vs 8.6 and 10.5 vs 12.0, N1 64->128 28^2 0.70 vs
# 0.80; but N1 128->128 28^2 1.41 vs 1.29 (W6, 256 channels, was within 5 %). None =
# that rule; True/False force it for tests and A/B runs.
WINO_WHOLE: bool | None = None
WINO_WHOLE_MAX_CIN = 64
# Items per work-group: each item is heavy (16 tiles x every output channel), and
# 64-item groups left one of two cores idle on small layers (a 56^2 layer had one group).
WINO_WHOLE_LOCAL = 4


def _wino_whole(spec: ConvSpec, cpu: bool = True) -> bool:
    """Whether the whole Winograd layer runs as one winograd_fused launch (``cpu``: the
    device is a CPU, whose caches hold the larger private arrays)."""
    if WINO_WHOLE is not None:
        return WINO_WHOLE
    return cpu and spec.cin_g <= WINO_WHOLE_MAX_CIN


def _wino_tile(cout_g: int) -> tuple[int, int]:
    """6 x 2 (12 accumulators, 2 vector loads + 6 broadcasts per input channel: the 6x16
    BLIS shape) unless 4 x 2 pads fewer channels: KB = 6 computes 36 channels for 32
    (W7: its GEMMs ran 10 % faster with KB = 4; W6 within noise)."""
    if WINO_TILE is not None:
        return WINO_TILE
    pad6, pad4 = -cout_g % 6, -cout_g % 4
    return (4, 2) if pad4 < pad6 else (6, 2)


# pointwise.cl from these sizes on. Below them dense_gemm measured faster: 64 input
# channels per group ran 1.7-2.1 ms against 1.5-1.7 (N=8 64->64 56x56), and 14x14
# planes 1.27-1.39 ms against 1.12-1.14 (N=8 256->256 and 512->128).
POINTWISE_MIN_CIN = 128
POINTWISE_MIN_PIXELS = 1024


def _pointwise(spec: ConvSpec) -> bool:
    """1x1, stride 1, no padding, enough input channels and pixels: a plain GEMM over
    contiguous pixels (pointwise.cl)."""
    return (
        (spec.kh, spec.kw, spec.stride) == (1, 1, (1, 1))
        and not any(spec.pad)
        and spec.cin_g >= POINTWISE_MIN_CIN
        and spec.h * spec.w >= POINTWISE_MIN_PIXELS
    )


def _gemm_kernel(spec: ConvSpec) -> str:
    if _pointwise(spec):
        return "pointwise"
    return "winograd" if _winograd_pays(spec) else "dense_gemm"


def choose(
    spec: ConvSpec, weight: np.ndarray, algo: str = "auto", *, cpu: bool = True
) -> tuple[Plan | None, tuple[np.ndarray, np.ndarray] | None]:
    """Pick the fast path for ``spec`` (and the separable factors when it is used).

    Returns ``(None, None)`` when the generic direct kernel should run. Raises
    ConvValueError when ``algo`` is forced to something no OpenCL path can do. ``cpu``:
    the device is a CPU (``auto`` runs FFT tiles only there: one tile per work-item).
    """
    from convcli.backends import opencl_fft  # it uses this module's buffers

    if algo not in ("auto", "direct", "separable", "gemm", "fft"):
        raise ConvValueError(f"unknown algo='{algo}'")
    if algo == "fft":
        reason = opencl_fft.why_not(spec)
        if reason is not None and _too_wide_for_tiles(spec):
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
    depthwise = spec.cin_g == 1
    taps = spec.kh * spec.kw
    if algo in ("auto", "direct") and _dw_channels_pays(spec, cpu):
        return Plan("direct", "dw_channels"), None
    if algo == "separable":
        if not depthwise:
            raise ConvValueError(
                "algo='separable' needs a depthwise convolution (one input channel per group)"
            )
        if max(spec.kh, spec.kw) > DW_MAX_TAPS:
            raise ConvValueError(f"algo='separable' supports kernels up to {DW_MAX_TAPS} taps")
        factors = separable_factors(weight)
        if factors is None:
            raise ConvValueError("algo='separable' needs a rank-1 kernel")
        return Plan("separable", "dw_direct"), factors
    if algo == "gemm":
        if taps > DENSE_MAX_TAPS:
            raise ConvValueError(
                f"algo='gemm' on the OpenCL backend supports kernels up to {DENSE_MAX_TAPS} taps"
            )
        return Plan("gemm", _gemm_kernel(spec)), None
    if depthwise:
        # Separable passes cost ~kh+kw taps plus a round trip of the intermediate
        # through the caches; they pay from 5x5 on (3x3: direct is faster). FFT tiles
        # pay for large kernels that are not separable.
        pays = taps >= 16 and min(spec.kh, spec.kw) > 1 and max(spec.kh, spec.kw) <= DW_MAX_TAPS
        fft = algo == "auto" and cpu and opencl_fft.pays(spec)
        if algo == "auto" and (pays or fft):
            factors = separable_factors(weight)  # once, for both choices
            if pays and factors is not None:
                return Plan("separable", "dw_direct"), factors
            if fft and factors is None:
                return Plan("fft", "fft_conv"), None
        if algo == "auto" and _host_fft_pays(spec):
            return Plan("fft", "host_fft"), None
        if taps <= DW_MAX_TAPS:
            return Plan("direct", "dw_direct"), None
        return None, None
    if algo == "auto" and _host_fft_pays(spec):
        return Plan("fft", "host_fft"), None
    if algo == "auto" and spec.cout_g >= 4 and taps <= DENSE_MAX_TAPS:
        # Channel-heavy layers: implicit GEMM with a register tile of channel vectors,
        # its Winograd form for wide 3x3 layers, or a plain GEMM for pointwise layers.
        return Plan("gemm", _gemm_kernel(spec)), None
    if taps <= DW_MAX_TAPS:
        # Forced 'direct', or few output channels per group: vectorise along the width.
        return Plan("direct", "dw_direct"), None
    return None, None


# choose()'s answers that do not depend on the weights' values, per (spec, algo, cpu,
# tuning): plan_algo and run ask at every call (twice a warm small layer's 5 us).
_PLANS: dict[tuple, tuple[Plan | None, None]] = {}


def _tuning() -> tuple:
    """The module values choose() reads (tests and A/B runs patch them)."""
    from convcli.backends import opencl_fft

    return (
        WINOGRAD,
        WINO_MIN_RATIO,
        POINTWISE_MIN_CIN,
        POINTWISE_MIN_PIXELS,
        DW_CHANNELS_MIN_COUT,
        DW_CHANNELS_MAX_WO,
        DW_MAX_TAPS,
        DENSE_MAX_TAPS,
        opencl_fft.TILES,
    )


def remembered(spec: ConvSpec, algo: str, cpu: bool) -> tuple[Plan | None, None] | None:
    """:func:`planned`'s remembered answer (a weight-independent one), or None."""
    return _PLANS.get((spec, algo, cpu, _tuning()))


def planned(
    spec: ConvSpec, weight: np.ndarray, algo: str = "auto", *, cpu: bool = True
) -> tuple[Plan | None, tuple[np.ndarray, np.ndarray] | None]:
    """:func:`choose`, remembered where the weights' values cannot change the answer:
    choose() reads them only for depthwise layers under 'auto' or 'separable' (rank-1
    and FFT tests), and not at all for the layers dw_channels takes."""
    key = (spec, algo, cpu, _tuning())
    hit = _PLANS.get(key)
    if hit is not None:
        return hit
    plan, factors = choose(spec, weight, algo, cpu=cpu)
    reads = spec.cin_g == 1 and algo in ("auto", "separable")
    if not reads or (plan is not None and plan.kernel == "dw_channels"):
        if len(_PLANS) > 1024:
            _PLANS.clear()
        _PLANS[key] = (plan, None)
    return plan, factors


def _too_wide_for_tiles(spec: ConvSpec) -> bool:
    """Whether only the kernel's extent keeps the device's FFT tiles from ``spec``."""
    from convcli.backends import opencl_fft

    point = replace(spec, kh=1, kw=1, dilation=(1, 1))
    return opencl_fft.why_not(spec) is not None and opencl_fft.why_not(point) is None


def _host_fft_pays(spec: ConvSpec) -> bool:
    """Whether ``auto`` should run NumPy's FFT on the host: the kernel is too wide for the
    device's FFT tiles, and the host's FFT is estimated well below the direct taps."""
    from convcli.backends import numpy_backend, opencl_fft

    if spec.kh * spec.kw < 64 or not _too_wide_for_tiles(spec):
        return False
    if numpy_backend.algo_reason(spec, "fft") is not None:
        return False
    direct = opencl_fft.direct_seconds(spec) * spec.cin_g
    return numpy_backend.estimate_seconds(spec, "fft") < opencl_fft._MARGIN * direct


# --------------------------------------------------------------------------- buffers


_LOCK = threading.RLock()
_MAPS: dict[tuple, tuple[Any, Any]] = {}
_KERNELS: dict[tuple[int, str], tuple[Any, Any]] = {}


def index_map(
    cl, backend, size: int, before: int, after: int, mode: str, step: int = 1, length: int = 0
):
    """Device buffer with the padded -> source index map (-1 where zeros pad).

    With ``step``/``length``: entry v maps padded index ``v * step`` (a layer whose
    stride equals its dilation reads only those), -1 past the padded edge.
    """
    key = (id(backend.ctx), size, before, after, mode, step, length)
    hit = _MAPS.get(key)
    if hit is not None:
        return hit[1]
    idx, valid = source_index(size, before, after, mode)
    arr = np.where(valid, idx, -1).astype(np.int32)
    if length:
        full = np.full(length * step, -1, dtype=np.int32)
        full[: min(arr.size, full.size)] = arr[: full.size]
        arr = np.ascontiguousarray(full[::step])
    buf = cl.Buffer(backend.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=arr)
    if len(_MAPS) > 256:
        _MAPS.clear()
    _MAPS[key] = (backend.ctx, buf)
    return buf


class _BuildFailed(Exception):
    """A fast kernel did not build on this device (e.g. a compiler without clang's
    vector attributes); under ``algo='auto'`` the generic kernel runs instead."""


def _kernel(backend, name: str, defines: dict[str, int], info: RunInfo):
    try:
        prg = backend.program(name, defines, info)
        key = (id(prg), name)
        hit = _KERNELS.get(key)
        if hit is None:
            if len(_KERNELS) > 512:
                _KERNELS.clear()
            hit = (prg, getattr(prg, name))
            _KERNELS[key] = hit
    except Exception as exc:  # BackendError from the core, pyopencl errors otherwise
        raise _BuildFailed(name) from exc
    return hit[1]


def _launch(
    cl,
    backend,
    kernel,
    global_size: tuple[int, int, int],
    args: list,
    *,
    fixed_from: int = 0,
    fill_to: int = 0,
) -> Any:
    """Enqueue ``kernel``; from ``fixed_from`` items per row on, the local size wanted
    is LOCAL_X. With ``fill_to``, a work-group also takes several rows (dimension 1)
    until it has about that many items. The backend fits the size to the device and the
    kernel and rounds the global size up to it (:meth:`OpenCLBackend.enqueue`)."""
    items = global_size[0]
    if fixed_from and items >= fixed_from:
        lx = LOCAL_X
    else:
        lx = min(LOCAL_X, 1 << max(0, items - 1).bit_length())
    ly = max(1, fill_to // lx)
    return backend.enqueue(kernel, global_size, (lx, ly, 1), args)


def _add_compute(info: RunInfo, events: list) -> None:
    """Kernel seconds from profiling events (complete by now: no extra thread wake-up)."""
    total = 0.0
    for ev in events:
        ev.wait()
        total += (ev.profile.end - ev.profile.start) * 1e-9
    info.timings["compute"] = info.timings.get("compute", 0.0) + total


def _const(cl, backend, arr: np.ndarray):
    return cl.Buffer(
        backend.ctx,
        cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
        hostbuf=np.ascontiguousarray(arr, dtype=np.float32),
    )


# --------------------------------------------------------------------------- paths


def _dw_defines(
    in_shape: tuple[int, int, int, int],
    out_shape: tuple[int, int, int, int],
    *,
    csum: int,
    cmult: int,
    kh: int,
    kw: int,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pad: tuple[int, int, int, int],
    has_bias: bool,
) -> dict[str, int]:
    """The build defines of one dw_direct launch (see :func:`_run_dw`)."""
    n, c_in, h, w = in_shape
    _, c_out, ho, wo = out_shape
    # Geometry only: image sizes are kernel arguments, so every image size with the same
    # filter shares one build (a folder of mixed sizes built each size anew, 0.3-1.5 s).
    # Small planes (CNN feature maps: sizes repeat) get them as constants too.
    defines = {
        "C_IN": c_in,
        "C_OUT": c_out,
        "CSUM": csum,
        "CMULT": cmult,
        "KH": kh,
        "KW": kw,
        "SH": stride[0],
        "SW": stride[1],
        "DH": dilation[0],
        "DW": dilation[1],
        "PADT": pad[0],
        "PADL": pad[2],
        "HAS_BIAS": 1 if has_bias else 0,
        "ROWS": _dw_rows(kh, kw),
    }
    if h * w <= DW_FIXED_PIXELS:
        sizes = [n, h, w, ho, wo, h + pad[0] + pad[1], w + pad[2] + pad[3]]
        defines["FIXED_SIZES"] = 1
        defines.update(zip(("N", "H", "W", "HO", "WO", "HP", "WP"), sizes, strict=True))
    return defines


def _run_dw(
    cl,
    backend,
    xbuf,
    in_shape: tuple[int, int, int, int],
    taps: np.ndarray,
    bias: np.ndarray | None,
    out_buf,
    out_shape: tuple[int, int, int, int],
    *,
    csum: int,
    cmult: int,
    kh: int,
    kw: int,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pad: tuple[int, int, int, int],
    mode: str,
    info: RunInfo,
):
    """Enqueue one dw_direct launch; returns its event."""
    n, _, h, w = in_shape
    _, c_out, ho, wo = out_shape
    rows = _dw_rows(kh, kw)
    fixed = h * w <= DW_FIXED_PIXELS
    sizes = [n, h, w, ho, wo, h + pad[0] + pad[1], w + pad[2] + pad[3]]
    defines = _dw_defines(in_shape, out_shape, csum=csum, cmult=cmult, kh=kh, kw=kw,
                          stride=stride, dilation=dilation, pad=pad,
                          has_bias=bias is not None)  # fmt: skip
    kernel = _kernel(backend, "dw_direct", defines, info)
    rmap = index_map(cl, backend, h, pad[0], pad[1], mode)
    cmap = index_map(cl, backend, w, pad[2], pad[3], mode)
    wbuf = _const(cl, backend, taps)
    bbuf = _const(cl, backend, bias if bias is not None else np.zeros(1, np.float32))
    gsize = (math.ceil(wo / 8), math.ceil(ho / rows), n * c_out)
    args = [xbuf, wbuf, bbuf, rmap, cmap, out_buf, *(np.int32(v) for v in sizes)]
    fixed_from = 0 if fixed else DW_FIXED_ITEMS
    return _launch(cl, backend, kernel, gsize, args, fixed_from=fixed_from)


def _channel_blocks(w: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, step: int):
    """Per-group taps ``w`` ``(C_out, CIN_G, T)`` in blocks of ``step`` output channels.

    Returns ``(G, NBLK, CIN_G, T, step)`` float32 (zeros past C_out/groups, so every
    block is full) and the bias as ``(G, NBLK*step)`` (zeros without bias).
    """
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    nblk = math.ceil(cout_g / step)
    taps = w.shape[-1]
    blocks = np.zeros((g, nblk * step, cin_g, taps), dtype=np.float32)
    blocks[:, :cout_g] = w.reshape(g, cout_g, cin_g, taps)
    b = np.zeros((g, nblk * step), dtype=np.float32)
    if bias is not None:
        b[:, :cout_g] = bias.astype(np.float32).reshape(g, cout_g)
    # (G, NBLK, STEP, CIN_G, T) -> (G, NBLK, CIN_G, T, STEP)
    return blocks.reshape(g, nblk, step, cin_g, taps).transpose(0, 1, 3, 4, 2), b


def _pack_dense(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, cob: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weights as dense_gemm reads them: ``(G, NBLK, CIN_G, KH*KW, COB*8)``."""
    w = weight.reshape(spec.c_out, spec.cin_g, -1)
    wp, b = _channel_blocks(w, bias, spec, cob * 8)
    return np.ascontiguousarray(wp), b


# Winograd F(2x2, 3x3) weight transform G (4x3).
_WINO_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _pack_winograd(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, kb: int
) -> tuple[np.ndarray, np.ndarray]:
    """U = G g G^T (in float64, rounded once) as ``(G, 16, NBLK, CIN_G, KB)``; the bias
    as ``(C_out,)`` (zeros without bias)."""
    u = np.einsum("ai,ocij,bj->ocab", _WINO_G, weight.astype(np.float64), _WINO_G)
    wp, _ = _channel_blocks(u.reshape(spec.c_out, spec.cin_g, 16), None, spec, kb)
    b = np.zeros(spec.c_out, np.float32) if bias is None else bias.astype(np.float32)
    return np.ascontiguousarray(wp.transpose(0, 3, 1, 2, 4)), b


# Packed weights on the device, reused while the caller passes equal weights: packing
# and uploading a 256x256x3x3 layer took 1-2.5 ms of a 6 ms call. Equality is checked
# exactly (np.array_equal on a private copy, ~0.2 ms), so weights edited in place are
# never served stale.
_PACKED: list[tuple] = []
_PACKED_SIZE = 8


def _same(kept: np.ndarray | None, given: np.ndarray | None) -> bool:
    """Whether ``given`` holds what ``kept`` (see :func:`_kept`) held when it was kept.

    A frozen array (``Conv2d``'s weights, see :func:`convcli.plan.frozen_copy`) is its
    own record and needs no comparison while it stays frozen; any other array is
    compared in full with the copy: an in-place change of a weight array must never
    give stale results.
    """
    if kept is None or given is None:
        return kept is given
    if kept is given:
        return is_frozen(given)
    if kept.shape != given.shape or kept.dtype != given.dtype:
        return False
    if kept.nbytes <= 1 << 16:
        return kept.tobytes() == given.tobytes()  # one memcmp: 2 us, not array_equal's 7
    return bool(np.array_equal(kept, given))


def _kept(a: np.ndarray | None) -> np.ndarray | None:
    """What :func:`_same` compares with later: a frozen array itself, else a copy."""
    if a is None or is_frozen(a):
        return a
    return a.copy()


def _packed_weights(cl, backend, weight, bias, spec: ConvSpec, cob: int, pack=_pack_dense):
    """Device buffers of ``pack(weight, bias, spec, cob)``, cached while weights are equal."""
    key = (id(backend.ctx), pack.__name__, weight.shape, spec.groups, cob)
    for i, entry in enumerate(_PACKED):
        k, w_copy, b_copy, wbuf, bbuf = entry
        if k == key and _same(w_copy, weight) and _same(b_copy, bias):
            # by index: list.remove would compare the entries' arrays with ==
            _PACKED.insert(0, _PACKED.pop(i))
            return wbuf, bbuf
    wp, bp = pack(weight, bias, spec, cob)
    wbuf, bbuf = _const(cl, backend, wp), _const(cl, backend, bp)
    _PACKED.insert(0, (key, _kept(weight), _kept(bias), wbuf, bbuf))
    del _PACKED[_PACKED_SIZE:]
    return wbuf, bbuf


def _dense_defines(spec: ConvSpec, cpu: bool) -> dict[str, int]:
    """The build defines of dense_gemm for ``spec``."""
    cob, xb = _dense_blocking(spec.cout_g, spec.kh, spec.kw)
    nblk = math.ceil(spec.cout_g / (cob * 8))
    ho, wo = spec.h_out, spec.w_out
    defines = {
        "N": spec.n,
        "G": spec.groups,
        "CIN_G": spec.cin_g,
        "COUT_G": spec.cout_g,
        "H": spec.h,
        "W": spec.w,
        "HO": ho,
        "WO": wo,
        "WP": spec.w + spec.pad[2] + spec.pad[3],
        "KH": spec.kh,
        "KW": spec.kw,
        "SH": spec.stride[0],
        "SW": spec.stride[1],
        "DH": spec.dilation[0],
        "DW": spec.dilation[1],
        "PADT": spec.pad[0],
        "PADL": spec.pad[2],
        "COB": cob,
        "XB": xb,
        "NBLK": nblk,
    }
    strip, chunk = _dense_strip(spec, cob, xb, cpu)
    defines["STRIP"] = strip
    defines["CI_CHUNK"] = chunk
    return defines


def _run_dense(cl, backend, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    cob, xb = _dense_blocking(spec.cout_g, spec.kh, spec.kw)
    nblk = math.ceil(spec.cout_g / (cob * 8))
    ho, wo = spec.h_out, spec.w_out
    defines = _dense_defines(spec, backend.is_cpu)
    strip = defines["STRIP"]
    kernel = _kernel(backend, "dense_gemm", defines, info)
    xbuf = backend.input_buffer(x, info)
    t0 = time.perf_counter()
    wbuf, bbuf = _packed_weights(cl, backend, weight, bias, spec, cob)
    rmap = index_map(cl, backend, spec.h, spec.pad[0], spec.pad[1], spec.padding_mode)
    cmap = index_map(cl, backend, spec.w, spec.pad[2], spec.pad[3], spec.padding_mode)
    info.timings["upload"] = info.timings.get("upload", 0.0) + time.perf_counter() - t0
    out, obuf = backend.output((spec.n, spec.c_out, ho, wo), np.float32)
    gsize = (math.ceil(wo / (xb * strip)), ho, spec.n * spec.groups * nblk)
    ev = _launch(cl, backend, kernel, gsize, [xbuf, wbuf, bbuf, rmap, cmap, obuf])
    backend.fetch(out, obuf, info)  # the one blocking call: waits for the kernel
    _add_compute(info, [ev])
    return out


# Output channels x float8 pixel vectors per pointwise item: 6 x 2 (12 accumulators of
# 16 ymm registers) ran W8 in 8.8-9.4 ms; 4 x 2 in 9.6-11.1, 8 x 1 in 10.3, 4 x 3 in 13.7.
POINTWISE_TILE = (6, 2)
# Items per work-group: every channel block of a pixel group (so the group's input stays
# in L1 while each block reads it), and more pixel groups while that is under 64; 16 and
# 256 timed within noise of 64.
POINTWISE_ITEMS = 64


def _pack_pointwise(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, cot: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weights as pointwise.cl reads them: ``(G, NCB, CIN_G, COT)``."""
    wp, b = _channel_blocks(weight.reshape(spec.c_out, spec.cin_g, 1), bias, spec, cot)
    return np.ascontiguousarray(wp), b


def _pointwise_defines(spec: ConvSpec) -> dict[str, int]:
    """The build defines of pointwise for ``spec``."""
    cot, pv = POINTWISE_TILE
    cot = min(cot, spec.cout_g)
    return {
        "G": spec.groups,
        "CIN_G": spec.cin_g,
        "COUT_G": spec.cout_g,
        "P": spec.h * spec.w,
        "COT": cot,
        "PV": pv,
        "NCB": math.ceil(spec.cout_g / cot),
    }


def _run_pointwise(cl, backend, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    cot, pv = POINTWISE_TILE
    cot = min(cot, spec.cout_g)
    ncb = math.ceil(spec.cout_g / cot)
    plane = spec.h * spec.w
    defines = _pointwise_defines(spec)
    kernel = _kernel(backend, "pointwise", defines, info)
    xbuf = backend.input_buffer(x, info)
    t0 = time.perf_counter()
    wbuf, bbuf = _packed_weights(cl, backend, weight, bias, spec, cot, _pack_pointwise)
    info.timings["upload"] = info.timings.get("upload", 0.0) + time.perf_counter() - t0
    # Pixel groups start on the input's cache lines, and the output array is given the
    # input's alignment, so no load or store straddles two lines (stores shared by two
    # items would bounce between cores): 9.9-11.1 ms on W8 against 11.2-12.1 with the
    # input 16 bytes off its lines, as NumPy leaves large arrays.
    # (planes that are not whole float8 vectors, or an input not aligned to its floats,
    # leave no lead that serves every plane)
    offset = backend.wrapped_offset(x)
    if plane % 8 or offset % 4:
        offset = 0
    out, obuf = backend.output((spec.n, spec.c_out, spec.h, spec.w), np.float32, offset)
    lead = offset // 4
    gsize = (ncb, math.ceil((plane + lead) / (8 * pv)), spec.n * spec.groups)
    args = [xbuf, wbuf, bbuf, obuf, np.int32(lead)]
    ev = _launch(cl, backend, kernel, gsize, args, fill_to=POINTWISE_ITEMS)
    backend.fetch(out, obuf, info, offset)  # the one blocking call: waits for the kernel
    _add_compute(info, [ev])
    return out


def _virtual_maps(cl, backend, spec: ConvSpec, th: int, tw: int):
    """The virtual-grid row and column index maps that the Winograd input transform
    reads (``vrow``, ``vcol`` in winograd_input.cl) for ``th`` x ``tw`` tiles."""
    mode, pad, stride = spec.padding_mode, spec.pad, spec.stride
    vrow = index_map(cl, backend, spec.h, pad[0], pad[1], mode, stride[0], 2 * th + 2)
    # the last item of a row reads up to 8 tiles (18 virtual columns) from its first
    vcol_len = 16 * math.ceil(tw / 8) + 2
    vcol = index_map(cl, backend, spec.w, pad[2], pad[3], mode, stride[1], vcol_len)
    return vrow, vcol


def _run_winograd_whole(cl, backend, x, weight, bias, spec: ConvSpec, info: RunInfo):
    """Winograd F(2x2, 3x3) as one launch of winograd_fused (see _wino_whole)."""
    kb, _ = _wino_tile(spec.cout_g)
    xv = 2
    nblk = math.ceil(spec.cout_g / kb)
    ho, wo = spec.h_out, spec.w_out
    th, tw = math.ceil(ho / 2), math.ceil(wo / 2)
    defines = {"N": spec.n, "G": spec.groups, "CIN_G": spec.cin_g, "COUT_G": spec.cout_g}
    defines.update({"H": spec.h, "W": spec.w, "HO": ho, "WO": wo, "TH": th, "TW": tw})
    defines.update({"KB": kb, "XV": xv, "NBLK": nblk})
    kernel = _kernel(backend, "winograd_fused", defines, info)
    xbuf = backend.input_buffer(x, info)
    t0 = time.perf_counter()
    vrow, vcol = _virtual_maps(cl, backend, spec, th, tw)
    ubuf, bbuf = _packed_weights(cl, backend, weight, bias, spec, kb, _pack_winograd)
    info.timings["upload"] = info.timings.get("upload", 0.0) + time.perf_counter() - t0
    out, obuf = backend.output((spec.n, spec.c_out, ho, wo), np.float32)
    nvec = spec.n * th * math.ceil(tw / 8)
    items = math.ceil(nvec / xv)
    args = [xbuf, vrow, vcol, ubuf, bbuf, obuf]
    ev = backend.enqueue(kernel, (items, spec.groups, 1), (WINO_WHOLE_LOCAL, 1, 1), args)
    backend.fetch(out, obuf, info)
    _add_compute(info, [ev])
    return out


def _run_winograd(cl, backend, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """Winograd F(2x2, 3x3): input transform, 16 x groups GEMMs, output transform
    (the last two as one kernel when :func:`_wino_fused`).

    Runs in chunks of tile rows whose transformed planes (V, and M unless fused) take at
    most WINO_CHUNK_BYTES (WINO_FUSED_CHUNK_BYTES fused); every tile is computed the
    same way whatever the chunking.
    """
    kb, xv = _wino_tile(spec.cout_g)
    nblk = math.ceil(spec.cout_g / kb)
    kp = nblk * kb
    ho, wo = spec.h_out, spec.w_out
    th, tw = math.ceil(ho / 2), math.ceil(wo / 2)
    rows_total = spec.n * th
    fused = _wino_fused(spec, backend.is_cpu)
    # V, and M unless fused, per tile row
    row_bytes = 16 * 4 * tw * (spec.c_in + (0 if fused else spec.groups * kp))
    budget = min(WINO_CHUNK_BYTES, WINO_FUSED_CHUNK_BYTES) if fused else WINO_CHUNK_BYTES
    chunk = max(1, min(rows_total, budget // row_bytes))
    pp = math.ceil(chunk * tw / (8 * xv)) * 8 * xv
    common = {"N": spec.n, "G": spec.groups, "PP": pp, "TH": th, "TW": tw}
    k_in = _kernel(
        backend,
        "winograd_input",
        {**common, "CIN_G": spec.cin_g, "H": spec.h, "W": spec.w},
        info,
    )
    if fused:
        defs = {**common, "CIN_G": spec.cin_g, "COUT_G": spec.cout_g, "HO": ho, "WO": wo}
        defs.update({"KB": kb, "XV": xv, "NBLK": nblk})
        k_fused = _kernel(backend, "winograd_gemm_out", defs, info)
    else:
        defs = {"G": spec.groups, "CIN_G": spec.cin_g, "PP": pp, "KB": kb, "XV": xv}
        k_mm = _kernel(backend, "winograd_gemm", {**defs, "NBLK": nblk}, info)
        defs = {**common, "COUT_G": spec.cout_g, "HO": ho, "WO": wo, "KP": kp}
        k_out = _kernel(backend, "winograd_output", defs, info)
    xbuf = backend.input_buffer(x, info)
    t0 = time.perf_counter()
    vrow, vcol = _virtual_maps(cl, backend, spec, th, tw)
    info.timings["upload"] = info.timings.get("upload", 0.0) + time.perf_counter() - t0
    vbuf = backend.scratch("winograd_v", 4 * 16 * spec.c_in * pp)
    if not fused:
        mbuf = backend.scratch("winograd_m", 4 * 16 * spec.groups * kp * pp)
    out, obuf = backend.output((spec.n, spec.c_out, ho, wo), np.float32)
    events = []
    ubuf = bbuf = None
    if weight.nbytes < WINO_OVERLAP_BYTES:
        # small weights: checked before the first launch, so that the launches follow
        # each other without the host in between (the host shares the cores with the
        # device's threads: W7's 74 KB check between two launches left the device idle
        # for 0.07 ms)
        ubuf, bbuf = _packed_weights(cl, backend, weight, bias, spec, kb, _pack_winograd)
    for row0 in range(0, rows_total, chunk):
        rows = min(chunk, rows_total - row0)
        tiles = rows * tw
        r0 = np.int32(row0)
        gin = (math.ceil(tw / 8) * rows, spec.c_in, 1)
        gmm = (math.ceil(tiles / (8 * xv)), nblk, 16 * spec.groups)
        gout = (math.ceil(tiles / 8), spec.cout_g, spec.groups)
        args = [xbuf, vrow, vcol, vbuf, r0, np.int32(rows)]
        events.append(_launch(cl, backend, k_in, gin, args))
        if ubuf is None:
            # the exact weight check (a read of the weights and of their copy) runs
            # while the device transforms the first chunk's input
            t0 = time.perf_counter()
            ubuf, bbuf = _packed_weights(cl, backend, weight, bias, spec, kb, _pack_winograd)
            info.timings["upload"] += time.perf_counter() - t0
        if fused:
            args = [ubuf, vbuf, bbuf, obuf, r0, np.int32(tiles)]
            gs = (nblk, math.ceil(tiles / (8 * xv)), spec.groups)
            events.append(_launch(cl, backend, k_fused, gs, args))
            continue
        events.append(_launch(cl, backend, k_mm, gmm, [ubuf, vbuf, mbuf]))
        args = [mbuf, bbuf, obuf, r0, np.int32(tiles)]
        events.append(_launch(cl, backend, k_out, gout, args))
    backend.fetch(out, obuf, info)  # the one blocking call: waits for every launch
    _add_compute(info, events)
    return out


# dw_channels (float8 across output channels, see its header) for depthwise layers on
# CPU devices with at least this many output channels and output rows at most this wide.
DW_CHANNELS_MIN_COUT = 32
DW_CHANNELS_MAX_WO = 32
# Output columns per dw_channels item at most (accumulators: XB float8 registers).
DW_CHANNELS_XB = 8
# Items per work-group wanted: each item is short (one row segment of 8 channels).
DW_CHANNELS_ITEMS = 16


def _dw_channels_pays(spec: ConvSpec, cpu: bool) -> bool:
    """Depthwise layers with many channels on small maps run dw_channels: their rows are
    too short for dw_direct's float8 along the width (a 7-wide row runs 7 of 8 lanes
    through the padded border path, one channel plane per item). CPU devices only: the
    layouts and work-group sizes were chosen on PoCL, GPUs keep their own kernels."""
    return (
        cpu
        and spec.cin_g == 1
        and spec.c_out >= DW_CHANNELS_MIN_COUT
        and spec.w_out <= DW_CHANNELS_MAX_WO
        and spec.padding_mode == "zeros"
        and spec.kh * spec.kw <= DENSE_MAX_TAPS
    )


def _dw_channels_segments(w_out: int) -> tuple[int, int]:
    """(XB output columns per item, NSEG items per row): the fewest equal segments of
    at most DW_CHANNELS_XB columns (a 28-wide row: 4 of 7, not 3 of 8 and one of 4)."""
    nseg = -(-w_out // DW_CHANNELS_XB)
    xb = -(-w_out // nseg)
    return xb, -(-w_out // xb)


def _pack_dw_channels(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Taps as dw_channels reads them: ``(NCB, CSUM, KH, KW, 8)``; bias ``(NCB, 8)``."""
    ncb = -(-spec.c_out // step)
    w = np.zeros((ncb * step, spec.cin_g, spec.kh, spec.kw), np.float32)
    w[: spec.c_out] = weight
    b = np.zeros(ncb * step, np.float32)
    if bias is not None:
        b[: spec.c_out] = bias
    packed = w.reshape(ncb, step, spec.cin_g, spec.kh, spec.kw).transpose(0, 2, 3, 4, 1)
    return np.ascontiguousarray(packed), b


def _run_dw_channels(cl, backend, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    xb, nseg = _dw_channels_segments(spec.w_out)
    ncb = -(-spec.c_out // 8)
    defines = {
        "C_IN": spec.c_in,
        "C_OUT": spec.c_out,
        "CSUM": spec.cin_g,
        "CMULT": spec.cout_g,
        "KH": spec.kh,
        "KW": spec.kw,
        "SH": spec.stride[0],
        "SW": spec.stride[1],
        "DH": spec.dilation[0],
        "DW": spec.dilation[1],
        "PADT": spec.pad[0],
        "PADL": spec.pad[2],
        "N": spec.n,
        "H": spec.h,
        "W": spec.w,
        "HO": spec.h_out,
        "WO": spec.w_out,
        "XB": xb,
        "NSEG": nseg,
        "HAS_BIAS": int(bias is not None),
    }
    kernel = _kernel(backend, "dw_channels", defines, info)
    xbuf = backend.input_buffer(x, info)
    t0 = time.perf_counter()
    wbuf, bbuf = _packed_weights(cl, backend, weight, bias, spec, 8, _pack_dw_channels)
    info.timings["upload"] = info.timings.get("upload", 0.0) + time.perf_counter() - t0
    out, obuf = backend.output((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
    gsize = (nseg, spec.h_out, spec.n * ncb)
    ev = _launch(cl, backend, kernel, gsize, [xbuf, wbuf, bbuf, obuf], fill_to=DW_CHANNELS_ITEMS)
    backend.fetch(out, obuf, info)  # the one blocking call: waits for the kernel
    _add_compute(info, [ev])
    return out


def _run_direct(cl, backend, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    xbuf = backend.input_buffer(x, info)
    out_shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    out, obuf = backend.output(out_shape, np.float32)
    ev = _run_dw(
        cl,
        backend,
        xbuf,
        (spec.n, spec.c_in, spec.h, spec.w),
        weight.reshape(spec.c_out, -1),
        bias,
        obuf,
        out_shape,
        csum=spec.cin_g,
        cmult=spec.cout_g,
        kh=spec.kh,
        kw=spec.kw,
        stride=spec.stride,
        dilation=spec.dilation,
        pad=spec.pad,
        mode=spec.padding_mode,
        info=info,
    )
    backend.fetch(out, obuf, info)  # the one blocking call: waits for the kernel
    _add_compute(info, [ev])
    return out


def _is_box(col: np.ndarray) -> bool:
    """Every column factor constant (box filters): running sums apply."""
    if col.shape[1] < 4:
        return False
    spread = np.abs(col - col[:, :1]).max()
    return bool(spread <= 1e-6 * max(float(np.abs(col).max()), 1e-30))


# Rows per sep_boxsum item (the running sum restarts every BOX_ROWS rows) and at most
# this many float8 vectors per item along the width. Each item walks down its rows, so
# it takes whole rows (up to 4096 columns): three sequential streams. Strips of 8-128
# columns ran 2-3x slower (a 2048-wide image, A/B in one process).
BOX_ROWS = 32
BOX_MAX_XV = 512


def _boxsum_defines(spec: ConvSpec) -> dict[str, int]:
    """The build defines of sep_boxsum for ``spec``."""
    # Image sizes (and xv, which follows the width) are kernel arguments; the running-sum
    # array is sized for the widest strip, so one build serves every image size.
    return {
        "C_IN": spec.c_in,
        "C_OUT": spec.c_out,
        "CMULT": spec.cout_g,
        "KH": spec.kh,
        "RB": BOX_ROWS,
        "XV_MAX": BOX_MAX_XV,
    }


def _run_boxsum(cl, backend, xbuf, taps: np.ndarray, tmp, spec: ConvSpec, info: RunInfo):
    """Vertical box pass by running sums into ``tmp`` ``(N, C_out, H_out, W)``."""
    strips = math.ceil(spec.w / (8 * BOX_MAX_XV))
    xv = math.ceil(spec.w / (8 * strips))
    kernel = _kernel(backend, "sep_boxsum", _boxsum_defines(spec), info)
    rmap = index_map(cl, backend, spec.h, spec.pad[0], spec.pad[1], spec.padding_mode)
    wbuf = _const(cl, backend, taps)
    gsize = (
        strips,
        math.ceil(spec.h_out / BOX_ROWS),
        spec.n * spec.c_out,
    )
    sizes = (spec.n, spec.h, spec.w, spec.h_out, xv)
    return _launch(cl, backend, kernel, gsize, [xbuf, wbuf, rmap, tmp, *map(np.int32, sizes)])


def _run_separable(
    cl, backend, x, bias, spec: ConvSpec, factors: tuple[np.ndarray, np.ndarray], info
) -> np.ndarray:
    """Vertical pass (rows through the row map) into scratch, then horizontal pass."""
    col, row = factors  # (C_out, 1, kH), (C_out, 1, kW)
    ho, wo = spec.h_out, spec.w_out
    xbuf = backend.input_buffer(x, info)
    tmp_shape = (spec.n, spec.c_out, ho, spec.w)
    tmp = backend.scratch("separable_tmp", 4 * int(np.prod(tmp_shape)))
    col = col.reshape(spec.c_out, spec.kh).astype(np.float32)
    if _is_box(col) and spec.stride[0] == 1 and spec.dilation[0] == 1:
        ev1 = _run_boxsum(cl, backend, xbuf, col[:, 0].copy(), tmp, spec, info)
    else:
        ev1 = _run_dw(
            cl,
            backend,
            xbuf,
            (spec.n, spec.c_in, spec.h, spec.w),
            col,
            None,
            tmp,
            tmp_shape,
            csum=1,
            cmult=spec.cout_g,
            kh=spec.kh,
            kw=1,
            stride=(spec.stride[0], 1),
            dilation=(spec.dilation[0], 1),
            pad=(spec.pad[0], spec.pad[1], 0, 0),
            mode=spec.padding_mode,
            info=info,
        )
    out_shape = (spec.n, spec.c_out, ho, wo)
    out, obuf = backend.output(out_shape, np.float32)
    ev2 = _run_dw(
        cl,
        backend,
        tmp,
        tmp_shape,
        row.reshape(spec.c_out, spec.kw).astype(np.float32),
        bias,
        obuf,
        out_shape,
        csum=1,
        cmult=1,
        kh=1,
        kw=spec.kw,
        stride=(1, spec.stride[1]),
        dilation=(1, spec.dilation[1]),
        pad=(0, 0, spec.pad[2], spec.pad[3]),
        mode=spec.padding_mode,
        info=info,
    )
    backend.fetch(out, obuf, info)  # the one blocking call: waits for both passes
    _add_compute(info, [ev1, ev2])
    return out


def programs(
    spec: ConvSpec, weight: np.ndarray, algo: str, *, cpu: bool, local_mem: int | None
) -> list[tuple[str, dict[str, int | str]]] | None:
    """The programs (kernel file, build defines) a run of ``spec`` builds on a device,
    found without the device: what the cost model prices before starting OpenCL.

    ``cpu`` and ``local_mem`` describe the device (from its record when it is not
    started). None when this cannot be told (Winograd paths, the GPU kernels of
    :mod:`convcli.backends.opencl_gpu`, an ``algo`` that no path here runs): the caller
    then assumes nothing is built.
    """
    from convcli.backends import opencl_gpu

    try:
        plan, factors = choose(spec, weight, algo, cpu=cpu)
        plan = opencl_gpu.device_plan(plan, spec, algo, cpu)
    except ConvValueError:
        return None
    if spec.n == 0:
        return []
    if plan is not None and plan.kernel == "fft_local":
        from convcli.backends import opencl_fft_local

        return opencl_fft_local.programs(spec, local_mem)
    if plan is not None and plan.kernel in ("direct_local", "gemm_local"):
        return None  # the GPU kernels' builds are not predicted
    if plan is None:
        from convcli.backends.opencl_backend import _direct_config

        return [("conv2d_direct", _direct_config(spec, np.dtype(spec.dtype), cpu).defines)]
    if plan.kernel == "host_fft":
        return []
    if plan.algo == "fft":
        from convcli.backends import opencl_fft

        return [("fft_conv", opencl_fft.build_defines(spec, local_mem, spec.has_bias))]
    dims = (spec.n, spec.c_in, spec.h, spec.w)
    out = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    if plan.algo == "separable":
        col = factors[0].reshape(spec.c_out, spec.kh).astype(np.float32)
        tmp = (spec.n, spec.c_out, spec.h_out, spec.w)
        if _is_box(col) and spec.stride[0] == 1 and spec.dilation[0] == 1:
            first = ("sep_boxsum", _boxsum_defines(spec))
        else:
            first = ("dw_direct", _dw_defines(
                dims, tmp, csum=1, cmult=spec.cout_g, kh=spec.kh, kw=1,
                stride=(spec.stride[0], 1), dilation=(spec.dilation[0], 1),
                pad=(spec.pad[0], spec.pad[1], 0, 0), has_bias=False,
            ))  # fmt: skip
        second = ("dw_direct", _dw_defines(
            tmp, out, csum=1, cmult=1, kh=1, kw=spec.kw, stride=(1, spec.stride[1]),
            dilation=(1, spec.dilation[1]), pad=(0, 0, spec.pad[2], spec.pad[3]),
            has_bias=spec.has_bias,
        ))  # fmt: skip
        return [first, second]
    if plan.kernel == "winograd":
        return None
    if plan.kernel == "dense_gemm":
        return [("dense_gemm", _dense_defines(spec, cpu))]
    if plan.kernel == "pointwise":
        return [("pointwise", _pointwise_defines(spec))]
    return [("dw_direct", _dw_defines(
        dims, out, csum=spec.cin_g, cmult=spec.cout_g, kh=spec.kh, kw=spec.kw,
        stride=spec.stride, dilation=spec.dilation, pad=spec.pad, has_bias=spec.has_bias,
    ))]  # fmt: skip


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
        Provides ``ctx``, ``queue`` (profiling enabled), ``is_cpu`` and ``program()``.
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
    from convcli.backends import opencl_gpu

    plan, factors = planned(spec, weight, algo, cpu=backend.is_cpu)
    plan = opencl_gpu.device_plan(plan, spec, algo, backend.is_cpu)
    if plan is None:
        return None
    import pyopencl as cl

    if spec.n == 0:
        info.algo = plan.algo
        return np.zeros((0, spec.c_out, spec.h_out, spec.w_out), dtype=np.float32)
    if plan.kernel == "host_fft":
        from convcli.backends.numpy_backend import NumpyBackend

        note = (
            f"a {spec.kh}x{spec.kw} kernel is too wide for the device's FFT tiles: "
            "its FFT ran on the host (NumPy)"
        )
        if note not in info.notices:
            info.notices.append(note)
        return NumpyBackend().run(x, weight, bias, spec, algo="fft", info=info)
    xf = np.ascontiguousarray(x, dtype=np.float32)
    wf = np.ascontiguousarray(weight, dtype=np.float32)
    bf = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    # One call at a time: kernel objects (set_args) and the pools are shared.
    with _LOCK:
        try:
            if plan.kernel == "fft_local":
                from convcli.backends import opencl_fft_local

                return opencl_fft_local.run(backend, xf, wf, bf, spec, algo=algo, info=info)
            if plan.algo == "fft":
                from convcli.backends import opencl_fft

                return opencl_fft.run(backend, xf, wf, bf, spec, info=info)
            if plan.kernel == "direct_local" and plan.algo == "separable":
                out = opencl_gpu.run_separable(cl, backend, xf, bf, spec, factors, info)
            elif plan.kernel == "direct_local":
                out = opencl_gpu.run_local(cl, backend, xf, wf, bf, spec, info)
            elif plan.kernel == "gemm_local":
                out = opencl_gpu.run_gemm(cl, backend, xf, wf, bf, spec, info)
            elif plan.algo == "separable":
                out = _run_separable(cl, backend, xf, bf, spec, factors, info)
            elif plan.kernel == "winograd" and _wino_whole(spec, backend.is_cpu):
                out = _run_winograd_whole(cl, backend, xf, wf, bf, spec, info)
            elif plan.kernel == "winograd":
                out = _run_winograd(cl, backend, xf, wf, bf, spec, info)
            elif plan.kernel == "dense_gemm":
                out = _run_dense(cl, backend, xf, wf, bf, spec, info)
            elif plan.kernel == "pointwise":
                out = _run_pointwise(cl, backend, xf, wf, bf, spec, info)
            elif plan.kernel == "dw_channels":
                out = _run_dw_channels(cl, backend, xf, wf, bf, spec, info)
            else:
                out = _run_direct(cl, backend, xf, wf, bf, spec, info)
        except opencl_gpu.NoFit:
            return None  # auto or direct (all it serves): the generic kernel runs it
        except _BuildFailed as exc:
            if algo in ("auto", "direct"):
                return None  # the generic kernel can run this
            raise exc.__cause__ from None
        except cl.Error as exc:
            from convcli.backends.opencl_backend import launch_refused

            if algo in ("auto", "direct") and launch_refused(exc):
                # refused even with one item per group: the generic kernel may fit
                return None
            raise
    info.algo = plan.algo
    return out
