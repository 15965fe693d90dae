/* main.c: bin/realnvp-train: options, data, the Adam loop, evaluation, pictures, atomic checkpoints
 * with exact resume, progress and signals. Leaves out the flow's passes (flow_train.c) and data parsing (data.c).
 *
 * Determinism: everything random is a pure function of (--seed, step): the data order of epoch e
 * is a permutation drawn from (seed, e), the dequantisation noise and flips of step t from
 * (seed, t). A checkpoint therefore needs only the parameters, Adam's moments and the step to
 * resume exactly; with --threads 1 the result is bit-identical to an uninterrupted run. */
#include "data.h"
#include "optim.h"
#include "train.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXIT_RUN 1
#define EXIT_USAGE 2
#define CKPT_NAME "checkpoint.safetensors"
#define BEST_NAME "best.safetensors"
#define LOCK_NAME ".realnvp-train.lock"

/* ------------------------------------------------------------------ options */

typedef struct opts {
    char data[1024], test[1024], out[1024], config[1024], features[256], flip[8];
    int scales, res_blocks, flow_bn, kernel, batch, threads, warmup, resume;
    long steps, epochs, eval_every, eval_images, log_every, save_every;
    double alpha, lr, beta1, beta2, eps, l2, clip, val_fraction;
    unsigned long long seed;
} opts;

enum otype { O_STR, O_INT, O_LONG, O_DBL, O_BOOL, O_U64 };
typedef struct optdef {
    const char *name;   /* long option without "--"; the JSON config key (or with '_' for '-') */
    int type;
    size_t off;
    double lo, hi;      /* numeric range */
    const char *def;    /* default, as text */
    const char *help;
    int arch;           /* 1: an architecture option (fixed by a checkpoint on --resume) */
} optdef;

#define OFF(f) offsetof(opts, f)
static const optdef OPTS[] = {
    {"data", O_STR, OFF(data), 0, 0, "/usr/share/datasets/fashion-mnist",
     "training data: a Fashion-MNIST/MNIST folder (train-images-idx3-ubyte[.gz], t10k-...), a CIFAR-10 binary folder (data_batch_N.bin, test_batch.bin), a folder of same-sized PNGs, or one IDX image file", 0},
    {"test", O_STR, OFF(test), 0, 0, "", "test set (IDX file, CIFAR-10 .bin or PNG folder); default: the data folder's own test set, else a held-out split", 0},
    {"val-fraction", O_DBL, OFF(val_fraction), 0.001, 0.5, "0.05", "fraction of the training images held out for evaluation when there is no test set", 0},
    {"scales", O_INT, OFF(scales), 1, RNVP_MAX_SCALES, "3", "number of scales S (H and W divisible by 2^(S-1))", 1},
    {"res-blocks", O_INT, OFF(res_blocks), 0, 64, "4", "residual blocks K in each s/t network", 1},
    {"features", O_STR, OFF(features), 0, 0, "32,64,64", "features F per scale, comma-separated (one value repeats for every scale)", 1},
    {"flow-batchnorm", O_BOOL, OFF(flow_bn), 0, 1, "1", "flow batch norm after every coupling (0 or 1)", 1},
    {"kernel", O_INT, OFF(kernel), 1, 15, "3", "kernel of in_conv and the block convolutions (odd)", 1},
    {"alpha", O_DBL, OFF(alpha), 0, 0.4999, "0.05", "logit pre-processing alpha", 1},
    {"lr", O_DBL, OFF(lr), 0, 1, "0.001", "Adam learning rate", 0},
    {"beta1", O_DBL, OFF(beta1), 0, 0.999999, "0.9", "Adam beta1", 0},
    {"beta2", O_DBL, OFF(beta2), 0, 0.99999999, "0.999", "Adam beta2", 0},
    {"adam-eps", O_DBL, OFF(eps), 0, 1, "1e-8", "Adam epsilon", 0},
    {"batch", O_INT, OFF(batch), 2, 4096, "64", "images per step (at least 2: batch norm uses batch statistics)", 0},
    {"l2", O_DBL, OFF(l2), 0, 1, "5e-5", "L2 penalty l2*sum(p^2) on every weight_g and scale, added to the bits/dim loss", 0},
    {"clip", O_DBL, OFF(clip), 0, 1e30, "100", "global gradient-norm clipping threshold (0: off)", 0},
    {"warmup", O_INT, OFF(warmup), 0, 100000000, "0", "linear learning-rate warm-up over this many steps", 0},
    {"flip", O_STR, OFF(flip), 0, 0, "auto", "horizontal-flip augmentation: on, off, auto (on for Fashion-MNIST/MNIST folders and CIFAR-10)", 0},
    {"threads", O_INT, OFF(threads), 0, 256, "0", "threads (0: every core)", 0},
    {"seed", O_U64, OFF(seed), 0, 0, "1", "seed of the initialisation, data order, noise and flips", 0},
    {"steps", O_LONG, OFF(steps), 0, 1e12, "0", "train until this step (overrides --epochs when > 0)", 0},
    {"epochs", O_LONG, OFF(epochs), 0, 1e9, "20", "train for this many epochs (full passes over the training images)", 0},
    {"eval-every", O_LONG, OFF(eval_every), 0, 1e12, "2000", "evaluate (test bits/dim, sample grids, curve, best checkpoint) every N steps and at the end (0: only at the end)", 0},
    {"eval-images", O_LONG, OFF(eval_images), 0, 1e9, "0", "test images per evaluation (0: all)", 0},
    {"log-every", O_LONG, OFF(log_every), 1, 1e12, "100", "append a metrics line every N steps", 0},
    {"save-every", O_LONG, OFF(save_every), 1, 1e9, "600", "write the resumable checkpoint every N seconds (and at every evaluation and exit)", 0},
    {"out", O_STR, OFF(out), 0, 0, "runs/train", "output folder: checkpoint, best model, metrics.jsonl, curve.svg, sample grids", 0},
    {"resume", O_BOOL, OFF(resume), 0, 1, "0", "continue from OUT/" CKPT_NAME " (its options are the base; flags given here override all but the architecture)", 0},
    {"config", O_STR, OFF(config), 0, 0, "", "a JSON object of options (keys as the long options, '-' or '_'), applied before the command line", 0},
};
#define NOPTS (int)(sizeof OPTS / sizeof OPTS[0])

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("realnvp-train: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void usage(void)
{
    printf("usage: realnvp-train [OPTIONS]\n\n"
           "Trains a Real NVP flow (docs/model.md) with Adam and writes, in --out:\n"
           "  " CKPT_NAME "  the latest state (model + train.* optimiser tensors), written atomically\n"
           "  " BEST_NAME "        the model with the best test bits/dim (inference tensors only)\n"
           "  metrics.jsonl, curve.svg, samples_t1.0.png, samples_t0.7.png\n"
           "SIGINT / SIGTERM save the checkpoint and exit 0; --resume continues exactly.\n"
           "One trainer per --out at a time (" LOCK_NAME "); temporary files a killed run left there are removed at start.\n\n"
           "Options (--name VALUE or --name=VALUE; booleans also as --name / --no-name):\n");
    for (int i = 0; i < NOPTS; i++) {
        const optdef *o = &OPTS[i];
        printf("  --%-15s %s [default: %s]\n", o->name, o->help, *o->def ? o->def : "none");
    }
    printf("  --help             this text\n  --version          the version\n");
}

static const optdef *find_opt(const char *name)
{
    for (int i = 0; i < NOPTS; i++) {
        const char *a = OPTS[i].name, *b = name;
        while (*a && *b && (*a == *b || (*a == '-' && *b == '_'))) a++, b++;
        if (!*a && !*b) return &OPTS[i];
    }
    return NULL;
}

/* Sets option o from text. Returns 0, or -1 with the reason in msg. */
static int set_opt(opts *op, const optdef *o, const char *v, char *msg, size_t cap)
{
    char *p = (char *)op + o->off, *end;
    errno = 0;
    switch (o->type) {
    case O_STR:
        if (strlen(v) >= (o->off == OFF(features) ? 256u : o->off == OFF(flip) ? 8u : 1024u)) {
            snprintf(msg, cap, "--%s: value too long", o->name);
            return -1;
        }
        strcpy(p, v);
        return 0;
    case O_BOOL:
        if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "on") || !strcmp(v, "yes")) *(int *)p = 1;
        else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "off") || !strcmp(v, "no")) *(int *)p = 0;
        else {
            snprintf(msg, cap, "--%s must be 0 or 1, not '%s'", o->name, v);
            return -1;
        }
        return 0;
    case O_U64: {
        unsigned long long x = strtoull(v, &end, 10);
        if (!*v || *v == '-' || *end || errno) {
            snprintf(msg, cap, "--%s must be a non-negative integer, not '%s'", o->name, v);
            return -1;
        }
        *(unsigned long long *)p = x;
        return 0;
    }
    default: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x) || x < o->lo || x > o->hi ||
            (o->type != O_DBL && x != floor(x))) {
            snprintf(msg, cap, "--%s must be %s in %g..%g, not '%s'", o->name, o->type == O_DBL ? "a number" : "an integer",
                     o->lo, o->hi, v);
            return -1;
        }
        if (o->type == O_INT) *(int *)p = (int)x;
        else if (o->type == O_LONG) *(long *)p = (long)x;
        else *(double *)p = x;
        return 0;
    }
    }
}

