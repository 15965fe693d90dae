/* attack.c: bin/attack: one hostile-load attack against a running bin/realnvp-server on
 * 127.0.0.1 (bench/run_attack.sh starts a fresh server per attack and prints the table), with
 * the server's memory sampled from /proc/PID/status every 20 ms (VmHWM, VmRSS) and a probe
 * thread sending GET /healthz on a fresh connection every 50 ms. Prints one markdown table row:
 * peak RSS, probe latency p50/p99/max, probe failures and the statuses the attack got.
 * Everything is bounded: at most --seconds (30 at most) of attack, --max-requests requests, and
 * the attack stops early when the server's RSS passes --rss-cap-mib (the machine is shared).
 * Requests still unanswered when the time is up are cut and counted as unanswered-at-end.
 * Leaves out starting the server and other hosts: it connects to 127.0.0.1 only.
 *
 *   bin/attack --port P --pid PID --attack a|b|c|d|e|f [--seconds 20] [--png-dir DIR]
 *              [--probe-timeout-ms 3000] [--limit 256Mi] [--rss-cap-mib 3072] [--max-requests 300000]
 *   bin/attack --header                    # the table's header lines
 *   bin/attack --make-pngs DIR --model M [--count 256] [--seed 1]   # M's samples as DIR/NNNN.png
 *
 * Attacks (see --help): a: 2 x POST /decode of 8 MB of {"latents":[[],[],...]}; b: 40 uploads
 * declaring 8 MiB that stop one byte short and hold 15 s; c: 20 slow senders, one body byte every
 * 2 s; d: 16-part multipart /log_prob?samples=64 in a loop next to a light single-image client;
 * e: 64 clients uploading 256-image multiparts; f: 8 clients GET /sample?n=256 plus HEAD /sample.
 */
#include "realnvp.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BOUNDARY "attackBoundary4Kz"
#define MAX_BODY 8388608L   /* the server's default --max-body-bytes */
#define MAXTH 128

/* ---- options ---- */
static int port, pid;
static char attack;
static double seconds = 20, probe_timeout = 3.0;
static const char *png_dir, *limit_label = "256Mi";
static double limit_mib = 256, rss_cap_mib = 3072;
static long max_requests = 300000;

/* ---- shared state ---- */
static double t_start, t_end;
static atomic_int stop_flag;
static atomic_long nreq;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int running(void) { return !atomic_load(&stop_flag) && now() < t_end; }

static void sleep_s(double s)
{
    if (s > 0) usleep((useconds_t)(s * 1e6));
}

/* ---- status counts and latencies of one kind of request ---- */
enum { R_CONNECT = 600, R_SEND, R_TIMEOUT, R_CLOSED, R_HELD, R_CUT, R_NCODES };
static const char *rname(int c)
{
    switch (c) {
    case R_CONNECT: return "connect-err";
    case R_SEND: return "send-err/reset";
    case R_TIMEOUT: return "no-reply-timeout";
    case R_CLOSED: return "closed-no-reply";
    case R_HELD: return "held-open-no-reply";
    case R_CUT: return "unanswered-at-end";
    }
    return NULL;
}
typedef struct tally {
    long n[R_NCODES];
    double *lat;   /* seconds, of 2xx replies */
    size_t nlat, cap;
} tally;
static tally t_main, t_side;   /* the attack's requests; d: the light client, f: HEAD */

static void count(tally *t, int code, double secs)
{
    pthread_mutex_lock(&mu);
    if (code < 0 || code >= R_NCODES) code = R_CLOSED;
    t->n[code]++;
    if (code >= 200 && code < 300) {
        if (t->nlat == t->cap) {
            size_t c = t->cap ? 2 * t->cap : 1024;
            double *p = realloc(t->lat, c * sizeof *p);
            if (p) t->lat = p, t->cap = c;
        }
        if (t->nlat < t->cap) t->lat[t->nlat++] = secs;
    }
    pthread_mutex_unlock(&mu);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, size_t n, double p)   /* v sorted */
{
    if (!n) return 0;
    return v[(size_t)(p * (double)(n - 1) + 0.5)];
}

