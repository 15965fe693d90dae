/* test_faults.c: fault and security-default tests of the shipped programs, from the repository
 * root: the trainer killed (SIGKILL) at random moments and in the middle of writing a checkpoint
 * always leaves a loadable one (and the next run removes the cut-short temporary files); the
 * server refuses corrupt or truncated checkpoints with one clear line and a non-zero exit; it
 * binds 127.0.0.1 by default; its API key never reaches a log or a reply; its default limits; a
 * second SIGTERM/SIGINT while it drains is ignored. Leaves out SIGTERM under load and the full
 * disk (test_server.c, test_train.c) and soak/fuzzing (bench/soak.c, tests/fuzz/). */
#include "realnvp.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIDE 8
#define NIMG 64

static char dir[64];
static const char *train_exe = "bin/realnvp-train", *server_exe = "bin/realnvp-server";
static const char *good_model = "tests/data/grey8.safetensors";

static char *path_in(const char *name)
{
    static char buf[8][300];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    rewind(f);
    char *b = malloc((size_t)l + 1);
    size_t n = fread(b, 1, (size_t)l, f);
    fclose(f);
    b[n] = 0;
    if (len) *len = n;
    return b;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(p, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/rnvp_faults_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) { /* best effort */ }
}

/* runs `sh -c cmd` in a child; returns its pid */
static pid_t spawn(const char *cmd)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* waits at most ms for pid; its exit status, -1 when killed by a signal, -2 on timeout (then killed) */
static int wait_exit(pid_t pid, int ms)
{
    for (int i = 0; i < ms / 5; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        usleep(5000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -2;
}

/* ---------------------------------------------------------------- trainer: SIGKILL */

/* the step of a resumable checkpoint; fails the test when it does not load */
static long load_step(const char *path)
{
    rnvp_model *m;
    rnvp_error err;
    ck_assert_msg(rnvp_model_load(&m, path, &err) == RNVP_OK, "%s does not load after SIGKILL: %s", path, err.msg);
    const char *s = rnvp_model_metadata(m, "train_state");
    ck_assert_msg(s != NULL, "%s has no train_state", path);
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    ck_assert_ptr_nonnull(j);
    long step = (long)json_integer_value(json_object_get(j, "step"));
    json_decref(j);
    rnvp_model_free(m);
    return step;
}

/* counts files in dir/K whose name contains ".tmp" (writes cut short by a kill) */
static int count_tmp(const char *sub)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "ls -a %s/%s | grep -c '\\.tmp' > %s/tmpcount", dir, sub, dir);
    if (system(cmd)) { /* grep -c exits 1 on no match */ }
    char *s = slurp(path_in("tmpcount"), NULL);
    int n = s ? atoi(s) : 0;
    free(s);
    return n;
}

/* SIGKILL the trainer as soon as it creates its (skip+1)-th checkpoint temporary file (so
 * mid-write); returns 1 if that happened within timeout_ms, 0 if it was killed at the timeout */
static int kill_on_tmp_create(pid_t pid, int wd_fd, int skip, int timeout_ms)
{
    char buf[4096] __attribute__((aligned(8)));
    double end = timeout_ms;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double left = end - ((t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
        if (left <= 0) break;
        struct pollfd p = {.fd = wd_fd, .events = POLLIN};
        if (poll(&p, 1, (int)left + 1) <= 0) continue;
        ssize_t n = read(wd_fd, buf, sizeof buf);
        for (char *q = buf; n > 0 && q < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)(void *)q;
            if (ev->len && strstr(ev->name, ".safetensors.tmp") && skip-- == 0) {
                kill(pid, SIGKILL);
                return 1;
            }
            q += sizeof *ev + ev->len;
        }
    }
    kill(pid, SIGKILL);
    return 0;
}

