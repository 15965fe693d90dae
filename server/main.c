/* main.c: bin/realnvp-server: flags and REALNVP_* environment variables, startup, signals and
 * graceful shutdown. Leaves out everything HTTP (http.c) and batching (queue.c). */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef enum { T_STR, T_INT, T_LONG } opt_type;

typedef struct opt {
    const char *name, *env, *metavar;
    opt_type type;
    void *ptr;
    long lo, hi;
    const char *help;
} opt;

static srv_options o = {
    .host = "127.0.0.1", .port = 8080, .http_threads = 2, .compute_threads = 0, .max_batch = 64,
    .max_delay_us = 0, .queue_size = 1024, .request_timeout_ms = 30000, .max_body_bytes = 8L << 20,
    .max_samples = 256, .max_draws = 64, .access_log = "-", .conn_timeout_s = 30, .max_connections = 512,
    .per_ip_limit = 128, .drain_timeout_s = 30, .memory_budget = 128L << 20, .read_timeout_s = 60,
    .max_jobs_per_request = 256, .work_threads = 2, .max_workspace_bytes = 256L << 20, .model_versions = "latest",
    .model_memory = 1L << 30, .precision = "fp32",
};

static const opt opts[] = {
    {"--model", "REALNVP_MODEL", "PATH", T_STR, &o.model, 0, 0, "checkpoint to serve (one model; or --model-repository)"},
    {"--model-repository", "REALNVP_MODEL_REPOSITORY", "DIR", T_STR, &o.model_repository, 0, 0,
     "serve every DIR/<name>/<version>/model.safetensors (DIR/<name>/model.safetensors: version 1); SIGHUP rescans"},
    {"--model-versions", "REALNVP_MODEL_VERSIONS", "POLICY", T_STR, &o.model_versions, 0, 0,
     "versions of each model to load: latest (the highest) or all"},
    {"--model-memory-bytes", "REALNVP_MODEL_MEMORY_BYTES", "N", T_LONG, &o.model_memory, 1L << 20, 1L << 40,
     "loaded models in all (weights, batch workspaces; a reload holds two copies until the swap); a load past it fails"},
    {"--model-name", "REALNVP_MODEL_NAME", "NAME", T_STR, &o.model_name, 0, 0,
     "with --model: the model's name in paths and replies (default: metadata name, else the file or directory name)"},
    {"--precision", "REALNVP_PRECISION", "P", T_STR, &o.precision, 0, 0,
     "fp32 (the reference) or bf16 (AVX512_BF16 CPUs only, refused elsewhere; less exact, faster below 12 images a batch: docs/benchmarks.md#bf16)"},
    {"--host", "REALNVP_HOST", "ADDR", T_STR, &o.host, 0, 0, "address to listen on (0.0.0.0: all interfaces)"},
    {"--port", "REALNVP_PORT", "N", T_INT, &o.port, 0, 65535, "TCP port (0: any free port, printed at startup)"},
    {"--http-threads", "REALNVP_HTTP_THREADS", "N", T_INT, &o.http_threads, 1, 256, "libmicrohttpd thread pool size"},
    {"--compute-threads", "REALNVP_COMPUTE_THREADS", "N", T_INT, &o.compute_threads, 1, 1024,
     "BLAS threads of the batch worker (default: number of CPUs)"},
    {"--max-batch", "REALNVP_MAX_BATCH", "N", T_INT, &o.max_batch, 1, 4096, "most images computed as one batch"},
    {"--max-delay-us", "REALNVP_MAX_DELAY_US", "US", T_LONG, &o.max_delay_us, 0, 10000000,
     "0: a batch starts as soon as the worker is free; more: wait up to this long after the oldest image for a full batch"},
    {"--queue-size", "REALNVP_QUEUE_SIZE", "N", T_INT, &o.queue_size, 1, 1 << 20,
     "images that may wait; more get 503 + Retry-After"},
    {"--request-timeout-ms", "REALNVP_REQUEST_TIMEOUT_MS", "MS", T_LONG, &o.request_timeout_ms, 1, 86400000L,
     "images waiting longer in the queue are dropped: 504"},
    {"--max-body-bytes", "REALNVP_MAX_BODY_BYTES", "N", T_LONG, &o.max_body_bytes, 1, 1L << 30,
     "largest request body; larger gets 413"},
    {"--max-samples", "REALNVP_MAX_SAMPLES", "N", T_INT, &o.max_samples, 1, 65536,
     "most images per request (sample n, uploaded PNGs, latent vectors)"},
    {"--max-draws", "REALNVP_MAX_DRAWS", "K", T_INT, &o.max_draws, 1, 4096, "most dequantization draws (log_prob ?samples=K)"},
    {"--max-jobs-per-request", "REALNVP_MAX_JOBS_PER_REQUEST", "N", T_INT, &o.max_jobs_per_request, 1, 1 << 20,
     "most computations one request may queue (images x draws); more gets 400"},
    {"--memory-budget-bytes", "REALNVP_MEMORY_BUDGET_BYTES", "N", T_LONG, &o.memory_budget, 1L << 20, 1L << 40,
     "request memory in all (bodies, parsed input, pending work, replies); past it 503 + Retry-After"},
    {"--max-workspace-bytes", "REALNVP_MAX_WORKSPACE_BYTES", "N", T_LONG, &o.max_workspace_bytes, 1L << 20, 1L << 40,
     "refuse to start when the model's batch workspace for --max-batch is larger"},
    {"--read-timeout-s", "REALNVP_READ_TIMEOUT_S", "S", T_INT, &o.read_timeout_s, 1, 86400,
     "a request (line, headers, body) must arrive within this long; later gets 408"},
    {"--work-threads", "REALNVP_WORK_THREADS", "N", T_INT, &o.work_threads, 1, 64,
     "threads decoding uploads and encoding replies, off the HTTP threads"},
    {"--api-key-file", "REALNVP_API_KEY_FILE", "PATH", T_STR, &o.api_key_file, 0, 0,
     "require the key on its first line (Authorization: Bearer KEY or X-API-Key); health and metrics stay open"},
    {"--access-log", "REALNVP_ACCESS_LOG", "PATH", T_STR, &o.access_log, 0, 0,
     "one line per request: - (stderr), off, or a file to append to"},
    {"--conn-timeout-s", "REALNVP_CONN_TIMEOUT_S", "S", T_INT, &o.conn_timeout_s, 1, 86400,
     "close connections idle (or stalled mid-request) this long"},
    {"--max-connections", "REALNVP_MAX_CONNECTIONS", "N", T_INT, &o.max_connections, 1, 65536, "open connections in all"},
    {"--per-ip-limit", "REALNVP_PER_IP_LIMIT", "N", T_INT, &o.per_ip_limit, 1, 65536, "open connections per client address"},
    {"--drain-timeout-s", "REALNVP_DRAIN_TIMEOUT_S", "S", T_INT, &o.drain_timeout_s, 0, 86400,
     "on SIGTERM/SIGINT, stop within this long: compute what can be, answer the rest 503"},
};
#define NOPTS ((int)(sizeof opts / sizeof *opts))

