/* test_flow.c: the inference flow's exactness: squeeze/split index maps, every coupling's
 * inverse and log-det against a numerical Jacobian, the whole flow, batching. Loader: test_loader.c. */
#include "internal.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static rnvp_model *tiny(int H, int W, int C, int S, int K, int fbn, uint64_t seed)
{
    rnvp_config cfg = {.height = H, .width = W, .channels = C, .num_scales = S, .res_blocks = K,
                       .alpha = 0.05, .bn_eps = 1e-5, .flow_batchnorm = fbn, .flow_bn_eps = 1e-4,
                       .kernel = 3};
    for (int s = 0; s < S; s++) cfg.features[s] = 3 + s;
    rnvp_model *m = NULL;
    rnvp_error e;
    ck_assert_msg(rnvp_model_init(&m, &cfg, seed, &e) == RNVP_OK, "%s", e.msg);
    return m;
}

/* log|det A| of an n x n matrix (row-major, double) by LU with partial pivoting */
static double logabsdet(double *a, int n)
{
    double l = 0;
    for (int k = 0; k < n; k++) {
        int p = k;
        for (int i = k + 1; i < n; i++)
            if (fabs(a[i * n + k]) > fabs(a[p * n + k])) p = i;
        if (p != k)
            for (int j = 0; j < n; j++) { double t = a[k * n + j]; a[k * n + j] = a[p * n + j]; a[p * n + j] = t; }
        double d = a[k * n + k];
        l += log(fabs(d));
        for (int i = k + 1; i < n; i++) {
            double f = a[i * n + k] / d;
            for (int j = k; j < n; j++) a[i * n + j] -= f * a[k * n + j];
        }
    }
    return l;
}

static uint64_t rs = 12345;
static float frand(void) { return (float)(2 * rnvpi_uniform(&rs) - 1); }

/* ---- squeeze and split against docs/model.md's formulas (2.1, 2.2) */
START_TEST(squeeze_and_split_maps)
{
    const int C = 3, N = 2, H = 4, W = 6, h2 = 2, w2 = 3;
    float in[3 * 2 * 4 * 6], out[3 * 2 * 4 * 6], back[3 * 2 * 4 * 6];
    for (int i = 0; i < C * N * H * W; i++) in[i] = (float)i;
    rnvpi_squeeze_forward(out, in, C, N, H, W);
    for (int c = 0; c < C; c++)
        for (int n = 0; n < N; n++)
            for (int dh = 0; dh < 2; dh++)
                for (int dw = 0; dw < 2; dw++)
                    for (int i = 0; i < h2; i++)
                        for (int j = 0; j < w2; j++) {
                            /* out[c*4 + dh*2 + dw][i][j] = in[c][2i + dh][2j + dw], per image n */
                            float o = out[(((c * 4 + dh * 2 + dw) * N + n) * h2 + i) * w2 + j];
                            float x = in[((c * N + n) * H + 2 * i + dh) * W + 2 * j + dw];
                            ck_assert_float_eq(o, x);
                        }
    rnvpi_squeeze_inverse(back, out, C, N, H, W);
    ck_assert_mem_eq(back, in, sizeof in);
    for (int c = 0; c < C; c++) {
        ck_assert_int_eq(rnvpi_split_keep(c, C), c * 4 + 0);
        ck_assert_int_eq(rnvpi_split_keep(C + c, C), c * 4 + 3);
        ck_assert_int_eq(rnvpi_split_drop(c, C), c * 4 + 1);
        ck_assert_int_eq(rnvpi_split_drop(C + c, C), c * 4 + 2);
    }
}
END_TEST

/* Sizes from a config use saturating arithmetic: SIZE_MAX means "does not fit" and sticks. */
START_TEST(saturating_sizes)
{
    ck_assert_uint_eq(sz_mul(3, 5), 15);
    ck_assert_uint_eq(sz_mul(0, SIZE_MAX / 2), 0);
    ck_assert_uint_eq(sz_mul(SIZE_MAX / 2 + 1, 2), SIZE_MAX);
    ck_assert_uint_eq(sz_mul(SIZE_MAX, 0), SIZE_MAX);
    ck_assert_uint_eq(sz_mul((size_t)1 << (4 * sizeof(size_t)), (size_t)1 << (4 * sizeof(size_t))), SIZE_MAX);
    ck_assert_uint_eq(sz_add(SIZE_MAX - 1, 1), SIZE_MAX);
    ck_assert_uint_eq(sz_add(SIZE_MAX - 1, 2), SIZE_MAX);
    ck_assert_uint_eq(sz_add(SIZE_MAX, 0), SIZE_MAX);
    ck_assert_uint_eq(sz_add(2, 3), 5);
}
END_TEST

