/* native_filter: an image filter on native 8-/16-bit samples, from the decoded strip to
 * the rounded output levels in one program: conversion to float, the depthwise
 * cross-correlation (one 2-D kernel for every channel), the output mapping and the
 * rounding all happen here, so the host moves 1-2 bytes per sample each way.
 *
 * Five kernels; a build compiles only what it runs (the unrolled direct kernel of a
 * 23x23 Gaussian alone took seconds to compile; each kernel more costs PoCL's cached
 * build time in every process): SEPARABLE=1 FUSED=1 builds the first, SEPARABLE=1
 * FUSED=0 the next three, SEPARABLE=0 the last:
 *   native_filter_fused   both passes of a rank-1 kernel in one launch (stride 1 along
 *                         rows), through local memory, reading like native_filter_vmap
 *   native_filter_v       vertical pass of a rank-1 kernel: native in -> float tmp
 *   native_filter_vmap    the same from the unpadded image through the padding's row
 *                         and column maps (no padded copy on the host)
 *   native_filter_h       horizontal pass of a rank-1 kernel: float tmp -> native out
 *   native_filter_direct  every tap of a 2-D kernel: native in -> native out
 * The vertical pass goes first: each converted input vector then serves up to ROWS
 * outputs (converting at every horizontal tap made that pass 2-3x slower).
 *
 * Layouts (row-major rows with a pitch in elements; channels last):
 *   x     (rows_in, x_pitch)   IN_T   the strip, already padded on all four sides:
 *                                     row r, pixel p, channel c at x[r*x_pitch + p*C + c]
 *                                     (vmap: the unpadded (H, W*C) image, and the maps)
 *   tmp   (rows_out, t_pitch)  float  vertical results: n_in = W_in * C values a row
 *   out   (rows_out, o_pitch)  OUT_T  n_out = W_out * C values a row
 *   taps  float: KH (v), KW (h) or KH * KW (direct, row-major) values. The host folds
 *         scale * out_top / in_top into the vertical (or direct) taps and passes
 *         bias_top = (bias * scale + offset [+ 0.5]) * out_top, so the accumulator plus
 *         bias_top is the mapped value already in output levels.
 * With channels last and one kernel for every channel, a row is a flat array of
 * W * C values and tap j of output value q reads value q + j * DW * C (stride 1): 8
 * consecutive outputs are 8 consecutive inputs whatever C, one vector load per tap.
 * Horizontal strides > 1 gather the 8 inputs one by one.
 *
 * Work-items (gx, gy):
 *   v, direct: values 8*gx .. 8*gx+7 of output rows gy*ROWS .. gy*ROWS+ROWS-1 (ROWS
 *              accumulator chains; an input row is loaded once for all of them)
 *   h:         values 8*XV*gx .. (XV float8 vectors, XV accumulator chains) of row gy
 * Items past the edge return at once (the host rounds global sizes up). Whole vectors
 * and the ragged end run separate inlined copies (a compile-time flag), so the
 * interior code has no per-load branch.
 *
 * Rounding: z = acc + bias_top; |z| with ABS; NaN and below 0 -> 0, above top -> top
 * (the comparisons are false for NaN); then round half to even by adding and removing
 * 2**23 (exact for 0 <= z < 2**23 without fast-math), the same rule as numpy's rint.
 * No fma()/mad()/vload8()/vstore8()/min()/clamp()/rint() builtins: PoCL (LLVM 14) leaves
 * them as out-of-line calls that spill the accumulators (see the notes on dw_direct).
 * __builtin_convertvector and the ext_vector_type pointers are clang extensions; a
 * compiler without them fails the build and the host falls back to NumPy.
 */

