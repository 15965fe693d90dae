/* winograd.c: Winograd F(2x2,3x3) convolutions for the 3x3 stride-1 "same" layers in the
 * (C, N, H, W) layout (AVX2 + FMA, and AVX-512 kernels giving the same bits), with the preceding
 * batch norm + ReLU fused into the input transform and the bias + residual into the output
 * transform; the weight transform done once when the weights are folded; the training passes
 * (input gradient through the adjoint weights, weight gradient with an AVX-512 kernel of its own
 * or cblas_sgemm); and the bf16 rounding and packing of the bf16 direct kernel (conv.c). Leaves
 * out the other kernels and the kernel choice (conv.c).
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
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_WINOGRAD 1
#endif

#define TB 16   /* tiles per block: two 8-float registers */
#define WMR 6   /* output channels per register block: 12 accumulators */
#define TB5 32  /* AVX-512: tiles per block, two 16-float registers */
#define WMR5 RNVPI_WINO_MR  /* AVX-512: output channels per register block: 16 accumulators */
#ifndef PFC
#define PFC 1   /* AVX-512: input channels the prefetch of the input transform runs ahead */
#endif

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
    /* AVX2: V (16, cin, TB), M (16, WMR, TB), the transposition buffer (TB, 16); AVX-512: V
     * (16, cin, TB5) with 16 floats after each value's rows, M (16, WMR5, TB5); 16 to align */
    const size_t avx2 = (size_t)16 * TB * cin + 16 * WMR * TB + TB * 16;
    const size_t avx512 = (size_t)16 * (TB5 * cin + 16) + 16 * WMR5 * TB5;
    return (avx2 > avx512 ? avx2 : avx512) + 16;
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

