/* layers.c: the trainer's layer passes, each forward next to its backward: weight norm, conv, batch norm, logit,
 * squeeze/split, prior, coupling map, flow BN. Leaves out the s/t network and the flow (coupling.c, flow_train.c). */
#include "layers.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

/* ================================================================ weight normalisation */

void tr_wn_forward(wn_saved *sv, const conv_p *p)
{
    rnvpi_wn_weights(sv->w, sv->inv_norm, p, NULL);
    if (sv->wino) rnvpi_winograd_weights(sv->wino, sv->w, p->cout, p->cin);   /* w changes every step */
}

void tr_wn_backward(float *dv, float *dg, const float *dw, const conv_p *p, const wn_saved *sv)
{
    const size_t K = (size_t)p->cin * p->kh * p->kw;
    for (int o = 0; o < p->cout; o++) {
        const float *v = p->v + o * K, *d = dw + o * K;
        const double inv = sv->inv_norm[o];
        double dot = 0;   /* sum_i dw_i v_i */
        for (size_t i = 0; i < K; i++) dot += (double)d[i] * v[i];
        /* w = g v / n:  dg = (dw . v) / n;  dv = (g / n) (dw - (dw . v) v / n^2) */
        dg[o] += (float)(dot * inv);
        const double f = p->g[o] * inv, c = dot * inv * inv;
        for (size_t i = 0; i < K; i++) dv[o * K + i] += (float)(f * (d[i] - c * v[i]));
    }
}

/* ================================================================ vectorised kernels */

/* The hot loops, cloned for AVX2 (the build targets baseline x86-64). GCC's -O2 vectorises
 * only loops whose vector code needs no scalar epilogue, so each loop runs in blocks of 8
 * (an inner loop of constant trip count, vectorised as a whole) plus a scalar tail. Sums keep
 * 8 lanes: float partial sums over at most 64 blocks, added into double. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VEC __attribute__((target_clones("avx2", "default")))
#else
#define VEC
#endif
#define LANES 8
#define BLOCKS 64

/* dst[p] += src[p] */
VEC static void add_to(float *restrict dst, const float *restrict src, size_t n)
{
    size_t p = 0;
    for (; p + LANES <= n; p += LANES)
        for (int k = 0; k < LANES; k++) dst[p + k] += src[p + k];
    for (; p < n; p++) dst[p] += src[p];
}

/* sum_p x[p] */
VEC static double sum_f(const float *restrict x, size_t n)
{
    double s = 0;
    size_t p = 0;
    while (p + LANES <= n) {
        float acc[LANES] = {0};
        const size_t end = n - p >= BLOCKS * LANES ? p + BLOCKS * LANES : n - (n - p) % LANES;
        for (; p < end; p += LANES)
            for (int k = 0; k < LANES; k++) acc[k] += x[p + k];
        for (int k = 0; k < LANES; k++) s += acc[k];
    }
    for (; p < n; p++) s += x[p];
    return s;
}

/* sum_p (x[p] - m)^2 */
VEC static double sum_sq_dev(const float *restrict x, float m, size_t n)
{
    double s = 0;
    size_t p = 0;
    while (p + LANES <= n) {
        float acc[LANES] = {0};
        const size_t end = n - p >= BLOCKS * LANES ? p + BLOCKS * LANES : n - (n - p) % LANES;
        for (; p < end; p += LANES)
            for (int k = 0; k < LANES; k++) {
                float d = x[p + k] - m;
                acc[k] += d * d;
            }
        for (int k = 0; k < LANES; k++) s += acc[k];
    }
    for (; p < n; p++) s += (double)(x[p] - m) * (x[p] - m);
    return s;
}

/* the gradient through relu(a x + s): g where a x + s > 0, else 0 */
static inline float relu_grad(float g, float x, float a, float s)
{
    float z = a * x + s;
    return z > 0.0f ? g : 0.0f;
}

/* With dz = relu_grad(g, x): *s1 = sum dz, *s2 = sum dz (x - m). */
VEC static void relu_grad_sums(double *s1, double *s2, const float *restrict g, const float *restrict x,
                               float a, float s, float m, size_t n)
{
    double r1 = 0, r2 = 0;
    size_t p = 0;
    while (p + LANES <= n) {
        float a1[LANES] = {0}, a2[LANES] = {0};
        const size_t end = n - p >= BLOCKS * LANES ? p + BLOCKS * LANES : n - (n - p) % LANES;
        for (; p < end; p += LANES)
            for (int k = 0; k < LANES; k++) {
                float dz = relu_grad(g[p + k], x[p + k], a, s);
                a1[k] += dz;
                a2[k] += dz * (x[p + k] - m);
            }
        for (int k = 0; k < LANES; k++) {
            r1 += a1[k];
            r2 += a2[k];
        }
    }
    for (; p < n; p++) {
        float dz = relu_grad(g[p], x[p], a, s);
        r1 += dz;
        r2 += (double)dz * (x[p] - m);
    }
    *s1 = r1;
    *s2 = r2;
}

