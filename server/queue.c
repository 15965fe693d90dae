/* queue.c: the dynamic batching queues: one per loaded model version, each holding its waiting
 * requests (groups of single-image jobs) per client, and one worker thread (the scheduler's) that
 * serves the queues in turn and merges jobs of the same operation into batches on that model's
 * context. Leaves out HTTP (the owner of a group is told through its done() callback) and multiple
 * workers (one worker uses every BLAS thread; on a small machine that beats two half-size ones).
 *
 * Batching rule: the queues with waiting work take turns, one batch each (models are served
 * fairly, whatever their traffic). Within a queue the client whose turn it is picks the operation
 * (its oldest group's); the worker takes jobs of that operation round-robin between clients, one
 * per client per turn, up to max_batch, as soon as it is free (or, with max_delay_us > 0, once
 * max_batch jobs of that operation wait or the oldest has waited max_delay_us). Before a group's
 * first job of a batch is taken its client's socket is polled, and so are every waiting group's
 * when a push does not fit; a client that has gone has its waiting jobs dropped (cancelled). Jobs
 * that waited longer than timeout_ms are dropped (expired). The capacity (images waiting) is the
 * server's, shared by every queue. */
#include "server.h"

#include <errno.h>
#include <poll.h>
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

typedef struct client {
    uint64_t key;
    srv_group *head, *tail;   /* groups with jobs not yet taken, oldest first */
} client;

struct srv_queue {
    srv_sched *sc;
    const rnvp_model *m;
    int max_batch;
    double delay, timeout;   /* seconds */
    client *clients;  /* (sc->cap) clients with waiting jobs, in round-robin order */
    int nclients;
    int rr;           /* the client whose turn it is */
    int count;        /* jobs waiting */
    int count_op[OP_COUNT];
    struct srv_queue *prev_q, *next_q;   /* the scheduler's list */
    /* the worker's memory for this model, sized for max_batch at creation */
    rnvp_ctx *ctx;
    job *batch;       /* (max_batch) */
    uint8_t *px;      /* (B, C, H, W) */
    float *noise;     /* (B, D) */
    float *z;         /* (B, D) */
    uint8_t *out;     /* (B, C, H, W) */
    double *lp, *bpd; /* (B) */
};

