/* winograd_fused: the whole Winograd F(2x2, 3x3) of a layer with few input channels per
 * group in one launch: input transform, the 16 GEMMs and the output transform.
 *
 * For a group's XV vectors of 8 tiles (one tile row each, one tile per float8 lane) the
 * item transforms the input of all CIN_G channels once into a private array (16 *
 * CIN_G * XV float8, at most 16 KB: it stays in L1), then runs every block of KB output
 * channels over it: winograd_gemm's register tile per transform position, then
 * winograd_output's transform and stores. Nothing goes through global scratch buffers
 * and there is one launch instead of two per chunk: W7 (16 input channels per group)
 * spent 0.36 ms writing and 0.46 ms reading back 4 MB of V in winograd_input and
 * winograd_gemm_out.
 *
 * Layouts (row-major, contiguous):
 *   x     (N, G*CIN_G, H, W)
 *   vrow  (2*TH+2,) int          virtual row -> source row, -1 = zero (winograd_input)
 *   vcol  (16*ceil(TW/8)+2,) int virtual column -> source column, -1 = zero
 *   u     (G*16, NBLK, CIN_G, KB) transformed weights, zero past COUT_G
 *   bias  (G*COUT_G,)            zeros without bias
 *   out   (N, G*COUT_G, HO, WO)
 * The batch size and the heights are kernel arguments (row bands of a tiled call and
 * other batch sizes share the build), or defines with FIXED_SIZES.
 * Work-item (j, g): vectors j*XV.. of the N*TH*TXG vectors (tile row q = n*TH + ty, 8
 * tiles from tx0 = 8*(vector % TXG)) of group g.
 */

/* The batch size and the heights: the arguments n_arg, h_arg, ho_arg, th_arg, or with
 * FIXED_SIZES the defines N, H, HO, TH. The widths W, WO, TW stay defines: they shape
 * the lanes' column handling. */
#ifdef FIXED_SIZES
#ifndef N
#error "-D N=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef H
#error "-D H=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef HO
#error "-D HO=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef TH
#error "-D TH=... is required with FIXED_SIZES (set by the host)"
#endif
#else
#define N n_arg
#define H h_arg
#define HO ho_arg
#define TH th_arg
#endif
#ifndef G
#error "-D G=... is required (set by the host)"
#endif
#ifndef CIN_G
#error "-D CIN_G=... is required (set by the host)"
#endif
#ifndef COUT_G
#error "-D COUT_G=... is required (set by the host)"
#endif
#ifndef W
#error "-D W=... is required (set by the host)"
#endif
#ifndef WO
#error "-D WO=... is required (set by the host)"
#endif
#ifndef TW
#error "-D TW=... is required (set by the host)"
#endif
#ifndef KB
#error "-D KB=... is required (set by the host)"
#endif
#ifndef XV
#error "-D XV=... is required (set by the host)"
#endif
#ifndef NBLK
#error "-D NBLK=... is required (set by the host)"
#endif

#define WINO_INPUT
#define WINO_OUTPUT
#include "winograd_common.clh"

#define NVEC (N * TH * TXG) /* vectors of 8 tiles in the whole batch */

__kernel void winograd_fused(__global const float *restrict x, __global const int *restrict vrow,
                             __global const int *restrict vcol, __global const float *restrict u,
                             __global const float *restrict bias, __global float *restrict out,
                             const int n_arg, const int h_arg, const int ho_arg,
                             const int th_arg) {
    const int j0 = get_global_id(0) * XV;
    const int g = get_global_id(1);
    if (j0 >= NVEC || g >= G) return;
    float8 v[16][CIN_G][XV];
    for (int t = 0; t < XV; ++t) {
        /* a vector past the batch repeats the last one: computed, never stored */
        const int j = min(j0 + t, NVEC - 1);
        const int q = j / TXG;
        __global const float *plane = x + ((size_t)(q / TH) * (G * CIN_G) + g * CIN_G) * (H * W);
        for (int ci = 0; ci < CIN_G; ++ci) {
            float8 vv[16];
            wino_input_tiles(plane + (size_t)ci * (H * W), vrow, vcol, q % TH, (j % TXG) * TX, vv, W);
#pragma unroll
            for (int xi = 0; xi < 16; ++xi) v[xi][ci][t] = vv[xi];
        }
    }
    for (int blk = 0; blk < NBLK; ++blk) {
        float8 m[16][KB][XV];
        for (int xi = 0; xi < 16; ++xi) {
            __global const float *up = u + ((size_t)(g * 16 + xi) * NBLK + blk) * (CIN_G * KB);
            float8 acc[KB][XV];
#pragma unroll
            for (int k = 0; k < KB; ++k) {
#pragma unroll
                for (int t = 0; t < XV; ++t) acc[k][t] = (float8)(0.0f);
            }
            for (int ci = 0; ci < CIN_G; ++ci) {
#pragma unroll
                for (int k = 0; k < KB; ++k) {
                    const float wk = up[ci * KB + k];
#pragma unroll
                    for (int t = 0; t < XV; ++t) acc[k][t] += wk * v[xi][ci][t];
                }
            }
#pragma unroll
            for (int k = 0; k < KB; ++k) {
#pragma unroll
                for (int t = 0; t < XV; ++t) m[xi][k][t] = acc[k][t];
            }
        }
        for (int k = 0; k < KB; ++k) {
            const int ch = blk * KB + k;
            if (ch >= COUT_G) break;
            __global float *plane = out + ((size_t)g * COUT_G + ch) * (HO * WO);
            for (int t = 0; t < XV; ++t) {
                const int j = j0 + t;
                if (j >= NVEC) break;
                const int tx0 = (j % TXG) * TX;
                /* tile p = q*TW + tx in wino_output_store's numbering (row0 = 0); the
                 * lanes past the row's end are not stored */
                const int p0 = (j / TXG) * TW + tx0;
                float8 mt[16];
#pragma unroll
                for (int xi = 0; xi < 16; ++xi) mt[xi] = m[xi][k][t];
                wino_output_store(mt, bias[g * COUT_G + ch], plane, p0, 0, p0 + min(TX, TW - tx0), TH,
                                  HO, TW, WO);
            }
        }
    }
}