static void set_defaults(opts *op)
{
    memset(op, 0, sizeof *op);
    char msg[256];
    for (int i = 0; i < NOPTS; i++) set_opt(op, &OPTS[i], OPTS[i].def, msg, sizeof msg);
}

/* Applies a JSON object of options. skip_arch: leave the architecture options alone. */
static int apply_json(opts *op, json_t *obj, const char *where, int skip_arch)
{
    const char *k;
    json_t *v;
    char msg[512], buf[1100];
    json_object_foreach(obj, k, v) {
        const optdef *o = find_opt(k);
        if (!o || !strcmp(o->name, "config") || !strcmp(o->name, "resume")) {
            say("%s: unknown option \"%s\"", where, k);
            return -1;
        }
        if (skip_arch && o->arch) continue;
        if (json_is_string(v)) snprintf(buf, sizeof buf, "%s", json_string_value(v));
        else if (json_is_true(v)) strcpy(buf, "1");
        else if (json_is_false(v)) strcpy(buf, "0");
        else if (json_is_integer(v)) snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
        else if (json_is_real(v)) snprintf(buf, sizeof buf, "%.17g", json_real_value(v));
        else if (json_is_array(v) && !strcmp(o->name, "features")) {
            buf[0] = 0;
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%lld", i ? "," : "",
                                                 (long long)json_integer_value(e));
        } else {
            say("%s: option \"%s\" has a value of the wrong type", where, k);
            return -1;
        }
        if (set_opt(op, o, buf, msg, sizeof msg)) {
            say("%s: %s", where, msg);
            return -1;
        }
    }
    return 0;
}

/* The options as a JSON object (all of them, so a checkpoint records the whole run). */
static json_t *opts_json(const opts *op)
{
    json_t *o = json_object();
    for (int i = 0; i < NOPTS; i++) {
        const optdef *d = &OPTS[i];
        if (!strcmp(d->name, "config") || !strcmp(d->name, "resume")) continue;
        const char *p = (const char *)op + d->off;
        json_t *v;
        switch (d->type) {
        case O_STR: v = json_string(p); break;
        case O_BOOL: v = json_boolean(*(const int *)p); break;
        case O_INT: v = json_integer(*(const int *)p); break;
        case O_LONG: v = json_integer(*(const long *)p); break;
        case O_U64: {
            char b[32];
            snprintf(b, sizeof b, "%llu", *(const unsigned long long *)p);
            v = json_string(b);
            break;
        }
        default: v = json_real(*(const double *)p);
        }
        json_object_set_new(o, d->name, v);
    }
    return o;
}

/* Command-line pass: pass 0 only finds --config, --resume, --out, --help, --version; pass 1
 * applies everything. Returns 0, 1 after --help/--version, or -1 on an error (printed). */