START_TEST(test_trainer_sigkill_keeps_checkpoint)
{
    /* 64 8x8 training images: noisy discs */
    static uint8_t img[NIMG * SIDE * SIDE];
    uint64_t s = 99;
    for (size_t i = 0; i < sizeof img; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int y = (int)(i / SIDE) % SIDE, x = (int)(i % SIDE);
        img[i] = (uint8_t)(((x - 4) * (x - 4) + (y - 4) * (y - 4) < 6 ? 180 : 20) + (int)(s >> 60));
    }
    unsigned char h[16] = {0, 0, 8, 3, 0, 0, 0, NIMG, 0, 0, 0, SIDE, 0, 0, 0, SIDE};
    FILE *f = fopen(path_in("train.idx"), "wb");
    ck_assert_ptr_nonnull(f);
    fwrite(h, 1, 16, f);
    fwrite(img, 1, sizeof img, f);
    ck_assert_int_eq(fclose(f), 0);

    /* an evaluation, hence a checkpoint and a best model, after every step */
    char base[1200], cmd[1400];
    snprintf(base, sizeof base,
             "exec %s --data %s --scales 2 --res-blocks 1 --features 4 --batch 8 --threads 1 --seed 5 --eval-images 4 "
             "--eval-every 1 --log-every 1 --out %s",
             train_exe, path_in("train.idx"), path_in("K"));
    snprintf(cmd, sizeof cmd, "%s --steps 100000000 >%s 2>&1", base, path_in("log"));
    pid_t pid = spawn(cmd);
    struct stat sb;
    for (int i = 0; i < 1200 && stat(path_in("K/checkpoint.safetensors"), &sb); i++) usleep(50000);
    ck_assert_msg(stat(path_in("K/checkpoint.safetensors"), &sb) == 0, "the trainer wrote no first checkpoint");

    int ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    ck_assert_int_ge(ino, 0);
    ck_assert_int_ge(inotify_add_watch(ino, path_in("K"), IN_CREATE), 0);
    enum { ROUNDS = 24 };
    uint64_t rng = (uint64_t)time(NULL);
    fprintf(stderr, "test_faults: SIGKILL rounds seeded %llu\n", (unsigned long long)rng);
    long prev = -1;
    int mid_write = 0, left_tmp = 0, max_tmp = 0;
    for (int r = 0; r < ROUNDS; r++) {
        if (r % 2 == 0) {
            /* a random moment: 0..1.5 s after its start, into whatever it is doing */
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            usleep((useconds_t)((rng >> 33) % 1500000));
            kill(pid, SIGKILL);
        } else {
            /* drain old events, then kill on the next temporary checkpoint file */
            char junk[4096];
            while (read(ino, junk, sizeof junk) > 0) {}
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            mid_write += kill_on_tmp_create(pid, ino, (int)((rng >> 33) % 4), 30000);
        }
        int st;
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        left_tmp = count_tmp("K");
        if (left_tmp > max_tmp) max_tmp = left_tmp;
        long step = load_step(path_in("K/checkpoint.safetensors"));
        ck_assert_msg(step >= prev, "round %d: the checkpoint went back from step %ld to %ld", r, prev, step);
        prev = step;
        if (stat(path_in("K/best.safetensors"), &sb) == 0) {
            rnvp_model *m;
            rnvp_error err;
            ck_assert_msg(rnvp_model_load(&m, path_in("K/best.safetensors"), &err) == RNVP_OK,
                          "best.safetensors does not load after SIGKILL: %s", err.msg);
            rnvp_model_free(m);
        }
        /* resume from what was left */
        snprintf(cmd, sizeof cmd, "%s --resume --steps 100000000 >%s 2>&1", base, path_in("log"));
        pid = spawn(cmd);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(ino);
    fprintf(stderr, "test_faults: %d SIGKILLs, %d on a checkpoint temporary file's creation, up to %d cut-short "
                    "temporary files left, last checkpoint step %ld; every checkpoint loaded\n",
            ROUNDS, mid_write, max_tmp, prev);
    /* the kills did land in the middle of writes (temporary files cut short are left; the next
     * run removes them) */
    ck_assert_msg(mid_write >= ROUNDS / 4, "only %d kills landed on a checkpoint write", mid_write);
    ck_assert_int_ge(max_tmp, 1);
    /* and the run resumes and finishes from the surviving checkpoint */
    snprintf(cmd, sizeof cmd, "%s --resume --steps %ld --eval-every 0 >%s 2>&1", base, prev + 2, path_in("log"));
    pid = spawn(cmd);
    int rc = wait_exit(pid, 120000);
    char *log = slurp(path_in("log"), NULL);
    ck_assert_msg(rc == 0, "resume after the kills exited %d: %s", rc, log ? log : "");
    if (left_tmp) ck_assert_msg(strstr(log, "stale temporary file"), "the resume did not say it removed them: %s", log);
    free(log);
    ck_assert_int_eq(count_tmp("K"), 0);
    ck_assert_int_eq(load_step(path_in("K/checkpoint.safetensors")), prev + 2);
}
END_TEST

/* ---------------------------------------------------------------- server: bad checkpoints */

/* starts the server on `model` and expects a refusal: exit 1 within 30 s, stderr one line naming
 * the file and the reason, never listening */
static void expect_refusal(const char *model, const char *what, const char *reason)
{
    char cmd[1000];
    snprintf(cmd, sizeof cmd, "exec %s --model %s --port 0 --access-log off >%s 2>%s", server_exe, model,
             path_in("srv.out"), path_in("srv.err"));
    pid_t pid = spawn(cmd);
    int rc = wait_exit(pid, 30000);
    char *e = slurp(path_in("srv.err"), NULL);
    ck_assert_msg(rc == 1, "%s: exit status %d (expected 1), stderr: %s", what, rc, e);
    size_t n = strlen(e);
    ck_assert_msg(n > 0 && e[n - 1] == '\n' && strchr(e, '\n') == e + n - 1, "%s: stderr is not one line: %s", what, e);
    ck_assert_msg(strstr(e, model) && strstr(e, "cannot load the model"), "%s: unclear message: %s", what, e);
    ck_assert_msg(!strstr(strstr(e, model) + 1, model), "%s: the message names the file twice: %s", what, e);
    if (reason) ck_assert_msg(strstr(e, reason), "%s: message lacks '%s': %s", what, reason, e);
    ck_assert_msg(!strstr(e, "listening"), "%s: it listened: %s", what, e);
    fprintf(stderr, "test_faults: %-28s -> %s", what, e);
    free(e);
}

START_TEST(test_server_refuses_bad_checkpoints)
{
    size_t len;
    char *ck = slurp(good_model, &len);
    ck_assert_msg(ck != NULL && len > 200, "%s missing (run from the repository root)", good_model);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (unsigned char)ck[i];
    ck_assert_uint_lt(8 + hl, len);
    char *bad = malloc(len + 16);

    write_bytes(path_in("empty.safetensors"), ck, 0);
    expect_refusal(path_in("empty.safetensors"), "empty file", NULL);
    write_bytes(path_in("short.safetensors"), ck, 5);
    expect_refusal(path_in("short.safetensors"), "5 bytes", NULL);
    write_bytes(path_in("header_cut.safetensors"), ck, 8 + hl / 2);
    expect_refusal(path_in("header_cut.safetensors"), "truncated in the header", NULL);
    write_bytes(path_in("half.safetensors"), ck, 8 + hl + (len - 8 - hl) / 2);
    expect_refusal(path_in("half.safetensors"), "truncated in the tensors", NULL);
    write_bytes(path_in("onebyte.safetensors"), ck, len - 1);
    expect_refusal(path_in("onebyte.safetensors"), "one byte short", NULL);
    memcpy(bad, ck, len);
    bad[0] = (char)0xff, bad[5] = 0x7f;   /* a header length far past the end */
    write_bytes(path_in("hlen.safetensors"), bad, len);
    expect_refusal(path_in("hlen.safetensors"), "huge header length", NULL);
    memcpy(bad, ck, len);
    bad[8] = 'x';   /* the JSON header no longer starts with '{' */
    write_bytes(path_in("json.safetensors"), bad, len);
    expect_refusal(path_in("json.safetensors"), "corrupt JSON header", NULL);
    memcpy(bad, ck, len);
    memcpy(bad + len, "trailing", 8);   /* data past the last tensor */
    write_bytes(path_in("longer.safetensors"), bad, len + 8);
    expect_refusal(path_in("longer.safetensors"), "trailing bytes", NULL);
    /* a PNG given as the model; a file that does not exist; a directory */
    expect_refusal("tests/data/grey8_ring.png", "a PNG, not a checkpoint", NULL);
    expect_refusal(path_in("missing.safetensors"), "no such file", "No such file");
    expect_refusal(dir, "a directory", "not a regular file");
    /* random damage to the header: the server either refuses in one line or serves a model that
     * loads (a flipped digit in a float's text can stay valid); never crashes or hangs */
    uint64_t rng = 12345;
    for (int k = 0; k < 12; k++) {
        memcpy(bad, ck, len);
        for (int j = 0; j < 3; j++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            bad[8 + (rng >> 33) % hl] ^= (char)(1 + (rng >> 20) % 255);
        }
        write_bytes(path_in("flip.safetensors"), bad, len);
        rnvp_model *m;
        rnvp_error err;
        if (rnvp_model_load(&m, path_in("flip.safetensors"), &err) == RNVP_OK) {
            rnvp_model_free(m);
            continue;
        }
        expect_refusal(path_in("flip.safetensors"), "random header damage", err.msg);
    }
    free(bad);
    free(ck);
}
END_TEST

/* ---------------------------------------------------------------- server: security defaults */

typedef struct server {
    pid_t pid;
    int port;
    char err[300], log[300];
} server;

static void start_server(server *s, const char *extra)
{
    snprintf(s->err, sizeof s->err, "%s", path_in("server.err"));
    snprintf(s->log, sizeof s->log, "%s", path_in("access.log"));
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "exec %s --model %s --port 0 --access-log %s %s 2>%s", server_exe, good_model, s->log, extra,
             s->err);
    s->pid = spawn(cmd);
    for (int i = 0; i < 3000; i++) {
        char *e = slurp(s->err, NULL);
        const char *p = e ? strstr(e, "listening on http://") : NULL;
        if (p && strstr(p, "\n")) {
            const char *c = p + strlen("listening on http://");
            if (*c == '[') c = strchr(c, ']');
            c = c ? strchr(c, ':') : NULL;
            ck_assert_ptr_nonnull(c);
            s->port = atoi(c + 1);
            free(e);
            return;
        }
        free(e);
        int st;
        ck_assert_msg(waitpid(s->pid, &st, WNOHANG) != s->pid, "the server exited at startup");
        usleep(10000);
    }
    ck_abort_msg("the server did not start");
}

