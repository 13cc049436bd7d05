/* dense_gemm: register-blocked implicit GEMM for multi-channel (CNN) layers.
 *
 * The layer is a GEMM with M = output channels of a group, N = output pixels,
 * K = C_in/groups * KH * KW, the K columns gathered implicitly from the input. Each
 * work-item keeps a COB x XB tile of float8 accumulators: COB vectors of 8 consecutive
 * output channels times XB output columns of one output row, and for every tap does an
 * outer product of COB float8 weight vectors with XB broadcast input values. Fully
 * unrolled so the accumulators stay in registers (AVX2: 16 ymm registers).
 *
 * Layouts (row-major, contiguous):
 *   x     (N, G*CIN_G, H, W)
 *   wp    (G, NBLK, CIN_G, KH, KW, COB*8)   weights packed on the host, zero past COUT_G
 *   bp    (G, NBLK, COB*8)                  bias packed likewise (zeros without bias)
 *   rmap  (HP,) int   padded row -> source row, -1 = zero (every padding mode)
 *   cmap  (WP,) int   padded column -> source column, -1 = zero
 *   out   (N, G*COUT_G, HO, WO)
 * The image sizes N, H, W, HO, WO, WP are kernel arguments (one build serves every
 * image and batch size of a layer), or build defines with FIXED_SIZES.
 * Work-item (gx, gy, gz): output columns XB*gx.., output row gy, and
 * gz = (n*G + g)*NBLK + blk, the block of COB*8 output channels of group g.
 * Items whose window lies inside the image address the input directly; border items
 * go through rmap/cmap. The global size is rounded up to a fixed local size.
 * No fma()/mad()/vload8()/vstore8() builtins (PoCL leaves them as calls that spill the
 * accumulators); packed weights are 32-byte aligned, so they are read as float8 directly,
 * and `acc += a * b` is fused by the compiler.
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
/* Image sizes: the arguments n_arg..wp_arg, or with FIXED_SIZES the defines N, H, W,
 * HO, WO, WP (constants let the compiler fold the plane strides). */
#ifdef FIXED_SIZES
#ifndef N
#error "-D N=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef H
#error "-D H=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef W
#error "-D W=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef HO
#error "-D HO=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef WO
#error "-D WO=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef WP
#error "-D WP=... is required with FIXED_SIZES (set by the host)"
#endif
#else
#define N n_arg
#define H h_arg
#define W w_arg
#define HO ho_arg
#define WO wo_arg
#define WP wp_arg
#endif
#include "geometry.clh"
#ifndef PADT
#error "-D PADT=... is required (set by the host)"
#endif
#ifndef PADL
#error "-D PADL=... is required (set by the host)"
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

#define TAPS (KH * KW)
#define WSTEP (COB * 8)

