/* test_equiv.c: the trainer's flow and the inference core compute the same flow, over many shapes,
 * and a batch split over simulated processes (tr_comm) computes the same step as one process.
 * Leaves out gradients against finite differences (test_gradcheck.c) and MPI itself (test_mpi.sh).
 *
 * Method
 * - Equivalence: a random non-trivial model (rnvp_model_init), random pixels and dequantisation
 *   noise in multiples of 1/256 (so that (v + u) / 256 is exact in float and both paths see the
 *   same x~). One training-mode pass with update_stats = 2 sets every running statistic to the
 *   batch's; the inference core (folded weights, running statistics) must then give each
 *   image's log p(v) as the trainer computed it. Tolerance 1e-4 relative (docs/model.md's
 *   agreement between two correct implementations; the folding of bn_b into conv_a and float
 *   running statistics make them differ by round-off only).
 * - Data parallelism: P threads each run tr_forward_backward on 1/P of a batch with a tr_comm
 *   whose sums go through shared memory and a barrier; the loss, the sum of their gradients
 *   and the running statistics must equal one pass over the whole batch to 1e-5 relative
 *   (gradients: |a - b| <= 5e-5 (|a| + 0.1 max|grad|), observed 5e-6: float32 sums in another order; and the gradients whose exact value
 *   is 0, such as a bias in front of a batch norm, are float32 round-off either way). */
#include "../train/layers.h"
#include "../train/train.h"

#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 4242;

typedef struct shape {
    int H, W, C, S, K, F, fbn, kernel;
} shape;

static rnvp_config config_of(const shape *s)
{
    rnvp_config c = {.height = s->H, .width = s->W, .channels = s->C, .num_scales = s->S,
                     .res_blocks = s->K, .alpha = 0.05, .bn_eps = 1e-5, .flow_batchnorm = s->fbn,
                     .flow_bn_eps = 1e-4, .kernel = s->kernel};
    for (int i = 0; i < s->S; i++) c.features[i] = s->F;
    return c;
}

/* pixels, noise (multiples of 1/256) and x~ = (v + u) / 256 for n images of D values */
static void make_batch(uint8_t *pix, float *noise, float *xt, int n, int D)
{
    for (int i = 0; i < n * D; i++) {
        pix[i] = (uint8_t)(rnvpi_splitmix64(&rng) & 255);
        noise[i] = (float)(rnvpi_splitmix64(&rng) & 255) / 256.0f;
        xt[i] = ((float)pix[i] + noise[i]) / 256.0f;
    }
}

static double check_shape(const shape *s)
{
    rnvp_config cfg = config_of(s);
    rnvp_model *m;
    rnvp_error err;
    ck_assert_msg(rnvp_model_init(&m, &cfg, 7 + s->S, &err) == RNVP_OK, "%s", err.msg);
    const int N = 5, D = m->D;
    uint8_t *pix = malloc((size_t)N * D);
    float *noise = malloc(sizeof(float) * N * D), *xt = malloc(sizeof(float) * N * D);
    make_batch(pix, noise, xt, N, D);
    tr_ws *ws;
    ck_assert(tr_ws_create(&ws, m, N, &err) == RNVP_OK);
    double loss = tr_forward_backward(ws, m, NULL, xt, N, 2);   /* running statistics <- the batch's */
    ck_assert(isfinite(loss));
    double lp_train[5], lp_core[5], bpd[5];
    tr_ws_log_prob(ws, lp_train, N);
    rnvpi_model_fold(m);
    rnvp_ctx *ctx;
    ck_assert(rnvp_ctx_create(&ctx, m, N, &err) == RNVP_OK);
    ck_assert(rnvp_log_prob(ctx, lp_core, bpd, pix, noise, N, &err) == RNVP_OK);
    double worst = 0, mean_bpd = 0;
    for (int i = 0; i < N; i++) {
        const double rel = fabs(lp_train[i] - lp_core[i]) / fabs(lp_core[i]);
        if (rel > worst) worst = rel;
        mean_bpd += bpd[i] / N;
        ck_assert_msg(rel < 1e-4, "%dx%dx%d S=%d K=%d F=%d fbn=%d kernel=%d image %d: trainer %.9g, core %.9g",
                      s->H, s->W, s->C, s->S, s->K, s->F, s->fbn, s->kernel, i, lp_train[i], lp_core[i]);
    }
    /* the training loss is the batch mean of the same bits/dim */
    ck_assert_double_eq_tol(loss, mean_bpd, 1e-4 * fabs(mean_bpd));
    printf("  %2dx%-2d x%d S=%d K=%d F=%d flow-bn %d kernel %d: log p trainer vs core, max relative difference %.1e\n",
           s->H, s->W, s->C, s->S, s->K, s->F, s->fbn, s->kernel, worst);
    rnvp_ctx_free(ctx);
    tr_ws_free(ws);
    rnvp_model_free(m);
    free(pix); free(noise); free(xt);
    return worst;
}

