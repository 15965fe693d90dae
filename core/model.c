/* model.c: the model's configuration, its tensor table and parameter block, folding of the
 * inference weights, random initialisation and the accessors. Leaves out file parsing
 * (checkpoint.c) and the flow math (flow.c). */
#include "internal.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- configuration */

static int get_num(json_t *o, const char *key, double *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || !json_is_number(v)) return -1;
    *out = json_number_value(v);
    return 0;
}

/* An integer from the config, range-checked as json_int_t before it is narrowed to int (a
 * value like 2^32 + 3 must not wrap into range). On failure err names the key and the range. */
static enum rnvp_status get_int_value(json_t *v, const char *key, int lo, int hi, int *out,
                                      rnvp_error *err)
{
    if (!v || !json_is_integer(v))
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: key \"%s\" missing or not an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: \"%s\" is %lld, expected an integer in %d..%d",
                         key, (long long)x, lo, hi);
    *out = (int)x;
    return RNVP_OK;
}

enum rnvp_status rnvp_config_parse(rnvp_config *cfg, const char *json, rnvp_error *err)
{
    json_error_t je;
    json_t *o = json_loads(json, 0, &je);
    if (!o) return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: invalid JSON: %s (line %d)",
                             je.text, je.line);
    enum rnvp_status st = RNVP_OK;
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(o)) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "config: not a JSON object"); goto out; }
    /* the ranges of rnvp_config_validate, which checks the rest (channels 1 or 3, divisibility) */
    static const struct { const char *key; int lo, hi; } ints[] = {
        {"height", 2, RNVP_MAX_SIDE}, {"width", 2, RNVP_MAX_SIDE}, {"channels", 1, 3},
        {"num_scales", 1, RNVP_MAX_SCALES}, {"res_blocks", 0, RNVP_MAX_RES_BLOCKS}};
    int *iv[] = {&cfg->height, &cfg->width, &cfg->channels, &cfg->num_scales, &cfg->res_blocks};
    for (int i = 0; i < 5; i++)
        if ((st = get_int_value(json_object_get(o, ints[i].key), ints[i].key, ints[i].lo, ints[i].hi,
                                iv[i], err)))
            goto out;
    static const char *nums[] = {"alpha", "bn_eps", "flow_bn_eps"};
    double *nv[] = {&cfg->alpha, &cfg->bn_eps, &cfg->flow_bn_eps};
    for (int i = 0; i < 3; i++)
        if (get_num(o, nums[i], nv[i])) {
            st = rnvpi_fail(err, RNVP_ERR_FORMAT, "config: key \"%s\" missing or not a number", nums[i]);
            goto out;
        }
    json_t *fb = json_object_get(o, "flow_batchnorm");
    if (fb && json_is_boolean(fb)) cfg->flow_batchnorm = json_is_true(fb);
    else if (fb && json_is_integer(fb) && (json_integer_value(fb) == 0 || json_integer_value(fb) == 1))
        cfg->flow_batchnorm = (int)json_integer_value(fb);
    else { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "config: key \"flow_batchnorm\" missing or not a boolean"); goto out; }
    json_t *f = json_object_get(o, "features");
    if (!f || !json_is_array(f)) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "config: key \"features\" missing or not an array"); goto out; }
    if (json_array_size(f) != (size_t)cfg->num_scales) {
        st = rnvpi_fail(err, RNVP_ERR_FORMAT, "config: \"features\" has %zu values, num_scales is %d",
                       json_array_size(f), cfg->num_scales);
        goto out;
    }
    for (int s = 0; s < cfg->num_scales; s++) {
        char key[32];
        snprintf(key, sizeof key, "features[%d]", s);
        if ((st = get_int_value(json_array_get(f, s), key, 1, RNVP_MAX_FEATURES, &cfg->features[s], err)))
            goto out;
    }
    cfg->kernel = 3;
    json_t *k = json_object_get(o, "kernel");   /* project extension, see docs/format.md */
    if (k && (st = get_int_value(k, "kernel", 1, RNVP_MAX_KERNEL, &cfg->kernel, err))) goto out;
    st = rnvp_config_validate(cfg, err);
out:
    json_decref(o);
    return st;
}

