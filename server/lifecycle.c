/* lifecycle.c: bin/realnvp-server's start-up (socket, API key, access log, libmicrohttpd, the
 * work pool), model loading with its workspace limit, /info, the drain and shutdown.
 * Leaves out the request path (http.c, endpoints.c) and flags and signals (main.c). */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

/* the key on the file's first line (surrounding blanks dropped); NULL with err when the file
 * cannot be read, is empty, or its key is longer than SRV_MAX_KEY bytes */
static char *read_key(const char *path, char *err, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, cap, "cannot read --api-key-file %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(2 * SRV_MAX_KEY + 2);
    if (!buf) {
        fclose(f);
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    size_t n = fread(buf, 1, 2 * SRV_MAX_KEY + 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = buf;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') p++;
    size_t l = strcspn(p, "\r\n");
    int cut = !p[l] && n == 2 * SRV_MAX_KEY + 1;   /* the line goes on past what was read */
    while (l && (p[l - 1] == ' ' || p[l - 1] == '\t')) l--;
    p[l] = 0;
    char *key = NULL;
    if (!l) snprintf(err, cap, "--api-key-file %s is empty (expected the key on its first line)", path);
    else if (l > SRV_MAX_KEY || cut)
        snprintf(err, cap, "--api-key-file %s: the key on its first line is %s%zu bytes, longer than the %d bytes the server "
                           "accepts", path, cut ? "over " : "", l, SRV_MAX_KEY);
    else if (!(key = strdup(p))) snprintf(err, cap, "out of memory");
    free(buf);
    return key;
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
    s->pool = srv_pool_create(o->work_threads, err, cap);
    if (!s->pool) goto fail;
    if (bind_socket(s, err, cap)) goto fail;
    if (srv_http_start(s, err, cap)) goto fail;
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
    srv_endpoint_put_layout(&b, s);
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
                       "\"max_jobs_per_request\": %d, \"memory_budget_bytes\": %ld, \"read_timeout_s\": %d, "
                       "\"compute_threads\": %d, \"http_threads\": %d, \"work_threads\": %d, \"api_key_required\": %s}}\n",
                   o->max_batch, o->max_delay_us, o->queue_size, o->request_timeout_ms, o->max_body_bytes, o->max_samples,
                   o->max_draws, o->max_jobs_per_request, o->memory_budget, o->read_timeout_s, o->compute_threads,
                   o->http_threads, o->work_threads, s->api_key ? "true" : "false");
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
    rnvp_set_num_threads(s->o.compute_threads);   /* the workspace depends on it */
    /* refused before it is allocated: a tiny file can declare a huge image */
    size_t ws = rnvp_ctx_workspace_bytes(s->model, s->o.max_batch);
    if (ws > (size_t)s->o.max_workspace_bytes) {
        if (ws == SIZE_MAX)
            snprintf(err, cap, "the batch workspace of this model (%d x %d x %d) for --max-batch %d does not fit in memory",
                     s->W, s->H, s->C, s->o.max_batch);
        else
            snprintf(err, cap, "the batch workspace of this model (%d x %d x %d) for --max-batch %d would take %zu bytes, "
                               "more than --max-workspace-bytes %ld; lower --max-batch or raise the limit",
                     s->W, s->H, s->C, s->o.max_batch, ws, s->o.max_workspace_bytes);
        return -1;
    }
    s->q = srv_queue_create(s->model, s->o.queue_size, s->o.max_batch, s->o.max_delay_us, s->o.request_timeout_ms,
                            s->metrics, &e);
    if (!s->q) {
        snprintf(err, cap, "cannot start the batching queue: %s", e.msg);
        return -1;
    }
    atomic_store(&s->ready, 1);
    srv_log("model %s loaded (%d x %d x %d, D = %d, batch workspace %.1f MiB); ready", s->model_name, s->W, s->H, s->C,
            s->D, (double)ws / 1048576.0);
    return 0;
}

static void wait_until(atomic_int *v, double end)
{
    while (atomic_load(v) > 0 && srv_now() < end) usleep(2000);
}

/* The drain, in the order that keeps every accepted request answered and the time bounded:
 * new work is refused (503) and no connection is accepted; requests in progress are computed
 * until `grace` before the deadline; then the waiting jobs are dropped and their requests answered
 * 503 + Retry-After; at the deadline the daemon stops. It is never stopped with a suspended
 * connection (libmicrohttpd 0.9.75 panics): only a batch computing past the deadline holds it. */
int srv_server_drain(srv_server *s, double timeout_s)
{
    atomic_store(&s->draining, 1);
    srv_queue_close(s->q);
    if (s->d) {
        MHD_socket fd = MHD_quiesce_daemon(s->d);
        if (fd != MHD_INVALID_SOCKET) close(fd);
        s->listen_fd = -1;
    }
    const double end = srv_now() + timeout_s;
    double grace = timeout_s / 4 < 2.0 ? timeout_s / 4 : 2.0;   /* to answer what cannot be computed */
    wait_until(&s->inflight, end - grace);
    if (atomic_load(&s->inflight) > 0) {
        srv_queue_cancel_all(s->q);
        wait_until(&s->inflight, end);
    }
    int left = atomic_load(&s->inflight);
    while (atomic_load(&s->suspended) > 0) usleep(2000);
    if (s->d) MHD_stop_daemon(s->d);
    s->d = NULL;
    return left;
}

void srv_server_free(srv_server *s)
{
    if (!s) return;
    if (s->d) {
        srv_queue_cancel_all(s->q);
        while (atomic_load(&s->suspended) > 0) usleep(2000);
        MHD_stop_daemon(s->d);
    }
    if (s->listen_fd >= 0) close(s->listen_fd);
    srv_queue_free(s->q);
    srv_pool_free(s->pool);
    rnvp_model_free(s->model);
    srv_metrics_free(s->metrics);
    free(s->api_key);
    free(s->info_json);
    if (s->access_owned) fclose(s->access);
    pthread_mutex_destroy(&s->log_mu);
    free(s);
}
