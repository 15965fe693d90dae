/* bench_train.c: training speed of the C trainer's passes (tr_forward_backward + the trainer's
 * L2, clipping and Adam update) and a training-mode loss/gradient dump for the PyTorch check.
 * Leaves out the trainer's data order, checkpoints and evaluation (bin/realnvp-train's loop).
 *
 *   bin/bench_train [--threads 2] [--batch 64] [--seconds 25] [--min-steps 5] [--warmup 2]
 *                   [--scales 3] [--res-blocks 2] [--features 32,32,32] [--flow-batchnorm 1]
 *                   [--kernel 3] [--model PATH] [--data DIR|random] [--seed 1]
 *       Builds the model (tr_init_params, or loads --model), then times training steps on
 *       batch-sized batches of dequantized images (xt = (v + u) / 256, u ~ U[0,1)): v from
 *       random Fashion-MNIST training images when --data is a dataset folder (the default
 *       when /usr/share/datasets/fashion-mnist exists), else uniform random pixels. A new
 *       batch is made before each step, outside the timer. One timed step = zero the
 *       gradient, tr_forward_backward (batch statistics, running averages updated), the L2
 *       penalty 5e-5 on weight_g and scale, global-norm clipping at 100 and an Adam update
 *       (lr 1e-3), i.e. train/main.c's train_step without its data loading. Prints JSON: the
 *       median step time (wall clock), images/s, the median CPU time of a step (all threads,
 *       CLOCK_PROCESS_CPUTIME_ID: less sensitive to a busy machine than wall time), every
 *       step's times, the workspace size, the parameter +
 *       gradient + Adam-moment bytes, RSS after setup and peak RSS (getrusage).
 *   bin/bench_train --model PATH --check-xt FILE.f32 --n N [--grad-out FILE.safetensors]
 *       The training-mode loss (bits/dim, batch statistics) of the N images in FILE.f32
 *       ((N, C, H, W) float32 xt) as JSON, and with --grad-out its gradient with respect to
 *       every trained tensor (named "grad.<tensor>") for bench/torch_train.py --check.
 *
 * Timing uses CLOCK_MONOTONIC; thread count as in the trainer (rnvp_set_num_threads before
 * tr_ws_create). OpenBLAS kernels: rnvp_blas_select_core, as every main() here.
 */
#include "realnvp.h"
#include "internal.h"
#include "../train/optim.h"
#include "../train/train.h"
#include "../train/data.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_DATA "/usr/share/datasets/fashion-mnist"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);   /* every thread of the process */
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;   /* KiB on Linux */
}

static double cur_rss_mb(void)
{
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return NAN;
    int ok = fscanf(f, "%ld %ld", &pages, &res) == 2;
    fclose(f);
    return ok ? (double)res * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0) : NAN;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void die(const char *what, const rnvp_error *e)
{
    fprintf(stderr, "bench_train: %s: %s (%s)\n", what, e->msg, rnvp_status_name(e->status));
    exit(1);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "bench_train: out of memory (%zu bytes)\n", n); exit(1); }
    return p;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_train [--threads N] [--batch B] [--seconds S] [--min-steps K] [--warmup W]\n"
            "                   [--scales S] [--res-blocks K] [--features F,F,F] [--flow-batchnorm 0|1]\n"
            "                   [--kernel 3] [--model PATH] [--data DIR|random] [--seed N]\n"
            "       bench_train --model PATH --check-xt FILE.f32 --n N [--grad-out FILE.safetensors]\n");
    exit(2);
}

static int parse_features(int *f, int S, const char *s)
{
    int n = 0;
    for (const char *p = s; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > RNVP_MAX_FEATURES || n >= RNVP_MAX_SCALES) return -1;
        f[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return -1;
    }
    if (n == 1)
        for (int i = 1; i < S; i++) f[i] = f[0];
    else if (n != S) return -1;
    return 0;
}