enum rnvp_status rnvp_config_validate(const rnvp_config *c, rnvp_error *err)
{
    if (c->channels != 1 && c->channels != 3)
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: channels is %d, expected 1 or 3", c->channels);
    if (c->num_scales < 1 || c->num_scales > RNVP_MAX_SCALES)
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: num_scales %d out of range 1..%d", c->num_scales, RNVP_MAX_SCALES);
    if (c->height < 2 || c->width < 2 || c->height > RNVP_MAX_SIDE || c->width > RNVP_MAX_SIDE)
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: height x width %d x %d out of range 2..%d",
                         c->height, c->width, RNVP_MAX_SIDE);
    int div = 1 << (c->num_scales - 1);
    if (c->height % div || c->width % div)
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: height %d and width %d must be divisible by 2^(num_scales-1) = %d",
                         c->height, c->width, div);
    if (c->res_blocks < 0 || c->res_blocks > RNVP_MAX_RES_BLOCKS)
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: res_blocks %d out of range 0..%d", c->res_blocks, RNVP_MAX_RES_BLOCKS);
    for (int s = 0; s < c->num_scales; s++)
        if (c->features[s] < 1 || c->features[s] > RNVP_MAX_FEATURES)
            return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: features[%d] = %d out of range 1..%d", s, c->features[s], RNVP_MAX_FEATURES);
    if (!(c->alpha >= 0 && c->alpha < 0.5))
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: alpha %g out of range [0, 0.5)", c->alpha);
    if (!(c->bn_eps > 0 && c->bn_eps < 1))
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: bn_eps %g out of range (0, 1)", c->bn_eps);
    if (!(c->flow_bn_eps > 0 && c->flow_bn_eps < 1))
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: flow_bn_eps %g out of range (0, 1)", c->flow_bn_eps);
    if (c->flow_batchnorm != 0 && c->flow_batchnorm != 1)
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: flow_batchnorm must be true or false");
    if (c->kernel < 1 || c->kernel > RNVP_MAX_KERNEL || c->kernel % 2 == 0)
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: kernel %d must be odd, 1..%d", c->kernel, RNVP_MAX_KERNEL);
    return RNVP_OK;
}

int rnvp_config_to_json(const rnvp_config *c, char *buf, size_t cap)
{
    char feat[RNVP_MAX_SCALES * 12 + 2] = "";
    size_t p = 0;
    for (int s = 0; s < c->num_scales; s++)
        p += (size_t)snprintf(feat + p, sizeof feat - p, "%s%d", s ? "," : "", c->features[s]);
    /* "kernel" is written only when it differs from the default 3x3 (docs/model.md 5.3) */
    char kern[32] = "";
    if (c->kernel && c->kernel != 3) snprintf(kern, sizeof kern, ",\"kernel\":%d", c->kernel);
    return snprintf(buf, cap,
                    "{\"height\":%d,\"width\":%d,\"channels\":%d,\"num_scales\":%d,\"res_blocks\":%d,"
                    "\"features\":[%s],\"alpha\":%.9g,\"bn_eps\":%.9g,\"flow_batchnorm\":%s,"
                    "\"flow_bn_eps\":%.9g%s}",
                    c->height, c->width, c->channels, c->num_scales, c->res_blocks, feat, c->alpha,
                    c->bn_eps, c->flow_batchnorm ? "true" : "false", c->flow_bn_eps, kern);
}

/* ---------------------------------------------------------------- layout */

/* Builder state: appends tensors to the table, counting parameters; pointers are resolved
 * after the block is allocated (they are stored as offsets first). */
typedef struct builder {
    rnvp_model *m;
    int cap_t;
    size_t cap_names, used_names;
    int fail;      /* out of memory, or too_big */
    int too_big;   /* the parameter count does not fit in size_t bytes */
} builder;

