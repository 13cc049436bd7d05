/* fft_conv: depthwise convolution by FFT, overlap-save on T x T tiles.
 *
 * For kernels too large for direct taps and not separable (a disk, a motion blur, a
 * measured point-spread function) the cost per output pixel of direct taps grows with
 * the kernel area; here it is a fixed cost per tile, whatever the kernel size.
 *
 * One work-item (a work-group of one: the whole tile lives in that group's __local
 * memory, which a CPU device keeps in its private caches) takes TWO tiles of one output
 * plane: tile A as the real part and tile B as the imaginary part of one complex tile.
 * The kernel is real, so the correlation of A + iB is corr(A) + i corr(B): one complex
 * FFT does the work of two real ones, with no Hermitian bookkeeping.
 *
 * The tile is stored as float8 vectors of 8 consecutive columns (re, im interleaved by
 * vector), rows of T/8 vectors. Transforms, all radix-2 and in place:
 *   rows:    the "four-step" split c = 8q + l: a DIF FFT over the T/8 vectors q (lanes l
 *            independent), a per-lane twiddle w_T^(l k1), then an 8-point DFT across the
 *            lanes by shuffles;
 *   columns: a DIF FFT over the T rows, 8 columns per vector.
 * DIF leaves frequencies in bit-reversed order; the host stores the kernel spectrum in
 * exactly that order, and the inverse runs the same steps backwards as DIT from
 * bit-reversed order to natural order, so no data is ever permuted. The spectrum is the
 * conjugate of the kernel's FFT (correlation, not convolution), scaled by 1/T^2.
 *
 * Geometry as -D defines: T (tile side, a power of two, 32..256), C_IN, C_OUT, CMULT
 * (output plane o reads input plane o / CMULT), KEH, KEW (dilated kernel extent), SH,
 * SW (stride), HAS_BIAS. Image sizes are kernel arguments, so one build serves every
 * image size.
 *
 * Arguments:
 *   x     (n, C_IN, h, w)            input planes
 *   spec  (C_OUT, T, T/8) x {re8, im8} kernel spectra, permuted as above
 *   twr   (T/8) x {re8, im8}         row twiddles w_T^(l * bitrev(p)) for slot p, lane l
 *   tw    (T/2) float2               w_T^m
 *   bias  (C_OUT,)
 *   rmap  (hp,) int, cmap (wp,) int  padded index -> source index, -1 = zero
 *   out   (n, C_OUT, ho, wo)
 * Work-item (gx, gy): pair gx of tiles (tiles 2gx and 2gx+1 in row-major order over a
 * plane's TY x TX tiles), plane gy = n*C_OUT + o. Tile (ty, tx) computes the stride-1
 * outputs at padded rows ty*VH .. ty*VH+VH-1 (VH = T - KEH + 1), columns likewise, and
 * stores those that fall on the stride.
 * No fma() or vload8 builtins (PoCL makes them calls); shuffles are plain swizzles.
 */

#ifndef T
#error "-D T=... is required (set by the host)"
#endif
#ifndef C_IN
#error "-D C_IN=... is required (set by the host)"
#endif
#ifndef C_OUT
#error "-D C_OUT=... is required (set by the host)"
#endif
#ifndef CMULT
#error "-D CMULT=... is required (set by the host)"
#endif
#ifndef KEH
#error "-D KEH=... is required (set by the host)"
#endif
#ifndef KEW
#error "-D KEW=... is required (set by the host)"
#endif
#ifndef SH
#error "-D SH=... is required (set by the host)"
#endif
#ifndef SW
#error "-D SW=... is required (set by the host)"
#endif
#ifndef HAS_BIAS
#error "-D HAS_BIAS=... is required (set by the host)"
#endif

#define TV (T / 8)
#define VH (T - KEH + 1)
#define VW (T - KEW + 1)
#define RSQ2 0.70710678118654752f

typedef float float8u __attribute__((ext_vector_type(8), aligned(4)));

/* (ar + i ai) * (br + i bi), on vectors */
#define CMUL(ar, ai, br, bi, outr, outi) \
    do {                                 \
        const float8 t_r = ar * br - ai * bi; \
        const float8 t_i = ar * bi + ai * br; \
        outr = t_r;                      \
        outi = t_i;                      \
    } while (0)