/* The optimiser step of bin/realnvp-train with its default constants (train/optim.c). */
static void adam_update(rnvp_model *m, float *grad, float *am, float *av, long t)
{
    static const tr_adam o = {.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .l2 = 5e-5, .clip = 100};
    tr_adam_step(m, grad, am, av, t, &o);
}

/* xt (n, D): images drawn from px (count images of D pixels; NULL: uniform random pixels)
 * plus uniform noise, / 256. */
static void make_batch(float *xt, const uint8_t *px, int count, int n, int D, uint64_t *rng)
{
    for (int b = 0; b < n; b++) {
        const uint8_t *img = px ? px + (size_t)(rnvpi_splitmix64(rng) % (uint64_t)count) * D : NULL;
        for (int i = 0; i < D; i++) {
            const double v = img ? img[i] : (double)(rnvpi_splitmix64(rng) >> 56);
            xt[(size_t)b * D + i] = (float)((v + rnvpi_uniform(rng)) / 256.0);
        }
    }
}

static int do_check(rnvp_model *m, const char *xt_path, int n, const char *grad_out)
{
    const int D = m->D;
    const size_t cnt = (size_t)n * D;
    float *xt = xmalloc(sizeof(float) * cnt);
    FILE *f = fopen(xt_path, "rb");
    if (!f) { fprintf(stderr, "bench_train: %s: %s\n", xt_path, strerror(errno)); return 1; }
    size_t got = fread(xt, sizeof(float), cnt, f);
    fclose(f);
    if (got != cnt) {
        fprintf(stderr, "bench_train: %s: %zu floats, expected %d images of %d = %zu\n", xt_path,
                got, n, D, cnt);
        return 1;
    }
    tr_ws *ws;
    rnvp_error e;
    if (tr_ws_create(&ws, m, n, &e) != RNVP_OK) die("workspace", &e);
    float *grad = calloc(m->nparams, sizeof(float));
    if (!grad) { fprintf(stderr, "bench_train: out of memory\n"); return 1; }
    const double loss = tr_forward_backward(ws, m, grad, xt, n, 0);
    const double loss2 = tr_forward_backward(ws, m, NULL, xt, n, 0);   /* forward only */
    if (grad_out) {
        int nt = 0;
        rnvp_tensor *t = xmalloc(sizeof(rnvp_tensor) * (size_t)m->ntensors);
        char **names = xmalloc(sizeof(char *) * (size_t)m->ntensors);
        for (int i = 0; i < m->ntensors; i++) {
            if (!tr_tensor_trainable(m, i)) continue;
            const size_t off = (size_t)(m->tensors[i].data - m->params);
            size_t l = strlen(m->tensors[i].name) + 6;
            names[nt] = xmalloc(l);
            snprintf(names[nt], l, "grad.%s", m->tensors[i].name);
            t[nt] = m->tensors[i];
            t[nt].name = names[nt];
            t[nt].data = grad + off;
            nt++;
        }
        const char *meta[] = {"format", "realnvp-grad", "description",
                              "d loss (bits/dim, batch statistics) / d parameter, bench_train --check-xt", NULL};
        if (rnvpi_st_write(grad_out, meta, t, nt, &e) != RNVP_OK) die(grad_out, &e);
        for (int i = 0; i < nt; i++) free(names[i]);
        free(names);
        free(t);
    }
    printf("{\"impl\": \"c\", \"n\": %d, \"loss_bits_per_dim\": %.12g, \"loss_forward_only\": %.12g}\n",
           n, loss, loss2);
    free(grad);
    free(xt);
    tr_ws_free(ws);
    return 0;
}

