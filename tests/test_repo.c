/* test_repo.c: bin/realnvp-server with --model-repository over real HTTP: the Triton layout, ?model=NAME,
 * versions, the repository extension (index, load, unload), SIGHUP rescans, the model memory limit, fairness
 * between models, and 20 reloads (half of corrupt files) under continuous client load, counted.
 * Leaves out the single-model endpoints themselves (test_server.c, test_oip.c). */
#include "realnvp.h"
#include "http_test.h"   /* dir, exe, server, start_server, stop_server, resp, http, body_json */

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GREY8 "tests/data/grey8.safetensors"          /* 8 x 8 x 1 */
#define RGB "tests/data/rgb6x8.safetensors"           /* W 8, H 6, C 3 */
#define GREY16 "tests/data/grey16x8_s3.safetensors"   /* H 16, W 8, C 1 */

static uint8_t *png8;      /* tests/data/grey8_gradient.png */
static size_t png8_len;
static int setup_ok;

/* ---- files ---- */

static void write_file(const char *path, const void *data, size_t n)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", tmp);
    ck_assert(fwrite(data, 1, n, f) == n);
    ck_assert(fclose(f) == 0);
    ck_assert_msg(rename(tmp, path) == 0, "rename %s", path);   /* atomic, a new inode: a rescan sees a change */
}

/* DIR/<rel> (its folders made) gets the bytes of src */
static void put_model(const char *rel, const char *src)
{
    char path[600], cmd[700];
    snprintf(path, sizeof path, "%s/repo/%s", dir, rel);
    snprintf(cmd, sizeof cmd, "mkdir -p \"$(dirname '%s')\"", path);
    ck_assert(system(cmd) == 0);
    size_t n;
    char *b = slurp(src, &n);
    ck_assert_msg(b != NULL, "cannot read %s", src);
    write_file(path, b, n);
    free(b);
}

/* The bytes of GREY8 with flow.0.flow_bn.running_var doubled: a valid model whose log p differs.
 * Found through the safetensors header (8-byte length, JSON with data_offsets). */
static char *modified_grey8(size_t *n)
{
    char *b = slurp(GREY8, n);
    ck_assert(b != NULL && *n > 8);
    uint64_t hl = 0;
    memcpy(&hl, b, 8);
    json_error_t e;
    json_t *h = json_loadb(b + 8, (size_t)hl, 0, &e);
    ck_assert_msg(h != NULL, "header: %s", e.text);
    json_t *t = json_object_get(h, "flow.0.flow_bn.running_var");
    ck_assert(t != NULL);
    long off = (long)json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0));
    float v;
    memcpy(&v, b + 8 + hl + off, 4);
    ck_assert(v > 0);
    v *= 2;
    memcpy(b + 8 + hl + off, &v, 4);
    json_decref(h);
    return b;
}

/* log p of png8 under the model in file `path`, by the library (independently of the server) */
static double lib_log_prob(const char *path)
{
    rnvp_model *m;
    rnvp_ctx *c;
    rnvp_error e;
    ck_assert_msg(rnvp_model_load(&m, path, &e) == RNVP_OK, "%s", e.msg);
    ck_assert(rnvp_ctx_create(&c, m, 1, &e) == RNVP_OK);
    uint8_t px[64];
    ck_assert(rnvp_png_decode(px, png8, png8_len, 1, 8, 8, &e) == RNVP_OK);
    double lp, bpd;
    ck_assert(rnvp_log_prob(c, &lp, &bpd, px, NULL, 1, &e) == RNVP_OK);
    rnvp_ctx_free(c);
    rnvp_model_free(m);
    return lp;
}

/* ---- requests ---- */

static json_t *get_json(int port, const char *path, int want)
{
    resp r;
    http(&r, port, "GET", path, NULL, NULL, 0);
    ck_assert_msg(r.status == want, "GET %s: %d, want %d: %.400s", path, r.status, want, r.body ? r.body : "");
    json_t *j = body_json(&r);
    resp_free(&r);
    return j;
}