static int parse_argv(opts *op, int argc, char **argv, int pass, int skip_arch)
{
    char msg[512];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (pass == 0) usage();
            return 1;
        }
        if (!strcmp(a, "--version")) {
            if (pass == 0) printf("realnvp-train %s\n", RNVP_VERSION);
            return 1;
        }
        if (strncmp(a, "--", 2)) {
            say("unexpected argument '%s' (see --help)", a);
            return -1;
        }
        char name[64];
        const char *val = NULL, *eq = strchr(a + 2, '=');
        size_t nl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (nl >= sizeof name) nl = sizeof name - 1;
        memcpy(name, a + 2, nl);
        name[nl] = 0;
        int neg = 0;
        const optdef *o = find_opt(name);
        if (!o && !strncmp(name, "no-", 3)) {
            o = find_opt(name + 3);
            if (o && o->type == O_BOOL && !eq) neg = 1;
            else o = NULL;
        }
        if (!o) {
            say("unknown option '%s' (see --help)", a);
            return -1;
        }
        if (eq) val = eq + 1;
        else if (o->type == O_BOOL) val = neg ? "0" : "1";
        else if (i + 1 < argc) val = argv[++i];
        else {
            say("option --%s needs a value", o->name);
            return -1;
        }
        int early = o->off == OFF(config) || o->off == OFF(resume) || o->off == OFF(out);
        if (pass == 0 && !early) continue;
        if (pass == 1 && skip_arch && o->arch) {
            say("note: --%s is ignored on --resume (the checkpoint fixes the architecture)", o->name);
            continue;
        }
        if (set_opt(op, o, val, msg, sizeof msg)) {
            say("%s", msg);
            return -1;
        }
    }
    return 0;
}

static int parse_features(int *f, int S, const char *s)
{
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 4096 || n >= RNVP_MAX_SCALES) return -1;
        f[n++] = (int)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) return -1;
    }
    if (n == 1)
        for (int i = 1; i < S; i++) f[i] = f[0];
    else if (n != S) return -1;
    return 0;
}

/* ------------------------------------------------------------------ small helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { g_stop = sig; }

static void fmt_dur(char *b, size_t cap, double s)
{
    if (!isfinite(s) || s < 0) snprintf(b, cap, "--");
    else if (s < 3600) snprintf(b, cap, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(b, cap, "%dh%02dm", (int)(s / 3600), (int)s % 3600 / 60);
}

static char *read_text(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = malloc(max + 1);
    size_t n = b ? fread(b, 1, max, f) : 0;
    fclose(f);
    if (b) b[n] = 0;
    return b;
}

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t s = a ^ (b * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull);
    rnvpi_splitmix64(&s);
    return rnvpi_splitmix64(&s);
}

/* Permutation of 0..n-1 for epoch e: Fisher-Yates from stream (seed, e). */
static void epoch_perm(int *perm, int n, uint64_t seed, long e)
{
    uint64_t s = mix(seed ^ 0xA5A5A5A5ull, (uint64_t)e);
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rnvpi_splitmix64(&s) % (uint64_t)(i + 1));
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

/* ------------------------------------------------------------------ the run */

typedef struct run {
    opts o;
    rnvp_model *m;
    tr_ws *ws;
    rnvp_ctx *ectx;          /* inference context for evaluation and samples */
    tr_data train, test;
    int kind, flip;
    float *grad, *am, *av;   /* (nparams) each: gradient, Adam moments */
    float *xt;               /* (batch, C, H, W) */
    int *perm;               /* (train.n) */
    long perm_epoch;
    long step, total_steps, steps_per_epoch;
    double best;             /* best test bits/dim so far */
    double last_test;
    double t_start_run, train_seconds;   /* train_seconds: accumulated over every session */
    char ckpt[1100], best_path[1100], metrics[1100], curve[1100];
} run;

/* One optimisation step on the batch of step r->step. Returns the batch's loss (bits/dim). */
static double train_step(run *r)
{
    const rnvp_model *m = r->m;
    const int B = r->o.batch, D = m->D, C = m->cfg.channels, H = m->cfg.height, W = m->cfg.width;
    const long e = r->step / r->steps_per_epoch, pos = r->step % r->steps_per_epoch;
    if (e != r->perm_epoch) {
        epoch_perm(r->perm, r->train.n, r->o.seed, e);
        r->perm_epoch = e;
    }
    uint64_t ns = mix(r->o.seed ^ 0x5DEECE66Dull, (uint64_t)r->step);
    for (int b = 0; b < B; b++) {
        const uint8_t *img = r->train.px + (size_t)r->perm[pos * B + b] * D;
        const int fl = r->flip && (rnvpi_splitmix64(&ns) >> 63);
        float *x = r->xt + (size_t)b * D;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    const int sj = fl ? W - 1 - j : j;
                    x[(c * H + i) * W + j] = (float)((img[(c * H + i) * W + sj] + rnvpi_uniform(&ns)) / 256.0);
                }
    }
    memset(r->grad, 0, sizeof(float) * m->nparams);
    double loss = tr_forward_backward(r->ws, r->m, r->grad, r->xt, B, 1);
    const tr_adam ao = {.lr = r->o.lr, .beta1 = r->o.beta1, .beta2 = r->o.beta2, .eps = r->o.eps, .l2 = r->o.l2,
                        .clip = r->o.clip, .warmup = r->o.warmup};
    const double gn = tr_adam_step(r->m, r->grad, r->am, r->av, r->step + 1, &ao);
    r->step++;
    return isfinite(gn) ? loss : NAN;
}

/* Test bits/dim over the first `limit` test images with noise from a fixed seed (model in
 * inference mode: folded weights and running statistics). Returns NAN when interrupted. */
