/* test_server.c: bin/realnvp-server over real HTTP on 127.0.0.1 (ephemeral ports, a tiny socket
 * client): every endpoint, every error status, batching, 64 concurrent clients, shutdown under
 * load, startup failures. Run from the repository root. Leaves out the parsers' fuzzing. */
#include "realnvp.h"
#include "../server/server.h"   /* the MHD-free parsers and helpers, from build/libserver.a */
#include "http_test.h"          /* dir, exe, server, start_server, stop_server, resp, http, body_json */

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CONFIG                                                                                  \
    "{\"height\":8,\"width\":8,\"channels\":1,\"num_scales\":2,\"res_blocks\":1,\"features\":[4,4]," \
    "\"alpha\":0.05,\"bn_eps\":1e-5,\"flow_batchnorm\":true,\"flow_bn_eps\":1e-4}"
#define D 64
#define NIMG 8

static char model_path[128];
static rnvp_model *model;
static uint8_t imgs[NIMG][D];       /* (NIMG, 1, 8, 8) test images */
static uint8_t *pngs[NIMG];         /* each as a PNG */
static size_t png_len[NIMG];
static int setup_ok;

static server main_srv;             /* started by the fixture with default limits */

/* ---- helpers ---- */

static char *path_in(const char *name)
{
    static char buf[8][200];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

/* a connection from another loopback address (127.0.0.0/8): another client to the server's queue */
static int connect_from(int port, const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in b = {.sin_family = AF_INET};
    inet_pton(AF_INET, src, &b.sin_addr);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&b, sizeof b) || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    struct timeval tv = {60, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void post_png(resp *r, int port, const char *path, int i)
{
    http(r, port, "POST", path, "Content-Type: image/png\r\n", pngs[i], png_len[i]);
}

/* a multipart/form-data body of the given test images (caller frees) */
static char *multipart(const int *idx, int n, size_t *len, const char *boundary)
{
    return multipart_pngs(pngs, png_len, idx, n, len, boundary);
}

/* status and a JSON error body {"error": {"code": code, "message": non-empty}} */
static void assert_error(const resp *r, int status, const char *code, const char *what)
{
    ck_assert_msg(r->status == status, "%s: status %d, want %d: %.300s", what, r->status, status,
                  r->body ? r->body : "");
    json_t *j = body_json(r);
    json_t *e = json_object_get(j, "error");
    const char *c = json_string_value(json_object_get(e, "code"));
    const char *m = json_string_value(json_object_get(e, "message"));
    ck_assert_msg(c && m && *m, "%s: error body lacks code or message: %s", what, r->body);
    ck_assert_msg(!strcmp(c, code), "%s: code %s, want %s (%s)", what, c, code, m);
    json_decref(j);
}

/* library values computed alone (batch of one) */
static void lib_log_prob(int i, double *lp, double *bpd)
{
    rnvp_ctx *c;
    rnvp_error e;
    ck_assert(rnvp_ctx_create(&c, model, 1, &e) == RNVP_OK);
    ck_assert(rnvp_log_prob(c, lp, bpd, imgs[i], NULL, 1, &e) == RNVP_OK);
    rnvp_ctx_free(c);
}

static void check_log_prob_result(json_t *res, int i, const char *name)
{
    double lp, bpd;
    lib_log_prob(i, &lp, &bpd);
    double got = json_number_value(json_object_get(res, "log_prob"));
    double gotb = json_number_value(json_object_get(res, "bits_per_dim"));
    ck_assert_msg(fabs(got - lp) <= 1e-5 * fmax(1, fabs(lp)), "image %d: log_prob %.9g, alone %.9g", i, got, lp);
    ck_assert_msg(fabs(gotb - bpd) <= 1e-5 * fmax(1, fabs(bpd)), "image %d: bits/dim %.9g, alone %.9g", i, gotb, bpd);
    if (name) ck_assert_str_eq(json_string_value(json_object_get(res, "name")), name);
}

static long metric(int port, const char *line_prefix)
{
    resp r;
    http(&r, port, "GET", "/metrics", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    const char *p = strstr(r.body, line_prefix);
    long v = p ? atol(p + strlen(line_prefix)) : -1;
    resp_free(&r);
    return v;
}

/* how long a test waits for a state it must reach (http_metric_await): only a failing test waits that long */
#define AWAIT_MS 20000

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* reads one response on fd (after its request was sent by hand) */
static void read_resp(int fd, resp *r)
{
    http_on(fd, r, "GET", "", NULL, NULL, (size_t)-1);   /* (size_t)-1: send nothing, only read */
}

/* ---- fixture ---- */

static void setup(void)
{
    if (http_test_begin("test_server")) return;
    snprintf(model_path, sizeof model_path, "%s/small.safetensors", dir);
    rnvp_config cfg;
    rnvp_error e;
    if (rnvp_config_parse(&cfg, CONFIG, &e) || rnvp_model_init(&model, &cfg, 1, &e) ||
        rnvp_model_save(model, model_path, NULL, &e)) {
        fprintf(stderr, "test_server: %s\n", e.msg);
        return;
    }
    rnvp_ctx *c;
    if (rnvp_ctx_create(&c, model, NIMG, &e) || rnvp_sample(c, &imgs[0][0], NULL, NIMG, 1.0, 5, &e)) return;
    rnvp_ctx_free(c);
    for (int i = 0; i < NIMG; i++)
        if (rnvp_png_encode_grid(&pngs[i], &png_len[i], imgs[i], 1, 1, 8, 8, 1, -1, &e)) return;
    if (start_server(&main_srv, NULL, "--model %s --max-delay-us 5000", model_path)) {
        fprintf(stderr, "test_server: the server did not start\n");
        return;
    }
    setup_ok = 1;
}

static void teardown(void)
{
    stop_server(&main_srv);
    for (int i = 0; i < NIMG; i++) free(pngs[i]);
    rnvp_model_free(model);
    http_test_end();
}

#define NEED_SETUP() ck_assert_msg(setup_ok, "setup failed: is %s built? (run from the repository root)", exe)
#define PORT main_srv.port

/* ---- tests: success paths ---- */

START_TEST(test_health_info_metrics)
{
    NEED_SETUP();
    resp r;
    http(&r, PORT, "GET", "/healthz", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(&r, PORT, "GET", "/readyz", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(&r, PORT, "GET", "/info", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    json_t *j = body_json(&r);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "dim")), D);
    ck_assert_str_eq(json_string_value(json_object_get(j, "model")), "small");
    json_t *lay = json_object_get(j, "layout");
    ck_assert_int_eq(json_array_size(lay), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lay, 1), "offset")), 32);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "config"), "num_scales")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "limits"), "max_batch")), 64);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "metadata"), "format")), "realnvp");
    json_decref(j);
    resp_free(&r);
    post_png(&r, PORT, "/log_prob", 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(&r, PORT, "GET", "/metrics", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    char ct[128];
    ck_assert_ptr_nonnull(header(&r, "Content-Type", ct, sizeof ct));
    ck_assert_msg(!strncmp(ct, "text/plain; version=0.0.4", 25), "%s", ct);
    const char *needles[] = {"realnvp_requests_total{endpoint=\"log_prob\",status=\"200\"} ", "realnvp_images_total{op=\"log_prob\"} ",
                             "realnvp_queue_depth 0", "realnvp_batch_size_bucket{le=\"64\"}", "realnvp_queue_wait_seconds_count",
                             "realnvp_compute_seconds_sum", "realnvp_ready 1", "# TYPE realnvp_batch_size histogram"};
    for (size_t i = 0; i < sizeof needles / sizeof *needles; i++)
        ck_assert_msg(strstr(r.body, needles[i]), "metrics lack %s:\n%s", needles[i], r.body);
    resp_free(&r);
    ck_assert_int_ge(metric(PORT, "realnvp_images_total{op=\"log_prob\"} "), 1);
}
END_TEST

START_TEST(test_log_prob)
{
    NEED_SETUP();
    resp r;
    post_png(&r, PORT, "/log_prob", 3);
    ck_assert_int_eq(r.status, 200);
    json_t *j = body_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "model")), "small");
    ck_assert_int_eq(json_array_size(json_object_get(j, "results")), 1);
    check_log_prob_result(json_array_get(json_object_get(j, "results"), 0), 3, "image");
    json_decref(j);
    resp_free(&r);

    int idx[5] = {0, 1, 2, 6, 7};
    size_t len;
    char *body = multipart(idx, 5, &len, "XyZzy-boundary");
    http(&r, PORT, "POST", "/log_prob", "Content-Type: multipart/form-data; boundary=XyZzy-boundary\r\n", body, len);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    j = body_json(&r);
    json_t *res = json_object_get(j, "results");
    ck_assert_int_eq(json_array_size(res), 5);
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "img%d.png", idx[i]);
        check_log_prob_result(json_array_get(res, (size_t)i), idx[i], name);
    }
    json_decref(j);
    resp_free(&r);

    /* K seeded dequantization draws: reproducible, near the u = 0.5 value, not equal to it */
    http(&r, PORT, "POST", "/log_prob?samples=8&seed=11", "Content-Type: multipart/form-data; boundary=XyZzy-boundary\r\n",
         body, len);
    ck_assert_int_eq(r.status, 200);
    resp r2;
    http(&r2, PORT, "POST", "/log_prob?samples=8&seed=11", "Content-Type: multipart/form-data; boundary=XyZzy-boundary\r\n",
         body, len);
    ck_assert_int_eq(r2.status, 200);
    ck_assert_str_eq(r.body, r2.body);
    j = body_json(&r);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "samples")), 8);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "seed")), 11);
    double lp, bpd;
    lib_log_prob(0, &lp, &bpd);
    double got = json_number_value(json_object_get(json_array_get(json_object_get(j, "results"), 0), "log_prob"));
    ck_assert_msg(got != lp && fabs(got - lp) < 0.05 * fabs(lp), "dequantized %g vs u=0.5 %g", got, lp);
    json_decref(j);
    resp_free(&r);
    resp_free(&r2);
    /* a different seed gives a different estimate */
    http(&r, PORT, "POST", "/log_prob?samples=8&seed=12", "Content-Type: multipart/form-data; boundary=XyZzy-boundary\r\n",
         body, len);
    ck_assert_int_eq(r.status, 200);
    http(&r2, PORT, "POST", "/log_prob?samples=8&seed=11", "Content-Type: multipart/form-data; boundary=XyZzy-boundary\r\n",
         body, len);
    ck_assert_str_ne(r.body, r2.body);
    resp_free(&r);
    resp_free(&r2);
    free(body);
}
END_TEST

START_TEST(test_png_conversion)
{
    NEED_SETUP();
    /* an RGB PNG for a grey model is converted (BT.601), as documented */
    uint8_t rgb[3 * D];
    for (int i = 0; i < 3 * D; i++) rgb[i] = imgs[4][i % D];   /* R = G = B = the grey image */
    uint8_t *png;
    size_t len;
    rnvp_error e;
    ck_assert(rnvp_png_encode_grid(&png, &len, rgb, 1, 3, 8, 8, 1, -1, &e) == RNVP_OK);
    resp r;
    http(&r, PORT, "POST", "/log_prob", "Content-Type: image/png\r\n", png, len);
    free(png);
    ck_assert_int_eq(r.status, 200);
    json_t *j = body_json(&r);
    check_log_prob_result(json_array_get(json_object_get(j, "results"), 0), 4, "image");
    json_decref(j);
    resp_free(&r);
}
END_TEST

