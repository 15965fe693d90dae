/* http.h: what the request path of bin/realnvp-server shares between its stages: the server
 * and per-request structs, the memory budget, prepared replies and the work pool.
 * Leaves out the MHD-free parsers, queue and metrics (server.h).
 *
 * Request path, one file a stage:
 *   http.c       libmicrohttpd glue: per-request state, routing and checks, body collection
 *                under the memory budget, sending prepared replies, the access log;
 *   endpoints.c  each endpoint's parameters, input decoding and result encoding (no MHD);
 *   pool.c       the work threads that run endpoints.c's heavy parts off the HTTP threads;
 *   lifecycle.c  start-up, model loading, /info, drain and shutdown;
 *   oip_endpoints.c  the Open Inference Protocol's /v2 endpoints (oip.c parses and encodes), on the
 *                same path: a v2 inference is a log_prob, encode or decode job of the queue.
 *
 * A compute request: the handler collects the body, suspends the connection and hands the req
 * to the pool (prepare: decode inputs, enqueue the group, or prepare an error reply); the batch
 * worker's done() hands it to the pool again (finish: encode the results); the pool resumes
 * the connection, and the handler's next call sends the prepared reply. Each req is owned by
 * exactly one of these at a time; the completion callback frees it. */
#ifndef RNVP_HTTP_H
#define RNVP_HTTP_H

#include "server.h"

#include <microhttpd.h>
#include <stdatomic.h>
#include <stdio.h>

/* server/web/index.html, embedded at build time (tools/embed.sh, build/gen/web_index.c) */
extern const unsigned char srv_web_index[];
extern const size_t srv_web_index_len;

#define SRV_MAX_KEY 4096   /* longest API key accepted (bytes) */

/* ---- the work pool (pool.c) ---- */

typedef struct srv_task {
    void (*fn)(struct srv_task *t);
    struct srv_task *next;
} srv_task;
typedef struct srv_pool srv_pool;
/* n threads running submitted tasks in order of submission; NULL with err on failure */
srv_pool *srv_pool_create(int n, char *err, size_t errcap);
/* t stays owned by the caller; fn(t) runs once on a pool thread. Never blocks, never fails. */
void srv_pool_submit(srv_pool *p, srv_task *t);
int srv_pool_depth(srv_pool *p);   /* tasks waiting */
/* runs the tasks still waiting, then stops and joins the threads */
void srv_pool_free(srv_pool *p);

/* ---- the server ---- */

struct srv_server {
    srv_options o;
    struct MHD_Daemon *d;
    int listen_fd;
    int port;
    srv_sched *sc;           /* the batch worker and the server-wide queue capacity */
    srv_repo *repo;          /* the models served (each version with its own queue on sc) */
    srv_pool *pool;
    srv_pool *loader;        /* one thread for the repository's loads and unloads (they may take seconds) */
    srv_metrics *metrics;
    char *api_key;
    size_t api_key_len;
    FILE *access;
    int access_owned;
    pthread_mutex_t log_mu;
    atomic_llong mem_used;   /* bytes charged by requests now (the budget: o.memory_budget) */
    atomic_int inflight, suspended, ready, draining;
};

enum phase {
    PH_NEW,     /* the first call: headers in */
    PH_BODY,    /* collecting the body */
    PH_WORK,    /* suspended: owned by the pool or the batch queue */
    PH_REPLY    /* resumed: the prepared reply (req.out) is to be sent */
};
enum fmt { FMT_PNG, FMT_JSON };

/* A reply prepared off the HTTP threads and sent by the handler. */
typedef struct srv_reply {
    int status;
    const char *ctype;    /* static string */
    char *data;           /* malloc'ed (handed to libmicrohttpd) or NULL */
    size_t len;
    const char *hname;    /* an extra header, or NULL */
    char hval[40];
    int keep;             /* 1: no "Connection: close" even while draining (a reply decided
                             before the drain began, e.g. /readyz's 200: its connection stays up
                             to be told 503 next) */
} srv_reply;

typedef struct req {
    srv_server *s;
    srv_model *m;            /* the model version it uses (a reference, released with r), or NULL */
    struct MHD_Connection *conn;
    srv_task task;           /* the pool's link (first of the heavy stages to run next) */
    char *uri;               /* the raw request target (path and query) */
    const char *query;       /* after '?' in uri, or NULL */
    int ep;
    int post;
    int deferred;            /* a non-POST request waits for its final call */
    enum phase phase;
    double t0;
    char ip[64];
    uint64_t client;         /* hash of ip: the queue's fairness key */
    int fd;                  /* the connection's socket (for cancellation) */
    char method[12];
    size_t charged;          /* bytes of the memory budget this request holds */
    size_t body_charged;     /* of which for the body buffer */
    /* body */
    char *body;
    size_t len, cap, discarded;
    size_t declared;         /* Content-Length (at most --max-body-bytes); 0: none given */
    int refuse;              /* 413 (over the limit), 503 (budget spent, or draining): answered at the body's end */
    size_t refuse_want;      /* 503 for the budget: the bytes that did not fit */
    char ctype[160];
    /* parameters */
    srv_query qp;
    int draws, cols, latents_out;
    int steps, spherical;    /* /interpolate */
    int stage;               /* /interpolate: 0 encoding the two ends, 1 decoding the points */
    enum fmt fmt;
    uint64_t seed;
    int seed_given;
    double temp;
    /* work */
    int nimg;
    char (*names)[128];      /* (nimg) */
    uint8_t *pixels;         /* (nimg, C, H, W) inputs, or (n, C, H, W) decoded outputs */
    float *z;                /* (n, D) */
    double *lp, *bpd;        /* (n) */
    double *png_bpd;         /* (nimg) /log_prob: each input's own PNG size in bits/dim */
    srv_group g;
    srv_reply out;
    /* the Open Inference Protocol (/v2) */
    long long oip_hlen;      /* Inference-Header-Content-Length, -1: none */
    srv_oip_req oip;         /* the parsed request (its tensors move to pixels / z) */
    char repo_model[SRV_OIP_NAMELEN];   /* the {m} of /v2/repository/models/{m}/load and unload */
    /* for the log */
    int status;
    size_t bytes;
} req;