static double evaluate(run *r, int limit, int show)
{
    rnvp_model *m = r->m;
    rnvpi_model_fold(m);
    const int D = m->D, EB = 100;
    const int n = limit > 0 && limit < r->test.n ? limit : r->test.n;
    float *noise = malloc(sizeof(float) * (size_t)EB * D);
    double *lp = malloc(sizeof(double) * EB);
    if (!noise || !lp) {
        free(noise);
        free(lp);
        return NAN;
    }
    double sum = 0, t0 = now_s();
    rnvp_error err;
    for (int i = 0; i < n && !g_stop; i += EB) {
        const int b = n - i < EB ? n - i : EB;
        for (int k = 0; k < b; k++) {
            uint64_t s = mix(0xE7A1u, (uint64_t)(i + k));   /* the same noise at every evaluation */
            for (int j = 0; j < D; j++) noise[(size_t)k * D + j] = (float)rnvpi_uniform(&s);
        }
        if (rnvp_log_prob(r->ectx, lp, NULL, r->test.px + (size_t)i * D, noise, b, &err)) {
            say("evaluation failed: %s", err.msg);
            sum = NAN;
            break;
        }
        for (int k = 0; k < b; k++) sum += -lp[k] / (D * log(2.0));
        if (show && isatty(2)) {
            fprintf(stderr, "\r  evaluating %d/%d test images (%.0f images/s)   ", i + b, n, (i + b) / (now_s() - t0));
            fflush(stderr);
        }
    }
    if (show && isatty(2)) fputs("\r\033[K", stderr);
    free(noise);
    free(lp);
    return g_stop ? NAN : sum / n;
}

/* ------------------------------------------------------------------ checkpoints */

static enum rnvp_status save_checkpoint(run *r, rnvp_error *err)
{
    rnvp_model *m = r->m;
    char cfg[1024], state[512];
    rnvp_config_to_json(&m->cfg, cfg, sizeof cfg);
    json_t *oj = opts_json(&r->o);
    char *ojs = json_dumps(oj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(oj);
    snprintf(state, sizeof state,
             "{\"step\":%ld,\"epoch\":%.6f,\"best_test_bits_per_dim\":%.17g,\"train_seconds\":%.3f,\"seed\":\"%llu\"}",
             r->step, (double)r->step / r->steps_per_epoch, isfinite(r->best) ? r->best : -1.0,
             r->train_seconds + (now_s() - r->t_start_run), r->o.seed);
    const char *meta[] = {"format", "realnvp", "version", "1", "config", cfg, "train_state", state,
                          "train_options", ojs ? ojs : "{}", "dataset", r->train.name, NULL};
    const int nt = m->ntensors;
    rnvp_tensor *t = malloc(sizeof(rnvp_tensor) * (size_t)(nt + 2));
    if (!t) {
        free(ojs);
        return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory");
    }
    memcpy(t, m->tensors, sizeof(rnvp_tensor) * (size_t)nt);
    t[nt] = (rnvp_tensor){.name = "train.adam_m", .ndim = 1, .shape = {(int)m->nparams, 1, 1, 1}, .size = m->nparams, .data = r->am};
    t[nt + 1] = (rnvp_tensor){.name = "train.adam_v", .ndim = 1, .shape = {(int)m->nparams, 1, 1, 1}, .size = m->nparams, .data = r->av};
    enum rnvp_status st = rnvpi_st_write(r->ckpt, meta, t, nt + 2, err);
    free(t);
    free(ojs);
    return st;
}

/* Reads the train.* tensors and train_state of a checkpoint written by save_checkpoint. */
static int load_train_state(run *r, const char *path, json_t **opts_out)
{
    size_t cap = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        say("%s: %s", path, strerror(errno));
        return -1;
    }
    unsigned char h8[8];
    int ok = fread(h8, 1, 8, f) == 8;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | h8[i];
    char *hdr = ok && hl < (1u << 26) ? malloc(hl + 1) : NULL;
    if (!hdr || fread(hdr, 1, hl, f) != hl) {
        say("%s: cannot read the header", path);
        free(hdr);
        fclose(f);
        return -1;
    }
    hdr[hl] = 0;
    json_error_t je;
    json_t *h = json_loads(hdr, 0, &je);
    free(hdr);
    json_t *md = json_object_get(h, "__metadata__");
    json_t *stj = json_loads(json_string_value(json_object_get(md, "train_state")) ? json_string_value(json_object_get(md, "train_state")) : "", 0, &je);
    json_t *opj = json_loads(json_string_value(json_object_get(md, "train_options")) ? json_string_value(json_object_get(md, "train_options")) : "", 0, &je);
    int rc = 0;
    if (!stj || !opj || !json_is_integer(json_object_get(stj, "step"))) {
        say("%s: no train_state/train_options metadata: not a resumable checkpoint (best.safetensors is inference-only)", path);
        rc = -1;
        goto out;
    }
    r->step = (long)json_integer_value(json_object_get(stj, "step"));
    double best = json_number_value(json_object_get(stj, "best_test_bits_per_dim"));
    r->best = best > 0 ? best : INFINITY;
    r->train_seconds = json_number_value(json_object_get(stj, "train_seconds"));
    const char *names[2] = {"train.adam_m", "train.adam_v"};
    float *dst[2] = {r->am, r->av};
    for (int k = 0; k < 2 && !rc; k++) {
        json_t *e = json_object_get(h, names[k]);
        json_t *off = json_object_get(e, "data_offsets"), *shape = json_object_get(e, "shape");
        if (!e || json_array_size(off) != 2 || json_integer_value(json_array_get(shape, 0)) != (json_int_t)r->m->nparams) {
            say("%s: tensor %s missing or of the wrong shape", path, names[k]);
            rc = -1;
            break;
        }
        json_int_t b = json_integer_value(json_array_get(off, 0)), en = json_integer_value(json_array_get(off, 1));
        if (en - b != (json_int_t)(r->m->nparams * 4) || fseek(f, (long)(8 + hl + (uint64_t)b), SEEK_SET) ||
            fread(dst[k], 4, r->m->nparams, f) != r->m->nparams) {
            say("%s: tensor %s could not be read", path, names[k]);
            rc = -1;
        }
    }
    (void)cap;
    if (!rc) *opts_out = json_incref(opj);
out:
    json_decref(stj);
    json_decref(opj);
    json_decref(h);
    fclose(f);
    return rc;
}

