/* conv2d_direct: the generic direct 2-D convolution (cross-correlation, no kernel flip)
 * with exactly torch.nn.Conv2d's semantics. It runs every case the API accepts; the
 * specialised fast kernels (dw_*, dense_*, sep_*) take over where they apply.
 *
 * Layouts (C order):
 *   x   input   (N, C_in, H, W)     REAL (float16 input is converted to float on the host)
 *   wp  weights packed on the host  (G, n_cob, cin_g, KH, KW, CB): the CB output channels of
 *                                   one channel block, contiguous per tap; zero past cout_g
 *   bp  bias packed on the host     (G, n_cob, CB), or NULL when HAS_BIAS is 0
 *   y   output  (N, C_out, Ho, Wo)  REAL
 *   With COMPLEX every element is (re, im) interleaved (float2/double2 memory); products
 *   are complex products of the weight as given (no conjugation, like torch).
 *
 * Work-item mapping: global size (ceil(Wo/WB) rounded up to LX, ceil(Ho/RB) rounded up
 *   to LY, N*G*n_cob). Work-item (i, j, z), z = (n*G + g)*n_cob + cob, computes output
 *   columns [i*WB, i*WB + WB) of rows [j*RB, j*RB + RB) for output channels
 *   g*cout_g + cob*CB + [0, CB) of image n, one row after the other (the rows share the
 *   index decoding; RB is 4 on CPUs, 1 on GPUs, which want the parallelism).
 *   Its accumulators are CB vectors of WB lanes (REAL##WB; separate re/im vectors when
 *   COMPLEX), kept in registers by fully unrolled channel loops.
 *
 * Padding is never materialised: a padded coordinate p maps to a source index by MODE,
 * the same map as convcli.spec.source_index (reflect: mirror without the edge; symmetric:
 * mirror with the edge, any pad size; circular: wrap; replicate: clamp; zeros: skip the
 * tap); negative pads (crops, non-zero modes only) need no special case. A work-item
 * whose receptive field lies inside the input (the vast majority on images) takes a
 * path without any index mapping; only border work-items map indices.
 *
 * Geometry is fixed at build time (-D KH KW SH SW DH DW MODE CB WB RB HAS_BIAS and the
 * dtype switches REAL COMPLEX); sizes and pads are runtime arguments, so tiles and layers
 * of other sizes reuse the build. Vectors are at most 256 bits (double4, float8): PoCL
 * targets AVX2 here, and double8 arguments changed the ABI and crashed the kernel.
 *
 * PoCL (LLVM 14) leaves many builtins as out-of-line calls: fma/mad, vloadn/vstoren and
 * even min/clamp. A call inside the tap loop spills every accumulator to the stack (the
 * first version of this kernel ran 2-3x slower for that), so vectors are read and written
 * through an element-aligned vector type (LOADV/STOREV: one unaligned access), a * b + c
 * is written out (contracted to FMA by the compiler), and integer clamps are ternaries.
 */

#ifndef REAL
#error "-D REAL=... is required (set by the host)"
#endif
#ifndef COMPLEX
#error "-D COMPLEX=... is required (set by the host)"
#endif
#include "geometry.clh"
#ifndef MODE
#error "-D MODE=... is required (set by the host)"
#endif
#ifndef CB
#error "-D CB=... is required (set by the host)"
#endif
#ifndef WB
#error "-D WB=... is required (set by the host)"
#endif
#ifndef HAS_BIAS
#error "-D HAS_BIAS=... is required (set by the host)"
#endif
#ifndef RB
#error "-D RB=... is required (set by the host)"
#endif

#define MODE_ZEROS 0
#define MODE_REFLECT 1
#define MODE_REPLICATE 2
#define MODE_CIRCULAR 3
#define MODE_SYMMETRIC 4

#ifdef USE_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define RV CAT(REAL, WB)

/* LOADV(p) / STOREV(v, p): WB consecutive values at global p through a vector type of
 * element alignment: one unaligned vector access, no builtin call (see above).
 * GATHER(a): a vector of a private array's WB values. */
