/* tpool.h: a tiny fork-join thread pool for the inference contexts and the trainer (the caller is thread 0).
 * Leaves out work queues and nesting: one job at a time, run by every thread. */
#ifndef RNVP_TPOOL_H
#define RNVP_TPOOL_H

typedef struct tpool tpool;
typedef void (*tpool_fn)(void *arg, int t, int nt);

/* A pool of n threads in all (n - 1 workers plus the caller); NULL on failure or n < 2. */
tpool *rnvpi_tpool_create(int n);
void rnvpi_tpool_free(tpool *p);
/* Threads in the pool (1 for NULL). */
int rnvpi_tpool_size(const tpool *p);
/* Runs fn(arg, t, nt) on every thread t < nt (nt = rnvpi_tpool_size) and returns when all have
 * finished. With p == NULL, runs fn(arg, 0, 1) in the caller. */
void rnvpi_tpool_run(tpool *p, tpool_fn fn, void *arg);
/* Like rnvpi_tpool_run, but for work that fn shares out itself (e.g. an atomic counter in arg): the
 * caller runs fn(arg, 0, nt) and then waits only for the workers that have already started
 * fn(arg, t, nt); a worker that comes later (descheduled, asleep) skips the job. So fn must not
 * depend on every t running, and the caller's fn must not return while work is left. */
void rnvpi_tpool_run_shared(tpool *p, tpool_fn fn, void *arg);

#endif
