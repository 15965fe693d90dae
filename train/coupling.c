/* coupling.c: training-mode forward/backward of one coupling: s/t resnet with batch statistics, tanh-scaled map, flow BN.
 * Leaves out the flow's order of couplings, squeeze/split and the loss (flow_train.c). */
#include "coupling.h"

#include <string.h>

void *tr_arena_take(arena *a, size_t bytes)
{
    size_t off = (a->used + 63) & ~(size_t)63;
    a->used = off + bytes;
    return a->base ? a->base + off : NULL;
}

#define TAKE_F(a, n) ((float *)tr_arena_take((a), sizeof(float) * (size_t)(n)))

/* wino only for a convolution that runs on the Winograd kernel (tr_conv_winograd). */
static void carve_wn(wn_saved *w, arena *a, const conv_p *p, int kernel, int N, int H, int W)
{
    w->w = TAKE_F(a, (size_t)p->cout * p->cin * p->kh * p->kw);
    w->inv_norm = TAKE_F(a, p->cout);
    w->wino = tr_conv_winograd(kernel, p->cout, p->cin, p->kh, p->kw, N, H, W)
                  ? TAKE_F(a, (size_t)16 * p->cout * p->cin)   /* (16, cout, cin) */
                  : NULL;
}

static void carve_bn(bn_saved *b, arena *a, int C)
{
    b->mean = TAKE_F(a, C);
    b->inv_std = TAKE_F(a, C);
    b->var = TAKE_F(a, C);
    b->aff.c = C;
    b->aff.a = TAKE_F(a, C);
    b->aff.s = TAKE_F(a, C);
    b->red = tr_arena_take(a, sizeof(double) * (size_t)(2 * C + 1));
}

void tr_coupling_carve(coupling_saved *sv, arena *a, const coupling *c, int kernel, int N)
{
    const size_t P = (size_t)N * c->H * c->W;
    const int K = c->K, F = c->F;
    net_saved *n = &sv->net;
    memset(sv, 0, sizeof *sv);
    n->a = tr_arena_take(a, sizeof(wn_saved) * (size_t)(K + 1));
    n->b = tr_arena_take(a, sizeof(wn_saved) * (size_t)(K + 1));
    n->bn_a = tr_arena_take(a, sizeof(bn_saved) * (size_t)(K + 1));
    n->bn_b = tr_arena_take(a, sizeof(bn_saved) * (size_t)(K + 1));
    n->h = tr_arena_take(a, sizeof(float *) * (size_t)(K + 1));
    n->u = tr_arena_take(a, sizeof(float *) * (size_t)(K + 1));
    const int counting = a->base == NULL;
    wn_saved dummy_wn;
    bn_saved dummy_bn;
    carve_wn(&n->in, a, &c->in_conv, kernel, N, c->H, c->W);
    carve_wn(&n->out, a, &c->out_conv, kernel, N, c->H, c->W);
    carve_bn(&n->bn_out, a, F);
    for (int j = 0; j < K; j++) {
        carve_wn(counting ? &dummy_wn : &n->a[j], a, &c->conv_a[j], kernel, N, c->H, c->W);
        carve_wn(counting ? &dummy_wn : &n->b[j], a, &c->conv_b[j], kernel, N, c->H, c->W);
        carve_bn(counting ? &dummy_bn : &n->bn_a[j], a, F);
        carve_bn(counting ? &dummy_bn : &n->bn_b[j], a, F);
    }
    for (int j = 0; j <= K; j++) {
        float *h = TAKE_F(a, (size_t)F * P);      /* (F, N, H, W) */
        if (!counting) n->h[j] = h;
    }
    for (int j = 0; j < K; j++) {
        float *u = TAKE_F(a, (size_t)F * P);      /* (F, N, H, W) */
        if (!counting) n->u[j] = u;
    }
    n->st = TAKE_F(a, 2 * (size_t)c->Ct * P);      /* (2Ct, N, H, W) */
    if (c->kind == COUPLING_CHECKER) n->inp = TAKE_F(a, (size_t)c->Cin * P);   /* (C+1, N, H, W) */
    sv->fbn.mean = TAKE_F(a, c->Ct);
    sv->fbn.var = TAKE_F(a, c->Ct);
    sv->fbn.inv_std = TAKE_F(a, c->Ct);
    sv->fbn.red = tr_arena_take(a, sizeof(double) * (size_t)(2 * c->Ct + 3));
}

/* ================================================================ s/t network */