/* 8-point DFT across the lanes, DIF: natural lanes in, lane L holds bitrev3(L) out. */
inline void lanes_dif(float8 *re, float8 *im) {
    float8 r = *re, i = *im;
    /* h = 4: pairs (j, j+4), twiddle w8^j */
    {
        const float4 ar = r.lo, ai = i.lo, br = r.hi, bi = i.hi;
        const float4 dr = ar - br, di = ai - bi;
        const float4 wr = (float4)(1.0f, RSQ2, 0.0f, -RSQ2);
        const float4 wi = (float4)(0.0f, -RSQ2, -1.0f, -RSQ2);
        r = (float8)(ar + br, dr * wr - di * wi);
        i = (float8)(ai + bi, dr * wi + di * wr);
    }
    /* h = 2: pairs (0,2) (1,3) (4,6) (5,7), twiddles 1, -i */
    {
        const float4 ar = r.s0145, ai = i.s0145, br = r.s2367, bi = i.s2367;
        const float4 ur = ar + br, ui = ai + bi, dr = ar - br, di = ai - bi;
        /* (dr + i di) * (-i) = di - i dr for the odd j */
        const float4 tr = (float4)(dr.s0, di.s1, dr.s2, di.s3);
        const float4 ti = (float4)(di.s0, -dr.s1, di.s2, -dr.s3);
        r = (float8)(ur.s01, tr.s01, ur.s23, tr.s23);
        i = (float8)(ui.s01, ti.s01, ui.s23, ti.s23);
    }
    /* h = 1: pairs (0,1) (2,3) ..., twiddle 1 */
    {
        const float4 ar = r.even, ai = i.even, br = r.odd, bi = i.odd;
        const float4 ur = ar + br, ui = ai + bi, dr = ar - br, di = ai - bi;
        r = (float8)(ur.s0, dr.s0, ur.s1, dr.s1, ur.s2, dr.s2, ur.s3, dr.s3);
        i = (float8)(ui.s0, di.s0, ui.s1, di.s1, ui.s2, di.s2, ui.s3, di.s3);
    }
    *re = r;
    *im = i;
}

/* Inverse of lanes_dif up to a factor 8: bit-reversed lanes in, natural lanes out. */
inline void lanes_dit_inv(float8 *re, float8 *im) {
    float8 r = *re, i = *im;
    {
        const float4 ar = r.even, ai = i.even, br = r.odd, bi = i.odd;
        const float4 ur = ar + br, ui = ai + bi, dr = ar - br, di = ai - bi;
        r = (float8)(ur.s0, dr.s0, ur.s1, dr.s1, ur.s2, dr.s2, ur.s3, dr.s3);
        i = (float8)(ui.s0, di.s0, ui.s1, di.s1, ui.s2, di.s2, ui.s3, di.s3);
    }
    {
        const float4 ur = r.s0145, ui = i.s0145;
        const float4 br = r.s2367, bi = i.s2367;
        /* v = b * conj(w4^j): 1 for even j, +i for odd j: (br + i bi) * i = -bi + i br */
        const float4 vr = (float4)(br.s0, -bi.s1, br.s2, -bi.s3);
        const float4 vi = (float4)(bi.s0, br.s1, bi.s2, br.s3);
        const float4 sr = ur + vr, si = ui + vi, dr = ur - vr, di = ui - vi;
        r = (float8)(sr.s01, dr.s01, sr.s23, dr.s23);
        i = (float8)(si.s01, di.s01, si.s23, di.s23);
    }
    {
        const float4 ur = r.lo, ui = i.lo, br = r.hi, bi = i.hi;
        const float4 wr = (float4)(1.0f, RSQ2, 0.0f, -RSQ2);
        const float4 wi = (float4)(0.0f, RSQ2, 1.0f, RSQ2); /* conj(w8^j) */
        const float4 vr = br * wr - bi * wi, vi = br * wi + bi * wr;
        r = (float8)(ur + vr, ur - vr);
        i = (float8)(ui + vi, ui - vi);
    }
    *re = r;
    *im = i;
}

/* In-place radix-2 DIF over `len` vectors spaced `stride` float8 pairs apart, `count`
 * independent sequences `step` pairs apart (the innermost loop, so a pass walks
 * contiguous memory). Twiddle w_{2h}^j = tw[j * T / (2h)]. */
