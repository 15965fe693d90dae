/* main.c: bin/realnvp-train: start-up (options, data, model, output folder), the training loop
 * with progress, evaluation and checkpoints, and signals. Leaves out the options (options.c), the
 * run's files (run.c), the optimiser (optim.c), the flow's passes (flow_train.c) and data parsing (data.c).
 *
 * Determinism: everything random is a pure function of (--seed, step): the data order of epoch e
 * is a permutation drawn from (seed, e), the dequantisation noise and flips of step t from
 * (seed, t). A checkpoint therefore needs only the parameters, Adam's moments and the step to
 * resume exactly; with --threads 1 the result is bit-identical to an uninterrupted run.
 *
 * Processes (mpirun -np N, train/dist.h): each takes images b0 .. b0+nb-1 of every global batch
 * of --batch images, the batch norms use the global batch's statistics, and the gradients are
 * summed before the (identical) Adam step on every process; rank 0 alone prints and writes
 * files. The loop stops on every process at the same step (a stop signal or error on any). */
#include "optim.h"
#include "trainer.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { g_stop = sig; }

static void fmt_dur(char *b, size_t cap, double s)
{
    if (!isfinite(s) || s < 0) snprintf(b, cap, "--");
    else if (s < 3600) snprintf(b, cap, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(b, cap, "%dh%02dm", (int)(s / 3600), (int)s % 3600 / 60);
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

/* One optimisation step on the batch of step r->step. Returns the batch's loss (bits/dim). */
static double train_step(tr_run *r)
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
        const int fl = r->flip && (rnvpi_splitmix64(&ns) >> 63);
        if (b < r->b0 || b >= r->b0 + r->nb) {   /* another process's image: only its draws */
            for (int i = 0; i < D; i++) rnvpi_uniform(&ns);
            continue;
        }
        const uint8_t *img = r->train.px + (size_t)r->perm[pos * B + b] * D;
        float *x = r->xt + (size_t)(b - r->b0) * D;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    const int sj = fl ? W - 1 - j : j;
                    x[(c * H + i) * W + j] = (float)((img[(c * H + i) * W + sj] + rnvpi_uniform(&ns)) / 256.0);
                }
    }
    memset(r->grad, 0, sizeof(float) * m->nparams);
    double loss = tr_forward_backward(r->ws, r->m, r->grad, r->xt, r->nb, 1);
    tr_dist_sum(r->dist, r->grad, m->nparams);   /* every process's share of the gradient */
    const tr_adam ao = tr_run_adam(r);
    const double gn = tr_adam_step(r->m, r->grad, r->am, r->av, r->step + 1, &ao);
    r->step++;
    return isfinite(gn) ? loss : NAN;
}

/* Test bits/dim over the first `limit` test images with noise from a fixed seed (model in
 * inference mode: folded weights and running statistics). Returns NAN when interrupted. */
static double evaluate(tr_run *r, int limit, int show)
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
    double sum = 0, t0 = tr_now();
    rnvp_error err;
    for (int i = 0; i < n && !g_stop; i += EB) {
        const int b = n - i < EB ? n - i : EB;
        for (int k = 0; k < b; k++) {
            uint64_t s = mix(0xE7A1u, (uint64_t)(i + k));   /* the same noise at every evaluation */
            for (int j = 0; j < D; j++) noise[(size_t)k * D + j] = (float)rnvpi_uniform(&s);
        }
        if (rnvp_log_prob(r->ectx, lp, NULL, r->test.px + (size_t)i * D, noise, b, &err)) {
            tr_say("evaluation failed: %s", err.msg);
            sum = NAN;
            break;
        }
        for (int k = 0; k < b; k++) sum += -lp[k] / (D * log(2.0));
        if (show && isatty(2)) {
            fprintf(stderr, "\r  evaluating %d/%d test images (%.0f images/s)   ", i + b, n, (i + b) / (tr_now() - t0));
            fflush(stderr);
        }
    }
    if (show && isatty(2)) fputs("\r\033[K", stderr);
    free(noise);
    free(lp);
    return g_stop ? NAN : sum / n;
}

