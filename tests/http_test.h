/* http_test.h: what test_server.c and test_oip.c share: bin/realnvp-server started on a free port and stopped,
 * a tiny HTTP/1.1 client over loopback, JSON bodies. Leaves out chunked replies, TLS and each API's own checks. */
#ifndef RNVP_HTTP_TEST_H
#define RNVP_HTTP_TEST_H

#include <check.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* (every function is static and marked unused: a test uses what it needs, without -Wunused-function warnings) */

static char dir[64];                            /* the test's fresh folder (http_test_begin), its servers' logs */
static const char *exe = "bin/realnvp-server";   /* REALNVP_SERVER_BIN overrides it */

/* ---- files and processes ---- */

/* the whole file, NUL-terminated (len may be NULL); NULL if it cannot be read */
__attribute__((unused)) static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0, got;
    char *b = malloc(cap);
    while ((got = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n < 2) b = realloc(b, cap *= 2);
    }
    fclose(f);
    b[n] = 0;
    if (len) *len = n;
    return b;
}

/* The fixture's first steps: exe from REALNVP_SERVER_BIN when set, a fresh dir /tmp/rnvp_<name>_XXXXXX.
 * 0 on success; -1 (said on stderr, prefixed by name) when the folder cannot be made or exe is missing. */
__attribute__((unused)) static int http_test_begin(const char *name)
{
    const char *x = getenv("REALNVP_SERVER_BIN");
    if (x && *x) exe = x;
    snprintf(dir, sizeof dir, "/tmp/rnvp_%s_XXXXXX", name);
    if (!mkdtemp(dir)) {
        dir[0] = 0;
        return -1;
    }
    if (access(exe, X_OK)) {
        fprintf(stderr, "%s: %s is missing (run from the repository root after make)\n", name, exe);
        return -1;
    }
    return 0;
}

/* removes dir and all in it (when http_test_begin made it) */
__attribute__((unused)) static void http_test_end(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (dir[0]) (void)!system(cmd);
}

typedef struct server {
    pid_t pid;
    int port;
    char log[160], err[160];   /* its access log and stderr, in dir */
} server;

/* SIGKILL and reap; -1 */
__attribute__((unused)) static int kill_server(server *s)
{
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    return -1;
}

/* Starts exe --port 0 with extra flags (--model among them), the access log to s->log and stderr to s->err;
 * waits for its "listening" line. 0 on success; -1 if it exited first (its exit status in *status when not NULL). */
__attribute__((format(printf, 3, 4), unused)) static int start_server(server *s, int *status, const char *fmt, ...)
{
    static int count;
    char args[1024], cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    int id = __sync_fetch_and_add(&count, 1);
    snprintf(s->log, sizeof s->log, "%s/access_%d_%d.log", dir, (int)getpid(), id);
    snprintf(s->err, sizeof s->err, "%s/err_%d_%d.txt", dir, (int)getpid(), id);
    snprintf(cmd, sizeof cmd, "exec %s --port 0 --access-log %s %s 2>%s", exe, s->log, args, s->err);
    s->pid = fork();
    if (s->pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 3000; i++) {
        char *e = slurp(s->err, NULL);
        const char *p = e ? strstr(e, "listening on http://127.0.0.1:") : NULL;
        if (p) {
            s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
            free(e);
            return 0;
        }
        free(e);
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
            s->pid = 0;
            return -1;
        }
        usleep(10000);
    }
    return kill_server(s);
}

/* why the server did not stop as asked, and the end of its stderr (the log names the cause) */
static void say_why(const server *s, const char *why)
{
    size_t n = 0;
    char *e = slurp(s->err, &n);
    fprintf(stderr, "wait_server: the server %s; the end of its stderr:\n%s\n", why,
            e ? e + (n > 2000 ? n - 2000 : 0) : "(none)");
    free(e);
}

/* Waits at most ms for the server to exit (after a SIGTERM); its exit status, -1 when it did not exit normally,
 * -2 when it was still running (then killed); in those two cases what happened is printed (say_why) */
__attribute__((unused)) static int wait_server(server *s, int ms)
{
    char why[64];
    for (int i = 0; i < ms / 10; i++) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            if (WIFEXITED(st)) return WEXITSTATUS(st);
            snprintf(why, sizeof why, "ended on signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
            say_why(s, why);
            return -1;
        }
        usleep(10000);
    }
    snprintf(why, sizeof why, "was still running after %d ms (killed)", ms);
    say_why(s, why);
    kill_server(s);
    return -2;
}

/* SIGTERM and wait; the exit status, -1 if it did not exit normally within 60 s (or was not running) */
__attribute__((unused)) static int stop_server(server *s)
{
    if (s->pid <= 0) return -1;
    kill(s->pid, SIGTERM);
    int st = wait_server(s, 60000);
    return st == -2 ? -1 : st;
}

/* runs the suite with SIGPIPE ignored (a write to a closed connection fails instead); the exit status */
__attribute__((unused)) static int run_suite(Suite *s)
{
    signal(SIGPIPE, SIG_IGN);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* ---- a tiny HTTP/1.1 client ---- */

typedef struct resp {
    int status;       /* 0: no response (connection refused or closed) */
    char *head;       /* status line and headers */
    char *body;       /* NUL-terminated for convenience; binary replies have len bytes */
    size_t len;
} resp;

__attribute__((unused)) static void resp_free(resp *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* a connection to 127.0.0.1:port (TCP_NODELAY, 60 s receive timeout), or -1 */
__attribute__((unused)) static int connect_port(int port)
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
    struct timeval tv = {60, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

__attribute__((unused)) static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        c += w, n -= (size_t)w;
    }
    return 0;
}

/* header value (case-insensitive name) from r->head into buf, or NULL */
__attribute__((unused)) static const char *header(const resp *r, const char *name, char *buf, size_t cap)
{
    if (!r->head) return NULL;
    size_t nl = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
        const char *l = p + 2;
        if (!strncasecmp(l, name, nl) && l[nl] == ':') {
            l += nl + 1;
            while (*l == ' ') l++;
            size_t n = strcspn(l, "\r\n");
            if (n >= cap) n = cap - 1;
            memcpy(buf, l, n);
            buf[n] = 0;
            return buf;
        }
    }
    return NULL;
}

