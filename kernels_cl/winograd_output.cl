/* winograd_output: output transform of Winograd F(2x2, 3x3), Y = A^T M A + bias.
 *
 * Last of the three Winograd launches (see winograd_input). Each work-item gathers the
 * 16 transform positions of one tile for 8 consecutive output channels (float8),
 * transforms them to the 2x2 outputs, adds the bias and stores them to NCHW, dropping
 * outputs past HO/WO and channels past COUT_G.
 * A^T = [1 1 1 0; 0 1 -1 -1]: output row 0 uses rows 0-2 of M only, so it never depends
 * on the tile's 4th input row (which is zero past an odd edge).
 *
 * Layouts (row-major, contiguous):
 *   m     (G*16, PP, KV*8)    from winograd_gemm, KV = NBLK*COB channel vectors
 *   bp    (G, KV*8)           bias, zeros without bias or past COUT_G
 *   out   (N, G*COUT_G, HO, WO)
 * Work-item (p, kv, g): tile p = (q - row0)*TW + tx of the chunk starting at tile row
 * row0 (q = n*TH + ty), channels 8kv.. of group g.
 */

#ifndef N
#define N 1
#endif
#ifndef G
#define G 1
#endif
#ifndef COUT_G
#define COUT_G 8
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
#define PP 1
#endif
#ifndef KV
#define KV 1
#endif

__kernel void winograd_output(__global const float8 *restrict m, __global const float8 *restrict bp,
                              __global float *restrict out, const int row0) {
    const int p = get_global_id(0);
    const int kv = get_global_id(1);
    const int g = get_global_id(2);
    const int q = row0 + p / TW; /* tile row n*TH + ty */
    if (q >= N * TH || kv >= KV || g >= G) return;
    __global const float8 *src = m + ((size_t)g * 16 * PP + p) * KV + kv;
    float8 s[2][4]; /* A^T M */
#pragma unroll
    for (int b = 0; b < 4; ++b) {
        const float8 m0 = src[(size_t)(0 + b) * PP * KV];
        const float8 m1 = src[(size_t)(4 + b) * PP * KV];
        const float8 m2 = src[(size_t)(8 + b) * PP * KV];
        const float8 m3 = src[(size_t)(12 + b) * PP * KV];
        s[0][b] = m0 + m1 + m2;
        s[1][b] = m1 - m2 - m3;
    }
    const float8 bias = bp[g * KV + kv];
    float y[2][2][8];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float8 y0 = s[r][0] + s[r][1] + s[r][2] + bias;
        const float8 y1 = s[r][1] - s[r][2] - s[r][3] + bias;
        y[r][0][0] = y0.s0; y[r][0][1] = y0.s1; y[r][0][2] = y0.s2; y[r][0][3] = y0.s3;
        y[r][0][4] = y0.s4; y[r][0][5] = y0.s5; y[r][0][6] = y0.s6; y[r][0][7] = y0.s7;
        y[r][1][0] = y1.s0; y[r][1][1] = y1.s1; y[r][1][2] = y1.s2; y[r][1][3] = y1.s3;
        y[r][1][4] = y1.s4; y[r][1][5] = y1.s5; y[r][1][6] = y1.s6; y[r][1][7] = y1.s7;
    }
    const int n = q / TH;
    const int yo = 2 * (q % TH);
    const int xo = 2 * (p % TW);
    const int o0 = kv * 8;
    __global float *dst = out + (((size_t)n * G + g) * COUT_G + o0) * (HO * WO) + yo * WO + xo;
    if (o0 + 8 <= COUT_G && yo + 2 <= HO && xo + 2 <= WO) {
#pragma unroll
        for (int l = 0; l < 8; ++l) {
            __global float *d = dst + (size_t)l * (HO * WO);
            d[0] = y[0][0][l];
            d[1] = y[0][1][l];
            d[WO] = y[1][0][l];
            d[WO + 1] = y[1][1][l];
        }
    } else {
#pragma unroll
        for (int l = 0; l < 8; ++l) {
            if (o0 + l < COUT_G) {
                __global float *d = dst + (size_t)l * (HO * WO);
#pragma unroll
                for (int r = 0; r < 2; ++r) {
#pragma unroll
                    for (int c = 0; c < 2; ++c)
                        if (yo + r < HO && xo + c < WO) d[r * WO + c] = y[r][c][l];
                }
            }
        }
    }
}
