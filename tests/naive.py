"""An independent naive reference: explicit np.pad, then loops over the kernel taps.

Written separately from the backends (no shared code beyond NumPy) so that tests
comparing against it can fail.
"""

from __future__ import annotations

import numpy as np

_NP_MODE = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
    "symmetric": "symmetric",
}


def naive_conv2d(
    x,
    weight,
    bias=None,
    stride=(1, 1),
    pad=(0, 0, 0, 0),
    dilation=(1, 1),
    groups=1,
    padding_mode="zeros",
):
    """Batched reference in complex128/float64; ``pad`` is (top, bottom, left, right)."""
    work = np.complex128 if np.iscomplexobj(x) else np.float64
    x = np.asarray(x, dtype=work)
    weight = np.asarray(weight, dtype=work)
    top, bottom, left, right = pad
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=_NP_MODE[padding_mode])
    n, _c_in, hp, wp = xp.shape
    c_out, cin_g, kh, kw = weight.shape
    sh, sw = stride
    dh, dw = dilation
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    cout_g = c_out // groups
    out = np.zeros((n, c_out, ho, wo), dtype=work)
    for co in range(c_out):
        g = co // cout_g
        for ci in range(cin_g):
            for i in range(kh):
                for j in range(kw):
                    patch = xp[
                        :,
                        g * cin_g + ci,
                        i * dh : i * dh + sh * (ho - 1) + 1 : sh,
                        j * dw : j * dw + sw * (wo - 1) + 1 : sw,
                    ]
                    out[:, co] += weight[co, ci, i, j] * patch
        if bias is not None:
            out[:, co] += bias[co]
    return out


def naive_for_spec(x, weight, bias, spec):
    """:func:`naive_conv2d` with the geometry of a validated ``ConvSpec``."""
    return naive_conv2d(
        x,
        weight,
        bias,
        stride=spec.stride,
        pad=spec.pad,
        dilation=spec.dilation,
        groups=spec.groups,
        padding_mode=spec.padding_mode,
    )
