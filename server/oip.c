/* oip.c: the Open Inference Protocol v2 over REST (KServe / Triton) without libmicrohttpd: /v2 paths,
 * inference requests (JSON and binary tensors) into validated tensors, metadata and response encoding.
 * Leaves out the request path (oip_endpoints.c), gRPC, shared memory, BYTES/FP16 and classification. */
#include "server.h"

#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const srv_oip_out_names[OIP_NOUT] = {"log_prob", "bits_per_dim", "latents", "image"};

/* ---- paths ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* the percent-decoded segment [s, e) into out (SRV_OIP_NAMELEN bytes): 0, or -1 when it is
 * empty, too long, has a bad escape or decodes to a NUL byte */
static int decode_seg(const char *s, const char *e, char *out)
{
    size_t n = 0;
    if (s == e) return -1;
    for (; s < e; s++) {
        char c = *s;
        if (c == '%') {
            if (e - s < 3 || hexval(s[1]) < 0 || hexval(s[2]) < 0) return -1;
            c = (char)(hexval(s[1]) * 16 + hexval(s[2]));
            s += 2;
            if (!c) return -1;
        }
        if (n + 1 >= SRV_OIP_NAMELEN) return -1;
        out[n++] = c;
    }
    out[n] = 0;
    return 0;
}

int srv_oip_route(const char *path, char *model, char *version)
{
    char m[SRV_OIP_NAMELEN] = "", v[SRV_OIP_NAMELEN] = "";
    size_t len = strcspn(path, "?");
    const char *end = path + len;
    if (len < 3 || strncmp(path, "/v2", 3)) return EP_OTHER;
    /* the segments after "/v2" */
    const char *seg[8][2];
    int ns = 0;
    const char *p = path + 3;
    while (p < end) {
        if (*p != '/' || ns == 8) return EP_OTHER;
        const char *s = ++p;
        while (p < end && *p != '/') p++;
        seg[ns][0] = s, seg[ns][1] = p;
        ns++;
    }
#define SEG_IS(i, lit) (seg[i][1] - seg[i][0] == (long)strlen(lit) && !strncmp(seg[i][0], lit, strlen(lit)))
    int ep = EP_OTHER;
    if (ns == 0) ep = EP_V2_SERVER;
    else if (ns == 2 && SEG_IS(0, "health") && SEG_IS(1, "live")) ep = EP_V2_LIVE;
    else if (ns == 2 && SEG_IS(0, "health") && SEG_IS(1, "ready")) ep = EP_V2_READY;
    else if (ns >= 2 && SEG_IS(0, "models")) {
        if (decode_seg(seg[1][0], seg[1][1], m)) return EP_OTHER;
        int k = 2;
        if (ns >= 4 && SEG_IS(2, "versions")) {
            if (decode_seg(seg[3][0], seg[3][1], v)) return EP_OTHER;
            k = 4;
        }
        if (ns == k) ep = EP_V2_MODEL;
        else if (ns == k + 1 && SEG_IS(k, "ready")) ep = EP_V2_MODEL_READY;
        else if (ns == k + 1 && SEG_IS(k, "infer")) ep = EP_V2_INFER;
    } else if (ns == 2 && SEG_IS(0, "repository") && SEG_IS(1, "index")) ep = EP_V2_REPO_INDEX;
    else if (ns == 4 && SEG_IS(0, "repository") && SEG_IS(1, "models")) {
        if (decode_seg(seg[2][0], seg[2][1], m)) return EP_OTHER;
        if (SEG_IS(3, "load")) ep = EP_V2_REPO_LOAD;
        else if (SEG_IS(3, "unload")) ep = EP_V2_REPO_UNLOAD;
    }
#undef SEG_IS
    if (ep != EP_OTHER) {
        if (model) memcpy(model, m, sizeof m);
        if (version) memcpy(version, v, sizeof v);
    }
    return ep;
}

int srv_oip_is_v2(const char *target)
{
    return target && !strncmp(target, "/v2", 3) && (!target[3] || target[3] == '/' || target[3] == '?');
}

