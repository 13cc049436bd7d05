"""The generic direct kernel ``conv2d_direct.cl``: every stride, dilation, group, padding
mode and dtype (float16 computed in float32, complex as pairs of reals).

It runs whatever no fast path takes (:func:`convcli.backends.opencl.plan.run` returns
None), and a forced ``algo='direct'`` that only it can do. Each item computes CB output
channels x WB columns x RB rows, accumulating in registers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from convcli.backends.opencl.geometry import geometry_defines
from convcli.backends.opencl.runtime import (
    aligned_empty,
    ceil_div,
    compute_dtype,
    real_dtype,
    translate_errors,
)
from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec

PADDING_MODE_IDS = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3, "symmetric": 4}


@dataclass(frozen=True)
class _DirectConfig:
    cb: int
    wb: int
    n_cob: int
    defines: dict[str, int | str]


def _direct_config(spec: ConvSpec, dtype: np.dtype, is_cpu: bool = True) -> _DirectConfig:
    """Block sizes and build defines of ``conv2d_direct`` for ``spec``.

    Register budget (16 AVX2 registers of 8 floats): CB accumulators of WB lanes, twice
    for complex. float32 takes 8 channels x 8 columns; double and complex use 4 channels,
    double 4 columns.
    """
    real = real_dtype(dtype)
    complex_ = dtype.kind == "c"
    wide = real == np.float64
    cb_max = 4 if (wide or complex_) else 8
    # 256-bit vectors at most: PoCL compiles for AVX2 here, and double8 arguments of the
    # vload/vstore builtins change the ABI without AVX-512 (the kernel crashed)
    wb_max = 4 if wide else 8
    # the fewest blocks of at most cb_max channels, then equal-sized blocks (no waste)
    n_cob = -(-spec.cout_g // cb_max)
    cb = -(-spec.cout_g // n_cob)
    n_cob = -(-spec.cout_g // cb)
    wb = wb_max if spec.w_out >= wb_max else (4 if spec.w_out >= 4 else 2)
    defines: dict[str, int | str] = {
        "REAL": "double" if wide else "float",
        "COMPLEX": int(complex_),
        **geometry_defines(spec.kh, spec.kw, spec.stride, spec.dilation),
        "MODE": PADDING_MODE_IDS[spec.padding_mode],
        "CB": cb,
        "WB": wb,
        "HAS_BIAS": int(spec.has_bias),
        # rows per work-item: amortises the set-up on CPUs; GPUs want the parallelism
        "RB": 4 if is_cpu else 1,
    }
    return _DirectConfig(cb=cb, wb=wb, n_cob=n_cob, defines=defines)


def _pack(
    weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, cb: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(C_out, cin_g, kh, kw)`` -> ``(G, n_cob, cin_g, kh, kw, CB)`` and bias
    ``(C_out,)`` -> ``(G, n_cob, CB)``, zero past cout_g (complex as pairs of reals); a
    zero bias without one (the kernel does not read it then)."""
    work = compute_dtype(spec.dtype)
    g, cout_g = spec.groups, spec.cout_g
    n_cob = -(-cout_g // cb)
    w = np.asarray(weight, dtype=work).reshape(g, cout_g, spec.cin_g, spec.kh, spec.kw)
    packed = np.zeros((g, n_cob * cb, spec.cin_g, spec.kh, spec.kw), dtype=work)
    packed[:, :cout_g] = w
    packed = packed.reshape(g, n_cob, cb, spec.cin_g, spec.kh, spec.kw)
    packed = np.ascontiguousarray(packed.transpose(0, 1, 3, 4, 5, 2))
    b = np.zeros((g, n_cob * cb), dtype=work)
    if bias is not None:
        b[:, :cout_g] = np.asarray(bias, dtype=work).reshape(g, cout_g)
    if work.kind == "c":
        return packed.view(real_dtype(work)), b.view(real_dtype(work))
    return packed, b


def run(
    rt: Any,
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    *,
    info: RunInfo,
) -> np.ndarray:
    """``conv2d_direct`` on the runtime ``rt`` (supported ``spec``: see
    :meth:`~convcli.backends.opencl.backend.OpenCLBackend.supports`)."""
    info.algo = "direct"
    dtype = np.dtype(spec.dtype)
    work = compute_dtype(dtype)
    shape = (spec.n, spec.c_out, spec.h_out, spec.w_out)
    if spec.n == 0:
        return np.empty(shape, dtype=work)
    xin = x
    with rt.current(info), translate_errors("OpenCL direct convolution"):
        cfg = _direct_config(spec, dtype, rt.is_cpu)
        knl = rt.kernel("conv2d_direct", cfg.defines, info)
        wbuf, bbuf = rt.packed_weights(_pack, weight, bias, spec, cfg.cb, info)
        if bias is None:
            bbuf = None
        if dtype == np.float16:
            # converted on the host: the kernel then needs no half loads, which PoCL
            # compiles to out-of-line calls (see the kernel's header)
            t0 = time.perf_counter()
            x = aligned_empty(x.shape, np.float32)
            x[...] = xin
            rt._add(info, "upload", time.perf_counter() - t0)
        xbuf = rt.input_buffer(np.ascontiguousarray(x), info)
        out, ybuf = rt.output(shape, work)
        i32 = np.int32
        args = (
            xbuf,
            wbuf,
            bbuf,
            ybuf,
            i32(spec.h),
            i32(spec.w),
            i32(spec.h_out),
            i32(spec.w_out),
            i32(spec.cin_g),
            i32(spec.cout_g),
            i32(cfg.n_cob),
            i32(spec.groups),
            i32(spec.pad[0]),
            i32(spec.pad[2]),
        )
        gx = ceil_div(spec.w_out, cfg.wb)
        gy = ceil_div(spec.h_out, int(cfg.defines["RB"]))
        gz = spec.n * spec.groups * cfg.n_cob
        rt.launch(knl, (gx, gy, gz), rt.settings.direct_local, args, info)
        out = rt.fetch(out, ybuf, info)
    return out
