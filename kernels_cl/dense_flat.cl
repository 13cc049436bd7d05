/* dense_flat: dense_gemm's implicit GEMM over a flat list of output pixels, the batch
 * folded in, reading an input whose padding is built in.
 *
 * dense_gemm tiles each output row on its own: on the small maps of strided layers (a
 * 7-wide row in column pairs computes 8 columns) most items touch the border and take
 * its path (a column map lookup and a select per load). Here the N*HO*WO output pixels
 * form one list; an item takes XB consecutive pixels wherever they fall (the next row,
 * the next image), each with its own input offset held in a register, so no column is
 * idle but the list's last and no load is checked. The same register tile as dense_gemm:
 * COB float8 vectors of output channels x XB pixels, an outer product per tap, with the
 * same STRIP / CI_CHUNK scheme (a strip of column groups walks the input channels in
 * chunks whose weights stay in L1).
 *
 * Layouts (row-major, contiguous):
 *   xp    (N, G*CIN_G, HP, WP)   the padded input (im2col_copy as a padding copy, or the
 *                                input itself when the layer has no padding)
 *   wp    (G, NBLK, CIN_G, KH, KW, COB*8)   weights packed as for dense_gemm
 *   bp    (G, NBLK, COB*8)                  bias packed likewise (zeros without bias)
 *   out   (N, G*COUT_G, HO, WO)
 * Output pixel q = n*HO*WO + yo*WO + xo reads xp[n, g*CIN_G + ci, yo*SH + i*DH,
 * xo*SW + j*DW]. The image sizes are kernel arguments.
 * Work-item (gx, gz): pixels XB*STRIP*gx .. of block gz = g*NBLK + blk (COB*8 output
 * channels of group g); with BLOCKS_INNER defined, (gz, gx): the host then makes a
 * work-group of every block of one pixel chunk, whose input stays in L2 from one block
 * to the next. The global size is rounded up to a fixed local size.
 * No fma()/vload8() builtins and `acc += a * b` (see dense_gemm.cl).
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
#include "geometry.clh"
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

#define TAPS (KH * KW)
#define WSTEP (COB * 8)

__kernel void dense_flat(__global const float *restrict xp, __global const float *restrict wp,
                         __global const float *restrict bp, __global float *restrict out,
                         const int n, const int hp, const int wpad, const int ho,
                         const int wo) {
#ifdef BLOCKS_INNER
    const int gz = get_global_id(0);
    const int q0 = get_global_id(1) * (XB * STRIP);
#else
    const int q0 = get_global_id(0) * (XB * STRIP);
    const int gz = get_global_id(1);
#endif
    const int plane = ho * wo;
    const int total = n * plane;
    if (q0 >= total || gz >= G * NBLK) return;
    const int g = gz / NBLK;
    const int blk = gz % NBLK;
    const int in_plane = hp * wpad;
    __global const float8 *b = (__global const float8 *)bp + gz * COB;
    __global const float8 *wg0 = (__global const float8 *)wp + (size_t)gz * (CIN_G * TAPS * COB);
    const int left = (total - q0 + XB - 1) / XB;
    const int npairs = left < STRIP ? left : STRIP;

    /* Each pixel's input offset (channel 0 of its group) and output offset (channel 0
     * of its group); pixels past the list repeat the last one and are not stored. */
    long ioff[STRIP][XB];
    long ooff[STRIP][XB];
    for (int p = 0; p < npairs; ++p) {
#pragma unroll
        for (int c = 0; c < XB; ++c) {
            const int q0c = q0 + p * XB + c;
            const int q = q0c < total ? q0c : total - 1;
            const int im = q / plane;
            const int r = q - im * plane;
            const int yo = r / wo;
            const int xo = r - yo * wo;
            ioff[p][c] = ((long)im * (G * CIN_G) + g * CIN_G) * in_plane + (yo * SH) * wpad +
                         xo * SW;
            ooff[p][c] = ((long)im * (G * COUT_G) + g * COUT_G) * plane + r;
        }
    }

    float8 part[STRIP][COB][XB];
    for (int ci0 = 0; ci0 < CIN_G; ci0 += CI_CHUNK) {
        const int cn = CIN_G - ci0 < CI_CHUNK ? CIN_G - ci0 : CI_CHUNK;
        for (int p = 0; p < npairs; ++p) {
            float8 acc[COB][XB];
#pragma unroll
            for (int v = 0; v < COB; ++v) {
#pragma unroll
                for (int c = 0; c < XB; ++c) acc[v][c] = ci0 == 0 ? b[v] : part[p][v][c];
            }
            long off[XB];
#pragma unroll
            for (int c = 0; c < XB; ++c) off[c] = ioff[p][c];
            __global const float8 *wg = wg0 + ci0 * (TAPS * COB);
            __global const float *xc = xp + (size_t)ci0 * in_plane;
            for (int ci = 0; ci < cn; ++ci) {
#pragma unroll
                for (int i = 0; i < KH; ++i) {
#pragma unroll
                    for (int j = 0; j < KW; ++j) {
                        float8 wv[COB];
#pragma unroll
                        for (int v = 0; v < COB; ++v) wv[v] = wg[(i * KW + j) * COB + v];
#pragma unroll
                        for (int c = 0; c < XB; ++c) {
                            const float xv = xc[off[c] + i * DH * wpad + j * DW];
#pragma unroll
                            for (int v = 0; v < COB; ++v) acc[v][c] += wv[v] * xv;
                        }
                    }
                }
                xc += in_plane;
                wg += TAPS * COB;
            }
#pragma unroll
            for (int v = 0; v < COB; ++v) {
#pragma unroll
                for (int c = 0; c < XB; ++c) part[p][v][c] = acc[v][c];
            }
        }
    }

    const int ob = blk * WSTEP; /* first channel of the block within the group */
    const bool full_block = ob + WSTEP <= COUT_G;
    for (int p = 0; p < npairs; ++p) {
        const bool full = full_block && q0 + (p + 1) * XB <= total;
#pragma unroll
        for (int v = 0; v < COB; ++v) {
            float t[XB][8];
#pragma unroll
            for (int c = 0; c < XB; ++c) {
                const float8 a = part[p][v][c];
                t[c][0] = a.s0; t[c][1] = a.s1; t[c][2] = a.s2; t[c][3] = a.s3;
                t[c][4] = a.s4; t[c][5] = a.s5; t[c][6] = a.s6; t[c][7] = a.s7;
            }
            if (full) {
#pragma unroll
                for (int l = 0; l < 8; ++l) {
                    const size_t o = (size_t)(ob + v * 8 + l) * plane;
#pragma unroll
                    for (int c = 0; c < XB; ++c) out[ooff[p][c] + o] = t[c][l];
                }
            } else {
#pragma unroll
                for (int l = 0; l < 8; ++l) {
                    const int o = ob + v * 8 + l;
                    if (o < COUT_G) {
#pragma unroll
                        for (int c = 0; c < XB; ++c)
                            if (q0 + p * XB + c < total)
                                out[ooff[p][c] + (size_t)o * plane] = t[c][l];
                    }
                }
            }
        }
    }
}
