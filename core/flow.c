/* flow.c: the whole flow at inference (docs/model.md sections 1-4): contexts, pre-processing, squeeze,
 * split, log_prob / encode / decode / sample. Leaves out the layers' math (coupling.c, conv.c). */
#include "internal.h"
#include "tpool.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct rnvp_ctx {
    const rnvp_model *m;
    int max_batch;
    int threads;   /* threads of the convolutions (the caller + pool workers) */
    float *x;      /* (C, N, H, W) flow state, N*D */
    float *tmp;    /* (4C, N, H/2, W/2) squeezed state, N*D */
    float *zc;     /* (N*D) factored-out parts, each (C_s, N, H_s, W_s) at N * offset_s */
    float *zin;    /* (N, D) latents drawn by rnvp_sample */
    double *ld;    /* (N) log-det accumulators */
    net_ws ws;
    tpool *tp;     /* threads - 1 workers, NULL when threads == 1 or OpenBLAS does the convs */
    void *block;   /* the one allocation */
    size_t bytes;
};

void rnvp_set_num_threads(int n)
{
    if (n > 0) openblas_set_num_threads(n);
}

/* The sizes of a context's workspace (in floats unless named otherwise), for the kernel and
 * thread count a context made now would use. Saturating: bytes is SIZE_MAX when they do not fit
 * in size_t. rnvp_ctx_create lays out its block from these, rnvp_ctx_workspace_bytes reports
 * them, so the two cannot disagree. */
typedef struct ws_plan {
    int direct, threads;
    size_t nin, feat, outc, col;   /* the largest of each over the couplings (rnvpi_coupling_ws_size) */
    size_t panel, guard;           /* per thread, per convolution input; multiples of 16 */
    int wino4;                     /* the F(4x4) kernel's on (net_ws.wino4) */
    int w4block;                   /* residual blocks fused on it (net_ws.w4block) */
    size_t ND;                     /* max_batch * D: x, tmp, zc and zin each */
    size_t bytes;                  /* the block: the floats and max_batch doubles, rounded to 64 */
} ws_plan;

static void plan_workspace(ws_plan *p, const rnvp_model *m, int max_batch)
{
    p->direct = rnvpi_conv_choose();
    p->threads = p->direct ? openblas_get_num_threads() : 1;
    if (p->threads < 1) p->threads = 1;
    if (p->threads > 256) p->threads = 256;
    size_t nin = 0, feat = 0, outc = 0, col = 0, panel = 16, guard = 0;
    const int wino4 = p->direct == RNVPI_CONV_AVX512 && rnvpi_winograd4_on();
    const char *fuse = getenv("REALNVP_FUSE_BLOCKS");
    const int w4block = wino4 && !(fuse && !strcmp(fuse, "0"));
    for (int k = 0; k < m->L; k++) {
        size_t a, b, c, d;
        const coupling *cp = &m->cp[k];
        rnvpi_coupling_ws_size(cp, max_batch, &a, &b, &c, &d);
        if (a > nin) nin = a;
        if (b > feat) feat = b;
        if (c > outc) outc = c;
        if (d > col) col = d;
        const conv_i *cv[3] = {&cp->i_in, &cp->i_out, cp->K ? &cp->i_a[0] : &cp->i_in};
        for (int i = 0; i < 3 + 2 * cp->K; i++) {
            const conv_i *v = i < 3 ? cv[i] : i % 2 ? &cp->i_a[(i - 3) / 2] : &cp->i_b[(i - 3) / 2];
            size_t f = rnvpi_conv_panel_floats(v->cin, v->kh, v->kw), g = rnvpi_conv_guard_floats(v, cp->W);
            if (f > panel) panel = f;
            if (g > guard) guard = g;
            if (wino4 && v->wino4 && max_batch >= 12 && rnvpi_winograd4_panel_floats(v->cin, cp->W) > panel)
                panel = rnvpi_winograd4_panel_floats(v->cin, cp->W);
        }
        /* fused blocks: from one group of 16 images (the fewest F(4x4) takes, 12) per thread */
        for (int j = 0; j < cp->K; j++)
            if (w4block && cp->i_a[j].wino4 && cp->i_b[j].wino4 && max_batch >= 16 * (p->threads - 1) + 12 &&
                rnvpi_winograd4_block_panel_floats(cp->i_a[j].cin, cp->i_a[j].cout, cp->H, cp->W) > panel)
                panel = rnvpi_winograd4_block_panel_floats(cp->i_a[j].cin, cp->i_a[j].cout, cp->H, cp->W);
    }
    panel = (panel + 15) / 16 * 16;          /* 64-byte steps between the threads' panels */
    if (p->direct) col = 0;                    /* the panels replace the im2col buffer */
    if (p->direct != RNVPI_CONV_AVX512) guard = 0;   /* only its plain loads read beyond */
    guard = (guard + 15) / 16 * 16;
    p->nin = nin; p->feat = feat; p->outc = outc; p->col = col; p->panel = panel; p->guard = guard;
    p->wino4 = wino4;
    p->w4block = w4block;
    p->ND = sz_mul((size_t)max_batch, (size_t)m->D);
    /* threads' panels, x, tmp, zc, zin, netin, h, t, out, col, 7 guards */
    size_t floats = p->direct ? sz_mul((size_t)p->threads, panel) : 0;
    floats = sz_add(floats, sz_mul(4, p->ND));
    floats = sz_add(floats, sz_add(nin, sz_add(sz_mul(2, feat), sz_add(outc, col))));
    floats = sz_add(floats, sz_mul(7, guard));
    size_t bytes = sz_add(sz_mul(floats, sizeof(float)), (size_t)max_batch * sizeof(double));
    p->bytes = bytes > SIZE_MAX - 63 ? SIZE_MAX : (bytes + 63) / 64 * 64;
}