int srv_oip_header_length(const char *value, long long *out, char *err, size_t errcap)
{
    *out = -1;
    if (!value) return 0;
    const char *p = value;
    while (*p == ' ' || *p == '\t') p++;
    long long v = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        if (v > (LLONG_MAX - 9) / 10) digits = 100;   /* too large: refused below */
        else v = v * 10 + (*p - '0');
    }
    while (*p == ' ' || *p == '\t') p++;
    if (!digits || digits > 18 || *p) {
        snprintf(err, errcap, "Inference-Header-Content-Length must be the byte length of the JSON header, not '%.40s'",
                 value);
        return -1;
    }
    *out = v;
    return 0;
}

/* ---- requests ---- */

static const char *in_name(int decoder) { return decoder ? "latents" : "image"; }
static const char *in_type(int decoder) { return decoder ? "FP32" : "UINT8"; }

int srv_oip_precheck(const char *body, size_t len, long long hlen, int decoder, int C, int H, int W, int maxn,
                     size_t *cost, char *err, size_t errcap)
{
    if (hlen > (long long)len) {
        snprintf(err, errcap, "Inference-Header-Content-Length is %lld bytes, more than the whole body (%zu bytes)", hlen,
                 len);
        return -1;
    }
    size_t jl = hlen >= 0 ? (size_t)hlen : len;
    if (!jl) {
        snprintf(err, errcap, "the inference request's JSON header is empty%s",
                 hlen == 0 ? " (Inference-Header-Content-Length: 0)" : "");
        return -1;
    }
    /* Jansson builds the whole tree first: bound it by what maxn tensors of this model need, flat
     * or nested ([N][H][W][C] images: N (1 + H + H W) arrays; [N][D] latents: N arrays) */
    size_t nc, ns;
    size_t c = srv_json_cost(body, jl, &nc, &ns);
    size_t D = (size_t)C * (size_t)H * (size_t)W;
    size_t max_c = (size_t)maxn * (decoder ? 1 : 1 + (size_t)H + (size_t)H * (size_t)W) + SRV_JSON_SLACK;
    size_t max_s = (size_t)maxn * D + 16 * SRV_JSON_SLACK;
    if (nc > max_c || ns > max_s) {
        snprintf(err, errcap, "the request JSON holds more values (%zu arrays or objects, up to %zu numbers) than %d "
                              "tensors of %zu elements need; send at most %d (--max-samples), or binary data",
                 nc, ns, maxn, D, maxn);
        return -1;
    }
    if (cost) *cost = c;
    return 0;
}

void srv_oip_req_clear(srv_oip_req *q)
{
    free(q->pixels);
    free(q->z);
    q->pixels = NULL;
    q->z = NULL;
}

/* a JSON text that failed to parse at pos starts a NaN or Infinity token there (or just before) */
static int nan_near(const char *json, size_t len, int pos)
{
    for (int back = 0; back <= 10 && pos - back >= 0; back++) {
        size_t at = (size_t)(pos - back);
        if (at >= len) continue;
        size_t n = len - at;
        if ((n >= 3 && !strncmp(json + at, "NaN", 3)) || (n >= 8 && !strncmp(json + at, "Infinity", 8))) return 1;
    }
    return 0;
}

/* the parser's state for one input tensor */
typedef struct tensor {
    int decoder, C, H, W;
    size_t D, total;             /* elements per item, all elements */
    long long shape[4];
    int rank;
    uint8_t *pixels;
    float *z;
    char *err;
    size_t errcap;
} tensor;

/* stores element k (row-major in the v2 layout) of value x; -1 with err */
static int put(tensor *t, size_t k, json_t *v)
{
    if (!t->decoder) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 255) {
            snprintf(t->err, t->errcap, "image data element %zu is not an integer in 0..255 (UINT8)", k);
            return -1;
        }
        /* (N, H, W, C) -> (N, C, H, W) */
        size_t C = (size_t)t->C, W = (size_t)t->W, H = (size_t)t->H;
        size_t c = k % C, w = k / C % W, h = k / (C * W) % H, n = k / t->D;
        t->pixels[n * t->D + c * H * W + h * W + w] = (uint8_t)json_integer_value(v);
        return 0;
    }
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!json_is_number(v) || !isfinite(x) || fabs(x) > FLT_MAX) {
        snprintf(t->err, t->errcap, "latents data element %zu (vector %zu, index %zu) is not a finite float32 number", k,
                 k / t->D, k % t->D);
        return -1;
    }
    t->z[k] = (float)x;
    return 0;
}

