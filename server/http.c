/* http.c: the libmicrohttpd side of bin/realnvp-server: routing, limits, API key, request
 * bodies, replies (JSON, PNG), the access log and graceful draining. Leaves out parsing
 * (query.c, multipart.c, latents.c), batching (queue.c) and flags (main.c).
 *
 * Request life cycle: the URI-log callback allocates a `req` (the connection's *req_cls) and
 * counts it in flight; the access handler checks route, method, key, size and type on its first
 * call, collects the body, then turns it into one srv_group, enqueues it and suspends the
 * connection (inside the queue's lock, so the worker cannot resume it first). The worker resumes
 * it when the group is done; the handler's next call writes the reply. The completion callback
 * writes the access-log line, counts the metrics and frees the req. No handler ever waits. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* server/web/index.html, embedded at build time (tools/embed.sh, build/gen/web_index.c) */
extern const unsigned char rnvp_web_index[];
extern const size_t rnvp_web_index_len;

struct srv_server {
    srv_options o;
    struct MHD_Daemon *d;
    int listen_fd;
    int port;
    rnvp_model *model;
    int C, H, W, D;
    rnvp_latent_part layout[RNVP_MAX_SCALES];
    int nparts;
    char model_name[128];
    char *info_json;
    srv_queue *q;
    srv_metrics *metrics;
    char *api_key;
    size_t api_key_len;
    FILE *access;
    int access_owned;
    pthread_mutex_t log_mu;
    atomic_int inflight, suspended, ready, draining;
};

enum phase { PH_NEW, PH_BODY, PH_QUEUED };
enum fmt { FMT_PNG, FMT_JSON };

typedef struct req {
    srv_server *s;
    struct MHD_Connection *conn;
    char *uri;               /* the raw request target (path and query) */
    const char *query;       /* after '?' in uri, or NULL */
    int ep;
    int post;
    int deferred;            /* a non-POST request waits for its final call */
    enum phase phase;
    double t0;
    char ip[64];
    char method[12];
    /* body */
    char *body;
    size_t len, cap, discarded;
    size_t declared;         /* Content-Length (at most --max-body-bytes); 0: none given */
    int too_big;
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
    /* for the log */
    int status;
    size_t bytes;
} req;

/* ---- replies ---- */

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "realnvp-server: %s\n", msg);
}

static enum MHD_Result reply(req *r, int status, const char *ctype, char *data, size_t len, const char *hname,
                             const char *hval)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, len ? data : (void *)"", len ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!len) free(data);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (hname) MHD_add_response_header(resp, hname, hval);
    if (atomic_load(&r->s->draining)) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    r->status = status;
    r->bytes = len;
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result reply_buf(req *r, int status, const char *ctype, srv_buf *b, const char *hname, const char *hval)
{
    if (b->oom) {
        free(b->p);
        static const char oom[] = "{\"error\": {\"code\": \"internal\", \"message\": \"out of memory\"}}\n";
        return reply(r, 500, "application/json", strdup(oom), sizeof oom - 1, NULL, NULL);
    }
    return reply(r, status, ctype, b->p, b->len, hname, hval);
}

__attribute__((format(printf, 4, 5))) static enum MHD_Result error_reply(req *r, int status, const char *code,
                                                                         const char *fmt, ...)
{
    char msg[SRV_ERRLEN + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_buf b = {0};
    srv_buf_printf(&b, "{\"error\": {\"code\": \"%s\", \"message\": ", code);
    srv_buf_json_string(&b, msg);
    srv_buf_printf(&b, "}}\n");
    const char *hn = NULL, *hv = NULL;
    if (status == 503) hn = MHD_HTTP_HEADER_RETRY_AFTER, hv = "1";
    if (status == 401) hn = MHD_HTTP_HEADER_WWW_AUTHENTICATE, hv = "Bearer";
    if (status == 405) {
        hn = MHD_HTTP_HEADER_ALLOW;
        hv = r->ep <= EP_INTERPOLATE ? "POST" : "GET, HEAD";
    }
    return reply_buf(r, status, "application/json", &b, hn, hv);
}

/* ---- routing and checks ---- */

static int route(const char *url)
{
    static const char *paths[] = {"/log_prob", "/encode", "/decode", "/interpolate", "/sample",
                                  "/healthz",  "/readyz", "/metrics", "/info",       "/"};
    for (int i = 0; i < EP_OTHER; i++)
        if (!strcmp(url, paths[i])) return i;
    return EP_OTHER;
}

static int key_ok(srv_server *s, struct MHD_Connection *c)
{
    if (!s->api_key) return 1;
    const char *k = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-API-Key");
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!k && a && !strncasecmp(a, "Bearer ", 7)) {
        k = a + 7;
        while (*k == ' ') k++;
    }
    if (!k) return 0;
    size_t n = strlen(k);
    unsigned char diff = n != s->api_key_len;
    for (size_t i = 0; i < s->api_key_len; i++) diff |= (unsigned char)(s->api_key[i] ^ (i < n ? k[i] : 0));
    return diff == 0;
}

