"""The GPU-shaped OpenCL path: direct convolution tiled through local memory.

The kernel families' CPU-shaped kernels are shaped for a CPU device (float8
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

1x1 layers run ``gemm_local.cl`` instead: a GEMM tile through local memory, and FFT
tiles ``fft_local.cl`` (:mod:`.fft_local`), a work-group per tile pair, also where FFT
tiles pay but the CPU plan took direct taps. Other algorithm choices are kept: rank-1
image filters still run as two separable passes (each a ``direct_local`` launch), the
host FFT where the planner picks it, and a forced ``algo='gemm'`` on a KxK layer still
runs the CPU-shaped GEMMs (no GPU GEMM does those).

Which devices get it: GPU-type devices (Oclgrind included, which reports a GPU), or
every device when ``settings.gpu_kernels`` (tests, A/B runs) or the environment variable
``CONVCLI_GPU_KERNELS`` (``1``/``0``) says so. None of this has run on a real GPU: the
shapes follow the usual GPU rules (coalesced loads and stores, bank-conflict-free local
reads, few registers), not a measurement.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from convcli.backends.opencl import fft_local, separable
from convcli.backends.opencl.gemm import channel_blocks
from convcli.backends.opencl.geometry import geometry_defines
from convcli.backends.opencl.settings import DEFAULT, Settings
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec

GPU_KERNELS_ENV = "CONVCLI_GPU_KERNELS"

_CPU_SHAPED = ("dw_direct", "dense_gemm", "winograd", "pointwise", "gemm_1x1")


def gpu_kernels(cpu: bool, s: Settings = DEFAULT) -> bool:
    """Whether the GPU-shaped kernels run on a device (``cpu``: it is a CPU)."""
    if s.gpu_kernels is not None:
        return s.gpu_kernels
    env = os.environ.get(GPU_KERNELS_ENV, "").strip()
    if env in ("0", "1"):
        return env == "1"
    return not cpu


def device_plan(plan, spec: ConvSpec, algo: str, cpu: bool, s: Settings = DEFAULT):
    """``plan`` (a :class:`convcli.backends.opencl.plan.Plan` or None) as the device
    should run it.

    On GPU-shaped devices 1x1 layers that :func:`gemm_applies` to run ``gemm_local``
    under ``auto`` or ``gemm`` (so the row bands of a tiled call, which force the whole's
    algorithm, run it too); the CPU-shaped direct kernel and, under ``auto``, the rest
    of the GEMM family run ``direct_local``; separable plans run their two passes with
    it (:func:`run_separable`); FFT tiles run a work-group per tile pair
    (:func:`convcli.backends.opencl.fft_local.device_plan`)."""
    if gpu_kernels(cpu, s):
        fft = fft_local.device_plan(plan, spec, algo, s)
        if fft is not None:
            return fft
    if plan is None or not gpu_kernels(cpu, s) or plan.kernel not in _CPU_SHAPED:
        return plan
    if plan.algo == "separable":
        if max(spec.kh, spec.kw) > s.gpu_max_taps:
            return plan
        return type(plan)("separable", "direct_local")
    if plan.algo not in ("direct", "gemm") or spec.kh * spec.kw > s.gpu_max_taps:
        return plan
    if gemm_applies(spec, s) and (algo == "auto" or plan.algo == "gemm"):
        return type(plan)("gemm", "gemm_local")
    if plan.algo == "gemm" and algo != "auto":
        return plan  # a forced GEMM of a KxK layer: only the CPU-shaped GEMMs do that
    return type(plan)("direct", "direct_local")


def gemm_applies(spec: ConvSpec, s: Settings = DEFAULT) -> bool:
    """1x1, stride 1, no padding, a group of at least ``gpu_gemm_min_cin`` input
    channels: a plain GEMM over contiguous pixels (gemm_local.cl)."""
    return (
        (spec.kh, spec.kw, spec.stride) == (1, 1, (1, 1))
        and not any(spec.pad)
        and spec.cin_g >= s.gpu_gemm_min_cin
    )


def blocking(spec: ConvSpec, s: Settings = DEFAULT) -> tuple[int, int, int]:
    """(COB channels per block, NBLK blocks per group, RX columns per item).

    The fewest blocks of at most ``gpu_local_cob`` channels, equal-sized (no wasted
    channels); RX from the width, so narrow outputs do not leave most items idle.
    """
    nblk = math.ceil(spec.cout_g / s.gpu_local_cob)
    cob = math.ceil(spec.cout_g / nblk)
    nblk = math.ceil(spec.cout_g / cob)
    wo = spec.w_out
    rx = 4 if wo >= 4 * s.gpu_local_x else 2 if wo >= 16 else 1
    return cob, nblk, rx


def tile_bytes(spec: ConvSpec, cob: int, rx: int, local: tuple[int, ...]) -> int:
    """Local memory of one work-group of ``local`` items: input tile + halo, and taps."""
    lx, ly = local[0], local[1]
    th = (ly - 1) * spec.stride[0] + (spec.kh - 1) * spec.dilation[0] + 1
    tw = (lx * rx - 1) * spec.stride[1] + (spec.kw - 1) * spec.dilation[1] + 1
    return 4 * (th * tw + spec.kh * spec.kw * cob)


def wanted_local(spec: ConvSpec, rx: int, s: Settings = DEFAULT) -> tuple[int, int, int]:
    """The work-group asked for: up to ``gpu_local_x`` items along a row (powers of two,
    at least 4) and rows up to ``gpu_local_items`` items, fewer when the output is
    smaller."""
    items_x = math.ceil(spec.w_out / rx)
    lx = min(s.gpu_local_x, max(4, _pow2(items_x)))
    ly = min(s.gpu_local_items // lx, _pow2(spec.h_out))
    return lx, ly, 1


def _pack(weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, cob: int):
    """Weights as direct_local reads them: ``(G, NBLK, CIN_G, KH*KW, COB)``; bias
    ``(G, NBLK*COB)``."""
    wp, b = channel_blocks(weight.reshape(spec.c_out, spec.cin_g, -1), bias, spec, cob)
    return np.ascontiguousarray(wp), b


def run_local(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """``direct_local.cl`` over the whole batch (float32 ``x``, weights and bias)."""
    xbuf = rt.input_buffer(x, info)
    out, obuf = rt.output((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
    ev = _enqueue_local(rt, xbuf, weight, bias, spec, obuf, info)
    return rt.collect(out, obuf, [ev], info)


def run_separable(rt: Any, x, bias, spec: ConvSpec, factors, info: RunInfo) -> np.ndarray:
    """A rank-1 depthwise kernel as two ``direct_local`` passes (:func:`.separable.passes`):
    KH x 1 into a scratch buffer ``(N, C_out, H_out, W)``, then 1 x KW (bias there). In
    place of the CPU passes (dw_direct's float8 rows; sep_boxsum's running sums keep
    ``float8 s[512]``, 16 KB of private memory per item)."""
    col, row = factors  # (C_out, 1, KH), (C_out, 1, KW)
    vertical, horizontal = separable.passes(spec)
    f32 = np.float32
    col = np.ascontiguousarray(col, dtype=f32).reshape(spec.c_out, 1, spec.kh, 1)
    row = np.ascontiguousarray(row, dtype=f32).reshape(spec.c_out, 1, 1, spec.kw)
    xbuf = rt.input_buffer(x, info)
    tmp = rt.scratch("separable_tmp", 4 * spec.n * spec.c_out * vertical.h_out * spec.w)
    out, obuf = rt.output((spec.n, spec.c_out, spec.h_out, spec.w_out), f32)
    ev1 = _enqueue_local(rt, xbuf, col, None, vertical, tmp, info)
    ev2 = _enqueue_local(rt, tmp, row, bias, horizontal, obuf, info)
    return rt.collect(out, obuf, [ev1, ev2], info)


def _enqueue_local(rt: Any, xbuf, weight, bias, spec: ConvSpec, obuf, info: RunInfo):
    """Enqueue ``direct_local.cl`` from ``xbuf`` into ``obuf`` (both laid out as
    ``spec`` says); returns its event. Raises NoFit before anything is enqueued."""
    s = rt.settings
    cob, nblk, rx = blocking(spec, s)
    defines = {
        **geometry_defines(spec.kh, spec.kw, spec.stride, spec.dilation),
        "COB": cob,
        "RX": rx,
        "HAS_BIAS": int(bias is not None),
    }
    kernel = rt.kernel("direct_local", defines, info)
    wanted = wanted_local(spec, rx, s)
    local, need = rt.fit_local_memory(kernel, wanted, lambda lo: tile_bytes(spec, cob, rx, lo))
    wbuf, bbuf = rt.packed_weights(_pack, weight, bias, spec, cob, info)
    rmap, cmap = rt.index_maps(spec, info)
    ho, wo = spec.h_out, spec.w_out
    hp = spec.h + spec.pad[0] + spec.pad[1]
    wp = spec.w + spec.pad[2] + spec.pad[3]
    sizes = (spec.n, spec.h, spec.w, ho, wo, hp, wp, spec.cin_g, spec.cout_g, spec.groups, nblk)
    local_mem = rt._cl.LocalMemory(need)
    args = [xbuf, wbuf, bbuf, rmap, cmap, obuf, local_mem, *map(np.int32, sizes)]
    gsize = (math.ceil(wo / rx), ho, spec.n * spec.groups * nblk)
    return rt.enqueue(kernel, gsize, local, args)


def _gemm_weights(weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, _: int):
    """gemm_local reads the weights as given, ``(C_out, CIN_G)``; bias ``(C_out,)``."""
    b = np.zeros(spec.c_out, np.float32) if bias is None else bias
    return weight.reshape(spec.c_out, spec.cin_g), b


def gemm_bytes(local: tuple[int, ...], s: Settings = DEFAULT) -> int:
    """Local memory of gemm_local's two K-chunk tiles for a work-group of ``local``."""
    return 4 * s.gpu_gemm_tk * (local[1] * s.gpu_gemm_rm + local[0] * s.gpu_gemm_rn)


