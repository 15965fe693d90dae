/* server.h: internals of bin/realnvp-server shared by the server/ sources: the options, the MHD-free
 * parsers (query strings, multipart bodies, latents JSON), the batching queue and the metrics.
 * Leaves out the public library (include/realnvp.h) and everything HTTP-specific (http.h).
 *
 * Memory model: parsers write into caller-owned structs and point into the caller's input
 * (multipart parts, query values are copied into the query struct). The queue never copies
 * image data: a request owns its srv_group (inputs and outputs) until the worker hands the
 * group back through its done() callback; after that call the queue never touches it again. */
#ifndef RNVP_SERVER_H
#define RNVP_SERVER_H

#include "realnvp.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define SRV_VERSION RNVP_VERSION
#define SRV_ERRLEN 320

/* ---- options (flags and environment variables, main.c) ---- */

typedef struct srv_options {
    const char *model;          /* REALNVP_MODEL, checkpoint path (or model_repository) */
    const char *model_repository;   /* REALNVP_MODEL_REPOSITORY, DIR/<name>/[<version>/]model.safetensors */
    const char *model_versions; /* REALNVP_MODEL_VERSIONS, "latest" or "all" */
    const char *precision;      /* REALNVP_PRECISION, "fp32" or "bf16" */
    enum rnvp_precision prec;   /* precision, parsed */
    int all_versions;           /* model_versions is "all" */
    long model_memory;          /* REALNVP_MODEL_MEMORY_BYTES, loaded models in all, 1 GiB */
    const char *model_name;     /* REALNVP_MODEL_NAME, "model" in replies; NULL: derived (--model only) */
    const char *host;           /* REALNVP_HOST, "127.0.0.1" */
    int port;                   /* REALNVP_PORT, 8080; 0 picks a free port */
    int http_threads;           /* REALNVP_HTTP_THREADS, 2 */
    int compute_threads;        /* REALNVP_COMPUTE_THREADS, BLAS threads, number of CPUs */
    int max_batch;              /* REALNVP_MAX_BATCH, 64 */
    long max_delay_us;          /* REALNVP_MAX_DELAY_US, 0: a batch starts as soon as the worker is free */
    int queue_size;             /* REALNVP_QUEUE_SIZE, images waiting, 1024 */
    long request_timeout_ms;    /* REALNVP_REQUEST_TIMEOUT_MS, longest queue wait, 30000 */
    long max_body_bytes;        /* REALNVP_MAX_BODY_BYTES, 8 MiB */
    int max_samples;            /* REALNVP_MAX_SAMPLES, images per request, 256 */
    int max_draws;              /* REALNVP_MAX_DRAWS, log_prob ?samples=K limit, 64 */
    const char *api_key_file;   /* REALNVP_API_KEY_FILE, NULL: no key needed */
    const char *access_log;     /* REALNVP_ACCESS_LOG, "-" (stderr), "off" or a file */
    int conn_timeout_s;         /* REALNVP_CONN_TIMEOUT_S, idle connection timeout, 30 */
    int max_connections;        /* REALNVP_MAX_CONNECTIONS, 512 */
    int per_ip_limit;           /* REALNVP_PER_IP_LIMIT, connections per client IP, 128 */
    int drain_timeout_s;        /* REALNVP_DRAIN_TIMEOUT_S, shutdown bound, 30 */
    long memory_budget;         /* REALNVP_MEMORY_BUDGET_BYTES, request memory in all, 128 MiB */
    int read_timeout_s;         /* REALNVP_READ_TIMEOUT_S, a request's whole upload, 60 */
    int max_jobs_per_request;   /* REALNVP_MAX_JOBS_PER_REQUEST, computations one request may queue, 256 */
    int work_threads;           /* REALNVP_WORK_THREADS, PNG/JSON decoding and reply encoding, 2 */
    long max_workspace_bytes;   /* REALNVP_MAX_WORKSPACE_BYTES, the batch workspace's limit, 256 MiB */
} srv_options;

/* ---- query strings (query.c) ---- */

#define SRV_QUERY_MAX 16
#define SRV_QUERY_VALLEN 64

typedef struct srv_query {
    int n;
    char key[SRV_QUERY_MAX][24];
    char val[SRV_QUERY_MAX][SRV_QUERY_VALLEN];
} srv_query;

/* Splits and percent-decodes "a=1&b=x%20y" (without the '?'; NULL or "" is empty) into *q.
 * Refuses (returns -1, err filled) more than SRV_QUERY_MAX parameters, a key or value too long,
 * bad %-escapes, NUL bytes, an empty key and a repeated key. Returns 0 on success. */
