"""The GPU-shaped OpenCL path: direct convolution tiled through local memory.

:mod:`convcli.backends.opencl_fast`'s kernels are shaped for a CPU device (float8
vectors, register tiles of up to 96 floats per item, a Winograd form whose items keep
kilobytes of private results, no ``__local`` memory: a CPU's caches did better than
explicit tiles there). On a GPU those private arrays spill, and a work-group that does
not share its input through local memory reads each input value once per tap from
global memory. On GPU-type devices :func:`device_plan` therefore replaces the direct and
GEMM-family kernels with ``direct_local.cl``: a work-group loads an input tile with its
halo (and its block's taps) into local memory once per input channel and accumulates
from there, each item keeping RX x COB scalar accumulators (at most 32). Depthwise
layers and channel multipliers are the same kernel with one input channel per group and
the multiplier as the channel block, so each input tile is loaded once.

1x1 layers run ``gemm_local.cl`` instead: a GEMM tile through local memory. Algorithm
choices are kept: rank-1 image filters still run as two separable passes (each a
``direct_local`` launch), the FFT and the host FFT where the planner picks them, and a
forced ``algo='gemm'`` on a KxK layer still runs the CPU-shaped GEMMs (no GPU GEMM does
those).

Which devices get it: GPU-type devices (Oclgrind included, which reports a GPU), or
every device when :data:`GPU_KERNELS` (tests, A/B runs) or the environment variable
``CONVCLI_GPU_KERNELS`` (``1``/``0``) says so. None of this has run on a real GPU: the
shapes follow the usual GPU rules (coalesced loads and stores, bank-conflict-free local
reads, few registers), not a measurement.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace

import numpy as np

from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec

# None: GPU-type devices only; True/False: every device / none (tests, A/B runs).
GPU_KERNELS: bool | None = None
GPU_KERNELS_ENV = "CONVCLI_GPU_KERNELS"
# Items per work-group wanted (the backend shrinks it to the device's and the kernel's
# limits): 256, a common GPU size, 16 along a row (64 output columns with RX = 4).
LOCAL_ITEMS = 256
LOCAL_X = 16
# Output channels per work-group block: dense layers take up to 8 (8 x RX = 32
# accumulators per item), depthwise multipliers up to 8 too (their tile is loaded once).
LOCAL_COB = 8
# Taps are looped, not unrolled into one body, but the generic kernel still takes the
# very large kernels (as dw_direct's limit).
LOCAL_MAX_TAPS = 256

# gemm_local.cl (1x1 layers, stride 1, no padding, from this many input channels per
# group: a K chunk is GEMM_TK channels): a TM x TN output tile per work-group, K in chunks
# of GEMM_TK through local memory, GEMM_RM x GEMM_RN accumulators per item. Below
# GEMM_MIN_CIN channels direct_local runs them (one barrier pair per channel is cheap there).
GEMM_TK = 16
GEMM_RM = 4
GEMM_RN = 4
GEMM_MIN_CIN = 16

_CPU_SHAPED = ("dw_direct", "dense_gemm", "winograd", "pointwise")


class NoFit(Exception):
    """The tile does not fit the device's local memory even for one item: the caller
    runs the generic kernel."""


def gpu_kernels(cpu: bool) -> bool:
    """Whether the GPU-shaped kernels run on a device (``cpu``: it is a CPU)."""
    if GPU_KERNELS is not None:
        return GPU_KERNELS
    env = os.environ.get(GPU_KERNELS_ENV, "").strip()
    if env in ("0", "1"):
        return env == "1"
    return not cpu


def device_plan(plan, spec: ConvSpec, algo: str, cpu: bool):
    """``plan`` (an ``opencl_fast.Plan`` or None) as the device should run it.

    On GPU-shaped devices 1x1 layers that :func:`gemm_applies` to run ``gemm_local``
    under ``auto`` or ``gemm`` (so the row bands of a tiled call, which force the whole's
    algorithm, run it too); the CPU-shaped direct kernel and, under ``auto``, the rest
    of the GEMM family run ``direct_local``; separable plans run their two passes with
    it (:func:`run_separable`); FFT tiles run a work-group per tile pair
    (:func:`convcli.backends.opencl_fft_local.device_plan`)."""
    if gpu_kernels(cpu):
        from convcli.backends import opencl_fft_local

        fft = opencl_fft_local.device_plan(plan, spec, algo)
        if fft is not None:
            return fft
    if plan is None or not gpu_kernels(cpu) or plan.kernel not in _CPU_SHAPED:
        return plan
    if plan.algo == "separable":
        if max(spec.kh, spec.kw) > LOCAL_MAX_TAPS:
            return plan
        return type(plan)("separable", "direct_local")
    if plan.algo not in ("direct", "gemm") or spec.kh * spec.kw > LOCAL_MAX_TAPS:
        return plan
    if gemm_applies(spec) and (algo == "auto" or plan.algo == "gemm"):
        return type(plan)("gemm", "gemm_local")
    if plan.algo == "gemm" and algo != "auto":
        return plan  # a forced GEMM of a KxK layer: only the CPU-shaped GEMMs do that
    return type(plan)("direct", "direct_local")


def gemm_applies(spec: ConvSpec) -> bool:
    """1x1, stride 1, no padding, a group of at least GEMM_MIN_CIN input channels: a
    plain GEMM over contiguous pixels (gemm_local.cl)."""
    return (
        (spec.kh, spec.kw, spec.stride) == (1, 1, (1, 1))
        and not any(spec.pad)
        and spec.cin_g >= GEMM_MIN_CIN
    )


def blocking(spec: ConvSpec) -> tuple[int, int, int]:
    """(COB channels per block, NBLK blocks per group, RX columns per item).

    The fewest blocks of at most LOCAL_COB channels, equal-sized (no wasted channels);
    RX from the width, so narrow outputs do not leave most items idle.
    """
    nblk = math.ceil(spec.cout_g / LOCAL_COB)
    cob = math.ceil(spec.cout_g / nblk)
    nblk = math.ceil(spec.cout_g / cob)
    wo = spec.w_out
    rx = 4 if wo >= 4 * LOCAL_X else 2 if wo >= 16 else 1
    return cob, nblk, rx


def tile_bytes(spec: ConvSpec, cob: int, rx: int, local: tuple[int, ...]) -> int:
    """Local memory of one work-group of ``local`` items: input tile + halo, and taps."""
    lx, ly = local[0], local[1]
    th = (ly - 1) * spec.stride[0] + (spec.kh - 1) * spec.dilation[0] + 1
    tw = (lx * rx - 1) * spec.stride[1] + (spec.kw - 1) * spec.dilation[1] + 1
    return 4 * (th * tw + spec.kh * spec.kw * cob)


def wanted_local(spec: ConvSpec, rx: int) -> tuple[int, int, int]:
    """The work-group asked for: up to LOCAL_X items along a row (powers of two, at
    least 4) and rows up to LOCAL_ITEMS items, fewer when the output is smaller."""
    items_x = math.ceil(spec.w_out / rx)
    lx = min(LOCAL_X, max(4, 1 << max(0, items_x - 1).bit_length()))
    ly = min(LOCAL_ITEMS // lx, 1 << max(0, spec.h_out - 1).bit_length())
    return lx, ly, 1


def fit_local(backend, kernel, wanted: tuple[int, int, int], need) -> tuple[tuple[int, ...], int]:
    """The local size to launch and the bytes of local memory it needs (``need(local)``):
    the backend's fit of ``wanted`` to the device and kernel, shrunk (rows first) until
    ``need`` fits ``CL_DEVICE_LOCAL_MEM_SIZE`` less the kernel's own local memory. Raises
    NoFit when even one item's tiles do not fit."""
    limit = backend.limits.local_mem_bytes - _static_local(backend, kernel)
    lx, ly, _ = wanted
    while True:
        local = backend.local_size(kernel, (lx, ly, 1))
        nbytes = need(local)
        if nbytes <= limit:
            return local, nbytes
        if local[0] == 1 and local[1] == 1:
            raise NoFit(f"{nbytes} bytes of tiles exceed the device's {limit} of local memory")
        lx, ly = (local[0], max(1, local[1] // 2)) if local[1] > 1 else (local[0] // 2, 1)


def _static_local(backend, kernel) -> int:
    """``CL_KERNEL_LOCAL_MEM_SIZE`` (0 when the driver does not say)."""
    cl = backend._cl
    try:
        return int(
            kernel.get_work_group_info(cl.kernel_work_group_info.LOCAL_MEM_SIZE, backend.device)
        )
    except cl.Error:
        return 0


def _pack(weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, cob: int):
    """Weights as direct_local reads them: ``(G, NBLK, CIN_G, KH*KW, COB)``; bias
    ``(G, NBLK*COB)``."""
    from convcli.backends.opencl_fast import _channel_blocks

    wp, b = _channel_blocks(weight.reshape(spec.c_out, spec.cin_g, -1), bias, spec, cob)
    return np.ascontiguousarray(wp), b


def run_local(cl, backend, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """``direct_local.cl`` over the whole batch (float32 ``x``, weights and bias)."""
    from convcli.backends import opencl_fast as fast

    xbuf = backend.input_buffer(x, info)
    out, obuf = backend.output((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
    ev = _launch_local(cl, backend, xbuf, weight, bias, spec, obuf, info)
    backend.fetch(out, obuf, info)  # the one blocking call: waits for the kernel
    fast._add_compute(info, [ev])
    return out


def run_separable(cl, backend, x, bias, spec: ConvSpec, factors, info: RunInfo) -> np.ndarray:
    """A rank-1 depthwise kernel as two ``direct_local`` passes: KH x 1 into a scratch
    buffer ``(N, C_out, H_out, W)``, then 1 x KW (bias there). Every padding mode maps
    rows and columns separately, so each pass pads its own axis. In place of the CPU
    passes (dw_direct's float8 rows; sep_boxsum's running sums keep ``float8 s[512]``,
    16 KB of private memory per item)."""
    from convcli.backends import opencl_fast as fast

    col, row = factors  # (C_out, 1, KH), (C_out, 1, KW)
    sh, sw = spec.stride
    dh, dw = spec.dilation
    vertical = replace(
        spec, kw=1, stride=(sh, 1), dilation=(dh, 1), pad=(*spec.pad[:2], 0, 0), has_bias=False
    )
    horizontal = replace(
        spec,
        c_in=spec.c_out,
        h=vertical.h_out,
        kh=1,
        groups=spec.c_out,
        stride=(1, sw),
        dilation=(1, dw),
        pad=(0, 0, *spec.pad[2:]),
    )
    f32 = np.float32
    col = np.ascontiguousarray(col, dtype=f32).reshape(spec.c_out, 1, spec.kh, 1)
    row = np.ascontiguousarray(row, dtype=f32).reshape(spec.c_out, 1, 1, spec.kw)
    xbuf = backend.input_buffer(x, info)
    tmp = backend.scratch("separable_tmp", 4 * spec.n * spec.c_out * vertical.h_out * spec.w)
    out, obuf = backend.output((spec.n, spec.c_out, spec.h_out, spec.w_out), f32)
    ev1 = _launch_local(cl, backend, xbuf, col, None, vertical, tmp, info)
    ev2 = _launch_local(cl, backend, tmp, row, bias, horizontal, obuf, info)
    backend.fetch(out, obuf, info)  # the one blocking call: waits for both passes
    fast._add_compute(info, [ev1, ev2])
    return out


def _launch_local(cl, backend, xbuf, weight, bias, spec: ConvSpec, obuf, info: RunInfo):
    """Enqueue ``direct_local.cl`` from ``xbuf`` into ``obuf`` (both laid out as
    ``spec`` says); returns its event. Raises NoFit before anything is enqueued."""
    from convcli.backends import opencl_fast as fast

    cob, nblk, rx = blocking(spec)
    defines = {
        "KH": spec.kh,
        "KW": spec.kw,
        "SH": spec.stride[0],
        "SW": spec.stride[1],
        "DH": spec.dilation[0],
        "DW": spec.dilation[1],
        "COB": cob,
        "RX": rx,
        "HAS_BIAS": int(bias is not None),
    }
    kernel = fast._kernel(backend, "direct_local", defines, info)
    wanted = wanted_local(spec, rx)
    local, need = fit_local(backend, kernel, wanted, lambda lo: tile_bytes(spec, cob, rx, lo))
    t0 = time.perf_counter()
    wbuf, bbuf = fast._packed_weights(cl, backend, weight, bias, spec, cob, _pack)
    mode = spec.padding_mode
    rmap = fast.index_map(cl, backend, spec.h, spec.pad[0], spec.pad[1], mode)
    cmap = fast.index_map(cl, backend, spec.w, spec.pad[2], spec.pad[3], mode)
    info.timings["upload"] = info.timings.get("upload", 0.0) + time.perf_counter() - t0
    ho, wo = spec.h_out, spec.w_out
    hp = spec.h + spec.pad[0] + spec.pad[1]
    wp = spec.w + spec.pad[2] + spec.pad[3]
    sizes = (spec.n, spec.h, spec.w, ho, wo, hp, wp, spec.cin_g, spec.cout_g, spec.groups, nblk)
    args = [xbuf, wbuf, bbuf, rmap, cmap, obuf, cl.LocalMemory(need), *map(np.int32, sizes)]
    gsize = (math.ceil(wo / rx), ho, spec.n * spec.groups * nblk)
    return backend.enqueue(kernel, gsize, local, args)


def _gemm_weights(weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, _: int):
    """gemm_local reads the weights as given, ``(C_out, CIN_G)``; bias ``(C_out,)``."""
    b = np.zeros(spec.c_out, np.float32) if bias is None else bias
    return weight.reshape(spec.c_out, spec.cin_g), b


def gemm_bytes(local: tuple[int, ...]) -> int:
    """Local memory of gemm_local's two K-chunk tiles for a work-group of ``local``."""
    return 4 * GEMM_TK * (local[1] * GEMM_RM + local[0] * GEMM_RN)


def run_gemm(cl, backend, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """``gemm_local.cl`` over the whole batch (see :func:`gemm_applies`)."""
    from convcli.backends import opencl_fast as fast

    defines = {"TK": GEMM_TK, "RM": GEMM_RM, "RN": GEMM_RN, "HAS_BIAS": int(bias is not None)}
    kernel = fast._kernel(backend, "gemm_local", defines, info)
    plane = spec.h * spec.w
    # rows of items along the channels (RM each) up to 16, pixels (RN each) for the rest
    ly = min(16, _pow2(math.ceil(spec.cout_g / GEMM_RM)))
    lx = min(LOCAL_ITEMS // ly, max(4, _pow2(math.ceil(plane / GEMM_RN))))
    local, need = fit_local(backend, kernel, (lx, ly, 1), gemm_bytes)
    xbuf = backend.input_buffer(x, info)
    t0 = time.perf_counter()
    wbuf, bbuf = fast._packed_weights(cl, backend, weight, bias, spec, 0, _gemm_weights)
    info.timings["upload"] = info.timings.get("upload", 0.0) + time.perf_counter() - t0
    out, obuf = backend.output((spec.n, spec.c_out, spec.h, spec.w), np.float32)
    sizes = (spec.n, spec.groups, spec.cin_g, spec.cout_g, plane)
    args = [xbuf, wbuf, bbuf, obuf, cl.LocalMemory(need), *map(np.int32, sizes)]
    # items, not groups: the backend rounds up to the local size (a shrunk one included)
    gsize = (math.ceil(plane / GEMM_RN), math.ceil(spec.cout_g / GEMM_RM), spec.n * spec.groups)
    ev = backend.enqueue(kernel, gsize, local, args)
    backend.fetch(out, obuf, info)  # the one blocking call: waits for the kernel
    fast._add_compute(info, [ev])
    return out


def _pow2(v: int) -> int:
    """The least power of two >= ``v`` (1 for v <= 1)."""
    return 1 << max(0, v - 1).bit_length()
