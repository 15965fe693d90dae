/* test_golden.c: the library against an independent implementation of docs/model.md: log_prob,
 * bits/dim and latents of the checkpoints and PNGs committed in tests/data, compared with
 * tests/data/golden.json, which tests/reference/gen_golden.py computed with numpy in float64.
 * Leaves out running python (the committed JSON is the oracle) and the loader's errors.
 *
 * Tolerances: log_prob and bits/dim 1e-4 relative (docs/model.md's agreement between two correct
 * implementations; measured <= 1e-7). Latents |z - z_ref| <= 2e-5 * (1 + |z_ref|) per element
 * (float32 through up to 16 couplings; measured |dz| <= 1.8e-6, |dz| / (1 + |z|) <= 4.6e-7).
 * Decoding the reference latents must give back the image's pixels exactly (u = 0.5 puts every
 * value mid-bin, 1/512 from an edge). The test prints the differences it measured.
 * Run from the repository root, or set RNVP_TEST_DATA to the data directory. */
#include "realnvp.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LP_RTOL 1e-4
#define Z_TOL 2e-5

static const char *data_dir = "tests/data";
static json_t *golden;   /* the parsed golden.json, loaded in main */

/* one model of golden.json, loaded: the model, its images' pixels and the reference values */
typedef struct gmodel {
    const char *name;
    rnvp_model *m;
    int n, D, C, H, W;
    uint8_t *px;        /* (n, C, H, W) */
    double *lp, *bpd;   /* (n) reference */
    float *z;           /* (n, D) reference latents, rounded to float32 */
    double *zd;         /* (n, D) reference latents as stored */
    const char **files; /* (n) */
} gmodel;

static void gm_load(gmodel *g, json_t *entry)
{
    memset(g, 0, sizeof *g);
    g->name = json_string_value(json_object_get(entry, "checkpoint"));
    ck_assert_ptr_nonnull(g->name);
    char path[512];
    rnvp_error e;
    snprintf(path, sizeof path, "%s/%s", data_dir, g->name);
    ck_assert_msg(rnvp_model_load(&g->m, path, &e) == RNVP_OK, "%s", e.msg);
    const rnvp_config *c = rnvp_model_config(g->m);
    g->C = c->channels;
    g->H = c->height;
    g->W = c->width;
    g->D = rnvp_model_dim(g->m);
    ck_assert_int_eq(g->D, (int)json_integer_value(json_object_get(entry, "D")));
    json_t *imgs = json_object_get(entry, "images");
    g->n = (int)json_array_size(imgs);
    ck_assert_int_ge(g->n, 3);
    size_t D = (size_t)g->D, n = (size_t)g->n;
    g->px = malloc(n * D);
    g->lp = malloc(n * sizeof *g->lp);
    g->bpd = malloc(n * sizeof *g->bpd);
    g->z = malloc(n * D * sizeof *g->z);
    g->zd = malloc(n * D * sizeof *g->zd);
    g->files = malloc(n * sizeof *g->files);
    ck_assert(g->px && g->lp && g->bpd && g->z && g->zd && g->files);
    for (size_t i = 0; i < n; i++) {
        json_t *im = json_array_get(imgs, i);
        g->files[i] = json_string_value(json_object_get(im, "file"));
        ck_assert_ptr_nonnull(g->files[i]);
        snprintf(path, sizeof path, "%s/%s", data_dir, g->files[i]);
        ck_assert_msg(rnvp_png_read(g->px + i * D, path, g->C, g->H, g->W, &e) == RNVP_OK, "%s", e.msg);
        json_t *lp = json_object_get(im, "log_prob"), *bpd = json_object_get(im, "bits_per_dim");
        ck_assert(json_is_number(lp) && json_is_number(bpd));
        g->lp[i] = json_number_value(lp);
        g->bpd[i] = json_number_value(bpd);
        json_t *z = json_object_get(im, "latents");
        ck_assert_msg(json_array_size(z) == D, "%s: %zu latents, D = %zu", g->files[i], json_array_size(z), D);
        for (size_t j = 0; j < D; j++) {
            g->zd[i * D + j] = json_number_value(json_array_get(z, j));
            g->z[i * D + j] = (float)g->zd[i * D + j];
        }
    }
}

static void gm_free(gmodel *g)
{
    rnvp_model_free(g->m);
    free(g->px);
    free(g->lp);
    free(g->bpd);
    free(g->z);
    free(g->zd);
    free(g->files);
}

