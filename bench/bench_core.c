/* bench_core.c: throughput of the inference core through its public API only (realnvp.h).
 *
 *   bin/bench_core --model PATH [--threads 2] [--batches 1,16,64] [--seconds S]
 *                  [--ops log_prob,encode,decode,sample] [--json]
 *       For each op and batch size: a warm-up, then timed calls for about S seconds (at least
 *       5); reports the median images/s and ms/batch, FLOPs per image (rnvp_model_flops),
 *       GFLOP/s, the context's workspace (rnvp_ctx_bytes) and the process's peak RSS.
 *   bin/bench_core --model PATH --check-raw FILE.u8 --n N [--z-out FILE.f32]
 *       log_prob (u = 0.5) of N raw images (N, C, H, W uint8) as JSON; with --z-out also
 *       their latents (N, D float32) from rnvp_encode. Used to compare with torch_baseline.py.
 *   bin/bench_core --model PATH --gemm-ceiling [--threads 2] [--batches ...] [--seconds S]
 *       the sgemm-only ceiling: time only the cblas_sgemm calls the model's convolutions
 *       become as im2col + sgemm over the whole batch (shapes from the weights, random data),
 *       i.e. the speed the core would have if everything but the sgemms took no time.
 *   bin/bench_core --init CONFIG_JSON [--seed N] -o PATH
 *       writes a random checkpoint with rnvp_model_init + rnvp_model_save (the same as
 *       `realnvp init`, for when the CLI is not built).
 *
 * Timing uses CLOCK_MONOTONIC; one "repeat" is one call on a batch of n images.
 */
#include "realnvp.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define MAX_BATCHES 32

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;   /* ru_maxrss is in KiB on Linux */
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, const rnvp_error *e)
{
    fprintf(stderr, "bench_core: %s: %s (%s)\n", what, e->msg, rnvp_status_name(e->status));
    exit(1);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_core --model PATH [--threads N] [--batches 1,16,64] [--seconds S]\n"
            "                  [--ops log_prob,encode,decode,sample] [--precision fp32|bf16] [--json]\n"
            "       bench_core --model PATH --gemm-ceiling [--threads N] [--batches ...] [--seconds S]\n"
            "       bench_core --model PATH --check-raw FILE.u8 --n N [--z-out FILE.f32] [--precision P]\n"
            "       bench_core --init CONFIG_JSON [--seed N] -o PATH\n");
    exit(2);
}

enum op { OP_LOG_PROB, OP_ENCODE, OP_DECODE, OP_SAMPLE, OP_COUNT };
static const char *op_names[OP_COUNT] = {"log_prob", "encode", "decode", "sample"};

struct bufs {
    uint8_t *px;     /* (N, C, H, W) */
    float *z;        /* (N, D) */
    double *lp;      /* (N) */
    uint8_t *out;    /* (N, C, H, W) */
};

static uint64_t sample_seed = 1;

static void run_op(enum op op, rnvp_ctx *ctx, struct bufs *b, int n)
{
    rnvp_error e;
    enum rnvp_status st = RNVP_OK;
    switch (op) {
    case OP_LOG_PROB: st = rnvp_log_prob(ctx, b->lp, NULL, b->px, NULL, n, &e); break;
    case OP_ENCODE:   st = rnvp_encode(ctx, b->z, b->lp, b->px, NULL, n, &e); break;
    case OP_DECODE:   st = rnvp_decode(ctx, b->out, b->z, n, &e); break;
    case OP_SAMPLE:   st = rnvp_sample(ctx, b->out, NULL, n, 1.0, sample_seed++, &e); break;
    default: break;
    }
    if (st != RNVP_OK) die(op_names[op], &e);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "bench_core: out of memory (%zu bytes)\n", n); exit(1); }
    return p;
}

