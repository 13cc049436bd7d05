"""The NumPy backend: the reference implementation and the fallback.

The direct algorithm is im2col + matmul per group, computed in bands of output rows
(and, for large batches, of images) so that the column matrix never exceeds
``CHUNK_BYTES``: a 31x31 kernel on a 4096x4096 RGB image stays within tens of MB.
Padding is applied by gathering rows and columns through the index maps of
:func:`convcli.spec.source_index`, so no padded copy of the whole input is made.

float16 is computed in float32 and rounded once at the end (torch's CPU behaviour);
complex inputs use the weight as is (no conjugation).
"""

from __future__ import annotations

import time

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from convcli.runinfo import RunInfo
from convcli.spec import ConvSpec, source_index

CHUNK_BYTES = 64 * 2**20


def compute_dtype(dtype: np.dtype | str) -> np.dtype:
    """The dtype arithmetic is done in (float16 accumulates in float32)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def gather_rows(x: np.ndarray, spec: ConvSpec, row0: int, row1: int) -> np.ndarray:
    """Rows ``row0:row1`` of the vertically padded input (padded coordinates).

    ``x`` is ``(N, C, H, W)``; the result is ``(N, C, row1-row0, W)``, a new array with
    the padding mode applied (zeros where mode ``zeros`` pads).
    """
    top, bottom = spec.pad[0], spec.pad[1]
    ridx, rvalid = source_index(spec.h, top, bottom, spec.padding_mode)
    ridx, rvalid = ridx[row0:row1], rvalid[row0:row1]
    band = x[:, :, ridx]
    if not rvalid.all():
        band[:, :, ~rvalid, :] = 0
    return band


def gather_padded(x: np.ndarray, spec: ConvSpec, row0: int, row1: int) -> np.ndarray:
    """Rows ``row0:row1`` of the fully padded input: ``(N, C, row1-row0, W+left+right)``."""
    cidx, cvalid = source_index(spec.w, spec.pad[2], spec.pad[3], spec.padding_mode)
    band = gather_rows(x, spec, row0, row1)[:, :, :, cidx]
    if not cvalid.all():
        band[:, :, :, ~cvalid] = 0
    return band


def _rows_per_chunk(spec: ConvSpec, n: int, itemsize: int) -> int:
    per_row = max(1, n * spec.w_out * spec.c_in * spec.kh * spec.kw * itemsize)
    return max(1, min(spec.h_out, CHUNK_BYTES // per_row))


def conv2d_direct(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec
) -> np.ndarray:
    """Direct convolution of batched ``x`` ``(N, C, H, W)``; returns ``(N, C_out, Ho, Wo)``."""
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
    n_step = max(1, min(spec.n, CHUNK_BYTES // per_image))
    for n0 in range(0, spec.n, n_step):
        xs = x[n0 : n0 + n_step]
        nn = xs.shape[0]
        rows = _rows_per_chunk(spec, nn, work.itemsize)
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


class NumpyBackend:
    """Runs convolutions with NumPy on the host."""

    name = "numpy"
    device_name = "host CPU (NumPy)"

    def supports(self, spec: ConvSpec) -> str | None:
        """Reason why ``spec`` cannot run here, or None (NumPy runs everything)."""
        return None

    def run(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray | None,
        spec: ConvSpec,
        *,
        algo: str = "auto",
        info: RunInfo,
    ) -> np.ndarray:
        """Convolve batched ``x``; returns the result in the compute dtype.

        Records the algorithm used in ``info.algo`` and its time under
        ``info.timings["compute"]``.
        """
        t0 = time.perf_counter()
        out = conv2d_direct(x, weight, bias, spec)
        info.algo = "direct"
        info.timings["compute"] = info.timings.get("compute", 0.0) + time.perf_counter() - t0
        return out
