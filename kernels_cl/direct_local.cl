/* direct_local: direct convolution for GPU-type devices, tiled through local memory.
 *
 * Any stride, dilation, grouping (depthwise and channel multipliers included) and padding
 * mode. A work-group computes a tile of output pixels for a block of COB output channels
 * of one group of one image: for each input channel of the group it loads the input tile
 * with its halo (and the block's taps of that channel) into local memory, waits at a
 * barrier, and accumulates from local memory; depthwise layers (one input channel per
 * group) load their tile once. Scalar code, a few private accumulators (RX x COB), no
 * float8 vectors: the shape a GPU wants, unlike dw_direct / dense_gemm, which are tuned for
 * a CPU's vector registers and caches.
 *
 * Defines (they change the code): KH, KW, SH, SW, DH, DW, COB, RX, HAS_BIAS.
 * Everything else is a runtime argument, including the work-group size: the tile follows
 * get_local_size(), so a launch the driver shrinks still covers its outputs.
 *
 * Layouts (row-major, contiguous):
 *   x     (n, groups*cin_g, h, w)
 *   wp    (groups, nblk, cin_g, KH*KW, COB)   taps packed on the host, zero past cout_g
 *   bp    (groups, nblk*COB)                  bias likewise (zeros without bias)
 *   rmap  (hp,) int   padded row -> source row, -1 = zero (every padding mode)
 *   cmap  (wp,) int   padded column -> source column, -1 = zero
 *   out   (n, groups*cout_g, ho, wo)
 *   tile  local, at least TH*TW + KH*KW*COB floats for the launch's local size (lx, ly):
 *         TH = (ly-1)*SH + (KH-1)*DH + 1, TW = (lx*RX-1)*SW + (KW-1)*DW + 1
 *
 * Work-group (gx, gy, gz) of lx x ly x 1 items: output rows gy*ly .. +ly-1, output columns
 * gx*lx*RX .. +lx*RX-1, and gz = (n*groups + g)*nblk + blk. Item (ix, iy) computes row
 * gy*ly+iy, columns gx*lx*RX + ix + r*lx (r < RX: neighbouring items take neighbouring
 * columns, so stores coalesce and local reads hit distinct banks), for the COB channels
 * blk*COB.. of group g. Items past the output's edge load and wait like the others (the
 * barriers need every item) and store nothing; whole work-groups past the last plane
 * return at once (the local size along z is 1).
 */

#include "geometry.clh"
#ifndef COB
#error "-D COB=... is required (set by the host)"
#endif
#ifndef RX
#error "-D RX=... is required (set by the host)"
#endif
#ifndef HAS_BIAS
#error "-D HAS_BIAS=... is required (set by the host)"
#endif

#define TAPS (KH * KW)

__kernel void direct_local(__global const float *restrict x, __global const float *restrict wp,
                           __global const float *restrict bp, __global const int *restrict rmap,
                           __global const int *restrict cmap, __global float *restrict out,
                           __local float *tile, const int n_img, const int h, const int w,
                           const int ho, const int wo, const int hp, const int wpad,
                           const int cin_g, const int cout_g, const int groups,
                           const int nblk) {
    const int lx = get_local_size(0);
    const int ly = get_local_size(1);
    const int ix = get_local_id(0);
    const int iy = get_local_id(1);
    const int lid = iy * lx + ix;
    const int nl = lx * ly;
    const int z = get_global_id(2);
    if (z >= n_img * groups * nblk) return; /* the whole work-group: local size z is 1 */
    const int blk = z % nblk;
    const int ng = z / nblk; /* n*groups + g */
    const int g = ng % groups;
    const int n = ng / groups;

    const int th = (ly - 1) * SH + (KH - 1) * DH + 1;
    const int tw = (lx * RX - 1) * SW + (KW - 1) * DW + 1;
    __local float *wl = tile + th * tw;
    const int oy0 = get_group_id(1) * ly;
    const int ox0 = get_group_id(0) * lx * RX;
    const int pr0 = oy0 * SH; /* padded row and column of the tile's corner */
    const int pc0 = ox0 * SW;

    float acc[RX][COB];
#pragma unroll
    for (int r = 0; r < RX; ++r)
#pragma unroll
        for (int k = 0; k < COB; ++k) acc[r][k] = 0.0f;

    __global const float *wsrc = wp + (size_t)(g * nblk + blk) * cin_g * (TAPS * COB);
    for (int c = 0; c < cin_g; ++c) {
        __global const float *xc = x + ((size_t)ng * cin_g + c) * h * w;
        for (int i = lid; i < th * tw; i += nl) {
            const int tr = i / tw;
            const int pr = pr0 + tr;
            const int pc = pc0 + (i - tr * tw);
            float v = 0.0f;
            if (pr < hp && pc < wpad) {
                const int sr = rmap[pr];
                const int sc = cmap[pc];
                if (sr >= 0 && sc >= 0) v = xc[sr * w + sc];
            }
            tile[i] = v;
        }
        __global const float *wc = wsrc + (size_t)c * (TAPS * COB);
        for (int i = lid; i < TAPS * COB; i += nl) wl[i] = wc[i];
        barrier(CLK_LOCAL_MEM_FENCE);

        for (int a = 0; a < KH; ++a) {
            __local const float *trow = tile + (iy * SH + a * DH) * tw + ix * SW;
            for (int b = 0; b < KW; ++b) {
                __local const float *wt = wl + (a * KW + b) * COB;
                float wv[COB];
#pragma unroll
                for (int k = 0; k < COB; ++k) wv[k] = wt[k];
#pragma unroll
                for (int r = 0; r < RX; ++r) {
                    const float v = trow[r * lx * SW + b * DW];
#pragma unroll
                    for (int k = 0; k < COB; ++k) acc[r][k] += v * wv[k];
                }
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* the next channel overwrites the tile */
    }

    const int oy = oy0 + iy;
    if (oy >= ho) return;
    const int cout = groups * cout_g;
#pragma unroll
    for (int k = 0; k < COB; ++k) {
        const int co = blk * COB + k;
        if (co < cout_g) {
#if HAS_BIAS
            const float bias = bp[g * nblk * COB + co];
#else
            const float bias = 0.0f;
#endif
            __global float *dst = out + (((size_t)n * cout + g * cout_g + co) * ho + oy) * wo;
#pragma unroll
            for (int r = 0; r < RX; ++r) {
                const int ox = ox0 + ix + r * lx;
                if (ox < wo) dst[ox] = acc[r][k] + bias;
            }
        }
    }
}