size_t rnvp_ctx_workspace_bytes(const rnvp_model *m, int max_batch)
{
    if (!m || max_batch < 1 || max_batch > RNVP_MAX_BATCH) return SIZE_MAX;
    ws_plan p;
    plan_workspace(&p, m, max_batch);
    return sz_add(p.bytes, sizeof(rnvp_ctx));
}

enum rnvp_status rnvp_ctx_create(rnvp_ctx **out, const rnvp_model *m, int max_batch, rnvp_error *err)
{
    *out = NULL;
    if (max_batch < 1 || max_batch > RNVP_MAX_BATCH)
        return rnvpi_fail(err, RNVP_ERR_ARG, "max_batch %d out of range 1..%d", max_batch, RNVP_MAX_BATCH);
    ws_plan p;
    plan_workspace(&p, m, max_batch);
    if (p.bytes == SIZE_MAX)
        return rnvpi_fail(err, RNVP_ERR_NOMEM, "a context for %d images would need more memory than can be addressed",
                         max_batch);
    const int direct = p.direct, threads = p.threads;
    const size_t nin = p.nin, feat = p.feat, outc = p.outc, panel = p.panel, guard = p.guard, ND = p.ND;
    const size_t bytes = p.bytes;
    rnvp_ctx *c = calloc(1, sizeof *c);
    void *blk = aligned_alloc(64, bytes);
    tpool *tp = direct && threads > 1 ? rnvpi_tpool_create(threads) : NULL;
    if (!c || !blk || (direct && threads > 1 && !tp)) {
        free(c); free(blk); rnvpi_tpool_free(tp);
        return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory for a context of %zu MB and %d threads",
                         bytes >> 20, threads);
    }
    c->m = m;
    c->max_batch = max_batch;
    c->threads = threads;
    c->tp = tp;
    c->block = blk;
    c->bytes = sz_add(bytes, sizeof *c);   /* what rnvp_ctx_workspace_bytes reported */
    float *f = blk;
    if (direct) {
        c->ws.panel = f;
        c->ws.panel_floats = panel;
        f += (size_t)threads * panel;
    }
    c->ws.wino4 = p.wino4;
    c->ws.w4block = p.w4block;
    c->ws.direct = direct;
    c->ws.wino_kind = rnvpi_winograd_kind();
    c->ws.tp = tp;
    double *d = (double *)f;
    c->ld = d;
    f = (float *)(d + max_batch);
    /* the convolutions' inputs (x, tmp, netin, h, t; out for symmetry) each between two guards
     * of zeros that the direct kernel may read (and mask away) */
    c->ws.guard = guard;
    memset(f, 0, sizeof(float) * guard);
    f += guard;
    float **bufs[6] = {&c->x, &c->tmp, &c->ws.netin, &c->ws.h, &c->ws.t, &c->ws.out};
    const size_t sizes[6] = {ND, ND, nin, feat, feat, outc};
    for (int i = 0; i < 6; i++) {
        *bufs[i] = f;
        f += sizes[i];
        memset(f, 0, sizeof(float) * guard);
        f += guard;
    }
    c->zc = f; f += ND;
    c->zin = f; f += ND;
    c->ws.col = direct ? NULL : f;
    *out = c;
    return RNVP_OK;
}