static float *add_tensor(builder *b, const char *name, int ndim, int d0, int d1, int d2, int d3)
{
    rnvp_model *m = b->m;
    if (b->fail) return NULL;
    if (m->ntensors == b->cap_t) {
        int nc = b->cap_t ? 2 * b->cap_t : 256;
        rnvp_tensor *t = realloc(m->tensors, (size_t)nc * sizeof *t);
        if (!t) { b->fail = 1; return NULL; }
        m->tensors = t;
        b->cap_t = nc;
    }
    size_t len = strlen(name) + 1;
    if (b->used_names + len > b->cap_names) {
        size_t nc = b->cap_names ? 2 * b->cap_names : 16384;
        while (nc < b->used_names + len) nc *= 2;
        char *s = realloc(m->names, nc);
        if (!s) { b->fail = 1; return NULL; }
        m->names = s;
        b->cap_names = nc;
    }
    memcpy(m->names + b->used_names, name, len);
    rnvp_tensor *t = &m->tensors[m->ntensors++];
    t->name = (const char *)(uintptr_t)b->used_names;   /* resolved later */
    b->used_names += len;
    t->ndim = ndim;
    int d[4] = {d0, d1, d2, d3};
    t->size = 1;
    for (int i = 0; i < 4; i++) {
        t->shape[i] = i < ndim ? d[i] : 1;
        t->size = sz_mul(t->size, (size_t)t->shape[i]);
    }
    t->data = (float *)(uintptr_t)(m->nparams + 1);          /* offset + 1, resolved later */
    m->nparams = sz_add(m->nparams, t->size);
    /* bytes of the block (and of every tensor) fit in size_t; the inference block is smaller */
    if (m->nparams > SIZE_MAX / sizeof(float)) {
        b->fail = b->too_big = 1;
        return NULL;
    }
    return t->data;
}

static void add_conv(builder *b, conv_p *cv, const char *prefix, int cout, int cin, int kh, int kw)
{
    char nm[128];
    cv->cout = cout; cv->cin = cin; cv->kh = kh; cv->kw = kw;
    snprintf(nm, sizeof nm, "%s.weight_v", prefix);
    cv->v = add_tensor(b, nm, 4, cout, cin, kh, kw);
    snprintf(nm, sizeof nm, "%s.weight_g", prefix);
    cv->g = add_tensor(b, nm, 1, cout, 1, 1, 1);
    snprintf(nm, sizeof nm, "%s.bias", prefix);
    cv->b = add_tensor(b, nm, 1, cout, 1, 1, 1);
}

static void add_bn(builder *b, bn_p *bn, const char *prefix, int c)
{
    static const char *sfx[4] = {"weight", "bias", "running_mean", "running_var"};
    float **dst[4] = {&bn->w, &bn->b, &bn->rm, &bn->rv};
    char nm[128];
    bn->c = c;
    for (int i = 0; i < 4; i++) {
        snprintf(nm, sizeof nm, "%s.%s", prefix, sfx[i]);
        *dst[i] = add_tensor(b, nm, 1, c, 1, 1, 1);
    }
}

static float *resolve(float *p, float *base)
{
    return p ? base + ((size_t)(uintptr_t)p - 1) : NULL;
}

static void default_kernel(const rnvp_config *cfg, int K, int conv, int *kh, int *kw)
{
    int k = cfg->kernel ? cfg->kernel : 3;
    *kh = *kw = conv == 1 + 2 * K ? 1 : k;
}

/* The bf16 kernels' weights are made for convolutions of this many input channels or more (the
 * first coupling convolutions, of the image's 1-12 channels, stay float32 throughout). */
#define BF16_MIN_CIN 16

/* F(4x4) weights where an fp32 AVX-512 context may use them (rnvpi_winograd4_on): 4 times the
 * convolution's weights (the 1 GFLOP bench model: 54 MB more) */
static int has_wino4(const conv_p *p)
{
    return p->kh == 3 && p->kw == 3 && p->cin >= RNVPI_WINO4_MIN_CH && p->cout >= RNVPI_WINO4_MIN_CH &&
           rnvpi_winograd4_on();
}

/* Floats of a convolution's derived weights in the infer block beyond w and b: the Winograd ones
 * (16, cout, cin) of a 3x3 convolution, the F(4x4) ones (36, cout, cin) where has_wino4 and, when
 * bf16, the bf16 pairs of w (a float per word). At most 16/9 + 4 + 1/2 of its weights. */
static size_t extra_floats(const conv_p *p, int bf16)
{
    const int wino = p->kh == 3 && p->kw == 3;
    bf16 = bf16 && p->cin >= BF16_MIN_CIN;
    size_t n = wino ? (size_t)16 * p->cout * p->cin : 0;
    if (has_wino4(p)) n += (size_t)36 * p->cout * p->cin;
    if (bf16) n += (size_t)p->cout * (((size_t)p->cin * p->kh * p->kw + 1) / 2);
    return n;
}

