/* test_oip.c: the Open Inference Protocol (v2) endpoints of bin/realnvp-server over real HTTP on an RGB
 * test model (H 6 != W 8, C 3): JSON and binary tensors as tritonclient builds them, against the native API.
 * Leaves out the native endpoints (test_server.c) and fuzzing the parser (tests/fuzz/fuzz_oip.c). */
#include "realnvp.h"
#include "../server/server.h"   /* the MHD-free parser and encoder, from build/libserver.a */
#include "http_test.h"          /* dir, exe, server, start_server, stop_server, resp, http, body_json */

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL_FILE "tests/data/rgb6x8.safetensors"
#define C 3
#define H 6
#define W 8
#define D (C * H * W)
#define NIMG 4

static char mname[128];             /* the served model's name, from /info */
static uint8_t imgs[NIMG][D];       /* (NIMG, C, H, W): the core's layout */
static uint8_t nhwc[NIMG][D];       /* the same images (NIMG, H, W, C): the v2 layout */
static uint8_t *pngs[NIMG];
static size_t png_len[NIMG];
static int setup_ok;

static server main_srv;             /* started by the fixture with default limits */

/* the protocol's error: status and {"error": "non-empty message"} (and nothing else) */
static void assert_v2_error(const resp *r, int status, const char *needle, const char *what)
{
    ck_assert_msg(r->status == status, "%s: status %d, want %d: %.400s", what, r->status, status, r->body ? r->body : "");
    json_t *j = body_json(r);
    const char *m = json_string_value(json_object_get(j, "error"));
    ck_assert_msg(m && *m && json_object_size(j) == 1, "%s: not {\"error\": \"...\"}: %s", what, r->body);
    if (needle) ck_assert_msg(strstr(m, needle), "%s: error lacks '%s': %s", what, needle, m);
    json_decref(j);
}

/* ---- request bodies ---- */

static char path_buf[8][256];
static int path_k;

/* "/v2/models/{mname}{suffix}{rest}" */
static const char *mpath(const char *suffix, const char *rest)
{
    path_k = (path_k + 1) % 8;
    snprintf(path_buf[path_k], sizeof path_buf[path_k], "/v2/models/%s%s%s", mname, suffix, rest);
    return path_buf[path_k];
}

static json_t *shape4(int n) { return json_pack("[iiii]", n, H, W, C); }

/* a flat UINT8 data array of images idx[0..n) in the v2 layout */
static json_t *flat_images(const int *idx, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        for (int k = 0; k < D; k++) json_array_append_new(a, json_integer(nhwc[idx[i]][k]));
    return a;
}

/* the same, nested [n][H][W][C] */
static json_t *nested_images(const int *idx, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++) {
        json_t *im = json_array();
        for (int h = 0; h < H; h++) {
            json_t *row = json_array();
            for (int w = 0; w < W; w++) {
                json_t *px = json_array();
                for (int c = 0; c < C; c++) json_array_append_new(px, json_integer(nhwc[idx[i]][(h * W + w) * C + c]));
                json_array_append_new(row, px);
            }
            json_array_append_new(im, row);
        }
        json_array_append_new(a, im);
    }
    return a;
}

/* a JSON request (takes req); the reply in r */
static void post_json(resp *r, int port, const char *path, json_t *req)
{
    char *s = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    http(r, port, "POST", path, "Content-Type: application/json\r\n", s, strlen(s));
    free(s);
}

/* As tritonclient's InferenceServerClient.infer builds it: the JSON header (takes hdr), then the
 * raw bytes of each binary input, with Inference-Header-Content-Length (and no Content-Type) */
static void post_binary(resp *r, int port, const char *path, json_t *hdr, const void *bin, size_t binlen)
{
    char *s = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    size_t hl = strlen(s);
    char *body = malloc(hl + binlen + 1);
    memcpy(body, s, hl);
    if (binlen) memcpy(body + hl, bin, binlen);
    char hdrs[96];
    snprintf(hdrs, sizeof hdrs, "Inference-Header-Content-Length: %zu\r\n", hl);
    http(r, port, "POST", path, hdrs, body, hl + binlen);
    free(body);
    free(s);
}

/* a tritonclient InferInput set_data_from_numpy(binary_data=True) of images idx[0..n) */
static json_t *binary_image_input(int n) { return json_pack("{s:s, s:o, s:s, s:{s:i}}", "name", "image", "shape", shape4(n), "datatype", "UINT8", "parameters", "binary_data_size", n * D); }

static uint8_t *concat_images(const int *idx, int n)
{
    uint8_t *b = malloc((size_t)n * D);
    for (int i = 0; i < n; i++) memcpy(b + (size_t)i * D, nhwc[idx[i]], D);
    return b;
}

/* the parsed response: JSON header, and a pointer to each output's binary data (or NULL) */
typedef struct v2resp {
    json_t *j;
    const char *bin[8];
    size_t binlen[8];
} v2resp;

static void parse_v2(v2resp *v, const resp *r)
{
    memset(v, 0, sizeof *v);
    ck_assert_msg(r->status == 200, "status %d: %.400s", r->status, r->body ? r->body : "");
    char hv[40];
    size_t hl = r->len;
    if (header(r, "Inference-Header-Content-Length", hv, sizeof hv)) {
        hl = (size_t)atol(hv);
        ck_assert_uint_le(hl, r->len);
        ck_assert_str_eq(header(r, "Content-Type", hv, sizeof hv), "application/octet-stream");
    } else ck_assert_str_eq(header(r, "Content-Type", hv, sizeof hv), "application/json");
    v->j = body_json_n(r->body, hl);
    size_t off = hl;
    json_t *outs = json_object_get(v->j, "outputs");
    ck_assert_uint_le(json_array_size(outs), 8);
    for (size_t i = 0; i < json_array_size(outs); i++) {
        json_t *bds = json_object_get(json_object_get(json_array_get(outs, i), "parameters"), "binary_data_size");
        if (!bds) continue;
        size_t n = (size_t)json_integer_value(bds);
        ck_assert_uint_le(off + n, r->len);
        v->bin[i] = r->body + off;
        v->binlen[i] = n;
        off += n;
    }
    ck_assert_uint_eq(off, r->len);   /* nothing after the last output */
}

/* output `name` of v: its index, checked datatype and shape (dims, -1 ends) */
static int v2_output(const v2resp *v, const char *name, const char *dtype, const long long *shape)
{
    json_t *outs = json_object_get(v->j, "outputs");
    for (size_t i = 0; i < json_array_size(outs); i++) {
        json_t *o = json_array_get(outs, i);
        if (strcmp(json_string_value(json_object_get(o, "name")), name)) continue;
        ck_assert_str_eq(json_string_value(json_object_get(o, "datatype")), dtype);
        json_t *sh = json_object_get(o, "shape");
        size_t k = 0;
        for (; shape[k] >= 0; k++) ck_assert_int_eq(json_integer_value(json_array_get(sh, k)), shape[k]);
        ck_assert_uint_eq(json_array_size(sh), k);
        return (int)i;
    }
    ck_abort_msg("output %s missing", name);
    return -1;
}

/* element k of output i as a double (JSON data or little-endian binary) */
static double v2_value(const v2resp *v, int i, size_t k)
{
    json_t *o = json_array_get(json_object_get(v->j, "outputs"), (size_t)i);
    const char *dt = json_string_value(json_object_get(o, "datatype"));
    if (!v->bin[i]) {
        json_t *data = json_object_get(o, "data");
        ck_assert_msg(json_is_array(data) && k < json_array_size(data), "output %d lacks element %zu", i, k);
        json_t *x = json_array_get(data, k);
        ck_assert_msg(!json_is_array(x), "response data must be flat");
        return json_number_value(x);
    }
    const unsigned char *p = (const unsigned char *)v->bin[i];
    if (!strcmp(dt, "FP64")) {
        ck_assert_uint_le(8 * (k + 1), v->binlen[i]);
        uint64_t u = 0;
        for (int b = 7; b >= 0; b--) u = u << 8 | p[8 * k + (size_t)b];
        double x;
        memcpy(&x, &u, 8);
        return x;
    }
    if (!strcmp(dt, "FP32")) {
        ck_assert_uint_le(4 * (k + 1), v->binlen[i]);
        uint32_t u = (uint32_t)p[4 * k] | (uint32_t)p[4 * k + 1] << 8 | (uint32_t)p[4 * k + 2] << 16 |
                     (uint32_t)p[4 * k + 3] << 24;
        float x;
        memcpy(&x, &u, 4);
        return x;
    }
    ck_assert_uint_lt(k, v->binlen[i]);
    return p[k];
}

static size_t v2_count(const v2resp *v, int i)
{
    json_t *o = json_array_get(json_object_get(v->j, "outputs"), (size_t)i);
    if (!v->bin[i]) return json_array_size(json_object_get(o, "data"));
    const char *dt = json_string_value(json_object_get(o, "datatype"));
    return v->binlen[i] / (!strcmp(dt, "FP64") ? 8 : !strcmp(dt, "FP32") ? 4 : 1);
}

