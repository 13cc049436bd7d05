"""Gathers of the padded input: rows by index maps, strided slices, stride phases.

Every algorithm gathers padding through the index maps of
:func:`convcli.spec.source_index` by bands of output rows, so no padded copy of a whole
large input is made and memory stays bounded whatever the image size.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from convcli.spec import ConvSpec, source_index


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


def _axis_map(pos: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Source index and validity for unpadded coordinates ``pos`` (may lie outside)."""
    before = max(0, -int(pos.min()))
    after = max(0, int(pos.max()) - size + 1)
    idx, valid = source_index(size, before, after, mode)
    return idx[pos + before], valid[pos + before]


def _interior(pos: np.ndarray, size: int) -> tuple[int, int]:
    """The contiguous range of ``pos`` (monotonic) that lies inside ``0..size-1``."""
    inside = np.flatnonzero((pos >= 0) & (pos < size))
    if inside.size == 0:
        return 0, 0
    return int(inside[0]), int(inside[-1]) + 1


def gather2d(x: np.ndarray, rpos: np.ndarray, cpos: np.ndarray, mode: str, out: np.ndarray) -> None:
    """``out[..., r, c] = padded x at (rpos[r], cpos[c])`` (unpadded coordinates).

    ``rpos``/``cpos`` are increasing arithmetic sequences. The interior is one strided
    slice copy; only the border rows and columns go through the index maps (fancy
    indexing is 5-10x slower than a slice copy, and W1 is memory-bound).
    """
    h, w = x.shape[-2:]
    r0, r1 = _interior(rpos, h)
    c0, c1 = _interior(cpos, w)
    rs = int(rpos[1] - rpos[0]) if rpos.size > 1 else 1
    cs = int(cpos[1] - cpos[0]) if cpos.size > 1 else 1
    rows = slice(int(rpos[r0]), int(rpos[r1 - 1]) + 1, rs) if r1 > r0 else slice(0, 0)
    if r1 > r0 and c1 > c0:
        out[..., r0:r1, c0:c1] = x[..., rows, int(cpos[c0]) : int(cpos[c1 - 1]) + 1 : cs]
    if mode == "zeros":
        # every position outside the image is a zero: slices, no index maps (a W7 image
        # took 0.14 ms through the maps, most of its gather)
        out[..., :r0, :] = 0
        out[..., r1:, :] = 0
        out[..., r0:r1, :c0] = 0
        out[..., r0:r1, c1:] = 0
        return
    ridx, rval = _axis_map(rpos, h, mode)
    cidx, cval = _axis_map(cpos, w, mode)
    border_c = np.r_[0:c0, c1 : cpos.size]
    if border_c.size and r1 > r0:
        vals = x[..., rows, :][..., cidx[border_c]]
        vals[..., ~cval[border_c]] = 0
        out[..., r0:r1, border_c] = vals
    border_r = np.r_[0:r0, r1 : rpos.size]
    if border_r.size:
        vals = x[..., ridx[border_r], :][..., cidx]
        vals[..., ~rval[border_r], :] = 0
        vals[..., ~cval] = 0
        out[..., border_r, :] = vals