/* Workspace for one coupling and N images. */
static net_ws make_ws(const coupling *c, int N, float **block)
{
    size_t a, b, o, col;
    rnvpi_coupling_ws_size(c, N, &a, &b, &o, &col);
    float *f = calloc(a + 2 * b + o + col + 1, sizeof(float));
    *block = f;
    net_ws ws = {.netin = f, .h = f + a, .t = f + a + b, .out = f + a + 2 * b, .col = f + a + 2 * b + o};
    return ws;
}

/* Every coupling: inverse(forward(x)) == x and log-det == log|det J| (central differences). */
static void check_couplings(rnvp_model *m)
{
    for (int k = 0; k < m->L; k++) {
        const coupling *c = &m->cp[k];
        const int n = c->C * c->H * c->W;
        float *blk;
        net_ws ws = make_ws(c, 1, &blk);
        float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *yp = malloc(sizeof(float) * n),
              *ym = malloc(sizeof(float) * n);
        double *J = malloc(sizeof(double) * n * n);
        for (int i = 0; i < n; i++) x[i] = frand();
        memcpy(y, x, sizeof(float) * n);
        double ld = 0;
        rnvpi_coupling_forward(y, &ld, c, 1, &ws);
        float *back = malloc(sizeof(float) * n);
        memcpy(back, y, sizeof(float) * n);
        rnvpi_coupling_inverse(back, c, 1, &ws);
        for (int i = 0; i < n; i++)
            ck_assert_msg(fabsf(back[i] - x[i]) <= 1e-5f * fmaxf(1.0f, fabsf(x[i])),
                          "coupling %d: inverse(forward(x))[%d] = %g, x = %g", k, i, back[i], x[i]);
        /* Jacobian column j by central differences, step h; float32 forward => tolerance
         * of 2e-3 on log-dets of magnitude ~1-10 (checked: errors are ~1e-4). */
        const float h = 1e-2f;
        for (int j = 0; j < n; j++) {
            double dummy = 0;
            memcpy(yp, x, sizeof(float) * n); yp[j] += h;
            memcpy(ym, x, sizeof(float) * n); ym[j] -= h;
            rnvpi_coupling_forward(yp, &dummy, c, 1, &ws);
            rnvpi_coupling_forward(ym, &dummy, c, 1, &ws);
            for (int i = 0; i < n; i++) J[i * n + j] = ((double)yp[i] - ym[i]) / (2.0 * h);
        }
        double num = logabsdet(J, n);
        ck_assert_msg(fabs(num - ld) <= 2e-3 * fmax(1.0, fabs(ld)),
                      "coupling %d (%s, parity %d): log-det %.6f, numerical %.6f", k,
                      c->kind == COUPLING_CHECKER ? "checkerboard" : "channel", c->parity, ld, num);
        free(x); free(y); free(yp); free(ym); free(J); free(back); free(blk);
    }
}

START_TEST(couplings_grey_fbn) { rnvp_model *m = tiny(4, 4, 1, 2, 1, 1, 1); check_couplings(m); rnvp_model_free(m); }
END_TEST
START_TEST(couplings_rgb_nofbn) { rnvp_model *m = tiny(4, 4, 3, 2, 2, 0, 2); check_couplings(m); rnvp_model_free(m); }
END_TEST
START_TEST(couplings_rect_3scales) { rnvp_model *m = tiny(8, 4, 1, 3, 1, 1, 3); check_couplings(m); rnvp_model_free(m); }
END_TEST

/* Whole flow through the public API: xt = (v + u)/256 -> z. With u the variable,
 * log|det dz/du| = L_flow + L_pre - D ln 256 = log_prob - log N(z). */