static int stop_server(server *s)
{
    kill(s->pid, SIGTERM);
    return wait_exit(s->pid, 60000);
}

/* one request on 127.0.0.1 (Connection: close); the status, the reply (malloc) in *reply */
static int http(int port, const char *method, const char *path, const char *headers, char **reply)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char req[1024];
    int n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s\r\n", method, path,
                     headers ? headers : "");
    ck_assert_int_eq(send(fd, req, (size_t)n, MSG_NOSIGNAL), n);
    size_t cap = 65536, got = 0;
    char *b = malloc(cap);
    ssize_t r;
    while ((r = recv(fd, b + got, cap - got - 1, 0)) > 0) {
        got += (size_t)r;
        if (cap - got < 2) b = realloc(b, cap *= 2);
    }
    close(fd);
    b[got] = 0;
    int status = got > 12 ? atoi(b + 9) : 0;
    if (reply) *reply = b;
    else free(b);
    return status;
}

START_TEST(test_server_binds_loopback_by_default)
{
    server s;
    start_server(&s, "");   /* no --host */
    char *e = slurp(s.err, NULL);
    ck_assert_msg(strstr(e, "listening on http://127.0.0.1:"), "%s", e);
    free(e);
    /* the kernel's view: the listening socket on that port is bound to 127.0.0.1 only */
    char want[32];
    snprintf(want, sizeof want, ":%04X ", s.port);
    int loop = 0, other = 0;
    const char *tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    for (int t = 0; t < 2; t++) {
        FILE *f = fopen(tables[t], "r");
        if (!f) continue;
        char line[512];
        while (fgets(line, sizeof line, f)) {
            char local[80], remote[80], state[8];
            if (sscanf(line, " %*s %79s %79s %7s", local, remote, state) != 3 || strcmp(state, "0A")) continue;
            size_t ll = strlen(local);
            char tail[32];
            snprintf(tail, sizeof tail, "%s", want);
            tail[strlen(tail) - 1] = 0;   /* ":PORT" */
            if (ll < 5 || strcmp(local + ll - 5, tail)) continue;
            if (t == 0 && !strncmp(local, "0100007F:", 9)) loop++;
            else other++;
        }
        fclose(f);
    }
    ck_assert_int_eq(stop_server(&s), 0);
    ck_assert_msg(loop == 1 && other == 0, "listening sockets on port %d: %d on 127.0.0.1, %d elsewhere", s.port, loop,
                  other);
}
END_TEST