static int do_eval(tr_run *r, double *test_out)
{
    double t0 = tr_now();
    double bpd = evaluate(r, (int)r->o.eval_images, 1);
    *test_out = bpd;
    if (!isfinite(bpd)) return g_stop ? 0 : -1;
    r->last_test = bpd;
    int n = r->o.eval_images > 0 && r->o.eval_images < r->test.n ? (int)r->o.eval_images : r->test.n;
    char e[32];
    fmt_dur(e, sizeof e, tr_now() - t0);
    printf("step %ld epoch %.2f: test %.4f bits/dim over %d images (%s)%s\n", r->step,
           (double)r->step / r->steps_per_epoch, bpd, n, e, bpd < r->best ? ", best so far" : "");
    fflush(stdout);
    rnvp_error err;
    if (bpd < r->best) {
        r->best = bpd;
        if (tr_save_best(r, bpd, &err)) tr_say("best model not saved: %s", err.msg);
    }
    tr_write_samples(r);
    return 0;
}

/* ------------------------------------------------------------------ start-up
 * Each stage returns -1 to go on, or the exit status (after saying why and freeing the run). */

/* The options: the defaults; with --resume the checkpoint's model, state and options; then
 * --config; then the command line (the architecture stays the checkpoint's). */
static int setup_options(tr_run *r, int argc, char **argv)
{
    tr_opts *o = &r->o;
    tr_opts_defaults(o);
    int pr = tr_opts_parse_argv(o, argc, argv, 0, 0);
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
            tr_say("--resume: %s", err.msg);
            return EXIT_RUN;
        }
        r->am = calloc(r->m->nparams, sizeof(float));
        r->av = calloc(r->m->nparams, sizeof(float));
        if (!r->am || !r->av || tr_load_train_state(r, r->ckpt, &saved_opts)) {
            tr_free_run(r);
            return EXIT_RUN;
        }
        tr_opts_defaults(o);
        if (tr_opts_apply_json(o, saved_opts, r->ckpt, 0)) {
            json_decref(saved_opts);
            tr_free_run(r);
            return EXIT_RUN;
        }
        json_decref(saved_opts);
    }
    snprintf(o->config, sizeof o->config, "%s", config);
    if (*o->config) {
        char *txt = tr_read_text(o->config, 1 << 20);
        json_error_t je;
        json_t *cj = txt ? json_loads(txt, 0, &je) : NULL;
        free(txt);
        if (!cj || !json_is_object(cj)) {
            tr_say("%s: %s", o->config, !txt ? strerror(errno) : "not a JSON object of options");
            json_decref(cj);
            tr_free_run(r);
            return EXIT_USAGE;
        }
        int bad = tr_opts_apply_json(o, cj, o->config, resume);
        json_decref(cj);
        if (bad) { tr_free_run(r); return EXIT_USAGE; }
    }
    if (tr_opts_parse_argv(o, argc, argv, 1, resume)) { tr_free_run(r); return EXIT_USAGE; }
    snprintf(o->out, sizeof o->out, "%s", outdir);
    o->resume = resume;
    if (strcmp(o->flip, "on") && strcmp(o->flip, "off") && strcmp(o->flip, "auto")) {
        tr_say("--flip must be on, off or auto, not '%s'", o->flip);
        tr_free_run(r);
        return EXIT_USAGE;
    }
    const int sched = tr_lr_schedule_id(o->lr_schedule);
    if (sched < 0) {
        tr_say("--lr-schedule must be constant, cosine or linear, not '%s'", o->lr_schedule);
        tr_free_run(r);
        return EXIT_USAGE;
    }
    if (sched != TR_LR_CONSTANT && o->lr_min > o->lr) {
        tr_say("--lr-min %g is above --lr %g: the %s decay would raise the learning rate", o->lr_min, o->lr, o->lr_schedule);
        tr_free_run(r);
        return EXIT_USAGE;
    }
    return -1;
}

