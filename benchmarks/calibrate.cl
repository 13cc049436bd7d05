/* Calibration kernels for benchmarks/opencl_kernels.py: what the device delivers right
 * now (the machine is shared, so kernel times are related to these in the same run).
 *
 * fma_peak: 8 independent float8 multiply-add chains, 64 steps each per work-item
 *           (2 * 8 * 8 * 64 = 8192 flops per item); one float written per item.
 * copy8:    out[i] = x[i] * s, float8 per item (read + write bandwidth).
 * Unaligned float8 through an aligned(4) pointer type: PoCL leaves vload8/vstore8 as calls.
 */

typedef float f8u __attribute__((ext_vector_type(8), aligned(4)));

__kernel void fma_peak(__global const float *restrict x, __global float *restrict out) {
    const size_t gid = get_global_id(0);
    float8 a0 = (float8)(x[0]), a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3;
    float8 a4 = a0 + 4, a5 = a0 + 5, a6 = a0 + 6, a7 = a0 + 7;
    const float8 b = (float8)(x[1]), c = (float8)(x[2]);
    for (int i = 0; i < 64; ++i) {
        a0 = a0 * b + c; a1 = a1 * b + c; a2 = a2 * b + c; a3 = a3 * b + c;
        a4 = a4 * b + c; a5 = a5 * b + c; a6 = a6 * b + c; a7 = a7 * b + c;
    }
    const float8 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    out[gid] = s.s0 + s.s7;
}

__kernel void copy8(__global const float *restrict x, __global float *restrict out,
                    const float s) {
    const size_t i = get_global_id(0) * 8;
    *(__global f8u *)(out + i) = *(__global const f8u *)(x + i) * s;
}
