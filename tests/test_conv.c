/* test_conv.c: the inference convolution kernels (core/conv.c, core/winograd.c) against a naive
 * double-precision convolution: OpenBLAS im2col + sgemm, the AVX-512 and AVX2 direct kernels (and
 * the bf16 one, within its rounding bound), Winograd F(2x2,3x3) (AVX2, and AVX-512 bit for bit) and
 * F(4x4,3x3) (AVX-512) on one and two threads, with and without guard zones; then whole flows run with each kernel, the
 * shipped model through Winograd and in bf16. Leaves out timing (bench/). */
#include "internal.h"
#include "tpool.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rs = 777;
static float frand(void) { return (float)(2 * rnvpi_uniform(&rs) - 1); }

struct shape {
    int cout, cin, kh, kw, N, H, W, pre, acc;   /* pre: 0 none, 1 relu only, 2 affine + relu */
};

static const struct shape shapes[] = {
    {32, 32, 3, 3, 3, 7, 5, 2, 0},    /* several strips, strips across images */
    {13, 5, 3, 3, 2, 6, 6, 1, 1},     /* cout not a multiple of 8, residual accumulate */
    {2, 7, 1, 1, 3, 4, 4, 2, 0},      /* out_conv-like 1x1 with batch norm + relu */
    {4, 3, 3, 3, 1, 2, 2, 0, 0},      /* fewer columns than one strip, taps all in padding */
    {64, 64, 3, 3, 2, 14, 14, 2, 1},  /* the benchmark's scale-1 block conv */
    {8, 3, 5, 5, 2, 9, 7, 0, 0},      /* 5x5 */
    {9, 2, 1, 3, 4, 3, 8, 1, 0},      /* 1x3 */
    {64, 2, 3, 3, 1, 28, 28, 0, 0},   /* in_conv of a checkerboard coupling */
};

/* ref (cout, P) in double: b + w * pre(in) (+ out0 when acc) */
static void conv_ref(double *ref, const float *out0, const float *in, const conv_i *cv, const affine_i *pre,
                     int N, int H, int W, int acc)
{
    const int P = N * H * W, K = cv->cin * cv->kh * cv->kw;
    for (int o = 0; o < cv->cout; o++)
        for (int n = 0; n < N; n++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    const int p = (n * H + i) * W + j;
                    double s = cv->b[o] + (acc ? out0[(size_t)o * P + p] : 0.0);
                    for (int ci = 0; ci < cv->cin; ci++)
                        for (int di = 0; di < cv->kh; di++)
                            for (int dj = 0; dj < cv->kw; dj++) {
                                const int si = i + di - cv->kh / 2, sj = j + dj - cv->kw / 2;
                                if (si < 0 || si >= H || sj < 0 || sj >= W) continue;
                                double x = in[(size_t)ci * P + (n * H + si) * W + sj];
                                if (pre) {
                                    if (pre->a) x = (double)pre->a[ci] * x + pre->s[ci];
                                    if (x < 0) x = 0;
                                }
                                s += (double)cv->w[(size_t)o * K + (ci * cv->kh + di) * cv->kw + dj] * x;
                            }
                    ref[(size_t)o * P + p] = s;
                }
}

enum mode { BLAS, AVX2_ONE, AVX2_POOL, DIRECT_ONE, DIRECT_POOL_MASKED, DIRECT_POOL_GUARDED, BF16_ONE,
            BF16_POOL_GUARDED, MODES };
static const char *mode_name[MODES] = {"blas", "avx2 1 thread", "avx2 2 threads", "direct 1 thread",
                                       "direct 2 threads masked", "direct 2 threads guarded",
                                       "direct bf16 1 thread", "direct bf16 2 threads guarded"};
static double bf16_worst;   /* the largest bf16 error seen (relative to sum |terms|) */

static void check_shape(const struct shape *sh, enum mode mode)
{
    const int K = sh->cin * sh->kh * sh->kw, P = sh->N * sh->H * sh->W;
    const size_t G = rnvpi_conv_guard_floats(&(conv_i){0, 0, sh->kh, sh->kw, NULL, NULL, NULL, NULL, NULL}, sh->W);
    float *w = malloc(sizeof(float) * (size_t)sh->cout * K), *b = malloc(sizeof(float) * sh->cout);
    float *a = malloc(sizeof(float) * sh->cin), *s = malloc(sizeof(float) * sh->cin);
    float *inb = malloc(sizeof(float) * ((size_t)sh->cin * P + 2 * G));
    float *out = malloc(sizeof(float) * (size_t)sh->cout * P), *out0 = malloc(sizeof(float) * (size_t)sh->cout * P);
    double *ref = malloc(sizeof(double) * (size_t)sh->cout * P);
    for (int i = 0; i < sh->cout * K; i++) w[i] = frand();
    for (int i = 0; i < sh->cout; i++) b[i] = frand();
    for (int i = 0; i < sh->cin; i++) a[i] = 1 + 0.5f * frand(), s[i] = 0.3f * frand();
    /* guards of NaN: whatever the kernel reads there must be masked away */
    for (size_t i = 0; i < (size_t)sh->cin * P + 2 * G; i++) inb[i] = NAN;
    float *in = inb + G;
    for (size_t i = 0; i < (size_t)sh->cin * P; i++) in[i] = frand();
    for (size_t i = 0; i < (size_t)sh->cout * P; i++) out0[i] = out[i] = frand();
    const int bf16 = mode == BF16_ONE || mode == BF16_POOL_GUARDED;
    uint32_t *wb = malloc(sizeof(uint32_t) * (size_t)sh->cout * ((K + 1) / 2));
    rnvpi_bf16_pairs(wb, w, sh->cout, K);
    conv_i cv = {sh->cout, sh->cin, sh->kh, sh->kw, w, b, NULL, bf16 ? wb : NULL, NULL};
    affine_i pa = {sh->cin, a, s}, pr = {sh->cin, NULL, NULL};
    const affine_i *pre = sh->pre == 2 ? &pa : sh->pre == 1 ? &pr : NULL;
    conv_ref(ref, out0, in, &cv, pre, sh->N, sh->H, sh->W, sh->acc);

    size_t colf = rnvpi_conv_col_floats(&cv, sh->N, sh->H, sh->W), pf = rnvpi_conv_panel_floats(sh->cin, sh->kh, sh->kw);
    float *col = malloc(sizeof(float) * colf);
    float *panel = aligned_alloc(64, sizeof(float) * 2 * pf);
    net_ws ws = {.col = col};
    tpool *tp = NULL;
    if (mode >= DIRECT_ONE) ws.direct = RNVPI_CONV_AVX512;
    else if (mode != BLAS) ws.direct = RNVPI_CONV_AVX2;
    ws.bf16 = bf16;
    if (mode == DIRECT_POOL_MASKED || mode == DIRECT_POOL_GUARDED || mode == AVX2_POOL || mode == BF16_POOL_GUARDED) {
        tp = rnvpi_tpool_create(2);
        ck_assert_ptr_nonnull(tp);
        ws.tp = tp;
        ws.panel = panel;
        ws.panel_floats = pf;
        if (mode == DIRECT_POOL_GUARDED || mode == BF16_POOL_GUARDED) ws.guard = G;
    }
    rnvpi_conv_forward_acc(out, in, &cv, pre, &ws, sh->N, sh->H, sh->W, sh->acc);
    /* error against sum |terms| per output: float rounding bound, not cancellation */
    double worst = 0;
    for (int o = 0; o < sh->cout; o++) {
        double scale = fabs(b[o]) + (double)K * 1.6;   /* |w| <= 1, |pre(x)| <= 1.6 */
        for (int p = 0; p < P; p++) {
            double e = fabs(out[(size_t)o * P + p] - ref[(size_t)o * P + p]) / scale;
            if (!(e <= worst)) worst = e;   /* also NaN */
        }
    }
    /* bf16: each product of two values rounded to 8 significant bits is off by at most
     * (2^-9 + 2^-9 + 2^-18) of |w x|, the float32 sums by K 2^-24 of sum |terms|; and the error must
     * be more than float32's (< 1e-6 above): the bf16 arithmetic ran */
    const double bound = bf16 ? ldexp(1, -8) + ldexp(1, -18) + K * ldexp(1, -24) : 1e-6;
    if (bf16 && worst > bf16_worst) bf16_worst = worst;
    ck_assert_msg(worst < bound && (!bf16 || worst > 1e-6), "%s: conv %dx%d %d->%d N=%d %dx%d pre=%d acc=%d: error %.3g (bound %.3g)",
                  mode_name[mode], sh->kh, sh->kw, sh->cin, sh->cout, sh->N, sh->H, sh->W, sh->pre,
                  sh->acc, worst, bound);
    rnvpi_tpool_free(tp);
    free(panel); free(col); free(w); free(wb); free(b); free(a); free(s); free(inb); free(out); free(out0); free(ref);
}