int main(int argc, char **argv)
{
    rnvp_blas_select_core(argv);

    int threads = 2, batch = 64, min_steps = 5, warmup = 2, scales = 3, res_blocks = 2;
    int flow_bn = 1, kernel = 3, ncheck = 0;
    double seconds = 25;
    unsigned long long seed = 1;
    const char *features = "32,32,32", *model = NULL, *data = NULL, *check_xt = NULL, *grad_out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && (v || (usage(), 0)) && (i++, 1))
        if (ARG("--threads")) threads = atoi(v);
        else if (ARG("--batch")) batch = atoi(v);
        else if (ARG("--seconds")) seconds = atof(v);
        else if (ARG("--min-steps")) min_steps = atoi(v);
        else if (ARG("--warmup")) warmup = atoi(v);
        else if (ARG("--scales")) scales = atoi(v);
        else if (ARG("--res-blocks")) res_blocks = atoi(v);
        else if (ARG("--features")) features = v;
        else if (ARG("--flow-batchnorm")) flow_bn = atoi(v);
        else if (ARG("--kernel")) kernel = atoi(v);
        else if (ARG("--model")) model = v;
        else if (ARG("--data")) data = v;
        else if (ARG("--seed")) seed = strtoull(v, NULL, 10);
        else if (ARG("--check-xt")) check_xt = v;
        else if (ARG("--n")) ncheck = atoi(v);
        else if (ARG("--grad-out")) grad_out = v;
        else usage();