/* The training and test images (a held-out split when there is no test set) and the flips. */
static int setup_data(tr_run *r)
{
    const tr_opts *o = &r->o;
    rnvp_error err;
    if (tr_data_open(&r->train, &r->test, &r->kind, o->data, &err)) {
        tr_say("%s", err.msg);
        tr_free_run(r);
        return EXIT_RUN;
    }
    if (*o->test) {
        tr_data_free(&r->test);
        if (tr_data_load(&r->test, o->test, &err)) {
            tr_say("--test: %s", err.msg);
            tr_free_run(r);
            return EXIT_RUN;
        }
    }
    if (r->test.n == 0) {
        int k = (int)ceil(r->train.n * o->val_fraction);
        if (k < 1) k = 1;
        if (tr_data_split(&r->train, &r->test, k, &err)) {
            tr_say("%s", err.msg);
            tr_free_run(r);
            return EXIT_RUN;
        }
    }
    if (r->test.c != r->train.c || r->test.h != r->train.h || r->test.w != r->train.w) {
        tr_say("test images are %d x %d x %d, training images %d x %d x %d", r->test.w, r->test.h, r->test.c, r->train.w,
               r->train.h, r->train.c);
        tr_free_run(r);
        return EXIT_RUN;
    }
    r->flip = !strcmp(o->flip, "on") || (!strcmp(o->flip, "auto") && (r->kind == DATA_IDX_DIR || r->kind == DATA_CIFAR10));
    if (r->train.n < o->batch) {
        tr_say("%s: %d training images, fewer than one batch of %d", r->train.name, r->train.n, o->batch);
        tr_free_run(r);
        return EXIT_RUN;
    }
    return -1;
}

/* A new model from the options (or the checkpoint's, checked against the data), the threads,
 * the schedule, the buffers and the workspaces. */
static int setup_model(tr_run *r)
{
    const tr_opts *o = &r->o;
    rnvp_error err;
    if (!o->resume) {
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
        if (tr_parse_features(cfg.features, cfg.num_scales, o->features)) {
            tr_say("--features '%s': give one value per scale (%d), or one for all, each 1..4096", o->features, o->scales);
            tr_free_run(r);
            return EXIT_USAGE;
        }
        if (o->kernel % 2 == 0) {
            tr_say("--kernel must be odd, not %d", o->kernel);
            tr_free_run(r);
            return EXIT_USAGE;
        }
        if (rnvp_config_validate(&cfg, &err) || rnvpi_model_build(&r->m, &cfg, NULL, NULL, &err)) {
            tr_say("model: %s", err.msg);
            tr_free_run(r);
            return EXIT_USAGE;
        }
        tr_init_params(r->m, o->seed);
        r->am = calloc(r->m->nparams, sizeof(float));
        r->av = calloc(r->m->nparams, sizeof(float));
    } else {
        const rnvp_config *c = &r->m->cfg;
        if (c->height != r->train.h || c->width != r->train.w || c->channels != r->train.c) {
            tr_say("the checkpoint's model is %d x %d x %d, the data %d x %d x %d", c->width, c->height, c->channels,
                   r->train.w, r->train.h, r->train.c);
            tr_free_run(r);
            return EXIT_RUN;
        }
    }
    /* the machine's cores are shared by the processes on it: an even share each */
    const int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN), P = r->dist->size, rank = r->dist->rank;
    const int per = ncpu / r->dist->local_size;
    r->threads = o->threads > 0 ? o->threads : (per > 1 ? per : 1);
    rnvp_set_num_threads(r->threads);
    if (o->batch < P) {
        tr_say("--batch %d is smaller than the %d processes: each needs at least one image", o->batch, P);
        tr_free_run(r);
        return EXIT_USAGE;
    }
    r->b0 = (int)((long)o->batch * rank / P);
    r->nb = (int)((long)o->batch * (rank + 1) / P) - r->b0;
    r->steps_per_epoch = r->train.n / o->batch;
    r->total_steps = o->steps > 0 ? o->steps : o->epochs * r->steps_per_epoch;
    r->grad = malloc(sizeof(float) * r->m->nparams);
    r->xt = malloc(sizeof(float) * (size_t)r->nb * r->m->D);
    r->perm = malloc(sizeof(int) * (size_t)r->train.n);
    r->perm_epoch = -1;
    if (!r->grad || !r->xt || !r->perm || !r->am || !r->av) {
        tr_say("out of memory");
        tr_free_run(r);
        return EXIT_RUN;
    }
    if (tr_ws_create(&r->ws, r->m, r->nb, &err) || rnvp_ctx_create(&r->ectx, r->m, 100, &err)) {
        tr_say("workspace: %s", err.msg);
        tr_free_run(r);
        return EXIT_RUN;
    }
    tr_ws_set_comm(r->ws, &r->dist->comm);
    /* rank 0's parameters, Adam moments and step for every process (they agree already when
     * all read the same checkpoint or seed; this makes it so) */
    tr_dist_bcast(r->dist, r->m->params, r->m->nparams);
    tr_dist_bcast(r->dist, r->am, r->m->nparams);
    tr_dist_bcast(r->dist, r->av, r->m->nparams);
    double st[3] = {(double)r->step, r->best, r->train_seconds};
    tr_dist_bcast_d(r->dist, st, 3);
    r->step = (long)st[0];
    r->best = st[1];
    r->train_seconds = st[2];
    return -1;
}

