/* test_gradcheck.c: finite-difference checks of every hand-written backward pass of the trainer and of the whole loss.
 * Leaves out training runs and the optimiser.
 *
 * Method and tolerances
 * - Layer checks (float32, as the trainer runs): J = sum r_i out_i (+ sum rl_n ld_n) with fixed
 *   random r, rl; the analytic gradient comes from the backward pass with dout = r, the
 *   numeric one from central differences (J(x + h) - J(x - h)) / (2h) in every input and
 *   parameter entry, h = 1e-2 (3e-3 next to a ReLU, whose kinks the inputs keep away from).
 *   Error: max_i |fd_i - an_i| / max_i |an_i|. Tolerance 2e-3 (observed 1e-6 .. 1e-4: float32
 *   round-off of J amplified by 1/h, plus O(h^2) truncation).
 * - Chunked / threaded convolution: forward and backward against a direct float64 loop on a
 *   size that takes several chunks per thread, 1 and 2 threads. Tolerance 1e-5 (observed 4e-7).
 * - Winograd F(2x2,3x3) convolution (forward with pre and residual, input gradient, weight
 *   gradient) against the im2col one and a float64 loop on odd sizes, 1 and 2 threads:
 *   normwise 1e-5 as above, and per output 16 u sum|w x| (observed <= 2.1; test_conv_winograd).
 *   The default kernels (Winograd where it wins) against REALNVP_CONV=avx2 and blas on a
 *   14x14 model with 32 / 64 features: loss 1e-6 relative, gradients 1e-5 of the largest
 *   (observed 6e-8, 3e-7; test_model_winograd_default).
 * - Whole model: the float32 gradient of tr_forward_backward's loss against central
 *   differences (h = 1e-6) of a float64 reference of the loss written from docs/model.md with
 *   naive loops (ref_loss below; it shares no code with the trainer). Float32 differences of
 *   the whole loss are useless here: a step of 1e-3 crosses ReLU kinks somewhere in the flow
 *   and the loss's round-off is ~1e-7. Tiny configs (4x4x1 S=1, 8x8x1 S=2 with and without
 *   flow batch norm, 4x4x3 S=2, 8x8x1 S=3) with random non-trivial parameters
 *   (rnvp_model_init), batch 4; for every trainable tensor its largest-gradient entry, two
 *   random entries and one random direction. Error: |fd - an| / max(|an|, 1e-3 max|grad|)
 *   (the floor covers the parameters whose exact gradient is 0, e.g. biases and weight_g in
 *   front of a batch norm, where the float32 gradient is round-off). Tolerance 1e-3
 *   (observed <= 3.3e-4). The float32 and float64 losses agree to 1e-5 relative (observed 1e-8).
 * - Consistency with the core: with running statistics equal to one batch's statistics, the
 *   inference core's bits/dim (rnvp_log_prob, rnvpi_model_fold) on the same pixels and noise equals
 *   the training loss to 1e-4 (observed 1e-6). */
#include "../train/coupling.h"
#include "../train/train.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- helpers */

static uint64_t rng = 12345;

static float urand(float lo, float hi) { return lo + (hi - lo) * (float)rnvpi_uniform(&rng); }

static void fill(float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
}

static float *falloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

typedef double (*obj_fn)(void *ctx);

/* Checks g (n) against central differences of f with respect to x (n); returns the normwise
 * relative error and prints it. */
static double fd_check(const char *what, obj_fn f, void *ctx, float *x, const float *g, size_t n,
                       double h, double tol)
{
    double gmax = 0, emax = 0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(g[i]));
    for (size_t i = 0; i < n; i++) {
        const float x0 = x[i];
        const float xp = (float)(x0 + h), xm = (float)(x0 - h);
        x[i] = xp;
        double fp = f(ctx);
        x[i] = xm;
        double fm = f(ctx);
        x[i] = x0;
        double fd = (fp - fm) / ((double)xp - xm);
        emax = fmax(emax, fabs(fd - g[i]));
    }
    double rel = gmax > 0 ? emax / gmax : emax;
    printf("  %-44s max|fd-an|/max|an| = %.2e  (n %zu, max|an| %.2e)\n", what, rel, n, gmax);
    ck_assert_msg(gmax > 0, "%s: the analytic gradient is all zero", what);
    ck_assert_msg(rel < tol, "%s: relative error %.3e >= %.1e", what, rel, tol);
    return rel;
}

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* ---------------------------------------------------------------- convolution + weight norm */

struct conv_ctx {
    conv_p p;
    wn_saved wn;
    affine_i pre;
    int use_pre, N, H, W;
    float *in, *out, *r;
    conv_scratch cs;   /* serial */
};

static double conv_obj(void *v)
{
    struct conv_ctx *c = v;
    tr_wn_forward(&c->wn, &c->p);
    tr_conv_forward(c->out, c->in, c->use_pre ? &c->pre : NULL, c->wn.w, NULL, c->p.b, NULL, &c->cs, c->p.cout,
                 c->p.cin, c->p.kh, c->p.kw, c->N, c->H, c->W);
    return dot(c->out, c->r, (size_t)c->p.cout * c->N * c->H * c->W);
}

static void conv_case(int cin, int cout, int kh, int kw, int use_pre, const char *name)
{
    struct conv_ctx c = {.N = 2, .H = 5, .W = 4, .use_pre = use_pre};
    const size_t K = (size_t)cin * kh * kw, P = (size_t)c.N * c.H * c.W;
    c.p = (conv_p){cout, cin, kh, kw, falloc(cout * K), falloc(cout), falloc(cout)};
    fill(c.p.v, cout * K, -1, 1);
    fill(c.p.g, cout, 0.5f, 1.5f);
    fill(c.p.b, cout, -0.5f, 0.5f);
    c.wn.w = falloc(cout * K);
    c.wn.inv_norm = falloc(cout);
    c.pre = (affine_i){cin, falloc(cin), falloc(cin)};
    fill(c.pre.a, cin, 0.5f, 1.5f);
    fill(c.pre.s, cin, -0.3f, 0.3f);
    c.in = falloc(cin * P);
    fill(c.in, cin * P, -1, 1);
    if (use_pre)   /* keep a*x + s away from the ReLU's kink, which central differences straddle */
        for (int ci = 0; ci < cin; ci++)
            for (size_t p = 0; p < P; p++) {
                float *x = &c.in[ci * P + p], z = c.pre.a[ci] * *x + c.pre.s[ci];
                if (fabsf(z) < 0.05f) *x += (z < 0 ? -0.1f : 0.1f) / c.pre.a[ci];
            }
    c.out = falloc(cout * P);
    c.r = falloc(cout * P);
    fill(c.r, cout * P, -1, 1);
    c.cs.col_floats = tr_conv_ws_floats(cin, kh, kw, c.N, c.H, c.W, 1);
    c.cs.dw_floats = cout * K;
    c.cs.col = falloc(c.cs.col_floats);
    c.cs.dcol = falloc(c.cs.col_floats);
    c.cs.mask = falloc((size_t)kh * kw * c.H * c.W);
    float *dw = falloc(cout * K), *dv = falloc(cout * K), *dg = falloc(cout), *db = falloc(cout);
    float *din = falloc(cin * P), *dx = falloc(cin * P);
    conv_obj(&c);
    tr_conv_backward(din, dw, db, c.r, c.in, use_pre ? &c.pre : NULL, c.wn.w, NULL, &c.cs, 1, cout, cin, kh, kw,
                  c.N, c.H, c.W);
    tr_wn_backward(dv, dg, dw, &c.p, &c.wn);
    /* din is the gradient of pre(in): chain relu(a x + s) for the input check */
    for (int ci = 0; ci < cin; ci++)
        for (size_t p = 0; p < P; p++) {
            float x = c.in[ci * P + p];
            dx[ci * P + p] = !use_pre ? din[ci * P + p]
                             : c.pre.a[ci] * x + c.pre.s[ci] > 0 ? din[ci * P + p] * c.pre.a[ci] : 0;
        }
    char buf[96];
    const double h = use_pre ? 3e-3 : 1e-2;
    snprintf(buf, sizeof buf, "%s d input", name);
    fd_check(buf, conv_obj, &c, c.in, dx, cin * P, h, 2e-3);
    snprintf(buf, sizeof buf, "%s d weight_v", name);
    fd_check(buf, conv_obj, &c, c.p.v, dv, cout * K, h, 2e-3);
    snprintf(buf, sizeof buf, "%s d weight_g", name);
    fd_check(buf, conv_obj, &c, c.p.g, dg, cout, h, 2e-3);
    snprintf(buf, sizeof buf, "%s d bias", name);
    fd_check(buf, conv_obj, &c, c.p.b, db, cout, h, 2e-3);
    free(c.p.v); free(c.p.g); free(c.p.b); free(c.wn.w); free(c.wn.inv_norm); free(c.pre.a);
    free(c.pre.s); free(c.in); free(c.out); free(c.r); free(c.cs.col); free(c.cs.dcol); free(c.cs.mask); free(dw); free(dv);
    free(dg); free(db); free(din); free(dx);
}