static const char *const lp_params[] = {"samples", "seed", NULL};
static const char *const no_params[] = {NULL};
static const char *const dec_params[] = {"format", "cols", NULL};
static const char *const sample_params[] = {"n", "temp", "seed", "cols", "format", "latents", NULL};
static const char *const interp_params[] = {"steps", "mode", "format", NULL};
static const char *const formats[] = {"png", "json", NULL};
static const char *const modes[] = {"linear", "spherical", NULL};

static uint64_t random_seed(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = (uint64_t)time(NULL) ^ (uint64_t)srv_now() * 1000003u;
    return v & ((1ULL << 53) - 1);   /* exact in every JSON reader */
}

/* query parameters for the endpoint; -1 with err */
static int read_params(req *r, char *err, size_t cap)
{
    srv_server *s = r->s;
    if (srv_query_parse(&r->qp, r->query, err, cap)) return -1;
    const char *const *allowed = r->ep == EP_LOG_PROB ? lp_params
                                 : r->ep == EP_DECODE ? dec_params
                                 : r->ep == EP_SAMPLE ? sample_params
                                 : r->ep == EP_INTERPOLATE ? interp_params
                                                      : no_params;
    if (r->ep == EP_HEALTHZ || r->ep == EP_READYZ || r->ep == EP_METRICS || r->ep == EP_INFO) return 0;
    if (srv_query_check_allowed(&r->qp, allowed, err, cap)) return -1;
    long v;
    if (r->ep == EP_LOG_PROB) {
        if (srv_query_int(&r->qp, "samples", 1, s->o.max_draws, 0, &v, err, cap)) return -1;
        r->draws = (int)v;
        if (srv_query_u64(&r->qp, "seed", &r->seed, &r->seed_given, err, cap)) return -1;
        if (r->seed_given && !r->draws) {
            snprintf(err, cap, "seed needs samples=K (without samples, u = 0.5 and no noise is drawn)");
            return -1;
        }
    }
    if (r->ep == EP_DECODE || r->ep == EP_SAMPLE || r->ep == EP_INTERPOLATE) {
        int f = srv_query_choice(&r->qp, "format", formats, FMT_PNG, err, cap);
        if (f < 0) return -1;
        r->fmt = (enum fmt)f;
        if (srv_query_int(&r->qp, "cols", 1, 4096, 0, &v, err, cap)) return -1;
        r->cols = (int)v;
    }
    if (r->ep == EP_INTERPOLATE) {
        if (srv_query_int(&r->qp, "steps", 2, 64, 8, &v, err, cap)) return -1;
        r->steps = (int)v;
        r->cols = r->steps;   /* one row: a strip */
        int m = srv_query_choice(&r->qp, "mode", modes, 0, err, cap);
        if (m < 0) return -1;
        r->spherical = m == 1;
    }
    if (r->ep == EP_SAMPLE) {
        if (srv_query_int(&r->qp, "n", 1, s->o.max_samples, 16, &v, err, cap)) return -1;
        r->nimg = (int)v;
        if (srv_query_double(&r->qp, "temp", 0, 100, 1.0, &r->temp, err, cap)) return -1;
        if (srv_query_u64(&r->qp, "seed", &r->seed, &r->seed_given, err, cap)) return -1;
        if (!r->seed_given) r->seed = random_seed();
        if (srv_query_int(&r->qp, "latents", 0, 1, 0, &v, err, cap)) return -1;
        r->latents_out = (int)v;
        if (r->latents_out && r->fmt != FMT_JSON) {
            snprintf(err, cap, "latents=1 needs format=json (a PNG cannot carry latents)");
            return -1;
        }
    }
    if (r->ep == EP_LOG_PROB && r->draws && !r->seed_given) r->seed = random_seed();
    return 0;
}

/* ---- the work ---- */

static void on_done(srv_group *g, void *arg)
{
    req *r = arg;
    (void)g;
    atomic_fetch_sub(&r->s->suspended, 1);
    MHD_resume_connection(r->conn);
}

static void suspend_cb(void *arg)
{
    req *r = arg;
    atomic_fetch_add(&r->s->suspended, 1);
    MHD_suspend_connection(r->conn);
}

static enum MHD_Result enqueue(req *r)
{
    srv_group *g = &r->g;
    g->done = on_done;
    g->done_arg = r;
    if (g->n > r->s->o.queue_size)
        return error_reply(r, 400, "too_many_images",
                           "this request needs %d computations, more than the queue holds (%d, --queue-size)", g->n,
                           r->s->o.queue_size);
    r->phase = PH_QUEUED;
    if (srv_queue_push(r->s->q, g, suspend_cb, r)) {
        srv_metrics_rejected(r->s->metrics, "queue_full");
        r->phase = PH_BODY;
        return error_reply(r, 503, "queue_full", "the batching queue is full (%d images waiting at most); retry later",
                           r->s->o.queue_size);
    }
    return MHD_YES;
}

static int alloc_work(req *r, int nimg, int njobs)
{
    size_t D = (size_t)r->s->D;
    r->nimg = nimg;
    r->names = calloc((size_t)nimg, sizeof *r->names);
    r->pixels = malloc((size_t)njobs * D);
    r->lp = malloc((size_t)njobs * sizeof *r->lp);
    r->bpd = malloc((size_t)njobs * sizeof *r->bpd);
    return r->names && r->pixels && r->lp && r->bpd ? 0 : -1;
}

