/* dw_pad: copy input planes into zero-padded planes, so that the depthwise kernel that
 * follows (dw_direct with no padding) addresses every work-item's rows and float8
 * columns directly. Its border path (row and column maps, a gathered float8 per load)
 * otherwise takes the outer items of every plane: on 56x56 maps with a 7x7 kernel, 2 of
 * 7 column items and 2 of 14 row items, and most of the kernel's time.
 *
 * Every size is a -D define (CNN feature maps repeat their sizes).
 *
 * Layouts (row-major, contiguous):
 *   x     (PLANES, H, W)       input planes (N * C_in of an NCHW input)
 *   xp    (PLANES, HP, WP)     the same planes with PADT rows above, HP - H - PADT below,
 *                              PADL columns left and WP - W - PADL right, all zeros
 *
 * Work-item (pr, plane): padded row pr of one plane, copied whole (the column loop has
 * constant bounds and vectorises).
 */

#ifndef PLANES
#error "-D PLANES=... is required (set by the host)"
#endif
#ifndef H
#error "-D H=... is required (set by the host)"
#endif
#ifndef W
#error "-D W=... is required (set by the host)"
#endif
#ifndef HP
#error "-D HP=... is required (set by the host)"
#endif
#ifndef WP
#error "-D WP=... is required (set by the host)"
#endif
#ifndef PADT
#error "-D PADT=... is required (set by the host)"
#endif
#ifndef PADL
#error "-D PADL=... is required (set by the host)"
#endif

__kernel void dw_pad(__global const float *restrict x, __global float *restrict xp) {
    const int pr = get_global_id(0);
    const int plane = get_global_id(1);
    if (pr >= HP || plane >= PLANES) return;
    __global float *dst = xp + ((size_t)plane * HP + pr) * WP;
    const int r = pr - PADT;
    if (r < 0 || r >= H) {
        for (int c = 0; c < WP; ++c) dst[c] = 0.0f;
        return;
    }
    __global const float *src = x + ((size_t)plane * H + r) * W;
    for (int c = 0; c < PADL; ++c) dst[c] = 0.0f;
    for (int c = 0; c < W; ++c) dst[PADL + c] = src[c];
    for (int c = PADL + W; c < WP; ++c) dst[c] = 0.0f;
}
