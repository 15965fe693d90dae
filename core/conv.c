/* conv.c: inference convolutions in the (C, N, H, W) layout. Two kernels: on AVX-512 CPUs a
 * direct one (the columns are cut into 32-wide strips; each thread builds a strip's im2col panel
 * with the preceding batch norm + ReLU fused in, then multiplies it by the weights in registers
 * and adds the bias on the way out; with AVX512_BF16 also a bf16 variant, precision bf16), an
 * AVX2 one alike, and Winograd for some 3x3 layers (core/winograd.c); elsewhere one im2col over
 * the whole batch and one OpenBLAS cblas_sgemm. Leaves out training (train/layers.c). */
#include "internal.h"
#include "tpool.h"

#include <cblas.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX512_KERNEL 1
#endif

/* ================================================================ generic: im2col + sgemm */

/* dst[p] = relu(a * src[p] + s), p < n: the fused batch norm + ReLU; cloned for AVX2. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void affine_relu(float *restrict dst, const float *restrict src, float a, float s, ptrdiff_t n)
{
    for (ptrdiff_t p = 0; p < n; p++) {
        float v = a * src[p] + s;
        dst[p] = v > 0.0f ? v : 0.0f;
    }
}

/* dst[q] = mask[q] ? pre(src[q]) : 0 for q < n, pre = relu(a x + s) when relu, else identity; the
 * value is computed unconditionally so that the select vectorises (blocks of 8 and a tail:
 * -O2 vectorises loops without a scalar epilogue only); cloned for AVX2. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void masked_copy(float *restrict dst, const float *restrict src, const float *restrict mask, int relu,
                        float a, float s, ptrdiff_t n)
{
    ptrdiff_t q = 0;
    if (relu) {
        for (; q + 8 <= n; q += 8)
            for (int k = 0; k < 8; k++) {
                float v = a * src[q + k] + s;
                v = v > 0.0f ? v : 0.0f;
                dst[q + k] = mask[q + k] != 0.0f ? v : 0.0f;
            }
        for (; q < n; q++) {
            float v = a * src[q] + s;
            v = v > 0.0f ? v : 0.0f;
            dst[q] = mask[q] != 0.0f ? v : 0.0f;
        }
    } else {
        for (; q + 8 <= n; q += 8)
            for (int k = 0; k < 8; k++) {
                const float v = src[q + k];
                dst[q + k] = mask[q + k] != 0.0f ? v : 0.0f;
            }
        for (; q < n; q++) dst[q] = mask[q] != 0.0f ? src[q] : 0.0f;
    }
}

/* dst[p] = (src ? src[p] : 0) + b, p < n (src may be dst); cloned for AVX2 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void set_bias(float *dst, const float *src, float b, ptrdiff_t n)
{
    ptrdiff_t p = 0;
    if (src) {
        for (; p + 8 <= n; p += 8)
            for (int k = 0; k < 8; k++) dst[p + k] = src[p + k] + b;
        for (; p < n; p++) dst[p] = src[p] + b;
    } else {
        for (; p < n; p++) dst[p] = b;
    }
}

void rnvpi_tap_masks(float *mask, int kh, int kw, int H, int W)
{
    for (int di = 0; di < kh; di++)
        for (int dj = 0; dj < kw; dj++) {
            float *m = mask + (size_t)(di * kw + dj) * H * W;
            for (int i = 0; i < H; i++)
                for (int j = 0; j < W; j++) {
                    const int si = i + di - kh / 2, sj = j + dj - kw / 2;
                    m[i * W + j] = si >= 0 && si < H && sj >= 0 && sj < W ? 1.0f : 0.0f;
                }
        }
}

/* im2col with tap masks: per image and tap, one masked pass over the positions whose source
 * stays inside the image's plane. */
static void im2col_masked(float *col, const float *in, const affine_i *pre, const float *mask, int cin, int kh,
                          int kw, int n0, int nb, int N, int H, int W)
{
    const ptrdiff_t HW = (ptrdiff_t)H * W, P = (ptrdiff_t)N * HW, Q = (ptrdiff_t)nb * HW;
    for (int ci = 0; ci < cin; ci++) {
        const float a = pre && pre->a ? pre->a[ci] : 1.0f, s = pre && pre->a ? pre->s[ci] : 0.0f;
        for (int di = 0; di < kh; di++)
            for (int dj = 0; dj < kw; dj++) {
                float *row = col + ((ptrdiff_t)(ci * kh + di) * kw + dj) * Q;   /* (nb, H, W) */
                const float *m = mask + (ptrdiff_t)(di * kw + dj) * HW;
                const ptrdiff_t shift = (ptrdiff_t)(di - kh / 2) * W + (dj - kw / 2);
                if (shift <= -HW || shift >= HW) {   /* the tap reads padding only */
                    memset(row, 0, sizeof(float) * (size_t)Q);
                    continue;
                }
                const ptrdiff_t q0 = shift < 0 ? -shift : 0, q1 = shift > 0 ? HW - shift : HW;
                for (int n = 0; n < nb; n++) {
                    float *d = row + n * HW;
                    const float *src = in + ci * P + (n0 + n) * HW + shift;
                    memset(d, 0, sizeof(float) * (size_t)q0);
                    masked_copy(d + q0, src + q0, m + q0, pre != NULL, a, s, q1 - q0);
                    memset(d + q1, 0, sizeof(float) * (size_t)(HW - q1));
                }
            }
    }
}

