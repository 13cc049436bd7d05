"""``dense_flat.cl``: dense_gemm's implicit GEMM over the flat list of output pixels.

For strided layers on small maps, where dense_gemm's row tiles leave columns idle and
send most items down the border path (see the kernel's header). The input is first
copied with its padding built in (``pad_copy.cl``, through the padding maps: every
padding mode), unless the layer has none; then one launch computes every image of the
batch. Weights are packed as for dense_gemm (:func:`.gemm._pack_dense`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from convcli.backends.opencl import gemm
from convcli.backends.opencl.geometry import geometry_defines
from convcli.backends.opencl.settings import Settings
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec


def _padded(spec: ConvSpec) -> ConvSpec:
    """The padding copy as a 1x1 layer: its output is the padded input."""
    return replace(spec, kh=1, kw=1, stride=(1, 1), dilation=(1, 1))


def _pad_defines(spec: ConvSpec) -> dict[str, int]:
    return {"W": spec.w, "WP": _padded(spec).w_out, "PADL": spec.pad[2]}


def blocking(spec: ConvSpec, s: Settings) -> tuple[int, int]:
    """(COB float8 channel vectors, XB pixels) per work-item: ``settings.dense_tile``
    where set, else ``dense_flat_tile`` for layers of at least that many channel
    vectors, else dense_gemm's rule (:func:`.gemm.dense_blocking`)."""
    if s.dense_tile is not None:
        return s.dense_tile
    cob, xb = s.dense_flat_tile
    if math.ceil(spec.cout_g / 8) >= cob:
        return cob, xb
    return gemm.dense_blocking(spec.cout_g, s)


def pays(spec: ConvSpec, cpu: bool, s: Settings) -> bool:
    """Whether dense_gemm's layer ``spec`` runs as dense_flat (``settings.dense_flat``;
    None: CPU devices, a stride other than 1, a kernel larger than 1x1 (1x1 strided
    layers have :func:`.gemm.copied_columns` or read few values), at least
    ``dense_flat_min_cin`` input and ``dense_flat_min_cout`` output channels per group,
    and an output map of at most ``dense_flat_max_pixels`` pixels or windows that do not
    overlap (no padding, a kernel no larger than the stride: convnext's 2x2 stride 2);
    offsets within int32 in every case)."""
    padded = _padded(spec)
    if spec.n * spec.c_in * padded.h_out * padded.w_out >= 1 << 31:
        return False
    if spec.n * spec.c_out * spec.h_out * spec.w_out >= 1 << 31:
        return False
    if s.dense_flat is not None:
        return s.dense_flat
    patches = not any(spec.pad) and spec.kh <= spec.stride[0] and spec.kw <= spec.stride[1]
    return (
        cpu
        and spec.stride != (1, 1)
        and spec.kh * spec.kw > 1
        and spec.cin_g >= s.dense_flat_min_cin
        and spec.cout_g >= s.dense_flat_min_cout
        and (spec.h_out * spec.w_out <= s.dense_flat_max_pixels or patches)
    )


def _strip(spec: ConvSpec, cob: int, xb: int, s: Settings) -> tuple[int, int]:
    """(STRIP column groups per item, CI_CHUNK input channels per weight chunk): as
    :func:`.gemm.dense_strip`, the groups counted over the whole pixel list."""
    per_ci = spec.kh * spec.kw * cob * 32
    l1 = s.dense_l1_bytes_1x1 if spec.kh * spec.kw == 1 else s.dense_l1_bytes
    chunks = math.ceil(spec.cin_g * per_ci / l1)
    groups = math.ceil(spec.n * spec.h_out * spec.w_out / xb)
    # at most 8 groups an item, spread evenly (49 pixels in groups of 6: 5 + 4, not 8 + 1)
    wanted = 1 if chunks <= 1 else math.ceil(groups / math.ceil(groups / 8))
    strip = s.dense_strip if s.dense_strip is not None else wanted
    if strip <= 1:
        return 1, spec.cin_g
    return strip, math.ceil(spec.cin_g / chunks)


def blocks_inner(spec: ConvSpec, s: Settings) -> bool:
    """Whether a work-group takes every channel block of one pixel chunk (the input
    read by the launch at least ``settings.dense_flat_inner_bytes``) rather than many
    chunks of one block."""
    padded = _padded(spec)
    return 4 * spec.n * spec.c_in * padded.h_out * padded.w_out >= s.dense_flat_inner_bytes


