/* coupling.c: inference passes of the affine couplings (checkerboard and channel, docs/model.md 2.3-2.4),
 * their s/t resnets (2.6) and flow batch norm (2.5). Backward passes live in train/layers.c. */
#include "internal.h"

#include <string.h>

/* out (2Ct, N, H, W) = resnet(in (Cin, N, H, W)), inference mode, folded weights. */
static void st_net(float *out, const float *in, const coupling *c, int N, const net_ws *ws)
{
    const int H = c->H, W = c->W;
    const size_t P = (size_t)N * H * W;
    float *h = ws->h, *t = ws->t;   /* (F, N, H, W) each */
    rnvpi_conv_forward_i(h, in, &c->i_in, NULL, ws, N, H, W);            /* h = in_conv(input) */
    /* t = bn_b(conv_a(relu(bn_a(h)))) (bn_b folded into conv_a), h = h + conv_b(relu(t)) */
    rnvpi_conv_resblocks(h, t, c->K, c->i_a, c->i_bn_a, c->i_b, ws, N, H, W);
    /* out = out_conv(relu(bn_out(h))) */
    rnvpi_conv_forward_i(out, h, &c->i_out, &c->i_bn_out, ws, N, H, W);
    (void)P;
}

/* Pointers to the transformed channels of x and to the net input (Cin, N, H, W). */
static float *transformed_part(float *x, const coupling *c, int N, net_ws *ws, const float **netin)
{
    const size_t P = (size_t)N * c->H * c->W;
    if (c->kind == COUPLING_CHECKER) {
        rnvpi_checker_input(ws->netin, x, c->C, c->parity, N, c->H, c->W);
        *netin = ws->netin;
        return x;
    }
    float *xa = x, *xb = x + (size_t)c->Ct * P;   /* channels [0, C/2) and [C/2, C) */
    *netin = c->parity == 0 ? xa : xb;
    return c->parity == 0 ? xb : xa;
}

void rnvpi_coupling_forward(float *x, double *ld, const coupling *c, int N, net_ws *ws)
{
    const int q = rnvpi_mask_parity(c);
    const float *netin;
    float *xt = transformed_part(x, c, N, ws, &netin);   /* (Ct, N, H, W) */
    st_net(ws->out, netin, c, N, ws);
    /* the affine map and the flow batch norm in one pass */
    rnvpi_affine_forward(xt, ld, xt, ws->out, c->scale, c->fbn_mean, c->fbn_inv_std, q, c->Ct, N, c->H, c->W);
    if (c->fbn_mean)
        for (int n = 0; n < N; n++) ld[n] += c->fbn_logdet;
}

void rnvpi_coupling_inverse(float *y, const coupling *c, int N, net_ws *ws)
{
    const int q = rnvpi_mask_parity(c);
    const float *netin;
    float *yt = transformed_part(y, c, N, ws, &netin);   /* the conditioning part is unchanged */
    st_net(ws->out, netin, c, N, ws);
    rnvpi_affine_inverse(yt, yt, ws->out, c->scale, c->fbn_mean, c->fbn_inv_std, q, c->Ct, N, c->H, c->W);
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