START_TEST(conv_kernels_match_reference)
{
    const int direct = rnvpi_conv_direct_available(), avx2 = rnvpi_conv_avx2_available();
    if (!direct) fprintf(stderr, "test_conv: no AVX-512 on this CPU: its direct kernel is not checked\n");
    if (!avx2) fprintf(stderr, "test_conv: no AVX2 on this CPU: its direct kernel is not checked\n");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int m = 0; m < MODES; m++) {
            if ((m == AVX2_ONE || m == AVX2_POOL) && !avx2) continue;
            if (m >= DIRECT_ONE && !direct) continue;
            if (m >= BF16_ONE && !rnvpi_bf16_available()) continue;
            check_shape(&shapes[i], (enum mode)m);
        }
    if (rnvpi_bf16_available()) fprintf(stderr, "test_conv: direct bf16 error / sum|terms| at most %.3g\n", bf16_worst);
    else fprintf(stderr, "test_conv: no AVX512_BF16 on this CPU: the bf16 kernel is not checked\n");
}
END_TEST

/* The AVX2 kernel on chunks of images (as the trainer runs it), with a residual input: the same
 * result as the whole batch at once through the OpenBLAS kernel. */
START_TEST(avx2_chunks_match)
{
    if (!rnvpi_conv_avx2_available()) return;
    const int cout = 7, cin = 5, kh = 3, kw = 3, N = 5, H = 6, W = 5, P = N * H * W, K = cin * kh * kw;
    float *w = malloc(sizeof(float) * cout * K), *b = malloc(sizeof(float) * cout), *a = malloc(sizeof(float) * cin);
    float *s = malloc(sizeof(float) * cin), *in = malloc(sizeof(float) * cin * P), *res = malloc(sizeof(float) * cout * P);
    float *o1 = malloc(sizeof(float) * cout * P), *o2 = malloc(sizeof(float) * cout * P);
    float *col = malloc(sizeof(float) * (size_t)K * P), *panel = malloc(sizeof(float) * (rnvpi_conv_panel_floats(cin, kh, kw) + 16));
    for (int i = 0; i < cout * K; i++) w[i] = frand();
    for (int i = 0; i < cout; i++) b[i] = frand();
    for (int i = 0; i < cin; i++) a[i] = 1 + 0.5f * frand(), s[i] = 0.3f * frand();
    for (int i = 0; i < cin * P; i++) in[i] = frand();
    for (int i = 0; i < cout * P; i++) res[i] = frand();
    conv_i cv = {cout, cin, kh, kw, w, b, NULL, NULL, NULL};
    affine_i pre = {cin, a, s};
    rnvpi_conv_blas(o1, in, &cv, &pre, res, col, NULL, 0, N, N, H, W);
    for (int n0 = 0; n0 < N; n0 += 2) rnvpi_conv_avx2_chunk(o2, in, &cv, &pre, res, panel, n0, N - n0 < 2 ? N - n0 : 2, N, H, W);
    for (int i = 0; i < cout * P; i++) ck_assert_float_eq_tol(o1[i], o2[i], 1e-4f * (1 + fabsf(o1[i])));
    free(w); free(b); free(a); free(s); free(in); free(res); free(o1); free(o2); free(col); free(panel);
}
END_TEST

/* A randomly initialised RGB model of H x W (2 scales, 2 blocks, features 9/17: odd channel
 * counts for the kernels' edge cases), seed 11. */
static rnvp_model *small_rgb_model(int height, int width)
{
    rnvp_config cfg = {.height = height, .width = width, .channels = 3, .num_scales = 2, .res_blocks = 2,
                       .features = {9, 17}, .alpha = 0.05, .bn_eps = 1e-5, .flow_batchnorm = 1,
                       .flow_bn_eps = 1e-4, .kernel = 3};
    rnvp_model *m = NULL;
    rnvp_error e;
    ck_assert_msg(rnvp_model_init(&m, &cfg, 11, &e) == RNVP_OK, "%s", e.msg);
    return m;
}

/* Whole flows: contexts made with REALNVP_CONV=blas and with the default kernel agree on
 * log_prob and latents, and decode(encode(x)) gives x back with the default kernel. */
START_TEST(flow_kernels_agree)
{
    rnvp_model *m = small_rgb_model(8, 8);
    rnvp_error e;
    const int n = 5, D = rnvp_model_dim(m);
    uint8_t *px = malloc((size_t)n * D), *back = malloc((size_t)n * D);
    float *z1 = malloc(sizeof(float) * n * D), *z2 = malloc(sizeof(float) * n * D);
    double lp1[5], lp2[5];
    for (int i = 0; i < n * D; i++) px[i] = (uint8_t)(rnvpi_splitmix64(&rs) & 255);
    rnvp_ctx *cb = NULL, *cd = NULL;
    setenv("REALNVP_CONV", "blas", 1);
    ck_assert(rnvp_ctx_create(&cb, m, 2, &e) == RNVP_OK);
    unsetenv("REALNVP_CONV");
    ck_assert(rnvp_ctx_create(&cd, m, 3, &e) == RNVP_OK);
    ck_assert(rnvp_encode(cb, z1, lp1, px, NULL, n, &e) == RNVP_OK);
    ck_assert(rnvp_encode(cd, z2, lp2, px, NULL, n, &e) == RNVP_OK);
    for (int i = 0; i < n; i++)
        ck_assert_msg(fabs(lp1[i] - lp2[i]) <= 1e-5 * fabs(lp1[i]), "image %d: blas %.9g default %.9g", i,
                      lp1[i], lp2[i]);
    for (int i = 0; i < n * D; i++)
        ck_assert_msg(fabs(z1[i] - z2[i]) <= 1e-4 * (1 + fabs(z1[i])), "z[%d]: %g vs %g", i, z1[i], z2[i]);
    ck_assert(rnvp_decode(cd, back, z2, n, &e) == RNVP_OK);
    ck_assert_mem_eq(back, px, (size_t)n * D);
    rnvp_ctx_free(cb);
    rnvp_ctx_free(cd);
    rnvp_model_free(m);
    free(px); free(back); free(z1); free(z2);
}
END_TEST