/* data nested exactly as the shape: the array at depth d has shape[d] entries */
static int put_nested(tensor *t, json_t *a, int d, size_t *k)
{
    if (!json_is_array(a) || (long long)json_array_size(a) != t->shape[d]) {
        char what[64];
        if (json_is_array(a)) snprintf(what, sizeof what, "an array at depth %d has %zu entries", d, json_array_size(a));
        else snprintf(what, sizeof what, "a value at depth %d is not an array", d);
        snprintf(t->err, t->errcap, "%s \"data\" must be a flat array of %zu numbers or arrays nested as the shape; "
                 "%s, not %lld", in_name(t->decoder), t->total, what, t->shape[d]);
        return -1;
    }
    for (size_t i = 0; i < json_array_size(a); i++) {
        json_t *v = json_array_get(a, i);
        if (d + 1 < t->rank) {
            if (put_nested(t, v, d + 1, k)) return -1;
        } else if (json_is_array(v)) {
            snprintf(t->err, t->errcap, "%s \"data\" is nested deeper than its shape (%d dimensions)", in_name(t->decoder),
                     t->rank);
            return -1;
        } else if (put(t, (*k)++, v)) return -1;
    }
    return 0;
}

static int put_json(tensor *t, json_t *data)
{
    if (!json_is_array(data)) {
        snprintf(t->err, t->errcap, "%s \"data\" must be an array", in_name(t->decoder));
        return -1;
    }
    size_t k = 0;
    if (json_array_size(data) && !json_is_array(json_array_get(data, 0))) {   /* flat */
        if (json_array_size(data) != t->total) {
            snprintf(t->err, t->errcap, "%s \"data\" has %zu elements; its shape needs %zu", in_name(t->decoder),
                     json_array_size(data), t->total);
            return -1;
        }
        for (size_t i = 0; i < t->total; i++)
            if (put(t, i, json_array_get(data, i))) return -1;
        return 0;
    }
    return put_nested(t, data, 0, &k);
}

static int put_binary(tensor *t, const unsigned char *p)
{
    if (!t->decoder) {
        size_t C = (size_t)t->C, W = (size_t)t->W, H = (size_t)t->H;
        for (size_t k = 0; k < t->total; k++) {
            size_t c = k % C, w = k / C % W, h = k / (C * W) % H, n = k / t->D;
            t->pixels[n * t->D + c * H * W + h * W + w] = p[k];
        }
        return 0;
    }
    for (size_t k = 0; k < t->total; k++) {
        const unsigned char *b = p + 4 * k;
        uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
        float x;
        memcpy(&x, &u, sizeof x);
        if (!isfinite(x)) {
            snprintf(t->err, t->errcap, "latents element %zu (vector %zu, index %zu) is %s; latents must be finite", k,
                     k / t->D, k % t->D, isnan(x) ? "NaN" : "infinite");
            return -1;
        }
        t->z[k] = x;
    }
    return 0;
}

/* a parameters object: absent (NULL) or an object; -1 with err */
static int get_params(json_t *parent, const char *what, json_t **out, char *err, size_t errcap)
{
    *out = json_object_get(parent, "parameters");
    if (*out && !json_is_object(*out)) {
        snprintf(err, errcap, "\"parameters\" of %s must be an object", what);
        return -1;
    }
    return 0;
}

/* optional boolean parameter key of params into *v (unchanged when absent); -1 with err */
static int get_bool(json_t *params, const char *key, const char *what, int *v, char *err, size_t errcap)
{
    json_t *x = params ? json_object_get(params, key) : NULL;
    if (!x) return 0;
    if (!json_is_boolean(x)) {
        snprintf(err, errcap, "parameter \"%s\" of %s must be true or false", key, what);
        return -1;
    }
    *v = json_is_true(x);
    return 0;
}