START_TEST(test_api_key_never_logged)
{
    const char *key = "Zq7-sEcReT-kEy-4711";
    char kf[400];
    snprintf(kf, sizeof kf, "%s", path_in("key.txt"));
    FILE *f = fopen(kf, "w");
    fprintf(f, "%s\n", key);
    fclose(f);
    server s;
    char extra[500];
    snprintf(extra, sizeof extra, "--api-key-file %s", kf);
    start_server(&s, extra);
    char hdr[200], *body[8] = {0};
    int st[8], k = 0;
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s\r\n", key);
    st[k] = http(s.port, "GET", "/sample?n=1", hdr, &body[k]), k++;
    snprintf(hdr, sizeof hdr, "X-API-Key: %s\r\n", key);
    st[k] = http(s.port, "GET", "/info", hdr, &body[k]), k++;
    st[k] = http(s.port, "GET", "/info", "X-API-Key: wrong-Guess-0000\r\n", &body[k]), k++;
    snprintf(hdr, sizeof hdr, "X-API-Key: %.10s\r\n", key);   /* a prefix of the key */
    st[k] = http(s.port, "GET", "/info", hdr, &body[k]), k++;
    st[k] = http(s.port, "GET", "/metrics", NULL, &body[k]), k++;
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s\r\n", key);
    st[k] = http(s.port, "POST", "/log_prob", hdr, &body[k]), k++;   /* no body: a 4xx with a message */
    ck_assert_int_eq(st[0], 200);
    ck_assert_int_eq(st[1], 200);
    ck_assert_int_eq(st[2], 401);
    ck_assert_int_eq(st[3], 401);
    ck_assert_int_eq(st[4], 200);
    ck_assert_int_ge(st[5], 400);
    ck_assert_int_eq(stop_server(&s), 0);
    char *log = slurp(s.log, NULL), *err = slurp(s.err, NULL);
    ck_assert_msg(log && strstr(log, "/info"), "access log missing: %s", log);
    const char *secrets[] = {key, "wrong-Guess-0000", "sEcReT"};
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(!strstr(log, secrets[i]), "the access log contains '%s'", secrets[i]);
        ck_assert_msg(!strstr(err, secrets[i]), "stderr contains '%s'", secrets[i]);
        for (int j = 0; j < k; j++) ck_assert_msg(!strstr(body[j], secrets[i]), "reply %d contains '%s'", j, secrets[i]);
    }
    for (int j = 0; j < k; j++) free(body[j]);
    free(log);
    free(err);
}
END_TEST