int srv_query_parse(srv_query *q, const char *qs, char *err, size_t errcap);
/* The value of key, or NULL. */
const char *srv_query_get(const srv_query *q, const char *key);
/* -1 (err filled, naming the first key not in the NULL-terminated list `allowed`) or 0. */
int srv_query_check_allowed(const srv_query *q, const char *const *allowed, char *err, size_t errcap);
/* Integer parameter in lo..hi; absent: *out = def. Returns 0, or -1 with err filled. */
int srv_query_int(const srv_query *q, const char *key, long lo, long hi, long def, long *out,
                  char *err, size_t errcap);
/* Unsigned 64-bit parameter; *present says whether it was given. */
int srv_query_u64(const srv_query *q, const char *key, uint64_t *out, int *present, char *err,
                  size_t errcap);
/* Finite number parameter in lo..hi; absent: *out = def. */
int srv_query_double(const srv_query *q, const char *key, double lo, double hi, double def,
                     double *out, char *err, size_t errcap);
/* One of the NULL-terminated `choices`; absent: index def. Returns the index, or -1. */
int srv_query_choice(const srv_query *q, const char *key, const char *const *choices, int def,
                     char *err, size_t errcap);

/* ---- multipart/form-data (multipart.c) ---- */

typedef struct srv_part {
    const char *data;       /* points into the body */
    size_t len;
    char name[128];         /* the filename if given, else the field name, else "part N" */
    char content_type[96];  /* "" when the part has none */
} srv_part;

/* The boundary of a "multipart/form-data; boundary=..." Content-Type, into buf (cap bytes).
 * Returns 0, or -1 with err filled (not multipart, boundary missing, empty or over 70 chars). */
int srv_multipart_boundary(char *buf, size_t cap, const char *content_type, char *err, size_t errcap);
/* Splits body into at most maxparts parts (RFC 7578 / 2046). Parts point into body. Refuses
 * (-1, err filled) a missing first or closing delimiter, part headers without an empty line,
 * more than maxparts parts and no parts at all. Returns the number of parts. */
int srv_multipart_parse(srv_part *parts, int maxparts, const char *body, size_t len,
                        const char *boundary, char *err, size_t errcap);

/* ---- latents JSON (latents.c) ---- */

/* Parses {"latents": [D numbers]} or {"latents": [[D numbers], ...]} (1..maxn rows) into a
 * malloc'ed (N, D) float array *z (the caller frees it) and *n. Every value must be a finite
 * number representable as float32. An optional "layout" must equal the model's (given as
 * `layout`, NULL: not checked). Other keys are ignored. Returns 0, or -1 with err filled (and
 * *z NULL). */
/* (It starts with srv_latents_precheck.) */
int srv_latents_parse(float **z, int *n, const char *json, size_t len, int d, int maxn,
                      const rnvp_latent_part *layout, int nparts, char *err, size_t errcap);
/* An upper bound of the memory Jansson needs to parse json, from one scan without parsing;
 * *containers and *scalars (may be NULL) get the counts it is made of. */
#define SRV_JSON_CONTAINER_BYTES 160   /* an array or object with its table, allocator overhead included */
#define SRV_JSON_SCALAR_BYTES 56       /* a number, string or literal and its slot in the parent */
#define SRV_JSON_SLACK 64
size_t srv_json_cost(const char *json, size_t len, size_t *containers, size_t *scalars);
/* Refuses (-1, err filled), before anything is parsed, a body with more arrays or objects than
 * maxn + SRV_JSON_SLACK or more other values than maxn * d + 16 * SRV_JSON_SLACK: that bounds
 * the parse tree. Otherwise 0 and *cost (may be NULL) = srv_json_cost. */
int srv_latents_precheck(const char *json, size_t len, int d, int maxn, size_t *cost, char *err, size_t errcap);

/* ---- small helpers (util in metrics.c) ---- */

double srv_now(void);   /* CLOCK_MONOTONIC seconds */
/* base64 (RFC 4648, padded) of len bytes into a malloc'ed NUL-terminated string; NULL: no memory */
char *srv_base64(const void *data, size_t len);
/* dequantisation noise u in [0, 1) for draw `draw` of image `image` of a request seeded `seed`:
 * out is (D) floats from a splitmix64 stream, independent of batching */