/* refuses the parameters of features this server does not have */
static int unsupported(json_t *params, const char *what, char *err, size_t errcap)
{
    static const char *const keys[] = {"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset",
                                       "classification", NULL};
    for (int i = 0; params && keys[i]; i++)
        if (json_object_get(params, keys[i])) {
            snprintf(err, errcap, "parameter \"%s\" of %s is not supported by this server (no %s)", keys[i], what,
                     i < 3 ? "shared memory" : "classification extension");
            return -1;
        }
    return 0;
}

/* the input tensor: its shape and datatype checked, its data (JSON or binary) stored; *used gets
 * its binary bytes. -1 with err. */
static int parse_input(srv_oip_req *q, json_t *in, int C, int H, int W, int maxn, const char *bin, size_t binlen,
                       size_t *used, char *err, size_t errcap)
{
    int dec = q->decoder;
    const char *name = in_name(dec);
    json_t *shape = json_object_get(in, "shape"), *dt = json_object_get(in, "datatype"), *params;
    if (get_params(in, "the input", &params, err, errcap) || unsupported(params, "the input", err, errcap)) return -1;
    if (!json_is_string(dt)) {
        snprintf(err, errcap, "input \"%s\" lacks \"datatype\" (%s)", name, in_type(dec));
        return -1;
    }
    if (strcmp(json_string_value(dt), in_type(dec))) {
        snprintf(err, errcap, "input \"%s\" has datatype %.40s; this model takes %s", name, json_string_value(dt),
                 in_type(dec));
        return -1;
    }
    size_t D = (size_t)C * (size_t)H * (size_t)W;
    long long want[4] = {-1, H, W, C};
    int rank = 4;
    if (dec) want[1] = (long long)D, rank = 2;
    char expect[96];
    if (dec) snprintf(expect, sizeof expect, "[N, %zu] (N latent vectors of D = %zu)", D, D);
    else snprintf(expect, sizeof expect, "[N, %d, %d, %d] (N images of H x W x C)", H, W, C);
    if (!json_is_array(shape) || (int)json_array_size(shape) != rank) {
        snprintf(err, errcap, "input \"%s\" must have shape %s", name, expect);
        return -1;
    }
    tensor t = {.decoder = dec, .C = C, .H = H, .W = W, .D = D, .rank = rank, .err = err, .errcap = errcap};
    for (int i = 0; i < rank; i++) {
        json_t *v = json_array_get(shape, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            snprintf(err, errcap, "input \"%s\": shape entries must be non-negative integers; expected %s", name, expect);
            return -1;
        }
        t.shape[i] = json_integer_value(v);
        if (i && t.shape[i] != want[i]) {
            snprintf(err, errcap, "input \"%s\" has shape dimension %d = %lld; this model needs %s", name, i, t.shape[i],
                     expect);
            return -1;
        }
    }
    if (t.shape[0] < 1 || t.shape[0] > maxn) {
        snprintf(err, errcap, "input \"%s\" has N = %lld %s; send 1..%d per request (--max-samples)", name, t.shape[0],
                 dec ? "vectors" : "images", maxn);
        return -1;
    }
    int n = (int)t.shape[0];
    t.total = (size_t)n * D;
    size_t isz = dec ? 4 : 1;
    json_t *data = json_object_get(in, "data");
    json_t *bds = params ? json_object_get(params, "binary_data_size") : NULL;
    if (bds && data) {
        snprintf(err, errcap, "input \"%s\" has both \"data\" and parameter \"binary_data_size\"", name);
        return -1;
    }
    if (!bds && !data) {
        snprintf(err, errcap, "input \"%s\" has neither \"data\" nor parameter \"binary_data_size\"", name);
        return -1;
    }
    if (bds) {
        if (!json_is_integer(bds) || json_integer_value(bds) < 0) {
            snprintf(err, errcap, "parameter \"binary_data_size\" of input \"%s\" must be a non-negative integer", name);
            return -1;
        }
        unsigned long long sz = (unsigned long long)json_integer_value(bds);
        if (sz != (unsigned long long)(t.total * isz)) {
            snprintf(err, errcap, "input \"%s\": binary_data_size is %llu bytes; shape [%d, ...] of %s needs %zu", name, sz,
                     n, in_type(dec), t.total * isz);
            return -1;
        }
        if (!bin) {
            snprintf(err, errcap, "input \"%s\" has binary_data_size but the request has no Inference-Header-Content-Length "
                                  "header (the JSON header's length, before the binary data)", name);
            return -1;
        }
        if (sz > binlen) {
            snprintf(err, errcap, "input \"%s\": binary_data_size is %llu bytes but only %zu bytes follow the JSON header",
                     name, sz, binlen);
            return -1;
        }
    }
    if (dec) t.z = malloc(t.total * sizeof *t.z);
    else t.pixels = malloc(t.total);
    if (!t.z && !t.pixels) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    int rc = bds ? put_binary(&t, (const unsigned char *)bin) : put_json(&t, data);
    if (rc) {
        free(t.z);
        free(t.pixels);
        return -1;
    }
    q->n = n;
    q->pixels = t.pixels;
    q->z = t.z;
    *used = bds ? t.total * isz : 0;
    return 0;
}