/* grey and RGB; 1 to 4 scales; odd widths and heights where the spec allows them (at one scale,
 * and at the last level of two and three scales); 1 and 3 residual blocks; kernels 1, 3, 5;
 * with and without flow batch norm. No last level of 1 x 1: there the checkerboard coupling of
 * parity 1 sees an all-zero input, so its features are the same for every image and their
 * batch variance is 0; the trainer normalises them to exactly 0 while the folded inference
 * weights leave round-off, multiplied by 1/sqrt(eps) ~ 316 at each of its batch norms, so the
 * two part by far more than round-off (test_fbn_no_transformed covers the trainer there). */
static const shape shapes[] = {
    {8, 8, 1, 1, 1, 4, 0, 3},
    {5, 7, 1, 1, 3, 4, 1, 3},     /* odd height and width */
    {7, 3, 3, 1, 1, 3, 1, 5},     /* RGB, odd, kernel 5 */
    {6, 10, 1, 2, 1, 4, 1, 3},    /* second level 3 x 5 */
    {8, 8, 3, 2, 3, 4, 0, 3},
    {4, 12, 3, 3, 1, 3, 1, 3},    /* last level 1 x 3 */
    {12, 4, 1, 3, 3, 4, 1, 1},    /* kernel 1 */
    {16, 8, 1, 4, 1, 4, 1, 3},
    {16, 8, 3, 4, 3, 3, 0, 3},    /* last level 2 x 1 */
    {24, 8, 1, 4, 3, 2, 1, 3},    /* last level 3 x 1 */
};

START_TEST(test_trainer_equals_core)
{
    check_shape(&shapes[_i]);
}
END_TEST

/* A checkerboard coupling with no transformed element (parity 0 on a 1 x 1 level) has no flow
 * batch norm statistics: the trainer leaves them alone instead of dividing by 0. */
START_TEST(test_fbn_no_transformed)
{
    const shape s = {8, 8, 3, 4, 1, 3, 1, 3};
    rnvp_config cfg = config_of(&s);
    rnvp_model *m;
    rnvp_error err;
    ck_assert(rnvp_model_init(&m, &cfg, 3, &err) == RNVP_OK);
    const int N = 4, D = m->D;
    uint8_t *pix = malloc((size_t)N * D);
    float *noise = malloc(sizeof(float) * N * D), *xt = malloc(sizeof(float) * N * D);
    float *grad = calloc(m->nparams, sizeof(float));
    make_batch(pix, noise, xt, N, D);
    tr_ws *ws;
    ck_assert(tr_ws_create(&ws, m, N, &err) == RNVP_OK);
    ck_assert(isfinite(tr_forward_backward(ws, m, grad, xt, N, 1)));
    for (size_t i = 0; i < m->nparams; i++) ck_assert(isfinite(grad[i]) && isfinite(m->params[i]));
    tr_ws_free(ws);
    rnvp_model_free(m);
    free(pix); free(noise); free(xt); free(grad);
}
END_TEST

/* ---------------------------------------------------------------- data parallelism */

#define MAXP 4
typedef struct sim {
    pthread_barrier_t bar;
    int P;
    double *slot[MAXP];   /* each process's vector during a sum */
} sim;

typedef struct proc {
    sim *s;
    int rank;
    tr_comm comm;
    tr_ws *ws;
    rnvp_model *m;
    float *grad, *xt;
    int n, upd;
    double loss;
} proc;

/* the processes' sum: each shows its vector, waits for the others, adds them in rank order */
static void sim_sum(double *v, int n, void *user)
{
    proc *p = user;
    sim *s = p->s;
    double *mine = malloc(sizeof(double) * n), *total = calloc(n, sizeof(double));
    memcpy(mine, v, sizeof(double) * n);
    s->slot[p->rank] = mine;
    pthread_barrier_wait(&s->bar);
    for (int r = 0; r < s->P; r++)
        for (int i = 0; i < n; i++) total[i] += s->slot[r][i];
    pthread_barrier_wait(&s->bar);
    memcpy(v, total, sizeof(double) * n);
    free(mine);
    free(total);
}

static void *proc_run(void *arg)
{
    proc *p = arg;
    p->loss = tr_forward_backward(p->ws, p->m, p->grad, p->xt, p->n, p->upd);
    return NULL;
}

