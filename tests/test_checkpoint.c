/* test_checkpoint.c: the checkpoint loader (core/checkpoint.c): a save/load round trip, and one
 * test per malformed-file case of docs/format.md "Validation", each asserting the status and that
 * the message names the tensor or field; out-of-range config integers; the context size a loaded
 * model reports (rnvp_ctx_workspace_bytes) against what rnvp_ctx_create allocates. Leaves out the
 * flow's numerics (test_flow.c, test_golden.c).
 *
 * Every malformed file is made from one valid checkpoint (rnvp_model_init + rnvp_model_save into
 * a temporary directory) by editing its JSON header with Jansson, its raw header text, or its
 * data bytes. */
#include "realnvp.h"

#include <check.h>
#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <malloc.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- the valid checkpoint every test starts from (made once in main, inherited by the forks) */

static char g_dir[64];           /* temporary directory */
static char g_path[128];         /* g_dir/valid.safetensors */
static unsigned char *g_file;    /* (g_len) the valid file's bytes */
static size_t g_len;
static rnvp_model *g_model;      /* the model that was saved */

/* 4x4 grey, 2 scales (checkerboard + channel couplings), 1 residual block, flow batch norm:
 * 10 couplings, 270 tensors, about 20 KB. */
static const rnvp_config g_cfg = {.height = 4, .width = 4, .channels = 1, .num_scales = 2,
                                  .res_blocks = 1, .features = {3, 4}, .alpha = 0.05,
                                  .bn_eps = 1e-5, .flow_batchnorm = 1, .flow_bn_eps = 1e-4,
                                  .kernel = 3};

static uint64_t hdr_len(const unsigned char *f)
{
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = h << 8 | f[i];
    return h;
}

/* ---- an editable copy: parsed header + data bytes */

typedef struct ckpt {
    json_t *hdr;            /* the header object (owned) */
    unsigned char *data;    /* (dlen) the data section (owned) */
    size_t dlen;
} ckpt;

static ckpt ck_open(void)
{
    ckpt c;
    uint64_t hl = hdr_len(g_file);
    json_error_t je;
    c.hdr = json_loadb((const char *)g_file + 8, (size_t)hl, 0, &je);
    ck_assert_msg(c.hdr != NULL, "valid header does not parse: %s", je.text);
    c.dlen = g_len - 8 - (size_t)hl;
    c.data = malloc(c.dlen + 1);
    ck_assert_ptr_nonnull(c.data);
    memcpy(c.data, g_file + 8 + hl, c.dlen);
    return c;
}

static void ck_close(ckpt *c)
{
    json_decref(c->hdr);
    free(c->data);
}

/* the file's bytes for a header text and a data section (malloc'd) */
static unsigned char *file_from(const char *htext, size_t hl, const unsigned char *data, size_t dlen,
                                size_t *len)
{
    *len = 8 + hl + dlen;
    unsigned char *f = malloc(*len + 1);
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 8; i++) f[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(f + 8, htext, hl);
    if (dlen) memcpy(f + 8 + hl, data, dlen);
    return f;
}

static unsigned char *ck_bytes(const ckpt *c, size_t *len)
{
    char *js = json_dumps(c->hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    ck_assert_ptr_nonnull(js);
    unsigned char *f = file_from(js, strlen(js), c->data, c->dlen, len);
    free(js);
    return f;
}

static json_t *entry(const ckpt *c, const char *name)
{
    json_t *e = json_object_get(c->hdr, name);
    ck_assert_msg(e != NULL, "no tensor %s in the valid header", name);
    return e;
}

static void set_offsets(ckpt *c, const char *name, json_int_t b, json_int_t e)
{
    ck_assert_int_eq(json_object_set_new(entry(c, name), "data_offsets", json_pack("[I, I]", b, e)), 0);
}

static void get_offsets(const ckpt *c, const char *name, json_int_t *b, json_int_t *e)
{
    json_t *o = json_object_get(entry(c, name), "data_offsets");
    *b = json_integer_value(json_array_get(o, 0));
    *e = json_integer_value(json_array_get(o, 1));
}

/* value i of tensor name (in the data section) */
static void set_value(ckpt *c, const char *name, size_t i, float v)
{
    json_int_t b, e;
    get_offsets(c, name, &b, &e);
    ck_assert((size_t)b + 4 * i + 4 <= (size_t)e);
    memcpy(c->data + b + 4 * i, &v, 4);
}

/* a new data region of n bytes at the end of the data section; returns its offset */
static size_t append_data(ckpt *c, size_t n)
{
    size_t off = c->dlen;
    c->data = realloc(c->data, c->dlen + n + 1);
    ck_assert_ptr_nonnull(c->data);
    memset(c->data + off, 0, n);
    c->dlen += n;
    return off;
}

static json_t *meta(const ckpt *c)
{
    json_t *m = json_object_get(c->hdr, "__metadata__");
    ck_assert_ptr_nonnull(m);
    return m;
}

/* edit the config string: set key to v (a new reference, stolen), or remove it when v is NULL */
static void set_config_key(ckpt *c, const char *key, json_t *v)
{
    json_t *cfg = json_loads(json_string_value(json_object_get(meta(c), "config")), 0, NULL);
    ck_assert_ptr_nonnull(cfg);
    if (v) json_object_set_new(cfg, key, v);
    else ck_assert_int_eq(json_object_del(cfg, key), 0);
    char *s = json_dumps(cfg, JSON_COMPACT);
    json_object_set_new(meta(c), "config", json_string(s));
    free(s);
    json_decref(cfg);
}

/* ---- assertions */

static int is_name_char(int ch) { return isalnum(ch) || ch == '_' || ch == '.'; }

/* msg contains `name` as a whole word (so "flow.1.scale" does not match "flow.11.scale") */
static int names(const char *msg, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = strstr(msg, name); p; p = strstr(p + 1, name)) {
        int before = p == msg || !is_name_char((unsigned char)p[-1]);
        int after = !is_name_char((unsigned char)p[n]);
        if (before && after) return 1;
    }
    return 0;
}

/* Load buf; the load must fail with `want` and the message must name every NULL-terminated
 * argument (as a whole word). Frees buf. */
static void expect_fail_(const char *where, unsigned char *buf, size_t len, enum rnvp_status want, ...)
{
    rnvp_model *m = (rnvp_model *)&m;   /* must be reset to NULL */
    rnvp_error e = {.msg = "unset"};
    enum rnvp_status st = rnvp_model_load_memory(&m, buf, len, &e);
    free(buf);
    if (st == RNVP_OK) rnvp_model_free(m);
    ck_assert_msg(st == want, "%s: status %s, expected %s (message: %s)", where, rnvp_status_name(st),
                  rnvp_status_name(want), st ? e.msg : "none");
    ck_assert_msg(m == NULL, "%s: *out not NULL after a failed load", where);
    ck_assert_msg(e.status == want, "%s: err->status is %d", where, (int)e.status);
    va_list ap;
    va_start(ap, want);
    for (const char *w = va_arg(ap, const char *); w; w = va_arg(ap, const char *))
        ck_assert_msg(names(e.msg, w), "%s: message \"%s\" does not name \"%s\"", where, e.msg, w);
    va_end(ap);
}
#define expect_fail(where, buf, len, want, ...) expect_fail_(where, buf, len, want, __VA_ARGS__, (const char *)NULL)

static rnvp_model *expect_ok(const char *where, unsigned char *buf, size_t len)
{
    rnvp_model *m = NULL;
    rnvp_error e = {.msg = ""};
    enum rnvp_status st = rnvp_model_load_memory(&m, buf, len, &e);
    free(buf);
    ck_assert_msg(st == RNVP_OK, "%s: %s", where, e.msg);
    ck_assert_ptr_nonnull(m);
    return m;
}