static int parse_root(srv_oip_req *q, json_t *root, const char *body, size_t len, long long hlen, int C, int H, int W,
                      int maxn, int max_draws, char *err, size_t errcap)
{
    int dec = q->decoder;
    if (!json_is_object(root)) {
        snprintf(err, errcap, "the inference request must be a JSON object {\"inputs\": [...], \"outputs\": [...]}");
        return -1;
    }
    json_t *id = json_object_get(root, "id");
    if (id) {
        if (!json_is_string(id) || json_string_length(id) >= SRV_OIP_NAMELEN) {
            snprintf(err, errcap, "\"id\" must be a string of at most %d bytes", SRV_OIP_NAMELEN - 1);
            return -1;
        }
        memcpy(q->id, json_string_value(id), json_string_length(id) + 1);
        q->has_id = 1;
    }
    /* request parameters: binary_data_output, samples, seed; others (priority, timeout, ...) are ignored */
    json_t *params;
    int bin_all = 0;
    if (get_params(root, "the request", &params, err, errcap) ||
        get_bool(params, "binary_data_output", "the request", &bin_all, err, errcap))
        return -1;
    json_t *smp = params ? json_object_get(params, "samples") : NULL, *sd = params ? json_object_get(params, "seed") : NULL;
    if (smp) {
        if (dec) {
            snprintf(err, errcap, "parameter \"samples\" (dequantization draws) applies to model log_prob outputs, not to "
                                  "the decoder");
            return -1;
        }
        if (!json_is_integer(smp) || json_integer_value(smp) < 1 || json_integer_value(smp) > max_draws) {
            snprintf(err, errcap, "parameter \"samples\" must be an integer in 1..%d (--max-draws)", max_draws);
            return -1;
        }
        q->samples = (int)json_integer_value(smp);
    }
    if (sd) {
        if (!json_is_integer(sd) || json_integer_value(sd) < 0) {
            snprintf(err, errcap, "parameter \"seed\" must be a non-negative integer");
            return -1;
        }
        if (!q->samples) {
            snprintf(err, errcap, "parameter \"seed\" needs \"samples\" (without samples, u = 0.5 and no noise is drawn)");
            return -1;
        }
        q->seed = (uint64_t)json_integer_value(sd);
        q->seed_given = 1;
    }
    /* inputs */
    json_t *inputs = json_object_get(root, "inputs");
    if (!json_is_array(inputs) || !json_array_size(inputs)) {
        snprintf(err, errcap, "\"inputs\" must be a non-empty array; this model takes one input \"%s\" (%s)", in_name(dec),
                 in_type(dec));
        return -1;
    }
    const char *bin = hlen >= 0 ? body + hlen : NULL;
    size_t binlen = hlen >= 0 ? len - (size_t)hlen : 0, used = 0;
    for (size_t i = 0; i < json_array_size(inputs); i++) {
        json_t *in = json_array_get(inputs, i);
        json_t *nm = json_is_object(in) ? json_object_get(in, "name") : NULL;
        if (!json_is_string(nm)) {
            snprintf(err, errcap, "inputs[%zu] must be an object with a \"name\"", i);
            return -1;
        }
        if (strcmp(json_string_value(nm), in_name(dec))) {
            snprintf(err, errcap, "unknown input \"%.60s\"; this model takes one input \"%s\" (%s)", json_string_value(nm),
                     in_name(dec), in_type(dec));
            return -1;
        }
        if (q->pixels || q->z) {
            snprintf(err, errcap, "input \"%s\" is given twice", in_name(dec));
            return -1;
        }
        size_t u = 0;
        if (parse_input(q, in, C, H, W, maxn, bin ? bin + used : NULL, binlen - used, &u, err, errcap)) return -1;
        used += u;
    }
    if (hlen >= 0 && used != binlen) {
        snprintf(err, errcap, "%zu bytes follow the JSON header (Inference-Header-Content-Length %lld) but the inputs' "
                              "binary_data_size add up to %zu", binlen, hlen, used);
        return -1;
    }
    /* outputs */
    json_t *outputs = json_object_get(root, "outputs");
    if (outputs && !json_is_array(outputs)) {
        snprintf(err, errcap, "\"outputs\" must be an array of {\"name\": ...}");
        return -1;
    }
    int first = dec ? OIP_IMAGE : OIP_LOG_PROB, last = dec ? OIP_IMAGE : OIP_LATENTS;
    char names[64] = "";
    for (int o = first; o <= last; o++)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s\"%s\"", o > first ? ", " : "", srv_oip_out_names[o]);
    if (!outputs || !json_array_size(outputs)) {
        for (int o = first; o <= last; o++) {   /* with samples, the latents too (computed at u = 0.5) */
            q->out[q->nout] = o;
            q->binary[q->nout++] = bin_all;
        }
        return 0;
    }
    for (size_t i = 0; i < json_array_size(outputs); i++) {
        json_t *out = json_array_get(outputs, i);
        json_t *nm = json_is_object(out) ? json_object_get(out, "name") : NULL;
        if (!json_is_string(nm)) {
            snprintf(err, errcap, "outputs[%zu] must be an object with a \"name\"", i);
            return -1;
        }
        int o = first;
        while (o <= last && strcmp(json_string_value(nm), srv_oip_out_names[o])) o++;
        if (o > last) {
            snprintf(err, errcap, "unknown output \"%.60s\"; this model's outputs are %s", json_string_value(nm), names);
            return -1;
        }
        for (int k = 0; k < q->nout; k++)
            if (q->out[k] == o) {
                snprintf(err, errcap, "output \"%s\" is asked for twice", srv_oip_out_names[o]);
                return -1;
            }
        json_t *op;
        int b = bin_all;
        if (get_params(out, "an output", &op, err, errcap) || unsupported(op, "an output", err, errcap) ||
            get_bool(op, "binary_data", "an output", &b, err, errcap))
            return -1;
        q->out[q->nout] = o;
        q->binary[q->nout++] = b;
    }
    if (q->samples) {
        int lp = 0;
        for (int k = 0; k < q->nout; k++) lp |= q->out[k] != OIP_LATENTS;
        if (!lp) {
            snprintf(err, errcap, "parameter \"samples\" averages log_prob and bits_per_dim over draws; this request asks "
                                  "for neither");
            return -1;
        }
    }
    return 0;
}

