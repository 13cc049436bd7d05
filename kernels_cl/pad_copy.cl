/* pad_copy: input planes copied with their padding built in, any padding mode, for a
 * kernel that then reads every window without checks (dense_flat).
 *
 * Layouts (row-major, contiguous):
 *   x     (PLANES, H, W)      input planes (N * C of an NCHW input; PLANES and H are
 *                             arguments, the widths defines)
 *   rmap  (HP,) int           padded row -> source row, -1 = zero (every padding mode)
 *   cmap  (WP,) int           padded column -> source column, -1 = zero
 *   xp    (PLANES, HP, WP)    xp[z, pr, pc] = x[z, rmap[pr], cmap[pc]], 0 where a map is -1
 * The columns PADL .. PADL+W-1 map to 0 .. W-1 in every mode, so the middle of a row is
 * a plain copy with constant bounds (it vectorises); only the PADL columns left and the
 * WP-PADL-W right go through the map.
 * Work-item (pr, z): padded row pr of plane z.
 */

#ifndef W
#error "-D W=... is required (set by the host)"
#endif
#ifndef WP
#error "-D WP=... is required (set by the host)"
#endif
#ifndef PADL
#error "-D PADL=... is required (set by the host)"
#endif

__kernel void pad_copy(__global const float *restrict x, __global const int *restrict rmap,
                       __global const int *restrict cmap, __global float *restrict xp,
                       const int planes, const int h, const int hp) {
    const int pr = get_global_id(0);
    const int z = get_global_id(1);
    if (pr >= hp || z >= planes) return;
    __global float *dst = xp + ((size_t)z * hp + pr) * WP;
    const int r = rmap[pr];
    if (r < 0) {
        for (int pc = 0; pc < WP; ++pc) dst[pc] = 0.0f;
        return;
    }
    __global const float *src = x + ((size_t)z * h + r) * W;
    for (int pc = 0; pc < PADL; ++pc) {
        const int m = cmap[pc];
        dst[pc] = m < 0 ? 0.0f : src[m];
    }
    for (int c = 0; c < W; ++c) dst[PADL + c] = src[c];
    for (int pc = PADL + W; pc < WP; ++pc) {
        const int m = cmap[pc];
        dst[pc] = m < 0 ? 0.0f : src[m];
    }
}