int rnvpi_winograd512_available(void)
{
#ifdef HAVE_WINOGRAD
    __builtin_cpu_init();
    return rnvpi_winograd_available() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

int rnvpi_bf16_available(void)
{
#ifdef HAVE_WINOGRAD
    return rnvpi_winograd512_available() && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

int rnvpi_winograd_kind(void)
{
    const char *e = getenv("REALNVP_WINOGRAD");
    if (e && !strcmp(e, "avx2")) return RNVPI_WINO_AVX2;
    if (e && !strcmp(e, "off")) return RNVPI_WINO_OFF;
    return rnvpi_winograd512_available() ? RNVPI_WINO_AVX512 : RNVPI_WINO_AVX2;
}

/* x rounded to bf16, nearest even (NaN stays a quiet NaN): the upper 16 bits */
static uint16_t bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

void rnvpi_bf16_pairs(uint32_t *dst, const float *src, int rows, int K)
{
    const int K2 = (K + 1) / 2;
    for (int o = 0; o < rows; o++) {
        const float *s = src + (size_t)o * K;
        uint32_t *d = dst + (size_t)o * K2;
        for (int k2 = 0; k2 < K2; k2++) {
            const uint32_t lo = bf16_round(s[2 * k2]);
            const uint32_t hi = 2 * k2 + 1 < K ? bf16_round(s[2 * k2 + 1]) : 0;
            d[k2] = lo | hi << 16;
        }
    }
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

int rnvpi_winograd512_wins(const conv_i *cv, int N, int H, int W)
{
    /* bench/bench_conv_shapes.c on an AMD EPYC Zen 5 (2 vCPUs, full-width AVX-512), 2 threads, three
     * runs (docs/benchmarks.md#winograd-on-an-avx-512-cpu): on 32- and 64-channel planes of 14x14
     * and more Winograd is 1.07-1.71x the AVX-512 direct kernel from 4 blocks of 32 tiles on (28x28
     * from 1 image, 14x14 from 3); on 7x7 planes (49 of 64 tile positions used) 0.44-1.35x, and on
     * the in_convs of 2-5 channels 0.52-0.67x: the direct kernel there. 14x14 at batch 1 and 2 (2
     * blocks, uneven shares: 0.72-1.56x alone from run to run) still made the whole 1 GFLOP model
     * 1.10-1.11x faster at batches 1 and 2 (bench_core, 7 interleaved rounds), so planes of 14x14
     * take it from one image on. */
    (void)N;
    return cv->cin >= 32 && cv->cout >= 32 && H >= 14 && W >= 14;
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
    ptrdiff_t row;      /* n * th + ti: tiles with the same row lie side by side */
    int j0;             /* the patch's first column (-1 at the left border) */
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
    tl->row = n * th + ti;
    tl->j0 = j0;
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

/* d (16) = B^T pre(patch) B of one tile's 4x4 patch of channel c (ic = in + c P; in holds
 * [0, end)), padding 0 (not pre(0)). A patch row inside the image is one 4-float load (when it
 * stays inside the input buffer; else built value by value), its columns outside the image
 * masked to 0 after pre (bitwise, so even NaN); a patch wholly inside the image (most of them)
 * takes a branch-free path with the same arithmetic. */
AVX2F static inline __attribute__((always_inline)) void tile_in(float *d, const float *in, const float *ic,
                                                                ptrdiff_t end, int W,
                                                                const struct tile *p, __m128 a, __m128 s,
                                                                int affine, int pre)
{
    const __m128 zero = _mm_setzero_ps();
    const __m128 sgn = _mm_castsi128_ps(_mm_setr_epi32(INT32_MIN, 0, INT32_MIN, INT32_MIN));
    const ptrdiff_t P = ic - in;
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
            const ptrdiff_t o = P + p->in_off + (ptrdiff_t)r * W;
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
    _mm_storeu_ps(d, _mm_sub_ps(u[0], u[2]));
    _mm_storeu_ps(d + 4, _mm_add_ps(u[1], u[2]));
    _mm_storeu_ps(d + 8, _mm_sub_ps(u[2], u[1]));
    _mm_storeu_ps(d + 12, _mm_sub_ps(u[1], u[3]));
}

/* V (16, cin, ld) columns 0..tb-1 (tb: TB, or TB5 for the AVX-512 kernels): V[xi][c][t] =
 * (B^T pre(d) B)[xi] for the block's nt tiles (zero for t >= nt), d the 4x4 patch of channel c,
 * pre as in rnvpi_conv_forward_i (tile_in). tmp (tb, 16): one tile's 16 values per row,
 * transposed into V. */
AVX2F static void input_block(float *restrict V, ptrdiff_t ld, float *restrict tmp, const float *in,
                              const affine_i *pre, int cin, ptrdiff_t P, int W, const struct tile *tl, int nt,
                              int tb)
{
    const ptrdiff_t end = (ptrdiff_t)cin * P;
    const int affine = pre && pre->a;
    memset(tmp + nt * 16, 0, sizeof(float) * 16 * (size_t)(tb - nt));
    /* the block's patches lie in [lo, hi) of each channel's plane: prefetched one channel ahead
     * (channels are P floats apart, a stride the hardware prefetchers do not follow) */
    ptrdiff_t lo = tl[0].in_off, hi = tl[nt - 1].in_off + 3 * (ptrdiff_t)W + 4;
    if (lo < 0) lo = 0;
    for (int c = 0; c < cin; c++) {
        const __m128 a = _mm_set1_ps(affine ? pre->a[c] : 1.0f), sv = _mm_set1_ps(affine ? pre->s[c] : 0.0f);
        const float *ic = in + (ptrdiff_t)c * P;
        if (c + 1 < cin)
            for (ptrdiff_t o = lo; o < hi && (c + 1) * P + o < end; o += 16) _mm_prefetch((const char *)(ic + P + o), _MM_HINT_T0);
        for (int t = 0; t < nt; t++) tile_in(tmp + t * 16, in, ic, end, W, &tl[t], a, sv, affine, pre != NULL);
        const ptrdiff_t ds = (ptrdiff_t)cin * ld;
        float *v = V + (ptrdiff_t)c * ld;
        for (int t0 = 0; t0 < tb; t0 += 8) {
            transpose8(v + t0, ds, tmp + t0 * 16, 16);
            transpose8(v + 8 * ds + t0, ds, tmp + t0 * 16 + 8, 16);
        }
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

/* The e tiles' 2x2 outputs o[i*2 + j][l] (row stride os) into op (+ the residual rp, which may be
 * op), only the positions inside the image. */
static inline __attribute__((always_inline)) void store_tiles(float *op, const float *rp, const float *o,
                                                              int os, const struct tile *tl, int e, int W)
{
    for (int l = 0; l < e; l++) {
        const struct tile *p = &tl[l];
        float *d = op + p->out_off;
        const float *q = rp ? rp + p->out_off : NULL;
        const float o0 = o[l], o1 = o[os + l], o2 = o[2 * os + l], o3 = o[3 * os + l];
        if (p->orows == 2 && p->ocols == 2) {
            if (q) {
                const float q0 = q[0], q1 = q[1], q2 = q[W], q3 = q[W + 1];
                d[0] = q0 + o0; d[1] = q1 + o1; d[W] = q2 + o2; d[W + 1] = q3 + o3;
            } else {
                d[0] = o0; d[1] = o1; d[W] = o2; d[W + 1] = o3;
            }
            continue;
        }
        const float ov[4] = {o0, o1, o2, o3};
        for (int i = 0; i < p->orows; i++)
            for (int j = 0; j < p->ocols; j++) {
                const ptrdiff_t k = (ptrdiff_t)i * W + j;
                d[k] = q ? q[k] + ov[2 * i + j] : ov[2 * i + j];
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
            store_tiles(op, rp, o[0], 8, tl + h, nt - h < 8 ? nt - h : 8, W);
        }
    }
}

/* ---- AVX-512: blocks of TB5 = 32 tiles (two 16-float registers), WMR5 output channels per
 * register block; per output value the same input transform, FMA chain over c and output
 * transform as the AVX2 kernels above, so the results are bitwise those of the AVX2 kernels.
 * And the bf16 packing of the direct kernel's panels (conv.c). ---- */

#define AVX512W __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define AVX512BF __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,avx2,fma")))

/* M rows 0..mr-1 (row r at M + r ms) = u (mr, cin) x v (cin, TB5) (row c at v + c cs), each value one
 * FMA chain over c. */
AVX512W static inline __attribute__((always_inline)) void gemm5_kernel_nv(float *M, ptrdiff_t ms, const float *u, int cin,
                                                                           const float *v, ptrdiff_t cs, int mr, int nv)
{
    const __m512 z = _mm512_setzero_ps();
    __m512 a00 = z, a01 = z, a10 = z, a11 = z, a20 = z, a21 = z, a30 = z, a31 = z, a40 = z, a41 = z, a50 = z,
           a51 = z, a60 = z, a61 = z, a70 = z, a71 = z;
    const float *w0 = u, *w1 = u + cin, *w2 = u + 2 * (ptrdiff_t)cin, *w3 = u + 3 * (ptrdiff_t)cin,
                *w4 = u + 4 * (ptrdiff_t)cin, *w5 = u + 5 * (ptrdiff_t)cin, *w6 = u + 6 * (ptrdiff_t)cin,
                *w7 = u + 7 * (ptrdiff_t)cin;
    for (int c = 0; c < cin; c++) {
        const __m512 x0 = _mm512_load_ps(v + (ptrdiff_t)c * cs);
        const __m512 x1 = nv > 1 ? _mm512_load_ps(v + (ptrdiff_t)c * cs + 16) : x0;
#define STEPW(r)                                              \
    if (mr > r) {                                             \
        const __m512 wv = _mm512_set1_ps(w##r[c]);            \
        a##r##0 = _mm512_fmadd_ps(wv, x0, a##r##0);           \
        if (nv > 1) a##r##1 = _mm512_fmadd_ps(wv, x1, a##r##1); \
    }
        STEPW(0) STEPW(1) STEPW(2) STEPW(3) STEPW(4) STEPW(5) STEPW(6) STEPW(7)
#undef STEPW
    }
#define STOREW(r)                                        \
    if (mr > r) {                                        \
        _mm512_store_ps(M + r * ms, a##r##0);            \
        if (nv > 1) _mm512_store_ps(M + r * ms + 16, a##r##1); \
    }
    STOREW(0) STOREW(1) STOREW(2) STOREW(3) STOREW(4) STOREW(5) STOREW(6) STOREW(7)
#undef STOREW
}

/* Prefetch of the weights u (nxi, cout, cin) of the GEMM two after (xi, rows o0 .. o0+mr-1): value
 * xi + 2 (xi = -2, -1: the first two), or past the last value the next row block's first ones. A layer's transformed weights
 * come from memory or L3 when it starts (at one image they are read once per pass), in pieces of
 * mr cin floats (1-2 KB) too short for the hardware prefetchers. Used by F(2x2) and F(4x4). */
AVX512W static inline __attribute__((always_inline)) void weights_ahead(const float *U, int nxi, int cout, int cin,
                                                                         int xi, int o0, int mr)
{
    const int xn = xi + 2, o1 = o0 + mr;
    const float *un;
    ptrdiff_t cn;
    if (xn < nxi) {
        un = U + ((ptrdiff_t)xn * cout + o0) * cin;
        cn = (ptrdiff_t)mr * cin;
    } else if (o1 < cout) {
        un = U + ((ptrdiff_t)(xn - nxi) * cout + o1) * cin;
        cn = (ptrdiff_t)(cout - o1 < WMR5 ? cout - o1 : WMR5) * cin;
    } else {
        return;
    }
    for (ptrdiff_t k = 0; k < cn; k += 16) _mm_prefetch((const char *)(un + k), _MM_HINT_T0);
}

/* M (16, WMR5, TB5) for output channels o0 .. o0+mr-1: the 16 GEMMs of the block, on its first 16
 * tiles only when nv == 1 (a block of 16 tiles or fewer). */
AVX512W static inline __attribute__((always_inline)) void gemm5_rows_nv(float *M, const float *U, int cout, int cin,
                                                                        const float *V, ptrdiff_t vxs, int o0, int mr,
                                                                        int nv)
{
    for (int xi = 0; xi < 16; xi++) {
        const float *u = U + ((ptrdiff_t)xi * cout + o0) * cin;
        const float *v = V + (ptrdiff_t)xi * vxs;
        float *m = M + xi * WMR5 * TB5;
        weights_ahead(U, 16, cout, cin, xi, o0, mr);
        if (mr == WMR5) gemm5_kernel_nv(m, TB5, u, cin, v, TB5, WMR5, nv);
        else gemm5_kernel_nv(m, TB5, u, cin, v, TB5, mr, nv);
    }
}
AVX512W __attribute__((noinline)) static void gemm5_rows(float *M, const float *U, int cout, int cin, const float *V,
                                                          ptrdiff_t vxs, int o0, int mr, int nv)
{
    if (nv == 1) gemm5_rows_nv(M, U, cout, cin, V, vxs, o0, mr, 1);
    else gemm5_rows_nv(M, U, cout, cin, V, vxs, o0, mr, 2);
}

AVX512W void rnvpi_winograd512_gemm(float *M, ptrdiff_t mxs, ptrdiff_t ms, const float *U, int nxi, int cout, int cin,
                                    const float *V, ptrdiff_t xs, ptrdiff_t cs, int nh, int o0, int mr)
{
    for (int xi = 0; xi < nxi; xi++) {
        const float *u = U + ((ptrdiff_t)xi * cout + o0) * cin;
        weights_ahead(U, nxi, cout, cin, xi, o0, mr);
        for (int p = 0; p < nh; p += 2) {   /* 32 lanes at a time, an odd last 16 alone */
            const float *v = V + (ptrdiff_t)xi * xs + p * 16;
            float *m = M + (ptrdiff_t)xi * mxs + p * 16;
            if (nh - p == 1) {
                if (mr == WMR5) gemm5_kernel_nv(m, ms, u, cin, v, cs, WMR5, 1);
                else gemm5_kernel_nv(m, ms, u, cin, v, cs, mr, 1);
            } else if (mr == WMR5) {
                gemm5_kernel_nv(m, ms, u, cin, v, cs, WMR5, 2);
            } else {
                gemm5_kernel_nv(m, ms, u, cin, v, cs, mr, 2);
            }
        }
    }
}

/* dst ((rows+1)/2, 32) = src (rows, 32) rounded to bf16 (nearest even), rows 2k and 2k+1 of each
 * column in one 32-bit word (the low half row 2k); a missing row 2k+1 (odd rows) is 0. */
AVX512BF void rnvpi_bf16_pack32(uint32_t *dst, const float *src, int rows)
{
    /* vpermw index: word 2t from the even row (words 0..15 of cvtne2ps_pbh's result), word
     * 2t+1 from the odd one (words 16..31) */
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int k = 0; k < rows; k += 2) {
        const float *e = src + (ptrdiff_t)k * 32;
        uint32_t *d = dst + (ptrdiff_t)(k / 2) * 32;
        for (int h = 0; h < 32; h += 16) {
            const __m512 lo = _mm512_load_ps(e + h);
            const __m512 hi = k + 1 < rows ? _mm512_load_ps(e + 32 + h) : _mm512_setzero_ps();
            const __m512i p = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            _mm512_store_si512((void *)(d + h), _mm512_permutexvar_epi16(idx, p));
        }
    }
}

/* A block's tiles for the AVX-512 transforms. Input: an item is a group of k <= 4 neighbouring tiles of
 * one tile row (their patches are columns j0 .. j0+2k+1 of 4 image rows, one 16-float load per
 * row). Output: a run is k <= 16 neighbouring tiles of one tile row inside one 16-tile half of the
 * block, their 2x2 outputs one stretch of 2k floats in each of two image rows (masked stores). */
struct in_item {
    int t, k;
    unsigned rows;
    __mmask16 cols;   /* the group's columns inside the image */
};
struct out_run {
    int h, l0;        /* the half (0 or 16) and the run's first tile in it */
    ptrdiff_t off;    /* output offset of (the first tile's top-left) - 2 l0 */
    uint32_t m0, m1;  /* lanes 0..31 of the interleaved pair written in the top / bottom row */
};

static int plan_items(struct in_item *it, const struct tile *tl, int nt, int W)
{
    int n = 0;
    for (int t = 0; t < nt;) {
        int k = 1;
        while (k < 4 && t + k < nt && tl[t + k].row == tl[t].row && tl[t + k].j0 == tl[t].j0 + 2 * k) k++;
        __mmask16 m = 0;
        for (int x = 0; x < 2 * k + 2; x++)
            if (tl[t].j0 + x >= 0 && tl[t].j0 + x < W) m |= (__mmask16)(1u << x);
        it[n++] = (struct in_item){.t = t, .k = k, .rows = tl[t].rows, .cols = m};
        t += k;
    }
    return n;
}

/* Part k of run u of the interleaved output pairs: k = 0, 1 the top row's lanes 0-15, 16-31, k =
 * 2, 3 the bottom row's; its lanes inside the image (0: none) and *off, its offset in a plane. */
static inline __attribute__((always_inline)) __mmask16 run_part(const struct out_run *u, int k, int W, ptrdiff_t *off)
{
    const uint32_t mm = k < 2 ? u->m0 : u->m1;
    *off = u->off + (k & 1) * 16 + (k < 2 ? 0 : W);
    return (__mmask16)(k & 1 ? mm >> 16 : mm & 0xffff);
}

static int plan_runs(struct out_run *ru, const struct tile *tl, int nt)
{
    int n = 0;
    for (int h = 0; h < nt; h += 16) {
        const int e = nt - h < 16 ? nt : h + 16;
        for (int t = h; t < e;) {
            int k = 1;
            while (t + k < e && tl[t + k].row == tl[t].row && tl[t + k].j0 == tl[t].j0 + 2 * k) k++;
            const int l0 = t - h;
            uint32_t m = (uint32_t)(((1ull << (2 * k)) - 1) << (2 * l0));
            if (tl[t + k - 1].ocols == 1) m &= ~(1u << (2 * (l0 + k) - 1));
            ru[n++] = (struct out_run){.h = h, .l0 = l0, .off = tl[t].out_off - 2 * l0, .m0 = m,
                                       .m1 = tl[t].orows == 2 ? m : 0};
            t += k;
        }
    }
    return n;
}

/* One 4-float row of B for the 4 tiles of a group at once (row_b per 128-bit lane). */
AVX512W static inline __attribute__((always_inline)) __m512 row_b4(__m512 x, __m512 sgn)
{
    const __m512 l = _mm512_shuffle_ps(x, x, _MM_SHUFFLE(1, 2, 1, 0));
    const __m512 h = _mm512_shuffle_ps(x, x, _MM_SHUFFLE(3, 1, 2, 2));
    return _mm512_add_ps(l, _mm512_xor_ps(h, sgn));
}

/* One patch row of a group: pre (the affine map if `affine`, ReLU if `relu`) of the 16 floats at x,
 * the columns outside the image (not in cols) 0, spread to 4 tiles' 4-float rows, times B. */
AVX512W static inline __attribute__((always_inline)) __m512 group_row(__m512 x, __mmask16 cols, __m512 a16, __m512 s16,
                                                                       int affine, int relu)
{
    const __m512i spread = _mm512_setr_epi32(0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9);
    const __m512 sgn = _mm512_castsi512_ps(_mm512_set4_epi32(INT32_MIN, INT32_MIN, 0, INT32_MIN));
    if (affine) x = _mm512_fmadd_ps(a16, x, s16);
    x = relu ? _mm512_maskz_max_ps(cols, x, _mm512_setzero_ps()) : _mm512_maskz_mov_ps(cols, x);
    return row_b4(_mm512_permutexvar_ps(spread, x), sgn);
}

/* group_row of a patch row of a group at the image's top or bottom or at the buffer's ends: 0 for
 * a padding row (!inside; 0, not pre(0)); else the 16 floats at in + o, a masked load of the lanes
 * inside [0, end) where they run past the buffer (plain loads elsewhere: masked ones are slow on
 * AMD Zen). */
AVX512W static inline __attribute__((always_inline)) __m512 border_row(const float *in, ptrdiff_t o, ptrdiff_t end,
                                                                        unsigned inside, __mmask16 cols, __m512 a16,
                                                                        __m512 s16, int affine, int relu)
{
    if (!inside) return _mm512_setzero_ps();
    __m512 x;
    if (o >= 0 && o + 16 <= end) {
        x = _mm512_loadu_ps(in + o);
    } else {
        __mmask16 m = cols;
        for (int l = 0; l < 16; l++)
            if (o + l < 0 || o + l >= end) m &= (__mmask16)~(1u << l);
        x = _mm512_maskz_loadu_ps(m, in + o);
    }
    return group_row(x, cols, a16, s16, affine, relu);
}

/* B^T times the rows u0..u3 of a group of k tiles, each of its 16 values xi = 4i + j into
 * v[xi * xs + 0..k-1] (tile k's values lie in lanes 4k + j of row i; one permutation per row puts
 * each j's 4 tiles side by side). */
AVX512W static inline __attribute__((always_inline)) void group_store(float *v, ptrdiff_t xs, __m512 u0, __m512 u1,
                                                                       __m512 u2, __m512 u3, int k)
{
    const __m512i tr = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512 d0 = _mm512_permutexvar_ps(tr, _mm512_sub_ps(u0, u2)),
                 d1 = _mm512_permutexvar_ps(tr, _mm512_add_ps(u1, u2)),
                 d2 = _mm512_permutexvar_ps(tr, _mm512_sub_ps(u2, u1)),
                 d3 = _mm512_permutexvar_ps(tr, _mm512_sub_ps(u1, u3));
    if (k == 4) {
#define PUT4(r, d)                                                           \
    _mm_storeu_ps(v + (4 * (r)) * xs, _mm512_castps512_ps128(d));             \
    _mm_storeu_ps(v + (4 * (r) + 1) * xs, _mm512_extractf32x4_ps(d, 1));      \
    _mm_storeu_ps(v + (4 * (r) + 2) * xs, _mm512_extractf32x4_ps(d, 2));      \
    _mm_storeu_ps(v + (4 * (r) + 3) * xs, _mm512_extractf32x4_ps(d, 3));
        PUT4(0, d0) PUT4(1, d1) PUT4(2, d2) PUT4(3, d3)
#undef PUT4
    } else {
        const __mmask8 km = (__mmask8)((1u << k) - 1);
#define PUTK(r, d)                                                                  \
    _mm_mask_storeu_ps(v + (4 * (r)) * xs, km, _mm512_castps512_ps128(d));           \
    _mm_mask_storeu_ps(v + (4 * (r) + 1) * xs, km, _mm512_extractf32x4_ps(d, 1));    \
    _mm_mask_storeu_ps(v + (4 * (r) + 2) * xs, km, _mm512_extractf32x4_ps(d, 2));    \
    _mm_mask_storeu_ps(v + (4 * (r) + 3) * xs, km, _mm512_extractf32x4_ps(d, 3));
        PUTK(0, d0) PUTK(1, d1) PUTK(2, d2) PUTK(3, d3)
#undef PUTK
    }
}

/* input5_block's loop for one kind of pre (affine, relu: compile-time constants). */
AVX512W static inline __attribute__((always_inline)) void input5_loop(float *restrict V, ptrdiff_t cs, ptrdiff_t xs,
                                                                       const float *in,
                                                                       const affine_i *pre, int cin, ptrdiff_t P,
                                                                       int W, const struct tile *tl, int nt,
                                                                       const struct in_item *it, int ni,
                                                                       int affine, int relu)
{
    const ptrdiff_t end = (ptrdiff_t)cin * P;
    ptrdiff_t lo = tl[0].in_off, hi = tl[nt - 1].in_off + 3 * (ptrdiff_t)W + 4;
    if (lo < 0) lo = 0;
    for (int c = 0; c < cin; c++) {
        const __m512 a16 = _mm512_set1_ps(affine ? pre->a[c] : 1.0f), s16 = _mm512_set1_ps(affine ? pre->s[c] : 0.0f);
        const float *ic = in + (ptrdiff_t)c * P;
        if (c + PFC < cin)
            for (ptrdiff_t o = lo; o < hi && (c + PFC) * P + o < end; o += 16) _mm_prefetch((const char *)(ic + PFC * P + o), _MM_HINT_T0);
        float *vc = V + (ptrdiff_t)c * cs;
        for (int i = 0; i < ni; i++) {
            const struct in_item *g = &it[i];
            const ptrdiff_t o0 = (ptrdiff_t)c * P + tl[g->t].in_off;
            if (g->rows == 15 && o0 >= 0 && o0 + 3 * (ptrdiff_t)W + 16 <= end) {   /* most groups */
                const float *q = in + o0;
                const __m512 u0 = group_row(_mm512_loadu_ps(q), g->cols, a16, s16, affine, relu),
                             u1 = group_row(_mm512_loadu_ps(q + W), g->cols, a16, s16, affine, relu),
                             u2 = group_row(_mm512_loadu_ps(q + 2 * W), g->cols, a16, s16, affine, relu),
                             u3 = group_row(_mm512_loadu_ps(q + 3 * W), g->cols, a16, s16, affine, relu);
                group_store(vc + g->t, xs, u0, u1, u2, u3, g->k);
                continue;
            }
            /* a group at the image's top or bottom (padding rows: 0) or at the buffer's ends */
            const __m512 u0 = border_row(in, o0, end, g->rows & 1, g->cols, a16, s16, affine, relu),
                         u1 = border_row(in, o0 + W, end, g->rows & 2, g->cols, a16, s16, affine, relu),
                         u2 = border_row(in, o0 + 2 * W, end, g->rows & 4, g->cols, a16, s16, affine, relu),
                         u3 = border_row(in, o0 + 3 * W, end, g->rows & 8, g->cols, a16, s16, affine, relu);
            group_store(vc + g->t, xs, u0, u1, u2, u3, g->k);
        }
    }
}

/* V = input_block's values for the block's nt tiles, bit for bit (the same operations per value,
 * on 4 tiles per register), written from the registers (group_store): V[xi][c][t] at
 * V + c cs + xi xs + t, columns nt .. TB5-1 zero. Inference: cs = TB5, xs = cin TB5 + 16 (wino5_blocks:
 * each value's (cin, TB5) one stretch for its GEMM; 16 floats between them, else the 16 stores per
 * channel, cin TB5 floats apart, fall into one L1 set). */
AVX512W __attribute__((noinline)) static void input5_block(float *restrict V, ptrdiff_t cs, ptrdiff_t xs, const float *in,
                                 const affine_i *pre, int cin, ptrdiff_t P, int W, const struct tile *tl, int nt,
                                 const struct in_item *it, int ni)
{
    if (nt < TB5)
        for (int c = 0; c < cin; c++)
            for (int xi = 0; xi < 16; xi++) memset(V + c * cs + xi * xs + nt, 0, sizeof(float) * (size_t)(TB5 - nt));
    if (pre && pre->a) input5_loop(V, cs, xs, in, pre, cin, P, W, tl, nt, it, ni, 1, 1);
    else if (pre) input5_loop(V, cs, xs, in, pre, cin, P, W, tl, nt, it, ni, 0, 1);
    else input5_loop(V, cs, xs, in, pre, cin, P, W, tl, nt, it, ni, 0, 0);
}

/* output_block for M (16, WMR5, TB5), 16 tiles per step, written by the runs of plan_runs: the
 * same values as output_block, bit for bit. */
AVX512W __attribute__((noinline)) static void output5_block(float *out, const float *res, const float *M, const float *b, int cout, int o0,
                                  int mr, ptrdiff_t P, int W, const struct out_run *ru, int nr, ptrdiff_t plo,
                                  ptrdiff_t phi)
{
    const ptrdiff_t rend = (ptrdiff_t)cout * P;
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int r = 0; r < mr; r++) {
        const __m512 bias = _mm512_set1_ps(b[o0 + r]);
        float *op = out + (ptrdiff_t)(o0 + r) * P;
        const float *rp = res ? res + (ptrdiff_t)(o0 + r) * P : NULL;
        /* the next block's outputs [plo, phi) of this plane: its 128 planes (residual and output)
         * are more streams than the hardware prefetchers follow */
        for (ptrdiff_t o = plo; o < phi; o += 16) {
            if (rp) _mm_prefetch((const char *)(rp + o), _MM_HINT_T0);
            __builtin_prefetch(op + o, 1, 3);
        }
        for (int i = 0; i < nr;) {
            const int h = ru[i].h;
            const float *mp = M + r * TB5 + h;   /* m_xi = mp[xi WMR5 TB5 ..] */
            __m512 s0[4], s1[4];   /* A^T M */
#define AT(j)                                                                                   \
    {                                                                                           \
        const __m512 m0 = _mm512_load_ps(mp + (j) * WMR5 * TB5),                                \
                     m4 = _mm512_load_ps(mp + (4 + (j)) * WMR5 * TB5),                          \
                     m8 = _mm512_load_ps(mp + (8 + (j)) * WMR5 * TB5),                          \
                     m12 = _mm512_load_ps(mp + (12 + (j)) * WMR5 * TB5);                        \
        s0[j] = _mm512_add_ps(_mm512_add_ps(m0, m4), m8);                                       \
        s1[j] = _mm512_sub_ps(_mm512_sub_ps(m4, m8), m12);                                      \
    }
            AT(0) AT(1) AT(2) AT(3)
#undef AT
            /* (A^T M A)[i][j] + b for the 16 tiles, then each row's pair interleaved tile by tile */
            const __m512 y00 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s0[0], s0[1]), s0[2]), bias);
            const __m512 y01 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s0[1], s0[2]), s0[3]), bias);
            const __m512 y10 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s1[0], s1[1]), s1[2]), bias);
            const __m512 y11 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s1[1], s1[2]), s1[3]), bias);
            const __m512 e0 = _mm512_permutex2var_ps(y00, lo, y01), e1 = _mm512_permutex2var_ps(y00, hi, y01),
                         e2 = _mm512_permutex2var_ps(y10, lo, y11), e3 = _mm512_permutex2var_ps(y10, hi, y11);
            for (; i < nr && ru[i].h == h; i++) {
                const struct out_run *u = &ru[i];
                /* top row lanes 0-15, 16-31 (e0, e1); bottom row the same (e2, e3) */
#define PUT(k, e)                                                                                        \
    {                                                                                                    \
        ptrdiff_t off;                                                                                   \
        const __mmask16 m16 = run_part(u, k, W, &off);                                                   \
        if (m16) {                                                                                       \
            __m512 v = e;                                                                                \
            if (rp) { /* a plain load where all 16 lanes lie in res (masked loads are slow on AMD Zen) */ \
                const ptrdiff_t a = (ptrdiff_t)(o0 + r) * P + off;                                       \
                v = _mm512_add_ps(a >= 0 && a + 16 <= rend ? _mm512_loadu_ps(rp + off)                   \
                                                           : _mm512_maskz_loadu_ps(m16, rp + off), v);   \
            }                                                                                            \
            _mm512_mask_storeu_ps(op + off, m16, v);                                                     \
        }                                                                                                \
    }
                PUT(0, e0) PUT(1, e1) PUT(2, e2) PUT(3, e3)
#undef PUT
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
    int kind;                  /* RNVPI_WINO_AVX2 or RNVPI_WINO_AVX512 */
    ptrdiff_t P, T;            /* columns N*H*W, tiles N*th*tw */
    float *panel;              /* (threads, panel_floats) */
    size_t panel_floats;
    ptrdiff_t part;            /* tiles per item: a multiple of TB (AVX2) or 16 (AVX-512) */
    int oparts;                /* output channel parts per tile range (AVX-512) */
    ptrdiff_t items;           /* items in all: ceil(T / part) tile ranges x oparts */
    atomic_llong next;         /* first item not yet claimed */
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
        input_block(V, TB, tmp, j->in, j->pre, cin, j->P, j->W, tl, nt, TB);
        for (int o0 = 0; o0 < cout; o0 += WMR) {
            const int mr = cout - o0 < WMR ? cout - o0 : WMR;
            gemm_rows(M, cv->wino, cout, cin, V, o0, mr);
            output_block(j->out, j->res, M, cv->b, o0, mr, j->P, j->W, tl, nt);
        }
    }
}