/* the loaded model's tensors equal g_model's bit for bit */
static void assert_same_tensors(const rnvp_model *m)
{
    ck_assert_int_eq(rnvp_model_num_tensors(m), rnvp_model_num_tensors(g_model));
    for (int i = 0; i < rnvp_model_num_tensors(m); i++) {
        const rnvp_tensor *a = rnvp_model_tensor(m, i), *b = rnvp_model_tensor(g_model, i);
        ck_assert_str_eq(a->name, b->name);
        ck_assert_int_eq(a->ndim, b->ndim);
        for (int d = 0; d < a->ndim; d++) ck_assert_int_eq(a->shape[d], b->shape[d]);
        ck_assert_uint_eq(a->size, b->size);
        ck_assert_msg(!memcmp(a->data, b->data, a->size * 4), "tensor %s differs", a->name);
    }
}

static const char *tname(int i) { return rnvp_model_tensor(g_model, i)->name; }
static int ntensors(void) { return rnvp_model_num_tensors(g_model); }

/* ---- round trip and files */

START_TEST(roundtrip_save_load)
{
    rnvp_model *m = expect_ok("valid file", memcpy(malloc(g_len), g_file, g_len), g_len);
    assert_same_tensors(m);
    const rnvp_config *c = rnvp_model_config(m);
    ck_assert_int_eq(c->height, 4);
    ck_assert_int_eq(c->width, 4);
    ck_assert_int_eq(c->channels, 1);
    ck_assert_int_eq(c->num_scales, 2);
    ck_assert_int_eq(c->res_blocks, 1);
    ck_assert_int_eq(c->features[0], 3);
    ck_assert_int_eq(c->features[1], 4);
    ck_assert_int_eq(c->flow_batchnorm, 1);
    ck_assert(c->alpha == 0.05 && c->bn_eps == 1e-5 && c->flow_bn_eps == 1e-4);
    ck_assert_str_eq(rnvp_model_metadata(m, "format"), "realnvp");
    ck_assert_str_eq(rnvp_model_metadata(m, "version"), "1");
    ck_assert_str_eq(rnvp_model_metadata(m, "description"), rnvp_model_metadata(g_model, "description"));

    /* the same log_prob as the model that was saved, bit for bit */
    uint8_t px[2 * 16];
    for (int i = 0; i < 32; i++) px[i] = (uint8_t)(i * 37 + 11);
    double lp[2][2];
    rnvp_ctx *cx[2];
    rnvp_error e;
    const rnvp_model *mm[2] = {g_model, m};
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(rnvp_ctx_create(&cx[k], mm[k], 2, &e) == RNVP_OK, "%s", e.msg);
        ck_assert_msg(rnvp_log_prob(cx[k], lp[k], NULL, px, NULL, 2, &e) == RNVP_OK, "%s", e.msg);
        rnvp_ctx_free(cx[k]);
    }
    ck_assert(isfinite(lp[0][0]) && isfinite(lp[0][1]) && lp[0][0] != lp[0][1]);
    ck_assert(lp[0][0] == lp[1][0] && lp[0][1] == lp[1][1]);

    /* save again with extra metadata (overriding one key); load; the same tensors */
    char p2[160];
    snprintf(p2, sizeof p2, "%s/again.safetensors", g_dir);
    const char *extra[] = {"dataset", "unit-test", "description", "second save", NULL};
    ck_assert_msg(rnvp_model_save(m, p2, extra, &e) == RNVP_OK, "%s", e.msg);
    rnvp_model *m2 = NULL;
    ck_assert_msg(rnvp_model_load(&m2, p2, &e) == RNVP_OK, "%s", e.msg);
    assert_same_tensors(m2);
    ck_assert_str_eq(rnvp_model_metadata(m2, "dataset"), "unit-test");
    ck_assert_str_eq(rnvp_model_metadata(m2, "description"), "second save");
    ck_assert_ptr_null(rnvp_model_metadata(m2, "no-such-key"));
    rnvp_model_free(m2);
    rnvp_model_free(m);
    unlink(p2);
}
END_TEST

START_TEST(load_from_disk)
{
    rnvp_model *m = NULL;
    rnvp_error e;
    ck_assert_msg(rnvp_model_load(&m, g_path, &e) == RNVP_OK, "%s", e.msg);
    assert_same_tensors(m);
    rnvp_model_free(m);

    /* a missing path: RNVP_ERR_IO naming the path */
    char p[160];
    snprintf(p, sizeof p, "%s/no-such-file.safetensors", g_dir);
    m = (rnvp_model *)&m;
    ck_assert_int_eq(rnvp_model_load(&m, p, &e), RNVP_ERR_IO);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(e.msg, p) != NULL, "%s", e.msg);

    /* a directory: RNVP_ERR_IO */
    m = (rnvp_model *)&m;
    ck_assert_int_eq(rnvp_model_load(&m, g_dir, &e), RNVP_ERR_IO);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(e.msg, g_dir) != NULL, "%s", e.msg);

    /* a malformed file on disk: RNVP_ERR_FORMAT, the message names the file and the tensor */
    ckpt c = ck_open();
    json_object_set_new(entry(&c, "flow.3.scale"), "dtype", json_string("F16"));
    size_t len;
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    snprintf(p, sizeof p, "%s/bad.safetensors", g_dir);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
    free(b);
    m = (rnvp_model *)&m;
    ck_assert_int_eq(rnvp_model_load(&m, p, &e), RNVP_ERR_FORMAT);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(e.msg, p) == e.msg && names(e.msg, "flow.3.scale") && strstr(e.msg, "F16"), "%s", e.msg);
    unlink(p);

    /* an empty file */
    f = fopen(p, "wb");
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(rnvp_model_load(&m, p, &e), RNVP_ERR_FORMAT);
    ck_assert_msg(strstr(e.msg, "too short") != NULL, "%s", e.msg);
    unlink(p);

    /* saving into a missing directory: RNVP_ERR_IO, nothing left behind */
    snprintf(p, sizeof p, "%s/no/such/dir/m.safetensors", g_dir);
    ck_assert_int_eq(rnvp_model_save(g_model, p, NULL, &e), RNVP_ERR_IO);
}
END_TEST

/* ---- the malformed-file cases */

START_TEST(truncated_file)
{
    uint64_t hl = hdr_len(g_file);
    /* shorter than the 8-byte length */
    for (size_t n = 0; n < 8; n++)
        expect_fail("< 8 bytes", memcpy(malloc(8), g_file, n), n, RNVP_ERR_FORMAT, "header", "length");
    /* cut inside the header: the length runs past the end */
    expect_fail("cut in header", memcpy(malloc(g_len), g_file, 8 + hl / 2), 8 + hl / 2, RNVP_ERR_FORMAT, "header", "length");
    /* cut inside the data: the tensor stored last is outside the data */
    const char *last = tname(ntensors() - 1);
    expect_fail("cut by 1 byte", memcpy(malloc(g_len), g_file, g_len - 1), g_len - 1, RNVP_ERR_FORMAT, last, "data_offsets");
    expect_fail("cut after header", memcpy(malloc(g_len), g_file, 8 + hl), 8 + hl, RNVP_ERR_FORMAT, tname(0), "data_offsets");
    /* every shorter length is refused */
    for (size_t n = 0; n < g_len; n += 7) {
        rnvp_model *m = NULL;
        rnvp_error e = {.msg = ""};
        unsigned char *b = memcpy(malloc(g_len), g_file, n);
        enum rnvp_status st = rnvp_model_load_memory(&m, b, n, &e);
        free(b);
        ck_assert_msg(st == RNVP_ERR_FORMAT && m == NULL && e.msg[0], "length %zu: status %d", n, (int)st);
    }
}
END_TEST

