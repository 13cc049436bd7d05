/* dw_direct: direct convolution vectorised along the output width (float8), for
 * depthwise layers and image filters, and (with KW = 1 or KH = 1) the two passes of a
 * separable convolution.
 *
 * Geometry (kernel size, stride, dilation, leading padding, channel layout, ROWS) comes
 * as -D defines; image sizes are runtime arguments (n images, h x w input, ho x wo output,
 * hp x wp padded input), so one build serves every image size with the same filter
 * (unless FIXED_SIZES, see SIZE below).
 *
 * Layouts (row-major, contiguous):
 *   x     (n, C_IN, h, w)              input planes
 *   wt    (C_OUT, CSUM, KH, KW)        scalar taps per output plane
 *   bias  (C_OUT,)                     read only when HAS_BIAS
 *   rmap  (hp,) int                    padded row -> source row, -1 = zero row
 *   cmap  (wp,) int                    padded column -> source column, -1 = zero
 *   out   (n, C_OUT, ho, wo)
 * Output plane o of image n sums CSUM input planes starting at (o / CMULT) * CSUM:
 * depthwise with multiplier K is CSUM = 1, CMULT = K; a grouped layer is
 * CSUM = C_in/groups, CMULT = C_out/groups.
 *
 * Work-item (gx, gy, gz): 8 consecutive output columns 8*gx.., output rows
 * gy*ROWS .. gy*ROWS+ROWS-1 (ROWS independent accumulator chains, input rows loaded once
 * for all of them), plane gz = n*C_OUT + o. The global size is rounded up to the local
 * size, so items past the edge return at once.
 * Interior items address rows and float8 column vectors directly; items touching a
 * border go through rmap / cmap, which apply every padding mode by index arithmetic.
 * No fma()/mad()/vload8()/vstore8() builtins: PoCL (LLVM 14) leaves them as out-of-line
 * calls, which spill the accumulators (3-4x slower); `acc += a * b` through an
 * unaligned float8 pointer type compiles to vfmadd + vmovups.
 */

/* float8 with 4-byte alignment: unaligned vector loads/stores without vload8/vstore8. */
typedef float f8u __attribute__((ext_vector_type(8), aligned(4)));
#define LD8(p) (*(__global const f8u *)(p))
#define ST8(p, v) (*(__global f8u *)(p) = (v))

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
#ifndef PADL
#error "-D PADL=... is required (set by the host)"
#endif
#ifndef PADT
#error "-D PADT=... is required (set by the host)"
#endif
#ifndef HAS_BIAS
#error "-D HAS_BIAS=... is required (set by the host)"
#endif
#ifndef ROWS
#error "-D ROWS=... is required (set by the host)"
#endif

/* Image sizes: the arguments, or with FIXED_SIZES the defines N, H, W, HO, WO, HP, WP
 * (small planes such as CNN feature maps: constants made them ~10% faster, and their
 * sizes repeat, so one build per size costs little). */
#ifdef FIXED_SIZES
#define SIZE(arg, constant) (constant)
#else
#define SIZE(arg, constant) (arg)
#endif

/* Offset of the last element an interior float8 load touches, past its first. */
#if SW == 1
#define LAST_OFF 7
#define LOADV(p) LD8(p)
#elif SW == 2
#define LAST_OFF 15
#define LOADV(p) ((float8)(LD8(p).even, LD8((p) + 8).even))
#else
#define LAST_OFF (7 * SW)
#define LOADV(p)                                                                   \
    ((float8)((p)[0], (p)[SW], (p)[2 * SW], (p)[3 * SW], (p)[4 * SW], (p)[5 * SW], \
              (p)[6 * SW], (p)[7 * SW]))
#endif

/* Input rows a work-item touches: ROWS output rows share them (each loaded once). */
#define TROWS ((ROWS - 1) * SH + (KH - 1) * DH + 1)