void rnvpi_im2col(float *col, const float *in, const affine_i *pre, const float *mask, int cin, int kh, int kw,
                  int n0, int nb, int N, int H, int W)
{
    if (mask) {
        im2col_masked(col, in, pre, mask, cin, kh, kw, n0, nb, N, H, W);
        return;
    }
    const int ph = kh / 2, pw = kw / 2;
    const ptrdiff_t HW = (ptrdiff_t)H * W, P = (ptrdiff_t)N * HW, Q = (ptrdiff_t)nb * HW;
    for (int ci = 0; ci < cin; ci++) {
        const float a = pre && pre->a ? pre->a[ci] : 1.0f, s = pre && pre->a ? pre->s[ci] : 0.0f;
        const float *src = in + ci * P + n0 * HW;   /* (nb, H, W) */
        for (int di = 0; di < kh; di++)
            for (int dj = 0; dj < kw; dj++) {
                float *row = col + ((ptrdiff_t)(ci * kh + di) * kw + dj) * Q;   /* (nb, H, W) */
                const int oi = di - ph, oj = dj - pw;
                if (oi <= -H || oi >= H || oj <= -W || oj >= W) {   /* tap entirely in the padding */
                    memset(row, 0, sizeof(float) * (size_t)Q);
                    continue;
                }
                /* positions whose source lies before the chunk's first or after its last value
                 * read padding (their row or column is outside the image) */
                const ptrdiff_t shift = (ptrdiff_t)oi * W + oj;
                const ptrdiff_t p0 = shift < 0 ? -shift : 0, p1 = shift > 0 ? Q - shift : Q;
                if (p0 > 0) memset(row, 0, sizeof(float) * (size_t)p0);
                if (p1 < Q) memset(row + p1, 0, sizeof(float) * (size_t)(Q - p1));
                const float *sp = src + shift;
                if (!pre)
                    memcpy(row + p0, sp + p0, sizeof(float) * (size_t)(p1 - p0));
                else
                    affine_relu(row + p0, sp + p0, a, s, p1 - p0);
                /* zero what came from another row or image: rows i with i + oi outside
                 * [0, H), columns j with j + oj outside [0, W) */
                for (int n = 0; n < nb; n++) {
                    float *img = row + n * HW;
                    if (oi < 0) memset(img, 0, sizeof(float) * (size_t)(-oi * W));
                    if (oi > 0) memset(img + (H - oi) * W, 0, sizeof(float) * (size_t)(oi * W));
                    if (oj)
                        for (int i = 0; i < H; i++) {
                            float *r = img + (ptrdiff_t)i * W;
                            if (oj < 0) for (int j = 0; j < -oj; j++) r[j] = 0;
                            else for (int j = W - oj; j < W; j++) r[j] = 0;
                        }
                }
            }
    }
}

void rnvpi_conv_blas(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                     float *col, const float *mask, int n0, int nb, int N, int H, int W)
{
    const ptrdiff_t HW = (ptrdiff_t)H * W, P = (ptrdiff_t)N * HW, Q = (ptrdiff_t)nb * HW;
    const int K = cv->cin * cv->kh * cv->kw;
    const float *B = in + n0 * HW;
    ptrdiff_t ldb = P;
    if (cv->kh != 1 || cv->kw != 1 || pre) {
        rnvpi_im2col(col, in, pre, mask, cv->cin, cv->kh, cv->kw, n0, nb, N, H, W);
        B = col;
        ldb = Q;
    }
    /* out (cout, chunk) = (res or 0) + bias; then += w (cout, K) x B (K, chunk) */
    for (int o = 0; o < cv->cout; o++) set_bias(out + o * P + n0 * HW, res ? res + o * P + n0 * HW : NULL, cv->b[o], Q);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cv->cout, (int)Q, K, 1.0f, cv->w, K, B, (int)ldb,
                1.0f, out + n0 * HW, (int)P);
}

/* 64-byte aligned start inside a buffer with at least 16 floats of slack. */
static float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/* For the direct kernels' strips of columns p0 .. p0+nv-1 (nv <= 32) of a (N, H, W) plane set:
 * bit c of rowok[di] (colok[dj]) is set when tap row di (column dj) of column p0 + c reads
 * inside the image; a tap reads inside when both are. */
__attribute__((unused)) static void strip_masks(uint32_t *rowok, uint32_t *colok, int kh, int kw, int H, int W, ptrdiff_t p0, int nv)
{
    /* one image row at a time: its columns c0 .. c1-1 of the strip are columns j0 .. of row i */
    const int ph = kh / 2, pw = kw / 2, HW = H * W;
    memset(rowok, 0, sizeof(uint32_t) * (size_t)kh);
    memset(colok, 0, sizeof(uint32_t) * (size_t)kw);
    const int q = (int)(p0 % HW);
    int i = q / W, j0 = q % W;
    for (int c0 = 0; c0 < nv;) {
        const int c1 = c0 + (W - j0) < nv ? c0 + (W - j0) : nv;
        const uint32_t seg = (uint32_t)(((1ull << (c1 - c0)) - 1) << c0);
        for (int di = 0; di < kh; di++)
            if (i + di - ph >= 0 && i + di - ph < H) rowok[di] |= seg;
        for (int dj = 0; dj < kw; dj++) {
            /* column j = j0 + (c - c0) reads j + dj - pw: inside for j in [pw - dj, W + pw - dj) */
            int a = pw - dj - j0, b = W + pw - dj - j0;   /* as c - c0 */
            if (a < 0) a = 0;
            if (b > c1 - c0) b = c1 - c0;
            if (a < b) colok[dj] |= (uint32_t)(((1ull << (b - a)) - 1) << (c0 + a));
        }
        c0 = c1;
        j0 = 0;
        if (++i == H) i = 0;
    }
}

