"""Direct kernels along the width and across channels: ``dw_direct.cl``,
``dw_channels.cl``, ``dw_blocks.cl`` and ``dw_groups.cl``.

``dw_direct``: float8 along the output width, several output rows per work-item sharing
loaded input rows; depthwise layers and image filters, each pass of a separable filter
(:mod:`.separable`), and forced ``direct`` on any layer (CSUM input channels per group).
Image sizes are kernel arguments, so every image size with the same filter shares one
build (a folder of mixed sizes built each size anew, 0.3-1.5 s); small planes (CNN
feature maps: sizes repeat) get them as constants too (``settings.dw_fixed_pixels``).

``dw_channels`` (CPU devices): depthwise layers with many channels on small maps (CNN
layers: at least 32 channels, outputs at most 32 wide, zero padding), float8 across 8
output channels, one launch for all channels, the taps packed as aligned float8.

``dw_blocks`` (CPU devices): plain depthwise layers (one channel per group, 8 channels
or more, 2+ taps per input pixel) on small maps: the input copied into column-padded
blocks of 8 channels, from which ``dw_blocks.cl`` reads each input value as one aligned
float8; a work-group makes its block's copy in local memory (:func:`fused`), or
``dw_to_blocks.cl`` makes it first, in a launch of its own.

``dw_groups`` (CPU devices): grouped layers of as many input as output channels a
group, a multiple of 8 (regnet's), as block-diagonal layers: a float8 across 8 of a
group's output channels, a broadcast input value times a weight vector per input
channel and tap, the input planes read in place.

``dw_wide`` (CPU devices): depthwise layers on 48-64-column maps (56x56 CNN layers, any
batch): ``dw_pad.cl`` copies the input into zero-padded planes once, then ``dw_direct``
runs with no padding, so every item takes its plain addressing path. With padding,
dw_direct sends the items at a plane's border through its index maps (a gathered float8
per load): on 56x56 maps 2 of 7 column items and 2 of 14 row items, and most of the time.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from typing import Any

import numpy as np

from convcli.backends.opencl.geometry import geometry_defines
from convcli.backends.opencl.settings import Settings
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec


def rows(kh: int, kw: int, s: Settings) -> int:
    """Output rows per dw_direct work-item (independent chains sharing loaded rows).

    Vertical passes (kw == 1) reuse each loaded row for up to 8 outputs: 8 rows were
    1.3-1.5x faster than 4 there; 2-D kernels keep 4 (accumulators + taps in registers).
    """
    for count in (8, 4, 2) if kw == 1 else (4, 2):
        if count * kh * kw <= s.dw_max_body:
            return count
    return 1


def _sizes(p: ConvSpec) -> list[int]:
    """The image sizes dw_direct takes (as arguments, or as defines on small planes)."""
    hp, wp = p.h + p.pad[0] + p.pad[1], p.w + p.pad[2] + p.pad[3]
    return [p.n, p.h, p.w, p.h_out, p.w_out, hp, wp]


@functools.lru_cache(maxsize=256)  # 7 us to build, asked at every launch
def defines(p: ConvSpec, s: Settings) -> dict[str, int]:
    """The build defines of dw_direct for the pass ``p`` (``p.cin_g`` input channels and
    ``p.cout_g`` output channels per group). Shared: callers must not change it."""
    found = {
        "C_IN": p.c_in,
        "C_OUT": p.c_out,
        "CSUM": p.cin_g,
        "CMULT": p.cout_g,
        **geometry_defines(p.kh, p.kw, p.stride, p.dilation),
        "PADT": p.pad[0],
        "PADL": p.pad[2],
        "HAS_BIAS": 1 if p.has_bias else 0,
        "ROWS": rows(p.kh, p.kw, s),
    }
    if p.h * p.w <= s.dw_fixed_pixels:
        found["FIXED_SIZES"] = 1
        found.update(zip(("N", "H", "W", "HO", "WO", "HP", "WP"), _sizes(p), strict=True))
    return found


def _bound(rt: Any, p: ConvSpec, has_bias: bool, info: RunInfo) -> tuple:
    """What a dw_direct launch of the pass ``p`` binds before its buffers: (kernel, index
    maps, global size, size arguments, ``fixed_from``)."""
    s = rt.settings
    if p.has_bias != has_bias:
        p = replace(p, has_bias=has_bias)
    kernel = rt.kernel("dw_direct", defines(p, s), info)
    rmap, cmap = rt.index_maps(p, info)
    gsize = (math.ceil(p.w_out / 8), math.ceil(p.h_out / rows(p.kh, p.kw, s)), p.n * p.c_out)
    sizes = [np.int32(v) for v in _sizes(p)]
    fixed_from = 0 if p.h * p.w <= s.dw_fixed_pixels else s.dw_fixed_items
    return kernel, rmap, cmap, gsize, sizes, fixed_from


def enqueue(
    rt: Any, xbuf: Any, p: ConvSpec, taps: np.ndarray, bias: np.ndarray | None, obuf: Any,
    info: RunInfo,
) -> Any:  # fmt: skip
    """Enqueue one dw_direct launch of the pass ``p`` from ``xbuf`` into ``obuf`` (laid out
    as ``p`` says), ``taps`` ``(C_out, KH*KW*CSUM)``; returns its event."""
    kernel, rmap, cmap, gsize, sizes, fixed_from = _bound(rt, p, bias is not None, info)
    wbuf = rt.upload(taps)
    bbuf = rt.upload(bias if bias is not None else np.zeros(1, np.float32))
    args = [xbuf, wbuf, bbuf, rmap, cmap, obuf, *sizes]
    return rt.enqueue_rows(kernel, gsize, args, fixed_from=fixed_from)


def _pack_taps(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, block: object
) -> tuple[np.ndarray, np.ndarray]:
    """Taps as dw_direct reads them, ``(C_out, KH*KW*CSUM)``, and the bias (one zero
    when there is none)."""
    taps = np.ascontiguousarray(weight.reshape(spec.c_out, -1), dtype=np.float32)
    b = np.zeros(1, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    return taps, b


def _launch(rt: Any, spec: ConvSpec, p: ConvSpec, has_bias: bool, info: RunInfo, pad=None):
    """dw_direct's launch of the layer ``spec`` as the pass ``p`` (``pad``: dw_wide's
    padding launch first, (kernel, global size, scratch bytes)), offered for replay."""
    kernel, rmap, cmap, gsize, sizes, fixed_from = _bound(rt, p, has_bias, info)
    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)

    def launch(x, weight, bias, info: RunInfo) -> np.ndarray:
        xbuf = rt.input_buffer(x, info)
        events = []
        if pad is not None:
            # asked at every call: another layer may take a larger scratch buffer
            pbuf = rt.scratch("dw_wide_padded", pad[2])
            events.append(rt.enqueue_rows(pad[0], pad[1], [xbuf, pbuf]))
            xbuf = pbuf
        wbuf, bbuf = rt.packed_weights(_pack_taps, weight, bias, spec, None, info)
        out, obuf = rt.output(shape, np.float32)
        args = [xbuf, wbuf, bbuf, rmap, cmap, obuf, *sizes]
        events.append(rt.enqueue_rows(kernel, gsize, args, fixed_from=fixed_from))
        return rt.collect(out, obuf, events, info)

    return rt.offer_replay(launch)


def run(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """dw_direct over the whole batch (float32 ``x``, weights and bias)."""
    return _launch(rt, spec, spec, bias is not None, info)(x, weight, bias, info)


# ---------------------------------------------------------------------------- dw_wide


def wide_pays(spec: ConvSpec, cpu: bool, s: Settings) -> bool:
    """Whether ``spec`` runs as dw_wide: a zero-padded stride-1 float32 depthwise layer
    on a CPU device whose output rows are ``dw_wide_min_wo..dw_wide_max_wo`` wide, in
    whole float8 vectors (a partial last vector would still take the border path)."""
    return (
        cpu
        and spec.cin_g == 1
        and spec.dtype == "float32"
        and spec.padding_mode == "zeros"
        and spec.stride == (1, 1)
        and any(spec.pad)
        and min(spec.pad) >= 0
        and s.dw_wide_min_wo <= spec.w_out <= s.dw_wide_max_wo
        and spec.w_out % 8 == 0
    )


def _unpadded(spec: ConvSpec) -> ConvSpec:
    """dw_direct's pass over the padded planes: the same layer with no padding."""
    hp, wp = spec.h + spec.pad[0] + spec.pad[1], spec.w + spec.pad[2] + spec.pad[3]
    return replace(spec, h=hp, w=wp, pad=(0, 0, 0, 0))