inline void dif(__local float8 *buf, const int len, const int stride, const int count,
                const int step, __global const float2 *tw) {
    for (int h = len >> 1; h >= 1; h >>= 1) {
        const int tstep = T / (2 * h);
        for (int b = 0; b < len; b += 2 * h) {
            for (int j = 0; j < h; ++j) {
                const float2 w = tw[j * tstep];
                __local float8 *p = buf + 2 * (b + j) * stride;
                __local float8 *q = buf + 2 * (b + j + h) * stride;
                for (int s = 0; s < count; ++s) {
                    const int o = 2 * s * step;
                    const float8 ur = p[o], ui = p[o + 1], vr = q[o], vi = q[o + 1];
                    p[o] = ur + vr;
                    p[o + 1] = ui + vi;
                    const float8 dr = ur - vr, di = ui - vi;
                    q[o] = dr * w.x - di * w.y;
                    q[o + 1] = dr * w.y + di * w.x;
                }
            }
        }
    }
}

/* Inverse: in-place radix-2 DIT from bit-reversed order, conjugate twiddles. */
inline void dit_inv(__local float8 *buf, const int len, const int stride, const int count,
                    const int step, __global const float2 *tw) {
    for (int h = 1; h < len; h <<= 1) {
        const int tstep = T / (2 * h);
        for (int b = 0; b < len; b += 2 * h) {
            for (int j = 0; j < h; ++j) {
                const float2 w = tw[j * tstep]; /* conj applied below */
                __local float8 *p = buf + 2 * (b + j) * stride;
                __local float8 *q = buf + 2 * (b + j + h) * stride;
                for (int s = 0; s < count; ++s) {
                    const int o = 2 * s * step;
                    const float8 br = q[o], bi = q[o + 1];
                    const float8 vr = br * w.x + bi * w.y;
                    const float8 vi = bi * w.x - br * w.y;
                    const float8 ur = p[o], ui = p[o + 1];
                    p[o] = ur + vr;
                    p[o + 1] = ui + vi;
                    q[o] = ur - vr;
                    q[o + 1] = ui - vi;
                }
            }
        }
    }
}