static double rel(double a, double ref) { return fabs(a - ref) / fabs(ref); }

/* ---- the oracle itself: enough models and images, values that differ, layouts that agree */
START_TEST(golden_file_and_layout)
{
    json_t *models = json_object_get(golden, "models");
    ck_assert_int_ge(json_array_size(models), 3);
    int grey = 0, rgb = 0, fbn = 0, nofbn = 0, s3 = 0;
    for (size_t k = 0; k < json_array_size(models); k++) {
        json_t *entry = json_array_get(models, k);
        gmodel g;
        gm_load(&g, entry);
        const rnvp_config *c = rnvp_model_config(g.m);
        grey += c->channels == 1;
        rgb += c->channels == 3;
        fbn += c->flow_batchnorm;
        nofbn += !c->flow_batchnorm;
        s3 += c->num_scales >= 3;
        /* the reference's latent layout: [offset, C, H, W] per scale */
        json_t *lay = json_object_get(entry, "layout");
        ck_assert_int_eq((int)json_array_size(lay), rnvp_model_num_latent_parts(g.m));
        for (int s = 0; s < rnvp_model_num_latent_parts(g.m); s++) {
            rnvp_latent_part p = rnvp_model_latent_part(g.m, s);
            json_t *r = json_array_get(lay, (size_t)s);
            ck_assert_int_eq(p.offset, (int)json_integer_value(json_array_get(r, 0)));
            ck_assert_int_eq(p.channels, (int)json_integer_value(json_array_get(r, 1)));
            ck_assert_int_eq(p.height, (int)json_integer_value(json_array_get(r, 2)));
            ck_assert_int_eq(p.width, (int)json_integer_value(json_array_get(r, 3)));
        }
        /* distinct images with distinct, finite reference values */
        for (int i = 0; i < g.n; i++) {
            ck_assert(isfinite(g.lp[i]) && g.lp[i] < 0);
            ck_assert(fabs(g.bpd[i] * g.D * log(2.0) + g.lp[i]) < 1e-9 * fabs(g.lp[i]));
            for (int j = 0; j < i; j++) {
                ck_assert_msg(rel(g.lp[i], g.lp[j]) > 1e-3, "%s and %s: same log_prob", g.files[i], g.files[j]);
                ck_assert(memcmp(g.px + (size_t)i * g.D, g.px + (size_t)j * g.D, (size_t)g.D));
            }
        }
        gm_free(&g);
    }
    ck_assert(grey && rgb && fbn && nofbn && s3);
}
END_TEST

/* ---- log_prob and bits/dim: the whole set in one batch, one at a time, and in chunks of 2 */
START_TEST(golden_log_prob)
{
    json_t *models = json_object_get(golden, "models");
    for (size_t k = 0; k < json_array_size(models); k++) {
        gmodel g;
        gm_load(&g, json_array_get(models, k));
        double worst = 0;
        int batches[] = {g.n, 1, 2};
        for (int b = 0; b < 3; b++) {
            rnvp_ctx *cx;
            rnvp_error e;
            ck_assert_msg(rnvp_ctx_create(&cx, g.m, batches[b], &e) == RNVP_OK, "%s", e.msg);
            double lp[16], bpd[16];
            ck_assert_int_le(g.n, 16);
            if (batches[b] == 1) {
                for (int i = 0; i < g.n; i++)
                    ck_assert_msg(rnvp_log_prob(cx, lp + i, bpd + i, g.px + (size_t)i * g.D, NULL, 1, &e) == RNVP_OK, "%s", e.msg);
            } else {
                /* max_batch 2 < n: the library splits the call into chunks */
                ck_assert_msg(rnvp_log_prob(cx, lp, bpd, g.px, NULL, g.n, &e) == RNVP_OK, "%s", e.msg);
            }
            for (int i = 0; i < g.n; i++) {
                ck_assert_msg(rel(lp[i], g.lp[i]) <= LP_RTOL, "%s %s (batch %d): log_prob %.10g, reference %.10g",
                              g.name, g.files[i], batches[b], lp[i], g.lp[i]);
                ck_assert_msg(rel(bpd[i], g.bpd[i]) <= LP_RTOL, "%s %s (batch %d): bits/dim %.10g, reference %.10g",
                              g.name, g.files[i], batches[b], bpd[i], g.bpd[i]);
                if (rel(lp[i], g.lp[i]) > worst) worst = rel(lp[i], g.lp[i]);
                if (rel(bpd[i], g.bpd[i]) > worst) worst = rel(bpd[i], g.bpd[i]);
            }
            rnvp_ctx_free(cx);
        }
        printf("golden %-24s log_prob and bits/dim: max relative difference %.2e (tolerance %.0e)\n", g.name, worst, LP_RTOL);
        gm_free(&g);
    }
}
END_TEST