/* ---- Winograd F(2x2,3x3) ----
 * Error analysis (measured with this test's shapes, |w| <= 1, |x| <= 1, pre scale <= 1.5): the
 * error of a float convolution against the double reference, divided by the scale
 * sum_terms |w||x| <= |b| + 9 cin 1.6 the direct kernels are checked with, is about 2-4e-8 for
 * both the AVX2 direct kernel and Winograd (F(2,3)'s transforms only add, subtract and halve: its
 * rounding grows by a small constant, not with the size), and the two kernels agree with each
 * other to about the same. Checked at 1e-6 of that scale, the direct kernels' tolerance; relative
 * to the reference's largest output the error is below 1e-6 as well. */
struct wshape {
    int cout, cin, N, H, W, pre, acc;   /* pre: 0 none, 1 relu only, 2 affine + relu */
};
static const struct wshape wshapes[] = {
    {32, 32, 3, 7, 5, 2, 0},     /* odd H and W: partial tiles on both borders, tiles across images */
    {13, 5, 2, 6, 6, 1, 1},      /* cout, cin not multiples of 8, residual */
    {4, 3, 1, 2, 2, 0, 0},       /* one tile */
    {7, 9, 1, 1, 3, 2, 1},       /* one row: half-empty tiles */
    {64, 64, 2, 14, 14, 2, 1},   /* the benchmark's scale-1 block conv */
    {32, 2, 3, 28, 28, 0, 0},    /* in_conv of a checkerboard coupling */
    {11, 17, 5, 9, 13, 2, 0},    /* odd everything, several blocks */
    {6, 33, 1, 3, 3, 1, 1},      /* fewer tiles than a block */
    {9, 16, 2, 5, 17, 2, 1},     /* 9 tiles a row, odd W: blocks across tile rows and images */
    {20, 12, 1, 7, 7, 2, 1},     /* AVX-512: 16 tiles, output channels split between threads */
};

static double wino_worst_err = 0, wino_worst_rel = 0, direct_worst_err = 0, wino_direct_diff = 0;

/* One random case of a 3x3 shape: weights and bias in [-1, 1], the batch norm's map (a, s), the
 * input, out = out0 (the residual's values) and ref, the float64 result (conv_ref). */
struct wcase {
    int K, P;
    float *w, *b, *a, *s, *in, *out, *out0;
    double *ref;
    affine_i pa, pr;
    const affine_i *pre;
};

static void wcase_init(struct wcase *c, const struct wshape *sh)
{
    c->K = sh->cin * 9;
    c->P = sh->N * sh->H * sh->W;
    const size_t no = (size_t)sh->cout * c->P;
    c->w = malloc(sizeof(float) * (size_t)sh->cout * c->K);
    c->b = malloc(sizeof(float) * sh->cout);
    c->a = malloc(sizeof(float) * sh->cin);
    c->s = malloc(sizeof(float) * sh->cin);
    c->in = malloc(sizeof(float) * (size_t)sh->cin * c->P);
    c->out = malloc(sizeof(float) * no);
    c->out0 = malloc(sizeof(float) * no);
    c->ref = malloc(sizeof(double) * no);
    for (int i = 0; i < sh->cout * c->K; i++) c->w[i] = frand();
    for (int i = 0; i < sh->cout; i++) c->b[i] = frand();
    for (int i = 0; i < sh->cin; i++) c->a[i] = 1 + 0.5f * frand(), c->s[i] = 0.3f * frand();
    for (size_t i = 0; i < (size_t)sh->cin * c->P; i++) c->in[i] = frand();
    for (size_t i = 0; i < no; i++) c->out0[i] = c->out[i] = frand();
    c->pa = (affine_i){sh->cin, c->a, c->s};
    c->pr = (affine_i){sh->cin, NULL, NULL};
    c->pre = sh->pre == 2 ? &c->pa : sh->pre == 1 ? &c->pr : NULL;
    const conv_i cv = {sh->cout, sh->cin, 3, 3, c->w, c->b, NULL, NULL, NULL};
    conv_ref(c->ref, c->out0, c->in, &cv, c->pre, sh->N, sh->H, sh->W, sh->acc);
}

static void wcase_free(struct wcase *c)
{
    free(c->w); free(c->b); free(c->a); free(c->s); free(c->in); free(c->out); free(c->out0); free(c->ref);
}

/* out's error against ref: the largest relative to its output's sum |terms| (a float rounding
 * bound, not cancellation; NaN counts as infinite) into *worst, and max |out - ref| / max |ref|
 * into *rel. */
static void wcase_error(const struct wcase *c, const float *out, int cout, double *worst, double *rel)
{
    double wst = 0, maxref = 0, maxabs = 0;
    for (int o = 0; o < cout; o++) {
        const double scale = fabs(c->b[o]) + (double)c->K * 1.6;   /* |w| <= 1, |pre(x)| <= 1.6 */
        for (int p = 0; p < c->P; p++) {
            const size_t i = (size_t)o * c->P + p;
            const double e = fabs(out[i] - c->ref[i]);
            if (!(e / scale <= wst)) wst = e / scale;
            if (fabs(c->ref[i]) > maxref) maxref = fabs(c->ref[i]);
            if (!(e <= maxabs)) maxabs = e;
        }
    }
    *worst = wst;
    *rel = maxabs / maxref;
}

static void check_winograd(const struct wshape *sh, int threads)
{
    struct wcase c;
    wcase_init(&c, sh);
    const int P = c.P;
    float *u = malloc(sizeof(float) * 16 * (size_t)sh->cout * sh->cin);
    float *outd = malloc(sizeof(float) * (size_t)sh->cout * P);
    memcpy(outd, c.out0, sizeof(float) * (size_t)sh->cout * P);
    rnvpi_winograd_weights(u, c.w, sh->cout, sh->cin);
    conv_i cv = {sh->cout, sh->cin, 3, 3, c.w, c.b, u, NULL, NULL}, cd = {sh->cout, sh->cin, 3, 3, c.w, c.b, NULL, NULL, NULL};

    const size_t pf = (rnvpi_conv_panel_floats(sh->cin, 3, 3) + 15) / 16 * 16;
    size_t colf = rnvpi_conv_col_floats(&cv, sh->N, sh->H, sh->W);
    if (colf < rnvpi_winograd_panel_floats(sh->cin)) colf = rnvpi_winograd_panel_floats(sh->cin);
    ck_assert(pf >= rnvpi_winograd_panel_floats(sh->cin));
    float *col = malloc(sizeof(float) * colf), *panel = aligned_alloc(64, sizeof(float) * 2 * pf);
    /* NaN in the buffers: whatever the kernel reads of them before writing must not matter */
    for (size_t i = 0; i < colf; i++) col[i] = NAN;
    for (size_t i = 0; i < 2 * pf; i++) panel[i] = NAN;
    net_ws ws = {.col = col, .direct = RNVPI_CONV_WINOGRAD};
    tpool *tp = NULL;
    if (threads > 1) {
        tp = rnvpi_tpool_create(threads);
        ck_assert_ptr_nonnull(tp);
        ws.tp = tp;
        ws.panel = panel;
        ws.panel_floats = pf;
    }
    rnvpi_conv_forward_acc(c.out, c.in, &cv, c.pre, &ws, sh->N, sh->H, sh->W, sh->acc);
    rnvpi_conv_forward_acc(outd, c.in, &cd, c.pre, &ws, sh->N, sh->H, sh->W, sh->acc);   /* no wino: AVX2 */
    if (rnvpi_winograd512_available()) {   /* the AVX-512 Winograd kernels: the same bits */
        float *o5 = malloc(sizeof(float) * (size_t)sh->cout * P);
        memcpy(o5, c.out0, sizeof(float) * (size_t)sh->cout * P);
        ws.wino_kind = RNVPI_WINO_AVX512;
        rnvpi_conv_forward_acc(o5, c.in, &cv, c.pre, &ws, sh->N, sh->H, sh->W, sh->acc);
        ws.wino_kind = RNVPI_WINO_AVX2;
        ck_assert_msg(!memcmp(o5, c.out, sizeof(float) * (size_t)sh->cout * P),
                      "winograd avx512 vs avx2, %d thread(s): %d->%d N=%d %dx%d: not the same bits", threads,
                      sh->cin, sh->cout, sh->N, sh->H, sh->W);
        free(o5);
    }
    double worst, rel, worstd, reld, diff = 0;
    wcase_error(&c, c.out, sh->cout, &worst, &rel);
    wcase_error(&c, outd, sh->cout, &worstd, &reld);
    for (int o = 0; o < sh->cout; o++)
        for (int p = 0; p < P; p++) {
            const size_t i = (size_t)o * P + p;
            const double dd = fabs((double)c.out[i] - outd[i]) / (fabs(c.b[o]) + (double)c.K * 1.6);
            if (!(dd <= diff)) diff = dd;
        }
    if (worst > wino_worst_err) wino_worst_err = worst;
    if (worstd > direct_worst_err) direct_worst_err = worstd;
    if (diff > wino_direct_diff) wino_direct_diff = diff;
    if (rel > wino_worst_rel) wino_worst_rel = rel;
    ck_assert_msg(worst < 1e-6 && diff < 1e-6 && rel <= 1e-6,
                  "winograd %d thread(s): %d->%d N=%d %dx%d pre=%d acc=%d: error %.3g (direct %.3g, "
                  "apart %.3g, relative to max |out| %.3g)", threads, sh->cin, sh->cout, sh->N, sh->H, sh->W,
                  sh->pre, sh->acc, worst, worstd, diff, rel);
    rnvpi_tpool_free(tp);
    free(panel); free(col); free(u); free(outd);
    wcase_free(&c);
}