START_TEST(test_conv)
{
    conv_case(3, 4, 3, 3, 0, "conv 3x3 + weight norm");
    conv_case(3, 4, 3, 3, 1, "conv 3x3 + weight norm, bn-relu pre");
    conv_case(4, 3, 1, 1, 1, "conv 1x1 + weight norm, bn-relu pre");
    conv_case(3, 2, 1, 1, 0, "conv 1x1 + weight norm");
    conv_case(2, 3, 3, 1, 0, "conv 3x1 + weight norm");
}
END_TEST

/* The chunked, threaded conv (several im2col chunks per thread) against a direct float64
 * convolution, forward and backward, serially and with two threads. */
static void conv_chunks_case(int nt)
{
    const int cin = 70, cout = 5, kh = 3, kw = 3, N = 5, H = 30, W = 31;
    const size_t K = (size_t)cin * kh * kw, HW = (size_t)H * W, P = N * HW;
    ck_assert_int_lt(tr_conv_chunk(cin, kh, kw, N, H, W, nt), N / nt);
    conv_scratch cs = {.tp = rnvpi_tpool_create(nt), .col_floats = tr_conv_ws_floats(cin, kh, kw, N, H, W, nt),
                       .dw_floats = cout * K};
    ck_assert_int_eq(rnvpi_tpool_size(cs.tp), nt);
    cs.col = falloc(nt * cs.col_floats);
    cs.dcol = falloc(nt * cs.col_floats);
    cs.dwp = falloc(nt * cs.dw_floats);
    cs.mask = falloc((size_t)kh * kw * H * W);
    float *w = falloc(cout * K), *b = falloc(cout), *in = falloc(cin * P), *out = falloc(cout * P);
    float *res = falloc(cout * P), *dout = falloc(cout * P), *din = falloc(cin * P);
    float *dw = falloc(cout * K), *db = falloc(cout);
    affine_i pre = {cin, falloc(cin), falloc(cin)};
    fill(w, cout * K, -0.1f, 0.1f); fill(b, cout, -1, 1); fill(in, cin * P, -1, 1);
    fill(res, cout * P, -1, 1); fill(dout, cout * P, -1, 1);
    fill(pre.a, cin, 0.5f, 1.5f); fill(pre.s, cin, -0.3f, 0.3f);
    fill(din, cin * P, -1, 1);   /* backward accumulates: start from something */
    fill(dw, cout * K, -1, 1);
    fill(db, cout, -1, 1);
    float *din0 = falloc(cin * P), *dw0 = falloc(cout * K), *db0 = falloc(cout);
    memcpy(din0, din, sizeof(float) * cin * P);
    memcpy(dw0, dw, sizeof(float) * cout * K);
    memcpy(db0, db, sizeof(float) * cout);
    tr_conv_forward(out, in, &pre, w, NULL, b, res, &cs, cout, cin, kh, kw, N, H, W);
    tr_conv_backward(din, dw, db, dout, in, &pre, w, NULL, &cs, 1, cout, cin, kh, kw, N, H, W);
    double *rdin = calloc(cin * P, sizeof(double)), *rdw = calloc(cout * K, sizeof(double));
    double e_out = 0, e_din = 0, e_dw = 0, e_db = 0, m_out = 0, m_din = 0, m_dw = 0, m_db = 0;
    for (int o = 0; o < cout; o++) {
        double sdb = 0;
        for (int n = 0; n < N; n++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    const size_t op = o * P + n * HW + i * W + j;
                    double s = b[o] + res[op];
                    sdb += dout[op];
                    for (int ci = 0; ci < cin; ci++)
                        for (int di = 0; di < kh; di++)
                            for (int dj = 0; dj < kw; dj++) {
                                int si = i + di - kh / 2, sj = j + dj - kw / 2;
                                if (si < 0 || si >= H || sj < 0 || sj >= W) continue;
                                const size_t ip = ci * P + n * HW + si * W + sj;
                                double x = fmax(0.0, (double)pre.a[ci] * in[ip] + pre.s[ci]);
                                const size_t wi = o * K + (ci * kh + di) * kw + dj;
                                s += w[wi] * x;
                                rdw[wi] += dout[op] * x;
                                if (x > 0) rdin[ip] += dout[op] * w[wi];
                            }
                    e_out = fmax(e_out, fabs(s - out[op]));
                    m_out = fmax(m_out, fabs(s));
                }
        e_db = fmax(e_db, fabs(db[o] - db0[o] - sdb));
        m_db = fmax(m_db, fabs(sdb));
    }
    for (size_t i = 0; i < cin * P; i++) {
        /* din is the gradient with respect to pre(in) (zero where the ReLU is off) */
        double x = (double)pre.a[i / P] * in[i] + pre.s[i / P];
        double d = x > 0 ? din[i] - din0[i] : 0;
        e_din = fmax(e_din, fabs(d - rdin[i]));
        m_din = fmax(m_din, fabs(rdin[i]));
    }
    for (size_t i = 0; i < cout * K; i++) {
        e_dw = fmax(e_dw, fabs(dw[i] - dw0[i] - rdw[i]));
        m_dw = fmax(m_dw, fabs(rdw[i]));
    }
    printf("  chunked conv vs direct, %d thread(s): rel err out %.1e, din %.1e, dw %.1e, db %.1e "
           "(%d images per chunk)\n", nt, e_out / m_out, e_din / m_din, e_dw / m_dw, e_db / m_db,
           tr_conv_chunk(cin, kh, kw, N, H, W, nt));
    ck_assert(e_out / m_out < 1e-5 && e_din / m_din < 1e-5 && e_dw / m_dw < 1e-5 && e_db / m_db < 1e-5);
    rnvpi_tpool_free(cs.tp);
    free(w); free(b); free(in); free(out); free(res); free(dout); free(din); free(dw); free(db);
    free(cs.col); free(cs.dcol); free(cs.dwp); free(cs.mask); free(pre.a); free(pre.s); free(rdin); free(rdw);
    free(din0); free(dw0); free(db0);
}

START_TEST(test_conv_chunks)
{
    conv_chunks_case(1);
    conv_chunks_case(2);
}
END_TEST

/* The Winograd F(2x2,3x3) forward (with bn-relu pre and residual), input gradient and weight
 * gradient (both accumulated into random starting values) of a 3x3
 * "same" convolution against the chunked im2col one and a float64 loop, on odd sizes with
 * channel counts that are not multiples of 8 (partial tiles at the borders, partial register
 * blocks), serially and with two threads; din both accumulated (+=) and overwritten.
 * Tolerance: normwise max|err| / max|ref| < 1e-5, as the chunked conv above. Error analysis: each
 * output is a sum of n = 9 cin products; the direct sum's rounding error is at most n u sum|w x|
 * (u = 2^-24), typically sqrt(n) u. Winograd rounds the weight transform once (from double),
 * adds 4 roundings in the input transform and 3 + 3 in the output transform, and its transforms
 * (row sums 2 for B, 1.5 for G, 3 for A) can magnify errors by a constant; the test prints the
 * worst error per output in units of u sum_terms |w x| for both paths: observed <= 4 for
 * im2col + sgemm and <= 2.1 for Winograd (normwise 1e-7 .. 6e-7). Asserted: normwise < 1e-5 (the
 * tolerance of every other conv test here) and, per output, < 16 u sum|terms| for Winograd (the
 * data are fixed by the seed; the worst-case bound of a plain sum is n u, n = 9 cin = 45 .. 315). */