struct srv_sched {
    srv_metrics *metrics;
    int cap, max_batch;
    pthread_mutex_t mu;   /* guards every queue's waiting jobs and the list */
    pthread_cond_t cv;
    srv_queue *queues;    /* every queue, in turn order */
    srv_queue *turn;      /* the queue whose turn it is (NULL: the first) */
    int count;            /* jobs waiting in all queues */
    int stopping, closed, cancel_all;
    pthread_t thread;
    srv_group **done;     /* (cap + max_batch) groups finished in one step */
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

static void trim_now(srv_sched *sc, double now)
{
    sc->last_trim = now;
    sc->dirty = 0;
#ifdef __GLIBC__
    pthread_mutex_unlock(&sc->mu);
    malloc_trim(0);
    pthread_mutex_lock(&sc->mu);
#endif
}

static void abs_time(struct timespec *ts, double t_mono)
{
    ts->tv_sec = (time_t)t_mono;
    ts->tv_nsec = (long)((t_mono - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000L) ts->tv_sec++, ts->tv_nsec -= 1000000000L;
    if (ts->tv_nsec < 0) ts->tv_nsec = 0;
}

/* 1 while the client of g is still connected: no hang-up, error or end of its input. A client
 * that half-closes (shutdown(SHUT_WR)) after its request counts as gone, as nginx counts it. */
static int client_alive(const srv_group *g)
{
    if (g->fd < 0) return 1;
    struct pollfd p = {.fd = g->fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 1;
    return !(p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL));
}

/* removes client k (its list is empty) keeping the round-robin order */
static void drop_client(srv_queue *q, int k)
{
    memmove(q->clients + k, q->clients + k + 1, (size_t)(q->nclients - k - 1) * sizeof *q->clients);
    q->nclients--;
    if (q->rr > k) q->rr--;
    if (q->rr >= q->nclients) q->rr = 0;
}

/* Drops the jobs of g not yet taken, counting them in *counter; unlinks g from client c (prev:
 * the group before it, or NULL). Returns 1 when g has no job left (it is finished). */
static int drop_rest(srv_queue *q, client *c, srv_group *prev, srv_group *g, int *counter)
{
    int left = g->n - g->taken;
    *counter += left;
    g->taken = g->n;
    q->count -= left;
    q->sc->count -= left;
    q->count_op[g->op] -= left;
    if (prev) prev->next = g->next;
    else c->head = g->next;
    if (c->tail == g) c->tail = prev;
    g->next = NULL;
    return (g->pending -= left) == 0;
}

/* removes jobs that waited too long (or every job under cancel_all); finished groups are
 * appended to sc->done[*nd] */
static void expire(srv_queue *q, double now, int *nd)
{
    srv_sched *sc = q->sc;
    for (int k = 0; k < q->nclients;) {
        client *c = &q->clients[k];
        srv_group *prev = NULL;
        for (srv_group *g = c->head, *nx; g; g = nx) {
            nx = g->next;
            int before_e = g->expired;
            int fin;
            if (sc->cancel_all) fin = drop_rest(q, c, prev, g, &g->shutdown);
            else if (now - g->t_enqueue > q->timeout) fin = drop_rest(q, c, prev, g, &g->expired);
            else {
                prev = g;
                continue;
            }
            if (fin) sc->done[(*nd)++] = g;
            srv_metrics_rejected(sc->metrics, "timeout", g->expired - before_e);
        }
        if (!c->head) drop_client(q, k);
        else k++;
    }
}

/* Drops the waiting jobs of every group whose client has gone and none of whose jobs is being
 * computed; the groups that finish so are linked into *gone through their next pointers. */
static void sweep_gone(srv_queue *q, srv_group **gone)
{
    for (int k = 0; k < q->nclients;) {
        client *c = &q->clients[k];
        srv_group *prev = NULL;
        for (srv_group *g = c->head, *nx; g; g = nx) {
            nx = g->next;
            if (g->taken != g->n - g->pending || client_alive(g)) {
                prev = g;
                continue;
            }
            int before = g->cancelled;
            if (drop_rest(q, c, prev, g, &g->cancelled)) {
                g->next = *gone;
                *gone = g;
            }
            srv_metrics_rejected(q->sc->metrics, "cancelled", g->cancelled - before);
        }
        if (!c->head) drop_client(q, k);
        else k++;
    }
}

/* the oldest group of client c with jobs of op left, and the group before it */
static srv_group *first_of(client *c, enum srv_op op, srv_group **prev)
{
    *prev = NULL;
    for (srv_group *g = c->head; g; *prev = g, g = g->next)
        if (g->op == op) return g;
    return NULL;
}

/* Takes up to max_batch jobs of op into q->batch, round-robin between clients from q->rr;
 * groups whose client has gone are dropped (sc->done[*nd]). Returns the batch size. */
static int take_batch(srv_queue *q, enum srv_op op, int *nd)
{
    int nb = 0, start = q->rr, progress = 1;
    while (nb < q->max_batch && progress && q->nclients) {
        progress = 0;
        for (int i = 0; i < q->nclients && nb < q->max_batch; i++) {
            client *c = &q->clients[(start + i) % q->nclients];
            srv_group *prev, *g = first_of(c, op, &prev);
            if (!g) continue;
            if (g->taken == g->n - g->pending && !client_alive(g)) {   /* none of its jobs runs yet */
                int before = g->cancelled;
                if (drop_rest(q, c, prev, g, &g->cancelled)) q->sc->done[(*nd)++] = g;
                srv_metrics_rejected(q->sc->metrics, "cancelled", g->cancelled - before);
                progress = 1;
                continue;
            }
            q->batch[nb++] = (job){g, g->taken++};
            q->count--;
            q->sc->count--;
            q->count_op[op]--;
            progress = 1;
            if (g->taken == g->n) {   /* every job taken: off the client's list */
                if (prev) prev->next = g->next;
                else c->head = g->next;
                if (c->tail == g) c->tail = prev;
                g->next = NULL;
            }
        }
    }
    /* the next turn goes to the client after the one that chose; empty clients leave */
    int next_key_idx = q->nclients ? (start + 1) % q->nclients : 0;
    uint64_t next_key = q->nclients ? q->clients[next_key_idx].key : 0;
    for (int k = 0; k < q->nclients;)
        if (!q->clients[k].head) drop_client(q, k);
        else k++;
    q->rr = 0;
    for (int k = 0; k < q->nclients; k++)
        if (q->clients[k].key == next_key) q->rr = k;
    return nb;
}

/* fills the batch inputs */
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
        if (--g->pending == 0) q->sc->done[(*nd)++] = g;
    }
}