START_TEST(header_length_past_end)
{
    uint64_t lens[] = {g_len - 8 + 1, g_len, (uint64_t)1 << 40, UINT64_MAX, UINT64_MAX - 7};
    for (size_t k = 0; k < sizeof lens / sizeof *lens; k++) {
        unsigned char *b = memcpy(malloc(g_len), g_file, g_len);
        for (int i = 0; i < 8; i++) b[i] = (unsigned char)(lens[k] >> (8 * i));
        expect_fail("header length", b, g_len, RNVP_ERR_FORMAT, "header", "length");
    }
}
END_TEST

/* the header's text, edited: replace the first occurrence of `from` by `to` */
static unsigned char *edit_header_text(const char *from, const char *to, size_t *len)
{
    uint64_t hl = hdr_len(g_file);
    const char *h = (const char *)g_file + 8;
    char *text = malloc(hl + strlen(to) + 1);
    memcpy(text, h, hl);
    text[hl] = 0;
    char *p = strstr(text, from);
    ck_assert_msg(p != NULL, "\"%s\" not in the header", from);
    size_t pre = (size_t)(p - text), fl = strlen(from), tl = strlen(to);
    char *out = malloc(hl + tl + 1);
    memcpy(out, text, pre);
    memcpy(out + pre, to, tl);
    memcpy(out + pre + tl, text + pre + fl, hl - pre - fl);
    unsigned char *f = file_from(out, hl - fl + tl, g_file + 8 + hl, g_len - 8 - hl, len);
    free(text);
    free(out);
    return f;
}

START_TEST(invalid_json)
{
    size_t len;
    unsigned char *b = edit_header_text("\"__metadata__\":", "\"__metadata__\" ", &len);
    expect_fail("missing colon", b, len, RNVP_ERR_FORMAT, "JSON");
    b = edit_header_text("{", "{,", &len);
    expect_fail("stray comma", b, len, RNVP_ERR_FORMAT, "JSON");
    b = edit_header_text("\"F32\"", "\"F32", &len);
    expect_fail("unterminated string", b, len, RNVP_ERR_FORMAT, "JSON");
    b = edit_header_text("\"F32\"", "\"F\xff\x32\"", &len);
    expect_fail("invalid UTF-8", b, len, RNVP_ERR_FORMAT, "JSON");
    b = edit_header_text("\"F32\"", "\"F\\u000032\"", &len);
    expect_fail("NUL in a string", b, len, RNVP_ERR_FORMAT, "JSON");
    /* a header that is JSON but not an object */
    const char *arr = "[1, 2, 3]";
    b = file_from(arr, strlen(arr), NULL, 0, &len);
    expect_fail("array header", b, len, RNVP_ERR_FORMAT, "header", "object");
    /* an empty header */
    b = file_from("", 0, NULL, 0, &len);
    expect_fail("empty header", b, len, RNVP_ERR_FORMAT, "JSON");
    /* trailing garbage after the object (spaces are allowed: writers pad to 8 bytes) */
    uint64_t hl = hdr_len(g_file);
    char *t = malloc(hl + 8);
    memcpy(t, g_file + 8, hl);
    memcpy(t + hl, "   x", 4);
    b = file_from(t, hl + 4, g_file + 8 + hl, g_len - 8 - hl, &len);
    expect_fail("trailing garbage", b, len, RNVP_ERR_FORMAT, "JSON");
    memcpy(t + hl, "    ", 4);
    b = file_from(t, hl + 4, g_file + 8 + hl, g_len - 8 - hl, &len);
    rnvp_model_free(expect_ok("trailing spaces", b, len));
    free(t);
}
END_TEST

START_TEST(duplicate_keys)
{
    size_t len;
    /* a tensor entry twice (the second copy identical) */
    ckpt c = ck_open();
    char *one = json_dumps(entry(&c, "flow.2.scale"), JSON_COMPACT);
    ck_close(&c);
    char from[64], to[512];
    snprintf(from, sizeof from, "\"flow.2.scale\":");
    snprintf(to, sizeof to, "\"flow.2.scale\":%s,\"flow.2.scale\":", one);
    free(one);
    unsigned char *b = edit_header_text(from, to, &len);
    expect_fail("duplicate tensor", b, len, RNVP_ERR_FORMAT, "flow.2.scale", "duplicate");
    /* a metadata key twice */
    b = edit_header_text("\"format\":\"realnvp\"", "\"format\":\"realnvp\",\"format\":\"realnvp\"", &len);
    expect_fail("duplicate metadata key", b, len, RNVP_ERR_FORMAT, "format", "duplicate");
    /* a key twice inside a shape entry */
    b = edit_header_text("\"dtype\":\"F32\"", "\"dtype\":\"F32\",\"dtype\":\"F32\"", &len);
    expect_fail("duplicate dtype", b, len, RNVP_ERR_FORMAT, "dtype", "duplicate");
    /* a key twice inside the config string: which one counts would be a guess */
    c = ck_open();
    const char *cs = json_string_value(json_object_get(meta(&c), "config"));
    ck_assert_ptr_nonnull(strstr(cs, "\"height\":4"));
    char *dup = malloc(strlen(cs) + 32);
    snprintf(dup, strlen(cs) + 32, "{\"height\":4,%s", cs + 1);
    json_object_set_new(meta(&c), "config", json_string(dup));
    free(dup);
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("duplicate config key", b, len, RNVP_ERR_FORMAT, "config", "height", "duplicate");
}
END_TEST

START_TEST(missing_metadata)
{
    size_t len;
    ckpt c = ck_open();
    json_object_del(c.hdr, "__metadata__");
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("no __metadata__", b, len, RNVP_ERR_FORMAT, "__metadata__");

    c = ck_open();
    json_object_set_new(c.hdr, "__metadata__", json_string("format=realnvp"));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("__metadata__ a string", b, len, RNVP_ERR_FORMAT, "__metadata__");

    /* metadata values are strings (docs/model.md section 5.2) */
    c = ck_open();
    json_object_set_new(meta(&c), "steps", json_integer(1000));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("non-string metadata", b, len, RNVP_ERR_FORMAT, "steps", "string");

    /* the three required keys, each missing */
    const char *req[] = {"format", "version", "config"};
    for (int i = 0; i < 3; i++) {
        c = ck_open();
        ck_assert_int_eq(json_object_del(meta(&c), req[i]), 0);
        b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail(req[i], b, len, RNVP_ERR_FORMAT, req[i], "missing");
    }

    /* optional metadata is kept and does not matter */
    c = ck_open();
    json_object_set_new(meta(&c), "dataset", json_string("fashion-mnist"));
    json_object_set_new(meta(&c), "test_bits_per_dim", json_string("3.1"));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    rnvp_model *m = expect_ok("optional metadata", b, len);
    ck_assert_str_eq(rnvp_model_metadata(m, "dataset"), "fashion-mnist");
    ck_assert_str_eq(rnvp_model_metadata(m, "test_bits_per_dim"), "3.1");
    rnvp_model_free(m);
}
END_TEST