void rnvp_ctx_free(rnvp_ctx *ctx)
{
    if (!ctx) return;
    rnvpi_tpool_free(ctx->tp);
    free(ctx->block);
    free(ctx);
}

size_t rnvp_ctx_bytes(const rnvp_ctx *ctx) { return ctx->bytes; }
const char *rnvp_ctx_conv_kernel(const rnvp_ctx *ctx)
{
    switch (ctx->ws.direct) {
    case RNVPI_CONV_AVX512:   /* fp32: Winograd on the layers where it wins (rnvpi_winograd512_wins); bf16:
                               * the bf16 direct kernel everywhere (faster than fp32 Winograd) */
        if (ctx->ws.bf16) return "avx512-direct-bf16";
        return ctx->ws.wino_kind == RNVPI_WINO_OFF ? "avx512-direct" : "avx512-direct+winograd";
    case RNVPI_CONV_AVX2: return "avx2-direct+winograd";   /* Winograd on the layers where it wins */
    case RNVPI_CONV_AVX2_DIRECT: return "avx2-direct";
    case RNVPI_CONV_WINOGRAD: return "winograd";
    default: return "openblas";
    }
}
int rnvp_ctx_threads(const rnvp_ctx *ctx) { return ctx->threads; }

enum rnvp_status rnvp_precision_check(enum rnvp_precision p, rnvp_error *err)
{
    if (p == RNVP_PRECISION_FP32) return RNVP_OK;
    if (p != RNVP_PRECISION_BF16) return rnvpi_fail(err, RNVP_ERR_ARG, "unknown precision %d", (int)p);
    if (!rnvpi_bf16_available())
        return rnvpi_fail(err, RNVP_ERR_UNSUPPORTED,
                          "precision bf16 needs a CPU with AVX-512 (F, BW, DQ, VL) and AVX512_BF16; this one lacks "
                          "them (use fp32)");
    return RNVP_OK;
}

enum rnvp_status rnvp_ctx_set_precision(rnvp_ctx *ctx, enum rnvp_precision p, rnvp_error *err)
{
    enum rnvp_status st = rnvp_precision_check(p, err);
    if (st) return st;
    if (p == RNVP_PRECISION_FP32) {
        ctx->ws.bf16 = 0;
        return RNVP_OK;
    }
    if (ctx->ws.direct != RNVPI_CONV_AVX512)
        return rnvpi_fail(err, RNVP_ERR_UNSUPPORTED, "precision bf16 needs the AVX-512 kernels, and this context uses "
                          "the %s kernel (REALNVP_CONV is set)", rnvp_ctx_conv_kernel(ctx));
    if (!ctx->m->bf16)
        return rnvpi_fail(err, RNVP_ERR_UNSUPPORTED, "precision bf16: the model was loaded without its bf16 weights");
    ctx->ws.bf16 = 1;
    return RNVP_OK;
}