static int do_init(const char *cfg_json, uint64_t seed, const char *out)
{
    rnvp_config cfg;
    rnvp_error e;
    rnvp_model *m;
    if (rnvp_config_parse(&cfg, cfg_json, &e) != RNVP_OK) die("config", &e);
    if (rnvp_config_validate(&cfg, &e) != RNVP_OK) die("config", &e);
    if (rnvp_model_init(&m, &cfg, seed, &e) != RNVP_OK) die("init", &e);
    char seedstr[32];
    snprintf(seedstr, sizeof seedstr, "%llu", (unsigned long long)seed);
    const char *meta[] = {"description", "random weights (bench_core --init)", "seed", seedstr, NULL};
    if (rnvp_model_save(m, out, meta, &e) != RNVP_OK) die("save", &e);
    rnvp_model_free(m);
    fprintf(stderr, "wrote %s\n", out);
    return 0;
}

/* The sgemm-only ceiling: for each batch size, time just the cblas_sgemm calls the model's
 * convolutions amount to when each is lowered to im2col + one sgemm over the whole batch
 * (out (cout, N*H*W) += w (cout, cin*kh*kw) x col), with nothing else: no im2col, no batch
 * norm, no coupling math. Shapes come from the weights (public API); random data. */
static int coupling_hw(const rnvp_config *c, int k, int *H, int *W)
{
    const int S = c->num_scales;
    int s = k / 6, r = k % 6;
    if (s >= S - 1) { s = S - 1; r = 0; }
    int sh = s + (s < S - 1 && r >= 3);
    *H = c->height >> sh;
    *W = c->width >> sh;
    return 0;
}

static int do_gemm_ceiling(rnvp_model *m, const int *batches, int nb, double seconds, int json)
{
    const rnvp_config *cfg = rnvp_model_config(m);
    int nt = rnvp_model_num_tensors(m), nconv = 0;
    int *M = xmalloc(sizeof(int) * (size_t)nt), *K = xmalloc(sizeof(int) * (size_t)nt);
    int *HW = xmalloc(sizeof(int) * (size_t)nt);
    size_t maxA = 1, maxKHW = 1, maxMHW = 1;
    for (int i = 0; i < nt; i++) {
        const rnvp_tensor *t = rnvp_model_tensor(m, i);
        int k, len = (int)strlen(t->name);
        if (len < 9 || strcmp(t->name + len - 9, ".weight_v") || sscanf(t->name, "flow.%d.", &k) != 1)
            continue;
        int H, W;
        coupling_hw(cfg, k, &H, &W);
        M[nconv] = t->shape[0];
        K[nconv] = t->shape[1] * t->shape[2] * t->shape[3];
        HW[nconv] = H * W;
        if ((size_t)M[nconv] * K[nconv] > maxA) maxA = (size_t)M[nconv] * K[nconv];
        if ((size_t)K[nconv] * HW[nconv] > maxKHW) maxKHW = (size_t)K[nconv] * HW[nconv];
        if ((size_t)M[nconv] * HW[nconv] > maxMHW) maxMHW = (size_t)M[nconv] * HW[nconv];
        nconv++;
    }
    if (json) printf("{\"impl\": \"c-sgemm-only\", \"blas_core\": \"%s\", \"results\": [", rnvp_blas_core());
    else printf("sgemm only (%d convolutions as im2col + sgemm, OpenBLAS core %s)\n%6s%12s%11s%10s\n",
                nconv, rnvp_blas_core(), "batch", "images/s", "ms/batch", "GFLOP/s");
    for (int bi = 0; bi < nb; bi++) {
        const int n = batches[bi];
        float *A = xmalloc(sizeof(float) * maxA), *B = xmalloc(sizeof(float) * maxKHW * n);
        float *C = xmalloc(sizeof(float) * maxMHW * n);
        for (size_t i = 0; i < maxA; i++) A[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
        for (size_t i = 0; i < maxKHW * n; i++) B[i] = (float)(i % 97) * 0.01f;
        memset(C, 0, sizeof(float) * maxMHW * n);
        double flops = 0, *times = xmalloc(sizeof(double) * 100000);
        int r = 0;
        double start = now_s();
        for (int rep = -1; rep < 3 || (now_s() - start < seconds && r < 100000); rep++) {
            double a = now_s();
            flops = 0;
            for (int c = 0; c < nconv; c++) {
                int P = n * HW[c];
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M[c], P, K[c], 1.0f, A, K[c],
                            B, P, 1.0f, C, P);
                flops += 2.0 * M[c] * K[c] * (double)P;
            }
            if (rep >= 0) times[r++] = now_s() - a;   /* rep -1 is the warm-up */
        }
        double med = median(times, r);
        if (json)
            printf("%s\n  {\"batch\": %d, \"images_per_s\": %.6g, \"ms_per_batch\": %.6g, \"gflops\": %.4g}",
                   bi ? "," : "", n, n / med, med * 1e3, flops / med * 1e-9);
        else
            printf("%6d%12.1f%11.3f%10.2f\n", n, n / med, med * 1e3, flops / med * 1e-9);
        free(A); free(B); free(C); free(times);
    }
    if (json) printf("\n]}\n");
    free(M); free(K); free(HW);
    return 0;
}

