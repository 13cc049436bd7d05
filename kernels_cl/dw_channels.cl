/* dw_channels: depthwise and grouped convolutions vectorised across output channels
 * (float8 = 8 output channels), for layers with many channels on small feature maps,
 * where dw_direct's float8 along the width would run mostly through its padded border
 * path with 1-item work-groups per channel plane.
 *
 * The widths are -D defines (the column loops then unroll with their bounds checks
 * resolved at compile time where the item's first column is known); the batch size and
 * the heights are kernel arguments (row bands of a tiled call and other batch sizes
 * share the build), or defines with FIXED_SIZES.
 *
 * Layouts (row-major, contiguous):
 *   x     (N, C_IN, H, W)                    input planes (NCHW, as the caller gave them)
 *   wt    (NCB, CSUM, KH, KW, 8)             taps of 8 output channels side by side,
 *                                            packed on the host, zeros past C_OUT
 *   bias  (NCB, 8)                           zeros past C_OUT (and without bias)
 *   out   (N, C_OUT, HO, WO)
 * Output channel o sums CSUM input planes starting at (o / CMULT) * CSUM: depthwise with
 * multiplier K is CSUM = 1, CMULT = K; a grouped layer is CSUM = C_in/groups,
 * CMULT = C_out/groups. Zero padding only (PADT, PADL leading; trailing padding is
 * implied by HO, WO).
 *
 * Work-item (seg, y, z): output columns x0 = seg * XB .. x0 + XB - 1 (columns past WO
 * computed, not stored), output row y, image n = z / NCB and output channels
 * 8*cb..8*cb+7, cb = z % NCB (lanes past C_OUT are computed from a clamped channel and
 * not stored). A work-group takes the segments of neighbouring rows of the same 8
 * planes, whose input rows it shares in L1 (a group across channel blocks or images
 * streamed every row from L2: 4x slower on 56x56 maps). Each input
 * value the item needs is gathered once as a float8 across its 8 channels (8 scalar
 * loads, one per channel plane) and multiplied into every output column it feeds; taps
 * are aligned float8 loads. No fma()/vload8()/vstore8() builtins (PoCL leaves them as
 * out-of-line calls).

 */

#ifndef C_IN
#error "-D C_IN=... is required (set by the host)"
#endif
#ifndef C_OUT
#error "-D C_OUT=... is required (set by the host)"
#endif
#ifndef CSUM
#error "-D CSUM=... is required (set by the host)"
#endif
#ifndef CMULT
#error "-D CMULT=... is required (set by the host)"
#endif
#include "geometry.clh"
#ifndef PADT
#error "-D PADT=... is required (set by the host)"
#endif
#ifndef PADL
#error "-D PADL=... is required (set by the host)"
#endif
/* The batch size and the input and output heights: the arguments n_arg, h_arg, ho_arg,
 * or with FIXED_SIZES the defines N, H, HO. The widths W, WO stay defines: they shape
 * the unrolled column loops (with XB and NSEG). */
#ifdef FIXED_SIZES
#ifndef N
#error "-D N=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef H
#error "-D H=... is required with FIXED_SIZES (set by the host)"
#endif
#ifndef HO
#error "-D HO=... is required with FIXED_SIZES (set by the host)"
#endif
#else
#define N n_arg
#define H h_arg
#define HO ho_arg
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
#ifndef HAS_BIAS
#error "-D HAS_BIAS=... is required (set by the host)"
#endif

#define NCB ((C_OUT + 7) / 8)

#define GATHER8(p, a)                                                                      \
    ((float8)((p)[off0 + (a)], (p)[off1 + (a)], (p)[off2 + (a)], (p)[off3 + (a)],          \
              (p)[off4 + (a)], (p)[off5 + (a)], (p)[off6 + (a)], (p)[off7 + (a)]))

#define STORE_LANE(l, s)                                                                   \
    if (8 * cb + (l) < C_OUT) out[obase + (l) * (HO * WO)] = v.s;

__kernel void dw_channels(__global const float *restrict x, __global const float8 *restrict wt,
                          __global const float8 *restrict bias, __global float *restrict out,
                          const int n_arg, const int h_arg, const int ho_arg) {
    const int seg = get_global_id(0);
    const int y = get_global_id(1);
    const int z = get_global_id(2);
    if (seg >= NSEG || y >= HO || z >= N * NCB) return;
    const int n = z / NCB;
    const int cb = z - n * NCB;
    const int x0 = seg * XB;

    /* first input plane of each lane (a lane past C_OUT reads the last channel's) */
    int off[8];
#pragma unroll
    for (int l = 0; l < 8; ++l) {
        const int o = 8 * cb + l < C_OUT ? 8 * cb + l : C_OUT - 1;
        off[l] = (n * C_IN + (o / CMULT) * CSUM) * (H * W);
    }
    const int off0 = off[0], off1 = off[1], off2 = off[2], off3 = off[3];
    const int off4 = off[4], off5 = off[5], off6 = off[6], off7 = off[7];

    float8 acc[XB];
#pragma unroll
    for (int k = 0; k < XB; ++k) {
#if HAS_BIAS
        acc[k] = bias[cb];
#else
        acc[k] = (float8)(0.0f);
#endif
    }
    __global const float8 *wb = wt + cb * (CSUM * KH * KW);
    const int u0 = x0 * SW - PADL; /* input column of the item's first tap */
    for (int c = 0; c < CSUM; ++c) {
        __global const float *xc = x + c * (H * W);
        __global const float8 *wc = wb + c * (KH * KW);
#pragma unroll
        for (int i = 0; i < KH; ++i) {
            const int r = y * SH - PADT + i * DH;
            if (r < 0 || r >= H) continue;
            __global const float *xr = xc + r * W;
#pragma unroll
            for (int t = 0; t < SPAN; ++t) {
                const int u = u0 + t;
                if (u < 0 || u >= W) continue;
                const float8 v = GATHER8(xr, u);
                ADD_SPAN_COLUMN(acc, v, wc, i, t)
            }
        }
    }
    const int obase0 = (n * C_OUT + 8 * cb) * (HO * WO) + y * WO + x0;
#pragma unroll
    for (int k = 0; k < XB; ++k) {
        if (x0 + k < WO) {
            const float8 v = acc[k];
            const int obase = obase0 + k;
            STORE_LANE(0, s0)
            STORE_LANE(1, s1)
            STORE_LANE(2, s2)
            STORE_LANE(3, s3)
            STORE_LANE(4, s4)
            STORE_LANE(5, s5)
            STORE_LANE(6, s6)
            STORE_LANE(7, s7)
        }
    }
}
