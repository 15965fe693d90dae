/* pool.c: a few work threads running the request path's heavy stages (PNG decoding, JSON parsing,
 * reply encoding) so that the HTTP threads only move bytes. Leaves out what a task does (http.h). */
#include "http.h"

#include <stdlib.h>
#include <string.h>

struct srv_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_task *head, *tail;   /* waiting tasks, oldest first (linked through the tasks: no allocation) */
    int depth, stopping, n;
    pthread_t *threads;      /* (n) */
};

static void *pool_thread(void *arg)
{
    srv_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        srv_task *t = p->head;
        if (!t) {
            if (p->stopping) break;
            pthread_cond_wait(&p->cv, &p->mu);
            continue;
        }
        p->head = t->next;
        if (!p->head) p->tail = NULL;
        p->depth--;
        pthread_mutex_unlock(&p->mu);
        t->next = NULL;
        t->fn(t);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

srv_pool *srv_pool_create(int n, char *err, size_t errcap)
{
    srv_pool *p = calloc(1, sizeof *p);
    if (p) p->threads = calloc((size_t)n, sizeof *p->threads);
    if (!p || !p->threads) {
        if (p) free(p);
        snprintf(err, errcap, "out of memory for the work threads");
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    for (; p->n < n; p->n++) {
        int rc = pthread_create(&p->threads[p->n], NULL, pool_thread, p);
        if (rc) {
            snprintf(err, errcap, "cannot start a work thread: %s", strerror(rc));
            srv_pool_free(p);
            return NULL;
        }
    }
    return p;
}

void srv_pool_submit(srv_pool *p, srv_task *t)
{
    t->next = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->tail) p->tail->next = t;
    else p->head = t;
    p->tail = t;
    p->depth++;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

int srv_pool_depth(srv_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->depth;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void srv_pool_free(srv_pool *p)
{
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}