/* ---- native references ---- */

typedef struct native {
    double lp[NIMG], bpd[NIMG];
    float z[NIMG][D];
} native;

/* POST /log_prob (query q) or /encode as one multipart upload of images idx[0..n), one batch as the v2 request */
static void native_call(native *out, int port, const char *path, const int *idx, int n)
{
    size_t o;
    char *b = multipart_pngs(pngs, png_len, idx, n, &o, "bnd");
    resp r;
    http(&r, port, "POST", path, "Content-Type: multipart/form-data; boundary=bnd\r\n", b, o);
    free(b);
    ck_assert_msg(r.status == 200, "%s: %d %s", path, r.status, r.body);
    json_t *j = body_json(&r);
    json_t *res = json_object_get(j, "results");
    ck_assert_int_eq(json_array_size(res), n);
    for (int i = 0; i < n; i++) {
        out->lp[i] = json_number_value(json_object_get(json_array_get(res, (size_t)i), "log_prob"));
        out->bpd[i] = json_number_value(json_object_get(json_array_get(res, (size_t)i), "bits_per_dim"));
    }
    json_t *lat = json_object_get(j, "latents");
    for (int i = 0; lat && i < n; i++)
        for (int k = 0; k < D; k++)
            out->z[i][k] = (float)json_number_value(json_array_get(json_array_get(lat, (size_t)i), (size_t)k));
    json_decref(j);
    resp_free(&r);
}

static void assert_close(double got, double want, const char *what, int i)
{
    ck_assert_msg(got == want || fabs(got - want) <= 1e-9 * fabs(want), "%s[%d]: v2 %.17g, native %.17g", what, i, got,
                  want);
}

/* checks log_prob, bits_per_dim (and latents when present) of v against the native values */
static void check_against(const v2resp *v, const native *nat, int n, int want_latents)
{
    long long s1[] = {n, -1}, s2[] = {n, D, -1};
    int ilp = v2_output(v, "log_prob", "FP64", s1), ibpd = v2_output(v, "bits_per_dim", "FP64", s1);
    ck_assert_uint_eq(v2_count(v, ilp), (size_t)n);
    for (int i = 0; i < n; i++) {
        assert_close(v2_value(v, ilp, (size_t)i), nat->lp[i], "log_prob", i);
        assert_close(v2_value(v, ibpd, (size_t)i), nat->bpd[i], "bits_per_dim", i);
    }
    if (!want_latents) return;
    int iz = v2_output(v, "latents", "FP32", s2);
    ck_assert_uint_eq(v2_count(v, iz), (size_t)n * D);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < D; k++)
            ck_assert_msg((float)v2_value(v, iz, (size_t)i * D + (size_t)k) == nat->z[i][k], "latents[%d][%d]: %.9g vs %.9g",
                          i, k, v2_value(v, iz, (size_t)i * D + (size_t)k), (double)nat->z[i][k]);
}

/* ---- fixture ---- */

static void setup(void)
{
    if (http_test_begin("test_oip")) return;
    srand(12345);
    rnvp_error e;
    for (int i = 0; i < NIMG; i++) {
        for (int k = 0; k < D; k++) imgs[i][k] = (uint8_t)(rand() % 256);
        if (i == 1)   /* a smoother one */
            for (int k = 0; k < D; k++) imgs[i][k] = (uint8_t)(k * 7 % 251);
        for (int c = 0; c < C; c++)
            for (int h = 0; h < H; h++)
                for (int w = 0; w < W; w++) nhwc[i][(h * W + w) * C + c] = imgs[i][(c * H + h) * W + w];
        if (rnvp_png_encode_grid(&pngs[i], &png_len[i], imgs[i], 1, C, H, W, 1, -1, &e)) return;
    }
    if (start_server(&main_srv, NULL, "--model %s", MODEL_FILE)) {
        fprintf(stderr, "test_oip: the server did not start\n");
        return;
    }
    resp r;
    http(&r, main_srv.port, "GET", "/info", NULL, NULL, 0);
    json_error_t je;
    json_t *j = json_loadb(r.body ? r.body : "", r.len, 0, &je);
    const char *m = json_string_value(json_object_get(j, "model"));
    if (m) snprintf(mname, sizeof mname, "%s", m);
    json_decref(j);
    resp_free(&r);
    setup_ok = mname[0] != 0;
}

static void teardown(void)
{
    stop_server(&main_srv);
    for (int i = 0; i < NIMG; i++) free(pngs[i]);
    http_test_end();
}

#define NEED_SETUP() ck_assert_msg(setup_ok, "setup failed: is %s built? (run from the repository root)", exe)
#define PORT main_srv.port

/* ---- tests ---- */

START_TEST(test_metadata_and_health)
{
    NEED_SETUP();
    resp r;
    http(&r, PORT, "GET", "/v2", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    json_t *j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "name")), "realnvp");
    ck_assert_str_eq(json_string_value(json_object_get(j, "version")), RNVP_VERSION);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(j, "extensions"), 0)), "binary_tensor_data");
    json_decref(j);
    resp_free(&r);
    http(&r, PORT, "GET", "/v2/health/live", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    ck_assert(json_is_true(json_object_get(j, "live")));
    json_decref(j);
    resp_free(&r);
    http(&r, PORT, "GET", "/v2/health/ready", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    ck_assert(json_is_true(json_object_get(j, "ready")));
    json_decref(j);
    resp_free(&r);
    http(&r, PORT, "HEAD", "/v2/health/ready", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);

    /* model metadata, with and without the version */
    const char *paths[] = {mpath("", ""), mpath("", "/versions/1")};
    for (int p = 0; p < 2; p++) {
        http(&r, PORT, "GET", paths[p], NULL, NULL, 0);
        ck_assert_msg(r.status == 200, "%s: %d %s", paths[p], r.status, r.body);
        j = body_json(&r);
        ck_assert_str_eq(json_string_value(json_object_get(j, "name")), mname);
        ck_assert_str_eq(json_string_value(json_array_get(json_object_get(j, "versions"), 0)), "1");
        ck_assert_int_eq(json_array_size(json_object_get(j, "versions")), 1);
        ck_assert_str_eq(json_string_value(json_object_get(j, "platform")), "realnvp");
        json_t *in = json_object_get(j, "inputs"), *out = json_object_get(j, "outputs");
        ck_assert_int_eq(json_array_size(in), 1);
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(in, 0), "name")), "image");
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(in, 0), "datatype")), "UINT8");
        json_t *sh = json_object_get(json_array_get(in, 0), "shape");
        long long want[4] = {-1, H, W, C};
        for (int k = 0; k < 4; k++) ck_assert_int_eq(json_integer_value(json_array_get(sh, (size_t)k)), want[k]);
        ck_assert_int_eq(json_array_size(out), 3);
        const char *names[3] = {"log_prob", "bits_per_dim", "latents"}, *types[3] = {"FP64", "FP64", "FP32"};
        for (int k = 0; k < 3; k++) {
            ck_assert_str_eq(json_string_value(json_object_get(json_array_get(out, (size_t)k), "name")), names[k]);
            ck_assert_str_eq(json_string_value(json_object_get(json_array_get(out, (size_t)k), "datatype")), types[k]);
        }
        sh = json_object_get(json_array_get(out, 2), "shape");
        ck_assert_int_eq(json_integer_value(json_array_get(sh, 0)), -1);
        ck_assert_int_eq(json_integer_value(json_array_get(sh, 1)), D);
        json_decref(j);
        resp_free(&r);
    }
    http(&r, PORT, "GET", mpath("-decoder", ""), NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    char dname[160];
    snprintf(dname, sizeof dname, "%s-decoder", mname);
    ck_assert_str_eq(json_string_value(json_object_get(j, "name")), dname);
    json_t *in0 = json_array_get(json_object_get(j, "inputs"), 0), *out0 = json_array_get(json_object_get(j, "outputs"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(in0, "name")), "latents");
    ck_assert_str_eq(json_string_value(json_object_get(in0, "datatype")), "FP32");
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(in0, "shape"), 1)), D);
    ck_assert_str_eq(json_string_value(json_object_get(out0, "name")), "image");
    ck_assert_str_eq(json_string_value(json_object_get(out0, "datatype")), "UINT8");
    ck_assert_int_eq(json_array_size(json_object_get(out0, "shape")), 4);
    json_decref(j);
    resp_free(&r);

    /* model readiness */
    const char *rpaths[] = {mpath("", "/ready"), mpath("", "/versions/1/ready"), mpath("-decoder", "/ready")};
    for (int p = 0; p < 3; p++) {
        http(&r, PORT, "GET", rpaths[p], NULL, NULL, 0);
        ck_assert_msg(r.status == 200, "%s: %d %s", rpaths[p], r.status, r.body);
        j = body_json(&r);
        ck_assert(json_is_true(json_object_get(j, "ready")));
        ck_assert_str_eq(json_string_value(json_object_get(j, "name")), p == 2 ? dname : mname);
        json_decref(j);
        resp_free(&r);
    }

    /* not found: another version, another model, other paths; wrong methods */
    http(&r, PORT, "GET", mpath("", "/versions/2"), NULL, NULL, 0);
    assert_v2_error(&r, 404, "version", "versions/2");
    resp_free(&r);
    http(&r, PORT, "GET", mpath("", "/versions/2/ready"), NULL, NULL, 0);
    assert_v2_error(&r, 404, "version", "versions/2/ready");
    resp_free(&r);
    http(&r, PORT, "POST", mpath("", "/versions/2/infer"), NULL, "{}", 2);
    assert_v2_error(&r, 404, "version", "versions/2/infer");
    resp_free(&r);
    http(&r, PORT, "GET", "/v2/models/no-such-model", NULL, NULL, 0);
    assert_v2_error(&r, 404, "no-such-model", "unknown model");
    resp_free(&r);
    http(&r, PORT, "GET", "/v2/models/no-such-model/ready", NULL, NULL, 0);
    assert_v2_error(&r, 404, NULL, "unknown model ready");
    resp_free(&r);
    http(&r, PORT, "POST", "/v2/models/no-such-model/infer", NULL, "{}", 2);
    assert_v2_error(&r, 404, NULL, "unknown model infer");
    resp_free(&r);
    http(&r, PORT, "GET", "/v2/health/dead", NULL, NULL, 0);
    assert_v2_error(&r, 404, NULL, "unknown /v2 path");
    resp_free(&r);
    http(&r, PORT, "GET", mpath("", "/infer"), NULL, NULL, 0);
    assert_v2_error(&r, 405, NULL, "GET infer");
    char h[32];
    ck_assert_str_eq(header(&r, "Allow", h, sizeof h), "POST");
    resp_free(&r);
    http(&r, PORT, "POST", "/v2", NULL, "{}", 2);
    assert_v2_error(&r, 405, NULL, "POST /v2");
    resp_free(&r);
    http(&r, PORT, "GET", "/v2?x=1", NULL, NULL, 0);
    assert_v2_error(&r, 400, "x", "unknown query parameter");
    resp_free(&r);
    /* the native API is unchanged */
    http(&r, PORT, "GET", "/nope", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 404);
    j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")), "not_found");
    json_decref(j);
    resp_free(&r);
}
END_TEST