/* dst's derived weights (wino, w_bf16) taken from the infer block at *q (extra_floats) */
static void take_extra(conv_i *dst, const conv_p *p, float **q, int bf16)
{
    const int wino = p->kh == 3 && p->kw == 3;
    bf16 = bf16 && p->cin >= BF16_MIN_CIN;
    dst->wino = NULL;
    dst->w_bf16 = NULL;
    dst->wino4 = NULL;
    if (wino) {
        dst->wino = *q;
        *q += (size_t)16 * p->cout * p->cin;
    }
    if (has_wino4(p)) {
        dst->wino4 = *q;
        *q += (size_t)36 * p->cout * p->cin;
    }
    if (bf16) {
        dst->w_bf16 = (uint32_t *)*q;
        *q += (size_t)p->cout * (((size_t)p->cin * p->kh * p->kw + 1) / 2);
    }
}

enum rnvp_status rnvpi_model_layout(rnvp_model **out, const rnvp_config *cfg, kernel_fn kfn, void *user,
                              rnvp_error *err)
{
    *out = NULL;
    enum rnvp_status st = rnvp_config_validate(cfg, err);
    if (st) return st;
    rnvp_model *m = calloc(1, sizeof *m);
    if (!m) return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    m->bf16 = rnvpi_bf16_available();
    int S = cfg->num_scales, K = cfg->res_blocks;
    m->S = S;
    m->L = 6 * (S - 1) + 4;
    m->D = cfg->channels * cfg->height * cfg->width;
    m->cp = calloc((size_t)m->L, sizeof *m->cp);
    if (!m->cp) goto nomem;
    builder b = {.m = m};
    int C = cfg->channels, H = cfg->height, W = cfg->width, k = 0, offset = 0;
    for (int s = 0; s < S; s++) {
        int last = s == S - 1, nchk = last ? 4 : 3;
        for (int i = 0; i < (last ? 4 : 6); i++, k++) {
            coupling *c = &m->cp[k];
            c->kind = i < nchk ? COUPLING_CHECKER : COUPLING_CHANNEL;
            c->parity = i < nchk ? i % 2 : (i - nchk) % 2;
            c->level = s;
            c->C = c->kind == COUPLING_CHECKER ? C : 4 * C;
            c->H = c->kind == COUPLING_CHECKER ? H : H / 2;
            c->W = c->kind == COUPLING_CHECKER ? W : W / 2;
            c->Ct = c->kind == COUPLING_CHECKER ? c->C : c->C / 2;
            c->Cin = c->kind == COUPLING_CHECKER ? c->C + 1 : c->C / 2;
            c->F = cfg->features[s];
            c->K = K;
            c->conv_a = calloc((size_t)K + 1, sizeof *c->conv_a);
            c->conv_b = calloc((size_t)K + 1, sizeof *c->conv_b);
            c->bn_a = calloc((size_t)K + 1, sizeof *c->bn_a);
            c->bn_b = calloc((size_t)K + 1, sizeof *c->bn_b);
            c->i_a = calloc((size_t)K + 1, sizeof *c->i_a);
            c->i_b = calloc((size_t)K + 1, sizeof *c->i_b);
            c->i_bn_a = calloc((size_t)K + 1, sizeof *c->i_bn_a);
            if (!c->conv_a || !c->conv_b || !c->bn_a || !c->bn_b || !c->i_a || !c->i_b || !c->i_bn_a)
                goto nomem;
            int kh, kw;
            char pre[96];
#define KERNEL(conv)                                                                        \
    do {                                                                                    \
        default_kernel(cfg, K, (conv), &kh, &kw);                                           \
        if (kfn && kfn(user, k, (conv), &kh, &kw)) {                                        \
            rnvp_model_free(m);                                                             \
            return rnvpi_fail(err, RNVP_ERR_FORMAT, "flow.%d: bad convolution kernel", k); \
        }                                                                                   \
    } while (0)
            KERNEL(0);
            snprintf(pre, sizeof pre, "flow.%d.net.in_conv", k);
            add_conv(&b, &c->in_conv, pre, c->F, c->Cin, kh, kw);
            for (int j = 0; j < K; j++) {
                snprintf(pre, sizeof pre, "flow.%d.net.blocks.%d.bn_a", k, j);
                add_bn(&b, &c->bn_a[j], pre, c->F);
                KERNEL(1 + 2 * j);
                snprintf(pre, sizeof pre, "flow.%d.net.blocks.%d.conv_a", k, j);
                add_conv(&b, &c->conv_a[j], pre, c->F, c->F, kh, kw);
                snprintf(pre, sizeof pre, "flow.%d.net.blocks.%d.bn_b", k, j);
                add_bn(&b, &c->bn_b[j], pre, c->F);
                KERNEL(2 + 2 * j);
                snprintf(pre, sizeof pre, "flow.%d.net.blocks.%d.conv_b", k, j);
                add_conv(&b, &c->conv_b[j], pre, c->F, c->F, kh, kw);
            }
            snprintf(pre, sizeof pre, "flow.%d.net.bn_out", k);
            add_bn(&b, &c->bn_out, pre, c->F);
            KERNEL(1 + 2 * K);
#undef KERNEL
            snprintf(pre, sizeof pre, "flow.%d.net.out_conv", k);
            add_conv(&b, &c->out_conv, pre, 2 * c->Ct, c->F, kh, kw);
            snprintf(pre, sizeof pre, "flow.%d.scale", k);
            c->scale = add_tensor(&b, pre, 1, c->Ct, 1, 1, 1);
            if (cfg->flow_batchnorm) {
                snprintf(pre, sizeof pre, "flow.%d.flow_bn.running_mean", k);
                c->fbn_mean = add_tensor(&b, pre, 1, c->Ct, 1, 1, 1);
                snprintf(pre, sizeof pre, "flow.%d.flow_bn.running_var", k);
                c->fbn_var = add_tensor(&b, pre, 1, c->Ct, 1, 1, 1);
            }
        }
        rnvp_latent_part *p = &m->parts[s];
        p->offset = offset;
        if (last) { p->channels = C; p->height = H; p->width = W; }
        else { p->channels = 2 * C; p->height = H / 2; p->width = W / 2; }
        offset += p->channels * p->height * p->width;
        if (!last) { C *= 2; H /= 2; W /= 2; }
    }
    if (b.too_big) {
        rnvp_model_free(m);
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "config: the model's parameters would not fit in memory");
    }
    if (b.fail) goto nomem;
    /* inference block: folded conv weights and biases, affine maps, flow-bn inverse std (no
     * overflow: each term is at most its parameters' count, and their sum nparams fits), and the
     * derived weights (up to 6.3 times theirs: saturating sums, calloc fails on SIZE_MAX) */
    size_t ni = 0;
    for (int kk = 0; kk < m->L; kk++) {
        coupling *c = &m->cp[kk];
        ni += c->in_conv.v ? (size_t)c->F * c->Cin * c->in_conv.kh * c->in_conv.kw + c->F : 0;
        for (int j = 0; j < K; j++)
            ni += (size_t)c->F * c->F * (c->conv_a[j].kh * c->conv_a[j].kw + c->conv_b[j].kh * c->conv_b[j].kw) + 2 * (size_t)c->F + 2 * (size_t)c->F;
        ni += 2 * (size_t)c->F + (size_t)2 * c->Ct * c->F * c->out_conv.kh * c->out_conv.kw + 2 * (size_t)c->Ct + c->Ct;
        /* the derived weights of each convolution (extra_floats) */
        const conv_p *all[2] = {&c->in_conv, &c->out_conv};
        for (int i = 0; i < 2; i++) ni = sz_add(ni, extra_floats(all[i], m->bf16));
        for (int j = 0; j < K; j++)
            ni = sz_add(ni, sz_add(extra_floats(&c->conv_a[j], m->bf16), extra_floats(&c->conv_b[j], m->bf16)));
    }
    m->ninfer = ni;
    *out = m;
    return RNVP_OK;
