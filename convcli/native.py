"""Image filters on native 8- and 16-bit samples: conversion, convolution, output
mapping and rounding in one fused step per strip.

The float path of a file job converts the decoded samples to a float32 copy, convolves
it into another float32 array, maps the result and rounds it in float64 blocks: for an
image filter those host passes cost more than the convolution. :func:`filter_strip`
does the whole step from the native strip to the native result: on OpenCL in one
program (``kernels_cl/native_filter.cl``: the device reads and writes 1-2 bytes per
sample), on NumPy in cache-sized blocks on the backend's threads. It covers the common
case (one 2-D kernel for every channel, the ``clip``, ``offset`` and ``abs`` mappings,
8- or 16-bit output) and returns None for anything else, so the caller keeps its float
path for the rest.

Results are those of the float path within the final rounding: the value is computed in
float32 and rounded half to even in float32, so a level can differ from the float64
rounding of the exact result only where the float32 result lies within float32 rounding
of a half level (at most one level).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from convcli.errors import BackendError
from convcli.plan import separable_factors
from convcli.runinfo import RunInfo, fallback_notice

NativeBackend = Literal["auto", "opencl", "numpy"]
NATIVE_MAPS: tuple[str, ...] = ("clip", "offset", "abs")

# NumPy computes kernels that are not rank 1 tap by tap (two passes over a block per
# tap); larger ones are left to the float path, whose FFT and GEMM paths win there.
NUMPY_DIRECT_MAX_TAPS = 49
# OpenCL's direct kernel unrolls every tap for ROWS rows: larger kernels that are not
# rank 1 compile slowly and run no faster than the float path's FFT.
OPENCL_DIRECT_MAX_TAPS = 121
# The OpenCL kernels' output rows per item (vertical pass; direct), float8 vectors per
# item (horizontal pass) and the work-group size wanted (one for every launch: each new
# size costs PoCL a compile at first launch).
CL_ROWS_V = 8
CL_ROWS = 4
CL_XV = 4
CL_LOCAL = (64, 1)
# Rank-1 kernels at stride 1 along rows run both passes in one launch through local
# memory (native_filter_fused): the two-launch path's float intermediate, 12 MB for a
# megapixel RGB image, went out to memory and back (2.9 -> 1.9 ms of CPU for a 5x5
# binomial on 1000x1000x3). False: the two launches (kept for comparison, and for
# column strides > 1 and halos whose rows of sums exceed CL_FUSED_LOCAL_BYTES).
CL_FUSED = True
CL_FUSED_LOCAL_BYTES = 32 * 1024
# Float values per row of a NumPy block (x channels: the staging rows of one column
# tile) and output rows per block: a block's float32 staging stays within L2.
NUMPY_TILE_VALUES = 4096
NUMPY_BLOCK_ROWS = 32
# Rough costs for backend="auto" (seconds), fitted to strips of 16x64 to 256x6000 RGB
# pixels on the 2-core project machine (filter_strip timed per backend, medians of
# interleaved runs): per output value, NumPy's direct taps (per nonzero tap), NumPy's
# Toeplitz GEMMs (per Toeplitz column of both passes), OpenCL (per tap of its passes);
# and each backend's fixed cost per strip. OpenCL's start-up and the program's build
# are priced as conv2d's are (:func:`convcli.backends.choice.opencl_once`).
NUMPY_SECONDS_PER_VALUE = 0.5e-9
NUMPY_SECONDS_PER_TAP = 0.7e-9
NUMPY_SEPARABLE_PER_VALUE = 3.3e-9
NUMPY_SEPARABLE_PER_COLUMN = 0.05e-9
NUMPY_CALL_SECONDS = 1.5e-4
CL_SECONDS_PER_VALUE = 1.2e-9
CL_SECONDS_PER_TAP = 0.05e-9
CL_LAUNCH_SECONDS = 3e-4


def filter_strip(
    strip: np.ndarray,
    *,
    top: float,
    kernel: np.ndarray,
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    bias: float = 0.0,
    scale: float = 1.0,
    offset: float = 0.0,
    out_map: str = "clip",
    out_top: int = 255,
    out: np.ndarray | None = None,
    pad: tuple[int, int, int, int] | None = None,
    padding_mode: str = "zeros",
    backend: NativeBackend = "auto",
    device: str | None = None,
    strips: int = 1,
    info: RunInfo | None = None,
) -> np.ndarray | None:
    """Filter a padded native strip and round the result to output levels.

    The value of an output sample is ``v = correlate(strip / top, kernel) + bias`` (a
    'valid' cross-correlation, like torch: no flip), mapped like
    :func:`convcli.pixels.map_output` (``v * scale + offset``; then ``abs`` takes the
    magnitude, ``offset`` adds 0.5, ``clip`` nothing), clipped to [0, 1] (NaN to 0) and
    rounded to ``out_top`` levels half to even like :func:`convcli.pixels.quantize`.

    Parameters
    ----------
    strip : ndarray
        ``(rows_in, W_in, C)`` uint8 or uint16 samples, channels last, already padded on
        all four sides (the rows and columns the kernel needs around the output); or,
        with ``pad``, the unpadded ``(H, W, C)`` image.
    top : float
        The input's largest level (255, 65535, or ``2**bits - 1``): samples are divided
        by it.
    kernel : ndarray
        ``(kH, kW)`` taps applied to every channel (depthwise, groups = C).
    stride, dilation : (int, int)
    bias, scale, offset : float
    out_map : {"clip", "offset", "abs"}
    out_top : {255, 65535}
        Output levels: uint8 or uint16 results.
    out : ndarray, optional
        ``(rows_out, W_out, C)`` array of the output dtype to write into.
    pad : (int, int, int, int), optional
        ``(top, bottom, left, right)``: ``strip`` is the unpadded image, padded as
        :func:`pad_samples` pads it with ``padding_mode`` (the result is the same as
        filtering that padded copy). OpenCL's two-pass kernels read the image through
        the padding's row and column maps and make no padded copy; the other paths pad
        on the host.
    padding_mode : {"zeros", "reflect", "replicate", "circular", "symmetric"}
    backend : {"auto", "opencl", "numpy"}
        ``auto`` takes the one :func:`choose_backend` expects to be faster, counting
        the OpenCL build when the program is not built yet in this process.
    device : str, optional
        OpenCL device (as for :func:`convcli.conv2d`).
    strips : int
        How many strips of this size the caller will filter with the same kernel:
        ``auto`` spreads the build cost over them.
    info : RunInfo, optional
        Gets the backend, device and algorithm (``native-separable`` or
        ``native-direct``), and seconds under ``build``, ``upload``, ``compute`` (kernel
        time on OpenCL, the whole call on NumPy), ``download`` and ``total``.

    Returns
    -------
    ndarray or None
        ``(rows_out, W_out, C)`` uint8 (``out_top`` 255) or uint16 (65535), or None
        when this case is not covered (other dtypes or mappings, non-finite values, a
        strip smaller than the kernel, a large kernel that is not rank 1): the caller
        then takes its float path.

    Raises
    ------
    BackendError
        ``backend="opencl"`` and the device failed (``auto`` runs NumPy instead, with a
        notice in ``info``).

    Examples
    --------
    >>> s = np.full((3, 3, 1), 200, np.uint8)
    >>> filter_strip(s, top=255.0, kernel=np.full((3, 3), 1 / 9, np.float32),
    ...              backend="numpy")[..., 0].tolist()
    [[200]]
    """
    plan = _padded_plan(strip, pad, padding_mode, top, kernel, stride, dilation, bias,
                        scale, offset, out_map, out_top, out)  # fmt: skip
    if plan is None:
        return None
    if backend not in ("auto", "opencl", "numpy"):
        raise ValueError(f"backend must be 'auto', 'opencl' or 'numpy', got {backend!r}")
    chosen = choose_backend(plan, device, strips) if backend == "auto" else backend
    t0 = time.perf_counter()
    part = RunInfo()
    result = None
    if chosen == "opencl":
        try:
            result = _run_opencl(plan, device, part)
        except BackendError as exc:
            if backend != "auto":
                raise
            # auto: a device that failed (or a program that did not build) leaves NumPy,
            # and says so as conv2d does
            part = RunInfo()
            part.notices.append(fallback_notice(exc))
    if chosen == "numpy" or (result is None and backend == "auto"):
        notices = part.notices
        part = RunInfo()
        part.notices.extend(notices)
        result = _run_numpy(plan, part)
    if result is None:
        return None
    if info is not None:
        part.timings["total"] = time.perf_counter() - t0
        info.add(part)
    if out is not None and result is not out:
        out[...] = result
        return out
    return result


def _padded_plan(strip, pad, padding_mode, top, kernel, stride, dilation, bias, scale, offset,
                 out_map, out_top, out) -> _Plan | None:  # fmt: skip
    """:func:`filter_strip`'s plan (``pad``: ``strip`` is the unpadded image)."""
    source = None
    if pad is not None:
        pads = _pads(pad, padding_mode)
        if any(pads) and isinstance(strip, np.ndarray) and strip.ndim == 3:
            if 0 in strip.shape[:2]:
                return None
            # plan on the padded shape; the samples stay unpadded until a path needs them
            source = strip
            rows, cols = strip.shape[0] + pads[0] + pads[1], strip.shape[1] + pads[2] + pads[3]
            strip = np.broadcast_to(np.zeros((), strip.dtype), (rows, cols, strip.shape[2]))
    plan = _plan(strip, top, kernel, stride, dilation, bias, scale, offset, out_map, out_top, out)
    if plan is not None and source is not None:
        plan.source, plan.pads, plan.padding_mode = source, pads, padding_mode
    return plan