START_TEST(test_default_limits)
{
    server s;
    start_server(&s, "");
    char *b;
    ck_assert_int_eq(http(s.port, "GET", "/info", NULL, &b), 200);
    char *j0 = strstr(b, "\r\n\r\n");
    ck_assert_ptr_nonnull(j0);
    json_error_t je;
    json_t *j = json_loads(j0 + 4, 0, &je);
    ck_assert_msg(j != NULL, "%s", je.text);
    json_t *l = json_object_get(j, "limits");
    ck_assert_int_eq(json_integer_value(json_object_get(l, "max_body_bytes")), 8 << 20);
    ck_assert_int_eq(json_integer_value(json_object_get(l, "max_samples")), 256);
    ck_assert_int_eq(json_integer_value(json_object_get(l, "max_draws")), 64);
    ck_assert_int_eq(json_integer_value(json_object_get(l, "queue_size")), 1024);
    ck_assert_int_eq(json_integer_value(json_object_get(l, "request_timeout_ms")), 30000);
    ck_assert(json_is_false(json_object_get(l, "api_key_required")));
    json_decref(j);
    free(b);
    ck_assert_int_eq(stop_server(&s), 0);
    /* the connection limits are flags only: their defaults as --help states them */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "%s --help >%s 2>&1", server_exe, path_in("help"));
    ck_assert_int_eq(system(cmd), 0);
    char *h = slurp(path_in("help"), NULL);
    const char *want[] = {"--max-connections N", "[512]", "--per-ip-limit N", "[128]", "--conn-timeout-s S", "[30]"};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) ck_assert_msg(strstr(h, want[i]), "--help lacks %s", want[i]);
    free(h);
}
END_TEST

