/* endpoints.c: what each endpoint of bin/realnvp-server does with a request: its query
 * parameters, decoding its inputs (PNG, multipart, latents JSON) into a batch-queue group under
 * the memory budget, and encoding the results (JSON, PNG). Leaves out libmicrohttpd (http.c):
 * everything here prepares req.out and runs on the work pool or, for the cheap GETs, on the
 * HTTP threads. */
#include "http.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

/* an error reply is prepared; the stage ends (returns 0) */
#define FAIL(...) (srv_req_error(__VA_ARGS__), 0)
#define DONE(...) (srv_req_reply(__VA_ARGS__), 0)
#define DONE_BUF(...) (srv_req_reply_buf(__VA_ARGS__), 0)

int srv_endpoint_route(const char *url)
{
    static const char *paths[] = {"/log_prob", "/encode", "/decode", "/interpolate", "/sample",
                                  "/healthz",  "/readyz", "/metrics", "/info",       "/"};
    for (int i = 0; i <= EP_INDEX; i++)
        if (!strcmp(url, paths[i])) return i;
    return srv_oip_route(url, NULL, NULL);   /* /v2/... or EP_OTHER */
}

const char *srv_endpoint_allow(int ep)
{
    if (ep <= EP_INTERPOLATE || ep == EP_V2_INFER || SRV_OIP_REPO_EP(ep)) return "POST";
    return ep == EP_SAMPLE ? "GET" : "GET, HEAD";   /* HEAD would compute a whole sample */
}

/* every endpoint with a model takes "model" (srv_endpoint_model) */
static const char *const lp_params[] = {"samples", "seed", "model", NULL};
static const char *const no_params[] = {NULL};
static const char *const model_params[] = {"model", NULL};
static const char *const dec_params[] = {"format", "cols", "model", NULL};
static const char *const sample_params[] = {"n", "temp", "seed", "cols", "format", "latents", "model", NULL};
static const char *const interp_params[] = {"steps", "mode", "format", "model", NULL};
static const char *const formats[] = {"png", "json", NULL};
static const char *const modes[] = {"linear", "spherical", NULL};

static uint64_t random_seed(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = (uint64_t)time(NULL) ^ (uint64_t)srv_now() * 1000003u;
    return v & ((1ULL << 53) - 1);   /* exact in every JSON reader */
}

int srv_endpoint_model(req *r, char *err, size_t cap)
{
    if (SRV_OIP_EP(r->ep)) return srv_oip_target(r, err, cap);
    if (r->ep > EP_SAMPLE && r->ep != EP_INFO) return 0;
    const char *name = NULL;
    if (!srv_query_parse(&r->qp, r->query, err, cap)) name = srv_query_get(&r->qp, "model");   /* else: params says why */
    int status = 0;
    r->m = srv_repo_acquire(r->s->repo, name, 0, &status, err, cap);
    return r->m ? 0 : status;
}

int srv_endpoint_params(req *r, char *err, size_t cap)
{
    srv_server *s = r->s;
    if (srv_query_parse(&r->qp, r->query, err, cap)) return -1;
    const char *const *allowed = r->ep == EP_LOG_PROB ? lp_params
                                 : r->ep == EP_DECODE ? dec_params
                                 : r->ep == EP_SAMPLE ? sample_params
                                 : r->ep == EP_INTERPOLATE ? interp_params
                                 : r->ep == EP_ENCODE || r->ep == EP_INFO ? model_params
                                                      : no_params;
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
        if (r->nimg > s->o.max_jobs_per_request) {
            snprintf(err, cap, "n=%d is more than one request may compute (%d, --max-jobs-per-request)", r->nimg,
                     s->o.max_jobs_per_request);
            return -1;
        }
    }
    if (r->fmt == FMT_PNG && (r->ep == EP_SAMPLE || r->ep == EP_INTERPOLATE)) {   /* refuse before computing */
        rnvp_error e;
        if (rnvp_png_grid_check(r->ep == EP_SAMPLE ? r->nimg : r->steps, r->m->C, r->m->H, r->m->W, r->cols, &e)) {
            snprintf(err, cap, "%s; use format=json or fewer images or columns", e.msg);
            return -1;
        }
    }
    if (r->ep == EP_LOG_PROB && r->draws && !r->seed_given) r->seed = random_seed();
    return 0;
}