static void conv_winograd_case(int cin, int cout, int N, int H, int W, int nt)
{
    const int kh = 3, kw = 3;
    const size_t K = (size_t)cin * 9, HW = (size_t)H * W, P = N * HW;
    conv_scratch cs = {.tp = rnvpi_tpool_create(nt), .dw_floats = cout * K,
                       .col_floats = tr_conv_ws_floats_wino(cout, cin, kh, kw, N, H, W, nt)};
    cs.col = falloc(nt * cs.col_floats);
    cs.dcol = falloc(nt * cs.col_floats);
    cs.dwp = falloc(nt * cs.dw_floats);
    cs.mask = falloc((size_t)kh * kw * H * W);
    cs.winot = falloc((size_t)16 * cin * cout);
    cs.zeros = falloc(cin);
    cs.dut_floats = (size_t)16 * cin * cout;
    cs.dut = falloc(nt * cs.dut_floats);
    float *w = falloc(cout * K), *u = falloc((size_t)16 * cout * cin), *b = falloc(cout);
    float *in = falloc(cin * P), *res = falloc(cout * P), *dout = falloc(cout * P);
    float *out_c = falloc(cout * P), *out_w = falloc(cout * P);
    float *din0 = falloc(cin * P), *din_c = falloc(cin * P), *din_w = falloc(cin * P), *din_w0 = falloc(cin * P);
    float *dw_c = falloc(cout * K), *dw_w = falloc(cout * K), *db_c = falloc(cout), *db_w = falloc(cout);
    float *dw0 = falloc(cout * K), *db0 = falloc(cout);
    affine_i pre = {cin, falloc(cin), falloc(cin)};
    fill(w, cout * K, -0.2f, 0.2f); fill(b, cout, -1, 1); fill(in, cin * P, -1, 1);
    fill(res, cout * P, -1, 1); fill(dout, cout * P, -1, 1); fill(din0, cin * P, -1, 1);
    fill(pre.a, cin, 0.5f, 1.5f); fill(pre.s, cin, -0.3f, 0.3f);
    fill(dw0, cout * K, -1, 1); fill(db0, cout, -1, 1);   /* the backward accumulates */
    memcpy(dw_c, dw0, sizeof(float) * cout * K); memcpy(dw_w, dw0, sizeof(float) * cout * K);
    memcpy(db_c, db0, sizeof(float) * cout); memcpy(db_w, db0, sizeof(float) * cout);
    rnvpi_winograd_weights(u, w, cout, cin);
    /* forward: chunked im2col + sgemm (cs.kernel 0) against Winograd */
    tr_conv_forward(out_c, in, &pre, w, NULL, b, res, &cs, cout, cin, kh, kw, N, H, W);
    tr_conv_forward(out_w, in, &pre, w, u, b, res, &cs, cout, cin, kh, kw, N, H, W);
    /* backward, accumulating into din0's values, and overwriting */
    memcpy(din_c, din0, sizeof(float) * cin * P);
    memcpy(din_w, din0, sizeof(float) * cin * P);
    tr_conv_backward(din_c, dw_c, db_c, dout, in, &pre, w, NULL, &cs, 1, cout, cin, kh, kw, N, H, W);
    tr_conv_backward(din_w, dw_w, db_w, dout, in, &pre, w, u, &cs, 1, cout, cin, kh, kw, N, H, W);
    ck_assert_msg(!memcmp(db_c, db_w, sizeof(float) * cout), "db is the same sum either way");
    fill(din_w0, cin * P, -1, 1);   /* overwritten: its values must not matter */
    float *dw_s = falloc(cout * K), *db_s = falloc(cout);
    tr_conv_backward(din_w0, dw_s, db_s, dout, in, &pre, w, u, &cs, 0, cout, cin, kh, kw, N, H, W);
    free(dw_s);
    free(db_s);
    /* float64 references and the magnitudes sum_terms |w x| of each output */
    double *rout = calloc(cout * P, sizeof(double)), *aout = calloc(cout * P, sizeof(double));
    double *rdin = calloc(cin * P, sizeof(double)), *adin = calloc(cin * P, sizeof(double));
    double *rdw = calloc(cout * K, sizeof(double));
    for (int o = 0; o < cout; o++)
        for (int n = 0; n < N; n++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    const size_t op = o * P + n * HW + i * W + j;
                    double sum = (double)b[o] + res[op], mag = fabs(b[o]) + fabs(res[op]);
                    for (int ci = 0; ci < cin; ci++)
                        for (int di = 0; di < 3; di++)
                            for (int dj = 0; dj < 3; dj++) {
                                const int si = i + di - 1, sj = j + dj - 1;
                                if (si < 0 || si >= H || sj < 0 || sj >= W) continue;
                                const size_t ip = ci * P + n * HW + si * W + sj;
                                const double x = fmax(0.0, (double)pre.a[ci] * in[ip] + pre.s[ci]);
                                const double wv = w[o * K + (ci * 3 + di) * 3 + dj];
                                sum += wv * x;
                                mag += fabs(wv * x);
                                /* din is the gradient of pre(in): every tap, the ReLU not chained */
                                rdin[ip] += wv * dout[op];
                                adin[ip] += fabs(wv * dout[op]);
                                rdw[o * K + (ci * 3 + di) * 3 + dj] += x * dout[op];
                            }
                    rout[op] = sum;
                    aout[op] = mag;
                }
    double e_oc = 0, e_ow = 0, m_o = 0, e_dc = 0, e_dw = 0, e_d0 = 0, m_d = 0;
    double u_oc = 0, u_ow = 0, u_dc = 0, u_dw = 0;   /* worst error / (u sum|terms|) */
    const double ulp = ldexp(1.0, -24);
    for (size_t i = 0; i < cout * P; i++) {
        e_oc = fmax(e_oc, fabs(out_c[i] - rout[i]));
        e_ow = fmax(e_ow, fabs(out_w[i] - rout[i]));
        m_o = fmax(m_o, fabs(rout[i]));
        if (aout[i] > 0) {
            u_oc = fmax(u_oc, fabs(out_c[i] - rout[i]) / (ulp * aout[i]));
            u_ow = fmax(u_ow, fabs(out_w[i] - rout[i]) / (ulp * aout[i]));
        }
    }
    for (size_t i = 0; i < cin * P; i++) {
        const double r = rdin[i] + din0[i];
        e_dc = fmax(e_dc, fabs(din_c[i] - r));
        e_dw = fmax(e_dw, fabs(din_w[i] - r));
        e_d0 = fmax(e_d0, fabs(din_w0[i] - rdin[i]));
        m_d = fmax(m_d, fabs(rdin[i]));
        if (adin[i] > 0) {
            u_dc = fmax(u_dc, fabs(din_c[i] - r) / (ulp * (adin[i] + fabs(din0[i]))));
            u_dw = fmax(u_dw, fabs(din_w[i] - r) / (ulp * (adin[i] + fabs(din0[i]))));
        }
    }
    double e_wc = 0, e_ww = 0, m_w = 0;
    for (size_t i = 0; i < cout * K; i++) {
        e_wc = fmax(e_wc, fabs(dw_c[i] - dw0[i] - rdw[i]));
        e_ww = fmax(e_ww, fabs(dw_w[i] - dw0[i] - rdw[i]));
        m_w = fmax(m_w, fabs(rdw[i]));
    }
    printf("  winograd %dx%d, cin %d cout %d, N %d, %d thread(s): rel err out im2col %.1e winograd %.1e; "
           "din (+=) im2col %.1e winograd %.1e, din (=) winograd %.1e; worst per output in u sum|terms|: "
           "out %.2f / %.2f, din %.2f / %.2f; dw (+=) im2col %.1e winograd %.1e\n", H, W, cin, cout, N, nt,
           e_oc / m_o, e_ow / m_o, e_dc / m_d, e_dw / m_d, e_d0 / m_d, u_oc, u_ow, u_dc, u_dw, e_wc / m_w, e_ww / m_w);
    ck_assert(e_oc / m_o < 1e-5 && e_ow / m_o < 1e-5);
    ck_assert(e_dc / m_d < 1e-5 && e_dw / m_d < 1e-5 && e_d0 / m_d < 1e-5);
    ck_assert(u_ow < 16 && u_dw < 16);
    ck_assert(e_wc / m_w < 1e-5 && e_ww / m_w < 1e-5);
    rnvpi_tpool_free(cs.tp);
    free(cs.col); free(cs.dcol); free(cs.dwp); free(cs.mask); free(cs.winot); free(cs.zeros); free(cs.dut);
    free(dw0); free(db0); free(rdw);
    free(w); free(u); free(b); free(in); free(res); free(dout); free(out_c); free(out_w); free(din0);
    free(din_c); free(din_w); free(din_w0); free(dw_c); free(dw_w); free(db_c); free(db_w); free(pre.a);
    free(pre.s); free(rout); free(aout); free(rdin); free(adin);
}