/* One request on fd (keep-alive); reads exactly one response (Content-Length framing). A POST, or any
 * request with a body, gets a Content-Length; blen (size_t)-1 sends nothing and only reads. */
__attribute__((unused)) static void http_on(int fd, resp *r, const char *method, const char *path,
                                             const char *extra_headers, const void *body, size_t blen)
{
    memset(r, 0, sizeof *r);
    char head[2048];
    int hn = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s", method, path,
                      extra_headers ? extra_headers : "", body || !strcmp(method, "POST") ? "" : "\r\n");
    if (body || !strcmp(method, "POST"))
        hn += snprintf(head + hn, sizeof head - (size_t)hn, "Content-Length: %zu\r\n\r\n", blen);
    if (blen != (size_t)-1 && (write_all(fd, head, (size_t)hn) || (blen && write_all(fd, body, blen)))) return;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    char *eoh = NULL;
    long clen = -1;
    for (;;) {
        if (eoh && clen >= 0 && n >= (size_t)(eoh - buf) + 4 + (size_t)clen) break;
        if (cap - n < 4096) {
            size_t off = eoh ? (size_t)(eoh - buf) : 0;
            buf = realloc(buf, cap *= 2);
            if (eoh) eoh = buf + off;
        }
        ssize_t got = recv(fd, buf + n, cap - n - 1, 0);
        if (got <= 0) break;
        n += (size_t)got;
        buf[n] = 0;
        if (!eoh && (eoh = strstr(buf, "\r\n\r\n"))) {
            const char *cl = strcasestr(buf, "\r\nContent-Length:");
            if (cl && cl < eoh) clen = atol(cl + 17);
            if (!strcmp(method, "HEAD")) clen = 0;
        }
    }
    if (!eoh) {
        free(buf);
        return;
    }
    size_t hl = (size_t)(eoh - buf);
    r->head = strndup(buf, hl + 2);
    r->len = n - hl - 4;
    if (clen >= 0 && r->len > (size_t)clen) r->len = (size_t)clen;
    r->body = malloc(r->len + 1);
    memcpy(r->body, eoh + 4, r->len);
    r->body[r->len] = 0;
    sscanf(buf, "HTTP/1.%*d %d", &r->status);
    free(buf);
}

/* one request on a new connection */
__attribute__((unused)) static void http(resp *r, int port, const char *method, const char *path,
                                          const char *extra_headers, const void *body, size_t blen)
{
    memset(r, 0, sizeof *r);
    int fd = connect_port(port);
    if (fd < 0) return;
    http_on(fd, r, method, path, extra_headers, body, blen);
    close(fd);
}

/* the value after line_prefix in GET /metrics (start the prefix with "\n" when the name is another's suffix);
 * -1 when the line is missing or there is no reply (a draining server accepts no new connection) */
__attribute__((unused)) static long http_metric(int port, const char *line_prefix)
{
    resp r;
    http(&r, port, "GET", "/metrics", NULL, NULL, 0);
    const char *p = r.status == 200 && r.body ? strstr(r.body, line_prefix) : NULL;
    long v = p ? atol(p + strlen(line_prefix)) : -1;
    resp_free(&r);
    return v;
}

/* Polls http_metric every 2 ms until its value is in [lo, hi] or ms milliseconds have passed; the last value.
 * For a state a test must reach before its next step (work queued, a request finished, memory given back),
 * instead of a fixed sleep that a slower machine (ASan) can outlast: the caller asserts on the value. */
__attribute__((unused)) static long http_metric_await(int port, const char *line_prefix, long lo, long hi, int ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        long v = http_metric(port, line_prefix);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((v >= lo && v <= hi) || (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 >= ms) return v;
        usleep(2000);
    }
}

/* a multipart/form-data body of the PNGs png[idx[i]] (plen[idx[i]] bytes), part i named f<i> with the
 * filename img<idx[i]>.png; its length in *len (caller frees) */
__attribute__((unused)) static char *multipart_pngs(uint8_t *const *png, const size_t *plen, const int *idx, int n,
                                                     size_t *len, const char *boundary)
{
    size_t cap = 1024;
    for (int i = 0; i < n; i++) cap += plen[idx[i]] + 200;
    char *b = malloc(cap);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        o += (size_t)sprintf(b + o, "--%s\r\nContent-Disposition: form-data; name=\"f%d\"; filename=\"img%d.png\"\r\n"
                                    "Content-Type: image/png\r\n\r\n", boundary, i, idx[i]);
        memcpy(b + o, png[idx[i]], plen[idx[i]]);
        o += plen[idx[i]];
        o += (size_t)sprintf(b + o, "\r\n");
    }
    o += (size_t)sprintf(b + o, "--%s--\r\n", boundary);
    *len = o;
    return b;
}

/* the first len bytes of body as JSON (the caller decrefs); fails the test when they are not JSON */
__attribute__((unused)) static json_t *body_json_n(const char *body, size_t len)
{
    json_error_t e;
    json_t *j = json_loadb(body ? body : "", len, 0, &e);
    ck_assert_msg(j != NULL, "response is not JSON (%s): %.300s", e.text, body ? body : "(none)");
    return j;
}

__attribute__((unused)) static json_t *body_json(const resp *r) { return body_json_n(r->body, r->len); }

#endif