int srv_oip_parse(srv_oip_req *q, const char *body, size_t len, long long hlen, int decoder, int C, int H, int W,
                  int maxn, int max_draws, char *err, size_t errcap)
{
    memset(q, 0, sizeof *q);
    q->decoder = decoder;
    if (srv_oip_precheck(body, len, hlen, decoder, C, H, W, maxn, NULL, err, errcap)) return -1;
    size_t jl = hlen >= 0 ? (size_t)hlen : len;
    json_error_t je;
    json_t *root = json_loadb(body, jl, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (nan_near(body, jl, je.position))
            snprintf(err, errcap, "tensor data must be finite numbers; NaN and Infinity are not JSON (line %d)", je.line);
        else
            snprintf(err, errcap, "invalid JSON%s at line %d, column %d: %s",
                     hlen >= 0 ? " in the Inference-Header-Content-Length bytes" : "", je.line, je.column, je.text);
        return -1;
    }
    int rc = parse_root(q, root, body, len, hlen, C, H, W, maxn, max_draws, err, errcap);
    json_decref(root);
    if (rc) {
        srv_oip_req_clear(q);
        q->n = 0;
    }
    return rc;
}

/* ---- responses ---- */

static void put_le(srv_buf *b, uint64_t v, int bytes)
{
    unsigned char c[8];
    for (int i = 0; i < bytes; i++) c[i] = (unsigned char)(v >> (8 * i));
    srv_buf_put(b, c, (size_t)bytes);
}

