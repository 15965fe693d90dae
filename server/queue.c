/* queue.c: the dynamic batching queue: one bounded FIFO of single-image jobs and one worker
 * thread that merges jobs of the same operation into batches on the core. Leaves out HTTP (the
 * owner of a group is told through its done() callback) and multiple workers (one worker uses
 * every BLAS thread; on a small machine that beats two half-size ones).
 *
 * Batching rule: the oldest waiting job picks the operation; the worker runs as soon as
 * max_batch jobs of that operation wait, or when the oldest has waited max_delay_us, or at
 * once while shutting down. Jobs that waited longer than timeout_ms are dropped (expired). */
#include "server.h"

#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct job {
    srv_group *g;
    int index;   /* job index in the group */
} job;

struct srv_queue {
    const rnvp_model *m;
    srv_metrics *metrics;
    int cap, max_batch;
    double delay, timeout;   /* seconds */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *jobs;        /* (cap) waiting jobs, oldest first */
    int count;
    int count_op[OP_COUNT];
    int stopping;
    pthread_t thread;
    int started;
    /* the worker's own memory, sized for max_batch at creation */
    rnvp_ctx *ctx;
    job *batch;       /* (max_batch) */
    srv_group **done; /* (cap) groups finished in one step */
    uint8_t *px;      /* (B, C, H, W) */
    float *noise;     /* (B, D) */
    float *z;         /* (B, D) */
    uint8_t *out;     /* (B, C, H, W) */
    double *lp, *bpd; /* (B) */
    /* giving freed memory back to the system (trim_now) */
    double last_trim, last_batch;
    int dirty;        /* batches run since the last trim */
};

/* glibc gives back only the free memory at the top of each arena; request bodies, replies and
 * libmicrohttpd's connection pools of up to a few hundred connections at once leave free pages
 * in the middle, which stayed resident, so the resident size followed the highest concurrency
 * seen so far (docs/reliability.md, soak). malloc_trim(0) releases every whole free page of
 * every arena (madvise), but it holds each arena's lock while it walks it, and on the loaded
 * 2-core machine one call took 76 ms on average (up to 620 ms) when made every second under
 * load. So the worker calls it, only after work was done since the last call: once the queue
 * has been empty for TRIM_IDLE_S (an idle server ends trimmed), and under constant load between
 * two batches at most every TRIM_BUSY_S, which bounds the high-water mark to the last such
 * period at a cost of well under 1% of the worker's time. */
#define TRIM_IDLE_S 1.0
#define TRIM_BUSY_S 20.0

static void trim_now(srv_queue *q, double now)
{
    q->last_trim = now;
    q->dirty = 0;
#ifdef __GLIBC__
    pthread_mutex_unlock(&q->mu);
    malloc_trim(0);
    pthread_mutex_lock(&q->mu);
#endif
}

