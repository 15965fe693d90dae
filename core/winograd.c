/* winograd.c: Winograd F(2x2,3x3) inference convolutions for the 3x3 stride-1 "same" layers in the
 * (C, N, H, W) layout (AVX2 + FMA), with the preceding batch norm + ReLU fused into the input
 * transform and the bias + residual into the output transform; and the weight transform done once
 * when the weights are folded. Leaves out the other kernels and the kernel choice (conv.c).
 *
 * Per output channel k and 2x2 output tile: Y = A^T [ sum_c (G g_kc G^T) .* (B^T d_c B) ] A with
 * d_c the tile's 4x4 input patch (padding 1), i.e. 16 independent GEMMs (K x C) x (C x tiles), one
 * per position xi of the 4x4 transformed tile. Tiles never cross images, so an image's result
 * does not depend on the batch, the block or the thread. */
#include "internal.h"
#include "tpool.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_WINOGRAD 1
#endif

#define TB 16   /* tiles per block: two 8-float registers */
#define WMR 6   /* output channels per register block: 12 accumulators */

void rnvpi_winograd_weights(float *u, const float *w, int cout, int cin)
{
    /* u[xi][o][c] = (G g G^T)[xi] with g = w[o][c] (3x3), in double, rounded once */
    static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
    for (int o = 0; o < cout; o++)
        for (int c = 0; c < cin; c++) {
            const float *g = w + ((size_t)o * cin + c) * 9;
            double t[4][3];   /* G g */
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 3; j++)
                    t[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                    u[((size_t)(i * 4 + j) * cout + o) * cin + c] =
                        (float)(t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2]);
        }
}

size_t rnvpi_winograd_panel_floats(int cin)
{
    /* V (16, cin, TB), M (16, WMR, TB), the transposition buffer (TB, 16), 16 to align */
    return (size_t)16 * TB * cin + 16 * WMR * TB + TB * 16 + 16;
}

int rnvpi_winograd_available(void)
{
#ifdef HAVE_WINOGRAD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int rnvpi_winograd_wins(const conv_i *cv, int N, int H, int W)
{
    /* bench/bench_conv_shapes.c, 2 threads, AVX2 (docs/benchmarks.md): Winograd is 1.1-1.9x faster
     * on the 32- and 64-channel block convolutions of planes of 14x14 and more, even or slower on
     * 32 channels at 7x7 (a 7x7 plane fills 49 of its 64 tile positions), and about 2x slower on
     * the in_convs of 2-5 input channels, where the transforms outweigh the multiplications.
     * Whole models at small batches (bench_core, log_prob, 2 threads, AVX2 direct vs this rule):
     * the 1 GFLOP model 52.0 vs 44.4 images/s at batch 1, 54.3 vs 55.6 at 2, 58.4 vs 63.4 at 4; the
     * shipped model 159 vs 150 at 1, 165 vs 162 at 2, 188 vs 208 at 16: from 4 images on. */
    return N >= 4 && cv->cin >= 32 && cv->cout >= 32 && ((H >= 14 && W >= 14) || cv->cin >= 64);
}

#ifdef HAVE_WINOGRAD
#define AVX2F __attribute__((target("avx2,fma")))

static float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/* One tile of a block: where its 4x4 input patch and 2x2 output start (plane offsets, the
 * patch's may be negative), which patch rows / columns lie inside the image (bits), and how many
 * output rows / columns do (a partial tile at an odd border). */
struct tile {
    ptrdiff_t in_off, out_off;
    unsigned rows, cols;
    int orows, ocols;
    int32_t cmask[4];   /* -1 for the patch columns inside the image */
};

static void tile_info(struct tile *tl, ptrdiff_t q, int H, int W, int th, int tw)
{
    const ptrdiff_t per = (ptrdiff_t)th * tw, n = q / per;
    const int rem = (int)(q % per), ti = rem / tw, tj = rem % tw, i0 = 2 * ti - 1, j0 = 2 * tj - 1;
    const ptrdiff_t base = n * H * W;
    tl->in_off = base + (ptrdiff_t)i0 * W + j0;
    tl->out_off = base + (ptrdiff_t)(2 * ti) * W + 2 * tj;
    tl->rows = tl->cols = 0;
    for (int r = 0; r < 4; r++) {
        if (i0 + r >= 0 && i0 + r < H) tl->rows |= 1u << r;
        const int in = j0 + r >= 0 && j0 + r < W;
        if (in) tl->cols |= 1u << r;
        tl->cmask[r] = in ? -1 : 0;
    }
    tl->orows = 2 * ti + 1 < H ? 2 : 1;
    tl->ocols = 2 * tj + 1 < W ? 2 : 1;
}

/* 8x8 transposition: dst[j * ds + i] = src[i * ss + j]. */
AVX2F static inline __attribute__((always_inline)) void transpose8(float *dst, ptrdiff_t ds, const float *src,
                                                                   ptrdiff_t ss)
{
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ss), r2 = _mm256_loadu_ps(src + 2 * ss),
           r3 = _mm256_loadu_ps(src + 3 * ss), r4 = _mm256_loadu_ps(src + 4 * ss),
           r5 = _mm256_loadu_ps(src + 5 * ss), r6 = _mm256_loadu_ps(src + 6 * ss),
           r7 = _mm256_loadu_ps(src + 7 * ss);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
           t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee),
           s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee),
           s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee),
           s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + ds, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * ds, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * ds, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * ds, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * ds, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * ds, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * ds, _mm256_permute2f128_ps(s3, s7, 0x31));
}