/* the (1, 8, 8) pixels of a base64 PNG from a JSON reply (decoded with a tiny table) */
static void b64_png_pixels(uint8_t *px, const char *b64)
{
    ck_assert_ptr_nonnull(b64);
    size_t n = strlen(b64), o = 0;
    uint8_t *bin = malloc(n);
    unsigned acc = 0;
    int bits = 0;
    for (size_t k = 0; k < n && b64[k] != '='; k++) {
        const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const char *p = strchr(tab, b64[k]);
        ck_assert_ptr_nonnull(p);
        acc = acc << 6 | (unsigned)(p - tab);
        bits += 6;
        if (bits >= 8) bin[o++] = (uint8_t)(acc >> (bits -= 8));
    }
    rnvp_error e;
    ck_assert_msg(rnvp_png_decode(px, bin, o, 1, 8, 8, &e) == RNVP_OK, "%s", e.msg);
    free(bin);
}

START_TEST(test_encode_decode)
{
    NEED_SETUP();
    int idx[3] = {1, 2, 5};
    size_t len;
    char *body = multipart(idx, 3, &len, "bb");
    resp r;
    http(&r, PORT, "POST", "/encode", "Content-Type: multipart/form-data; boundary=bb\r\n", body, len);
    free(body);
    ck_assert_int_eq(r.status, 200);
    json_t *j = body_json(&r);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "dim")), D);
    ck_assert_int_eq(json_array_size(json_object_get(j, "layout")), 2);
    json_t *lat = json_object_get(j, "latents");
    ck_assert_int_eq(json_array_size(lat), 3);
    rnvp_ctx *c;
    rnvp_error e;
    ck_assert(rnvp_ctx_create(&c, model, 1, &e) == RNVP_OK);
    for (int i = 0; i < 3; i++) {
        float z[D];
        double lp;
        ck_assert(rnvp_encode(c, z, &lp, imgs[idx[i]], NULL, 1, &e) == RNVP_OK);
        json_t *row = json_array_get(lat, (size_t)i);
        ck_assert_int_eq(json_array_size(row), D);
        for (int k = 0; k < D; k++) {
            double v = json_number_value(json_array_get(row, (size_t)k));
            ck_assert_msg(fabs(v - z[k]) <= 1e-5 * fmax(1, fabs(z[k])), "z[%d][%d] %g vs %g", i, k, v, z[k]);
        }
        double got = json_number_value(json_object_get(json_array_get(json_object_get(j, "results"), (size_t)i), "log_prob"));
        ck_assert(fabs(got - lp) <= 1e-5 * fabs(lp));
    }
    rnvp_ctx_free(c);
    json_decref(j);

    /* the encode reply posted as is to /decode gives back the pixels: a PNG grid ... */
    resp d;
    http(&d, PORT, "POST", "/decode?cols=3", "Content-Type: application/json\r\n", r.body, r.len);
    ck_assert_msg(d.status == 200, "%d %s", d.status, d.body);
    char ct[64];
    ck_assert_str_eq(header(&d, "Content-Type", ct, sizeof ct), "image/png");
    int pc, ph, pw;
    ck_assert(rnvp_png_info(d.body, d.len, &pc, &ph, &pw, &e) == RNVP_OK);
    ck_assert_int_eq(pw, 3 * 8 + 2 * 2);
    ck_assert_int_eq(ph, 8);
    resp_free(&d);
    /* ... or base64 PNGs, each equal to its original */
    http(&d, PORT, "POST", "/decode?format=json", "Content-Type: application/json\r\n", r.body, r.len);
    ck_assert_int_eq(d.status, 200);
    j = body_json(&d);
    json_t *ims = json_object_get(j, "images");
    ck_assert_int_eq(json_array_size(ims), 3);
    for (int i = 0; i < 3; i++) {
        uint8_t px[D];
        b64_png_pixels(px, json_string_value(json_array_get(ims, (size_t)i)));
        ck_assert_msg(!memcmp(px, imgs[idx[i]], D), "decode(encode(x)) != x for image %d", i);
    }
    json_decref(j);
    resp_free(&d);
    resp_free(&r);
}
END_TEST

/* /log_prob's complexity correction, /interpolate (ends reproduce the inputs, points equal the
 * library's), the demo page at / */
START_TEST(test_ood_interpolate_page)
{
    NEED_SETUP();
    rnvp_error e;
    int idx[2] = {1, 5};
    size_t len;
    char *body = multipart(idx, 2, &len, "qq");
    const char *mp = "Content-Type: multipart/form-data; boundary=qq\r\n";
    resp r;
    http(&r, PORT, "POST", "/log_prob", mp, body, len);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    json_t *j = body_json(&r);
    for (int i = 0; i < 2; i++) {
        json_t *res = json_array_get(json_object_get(j, "results"), (size_t)i);
        double png_bpd, bpd = json_number_value(json_object_get(res, "bits_per_dim"));
        ck_assert(rnvp_png_bits_per_dim(&png_bpd, imgs[idx[i]], 1, 8, 8, &e) == RNVP_OK);
        ck_assert(png_bpd > 0);
        ck_assert_double_eq_tol(json_number_value(json_object_get(res, "png_bits_per_dim")), png_bpd, 1e-12);
        ck_assert_double_eq_tol(json_number_value(json_object_get(res, "ood_score")), bpd - png_bpd, 1e-9);
    }
    json_decref(j);
    resp_free(&r);

    /* the library's interpolation between the two codes, decoded alone */
    enum { STEPS = 5 };
    rnvp_ctx *c;
    ck_assert(rnvp_ctx_create(&c, model, STEPS, &e) == RNVP_OK);
    float z2[2 * D], zi[STEPS * D];
    double lp[2];
    uint8_t want[STEPS][D];
    for (int sph = 0; sph < 2; sph++) {
        for (int i = 0; i < 2; i++) ck_assert(rnvp_encode(c, z2 + i * D, &lp[i], imgs[idx[i]], NULL, 1, &e) == RNVP_OK);
        ck_assert(rnvp_interpolate_latents(zi, z2, z2 + D, D, STEPS, sph, &e) == RNVP_OK);
        ck_assert(rnvp_decode(c, &want[0][0], zi, STEPS, &e) == RNVP_OK);
        char path[80];
        snprintf(path, sizeof path, "/interpolate?steps=%d&mode=%s&format=json", STEPS, sph ? "spherical" : "linear");
        http(&r, PORT, "POST", path, mp, body, len);
        ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
        j = body_json(&r);
        ck_assert_int_eq(json_integer_value(json_object_get(j, "steps")), STEPS);
        ck_assert_str_eq(json_string_value(json_object_get(j, "mode")), sph ? "spherical" : "linear");
        json_t *ims = json_object_get(j, "images");
        ck_assert_int_eq(json_array_size(ims), STEPS);
        for (int k = 0; k < STEPS; k++) {
            uint8_t px[D];
            b64_png_pixels(px, json_string_value(json_array_get(ims, (size_t)k)));
            if (k == 0 || k == STEPS - 1)   /* the flow is exact: the ends are the inputs */
                ck_assert_msg(!memcmp(px, imgs[idx[k ? 1 : 0]], D), "end %d of the strip differs from its input", k);
            for (int p = 0; p < D; p++)   /* batched vs alone: a pixel may round the other way */
                ck_assert_msg(abs(px[p] - want[k][p]) <= 1, "step %d pixel %d: %d vs %d", k, p, px[p], want[k][p]);
        }
        json_decref(j);
        resp_free(&r);
    }
    rnvp_ctx_free(c);

    /* the default reply: one PNG strip of `steps` tiles with 2-pixel borders */
    http(&r, PORT, "POST", "/interpolate?steps=6", mp, body, len);
    ck_assert_int_eq(r.status, 200);
    int pc, ph, pw;
    ck_assert(rnvp_png_info(r.body, r.len, &pc, &ph, &pw, &e) == RNVP_OK);
    ck_assert_int_eq(pw, 6 * 8 + 5 * 2);
    ck_assert_int_eq(ph, 8);
    resp_free(&r);
    /* errors */
    const char *bad[] = {"/interpolate?steps=1", "/interpolate?steps=65", "/interpolate?mode=cubic", "/interpolate?n=3"};
    for (int i = 0; i < 4; i++) {
        http(&r, PORT, "POST", bad[i], mp, body, len);
        assert_error(&r, 400, "bad_parameter", bad[i]);
        resp_free(&r);
    }
    free(body);
    int three[3] = {0, 1, 2};
    body = multipart(three, 3, &len, "qq");
    http(&r, PORT, "POST", "/interpolate", mp, body, len);
    assert_error(&r, 400, "bad_multipart", "three images");
    resp_free(&r);
    free(body);
    http(&r, PORT, "GET", "/interpolate", NULL, NULL, 0);
    assert_error(&r, 405, "method_not_allowed", "GET /interpolate");
    resp_free(&r);

    /* the demo page */
    http(&r, PORT, "GET", "/", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    char ct[64];
    ck_assert_str_eq(header(&r, "Content-Type", ct, sizeof ct), "text/html; charset=utf-8");
    ck_assert_ptr_nonnull(strstr(r.body, "<title>realnvp</title>"));
    ck_assert_ptr_nonnull(strstr(r.body, "/interpolate"));
    resp_free(&r);
    http(&r, PORT, "POST", "/", "Content-Type: image/png\r\n", pngs[0], png_len[0]);
    assert_error(&r, 405, "method_not_allowed", "POST /");
    resp_free(&r);
}
END_TEST

START_TEST(test_sample)
{
    NEED_SETUP();
    resp a, b;
    http(&a, PORT, "GET", "/sample?n=6&temp=0.7&seed=42&cols=3", NULL, NULL, 0);
    http(&b, PORT, "GET", "/sample?n=6&temp=0.7&seed=42&cols=3", NULL, NULL, 0);
    ck_assert_int_eq(a.status, 200);
    ck_assert(a.len == b.len && !memcmp(a.body, b.body, a.len));
    char h[64];
    ck_assert_str_eq(header(&a, "X-Realnvp-Seed", h, sizeof h), "42");
    int pc, ph, pw;
    rnvp_error e;
    ck_assert(rnvp_png_info(a.body, a.len, &pc, &ph, &pw, &e) == RNVP_OK);
    ck_assert_int_eq(pw, 3 * 8 + 4);
    ck_assert_int_eq(ph, 2 * 8 + 2);
    resp_free(&a);
    resp_free(&b);

    /* JSON with latents: the latents are the library's for that seed, the images their decoding */
    http(&a, PORT, "GET", "/sample?n=3&temp=0.7&seed=42&format=json&latents=1", NULL, NULL, 0);
    ck_assert_int_eq(a.status, 200);
    json_t *j = body_json(&a);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "seed")), 42);
    ck_assert_int_eq(json_array_size(json_object_get(j, "images")), 3);
    float z[3 * D];
    rnvp_sample_latents(z, 3, D, 0.7, 42);
    json_t *lat = json_object_get(j, "latents");
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < D; k++)
            ck_assert(fabs(json_number_value(json_array_get(json_array_get(lat, (size_t)i), (size_t)k)) - z[i * D + k]) <=
                      1e-6 * fmax(1, fabs(z[i * D + k])));
    json_decref(j);
    resp_free(&a);

    /* without a seed: a random one, returned, and reproducible with it */
    http(&a, PORT, "GET", "/sample?n=2", NULL, NULL, 0);
    ck_assert_int_eq(a.status, 200);
    ck_assert_ptr_nonnull(header(&a, "X-Realnvp-Seed", h, sizeof h));
    char path[96];
    snprintf(path, sizeof path, "/sample?n=2&seed=%s", h);
    http(&b, PORT, "GET", path, NULL, NULL, 0);
    ck_assert(a.len == b.len && !memcmp(a.body, b.body, a.len));
    resp_free(&a);
    resp_free(&b);
    /* HEAD works like GET without a body */
    http(&a, PORT, "HEAD", "/healthz", NULL, NULL, 0);
    ck_assert_int_eq(a.status, 200);
    resp_free(&a);
}
END_TEST

