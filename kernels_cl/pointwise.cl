/* pointwise: 1x1 convolutions with stride 1 and no padding, a plain GEMM per image and
 * group: out[co, p] = bias[co] + sum_ci w[co, ci] * x[ci, p] over the P = H*W pixels.
 *
 * Unlike dense_gemm (float8 vectors of output channels, input values broadcast), the
 * vectors here run along the pixels, which are contiguous in NCHW: each work-item keeps
 * COT output channels x PV float8 pixel vectors of accumulators, and for every input
 * channel loads PV pixel vectors and broadcasts COT weights. Results are stored as
 * whole float8 pixel vectors instead of being scattered one float per channel, and
 * 12 accumulators (6 x 2) leave the two FMA pipes slack over their latency, where
 * dense_gemm's 1x1 tile had 8. On N=8 128->256 56x56 (the bench's W8, timed the bench's
 * way) the kernel ran 11.2-12.8 ms against dense_gemm's 12.3-14.5 in the same runs.
 *
 * Layouts (row-major, contiguous):
 *   x     (N, G*CIN_G, P)
 *   wp    (G, NCB, CIN_G, COT)   weights packed on the host, zero past COUT_G
 *   bp    (G, NCB*COT)           bias packed likewise (zeros without bias)
 *   out   (N, G*COUT_G, P)
 * P is a kernel argument (one build serves every image size of a layer), or a build
 * define with FIXED_SIZES.
 * Work-item (cb, pg, ng): channels cb*COT.. of group g = ng % G of image n = ng / G,
 * pixels pg*PV*8 - lead... The channel blocks vary fastest, so a work-group runs every
 * block over the same pixels while they sit in L1. Vectors are gathered from and stored
 * as scalars, which LLVM merges into unaligned vector moves (P need not be a multiple of
 * 8); the first and last pixel groups of a plane load and store lane by lane.
 * `lead`: the floats by which the input lies past a cache line. The host places the
 * output array as far into its buffer, and pixel groups start `lead` pixels before the
 * plane, so that they start on the cache lines of both: no load or store straddles
 * two lines.
 */

#ifndef G
#error "-D G=... is required (set by the host)"
#endif
#ifndef CIN_G
#error "-D CIN_G=... is required (set by the host)"
#endif
#ifndef COUT_G
#error "-D COUT_G=... is required (set by the host)"
#endif
/* The plane size: the argument p_arg, or with FIXED_SIZES the define P. */
#ifdef FIXED_SIZES
#ifndef P
#error "-D P=... is required with FIXED_SIZES (set by the host)"
#endif
#else
#define P p_arg
#endif
#ifndef COT
#error "-D COT=... is required (set by the host)"
#endif
#ifndef PV
#error "-D PV=... is required (set by the host)"
#endif
#ifndef NCB
#error "-D NCB=... is required (set by the host)"
#endif

#define LOAD8(p) ((float8)((p)[0], (p)[1], (p)[2], (p)[3], (p)[4], (p)[5], (p)[6], (p)[7]))

/* One input channel's multiply-adds: xv (PV float8) times COT broadcast weights. */
#define MULTIPLY_ADD(xv, w)                                                                \
    _Pragma("unroll") for (int o = 0; o < COT; ++o) {                                      \
        const float wv = (w)[o];                                                           \
        _Pragma("unroll") for (int v = 0; v < PV; ++v) acc[o][v] += wv * (xv)[v];          \
    }

__kernel void pointwise(__global const float *restrict x, __global const float *restrict wp,
                        __global const float *restrict bp, __global float *restrict out,
                        const int lead, const int p_arg) {
    const int cb = get_global_id(0);
    const int p0 = get_global_id(1) * (PV * 8) - lead;
    const int ng = get_global_id(2);
    if (cb >= NCB || p0 >= P) return;
    const int g = ng % G;
    __global const float *xp = x + (size_t)ng * CIN_G * P + p0;
    __global const float *w = wp + (size_t)(g * NCB + cb) * (CIN_G * COT);
    __global const float *b = bp + (size_t)(g * NCB + cb) * COT;
    float8 acc[COT][PV];
#pragma unroll
    for (int o = 0; o < COT; ++o) {
#pragma unroll
        for (int v = 0; v < PV; ++v) acc[o][v] = (float8)(b[o]);
    }
    /* Two copies of the loop: one loop with the load choice inside ran 3.2x slower (LLVM
     * did not unswitch it, and the lane buffer cost the accumulators their registers). */
    const bool whole = p0 >= 0 && p0 + PV * 8 <= P;
    if (whole) {
        for (int ci = 0; ci < CIN_G; ++ci) {
            float8 xv[PV];
#pragma unroll
            for (int v = 0; v < PV; ++v) xv[v] = LOAD8(xp + v * 8);
            MULTIPLY_ADD(xv, w)
            xp += P;
            w += COT;
        }
    } else {
        for (int ci = 0; ci < CIN_G; ++ci) {
            float t[PV * 8];
#pragma unroll
            for (int l = 0; l < PV * 8; ++l) t[l] = p0 + l >= 0 && p0 + l < P ? xp[l] : 0.0f;
            float8 xv[PV];
#pragma unroll
            for (int v = 0; v < PV; ++v) xv[v] = LOAD8(t + v * 8);
            MULTIPLY_ADD(xv, w)
            xp += P;
            w += COT;
        }
    }
    __global float *dst = out + lead + ((size_t)ng * COUT_G + cb * COT) * P + p0;
#pragma unroll
    for (int o = 0; o < COT; ++o) {
        if (cb * COT + o >= COUT_G) break;
        __global float *d = dst + (size_t)o * P;
#pragma unroll
        for (int v = 0; v < PV; ++v) {
            float t[8];
            t[0] = acc[o][v].s0; t[1] = acc[o][v].s1; t[2] = acc[o][v].s2; t[3] = acc[o][v].s3;
            t[4] = acc[o][v].s4; t[5] = acc[o][v].s5; t[6] = acc[o][v].s6; t[7] = acc[o][v].s7;
            if (whole) {
#pragma unroll
                for (int l = 0; l < 8; ++l) d[v * 8 + l] = t[l];
            } else {
#pragma unroll
                for (int l = 0; l < 8; ++l)
                    if (p0 + v * 8 + l >= 0 && p0 + v * 8 + l < P) d[v * 8 + l] = t[l];
            }
        }
    }
}
