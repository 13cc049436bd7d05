/* winograd_gemm: the 16 (x G groups) GEMMs of Winograd F(2x2, 3x3), M = U V.
 *
 * For every transform position xi (16) and group g: M[xi] (COUT_G x P) = U[xi]
 * (COUT_G x CIN_G) times V[xi] (CIN_G x P). Each work-item keeps a register tile of
 * KB output channels x XV float8 vectors of 8 consecutive tiles, and for every input
 * channel does an outer product of KB broadcast weights with XV float8 rows of V, fully
 * unrolled so the accumulators stay in registers (6 x 2: 12 accumulators, 2 loaded
 * vectors, 1 broadcast of 16 ymm registers). Tiles run along the vector lanes, so M
 * comes out with tiles contiguous and winograd_output can store rows of outputs as
 * vectors. There are no borders: PP is a multiple of 8*XV and the columns past the
 * chunk's tiles hold whatever the scratch buffer held (never read back).
 *
 * Layouts (row-major, contiguous):
 *   u   (G*16, NBLK, CIN_G, KB)   transformed weights G g G^T, packed on the host,
 *                                 zero past COUT_G
 *   v   (G*16, CIN_G, PP)         from winograd_input
 *   m   (G*16, NBLK*KB, PP)       read by winograd_output
 * Work-item (gx, blk, z): tiles 8*XV*gx.., channels KB*blk.., z = g*16 + xi.
 * No fma()/mad()/vload8()/vstore8() builtins (see dense_gemm); v and m rows start at
 * multiples of 8 floats, so they are read and written as aligned float8.
 */

#ifndef G
#error "-D G=... is required (set by the host)"
#endif
#ifndef CIN_G
#error "-D CIN_G=... is required (set by the host)"
#endif
/* The row stride PP of v and m (a chunk's tiles rounded up to 8*XV): the argument
 * pp_arg (every chunk shares the build), or with FIXED_SIZES the define. */
#ifdef FIXED_SIZES
#ifndef PP
#error "-D PP=... is required with FIXED_SIZES (set by the host)"
#endif
#else
#define PP pp_arg
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

#define PV (PP / 8) /* float8 vectors per row of v and m */
#define WINO_GEMM
#include "winograd_common.clh"

__kernel void winograd_gemm(__global const float *restrict u, __global const float8 *restrict v,
                            __global float8 *restrict m, const int pp_arg) {
    const int pv0 = get_global_id(0) * XV;
    const int blk = get_global_id(1);
    const int z = get_global_id(2);
    if (pv0 >= PV || blk >= NBLK || z >= G * 16) return;
    __global const float *up = u + ((size_t)z * NBLK + blk) * (CIN_G * KB);
    __global const float8 *vp = v + (size_t)z * CIN_G * PV + pv0;
    float8 acc[KB][XV];
    wino_gemm_tile(up, vp, acc, PV);
    __global float8 *dst = m + ((size_t)z * (NBLK * KB) + blk * KB) * PV + pv0;
#pragma unroll
    for (int k = 0; k < KB; ++k) {
#pragma unroll
        for (int t = 0; t < XV; ++t) dst[k * PV + t] = acc[k][t];
    }
}