static json_t *post_json(int port, const char *path, const char *body, int want)
{
    resp r;
    http(&r, port, "POST", path, body ? "Content-Type: application/json\r\n" : NULL, body ? body : "", body ? strlen(body) : 0);
    ck_assert_msg(r.status == want, "POST %s: %d, want %d: %.400s", path, r.status, want, r.body ? r.body : "");
    json_t *j = r.len ? body_json(&r) : NULL;
    resp_free(&r);
    return j;
}

/* POST /log_prob?model=NAME of png8: the status, *lp the log p when 200 */
static int log_prob(int port, const char *name, double *lp)
{
    char path[160];
    snprintf(path, sizeof path, "/log_prob%s%s", name ? "?model=" : "", name ? name : "");
    resp r;
    http(&r, port, "POST", path, "Content-Type: image/png\r\n", png8, png8_len);
    int st = r.status;
    if (st == 200) {
        json_t *j = body_json(&r);
        *lp = json_real_value(json_object_get(json_array_get(json_object_get(j, "results"), 0), "log_prob"));
        json_decref(j);
    }
    resp_free(&r);
    return st;
}

/* the value of the first metrics line starting with `prefix`, or -1 */
static double metric(int port, const char *prefix)
{
    resp r;
    http(&r, port, "GET", "/metrics", NULL, NULL, 0);
    ck_assert(r.status == 200);
    double v = -1;
    for (char *p = r.body; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, prefix, strlen(prefix))) {
            v = atof(p + strlen(prefix));
            break;
        }
    resp_free(&r);
    return v;
}

/* an index entry {"name": name, ...} with version ver ("" : none), or NULL */
static json_t *index_entry(json_t *idx, const char *name, const char *ver)
{
    size_t i;
    json_t *e;
    json_array_foreach(idx, i, e)
    {
        const char *n = json_string_value(json_object_get(e, "name"));
        const char *v = json_string_value(json_object_get(e, "version"));
        if (n && !strcmp(n, name) && (!*ver ? !v : v && !strcmp(v, ver))) return e;
    }
    return NULL;
}

static void setup(void)
{
    setup_ok = !http_test_begin("repo") && (png8 = (uint8_t *)slurp("tests/data/grey8_gradient.png", &png8_len)) != NULL;
}

static void teardown(void)
{
    free(png8);
    http_test_end();
}

/* ---- tests ---- */

/* the layout: DIR/a/model.safetensors is version 1, b has versions 1 and 2 (the highest served), folders
 * without a model or with a bad name are skipped; ?model=NAME, the 400 listing, /v2 paths and versions,
 * the index, metrics and the access log */