static enum rnvp_precision precision;   /* --precision, for every context */

static int do_check(rnvp_model *m, const char *raw, int n, const char *zout)
{
    const rnvp_config *c = rnvp_model_config(m);
    const int D = rnvp_model_dim(m);
    size_t bytes = (size_t)n * (size_t)D;
    uint8_t *px = xmalloc(bytes);
    FILE *f = fopen(raw, "rb");
    if (!f) { fprintf(stderr, "bench_core: %s: %s\n", raw, strerror(errno)); return 1; }
    size_t got = fread(px, 1, bytes, f);
    fclose(f);
    if (got != bytes) {
        fprintf(stderr, "bench_core: %s: %zu bytes, expected %d images of %dx%dx%d = %zu\n", raw,
                got, n, c->channels, c->height, c->width, bytes);
        return 1;
    }
    rnvp_ctx *ctx;
    rnvp_error e;
    if (rnvp_ctx_create(&ctx, m, n, &e) != RNVP_OK) die("ctx", &e);
    if (rnvp_ctx_set_precision(ctx, precision, &e) != RNVP_OK) die("--precision", &e);
    double *lp = xmalloc(sizeof(double) * (size_t)n), *bpd = xmalloc(sizeof(double) * (size_t)n);
    double *lp2 = xmalloc(sizeof(double) * (size_t)n);
    float *z = xmalloc(sizeof(float) * bytes);
    uint8_t *back = xmalloc(bytes);
    if (rnvp_log_prob(ctx, lp, bpd, px, NULL, n, &e) != RNVP_OK) die("log_prob", &e);
    if (rnvp_encode(ctx, z, lp2, px, NULL, n, &e) != RNVP_OK) die("encode", &e);
    if (rnvp_decode(ctx, back, z, n, &e) != RNVP_OK) die("decode", &e);
    size_t mism = 0;
    for (size_t i = 0; i < bytes; i++) mism += back[i] != px[i];
    if (zout) {
        FILE *zf = fopen(zout, "wb");
        if (!zf || fwrite(z, sizeof(float), bytes, zf) != bytes) {
            fprintf(stderr, "bench_core: cannot write %s\n", zout);
            return 1;
        }
        fclose(zf);
    }
    printf("{\"impl\": \"c\", \"n\": %d, \"roundtrip_mismatches\": %zu,\n \"log_prob\": [", n, mism);
    for (int i = 0; i < n; i++) printf("%s%.10g", i ? ", " : "", lp[i]);
    printf("],\n \"log_prob_encode\": [");
    for (int i = 0; i < n; i++) printf("%s%.10g", i ? ", " : "", lp2[i]);
    printf("],\n \"bits_per_dim\": [");
    for (int i = 0; i < n; i++) printf("%s%.10g", i ? ", " : "", bpd[i]);
    printf("]}\n");
    free(px); free(lp); free(bpd); free(lp2); free(z); free(back);
    rnvp_ctx_free(ctx);
    return 0;
}

