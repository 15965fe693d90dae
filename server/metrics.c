/* metrics.c: the server's Prometheus counters and histograms and their text exposition, plus
 * small helpers (clock, growable buffer, JSON strings, base64, dequantisation noise).
 * Leaves out HTTP (http.c serves the text) and per-model labels beyond realnvp_info. */
#include "server.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const srv_endpoint_names[EP_COUNT] = {"log_prob", "encode",  "decode", "interpolate", "sample",
                                                  "healthz",  "readyz",  "metrics", "info",       "index",
                                                  "v2_server", "v2_health_live", "v2_health_ready", "v2_model_metadata",
                                                  "v2_model_ready", "v2_infer", "v2_repository_index",
                                                  "v2_repository_load", "v2_repository_unload", "other"};
const char *const srv_op_names[OP_COUNT] = {"log_prob", "log_prob_dequant", "encode", "decode"};

/* ---- helpers ---- */

double srv_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void buf_reserve(srv_buf *b, size_t extra)
{
    if (b->oom) return;
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

void srv_buf_put(srv_buf *b, const void *data, size_t n)
{
    buf_reserve(b, n);
    if (b->oom) return;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
}

void srv_buf_printf(srv_buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        srv_buf_put(b, tmp, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n);
    if (b->oom) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* length of the valid UTF-8 sequence at s (1..4), 0 if invalid */
static int utf8_len(const unsigned char *s)
{
    if (s[0] < 0x80) return 1;
    int n = s[0] >= 0xF0 && s[0] <= 0xF4 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 && s[0] < 0xE0 ? 2 : 0;
    if (!n || s[0] > 0xF4) return 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    if (n == 3 && ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0))) return 0;
    if (n == 4 && ((s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))) return 0;
    return n;
}

void srv_buf_json_string(srv_buf *b, const char *s)
{
    srv_buf_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            srv_buf_put(b, e, 2);
            p++;
        } else if (*p < 0x20 || *p == 0x7F) {
            srv_buf_printf(b, "\\u%04x", *p);
            p++;
        } else {
            int n = utf8_len(p);
            if (n) srv_buf_put(b, p, (size_t)n), p += n;
            else srv_buf_put(b, "\xEF\xBF\xBD", 3), p++;   /* U+FFFD for bytes that are not UTF-8 */
        }
    }
    srv_buf_put(b, "\"", 1);
}

void srv_buf_json_double(srv_buf *b, double v, int digits)
{
    if (!isfinite(v)) {
        srv_buf_put(b, "null", 4);
        return;
    }
    /* digits 17: the shortest of %.15g, %.16g, %.17g that reads back as v */
    char tmp[40];
    for (int d = digits == 17 ? 15 : digits; d <= digits; d++) {
        snprintf(tmp, sizeof tmp, "%.*g", d, v);
        if (d == digits || strtod(tmp, NULL) == v) break;
    }
    srv_buf_put(b, tmp, strlen(tmp));
}

char *srv_base64(const void *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *s = data;
    char *out = malloc(4 * ((len + 2) / 3) + 1), *o = out;
    if (!out) return NULL;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        *o++ = tab[v >> 18], *o++ = tab[(v >> 12) & 63], *o++ = tab[(v >> 6) & 63], *o++ = tab[v & 63];
    }
    if (i < len) {
        unsigned v = (unsigned)s[i] << 16 | (i + 1 < len ? (unsigned)s[i + 1] << 8 : 0);
        *o++ = tab[v >> 18], *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = 0;
    return out;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

void srv_noise(float *out, int d, uint64_t seed, int image, int draw)
{
    /* stream (seed, image, draw): mix the three through splitmix64 once */
    uint64_t st = seed;
    uint64_t a = splitmix64(&st) ^ ((uint64_t)(uint32_t)image << 32 | (uint32_t)draw);
    st = a;
    for (int i = 0; i < d; i++) {
        float u = (float)(splitmix64(&st) >> 40) * (1.0f / 16777216.0f);   /* 24 bits: [0, 1) exactly */
        out[i] = u;
    }
}

/* ---- metrics ---- */

static const int statuses[] = {200, 400, 401, 404, 405, 408, 413, 415, 422, 499, 500, 503, 504};
#define NSTATUS ((int)(sizeof statuses / sizeof *statuses))
static const double time_buckets[] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30};
#define NTB ((int)(sizeof time_buckets / sizeof *time_buckets))
static const double size_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
#define NSB ((int)(sizeof size_buckets / sizeof *size_buckets))