#undef ARG
    }
    if (threads < 1 || batch < 2 || min_steps < 1 || warmup < 0 || seconds < 0) usage();
    rnvp_set_num_threads(threads);

    rnvp_model *m;
    rnvp_error e;
    if (check_xt) {
        if (!model || ncheck < 2) usage();
        if (rnvp_model_load(&m, model, &e) != RNVP_OK) die(model, &e);
        int rc = do_check(m, check_xt, ncheck, grad_out);
        rnvp_model_free(m);
        return rc;
    }

    /* model: the trainer's own initialisation, or a checkpoint */
    if (model) {
        if (rnvp_model_load(&m, model, &e) != RNVP_OK) die(model, &e);
    } else {
        rnvp_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.height = 28;
        cfg.width = 28;
        cfg.channels = 1;
        cfg.num_scales = scales;
        cfg.res_blocks = res_blocks;
        cfg.alpha = 0.05;
        cfg.bn_eps = 1e-5;
        cfg.flow_batchnorm = flow_bn;
        cfg.flow_bn_eps = 1e-4;
        cfg.kernel = kernel;
        if (scales < 1 || scales > RNVP_MAX_SCALES || parse_features(cfg.features, scales, features)) usage();
        if (rnvp_config_validate(&cfg, &e) != RNVP_OK) die("config", &e);
        if (rnvpi_model_build(&m, &cfg, NULL, NULL, &e) != RNVP_OK) die("model", &e);
        tr_init_params(m, seed);
    }
    const rnvp_config *cfg = &m->cfg;
    const int D = m->D;

    /* data */
    struct stat sb;
    if (!data) data = stat(DEFAULT_DATA, &sb) == 0 ? DEFAULT_DATA : "random";
    tr_data train = {0}, test = {0};
    int kind = 0;
    if (strcmp(data, "random")) {
        if (tr_data_open(&train, &test, &kind, data, &e) != RNVP_OK) die(data, &e);
        tr_data_free(&test);
        if (train.c != cfg->channels || train.h != cfg->height || train.w != cfg->width) {
            fprintf(stderr, "bench_train: %s holds %dx%dx%d images, the model wants %dx%dx%d\n", data,
                    train.c, train.h, train.w, cfg->channels, cfg->height, cfg->width);
            return 1;
        }
    }

    tr_ws *ws;
    if (tr_ws_create(&ws, m, batch, &e) != RNVP_OK) die("workspace", &e);
    float *grad = calloc(m->nparams, sizeof(float)), *am = calloc(m->nparams, sizeof(float));
    float *av = calloc(m->nparams, sizeof(float)), *xt = xmalloc(sizeof(float) * (size_t)batch * D);
    if (!grad || !am || !av) { fprintf(stderr, "bench_train: out of memory\n"); return 1; }
    uint64_t rng = seed ^ 0xD1B54A32D192ED03ull;
    const double rss_setup = cur_rss_mb();

    int cap = 256, r = 0;
    double *times = xmalloc(sizeof(double) * (size_t)cap), first_loss = NAN, last_loss = NAN;
    double *cpus = xmalloc(sizeof(double) * (size_t)cap);
    long t = 0;
    double start = 0;
    for (int i = 0;; i++) {
        if (i == warmup) start = now_s();
        if (i >= warmup && r >= min_steps && now_s() - start >= seconds) break;
        make_batch(xt, train.n ? train.px : NULL, train.n, batch, D, &rng);
        const double a = now_s(), ca = cpu_s();
        memset(grad, 0, sizeof(float) * m->nparams);
        const double loss = tr_forward_backward(ws, m, grad, xt, batch, 1);
        adam_update(m, grad, am, av, ++t);
        const double dt = now_s() - a, dc = cpu_s() - ca;
        if (!isfinite(loss)) { fprintf(stderr, "bench_train: loss %g at step %ld\n", loss, t); return 1; }
        if (i == 0) first_loss = loss;
        last_loss = loss;
        if (i < warmup) continue;
        if (r == cap) {
            cap *= 2;
            double *nt = realloc(times, sizeof(double) * (size_t)cap);
            double *nc = nt ? realloc(cpus, sizeof(double) * (size_t)cap) : NULL;
            if (!nt || !nc) { fprintf(stderr, "bench_train: out of memory\n"); return 1; }
            times = nt;
            cpus = nc;
        }
        cpus[r] = dc;
        times[r++] = dt;
    }
    double *sorted = xmalloc(sizeof(double) * (size_t)r);
    memcpy(sorted, times, sizeof(double) * (size_t)r);
    qsort(sorted, (size_t)r, sizeof(double), cmp_double);
    const double med = r % 2 ? sorted[r / 2] : 0.5 * (sorted[r / 2 - 1] + sorted[r / 2]);
    memcpy(sorted, cpus, sizeof(double) * (size_t)r);
    qsort(sorted, (size_t)r, sizeof(double), cmp_double);
    const double cmed = r % 2 ? sorted[r / 2] : 0.5 * (sorted[r / 2 - 1] + sorted[r / 2]);

    char cfgs[1024];
    rnvp_config_to_json(cfg, cfgs, sizeof cfgs);
    printf("{\"impl\": \"c\", \"version\": \"%s\", \"blas_core\": \"%s\", \"threads\": %d, \"batch\": %d,\n"
           " \"config\": %s,\n \"params\": %zu, \"flops_per_image_forward\": %.6g, \"data\": \"%s\",\n"
           " \"warmup_steps\": %d, \"steps\": %d, \"median_step_s\": %.6g, \"images_per_s\": %.6g,\n"
           " \"median_step_cpu_s\": %.6g, \"cpu_ms_per_image\": %.6g,\n"
           " \"first_loss\": %.6g, \"last_loss\": %.6g,\n"
           " \"workspace_mb\": %.2f, \"state_mb\": %.2f, \"rss_setup_mb\": %.2f, \"peak_rss_mb\": %.2f,\n"
           " \"step_s\": [",
           RNVP_VERSION, rnvp_blas_core(), threads, batch, cfgs, m->nparams, rnvp_model_flops(m),
           strcmp(data, "random") ? data : "random pixels", warmup, r, med, batch / med, cmed, 1e3 * cmed / batch, first_loss,
           last_loss, (double)tr_ws_bytes(ws) / (1024.0 * 1024.0),
           4.0 * (double)m->nparams * 4 / (1024.0 * 1024.0), rss_setup, peak_rss_mb());
    for (int i = 0; i < r; i++) printf("%s%.5g", i ? ", " : "", times[i]);
    printf("],\n \"step_cpu_s\": [");
    for (int i = 0; i < r; i++) printf("%s%.5g", i ? ", " : "", cpus[i]);
    printf("]}\n");
    free(sorted); free(times); free(cpus); free(grad); free(am); free(av); free(xt);
    tr_data_free(&train);
    tr_ws_free(ws);
    rnvp_model_free(m);
    return 0;
}