int main(int argc, char **argv)
{
    rnvp_blas_select_core(argv);

    const char *model = NULL, *batches_s = "1,16,64", *ops_s = "log_prob,encode,decode,sample";
    const char *check_raw = NULL, *zout = NULL, *init_cfg = NULL, *out = NULL;
    int threads = 2, json = 0, ncheck = 0, gemm_only = 0;
    double seconds = 2.0;
    unsigned long long seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && (v || (usage(), 0)) && (i++, 1))
        if (ARG("--model")) model = v;
        else if (ARG("--threads")) threads = atoi(v);
        else if (ARG("--batches")) batches_s = v;
        else if (ARG("--ops")) ops_s = v;
        else if (ARG("--seconds")) seconds = atof(v);
        else if (ARG("--check-raw")) check_raw = v;
        else if (ARG("--n")) ncheck = atoi(v);
        else if (ARG("--z-out")) zout = v;
        else if (ARG("--init")) init_cfg = v;
        else if (ARG("--seed")) seed = strtoull(v, NULL, 10);
        else if (ARG("--precision")) {
            rnvp_error pe;
            if (rnvp_precision_parse(&precision, v, &pe) != RNVP_OK) die("--precision", &pe);
        }
        else if (ARG("-o")) out = v;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--gemm-ceiling")) gemm_only = 1;
        else usage();