/* calls the done() of the nd groups in sc->done, without the lock (only the worker writes sc->done) */
static void hand_back(srv_sched *sc, int nd)
{
    if (!nd) return;
    pthread_mutex_unlock(&sc->mu);
    for (int i = 0; i < nd; i++) sc->done[i]->done(sc->done[i], sc->done[i]->done_arg);
    pthread_mutex_lock(&sc->mu);
}

/* When q's next batch may start (now, or later with max_delay_us), and its operation: the one of
 * the oldest group of the client whose turn it is. q has waiting jobs. */
static double ready_at(srv_queue *q, double now, enum srv_op *op)
{
    *op = q->clients[q->rr].head->op;
    if (q->delay <= 0 || q->count_op[*op] >= q->max_batch || q->sc->stopping) return now;
    double oldest = now;   /* the oldest waiting group of op */
    for (int k = 0; k < q->nclients; k++) {
        srv_group *prev, *g = first_of(&q->clients[k], *op, &prev);
        if (g && g->t_enqueue < oldest) oldest = g->t_enqueue;
    }
    return oldest + q->delay;
}

static void *worker(void *arg)
{
    srv_sched *sc = arg;
    pthread_mutex_lock(&sc->mu);
    for (;;) {
        int nd = 0;
        double now = srv_now();
        for (srv_queue *q = sc->queues; q; q = q->next_q) expire(q, now, &nd);
        if (nd) {
            hand_back(sc, nd);
            continue;
        }
        if (sc->dirty && (now - sc->last_trim >= TRIM_BUSY_S || (sc->count == 0 && now - sc->last_batch >= TRIM_IDLE_S))) {
            trim_now(sc, now);
            continue;
        }
        if (sc->count == 0) {
            if (sc->stopping) break;
            if (sc->dirty) {   /* trim if nothing arrives within TRIM_IDLE_S */
                struct timespec ts;
                abs_time(&ts, sc->last_batch + TRIM_IDLE_S);
                pthread_cond_timedwait(&sc->cv, &sc->mu, &ts);
            } else {
                pthread_cond_wait(&sc->cv, &sc->mu);
            }
            continue;
        }
        /* the queues take turns: the first from sc->turn on whose batch may start */
        srv_queue *q = NULL, *start = sc->turn ? sc->turn : sc->queues;
        enum srv_op op = OP_LOG_PROB;
        double wake = now + 3600;
        for (srv_queue *c = start;;) {
            if (c->count) {
                enum srv_op o;
                double t = ready_at(c, now, &o);
                if (t <= now) {
                    q = c, op = o;
                    break;
                }
                if (t < wake) wake = t;
            }
            c = c->next_q ? c->next_q : sc->queues;
            if (c == start) break;
        }
        if (!q) {
            struct timespec ts;
            abs_time(&ts, wake);
            pthread_cond_timedwait(&sc->cv, &sc->mu, &ts);
            continue;
        }
        sc->turn = q->next_q;
        int nb = take_batch(q, op, &nd);
        if (!nb) {   /* every group of op had lost its client */
            hand_back(sc, nd);
            continue;
        }
        pthread_mutex_unlock(&sc->mu);

        /* q stays: its groups in the batch hold their requests, which hold q's model */
        double t0 = srv_now();
        for (int b = 0; b < nb; b++) {
            double wt = t0 - q->batch[b].g->t_enqueue;
            srv_metrics_wait(sc->metrics, wt);
            /* max_wait is only read by the owner after done(); only this thread writes it */
            if (wt > q->batch[b].g->max_wait) q->batch[b].g->max_wait = wt;
        }
        prepare(q, op, nb);
        rnvp_error e = {0};
        enum rnvp_status st = compute(q, op, nb, &e);
        double t1 = srv_now();
        srv_metrics_batch(sc->metrics, op, nb, t1 - t0);

        pthread_mutex_lock(&sc->mu);
        sc->dirty++;
        sc->last_batch = t1;
        finish(q, op, nb, st, &e, t0, t1, &nd);
        hand_back(sc, nd);   /* q may be freed from here on */
    }
    pthread_mutex_unlock(&sc->mu);
    return NULL;
}