/* dx[p] (+)= a (dz - m1 - (x - m) k2), dz = relu_grad(g, x): += when acc, else = */
VEC static void relu_bn_dx(float *restrict dx, const float *restrict g, const float *restrict x, float a,
                           float s, float m, float m1, float k2, int acc, size_t n)
{
    size_t p = 0;
    if (acc) {
        for (; p + LANES <= n; p += LANES)
            for (int k = 0; k < LANES; k++)
                dx[p + k] += a * (relu_grad(g[p + k], x[p + k], a, s) - m1 - (x[p + k] - m) * k2);
        for (; p < n; p++) dx[p] += a * (relu_grad(g[p], x[p], a, s) - m1 - (x[p] - m) * k2);
    } else {
        for (; p + LANES <= n; p += LANES)
            for (int k = 0; k < LANES; k++)
                dx[p + k] = a * (relu_grad(g[p + k], x[p + k], a, s) - m1 - (x[p + k] - m) * k2);
        for (; p < n; p++) dx[p] = a * (relu_grad(g[p], x[p], a, s) - m1 - (x[p] - m) * k2);
    }
}

/* ================================================================ convolution */

/* Target size in floats of one thread's im2col chunk: col (forward) and col + dcol (backward)
 * then stay in the core's 2 MB L2 while the gemm reads them. */
#define CONV_CHUNK_FLOATS (1u << 18)

int tr_conv_chunk(int cin, int kh, int kw, int N, int H, int W, int nt)
{
    if (nt < 1) nt = 1;
    const size_t per = (size_t)cin * kh * kw * H * W;   /* col floats of one image */
    size_t nb0 = per ? CONV_CHUNK_FLOATS / per : (size_t)N;
    if (nb0 < 1) nb0 = 1;
    /* a multiple of nt chunks, so that the threads get equal shares */
    const size_t per_thread = ((size_t)N + nt - 1) / nt;
    const size_t nchunks = (size_t)nt * ((per_thread + nb0 - 1) / nb0);
    size_t nb = ((size_t)N + nchunks - 1) / nchunks;
    return (int)(nb < 1 ? 1 : nb);
}

size_t tr_conv_ws_floats(int cin, int kh, int kw, int N, int H, int W, int nt)
{
    const size_t col = (size_t)cin * kh * kw * H * W * tr_conv_chunk(cin, kh, kw, N, H, W, nt);
    const size_t panel = rnvpi_conv_panel_floats(cin, kh, kw) + 16;   /* the AVX2 kernel's, aligned inside */
    return col > panel ? col : panel;
}

int tr_conv_winograd(int kernel, int cout, int cin, int kh, int kw, int N, int H, int W)
{
    if (kh != 3 || kw != 3) return 0;
    const conv_i cv = {.cout = cout, .cin = cin, .kh = kh, .kw = kw};
    if (kernel == RNVPI_CONV_WINOGRAD) return 1;
    if (kernel != RNVPI_CONV_AVX2) return 0;
    /* With the AVX-512 Winograd kernels (against the trainer's AVX2 direct kernel) also the 7x7
     * planes: bench_train, the bundled architecture, Zen 5, 2 threads, 3 interleaved rounds: 6.78
     * against 7.33 CPU ms per image, 266 against 250 images/s (taking the in_convs of 1-5 channels
     * too: 6.72-6.75 over 7 rounds, no gain). Called when the workspace is carved, not per step. */
    if (rnvpi_winograd_kind() == RNVPI_WINO_AVX512 && N >= 4 && cin >= 32 && cout >= 32) return 1;
    return rnvpi_winograd_wins(&cv, N, H, W);
}

/* Tiles per chunk of the Winograd weight gradient: its V and dM (16 (cin + cout) floats per
 * tile, 512 KB at 32 + 32 channels) stay in a core's L2. */
#define WGRAD_TILES 128

size_t tr_conv_ws_floats_wino(int cout, int cin, int kh, int kw, int N, int H, int W, int nt)
{
    size_t f = tr_conv_ws_floats(cin, kh, kw, N, H, W, nt);
    const size_t pw = rnvpi_winograd_panel_floats(cin > cout ? cin : cout) + 16;   /* aligned inside */
    const size_t gw = rnvpi_winograd_wgrad_floats(cin, cout, WGRAD_TILES);
    f = f > pw ? f : pw;
    return f > gw ? f : gw;
}