START_TEST(winograd_matches_reference)
{
    if (!rnvpi_winograd_available()) {
        fprintf(stderr, "test_conv: no AVX2 on this CPU: Winograd is not checked\n");
        return;
    }
    for (size_t i = 0; i < sizeof wshapes / sizeof wshapes[0]; i++) {
        check_winograd(&wshapes[i], 1);
        check_winograd(&wshapes[i], 2);
    }
    fprintf(stderr, "test_conv: winograd error / sum|terms| %.3g (avx2 direct %.3g, apart %.3g), "
            "/ max|out| %.3g\n", wino_worst_err, direct_worst_err, wino_direct_diff, wino_worst_rel);
}
END_TEST

/* Winograd F(4x4,3x3) (AVX-512 CPUs; 16 images per register): against the float64 reference on one
 * and two threads with NaN-filled panels, over a partial last group of images, partial tiles at the
 * right and bottom borders, several column chunks per row, a tile row shared out by output channels,
 * and each pre and residual. Its rounding
 * error is several times F(2x2)'s (the transforms' coefficients reach 5 and 8): bounded at 2e-6 of
 * sum |terms| (measured 2.8e-7, F(2x2) 3.4e-8; a wrong transform coefficient gives errors of order 1). */
static const struct wshape w4shapes[] = {
    {32, 32, 16, 28, 28, 2, 1},  /* the bench model's scale-1 block conv, residual */
    {64, 64, 20, 14, 14, 2, 0},  /* a second group of 4 images, tiles 2 wide at the border */
    {40, 33, 13, 7, 7, 1, 1},    /* one partial group, 2x2 tiles (the outer ones 3 wide), cout % 8 != 0 */
    {40, 32, 16, 9, 7, 2, 1},    /* 3 tile rows: on 2 threads the third split by output channels (16 + 24) */
    {32, 48, 17, 9, 13, 0, 0},   /* odd H and W, an even number of tiles per row */
    {36, 32, 16, 6, 21, 2, 1},   /* two column chunks per packed row, an odd number of tiles per row */
};
static double w4_worst_err, w4_worst_rel;

static void check_winograd4(const struct wshape *sh, int threads)
{
    struct wcase c;
    wcase_init(&c, sh);
    float *u4 = malloc(sizeof(float) * 36 * (size_t)sh->cout * sh->cin);
    rnvpi_winograd4_weights(u4, c.w, sh->cout, sh->cin);
    conv_i cv = {sh->cout, sh->cin, 3, 3, c.w, c.b, NULL, NULL, u4};
    const size_t pf = (rnvpi_winograd4_panel_floats(sh->cin, sh->W) + 15) / 16 * 16;
    float *panel = aligned_alloc(64, sizeof(float) * 2 * pf);
    for (size_t i = 0; i < 2 * pf; i++) panel[i] = NAN;
    net_ws ws = {.col = panel, .direct = RNVPI_CONV_AVX512, .wino4 = 1};
    tpool *tp = NULL;
    if (threads > 1) {
        tp = rnvpi_tpool_create(threads);
        ck_assert_ptr_nonnull(tp);
        ws.tp = tp;
        ws.panel = panel;
        ws.panel_floats = pf;
        ws.col = NULL;
    }
    rnvpi_conv_winograd4(c.out, c.in, &cv, c.pre, sh->acc ? c.out : NULL, &ws, sh->N, sh->H, sh->W);
    double worst, rel;
    wcase_error(&c, c.out, sh->cout, &worst, &rel);
    if (worst > w4_worst_err) w4_worst_err = worst;
    if (rel > w4_worst_rel) w4_worst_rel = rel;
    ck_assert_msg(worst < 2e-6, "winograd F(4x4) %d thread(s): %d->%d N=%d %dx%d pre=%d acc=%d: error %.3g", threads,
                  sh->cin, sh->cout, sh->N, sh->H, sh->W, sh->pre, sh->acc, worst);
    rnvpi_tpool_free(tp);
    free(panel); free(u4);
    wcase_free(&c);
}

START_TEST(winograd4_matches_reference)
{
    if (!rnvpi_winograd512_available()) {
        fprintf(stderr, "test_conv: no AVX-512 on this CPU: Winograd F(4x4) is not checked\n");
        return;
    }
    for (size_t i = 0; i < sizeof w4shapes / sizeof w4shapes[0]; i++) {
        check_winograd4(&w4shapes[i], 1);
        check_winograd4(&w4shapes[i], 2);
    }
    fprintf(stderr, "test_conv: winograd F(4x4) error / sum|terms| %.3g, / max|out| %.3g\n", w4_worst_err,
            w4_worst_rel);
}
END_TEST

/* A residual block fused on F(4x4) (rnvpi_winograd4_block: the intermediate in a ring of packed rows)
 * against its two convolutions one after the other on the same kernel: the same bits. */
struct bshape {
    int C, cmid, N, H, W;
};
static const struct bshape bshapes[] = {
    {32, 32, 32, 28, 28},   /* the bench model's scale-1 block, two groups */
    {64, 64, 28, 14, 14},   /* a second group of 12 images, border tiles 2 wide */
    {32, 36, 12, 7, 7},     /* one partial group, cmid % 8 != 0, the ring's bottom row from th */
    {33, 36, 16, 9, 13},    /* odd H and W: a 1-wide border tile, rows 9-11 past H */
    {32, 32, 16, 10, 7},    /* rows 10 and 11 past H */
    {32, 32, 44, 14, 14},   /* 3 groups: on 2 threads two fused, the last one convolution at a time */
    {32, 32, 40, 7, 7},     /* 3 groups, the last of 8 images: all fused, one thread taking two */
};