/* ================================================================ AVX-512: direct, in strips */

#ifdef HAVE_AVX512_KERNEL
#define AVX512 __attribute__((target("avx512f")))
#define NR RNVP_CONV_STRIP   /* columns per strip: two 16-float registers */
#define MR 8                 /* output channels per register block */
#ifndef PF
#define PF 4                 /* prefetch distance of the im2col, in strips */
#endif

/* panel ((ci1-ci0) kh kw, NR) = im2col of input channels ci0 .. ci1-1, columns p0 .. p0+nv-1 (nv <=
 * NR; the rest zero; rowok and colok from strip_masks) of in (cin, P),
 * P = N*H*W, each value passed through relu(a*x + s) (pre->a == NULL: relu only) when pre != NULL.
 * A tap whose source falls outside its image reads as zero (padding). guarded: the plane set may
 * be read (garbage, masked away) up to (kh/2)*W + kw/2 + NR floats beyond either end, so plain
 * loads are used; else masked loads, which never touch those addresses but are slow on some
 * CPUs (AMD Zen: several times slower than plain loads here). */
AVX512 static void strip_im2col(float *restrict panel, const float *in, const affine_i *pre, int ci0, int ci1,
                                int kh, int kw, ptrdiff_t P, int W, ptrdiff_t p0, const uint32_t *rowok,
                                const uint32_t *colok, int guarded)
{
    const int ph = kh / 2, pw = kw / 2;
    const __m512 zero = _mm512_setzero_ps();
    const int affine = pre && pre->a;
    float *dst = panel;
    for (int ci = ci0; ci < ci1; ci++) {
        const __m512 a = _mm512_set1_ps(affine ? pre->a[ci] : 1.0f);
        const __m512 s = _mm512_set1_ps(affine ? pre->s[ci] : 0.0f);
        const float *src = in + ci * P + p0;
        /* the rows a strip PF strips further on reads: cin * kh streams at once are more than
         * the hardware prefetchers follow */
        for (int di = 0; di < kh; di++) {
            const float *pf = src + PF * NR + (ptrdiff_t)(di - ph) * W;
            _mm_prefetch((const char *)pf, _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + 16), _MM_HINT_T0);
        }
        for (int di = 0; di < kh; di++)
            for (int dj = 0; dj < kw; dj++, dst += NR) {
                const uint32_t m = rowok[di] & colok[dj];
                const __mmask16 m0 = (__mmask16)(m & 0xffff), m1 = (__mmask16)(m >> 16);
                const float *sp = src + (ptrdiff_t)(di - ph) * W + (dj - pw);
                __m512 x0, x1;
                if (guarded) {   /* plain loads (masked ones are slow on some CPUs), then mask */
                    x0 = _mm512_loadu_ps(sp);
                    x1 = _mm512_loadu_ps(sp + 16);
                    __asm__("" : "+v"(x0), "+v"(x1));   /* keep gcc from making them masked loads */
                    x0 = _mm512_maskz_mov_ps(m0, x0);
                    x1 = _mm512_maskz_mov_ps(m1, x1);
                } else {
                    x0 = _mm512_maskz_loadu_ps(m0, sp);
                    x1 = _mm512_maskz_loadu_ps(m1, sp + 16);
                }
                if (affine) {
                    x0 = _mm512_fmadd_ps(a, x0, s);
                    x1 = _mm512_fmadd_ps(a, x1, s);
                }
                if (pre) {   /* padding stays 0 (it is not relu(s)) */
                    x0 = _mm512_maskz_max_ps(m0, x0, zero);
                    x1 = _mm512_maskz_max_ps(m1, x1, zero);
                }
                _mm512_store_ps(dst, x0);
                _mm512_store_ps(dst + 16, x1);
            }
    }
}

/* out rows 0..mr-1 (stride ldo), the strip's columns selected by m0/m1: (out +) c0, c1 (each
 * kernel's last step) */
AVX512 static inline __attribute__((always_inline)) void strip_store(float *out, ptrdiff_t ldo, __m512 *c0,
                                                                   __m512 *c1, int mr, __mmask16 m0,
                                                                   __mmask16 m1, int accumulate)
{
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) {
        float *o = out + r * ldo;
        if (accumulate) {
            c0[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, o), c0[r]);
            c1[r] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o + 16), c1[r]);
        }
        _mm512_mask_storeu_ps(o, m0, c0[r]);
        _mm512_mask_storeu_ps(o + 16, m1, c1[r]);
    }
}

/* Prefetch of the piece of the next row block's weights wn (NULL: none) that goes with columns
 * k0 .. k0+15 of this one: 8 lines, so that over the K / 16 pieces the next MR rows (MR K words,
 * contiguous) arrive while these are multiplied. At one image a layer's weights come from
 * memory or L3 and each is used for one register pair only (a 7x7 plane: one strip per thread).
 * Before a last block of fewer than MR rows this reaches past the weights' end: harmless, a
 * prefetch never faults. */