/* decodes one PNG into image i; an error reply is queued on failure (returns 1) */
static int decode_png(req *r, int i, const char *data, size_t len, enum MHD_Result *ret)
{
    srv_server *s = r->s;
    rnvp_error e;
    enum rnvp_status st =
        rnvp_png_decode(r->pixels + (size_t)i * (size_t)s->D, data, len, s->C, s->H, s->W, &e);
    if (st == RNVP_OK) return 0;
    const char *who = r->names[i];
    if (st == RNVP_ERR_SIZE)
        *ret = error_reply(r, 422, "wrong_image_size", "%s: %s", who, e.msg);
    else if (st == RNVP_ERR_NOMEM)
        *ret = error_reply(r, 500, "internal", "%s: %s", who, e.msg);
    else
        *ret = error_reply(r, 400, "bad_png", "%s: %s", who, e.msg);
    return 1;
}

static enum MHD_Result start_images(req *r)
{
    srv_server *s = r->s;
    char err[SRV_ERRLEN];
    enum MHD_Result ret = MHD_YES;
    int draws = r->ep == EP_LOG_PROB && r->draws ? r->draws : 1;
    if (!strncasecmp(r->ctype, "image/png", 9)) {
        if (alloc_work(r, 1, draws)) return error_reply(r, 500, "internal", "out of memory");
        strcpy(r->names[0], "image");
        if (decode_png(r, 0, r->body, r->len, &ret)) return ret;
    } else {
        char boundary[80];
        if (srv_multipart_boundary(boundary, sizeof boundary, r->ctype, err, sizeof err))
            return error_reply(r, 400, "bad_multipart", "%s", err);
        srv_part *parts = malloc((size_t)s->o.max_samples * sizeof *parts);
        if (!parts) return error_reply(r, 500, "internal", "out of memory");
        int np = srv_multipart_parse(parts, s->o.max_samples, r->body, r->len, boundary, err, sizeof err);
        if (np < 0) {
            free(parts);
            return error_reply(r, 400, "bad_multipart", "%s", err);
        }
        if (alloc_work(r, np, np * draws)) {
            free(parts);
            return error_reply(r, 500, "internal", "out of memory");
        }
        for (int i = 0; i < np; i++) {
            memcpy(r->names[i], parts[i].name, sizeof r->names[i]);
            if (decode_png(r, i, parts[i].data, parts[i].len, &ret)) {
                free(parts);
                return ret;
            }
        }
        free(parts);
    }
    free(r->body);   /* the pixels are all we keep */
    r->body = NULL;
    if (r->ep == EP_INTERPOLATE && r->nimg != 2)
        return error_reply(r, 400, "bad_multipart",
                           "/interpolate takes exactly two PNG images (the ends A and B) as multipart/form-data parts; "
                           "this request has %d", r->nimg);
    if (r->ep == EP_LOG_PROB) {   /* the complexity correction: each input's own lossless size */
        r->png_bpd = malloc((size_t)r->nimg * sizeof *r->png_bpd);
        if (!r->png_bpd) return error_reply(r, 500, "internal", "out of memory");
        for (int i = 0; i < r->nimg; i++) {
            rnvp_error e;
            if (rnvp_png_bits_per_dim(&r->png_bpd[i], r->pixels + (size_t)i * (size_t)s->D, s->C, s->H, s->W, &e))
                return error_reply(r, 500, "internal", "%s", e.msg);
        }
    }
    srv_group *g = &r->g;
    g->pixels = r->pixels;
    g->log_prob = r->lp;
    g->bits_per_dim = r->bpd;
    if (r->ep == EP_ENCODE || r->ep == EP_INTERPOLATE) {
        g->op = OP_ENCODE;
        g->n = r->nimg;
        r->z = malloc((size_t)r->nimg * (size_t)s->D * sizeof *r->z);
        if (!r->z) return error_reply(r, 500, "internal", "out of memory");
        g->z = r->z;
    } else if (r->draws) {
        g->op = OP_LOG_PROB_NOISE;
        g->n = r->nimg * r->draws;
        g->draws = r->draws;
        g->seed = r->seed;
    } else {
        g->op = OP_LOG_PROB;
        g->n = r->nimg;
    }
    return enqueue(r);
}

static enum MHD_Result start_decode(req *r)
{
    srv_server *s = r->s;
    char err[SRV_ERRLEN];
    int n;
    if (srv_latents_parse(&r->z, &n, r->body, r->len, s->D, s->o.max_samples, s->layout, s->nparts, err, sizeof err))
        return error_reply(r, 400, "bad_latents", "%s", err);
    free(r->body);
    r->body = NULL;
    r->nimg = n;
    r->pixels = malloc((size_t)n * (size_t)s->D);
    if (!r->pixels) return error_reply(r, 500, "internal", "out of memory");
    r->g.op = OP_DECODE;
    r->g.n = n;
    r->g.z = r->z;
    r->g.out_pixels = r->pixels;
    return enqueue(r);
}

static enum MHD_Result start_sample(req *r)
{
    srv_server *s = r->s;
    int n = r->nimg;
    r->pixels = malloc((size_t)n * (size_t)s->D);
    r->z = malloc((size_t)n * (size_t)s->D * sizeof *r->z);
    if (!r->pixels || !r->z) return error_reply(r, 500, "internal", "out of memory");
    r->g.op = OP_DECODE;
    r->g.n = n;
    r->g.z = r->z;
    r->g.out_pixels = r->pixels;
    r->g.sample = 1;
    r->g.temp = r->temp;
    r->g.seed = r->seed;
    return enqueue(r);
}