START_TEST(layout_and_names)
{
    ck_assert(setup_ok);
    put_model("a/model.safetensors", GREY8);
    put_model("b/1/model.safetensors", RGB);
    put_model("b/2/model.safetensors", GREY16);
    put_model("b/notes/model.safetensors", GREY8);        /* not a version */
    put_model("bad name/model.safetensors", GREY8);       /* not a model name */
    put_model("x-decoder/model.safetensors", GREY8);      /* would clash with {m}-decoder */
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s/repo/train-state", dir);   /* no model: ignored */
    ck_assert(system(cmd) == 0);
    server s;
    ck_assert(start_server(&s, NULL, "--model-repository %s/repo", dir) == 0);

    resp r;
    http(&r, s.port, "GET", "/info", NULL, NULL, 0);   /* several models, none named */
    ck_assert_msg(r.status == 400, "%d %s", r.status, r.body);
    json_t *j = body_json(&r);
    json_t *err = json_object_get(j, "error");
    ck_assert_str_eq(json_string_value(json_object_get(err, "code")), "model_required");
    json_t *models = json_object_get(err, "models");
    ck_assert_msg(json_array_size(models) == 2 && !strcmp(json_string_value(json_array_get(models, 0)), "a") &&
                      !strcmp(json_string_value(json_array_get(models, 1)), "b"),
                  "%s", r.body);
    json_decref(j);
    resp_free(&r);

    j = get_json(s.port, "/info?model=b", 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "version")), "2");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "height")), 16);
    json_decref(j);
    j = get_json(s.port, "/info?model=a", 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "version")), "1");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "width")), 8);
    json_decref(j);
    j = get_json(s.port, "/info?model=nope", 404);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")), "model_not_found");
    json_decref(j);
    json_decref(get_json(s.port, "/info?model=x-decoder", 404));

    double lp;
    ck_assert_int_eq(log_prob(s.port, "a", &lp), 200);
    ck_assert_msg(fabs(lp - lib_log_prob(GREY8)) <= 1e-9 * fabs(lp), "%.17g", lp);
    ck_assert_int_eq(log_prob(s.port, NULL, &lp), 400);   /* which model? */
    ck_assert_int_eq(log_prob(s.port, "b", &lp), 422);    /* an 8 x 8 image for the 8 x 16 model */

    /* /v2: the versions in the path */
    j = get_json(s.port, "/v2/models/b", 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "versions")), 1);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(j, "versions"), 0)), "2");
    json_decref(j);
    json_decref(get_json(s.port, "/v2/models/b/versions/2/ready", 200));
    j = get_json(s.port, "/v2/models/b/versions/1/ready", 404);   /* on disk, not loaded (policy latest) */
    ck_assert_msg(strstr(json_string_value(json_object_get(j, "error")), "loaded: 2"), "%s",
                  json_string_value(json_object_get(j, "error")));
    json_decref(j);
    json_decref(get_json(s.port, "/v2/models/a-decoder/versions/1", 200));
    json_decref(get_json(s.port, "/v2/models/nope/ready", 404));

    json_t *idx = post_json(s.port, "/v2/repository/index", NULL, 200);
    ck_assert_msg(json_array_size(idx) == 2 && index_entry(idx, "a", "1") && index_entry(idx, "b", "2"), "%s",
                  json_dumps(idx, 0));
    ck_assert_str_eq(json_string_value(json_object_get(index_entry(idx, "b", "2"), "state")), "READY");
    json_decref(idx);
    idx = post_json(s.port, "/v2/repository/index", "{\"ready\": true}", 200);
    ck_assert_int_eq(json_array_size(idx), 2);
    json_decref(idx);
    json_decref(post_json(s.port, "/v2/repository/index", "{\"ready\": 3}", 400));
    json_decref(post_json(s.port, "/v2/repository/index", "[1", 400));

    ck_assert(metric(s.port, "realnvp_model_loaded{model=\"a\",version=\"1\"} ") == 1);
    ck_assert(metric(s.port, "realnvp_model_loaded{model=\"b\",version=\"2\"} ") == 1);
    ck_assert(metric(s.port, "realnvp_queue_depth ") == 0);   /* the unlabelled total (deploy/k8s/hpa.yaml) */
    ck_assert(metric(s.port, "realnvp_model_requests_total{model=\"a\"} ") >= 2);
    ck_assert_int_eq(stop_server(&s), 0);
    char *log = slurp(s.log, NULL);
    ck_assert_msg(log && strstr(log, "\"POST /log_prob?model=a\" 200") && strstr(log, " model=a:1 "), "%s", log);
    free(log);
    char *errs = slurp(s.err, NULL);
    ck_assert_msg(errs && strstr(errs, "'bad name' skipped") && strstr(errs, "'x-decoder' skipped"), "%s", errs);
    free(errs);
}
END_TEST

/* --model-versions all: every version served, the path's version chooses */
START_TEST(all_versions)
{
    ck_assert(setup_ok);
    put_model("b/1/model.safetensors", RGB);
    put_model("b/2/model.safetensors", GREY16);
    server s;
    ck_assert(start_server(&s, NULL, "--model-repository %s/repo --model-versions all", dir) == 0);
    json_t *j = get_json(s.port, "/v2/models/b", 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "versions")), 2);
    json_decref(j);
    j = get_json(s.port, "/v2/models/b/versions/1", 200);   /* the RGB model: [-1, 6, 8, 3] */
    json_t *shape = json_object_get(json_array_get(json_object_get(j, "inputs"), 0), "shape");
    ck_assert_int_eq(json_integer_value(json_array_get(shape, 3)), 3);
    json_decref(j);
    j = get_json(s.port, "/info?model=b", 200);   /* native: the highest */
    ck_assert_str_eq(json_string_value(json_object_get(j, "version")), "2");
    json_decref(j);
    /* an inference on version 1 */
    uint8_t px[6 * 8 * 3];
    for (int i = 0; i < (int)sizeof px; i++) px[i] = (uint8_t)(i * 7);
    json_t *req = json_pack("{s:[{s:s,s:s,s:[iiii],s:o}]}", "inputs", "name", "image", "datatype", "UINT8", "shape", 1, 6,
                            8, 3, "data", json_array());
    json_t *data = json_object_get(json_array_get(json_object_get(req, "inputs"), 0), "data");
    for (int i = 0; i < (int)sizeof px; i++) json_array_append_new(data, json_integer(px[i]));
    char *body = json_dumps(req, 0);
    j = post_json(s.port, "/v2/models/b/versions/1/infer", body, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "model_version")), "1");
    json_decref(j);
    json_decref(post_json(s.port, "/v2/models/b/versions/3/infer", body, 404));
    free(body);
    json_decref(req);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* unload, load, SIGHUP: new models come, changed versions are reloaded, a corrupt new version leaves the
 * old one serving, an unloaded model stays unloaded; the API key guards the repository endpoints */