#define NEXT_ROWS_AHEAD(wn, k0)                                                                     \
    do {                                                                                            \
        if (wn)                                                                                     \
            for (int i_ = 0; i_ < MR; i_++)                                                         \
                _mm_prefetch((const char *)((wn) + (ptrdiff_t)MR * (k0) + 16 * i_), _MM_HINT_T0);   \
    } while (0)

/* out rows 0..mr-1 (stride ldo), columns of the strip selected by m0/m1:
 * out (+)= b + w (mr, K) x panel (K, NR), fetching the next block's weights wn (NEXT_ROWS_AHEAD).
 * Each output is one FMA chain over k = 0..K-1, the same whatever the strip, the batch or the
 * thread. */
AVX512 static inline __attribute__((always_inline)) void strip_kernel(
    float *out, ptrdiff_t ldo, const float *w, const float *wn, int K, const float *b, const float *panel, int mr,
    __mmask16 m0, __mmask16 m1, int accumulate)
{
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) c0[r] = c1[r] = _mm512_set1_ps(b[r]);
    for (int k0 = 0; k0 < K; k0 += 16) {
        NEXT_ROWS_AHEAD(wn, k0);
        for (int k = k0; k < K && k < k0 + 16; k++) {
            const __m512 x0 = _mm512_load_ps(panel + (ptrdiff_t)k * NR);
            const __m512 x1 = _mm512_load_ps(panel + (ptrdiff_t)k * NR + 16);
#pragma GCC unroll 8
            for (int r = 0; r < mr; r++) {
                const __m512 a = _mm512_set1_ps(w[(ptrdiff_t)r * K + k]);
                c0[r] = _mm512_fmadd_ps(a, x0, c0[r]);
                c1[r] = _mm512_fmadd_ps(a, x1, c1[r]);
            }
        }
    }
    strip_store(out, ldo, c0, c1, mr, m0, m1, accumulate);
}

/* The body of strip_rows and strip_rows_bf16: `kernel` for all cout rows, MR at a time (K: a
 * weight row's length, in floats or in bf16 pairs), each block fetching the next one's weights. */
#define KERNEL_CASE(kernel, n) \
    case n: kernel(out, ldo, w, NULL, K, b, panel, n, m0, m1, accumulate); break
#define STRIP_ROWS_BODY(kernel)                                                                          \
    int o = 0;                                                                                          \
    for (; o + MR <= cout; o += MR)                                                                     \
        kernel(out + o * ldo, ldo, w + (ptrdiff_t)o * K, o + MR < cout ? w + (ptrdiff_t)(o + MR) * K : NULL, K, \
               b + o, panel, MR, m0, m1, accumulate);                                                   \
    if (o == cout) return;                                                                              \
    out += o * ldo;                                                                                     \
    w += (ptrdiff_t)o * K;                                                                              \
    b += o;                                                                                             \
    switch (cout - o) {                                                                                 \
        KERNEL_CASE(kernel, 1); KERNEL_CASE(kernel, 2); KERNEL_CASE(kernel, 3); KERNEL_CASE(kernel, 4); \
        KERNEL_CASE(kernel, 5); KERNEL_CASE(kernel, 6); KERNEL_CASE(kernel, 7);                         \
    }

/* strip_kernel for all cout rows, MR at a time. */
AVX512 static void strip_rows(float *out, ptrdiff_t ldo, const float *w, int K, const float *b,
                              const float *panel, int cout, __mmask16 m0, __mmask16 m1, int accumulate)
{
    STRIP_ROWS_BODY(strip_kernel)
}

/* ---- AVX512_BF16: the same strips with the panel and the weights rounded to bf16, pairs of k
 * per 32-bit word (rnvpi_bf16_pack32, rnvpi_bf16_pairs); each output one chain of pair dot
 * products (vdpbf16ps: the products exact in float32, accumulated in float32) over k2. */
#define AVX512BF __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

AVX512BF static inline __attribute__((always_inline)) void strip_kernel_bf16(
    float *out, ptrdiff_t ldo, const uint32_t *w, const uint32_t *wn, int K2, const float *b, const uint32_t *panel,
    int mr, __mmask16 m0, __mmask16 m1, int accumulate)
{
    __m512 c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) c0[r] = c1[r] = _mm512_set1_ps(b[r]);
    for (int k0 = 0; k0 < K2; k0 += 16) {
        NEXT_ROWS_AHEAD(wn, k0);
        for (int k = k0; k < K2 && k < k0 + 16; k++) {
            const __m512bh x0 = (__m512bh)_mm512_load_si512((const void *)(panel + (ptrdiff_t)k * NR));
            const __m512bh x1 = (__m512bh)_mm512_load_si512((const void *)(panel + (ptrdiff_t)k * NR + 16));
#pragma GCC unroll 8
            for (int r = 0; r < mr; r++) {
                const __m512bh a = (__m512bh)_mm512_set1_epi32((int)w[(ptrdiff_t)r * K2 + k]);
                c0[r] = _mm512_dpbf16_ps(c0[r], a, x0);
                c1[r] = _mm512_dpbf16_ps(c1[r], a, x1);
            }
        }
    }
    strip_store(out, ldo, c0, c1, mr, m0, m1, accumulate);
}

/* strip_kernel_bf16 for all cout rows, MR at a time (K: pairs per weight row). */
AVX512BF static void strip_rows_bf16(float *out, ptrdiff_t ldo, const uint32_t *w, int K, const float *b,
                                   const uint32_t *panel, int cout, __mmask16 m0, __mmask16 m1, int accumulate)
{
    STRIP_ROWS_BODY(strip_kernel_bf16)
}