__kernel void dense_gemm(__global const float *restrict x, __global const float *restrict wp,
                         __global const float *restrict bp, __global const int *restrict rmap,
                         __global const int *restrict cmap, __global float *restrict out,
                         const int n_arg, const int h_arg, const int w_arg, const int ho_arg,
                         const int wo_arg, const int wp_arg) {
    const int xs0 = get_global_id(0) * (XB * STRIP);
    const int yo = get_global_id(1);
    const int gz = get_global_id(2);
    if (xs0 >= WO || yo >= HO || gz >= N * G * NBLK) return;
    const int blk = gz % NBLK;
    const int ng = gz / NBLK; /* n*G + g */
    const int g = ng % G;
    __global const float8 *b = (__global const float8 *)bp + (gz % (G * NBLK)) * COB;
    __global const float *xg = x + (size_t)ng * CIN_G * (H * W);
    __global const float8 *wg0 =
        (__global const float8 *)wp + (size_t)(g * NBLK + blk) * (CIN_G * TAPS * COB);
    const int r0 = yo * SH - PADT;
    const bool rows_in = r0 >= 0 && r0 + (KH - 1) * DH < H;
    int roff[KH]; /* row offsets through the map, for border items */
#pragma unroll
    for (int i = 0; i < KH; ++i) {
        const int r = rmap[yo * SH + i * DH];
        roff[i] = r < 0 ? -1 : r * W;
    }
    const int left = (WO - xs0 + XB - 1) / XB;
    const int npairs = left < STRIP ? left : STRIP;
    /* Partial sums of the strip while a chunk of CI_CHUNK input channels' weights is
     * reused from L1 by every column group of the strip. */
    float8 part[STRIP][COB][XB];

    for (int ci0 = 0; ci0 < CIN_G; ci0 += CI_CHUNK) {
        const int cn = CIN_G - ci0 < CI_CHUNK ? CIN_G - ci0 : CI_CHUNK;
        for (int p = 0; p < npairs; ++p) {
            const int xo0 = xs0 + p * XB;
            float8 acc[COB][XB];
#pragma unroll
            for (int v = 0; v < COB; ++v) {
#pragma unroll
                for (int c = 0; c < XB; ++c) acc[v][c] = ci0 == 0 ? b[v] : part[p][v][c];
            }
            __global const float8 *wg = wg0 + ci0 * (TAPS * COB);
            const int c0 = xo0 * SW - PADL;
            const bool interior = rows_in && c0 >= 0 && xo0 + XB <= WO &&
                                  c0 + (XB - 1) * SW + (KW - 1) * DW < W;
            if (interior) {
                __global const float *xp = xg + ci0 * (H * W) + r0 * W + c0;
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
                                const float xv = xp[i * DH * W + j * DW + c * SW];
#pragma unroll
                                for (int v = 0; v < COB; ++v) acc[v][c] += wv[v] * xv;
                            }
                        }
                    }
                    xp += H * W;
                    wg += TAPS * COB;
                }
            } else {
                /* Border group: column indices through the padding map. */
                int cidx[KW][XB];
#pragma unroll
                for (int j = 0; j < KW; ++j) {
#pragma unroll
                    for (int c = 0; c < XB; ++c) {
                        const int pc = (xo0 + c) * SW + j * DW;
                        cidx[j][c] = cmap[pc < WP ? pc : WP - 1];
                    }
                }
                __global const float *xp = xg + ci0 * (H * W);
                for (int ci = 0; ci < cn; ++ci) {
#pragma unroll
                    for (int i = 0; i < KH; ++i) {
                        if (roff[i] < 0) continue;
                        __global const float *xr = xp + roff[i];
#pragma unroll
                        for (int j = 0; j < KW; ++j) {
                            float8 wv[COB];
#pragma unroll
                            for (int v = 0; v < COB; ++v) wv[v] = wg[(i * KW + j) * COB + v];
#pragma unroll
                            for (int c = 0; c < XB; ++c) {
                                const int m = cidx[j][c];
                                const float xv = m >= 0 ? xr[m] : 0.0f;
#pragma unroll
                                for (int v = 0; v < COB; ++v) acc[v][c] += wv[v] * xv;
                            }
                        }
                    }
                    xp += H * W;
                    wg += TAPS * COB;
                }
            }
#pragma unroll
            for (int v = 0; v < COB; ++v) {
#pragma unroll
                for (int c = 0; c < XB; ++c) part[p][v][c] = acc[v][c];
            }
        }
    }

    for (int p = 0; p < npairs; ++p) {
    const int xo0 = xs0 + p * XB;
    /* Scatter the tile to NCHW: XB contiguous columns per output channel. Items whose
     * block is full and whose columns are all inside the row store without checks. */
    const int n = ng / G;
    const int ob = blk * WSTEP; /* first channel of the block within the group */
    __global float *dst = out + (((size_t)n * G + g) * COUT_G) * (HO * WO) + yo * WO + xo0;
    const bool full = ob + WSTEP <= COUT_G && xo0 + XB <= WO;
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
                __global float *d = dst + (size_t)(ob + v * 8 + l) * (HO * WO);
#pragma unroll
                for (int c = 0; c < XB; ++c) d[c] = t[c][l];
            }
        } else {
#pragma unroll
            for (int l = 0; l < 8; ++l) {
                const int o = ob + v * 8 + l;
                if (o < COUT_G) {
                    __global float *d = dst + (size_t)o * (HO * WO);
#pragma unroll
                    for (int c = 0; c < XB; ++c)
                        if (xo0 + c < WO) d[c] = t[c][l];
                }
            }
        }
    }
    }
}