/* K = 2 blocks of random weights: fused (all of a group's blocks before the next group) against
 * the four convolutions one after the other */
static void check_block(const struct bshape *sh, int threads)
{
    enum { K = 2 };
    const int C = sh->C, cm = sh->cmid, N = sh->N, H = sh->H, W = sh->W;
    const size_t P = (size_t)N * H * W;
    float *wa[K], *wb[K], *ba[K], *bb[K], *a[K], *sc[K], *ua[K], *ub[K];
    conv_i ca[K], cb[K];
    affine_i bn[K];
    const affine_i relu_only = {0, NULL, NULL};
    for (int k = 0; k < K; k++) {
        wa[k] = malloc(sizeof(float) * 9 * cm * C), wb[k] = malloc(sizeof(float) * 9 * C * cm);
        ba[k] = malloc(sizeof(float) * cm), bb[k] = malloc(sizeof(float) * C);
        a[k] = malloc(sizeof(float) * C), sc[k] = malloc(sizeof(float) * C);
        ua[k] = malloc(sizeof(float) * 36 * cm * C), ub[k] = malloc(sizeof(float) * 36 * C * cm);
        for (int i = 0; i < 9 * cm * C; i++) wa[k][i] = 0.2f * frand(), wb[k][i] = 0.2f * frand();
        for (int i = 0; i < cm; i++) ba[k][i] = 0.3f * frand();
        for (int i = 0; i < C; i++) bb[k][i] = 0.3f * frand(), a[k][i] = 1 + 0.5f * frand(), sc[k][i] = 0.3f * frand();
        rnvpi_winograd4_weights(ua[k], wa[k], cm, C);
        rnvpi_winograd4_weights(ub[k], wb[k], C, cm);
        ca[k] = (conv_i){cm, C, 3, 3, wa[k], ba[k], NULL, NULL, ua[k]};
        cb[k] = (conv_i){C, cm, 3, 3, wb[k], bb[k], NULL, NULL, ub[k]};
        bn[k] = (affine_i){C, a[k], sc[k]};
        ck_assert_msg(rnvpi_winograd4_block_wins(&ca[k], &cb[k], threads, N, H, W), "%d->%d->%d N=%d %dx%d: not fused",
                      C, cm, C, N, H, W);
    }
    float *h = malloc(sizeof(float) * C * P), *h1 = malloc(sizeof(float) * C * P), *h2 = malloc(sizeof(float) * C * P);
    float *h3 = malloc(sizeof(float) * C * P), *t = malloc(sizeof(float) * cm * P);
    for (size_t i = 0; i < C * P; i++) h[i] = frand();
    size_t pf = rnvpi_winograd4_block_panel_floats(C, cm, H, W);
    if (rnvpi_winograd4_panel_floats(C, W) > pf) pf = rnvpi_winograd4_panel_floats(C, W);
    if (rnvpi_winograd4_panel_floats(cm, W) > pf) pf = rnvpi_winograd4_panel_floats(cm, W);
    pf = (pf + 15) / 16 * 16;
    float *panel = aligned_alloc(64, sizeof(float) * threads * pf);
    for (size_t i = 0; i < threads * pf; i++) panel[i] = NAN;   /* the ring's borders must be written */
    tpool *tp = threads > 1 ? rnvpi_tpool_create(threads) : NULL;
    net_ws ws = {.tp = tp, .panel = panel, .panel_floats = pf, .direct = RNVPI_CONV_AVX512, .wino4 = 1, .w4block = 1};
    /* one convolution after the other */
    memcpy(h1, h, sizeof(float) * C * P);
    for (int k = 0; k < K; k++) {
        rnvpi_conv_winograd4(t, h1, &ca[k], &bn[k], NULL, &ws, N, H, W);
        rnvpi_conv_winograd4(h1, t, &cb[k], &relu_only, h1, &ws, N, H, W);
    }
    /* fused, directly and through rnvpi_conv_resblocks's choice */
    memcpy(h2, h, sizeof(float) * C * P);
    rnvpi_winograd4_blocks(h2, K, ca, bn, cb, &ws, N, H, W, (N + 15) / 16);
    memcpy(h3, h, sizeof(float) * C * P);
    for (size_t i = 0; i < cm * P; i++) t[i] = NAN;
    rnvpi_conv_resblocks(h3, t, K, ca, bn, cb, &ws, N, H, W);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < C * P; i++)
        if (memcmp(&h1[i], &h2[i], sizeof(float)) || memcmp(&h1[i], &h3[i], sizeof(float))) {
            if (!bad) first = i;
            bad++;
        }
    ck_assert_msg(bad == 0, "fused blocks %d thread(s) %d->%d->%d N=%d %dx%d: %zu of %zu values differ, first at "
                  "(c %zu, n %zu, y %zu, x %zu): %.9g, fused %.9g, via resblocks %.9g", threads, C, cm, C, N, H, W, bad,
                  C * P, first / P, first % P / ((size_t)H * W), first % ((size_t)H * W) / W, first % W, h1[first],
                  h2[first], h3[first]);
    int touched = 0;   /* the blocks changed h */
    for (size_t i = 0; i < C * P; i++) touched += h2[i] != h[i];
    ck_assert_int_gt(touched, (int)(C * P / 2));
    rnvpi_tpool_free(tp);
    for (int k = 0; k < K; k++) {
        free(wa[k]); free(wb[k]); free(ba[k]); free(bb[k]); free(a[k]); free(sc[k]); free(ua[k]); free(ub[k]);
    }
    free(panel); free(h); free(h1); free(h2); free(h3); free(t);
}

START_TEST(winograd4_block_matches_two_convs)
{
    if (!rnvpi_winograd512_available()) return;
    for (size_t i = 0; i < sizeof bshapes / sizeof bshapes[0]; i++) {
        check_block(&bshapes[i], 1);
        if ((bshapes[i].N + 15) / 16 >= 2) check_block(&bshapes[i], 2);
    }
}
END_TEST

/* The F(4x4) weight transform against its definition in double: each u[xi] of a random kernel. */
START_TEST(winograd4_weights_match_definition)
{
    static const double G[6][3] = {{0.25, 0, 0}, {-1 / 6.0, -1 / 6.0, -1 / 6.0}, {-1 / 6.0, 1 / 6.0, -1 / 6.0},
                                   {1 / 24.0, 1 / 12.0, 1 / 6.0}, {1 / 24.0, -1 / 12.0, 1 / 6.0}, {0, 0, 1}};
    float w[9], u[36];
    for (int i = 0; i < 9; i++) w[i] = frand();
    rnvpi_winograd4_weights(u, w, 1, 1);
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) {
            double x = 0;
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++) x += G[i][a] * w[a * 3 + b] * G[j][b];
            ck_assert_msg(fabs(u[i * 6 + j] - x) <= 1e-7 * (1 + fabs(x)), "u[%d][%d] %.9g, definition %.9g", i, j,
                          u[i * 6 + j], x);
        }
}
END_TEST