static enum rnvp_status save_best(run *r, double bpd, rnvp_error *err)
{
    char b[64], steps[32], created[64], desc[512];
    snprintf(b, sizeof b, "%.6f", bpd);
    snprintf(steps, sizeof steps, "%ld", r->step);
    time_t tt = time(NULL);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime(&tt));
    snprintf(desc, sizeof desc, "realnvp-train %s: step %ld, epoch %.2f, test bits/dim %.4f over %d images (seeded dequantisation)",
             RNVP_VERSION, r->step, (double)r->step / r->steps_per_epoch, bpd,
             r->o.eval_images > 0 && r->o.eval_images < r->test.n ? (int)r->o.eval_images : r->test.n);
    const char *meta[] = {"dataset", r->train.name, "test_bits_per_dim", b, "steps", steps, "created", created,
                          "description", desc, NULL};
    return rnvp_model_save(r->m, r->best_path, meta, err);
}

/* Keeps the metrics lines with step <= upto (a resumed run rewrites what came after). */
static void truncate_metrics(const char *path, long upto)
{
    char *txt = read_text(path, 64u << 20);
    if (!txt) return;
    char tmp[2400];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        free(txt);
        return;
    }
    for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        if (j && json_integer_value(json_object_get(j, "step")) <= upto) fprintf(f, "%s\n", line);
        json_decref(j);
    }
    fclose(f);
    rename(tmp, path);
    free(txt);
}

/* ------------------------------------------------------------------ the output folder */

/* Takes OUT/.realnvp-train.lock with flock (released when the process ends, even by SIGKILL):
 * one trainer per output folder. Returns the descriptor (kept open until exit), or -1 after
 * saying why. A file system without flock only gets a warning (*held = 0). */
static int lock_out(const char *outdir, int *held)
{
    *held = 0;
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", outdir, LOCK_NAME);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        say("%s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        if (errno == EWOULDBLOCK) {
            char buf[32] = "";
            long pid = pread(fd, buf, sizeof buf - 1, 0) > 0 ? atol(buf) : 0;
            char who[48] = "";
            if (pid > 0) snprintf(who, sizeof who, " (pid %ld)", pid);
            say("%s is in use by another realnvp-train%s: one trainer per output folder; give another --out or stop "
                "that run (lock file %s)", outdir, who, path);
            close(fd);
            return -1;
        }
        say("warning: cannot lock %s (%s): a second trainer on this folder would not be refused, and stale temporary "
            "files are left alone", path, strerror(errno));
        return fd;
    }
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) || pwrite(fd, buf, (size_t)n, 0) != n) { /* the pid is for the message above only */ }
    *held = 1;
    return fd;
}

/* 1 if name is a temporary file this program writes in OUT: NAME.tmp.PID of the checkpoints
 * (rnvp_model_save's naming) or metrics.jsonl.tmp, curve.svg.tmp */
static int our_tmp(const char *name)
{
    const char *pid_named[] = {CKPT_NAME ".tmp.", BEST_NAME ".tmp."};
    for (int i = 0; i < 2; i++) {
        size_t l = strlen(pid_named[i]);
        if (strncmp(name, pid_named[i], l) || !name[l]) continue;
        const char *p = name + l;
        while (*p >= '0' && *p <= '9') p++;
        return !*p;
    }
    return !strcmp(name, "metrics.jsonl.tmp") || !strcmp(name, "curve.svg.tmp");
}

/* Removes the temporary files a killed run left in OUT (the lock is ours, so no other trainer
 * is writing them) and says so in one line. */
static void remove_stale_tmp(const char *outdir)
{
    DIR *d = opendir(outdir);
    if (!d) return;
    char names[400] = "";
    size_t used = 0;
    int n = 0, failed = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!our_tmp(e->d_name)) continue;
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", outdir, e->d_name);
        if (unlink(path)) {
            if (!failed++) say("%s: stale temporary file not removed: %s", path, strerror(errno));
            continue;
        }
        if (used < sizeof names - 1)
            used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", n ? ", " : "", e->d_name);
        n++;
    }
    closedir(d);
    if (used >= sizeof names - 1) snprintf(names + sizeof names - 5, 5, "...");
    if (n) say("removed %d stale temporary file%s left in %s by a killed run: %s", n, n > 1 ? "s" : "", outdir, names);
}

/* ------------------------------------------------------------------ pictures */