static int setup_out_files(tr_run *r, int *lock_fd);

/* The output folder: created and locked (*lock_fd), a killed run's temporary files removed,
 * the metrics of a resumed run cut back to its step; then the stop signals are caught. */
static int setup_out(tr_run *r, int *lock_fd)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int fail = 0;
    if (r->dist->rank == 0) fail = setup_out_files(r, lock_fd);
    if (tr_dist_any(r->dist, fail)) {   /* every process stops when rank 0 cannot write */
        tr_free_run(r);
        return EXIT_RUN;
    }
    return -1;
}

/* rank 0's part of setup_out: 0, or -1 after saying why */
static int setup_out_files(tr_run *r, int *lock_fd)
{
    const char *outdir = r->o.out;
    if (mkdir(outdir, 0755) && errno != EEXIST) {
        tr_say("%s: %s", outdir, strerror(errno));
        return -1;
    }
    int locked;
    *lock_fd = tr_lock_out(outdir, &locked);
    if (*lock_fd < 0) return -1;
    if (locked) tr_remove_stale_tmp(outdir);
    if (r->o.resume) tr_truncate_metrics(r->metrics, r->step);
    else remove(r->metrics);
    return 0;
}

/* the learning-rate schedule in one line: warm-up, then constant or the decay's steps */
static void print_schedule(const tr_run *r)
{
    const tr_adam a = tr_run_adam(r);
    const long s = a.decay_start > a.warmup ? a.decay_start : a.warmup;
    char wu[64] = "";
    if (a.warmup > 0) snprintf(wu, sizeof wu, ", linear warm-up over steps 1..%ld", a.warmup);
    if (a.schedule == TR_LR_CONSTANT) printf("learning rate %g%s, then constant\n", a.lr, wu);
    else if (s >= a.total)
        printf("learning rate %g%s; no %s decay: it would start after step %ld, the run ends at step %ld\n", a.lr, wu,
               r->o.lr_schedule, s, a.total);
    else
        printf("learning rate %g%s; %s decay over steps %ld..%ld to %g (step %ld: %.4g)\n", a.lr, wu, r->o.lr_schedule, s + 1,
               a.total, a.lr_min, r->step + 1, tr_lr(&a, r->step + 1));
}

