/* dw_groups: grouped convolutions with as many input as output channels a group, a
 * multiple of 8 (regnet's 3x3 layers: 8 a group), as block-diagonal layers: a
 * work-item's output value is a float8 across 8 of a group's output channels, the sum
 * over taps and the group's CIN_G input channels of a broadcast input value times a
 * float8 of weights (with 8 channels a group: an 8x8 weight block a tap).
 *
 * The input is read where the caller left it (NCHW planes, no copy): each input value
 * is one broadcast scalar load. Rows outside the plane are skipped; columns are
 * checked at compile time: the first and the last column segment of a row take bodies
 * built with their first column as a constant (their padding taps vanish from the
 * code), the segments between take one body with no checks (MID_CHECK 0, the host
 * checked that their columns lie inside the plane) or with checks (MID_CHECK 1).
 *
 * The geometry, the channel counts, W, WO and the column segments are -D defines (the
 * tap loops unroll with every index known at compile time); the batch size and the
 * heights are arguments.
 *
 * Layouts (row-major, contiguous):
 *   x     (N, C_IN, H, W)          input planes, as the caller gave them
 *   wt    (NB, KH, KW, CIN_G, 8)   per block of 8 output channels and tap: CIN_G float8
 *                                  (one per input channel of the group, lanes = the
 *                                  block's output channels), packed on the host
 *   bias  (NB, 8)                  zeros without bias
 *   out   (N, C_OUT, HO, WO)
 * with NB = C_OUT / 8 blocks, COUT_G / 8 of them a group.
 *
 * Work-item (seg, y, z): output columns x0 = seg * XB .. x0 + XB - 1 (columns past WO
 * computed, not stored), output row y, z = n * NB + block; a segment inside the row
 * stores its XB x 8 results transposed (blocks8.clh), one row of XB columns a channel.
 * No fma()/vload8()/vstore8() builtins (PoCL leaves them as out-of-line calls).
 */

#ifndef C_IN
#error "-D C_IN=... is required (set by the host)"
#endif
#ifndef C_OUT
#error "-D C_OUT=... is required (set by the host)"
#endif
#ifndef CIN_G
#error "-D CIN_G=... is required (set by the host)"
#endif
#ifndef COUT_G
#error "-D COUT_G=... is required (set by the host)"
#endif
#include "geometry.clh"
#include "blocks8.clh"
#ifndef PADT
#error "-D PADT=... is required (set by the host)"
#endif
#ifndef PADL
#error "-D PADL=... is required (set by the host)"
#endif
#ifndef W
#error "-D W=... is required (set by the host)"
#endif
#ifndef WO
#error "-D WO=... is required (set by the host)"
#endif
#ifndef XB
#error "-D XB=... is required (set by the host)"
#endif
#ifndef NSEG
#error "-D NSEG=... is required (set by the host)"
#endif
#ifndef MID_CHECK
#error "-D MID_CHECK=... is required (set by the host)"
#endif

/* blocks of 8 output channels: in all, and in a group */
#define NB (C_OUT / 8)
#define NBG (COUT_G / 8)

/* The taps of one input row (xr: its column 0 in the group's first plane; wr: the
 * row's KW x 8 weight vectors) for the segment whose first output column is X0: per
 * input channel (a loop) and tap column one weight vector, used by the XB outputs. The
 * channel loop is not unrolled: unrolled, the compiler kept the broadcast input values
 * that several taps share and spilled them (a 32-byte store each, as many stores as a
 * third of the multiply-adds); a loop leaves it a body small enough for the registers
 * (28^2 layers 1.6x faster, 14^2 and 7^2 1.1x). */
#define ROW_TAPS(X0, CHECK)                                                                \
    _Pragma("unroll 1") for (int l = 0; l < CIN_G; ++l) {                                  \
        _Pragma("unroll") for (int j = 0; j < KW; ++j) {                                   \
            const float8 wv = wr[j * CIN_G + l];                                           \
            _Pragma("unroll") for (int k = 0; k < XB; ++k) {                               \
                const int u = ((X0) + k) * SW - PADL + j * DW;                             \
                if (!(CHECK) || (u >= 0 && u < W)) acc[k] += xr[l * plane + u] * wv;       \
            }                                                                              \
        }                                                                                  \
    }

__kernel void dw_groups(__global const float *restrict x, __global const float8 *restrict wt,
                        __global const float8 *restrict bias, __global float *restrict out,
                        const int n, const int h, const int ho) {
    const int seg = get_global_id(0);
    const int y = get_global_id(1);
    const int z = get_global_id(2);
    if (seg >= NSEG || y >= ho || z >= n * NB) return;
    const int nn = z / NB;
    const int b = z - nn * NB;
    const int g = b / NBG;
    const int x0 = seg * XB;
    const int plane = h * W;

    float8 acc[XB];
#pragma unroll
    for (int k = 0; k < XB; ++k) acc[k] = bias[b];
    __global const float *xz = x + ((size_t)nn * C_IN + g * CIN_G) * plane;
    __global const float8 *wc = wt + b * (KH * KW * CIN_G);
    /* A loop, not unrolled: a kernel body without loops was vectorised across
     * work-items by PoCL (dw_blocks: 2.5x slower). */
    for (int i = 0; i < KH; ++i) {
        const int r = y * SH - PADT + i * DH;
        if (r < 0 || r >= h) continue;
        __global const float *xr = xz + r * W;
        __global const float8 *wr = wc + i * (KW * CIN_G);
        if (seg == 0) {
            ROW_TAPS(0, 1)
        }
#if NSEG > 1
        else if (seg == NSEG - 1) {
            ROW_TAPS((NSEG - 1) * XB, 1)
        }
#endif
#if NSEG > 2
        else {
            ROW_TAPS(x0, MID_CHECK)
        }
#endif
    }
    const size_t obase0 = ((size_t)nn * C_OUT + 8 * b) * (ho * WO) + y * WO + x0;
    STORE_TILE(acc, out, obase0, ho * WO, x0, 8);
}
