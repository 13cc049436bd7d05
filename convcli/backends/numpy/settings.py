"""The NumPy backend's tuning values, as one frozen object the backend holds.

A backend reads ``backend.settings``; tests and A/B runs swap in a changed copy
(:meth:`NumpyBackend.using <convcli.backends.numpy.backend.NumpyBackend.using>` or
``dataclasses.replace``) instead of patching module globals. Budgets are bytes, rates
are per second. The measurements behind the values are in the field comments (ms on
this machine's 2 cores unless said otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Tuning values of the NumPy backend (see the module docstring)."""

    # -- memory budgets ---------------------------------------------------------------
    # work arrays of one band of the reference and the tap loops
    chunk_bytes: int = 64 * 2**20
    # column matrix per GEMM: in L2 when bands run on our threads, larger when BLAS
    # threads it (W7 with 2, 3, 6 and 16 MiB: 2.42, 1.92, 1.83 and 2.18 ms; W6 within
    # noise)
    gemm_bytes: int = 2**20
    blas_gemm_bytes: int = 6 * 2**20
    # largest per-thread work array the gemm path keeps between calls (threads.scratch)
    scratch_keep: int = 32 * 2**20
    # flat positions per piece of the planar depthwise tap loop (x channels): stays in L2
    tap_piece: int = 48 * 1024

    # -- threads ----------------------------------------------------------------------
    # worker threads of the gemm path; None: the CPUs this process may run on
    threads: int | None = None
    # move each worker of the gemm path to a CPU other than the caller's
    # (threads.spread_plan)
    spread_workers: bool = True
    # problems smaller than this (flops) run on one thread (threads.gemm_threads)
    threaded_min_flops: int = 10**8
    # ... 1x1 layers (gemm.pointwise) from this many. Wall ms per call through the
    # OpenCL backend's host route, N=1, medians of 15 alternating with 10**8 (77 layers
    # of 20-100 MFLOP of the shipped and benchmarks/cnn_layers_more.json networks;
    # benchmarks/pointwise_threads_ab.py, whose later run gave 35.3 against 36.8 ms):
    # from about 35 MFLOP two threads won nearly always (densenet's 832->128 14^2, 42
    # MFLOP: 0.42 vs 0.51; 320->784 14^2 0.72 vs 1.03; 448->128 28^2 0.63 vs 0.94);
    # from 20 to 33 MFLOP they tied (416->128 14^2 0.246 vs 0.239, 144->144 28^2 0.358
    # vs 0.353). The gathering paths keep threaded_min_flops: a 3->64 3x3 s2 stem of 43
    # MFLOP ran 1.32x slower on two threads.
    pointwise_threaded_min_flops: int = 35 * 10**6
    # From this many multiply-adds on, a call that runs its GEMMs on one thread puts BLAS
    # on one thread too (threads.quiet_blas). OpenBLAS runs GEMMs below 2**18 M*N*K on one
    # thread anyway, and the switch costs about 16 us.
    quiet_blas_macs: int = 2**18

    # -- gemm -------------------------------------------------------------------------
    # at least this many output pixels per gemm task (the GEMM's N)
    gemm_min_pixels: int = 512
    # outputs narrower than this compute junk columns instead of short copies
    # (gemm.gemm_plan), when they have fewer output channels per group than
    # junk_max_cout: junk columns save copy work per column but cost GEMM work per output
    # channel (W7, 32 channels: 1.79 ms with junk, 2.10 without; W6, 256: 6.22 with, 5.80
    # without; W5, 64: 13.9 and 13.5)
    junk_below: int = 64
    junk_max_cout: int = 64
    # fewer bands than threads: each thread takes a part of the output channels of at
    # least this many (gemm.gemm)
    gemm_min_part_cout: int = 32
    # non-overlapping patches (gemm._patches), fewer images than threads: the threads
    # split each image's output rows where the weight matrix is at most this, else its
    # output channels. Wall ms of 100 calls, N=1, two threads, alternating processes,
    # nice -15 on the busy machine, median/min, three runs, channels vs rows:
    # convnext's stem (18 KB of weights) 0.424/0.358 vs 0.416/0.352, 0.405/0.358 vs
    # 0.401/0.346, 0.409/0.353 vs 0.389/0.349; but 192->384 2x2 s2 on 28^2 (1.2 MB)
    # 1.24/0.82 vs 1.68/0.93, 1.07/0.79 vs 1.45/0.84, 1.08/0.76 vs 1.43/0.82 and
    # 96->192 on 56^2 (0.3 MB) even or worse (one job's CPU, one BLAS thread, had
    # favoured rows on both: 761/682 vs 683/627 us on 28^2)
    patches_rows_weight_bytes: int = 64 * 1024
    # ... and they run on our threads from this many flops (below threaded_min_flops:
    # one transposed copy and one GEMM, split in two jobs by rows). Wall ms of 100 calls
    # alternating, busy machine, median/min, one thread vs two: convnext's 3->96 4x4 s4
    # stem on 224^2 (29 MFLOP) 0.45-0.47/0.435-0.44 vs 0.43-0.58/0.35-0.36 (the minima,
    # the other CPU free, are what an idle machine gives)
    patches_threaded_min_flops: int = 2 * 10**7

    # -- gemm over shared rows (gemm.gemm_shared_rows) ----------------------------------
    # None: the rule below; True/False force it where it applies (tests, A/B runs).
    # It pays where copies weigh against the GEMMs (few output channels per group) and
    # rows are wide (each output row is one GEMM of N = W_out columns). Measured against
    # the column matrix of every tap: W9 12.2-15.2 vs 14.9-16.9, 3->16 3x3 on 960x540
    # 8.4 vs 9.1, 16->16 5x5 on 512^2 31.1 vs 34.3; but 64->64 3x3 on 224^2 26.0 vs 25.1,
    # a 3->64 7x7 stem (112 wide) 2.7 vs 2.3, W5 (56 wide) 14.9 vs 13.7. Mobile
    # networks' 3->16 and 3->32 3x3 s2 stems (112 wide, one thread): 0.28 vs 0.40 and
    # 0.38 vs 0.52.
    shared_rows: bool | None = None
    shared_rows_min_width: int = 96
    shared_rows_max_cout: int = 32
    # column bytes per band (per thread): W9 took 14.5, 13.4, 12.2, 12.6 and 14.2 ms with
    # 0.5, 1, 2, 4 and 8 MiB
    shared_rows_bytes: int = 2 * 2**20
    # output columns per GEMM: OpenBLAS ran (16 x 147) x (147 x N) at 108, 94, 101, 77
    # and 67 GFLOP/s per thread for N = 64, 128, 256, 512 and 1024; W9 took 12.9, 10.7,
    # 10.7 and 11.1 ms with pieces of 512, 256, 128 and 64
    shared_rows_piece: int = 256

    # -- depthwise --------------------------------------------------------------------
    # Depthwise layers with this many channels or more (one per group, zero padding) run
    # channels-last (depthwise.channels_last): CPU ms against the planar tap loop, 1152
    # channels 7x7 5x5 0.70 vs 2.11, 768 7x7 7x7 0.90 vs 2.92, N=8 384 14x14 7x7 15.0 vs
    # 37.4, 96 56x56 7x7 7.2 vs 12.3, 32 112x112 3x3 3.1 vs 3.9; N=8 58 56x56 3x3 s2 4.1
    # vs 3.4.
    channels_last_min: int = 64
    # bytes of one band's accumulator in the channels-last loop (stays in L2)
    channels_last_band: int = 256 * 1024
    # Depthwise layers (one channel per group, zero padding, real dtypes) run as GEMMs
    # where the kernel has at least dw_gemm_min_taps taps and the layer at least
    # dw_gemm_min_macs multiply-adds and the GEMMs take whole rows or shifted rows (see
    # below; one-thread CPU ms, busy machine, min, tap loops vs GEMM: 3x3 on RGB 224^2
    # 1.41 vs 0.65, 1024^2 14.9 vs 9.6; 3x3 s2 16ch 112^2 0.33 vs 0.26, 72ch 56^2 0.43
    # vs 0.32; 3x3 1152ch 7^2 0.24 vs 0.22; 5x5 s2 288ch 14^2 0.23 vs 0.17; even: 3x3
    # 480ch 14^2 0.37 vs 0.37, 232ch 14^2 s2 0.099 vs 0.113). The banded blocks of
    # columns (depthwise._depthwise_gemm), for the rest, run where the kernel has at least
    # dw_gemm_min_taps taps, an output row of all images at least dw_gemm_min_row_taps
    # taps per column of stride (N * W_out * kH * kW / stride: more images amortise the
    # per-channel calls), the layer at least dw_gemm_min_macs
    # multiply-adds, and, for kernels under dw_gemm_many_taps taps, at least
    # dw_gemm_min_channels channels. dw_gemm None: that rule; True/False force it where
    # it applies (tests, A/B runs). Measured before the other layouts, CPU ms, one
    # thread, against the better tap loop: 7x7
    # 96ch 56^2 1.8 vs 7.1 (8.2), 768ch 7^2 0.50 vs 0.87; 5x5 144ch 14^2 0.21 vs 0.35,
    # 576ch 7^2 0.30 vs 0.36, 96ch 28^2 s2 0.23 vs 0.31; 3x3 32ch 112^2 1.3 vs 2.9, 96ch
    # 112^2 s2 2.2 vs 3.6, 88ch 28^2 0.32 vs 0.40; but 3x3 480ch 14^2 0.44 vs 0.35,
    # 1152ch 7^2 0.35 vs 0.24 and 5x5 672ch 14^2 s2 0.56 vs 0.48 (rows of 126, 63 and 87
    # taps per column of stride). At N=8 the GEMM also wins there: 5x5 288ch 14^2 s2
    # 1.2 vs 2.1, 3x3 116ch 14^2 0.74 vs 0.92, 232ch 7^2 0.43 vs 0.53, but 58ch 56^2 s2
    # 3.9 vs 3.1.
    dw_gemm: bool | None = None
    dw_gemm_min_taps: int = 9
    dw_gemm_min_row_taps: int = 150
    dw_gemm_min_macs: int = 10**5
    dw_gemm_many_taps: int = 25
    dw_gemm_min_channels: int = 20
    # outputs per block (the GEMM's N): dw_gemm_rows output rows (without dilation along
    # the rows) of dw_gemm_block / dw_gemm_rows columns (fewer on narrower outputs)
    dw_gemm_block: int = 16
    dw_gemm_rows: int = 2
    # a job's row matrix, at most (and at least; see depthwise._depthwise_gemm)
    dw_gemm_job_bytes: int = 2 * 2**20
    dw_gemm_min_job_bytes: int = 128 * 1024
    # from this many multiply-adds of its GEMMs (the band's zeros included) a depthwise
    # GEMM runs on our threads: wall ms, N=1, min of 45 on a busy machine, one thread
    # against two: 7x7 96ch 56^2 (34M) 1.61 vs 1.09; 3x3 32ch 112^2 (16M) 1.20 vs 0.78,
    # 96ch 112^2 s2 (26M) 1.99 vs 1.30; 7x7 192ch 28^2 (19M) 0.98 vs 0.84; but 7x7
    # 384ch 14^2 (9.6M) 0.61 vs 0.73, 5x5 240ch 14^2 (3.9M) 0.33 vs 0.50
    dw_gemm_threaded_min_macs: int = 12 * 10**6
    # Whole rows instead of blocks of columns (depthwise._rows_layout) where the unpadded
    # row is at most dw_rows_slack times a block's span; the whole map where it has at
    # most dw_rows_whole_extra rows more than one group of rows reads and its band takes
    # at most dw_rows_whole_bytes per channel. dw_rows None: that rule; True/False force
    # it where the GEMM runs (tests, A/B runs). Min ms, busy machine, blocks vs rows:
    # 7x7 384ch 14^2 N=8 4.06 vs 2.88, N=1 0.75 vs 0.52; 768ch 7^2 (whole) N=8 1.97 vs
    # 0.91, N=1 0.63 vs 0.40; 3x3 116ch 14^2 (1.4 spans) N=8 1.04 vs 0.57.
    dw_rows: bool | None = None
    dw_rows_slack: float = 1.5
    dw_rows_whole_extra: int = 2
    dw_rows_whole_bytes: int = 16 * 1024
    # ... and the call has at least this many images: one image's whole-map GEMM is a
    # matrix-vector product that reads its channel's band for one row of products. CPU
    # ms of one thread, median, whole map vs pairs of rows, caches warm / flushed: N=1
    # 7x7 768ch 7^2 0.36/0.72 vs 0.28/0.58, 5x5 1152ch 7^2 0.63/0.72 vs 0.36/0.47, 576ch
    # 0.30/0.39 vs 0.18/0.27; N=2 7x7 768ch 0.35/0.89 vs 0.38/0.86, 5x5 1152ch 0.59/0.71
    # vs 0.56/0.71; N=4 768ch 0.51/0.94 vs 0.61/1.08; N=8 0.64/1.02 vs 1.19/1.54
    dw_rows_whole_min_images: int = 2
    # the band of a group of rows at most this a channel (a dilated kernel's reaches
    # far: dilation 150 on 1000^2 made a 1 GB band)
    dw_rows_band_bytes: int = 256 * 1024
    # output rows per row of a whole-row GEMM; one row for one image of at least
    # dw_rows_single_min_rows output rows. CPU ms of one thread, N=1, median, pairs vs
    # single rows: 7x7 384ch 14^2 0.70 vs 0.61, 5x5 672ch 14^2 1.38 vs 1.32, 480ch 0.66
    # vs 0.60 (caches flushed: 1.25 vs 0.99, 1.32 vs 1.14); but 7^2 outputs 768ch 0.36
    # vs 0.44, 5x5 1152ch 0.57 vs 0.80, 672ch 14^2 s2 0.39 vs 0.49; N=8 even (14^2
    # 384ch 3.47 vs 3.21, 672ch 4.18 vs 4.19, 7^2 1152ch 1.16 vs 1.22)
    dw_rows_group: int = 2
    dw_rows_single_min_rows: int = 12
    # a job's matrices at least this (where a third of the padded copy is less): CPU ms
    # of one thread, N=1, median, 128 KiB vs 512 KiB vs 2 MiB: 7x7 384ch 14^2 0.44 vs
    # 0.41 vs 0.38, 768ch 7^2 0.26 vs 0.23 vs 0.24; 5x5 672ch 14^2 0.65 vs 0.55 vs
    # 0.57, 1152ch 7^2 0.41 vs 0.34 vs 0.31; 3x3 480ch 14^2 0.28 vs 0.25 vs 0.24 (the
    # call's peak stays within budget.conv_need's price: 1.9 MB against 2.2 for 384ch)
    dw_rows_min_job_bytes: int = 2 * 2**20
    # from this many multiply-adds of its GEMMs a whole-row GEMM runs on our threads (its
    # jobs are a few runs of channels, cheaper to share than the column blocks' jobs):
    # wall ms, N=1, load 3.9 on 2 cores, median/min, one thread against two: 7x7 384ch
    # 14^2 (8.4M) 0.60/0.50 vs 0.54/0.37; 5x5 672ch 14^2 (11M) 0.66/0.62 vs 0.51/0.43,
    # 480ch (7.9M) 0.87/0.47 vs 0.75/0.36; 240ch (4.0M) 0.24/0.23 both. Since its jobs
    # pad their own rows (one thread's share 0.38 ms) a threaded call's 55-155 us of
    # waking and waiting is what two threads add: on the idle machine (06:00 UTC,
    # `benchmarks/numpy_settings_ab.py --batch 1 --rounds 12`, wall ms median/min) 4M
    # vs 12M: 7x7 384ch 14^2 0.606/0.506 vs 0.425/0.412, convnext_tiny N=1 total
    # 16.26/13.97 vs 14.45/13.22; efficientnet_b0 18.35 vs 18.18, mobilenet_v3_small
    # 4.42 vs 4.39, shufflenet 7.08 vs 6.79; at N=8 even (convnext 58.3 vs 57.5)
    dw_rows_threaded_min_macs: int = 12 * 10**6
    # Wider outputs: GEMMs over column-shifted copies of the input rows
    # (depthwise._depthwise_shifted) from dw_shifted_min_width output columns, in groups
    # of dw_shifted_rows output rows, jobs of one image and the channels whose copies
    # take dw_shifted_job_bytes, on our threads from dw_shifted_threaded_min_macs
    # multiply-adds of the GEMMs (about 0.7 ms of one thread's work, where the column
    # blocks' 12M put it). dw_shifted None: that rule; True/False force it. CPU ms of one
    # thread, median/min, load 4.7 on 2 cores, column blocks vs shifted rows: 7x7 96ch
    # 56^2 N=1 1.73/1.63 vs 1.44/1.34, N=8 18.4/16.0 vs 14.0/12.1; 192ch 28^2 N=1
    # 1.40/1.14 vs 1.13/0.95, N=8 9.0/7.8 vs 9.0/8.1; 3x3 144ch 56^2 N=8 15.0/14.0 vs
    # 8.7/8.4; 96ch 112^2 s2 N=8 30.6/29.1 vs 17.0/16.0; but on 14 columns 3x3 116ch 14^2
    # N=8 0.75/0.72 vs 0.86/0.84, 5x5 672ch 28^2 s2 N=1 2.5/2.0 vs 2.9/2.6 (rows of 4
    # against 6 and 8: 4 was best or even). Jobs of 2 MiB of copies since each job pads
    # its own rows (CPU ms of one thread, median/min, 1 against 2 and 4 MiB: 96ch 56^2
    # N=8 10.7/10.3, 9.9/9.2, 9.9/9.7; 192ch 28^2 N=8 6.5/6.3, 6.2/5.8, 6.5/6.4; N=1
    # 96ch 1.74/1.41, 1.68/1.38, 1.49/1.35; fewer jobs, fewer calls: some 15 us a job).
    dw_shifted: bool | None = None
    dw_shifted_min_width: int = 16
    dw_shifted_rows: int = 4
    dw_shifted_job_bytes: int = 2 * 2**20
    dw_shifted_threaded_min_macs: int = 6 * 10**6
    # images side by side in a GEMM's columns, at most this many columns of them: CPU ms
    # of one thread, N=8, median/min, one image against 256 columns: 7x7 96ch 56^2
    # 14.9/13.9 vs 11.6/10.3, 192ch 28^2 8.6/8.5 vs 7.3/6.9; 3x3 144ch 56^2 9.9/8.8 vs
    # 8.0/7.8 (128: 9.2/8.6, 200: 10.6/8.7, 512: as 256)
    dw_shifted_width: int = 256
    # several images' padded rows side by side where they are at most this many times
    # the output's (the GEMMs compute the columns between them too): CPU ms of one
    # thread, N=8, median, runs of W_out vs whole padded rows: 7x7 192ch 28^2 (34/28
    # columns) 5.60 vs 4.76, 96ch 56^2 9.76 vs 9.15; 5x5 240ch 28^2 6.57 vs 4.90; 3x3
    # 88ch 28^2 1.39 vs 1.13, 32ch 112^2 5.27 vs 4.78
    dw_shifted_flat_slack: float = 1.25
    # one image's output rows in parts of at least this many side by side (each part
    # reads kH - sH rows of the next again), for kernels of at least
    # dw_shifted_part_min_taps taps. CPU ms of one thread, N=1, median/min, whole rows
    # vs 2 parts: 7x7 96ch 56^2 1.54/1.42 vs 1.41/1.31; but 3x3 32ch 112^2 0.87/0.51 vs
    # 0.98/0.59, 96ch s2 1.48/1.41 vs 1.58/1.46, 144ch 56^2 0.84/0.80 vs 0.84/0.79
    dw_shifted_part_rows: int = 12
    dw_shifted_part_min_taps: int = 25

    # -- cost model (cost.estimate_seconds) ---------------------------------------------
    # Effective throughputs of this machine's NumPy (OpenBLAS, 2 Zen 4 cores), fitted to
    # benchmarks/numpy_crossover.py (RGB 1024^2, one BLAS thread because the machine was
    # shared; only the ratios matter). They include each path's overheads, hence low
    # values. Measured crossovers (ms, direct / separable / fft): rank-1 kernels 3x3
    # 61/95/310, 5x5 71/71/243, 7x7 160/87/347, 21x21 725/65/156 -> separable from 5x5
    # up; rank-2 kernels 9x9 159/-/227, 11x11 344/-/142, 15x15 257/-/140 -> fft from
    # about 11x11. Dense layers: gemm beat the reference im2col on all of W5-W9
    # (1.2-2.4x).
    gemm_flops: float = 100e9  # sgemm with K >= 64: 90-150 GFLOP/s
    toeplitz_flops: float = 40e9  # the banded matmuls of the separable passes
    separable_passes: int = 20  # memory passes over each channel plane
    tap_elems: float = 3e9  # tap loop: multiply + add per output element and tap, in cache
    copy_bytes: float = 8e9  # slice copies into the column matrix (read + write)
    gather_elems: float = 0.25e9  # the reference im2col's 6-D transpose gather
    fft_elems: float = 0.75e9  # complex64 rfft2+irfft2: elements * log2(size) per second
    fft_mac_flops: float = 5e9  # complex multiply-accumulate of spectra over channels
    # largest kernel spectra algo='fft' may hold
    fft_kernel_bytes: int = 256 * 2**20
    # LAPACK's SVD (the rank-1 check of a kernel that passed plan's quick test): about
    # 22 k^3 flops for a k x k kernel at ~4 GFLOP/s (three 1001x1001 kernels took 18 s).
    svd_flops: float = 4e9


DEFAULT = Settings()
