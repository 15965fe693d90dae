/* oip_endpoints.c: the Open Inference Protocol's /v2 endpoints on bin/realnvp-server's request path: the
 * model and version of the path, the GETs, and inference as log_prob, encode or decode jobs of the queue.
 * Leaves out parsing and encoding (oip.c, no MHD), libmicrohttpd and the checks common to every endpoint (http.c). */
#include "http.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* an error reply is prepared; the stage ends (returns 0) */
#define FAIL(...) (srv_req_error(__VA_ARGS__), 0)

/* the name of model {m} or {m}-decoder */
static void model_name(const srv_model *m, int decoder, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s", m->name, decoder ? "-decoder" : "");
}

int srv_oip_target(req *r, char *err, size_t cap)
{
    int repo_ep = SRV_OIP_REPO_EP(r->ep) && r->ep != EP_V2_REPO_INDEX;
    if (r->ep != EP_V2_MODEL && r->ep != EP_V2_MODEL_READY && r->ep != EP_V2_INFER && !repo_ep) return 0;
    char m[SRV_OIP_NAMELEN], v[SRV_OIP_NAMELEN];
    if (srv_oip_route(r->uri ? r->uri : "", m, v) != r->ep) {   /* the raw path disagrees with the decoded one */
        snprintf(err, cap, "no such endpoint: %.100s", r->uri ? r->uri : "");
        return 404;
    }
    if (repo_ep) {   /* load and unload name a model that may not be loaded: kept for the pool */
        snprintf(r->repo_model, sizeof r->repo_model, "%s", m);
        return 0;
    }
    long version = 0;
    if (v[0]) {
        char *end;
        version = strtol(v, &end, 10);
        if (*end || version < 1 || v[0] == '0') {
            snprintf(err, cap, "model '%.100s' has no version '%.40s' (versions are positive integers)", m, v);
            return 404;
        }
    }
    size_t ml = strlen(m);
    r->oip.decoder = ml > 8 && !strcmp(m + ml - 8, "-decoder");
    if (r->oip.decoder) m[ml - 8] = 0;
    int status = 0;
    r->m = srv_repo_acquire(r->s->repo, m, version, &status, err, cap);
    return r->m ? 0 : status;
}

void srv_oip_simple(req *r)
{
    srv_server *s = r->s;
    srv_buf b = {0};
    int ready = atomic_load(&s->ready) && !atomic_load(&s->draining);
    char name[SRV_MODEL_NAMELEN + 16] = "";
    if (r->m) model_name(r->m, r->oip.decoder, name, sizeof name);
    switch (r->ep) {
    case EP_V2_SERVER:
        srv_oip_server_metadata(&b);
        break;
    case EP_V2_LIVE:
        srv_buf_printf(&b, "{\"live\": true}\n");
        break;
    case EP_V2_READY:
    case EP_V2_MODEL_READY:
        if (r->ep == EP_V2_READY) ready = ready && srv_repo_nready(s->repo) > 0;
        srv_buf_printf(&b, "{");
        if (r->ep == EP_V2_MODEL_READY) {
            srv_buf_printf(&b, "\"name\": ");
            srv_buf_json_string(&b, name);
            srv_buf_printf(&b, ", \"version\": \"%ld\", ", r->m->version);
        }
        srv_buf_printf(&b, "\"ready\": %s}\n", ready ? "true" : "false");
        if (!ready) {
            srv_req_reply_buf(r, 503, "application/json", &b, MHD_HTTP_HEADER_RETRY_AFTER, "1");
            return;
        }
        srv_req_reply_buf(r, 200, "application/json", &b, NULL, NULL);
        r->out.keep = 1;   /* true was decided before any drain: the drain's own close is for its 503s */
        return;
    case EP_V2_MODEL: {
        long vers[SRV_MAX_VERSIONS];
        int nv = srv_repo_versions(s->repo, r->m->name, vers, SRV_MAX_VERSIONS);
        srv_oip_model_metadata(&b, name, vers, nv, r->oip.decoder, r->m->C, r->m->H, r->m->W);
        break;
    }
    default:
        srv_req_error(r, 500, "internal", "no handler");
        return;
    }
    srv_req_reply_buf(r, 200, "application/json", &b, NULL, NULL);
}

int srv_oip_repository(req *r)
{
    srv_server *s = r->s;
    char err[SRV_ERRLEN + 128];
    int ready_only = 0;
    if (srv_oip_repo_parse(r->body ? r->body : "", r->len, &ready_only, err, sizeof err))
        return FAIL(r, 400, "bad_request", "%s", err);
    srv_req_free_body(r);
    srv_buf b = {0};
    if (r->ep == EP_V2_REPO_INDEX) {
        srv_repo_index(s->repo, &b, ready_only);
        srv_req_reply_buf(r, 200, "application/json", &b, NULL, NULL);
        return 0;
    }
    int st = r->ep == EP_V2_REPO_LOAD ? srv_repo_load(s->repo, r->repo_model, err, sizeof err)
                                      : srv_repo_unload(s->repo, r->repo_model, err, sizeof err);
    if (st) return FAIL(r, st, "bad_request", "%s", err);
    srv_req_reply(r, 200, "application/json", NULL, 0, NULL, NULL);
    return 0;
}

static uint64_t random_seed(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = (uint64_t)time(NULL) ^ (uint64_t)srv_now() * 1000003u;
    return v & ((1ULL << 53) - 1);   /* exact in every JSON reader */
}

/* Charges n bytes to the budget: 0, or -1 with the 503 prepared. */
static int charge(req *r, size_t n)
{
    if (!srv_req_charge(r, n)) return 0;
    srv_req_error_budget(r, n);
    return -1;
}