nomem:
    rnvp_model_free(m);
    return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory building the model");
}

enum rnvp_status rnvpi_model_build(rnvp_model **out, const rnvp_config *cfg, kernel_fn kfn, void *user,
                             rnvp_error *err)
{
    enum rnvp_status st = rnvpi_model_layout(out, cfg, kfn, user, err);
    if (st) return st;
    if ((st = rnvpi_model_alloc(*out, err))) {
        rnvp_model_free(*out);
        *out = NULL;
    }
    return st;
}

enum rnvp_status rnvpi_model_alloc(rnvp_model *m, rnvp_error *err)
{
    m->params = calloc(m->nparams ? m->nparams : 1, sizeof(float));
    m->infer = calloc(m->ninfer ? m->ninfer : 1, sizeof(float));
    if (!m->params || !m->infer) return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory for %zu parameters", m->nparams);
    for (int i = 0; i < m->ntensors; i++) {
        m->tensors[i].name = m->names + (size_t)(uintptr_t)m->tensors[i].name;
        m->tensors[i].data = resolve(m->tensors[i].data, m->params);
    }
    float *q = m->infer;
#define TAKE(n) (q += (n), q - (n))
    for (int k = 0; k < m->L; k++) {
        coupling *c = &m->cp[k];
        conv_p *cs[2] = {&c->in_conv, &c->out_conv};
        for (int i = 0; i < 2; i++) {
            cs[i]->v = resolve(cs[i]->v, m->params);
            cs[i]->g = resolve(cs[i]->g, m->params);
            cs[i]->b = resolve(cs[i]->b, m->params);
        }
        for (int j = 0; j < c->K; j++) {
            conv_p *cj[2] = {&c->conv_a[j], &c->conv_b[j]};
            for (int i = 0; i < 2; i++) {
                cj[i]->v = resolve(cj[i]->v, m->params);
                cj[i]->g = resolve(cj[i]->g, m->params);
                cj[i]->b = resolve(cj[i]->b, m->params);
            }
            bn_p *bj[2] = {&c->bn_a[j], &c->bn_b[j]};
            for (int i = 0; i < 2; i++) {
                bj[i]->w = resolve(bj[i]->w, m->params);
                bj[i]->b = resolve(bj[i]->b, m->params);
                bj[i]->rm = resolve(bj[i]->rm, m->params);
                bj[i]->rv = resolve(bj[i]->rv, m->params);
            }
        }
        c->bn_out.w = resolve(c->bn_out.w, m->params);
        c->bn_out.b = resolve(c->bn_out.b, m->params);
        c->bn_out.rm = resolve(c->bn_out.rm, m->params);
        c->bn_out.rv = resolve(c->bn_out.rv, m->params);
        c->scale = resolve(c->scale, m->params);
        c->fbn_mean = resolve(c->fbn_mean, m->params);
        c->fbn_var = resolve(c->fbn_var, m->params);
        /* inference views */
        conv_p *src[2] = {&c->in_conv, &c->out_conv};
        conv_i *dst[2] = {&c->i_in, &c->i_out};
        for (int i = 0; i < 2; i++) {
            dst[i]->cout = src[i]->cout; dst[i]->cin = src[i]->cin;
            dst[i]->kh = src[i]->kh; dst[i]->kw = src[i]->kw;
            dst[i]->w = TAKE((size_t)src[i]->cout * src[i]->cin * src[i]->kh * src[i]->kw);
            dst[i]->b = TAKE((size_t)src[i]->cout);
            take_extra(dst[i], src[i], &q, m->bf16);
        }
        for (int j = 0; j < c->K; j++) {
            conv_p *sj[2] = {&c->conv_a[j], &c->conv_b[j]};
            conv_i *dj[2] = {&c->i_a[j], &c->i_b[j]};
            for (int i = 0; i < 2; i++) {
                dj[i]->cout = sj[i]->cout; dj[i]->cin = sj[i]->cin;
                dj[i]->kh = sj[i]->kh; dj[i]->kw = sj[i]->kw;
                dj[i]->w = TAKE((size_t)sj[i]->cout * sj[i]->cin * sj[i]->kh * sj[i]->kw);
                dj[i]->b = TAKE((size_t)sj[i]->cout);
                take_extra(dj[i], sj[i], &q, m->bf16);
            }
            c->i_bn_a[j].c = c->F;
            c->i_bn_a[j].a = TAKE((size_t)c->F);
            c->i_bn_a[j].s = TAKE((size_t)c->F);
        }
        c->i_bn_out.c = c->F;
        c->i_bn_out.a = TAKE((size_t)c->F);
        c->i_bn_out.s = TAKE((size_t)c->F);
        c->fbn_inv_std = TAKE((size_t)c->Ct);
    }
#undef TAKE
    return RNVP_OK;
}