/* mask[q] ? v : 0, with v loaded unconditionally (so that the select vectorises) */
static inline float keep_if(float mask, float v) { return mask != 0.0f ? v : 0.0f; }

/* dst[q] += mask[q] ? src[q] : 0 */
VEC static void masked_add(float *restrict dst, const float *restrict src, const float *restrict mask,
                           size_t n)
{
    size_t q = 0;
    for (; q + LANES <= n; q += LANES)
        for (int k = 0; k < LANES; k++) {
            const float v = src[q + k];
            dst[q + k] += keep_if(mask[q + k], v);
        }
    for (; q < n; q++) dst[q] += keep_if(mask[q], src[q]);
}

/* Positions q of one H x W image whose tap source q + shift stays inside the image's plane:
 * [q0, q1). Outside it the mask is 0 anyway; inside it the mask decides. */
#define TAP_RANGE(shift, HW, q0, q1)                              \
    const ptrdiff_t q0 = (shift) < 0 ? -(shift) : 0;             \
    const ptrdiff_t q1 = (shift) > 0 ? (HW) - (shift) : (HW)

/* The adjoint of rnvpi_im2col (without pre): din (cin, N, H, W) += dcol scattered back to images
 * n0.. (acc == 0: din = instead). */
static void col2im(float *din, const float *dcol, const float *mask, int acc, int cin, int kh, int kw,
                   int n0, int nb, int N, int H, int W)
{
    const ptrdiff_t HW = (ptrdiff_t)H * W, P = (ptrdiff_t)N * HW, Q = (ptrdiff_t)nb * HW;
    const int ph = kh / 2, pw = kw / 2;
    for (int ci = 0; ci < cin; ci++) {
        float *dst = din + ci * P + n0 * HW;
        /* the centre tap has offset 0 and a mask of ones: it goes first, and assigns when
         * acc == 0 */
        const float *centre = dcol + ((ptrdiff_t)(ci * kh + ph) * kw + pw) * Q;
        if (acc)
            add_to(dst, centre, (size_t)Q);
        else
            memcpy(dst, centre, sizeof(float) * (size_t)Q);
        for (int di = 0; di < kh; di++)
            for (int dj = 0; dj < kw; dj++) {
                if (di == ph && dj == pw) continue;
                const float *row = dcol + ((ptrdiff_t)(ci * kh + di) * kw + dj) * Q;
                const float *m = mask + (ptrdiff_t)(di * kw + dj) * HW;
                const ptrdiff_t shift = (ptrdiff_t)(di - ph) * W + (dj - pw);
                if (shift <= -HW || shift >= HW) continue;
                TAP_RANGE(shift, HW, q0, q1);
                /* forward: row[q] = mask[q] ? src[q + shift] : 0 */
                for (int n = 0; n < nb; n++)
                    masked_add(dst + n * HW + shift + q0, row + n * HW + q0, m + q0, (size_t)(q1 - q0));
            }
    }
}

struct conv_job {
    float *out, *din, *dw, *db;
    const float *in, *dout, *w, *b, *res;
    const affine_i *pre;
    const conv_scratch *cs;
    int acc, cout, cin, kh, kw, N, H, W, nb;
};

/* Thread t's chunks of the forward: the core's portable kernel (rnvpi_conv_blas), one chunk at a time. */
static void conv_forward_job(void *v, int t, int nt)
{
    const struct conv_job *j = v;
    const conv_i cv = {.cout = j->cout, .cin = j->cin, .kh = j->kh, .kw = j->kw, .w = (float *)j->w, .b = (float *)j->b};
    float *col = j->cs->col + (size_t)t * j->cs->col_floats;
    for (int n0 = t * j->nb; n0 < j->N; n0 += nt * j->nb) {
        const int m = j->N - n0 < j->nb ? j->N - n0 : j->nb;
        if (j->cs->kernel != RNVPI_CONV_BLAS)
            rnvpi_conv_avx2_chunk(j->out, j->in, &cv, j->pre, j->res, col, n0, m, j->N, j->H, j->W);
        else
            rnvpi_conv_blas(j->out, j->in, &cv, j->pre, j->res, col, j->cs->mask, n0, m, j->N, j->H, j->W);
    }
}

/* The threads' cols as the Winograd kernel's panels. */
static net_ws wino_ws(const conv_scratch *cs)
{
    return (net_ws){.tp = cs->tp, .panel = cs->col, .panel_floats = cs->col_floats, .wino_kind = cs->wino_kind};
}