/* ---- the memory budget and replies (http.c) ---- */

/* Charges n bytes to the server's budget for r: 0, or -1 (nothing charged) when the budget
 * would be exceeded. Everything r holds is released when r is freed. */
int srv_req_charge(req *r, size_t n);
void srv_req_release(req *r, size_t n);   /* gives back n bytes charged earlier */
/* Prepares r's reply (data: malloc'ed, owned by r from here on; it is charged to the budget
 * without a limit, since the work is done). A previous prepared reply is freed. */
void srv_req_reply(req *r, int status, const char *ctype, char *data, size_t len, const char *hname, const char *hval);
void srv_req_reply_buf(req *r, int status, const char *ctype, srv_buf *b, const char *hname, const char *hval);
/* A JSON error reply {"error": {"code": ..., "message": ...}}, with Retry-After on 503,
 * WWW-Authenticate on 401 and Allow on 405. */
__attribute__((format(printf, 4, 5))) void srv_req_error(req *r, int status, const char *code, const char *fmt, ...);
/* 503 + Retry-After for a spent memory budget (counted in the metrics) */
void srv_req_error_budget(req *r, size_t want);

/* frees r's request body and gives its memory back to the budget */
void srv_req_free_body(req *r);
/* the batch queue's done() for every request: hands r to the pool's finish stage */
void srv_http_group_done(srv_group *g, void *arg);
/* starts libmicrohttpd on s->listen_fd with the request path's callbacks; 0 or -1 with err */
int srv_http_start(srv_server *s, char *err, size_t errcap);

/* GET /info of model version m (lifecycle.c) */
void srv_server_info(const srv_server *s, const srv_model *m, srv_buf *b);

/* ---- endpoints (endpoints.c) ---- */

/* the endpoint of a URL path (without the query) */
int srv_endpoint_route(const char *path);
/* the Allow header of ep */
const char *srv_endpoint_allow(int ep);
/* reads and checks the query parameters of r->ep; -1 with err */
int srv_endpoint_params(req *r, char *err, size_t errcap);
/* the cheap GET endpoints (healthz, readyz, metrics, info, the demo page): prepares the reply */
void srv_endpoint_simple(req *r);
/* The heavy stages, run on the pool: the prepare stage decodes the inputs and enqueues the
 * work; the finish stage (after the batch queue's done()) encodes the results. Each returns 1
 * when the work was enqueued (the queue owns r now) or 0 when r->out holds the reply. */
int srv_endpoint_prepare(req *r);
int srv_endpoint_finish(req *r);
/* "layout": [...] of the model's latent parts */
void srv_endpoint_put_layout(srv_buf *b, const srv_model *m);
/* for the heavy stages of other endpoints: enqueues r->g (1, or 0 with the refusal prepared); after
 * done(), 1 with the error prepared when some job of r->g was not computed (shutdown, cancelled,
 * timed out, failed) */
int srv_endpoint_enqueue(req *r);
int srv_endpoint_group_failed(req *r);

/* The model version r uses (r->m): for the native endpoints ?model=NAME (optional with one
 * model), for /v2/models/{m}[/versions/{v}] the path ({m} or {m}-decoder: r->oip.decoder set).
 * 0 (also for endpoints without a model), or the HTTP status with err filled. */
int srv_endpoint_model(req *r, char *err, size_t errcap);

/* ---- the Open Inference Protocol's /v2 endpoints (oip_endpoints.c) ---- */

#define SRV_OIP_EP(ep) ((ep) >= EP_V2_SERVER && (ep) <= EP_V2_REPO_UNLOAD)
#define SRV_OIP_REPO_EP(ep) ((ep) >= EP_V2_REPO_INDEX && (ep) <= EP_V2_REPO_UNLOAD)
/* The model of r's /v2/models/... path (r->m, r->oip.decoder), as srv_endpoint_model. */
int srv_oip_target(req *r, char *err, size_t errcap);
/* the repository extension's POSTs, on the pool (loads take time): prepares the reply; returns 0 */
int srv_oip_repository(req *r);
/* the /v2 GETs (server metadata, health, model metadata and readiness): prepares the reply */
void srv_oip_simple(req *r);
/* POST /v2/models/{m}/infer on the pool, as srv_endpoint_prepare and srv_endpoint_finish */
int srv_oip_prepare(req *r);
int srv_oip_finish(req *r);

#endif