START_TEST(missing_config_key)
{
    static const char *keys[] = {"height", "width", "channels", "num_scales", "res_blocks",
                                 "features", "alpha", "bn_eps", "flow_batchnorm", "flow_bn_eps"};
    size_t len;
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        ckpt c = ck_open();
        set_config_key(&c, keys[i], NULL);
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail(keys[i], b, len, RNVP_ERR_FORMAT, "config", keys[i]);
    }
    /* a wrong type or an out-of-range value names the key */
    struct { const char *key; json_t *v; } bad[] = {
        {"height", json_string("4")},       {"channels", json_integer(2)},
        {"num_scales", json_integer(0)},    {"res_blocks", json_integer(-1)},
        {"alpha", json_real(0.5)},          {"bn_eps", json_real(0)},
        {"flow_bn_eps", json_real(-1e-4)},  {"flow_batchnorm", json_string("yes")},
        {"features", json_pack("[i]", 3)},  {"features", json_pack("[i, i]", 3, 0)},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ckpt c = ck_open();
        set_config_key(&c, bad[i].key, bad[i].v);
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail(bad[i].key, b, len, RNVP_ERR_FORMAT, "config", bad[i].key);
    }
    /* height not divisible by 2^(num_scales-1): names both */
    ckpt c = ck_open();
    set_config_key(&c, "height", json_integer(6));
    set_config_key(&c, "num_scales", json_integer(3));
    set_config_key(&c, "features", json_pack("[i, i, i]", 3, 4, 4));
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("divisibility", b, len, RNVP_ERR_FORMAT, "config", "height", "num_scales");
    /* the config string is not JSON / not an object */
    const char *notjson[] = {"{\"height\":4,", "[4, 4]"};
    for (int i = 0; i < 2; i++) {
        c = ck_open();
        json_object_set_new(meta(&c), "config", json_string(notjson[i]));
        b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail("config not an object", b, len, RNVP_ERR_FORMAT, "config");
    }
    /* a config for another shape: the tensors' shapes no longer match (the loader names one) */
    c = ck_open();
    set_config_key(&c, "features", json_pack("[i, i]", 5, 4));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("other features", b, len, RNVP_ERR_FORMAT, "flow.0.net.in_conv.weight_v", "shape");
}
END_TEST

START_TEST(wrong_format)
{
    size_t len;
    const char *bad[] = {"pytorch", "", "realnvp ", "REALNVP"};
    for (int i = 0; i < 4; i++) {
        ckpt c = ck_open();
        json_object_set_new(meta(&c), "format", json_string(bad[i]));
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail(bad[i], b, len, RNVP_ERR_FORMAT, "format", "realnvp");
    }
    ckpt c = ck_open();
    json_object_set_new(meta(&c), "format", json_null());
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("format null", b, len, RNVP_ERR_FORMAT, "format");
}
END_TEST

START_TEST(wrong_version)
{
    size_t len;
    const char *bad[] = {"2", "0", "1.0", "", "v1"};
    for (int i = 0; i < 5; i++) {
        ckpt c = ck_open();
        json_object_set_new(meta(&c), "version", json_string(bad[i]));
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail(bad[i], b, len, RNVP_ERR_FORMAT, "version");
    }
    /* a number, not a string */
    ckpt c = ck_open();
    json_object_set_new(meta(&c), "version", json_integer(1));
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("version 1 as a number", b, len, RNVP_ERR_FORMAT, "version");
}
END_TEST

START_TEST(missing_tensor)
{
    /* every tensor of the table in turn */
    size_t len;
    for (int i = 0; i < ntensors(); i++) {
        ckpt c = ck_open();
        ck_assert_int_eq(json_object_del(c.hdr, tname(i)), 0);
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail(tname(i), b, len, RNVP_ERR_FORMAT, tname(i), "missing");
    }
}
END_TEST

START_TEST(unknown_tensor)
{
    const char *bad[] = {"flow.0.net.extra", "flow.10.scale", "flow.0.net.blocks.1.bn_a.weight",
                         "flow.0.flow_bn.weight", "scale", "training.step", "Train.step",
                         "flow.0.net.in_conv.weight"};
    size_t len;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ckpt c = ck_open();
        size_t off = append_data(&c, 16);
        json_object_set_new(c.hdr, bad[i], json_pack("{s:s, s:[i], s:[I, I]}", "dtype", "F32", "shape", 4,
                                                     "data_offsets", (json_int_t)off, (json_int_t)off + 16));
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail(bad[i], b, len, RNVP_ERR_FORMAT, bad[i], "unknown");
    }
    /* a tensor flow_bn of a model without flow batch norm is unknown too */
    ckpt c = ck_open();
    set_config_key(&c, "flow_batchnorm", json_false());
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("flow_bn without flow_batchnorm", b, len, RNVP_ERR_FORMAT, "unknown", "flow.0.flow_bn.running_mean");
}
END_TEST

START_TEST(train_tensors_ignored)
{
    /* train.* entries are ignored whatever their dtype and shape, as long as their bytes are
     * inside the data and overlap nothing */
    ckpt c = ck_open();
    size_t off = append_data(&c, 64);
    json_object_set_new(c.hdr, "train.adam.m.flow.0.scale", json_pack("{s:s, s:[i], s:[I, I]}", "dtype", "F32", "shape", 1,
                                                                       "data_offsets", (json_int_t)off, (json_int_t)off + 4));
    json_object_set_new(c.hdr, "train.step", json_pack("{s:s, s:[], s:[I, I]}", "dtype", "I64", "shape",
                                                       "data_offsets", (json_int_t)off + 8, (json_int_t)off + 16));
    json_object_set_new(c.hdr, "train.rng", json_pack("{s:s, s:[i, i], s:[I, I]}", "dtype", "U8", "shape", 4, 12,
                                                      "data_offsets", (json_int_t)off + 16, (json_int_t)off + 64));
    json_object_set_new(c.hdr, "train.empty", json_pack("{s:s, s:[i], s:[I, I]}", "dtype", "F32", "shape", 0,
                                                        "data_offsets", (json_int_t)off + 4, (json_int_t)off + 4));
    float nan = NAN;
    memcpy(c.data + off, &nan, 4);   /* not checked: not a model tensor */
    size_t len;
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    rnvp_model *m = expect_ok("train.* tensors", b, len);
    assert_same_tensors(m);
    for (int i = 0; i < rnvp_model_num_tensors(m); i++)
        ck_assert_msg(strncmp(rnvp_model_tensor(m, i)->name, "train.", 6), "train.* tensor kept");
    rnvp_model_free(m);
}
END_TEST

START_TEST(train_tensor_offsets_checked)
{
    size_t len;
    /* outside the data */
    ckpt c = ck_open();
    json_object_set_new(c.hdr, "train.step", json_pack("{s:s, s:[], s:[I, I]}", "dtype", "I64", "shape", "data_offsets",
                                                       (json_int_t)c.dlen, (json_int_t)c.dlen + 8));
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("train.* outside", b, len, RNVP_ERR_FORMAT, "train.step", "data_offsets");
    /* overlapping a model tensor */
    c = ck_open();
    json_int_t tb, te;
    get_offsets(&c, "flow.4.scale", &tb, &te);
    json_object_set_new(c.hdr, "train.m", json_pack("{s:s, s:[i], s:[I, I]}", "dtype", "F32", "shape", 1,
                                                    "data_offsets", tb, tb + 4));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("train.* overlap", b, len, RNVP_ERR_FORMAT, "train.m", "flow.4.scale", "overlaps");
    /* an entry that is not an object */
    c = ck_open();
    json_object_set_new(c.hdr, "train.x", json_integer(3));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("train.* not an object", b, len, RNVP_ERR_FORMAT, "train.x");
}
END_TEST