/* The weight transform against its definition on one kernel. */
/* The Winograd weight gradient (training), each kind of kernel (AVX2; AVX-512 where the CPU has it)
 * against a float64 sum over the direct definition: dw[o][c][a][b] = sum over n, y, x of
 * dout[o][n][y][x] pre(in)[c][n][y+a-1][x+b-1] (0 outside the image), over tile ranges split as the
 * trainer's threads split them. (The kinds sum the tiles in different orders: AVX2 through
 * cblas_sgemm, AVX-512 its own kernel, so their last bits differ.) */
static double wgrad_worst[2];

START_TEST(winograd_wgrad_matches_reference)
{
    static const struct wshape shapes[] = {
        {32, 32, 2, 14, 14, 2, 0}, {13, 5, 2, 6, 6, 1, 0}, {7, 9, 1, 1, 3, 2, 0}, {11, 17, 5, 9, 13, 2, 0},
        {6, 33, 1, 3, 3, 0, 0},    {16, 8, 3, 7, 7, 2, 0},
    };
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const struct wshape *sh = &shapes[si];
        const int cin = sh->cin, cout = sh->cout, N = sh->N, H = sh->H, W = sh->W, P = N * H * W;
        float *in = malloc(sizeof(float) * (size_t)cin * P), *dout = malloc(sizeof(float) * (size_t)cout * P);
        float *a = malloc(sizeof(float) * cin), *s = malloc(sizeof(float) * cin);
        for (int i = 0; i < cin * P; i++) in[i] = frand();
        for (int i = 0; i < cout * P; i++) dout[i] = frand();
        for (int i = 0; i < cin; i++) a[i] = 1 + 0.5f * frand(), s[i] = 0.3f * frand();
        affine_i pa = {cin, a, s}, pr = {cin, NULL, NULL};
        const affine_i *pre = sh->pre == 2 ? &pa : sh->pre == 1 ? &pr : NULL;
        double *ref = calloc((size_t)cout * cin * 9, sizeof(double));
        for (int o = 0; o < cout; o++)
            for (int c = 0; c < cin; c++)
                for (int n = 0; n < N; n++)
                    for (int y = 0; y < H; y++)
                        for (int x = 0; x < W; x++)
                            for (int ka = 0; ka < 3; ka++)
                                for (int kb = 0; kb < 3; kb++) {
                                    const int yy = y + ka - 1, xx = x + kb - 1;
                                    if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                                    double v = in[(size_t)c * P + (size_t)n * H * W + yy * W + xx];
                                    if (pre && pre->a) v = (float)(pre->a[c] * (float)v + pre->s[c]);
                                    if (pre && v < 0) v = 0;
                                    ref[((size_t)o * cin + c) * 9 + ka * 3 + kb] +=
                                        (double)dout[(size_t)o * P + (size_t)n * H * W + y * W + x] * v;
                                }
        const ptrdiff_t T = (ptrdiff_t)N * ((H + 1) / 2) * ((W + 1) / 2);
        const int tc = 64;
        float *buf = malloc(sizeof(float) * rnvpi_winograd_wgrad_floats(cin, cout, tc));
        float *dut = malloc(sizeof(float) * 16 * (size_t)cin * cout);
        float *dw[2];
        const int kinds[2] = {RNVPI_WINO_AVX2, RNVPI_WINO_AVX512}, nk = rnvpi_winograd512_available() ? 2 : 1;
        for (int k = 0; k < nk; k++) {
            dw[k] = calloc((size_t)cout * cin * 9, sizeof(float));
            for (int part = 0; part < 3; part++) {   /* three "threads": uneven tile ranges */
                memset(dut, 0, sizeof(float) * 16 * (size_t)cin * cout);
                rnvpi_winograd_wgrad(dut, dout, in, pre, cin, cout, buf, tc, T * part / 3, T * (part + 1) / 3, N, H, W,
                                     kinds[k]);
                rnvpi_winograd_wgrad_fold(dw[k], dut, cout, cin);
            }
            double worst = 0;
            for (int i = 0; i < cout * cin * 9; i++) {
                const double e = fabs(dw[k][i] - ref[i]) / (1 + fabs(ref[i]));
                if (!(e <= worst)) worst = e;
            }
            ck_assert_msg(worst < 1e-5, "wgrad kind %d, %d->%d N=%d %dx%d: error %g", kinds[k], cin, cout, N, H, W,
                          worst);
            if (worst > wgrad_worst[k]) wgrad_worst[k] = worst;
        }
        for (int k = 0; k < nk; k++) free(dw[k]);
        free(in); free(dout); free(a); free(s); free(ref); free(buf); free(dut);
    }
    fprintf(stderr, "test_conv: winograd weight gradient error / (1 + |dw|): avx2 %.2g, avx512 %.2g\n", wgrad_worst[0],
            wgrad_worst[1]);
}
END_TEST

START_TEST(winograd_weights_exact)
{
    const float w[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};   /* (1, 1, 3, 3) */
    float u[16];
    rnvpi_winograd_weights(u, w, 1, 1);
    /* G g G^T by hand: rows G g = [1 2 3], [6 7.5 9], [2 2.5 3], [7 8 9] */
    const float e[16] = {1, 3, 1, 3, 6, 11.25f, 3.75f, 9, 2, 3.75f, 1.25f, 3, 7, 12, 4, 9};
    for (int i = 0; i < 16; i++) ck_assert_float_eq(u[i], e[i]);
}
END_TEST

/* Whole flows with REALNVP_CONV=winograd: the same log_prob as the AVX2 direct kernel
 * (REALNVP_CONV=avx2) to 1e-6 relative on a small model with odd sizes and on the shipped
 * Fashion-MNIST model, and decode(encode(x)) = x pixel for pixel. */
static void flow_winograd_vs_default(const rnvp_model *m, const uint8_t *px, int n, const char *what)
{
    const int D = rnvp_model_dim(m);
    uint8_t *back = malloc((size_t)n * D);
    float *z1 = malloc(sizeof(float) * n * D), *z2 = malloc(sizeof(float) * n * D);
    double *lp1 = malloc(sizeof(double) * n), *lp2 = malloc(sizeof(double) * n);
    rnvp_ctx *cw = NULL, *cd = NULL;
    rnvp_error e;
    setenv("REALNVP_CONV", "avx2", 1);
    ck_assert(rnvp_ctx_create(&cd, m, n, &e) == RNVP_OK);
    setenv("REALNVP_CONV", "winograd", 1);
    ck_assert(rnvp_ctx_create(&cw, m, n, &e) == RNVP_OK);
    unsetenv("REALNVP_CONV");
    ck_assert(rnvp_encode(cd, z1, lp1, px, NULL, n, &e) == RNVP_OK);
    ck_assert(rnvp_encode(cw, z2, lp2, px, NULL, n, &e) == RNVP_OK);
    double worst = 0, zw = 0;
    for (int i = 0; i < n; i++) {
        const double r = fabs(lp1[i] - lp2[i]) / fabs(lp1[i]);
        if (!(r <= worst)) worst = r;
        ck_assert_msg(r <= 1e-6, "%s image %d: avx2 direct %.9g winograd %.9g", what, i, lp1[i], lp2[i]);
    }
    for (int i = 0; i < n * D; i++) {
        const double d = fabs(z1[i] - z2[i]) / (1 + fabs(z1[i]));
        if (!(d <= zw)) zw = d;
    }
    ck_assert_msg(zw <= 1e-4, "%s: latents %.3g apart", what, zw);
    ck_assert(rnvp_decode(cw, back, z2, n, &e) == RNVP_OK);
    ck_assert_mem_eq(back, px, (size_t)n * D);
    fprintf(stderr, "test_conv: %s: winograd vs avx2 direct log_prob %.3g relative, latents %.3g, "
            "decode(encode(x)) exact\n", what, worst, zw);
    rnvp_ctx_free(cw);
    rnvp_ctx_free(cd);
    free(back); free(z1); free(z2); free(lp1); free(lp2);
}