/* element k of output o in its v2 layout */
static void put_value(srv_buf *b, int o, size_t k, int binary, const srv_oip_results *res, int C, int H, int W)
{
    size_t D = (size_t)C * (size_t)H * (size_t)W;
    if (o == OIP_LOG_PROB || o == OIP_BITS_PER_DIM) {
        double v = (o == OIP_LOG_PROB ? res->log_prob : res->bits_per_dim)[k];
        if (binary) {
            uint64_t u;
            memcpy(&u, &v, sizeof u);
            put_le(b, u, 8);
        } else srv_buf_json_double(b, v, 17);
    } else if (o == OIP_LATENTS) {
        float v = res->z[k];
        if (binary) {
            uint32_t u;
            memcpy(&u, &v, sizeof u);
            put_le(b, u, 4);
        } else srv_buf_json_double(b, (double)v, 9);
    } else {   /* (N, C, H, W) -> (N, H, W, C) */
        size_t c = k % (size_t)C, w = k / (size_t)C % (size_t)W, h = k / ((size_t)C * (size_t)W) % (size_t)H, n = k / D;
        uint8_t v = res->pixels[n * D + c * (size_t)H * (size_t)W + h * (size_t)W + w];
        if (binary) srv_buf_put(b, &v, 1);
        else srv_buf_printf(b, "%u", (unsigned)v);
    }
}

void srv_oip_encode(srv_buf *b, size_t *json_len, const srv_oip_req *q, const srv_oip_results *res,
                    const char *model_name, int C, int H, int W)
{
    size_t D = (size_t)C * (size_t)H * (size_t)W, N = (size_t)q->n;
    static const char *const types[OIP_NOUT] = {"FP64", "FP64", "FP32", "UINT8"};
    static const int isz[OIP_NOUT] = {8, 8, 4, 1};
    int any_binary = 0;
    srv_buf_printf(b, "{\"model_name\": ");
    srv_buf_json_string(b, model_name);
    srv_buf_printf(b, ", \"model_version\": \"1\"");
    if (q->has_id) {
        srv_buf_printf(b, ", \"id\": ");
        srv_buf_json_string(b, q->id);
    }
    if (q->samples) srv_buf_printf(b, ", \"parameters\": {\"samples\": %d, \"seed\": %llu}", q->samples,
                                   (unsigned long long)q->seed);
    srv_buf_printf(b, ", \"outputs\": [");
    for (int i = 0; i < q->nout; i++) {
        int o = q->out[i];
        size_t count = o == OIP_LOG_PROB || o == OIP_BITS_PER_DIM ? N : N * D;
        srv_buf_printf(b, "%s{\"name\": \"%s\", \"datatype\": \"%s\", \"shape\": ", i ? ", " : "", srv_oip_out_names[o],
                       types[o]);
        if (o == OIP_LOG_PROB || o == OIP_BITS_PER_DIM) srv_buf_printf(b, "[%zu]", N);
        else if (o == OIP_LATENTS) srv_buf_printf(b, "[%zu, %zu]", N, D);
        else srv_buf_printf(b, "[%zu, %d, %d, %d]", N, H, W, C);
        if (q->binary[i]) {
            any_binary = 1;
            srv_buf_printf(b, ", \"parameters\": {\"binary_data_size\": %zu}}", count * (size_t)isz[o]);
            continue;
        }
        srv_buf_printf(b, ", \"data\": [");
        for (size_t k = 0; k < count; k++) {
            if (k) srv_buf_put(b, ",", 1);
            put_value(b, o, k, 0, res, C, H, W);
        }
        srv_buf_printf(b, "]}");
    }
    srv_buf_printf(b, "]}");
    if (!any_binary) {
        srv_buf_put(b, "\n", 1);
        *json_len = 0;
        return;
    }
    *json_len = b->len;
    for (int i = 0; i < q->nout; i++) {
        if (!q->binary[i]) continue;
        int o = q->out[i];
        size_t count = o == OIP_LOG_PROB || o == OIP_BITS_PER_DIM ? N : N * D;
        for (size_t k = 0; k < count; k++) put_value(b, o, k, 1, res, C, H, W);
    }
}