enum rnvp_precision rnvp_ctx_precision(const rnvp_ctx *ctx)
{
    return ctx->ws.bf16 ? RNVP_PRECISION_BF16 : RNVP_PRECISION_FP32;
}

enum rnvp_status rnvp_precision_parse(enum rnvp_precision *out, const char *name, rnvp_error *err)
{
    if (name && !strcmp(name, "fp32")) *out = RNVP_PRECISION_FP32;
    else if (name && !strcmp(name, "bf16")) *out = RNVP_PRECISION_BF16;
    else return rnvpi_fail(err, RNVP_ERR_ARG, "precision '%s': use fp32 or bf16", name ? name : "(null)");
    return RNVP_OK;
}

const char *rnvp_precision_name(enum rnvp_precision p)
{
    return p == RNVP_PRECISION_FP32 ? "fp32" : p == RNVP_PRECISION_BF16 ? "bf16" : NULL;
}

/* ---------------------------------------------------------------- the flow */

/* y (C, N, H, W) = logit(alpha + (1 - 2 alpha) xt) with xt = (v + u) / 256; ld (N) = L_pre. */
static void preprocess(float *y, double *ld, const rnvp_model *m, const uint8_t *pix, const float *noise, int N)
{
    const int C = m->cfg.channels, HW = m->cfg.height * m->cfg.width;
    const double a = m->cfg.alpha, l12a = log(1 - 2 * a);
    for (int n = 0; n < N; n++) {
        double l = 0;
        for (int c = 0; c < C; c++) {
            const uint8_t *pv = pix + ((size_t)n * C + c) * HW;
            const float *u = noise ? noise + ((size_t)n * C + c) * HW : NULL;
            float *dst = y + ((size_t)c * N + n) * HW;
            for (int i = 0; i < HW; i++)
                dst[i] = rnvpi_logit1((pv[i] + (u ? (double)u[i] : 0.5)) / 256.0, a, l12a, &l);
        }
        ld[n] = l;
    }
}

/* Forward flow on ctx->x (already pre-processed) for N images, coupling after coupling with
 * what follows each (rnvpi_flow_next); z parts land in ctx->zc, log-dets are added to ctx->ld.
 * The state moves between ctx->x and ctx->tmp at each squeeze and split. */
static void flow_forward(rnvp_ctx *ctx, int N)
{
    const rnvp_model *m = ctx->m;
    float *x = ctx->x;
    for (int k = 0; k < m->L; k++) {
        const coupling *c = &m->cp[k];
        rnvpi_coupling_forward(x, ctx->ld, c, N, &ctx->ws);
        float *o = x == ctx->x ? ctx->tmp : ctx->x;
        const size_t plane = (size_t)N * c->H * c->W;
        float *zs = ctx->zc + (size_t)N * m->parts[c->level].offset;
        switch (rnvpi_flow_next(m, k)) {
        case RNVPI_NEXT_SQUEEZE:
            rnvpi_squeeze_forward(o, x, c->C, N, c->H, c->W);
            x = o;
            break;
        case RNVPI_NEXT_SPLIT:   /* c->C = 4 C_s: 2 C_s channels go on, 2 C_s are z_s */
            for (int i = 0; i < c->C / 2; i++) {
                memcpy(o + i * plane, x + rnvpi_split_keep(i, c->C / 4) * plane, sizeof(float) * plane);
                memcpy(zs + i * plane, x + rnvpi_split_drop(i, c->C / 4) * plane, sizeof(float) * plane);
            }
            x = o;
            break;
        case RNVPI_NEXT_END:
            memcpy(zs, x, sizeof(float) * c->C * plane);
            break;
        default:
            break;
        }
    }
}