/* ---------------------------------------------------------------- server: a second stop signal */

typedef struct slow_req {
    int port, status;
    char *reply;
} slow_req;

static void *slow_request(void *arg)
{
    slow_req *q = arg;
    q->status = http(q->port, "GET", "/sample?n=1&seed=7&format=json", NULL, &q->reply);
    return NULL;
}

/* the value of a /metrics line "NAME VALUE", -1 when missing */
static long metric(int port, const char *name)
{
    char *b, want[128];
    if (http(port, "GET", "/metrics", NULL, &b) != 200) {
        free(b);
        return -1;
    }
    snprintf(want, sizeof want, "\n%s ", name);
    const char *p = strstr(b, want);
    long v = p ? atol(p + strlen(want)) : -1;
    free(b);
    return v;
}

/* OpenBLAS's threads exist before main() runs and so cannot inherit its signal mask: a second
 * signal while draining used to land on one of them and kill the server (exit by signal, the
 * request in flight unanswered). The request waits in the queue for its batch to fill (2 s)
 * while both signals arrive. */
START_TEST(test_server_second_signal_while_draining)
{
    const int pairs[3][2] = {{SIGTERM, SIGTERM}, {SIGINT, SIGTERM}, {SIGTERM, SIGINT}};
    const char *old = getenv("OPENBLAS_NUM_THREADS");
    char saved[32];
    snprintf(saved, sizeof saved, "%s", old ? old : "");
    setenv("OPENBLAS_NUM_THREADS", "2", 1);   /* a thread pool started at load, as in production */
    for (int k = 0; k < 3; k++) {
        server s;
        unlink(path_in("server.err"));   /* not the previous round's "listening" line */
        start_server(&s, "--max-delay-us 2000000 --drain-timeout-s 20");
        slow_req q = {.port = s.port};
        pthread_t t;
        ck_assert_int_eq(pthread_create(&t, NULL, slow_request, &q), 0);
        int queued = 0;
        for (int i = 0; i < 300 && !queued; i++) {
            queued = metric(s.port, "realnvp_queue_depth") >= 1;
            if (!queued) usleep(5000);
        }
        ck_assert_msg(queued, "round %d: the request never reached the queue", k);
        kill(s.pid, pairs[k][0]);
        usleep(150000);
        kill(s.pid, pairs[k][1]);
        usleep(50000);
        kill(s.pid, pairs[k][1]);
        int rc = wait_exit(s.pid, 60000);
        pthread_join(t, NULL);
        char *e = slurp(s.err, NULL);
        ck_assert_msg(rc == 0, "round %d: exit status %d (-1: killed by a signal), stderr:\n%s", k, rc, e);
        ck_assert_msg(q.status == 200 && strstr(q.reply, "\"images\""), "round %d: the request in flight got %d: %.300s",
                      k, q.status, q.reply);
        ck_assert_msg(strstr(e, "already draining") && strstr(e, "stopped cleanly"), "round %d: stderr:\n%s", k, e);
        const char *first = strstr(e, ": draining (");
        ck_assert_ptr_nonnull(first);
        ck_assert_ptr_null(strstr(first + 1, ": draining ("));   /* one drain, not restarted */
        free(q.reply);
        free(e);
    }
    if (*saved) setenv("OPENBLAS_NUM_THREADS", saved, 1);
    else unsetenv("OPENBLAS_NUM_THREADS");
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("faults");
    /* two cases, so that CK_RUN_CASE=server runs the server's without the long SIGKILL rounds */
    TCase *t = tcase_create("trainer");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 600);
    tcase_add_test(t, test_trainer_sigkill_keeps_checkpoint);
    suite_add_tcase(s, t);
    TCase *sv = tcase_create("server");
    tcase_add_checked_fixture(sv, setup, teardown);
    tcase_set_timeout(sv, 600);
    tcase_add_test(sv, test_server_refuses_bad_checkpoints);
    tcase_add_test(sv, test_server_binds_loopback_by_default);
    tcase_add_test(sv, test_api_key_never_logged);
    tcase_add_test(sv, test_default_limits);
    tcase_add_test(sv, test_server_second_signal_while_draining);
    suite_add_tcase(s, sv);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
