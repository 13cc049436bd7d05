"""FFT convolution for GPU-type devices: a work-group per tile pair (``fft_local.cl``).

:mod:`convcli.backends.opencl_fft` (``fft_conv.cl``) runs a whole T x T tile pair's FFT
in one work-item: right for a CPU device, which runs a work-group of one as a loop in its
own caches, and hostile to a GPU, where it leaves all but one lane of each work-group
idle. ``fft_local.cl`` does the same overlap-save (two real tiles packed as one complex
tile, the kernel spectrum in the transforms' bit-reversed order, every padding mode
through the index maps, stride, dilation through the dilated extent, channel
multipliers, bias) with a work-group of up to :data:`LOCAL_ITEMS` items sharing each
radix-2 stage of the tile's transforms in local memory.

:func:`device_plan` puts it in place of ``fft_conv`` where the GPU-shaped kernels run
(:func:`convcli.backends.opencl_gpu.gpu_kernels`): under a forced ``algo='fft'``, and
under ``algo='auto'`` where :func:`convcli.backends.opencl_fft.pays` says FFT tiles beat
direct taps (CPU devices choose ``fft_conv`` there themselves; GPU devices ran direct
taps before). :func:`run` picks the tile side by the FFT cost model among the sides whose
tile fits the device's local memory, and falls back when a launch is refused even with
one item per group: to a smaller tile, then (``auto``) to ``direct_local`` or the generic
kernel, or (a forced ``fft``) to ``fft_conv``. None of this has run on a real GPU.
"""

from __future__ import annotations

import math

import numpy as np

from convcli.backends import opencl_fft
from convcli.errors import ConvValueError
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec

# Tile sides built (one build each, every other size a runtime argument): a T x T complex
# float32 tile takes 8*T*T bytes of local memory, 32 KiB for T = 64, what GPUs' 32-64 KiB
# hold; T = 128 would need 128 KiB. 16 serves small kernels and small local memories.
TILES = (16, 32, 64)
# Items per work-group wanted (the backend shrinks it to the device's and the kernel's
# limits): 256, a common GPU size; a T = 16 tile has only 128 butterflies per stage.
LOCAL_ITEMS = 256


def tile_bytes(t: int) -> int:
    """Local memory of one work-group: the complex tile (the kernel's only local array)."""
    return 8 * t * t


def tiles(spec: ConvSpec, local_mem: int | None = None) -> list[int]:
    """The tile sides that can run ``spec`` in ``local_mem`` bytes (None: any), cheapest
    first by the FFT cost model: a side must exceed the dilated kernel's extent (at least
    one valid output per tile)."""
    ke = max(opencl_fft._extent(spec))
    fits = [t for t in TILES if t > ke and (local_mem is None or tile_bytes(t) <= local_mem)]
    return sorted(fits, key=lambda t: (opencl_fft._cost(spec, t), -t))


def why_not(spec: ConvSpec, local_mem: int | None = None) -> str | None:
    """Why ``fft_local`` cannot run ``spec`` in ``local_mem`` bytes, or None."""
    reason = opencl_fft.why_not(spec)
    if reason is not None:
        return reason
    if not tiles(spec, local_mem):
        ke = max(opencl_fft._extent(spec))
        fit = [t for t in TILES if local_mem is None or tile_bytes(t) <= local_mem]
        if not fit:
            return f"needs {tile_bytes(TILES[0])} bytes of local memory, the device has {local_mem}"
        return f"supports dilated kernels up to {fit[-1] - 1} pixels across, got {ke}"
    return None


def device_plan(plan, spec: ConvSpec, algo: str):
    """``Plan("fft", "fft_local")`` where it replaces ``plan`` on a device running the
    GPU-shaped kernels, else None: every ``fft_conv`` plan (forced, or a band of a tiled
    call forcing the whole's), and under ``auto`` a depthwise layer planned for direct
    taps where FFT tiles pay and the kernel fits the largest tile."""
    from convcli.backends.opencl_fast import Plan

    if plan is not None and plan.kernel == "fft_conv":
        return Plan("fft", "fft_local")
    direct = plan is None or (plan.algo, plan.kernel) == ("direct", "dw_direct")
    if algo == "auto" and direct and opencl_fft.pays(spec) and tiles(spec):
        return Plan("fft", "fft_local")
    return None


def spectra(weight: np.ndarray, spec: ConvSpec, t: int) -> np.ndarray:
    """``(C_out, T, T, 2)`` float32: conj(FFT2(dilated kernel)) / T^2 with row ``m``
    holding frequency ``bitrev(m)`` and column ``c`` frequency ``bitrev(c)``."""
    keh, kew = opencl_fft._extent(spec)
    kd = np.zeros((spec.c_out, t, t), dtype=np.float64)
    w = weight.reshape(spec.c_out, spec.kh, spec.kw).astype(np.float64)
    kd[:, : keh : spec.dilation[0], : kew : spec.dilation[1]] = w
    k = np.conj(np.fft.fft2(kd)) / (t * t)
    rev = opencl_fft._bitrev(t)
    k = k[:, rev][:, :, rev]
    return np.ascontiguousarray(np.stack([k.real, k.imag], axis=3), dtype=np.float32)