/* ---- tests: errors ---- */

START_TEST(test_errors)
{
    NEED_SETUP();
    resp r;
    struct {
        const char *method, *path, *headers, *body;
        int status;
        const char *code;
    } cases[] = {
        {"GET", "/nope", NULL, NULL, 404, "not_found"},
        {"GET", "/log_prob", NULL, NULL, 405, "method_not_allowed"},
        {"POST", "/sample", "Content-Type: image/png\r\n", "x", 405, "method_not_allowed"},
        {"DELETE", "/info", NULL, NULL, 405, "method_not_allowed"},
        {"GET", "/sample?n=0", NULL, NULL, 400, "bad_parameter"},
        {"GET", "/sample?temp=-1", NULL, NULL, 400, "bad_parameter"},
        {"GET", "/sample?n=257", NULL, NULL, 400, "bad_parameter"},
        {"GET", "/sample?n=abc", NULL, NULL, 400, "bad_parameter"},
        {"GET", "/sample?temp=nan", NULL, NULL, 400, "bad_parameter"},
        {"GET", "/sample?n=2&n=3", NULL, NULL, 400, "bad_parameter"},
        {"GET", "/sample?bogus=1", NULL, NULL, 400, "bad_parameter"},
        {"GET", "/sample?format=gif", NULL, NULL, 400, "bad_parameter"},
        {"GET", "/sample?latents=1", NULL, NULL, 400, "bad_parameter"},
        {"GET", "/sample?seed=%zz", NULL, NULL, 400, "bad_parameter"},
        {"POST", "/log_prob?seed=3", "Content-Type: image/png\r\n", "x", 400, "bad_parameter"},
        {"POST", "/log_prob?samples=0", "Content-Type: image/png\r\n", "x", 400, "bad_parameter"},
        {"POST", "/log_prob", "Content-Type: image/png\r\n", "not a png at all", 400, "bad_png"},
        {"POST", "/log_prob", "Content-Type: image/png\r\n", "", 400, "empty_body"},
        {"POST", "/log_prob", "Content-Type: text/plain\r\n", "hello", 415, "unsupported_media_type"},
        {"POST", "/log_prob", NULL, "hello", 415, "unsupported_media_type"},
        {"POST", "/encode", "Content-Type: application/json\r\n", "{}", 415, "unsupported_media_type"},
        {"POST", "/decode", "Content-Type: image/png\r\n", "{}", 415, "unsupported_media_type"},
        {"POST", "/log_prob", "Content-Type: multipart/form-data\r\n", "x", 400, "bad_multipart"},
        {"POST", "/log_prob", "Content-Type: multipart/form-data; boundary=zz\r\n", "no boundary here", 400, "bad_multipart"},
        {"POST", "/log_prob", "Content-Type: multipart/form-data; boundary=zz\r\n", "--zz\r\n\r\nabc", 400, "bad_multipart"},
        {"POST", "/log_prob", "Content-Type: multipart/form-data; boundary=zz\r\n", "--zz--\r\n", 400, "bad_multipart"},
        {"POST", "/log_prob", "Content-Type: multipart/form-data; boundary=zz\r\n",
         "--zz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nnot png\r\n--zz--\r\n", 400, "bad_png"},
        {"POST", "/decode", "Content-Type: application/json\r\n", "{\"latents\": [[1, 2", 400, "bad_latents"},
        {"POST", "/decode", "Content-Type: application/json\r\n", "[1, 2]", 400, "bad_latents"},
        {"POST", "/decode", "Content-Type: application/json\r\n", "{\"z\": []}", 400, "bad_latents"},
        {"POST", "/decode", "Content-Type: application/json\r\n", "{\"latents\": [[1, 2, 3]]}", 400, "bad_latents"},
        {"POST", "/decode", "Content-Type: application/json\r\n", "{\"latents\": [NaN]}", 400, "bad_latents"},
        {"POST", "/decode", "Content-Type: application/json\r\n", "{\"latents\": [[Infinity]]}", 400, "bad_latents"},
        {"POST", "/decode", "Content-Type: application/json\r\n", "{\"latents\": [\"a\"]}", 400, "bad_latents"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *b = cases[i].body;
        http(&r, PORT, cases[i].method, cases[i].path, cases[i].headers, b, b ? strlen(b) : 0);
        char what[160];
        snprintf(what, sizeof what, "%s %s [%s]", cases[i].method, cases[i].path, b ? b : "");
        assert_error(&r, cases[i].status, cases[i].code, what);
        char h[64];
        if (cases[i].status == 405) ck_assert_ptr_nonnull(header(&r, "Allow", h, sizeof h));
        resp_free(&r);
    }
    /* a GET error keeps the connection open for the next request */
    int kfd = connect_port(PORT);
    http_on(kfd, &r, "GET", "/sample?n=0", NULL, NULL, 0);
    assert_error(&r, 400, "bad_parameter", "keep-alive n=0");
    resp_free(&r);
    http_on(kfd, &r, "GET", "/nope", NULL, NULL, 0);
    assert_error(&r, 404, "not_found", "keep-alive 404");
    resp_free(&r);
    http_on(kfd, &r, "GET", "/healthz", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    close(kfd);
    /* latents: a value too large for float32, a wrong-length row after good ones, a layout that differs */
    char big[8192];
    int o = sprintf(big, "{\"latents\": [[");
    for (int k = 0; k < D; k++) o += sprintf(big + o, "%s%s", k ? "," : "", k == 7 ? "1e39" : "0.5");
    sprintf(big + o, "]]}");
    http(&r, PORT, "POST", "/decode", "Content-Type: application/json\r\n", big, strlen(big));
    assert_error(&r, 400, "bad_latents", "1e39");
    ck_assert_msg(strstr(r.body, "latents[0][7]"), "%s", r.body);
    resp_free(&r);
    o = sprintf(big, "{\"layout\": [{\"offset\": 0, \"channels\": 4, \"height\": 4, \"width\": 4}], \"latents\": [");
    for (int k = 0; k < D; k++) o += sprintf(big + o, "%s0", k ? "," : "");
    sprintf(big + o, "]}");
    http(&r, PORT, "POST", "/decode", "Content-Type: application/json\r\n", big, strlen(big));
    assert_error(&r, 400, "bad_latents", "layout");
    resp_free(&r);
    /* the same single vector without the layout decodes */
    char *lat = strstr(big, "\"latents\"");
    char ok[8192];
    snprintf(ok, sizeof ok, "{%s", lat);
    http(&r, PORT, "POST", "/decode", "Content-Type: application/json\r\n", ok, strlen(ok));
    ck_assert_msg(r.status == 200, "%s", r.body);
    resp_free(&r);

    /* 422: an image of another size; the message states the expected W x H x C */
    uint8_t px[10 * 8];
    memset(px, 100, sizeof px);
    uint8_t *png;
    size_t len;
    rnvp_error e;
    ck_assert(rnvp_png_encode_grid(&png, &len, px, 1, 1, 8, 10, 1, -1, &e) == RNVP_OK);
    http(&r, PORT, "POST", "/encode", "Content-Type: image/png\r\n", png, len);
    free(png);
    assert_error(&r, 422, "wrong_image_size", "10x8 image");
    ck_assert_msg(strstr(r.body, "8x8x1"), "422 message lacks the expected size: %s", r.body);
    resp_free(&r);

    /* 413 from the declared length, answered before the body is sent */
    int fd = connect_port(PORT);
    const char *hdr = "POST /log_prob HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 999999999\r\n\r\n";
    ck_assert_int_eq(write_all(fd, hdr, strlen(hdr)), 0);
    char buf[2048];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    ck_assert_int_gt(n, 0);
    buf[n] = 0;
    ck_assert_msg(!strncmp(buf, "HTTP/1.1 413", 12), "%s", buf);
    ck_assert_ptr_nonnull(strstr(buf, "body_too_large"));
    close(fd);

    /* the server is still fine */
    post_png(&r, PORT, "/log_prob", 1);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

START_TEST(test_limits_small)
{
    NEED_SETUP();
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --max-body-bytes 1000 --max-samples 3", model_path), 0);
    resp r;
    char *big = malloc(5000);
    memset(big, 'x', 5000);
    http(&r, s.port, "POST", "/log_prob", "Content-Type: image/png\r\n", big, 5000);
    assert_error(&r, 413, "body_too_large", "5000 bytes");
    resp_free(&r);
    /* chunked bodies over the limit get 413 at their end */
    int fd = connect_port(s.port);
    const char *hdr = "POST /log_prob HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n";
    write_all(fd, hdr, strlen(hdr));
    for (int i = 0; i < 3; i++) {
        write_all(fd, "3e8\r\n", 5);
        write_all(fd, big, 1000);
        write_all(fd, "\r\n", 2);
    }
    write_all(fd, "0\r\n\r\n", 5);
    char buf[2048];
    ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
    ck_assert_int_gt(n, 0);
    buf[n] = 0;
    ck_assert_msg(!strncmp(buf, "HTTP/1.1 413", 12), "%s", buf);
    close(fd);
    free(big);
    http(&r, s.port, "GET", "/sample?n=4", NULL, NULL, 0);
    assert_error(&r, 400, "bad_parameter", "n over --max-samples");
    resp_free(&r);
    int idx[4] = {0, 1, 2, 3};
    size_t len;
    char *body = multipart(idx, 4, &len, "q");
    ck_assert_int_lt(len, 1000);
    http(&r, s.port, "POST", "/log_prob", "Content-Type: multipart/form-data; boundary=q\r\n", body, len);
    assert_error(&r, 400, "bad_multipart", "4 parts over --max-samples 3");
    free(body);
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);

    /* slow or vanished clients: an idle connection is closed after --conn-timeout-s, and one
     * address cannot open more than --per-ip-limit connections */
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --per-ip-limit 2 --conn-timeout-s 1", model_path), 0);
    int c1 = connect_port(s.port), c2 = connect_port(s.port);
    ck_assert(c1 >= 0 && c2 >= 0);
    for (int k = 0; k < 2; k++) {   /* both accepted by the server (answered), not only by the kernel */
        http_on(k ? c2 : c1, &r, "GET", "/healthz", NULL, NULL, 0);
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
    }
    int c3 = connect_port(s.port);   /* the kernel accepts it; the server closes it at once */
    ck_assert_int_ge(c3, 0);
    struct timeval tv = {5, 0};
    setsockopt(c3, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char b1[64];
    ssize_t got = recv(c3, b1, sizeof b1, 0);
    ck_assert_msg(got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK),
                  "a connection over --per-ip-limit stayed open (recv %zd)", got);
    close(c3);
    /* the idle ones are closed by the timeout (well before the 5 s receive timeout) */
    setsockopt(c1, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    double t0 = (double)time(NULL);
    got = recv(c1, b1, sizeof b1, 0);
    ck_assert_msg(got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK), "idle connection still open");
    ck_assert_msg((double)time(NULL) - t0 <= 4, "idle connection not closed by --conn-timeout-s 1");
    close(c1);
    close(c2);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* request bodies are read into one buffer of the declared Content-Length, or grown from 4 KiB
 * when chunked: the same 256-image upload (about 93 KB, past 64 KiB) sent each way, the chunked one
 * in uneven pieces, gives the same results */
START_TEST(test_body_sizes)
{
    NEED_SETUP();
    char pad[121];
    memset(pad, 'p', 120);
    pad[120] = 0;
    size_t cap0 = 256 * 512 + 64, len = 0;
    char *body = malloc(cap0);
    for (int i = 0; i < 256; i++) {   /* a header line of padding in each part */
        len += (size_t)snprintf(body + len, cap0 - len,
                                "--szB\r\nContent-Disposition: form-data; name=\"f%d\"; filename=\"img%d.png\"\r\n"
                                "X-Padding: %s\r\nContent-Type: image/png\r\n\r\n", i, i % NIMG, pad);
        memcpy(body + len, pngs[i % NIMG], png_len[i % NIMG]);
        len += png_len[i % NIMG];
        len += (size_t)snprintf(body + len, cap0 - len, "\r\n");
    }
    len += (size_t)snprintf(body + len, cap0 - len, "--szB--\r\n");
    ck_assert_uint_gt(len, 65536);
    resp a;
    http(&a, PORT, "POST", "/log_prob", "Content-Type: multipart/form-data; boundary=szB\r\n", body, len);
    ck_assert_int_eq(a.status, 200);

    int fd = connect_port(PORT);
    ck_assert_int_ge(fd, 0);
    const char *hdr = "POST /log_prob HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      "Content-Type: multipart/form-data; boundary=szB\r\nTransfer-Encoding: chunked\r\n\r\n";
    ck_assert_int_eq(write_all(fd, hdr, strlen(hdr)), 0);
    size_t off = 0, piece = 1;
    while (off < len) {
        size_t k = piece < len - off ? piece : len - off;
        char ch[32];
        int cn = snprintf(ch, sizeof ch, "%zx\r\n", k);
        ck_assert_int_eq(write_all(fd, ch, (size_t)cn), 0);
        ck_assert_int_eq(write_all(fd, body + off, k), 0);
        ck_assert_int_eq(write_all(fd, "\r\n", 2), 0);
        off += k;
        piece = piece * 3 + 7;   /* 1, 10, 37, 118, ... bytes */
    }
    ck_assert_int_eq(write_all(fd, "0\r\n\r\n", 5), 0);
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    ssize_t got;
    while (n < cap - 1 && (got = recv(fd, buf + n, cap - 1 - n, 0)) > 0) n += (size_t)got;
    buf[n] = 0;
    close(fd);
    ck_assert_msg(!strncmp(buf, "HTTP/1.1 200", 12), "%.300s", buf);
    char *eoh = strstr(buf, "\r\n\r\n");
    ck_assert_ptr_nonnull(eoh);
    ck_assert_str_eq(eoh + 4, a.body);
    free(buf);
    free(body);
    resp_free(&a);
}
END_TEST

START_TEST(test_api_key)
{
    NEED_SETUP();
    FILE *f = fopen(path_in("key.txt"), "w");
    fputs("  s3cret-key \n", f);
    fclose(f);
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --api-key-file %s", model_path, path_in("key.txt")), 0);
    resp r;
    post_png(&r, s.port, "/log_prob", 0);
    assert_error(&r, 401, "unauthorized", "no key");
    resp_free(&r);
    http(&r, s.port, "GET", "/sample?n=1", "Authorization: Bearer wrong\r\n", NULL, 0);
    assert_error(&r, 401, "unauthorized", "wrong key");
    resp_free(&r);
    http(&r, s.port, "GET", "/info", "X-API-Key: s3cret-keyX\r\n", NULL, 0);
    assert_error(&r, 401, "unauthorized", "longer key");
    resp_free(&r);
    http(&r, s.port, "GET", "/sample?n=1", "Authorization: Bearer s3cret-key\r\n", NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(&r, s.port, "GET", "/info", "X-API-Key: s3cret-key\r\n", NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    http(&r, s.port, "POST", "/interpolate", "Content-Type: multipart/form-data; boundary=x\r\n", "--x--\r\n", 7);
    assert_error(&r, 401, "unauthorized", "interpolate without a key");
    resp_free(&r);
    const char *open_paths[] = {"/healthz", "/readyz", "/metrics", "/"};
    for (int i = 0; i < 4; i++) {
        http(&r, s.port, "GET", open_paths[i], NULL, NULL, 0);
        ck_assert_msg(r.status == 200, "%s needs no key: %d", open_paths[i], r.status);
        resp_free(&r);
    }
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

typedef struct call {
    int port;
    const char *method, *path, *headers;
    const void *body;
    size_t len;
    resp r;
    int delay_ms;
} call;

static void *call_thread(void *arg)
{
    call *c = arg;
    if (c->delay_ms) usleep((useconds_t)c->delay_ms * 1000);
    http(&c->r, c->port, c->method, c->path, c->headers, c->body, c->len);
    return NULL;
}

START_TEST(test_queue_full_and_timeout)
{
    NEED_SETUP();
    /* the worker waits up to 1 s for a batch to fill: a first request of 10 images holds the
     * queue (capacity 12), so a second one of 10 cannot fit: 503 + Retry-After. The second is
     * sent once the first is seen queued (not after a fixed sleep a slow machine can outlast). */
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --queue-size 12 --max-delay-us 1000000", model_path), 0);
    call a = {s.port, "GET", "/sample?n=10&seed=1", NULL, NULL, 0, {0}, 0};
    pthread_t t;
    pthread_create(&t, NULL, call_thread, &a);
    ck_assert_msg(http_metric_await(s.port, "\nrealnvp_queue_depth ", 10, 12, AWAIT_MS) >= 10, "the first request was not queued");
    resp r;
    http(&r, s.port, "GET", "/sample?n=10&seed=2", NULL, NULL, 0);
    assert_error(&r, 503, "queue_full", "second request");
    char h[32];
    ck_assert_str_eq(header(&r, "Retry-After", h, sizeof h), "1");
    resp_free(&r);
    ck_assert_int_ge(metric(s.port, "\nrealnvp_queue_depth "), 10);
    pthread_join(t, NULL);
    ck_assert_int_eq(a.r.status, 200);   /* the first one still completes */
    resp_free(&a.r);
    /* more than the queue can ever hold is a client error */
    http(&r, s.port, "GET", "/sample?n=13", NULL, NULL, 0);
    assert_error(&r, 400, "too_many_jobs", "n over the queue size");
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);

    /* 504: images that wait longer than the request timeout are dropped */
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --request-timeout-ms 50 --max-delay-us 400000", model_path), 0);
    http(&r, s.port, "GET", "/sample?n=2", NULL, NULL, 0);
    assert_error(&r, 504, "timeout", "request timeout");
    resp_free(&r);
    ck_assert_int_ge(metric(s.port, "realnvp_rejected_total{reason=\"timeout\"} "), 2);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* ---- batching and concurrency ---- */

START_TEST(test_batched_equals_single)
{
    NEED_SETUP();
    /* 32 single-image requests within a 300 ms window are computed together */
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --max-delay-us 300000 --max-batch 64", model_path), 0);
    enum { N = 32 };
    call c[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        c[i] = (call){s.port, "POST", i % 2 ? "/log_prob" : "/encode", "Content-Type: image/png\r\n", pngs[i % NIMG],
                      png_len[i % NIMG], {0}, 0};
        pthread_create(&t[i], NULL, call_thread, &c[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(c[i].r.status == 200, "request %d: %d %s", i, c[i].r.status, c[i].r.body);
        json_t *j = body_json(&c[i].r);
        check_log_prob_result(json_array_get(json_object_get(j, "results"), 0), i % NIMG, "image");
        json_decref(j);
        resp_free(&c[i].r);
    }
    /* 32 images in at most a handful of batches (log_prob and encode are batched apart) */
    long images = metric(s.port, "realnvp_images_total{op=\"log_prob\"} ") + metric(s.port, "realnvp_images_total{op=\"encode\"} ");
    long batches = metric(s.port, "realnvp_batch_size_count ");
    ck_assert_int_eq(images, N);
    ck_assert_msg(batches <= 8, "%ld images took %ld batches", images, batches);
    ck_assert_int_eq(stop_server(&s), 0);
    /* the access log has one line per request with the batch size */
    char *log = slurp(s.log, NULL);
    int lines = 0, big = 0;
    for (char *p = log; (p = strstr(p, "\"POST /")); p++) {
        lines++;
        char *b = strstr(p, "batch=");
        if (b && atoi(b + 6) > 1) big++;
    }
    ck_assert_int_eq(lines, N);
    ck_assert_int_gt(big, N / 2);
    ck_assert_ptr_nonnull(strstr(log, "images=1 batch="));
    ck_assert_ptr_nonnull(strstr(log, "wait_ms="));
    ck_assert_ptr_nonnull(strstr(log, "compute_ms="));
    ck_assert_ptr_nonnull(strstr(log, "total_ms="));
    free(log);
}
END_TEST

typedef struct worker_arg {
    int port, id, rounds, bad;
    char msg[256];
} worker_arg;

static void *client_worker(void *arg)
{
    worker_arg *w = arg;
    int fd = connect_port(w->port);   /* keep-alive: every round on one connection */
    for (int k = 0; k < w->rounds && !w->bad; k++) {
        int i = (w->id + k) % NIMG;
        resp r;
        if (fd < 0) fd = connect_port(w->port);
        if ((w->id + k) % 3 == 2) {
            char path[64];
            snprintf(path, sizeof path, "/sample?n=2&seed=%d&format=json&latents=1", w->id);
            http_on(fd, &r, "GET", path, NULL, NULL, 0);
            json_t *j = r.status == 200 ? json_loadb(r.body, r.len, 0, NULL) : NULL;
            float z[2 * D];
            rnvp_sample_latents(z, 2, D, 1.0, (uint64_t)w->id);
            json_t *lat = json_object_get(j, "latents");
            double v = json_number_value(json_array_get(json_array_get(lat, 1), 5));
            if (!j || fabs(v - z[D + 5]) > 1e-6 * fmax(1, fabs(z[D + 5])))
                w->bad = 1, snprintf(w->msg, sizeof w->msg, "sample: %d %.100s", r.status, r.body ? r.body : "");
            json_decref(j);
        } else {
            http_on(fd, &r, "POST", "/log_prob", "Content-Type: image/png\r\n", pngs[i], png_len[i]);
            json_t *j = r.status == 200 ? json_loadb(r.body, r.len, 0, NULL) : NULL;
            double got = json_number_value(json_object_get(json_array_get(json_object_get(j, "results"), 0), "log_prob"));
            rnvp_ctx *c;
            rnvp_error e;
            double lp;
            rnvp_ctx_create(&c, model, 1, &e);
            rnvp_log_prob(c, &lp, NULL, imgs[i], NULL, 1, &e);
            rnvp_ctx_free(c);
            if (!j || fabs(got - lp) > 1e-5 * fabs(lp))
                w->bad = 1, snprintf(w->msg, sizeof w->msg, "log_prob: %d %.100s (want %g)", r.status, r.body ? r.body : "", lp);
            json_decref(j);
        }
        char h[32];
        if (header(&r, "Connection", h, sizeof h) && !strcasecmp(h, "close")) {
            close(fd);
            fd = -1;
        }
        resp_free(&r);
    }
    if (fd >= 0) close(fd);
    return NULL;
}

START_TEST(test_64_concurrent_clients)
{
    NEED_SETUP();
    enum { N = 64 };
    worker_arg w[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        w[i] = (worker_arg){.port = PORT, .id = i, .rounds = 6};
        pthread_create(&t[i], NULL, client_worker, &w[i]);
    }
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < N; i++) ck_assert_msg(!w[i].bad, "client %d: %s", i, w[i].msg);
    ck_assert_int_eq(metric(PORT, "\nrealnvp_queue_depth "), 0);
}
END_TEST

/* ---- shutdown and startup ---- */

typedef struct load_arg {
    int port, stop;
    int ok, refused, drained, bad;
    char msg[200];
} load_arg;

static void *load_thread(void *arg)
{
    load_arg *l = arg;
    while (!__atomic_load_n(&l->stop, __ATOMIC_RELAXED)) {
        int fd = connect_port(l->port);
        if (fd < 0) {
            l->refused++;
            usleep(2000);
            continue;
        }
        resp r;
        http_on(fd, &r, "POST", "/log_prob", "Content-Type: image/png\r\n", pngs[2], png_len[2]);
        close(fd);
        if (r.status == 200 && strstr(r.body, "\"log_prob\"")) l->ok++;
        else if (r.status == 0) l->refused++;   /* not accepted: closed without a response */
        else if (r.status == 503 && strstr(r.body, "\"draining\"") && strstr(r.head, "Retry-After: 1")) l->drained++;
        else if (!l->bad++) snprintf(l->msg, sizeof l->msg, "%d %.150s", r.status, r.body ? r.body : "");
        resp_free(&r);
    }
    return NULL;
}

START_TEST(test_shutdown_under_load)
{
    NEED_SETUP();
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --max-delay-us 20000 --drain-timeout-s 20", model_path), 0);
    /* a request held across the signal: an upload cut short, seen received (the inflight gauge
     * counts it and the /metrics request), which keeps the drain open until it ends; and a
     * keep-alive connection to ask /readyz */
    int ka = connect_port(s.port);
    resp r;
    http_on(ka, &r, "GET", "/readyz", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    char hd[200];
    int hl = snprintf(hd, sizeof hd, "POST /log_prob HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %zu\r\n\r\n",
                      png_len[2]);
    int up = connect_port(s.port);
    ck_assert_int_ge(up, 0);
    ck_assert_int_eq(write_all(up, hd, (size_t)hl), 0);
    ck_assert_int_eq(write_all(up, pngs[2], 10), 0);
    ck_assert_msg(http_metric_await(s.port, "\nrealnvp_inflight_requests ", 2, 2, AWAIT_MS) == 2, "the upload was not received");
    enum { N = 16 };
    load_arg l[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        l[i] = (load_arg){.port = s.port};
        pthread_create(&t[i], NULL, load_thread, &l[i]);
    }
    usleep(400000);
    kill(s.pid, SIGTERM);
    /* /readyz turns 503 once the signal is handled (200 until then, for however long the machine
     * takes); the held upload keeps the server draining, so the connection stays to answer it */
    double t_sig = now_s();
    int polls = 0;
    do {
        if (polls++) usleep(1000);
        resp_free(&r);
        http_on(ka, &r, "GET", "/readyz", NULL, NULL, 0);
    } while (r.status == 200 && now_s() - t_sig < AWAIT_MS / 1000.0);
    ck_assert_msg(r.status == 503, "readyz while draining: %d (after %d requests in %.3f s)", r.status, polls, now_s() - t_sig);
    resp_free(&r);
    close(ka);
    /* the upload ends during the drain: refused */
    ck_assert_int_eq(write_all(up, pngs[2] + 10, png_len[2] - 10), 0);
    read_resp(up, &r);
    close(up);
    assert_error(&r, 503, "draining", "upload finished during the drain");
    resp_free(&r);
    int st = wait_server(&s, 30000);
    for (int i = 0; i < N; i++) __atomic_store_n(&l[i].stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    ck_assert_msg(st == 0, "exit status after SIGTERM under load: %d", st);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        ok += l[i].ok;
        ck_assert_msg(!l[i].bad, "client %d got a bad answer during shutdown: %s", i, l[i].msg);
    }
    ck_assert_int_gt(ok, N);
    /* every accepted request was answered: the access log's lines are all 200 */
    char *log = slurp(s.log, NULL), *err = slurp(s.err, NULL);
    int lines = 0;
    for (char *p = log; (p = strstr(p, "\"POST /log_prob\" ")); p++) {   /* computed, or refused while draining */
        lines++;
        ck_assert_msg(!strncmp(p + 17, "200 ", 4) || !strncmp(p + 17, "503 ", 4), "a request did not finish: %.120s", p);
    }
    ck_assert_int_ge(lines, ok);
    ck_assert_msg(strstr(err, "stopped cleanly"), "%s", err);
    free(log);
    free(err);
}
END_TEST

START_TEST(test_startup_failures)
{
    NEED_SETUP();
    server s;
    int st = 0;
    /* port in use */
    char args[512];
    snprintf(args, sizeof args, "--model %s --port %d", model_path, PORT);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s %s --access-log off >%s 2>%s", exe, args, path_in("o.txt"), path_in("e.txt"));
    st = system(cmd);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    char *e = slurp(path_in("e.txt"), NULL);
    ck_assert_msg(strstr(e, "Address already in use") && strchr(e, '\n') == e + strlen(e) - 1, "%s", e);
    free(e);
    /* a model that cannot be loaded */
    ck_assert_int_eq(start_server(&s, &st, "--model %s", path_in("nonexistent.safetensors")), -1);
    ck_assert_int_eq(st, 1);
    e = slurp(s.err, NULL);
    ck_assert_msg(strstr(e, "nonexistent.safetensors") && strstr(e, "cannot load the model"), "%s", e);
    free(e);
    /* bad flags */
    ck_assert_int_eq(start_server(&s, &st, "--model %s --max-batch 0", model_path), -1);
    ck_assert_int_eq(st, 2);
    ck_assert_int_eq(start_server(&s, &st, "--model %s --bogus", model_path), -1);
    ck_assert_int_eq(st, 2);
    ck_assert_int_eq(start_server(&s, &st, "%s", ""), -1);
    ck_assert_int_eq(st, 2);
    /* --precision: a bad value, and bf16 on a CPU without AVX512_BF16, refused at start */
    ck_assert_int_eq(start_server(&s, &st, "--model %s --precision fp16", model_path), -1);
    ck_assert_int_eq(st, 2);
    e = slurp(s.err, NULL);
    ck_assert_msg(strstr(e, "fp32 or bf16"), "%s", e);
    free(e);
    {
        rnvp_error pe;
        if (rnvp_precision_check(RNVP_PRECISION_BF16, &pe) != RNVP_OK) {
            ck_assert_int_eq(start_server(&s, &st, "--model %s --precision bf16", model_path), -1);
            ck_assert_int_eq(st, 2);
            e = slurp(s.err, NULL);
            ck_assert_msg(strstr(e, "AVX512_BF16"), "%s", e);
            free(e);
        } else {   /* serves, and says so in /info (on the default kernels: bf16 needs them) */
            const char *conv = getenv("REALNVP_CONV");
            char saved[64] = "";
            if (conv) snprintf(saved, sizeof saved, "%s", conv);
            unsetenv("REALNVP_CONV");
            ck_assert_int_eq(start_server(&s, NULL, "--model %s --precision bf16", model_path), 0);
            if (conv) setenv("REALNVP_CONV", saved, 1);
            resp r;
            http(&r, s.port, "GET", "/info", NULL, NULL, 0);
            ck_assert_msg(r.status == 200 && strstr(r.body, "\"precision\": \"bf16\""), "%d %s", r.status, r.body);
            resp_free(&r);
            stop_server(&s);
        }
    }
    /* --help lists every flag with its default and variable */
    snprintf(cmd, sizeof cmd, "%s --help >%s 2>&1", exe, path_in("h.txt"));
    st = system(cmd);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char *h = slurp(path_in("h.txt"), NULL);
    const char *needles[] = {"--model PATH", "--host ADDR", "[127.0.0.1]", "--port N", "[8080]", "--http-threads",
                             "--compute-threads", "--max-batch N", "[64]", "--max-delay-us", "[0]", "--memory-budget-bytes", "[134217728]",
                             "--max-jobs-per-request", "[256]", "--read-timeout-s", "[60]", "--max-workspace-bytes", "--work-threads", "--queue-size", "[1024]",
                             "--request-timeout-ms", "--max-body-bytes", "[8388608]", "--max-samples", "[256]",
                             "--api-key-file", "--access-log", "REALNVP_MODEL", "REALNVP_PORT", "--precision P", "[fp32]",
                             "REALNVP_PRECISION"};
    for (size_t i = 0; i < sizeof needles / sizeof *needles; i++)
        ck_assert_msg(strstr(h, needles[i]), "--help lacks %s", needles[i]);
    free(h);
    /* environment variables configure it */
    setenv("REALNVP_MAX_BATCH", "7", 1);
    ck_assert_int_eq(start_server(&s, NULL, "--model %s", model_path), 0);
    unsetenv("REALNVP_MAX_BATCH");
    resp r;
    http(&r, s.port, "GET", "/info", NULL, NULL, 0);
    json_t *j = body_json(&r);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "limits"), "max_batch")), 7);
    json_decref(j);
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST


/* ---- the clients (clients/python, clients/curl) against the running server ---- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return st == -1 || !WIFEXITED(st) ? -1 : WEXITSTATUS(st);
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

/* the pixels of a PNG file equal image i */
static void assert_png_is(const char *path, int i)
{
    size_t len;
    char *b = slurp(path, &len);
    ck_assert_msg(b != NULL, "%s was not written", path);
    uint8_t px[D];
    rnvp_error e;
    ck_assert_msg(rnvp_png_decode(px, b, len, 1, 8, 8, &e) == RNVP_OK, "%s: %s", path, e.msg);
    ck_assert_msg(!memcmp(px, imgs[i], D), "%s differs from image %d", path, i);
    free(b);
}

START_TEST(test_clients)
{
    NEED_SETUP();
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", PORT);
    write_file(path_in("c0.png"), pngs[0], png_len[0]);
    write_file(path_in("c1.png"), pngs[1], png_len[1]);
    uint8_t wide[D + 8] = {0};
    uint8_t *wp;
    size_t wl;
    rnvp_error e;
    ck_assert(rnvp_png_encode_grid(&wp, &wl, wide, 1, 1, 8, 9, 1, -1, &e) == RNVP_OK);
    write_file(path_in("wide.png"), wp, wl);
    free(wp);
    const char *py = "python3 clients/python/realnvp_client.py";

    /* python: log-prob prints one JSON line per file with the library's values */
    ck_assert_int_eq(sh("%s --url %s log-prob %s %s >%s 2>&1", py, url, path_in("c0.png"), path_in("c1.png"), path_in("py.out")), 0);
    char *out = slurp(path_in("py.out"), NULL);
    char *line2 = strchr(out, '\n');
    ck_assert_ptr_nonnull(line2);
    *line2++ = 0;
    json_t *j0 = json_loads(out, 0, NULL), *j1 = json_loads(line2, 0, NULL);
    ck_assert_msg(j0 && j1, "python client output: %s", out);
    check_log_prob_result(j0, 0, "c0.png");
    check_log_prob_result(j1, 1, "c1.png");
    json_decref(j0);
    json_decref(j1);
    free(out);
    /* encode then decode gives the pixels back */
    ck_assert_int_eq(sh("%s --url %s encode %s -o %s", py, url, path_in("c1.png"), path_in("z.json")), 0);
    ck_assert_int_eq(sh("%s --url %s decode %s -o %s 2>/dev/null", py, url, path_in("z.json"), path_in("back.png")), 0);
    assert_png_is(path_in("back.png"), 1);
    /* sample equals GET /sample with the same parameters */
    ck_assert_int_eq(sh("%s --url %s sample -n 4 --temp 0.5 --seed 9 -o %s 2>/dev/null", py, url, path_in("s.png")), 0);
    resp r;
    http(&r, PORT, "GET", "/sample?n=4&temp=0.5&seed=9", NULL, NULL, 0);
    size_t sl;
    char *sp = slurp(path_in("s.png"), &sl);
    ck_assert(sp && sl == r.len && !memcmp(sp, r.body, sl));
    free(sp);
    resp_free(&r);
    /* errors: exit 1 and the server's reason */
    ck_assert_int_eq(sh("%s --url %s log-prob %s >/dev/null 2>%s", py, url, path_in("wide.png"), path_in("py.err")), 1);
    out = slurp(path_in("py.err"), NULL);
    ck_assert_msg(strstr(out, "422 wrong_image_size") && strstr(out, "8x8x1"), "%s", out);
    free(out);
    ck_assert_int_eq(sh("%s --url %s info >%s", py, url, path_in("info.json")), 0);
    out = slurp(path_in("info.json"), NULL);
    ck_assert_ptr_nonnull(strstr(out, "\"dim\": 64"));
    free(out);

    /* curl scripts */
    if (sh("command -v curl >/dev/null") != 0) {
        fprintf(stderr, "test_clients: curl is not installed (tools/install-deps.sh installs it); clients/curl not tested\n");
        return;
    }
    ck_assert_int_eq(sh("REALNVP_URL=%s clients/curl/log_prob.sh %s >%s", url, path_in("c0.png"), path_in("c.out")), 0);
    resp fake = {0};
    fake.body = slurp(path_in("c.out"), &fake.len);
    json_t *j = body_json(&fake);
    check_log_prob_result(json_array_get(json_object_get(j, "results"), 0), 0, "image");
    json_decref(j);
    free(fake.body);
    ck_assert_int_eq(sh("REALNVP_URL=%s clients/curl/encode.sh %s | REALNVP_URL=%s clients/curl/decode.sh - %s 2>/dev/null", url,
                        path_in("c0.png"), url, path_in("cback.png")), 0);
    assert_png_is(path_in("cback.png"), 0);
    ck_assert_int_eq(sh("N=4 TEMP=0.5 SEED=9 REALNVP_URL=%s clients/curl/sample.sh %s 2>%s", url, path_in("cs.png"), path_in("cs.err")), 0);
    out = slurp(path_in("cs.err"), NULL);
    ck_assert_msg(strstr(out, "X-Realnvp-Seed: 9") || strstr(out, "x-realnvp-seed: 9"), "%s", out);
    free(out);
    ck_assert_int_eq(sh("cmp -s %s %s", path_in("cs.png"), path_in("s.png")), 0);
    ck_assert_int_eq(sh("REALNVP_URL=%s clients/curl/health.sh >/dev/null", url), 0);
    ck_assert_int_eq(sh("REALNVP_URL=%s clients/curl/metrics.sh | grep '^realnvp_queue_depth' >/dev/null", url), 0);
    ck_assert_int_eq(sh("REALNVP_URL=%s clients/curl/info.sh | grep '\"dim\": 64' >/dev/null", url), 0);
    ck_assert_int_ne(sh("REALNVP_URL=%s clients/curl/log_prob.sh %s >/dev/null 2>&1", url, path_in("wide.png")), 0);
}
END_TEST

/* ---- the parsers alone (no server) ---- */

START_TEST(test_query_parser)
{
    srv_query q;
    char err[SRV_ERRLEN];
    ck_assert_int_eq(srv_query_parse(&q, "n=16&temp=0.7&name=a%20b+c&flag&&x=", err, sizeof err), 0);
    ck_assert_int_eq(q.n, 5);
    ck_assert_str_eq(srv_query_get(&q, "name"), "a b c");
    ck_assert_str_eq(srv_query_get(&q, "flag"), "");
    ck_assert_str_eq(srv_query_get(&q, "x"), "");
    ck_assert_ptr_null(srv_query_get(&q, "missing"));
    ck_assert_int_eq(srv_query_parse(&q, NULL, err, sizeof err), 0);
    ck_assert_int_eq(q.n, 0);
    ck_assert_int_eq(srv_query_parse(&q, "", err, sizeof err), 0);
    const char *bad[] = {"a=%zz", "a=%4", "a=%", "=1", "a=1&a=2", "a=%00", "a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9&j=10&k=11&l=12&m=13&n=14&o=15&p=16&q=17",
                         "a=0123456789012345678901234567890123456789012345678901234567890123456789"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        ck_assert_msg(srv_query_parse(&q, bad[i], err, sizeof err) == -1, "accepted %s", bad[i]);
        ck_assert_msg(err[0], "no message for %s", bad[i]);
    }
    long v;
    double d;
    uint64_t u;
    int present;
    ck_assert_int_eq(srv_query_parse(&q, "n=5&t=0.5&s=18446744073709551615&neg=-1&sp=%201&f=json", err, sizeof err), 0);
    ck_assert_int_eq(srv_query_int(&q, "n", 1, 10, 0, &v, err, sizeof err), 0);
    ck_assert_int_eq(v, 5);
    ck_assert_int_eq(srv_query_int(&q, "n", 6, 10, 0, &v, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "6..10") && strstr(err, "'5'"), "%s", err);
    ck_assert_int_eq(srv_query_int(&q, "absent", 1, 10, 7, &v, err, sizeof err), 0);
    ck_assert_int_eq(v, 7);
    ck_assert_int_eq(srv_query_int(&q, "sp", 0, 10, 0, &v, err, sizeof err), -1);
    ck_assert_int_eq(srv_query_double(&q, "t", 0, 1, 0, &d, err, sizeof err), 0);
    ck_assert(d == 0.5);
    ck_assert_int_eq(srv_query_double(&q, "neg", 0, 1, 0, &d, err, sizeof err), -1);
    ck_assert_int_eq(srv_query_u64(&q, "s", &u, &present, err, sizeof err), 0);
    ck_assert(present && u == UINT64_MAX);
    ck_assert_int_eq(srv_query_u64(&q, "neg", &u, &present, err, sizeof err), -1);
    const char *fmts[] = {"png", "json", NULL};
    ck_assert_int_eq(srv_query_choice(&q, "f", fmts, 0, err, sizeof err), 1);
    ck_assert_int_eq(srv_query_choice(&q, "n", fmts, 0, err, sizeof err), -1);
    const char *allowed[] = {"n", "t", "s", "neg", "sp", NULL};
    ck_assert_int_eq(srv_query_check_allowed(&q, allowed, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "'f'"), "%s", err);
}
END_TEST

START_TEST(test_multipart_parser)
{
    char b[80], err[SRV_ERRLEN];
    ck_assert_int_eq(srv_multipart_boundary(b, sizeof b, "multipart/form-data; boundary=abc", err, sizeof err), 0);
    ck_assert_str_eq(b, "abc");
    ck_assert_int_eq(srv_multipart_boundary(b, sizeof b, "Multipart/Form-Data; charset=x; BOUNDARY=\"a b\"", err, sizeof err), 0);
    ck_assert_str_eq(b, "a b");
    ck_assert_int_eq(srv_multipart_boundary(b, sizeof b, "multipart/form-data", err, sizeof err), -1);
    ck_assert_int_eq(srv_multipart_boundary(b, sizeof b, "multipart/mixed; boundary=x", err, sizeof err), -1);
    ck_assert_int_eq(srv_multipart_boundary(b, sizeof b, "multipart/form-data; boundary=", err, sizeof err), -1);
    ck_assert_int_eq(srv_multipart_boundary(b, sizeof b, NULL, err, sizeof err), -1);

    srv_part p[4];
    const char body[] = "preamble\r\n--XX\r\nContent-Disposition: form-data; name=\"f1\"; filename=\"a \\\"q\\\".png\"\r\n"
                        "Content-Type: image/png\r\n\r\nAB\r\nC\r\n--XX\r\ncontent-disposition: form-data; name=f2\r\n\r\n"
                        "\r\n--XX\r\n\r\nxyz\r\n--XX--\r\nepilogue";
    int n = srv_multipart_parse(p, 4, body, sizeof body - 1, "XX", err, sizeof err);
    ck_assert_msg(n == 3, "%d: %s", n, err);
    ck_assert_str_eq(p[0].name, "a \"q\".png");
    ck_assert_str_eq(p[0].content_type, "image/png");
    ck_assert(p[0].len == 5 && !memcmp(p[0].data, "AB\r\nC", 5));
    ck_assert_str_eq(p[1].name, "f2");
    ck_assert_int_eq(p[1].len, 0);
    ck_assert_str_eq(p[2].name, "part 3");
    ck_assert(p[2].len == 3 && !memcmp(p[2].data, "xyz", 3));
    /* the body may start with the delimiter; binary data with NULs and near-boundaries */
    const char b2[] = "--XX\r\n\r\n\0\r\n--X\r\n-XX\r\n--XX--";
    n = srv_multipart_parse(p, 4, b2, sizeof b2 - 1, "XX", err, sizeof err);
    ck_assert_int_eq(n, 1);
    ck_assert(p[0].len == 11 && p[0].data[0] == 0);
    const char *bad[] = {"", "no delimiter", "--XX", "--XX\r\n\r\nunterminated", "--XX--", "--XXjunk\r\n\r\na\r\n--XX--",
                         "--XX\r\nheader-without-end", "--XX\r\n\r\na\r\n--XX\r\n\r\nb\r\n--XX\r\n\r\nc\r\n--XX\r\n\r\nd\r\n--XX\r\n\r\ne\r\n--XX--"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        ck_assert_msg(srv_multipart_parse(p, 4, bad[i], strlen(bad[i]), "XX", err, sizeof err) == -1, "accepted [%s]", bad[i]);
        ck_assert(err[0]);
    }
}
END_TEST

START_TEST(test_latents_parser)
{
    char err[SRV_ERRLEN];
    float *z;
    int n;
    const char *one = "{\"latents\": [1, -2.5, 3e-3]}";
    ck_assert_int_eq(srv_latents_parse(&z, &n, one, strlen(one), 3, 4, NULL, 0, err, sizeof err), 0);
    ck_assert(n == 1 && z[0] == 1.0f && z[1] == -2.5f && z[2] == 3e-3f);
    free(z);
    const char *two = "{\"x\": 1, \"latents\": [[1,2,3],[4,5,6]]}";
    ck_assert_int_eq(srv_latents_parse(&z, &n, two, strlen(two), 3, 4, NULL, 0, err, sizeof err), 0);
    ck_assert(n == 2 && z[5] == 6.0f);
    free(z);
    ck_assert_int_eq(srv_latents_parse(&z, &n, two, strlen(two), 3, 1, NULL, 0, err, sizeof err), -1);
    ck_assert_ptr_null(z);
    rnvp_latent_part lay[1] = {{0, 3, 1, 1}};
    const char *wl = "{\"layout\": [{\"offset\": 0, \"channels\": 3, \"height\": 1, \"width\": 1}], \"latents\": [0,0,0]}";
    ck_assert_int_eq(srv_latents_parse(&z, &n, wl, strlen(wl), 3, 4, lay, 1, err, sizeof err), 0);
    free(z);
    lay[0].channels = 1;
    ck_assert_int_eq(srv_latents_parse(&z, &n, wl, strlen(wl), 3, 4, lay, 1, err, sizeof err), -1);
    const char *bad[] = {"", "{", "[]", "{\"latents\": []}", "{\"latents\": [[1,2,3],[1,2]]}", "{\"latents\": [[1,2,3],5]}",
                         "{\"latents\": [1,2,\"3\"]}", "{\"latents\": [1,2,null]}", "{\"latents\": [1,2,1e39]}",
                         "{\"latents\": [1,2,NaN]}", "{\"latents\": [1,2,-Infinity]}", "{\"latents\": 5}",
                         "{\"latents\": [1,2,3], \"latents\": [1,2,3]}", "{\"latents\": [[1,2,3]]} trailing"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = 0;
        ck_assert_msg(srv_latents_parse(&z, &n, bad[i], strlen(bad[i]), 3, 4, NULL, 0, err, sizeof err) == -1, "accepted %s", bad[i]);
        ck_assert(err[0] && z == NULL);
    }
}
END_TEST

START_TEST(test_helpers)
{
    /* RFC 4648 test vectors */
    const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        char *b = srv_base64(in[i], strlen(in[i]));
        ck_assert_str_eq(b, out[i]);
        free(b);
    }
    srv_buf b = {0};
    srv_buf_json_string(&b, "a\"b\\c\n\x01\xff\xc3\xa9");
    ck_assert_str_eq(b.p, "\"a\\\"b\\\\c\\u000a\\u0001\xEF\xBF\xBD\xc3\xa9\"");
    free(b.p);
    b = (srv_buf){0};
    srv_buf_json_double(&b, 0.7, 17);
    srv_buf_put(&b, " ", 1);
    srv_buf_json_double(&b, 1.0 / 3.0, 17);
    srv_buf_put(&b, " ", 1);
    srv_buf_json_double(&b, NAN, 17);
    ck_assert_str_eq(b.p, "0.7 0.3333333333333333 null");
    free(b.p);
    /* dequantization noise: in [0, 1), reproducible, different per image and per draw */
    float u1[64], u2[64], u3[64], u4[64];
    srv_noise(u1, 64, 9, 0, 0);
    srv_noise(u2, 64, 9, 0, 0);
    srv_noise(u3, 64, 9, 1, 0);
    srv_noise(u4, 64, 9, 0, 1);
    ck_assert(!memcmp(u1, u2, sizeof u1));
    ck_assert(memcmp(u1, u3, sizeof u1) && memcmp(u1, u4, sizeof u1));
    double mean = 0;
    for (int i = 0; i < 64; i++) {
        ck_assert(u1[i] >= 0 && u1[i] < 1);
        mean += u1[i] / 64;
    }
    ck_assert(mean > 0.3 && mean < 0.7);
}
END_TEST

/* ---- hostile load: budget, deadlines, fairness, cancellation, drain (docs/reliability.md) ---- */

/* sends raw bytes on a new connection from src (NULL: 127.0.0.1); the fd, or -1 */
static int send_raw(int port, const char *src, const void *data, size_t len)
{
    int fd = src ? connect_from(port, src) : connect_port(port);
    if (fd < 0) return -1;
    if (len && write_all(fd, data, len)) {
        close(fd);
        return -1;
    }
    return fd;
}

typedef struct timed_call {
    int port;
    const char *src, *path;
    resp r;
    double t_done;
} timed_call;

static void *timed_get(void *arg)
{
    timed_call *c = arg;
    memset(&c->r, 0, sizeof c->r);
    int fd = connect_from(c->port, c->src);
    if (fd >= 0) {
        http_on(fd, &c->r, "GET", c->path, NULL, NULL, 0);
        close(fd);
    }
    c->t_done = now_s();
    return NULL;
}

START_TEST(test_fair_queue)
{
    NEED_SETUP();
    /* one image per batch, so the order of batches is the order the queue serves clients in. The
     * bundled 28 x 28 model: its decodes take about 12 ms each here, so the heavy request lasts
     * seconds (3000 decodes of the 8 x 8 test model took 0.4 s here, which a machine ten times
     * faster finishes about when the light client used to be sent, 30 ms after it) */
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model models/fashion-mnist/model.safetensors --max-batch 1 "
                                            "--max-samples 4096 --max-jobs-per-request 4096 --queue-size 8192"), 0);
    /* a heavy client (127.0.0.1: 160 decodes in one request), then, once its decodes are seen
     * queued, a light one from 127.0.0.2 */
    enum { HEAVY = 160 };
    char heavy_path[64];
    snprintf(heavy_path, sizeof heavy_path, "/sample?n=%d&format=json&seed=1", HEAVY);
    timed_call heavy = {s.port, "127.0.0.1", heavy_path, {0}, 0};
    timed_call light = {s.port, "127.0.0.2", "/sample?n=2&format=json&seed=2", {0}, 0};
    pthread_t th, tl;
    double t_heavy = now_s();
    pthread_create(&th, NULL, timed_get, &heavy);
    long queued = http_metric_await(s.port, "\nrealnvp_queue_depth ", HEAVY / 2, HEAVY, AWAIT_MS);
    double t_light = now_s();
    if (queued < HEAVY / 2) pthread_join(th, NULL);
    ck_assert_msg(queued >= HEAVY / 2, "the heavy request was not seen queued (depth %ld; its status %d after %.3f s)", queued,
                  heavy.r.status, heavy.t_done - t_heavy);
    pthread_create(&tl, NULL, timed_get, &light);
    pthread_join(tl, NULL);
    pthread_join(th, NULL);
    fprintf(stderr, "test_fair_queue: the light client was sent %.3f s after the heavy one (%ld of its %d decodes "
                    "waiting), answered in %.3f s; the heavy one took %.3f s more\n",
            t_light - t_heavy, queued, HEAVY, light.t_done - t_light, heavy.t_done - light.t_done);
    ck_assert_int_eq(heavy.r.status, 200);
    ck_assert_int_eq(light.r.status, 200);
    /* round-robin: the light client's 2 images ran between the heavy one's, long before its end */
    ck_assert_msg(light.t_done < heavy.t_done, "light client done %.3f s after the heavy one", light.t_done - heavy.t_done);
    double heavy_left = heavy.t_done - light.t_done, light_took = light.t_done - t_light;
    ck_assert_msg(light_took < heavy_left, "the light client waited %.3f s; the heavy one still had %.3f s to go", light_took,
                  heavy_left);
    resp_free(&heavy.r);
    resp_free(&light.r);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_jobs_per_request_and_head)
{
    NEED_SETUP();
    resp r;
    /* 8 images x 64 draws = 512 computations: over the default cap of 256 */
    int idx[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    size_t len;
    char *body = multipart(idx, 8, &len, "XyZ");
    http(&r, PORT, "POST", "/log_prob?samples=64", "Content-Type: multipart/form-data; boundary=XyZ\r\n", body, len);
    assert_error(&r, 400, "too_many_jobs", "8 images x 64 draws");
    ck_assert_msg(strstr(r.body, "512") && strstr(r.body, "--max-jobs-per-request"), "%s", r.body);
    resp_free(&r);
    /* 8 x 32 = 256 is allowed */
    http(&r, PORT, "POST", "/log_prob?samples=32", "Content-Type: multipart/form-data; boundary=XyZ\r\n", body, len);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    free(body);
    /* HEAD on a computing endpoint computes nothing: 405 with Allow */
    long before = metric(PORT, "realnvp_images_total{op=\"decode\"} ");
    http(&r, PORT, "HEAD", "/sample?n=16", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 405);
    char h[32];
    ck_assert_str_eq(header(&r, "Allow", h, sizeof h), "GET");
    resp_free(&r);
    ck_assert_int_eq(metric(PORT, "realnvp_images_total{op=\"decode\"} "), before);
    /* a smaller cap */
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --max-jobs-per-request 3", model_path), 0);
    http(&r, s.port, "GET", "/sample?n=4", NULL, NULL, 0);
    assert_error(&r, 400, "bad_parameter", "n over the cap");
    ck_assert_msg(strstr(r.body, "--max-jobs-per-request"), "%s", r.body);
    resp_free(&r);
    http(&r, s.port, "GET", "/sample?n=3", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_cancel_disconnected)
{
    NEED_SETUP();
    /* the worker waits 600 ms for a batch to fill; the client leaves once its 10 images are seen
     * queued, and its jobs are dropped when their batch would start (the 499 is counted last) */
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --max-delay-us 600000", model_path), 0);
    const char req[] = "GET /sample?n=10 HTTP/1.1\r\nHost: x\r\n\r\n";
    int fd = send_raw(s.port, NULL, req, sizeof req - 1);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(http_metric_await(s.port, "\nrealnvp_queue_depth ", 10, 10, AWAIT_MS), 10);
    close(fd);
    http_metric_await(s.port, "realnvp_requests_total{endpoint=\"sample\",status=\"499\"} ", 1, 1L << 30, AWAIT_MS);
    ck_assert_int_eq(metric(s.port, "\nrealnvp_cancelled_total "), 10);
    ck_assert_int_eq(metric(s.port, "realnvp_images_total{op=\"decode\"} "), 0);
    ck_assert_int_eq(metric(s.port, "realnvp_requests_total{endpoint=\"sample\",status=\"499\"} "), 1);
    /* a client still connected is computed as before */
    resp r;
    http(&r, s.port, "GET", "/sample?n=3", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    ck_assert_int_eq(metric(s.port, "realnvp_images_total{op=\"decode\"} "), 3);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_memory_budget)
{
    NEED_SETUP();
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --memory-budget-bytes 1048576", model_path), 0);
    /* a declared body larger than the budget is refused before a byte of it is read */
    const char head[] = "POST /log_prob HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 2000000\r\n\r\n";
    int fd = send_raw(s.port, NULL, head, sizeof head - 1);
    resp r;
    read_resp(fd, &r);
    close(fd);
    assert_error(&r, 503, "memory_budget", "2 MB declared, 1 MiB budget");
    char h[32];
    ck_assert_str_eq(header(&r, "Retry-After", h, sizeof h), "1");
    resp_free(&r);
    /* bodies that fit one at a time but not together: the second waits for nothing, it is refused */
    char *big = malloc(700000);
    memset(big, 'x', 700000);
    char hd[200];
    int hl = snprintf(hd, sizeof hd, "POST /log_prob HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n",
                      700000);
    int a = send_raw(s.port, NULL, hd, (size_t)hl);
    ck_assert_int_ge(a, 0);
    write_all(a, big, 1000);   /* holds its 700 kB buffer (once the server has read that much) */
    ck_assert_int_ge(http_metric_await(s.port, "\nrealnvp_memory_used_bytes ", 700000, 1L << 30, AWAIT_MS), 700000);
    int b = send_raw(s.port, NULL, hd, (size_t)hl);
    read_resp(b, &r);
    close(b);
    assert_error(&r, 503, "memory_budget", "second body");
    resp_free(&r);
    write_all(a, big + 1000, 700000 - 1000);   /* the first one completes: not a PNG, 400 */
    read_resp(a, &r);
    close(a);
    assert_error(&r, 400, "bad_png", "first body");
    resp_free(&r);
    free(big);
    /* everything given back (once the server has finished the request, just after its reply) */
    ck_assert_int_eq(http_metric_await(s.port, "\nrealnvp_memory_used_bytes ", 0, 0, AWAIT_MS), 0);
    ck_assert_int_ge(metric(s.port, "realnvp_rejected_total{reason=\"memory_budget\"} "), 2);
    /* /decode JSON of empty arrays is refused before Jansson builds its tree */
    size_t n = 300000;
    char *js = malloc(n * 3 + 32);
    size_t k = (size_t)sprintf(js, "{\"latents\":[");
    for (size_t i = 0; i < n; i++) k += (size_t)sprintf(js + k, "%s[]", i ? "," : "");
    k += (size_t)sprintf(js + k, "]}");
    http(&r, s.port, "POST", "/decode", "Content-Type: application/json\r\n", js, k);
    assert_error(&r, 400, "bad_latents", "300000 empty arrays");
    ck_assert_msg(strstr(r.body, "more values"), "%s", r.body);
    resp_free(&r);
    free(js);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_read_timeout)
{
    NEED_SETUP();
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --read-timeout-s 1", model_path), 0);
    const char head[] = "POST /log_prob HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100\r\n\r\nab";
    int fd = send_raw(s.port, NULL, head, sizeof head - 1);
    for (int i = 0; i < 6; i++) {   /* one byte every 300 ms: never idle, but too slow (until answered) */
        usleep(300000);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 0) == 1 || write_all(fd, "c", 1)) break;
    }
    /* libmicrohttpd takes no reply before the body's end: the connection is closed (logged as 408) */
    resp r;
    double t0 = now_s();
    read_resp(fd, &r);
    close(fd);
    ck_assert_int_eq(r.status, 0);
    ck_assert_msg(now_s() - t0 < 3.0, "closed after %.2f s for --read-timeout-s 1", now_s() - t0);
    resp_free(&r);
    /* counted and given back as the server finishes the request, which may be just after the client sees the close */
    ck_assert_int_eq(http_metric_await(s.port, "realnvp_requests_total{endpoint=\"log_prob\",status=\"408\"} ", 1, 1L << 30, AWAIT_MS), 1);
    ck_assert_int_eq(http_metric_await(s.port, "\nrealnvp_memory_used_bytes ", 0, 0, AWAIT_MS), 0);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

typedef struct drain_client {
    int fd;
    resp r;
} drain_client;

static void *drain_reader(void *arg)
{
    drain_client *c = arg;
    read_resp(c->fd, &c->r);
    return NULL;
}

START_TEST(test_drain_bounded)
{
    NEED_SETUP();
    /* a full queue at SIGTERM: the batch would wait 10 s to fill, the drain allows 2 s */
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --max-delay-us 10000000 --drain-timeout-s 2", model_path), 0);
    /* a keep-alive client (accepted: it has had an answer) */
    int ka = connect_port(s.port);
    resp r;
    http_on(ka, &r, "GET", "/healthz", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    enum { N = 6 };
    drain_client c[N];
    pthread_t t[N];
    char src[16];
    for (int i = 0; i < N; i++) {
        snprintf(src, sizeof src, "127.0.0.%d", 1 + i);
        const char req[] = "GET /sample?n=4 HTTP/1.1\r\nHost: x\r\n\r\n";
        c[i].fd = send_raw(s.port, src, req, sizeof req - 1);
        ck_assert_int_ge(c[i].fd, 0);
        pthread_create(&t[i], NULL, drain_reader, &c[i]);
    }
    /* every request queued (seen, not assumed after a fixed sleep) */
    ck_assert_int_eq(http_metric_await(s.port, "\nrealnvp_queue_depth ", N * 4, N * 4, AWAIT_MS), N * 4);
    /* a slow upload that finishes during the drain: seen received (the inflight gauge counts the N
     * queued requests, it and the /metrics request) before the signal, as a connection not yet
     * accepted then would be refused, not answered */
    char hd[200];
    int hl = snprintf(hd, sizeof hd, "POST /log_prob HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %zu\r\n\r\n",
                      png_len[0]);
    int up = send_raw(s.port, NULL, hd, (size_t)hl);
    ck_assert_int_ge(up, 0);
    write_all(up, pngs[0], 10);
    ck_assert_int_eq(http_metric_await(s.port, "\nrealnvp_inflight_requests ", N + 2, N + 2, AWAIT_MS), N + 2);
    double t0 = now_s();
    kill(s.pid, SIGTERM);
    /* the drain has begun once /metrics no longer answers 1 (0, or -1: no new connection accepted) */
    ck_assert_int_le(http_metric_await(s.port, "\nrealnvp_ready ", -1, 0, AWAIT_MS), 0);
    http_on(ka, &r, "POST", "/log_prob", "Content-Type: image/png\r\n", pngs[1], png_len[1]);   /* new work: refused */
    assert_error(&r, 503, "draining", "keep-alive request during the drain");
    resp_free(&r);
    close(ka);
    write_all(up, pngs[0] + 10, png_len[0] - 10);
    read_resp(up, &r);
    close(up);
    assert_error(&r, 503, "draining", "upload finished during the drain");
    resp_free(&r);
    int st = wait_server(&s, 10000);
    double took = now_s() - t0;
    ck_assert_msg(st == 0, "exit status %d", st);
    ck_assert_msg(took < 2.0 + 1.0, "the drain took %.2f s for --drain-timeout-s 2", took);   /* + exit, ASan */
    /* every queued request was answered: 503 + Retry-After, never a closed connection */
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        close(c[i].fd);
        assert_error(&c[i].r, 503, "draining", "queued at SIGTERM");
        char h[32];
        ck_assert_str_eq(header(&c[i].r, "Retry-After", h, sizeof h), "1");
        resp_free(&c[i].r);
    }
    char *err = slurp(s.err, NULL);
    ck_assert_msg(strstr(err, "stopped cleanly") && !strstr(err, "PANIC") && !strstr(err, "panic"), "%s", err);
    free(err);
}
END_TEST

START_TEST(test_small_defects)
{
    NEED_SETUP();
    resp r;
    /* unknown parameters are refused on every endpoint */
    http(&r, PORT, "GET", "/info?foo=1", NULL, NULL, 0);
    assert_error(&r, 400, "bad_parameter", "/info?foo=1");
    resp_free(&r);
    http(&r, PORT, "GET", "/healthz?x=1", NULL, NULL, 0);
    assert_error(&r, 400, "bad_parameter", "/healthz?x=1");
    resp_free(&r);
    /* a client that drops after its request line: counted under its endpoint, as 499 */
    const char *c499 = "realnvp_requests_total{endpoint=\"info\",status=\"499\"} ";
    long before = metric(PORT, c499);
    before = before < 0 ? 0 : before;
    int fd = send_raw(PORT, NULL, "GET /info HTTP/1.1\r\nHo", 22);
    /* the server has its request line (the inflight gauge counts it and the /metrics request)
     * before the client drops, and counts the 499 when it notices: both awaited, not slept on */
    ck_assert_int_eq(http_metric_await(PORT, "\nrealnvp_inflight_requests ", 2, 2, AWAIT_MS), 2);
    close(fd);
    ck_assert_int_eq(http_metric_await(PORT, c499, before + 1, 1L << 30, AWAIT_MS), before + 1);
    http(&r, PORT, "GET", "/metrics", NULL, NULL, 0);
    ck_assert_msg(!strstr(r.body, "status=\"0\""), "%s", r.body);
    resp_free(&r);
    /* the method is written to the access log without control bytes: the log is read once it has
     * the request's line (written as the server finishes the request, just after its reply) */
    size_t log0 = 0;
    free(slurp(main_srv.log, &log0));
    fd = send_raw(PORT, NULL, "G\x01T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 35);
    read_resp(fd, &r);
    close(fd);
    resp_free(&r);
    char *log = NULL;
    const char *tail = "";
    for (double t0 = now_s(); now_s() - t0 < AWAIT_MS / 1000.0; usleep(2000)) {
        free(log);
        log = slurp(main_srv.log, NULL);
        tail = log && strlen(log) >= log0 ? log + log0 : "";
        if (strstr(tail, " /healthz\" ")) break;
    }
    ck_assert_msg(strstr(tail, " /healthz\" "), "the request was not logged: %s", tail);
    ck_assert_msg(!strchr(log, '\x01'), "a control byte reached the access log");
    free(log);
    /* the model name as a Prometheus label value: only \\ \" and \n are escapes there */
    server s;
    ck_assert_int_eq(start_server(&s, NULL, "--model %s --model-name 'a\tb\"c\\d' --max-samples 4096 "
                                            "--max-jobs-per-request 4096", model_path), 0);
    http(&r, s.port, "GET", "/metrics", NULL, NULL, 0);
    ck_assert_msg(strstr(r.body, "model=\"a\tb\\\"c\\\\d\"}"), "%.400s", r.body);
    resp_free(&r);
    /* a grid over the PNG limit is refused before anything is computed */
    http(&r, s.port, "GET", "/sample?n=2000&cols=2000", NULL, NULL, 0);
    assert_error(&r, 400, "bad_parameter", "a 17999-pixel-wide grid");
    ck_assert_msg(strstr(r.body, "16384"), "%s", r.body);
    resp_free(&r);
    ck_assert_int_eq(metric(s.port, "realnvp_images_total{op=\"decode\"} "), 0);
    ck_assert_int_eq(stop_server(&s), 0);
    /* an API key longer than the server accepts is refused at start */
    char *key = malloc(5001);
    memset(key, 'k', 5000);
    key[5000] = '\n';
    FILE *f = fopen(path_in("longkey"), "wb");
    fwrite(key, 1, 5001, f);
    fclose(f);
    free(key);
    int st = 0;
    ck_assert_int_eq(start_server(&s, &st, "--model %s --api-key-file %s", model_path, path_in("longkey")), -1);
    ck_assert_int_eq(st, 1);
    char *e = slurp(s.err, NULL);
    ck_assert_msg(strstr(e, "longer than the 4096 bytes"), "%s", e);
    free(e);
    /* a checkpoint whose batch workspace would be huge is refused before it is allocated */
    rnvp_config cfg;
    rnvp_error er;
    rnvp_model *big;
    ck_assert(rnvp_config_parse(&cfg, "{\"height\":4096,\"width\":4096,\"channels\":3,\"num_scales\":1,\"res_blocks\":1,"
                                      "\"features\":[1],\"alpha\":0.05,\"bn_eps\":1e-5,\"flow_batchnorm\":false,"
                                      "\"flow_bn_eps\":1e-4}", &er) == RNVP_OK);
    ck_assert_msg(rnvp_model_init(&big, &cfg, 1, &er) == RNVP_OK, "%s", er.msg);
    ck_assert(rnvp_model_save(big, path_in("huge.safetensors"), NULL, &er) == RNVP_OK);
    rnvp_model_free(big);
    ck_assert_int_eq(start_server(&s, &st, "--model %s", path_in("huge.safetensors")), -1);
    ck_assert_int_eq(st, 1);
    e = slurp(s.err, NULL);
    ck_assert_msg(strstr(e, "--max-workspace-bytes") && strstr(e, "4096 x 4096 x 3"), "%s", e);
    free(e);
}
END_TEST

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *t = tcase_create("server");
    tcase_add_unchecked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 180);
    tcase_add_test(t, test_health_info_metrics);
    tcase_add_test(t, test_log_prob);
    tcase_add_test(t, test_png_conversion);
    tcase_add_test(t, test_encode_decode);
    tcase_add_test(t, test_ood_interpolate_page);
    tcase_add_test(t, test_sample);
    tcase_add_test(t, test_errors);
    tcase_add_test(t, test_limits_small);
    tcase_add_test(t, test_body_sizes);
    tcase_add_test(t, test_api_key);
    tcase_add_test(t, test_queue_full_and_timeout);
    tcase_add_test(t, test_batched_equals_single);
    tcase_add_test(t, test_64_concurrent_clients);
    tcase_add_test(t, test_shutdown_under_load);
    tcase_add_test(t, test_startup_failures);
    tcase_add_test(t, test_clients);
    tcase_add_test(t, test_fair_queue);
    tcase_add_test(t, test_jobs_per_request_and_head);
    tcase_add_test(t, test_cancel_disconnected);
    tcase_add_test(t, test_memory_budget);
    tcase_add_test(t, test_read_timeout);
    tcase_add_test(t, test_drain_bounded);
    tcase_add_test(t, test_small_defects);
    suite_add_tcase(s, t);
    TCase *p = tcase_create("parsers");
    tcase_add_test(p, test_query_parser);
    tcase_add_test(p, test_multipart_parser);
    tcase_add_test(p, test_latents_parser);
    tcase_add_test(p, test_helpers);
    suite_add_tcase(s, p);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    rnvp_blas_select_core(argv);
    return run_suite(server_suite());
}