static void tally_str(tally *t, char *buf, size_t cap)
{
    size_t k = 0;
    buf[0] = 0;
    for (int c = 0; c < R_NCODES; c++) {
        if (!t->n[c]) continue;
        const char *nm = rname(c);
        if (nm) k += (size_t)snprintf(buf + k, cap - k, "%s%s:%ld", k ? " " : "", nm, t->n[c]);
        else k += (size_t)snprintf(buf + k, cap - k, "%s%d:%ld", k ? " " : "", c, t->n[c]);
        if (k >= cap) break;
    }
    if (!buf[0]) snprintf(buf, cap, "none");
}

/* ---- sockets: each attack thread registers its open socket so the deadline can cut it ---- */
static int cur_fd[MAXTH];
static pthread_mutex_t fd_mu = PTHREAD_MUTEX_INITIALIZER;

static int connect_srv(int slot, double timeout)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = (time_t)timeout, .tv_usec = (suseconds_t)((timeout - (double)(time_t)timeout) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    if (slot >= 0) {
        pthread_mutex_lock(&fd_mu);
        cur_fd[slot] = fd;
        pthread_mutex_unlock(&fd_mu);
    }
    return fd;
}

static void close_srv(int slot, int fd)
{
    if (slot >= 0) pthread_mutex_lock(&fd_mu);
    close(fd);
    if (slot >= 0) {
        cur_fd[slot] = -1;
        pthread_mutex_unlock(&fd_mu);
    }
}

static void cut_all(void)
{
    pthread_mutex_lock(&fd_mu);
    for (int i = 0; i < MAXTH; i++)
        if (cur_fd[i] >= 0) shutdown(cur_fd[i], SHUT_RDWR);
    pthread_mutex_unlock(&fd_mu);
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

/* reads a reply to EOF (requests say Connection: close); the status or an R_ code */
static int read_reply(int fd)
{
    char buf[65536], first[16] = "";
    size_t got = 0;
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            if (got >= 12) break;   /* reset after the reply */
            return errno == EAGAIN || errno == EWOULDBLOCK ? R_TIMEOUT : R_CLOSED;
        }
        if (r == 0) break;
        if (got < 12) memcpy(first + got, buf, (size_t)r < 12 - got ? (size_t)r : 12 - got);
        got += (size_t)r;
    }
    if (got < 12 || strncmp(first, "HTTP/1.", 7)) return R_CLOSED;
    return atoi(first + 9);
}

static size_t head(char *h, size_t cap, const char *method, const char *path, const char *ctype, long clen)
{
    int n = snprintf(h, cap, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n", method, path);
    if (ctype) n += snprintf(h + n, cap - (size_t)n, "Content-Type: %s\r\n", ctype);
    if (clen >= 0) n += snprintf(h + n, cap - (size_t)n, "Content-Length: %ld\r\n", clen);
    n += snprintf(h + n, cap - (size_t)n, "\r\n");
    return (size_t)n;
}

/* one whole request on a fresh connection; counts it in t (with its latency) and returns the code */
static int request(int slot, tally *t, const char *method, const char *path, const char *ctype, const char *body,
                   size_t len)
{
    if (atomic_fetch_add(&nreq, 1) >= max_requests) {
        atomic_store(&stop_flag, 1);
        return -1;
    }
    char h[512];
    size_t hl = head(h, sizeof h, method, path, ctype, body ? (long)len : -1);
    double t0 = now();
    int fd = connect_srv(slot, 35);
    int code;
    if (fd < 0) code = R_CONNECT;
    else {
        int bad = send_all(fd, h, hl) || (body && send_all(fd, body, len));
        code = read_reply(fd);   /* an early reply (413) may come while we send */
        if (bad && code >= R_CONNECT) code = R_SEND;
        close_srv(slot, fd);
    }
    if (!running() && code >= R_CONNECT) code = R_CUT;   /* still waiting when the deadline cut it */
    count(t, code, now() - t0);
    if (code == R_CONNECT) usleep(10000);
    return code;
}

/* ---- bodies ---- */
static char *png[256];
static size_t png_len[256];
static int npng;
static char *body_a, *body_d, *body_e, *body_junk;
static size_t body_a_len, body_d_len, body_e_len;

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int load_pngs(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "attack: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char *names[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".png")) names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n; i++) {
        if (npng < 256) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            FILE *f = fopen(path, "rb");
            if (f) {
                png[npng] = malloc(1 << 20);
                png_len[npng] = fread(png[npng], 1, 1 << 20, f);
                fclose(f);
                npng++;
            }
        }
        free(names[i]);
    }
    if (!npng) {
        fprintf(stderr, "attack: no PNG files in %s\n", dir);
        return -1;
    }
    return 0;
}