void srv_noise(float *out, int d, uint64_t seed, int image, int draw);

/* A growable byte buffer (malloc). All appends keep it NUL-terminated; on allocation failure
 * `oom` is set and further appends do nothing. */
typedef struct srv_buf {
    char *p;
    size_t len, cap;
    int oom;
} srv_buf;
void srv_buf_put(srv_buf *b, const void *data, size_t n);
__attribute__((format(printf, 2, 3))) void srv_buf_printf(srv_buf *b, const char *fmt, ...);
void srv_buf_json_string(srv_buf *b, const char *s);   /* a quoted, escaped JSON string */
void srv_buf_json_double(srv_buf *b, double v, int digits);   /* null when not finite */

/* ---- the Open Inference Protocol v2 over REST (oip.c) ---- */

/* Model {m} takes "image" (UINT8, [N, H, W, C]) and returns "log_prob", "bits_per_dim" (FP64,
 * [N]) and "latents" (FP32, [N, D]); model {m}-decoder takes "latents" and returns "image".
 * Binary tensors follow Triton's binary tensor data extension (little-endian, row-major). */
enum srv_oip_out { OIP_LOG_PROB, OIP_BITS_PER_DIM, OIP_LATENTS, OIP_IMAGE, OIP_NOUT };
extern const char *const srv_oip_out_names[OIP_NOUT];
#define SRV_OIP_NAMELEN 256   /* longest model name, version or request id (bytes, with the NUL) */

/* The endpoint (EP_V2_*) of a /v2 path (the part before any '?'), or EP_OTHER. model and version
 * (SRV_OIP_NAMELEN bytes each, or NULL) get the percent-decoded {m} and {v} ("" when absent). */
int srv_oip_route(const char *path, char *model, char *version);
/* 1 when the request target is "/v2" or under "/v2/": its errors are {"error": "..."} */
int srv_oip_is_v2(const char *target);
/* The Inference-Header-Content-Length header value (NULL: absent, *out = -1) as a byte count;
 * -1 with err unless it is a plain decimal number. */
int srv_oip_header_length(const char *value, long long *out, char *err, size_t errcap);

/* A validated inference request. */
typedef struct srv_oip_req {
    int decoder;                 /* 0: model {m} (input image), 1: {m}-decoder (input latents) */
    int n;                       /* N, images or latent vectors */
    uint8_t *pixels;             /* (N, C, H, W) malloc'ed, the core's layout: model {m} */
    float *z;                    /* (N, D) malloc'ed: the decoder */
    int nout;                    /* outputs to return, in the order asked (the model's when none named) */
    int out[OIP_NOUT];           /* enum srv_oip_out */
    int binary[OIP_NOUT];        /* per out[i]: returned as binary data */
    int samples;                 /* the "samples" parameter (dequantization draws), 0: none */
    uint64_t seed;               /* the "seed" parameter */
    int seed_given;
    int has_id;
    char id[SRV_OIP_NAMELEN];    /* the request's "id", echoed in the response */
} srv_oip_req;

/* Checks the body's framing (hlen: the Inference-Header-Content-Length, -1 when absent) and
 * bounds its JSON before anything is parsed: more arrays or values than maxn images or vectors
 * need is refused (-1, err filled). Otherwise 0 and *cost (may be NULL) = srv_json_cost of it. */
int srv_oip_precheck(const char *body, size_t len, long long hlen, int decoder, int C, int H, int W, int maxn,
                     size_t *cost, char *err, size_t errcap);
/* Parses and validates an inference request for model {m} (decoder 0) or {m}-decoder (1) of
 * shape C, H, W (D = C H W): the JSON header (the whole body when hlen is -1) and the binary
 * tensors after it. N must be 1..maxn, samples 1..max_draws. Fills *q (its tensors malloc'ed:
 * srv_oip_req_clear frees them). Returns 0, or -1 with err filled and nothing allocated. */
int srv_oip_parse(srv_oip_req *q, const char *body, size_t len, long long hlen, int decoder, int C, int H, int W,
                  int maxn, int max_draws, char *err, size_t errcap);
void srv_oip_req_clear(srv_oip_req *q);

/* The results of a request, as the queue left them: (N) log_prob and bits_per_dim (per image,
 * draws averaged), (N, D) latents, (N, C, H, W) decoded pixels; NULL when not asked for. */