/* One patch row times B: [d0 - d2, d1 + d2, d2 - d1, d1 - d3]. */
AVX2F static inline __attribute__((always_inline)) __m128 row_b(__m128 x, __m128 sgn)
{
    const __m128 l = _mm_shuffle_ps(x, x, _MM_SHUFFLE(1, 2, 1, 0));
    const __m128 h = _mm_shuffle_ps(x, x, _MM_SHUFFLE(3, 1, 2, 2));
    return _mm_add_ps(l, _mm_xor_ps(h, sgn));
}

/* V (16, cin, ld) columns 0..TB-1: V[xi][c][t] = (B^T pre(d) B)[xi] for the block's nt tiles
 * (zero for t >= nt), d the 4x4 patch of channel c, pre as in rnvpi_conv_forward_i, padding 0
 * (not pre(0)). A patch row inside the image is one 4-float load (when it stays inside the input
 * buffer; else built value by value), its columns outside the image masked to 0 after pre
 * (bitwise, so even NaN); a patch wholly inside the image (most of them) takes a branch-free
 * path with the same arithmetic. tmp (TB, 16): one tile's 16 values per row, transposed into V. */
AVX2F static void input_block(float *restrict V, ptrdiff_t ld, float *restrict tmp, const float *in,
                              const affine_i *pre, int cin, ptrdiff_t P, int W, const struct tile *tl, int nt)
{
    const ptrdiff_t end = (ptrdiff_t)cin * P;
    const __m128 zero = _mm_setzero_ps();
    const __m128 sgn = _mm_castsi128_ps(_mm_setr_epi32(INT32_MIN, 0, INT32_MIN, INT32_MIN));
    const int affine = pre && pre->a;
    memset(tmp + nt * 16, 0, sizeof(float) * 16 * (size_t)(TB - nt));
    /* the block's patches lie in [lo, hi) of each channel's plane: prefetched one channel ahead
     * (channels are P floats apart, a stride the hardware prefetchers do not follow) */
    ptrdiff_t lo = tl[0].in_off, hi = tl[nt - 1].in_off + 3 * (ptrdiff_t)W + 4;
    if (lo < 0) lo = 0;
    for (int c = 0; c < cin; c++) {
        const __m128 a = _mm_set1_ps(affine ? pre->a[c] : 1.0f), s = _mm_set1_ps(affine ? pre->s[c] : 0.0f);
        const float *ic = in + (ptrdiff_t)c * P;
        if (c + 1 < cin)
            for (ptrdiff_t o = lo; o < hi && (c + 1) * P + o < end; o += 16) _mm_prefetch((const char *)(ic + P + o), _MM_HINT_T0);
        for (int t = 0; t < nt; t++) {
            const struct tile *p = &tl[t];
            __m128 u[4];
            if ((p->rows & p->cols) == 15) {   /* inside the image, so inside the buffer */
                const float *q = ic + p->in_off;
                __m128 x0 = _mm_loadu_ps(q), x1 = _mm_loadu_ps(q + W), x2 = _mm_loadu_ps(q + 2 * W),
                       x3 = _mm_loadu_ps(q + 3 * W);
                if (affine) {
                    x0 = _mm_fmadd_ps(a, x0, s);
                    x1 = _mm_fmadd_ps(a, x1, s);
                    x2 = _mm_fmadd_ps(a, x2, s);
                    x3 = _mm_fmadd_ps(a, x3, s);
                }
                if (pre) {
                    x0 = _mm_max_ps(x0, zero);
                    x1 = _mm_max_ps(x1, zero);
                    x2 = _mm_max_ps(x2, zero);
                    x3 = _mm_max_ps(x3, zero);
                }
                u[0] = row_b(x0, sgn);
                u[1] = row_b(x1, sgn);
                u[2] = row_b(x2, sgn);
                u[3] = row_b(x3, sgn);
            } else {
                for (int r = 0; r < 4; r++) {
                    if (!(p->rows >> r & 1)) {   /* a padding row */
                        u[r] = zero;
                        continue;
                    }
                    const ptrdiff_t o = (ptrdiff_t)c * P + p->in_off + (ptrdiff_t)r * W;
                    __m128 x;
                    if (o >= 0 && o + 4 <= end) {
                        x = _mm_loadu_ps(in + o);
                    } else {   /* at the buffer's ends: only the columns inside the image */
                        float v[4];
                        for (int j = 0; j < 4; j++) v[j] = p->cols >> j & 1 ? in[o + j] : 0.0f;
                        x = _mm_loadu_ps(v);
                    }
                    if (affine) x = _mm_fmadd_ps(a, x, s);
                    if (pre) x = _mm_max_ps(x, zero);
                    if (p->cols != 15) x = _mm_and_ps(x, _mm_loadu_ps((const float *)p->cmask));
                    u[r] = row_b(x, sgn);
                }
            }
            /* B^T times the rows */
            float *d = tmp + t * 16;
            _mm_storeu_ps(d, _mm_sub_ps(u[0], u[2]));
            _mm_storeu_ps(d + 4, _mm_add_ps(u[1], u[2]));
            _mm_storeu_ps(d + 8, _mm_sub_ps(u[2], u[1]));
            _mm_storeu_ps(d + 12, _mm_sub_ps(u[1], u[3]));
        }
        const ptrdiff_t ds = (ptrdiff_t)cin * ld;
        float *v = V + (ptrdiff_t)c * ld;
        transpose8(v, ds, tmp, 16);
        transpose8(v + 8, ds, tmp + 8 * 16, 16);
        transpose8(v + 8 * ds, ds, tmp + 8, 16);
        transpose8(v + 8 * ds + 8, ds, tmp + 8 * 16 + 8, 16);
    }
}

