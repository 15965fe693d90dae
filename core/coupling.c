/* coupling.c: inference passes of the affine couplings (checkerboard and channel, docs/model.md 2.3-2.4),
 * their s/t resnets (2.6) and flow batch norm (2.5). Backward passes live in train/layers.c. */
#include "internal.h"

#include <math.h>
#include <string.h>

/* Checkerboard mask value at (i, j): 1 marks the conditioning (unchanged) elements. */
static inline int mask_b(int i, int j, int parity) { return ((i + j + parity) & 1) == 0; }

/* out (2Ct, N, H, W) = resnet(in (Cin, N, H, W)), inference mode, folded weights. */
static void st_net(float *out, const float *in, const coupling *c, int N, const net_ws *ws)
{
    const int H = c->H, W = c->W;
    const size_t P = (size_t)N * H * W;
    float *h = ws->h, *t = ws->t;   /* (F, N, H, W) each */
    rnvpi_conv_forward_i(h, in, &c->i_in, NULL, ws, N, H, W);            /* h = in_conv(input) */
    static const affine_i relu_only = {0, NULL, NULL};
    for (int j = 0; j < c->K; j++) {
        /* t = bn_b(conv_a(relu(bn_a(h)))), bn_b folded into conv_a */
        rnvpi_conv_forward_i(t, h, &c->i_a[j], &c->i_bn_a[j], ws, N, H, W);
        /* h = h + conv_b(relu(t)) */
        rnvpi_conv_forward_acc(h, t, &c->i_b[j], &relu_only, ws, N, H, W, 1);
    }
    /* out = out_conv(relu(bn_out(h))) */
    rnvpi_conv_forward_i(out, h, &c->i_out, &c->i_bn_out, ws, N, H, W);
    (void)P;
}

/* Net input of a checkerboard coupling: netin (C+1, N, H, W) = concat(x * b, b). */
static void checker_input(float *netin, const float *x, const coupling *c, int N)
{
    const int H = c->H, W = c->W;
    const size_t HW = (size_t)H * W;
    for (int ch = 0; ch <= c->C; ch++)
        for (int n = 0; n < N; n++) {
            const float *src = x + ((size_t)ch * N + n) * HW;
            float *dst = netin + ((size_t)ch * N + n) * HW;
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    int b = mask_b(i, j, c->parity);
                    dst[i * W + j] = ch == c->C ? (float)b : b ? src[i * W + j] : 0.0f;
                }
        }
}

/* Pointers to the transformed channels of x and to the net input (Cin, N, H, W). */
static float *transformed_part(float *x, const coupling *c, int N, net_ws *ws, const float **netin)
{
    const size_t P = (size_t)N * c->H * c->W;
    if (c->kind == COUPLING_CHECKER) {
        checker_input(ws->netin, x, c, N);
        *netin = ws->netin;
        return x;
    }
    float *xa = x, *xb = x + (size_t)c->Ct * P;   /* channels [0, C/2) and [C/2, C) */
    *netin = c->parity == 0 ? xa : xb;
    return c->parity == 0 ? xb : xa;
}

void rnvpi_coupling_forward(float *x, double *ld, const coupling *c, int N, net_ws *ws)
{
    const int H = c->H, W = c->W, Ct = c->Ct;
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    const float *netin;
    float *xt = transformed_part(x, c, N, ws, &netin);   /* (Ct, N, H, W) */
    st_net(ws->out, netin, c, N, ws);
    const float *sraw = ws->out, *tt = ws->out + (size_t)Ct * P;
    const int chk = c->kind == COUPLING_CHECKER;
    for (int ch = 0; ch < Ct; ch++) {
        const float sc = c->scale[ch];
        const float mean = c->fbn_mean ? c->fbn_mean[ch] : 0.0f;
        const float inv = c->fbn_mean ? c->fbn_inv_std[ch] : 1.0f;
        for (int n = 0; n < N; n++) {
            const size_t base = ((size_t)ch * N + n) * HW;
            double lsum = 0;
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    if (chk && mask_b(i, j, c->parity)) continue;
                    size_t q = base + (size_t)i * W + j;
                    float s = sc * tanhf(sraw[q]);                /* s = scale[c] * tanh(s_raw) */
                    float y = xt[q] * expf(s) + tt[q];            /* x * exp(s) + t */
                    xt[q] = (y - mean) * inv;                     /* flow batch norm */
                    lsum += s;
                }
            ld[n] += lsum;
        }
    }
    if (c->fbn_mean)
        for (int n = 0; n < N; n++) ld[n] += c->fbn_logdet;
}

void rnvpi_coupling_inverse(float *y, const coupling *c, int N, net_ws *ws)
{
    const int H = c->H, W = c->W, Ct = c->Ct;
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    const float *netin;
    float *yt = transformed_part(y, c, N, ws, &netin);   /* conditioning part is unchanged */
    st_net(ws->out, netin, c, N, ws);
    const float *sraw = ws->out, *tt = ws->out + (size_t)Ct * P;
    const int chk = c->kind == COUPLING_CHECKER;
    for (int ch = 0; ch < Ct; ch++) {
        const float sc = c->scale[ch];
        const float mean = c->fbn_mean ? c->fbn_mean[ch] : 0.0f;
        const double std = c->fbn_mean ? 1.0 / c->fbn_inv_std[ch] : 1.0;
        for (int n = 0; n < N; n++) {
            const size_t base = ((size_t)ch * N + n) * HW;
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    if (chk && mask_b(i, j, c->parity)) continue;
                    size_t q = base + (size_t)i * W + j;
                    float v = (float)(yt[q] * std + mean);        /* x * sqrt(var + eps) + mean */
                    float s = sc * tanhf(sraw[q]);
                    yt[q] = (v - tt[q]) * expf(-s);               /* (y - t) * exp(-s) */
                }
        }
    }
}

/* Floats of workspace a coupling needs for N images, per buffer (SIZE_MAX: does not fit). */
void rnvpi_coupling_ws_size(const coupling *c, int N, size_t *netin, size_t *feat, size_t *out, size_t *col)
{
    const size_t P = sz_mul((size_t)N, (size_t)c->H * c->W);
    *netin = c->kind == COUPLING_CHECKER ? sz_mul((size_t)c->Cin, P) : 0;
    *feat = sz_mul((size_t)c->F, P);
    *out = sz_mul((size_t)2 * c->Ct, P);
    size_t m = rnvpi_conv_col_floats(&c->i_in, N, c->H, c->W);
    for (int j = 0; j < c->K; j++) {
        size_t a = rnvpi_conv_col_floats(&c->i_a[j], N, c->H, c->W), b = rnvpi_conv_col_floats(&c->i_b[j], N, c->H, c->W);
        if (a > m) m = a;
        if (b > m) m = b;
    }
    size_t o = rnvpi_conv_col_floats(&c->i_out, N, c->H, c->W);
    *col = m > o ? m : o;
}
