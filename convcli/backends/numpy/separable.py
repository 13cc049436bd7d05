"""The ``separable`` algorithm: rank-1 kernels as two banded-Toeplitz GEMM passes.

Rank-1 kernels (:func:`convcli.plan.separable_factors`: Gaussian, box, Sobel) run as two
1-D passes, each one GEMM per band of rows against slabs of a banded Toeplitz matrix, so
a 31-tap pass runs at BLAS speed; image filters (one kernel for every channel) put all
planes side by side in the same GEMMs. Works for every padding mode, stride, dilation
and groups.
"""

from __future__ import annotations

import numpy as np

from convcli.backends.numpy.gather import band_rows, gather2d
from convcli.backends.numpy.settings import Settings
from convcli.spec import ConvSpec


def _toeplitz(taps: np.ndarray, block: int, step: int, dil: int, work: np.dtype) -> np.ndarray:
    """``(block, L)`` with ``T[o, o*step + t*dil] = taps[t]``; ``L`` covers the block."""
    span = (block - 1) * step + (taps.size - 1) * dil + 1
    mat = np.zeros((block, span), dtype=work)
    o = np.arange(block)[:, None]
    mat[o, o * step + np.arange(taps.size)[None, :] * dil] = taps.astype(work)[None, :]
    return mat


