"""The ``gemm`` algorithm: convolution as matrix products over (channels x taps).

Without the reference's gather: the padded input is split into ``stride`` phases and
flattened. Within a phase the taps form a grid, so one strided view per phase copies
every tap of a band into the column matrix (stride 2 with dilation 2, W7, is a single
phase: a dense stride-1 layer on the even rows and columns). Narrow outputs are computed
on a grid ``col_off`` columns wider, then cropped, so each copy is one long run; wide
ones are written straight into the output. Wide outputs with few output channels (W9)
instead keep each input row once per column tap and run one GEMM per output row over
rows the output rows share (:func:`_gemm_shared_rows`): kH times fewer copies. A 1x1
kernel with stride 1 and no padding is a single matmul over channels with no copy
(:func:`pointwise`); a kernel as large as its stride (non-overlapping patches:
convnext's stem and downsampling layers) is one transposed copy per image and a GEMM
with the weight as a view (:func:`_patches`). Large layers run as chunks on the
threads of :mod:`convcli.backends.numpy.threads`.
"""

from __future__ import annotations

import numpy as np

from convcli.backends.numpy.gather import axis_grids, band_rows, gather2d, phases
from convcli.backends.numpy.packed import prepared
from convcli.backends.numpy.settings import Settings
from convcli.backends.numpy.threads import gemm_threads, quiet_blas, run_jobs, scratch
from convcli.spec import ConvSpec