/* The AVX-512 blocks for tiles q0 .. q1-1 and output channels oa .. ob-1 (multiples of WMR5 but
 * ob = cout), panel: V, M (16, WMR5, TB5). Blocks of 32 tiles; a last one of 16 or fewer runs its
 * GEMMs on one register of tiles. */
AVX512W static void wino5_blocks(const struct wino_job *j, float *panel, ptrdiff_t q0, ptrdiff_t q1, int oa, int ob)
{
    const conv_i *cv = j->cv;
    const int cin = cv->cin, cout = cv->cout;
    float *V = align64(panel);
    /* V (16, cin, TB5), one value's rows cin TB5 + 16 floats apart: the GEMMs read one stretch
     * per value, and the input transform's 16 stores per channel fall into 16 L1 sets */
    const ptrdiff_t vxs = (ptrdiff_t)cin * TB5 + 16;
    float *M = V + 16 * vxs;
    struct tile tl[TB5];
    struct in_item it[TB5];
    struct out_run ru[TB5];
    for (ptrdiff_t qb = q0; qb < q1; qb += TB5) {
        const int nt = q1 - qb < TB5 ? (int)(q1 - qb) : TB5;
        for (int t = 0; t < nt; t++) tile_info(&tl[t], qb + t, j->H, j->W, j->th, j->tw);
        const int ni = plan_items(it, tl, nt, j->W), nr = plan_runs(ru, tl, nt);
        ptrdiff_t plo = 0, phi = 0;   /* the next block's outputs, prefetched */
        if (qb + TB5 < q1) {   /* the next block is this thread's */
            struct tile a, z;
            tile_info(&a, qb + TB5, j->H, j->W, j->th, j->tw);
            tile_info(&z, q1 - qb - TB5 < TB5 ? q1 - 1 : qb + 2 * TB5 - 1, j->H, j->W, j->th, j->tw);
            plo = a.out_off;
            phi = z.out_off + j->W + 2;
            if (phi > j->P) phi = j->P;
        }
        /* the first two GEMMs' weights (gemm5_rows fetches the rest ahead) during the input transform */
        weights_ahead(cv->wino, 16, cout, cin, -2, oa, ob - oa < WMR5 ? ob - oa : WMR5);
        weights_ahead(cv->wino, 16, cout, cin, -1, oa, ob - oa < WMR5 ? ob - oa : WMR5);
        input5_block(V, TB5, vxs, j->in, j->pre, cin, j->P, j->W, tl, nt, it, ni);
        for (int o0 = oa; o0 < ob; o0 += WMR5) {
            const int mr = ob - o0 < WMR5 ? ob - o0 : WMR5;
            gemm5_rows(M, cv->wino, cout, cin, V, vxs, o0, mr, nt <= 16 ? 1 : 2);
            output5_block(j->out, j->res, M, cv->b, cout, o0, mr, j->P, j->W, ru, nr, plo, phi);
        }
    }
}

