/* winograd_output: output transform of Winograd F(2x2, 3x3), Y = A^T M A + bias.
 *
 * Last of the three Winograd launches (see winograd_input). Each work-item takes 8
 * consecutive tiles (one per float8 lane) of one output channel, gathers their 16
 * transform positions as float8 rows of M, transforms them to 2x2 outputs per tile and
 * adds the bias. When the 8 tiles lie in one tile row inside the image, each of the two
 * output rows is 16 consecutive columns: the even/odd columns are interleaved and stored
 * as two float8; otherwise lane by lane, dropping outputs past HO/WO.
 * A^T = [1 1 1 0; 0 1 -1 -1]: output row 0 uses rows 0-2 of M only, so it never depends
 * on the tile's 4th input row (which is zero past an odd edge).
 *
 * Layouts (row-major, contiguous):
 *   m     (G*16, KP, PP)     from winograd_gemm (KP >= COUT_G channel rows)
 *   bias  (G*COUT_G,)        zeros without bias
 *   out   (N, G*COUT_G, HO, WO)
 * Work-item (gx, k, g): tiles p = 8gx..8gx+7 (< ntiles) of the chunk starting at tile
 * row row0 (tile p is tile row q = row0 + p / TW = n*TH + ty, column tx = p % TW),
 * output channel k of group g.
 */

typedef float f8u __attribute__((ext_vector_type(8), aligned(4)));
#define ST8(p, v) (*(__global f8u *)(p) = (v))

#ifndef N
#define N 1
#endif
#ifndef G
#define G 1
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
#define PP 8
#endif
#ifndef KP
#define KP 1
#endif

#define PV (PP / 8)

__kernel void winograd_output(__global const float8 *restrict m, __global const float *restrict bias,
                              __global float *restrict out, const int row0, const int ntiles) {
    const int pv = get_global_id(0);
    const int k = get_global_id(1);
    const int g = get_global_id(2);
    const int p0 = pv * 8;
    if (p0 >= ntiles || k >= COUT_G || g >= G) return;
    __global const float8 *src = m + ((size_t)g * 16 * KP + k) * PV + pv;
    float8 s[2][4]; /* A^T M */
#pragma unroll
    for (int b = 0; b < 4; ++b) {
        const float8 m0 = src[(size_t)(0 + b) * KP * PV];
        const float8 m1 = src[(size_t)(4 + b) * KP * PV];
        const float8 m2 = src[(size_t)(8 + b) * KP * PV];
        const float8 m3 = src[(size_t)(12 + b) * KP * PV];
        s[0][b] = m0 + m1 + m2;
        s[1][b] = m1 - m2 - m3;
    }
    const float bk = bias[g * COUT_G + k];
    float8 y[2][2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        y[r][0] = s[r][0] + s[r][1] + s[r][2] + bk;
        y[r][1] = s[r][1] - s[r][2] - s[r][3] + bk;
    }
    __global float *plane = out + (size_t)g * COUT_G * (HO * WO) + (size_t)k * (HO * WO);
    const int q0 = row0 + p0 / TW;
    const int tx0 = p0 % TW;
    const int ty0 = q0 % TH;
    if (tx0 + 8 <= TW && 2 * tx0 + 16 <= WO && 2 * ty0 + 2 <= HO) {
        __global float *dst =
            plane + (size_t)(q0 / TH) * (G * COUT_G) * (HO * WO) + 2 * ty0 * WO + 2 * tx0;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const float8 e = y[r][0], o = y[r][1];
            ST8(dst + r * WO, ((float8)(e.s0, o.s0, e.s1, o.s1, e.s2, o.s2, e.s3, o.s3)));
            ST8(dst + r * WO + 8, ((float8)(e.s4, o.s4, e.s5, o.s5, e.s6, o.s6, e.s7, o.s7)));
        }
    } else {
        float l[2][2][8];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const float8 a = y[r][c];
                l[r][c][0] = a.s0; l[r][c][1] = a.s1; l[r][c][2] = a.s2; l[r][c][3] = a.s3;
                l[r][c][4] = a.s4; l[r][c][5] = a.s5; l[r][c][6] = a.s6; l[r][c][7] = a.s7;
            }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int q = row0 + (p0 + i) / TW;
            if (p0 + i < ntiles) {
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