/* M rows 0..mr-1 (stride TB) = u (mr, cin) x v (cin, TB): each value one FMA chain over c. The
 * accumulators are named variables (an array of them ends up on the stack with gcc 12). */
AVX2F static inline __attribute__((always_inline)) void gemm_kernel(float *M, const float *u, int cin,
                                                                    const float *v, int mr)
{
    const __m256 z = _mm256_setzero_ps();
    __m256 a00 = z, a01 = z, a10 = z, a11 = z, a20 = z, a21 = z, a30 = z, a31 = z, a40 = z, a41 = z, a50 = z,
           a51 = z;
    const float *w0 = u, *w1 = u + cin, *w2 = u + 2 * (ptrdiff_t)cin, *w3 = u + 3 * (ptrdiff_t)cin,
                *w4 = u + 4 * (ptrdiff_t)cin, *w5 = u + 5 * (ptrdiff_t)cin;
    for (int c = 0; c < cin; c++) {
        const __m256 x0 = _mm256_load_ps(v + (ptrdiff_t)c * TB);
        const __m256 x1 = _mm256_load_ps(v + (ptrdiff_t)c * TB + 8);
#define STEPW(r)                                              \
    if (mr > r) {                                             \
        const __m256 wv = _mm256_broadcast_ss(w##r + c);      \
        a##r##0 = _mm256_fmadd_ps(wv, x0, a##r##0);           \
        a##r##1 = _mm256_fmadd_ps(wv, x1, a##r##1);           \
    }
        STEPW(0) STEPW(1) STEPW(2) STEPW(3) STEPW(4) STEPW(5)
    }
#define STOREW(r)                                        \
    if (mr > r) {                                        \
        _mm256_store_ps(M + r * TB, a##r##0);            \
        _mm256_store_ps(M + r * TB + 8, a##r##1);        \
    }
    STOREW(0) STOREW(1) STOREW(2) STOREW(3) STOREW(4) STOREW(5)
#undef STEPW
#undef STOREW
}

/* M (16, WMR, TB) for output channels o0 .. o0+mr-1: the 16 GEMMs of the block. */
AVX2F static void gemm_rows(float *M, const float *U, int cout, int cin, const float *V, int o0, int mr)
{
    for (int xi = 0; xi < 16; xi++) {
        const float *u = U + ((ptrdiff_t)xi * cout + o0) * cin;
        const float *v = V + (ptrdiff_t)xi * cin * TB;
        float *m = M + xi * WMR * TB;
        switch (mr) {
        case 6: gemm_kernel(m, u, cin, v, 6); break;
        case 5: gemm_kernel(m, u, cin, v, 5); break;
        case 4: gemm_kernel(m, u, cin, v, 4); break;
        case 3: gemm_kernel(m, u, cin, v, 3); break;
        case 2: gemm_kernel(m, u, cin, v, 2); break;
        default: gemm_kernel(m, u, cin, v, 1); break;
        }
    }
}

/* out[o0 + r] (+ res) = A^T M_r A + b for r < mr, the block's nt tiles; only the output
 * positions inside the image are written (partial tiles at odd borders). res may be out. */
AVX2F static void output_block(float *out, const float *res, const float *M, const float *b, int o0, int mr,
                               ptrdiff_t P, int W, const struct tile *tl, int nt)
{
    for (int r = 0; r < mr; r++) {
        const __m256 bias = _mm256_set1_ps(b[o0 + r]);
        float *op = out + (ptrdiff_t)(o0 + r) * P;
        const float *rp = res ? res + (ptrdiff_t)(o0 + r) * P : NULL;
        for (int h = 0; h < nt; h += 8) {
            __m256 m[16];
            for (int xi = 0; xi < 16; xi++) m[xi] = _mm256_load_ps(M + (xi * WMR + r) * TB + h);
            __m256 s0[4], s1[4];   /* A^T M */
            for (int j = 0; j < 4; j++) {
                s0[j] = _mm256_add_ps(_mm256_add_ps(m[j], m[4 + j]), m[8 + j]);
                s1[j] = _mm256_sub_ps(_mm256_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
            }
            float o[4][8];   /* (A^T M A)[i][j] + b for the 8 tiles */
            _mm256_storeu_ps(o[0], _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0[0], s0[1]), s0[2]), bias));
            _mm256_storeu_ps(o[1], _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s0[1], s0[2]), s0[3]), bias));
            _mm256_storeu_ps(o[2], _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s1[0], s1[1]), s1[2]), bias));
            _mm256_storeu_ps(o[3], _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s1[1], s1[2]), s1[3]), bias));
            const int e = nt - h < 8 ? nt - h : 8;
            for (int l = 0; l < e; l++) {
                const struct tile *p = &tl[h + l];
                float *d = op + p->out_off;
                const float *q = rp ? rp + p->out_off : NULL;
                if (p->orows == 2 && p->ocols == 2) {
                    if (q) {
                        const float q0 = q[0], q1 = q[1], q2 = q[W], q3 = q[W + 1];
                        d[0] = q0 + o[0][l]; d[1] = q1 + o[1][l]; d[W] = q2 + o[2][l]; d[W + 1] = q3 + o[3][l];
                    } else {
                        d[0] = o[0][l]; d[1] = o[1][l]; d[W] = o[2][l]; d[W + 1] = o[3][l];
                    }
                    continue;
                }
                for (int i = 0; i < p->orows; i++)
                    for (int j = 0; j < p->ocols; j++) {
                        const ptrdiff_t k = (ptrdiff_t)i * W + j;
                        d[k] = q ? q[k] + o[2 * i + j][l] : o[2 * i + j][l];
                    }
            }
        }
    }
}

