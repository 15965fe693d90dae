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
    s->loader = srv_pool_create(1, err, cap);
    if (!s->loader) goto fail;
    if (bind_socket(s, err, cap)) goto fail;
    if (srv_http_start(s, err, cap)) goto fail;
    return s;
fail:
    srv_server_free(s);
    return NULL;
}

int srv_server_port(const srv_server *s) { return s->port; }

void srv_server_info(const srv_server *s, const srv_model *m, srv_buf *b)
{
    char cj[1024];
    rnvp_config_to_json(rnvp_model_config(m->model), cj, sizeof cj);
    srv_buf_printf(b, "{\"model\": ");
    srv_buf_json_string(b, m->name);
    srv_buf_printf(b, ", \"version\": \"%ld\", \"server_version\": \"%s\", \"config\": %s, \"width\": %d, "
                      "\"height\": %d, \"channels\": %d, \"dim\": %d, \"layout\": ",
                   m->version, SRV_VERSION, cj, m->W, m->H, m->C, m->D);
    srv_endpoint_put_layout(b, m);
    srv_buf_printf(b, ", \"parameters\": %zu, \"flops_per_image\": %.6g, \"blas_core\": ", rnvp_model_num_params(m->model),
                   rnvp_model_flops(m->model));
    srv_buf_json_string(b, rnvp_blas_core());
    srv_buf_printf(b, ", \"metadata\": {");
    for (int i = 0; i < rnvp_model_num_metadata(m->model); i++) {
        const char *k = rnvp_model_metadata_key(m->model, i);
        if (i) srv_buf_printf(b, ", ");
        srv_buf_json_string(b, k);
        srv_buf_printf(b, ": ");
        srv_buf_json_string(b, rnvp_model_metadata(m->model, k));
    }
    srv_buf_printf(b, "}, \"models\": ");
    srv_repo_names_json(s->repo, b);
    const srv_options *o = &s->o;
    srv_buf_printf(b, ", \"limits\": {\"max_batch\": %d, \"max_delay_us\": %ld, \"queue_size\": %d, "
                      "\"request_timeout_ms\": %ld, \"max_body_bytes\": %ld, \"max_samples\": %d, \"max_draws\": %d, "
                      "\"max_jobs_per_request\": %d, \"memory_budget_bytes\": %ld, \"model_memory_bytes\": %ld, "
                      "\"read_timeout_s\": %d, \"compute_threads\": %d, \"http_threads\": %d, \"work_threads\": %d, "
                      "\"api_key_required\": %s, \"precision\": \"%s\"}}\n",
                   o->max_batch, o->max_delay_us, o->queue_size, o->request_timeout_ms, o->max_body_bytes, o->max_samples,
                   o->max_draws, o->max_jobs_per_request, o->memory_budget, o->model_memory, o->read_timeout_s,
                   o->compute_threads, o->http_threads, o->work_threads, s->api_key ? "true" : "false",
                   rnvp_precision_name(o->prec));
}

int srv_server_load(srv_server *s, char *err, size_t cap)
{
    rnvp_error e;
    rnvp_set_num_threads(s->o.compute_threads);   /* the workspaces depend on it */
    s->sc = srv_sched_create(s->o.queue_size, s->o.max_batch, s->metrics, &e);
    if (!s->sc) {
        snprintf(err, cap, "cannot start the batching queue: %s", e.msg);
        return -1;
    }
    s->repo = srv_repo_create(&s->o, s->sc, err, cap);
    if (!s->repo) return -1;
    char why[SRV_ERRLEN + 128];
    int fails = srv_repo_scan(s->repo, why, sizeof why);
    int n = srv_repo_nready(s->repo);
    if (!s->o.model_repository && fails) {   /* --model: the one model must load */
        snprintf(err, cap, "cannot load the model: %s", why);
        return -1;
    }
    if (!n) {
        if (fails) snprintf(err, cap, "no model of the repository %s could be loaded (%s)", s->o.model_repository, why);
        else snprintf(err, cap, "the model repository %s holds no model (expected DIR/<name>/<version>/model.safetensors "
                                "or DIR/<name>/model.safetensors)", s->o.model_repository);
        return -1;
    }
    atomic_store(&s->ready, 1);
    char names[1024];
    srv_repo_names(s->repo, names, sizeof names);
    srv_log("%d model%s loaded (%s)%s; ready", n, n == 1 ? "" : "s", names,
            fails ? ", some versions failed (see above)" : "");
    return 0;
}

int srv_server_rescan(srv_server *s)
{
    char why[SRV_ERRLEN + 128];
    int fails = srv_repo_scan(s->repo, why, sizeof why);
    char names[1024];
    srv_repo_names(s->repo, names, sizeof names);
    srv_log("rescan: %d failure%s; serving %s", fails, fails == 1 ? "" : "s", names[0] ? names : "no model");
    return fails;
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
    srv_sched_close(s->sc);
    if (s->d) {
        MHD_socket fd = MHD_quiesce_daemon(s->d);
        if (fd != MHD_INVALID_SOCKET) close(fd);
        s->listen_fd = -1;
    }
    const double end = srv_now() + timeout_s;
    double grace = timeout_s / 4 < 2.0 ? timeout_s / 4 : 2.0;   /* to answer what cannot be computed */
    wait_until(&s->inflight, end - grace);
    if (atomic_load(&s->inflight) > 0) {
        srv_sched_cancel_all(s->sc);
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
        srv_sched_cancel_all(s->sc);
        while (atomic_load(&s->suspended) > 0) usleep(2000);
        MHD_stop_daemon(s->d);
    }
    if (s->listen_fd >= 0) close(s->listen_fd);
    srv_pool_free(s->pool);
    srv_pool_free(s->loader);
    srv_repo_free(s->repo);   /* every request is done: each version goes now */
    srv_sched_free(s->sc);
    srv_metrics_free(s->metrics);
    free(s->api_key);
    if (s->access_owned) fclose(s->access);
    pthread_mutex_destroy(&s->log_mu);
    free(s);
}
