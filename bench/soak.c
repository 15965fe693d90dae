/* soak.c: bin/soak: starts bin/realnvp-server on 127.0.0.1 and drives it with concurrent clients
 * sending mixed valid and invalid traffic (uploads dropped mid-body and while queued, slow
 * byte-at-a-time clients) for a bounded time and request count; reports requests by status
 * class, unexpected errors, the server's RSS and open descriptors (/proc/PID), healthy-client
 * starvation, and its clean exit on SIGTERM. Exit status 0 only when every check passed.
 * Leaves out throughput figures (bench_server) and other hosts: it connects to 127.0.0.1 only. */
#include "realnvp.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- options ---- */

static const char *server_exe = "bin/realnvp-server";
static const char *model_path = "tests/data/grey8.safetensors";
static const char *server_args = "--access-log off";
static double seconds = 45, warmup = -1;
static int nclients = 64, nslow = 4;
static long max_requests = 2000000;
static double max_rss_growth = -1;   /* percent; < 0: reported only */

/* ---- shared state ---- */

enum cls { C_2XX, C_4XX, C_5XX_SHED, C_5XX_OTHER, C_ABORTED, C_NCLS };
static const char *cls_names[C_NCLS] = {"2xx", "4xx", "503/504 shed", "other 5xx", "aborted by client (by design)"};

enum scen {
    S_LOGPROB, S_ENCODE_MULTI, S_DECODE, S_SAMPLE, S_GET_SMALL,   /* healthy */
    S_BAD_PNG, S_WRONG_SIZE, S_BAD_MULTI, S_BAD_LATENTS, S_NOT_FOUND, S_BAD_METHOD, S_BAD_QUERY, S_BAD_TYPE,
    S_TOO_LARGE,                                                  /* invalid */
    S_ABORT_UPLOAD, S_ABORT_QUEUED,                               /* disconnects */
    S_SLOW,                                                       /* byte at a time */
    S_COUNT
};
static const char *scen_names[S_COUNT] = {"log_prob png",   "encode multipart", "decode latents", "sample",
                                          "health/info/metrics", "bad png",  "wrong image size", "bad multipart",
                                          "bad latents",    "404",              "405",            "bad query",
                                          "415",            "413",              "drop mid-upload", "drop while queued",
                                          "slow byte-at-a-time"};
static const int scen_weight[S_COUNT] = {14, 6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 2, 6, 6, 0};

static int port;
static pid_t server_pid;
static double t_start, t_end;
static atomic_int stop_flag;
static atomic_long total_requests;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long by_cls[C_NCLS], by_scen[S_COUNT], unexpected;
static char unexpected_msg[8][240];
static int nmsg;
/* healthy requests: latencies (ms) and completion times for starvation */
static double *lat;
static size_t nlat, caplat;
static double last_healthy_done, longest_gap;
static long healthy_ok, healthy_shed;

/* request bodies built once */
static char *png_ok, *png_bad, *png_wrong, *multi_ok, *multi_bad, *multi_heavy, *lat_ok, *lat_bad;
static size_t png_ok_len, png_bad_len, png_wrong_len, multi_ok_len, multi_bad_len, multi_heavy_len, lat_ok_len,
    lat_bad_len;
#define BOUNDARY "soakBoundary7Mq"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void note_unexpected(const char *fmt, ...)
{
    pthread_mutex_lock(&mu);
    unexpected++;
    if (nmsg < 8) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(unexpected_msg[nmsg++], sizeof unexpected_msg[0], fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&mu);
}

/* ---- the server process ---- */

static long proc_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    fclose(f);
    return kb;
}

static int proc_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static char errfile[128];