START_TEST(test_conv_winograd)
{
    if (!rnvpi_winograd_available()) {
        printf("  winograd: this CPU lacks AVX2 + FMA, skipped\n");
        return;
    }
    conv_winograd_case(35, 37, 3, 9, 11, 1);
    conv_winograd_case(35, 37, 3, 9, 11, 2);
    conv_winograd_case(5, 3, 2, 7, 6, 2);     /* a few channels: one partial register block */
    conv_winograd_case(13, 66, 1, 1, 3, 1);   /* a 1-row plane: every tile partial */
}
END_TEST

/* ---------------------------------------------------------------- batch norm + relu */

struct bn_ctx {
    bn_p p;
    bn_saved sv;
    int C;
    size_t P;
    float *x, *r;
};

static double bn_obj(void *v)
{
    struct bn_ctx *c = v;
    tr_bn_forward(&c->sv, c->x, &c->p, 1e-5, 0, c->C, c->P, NULL, NULL);
    double J = 0;
    for (int ch = 0; ch < c->C; ch++)
        for (size_t i = 0; i < c->P; i++) {
            float z = c->sv.aff.a[ch] * c->x[ch * c->P + i] + c->sv.aff.s[ch];
            J += (double)c->r[ch * c->P + i] * (z > 0 ? z : 0);
        }
    return J;
}

START_TEST(test_bn)
{
    struct bn_ctx c = {.C = 3, .P = 2 * 4 * 3};
    const int C = c.C;
    const size_t P = c.P;
    c.p = (bn_p){C, falloc(C), falloc(C), falloc(C), falloc(C)};
    fill(c.p.w, C, 0.5f, 1.5f);
    fill(c.p.b, C, -0.5f, 0.5f);
    c.sv = (bn_saved){falloc(C), falloc(C), falloc(C), {C, falloc(C), falloc(C)}, calloc(2 * C + 1, sizeof(double))};
    c.x = falloc(C * P);
    c.r = falloc(C * P);
    for (int ch = 0; ch < C; ch++) fill(c.x + ch * P, P, -1.0f + ch, 1.0f + 2 * ch);
    fill(c.r, C * P, -1, 1);
    float *dx = falloc(C * P), *dw = falloc(C), *db = falloc(C), *dr = falloc(C * P);
    bn_obj(&c);
    memcpy(dr, c.r, sizeof(float) * C * P);
    tr_bn_backward(dx, dw, db, dr, c.x, &c.sv, 1, C, P, NULL, NULL);
    fd_check("batch norm (batch stats) + relu d input", bn_obj, &c, c.x, dx, C * P, 3e-3, 2e-3);
    fd_check("batch norm (batch stats) + relu d weight", bn_obj, &c, c.p.w, dw, C, 3e-3, 2e-3);
    fd_check("batch norm (batch stats) + relu d bias", bn_obj, &c, c.p.b, db, C, 3e-3, 2e-3);
    /* running statistics: r <- 0.9 r + 0.1 batch (biased variance) */
    fill(c.p.rm, C, 0, 1);
    fill(c.p.rv, C, 1, 2);
    float rm0 = c.p.rm[1], rv0 = c.p.rv[1];
    tr_bn_forward(&c.sv, c.x, &c.p, 1e-5, 1, C, P, NULL, NULL);
    double m = 0, q = 0;
    for (size_t i = 0; i < P; i++) m += c.x[P + i];
    m /= P;
    for (size_t i = 0; i < P; i++) q += (c.x[P + i] - m) * (c.x[P + i] - m);
    ck_assert_float_eq_tol(c.p.rm[1], 0.9 * rm0 + 0.1 * m, 1e-6);
    ck_assert_float_eq_tol(c.p.rv[1], 0.9 * rv0 + 0.1 * q / P, 1e-6);
    free(c.p.w); free(c.p.b); free(c.p.rm); free(c.p.rv); free(c.sv.mean); free(c.sv.inv_std);
    free(c.sv.var); free(c.sv.red); free(c.sv.aff.a); free(c.sv.aff.s); free(c.x); free(c.r); free(dx); free(dw);
    free(db); free(dr);
}
END_TEST

/* ---------------------------------------------------------------- logit */

struct logit_ctx {
    int N, C, H, W;
    double alpha;
    float *xt, *y, *r;
    double ld[4], rl[4];
};

static double logit_obj(void *v)
{
    struct logit_ctx *c = v;
    memset(c->ld, 0, sizeof c->ld);
    tr_logit_forward(c->y, c->ld, c->xt, c->alpha, c->N, c->C, c->H, c->W);
    double J = dot(c->y, c->r, (size_t)c->N * c->C * c->H * c->W);
    for (int n = 0; n < c->N; n++) J += c->rl[n] * c->ld[n];
    return J;
}

START_TEST(test_logit)
{
    struct logit_ctx c = {.N = 2, .C = 2, .H = 3, .W = 3, .alpha = 0.05, .rl = {0.7, -1.3}};
    const size_t n = (size_t)c.N * c.C * c.H * c.W;
    c.xt = falloc(n); c.y = falloc(n); c.r = falloc(n);
    fill(c.xt, n, 0.05f, 0.95f);
    fill(c.r, n, -1, 1);
    float *dxt = falloc(n);
    logit_obj(&c);
    tr_logit_backward(dxt, c.r, c.rl, c.xt, c.alpha, c.N, c.C, c.H, c.W);
    fd_check("logit pre-processing incl. log-det d xt", logit_obj, &c, c.xt, dxt, n, 1e-3, 2e-3);
    free(c.xt); free(c.y); free(c.r); free(dxt);
}
END_TEST

/* ---------------------------------------------------------------- squeeze, split, prior */

struct perm_ctx {
    int C, N, H, W, which;   /* 0 squeeze, 1 split, 2 prior */
    float *x, *y, *r;
    double lp[3], rl[3];
    int ch[4];
};

static double perm_obj(void *v)
{
    struct perm_ctx *c = v;
    const size_t P = (size_t)c->N * c->H * c->W, n = (size_t)c->C * P;
    if (c->which == 0) rnvpi_squeeze_forward(c->y, c->x, c->C, c->N, c->H, c->W);
    if (c->which == 1) tr_split_forward(c->y, c->x, c->C / 4, P);
    if (c->which == 2) {
        memset(c->lp, 0, sizeof c->lp);
        tr_prior_forward(c->lp, c->x, c->ch, 2, c->N, c->H * c->W);
        double J = 0;
        for (int i = 0; i < c->N; i++) J += c->rl[i] * c->lp[i];
        return J;
    }
    return dot(c->y, c->r, c->which == 1 ? n / 2 : n);
}