typedef struct srv_oip_results {
    const double *log_prob, *bits_per_dim;
    const float *z;
    const uint8_t *pixels;
} srv_oip_results;
/* The inference response of q into b: the JSON object, then the binary outputs in order.
 * *json_len = the JSON's length when some output is binary (the Inference-Header-Content-Length),
 * else 0 (b is JSON alone, newline-terminated). */
void srv_oip_encode(srv_buf *b, size_t *json_len, const srv_oip_req *q, const srv_oip_results *res,
                    const char *model_name, int C, int H, int W);
/* The body of a repository request (Triton's repository extension): empty, or a JSON object
 * whose "ready" (index) is a boolean and "parameters" (load, unload) an object; other keys are
 * ignored. *ready_only (may be NULL) gets "ready". Returns 0, or -1 with err filled. */
#define SRV_OIP_REPO_MAX_BODY 65536
int srv_oip_repo_parse(const char *body, size_t len, int *ready_only, char *err, size_t errcap);
/* GET /v2 and GET /v2/models/{m} replies (JSON, newline-terminated) */
void srv_oip_server_metadata(srv_buf *b);
void srv_oip_model_metadata(srv_buf *b, const char *name, const long *versions, int nv, int decoder, int C, int H, int W);

/* ---- metrics (metrics.c) ---- */

enum srv_endpoint {
    EP_LOG_PROB, EP_ENCODE, EP_DECODE, EP_INTERPOLATE,   /* POST: every endpoint up to EP_INTERPOLATE */
    EP_SAMPLE, EP_HEALTHZ, EP_READYZ, EP_METRICS, EP_INFO, EP_INDEX,
    /* the Open Inference Protocol (oip.c): EP_V2_SERVER..EP_V2_REPO_UNLOAD; the POSTs: EP_V2_INFER and
     * the repository extension's (EP_V2_REPO_*) */
    EP_V2_SERVER, EP_V2_LIVE, EP_V2_READY, EP_V2_MODEL, EP_V2_MODEL_READY, EP_V2_INFER,
    EP_V2_REPO_INDEX, EP_V2_REPO_LOAD, EP_V2_REPO_UNLOAD,
    EP_OTHER, EP_COUNT
};
extern const char *const srv_endpoint_names[EP_COUNT];

enum srv_op { OP_LOG_PROB, OP_LOG_PROB_NOISE, OP_ENCODE, OP_DECODE, OP_COUNT };
extern const char *const srv_op_names[OP_COUNT];

typedef struct srv_metrics srv_metrics;
srv_metrics *srv_metrics_create(void);
void srv_metrics_free(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, int endpoint, int status, double seconds);
void srv_metrics_batch(srv_metrics *m, int op, int size, double compute_seconds);
void srv_metrics_wait(srv_metrics *m, double seconds);   /* one job's queue wait */
/* n refusals of one reason: a srv_reject_names one, or "cancelled" (realnvp_cancelled_total) */
void srv_metrics_rejected(srv_metrics *m, const char *reason, int n);
#define SRV_NREJECT 4
extern const char *const srv_reject_names[SRV_NREJECT];   /* queue_full timeout memory_budget draining */
typedef struct srv_gauges {
    int queue_depth, inflight, ready, draining;
    long long mem_used, mem_budget;
} srv_gauges;
/* Prometheus text exposition format 0.0.4 into b; gauges are passed in. */
void srv_metrics_render(srv_metrics *m, srv_buf *b, const srv_gauges *g, const char *model_name);
/* a Prometheus label value, quoted and escaped */
void srv_metrics_label(srv_buf *b, const char *v);
/* a line to stderr, "realnvp-server: " first (http.c) */
void srv_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- batching queue (queue.c) ---- */

/* The work of one request: n jobs of one operation. Inputs and outputs are owned by the
 * request; the worker reads inputs and writes outputs of the jobs it runs. */