static int wants(const srv_oip_req *q, int out)
{
    for (int i = 0; i < q->nout; i++)
        if (q->out[i] == out) return 1;
    return 0;
}

int srv_oip_prepare(req *r)
{
    srv_server *s = r->s;
    srv_oip_req *q = &r->oip;
    int dec = q->decoder;
    char err[SRV_ERRLEN];
    /* the parse tree's memory, bounded first, is charged while it lives */
    size_t tree;
    if (srv_oip_precheck(r->body, r->len, r->oip_hlen, dec, r->m->C, r->m->H, r->m->W, s->o.max_samples, &tree, err, sizeof err))
        return FAIL(r, 400, "bad_request", "%s", err);
    if (charge(r, tree)) return 0;
    int rc = srv_oip_parse(q, r->body, r->len, r->oip_hlen, dec, r->m->C, r->m->H, r->m->W, s->o.max_samples, s->o.max_draws, err,
                           sizeof err);
    srv_req_release(r, tree);
    if (rc) return FAIL(r, 400, "bad_request", "%s", err);
    srv_req_free_body(r);
    r->pixels = q->pixels;   /* r's from here on: freed with r */
    r->z = q->z;
    q->pixels = NULL;
    q->z = NULL;
    int n = q->n, K = q->samples, latents = wants(q, OIP_LATENTS);
    size_t D = (size_t)r->m->D;
    r->nimg = n;
    /* jobs: each image (each draw with samples, then each encoding when latents are asked for too), or each vector */
    long jobs = dec ? n : (long)n * (K ? K : 1) + (K && latents ? n : 0);
    int cap = s->o.max_jobs_per_request < s->o.queue_size ? s->o.max_jobs_per_request : s->o.queue_size;
    if (jobs > cap)
        return FAIL(r, 400, "too_many_jobs", "this request needs %ld computations (%d %s%s), more than one request may "
                    "queue (%d, %s)", jobs, n, dec ? "vectors" : "images", K ? " x samples" : "", cap,
                    cap == s->o.max_jobs_per_request ? "--max-jobs-per-request" : "--queue-size");
    srv_group *g = &r->g;
    if (dec) {
        if (charge(r, (size_t)n * D * (sizeof(float) + 1))) return 0;   /* the latents and the images */
        r->pixels = malloc((size_t)n * D);
        if (!r->pixels) return FAIL(r, 500, "internal", "out of memory");
        g->op = OP_DECODE;
        g->n = n;
        g->z = r->z;
        g->out_pixels = r->pixels;
        return srv_endpoint_enqueue(r);
    }
    size_t nlp = (size_t)n * (size_t)(K ? K : 1) + (K && latents ? (size_t)n : 0);
    if (charge(r, (size_t)n * D + nlp * 2 * sizeof(double) + (latents ? (size_t)n * D * sizeof(float) : 0))) return 0;
    r->lp = malloc(nlp * sizeof *r->lp);
    r->bpd = malloc(nlp * sizeof *r->bpd);
    if (latents) r->z = malloc((size_t)n * D * sizeof *r->z);
    if (!r->lp || !r->bpd || (latents && !r->z)) return FAIL(r, 500, "internal", "out of memory");
    g->pixels = r->pixels;
    g->log_prob = r->lp;
    g->bits_per_dim = r->bpd;
    if (K) {   /* as POST /log_prob?samples=K&seed=S */
        if (!q->seed_given) q->seed = random_seed();
        g->op = OP_LOG_PROB_NOISE;
        g->n = n * K;
        g->draws = K;
        g->seed = q->seed;
    } else if (latents) {   /* as POST /encode */
        g->op = OP_ENCODE;
        g->n = n;
        g->z = r->z;
    } else {   /* as POST /log_prob */
        g->op = OP_LOG_PROB;
        g->n = n;
    }
    return srv_endpoint_enqueue(r);
}

int srv_oip_finish(req *r)
{
    srv_oip_req *q = &r->oip;
    srv_group *g = &r->g;
    if (srv_endpoint_group_failed(r)) return 0;
    int n = q->n, K = q->samples;
    if (g->op == OP_LOG_PROB_NOISE) {   /* each image's mean over its draws, in place (as /log_prob?samples=K) */
        for (int i = 0; i < n; i++) {
            double a = 0, c = 0;
            for (int k = 0; k < K; k++) a += r->lp[i * K + k], c += r->bpd[i * K + k];
            r->lp[i] = a / K;
            r->bpd[i] = c / K;
        }
        if (wants(q, OIP_LATENTS)) {   /* then the latents (u = 0.5), their log_prob set aside */
            memset(g, 0, sizeof *g);
            g->op = OP_ENCODE;
            g->n = n;
            g->pixels = r->pixels;
            g->z = r->z;
            g->log_prob = r->lp + (size_t)n * (size_t)K;
            return srv_endpoint_enqueue(r);
        }
    } else if (g->op == OP_ENCODE && !K) {   /* as /encode */
        for (int i = 0; i < n; i++) r->bpd[i] = -r->lp[i] / ((double)r->m->D * log(2.0));
    }
    srv_oip_results res = {.log_prob = r->lp, .bits_per_dim = r->bpd, .z = r->z, .pixels = r->pixels};
    char name[SRV_MODEL_NAMELEN + 16];
    model_name(r->m, q->decoder, name, sizeof name);
    srv_buf b = {0};
    size_t jl = 0;
    srv_oip_encode(&b, &jl, q, &res, name, r->m->C, r->m->H, r->m->W);
    if (!jl) {
        srv_req_reply_buf(r, 200, "application/json", &b, NULL, NULL);
        return 0;
    }
    char hl[32];
    snprintf(hl, sizeof hl, "%zu", jl);
    srv_req_reply_buf(r, 200, "application/octet-stream", &b, "Inference-Header-Content-Length", hl);
    return 0;
}