START_TEST(test_infer_json)
{
    NEED_SETUP();
    int idx[3] = {0, 1, 2};
    native nat;
    native_call(&nat, PORT, "/encode", idx, 3);
    native lpn;
    native_call(&lpn, PORT, "/log_prob", idx, 3);
    for (int i = 0; i < 3; i++) assert_close(nat.bpd[i], lpn.bpd[i], "native encode vs log_prob bits_per_dim", i);
    /* flat, then nested data; no outputs named: all three, as JSON */
    for (int nested = 0; nested < 2; nested++) {
        json_t *req = json_pack("{s:s, s:[{s:s, s:o, s:s, s:o}]}", "id", "req-1", "inputs", "name", "image", "shape",
                                shape4(3), "datatype", "UINT8", "data", nested ? nested_images(idx, 3) : flat_images(idx, 3));
        resp r;
        post_json(&r, PORT, mpath("", "/infer"), req);
        v2resp v;
        parse_v2(&v, &r);
        ck_assert_str_eq(json_string_value(json_object_get(v.j, "model_name")), mname);
        ck_assert_str_eq(json_string_value(json_object_get(v.j, "model_version")), "1");
        ck_assert_str_eq(json_string_value(json_object_get(v.j, "id")), "req-1");
        ck_assert_int_eq(json_array_size(json_object_get(v.j, "outputs")), 3);
        check_against(&v, &nat, 3, 1);
        check_against(&v, &lpn, 3, 0);
        json_decref(v.j);
        resp_free(&r);
    }
    /* outputs named: only those, in that order; log_prob alone runs as /log_prob */
    json_t *req = json_pack("{s:[{s:s, s:o, s:s, s:o}], s:[{s:s}, {s:s}]}", "inputs", "name", "image", "shape", shape4(3),
                            "datatype", "UINT8", "data", flat_images(idx, 3), "outputs", "name", "bits_per_dim", "name",
                            "log_prob");
    resp r;
    post_json(&r, PORT, mpath("", "/versions/1/infer"), req);
    v2resp v;
    parse_v2(&v, &r);
    ck_assert_int_eq(json_array_size(json_object_get(v.j, "outputs")), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(v.j, "outputs"), 0), "name")),
                     "bits_per_dim");
    ck_assert_ptr_null(json_object_get(v.j, "id"));
    check_against(&v, &lpn, 3, 0);
    json_decref(v.j);
    resp_free(&r);
}
END_TEST

/* the protocol's own examples (inference_rest.md, extension_binary_data.md) */
START_TEST(test_spec_examples)
{
    NEED_SETUP();
    /* the example request verbatim: a model with inputs input0 and input1; this one refuses it */
    static const char example[] =
        "{\n  \"id\" : \"42\",\n  \"inputs\" : [\n    {\n      \"name\" : \"input0\",\n      \"shape\" : [ 2, 2 ],\n"
        "      \"datatype\" : \"UINT32\",\n      \"data\" : [ 1, 2, 3, 4 ]\n    },\n    {\n      \"name\" : \"input1\",\n"
        "      \"shape\" : [ 3 ],\n      \"datatype\" : \"BOOL\",\n      \"data\" : [ true ]\n    }\n  ],\n"
        "  \"outputs\" : [\n    {\n      \"name\" : \"output0\"\n    }\n  ]\n}";
    resp r;
    http(&r, PORT, "POST", mpath("", "/infer"), "Content-Type: application/json\r\n", example, sizeof example - 1);
    assert_v2_error(&r, 400, "input0", "the spec's example");
    resp_free(&r);
    /* the same request shape for this model: id 42, one output named; the reply as in the example */
    int idx[2] = {3, 1};
    json_t *req = json_pack("{s:s, s:[{s:s, s:[iiii], s:s, s:o}], s:[{s:s}]}", "id", "42", "inputs", "name", "image",
                            "shape", 2, H, W, C, "datatype", "UINT8", "data", flat_images(idx, 2), "outputs", "name",
                            "log_prob");
    post_json(&r, PORT, mpath("", "/infer"), req);
    v2resp v;
    parse_v2(&v, &r);
    ck_assert_str_eq(json_string_value(json_object_get(v.j, "id")), "42");
    json_t *outs = json_object_get(v.j, "outputs");
    ck_assert_int_eq(json_array_size(outs), 1);
    json_t *o = json_array_get(outs, 0);
    ck_assert_str_eq(json_string_value(json_object_get(o, "name")), "log_prob");
    ck_assert_str_eq(json_string_value(json_object_get(o, "datatype")), "FP64");
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(o, "shape"), 0)), 2);
    ck_assert_int_eq(json_array_size(json_object_get(o, "data")), 2);
    native nat;
    native_call(&nat, PORT, "/log_prob", idx, 2);
    for (int i = 0; i < 2; i++) assert_close(v2_value(&v, 0, (size_t)i), nat.lp[i], "log_prob", i);
    json_decref(v.j);
    resp_free(&r);

    /* the binary extension's example: "model_name" in the header, Content-Type application/octet-stream,
     * the output asked for as binary data; the reply: JSON header, then the output's bytes */
    uint8_t *bin = concat_images(idx, 2);
    json_t *hdr = json_pack("{s:s, s:[o], s:[{s:s, s:{s:b}}]}", "model_name", mname, "inputs", binary_image_input(2),
                            "outputs", "name", "bits_per_dim", "parameters", "binary_data", 1);
    char *s = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    size_t hl = strlen(s);
    char *body = malloc(hl + 2 * D);
    memcpy(body, s, hl);
    memcpy(body + hl, bin, 2 * D);
    char hdrs[160];
    snprintf(hdrs, sizeof hdrs, "Content-Type: application/octet-stream\r\nInference-Header-Content-Length: %zu\r\n", hl);
    http(&r, PORT, "POST", mpath("", "/infer"), hdrs, body, hl + 2 * D);
    free(body);
    free(s);
    free(bin);
    parse_v2(&v, &r);
    outs = json_object_get(v.j, "outputs");
    ck_assert_int_eq(json_array_size(outs), 1);
    o = json_array_get(outs, 0);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(o, "parameters"), "binary_data_size")), 16);
    ck_assert_ptr_null(json_object_get(o, "data"));
    char hv[40];
    ck_assert_uint_eq((size_t)atol(header(&r, "Inference-Header-Content-Length", hv, sizeof hv)) + 16, r.len);
    for (int i = 0; i < 2; i++) assert_close(v2_value(&v, 0, (size_t)i), nat.bpd[i], "bits_per_dim", i);
    json_decref(v.j);
    resp_free(&r);
}
END_TEST

