/* run.c: the state of one training run and its files in --out: the resumable checkpoint and the
 * best model, metrics.jsonl, curve.svg, sample grids, the folder's lock and stale temporary
 * files. Leaves out the options (options.c) and the loop itself (main.c). */
#include "trainer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

double tr_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

char *tr_read_text(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *b = malloc(max + 1);
    size_t n = b ? fread(b, 1, max, f) : 0;
    fclose(f);
    if (b) b[n] = 0;
    return b;
}

tr_adam tr_run_adam(const tr_run *r)
{
    const tr_opts *o = &r->o;
    const int sched = tr_lr_schedule_id(o->lr_schedule);
    return (tr_adam){.lr = o->lr, .beta1 = o->beta1, .beta2 = o->beta2, .eps = o->eps, .l2 = o->l2, .clip = o->clip,
                     .warmup = o->warmup, .schedule = sched > 0 ? sched : TR_LR_CONSTANT, .decay_start = o->decay_start,
                     .total = r->total_steps, .lr_min = o->lr_min};
}

/* ------------------------------------------------------------------ checkpoints */

enum rnvp_status tr_save_checkpoint(tr_run *r, rnvp_error *err)
{
    rnvp_model *m = r->m;
    char cfg[1024], state[512];
    rnvp_config_to_json(&m->cfg, cfg, sizeof cfg);
    json_t *oj = tr_opts_json(&r->o);
    char *ojs = json_dumps(oj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(oj);
    snprintf(state, sizeof state,
             "{\"step\":%ld,\"epoch\":%.6f,\"best_test_bits_per_dim\":%.17g,\"train_seconds\":%.3f,\"seed\":\"%llu\"}",
             r->step, (double)r->step / r->steps_per_epoch, isfinite(r->best) ? r->best : -1.0,
             r->train_seconds + (tr_now() - r->t_start_run), r->o.seed);
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
int tr_load_train_state(tr_run *r, const char *path, json_t **opts_out)
{
    size_t cap = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        tr_say("%s: %s", path, strerror(errno));
        return -1;
    }
    unsigned char h8[8];
    int ok = fread(h8, 1, 8, f) == 8;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | h8[i];
    char *hdr = ok && hl < (1u << 26) ? malloc(hl + 1) : NULL;
    if (!hdr || fread(hdr, 1, hl, f) != hl) {
        tr_say("%s: cannot read the header", path);
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
        tr_say("%s: no train_state/train_options metadata: not a resumable checkpoint (best.safetensors is inference-only)", path);
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
            tr_say("%s: tensor %s missing or of the wrong shape", path, names[k]);
            rc = -1;
            break;
        }
        json_int_t b = json_integer_value(json_array_get(off, 0)), en = json_integer_value(json_array_get(off, 1));
        if (en - b != (json_int_t)(r->m->nparams * 4) || fseek(f, (long)(8 + hl + (uint64_t)b), SEEK_SET) ||
            fread(dst[k], 4, r->m->nparams, f) != r->m->nparams) {
            tr_say("%s: tensor %s could not be read", path, names[k]);
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

enum rnvp_status tr_save_best(tr_run *r, double bpd, rnvp_error *err)
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
void tr_truncate_metrics(const char *path, long upto)
{
    char *txt = tr_read_text(path, 64u << 20);
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
int tr_lock_out(const char *outdir, int *held)
{
    *held = 0;
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", outdir, LOCK_NAME);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        tr_say("%s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        if (errno == EWOULDBLOCK) {
            char buf[32] = "";
            long pid = pread(fd, buf, sizeof buf - 1, 0) > 0 ? atol(buf) : 0;
            char who[48] = "";
            if (pid > 0) snprintf(who, sizeof who, " (pid %ld)", pid);
            tr_say("%s is in use by another realnvp-train%s: one trainer per output folder; give another --out or stop "
                "that run (lock file %s)", outdir, who, path);
            close(fd);
            return -1;
        }
        tr_say("warning: cannot lock %s (%s): a second trainer on this folder would not be refused, and stale temporary "
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
void tr_remove_stale_tmp(const char *outdir)
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
            if (!failed++) tr_say("%s: stale temporary file not removed: %s", path, strerror(errno));
            continue;
        }
        if (used < sizeof names - 1)
            used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", n ? ", " : "", e->d_name);
        n++;
    }
    closedir(d);
    if (used >= sizeof names - 1) snprintf(names + sizeof names - 5, 5, "...");
    if (n) tr_say("removed %d stale temporary file%s left in %s by a killed run: %s", n, n > 1 ? "s" : "", outdir, names);
}

/* ------------------------------------------------------------------ metrics and pictures */

void tr_log_metrics(tr_run *r, double train_bpd, double test_bpd, double ips)
{
    FILE *f = fopen(r->metrics, "a");
    if (!f) {
        tr_say("%s: %s (metrics not logged)", r->metrics, strerror(errno));
        return;
    }
    const tr_adam a = tr_run_adam(r);
    const double lr = tr_lr(&a, r->step);   /* the last step's */
    fprintf(f, "{\"step\":%ld,\"epoch\":%.4f", r->step, (double)r->step / r->steps_per_epoch);
    if (isfinite(train_bpd)) fprintf(f, ",\"train_bpd\":%.6f", train_bpd);
    if (isfinite(test_bpd)) fprintf(f, ",\"test_bpd\":%.6f", test_bpd);
    fprintf(f, ",\"images_per_s\":%.2f,\"lr\":%.6g,\"time\":%.1f}\n", ips, lr, r->train_seconds + tr_now() - r->t_start_run);
    if (fclose(f)) tr_say("%s: %s", r->metrics, strerror(errno));
}

/* The training curve as SVG from metrics.jsonl: train (running) and test bits/dim against step. */
void tr_write_curve(const char *metrics, const char *out)
{
    char *txt = tr_read_text(metrics, 64u << 20);
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

void tr_write_samples(tr_run *r)
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
            tr_say("sample grid %s: %s", path, err.msg);
    }
    free(px);
}

void tr_free_run(tr_run *r)
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
