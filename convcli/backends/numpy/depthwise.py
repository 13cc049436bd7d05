"""Depthwise layers (``C_in/groups == 1``: image filters, mobile networks' depthwise
convolutions) under ``direct``: the taps accumulated as ``weight[tap] * shifted input``.

Where the layer is large enough for GEMMs (the rule in :class:`~.settings.Settings`),
small GEMMs per channel against tap matrices, in one of three layouts by the shape:
whole rows (or the whole map) on short rows (:func:`_depthwise_rows`), column-shifted
copies of the input rows on wide ones (:func:`_depthwise_shifted`), and banded blocks
of columns for the rest (:func:`_depthwise_gemm`). Otherwise multiply-adds with the
channels innermost for many channels (:func:`_depthwise_channels_last`), and the planar
loop over stride phases in cache-sized pieces for the rest.
"""

from __future__ import annotations

import threading

import numpy as np

from convcli.backends.numpy.gather import band_rows, phases
from convcli.backends.numpy.gemm import row_lead
from convcli.backends.numpy.packed import prepared
from convcli.backends.numpy.settings import Settings
from convcli.backends.numpy.threads import gemm_threads, run_jobs, scratch
from convcli.spec import ConvSpec


def _channels_last_pays(spec: ConvSpec, settings: Settings) -> bool:
    return (
        spec.cin_g == 1
        and spec.cout_g == 1
        and spec.c_out >= settings.channels_last_min
        and spec.padding_mode == "zeros"
    )