START_TEST(test_squeeze_split_prior)
{
    struct perm_ctx c = {.C = 4, .N = 3, .H = 4, .W = 6, .rl = {0.5, -1, 2}, .ch = {3, 1}};
    const size_t n = (size_t)c.C * c.N * c.H * c.W, P = n / c.C;
    c.x = falloc(n); c.y = falloc(n); c.r = falloc(n);
    fill(c.x, n, -2, 2);
    fill(c.r, n, -1, 1);
    float *dx = falloc(n);
    c.which = 0;
    tr_sq_backward(dx, c.r, c.C, c.N, c.H, c.W);
    fd_check("squeeze d input", perm_obj, &c, c.x, dx, n, 1e-2, 1e-4);
    /* squeeze is docs/model.md's index map */
    rnvpi_squeeze_forward(c.y, c.x, c.C, c.N, c.H, c.W);
    ck_assert_float_eq(c.y[(size_t)(2 * 4 + 1 * 2 + 1) * c.N * 6 + 1 * 6 + 1 * 3 + 2],
                       c.x[(size_t)2 * P + 1 * 24 + 3 * 6 + 5]);
    memset(dx, 0, sizeof(float) * n);
    c.which = 1;
    tr_split_backward(dx, c.r, c.C / 4, P);
    fd_check("split d input", perm_obj, &c, c.x, dx, n, 1e-2, 1e-4);
    ck_assert_int_eq(rnvpi_split_keep(0, 1), 0);
    ck_assert_int_eq(rnvpi_split_keep(1, 1), 3);
    ck_assert_int_eq(rnvpi_split_drop(0, 1), 1);
    ck_assert_int_eq(rnvpi_split_drop(1, 1), 2);
    memset(dx, 0, sizeof(float) * n);
    c.which = 2;
    tr_prior_backward(dx, c.rl, c.x, c.ch, 2, c.N, c.H * c.W);
    fd_check("standard normal prior d z", perm_obj, &c, c.x, dx, n, 1e-2, 2e-3);
    free(c.x); free(c.y); free(c.r); free(dx);
}
END_TEST

/* ---------------------------------------------------------------- coupling map, flow batch norm */

struct aff_ctx {
    int Ct, N, H, W, parity, fbn;
    float *x, *st, *scale, *y, *r;
    fbn_saved sv;
    double ld[3], rl[3];
};

static double aff_obj(void *v)
{
    struct aff_ctx *c = v;
    const size_t n = (size_t)c->Ct * c->N * c->H * c->W;
    memset(c->ld, 0, sizeof c->ld);
    if (c->fbn) {
        memcpy(c->y, c->x, sizeof(float) * n);
        tr_fbn_forward(&c->sv, c->y, c->ld, NULL, NULL, 1e-4, 0, c->parity, c->Ct, c->N, c->H, c->W, NULL);
    } else {
        rnvpi_affine_forward(c->y, c->ld, c->x, c->st, c->scale, NULL, NULL, c->parity, c->Ct, c->N, c->H, c->W);
    }
    double J = dot(c->y, c->r, n);
    for (int i = 0; i < c->N; i++) J += c->rl[i] * c->ld[i];
    return J;
}

static void aff_case(int parity, int fbn)
{
    struct aff_ctx c = {.Ct = 2, .N = 3, .H = 4, .W = 5, .parity = parity, .fbn = fbn,
                        .rl = {0.8, -0.4, 1.1}};
    const size_t n = (size_t)c.Ct * c.N * c.H * c.W;
    c.x = falloc(n); c.st = falloc(2 * n); c.scale = falloc(c.Ct); c.y = falloc(n); c.r = falloc(n);
    c.sv = (fbn_saved){falloc(c.Ct), falloc(c.Ct), falloc(c.Ct), calloc(2 * c.Ct + 3, sizeof(double))};
    fill(c.x, n, -2, 2);
    for (size_t i = 0; i < n; i++) c.x[i] += (float)(i / (n / 2));   /* channel means differ */
    fill(c.st, 2 * n, -1.5f, 1.5f);
    fill(c.scale, c.Ct, 0.3f, 1.2f);
    fill(c.r, n, -1, 1);
    float *dx = falloc(n), *dst = falloc(2 * n), *dscale = falloc(c.Ct), *d = falloc(n);
    aff_obj(&c);
    char buf[96];
    const char *kind = parity < 0 ? "channel" : parity ? "checkerboard parity 1" : "checkerboard parity 0";
    if (fbn) {
        memcpy(d, c.r, sizeof(float) * n);
        tr_fbn_backward(d, c.y, c.rl, &c.sv, parity, c.Ct, c.N, c.H, c.W, NULL);
        snprintf(buf, sizeof buf, "flow batch norm incl. log-det, %s", kind);
        fd_check(buf, aff_obj, &c, c.x, d, n, 1e-2, 2e-3);
    } else {
        tr_affine_backward(dx, dst, dscale, c.r, c.rl, c.x, c.st, c.scale, parity, c.Ct, c.N, c.H, c.W);
        snprintf(buf, sizeof buf, "coupling map incl. log-det, %s d x", kind);
        fd_check(buf, aff_obj, &c, c.x, dx, n, 1e-2, 2e-3);
        snprintf(buf, sizeof buf, "coupling map incl. log-det, %s d s,t", kind);
        fd_check(buf, aff_obj, &c, c.st, dst, 2 * n, 1e-2, 2e-3);
        snprintf(buf, sizeof buf, "coupling map incl. log-det, %s d scale", kind);
        fd_check(buf, aff_obj, &c, c.scale, dscale, c.Ct, 1e-2, 2e-3);
    }
    free(c.x); free(c.st); free(c.scale); free(c.y); free(c.r); free(c.sv.mean); free(c.sv.var);
    free(c.sv.inv_std); free(c.sv.red); free(dx); free(dst); free(dscale); free(d);
}

START_TEST(test_affine)
{
    aff_case(0, 0);
    aff_case(1, 0);
    aff_case(-1, 0);
}
END_TEST

START_TEST(test_flow_bn)
{
    aff_case(0, 1);
    aff_case(1, 1);
    aff_case(-1, 1);
}
END_TEST

/* ---------------------------------------------------------------- the whole model */

static rnvp_config tiny_config(int H, int W, int C, int S, int K, int f0, int f1, int fbn)
{
    rnvp_config c = {.height = H, .width = W, .channels = C, .num_scales = S, .res_blocks = K,
                     .alpha = 0.05, .bn_eps = 1e-5, .flow_batchnorm = fbn, .flow_bn_eps = 1e-4,
                     .kernel = 3};
    c.features[0] = f0;
    for (int s = 1; s < S; s++) c.features[s] = f1;
    return c;
}

/* A float64 reference of the training loss, written from docs/model.md with naive loops in the
 * (N, C, H, W) layout and sharing no code with the trainer: parameters are read from pr, a
 * double copy of m->params (same offsets). Its central differences with h = 1e-6 have no
 * round-off to speak of and almost never step over a ReLU kink, unlike float32 ones. */
typedef struct rt { int N, C, H, W; double *d; } rt;   /* (N, C, H, W) */

static rt rt_new(int N, int C, int H, int W)
{
    rt t = {N, C, H, W, calloc((size_t)N * C * H * W, sizeof(double))};
    return t;
}
#define AT(t, n, c, i, j) ((t).d[(((size_t)(n) * (t).C + (c)) * (t).H + (i)) * (t).W + (j)])

static const double *PR(const double *pr, const rnvp_model *m, const float *p) { return pr + (p - m->params); }

/* out = conv(in) with w = g v / ||v||, zero padding, bias */
static rt ref_conv(const rt in, const conv_p *cv, const double *pr, const rnvp_model *m)
{
    rt o = rt_new(in.N, cv->cout, in.H, in.W);
    const double *v = PR(pr, m, cv->v), *g = PR(pr, m, cv->g), *b = PR(pr, m, cv->b);
    const int K = cv->cin * cv->kh * cv->kw;
    for (int co = 0; co < cv->cout; co++) {
        double nn = 0;
        for (int i = 0; i < K; i++) nn += v[co * K + i] * v[co * K + i];
        const double f = g[co] / sqrt(nn);
        for (int n = 0; n < in.N; n++)
            for (int i = 0; i < in.H; i++)
                for (int j = 0; j < in.W; j++) {
                    double s = b[co];
                    for (int ci = 0; ci < cv->cin; ci++)
                        for (int di = 0; di < cv->kh; di++)
                            for (int dj = 0; dj < cv->kw; dj++) {
                                int si = i + di - cv->kh / 2, sj = j + dj - cv->kw / 2;
                                if (si < 0 || sj < 0 || si >= in.H || sj >= in.W) continue;
                                s += f * v[co * K + (ci * cv->kh + di) * cv->kw + dj] * AT(in, n, ci, si, sj);
                            }
                    AT(o, n, co, i, j) = s;
                }
    }
    return o;
}