static void check_parallel(const shape *sh, int P, int B)
{
    rnvp_config cfg = config_of(sh);
    rnvp_model *m, *mp[MAXP];
    rnvp_error err;
    ck_assert(rnvp_model_init(&m, &cfg, 11, &err) == RNVP_OK);
    const int D = m->D;
    uint8_t *pix = malloc((size_t)B * D);
    float *noise = malloc(sizeof(float) * B * D), *xt = malloc(sizeof(float) * B * D);
    make_batch(pix, noise, xt, B, D);
    /* one process, the whole batch */
    float *g1 = calloc(m->nparams, sizeof(float));
    tr_ws *ws1;
    ck_assert(tr_ws_create(&ws1, m, B, &err) == RNVP_OK);
    for (int r = 0; r < P; r++) {   /* each simulated process its own copy of the parameters */
        ck_assert(rnvp_model_init(&mp[r], &cfg, 11, &err) == RNVP_OK);
        memcpy(mp[r]->params, m->params, sizeof(float) * m->nparams);
    }
    const double loss1 = tr_forward_backward(ws1, m, g1, xt, B, 1);
    /* P processes, B / P images each */
    sim s = {.P = P};
    pthread_barrier_init(&s.bar, NULL, (unsigned)P);
    proc pr[MAXP];
    pthread_t th[MAXP];
    float *gsum = calloc(m->nparams, sizeof(float));
    for (int r = 0; r < P; r++) {
        const int b0 = B * r / P, b1 = B * (r + 1) / P;
        pr[r] = (proc){.s = &s, .rank = r, .m = mp[r], .grad = calloc(m->nparams, sizeof(float)),
                       .xt = xt + (size_t)b0 * D, .n = b1 - b0, .upd = 1};
        pr[r].comm = (tr_comm){sim_sum, &pr[r]};
        ck_assert(tr_ws_create(&pr[r].ws, mp[r], pr[r].n, &err) == RNVP_OK);
        tr_ws_set_comm(pr[r].ws, &pr[r].comm);
    }
    for (int r = 0; r < P; r++) pthread_create(&th[r], NULL, proc_run, &pr[r]);
    for (int r = 0; r < P; r++) pthread_join(th[r], NULL);
    for (int r = 0; r < P; r++)
        for (size_t i = 0; i < m->nparams; i++) gsum[i] += pr[r].grad[i];
    double gmax = 0;
    for (size_t i = 0; i < m->nparams; i++) gmax = fmax(gmax, fabs(g1[i]));
    double worst = 0;
    for (int r = 0; r < P; r++) ck_assert_double_eq_tol(pr[r].loss, loss1, 1e-5 * fabs(loss1));
    for (size_t i = 0; i < m->nparams; i++) {
        const double e = fabs(gsum[i] - g1[i]) / (fabs(g1[i]) + 0.1 * gmax);
        if (e > worst) worst = e;
        ck_assert_msg(e < 5e-5, "gradient %zu: %d processes %.9g, one %.9g (largest %.3g)", i, P, gsum[i], g1[i], gmax);
    }
    /* the running statistics every process keeps are the whole batch's */
    for (int r = 0; r < P; r++)
        for (size_t i = 0; i < m->nparams; i++)
            ck_assert_msg(fabs(mp[r]->params[i] - m->params[i]) <= 1e-5 * fmax(fabs(m->params[i]), 1e-3),
                          "parameter %zu of process %d: %.9g vs %.9g", i, r, mp[r]->params[i], m->params[i]);
    printf("  %dx%d x%d S=%d flow-bn %d: batch %d on %d simulated processes vs one: loss %.3g apart, gradients %.1e\n",
           sh->H, sh->W, sh->C, sh->S, sh->fbn, B, P, fabs(pr[0].loss - loss1), worst);
    for (int r = 0; r < P; r++) {
        tr_ws_free(pr[r].ws);
        free(pr[r].grad);
        rnvp_model_free(mp[r]);
    }
    pthread_barrier_destroy(&s.bar);
    tr_ws_free(ws1);
    rnvp_model_free(m);
    free(g1); free(gsum); free(pix); free(noise); free(xt);
}

START_TEST(test_parallel_2)
{
    const shape s = {8, 8, 1, 2, 1, 4, 1, 3};
    check_parallel(&s, 2, 8);
}
END_TEST

START_TEST(test_parallel_3_uneven)
{
    const shape s = {8, 8, 3, 2, 2, 3, 1, 3};
    check_parallel(&s, 3, 7);   /* shares of 2, 2 and 3 images */
}
END_TEST

int main(void)
{
    rnvp_set_num_threads(1);   /* the simulated processes are threads: no pool inside them */
    Suite *s = suite_create("equiv");
    TCase *t = tcase_create("trainer_core");
    tcase_set_timeout(t, 120);
    tcase_add_loop_test(t, test_trainer_equals_core, 0, (int)(sizeof shapes / sizeof shapes[0]));
    tcase_add_test(t, test_fbn_no_transformed);
    suite_add_tcase(s, t);
    TCase *p = tcase_create("data_parallel");
    tcase_set_timeout(p, 120);
    tcase_add_test(p, test_parallel_2);
    tcase_add_test(p, test_parallel_3_uneven);
    suite_add_tcase(s, p);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? EXIT_FAILURE : EXIT_SUCCESS;
}