void tr_conv_forward(float *out, const float *in, const affine_i *pre, const float *w, const float *wino,
                  const float *b, const float *res, const conv_scratch *cs, int cout, int cin, int kh, int kw,
                  int N, int H, int W)
{
    if (wino) {
        const conv_i cv = {.cout = cout, .cin = cin, .kh = kh, .kw = kw, .w = (float *)w, .b = (float *)b,
                           .wino = (float *)wino};
        const net_ws ws = wino_ws(cs);
        rnvpi_conv_winograd(out, in, &cv, pre, res, &ws, N, H, W);
        return;
    }
    const int nt = rnvpi_tpool_size(cs->tp);
    struct conv_job j = {.out = out, .in = in, .w = w, .b = b, .res = res, .pre = pre, .cs = cs,
                         .cout = cout, .cin = cin, .kh = kh, .kw = kw, .N = N, .H = H, .W = W,
                         .nb = tr_conv_chunk(cin, kh, kw, N, H, W, nt)};
    rnvpi_tap_masks(cs->mask, kh, kw, H, W);
    rnvpi_tpool_run(cs->tp, conv_forward_job, &j);
}

static void conv_backward_job(void *v, int t, int nt)
{
    const struct conv_job *j = v;
    const size_t HW = (size_t)j->H * j->W, P = (size_t)j->N * HW;
    const int K = j->cin * j->kh * j->kw;
    const int one = j->kh == 1 && j->kw == 1, direct = one && !j->pre;
    float *col = j->cs->col + (size_t)t * j->cs->col_floats;
    float *dcol = j->cs->dcol + (size_t)t * j->cs->col_floats;
    float *dw = j->dw;
    if (t > 0) {   /* this thread's share of dw, summed into dw by the caller */
        dw = j->cs->dwp + (size_t)(t - 1) * j->cs->dw_floats;
        memset(dw, 0, sizeof(float) * (size_t)j->cout * K);
    }
    /* forward: out = bias (+ res) + ...  =>  db[o] += sum_p dout[o][p] */
    for (int o = t; o < j->cout; o += nt) j->db[o] += (float)sum_f(j->dout + o * P, P);
    for (int n0 = t * j->nb; n0 < j->N; n0 += nt * j->nb) {
        const int m = j->N - n0 < j->nb ? j->N - n0 : j->nb;
        const size_t Q = (size_t)m * HW;
        const float *B = j->in + n0 * HW, *dout = j->dout + n0 * HW;
        size_t ldb = P;
        if (!direct) {
            rnvpi_im2col(col, j->in, j->pre, j->cs->mask, j->cin, j->kh, j->kw, n0, m, j->N, j->H, j->W);
            B = col;
            ldb = Q;
        }
        /* forward: out (cout, Q) += w (cout, K) x col (K, Q)
         * =>  dw (cout, K) += dout (cout, Q) x col^T (Q, K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->cout, K, (int)Q, 1.0f, dout, (int)P, B,
                    (int)ldb, 1.0f, dw, K);
        if (!j->din) continue;
        /* =>  dcol (K, Q) = w^T (K, cout) x dout (cout, Q); a 1x1 col is the input itself */
        if (one) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, (int)Q, j->cout, 1.0f, j->w, K,
                        dout, (int)P, j->acc ? 1.0f : 0.0f, j->din + n0 * HW, (int)P);
        } else {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, (int)Q, j->cout, 1.0f, j->w, K,
                        dout, (int)P, 0.0f, dcol, (int)Q);
            col2im(j->din, dcol, j->cs->mask, j->acc, j->cin, j->kh, j->kw, n0, m, j->N, j->H, j->W);
        }
    }
}

/* Thread t's share of the Winograd weight gradient: db[o] for o = t mod nt, and dU^T of a fixed
 * range of tiles (the same split every step: the sum's order does not change) into its dut. */
static void wgrad_job(void *v, int t, int nt)
{
    const struct conv_job *j = v;
    const size_t P = (size_t)j->N * j->H * j->W;
    /* forward: out = bias (+ res) + ...  =>  db[o] += sum_p dout[o][p] */
    for (int o = t; o < j->cout; o += nt) j->db[o] += (float)sum_f(j->dout + o * P, P);
    const ptrdiff_t T = (ptrdiff_t)j->N * ((j->H + 1) / 2) * ((j->W + 1) / 2);   /* tiles */
    float *dut = j->cs->dut + (size_t)t * j->cs->dut_floats;   /* (16, cin, cout) */
    memset(dut, 0, sizeof(float) * 16 * (size_t)j->cin * j->cout);
    float *buf = j->cs->col + (size_t)t * j->cs->col_floats;   /* rnvpi_winograd_wgrad_floats */
    rnvpi_winograd_wgrad(dut, j->dout, j->in, j->pre, j->cin, j->cout, buf, WGRAD_TILES, T * t / nt,
                         T * (t + 1) / nt, j->N, j->H, j->W, j->cs->wino_kind);
}