static void print_start(const tr_run *r)
{
    const tr_opts *o = &r->o;
    char cfgs[1024];
    rnvp_config_to_json(&r->m->cfg, cfgs, sizeof cfgs);
    printf("realnvp-train %s: %s %s (%d train, %d test images of %d x %d x %d), flips %s\n", RNVP_VERSION,
           tr_data_kind_name(r->kind), r->train.name, r->train.n, r->test.n, r->train.w, r->train.h, r->train.c,
           r->flip ? "on" : "off");
    printf("model %s: %zu parameters, %.3f GFLOP/image forward; batch %d, %d threads, %ld steps/epoch, %s step %ld of %ld\n",
           cfgs, r->m->nparams, rnvp_model_flops(r->m) / 1e9, o->batch, r->threads, r->steps_per_epoch,
           o->resume ? "resuming at" : "starting at", r->step, r->total_steps);
    print_schedule(r);
    if (r->dist->size > 1)
        printf("%d processes (MPI), %d images of each batch per process\n", r->dist->size, r->nb);
    printf("workspace %.1f MB, out %s\n", (tr_ws_bytes(r->ws) + rnvp_ctx_bytes(r->ectx)) / 1e6, o->out);
    fflush(stdout);
}

/* ------------------------------------------------------------------ the loop */

/* the progress line: a bar, step, epoch, speed, losses, elapsed time and ETA */
static void print_progress(const tr_run *r, double t, double ips, double train_bpd, int tty)
{
    char eta[32], el[32];
    fmt_dur(eta, sizeof eta, (r->total_steps - r->step) * r->o.batch / (ips > 0 ? ips : 1e-9));
    fmt_dur(el, sizeof el, r->train_seconds + t - r->t_start_run);
    const double ep = (double)r->step / r->steps_per_epoch;
    const int w = 20, fill = (int)(w * (double)r->step / r->total_steps);
    char bar[32];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    const tr_adam a = tr_run_adam(r);
    fprintf(stderr, "%s[%s] step %ld/%ld epoch %.2f  %.1f img/s  train %.4f bpd  test %.4f  lr %.3g  elapsed %s  ETA %s%s",
            tty ? "\r" : "", bar, r->step, r->total_steps, ep, ips, train_bpd, r->last_test, tr_lr(&a, r->step), el, eta,
            tty ? "\033[K" : "\n");
    fflush(stderr);
}

/* Rank 0's work after a step: progress, metrics, evaluations, checkpoints. 0, or EXIT_RUN when
 * an evaluation failed. */
static int after_step(tr_run *r, double loss, double *last_save, double *last_print)
{
    static double win_loss = 0, win_t0 = -1;
    static long win_n = 0, win_start = -1;
    const tr_opts *o = &r->o;
    rnvp_error err;
    const int tty = isatty(2);
    if (win_t0 < 0) {
        win_t0 = r->t_start_run;
        win_start = r->step - 1;
    }
    if (isfinite(loss)) {
        win_loss += loss;
        win_n++;
    }
    const double t = tr_now();
    const double ips = (double)(r->step - win_start) * o->batch / (t - win_t0 + 1e-9);
    if (t - *last_print > (tty ? 0.5 : 60) || r->step == r->total_steps) {
        print_progress(r, t, ips, win_n ? win_loss / win_n : NAN, tty);
        *last_print = t;
    }
    if (r->step % o->log_every == 0) {
        tr_log_metrics(r, win_n ? win_loss / win_n : NAN, NAN, ips);
        win_loss = 0;
        win_n = 0;
        win_start = r->step;
        win_t0 = tr_now();
    }
    int rc = 0, eval_now = o->eval_every > 0 && r->step % o->eval_every == 0;
    if (eval_now) {
        if (tty) fputc('\n', stderr);
        double tb;
        if (do_eval(r, &tb)) rc = EXIT_RUN;
        else if (isfinite(tb)) {
            tr_log_metrics(r, NAN, tb, ips);
            tr_write_curve(r->metrics, r->curve);
        }
        win_t0 = tr_now();
        win_start = r->step;
    }
    if (rc == 0 && (eval_now || tr_now() - *last_save > o->save_every)) {
        if (tr_save_checkpoint(r, &err)) tr_say("checkpoint not written (the previous one is intact; retrying later): %s", err.msg);
        *last_save = tr_now();
    }
    return rc;
}

