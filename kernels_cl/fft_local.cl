/* fft_local: depthwise convolution by FFT for GPU-type devices, one work-group per tile
 * pair, the pair transformed cooperatively in __local memory.
 *
 * The same overlap-save as fft_conv.cl (large kernels that are not separable: a disk, a
 * motion blur, a measured point-spread function) in the shape a GPU wants: fft_conv runs
 * a whole tile's FFT in one work-item, which on a GPU leaves all but one lane of a
 * work-group idle; here every item of the group takes butterflies of each radix-2 stage,
 * with a barrier between stages.
 *
 * Two real tiles A and B of one output plane are packed as one complex tile A + iB: the
 * kernel is real, so the correlation of A + iB is corr(A) + i corr(B), and one complex
 * FFT does the work of two real ones with no Hermitian bookkeeping (a real-input FFT
 * would need a half-size spectrum, its own post-processing pass and barriers, for the
 * same local memory per output pixel).
 *
 * Layout in local memory: buf[r * T + c], float2 (re = tile A, im = tile B), T*T*8 bytes
 * and nothing else (8 KiB for T = 32, exactly 32 KiB for T = 64, the local memory of many
 * GPUs; the T/2 twiddles are read from global memory, where they stay cached). Steps,
 * all in place:
 *   load      item i of the group takes elements i, i + nl, ...: consecutive items read
 *             consecutive columns (coalesced), through the padding index maps;
 *   rows      radix-2 DIF over each row, log2(T) stages: butterfly b of T*T/2 goes to row
 *             b / (T/2), so neighbouring items touch neighbouring elements;
 *   columns   radix-2 DIF over each column, butterfly b in column b % T (neighbouring
 *             items, neighbouring columns); the last stage (pairs of adjacent rows) is
 *             fused with the product by the kernel spectrum and the first stage of the
 *             inverse, which pairs the same two rows: no barrier between them;
 *   inverse   radix-2 DIT over the columns, then over the rows that hold valid outputs
 *             (rows past VH are never stored, so never transformed back);
 *   store     item i takes output pixel i, i + nl, ... of the tile (coalesced along a row).
 * DIF leaves frequencies in bit-reversed order along both axes; the host stores the
 * kernel spectrum in exactly that order and the inverse DIT goes from bit-reversed back
 * to natural order, so no data is ever permuted. The spectrum is the conjugate of the
 * dilated kernel's FFT (correlation, not convolution), scaled by 1/T^2.
 *
 * Define (it sizes the local array and the loops): T, the tile side, a power of two.
 * Everything else is a runtime argument, so one build per tile side serves every kernel
 * extent, stride, channel count and image size; the work-group size is any size the
 * launch gets (items loop over the work), so a launch the driver shrinks still runs.
 *
 * Arguments:
 *   x     (n, c_in, h, w)      input planes
 *   spec  (c_out, T, T) float2 kernel spectra, both axes in bit-reversed order
 *   tw    (T/2,) float2        w_T^m = exp(-2 pi i m / T)
 *   bias  (c_out,)             zeros without a bias
 *   rmap  (hp,) int, cmap (wp,) int   padded index -> source index, -1 = zero
 *   out   (n, c_out, ho, wo)
 *   keh, kew  the dilated kernel extent; sh, sw the stride; cmult: output plane o reads
 *             input plane o / cmult; tiles_x, tiles: tiles per row and per plane, in
 *             pairs (2p, 2p+1 in row-major order), `pairs` of them, one per work-group.
 * Work-group (gx, gy) of nl x 1 items: pair gx of plane gy = n * c_out + o; groups past
 * the last pair (a launch the driver shrank) return at once, all their items together.
 * Tile t = (ty, tx) computes the stride-1 outputs at padded rows ty*VH .. ty*VH+VH-1
 * (VH = T - keh + 1), columns likewise, and stores those on the stride.
 */

#ifndef T
#error "-D T=... is required (set by the host)"
#endif
#if T < 4 || (T & (T - 1)) != 0
#error "T must be a power of two of at least 4"
#endif

#define HALF (T / 2)
#define AREA (T * T)

