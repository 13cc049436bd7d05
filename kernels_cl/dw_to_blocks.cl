/* dw_to_blocks: NCHW input planes -> zero-padded blocks of 8 channels, the layout
 * dw_blocks reads: every input value it needs is then one aligned float8 load (8
 * channels side by side), with no bounds checks (the padding is in the copy).
 *
 * Layouts (row-major, contiguous):
 *   x     (N, C, H, W)             input planes, as the caller gave them
 *   xb    (N, NCB, H, WP, 8)       NCB = ceil(C / 8) blocks; row r, padded column u of
 *                                  block cb holds x[n, 8*cb + l, r, u - PADL] in lane l,
 *                                  zero outside the plane (dw_blocks skips the rows
 *                                  outside: only columns are padded). Lanes past C repeat
 *                                  channel C - 1 (finite values: dw_blocks multiplies
 *                                  them by zero taps and does not store them).
 * W, WP, PADL and C are -D defines; the batch size and the height are arguments.
 * TRANSPOSE 1 (W >= 8): the row in groups of 8 columns, 8 vector loads (one per
 * plane) and an 8x8 transpose in registers each (blocks8.clh), against 8 scalar loads
 * gathered into every float8 (TRANSPOSE 0); TRANSPOSE 2 (W < 8, PADL + 8 <= WP): one
 * such group from the row's first column where the plane holds 8 more values.
 *
 * Work-item (r, z): row r of block z = n * NCB + cb, written whole (a loop with
 * constant bounds). Reads 8 input rows, one per channel plane, sequentially.
 */

#ifndef C
#error "-D C=... is required (set by the host)"
#endif
#ifndef W
#error "-D W=... is required (set by the host)"
#endif
#ifndef WP
#error "-D WP=... is required (set by the host)"
#endif
#ifndef PADL
#error "-D PADL=... is required (set by the host)"
#endif

#ifndef TRANSPOSE
#error "-D TRANSPOSE=... is required (set by the host)"
#endif
#include "blocks8.clh"

#define NCB ((C + 7) / 8)

__kernel void dw_to_blocks(__global const float *restrict x, __global float8 *restrict xb,
                           const int n, const int h) {
    const int row = get_global_id(0);
    const int z = get_global_id(1);
    if (row >= h || z >= n * NCB) return;
    __global float8 *dst = xb + ((size_t)z * h + row) * WP;
    const int nn = z / NCB;
    const int cb = z - nn * NCB;
    __global const float *src[8];
#pragma unroll
    for (int l = 0; l < 8; ++l) {
        const int c = 8 * cb + l < C ? 8 * cb + l : C - 1;
        src[l] = x + (((size_t)nn * C + c) * h + row) * W;
    }
    for (int u = 0; u < PADL; ++u) dst[u] = (float8)(0.0f);
#define LOAD8(p, o)                                                                        \
    ((float8)((p)[(o)], (p)[(o) + 1], (p)[(o) + 2], (p)[(o) + 3], (p)[(o) + 4], (p)[(o) + 5], \
              (p)[(o) + 6], (p)[(o) + 7]))
#define COPY8(u0)                                                                          \
    do {                                                                                   \
        const int o_ = (u0);                                                               \
        __global float8 *d = dst + PADL + o_;                                              \
        TRANSPOSE8(LOAD8(src[0], o_), LOAD8(src[1], o_), LOAD8(src[2], o_),                \
                   LOAD8(src[3], o_), LOAD8(src[4], o_), LOAD8(src[5], o_),                \
                   LOAD8(src[6], o_), LOAD8(src[7], o_), d[0], d[1], d[2], d[3], d[4],     \
                   d[5], d[6], d[7]);                                                      \
    } while (0)
#if TRANSPOSE == 1
    /* the last group overlaps the one before it when W is not a multiple of 8 (those
     * columns are written twice, with the same values) */
    for (int g = 0; g < (W + 7) / 8; ++g) COPY8(8 * g + 8 <= W ? 8 * g : W - 8);
#else
#if TRANSPOSE == 2
    /* rows narrower than 8: one group that reads on into the plane's next rows and
     * writes past the row into its padding columns (zeroed below), where the plane has
     * 8 values left from this row on */
    if ((h - row) * W >= 8) {
        COPY8(0);
    } else
#endif
        for (int u = 0; u < W; ++u)
            dst[PADL + u] = (float8)(src[0][u], src[1][u], src[2][u], src[3][u], src[4][u],
                                     src[5][u], src[6][u], src[7][u]);
#endif
    for (int u = PADL + W; u < WP; ++u) dst[u] = (float8)(0.0f);
}
