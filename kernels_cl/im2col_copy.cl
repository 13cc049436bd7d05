/* im2col_copy: the columns of a strided convolution whose copy is not much larger than
 * its input (1x1 with stride 2, 3x3 with stride 2: 9/4 of the input), as the input of
 * a 1x1 convolution. dense_gemm then runs the layer as a 1x1 layer over one row of
 * HO*WO pixels per plane: every load unit-stride, no border path, no idle columns at
 * the end of short rows.
 *
 * Layouts (row-major, contiguous):
 *   x     (N, C, H, W)                  input planes, as the caller gave them
 *   rmap  (HP,) int                     padded row -> source row, -1 = zero (every
 *   cmap  (WP,) int                     padding mode), and likewise for columns
 *   xc    (N, C * KH * KW, HO, WO)      xc[n, c*KH*KW + i*KW + j, yo, xo] = the padded
 *                                       input at row yo*SH + i*DH, column xo*SW + j*DW:
 *                                       the weights (C_out, C/groups, KH, KW) read as
 *                                       (C_out, C/groups * KH * KW, 1, 1) match it
 * The geometry, C, W and WO are -D defines; the batch size and the heights are
 * arguments. Work-item (yo, z): output row yo of input plane z = n * C + c, for every
 * tap (KH * KW rows of WO values written).
 */

#include "geometry.clh"
#ifndef C
#error "-D C=... is required (set by the host)"
#endif
#ifndef W
#error "-D W=... is required (set by the host)"
#endif
#ifndef WO
#error "-D WO=... is required (set by the host)"
#endif

__kernel void im2col_copy(__global const float *restrict x, __global const int *restrict rmap,
                          __global const int *restrict cmap, __global float *restrict xc,
                          const int n, const int h, const int ho) {
    const int yo = get_global_id(0);
    const int z = get_global_id(1);
    if (yo >= ho || z >= n * C) return;
    for (int i = 0; i < KH; ++i) {
        const int r = rmap[yo * SH + i * DH];
        __global const float *src = x + ((size_t)z * h + (r < 0 ? 0 : r)) * W;
        for (int j = 0; j < KW; ++j) {
            __global float *dst = xc + (((size_t)z * (KH * KW) + i * KW + j) * ho + yo) * WO;
            if (r < 0) {
                for (int xo = 0; xo < WO; ++xo) dst[xo] = 0.0f;
            } else {
                for (int xo = 0; xo < WO; ++xo) {
                    const int m = cmap[xo * SW + j * DW];
                    dst[xo] = m < 0 ? 0.0f : src[m];
                }
            }
        }
    }
}
