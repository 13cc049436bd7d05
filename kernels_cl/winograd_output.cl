/* winograd_output: output transform of Winograd F(2x2, 3x3), Y = A^T M A + bias.
 *
 * Last of the three Winograd launches (see winograd_input). Each work-item takes 8
 * consecutive tiles (one per float8 lane) of one output channel, gathers their 16
 * transform positions as float8 rows of M, transforms them to 2x2 outputs per tile and
 * adds the bias, then stores them (wino_output_store in winograd_common.clh).
 *
 * Layouts (row-major, contiguous):
 *   m     (G*16, KP, PP)     from winograd_gemm (KP >= COUT_G channel rows)
 *   bias  (G*COUT_G,)        zeros without bias
 *   out   (N, G*COUT_G, HO, WO)
 * Work-item (gx, k, g): tiles p = 8gx..8gx+7 (< ntiles) of the chunk starting at tile
 * row row0 (tile p is tile row q = row0 + p / TW = n*TH + ty, column tx = p % TW),
 * output channel k of group g.
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
#ifndef COUT_G
#error "-D COUT_G=... is required (set by the host)"
#endif
#ifndef KP
#error "-D KP=... is required (set by the host)"
#endif

#define PV (PP / 8)
#define WINO_OUTPUT
#include "winograd_common.clh"

__kernel void winograd_output(__global const float8 *restrict m, __global const float *restrict bias,
                              __global float *restrict out, const int row0, const int ntiles,
                              const int ho_arg, const int th_arg, const int pp_arg) {
    const int pv = get_global_id(0);
    const int k = get_global_id(1);
    const int g = get_global_id(2);
    const int p0 = pv * 8;
    if (p0 >= ntiles || k >= COUT_G || g >= G) return;
    __global const float8 *src = m + ((size_t)g * 16 * KP + k) * PV + pv;
    float8 mt[16];
#pragma unroll
    for (int xi = 0; xi < 16; ++xi) mt[xi] = src[(size_t)xi * KP * PV];
    __global float *plane = out + (size_t)g * COUT_G * (HO * WO) + (size_t)k * (HO * WO);
    wino_output_store(mt, bias[g * COUT_G + k], plane, p0, row0, ntiles, TH, HO, TW, WO);
}
