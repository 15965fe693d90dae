/* options.c: bin/realnvp-train's options: the table (name, type, range, default, help), --help,
 * the command line, JSON configs and the JSON a checkpoint records. Leaves out what the options
 * drive (main.c, run.c). */
#include "trainer.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#define OFF(f) offsetof(tr_opts, f)
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
    {"lr-schedule", O_STR, OFF(lr_schedule), 0, 0, "constant", "learning rate after warm-up and --decay-start: constant, cosine or linear decay to --lr-min at the last step (formula above)", 0},
    {"decay-start", O_LONG, OFF(decay_start), 0, 1e12, "0", "the decay starts after step max(this, --warmup) (0: right after warm-up)", 0},
    {"lr-min", O_DBL, OFF(lr_min), 0, 1, "0", "learning rate the decay reaches at the last step", 0},
    {"flip", O_STR, OFF(flip), 0, 0, "auto", "horizontal-flip augmentation: on, off, auto (on for Fashion-MNIST/MNIST folders and CIFAR-10)", 0},
    {"threads", O_INT, OFF(threads), 0, 256, "0", "threads (0: every core, shared evenly by the MPI processes on the machine)", 0},
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

void tr_say(const char *fmt, ...)
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
           "Learning rate of step t = 1, 2, ... (the step logged after it), with T the last step (--steps, else\n"
           "--epochs x steps per epoch), s = max(--decay-start, --warmup) and p = min(1, (t - s) / (T - s)):\n"
           "  t < warmup                        lr * t / warmup\n"
           "  t <= s, or T <= s, or constant    lr\n"
           "  s < t, cosine                     lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2   (step T: lr_min)\n"
           "  s < t, linear                     lr - (lr - lr_min) * p                           (step T: lr_min)\n"
           "It depends only on the step and the options, which the checkpoint keeps: --resume continues it exactly,\n"
           "and flags given with --resume change it from the next step on: --resume --lr-schedule cosine\n"
           "--decay-start S --steps T, S the checkpoint's step, anneals a run from step S + 1 to T.\n\n"
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
static int set_opt(tr_opts *op, const optdef *o, const char *v, char *msg, size_t cap)
{
    char *p = (char *)op + o->off, *end;
    errno = 0;
    switch (o->type) {
    case O_STR:
        if (strlen(v) >= (o->off == OFF(features)      ? sizeof op->features
                          : o->off == OFF(flip)        ? sizeof op->flip
                          : o->off == OFF(lr_schedule) ? sizeof op->lr_schedule
                                                       : 1024u)) {
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

void tr_opts_defaults(tr_opts *op)
{
    memset(op, 0, sizeof *op);
    char msg[256];
    for (int i = 0; i < NOPTS; i++) set_opt(op, &OPTS[i], OPTS[i].def, msg, sizeof msg);
}

/* Applies a JSON object of options. skip_arch: leave the architecture options alone. */
int tr_opts_apply_json(tr_opts *op, json_t *obj, const char *where, int skip_arch)
{
    const char *k;
    json_t *v;
    char msg[512], buf[1100];
    json_object_foreach(obj, k, v) {
        const optdef *o = find_opt(k);
        if (!o || !strcmp(o->name, "config") || !strcmp(o->name, "resume")) {
            tr_say("%s: unknown option \"%s\"", where, k);
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
            tr_say("%s: option \"%s\" has a value of the wrong type", where, k);
            return -1;
        }
        if (set_opt(op, o, buf, msg, sizeof msg)) {
            tr_say("%s: %s", where, msg);
            return -1;
        }
    }
    return 0;
}

/* The options as a JSON object (all of them, so a checkpoint records the whole run). */
json_t *tr_opts_json(const tr_opts *op)
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
int tr_opts_parse_argv(tr_opts *op, int argc, char **argv, int pass, int skip_arch)
{
    char msg[512];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            if (pass == 0) usage();
            return 1;
        }
        if (!strcmp(a, "--version")) {
            if (pass == 0) printf("realnvp-train %s (%s)\n", RNVP_VERSION, tr_dist_available() ? "MPI: yes" : "MPI: no");
            return 1;
        }
        if (strncmp(a, "--", 2)) {
            tr_say("unexpected argument '%s' (see --help)", a);
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
            tr_say("unknown option '%s' (see --help)", a);
            return -1;
        }
        if (eq) val = eq + 1;
        else if (o->type == O_BOOL) val = neg ? "0" : "1";
        else if (i + 1 < argc) val = argv[++i];
        else {
            tr_say("option --%s needs a value", o->name);
            return -1;
        }
        int early = o->off == OFF(config) || o->off == OFF(resume) || o->off == OFF(out);
        if (pass == 0 && !early) continue;
        if (pass == 1 && skip_arch && o->arch) {
            tr_say("note: --%s is ignored on --resume (the checkpoint fixes the architecture)", o->name);
            continue;
        }
        if (set_opt(op, o, val, msg, sizeof msg)) {
            tr_say("%s", msg);
            return -1;
        }
    }
    return 0;
}

int tr_parse_features(int *f, int S, const char *s)
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
