/* sep_boxsum: vertical pass of a separable convolution whose column factor is constant
 * (box filters), by running sums: out[y] = WV * sum_{i<KH} x[y + i], each new row costing
 * one added and one subtracted row instead of KH multiply-adds.
 *
 * Geometry (KH, channel layout, RB, XV_MAX) comes as -D defines; image sizes are
 * runtime arguments (n images, h x w input, ho output rows, xv float8 vectors per item
 * along the width, at most XV_MAX), so one build serves every image size.
 *
 * Layouts (row-major, contiguous):
 *   x     (n, C_IN, h, w)       input planes
 *   wv    (C_OUT,)              the constant tap of each output plane
 *   rmap  (ho + KH - 1,) int    padded row -> source row, -1 = zero row (every mode)
 *   out   (n, C_OUT, ho, w)     stride 1, dilation 1 (the host checks)
 * Output plane o reads input plane o / CMULT (depthwise with multiplier CMULT).
 * Work-item (gx, gy, gz): xv*8 columns xv*8*gx.., output rows gy*RB .. gy*RB+RB-1 (the
 * sum is restarted every RB rows, which bounds the rounding drift of the running sum to
 * RB additions), plane gz = n*C_OUT + o. An item walks down its rows, so its strip must
 * be wide: with 8 columns (32 bytes per row) the walk ran 4x slower than a copy. Unaligned float8 through an aligned(4) pointer
 * type: PoCL leaves vload8/vstore8 as out-of-line calls.
 */

#ifndef C_IN
#error "-D C_IN=... is required (set by the host)"
#endif
#ifndef C_OUT
#error "-D C_OUT=... is required (set by the host)"
#endif
#ifndef CMULT
#error "-D CMULT=... is required (set by the host)"
#endif
#ifndef KH
#error "-D KH=... is required (set by the host)"
#endif
#ifndef RB
#error "-D RB=... is required (set by the host)"
#endif
#ifndef XV_MAX
#error "-D XV_MAX=... is required (set by the host)"
#endif

typedef float f8u __attribute__((ext_vector_type(8), aligned(4)));

/* Padded row pr of the plane at columns xo0.. (zeros where the map says so). */
inline float8 row8(__global const float *xc, __global const int *rmap, int pr, int xo0,
                   const int w, bool full) {
    const int r = rmap[pr];
    if (r < 0) return (float8)(0.0f);
    __global const float *p = xc + r * w + xo0;
    if (full) return *(__global const f8u *)p;
    float t[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) t[k] = xo0 + k < w ? p[k] : 0.0f;
    return (float8)(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
}

inline void store8(__global float *dst, float8 v, int xo0, const int w, bool full) {
    if (full) {
        *(__global f8u *)dst = v;
    } else {
        const float t[8] = {v.s0, v.s1, v.s2, v.s3, v.s4, v.s5, v.s6, v.s7};
        for (int k = 0; k < w - xo0; ++k) dst[k] = t[k];
    }
}

__kernel void sep_boxsum(__global const float *restrict x, __global const float *restrict wv,
                         __global const int *restrict rmap, __global float *restrict out,
                         const int n_img, const int h, const int w, const int ho,
                         const int xv) {
    const int xs0 = get_global_id(0) * (xv * 8);
    const int yo0 = get_global_id(1) * RB;
    const int plane = get_global_id(2);
    if (xs0 >= w || yo0 >= ho || plane >= n_img * C_OUT) return;
    const int n = plane / C_OUT;
    const int o = plane - n * C_OUT;
    __global const float *xc = x + (size_t)(n * C_IN + o / CMULT) * h * w;
    __global float *dst = out + ((size_t)plane * ho + yo0) * w + xs0;
    const float c = wv[o];
    const int y1 = yo0 + RB < ho ? yo0 + RB : ho;

    float8 s[XV_MAX];
    for (int v = 0; v < xv; ++v) s[v] = (float8)(0.0f);
    for (int i = 0; i < KH; ++i) {
        for (int v = 0; v < xv; ++v) {
            const int xo = xs0 + v * 8;
            if (xo < w) s[v] += row8(xc, rmap, yo0 + i, xo, w, xo + 8 <= w);
        }
    }
    for (int v = 0; v < xv; ++v) {
        const int xo = xs0 + v * 8;
        if (xo < w) store8(dst + v * 8, s[v] * c, xo, w, xo + 8 <= w);
    }
    for (int y = yo0 + 1; y < y1; ++y) {
        dst += w;
        for (int v = 0; v < xv; ++v) {
            const int xo = xs0 + v * 8;
            if (xo < w) {
                const bool full = xo + 8 <= w;
                s[v] += row8(xc, rmap, y + KH - 1, xo, w, full) -
                        row8(xc, rmap, y - 1, xo, w, full);
                store8(dst + v * 8, s[v] * c, xo, w, full);
            }
        }
    }
}
