/* gemm_local: 1x1 convolutions (stride 1, no padding) as a GEMM tiled through local
 * memory, for GPU-type devices.
 *
 * Per image n and group g: out[m, p] = sum_k w[g, m, k] * x[n, g, k, p] (+ bias[m]),
 * M = cout_g output channels, K = cin_g input channels, P = h*w contiguous pixels. A
 * work-group computes a TM x TN tile (TM = ly*RM channels, TN = lx*RN pixels) and walks K
 * in chunks of TK: it loads the TK x TM slice of the weights and the TK x TN slice of the
 * input into local memory, waits at a barrier, and each item accumulates its RM x RN
 * outputs from local memory (16 scalar accumulators with RM = RN = 4), in place of
 * pointwise.cl / dense_gemm.cl's float8 register tiles, which are shaped for a CPU.
 *
 * Defines (they change the code): TK, RM, RN, HAS_BIAS. Sizes and the work-group size are
 * runtime values: the tile follows get_local_size(), so a launch the driver shrinks still
 * covers its outputs.
 *
 * Layouts (row-major, contiguous):
 *   x     (n, groups*cin_g, p)
 *   w     (groups*cout_g, cin_g)
 *   bias  (groups*cout_g,)           read only when HAS_BIAS
 *   out   (n, groups*cout_g, p)
 *   smem  local, at least TK*(TM + TN) floats for the launch's local size
 *
 * Work-group (gx, gy, gz) of lx x ly x 1 items: pixels gx*TN.., channels gy*TM.., and
 * gz = n*groups + g. Item (ix, iy) computes pixels gx*TN + ix + j*lx (j < RN) and channels
 * gy*TM + iy + i*ly (i < RM): neighbouring items take neighbouring pixels, so loads and
 * stores coalesce and local reads hit distinct banks (or one broadcast address). Items
 * past the edges load zeros and wait like the others, and store nothing; whole
 * work-groups past the last plane return at once (the local size along z is 1).
 */

#ifndef TK
#error "-D TK=... is required (set by the host)"
#endif
#ifndef RM
#error "-D RM=... is required (set by the host)"
#endif
#ifndef RN
#error "-D RN=... is required (set by the host)"
#endif
#ifndef HAS_BIAS
#error "-D HAS_BIAS=... is required (set by the host)"
#endif

__kernel void gemm_local(__global const float *restrict x, __global const float *restrict w,
                         __global const float *restrict bias, __global float *restrict out,
                         __local float *smem, const int n_img, const int groups,
                         const int cin_g, const int cout_g, const int p) {
    const int lx = get_local_size(0);
    const int ly = get_local_size(1);
    const int ix = get_local_id(0);
    const int iy = get_local_id(1);
    const int lid = iy * lx + ix;
    const int nl = lx * ly;
    const int z = get_global_id(2);
    if (z >= n_img * groups) return; /* the whole work-group: local size z is 1 */
    const int g = z % groups;
    const int n = z / groups;
    const int tm = ly * RM;
    const int tn = lx * RN;
    __local float *as = smem;           /* (TK, tm) */
    __local float *bs = smem + TK * tm; /* (TK, tn) */
    const int m0 = get_group_id(1) * tm;
    const int p0 = get_group_id(0) * tn;
    __global const float *xg = x + (size_t)z * cin_g * p;
    __global const float *wg = w + (size_t)g * cout_g * cin_g;

    float acc[RM][RN];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < RN; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < cin_g; k0 += TK) {
        /* weights: consecutive items read consecutive k of one channel */
        for (int i = lid; i < TK * tm; i += nl) {
            const int mm = i / TK;
            const int kk = i - mm * TK;
            const int m = m0 + mm;
            const int k = k0 + kk;
            as[kk * tm + mm] = (m < cout_g && k < cin_g) ? wg[(size_t)m * cin_g + k] : 0.0f;
        }
        /* input: consecutive items read consecutive pixels of one channel */
        for (int i = lid; i < TK * tn; i += nl) {
            const int kk = i / tn;
            const int pp = p0 + (i - kk * tn);
            const int k = k0 + kk;
            bs[i] = (k < cin_g && pp < p) ? xg[(size_t)k * p + pp] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
#pragma unroll 4
        for (int kk = 0; kk < TK; ++kk) {
            float a[RM], b[RN];
#pragma unroll
            for (int i = 0; i < RM; ++i) a[i] = as[kk * tm + iy + i * ly];
#pragma unroll
            for (int j = 0; j < RN; ++j) b[j] = bs[kk * tn + ix + j * lx];
#pragma unroll
            for (int i = 0; i < RM; ++i)
#pragma unroll
                for (int j = 0; j < RN; ++j) acc[i][j] += a[i] * b[j];
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* the next chunk overwrites the tiles */
    }

    const int cout = groups * cout_g;
#pragma unroll
    for (int i = 0; i < RM; ++i) {
        const int m = m0 + iy + i * ly;
        if (m < cout_g) {
#if HAS_BIAS
            const float b = bias[g * cout_g + m];
#else
            const float b = 0.0f;
#endif
            __global float *dst = out + ((size_t)n * cout + g * cout_g + m) * p;
#pragma unroll
            for (int j = 0; j < RN; ++j) {
                const int pp = p0 + ix + j * lx;
                if (pp < p) dst[pp] = acc[i][j] + b;
            }
        }
    }
}
