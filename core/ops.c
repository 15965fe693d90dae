/* ops.c: the flow's operations that inference (core/) and training (train/) share, each written
 * once: squeeze, the checkerboard net input, the affine coupling map and its inverse (with the
 * flow batch norm at inference fused in: one pass), the flow batch norm's normalisation, weight normalisation (declared in internal.h with the inline ones).
 * Leaves out convolutions (conv.c), the couplings' order (flow.c) and backward passes (train/). */
#include "internal.h"

#include <string.h>

/* ---------------------------------------------------------------- squeeze (docs/model.md 2.1) */

void rnvpi_squeeze_forward(float *out, const float *in, int C, int N, int H, int W)
{
    const int h2 = H / 2, w2 = W / 2;
    for (int c = 0; c < C; c++)
        for (int dh = 0; dh < 2; dh++)
            for (int dw = 0; dw < 2; dw++) {
                /* out[c*4 + dh*2 + dw][i][j] = in[c][2i + dh][2j + dw] */
                float *o = out + (size_t)(c * 4 + dh * 2 + dw) * N * h2 * w2;
                for (int n = 0; n < N; n++) {
                    const float *src = in + ((size_t)c * N + n) * H * W;
                    for (int i = 0; i < h2; i++)
                        for (int j = 0; j < w2; j++)
                            *o++ = src[(size_t)(2 * i + dh) * W + 2 * j + dw];
                }
            }
}

void rnvpi_squeeze_inverse(float *out, const float *in, int C, int N, int H, int W)
{
    const int h2 = H / 2, w2 = W / 2;
    for (int c = 0; c < C; c++)
        for (int dh = 0; dh < 2; dh++)
            for (int dw = 0; dw < 2; dw++) {
                const float *o = in + (size_t)(c * 4 + dh * 2 + dw) * N * h2 * w2;
                for (int n = 0; n < N; n++) {
                    float *dst = out + ((size_t)c * N + n) * H * W;
                    for (int i = 0; i < h2; i++)
                        for (int j = 0; j < w2; j++)
                            dst[(size_t)(2 * i + dh) * W + 2 * j + dw] = *o++;
                }
            }
}

/* ---------------------------------------------------------------- couplings (2.3, 2.4) */

int rnvpi_transformed_count(int parity, int H, int W)
{
    if (parity < 0) return H * W;
    int cnt = 0;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) cnt += (i + j + parity) & 1;
    return cnt;
}

void rnvpi_checker_input(float *netin, const float *x, int C, int parity, int N, int H, int W)
{
    const size_t HW = (size_t)H * W;
    for (int ch = 0; ch <= C; ch++)
        for (int n = 0; n < N; n++) {
            const float *src = x + ((size_t)ch * N + n) * HW;   /* not read for ch == C */
            float *dst = netin + ((size_t)ch * N + n) * HW;
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    const int b = !((i + j + parity) & 1);
                    dst[i * W + j] = ch == C ? (float)b : b ? src[i * W + j] : 0.0f;
                }
        }
}

void rnvpi_affine_forward(float *y, double *ld, const float *x, const float *st, const float *scale,
                          const float *mean, const float *inv_std, int parity, int Ct, int N, int H, int W)
{
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    if (x != y) memcpy(y, x, sizeof(float) * Ct * P);   /* y = x where not transformed */
    for (int n = 0; n < N; n++) {
        double sum = 0;
        for (int c = 0; c < Ct; c++) {
            const size_t off = c * P + n * HW;
            const float *sr = st + off, *t = st + Ct * P + off, *xc = x + off;
            float *yc = y + off;
            const float sc = scale[c];
            const float m = mean ? mean[c] : 0.0f, is = mean ? inv_std[c] : 1.0f;
            for (int i = 0; i < H; i++)
                for (int j = RNVPI_ROW_START(parity, i); j < W; j += RNVPI_ROW_STEP(parity)) {
                    const int q = i * W + j;
                    /* s = scale tanh(s_raw); y = x exp(s) + t; ld += s */
                    const float s = sc * tanhf(sr[q]);
                    const float v = xc[q] * expf(s) + t[q];
                    yc[q] = mean ? (v - m) * is : v;   /* the flow batch norm, as rnvpi_fbn_normalize */
                    sum += s;
                }
        }
        ld[n] += sum;
    }
}

void rnvpi_affine_inverse(float *x, const float *y, const float *st, const float *scale, const float *mean,
                          const float *inv_std, int parity, int Ct, int N, int H, int W)
{
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    if (x != y) memcpy(x, y, sizeof(float) * Ct * P);
    for (int c = 0; c < Ct; c++) {
        const float sc = scale[c];
        /* the flow batch norm's inverse first, y <- y sqrt(var + eps) + mean (in double) */
        const double sd = mean ? 1.0 / inv_std[c] : 1.0, m = mean ? mean[c] : 0.0;
        for (int n = 0; n < N; n++) {
            const size_t off = c * P + n * HW;
            const float *sr = st + off, *t = st + Ct * P + off, *yc = y + off;
            float *xc = x + off;
            for (int i = 0; i < H; i++)
                for (int j = RNVPI_ROW_START(parity, i); j < W; j += RNVPI_ROW_STEP(parity)) {
                    const int q = i * W + j;
                    const float s = sc * tanhf(sr[q]);
                    const float v = mean ? (float)(yc[q] * sd + m) : yc[q];
                    xc[q] = (v - t[q]) * expf(-s);   /* x = (y - t) exp(-s) */
                }
        }
    }
}

/* ---------------------------------------------------------------- flow batch norm (2.5) */

void rnvpi_fbn_normalize(float *x, const float *mean, const float *inv_std, int parity, int Ct, int N,
                         int H, int W)
{
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    for (int c = 0; c < Ct; c++) {
        const float m = mean[c], is = inv_std[c];
        for (int n = 0; n < N; n++) {
            float *xc = x + c * P + n * HW;
            for (int i = 0; i < H; i++)
                for (int j = RNVPI_ROW_START(parity, i); j < W; j += RNVPI_ROW_STEP(parity))
                    xc[i * W + j] = (xc[i * W + j] - m) * is;   /* x <- (x - mean) inv_std */
        }
    }
}

/* ---------------------------------------------------------------- weight normalisation (2.6) */

void rnvpi_wn_weights(float *w, float *inv_norm, const conv_p *p, const float *mul)
{
    const size_t K = (size_t)p->cin * p->kh * p->kw;
    for (int o = 0; o < p->cout; o++) {
        const float *v = p->v + o * K;
        double nrm = 0;
        for (size_t i = 0; i < K; i++) nrm += (double)v[i] * v[i];
        const double inv = nrm > 0 ? 1.0 / sqrt(nrm) : 0.0;
        if (inv_norm) inv_norm[o] = (float)inv;
        const double f = p->g[o] * inv * (mul ? mul[o] : 1.0);
        /* w[o] = g[o] * v[o] / ||v[o]|| (* mul[o]) */
        for (size_t i = 0; i < K; i++) w[o * K + i] = (float)(f * v[i]);
    }
}
