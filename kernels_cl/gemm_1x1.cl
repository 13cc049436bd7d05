/* gemm_1x1: 1x1 convolutions with stride 1 and no padding on small maps, a plain GEMM
 * per group whose columns are every pixel of every image of the batch:
 * out[n, co, p] = bias[co] + sum_ci w[co, ci] * x[n, ci, p].
 *
 * As dense_gemm's 1x1 form, each work-item keeps COB float8 vectors of output channels
 * x XB columns of accumulators and broadcasts input values, but
 *   - the columns run on through the batch (N*P of them), so a 7x7 map's 49 pixels are
 *     not a row of their own whose last column group is mostly idle, and one item's
 *     columns may span two images;
 *   - an item takes a strip of up to STRIP column groups and walks the input channels
 *     in chunks of CI_CHUNK whose weights stay in L1 for the whole strip, so that a
 *     block's weights are read from L2/L3 once per strip (dense_gemm's strips of 8
 *     groups read a 14^2 map's weights 13 times per image);
 *   - the items after one another (a work-group's and the next groups') share a
 *     block's weights in L2 (the strips vary fastest), or with blocks_fast a strip's
 *     inputs (the blocks vary fastest), whichever saves more traffic.
 *
 * Layouts (row-major, contiguous):
 *   x     (N, G*CIN_G, P)
 *   wp    (G, NBLK, CIN_G, COB*8)   weights packed on the host, zero past COUT_G
 *   bp    (G, NBLK, COB*8)          bias packed likewise (zeros without bias)
 *   out   (N, G*COUT_G, P)
 * N, P, the strip's column groups (at most STRIP) and the order are kernel arguments:
 * one build serves every batch and image size.
 * Work-item (gx, gy): columns gx*strip*XB.., block gy = g*NBLK + blk; with blocks_fast
 * (gx, gy) are (block, strip).
 * No fma()/vload8() builtins (see dense_gemm.cl); packed weights are 32-byte aligned.
 */

#ifndef G
#error "-D G=... is required (set by the host)"
#endif
#ifndef CIN_G
#error "-D CIN_G=... is required (set by the host)"
#endif
#ifndef COUT_G
#error "-D COUT_G=... is required (set by the host)"
#endif
#ifndef COB
#error "-D COB=... is required (set by the host)"
#endif
#ifndef XB
#error "-D XB=... is required (set by the host)"
#endif
#ifndef NBLK
#error "-D NBLK=... is required (set by the host)"
#endif
#ifndef STRIP
#error "-D STRIP=... is required (set by the host)"
#endif
#ifndef CI_CHUNK
#error "-D CI_CHUNK=... is required (set by the host)"
#endif

#define WSTEP (COB * 8)

__kernel void gemm_1x1(__global const float *restrict x, __global const float *restrict wp,
                       __global const float *restrict bp, __global float *restrict out,
                       const int n_arg, const int p_arg, const int strip_arg,
                       const int blocks_fast) {
    const int P = p_arg;
    const int cols = n_arg * P;
    const int i0 = get_global_id(0), i1 = get_global_id(1); /* (a constant dimension) */
    const int s0 = (blocks_fast ? i1 : i0) * (XB * strip_arg);
    const int gz = blocks_fast ? i0 : i1; /* g*NBLK + blk */
    if (s0 >= cols || gz >= G * NBLK) return;
    const int g = gz / NBLK;
    const int blk = gz % NBLK;
    __global const float8 *b = (__global const float8 *)bp + gz * COB;
    __global const float8 *wg0 = (__global const float8 *)wp + (size_t)gz * (CIN_G * COB);
    const int left = (cols - s0 + XB - 1) / XB;
    const int npairs = left < strip_arg ? left : strip_arg;
    /* Partial sums of the strip while a chunk's weights are reused from L1. */
    float8 part[STRIP][COB][XB];

    for (int ci0 = 0; ci0 < CIN_G; ci0 += CI_CHUNK) {
        const int cn = CIN_G - ci0 < CI_CHUNK ? CIN_G - ci0 : CI_CHUNK;
        for (int p = 0; p < npairs; ++p) {
            /* Input offsets of the group's columns (past the end: the last column, whose
             * results are not stored), relative to the first one's. */
            int off[XB];
#pragma unroll
            for (int c = 0; c < XB; ++c) {
                int col = s0 + p * XB + c;
                col = col < cols ? col : cols - 1;
                const int n = col / P;
                off[c] = (n * G + g) * (CIN_G * P) + (col - n * P);
            }
            __global const float *xp = x + off[0] + (size_t)ci0 * P;
#pragma unroll
            for (int c = XB - 1; c >= 0; --c) off[c] -= off[0];
            float8 acc[COB][XB];
#pragma unroll
            for (int v = 0; v < COB; ++v) {
#pragma unroll
                for (int c = 0; c < XB; ++c) acc[v][c] = ci0 == 0 ? b[v] : part[p][v][c];
            }
            __global const float8 *wg = wg0 + ci0 * COB;
            for (int ci = 0; ci < cn; ++ci) {
                float8 wv[COB];
#pragma unroll
                for (int v = 0; v < COB; ++v) wv[v] = wg[v];
#pragma unroll
                for (int c = 0; c < XB; ++c) {
                    const float xv = xp[off[c]];
#pragma unroll
                    for (int v = 0; v < COB; ++v) acc[v][c] += wv[v] * xv;
                }
                xp += P;
                wg += COB;
            }
#pragma unroll
            for (int v = 0; v < COB; ++v) {
#pragma unroll
                for (int c = 0; c < XB; ++c) part[p][v][c] = acc[v][c];
            }
        }
    }

    /* Scatter to NCHW: per column, the block's channels one plane apart. */
    const int ob = blk * WSTEP; /* first channel of the block within the group */
    const bool full = ob + WSTEP <= COUT_G;
    for (int p = 0; p < npairs; ++p) {
#pragma unroll
        for (int c = 0; c < XB; ++c) {
            const int col = s0 + p * XB + c;
            if (col >= cols) break;
            const int n = col / P;
            __global float *dst = out + ((size_t)(n * G + g) * COUT_G + ob) * P + (col - n * P);
#pragma unroll
            for (int v = 0; v < COB; ++v) {
                const float8 a = part[p][v][c];
                float t[8];
                t[0] = a.s0; t[1] = a.s1; t[2] = a.s2; t[3] = a.s3;
                t[4] = a.s4; t[5] = a.s5; t[6] = a.s6; t[7] = a.s7;
                if (full) {
#pragma unroll
                    for (int l = 0; l < 8; ++l) dst[(size_t)(v * 8 + l) * P] = t[l];
                } else {
#pragma unroll
                    for (int l = 0; l < 8; ++l)
                        if (ob + v * 8 + l < COUT_G) dst[(size_t)(v * 8 + l) * P] = t[l];
                }
            }
        }
    }
}
