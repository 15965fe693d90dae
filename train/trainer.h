/* trainer.h: the parts of bin/realnvp-train shared between its files: options (options.c), the
 * run's state with its checkpoint, metrics and picture files (run.c), and the loop (main.c).
 * Leaves out the flow's passes (train.h), the optimiser (optim.h) and data sets (data.h). */
#ifndef RNVP_TRAINER_H
#define RNVP_TRAINER_H

#include "data.h"
#include "dist.h"
#include "optim.h"
#include "train.h"

#include <jansson.h>

#define EXIT_RUN 1
#define EXIT_USAGE 2
#define CKPT_NAME "checkpoint.safetensors"
#define BEST_NAME "best.safetensors"
#define LOCK_NAME ".realnvp-train.lock"

/* ---- options (options.c) ---- */

typedef struct tr_opts {
    char data[1024], test[1024], out[1024], config[1024], features[256], flip[8], lr_schedule[16];
    int scales, res_blocks, flow_bn, kernel, batch, threads, warmup, resume;
    long steps, epochs, eval_every, eval_images, log_every, save_every, decay_start;
    double alpha, lr, lr_min, beta1, beta2, eps, l2, clip, val_fraction;
    unsigned long long seed;
} tr_opts;

/* a message on stderr, prefixed "realnvp-train: " */
void tr_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* every option at its default */
void tr_opts_defaults(tr_opts *op);
/* Command-line pass: pass 0 only finds --config, --resume, --out, --help, --version; pass 1
 * applies everything (skip_arch: architecture options are ignored, with a note). Returns 0, 1
 * after --help/--version, or -1 on an error (printed). */
int tr_opts_parse_argv(tr_opts *op, int argc, char **argv, int pass, int skip_arch);
/* Applies a JSON object of options (where: its origin, for messages). skip_arch: leave the
 * architecture options alone. 0, or -1 after saying why. */
int tr_opts_apply_json(tr_opts *op, json_t *obj, const char *where, int skip_arch);
/* The options as a JSON object (all of them, so a checkpoint records the whole run); new reference. */
json_t *tr_opts_json(const tr_opts *op);
/* --features: one value per scale (S), or one for all, each 1..4096, into f; 0 or -1 */
int tr_parse_features(int *f, int S, const char *s);

/* ---- the run: state, checkpoints, metrics and pictures (run.c) ---- */

typedef struct tr_run {
    tr_opts o;
    rnvp_model *m;
    tr_ws *ws;
    rnvp_ctx *ectx;          /* inference context for evaluation and samples */
    tr_data train, test;
    int kind, flip;
    int threads;             /* compute threads (--threads, 0: every core) */
    float *grad, *am, *av;   /* (nparams) each: gradient, Adam moments */
    float *xt;               /* (nb, C, H, W) this process's share of the batch */
    const tr_dist *dist;     /* the processes (one without MPI) */
    int b0, nb;              /* this process's share: images b0 .. b0+nb-1 of each global batch */
    int *perm;               /* (train.n) */
    long perm_epoch;
    long step, total_steps, steps_per_epoch;
    double best;             /* best test bits/dim so far */
    double last_test;
    double t_start_run, train_seconds;   /* train_seconds: accumulated over every session */
    char ckpt[1100], best_path[1100], metrics[1100], curve[1100];
} tr_run;

double tr_now(void);   /* CLOCK_MONOTONIC seconds */
/* Adam's options and the learning-rate schedule of the run (its options, --lr-schedule already
 * checked, and total_steps): tr_lr(&o, t) is the learning rate of step t. */
tr_adam tr_run_adam(const tr_run *r);
/* the file's first max bytes, NUL-terminated (malloc'ed), or NULL */
char *tr_read_text(const char *path, size_t max);
/* Writes r->ckpt atomically: the model, Adam's moments (train.adam_m, train.adam_v) and the
 * train_state and train_options metadata that --resume needs. */
enum rnvp_status tr_save_checkpoint(tr_run *r, rnvp_error *err);
/* Reads the train.* tensors and train_state of a checkpoint written by tr_save_checkpoint into
 * r (r->m, r->am and r->av allocated); *opts_out: its train_options (new reference). 0 or -1
 * after saying why. */
int tr_load_train_state(tr_run *r, const char *path, json_t **opts_out);
/* Writes r->best_path (inference tensors only) with the test bits/dim in its metadata. */
enum rnvp_status tr_save_best(tr_run *r, double bpd, rnvp_error *err);
/* Keeps the metrics lines with step <= upto (a resumed run rewrites what came after). */
void tr_truncate_metrics(const char *path, long upto);
/* One trainer per output folder: the descriptor of its lock (kept open until exit) or -1 after
 * saying why; *held = 0 when the file system has no flock (a warning only). */
int tr_lock_out(const char *outdir, int *held);
/* Removes the temporary files a killed run left in outdir and says so in one line. */
void tr_remove_stale_tmp(const char *outdir);
/* The training curve as SVG (out, written atomically) from metrics.jsonl. */
void tr_write_curve(const char *metrics, const char *out);
/* 64-sample grids at temperatures 1.0 and 0.7 in r->o.out. */
void tr_write_samples(tr_run *r);
/* Appends one metrics.jsonl line (NAN values are left out). */
void tr_log_metrics(tr_run *r, double train_bpd, double test_bpd, double ips);
void tr_free_run(tr_run *r);

#endif
