"""Depthwise layers on 48-64-column feature maps (56x56 CNN layers, any batch): pad the
input planes once (``dw_pad.cl``), then run ``dw_direct`` with no padding, so every
work-item takes its plain addressing path.

``dw_direct`` sends the items at a plane's border through its padding maps (a gathered
float8 per load); with zero padding on 56x56 maps these are 2 of 7 column items and 2
of 14 row items, and they took most of the kernel's time. The padded copy costs one
pass over the input.
"""

from __future__ import annotations

import numpy as np

from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec

# Output widths that pay for the padded copy: at 56 columns (7 float8 items a row, 2 of
# them on the border path) a 7x7 layer's kernels ran 2.7x faster (N=8, 96 channels),
# 3x3 1.4x; at 112 (2 of 14) and with stride 2 the copy cost more than it saved.
# Narrower maps with many channels run dw_channels; a partial last float8 would still
# take the border path.
MIN_W_OUT = 48
MAX_W_OUT = 64


def pays(spec: ConvSpec, cpu: bool) -> bool:
    """Whether to run ``spec`` here: a zero-padded stride-1 depthwise layer on a CPU
    device whose output rows are MIN_W_OUT..MAX_W_OUT wide, in whole float8 vectors."""
    return (
        cpu
        and spec.cin_g == 1
        and spec.dtype == "float32"
        and spec.padding_mode == "zeros"
        and spec.stride == (1, 1)
        and any(spec.pad)
        and min(spec.pad) >= 0
        and MIN_W_OUT <= spec.w_out <= MAX_W_OUT
        and spec.w_out % 8 == 0
    )


def _padded(spec: ConvSpec) -> tuple[int, int]:
    return spec.h + spec.pad[0] + spec.pad[1], spec.w + spec.pad[2] + spec.pad[3]


def programs(spec: ConvSpec) -> list[tuple[str, dict[str, int]]]:
    """The programs a run of ``spec`` builds (kernel file, build defines)."""
    from convcli.backends import opencl_fast

    hp, wp = _padded(spec)
    dims = (spec.n, spec.c_in, hp, wp)
    out = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    return [
        ("dw_pad", _pad_defines(spec)),
        ("dw_direct", opencl_fast._dw_defines(
            dims, out, csum=1, cmult=spec.cout_g, kh=spec.kh, kw=spec.kw, stride=spec.stride,
            dilation=spec.dilation, pad=(0, 0, 0, 0), has_bias=spec.has_bias,
        )),
    ]  # fmt: skip


def _pad_defines(spec: ConvSpec) -> dict[str, int]:
    hp, wp = _padded(spec)
    return {
        "PLANES": spec.n * spec.c_in,
        "H": spec.h,
        "W": spec.w,
        "HP": hp,
        "WP": wp,
        "PADT": spec.pad[0],
        "PADL": spec.pad[2],
    }


def run(cl, backend, x, weight, bias, spec: ConvSpec, info: RunInfo) -> np.ndarray:
    """The layer's output ``(N, C_out, H_out, W_out)`` float32 (``x``, ``weight`` and
    ``bias`` contiguous float32, as :func:`convcli.backends.opencl_fast.run` passes)."""
    from convcli.backends import opencl_fast as fast

    hp, wp = _padded(spec)
    planes = spec.n * spec.c_in
    xbuf = backend.input_buffer(x, info)
    pbuf = backend.scratch("dw_wide_padded", 4 * planes * hp * wp)
    pad = fast._kernel(backend, "dw_pad", _pad_defines(spec), info)
    ev_pad = fast._launch(cl, backend, pad, (hp, planes, 1), [xbuf, pbuf])
    out_shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    out, obuf = backend.output(out_shape, np.float32)
    ev = fast._run_dw(
        cl,
        backend,
        pbuf,
        (spec.n, spec.c_in, hp, wp),
        weight.reshape(spec.c_out, -1),
        bias,
        obuf,
        out_shape,
        csum=1,
        cmult=spec.cout_g,
        kh=spec.kh,
        kw=spec.kw,
        stride=spec.stride,
        dilation=spec.dilation,
        pad=(0, 0, 0, 0),
        mode="zeros",
        info=info,
    )
    backend.fetch(out, obuf, info)  # the one blocking call: waits for both kernels
    fast._add_compute(info, [ev_pad, ev])
    return out