START_TEST(test_infer_binary)
{
    NEED_SETUP();
    int idx[4] = {2, 0, 3, 1};
    native nat;
    native_call(&nat, PORT, "/encode", idx, 4);
    uint8_t *bin = concat_images(idx, 4);
    /* tritonclient's default: binary inputs, no outputs named, so "binary_data_output": true */
    json_t *hdr = json_pack("{s:[o], s:{s:b}}", "inputs", binary_image_input(4), "parameters", "binary_data_output", 1);
    resp r;
    post_binary(&r, PORT, mpath("", "/infer"), hdr, bin, 4 * D);
    v2resp v;
    parse_v2(&v, &r);
    ck_assert_int_eq(json_array_size(json_object_get(v.j, "outputs")), 3);
    for (int i = 0; i < 3; i++) ck_assert_ptr_nonnull(v.bin[i]);
    ck_assert_uint_eq(v.binlen[0], 4 * 8);
    ck_assert_uint_eq(v.binlen[2], 4 * D * 4);
    check_against(&v, &nat, 4, 1);
    json_decref(v.j);
    resp_free(&r);
    /* binary input, outputs named as InferRequestedOutput(name, binary_data=False): JSON outputs, a JSON reply */
    hdr = json_pack("{s:[o], s:[{s:s, s:{s:b}}, {s:s, s:{s:b}}, {s:s, s:{s:b}}]}", "inputs", binary_image_input(4), "outputs",
                    "name", "latents", "parameters", "binary_data", 0, "name", "log_prob", "parameters", "binary_data", 0,
                    "name", "bits_per_dim", "parameters", "binary_data", 0);
    post_binary(&r, PORT, mpath("", "/infer"), hdr, bin, 4 * D);
    parse_v2(&v, &r);
    ck_assert_ptr_null(v.bin[0]);
    check_against(&v, &nat, 4, 1);
    json_decref(v.j);
    resp_free(&r);
    /* mixed: the request asks for binary outputs, one output overrides it */
    hdr = json_pack("{s:[o], s:{s:b}, s:[{s:s}, {s:s, s:{s:b}}]}", "inputs", binary_image_input(4), "parameters",
                    "binary_data_output", 1, "outputs", "name", "log_prob", "name", "bits_per_dim", "parameters",
                    "binary_data", 0);
    post_binary(&r, PORT, mpath("", "/infer"), hdr, bin, 4 * D);
    parse_v2(&v, &r);
    ck_assert_ptr_nonnull(v.bin[0]);
    ck_assert_ptr_null(v.bin[1]);
    check_against(&v, &nat, 4, 0);
    json_decref(v.j);
    resp_free(&r);
    /* JSON input, binary outputs (InferInput(binary_data=False), InferRequestedOutput(name)) */
    hdr = json_pack("{s:[{s:s, s:o, s:s, s:o}], s:[{s:s, s:{s:b}}]}", "inputs", "name", "image", "shape", shape4(4),
                    "datatype", "UINT8", "data", flat_images(idx, 4), "outputs", "name", "latents", "parameters",
                    "binary_data", 1);
    post_binary(&r, PORT, mpath("", "/infer"), hdr, NULL, 0);   /* the header is the whole body */
    parse_v2(&v, &r);
    ck_assert_ptr_nonnull(v.bin[0]);
    long long s2[] = {4, D, -1};
    int iz = v2_output(&v, "latents", "FP32", s2);
    for (int k = 0; k < 4 * D; k++) ck_assert((float)v2_value(&v, iz, (size_t)k) == nat.z[k / D][k % D]);
    json_decref(v.j);
    resp_free(&r);
    free(bin);
}
END_TEST

START_TEST(test_decoder_round_trip)
{
    NEED_SETUP();
    int idx[3] = {0, 1, 3};
    uint8_t *bin = concat_images(idx, 3);
    json_t *hdr = json_pack("{s:[o], s:[{s:s, s:{s:b}}]}", "inputs", binary_image_input(3), "outputs", "name", "latents",
                            "parameters", "binary_data", 1);
    resp r;
    post_binary(&r, PORT, mpath("", "/infer"), hdr, bin, 3 * D);
    v2resp v;
    parse_v2(&v, &r);
    ck_assert_uint_eq(v.binlen[0], 3 * D * 4);
    char *z = malloc(v.binlen[0]);   /* little-endian FP32, as it came */
    memcpy(z, v.bin[0], v.binlen[0]);
    json_t *zj = json_array();
    for (int k = 0; k < 3 * D; k++) json_array_append_new(zj, json_real(v2_value(&v, 0, (size_t)k)));
    json_decref(v.j);
    resp_free(&r);
    /* binary latents in, binary image out */
    hdr = json_pack("{s:[{s:s, s:[ii], s:s, s:{s:i}}], s:{s:b}}", "inputs", "name", "latents", "shape", 3, D, "datatype",
                    "FP32", "parameters", "binary_data_size", 3 * D * 4, "parameters", "binary_data_output", 1);
    post_binary(&r, PORT, mpath("-decoder", "/infer"), hdr, z, 3 * D * 4);
    parse_v2(&v, &r);
    long long s4[] = {3, H, W, C, -1};
    int ii = v2_output(&v, "image", "UINT8", s4);
    ck_assert_uint_eq(v.binlen[ii], 3 * D);
    ck_assert_msg(!memcmp(v.bin[ii], bin, 3 * D), "decode(encode(x)) != x (binary)");
    json_decref(v.j);
    resp_free(&r);
    /* JSON latents (nested [3][D]) in, JSON image out */
    json_t *nested = json_array();
    for (int i = 0; i < 3; i++) {
        json_t *row = json_array();
        for (int k = 0; k < D; k++) json_array_append(row, json_array_get(zj, (size_t)(i * D + k)));
        json_array_append_new(nested, row);
    }
    json_t *req = json_pack("{s:[{s:s, s:[ii], s:s, s:o}], s:[{s:s}]}", "inputs", "name", "latents", "shape", 3, D,
                            "datatype", "FP32", "data", nested, "outputs", "name", "image");
    post_json(&r, PORT, mpath("-decoder", "/versions/1/infer"), req);
    parse_v2(&v, &r);
    char dname[160];
    snprintf(dname, sizeof dname, "%s-decoder", mname);
    ck_assert_str_eq(json_string_value(json_object_get(v.j, "model_name")), dname);
    ii = v2_output(&v, "image", "UINT8", s4);
    ck_assert_uint_eq(v2_count(&v, ii), 3 * D);
    for (int k = 0; k < 3 * D; k++) ck_assert_int_eq((int)v2_value(&v, ii, (size_t)k), bin[k]);
    json_decref(v.j);
    resp_free(&r);
    /* flat JSON latents: the same */
    req = json_pack("{s:[{s:s, s:[ii], s:s, s:O}]}", "inputs", "name", "latents", "shape", 3, D, "datatype", "FP32", "data", zj);
    post_json(&r, PORT, mpath("-decoder", "/infer"), req);
    parse_v2(&v, &r);
    ii = v2_output(&v, "image", "UINT8", s4);
    for (int k = 0; k < 3 * D; k++) ck_assert_int_eq((int)v2_value(&v, ii, (size_t)k), bin[k]);
    json_decref(v.j);
    resp_free(&r);
    json_decref(zj);
    free(z);
    free(bin);
}
END_TEST

