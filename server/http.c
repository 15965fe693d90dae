/* http.c: the libmicrohttpd side of bin/realnvp-server: per-request state, routing and checks,
 * the API key, request bodies under the memory budget and the read deadline, suspending work to
 * the pool, sending prepared replies, the access log. Leaves out what endpoints compute
 * (endpoints.c), the work threads (pool.c), start-up and drain (lifecycle.c), parsing and batching.
 *
 * Request life cycle: the URI-log callback allocates a `req` (the connection's *req_cls) and
 * counts it in flight; the access handler checks route, method, key, size and type on its first
 * call and collects the body; then it suspends the connection and hands the req to the work pool
 * (http.h). The pool resumes the connection once req.out holds the reply, and the handler's next
 * call sends it. The completion callback writes the access-log line, counts the metrics and frees
 * the req. No handler ever waits. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

void srv_log(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "realnvp-server: %s\n", msg);
}

/* ---- the memory budget ---- */

int srv_req_charge(req *r, size_t n)
{
    srv_server *s = r->s;
    long long now = atomic_fetch_add(&s->mem_used, (long long)n) + (long long)n;
    if (now > s->o.memory_budget) {
        atomic_fetch_sub(&s->mem_used, (long long)n);
        return -1;
    }
    r->charged += n;
    return 0;
}

void srv_req_release(req *r, size_t n)
{
    if (n > r->charged) n = r->charged;
    atomic_fetch_sub(&r->s->mem_used, (long long)n);
    r->charged -= n;
}

void srv_req_free_body(req *r)
{
    free(r->body);
    r->body = NULL;
    r->len = r->cap = 0;
    srv_req_release(r, r->body_charged);
    r->body_charged = 0;
}

/* ---- prepared replies ---- */

void srv_req_reply(req *r, int status, const char *ctype, char *data, size_t len, const char *hname, const char *hval)
{
    free(r->out.data);
    atomic_fetch_add(&r->s->mem_used, (long long)len);   /* the work is done: no refusal now */
    r->charged += len;
    r->out = (srv_reply){.status = status, .ctype = ctype, .data = data, .len = len, .hname = hname};
    if (hname) snprintf(r->out.hval, sizeof r->out.hval, "%s", hval);
    if (!len) {
        free(data);
        r->out.data = NULL;
    }
}

void srv_req_reply_buf(req *r, int status, const char *ctype, srv_buf *b, const char *hname, const char *hval)
{
    if (b->oom) {
        free(b->p);
        static const char oom[] = "{\"error\": {\"code\": \"internal\", \"message\": \"out of memory\"}}\n";
        srv_req_reply(r, 500, "application/json", strdup(oom), sizeof oom - 1, NULL, NULL);
        return;
    }
    srv_req_reply(r, status, ctype, b->p, b->len, hname, hval);
}

