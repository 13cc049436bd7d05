/* winograd_gemm_out: the 16 GEMMs and the output transform of Winograd F(2x2, 3x3) in
 * one work-item, so M (16 values per tile and output channel, 4x the output) never
 * leaves the item: no barrier, no __local memory (PoCL serialises both badly), the
 * 16 x KB x XV float8 results of the GEMMs wait in a private array (L1) for the
 * transform.
 *
 * For each transform position xi the item runs winograd_gemm's register tile: KB output
 * channels x XV float8 vectors of 8 tiles, an outer product of KB broadcast weights with
 * XV rows of V per input channel, fully unrolled. Then, per channel and vector of 8
 * tiles, Y = A^T M A + bias and winograd_output's stores (two float8 per output row
 * when the 8 tiles lie in one tile row inside the image, lane by lane otherwise).
 * Work-items along x are the channel blocks of one block of tiles, so consecutive items
 * reuse the same rows of V from the caches.
 *
 * Layouts (row-major, contiguous):
 *   u     (G*16, NBLK, CIN_G, KB)   transformed weights, zero past COUT_G
 *   v     (G*16, CIN_G, PP)         from winograd_input (tile p = (q - row0)*TW + tx)
 *   bias  (G*COUT_G,)               zeros without bias
 *   out   (N, G*COUT_G, HO, WO)
 * Work-item (blk, gy, g): channels KB*blk.. of group g, tiles 8*XV*gy.. (< ntiles) of
 * the chunk starting at tile row row0.
 */

typedef float f8u __attribute__((ext_vector_type(8), aligned(4)));
#define ST8(p, v) (*(__global f8u *)(p) = (v))

#ifndef N
#define N 1
#endif
#ifndef G
#define G 1
#endif
#ifndef CIN_G
#define CIN_G 1
#endif
#ifndef COUT_G
#define COUT_G 1
#endif
#ifndef HO
#define HO 1
#endif
#ifndef WO
#define WO 1
#endif
#ifndef TH
#define TH 1
#endif
#ifndef TW
#define TW 1
#endif
#ifndef PP
#define PP 16
#endif
#ifndef KB
#define KB 4
#endif
#ifndef XV
#define XV 2
#endif
#ifndef NBLK
#define NBLK 1
#endif

#define PV (PP / 8)

__kernel void winograd_gemm_out(__global const float *restrict u,
                                __global const float8 *restrict v,
                                __global const float *restrict bias, __global float *restrict out,
                                const int row0, const int ntiles) {
    const int blk = get_global_id(0);
    const int pv0 = get_global_id(1) * XV;
    const int g = get_global_id(2);
    if (blk >= NBLK || pv0 * 8 >= ntiles || g >= G) return;
    float8 m[16][KB][XV];
    for (int xi = 0; xi < 16; ++xi) {
        const int z = g * 16 + xi;
        __global const float *up = u + ((size_t)z * NBLK + blk) * (CIN_G * KB);
        __global const float8 *vp = v + (size_t)z * CIN_G * PV + pv0;
        float8 acc[KB][XV];
#pragma unroll
        for (int k = 0; k < KB; ++k) {
#pragma unroll
            for (int t = 0; t < XV; ++t) acc[k][t] = (float8)(0.0f);
        }
        for (int ci = 0; ci < CIN_G; ++ci) {
            float8 xv[XV];
#pragma unroll
            for (int t = 0; t < XV; ++t) xv[t] = vp[t];
#pragma unroll
            for (int k = 0; k < KB; ++k) {
                const float wk = up[k];
#pragma unroll
                for (int t = 0; t < XV; ++t) acc[k][t] += wk * xv[t];
            }
            up += KB;
            vp += PV;
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
        const float bk = bias[g * COUT_G + ch];
        __global float *plane = out + ((size_t)g * COUT_G + ch) * (HO * WO);
        for (int t = 0; t < XV; ++t) {
            const int p0 = (pv0 + t) * 8;
            if (p0 >= ntiles) break;
            float8 s[2][4]; /* A^T M */
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                const float8 m0 = m[0 + b][k][t];
                const float8 m1 = m[4 + b][k][t];
                const float8 m2 = m[8 + b][k][t];
                const float8 m3 = m[12 + b][k][t];
                s[0][b] = m0 + m1 + m2;
                s[1][b] = m1 - m2 - m3;
            }
            float8 y[2][2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                y[r][0] = s[r][0] + s[r][1] + s[r][2] + bk;
                y[r][1] = s[r][1] - s[r][2] - s[r][3] + bk;
            }
            const int q0 = row0 + p0 / TW;
            const int tx0 = p0 % TW;
            const int ty0 = q0 % TH;
            if (tx0 + 8 <= TW && 2 * tx0 + 16 <= WO && 2 * ty0 + 2 <= HO) {
                __global float *dst = plane + (size_t)(q0 / TH) * (G * COUT_G) * (HO * WO) +
                                      2 * ty0 * WO + 2 * tx0;
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const float8 e = y[r][0], o = y[r][1];
                    ST8(dst + r * WO,
                        ((float8)(e.s0, o.s0, e.s1, o.s1, e.s2, o.s2, e.s3, o.s3)));
                    ST8(dst + r * WO + 8,
                        ((float8)(e.s4, o.s4, e.s5, o.s5, e.s6, o.s6, e.s7, o.s7)));
                }
            } else {
                float l[2][2][8];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
#pragma unroll
                    for (int c = 0; c < 2; ++c) {
                        const float8 a = y[r][c];
                        l[r][c][0] = a.s0; l[r][c][1] = a.s1; l[r][c][2] = a.s2;
                        l[r][c][3] = a.s3; l[r][c][4] = a.s4; l[r][c][5] = a.s5;
                        l[r][c][6] = a.s6; l[r][c][7] = a.s7;
                    }
                }
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    if (p0 + i < ntiles) {
                        const int q = row0 + (p0 + i) / TW;
                        const int yo = 2 * (q % TH);
                        const int xo = 2 * ((p0 + i) % TW);
                        __global float *dst =
                            plane + (size_t)(q / TH) * (G * COUT_G) * (HO * WO) + yo * WO + xo;
#pragma unroll
                        for (int r = 0; r < 2; ++r) {
#pragma unroll
                            for (int c = 0; c < 2; ++c)
                                if (yo + r < HO && xo + c < WO) dst[r * WO + c] = l[r][c][i];
                        }
                    }
                }
            }
        }
    }
}