/* Enqueues r->g: 1, or 0 with the refusal prepared. */
static int enqueue(req *r)
{
    srv_server *s = r->s;
    srv_group *g = &r->g;
    g->done = srv_http_group_done;
    g->done_arg = r;
    g->client = r->client;
    g->fd = r->fd;
    if (g->n > s->o.max_jobs_per_request || g->n > s->o.queue_size)
        return FAIL(r, 400, "too_many_jobs",
                    "this request needs %d computations, more than one request may queue (%d, %s)", g->n,
                    s->o.max_jobs_per_request < s->o.queue_size ? s->o.max_jobs_per_request : s->o.queue_size,
                    s->o.max_jobs_per_request < s->o.queue_size ? "--max-jobs-per-request" : "--queue-size");
    int rc = srv_queue_push(r->m->q, g);
    if (rc == -2) {
        srv_metrics_rejected(s->metrics, "draining", 1);
        return FAIL(r, 503, "draining", "the server is shutting down; retry on another instance");
    }
    if (rc) {
        srv_metrics_rejected(s->metrics, "queue_full", 1);
        return FAIL(r, 503, "queue_full", "the batching queue is full (%d images waiting at most); retry later",
                    s->o.queue_size);
    }
    return 1;
}

int srv_endpoint_enqueue(req *r) { return enqueue(r); }

/* Charges n bytes to the budget: 0, or -1 with the 503 prepared. */
static int charge(req *r, size_t n)
{
    if (!srv_req_charge(r, n)) return 0;
    srv_req_error_budget(r, n);
    return -1;
}

/* (nimg) names, (nimg, C, H, W) pixels and (njobs) results, charged; 0, or -1 with the reply prepared */
static int alloc_work(req *r, int nimg, int njobs)
{
    size_t D = (size_t)r->m->D;
    if (charge(r, (size_t)nimg * (sizeof *r->names + D) + (size_t)njobs * 2 * sizeof(double))) return -1;
    r->nimg = nimg;
    r->names = calloc((size_t)nimg, sizeof *r->names);
    r->pixels = malloc((size_t)nimg * D);
    r->lp = malloc((size_t)njobs * sizeof *r->lp);
    r->bpd = malloc((size_t)njobs * sizeof *r->bpd);
    if (r->names && r->pixels && r->lp && r->bpd) return 0;
    srv_req_error(r, 500, "internal", "out of memory");
    return -1;
}

/* decodes one PNG into image i; an error reply is prepared on failure (returns 1) */
static int decode_png(req *r, int i, const char *data, size_t len)
{
    rnvp_error e;
    enum rnvp_status st =
        rnvp_png_decode(r->pixels + (size_t)i * (size_t)r->m->D, data, len, r->m->C, r->m->H, r->m->W, &e);
    if (st == RNVP_OK) return 0;
    const char *who = r->names[i];
    if (st == RNVP_ERR_SIZE)
        srv_req_error(r, 422, "wrong_image_size", "%s: %s", who, e.msg);
    else if (st == RNVP_ERR_NOMEM)
        srv_req_error(r, 500, "internal", "%s: %s", who, e.msg);
    else
        srv_req_error(r, 400, "bad_png", "%s: %s", who, e.msg);
    return 1;
}