START_TEST(wrong_dtype)
{
    const char *names_[] = {"flow.0.net.in_conv.weight_v", "flow.9.scale", "flow.5.flow_bn.running_var",
                            "flow.7.net.blocks.0.bn_a.running_mean"};
    const char *dts[] = {"F16", "F64", "BF16", "I32", "f32", ""};
    size_t len;
    for (size_t i = 0; i < sizeof names_ / sizeof *names_; i++)
        for (size_t k = 0; k < sizeof dts / sizeof *dts; k++) {
            ckpt c = ck_open();
            json_object_set_new(entry(&c, names_[i]), "dtype", json_string(dts[k]));
            unsigned char *b = ck_bytes(&c, &len);
            ck_close(&c);
            expect_fail(dts[k], b, len, RNVP_ERR_FORMAT, names_[i], "dtype");
        }
    /* missing, or not a string */
    ckpt c = ck_open();
    json_object_del(entry(&c, "flow.1.scale"), "dtype");
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("no dtype", b, len, RNVP_ERR_FORMAT, "flow.1.scale", "dtype");
    c = ck_open();
    json_object_set_new(entry(&c, "flow.1.scale"), "dtype", json_integer(32));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("dtype 32", b, len, RNVP_ERR_FORMAT, "flow.1.scale", "dtype");
    /* an entry that is not an object */
    c = ck_open();
    json_object_set_new(c.hdr, "flow.1.scale", json_string("F32"));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("entry a string", b, len, RNVP_ERR_FORMAT, "flow.1.scale");
}
END_TEST

START_TEST(wrong_shape)
{
    size_t len;
    struct { const char *name; json_t *shape; } bad[] = {
        {"flow.0.scale", json_pack("[i]", 2)},                      /* [1] */
        {"flow.0.scale", json_pack("[i, i]", 1, 1)},                /* ndim */
        {"flow.0.scale", json_pack("[]")},
        {"flow.0.scale", json_pack("[s]", "1")},
        {"flow.0.scale", json_integer(1)},
        {"flow.6.net.out_conv.weight_g", json_pack("[i]", 3)},      /* [4] */
        {"flow.3.net.in_conv.weight_v", json_pack("[i, i, i, i]", 3, 3, 3, 3)},   /* [3, 2, 3, 3] */
        {"flow.3.net.in_conv.weight_v", json_pack("[i, i, i, i]", 2, 2, 3, 3)},
        {"flow.3.net.in_conv.weight_v", json_pack("[i, i, i]", 3, 1, 9)},
        {"flow.3.net.in_conv.weight_v", json_pack("[i, i, i, I]", 3, 1, 3, (json_int_t)1 << 40)},
        {"flow.3.net.in_conv.weight_v", json_pack("[i, i, i, i]", 3, 1, 3, -3)},
        {"flow.7.net.blocks.0.conv_b.weight_v", json_pack("[i, i, i, i]", 4, 3, 3, 3)},  /* [4, 4, 3, 3] */
        {"flow.7.net.bn_out.weight", json_pack("[i]", 0)},          /* [4] */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ckpt c = ck_open();
        json_object_set_new(entry(&c, bad[i].name), "shape", bad[i].shape);
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail(bad[i].name, b, len, RNVP_ERR_FORMAT, bad[i].name);
    }
    /* the kernel size comes from weight_v's shape: an even kernel is refused, naming the tensor */
    ckpt c = ck_open();
    json_object_set_new(entry(&c, "flow.2.net.in_conv.weight_v"), "shape", json_pack("[i, i, i, i]", 3, 2, 2, 2));
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("even kernel", b, len, RNVP_ERR_FORMAT, "flow.2.net.in_conv.weight_v", "kernel");
    c = ck_open();
    json_object_set_new(entry(&c, "flow.2.net.in_conv.weight_v"), "shape", json_pack("[i, i, i, i]", 3, 2, 17, 17));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("kernel 17", b, len, RNVP_ERR_FORMAT, "flow.2.net.in_conv.weight_v", "kernel");
}
END_TEST

START_TEST(overlapping_offsets)
{
    size_t len;
    /* two tensors of one size sharing the same bytes */
    ckpt c = ck_open();
    json_int_t ab, ae, bb, be;
    get_offsets(&c, "flow.1.net.in_conv.weight_g", &ab, &ae);
    get_offsets(&c, "flow.1.net.in_conv.bias", &bb, &be);
    ck_assert_int_eq(ae - ab, be - bb);
    set_offsets(&c, "flow.1.net.in_conv.bias", ab, ae);
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("same bytes", b, len, RNVP_ERR_FORMAT, "flow.1.net.in_conv.weight_g", "flow.1.net.in_conv.bias", "overlaps");

    /* a partial overlap: the last 4 bytes of one are the first 4 of the next */
    c = ck_open();
    get_offsets(&c, "flow.8.scale", &ab, &ae);
    json_int_t n = ae - ab;
    size_t off = append_data(&c, (size_t)(2 * n));
    set_offsets(&c, "flow.8.scale", (json_int_t)off, (json_int_t)off + n);
    get_offsets(&c, "flow.9.scale", &bb, &be);
    ck_assert_int_eq(be - bb, n);
    set_offsets(&c, "flow.9.scale", (json_int_t)off + n - 4, (json_int_t)off + 2 * n - 4);
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("partial overlap", b, len, RNVP_ERR_FORMAT, "flow.8.scale", "flow.9.scale", "overlaps");

    /* a tensor inside a larger one, with an empty train.* span between them in sorted order */
    c = ck_open();
    json_int_t vb, ve;
    get_offsets(&c, "flow.0.net.out_conv.weight_v", &vb, &ve);   /* [2, 3, 1, 1]: 24 bytes */
    get_offsets(&c, "flow.0.scale", &ab, &ae);                   /* [1]: 4 bytes */
    ck_assert_int_ge(ve - vb, 16);
    json_object_set_new(c.hdr, "train.empty", json_pack("{s:s, s:[i], s:[I, I]}", "dtype", "F32", "shape", 0,
                                                        "data_offsets", vb + 4, vb + 4));
    set_offsets(&c, "flow.0.scale", vb + 8, vb + 12);
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("nested past an empty span", b, len, RNVP_ERR_FORMAT, "flow.0.scale", "flow.0.net.out_conv.weight_v", "overlaps");

    /* the same without the empty span */
    c = ck_open();
    set_offsets(&c, "flow.0.scale", vb + 8, vb + 12);
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("nested", b, len, RNVP_ERR_FORMAT, "flow.0.scale", "flow.0.net.out_conv.weight_v", "overlaps");

    /* three tensors: a long one, then two that both start inside it */
    c = ck_open();
    get_offsets(&c, "flow.0.net.in_conv.weight_v", &vb, &ve);    /* [3, 2, 3, 3]: 216 bytes */
    set_offsets(&c, "flow.5.scale", vb + 100, vb + 108);         /* [2] */
    set_offsets(&c, "flow.5.flow_bn.running_mean", vb + 200, vb + 208);
    b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("two inside one", b, len, RNVP_ERR_FORMAT, "flow.0.net.in_conv.weight_v", "overlaps");

    /* tensors that touch (end == next begin) and holes between tensors are fine */
    c = ck_open();
    get_offsets(&c, "flow.9.scale", &ab, &ae);
    off = append_data(&c, (size_t)(ae - ab) + 12);
    set_offsets(&c, "flow.9.scale", (json_int_t)off + 12, (json_int_t)off + 12 + (ae - ab));
    float v[16];
    memcpy(v, c.data + ab, (size_t)(ae - ab));
    memcpy(c.data + off + 12, v, (size_t)(ae - ab));
    b = ck_bytes(&c, &len);
    ck_close(&c);
    rnvp_model *m = expect_ok("hole", b, len);
    assert_same_tensors(m);
    rnvp_model_free(m);
}
END_TEST