static void usage(FILE *f)
{
    fprintf(f, "Usage: realnvp-server --model PATH [options]\n"
               "       realnvp-server --model-repository DIR [options]\n"
               "\n"
               "Serves Real NVP checkpoints over HTTP (JSON API, docs/api.md): POST /log_prob, /encode, /decode,\n"
               "GET /sample, /info, /healthz, /readyz, /metrics (?model=NAME when several models are served), and the\n"
               "Open Inference Protocol v2 under /v2 with Triton's model repository extension (load, unload, index).\n"
               "Concurrent requests are merged into batches; each model version has its own queue, served in turn.\n"
               "SIGHUP rescans the repository: changed versions are reloaded and new models loaded, each built beside\n"
               "the old copy and swapped in (requests in flight finish on the copy they started with); a load that\n"
               "fails leaves the old copy serving.\n"
               "Each option can also be set by the environment variable shown; a flag wins over it.\n"
               "Each client address gets its turn in the queue (round-robin), however many connections it opens.\n"
               "SIGTERM or SIGINT: /readyz turns 503, new work gets 503, accepted requests are computed or (near the\n"
               "--drain-timeout-s deadline) answered 503, exit 0; further SIGTERM/SIGINT while draining are ignored.\n"
               "\n"
               "Options (default in brackets):\n");
    for (int i = 0; i < NOPTS; i++) {
        const opt *p = &opts[i];
        char def[64] = "";
        if (p->type == T_INT) snprintf(def, sizeof def, "%d", *(int *)p->ptr);
        else if (p->type == T_LONG) snprintf(def, sizeof def, "%ld", *(long *)p->ptr);
        else snprintf(def, sizeof def, "%s", *(const char **)p->ptr ? *(const char **)p->ptr : "none");
        if (p->ptr == &o.compute_threads) snprintf(def, sizeof def, "%ld", sysconf(_SC_NPROCESSORS_ONLN));
        if (p->ptr == &o.model_name) snprintf(def, sizeof def, "derived");
        if (p->ptr == &o.model) snprintf(def, sizeof def, "this or --model-repository");
        char left[64];
        snprintf(left, sizeof left, "%s %s", p->name, p->metavar);
        fprintf(f, "  %-26s %s [%s]\n  %-26s   env %s\n", left, p->help, def, "", p->env);
    }
    fprintf(f, "  %-26s %s\n  %-26s %s\n", "-h, --help", "this text", "--version", "version and OpenBLAS kernels");
}