typedef struct hist {
    unsigned long long count[16];   /* per bucket, not cumulative; last is +Inf */
    unsigned long long n;
    double sum;
} hist;

struct srv_metrics {
    pthread_mutex_t mu;
    unsigned long long requests[EP_COUNT][NSTATUS + 1];
    hist duration[EP_COUNT];
    unsigned long long images[OP_COUNT], batches[OP_COUNT];
    hist batch_size, wait, compute;
    unsigned long long rejected[SRV_NREJECT];
    unsigned long long cancelled;
};

static void observe(hist *h, const double *bounds, int nb, double v)
{
    int i = 0;
    while (i < nb && v > bounds[i]) i++;
    h->count[i]++;
    h->n++;
    h->sum += v;
}

srv_metrics *srv_metrics_create(void)
{
    srv_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->mu, NULL);
    return m;
}

void srv_metrics_free(srv_metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void srv_metrics_request(srv_metrics *m, int endpoint, int status, double seconds)
{
    int k = NSTATUS;
    for (int i = 0; i < NSTATUS; i++)
        if (statuses[i] == status) k = i;
    pthread_mutex_lock(&m->mu);
    m->requests[endpoint][k]++;
    observe(&m->duration[endpoint], time_buckets, NTB, seconds);
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_batch(srv_metrics *m, int op, int size, double compute_seconds)
{
    pthread_mutex_lock(&m->mu);
    m->images[op] += (unsigned long long)size;
    m->batches[op]++;
    observe(&m->batch_size, size_buckets, NSB, size);
    observe(&m->compute, time_buckets, NTB, compute_seconds);
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_wait(srv_metrics *m, double seconds)
{
    pthread_mutex_lock(&m->mu);
    observe(&m->wait, time_buckets, NTB, seconds);
    pthread_mutex_unlock(&m->mu);
}

const char *const srv_reject_names[SRV_NREJECT] = {"queue_full", "timeout", "memory_budget", "draining"};

void srv_metrics_rejected(srv_metrics *m, const char *reason, int n)
{
    if (n <= 0) return;
    pthread_mutex_lock(&m->mu);
    if (!strcmp(reason, "cancelled")) m->cancelled += (unsigned long long)n;
    else
        for (int i = 0; i < SRV_NREJECT; i++)
            if (!strcmp(reason, srv_reject_names[i])) m->rejected[i] += (unsigned long long)n;
    pthread_mutex_unlock(&m->mu);
}

/* a Prometheus label value: backslash, double quote and newline escaped (exposition format 0.0.4) */
void srv_metrics_label(srv_buf *b, const char *v)
{
    srv_buf_put(b, "\"", 1);
    for (; *v; v++) {
        if (*v == '\\') srv_buf_put(b, "\\\\", 2);
        else if (*v == '"') srv_buf_put(b, "\\\"", 2);
        else if (*v == '\n') srv_buf_put(b, "\\n", 2);
        else srv_buf_put(b, v, 1);
    }
    srv_buf_put(b, "\"", 1);
}

static void render_hist(srv_buf *b, const char *name, const char *labels, const hist *h, const double *bounds, int nb)
{
    unsigned long long cum = 0;
    for (int i = 0; i <= nb; i++) {
        cum += h->count[i];
        if (i < nb) srv_buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, *labels ? "," : "", bounds[i], cum);
        else srv_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, *labels ? "," : "", cum);
    }
    if (*labels) {
        srv_buf_printf(b, "%s_sum{%s} %.9g\n%s_count{%s} %llu\n", name, labels, h->sum, name, labels, h->n);
    } else {
        srv_buf_printf(b, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name, h->n);
    }
}

void srv_metrics_render(srv_metrics *m, srv_buf *b, const srv_gauges *gv, const char *model_name)
{
    pthread_mutex_lock(&m->mu);
    srv_buf_printf(b, "# HELP realnvp_info Server version and model name.\n# TYPE realnvp_info gauge\n");
    srv_buf_printf(b, "realnvp_info{version=\"%s\",model=", SRV_VERSION);
    srv_metrics_label(b, model_name ? model_name : "");
    srv_buf_printf(b, "} 1\n");
    srv_buf_printf(b, "# HELP realnvp_requests_total HTTP requests by endpoint and status.\n"
                      "# TYPE realnvp_requests_total counter\n");
    for (int e = 0; e < EP_COUNT; e++)
        for (int k = 0; k <= NSTATUS; k++)
            if (m->requests[e][k] || (k == 0 && e < EP_OTHER))
            {
                char st[16] = "other";   /* a status outside the list */
                if (k < NSTATUS) snprintf(st, sizeof st, "%d", statuses[k]);
                srv_buf_printf(b, "realnvp_requests_total{endpoint=\"%s\",status=\"%s\"} %llu\n", srv_endpoint_names[e], st,
                               m->requests[e][k]);
            }
    srv_buf_printf(b, "# HELP realnvp_request_duration_seconds Time from the request line to the response, by endpoint.\n"
                      "# TYPE realnvp_request_duration_seconds histogram\n");
    for (int e = 0; e < EP_COUNT; e++) {
        if (!m->duration[e].n) continue;
        char lab[64];
        snprintf(lab, sizeof lab, "endpoint=\"%s\"", srv_endpoint_names[e]);
        render_hist(b, "realnvp_request_duration_seconds", lab, &m->duration[e], time_buckets, NTB);
    }
    srv_buf_printf(b, "# HELP realnvp_images_total Images computed, by operation.\n# TYPE realnvp_images_total counter\n");
    for (int o = 0; o < OP_COUNT; o++)
        srv_buf_printf(b, "realnvp_images_total{op=\"%s\"} %llu\n", srv_op_names[o], m->images[o]);
    srv_buf_printf(b, "# HELP realnvp_batches_total Batches computed, by operation.\n# TYPE realnvp_batches_total counter\n");
    for (int o = 0; o < OP_COUNT; o++)
        srv_buf_printf(b, "realnvp_batches_total{op=\"%s\"} %llu\n", srv_op_names[o], m->batches[o]);
    srv_buf_printf(b, "# HELP realnvp_rejected_total Images or requests refused: queue full or memory budget spent (503), "
                      "waited too long (504), arrived while draining (503).\n# TYPE realnvp_rejected_total counter\n");
    for (int i = 0; i < SRV_NREJECT; i++)
        srv_buf_printf(b, "realnvp_rejected_total{reason=\"%s\"} %llu\n", srv_reject_names[i], m->rejected[i]);
    srv_buf_printf(b, "# HELP realnvp_cancelled_total Queued images dropped uncomputed because their client had disconnected.\n"
                      "# TYPE realnvp_cancelled_total counter\nrealnvp_cancelled_total %llu\n", m->cancelled);
    srv_buf_printf(b, "# HELP realnvp_batch_size Images per computed batch.\n# TYPE realnvp_batch_size histogram\n");
    render_hist(b, "realnvp_batch_size", "", &m->batch_size, size_buckets, NSB);
    srv_buf_printf(b, "# HELP realnvp_queue_wait_seconds Time each image waited in the queue.\n"
                      "# TYPE realnvp_queue_wait_seconds histogram\n");
    render_hist(b, "realnvp_queue_wait_seconds", "", &m->wait, time_buckets, NTB);
    srv_buf_printf(b, "# HELP realnvp_compute_seconds Time to compute one batch.\n# TYPE realnvp_compute_seconds histogram\n");
    render_hist(b, "realnvp_compute_seconds", "", &m->compute, time_buckets, NTB);
    pthread_mutex_unlock(&m->mu);
    srv_buf_printf(b, "# HELP realnvp_queue_depth Images waiting in the batching queue.\n# TYPE realnvp_queue_depth gauge\n"
                      "realnvp_queue_depth %d\n", gv->queue_depth);
    srv_buf_printf(b, "# HELP realnvp_inflight_requests Requests received and not yet answered.\n"
                      "# TYPE realnvp_inflight_requests gauge\nrealnvp_inflight_requests %d\n", gv->inflight);
    srv_buf_printf(b, "# HELP realnvp_memory_used_bytes Request memory held now (bodies, parsed input, pending work, replies).\n"
                      "# TYPE realnvp_memory_used_bytes gauge\nrealnvp_memory_used_bytes %lld\n", gv->mem_used);
    srv_buf_printf(b, "# HELP realnvp_memory_budget_bytes The limit on realnvp_memory_used_bytes (--memory-budget-bytes).\n"
                      "# TYPE realnvp_memory_budget_bytes gauge\nrealnvp_memory_budget_bytes %lld\n", gv->mem_budget);
    srv_buf_printf(b, "# HELP realnvp_ready 1 when the model is loaded and the server is not draining.\n"
                      "# TYPE realnvp_ready gauge\nrealnvp_ready %d\n", gv->ready && !gv->draining);
}