static void set_nomem(rnvp_error *err, const char *what)
{
    if (!err) return;
    err->status = RNVP_ERR_NOMEM;
    snprintf(err->msg, sizeof err->msg, "out of memory for %s", what);
}

srv_sched *srv_sched_create(int capacity, int max_batch, srv_metrics *metrics, rnvp_error *err)
{
    srv_sched *sc = calloc(1, sizeof *sc);
    if (!sc) {
        set_nomem(err, "the batching queue");
        return NULL;
    }
    sc->metrics = metrics;
    sc->cap = capacity;
    sc->max_batch = max_batch;
    sc->done = malloc((size_t)(capacity + max_batch) * sizeof *sc->done);
    if (!sc->done) {
        set_nomem(err, "the batching queue");
        free(sc);
        return NULL;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sc->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&sc->mu, NULL);
    int rc = pthread_create(&sc->thread, NULL, worker, sc);
    if (rc) {
        if (err) {
            err->status = RNVP_ERR_NOMEM;
            snprintf(err->msg, sizeof err->msg, "cannot start the compute thread: %s", strerror(rc));
        }
        pthread_cond_destroy(&sc->cv);
        pthread_mutex_destroy(&sc->mu);
        free(sc->done);
        free(sc);
        return NULL;
    }
    return sc;
}

int srv_sched_depth(srv_sched *sc)
{
    pthread_mutex_lock(&sc->mu);
    int n = sc->count;
    pthread_mutex_unlock(&sc->mu);
    return n;
}

void srv_sched_close(srv_sched *sc)
{
    if (!sc) return;
    pthread_mutex_lock(&sc->mu);
    sc->closed = 1;
    pthread_mutex_unlock(&sc->mu);
}

