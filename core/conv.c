/* conv.c: inference convolutions in the (C, N, H, W) layout: one im2col over the whole batch
 * with the preceding batch norm + ReLU fused in, then one cblas_sgemm. Leaves out training. */
#include "internal.h"

#include <cblas.h>
#include <string.h>

/* col (cin*kh*kw, N*H*W) from in (cin, N, H, W), zero padding (kh/2, kw/2), each value
 * passed through pre = relu(a*x + s) (a == NULL: relu only) when pre != NULL. */
static void im2col_pre(float *col, const float *in, const affine_i *pre, int cin, int kh, int kw,
                       int N, int H, int W)
{
    const int ph = kh / 2, pw = kw / 2;
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    for (int ci = 0; ci < cin; ci++) {
        const float a = pre && pre->a ? pre->a[ci] : 1.0f, s = pre && pre->a ? pre->s[ci] : 0.0f;
        const int relu = pre != NULL;
        for (int di = 0; di < kh; di++)
            for (int dj = 0; dj < kw; dj++) {
                float *row = col + ((size_t)(ci * kh + di) * kw + dj) * P;   /* (N, H, W) */
                const int oj = dj - pw;
                const int j0 = oj < 0 ? -oj : 0, j1 = oj > 0 ? W - oj : W;
                for (int n = 0; n < N; n++) {
                    const float *src = in + (size_t)ci * P + (size_t)n * HW;
                    float *dst = row + (size_t)n * HW;
                    for (int i = 0; i < H; i++) {
                        const int si = i + di - ph;
                        float *d = dst + (size_t)i * W;
                        if (si < 0 || si >= H) {
                            memset(d, 0, sizeof(float) * (size_t)W);
                            continue;
                        }
                        const float *sr = src + (size_t)si * W + oj;
                        for (int j = 0; j < j0; j++) d[j] = 0;
                        if (relu)
                            for (int j = j0; j < j1; j++) {
                                float v = a * sr[j] + s;
                                d[j] = v > 0 ? v : 0;
                            }
                        else
                            memcpy(d + j0, sr + j0, sizeof(float) * (size_t)(j1 - j0));
                        for (int j = j1; j < W; j++) d[j] = 0;
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