typedef RV RV_U __attribute__((aligned(sizeof(REAL))));
#define LOADV(p) (*(__global const RV_U *)(p))
#define STOREV(v, p) (*(__global RV_U *)(p) = (v))
#define STOREV_PRIVATE(v, p) (*(__private RV_U *)(p) = (v))
#if WB == 8
#define GATHER(a) ((RV)((a)[0], (a)[1], (a)[2], (a)[3], (a)[4], (a)[5], (a)[6], (a)[7]))
#elif WB == 4
#define GATHER(a) ((RV)((a)[0], (a)[1], (a)[2], (a)[3]))
#elif WB == 2
#define GATHER(a) ((RV)((a)[0], (a)[1]))
#else
#error "WB must be 2, 4 or 8"
#endif

#if COMPLEX
#define CPLX 2
#else
#define CPLX 1
#endif

#define IN_T REAL

/* Full unrolling keeps the accumulators in registers; very wide kernels unroll
 * partially so that a 31x31 filter does not explode the code size. */
#if KW * CB <= 64
#define KX_UNROLL _Pragma("unroll")
#else
#define KX_UNROLL _Pragma("unroll 4")
#endif

#if KH * KW * CB <= 96
#define KY_UNROLL _Pragma("unroll")
#else
#define KY_UNROLL
#endif

/* Input columns one strip reads per tap (SW == 2 reads two whole vectors). */
#if SW == 2 && !COMPLEX
#define STRIP_SPAN (2 * WB)
#else
#define STRIP_SPAN (SW * (WB - 1) + 1)
#endif

/* DECL_V declares the input vector(s) of one tap; LOAD_INSIDE(row, i0) loads the WB
 * strip values starting at column i0 (stride SW), LOAD_BORDER(row, cols) through the
 * mapped columns cols[0..WB) (-1 = zero); ACCUM(wk) adds the CB products. */
#if COMPLEX
#define DECL_V RV vr, vi
#if SW == 1
#define LOAD_INSIDE(row, i0)                                                               \
    do {                                                                                   \
        const RV a_ = LOADV((row) + 2 * (i0));                                             \
        const RV b_ = LOADV((row) + 2 * (i0) + WB);                                        \
        vr = (RV)(a_.even, b_.even);                                                       \
        vi = (RV)(a_.odd, b_.odd);                                                         \
    } while (0)
#else
#define LOAD_INSIDE(row, i0)                                                               \
    do {                                                                                   \
        REAL tr_[WB], ti_[WB];                                                             \
        _Pragma("unroll") for (int j_ = 0; j_ < WB; ++j_) {                                \
            tr_[j_] = (row)[2 * ((i0) + j_ * SW)];                                         \
            ti_[j_] = (row)[2 * ((i0) + j_ * SW) + 1];                                     \
        }                                                                                  \
        vr = GATHER(tr_);                                                                  \
        vi = GATHER(ti_);                                                                  \
    } while (0)
#endif
#define LOAD_BORDER(row, cols)                                                             \
    do {                                                                                   \
        REAL tr_[WB], ti_[WB];                                                             \
        _Pragma("unroll") for (int j_ = 0; j_ < WB; ++j_) {                                \
            const int c_ = (cols)[j_];                                                     \
            tr_[j_] = c_ < 0 ? (REAL)0 : (row)[2 * c_];                                    \
            ti_[j_] = c_ < 0 ? (REAL)0 : (row)[2 * c_ + 1];                                \
        }                                                                                  \
        vr = GATHER(tr_);                                                                  \
        vi = GATHER(ti_);                                                                  \
    } while (0)
#define ACCUM(wk)                                                                          \
    do {                                                                                   \
        _Pragma("unroll") for (int cb = 0; cb < CB; ++cb) {                               \
            const REAL a_ = (wk)[2 * cb];                                                  \
            const REAL b_ = (wk)[2 * cb + 1];                                              \
            acc[cb] += a_ * vr - b_ * vi;                                                  \
            acci[cb] += a_ * vi + b_ * vr;                                                 \
        }                                                                                  \
    } while (0)
#else
#define DECL_V RV v
#if SW == 1
#define LOAD_INSIDE(row, i0) v = LOADV((row) + (i0))
#elif SW == 2
#define LOAD_INSIDE(row, i0)                                                               \
    do {                                                                                   \
        const RV a_ = LOADV((row) + (i0));                                                 \
        const RV b_ = LOADV((row) + (i0) + WB);                                            \
        v = (RV)(a_.even, b_.even);                                                        \
    } while (0)