/* ---------------------------------------------------------------- folding */

/* w = g * v / ||v|| per output channel, times mul[o] when mul != NULL; bias b*mul + add; the
 * Winograd weights of w where the convolution has them. */
static void fold_conv(conv_i *dst, const conv_p *src, const float *mul, const float *add)
{
    rnvpi_wn_weights(dst->w, NULL, src, mul);
    for (int o = 0; o < src->cout; o++) dst->b[o] = (float)((mul ? mul[o] : 1.0) * src->b[o] + (add ? add[o] : 0.0));
    if (dst->wino) rnvpi_winograd_weights(dst->wino, dst->w, dst->cout, dst->cin);
    if (dst->wino4) rnvpi_winograd4_weights(dst->wino4, dst->w, dst->cout, dst->cin);
    if (dst->w_bf16) rnvpi_bf16_pairs(dst->w_bf16, dst->w, dst->cout, dst->cin * dst->kh * dst->kw);
}

/* bn(x) with the running statistics as a x + s */
static void fold_bn(float *a, float *s, const bn_p *bn, double eps)
{
    for (int c = 0; c < bn->c; c++) rnvpi_bn_affine1(&a[c], &s[c], bn->w[c], bn->b[c], bn->rm[c], bn->rv[c], eps);
}

void rnvpi_model_fold(rnvp_model *m)
{
    double eps = m->cfg.bn_eps;
    for (int k = 0; k < m->L; k++) {
        coupling *c = &m->cp[k];
        fold_conv(&c->i_in, &c->in_conv, NULL, NULL);
        for (int j = 0; j < c->K; j++) {
            fold_bn(c->i_bn_a[j].a, c->i_bn_a[j].s, &c->bn_a[j], eps);
            /* bn_b follows conv_a directly: fold it into conv_a */
            float ab[2 * RNVP_MAX_FEATURES];
            fold_bn(ab, ab + c->F, &c->bn_b[j], eps);
            fold_conv(&c->i_a[j], &c->conv_a[j], ab, ab + c->F);
            fold_conv(&c->i_b[j], &c->conv_b[j], NULL, NULL);
        }
        fold_bn(c->i_bn_out.a, c->i_bn_out.s, &c->bn_out, eps);
        fold_conv(&c->i_out, &c->out_conv, NULL, NULL);
        c->fbn_logdet = 0;
        if (c->fbn_var) {
            const int per = rnvpi_transformed_count(rnvpi_mask_parity(c), c->H, c->W);   /* one image */
            for (int ch = 0; ch < c->Ct; ch++) {
                double v = (double)c->fbn_var[ch] + m->cfg.flow_bn_eps;
                c->fbn_inv_std[ch] = (float)(1.0 / sqrt(v));
                c->fbn_logdet += rnvpi_fbn_logdet1(c->fbn_var[ch], m->cfg.flow_bn_eps, per);
            }
        }
    }
}

