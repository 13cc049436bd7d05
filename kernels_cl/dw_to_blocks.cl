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
    COPY_ROW(dst, src, (h - row) * W);
}