def _gemm_plan(
    spec: ConvSpec, itemsize: int, threads: int, settings: Settings
) -> tuple[int, int, int, int]:
    """(column matrix row width, images per GEMM, rows per GEMM, rows per chunk).

    A GEMM covers ``m`` images x ``rows`` output rows, its column matrix within
    ``gemm_bytes`` but at least ``gemm_min_pixels`` wide. A chunk (``m`` images x
    ``crows`` rows, a multiple of ``rows``) is the unit the threads share: each gathers
    its own phase-split input (within ``chunk_bytes/4``), then runs its GEMMs. About two
    chunks per thread let a thread that starts late (a parked thread took 0.5 ms to wake
    on the shared machine) take fewer, without a barrier between gather and GEMMs.

    Junk columns (``wq = wo + col_off`` wide rows) make each tap's copy one long
    contiguous run; without them the GEMM writes straight into the output. Narrow outputs
    with few channels (W7: 32 columns, 32 channels per group) take the junk and crop, as
    short runs cost more; with many channels (W6) the extra GEMM columns cost more.
    """
    n, ho = spec.n, spec.h_out
    wq = spec.w_out + (spec.kw - 1) * spec.dilation[1] // spec.stride[1]
    junk = spec.w_out < settings.junk_below and spec.cout_g < settings.junk_max_cout
    lw = wq if junk else spec.w_out
    per_row = spec.c_in * spec.kh * spec.kw * lw * itemsize
    # one thread: few large GEMMs, which BLAS threads itself
    budget = settings.gemm_bytes if threads > 1 else settings.blas_gemm_bytes
    m = max(1, min(n, budget // max(1, per_row * ho)))
    if n >= threads > 1:
        m = min(m, max(1, n // (2 * threads)))
    rows = ho
    if m == 1:
        # a GEMM over fewer pixels re-reads the weights for little work (W6: 256x2304)
        rows = max(band_rows(spec, per_row, budget), -(-settings.gemm_min_pixels // lw))
        rows = -(-ho // -(-ho // rows))  # equal bands
    nph = len({(i * spec.dilation[0]) % spec.stride[0] for i in range(spec.kh)}) * len(
        {(j * spec.dilation[1]) % spec.stride[1] for j in range(spec.kw)}
    )
    in_row = m * spec.c_in * nph * wq * itemsize
    halo = (spec.kh - 1) * spec.dilation[0] // spec.stride[0] + 1
    fits = max(rows, ((settings.chunk_bytes // 4) // max(1, in_row) - halo) // rows * rows)
    # about two chunks per thread where the images alone do not give them
    share = -(-ho * -(-n // m) // (2 * threads))
    return lw, m, rows, min(fits, -(-share // rows) * rows, -(-ho // rows) * rows)


def row_lead(length: int, itemsize: int) -> int:
    """A row stride >= ``length`` that is an odd number of cache lines (64 B).

    Rows a multiple of 2-4 KiB apart share L1 sets: measured with one BLAS thread, a
    (16, 147) x (147, L) product ran at 43-65 GFLOP/s for L = 1024, 1536, 2048, 3072,
    4096, 6144, 8192 and at 73-79 with an odd number of cache lines per row.
    """
    line = max(1, 64 // itemsize)
    return -(-length // (2 * line)) * 2 * line + line


def _patches_apply(spec: ConvSpec) -> bool:
    """Kernel as large as its stride, no dilation, no padding: every input pixel feeds
    one output (convnext's 4x4/4 stem, its 2x2/2 downsampling layers)."""
    return (
        (spec.kh, spec.kw) == spec.stride
        and spec.kh * spec.kw > 1
        and spec.dilation == (1, 1)
        and spec.pad == (0, 0, 0, 0)
    )


def _patches(
    x: np.ndarray,
    weight: np.ndarray,
    spec: ConvSpec,
    work: np.dtype,
    settings: Settings,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """Non-overlapping patches: the column matrix is one transposed copy of the input,
    its rows in the weight's own (channel, row, column) order, so the weight matrix is a
    view (the phase split would reorder a 384->768 2x2 layer's 4.7 MB of weights at every
    call and run its one GEMM on a single thread). Where there are fewer images than
    threads, the jobs split each image's output rows (each copying only its rows'
    patches) while the weight matrix is at most ``settings.patches_rows_weight_bytes``,
    else its output channels (each reading only its part of the weights)."""
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    n, ho, wo, kh, kw = spec.n, spec.h_out, spec.w_out, spec.kh, spec.kw
    wm = weight.reshape(g, cout_g, cin_g * kh * kw)
    out = np.empty((n, g, cout_g, ho * wo), dtype=work)
    large = 2 * spec.macs >= settings.patches_threaded_min_flops
    threads = gemm_threads(spec, settings, large=large)
    parts = -(-threads // n)
    by_rows = wm.nbytes <= settings.patches_rows_weight_bytes
    if by_rows:
        parts = max(1, min(ho, parts))
        rstep, step = -(-ho // parts), cout_g
    else:
        parts = max(1, min(cout_g // 8, parts))
        rstep, step = ho, -(-cout_g // parts)

    def job(i: int, r0: int, o0: int) -> None:
        # the patches of image i's output rows r0..r1: (C, kh, kw, rows, Wo)
        r1, o1 = min(ho, r0 + rstep), min(cout_g, o0 + step)
        v = x[i, :, r0 * kh : r1 * kh, : wo * kw].reshape(spec.c_in, r1 - r0, kh, wo, kw)
        cols = v.transpose(0, 2, 4, 1, 3).reshape(g, cin_g * kh * kw, (r1 - r0) * wo)
        dst = out[i, :, o0:o1, r0 * wo : r1 * wo]
        np.matmul(wm[:, o0:o1], cols, out=dst)
        if bias is not None:
            dst += bias.reshape(g, cout_g, 1)[:, o0:o1]

    jobs = [
        (i, r0, o0) for i in range(n) for r0 in range(0, ho, rstep) for o0 in range(0, cout_g, step)
    ]
    run_jobs(job, jobs, threads, settings, spec)
    return out.reshape(n, spec.c_out, ho, wo)


def gemm_adds_bias(spec: ConvSpec) -> bool:
    """Whether :func:`gemm` adds a bias itself: on the patches path, whose jobs add it to
    the rows of products they wrote (long rows, in cache, on the jobs' threads). A pass
    over the whole output after the call, on the calling thread, read the part another
    thread wrote from that thread's cache: convnext's stem on two threads took 0.53-0.59
    ms (median) that way against 0.40-0.49 with the jobs adding it (0.44-0.47 on one
    thread, which it had run on before). Elsewhere the pass stays:
    added to the depthwise paths' short rows of products (7-56 values), it was slower
    than the pass (768ch 7x7 on 7^2: 0.240-0.244 ms against 0.235-0.241)."""
    return _patches_apply(spec)


def gemm(
    x: np.ndarray,
    weight: np.ndarray,
    spec: ConvSpec,
    work: np.dtype,
    settings: Settings,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """The ``gemm`` algorithm: the convolution as matrix products over (channels x taps)
    per group (see the package docstring for the formulations). ``bias`` (``(C_out,)``
    in ``work``) only where :func:`gemm_adds_bias`."""
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    if spec.kh == spec.kw == 1 and spec.stride == (1, 1) and spec.pad == (0, 0, 0, 0):
        return pointwise(x, weight, spec, work, settings)
    if _patches_apply(spec):
        return _patches(x, weight, spec, work, settings, bias)
    if _shared_rows(spec, settings):
        return _gemm_shared_rows(x, weight, spec, work, settings)
    threads = gemm_threads(spec, settings)
    ph = phases(spec)
    k_all = cin_g * spec.kh * spec.kw
    # weight columns in the order the phase grids lay out the column matrix
    if ph.order is None:
        wm = ph.weights(weight)  # a view
    else:
        key = ("phases", work, spec.stride, spec.dilation, spec.groups)
        wm = prepared(key, weight, lambda: ph.weights(weight))
    lw, m, rows, crows = _gemm_plan(spec, work.itemsize, threads, settings)
    junk = lw != wo
    out = np.empty((n, spec.c_out, ho, wo), dtype=work)
    out_g = out.reshape(n, g, cout_g, ho * wo)

    def buffers() -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        # per-thread buffers, reused by every chunk the thread takes
        flat = scratch(
            "flat",
            (m, spec.c_in, len(ph.phases), ph.rows_needed(crows), ph.wq),
            work,
            settings.scratch_keep,
        )
        cols = scratch(
            "cols", (m, g, k_all, row_lead(rows * lw, work.itemsize)), work, settings.scratch_keep
        )
        res = (
            scratch("res", (m, g, cout_g, rows * lw), work, settings.scratch_keep) if junk else None
        )
        return flat, cols, res

    def chunk(n0: int, t0: int, o0: int, o1: int) -> None:
        """Images ``n0..n0+m``, output rows ``t0..t0+crows``, output channels ``o0..o1``
        of each group: gather, then the GEMMs."""
        flat, cols, res = buffers()
        mm, t1 = min(m, n - n0), min(ho, t0 + crows)
        ph.fill(x[n0 : n0 + mm], t0, flat[:mm, :, :, : ph.rows_needed(t1 - t0)])
        fs = flat.strides
        for r0 in range(t0, t1, rows):
            nr = min(rows, t1 - r0)
            k0 = 0
            for p, ii, ro, rs, jj, co, cs in ph.grids:
                kk = cin_g * len(ii) * len(jj)
                shape = (mm, g, cin_g, len(ii), len(jj), nr, lw)
                # every tap of the phase in one strided view (junk columns run into the
                # next row; the buffer's extra row keeps that in bounds, ndarray checks)
                src = np.ndarray(
                    shape,
                    dtype=work,
                    buffer=flat,
                    offset=p * fs[2] + (r0 - t0 + ro) * fs[3] + co * fs[4],
                    strides=(fs[0], cin_g * fs[1], fs[1], rs * fs[3], cs * fs[4], fs[3], fs[4]),
                )
                cols[:mm, :, k0 : k0 + kk, : nr * lw].reshape(shape)[...] = src
                k0 += kk
            c = cols[:mm, :, :, : nr * lw]
            w_part = wm[:, o0:o1]
            if junk:
                r = np.matmul(w_part, c, out=res[:mm, :, o0:o1, : nr * lw])
                dst = out[n0 : n0 + mm].reshape(mm, g, cout_g, ho, wo)[:, :, o0:o1, r0 : r0 + nr]
                dst[...] = r.reshape(mm, g, o1 - o0, nr, lw)[..., :wo]
            else:
                dst = out_g[n0 : n0 + mm, :, o0:o1, r0 * wo : (r0 + nr) * wo]
                np.matmul(w_part, c, out=dst)

    jobs = [(n0, t0) for n0 in range(0, n, m) for t0 in range(0, ho, crows)]
    # fewer bands than threads (small maps: a GEMM needs gemm_min_pixels columns): the
    # threads share the output channels, each gathering the band's columns itself
    # (resnet's 256->256 3x3 on 14^2 was one GEMM, as slow on two threads as on one)
    parts = max(1, min(-(-threads // len(jobs)), cout_g // settings.gemm_min_part_cout))
    step = -(-cout_g // parts)
    jobs = [
        (n0, t0, o0, min(cout_g, o0 + step)) for n0, t0 in jobs for o0 in range(0, cout_g, step)
    ]
    run_jobs(chunk, jobs, threads, settings, spec)
    return out


def pointwise(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype, settings: Settings
) -> np.ndarray:
    """1x1, stride 1, no padding: matmuls over channels straight on the input (no copy),
    in pieces of images and of pixels or output channels on our threads (each GEMM on
    one BLAS thread).

    Every piece's GEMM packs the rows of the weights it takes and the columns of the input
    it takes, so a piece of pixels packs all the weights again: where an image's pixels
    are fewer than its output channels (resnet's 512->2048 on 7^2), the pieces take
    output channels instead, and elsewhere pixels (the measurements are in commit
    ff58907 and docs/PERFORMANCE.md).
    """
    g, cin_g, cout_g, n = spec.groups, spec.cin_g, spec.cout_g, spec.n
    hw = spec.h * spec.w
    wm = weight.reshape(g, cout_g, cin_g)
    xs = x.reshape(n, g, cin_g, hw)
    out = np.empty((n, g, cout_g, hw), dtype=work)
    threads = pointwise_threads(spec, settings)
    if threads == 1:
        with quiet_blas(spec, settings):
            np.matmul(wm, xs, out=out)
        return out.reshape(n, spec.c_out, spec.h, spec.w)
    # about two pieces per thread, whole images where there are enough of them
    pieces = max(1, -(-2 * threads // n))
    by_channels = pieces > 1 and hw < cout_g
    extent = cout_g if by_channels else hw
    step = -(-extent // pieces)
    step = min(extent, -(-step // 16) * 16)

    def piece(i: int, p0: int) -> None:
        if by_channels:
            np.matmul(wm[:, p0 : p0 + step], xs[i], out=out[i, :, p0 : p0 + step])
        else:
            np.matmul(wm, xs[i, :, :, p0 : p0 + step], out=out[i, :, :, p0 : p0 + step])

    jobs = [(i, p0) for i in range(n) for p0 in range(0, extent, step)]
    run_jobs(piece, jobs, threads, settings)
    return out.reshape(n, spec.c_out, spec.h, spec.w)


def pointwise_threads(spec: ConvSpec, settings: Settings) -> int:
    """Our threads for :func:`pointwise`: from ``settings.pointwise_threaded_min_flops``
    on (a plain matrix product pays for waking a thread sooner than the gathering
    paths do)."""
    large = 2 * spec.macs >= settings.pointwise_threaded_min_flops
    return gemm_threads(spec, settings, large=large)


def _shared_rows_apply(spec: ConvSpec) -> bool:
    """Kernel rows ``i*dh`` of output row ``r`` (padded row ``sh*r + i*dh``) lie on one
    grid of step ``dh`` for every row when ``dh`` divides ``sh``, so that consecutive
    (kernel row, channel, column tap) columns are equally spaced (see
    :func:`_gemm_shared_rows`)."""
    return spec.kh > 1 and spec.stride[0] % spec.dilation[0] == 0


def _shared_rows(spec: ConvSpec, settings: Settings) -> bool:
    if not _shared_rows_apply(spec):
        return False
    if settings.shared_rows is not None:
        return settings.shared_rows
    return (
        spec.w_out >= settings.shared_rows_min_width
        and spec.cout_g <= settings.shared_rows_max_cout
    )


def _pieces(width: int, piece: int) -> list[tuple[int, int, int]]:
    """(first column, piece width, pieces) covering ``width`` columns: pieces of
    ``piece`` columns, then one for the rest."""
    piece = min(width, piece)
    count, rest = divmod(width, piece)
    return [(0, piece, count)] + ([(count * piece, rest, 1)] if rest else [])


def _gemm_shared_rows(
    x: np.ndarray, weight: np.ndarray, spec: ConvSpec, work: np.dtype, settings: Settings
) -> np.ndarray:
    """The gemm path with one column matrix per band that every output row shares.

    The column matrix of every tap holds each input row ``kH`` times (once per kernel
    row). Here a band keeps each padded input row once, as ``C_in/groups x kW`` copies
    shifted by the column taps (``C[g, u, c, j, :]`` = padded row ``y0 + u*dh``, columns
    ``sw*p + j*dw``), each ``L`` elements long. Output row ``r`` needs rows ``u = r*sh/dh
    + i`` for kernel rows ``i``: with the (kernel row, channel, column tap) order those
    are ``kH*C_in/groups*kW`` rows exactly ``L`` apart, i.e. an ordinary strided matrix
    starting ``r*sh/dh`` rows in, and one GEMM per output row (batched by ``np.matmul``)
    reads it in place and writes its output row in place. W9 copies 7x less, and its
    GEMMs ran 77-80 GFLOP/s per thread (``L`` an odd number of cache lines).
    """
    g, cin_g, cout_g = spec.groups, spec.cin_g, spec.cout_g
    n, ho, wo = spec.n, spec.h_out, spec.w_out
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    step = sh // dh  # grid rows between consecutive output rows
    item = work.itemsize
    lead = row_lead(wo, item)
    kc = cin_g * spec.kw
    # (G, 1, C_out/G, K) with K in (kernel row, channel, column tap) order
    w5 = weight.reshape(g, cout_g, cin_g, spec.kh, spec.kw)
    wm = prepared(
        ("shared_rows", work, g),
        weight,
        lambda: np.ascontiguousarray(w5.transpose(0, 1, 3, 2, 4)).reshape(g, 1, 1, cout_g, -1),
    )
    # column taps by stride phase: a phase's taps are every `jstep`-th kernel column and
    # read the phase's columns `cstep` apart from `c0` on
    grids = axis_grids(spec.kw, sw, dw)
    wq = wo + max(c0 + (len(jj) - 1) * cstep for _, jj, c0, cstep in grids)
    per_row = spec.c_in * spec.kw * lead * item * step
    rows = max(1, min(ho, settings.shared_rows_bytes // max(1, per_row)))
    rows = -(-ho // -(-ho // rows))  # equal bands
    nu_max = step * (rows - 1) + spec.kh
    out = np.empty((n, spec.c_out, ho, wo), dtype=work)

    def band(i: int, r0: int) -> None:
        nr = min(rows, ho - r0)
        nu = step * (nr - 1) + spec.kh
        cols = scratch("shared_cols", (g, nu_max, kc, lead), work, settings.scratch_keep)
        phase = scratch("shared_phase", (spec.c_in, nu_max, wq), work, settings.scratch_keep)
        rpos = sh * r0 - spec.pad[0] + dh * np.arange(nu)
        dst = cols[:, :nu].reshape(g, nu, cin_g, spec.kw, lead)
        for b, jj, c0, cstep in grids:
            cpos = b - spec.pad[2] + sw * np.arange(wq)
            gather2d(x[i], rpos, cpos, spec.padding_mode, phase[:, :nu])
            # every tap of the phase in one strided view, as in gemm
            ps = phase.strides
            src = np.ndarray(
                (g, nu, cin_g, len(jj), wo),
                dtype=work,
                buffer=phase,
                offset=c0 * item,
                strides=(cin_g * ps[0], ps[1], ps[0], cstep * item, item),
            )
            jstep = jj[1] - jj[0] if len(jj) > 1 else 1
            dst[:, :, :, jj[0] : jj[-1] + 1 : jstep, :wo] = src
        cs = cols.strides
        # each output row in pieces of `piece` columns: OpenBLAS runs these small
        # products faster than one long one (see Settings.shared_rows_piece), then the rest
        for c0, width, count in _pieces(wo, settings.shared_rows_piece):
            b_view = np.ndarray(
                (g, nr, count, spec.kh * kc, width),
                dtype=work,
                buffer=cols,
                offset=c0 * item,
                strides=(cs[0], step * cs[1], width * item, cs[2], item),
            )
            o_view = np.ndarray(
                (g, nr, count, cout_g, width),
                dtype=work,
                buffer=out,
                offset=((i * spec.c_out * ho + r0) * wo + c0) * item,
                strides=(cout_g * ho * wo * item, wo * item, width * item, ho * wo * item, item),
            )
            np.matmul(wm, b_view, out=o_view)

    jobs = [(i, r0) for i in range(n) for r0 in range(0, ho, rows)]
    run_jobs(band, jobs, gemm_threads(spec, settings), settings, spec)
    return out