START_TEST(load_unload_rescan)
{
    ck_assert(setup_ok);
    put_model("a/model.safetensors", GREY8);
    put_model("b/1/model.safetensors", RGB);
    char keyf[200];
    snprintf(keyf, sizeof keyf, "%s/key", dir);
    write_file(keyf, "sesame\n", 7);
    server s;
    ck_assert(start_server(&s, NULL, "--model-repository %s/repo --api-key-file %s", dir, keyf) == 0);
    const char *K = "X-API-Key: sesame\r\n";
    resp r;
    http(&r, s.port, "POST", "/v2/repository/models/a/unload", NULL, "", 0);
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);
    http(&r, s.port, "POST", "/v2/repository/models/a/unload", K, "", 0);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    resp_free(&r);
    http(&r, s.port, "GET", "/info?model=a", K, NULL, 0);
    ck_assert_msg(r.status == 503 && strstr(r.body, "unloaded"), "%d %s", r.status, r.body);
    resp_free(&r);
    http(&r, s.port, "GET", "/info", K, NULL, 0);   /* only b is left: no name needed */
    ck_assert_msg(r.status == 200 && strstr(r.body, "\"model\": \"b\""), "%d %s", r.status, r.body);
    resp_free(&r);

    /* SIGHUP: c is new, b gets a corrupt version 2 (b/1 keeps serving), a stays unloaded */
    put_model("c/model.safetensors", GREY8);
    char junk[3000];
    memset(junk, 'x', sizeof junk);
    char path[600];
    snprintf(path, sizeof path, "%s/repo/b/2/model.safetensors", dir);
    put_model("b/2/model.safetensors", GREY8);
    write_file(path, junk, sizeof junk);
    ck_assert(kill(s.pid, SIGHUP) == 0);
    for (int i = 0; i < 500 && metric(s.port, "realnvp_model_loaded{model=\"c\",version=\"1\"} ") != 1; i++) usleep(10000);
    ck_assert(metric(s.port, "realnvp_model_loaded{model=\"c\",version=\"1\"} ") == 1);
    ck_assert(metric(s.port, "realnvp_model_loaded{model=\"b\",version=\"1\"} ") == 1);
    ck_assert(metric(s.port, "realnvp_model_loaded{model=\"b\",version=\"2\"} ") == -1);
    ck_assert(metric(s.port, "realnvp_model_load_failures_total{model=\"b\"} ") == 1);
    ck_assert(metric(s.port, "realnvp_model_loaded{model=\"a\",version=\"1\"} ") == -1);
    http(&r, s.port, "POST", "/v2/repository/index", K, "", 0);
    ck_assert(r.status == 200);
    json_t *idx = body_json(&r);
    resp_free(&r);
    json_t *ea = index_entry(idx, "a", "");
    ck_assert_msg(ea && !strcmp(json_string_value(json_object_get(ea, "state")), "UNAVAILABLE"), "%s", json_dumps(idx, 0));
    ck_assert(index_entry(idx, "b", "1") && index_entry(idx, "c", "1"));
    json_decref(idx);

    /* the explicit load of b fails on the corrupt version 2 and says why; version 1 serves on */
    http(&r, s.port, "POST", "/v2/repository/models/b/load", K, "", 0);
    ck_assert_msg(r.status == 400 && strstr(r.body, "version 2"), "%d %s", r.status, r.body);
    resp_free(&r);
    http(&r, s.port, "GET", "/v2/models/b/ready", K, NULL, 0);
    ck_assert_msg(r.status == 200 && strstr(r.body, "\"version\": \"1\""), "%d %s", r.status, r.body);
    resp_free(&r);
    /* a good version 2 and a load: swapped in */
    put_model("b/2/model.safetensors", GREY16);
    http(&r, s.port, "POST", "/v2/repository/models/b/load", K, "{\"parameters\": {}}", 18);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    resp_free(&r);
    http(&r, s.port, "GET", "/v2/models/b/ready", K, NULL, 0);
    ck_assert_msg(r.status == 200 && strstr(r.body, "\"version\": \"2\""), "%d %s", r.status, r.body);
    resp_free(&r);
    /* a loads again; an unknown model cannot */
    http(&r, s.port, "POST", "/v2/repository/models/a/load", K, "", 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    double lp;
    http(&r, s.port, "POST", "/v2/repository/models/zz/load", K, "", 0);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    ck_assert(metric(s.port, "realnvp_model_loaded{model=\"a\",version=\"1\"} ") == 1);
    (void)lp;
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* A reload holds two copies until the swap: a limit that fits one copy and not two refuses the load, and
 * the old copy serves on */
START_TEST(model_memory_limit)
{
    ck_assert(setup_ok);
    put_model("a/model.safetensors", GREY8);
    server s;
    ck_assert(start_server(&s, NULL, "--model-repository %s/repo --max-batch 1024", dir) == 0);
    double one = metric(s.port, "realnvp_model_memory_bytes ");
    ck_assert(one > 0);
    ck_assert_int_eq(stop_server(&s), 0);
    long limit = (long)(one * 1.5);
    if (limit < (1L << 20)) {   /* the flag's minimum: a larger batch makes one copy take more */
        ck_assert_msg(0, "one copy takes %.0f bytes, less than 1 MiB / 1.5 (the flag's minimum); raise --max-batch in this test", one);
    }
    ck_assert(start_server(&s, NULL, "--model-repository %s/repo --max-batch 1024 --model-memory-bytes %ld", dir, limit) == 0);
    resp r;
    http(&r, s.port, "POST", "/v2/repository/models/a/load", NULL, "", 0);
    ck_assert_msg(r.status == 400 && strstr(r.body, "--model-memory-bytes"), "%d %s", r.status, r.body);
    resp_free(&r);
    double lp;
    ck_assert_int_eq(log_prob(s.port, "a", &lp), 200);
    ck_assert(metric(s.port, "realnvp_model_memory_bytes ") == one);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* ---- fairness between models ---- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct flood {
    int port;
    double t_done;
    int status;
} flood;

static void *flood_a(void *arg)
{
    flood *f = arg;
    resp r;
    /* 16 images x 32 draws = 512 jobs for model a: 28 x 28 ones, since 512 jobs of the 8 x 8 test
     * model take about 25 ms here, less than the polling below can see on a faster machine */
    uint8_t px[28 * 28], *png28;
    size_t png28_len;
    for (int i = 0; i < 28 * 28; i++) px[i] = (uint8_t)(i * 7 % 251);
    rnvp_error e;
    if (rnvp_png_encode_grid(&png28, &png28_len, px, 1, 1, 28, 28, 1, -1, &e) != RNVP_OK) {
        f->status = -1;
        return NULL;
    }
    uint8_t *parts[16];
    size_t plen[16];
    int idx[16];
    for (int i = 0; i < 16; i++) {
        parts[i] = png28;
        plen[i] = png28_len;
        idx[i] = i;
    }
    size_t blen;
    char *body = multipart_pngs(parts, plen, idx, 16, &blen, "BOUNDARY");
    http(&r, f->port, "POST", "/log_prob?model=a&samples=32", "Content-Type: multipart/form-data; boundary=BOUNDARY\r\n",
         body, blen);
    f->status = r.status;
    f->t_done = now_s();
    resp_free(&r);
    free(body);
    free(png28);
    return NULL;
}

/* one worker serves the models in turn: a request to b waits for at most about one batch of a's
 * 512-job flood, not for all of it. a is the bundled 28 x 28 model (the flood takes seconds), b the
 * 8 x 8 test model. */
START_TEST(models_take_turns)
{
    ck_assert(setup_ok);
    put_model("a/model.safetensors", "models/fashion-mnist/model.safetensors");
    put_model("b/model.safetensors", GREY8);
    server s;
    ck_assert(start_server(&s, NULL, "--model-repository %s/repo --max-batch 8 --max-jobs-per-request 1024", dir) == 0);
    flood f = {.port = s.port};
    pthread_t t;
    ck_assert(pthread_create(&t, NULL, flood_a, &f) == 0);
    for (int i = 0; i < 2000 && metric(s.port, "realnvp_model_queue_depth{model=\"a\"} ") < 400; i++) usleep(2000);
    double t_q = now_s();
    ck_assert_msg(metric(s.port, "realnvp_model_queue_depth{model=\"a\"} ") >= 400, "the flood did not queue (status %d)", f.status);
    double lp;
    ck_assert_int_eq(log_prob(s.port, "b", &lp), 200);
    double t_b = now_s();
    double left = metric(s.port, "realnvp_model_queue_depth{model=\"a\"} ");
    pthread_join(t, NULL);
    ck_assert_int_eq(f.status, 200);
    fprintf(stderr, "models_take_turns: b answered %.3f s after a's flood queued, with %.0f of a's 512 jobs still "
                    "waiting; the flood took %.3f s more\n", t_b - t_q, left, f.t_done - t_b);
    ck_assert_msg(t_b < f.t_done && left >= 300, "b answered after a's flood (%.0f of a's jobs still waiting)", left);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* ---- reloads under load ---- */

typedef struct client_stats {
    int port;
    double lp_a, lp_b;        /* the two good files' log p (the library's) */
    atomic_int *stop;
    long ok_a, ok_b, other, failed;
    int last_status;
    char last_body[200];
} client_stats;

static void *client(void *arg)
{
    client_stats *c = arg;
    int fd = connect_port(c->port);
    while (!atomic_load(c->stop)) {
        resp r;
        if (fd < 0) fd = connect_port(c->port);
        http_on(fd, &r, "POST", "/log_prob?model=m", "Content-Type: image/png\r\n", png8, png8_len);
        if (r.status == 200) {
            json_t *j = json_loadb(r.body, r.len, 0, NULL);
            double lp = json_real_value(json_object_get(json_array_get(json_object_get(j, "results"), 0), "log_prob"));
            json_decref(j);
            if (fabs(lp - c->lp_a) <= 1e-9 * fabs(c->lp_a)) c->ok_a++;
            else if (fabs(lp - c->lp_b) <= 1e-9 * fabs(c->lp_b)) c->ok_b++;
            else c->other++;
        } else {
            c->failed++;
            c->last_status = r.status;
            snprintf(c->last_body, sizeof c->last_body, "%s", r.body ? r.body : "(no reply)");
            close(fd);
            fd = -1;
        }
        resp_free(&r);
    }
    if (fd >= 0) close(fd);
    return NULL;
}

/* 20 reloads while 3 clients send requests throughout: every other one of a corrupt file (truncated or
 * garbage), half through the load endpoint and half through SIGHUP. No request may fail, and each answer
 * must be exactly one of the two good models' (no mixing, no half-built model). */
START_TEST(reloads_under_load)
{
    ck_assert(setup_ok);
    size_t nb;
    char *mod = modified_grey8(&nb);
    size_t na;
    char *orig = slurp(GREY8, &na);
    char modpath[600];
    snprintf(modpath, sizeof modpath, "%s/modified.safetensors", dir);
    write_file(modpath, mod, nb);
    double lp_a = lib_log_prob(GREY8), lp_b = lib_log_prob(modpath);
    ck_assert_msg(fabs(lp_a - lp_b) > 1e-3, "the modified model scores the same: %.17g", lp_b);
    put_model("m/1/model.safetensors", GREY8);
    char path[600];
    snprintf(path, sizeof path, "%s/repo/m/1/model.safetensors", dir);
    server s;
    ck_assert(start_server(&s, NULL, "--model-repository %s/repo", dir) == 0);

    atomic_int stop = 0;
    client_stats cs[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        cs[i] = (client_stats){.port = s.port, .lp_a = lp_a, .lp_b = lp_b, .stop = &stop};
        ck_assert(pthread_create(&th[i], NULL, client, &cs[i]) == 0);
    }
    int api_ok = 0, api_fail = 0;
    for (int k = 0; k < 20; k++) {
        usleep(150000);
        int corrupt = k % 2 == 1, by_api = k % 4 < 2;
        if (corrupt && k % 4 == 1) write_file(path, orig, na / 2);               /* truncated */
        else if (corrupt) {   /* garbage: a 16-byte header {"a": 1} and 8 blanks, 24 bytes (the literal's NUL not written) */
            static const char junk[] = "\x10\0\0\0\0\0\0\0{\"a\": 1}        ";
            write_file(path, junk, sizeof junk - 1);
        }
        else if (k % 4 == 0) write_file(path, mod, nb);
        else write_file(path, orig, na);
        double fails0 = metric(s.port, "realnvp_model_load_failures_total{model=\"m\"} ");
        double loads0 = metric(s.port, "realnvp_model_loads_total{model=\"m\"} ");
        if (by_api) {
            resp r;
            http(&r, s.port, "POST", "/v2/repository/models/m/load", NULL, "", 0);
            if (corrupt) {
                ck_assert_msg(r.status == 400, "reload %d: %d %s", k, r.status, r.body);
                api_fail++;
            } else {
                ck_assert_msg(r.status == 200, "reload %d: %d %s", k, r.status, r.body);
                api_ok++;
            }
            resp_free(&r);
        } else {
            ck_assert(kill(s.pid, SIGHUP) == 0);
            const char *which = corrupt ? "realnvp_model_load_failures_total{model=\"m\"} " : "realnvp_model_loads_total{model=\"m\"} ";
            double want = (corrupt ? fails0 : loads0) + 1;
            int i = 0;
            for (; i < 1000 && metric(s.port, which) < want; i++) usleep(5000);
            ck_assert_msg(i < 1000, "reload %d by SIGHUP did not happen", k);
        }
    }
    usleep(150000);
    atomic_store(&stop, 1);
    long ok_a = 0, ok_b = 0, other = 0, failed = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        ok_a += cs[i].ok_a, ok_b += cs[i].ok_b, other += cs[i].other, failed += cs[i].failed;
        if (cs[i].failed) fprintf(stderr, "client %d: last failure %d %s\n", i, cs[i].last_status, cs[i].last_body);
    }
    double loads = metric(s.port, "realnvp_model_loads_total{model=\"m\"} ");
    double lfails = metric(s.port, "realnvp_model_load_failures_total{model=\"m\"} ");
    fprintf(stderr, "reloads_under_load: 20 reloads (10 of corrupt files; %d + %d through the API), %ld requests: %ld "
                    "answered by the first model, %ld by the second, %ld other answers, %ld failed; loads %.0f, "
                    "load failures %.0f\n", api_ok, api_fail, ok_a + ok_b + other + failed, ok_a, ok_b, other, failed,
            loads, lfails);
    ck_assert_msg(failed == 0 && other == 0, "%ld requests failed, %ld wrong answers", failed, other);
    ck_assert_msg(ok_a > 0 && ok_b > 0, "both models must have answered (%ld, %ld)", ok_a, ok_b);
    ck_assert(loads == 11 && lfails == 10);   /* start-up + 10 good reloads; 10 refused */
    ck_assert_int_eq(stop_server(&s), 0);
    free(mod);
    free(orig);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("repository");
    TCase *tc = tcase_create("repo");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, layout_and_names);
    tcase_add_test(tc, all_versions);
    tcase_add_test(tc, load_unload_rescan);
    tcase_add_test(tc, model_memory_limit);
    tcase_add_test(tc, models_take_turns);
    tcase_add_test(tc, reloads_under_load);
    suite_add_tcase(su, tc);
    return run_suite(su);
}