class Phases:
    """The padded input of a band of output rows, split by stride phase and flattened.

    Output ``(r, c)`` of the band reads tap ``(i, j)`` at ``flat[:, :, phase, off + r*wq
    + c]``: every tap is a contiguous slice of length ``rows * wq`` (columns ``wo..wq-1``
    of each row are junk and cropped by the caller).

    Within one phase the taps form a grid: kernel rows ``i0, i0+mi, ...`` read phase rows
    ``ro0, ro0+step, ...`` (likewise columns), so one strided view of the phase covers
    all its taps (``grids``). With stride 2, dilation 2 and even padding every tap lands
    in one phase: the layer is a dense stride-1 3x3 on the even rows and columns.
    """

    def __init__(self, spec: ConvSpec) -> None:
        sh, sw = spec.stride
        dh, dw = spec.dilation
        self.spec = spec
        taps = []
        phases: dict[tuple[int, int], int] = {}
        for i in range(spec.kh):
            for j in range(spec.kw):
                ph = ((i * dh) % sh, (j * dw) % sw)
                phases.setdefault(ph, len(phases))
                taps.append((phases[ph], (i * dh) // sh, (j * dw) // sw))
        self.phases = list(phases)
        self.row_off = (spec.kh - 1) * dh // sh
        self.col_off = (spec.kw - 1) * dw // sw
        self.wq = spec.w_out + self.col_off
        self.taps = [(p, ro * self.wq + co) for p, ro, co in taps]
        rows, cols = axis_grids(spec.kh, sh, dh), axis_grids(spec.kw, sw, dw)
        # (phase, kernel rows, first phase row, row step, kernel cols, first col, col step)
        self.grids = [
            (phases[(a, b)], ii, ro, rs, jj, co, cs)
            for a, ii, ro, rs in rows
            for b, jj, co, cs in cols
        ]

    def rows_needed(self, rows: int) -> int:
        # +1: the junk columns of the last row read up to col_off past its end
        return rows + self.row_off + 1

    @functools.cached_property
    def order(self) -> np.ndarray | None:
        """Positions in a flattened ``(C_in/G, kH, kW)`` kernel of the column matrix's K
        entries (the grids' order), or None where that is the kernel's own order."""
        s = self.spec
        flat = np.arange(s.cin_g * s.kh * s.kw).reshape(s.cin_g, s.kh, s.kw)
        parts = []
        for _, ii, _, _, jj, _, _ in self.grids:
            # a phase's taps are every m-th kernel row/column
            rows = slice(ii[0], ii[-1] + 1, ii[1] - ii[0] if len(ii) > 1 else 1)
            cols = slice(jj[0], jj[-1] + 1, jj[1] - jj[0] if len(jj) > 1 else 1)
            parts.append(flat[:, rows, cols].reshape(-1))
        order = np.concatenate(parts)
        return None if np.array_equal(order, flat.reshape(-1)) else order

    def weights(self, weight: np.ndarray) -> np.ndarray:
        """``(G, C_out/G, K)`` weight matrices with K in the grids' column order (a view
        where that is the kernel's own order, as with one phase)."""
        s = self.spec
        wm = weight.reshape(s.groups, s.cout_g, -1)
        # one take along K: copying the phases' strided views (runs of one element) was
        # 3.5x slower on a 512x256x3x3 weight
        return wm if self.order is None else np.take(wm, self.order, axis=2)

    def fill(self, x: np.ndarray, r0: int, flat: np.ndarray) -> None:
        """Phase rows from output row ``r0`` on into ``flat`` ``(N, C, n_phases, R, wq)``."""
        spec = self.spec
        sh, sw = spec.stride
        for k, (a, b) in enumerate(self.phases):
            rpos = (r0 * sh + a - spec.pad[0]) + sh * np.arange(flat.shape[3])
            cpos = (b - spec.pad[2]) + sw * np.arange(self.wq)
            gather2d(x, rpos, cpos, spec.padding_mode, flat[:, :, k])

    def gather(self, x: np.ndarray, r0: int, r1: int, work: np.dtype) -> np.ndarray:
        """``(N, C, n_phases, rows_needed * wq)`` for output rows ``r0:r1``."""
        nr = self.rows_needed(r1 - r0)
        flat = np.empty((x.shape[0], x.shape[1], len(self.phases), nr, self.wq), dtype=work)
        self.fill(x, r0, flat)
        return flat.reshape(x.shape[0], x.shape[1], len(self.phases), nr * self.wq)


@functools.lru_cache(maxsize=256)
def phases(spec: ConvSpec) -> Phases:
    """The :class:`Phases` of ``spec``, built once (it holds only spec geometry)."""
    return Phases(spec)


def axis_grids(k: int, stride: int, dil: int) -> list[tuple[int, list[int], int, int]]:
    """Per phase of one axis: (phase, kernel taps, first phase offset, offset step)."""
    taps: dict[int, list[int]] = {}
    for i in range(k):
        taps.setdefault((i * dil) % stride, []).append(i)
    # consecutive taps of a phase are stride/gcd apart, i.e. dil/gcd phase positions
    step = dil // math.gcd(stride, dil)
    return [(a, ii, (ii[0] * dil) // stride, step) for a, ii in sorted(taps.items())]


def band_rows(spec: ConvSpec, bytes_per_row: int, budget: int) -> int:
    return max(1, min(spec.h_out, budget // max(1, bytes_per_row)))