def run_gemm(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """``gemm_local.cl`` over the whole batch (see :func:`gemm_applies`)."""
    s = rt.settings
    rm, rn = s.gpu_gemm_rm, s.gpu_gemm_rn
    defines = {"TK": s.gpu_gemm_tk, "RM": rm, "RN": rn, "HAS_BIAS": int(bias is not None)}
    kernel = rt.kernel("gemm_local", defines, info)
    plane = spec.h * spec.w
    # rows of items along the channels (RM each) up to 16, pixels (RN each) for the rest
    ly = min(16, _pow2(math.ceil(spec.cout_g / rm)))
    lx = min(s.gpu_local_items // ly, max(4, _pow2(math.ceil(plane / rn))))
    local, need = rt.fit_local_memory(kernel, (lx, ly, 1), lambda lo: gemm_bytes(lo, s))
    xbuf = rt.input_buffer(x, info)
    wbuf, bbuf = rt.packed_weights(_gemm_weights, weight, bias, spec, 0, info)
    out, obuf = rt.output((spec.n, spec.c_out, spec.h, spec.w), np.float32)
    sizes = (spec.n, spec.groups, spec.cin_g, spec.cout_g, plane)
    args = [xbuf, wbuf, bbuf, obuf, rt._cl.LocalMemory(need), *map(np.int32, sizes)]
    # items, not groups: the runtime rounds up to the local size (a shrunk one included)
    gsize = (math.ceil(plane / rn), math.ceil(spec.cout_g / rm), spec.n * spec.groups)
    ev = rt.enqueue(kernel, gsize, local, args)
    return rt.collect(out, obuf, [ev], info)


def _pow2(v: int) -> int:
    """The least power of two >= ``v`` (1 for v <= 1)."""
    return 1 << max(0, v - 1).bit_length()