/* st = out_conv(relu(bn_out(h_K))) after h_0 = in_conv(inp) and K residual blocks. */
static void net_forward(net_saved *sv, const coupling *c, double eps, const conv_scratch *cs, int upd,
                        int N)
{
    const int F = c->F, K = c->K, H = c->H, W = c->W;
    const size_t P = (size_t)N * H * W;
    const conv_p *ci = &c->in_conv, *co = &c->out_conv;
    tr_wn_forward(&sv->in, ci);
    /* h = in_conv(input) */
    tr_conv_forward(sv->h[0], sv->inp, NULL, sv->in.w, sv->in.wino, ci->b, NULL, cs, F, ci->cin, ci->kh, ci->kw,
                 N, H, W);
    for (int j = 0; j < K; j++) {
        const conv_p *ca = &c->conv_a[j], *cb = &c->conv_b[j];
        tr_wn_forward(&sv->a[j], ca);
        tr_wn_forward(&sv->b[j], cb);
        /* h = h + conv_b(relu(bn_b(conv_a(relu(bn_a(h)))))) */
        tr_bn_forward(&sv->bn_a[j], sv->h[j], &c->bn_a[j], eps, upd, F, P, cs->tp, cs->comm);
        tr_conv_forward(sv->u[j], sv->h[j], &sv->bn_a[j].aff, sv->a[j].w, sv->a[j].wino, ca->b, NULL, cs, F, F,
                     ca->kh, ca->kw, N, H, W);
        tr_bn_forward(&sv->bn_b[j], sv->u[j], &c->bn_b[j], eps, upd, F, P, cs->tp, cs->comm);
        tr_conv_forward(sv->h[j + 1], sv->u[j], &sv->bn_b[j].aff, sv->b[j].w, sv->b[j].wino, cb->b, sv->h[j],
                        cs, F, F, cb->kh, cb->kw, N, H, W);
    }
    tr_wn_forward(&sv->out, co);
    /* out = out_conv(relu(bn_out(h))) */
    tr_bn_forward(&sv->bn_out, sv->h[K], &c->bn_out, eps, upd, F, P, cs->tp, cs->comm);
    tr_conv_forward(sv->st, sv->h[K], &sv->bn_out.aff, sv->out.w, sv->out.wino, co->b, NULL, cs, co->cout, F,
                 co->kh, co->kw, N, H, W);
}

#define GRAD(p) (grad + ((p) - base))

/* Weight-norm convolution backward: gradients of v, g, b into grad (+=); din gets d pre(in)
 * (+= when acc, else overwritten). */
static void wconv_backward(float *din, float *grad, const float *base, const float *dout,
                           const float *in, const affine_i *pre, const conv_p *p,
                           const wn_saved *wn, int acc, coupling_scratch *ws, int N, int H, int W)
{
    memset(ws->dw, 0, sizeof(float) * (size_t)p->cout * p->cin * p->kh * p->kw);
    tr_conv_backward(din, ws->dw, GRAD(p->b), dout, in, pre, wn->w, wn->wino, &ws->cs, acc, p->cout, p->cin,
                  p->kh, p->kw, N, H, W);
    tr_wn_backward(GRAD(p->v), GRAD(p->g), ws->dw, p, wn);
}

/* dinp (Cin, N, H, W) += (acc) or = (acc == 0) the gradient of the net's input, from dst
 * (2Ct, N, H, W). Parameter gradients are accumulated into grad. */
static void net_backward(float *dinp, float *grad, const float *base, const float *dst,
                         const net_saved *sv, const coupling *c, int acc, coupling_scratch *ws,
                         int N)
{
    const int F = c->F, K = c->K, H = c->H, W = c->W;
    const size_t P = (size_t)N * H * W;
    tpool *tp = ws->cs.tp;
    /* out = out_conv(relu(bn_out(h))) */
    wconv_backward(ws->dr, grad, base, dst, sv->h[K], &sv->bn_out.aff, &c->out_conv, &sv->out, 0, ws,
                   N, H, W);
    tr_bn_backward(ws->dh, GRAD(c->bn_out.w), GRAD(c->bn_out.b), ws->dr, sv->h[K], &sv->bn_out, 0, F, P,
                tp, ws->cs.comm);
    for (int j = K - 1; j >= 0; j--) {
        /* h = h + conv_b(relu(bn_b(conv_a(relu(bn_a(h))))))
         * dh (the gradient of the block's output) is also the residual path's share of the
         * gradient of its input: the branch's share is added into dh in place at the end. */
        wconv_backward(ws->dr, grad, base, ws->dh, sv->u[j], &sv->bn_b[j].aff, &c->conv_b[j],
                       &sv->b[j], 0, ws, N, H, W);
        tr_bn_backward(ws->du, GRAD(c->bn_b[j].w), GRAD(c->bn_b[j].b), ws->dr, sv->u[j], &sv->bn_b[j], 0,
                    F, P, tp, ws->cs.comm);
        wconv_backward(ws->dr, grad, base, ws->du, sv->h[j], &sv->bn_a[j].aff, &c->conv_a[j],
                       &sv->a[j], 0, ws, N, H, W);
        tr_bn_backward(ws->dh, GRAD(c->bn_a[j].w), GRAD(c->bn_a[j].b), ws->dr, sv->h[j], &sv->bn_a[j], 1,
                    F, P, tp, ws->cs.comm);
    }
    /* h = in_conv(input) */
    wconv_backward(dinp, grad, base, ws->dh, sv->inp, NULL, &c->in_conv, &sv->in, acc, ws, N, H, W);
}