#else
#define LOAD_INSIDE(row, i0)                                                               \
    do {                                                                                   \
        REAL t_[WB];                                                                       \
        _Pragma("unroll") for (int j_ = 0; j_ < WB; ++j_) t_[j_] = (row)[(i0) + j_ * SW];  \
        v = GATHER(t_);                                                                    \
    } while (0)
#endif
#define LOAD_BORDER(row, cols)                                                             \
    do {                                                                                   \
        REAL t_[WB];                                                                       \
        _Pragma("unroll") for (int j_ = 0; j_ < WB; ++j_) {                                \
            const int c_ = (cols)[j_];                                                     \
            t_[j_] = c_ < 0 ? (REAL)0 : (row)[c_];                                         \
        }                                                                                  \
        v = GATHER(t_);                                                                    \
    } while (0)
#define ACCUM(wk)                                                                          \
    do {                                                                                   \
        _Pragma("unroll") for (int cb = 0; cb < CB; ++cb) acc[cb] += (wk)[cb] * v;         \
    } while (0)
#endif

/* Source index of padded coordinate p on an axis of n pixels; -1 = zero padding. */
inline int src_index(int p, const int n)
{
#if MODE == MODE_ZEROS
    return (p >= 0 && p < n) ? p : -1;
#elif MODE == MODE_REPLICATE
    return p < 0 ? 0 : (p >= n ? n - 1 : p);
#elif MODE == MODE_CIRCULAR
    int q = p % n;
    return q < 0 ? q + n : q;
#elif MODE == MODE_REFLECT
    if (n == 1)
        return 0;
    const int period = 2 * n - 2;
    int q = p % period;
    if (q < 0)
        q += period;
    return q < n ? q : period - q;
#else /* MODE_SYMMETRIC */
    const int period = 2 * n;
    int q = p % period;
    if (q < 0)
        q += period;
    return q < n ? q : period - 1 - q;
#endif
}