/* /interpolate, once the two ends are encoded: the points between them, decoded as a second group */
static enum MHD_Result start_interp_decode(req *r)
{
    srv_server *s = r->s;
    size_t D = (size_t)s->D;
    float *z = malloc((size_t)r->steps * D * sizeof *z);
    uint8_t *px = malloc((size_t)r->steps * D);
    if (!z || !px) {
        free(z);
        free(px);
        return error_reply(r, 500, "internal", "out of memory");
    }
    rnvp_error e;
    if (rnvp_interpolate_latents(z, r->z, r->z + D, s->D, r->steps, r->spherical, &e)) {
        free(z);
        free(px);
        return error_reply(r, 500, "internal", "%s", e.msg);
    }
    free(r->z);
    free(r->pixels);
    r->z = z;
    r->pixels = px;
    r->nimg = r->steps;
    r->stage = 1;
    memset(&r->g, 0, sizeof r->g);
    r->g.op = OP_DECODE;
    r->g.n = r->steps;
    r->g.z = r->z;
    r->g.out_pixels = r->pixels;
    return enqueue(r);
}

/* ---- results ---- */

static void put_layout(srv_buf *b, const srv_server *s)
{
    srv_buf_printf(b, "[");
    for (int i = 0; i < s->nparts; i++)
        srv_buf_printf(b, "%s{\"offset\": %d, \"channels\": %d, \"height\": %d, \"width\": %d}", i ? ", " : "",
                       s->layout[i].offset, s->layout[i].channels, s->layout[i].height, s->layout[i].width);
    srv_buf_printf(b, "]");
}

static void put_latents(srv_buf *b, const float *z, int n, int d)
{
    srv_buf_printf(b, "[");
    for (int i = 0; i < n; i++) {
        srv_buf_printf(b, "%s[", i ? ", " : "");
        for (int k = 0; k < d; k++) {
            if (k) srv_buf_put(b, ",", 1);
            srv_buf_json_double(b, (double)z[(size_t)i * (size_t)d + (size_t)k], 9);
        }
        srv_buf_printf(b, "]");
    }
    srv_buf_printf(b, "]");
}

static enum MHD_Result finish_request(req *r)
{
    srv_server *s = r->s;
    srv_group *g = &r->g;
    if (g->expired)
        return error_reply(r, 504, "timeout",
                           "%d of %d computations waited in the queue longer than the request timeout (%ld ms); "
                           "the server is overloaded, retry later",
                           g->expired, g->n, s->o.request_timeout_ms);
    if (g->failed) return error_reply(r, 500, "internal", "computation failed: %s", g->err);
    if (r->ep == EP_INTERPOLATE && r->stage == 0) return start_interp_decode(r);
    srv_buf b = {0};
    char seedhdr[32];
    snprintf(seedhdr, sizeof seedhdr, "%llu", (unsigned long long)r->seed);
    if (r->ep == EP_LOG_PROB || r->ep == EP_ENCODE) {
        srv_buf_printf(&b, "{\"model\": ");
        srv_buf_json_string(&b, s->model_name);
        if (r->ep == EP_LOG_PROB && r->draws)
            srv_buf_printf(&b, ", \"samples\": %d, \"seed\": %llu", r->draws, (unsigned long long)r->seed);
        srv_buf_printf(&b, ", \"results\": [");
        for (int i = 0; i < r->nimg; i++) {
            double lp, bpd;
            if (r->ep == EP_ENCODE) {
                lp = r->lp[i];
                bpd = -lp / ((double)s->D * log(2.0));
            } else if (r->draws) {
                double a = 0, c = 0;
                for (int k = 0; k < r->draws; k++) a += r->lp[i * r->draws + k], c += r->bpd[i * r->draws + k];
                lp = a / r->draws;
                bpd = c / r->draws;
            } else {
                lp = r->lp[i];
                bpd = r->bpd[i];
            }
            srv_buf_printf(&b, "%s{\"name\": ", i ? ", " : "");
            srv_buf_json_string(&b, r->names[i]);
            srv_buf_printf(&b, ", \"log_prob\": ");
            srv_buf_json_double(&b, lp, 17);
            srv_buf_printf(&b, ", \"bits_per_dim\": ");
            srv_buf_json_double(&b, bpd, 17);
            if (r->ep == EP_LOG_PROB) {
                srv_buf_printf(&b, ", \"png_bits_per_dim\": ");
                srv_buf_json_double(&b, r->png_bpd[i], 17);
                srv_buf_printf(&b, ", \"ood_score\": ");
                srv_buf_json_double(&b, bpd - r->png_bpd[i], 17);
            }
            srv_buf_printf(&b, "}");
        }
        srv_buf_printf(&b, "]");
        if (r->ep == EP_ENCODE) {
            srv_buf_printf(&b, ", \"dim\": %d, \"layout\": ", s->D);
            put_layout(&b, s);
            srv_buf_printf(&b, ", \"latents\": ");
            put_latents(&b, r->z, r->nimg, s->D);
        }
        srv_buf_printf(&b, "}\n");
        return reply_buf(r, 200, "application/json", &b, NULL, NULL);
    }
    /* decode and sample: images */
    rnvp_error e;
    const char *hn = r->ep == EP_SAMPLE ? "X-Realnvp-Seed" : NULL;
    if (r->fmt == FMT_PNG) {
        uint8_t *png = NULL;
        size_t len = 0;
        if (rnvp_png_encode_grid(&png, &len, r->pixels, r->nimg, s->C, s->H, s->W, r->cols, -1, &e))
            return error_reply(r, 500, "internal", "%s", e.msg);
        return reply(r, 200, "image/png", (char *)png, len, hn, seedhdr);
    }
    srv_buf_printf(&b, "{\"model\": ");
    srv_buf_json_string(&b, s->model_name);
    if (r->ep == EP_SAMPLE) {
        srv_buf_printf(&b, ", \"n\": %d, \"temp\": ", r->nimg);
        srv_buf_json_double(&b, r->temp, 17);
        srv_buf_printf(&b, ", \"seed\": %llu", (unsigned long long)r->seed);
    }
    if (r->ep == EP_INTERPOLATE)
        srv_buf_printf(&b, ", \"steps\": %d, \"mode\": \"%s\"", r->steps, modes[r->spherical]);
    srv_buf_printf(&b, ", \"width\": %d, \"height\": %d, \"channels\": %d, \"images\": [", s->W, s->H, s->C);
    for (int i = 0; i < r->nimg; i++) {
        uint8_t *png = NULL;
        size_t len = 0;
        if (rnvp_png_encode_grid(&png, &len, r->pixels + (size_t)i * (size_t)s->D, 1, s->C, s->H, s->W, 1, -1, &e)) {
            free(b.p);
            return error_reply(r, 500, "internal", "%s", e.msg);
        }
        char *b64 = srv_base64(png, len);
        free(png);
        if (!b64) b.oom = 1;
        else {
            srv_buf_printf(&b, "%s\"", i ? ", " : "");
            srv_buf_put(&b, b64, strlen(b64));
            srv_buf_put(&b, "\"", 1);
            free(b64);
        }
    }
    srv_buf_printf(&b, "]");
    if (r->latents_out) {
        srv_buf_printf(&b, ", \"layout\": ");
        put_layout(&b, s);
        srv_buf_printf(&b, ", \"latents\": ");
        put_latents(&b, r->z, r->nimg, s->D);
    }
    srv_buf_printf(&b, "}\n");
    return reply_buf(r, 200, "application/json", &b, hn, seedhdr);
}