void tr_conv_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                   const affine_i *pre, const float *w, const float *wino, const conv_scratch *cs, int acc,
                   int cout, int cin, int kh, int kw, int N, int H, int W)
{
    const int nt = rnvpi_tpool_size(cs->tp);
    if (wino && din) {
        /* forward: out[o] (3x3, padding 1) = sum_c w[o][c] * pre(in)[c] + b[o]
         * =>  din[c] (+)= sum_o w'[c][o] * dout[o], w'[c][o][a][b] = w[o][c][2-a][2-b]: the same
         * kind of 3x3 "same" convolution, cout -> cin channels, no pre, no bias; += through the
         * kernel's residual (res = din) when acc, else = */
        rnvpi_winograd_weights_adjoint(cs->winot, wino, cout, cin);
        const conv_i adj = {.cout = cin, .cin = cout, .kh = 3, .kw = 3, .b = cs->zeros, .wino = cs->winot};
        const net_ws ws = wino_ws(cs);
        rnvpi_conv_winograd(din, dout, &adj, NULL, acc ? din : NULL, &ws, N, H, W);
    }
    if (wino) {
        /* forward: out (tile t) = A^T [ sum_c U[o][c] .* V_t[c] ] A + b, U = G w G^T
         * =>  dU[xi][o][c] += sum_t (A dout_t A^T)[xi] V_t[xi][c];  dw += G^T dU G */
        struct conv_job j = {.db = db, .in = in, .dout = dout, .pre = pre, .cs = cs, .cout = cout, .cin = cin,
                             .N = N, .H = H, .W = W};
        rnvpi_tpool_run(cs->tp, wgrad_job, &j);
        const size_t nu = (size_t)16 * cin * cout;
        for (int t = 1; t < nt; t++) add_to(cs->dut, cs->dut + (size_t)t * cs->dut_floats, nu);
        rnvpi_winograd_wgrad_fold(dw, cs->dut, cout, cin);
        return;
    }
    struct conv_job j = {.din = din, .dw = dw, .db = db, .in = in, .dout = dout, .w = w, .pre = pre,
                         .cs = cs, .acc = acc, .cout = cout, .cin = cin, .kh = kh, .kw = kw, .N = N, .H = H,
                         .W = W, .nb = tr_conv_chunk(cin, kh, kw, N, H, W, nt)};
    rnvpi_tap_masks(cs->mask, kh, kw, H, W);
    rnvpi_tpool_run(cs->tp, conv_backward_job, &j);
    const size_t nw = (size_t)cout * cin * kh * kw;
    for (int t = 1; t < nt; t++) add_to(dw, cs->dwp + (size_t)(t - 1) * cs->dw_floats, nw);
}

/* ================================================================ batch norm + ReLU */

/* The running averages: r <- 0.9 r + 0.1 batch (update 1), r <- batch (update 2), unchanged (0). */
static void running_update(float *rm, float *rv, double mean, double var, int update)
{
    if (update == 1) {
        *rm = (float)(0.9 * *rm + 0.1 * mean);
        *rv = (float)(0.9 * *rv + 0.1 * var);
    } else if (update == 2) {
        *rm = (float)mean;
        *rv = (float)var;
    }
}

/* v[0..n-1] <- the sum over the processes (nothing to do for one). */
static void comm_sum(const tr_comm *comm, double *v, int n)
{
    if (comm && comm->sum) comm->sum(v, n, comm->user);
}

/* The passes run in stages between which the per-channel sums are added over the processes:
 * the pool's threads share the channels within a stage, the caller does the sums. */
struct bn_job {
    bn_saved *sv;
    const bn_saved *csv;
    const float *x, *dr;
    float *dx, *dweight, *dbias;
    const bn_p *p;
    double eps;
    int update, acc, C, stage;
    size_t P;
};

/* red: [0, C) sums then means, C the count, [C+1, 2C+1) squared deviations */
static void bn_forward_job(void *v, int t, int nt)
{
    const struct bn_job *j = v;
    bn_saved *sv = j->sv;
    double *red = sv->red;
    for (int c = t; c < j->C; c += nt) {
        const float *xc = j->x + c * j->P;
        if (j->stage == 0) {
            red[c] = sum_f(xc, j->P);
        } else if (j->stage == 1) {
            red[c] /= red[j->C];   /* the batch mean */
            red[j->C + 1 + c] = sum_sq_dev(xc, (float)red[c], j->P);
        } else {
            const double mean = red[c], var = red[j->C + 1 + c] / red[j->C];   /* biased */
            sv->mean[c] = (float)mean;
            sv->var[c] = (float)var;
            sv->inv_std[c] = (float)(1.0 / sqrt(var + j->eps));
            /* bn(x) = weight (x - mean) istd + bias = a x + s */
            rnvpi_bn_affine1(&sv->aff.a[c], &sv->aff.s[c], j->p->w[c], j->p->b[c], mean, var, j->eps);
            running_update(&j->p->rm[c], &j->p->rv[c], mean, var, j->update);
        }
    }
}