inline float8 gather8(__global const float *xr, __global const int *cmap, int pc0,
                      const int wp) {
    float t[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int pc = pc0 + k * SW;
        const int m = cmap[pc < wp ? pc : wp - 1];
        t[k] = m >= 0 ? xr[m] : 0.0f;
    }
    return (float8)(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

/* Add the taps of one summed input plane to the ROWS accumulators. Input row t (of
 * TROWS) is loaded once per horizontal tap and feeds every output row q it belongs to;
 * the conditions on t, q are compile-time constants after unrolling. rows_direct and
 * cols_direct select plain addressing (interior) or the padding maps (border); loops run
 * tap-major so that one broadcast weight serves all ROWS rows. (Pairing the symmetric
 * taps of Gaussian/box kernels was measured: no gain.) */
#define LOADC(p, j) \
    (cols_direct ? LOADV((p) + cs0 + (j) * DW) : gather8((p), cmap, pc0 + (j) * DW, wp))

__attribute__((always_inline)) inline void accumulate(
    float8 *acc, __global const float *xc, __global const float *wc,
    __global const int *rmap, __global const int *cmap, const int row0, const int prow0,
    const int cs0, const int pc0, const int w, const int hp, const int wp,
    const bool rows_direct, const bool cols_direct) {
    __global const float *rp[TROWS];
    bool ok[TROWS];
#pragma unroll
    for (int t = 0; t < TROWS; ++t) {
        int r = row0 + t;
        ok[t] = true;
        if (!rows_direct) {
            const int pr = prow0 + t;
            r = rmap[pr < hp ? pr : hp - 1];
            ok[t] = r >= 0;
            r = r < 0 ? 0 : r; /* a legal row; its value is discarded */
        }
        rp[t] = xc + r * w;
    }
#pragma unroll
    for (int j = 0; j < KW; ++j) {
#pragma unroll
        for (int t = 0; t < TROWS; ++t) {
            if (!ok[t]) continue;
            const float8 v = LOADC(rp[t], j);
#pragma unroll
            for (int q = 0; q < ROWS; ++q) {
                const int d = t - q * SH;
                if (d >= 0 && d % DH == 0 && d / DH < KH) acc[q] += v * wc[(d / DH) * KW + j];
            }
        }
    }
}

__kernel void dw_direct(__global const float *restrict x, __global const float *restrict wt,
                        __global const float *restrict bias, __global const int *restrict rmap,
                        __global const int *restrict cmap, __global float *restrict out,
                        const int n_arg, const int h_arg, const int w_arg, const int ho_arg,
                        const int wo_arg, const int hp_arg, const int wp_arg) {
    const int n_img = SIZE(n_arg, N);
    const int h = SIZE(h_arg, H);
    const int w = SIZE(w_arg, W);
    const int ho = SIZE(ho_arg, HO);
    const int wo = SIZE(wo_arg, WO);
    const int hp = SIZE(hp_arg, HP);
    const int wp = SIZE(wp_arg, WP);
    const int xo0 = get_global_id(0) * 8;
    const int yo0 = get_global_id(1) * ROWS;
    const int plane = get_global_id(2);
    if (xo0 >= wo || yo0 >= ho || plane >= n_img * C_OUT) return;
    const int n = plane / C_OUT;
    const int o = plane - n * C_OUT;
    const int in0 = n * C_IN + (o / CMULT) * CSUM;
    const int pc0 = xo0 * SW; /* padded column of lane 0, tap 0 */
    const int cs0 = pc0 - PADL;
    const int prow0 = yo0 * SH; /* padded row of output row yo0, tap 0 */
    const int row0 = prow0 - PADT;
    const bool cols_direct = cs0 >= 0 && xo0 + 8 <= wo && cs0 + (KW - 1) * DW + LAST_OFF < w;
    const bool rows_direct = row0 >= 0 && yo0 + ROWS <= ho && row0 + TROWS <= h;
    __global const float *wt_o = wt + o * (CSUM * KH * KW);

    float8 acc[ROWS];
#pragma unroll
    for (int q = 0; q < ROWS; ++q) {
#if HAS_BIAS
        acc[q] = (float8)(bias[o]);
#else
        acc[q] = (float8)(0.0f);
#endif
    }
    for (int c = 0; c < CSUM; ++c) {
        __global const float *xc = x + (size_t)(in0 + c) * h * w;
        __global const float *wc = wt_o + c * (KH * KW);
        if (rows_direct && cols_direct)
            accumulate(acc, xc, wc, rmap, cmap, row0, prow0, cs0, pc0, w, hp, wp, true, true);
        else if (cols_direct)
            accumulate(acc, xc, wc, rmap, cmap, row0, prow0, cs0, pc0, w, hp, wp, false, true);
        else
            accumulate(acc, xc, wc, rmap, cmap, row0, prow0, cs0, pc0, w, hp, wp, false, false);
    }
#pragma unroll
    for (int q = 0; q < ROWS; ++q) {
        if (yo0 + q < ho) {
            __global float *dst = out + ((size_t)plane * ho + yo0 + q) * wo + xo0;
            if (xo0 + 8 <= wo) {
                ST8(dst, acc[q]);
            } else {
                const float8 a = acc[q];
                const float t[8] = {a.s0, a.s1, a.s2, a.s3, a.s4, a.s5, a.s6, a.s7};
                for (int k = 0; k < wo - xo0; ++k) dst[k] = t[k];
            }
        }
    }
}