/* ---- the small GET endpoints ---- */

static enum MHD_Result simple_get(req *r)
{
    srv_server *s = r->s;
    srv_buf b = {0};
    int ready = atomic_load(&s->ready), draining = atomic_load(&s->draining);
    switch (r->ep) {
    case EP_HEALTHZ:
        srv_buf_printf(&b, "{\"status\": \"ok\"}\n");
        return reply_buf(r, 200, "application/json", &b, NULL, NULL);
    case EP_READYZ:
        if (ready && !draining) {
            srv_buf_printf(&b, "{\"status\": \"ready\"}\n");
            return reply_buf(r, 200, "application/json", &b, NULL, NULL);
        }
        srv_buf_printf(&b, "{\"status\": \"%s\"}\n", draining ? "draining" : "loading");
        return reply_buf(r, 503, "application/json", &b, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    case EP_METRICS:
        srv_metrics_render(s->metrics, &b, ready ? srv_queue_depth(s->q) : 0, atomic_load(&s->inflight), ready, draining,
                           s->model_name);
        return reply_buf(r, 200, "text/plain; version=0.0.4; charset=utf-8", &b, NULL, NULL);
    case EP_INFO:
        srv_buf_put(&b, s->info_json, strlen(s->info_json));
        return reply_buf(r, 200, "application/json", &b, NULL, NULL);
    default:
        return error_reply(r, 500, "internal", "no handler");
    }
}

/* ---- libmicrohttpd callbacks ---- */

static void *uri_cb(void *cls, const char *uri, struct MHD_Connection *c)
{
    srv_server *s = cls;
    req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->s = s;
    r->conn = c;
    r->t0 = srv_now();
    r->uri = strdup(uri ? uri : "");
    if (r->uri) {
        char *qm = strchr(r->uri, '?');
        if (qm) r->query = qm + 1;
    }
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, r->ip, sizeof r->ip);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, r->ip, sizeof r->ip);
    }
    if (!r->ip[0]) strcpy(r->ip, "-");
    atomic_fetch_add(&s->inflight, 1);
    return r;
}