void tr_bn_forward(bn_saved *sv, const float *x, const bn_p *p, double eps, int update_stats, int C,
                size_t P, tpool *tp, const tr_comm *comm)
{
    struct bn_job j = {.sv = sv, .x = x, .p = p, .eps = eps, .update = update_stats, .C = C, .P = P};
    sv->aff.c = C;
    rnvpi_tpool_run(tp, bn_forward_job, &j);
    sv->red[C] = (double)P;
    comm_sum(comm, sv->red, C + 1);
    j.stage = 1;
    rnvpi_tpool_run(tp, bn_forward_job, &j);
    comm_sum(comm, sv->red + C + 1, C);
    j.stage = 2;
    rnvpi_tpool_run(tp, bn_forward_job, &j);
}

/* red: [0, 2C) the sums s1, s2 of each channel, 2C the count */
static void bn_backward_job(void *v, int t, int nt)
{
    const struct bn_job *j = v;
    const bn_saved *sv = j->csv;
    double *red = sv->red;
    for (int c = t; c < j->C; c += nt) {
        const float *xc = j->x + c * j->P, *g = j->dr + c * j->P;
        const float a = sv->aff.a[c], s = sv->aff.s[c], mean = sv->mean[c], istd = sv->inv_std[c];
        if (j->stage == 0) {
            /* forward: r = relu(z), z = a x + s = weight * xhat + bias, xhat = (x - mean) istd
             * =>  dz = dr [z > 0];  dbias += sum dz;  dweight += sum dz xhat (this process's
             * images: the gradients are summed over the processes afterwards) */
            double s1, s2;
            relu_grad_sums(&s1, &s2, g, xc, a, s, mean, j->P);
            s2 *= istd;
            j->dbias[c] += (float)s1;
            j->dweight[c] += (float)s2;
            red[2 * c] = s1;
            red[2 * c + 1] = s2;
        } else {
            /* through the batch statistics (every process's images):
             * dx = weight istd (dz - mean(dz) - xhat mean(dz xhat)) */
            const double M = red[2 * j->C];
            const float m1 = (float)(red[2 * c] / M), k2 = (float)(red[2 * c + 1] / M * istd);
            relu_bn_dx(j->dx + c * j->P, g, xc, a, s, mean, m1, k2, j->acc, j->P);
        }
    }
}

void tr_bn_backward(float *dx, float *dweight, float *dbias, const float *dr, const float *x,
                 const bn_saved *sv, int acc, int C, size_t P, tpool *tp, const tr_comm *comm)
{
    struct bn_job j = {.csv = sv, .x = x, .dr = dr, .dx = dx, .dweight = dweight, .dbias = dbias,
                       .acc = acc, .C = C, .P = P};
    rnvpi_tpool_run(tp, bn_backward_job, &j);
    sv->red[2 * C] = (double)P;
    comm_sum(comm, sv->red, 2 * C + 1);
    j.stage = 1;
    rnvpi_tpool_run(tp, bn_backward_job, &j);
}

/* ================================================================ logit pre-processing */

void tr_logit_forward(float *y, double *ld, const float *xt, double alpha, int N, int C, int H, int W)
{
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    const double lk = log(1.0 - 2.0 * alpha);
    for (int n = 0; n < N; n++) {
        double sum = 0;
        for (int c = 0; c < C; c++) {
            const float *src = xt + ((size_t)n * C + c) * HW;
            float *dst = y + c * P + n * HW;
            for (size_t i = 0; i < HW; i++) dst[i] = rnvpi_logit1(src[i], alpha, lk, &sum);
        }
        ld[n] += sum;
    }
}

void tr_logit_backward(float *dxt, const float *dy, const double *dld, const float *xt, double alpha,
                    int N, int C, int H, int W)
{
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    const double k = 1.0 - 2.0 * alpha;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            const float *src = xt + ((size_t)n * C + c) * HW;
            const float *g = dy + c * P + n * HW;
            float *d = dxt + ((size_t)n * C + c) * HW;
            for (size_t i = 0; i < HW; i++) {
                double p = alpha + k * src[i], pq = p * (1.0 - p);
                /* y = ln p - ln(1-p):              dy/dxt = k / (p (1-p))
                 * ld += ln k - ln p - ln(1-p):     dld/dxt = k (2p - 1) / (p (1-p)) */
                d[i] += (float)(g[i] * k / pq + dld[n] * k * (2.0 * p - 1.0) / pq);
            }
        }
}

/* ================================================================ squeeze and split */

