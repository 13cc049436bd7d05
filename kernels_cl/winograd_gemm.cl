/* winograd_gemm: the 16 (x G groups) GEMMs of Winograd F(2x2, 3x3), M = U V.
 *
 * For every transform position xi (16) and group g: M[xi] (COUT_G x P) = U[xi]
 * (COUT_G x CIN_G) times V[xi] (CIN_G x P). Same register tile as dense_gemm: each
 * work-item keeps COB float8 vectors of 8 output channels x XB tiles of accumulators,
 * and for every input channel does an outer product of COB float8 weights with XB
 * broadcast values of V, fully unrolled so the accumulators stay in registers. There
 * are no borders here (winograd_input zero-fills tiles P..PP-1).
 *
 * Layouts (row-major, contiguous):
 *   u   (G*16, NBLK, CIN_G, COB*8)   transformed weights G g G^T, packed on the host,
 *                                    zero past COUT_G
 *   v   (G*16, CIN_G, PP)            from winograd_input, PP a multiple of XB
 *   m   (G*16, PP, NBLK*COB*8)       read by winograd_output
 * Work-item (gx, blk, z): tiles XB*gx.., block blk of COB*8 output channels, z = g*16 + xi.
 * No fma()/mad()/vload8()/vstore8() builtins (see dense_gemm); u and m are 32-byte
 * aligned float8 arrays.
 */

#ifndef G
#define G 1
#endif
#ifndef CIN_G
#define CIN_G 1
#endif
#ifndef PP
#define PP 1
#endif
#ifndef COB
#define COB 4
#endif
#ifndef XB
#define XB 2
#endif
#ifndef NBLK
#define NBLK 1
#endif

__kernel void winograd_gemm(__global const float8 *restrict u, __global const float *restrict v,
                            __global float8 *restrict m) {
    const int p0 = get_global_id(0) * XB;
    const int blk = get_global_id(1);
    const int z = get_global_id(2);
    if (p0 >= PP || blk >= NBLK || z >= G * 16) return;
    __global const float8 *up = u + ((size_t)z * NBLK + blk) * (CIN_G * COB);
    __global const float *vp = v + (size_t)z * CIN_G * PP + p0;
    float8 acc[COB][XB];
#pragma unroll
    for (int o = 0; o < COB; ++o) {
#pragma unroll
        for (int c = 0; c < XB; ++c) acc[o][c] = (float8)(0.0f);
    }
    for (int ci = 0; ci < CIN_G; ++ci) {
        float8 wv[COB];
#pragma unroll
        for (int o = 0; o < COB; ++o) wv[o] = up[o];
#pragma unroll
        for (int c = 0; c < XB; ++c) {
            const float xv = vp[c];
#pragma unroll
            for (int o = 0; o < COB; ++o) acc[o][c] += wv[o] * xv;
        }
        up += COB;
        vp += PP;
    }
    __global float8 *dst = m + ((size_t)z * PP + p0) * (NBLK * COB) + blk * COB;
#pragma unroll
    for (int c = 0; c < XB; ++c) {
#pragma unroll
        for (int o = 0; o < COB; ++o) dst[c * (NBLK * COB) + o] = acc[o][c];
    }
}