START_TEST(test_samples)
{
    NEED_SETUP();
    int idx[2] = {1, 2};
    native nat, enc;
    native_call(&nat, PORT, "/log_prob?samples=4&seed=7", idx, 2);
    native_call(&enc, PORT, "/encode", idx, 2);
    for (int i = 0; i < 2; i++) memcpy(nat.z[i], enc.z[i], sizeof nat.z[i]);
    uint8_t *bin = concat_images(idx, 2);
    /* samples and seed, log_prob and bits_per_dim: as /log_prob?samples=4&seed=7 */
    json_t *hdr = json_pack("{s:[o], s:{s:i, s:i}, s:[{s:s}, {s:s}]}", "inputs", binary_image_input(2), "parameters",
                            "samples", 4, "seed", 7, "outputs", "name", "log_prob", "name", "bits_per_dim");
    resp r;
    post_binary(&r, PORT, mpath("", "/infer"), hdr, bin, 2 * D);
    v2resp v;
    parse_v2(&v, &r);
    json_t *p = json_object_get(v.j, "parameters");
    ck_assert_int_eq(json_integer_value(json_object_get(p, "samples")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(p, "seed")), 7);
    check_against(&v, &nat, 2, 0);
    json_decref(v.j);
    resp_free(&r);
    /* no outputs named: the latents too (at u = 0.5, as /encode) */
    hdr = json_pack("{s:[o], s:{s:i, s:i, s:b}}", "inputs", binary_image_input(2), "parameters", "samples", 4, "seed", 7,
                    "binary_data_output", 1);
    post_binary(&r, PORT, mpath("", "/infer"), hdr, bin, 2 * D);
    parse_v2(&v, &r);
    ck_assert_int_eq(json_array_size(json_object_get(v.j, "outputs")), 3);
    check_against(&v, &nat, 2, 1);
    json_decref(v.j);
    resp_free(&r);
    /* without a seed, one is drawn and returned; the same seed again gives the same values */
    hdr = json_pack("{s:[o], s:{s:i}}", "inputs", binary_image_input(2), "parameters", "samples", 2);
    post_binary(&r, PORT, mpath("", "/infer"), hdr, bin, 2 * D);
    parse_v2(&v, &r);
    json_int_t seed = json_integer_value(json_object_get(json_object_get(v.j, "parameters"), "seed"));
    char path[64];
    snprintf(path, sizeof path, "/log_prob?samples=2&seed=%lld", (long long)seed);
    native again;
    native_call(&again, PORT, path, idx, 2);
    for (int i = 0; i < 2; i++) memcpy(again.z[i], enc.z[i], sizeof again.z[i]);
    check_against(&v, &again, 2, 1);
    json_decref(v.j);
    resp_free(&r);
    /* refused: samples with only latents, on the decoder, out of range; seed without samples */
    const char *bad[][2] = {
        {"{\"samples\": 2}", "[{\"name\": \"latents\"}]"}, {"{\"samples\": 0}", "[]"}, {"{\"samples\": 65}", "[]"},
        {"{\"samples\": \"2\"}", "[]"}, {"{\"seed\": 3}", "[]"}, {"{\"samples\": 2, \"seed\": -1}", "[]"},
        {"{\"binary_data_output\": 1}", "[]"}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char js[512];
        int n = snprintf(js, sizeof js, "{\"parameters\": %s, \"outputs\": %s, \"inputs\": [{\"name\": \"image\", \"shape\": "
                         "[1, %d, %d, %d], \"datatype\": \"UINT8\", \"parameters\": {\"binary_data_size\": %d}}]}",
                         bad[i][0], bad[i][1], H, W, C, D);
        post_binary(&r, PORT, mpath("", "/infer"), json_loadb(js, (size_t)n, 0, NULL), bin, D);
        assert_v2_error(&r, 400, NULL, bad[i][0]);
        resp_free(&r);
    }
    float zz[D] = {0};
    hdr = json_pack("{s:[{s:s, s:[ii], s:s, s:{s:i}}], s:{s:i}}", "inputs", "name", "latents", "shape", 1, D, "datatype",
                    "FP32", "parameters", "binary_data_size", D * 4, "parameters", "samples", 2);
    post_binary(&r, PORT, mpath("-decoder", "/infer"), hdr, zz, sizeof zz);
    assert_v2_error(&r, 400, "decoder", "samples on the decoder");
    resp_free(&r);
    free(bin);
}
END_TEST

/* a binary request whose JSON header is hdr_fmt (printf) and binary part bin (binlen), with the
 * given Inference-Header-Content-Length (-1: the header's length, -2: none) */