void tr_sq_backward(float *din, const float *dout, int C, int N, int H, int W)
{
    const int h = H / 2, w = W / 2;
    const size_t HW = (size_t)H * W, hw = (size_t)h * w;
    for (int c = 0; c < C; c++)
        for (int dh = 0; dh < 2; dh++)
            for (int dw = 0; dw < 2; dw++) {
                const float *o = dout + (size_t)(c * 4 + dh * 2 + dw) * N * hw;
                for (int n = 0; n < N; n++) {
                    float *s = din + ((size_t)c * N + n) * HW;
                    /* forward (rnvpi_squeeze_forward): o[n][i][j] = s[2i + dh][2j + dw] */
                    for (int i = 0; i < h; i++)
                        for (int j = 0; j < w; j++)
                            s[(2 * i + dh) * W + 2 * j + dw] += o[n * hw + i * w + j];
                }
            }
}

void tr_split_forward(float *next, const float *x, int C, size_t P)
{
    for (int i = 0; i < 2 * C; i++) memcpy(next + i * P, x + rnvpi_split_keep(i, C) * P, sizeof(float) * P);
}

void tr_split_backward(float *dx, const float *dnext, int C, size_t P)
{
    for (int i = 0; i < 2 * C; i++) {
        /* forward: next[i] = x[keep(i)] */
        float *d = dx + rnvpi_split_keep(i, C) * P;
        const float *g = dnext + i * P;
        for (size_t p = 0; p < P; p++) d[p] += g[p];
    }
}

/* ================================================================ prior */

void tr_prior_forward(double *lp, const float *z, const int *ch, int nch, int N, int HW)
{
    const size_t P = (size_t)N * HW;
    for (int k = 0; k < nch; k++) {
        const float *zc = z + (size_t)(ch ? ch[k] : k) * P;
        for (int n = 0; n < N; n++) {
            double sum = 0;
            for (int i = 0; i < HW; i++) sum += (double)zc[(size_t)n * HW + i] * zc[(size_t)n * HW + i];
            lp[n] += rnvpi_log_normal(sum, HW);
        }
    }
}

void tr_prior_backward(float *dz, const double *dlp, const float *z, const int *ch, int nch, int N,
                    int HW)
{
    const size_t P = (size_t)N * HW;
    for (int k = 0; k < nch; k++) {
        const size_t off = (size_t)(ch ? ch[k] : k) * P;
        for (int n = 0; n < N; n++) {
            const float g = (float)dlp[n];
            /* forward: lp[n] += -z^2 / 2  =>  dz += -z dlp[n] */
            for (int i = 0; i < HW; i++) dz[off + (size_t)n * HW + i] -= g * z[off + (size_t)n * HW + i];
        }
    }
}

/* ================================================================ coupling map */

void tr_affine_backward(float *dx, float *dst, float *dscale, const float *dy, const double *dld,
                     const float *x, const float *st, const float *scale, int parity, int Ct, int N,
                     int H, int W)
{
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    memset(dst, 0, sizeof(float) * 2 * Ct * P);
    for (int c = 0; c < Ct; c++) {
        const float sc = scale[c];
        double dsc = 0;
        for (int n = 0; n < N; n++) {
            const size_t off = c * P + n * HW;
            const float *sr = st + off, *xc = x + off, *g = dy + off;
            float *dsr = dst + off, *dt = dst + Ct * P + off, *d = dx + off;
            const float gl = (float)dld[n];
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    const int q = i * W + j;
                    if (parity >= 0 && !((i + j + parity) & 1)) {
                        d[q] += g[q];   /* y = x where not transformed */
                        continue;
                    }
                    const float th = tanhf(sr[q]), e = expf(sc * th);
                    /* y = x exp(s) + t:  dx = dy exp(s), dt = dy, ds = dy x exp(s) (+ dld from ld += s) */
                    d[q] += g[q] * e;
                    dt[q] = g[q];
                    const float ds = g[q] * xc[q] * e + gl;
                    /* s = scale tanh(s_raw):  dscale += ds tanh, ds_raw = ds scale (1 - tanh^2) */
                    dsc += (double)ds * th;
                    dsr[q] = ds * sc * (1.0f - th * th);
                }
        }
        dscale[c] += (float)dsc;
    }
}

/* ================================================================ flow batch norm */

/* Sum of f(x) over the transformed elements of channel c of x (Ct, N, H, W). */
#define FBN_SUM(acc, x, c, EXPR)                                                             \
    for (int n_ = 0; n_ < N; n_++) {                                                         \
        const float *xc_ = (x) + (c) * P + n_ * HW;                                          \
        for (int i_ = 0; i_ < H; i_++)                                                       \
            for (int j_ = RNVPI_ROW_START(parity, i_); j_ < W; j_ += RNVPI_ROW_STEP(parity)) { \
                const float v_ = xc_[i_ * W + j_];                                           \
                (acc) += (EXPR);                                                             \
            }                                                                                \
    }

