/* test_conv.c: the inference convolution kernels (core/conv.c) against a naive double-precision
 * convolution: OpenBLAS im2col + sgemm, and the AVX-512 direct kernel on one and two threads, with
 * and without guard zones; then whole flows run with each kernel. Leaves out timing (bench/). */
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

enum mode { BLAS, AVX2_ONE, AVX2_POOL, DIRECT_ONE, DIRECT_POOL_MASKED, DIRECT_POOL_GUARDED, MODES };
static const char *mode_name[MODES] = {"blas", "avx2 1 thread", "avx2 2 threads", "direct 1 thread",
                                       "direct 2 threads masked", "direct 2 threads guarded"};

static void check_shape(const struct shape *sh, enum mode mode)
{
    const int K = sh->cin * sh->kh * sh->kw, P = sh->N * sh->H * sh->W;
    const size_t G = rnvpi_conv_guard_floats(&(conv_i){0, 0, sh->kh, sh->kw, NULL, NULL}, sh->W);
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
    conv_i cv = {sh->cout, sh->cin, sh->kh, sh->kw, w, b};
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
    if (mode == DIRECT_POOL_MASKED || mode == DIRECT_POOL_GUARDED || mode == AVX2_POOL) {
        tp = rnvpi_tpool_create(2);
        ck_assert_ptr_nonnull(tp);
        ws.tp = tp;
        ws.panel = panel;
        ws.panel_floats = pf;
        if (mode == DIRECT_POOL_GUARDED) ws.guard = G;
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
    ck_assert_msg(worst < 1e-6, "%s: conv %dx%d %d->%d N=%d %dx%d pre=%d acc=%d: error %.3g",
                  mode_name[mode], sh->kh, sh->kw, sh->cin, sh->cout, sh->N, sh->H, sh->W, sh->pre,
                  sh->acc, worst);
    rnvpi_tpool_free(tp);
    free(panel); free(col); free(w); free(b); free(a); free(s); free(inb); free(out); free(out0); free(ref);
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
            check_shape(&shapes[i], (enum mode)m);
        }
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
    conv_i cv = {cout, cin, kh, kw, w, b};
    affine_i pre = {cin, a, s};
    rnvpi_conv_blas(o1, in, &cv, &pre, res, col, NULL, 0, N, N, H, W);
    for (int n0 = 0; n0 < N; n0 += 2) rnvpi_conv_avx2_chunk(o2, in, &cv, &pre, res, panel, n0, N - n0 < 2 ? N - n0 : 2, N, H, W);
    for (int i = 0; i < cout * P; i++) ck_assert_float_eq_tol(o1[i], o2[i], 1e-4f * (1 + fabsf(o1[i])));
    free(w); free(b); free(a); free(s); free(in); free(res); free(o1); free(o2); free(col); free(panel);
}
END_TEST

/* Whole flows: contexts made with REALNVP_CONV=blas and with the default kernel agree on
 * log_prob and latents, and decode(encode(x)) gives x back with the default kernel. */
START_TEST(flow_kernels_agree)
{
    rnvp_config cfg = {.height = 8, .width = 8, .channels = 3, .num_scales = 2, .res_blocks = 2,
                       .features = {9, 17}, .alpha = 0.05, .bn_eps = 1e-5, .flow_batchnorm = 1,
                       .flow_bn_eps = 1e-4, .kernel = 3};
    rnvp_model *m = NULL;
    rnvp_error e;
    ck_assert_msg(rnvp_model_init(&m, &cfg, 11, &e) == RNVP_OK, "%s", e.msg);
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

static Suite *conv_suite(void)
{
    Suite *s = suite_create("conv");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, conv_kernels_match_reference);
    tcase_add_test(tc, avx2_chunks_match);
    tcase_add_test(tc, flow_kernels_agree);
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