static void free_req(req *r)
{
    free(r->uri);
    free(r->body);
    free(r->names);
    free(r->pixels);
    free(r->z);
    free(r->lp);
    free(r->bpd);
    free(r->png_bpd);
    free(r);
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode toe)
{
    srv_server *s = cls;
    (void)c;
    req *r = *req_cls;
    if (!r) return;
    *req_cls = NULL;
    double t = srv_now() - r->t0;
    int status = r->status;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && !status) status = 499;   /* client went away */
    srv_metrics_request(s->metrics, r->ep, status, t);
    if (s->access) {
        char when[32];
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        char uri[200];
        snprintf(uri, sizeof uri, "%s", r->uri ? r->uri : "-");
        for (char *p = uri; *p; p++)
            if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e || *p == '"') *p = '?';
        char line[512];
        int n = snprintf(line, sizeof line,
                         "%s.%03ldZ %s \"%s %s\" %d %zu images=%d batch=%d wait_ms=%.2f compute_ms=%.2f total_ms=%.2f%s\n",
                         when, ts.tv_nsec / 1000000, r->ip, r->method[0] ? r->method : "-", uri, status, r->bytes,
                         r->g.n ? r->nimg : 0, r->g.max_batch_seen, r->g.max_wait * 1e3, r->g.compute * 1e3, t * 1e3,
                         toe != MHD_REQUEST_TERMINATED_COMPLETED_OK ? " aborted" : "");
        pthread_mutex_lock(&s->log_mu);
        fwrite(line, 1, n < (int)sizeof line ? (size_t)n : sizeof line - 1, s->access);
        fflush(s->access);
        pthread_mutex_unlock(&s->log_mu);
    }
    free_req(r);
    atomic_fetch_sub(&s->inflight, 1);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **req_cls)
{
    srv_server *s = cls;
    (void)version;
    req *r = *req_cls;
    if (!r) return MHD_NO;   /* out of memory in uri_cb: drop the connection */
    r->conn = c;
    if (r->phase == PH_QUEUED) return finish_request(r);
    if (r->phase == PH_BODY) {
        if (*upload_size) {
            size_t n = *upload_size;
            *upload_size = 0;
            if (r->too_big || r->len + n > (size_t)s->o.max_body_bytes) {
                /* chunked upload over the limit: discard it (bounded), answer 413 at its end */
                r->too_big = 1;
                r->discarded += n;
                free(r->body);
                r->body = NULL;
                r->len = r->cap = 0;
                return r->discarded > 4 * (size_t)s->o.max_body_bytes ? MHD_NO : MHD_YES;
            }
            if (r->len + n > r->cap) {
                /* With a Content-Length (already checked against the limit), one allocation of
                 * exactly that size: a fixed 64 KiB start for bodies of a few hundred bytes left
                 * most of each block unused, and many of them alive at once raised the
                 * allocator's high-water mark for good (docs/reliability.md, soak). Without one
                 * (chunked), doubling from 4 KiB, never past the limit. */
                size_t want = r->len + n, cap;
                if (!r->cap && r->declared >= want) cap = r->declared;
                else {
                    cap = r->cap ? r->cap : 4096;
                    while (cap < want) cap *= 2;
                    if (cap > (size_t)s->o.max_body_bytes) cap = (size_t)s->o.max_body_bytes;   /* >= want, checked above */
                }
                char *p = realloc(r->body, cap + 1);
                if (!p) return error_reply(r, 500, "internal", "out of memory for the request body");
                r->body = p;
                r->cap = cap;
            }
            memcpy(r->body + r->len, upload, n);
            r->len += n;
            return MHD_YES;
        }
        if (r->too_big)
            return error_reply(r, 413, "body_too_large", "request body is larger than the limit (%ld bytes, --max-body-bytes)",
                               s->o.max_body_bytes);
        if (!r->len) return error_reply(r, 400, "empty_body", "the request body is empty (expected %s)",
                                        r->ep == EP_DECODE ? "a JSON object {\"latents\": ...}" : "a PNG image or a multipart/form-data upload of PNGs");
        if (r->ep == EP_DECODE) return start_decode(r);
        return start_images(r);
    }

    /* first call: the headers are in. Requests other than POST are handled on the final call,
     * once complete: a reply queued before that makes libmicrohttpd close the connection. */
    if (strcmp(method, "POST")) {
        if (!r->deferred) {
            r->deferred = 1;
            return MHD_YES;
        }
        if (*upload_size) {   /* a body nobody asked for: skip it */
            *upload_size = 0;
            return MHD_YES;
        }
    }
    snprintf(r->method, sizeof r->method, "%s", method);
    r->ep = route(url);
    r->post = !strcmp(method, "POST");
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (r->ep == EP_OTHER)
        return error_reply(r, 404, "not_found",
                           "no such endpoint: %.100s (endpoints: POST /log_prob, /encode, /decode, /interpolate; GET /sample, "
                           "/info, /healthz, /readyz, /metrics, / (the demo page))", url);
    int wants_post = r->ep <= EP_INTERPOLATE;
    if ((wants_post && !r->post) || (!wants_post && !get))
        return error_reply(r, 405, "method_not_allowed", "%s %s is not allowed; use %s", method, url,
                           wants_post ? "POST" : "GET");
    if (r->ep == EP_HEALTHZ || r->ep == EP_READYZ || r->ep == EP_METRICS) return simple_get(r);
    if (r->ep == EP_INDEX) {   /* the demo page is static: open without the key (its API calls send it) */
        char *page = malloc(rnvp_web_index_len);
        if (!page) return error_reply(r, 500, "internal", "out of memory");
        memcpy(page, rnvp_web_index, rnvp_web_index_len);
        return reply(r, 200, "text/html; charset=utf-8", page, rnvp_web_index_len, NULL, NULL);
    }
    if (!key_ok(s, c))
        return error_reply(r, 401, "unauthorized",
                           "missing or wrong API key (send Authorization: Bearer KEY or X-API-Key: KEY)");
    if (!atomic_load(&s->ready))
        return error_reply(r, 503, "not_ready", "the model is still loading; retry shortly");
    char err[SRV_ERRLEN];
    if (read_params(r, err, sizeof err)) return error_reply(r, 400, "bad_parameter", "%s", err);
    if (!r->post) return r->ep == EP_SAMPLE ? start_sample(r) : simple_get(r);

    /* POST: check the declared size and type before reading the body */
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (errno || *end || v > (unsigned long long)s->o.max_body_bytes)
            return error_reply(r, 413, "body_too_large",
                               "request body of %.30s bytes is larger than the limit (%ld bytes, --max-body-bytes)", cl,
                               s->o.max_body_bytes);
        r->declared = (size_t)v;
    }
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    snprintf(r->ctype, sizeof r->ctype, "%s", ct ? ct : "");
    int ok;
    if (r->ep == EP_DECODE) ok = !strncasecmp(r->ctype, "application/json", 16) && (!r->ctype[16] || r->ctype[16] == ';' || r->ctype[16] == ' ');
    else
        ok = (!strncasecmp(r->ctype, "image/png", 9) && (!r->ctype[9] || r->ctype[9] == ';' || r->ctype[9] == ' ')) ||
             !strncasecmp(r->ctype, "multipart/form-data", 19);
    if (!ok)
        return error_reply(r, 415, "unsupported_media_type", "Content-Type '%.60s' is not accepted here; expected %s",
                           ct ? ct : "(none)",
                           r->ep == EP_DECODE ? "application/json" : "image/png (one image) or multipart/form-data (PNG parts)");
    r->phase = PH_BODY;
    return MHD_YES;
}