static int set_opt(const opt *p, const char *v, const char *from)
{
    if (p->type == T_STR) {
        *(const char **)p->ptr = v;
        return 0;
    }
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < p->lo || x > p->hi) {
        fprintf(stderr, "realnvp-server: %s must be an integer in %ld..%ld, not '%s' (see --help)\n", from, p->lo, p->hi, v);
        return -1;
    }
    if (p->type == T_INT) *(int *)p->ptr = (int)x;
    else *(long *)p->ptr = x;
    return 0;
}

static int parse(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)   /* before the environment, so the defaults shown are the built-in ones */
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 1;
        }
    for (int i = 0; i < NOPTS; i++) {
        const char *v = getenv(opts[i].env);
        if (v && *v && set_opt(&opts[i], v, opts[i].env)) return 2;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("realnvp-server %s (OpenBLAS kernels: %s)\n", SRV_VERSION, rnvp_blas_core());
            return 1;
        }
        int found = 0;
        for (int k = 0; k < NOPTS && !found; k++) {
            size_t nl = strlen(opts[k].name);
            const char *v = NULL;
            if (!strcmp(a, opts[k].name)) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "realnvp-server: option %s needs a value (see --help)\n", a);
                    return 2;
                }
                v = argv[++i];
            } else if (!strncmp(a, opts[k].name, nl) && a[nl] == '=') v = a + nl + 1;
            else continue;
            found = 1;
            if (set_opt(&opts[k], v, opts[k].name)) return 2;
        }
        if (!found) {
            fprintf(stderr, "realnvp-server: unknown %s '%s' (see --help)\n", a[0] == '-' ? "option" : "argument", a);
            return 2;
        }
    }
    if (o.model && !*o.model) o.model = NULL;
    if (o.model_repository && !*o.model_repository) o.model_repository = NULL;
    if (!o.model == !o.model_repository) {
        fprintf(stderr, "realnvp-server: %s (see --help)\n",
                o.model ? "give --model PATH or --model-repository DIR, not both"
                        : "--model PATH (REALNVP_MODEL) or --model-repository DIR (REALNVP_MODEL_REPOSITORY) is required");
        return 2;
    }
    if (o.model_repository && o.model_name) {
        fprintf(stderr, "realnvp-server: --model-name is for --model; in a repository a model's name is its folder's\n");
        return 2;
    }
    if (strcmp(o.model_versions, "latest") && strcmp(o.model_versions, "all")) {
        fprintf(stderr, "realnvp-server: --model-versions must be latest or all, not '%s'\n", o.model_versions);
        return 2;
    }
    o.all_versions = !strcmp(o.model_versions, "all");
    rnvp_error pe;
    if (rnvp_precision_parse(&o.prec, o.precision, &pe) || rnvp_precision_check(o.prec, &pe)) {
        fprintf(stderr, "realnvp-server: --precision %s: %s\n", o.precision, pe.msg);
        return 2;
    }
    if (!o.compute_threads) o.compute_threads = (int)sysconf(_SC_NPROCESSORS_ONLN) > 0 ? (int)sysconf(_SC_NPROCESSORS_ONLN) : 1;
    if (o.access_log && !*o.access_log) o.access_log = "-";
    return 0;
}

/* ---- stop signals ----
 * OpenBLAS starts its threads when the library loads, before main() can block anything, so a
 * process-directed SIGTERM/SIGINT may land on one of them. A handler (not the default action)
 * therefore catches it on any thread and writes the signal's number to a pipe; main() reads the
 * pipe. Every thread main() starts inherits a mask blocking both signals; main() unblocks them
 * only inside ppoll(), so they are handled there or on an OpenBLAS thread, never lost. */

static int sig_pipe[2] = {-1, -1};

static void on_stop_signal(int sig)
{
    int e = errno;
    unsigned char b = (unsigned char)sig;
    if (write(sig_pipe[1], &b, 1) < 0) { /* pipe full: signals enough are queued already */ }
    errno = e;
}

/* The next byte from the signal pipe (a signal number, or 0 when the drain has finished),
 * waiting with the stop signals unblocked (`waitmask`). */
static int next_event(const sigset_t *waitmask)
{
    for (;;) {
        unsigned char b;
        ssize_t n = read(sig_pipe[0], &b, 1);
        if (n == 1) return b;
        struct pollfd p = {.fd = sig_pipe[0], .events = POLLIN};
        if (ppoll(&p, 1, NULL, waitmask) < 0 && errno != EINTR) return -1;
    }
}

typedef struct drain_job {
    srv_server *s;
    int left;
} drain_job;

static void *drain_thread(void *arg)
{
    drain_job *j = arg;
    j->left = srv_server_drain(j->s, o.drain_timeout_s);
    unsigned char done = 0;
    while (write(sig_pipe[1], &done, 1) < 0 && errno == EAGAIN) usleep(1000);
    return NULL;
}