/* Inverse flow: ctx->zc holds the parts; the result y (C, N, H, W) lands in ctx->x. */
static void flow_inverse(rnvp_ctx *ctx, int N)
{
    const rnvp_model *m = ctx->m;
    float *x = ctx->x;
    for (int k = m->L - 1; k >= 0; k--) {
        const coupling *c = &m->cp[k];
        float *o = x == ctx->x ? ctx->tmp : ctx->x;
        const size_t plane = (size_t)N * c->H * c->W;
        const float *zs = ctx->zc + (size_t)N * m->parts[c->level].offset;
        /* undo what followed coupling k, then the coupling */
        switch (rnvpi_flow_next(m, k)) {
        case RNVPI_NEXT_SQUEEZE:
            rnvpi_squeeze_inverse(o, x, c->C, N, c->H, c->W);
            x = o;
            break;
        case RNVPI_NEXT_SPLIT:
            for (int i = 0; i < c->C / 2; i++) {
                memcpy(o + rnvpi_split_keep(i, c->C / 4) * plane, x + i * plane, sizeof(float) * plane);
                memcpy(o + rnvpi_split_drop(i, c->C / 4) * plane, zs + i * plane, sizeof(float) * plane);
            }
            x = o;
            break;
        case RNVPI_NEXT_END:
            memcpy(x, zs, sizeof(float) * c->C * plane);
            break;
        default:
            break;
        }
        rnvpi_coupling_inverse(x, c, N, &ctx->ws);
    }
    if (x != ctx->x) memcpy(ctx->x, x, sizeof(float) * (size_t)N * m->D);
}

/* Convert between z (N, D) and the parts' (C_s, N, H_s, W_s) blocks in ctx->zc. */
static void z_gather(rnvp_ctx *ctx, float *z, int N, int to_nd)
{
    const rnvp_model *m = ctx->m;
    for (int s = 0; s < m->S; s++) {
        const rnvp_latent_part *p = &m->parts[s];
        const size_t hw = (size_t)p->height * p->width;
        float *blk = ctx->zc + (size_t)N * p->offset;
        for (int c = 0; c < p->channels; c++)
            for (int n = 0; n < N; n++) {
                float *a = z + (size_t)n * m->D + p->offset + c * hw;
                float *b = blk + ((size_t)c * N + n) * hw;
                if (to_nd) memcpy(a, b, sizeof(float) * hw);
                else memcpy(b, a, sizeof(float) * hw);
            }
    }
}

static enum rnvp_status check_n(const rnvp_ctx *ctx, int n, rnvp_error *err)
{
    (void)ctx;
    if (n < 0) return rnvpi_fail(err, RNVP_ERR_ARG, "n = %d images, expected n >= 0", n);
    return RNVP_OK;
}

/* log p(xt) for the chunk in ctx (after flow_forward): prior of z plus all log-dets. */
static void chunk_log_prob(rnvp_ctx *ctx, double *lp, double *bpd, int N)
{
    const rnvp_model *m = ctx->m;
    for (int n = 0; n < N; n++) {
        double q = 0;
        for (int s = 0; s < m->S; s++) {
            const rnvp_latent_part *p = &m->parts[s];
            const size_t hw = (size_t)p->height * p->width;
            for (int c = 0; c < p->channels; c++) {
                const float *b = ctx->zc + (size_t)N * p->offset + ((size_t)c * N + n) * hw;
                for (size_t i = 0; i < hw; i++) q += (double)b[i] * b[i];
            }
        }
        const double l = rnvpi_log_likelihood(rnvpi_log_normal(q, m->D), ctx->ld[n], m->D);
        if (lp) lp[n] = l;
        if (bpd) bpd[n] = rnvpi_bits_per_dim(l, m->D);
    }
}

static enum rnvp_status forward_batches(rnvp_ctx *ctx, float *z, double *log_prob, double *bpd,
                                        const uint8_t *pixels, const float *noise, int n, rnvp_error *err)
{
    enum rnvp_status st = check_n(ctx, n, err);
    if (st) return st;
    const rnvp_model *m = ctx->m;
    for (int i0 = 0; i0 < n; i0 += ctx->max_batch) {
        int N = n - i0 < ctx->max_batch ? n - i0 : ctx->max_batch;
        preprocess(ctx->x, ctx->ld, m, pixels + (size_t)i0 * m->D, noise ? noise + (size_t)i0 * m->D : NULL, N);
        flow_forward(ctx, N);
        chunk_log_prob(ctx, log_prob ? log_prob + i0 : NULL, bpd ? bpd + i0 : NULL, N);
        if (z) z_gather(ctx, z + (size_t)i0 * m->D, N, 1);
    }
    return RNVP_OK;
}