#ifndef IN_T
#error "-D IN_T=uchar|ushort is required (set by the host)"
#endif
#ifndef OUT_T
#error "-D OUT_T=uchar|ushort is required (set by the host)"
#endif
#ifndef C
#error "-D C=... (channels) is required (set by the host)"
#endif
#include "geometry.clh"
#ifndef ABS
#error "-D ABS=0|1 is required (set by the host)"
#endif
#ifndef ROWS
#error "-D ROWS=... is required (set by the host)"
#endif
#ifndef XV
#error "-D XV=... is required (set by the host)"
#endif
#ifndef SEPARABLE
#error "-D SEPARABLE=0|1 is required (set by the host)"
#endif
#ifndef FUSED
#error "-D FUSED=0|1 is required (set by the host)"
#endif

typedef IN_T in8 __attribute__((ext_vector_type(8), aligned(1)));
typedef OUT_T out8 __attribute__((ext_vector_type(8), aligned(1)));
typedef float f8u __attribute__((ext_vector_type(8), aligned(4)));

#define LDIN(p) __builtin_convertvector(*(__global const in8 *)(p), float8)
#define LDF(p) (*(__global const f8u *)(p))
#define ALWAYS_INLINE __attribute__((always_inline)) inline

/* Input rows an item of v / direct touches: ROWS output rows share them. */
#define TROWS ((ROWS - 1) * SH + (KH - 1) * DH + 1)
/* Flat distance between horizontal taps. */
#define TAPSTEP (DW * C)

/* Flat input index of output value q's tap 0 (the pixel advances by SW). */
ALWAYS_INLINE int src_index(int q) {
#if SW == 1
    return q;
#else
    return (q / C) * (SW * C) + q % C;
#endif
}

/* 8 inputs of output values q .. q+7 at flat offset off, one by one; values past
 * n_out repeat the last one (read, never stored). */
