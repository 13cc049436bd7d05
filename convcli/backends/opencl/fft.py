"""FFT convolution on OpenCL for large depthwise kernels (``algo="fft"``).

Image filters with a large kernel that is not separable (a disk or hexagon blur, a
motion-blur line, a measured point-spread function) cost the direct kernels O(kH*kW)
per output pixel. Here they cost a fixed amount per tile: ``kernels_cl/fft_conv.cl``
runs overlap-save on T x T tiles, two tiles per complex FFT, entirely in one
work-group's local memory. The kernel spectra are computed once on the host (float64
FFT, rounded to float32) and cached on the device with the weights' content as key.

Applies to depthwise convolutions (``C_in / groups == 1``, any channel multiplier) in
float32 and float16 (computed in float32), every padding mode (through the same index
maps as the direct kernels), stride (stride-1 outputs are computed and those on the
stride are stored) and dilation (the kernel spectrum is the dilated kernel's).
:func:`plan` says whether it applies and which tile size it uses; :func:`pays` is the
cost model ``algo="auto"`` consults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convcli.backends.opencl.settings import DEFAULT, Settings
from convcli.errors import ConvValueError
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec

# Seconds per tile pair and T*T*log2(T): 0.75-0.88 ns for every T from 32 to 256
# (kernel time on PoCL, 2 vCPUs of a Zen 4, RGB 2048^2, 9x9 and 25x25 kernels).
_PAIR_COST = 0.8e-9
# Direct kernels: seconds per multiply-add (dw_direct on 9x9 to 16x16 kernels: 12-33
# GMAC/s, PoCL). FFT tiles must be estimated this much faster before auto picks them
# (direct taps round less).
_DIRECT_COST = 1 / 25e9
_MARGIN = 0.8


@dataclass(frozen=True)
class FFTPlan:
    """Tile side and tile grid of an FFT convolution."""

    t: int
    keh: int
    kew: int
    tiles_y: int
    tiles_x: int

    @property
    def pairs(self) -> int:
        return math.ceil(self.tiles_y * self.tiles_x / 2)


def why_not(spec: ConvSpec, local_mem: int | None = None, s: Settings = DEFAULT) -> str | None:
    """Why the FFT path cannot run ``spec`` on a device with ``local_mem`` bytes of
    local memory (None: any tile fits), or None when it can."""
    if spec.dtype not in ("float32", "float16"):
        return f"supports float32 and float16 only, got {spec.dtype}"
    if spec.cin_g != 1:
        return "needs a depthwise convolution (one input channel per group)"
    if min(spec.pad) < 0:
        return "does not support negative padding"
    tiles = _tiles(local_mem, s)
    if not tiles:
        return (
            f"needs {_tile_bytes(s.fft_tiles[0])} bytes of local memory, the device has {local_mem}"
        )
    if max(_extent(spec)) > tiles[-1] // 2:
        return f"supports dilated kernels up to {tiles[-1] // 2} pixels across on this device"
    return None


def _tiles(local_mem: int | None, s: Settings = DEFAULT) -> list[int]:
    """Tile sides (``settings.fft_tiles``) whose complex tile fits ``local_mem`` bytes."""
    return [t for t in s.fft_tiles if local_mem is None or _tile_bytes(t) <= local_mem]


def _extent(spec: ConvSpec) -> tuple[int, int]:
    return (spec.kh - 1) * spec.dilation[0] + 1, (spec.kw - 1) * spec.dilation[1] + 1


def _tile_bytes(t: int) -> int:
    return 2 * t * t * 4


def _grid(spec: ConvSpec, t: int) -> tuple[int, int]:
    keh, kew = _extent(spec)
    rows = (spec.h_out - 1) * spec.stride[0] + 1  # stride-1 output rows needed
    cols = (spec.w_out - 1) * spec.stride[1] + 1
    return math.ceil(rows / (t - keh + 1)), math.ceil(cols / (t - kew + 1))


def _cost(spec: ConvSpec, t: int) -> float:
    ty, tx = _grid(spec, t)
    pairs = math.ceil(ty * tx / 2) * spec.n * spec.c_out
    return pairs * t * t * math.log2(t) * _PAIR_COST


def _pick_tile(spec: ConvSpec, local_mem: int | None = None, s: Settings = DEFAULT) -> int:
    """The cheapest tile side by the cost model (at least twice the kernel's extent)."""
    ke = max(_extent(spec))
    fits = [t for t in _tiles(local_mem, s) if t >= 2 * ke]
    return min(fits, key=lambda t: _cost(spec, t))


def plan(spec: ConvSpec, local_mem: int | None = None, s: Settings = DEFAULT) -> FFTPlan:
    """The tile side and grid for ``spec`` (which :func:`why_not` accepted)."""
    t = _pick_tile(spec, local_mem, s)
    keh, kew = _extent(spec)
    ty, tx = _grid(spec, t)
    return FFTPlan(t, keh, kew, ty, tx)


def estimate_seconds(spec: ConvSpec, s: Settings = DEFAULT) -> float:
    """Rough run time of the FFT path (for the choice against direct taps)."""
    return _cost(spec, _pick_tile(spec, None, s))


def direct_seconds(spec: ConvSpec) -> float:
    """Rough run time of the direct depthwise kernel for ``spec``."""
    return spec.n * spec.c_out * spec.h_out * spec.w_out * spec.kh * spec.kw * _DIRECT_COST


def pays(spec: ConvSpec, s: Settings = DEFAULT) -> bool:
    """Whether ``algo="auto"`` should run ``spec`` by FFT rather than by direct taps."""
    if why_not(spec, None, s) is not None or spec.kh * spec.kw < 64:
        return False
    return estimate_seconds(spec, s) < _MARGIN * direct_seconds(spec)


# --------------------------------------------------------------------------- tables


def _bitrev(count: int) -> np.ndarray:
    bits = count.bit_length() - 1
    idx = np.arange(count)
    rev = np.zeros(count, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev


def _twiddles(t: int) -> tuple[np.ndarray, np.ndarray]:
    """``tw`` (T/2 complex as float2) and ``twr`` (T/8 slots x re8/im8)."""
    m = np.arange(t // 2)
    tw = np.exp(-2j * np.pi * m / t)
    tw2 = np.stack([tw.real, tw.imag], axis=1).astype(np.float32)
    tv = t // 8
    k1 = _bitrev(tv)
    lanes = np.arange(8)
    twr = np.exp(-2j * np.pi * np.outer(k1, lanes) / t)  # (TV, 8)
    twr2 = np.stack([twr.real, twr.imag], axis=1).astype(np.float32)  # (TV, 2, 8)
    return np.ascontiguousarray(tw2), np.ascontiguousarray(twr2)


def spectra(weight: np.ndarray, spec: ConvSpec, t: int) -> np.ndarray:
    """The kernels' spectra in the order the kernel's transforms leave the tile in.

    ``(C_out, T, T/8, 2, 8)`` float32: conj(FFT2(dilated kernel)) / T^2, row ``m`` holding
    frequency ``bitrev_T(m)`` and slot ``p``, lane ``L`` frequency
    ``bitrev_{T/8}(p) + T/8 * bitrev_8(L)``.
    """
    keh, kew = _extent(spec)
    kd = np.zeros((spec.c_out, t, t), dtype=np.float64)
    w = weight.reshape(spec.c_out, spec.kh, spec.kw).astype(np.float64)
    kd[:, : keh : spec.dilation[0], : kew : spec.dilation[1]] = w
    k = np.conj(np.fft.fft2(kd)) / (t * t)
    tv = t // 8
    ky = _bitrev(t)
    kx = _bitrev(tv)[:, None] + tv * _bitrev(8)[None, :]  # (TV, 8)
    perm = k[:, ky][:, :, kx]  # (C_out, T, TV, 8)
    out = np.stack([perm.real, perm.imag], axis=3)  # (C_out, T, TV, 2, 8)
    return np.ascontiguousarray(out, dtype=np.float32)


# --------------------------------------------------------------------------- running


def build_defines(
    spec: ConvSpec, local_mem: int | None, has_bias: bool, s: Settings = DEFAULT
) -> dict[str, int]:
    """The build defines of fft_conv for ``spec`` on a device with ``local_mem``."""
    p = plan(spec, local_mem, s)
    return {
        "T": p.t,
        "C_IN": spec.c_in,
        "C_OUT": spec.c_out,
        "CMULT": spec.cout_g,
        "KEH": p.keh,
        "KEW": p.kew,
        "SH": spec.stride[0],
        "SW": spec.stride[1],
        "HAS_BIAS": int(has_bias),
    }


def _pack(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, block: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' spectra for tiles of side ``block[0]`` (:func:`spectra`; the block
    names the dilation too, which the weights do not show) and the bias (one zero
    without bias)."""
    b = np.zeros(1, np.float32) if bias is None else np.asarray(bias, dtype=np.float32)
    return spectra(weight, spec, block[0]), b


def run(
    rt,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    *,
    info: RunInfo,
) -> np.ndarray:
    """Convolve by FFT tiles on the runtime ``rt``; ``(N, C_out, H_out, W_out)`` float32.

    Raises ConvValueError when :func:`why_not` gives a reason.
    """
    s = rt.settings
    local_mem = int(rt.device.local_mem_size)
    reason = why_not(spec, local_mem, s)
    if reason is not None:
        raise ConvValueError(f"algo='fft' is not available on the OpenCL backend: it {reason}")
    info.algo = "fft"
    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    if spec.n == 0 or 0 in shape:
        return np.zeros(shape, dtype=np.float32)
    p = plan(spec, local_mem, s)
    kernel = rt.kernel("fft_conv", build_defines(spec, local_mem, bias is not None, s), info)
    xf = np.ascontiguousarray(x, dtype=np.float32)
    wf = np.ascontiguousarray(weight, dtype=np.float32)
    xbuf = rt.input_buffer(xf, info)
    sbuf, bbuf = rt.packed_weights(_pack, wf, bias, spec, (p.t, spec.dilation), info)
    tw, twr = _twiddles(p.t)
    twbuf = rt.constant_buffer(("fft-tw", p.t), lambda: tw, info)
    twrbuf = rt.constant_buffer(("fft-twr", p.t), lambda: twr, info)
    hp = spec.h + spec.pad[0] + spec.pad[1]
    wp = spec.w + spec.pad[2] + spec.pad[3]
    rmap, cmap = rt.index_maps(spec, info)
    out, obuf = rt.output(shape, np.float32)
    sizes = (spec.h, spec.w, hp, wp, spec.pad[2], spec.h_out, spec.w_out, p.tiles_x)
    args = [xbuf, sbuf, twrbuf, twbuf, bbuf, rmap, cmap, obuf, *map(np.int32, sizes)]
    args.append(np.int32(p.tiles_y * p.tiles_x))
    rt.launch(kernel, (p.pairs, spec.n * spec.c_out), (1, 1), args, info)
    return rt.fetch(out, obuf, info)