def _depthwise_channels_last(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype, settings: Settings
) -> np.ndarray:
    """Depthwise taps with the channels innermost: each tap is one multiply-add over
    ``(rows, W_out, C)``, whose rows of ``W_out * C`` contiguous values vectorise well
    whatever the map size (planar loops ran ``W_out``-long rows: 7 values on a 7x7 map).
    The taps accumulate in the same order as :func:`direct_depthwise`'s."""
    n, c, h, w = x.shape
    kh, kw = spec.kh, spec.kw
    sh, sw = spec.stride
    dh, dw = spec.dilation
    top, bottom, left, right = spec.pad
    ho, wo = spec.h_out, spec.w_out
    xp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=work)
    xp[:, top : top + h, left : left + w, :] = x.transpose(0, 2, 3, 1)
    taps = np.ascontiguousarray(weight.reshape(c, kh * kw).T.astype(work, copy=False))
    out = np.empty((n, c, ho, wo), dtype=work)
    rows = max(1, min(ho, settings.channels_last_band // max(1, wo * c * work.itemsize)))
    acc = np.empty((rows, wo, c), dtype=work)
    tmp = np.empty_like(acc)
    for b in range(n):
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            a, t = acc[: r1 - r0], tmp[: r1 - r0]
            for i in range(kh):
                y0 = r0 * sh + i * dh
                for j in range(kw):
                    x0 = j * dw
                    src = xp[
                        b, y0 : y0 + (r1 - r0 - 1) * sh + 1 : sh, x0 : x0 + (wo - 1) * sw + 1 : sw
                    ]
                    if i == j == 0:
                        np.multiply(src, taps[0], out=a)
                    else:
                        np.multiply(src, taps[i * kw + j], out=t)
                        a += t
            out[b, :, r0:r1] = a.transpose(2, 0, 1)
    return out


def _depthwise_gemm_applies(spec: ConvSpec) -> bool:
    return (
        spec.cin_g == 1
        and spec.cout_g == 1
        and spec.padding_mode == "zeros"
        and min(spec.pad) >= 0
        and np.dtype(spec.dtype).kind == "f"
    )


def _depthwise_gemm_pays(spec: ConvSpec, settings: Settings) -> bool:
    if not _depthwise_gemm_applies(spec):
        return False
    if settings.dw_gemm is not None:
        return settings.dw_gemm
    s, taps = settings, spec.kh * spec.kw
    if taps < s.dw_gemm_min_taps or spec.macs < s.dw_gemm_min_macs:
        return False
    if _rows_layout(spec, s) is not None or _shifted_pays(spec, s):
        return True  # no per-block copies: these beat the tap loops from 3x3 on
    return spec.n * spec.w_out * taps >= s.dw_gemm_min_row_taps * spec.stride[1] and (
        taps >= s.dw_gemm_many_taps or spec.c_out >= s.dw_gemm_min_channels
    )


def _band(weight: np.ndarray, b: int, span: int, r: int, spec: ConvSpec, work: np.dtype):
    """``(C, kr*span, r*b)``: each channel's taps on the band of ``r`` output rows of a
    block of ``b`` outputs, which read ``kr = (r-1)*sh + (kH-1)*dh + 1`` input rows."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    c, _, kh, kw = weight.shape
    kr = (r - 1) * sh + (kh - 1) * dh + 1
    band = np.zeros((c, kr, span, r, b), dtype=work)
    j, q = np.arange(kw)[:, None], np.arange(b)[None, :]
    taps = weight.reshape(c, kh, kw, 1)
    for t in range(r):
        band[:, t * sh : t * sh + (kh - 1) * dh + 1 : dh, j * dw + q * sw, t, q] = taps
    return band.reshape(c, kr * span, r * b)


def _depthwise_gemm(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype, settings: Settings
) -> np.ndarray:
    """Depthwise taps as one small GEMM per channel over blocks of output columns.

    A block of ``b`` output columns of ``r`` output rows reads ``kr`` input rows of
    ``span`` columns; with those kr x span values as a row of a matrix (one row per
    block), the block's outputs are that row times a ``(kr*span, r*b)`` banded matrix of
    the channel's taps (zeros off the band, kept between calls: see :mod:`.packed`).
    The tap loop passes over the whole output twice per tap (a multiply, an add); the
    GEMM reads each block's values once and runs at BLAS speed, computing ``kr*span /
    (kH*kW)`` times the products (the zeros of the band). Two output rows per block
    (``settings.dw_gemm_rows``, rows without dilation) share kH-1 of their input rows:
    with ``b = 8`` a 7x7 kernel computes 2.3x the products, against 3.1x for one row of
    16 outputs, the GEMM being as wide (N = 16) and the matrix 27 % smaller.

    The row matrix is copied in two steps: first each block's column strip (``span``
    columns of every input row the job needs), then the matrix, whose rows are then
    runs of ``kr*span`` consecutive strip values, not kr runs of ``span``. Channels
    (and rows, for large maps) run in jobs whose row matrix stays in L2, on the gemm
    path's threads.
    """
    n, c, h, w = x.shape
    kh, kw = spec.kh, spec.kw
    sh, sw = spec.stride
    dh, dw = spec.dilation
    top, bottom, left, right = spec.pad
    ho, wo = spec.h_out, spec.w_out
    r = settings.dw_gemm_rows if dh == 1 and ho > 1 else 1
    # a block no wider than the output needs (in steps of 8): a 7-wide map's 16-wide
    # block would compute 9 junk columns
    b = max(1, min(settings.dw_gemm_block // r, -(-wo // 8) * 8))
    nb = -(-wo // b)
    span = (b - 1) * sw + (kw - 1) * dw + 1
    kr = (r - 1) * sh + (kh - 1) * dh + 1
    item = work.itemsize
    wp = max(w + left + right, (nb - 1) * b * sw + span)
    # a last group of r rows may run past the output: (r-1)*sh rows more of zeros
    xp = np.zeros((c, n, h + top + bottom + (r - 1) * sh, wp), dtype=work)
    xp[:, :, top : top + h, left : left + w] = x.transpose(1, 0, 2, 3)
    key = ("depthwise_band", work, b, r, spec.stride, spec.dilation)
    band = prepared(key, weight, lambda: _band(weight, b, span, r, spec, work))
    s = xp.strides
    out = np.empty((n, c, ho, wo), dtype=work)
    full, rest = divmod(wo, b)
    # a job's row matrix: in L2, and at most a third of the padded copy, so that the
    # call stays within what budget.conv_need prices for it (two padded bands: the copy,
    # and the jobs' matrices, strips and products on two threads); small inputs take
    # dw_gemm_min_job_bytes (each job costs some 15 us of calls)
    limit = min(settings.dw_gemm_job_bytes, max(xp.nbytes // 3, settings.dw_gemm_min_job_bytes))
    per_group = n * nb * kr * span * item  # r output rows of one channel
    groups = -(-ho // r)
    ng = max(1, min(groups, limit // per_group))  # row groups per job
    step = max(1, limit // (per_group * groups)) if ng == groups else 1

    def chunk(c0: int, g0: int) -> None:
        c1, g1 = min(c, c0 + step), min(groups, g0 + ng)
        cc, gg = c1 - c0, g1 - g0
        r0, r1 = g0 * r, min(ho, g1 * r)
        rows_in = (gg - 1) * r * sh + kr
        # the blocks' column strips of the rows this job reads: (cc, n, nb, rows_in, span)
        # (np.ndarray over the buffer: as_strided took 7 us a call)
        strips = np.ndarray(
            (cc, n, nb, rows_in, span),
            dtype=work,
            buffer=xp,
            offset=c0 * s[0] + r0 * sh * s[2],
            strides=(s[0], s[1], b * sw * item, s[2], item),
        ).copy()
        z = strips.strides
        mat = np.ndarray(
            (cc, n, nb, gg, kr, span),
            dtype=work,
            buffer=strips,
            strides=(z[0], z[1], z[2], r * sh * z[3], z[3], item),
        ).reshape(cc, n * nb * gg, kr * span)  # a copy
        y = np.matmul(mat, band[c0:c1]).reshape(cc, n, nb, gg * r, b)[:, :, :, : r1 - r0]
        dst = out[:, c0:c1, r0:r1]  # (n, cc, rows, wo); splitting its last axis is a view
        if full:
            dst[..., : full * b].reshape(n, cc, r1 - r0, full, b)[...] = y[:, :, :full].transpose(
                1, 0, 3, 2, 4
            )
        if rest:
            dst[..., full * b :] = y[:, :, full, :, :rest].transpose(1, 0, 2, 3)

    jobs = [(c0, g0) for c0 in range(0, c, step) for g0 in range(0, groups, ng)]
    # the GEMMs' multiply-adds, zeros of the band included: what the work grows with
    band_macs = n * c * groups * nb * kr * span * r * b
    large = band_macs >= settings.dw_gemm_threaded_min_macs
    run_jobs(chunk, jobs, gemm_threads(spec, settings, large=large), settings, spec)
    return out


def _rows_layout(spec: ConvSpec, settings: Settings) -> tuple[int, bool] | None:
    """``(r, whole)`` where the GEMMs should take whole rows rather than blocks of
    columns (:func:`_depthwise_rows`), or None.

    Short rows: a block of columns reads ``span`` padded columns, and where the unpadded
    row is hardly wider (``settings.dw_rows_slack``) a whole row costs as many products
    per output, with the horizontal padding left out of the band, twice the outputs per
    GEMM row (a wider GEMM) and no column strips to copy. ``whole``: maps whose rows all
    fit in one group of ``r`` output rows take the whole map as the GEMM's row (the
    vertical padding left out too, the input read in place: no copies at all)."""
    if settings.dw_rows is False:
        return None
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    r = settings.dw_gemm_rows if dh == 1 and spec.h_out > 1 else 1
    b = max(1, min(settings.dw_gemm_block // r, -(-spec.w_out // 8) * 8))
    span = (b - 1) * sw + (spec.kw - 1) * dw + 1
    if settings.dw_rows is None and spec.w > settings.dw_rows_slack * span:
        return None
    kr = (r - 1) * sh + (spec.kh - 1) * dh + 1
    # the whole map as one row of the GEMM where it has at most dw_rows_whole_extra rows
    # more than a group of r rows reads (a few more products, no copies: 5x5 576ch 7^2,
    # N=8, 0.33 ms against 0.63), with a band of at most dw_rows_whole_bytes a channel,
    # for dw_rows_whole_min_images images or more (one image: a matrix-vector product)
    whole_band = spec.h * spec.w * spec.h_out * spec.w_out * np.dtype(spec.dtype).itemsize
    if (
        spec.h <= kr + settings.dw_rows_whole_extra
        and whole_band <= settings.dw_rows_whole_bytes
        and spec.n >= settings.dw_rows_whole_min_images
    ):
        return spec.h_out, True
    r = settings.dw_rows_group if dh == 1 and spec.h_out > 1 else 1
    if spec.n == 1 and spec.h_out >= settings.dw_rows_single_min_rows:
        r = 1  # one image of many rows: single rows (a smaller band, more GEMM rows)
    rows = (r - 1) * sh + (spec.kh - 1) * dh + 1
    if rows * spec.w * r * spec.w_out * np.dtype(spec.dtype).itemsize > settings.dw_rows_band_bytes:
        return None  # the column blocks' band stays small
    return r, False


def _row_band(weight: np.ndarray, spec: ConvSpec, r: int, whole: bool, work: np.dtype):
    """``(C, rows*W, r*W_out)``: each channel's taps for ``r`` output rows of whole rows,
    read from ``rows`` input rows of ``W`` unpadded columns (the taps that fall on the
    horizontal padding left out; with ``whole``, on the vertical padding too)."""
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    c, _, kh, kw = weight.shape
    top, left = spec.pad[0], spec.pad[2]
    h, w, wo = spec.h, spec.w, spec.w_out
    rows = h if whole else (r - 1) * sh + (kh - 1) * dh + 1
    band = np.zeros((c, rows, w, r, wo), dtype=work)
    q = np.arange(wo)
    for t in range(r):
        for i in range(kh):
            y = t * sh + i * dh - (top if whole else 0)
            if not 0 <= y < rows:
                continue
            for j in range(kw):
                cols = q * sw + j * dw - left
                ok = (cols >= 0) & (cols < w)
                band[:, y, cols[ok], t, q[ok]] = weight[:, 0, i, j][:, None]
    return band.reshape(c, rows * w, r * wo)


def _depthwise_rows(
    x: np.ndarray,
    weight: np.ndarray,
    spec: ConvSpec,
    work: np.dtype,
    settings: Settings,
    r: int,
    whole: bool,
) -> np.ndarray:
    """Depthwise taps as one GEMM per channel over groups of ``r`` whole output rows
    (see :func:`_rows_layout`): a group's row of the GEMM is the ``kr`` input rows it
    reads, one run of ``kr*W`` values of the vertically padded input, times the
    channel's ``(kr*W, r*W_out)`` band. With ``whole`` the row is the whole map, read in
    place, and the products land in the output in place."""
    n, c, h, w = x.shape
    sh = spec.stride[0]
    ho, wo = spec.h_out, spec.w_out
    item = work.itemsize
    key = ("depthwise_rows", work, r, whole, spec.stride, spec.dilation, spec.pad, h, w)
    band = prepared(key, weight, lambda: _row_band(weight, spec, r, whole, work))
    out = np.empty((n, c, ho, wo), dtype=work)
    k, m = band.shape[1], band.shape[2]
    if whole:
        xv = x.reshape(n, c, h * w).transpose(1, 0, 2)
        ov = out.reshape(n, c, ho * wo).transpose(1, 0, 2)
        per_channel = n * (k + m) * item
    else:
        top = spec.pad[0]
        groups = -(-ho // r)
        kr = k // w
        rows = max(top + h, (groups - 1) * r * sh + kr)
        xt = x.transpose(1, 0, 2, 3)  # (C, N, H, W)
        padded = c * n * rows * w * item  # the input padded along the rows
        per_channel = n * groups * (k + m) * item
    # channels per job: its matrices within dw_gemm_job_bytes and (as in _depthwise_gemm)
    # at most a third of the padded copy, but at least dw_rows_min_job_bytes (few jobs:
    # each costs calls), and at least two jobs a thread
    band_macs = n * c * (1 if whole else groups) * k * m
    threads = gemm_threads(spec, settings, large=band_macs >= settings.dw_rows_threaded_min_macs)
    limit = settings.dw_gemm_job_bytes
    if not whole:
        limit = min(limit, max(padded // 3, settings.dw_rows_min_job_bytes))
    step = max(1, min(limit // per_channel, -(-c // (2 * threads))))
    zeroed: set[int] = set()  # threads whose padded buffer was zeroed in this call

    def chunk(c0: int) -> None:
        c1 = min(c, c0 + step)
        if whole:
            np.matmul(xv[c0:c1], band[c0:c1], out=ov[c0:c1])
            return
        # the job's channels padded along the rows, in a buffer of the thread whose
        # padding rows no job writes (a padded copy of the whole input, fresh zeroed
        # pages, ran on the calling thread before the jobs)
        kept = scratch("dw_rows_pad", (min(c, step), n, rows, w), work, settings.scratch_keep)
        if threading.get_ident() not in zeroed:
            kept[...] = 0
            if kept.nbytes <= settings.scratch_keep:  # else a new buffer each job
                zeroed.add(threading.get_ident())
        kept[: c1 - c0, :, top : top + h] = xt[c0:c1]
        s = kept.strides
        # a copy (one image's rows as a view of overlapping rows: matmul multiplies
        # those without BLAS, 7x7 384ch 14^2 0.38 ms against 0.26 with the copy), in
        # buffers the thread keeps, as is the product: each job's 1-2 MB of fresh
        # pages, where the allocator handed them back, cost as much as the GEMMs (one
        # run: 384ch 14^2 N=8 6.8 ms against 2.6)
        mat = scratch("dw_rows_mat", (c1 - c0, n * groups, k), work, settings.scratch_keep)
        mat.reshape(c1 - c0, n, groups, k)[...] = np.ndarray(
            (c1 - c0, n, groups, k),
            dtype=work,
            buffer=kept,
            strides=(s[0], s[1], r * sh * s[2], item),
        )
        y = scratch("dw_rows_y", (c1 - c0, n * groups, m), work, settings.scratch_keep)
        np.matmul(mat, band[c0:c1], out=y)
        y = y.reshape(c1 - c0, n, groups * r, wo)
        out[:, c0:c1] = y[:, :, :ho].transpose(1, 0, 2, 3)

    run_jobs(chunk, [(c0,) for c0 in range(0, c, step)], threads, settings, spec)
    return out


def _shifted_pays(spec: ConvSpec, settings: Settings) -> bool:
    """Where :func:`_depthwise_shifted` runs instead of the column blocks: rows without
    dilation, wide enough outputs (``settings.dw_shifted_min_width``), and a padded
    input of at least three times the copies of one group of rows of one channel (its
    least job; a band of a few rows cut to fit a memory budget has less: see
    :func:`_depthwise_shifted`)."""
    if spec.dilation[0] != 1:
        return False
    if settings.dw_shifted is not None:
        return settings.dw_shifted
    if spec.w_out < settings.dw_shifted_min_width:
        return False
    top, bottom, left, right = spec.pad
    item = np.dtype(spec.dtype).itemsize
    padded = spec.n * spec.c_in * (spec.h + top + bottom) * (spec.w + left + right) * item
    r = max(1, min(settings.dw_shifted_rows, spec.h_out))
    least = ((r - 1) * spec.stride[0] + spec.kh) * spec.kw * row_lead(spec.w_out, item) * item
    return 3 * least <= padded


def _shifted_parts(spec: ConvSpec, settings: Settings, r: int) -> int:
    """Parts of one image's output rows that :func:`_depthwise_shifted` puts side by
    side: the most that fit ``settings.dw_shifted_width`` columns and split the rows
    into whole groups of ``r`` rows, at least ``settings.dw_shifted_part_rows`` a part
    (1: none). Only for kernels of ``settings.dw_shifted_part_min_taps`` taps or more,
    whose GEMMs outweigh the copies (the parts' copies out of the products and of the
    rows read twice)."""
    if spec.n != 1 or spec.kh * spec.kw < settings.dw_shifted_part_min_taps:
        return 1
    ho = spec.h_out
    most = min(settings.dw_shifted_width // spec.w_out, ho // settings.dw_shifted_part_rows)
    fits = [p for p in range(1, most + 1) if ho % p == 0 and ho // p % r == 0]
    return max(fits, default=1)


def _shifted_band(weight: np.ndarray, spec: ConvSpec, r: int, work: np.dtype) -> np.ndarray:
    """``(C, r, K)``: row ``t`` holds the channel's taps at ``(t*sH + i)*kW + j``."""
    c, _, kh, kw = weight.shape
    sh = spec.stride[0]
    band = np.zeros((c, r, ((r - 1) * sh + kh) * kw), dtype=work)
    for t in range(r):
        band[:, t, t * sh * kw : (t * sh + kh) * kw] = weight.reshape(c, kh * kw)
    return band