void tr_fbn_forward(fbn_saved *sv, float *x, double *ld, float *rmean, float *rvar, double eps,
                 int update_stats, int parity, int Ct, int N, int H, int W, const tr_comm *comm)
{
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    const int cnt = rnvpi_transformed_count(parity, H, W);
    double *red = sv->red;   /* [0, Ct) sums then means, Ct the count, [Ct+1, 2Ct+1) squared deviations */
    for (int c = 0; c < Ct; c++) {
        red[c] = 0;
        FBN_SUM(red[c], x, c, v_);
    }
    red[Ct] = (double)N * cnt;
    comm_sum(comm, red, Ct + 1);
    const double M = red[Ct];
    if (M == 0) {   /* no transformed element (parity 0 on a 1 x 1 level): nothing to normalise */
        for (int c = 0; c < Ct; c++) {
            sv->mean[c] = 0;
            sv->var[c] = 1;
            sv->inv_std[c] = 1;
        }
        return;
    }
    for (int c = 0; c < Ct; c++) {
        const double mean = red[c] /= M;
        double sq = 0;
        FBN_SUM(sq, x, c, ((double)v_ - mean) * ((double)v_ - mean));
        red[Ct + 1 + c] = sq;
    }
    comm_sum(comm, red + Ct + 1, Ct);
    double ldsum = 0;
    for (int c = 0; c < Ct; c++) {
        const double mean = red[c], var = red[Ct + 1 + c] / M;
        sv->mean[c] = (float)mean;
        sv->var[c] = (float)var;
        sv->inv_std[c] = (float)(1.0 / sqrt(var + eps));
        /* ld += -0.5 ln(var + eps) per transformed element */
        ldsum += rnvpi_fbn_logdet1(var, eps, cnt);
        if (rmean) running_update(&rmean[c], &rvar[c], mean, var, update_stats);
    }
    /* x <- (x - mean) istd */
    rnvpi_fbn_normalize(x, sv->mean, sv->inv_std, parity, Ct, N, H, W);
    for (int n = 0; n < N; n++) ld[n] += ldsum;
}

void tr_fbn_backward(float *d, const float *y, const double *dld, const fbn_saved *sv, int parity,
                  int Ct, int N, int H, int W, const tr_comm *comm)
{
    const size_t HW = (size_t)H * W, P = (size_t)N * HW;
    double *red = sv->red;   /* [0, 2Ct) s1, s2 of each channel; then M, G, N */
    for (int c = 0; c < Ct; c++) {
        double s1 = 0, s2 = 0;
        for (int n = 0; n < N; n++) {
            const float *g = d + c * P + n * HW, *yc = y + c * P + n * HW;
            for (int i = 0; i < H; i++)
                for (int j = RNVPI_ROW_START(parity, i); j < W; j += RNVPI_ROW_STEP(parity)) {
                    s1 += g[i * W + j];
                    s2 += (double)g[i * W + j] * yc[i * W + j];
                }
        }
        red[2 * c] = s1;
        red[2 * c + 1] = s2;
    }
    double G = 0;   /* every image's ld holds the same term: its gradient is sum_n dld[n] */
    for (int n = 0; n < N; n++) G += dld[n];
    red[2 * Ct] = (double)N * rnvpi_transformed_count(parity, H, W);
    red[2 * Ct + 1] = G;
    red[2 * Ct + 2] = N;
    comm_sum(comm, red, 2 * Ct + 3);
    const double M = red[2 * Ct], Gs = red[2 * Ct + 1], Ns = red[2 * Ct + 2];
    if (M == 0) return;   /* nothing was normalised */
    for (int c = 0; c < Ct; c++) {
        /* y = (x - mean) istd:  dx = istd (dy - mean(dy) - y mean(dy y))
         * ld += -0.5 cnt ln(var + eps) (each image), var = mean((x - mean)^2):
         *   dx += G (-0.5 cnt istd^2) 2 (x - mean) / M = -(G / N) istd y
         * (means, G and N over every process's images) */
        const float istd = sv->inv_std[c], m1 = (float)(red[2 * c] / M), m2 = (float)(red[2 * c + 1] / M + Gs / Ns);
        for (int n = 0; n < N; n++) {
            float *g = d + c * P + n * HW;
            const float *yc = y + c * P + n * HW;
            for (int i = 0; i < H; i++)
                for (int j = RNVPI_ROW_START(parity, i); j < W; j += RNVPI_ROW_STEP(parity))
                    g[i * W + j] = istd * (g[i * W + j] - m1 - yc[i * W + j] * m2);
        }
    }
}
