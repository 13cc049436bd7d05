"""Winograd F(2x2, 3x3) for 3x3 layers whose stride equals their dilation (a stride-1
3x3 on the grid of every stride-th row and column), when the cost model says so.

Three forms, all reported as ``gemm`` (the same GEMM, reassociated):

* split: ``winograd_input.cl`` (V = B^T d B per 4x4 tile), ``winograd_gemm.cl`` (16 GEMMs
  per group, 2.25x fewer multiply-adds) and ``winograd_output.cl`` (Y = A^T M A + bias),
  in chunks of tile rows;
* fused (few input channels per group, CPU devices): ``winograd_gemm_out.cl`` does the
  GEMMs and the output transform in one item, so M never goes to memory;
* whole (CPU devices): one launch of ``winograd_fused.cl`` for the whole layer.

The choices depend on the layer only (channels, kernel, stride, dilation), never on the
image or batch size, so row bands and batch pieces of a tiled call run the same kernels
as the whole.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from convcli.backends.opencl.gemm import channel_blocks
from convcli.backends.opencl.settings import Settings
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec

# Winograd F(2x2, 3x3) weight transform G (4x3).
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def applies(spec: ConvSpec) -> bool:
    """3x3 with stride equal to dilation per axis: a stride-1 3x3 on a virtual grid."""
    return (
        spec.kh == 3
        and spec.kw == 3
        and spec.stride[0] == spec.dilation[0]
        and spec.stride[1] == spec.dilation[1]
    )


def pays(spec: ConvSpec, s: Settings) -> bool:
    """Whether a 'gemm' layer runs as Winograd (``settings.wino_min_ratio``, and
    ``wino_wide_in_min_cout`` for layers of more than ``wino_whole_max_cin`` input
    channels per group). Channels only: the bands and batch pieces of a tiled call must
    choose as the whole did."""
    if not applies(spec):
        return False
    if s.winograd is not None:
        return s.winograd
    if spec.cin_g > s.wino_whole_max_cin and spec.cout_g < s.wino_wide_in_min_cout:
        return False
    return spec.cin_g * spec.cout_g >= s.wino_min_ratio * (spec.cin_g + spec.cout_g)


def fused(spec: ConvSpec, cpu: bool, s: Settings) -> bool:
    """Whether the GEMMs and the output transform run as one kernel (layer-only too).

    CPU devices only (``cpu``): the item's 16 x KB x XV float8 GEMM results (about 6 KB)
    wait in private memory, which stays in a CPU's L1 but spills on GPUs; the split
    kernels keep a 12-accumulator tile (untested on a GPU: none was lent).
    """
    if s.wino_fused is not None:
        return s.wino_fused
    return cpu and spec.cin_g <= s.wino_fused_max_cin


def whole(spec: ConvSpec, cpu: bool, s: Settings) -> bool:
    """Whether the whole layer runs as one winograd_fused launch (``cpu``: the device is
    a CPU, whose caches hold the larger private arrays; see ``settings.wino_whole``)."""
    if s.wino_whole is not None:
        return s.wino_whole
    return cpu and spec.cin_g <= s.wino_whole_max_cin


def tile(cout_g: int, s: Settings) -> tuple[int, int]:
    """6 x 2 (12 accumulators, 2 vector loads + 6 broadcasts per input channel: the 6x16
    BLIS shape) unless 4 x 2 pads fewer channels: KB = 6 computes 36 channels for 32
    (W7: its GEMMs ran 10 % faster with KB = 4; W6 within noise)."""
    if s.wino_tile is not None:
        return s.wino_tile
    pad6, pad4 = -cout_g % 6, -cout_g % 4
    return (4, 2) if pad4 < pad6 else (6, 2)


def _pack(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, kb: int
) -> tuple[np.ndarray, np.ndarray]:
    """U = G g G^T (in float64, rounded once) as ``(G, 16, NBLK, CIN_G, KB)``; the bias
    as ``(C_out,)`` (zeros without bias)."""
    u = np.einsum("ai,ocij,bj->ocab", _G, weight.astype(np.float64), _G)
    wp, _ = channel_blocks(u.reshape(spec.c_out, spec.cin_g, 16), None, spec, kb)
    b = np.zeros(spec.c_out, np.float32) if bias is None else bias.astype(np.float32)
    return np.ascontiguousarray(wp.transpose(0, 3, 1, 2, 4)), b


def _virtual_maps(rt: Any, spec: ConvSpec, th: int, tw: int, info: RunInfo):
    """The virtual-grid row and column index maps that the Winograd input transform
    reads (``vrow``, ``vcol`` in winograd_input.cl) for ``th`` x ``tw`` tiles."""
    mode, pad, stride = spec.padding_mode, spec.pad, spec.stride
    vrow = rt.index_map(spec.h, pad[0], pad[1], mode, stride[0], 2 * th + 2, info)
    # the last item of a row reads up to 8 tiles (18 virtual columns) from its first
    vcol_len = 16 * math.ceil(tw / 8) + 2
    vcol = rt.index_map(spec.w, pad[2], pad[3], mode, stride[1], vcol_len, info)
    return vrow, vcol


def _whole_defines(spec: ConvSpec, s: Settings) -> dict[str, int]:
    """winograd_fused's build defines (with the batch size and heights under
    ``settings.wino_whole_fixed_sizes``)."""
    kb, _ = tile(spec.cout_g, s)
    ho, wo = spec.h_out, spec.w_out
    th, tw = math.ceil(ho / 2), math.ceil(wo / 2)
    defines = {"G": spec.groups, "CIN_G": spec.cin_g, "COUT_G": spec.cout_g}
    defines.update({"W": spec.w, "WO": wo, "TW": tw, "KB": kb, "XV": 2})
    defines["NBLK"] = math.ceil(spec.cout_g / kb)
    if s.wino_whole_fixed_sizes:
        defines.update(FIXED_SIZES=1, N=spec.n, H=spec.h, HO=ho, TH=th)
    return defines


def _split(spec: ConvSpec, cpu: bool, s: Settings) -> tuple[dict[str, int], list]:
    """The split form's geometry (kb, xv, nblk, kp, th, tw, one, chunk, pp, the image
    sizes) and its programs (kernel file, build defines) in launch order."""
    kb, xv = tile(spec.cout_g, s)
    nblk = math.ceil(spec.cout_g / kb)
    kp = nblk * kb
    ho, wo = spec.h_out, spec.w_out
    th, tw = math.ceil(ho / 2), math.ceil(wo / 2)
    one = fused(spec, cpu, s)
    # V, and M unless fused, per tile row
    row_bytes = 16 * 4 * tw * (spec.c_in + (0 if one else spec.groups * kp))
    budget = min(s.wino_chunk_bytes, s.wino_fused_chunk_bytes) if one else s.wino_chunk_bytes
    chunk = max(1, min(spec.n * th, budget // row_bytes))
    if s.wino_even_chunks:
        # as many chunks, of even size: no short last chunk whose three launches keep
        # few items for the device's threads
        chunk = math.ceil(spec.n * th / math.ceil(spec.n * th / chunk))
    pp = math.ceil(chunk * tw / (8 * xv)) * 8 * xv
    # the image sizes and the chunk's row stride: arguments, or build defines with
    # settings.wino_split_fixed_sizes (a build per image size, batch size and chunk)
    # (the widths stay defines, and winograd_input's PP: see winograd_input.cl)
    in_sizes = {"N": spec.n, "H": spec.h, "TH": th}
    out_sizes = {"HO": ho, "TH": th, "PP": pp}

    def sized(defines: dict, sizes: dict) -> dict:
        return {**defines, "FIXED_SIZES": 1, **sizes} if s.wino_split_fixed_sizes else defines

    defs = {"G": spec.groups, "CIN_G": spec.cin_g, "W": spec.w, "TW": tw, "PP": pp}
    progs = [("winograd_input", sized(defs, in_sizes))]
    if one:
        defs = {"G": spec.groups, "CIN_G": spec.cin_g, "COUT_G": spec.cout_g}
        defs.update({"WO": wo, "TW": tw, "KB": kb, "XV": xv, "NBLK": nblk})
        progs.append(("winograd_gemm_out", sized(defs, out_sizes)))
    else:
        defs = {"G": spec.groups, "CIN_G": spec.cin_g, "KB": kb, "XV": xv, "NBLK": nblk}
        progs.append(("winograd_gemm", sized(defs, {"PP": pp})))
        defs = {"G": spec.groups, "COUT_G": spec.cout_g, "WO": wo, "TW": tw, "KP": kp}
        progs.append(("winograd_output", sized(defs, out_sizes)))
    geometry = dict(kb=kb, xv=xv, nblk=nblk, kp=kp, th=th, tw=tw, one=one, chunk=chunk, pp=pp)
    geometry.update(in_args=[*map(np.int32, in_sizes.values())])
    geometry.update(out_args=[*map(np.int32, out_sizes.values())])
    return geometry, progs


def programs(spec: ConvSpec, cpu: bool, s: Settings) -> list[tuple[str, dict[str, int]]]:
    """The programs (kernel file, build defines) a Winograd run of ``spec`` builds on a
    CPU (``cpu``) or other device (plan.programs)."""
    if whole(spec, cpu, s):
        return [("winograd_fused", _whole_defines(spec, s))]
    return _split(spec, cpu, s)[1]


def run_whole(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """Winograd F(2x2, 3x3) as one launch of winograd_fused (see :func:`whole`)."""
    s = rt.settings
    xv = 2
    ho, wo = spec.h_out, spec.w_out
    th, tw = math.ceil(ho / 2), math.ceil(wo / 2)
    heights = (spec.n, spec.h, ho, th)
    defines = _whole_defines(spec, s)
    kb = defines["KB"]
    kernel = rt.kernel("winograd_fused", defines, info)
    vrow, vcol = _virtual_maps(rt, spec, th, tw, info)
    shape = (spec.n, spec.c_out, ho, wo)
    nvec = spec.n * th * math.ceil(tw / 8)
    gsize = (math.ceil(nvec / xv), spec.groups, 1)
    local = (s.wino_whole_local, 1, 1)
    sizes = [*map(np.int32, heights)]

    def launch(x, weight, bias, info: RunInfo) -> np.ndarray:
        xbuf = rt.input_buffer(x, info)
        ubuf, bbuf = rt.packed_weights(_pack, weight, bias, spec, kb, info)
        out, obuf = rt.output(shape, np.float32)
        args = [xbuf, vrow, vcol, ubuf, bbuf, obuf, *sizes]
        ev = rt.enqueue(kernel, gsize, local, args)
        return rt.collect(out, obuf, [ev], info)

    return rt.offer_replay(launch)(x, weight, bias, info)


def run(rt: Any, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """Winograd F(2x2, 3x3): input transform, 16 x groups GEMMs, output transform
    (the last two as one kernel when :func:`fused`).

    Runs in chunks of tile rows whose transformed planes (V, and M unless fused) take at
    most ``wino_chunk_bytes`` (``wino_fused_chunk_bytes`` fused); every tile is computed
    the same way whatever the chunking.
    """
    s = rt.settings
    geo, progs = _split(spec, rt.is_cpu, s)
    kb, xv, nblk, kp, th, tw = (geo[k] for k in ("kb", "xv", "nblk", "kp", "th", "tw"))
    one, chunk, pp, in_args, out_args = (
        geo[k] for k in ("one", "chunk", "pp", "in_args", "out_args")
    )
    ho, wo = spec.h_out, spec.w_out
    rows_total = spec.n * th
    kernels = [rt.kernel(name, defines, info) for name, defines in progs]
    if one:
        k_in, k_fused = kernels
    else:
        k_in, k_mm, k_out = kernels
    xbuf = rt.input_buffer(x, info)
    vrow, vcol = _virtual_maps(rt, spec, th, tw, info)
    vbuf = rt.scratch("winograd_v", 4 * 16 * spec.c_in * pp)
    if not one:
        mbuf = rt.scratch("winograd_m", 4 * 16 * spec.groups * kp * pp)
    out, obuf = rt.output((spec.n, spec.c_out, ho, wo), np.float32)
    events = []
    ubuf = bbuf = None
    if weight.nbytes < s.wino_overlap_bytes:
        # small weights: checked before the first launch, so that the launches follow
        # each other without the host in between (the host shares the cores with the
        # device's threads: W7's 74 KB check between two launches left the device idle
        # for 0.07 ms)
        ubuf, bbuf = rt.packed_weights(_pack, weight, bias, spec, kb, info)
    for row0 in range(0, rows_total, chunk):
        rows = min(chunk, rows_total - row0)
        tiles = rows * tw
        r0 = np.int32(row0)
        gin = (math.ceil(tw / 8) * rows, spec.c_in, 1)
        gmm = (math.ceil(tiles / (8 * xv)), nblk, 16 * spec.groups)
        gout = (math.ceil(tiles / 8), spec.cout_g, spec.groups)
        args = [xbuf, vrow, vcol, vbuf, r0, np.int32(rows), *in_args]
        events.append(rt.enqueue_rows(k_in, gin, args))
        if ubuf is None:
            # the exact weight check (a read of the weights and of their copy) runs
            # while the device transforms the first chunk's input
            ubuf, bbuf = rt.packed_weights(_pack, weight, bias, spec, kb, info)
        if one:
            args = [ubuf, vbuf, bbuf, obuf, r0, np.int32(tiles), *out_args]
            gs = (nblk, math.ceil(tiles / (8 * xv)), spec.groups)
            events.append(rt.enqueue_rows(k_fused, gs, args))
            continue
        events.append(rt.enqueue_rows(k_mm, gmm, [ubuf, vbuf, mbuf, np.int32(pp)]))
        args = [mbuf, bbuf, obuf, r0, np.int32(tiles), *out_args]
        events.append(rt.enqueue_rows(k_out, gout, args))
    return rt.collect(out, obuf, events, info)