static const char *sig_name(int sig) { return sig == SIGINT ? "SIGINT" : "SIGTERM"; }

/* glibc gives each thread that meets contention an arena of its own (up to 8 per CPU) and keeps
 * freed memory inside it: the HTTP threads and the batch worker each held a pool of free pages
 * (about 5.3 MB of arenas for 3 MB in use in a 2-minute soak), and the resident size rose with
 * new peaks of connections (docs/reliability.md, soak). With two arenas: 3.6 MB for the same
 * 3 MB in use, and no lower throughput in the soak. MALLOC_ARENA_MAX or a
 * glibc.malloc.arena_max tunable in the environment wins. */
static void bound_arenas(void)
{
#ifdef __GLIBC__
    const char *t = getenv("GLIBC_TUNABLES");
    if (!getenv("MALLOC_ARENA_MAX") && !(t && strstr(t, "glibc.malloc.arena_max"))) mallopt(M_ARENA_MAX, 2);
#endif
}

int main(int argc, char **argv)
{
    rnvp_blas_select_core(argv);
    int pr = parse(argc, argv);
    if (pr) return pr == 1 ? 0 : 2;
    bound_arenas();   /* before the server's threads start */

    if (pipe2(sig_pipe, O_CLOEXEC) || fcntl(sig_pipe[0], F_SETFL, O_NONBLOCK) ||
        fcntl(sig_pipe[1], F_SETFL, O_NONBLOCK)) {
        fprintf(stderr, "realnvp-server: cannot create the signal pipe: %s\n", strerror(errno));
        return 1;
    }
    sigset_t set, waitmask;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_mask = set;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    /* every thread started from here on (libmicrohttpd's, the worker, OpenBLAS's new ones)
     * inherits this mask */
    pthread_sigmask(SIG_BLOCK, &set, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);
    sigdelset(&waitmask, SIGHUP);
    signal(SIGPIPE, SIG_IGN);

    char err[512];
    srv_server *s = srv_server_start(&o, err, sizeof err);
    if (!s) {
        fprintf(stderr, "realnvp-server: %s\n", err);
        return 1;
    }
    if (srv_server_load(s, err, sizeof err)) {
        /* the library's load errors name the file already */
        const char *what = o.model ? o.model : o.model_repository;
        if (strstr(err, what)) fprintf(stderr, "realnvp-server: %s\n", err);
        else fprintf(stderr, "realnvp-server: %s: %s\n", what, err);
        srv_server_free(s);
        return 1;
    }
    fprintf(stderr,
            "realnvp-server: listening on http://%s%s%s:%d (max batch %d, max delay %ld us, queue %d, memory budget %ld MiB, "
            "%d HTTP + %d work + %d compute threads, OpenBLAS %s, precision %s)\n",
            strchr(o.host, ':') ? "[" : "", o.host, strchr(o.host, ':') ? "]" : "", srv_server_port(s), o.max_batch,
            o.max_delay_us, o.queue_size, o.memory_budget >> 20, o.http_threads, o.work_threads, o.compute_threads,
            rnvp_blas_core(), rnvp_precision_name(o.prec));
    int sig;
    /* SIGHUP rescans here, on the main thread (loads are serialised with the repository API's) */
    while ((sig = next_event(&waitmask)) == 0 || sig == SIGHUP)
        if (sig == SIGHUP) {
            srv_log("SIGHUP: rescanning %s", o.model_repository ? o.model_repository : o.model);
            srv_server_rescan(s);
        }
    fprintf(stderr, "realnvp-server: %s: draining (readyz 503, no new connections, up to %d s)\n",
            sig_name(sig), o.drain_timeout_s);
    /* the drain runs on its own thread so that further signals are read (and ignored) here */
    drain_job job = {.s = s};
    pthread_t dt;
    const double t0 = srv_now();
    if (pthread_create(&dt, NULL, drain_thread, &job)) {
        drain_thread(&job);
    } else {
        while ((sig = next_event(&waitmask)) > 0) {
            if (sig == SIGHUP) {
                srv_log("SIGHUP while draining: ignored");
                continue;
            }
            double left = o.drain_timeout_s - (srv_now() - t0);
            fprintf(stderr, "realnvp-server: %s: already draining (%.0f s of the %d s drain timeout left); ignored\n",
                    sig_name(sig), left > 0 ? left : 0, o.drain_timeout_s);
        }
        pthread_join(dt, NULL);
    }
    srv_server_free(s);
    if (job.left)
        fprintf(stderr, "realnvp-server: stopped with %d requests unfinished after %d s\n", job.left, o.drain_timeout_s);
    else fprintf(stderr, "realnvp-server: stopped cleanly\n");
    return 0;
}
