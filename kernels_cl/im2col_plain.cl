/* im2col_plain: the columns of a convolution without padding whose windows do not
 * overlap (stride at least the kernel's extent: 1x1 with stride 2, 2x2 with stride 2,
 * patch embeddings), as the input of a 1x1 convolution. Windows that do not overlap
 * make the copy no larger than the input, and dense_gemm then runs the layer as a 1x1
 * layer over one row of HO*WO pixels per plane, every load unit-stride.
 *
 * Layouts (row-major, contiguous):
 *   x     (N, C, H, W)                  input planes, as the caller gave them
 *   xc    (N, C * KH * KW, HO, WO)      xc[n, c*KH*KW + i*KW + j, yo, xo] =
 *                                       x[n, c, yo*SH + i*DH, xo*SW + j*DW]: the
 *                                       weights (C_out, C/groups, KH, KW) read as
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

__kernel void im2col_plain(__global const float *restrict x, __global float *restrict xc,
                           const int n, const int h, const int ho) {
    const int yo = get_global_id(0);
    const int z = get_global_id(1);
    if (yo >= ho || z >= n * C) return;
    for (int i = 0; i < KH; ++i) {
        __global const float *src = x + ((size_t)z * h + yo * SH + i * DH) * W;
        for (int j = 0; j < KW; ++j) {
            __global float *dst = xc + (((size_t)z * (KH * KW) + i * KW + j) * ho + yo) * WO;
            for (int xo = 0; xo < WO; ++xo) dst[xo] = src[xo * SW + j * DW];
        }
    }
}