/* ---------------------------------------------------------------- init and accessors */

enum rnvp_status rnvp_model_init(rnvp_model **out, const rnvp_config *cfg, uint64_t seed,
                                 rnvp_error *err)
{
    rnvp_config c = *cfg;
    if (!c.kernel) c.kernel = 3;
    enum rnvp_status st = rnvpi_model_build(out, &c, NULL, NULL, err);
    if (st) return st;
    rnvp_model *m = *out;
    uint64_t rs = seed;
    rnvpi_splitmix64(&rs);
    for (int i = 0; i < m->ntensors; i++) {
        rnvp_tensor *t = &m->tensors[i];
        const char *n = t->name;
        size_t ln = strlen(n);
#define ENDS(sfx) (ln >= strlen(sfx) && !strcmp(n + ln - strlen(sfx), sfx))
        for (size_t j = 0; j < t->size; j++) {
            double a, b, u = rnvpi_uniform(&rs);
            rnvpi_gauss2(&rs, &a, &b);
            double v;
            if (ENDS("weight_v")) v = a;
            else if (ENDS("weight_g")) v = 0.3 + 0.7 * u;
            else if (ENDS("flow_bn.running_mean")) v = 0.2 * a;
            else if (ENDS("running_var")) v = 0.5 + 1.5 * u;
            else if (ENDS("running_mean")) v = 0.1 * a;
            else if (ENDS(".weight")) v = 0.5 + u;
            else if (ENDS(".scale")) v = 0.05 + 0.45 * u;
            else v = 0.1 * a;   /* biases */
            t->data[j] = (float)v;
        }
#undef ENDS
    }
    rnvpi_model_fold(m);
    char created[32];
    snprintf(created, sizeof created, "random init, seed %llu", (unsigned long long)seed);
    if (rnvpi_model_set_meta(m, "description", created)) {
        rnvp_model_free(m);
        *out = NULL;
        return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory");
    }
    return RNVP_OK;
}

