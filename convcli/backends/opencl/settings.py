"""The OpenCL backend's tuning values: one frozen :class:`Settings` per backend.

Every launch shape, block size and cost-model threshold of the kernel families lives
here rather than in module globals, so that a test or an A/B run changes them for one
backend (``backend.settings = dataclasses.replace(backend.settings, winograd=True)``)
without patching modules, and so that remembered plans are keyed by the values they
were made with. The defaults were measured on PoCL's CPU device unless a comment says
otherwise; the GPU-shaped kernels' values follow the usual GPU rules, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Settings:
    """Tuning of the OpenCL kernel families (see each field's comment)."""

    # ---- the generic direct kernel (conv2d_direct)
    # One local size for every launch: PoCL JIT-compiles each new local size at first
    # launch, and on CPUs the size barely matters.
    direct_local: tuple[int, int, int] = (8, 4, 1)

    # ---- packed weights met again (Runtime.packed_weights)
    # Served on a 64-value sample's match, the full comparison with their record run
    # while the kernels run (Runtime.defer_weight_checks; the run is done again if it
    # finds a change) rather than before the launches, with the device idle.
    late_weight_checks: bool = True

    # ---- launches along output rows (Runtime.enqueue_rows)
    # Work-items per work-group wanted along the width (the runtime shrinks it to what
    # the device and kernel allow): 64, or the next power of two above the row's item
    # count when a row has fewer (no groups of mostly idle items: 64 on a 7x7 depthwise
    # layer ran 2.4x slower than 1). dw_direct with runtime sizes builds once for every
    # image size, and PoCL JIT-compiles each new local size at first launch (0.4 s per
    # pass, measured), so it uses 64 from dw_fixed_items items per row on. PoCL's
    # per-group overhead made 8 items per group 2.5x slower than 64 on a memory-bound
    # kernel.
    local_x: int = 64
    dw_fixed_items: int = 17

    # ---- depthwise (dw_direct)
    # dw_direct bakes image sizes into the build for input planes up to this many
    # pixels: CNN feature maps, whose sizes repeat, ran 3-15% faster with constant sizes
    # (A/B in one process, 7x7 to 136x136 depthwise 3x3). Larger planes (photos, whose
    # sizes vary) take sizes as arguments, within noise of constants on 2048x2048.
    dw_fixed_pixels: int = 256 * 256
    # Kernel taps are fully unrolled (accumulators in registers): beyond these sizes the
    # unrolled bodies take seconds to compile and the generic kernel runs instead.
    dw_max_taps: int = 256
    # Unrolled multiply-adds per dw_direct item: rows output rows share loaded input rows.
    dw_max_body: int = 1024

    # ---- depthwise across channels (dw_channels), CPU devices
    # For depthwise layers with at least this many output channels and output rows at
    # most this wide.
    dw_channels_min_cout: int = 32
    dw_channels_max_wo: int = 32
    # Output columns per item at most (accumulators: XB float8 registers).
    dw_channels_xb: int = 8
    # Items per work-group wanted: each item is short (one row segment of 8 channels).
    dw_channels_items: int = 16
    # The batch size and the heights as build defines (a build per row band and batch
    # size) rather than arguments; the widths are defines either way.
    dw_channels_fixed_sizes: bool = False
    # Plain depthwise layers among those (one channel per group) as dw_to_blocks +
    # dw_blocks: the input copied once into zero-padded blocks of 8 channels. Against
    # dw_channels (ms, N=8, min of 30, one process, busy machine): 7x7 on 28^2 1.35 vs
    # 3.16, 14^2 0.76 vs 1.35, 7^2 0.40 vs 0.54; 5x5 on 28^2 1.11 vs 2.78, 14^2 1.48 vs
    # 2.92, 5x5 s2 0.47 vs 0.67; 3x3 on 14^2 0.43 vs 0.77 (480 channels) and even (116);
    # and 3x3 s2 (CPU ms, min of 32): 72 channels on 56^2 0.74 vs 1.37, 116 on 28^2
    # 0.37 vs 0.59, 240 on 28^2 0.77 vs 1.12, 232 on 14^2 0.20 vs 0.25; 2x2 s2 (one
    # tap per input pixel) is untested. From this many taps per input pixel (taps /
    # (stride_h * stride_w)). Kernels of at least dw_blocks_wide_taps taps also take
    # rows up to dw_blocks_wide_max_wo wide from dw_wide: 7x7 on 56^2 (96 channels)
    # 4.5 vs 4.9 CPU ms, kernel 2.10 vs 2.29. 3x3 on 56^2 lost (3.97 vs 2.73) until
    # dw_blocks made its copy in local memory (dw_blocks_fused); fused, from
    # dw_blocks_fused_wide_taps on rows up to dw_blocks_fused_max_wo (wall ms, min of
    # 10-45, one process alternating, busy machine): 3x3 on 56^2 144 channels N=8
    # 1.06-1.09 vs 1.54-1.66 (dw_wide), 64 N=8 0.40-0.42 vs 0.58, 32 on 48^2 N=8
    # 0.20-0.21 vs 0.26-0.28, 96 N=1 0.17 vs 0.20-0.21; on 112^2 (dw_direct) 32 channels
    # N=8 0.91-1.16 vs 1.63-3.16, N=1 0.19-0.20 vs 0.27, 16 N=8 0.43 vs 0.75; 5x5 64 on
    # 80^2 N=8 1.38 vs 3.62, 48 on 112^2 N=1 0.30 vs 0.63.
    dw_blocks: bool = True
    dw_blocks_min_taps: float = 2.0
    dw_blocks_wide_taps: int = 25
    dw_blocks_fused_wide_taps: int = 9
    dw_blocks_fused_max_wo: int = 112
    dw_blocks_wide_max_wo: int = 64
    # From 8 channels (one block) on, not dw_channels' 32: against dw_direct (wall ms,
    # min of 45, one process alternating, busy machine) 3x3 N=8 8 channels on 14^2 0.042
    # vs 0.110, 16 on 28^2 0.11 vs 0.39, 24 on 14^2 0.058 vs 0.163, 5x5 12 on 28^2 0.14
    # vs 0.29; N=1 16 on 28^2 0.040 vs 0.054. Strided layers also take rows up to
    # dw_blocks_wide_max_wo wide (inputs up to dw_blocks_strided_max_bytes): 3x3 s2 N=8
    # 24 channels on 56^2 0.20 vs 0.47, 16 on 112^2 0.46 vs 0.50, 8 on 56^2 0.09 vs
    # 0.18; N=1 16 on 112^2 0.09 vs 0.13, 96 on 112^2 0.36 vs 0.40 (N=8 96 on 112^2, a
    # 38 MB input: 4.6 vs 3.1 kernel ms, the copy leaves the caches).
    dw_blocks_min_cout: int = 8
    dw_blocks_strided_max_bytes: int = 8 << 20
    # dw_blocks copies its input into local memory itself (one launch) where a block's
    # blocked rows take at most dw_blocks_fused_max_bytes (56x56 maps: 111 KB, 112x112 ones
    # 408 KB; and the device's local memory), rather than after a dw_to_blocks launch. 3x3
    # s2 on 112^2, 256 KB -> 512 KB: 16 channels N=8 0.24-0.26 vs 0.45-0.47, 96 channels N=1
    # 0.21-0.23 vs 0.34-0.35, N=8 1.65 vs 3.5-3.7 (the 38 MB input had stayed on dw_direct,
    # dw_blocks_strided_max_bytes). Wall ms, N=8, min of 40, one process alternating, busy
    # machine, fused vs two launches: 3x3 s2 58 channels on 56^2 0.26-0.29 vs 0.48-0.49, 72
    # on 56^2 0.29-0.34 vs 0.71-0.72, 116 on 28^2 0.23 vs 0.33, 16 on 112^2 0.25-0.27 vs
    # 0.50-0.65; 5x5 s2 144 on 56^2 0.74-0.86 vs 1.5-1.7, 96 on 28^2 0.24 vs 0.34; 5x5 240
    # on 14^2 0.27-0.29 vs 0.39, 3x3 88 on 28^2 0.27-0.30 vs 0.37; 7x7 96 on 56^2 1.75 vs
    # 1.97-2.02, 384 on 14^2 0.49-0.51 vs 0.52; N=1 as fast or faster on every
    # mobilenet/shufflenet/convnext layer.
    dw_blocks_fused: bool = True
    dw_blocks_fused_max_bytes: int = 512 << 10

    # ---- grouped layers of 8, 16... channels a group (dw_groups), CPU devices
    # Against dense_gemm (kernel ms, N=8, min of 20-40, one process alternating, busy
    # machine): regnet's g26 3x3 14^2 0.24 vs 0.54, g55 7^2 0.12 vs 0.32, g26 s2 28^2
    # 0.28-0.29 vs 0.61, g55 s2 14^2 0.15-0.16 vs 0.48, g13 28^2 0.49 vs 0.90, g13 s2
    # 56^2 0.59-0.72 vs 0.91, g6 s2 112^2 1.14-1.16 vs 1.73; N=1 (wall, inline device)
    # g26 14^2 0.10 vs 0.18, g13 28^2 0.16 vs 0.20-0.23, g6 s2 112^2 0.25-0.35 vs
    # 0.32-0.41. Input rows up to dw_groups_max_w wide (no wider layer was measured).
    dw_groups: bool = True
    dw_groups_max_w: int = 112
    # Wider groups (N=8, 3x3, ms events, one process alternating, busy machine): 16
    # channels a group 320 g20 14^2 0.81 vs 1.25, 144 g9 28^2 1.45 vs 1.81, 256 g16
    # 56^2 8.8 vs 11.1, 128 g8 s2 56^2 1.38 vs 1.61; N=1 320 g20 14^2 0.27 vs 0.34
    # wall. On 7-wide outputs up to 64 (1024 g32 7^2 1.15 vs 2.12, 1024 g16 7^2 2.17 vs
    # 3.85, 896 g28 s2 14^2 1.22 vs 1.59); wider outputs of 32+ lost (256 g8 s2 28^2
    # 1.45 vs 1.33, 512 g8 14^2 4.7 vs 3.6, 448 g14 s2 56^2 11.4 vs 9.1), 24 on 28^2
    # tied (2.45 vs 2.39).
    dw_groups_max_cin: int = 16
    dw_groups_max_cin_7: int = 64
    # Output columns per item at most (a row in the fewest equal segments).
    dw_groups_xb: int = 8
    # Items per work-group wanted (several rows' segments of one group).
    dw_groups_items: int = 16

    # ---- depthwise on wide maps (dw_pad, then dw_direct without padding), CPU devices
    # Output widths that pay for the padded copy: at 56 columns (7 float8 items a row, 2 of
    # them on dw_direct's border path) a 7x7 layer ran 2.7x faster (N=8, 96 channels), 3x3
    # 1.4x; at 112 (2 of 14) and with stride 2 the copy cost more than it saved
    # (benchmarks/dw_wide_ab.py).
    dw_wide_min_wo: int = 48
    dw_wide_max_wo: int = 64

    # ---- separable box filters (sep_boxsum)
    # Rows per item (the running sum restarts every box_rows rows) and at most this many
    # float8 vectors per item along the width. Each item walks down its rows, so it takes
    # whole rows (up to 4096 columns): three sequential streams. Strips of 8-128 columns
    # ran 2-3x slower (a 2048-wide image, A/B in one process).
    box_rows: int = 32
    box_max_xv: int = 512

    # ---- one-pixel layers on the host
    # Under 'auto', a 1x1 layer on 1x1 maps (squeeze-and-excitation's fully connected
    # layers) of at most this many multiply-adds runs NumPy's matrix product on the host:
    # a launch and its wait cost more than the product (144->576 at N=1: OpenCL 156-214 us
    # a call, NumPy 21-25 us, on a busy 2-core machine). 0: never.
    host_fc_max_macs: int = 1 << 20
    # Under 'auto' on a CPU device, a 1x1 layer without padding or groups, float32, of
    # at most host_pointwise_max_batch images (host_pointwise_strided_max_batch when
    # strided) and host_pointwise_max_out_bytes of output runs NumPy's matrix products on
    # the host: the device's cores are the host's, and BLAS needs no launch, no wake-up
    # of the device's threads and no wait for its queue. The device keeps strided layers
    # of several images (NumPy gathers their columns with a copy first), larger batches,
    # and outputs so large that a fresh one is mapped afresh, every page faulting, at
    # each call. docs/PERFORMANCE.md has the measurements behind each limit
    # (benchmarks/host_pointwise_ab.py --batch N). 0: never.
    host_pointwise_max_batch: int = 8
    host_pointwise_max_out_bytes: int = 16 << 20
    # ... of at most this many images when strided
    host_pointwise_strided_max_batch: int = 1

    # ---- PoCL's inline (basic) device beside its threaded one (OpenCLBackend.runtime_for)
    # Layers of at most this many multiply-adds (over the batch; a depthwise layer's
    # count inline_dw_weight times) run on it; None: 6M over the threaded device's
    # compute units; 0: never.
    inline_max_macs: int | None = None
    # A depthwise layer's multiply-adds count 1.5x against inline_max_macs (2x before):
    # the threaded device's launch and wake-up cost 150-180 us a call against 60-90 us
    # inline, worth the second thread from ~0.2 ms of inline kernel on. shufflenet's
    # 116-channel 3x3 on 14^2 at N=8 (1.64M) ran in 0.15 ms inline against 0.23-0.25 ms
    # threaded (wall medians, alternating, busy 2-core machine; kernel 0.09 vs 0.06 ms).
    inline_dw_weight: float = 1.5
    # A 1x1 layer with stride 1 and no padding on a map of at most inline_1x1_pixels
    # (a GEMM, gemm_1x1 or dense_gemm's 1x1 form, which do more multiply-adds a second
    # than the others, and whose threaded runs are short enough for the threads'
    # wake-up to count) counts this much of its multiply-adds against that limit: 3M
    # on 2 cores takes such layers up to 8M. N=1, min of 18 calls, one process alternating, busy
    # machine, ms: efficientnet_b0's 80->480 14^2 (7.5M) 0.33 -> 0.25, 240->80 14^2
    # 0.17 -> 0.14, 144->40 28^2 0.20 -> 0.17, 40->240 28^2 0.28 -> 0.27, 480->80
    # 14^2 0.20 -> 0.21; above 8M the threaded device won (104->104 28^2, 8.5M: 0.22
    # against 0.29 inline; 112->672 14^2 0.31 against 0.41). Checkouts A/B
    # (benchmarks/cnn_checkouts_ab.py, N=1, 6 rounds of 5, every 1x1 layer): wall
    # medians 144->40 28^2 0.29 -> 0.20, 240->80 14^2 0.25 -> 0.16, 80->480 14^2
    # 0.45 -> 0.35, 480->80 0.44 -> 0.31, 672->192 7^2 0.30 -> 0.23 (wall minima
    # alike; the process's CPU minima 10-45 % lower: no second thread spinning);
    # efficientnet_b0's 1x1 layers 15.4 -> 13.6 ms, CPU min 13.6 -> 12.1.
    # On larger maps (pointwise's, from 32^2) the wall minima rose inline, medians
    # mixed (N=1: regnet's 48->48 56^2 min 0.26 -> 0.31 ms, mobilenet_v3_small's
    # 16->72 56^2 median 0.30 -> 0.35; shufflenet's 24->58 56^2 0.35 -> 0.24).
    inline_1x1_share: float = 0.375
    inline_1x1_pixels: int = 28 * 28

    # ---- implicit GEMM (dense_gemm)
    # (COB, XB) override for A/B experiments; None = the measured defaults.
    dense_tile: tuple[int, int] | None = None
    dense_max_taps: int = 64
    # 1x1 layers (stride 1, no padding) on maps of at most dense_1x1_pad_pixels with
    # at least dense_1x1_pad_min_cout output channels per group take the 2 x 4 tile
    # (blocks of 16 channels) where the 4 x 2 tile's blocks of 32 pad the output
    # channels this many times as much (gemm.dense_1x1_blocking), CPU devices. Process
    # CPU ms, N=8, min of 18-30, one process alternating and checkouts A/B (busy
    # machine; three runs each): regnet_y_400mf's 208->208 14^2 1.70/2.02/1.69 ->
    # 1.58/1.68/1.55, 104->104 28^2 2.57/2.03 -> 2.49/1.88, 104->208 28^2 4.23/3.83
    # -> 3.92/3.48; efficientnet_b0's 672->112 14^2 3.15/3.90/3.28 -> 2.86/3.38/2.65,
    # 480->112 2.23/2.12/2.16 -> 1.95/1.86/2.06. Not on 80 channels (480->80 14^2
    # 1.36/1.35 -> 1.49/1.40; 240->80 a tie) nor at 6.7 % (240 and 480 channels:
    # 80->480 14^2 1.51 -> 1.56, 40->240 28^2 1.77 -> 1.83).
    dense_1x1_pad_ratio: float = 1.07
    # Those layers' tile in place of 4 x 2 where its blocks pad the output channels
    # less than dense_1x1_pad_ratio times as much (None: 4 x 2): 3 x 4, 12 accumulators
    # with 3 weight loads and 4 broadcasts a step against 8 with 4 and 2. CPU ms, N=8,
    # min of 15, one process alternating (busy machine), 4 x 2 against 3 x 4, one thread
    # / two: resnet50's 256->1024 14^2 9.47 / 9.66 vs 8.46 / 9.18, 1024->256 8.93 /
    # 9.03 vs 8.61 / 8.82, 1024->512 18.4 / 18.2 vs 17.1 / 17.5, 512->256 28^2 18.8 /
    # 19.2 vs 18.5 / 18.2.
    dense_1x1_tile: tuple[int, int] | None = (3, 4)
    # From this many input channels per group: on 24-48 (mobilenet_v3_small's 24->96
    # 28^2, 40->240 and 48->288 14^2) 3 x 4 lost 5-10 %; from 80 it tied or won
    # (efficientnet_b0's 80->480 and 112->672 14^2 ties; shufflenet's 232->232 14^2
    # 2.18 vs 1.92, regnet's 208->440 14^2 3.36 vs 3.17 ms CPU at N=8); N=1 within noise.
    dense_1x1_tile_min_cin: int = 64
    # and from this many pixels a map: the column copies of resnet's 1x1 stride-2
    # layers (gemm.copied_columns) onto 28^2 and 14^2 took it (256->512 s2 56^2 CPU ms
    # 24.6 -> 23.4, 512->1024 s2 28^2 20.8 -> 20.1 at N=8), those onto 7^2 lost
    # (1024->2048 s2 14^2 21.1 -> 21.8, resnet18's 256->512 s2 14^2 1.56 -> 1.66).
    dense_1x1_tile_min_pixels: int = 14 * 14
    dense_1x1_pad_pixels: int = 28 * 28
    dense_1x1_pad_min_cout: int = 96
    # Bytes of packed weights an input-channel chunk may take (half of a 32 KB L1), and
    # for 1x1 layers a quarter (the strip's inputs and partial sums share L1). 8 KB
    # against 16 on 1x1 layers (CPU ms per call, N=8, min of 30, one process
    # alternating): resnet50's 256->1024 14^2 10.1 vs 10.6, 1024->256 9.5 vs 10.9,
    # 512->2048 7^2 10.8 vs 10.9, 2048->512 10.5 vs 11.1, 512->128 28^2 9.7 vs 10.3,
    # regnet 440->440 7^2 1.88 vs 1.92; on 3x3 stride-2 layers with many channels it
    # lost (512->512 14^2 26.4 vs 25.2; resnet18's 256->512 12.8 vs 11.4 in processes).
    dense_l1_bytes: int = 16 * 1024
    dense_l1_bytes_1x1: int = 8 * 1024
    # Layers of at most this many input channels per group (an image's: the stems) are
    # not split into chunks however large their kernel: resnet's 3->64 7x7 s2 stem (19
    # KB of weights a block) ran in chunks of 2 and 1 channels with strips of 8 column
    # pairs, each chunk's partial sums stored and reloaded. One thread's CPU ms at N=8,
    # min of 18: 23.6 -> 21.1 (two threads: 23.7 -> 22.4).
    dense_unchunked_max_cin: int = 4
    # Items per work-group wanted for dense_gemm items of one channel vector (grouped
    # layers of 8 channels per group: 4 columns x 8 channels, a few thousand
    # multiply-adds each), several rows per group (Runtime.enqueue_rows' fill_to);
    # wider items keep one row's items per group. regnet's 3x3 layers, CPU ms, min of
    # 32: g55 7^2 0.87 vs 1.00, g26 14^2 1.20 vs 1.30, g13 28^2 1.92 vs 1.97; on 1x1
    # layers of 4 channel vectors it was within noise or slower (0.72 vs 0.64).
    dense_narrow_items: int = 64
    # Column groups per dense_gemm item when weights do not fit L1 (None = choose).
    dense_strip: int | None = None
    # Image sizes as build defines (a build per image and batch size: every row band
    # of a tiled call, every last short batch) rather than kernel arguments. Arguments
    # cost no kernel time measurably: medians within -9..+4 % of the defines' on six
    # layers (1x1, 3x3, 5x5, strided, N=1 and 8; A/B alternating, 31 rounds).
    dense_fixed_sizes: bool = False
    # 1x1 layers (stride 1, no padding) as one row of H*W pixels per plane
    # (gemm.dense_view); False: row by row.
    dense_flat_1x1: bool = True
    # Strided layers as a copy of their columns (im2col_copy), then a 1x1 dense_gemm
    # on one row of pixels per plane (gemm.copied_columns): kernels of these sizes,
    # copies at most this many times the input (taps / stride area), from this many
    # output channels per group. CPU ms per call against the strided implicit GEMM
    # (N=8, min of 24, one process alternating): resnet50's 1x1 s2 1024->2048 14^2
    # 22.2 vs 29.3, 512->1024 28^2 20.9 vs 25.2, 256->512 56^2 23.1 vs 24.3, regnet
    # 208->440 1.02 vs 1.12; but narrower layers lost or tied: regnet 32->48 112^2 3.2
    # vs 2.4, 104->208 1.31 vs 1.64 in one run and 1.06 vs 0.99 in another, resnet18
    # 64->128 2.4 vs 1.6 and 128->256 1.8 vs 1.3; convnext's 2x2 s2 layers 13.0-14.3
    # vs 11.5-12.8 (the implicit GEMM reads 2x2 windows well), and resnet's 3x3 s2 p1
    # layers 1.1-1.6x slower (their copy is 9/4 of the input).
    dense_columns_kernels: tuple[tuple[int, int], ...] = ((1, 1),)
    dense_columns_max_growth: float = 2.25
    dense_columns_min_cout: int = 256
    # Strided layers larger than 1x1 as dense_flat (the output pixels of the whole batch
    # as one list, the input padded by a copy): None = CPU devices, from
    # dense_flat_min_cin input and dense_flat_min_cout output channels per group, on
    # output maps of at most dense_flat_max_pixels pixels or with windows that do not
    # overlap (no padding, kernel <= stride); True/False force it for tests and A/B
    # runs. CPU ms per call against dense_gemm (N=8, medians of 16-24, one process
    # alternating, busy machine): on 7^2 outputs resnet's 512->512 3x3 s2 14^2 21.8 vs
    # 29.8, 256->512 11.2 vs 14.0, convnext's 384->768 2x2 s2 14^2 12.0 vs 14.8; its
    # 96->192 2x2 s2 56^2 11.7 vs 12.3-12.6, 192->384 28^2 11.2 vs 11.5; on larger
    # outputs of overlapping windows it tied or lost: 3x3 s2 256->256 28^2 20.4 vs
    # 21.0, 128->256 28^2 11.7 vs 11.4, 64->128 56^2 12.2 vs 11.0, 128->128 56^2 22.6 vs
    # 21.3, and so did the 3-channel stems (7x7 s2 36.4 vs 26.4, 4x4 s4 7.1 vs 6.3).
    # Stride-1 3x3 layers on 7^2 stay Winograd (512->512 N=8 15.7 against dense_flat's
    # 20.1 and dense_gemm's 29.4).
    dense_flat: bool | None = None
    dense_flat_min_cin: int = 32
    dense_flat_min_cout: int = 64
    dense_flat_max_pixels: int = 64
    # (COB, XB) of dense_flat for layers of at least COB channel vectors (narrower ones
    # take dense_gemm's tile): 2 x 6 against 4 x 2 (dense_gemm's) on 256->512 3x3 s2
    # 14^2, N=8, CPU ms: 10.6 vs 11.2 (3 x 4 10.8, 2 x 4 11.1, 1 x 12 13.8).
    dense_flat_tile: tuple[int, int] = (2, 6)
    # Work-groups of every channel block of a pixel chunk (the blocks along dimension 0)
    # rather than of many chunks of one block, from this many bytes of (padded) input:
    # an item's input then stays in L2 for the next block, where a block's pass over
    # the whole batch (a 56^2 map's 3-7 MB) did not: 96->192 2x2 s2 56^2 11.7 vs 22.7
    # ms, 128->128 3x3 s2 56^2 22.6 vs 28.5; on 7^2 outputs at N=8 (2 MB) the same,
    # 11.2 vs 11.3. Below it the blocks give the small launches their work-groups.
    dense_flat_inner_bytes: int = 1 << 20
    # In that order, work-groups wanted per compute unit at least: a chunk's blocks are
    # split over several work-groups where the chunks alone are fewer (dense_flat.
    # inner_local). Nine chunks of 32 blocks (resnet50's 512->512 3x3 s2 14^2 at N=8)
    # left one of two threads idle for the ninth: kernel ms, min of 30, one process
    # alternating, busy machine, blocks a work-group 32 (one chunk) against 16: that
    # layer 11.06 vs 10.01 (8: 10.00, 4: 9.94), resnet18's 256->512 3x3 s2 5.32 vs
    # 4.76 (8: 4.78), convnext's 384->768 2x2 s2 (48 blocks) 5.64 vs 5.10 (24: 5.05,
    # 12: 4.99, 8: 4.91); process CPU time within noise.
    dense_flat_inner_groups: int = 8
    # Blocks a work-group in that order, overriding the split (None: choose).
    dense_flat_inner_items: int | None = None

    # ---- pointwise GEMM (pointwise)
    # From these sizes on. Below them dense_gemm measured faster: 14x14 planes 1.27-1.39
    # ms against 1.12-1.14 (N=8 256->256 and 512->128). From 64 input channels (was
    # 128: 64->64 56^2 at N=8 ran 1.7-2.1 ms against 1.5-1.7 then): kernel ms, min of
    # 30-42, one process alternating, dense_gemm against pointwise, N=8: resnet50's
    # 64->256 56^2 5.40 vs 4.42 (CPU 11.2 vs 9.2; busier runs 5.68 vs 5.38, 5.86 vs
    # 5.59), 64->64 56^2 1.34 vs 1.33, 1.32 vs 1.15 (CPU 2.76 vs 2.47); efficientnet_b0's
    # 96->24 56^2 0.83 vs 0.65; N=1 64->256 0.65 vs 0.52, 64->64 0.16 vs 0.14.
    pointwise_min_cin: int = 64
    pointwise_min_pixels: int = 1024
    # Output channels x float8 pixel vectors per item: 6 x 2 (12 accumulators of 16 ymm
    # registers) ran W8 in 8.8-9.4 ms; 4 x 2 in 9.6-11.1, 8 x 1 in 10.3, 4 x 3 in 13.7.
    pointwise_tile: tuple[int, int] = (6, 2)
    # Items per work-group: every channel block of a pixel group (so the group's input
    # stays in L1 while each block reads it), and more pixel groups while that is under
    # 64; 16 and 256 timed within noise of 64.
    pointwise_items: int = 64
    # The plane size as a build define (a build per image size) rather than an argument:
    # medians within -3..+2 % of each other on four layers (W8 included), so arguments.
    pointwise_fixed_sizes: bool = False

    # ---- 1x1 GEMM on small maps (gemm_1x1), CPU devices
    # 1x1 layers (stride 1, no padding) on maps of at most gemm1x1_max_pixels run
    # gemm_1x1 (columns through the batch, long strips, a 3 x 4 tile) instead of
    # dense_gemm. Process CPU time, min of 30 calls, N=8, A/B in alternating processes
    # (benchmarks/cnn_checkouts_ab.py, busy machine), every 1x1 layer on 7^2 maps of
    # five networks: resnet50 53.9 -> 48.2 ms, regnet_y_400mf 21.1 -> 19.0,
    # efficientnet_b0 23.9 -> 22.1, mobilenet_v3_small 3.4 -> 3.2, shufflenet 9.5 ->
    # 9.2. On 14^2 and 28^2 maps it tied or lost (resnet50's 256->1024 14^2 9.5 vs
    # 10.7, 128->512 28^2 10.8 vs 11.3; regnet's 208->208 14^2 1.69 vs 1.66).
    gemm1x1: bool = True
    gemm1x1_max_pixels: int = 64
    # A single image's 1x1 layer (N=1) on a map of at most this many pixels runs
    # gemm_1x1 too (wider layers on 14^2-112^2, whose columns then number 196-12544).
    # N=1, wall median / process CPU min ms, 12-16 rounds alternating in one process,
    # busy machine: efficientnet_b0's 80->480 14^2 0.34/0.33 -> 0.31/0.31, 480->112
    # 0.35/0.46 -> 0.30/0.41, 112->672 0.43/0.62 -> 0.39/0.59, 672->112 0.41/0.52 ->
    # 0.35/0.50; regnet_y_400mf's 208->208 14^2 0.32/0.39 -> 0.29/0.37, 104->104 28^2
    # 0.45/0.50 -> 0.37/0.46; mobilenet_v3_small's 24->96 28^2 0.24/0.21 -> 0.19/0.18,
    # 16->16 56^2 0.19/0.17 -> 0.15/0.15; 16->96 112^2 0.86/1.29 -> 0.73/1.11, 96->24
    # 56^2 0.34/0.42 -> 0.29/0.38; shufflenet's 232->232 14^2 0.37/0.48 -> 0.30/0.42,
    # 116->116 28^2 0.47/0.56 -> 0.41/0.53; resnet50's 512->128 28^2 0.99/1.52 ->
    # 0.84/1.33, 1024->256 14^2 1.36/1.41 -> 1.14/1.36; ties: 104->208 28^2, 40->240
    # 28^2, 128->512 28^2, 256->1024 14^2, 64->256 56^2 (median 1.52 -> 0.97, CPU min
    # 1.50 -> 1.64). Batches stay as they were: at N=8 on 14^2 and 28^2 gemm_1x1 tied
    # or lost (above). Wide inputs on larger maps stay pointwise's (it is asked first).
    gemm1x1_single_pixels: int = 112 * 112
    # Larger maps up to gemm1x1_narrow_pixels where dense_gemm's blocks of 32 channels
    # pad the output channels this many times as much as gemm_1x1's blocks of 24 or
    # 16 (40 and 48 channels: 64 against 48). Process CPU ms, min of 30, N=8:
    # efficientnet_b0's 144->40 28^2 1.36 -> 1.07, 240->40 28^2 2.17 -> 1.70,
    # mobilenet_v3_small's 240->40 14^2 0.60 -> 0.47, 120->48 0.38 -> 0.28, 144->48
    # 0.41 -> 0.33, 96->40 0.35 -> 0.25 (where both pad alike the wider maps tied
    # or lost, see above). Up to 112^2 (it was 28^2): the four such layers of the cnn
    # suite, N=1, wall median / process CPU min ms, 20 rounds alternating in one
    # process (busy machine): mobilenet_v3_small's 16->72 56^2 0.44/0.37 -> 0.34/0.33,
    # efficientnet_b0's 24->144 56^2 0.65/0.56 -> 0.58/0.55, regnet_y_400mf's 32->48
    # 112^2 0.99/0.96 -> 0.80/0.79 and 48->48 56^2 0.46/0.50 -> 0.37/0.41; N=8 (8
    # rounds) CPU min 1.73 -> 1.59, 4.24 -> 4.22, 7.05 -> 6.60, 2.38 -> 2.17.
    gemm1x1_narrow_pixels: int = 112 * 112
    gemm1x1_narrow_ratio: float = 1.1
    # (COB, XB) override; None = gemm.gemm1x1_blocking's choice.
    gemm1x1_tile: tuple[int, int] | None = None
    # Bytes of packed weights and strip inputs an input-channel chunk may take.
    gemm1x1_l1_bytes: int = 24 * 1024
    # Columns per item at most (the private partial sums: STRIP x COB x XB float8).
    # One thread's CPU ms, N=8, min of 12, 24 against 56: 2048->512 7^2 10.2 vs 10.7,
    # 192->1152 7^2 2.19 vs 2.26, 232->232 7^2 0.57 vs 0.63, 440->440 7^2 1.91 vs
    # 1.85; 256->1024 14^2 10.3 vs 10.9, 112->672 14^2 3.39 vs 4.02 (the strip's
    # inputs, partial sums and weights then fit L1); N=1 7^2 within noise.
    gemm1x1_strip_cols: int = 24
    # A batch of at most this many columns runs as one strip a block (resnet50's
    # 512->2048 and 2048->512 on 7^2 at N=1 read their 4 MB of weights once, not
    # three times: 24-column strips cost them 5.1 -> 5.6 ms, min of 30).
    gemm1x1_whole_cols: int = 56
    # The 2 x 6 tile where 3 x 4 pads the output channels this much more. One thread's
    # CPU ms (N=8, min of 12): 3 x 4 against 2 x 6 on 440->440 7^2 1.89 vs 1.94,
    # 232->232 7^2 0.58 vs 0.63, 2048->512 7^2 10.6 vs 10.7, 208->208 14^2 1.79 vs
    # 2.00; 4 x 2 (dense_gemm's tile) 2.07, 0.62, 12.1, 2.05.
    gemm1x1_pad_ratio: float = 1.08
    # The channel blocks vary fastest (True) or the strips (False); None: the one
    # that streams fewer bytes (gemm.gemm1x1_blocks_fast). Strips first streamed the
    # input once per block: 512->128 28^2 (N=8) took 21 ms of one thread against 10.6.
    gemm1x1_blocks_fast: bool | None = None
    # Items wanted at least (the strips shorten for layers of few channel blocks): 8,
    # 16 and 32 within noise of each other at N=1 on six 7^2 layers.
    gemm1x1_min_items: int = 8
    # Items per work-group: 1, 4 and 16 within noise (N=8 440->440 and 232->232 7^2,
    # 240->40 28^2; N=1 440->440 and 1152->192 7^2; CPU ms, min of 18-30).
    gemm1x1_local: int = 1

    # ---- Winograd F(2x2, 3x3)
    # Override for A/B experiments and tests: None = the cost model.
    winograd: bool | None = None
    # Winograd cuts multiply-adds 2.25x (saving ~ CIN_G*COUT_G per tile and group) but
    # writes and reads 16 transformed values per tile and input or output channel (cost
    # ~ CIN_G + COUT_G). Kernel time ratios dense/Winograd measured on PoCL (in->out per
    # group): 16->16 0.87, 32->8 0.65, 8->16 0.31, 16->32 1.27, W7's 16->32 stride 2
    # 1.1, 32->32 1.33, 64->64 1.47, 256->256 1.66. It runs when
    # CIN_G*COUT_G/(CIN_G+COUT_G) reaches this (16->32: 10.7, 16->16: 8).
    wino_min_ratio: float = 10.0
    # ... and from more than wino_whole_max_cin input channels per group (on CPU devices
    # the split form, whose 16 transformed values per input channel and tile go through
    # memory and serve only COUT_G outputs each) at least this many output channels.
    # Wall ms per call, Winograd vs dense, N=1 (python benchmarks/winograd_ab.py, one
    # process alternating): densenet121's 128->32 on 28^2 0.55 vs 0.47, 14^2 0.42 vs
    # 0.27, 7^2 0.18 vs 0.11 (56^2: 1.37 vs 1.41; N=8 3.27 vs 3.22 down to 0.69 vs
    # 0.52); 80->32 28^2 0.38 vs 0.29, 72->24 0.37 vs 0.27; but 96->48 28^2 0.48 vs
    # 0.59 and 256->48 14^2 0.44 vs 0.47, and every layer of 96 or more outputs won or
    # tied as often as it lost (64 and 96 outputs: by map size, which a rule on
    # channels alone cannot see).
    wino_wide_in_min_cout: int = 48
    # Bytes of transformed input and GEMM output planes per chunk of tile rows.
    wino_chunk_bytes: int = 8 << 20
    # Chunks of equal row counts (as many as the budget needs) rather than full ones
    # and a short last one.
    wino_even_chunks: bool = True
    # (KB output channels, XV float8 vectors of 8 tiles) per GEMM work-item; None =
    # the rule in winograd._tile.
    wino_tile: tuple[int, int] | None = None
    # GEMMs and output transform in one kernel (winograd_gemm_out) for layers with few
    # input channels per group, whose 16 GEMM results per tile and output channel are
    # traffic rather than work; None = the rule in winograd.fused.
    wino_fused: bool | None = None
    wino_fused_max_cin: int = 32
    # Weights of at least this size are checked against the cache while the device runs
    # the first input transform (W6's 2.4 MB: 0.3 ms with cold caches); smaller before.
    wino_overlap_bytes: int = 1 << 20
    # V per chunk for the fused kernel, which reads it back in its own, slower walk: W7
    # ran 2 chunks of 2 MB at 1.82-1.85 ms CPU per call against 1.93-1.95 for one of 4 MB.
    wino_fused_chunk_bytes: int = 2 << 20
    # The whole layer as one winograd_fused launch (input transform into private memory,
    # GEMMs, output transform) for up to wino_whole_max_cin input channels per group, on
    # CPU devices only: 16 x CIN_G x 2 float8 of transformed input per item (16 KB at 16
    # channels, 64 KB at 64) would spill on a GPU, and one item per 16 tiles and group
    # gives W7 256 items, far too few for a GPU. Wall time against the two- or
    # three-kernel forms (ms, PoCL, 2 cores, A/B in one process): W7 0.86 vs 1.24, N1
    # 16->64 112^2 0.99 vs 1.19, N1 32->32 56^2 0.64 vs 0.70, N2 48->48 40^2 0.92 vs
    # 1.14, W5 (64->64) 7.7 vs 8.6 and 10.5 vs 12.0, N1 64->128 28^2 0.70 vs 0.80; but
    # N1 128->128 28^2 1.41 vs 1.29 (W6, 256 channels, was within 5 %). None = that
    # rule; True/False force it for tests and A/B runs.
    wino_whole: bool | None = None
    wino_whole_max_cin: int = 64
    # Items per work-group: each item is heavy (16 tiles x every output channel), and
    # 64-item groups left one of two cores idle on small layers (a 56^2 layer had one).
    wino_whole_local: int = 4
    # The batch size and heights of winograd_fused as build defines (a build per row
    # band and batch size) rather than arguments; the widths are defines either way.
    wino_whole_fixed_sizes: bool = False
    # The image sizes and the chunk's row stride PP of the split kernels (winograd_input,
    # winograd_gemm, winograd_output, winograd_gemm_out) as build defines (a build per
    # image size, batch size and chunk) rather than arguments.
    wino_split_fixed_sizes: bool = False

    # ---- FFT tiles (fft_conv)
    # Tile sides the kernel is built for: T/8 vectors per row must be a power of two,
    # and a tile pair (T*T complex float32) must fit a work-group's local memory.
    fft_tiles: tuple[int, ...] = (32, 64, 128, 256)

    # ---- FFT tiles with a work-group per tile pair (fft_local), GPU-shaped devices
    # Tile sides built (one build each, every other size a runtime argument): a T x T
    # complex float32 tile takes 8*T*T bytes of local memory, 32 KiB for T = 64, what
    # GPUs' 32-64 KiB hold; T = 128 would need 128 KiB. 16 serves small kernels and small
    # local memories.
    fft_local_tiles: tuple[int, ...] = (16, 32, 64)
    # Items per work-group wanted (the runtime shrinks it to the device's and the
    # kernel's limits): 256, a common GPU size; a T = 16 tile has only 128 butterflies
    # per stage.
    fft_local_items: int = 256

    # ---- GPU-shaped kernels (direct_local, gemm_local; fft_local above)
    # None: GPU-type devices only; True/False: every device / none (tests, A/B runs).
    gpu_kernels: bool | None = None
    # Items per work-group wanted (the runtime shrinks it to the device's and the
    # kernel's limits): 256, a common GPU size, 16 along a row (64 output columns with
    # RX = 4).
    gpu_local_items: int = 256
    gpu_local_x: int = 16
    # Output channels per work-group block: dense layers take up to 8 (8 x RX = 32
    # accumulators per item), depthwise multipliers up to 8 too (their tile is loaded
    # once).
    gpu_local_cob: int = 8
    # Taps are looped, not unrolled into one body, but the generic kernel still takes
    # the very large kernels (as dw_direct's limit).
    gpu_max_taps: int = 256
    # gemm_local (1x1 layers, stride 1, no padding, from gpu_gemm_min_cin input channels
    # per group): a TM x TN output tile per work-group, K in chunks of gpu_gemm_tk
    # through local memory, RM x RN accumulators per item. Below gpu_gemm_min_cin
    # channels direct_local runs them (one barrier pair per channel is cheap there).
    gpu_gemm_tk: int = 16
    gpu_gemm_rm: int = 4
    gpu_gemm_rn: int = 4
    gpu_gemm_min_cin: int = 16

    # the hash, computed once: remembered plans are looked up by it at every call
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        values = tuple(getattr(self, f.name) for f in fields(self) if f.compare)
        object.__setattr__(self, "_hash", hash(values))

    def __hash__(self) -> int:
        return self._hash


DEFAULT = Settings()