enum rnvp_status rnvp_log_prob(rnvp_ctx *ctx, double *log_prob, double *bits_per_dim, const uint8_t *pixels,
                               const float *noise, int n, rnvp_error *err)
{
    return forward_batches(ctx, NULL, log_prob, bits_per_dim, pixels, noise, n, err);
}

enum rnvp_status rnvp_encode(rnvp_ctx *ctx, float *z, double *log_prob, const uint8_t *pixels, const float *noise,
                             int n, rnvp_error *err)
{
    return forward_batches(ctx, z, log_prob, NULL, pixels, noise, n, err);
}

/* pixels (N, C, H, W) from y (C, N, H, W): docs/model.md section 4. */
static void postprocess(uint8_t *pix, const float *y, const rnvp_model *m, int N)
{
    const int C = m->cfg.channels, HW = m->cfg.height * m->cfg.width;
    const double a = m->cfg.alpha;
    for (int c = 0; c < C; c++)
        for (int n = 0; n < N; n++) {
            const float *src = y + ((size_t)c * N + n) * HW;
            uint8_t *dst = pix + ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                double sg = 1.0 / (1.0 + exp(-(double)src[i]));
                double xt = (sg - a) / (1 - 2 * a);
                if (!(xt > 0)) xt = 0;      /* also NaN */
                if (xt > 1) xt = 1;
                double v = floor(256.0 * xt);
                dst[i] = (uint8_t)(v > 255 ? 255 : v);
            }
        }
}

enum rnvp_status rnvp_decode(rnvp_ctx *ctx, uint8_t *pixels, const float *z, int n, rnvp_error *err)
{
    enum rnvp_status st = check_n(ctx, n, err);
    if (st) return st;
    const rnvp_model *m = ctx->m;
    for (size_t i = 0; i < (size_t)n * m->D; i++)
        if (!isfinite(z[i]))
            return rnvpi_fail(err, RNVP_ERR_ARG, "latent %zu of image %zu is not finite", i % m->D, i / m->D);
    for (int i0 = 0; i0 < n; i0 += ctx->max_batch) {
        int N = n - i0 < ctx->max_batch ? n - i0 : ctx->max_batch;
        z_gather(ctx, (float *)(z + (size_t)i0 * m->D), N, 0);
        flow_inverse(ctx, N);
        postprocess(pixels + (size_t)i0 * m->D, ctx->x, m, N);
    }
    return RNVP_OK;
}

enum rnvp_status rnvp_sample(rnvp_ctx *ctx, uint8_t *pixels, float *z, int n, double temp, uint64_t seed,
                             rnvp_error *err)
{
    enum rnvp_status st = check_n(ctx, n, err);
    if (st) return st;
    if (!(temp >= 0) || !isfinite(temp)) return rnvpi_fail(err, RNVP_ERR_ARG, "temperature %g, expected a finite value >= 0", temp);
    const rnvp_model *m = ctx->m;
    if (z) {
        rnvp_sample_latents(z, n, m->D, temp, seed);
        return rnvp_decode(ctx, pixels, z, n, err);
    }
    for (int i0 = 0; i0 < n; i0 += ctx->max_batch) {
        int N = n - i0 < ctx->max_batch ? n - i0 : ctx->max_batch;
        rnvpi_sample_latents_from(ctx->zin, i0, N, m->D, temp, seed);
        if ((st = rnvp_decode(ctx, pixels + (size_t)i0 * m->D, ctx->zin, N, err))) return st;
    }
    return RNVP_OK;
}