void srv_sched_cancel_all(srv_sched *sc)
{
    if (!sc) return;
    pthread_mutex_lock(&sc->mu);
    sc->closed = 1;
    sc->cancel_all = 1;
    pthread_cond_signal(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
}

void srv_sched_free(srv_sched *sc)
{
    if (!sc) return;
    pthread_mutex_lock(&sc->mu);
    sc->stopping = 1;
    pthread_cond_signal(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
    pthread_join(sc->thread, NULL);
    pthread_cond_destroy(&sc->cv);
    pthread_mutex_destroy(&sc->mu);
    free(sc->done);
    free(sc);
}

static void queue_free_memory(srv_queue *q)
{
    rnvp_ctx_free(q->ctx);
    free(q->clients), free(q->batch), free(q->px), free(q->out);
    free(q->noise), free(q->z), free(q->lp), free(q->bpd);
    free(q);
}

srv_queue *srv_queue_create(srv_sched *sc, const rnvp_model *m, long max_delay_us, long timeout_ms,
                            enum rnvp_precision prec, rnvp_error *err)
{
    srv_queue *q = calloc(1, sizeof *q);
    if (!q) {
        set_nomem(err, "the batching queue");
        return NULL;
    }
    q->sc = sc;
    q->m = m;
    q->max_batch = sc->max_batch;
    q->delay = (double)max_delay_us * 1e-6;
    q->timeout = (double)timeout_ms * 1e-3;
    size_t D = (size_t)rnvp_model_dim(m), B = (size_t)q->max_batch;
    q->clients = malloc((size_t)sc->cap * sizeof *q->clients);
    q->batch = malloc(B * sizeof *q->batch);
    q->px = malloc(B * D);
    q->out = malloc(B * D);
    q->noise = malloc(B * D * sizeof(float));
    q->z = malloc(B * D * sizeof(float));
    q->lp = malloc(B * sizeof(double));
    q->bpd = malloc(B * sizeof(double));
    if (!q->clients || !q->batch || !q->px || !q->out || !q->noise || !q->z || !q->lp || !q->bpd) {
        set_nomem(err, "the batching queue");
        queue_free_memory(q);
        return NULL;
    }
    if (rnvp_ctx_create(&q->ctx, m, q->max_batch, err) || rnvp_ctx_set_precision(q->ctx, prec, err)) {
        queue_free_memory(q);
        return NULL;
    }
    pthread_mutex_lock(&sc->mu);   /* appended: its first turn comes after the queues already there */
    srv_queue **pp = &sc->queues;
    while (*pp) q->prev_q = *pp, pp = &(*pp)->next_q;
    *pp = q;
    pthread_mutex_unlock(&sc->mu);
    return q;
}

int srv_queue_push(srv_queue *q, srv_group *g)
{
    srv_sched *sc = q->sc;
    pthread_mutex_lock(&sc->mu);
    if (sc->closed || sc->stopping) {
        pthread_mutex_unlock(&sc->mu);
        return -2;
    }
    srv_group *gone = NULL;
    if (sc->count + g->n > sc->cap)   /* room held by clients that left, in any queue */
        for (srv_queue *o = sc->queues; o; o = o->next_q) sweep_gone(o, &gone);
    if (sc->count + g->n > sc->cap) {
        pthread_mutex_unlock(&sc->mu);
        for (srv_group *d = gone, *nx; d; d = nx) nx = d->next, d->next = NULL, d->done(d, d->done_arg);
        return -1;
    }
    g->t_enqueue = srv_now();
    g->pending = g->n;
    g->taken = 0;
    g->expired = g->failed = g->cancelled = g->shutdown = 0;
    g->max_batch_seen = 0;
    g->max_wait = g->compute = g->t_first_start = 0;
    g->sampled = 0;
    g->next = NULL;
    int k = 0;
    while (k < q->nclients && q->clients[k].key != g->client) k++;
    if (k == q->nclients) {   /* a new client joins the round just before the one whose turn it is */
        memmove(q->clients + q->rr + 1, q->clients + q->rr, (size_t)(q->nclients - q->rr) * sizeof *q->clients);
        k = q->rr;
        q->clients[k] = (client){.key = g->client};
        q->nclients++;
        if (q->nclients > 1) q->rr++;
        else q->rr = 0;
    }
    client *c = &q->clients[k];
    if (c->tail) c->tail->next = g;
    else c->head = g;
    c->tail = g;
    q->count += g->n;
    sc->count += g->n;
    q->count_op[g->op] += g->n;
    pthread_cond_signal(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
    for (srv_group *d = gone, *nx; d; d = nx) nx = d->next, d->next = NULL, d->done(d, d->done_arg);
    return 0;
}

int srv_queue_depth(srv_queue *q)
{
    pthread_mutex_lock(&q->sc->mu);
    int n = q->count;
    pthread_mutex_unlock(&q->sc->mu);
    return n;
}

void srv_queue_free(srv_queue *q)
{
    if (!q) return;
    srv_sched *sc = q->sc;
    pthread_mutex_lock(&sc->mu);
    if (q->prev_q) q->prev_q->next_q = q->next_q;
    else sc->queues = q->next_q;
    if (q->next_q) q->next_q->prev_q = q->prev_q;
    if (sc->turn == q) sc->turn = q->next_q;
    pthread_mutex_unlock(&sc->mu);
    queue_free_memory(q);
}