def opencl_start_seconds(
    strip: np.ndarray,
    *,
    top: float,
    kernel: np.ndarray,
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    bias: float = 0.0,
    scale: float = 1.0,
    offset: float = 0.0,
    out_map: str = "clip",
    out_top: int = 255,
    pad: tuple[int, int, int, int] | None = None,
    padding_mode: str = "zeros",
    device: str | None = None,
    strips: int = 1,
) -> float | None:
    """What OpenCL is expected to cost once (starting it, unless this process has, and
    its program) before :func:`filter_strip` with ``backend="auto"`` and the same
    arguments filters on it; None where ``auto`` takes NumPy (or nothing covers the
    case). Nothing is started here."""
    from convcli.backends import started_opencl

    plan = _padded_plan(strip, pad, padding_mode, top, kernel, stride, dilation, bias,
                        scale, offset, out_map, out_top, None)  # fmt: skip
    if plan is None or choose_backend(plan, device, strips) != "opencl":
        return None
    return _opencl_once(plan, device, started_opencl(device) or None)


def prepare(
    strip: np.ndarray,
    *,
    top: float,
    kernel: np.ndarray,
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    bias: float = 0.0,
    scale: float = 1.0,
    offset: float = 0.0,
    out_map: str = "clip",
    out_top: int = 255,
    backend: NativeBackend = "auto",
    device: str | None = None,
    strips: int = 1,
    info: RunInfo | None = None,
) -> str | None:
    """Pay OpenCL's one-off costs for :func:`filter_strip` calls on strips like
    ``strip`` before the first one arrives (a caller runs this on a thread of its own
    while the strips are decoded).

    ``strip`` only gives the shape and dtype (a broadcast array will do). Where
    ``backend`` is ``"opencl"``, or ``"auto"`` and :func:`choose_backend` picks OpenCL
    for ``strips`` such strips, OpenCL is started, the program built and its kernels
    launched once on a strip of a few rows, so that the first real strip finds them
    ready and ``auto`` then chooses OpenCL for it as it did here. Returns the backend
    the strips will take (``"numpy"`` where OpenCL failed: ``info`` gets the notice a
    strip would have given), or None for a call :func:`filter_strip` does not cover.
    """
    plan = _plan(strip, top, kernel, stride, dilation, bias, scale, offset, out_map, out_top,
                 None)  # fmt: skip
    if plan is None:
        return None
    chosen = choose_backend(plan, device, strips) if backend == "auto" else backend
    if chosen != "opencl":
        return chosen
    # a strip of a few output rows and one work-group's columns: the same program, the
    # same launch sizes (PoCL compiles a kernel for its work-group size at first launch)
    ekh, ekw = plan.dh * (plan.kh - 1) + 1, plan.dw * (plan.kw - 1) + 1
    rows_in = min(strip.shape[0], ekh + plan.sh * (CL_ROWS_V - 1))
    w_in = min(strip.shape[1], ekw + plan.sw * (CL_LOCAL[0] * 8 // plan.c))
    small = np.zeros((rows_in, w_in, plan.c), strip.dtype)
    part = RunInfo()
    try:
        _run_opencl(_plan(small, top, kernel, stride, dilation, bias, scale, offset, out_map,
                          out_top, None), device, part)  # fmt: skip
    except BackendError as exc:
        if backend != "auto":
            raise
        part = RunInfo()
        part.notices.append(fallback_notice(exc))
        chosen = "numpy"
    if info is not None:
        # what the start paid (the program's build); not the throwaway strip's work
        kept = RunInfo(notices=part.notices)
        if "build" in part.timings:
            kept.timings["build"] = part.timings["build"]
        info.add(kept)
    return chosen


def shared_kernel(
    weight: np.ndarray, bias: np.ndarray | float | None, groups: int | None, channels: int
) -> tuple[np.ndarray, float] | None:
    """The ``(kH, kW)`` kernel and the scalar bias of a convolution that applies one
    kernel to every channel (what :func:`filter_strip` computes), or None.

    ``weight`` is a 2-D kernel (every channel, ``groups`` None or ``channels``) or a 4-D
    weight ``(channels, 1, kH, kW)`` with ``groups == channels`` whose kernels are all
    equal; ``bias`` None, a scalar, or equal values.

    >>> k, b = shared_kernel(np.ones((3, 1, 2, 2)), np.zeros(3), 3, 3)
    >>> k.shape, b
    ((2, 2), 0.0)
    >>> shared_kernel(np.ones((3, 3, 2, 2)), None, 1, 3) is None
    True
    """
    w = np.asarray(weight)
    if w.ndim == 2:
        if groups not in (None, channels):
            return None
        kernel = w
    elif w.ndim == 4:
        if groups != channels or w.shape[:2] != (channels, 1) or not np.all(w == w[:1]):
            return None
        kernel = w[0, 0]
    else:
        return None
    if bias is None:
        value = 0.0
    else:
        b = np.asarray(bias).ravel()
        if b.size == 0 or not np.all(b == b[0]) or b.size not in (1, channels):
            return None
        value = float(b[0])
    return np.asarray(kernel), value


# ---------------------------------------------------------------------------------------
# the plan: what both backends compute


@dataclass
class _Plan:
    """The normalised call: geometry, folded constants and the kernel's factors."""

    strip: np.ndarray
    out: np.ndarray | None
    kernel: np.ndarray  # (kH, kW) float64
    col: np.ndarray | None  # rank-1 factors (float64), None when not rank 1
    row: np.ndarray | None
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    rows_out: int
    w_out: int
    c: int
    gain: float  # scale * out_top / top: raw correlation -> output levels
    bias_top: float  # (bias * scale + offset [+ 0.5]) * out_top
    out_top: int
    abs: bool
    out_dtype: np.dtype
    # with padding to apply: ``strip`` is a broadcast view of the padded shape until
    # :func:`_padded` pads ``source`` (the unpadded samples) on the host
    source: np.ndarray | None = None
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    padding_mode: str = "zeros"

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    @property
    def values(self) -> int:
        """Output samples."""
        return self.rows_out * self.w_out * self.c

    @property
    def separable(self) -> bool:
        return self.col is not None


def _pads(pad: object, mode: str) -> tuple[int, int, int, int]:
    from convcli.names import PADDING_MODES

    if mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {list(PADDING_MODES)}, got {mode!r}")
    try:
        pads = tuple(int(v) for v in pad)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        pads = ()
    if len(pads) != 4 or min(pads) < 0:
        raise ValueError(f"pad must be (top, bottom, left, right), all >= 0, got {pad!r}")
    return pads  # type: ignore[return-value]


def pad_samples(samples: np.ndarray, pad: tuple[int, int, int, int], mode: str) -> np.ndarray:
    """``(H, W, C)`` samples padded by ``pad`` = ``(top, bottom, left, right)`` as the
    padding mode's row and column maps say (:func:`convcli.spec.source_index`; zeros
    where zero padding applies): what :func:`filter_strip` with ``pad`` filters.

    >>> pad_samples(np.arange(3, dtype=np.uint8).reshape(1, 3, 1), (0, 0, 2, 1),
    ...             "reflect")[0, :, 0].tolist()
    [2, 1, 0, 1, 2, 1]
    """
    from convcli.spec import source_index

    top, bottom, left, right = _pads(pad, mode)
    if not (top or bottom or left or right):
        return np.ascontiguousarray(samples)
    h, w = samples.shape[:2]
    ridx, rvalid = source_index(h, top, bottom, mode)
    cidx, cvalid = source_index(w, left, right, mode)
    out = np.empty((len(ridx), len(cidx), samples.shape[2]), samples.dtype)
    inner = out[top : top + h, left : left + w]
    inner[...] = samples
    # the borders from the inner copy: rows first (every column of them), then columns
    for j in (*range(top), *range(top + h, len(ridx))):
        out[j, left : left + w] = samples[ridx[j]] if rvalid[j] else 0
    cols = np.r_[0:left, left + w : len(cidx)].astype(np.intp)
    if cols.size:
        out[:, cols] = out[:, left + cidx[cols]]
        zero = cols[~cvalid[cols]]
        if zero.size:
            out[:, zero] = 0
    return out


def _padded(plan: _Plan) -> None:
    """Give ``plan`` its padded strip on the host (a path that reads padded samples)."""
    if plan.source is not None:
        plan.strip = pad_samples(plan.source, plan.pads, plan.padding_mode)
        plan.source = None


def _pair(v: object) -> tuple[int, int] | None:
    try:
        a, b = (v, v) if isinstance(v, int | np.integer) else tuple(v)  # type: ignore[arg-type]
        a, b = int(a), int(b)
    except (TypeError, ValueError):
        return None
    return (a, b) if a >= 1 and b >= 1 else None


def _plan(strip, top, kernel, stride, dilation, bias, scale, offset, out_map, out_top, out):
    if not isinstance(strip, np.ndarray) or strip.ndim != 3:
        return None
    if strip.dtype not in (np.uint8, np.uint16) or out_map not in NATIVE_MAPS:
        return None
    if out_top not in (255, 65535):
        return None
    given = np.asarray(kernel)
    if given.ndim != 2 or given.size == 0 or given.dtype.kind not in "fiu":
        return None
    k = given.astype(np.float64)
    st, dl = _pair(stride), _pair(dilation)
    if st is None or dl is None:
        return None
    try:
        top, bias, scale, offset = float(top), float(bias), float(scale), float(offset)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (top, bias, scale, offset)) or top <= 0:
        return None
    if not np.isfinite(k).all():
        return None
    kh, kw = k.shape
    rows_in, w_in, c = strip.shape
    ekh, ekw = dl[0] * (kh - 1) + 1, dl[1] * (kw - 1) + 1
    if rows_in < ekh or w_in < ekw or c < 1:
        return None
    rows_out = (rows_in - ekh) // st[0] + 1
    w_out = (w_in - ekw) // st[1] + 1
    # 32-bit indices in the kernels; flat rows of W * C values
    if rows_in * w_in * c >= 2**31:
        return None
    out_dtype = np.dtype(np.uint8 if out_top == 255 else np.uint16)
    if out is not None and (out.shape != (rows_out, w_out, c) or out.dtype != out_dtype):
        return None
    # the value in output levels: acc * gain + bias_top, acc the correlation of raw samples
    gain = scale * out_top / top
    shift = offset + (0.5 if out_map == "offset" else 0.0)
    bias_top = (bias * scale + shift) * out_top
    if not (math.isfinite(gain) and math.isfinite(bias_top)):
        return None
    col = row = None
    if kh > 1 and kw > 1:
        # rank 1 within the precision of the kernel's own dtype (a float32 blur's)
        factors = separable_factors(given.reshape(1, 1, kh, kw))
        if factors is not None:
            col, row = factors[0].reshape(kh), factors[1].reshape(kw)
    return _Plan(
        strip=strip,
        out=out,
        kernel=k,
        col=col,
        row=row,
        kh=kh,
        kw=kw,
        sh=st[0],
        sw=st[1],
        dh=dl[0],
        dw=dl[1],
        rows_out=rows_out,
        w_out=w_out,
        c=c,
        gain=gain,
        bias_top=bias_top,
        out_top=out_top,
        abs=out_map == "abs",
        out_dtype=out_dtype,
    )


def _cl_separable(plan: _Plan) -> bool:
    """Two passes on OpenCL: a rank-1 kernel whose taps outnumber the passes' twice
    over (a 3x3 box runs faster direct: the intermediate costs a float row trip)."""
    return plan.separable and plan.taps > 2 * (plan.kh + plan.kw)


def estimate_seconds(plan: _Plan, backend: str) -> float:
    """Rough time of one strip on ``backend`` once it runs (comparable between the two
    only; OpenCL's one-off costs are :func:`_opencl_once`'s)."""
    if backend == "numpy":
        if plan.separable:
            per = NUMPY_SEPARABLE_PER_VALUE + NUMPY_SEPARABLE_PER_COLUMN * _toeplitz_columns(plan)
        else:
            taps = int(np.count_nonzero(plan.kernel))
            per = NUMPY_SECONDS_PER_VALUE + NUMPY_SECONDS_PER_TAP * taps
        return NUMPY_CALL_SECONDS + plan.values * per
    taps = plan.kh + plan.kw if _cl_separable(plan) else plan.taps
    return CL_LAUNCH_SECONDS + plan.values * (CL_SECONDS_PER_VALUE + CL_SECONDS_PER_TAP * taps)


def _toeplitz_columns(plan: _Plan) -> int:
    """Multiply-adds per output value of NumPy's two Toeplitz passes (see _SeparableJob)."""
    from convcli.backends.numpy.separable import toeplitz_block

    ekh = plan.dh * (plan.kh - 1) + 1
    ekw = (plan.kw - 1) * plan.dw * plan.c + 1
    bv, bh = toeplitz_block(ekh), toeplitz_block(ekw)
    mv = -(-((bv - 1) * plan.sh + ekh) // (bv * plan.sh))
    mh = -(-(bh - 1 + ekw) // bh)
    return mv * bv * plan.sh + mh * bh * plan.sw


def choose_backend(plan: _Plan, device: str | None = None, strips: int = 1) -> str:
    """``"opencl"`` or ``"numpy"`` for ``plan`` by :func:`estimate_seconds`: OpenCL only
    where it is available and wins even with its build spread over ``strips`` strips
    (no OpenCL context is opened for a job NumPy finishes first)."""
    from convcli.backends import started_opencl

    numpy_s = estimate_seconds(plan, "numpy")
    if not plan.separable and plan.taps > NUMPY_DIRECT_MAX_TAPS:
        numpy_s = math.inf  # NumPy leaves it to the float path
    if plan.taps > OPENCL_DIRECT_MAX_TAPS and not _cl_separable(plan):
        return "numpy"
    started = started_opencl(device)
    if started is False:
        return "numpy"
    gain = (numpy_s - estimate_seconds(plan, "opencl")) * max(1, strips)
    if gain <= 0:
        return "numpy"
    once = _opencl_once(plan, device, started, most=gain)
    return "opencl" if once < gain else "numpy"


def _opencl_once(plan: _Plan, device: str | None, started: Any, most: float = math.inf) -> float:
    """What OpenCL costs once before this plan's first strip: starting it (unless this
    process has) and the program, priced as conv2d's are
    (:func:`convcli.backends.choice.opencl_once`)."""
    from convcli.backends import choice

    if started is not None and _program_built(started, plan):
        return 0.0  # without the pricing's lookups: every strip of a run asks
    needed = [("native_filter", _defines(plan, _local_mem(started)))]
    return choice.opencl_once(needed, device, started or None, most)


# ---------------------------------------------------------------------------------------
# OpenCL


_CL_LOCK = threading.Lock()


def _defines(plan: _Plan, local_mem: int | None = None) -> dict[str, int | str]:
    """The program's build defines; ``local_mem``: the device's local memory, where
    known (see :func:`_cl_fused`)."""
    from convcli.backends.opencl.geometry import geometry_defines

    return {
        "IN_T": "uchar" if plan.strip.dtype == np.uint8 else "ushort",
        "OUT_T": "uchar" if plan.out_dtype == np.uint8 else "ushort",
        "C": plan.c,
        **geometry_defines(plan.kh, plan.kw, (plan.sh, plan.sw), (plan.dh, plan.dw)),
        "ABS": int(plan.abs),
        "ROWS": CL_ROWS_V if _cl_separable(plan) else CL_ROWS,
        "XV": CL_XV,
        "SEPARABLE": int(_cl_separable(plan)),
        "FUSED": int(_cl_fused(plan, local_mem)),
        "LX": CL_LOCAL[0],
    }


def _local_mem(backend: Any) -> int | None:
    """A started backend's local memory (None: no device open yet)."""
    return getattr(getattr(backend, "limits", None), "local_mem_bytes", None)


def _program_built(backend: Any, plan: _Plan) -> bool:
    key = ("native_filter", *_defines(plan, _local_mem(backend)).items())
    return key in getattr(backend, "_given", {})


def _run_opencl(plan: _Plan, device: str | None, info: RunInfo) -> np.ndarray | None:
    """The strip on the OpenCL device, or None where it cannot run there."""
    from convcli.backends import get_backend

    if plan.taps > OPENCL_DIRECT_MAX_TAPS and not _cl_separable(plan):
        return None
    be = get_backend("opencl", device)  # BackendError: no device, or it failed
    with _CL_LOCK:
        result = _opencl_strip(be, plan, info)
    info.backend, info.device = "opencl", be.device_name
    info.algo = "native-separable" if _cl_separable(plan) else "native-direct"
    return result


def _opencl_strip(be: Any, plan: _Plan, info: RunInfo) -> np.ndarray:
    from convcli.backends.opencl.runtime import translate_errors

    # the two-pass kernels read unpadded samples through the padding's maps; the
    # direct kernel reads a padded copy
    mapped = plan.source is not None and _cl_separable(plan)
    if not mapped:
        _padded(plan)
    strip = np.ascontiguousarray(plan.source if mapped else plan.strip)
    rows_in, w_in, c = plan.strip.shape
    n_out = plan.w_out * c
    defines = _defines(plan, be.limits.local_mem_bytes)
    i32, f32 = np.int32, np.float32
    with translate_errors("native filter on OpenCL"):
        xbuf = be.input_buffer(strip, info)
        result, obuf = be.output((plan.rows_out, plan.w_out, c), plan.out_dtype)
        top = f32(plan.out_top)
        bias_top = f32(plan.bias_top)
        rows = defines["ROWS"]
        groups_v = (math.ceil(n_out / 8), math.ceil(plan.rows_out / rows))
        if defines["FUSED"]:  # the program built, as _cl_fused decided
            events = [_enqueue_fused(be, plan, defines, strip, mapped, xbuf, obuf, info)]
        elif _cl_separable(plan):
            v_name = "native_filter_vmap" if mapped else "native_filter_v"
            kv_ = be.kernel("native_filter", defines, info, kernel_name=v_name)
            kh_ = be.kernel("native_filter", defines, info, kernel_name="native_filter_h")
            # vertical results: one float row per output row, every (padded) input
            # column, the pitch rounded to whole float8 vectors
            n_in = w_in * c
            t_pitch = -(-n_in // 8) * 8
            tmp = be.scratch("native_filter_tmp", 4 * plan.rows_out * t_pitch)
            vbuf = _taps_buffer(be, (plan.col * plan.gain).astype(f32))
            hbuf = _taps_buffer(be, plan.row.astype(f32))
            if mapped:
                # the padding's maps, cached on the device for each geometry
                h, w = strip.shape[:2]
                top_, bottom, left, right = plan.pads
                rmap = be.index_map(h, top_, bottom, plan.padding_mode, info=info)
                cmap = be.index_map(w, left, right, plan.padding_mode, info=info)
                v_args = [xbuf, vbuf, tmp, rmap, cmap, i32(rows_in), i32(plan.rows_out),
                          i32(w * c), i32(n_in), i32(t_pitch), i32(left * c),
                          i32((left + w) * c), i32(top_), i32(h)]  # fmt: skip
            else:
                v_args = [xbuf, vbuf, tmp, i32(rows_in), i32(plan.rows_out), i32(n_in),
                          i32(n_in), i32(t_pitch)]  # fmt: skip
            ev1 = be.enqueue(
                kv_,
                (math.ceil(n_in / 8), math.ceil(plan.rows_out / rows)),
                CL_LOCAL,
                v_args,
                info,
            )
            ev2 = be.enqueue(
                kh_,
                (math.ceil(n_out / (8 * CL_XV)), plan.rows_out),
                CL_LOCAL,
                [tmp, hbuf, obuf, i32(plan.rows_out), i32(t_pitch), i32(n_out), i32(n_out),
                 bias_top, top],
                info,
            )  # fmt: skip
            events = [ev1, ev2]
        else:
            kd = be.kernel("native_filter", defines, info, kernel_name="native_filter_direct")
            tbuf = _taps_buffer(be, (plan.kernel * plan.gain).astype(f32).ravel())
            events = [
                be.enqueue(
                    kd,
                    groups_v,
                    CL_LOCAL,
                    [
                        xbuf,
                        tbuf,
                        obuf,
                        i32(rows_in),
                        i32(plan.rows_out),
                        i32(w_in * c),
                        i32(n_out),
                        i32(n_out),
                        bias_top,
                        top,
                    ],
                    info,
                )
            ]
        be.fetch(result, obuf, info)
        for ev in events:
            ev.wait()
            info.timings["compute"] = info.timings.get("compute", 0.0) + be.event_seconds(ev)
    del strip  # the wrapped input must outlive the kernels: it did, fetch waited
    return result


def _fused_local_bytes(plan: _Plan) -> int:
    """Local memory of a native_filter_fused work-group: ROWS rows of vertical sums, a
    tile of 8 * LX values and the horizontal taps' reach after it in whole float8s."""
    halo = (plan.kw - 1) * plan.dw * plan.c
    return 4 * CL_ROWS_V * (8 * CL_LOCAL[0] + 8 * -(-halo // 8))


def _cl_fused(plan: _Plan, local_mem: int | None = None) -> bool:
    """Both passes of a two-pass plan in one launch: stride 1 along rows (the horizontal
    sums of a tile are then the tile's own vertical sums and a halo after them) and a
    work-group's rows of sums within CL_FUSED_LOCAL_BYTES and the device's local memory
    ``local_mem`` (None, for pricing before a device is open: the 32 KiB of a full
    profile device). The tile is a static array: a device with less (an embedded
    profile, Oclgrind with a GPU's 16 KiB) refuses every launch of it, at any
    work-group size, so the two launches run there."""
    need = _fused_local_bytes(plan)
    return (
        CL_FUSED
        and _cl_separable(plan)
        and plan.sw == 1
        and need <= CL_FUSED_LOCAL_BYTES
        and (local_mem is None or need <= local_mem)
    )


def _enqueue_fused(
    be: Any,
    plan: _Plan,
    defines: dict,
    strip: np.ndarray,
    mapped: bool,
    xbuf: Any,
    obuf: Any,
    info: RunInfo,
) -> Any:
    """Launch native_filter_fused on ``strip`` (the unpadded image when ``mapped``, else
    the padded strip, read through identity maps); returns its event."""
    i32, f32 = np.int32, np.float32
    kf = be.kernel("native_filter", defines, info, kernel_name="native_filter_fused")
    h, w = strip.shape[:2]
    top, bottom, left, right = plan.pads if mapped else (0, 0, 0, 0)
    c = plan.c
    rmap = be.index_map(h, top, bottom, plan.padding_mode, info=info)
    cmap = be.index_map(w, left, right, plan.padding_mode, info=info)
    n_in = plan.strip.shape[1] * c
    n_out = plan.w_out * c
    lx = CL_LOCAL[0]
    vbuf = _taps_buffer(be, (plan.col * plan.gain).astype(f32))
    hbuf = _taps_buffer(be, plan.row.astype(f32))
    # one work-group of LX items per 8 * LX output values of CL_ROWS_V output rows
    return be.enqueue(
        kf,
        (math.ceil(n_out / (8 * lx)) * lx, math.ceil(plan.rows_out / CL_ROWS_V)),
        CL_LOCAL,
        [xbuf, vbuf, hbuf, obuf, rmap, cmap, i32(plan.strip.shape[0]), i32(plan.rows_out),
         i32(w * c), i32(n_in), i32(n_out), i32(n_out), i32(left * c), i32((left + w) * c),
         i32(top), i32(h), f32(plan.bias_top), f32(plan.out_top)],
        info,
    )  # fmt: skip


def _taps_buffer(be: Any, taps: np.ndarray) -> Any:
    taps = np.ascontiguousarray(taps, dtype=np.float32)
    return be.constant_buffer(("native_taps", *be.content_key(taps)), lambda: taps)


# ---------------------------------------------------------------------------------------
# NumPy


_LOCAL = threading.local()


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 work array of ``shape`` kept per thread (fresh large arrays cost page
    faults on every call)."""
    size = math.prod(shape)
    cache = getattr(_LOCAL, "arrays", None)
    if cache is None:
        cache = _LOCAL.arrays = {}
    buf = cache.get(name)
    if buf is None or buf.size < size:
        buf = cache[name] = np.empty(max(size, 1), np.float32)
    return buf[:size].reshape(shape)


def _run_numpy(plan: _Plan, info: RunInfo) -> np.ndarray | None:
    from convcli.backends import get_backend
    from convcli.backends.numpy.threads import ONE_THREAD_BLAS, run_jobs

    if not plan.separable and plan.taps > NUMPY_DIRECT_MAX_TAPS:
        return None
    _padded(plan)
    result = plan.out
    if result is None:
        result = np.empty((plan.rows_out, plan.w_out, plan.c), plan.out_dtype)
    job = _SeparableJob(plan, result) if plan.separable else _DirectJob(plan, result)
    jobs = job.jobs()
    numpy = get_backend("numpy")
    threads = numpy.threads() if plan.values * (plan.kh + plan.kw) >= 2_000_000 else 1
    # BLAS on one thread also when we run on one: OpenBLAS's own threads on these small
    # GEMMs spun against each other (a 256x6000 strip: 0.55 s against 0.13 s)
    t0 = time.perf_counter()
    with ONE_THREAD_BLAS:
        run_jobs(job, jobs, threads, numpy.settings)
    info.timings["compute"] = info.timings.get("compute", 0.0) + time.perf_counter() - t0
    info.backend, info.device = "numpy", "host CPU (NumPy)"
    info.algo = "native-separable" if plan.separable else "native-direct"
    return result


def _tiles(plan: _Plan, halo: int) -> list[tuple[int, int]]:
    """Output pixel ranges of column tiles of about NUMPY_TILE_VALUES input values."""
    width = max(8, NUMPY_TILE_VALUES // plan.c // plan.sw - halo)
    count = max(1, round(plan.w_out / width))
    step = -(-plan.w_out // count)
    return [(x0, min(plan.w_out, x0 + step)) for x0 in range(0, plan.w_out, step)]


def _finish(block: np.ndarray, plan: _Plan, dst: np.ndarray) -> None:
    """Map, clip and round float32 ``block`` (output levels less bias_top) into ``dst``."""
    if plan.bias_top != 0.0:
        block += np.float32(plan.bias_top)
    if plan.abs:
        np.abs(block, out=block)
    np.fmax(block, 0, out=block)  # NaN -> 0
    np.fmin(block, np.float32(plan.out_top), out=block)
    np.rint(block, out=block)
    np.copyto(dst, block, casting="unsafe")


class _DirectJob:
    """Every tap as a multiply-add over a block ``(rows, W, C)`` of float32 samples."""

    def __init__(self, plan: _Plan, result: np.ndarray) -> None:
        self.plan = plan
        self.result = result
        self.taps = (plan.kernel * plan.gain).astype(np.float32)

    def jobs(self) -> list[tuple[int, int, int, int]]:
        p = self.plan
        ekw = p.dw * (p.kw - 1) + 1
        rows = max(1, NUMPY_BLOCK_ROWS // p.sh)
        return [
            (r0, min(p.rows_out, r0 + rows), x0, x1)
            for r0 in range(0, p.rows_out, rows)
            for x0, x1 in _tiles(p, ekw)
        ]

    def __call__(self, r0: int, r1: int, x0: int, x1: int) -> None:
        p = self.plan
        nr, nc = r1 - r0, x1 - x0
        ekh, ekw = p.dh * (p.kh - 1) + 1, p.dw * (p.kw - 1) + 1
        in_r, in_c = (nr - 1) * p.sh + ekh, (nc - 1) * p.sw + ekw
        src = _scratch("direct_in", (in_r, in_c, p.c))
        np.copyto(src, p.strip[r0 * p.sh : r0 * p.sh + in_r, x0 * p.sw : x0 * p.sw + in_c])
        acc = _scratch("direct_acc", (nr, nc, p.c))
        tmp = _scratch("direct_tmp", (nr, nc, p.c))
        first = True
        for i in range(p.kh):
            for j in range(p.kw):
                t = self.taps[i, j]
                if t == 0:
                    continue
                y, x = i * p.dh, j * p.dw
                view = src[y : y + (nr - 1) * p.sh + 1 : p.sh, x : x + (nc - 1) * p.sw + 1 : p.sw]
                if first:
                    np.multiply(view, t, out=acc)
                    first = False
                else:
                    np.multiply(view, t, out=tmp)
                    acc += tmp
        if first:
            acc[...] = 0
        _finish(acc, p, self.result[r0:r1, x0:x1])


class _SeparableJob:
    """A rank-1 kernel as two banded-Toeplitz GEMM passes (see the NumPy backend's
    ``separable``), on channels-last rows: with one kernel for every channel, a row is a
    flat array of W * C values and the horizontal pass is a 1-D correlation along it
    with dilation ``dw * C``, so no transposition is needed."""

    def __init__(self, plan: _Plan, result: np.ndarray) -> None:
        from convcli.backends.numpy.separable import toeplitz_block, toeplitz_slabs

        self.plan = plan
        self.result = result
        p = plan
        f32 = np.dtype(np.float32)
        self.ekh = p.dh * (p.kh - 1) + 1
        self.bv = toeplitz_block(self.ekh)
        # the vertical pass carries the gain (scale and both tops)
        self.tv, self.mv = toeplitz_slabs(p.col * p.gain, self.bv, p.sh, p.dh, f32)
        self.pv = self.bv * p.sh
        # horizontal: stride 1 along the flat row; a stride > 1 keeps every sw-th pixel
        ekw_flat = (p.kw - 1) * p.dw * p.c + 1
        self.bh = toeplitz_block(ekw_flat)
        stack, self.mh = toeplitz_slabs(p.row, self.bh, 1, p.dw * p.c, f32)
        self.th = np.ascontiguousarray(stack.T)  # (bh, mh*bh)
        self.ekw = p.dw * (p.kw - 1) + 1

    def jobs(self) -> list[tuple[int, int, int, int]]:
        p = self.plan
        rows = max(self.bv, (NUMPY_BLOCK_ROWS * 2) // self.bv * self.bv)
        return [
            (r0, min(p.rows_out, r0 + rows), x0, x1)
            for r0 in range(0, p.rows_out, rows)
            for x0, x1 in _tiles(p, self.ekw)
        ]

    def __call__(self, r0: int, r1: int, x0: int, x1: int) -> None:
        p = self.plan
        bv, pv, mv, bh, mh = self.bv, self.pv, self.mv, self.bh, self.mh
        nr = r1 - r0
        nbv = -(-nr // bv)
        nbx = nbv + mv - 1
        in_rows = nbx * pv
        n_full = (x1 - x0 - 1) * p.sw + 1  # stride-1 horizontal outputs needed
        nflat = n_full * p.c
        nbh = -(-nflat // bh)
        width = (nbh + mh - 1) * bh  # flat inputs the horizontal GEMM reads
        row0, col0 = r0 * p.sh, x0 * p.sw * p.c
        strip2d = p.strip.reshape(p.strip.shape[0], -1)
        avail_r = min(in_rows, strip2d.shape[0] - row0)
        avail_c = min(width, strip2d.shape[1] - col0)
        xb = _scratch("sep_in", (in_rows, width))
        np.copyto(xb[:avail_r, :avail_c], strip2d[row0 : row0 + avail_r, col0 : col0 + avail_c])
        # what lies past the strip only feeds outputs past the block: zeros keep it finite
        if avail_c < width:
            xb[:avail_r, avail_c:] = 0
        if avail_r < in_rows:
            xb[avail_r:] = 0
        # vertical: one batched GEMM over input blocks; output block k sums slab j of
        # input block k + j
        z = np.matmul(self.tv, xb.reshape(nbx, pv, width)).reshape(nbx, mv, bv, width)
        mid = _scratch("sep_mid", (nbv, bv, width))
        np.copyto(mid, z[:nbv, 0])
        for j in range(1, mv):
            mid += z[j : j + nbv, j]
        del z
        # horizontal: the contraction axis is contiguous, rows of bh values
        zh = (mid.reshape(-1, bh) @ self.th).reshape(nbv * bv, nbh + mh - 1, mh, bh)
        res = _scratch("sep_res", (nbv * bv, nbh, bh))
        np.copyto(res, zh[:, :nbh, 0])
        for j in range(1, mh):
            res += zh[:, j : j + nbh, j]
        del zh
        block = res.reshape(nbv * bv, nbh * bh)[:nr, :nflat].reshape(nr, n_full, p.c)
        if p.sw > 1:
            block = np.ascontiguousarray(block[:, :: p.sw])
        _finish(block, p, self.result[r0:r1, x0:x1])