static int start_server(void)
{
    snprintf(errfile, sizeof errfile, "/tmp/soak_server_%d.err", (int)getpid());
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "exec %s --model %s --host 127.0.0.1 --port 0 %s 2>%s", server_exe, model_path, server_args,
             errfile);
    server_pid = fork();
    if (server_pid < 0) return -1;
    if (server_pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    const char *needle = "listening on http://127.0.0.1:";
    for (int i = 0; i < 6000; i++) {
        FILE *f = fopen(errfile, "r");
        if (f) {
            char buf[4096];
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            buf[n] = 0;
            fclose(f);
            char *p = strstr(buf, needle);
            if (p) {
                port = atoi(p + strlen(needle));
                return 0;
            }
        }
        if (waitpid(server_pid, NULL, WNOHANG) == server_pid) {
            fprintf(stderr, "soak: the server exited at startup (see %s)\n", errfile);
            return -1;
        }
        usleep(10000);
    }
    fprintf(stderr, "soak: the server did not start within 60 s\n");
    return -1;
}

/* ---- HTTP on 127.0.0.1 ---- */

static int connect_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 60};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            return -1;
        }
        p += w, n -= (size_t)w;
    }
    return 0;
}

/* closes with a reset (SO_LINGER 0), as a client that vanishes does */
static void drop(int fd)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

/* Builds the request head into buf; returns its length. */
static size_t head(char *buf, size_t cap, const char *method, const char *path, const char *ctype, size_t len,
                   int with_len)
{
    int n = snprintf(buf, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n", method, path);
    if (ctype) n += snprintf(buf + n, cap - (size_t)n, "Content-Type: %s\r\n", ctype);
    if (with_len) n += snprintf(buf + n, cap - (size_t)n, "Content-Length: %zu\r\n", len);
    n += snprintf(buf + n, cap - (size_t)n, "\r\n");
    return (size_t)n;
}

/* Sends a request (byte_delay_us > 0: one byte at a time) and reads the reply to EOF. Returns the
 * status, 0 when the connection ended without a status line, -1 on a connect/send/recv error
 * (errno kept in *e). */
static int request(const char *method, const char *path, const char *ctype, const char *body, size_t len,
                   long declared, int byte_delay_us, int *e)
{
    char h[512];
    size_t hl = head(h, sizeof h, method, path, ctype, declared >= 0 ? (size_t)declared : len, body || declared >= 0);
    int fd = connect_server();
    if (fd < 0) {
        *e = errno;
        return -1;
    }
    int rc = 0;
    if (byte_delay_us > 0) {
        for (size_t i = 0; i < hl + len && !rc; i++) {
            rc = send_all(fd, i < hl ? h + i : body + (i - hl), 1);
            usleep((useconds_t)byte_delay_us);
        }
    } else {
        rc = send_all(fd, h, hl);
        if (!rc && declared < 0 && len) rc = send_all(fd, body, len);
    }
    /* a server may answer early (413) and close while we send: read its reply anyway */
    char buf[16384], first[16] = "";
    size_t got = 0;
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            if (got >= 12) break;   /* a reset after the reply (early 413 / 415) */
            *e = errno;
            close(fd);
            return -1;
        }
        if (r == 0) break;
        if (got < 12) memcpy(first + got, buf, (size_t)r < 12 - got ? (size_t)r : 12 - got);
        got += (size_t)r;
    }
    close(fd);
    (void)rc;
    if (got < 12 || strncmp(first, "HTTP/1.", 7)) return 0;
    return atoi(first + 9);
}

/* ---- one client ---- */

typedef struct client {
    int id;
    uint64_t rng;
} client;