START_TEST(out_of_range_offsets)
{
    size_t len;
    const char *nm = "flow.4.net.bn_out.running_var";   /* [3]: 12 bytes */
    ckpt c0 = ck_open();
    json_int_t dl = (json_int_t)c0.dlen;
    ck_close(&c0);
    struct { json_int_t b, e; } bad[] = {
        {dl - 8, dl + 4},  {dl, dl + 12}, {dl + 1000, dl + 1012}, {-12, 0}, {-4, 8}, {12, 0},
        {(json_int_t)1 << 62, ((json_int_t)1 << 62) + 12}, {INT64_MAX - 11, INT64_MAX},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ckpt c = ck_open();
        set_offsets(&c, nm, bad[i].b, bad[i].e);
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail("offsets", b, len, RNVP_ERR_FORMAT, nm, "data_offsets");
    }
    /* not two integers */
    json_t *shapes[] = {json_pack("[i]", 0), json_pack("[i, i, i]", 0, 12, 24), json_pack("[f, f]", 0.0, 12.0),
                        json_pack("[s, s]", "0", "12"), json_null()};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        ckpt c = ck_open();
        json_object_set_new(entry(&c, nm), "data_offsets", shapes[i]);
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail("offsets type", b, len, RNVP_ERR_FORMAT, nm, "data_offsets");
    }
    ckpt c = ck_open();
    json_object_del(entry(&c, nm), "data_offsets");
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("no offsets", b, len, RNVP_ERR_FORMAT, nm, "data_offsets");
}
END_TEST

START_TEST(span_not_matching_shape)
{
    size_t len;
    const char *nm = "flow.2.net.blocks.0.conv_a.weight_v";   /* [3, 3, 3, 3]: 324 bytes */
    int deltas[] = {-4, 4, -1, 1, -324};
    for (size_t i = 0; i < sizeof deltas / sizeof *deltas; i++) {
        ckpt c = ck_open();
        json_int_t b0, e0;
        get_offsets(&c, nm, &b0, &e0);
        ck_assert_int_eq(e0 - b0, 324);
        size_t off = append_data(&c, 400);   /* room, so only the span is wrong */
        set_offsets(&c, nm, (json_int_t)off, (json_int_t)off + 324 + deltas[i]);
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        expect_fail("span", b, len, RNVP_ERR_FORMAT, nm, "data_offsets");
    }
}
END_TEST

static void expect_bad_value(const char *nm, size_t idx, float v, const char *word)
{
    ckpt c = ck_open();
    set_value(&c, nm, idx, v);
    size_t len;
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail(nm, b, len, RNVP_ERR_FORMAT, nm, word);
}

START_TEST(nan_value)
{
    expect_bad_value("flow.0.net.in_conv.weight_v", 0, NAN, "NaN");
    expect_bad_value("flow.9.net.out_conv.bias", 1, -NAN, "NaN");
    expect_bad_value("flow.5.scale", 1, NAN, "NaN");
    expect_bad_value("flow.3.flow_bn.running_var", 0, NAN, "NaN");
    /* a signalling-NaN bit pattern too */
    uint32_t bits = 0x7f800001u;
    float snan;
    memcpy(&snan, &bits, 4);
    expect_bad_value("flow.6.net.blocks.0.bn_b.bias", 2, snan, "NaN");
}
END_TEST

START_TEST(inf_value)
{
    expect_bad_value("flow.0.net.in_conv.weight_g", 2, INFINITY, "infinite");
    expect_bad_value("flow.8.net.blocks.0.conv_b.weight_v", 10, -INFINITY, "infinite");
    expect_bad_value("flow.1.flow_bn.running_mean", 0, INFINITY, "infinite");
    expect_bad_value("flow.4.net.bn_out.running_var", 1, INFINITY, "infinite");
    /* the largest finite float is accepted */
    ckpt c = ck_open();
    set_value(&c, "flow.0.net.in_conv.bias", 0, 3.4028234663852886e38f);
    size_t len;
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    rnvp_model_free(expect_ok("FLT_MAX", b, len));
}
END_TEST

START_TEST(negative_running_var)
{
    expect_bad_value("flow.2.net.bn_out.running_var", 0, -1.0f, "negative");
    expect_bad_value("flow.7.net.blocks.0.bn_a.running_var", 2, -1e-30f, "negative");
    expect_bad_value("flow.0.flow_bn.running_var", 0, -0.5f, "negative");
    /* zero is allowed (eps keeps the square root positive); negative means and biases are normal */
    ckpt c = ck_open();
    set_value(&c, "flow.2.net.bn_out.running_var", 0, 0.0f);
    set_value(&c, "flow.2.net.bn_out.running_mean", 0, -3.0f);
    set_value(&c, "flow.0.flow_bn.running_mean", 0, -2.0f);
    size_t len;
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    rnvp_model_free(expect_ok("zero variance", b, len));
}
END_TEST

START_TEST(null_err_and_random_damage)
{
    /* err may be NULL */
    rnvp_model *m = (rnvp_model *)&m;
    ck_assert_int_eq(rnvp_model_load_memory(&m, g_file, 5, NULL), RNVP_ERR_FORMAT);
    ck_assert_ptr_null(m);
    /* random byte damage: a clean error or a valid model, never a crash (run it under ASan) */
    uint64_t s = 0x9e3779b97f4a7c15ull;
    unsigned char *b = malloc(g_len);
    uint64_t hl = hdr_len(g_file);
    int failed = 0;
    for (int it = 0; it < 1500; it++) {
        memcpy(b, g_file, g_len);
        int nflip = 1 + it % 4;
        for (int k = 0; k < nflip; k++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            uint64_t r = s >> 17;
            /* mostly inside the header, where the structure is */
            size_t pos = (it & 1) ? (size_t)(r % (hl + 8)) : (size_t)(r % g_len);
            b[pos] = (unsigned char)(r >> 40);
        }
        rnvp_error e = {.msg = ""};
        m = NULL;
        enum rnvp_status st = rnvp_model_load_memory(&m, b, g_len, &e);
        if (st) {
            failed++;
            ck_assert_msg(m == NULL && e.msg[0] && st == RNVP_ERR_FORMAT, "iteration %d: status %d, %s", it, (int)st, e.msg);
        } else {
            rnvp_model_free(m);
        }
    }
    free(b);
    ck_assert_int_gt(failed, 500);
}
END_TEST

/* ---- integers from outside: range-checked before they become ints */

/* 2^32 + 3 is 3 once truncated to 32 bits: a value that used to wrap into range */
#define WRAPS_TO_3 ((json_int_t)4294967299LL)

