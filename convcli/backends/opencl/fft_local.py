"""FFT convolution for GPU-type devices: a work-group per tile pair (``fft_local.cl``).

:mod:`convcli.backends.opencl.fft` (``fft_conv.cl``) runs a whole T x T tile pair's FFT
in one work-item: right for a CPU device, which runs a work-group of one as a loop in its
own caches, and hostile to a GPU, where it leaves all but one lane of each work-group
idle. ``fft_local.cl`` does the same overlap-save (two real tiles packed as one complex
tile, the kernel spectrum in the transforms' bit-reversed order, every padding mode
through the index maps, stride, dilation through the dilated extent, channel
multipliers, bias) with a work-group of up to ``settings.fft_local_items`` items sharing
each radix-2 stage of the tile's transforms in local memory.

:func:`device_plan` puts it in place of ``fft_conv`` where the GPU-shaped kernels run
(:func:`convcli.backends.opencl.gpu.gpu_kernels`): under a forced ``algo='fft'``, and
under ``algo='auto'`` where :func:`convcli.backends.opencl.fft.pays` says FFT tiles beat
direct taps (CPU devices choose ``fft_conv`` there themselves; GPU devices ran direct
taps before). :func:`run` picks the tile side (``settings.fft_local_tiles``) by the FFT
cost model among the sides whose tile fits the device's local memory, and falls back
when a launch is refused even with one item per group: to a smaller tile, then
(``auto``) to ``direct_local`` or the generic kernel, or (a forced ``fft``) to
``fft_conv``. None of this has run on a real GPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from convcli.backends.opencl import fft
from convcli.backends.opencl.device import import_cl
from convcli.backends.opencl.runtime import NoFit, launch_refused
from convcli.backends.opencl.settings import DEFAULT, Settings
from convcli.errors import ConvValueError
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec


def tile_bytes(t: int) -> int:
    """Local memory of one work-group: the complex tile (the kernel's only local array)."""
    return 8 * t * t


def tiles(spec: ConvSpec, local_mem: int | None = None, s: Settings = DEFAULT) -> list[int]:
    """The tile sides (``settings.fft_local_tiles``) that can run ``spec`` in ``local_mem``
    bytes (None: any), cheapest first by the FFT cost model: a side must exceed the
    dilated kernel's extent (at least one valid output per tile)."""
    ke = max(fft._extent(spec))
    fits = [
        t for t in s.fft_local_tiles if t > ke and (local_mem is None or tile_bytes(t) <= local_mem)
    ]
    return sorted(fits, key=lambda t: (fft._cost(spec, t), -t))


def why_not(spec: ConvSpec, local_mem: int | None = None, s: Settings = DEFAULT) -> str | None:
    """Why ``fft_local`` cannot run ``spec`` in ``local_mem`` bytes, or None."""
    reason = fft.why_not(spec, None, s)
    if reason is not None:
        return reason
    if not tiles(spec, local_mem, s):
        ke = max(fft._extent(spec))
        fit = [t for t in s.fft_local_tiles if local_mem is None or tile_bytes(t) <= local_mem]
        if not fit:
            need = tile_bytes(s.fft_local_tiles[0])
            return f"needs {need} bytes of local memory, the device has {local_mem}"
        return f"supports dilated kernels up to {fit[-1] - 1} pixels across, got {ke}"
    return None


def device_plan(plan: Any, spec: ConvSpec, algo: str, s: Settings = DEFAULT) -> Any:
    """``Plan("fft", "fft_local")`` where it replaces ``plan`` (a
    :class:`convcli.backends.opencl.plan.Plan` or None) on a device running the
    GPU-shaped kernels, else None: every ``fft_conv`` plan (forced, or a band of a tiled
    call forcing the whole's), and under ``auto`` a depthwise layer planned for direct
    taps where FFT tiles pay and the kernel fits the largest tile."""
    if plan is not None and plan.kernel == "fft_conv":
        return type(plan)("fft", "fft_local")
    direct = plan is None or (plan.algo, plan.kernel) == ("direct", "dw_direct")
    if algo == "auto" and direct and fft.pays(spec, s) and tiles(spec, None, s):
        from convcli.backends.opencl.plan import Plan  # plan.py imports this module

        return Plan("fft", "fft_local")
    return None


def spectra(weight: np.ndarray, spec: ConvSpec, t: int) -> np.ndarray:
    """``(C_out, T, T, 2)`` float32: conj(FFT2(dilated kernel)) / T^2 with row ``m``
    holding frequency ``bitrev(m)`` and column ``c`` frequency ``bitrev(c)``."""
    keh, kew = fft._extent(spec)
    kd = np.zeros((spec.c_out, t, t), dtype=np.float64)
    w = weight.reshape(spec.c_out, spec.kh, spec.kw).astype(np.float64)
    kd[:, : keh : spec.dilation[0], : kew : spec.dilation[1]] = w
    k = np.conj(np.fft.fft2(kd)) / (t * t)
    rev = fft._bitrev(t)
    k = k[:, rev][:, :, rev]
    return np.ascontiguousarray(np.stack([k.real, k.imag], axis=3), dtype=np.float32)


def twiddles(t: int) -> np.ndarray:
    """``(T/2, 2)`` float32: w_T^m = exp(-2 pi i m / T), computed in float64."""
    tw = np.exp(-2j * np.pi * np.arange(t // 2) / t)
    return np.ascontiguousarray(np.stack([tw.real, tw.imag], axis=1), dtype=np.float32)


def programs(
    spec: ConvSpec, local_mem: int | None, s: Settings = DEFAULT
) -> list[tuple[str, dict[str, int]]]:
    """The program a run of ``spec`` builds first (its cheapest tile that fits)."""
    found = tiles(spec, local_mem, s)
    return [("fft_local", {"T": found[0]})] if found else []


def run(
    rt: Any,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    *,
    algo: str,
    info: RunInfo,
) -> np.ndarray:
    """Convolve by FFT tiles on the runtime ``rt``, a work-group per tile pair;
    ``(N, C_out, H_out, W_out)`` float32 (``x``, ``weight``, ``bias`` float32).

    Tile sides are tried cheapest first among those whose tile fits the device's local
    memory (under ``auto`` none when the cheapest is estimated no faster than direct
    taps); a side whose launch is refused even with one item per group gives way to the
    next. With none left a forced ``fft`` runs ``fft_conv`` (raising ConvValueError when
    that cannot run either), ``auto`` runs ``direct_local`` (raising
    :class:`~convcli.backends.opencl.runtime.NoFit`, for the generic kernel, where that
    does not fit either).
    """
    s = rt.settings
    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    if 0 in shape:
        info.algo = "fft"
        return np.zeros(shape, dtype=np.float32)
    local_mem = rt.limits.local_mem_bytes
    found = tiles(spec, local_mem, s)
    if algo == "auto" and found and not _pays(spec, found[0]):
        found = []  # the device's local memory holds only tiles too small to pay
    for t in found:
        try:
            out = _run_tile(rt, x, weight, bias, spec, t, info)
        except import_cl().Error as exc:
            if not launch_refused(exc):
                raise
            continue
        info.algo = "fft"
        return out
    if algo != "auto":
        reason = fft.why_not(spec, local_mem, s)
        if reason is not None:
            raise ConvValueError(f"algo='fft' is not available on the OpenCL backend: it {reason}")
        return fft.run(rt, x, weight, bias, spec, info=info)
    if spec.kh * spec.kw > s.gpu_max_taps:
        raise NoFit("no FFT tile fits the device")
    from convcli.backends.opencl import gpu  # gpu.py imports this module

    out = gpu.run_local(rt, x, weight, bias, spec, info)
    info.algo = "direct"
    return out


def _pays(spec: ConvSpec, t: int) -> bool:
    """:func:`convcli.backends.opencl.fft.pays` for tiles of side ``t`` (it assumes the
    cheapest side of any size; a small local memory may hold only far smaller ones)."""
    return fft._cost(spec, t) < fft._MARGIN * fft.direct_seconds(spec)


def _run_tile(rt: Any, x, weight, bias, spec: ConvSpec, t: int, info: RunInfo) -> np.ndarray:
    """One launch of ``fft_local`` with tile side ``t``."""
    # CL_KERNEL_LOCAL_MEM_SIZE is not consulted: rusticl (Mesa 22.3) reports twice the
    # tile and runs it all the same; a driver refuses a launch that does not fit anyway
    kernel = rt.kernel("fft_local", {"T": t}, info)
    keh, kew = fft._extent(spec)
    ty, tx = fft._grid(spec, t)
    pairs = math.ceil(ty * tx / 2)
    key = ("fft-local-spec", t, spec.dilation, rt.content_key(weight))
    sbuf = rt.constant_buffer(key, lambda: spectra(weight, spec, t), info)
    twbuf = rt.constant_buffer(("fft-local-tw", t), lambda: twiddles(t), info)
    b = np.zeros(spec.c_out, np.float32) if bias is None else bias
    bbuf = rt.constant_buffer(("fft-local-bias", rt.content_key(b)), lambda: b, info)
    rmap, cmap = rt.index_maps(spec, info)
    xbuf = rt.input_buffer(x, info)
    out, obuf = rt.output((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
    hp = spec.h + spec.pad[0] + spec.pad[1]
    wp = spec.w + spec.pad[2] + spec.pad[3]
    sizes = (
        spec.c_in,
        spec.c_out,
        spec.cout_g,
        spec.h,
        spec.w,
        hp,
        wp,
        spec.h_out,
        spec.w_out,
        keh,
        kew,
        *spec.stride,
        tx,
        ty * tx,
        pairs,
    )
    args = [xbuf, sbuf, twbuf, bbuf, rmap, cmap, obuf, *map(np.int32, sizes)]
    local = rt.local_size(kernel, (min(rt.settings.fft_local_items, t * t // 2), 1))
    # items, not groups: a launch the driver shrinks gets more groups, and those past
    # the last pair return at once
    ev = rt.enqueue(kernel, (pairs * local[0], spec.n * spec.c_out), local, args)
    return rt.collect(out, obuf, [ev], info)  # the one blocking call: waits for the kernel