static void post_raw(resp *r, int port, const char *path, long hlen, const void *bin, size_t binlen, const char *fmt, ...)
{
    char js[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(js, sizeof js, fmt, ap);
    va_end(ap);
    char *body = malloc((size_t)n + binlen + 1);
    memcpy(body, js, (size_t)n);
    if (binlen) memcpy(body + n, bin, binlen);
    char hdrs[96] = "";
    if (hlen != -2) snprintf(hdrs, sizeof hdrs, "Inference-Header-Content-Length: %ld\r\n", hlen == -1 ? (long)n : hlen);
    http(r, port, "POST", path, hdrs, body, (size_t)n + binlen);
    free(body);
}

#define IMG_IN(n, extra) "{\"inputs\": [{\"name\": \"image\", \"shape\": [" #n ", 6, 8, 3], \"datatype\": \"UINT8\"" extra "}]}"

START_TEST(test_errors)
{
    NEED_SETUP();
    uint8_t *bin = concat_images((int[]){0, 1, 2, 3}, 4);
    const char *inf = mpath("", "/infer"), *dinf = mpath("-decoder", "/infer");
    resp r;
    struct {
        const char *json, *needle;
    } js[] = {
        {"", "empty"},
        {"not json", "invalid JSON"},
        {"[1, 2]", "JSON object"},
        {"{}", "inputs"},
        {"{\"inputs\": []}", "inputs"},
        {"{\"inputs\": [{\"name\": \"x\", \"shape\": [1], \"datatype\": \"UINT8\", \"data\": [1]}]}", "unknown input"},
        {IMG_IN(1, ", \"data\": [1]"), "elements"},
        {"{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 6, 8, 3], \"datatype\": \"FP32\", \"data\": [1]}]}", "datatype"},
        {"{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 8, 6, 3], \"datatype\": \"UINT8\", \"data\": [1]}]}", "shape"},
        {"{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 6, 8], \"datatype\": \"UINT8\", \"data\": [1]}]}", "shape"},
        {"{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 6, 8, 3, 1], \"datatype\": \"UINT8\", \"data\": [1]}]}", "shape"},
        {"{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 6.5, 8, 3], \"datatype\": \"UINT8\", \"data\": [1]}]}", "shape"},
        {IMG_IN(0, ", \"data\": []"), "N = 0"},
        {IMG_IN(257, ", \"data\": [1]"), "N = 257"},
        {"{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 6, 8, 3], \"data\": [1]}]}", "datatype"},
        {IMG_IN(1, ""), "neither"},
        {IMG_IN(1, ", \"data\": [[1, 2]]"), "depth"},
        {IMG_IN(1, ", \"data\": \"abc\""), "array"},
        {IMG_IN(1, ", \"parameters\": {\"shared_memory_region\": \"r\"}"), "shared memory"},
        {IMG_IN(1, ", \"parameters\": 3"), "parameters"},
        {IMG_IN(1, ", \"parameters\": {\"binary_data_size\": 144}"), "Inference-Header-Content-Length"},
        {"{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 6, 8, 3], \"datatype\": \"UINT8\", \"data\": [1]}], "
         "\"id\": 5}", "id"},
        {"{\"inputs\": 1, \"inputs\": 2}", "duplicate"},
    };
    for (size_t i = 0; i < sizeof js / sizeof *js; i++) {
        http(&r, PORT, "POST", inf, "Content-Type: application/json\r\n", js[i].json, strlen(js[i].json));
        assert_v2_error(&r, 400, js[i].needle, js[i].json);
        resp_free(&r);
    }
    /* element values: 256, -1, 1.5 in UINT8; an image array nested one level too shallow */
    for (int bad = 0; bad < 4; bad++) {
        json_t *data = flat_images((int[]){0}, 1);
        if (bad == 0) json_array_set_new(data, 17, json_integer(256));
        if (bad == 1) json_array_set_new(data, 17, json_integer(-1));
        if (bad == 2) json_array_set_new(data, 17, json_real(1.5));
        json_t *d2 = data;
        if (bad == 3) d2 = json_pack("[o]", data);   /* [[144 numbers]] for [1, 6, 8, 3] */
        json_t *req = json_pack("{s:[{s:s, s:o, s:s, s:o}]}", "inputs", "name", "image", "shape", shape4(1), "datatype",
                                "UINT8", "data", d2);
        post_json(&r, PORT, inf, req);
        assert_v2_error(&r, 400, bad < 3 ? "element 17" : "depth", "bad element");
        resp_free(&r);
    }
    /* outputs: unknown, asked twice, the decoder's output from the model, classification */
    const char *outs[][2] = {{"[{\"name\": \"logits\"}]", "unknown output"},
                             {"[{\"name\": \"log_prob\"}, {\"name\": \"log_prob\"}]", "twice"},
                             {"[{\"name\": \"image\"}]", "unknown output"},
                             {"[{\"name\": \"log_prob\", \"parameters\": {\"classification\": 2}}]", "classification"},
                             {"[{\"name\": \"log_prob\", \"parameters\": {\"binary_data\": \"yes\"}}]", "binary_data"},
                             {"{\"name\": \"log_prob\"}", "outputs"}};
    for (size_t i = 0; i < sizeof outs / sizeof *outs; i++) {
        post_raw(&r, PORT, inf, -1, bin, D,
                 "{\"outputs\": %s, \"inputs\": [{\"name\": \"image\", \"shape\": [1, 6, 8, 3], \"datatype\": \"UINT8\", "
                 "\"parameters\": {\"binary_data_size\": %d}}]}", outs[i][0], D);
        assert_v2_error(&r, 400, outs[i][1], outs[i][0]);
        resp_free(&r);
    }
    /* binary framing: byte size mismatches, the header length past the body, extra bytes, a bad header value */
    const char *bin1 = "{\"inputs\": [{\"name\": \"image\", \"shape\": [%d, 6, 8, 3], \"datatype\": \"UINT8\", "
                       "\"parameters\": {\"binary_data_size\": %d}}]}";
    post_raw(&r, PORT, inf, -1, bin, D, bin1, 1, D - 1);
    assert_v2_error(&r, 400, "binary_data_size", "binary_data_size one byte short of the shape");
    resp_free(&r);
    post_raw(&r, PORT, inf, -1, bin, D - 1, bin1, 1, D);
    assert_v2_error(&r, 400, "follow the JSON header", "body one byte short");
    resp_free(&r);
    post_raw(&r, PORT, inf, -1, bin, D + 1, bin1, 1, D);
    assert_v2_error(&r, 400, "add up", "one byte too many");
    resp_free(&r);
    post_raw(&r, PORT, inf, 100000, bin, D, bin1, 1, D);
    assert_v2_error(&r, 400, "more than the whole body", "header length past the body");
    resp_free(&r);
    post_raw(&r, PORT, inf, 20, bin, D, bin1, 1, D);
    assert_v2_error(&r, 400, "invalid JSON", "header length inside the JSON");
    resp_free(&r);
    post_raw(&r, PORT, inf, 0, bin, D, bin1, 1, D);
    assert_v2_error(&r, 400, "empty", "header length 0");
    resp_free(&r);
    post_raw(&r, PORT, inf, -2, bin, D, bin1, 1, D);
    assert_v2_error(&r, 400, "invalid JSON", "binary data without the header (the body is all JSON)");
    resp_free(&r);
    http(&r, PORT, "POST", inf, "Inference-Header-Content-Length: 12abc\r\n", "{}", 2);
    assert_v2_error(&r, 400, "Inference-Header-Content-Length", "header value not a number");
    resp_free(&r);
    http(&r, PORT, "POST", inf, "Inference-Header-Content-Length: -5\r\n", "{}", 2);
    assert_v2_error(&r, 400, "Inference-Header-Content-Length", "negative header value");
    resp_free(&r);
    post_raw(&r, PORT, inf, -1, bin, D, "{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 6, 8, 3], \"datatype\": \"UINT8\", "
             "\"data\": [1], \"parameters\": {\"binary_data_size\": %d}}]}", D);
    assert_v2_error(&r, 400, "both", "data and binary_data_size");
    resp_free(&r);
    post_raw(&r, PORT, inf, -1, bin, 2 * D, "{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 6, 8, 3], \"datatype\": "
             "\"UINT8\", \"parameters\": {\"binary_data_size\": %d}}, {\"name\": \"image\", \"shape\": [1, 6, 8, 3], "
             "\"datatype\": \"UINT8\", \"parameters\": {\"binary_data_size\": %d}}]}", D, D);
    assert_v2_error(&r, 400, "twice", "the input twice");
    resp_free(&r);
    /* latents: NaN and Infinity (binary and JSON), beyond float32, wrong D, wrong datatype */
    float z[D] = {0};
    const char *zin = "{\"inputs\": [{\"name\": \"latents\", \"shape\": [1, %d], \"datatype\": \"FP32\", "
                      "\"parameters\": {\"binary_data_size\": %d}}]}";
    z[5] = NAN;
    post_raw(&r, PORT, dinf, -1, z, sizeof z, zin, D, D * 4);
    assert_v2_error(&r, 400, "NaN", "binary NaN latent");
    resp_free(&r);
    z[5] = INFINITY;
    post_raw(&r, PORT, dinf, -1, z, sizeof z, zin, D, D * 4);
    assert_v2_error(&r, 400, "infinite", "binary infinite latent");
    resp_free(&r);
    z[5] = 0;
    post_raw(&r, PORT, dinf, -1, z, sizeof z, zin, D, D * 4 - 4);
    assert_v2_error(&r, 400, "binary_data_size", "latent bytes not 4 D");
    resp_free(&r);
    post_raw(&r, PORT, dinf, -1, z, sizeof z, zin, D + 1, D * 4);
    assert_v2_error(&r, 400, "shape", "D + 1");
    resp_free(&r);
    char js2[4096];
    for (int bad = 0; bad < 4; bad++) {
        size_t o = (size_t)sprintf(js2, "{\"inputs\": [{\"name\": \"latents\", \"shape\": [1, %d], \"datatype\": \"%s\", "
                                        "\"data\": [", D, bad == 3 ? "FP64" : "FP32");
        for (int k = 0; k < D; k++)
            o += (size_t)sprintf(js2 + o, "%s%s", k ? "," : "", k != 9 ? "0.5" : bad == 0 ? "NaN" : bad == 1 ? "1e39" : bad == 2 ? "null" : "1");
        o += (size_t)sprintf(js2 + o, "]}]}");
        http(&r, PORT, "POST", dinf, "Content-Type: application/json\r\n", js2, o);
        assert_v2_error(&r, 400, bad == 0 ? "NaN" : bad == 3 ? "datatype" : "element 9", "JSON latent");
        resp_free(&r);
    }
    /* the server still answers */
    http(&r, PORT, "GET", "/v2/health/live", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    json_t *hdr = json_pack("{s:[o]}", "inputs", binary_image_input(1));
    post_binary(&r, PORT, inf, hdr, bin, D);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    free(bin);
}
END_TEST

/* the limits, the key, the queue and the drain apply to /v2 as to the native endpoints */
START_TEST(test_limits)
{
    NEED_SETUP();
    uint8_t *bin = concat_images((int[]){0, 1, 2, 3}, 4);
    server s;
    /* images per request and computations per request */
    ck_assert_int_eq(start_server(&s, NULL, "--model " MODEL_FILE " --max-samples 3 --max-jobs-per-request 4"), 0);
    resp r;
    json_t *hdr = json_pack("{s:[o]}", "inputs", binary_image_input(4));
    post_binary(&r, s.port, mpath("", "/infer"), hdr, bin, 4 * D);
    assert_v2_error(&r, 400, "--max-samples", "4 images, --max-samples 3");
    resp_free(&r);
    hdr = json_pack("{s:[o], s:{s:i}, s:[{s:s}]}", "inputs", binary_image_input(2), "parameters", "samples", 3, "outputs",
                    "name", "log_prob");
    post_binary(&r, s.port, mpath("", "/infer"), hdr, bin, 2 * D);
    assert_v2_error(&r, 400, "--max-jobs-per-request", "2 images x 3 samples");
    resp_free(&r);
    hdr = json_pack("{s:[o], s:{s:i}}", "inputs", binary_image_input(1), "parameters", "samples", 3);   /* 3 + 1 encoding */
    post_binary(&r, s.port, mpath("", "/infer"), hdr, bin, D);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    hdr = json_pack("{s:[o], s:{s:i}}", "inputs", binary_image_input(2), "parameters", "samples", 2);   /* 4 + 2 */
    post_binary(&r, s.port, mpath("", "/infer"), hdr, bin, 2 * D);
    assert_v2_error(&r, 400, "6 computations", "samples and latents");
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);

    /* the body limit and the memory budget: a JSON tree that would not fit is refused before it is built */
    ck_assert_int_eq(
        start_server(&s, NULL, "--model " MODEL_FILE " --max-body-bytes 200000 --memory-budget-bytes 1048576"), 0);
    char *big = malloc(250000);
    memset(big, ' ', 250000);
    big[0] = '{', big[249999] = '}';
    http(&r, s.port, "POST", mpath("", "/infer"), "Content-Type: application/json\r\n", big, 250000);
    assert_v2_error(&r, 413, "--max-body-bytes", "over --max-body-bytes");
    resp_free(&r);
    free(big);
    enum { NB = 150 };   /* 150 images as JSON: about 80 kB of text, a tree of over 1 MiB */
    int idx[NB];
    for (int i = 0; i < NB; i++) idx[i] = i % NIMG;
    json_t *req = json_pack("{s:[{s:s, s:o, s:s, s:o}]}", "inputs", "name", "image", "shape", shape4(NB), "datatype", "UINT8",
                            "data", flat_images(idx, NB));
    char *js = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    ck_assert_uint_lt(strlen(js), 200000);
    http(&r, s.port, "POST", mpath("", "/infer"), "Content-Type: application/json\r\n", js, strlen(js));
    assert_v2_error(&r, 503, "memory", "JSON tree over the budget");
    char h[32];
    ck_assert_str_eq(header(&r, "Retry-After", h, sizeof h), "1");
    resp_free(&r);
    free(js);
    uint8_t *many = concat_images(idx, NB);   /* the same as binary data fits */
    hdr = json_pack("{s:[o], s:[{s:s}]}", "inputs", binary_image_input(NB), "outputs", "name", "log_prob");
    post_binary(&r, s.port, mpath("", "/infer"), hdr, many, NB * D);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    resp_free(&r);
    free(many);
    /* given back as the server finishes the request, which may be just after the client has the reply.
     * Read in the reply that saw it: a later /metrics request can still find the previous one's reply
     * charged (it is given back when that request ends, just after its client has it) */
    ck_assert_msg(http_metric_await(s.port, "\nrealnvp_memory_used_bytes ", 0, 0, 20000) == 0, "memory not given back");
    ck_assert_msg(http_metric(s.port, "\nrealnvp_rejected_total{reason=\"memory_budget\"} ") == 1, "budget refusal not counted");
    ck_assert_int_eq(stop_server(&s), 0);

    /* the API key: the health probes are open, everything else needs it */
    char keyfile[128];
    snprintf(keyfile, sizeof keyfile, "%s/key.txt", dir);
    FILE *f = fopen(keyfile, "w");
    fputs("v2-key\n", f);
    fclose(f);
    ck_assert_int_eq(start_server(&s, NULL, "--model " MODEL_FILE " --api-key-file %s", keyfile), 0);
    hdr = json_pack("{s:[o]}", "inputs", binary_image_input(1));
    post_binary(&r, s.port, mpath("", "/infer"), hdr, bin, D);
    assert_v2_error(&r, 401, "API key", "infer without the key");
    resp_free(&r);
    const char *closed[] = {"/v2", mpath("", ""), mpath("", "/ready")};
    for (int i = 0; i < 3; i++) {
        http(&r, s.port, "GET", closed[i], "Authorization: Bearer wrong\r\n", NULL, 0);
        assert_v2_error(&r, 401, NULL, closed[i]);
        resp_free(&r);
        http(&r, s.port, "GET", closed[i], "X-API-Key: v2-key\r\n", NULL, 0);
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
    }
    const char *open[] = {"/v2/health/live", "/v2/health/ready"};
    for (int i = 0; i < 2; i++) {
        http(&r, s.port, "GET", open[i], NULL, NULL, 0);
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
    }
    char *body = NULL;
    {
        json_t *hj = json_pack("{s:[o]}", "inputs", binary_image_input(1));
        char *hs = json_dumps(hj, JSON_COMPACT);
        json_decref(hj);
        size_t hl = strlen(hs);
        body = malloc(hl + D);
        memcpy(body, hs, hl);
        memcpy(body + hl, bin, D);
        char hdrs[160];
        snprintf(hdrs, sizeof hdrs, "Authorization: Bearer v2-key\r\nInference-Header-Content-Length: %zu\r\n", hl);
        http(&r, s.port, "POST", mpath("", "/infer"), hdrs, body, hl + D);
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
        free(hs);
    }
    free(body);
    ck_assert_int_eq(stop_server(&s), 0);
    free(bin);
}
END_TEST

typedef struct call {
    int port;
    const char *path;
    json_t *hdr;
    const uint8_t *bin;
    size_t len;
    resp r;
} call;

static void *call_thread(void *arg)
{
    call *c = arg;
    post_binary(&c->r, c->port, c->path, c->hdr, c->bin, c->len);
    return NULL;
}

START_TEST(test_queue_and_drain)
{
    NEED_SETUP();
    uint8_t *bin = concat_images((int[]){0, 1, 2, 3}, 4);
    /* a full queue: 503 + Retry-After, as {"error": ...} */
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model " MODEL_FILE " --queue-size 5 --max-delay-us 1000000"), 0);
    call a = {s.port, mpath("", "/infer"), json_pack("{s:[o], s:[{s:s}]}", "inputs", binary_image_input(4), "outputs", "name",
                                                    "log_prob"), bin, 4 * D, {0}};
    pthread_t t;
    pthread_create(&t, NULL, call_thread, &a);
    /* the second request is sent once the first is seen queued (its batch waits 1 s to fill) */
    ck_assert_msg(http_metric_await(s.port, "\nrealnvp_queue_depth ", 4, 5, 20000) >= 4, "the first request was not queued");
    resp r;
    json_t *hdr = json_pack("{s:[o], s:[{s:s}]}", "inputs", binary_image_input(2), "outputs", "name", "log_prob");
    post_binary(&r, s.port, mpath("", "/infer"), hdr, bin, 2 * D);
    assert_v2_error(&r, 503, "queue", "queue full");
    char h[32];
    ck_assert_str_eq(header(&r, "Retry-After", h, sizeof h), "1");
    resp_free(&r);
    pthread_join(t, NULL);
    ck_assert_int_eq(a.r.status, 200);
    resp_free(&a.r);
    ck_assert_int_eq(stop_server(&s), 0);

    /* the drain: queued work and new work on a kept-alive connection get 503 {"error": ...} */
    ck_assert_int_eq(start_server(&s, NULL, "--model " MODEL_FILE " --max-delay-us 10000000 --drain-timeout-s 2"), 0);
    call b = {s.port, mpath("", "/infer"), json_pack("{s:[o]}", "inputs", binary_image_input(3)), bin, 3 * D, {0}};
    pthread_create(&t, NULL, call_thread, &b);
    int ka = connect_port(s.port), kb = connect_port(s.port);   /* kept alive: no new connection is accepted later */
    http_on(ka, &r, "GET", "/v2/health/ready", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http_on(kb, &r, "GET", "/v2/health/live", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    /* b is queued (seen, not assumed after a sleep) before the signal; its batch would wait 10 s */
    ck_assert_msg(http_metric_await(s.port, "\nrealnvp_queue_depth ", 1, 1L << 30, 20000) >= 1, "the request was not queued");
    kill(s.pid, SIGTERM);
    /* ready turns false once the signal is handled (true until then, however long the machine takes;
     * b keeps the server draining meanwhile). While ready, kb stays open; the first 503 closes it. */
    int polls = 0;
    do {
        if (polls++) usleep(1000);
        resp_free(&r);
        http_on(kb, &r, "GET", "/v2/health/ready", NULL, NULL, 0);
    } while (r.status == 200 && polls < 10000);
    close(kb);
    ck_assert_int_eq(r.status, 503);
    json_t *j = body_json(&r);
    ck_assert(json_is_false(json_object_get(j, "ready")));
    json_decref(j);
    resp_free(&r);
    static const char tiny[] = "{\"inputs\": []}";
    http_on(ka, &r, "POST", mpath("", "/infer"), NULL, tiny, sizeof tiny - 1);
    assert_v2_error(&r, 503, "shutting down", "new work while draining");
    resp_free(&r);
    close(ka);
    pthread_join(t, NULL);
    assert_v2_error(&b.r, 503, "shutting down", "queued at SIGTERM");
    resp_free(&b.r);
    ck_assert_int_eq(wait_server(&s, 10000), 0);
    free(bin);
}
END_TEST

START_TEST(test_metrics)
{
    NEED_SETUP();
    resp r;
    http(&r, PORT, "GET", "/v2/health/live", NULL, NULL, 0);
    resp_free(&r);
    json_t *hdr = json_pack("{s:[o]}", "inputs", binary_image_input(1));
    post_binary(&r, PORT, mpath("", "/infer"), hdr, nhwc[0], D);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(&r, PORT, "POST", mpath("", "/infer"), NULL, "{", 1);
    ck_assert_int_eq(r.status, 400);
    resp_free(&r);
    http(&r, PORT, "GET", "/metrics", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    const char *needles[] = {"realnvp_requests_total{endpoint=\"v2_infer\",status=\"200\"} ",
                             "realnvp_requests_total{endpoint=\"v2_infer\",status=\"400\"} ",
                             "realnvp_requests_total{endpoint=\"v2_health_live\",status=\"200\"} ",
                             "realnvp_requests_total{endpoint=\"v2_server\",status=\"200\"} ",
                             "realnvp_requests_total{endpoint=\"v2_model_metadata\",status=\"200\"} ",
                             "realnvp_requests_total{endpoint=\"v2_model_ready\",status=\"200\"} ",
                             "realnvp_requests_total{endpoint=\"v2_health_ready\",status=\"200\"} ",
                             "realnvp_request_duration_seconds_count{endpoint=\"v2_infer\"} ",
                             "realnvp_requests_total{endpoint=\"log_prob\",status=\"200\"} ",
                             "realnvp_images_total{op=\"log_prob\"} ", "\nrealnvp_queue_depth 0", "realnvp_memory_used_bytes "};
    for (size_t i = 0; i < sizeof needles / sizeof *needles; i++)
        ck_assert_msg(strstr(r.body, needles[i]), "metrics lack %s", needles[i]);
    const char *p = strstr(r.body, "realnvp_requests_total{endpoint=\"v2_infer\",status=\"200\"} ");
    ck_assert_int_ge(atol(strchr(p, '}') + 2), 1);
    resp_free(&r);
}
END_TEST

/* ---- the MHD-free parts (oip.c) ---- */

START_TEST(test_routes)
{
    char m[SRV_OIP_NAMELEN], v[SRV_OIP_NAMELEN];
    ck_assert_int_eq(srv_oip_route("/v2", m, v), EP_V2_SERVER);
    ck_assert_int_eq(srv_oip_route("/v2?a=b", m, v), EP_V2_SERVER);
    ck_assert_int_eq(srv_oip_route("/v2/health/live", m, v), EP_V2_LIVE);
    ck_assert_int_eq(srv_oip_route("/v2/health/ready", m, v), EP_V2_READY);
    ck_assert_int_eq(srv_oip_route("/v2/models/a%2Db", m, v), EP_V2_MODEL);
    ck_assert_str_eq(m, "a-b");
    ck_assert_str_eq(v, "");
    ck_assert_int_eq(srv_oip_route("/v2/models/x/versions/7/infer?q", m, v), EP_V2_INFER);
    ck_assert_str_eq(m, "x");
    ck_assert_str_eq(v, "7");
    ck_assert_int_eq(srv_oip_route("/v2/models/x/versions/1/ready", m, v), EP_V2_MODEL_READY);
    ck_assert_int_eq(srv_oip_route("/v2/models/x/ready", NULL, NULL), EP_V2_MODEL_READY);
    ck_assert_int_eq(srv_oip_route("/v2/models/versions/infer", m, v), EP_V2_INFER);   /* a model named "versions" */
    ck_assert_str_eq(m, "versions");
    const char *other[] = {"/v2/", "/v2x", "/v3", "/v2/health", "/v2/models", "/v2/models/", "/v2/models//infer",
                           "/v2/models/x/versions", "/v2/models/x/versions//infer", "/v2/models/x/infer/", "/v2/models/%zz",
                           "/v2/models/a%00b", "/v2/models/x/versions/1/predict", "/", "", "/v2/a/b/c/d/e/f/g/h/i"};
    for (size_t i = 0; i < sizeof other / sizeof *other; i++)
        ck_assert_msg(srv_oip_route(other[i], m, v) == EP_OTHER, "%s", other[i]);
    char longp[600] = "/v2/models/";
    memset(longp + 11, 'a', 300);
    ck_assert_int_eq(srv_oip_route(longp, m, v), EP_OTHER);
    ck_assert(srv_oip_is_v2("/v2") && srv_oip_is_v2("/v2/x") && srv_oip_is_v2("/v2?x"));
    ck_assert(!srv_oip_is_v2("/v22") && !srv_oip_is_v2("/log_prob") && !srv_oip_is_v2(NULL));
    long long hl;
    char err[SRV_ERRLEN];
    ck_assert_int_eq(srv_oip_header_length(NULL, &hl, err, sizeof err), 0);
    ck_assert_int_eq(hl, -1);
    ck_assert_int_eq(srv_oip_header_length(" 123 ", &hl, err, sizeof err), 0);
    ck_assert_int_eq(hl, 123);
    const char *badh[] = {"", "-1", "1e3", "0x10", "12 3", "9999999999999999999999"};
    for (size_t i = 0; i < sizeof badh / sizeof *badh; i++)
        ck_assert_msg(srv_oip_header_length(badh[i], &hl, err, sizeof err) == -1, "%s", badh[i]);
}
END_TEST

START_TEST(test_parser_layout)
{
    /* a 2 x 3 x 2 (H x W x C) model: the (N, H, W, C) tensor becomes (N, C, H, W) pixels, and back */
    enum { h = 2, w = 3, c = 2, d = h * w * c };
    char js[8192], err[SRV_ERRLEN];
    size_t o = (size_t)sprintf(js, "{\"inputs\": [{\"name\": \"image\", \"shape\": [2, 2, 3, 2], \"datatype\": \"UINT8\", "
                                   "\"data\": [");
    for (int k = 0; k < 2 * d; k++) o += (size_t)sprintf(js + o, "%s%d", k ? "," : "", k);
    o += (size_t)sprintf(js + o, "]}], \"outputs\": [{\"name\": \"latents\"}, {\"name\": \"log_prob\", \"parameters\": "
                                 "{\"binary_data\": true}}], \"id\": \"x\\\"y\"}");
    srv_oip_req q;
    ck_assert_msg(srv_oip_parse(&q, js, o, -1, 0, c, h, w, 4, 8, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(q.n, 2);
    for (int n = 0; n < 2; n++)
        for (int ch = 0; ch < c; ch++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    ck_assert_int_eq(q.pixels[n * d + (ch * h + y) * w + x], n * d + (y * w + x) * c + ch);
    ck_assert_int_eq(q.nout, 2);
    ck_assert_int_eq(q.out[0], OIP_LATENTS);
    ck_assert_int_eq(q.binary[0], 0);
    ck_assert_int_eq(q.out[1], OIP_LOG_PROB);
    ck_assert_int_eq(q.binary[1], 1);
    ck_assert_str_eq(q.id, "x\"y");
    /* the encoder: flat JSON, binary little-endian after the header */
    double lp[2] = {-1.5, 2.25};
    float z[2 * d];
    for (int k = 0; k < 2 * d; k++) z[k] = (float)k / 4;
    srv_oip_results res = {.log_prob = lp, .z = z};
    srv_buf b = {0};
    size_t jl;
    srv_oip_encode(&b, &jl, &q, &res, "m", c, h, w);
    ck_assert_uint_gt(jl, 0);
    ck_assert_uint_eq(b.len, jl + 16);
    json_t *j = body_json_n(b.p, jl);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "x\"y");
    json_t *o0 = json_array_get(json_object_get(j, "outputs"), 0);
    ck_assert_int_eq(json_array_size(json_object_get(o0, "data")), 2 * d);
    ck_assert(json_number_value(json_array_get(json_object_get(o0, "data"), 5)) == 1.25);
    json_decref(j);
    double back;
    unsigned char le[8];
    memcpy(le, b.p + jl + 8, 8);
    uint64_t u = 0;
    for (int k = 7; k >= 0; k--) u = u << 8 | le[k];
    memcpy(&back, &u, 8);
    ck_assert(back == 2.25);
    free(b.p);
    /* the decoder's image output goes back to (N, H, W, C) */
    srv_oip_req dq = {.decoder = 1, .n = 2, .nout = 1, .out = {OIP_IMAGE}, .binary = {1}};
    srv_oip_results dres = {.pixels = q.pixels};
    memset(&b, 0, sizeof b);
    srv_oip_encode(&b, &jl, &dq, &dres, "m-decoder", c, h, w);
    ck_assert_uint_eq(b.len, jl + 2 * d);
    for (int k = 0; k < 2 * d; k++) ck_assert_int_eq((unsigned char)b.p[jl + k], k);
    free(b.p);
    srv_oip_req_clear(&q);
    /* failures allocate nothing and say why */
    const char *bad = "{\"inputs\": [{\"name\": \"image\", \"shape\": [1, 2, 3, 2], \"datatype\": \"UINT8\", \"data\": [1]}]}";
    ck_assert_int_eq(srv_oip_parse(&q, bad, strlen(bad), -1, 0, c, h, w, 4, 8, err, sizeof err), -1);
    ck_assert_ptr_null(q.pixels);
    ck_assert_msg(strstr(err, "12"), "%s", err);
    /* the precheck bounds the JSON: 5 images of 12 numbers for maxn 4 */
    o = (size_t)sprintf(js, "{\"inputs\": [{\"name\": \"image\", \"shape\": [5, 2, 3, 2], \"datatype\": \"UINT8\", \"data\": [");
    for (int k = 0; k < 5 * d + 1100; k++) o += (size_t)sprintf(js + o, "%s0", k ? "," : "");
    ck_assert_int_eq(srv_oip_precheck(js, o, -1, 0, c, h, w, 4, NULL, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "more values"), "%s", err);
}
END_TEST

static Suite *oip_suite(void)
{
    Suite *s = suite_create("oip");
    TCase *t = tcase_create("server");
    tcase_add_unchecked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 180);
    tcase_add_test(t, test_metadata_and_health);
    tcase_add_test(t, test_infer_json);
    tcase_add_test(t, test_spec_examples);
    tcase_add_test(t, test_infer_binary);
    tcase_add_test(t, test_decoder_round_trip);
    tcase_add_test(t, test_samples);
    tcase_add_test(t, test_errors);
    tcase_add_test(t, test_limits);
    tcase_add_test(t, test_queue_and_drain);
    tcase_add_test(t, test_metrics);
    suite_add_tcase(s, t);
    TCase *p = tcase_create("parser");
    tcase_add_test(p, test_routes);
    tcase_add_test(p, test_parser_layout);
    suite_add_tcase(s, p);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    rnvp_blas_select_core(argv);
    return run_suite(oip_suite());
}