/* multipart/form-data of `parts` PNGs (cycling through the loaded ones) */
static char *multipart(int parts, size_t *out_len)
{
    size_t cap = 64, n = 0;
    for (int i = 0; i < parts; i++) cap += png_len[i % npng] + 256;
    char *b = malloc(cap);
    for (int i = 0; i < parts; i++) {
        int k = i % npng;
        n += (size_t)snprintf(b + n, cap - n,
                              "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"images\"; filename=\"img%d.png\"\r\n"
                              "Content-Type: image/png\r\n\r\n",
                              i);
        memcpy(b + n, png[k], png_len[k]);
        n += png_len[k];
        n += (size_t)snprintf(b + n, cap - n, "\r\n");
    }
    n += (size_t)snprintf(b + n, cap - n, "--" BOUNDARY "--\r\n");
    *out_len = n;
    return b;
}

static void build_bodies(void)
{
    if (attack == 'a') {
        /* {"latents":[[],[],...,[]]}, just under the 8 MiB limit */
        const char *pre = "{\"latents\":[", *post = "[]]}";
        size_t k = (size_t)(MAX_BODY - 1 - (long)strlen(pre) - (long)strlen(post)) / 3;
        body_a = malloc(MAX_BODY);
        size_t n = (size_t)sprintf(body_a, "%s", pre);
        for (size_t i = 0; i < k; i++) memcpy(body_a + n, "[],", 3), n += 3;
        n += (size_t)sprintf(body_a + n, "%s", post);
        body_a_len = n;
    }
    if (attack == 'b' || attack == 'c') {
        body_junk = malloc(MAX_BODY);
        for (long i = 0; i < MAX_BODY; i++) body_junk[i] = (char)(i * 131 + 7);
    }
    if (attack == 'd') body_d = multipart(16, &body_d_len);
    if (attack == 'e') body_e = multipart(256, &body_e_len);
}

/* ---- the attacks' threads ---- */
typedef struct th_arg {
    int slot;
} th_arg;

static void *run_a(void *p)
{
    th_arg *a = p;
    while (running()) request(a->slot, &t_main, "POST", "/decode", "application/json", body_a, body_a_len);
    return NULL;
}

/* b: headers declaring 8 MiB, all of the body but its last byte, hold ~15 s, close */
static void *run_b(void *p)
{
    th_arg *a = p;
    if (atomic_fetch_add(&nreq, 1) >= max_requests) return NULL;
    char h[512];
    size_t hl = head(h, sizeof h, "POST", "/log_prob", "image/png", MAX_BODY);
    int fd = connect_srv(a->slot, 35);
    if (fd < 0) {
        count(&t_main, R_CONNECT, 0);
        return NULL;
    }
    if (send_all(fd, h, hl) || send_all(fd, body_junk, (size_t)MAX_BODY - 1)) {
        int code = read_reply(fd);
        close_srv(a->slot, fd);
        if (running()) count(&t_main, code >= R_CONNECT ? R_SEND : code, 0);
        return NULL;
    }
    double hold_end = now() + 15;
    int code = R_HELD;
    while (running() && now() < hold_end) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 100) > 0) {   /* the server answered or closed (or the deadline cut it) */
            code = running() ? read_reply(fd) : R_HELD;
            break;
        }
    }
    close_srv(a->slot, fd);
    count(&t_main, code, 0);
    return NULL;
}

