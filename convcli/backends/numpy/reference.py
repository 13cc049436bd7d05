"""The reference: direct convolution as im2col + matmul per group."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convcli.backends.numpy.gather import compute_dtype, gather_padded
from convcli.backends.numpy.settings import DEFAULT, Settings
from convcli.spec import ConvSpec


def _rows_per_chunk(spec: ConvSpec, n: int, itemsize: int, chunk_bytes: int) -> int:
    per_row = max(1, n * spec.w_out * spec.c_in * spec.kh * spec.kw * itemsize)
    return max(1, min(spec.h_out, chunk_bytes // per_row))


def conv2d_direct(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    *,
    settings: Settings = DEFAULT,
) -> np.ndarray:
    """Direct convolution of batched ``x`` ``(N, C, H, W)``; returns ``(N, C_out, Ho, Wo)``.

    The reference: im2col + matmul per group, the column matrix a gathered
    ``(pixels, C_in/groups*kH*kW)`` copy, by bands within ``settings.chunk_bytes``.
    """
    work = compute_dtype(spec.dtype)
    x = np.asarray(x, dtype=work)
    weight = np.asarray(weight, dtype=work)
    sh, sw = spec.stride
    dh, dw = spec.dilation
    ho, wo = spec.h_out, spec.w_out
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    out = np.empty((spec.n, spec.c_out, ho, wo), dtype=work)
    if spec.n == 0:
        return out
    ekh = dh * (spec.kh - 1) + 1
    ekw = dw * (spec.kw - 1) + 1
    # weight matrices per group: (cin_g*kh*kw, cout_g)
    wmats = [weight[gi * cout_g : (gi + 1) * cout_g].reshape(cout_g, -1).T for gi in range(g)]
    # batch chunks so that one output row of columns fits the budget
    per_image = max(1, wo * spec.c_in * spec.kh * spec.kw * work.itemsize)
    n_step = max(1, min(spec.n, settings.chunk_bytes // per_image))
    for n0 in range(0, spec.n, n_step):
        xs = x[n0 : n0 + n_step]
        nn = xs.shape[0]
        rows = _rows_per_chunk(spec, nn, work.itemsize, settings.chunk_bytes)
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            band = gather_padded(xs, spec, r0 * sh, (r1 - 1) * sh + ekh)
            win = sliding_window_view(band, (ekh, ekw), axis=(2, 3))
            # (N, C, R, Wo, kh, kw) after stride and dilation sub-sampling
            win = win[:, :, ::sh, : (wo - 1) * sw + 1 : sw, ::dh, ::dw]
            for gi in range(g):
                part = win[:, gi * cin_g : (gi + 1) * cin_g]
                cols = part.transpose(0, 2, 3, 1, 4, 5).reshape(nn * (r1 - r0) * wo, -1)
                res = cols @ wmats[gi]
                out[n0 : n0 + nn, gi * cout_g : (gi + 1) * cout_g, r0:r1, :] = res.reshape(
                    nn, r1 - r0, wo, cout_g
                ).transpose(0, 3, 1, 2)
    if bias is not None:
        out += np.asarray(bias, dtype=work)[None, :, None, None]
    return out