__kernel void conv2d_direct(__global const IN_T *restrict x,
                            __global const REAL *restrict wp,
                            __global const REAL *restrict bp,
                            __global REAL *restrict y,
                            const int H, const int W, const int Ho, const int Wo,
                            const int cin_g, const int cout_g, const int n_cob,
                            const int groups, const int pad_top, const int pad_left)
{
    /* The last strip is shifted left to end at Wo (overlapping its neighbour, which
     * writes the same values): every strip is then full, and a strip that ends inside
     * the input never counts as a border strip because of lanes past Wo. */
    const int ox_start = (int)get_global_id(0) * WB;
    const int ox0 = (Wo >= WB && ox_start > Wo - WB) ? Wo - WB : ox_start;
    const int oy0 = (int)get_global_id(1) * RB;
    if (ox_start >= Wo || oy0 >= Ho)
        return;
    const int z = (int)get_global_id(2);
    const int cob = z % n_cob;
    const int ng = z / n_cob;
    const int g = ng % groups;
    const int n = ng / groups;
    const size_t plane = (size_t)H * (size_t)W;
    const size_t c_in = (size_t)cin_g * (size_t)groups;
    const size_t c_out = (size_t)cout_g * (size_t)groups;
    __global const IN_T *xg = x + ((size_t)n * c_in + (size_t)g * cin_g) * plane * CPLX;
    __global const REAL *wg = wp + (size_t)(g * n_cob + cob) * cin_g * (KH * KW * CB * CPLX);

#pragma unroll 1
    for (int oy = oy0; oy < oy0 + RB && oy < Ho; ++oy) {
        /* Is the whole receptive field of this strip inside the input? */
        const int iy0 = oy * SH - pad_top;
        const int rows_inside = iy0 >= 0 && iy0 + DH * (KH - 1) < H;
        const int ix0 = ox0 * SW - pad_left;
        const int cols_inside = ix0 >= 0 && ix0 + DW * (KW - 1) + STRIP_SPAN - 1 < W;

        RV acc[CB];
#if COMPLEX
        RV acci[CB];
#endif
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) {
            acc[cb] = (RV)(0);
#if COMPLEX
            acci[cb] = (RV)(0);
#endif
        }

        if (rows_inside && cols_inside) {
            /* interior: no index mapping, no zero taps; the common case on images */
            for (int ci = 0; ci < cin_g; ++ci) {
                __global const IN_T *xp = xg + (size_t)ci * plane * CPLX;
                __global const REAL *wc = wg + (size_t)ci * (KH * KW * CB * CPLX);
                KY_UNROLL
                for (int ky = 0; ky < KH; ++ky) {
                    __global const IN_T *row = xp + (size_t)((iy0 + ky * DH) * W) * CPLX;
                    __global const REAL *wr = wc + ky * (KW * CB * CPLX);
                    KX_UNROLL
                    for (int kx = 0; kx < KW; ++kx) {
                        DECL_V;
                        LOAD_INSIDE(row, ix0 + kx * DW);
                        ACCUM(wr + kx * (CB * CPLX));
                    }
                }
            }
        } else {
            /* border: rows and columns through the padding map */
            int roff[KH]; /* row offsets inside a plane; -1 marks a zero-padding row */
            for (int ky = 0; ky < KH; ++ky) {
                int iy = iy0 + ky * DH;
                if (!rows_inside)
                    iy = src_index(iy, H);
                roff[ky] = iy < 0 ? -1 : iy * W;
            }
            int coff[KW * WB]; /* mapped column per tap and lane; -1 = zero padding */
            if (!cols_inside) {
                for (int kx = 0; kx < KW; ++kx)
                    for (int j = 0; j < WB; ++j)
                        coff[kx * WB + j] = src_index(ix0 + kx * DW + j * SW, W);
            }
            for (int ci = 0; ci < cin_g; ++ci) {
                __global const IN_T *xp = xg + (size_t)ci * plane * CPLX;
                __global const REAL *wc = wg + (size_t)ci * (KH * KW * CB * CPLX);
                for (int ky = 0; ky < KH; ++ky) {
                    const int ro = roff[ky];
                    if (ro < 0)
                        continue;
                    __global const IN_T *row = xp + (size_t)ro * CPLX;
                    __global const REAL *wr = wc + ky * (KW * CB * CPLX);
                    KX_UNROLL
                    for (int kx = 0; kx < KW; ++kx) {
                        DECL_V;
                        /* taps of a border strip that stay inside load as a vector */
                        const int i0 = ix0 + kx * DW;
                        if (i0 >= 0 && i0 + STRIP_SPAN - 1 < W) {
                            LOAD_INSIDE(row, ix0 + kx * DW);
                        } else {
                            LOAD_BORDER(row, coff + kx * WB);
                        }
                        ACCUM(wr + kx * (CB * CPLX));
                    }
                }
            }
        }

        /* ---- bias and store (partial strips and channel blocks store only what exists) ---- */
        const int nw = Wo - ox0 < WB ? Wo - ox0 : WB;
#pragma unroll
        for (int cb = 0; cb < CB; ++cb) {
            if (cob * CB + cb >= cout_g)
                break;
            const size_t co = (size_t)g * cout_g + (size_t)(cob * CB + cb);
            __global REAL *yo = y + (((size_t)n * c_out + co) * Ho + oy) * (size_t)Wo * CPLX +
                                (size_t)ox0 * CPLX;
            RV r = acc[cb];
#if COMPLEX
            RV ri = acci[cb];
#if HAS_BIAS
            r += (RV)(bp[2 * ((g * n_cob + cob) * CB + cb)]);
            ri += (RV)(bp[2 * ((g * n_cob + cob) * CB + cb) + 1]);
#endif
            REAL tr[WB], ti[WB];
            STOREV_PRIVATE(r, tr);
            STOREV_PRIVATE(ri, ti);
            for (int j = 0; j < nw; ++j) {
                yo[2 * j] = tr[j];
                yo[2 * j + 1] = ti[j];
            }
#else
#if HAS_BIAS
            r += (RV)(bp[(g * n_cob + cob) * CB + cb]);
#endif
            if (nw == WB) {
                STOREV(r, yo);
            } else {
                REAL t[WB];
                STOREV_PRIVATE(r, t);
                for (int j = 0; j < nw; ++j)
                    yo[j] = t[j];
            }
#endif
        }
    } /* rows */
}