def pad_defines(spec: ConvSpec) -> dict[str, int]:
    """dw_pad's build defines (CNN feature maps repeat their sizes)."""
    p = _unpadded(spec)
    return {
        "PLANES": spec.n * spec.c_in,
        "H": spec.h,
        "W": spec.w,
        "HP": p.h,
        "WP": p.w,
        "PADT": spec.pad[0],
        "PADL": spec.pad[2],
    }


def wide_programs(spec: ConvSpec, s: Settings) -> list[tuple[str, dict[str, int]]]:
    """The programs a dw_wide run of ``spec`` builds (kernel file, build defines)."""
    return [("dw_pad", pad_defines(spec)), ("dw_direct", defines(_unpadded(spec), s))]


def run_wide(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """dw_pad, then dw_direct without padding (float32 ``x``, weights and bias)."""
    p = _unpadded(spec)
    pad = rt.kernel("dw_pad", pad_defines(spec), info)
    sizes = (pad, (p.h, spec.n * spec.c_in, 1), 4 * spec.n * spec.c_in * p.h * p.w)
    return _launch(rt, spec, p, bias is not None, info, sizes)(x, weight, bias, info)


# ------------------------------------------------------------------------ dw_channels


def channels_pays(spec: ConvSpec, cpu: bool, s: Settings) -> bool:
    """Depthwise layers with many channels on small maps run dw_channels: their rows are
    too short for dw_direct's float8 along the width (a 7-wide row runs 7 of 8 lanes
    through the padded border path, one channel plane per item). CPU devices only: the
    layouts and work-group sizes were chosen on PoCL, GPUs keep their own kernels."""
    return (
        cpu
        and spec.cin_g == 1
        and spec.c_out >= s.dw_channels_min_cout
        and spec.padding_mode == "zeros"
        and spec.kh * spec.kw <= s.dense_max_taps
        and spec.w_out <= s.dw_channels_max_wo
    )


def _segments(w_out: int, s: Settings) -> tuple[int, int]:
    """(XB output columns per item, NSEG items per row): the fewest equal segments of
    at most dw_channels_xb columns (a 28-wide row: 4 of 7, not 3 of 8 and one of 4)."""
    nseg = -(-w_out // s.dw_channels_xb)
    xb = -(-w_out // nseg)
    return xb, -(-w_out // xb)


def _pack_channels(
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


def channels_defines(spec: ConvSpec, has_bias: bool, s: Settings) -> dict[str, int]:
    """The build defines of dw_channels for ``spec``."""
    xb, nseg = _segments(spec.w_out, s)
    sizes = {}
    if s.dw_channels_fixed_sizes:
        sizes = {"FIXED_SIZES": 1, "N": spec.n, "H": spec.h, "HO": spec.h_out}
    return {
        **sizes,
        "C_IN": spec.c_in,
        "C_OUT": spec.c_out,
        "CSUM": spec.cin_g,
        "CMULT": spec.cout_g,
        **geometry_defines(spec.kh, spec.kw, spec.stride, spec.dilation),
        "PADT": spec.pad[0],
        "PADL": spec.pad[2],
        "W": spec.w,
        "WO": spec.w_out,
        "XB": xb,
        "NSEG": nseg,
        "HAS_BIAS": int(has_bias),
    }


def run_channels(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """dw_channels over the whole batch (float32 ``x``, weights and bias)."""
    s = rt.settings
    _, nseg = _segments(spec.w_out, s)
    ncb = -(-spec.c_out // 8)
    kernel = rt.kernel("dw_channels", channels_defines(spec, bias is not None, s), info)
    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    gsize = (nseg, spec.h_out, spec.n * ncb)
    sizes = [*map(np.int32, (spec.n, spec.h, spec.h_out))]
    items = s.dw_channels_items

    def launch(x, weight, bias, info: RunInfo) -> np.ndarray:
        xbuf = rt.input_buffer(x, info)
        wbuf, bbuf = rt.packed_weights(_pack_channels, weight, bias, spec, 8, info)
        out, obuf = rt.output(shape, np.float32)
        args = [xbuf, wbuf, bbuf, obuf, *sizes]
        ev = rt.enqueue_rows(kernel, gsize, args, fill_to=items)
        return rt.collect(out, obuf, [ev], info)

    return rt.offer_replay(launch)(x, weight, bias, info)


# -------------------------------------------------------------------------- dw_blocks


def blocks_pays(spec: ConvSpec, cpu: bool, s: Settings) -> bool:
    """Plain depthwise layers (one input and one output channel per group) from
    ``settings.dw_blocks_min_cout`` channels run as dw_blocks: the input copied into
    zero-padded blocks of 8 channels, so that the taps read whole aligned float8 values
    (not gathering 8 scalars from 8 planes, not float8 along a row with its border
    path). The copy pays where the taps per input pixel (taps over the stride's area)
    reach ``dw_blocks_min_taps``, on output rows up to ``dw_channels_max_wo`` wide; and
    wider: made in local memory (:func:`fused`), up to ``dw_blocks_fused_max_wo`` from
    ``dw_blocks_fused_wide_taps`` taps on; by dw_to_blocks, up to
    ``dw_blocks_wide_max_wo`` from ``dw_blocks_wide_taps`` taps on (strided layers
    with inputs up to ``dw_blocks_strided_max_bytes``)."""
    taps = spec.kh * spec.kw
    if fused(spec, s):
        wide = taps >= s.dw_blocks_fused_wide_taps and spec.w_out <= s.dw_blocks_fused_max_wo
    else:
        # dw_to_blocks' copy of a large strided input leaves the caches: N=8 96 channels
        # at 112^2 4.6 ms against dw_direct's 3.1 (fused: 1.65 against 3.6)
        large = spec.stride[0] * spec.stride[1] > 1 and (
            4 * spec.n * spec.c_in * spec.h * spec.w > s.dw_blocks_strided_max_bytes
        )
        wide = taps >= s.dw_blocks_wide_taps and spec.w_out <= s.dw_blocks_wide_max_wo
        wide = wide and not large
    return (
        s.dw_blocks
        and cpu
        and spec.cin_g == 1
        and spec.cout_g == 1
        and spec.c_out >= s.dw_blocks_min_cout
        and spec.padding_mode == "zeros"
        and taps <= s.dense_max_taps
        and taps / (spec.stride[0] * spec.stride[1]) >= s.dw_blocks_min_taps
        and (wide or spec.w_out <= s.dw_channels_max_wo)
    )


def _blocks_width(spec: ConvSpec, s: Settings) -> int:
    """WP: the padded width, wide enough for every segment's input columns."""
    xb, nseg = _segments(spec.w_out, s)
    reach = (nseg * xb - 1) * spec.stride[1] + (spec.kw - 1) * spec.dilation[1] + 1
    return max(spec.w + spec.pad[2] + spec.pad[3], reach)


def _tile_rows(spec: ConvSpec) -> int:
    """Input rows a fused dw_blocks work-group copies: those all output rows reach."""
    reach = (spec.h_out - 1) * spec.stride[0] + (spec.kh - 1) * spec.dilation[0] + 1
    return max(1, min(spec.h, reach))


def fused(spec: ConvSpec, s: Settings) -> bool:
    """Whether dw_blocks copies its input into local memory itself (one launch, a
    work-group a block of 8 channels) instead of after a dw_to_blocks launch: where a
    block's blocked rows take at most ``settings.dw_blocks_fused_max_bytes``."""
    tile = 32 * _blocks_width(spec, s) * _tile_rows(spec)
    return s.dw_blocks_fused and tile <= s.dw_blocks_fused_max_bytes


def blocks_programs(spec: ConvSpec, s: Settings) -> list[tuple[str, dict[str, int]]]:
    """The programs a dw_blocks run of ``spec`` builds (kernel file, build defines)."""
    xb, nseg = _segments(spec.w_out, s)
    wp = _blocks_width(spec, s)
    to_blocks = {
        "C": spec.c_in,
        "W": spec.w,
        "WP": wp,
        "PADL": spec.pad[2],
        "TRANSPOSE": 1 if spec.w >= 8 else 2 if spec.pad[2] + 8 <= wp else 0,
    }
    blocks = {
        "C": spec.c_out,
        **geometry_defines(spec.kh, spec.kw, spec.stride, spec.dilation),
        "PADT": spec.pad[0],
        "WP": wp,
        "WO": spec.w_out,
        "XB": xb,
        "NSEG": nseg,
    }
    if fused(spec, s):
        return [("dw_blocks", {**blocks, **to_blocks, "FUSED": 1})]
    return [("dw_to_blocks", to_blocks), ("dw_blocks", blocks)]


def _pack_blocks(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Taps as dw_blocks reads them: ``(NCB, KH, KW, 8)``; bias ``(NCB, 8)``."""
    return _pack_channels(weight, bias, spec, step)  # CSUM = 1: the same layout


def run_blocks(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """dw_to_blocks, then dw_blocks, over the whole batch (float32 ``x``, weights, bias);
    or dw_blocks alone, copying into local memory (:func:`fused`)."""
    s = rt.settings
    found = blocks_programs(spec, s)
    if len(found) == 1 and 32 * found[0][1]["WP"] * _tile_rows(spec) > rt.limits.local_mem_bytes:
        # more than this device's local memory: dw_to_blocks first
        found = blocks_programs(spec, replace(s, dw_blocks_fused=False))
    name, defines = found[-1]
    kernel = rt.kernel(name, defines, info)
    ncb = -(-spec.c_out // 8)
    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    gsize = (defines["NSEG"], spec.h_out, spec.n * ncb)
    out_sizes = [*map(np.int32, (spec.n, spec.h, spec.h_out))]
    if len(found) == 1:
        # a work-group a block: every output row, and the input rows they reach
        tile = rt._cl.LocalMemory(32 * defines["WP"] * _tile_rows(spec))
        local = (defines["NSEG"], spec.h_out, 1)

        def fused_launch(x, weight, bias, info: RunInfo) -> np.ndarray:
            xbuf = rt.input_buffer(x, info)
            wbuf, bbuf = rt.packed_weights(_pack_blocks, weight, bias, spec, 8, info)
            out, obuf = rt.output(shape, np.float32)
            args = [xbuf, wbuf, bbuf, obuf, tile, *out_sizes]
            ev = rt.enqueue(kernel, gsize, local, args)
            return rt.collect(out, obuf, [ev], info)

        return rt.offer_replay(fused_launch)(x, weight, bias, info)
    to_blocks = rt.kernel(*found[0], info)
    nbytes = spec.n * ncb * spec.h * defines["WP"] * 32
    to_size = (spec.h, spec.n * ncb)
    sizes = [*map(np.int32, (spec.n, spec.h))]
    items = s.dw_channels_items

    def launch(x, weight, bias, info: RunInfo) -> np.ndarray:
        xbuf = rt.input_buffer(x, info)
        # asked at every call: another layer may take a larger scratch buffer
        blocks = rt.scratch("dw_blocks", nbytes)
        events = [rt.enqueue(to_blocks, to_size, (8, 8), [xbuf, blocks, *sizes])]
        wbuf, bbuf = rt.packed_weights(_pack_blocks, weight, bias, spec, 8, info)
        out, obuf = rt.output(shape, np.float32)
        args = [blocks, wbuf, bbuf, obuf, *out_sizes]
        events.append(rt.enqueue_rows(kernel, gsize, args, fill_to=items))
        return rt.collect(out, obuf, events, info)

    return rt.offer_replay(launch)(x, weight, bias, info)


# -------------------------------------------------------------------------- dw_groups


def groups_pays(spec: ConvSpec, cpu: bool, s: Settings) -> bool:
    """Grouped layers of as many input as output channels a group, a multiple of 8
    (regnet's 8, 16, 24...), run as dw_groups on CPU devices: block-diagonal layers, a
    float8 across 8 of a group's output channels, reading the input planes in place;
    border segments built with their columns as constants. dense_gemm ran them as an
    implicit GEMM whose items on small maps mostly took its index-map border path.
    Up to ``dw_groups_max_cin`` channels a group, and up to ``dw_groups_max_cin_7``
    where output rows are at most 7 wide (against dense_gemm's register tiles, wider
    groups lost on larger maps); input rows up to ``dw_groups_max_w`` wide (measured
    up to regnet's 112)."""
    narrow = spec.cin_g <= s.dw_groups_max_cin
    small_map = spec.cin_g <= s.dw_groups_max_cin_7 and spec.w_out <= 7
    return (
        cpu
        and s.dw_groups
        and spec.w <= s.dw_groups_max_w
        and spec.groups > 1
        and spec.cin_g == spec.cout_g
        and spec.cout_g % 8 == 0
        and (narrow or small_map)
        and spec.padding_mode == "zeros"
        and spec.kh * spec.kw <= s.dense_max_taps
    )


def _group_segments(spec: ConvSpec, s: Settings) -> tuple[int, int]:
    """(XB, NSEG) for dw_groups: the fewest equal segments of at most dw_groups_xb."""
    nseg = -(-spec.w_out // s.dw_groups_xb)
    xb = -(-spec.w_out // nseg)
    return xb, -(-spec.w_out // xb)


def groups_defines(spec: ConvSpec, s: Settings) -> dict[str, int]:
    """The build defines of dw_groups for ``spec``: MID_CHECK 0 where the segments
    between the first and the last read only columns inside the plane."""
    xb, nseg = _group_segments(spec, s)
    sw, reach = spec.stride[1], (spec.kw - 1) * spec.dilation[1]
    first = xb * sw - spec.pad[2]  # the second segment's first input column
    last = ((nseg - 1) * xb - 1) * sw - spec.pad[2] + reach  # the last middle column
    return {
        "C_IN": spec.c_in,
        "C_OUT": spec.c_out,
        "CIN_G": spec.cin_g,
        "COUT_G": spec.cout_g,
        **geometry_defines(spec.kh, spec.kw, spec.stride, spec.dilation),
        "PADT": spec.pad[0],
        "PADL": spec.pad[2],
        "W": spec.w,
        "WO": spec.w_out,
        "XB": xb,
        "NSEG": nseg,
        "MID_CHECK": int(nseg > 2 and (first < 0 or last >= spec.w)),
    }


def _pack_groups(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, step: object
) -> tuple[np.ndarray, np.ndarray]:
    """Taps as dw_groups reads them: ``(NB, KH, KW, CIN_G, 8)`` for the NB blocks of 8
    output channels; bias ``(NB, 8)`` (zeros without bias)."""
    nb = spec.c_out // 8
    w = weight.reshape(nb, 8, spec.cin_g, spec.kh, spec.kw).transpose(0, 3, 4, 2, 1)
    b = np.zeros(spec.c_out, np.float32) if bias is None else bias
    return np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)


def run_groups(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """dw_groups over the whole batch (float32 ``x``, weights and bias)."""
    s = rt.settings
    defines = groups_defines(spec, s)
    kernel = rt.kernel("dw_groups", defines, info)
    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    gsize = (defines["NSEG"], spec.h_out, spec.n * spec.c_out // 8)
    sizes = [*map(np.int32, (spec.n, spec.h, spec.h_out))]
    items = s.dw_groups_items

    def launch(x, weight, bias, info: RunInfo) -> np.ndarray:
        xbuf = rt.input_buffer(x, info)
        wbuf, bbuf = rt.packed_weights(_pack_groups, weight, bias, spec, None, info)
        out, obuf = rt.output(shape, np.float32)
        args = [xbuf, wbuf, bbuf, obuf, *sizes]
        ev = rt.enqueue_rows(kernel, gsize, args, fill_to=items)
        return rt.collect(out, obuf, [ev], info)

    return rt.offer_replay(launch)(x, weight, bias, info)
