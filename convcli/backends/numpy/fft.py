"""The ``fft`` algorithm, for large non-separable kernels.

Overlap-save by bands of output rows (memory bounded), ``numpy.fft.rfft2`` in float32
for float32 input (``fft2`` for complex), the kernel dilated with zeros and flipped
(correlation), the stride applied by subsampling.
"""

from __future__ import annotations

import functools

import numpy as np

from convcli.backends.numpy.gather import compute_dtype, gather2d
from convcli.spec import ConvSpec


@functools.lru_cache(maxsize=4096)
def _good_size(n: int) -> int:
    """Smallest 2-3-5-smooth integer >= n (fast sizes for pocketfft).

    Enumerates the products 2^a 3^b 5^c instead of stepping up from ``n``: near 10**9
    smooth numbers lie millions apart, and a cost model may price absurd sizes.
    """
    if n <= 1:
        return 1
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def fft_plan(spec: ConvSpec) -> tuple[int, int, int, int]:
    """(output rows per band, fft height, fft width, spectrum bytes of the kernel)."""
    sh, sw = spec.stride
    ekh = spec.dilation[0] * (spec.kh - 1) + 1
    ekw = spec.dilation[1] * (spec.kw - 1) + 1
    fw = _good_size((spec.w_out - 1) * sw + ekw)
    # bands about 4 kernel heights tall (>= 256 rows): overlap (ekh-1) stays < 25 %
    target = max(256, 4 * ekh)
    rows = max(1, min(spec.h_out, (target - ekh) // sh + 1))
    fh = _good_size((rows - 1) * sh + ekh)
    cplx = np.dtype(compute_dtype(spec.dtype)).kind == "c"
    width = fw if cplx else fw // 2 + 1
    itemsize = (
        2 * compute_dtype(spec.dtype).itemsize if not cplx else compute_dtype(spec.dtype).itemsize
    )
    kbytes = spec.c_out * spec.cin_g * fh * width * itemsize
    return rows, fh, fw, kbytes


def fft_conv(x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype) -> np.ndarray:
    """The ``fft`` algorithm (see the module docstring)."""
    sh, sw = spec.stride
    dh, dw = spec.dilation
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    ekh = dh * (spec.kh - 1) + 1
    ekw = dw * (spec.kw - 1) + 1
    rows, fh, fw, _ = fft_plan(spec)
    cplx = work.kind == "c"
    fwd = np.fft.fft2 if cplx else np.fft.rfft2
    # correlation = convolution with the flipped kernel; dilation = zeros between taps
    kern = np.zeros((spec.c_out, spec.cin_g, ekh, ekw), dtype=work)
    kern[:, :, ::dh, ::dw] = weight
    kf = fwd(kern[:, :, ::-1, ::-1], s=(fh, fw))
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    cols_needed = (wo - 1) * sw + ekw
    cpos = np.arange(cols_needed) - spec.pad[2]
    out = np.empty((n, spec.c_out, ho, wo), dtype=work)
    for r0 in range(0, ho, rows):
        r1 = min(ho, r0 + rows)
        in_rows = (r1 - 1 - r0) * sh + ekh
        band = np.empty((n, spec.c_in, in_rows, cols_needed), dtype=work)
        rpos = np.arange(r0 * sh, r0 * sh + in_rows) - spec.pad[0]
        gather2d(x, rpos, cpos, spec.padding_mode, band)
        xf = fwd(band, s=(fh, fw)).reshape(n, g, cin_g, fh, -1)
        if cin_g == 1:
            prod = xf * kf.reshape(g, cout_g, fh, -1)  # (n, g, cout_g, fh, fw')
        else:
            prod = np.einsum("goc...,ngc...->ngo...", kf.reshape(g, cout_g, cin_g, fh, -1), xf)
        prod = prod.reshape(n, spec.c_out, fh, -1)
        y = np.fft.ifft2(prod, s=(fh, fw)) if cplx else np.fft.irfft2(prod, s=(fh, fw))
        sub = y[:, :, ekh - 1 : ekh - 1 + (r1 - r0 - 1) * sh + 1 : sh]
        out[:, :, r0:r1] = sub[:, :, :, ekw - 1 : ekw - 1 + (wo - 1) * sw + 1 : sw]
    return out