def _depthwise_shifted(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype, settings: Settings
) -> np.ndarray:
    """Depthwise taps as GEMMs over column-shifted copies of the input rows.

    Per channel, ``cols[u, j, :]`` holds padded row ``u`` of ``m`` images from column
    tap ``j`` on (``m*W_out`` values, rows ``lead`` apart): kW copies of the input, long
    runs. Output row ``r`` needs rows ``r*sH + i``, i.e. the ``kH*kW`` consecutive rows
    of ``cols`` from ``r*sH*kW`` on, so a group of ``r`` output rows of all images is
    the ``(r, K)`` band of the channel's taps (row ``t`` shifted ``t*sH*kW`` columns)
    times an ordinary strided ``(K, m*W_out)`` view of ``cols``: no column strips, no
    scattered copy of the products (one image's are written straight into the output,
    several images' copied there while in cache), and ``K = ((r-1)*sH + kH)*kW``
    products per output (7x7, 4 rows: 70, against the column blocks' 112). Images side
    by side (``settings.dw_shifted_width``) make the GEMMs wider: 8 of 28 columns, 224.

    Each job pads its own rows: the rows its channels and images read are copied into
    a small padded buffer of the thread (zeros where the rows and columns fall on the
    padding), from which ``cols`` is copied while both are in cache. A padded copy of
    the whole input (fresh zeroed pages, written and read back from memory, on one
    thread) cost as much as half the GEMMs (96 channels on 56^2, N=8). With several
    images and no stride along the rows, that buffer holds the images' padded rows side
    by side, so that a row of ``cols`` is one run of ``m*wp`` values (the GEMMs compute
    the ``wp - W_out`` columns between images too, cropped as the products are copied
    out). One image of large kernels runs as ``parts`` images of its rows
    (:func:`_shifted_parts`) for wider GEMMs.
    """
    n, c, h, w = x.shape
    kh, kw = spec.kh, spec.kw
    sh, sw = spec.stride
    dw = spec.dilation[1]
    top, _, left, _ = spec.pad
    ho, wo = spec.h_out, spec.w_out
    item = work.itemsize
    r = max(1, min(settings.dw_shifted_rows, ho))
    out = np.empty((n, c, ho, wo), dtype=work)
    # one image: its rows in `parts` parts side by side as if images (each reading the
    # kH - sH rows past its own again), for wider GEMMs
    parts = _shifted_parts(spec, settings, r)
    if parts > 1:
        n, ho = parts, ho // parts
        res = out.reshape(c, n, ho, wo).transpose(0, 2, 1, 3)  # (C, H_out, parts, W_out)
        xt = x[0]  # (C, H, W)
    else:
        # the output as (C, H_out, N, W_out): one image's rows of products are its rows
        res = out.transpose(1, 2, 0, 3)
        xt = x.transpose(1, 0, 2, 3)  # (C, N, H, W)
    full, rest = divmod(ho, r)
    groups = full + (rest > 0)
    nu = (groups * r - 1) * sh + kh  # padded rows the groups read
    k = ((r - 1) * sh + kh) * kw
    # images side by side in a GEMM's columns, up to dw_shifted_width of them
    m = max(1, min(n, settings.dw_shifted_width // wo))
    wp = (wo - 1) * sw + (kw - 1) * dw + 1  # padded columns read
    wc = max(0, min(w, wp - left))  # input columns read
    # several images without stride along the rows: whole padded rows side by side, so
    # that a row of cols is one run (the GEMM computes wp - wo junk columns an image,
    # at most dw_shifted_flat_slack - 1 of its columns)
    flat = m > 1 and sw == 1 and wp <= settings.dw_shifted_flat_slack * wo
    lead = row_lead(m * (wp if flat else wo), item)
    key = ("depthwise_shifted", work, r, sh)
    band = prepared(key, weight, lambda: _shifted_band(weight, spec, r, work))
    band_macs = n * c * groups * r * k * wo
    large = band_macs >= settings.dw_shifted_threaded_min_macs
    threads = gemm_threads(spec, settings, large=large)
    # a job: the channels (or one channel's groups of rows) whose copies take
    # dw_shifted_job_bytes (few large jobs: each costs some 15 us of calls, and its
    # copies need not stay in L2), and whose threads' copies take at most twice what
    # the input would take padded (what budget.conv_need prices for the call)
    padded = c * n * nu * wp * item
    limit = min(settings.dw_shifted_job_bytes, max(1, 2 * padded // max(2, threads)))
    per_row = kw * lead * item
    step = max(1, min(c, limit // (nu * per_row)))
    ng = groups if step > 1 else max(1, min(groups, (limit // per_row - kh) // (r * sh) + 1))
    rows_max = (min(groups, ng) * r - 1) * sh + kh
    if flat:  # (C, rows, images' padded rows and the kW - 1 columns the last reads past)
        pad_shape: tuple[int, ...] = (min(c, step), rows_max, m * wp + (kw - 1) * dw)
    else:
        pad_shape = (min(c, step), m, rows_max, wp)
    zeroed: set[int] = set()  # threads whose padded buffer was zeroed in this call

    def chunk(c0: int, i0: int, g0: int) -> None:
        c1, i1, g1 = min(c, c0 + step), min(n, i0 + m), min(groups, g0 + ng)
        cc, mm, whole = c1 - c0, i1 - i0, min(g1, full) - g0  # whole: groups of r rows
        rows = ((g1 - g0) * r - 1) * sh + kh
        # the padded rows y0 .. y0 + rows of the job's channels and images
        kept = scratch("dw_shifted_pad", pad_shape, work, settings.scratch_keep)
        if threading.get_ident() not in zeroed:  # the thread's first job of the call
            # the padding stays zero: no job writes its columns, nor (where every job
            # reads all rows) its rows
            kept[...] = 0
            if kept.nbytes <= settings.scratch_keep:  # else a new buffer each job
                zeroed.add(threading.get_ident())
        if flat:  # as (cc, mm, rows, wp), starting where kept does
            pad = kept[:cc, :rows, : mm * wp].reshape(cc, rows, mm, wp).transpose(0, 2, 1, 3)
        else:
            pad = kept[:cc, :mm, :rows]
        # images: the same rows of each; parts: each its own rows of the one image
        for q, i in [(slice(None), slice(i0, i1))] if parts == 1 else enumerate(range(i0, i1)):
            y0 = (g0 * r + (i * ho if parts > 1 else 0)) * sh
            u0, u1 = max(0, top - y0), max(0, min(rows, top + h - y0))
            if ng < groups or parts > 1:  # another job's (or part's) rows may be here
                pad[:, q, :u0] = 0
                pad[:, q, max(u0, u1) :] = 0
            if u1 > u0:
                src = xt[c0:c1, i] if parts == 1 else xt[c0:c1]  # (cc, [mm,] H, W)
                pad[:, q, u0:u1, left : left + wc] = src[..., y0 + u0 - top : y0 + u1 - top, :wc]
        p = kept.strides
        cols = scratch("dw_shifted", (cc, rows, kw, lead), work, settings.scratch_keep)
        nc = mm * (wp if flat else wo)  # the GEMMs' columns
        if flat:  # cols[.., u, j, :] = padded row u from column j*dW on: one run
            cols[..., :nc] = np.ndarray(
                (cc, rows, kw, nc), dtype=work, buffer=kept, strides=(p[0], p[1], dw * item, item)
            )
        else:
            cols[..., :nc].reshape(cc, rows, kw, mm, wo)[...] = np.ndarray(
                (cc, rows, kw, mm, wo),
                dtype=work,
                buffer=kept,
                strides=(p[0], p[2], dw * item, p[1], sw * item),
            )
        z = cols.strides
        part = res[c0:c1, :, i0:i1]  # (cc, H_out, mm, W_out)
        if whole > 0:
            b_view = np.ndarray(
                (cc, whole, k, nc),
                dtype=work,
                buffer=cols,
                strides=(z[0], r * sh * z[1], z[2], item),
            )
            dst = part[:, g0 * r : (g0 + whole) * r]
            if not flat and mm == 1:  # the output's rows: written in place
                np.matmul(band[c0:c1, None], b_view, out=dst.reshape(cc, whole, r, wo))
            else:  # several images' rows: copied out while in cache
                y = np.matmul(band[c0:c1, None], b_view)
                dst[...] = y.reshape(cc, whole * r, mm, nc // mm)[..., :wo]
        if g1 > full:  # the last group, of rest < r rows
            b_view = np.ndarray(
                (cc, k, nc),
                dtype=work,
                buffer=cols,
                offset=whole * r * sh * z[1],
                strides=(z[0], z[2], item),
            )
            dst = part[:, full * r :]
            if not flat and mm == 1:
                np.matmul(band[c0:c1, :rest], b_view, out=dst.reshape(cc, rest, wo))
            else:
                y = np.matmul(band[c0:c1, :rest], b_view)
                dst[...] = y.reshape(cc, rest, mm, nc // mm)[..., :wo]

    jobs = [
        (c0, i0, g0)
        for c0 in range(0, c, step)
        for i0 in range(0, n, m)
        for g0 in range(0, groups, ng)
    ]
    run_jobs(chunk, jobs, threads, settings, spec)
    return out


def direct_depthwise(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype, settings: Settings
) -> np.ndarray:
    """The ``direct`` algorithm for depthwise layers (``C_in/groups == 1``): the taps
    accumulated, by the fastest of the paths that applies (see the module docstring)."""
    if _depthwise_gemm_pays(spec, settings):
        layout = _rows_layout(spec, settings)
        if layout is not None:
            return _depthwise_rows(x, weight, spec, work, settings, *layout)
        if _shifted_pays(spec, settings):
            return _depthwise_shifted(x, weight, spec, work, settings)
        return _depthwise_gemm(x, weight, spec, work, settings)
    if _channels_last_pays(spec, settings):
        return _depthwise_channels_last(x, weight, spec, work, settings)
    g, cout_g = spec.groups, spec.cout_g
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    ph = phases(spec)
    wt = weight.reshape(g, cout_g, 1, len(ph.taps))
    out = np.empty((n, spec.c_out, ho, wo), dtype=work)
    per_row = spec.c_in * len(ph.phases) * ph.wq * work.itemsize
    rows = band_rows(spec, per_row, settings.chunk_bytes // 4)
    # pieces of flat positions small enough for the accumulator to stay in L2
    piece = max(256, settings.tap_piece // max(1, spec.c_out))
    for b in range(n):
        xb = x[b : b + 1]
        for r0 in range(0, ho, rows):
            r1 = min(ho, r0 + rows)
            flat = ph.gather(xb, r0, r1, work)[0].reshape(g, 1, len(ph.phases), -1)
            length = (r1 - r0) * ph.wq
            acc = np.empty((g, cout_g, length), dtype=work)
            tmp = np.empty((g, cout_g, min(piece, length)), dtype=work)
            for q0 in range(0, length, piece):
                q1 = min(length, q0 + piece)
                a = acc[:, :, q0:q1]
                tm = tmp[:, :, : q1 - q0]
                for t, (p, off) in enumerate(ph.taps):
                    src = flat[:, :, p, off + q0 : off + q1]
                    if t == 0:
                        np.multiply(src, wt[:, :, :, 0], out=a)
                    else:
                        np.multiply(src, wt[:, :, :, t], out=tm)
                        a += tm
            out[b, :, r0:r1] = acc.reshape(spec.c_out, r1 - r0, ph.wq)[..., :wo]
    return out