/* The training curve as SVG from metrics.jsonl: train (running) and test bits/dim against step. */
static void write_curve(const char *metrics, const char *out)
{
    char *txt = read_text(metrics, 64u << 20);
    if (!txt) return;
    size_t cap = 1024, ntr = 0, nte = 0;
    double *tr = malloc(sizeof(double) * 2 * cap), *te = malloc(sizeof(double) * 2 * cap);
    for (char *line = strtok(txt, "\n"); line && tr && te; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        if (!j) continue;
        double s = (double)json_integer_value(json_object_get(j, "step"));
        json_t *a = json_object_get(j, "train_bpd"), *b = json_object_get(j, "test_bpd");
        if (ntr == cap || nte == cap) {
            cap *= 2;
            double *t1 = realloc(tr, sizeof(double) * 2 * cap), *t2 = realloc(te, sizeof(double) * 2 * cap);
            if (t1) tr = t1;
            if (t2) te = t2;
            if (!t1 || !t2) { json_decref(j); break; }
        }
        if (json_is_number(a)) { tr[2 * ntr] = s; tr[2 * ntr + 1] = json_number_value(a); ntr++; }
        if (json_is_number(b)) { te[2 * nte] = s; te[2 * nte + 1] = json_number_value(b); nte++; }
        json_decref(j);
    }
    free(txt);
    if (!tr || !te || ntr + nte == 0) { free(tr); free(te); return; }
    double xmax = 1, ymin = 1e30, ymax = -1e30;
    for (size_t i = 0; i < ntr; i++) { xmax = fmax(xmax, tr[2 * i]); ymin = fmin(ymin, tr[2 * i + 1]); }
    for (size_t i = 0; i < nte; i++) { xmax = fmax(xmax, te[2 * i]); ymin = fmin(ymin, te[2 * i + 1]); }
    /* y range: from just under the best value to 1.5 bits above it (the first steps are far higher) */
    ymin = floor(ymin * 10 - 1) / 10;
    for (size_t i = 0; i < ntr; i++) ymax = fmax(ymax, tr[2 * i + 1]);
    ymax = fmin(ymax, ymin + 1.5);
    if (ymax <= ymin) ymax = ymin + 0.5;
    const double X0 = 70, Y0 = 20, PW = 560, PH = 320;
    char tmp[2400];
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    FILE *f = fopen(tmp, "w");
    if (!f) { free(tr); free(te); return; }
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"660\" height=\"400\" font-family=\"sans-serif\" font-size=\"12\">\n"
               "<rect width=\"660\" height=\"400\" fill=\"white\"/>\n"
               "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"#444\"/>\n", X0, Y0, PW, PH);
    for (int k = 0; k <= 5; k++) {
        double yv = ymin + (ymax - ymin) * k / 5, y = Y0 + PH - PH * k / 5;
        fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ddd\"/><text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.2f</text>\n",
                X0, y, X0 + PW, y, X0 - 6, y + 4, yv);
        double xv = xmax * k / 5, x = X0 + PW * k / 5;
        fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%.0f</text>\n", x, Y0 + PH + 16, xv);
    }
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">step</text>\n", X0 + PW / 2, Y0 + PH + 34);
    fprintf(f, "<text transform=\"translate(18,%g) rotate(-90)\" text-anchor=\"middle\">bits/dim</text>\n", Y0 + PH / 2);
    const char *col[2] = {"#1f77b4", "#d62728"};
    double *pts[2] = {tr, te};
    size_t np[2] = {ntr, nte};
    for (int s = 0; s < 2; s++) {
        if (!np[s]) continue;
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\" points=\"", col[s], s ? "2" : "1.2");
        for (size_t i = 0; i < np[s]; i++) {
            double x = X0 + PW * pts[s][2 * i] / xmax;
            double y = Y0 + PH - PH * (fmin(fmax(pts[s][2 * i + 1], ymin), ymax) - ymin) / (ymax - ymin);
            fprintf(f, "%.1f,%.1f ", x, y);
        }
        fprintf(f, "\"/>\n");
        if (s) {
            for (size_t i = 0; i < np[s]; i++) {
                double x = X0 + PW * pts[s][2 * i] / xmax;
                double y = Y0 + PH - PH * (fmin(fmax(pts[s][2 * i + 1], ymin), ymax) - ymin) / (ymax - ymin);
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n", x, y, col[s]);
            }
        }
    }
    fprintf(f, "<text x=\"%g\" y=\"%g\" fill=\"%s\">train (batch bits/dim, mean over the log interval)</text>\n", X0 + PW - 330, Y0 + 18, col[0]);
    if (nte)
        fprintf(f, "<text x=\"%g\" y=\"%g\" fill=\"%s\">test %.4f at step %.0f (last)</text>\n", X0 + PW - 330, Y0 + 34, col[1],
                te[2 * nte - 1], te[2 * nte - 2]);
    fprintf(f, "</svg>\n");
    fclose(f);
    rename(tmp, out);
    free(tr);
    free(te);
}

static void write_samples(run *r)
{
    const rnvp_model *m = r->m;
    const int n = 64;
    uint8_t *px = malloc((size_t)n * m->D);
    if (!px) return;
    const double temps[2] = {1.0, 0.7};
    for (int k = 0; k < 2; k++) {
        rnvp_error err;
        char path[1200];
        snprintf(path, sizeof path, "%s/samples_t%.1f.png", r->o.out, temps[k]);
        if (rnvp_sample(r->ectx, px, NULL, n, temps[k], 1234, &err) ||
            rnvp_png_write_grid(path, px, n, m->cfg.channels, m->cfg.height, m->cfg.width, 8, &err))
            say("sample grid %s: %s", path, err.msg);
    }
    free(px);
}

/* ------------------------------------------------------------------ main */

static void log_metrics(run *r, double train_bpd, double test_bpd, double ips)
{
    FILE *f = fopen(r->metrics, "a");
    if (!f) {
        say("%s: %s (metrics not logged)", r->metrics, strerror(errno));
        return;
    }
    double lr = r->o.lr;
    if (r->o.warmup > 0 && r->step < r->o.warmup) lr *= (double)r->step / r->o.warmup;
    fprintf(f, "{\"step\":%ld,\"epoch\":%.4f", r->step, (double)r->step / r->steps_per_epoch);
    if (isfinite(train_bpd)) fprintf(f, ",\"train_bpd\":%.6f", train_bpd);
    if (isfinite(test_bpd)) fprintf(f, ",\"test_bpd\":%.6f", test_bpd);
    fprintf(f, ",\"images_per_s\":%.2f,\"lr\":%.3g,\"time\":%.1f}\n", ips, lr, r->train_seconds + now_s() - r->t_start_run);
    if (fclose(f)) say("%s: %s", r->metrics, strerror(errno));
}

static void free_run(run *r)
{
    tr_ws_free(r->ws);
    rnvp_ctx_free(r->ectx);
    rnvp_model_free(r->m);
    tr_data_free(&r->train);
    tr_data_free(&r->test);
    free(r->grad);
    free(r->am);
    free(r->av);
    free(r->xt);
    free(r->perm);
}

static int do_eval(run *r, double *test_out)
{
    double t0 = now_s();
    double bpd = evaluate(r, (int)r->o.eval_images, 1);
    *test_out = bpd;
    if (!isfinite(bpd)) return g_stop ? 0 : -1;
    r->last_test = bpd;
    int n = r->o.eval_images > 0 && r->o.eval_images < r->test.n ? (int)r->o.eval_images : r->test.n;
    char e[32];
    fmt_dur(e, sizeof e, now_s() - t0);
    printf("step %ld epoch %.2f: test %.4f bits/dim over %d images (%s)%s\n", r->step,
           (double)r->step / r->steps_per_epoch, bpd, n, e, bpd < r->best ? ", best so far" : "");
    fflush(stdout);
    rnvp_error err;
    if (bpd < r->best) {
        r->best = bpd;
        if (save_best(r, bpd, &err)) say("best model not saved: %s", err.msg);
    }
    write_samples(r);
    return 0;
}