struct wino_job {
    float *out;
    const float *in, *res;
    const conv_i *cv;
    const affine_i *pre;
    int H, W, th, tw;
    ptrdiff_t P, T;            /* columns N*H*W, tiles N*th*tw */
    float *panel;              /* (threads, panel_floats) */
    size_t panel_floats;
    ptrdiff_t blocks, grain;   /* blocks of TB tiles in all; blocks per claim */
    atomic_llong next;         /* first block not yet claimed */
};

/* Blocks b0 .. b1-1 on one thread, its panel: V, M, tmp. */
AVX2F static void wino_blocks(const struct wino_job *j, float *panel, ptrdiff_t b0, ptrdiff_t b1)
{
    const conv_i *cv = j->cv;
    const int cin = cv->cin, cout = cv->cout;
    float *V = align64(panel);                       /* (16, cin, TB) */
    float *M = V + (ptrdiff_t)16 * cin * TB;         /* (16, WMR, TB) */
    float *tmp = M + 16 * WMR * TB;                  /* (TB, 16) */
    struct tile tl[TB];
    for (ptrdiff_t bk = b0; bk < b1; bk++) {
        const ptrdiff_t q0 = bk * TB;
        const int nt = j->T - q0 < TB ? (int)(j->T - q0) : TB;
        for (int t = 0; t < nt; t++) tile_info(&tl[t], q0 + t, j->H, j->W, j->th, j->tw);
        input_block(V, TB, tmp, j->in, j->pre, cin, j->P, j->W, tl, nt);
        for (int o0 = 0; o0 < cout; o0 += WMR) {
            const int mr = cout - o0 < WMR ? cout - o0 : WMR;
            gemm_rows(M, cv->wino, cout, cin, V, o0, mr);
            output_block(j->out, j->res, M, cv->b, o0, mr, j->P, j->W, tl, nt);
        }
    }
}

