/* conv.c: inference convolutions in the (C, N, H, W) layout: one im2col over the whole batch
 * with the preceding batch norm + ReLU fused in, then one cblas_sgemm. Leaves out training. */
#include "internal.h"

#include <cblas.h>
#include <stddef.h>
#include <string.h>

/* dst[p] = relu(a * src[p] + s), p < n: the fused batch norm + ReLU; cloned for AVX2. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void affine_relu(float *restrict dst, const float *restrict src, float a, float s, ptrdiff_t n)
{
    for (ptrdiff_t p = 0; p < n; p++) {
        float v = a * src[p] + s;
        dst[p] = v > 0.0f ? v : 0.0f;
    }
}

/* col (cin*kh*kw, N*H*W) from in (cin, N, H, W), zero padding (kh/2, kw/2), each value
 * passed through pre = relu(a*x + s) (a == NULL: relu only) when pre != NULL.
 * Each row is the whole batch's plane shifted by one offset: one long contiguous pass
 * (vectorised), then the positions whose source falls outside the image are zeroed. */
static void im2col_pre(float *col, const float *in, const affine_i *pre, int cin, int kh, int kw,
                       int N, int H, int W)
{
    const int ph = kh / 2, pw = kw / 2;
    const ptrdiff_t HW = (ptrdiff_t)H * W, P = (ptrdiff_t)N * HW;
    for (int ci = 0; ci < cin; ci++) {
        const float a = pre && pre->a ? pre->a[ci] : 1.0f, s = pre && pre->a ? pre->s[ci] : 0.0f;
        const float *src = in + ci * P;   /* (N, H, W) */
        for (int di = 0; di < kh; di++)
            for (int dj = 0; dj < kw; dj++) {
                float *row = col + ((ptrdiff_t)(ci * kh + di) * kw + dj) * P;   /* (N, H, W) */
                const int oi = di - ph, oj = dj - pw;
                if (oi <= -H || oi >= H || oj <= -W || oj >= W) {   /* tap entirely in the padding */
                    memset(row, 0, sizeof(float) * (size_t)P);
                    continue;
                }
                const ptrdiff_t shift = (ptrdiff_t)oi * W + oj;
                const ptrdiff_t p0 = shift < 0 ? -shift : 0, p1 = shift > 0 ? P - shift : P;
                if (p0 > 0) memset(row, 0, sizeof(float) * (size_t)p0);
                if (p1 < P) memset(row + p1, 0, sizeof(float) * (size_t)(P - p1));
                const float *sp = src + shift;
                if (!pre)
                    memcpy(row + p0, sp + p0, sizeof(float) * (size_t)(p1 - p0));
                else
                    affine_relu(row + p0, sp + p0, a, s, p1 - p0);
                /* zero what came from another row or image: rows i with i + oi outside
                 * [0, H), columns j with j + oj outside [0, W) */
                for (int n = 0; n < N; n++) {
                    float *img = row + n * HW;
                    if (oi < 0) memset(img, 0, sizeof(float) * (size_t)(-oi * W));
                    if (oi > 0) memset(img + (H - oi) * W, 0, sizeof(float) * (size_t)(oi * W));
                    if (oj)
                        for (int i = 0; i < H; i++) {
                            float *r = img + (ptrdiff_t)i * W;
                            if (oj < 0) for (int j = 0; j < -oj; j++) r[j] = 0;
                            else for (int j = W - oj; j < W; j++) r[j] = 0;
                        }
                }
            }
    }
}

void conv_forward_i(float *out, const float *in, const conv_i *cv, const affine_i *pre, float *col,
                    int N, int H, int W)
{
    conv_forward_acc(out, in, cv, pre, col, N, H, W, 0);
}

void conv_forward_acc(float *out, const float *in, const conv_i *cv, const affine_i *pre, float *col,
                      int N, int H, int W, int accumulate)
{
    const int P = N * H * W, K = cv->cin * cv->kh * cv->kw;
    const float *B = in;
    if (cv->kh != 1 || cv->kw != 1 || pre) {
        im2col_pre(col, in, pre, cv->cin, cv->kh, cv->kw, N, H, W);
        B = col;
    }
    /* out (cout, P) (+)= bias; then += w (cout, K) x B (K, P) */
    for (int o = 0; o < cv->cout; o++) {
        float *r = out + (size_t)o * P, bo = cv->b[o];
        if (accumulate)
            for (int p = 0; p < P; p++) r[p] += bo;
        else
            for (int p = 0; p < P; p++) r[p] = bo;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cv->cout, P, K, 1.0f, cv->w, K, B, P, 1.0f,
                out, P);
}

size_t conv_col_floats(const conv_i *cv, int N, int H, int W)
{
    return (size_t)cv->cin * cv->kh * cv->kw * N * H * W;
}