#undef ARG
    }
    if (threads > 0) rnvp_set_num_threads(threads);
    if (init_cfg) {
        if (!out) usage();
        return do_init(init_cfg, seed, out);
    }
    if (!model) usage();

    rnvp_model *m;
    rnvp_error e;
    if (rnvp_model_load(&m, model, &e) != RNVP_OK) die(model, &e);
    if (check_raw) {
        if (ncheck < 1) usage();
        int rc = do_check(m, check_raw, ncheck, zout);
        rnvp_model_free(m);
        return rc;
    }

    int batches[MAX_BATCHES], nb = 0;
    for (const char *p = batches_s; *p && nb < MAX_BATCHES;) {
        char *end;
        long b = strtol(p, &end, 10);
        if (end == p || b < 1 || b > 65536) usage();
        batches[nb++] = (int)b;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') usage();
    }
    int want[OP_COUNT] = {0};
    for (int o = 0; o < OP_COUNT; o++) {
        const char *hit = strstr(ops_s, op_names[o]);
        size_t l = strlen(op_names[o]);
        want[o] = hit && (hit == ops_s || hit[-1] == ',') && (hit[l] == 0 || hit[l] == ',');
    }
    if (seconds <= 0) seconds = 2.0;
    if (gemm_only) {
        int rc = do_gemm_ceiling(m, batches, nb, seconds, json);
        rnvp_model_free(m);
        return rc;
    }

    const int D = rnvp_model_dim(m);
    const double flops = rnvp_model_flops(m);
    const rnvp_config *cfg = rnvp_model_config(m);
    if (json)
        printf("{\"impl\": \"c\", \"version\": \"%s\", \"blas_core\": \"%s\", \"threads\": %d,\n"
               " \"model\": \"%s\", \"dim\": %d, \"params\": %zu, \"flops_per_image\": %.6g,\n"
               " \"results\": [",
               RNVP_VERSION, rnvp_blas_core(), threads, model, D, rnvp_model_num_params(m), flops);
    else
        printf("realnvp %s, OpenBLAS core %s, %d threads, model %s (%dx%dx%d, %zu params)\n"
               "FLOPs per image (forward): %.4g\n"
               "%-10s%6s%12s%11s%10s%9s%10s%10s\n",
               RNVP_VERSION, rnvp_blas_core(), threads, model, cfg->channels, cfg->height,
               cfg->width, rnvp_model_num_params(m), flops, "op", "batch", "images/s", "ms/batch",
               "GFLOP/s", "repeats", "ctx MB", "RSS MB");
    int first = 1;
    for (int bi = 0; bi < nb; bi++) {
        const int n = batches[bi];
        rnvp_ctx *ctx;
        if (rnvp_ctx_create(&ctx, m, n, &e) != RNVP_OK) die("ctx", &e);
        if (rnvp_ctx_set_precision(ctx, precision, &e) != RNVP_OK) die("--precision", &e);
        if (!json && bi == 0)
            printf("(convolutions: %s kernel, %d threads per context)\n", rnvp_ctx_conv_kernel(ctx),
                   rnvp_ctx_threads(ctx));
        struct bufs b;
        b.px = xmalloc((size_t)n * D);
        b.out = xmalloc((size_t)n * D);
        b.z = xmalloc(sizeof(float) * (size_t)n * D);
        b.lp = xmalloc(sizeof(double) * (size_t)n);
        uint64_t s = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;   /* xorshift64* pixels */
        for (size_t i = 0; i < (size_t)n * D; i++) {
            s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
            b.px[i] = (uint8_t)((s * 0x2545F4914F6CDD1Dull) >> 56);
        }
        rnvp_sample_latents(b.z, n, D, 1.0, 7);
        for (int o = 0; o < OP_COUNT; o++) {
            if (!want[o]) continue;
            /* warm-up: at least 2 calls and a tenth of the budget (caches, BLAS threads) */
            double t0 = now_s();
            int w = 0;
            while (w < 2 || now_s() - t0 < 0.1 * seconds) { run_op(o, ctx, &b, n); w++; }
            int cap = 64, r = 0;
            double *times = xmalloc(sizeof(double) * (size_t)cap);
            double start = now_s();
            while (r < 5 || (now_s() - start < seconds && r < 100000)) {
                double a = now_s();
                run_op(o, ctx, &b, n);
                double t = now_s() - a;
                if (r == cap) {
                    cap *= 2;
                    double *nt = realloc(times, sizeof(double) * (size_t)cap);
                    if (!nt) { fprintf(stderr, "bench_core: out of memory\n"); return 1; }
                    times = nt;
                }
                times[r++] = t;
            }
            double med = median(times, r);
            free(times);
            double ips = n / med, gf = flops * n / med * 1e-9;
            double ctx_mb = (double)rnvp_ctx_bytes(ctx) / (1024.0 * 1024.0);
            if (json)
                printf("%s\n  {\"op\": \"%s\", \"batch\": %d, \"images_per_s\": %.6g, "
                       "\"ms_per_batch\": %.6g, \"gflops\": %.4g, \"repeats\": %d, "
                       "\"ctx_bytes\": %zu, \"peak_rss_mb\": %.2f, \"conv_kernel\": \"%s\", "
                       "\"ctx_threads\": %d, \"precision\": \"%s\"}",
                       first ? "" : ",", op_names[o], n, ips, med * 1e3, gf, r,
                       rnvp_ctx_bytes(ctx), peak_rss_mb(), rnvp_ctx_conv_kernel(ctx),
                       rnvp_ctx_threads(ctx), rnvp_precision_name(rnvp_ctx_precision(ctx)));
            else
                printf("%-10s%6d%12.1f%11.3f%10.2f%9d%10.2f%10.1f\n", op_names[o], n, ips,
                       med * 1e3, gf, r, ctx_mb, peak_rss_mb());
            fflush(stdout);
            first = 0;
        }
        free(b.px); free(b.out); free(b.z); free(b.lp);
        rnvp_ctx_free(ctx);
    }
    if (json)
        printf("\n ],\n \"peak_rss_mb\": %.2f}\n", peak_rss_mb());
    else
        printf("peak RSS %.1f MB\n", peak_rss_mb());
    rnvp_model_free(m);
    return 0;
}
