/* dw_blocks: depthwise convolutions (one input and one output channel per group) on
 * input that dw_to_blocks laid out in zero-padded blocks of 8 channels: float8 across 8
 * channels, every input value an aligned float8 load with no bounds check. For layers
 * with many channels on small maps (7x7 to 32x32 outputs), where dw_channels gathered
 * each float8 from 8 planes (8 scalar loads) once per input column and kernel row.
 *
 * The widths, the geometry and the column segments are -D defines (the tap loops unroll
 * with every index known at compile time); the batch size and the heights are
 * arguments (row bands of a tiled call and other batch sizes share the build). With
 * FUSED (and dw_to_blocks' defines W, PADL, TRANSPOSE) the kernel reads the NCHW input
 * and makes the blocked rows itself, in local memory (see the FUSED kernel below).
 *
 * Layouts (row-major, contiguous):
 *   xb    (N, NCB, H, WP, 8)       from dw_to_blocks (column padding included, WP covers
 *                                  every segment's columns, those past the plane are
 *                                  zeros; rows outside the plane are skipped here)
 *   wt    (NCB, KH, KW, 8)         taps of 8 channels side by side, packed on the host,
 *                                  zeros past C
 *   bias  (NCB, 8)                 zeros past C (and without bias)
 *   out   (N, C, HO, WO)
 *
 * Work-item (seg, y, z): output columns x0 = seg * XB .. x0 + XB - 1 (columns past WO
 * computed, not stored), output row y, block z = n * NCB + cb (channels 8*cb..; lanes
 * past C not stored). A work-group takes the segments of neighbouring rows of one
 * block, whose input rows it shares in L1. A segment inside the row stores its XB x 8
 * results transposed (blocks8.clh): per channel one row of XB columns in vector
 * stores, not 8 * XB scalar stores (3x3 layers: as many stores as multiply-adds). No fma()/vload8()/vstore8() builtins (PoCL
 * leaves them as out-of-line calls).
 */

#ifndef C
#error "-D C=... is required (set by the host)"
#endif
#include "geometry.clh"
#include "blocks8.clh"
#ifndef PADT
#error "-D PADT=... is required (set by the host)"
#endif
#ifndef WP
#error "-D WP=... is required (set by the host)"
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

#define NCB ((C + 7) / 8)

#ifdef FUSED
/* FUSED: a work-group takes output rows y0.. of one block z (the host asks for all of
 * a block's rows), first copies the input rows they reach into local memory as
 * blocked rows (COPY_ROW, the layout dw_to_blocks writes), then reads them there: one
 * launch, and no blocked copy written to and read back from memory. Items past the
 * rows or blocks take part in the copy and the barrier, and store nothing. */
__kernel void dw_blocks(__global const float *restrict x, __global const float8 *restrict wt,
                        __global const float8 *restrict bias, __global float *restrict out,
                        __local float8 *restrict tile, const int n, const int h,
                        const int ho) {
    const int seg = get_global_id(0);
    const int y = get_global_id(1);
    const int z = get_global_id(2);
    const int zc = z < n * NCB ? z : n * NCB - 1;
    const int nn = zc / NCB;
    const int cb = zc - nn * NCB;
    /* the input rows this group's output rows reach */
    const int y0 = get_group_id(1) * get_local_size(1);
    const int y1 = min(y0 + (int)get_local_size(1), ho) - 1;
    const int rlo = max(y0 * SH - PADT, 0);
    const int rhi = min(y1 * SH - PADT + (KH - 1) * DH, h - 1);
    {
        const int lid = get_local_id(1) * get_local_size(0) + get_local_id(0);
        const int count = get_local_size(0) * get_local_size(1);
        for (int row = rlo + lid; row <= rhi; row += count) {
            __global const float *src[8];
#pragma unroll
            for (int l = 0; l < 8; ++l) {
                const int c = 8 * cb + l < C ? 8 * cb + l : C - 1;
                src[l] = x + (((size_t)nn * C + c) * h + row) * W;
            }
            __local float8 *dst = tile + (row - rlo) * WP;
            COPY_ROW(dst, src, (h - row) * W);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    if (seg >= NSEG || y >= ho || z >= n * NCB) return;
    const int x0 = seg * XB;
    __local const float8 *xz = tile - rlo * WP + x0 * SW;
#define XSPACE __local
#else
__kernel void dw_blocks(__global const float8 *restrict xb, __global const float8 *restrict wt,
                        __global const float8 *restrict bias, __global float *restrict out,
                        const int n, const int h, const int ho) {
    const int seg = get_global_id(0);
    const int y = get_global_id(1);
    const int z = get_global_id(2);
    if (seg >= NSEG || y >= ho || z >= n * NCB) return;
    const int nn = z / NCB;
    const int cb = z - nn * NCB;
    const int x0 = seg * XB;
    __global const float8 *xz = xb + (size_t)z * h * WP + x0 * SW;
#define XSPACE __global
#endif

    float8 acc[XB];
#pragma unroll
    for (int k = 0; k < XB; ++k) acc[k] = bias[cb];
    __global const float8 *wc = wt + cb * (KH * KW);
    /* A loop, not unrolled: a kernel body without loops was vectorised across
     * work-items by PoCL, 2.5x slower. */
    for (int i = 0; i < KH; ++i) {
        const int r = y * SH - PADT + i * DH;
        if (r < 0 || r >= h) continue;
        XSPACE const float8 *xr = xz + r * WP;
#pragma unroll
        for (int t = 0; t < SPAN; ++t) {
            const float8 v = xr[t];
            ADD_SPAN_COLUMN(acc, v, wc, i, t)
        }
    }
    const size_t obase0 = ((size_t)nn * C + 8 * cb) * (ho * WO) + y * WO + x0;
    STORE_TILE(acc, out, obase0, ho * WO, x0, C - 8 * cb);
}