START_TEST(flow_winograd_agrees)
{
    if (!rnvpi_winograd_available()) return;
    rnvp_model *m = small_rgb_model(10, 6);
    const int n = 5, D = rnvp_model_dim(m);
    uint8_t *px = malloc((size_t)n * D);
    for (int i = 0; i < n * D; i++) px[i] = (uint8_t)(rnvpi_splitmix64(&rs) & 255);
    flow_winograd_vs_default(m, px, n, "10x6x3 random model");
    rnvp_model_free(m);
    free(px);
}
END_TEST

/* The bundled model, or NULL (with a message: the test is skipped) where it does not load. */
static rnvp_model *shipped_model(void)
{
    rnvp_model *m = NULL;
    rnvp_error e;
    if (rnvp_model_load(&m, "models/fashion-mnist/model.safetensors", &e) == RNVP_OK) return m;
    fprintf(stderr, "test_conv: shipped model not loaded (%s): skipped\n", e.msg);
    return NULL;
}

/* The shipped model on its own samples (realistic images) and on noise. */
START_TEST(shipped_model_winograd_agrees)
{
    if (!rnvpi_winograd_available()) return;
    rnvp_model *m = NULL;
    rnvp_error e;
    if (!(m = shipped_model())) return;
    const int n = 8, D = rnvp_model_dim(m);
    uint8_t *px = malloc((size_t)n * D);
    rnvp_ctx *c = NULL;
    unsetenv("REALNVP_CONV");
    ck_assert(rnvp_ctx_create(&c, m, n, &e) == RNVP_OK);
    ck_assert(rnvp_sample(c, px, NULL, n - 2, 0.8, 5, &e) == RNVP_OK);
    rnvp_ctx_free(c);
    for (int i = (n - 2) * D; i < n * D; i++) px[i] = (uint8_t)(rnvpi_splitmix64(&rs) & 255);
    flow_winograd_vs_default(m, px, n, "fashion-mnist model");
    rnvp_model_free(m);
    free(px);
}
END_TEST

/* The shipped model in a batch of 16 (its 32-channel block convolutions on the F(4x4) kernel on an
 * AVX-512 CPU) against REALNVP_WINOGRAD=2x2 (F(2x2) alone): log_prob to 1e-6 relative and not bitwise
 * equal everywhere (the F(4x4) kernel ran), latents to 1e-4, decode(encode(x)) exact. */
START_TEST(shipped_model_winograd4_agrees)
{
    if (!rnvpi_winograd512_available() || !rnvpi_winograd4_on()) return;
    rnvp_model *m = NULL;
    rnvp_error e;
    if (!(m = shipped_model())) return;
    const int n = 16, D = rnvp_model_dim(m);
    uint8_t *px = malloc((size_t)n * D), *back = malloc((size_t)n * D);
    float *z1 = malloc(sizeof(float) * n * D), *z2 = malloc(sizeof(float) * n * D);
    double lp1[16], lp2[16];
    rnvp_ctx *c2 = NULL, *c4 = NULL;
    unsetenv("REALNVP_CONV");
    ck_assert(rnvp_ctx_create(&c4, m, n, &e) == RNVP_OK);
    ck_assert(rnvp_sample(c4, px, NULL, n - 4, 0.8, 9, &e) == RNVP_OK);
    for (int i = (n - 4) * D; i < n * D; i++) px[i] = (uint8_t)(rnvpi_splitmix64(&rs) & 255);
    setenv("REALNVP_WINOGRAD", "2x2", 1);
    ck_assert(rnvp_ctx_create(&c2, m, n, &e) == RNVP_OK);
    unsetenv("REALNVP_WINOGRAD");
    ck_assert(rnvp_encode(c2, z1, lp1, px, NULL, n, &e) == RNVP_OK);
    ck_assert(rnvp_encode(c4, z2, lp2, px, NULL, n, &e) == RNVP_OK);
    double worst = 0, zw = 0;
    int differ = 0;
    for (int i = 0; i < n; i++) {
        const double r = fabs(lp1[i] - lp2[i]) / fabs(lp1[i]);
        if (!(r <= worst)) worst = r;
        differ += lp1[i] != lp2[i];
        ck_assert_msg(r <= 1e-6, "image %d: F(2x2) %.9g F(4x4) %.9g", i, lp1[i], lp2[i]);
    }
    ck_assert_msg(differ > 0, "the F(4x4) context gave F(2x2)'s bits on every image: was its kernel used?");
    /* the model's memory counts F(4x4)'s weights: 36 floats per input-output channel pair of each
     * 32-channel 3x3 layer (all the block convolutions: 16 couplings x 2 blocks x 2) */
    rnvp_model *m2 = NULL;
    setenv("REALNVP_WINOGRAD", "2x2", 1);
    ck_assert(rnvp_model_load(&m2, "models/fashion-mnist/model.safetensors", &e) == RNVP_OK);
    unsetenv("REALNVP_WINOGRAD");
    ck_assert(rnvp_model_bytes(m2) >= rnvp_model_num_params(m2) * sizeof(float));
    ck_assert_uint_eq(rnvp_model_bytes(m) - rnvp_model_bytes(m2), (size_t)16 * 2 * 2 * 36 * 32 * 32 * sizeof(float));
    rnvp_model_free(m2);
    for (int i = 0; i < n * D; i++) {
        const double d = fabs(z1[i] - z2[i]) / (1 + fabs(z1[i]));
        if (!(d <= zw)) zw = d;
    }
    ck_assert_msg(zw <= 1e-4, "latents %.3g apart", zw);
    ck_assert(rnvp_decode(c4, back, z2, n, &e) == RNVP_OK);
    ck_assert_mem_eq(back, px, (size_t)n * D);
    fprintf(stderr, "test_conv: fashion-mnist model, batch 16: F(4x4) vs F(2x2) log_prob %.3g relative (%d of %d "
            "images differ), latents %.3g, decode(encode(x)) exact\n", worst, differ, n, zw);
    rnvp_ctx_free(c2);
    rnvp_ctx_free(c4);
    rnvp_model_free(m);
    free(px); free(back); free(z1); free(z2);
}
END_TEST

/* The shipped model in a batch of 32 with its residual blocks fused (two groups of 16 images; on 2
 * threads one each) against REALNVP_FUSE_BLOCKS=0: the same log_prob and latents bit for bit, and
 * decode the same pixels. The fused context plans the rings into its workspace (it is larger). */