/* c: a body of 100000 declared bytes, one byte every 2 s until the end of the attack */
static void *run_c(void *p)
{
    th_arg *a = p;
    if (atomic_fetch_add(&nreq, 1) >= max_requests) return NULL;
    char h[512];
    size_t hl = head(h, sizeof h, "POST", "/log_prob", "image/png", 100000);
    int fd = connect_srv(a->slot, 35);
    if (fd < 0) {
        count(&t_main, R_CONNECT, 0);
        return NULL;
    }
    int code = R_HELD;
    if (send_all(fd, h, hl)) code = R_SEND;
    for (size_t i = 0; code == R_HELD && running(); i++) {
        if (send_all(fd, body_junk + i, 1)) {
            if (!running()) break;
            code = read_reply(fd);
            if (code >= R_CONNECT) code = R_SEND;
            break;
        }
        double next = now() + 2;
        while (running() && now() < next) {
            struct pollfd pf = {.fd = fd, .events = POLLIN};
            if (poll(&pf, 1, 100) > 0) {
                code = running() ? read_reply(fd) : R_HELD;
                break;
            }
        }
    }
    close_srv(a->slot, fd);
    count(&t_main, code, 0);
    return NULL;
}

static void *run_d_heavy(void *p)
{
    th_arg *a = p;
    while (running())
        request(a->slot, &t_main, "POST", "/log_prob?samples=64", "multipart/form-data; boundary=" BOUNDARY, body_d,
                body_d_len);
    return NULL;
}

static void *run_d_light(void *p)
{
    th_arg *a = p;
    for (int i = 0; running(); i++)
        request(a->slot, &t_side, "POST", "/log_prob", "image/png", png[i % npng], png_len[i % npng]);
    return NULL;
}

static void *run_e(void *p)
{
    th_arg *a = p;
    while (running())
        request(a->slot, &t_main, "POST", "/log_prob", "multipart/form-data; boundary=" BOUNDARY, body_e, body_e_len);
    return NULL;
}

static void *run_f_get(void *p)
{
    th_arg *a = p;
    while (running()) request(a->slot, &t_main, "GET", "/sample?n=256", NULL, NULL, 0);
    return NULL;
}

static void *run_f_head(void *p)
{
    th_arg *a = p;
    for (int i = 0; running(); i++) request(a->slot, &t_side, "HEAD", i % 2 ? "/sample?n=256" : "/sample", NULL, NULL, 0);
    return NULL;
}

/* ---- the probe and the memory sampler ---- */
static double *probe_lat;
static size_t nprobe, probe_cap;
static long probe_fail;
static char probe_fail_kinds[256];
static atomic_int probe_stop;

static void *run_probe(void *unused)
{
    (void)unused;
    tally pt = {0};
    double next = now();
    while (!atomic_load(&probe_stop) && nprobe < probe_cap) {
        double t0 = now();
        int fd = connect_srv(-1, probe_timeout);
        int code = R_CONNECT;
        if (fd >= 0) {
            static const char req[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            code = send_all(fd, req, sizeof req - 1) ? R_SEND : read_reply(fd);
            close(fd);
        }
        double dt = now() - t0;
        if (dt > probe_timeout && code < R_CONNECT) code = R_TIMEOUT;
        if (code != 200) {
            probe_fail++;
            pt.n[code < R_NCODES && code >= 0 ? code : R_CLOSED]++;
        }
        probe_lat[nprobe++] = dt;
        next += 0.05;
        double w = next - now();
        if (w > 0) sleep_s(w);
        else next = now();   /* late (a slow probe): the next one goes now */
    }
    tally_str(&pt, probe_fail_kinds, sizeof probe_fail_kinds);
    return NULL;
}

static long hwm_kb = -1, rss_max_kb = -1, rss_idle_kb = -1;
static atomic_int sampler_stop, server_gone, over_cap;

static int read_status(long *rss, long *hwm)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    *rss = *hwm = -1;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "VmRSS:", 6)) *rss = atol(line + 6);
        else if (!strncmp(line, "VmHWM:", 6)) *hwm = atol(line + 6);
    }
    fclose(f);
    return *rss < 0 ? -1 : 0;   /* a zombie has no VmRSS */
}