static void check_whole_flow(rnvp_model *m)
{
    const int D = rnvp_model_dim(m);
    rnvp_ctx *ctx;
    rnvp_error e;
    ck_assert(rnvp_ctx_create(&ctx, m, 4, &e) == RNVP_OK);
    uint8_t *v = malloc(D), *back = malloc(D);
    float *u = malloc(sizeof(float) * D), *up = malloc(sizeof(float) * D), *z = malloc(sizeof(float) * D),
          *zp = malloc(sizeof(float) * D), *zm = malloc(sizeof(float) * D);
    double *J = malloc(sizeof(double) * D * D);
    for (int i = 0; i < D; i++) {
        v[i] = (uint8_t)(rnvpi_splitmix64(&rs) % 256);
        u[i] = 0.3f + 0.4f * (float)rnvpi_uniform(&rs);
    }
    double lp;
    ck_assert(rnvp_encode(ctx, z, &lp, v, u, 1, &e) == RNVP_OK);
    double lnz = 0;
    for (int i = 0; i < D; i++) lnz += -0.5 * (double)z[i] * z[i] - 0.91893853320467274178;
    const float h = 0.02f;
    for (int j = 0; j < D; j++) {
        memcpy(up, u, sizeof(float) * D); up[j] += h;
        rnvp_encode(ctx, zp, NULL, v, up, 1, &e);
        memcpy(up, u, sizeof(float) * D); up[j] -= h;
        rnvp_encode(ctx, zm, NULL, v, up, 1, &e);
        for (int i = 0; i < D; i++) J[i * D + j] = ((double)zp[i] - zm[i]) / (2.0 * h);
    }
    double num = logabsdet(J, D), ana = lp - lnz;
    ck_assert_msg(fabs(num - ana) <= 5e-3 * fmax(1.0, fabs(ana)), "whole flow: log-det %.6f, numerical %.6f", ana, num);
    /* decode(encode(v)) == v with u = 0.5 */
    ck_assert(rnvp_encode(ctx, z, NULL, v, NULL, 1, &e) == RNVP_OK);
    ck_assert(rnvp_decode(ctx, back, z, 1, &e) == RNVP_OK);
    ck_assert_mem_eq(back, v, (size_t)D);
    free(v); free(back); free(u); free(up); free(z); free(zp); free(zm); free(J);
    rnvp_ctx_free(ctx);
}

START_TEST(flow_grey_1scale) { rnvp_model *m = tiny(4, 4, 1, 1, 1, 1, 4); check_whole_flow(m); rnvp_model_free(m); }
END_TEST
START_TEST(flow_grey_2scales_fbn) { rnvp_model *m = tiny(4, 4, 1, 2, 1, 1, 5); check_whole_flow(m); rnvp_model_free(m); }
END_TEST
START_TEST(flow_grey_2scales_nofbn) { rnvp_model *m = tiny(4, 4, 1, 2, 2, 0, 6); check_whole_flow(m); rnvp_model_free(m); }
END_TEST
START_TEST(flow_rgb_2scales) { rnvp_model *m = tiny(4, 4, 3, 2, 1, 1, 7); check_whole_flow(m); rnvp_model_free(m); }
END_TEST
START_TEST(flow_grey_3scales) { rnvp_model *m = tiny(8, 4, 1, 3, 1, 0, 8); check_whole_flow(m); rnvp_model_free(m); }
END_TEST

/* Latent layout of docs/model.md's example (2.7): 28x28x1, S = 3. */
START_TEST(latent_layout)
{
    rnvp_config cfg = {.height = 28, .width = 28, .channels = 1, .num_scales = 3, .res_blocks = 0,
                       .features = {2, 2, 2}, .alpha = 0.05, .bn_eps = 1e-5, .flow_batchnorm = 0,
                       .flow_bn_eps = 1e-4, .kernel = 3};
    rnvp_model *m;
    ck_assert(rnvpi_model_build(&m, &cfg, NULL, NULL, NULL) == RNVP_OK);
    rnvp_latent_part p0 = rnvp_model_latent_part(m, 0), p1 = rnvp_model_latent_part(m, 1), p2 = rnvp_model_latent_part(m, 2);
    ck_assert_int_eq(p0.offset, 0); ck_assert_int_eq(p0.channels, 2); ck_assert_int_eq(p0.height, 14);
    ck_assert_int_eq(p1.offset, 392); ck_assert_int_eq(p1.channels, 4); ck_assert_int_eq(p1.height, 7);
    ck_assert_int_eq(p2.offset, 588); ck_assert_int_eq(p2.channels, 4); ck_assert_int_eq(p2.width, 7);
    ck_assert_int_eq(m->L, 16);
    ck_assert_int_eq(rnvp_model_dim(m), 784);
    rnvp_model_free(m);
}
END_TEST