/* One convolution on a direct kernel: what its strips need, and their schedule. Thread t claims
 * runs of `grain` neighbouring strips (they share source rows in cache) until none is left; a
 * thread that starts late finds less work, so a descheduled one costs little. */
struct direct_job {
    int kernel;                /* RNVPI_CONV_AVX512 or RNVPI_CONV_AVX2 */
    float *out;
    const float *in, *res;     /* res: AVX2's residual (may be out), NULL: none */
    const conv_i *cv;
    const affine_i *pre;
    ptrdiff_t P;
    int H, W, accumulate, guarded;   /* AVX-512's */
    int bf16;                  /* AVX-512: the bf16 kernel (cv->w_bf16) */
    float *panel;              /* (threads, panel_floats) */
    size_t panel_floats;
    ptrdiff_t strips, grain;   /* strips in all; strips per claim */
    atomic_llong next;         /* first strip not yet claimed */
};

/* strips s0 .. s1-1 on the AVX-512 kernel */
AVX512 static void direct512_strips(const struct direct_job *j, float *panel, ptrdiff_t s0, ptrdiff_t s1)
{
    const conv_i *cv = j->cv;
    const int K = cv->cin * cv->kh * cv->kw;
    for (ptrdiff_t s = s0; s < s1; s++) {
        const ptrdiff_t p0 = s * NR;
        const int nv = j->P - p0 < NR ? (int)(j->P - p0) : NR;
        const uint32_t m = nv == 32 ? 0xffffffffu : (1u << nv) - 1;
        uint32_t rowok[RNVP_MAX_KERNEL], colok[RNVP_MAX_KERNEL];   /* bit c: column p0 + c is inside */
        strip_masks(rowok, colok, cv->kh, cv->kw, j->H, j->W, p0, nv);
        if (j->bf16) {
            /* two input channels at a time (an even number of rows, so pairs never straddle two
             * pieces) into the float panel's start, then packed while in L1 into the pairs after
             * the float panel (rnvpi_conv_panel_floats) */
            uint32_t *pb = (uint32_t *)(panel + (ptrdiff_t)K * NR);
            const int taps = cv->kh * cv->kw;
            for (int c = 0; c < cv->cin; c += 2) {
                const int c1 = c + 2 < cv->cin ? c + 2 : cv->cin;
                strip_im2col(panel, j->in, j->pre, c, c1, cv->kh, cv->kw, j->P, j->W, p0, rowok, colok, j->guarded);
                rnvpi_bf16_pack32(pb + (ptrdiff_t)(c * taps / 2) * NR, panel, (c1 - c) * taps);
            }
            strip_rows_bf16(j->out + p0, j->P, cv->w_bf16, (K + 1) / 2, cv->b, pb, cv->cout, (__mmask16)(m & 0xffff),
                            (__mmask16)(m >> 16), j->accumulate);
            continue;
        }
        strip_im2col(panel, j->in, j->pre, 0, cv->cin, cv->kh, cv->kw, j->P, j->W, p0, rowok, colok, j->guarded);
        strip_rows(j->out + p0, j->P, cv->w, K, cv->b, panel, cv->cout, (__mmask16)(m & 0xffff),
                   (__mmask16)(m >> 16), j->accumulate);
    }
}
#endif

/* ================================================================ AVX2: direct, in strips of 16 */

#ifdef HAVE_AVX512_KERNEL
#define AVX2F __attribute__((target("avx2,fma")))
#define NR2 16   /* columns per strip: two 8-float registers */
#define MR2 6    /* output channels per register block: 12 accumulators */

/* panel (K, NR2) = im2col of columns p0 .. p0+nv-1 (nv <= NR2; the rest zero) of in (cin, P),
 * through pre as strip_im2col. A row's 16 values come from one plain load pair when all 16
 * addresses lie inside the input (cin x P floats; what falls outside the image is masked away
 * afterwards), else from masked loads, which never touch the masked-out addresses (slow on AMD
 * Zen, so only at the input's two ends): no guard zone is needed. */