/* Steps until the last one or a stop signal (on any process), with rank 0's progress, metrics,
 * evaluations and checkpoints; then the final evaluation. Returns 0 or EXIT_RUN; *stopped: 1
 * when a signal ended the run early. */
static int train_loop(tr_run *r, int *stopped)
{
    const tr_opts *o = &r->o;
    const int rank0 = r->dist->rank == 0;
    r->t_start_run = tr_now();
    double last_save = tr_now(), last_print = 0;
    long nan_steps = 0;
    int rc = 0;
    *stopped = 0;
    while (r->step < r->total_steps) {
        /* every process stops at the same step: a signal on any of them, or rank 0's failure */
        if (tr_dist_any(r->dist, g_stop != 0 || rc != 0)) {
            *stopped = rc == 0;
            break;
        }
        double loss = train_step(r);   /* the global batch's loss: the same on every process */
        if (!isfinite(loss) && ++nan_steps > 20) {
            if (rank0)
                tr_say("the loss is not finite for 20 steps at step %ld: stopping (lower --lr or raise --warmup); the last checkpoint is intact",
                       r->step);
            rc = EXIT_RUN;
            break;
        }
        if (rank0) rc = after_step(r, loss, &last_save, &last_print);
    }
    if (rank0 && isatty(2)) fputc('\n', stderr);
    if (rank0 && !*stopped && !g_stop && rc == 0 && (o->eval_every == 0 || r->step % o->eval_every != 0)) {
        double tb;
        if (do_eval(r, &tb)) rc = EXIT_RUN;
        else if (isfinite(tb)) {
            tr_log_metrics(r, NAN, tb, 0);
            tr_write_curve(r->metrics, r->curve);
        }
    }
    return rc;
}

int main(int argc, char **argv)
{
    rnvp_blas_select_core(argv);
    tr_dist D;
    if (tr_dist_init(&D, &argc, &argv)) return EXIT_USAGE;
    tr_run R;
    memset(&R, 0, sizeof R);
    tr_run *r = &R;
    r->dist = &D;
    int st, lock_fd = -1;
    if ((st = setup_options(r, argc, argv)) >= 0 || (st = setup_data(r)) >= 0 || (st = setup_model(r)) >= 0 ||
        (st = setup_out(r, &lock_fd)) >= 0) {
        /* a start-up error on one process (each checks the same options and files) ends them all */
        if (D.size > 1 && st != 0) tr_dist_abort(&D, st);
        tr_dist_finalize(&D);
        return st;
    }
    const int rank0 = D.rank == 0;
    if (rank0) print_start(r);
    int stopped;
    int rc = train_loop(r, &stopped);
    rnvp_error err;
    if (!rank0) {
        /* rank 0 writes the checkpoint */
    } else if (tr_save_checkpoint(r, &err)) {
        tr_say("final checkpoint not written: %s (the previous one is intact)", err.msg);
        rc = EXIT_RUN;
    } else {
        const char *how = !stopped ? "done" : g_stop == SIGINT ? "interrupted (SIGINT)" : g_stop == SIGTERM ? "terminated (SIGTERM)"
                                                                                         : "stopped (a signal to another process)";
        printf("%s at step %ld: %s\n", how, r->step, r->ckpt);
    }
    if (rank0) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("peak memory %.1f MB; best test bits/dim %.4f\n", ru.ru_maxrss / 1024.0, r->best);
    }
    tr_free_run(r);
    if (lock_fd >= 0) close(lock_fd);   /* releases the output folder */
    tr_dist_finalize(&D);
    return rc;
}