START_TEST(config_integers_out_of_range)
{
    /* each key with a value whose low 32 bits are in range (so a cast to int would accept it),
     * or that is simply too large; the message names the key, the value and the allowed range */
    struct { const char *key; json_t *v; const char *value, *range; } bad[] = {
        {"kernel", json_integer(WRAPS_TO_3), "4294967299", "1..15"},
        {"kernel", json_integer(-4294967293LL), "-4294967293", "1..15"},   /* also 3 in 32 bits */
        {"kernel", json_integer(17), "17", "1..15"},
        {"height", json_integer(4294967300LL), "4294967300", "2..4096"},   /* 4 in 32 bits */
        {"width", json_integer(4294967300LL), "4294967300", "2..4096"},
        {"width", json_integer(8192), "8192", "2..4096"},
        {"channels", json_integer(4294967297LL), "4294967297", "1..3"},
        {"num_scales", json_integer(4294967298LL), "4294967298", "1..8"},
        {"res_blocks", json_integer(4294967297LL), "4294967297", "0..64"},
        {"res_blocks", json_integer(65), "65", "0..64"},
        {"features", json_pack("[I, i]", WRAPS_TO_3, 4), "4294967299", "1..4096"},
        {"features", json_pack("[i, I]", 3, (json_int_t)INT64_MAX), "9223372036854775807", "1..4096"},
    };
    size_t len;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char where[64];
        snprintf(where, sizeof where, "%s = %s", bad[i].key, bad[i].value);
        ckpt c = ck_open();
        set_config_key(&c, bad[i].key, bad[i].v);
        unsigned char *b = ck_bytes(&c, &len);
        ck_close(&c);
        rnvp_error e = {.msg = ""};
        rnvp_model *m = NULL;
        enum rnvp_status st = rnvp_model_load_memory(&m, b, len, &e);
        if (st == RNVP_OK) rnvp_model_free(m);
        ck_assert_msg(st == RNVP_ERR_FORMAT, "%s: status %s (%s)", where, rnvp_status_name(st), e.msg);
        ck_assert_msg(names(e.msg, "config") && names(e.msg, bad[i].key) && strstr(e.msg, bad[i].value) &&
                      strstr(e.msg, bad[i].range), "%s: message \"%s\" lacks the key, value or range %s",
                      where, e.msg, bad[i].range);
        free(b);
    }
    /* flow_batchnorm is 0, 1, true or false: 2^32 + 1 is not 1 */
    ckpt c = ck_open();
    set_config_key(&c, "flow_batchnorm", json_integer(4294967297LL));
    unsigned char *b = ck_bytes(&c, &len);
    ck_close(&c);
    expect_fail("flow_batchnorm", b, len, RNVP_ERR_FORMAT, "config", "flow_batchnorm");

    /* the same through rnvp_config_parse; the largest kernel in range still parses */
    c = ck_open();
    json_t *cfg = json_loads(json_string_value(json_object_get(meta(&c), "config")), 0, NULL);
    ck_close(&c);
    ck_assert_ptr_nonnull(cfg);
    const json_int_t kernels[] = {WRAPS_TO_3, 15};
    for (int i = 0; i < 2; i++) {
        json_object_set_new(cfg, "kernel", json_integer(kernels[i]));
        char *js = json_dumps(cfg, JSON_COMPACT);
        rnvp_config rc;
        rnvp_error e = {.msg = ""};
        enum rnvp_status st = rnvp_config_parse(&rc, js, &e);
        free(js);
        if (i == 0)
            ck_assert_msg(st == RNVP_ERR_FORMAT && e.status == RNVP_ERR_FORMAT &&
                          strstr(e.msg, "\"kernel\" is 4294967299, expected an integer in 1..15"), "%s", e.msg);
        else
            ck_assert_msg(st == RNVP_OK && rc.kernel == 15, "%s", e.msg);
    }
    json_decref(cfg);
}
END_TEST

/* ---- the context's size, reported before it is made */

/* ASan replaces malloc: mallinfo2 then counts nothing, and its allocator maps memory its own way */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

/* bytes the allocator has handed out (all arenas, and its mmap'd blocks) */
static size_t heap_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

/* workspace(m, n) is what rnvp_ctx_create allocates: rnvp_ctx_bytes, and the allocator's count */
static void assert_workspace_exact(const rnvp_model *m, int n, int measure)
{
    rnvp_error e;
    size_t w = rnvp_ctx_workspace_bytes(m, n);
    ck_assert_uint_lt(w, SIZE_MAX);
    size_t before = heap_in_use();
    rnvp_ctx *ctx = NULL;
    ck_assert_msg(rnvp_ctx_create(&ctx, m, n, &e) == RNVP_OK, "%s", e.msg);
    size_t delta = heap_in_use() - before;
    ck_assert_msg(rnvp_ctx_bytes(ctx) == w, "max_batch %d (%s, %d threads): rnvp_ctx_bytes %zu, workspace_bytes %zu",
                  n, rnvp_ctx_conv_kernel(ctx), rnvp_ctx_threads(ctx), rnvp_ctx_bytes(ctx), w);
    /* one thread (no pool): what malloc handed out is the workspace plus malloc's own rounding
     * (chunk headers, alignment, whole pages for a mapped block) */
#ifdef UNDER_ASAN
    measure = 0;
#endif
    if (measure)
        ck_assert_msg(delta >= w && delta <= w + 8192, "max_batch %d: allocated %zu bytes, reported %zu", n, delta, w);
    rnvp_ctx_free(ctx);
}

START_TEST(ctx_workspace_bytes_exact)
{
    /* both convolution kernels, one and two threads */
    for (int blas = 0; blas < 2; blas++) {
        if (blas) setenv("REALNVP_CONV", "blas", 1);
        else unsetenv("REALNVP_CONV");
        for (int threads = 1; threads <= 2; threads++) {
            rnvp_set_num_threads(threads);
            const int ns[] = {1, 2, 7, 64, 200};
            for (int i = 0; i < 5; i++) assert_workspace_exact(g_model, ns[i], threads == 1);
            /* strictly growing, and linear up to the 64-byte rounding */
            for (int n = 1; n < 300; n++)
                ck_assert_uint_gt(rnvp_ctx_workspace_bytes(g_model, n + 1), rnvp_ctx_workspace_bytes(g_model, n));
            for (int n = 32; n <= 512; n *= 2) {
                size_t w1 = rnvp_ctx_workspace_bytes(g_model, n), w2 = rnvp_ctx_workspace_bytes(g_model, 2 * n),
                       w3 = rnvp_ctx_workspace_bytes(g_model, 3 * n);
                ck_assert_msg(w3 - w2 + 64 >= w2 - w1 && w2 - w1 + 64 >= w3 - w2, "n %d: %zu %zu %zu", n, w1, w2, w3);
            }
        }
    }
    unsetenv("REALNVP_CONV");
    rnvp_set_num_threads(1);
    /* max_batch out of range, no model: SIZE_MAX, as rnvp_ctx_create refuses them */
    ck_assert_uint_eq(rnvp_ctx_workspace_bytes(g_model, 0), SIZE_MAX);
    ck_assert_uint_eq(rnvp_ctx_workspace_bytes(g_model, -1), SIZE_MAX);
    ck_assert_uint_eq(rnvp_ctx_workspace_bytes(g_model, RNVP_MAX_BATCH + 1), SIZE_MAX);
    ck_assert_uint_eq(rnvp_ctx_workspace_bytes(NULL, 1), SIZE_MAX);
    ck_assert_uint_lt(rnvp_ctx_workspace_bytes(g_model, RNVP_MAX_BATCH), SIZE_MAX);
    rnvp_ctx *ctx = (rnvp_ctx *)&ctx;
    rnvp_error e;
    ck_assert_int_eq(rnvp_ctx_create(&ctx, g_model, RNVP_MAX_BATCH + 1, &e), RNVP_ERR_ARG);
    ck_assert_ptr_null(ctx);
}
END_TEST

START_TEST(ctx_workspace_bytes_by_hand)
{
    /* 4x4 grey, one scale, no residual blocks, one feature, 3x3 kernels: 4 checkerboard
     * couplings, each seeing (C, H, W) = (1, 4, 4) with a net input of 2 channels. With the
     * OpenBLAS kernel, for N images, in floats: x, tmp, zc, zin 16N each; netin 2*16N; h and t
     * 16N each; out (s and t) 2*16N; im2col of in_conv 2*9*16N (the largest); no guards or
     * panels: 448N floats, plus N doubles of log-dets = 1800N bytes, a multiple of 64 when 8
     * divides N; plus the context's handle. For N = 1 the direct kernel's panel with room for its
     * bf16 pairs ((2*9 + 9)*32 + 16 floats) is larger than the im2col buffer: 1040 floats + 1
     * double = 4168, 4224 rounded. */
    rnvp_config cfg = {.height = 4, .width = 4, .channels = 1, .num_scales = 1, .res_blocks = 0,
                       .features = {1}, .alpha = 0.05, .bn_eps = 1e-5, .flow_batchnorm = 0,
                       .flow_bn_eps = 1e-4, .kernel = 3};
    rnvp_model *m = NULL;
    rnvp_error e;
    ck_assert_msg(rnvp_model_init(&m, &cfg, 3, &e) == RNVP_OK, "%s", e.msg);
    setenv("REALNVP_CONV", "blas", 1);
    size_t handle = rnvp_ctx_workspace_bytes(m, 8) - 1800 * 8;
    ck_assert_msg(handle > 0 && handle < 1024, "handle %zu", handle);
    for (int n = 8; n <= 4096; n *= 2) ck_assert_uint_eq(rnvp_ctx_workspace_bytes(m, n), 1800 * (size_t)n + handle);
    ck_assert_uint_eq(rnvp_ctx_workspace_bytes(m, 1), 4224 + handle);
    assert_workspace_exact(m, 8, 1);
    assert_workspace_exact(m, 1, 1);
    unsetenv("REALNVP_CONV");
    rnvp_model_free(m);
}
END_TEST