def inner_local(blocks: int, chunks: int, units: int, s: Settings) -> int:
    """Channel blocks per work-group where a work-group takes the blocks of one pixel
    chunk (:func:`blocks_inner`): at most 64, and few enough that the ``chunks`` x
    blocks split give ``settings.dense_flat_inner_groups`` work-groups per compute unit
    (``units``) where the blocks allow (``settings.dense_flat_inner_items`` overrides).
    A work-group runs on one thread: nine of them on two threads left one thread idle
    for a ninth of the kernel."""
    if s.dense_flat_inner_items is not None:
        return max(1, min(blocks, s.dense_flat_inner_items))
    split = max(1, min(blocks, math.ceil(s.dense_flat_inner_groups * units / chunks)))
    return min(64, math.ceil(blocks / split))


def defines(spec: ConvSpec, s: Settings) -> dict[str, int]:
    """The build defines of dense_flat for ``spec``."""
    cob, xb = blocking(spec, s)
    strip, chunk = _strip(spec, cob, xb, s)
    inner = {"BLOCKS_INNER": 1} if blocks_inner(spec, s) else {}
    return {
        **inner,
        "G": spec.groups,
        "CIN_G": spec.cin_g,
        "COUT_G": spec.cout_g,
        **geometry_defines(spec.kh, spec.kw, spec.stride, spec.dilation),
        "COB": cob,
        "XB": xb,
        "NBLK": math.ceil(spec.cout_g / (cob * 8)),
        "STRIP": strip,
        "CI_CHUNK": chunk,
    }


def programs(spec: ConvSpec, s: Settings) -> list[tuple[str, dict[str, int]]]:
    """The programs a dense_flat run of ``spec`` builds (kernel file, build defines)."""
    found = [("dense_flat", defines(spec, s))]
    if any(spec.pad):
        found.insert(0, ("pad_copy", _pad_defines(spec)))
    return found


def run(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """dense_flat over the whole batch (float32 ``x``, weights and bias)."""
    d = defines(spec, rt.settings)
    cob, xb, strip, nblk = (d[k] for k in ("COB", "XB", "STRIP", "NBLK"))
    kernel = rt.kernel("dense_flat", d, info)
    padded = _padded(spec)
    hp, wp = padded.h_out, padded.w_out
    copy = None
    if any(spec.pad):
        copy = (
            rt.kernel("pad_copy", _pad_defines(spec), info),
            (hp, spec.n * spec.c_in),
            rt.index_maps(spec, info),
            [np.int32(spec.n * spec.c_in), np.int32(spec.h), np.int32(hp)],
            4 * spec.n * spec.c_in * hp * wp,
        )
    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    total = spec.n * spec.h_out * spec.w_out
    gsize = (math.ceil(total / (xb * strip)), spec.groups * nblk, 1)
    inner = blocks_inner(spec, rt.settings)
    if inner:
        gsize = (gsize[1], gsize[0], 1)
        units = int(rt.device.max_compute_units)
        local = (inner_local(gsize[0], gsize[1], units, rt.settings), 1, 1)
    sizes = [np.int32(v) for v in (spec.n, hp, wp, spec.h_out, spec.w_out)]

    def launch(x, weight, bias, info: RunInfo) -> np.ndarray:
        xbuf = rt.input_buffer(x, info)
        events = []
        if copy is not None:
            to_padded, csize, maps, csizes, nbytes = copy
            # asked at every call: another layer may take a larger scratch buffer
            pbuf = rt.scratch("dense_flat_pad", nbytes)
            events.append(rt.enqueue(to_padded, csize, (8, 8), [xbuf, *maps, pbuf, *csizes]))
            xbuf = pbuf
        wbuf, bbuf = rt.packed_weights(gemm._pack_dense, weight, bias, spec, cob, info)
        out, obuf = rt.output(shape, np.float32)
        args = [xbuf, wbuf, bbuf, obuf, *sizes]
        if inner:
            events.append(rt.enqueue(kernel, gsize, local, args))
        else:
            events.append(rt.enqueue_rows(kernel, gsize, args))
        return rt.collect(out, obuf, events, info)

    return rt.offer_replay(launch)(x, weight, bias, info)
