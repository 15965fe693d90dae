/* bench_server.c: a closed-loop HTTP load generator for bin/realnvp-server: C keep-alive
 * connections each POST one PNG to /log_prob, wait for the answer, repeat, for S seconds.
 * Prints requests, images/s (requests completed inside the timed window / its length) and latency
 * percentiles of those requests, and the non-2xx answers of the whole run, warm-up included
 * (start it once /readyz is 200 for "non-2xx after ready"). Leaves out starting the server
 * (bench/run_server_bench.sh does that) and checking the answers' values (tests/ does).
 *
 *   bin/bench_server --port P --png IMG.png [--concurrency 16] [--seconds 5] [--warmup 1]
 *                    [--path /log_prob] [--json]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int port, concurrency = 16, json;
static double seconds = 5, warmup = 1;
static const char *path = "/log_prob";
static char *body;
static size_t body_len;
static double t_start, t_measure, t_end;

typedef struct worker {
    pthread_t th;
    double *lat;    /* (cap) latencies in seconds of requests finished inside the window */
    size_t n, cap;
    long errors, non200;
    long non2xx_all; /* non-2xx answers of the whole run, warm-up included */
} worker;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int connect_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* one request/response on fd; returns the status, 0 on a connection error */
static int roundtrip(int fd, const char *req, size_t req_len, char *buf, size_t cap)
{
    size_t off = 0;
    while (off < req_len) {
        ssize_t w = send(fd, req + off, req_len - off, MSG_NOSIGNAL);
        if (w <= 0) return 0;
        off += (size_t)w;
    }
    size_t n = 0;
    char *eoh = NULL;
    long clen = -1;
    for (;;) {
        ssize_t got = recv(fd, buf + n, cap - n - 1, 0);
        if (got <= 0) return 0;
        n += (size_t)got;
        buf[n] = 0;
        if (!eoh && (eoh = strstr(buf, "\r\n\r\n"))) {
            char *cl = strcasestr(buf, "\r\nContent-Length:");
            if (!cl || cl > eoh) return 0;
            clen = atol(cl + 17);
        }
        if (eoh && n >= (size_t)(eoh - buf) + 4 + (size_t)clen) break;
        if (n + 1 >= cap) return 0;
    }
    int status = 0;
    sscanf(buf, "HTTP/1.%*d %d", &status);
    return status;
}

static void *run(void *arg)
{
    worker *w = arg;
    char head[256];
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: %zu\r\n\r\n", path,
                      body_len);
    size_t req_len = (size_t)hl + body_len;
    char *req = malloc(req_len);
    memcpy(req, head, (size_t)hl);
    memcpy(req + hl, body, body_len);
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    int fd = connect_server();
    while (now() < t_end) {
        if (fd < 0) {
            w->errors++;
            usleep(1000);
            fd = connect_server();
            continue;
        }
        double t0 = now();
        int st = roundtrip(fd, req, req_len, buf, cap);
        double t1 = now();
        if (!st) {
            w->errors++;
            close(fd);
            fd = connect_server();
            continue;
        }
        if (st < 200 || st > 299) w->non2xx_all++;
        if (strcasestr(buf, "\r\nConnection: close")) {
            close(fd);
            fd = connect_server();
        }
        if (t1 < t_measure || t1 > t_end) continue;   /* count what completes inside the window */
        if (st != 200) {
            w->non200++;
            continue;
        }
        if (w->n == w->cap) {
            w->cap = w->cap ? 2 * w->cap : 4096;
            w->lat = realloc(w->lat, w->cap * sizeof *w->lat);
        }
        w->lat[w->n++] = t1 - t0;
    }
    if (fd >= 0) close(fd);
    free(req);
    free(buf);
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, size_t n, double p)
{
    if (!n) return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

int main(int argc, char **argv)
{
    const char *png = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) json = 1;
        else if (v && !strcmp(a, "--port")) port = atoi(v), i++;
        else if (v && !strcmp(a, "--png")) png = v, i++;
        else if (v && !strcmp(a, "--concurrency")) concurrency = atoi(v), i++;
        else if (v && !strcmp(a, "--seconds")) seconds = atof(v), i++;
        else if (v && !strcmp(a, "--warmup")) warmup = atof(v), i++;
        else if (v && !strcmp(a, "--path")) path = v, i++;
        else {
            fprintf(stderr, "usage: bench_server --port P --png IMG.png [--concurrency C] [--seconds S] [--warmup W] "
                            "[--path /log_prob] [--json]\n");
            return 2;
        }
    }
    if (!port || !png || concurrency < 1 || seconds <= 0) {
        fprintf(stderr, "bench_server: --port and --png are required (see the usage at the top of bench/bench_server.c)\n");
        return 2;
    }
    FILE *f = fopen(png, "rb");
    if (!f) {
        fprintf(stderr, "bench_server: %s: %s\n", png, strerror(errno));
        return 1;
    }
    body = malloc(1 << 24);
    body_len = fread(body, 1, 1 << 24, f);
    fclose(f);
    worker *w = calloc((size_t)concurrency, sizeof *w);
    t_start = now();
    t_measure = t_start + warmup;
    t_end = t_measure + seconds;
    for (int i = 0; i < concurrency; i++) pthread_create(&w[i].th, NULL, run, &w[i]);
    size_t total = 0;
    long errors = 0, non200 = 0, non2xx_all = 0;
    for (int i = 0; i < concurrency; i++) {
        pthread_join(w[i].th, NULL);
        total += w[i].n;
        errors += w[i].errors;
        non200 += w[i].non200;
        non2xx_all += w[i].non2xx_all;
    }
    double *all = malloc((total + 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < concurrency; i++) {
        memcpy(all + k, w[i].lat, w[i].n * sizeof *all);
        k += w[i].n;
        free(w[i].lat);
    }
    qsort(all, total, sizeof *all, cmp);
    double ips = (double)total / seconds;
    double p50 = pct(all, total, 0.5) * 1e3, p99 = pct(all, total, 0.99) * 1e3;
    if (json)
        printf("{\"concurrency\": %d, \"requests\": %zu, \"images_per_s\": %.6g, \"p50_ms\": %.6g, \"p99_ms\": %.6g, "
               "\"errors\": %ld, \"non200\": %ld, \"non2xx_all\": %ld}\n",
               concurrency, total, ips, p50, p99, errors, non200, non2xx_all);
    else
        printf("concurrency %d: %zu requests in %.1f s, %.1f images/s, p50 %.2f ms, p99 %.2f ms, %ld errors, %ld non-200 "
               "(%ld non-2xx in the whole run, warm-up included)\n",
               concurrency, total, seconds, ips, p50, p99, errors, non200, non2xx_all);
    free(all);
    free(w);
    free(body);
    return errors || non200 ? 1 : 0;
}