AVX2F static void strip_im2col2(float *restrict panel, const float *in, const affine_i *pre, int cin, int kh,
                                int kw, ptrdiff_t P, int H, int W, ptrdiff_t p0, int nv)
{
    const float *lo = in, *hi = in + cin * P;
    const int ph = kh / 2, pw = kw / 2;
    uint32_t rowok[RNVP_MAX_KERNEL], colok[RNVP_MAX_KERNEL];   /* bit c: column p0 + c is inside */
    strip_masks(rowok, colok, kh, kw, H, W, p0, nv);
    const __m256i bit0 = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i bit1 = _mm256_slli_epi32(bit0, 8);
    const __m256 zero = _mm256_setzero_ps();
    const int affine = pre && pre->a;
    float *dst = panel;
    for (int ci = 0; ci < cin; ci++) {
        const __m256 a = _mm256_set1_ps(affine ? pre->a[ci] : 1.0f);
        const __m256 s = _mm256_set1_ps(affine ? pre->s[ci] : 0.0f);
        const float *src = in + ci * P + p0;
        for (int di = 0; di < kh; di++)
            for (int dj = 0; dj < kw; dj++, dst += NR2) {
                const __m256i m = _mm256_set1_epi32((int)(rowok[di] & colok[dj]));
                const __m256i m0 = _mm256_cmpeq_epi32(_mm256_and_si256(m, bit0), bit0);
                const __m256i m1 = _mm256_cmpeq_epi32(_mm256_and_si256(m, bit1), bit1);
                const float *sp = src + (ptrdiff_t)(di - ph) * W + (dj - pw);
                __m256 x0, x1;
                if (sp >= lo && sp + NR2 <= hi) {
                    x0 = _mm256_loadu_ps(sp);
                    x1 = _mm256_loadu_ps(sp + 8);
                } else {
                    x0 = _mm256_maskload_ps(sp, m0);
                    x1 = _mm256_maskload_ps(sp + 8, m1);
                }
                if (affine) {
                    x0 = _mm256_fmadd_ps(a, x0, s);
                    x1 = _mm256_fmadd_ps(a, x1, s);
                }
                if (pre) {
                    x0 = _mm256_max_ps(x0, zero);
                    x1 = _mm256_max_ps(x1, zero);
                }
                /* padding and what came from outside the image: 0 (bitwise, so even NaN) */
                x0 = _mm256_and_ps(x0, _mm256_castsi256_ps(m0));
                x1 = _mm256_and_ps(x1, _mm256_castsi256_ps(m1));
                _mm256_store_ps(dst, x0);
                _mm256_store_ps(dst + 8, x1);
            }
    }
}

/* Stores accumulators c0, c1 of row r: out = res (when res != NULL; it may be out) + acc, the
 * first nv columns. */
AVX2F static inline __attribute__((always_inline)) void store_row2(float *o, const float *rr, __m256 c0, __m256 c1,
                                                                   int nv)
{
    if (nv == NR2) {
        if (rr) {
            c0 = _mm256_add_ps(_mm256_loadu_ps(rr), c0);
            c1 = _mm256_add_ps(_mm256_loadu_ps(rr + 8), c1);
        }
        _mm256_storeu_ps(o, c0);
        _mm256_storeu_ps(o + 8, c1);
        return;
    }
    float t[NR2];   /* the batch's last, partial strip */
    _mm256_storeu_ps(t, c0);
    _mm256_storeu_ps(t + 8, c1);
    for (int c = 0; c < nv; c++) o[c] = (rr ? rr[c] : 0.0f) + t[c];
}

/* out rows 0..mr-1 (stride ldo), columns 0..nv-1 of the strip: out = res (when res != NULL; it
 * may be out) + b + w (mr, K) x panel (K, NR2). Each output is one FMA chain over k. The
 * accumulators are named variables (an array of them ends up on the stack with gcc 12). */