static void wino_job_run(void *arg, int t, int nt)
{
    struct wino_job *j = arg;
    float *panel = j->panel + (size_t)t * j->panel_floats;
    (void)nt;
    for (;;) {
        const ptrdiff_t b0 = (ptrdiff_t)atomic_fetch_add_explicit(&j->next, j->grain, memory_order_relaxed);
        if (b0 >= j->blocks) break;
        wino_blocks(j, panel, b0, b0 + j->grain < j->blocks ? b0 + j->grain : j->blocks);
    }
}
#endif

void rnvpi_conv_winograd(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                         const net_ws *ws, int N, int H, int W)
{
#ifdef HAVE_WINOGRAD
    struct wino_job j = {.out = out, .in = in, .res = res, .cv = cv, .pre = pre, .H = H, .W = W,
                         .th = (H + 1) / 2, .tw = (W + 1) / 2, .P = (ptrdiff_t)N * H * W};
    j.T = (ptrdiff_t)N * j.th * j.tw;
    j.blocks = (j.T + TB - 1) / TB;
    atomic_init(&j.next, 0);
    if (ws->panel) {
        /* about 4 claims per thread: balance against the cost of a claim */
        const ptrdiff_t g = j.blocks / (4 * (ptrdiff_t)rnvpi_tpool_size(ws->tp));
        j.grain = g < 1 ? 1 : g;
        j.panel = ws->panel;
        j.panel_floats = ws->panel_floats;
        rnvpi_tpool_run_shared(ws->tp, wino_job_run, &j);
    } else {   /* one thread, its panel in col */
        j.grain = j.blocks;
        j.panel = ws->col;
        j.panel_floats = 0;
        wino_job_run(&j, 0, 1);
    }
#else
    (void)out; (void)in; (void)cv; (void)pre; (void)res; (void)ws; (void)N; (void)H; (void)W;
#endif
}

