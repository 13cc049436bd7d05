"""Rank-1 depthwise kernels (Gaussian, box, Sobel...) as two passes: a vertical pass
into a reused scratch buffer, then a horizontal pass (``dw_direct.cl`` with KW = 1 and
KH = 1, see :mod:`.depthwise`); constant column factors (box filters) run the vertical
pass by running sums (``sep_boxsum.cl``). The GPU-shaped kernels run the same two passes
(:func:`convcli.backends.opencl.gpu.run_separable`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Any

import numpy as np

from convcli.backends.opencl import depthwise
from convcli.backends.opencl.settings import Settings
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec


@functools.lru_cache(maxsize=256)  # two ConvSpecs cost 20 us, a warm call asks each time
def passes(spec: ConvSpec) -> tuple[ConvSpec, ConvSpec]:
    """The vertical pass ``(N, C_in, H, W) -> (N, C_out, H_out, W)`` (no bias) and the
    horizontal pass ``-> (N, C_out, H_out, W_out)`` (the bias), each a depthwise
    convolution of its own. Every padding mode maps rows and columns separately, so each
    pass pads its own axis."""
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
    return vertical, horizontal


def is_box(col: np.ndarray) -> bool:
    """Every column factor constant (box filters): running sums apply."""
    if col.shape[1] < 4:
        return False
    spread = np.abs(col - col[:, :1]).max()
    return bool(spread <= 1e-6 * max(float(np.abs(col).max()), 1e-30))


def runs_boxsum(spec: ConvSpec, col: np.ndarray) -> bool:
    """Whether the vertical pass of ``spec`` with column factors ``col`` ``(C_out, KH)``
    runs by running sums (sep_boxsum)."""
    return is_box(col) and spec.stride[0] == 1 and spec.dilation[0] == 1


def boxsum_defines(spec: ConvSpec, s: Settings) -> dict[str, int]:
    """The build defines of sep_boxsum for ``spec``."""
    # Image sizes (and xv, which follows the width) are kernel arguments; the running-sum
    # array is sized for the widest strip, so one build serves every image size.
    return {
        "C_IN": spec.c_in,
        "C_OUT": spec.c_out,
        "CMULT": spec.cout_g,
        "KH": spec.kh,
        "RB": s.box_rows,
        "XV_MAX": s.box_max_xv,
    }


def _enqueue_boxsum(rt: Any, xbuf: Any, taps: np.ndarray, tmp: Any, spec: ConvSpec, info):
    """Vertical box pass by running sums into ``tmp`` ``(N, C_out, H_out, W)``."""
    s = rt.settings
    strips = math.ceil(spec.w / (8 * s.box_max_xv))
    xv = math.ceil(spec.w / (8 * strips))
    kernel = rt.kernel("sep_boxsum", boxsum_defines(spec, s), info)
    rmap = rt.index_map(spec.h, spec.pad[0], spec.pad[1], spec.padding_mode, info=info)
    wbuf = rt.upload(taps)
    gsize = (strips, math.ceil(spec.h_out / s.box_rows), spec.n * spec.c_out)
    sizes = (spec.n, spec.h, spec.w, spec.h_out, xv)
    return rt.enqueue_rows(kernel, gsize, [xbuf, wbuf, rmap, tmp, *map(np.int32, sizes)])


def run(
    rt: Any, x, bias, spec: ConvSpec, factors: tuple[np.ndarray, np.ndarray], info: RunInfo
) -> np.ndarray:
    """Vertical pass (rows through the row map) into scratch, then horizontal pass."""
    col, row = factors  # (C_out, 1, kH), (C_out, 1, kW)
    vertical, horizontal = passes(spec)
    xbuf = rt.input_buffer(x, info)
    tmp = rt.scratch("separable_tmp", 4 * spec.n * spec.c_out * vertical.h_out * spec.w)
    col = col.reshape(spec.c_out, spec.kh).astype(np.float32)
    if runs_boxsum(spec, col):
        ev1 = _enqueue_boxsum(rt, xbuf, col[:, 0].copy(), tmp, spec, info)
    else:
        ev1 = depthwise.enqueue(rt, xbuf, vertical, col, None, tmp, info)
    out, obuf = rt.output((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
    taps = row.reshape(spec.c_out, spec.kw).astype(np.float32)
    ev2 = depthwise.enqueue(rt, tmp, horizontal, taps, bias, obuf, info)
    return rt.collect(out, obuf, [ev1, ev2], info)