/* ================================================================ coupling */

/* Channel offsets (in channels) of the transformed and of the conditioning part of x. */
static int t_off(const coupling *c) { return c->kind == COUPLING_CHANNEL && c->parity == 0 ? c->Ct : 0; }
static int c_off(const coupling *c) { return c->kind == COUPLING_CHANNEL && c->parity == 1 ? c->Ct : 0; }

void tr_coupling_train_forward(coupling_saved *sv, float *y, double *ld, const float *x,
                            const coupling *c, const rnvp_config *cfg, const conv_scratch *cs,
                            int update_stats, int N)
{
    const int H = c->H, W = c->W, C = c->C, Ct = c->Ct, q = c->parity;
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    net_saved *n = &sv->net;
    if (c->kind == COUPLING_CHECKER) {
        rnvpi_checker_input(n->inp, x, C, q, N, H, W);   /* concat(x * b, b) */
    } else {
        n->inp = (float *)x + c_off(c) * P;   /* the conditioning half, as it is */
        memcpy(y + c_off(c) * P, x + c_off(c) * P, sizeof(float) * Ct * P);
    }
    net_forward(n, c, cfg->bn_eps, cs, update_stats, N);
    const size_t to = t_off(c) * P;
    const int mq = rnvpi_mask_parity(c);
    rnvpi_affine_forward(y + to, ld, x + to, n->st, c->scale, NULL, NULL, mq, Ct, N, H, W);
    if (c->fbn_mean)
        tr_fbn_forward(&sv->fbn, y + to, ld, c->fbn_mean, c->fbn_var, cfg->flow_bn_eps, update_stats, mq, Ct, N,
                       H, W, cs->comm);
}

void tr_coupling_train_backward(float *dx, float *grad, float *dy, const double *dld,
                             const coupling_saved *sv, const float *x, const float *y,
                             const coupling *c, const float *base, coupling_scratch *ws, int N)
{
    const int H = c->H, W = c->W, C = c->C, Ct = c->Ct, q = c->parity;
    const size_t HW = (size_t)H * W, P = (size_t)N * HW, to = t_off(c) * P, co = c_off(c) * P;
    const net_saved *n = &sv->net;
    if (c->fbn_mean)
        tr_fbn_backward(dy + to, y + to, dld, &sv->fbn, rnvpi_mask_parity(c), Ct, N, H, W, ws->cs.comm);
    tr_affine_backward(dx + to, ws->dst, GRAD(c->scale), dy + to, dld, x + to, n->st, c->scale,
                    rnvpi_mask_parity(c), Ct, N, H, W);
    if (c->kind == COUPLING_CHECKER) {
        net_backward(ws->dinp, grad, base, ws->dst, n, c, 0, ws, N);
        /* net input: x * b (the mask channel has no gradient to pass on) */
        for (int ch = 0; ch < C; ch++)
            for (int k = 0; k < N; k++) {
                const float *g = ws->dinp + ch * P + k * HW;
                float *d = dx + ch * P + k * HW;
                for (int i = 0; i < H; i++)
                    for (int j = ((i + q) & 1); j < W; j += 2) d[i * W + j] += g[i * W + j];
            }
    } else {
        /* the conditioning half reaches y unchanged and feeds the net */
        for (size_t p = 0; p < (size_t)Ct * P; p++) dx[co + p] += dy[co + p];
        net_backward(dx + co, grad, base, ws->dst, n, c, 1, ws, N);
    }
}