enum rnvp_status rnvpi_model_set_meta(rnvp_model *m, const char *key, const char *val)
{
    for (int i = 0; i < m->nmeta; i++)
        if (!strcmp(m->meta_keys[i], key)) {
            char *v = strdup(val);
            if (!v) return RNVP_ERR_NOMEM;
            free(m->meta_vals[i]);
            m->meta_vals[i] = v;
            return RNVP_OK;
        }
    char **k = realloc(m->meta_keys, (size_t)(m->nmeta + 1) * sizeof *k);
    if (!k) return RNVP_ERR_NOMEM;
    m->meta_keys = k;
    char **v = realloc(m->meta_vals, (size_t)(m->nmeta + 1) * sizeof *v);
    if (!v) return RNVP_ERR_NOMEM;
    m->meta_vals = v;
    k[m->nmeta] = strdup(key);
    v[m->nmeta] = strdup(val);
    if (!k[m->nmeta] || !v[m->nmeta]) { free(k[m->nmeta]); free(v[m->nmeta]); return RNVP_ERR_NOMEM; }
    m->nmeta++;
    return RNVP_OK;
}

void rnvp_model_free(rnvp_model *m)
{
    if (!m) return;
    if (m->cp)
        for (int k = 0; k < m->L; k++) {
            coupling *c = &m->cp[k];
            free(c->conv_a); free(c->conv_b); free(c->bn_a); free(c->bn_b);
            free(c->i_a); free(c->i_b); free(c->i_bn_a);
        }
    free(m->cp);
    free(m->tensors);
    free(m->names);
    free(m->params);
    free(m->infer);
    for (int i = 0; i < m->nmeta; i++) { free(m->meta_keys[i]); free(m->meta_vals[i]); }
    free(m->meta_keys);
    free(m->meta_vals);
    free(m);
}

int rnvpi_model_find_tensor(const rnvp_model *m, const char *name)
{
    for (int i = 0; i < m->ntensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return i;
    return -1;
}

const rnvp_config *rnvp_model_config(const rnvp_model *m) { return &m->cfg; }
int rnvp_model_dim(const rnvp_model *m) { return m->D; }
int rnvp_model_num_latent_parts(const rnvp_model *m) { return m->S; }
rnvp_latent_part rnvp_model_latent_part(const rnvp_model *m, int s)
{
    rnvp_latent_part z = {0, 0, 0, 0};
    return s >= 0 && s < m->S ? m->parts[s] : z;
}
int rnvp_model_num_tensors(const rnvp_model *m) { return m->ntensors; }
const rnvp_tensor *rnvp_model_tensor(const rnvp_model *m, int i)
{
    return i >= 0 && i < m->ntensors ? &m->tensors[i] : NULL;
}
size_t rnvp_model_num_params(const rnvp_model *m) { return m->nparams; }
size_t rnvp_model_bytes(const rnvp_model *m) { return sz_mul(sz_add(m->nparams, m->ninfer), sizeof(float)); }
int rnvp_model_num_metadata(const rnvp_model *m) { return m->nmeta; }
const char *rnvp_model_metadata_key(const rnvp_model *m, int i)
{
    return i >= 0 && i < m->nmeta ? m->meta_keys[i] : NULL;
}
const char *rnvp_model_metadata(const rnvp_model *m, const char *key)
{
    for (int i = 0; i < m->nmeta; i++)
        if (!strcmp(m->meta_keys[i], key)) return m->meta_vals[i];
    return NULL;
}

static double conv_flops(const conv_p *c, int H, int W)
{
    return 2.0 * c->cout * c->cin * c->kh * c->kw * H * W;
}

double rnvp_model_flops(const rnvp_model *m)
{
    double f = 0;
    for (int k = 0; k < m->L; k++) {
        const coupling *c = &m->cp[k];
        f += conv_flops(&c->in_conv, c->H, c->W) + conv_flops(&c->out_conv, c->H, c->W);
        for (int j = 0; j < c->K; j++)
            f += conv_flops(&c->conv_a[j], c->H, c->W) + conv_flops(&c->conv_b[j], c->H, c->W);
    }
    return f;
}