typedef struct srv_group {
    enum srv_op op;
    int n;                   /* jobs; for OP_LOG_PROB_NOISE n = images * draws */
    int draws;               /* OP_LOG_PROB_NOISE: draws per image (job j: image j / draws) */
    uint64_t seed;           /* OP_LOG_PROB_NOISE noise seed; sampling seed */
    const uint8_t *pixels;   /* (images, C, H, W): OP_LOG_PROB*, OP_ENCODE input */
    float *z;                /* (n, D): OP_DECODE input, OP_ENCODE output */
    int sample;              /* OP_DECODE: the worker first fills z with rnvp_sample_latents */
    double temp;             /* temperature of sample */
    uint8_t *out_pixels;     /* (n, C, H, W): OP_DECODE output */
    double *log_prob;        /* (n): OP_LOG_PROB*, OP_ENCODE output */
    double *bits_per_dim;    /* (n): OP_LOG_PROB* output */
    uint64_t client;         /* fairness key (a hash of the peer address): round-robin between keys */
    int fd;                  /* the client's socket, polled before computing (-1: never cancelled) */
    /* set by the queue, read by the owner after done() */
    int expired;             /* jobs dropped because they waited longer than the timeout */
    int cancelled;           /* jobs dropped because the client had disconnected */
    int shutdown;            /* jobs dropped because the server stopped (srv_queue_cancel_all) */
    int failed;              /* jobs whose computation failed (message in err) */
    char err[SRV_ERRLEN];
    int max_batch_seen;      /* the largest batch any job ran in */
    double max_wait;         /* seconds, the longest queue wait of its jobs */
    double compute;          /* seconds from its first batch's start to its last one's end */
    /* the queue's bookkeeping */
    double t_enqueue;
    double t_first_start;
    int taken;               /* jobs handed to batches so far (jobs 0..taken-1) */
    int pending;             /* jobs not yet finished or dropped */
    int sampled;
    struct srv_group *next;  /* the client's next waiting group */
    void (*done)(struct srv_group *g, void *arg);   /* called once, no lock held: by the worker, or by a
                                                       * push that dropped g because its client had gone */
    void *done_arg;
} srv_group;

typedef struct srv_queue srv_queue;
typedef struct srv_sched srv_sched;

/* The scheduler: the one worker thread (started here) that serves every queue, up to max_batch
 * jobs a batch, and the server-wide capacity (images waiting in all queues). NULL with err on
 * failure.
 *
 * Batching: when the worker is free, the waiting jobs start at once (max_delay_us 0, the
 * default); with max_delay_us > 0 it waits for a full batch up to that long after the oldest
 * job's arrival. Fairness: the queues (models) take turns, a batch each; within a queue jobs are
 * taken round-robin between clients (srv_group.client), one job per client per turn, oldest group
 * first within a client; the client whose turn it is chooses the operation. Cancellation: a
 * group's waiting jobs are dropped (g->cancelled) when its client's socket (g->fd) shows the
 * client gone, checked before its first job of a batch is taken and, for every waiting group,
 * when a push does not fit. */
srv_sched *srv_sched_create(int capacity, int max_batch, srv_metrics *metrics, rnvp_error *err);
int srv_sched_depth(srv_sched *sc);   /* jobs waiting in all queues */
/* Refuses every later push (-2); jobs already queued are still computed. */
void srv_sched_close(srv_sched *sc);
/* Drops every waiting job (g->shutdown counts them; their groups finish once no job of theirs
 * is computing); the batch being computed finishes. Implies srv_sched_close. */
void srv_sched_cancel_all(srv_sched *sc);
/* Finishes every queued job, stops the worker and frees the scheduler (its queues first). */
void srv_sched_free(srv_sched *sc);

/* A queue for model m on sc, with its own context and batch buffers (sized for sc's max_batch).
 * The model must outlive the queue. NULL with err on failure. */
srv_queue *srv_queue_create(srv_sched *sc, const rnvp_model *m, long max_delay_us, long timeout_ms,
                            enum rnvp_precision prec, rnvp_error *err);
/* Enqueue all of g's jobs or none (g stays owned by the caller; the queue hands it back through
 * g->done). Returns 0, -1 when the server's capacity lacks room, -2 when the scheduler is closed;
 * nothing is enqueued then. */
int srv_queue_push(srv_queue *q, srv_group *g);
int srv_queue_depth(srv_queue *q);   /* jobs waiting in q */
/* Frees q, which has no job left (waiting or computing): its owner's requests are all done. */
void srv_queue_free(srv_queue *q);

/* ---- the model repository (repo.c) ---- */

#define SRV_MAX_MODELS 64
#define SRV_MAX_VERSIONS 16
#define SRV_MODEL_NAMELEN 128

typedef struct srv_entry srv_entry;
typedef struct srv_repo srv_repo;