void rnvpi_winograd_weights_adjoint(float *ut, const float *u, int cout, int cin)
{
    /* w' = w transposed and flipped: w'[c][o][a][b] = w[o][c][2-a][2-b], i.e. R g R with R the
     * 3x3 reversal. G R = Pi G with Pi swapping rows 0 and 3 of G (G's rows 1 and 2 are
     * symmetric, rows 0 and 3 each other's mirror), so G (R g R) G^T = Pi (G g G^T) Pi^T: the
     * same values, permuted and transposed, exactly (no rounding) */
    static const int pi[4] = {3, 1, 2, 0};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            const float *s = u + (size_t)(pi[i] * 4 + pi[j]) * cout * cin;   /* (cout, cin) */
            float *d = ut + (size_t)(i * 4 + j) * cin * cout;                   /* (cin, cout) */
            for (int o = 0; o < cout; o++)
                for (int c = 0; c < cin; c++) d[(size_t)c * cout + o] = s[(size_t)o * cin + c];
        }
}

/* ---- the weight gradient (training): forward out[o] = sum_t A^T [ sum_c U[o][c] .* V_t[c] ] A
 * =>  dU[xi][o][c] = sum_t dM_t[xi][o] V_t[xi][c], dM_t = A dY_t A^T (dY_t the tile's 2x2 of
 * dout, 0 outside the image), and dw = G^T dU G per (o, c) ---- */

size_t rnvpi_winograd_wgrad_floats(int cin, int cout, int tc)
{
    /* V and dM of a chunk (16, cin, tc) and (16, cout, tc); tmp (TB, 16); 16 to align. The
     * (16, cin, TB) of a block's own V is no longer used (input_block writes into the chunk):
     * kept so that the workspace layout does not change */
    return (size_t)16 * tc * (cin + cout) + (size_t)16 * cin * TB + TB * 16 + 16;
}

void rnvpi_winograd_wgrad_fold(float *dw, const float *dut, int cout, int cin)
{
    static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
    for (int o = 0; o < cout; o++)
        for (int c = 0; c < cin; c++) {
            double t[4][3];   /* dU G, dU[i][j] = dut[i*4+j][c][o] */
            for (int i = 0; i < 4; i++)
                for (int b = 0; b < 3; b++) {
                    double s = 0;
                    for (int j = 0; j < 4; j++)
                        s += (double)dut[((size_t)(i * 4 + j) * cin + c) * cout + o] * G[j][b];
                    t[i][b] = s;
                }
            float *g = dw + ((size_t)o * cin + c) * 9;
            /* forward: U = G g G^T  =>  dg[a][b] += sum_i G[i][a] (dU G)[i][b] */
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    g[a * 3 + b] += (float)(G[0][a] * t[0][b] + G[1][a] * t[1][b] + G[2][a] * t[2][b] +
                                            G[3][a] * t[3][b]);
        }
}