/* Loads one tile's T x T padded input into the re (part 0) or im (part 1) halves. */
inline void load_tile(__local float8 *buf, const int part, const bool present,
                      __global const float *plane, __global const int *rmap,
                      __global const int *cmap, const int r0, const int c0, const int h,
                      const int w, const int hp, const int wp, const int padl) {
    const bool cols_in = c0 - padl >= 0 && c0 + T - padl <= w;
    for (int r = 0; r < T; ++r) {
        __local float8 *row = buf + 2 * r * TV + part;
        const int pr = r0 + r;
        const int sr = present && pr < hp ? rmap[pr] : -1;
        if (sr < 0) {
            for (int p = 0; p < TV; ++p) row[2 * p] = (float8)(0.0f);
            continue;
        }
        __global const float *src = plane + (size_t)sr * w;
        if (cols_in) {
            __global const float8u *s8 = (__global const float8u *)(src + c0 - padl);
            for (int p = 0; p < TV; ++p) row[2 * p] = s8[p];
        } else {
            for (int p = 0; p < TV; ++p) {
                float v[8];
                for (int l = 0; l < 8; ++l) {
                    const int pc = c0 + 8 * p + l;
                    const int sc = pc < wp ? cmap[pc] : -1;
                    v[l] = sc >= 0 ? src[sc] : 0.0f;
                }
                row[2 * p] = (float8)(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
            }
        }
    }
}

/* Stores the valid stride-1 outputs of one tile (re or im halves) on the stride. */
inline void store_tile(__local const float8 *buf, const int part, __global float *dst,
                       const int r0, const int c0, const int ho, const int wo,
                       const float b) {
    for (int r = 0; r < VH; ++r) {
        const int pr = r0 + r; /* stride-1 output row */
        if (pr % SH != 0) continue;
        const int yo = pr / SH;
        if (yo >= ho) break;
        __global float *drow = dst + (size_t)yo * wo;
        __local const float8 *row = buf + 2 * r * TV + part;
        for (int p = 0; p < TV; ++p) {
            const int cbase = 8 * p;
            if (cbase >= VW) break;
            const float8 v = row[2 * p] + b;
#if SW == 1
            if (cbase + 8 <= VW && c0 + cbase + 8 <= wo) {
                *(__global float8u *)(drow + c0 + cbase) = v;
                continue;
            }
#endif
            const float t[8] = {v.s0, v.s1, v.s2, v.s3, v.s4, v.s5, v.s6, v.s7};
            for (int l = 0; l < 8; ++l) {
                const int c = cbase + l;
                const int pc = c0 + c;
                if (c < VW && pc % SW == 0 && pc / SW < wo) drow[pc / SW] = t[l];
            }
        }
    }
}

__kernel __attribute__((reqd_work_group_size(1, 1, 1))) void fft_conv(
    __global const float *restrict x, __global const float8 *restrict spec,
    __global const float8 *restrict twr, __global const float2 *restrict tw,
    __global const float *restrict bias, __global const int *restrict rmap,
    __global const int *restrict cmap, __global float *restrict out, const int h,
    const int w, const int hp, const int wp, const int padl, const int ho, const int wo,
    const int tiles_x, const int tiles) {
    __local float8 buf[2 * T * TV];
    const int pair = get_global_id(0);
    const int plane = get_global_id(1);
    const int o = plane % C_OUT;
    const int n = plane / C_OUT;
    const int ta = 2 * pair, tb = 2 * pair + 1;
    if (ta >= tiles) return;
    const bool has_b = tb < tiles;
    const int ra = (ta / tiles_x) * VH, ca = (ta % tiles_x) * VW;
    const int rb = (tb / tiles_x) * VH, cb = (tb % tiles_x) * VW;
    __global const float *src = x + ((size_t)n * C_IN + o / CMULT) * h * w;

    load_tile(buf, 0, true, src, rmap, cmap, ra, ca, h, w, hp, wp, padl);
    load_tile(buf, 1, has_b, src, rmap, cmap, rb, cb, h, w, hp, wp, padl);

    /* rows: DIF over the T/8 vectors of each row, per-lane twiddle, lane DFT */
    for (int r = 0; r < T; ++r) {
        __local float8 *row = buf + 2 * r * TV;
        dif(row, TV, 1, 1, 0, tw);
        for (int p = 0; p < TV; ++p) {
            float8 vr = row[2 * p], vi = row[2 * p + 1];
            CMUL(vr, vi, twr[2 * p], twr[2 * p + 1], vr, vi);
            lanes_dif(&vr, &vi);
            row[2 * p] = vr;
            row[2 * p + 1] = vi;
        }
    }
    /* columns: DIF over the T rows, all T/8 vector columns in the inner loop */
    dif(buf, T, TV, TV, 1, tw);

    /* multiply by the kernel spectrum (conjugated and scaled on the host) */
    __global const float8 *ks = spec + (size_t)o * (2 * T * TV);
    for (int k = 0; k < T * TV; ++k) {
        float8 vr = buf[2 * k], vi = buf[2 * k + 1];
        CMUL(vr, vi, ks[2 * k], ks[2 * k + 1], vr, vi);
        buf[2 * k] = vr;
        buf[2 * k + 1] = vi;
    }

    dit_inv(buf, T, TV, TV, 1, tw);
    for (int r = 0; r < VH; ++r) { /* rows past VH are never stored */
        __local float8 *row = buf + 2 * r * TV;
        for (int p = 0; p < TV; ++p) {
            float8 vr = row[2 * p], vi = row[2 * p + 1];
            lanes_dit_inv(&vr, &vi);
            const float8 tr = twr[2 * p], ti = -twr[2 * p + 1];
            CMUL(vr, vi, tr, ti, vr, vi);
            row[2 * p] = vr;
            row[2 * p + 1] = vi;
        }
        dit_inv(row, TV, 1, 1, 0, tw);
    }

#if HAS_BIAS
    const float bv = bias[o];
#else
    const float bv = 0.0f;
#endif
    __global float *dst = out + (size_t)plane * ho * wo;
    store_tile(buf, 0, dst, ra, ca, ho, wo, bv);
    if (has_b) store_tile(buf, 1, dst, rb, cb, ho, wo, bv);
}