static void abs_time(struct timespec *ts, double t_mono)
{
    ts->tv_sec = (time_t)t_mono;
    ts->tv_nsec = (long)((t_mono - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) ts->tv_sec++, ts->tv_nsec -= 1000000000L;
    if (ts->tv_nsec < 0) ts->tv_nsec = 0;
}

/* removes jobs that waited too long; finished groups are appended to q->done[*nd] */
static void expire(srv_queue *q, double now, int *nd)
{
    int w = 0;
    for (int r = 0; r < q->count; r++) {
        job j = q->jobs[r];
        if (now - j.g->t_enqueue > q->timeout) {
            j.g->expired++;
            q->count_op[j.g->op]--;
            srv_metrics_rejected(q->metrics, "timeout");
            if (--j.g->pending == 0) q->done[(*nd)++] = j.g;
        } else {
            q->jobs[w++] = j;
        }
    }
    q->count = w;
}

/* fills the batch inputs; returns the number of images */
static void prepare(srv_queue *q, enum srv_op op, int nb)
{
    size_t D = (size_t)rnvp_model_dim(q->m);
    for (int b = 0; b < nb; b++) {
        srv_group *g = q->batch[b].g;
        int i = q->batch[b].index;
        switch (op) {
        case OP_LOG_PROB:
        case OP_ENCODE:
            memcpy(q->px + b * D, g->pixels + (size_t)i * D, D);
            break;
        case OP_LOG_PROB_NOISE:
            memcpy(q->px + b * D, g->pixels + (size_t)(i / g->draws) * D, D);
            srv_noise(q->noise + b * D, (int)D, g->seed, i / g->draws, i % g->draws);
            break;
        case OP_DECODE:
            if (g->sample && !g->sampled) {
                rnvp_sample_latents(g->z, g->n, (int)D, g->temp, g->seed);
                g->sampled = 1;
            }
            memcpy(q->z + b * D, g->z + (size_t)i * D, D * sizeof(float));
            break;
        default:
            break;
        }
    }
}

static enum rnvp_status compute(srv_queue *q, enum srv_op op, int nb, rnvp_error *e)
{
    switch (op) {
    case OP_LOG_PROB: return rnvp_log_prob(q->ctx, q->lp, q->bpd, q->px, NULL, nb, e);
    case OP_LOG_PROB_NOISE: return rnvp_log_prob(q->ctx, q->lp, q->bpd, q->px, q->noise, nb, e);
    case OP_ENCODE: return rnvp_encode(q->ctx, q->z, q->lp, q->px, NULL, nb, e);
    case OP_DECODE: return rnvp_decode(q->ctx, q->out, q->z, nb, e);
    default: return RNVP_ERR_ARG;
    }
}

/* copies the batch results back; called with the lock held */
static void finish(srv_queue *q, enum srv_op op, int nb, enum rnvp_status st, const rnvp_error *e, double t0,
                   double t1, int *nd)
{
    size_t D = (size_t)rnvp_model_dim(q->m);
    for (int b = 0; b < nb; b++) {
        srv_group *g = q->batch[b].g;
        int i = q->batch[b].index;
        if (st != RNVP_OK) {
            if (!g->failed++) snprintf(g->err, sizeof g->err, "%s", e->msg);
        } else {
            switch (op) {
            case OP_LOG_PROB:
            case OP_LOG_PROB_NOISE:
                g->log_prob[i] = q->lp[b];
                g->bits_per_dim[i] = q->bpd[b];
                break;
            case OP_ENCODE:
                g->log_prob[i] = q->lp[b];
                memcpy(g->z + (size_t)i * D, q->z + b * D, D * sizeof(float));
                break;
            case OP_DECODE:
                memcpy(g->out_pixels + (size_t)i * D, q->out + b * D, D);
                break;
            default:
                break;
            }
        }
        if (nb > g->max_batch_seen) g->max_batch_seen = nb;
        if (g->t_first_start == 0) g->t_first_start = t0;
        g->compute = t1 - g->t_first_start;
        if (--g->pending == 0) q->done[(*nd)++] = g;
    }
}

static void *worker(void *arg)
{
    srv_queue *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        int nd = 0;
        double now = srv_now();
        expire(q, now, &nd);
        if (nd) {
            pthread_mutex_unlock(&q->mu);
            for (int i = 0; i < nd; i++) q->done[i]->done(q->done[i], q->done[i]->done_arg);
            pthread_mutex_lock(&q->mu);
            continue;
        }
        if (q->dirty && (now - q->last_trim >= TRIM_BUSY_S || (q->count == 0 && now - q->last_batch >= TRIM_IDLE_S))) {
            trim_now(q, now);
            continue;
        }
        if (q->count == 0) {
            if (q->stopping) break;
            if (q->dirty) {   /* trim if nothing arrives within TRIM_IDLE_S */
                struct timespec ts;
                abs_time(&ts, q->last_batch + TRIM_IDLE_S);
                pthread_cond_timedwait(&q->cv, &q->mu, &ts);
            } else {
                pthread_cond_wait(&q->cv, &q->mu);
            }
            continue;
        }
        enum srv_op op = q->jobs[0].g->op;
        double deadline = q->jobs[0].g->t_enqueue + q->delay;
        if (q->count_op[op] < q->max_batch && now < deadline && !q->stopping) {
            struct timespec ts;
            abs_time(&ts, deadline);
            pthread_cond_timedwait(&q->cv, &q->mu, &ts);
            continue;
        }
        /* take up to max_batch jobs of op, oldest first */
        int nb = 0, w = 0;
        for (int r = 0; r < q->count; r++) {
            if (nb < q->max_batch && q->jobs[r].g->op == op) q->batch[nb++] = q->jobs[r];
            else q->jobs[w++] = q->jobs[r];
        }
        q->count = w;
        q->count_op[op] -= nb;
        pthread_mutex_unlock(&q->mu);

        double t0 = srv_now();
        for (int b = 0; b < nb; b++) {
            double wt = t0 - q->batch[b].g->t_enqueue;
            srv_metrics_wait(q->metrics, wt);
            /* max_wait is only read by the owner after done(); only this thread writes it */
            if (wt > q->batch[b].g->max_wait) q->batch[b].g->max_wait = wt;
        }
        prepare(q, op, nb);
        rnvp_error e = {0};
        enum rnvp_status st = compute(q, op, nb, &e);
        double t1 = srv_now();
        srv_metrics_batch(q->metrics, op, nb, t1 - t0);

        pthread_mutex_lock(&q->mu);
        q->dirty++;
        q->last_batch = t1;
        finish(q, op, nb, st, &e, t0, t1, &nd);
        pthread_mutex_unlock(&q->mu);
        for (int i = 0; i < nd; i++) q->done[i]->done(q->done[i], q->done[i]->done_arg);
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

srv_queue *srv_queue_create(const rnvp_model *m, int capacity, int max_batch, long max_delay_us, long timeout_ms,
                            srv_metrics *metrics, rnvp_error *err)
{
    srv_queue *q = calloc(1, sizeof *q);
    if (!q) goto nomem;
    q->m = m;
    q->metrics = metrics;
    q->cap = capacity;
    q->max_batch = max_batch;
    q->delay = (double)max_delay_us * 1e-6;
    q->timeout = (double)timeout_ms * 1e-3;
    size_t D = (size_t)rnvp_model_dim(m), B = (size_t)max_batch;
    q->jobs = malloc((size_t)capacity * sizeof *q->jobs);
    q->done = malloc((size_t)(capacity + max_batch) * sizeof *q->done);
    q->batch = malloc(B * sizeof *q->batch);
    q->px = malloc(B * D);
    q->out = malloc(B * D);
    q->noise = malloc(B * D * sizeof(float));
    q->z = malloc(B * D * sizeof(float));
    q->lp = malloc(B * sizeof(double));
    q->bpd = malloc(B * sizeof(double));
    if (!q->jobs || !q->done || !q->batch || !q->px || !q->out || !q->noise || !q->z || !q->lp || !q->bpd) goto nomem_free;
    if (rnvp_ctx_create(&q->ctx, m, max_batch, err)) goto fail;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&q->mu, NULL);
    int rc = pthread_create(&q->thread, NULL, worker, q);
    if (rc) {
        err->status = RNVP_ERR_NOMEM;
        snprintf(err->msg, sizeof err->msg, "cannot start the compute thread: %s", strerror(rc));
        pthread_cond_destroy(&q->cv);
        pthread_mutex_destroy(&q->mu);
        goto fail;
    }
    q->started = 1;
    return q;
nomem_free:
    if (err) {
        err->status = RNVP_ERR_NOMEM;
        snprintf(err->msg, sizeof err->msg, "out of memory for the batching queue");
    }
fail:
    rnvp_ctx_free(q->ctx);
    free(q->jobs), free(q->done), free(q->batch), free(q->px), free(q->out);
    free(q->noise), free(q->z), free(q->lp), free(q->bpd);
    free(q);
    return NULL;
nomem:
    if (err) {
        err->status = RNVP_ERR_NOMEM;
        snprintf(err->msg, sizeof err->msg, "out of memory for the batching queue");
    }
    return NULL;
}

int srv_queue_push(srv_queue *q, srv_group *g, void (*before)(void *), void *arg)
{
    pthread_mutex_lock(&q->mu);
    if (q->count + g->n > q->cap || q->stopping) {
        pthread_mutex_unlock(&q->mu);
        return -1;
    }
    if (before) before(arg);
    g->t_enqueue = srv_now();
    g->pending = g->n;
    g->expired = g->failed = 0;
    g->max_batch_seen = 0;
    g->max_wait = g->compute = g->t_first_start = 0;
    g->sampled = 0;
    for (int i = 0; i < g->n; i++) q->jobs[q->count++] = (job){g, i};
    q->count_op[g->op] += g->n;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

int srv_queue_depth(srv_queue *q)
{
    pthread_mutex_lock(&q->mu);
    int n = q->count;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void srv_queue_free(srv_queue *q)
{
    if (!q) return;
    pthread_mutex_lock(&q->mu);
    q->stopping = 1;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    pthread_join(q->thread, NULL);
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    rnvp_ctx_free(q->ctx);
    free(q->jobs), free(q->done), free(q->batch), free(q->px), free(q->out);
    free(q->noise), free(q->z), free(q->lp), free(q->bpd);
    free(q);
}
