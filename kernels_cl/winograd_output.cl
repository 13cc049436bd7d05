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
#define WINO_OUTPUT
#include "winograd_common.clh"

__kernel void winograd_output(__global const float8 *restrict m, __global const float *restrict bias,
                              __global float *restrict out, const int row0, const int ntiles) {
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
    wino_output_store(mt, bias[g * COUT_G + k], plane, p0, row0, ntiles);
}