/* ---- latents from rnvp_encode, and its log_prob */
START_TEST(golden_latents)
{
    json_t *models = json_object_get(golden, "models");
    for (size_t k = 0; k < json_array_size(models); k++) {
        gmodel g;
        gm_load(&g, json_array_get(models, k));
        rnvp_ctx *cx;
        rnvp_error e;
        ck_assert_msg(rnvp_ctx_create(&cx, g.m, g.n, &e) == RNVP_OK, "%s", e.msg);
        float *z = malloc((size_t)g.n * g.D * sizeof *z);
        double lp[16];
        ck_assert_msg(rnvp_encode(cx, z, lp, g.px, NULL, g.n, &e) == RNVP_OK, "%s", e.msg);
        double worst = 0, worst_rel = 0, zmax = 0;
        for (int i = 0; i < g.n; i++) {
            ck_assert_msg(rel(lp[i], g.lp[i]) <= LP_RTOL, "%s %s: encode's log_prob %.10g, reference %.10g",
                          g.name, g.files[i], lp[i], g.lp[i]);
            for (int j = 0; j < g.D; j++) {
                double r = g.zd[(size_t)i * g.D + j], d = fabs((double)z[(size_t)i * g.D + j] - r);
                ck_assert_msg(d <= Z_TOL * (1 + fabs(r)), "%s %s: z[%d] = %.9g, reference %.9g",
                              g.name, g.files[i], j, (double)z[(size_t)i * g.D + j], r);
                if (d > worst) worst = d;
                if (d / (1 + fabs(r)) > worst_rel) worst_rel = d / (1 + fabs(r));
                if (fabs(r) > zmax) zmax = fabs(r);
            }
        }
        printf("golden %-24s latents: max |dz| %.2e, max |dz|/(1+|z|) %.2e (tolerance %.0e), max |z| %.3g\n",
               g.name, worst, worst_rel, Z_TOL, zmax);
        free(z);
        rnvp_ctx_free(cx);
        gm_free(&g);
    }
}
END_TEST

/* ---- decoding the reference latents gives back the pixels */
START_TEST(golden_decode)
{
    json_t *models = json_object_get(golden, "models");
    for (size_t k = 0; k < json_array_size(models); k++) {
        gmodel g;
        gm_load(&g, json_array_get(models, k));
        rnvp_ctx *cx;
        rnvp_error e;
        ck_assert_msg(rnvp_ctx_create(&cx, g.m, g.n, &e) == RNVP_OK, "%s", e.msg);
        uint8_t *px = malloc((size_t)g.n * g.D);
        ck_assert_msg(rnvp_decode(cx, px, g.z, g.n, &e) == RNVP_OK, "%s", e.msg);
        for (int i = 0; i < g.n; i++)
            for (int j = 0; j < g.D; j++)
                ck_assert_msg(px[(size_t)i * g.D + j] == g.px[(size_t)i * g.D + j], "%s %s: pixel %d decodes to %d, image has %d",
                              g.name, g.files[i], j, px[(size_t)i * g.D + j], g.px[(size_t)i * g.D + j]);
        free(px);
        rnvp_ctx_free(cx);
        gm_free(&g);
    }
}
END_TEST

static Suite *golden_suite(void)
{
    Suite *s = suite_create("golden");
    TCase *t = tcase_create("golden");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, golden_file_and_layout);
    tcase_add_test(t, golden_log_prob);
    tcase_add_test(t, golden_latents);
    tcase_add_test(t, golden_decode);
    suite_add_tcase(s, t);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    rnvp_blas_select_core(argv);
    const char *d = getenv("RNVP_TEST_DATA");
    if (d && *d) data_dir = d;
    char path[512];
    snprintf(path, sizeof path, "%s/golden.json", data_dir);
    json_error_t je;
    golden = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!golden) {
        fprintf(stderr, "test_golden: %s: %s (run from the repository root or set RNVP_TEST_DATA)\n", path, je.text);
        return EXIT_FAILURE;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    SRunner *r = srunner_create(golden_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    json_decref(golden);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