START_TEST(shipped_model_fused_blocks_same_bits)
{
    if (!rnvpi_winograd512_available() || !rnvpi_winograd4_on()) return;
    rnvp_model *m = NULL;
    rnvp_error e;
    if (!(m = shipped_model())) return;
    const int n = 32, D = rnvp_model_dim(m);
    uint8_t *px = malloc((size_t)n * D), *b1 = malloc((size_t)n * D), *b2 = malloc((size_t)n * D);
    float *z1 = malloc(sizeof(float) * n * D), *z2 = malloc(sizeof(float) * n * D);
    double lp1[32], lp2[32];
    rnvp_ctx *cf = NULL, *cu = NULL;
    unsetenv("REALNVP_CONV");
    unsetenv("REALNVP_FUSE_BLOCKS");
    ck_assert(rnvp_ctx_create(&cf, m, n, &e) == RNVP_OK);
    const size_t fused_bytes = rnvp_ctx_workspace_bytes(m, n);
    setenv("REALNVP_FUSE_BLOCKS", "0", 1);
    ck_assert(rnvp_ctx_create(&cu, m, n, &e) == RNVP_OK);
    ck_assert_uint_gt(fused_bytes, rnvp_ctx_workspace_bytes(m, n));
    unsetenv("REALNVP_FUSE_BLOCKS");
    ck_assert(rnvp_sample(cf, px, NULL, n - 8, 0.8, 11, &e) == RNVP_OK);
    for (int i = (n - 8) * D; i < n * D; i++) px[i] = (uint8_t)(rnvpi_splitmix64(&rs) & 255);
    ck_assert(rnvp_encode(cu, z1, lp1, px, NULL, n, &e) == RNVP_OK);
    ck_assert(rnvp_encode(cf, z2, lp2, px, NULL, n, &e) == RNVP_OK);
    ck_assert_mem_eq(lp1, lp2, sizeof lp1);
    ck_assert_mem_eq(z1, z2, sizeof(float) * n * D);
    ck_assert(rnvp_decode(cu, b1, z1, n, &e) == RNVP_OK);
    ck_assert(rnvp_decode(cf, b2, z2, n, &e) == RNVP_OK);
    ck_assert_mem_eq(b1, b2, (size_t)n * D);
    ck_assert_mem_eq(b2, px, (size_t)n * D);
    rnvp_ctx_free(cf);
    rnvp_ctx_free(cu);
    rnvp_model_free(m);
    free(px); free(b1); free(b2); free(z1); free(z2);
}
END_TEST

/* Precision bf16 on the shipped model: where the CPU has AVX512_BF16, log p within 1e-3 relative
 * of fp32 (and not equal: the bf16 kernel ran), decode(encode(x)) within a few levels on at most
 * 5% of the pixels (measured: 1.2%, 2 levels), fp32 again the same bits as before; elsewhere
 * refused with a message naming what is missing, the context left at fp32. */
START_TEST(bf16_precision)
{
    rnvp_error e;
    enum rnvp_precision p = RNVP_PRECISION_FP32;
    ck_assert(rnvp_precision_parse(&p, "bf16", &e) == RNVP_OK && p == RNVP_PRECISION_BF16);
    ck_assert(rnvp_precision_parse(&p, "fp16", &e) == RNVP_ERR_ARG && strstr(e.msg, "fp32 or bf16"));
    ck_assert_str_eq(rnvp_precision_name(RNVP_PRECISION_BF16), "bf16");
    rnvp_model *m = NULL;
    if (!(m = shipped_model())) return;
    const int n = 8, D = rnvp_model_dim(m);
    uint8_t *px = malloc((size_t)n * D), *back = malloc((size_t)n * D);
    float *z = malloc(sizeof(float) * n * D);
    double lp32[8], lp16[8], lpa[8];
    rnvp_ctx *c = NULL;
    unsetenv("REALNVP_CONV");
    ck_assert(rnvp_ctx_create(&c, m, n, &e) == RNVP_OK);
    ck_assert(rnvp_sample(c, px, NULL, n, 0.8, 9, &e) == RNVP_OK);
    ck_assert(rnvp_log_prob(c, lp32, NULL, px, NULL, n, &e) == RNVP_OK);
    if (rnvp_precision_check(RNVP_PRECISION_BF16, &e) != RNVP_OK) {
        ck_assert_int_eq(e.status, RNVP_ERR_UNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(e.msg, "AVX512_BF16"));
        ck_assert(rnvp_ctx_set_precision(c, RNVP_PRECISION_BF16, &e) == RNVP_ERR_UNSUPPORTED);
        ck_assert(rnvp_ctx_precision(c) == RNVP_PRECISION_FP32);
        fprintf(stderr, "test_conv: no AVX512_BF16: precision bf16 refused (%s)\n", e.msg);
    } else {
        ck_assert(rnvp_ctx_set_precision(c, RNVP_PRECISION_BF16, &e) == RNVP_OK);
        ck_assert(rnvp_ctx_precision(c) == RNVP_PRECISION_BF16);
        ck_assert(rnvp_encode(c, z, lp16, px, NULL, n, &e) == RNVP_OK);
        double worst = 0;
        for (int i = 0; i < n; i++) {
            const double r = fabs(lp16[i] - lp32[i]) / fabs(lp32[i]);
            if (!(r <= worst)) worst = r;
        }
        ck_assert_msg(worst <= 1e-3 && worst > 0, "bf16 log p %.3g relative to fp32", worst);
        /* the inverse feeds each s/t network the flow batch norm's inverse of what the forward
         * pass gave, equal to float32 rounding; float32 networks map that to the same pixels, bf16
         * rounding of their inputs sometimes does not: a few pixels off by a level or two */
        ck_assert(rnvp_decode(c, back, z, n, &e) == RNVP_OK);
        int off = 0, worst_px = 0;
        for (int i = 0; i < n * D; i++) {
            const int d = abs((int)back[i] - (int)px[i]);
            off += d != 0;
            if (d > worst_px) worst_px = d;
        }
        ck_assert_msg(off <= n * D / 20 && worst_px <= 8, "bf16 decode(encode(x)): %d of %d pixels off, by up to %d",
                      off, n * D, worst_px);
        ck_assert(rnvp_ctx_set_precision(c, RNVP_PRECISION_FP32, &e) == RNVP_OK);
        ck_assert(rnvp_log_prob(c, lpa, NULL, px, NULL, n, &e) == RNVP_OK);
        ck_assert_mem_eq(lpa, lp32, sizeof lp32);
        /* a context on the OpenBLAS kernels cannot */
        rnvp_ctx *cb = NULL;
        setenv("REALNVP_CONV", "blas", 1);
        ck_assert(rnvp_ctx_create(&cb, m, 2, &e) == RNVP_OK);
        unsetenv("REALNVP_CONV");
        ck_assert(rnvp_ctx_set_precision(cb, RNVP_PRECISION_BF16, &e) == RNVP_ERR_UNSUPPORTED);
        ck_assert_ptr_nonnull(strstr(e.msg, "REALNVP_CONV"));
        rnvp_ctx_free(cb);
        fprintf(stderr, "test_conv: fashion-mnist model: bf16 log_prob within %.3g of fp32; decode(encode(x)): %d of %d "
                "pixels off, by up to %d\n", worst, off, n * D, worst_px);
    }
    rnvp_ctx_free(c);
    rnvp_model_free(m);
    free(px); free(back); free(z);
}
END_TEST

static Suite *conv_suite(void)
{
    Suite *s = suite_create("conv");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, conv_kernels_match_reference);
    tcase_add_test(tc, avx2_chunks_match);
    tcase_add_test(tc, flow_kernels_agree);
    tcase_add_test(tc, winograd_matches_reference);
    tcase_add_test(tc, winograd_wgrad_matches_reference);
    tcase_add_test(tc, winograd_weights_exact);
    tcase_add_test(tc, winograd4_matches_reference);
    tcase_add_test(tc, winograd4_weights_match_definition);
    tcase_add_test(tc, winograd4_block_matches_two_convs);
    tcase_add_test(tc, shipped_model_winograd4_agrees);
    tcase_add_test(tc, shipped_model_fused_blocks_same_bits);
    tcase_add_test(tc, flow_winograd_agrees);
    tcase_add_test(tc, shipped_model_winograd_agrees);
    tcase_add_test(tc, bf16_precision);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(conv_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