/* relu(batch norm with batch statistics, biased variance) */
static rt ref_bn_relu(const rt x, const bn_p *bn, double eps, const double *pr, const rnvp_model *m)
{
    rt o = rt_new(x.N, x.C, x.H, x.W);
    const double *w = PR(pr, m, bn->w), *b = PR(pr, m, bn->b);
    const double cnt = (double)x.N * x.H * x.W;
    for (int c = 0; c < x.C; c++) {
        double mu = 0, var = 0;
        for (int n = 0; n < x.N; n++)
            for (int i = 0; i < x.H; i++)
                for (int j = 0; j < x.W; j++) mu += AT(x, n, c, i, j);
        mu /= cnt;
        for (int n = 0; n < x.N; n++)
            for (int i = 0; i < x.H; i++)
                for (int j = 0; j < x.W; j++) var += pow(AT(x, n, c, i, j) - mu, 2);
        var /= cnt;
        for (int n = 0; n < x.N; n++)
            for (int i = 0; i < x.H; i++)
                for (int j = 0; j < x.W; j++)
                    AT(o, n, c, i, j) = fmax(0.0, w[c] * (AT(x, n, c, i, j) - mu) / sqrt(var + eps) + b[c]);
    }
    return o;
}

/* the s/t network of docs/model.md 2.6 */
static rt ref_net(const rt in, const coupling *c, const double *pr, const rnvp_model *m)
{
    const double eps = m->cfg.bn_eps;
    rt h = ref_conv(in, &c->in_conv, pr, m);
    for (int j = 0; j < c->K; j++) {
        rt r1 = ref_bn_relu(h, &c->bn_a[j], eps, pr, m);
        rt a = ref_conv(r1, &c->conv_a[j], pr, m);
        rt r2 = ref_bn_relu(a, &c->bn_b[j], eps, pr, m);
        rt bb = ref_conv(r2, &c->conv_b[j], pr, m);
        for (size_t i = 0; i < (size_t)h.N * h.C * h.H * h.W; i++) h.d[i] += bb.d[i];
        free(r1.d); free(a.d); free(r2.d); free(bb.d);
    }
    rt r = ref_bn_relu(h, &c->bn_out, eps, pr, m);
    rt o = ref_conv(r, &c->out_conv, pr, m);
    free(h.d); free(r.d);
    return o;
}

/* coupling k (docs/model.md 2.3 / 2.4, then 2.5) on x in place; ld (N) += log-dets */
static void ref_coupling(rt x, double *ld, const coupling *c, const double *pr, const rnvp_model *m)
{
    const int N = x.N, C = x.C, H = x.H, W = x.W, Ct = c->Ct, chk = c->kind == COUPLING_CHECKER;
    const int toff = !chk && c->parity == 0 ? Ct : 0, coff = !chk && c->parity == 1 ? Ct : 0;
    rt in = rt_new(N, c->Cin, H, W);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < W; j++) {
                const int b = (i + j + c->parity) % 2 == 0;
                if (chk) {
                    for (int ch = 0; ch < C; ch++) AT(in, n, ch, i, j) = AT(x, n, ch, i, j) * b;
                    AT(in, n, C, i, j) = b;
                } else {
                    for (int ch = 0; ch < Ct; ch++) AT(in, n, ch, i, j) = AT(x, n, coff + ch, i, j);
                }
            }
    rt st = ref_net(in, c, pr, m);
    const double *scale = PR(pr, m, c->scale);
    /* transformed elements: checkerboard b = 0, channel: the transformed half */
#define TRANSFORMED(i, j) (!chk || (i + j + c->parity) % 2 == 1)
    for (int n = 0; n < N; n++)
        for (int ch = 0; ch < Ct; ch++)
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    if (!TRANSFORMED(i, j)) continue;
                    double s = scale[ch] * tanh(AT(st, n, ch, i, j)), t = AT(st, n, Ct + ch, i, j);
                    AT(x, n, toff + ch, i, j) = AT(x, n, toff + ch, i, j) * exp(s) + t;
                    ld[n] += s;
                }
    if (c->fbn_mean) {
        for (int ch = 0; ch < Ct; ch++) {
            double mu = 0, var = 0, cnt = 0;
            for (int n = 0; n < N; n++)
                for (int i = 0; i < H; i++)
                    for (int j = 0; j < W; j++)
                        if (TRANSFORMED(i, j)) { mu += AT(x, n, toff + ch, i, j); cnt++; }
            mu /= cnt;
            for (int n = 0; n < N; n++)
                for (int i = 0; i < H; i++)
                    for (int j = 0; j < W; j++)
                        if (TRANSFORMED(i, j)) var += pow(AT(x, n, toff + ch, i, j) - mu, 2);
            var /= cnt;
            const double e = var + m->cfg.flow_bn_eps;
            for (int n = 0; n < N; n++) {
                for (int i = 0; i < H; i++)
                    for (int j = 0; j < W; j++)
                        if (TRANSFORMED(i, j)) AT(x, n, toff + ch, i, j) = (AT(x, n, toff + ch, i, j) - mu) / sqrt(e);
                ld[n] += -0.5 * log(e) * cnt / N;
            }
        }
    }
#undef TRANSFORMED
    free(in.d); free(st.d);
}

static double ref_prior(const rt z, int c0, int nc, int n)
{
    double s = 0;
    for (int c = c0; c < c0 + nc; c++)
        for (int i = 0; i < z.H; i++)
            for (int j = 0; j < z.W; j++) s += -0.5 * AT(z, n, c, i, j) * AT(z, n, c, i, j) - 0.5 * log(2 * M_PI);
    return s;
}

static double ref_loss(const rnvp_model *m, const double *pr, const float *xt, int N)
{
    const rnvp_config *cf = &m->cfg;
    int C = cf->channels, H = cf->height, W = cf->width, k = 0;
    double *lp = calloc(N, sizeof(double));
    rt x = rt_new(N, C, H, W);
    for (size_t i = 0; i < (size_t)N * m->D; i++) {   /* docs/model.md 1.2, 1.3 */
        double p = cf->alpha + (1 - 2 * cf->alpha) * xt[i];
        x.d[i] = log(p) - log(1 - p);
        lp[i / m->D] += log(1 - 2 * cf->alpha) - log(p) - log(1 - p);
    }
    for (int s = 0; s < m->S; s++) {
        const int last = s == m->S - 1;
        for (int i = 0; i < (last ? 4 : 3); i++) ref_coupling(x, lp, &m->cp[k++], pr, m);
        if (last) {
            for (int n = 0; n < N; n++) lp[n] += ref_prior(x, 0, C, n);
            break;
        }
        rt q = rt_new(N, 4 * C, H / 2, W / 2);   /* docs/model.md 2.1 */
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++)
                for (int dh = 0; dh < 2; dh++)
                    for (int dw = 0; dw < 2; dw++)
                        for (int i = 0; i < H / 2; i++)
                            for (int j = 0; j < W / 2; j++)
                                AT(q, n, c * 4 + dh * 2 + dw, i, j) = AT(x, n, c, 2 * i + dh, 2 * j + dw);
        for (int i = 0; i < 3; i++) ref_coupling(q, lp, &m->cp[k++], pr, m);
        rt nx = rt_new(N, 2 * C, H / 2, W / 2), z = rt_new(N, 2 * C, H / 2, W / 2);   /* docs/model.md 2.2 */
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++)
                for (int i = 0; i < H / 2; i++)
                    for (int j = 0; j < W / 2; j++) {
                        AT(nx, n, c, i, j) = AT(q, n, c * 4 + 0, i, j);
                        AT(nx, n, C + c, i, j) = AT(q, n, c * 4 + 3, i, j);
                        AT(z, n, c, i, j) = AT(q, n, c * 4 + 1, i, j);
                        AT(z, n, C + c, i, j) = AT(q, n, c * 4 + 2, i, j);
                    }
        for (int n = 0; n < N; n++) lp[n] += ref_prior(z, 0, 2 * C, n);
        free(x.d); free(q.d); free(z.d);
        x = nx;
        C *= 2; H /= 2; W /= 2;
    }
    double loss = 0;   /* docs/model.md 3: mean of -log_prob / (D ln 2) */
    for (int n = 0; n < N; n++) loss += -(lp[n] - m->D * log(256.0)) / (m->D * log(2.0)) / N;
    free(x.d); free(lp);
    return loss;
}