/* Batched results equal one-at-a-time results; n > max_batch is chunked. */
START_TEST(batched_equals_single)
{
    rnvp_model *m = tiny(8, 8, 3, 2, 1, 1, 9);
    const int D = rnvp_model_dim(m), n = 7;
    rnvp_ctx *big, *one;
    rnvp_error e;
    ck_assert(rnvp_ctx_create(&big, m, 3, &e) == RNVP_OK);   /* 7 images in chunks of 3 */
    ck_assert(rnvp_ctx_create(&one, m, 1, &e) == RNVP_OK);
    uint8_t *v = malloc((size_t)n * D), *px = malloc((size_t)n * D), *p1 = malloc(D);
    float *z = malloc(sizeof(float) * n * D), *z1 = malloc(sizeof(float) * D);
    for (int i = 0; i < n * D; i++) v[i] = (uint8_t)(rnvpi_splitmix64(&rs) % 256);
    double lp[7], bpd[7], l1, b1;
    ck_assert(rnvp_log_prob(big, lp, bpd, v, NULL, n, &e) == RNVP_OK);
    ck_assert(rnvp_encode(big, z, NULL, v, NULL, n, &e) == RNVP_OK);
    for (int i = 0; i < n; i++) {
        ck_assert(rnvp_log_prob(one, &l1, &b1, v + (size_t)i * D, NULL, 1, &e) == RNVP_OK);
        ck_assert_msg(fabs(l1 - lp[i]) <= 1e-5 * fabs(l1), "image %d: batched %.8g single %.8g", i, lp[i], l1);
        ck_assert(fabs(b1 - bpd[i]) <= 1e-5 * fabs(b1));
        ck_assert(fabs(bpd[i] + lp[i] / (D * log(2.0))) < 1e-9 * fabs(bpd[i]));
        ck_assert(rnvp_encode(one, z1, NULL, v + (size_t)i * D, NULL, 1, &e) == RNVP_OK);
        for (int j = 0; j < D; j++) ck_assert(fabsf(z1[j] - z[(size_t)i * D + j]) <= 1e-5f * fmaxf(1, fabsf(z1[j])));
    }
    /* sampling: the same seed gives the same images, whatever the batch */
    ck_assert(rnvp_sample(big, px, NULL, n, 0.7, 42, &e) == RNVP_OK);
    for (int i = 0; i < n; i++) {
        rnvp_sample_latents(z1, 1, D, 0.7, 42);   /* image 0's stream */
        (void)i;
    }
    ck_assert(rnvp_sample(one, p1, NULL, 1, 0.7, 42, &e) == RNVP_OK);
    ck_assert_mem_eq(p1, px, (size_t)D);
    /* bad arguments */
    ck_assert(rnvp_sample(one, p1, NULL, 1, -1, 42, &e) == RNVP_ERR_ARG);
    z1[3] = NAN;
    ck_assert(rnvp_decode(one, p1, z1, 1, &e) == RNVP_ERR_ARG);
    ck_assert(strstr(e.msg, "latent 3") != NULL);
    free(v); free(px); free(p1); free(z); free(z1);
    rnvp_ctx_free(big); rnvp_ctx_free(one); rnvp_model_free(m);
}
END_TEST

/* Latents from a seed are N(0, T^2): mean ~ 0 and std ~ T over many values. */
START_TEST(latents_distribution)
{
    const int n = 200000;
    float *z = malloc(sizeof(float) * n);
    rnvp_sample_latents(z, 1, n, 0.7, 7);
    double s = 0, s2 = 0;
    for (int i = 0; i < n; i++) { s += z[i]; s2 += (double)z[i] * z[i]; }
    double mean = s / n, sd = sqrt(s2 / n - mean * mean);
    ck_assert_msg(fabs(mean) < 0.01 && fabs(sd - 0.7) < 0.01, "mean %g sd %g", mean, sd);
    free(z);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("flow");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, squeeze_and_split_maps);
    tcase_add_test(tc, saturating_sizes);
    tcase_add_test(tc, couplings_grey_fbn);
    tcase_add_test(tc, couplings_rgb_nofbn);
    tcase_add_test(tc, couplings_rect_3scales);
    tcase_add_test(tc, flow_grey_1scale);
    tcase_add_test(tc, flow_grey_2scales_fbn);
    tcase_add_test(tc, flow_grey_2scales_nofbn);
    tcase_add_test(tc, flow_rgb_2scales);
    tcase_add_test(tc, flow_grey_3scales);
    tcase_add_test(tc, latent_layout);
    tcase_add_test(tc, batched_equals_single);
    tcase_add_test(tc, latents_distribution);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? 1 : 0;
}