ALWAYS_INLINE float8 gather_in(__global const IN_T *xr, int q, int off, const int n_out) {
    float t[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int qq = q + k < n_out ? q + k : n_out - 1;
        t[k] = (float)xr[src_index(qq) + off];
    }
    return (float8)(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

ALWAYS_INLINE float8 gather_f(__global const float *tr, int q, int off, const int n_out) {
    float t[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int qq = q + k < n_out ? q + k : n_out - 1;
        t[k] = tr[src_index(qq) + off];
    }
    return (float8)(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

/* Map, clip and round ``acc``; store all 8 values (full) or those before n_out. */
ALWAYS_INLINE void store_levels(__global OUT_T *dst, float8 acc, const float bias_top,
                                const float top, int q, const int n_out, const bool full) {
    float8 z = acc + bias_top;
#if ABS
    z = z < 0.0f ? -z : z;
#endif
    z = z > 0.0f ? z : (float8)(0.0f); /* NaN -> 0 */
    z = z < top ? z : (float8)(top);
    z = (z + 8388608.0f) - 8388608.0f;
    /* through int8: float -> unsigned has no AVX2 instruction and was scalarised */
    const out8 v = __builtin_convertvector(__builtin_convertvector(z, int8), out8);
    if (full) {
        *(__global out8 *)dst = v;
    } else {
        /* at most 8: a vector that is not full only for a stride > 1 (or one of h's
         * first XV - 1) has more values after it, which are another vector's */
        const OUT_T t[8] = {v.s0, v.s1, v.s2, v.s3, v.s4, v.s5, v.s6, v.s7};
        const int m = n_out - q < 8 ? n_out - q : 8;
        for (int k = 0; k < m; ++k) dst[k] = t[k];
    }
}

#if SEPARABLE

/* Input row s of an item adds tap (s - p*SH)/DH to output row p, where it has one. */
ALWAYS_INLINE void accumulate_v(float8 *acc, const float *t, const int s, const float8 v) {
#pragma unroll
    for (int p = 0; p < ROWS; ++p) {
        const int d = s - p * SH;
        if (d >= 0 && d % DH == 0 && d / DH < KH) acc[p] += t[d / DH] * v;
    }
}

/* ROWS vertical sums of values q .. q+7 from rows y0*SH.. (full: 8 whole values); row
 * r of x is row r + r0 of the padded input. */
ALWAYS_INLINE void vertical(float8 *acc, __global const IN_T *x, const float *t, int y0,
                            int q, const int rows_in, const int x_pitch, const int n_in,
                            const int r0, const bool full) {
#pragma unroll
    for (int s = 0; s < TROWS; ++s) {
        int r = y0 * SH + s;
        r = r < rows_in ? r : rows_in - 1; /* rows of outputs past rows_out: discarded */
        __global const IN_T *xr = x + (size_t)(r - r0) * x_pitch;
        float8 v;
        if (full) {
            v = LDIN(xr + q);
        } else {
            float u[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) u[k] = (float)xr[q + k < n_in ? q + k : n_in - 1];
            v = (float8)(u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7]);
        }
        accumulate_v(acc, t, s, v);
    }
}

/* vertical()'s sums over unpadded samples: padded row r is source row rmap[r] and padded
 * pixel column p source column cmap[p] (-1: a zero of zero padding). Values q .. q+7
 * of a padded row lie at q - lo of the source row where lo <= q and q + 8 <= hi (inner:
 * one vector load); elsewhere (the padded columns, the ragged end) they are gathered
 * one by one through cmap. The sums are vertical()'s on the padded copy, bit for bit:
 * the same values, the same operations in the same order. */
ALWAYS_INLINE void vertical_mapped(float8 *acc, __global const IN_T *x,
                                   __global const int *rmap, __global const int *cmap,
                                   const float *t, int y0, int q, const int rows_in,
                                   const int x_pitch, const int n_in, const int lo,
                                   const bool inner) {
#pragma unroll
    for (int s = 0; s < TROWS; ++s) {
        int r = y0 * SH + s;
        r = r < rows_in ? r : rows_in - 1; /* rows of outputs past rows_out: discarded */
        const int src = rmap[r];
        /* a zero row reads row 0 and drops it: no branch around the loads */
        __global const IN_T *xr = x + (size_t)(src < 0 ? 0 : src) * x_pitch;
        float8 v;
        if (inner) {
            v = LDIN(xr + (q - lo));
        } else {
            float u[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const int qq = q + k < n_in ? q + k : n_in - 1;
                const int p = qq / C;
                const int cs = cmap[p];
                u[k] = cs < 0 ? 0.0f : (float)xr[cs * C + (qq - p * C)];
            }
            v = (float8)(u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7]);
        }
        v = src < 0 ? (float8)(0.0f) : v;
        accumulate_v(acc, t, s, v);
    }
}

#if !FUSED

/* Store ROWS vertical sums of values q .. q+7 (full: 8 whole values). */
ALWAYS_INLINE void store_v(__global float *tmp, const float8 *acc, int y0, int q,
                           const int rows_out, const int n_in, const int t_pitch,
                           const bool full) {
#pragma unroll
    for (int p = 0; p < ROWS; ++p) {
        if (y0 + p < rows_out) {
            __global float *dst = tmp + (size_t)(y0 + p) * t_pitch + q;
            if (full) {
                *(__global f8u *)dst = acc[p];
            } else {
                const float8 a = acc[p];
                const float u[8] = {a.s0, a.s1, a.s2, a.s3, a.s4, a.s5, a.s6, a.s7};
                for (int k = 0; k < n_in - q; ++k) dst[k] = u[k];
            }
        }
    }
}

__kernel void native_filter_v(__global const IN_T *restrict x, __global const float *restrict taps,
                              __global float *restrict tmp, const int rows_in,
                              const int rows_out, const int x_pitch, const int n_in,
                              const int t_pitch) {
    const int q = get_global_id(0) * 8;
    const int y0 = get_global_id(1) * ROWS;
    if (q >= n_in || y0 >= rows_out) return;
    const bool full = q + 8 <= n_in;
    float t[KH];
#pragma unroll
    for (int i = 0; i < KH; ++i) t[i] = taps[i];
    float8 acc[ROWS];
#pragma unroll
    for (int p = 0; p < ROWS; ++p) acc[p] = (float8)(0.0f);
    if (full)
        vertical(acc, x, t, y0, q, rows_in, x_pitch, n_in, 0, true);
    else
        vertical(acc, x, t, y0, q, rows_in, x_pitch, n_in, 0, false);
    if (full)
        store_v(tmp, acc, y0, q, rows_out, n_in, t_pitch, true);
    else
        store_v(tmp, acc, y0, q, rows_out, n_in, t_pitch, false);
}

/* native_filter_v on the unpadded image: x is (H, x_pitch) with x_pitch = W * C; rmap
 * (rows_in entries) and cmap (W_in entries) map padded rows and pixel columns to source
 * ones, -1 for a zero; [lo, hi) = [left * C, (left + W) * C) are the flat values of a
 * padded row inside the image. tmp gets what native_filter_v writes from the padded
 * copy, so native_filter_h runs unchanged. */
__kernel void native_filter_vmap(__global const IN_T *restrict x,
                                 __global const float *restrict taps,
                                 __global float *restrict tmp, __global const int *restrict rmap,
                                 __global const int *restrict cmap, const int rows_in,
                                 const int rows_out, const int x_pitch, const int n_in,
                                 const int t_pitch, const int lo, const int hi, const int top,
                                 const int h) {
    const int q = get_global_id(0) * 8;
    const int y0 = get_global_id(1) * ROWS;
    if (q >= n_in || y0 >= rows_out) return;
    const bool full = q + 8 <= n_in;
    float t[KH];
#pragma unroll
    for (int i = 0; i < KH; ++i) t[i] = taps[i];
    float8 acc[ROWS];
#pragma unroll
    for (int p = 0; p < ROWS; ++p) acc[p] = (float8)(0.0f);
    const bool inner = q >= lo && q + 8 <= hi;
    if (inner && y0 * SH >= top && y0 * SH + TROWS <= top + h) {
        /* the image's own rows and columns: native_filter_v's loads, no map (a map
         * lookup per row cost this pass 20 %) */
        vertical(acc, x, t, y0, q - lo, rows_in, x_pitch, n_in, top, true);
    } else if (inner) {
        vertical_mapped(acc, x, rmap, cmap, t, y0, q, rows_in, x_pitch, n_in, lo, true);
    } else {
        vertical_mapped(acc, x, rmap, cmap, t, y0, q, rows_in, x_pitch, n_in, lo, false);
    }
    if (full)
        store_v(tmp, acc, y0, q, rows_out, n_in, t_pitch, true);
    else
        store_v(tmp, acc, y0, q, rows_out, n_in, t_pitch, false);
}

/* Horizontal sum of output values q .. q+7 (full: stride 1 and 8 whole values). */
ALWAYS_INLINE float8 horizontal(__global const float *tr, const float *t, int q,
                                const int n_out, const bool full) {
    float8 acc = (float8)(0.0f);
#pragma unroll
    for (int j = 0; j < KW; ++j)
        acc += t[j] * (full ? LDF(tr + q + j * TAPSTEP) : gather_f(tr, q, j * TAPSTEP, n_out));
    return acc;
}

__kernel void native_filter_h(__global const float *restrict tmp, __global const float *restrict taps,
                              __global OUT_T *restrict out, const int rows_out,
                              const int t_pitch, const int n_out, const int o_pitch,
                              const float bias_top, const float top) {
    const int q0 = get_global_id(0) * (8 * XV);
    const int r = get_global_id(1);
    if (q0 >= n_out || r >= rows_out) return;
    __global const float *tr = tmp + (size_t)r * t_pitch;
    __global OUT_T *orow = out + (size_t)r * o_pitch;
    float t[KW];
#pragma unroll
    for (int j = 0; j < KW; ++j) t[j] = taps[j];
    if (SW == 1 && q0 + 8 * XV <= n_out) {
        /* XV independent chains: one chain of KW dependent multiply-adds ran at the
         * adder's latency, half the speed */
        float8 acc[XV];
#pragma unroll
        for (int v = 0; v < XV; ++v) acc[v] = (float8)(0.0f);
#pragma unroll
        for (int j = 0; j < KW; ++j) {
#pragma unroll
            for (int v = 0; v < XV; ++v) acc[v] += t[j] * LDF(tr + q0 + 8 * v + j * TAPSTEP);
        }
#pragma unroll
        for (int v = 0; v < XV; ++v)
            store_levels(orow + q0 + 8 * v, acc[v], bias_top, top, q0 + 8 * v, n_out, true);
        return;
    }
    for (int v = 0; v < XV; ++v) {
        const int q = q0 + 8 * v;
        if (q >= n_out) break;
        store_levels(orow + q, horizontal(tr, t, q, n_out, false), bias_top, top, q, n_out,
                     false);
    }
}

#else /* FUSED */

/* Both passes in one launch (stride 1 along rows only): a work-group of LX items takes
 * TILE = 8 * LX output values of ROWS output rows. Each item puts the vertical sums of
 * its 8 values (and the first HALO_V items those of the HALO values after the tile that
 * the horizontal taps reach) into local memory, then sums its 8 values horizontally
 * from there: the float intermediate never leaves the core's cache (the two-launch
 * path wrote and read 4 bytes a value of a float image between the passes: at a
 * megapixel 12 MB, beyond L2, most of the filter's time). The sums are those of
 * native_filter_vmap then native_filter_h, bit for bit (the same operations in the same
 * order). x and its maps as for native_filter_vmap (a padded strip: identity maps). */
#ifndef LX
#error "-D LX=... (the work-group size wanted) is required (set by the host)"
#endif
#define TILE (8 * LX)
#define HALO ((KW - 1) * TAPSTEP)
#define HALO_V ((HALO + 7) / 8)
#define LPITCH (TILE + 8 * HALO_V)

typedef float f8l __attribute__((ext_vector_type(8), aligned(4)));

/* vertical sums of values q .. q+7 of output rows y0 .. y0+ROWS-1 into ``dst`` rows */
ALWAYS_INLINE void vertical_to_local(__local float *dst, __global const IN_T *x,
                                     __global const int *rmap, __global const int *cmap,
                                     const float *t, const int y0, const int q,
                                     const int rows_in, const int x_pitch, const int n_in,
                                     const int lo, const int hi, const int top, const int h) {
    float8 acc[ROWS];
#pragma unroll
    for (int p = 0; p < ROWS; ++p) acc[p] = (float8)(0.0f);
    const bool inner = q >= lo && q + 8 <= hi;
    if (inner && y0 * SH >= top && y0 * SH + TROWS <= top + h)
        vertical(acc, x, t, y0, q - lo, rows_in, x_pitch, n_in, top, true);
    else if (inner)
        vertical_mapped(acc, x, rmap, cmap, t, y0, q, rows_in, x_pitch, n_in, lo, true);
    else
        vertical_mapped(acc, x, rmap, cmap, t, y0, q, rows_in, x_pitch, n_in, lo, false);
#pragma unroll
    for (int p = 0; p < ROWS; ++p) *(__local f8l *)(dst + p * LPITCH) = acc[p];
}

__kernel void native_filter_fused(__global const IN_T *restrict x,
                                  __global const float *restrict vtaps,
                                  __global const float *restrict htaps,
                                  __global OUT_T *restrict out, __global const int *restrict rmap,
                                  __global const int *restrict cmap, const int rows_in,
                                  const int rows_out, const int x_pitch, const int n_in,
                                  const int n_out, const int o_pitch, const int lo,
                                  const int hi, const int top, const int h,
                                  const float bias_top, const float top_level) {
    __local float tile[ROWS * LPITCH];
    const int lx = get_local_id(0);
    /* LX items, or fewer where the host had to launch smaller groups */
    const int span = 8 * (int)get_local_size(0);
    const int g0 = get_group_id(0) * span;
    const int y0 = get_global_id(1) * ROWS;
    const bool rows_ok = y0 < rows_out;
    {
        float t[KH];
#pragma unroll
        for (int i = 0; i < KH; ++i) t[i] = vtaps[i];
        /* the item's own 8 values, then its share of the halo's vectors */
        for (int v = 8 * lx; v < span + 8 * HALO_V; v += span) {
            const int q = g0 + v;
            if (rows_ok && q < n_in)
                vertical_to_local(tile + v, x, rmap, cmap, t, y0, q, rows_in, x_pitch, n_in,
                                  lo, hi, top, h);
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    const int q = g0 + 8 * lx;
    if (!rows_ok || q >= n_out) return;
    float t[KW];
#pragma unroll
    for (int j = 0; j < KW; ++j) t[j] = htaps[j];
    /* lanes past n_out read sums past n_in (never written): their results are dropped */
    float8 acc[ROWS];
#pragma unroll
    for (int p = 0; p < ROWS; ++p) acc[p] = (float8)(0.0f);
#pragma unroll
    for (int j = 0; j < KW; ++j) {
#pragma unroll
        for (int p = 0; p < ROWS; ++p)
            acc[p] += t[j] * *(__local const f8l *)(tile + p * LPITCH + 8 * lx + j * TAPSTEP);
    }
    const bool full = q + 8 <= n_out;
#pragma unroll
    for (int p = 0; p < ROWS; ++p) {
        if (y0 + p < rows_out) {
            __global OUT_T *dst = out + (size_t)(y0 + p) * o_pitch + q;
            if (full)
                store_levels(dst, acc[p], bias_top, top_level, q, n_out, true);
            else
                store_levels(dst, acc[p], bias_top, top_level, q, n_out, false);
        }
    }
}

#endif /* FUSED */

#else /* SEPARABLE */

/* Every tap for ROWS output rows of values q .. q+7 (full: stride 1, 8 whole values). */
ALWAYS_INLINE void taps_2d(float8 *acc, __global const IN_T *x, __global const float *taps,
                           int y0, int q, const int rows_in, const int x_pitch,
                           const int n_out, const bool full) {
    const int q_src = src_index(q);
#pragma unroll
    for (int s = 0; s < TROWS; ++s) {
        int r = y0 * SH + s;
        r = r < rows_in ? r : rows_in - 1;
        __global const IN_T *xr = x + (size_t)r * x_pitch;
#pragma unroll
        for (int j = 0; j < KW; ++j) {
            const float8 v =
                full ? LDIN(xr + q_src + j * TAPSTEP) : gather_in(xr, q, j * TAPSTEP, n_out);
#pragma unroll
            for (int p = 0; p < ROWS; ++p) {
                const int d = s - p * SH;
                if (d >= 0 && d % DH == 0 && d / DH < KH) acc[p] += taps[(d / DH) * KW + j] * v;
            }
        }
    }
}

__kernel void native_filter_direct(__global const IN_T *restrict x,
                                   __global const float *restrict taps,
                                   __global OUT_T *restrict out, const int rows_in,
                                   const int rows_out, const int x_pitch, const int n_out,
                                   const int o_pitch, const float bias_top, const float top) {
    const int q = get_global_id(0) * 8;
    const int y0 = get_global_id(1) * ROWS;
    if (q >= n_out || y0 >= rows_out) return;
    const bool full = SW == 1 && q + 8 <= n_out;
    float8 acc[ROWS];
#pragma unroll
    for (int p = 0; p < ROWS; ++p) acc[p] = (float8)(0.0f);
    if (full)
        taps_2d(acc, x, taps, y0, q, rows_in, x_pitch, n_out, true);
    else
        taps_2d(acc, x, taps, y0, q, rows_in, x_pitch, n_out, false);
#pragma unroll
    for (int p = 0; p < ROWS; ++p) {
        if (y0 + p < rows_out) {
            __global OUT_T *dst = out + (size_t)(y0 + p) * o_pitch + q;
            if (full)
                store_levels(dst, acc[p], bias_top, top, q, n_out, true);
            else
                store_levels(dst, acc[p], bias_top, top, q, n_out, false);
        }
    }
}

#endif /* SEPARABLE */
