/* tpool.c: a tiny fork-join thread pool: workers spin a while, then sleep on a condition variable,
 * and join the current job once per generation; the mutex and condition variables are touched
 * only when someone sleeps. Leaves out work stealing and nesting. */
#include "tpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

/* state: generation << 32 | CLOSED | workers running the job (ACTIVE bits) */
#define ACTIVE ((uint64_t)0xffff)
#define CLOSED ((uint64_t)1 << 16)
#define GEN(s) ((uint32_t)((s) >> 32))

struct tpool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    tpool_fn fn;             /* the current job; stable while workers may run it */
    void *arg;
    int shared;              /* 1: rnvpi_tpool_run_shared (late workers skip), 0: every worker runs */
    _Atomic uint64_t state;
    atomic_int finished;     /* workers done with the current job (rnvpi_tpool_run) */
    atomic_int sleepers;     /* workers waiting on go (or about to) */
    atomic_int waiting;      /* 1 while the caller waits on done (or is about to) */
    atomic_int quit;
};

struct worker_arg {
    tpool *p;
    int t;
};

/* Polls before a thread goes to sleep: jobs come back to back within a pass. */
#define SPIN 20000

/* Wake the caller if it sleeps (after the update it waits for; seq_cst atomics on both sides). */
static void wake_caller(tpool *p)
{
    if (!atomic_load(&p->waiting)) return;
    pthread_mutex_lock(&p->mu);
    pthread_cond_signal(&p->done);
    pthread_mutex_unlock(&p->mu);
}

static void *worker(void *v)
{
    struct worker_arg *wa = v;
    tpool *p = wa->p;
    const int t = wa->t;
    free(wa);
    uint32_t seen = 0;
    for (;;) {
        int spins = 0;
        while (GEN(atomic_load_explicit(&p->state, memory_order_acquire)) == seen && spins < SPIN &&
               !atomic_load_explicit(&p->quit, memory_order_relaxed))
            spins++;
        if (GEN(atomic_load(&p->state)) == seen && !atomic_load(&p->quit)) {
            /* sleepers++ before re-reading state; the caller publishes state before reading
             * sleepers: one of the two sees the other */
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (GEN(atomic_load(&p->state)) == seen && !atomic_load(&p->quit))
                pthread_cond_wait(&p->go, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) return NULL;
        /* join the current job unless it is closed */
        uint64_t s = atomic_load(&p->state);
        int joined = 0;
        while (!(s & CLOSED))
            if (atomic_compare_exchange_weak(&p->state, &s, s + 1)) {
                joined = 1;
                break;
            }
        seen = GEN(s);
        if (!joined) continue;
        const int shared = p->shared;
        p->fn(p->arg, t, p->n);
        if (shared) {
            if ((atomic_fetch_sub(&p->state, 1) & ACTIVE) == 1) wake_caller(p);
        } else {
            atomic_fetch_sub(&p->state, 1);
            if (atomic_fetch_add(&p->finished, 1) == p->n - 2) wake_caller(p);
        }
    }
}

tpool *rnvpi_tpool_create(int n)
{
    if (n < 2) return NULL;
    if (n > 4096) n = 4096;
    tpool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->th = calloc((size_t)n, sizeof *p->th);
    if (!p->th) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    p->n = 1;
    for (int t = 1; t < n; t++) {
        struct worker_arg *wa = malloc(sizeof *wa);
        if (!wa) break;
        wa->p = p;
        wa->t = t;
        if (pthread_create(&p->th[t], NULL, worker, wa)) {
            free(wa);
            break;
        }
        p->n++;
    }
    if (p->n < 2) {
        rnvpi_tpool_free(p);
        return NULL;
    }
    return p;
}

void rnvpi_tpool_free(tpool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n; t++) pthread_join(p->th[t], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->th);
    free(p);
}

int rnvpi_tpool_size(const tpool *p) { return p ? p->n : 1; }

/* Spin, then sleep, until done(p) holds. */
static void wait_until(tpool *p, int (*done)(tpool *))
{
    int spins = 0;
    while (!done(p) && spins < SPIN) spins++;
    if (done(p)) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->waiting, 1);
    while (!done(p)) pthread_cond_wait(&p->done, &p->mu);
    atomic_store(&p->waiting, 0);
    pthread_mutex_unlock(&p->mu);
}

static int all_finished(tpool *p) { return atomic_load(&p->finished) == p->n - 1; }
static int none_active(tpool *p) { return (atomic_load(&p->state) & ACTIVE) == 0; }

static void run(tpool *p, tpool_fn fn, void *arg, int shared)
{
    if (!p) {
        fn(arg, 0, 1);
        return;
    }
    /* no worker runs the previous job any more: fn, arg and shared are free to change */
    p->fn = fn;
    p->arg = arg;
    p->shared = shared;
    atomic_store(&p->finished, 0);
    const uint64_t s = atomic_load(&p->state);
    atomic_store(&p->state, (uint64_t)(GEN(s) + 1) << 32);   /* publishes the job, open */
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->go);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n);
    if (shared) {
        atomic_fetch_or(&p->state, CLOSED);   /* no one joins from here on */
        wait_until(p, none_active);
    } else {
        wait_until(p, all_finished);
        wait_until(p, none_active);
    }
}

void rnvpi_tpool_run(tpool *p, tpool_fn fn, void *arg) { run(p, fn, arg, 0); }
void rnvpi_tpool_run_shared(tpool *p, tpool_fn fn, void *arg) { run(p, fn, arg, 1); }