static void *run_sampler(void *unused)
{
    (void)unused;
    while (!atomic_load(&sampler_stop)) {
        long r, h;
        if (read_status(&r, &h)) {
            atomic_store(&server_gone, 1);
            atomic_store(&stop_flag, 1);
            break;
        }
        if (r > rss_max_kb) rss_max_kb = r;
        hwm_kb = h;
        if ((double)r > rss_cap_mib * 1024) {
            atomic_store(&over_cap, 1);
            atomic_store(&stop_flag, 1);
        }
        usleep(20000);
    }
    return NULL;
}

static int wait_ready(void)
{
    for (double t0 = now(); now() - t0 < 60;) {
        int fd = connect_srv(-1, 5);
        if (fd >= 0) {
            static const char req[] = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            int code = send_all(fd, req, sizeof req - 1) ? 0 : read_reply(fd);
            close(fd);
            if (code == 200) return 0;
        }
        usleep(50000);
    }
    return -1;
}

/* ---- writing sample PNGs ---- */
static int make_pngs(const char *dir, const char *model, int n, uint64_t seed)
{
    rnvp_model *m;
    rnvp_ctx *ctx;
    rnvp_error err;
    if (rnvp_model_load(&m, model, &err)) goto fail0;
    const rnvp_config *cfg = rnvp_model_config(m);
    int D = rnvp_model_dim(m), B = 64;
    if (rnvp_ctx_create(&ctx, m, B, &err)) goto fail1;
    mkdir(dir, 0777);   /* its parent must exist */
    uint8_t *px = malloc((size_t)B * (size_t)D);
    for (int i0 = 0; i0 < n; i0 += B) {
        int b = n - i0 < B ? n - i0 : B;
        /* image i is drawn with seed + i, so the set does not depend on B */
        for (int j = 0; j < b; j++)
            if (rnvp_sample(ctx, px + (size_t)j * (size_t)D, NULL, 1, 0.7, seed + (uint64_t)(i0 + j), &err)) goto fail2;
        for (int j = 0; j < b; j++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%04d.png", dir, i0 + j);
            if (rnvp_png_write_grid(path, px + (size_t)j * (size_t)D, 1, cfg->channels, cfg->height, cfg->width, 1, &err))
                goto fail2;
        }
    }
    free(px);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);
    return 0;
fail2:
    free(px);
    rnvp_ctx_free(ctx);
fail1:
    rnvp_model_free(m);
fail0:
    fprintf(stderr, "attack: %s\n", err.msg);
    return 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: attack --port P --pid PID --attack a|b|c|d|e|f [--seconds S] [--png-dir DIR] [--probe-timeout-ms MS]\n"
            "              [--limit LABEL] [--limit-mib N] [--rss-cap-mib N] [--max-requests N]\n"
            "       attack --header\n"
            "       attack --make-pngs DIR --model MODEL [--count N] [--seed S]\n"
            "Runs one attack for S seconds (default 20, at most 30; b at least 18) against the server on 127.0.0.1:P whose process is\n"
            "PID, and prints one markdown row: VmHWM and the largest VmRSS sampled every 20 ms (MiB), the k8s limit\n"
            "LABEL (default 256Mi, N MiB), GET /healthz p50/p99/max latency (a probe on a fresh connection every\n"
            "50 ms; a failure is an error, a non-200 or a reply slower than MS, default 3000: the k8s liveness\n"
            "timeout), probe failures and the attack's statuses. The attack stops early when the server's VmRSS\n"
            "passes --rss-cap-mib (default 3072) or after --max-requests requests (default 300000).\n"
            "  a  2 clients POST /decode, 8 MB of {\"latents\":[[],[],...]} (just under the 8 MiB body limit), in a loop\n"
            "  b  40 connections POST /log_prob with Content-Length 8388608, all but the last byte, hold 15 s, close\n"
            "  c  20 connections POST /log_prob, Content-Length 100000, one body byte every 2 s until the end\n"
            "  d  1 client POST /log_prob?samples=64 of 16 PNGs (1024 jobs) in a loop, 1 light client single PNGs\n"
            "  e  64 clients POST /log_prob of 256 PNGs (multipart) in a loop\n"
            "  f  8 clients GET /sample?n=256 in a loop, 1 client HEAD /sample and /sample?n=256 in a loop\n"
            "d and e need --png-dir (28x28 PNGs of the model's shape; --make-pngs writes some).\n");
}

