"""GEMM kernels for multi-channel layers: ``dense_gemm.cl``, ``pointwise.cl`` and
``gemm_1x1.cl``.

``dense_gemm``: an implicit GEMM with a register tile of float8 output-channel vectors x
output columns and weights packed on the host; multi-channel layers, 1x1 included. Wide
1x1 layers with stride 1 and no padding run ``pointwise`` instead: a plain GEMM whose
float8 vectors run along the contiguous pixels; 1x1 layers on small maps (7x7) run
``gemm_1x1`` on CPU devices: dense_gemm's kind of tile, with columns that run through
the whole batch. All take image sizes as kernel
arguments (one build per layer, whatever the image or batch size;
``settings.dense_fixed_sizes`` and ``pointwise_fixed_sizes`` bake them in instead) and
read weights in blocks of output channels (:func:`channel_blocks`), as :mod:`.winograd`
and :mod:`.gpu` do.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from convcli.backends.opencl.geometry import geometry_defines
from convcli.backends.opencl.settings import Settings
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec


def channel_blocks(w: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, step: int):
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


# ------------------------------------------------------------------------ dense_gemm


def dense_blocking(cout_g: int, s: Settings) -> tuple[int, int]:
    """(COB float8 channel vectors, XB columns) per work-item for dense_gemm.

    4 x 2 was the best tile for wide layers on PoCL/AVX2 (14 of 16 ymm registers); two
    and three channel vectors take 4 and 3 columns. One channel vector (grouped layers
    of 8 channels or fewer per group) takes 4 columns: on regnet's 8-channel groups (N=8,
    3x3, 7^2 to 112^2 maps, stride 1 and 2) 4 ran as fast as the best of 4-8 on every
    layer, up to 1.25x faster than the 6 it had (which computed 12 columns for a 7-wide
    row).
    """
    if s.dense_tile is not None:
        return s.dense_tile
    vecs = math.ceil(cout_g / 8)
    if vecs >= 4:
        return 4, 2
    if vecs == 3:
        return 3, 3
    if vecs == 2:
        return 2, 4
    return 1, 4


def dense_1x1_blocking(spec: ConvSpec, cpu: bool, s: Settings) -> tuple[int, int]:
    """dense_gemm's tile for ``spec``: :func:`dense_blocking`'s, but on CPU devices, for
    1x1 layers with stride 1 and no padding on maps of at most
    ``settings.dense_1x1_pad_pixels`` pixels and of at least ``dense_1x1_pad_min_cout``
    output channels per group, 2 x 4 (blocks of 16 channels) where 4 x 2's blocks of 32
    pad the output channels ``settings.dense_1x1_pad_ratio`` times as much or more (208
    channels: 224 against 208; 112: 128 against 112). The padded channels are wasted
    work; but each block reads the input again, which cost as much on few channels
    (480->80 14^2: 3 blocks against 5). Before that, ``settings.dense_1x1_tile`` (3 x 4:
    blocks of 24) replaces 4 x 2 where it pads the channels less than that ratio more
    (256 channels: 264 against 256; not 128: 144), from ``dense_1x1_tile_min_cin``
    input channels and ``dense_1x1_tile_min_pixels`` pixels a map."""
    cob, xb = dense_blocking(spec.cout_g, s)
    flat = (spec.kh, spec.kw, spec.stride) == (1, 1, (1, 1)) and not any(spec.pad)
    if not (cpu and flat and s.dense_tile is None and cob == 4):
        return cob, xb
    if spec.h * spec.w > s.dense_1x1_pad_pixels or spec.cout_g < s.dense_1x1_pad_min_cout:
        return cob, xb
    padded = math.ceil(spec.cout_g / 32) * 32
    big = spec.cin_g >= s.dense_1x1_tile_min_cin and spec.h * spec.w >= s.dense_1x1_tile_min_pixels
    if s.dense_1x1_tile is not None and big:
        block = s.dense_1x1_tile[0] * 8
        tiled = math.ceil(spec.cout_g / block) * block
        if tiled < s.dense_1x1_pad_ratio * padded:
            (cob, xb), padded = s.dense_1x1_tile, tiled
    pad16 = math.ceil(spec.cout_g / 16) * 16
    return (2, 4) if padded >= s.dense_1x1_pad_ratio * pad16 else (cob, xb)


def copied_columns(spec: ConvSpec, s: Settings) -> bool:
    """Whether dense_gemm runs ``spec`` on a copy of its columns (``im2col_copy.cl``): a
    stride other than 1, a copy at most ``settings.dense_columns_max_growth`` times the
    input (taps over the stride's area: 1x1 with stride 2 a quarter, 3x3 with stride 2
    9/4), kernels of ``dense_columns_kernels`` (1x1 by default), and at least
    ``dense_columns_min_cout`` output channels per group (the copy's cost against the
    GEMM's falls with them)."""
    growth = spec.kh * spec.kw / (spec.stride[0] * spec.stride[1])
    return (
        spec.stride != (1, 1)
        and growth <= s.dense_columns_max_growth
        and (spec.kh, spec.kw) in s.dense_columns_kernels
        and spec.cout_g >= s.dense_columns_min_cout
    )


def dense_view(spec: ConvSpec, s: Settings) -> ConvSpec:
    """The problem dense_gemm runs for ``spec``: 1x1 layers with stride 1 and no padding
    as one row of H*W pixels per plane (the same memory), so that the last column
    group of each row is not mostly idle (a 7-wide row in groups of 2 computed 8); the
    layers of :func:`copied_columns` as that 1x1 layer on their column copy."""
    if copied_columns(spec, s):
        taps = spec.kh * spec.kw
        spec = replace(
            spec, c_in=spec.c_in * taps, h=spec.h_out, w=spec.w_out, kh=1, kw=1,
            stride=(1, 1), dilation=(1, 1), pad=(0, 0, 0, 0), padding_mode="zeros",
        )  # fmt: skip
    flat = (spec.kh, spec.kw, spec.stride, spec.pad) == (1, 1, (1, 1), (0, 0, 0, 0))
    if s.dense_flat_1x1 and flat and spec.h > 1:
        return replace(spec, h=1, w=spec.h * spec.w)
    return spec


def columns_defines(spec: ConvSpec) -> dict[str, int]:
    """The build defines of im2col_copy for ``spec``."""
    return {
        **geometry_defines(spec.kh, spec.kw, spec.stride, spec.dilation),
        "C": spec.c_in,
        "W": spec.w,
        "WO": spec.w_out,
    }


def dense_strip(spec: ConvSpec, cob: int, xb: int, cpu: bool, s: Settings) -> tuple[int, int]:
    """(STRIP column groups per item, CI_CHUNK input channels per weight chunk).

    A block's weights (C_in/groups x taps x COB float8) stream from L2 once per item;
    when they exceed L1, an item takes a strip of column groups and walks the input
    channels in chunks whose weights stay in L1 for the whole strip (not for layers of
    at most ``settings.dense_unchunked_max_cin`` input channels). CPUs only (``cpu``):
    the strip's partial sums (``part[STRIP][COB][XB]``, up to 2 KB per item) are private
    memory, which spills to slow memory on GPUs, and their caches are not a CPU's L1.
    """
    per_ci = spec.kh * spec.kw * cob * 32
    l1 = s.dense_l1_bytes_1x1 if spec.kh * spec.kw == 1 else s.dense_l1_bytes
    chunks = math.ceil(spec.cin_g * per_ci / l1)
    if spec.cin_g <= s.dense_unchunked_max_cin:
        chunks = 1  # an image's few channels (a stem): see the setting
    groups = math.ceil(spec.w_out / xb)
    wanted = 1 if chunks <= 1 or not cpu else min(8, groups)
    strip = s.dense_strip if s.dense_strip is not None else wanted
    if strip <= 1:
        return 1, spec.cin_g
    return strip, math.ceil(spec.cin_g / chunks)


def _pack_dense(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, cob: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weights as dense_gemm reads them: ``(G, NBLK, CIN_G, KH*KW, COB*8)``."""
    w = weight.reshape(spec.c_out, spec.cin_g, -1)
    wp, b = channel_blocks(w, bias, spec, cob * 8)
    return np.ascontiguousarray(wp), b


def _dense_sizes(spec: ConvSpec) -> tuple[int, ...]:
    """The image sizes of dense_gemm: N, H, W, HO, WO, WP."""
    wp = spec.w + spec.pad[2] + spec.pad[3]
    return (spec.n, spec.h, spec.w, spec.h_out, spec.w_out, wp)


def dense_defines(spec: ConvSpec, cpu: bool, s: Settings) -> dict[str, int]:
    """The build defines of dense_gemm for ``spec``."""
    # on the view: a strided layer's column copy is a 1x1 layer, its tile chosen as theirs
    spec = dense_view(spec, s)
    cob, xb = dense_1x1_blocking(spec, cpu, s)
    strip, chunk = dense_strip(spec, cob, xb, cpu, s)
    sizes = {}
    if s.dense_fixed_sizes:
        names = ("N", "H", "W", "HO", "WO", "WP")
        sizes = {"FIXED_SIZES": 1, **dict(zip(names, _dense_sizes(spec), strict=True))}
    return {
        **sizes,
        "G": spec.groups,
        "CIN_G": spec.cin_g,
        "COUT_G": spec.cout_g,
        **geometry_defines(spec.kh, spec.kw, spec.stride, spec.dilation),
        "PADT": spec.pad[0],
        "PADL": spec.pad[2],
        "COB": cob,
        "XB": xb,
        "NBLK": math.ceil(spec.cout_g / (cob * 8)),
        "STRIP": strip,
        "CI_CHUNK": chunk,
    }


def dense_programs(spec: ConvSpec, cpu: bool, s: Settings) -> list[tuple[str, dict[str, int]]]:
    """The programs a dense_gemm run of ``spec`` builds (kernel file, build defines)."""
    from convcli.backends.opencl import dense_flat  # it imports this module

    if dense_flat.pays(spec, cpu, s):
        return dense_flat.programs(spec, s)
    found = [("dense_gemm", dense_defines(spec, cpu, s))]
    if copied_columns(spec, s):
        found.insert(0, ("im2col_copy", columns_defines(spec)))
    return found


def run_dense(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """dense_gemm over the whole batch (float32 ``x``, weights and bias)."""
    from convcli.backends.opencl import dense_flat  # it imports this module

    if dense_flat.pays(spec, rt.is_cpu, rt.settings):
        return dense_flat.run(rt, x, weight, bias, spec, info)
    defines = dense_defines(spec, rt.is_cpu, rt.settings)
    cob, xb, strip, nblk = (defines[k] for k in ("COB", "XB", "STRIP", "NBLK"))
    kernel = rt.kernel("dense_gemm", defines, info)
    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    columns = None
    if copied_columns(spec, rt.settings):
        columns = (
            rt.kernel("im2col_copy", columns_defines(spec), info),
            (spec.h_out, spec.n * spec.c_in),
            rt.index_maps(spec, info),
            [np.int32(spec.n), np.int32(spec.h), np.int32(spec.h_out)],
            4 * spec.n * spec.c_in * spec.kh * spec.kw * spec.h_out * spec.w_out,
        )
    spec = dense_view(spec, rt.settings)  # the packed weights' layout is the same either way
    rmap, cmap = rt.index_maps(spec, info)
    gsize = (math.ceil(spec.w_out / (xb * strip)), spec.h_out, spec.n * spec.groups * nblk)
    sizes = [*map(np.int32, _dense_sizes(spec))]
    # one channel vector per item (narrow groups) is little work: rows share a group
    fill = rt.settings.dense_narrow_items if cob == 1 else 0

    def launch(x, weight, bias, info: RunInfo) -> np.ndarray:
        xbuf = rt.input_buffer(x, info)
        events = []
        if columns is not None:
            to_columns, csize, maps, csizes, nbytes = columns
            # asked at every call: another layer may take a larger scratch buffer
            cbuf = rt.scratch("im2col_copy", nbytes)
            args = [xbuf, *maps, cbuf, *csizes]
            events.append(rt.enqueue(to_columns, csize, (8, 8), args))
            xbuf = cbuf
        wbuf, bbuf = rt.packed_weights(_pack_dense, weight, bias, spec, cob, info)
        out, obuf = rt.output(shape, np.float32)
        args = [xbuf, wbuf, bbuf, rmap, cmap, obuf, *sizes]
        events.append(rt.enqueue_rows(kernel, gsize, args, fill_to=fill))
        return rt.collect(out, obuf, events, info)

    return rt.offer_replay(launch)(x, weight, bias, info)


# ------------------------------------------------------------------------ pointwise


def pointwise_applies(spec: ConvSpec, s: Settings) -> bool:
    """1x1, stride 1, no padding, enough input channels and pixels: a plain GEMM over
    contiguous pixels (pointwise.cl)."""
    return (
        (spec.kh, spec.kw, spec.stride) == (1, 1, (1, 1))
        and not any(spec.pad)
        and spec.cin_g >= s.pointwise_min_cin
        and spec.h * spec.w >= s.pointwise_min_pixels
    )


def _pack_pointwise(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, cot: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weights as pointwise.cl reads them: ``(G, NCB, CIN_G, COT)``."""
    wp, b = channel_blocks(weight.reshape(spec.c_out, spec.cin_g, 1), bias, spec, cot)
    return np.ascontiguousarray(wp), b


def pointwise_defines(spec: ConvSpec, s: Settings) -> dict[str, int]:
    """The build defines of pointwise for ``spec``."""
    cot, pv = s.pointwise_tile
    cot = min(cot, spec.cout_g)
    sizes = {"FIXED_SIZES": 1, "P": spec.h * spec.w} if s.pointwise_fixed_sizes else {}
    return {
        **sizes,
        "G": spec.groups,
        "CIN_G": spec.cin_g,
        "COUT_G": spec.cout_g,
        "COT": cot,
        "PV": pv,
        "NCB": math.ceil(spec.cout_g / cot),
    }


def run_pointwise(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """pointwise over the whole batch (float32 ``x``, weights and bias)."""
    defines = pointwise_defines(spec, rt.settings)
    cot, pv, ncb = (defines[k] for k in ("COT", "PV", "NCB"))
    plane = spec.h * spec.w
    kernel = rt.kernel("pointwise", defines, info)
    shape = (spec.n, spec.c_out, spec.h, spec.w)
    items = rt.settings.pointwise_items

    def launch(x, weight, bias, info: RunInfo) -> np.ndarray:
        xbuf = rt.input_buffer(x, info)
        wbuf, bbuf = rt.packed_weights(_pack_pointwise, weight, bias, spec, cot, info)
        # Pixel groups start on the input's cache lines, and the output array is given
        # the input's alignment, so no load or store straddles two lines (stores shared
        # by two items would bounce between cores): 9.9-11.1 ms on W8 against 11.2-12.1
        # with the input 16 bytes off its lines, as NumPy leaves large arrays.
        # (planes that are not whole float8 vectors, or an input not aligned to its
        # floats, leave no lead that serves every plane)
        offset = rt.wrapped_offset(x)
        if plane % 8 or offset % 4:
            offset = 0
        out, obuf = rt.output(shape, np.float32, offset)
        lead = offset // 4
        gsize = (ncb, math.ceil((plane + lead) / (8 * pv)), spec.n * spec.groups)
        args = [xbuf, wbuf, bbuf, obuf, np.int32(lead), np.int32(plane)]
        ev = rt.enqueue_rows(kernel, gsize, args, fill_to=items)
        return rt.collect(out, obuf, [ev], info, offset)

    return rt.offer_replay(launch)(x, weight, bias, info)


# ------------------------------------------------------------------------ gemm_1x1


def gemm1x1_applies(spec: ConvSpec, cpu: bool, s: Settings) -> bool:
    """1x1, stride 1, no padding (CPU devices), on maps of at most
    ``settings.gemm1x1_max_pixels`` pixels (a single image's: ``gemm1x1_single_pixels``),
    or of at most ``gemm1x1_narrow_pixels``
    where dense_gemm's channel blocks would pad the output channels
    ``gemm1x1_narrow_ratio`` times as much as gemm_1x1's (40 channels: 64 against 48):
    a GEMM whose columns run through the batch (``gemm_1x1.cl``). Not where the batch's
    input takes 2**31 floats or more: the kernel's input offsets are 32-bit ints."""
    if not (
        cpu
        and s.gemm1x1
        and (spec.kh, spec.kw, spec.stride) == (1, 1, (1, 1))
        and not any(spec.pad)
    ):
        return False
    pixels = spec.h * spec.w
    if spec.n * spec.c_in * pixels >= 1 << 31:
        return False
    if pixels <= s.gemm1x1_max_pixels or (spec.n == 1 and pixels <= s.gemm1x1_single_pixels):
        return True
    if pixels > s.gemm1x1_narrow_pixels:
        return False
    cob = gemm1x1_blocking(spec, s)[0]
    dense = dense_blocking(spec.cout_g, s)[0] * 8
    padded = math.ceil(spec.cout_g / dense) * dense
    return padded >= s.gemm1x1_narrow_ratio * math.ceil(spec.cout_g / (cob * 8)) * cob * 8


def gemm1x1_blocking(spec: ConvSpec, s: Settings) -> tuple[int, int, int, int]:
    """(COB channel vectors, XB columns, STRIP most column groups, CI_CHUNK input
    channels) of gemm_1x1.

    The tile is 3 x 4 (12 accumulators of 16 ymm registers, 3 weight vectors and one
    broadcast), or 2 x 6 where 3 x 4 pads the output channels by
    ``settings.gemm1x1_pad_ratio`` more (128 channels: 144 against 128); 3 x 4 ran
    3-10 % faster than 2 x 6 elsewhere. STRIP takes ``settings.gemm1x1_whole_cols``
    columns (a batch of that many columns runs as one strip a block, see
    :func:`gemm1x1_strip`), and a chunk as many input channels as keep its packed
    weights and such a strip's inputs within ``settings.gemm1x1_l1_bytes``.
    """
    if s.gemm1x1_tile is not None:
        cob, xb = s.gemm1x1_tile
    else:
        pad34 = math.ceil(spec.cout_g / 24) * 24
        pad26 = math.ceil(spec.cout_g / 16) * 16
        cob, xb = (2, 6) if pad26 * s.gemm1x1_pad_ratio < pad34 else (3, 4)
    strip = max(1, math.ceil(max(s.gemm1x1_whole_cols, s.gemm1x1_strip_cols) / xb))
    per_ci = cob * 32 + strip * xb * 4
    chunks = math.ceil(spec.cin_g * per_ci / s.gemm1x1_l1_bytes)
    return cob, xb, strip, math.ceil(spec.cin_g / chunks)


def gemm1x1_blocks_fast(spec: ConvSpec, cob: int, xb: int, strip: int, s: Settings) -> bool:
    """Whether gemm_1x1's channel blocks vary fastest (the items after one another share
    a strip's inputs, and the weights stream past) rather than its strips (they share a
    block's weights, and the inputs stream past): whichever streams fewer bytes, the
    packed weights once per strip or the input once per block, unless
    ``settings.gemm1x1_blocks_fast`` says. A kernel argument: the batch decides it."""
    if s.gemm1x1_blocks_fast is not None:
        return s.gemm1x1_blocks_fast
    nblk = spec.groups * math.ceil(spec.cout_g / (cob * 8))
    cols = spec.n * spec.h * spec.w
    weights = nblk * spec.cin_g * cob * 32 * math.ceil(cols / (xb * strip))
    inputs = 4 * spec.c_in * cols * math.ceil(spec.cout_g / (cob * 8))
    return weights < inputs


def gemm1x1_defines(spec: ConvSpec, s: Settings) -> dict[str, int]:
    """The build defines of gemm_1x1 for ``spec`` (none depends on the batch or the
    map's size: the strip's length is an argument, STRIP its most)."""
    cob, xb, strip, chunk = gemm1x1_blocking(spec, s)
    return {
        "G": spec.groups,
        "CIN_G": spec.cin_g,
        "COUT_G": spec.cout_g,
        "COB": cob,
        "XB": xb,
        "NBLK": math.ceil(spec.cout_g / (cob * 8)),
        "STRIP": strip,
        "CI_CHUNK": chunk,
    }


def gemm1x1_strip(spec: ConvSpec, xb: int, blocks: int, s: Settings) -> int:
    """Column groups per gemm_1x1 item: the batch's columns as one strip where they are
    at most ``settings.gemm1x1_whole_cols`` (a 7x7 map's 49 at batch 1: a block's
    weights are read once), else in strips of at most ``gemm1x1_strip_cols``; but at
    least ``settings.gemm1x1_min_items`` items in all where the columns allow (a layer
    of few channel blocks would leave a core idle)."""
    cols = spec.n * spec.h * spec.w
    groups = math.ceil(cols / xb)
    most = s.gemm1x1_whole_cols if cols <= s.gemm1x1_whole_cols else s.gemm1x1_strip_cols
    per_block = math.ceil(groups / max(1, most // xb))
    want = math.ceil(s.gemm1x1_min_items / blocks)
    per_block = min(groups, max(per_block, want))
    return math.ceil(groups / per_block)


def run_gemm1x1(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """gemm_1x1 over the whole batch (float32 ``x``, weights and bias)."""
    defines = gemm1x1_defines(spec, rt.settings)
    cob, xb, nblk = (defines[k] for k in ("COB", "XB", "NBLK"))
    kernel = rt.kernel("gemm_1x1", defines, info)
    shape = (spec.n, spec.c_out, spec.h, spec.w)
    blocks = spec.groups * nblk
    strip = gemm1x1_strip(spec, xb, blocks, rt.settings)
    plane = spec.h * spec.w
    gx = math.ceil(spec.n * plane / (xb * strip))
    fast = gemm1x1_blocks_fast(spec, cob, xb, strip, rt.settings)
    sizes = [np.int32(spec.n), np.int32(plane), np.int32(strip), np.int32(fast)]
    gsize = (blocks, gx, 1) if fast else (gx, blocks, 1)
    local = (rt.settings.gemm1x1_local, 1, 1)

    def launch(x, weight, bias, info: RunInfo) -> np.ndarray:
        xbuf = rt.input_buffer(x, info)
        wbuf, bbuf = rt.packed_weights(_pack_dense, weight, bias, spec, cob, info)
        out, obuf = rt.output(shape, np.float32)
        ev = rt.enqueue(kernel, gsize, local, [xbuf, wbuf, bbuf, obuf, *sizes])
        return rt.collect(out, obuf, [ev], info)

    return rt.offer_replay(launch)(x, weight, bias, info)