def twiddles(t: int) -> np.ndarray:
    """``(T/2, 2)`` float32: w_T^m = exp(-2 pi i m / T), computed in float64."""
    tw = np.exp(-2j * np.pi * np.arange(t // 2) / t)
    return np.ascontiguousarray(np.stack([tw.real, tw.imag], axis=1), dtype=np.float32)


def programs(spec: ConvSpec, local_mem: int | None) -> list[tuple[str, dict[str, int]]]:
    """The program a run of ``spec`` builds first (its cheapest tile that fits)."""
    found = tiles(spec, local_mem)
    return [("fft_local", {"T": found[0]})] if found else []


def run(
    backend,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    *,
    algo: str,
    info: RunInfo,
) -> np.ndarray:
    """Convolve by FFT tiles, a work-group per tile pair; ``(N, C_out, H_out, W_out)``
    float32 (``x``, ``weight``, ``bias`` float32).

    Tile sides are tried cheapest first among those whose tile fits the device's local
    memory (under ``auto`` none when the cheapest is estimated no faster than direct
    taps); a side whose launch is refused even with one item per group gives way to the
    next. With none left a forced ``fft`` runs ``fft_conv`` (raising ConvValueError when
    that cannot run either), ``auto`` runs ``direct_local`` (raising
    :class:`~convcli.backends.opencl_gpu.NoFit`, for the generic kernel, where that does
    not fit either).
    """
    from convcli.backends import opencl_gpu
    from convcli.backends.opencl_backend import launch_refused

    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    if 0 in shape:
        info.algo = "fft"
        return np.zeros(shape, dtype=np.float32)
    cl = backend._cl
    found = tiles(spec, backend.limits.local_mem_bytes)
    if algo == "auto" and found and not _pays(spec, found[0]):
        found = []  # the device's local memory holds only tiles too small to pay
    for t in found:
        try:
            out = _run_tile(cl, backend, x, weight, bias, spec, t, info)
        except cl.Error as exc:
            if not launch_refused(exc):
                raise
            continue
        info.algo = "fft"
        return out
    if algo != "auto":
        reason = opencl_fft.why_not(spec, backend.limits.local_mem_bytes)
        if reason is not None:
            raise ConvValueError(f"algo='fft' is not available on the OpenCL backend: it {reason}")
        return opencl_fft.run(backend, x, weight, bias, spec, info=info)
    if spec.kh * spec.kw > opencl_gpu.LOCAL_MAX_TAPS:
        raise opencl_gpu.NoFit("no FFT tile fits the device")
    out = opencl_gpu.run_local(cl, backend, x, weight, bias, spec, info)
    info.algo = "direct"
    return out


def _pays(spec: ConvSpec, t: int) -> bool:
    """:func:`convcli.backends.opencl_fft.pays` for tiles of side ``t`` (it assumes the
    cheapest side of any size; a small local memory may hold only far smaller ones)."""
    return opencl_fft._cost(spec, t) < opencl_fft._MARGIN * opencl_fft.direct_seconds(spec)


def _run_tile(cl, backend, x, weight, bias, spec: ConvSpec, t: int, info: RunInfo) -> np.ndarray:
    """One launch of ``fft_local`` with tile side ``t``."""
    from convcli.backends.opencl_fast import _add_compute, _kernel, index_map

    # CL_KERNEL_LOCAL_MEM_SIZE is not consulted: rusticl (Mesa 22.3) reports twice the
    # tile and runs it all the same; a driver refuses a launch that does not fit anyway
    kernel = _kernel(backend, "fft_local", {"T": t}, info)
    keh, kew = opencl_fft._extent(spec)
    ty, tx = opencl_fft._grid(spec, t)
    pairs = math.ceil(ty * tx / 2)
    key = ("fft-local-spec", t, spec.dilation, backend.content_key(weight))
    sbuf = backend.constant_buffer(key, lambda: spectra(weight, spec, t), info)
    twbuf = backend.constant_buffer(("fft-local-tw", t), lambda: twiddles(t), info)
    b = np.zeros(spec.c_out, np.float32) if bias is None else bias
    bbuf = backend.constant_buffer(("fft-local-bias", backend.content_key(b)), lambda: b, info)
    rmap = index_map(cl, backend, spec.h, spec.pad[0], spec.pad[1], spec.padding_mode)
    cmap = index_map(cl, backend, spec.w, spec.pad[2], spec.pad[3], spec.padding_mode)
    xbuf = backend.input_buffer(x, info)
    out, obuf = backend.output((spec.n, spec.c_out, spec.h_out, spec.w_out), np.float32)
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
    local = backend.local_size(kernel, (min(LOCAL_ITEMS, t * t // 2), 1))
    # items, not groups: a launch the driver shrinks gets more groups, and those past
    # the last pair return at once
    ev = backend.enqueue(kernel, (pairs * local[0], spec.n * spec.c_out), local, args)
    backend.fetch(out, obuf, info)  # the one blocking call: waits for the kernel
    _add_compute(info, [ev])
    return out