static int start_images(req *r)
{
    srv_server *s = r->s;
    char err[SRV_ERRLEN];
    int draws = r->ep == EP_LOG_PROB && r->draws ? r->draws : 1;
    if (!strncasecmp(r->ctype, "image/png", 9)) {
        if (alloc_work(r, 1, draws)) return 0;
        strcpy(r->names[0], "image");
        if (decode_png(r, 0, r->body, r->len)) return 0;
    } else {
        char boundary[80];
        if (srv_multipart_boundary(boundary, sizeof boundary, r->ctype, err, sizeof err))
            return FAIL(r, 400, "bad_multipart", "%s", err);
        size_t pbytes = (size_t)s->o.max_samples * sizeof(srv_part);
        if (charge(r, pbytes)) return 0;
        srv_part *parts = malloc(pbytes);
        if (!parts) return FAIL(r, 500, "internal", "out of memory");
        int np = srv_multipart_parse(parts, s->o.max_samples, r->body, r->len, boundary, err, sizeof err);
        int ok = np >= 0;
        if (!ok) srv_req_error(r, 400, "bad_multipart", "%s", err);
        else if ((long)np * draws > s->o.max_jobs_per_request) {   /* before any decoding */
            ok = 0;
            srv_req_error(r, 400, "too_many_jobs",
                      "%d images x %d draws = %ld computations, more than one request may queue (%d, "
                      "--max-jobs-per-request)", np, draws, (long)np * draws, s->o.max_jobs_per_request);
        } else if (alloc_work(r, np, np * draws)) ok = 0;
        for (int i = 0; ok && i < np; i++) {
            memcpy(r->names[i], parts[i].name, sizeof r->names[i]);
            if (decode_png(r, i, parts[i].data, parts[i].len)) ok = 0;
        }
        free(parts);
        srv_req_release(r, pbytes);
        if (!ok) return 0;
    }
    srv_req_free_body(r);   /* the pixels are all we keep */
    if (r->ep == EP_INTERPOLATE && r->nimg != 2)
        return FAIL(r, 400, "bad_multipart",
                    "/interpolate takes exactly two PNG images (the ends A and B) as multipart/form-data parts; "
                    "this request has %d", r->nimg);
    if (r->ep == EP_LOG_PROB) {   /* the complexity correction: each input's own lossless size */
        if (charge(r, (size_t)r->nimg * sizeof *r->png_bpd)) return 0;
        r->png_bpd = malloc((size_t)r->nimg * sizeof *r->png_bpd);
        if (!r->png_bpd) return FAIL(r, 500, "internal", "out of memory");
        for (int i = 0; i < r->nimg; i++) {
            rnvp_error e;
            if (rnvp_png_bits_per_dim(&r->png_bpd[i], r->pixels + (size_t)i * (size_t)r->m->D, r->m->C, r->m->H, r->m->W, &e))
                return FAIL(r, 500, "internal", "%s", e.msg);
        }
    }
    srv_group *g = &r->g;
    g->pixels = r->pixels;
    g->log_prob = r->lp;
    g->bits_per_dim = r->bpd;
    if (r->ep == EP_ENCODE || r->ep == EP_INTERPOLATE) {
        g->op = OP_ENCODE;
        g->n = r->nimg;
        if (charge(r, (size_t)r->nimg * (size_t)r->m->D * sizeof *r->z)) return 0;
        r->z = malloc((size_t)r->nimg * (size_t)r->m->D * sizeof *r->z);
        if (!r->z) return FAIL(r, 500, "internal", "out of memory");
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

static int start_decode(req *r)
{
    srv_server *s = r->s;
    char err[SRV_ERRLEN];
    int n;
    /* the parse tree's memory, bounded first, is charged while it lives */
    size_t tree;
    if (srv_latents_precheck(r->body, r->len, r->m->D, s->o.max_samples, &tree, err, sizeof err))
        return FAIL(r, 400, "bad_latents", "%s", err);
    if (charge(r, tree)) return 0;
    int rc = srv_latents_parse(&r->z, &n, r->body, r->len, r->m->D, s->o.max_samples, r->m->layout, r->m->nparts, err, sizeof err);
    srv_req_release(r, tree);
    if (rc) return FAIL(r, 400, "bad_latents", "%s", err);
    srv_req_free_body(r);
    r->nimg = n;
    if (charge(r, (size_t)n * (size_t)r->m->D * (sizeof *r->z + 1))) return 0;
    if (r->fmt == FMT_PNG) {   /* refuse before computing */
        rnvp_error e;
        if (rnvp_png_grid_check(n, r->m->C, r->m->H, r->m->W, r->cols, &e))
            return FAIL(r, 400, "bad_parameter", "%s; use format=json or fewer images or columns", e.msg);
    }
    r->pixels = malloc((size_t)n * (size_t)r->m->D);
    if (!r->pixels) return FAIL(r, 500, "internal", "out of memory");
    r->g.op = OP_DECODE;
    r->g.n = n;
    r->g.z = r->z;
    r->g.out_pixels = r->pixels;
    return enqueue(r);
}

static int start_sample(req *r)
{
    int n = r->nimg;
    if (charge(r, (size_t)n * (size_t)r->m->D * (1 + sizeof *r->z))) return 0;
    r->pixels = malloc((size_t)n * (size_t)r->m->D);
    r->z = malloc((size_t)n * (size_t)r->m->D * sizeof *r->z);
    if (!r->pixels || !r->z) return FAIL(r, 500, "internal", "out of memory");
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
static int start_interp_decode(req *r)
{
    size_t D = (size_t)r->m->D;
    if (charge(r, (size_t)r->steps * D * (1 + sizeof(float)))) return 0;
    float *z = malloc((size_t)r->steps * D * sizeof *z);
    uint8_t *px = malloc((size_t)r->steps * D);
    if (!z || !px) {
        free(z);
        free(px);
        return FAIL(r, 500, "internal", "out of memory");
    }
    rnvp_error e;
    if (rnvp_interpolate_latents(z, r->z, r->z + D, r->m->D, r->steps, r->spherical, &e)) {
        free(z);
        free(px);
        return FAIL(r, 500, "internal", "%s", e.msg);
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

void srv_endpoint_put_layout(srv_buf *b, const srv_model *m)
{
    srv_buf_printf(b, "[");
    for (int i = 0; i < m->nparts; i++)
        srv_buf_printf(b, "%s{\"offset\": %d, \"channels\": %d, \"height\": %d, \"width\": %d}", i ? ", " : "",
                       m->layout[i].offset, m->layout[i].channels, m->layout[i].height, m->layout[i].width);
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

int srv_endpoint_group_failed(req *r)
{
    srv_server *s = r->s;
    srv_group *g = &r->g;
    if (g->shutdown)
        return !FAIL(r, 503, "draining", "the server is shutting down and could not compute this request before its "
                                         "drain deadline; retry on another instance");
    if (g->cancelled) return !FAIL(r, 499, "client_closed", "the client disconnected before the computation");
    if (g->expired)
        return !FAIL(r, 504, "timeout",
                     "%d of %d computations waited in the queue longer than the request timeout (%ld ms); "
                     "the server is overloaded, retry later",
                     g->expired, g->n, s->o.request_timeout_ms);
    if (g->failed) return !FAIL(r, 500, "internal", "computation failed: %s", g->err);
    return 0;
}

static int finish_request(req *r)
{
    if (srv_endpoint_group_failed(r)) return 0;
    if (r->ep == EP_INTERPOLATE && r->stage == 0) return start_interp_decode(r);
    srv_buf b = {0};
    char seedhdr[32];
    snprintf(seedhdr, sizeof seedhdr, "%llu", (unsigned long long)r->seed);
    if (r->ep == EP_LOG_PROB || r->ep == EP_ENCODE) {
        srv_buf_printf(&b, "{\"model\": ");
        srv_buf_json_string(&b, r->m->name);
        if (r->ep == EP_LOG_PROB && r->draws)
            srv_buf_printf(&b, ", \"samples\": %d, \"seed\": %llu", r->draws, (unsigned long long)r->seed);
        srv_buf_printf(&b, ", \"results\": [");
        for (int i = 0; i < r->nimg; i++) {
            double lp, bpd;
            if (r->ep == EP_ENCODE) {
                lp = r->lp[i];
                bpd = -lp / ((double)r->m->D * log(2.0));
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
            srv_buf_printf(&b, ", \"dim\": %d, \"layout\": ", r->m->D);
            srv_endpoint_put_layout(&b, r->m);
            srv_buf_printf(&b, ", \"latents\": ");
            put_latents(&b, r->z, r->nimg, r->m->D);
        }
        srv_buf_printf(&b, "}\n");
        return DONE_BUF(r, 200, "application/json", &b, NULL, NULL);
    }
    /* decode and sample: images */
    rnvp_error e;
    const char *hn = r->ep == EP_SAMPLE ? "X-Realnvp-Seed" : NULL;
    if (r->fmt == FMT_PNG) {
        uint8_t *png = NULL;
        size_t len = 0;
        if (rnvp_png_encode_grid(&png, &len, r->pixels, r->nimg, r->m->C, r->m->H, r->m->W, r->cols, -1, &e))
            return FAIL(r, 500, "internal", "%s", e.msg);
        return DONE(r, 200, "image/png", (char *)png, len, hn, seedhdr);
    }
    srv_buf_printf(&b, "{\"model\": ");
    srv_buf_json_string(&b, r->m->name);
    if (r->ep == EP_SAMPLE) {
        srv_buf_printf(&b, ", \"n\": %d, \"temp\": ", r->nimg);
        srv_buf_json_double(&b, r->temp, 17);
        srv_buf_printf(&b, ", \"seed\": %llu", (unsigned long long)r->seed);
    }
    if (r->ep == EP_INTERPOLATE)
        srv_buf_printf(&b, ", \"steps\": %d, \"mode\": \"%s\"", r->steps, modes[r->spherical]);
    srv_buf_printf(&b, ", \"width\": %d, \"height\": %d, \"channels\": %d, \"images\": [", r->m->W, r->m->H, r->m->C);
    for (int i = 0; i < r->nimg; i++) {
        uint8_t *png = NULL;
        size_t len = 0;
        if (rnvp_png_encode_grid(&png, &len, r->pixels + (size_t)i * (size_t)r->m->D, 1, r->m->C, r->m->H, r->m->W, 1, -1, &e)) {
            free(b.p);
            return FAIL(r, 500, "internal", "%s", e.msg);
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
        srv_endpoint_put_layout(&b, r->m);
        srv_buf_printf(&b, ", \"latents\": ");
        put_latents(&b, r->z, r->nimg, r->m->D);
    }
    srv_buf_printf(&b, "}\n");
    return DONE_BUF(r, 200, "application/json", &b, hn, seedhdr);
}

void srv_endpoint_simple(req *r)
{
    srv_server *s = r->s;
    srv_buf b = {0};
    int ready = atomic_load(&s->ready), draining = atomic_load(&s->draining);
    if (SRV_OIP_EP(r->ep)) {
        srv_oip_simple(r);
        return;
    }
    switch (r->ep) {
    case EP_HEALTHZ:
        srv_buf_printf(&b, "{\"status\": \"ok\"}\n");
        srv_req_reply_buf(r, 200, "application/json", &b, NULL, NULL);
        return;
    case EP_READYZ:
        if (ready && !draining && srv_repo_nready(s->repo) > 0) {
            srv_buf_printf(&b, "{\"status\": \"ready\"}\n");
            srv_req_reply_buf(r, 200, "application/json", &b, NULL, NULL);
            r->out.keep = 1;   /* decided before any drain: the drain's own close is for its 503s */
            return;
        }
        srv_buf_printf(&b, "{\"status\": \"%s\"}\n", draining ? "draining" : ready ? "no_model_loaded" : "loading");
        srv_req_reply_buf(r, 503, "application/json", &b, MHD_HTTP_HEADER_RETRY_AFTER, "1");
        return;
    case EP_METRICS: {
        /* /metrics is open while the models load: s->sc and s->repo are set (by srv_server_load) only
         * before ready turns on, and read only after ready was seen (the atomic orders them) */
        srv_gauges gv = {.queue_depth = ready ? srv_sched_depth(s->sc) : 0, .inflight = atomic_load(&s->inflight),
                         .ready = ready && srv_repo_nready(s->repo) > 0, .draining = draining,
                         .mem_used = atomic_load(&s->mem_used), .mem_budget = s->o.memory_budget};
        char names[1024] = "";
        if (ready) srv_repo_names(s->repo, names, sizeof names);
        srv_metrics_render(s->metrics, &b, &gv, names);
        if (ready) srv_repo_metrics(s->repo, &b);
        srv_req_reply_buf(r, 200, "text/plain; version=0.0.4; charset=utf-8", &b, NULL, NULL);
        return;
    }
    case EP_INFO:
        srv_server_info(s, r->m, &b);
        srv_req_reply_buf(r, 200, "application/json", &b, NULL, NULL);
        return;
    case EP_INDEX: {   /* the demo page is static: open without the key (its API calls send it) */
        char *page = malloc(srv_web_index_len);
        if (!page) {
            srv_req_error(r, 500, "internal", "out of memory");
            return;
        }
        memcpy(page, srv_web_index, srv_web_index_len);
        srv_req_reply(r, 200, "text/html; charset=utf-8", page, srv_web_index_len, NULL, NULL);
        return;
    }
    default:
        srv_req_error(r, 500, "internal", "no handler");
    }
}

/* ---- the heavy stages (on the work pool) ---- */

int srv_endpoint_prepare(req *r)
{
    if (SRV_OIP_REPO_EP(r->ep)) return srv_oip_repository(r);
    if (r->ep == EP_V2_INFER) return srv_oip_prepare(r);
    if (r->ep == EP_DECODE) return start_decode(r);
    if (r->ep == EP_SAMPLE) return start_sample(r);
    return start_images(r);
}

int srv_endpoint_finish(req *r) { return r->ep == EP_V2_INFER ? srv_oip_finish(r) : finish_request(r); }
