/* winograd_gemm_out: the 16 GEMMs and the output transform of Winograd F(2x2, 3x3) in
 * one work-item, so M (16 values per tile and output channel, 4x the output) never
 * leaves the item: no barrier, no __local memory (PoCL serialises both badly), the
 * 16 x KB x XV float8 results of the GEMMs wait in a private array (L1) for the
 * transform.
 *
 * For each transform position xi the item runs winograd_gemm's register tile
 * (wino_gemm_tile: KB output channels x XV float8 vectors of 8 tiles). Then, per channel
 * and vector of 8 tiles, winograd_output's transform and stores (wino_output_store).
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

/* The output heights and the chunk's row stride PP: the arguments ho_arg, th_arg,
 * pp_arg (row bands, batch sizes and chunks of a layer share the build), or with
 * FIXED_SIZES the defines HO, TH, PP. The batch size is not needed (tile row q is
 * image q / TH); the widths WO and TW stay defines (they place the lanes' stores). */
#ifdef FIXED_SIZES
#ifndef HO
#error "-D HO=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef TH
#error "-D TH=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef PP
#error "-D PP=... is required with FIXED_SIZES (set by the host)"
#endif
#else
#define HO ho_arg
#define TH th_arg
#define PP pp_arg
#endif
#ifndef WO
#error "-D WO=... is required (set by the host)"
#endif
#ifndef TW
#error "-D TW=... is required (set by the host)"
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
#ifndef KB
#error "-D KB=... is required (set by the host)"
#endif
#ifndef XV
#error "-D XV=... is required (set by the host)"
#endif
#ifndef NBLK
#error "-D NBLK=... is required (set by the host)"
#endif

#define PV (PP / 8)
#define WINO_GEMM
#define WINO_OUTPUT
#include "winograd_common.clh"

__kernel void winograd_gemm_out(__global const float *restrict u,
                                __global const float8 *restrict v,
                                __global const float *restrict bias, __global float *restrict out,
                                const int row0, const int ntiles, const int ho_arg,
                                const int th_arg, const int pp_arg) {
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
        wino_gemm_tile(up, vp, acc, PV);
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
            const int p0 = (pv0 + t) * 8;
            if (p0 >= ntiles) break;
            float8 mt[16];
#pragma unroll
            for (int xi = 0; xi < 16; ++xi) mt[xi] = m[xi][k][t];
            wino_output_store(mt, bias[g * COUT_G + ch], plane, p0, row0, ntiles, TH, HO, TW, WO);
        }
    }
}