int main(int argc, char **argv)
{
    rnvp_blas_select_core(argv);
    run R;
    memset(&R, 0, sizeof R);
    run *r = &R;
    opts *o = &r->o;
    set_defaults(o);
    int pr = parse_argv(o, argc, argv, 0, 0);
    if (pr) return pr > 0 ? 0 : EXIT_USAGE;
    const int resume = o->resume;
    char outdir[1024], config[1024];
    snprintf(config, sizeof config, "%s", o->config);
    snprintf(outdir, sizeof outdir, "%s", o->out);
    snprintf(r->ckpt, sizeof r->ckpt, "%s/%s", outdir, CKPT_NAME);
    snprintf(r->best_path, sizeof r->best_path, "%s/%s", outdir, BEST_NAME);
    snprintf(r->metrics, sizeof r->metrics, "%s/metrics.jsonl", outdir);
    snprintf(r->curve, sizeof r->curve, "%s/curve.svg", outdir);
    rnvp_error err;
    r->best = INFINITY;
    r->last_test = NAN;
    json_t *saved_opts = NULL;
    if (resume) {
        /* the checkpoint's model and options first, then the command line on top */
        if (rnvp_model_load(&r->m, r->ckpt, &err)) {
            say("--resume: %s", err.msg);
            return EXIT_RUN;
        }
        r->am = calloc(r->m->nparams, sizeof(float));
        r->av = calloc(r->m->nparams, sizeof(float));
        if (!r->am || !r->av || load_train_state(r, r->ckpt, &saved_opts)) {
            free_run(r);
            return EXIT_RUN;
        }
        set_defaults(o);
        if (apply_json(o, saved_opts, r->ckpt, 0)) {
            json_decref(saved_opts);
            free_run(r);
            return EXIT_RUN;
        }
        json_decref(saved_opts);
    }
    snprintf(o->config, sizeof o->config, "%s", config);
    if (*o->config) {
        char *txt = read_text(o->config, 1 << 20);
        json_error_t je;
        json_t *cj = txt ? json_loads(txt, 0, &je) : NULL;
        free(txt);
        if (!cj || !json_is_object(cj)) {
            say("%s: %s", o->config, !txt ? strerror(errno) : "not a JSON object of options");
            json_decref(cj);
            free_run(r);
            return EXIT_USAGE;
        }
        int bad = apply_json(o, cj, o->config, resume);
        json_decref(cj);
        if (bad) { free_run(r); return EXIT_USAGE; }
    }
    if (parse_argv(o, argc, argv, 1, resume)) { free_run(r); return EXIT_USAGE; }
    snprintf(o->out, sizeof o->out, "%s", outdir);
    o->resume = resume;
    if (strcmp(o->flip, "on") && strcmp(o->flip, "off") && strcmp(o->flip, "auto")) {
        say("--flip must be on, off or auto, not '%s'", o->flip);
        free_run(r);
        return EXIT_USAGE;
    }
    /* data */
    if (tr_data_open(&r->train, &r->test, &r->kind, o->data, &err)) {
        say("%s", err.msg);
        free_run(r);
        return EXIT_RUN;
    }
    if (*o->test) {
        tr_data_free(&r->test);
        if (tr_data_load(&r->test, o->test, &err)) {
            say("--test: %s", err.msg);
            free_run(r);
            return EXIT_RUN;
        }
    }
    if (r->test.n == 0) {
        int k = (int)ceil(r->train.n * o->val_fraction);
        if (k < 1) k = 1;
        if (tr_data_split(&r->train, &r->test, k, &err)) {
            say("%s", err.msg);
            free_run(r);
            return EXIT_RUN;
        }
    }
    if (r->test.c != r->train.c || r->test.h != r->train.h || r->test.w != r->train.w) {
        say("test images are %d x %d x %d, training images %d x %d x %d", r->test.w, r->test.h, r->test.c, r->train.w,
            r->train.h, r->train.c);
        free_run(r);
        return EXIT_RUN;
    }
    r->flip = !strcmp(o->flip, "on") || (!strcmp(o->flip, "auto") && (r->kind == DATA_IDX_DIR || r->kind == DATA_CIFAR10));
    if (r->train.n < o->batch) {
        say("%s: %d training images, fewer than one batch of %d", r->train.name, r->train.n, o->batch);
        free_run(r);
        return EXIT_RUN;
    }
    /* model */
    if (!resume) {
        rnvp_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.height = r->train.h;
        cfg.width = r->train.w;
        cfg.channels = r->train.c;
        cfg.num_scales = o->scales;
        cfg.res_blocks = o->res_blocks;
        cfg.alpha = o->alpha;
        cfg.bn_eps = 1e-5;
        cfg.flow_batchnorm = o->flow_bn;
        cfg.flow_bn_eps = 1e-4;
        cfg.kernel = o->kernel;
        if (parse_features(cfg.features, cfg.num_scales, o->features)) {
            say("--features '%s': give one value per scale (%d), or one for all, each 1..4096", o->features, o->scales);
            free_run(r);
            return EXIT_USAGE;
        }
        if (o->kernel % 2 == 0) {
            say("--kernel must be odd, not %d", o->kernel);
            free_run(r);
            return EXIT_USAGE;
        }
        if (rnvp_config_validate(&cfg, &err) || rnvpi_model_build(&r->m, &cfg, NULL, NULL, &err)) {
            say("model: %s", err.msg);
            free_run(r);
            return EXIT_USAGE;
        }
        tr_init_params(r->m, o->seed);
        r->am = calloc(r->m->nparams, sizeof(float));
        r->av = calloc(r->m->nparams, sizeof(float));
    } else {
        const rnvp_config *c = &r->m->cfg;
        if (c->height != r->train.h || c->width != r->train.w || c->channels != r->train.c) {
            say("the checkpoint's model is %d x %d x %d, the data %d x %d x %d", c->width, c->height, c->channels, r->train.w,
                r->train.h, r->train.c);
            free_run(r);
            return EXIT_RUN;
        }
    }
    const int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    rnvp_set_num_threads(threads);
    r->steps_per_epoch = r->train.n / o->batch;
    r->total_steps = o->steps > 0 ? o->steps : o->epochs * r->steps_per_epoch;
    r->grad = malloc(sizeof(float) * r->m->nparams);
    r->xt = malloc(sizeof(float) * (size_t)o->batch * r->m->D);
    r->perm = malloc(sizeof(int) * (size_t)r->train.n);
    r->perm_epoch = -1;
    if (!r->grad || !r->xt || !r->perm || !r->am || !r->av) {
        say("out of memory");
        free_run(r);
        return EXIT_RUN;
    }
    if (tr_ws_create(&r->ws, r->m, o->batch, &err) || rnvp_ctx_create(&r->ectx, r->m, 100, &err)) {
        say("workspace: %s", err.msg);
        free_run(r);
        return EXIT_RUN;
    }
    if (mkdir(outdir, 0755) && errno != EEXIST) {
        say("%s: %s", outdir, strerror(errno));
        free_run(r);
        return EXIT_RUN;
    }
    int locked;
    const int lock_fd = lock_out(outdir, &locked);
    if (lock_fd < 0) {
        free_run(r);
        return EXIT_RUN;
    }
    if (locked) remove_stale_tmp(outdir);
    if (resume) truncate_metrics(r->metrics, r->step);
    else remove(r->metrics);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    char cfgs[1024];
    rnvp_config_to_json(&r->m->cfg, cfgs, sizeof cfgs);
    printf("realnvp-train %s: %s %s (%d train, %d test images of %d x %d x %d), flips %s\n", RNVP_VERSION,
           tr_data_kind_name(r->kind), r->train.name, r->train.n, r->test.n, r->train.w, r->train.h, r->train.c,
           r->flip ? "on" : "off");
    printf("model %s: %zu parameters, %.3f GFLOP/image forward; batch %d, %d threads, %ld steps/epoch, %s step %ld of %ld\n",
           cfgs, r->m->nparams, rnvp_model_flops(r->m) / 1e9, o->batch, threads, r->steps_per_epoch,
           resume ? "resuming at" : "starting at", r->step, r->total_steps);
    printf("workspace %.1f MB, out %s\n", (tr_ws_bytes(r->ws) + rnvp_ctx_bytes(r->ectx)) / 1e6, outdir);
    fflush(stdout);

    r->t_start_run = now_s();
    double last_save = now_s(), last_print = 0, win_loss = 0, win_t0 = now_s();
    long win_n = 0, win_start = r->step, nan_steps = 0;
    int rc = 0;
    const int tty = isatty(2);
    while (r->step < r->total_steps && !g_stop) {
        double loss = train_step(r);
        if (!isfinite(loss)) {
            if (++nan_steps > 20) {
                say("the loss is not finite for 20 steps at step %ld: stopping (lower --lr or raise --warmup); the last checkpoint is intact",
                    r->step);
                rc = EXIT_RUN;
                break;
            }
        } else {
            win_loss += loss;
            win_n++;
        }
        const double t = now_s();
        const double ips = (double)(r->step - win_start) * o->batch / (t - win_t0 + 1e-9);
        if (t - last_print > (tty ? 0.5 : 60) || r->step == r->total_steps) {
            char eta[32], el[32];
            fmt_dur(eta, sizeof eta, (r->total_steps - r->step) * o->batch / (ips > 0 ? ips : 1e-9));
            fmt_dur(el, sizeof el, r->train_seconds + t - r->t_start_run);
            const double ep = (double)r->step / r->steps_per_epoch;
            const int w = 20, fill = (int)(w * (double)r->step / r->total_steps);
            char bar[32];
            for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
            bar[w] = 0;
            fprintf(stderr, "%s[%s] step %ld/%ld epoch %.2f  %.1f img/s  train %.4f bpd  test %.4f  elapsed %s  ETA %s%s",
                    tty ? "\r" : "", bar, r->step, r->total_steps, ep, ips, win_n ? win_loss / win_n : NAN, r->last_test, el,
                    eta, tty ? "\033[K" : "\n");
            fflush(stderr);
            last_print = t;
        }
        if (r->step % o->log_every == 0) {
            log_metrics(r, win_n ? win_loss / win_n : NAN, NAN, ips);
            win_loss = 0;
            win_n = 0;
            win_start = r->step;
            win_t0 = now_s();
        }
        int eval_now = o->eval_every > 0 && r->step % o->eval_every == 0;
        if (eval_now) {
            if (tty) fputc('\n', stderr);
            double tb;
            if (do_eval(r, &tb)) { rc = EXIT_RUN; break; }
            if (isfinite(tb)) {
                log_metrics(r, NAN, tb, ips);
                write_curve(r->metrics, r->curve);
            }
            win_t0 = now_s();
            win_start = r->step;
        }
        if (eval_now || now_s() - last_save > o->save_every) {
            if (save_checkpoint(r, &err)) say("checkpoint not written (the previous one is intact; retrying later): %s", err.msg);
            last_save = now_s();
        }
    }
    if (tty) fputc('\n', stderr);
    if (!g_stop && rc == 0 && (o->eval_every == 0 || r->step % o->eval_every != 0)) {
        double tb;
        if (do_eval(r, &tb)) rc = EXIT_RUN;
        else if (isfinite(tb)) {
            log_metrics(r, NAN, tb, 0);
            write_curve(r->metrics, r->curve);
        }
    }
    if (save_checkpoint(r, &err)) {
        say("final checkpoint not written: %s (the previous one is intact)", err.msg);
        rc = EXIT_RUN;
    } else {
        printf("%s at step %ld: %s\n", g_stop ? (g_stop == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)") : "done",
               r->step, r->ckpt);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak memory %.1f MB; best test bits/dim %.4f\n", ru.ru_maxrss / 1024.0, r->best);
    free_run(r);
    close(lock_fd);   /* releases the output folder */
    return rc;
}