def toeplitz_block(k_eff: int) -> int:
    """Outputs per Toeplitz block: just wide enough for the kernel span.

    Each pass is one GEMM whose K is a block of ``block*stride`` inputs and whose N (or M)
    covers every block of the band, so the matmul does ``2 * m * block * stride`` flops
    per output (``m`` = 2 slabs when the block spans the kernel).
    """
    return max(16, -(-k_eff // 16) * 16)


def toeplitz_slabs(
    taps: np.ndarray, block: int, step: int, dil: int, work: np.dtype
) -> tuple[np.ndarray, int]:
    """Toeplitz ``(block, L)`` cut into ``m`` slabs of ``P = block*step`` columns.

    Output block ``k`` reads inputs ``k*P .. k*P+L-1``, i.e. slab ``j`` of input block
    ``k+j``. Returned stacked as ``(m*block, P)``: one GEMM against the input viewed as
    ``(P, blocks*...)`` gives every partial product, so a pass costs one BLAS call per
    band instead of one per block (hundreds of small calls made OpenBLAS's threads spin
    when the machine was busy: 17 s instead of 0.6 s on a 4096^2 image).
    """
    mat = _toeplitz(taps, block, step, dil, work)
    span = mat.shape[1]
    p = block * step
    m = -(-span // p)
    padded = np.zeros((block, m * p), dtype=work)
    padded[:, :span] = mat
    return np.ascontiguousarray(
        padded.reshape(block, m, p).transpose(1, 0, 2).reshape(m * block, p)
    ), m


def _pass(src: np.ndarray, stack: np.ndarray, m: int, block: int, nblocks: int) -> np.ndarray:
    """One 1-D pass along axis 0 of ``src`` ``(nbx*P, S)``: returns ``(block, nblocks, S)``.

    Row ``i`` of block ``k`` of the result is output ``k*block + i`` (blocks stay
    interleaved: the other pass does not care about the order of its rows).
    """
    p = stack.shape[1]
    nbx = src.shape[0] // p
    width = src.shape[1]
    # (P, nbx*S): the contraction axis first, one row copy of the band
    y = np.ascontiguousarray(src.reshape(nbx, p, width).swapaxes(0, 1)).reshape(p, nbx * width)
    z = (stack @ y).reshape(m, block, nbx, width)
    res = z[0, :, :nblocks].copy()
    for j in range(1, m):
        res += z[j, :, j : j + nblocks]
    return res


def separable(
    x: np.ndarray,
    weight: np.ndarray,
    spec: ConvSpec,
    work: np.dtype,
    factors: tuple[np.ndarray, np.ndarray],
    settings: Settings,
) -> np.ndarray:
    """The ``separable`` algorithm: rank-1 kernels ``factors`` as two Toeplitz passes."""
    colf, rowf = factors  # (C_out, cin_g, kH), (C_out, cin_g, kW)
    sh, sw = spec.stride
    dh, dw = spec.dilation
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    ekh = dh * (spec.kh - 1) + 1
    ekw = dw * (spec.kw - 1) + 1
    bv, bh = toeplitz_block(ekh), toeplitz_block(ekw)
    nbh = -(-wo // bh)
    # one kernel for every plane (an image filter): all planes go side by side through
    # the same two GEMMs per band
    shared = spec.cin_g == 1 and spec.cout_g == 1 and bool(np.all(weight == weight[:1]))
    pairs = [(0, 0)] if shared else [(o, c) for o in range(spec.c_out) for c in range(spec.cin_g)]
    tv, th = {}, {}
    for o, c in pairs:
        tv[o, c], mv = toeplitz_slabs(colf[o, c], bv, sh, dh, work)
        stack, mh = toeplitz_slabs(rowf[o, c], bh, sw, dw, work)
        th[o, c] = np.ascontiguousarray(stack.T)
    pv, ph = bv * sh, bh * sw
    wy = (nbh + mh - 1) * ph  # input columns the horizontal GEMM reads
    cols_needed = min(wy, (wo - 1) * sw + ekw)
    cpos = np.arange(cols_needed) - spec.pad[2]
    per_row = n * spec.c_in * sh * wy * work.itemsize * 3
    rows = band_rows(spec, per_row, settings.chunk_bytes // 4)
    rows = max(bv, rows // bv * bv)
    out = np.zeros((n, spec.c_out, ho, wo), dtype=work)

    def both(src: np.ndarray, key: tuple[int, int], nr: int, nbv: int) -> np.ndarray:
        """``src`` ``(in_rows, S)`` with S = planes*wy -> ``(nr, planes, wo)``."""
        planes = src.shape[1] // wy
        mid = _pass(src, tv[key], mv, bv, nbv)  # (bv, nbv, planes*wy)
        # horizontal: the contraction axis is contiguous, so the input is a free view
        # (rows*blocks, P_h) and the slabs sit side by side in th: (P_h, mh*bh)
        nbx = nbh + mh - 1
        z = (mid.reshape(-1, ph) @ th[key]).reshape(bv, nbv, planes, nbx, mh, bh)
        res = z[:, :, :, :nbh, 0].copy()
        for j in range(1, mh):
            res += z[:, :, :, j : j + nbh, j]
        # (bv, nbv, planes, nbh, bh) -> (nbv, bv, planes, nbh*bh): outputs in order
        res = res.transpose(1, 0, 2, 3, 4).reshape(nbv * bv, planes, nbh * bh)
        return res[:nr, :, :wo]

    for r0 in range(0, ho, rows):
        r1 = min(ho, r0 + rows)
        nr = r1 - r0
        nbv = -(-nr // bv)
        in_rows = (nbv + mv - 1) * pv
        used = min(in_rows, (r1 - 1) * sh + ekh - r0 * sh)
        rpos = np.arange(r0 * sh, r0 * sh + used) - spec.pad[0]
        buf = np.zeros((in_rows, n, spec.c_in, wy), dtype=work)
        gather2d(
            x, rpos, cpos, spec.padding_mode, buf.transpose(1, 2, 0, 3)[:, :, :used, :cols_needed]
        )
        if shared:
            res = both(buf.reshape(in_rows, -1), (0, 0), nr, nbv)
            out[:, :, r0:r1] = res.reshape(nr, n, spec.c_out, wo).transpose(1, 2, 0, 3)
            continue
        for b in range(n):
            for o in range(spec.c_out):
                gi = o // spec.cout_g
                for c in range(spec.cin_g):
                    src = buf[:, b, gi * spec.cin_g + c]
                    out[b, o, r0:r1] += both(src, (o, c), nr, nbv)[:, 0]
    return out