#ifdef HAVE_WINOGRAD
/* dM (16, cout, ldm) columns t0 .. t0+TB-1 = A dY A^T of the block's tiles (0 for t >= nt). */
AVX2F static void grad_output_block(float *dM, ptrdiff_t ldm, const float *dout, int cout, ptrdiff_t P, int W,
                                    const struct tile *tl, int nt)
{
    float y[4][TB];   /* y00, y01, y10, y11 of each tile, 0 outside the image and for t >= nt */
    memset(y, 0, sizeof y);
    const ptrdiff_t xs = (ptrdiff_t)cout * ldm;   /* from one xi to the next */
    for (int o = 0; o < cout; o++) {
        const float *dp = dout + (ptrdiff_t)o * P;
        for (int t = 0; t < nt; t++) {
            const struct tile *p = &tl[t];
            const float *q = dp + p->out_off;
            y[0][t] = q[0];
            y[1][t] = p->ocols == 2 ? q[1] : 0.0f;
            y[2][t] = p->orows == 2 ? q[W] : 0.0f;
            y[3][t] = p->orows == 2 && p->ocols == 2 ? q[W + 1] : 0.0f;
        }
        float *m = dM + (ptrdiff_t)o * ldm;
        for (int h = 0; h < TB; h += 8) {
            const __m256 y00 = _mm256_loadu_ps(y[0] + h), y01 = _mm256_loadu_ps(y[1] + h),
                         y10 = _mm256_loadu_ps(y[2] + h), y11 = _mm256_loadu_ps(y[3] + h);
            const __m256 z = _mm256_setzero_ps();
            /* A dY (A's rows [1 0], [1 1], [1 -1], [0 -1]), then times A^T on the right */
            const __m256 r[4][2] = {{y00, y01},
                                    {_mm256_add_ps(y00, y10), _mm256_add_ps(y01, y11)},
                                    {_mm256_sub_ps(y00, y10), _mm256_sub_ps(y01, y11)},
                                    {_mm256_sub_ps(z, y10), _mm256_sub_ps(z, y11)}};
            for (int i = 0; i < 4; i++) {
                float *mi = m + 4 * i * xs + h;
                _mm256_storeu_ps(mi, r[i][0]);
                _mm256_storeu_ps(mi + xs, _mm256_add_ps(r[i][0], r[i][1]));
                _mm256_storeu_ps(mi + 2 * xs, _mm256_sub_ps(r[i][0], r[i][1]));
                _mm256_storeu_ps(mi + 3 * xs, _mm256_sub_ps(z, r[i][1]));
            }
        }
    }
}
#endif

void rnvpi_winograd_wgrad(float *dut, const float *dout, const float *in, const affine_i *pre, int cin, int cout,
                          float *buf, int tc, ptrdiff_t q0, ptrdiff_t q1, int N, int H, int W)
{
#ifdef HAVE_WINOGRAD
    const int th = (H + 1) / 2, tw = (W + 1) / 2;
    const ptrdiff_t P = (ptrdiff_t)N * H * W;
    tc -= tc % TB;
    if (tc < TB) tc = TB;
    float *Vc = align64(buf);                        /* (16, cin, tc) */
    float *dMc = Vc + (ptrdiff_t)16 * cin * tc;      /* (16, cout, tc) */
    float *tmp = dMc + (ptrdiff_t)16 * cout * tc;    /* (TB, 16); input_block writes into Vc directly */
    struct tile tl[TB];
    for (ptrdiff_t c0 = q0; c0 < q1; c0 += tc) {
        const int n = q1 - c0 < tc ? (int)(q1 - c0) : tc;   /* tiles in this chunk */
        for (int t0 = 0; t0 < n; t0 += TB) {
            const int nt = n - t0 < TB ? n - t0 : TB;
            for (int t = 0; t < nt; t++) tile_info(&tl[t], c0 + t0 + t, H, W, th, tw);
            input_block(Vc + t0, tc, tmp, in, pre, cin, P, W, tl, nt);   /* TB columns: tc % TB == 0 */
            grad_output_block(dMc + t0, tc, dout, cout, P, W, tl, nt);
        }
        /* dU^T[xi] (cin, cout) += V[xi] (cin, n) x dM[xi]^T (n, cout) */
        for (int xi = 0; xi < 16; xi++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, cin, cout, n, 1.0f,
                        Vc + (ptrdiff_t)xi * cin * tc, tc, dMc + (ptrdiff_t)xi * cout * tc, tc, 1.0f,
                        dut + (ptrdiff_t)xi * cin * cout, cout);
    }
#else
    (void)dut; (void)dout; (void)in; (void)pre; (void)cin; (void)cout; (void)buf; (void)tc;
    (void)q0; (void)q1; (void)N; (void)H; (void)W;
#endif
}