AVX2F static inline __attribute__((always_inline)) void strip_kernel2(
    float *out, const float *res, ptrdiff_t ldo, const float *w, int K, const float *b, const float *panel,
    int mr, int nv)
{
    const __m256 z = _mm256_setzero_ps();
    __m256 a00 = z, a01 = z, a10 = z, a11 = z, a20 = z, a21 = z, a30 = z, a31 = z, a40 = z, a41 = z, a50 = z,
           a51 = z;
#define INIT2(r) if (mr > r) a##r##0 = a##r##1 = _mm256_set1_ps(b[r])
    INIT2(0); INIT2(1); INIT2(2); INIT2(3); INIT2(4); INIT2(5);
    const float *w0 = w, *w1 = w + K, *w2 = w + 2 * (ptrdiff_t)K, *w3 = w + 3 * (ptrdiff_t)K,
                *w4 = w + 4 * (ptrdiff_t)K, *w5 = w + 5 * (ptrdiff_t)K;
    for (int k = 0; k < K; k++) {
        const __m256 x0 = _mm256_load_ps(panel + (ptrdiff_t)k * NR2);
        const __m256 x1 = _mm256_load_ps(panel + (ptrdiff_t)k * NR2 + 8);
#define STEP2(r)                                              \
    if (mr > r) {                                             \
        const __m256 wv = _mm256_broadcast_ss(w##r + k);      \
        a##r##0 = _mm256_fmadd_ps(wv, x0, a##r##0);           \
        a##r##1 = _mm256_fmadd_ps(wv, x1, a##r##1);           \
    }
        STEP2(0) STEP2(1) STEP2(2) STEP2(3) STEP2(4) STEP2(5)
    }
#define STORE2(r) if (mr > r) store_row2(out + r * ldo, res ? res + r * ldo : NULL, a##r##0, a##r##1, nv)
    STORE2(0); STORE2(1); STORE2(2); STORE2(3); STORE2(4); STORE2(5);
#undef INIT2
#undef STEP2
#undef STORE2
}

#define KERNEL2_CASE(n) \
    case n: strip_kernel2(out, res, ldo, w, K, b, panel, n, nv); break

/* strip_kernel2 for all cout rows, MR2 at a time. */
AVX2F static void strip_rows2(float *out, const float *res, ptrdiff_t ldo, const float *w, int K, const float *b,
                              const float *panel, int cout, int nv)
{
    int o = 0;
    for (; o + MR2 <= cout; o += MR2)
        strip_kernel2(out + o * ldo, res ? res + o * ldo : NULL, ldo, w + (ptrdiff_t)o * K, K, b + o, panel, MR2, nv);
    if (o == cout) return;
    out += o * ldo;
    if (res) res += o * ldo;
    w += (ptrdiff_t)o * K;
    b += o;
    switch (cout - o) {
        KERNEL2_CASE(1); KERNEL2_CASE(2); KERNEL2_CASE(3); KERNEL2_CASE(4); KERNEL2_CASE(5);
    }
}

/* Columns c0 .. c1-1 of the AVX2 kernel, one thread: out = res + b + w * pre(in). */
AVX2F static void direct2_columns(float *out, const float *in, const conv_i *cv, const affine_i *pre,
                                  const float *res, float *panel, ptrdiff_t P, int H, int W, ptrdiff_t c0,
                                  ptrdiff_t c1)
{
    const int K = cv->cin * cv->kh * cv->kw;
    for (ptrdiff_t p0 = c0; p0 < c1; p0 += NR2) {
        const int nv = c1 - p0 < NR2 ? (int)(c1 - p0) : NR2;
        strip_im2col2(panel, in, pre, cv->cin, cv->kh, cv->kw, P, H, W, p0, nv);
        strip_rows2(out + p0, res ? res + p0 : NULL, P, cv->w, K, cv->b, panel, cv->cout, nv);
    }
}

static void direct_job_run(void *arg, int t, int nt)
{
    struct direct_job *j = arg;
    float *panel = j->panel + (size_t)t * j->panel_floats;
    (void)nt;
    for (;;) {
        const ptrdiff_t s0 = (ptrdiff_t)atomic_fetch_add_explicit(&j->next, j->grain, memory_order_relaxed);
        if (s0 >= j->strips) break;
        const ptrdiff_t s1 = s0 + j->grain < j->strips ? s0 + j->grain : j->strips;
        if (j->kernel == RNVPI_CONV_AVX512)
            direct512_strips(j, panel, s0, s1);
        else
            direct2_columns(j->out, j->in, j->cv, j->pre, j->res, panel, j->P, j->H, j->W, s0 * NR2,
                            s1 * NR2 < j->P ? s1 * NR2 : j->P);
    }
}

/* Runs j (its kernel, out .. guarded set) in strips of nr columns on ws's threads, or on the
 * caller with its panel in ws->col. */
static void direct_run(struct direct_job *j, int nr, const net_ws *ws)
{
    j->strips = (j->P + nr - 1) / nr;
    atomic_init(&j->next, 0);
    /* a convolution of under 2^19 multiply-adds (an in_conv or out_conv at one image: 0.1-0.5M)
     * on the caller alone: split over 2 threads these had run 1.5-2.5x slower than on one (the
     * fork and join, and the features coming from and going back to the caller's cache, cost
     * more than their 2-8 us of work) */
    const int small = (double)j->P * j->cv->cin * j->cv->kh * j->cv->kw * j->cv->cout < (double)(1 << 19);
    if (ws->panel && !small) {
        /* about 8 claims per thread: balance against the cost of a claim */
        const ptrdiff_t g = j->strips / (8 * (ptrdiff_t)rnvpi_tpool_size(ws->tp));
        j->grain = g < 1 ? 1 : g;
        j->panel = ws->panel;
        j->panel_floats = ws->panel_floats;
        rnvpi_tpool_run_shared(ws->tp, direct_job_run, j);
    } else {   /* one thread: the first of the threads' panels, or its panel in col */
        j->grain = j->strips;
        j->panel = ws->panel ? ws->panel : align64(ws->col);
        direct_job_run(j, 0, 1);
    }
}
#endif

int rnvpi_conv_choose(void)
{
    const char *e = getenv("REALNVP_CONV");
    if (e && !strcmp(e, "blas")) return RNVPI_CONV_BLAS;
    if (e && !strcmp(e, "avx2") && rnvpi_conv_avx2_available()) return RNVPI_CONV_AVX2_DIRECT;
    if (e && !strcmp(e, "winograd") && rnvpi_conv_avx2_available() && rnvpi_winograd_available())
        return RNVPI_CONV_WINOGRAD;
    if (rnvpi_conv_direct_available()) return RNVPI_CONV_AVX512;
    return rnvpi_conv_avx2_available() ? RNVPI_CONV_AVX2 : RNVPI_CONV_BLAS;
}

int rnvpi_conv_avx2_available(void)
{
#ifdef HAVE_AVX512_KERNEL
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

void rnvpi_conv_avx2_chunk(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                           float *panel, int n0, int nb, int N, int H, int W)
{
#ifdef HAVE_AVX512_KERNEL
    const ptrdiff_t HW = (ptrdiff_t)H * W;
    direct2_columns(out, in, cv, pre, res, align64(panel), (ptrdiff_t)N * HW, H, W, n0 * HW, (n0 + nb) * HW);
#else
    (void)out; (void)in; (void)cv; (void)pre; (void)res; (void)panel; (void)n0; (void)nb; (void)N; (void)H; (void)W;
#endif
}

int rnvpi_conv_direct_available(void)
{
#ifdef HAVE_AVX512_KERNEL
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

size_t rnvpi_conv_guard_floats(const conv_i *cv, int W)
{
    return (size_t)(cv->kh / 2) * W + cv->kw / 2 + RNVP_CONV_STRIP;
}

size_t rnvpi_conv_panel_floats(int cin, int kh, int kw)
{
    /* the panel (K, strip), then its bf16 pairs ((K+1)/2, strip) */
    const size_t K = (size_t)cin * kh * kw, direct = (K + (K + 1) / 2) * RNVP_CONV_STRIP;
    if (kh != 3 || kw != 3) return direct;
    const size_t wino = rnvpi_winograd_panel_floats(cin);
    return wino > direct ? wino : direct;
}


void rnvpi_conv_forward_i(float *out, const float *in, const conv_i *cv, const affine_i *pre, const net_ws *ws,
                    int N, int H, int W)
{
    rnvpi_conv_forward_acc(out, in, cv, pre, ws, N, H, W, 0);
}

void rnvpi_conv_forward_acc(float *out, const float *in, const conv_i *cv, const affine_i *pre, const net_ws *ws,
                      int N, int H, int W, int accumulate)
{
#ifdef HAVE_AVX512_KERNEL
    if (cv->wino4 && ws->wino4 && ws->direct == RNVPI_CONV_AVX512 && !ws->bf16 && rnvpi_winograd4_wins(cv, N, H, W) &&
        (!ws->panel || ws->panel_floats >= rnvpi_winograd4_panel_floats(cv->cin, W))) {
        rnvpi_conv_winograd4(out, in, cv, pre, accumulate ? out : NULL, ws, N, H, W);
        return;
    }
    if (cv->wino && cv->kh == 3 && cv->kw == 3 &&
        (ws->direct == RNVPI_CONV_WINOGRAD || (ws->direct == RNVPI_CONV_AVX2 && rnvpi_winograd_wins(cv, N, H, W)) ||
         (ws->direct == RNVPI_CONV_AVX512 && !ws->bf16 && ws->wino_kind != RNVPI_WINO_OFF &&
          rnvpi_winograd512_wins(cv, N, H, W)))) {
        rnvpi_conv_winograd(out, in, cv, pre, accumulate ? out : NULL, ws, N, H, W);
        return;
    }
    if (ws->direct != RNVPI_CONV_BLAS) {
        const int kernel = ws->direct == RNVPI_CONV_AVX512 ? RNVPI_CONV_AVX512 : RNVPI_CONV_AVX2;
        struct direct_job j = {.kernel = kernel, .out = out, .in = in, .res = accumulate ? out : NULL,
                               .cv = cv, .pre = pre, .P = (ptrdiff_t)N * H * W, .H = H, .W = W,
                               .accumulate = accumulate, .guarded = ws->guard >= rnvpi_conv_guard_floats(cv, W),
                               .bf16 = kernel == RNVPI_CONV_AVX512 && ws->bf16 && cv->w_bf16};
        direct_run(&j, kernel == RNVPI_CONV_AVX2 ? NR2 : NR, ws);
        return;
    }
#endif
    rnvpi_conv_blas(out, in, cv, pre, accumulate ? out : NULL, ws->col, NULL, 0, N, N, H, W);
}

void rnvpi_conv_resblocks(float *h, float *t, int K, const conv_i *ca, const affine_i *pre_a, const conv_i *cb,
                          const net_ws *ws, int N, int H, int W)
{
    static const affine_i relu_only = {0, NULL, NULL};
#ifdef HAVE_AVX512_KERNEL
    int fuse = ws->w4block && ws->wino4 && ws->direct == RNVPI_CONV_AVX512 && !ws->bf16 && ws->panel;
    for (int k = 0; k < K && fuse; k++)
        fuse = ca[k].wino4 && cb[k].wino4 && rnvpi_winograd4_block_wins(&ca[k], &cb[k], rnvpi_tpool_size(ws->tp), N, H, W) &&
               ws->panel_floats >= rnvpi_winograd4_block_panel_floats(ca[k].cin, ca[k].cout, H, W);
    if (fuse) {
        /* groups that do not split evenly over the threads: the last one's blocks one convolution at
         * a time on all threads where it fills F(4x4)'s lanes (3 groups on 2 threads: 1.2x the
         * three fused, two on one thread), else fused too, a thread taking one group more */
        const int T = rnvpi_tpool_size(ws->tp), groups = (N + 15) / 16, gf = groups - groups % T;
        const int rest = N - 16 * gf;
        if (gf == groups || gf < T || rest < 12) {
            rnvpi_winograd4_blocks(h, K, ca, pre_a, cb, ws, N, H, W, groups);
            return;
        }
        rnvpi_winograd4_blocks(h, K, ca, pre_a, cb, ws, N, H, W, gf);
        for (int k = 0; k < K; k++) {
            rnvpi_conv_winograd4_from(t, h, &ca[k], &pre_a[k], NULL, ws, N, H, W, gf);
            rnvpi_conv_winograd4_from(h, t, &cb[k], &relu_only, h, ws, N, H, W, gf);
        }
        return;
    }
#endif
    for (int k = 0; k < K; k++) {
        rnvpi_conv_forward_i(t, h, &ca[k], &pre_a[k], ws, N, H, W);
        rnvpi_conv_forward_acc(h, t, &cb[k], &relu_only, ws, N, H, W, 1);
    }
}

size_t rnvpi_conv_col_floats(const conv_i *cv, int N, int H, int W)
{
    size_t blas = sz_mul(sz_mul((size_t)cv->cin * cv->kh * cv->kw, (size_t)N), (size_t)H * W);
    /* the direct kernel's panel and its bf16 pairs, not Winograd's: a context's Winograd panels
     * are in ws->panel */
    const size_t K = (size_t)cv->cin * cv->kh * cv->kw;
    size_t direct = sz_add((K + (K + 1) / 2) * RNVP_CONV_STRIP, 16);
    return blas > direct ? blas : direct;
}