/* For every trainable tensor: central differences (h = 1e-6, float64 reference) of the
 * largest-gradient entry, two random entries and one random direction, against the trainer's
 * float32 gradient. */
static void model_case(const rnvp_config *cfg, int threads, const char *name)
{
    rnvp_model *m;
    rnvp_error err;
    rnvp_set_num_threads(threads);   /* tr_ws_create takes OpenBLAS's thread count */
    ck_assert_msg(rnvp_model_init(&m, cfg, 7, &err) == RNVP_OK, "%s", err.msg);
    const int N = 4;
    tr_ws *ws;
    ck_assert_msg(tr_ws_create(&ws, m, N + 1, &err) == RNVP_OK, "%s", err.msg);
    float *xt = falloc((size_t)N * m->D);
    fill(xt, (size_t)N * m->D, 0.01f, 0.99f);
    float *grad = falloc(m->nparams), *params0 = falloc(m->nparams);
    double *pr = calloc(m->nparams, sizeof(double));
    for (size_t i = 0; i < m->nparams; i++) pr[i] = m->params[i];
    memcpy(params0, m->params, sizeof(float) * m->nparams);
    double loss = tr_forward_backward(ws, m, grad, xt, N, 0);
    ck_assert(isfinite(loss));
    ck_assert_msg(!memcmp(params0, m->params, sizeof(float) * m->nparams),
                  "update_stats 0 changed the parameters");
    ck_assert_double_eq_tol(tr_forward_backward(ws, m, NULL, xt, N, 0), loss, 1e-12);
    const double rl = ref_loss(m, pr, xt, N);
    ck_assert_msg(fabs(rl - loss) < 1e-5 * fabs(rl), "%s: loss %.8f, reference %.8f", name, loss, rl);
    double gscale = 0;
    for (size_t i = 0; i < m->nparams; i++) gscale = fmax(gscale, fabs(grad[i]));
    const double floor = 1e-3 * gscale, h = 1e-6;
    double worst = 0;
    const char *worst_name = "";
    int checked = 0;
    for (int t = 0; t < m->ntensors; t++) {
        rnvp_tensor *T = &m->tensors[t];
        const size_t off = (size_t)(T->data - m->params);
        const float *g = grad + off;
        if (!tr_tensor_trainable(m, t)) {
            for (size_t i = 0; i < T->size; i++) ck_assert_msg(g[i] == 0, "%s has a gradient", T->name);
            continue;
        }
        size_t im = 0;
        for (size_t i = 0; i < T->size; i++) if (fabs(g[i]) > fabs(g[im])) im = i;
        size_t idx[3] = {im, rnvpi_splitmix64(&rng) % T->size, rnvpi_splitmix64(&rng) % T->size};
        for (int e = 0; e < 4; e++) {
            double an = 0, fd;
            if (e < 3) {
                const double p0 = pr[off + idx[e]];
                pr[off + idx[e]] = p0 + h;
                double fp = ref_loss(m, pr, xt, N);
                pr[off + idx[e]] = p0 - h;
                fd = (fp - ref_loss(m, pr, xt, N)) / (2 * h);
                pr[off + idx[e]] = p0;
                an = g[idx[e]];
            } else {   /* a random direction d in [-1, 1]^size */
                double *d = calloc(T->size, sizeof(double));
                for (size_t i = 0; i < T->size; i++) { d[i] = urand(-1, 1); an += d[i] * g[i]; }
                for (size_t i = 0; i < T->size; i++) pr[off + i] += h * d[i];
                double fp = ref_loss(m, pr, xt, N);
                for (size_t i = 0; i < T->size; i++) pr[off + i] -= 2 * h * d[i];
                fd = (fp - ref_loss(m, pr, xt, N)) / (2 * h);
                for (size_t i = 0; i < T->size; i++) pr[off + i] = m->params[off + i];
                free(d);
            }
            const double rel = fabs(fd - an) / fmax(fabs(an), floor);
            if (rel > worst) { worst = rel; worst_name = T->name; }
            ck_assert_msg(rel < 1e-3, "%s: %s (%s) fd %.8e an %.8e max|g| %.3e", name, T->name,
                          e < 3 ? "entry" : "direction", fd, an, gscale);
        }
        checked++;
    }
    printf("  model %-40s loss %.5f (ref %+.1e), %3d tensors x 4: worst rel err %.1e (%s), max|g| %.1e\n",
           name, loss, loss - rl, checked, worst, worst_name, gscale);
    /* the gradient is accumulated */
    float *g2 = falloc(m->nparams);
    memcpy(g2, grad, sizeof(float) * m->nparams);
    tr_forward_backward(ws, m, g2, xt, N, 0);
    for (size_t i = 0; i < m->nparams; i++) ck_assert_float_eq_tol(g2[i], 2 * grad[i], 1e-5 * gscale);
    /* the other thread count gives the same loss and gradient, up to the order of float sums */
    rnvp_set_num_threads(threads == 1 ? 2 : 1);
    tr_ws *ws2;
    ck_assert(tr_ws_create(&ws2, m, N, &err) == RNVP_OK);
    memset(g2, 0, sizeof(float) * m->nparams);
    ck_assert_double_eq_tol(tr_forward_backward(ws2, m, g2, xt, N, 0), loss, 1e-6);
    for (size_t i = 0; i < m->nparams; i++) ck_assert_float_eq_tol(g2[i], grad[i], 1e-5 * gscale);
    tr_ws_free(ws2);
    free(g2); free(xt); free(grad); free(params0); free(pr);
    tr_ws_free(ws);
    rnvp_model_free(m);
}

START_TEST(test_model_4x4_s1_fbn)
{
    rnvp_config cfg = tiny_config(4, 4, 1, 1, 2, 4, 0, 1);
    model_case(&cfg, 1, "4x4x1 S=1 K=2 F=4 flow-bn, 1 thread");
}
END_TEST

START_TEST(test_model_8x8_s2)
{
    rnvp_config cfg = tiny_config(8, 8, 1, 2, 1, 4, 6, 0);
    model_case(&cfg, 2, "8x8x1 S=2 K=1 F=4,6");
    cfg.flow_batchnorm = 1;
    model_case(&cfg, 1, "8x8x1 S=2 K=1 F=4,6 flow-bn, 1 thread");
}
END_TEST

START_TEST(test_model_rgb)
{
    rnvp_config cfg = tiny_config(4, 4, 3, 2, 1, 4, 4, 1);
    model_case(&cfg, 2, "4x4x3 S=2 K=1 F=4,4 flow-bn");
}
END_TEST

START_TEST(test_model_s3)
{
    rnvp_config cfg = tiny_config(8, 8, 1, 3, 1, 3, 4, 1);
    model_case(&cfg, 2, "8x8x1 S=3 K=1 F=3,4,4 flow-bn");
}
END_TEST

/* The trainer's default kernels (Winograd on the 3x3 layers where rnvpi_winograd_wins: here
 * 32 features on 14 x 14 and 64 on 7 x 7, odd planes with partial tiles) against the AVX2 direct
 * + im2col ones (REALNVP_CONV=avx2) and the portable ones (blas) on one batch: the loss to 1e-6
 * relative and every gradient entry within 1e-5 of the largest (the tolerance of the thread-count
 * comparison in model_case), and the loss against the float64 reference to 1e-5 as above. */