static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    fprintf(stderr, "realnvp-server: libmicrohttpd: %s\n", msg);
}

/* ---- life cycle ---- */

static int bind_socket(srv_server *s, char *err, size_t cap)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof port, "%d", s->o.port);
    int rc = getaddrinfo(s->o.host, port, &hints, &ai);
    if (rc) {
        snprintf(err, cap, "cannot resolve --host %s: %s", s->o.host, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        snprintf(err, cap, "cannot create a socket: %s", strerror(errno));
        freeaddrinfo(ai);
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 1024)) {
        int e = errno;
        snprintf(err, cap, "cannot listen on %s port %d: %s%s", s->o.host, s->o.port, strerror(e),
                 e == EADDRINUSE ? " (another process uses it; choose --port)" : "");
        close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    s->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                       : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    s->listen_fd = fd;
    return 0;
}

static char *read_key(const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, cap, "cannot read --api-key-file %s: %s", path, strerror(errno));
        return NULL;
    }
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = buf;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    size_t l = strcspn(p, "\r\n");
    while (l && (p[l - 1] == ' ' || p[l - 1] == '\t')) l--;
    p[l] = 0;
    if (!l) {
        snprintf(err, cap, "--api-key-file %s is empty (expected the key on its first line)", path);
        return NULL;
    }
    return strdup(p);
}

srv_server *srv_server_start(const srv_options *o, char *err, size_t cap)
{
    srv_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    s->o = *o;
    s->listen_fd = -1;
    pthread_mutex_init(&s->log_mu, NULL);
    s->metrics = srv_metrics_create();
    if (!s->metrics) {
        snprintf(err, cap, "out of memory");
        goto fail;
    }
    if (o->api_key_file) {
        s->api_key = read_key(o->api_key_file, err, cap);
        if (!s->api_key) goto fail;
        s->api_key_len = strlen(s->api_key);
    }
    if (!o->access_log || !strcmp(o->access_log, "-")) s->access = stderr;
    else if (strcmp(o->access_log, "off")) {
        s->access = fopen(o->access_log, "a");
        if (!s->access) {
            snprintf(err, cap, "cannot open --access-log %s: %s", o->access_log, strerror(errno));
            goto fail;
        }
        s->access_owned = 1;
    }
    if (bind_socket(s, err, cap)) goto fail;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, handler, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
                            MHD_OPTION_LISTEN_SOCKET, s->listen_fd,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)o->http_threads, MHD_OPTION_URI_LOG_CALLBACK, uri_cb, s,
                            MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)o->conn_timeout_s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o->per_ip_limit, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, cap, "libmicrohttpd failed to start on %s port %d (see the message above)", o->host, s->port);
        goto fail;
    }
    s->listen_fd = -1;   /* the daemon owns it now (MHD_quiesce_daemon hands it back) */
    return s;
fail:
    srv_server_free(s);
    return NULL;
}

int srv_server_port(const srv_server *s) { return s->port; }

/* the model's name in replies: --model-name, else metadata "name", else the file name without
 * its extension (its directory's name when that is "model") */