/* address space the process has mapped (bytes) */
static size_t vm_size(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f) {
        if (fscanf(f, "%lu", &pages) != 1) pages = 0;
        fclose(f);
    }
    return (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
}

START_TEST(huge_image_small_file)
{
    /* a valid model for 4096x4096 RGB images with one feature per scale: a file of about 30 KB
     * whose context would need gigabytes */
    rnvp_config cfg = {.height = 4096, .width = 4096, .channels = 3, .num_scales = 3, .res_blocks = 0,
                       .features = {1, 1, 1}, .alpha = 0.05, .bn_eps = 1e-5, .flow_batchnorm = 1,
                       .flow_bn_eps = 1e-4, .kernel = 3};
    rnvp_model *m0 = NULL;
    rnvp_error e;
    ck_assert_msg(rnvp_model_init(&m0, &cfg, 5, &e) == RNVP_OK, "%s", e.msg);
    char p[160];
    snprintf(p, sizeof p, "%s/big.safetensors", g_dir);
    ck_assert_msg(rnvp_model_save(m0, p, NULL, &e) == RNVP_OK, "%s", e.msg);
    rnvp_model_free(m0);
    FILE *f = fopen(p, "rb");
    ck_assert_ptr_nonnull(f);
    unsigned char *buf = malloc(1 << 20);
    size_t len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    unlink(p);
    ck_assert_msg(len > 0 && len < 64 * 1024, "%zu bytes", len);

    /* it loads, keeping little memory, and under an address-space limit of 256 MB more than
     * the process has now (not checked under ASan) */
    struct rlimit old;
    ck_assert_int_eq(getrlimit(RLIMIT_AS, &old), 0);
#ifndef UNDER_ASAN
    struct rlimit lim = old;
    size_t cap = vm_size() + ((size_t)256 << 20);
    if (old.rlim_cur == RLIM_INFINITY || old.rlim_cur > cap) lim.rlim_cur = cap;
    ck_assert_int_eq(setrlimit(RLIMIT_AS, &lim), 0);
#endif
    size_t before = heap_in_use();
    rnvp_model *m = NULL;
    enum rnvp_status st = rnvp_model_load_memory(&m, buf, len, &e);
    size_t kept = heap_in_use() - before;
    ck_assert_int_eq(setrlimit(RLIMIT_AS, &old), 0);
    free(buf);
    ck_assert_msg(st == RNVP_OK, "%s", e.msg);
    ck_assert_msg(kept < ((size_t)1 << 20), "the loaded model holds %zu bytes", kept);
    ck_assert_int_eq(rnvp_model_dim(m), 3 * 4096 * 4096);

    /* its workspace, reported without allocating: at least x, tmp, zc and zin (D floats each
     * per image), over 1 GB for one image, and linear in max_batch */
    before = heap_in_use();
    size_t w1 = rnvp_ctx_workspace_bytes(m, 1), w2 = rnvp_ctx_workspace_bytes(m, 2),
           w64 = rnvp_ctx_workspace_bytes(m, 64);
    ck_assert_uint_eq(heap_in_use(), before);
    ck_assert_msg(w1 > ((size_t)1 << 30) && w1 >= 4 * sizeof(float) * 3 * 4096 * 4096, "%zu", w1);
    /* affine in max_batch: a part per image (at least those four buffers) and a fixed part (the
     * direct kernels' per-thread panels and guard zones; none with OpenBLAS), each rounded to
     * 64 bytes at most once */
    const size_t slope = w2 - w1;
    ck_assert_msg(slope >= 4 * sizeof(float) * 3 * 4096 * 4096 && slope <= w1, "%zu %zu", w1, w2);
    ck_assert_msg(w64 - w1 + 64 * 64 >= 63 * slope && w64 - w1 <= 63 * slope + 64 * 64, "%zu %zu %zu", w1, w2, w64);
    ck_assert_msg(w1 - slope < ((size_t)64 << 20), "fixed part %zu", w1 - slope);
    rnvp_model_free(m);
}
END_TEST

static Suite *checkpoint_suite(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *t = tcase_create("loader");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, roundtrip_save_load);
    tcase_add_test(t, load_from_disk);
    tcase_add_test(t, truncated_file);
    tcase_add_test(t, header_length_past_end);
    tcase_add_test(t, invalid_json);
    tcase_add_test(t, duplicate_keys);
    tcase_add_test(t, missing_metadata);
    tcase_add_test(t, missing_config_key);
    tcase_add_test(t, wrong_format);
    tcase_add_test(t, wrong_version);
    tcase_add_test(t, missing_tensor);
    tcase_add_test(t, unknown_tensor);
    tcase_add_test(t, train_tensors_ignored);
    tcase_add_test(t, train_tensor_offsets_checked);
    tcase_add_test(t, wrong_dtype);
    tcase_add_test(t, wrong_shape);
    tcase_add_test(t, overlapping_offsets);
    tcase_add_test(t, out_of_range_offsets);
    tcase_add_test(t, span_not_matching_shape);
    tcase_add_test(t, nan_value);
    tcase_add_test(t, inf_value);
    tcase_add_test(t, negative_running_var);
    tcase_add_test(t, null_err_and_random_damage);
    tcase_add_test(t, config_integers_out_of_range);
    tcase_add_test(t, ctx_workspace_bytes_exact);
    tcase_add_test(t, ctx_workspace_bytes_by_hand);
    tcase_add_test(t, huge_image_small_file);
    suite_add_tcase(s, t);
    return s;
}

/* rm -r of the temporary directory (flat) */
static void remove_dir(const char *d)
{
    const char *files[] = {"valid.safetensors", "again.safetensors", "bad.safetensors", "big.safetensors"};
    char p[200];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(p, sizeof p, "%s/%s", d, files[i]);
        unlink(p);
    }
    rmdir(d);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/rnvp-ckpt-XXXXXX", tmp && *tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); return EXIT_FAILURE; }
    snprintf(g_path, sizeof g_path, "%s/valid.safetensors", g_dir);
    rnvp_error e;
    if (rnvp_model_init(&g_model, &g_cfg, 7, &e) || rnvp_model_save(g_model, g_path, NULL, &e)) {
        fprintf(stderr, "test_checkpoint: cannot make the valid checkpoint: %s\n", e.msg);
        remove_dir(g_dir);
        return EXIT_FAILURE;
    }
    FILE *f = fopen(g_path, "rb");
    if (!f || fseek(f, 0, SEEK_END) || (long)(g_len = (size_t)ftell(f)) <= 0 || fseek(f, 0, SEEK_SET) ||
        !(g_file = malloc(g_len)) || fread(g_file, 1, g_len, f) != g_len) {
        fprintf(stderr, "test_checkpoint: cannot read %s back\n", g_path);
        return EXIT_FAILURE;
    }
    fclose(f);
    SRunner *r = srunner_create(checkpoint_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    remove_dir(g_dir);
    rnvp_model_free(g_model);
    free(g_file);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