START_TEST(test_model_winograd_default)
{
    rnvp_config cfg = tiny_config(14, 14, 1, 2, 1, 32, 64, 1);
    rnvp_model *m;
    rnvp_error err;
    rnvp_set_num_threads(2);
    ck_assert_msg(rnvp_model_init(&m, &cfg, 5, &err) == RNVP_OK, "%s", err.msg);
    const int N = 4;
    float *xt = falloc((size_t)N * m->D);
    fill(xt, (size_t)N * m->D, 0.01f, 0.99f);
    const char *modes[3] = {NULL, "avx2", "blas"};
    float *g[3];
    double loss[3];
    size_t bytes[3];
    const char *old = getenv("REALNVP_CONV");
    char *saved = old ? strdup(old) : NULL;
    for (int k = 0; k < 3; k++) {
        if (modes[k]) setenv("REALNVP_CONV", modes[k], 1); else unsetenv("REALNVP_CONV");
        tr_ws *ws;
        ck_assert_msg(tr_ws_create(&ws, m, N, &err) == RNVP_OK, "%s", err.msg);
        bytes[k] = tr_ws_bytes(ws);
        g[k] = falloc(m->nparams);
        loss[k] = tr_forward_backward(ws, m, g[k], xt, N, 0);
        tr_ws_free(ws);
    }
    if (saved) setenv("REALNVP_CONV", saved, 1); else unsetenv("REALNVP_CONV");
    free(saved);
    /* the default workspace holds the Winograd weights where this CPU runs them */
    if (rnvpi_winograd_available()) ck_assert_uint_gt(bytes[0], bytes[1]);
    double *pr = calloc(m->nparams, sizeof(double));
    for (size_t i = 0; i < m->nparams; i++) pr[i] = m->params[i];
    const double rl = ref_loss(m, pr, xt, N);
    double gscale = 0, e[3] = {0, 0, 0};
    for (size_t i = 0; i < m->nparams; i++) gscale = fmax(gscale, fabs(g[1][i]));
    for (int k = 0; k < 3; k++)
        for (size_t i = 0; i < m->nparams; i++) e[k] = fmax(e[k], fabs(g[k][i] - g[1][i]) / gscale);
    printf("  model 14x14x1 S=2 K=1 F=32,64 flow-bn, 2 threads: loss default %.8f, avx2 %+.1e, blas %+.1e, "
           "float64 ref %+.1e; gradients vs avx2 max|d|/max|g|: default %.1e, blas %.1e (workspace %zu / %zu "
           "bytes)\n", loss[0], loss[1] - loss[0], loss[2] - loss[0], rl - loss[0], e[0], e[2], bytes[0],
           bytes[1]);
    ck_assert(fabs(loss[0] - loss[1]) < 1e-6 * fabs(loss[1]) && fabs(loss[2] - loss[1]) < 1e-6 * fabs(loss[1]));
    ck_assert(fabs(rl - loss[0]) < 1e-5 * fabs(rl));
    ck_assert(e[0] < 1e-5 && e[2] < 1e-5);
    for (int k = 0; k < 3; k++) free(g[k]);
    free(xt); free(pr);
    rnvp_model_free(m);
}
END_TEST

/* ---------------------------------------------------------------- consistency with the core */

START_TEST(test_matches_inference)
{
    for (int fbn = 0; fbn <= 1; fbn++) {
        rnvp_config cfg = tiny_config(8, 8, 1, 2, 1, 4, 4, fbn);
        rnvp_model *m;
        rnvp_error err;
        ck_assert_msg(rnvp_model_init(&m, &cfg, 3, &err) == RNVP_OK, "%s", err.msg);
        const int N = 3, D = m->D;
        uint8_t *pix = malloc((size_t)N * D);
        float *noise = falloc((size_t)N * D), *xt = falloc((size_t)N * D);
        for (int i = 0; i < N * D; i++) {
            pix[i] = (uint8_t)(rnvpi_splitmix64(&rng) & 255);
            noise[i] = urand(0, 1);
            xt[i] = (pix[i] + noise[i]) / 256.0f;
        }
        tr_ws *ws;
        ck_assert(tr_ws_create(&ws, m, N, &err) == RNVP_OK);
        /* running statistics <- this batch's statistics: r <- 0.9 r + 0.1 b, 400 times */
        double loss = 0;
        for (int it = 0; it < 400; it++) loss = tr_forward_backward(ws, m, NULL, xt, N, 1);
        rnvpi_model_fold(m);
        rnvp_ctx *ctx;
        ck_assert(rnvp_ctx_create(&ctx, m, N, &err) == RNVP_OK);
        double lp[3], bpd[3], mean = 0;
        ck_assert(rnvp_log_prob(ctx, lp, bpd, pix, noise, N, &err) == RNVP_OK);
        for (int i = 0; i < N; i++) mean += bpd[i] / N;
        printf("  training loss %.6f vs inference bits/dim %.6f (flow-bn %d): diff %.1e\n", loss, mean,
               fbn, fabs(loss - mean));
        ck_assert_double_eq_tol(loss, mean, 1e-4);
        /* the near-identity initialisation: the flow is close to the identity, so the loss is
         * that of the logit pre-processing under the prior */
        tr_init_params(m, 5);
        double l0 = tr_forward_backward(ws, m, NULL, xt, N, 0);
        ck_assert(isfinite(l0));
        rnvp_ctx_free(ctx);
        tr_ws_free(ws);
        rnvp_model_free(m);
        free(pix); free(noise); free(xt);
    }
}
END_TEST

START_TEST(test_init_trainable)
{
    rnvp_config cfg = tiny_config(8, 8, 1, 2, 1, 4, 4, 1);
    rnvp_model *m;
    rnvp_error err;
    ck_assert(rnvpi_model_build(&m, &cfg, NULL, NULL, &err) == RNVP_OK);
    tr_init_params(m, 1);
    int stats = 0;
    for (int t = 0; t < m->ntensors; t++) {
        const rnvp_tensor *T = &m->tensors[t];
        const char *n = T->name;
        int tr = tr_tensor_trainable(m, t);
        if (strstr(n, "running_")) { ck_assert(!tr); stats++; } else ck_assert(tr);
        for (size_t i = 0; i < T->size; i++) ck_assert(isfinite(T->data[i]));
        if (strstr(n, "running_var") || (strstr(n, "bn_") && strstr(n, ".weight")))
            ck_assert_float_eq(T->data[0], 1.0f);
    }
    ck_assert_int_gt(stats, 0);
    ck_assert(!tr_tensor_trainable(m, -1) && !tr_tensor_trainable(m, m->ntensors));
    /* deterministic in the seed */
    float *p = falloc(m->nparams);
    memcpy(p, m->params, sizeof(float) * m->nparams);
    tr_init_params(m, 1);
    ck_assert(!memcmp(p, m->params, sizeof(float) * m->nparams));
    free(p);
    rnvp_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gradcheck");
    TCase *tl = tcase_create("layers");
    tcase_add_test(tl, test_conv);
    tcase_add_test(tl, test_conv_chunks);
    tcase_add_test(tl, test_conv_winograd);
    tcase_add_test(tl, test_bn);
    tcase_add_test(tl, test_logit);
    tcase_add_test(tl, test_squeeze_split_prior);
    tcase_add_test(tl, test_affine);
    tcase_add_test(tl, test_flow_bn);
    suite_add_tcase(s, tl);
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 60);
    tcase_add_test(tm, test_model_4x4_s1_fbn);
    tcase_add_test(tm, test_model_8x8_s2);
    tcase_add_test(tm, test_model_rgb);
    tcase_add_test(tm, test_model_s3);
    tcase_add_test(tm, test_model_winograd_default);
    tcase_add_test(tm, test_matches_inference);
    tcase_add_test(tm, test_init_trainable);
    suite_add_tcase(s, tm);
    SRunner *r = srunner_create(s);
    srunner_set_fork_status(r, CK_NOFORK);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed != 0;
}