static void derive_name(srv_server *s)
{
    const char *mn = rnvp_model_metadata(s->model, "name");
    if (s->o.model_name) snprintf(s->model_name, sizeof s->model_name, "%s", s->o.model_name);
    else if (mn) snprintf(s->model_name, sizeof s->model_name, "%s", mn);
    else {
        char path[512];
        snprintf(path, sizeof path, "%s", s->o.model);
        char *base = strrchr(path, '/');
        char *dir = NULL;
        if (base) *base = 0, dir = strrchr(path, '/'), base++;
        else base = path;
        char *dot = strrchr(base, '.');
        if (dot && dot != base) *dot = 0;
        if (!strcmp(base, "model") && base != path) base = dir ? dir + 1 : path;
        snprintf(s->model_name, sizeof s->model_name, "%.127s", base);
    }
}

static void build_info(srv_server *s)
{
    srv_buf b = {0};
    char cj[1024];
    rnvp_config_to_json(rnvp_model_config(s->model), cj, sizeof cj);
    srv_buf_printf(&b, "{\"model\": ");
    srv_buf_json_string(&b, s->model_name);
    srv_buf_printf(&b, ", \"server_version\": \"%s\", \"config\": %s, \"width\": %d, \"height\": %d, \"channels\": %d, "
                       "\"dim\": %d, \"layout\": ",
                   SRV_VERSION, cj, s->W, s->H, s->C, s->D);
    put_layout(&b, s);
    srv_buf_printf(&b, ", \"parameters\": %zu, \"flops_per_image\": %.6g, \"blas_core\": ", rnvp_model_num_params(s->model),
                   rnvp_model_flops(s->model));
    srv_buf_json_string(&b, rnvp_blas_core());
    srv_buf_printf(&b, ", \"metadata\": {");
    for (int i = 0; i < rnvp_model_num_metadata(s->model); i++) {
        const char *k = rnvp_model_metadata_key(s->model, i);
        if (i) srv_buf_printf(&b, ", ");
        srv_buf_json_string(&b, k);
        srv_buf_printf(&b, ": ");
        srv_buf_json_string(&b, rnvp_model_metadata(s->model, k));
    }
    const srv_options *o = &s->o;
    srv_buf_printf(&b, "}, \"limits\": {\"max_batch\": %d, \"max_delay_us\": %ld, \"queue_size\": %d, "
                       "\"request_timeout_ms\": %ld, \"max_body_bytes\": %ld, \"max_samples\": %d, \"max_draws\": %d, "
                       "\"compute_threads\": %d, \"http_threads\": %d, \"api_key_required\": %s}}\n",
                   o->max_batch, o->max_delay_us, o->queue_size, o->request_timeout_ms, o->max_body_bytes, o->max_samples,
                   o->max_draws, o->compute_threads, o->http_threads, s->api_key ? "true" : "false");
    s->info_json = b.oom ? NULL : b.p;
    if (b.oom) free(b.p);
}

int srv_server_load(srv_server *s, char *err, size_t cap)
{
    rnvp_error e;
    if (rnvp_model_load(&s->model, s->o.model, &e)) {
        snprintf(err, cap, "cannot load the model: %s", e.msg);
        return -1;
    }
    const rnvp_config *c = rnvp_model_config(s->model);
    s->C = c->channels, s->H = c->height, s->W = c->width, s->D = rnvp_model_dim(s->model);
    s->nparts = rnvp_model_num_latent_parts(s->model);
    for (int i = 0; i < s->nparts; i++) s->layout[i] = rnvp_model_latent_part(s->model, i);
    derive_name(s);
    build_info(s);
    if (!s->info_json) {
        snprintf(err, cap, "out of memory");
        return -1;
    }
    rnvp_set_num_threads(s->o.compute_threads);
    s->q = srv_queue_create(s->model, s->o.queue_size, s->o.max_batch, s->o.max_delay_us, s->o.request_timeout_ms,
                            s->metrics, &e);
    if (!s->q) {
        snprintf(err, cap, "cannot start the batching queue: %s", e.msg);
        return -1;
    }
    atomic_store(&s->ready, 1);
    log_line("model %s loaded (%d x %d x %d, D = %d); ready", s->model_name, s->W, s->H, s->C, s->D);
    return 0;
}

int srv_server_drain(srv_server *s, double timeout_s)
{
    atomic_store(&s->draining, 1);
    if (s->d) {
        MHD_socket fd = MHD_quiesce_daemon(s->d);
        if (fd != MHD_INVALID_SOCKET) close(fd);
        s->listen_fd = -1;
    }
    double end = srv_now() + timeout_s;
    while (atomic_load(&s->inflight) > 0 && srv_now() < end) usleep(2000);
    int left = atomic_load(&s->inflight);
    /* suspended requests always finish (the queue drops jobs older than the request timeout);
     * the daemon must not stop while one is suspended */
    while (atomic_load(&s->suspended) > 0) usleep(2000);
    if (s->d) MHD_stop_daemon(s->d);
    s->d = NULL;
    return left;
}

void srv_server_free(srv_server *s)
{
    if (!s) return;
    if (s->d) {
        while (atomic_load(&s->suspended) > 0) usleep(2000);
        MHD_stop_daemon(s->d);
    }
    if (s->listen_fd >= 0) close(s->listen_fd);
    srv_queue_free(s->q);
    rnvp_model_free(s->model);
    srv_metrics_free(s->metrics);
    free(s->api_key);
    free(s->info_json);
    if (s->access_owned) fclose(s->access);
    pthread_mutex_destroy(&s->log_mu);
    free(s);
}