static uint64_t next_rand(client *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

static void record(int scen, int cls, int healthy, double t0, double t1)
{
    pthread_mutex_lock(&mu);
    by_cls[cls]++;
    by_scen[scen]++;
    if (healthy && t0 >= t_start + warmup) {
        if (cls == C_2XX) {
            healthy_ok++;
            if (nlat == caplat) {
                caplat = caplat ? caplat * 2 : 65536;
                lat = realloc(lat, caplat * sizeof *lat);
            }
            lat[nlat++] = (t1 - t0) * 1e3;
            if (last_healthy_done > 0 && t1 - last_healthy_done > longest_gap) longest_gap = t1 - last_healthy_done;
            if (t1 > last_healthy_done) last_healthy_done = t1;
        } else if (cls == C_5XX_SHED) {
            healthy_shed++;
        }
    }
    pthread_mutex_unlock(&mu);
}

static int classify(int status)
{
    if (status >= 200 && status < 300) return C_2XX;
    if (status >= 400 && status < 500) return C_4XX;
    if (status == 503 || status == 504) return C_5XX_SHED;
    return C_5XX_OTHER;
}

static void one(client *c, int scen)
{
    int e = 0, st, want = 200, healthy = scen <= S_GET_SMALL || scen == S_SLOW;
    double t0 = now();
    char path[128];
    switch (scen) {
    case S_LOGPROB: st = request("POST", "/log_prob", "image/png", png_ok, png_ok_len, -1, 0, &e); break;
    case S_ENCODE_MULTI:
        st = request("POST", "/encode", "multipart/form-data; boundary=" BOUNDARY, multi_ok, multi_ok_len, -1, 0, &e);
        break;
    case S_DECODE: st = request("POST", "/decode?format=json", "application/json", lat_ok, lat_ok_len, -1, 0, &e); break;
    case S_SAMPLE:
        snprintf(path, sizeof path, "/sample?n=%d&temp=0.7&seed=%d", 1 + (int)(next_rand(c) % 8), (int)(next_rand(c) % 1000));
        st = request("GET", path, NULL, NULL, 0, -1, 0, &e);
        break;
    case S_GET_SMALL: {
        static const char *p[] = {"/healthz", "/readyz", "/info", "/metrics"};
        st = request("GET", p[next_rand(c) % 4], NULL, NULL, 0, -1, 0, &e);
        break;
    }
    case S_BAD_PNG: want = 400, st = request("POST", "/log_prob", "image/png", png_bad, png_bad_len, -1, 0, &e); break;
    case S_WRONG_SIZE:
        want = 422, st = request("POST", "/log_prob", "image/png", png_wrong, png_wrong_len, -1, 0, &e);
        break;
    case S_BAD_MULTI:
        want = 400;
        st = request("POST", "/log_prob", "multipart/form-data; boundary=" BOUNDARY, multi_bad, multi_bad_len, -1, 0, &e);
        break;
    case S_BAD_LATENTS: want = 400, st = request("POST", "/decode", "application/json", lat_bad, lat_bad_len, -1, 0, &e); break;
    case S_NOT_FOUND: want = 404, st = request("GET", "/nope", NULL, NULL, 0, -1, 0, &e); break;
    case S_BAD_METHOD: want = 405, st = request("GET", "/log_prob", NULL, NULL, 0, -1, 0, &e); break;
    case S_BAD_QUERY: want = 400, st = request("GET", "/sample?n=0&x=%zz", NULL, NULL, 0, -1, 0, &e); break;
    case S_BAD_TYPE: want = 415, st = request("POST", "/log_prob", "text/plain", "hello", 5, -1, 0, &e); break;
    case S_TOO_LARGE:
        /* declares 100 MiB and sends nothing: the server must answer 413 from the headers alone */
        want = 413, st = request("POST", "/log_prob", "image/png", NULL, 0, 100L << 20, 0, &e);
        break;
    case S_ABORT_UPLOAD: {
        char h[512];
        size_t hl = head(h, sizeof h, "POST", "/encode", "multipart/form-data; boundary=" BOUNDARY, multi_ok_len, 1);
        int fd = connect_server();
        if (fd < 0) {
            note_unexpected("drop mid-upload: connect: %s", strerror(errno));
            return;
        }
        size_t part = 1 + next_rand(c) % (multi_ok_len - 1);
        if (send_all(fd, h, hl) || send_all(fd, multi_ok, part)) note_unexpected("drop mid-upload: send: %s", strerror(errno));
        usleep((useconds_t)(next_rand(c) % 20000));
        drop(fd);
        record(scen, C_ABORTED, 0, t0, now());
        return;
    }
    case S_ABORT_QUEUED: {
        /* heavy work (images x draws jobs), sent whole, then the client vanishes while it waits */
        char h[512];
        size_t hl = head(h, sizeof h, "POST", "/log_prob?samples=16", "multipart/form-data; boundary=" BOUNDARY,
                         multi_heavy_len, 1);
        int fd = connect_server();
        if (fd < 0) {
            note_unexpected("drop while queued: connect: %s", strerror(errno));
            return;
        }
        if (send_all(fd, h, hl) || send_all(fd, multi_heavy, multi_heavy_len))
            note_unexpected("drop while queued: send: %s", strerror(errno));
        usleep((useconds_t)(1000 + next_rand(c) % 30000));
        drop(fd);
        record(scen, C_ABORTED, 0, t0, now());
        return;
    }
    case S_SLOW:
        st = request("POST", "/log_prob", "image/png", png_ok, png_ok_len, -1, 300 + (int)(next_rand(c) % 1700), &e);
        break;
    default: return;
    }
    double t1 = now();
    if (st <= 0) {
        note_unexpected("%s: %s", scen_names[scen], st < 0 ? strerror(e) : "connection closed without a reply");
        return;
    }
    int cls = classify(st);
    record(scen, cls, healthy, t0, t1);
    if (st != want && !(healthy && cls == C_5XX_SHED)) note_unexpected("%s: status %d, expected %d", scen_names[scen], st, want);
}

static void *client_main(void *arg)
{
    client *c = arg;
    int total = 0;
    for (int s = 0; s < S_COUNT; s++) total += scen_weight[s];
    while (!atomic_load(&stop_flag) && now() < t_end) {
        if (atomic_fetch_add(&total_requests, 1) >= max_requests) break;
        int scen;
        if (c->id < nslow) scen = S_SLOW;
        else {
            int r = (int)(next_rand(c) % (uint64_t)total);
            for (scen = 0; r >= scen_weight[scen]; scen++) r -= scen_weight[scen];
        }
        one(c, scen);
    }
    return NULL;
}

/* ---- bodies ---- */

static char *multipart(const uint8_t *png, size_t len, int parts, size_t *out_len)
{
    size_t cap = (size_t)parts * (len + 256) + 64, n = 0;
    char *b = malloc(cap);
    for (int i = 0; i < parts; i++) {
        n += (size_t)snprintf(b + n, cap - n,
                              "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"images\"; filename=\"img%d.png\"\r\n"
                              "Content-Type: image/png\r\n\r\n",
                              i);
        memcpy(b + n, png, len);
        n += len;
        n += (size_t)snprintf(b + n, cap - n, "\r\n");
    }
    n += (size_t)snprintf(b + n, cap - n, "--" BOUNDARY "--\r\n");
    *out_len = n;
    return b;
}

static int build_bodies(void)
{
    rnvp_model *m;
    rnvp_error err;
    if (rnvp_model_load(&m, model_path, &err)) {
        fprintf(stderr, "soak: %s\n", err.msg);
        return -1;
    }
    const rnvp_config *cfg = rnvp_model_config(m);
    int C = cfg->channels, H = cfg->height, W = cfg->width, D = rnvp_model_dim(m);
    uint8_t *px = malloc((size_t)D * 2 + (size_t)C * (H + 1) * W);   /* (C, H, W) images */
    for (size_t i = 0; i < (size_t)D * 2 + (size_t)C * (H + 1) * W; i++) px[i] = (uint8_t)(i * 37 + (i >> 3));
    uint8_t *p;
    size_t n;
    if (rnvp_png_encode_grid(&p, &n, px, 1, C, H, W, 1, -1, &err)) goto fail;
    png_ok = (char *)p, png_ok_len = n;
    png_bad = malloc(n / 2), png_bad_len = n / 2;   /* truncated */
    memcpy(png_bad, p, n / 2);
    if (rnvp_png_encode_grid(&p, &n, px, 1, C, H + 1, W, 1, -1, &err)) goto fail;
    png_wrong = (char *)p, png_wrong_len = n;
    multi_ok = multipart((uint8_t *)png_ok, png_ok_len, 4, &multi_ok_len);
    multi_heavy = multipart((uint8_t *)png_ok, png_ok_len, 8, &multi_heavy_len);
    multi_bad = multipart((uint8_t *)png_ok, png_ok_len, 2, &multi_bad_len);
    multi_bad_len -= 20;   /* the closing delimiter cut off */
    size_t cap = (size_t)D * 32 + 64;
    lat_ok = malloc(cap);
    lat_bad = malloc(cap);
    size_t k = (size_t)snprintf(lat_ok, cap, "{\"latents\": [[");
    for (int i = 0; i < D; i++) k += (size_t)snprintf(lat_ok + k, cap - k, "%s%.3f", i ? "," : "", 0.01 * (i % 50) - 0.25);
    k += (size_t)snprintf(lat_ok + k, cap - k, "], [");
    for (int i = 0; i < D; i++) k += (size_t)snprintf(lat_ok + k, cap - k, "%s%.3f", i ? "," : "", 0.3 - 0.01 * (i % 60));
    k += (size_t)snprintf(lat_ok + k, cap - k, "]]}");
    lat_ok_len = k;
    k = (size_t)snprintf(lat_bad, cap, "{\"latents\": [[");
    for (int i = 0; i < D - 1; i++) k += (size_t)snprintf(lat_bad + k, cap - k, "%s0.5", i ? "," : "");
    k += (size_t)snprintf(lat_bad + k, cap - k, "]]}");
    lat_bad_len = k;
    free(px);
    rnvp_model_free(m);
    return 0;
fail:
    fprintf(stderr, "soak: %s\n", err.msg);
    return -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

/* median of the n samples at v (n > 0) */
static long median_long(const long *v, size_t n)
{
    long *c = malloc(n * sizeof *c);
    if (!c) return v[n / 2];
    memcpy(c, v, n * sizeof *c);
    qsort(c, n, sizeof *c, cmp_long);
    long m = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
    free(c);
    return m;
}

static void usage(void)
{
    printf("usage: soak [--seconds S] [--clients N] [--slow N] [--warmup S] [--max-requests N] [--server EXE]\n"
           "            [--model PATH] [--server-args \"FLAGS\"] [--max-rss-growth PCT]\n"
           "Starts EXE (default bin/realnvp-server) on 127.0.0.1 with PATH (default tests/data/grey8.safetensors)\n"
           "and runs N clients (default 64; the first --slow of them, default 4, send a byte at a time) for S\n"
           "seconds (default 45) or N requests (default 2000000). Reports statuses, unexpected errors, RSS and\n"
           "fds of the server, starvation of healthy requests. Exit 0 when there were no unexpected errors, no fd\n"
           "leak, no starvation, a clean SIGTERM exit and (with --max-rss-growth) RSS growth within PCT after\n"
           "the warm-up (default warm-up: a sixth of the run, 5..60 s). The growth compared is that of the\n"
           "median RSS over a window right after the warm-up to the median over the last window of the run\n"
           "(each a tenth of the time after the warm-up, at least 5 one-second samples): single samples swing\n"
           "by a few percent with the number of requests in flight at that second.\n");
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        }
        if (!v) {
            fprintf(stderr, "soak: %s needs a value (see --help)\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--clients")) nclients = atoi(v);
        else if (!strcmp(a, "--slow")) nslow = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--max-requests")) max_requests = atol(v);
        else if (!strcmp(a, "--server")) server_exe = v;
        else if (!strcmp(a, "--model")) model_path = v;
        else if (!strcmp(a, "--server-args")) server_args = v;
        else if (!strcmp(a, "--max-rss-growth")) max_rss_growth = atof(v);
        else {
            fprintf(stderr, "soak: unknown option %s (see --help)\n", a);
            return 2;
        }
    }
    if (seconds <= 0 || nclients < 1 || nclients > 1000 || nslow < 0 || nslow > nclients || max_requests < 1) {
        fprintf(stderr, "soak: bad --seconds, --clients, --slow or --max-requests (see --help)\n");
        return 2;
    }
    if (warmup < 0) warmup = seconds / 6 < 5 ? 5 : seconds / 6 > 60 ? 60 : seconds / 6;
    if (warmup >= seconds) warmup = seconds / 2;
    signal(SIGPIPE, SIG_IGN);
    if (build_bodies() || start_server()) return 1;
    usleep(300000);
    long rss0 = proc_rss_kb(server_pid);
    int fd0 = proc_fds(server_pid);
    printf("soak: server pid %d on 127.0.0.1:%d, %d clients (%d slow), %.0f s (warm-up %.0f s), at most %ld requests\n",
           (int)server_pid, port, nclients, nslow, seconds, warmup, max_requests);
    fflush(stdout);

    t_start = now();
    t_end = t_start + seconds;
    pthread_t *th = calloc((size_t)nclients, sizeof *th);
    client *cl = calloc((size_t)nclients, sizeof *cl);
    for (int i = 0; i < nclients; i++) {
        cl[i] = (client){.id = i, .rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1)};
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    long rss_warm = -1, rss_max = rss0, rss_last = -1;
    int fd_max = fd0, died = 0;
    size_t ntl = 0, captl = (size_t)seconds + 16, warm_idx = 0;
    long *timeline = calloc(captl, sizeof *timeline);   /* RSS kB once a second */
    while (now() < t_end && atomic_load(&total_requests) < max_requests) {
        sleep(1);
        int st;
        if (waitpid(server_pid, &st, WNOHANG) == server_pid) {
            died = 1;
            note_unexpected("the server died during the run (status 0x%x)", st);
            atomic_store(&stop_flag, 1);
            break;
        }
        long r = proc_rss_kb(server_pid);
        int f = proc_fds(server_pid);
        if (r > rss_max) rss_max = r;
        if (f > fd_max) fd_max = f;
        if (rss_warm < 0 && now() >= t_start + warmup) rss_warm = r, warm_idx = ntl;
        rss_last = r;
        if (ntl < captl) timeline[ntl++] = r;
    }
    atomic_store(&stop_flag, 1);
    for (int i = 0; i < nclients; i++) pthread_join(th[i], NULL);
    double ran = now() - t_start;
    if (rss_warm < 0) rss_warm = rss_last;
    /* let the server notice the last dropped clients and finish what they left queued */
    long rss_end = -1;
    int fd_end = -1;
    for (int i = 0; i < 40 && !died; i++) {
        usleep(250000);
        fd_end = proc_fds(server_pid);
        if (fd_end <= fd0) break;
    }
    if (!died) rss_end = proc_rss_kb(server_pid);

    int exit_ok = 0;
    if (!died) {
        kill(server_pid, SIGTERM);
        for (int i = 0; i < 6000; i++) {
            int st;
            if (waitpid(server_pid, &st, WNOHANG) == server_pid) {
                exit_ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
                break;
            }
            usleep(10000);
        }
        if (!exit_ok) {
            kill(server_pid, SIGKILL);
            waitpid(server_pid, NULL, 0);
        }
    }
    char tail[4096] = "";
    FILE *f = fopen(errfile, "r");
    if (f) {
        fseek(f, 0, SEEK_END);
        long sz = ftell(f);
        fseek(f, sz > 3000 ? sz - 3000 : 0, SEEK_SET);
        size_t n = fread(tail, 1, sizeof tail - 1, f);
        tail[n] = 0;
        fclose(f);
    }
    int clean = exit_ok && strstr(tail, "stopped cleanly");
    int sanitizer = strstr(tail, "Sanitizer") != NULL || strstr(tail, "runtime error") != NULL;
    if (sanitizer) note_unexpected("the server's stderr reports a sanitizer error (see %s)", errfile);

    long total = 0;
    for (int i = 0; i < C_NCLS; i++) total += by_cls[i];
    printf("soak: %.1f s, %ld requests (%.0f/s), %ld unexpected errors\n", ran, total + unexpected, (total + unexpected) / ran,
           unexpected);
    for (int i = 0; i < C_NCLS; i++) printf("  %-32s %ld\n", cls_names[i], by_cls[i]);
    printf("  by scenario:");
    for (int s = 0; s < S_COUNT; s++) printf("%s %s %ld", s ? "," : "", scen_names[s], by_scen[s]);
    printf("\n");
    for (int i = 0; i < nmsg; i++) printf("  unexpected: %s\n", unexpected_msg[i]);
    qsort(lat, nlat, sizeof *lat, cmp_double);
    double p50 = nlat ? lat[nlat / 2] : 0, p99 = nlat ? lat[(size_t)(nlat * 0.99)] : 0, pmax = nlat ? lat[nlat - 1] : 0;
    double tail_gap = last_healthy_done > 0 ? t_start + ran - last_healthy_done : ran - warmup;
    if (tail_gap > longest_gap) longest_gap = tail_gap;
    /* starved: a gap of over 5 s without any healthy completion, or over 10% of them shed */
    int starved = healthy_ok == 0 || longest_gap > 5.0 || healthy_shed * 10 > healthy_ok + healthy_shed;
    printf("  healthy after warm-up: %ld ok, %ld shed (503/504, %.1f%%); latency ms p50 %.1f p99 %.1f max %.1f; longest gap "
           "without a healthy completion %.2f s: %s\n",
           healthy_ok, healthy_shed, 100.0 * (double)healthy_shed / (double)(healthy_ok + healthy_shed + !healthy_ok), p50, p99, pmax, longest_gap, starved ? "STARVED" : "not starved");
    double growth1 = rss_warm > 0 ? 100.0 * (double)(rss_last - rss_warm) / (double)rss_warm : 0;
    printf("  server RSS kB: start %ld, after warm-up %ld, end of load %ld (%+.1f%% after warm-up, single samples), idle end "
           "%ld, max %ld\n",
           rss0, rss_warm, rss_last, growth1, rss_end, rss_max);
    /* the criterion: medians over a window after the warm-up and at the end of the load */
    double growth = growth1;
    if (ntl > warm_idx) {
        size_t span = ntl - warm_idx, w = span / 10 < 5 ? 5 : span / 10;
        if (w > span) w = span;
        long m_warm = median_long(timeline + warm_idx, w), m_end = median_long(timeline + ntl - w, w);
        if (m_warm > 0) growth = 100.0 * (double)(m_end - m_warm) / (double)m_warm;
        printf("  server RSS kB, median of %zu s after the warm-up %ld, of the last %zu s %ld: %+.1f%% after warm-up\n", w, m_warm,
               w, m_end, growth);
    }
    printf("  server RSS kB over the run (tenths):");
    for (int i = 1; i <= 10 && ntl; i++) printf(" %ld", timeline[(ntl * (size_t)i) / 10 - 1 < ntl ? (ntl * (size_t)i) / 10 - 1 : ntl - 1]);
    long mid = ntl ? timeline[ntl / 2] : 0;
    printf("; second half %+.1f%%\n", mid > 0 ? 100.0 * (double)(rss_last - mid) / (double)mid : 0.0);
    printf("  server open fds: start %d, max %d, end %d\n", fd0, fd_max, fd_end);
    printf("  SIGTERM: %s\n", clean ? "exit 0, stopped cleanly" : exit_ok ? "exit 0 without 'stopped cleanly'" : "FAILED");
    int fd_leak = died || fd_end > fd0;
    int rss_bad = max_rss_growth >= 0 && growth > max_rss_growth;
    int pass = !unexpected && !fd_leak && !starved && clean && !rss_bad;
    printf("soak: %s (unexpected %ld, fd leak %s, starvation %s, clean exit %s, rss growth %+.1f%%%s)\n", pass ? "PASS" : "FAIL",
           unexpected, fd_leak ? "yes" : "no", starved ? "yes" : "no", clean ? "yes" : "no", growth,
           max_rss_growth >= 0 ? (rss_bad ? " over the limit" : " within the limit") : " reported only");
    if (pass) unlink(errfile);
    else printf("soak: server stderr kept in %s\n", errfile);
    fflush(stdout);   /* before LeakSanitizer's exit handler, in ASan builds */
    free(th);
    free(cl);
    free(timeline);
    free(lat);
    free(png_ok);
    free(png_bad);
    free(png_wrong);
    free(multi_ok);
    free(multi_bad);
    free(multi_heavy);
    free(lat_ok);
    free(lat_bad);
    return pass ? 0 : 1;
}