/* a * b */
inline float2 cmul(const float2 a, const float2 b) {
    return (float2)(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

/* a * conj(b) */
inline float2 cmulc(const float2 a, const float2 b) {
    return (float2)(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y);
}

/* The padded input at (pr, pc) of one plane (zero outside the image or a zero pad). */
inline float texel(__global const float *plane, __global const int *rmap,
                   __global const int *cmap, const int pr, const int pc, const int hp,
                   const int wpad, const int w) {
    if (pr >= hp || pc >= wpad) return 0.0f;
    const int sr = rmap[pr];
    const int sc = cmap[pc];
    return sr >= 0 && sc >= 0 ? plane[sr * w + sc] : 0.0f;
}

/* Stores the outputs of one tile whose stride-1 outputs start at (r0, c0). */
inline void store(__local const float2 *buf, const int part, __global float *dst,
                  const int r0, const int c0, const int vh, const int vw, const int sh,
                  const int sw, const int ho, const int wo, const float b, const int lid,
                  const int nl) {
    const int yo0 = (r0 + sh - 1) / sh;
    const int yo1 = min(ho, (r0 + vh - 1) / sh + 1);
    const int xo0 = (c0 + sw - 1) / sw;
    const int xo1 = min(wo, (c0 + vw - 1) / sw + 1);
    const int nx = xo1 - xo0;
    if (yo1 <= yo0 || nx <= 0) return;
    const int count = (yo1 - yo0) * nx;
    for (int i = lid; i < count; i += nl) {
        const int yo = yo0 + i / nx;
        const int xo = xo0 + i % nx;
        const float2 v = buf[(yo * sh - r0) * T + (xo * sw - c0)];
        dst[(size_t)yo * wo + xo] = (part ? v.y : v.x) + b;
    }
}

__kernel void fft_local(__global const float *restrict x, __global const float2 *restrict spec,
                        __global const float2 *restrict tw, __global const float *restrict bias,
                        __global const int *restrict rmap, __global const int *restrict cmap,
                        __global float *restrict out, const int c_in, const int c_out,
                        const int cmult, const int h, const int w, const int hp,
                        const int wpad, const int ho, const int wo, const int keh,
                        const int kew, const int sh, const int sw, const int tiles_x,
                        const int tiles, const int pairs) {
    __local float2 buf[AREA];
    const int pair = get_group_id(0);
    if (pair >= pairs) return; /* the whole work-group: the local size along y is 1 */
    const int lid = get_local_id(0);
    const int nl = get_local_size(0);
    const int plane = get_global_id(1);
    const int o = plane % c_out;
    const int n = plane / c_out;
    const int vh = T - keh + 1;
    const int vw = T - kew + 1;
    const int ta = 2 * pair, tb = 2 * pair + 1;
    const bool has_b = tb < tiles;
    const int ra = (ta / tiles_x) * vh, ca = (ta % tiles_x) * vw;
    const int rb = (tb / tiles_x) * vh, cb = (tb % tiles_x) * vw;
    __global const float *src = x + ((size_t)n * c_in + o / cmult) * h * w;

    for (int i = lid; i < AREA; i += nl) {
        const int r = i / T, c = i % T;
        const float a = texel(src, rmap, cmap, ra + r, ca + c, hp, wpad, w);
        const float b = has_b ? texel(src, rmap, cmap, rb + r, cb + c, hp, wpad, w) : 0.0f;
        buf[i] = (float2)(a, b);
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    /* rows, DIF: butterfly j of a row pairs (blk*2hh + k, + hh), j = blk*hh + k */
    for (int hh = HALF; hh >= 1; hh >>= 1) {
        const int ts = HALF / hh;
        for (int b = lid; b < AREA / 2; b += nl) {
            const int j = b % HALF;
            const int k = j & (hh - 1);
            const int p = (b / HALF) * T + 2 * (j - k) + k;
            const float2 u = buf[p], v = buf[p + hh];
            buf[p] = u + v;
            buf[p + hh] = cmul(u - v, tw[k * ts]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    /* columns, DIF down to pairs of rows two apart */
    for (int hh = HALF; hh >= 2; hh >>= 1) {
        const int ts = HALF / hh;
        for (int b = lid; b < AREA / 2; b += nl) {
            const int j = b / T;
            const int k = j & (hh - 1);
            const int p = (2 * (j - k) + k) * T + b % T;
            const float2 u = buf[p], v = buf[p + hh * T];
            buf[p] = u + v;
            buf[p + hh * T] = cmul(u - v, tw[k * ts]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    /* the last DIF stage (adjacent rows, twiddle 1), the product by the spectrum, and
     * the first DIT stage of the inverse (the same two rows, twiddle 1) */
    __global const float2 *ks = spec + (size_t)o * AREA;
    for (int b = lid; b < AREA / 2; b += nl) {
        const int p = 2 * (b / T) * T + b % T;
        const float2 u = buf[p], v = buf[p + T];
        const float2 s = cmul(u + v, ks[p]);
        const float2 d = cmul(u - v, ks[p + T]);
        buf[p] = s + d;
        buf[p + T] = s - d;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    /* columns, inverse DIT from pairs two rows apart on, conjugate twiddles */
    for (int hh = 2; hh < T; hh <<= 1) {
        const int ts = HALF / hh;
        for (int b = lid; b < AREA / 2; b += nl) {
            const int j = b / T;
            const int k = j & (hh - 1);
            const int p = (2 * (j - k) + k) * T + b % T;
            const float2 u = buf[p], v = cmulc(buf[p + hh * T], tw[k * ts]);
            buf[p] = u + v;
            buf[p + hh * T] = u - v;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    /* rows, inverse DIT, only the VH rows that hold valid outputs */
    for (int hh = 1; hh < T; hh <<= 1) {
        const int ts = HALF / hh;
        for (int b = lid; b < vh * HALF; b += nl) {
            const int j = b % HALF;
            const int k = j & (hh - 1);
            const int p = (b / HALF) * T + 2 * (j - k) + k;
            const float2 u = buf[p], v = cmulc(buf[p + hh], tw[k * ts]);
            buf[p] = u + v;
            buf[p + hh] = u - v;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    const float bv = bias[o];
    __global float *dst = out + (size_t)plane * ho * wo;
    store(buf, 0, dst, ra, ca, vh, vw, sh, sw, ho, wo, bv, lid, nl);
    if (has_b) store(buf, 1, dst, rb, cb, vh, vw, sh, sw, ho, wo, bv, lid, nl);
}
