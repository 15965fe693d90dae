/* tpool.c: a tiny fork-join thread pool: workers sleep on a condition variable (after a short
 * spin) and run the current job once per generation. Leaves out work stealing and nesting. */
#include "tpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

struct tpool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    tpool_fn fn;
    void *arg;
    atomic_uint gen;         /* bumped for every job */
    atomic_int pending;      /* workers still running the current job */
    int quit;
};

struct worker_arg {
    tpool *p;
    int t;
};

/* Polls of gen before a worker goes to sleep: jobs come back to back within a pass. */
#define SPIN 20000

static void *worker(void *v)
{
    struct worker_arg *wa = v;
    tpool *p = wa->p;
    const int t = wa->t;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen && spins < SPIN) spins++;
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->gen) == seen && !p->quit) pthread_cond_wait(&p->go, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = atomic_load(&p->gen);
        tpool_fn fn = p->fn;
        void *arg = p->arg;
        pthread_mutex_unlock(&p->mu);
        fn(arg, t, p->n);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

tpool *tpool_create(int n)
{
    if (n < 2) return NULL;
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
        tpool_free(p);
        return NULL;
    }
    return p;
}

void tpool_free(tpool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n; t++) pthread_join(p->th[t], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->th);
    free(p);
}

int tpool_size(const tpool *p) { return p ? p->n : 1; }

void tpool_run(tpool *p, tpool_fn fn, void *arg)
{
    if (!p) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->pending, p->n - 1);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    int spins = 0;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0 && spins < SPIN) spins++;
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->pending) > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