void srv_req_error(req *r, int status, const char *code, const char *fmt, ...)
{
    char msg[SRV_ERRLEN + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_buf b = {0};
    if (SRV_OIP_EP(r->ep) || srv_oip_is_v2(r->uri)) {   /* the Open Inference Protocol's {"error": "..."} */
        srv_buf_printf(&b, "{\"error\": ");
        srv_buf_json_string(&b, msg);
        srv_buf_printf(&b, "}\n");
    } else {
        srv_buf_printf(&b, "{\"error\": {\"code\": \"%s\", \"message\": ", code);
        srv_buf_json_string(&b, msg);
        srv_buf_printf(&b, "}}\n");
    }
    const char *hn = NULL, *hv = NULL;
    if (status == 503) hn = MHD_HTTP_HEADER_RETRY_AFTER, hv = "1";
    if (status == 401) hn = MHD_HTTP_HEADER_WWW_AUTHENTICATE, hv = "Bearer";
    if (status == 405) hn = MHD_HTTP_HEADER_ALLOW, hv = srv_endpoint_allow(r->ep);
    srv_req_reply_buf(r, status, "application/json", &b, hn, hv);
}

void srv_req_error_budget(req *r, size_t want)
{
    srv_metrics_rejected(r->s->metrics, "memory_budget", 1);
    srv_req_error(r, 503, "memory_budget",
              "the server's memory for requests is spent (%lld of %ld bytes in use, this request needs %zu more); "
              "retry later", (long long)atomic_load(&r->s->mem_used), r->s->o.memory_budget, want);
}

/* queues req.out on the connection; libmicrohttpd owns its data from here on */
static enum MHD_Result send_reply(req *r)
{
    srv_reply *o = &r->out;
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        o->len, o->len ? o->data : (void *)"", o->len ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    o->data = NULL;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, o->ctype);
    if (o->hname) MHD_add_response_header(resp, o->hname, o->hval);
    if (atomic_load(&r->s->draining) && !o->keep) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    r->status = o->status;
    r->bytes = o->len;
    enum MHD_Result ret = MHD_queue_response(r->conn, (unsigned)o->status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* an error reply, sent now (HTTP threads only) */
#define SEND_ERROR(r, ...) (srv_req_error((r), __VA_ARGS__), send_reply(r))

/* 400 for a request that names no model when several are served: the error lists them */
static enum MHD_Result send_model_required(req *r, const char *msg)
{
    srv_buf b = {0};
    if (srv_oip_is_v2(r->uri)) {
        srv_buf_printf(&b, "{\"error\": ");
        srv_buf_json_string(&b, msg);
        srv_buf_printf(&b, "}\n");
    } else {
        srv_buf_printf(&b, "{\"error\": {\"code\": \"model_required\", \"message\": ");
        srv_buf_json_string(&b, msg);
        srv_buf_printf(&b, ", \"models\": ");
        srv_repo_names_json(r->s->repo, &b);
        srv_buf_printf(&b, "}}\n");
    }
    srv_req_reply_buf(r, 400, "application/json", &b, NULL, NULL);
    return send_reply(r);
}

/* ---- handing work to the pool ---- */

/* the reply is ready: the handler's next call sends it. The count drops only after the resume,
 * so the drain never stops the daemon between the two. */
static void resume(req *r)
{
    srv_server *s = r->s;
    r->phase = PH_REPLY;
    MHD_resume_connection(r->conn);
    atomic_fetch_sub(&s->suspended, 1);
}

static void task_prepare(srv_task *t)
{
    req *r = (req *)((char *)t - offsetof(req, task));
    if (!srv_endpoint_prepare(r)) resume(r);
}

static void task_finish(srv_task *t)
{
    req *r = (req *)((char *)t - offsetof(req, task));
    if (!srv_endpoint_finish(r)) resume(r);
}

void srv_http_group_done(srv_group *g, void *arg)
{
    req *r = arg;
    (void)g;
    r->task.fn = task_finish;
    srv_pool_submit(r->s->pool, &r->task);
}

/* suspends the connection and hands r to the pool (HTTP threads, from the handler) */
static enum MHD_Result start_work(req *r)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    r->phase = PH_WORK;
    atomic_fetch_add(&r->s->suspended, 1);
    MHD_suspend_connection(r->conn);
    r->task.fn = task_prepare;
    /* a load or unload holds the repository's load lock while it builds: on the work pool, two of them
     * (or one and an index) would hold every work thread, and every other model's requests would wait */
    int slow = r->ep == EP_V2_REPO_LOAD || r->ep == EP_V2_REPO_UNLOAD;
    srv_pool_submit(slow ? r->s->loader : r->s->pool, &r->task);
    return MHD_YES;
}

/* ---- routing and checks ---- */

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

/* ---- libmicrohttpd callbacks ---- */

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void *uri_cb(void *cls, const char *uri, struct MHD_Connection *c)
{
    srv_server *s = cls;
    req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->s = s;
    r->conn = c;
    r->fd = -1;
    r->t0 = srv_now();
    r->uri = strdup(uri ? uri : "");
    r->ep = EP_OTHER;
    if (r->uri) {
        char *qm = strchr(r->uri, '?');
        if (qm) {
            *qm = 0;
            r->ep = srv_endpoint_route(r->uri);   /* known before the handler runs (a client may drop first) */
            *qm = '?';
            r->query = qm + 1;
        } else r->ep = srv_endpoint_route(r->uri);
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
    r->client = fnv1a(r->ip);
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
    free(r->out.data);
    srv_model_release(r->m);   /* the last request on a replaced version frees it */
    atomic_fetch_sub(&r->s->mem_used, (long long)r->charged);
    free(r);
}

/* client text in the access log: spaces, quotes, control and non-ASCII bytes become '?' */
static void log_safe(char *p)
{
    for (; *p; p++)
        if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e || *p == '"') *p = '?';
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
        char meth[sizeof r->method];   /* both come from the client: no spaces, quotes or control bytes */
        snprintf(meth, sizeof meth, "%s", r->method[0] ? r->method : "-");
        log_safe(uri);
        log_safe(meth);
        char model[SRV_MODEL_NAMELEN + 24] = "-";
        if (r->m) snprintf(model, sizeof model, "%s:%ld", r->m->name, r->m->version);
        char line[640];
        int n = snprintf(line, sizeof line,
                         "%s.%03ldZ %s \"%s %s\" %d %zu model=%s images=%d batch=%d wait_ms=%.2f compute_ms=%.2f "
                         "total_ms=%.2f%s\n",
                         when, ts.tv_nsec / 1000000, r->ip, meth, uri, status, r->bytes, model,
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

/* collects one piece of the body under the size limit, the read deadline and the budget */
static enum MHD_Result body_piece(req *r, const char *upload, size_t n)
{
    srv_server *s = r->s;
    if (!r->refuse && r->len + n > (size_t)s->o.max_body_bytes) r->refuse = 413;   /* chunked, over the limit */
    if (r->refuse) {
        /* libmicrohttpd 0.9.75 takes a reply only once the whole request is in: discard the rest
         * (bounded) and answer at its end */
        r->discarded += n;
        srv_req_free_body(r);
        return r->discarded > 4 * (size_t)s->o.max_body_bytes ? MHD_NO : MHD_YES;
    }
    if (r->len + n > r->cap) {
        /* With a Content-Length (already checked against the limit and charged), one allocation
         * of exactly that size: a fixed 64 KiB start for bodies of a few hundred bytes left
         * most of each block unused, and many of them alive at once raised the allocator's
         * high-water mark for good (docs/reliability.md, soak). Without one (chunked), doubling
         * from 4 KiB, never past the limit, each step charged to the budget. */
        size_t want = r->len + n, cap;
        if (!r->cap && r->declared >= want) cap = r->declared;
        else {
            cap = r->cap ? r->cap : 4096;
            while (cap < want) cap *= 2;
            if (cap > (size_t)s->o.max_body_bytes) cap = (size_t)s->o.max_body_bytes;   /* >= want, checked above */
        }
        if (cap + 1 > r->body_charged) {
            size_t more = cap + 1 - r->body_charged;
            if (srv_req_charge(r, more)) {
                r->refuse = 503;
                r->refuse_want = more;
                return body_piece(r, upload, n);
            }
            r->body_charged += more;
        }
        char *p = realloc(r->body, cap + 1);
        if (!p) return SEND_ERROR(r, 500, "internal", "out of memory for the request body");
        r->body = p;
        r->cap = cap;
    }
    memcpy(r->body + r->len, upload, n);
    r->len += n;
    return MHD_YES;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **req_cls)
{
    srv_server *s = cls;
    (void)version;
    req *r = *req_cls;
    if (!r) return MHD_NO;   /* out of memory in uri_cb: drop the connection */
    r->conn = c;
    if (r->phase == PH_REPLY) return send_reply(r);
    if (r->phase == PH_WORK) return MHD_YES;   /* not reached: the connection is suspended */
    if (r->phase == PH_BODY) {
        if (srv_now() - r->t0 > s->o.read_timeout_s) {
            /* no reply can be queued before the body's end (libmicrohttpd 0.9.75): the connection is
             * closed, and the log and metrics say 408 */
            srv_req_free_body(r);
            r->status = 408;
            return MHD_NO;
        }
        if (*upload_size) {
            size_t n = *upload_size;
            *upload_size = 0;
            if (atomic_load(&s->draining) && !r->refuse) r->refuse = 503;   /* refused at its end */
            return body_piece(r, upload, n);
        }
        if (atomic_load(&s->draining)) {
            srv_req_free_body(r);
            srv_metrics_rejected(s->metrics, "draining", 1);
            return SEND_ERROR(r, 503, "draining", "the server is shutting down; retry on another instance");
        }
        if (r->refuse == 503 && r->refuse_want) {
            srv_req_error_budget(r, r->refuse_want);
            return send_reply(r);
        }
        if (r->refuse == 413)
            return SEND_ERROR(r, 413, "body_too_large", "request body is larger than the limit (%ld bytes, --max-body-bytes)",
                              s->o.max_body_bytes);
        if (!r->len && !SRV_OIP_REPO_EP(r->ep))
            return SEND_ERROR(r, 400, "empty_body", "the request body is empty (expected %s)",
                              r->ep == EP_DECODE     ? "a JSON object {\"latents\": ...}"
                              : r->ep == EP_V2_INFER ? "an inference request {\"inputs\": [...]}"
                                                     : "a PNG image or a multipart/form-data upload of PNGs");
        return start_work(r);
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
    r->ep = srv_endpoint_route(url);
    r->post = !strcmp(method, "POST");
    int get = !strcmp(method, "GET") || (!strcmp(method, "HEAD") && r->ep != EP_SAMPLE);
    if (r->ep == EP_OTHER)
        return SEND_ERROR(r, 404, "not_found",
                          "no such endpoint: %.100s (endpoints: POST /log_prob, /encode, /decode, /interpolate; GET /sample, "
                          "/info, /healthz, /readyz, /metrics, / (the demo page); the Open Inference Protocol under /v2)", url);
    int wants_post = r->ep <= EP_INTERPOLATE || r->ep == EP_V2_INFER || SRV_OIP_REPO_EP(r->ep);
    if ((wants_post && !r->post) || (!wants_post && !get))
        return SEND_ERROR(r, 405, "method_not_allowed", "%s %s is not allowed; use %s", method, url, srv_endpoint_allow(r->ep));
    char err[SRV_ERRLEN];
    int open_ep = r->ep == EP_HEALTHZ || r->ep == EP_READYZ || r->ep == EP_METRICS || r->ep == EP_INDEX ||
                  r->ep == EP_V2_LIVE || r->ep == EP_V2_READY;
    if (!open_ep && !key_ok(s, c))   /* health, metrics and the demo page (its API calls send the key) are open */
        return SEND_ERROR(r, 401, "unauthorized",
                          "missing or wrong API key (send Authorization: Bearer KEY or X-API-Key: KEY)");
    if (!open_ep && !atomic_load(&s->ready))
        return SEND_ERROR(r, 503, "not_ready", "the models are still loading; retry shortly");
    /* the model version it uses: ?model=NAME or the /v2 path (a reference held until r is freed) */
    int st = open_ep ? 0 : srv_endpoint_model(r, err, sizeof err);
    if (st == 400) return send_model_required(r, err);
    if (st) return SEND_ERROR(r, st, st == 404 ? "model_not_found" : "model_not_ready", "%s", err);
    /* every endpoint checks its parameters, but for the demo page (a browser may add any) */
    if (r->ep != EP_INDEX && srv_endpoint_params(r, err, sizeof err)) return SEND_ERROR(r, 400, "bad_parameter", "%s", err);
    if (open_ep) {
        srv_endpoint_simple(r);
        return send_reply(r);
    }
    if (r->ep == EP_INFO || (SRV_OIP_EP(r->ep) && r->ep != EP_V2_INFER && !SRV_OIP_REPO_EP(r->ep))) {
        srv_endpoint_simple(r);
        return send_reply(r);
    }
    if (atomic_load(&s->draining)) {
        srv_metrics_rejected(s->metrics, "draining", 1);
        return SEND_ERROR(r, 503, "draining", "the server is shutting down; retry on another instance");
    }
    if (!r->post) return start_work(r);   /* GET /sample */

    /* POST: check the declared size, the budget and the type before reading the body */
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (errno || *end || v > (unsigned long long)s->o.max_body_bytes)
            return SEND_ERROR(r, 413, "body_too_large",
                              "request body of %.30s bytes is larger than the limit (%ld bytes, --max-body-bytes)", cl,
                              s->o.max_body_bytes);
        r->declared = (size_t)v;
    }
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    snprintf(r->ctype, sizeof r->ctype, "%s", ct ? ct : "");
    int ok;
    if (SRV_OIP_REPO_EP(r->ep)) ok = 1;   /* JSON or nothing, checked on the pool */
    else if (r->ep == EP_V2_INFER) {   /* any type: the Inference-Header-Content-Length frames the body */
        ok = 1;
        if (srv_oip_header_length(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Inference-Header-Content-Length"),
                                  &r->oip_hlen, err, sizeof err))
            return SEND_ERROR(r, 400, "bad_request", "%s", err);
    } else if (r->ep == EP_DECODE) ok = !strncasecmp(r->ctype, "application/json", 16) && (!r->ctype[16] || r->ctype[16] == ';' || r->ctype[16] == ' ');
    else
        ok = (!strncasecmp(r->ctype, "image/png", 9) && (!r->ctype[9] || r->ctype[9] == ';' || r->ctype[9] == ' ')) ||
             !strncasecmp(r->ctype, "multipart/form-data", 19);
    if (!ok)
        return SEND_ERROR(r, 415, "unsupported_media_type", "Content-Type '%.60s' is not accepted here; expected %s",
                          ct ? ct : "(none)",
                          r->ep == EP_DECODE ? "application/json" : "image/png (one image) or multipart/form-data (PNG parts)");
    if (r->declared) {   /* the whole body's buffer is charged before a byte of it is read */
        if (srv_req_charge(r, r->declared + 1)) {
            srv_req_error_budget(r, r->declared + 1);
            return send_reply(r);
        }
        r->body_charged = r->declared + 1;
    }
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

int srv_http_start(srv_server *s, char *err, size_t cap)
{
    const srv_options *o = &s->o;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    s->d = MHD_start_daemon(flags, 0, NULL, NULL, handler, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, NULL,
                            MHD_OPTION_LISTEN_SOCKET, s->listen_fd,
                            MHD_OPTION_THREAD_POOL_SIZE, (unsigned)o->http_threads, MHD_OPTION_URI_LOG_CALLBACK, uri_cb, s,
                            MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)o->conn_timeout_s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)o->max_connections,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)o->per_ip_limit, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, cap, "libmicrohttpd failed to start on %s port %d (see the message above)", o->host, s->port);
        return -1;
    }
    s->listen_fd = -1;   /* the daemon owns it now (MHD_quiesce_daemon hands it back) */
    return 0;
}