/* One loaded version of a model, read-only once built; reference-counted (repo.c). */
typedef struct srv_model {
    char name[SRV_MODEL_NAMELEN];
    long version;
    char path[4096];
    rnvp_model *model;
    int C, H, W, D;
    rnvp_latent_part layout[RNVP_MAX_SCALES];
    int nparts;
    srv_queue *q;               /* its own queue on the server's scheduler */
    size_t workspace;           /* the context's batch workspace */
    size_t bytes;               /* charged to the model memory: weights, workspace, batch buffers */
    _Atomic int refs;           /* the repository's (while served) and each request's */
    srv_repo *repo;
    srv_entry *entry;
    /* the file it was loaded from, to see a change on a rescan */
    unsigned long long dev, ino;
    long long size;
    struct timespec mtime;
} srv_model;

/* One model name: the versions being served (ascending; the last is the default). */
struct srv_entry {
    char name[SRV_MODEL_NAMELEN];
    srv_model *vers[SRV_MAX_VERSIONS];
    int nvers;
    int unloaded;               /* unloaded on request: rescans leave it until a load */
    char reason[SRV_ERRLEN];    /* why the last load failed ("" when it did not) */
    _Atomic long long requests, loads, load_failures;
};

/* An empty repository on scheduler sc for the options' --model or --model-repository. */
srv_repo *srv_repo_create(const srv_options *o, srv_sched *sc, char *err, size_t errcap);
/* Releases every served version (each is freed when its last request lets go). */
void srv_repo_free(srv_repo *r);
/* Scans the repository (start-up and SIGHUP): loads new models and the versions that changed on
 * disk, drops versions and models gone from it; models unloaded on request stay unloaded. A
 * version that fails to load leaves the copy being served serving. Returns the number of
 * failures (err: the first one's reason). */
int srv_repo_scan(srv_repo *r, char *err, size_t errcap);
/* POST /v2/repository/models/{m}/load: (re)builds every wanted version of `name` from disk and
 * swaps it in, even when unchanged. 0, or the HTTP status (404 unknown, 400 load failure, the old
 * copy serving) with err filled. */
int srv_repo_load(srv_repo *r, const char *name, char *err, size_t errcap);
/* POST .../unload: stops serving `name` (requests using it finish). 0, or 404 with err. */
int srv_repo_unload(srv_repo *r, const char *name, char *err, size_t errcap);
/* A reference to the version of `name` to serve (version 0: the highest loaded; name NULL or "":
 * the only model loaded), which the caller gives back with srv_model_release. NULL with *status
 * (400 several models and none named, 404 unknown model or version, 503 not loaded) and err. */
srv_model *srv_repo_acquire(srv_repo *r, const char *name, long version, int *status, char *err, size_t errcap);
void srv_model_release(srv_model *m);   /* NULL: nothing; the last reference frees it */
int srv_repo_nready(srv_repo *r);       /* models with a version loaded */
/* the loaded models' names ('a', 'b') into buf */
void srv_repo_names(srv_repo *r, char *buf, size_t cap);
void srv_repo_names_json(srv_repo *r, srv_buf *b);   /* ["a", "b"] */
int srv_repo_versions(srv_repo *r, const char *name, long *out, int cap);   /* the loaded versions, ascending */
/* The repository index (Triton's repository extension): a JSON array of {"name", "version",
 * "state", "reason"}; ready_only: only the loaded versions. */
void srv_repo_index(srv_repo *r, srv_buf *b, int ready_only);
/* the per-model Prometheus series (realnvp_model_*) */
void srv_repo_metrics(srv_repo *r, srv_buf *b);

/* ---- the server (lifecycle.c; the request path: http.h) ---- */

typedef struct srv_server srv_server;

/* Binds host:port (the socket is ours, so "port in use" is reported as such) and starts the
 * libmicrohttpd daemon; /readyz answers 503 until srv_server_load succeeds. The options are
 * copied (their strings must outlive the server). Returns NULL with a one-line reason in err. */
srv_server *srv_server_start(const srv_options *o, char *err, size_t errcap);
int srv_server_port(const srv_server *s);   /* the bound port (useful with port 0) */
/* Starts the batch worker, loads the models (--model, or every model of --model-repository) and
 * turns ready. -1 with err when no model loads (--model: when it does not). */
int srv_server_load(srv_server *s, char *err, size_t errcap);
/* SIGHUP: rescans the repository (srv_repo_scan) and logs the outcome; returns the failures */
int srv_server_rescan(srv_server *s);
/* Graceful stop: /readyz turns 503, no new connections are accepted, requests in progress
 * finish (waiting at most timeout_s for them), then the daemon stops. Returns the number of
 * requests that were still in progress at the deadline (0 when everything finished). */
int srv_server_drain(srv_server *s, double timeout_s);
void srv_server_free(srv_server *s);

#endif