static void wino_job_run(void *arg, int t, int nt)
{
    struct wino_job *j = arg;
    float *panel = j->panel + (size_t)t * j->panel_floats;
    const int cout = j->cv->cout;
    (void)nt;
    for (;;) {
        const ptrdiff_t i = (ptrdiff_t)atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (i >= j->items) break;
        const ptrdiff_t q0 = i / j->oparts * j->part, q1 = q0 + j->part < j->T ? q0 + j->part : j->T;
        if (j->kind == RNVPI_WINO_AVX2) {
            wino_blocks(j, panel, q0 / TB, (q1 + TB - 1) / TB);
            continue;
        }
        /* output channel part k of oparts: multiples of WMR5 */
        const int k = (int)(i % j->oparts), per = ((cout + WMR5 - 1) / WMR5 + j->oparts - 1) / j->oparts * WMR5;
        const int oa = k * per < cout ? k * per : cout, ob = (k + 1) * per < cout ? (k + 1) * per : cout;
        if (oa < ob) wino5_blocks(j, panel, q0, q1, oa, ob);
    }
}
#endif

void rnvpi_conv_winograd(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                         const net_ws *ws, int N, int H, int W)
{
#ifdef HAVE_WINOGRAD
    struct wino_job j = {.out = out, .in = in, .res = res, .cv = cv, .pre = pre, .H = H, .W = W,
                         .th = (H + 1) / 2, .tw = (W + 1) / 2, .P = (ptrdiff_t)N * H * W};
    j.kind = ws->wino_kind;
    if (j.kind == RNVPI_WINO_OFF) j.kind = rnvpi_winograd512_available() ? RNVPI_WINO_AVX512 : RNVPI_WINO_AVX2;
    const int tb = j.kind == RNVPI_WINO_AVX2 ? TB : TB5, threads = ws->panel ? rnvpi_tpool_size(ws->tp) : 1;
    j.T = (ptrdiff_t)N * j.th * j.tw;
    const ptrdiff_t blocks = (j.T + tb - 1) / tb, u16 = (j.T + 15) / 16;
    j.oparts = 1;
    if (threads == 1) {
        j.part = j.T;
    } else if (j.kind == RNVPI_WINO_AVX2 || blocks >= 8 * (ptrdiff_t)threads) {
        /* about 4 claims per thread: balance against the cost of a claim */
        const ptrdiff_t g = blocks / (4 * (ptrdiff_t)threads);
        j.part = (g < 1 ? 1 : g) * tb;
    } else if (u16 >= threads) {
        /* few blocks (one image, a few): one range per thread, in steps of 16 tiles, so that the
         * shares differ by 16 tiles at most (blocks of 32 claimed in turn left one thread a whole
         * block more: 4 vs 3 of the 7 blocks of a 28x28 plane) */
        j.part = (u16 + threads - 1) / threads * 16;
    } else {   /* 16 tiles or fewer (one 7x7 image, which the default rule leaves to the direct kernel;
                * REALNVP_CONV=winograd): every thread all tiles, a share of the output channels */
        j.part = j.T;
        j.oparts = threads;
    }
    j.items = (j.T + j.part - 1) / j.part * j.oparts;
    atomic_init(&j.next, 0);
    if (ws->panel) {
        j.panel = ws->panel;
        j.panel_floats = ws->panel_floats;
        rnvpi_tpool_run_shared(ws->tp, wino_job_run, &j);
    } else {   /* one thread, its panel in col */
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

/* grad_output_block for the AVX-512 blocks of TB5 tiles, bit for bit: dM[xi][o][t] at
 * dM + o cs + xi xs + t (columns nt .. TB5-1 zero); each 16-tile half's dY gathered by the runs
 * of plan_runs (two rows of 2k floats per run, merged into the interleaved pairs that
 * output5_block writes), then split into y00, y01, y10, y11. nt: the block's tiles. */
AVX512W static void grad_output5_block(float *dM, ptrdiff_t cs, ptrdiff_t xs, const float *dout, int cout, ptrdiff_t P,
                                       int W, const struct out_run *ru, int nr, int nt)
{
    if (nt <= 16)   /* the second half has no runs: its columns 0 */
        for (int o = 0; o < cout; o++)
            for (int xi = 0; xi < 16; xi++) memset(dM + o * cs + xi * xs + 16, 0, sizeof(float) * 16);
    const ptrdiff_t oend = (ptrdiff_t)cout * P;
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 z = _mm512_setzero_ps();
    for (int o = 0; o < cout; o++) {
        const float *dp = dout + (ptrdiff_t)o * P;
        float *m = dM + (ptrdiff_t)o * cs;
        for (int i = 0; i < nr;) {
            const int h = ru[i].h;
            __m512 e0 = z, e1 = z, e2 = z, e3 = z;   /* top row lanes 0-15, 16-31; bottom row the same */
            for (; i < nr && ru[i].h == h; i++) {
                const struct out_run *u = &ru[i];
#define GET(k, e)                                                                                  \
    {                                                                                              \
        ptrdiff_t off;                                                                             \
        const __mmask16 m16 = run_part(u, k, W, &off);                                             \
        if (m16) {                                                                                 \
            const ptrdiff_t a = (ptrdiff_t)o * P + off;                                            \
            e = a >= 0 && a + 16 <= oend ? _mm512_mask_mov_ps(e, m16, _mm512_loadu_ps(dp + off))   \
                                         : _mm512_mask_loadu_ps(e, m16, dp + off);                 \
        }                                                                                          \
    }
                GET(0, e0) GET(1, e1) GET(2, e2) GET(3, e3)
#undef GET
            }
            const __m512 y00 = _mm512_permutex2var_ps(e0, ev, e1), y01 = _mm512_permutex2var_ps(e0, od, e1),
                         y10 = _mm512_permutex2var_ps(e2, ev, e3), y11 = _mm512_permutex2var_ps(e2, od, e3);
            /* A dY (A's rows [1 0], [1 1], [1 -1], [0 -1]), then times A^T on the right */
            const __m512 r00 = y00, r01 = y01, r10 = _mm512_add_ps(y00, y10), r11 = _mm512_add_ps(y01, y11),
                         r20 = _mm512_sub_ps(y00, y10), r21 = _mm512_sub_ps(y01, y11), r30 = _mm512_sub_ps(z, y10),
                         r31 = _mm512_sub_ps(z, y11);
            float *mh = m + h;
#define ROW(i, a, b)                                                  \
    _mm512_storeu_ps(mh + (4 * (i)) * xs, a);                         \
    _mm512_storeu_ps(mh + (4 * (i) + 1) * xs, _mm512_add_ps(a, b));   \
    _mm512_storeu_ps(mh + (4 * (i) + 2) * xs, _mm512_sub_ps(a, b));   \
    _mm512_storeu_ps(mh + (4 * (i) + 3) * xs, _mm512_sub_ps(z, b));
            ROW(0, r00, r01) ROW(1, r10, r11) ROW(2, r20, r21) ROW(3, r30, r31)
#undef ROW
        }
    }
}

/* dut[i][j] (row stride ldd) += sum over t < n16 of v[i vs + t] dm[j ms + t] for i < mc, j < mo
 * (mc, mo <= 4; rows past them read row mc-1 / mo-1 and are not stored): 16 accumulators over
 * 16 t's each, then summed across their lanes all at once (16 -> 8 -> 4 -> 2 -> 1 vectors, lane
 * 4i + j the sum of accumulator (i, j)). n16: a multiple of 16. */
AVX512W static void wgrad5_kernel(float *dut, ptrdiff_t ldd, const float *v, ptrdiff_t vs, const float *dm,
                                  ptrdiff_t ms, int n16, int mc, int mo)
{
    const float *v0 = v, *v1 = v + (mc > 1 ? 1 : 0) * vs, *v2 = v + (mc > 2 ? 2 : mc - 1) * vs,
                *v3 = v + (mc > 3 ? 3 : mc - 1) * vs;
    const float *d0 = dm, *d1 = dm + (mo > 1 ? 1 : 0) * ms, *d2 = dm + (mo > 2 ? 2 : mo - 1) * ms,
                *d3 = dm + (mo > 3 ? 3 : mo - 1) * ms;
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00,
           a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    for (int t = 0; t < n16; t += 16) {
        const __m512 x0 = _mm512_load_ps(v0 + t), x1 = _mm512_load_ps(v1 + t), x2 = _mm512_load_ps(v2 + t),
                     x3 = _mm512_load_ps(v3 + t);
        const __m512 y0 = _mm512_load_ps(d0 + t), y1 = _mm512_load_ps(d1 + t), y2 = _mm512_load_ps(d2 + t),
                     y3 = _mm512_load_ps(d3 + t);
        a00 = _mm512_fmadd_ps(x0, y0, a00); a01 = _mm512_fmadd_ps(x0, y1, a01);
        a02 = _mm512_fmadd_ps(x0, y2, a02); a03 = _mm512_fmadd_ps(x0, y3, a03);
        a10 = _mm512_fmadd_ps(x1, y0, a10); a11 = _mm512_fmadd_ps(x1, y1, a11);
        a12 = _mm512_fmadd_ps(x1, y2, a12); a13 = _mm512_fmadd_ps(x1, y3, a13);
        a20 = _mm512_fmadd_ps(x2, y0, a20); a21 = _mm512_fmadd_ps(x2, y1, a21);
        a22 = _mm512_fmadd_ps(x2, y2, a22); a23 = _mm512_fmadd_ps(x2, y3, a23);
        a30 = _mm512_fmadd_ps(x3, y0, a30); a31 = _mm512_fmadd_ps(x3, y1, a31);
        a32 = _mm512_fmadd_ps(x3, y2, a32); a33 = _mm512_fmadd_ps(x3, y3, a33);
    }
    /* pairs: within each 128-bit lane [p(a), p(b), p'(a), p'(b)] */
#define PAIR(a, b) _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    const __m512 b0 = PAIR(a00, a01), b1 = PAIR(a02, a03), b2 = PAIR(a10, a11), b3 = PAIR(a12, a13),
                 b4 = PAIR(a20, a21), b5 = PAIR(a22, a23), b6 = PAIR(a30, a31), b7 = PAIR(a32, a33);
#undef PAIR
    /* quads: within each 128-bit lane the four accumulators of row i */
#define QUAD(a, b) _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xee))
    const __m512 c0 = QUAD(b0, b1), c1 = QUAD(b2, b3), c2 = QUAD(b4, b5), c3 = QUAD(b6, b7);
#undef QUAD
    /* across the 128-bit lanes: lane group i holds row i's four sums */
#define HALF(a, b) _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xdd))
    const __m512 e0 = HALF(c0, c1), e1 = HALF(c2, c3), r = HALF(e0, e1);
#undef HALF
    const __mmask8 m = (__mmask8)((1u << mo) - 1);
    float *p = dut;
    _mm_mask_storeu_ps(p, m, _mm_add_ps(_mm_maskz_loadu_ps(m, p), _mm512_castps512_ps128(r)));
    if (mc > 1) {
        p += ldd;
        _mm_mask_storeu_ps(p, m, _mm_add_ps(_mm_maskz_loadu_ps(m, p), _mm512_extractf32x4_ps(r, 1)));
    }
    if (mc > 2) {
        p += ldd;
        _mm_mask_storeu_ps(p, m, _mm_add_ps(_mm_maskz_loadu_ps(m, p), _mm512_extractf32x4_ps(r, 2)));
    }
    if (mc > 3) {
        p += ldd;
        _mm_mask_storeu_ps(p, m, _mm_add_ps(_mm_maskz_loadu_ps(m, p), _mm512_extractf32x4_ps(r, 3)));
    }
}
#endif

void rnvpi_winograd_wgrad(float *dut, const float *dout, const float *in, const affine_i *pre, int cin, int cout,
                          float *buf, int tc, ptrdiff_t q0, ptrdiff_t q1, int N, int H, int W, int kind)
{
#ifdef HAVE_WINOGRAD
    const int th = (H + 1) / 2, tw = (W + 1) / 2;
    const ptrdiff_t P = (ptrdiff_t)N * H * W;
    if (kind == RNVPI_WINO_AVX512) {
        /* chunks as (cin, 16, tc) and (cout, 16, tc): a tile's 16 values of one channel in 16 rows tc
         * floats apart (in (16, cin, tc) they would be cin tc floats apart, one L1 set) */
        tc -= tc % TB5;
        if (tc < TB5) tc = TB5;
        float *Vc = align64(buf);                        /* (cin, 16, tc) */
        float *dMc = Vc + (ptrdiff_t)16 * cin * tc;      /* (cout, 16, tc) */
        struct tile tl[TB5];
        struct in_item it[TB5];
        struct out_run ru[TB5];
        for (ptrdiff_t c0 = q0; c0 < q1; c0 += tc) {
            const int n = q1 - c0 < tc ? (int)(q1 - c0) : tc;   /* tiles in this chunk */
            for (int t0 = 0; t0 < n; t0 += TB5) {
                const int nt = n - t0 < TB5 ? n - t0 : TB5;
                for (int t = 0; t < nt; t++) tile_info(&tl[t], c0 + t0 + t, H, W, th, tw);
                const int ni = plan_items(it, tl, nt, W), nr = plan_runs(ru, tl, nt);
                input5_block(Vc + t0, 16 * (ptrdiff_t)tc, tc, in, pre, cin, P, W, tl, nt, it, ni);
                grad_output5_block(dMc + t0, 16 * (ptrdiff_t)tc, tc, dout, cout, P, W, ru, nr, nt);
            }
            /* dU^T[xi] (cin, cout) += V[xi] (cin, n) x dM[xi]^T (n, cout), over the n tiles rounded up
             * to 16 (the blocks' columns past their tiles are 0 in both) */
            const int n16 = (n + 15) / 16 * 16;
            for (int xi = 0; xi < 16; xi++)
                for (int c = 0; c < cin; c += 4)
                    for (int o = 0; o < cout; o += 4)
                        wgrad5_kernel(dut + ((ptrdiff_t)xi * cin + c) * cout + o, cout,
                                      Vc + (ptrdiff_t)c * 16 * tc + (ptrdiff_t)xi * tc, 16 * (ptrdiff_t)tc,
                                      dMc + (ptrdiff_t)o * 16 * tc + (ptrdiff_t)xi * tc, 16 * (ptrdiff_t)tc, n16,
                                      cin - c < 4 ? cin - c : 4, cout - o < 4 ? cout - o : 4);
        }
        return;
    }
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
            input_block(Vc + t0, tc, tmp, in, pre, cin, P, W, tl, nt, TB);   /* TB columns: tc % TB == 0 */
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
    (void)q0; (void)q1; (void)N; (void)H; (void)W; (void)kind;
#endif
}