void srv_oip_server_metadata(srv_buf *b)
{
    srv_buf_printf(b, "{\"name\": \"realnvp\", \"version\": \"%s\", \"extensions\": [\"binary_tensor_data\", "
                      "\"model_repository\"]}\n", SRV_VERSION);
}

void srv_oip_model_metadata(srv_buf *b, const char *name, const long *versions, int nv, int decoder, int C, int H, int W)
{
    int D = C * H * W;
    srv_buf_printf(b, "{\"name\": ");
    srv_buf_json_string(b, name);
    srv_buf_printf(b, ", \"versions\": [");
    for (int i = 0; i < nv; i++) srv_buf_printf(b, "%s\"%ld\"", i ? ", " : "", versions[i]);
    srv_buf_printf(b, "], \"platform\": \"realnvp\", ");
    if (decoder)
        srv_buf_printf(b, "\"inputs\": [{\"name\": \"latents\", \"datatype\": \"FP32\", \"shape\": [-1, %d]}], "
                          "\"outputs\": [{\"name\": \"image\", \"datatype\": \"UINT8\", \"shape\": [-1, %d, %d, %d]}]}\n",
                       D, H, W, C);
    else
        srv_buf_printf(b, "\"inputs\": [{\"name\": \"image\", \"datatype\": \"UINT8\", \"shape\": [-1, %d, %d, %d]}], "
                          "\"outputs\": [{\"name\": \"log_prob\", \"datatype\": \"FP64\", \"shape\": [-1]}, "
                          "{\"name\": \"bits_per_dim\", \"datatype\": \"FP64\", \"shape\": [-1]}, "
                          "{\"name\": \"latents\", \"datatype\": \"FP32\", \"shape\": [-1, %d]}]}\n",
                       H, W, C, D);
}

int srv_oip_repo_parse(const char *body, size_t len, int *ready_only, char *err, size_t errcap)
{
    if (ready_only) *ready_only = 0;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n')) i++;
    if (i == len) return 0;   /* no body: the defaults */
    if (len > SRV_OIP_REPO_MAX_BODY) {
        snprintf(err, errcap, "a repository request body is at most %d bytes", SRV_OIP_REPO_MAX_BODY);
        return -1;
    }
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errcap, "invalid JSON at line %d, column %d: %s", je.line, je.column, je.text);
        return -1;
    }
    int rc = -1;
    json_t *rd = json_object_get(root, "ready"), *pa = json_object_get(root, "parameters");
    if (!json_is_object(root)) snprintf(err, errcap, "the body must be a JSON object");
    else if (rd && !json_is_boolean(rd)) snprintf(err, errcap, "\"ready\" must be true or false");
    else if (pa && !json_is_object(pa)) snprintf(err, errcap, "\"parameters\" must be an object");
    else {
        if (ready_only) *ready_only = json_is_true(rd);
        rc = 0;
    }
    json_decref(root);
    return rc;
}