int main(int argc, char **argv)
{
    const char *make_dir = NULL, *model = NULL;
    int npngs = 256;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--header")) {
            printf("| attack | server VmHWM MiB | max VmRSS MiB (20 ms samples) | k8s memory limit | /healthz p50 / p99 / max ms "
                   "(probes) | probe failures | attack statuses (count) | notes |\n"
                   "|---|---:|---:|---|---|---:|---|---|\n");
            return 0;
        }
        if (!v) {
            fprintf(stderr, "attack: %s needs a value (see --help)\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--pid")) pid = atoi(v);
        else if (!strcmp(a, "--attack")) attack = v[0];
        else if (!strcmp(a, "--seconds")) seconds = atof(v);
        else if (!strcmp(a, "--png-dir")) png_dir = v;
        else if (!strcmp(a, "--probe-timeout-ms")) probe_timeout = atof(v) / 1000;
        else if (!strcmp(a, "--limit")) limit_label = v;
        else if (!strcmp(a, "--limit-mib")) limit_mib = atof(v);
        else if (!strcmp(a, "--rss-cap-mib")) rss_cap_mib = atof(v);
        else if (!strcmp(a, "--max-requests")) max_requests = atol(v);
        else if (!strcmp(a, "--make-pngs")) make_dir = v;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--count")) npngs = atoi(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "attack: unknown option %s (see --help)\n", a);
            return 2;
        }
    }
    if (make_dir) {
        if (!model || npngs < 1 || npngs > 100000) {
            fprintf(stderr, "attack: --make-pngs needs --model and a --count of 1..100000\n");
            return 2;
        }
        rnvp_set_num_threads(2);
        return make_pngs(make_dir, model, npngs, seed);
    }
    if (port <= 0 || pid <= 0 || !attack || !strchr("abcdef", attack) || seconds <= 0 || max_requests < 1 ||
        probe_timeout <= 0) {
        fprintf(stderr, "attack: needs --port, --pid and --attack a..f (see --help)\n");
        return 2;
    }
    if (attack == 'b' && seconds < 18) seconds = 18;   /* the send, then the 15 s hold */
    if (seconds > 30) seconds = 30;
    if ((attack == 'd' || attack == 'e') && (!png_dir || load_pngs(png_dir))) {
        fprintf(stderr, "attack: attack %c needs --png-dir with PNGs of the model's shape\n", attack);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < MAXTH; i++) cur_fd[i] = -1;
    build_bodies();
    if (wait_ready()) {
        fprintf(stderr, "attack: the server on port %d did not become ready within 60 s\n", port);
        return 1;
    }
    long h0;
    if (read_status(&rss_idle_kb, &h0)) {
        fprintf(stderr, "attack: cannot read /proc/%d/status\n", pid);
        return 1;
    }
    probe_cap = (size_t)(seconds * 20 * 2 + 100);
    probe_lat = malloc(probe_cap * sizeof *probe_lat);

    pthread_t sampler, probe, th[MAXTH];
    th_arg args[MAXTH];
    void *(*fn[MAXTH])(void *);
    int nth = 0;
    switch (attack) {
    case 'a': for (; nth < 2; nth++) fn[nth] = run_a; break;
    case 'b': for (; nth < 40; nth++) fn[nth] = run_b; break;
    case 'c': for (; nth < 20; nth++) fn[nth] = run_c; break;
    case 'd': fn[nth++] = run_d_heavy, fn[nth++] = run_d_light; break;
    case 'e': for (; nth < 64; nth++) fn[nth] = run_e; break;
    case 'f':
        for (; nth < 8; nth++) fn[nth] = run_f_get;
        fn[nth++] = run_f_head;
        break;
    }
    pthread_create(&sampler, NULL, run_sampler, NULL);
    t_start = now();
    t_end = t_start + seconds;
    pthread_create(&probe, NULL, run_probe, NULL);
    for (int i = 0; i < nth; i++) {
        args[i].slot = i;
        pthread_create(&th[i], NULL, fn[i], &args[i]);
    }
    while (running()) usleep(20000);
    atomic_store(&stop_flag, 1);
    cut_all();   /* requests still waiting at the deadline are cut (request(): unanswered-at-end) */
    for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
    double ran = now() - t_start;
    atomic_store(&probe_stop, 1);
    pthread_join(probe, NULL);
    usleep(40000);
    atomic_store(&sampler_stop, 1);
    pthread_join(sampler, NULL);
    long r_end = -1, h_end = -1;
    if (!read_status(&r_end, &h_end)) hwm_kb = h_end;

    qsort(probe_lat, nprobe, sizeof *probe_lat, cmp_double);
    char st_main[512], st_side[512], notes[1024];
    tally_str(&t_main, st_main, sizeof st_main);
    tally_str(&t_side, st_side, sizeof st_side);
    size_t k = (size_t)snprintf(notes, sizeof notes, "idle RSS %.1f MiB; %.1f s", rss_idle_kb / 1024.0, ran);
    if (attack == 'd' || attack == 'f') {
        qsort(t_side.lat, t_side.nlat, sizeof *t_side.lat, cmp_double);
        k += (size_t)snprintf(notes + k, sizeof notes - k, "; %s: %s", attack == 'd' ? "light client (1 PNG)" : "HEAD /sample",
                              st_side);
        if (t_side.nlat)
            k += (size_t)snprintf(notes + k, sizeof notes - k, ", 2xx latency p50 %.0f ms p99 %.0f ms",
                                  pct(t_side.lat, t_side.nlat, 0.5) * 1e3, pct(t_side.lat, t_side.nlat, 0.99) * 1e3);
    }
    if (t_main.nlat && attack != 'b' && attack != 'c') {
        qsort(t_main.lat, t_main.nlat, sizeof *t_main.lat, cmp_double);
        k += (size_t)snprintf(notes + k, sizeof notes - k, "; attack 2xx latency p50 %.0f ms", pct(t_main.lat, t_main.nlat, 0.5) * 1e3);
    }
    if (probe_fail) k += (size_t)snprintf(notes + k, sizeof notes - k, "; probe failures: %s", probe_fail_kinds);
    if (atomic_load(&over_cap))
        k += (size_t)snprintf(notes + k, sizeof notes - k, "; STOPPED EARLY: server VmRSS passed %.0f MiB", rss_cap_mib);
    if (atomic_load(&server_gone)) k += (size_t)snprintf(notes + k, sizeof notes - k, "; SERVER DIED during the attack");
    if (atomic_load(&nreq) >= max_requests)
        k += (size_t)snprintf(notes + k, sizeof notes - k, "; request bound %ld reached", max_requests);
    static const char *label[] = {"a. 2 x POST /decode 8 MB of []", "b. 40 x 8 MiB upload, last byte held 15 s",
                                  "c. 20 slow senders, 1 byte / 2 s", "d. 1024-job multipart + light client",
                                  "e. 64 x 256-image multipart", "f. 8 x GET /sample?n=256 + HEAD"};
    double hwm = hwm_kb / 1024.0;
    printf("| %s | %.1f | %.1f | %s%s | %.1f / %.1f / %.1f (%zu) | %ld | %s | %s |\n", label[attack - 'a'], hwm,
           rss_max_kb / 1024.0, limit_label, hwm > limit_mib ? " (EXCEEDED)" : "", pct(probe_lat, nprobe, 0.5) * 1e3,
           pct(probe_lat, nprobe, 0.99) * 1e3, nprobe ? probe_lat[nprobe - 1] * 1e3 : 0.0, nprobe, probe_fail, st_main,
           notes);
    fflush(stdout);
    free(probe_lat);
    free(t_main.lat);
    free(t_side.lat);
    free(body_a);
    free(body_d);
    free(body_e);
    free(body_junk);
    for (int i = 0; i < npng; i++) free(png[i]);
    return 0;
}
