/* winograd_input: input transform of Winograd F(2x2, 3x3), V = B^T d B per 4x4 tile.
 *
 * First of three launches (winograd_input, winograd_gemm, winograd_output) that run a
 * 3x3 layer whose stride equals its dilation (1 and 1, or 2 and 2 ...) with 2.25x fewer
 * multiply-adds than the direct GEMM. Such a layer only reads padded rows and columns
 * at multiples of the stride: a "virtual" grid v -> padded index v*stride makes it a
 * stride-1, dilation-1 3x3 convolution, and vrow/vcol map the virtual grid straight to
 * source rows/columns (every padding mode; -1 = zero, also past the padded edge, where
 * only outputs beyond HO/WO would read). Output tile (ty, tx) covers outputs
 * 2ty..2ty+1 x 2tx..2tx+1 and reads virtual rows 2ty..2ty+3, columns 2tx..2tx+3.
 *
 * Layouts (row-major, contiguous):
 *   x     (N, G*CIN_G, H, W)
 *   vrow  (2*TH+2,) int          virtual row -> source row, -1 = zero
 *   vcol  (16*ceil(TW/8)+2,) int virtual column -> source column, -1 = zero (also past
 *                                the edge: the last item of a row reads 18 columns)
 *   v     (G, 16, CIN_G, PP)     tile p = (q - row0)*TW + tx of tile row q = n*TH + ty
 * One launch covers the rows tile rows from row0 (runtime arguments): a chunk, so the
 * transformed planes stay bounded (and cache-sized) for any image. Columns of v past the
 * chunk's tiles are left as they are: winograd_output never reads their GEMM results.
 * Work-item ((q - row0)*TXG + gx, c): tiles 8gx..8gx+7 of tile row q (one per float8
 * lane; TXG = ceil(TW/8)) of input channel c, all 16 transformed values, stored as
 * float8 runs.
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. The transform is exact in the sense
 * that an output row never depends on the 4th tile row (see winograd_output), so
 * tiles past an odd edge cost nothing but zeros.
 */

/* The batch size and the heights: the arguments n_arg, h_arg, th_arg (row bands and
 * batch sizes of a layer share the build when it runs in chunks of the same size), or
 * with FIXED_SIZES the defines N, H, TH. The widths W, TW and the chunk's row stride PP
 * stay defines: with them as arguments this kernel ran 6-45 % slower (W, TW) and
 * 10-35 % slower on small layers (PP: the 16 strided stores per item); see
 * benchmarks/opencl_size_args.py. */
#ifdef FIXED_SIZES
#ifndef N
#error "-D N=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef H
#error "-D H=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef TH
#error "-D TH=... is required with FIXED_SIZES (set by the host)"
#endif
#else
#define N n_arg
#define H h_arg
#define TH th_arg
#endif
#ifndef W
#error "-D W=... is required (set by the host)"
#endif
#ifndef TW
#error "-D TW=... is required (set by the host)"
#endif
#ifndef PP
#error "-D PP=... is required (set by the host)"
#endif
#ifndef G
#error "-D G=... is required (set by the host)"
#endif
#ifndef CIN_G
#error "-D CIN_G=... is required (set by the host)"
#endif

#define WINO_INPUT
#include "winograd_common.clh"

__kernel void winograd_input(__global const float *restrict x, __global const int *restrict vrow,
                             __global const int *restrict vcol, __global float *restrict v,
                             const int row0, const int rows, const int n_arg, const int h_arg,
                             const int th_arg) {
    /* x runs over (tile row of the chunk, group of 8 tiles): enough items for full
     * work-groups even when a row has one or two groups (tiny work-groups cost PoCL
     * far more than idle items) */
    const int tx0 = (get_global_id(0) % TXG) * TX;
    const int q = row0 + get_global_id(0) / TXG; /* tile row n*TH + ty */
    const int c = get_global_id(1);
    if (q >= row0 + rows || q >= N * TH || c >= G * CIN_G) return;
    const int n = q / TH;
    __global const float *plane = x + ((size_t)n * (G * CIN_G) + c) * (H * W);
    float8 vv[16];
    wino_input_tiles(plane, vrow, vcol, q % TH, tx0, vv, W);
    __global float *dst = v + ((size_t)(c / CIN_G) * 16 * CIN_G + (c % CIN_G)) * PP +
                          (q - row0) * TW + tx0;
    if (tx0 + TX <= TW) {
#pragma unroll
        for (int xi = 0; xi < 16; ++xi) ST8(dst + (size_t)xi * CIN_G * PP, vv[xi]);
    } else {
#pragma unroll
        for (int xi = 0; xi < 16; ++xi) {
            float l[8];
            l[0] = vv[xi].s0; l[1] = vv[xi].s1; l[2] = vv[xi].s2; l[3] = vv[xi].s3;
            l[4] = vv[xi].s4; l[5] = vv[xi].s5; l[6] = vv[xi].s6; l[7] = vv[xi].s7;
#pragma unroll
            for (int k = 0; k < TX; ++k)
                if (tx0 + k < TW) dst[(size_t)xi * CIN_G * PP + k] = l[k];
        }
    }
}
