/* winograd4.c: Winograd F(4x4,3x3) for the 3x3 stride-1 "same" convolutions of 32 or more channels
 * in and out, at inference on AVX-512 CPUs in fp32, sixteen images to a register. Leaves out
 * training, AVX2, bf16, batches of fewer than 12 images (winograd.c and conv.c serve those) and
 * the kernel choice (conv.c).
 *
 * Per output channel k and 4x4 output tile: Y = A^T [ sum_c (G g_kc G^T) .* (B^T d_c B) ] A with
 * d_c the tile's 6x6 input patch (padding 1): 36 GEMMs (K x C) x (C x lanes), one per position
 * xi = 6 i + j of the transformed tile; 2.25 multiplications per output where F(2x2,3x3) needs 4 and
 * the direct convolution 9. A register's 16 lanes are the same tile of 16 images, so no lane ever
 * needs a neighbour's value. A thread takes one tile row of one group of 16 images at a time: per
 * input channel it transposes pre(in) (the batch norm + ReLU before the convolution) of the row's
 * 6 input rows into (6, Wp, 16) with zero borders (one 16x16 transposition per 16 columns, in L1)
 * and transforms the row's tiles from there into V (36, cin, lanes); then per 8 output channels the
 * 36 GEMMs (the AVX-512 kernel of winograd.c) and the output transform (+ bias), each tile's 4 rows
 * transposed out of the lanes (a 4x4 transposition per 128-bit lane) into a staging buffer laid out
 * as out (image, 4 rows, W), from which each image's rows go to out (+ residual) as one run.
 *
 * Residual blocks fused (rnvpi_winograd4_blocks): a thread takes a group of 16 images, packs its
 * features h once into its panel (hp: the pack's layout for the whole plane), runs each block there
 * (conv a's tile row t from pre(hp) into a ring of 9 rows of relu(conv a), then conv b's tile row
 * t - 1 from the ring added into hp, neither transposed) and unpacks h once at the end: the same
 * operations in the same order as the convolutions one at a time, so the same bits.
 *
 * Accuracy: the transform points 0, +-1, +-2 make each output's rounding error several times that
 * of F(2x2,3x3) (rms about 1.4e-6 of the output's scale on random 64-channel layers in float32,
 * against 2.3e-7 for F(2x2) and 1.4e-7 for the direct sum); tests/test_conv.c bounds it against
 * float64, docs/benchmarks.md gives the whole model's error. An image's result does not depend on the
 * batch, the group or the thread: lanes never mix. */
#include "internal.h"
#include "tpool.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_W4 1
#endif

#define G4 16    /* images per group: the lanes of one register */
#define XI 36    /* positions of a transformed tile */
#define PF4 2    /* input channels the packing's prefetches run ahead */
#define PFO 2    /* output channels the output's prefetches run ahead */

void rnvpi_winograd4_weights(float *u, const float *w, int cout, int cin)
{
    static const double G[6][3] = {{1.0 / 4, 0, 0},
                                   {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                   {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                   {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                   {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                   {0, 0, 1}};
    for (int o = 0; o < cout; o++)
        for (int c = 0; c < cin; c++) {
            const float *g = w + ((size_t)o * cin + c) * 9;
            double t[6][3];   /* G g */
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 3; j++) t[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
            for (int i = 0; i < 6; i++)
                for (int j = 0; j < 6; j++)
                    u[((size_t)(i * 6 + j) * cout + o) * cin + c] =
                        (float)(t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2]);
        }
}

/* Tiles per column and row; columns of a packed row: a zero column, then W rounded up to 16 (each
 * 16-column transposition stored whole, its columns past W zeros), then 15 more (room for the 2
 * columns a row of patches reaches past 4 tw). */
static void geometry(int H, int W, int *th, int *tw, int *Wp)
{
    *th = (H + 3) / 4;
    *tw = (W + 3) / 4;
    *Wp = (W + 15) / 16 * 16 + 16;
}

/* One thread's panel: the 6 packed rows (6, Wp, 16), V (36, cin, LW), M (36, RNVPI_WINO_MR, LW), the
 * staging rows S (16, 4, W) and 16 floats beyond S; LW = 32 lanes per two tiles of the row. V's and
 * M's 36 planes lie a line more than their size apart: a tile's 36 values, planes 4 or 16 KiB apart,
 * would all fall into one set of the 12-way L1. */
struct w4_panel {
    float *rows, *V, *M, *S;
    ptrdiff_t LW, xs, mxs;   /* lanes of a row of tiles; V's and M's plane strides */
};
static size_t panel_layout(struct w4_panel *pl, float *base, int cin, int W)
{
    int th, tw, Wp;
    geometry(4, W, &th, &tw, &Wp);
    const ptrdiff_t LW = (tw + 1) / 2 * 32, xs = (ptrdiff_t)cin * LW + 16, mxs = (ptrdiff_t)RNVPI_WINO_MR * LW + 16;
    const size_t rows = (size_t)6 * Wp * G4, V = (size_t)XI * xs, M = (size_t)XI * mxs, S = (size_t)G4 * 4 * W + 16;
    if (pl) {
        pl->LW = LW;
        pl->xs = xs;
        pl->mxs = mxs;
        pl->rows = base;
        pl->V = pl->rows + rows;
        pl->M = pl->V + V;
        pl->S = pl->M + M;
    }
    return rows + V + M + S;
}

size_t rnvpi_winograd4_panel_floats(int cin, int W) { return panel_layout(NULL, NULL, cin, W) + 16; }

int rnvpi_winograd4_on(void)
{
    const char *e = getenv("REALNVP_WINOGRAD");
    return rnvpi_winograd_kind() == RNVPI_WINO_AVX512 && !(e && !strcmp(e, "2x2"));
}

int rnvpi_winograd4_wins(const conv_i *cv, int N, int H, int W)
{
    /* groups of 16 images: at most a quarter of the lanes empty (N = 16, 12-16 of 16, 37-48 of 48).
     * Not for fewer images: with a register's lanes 16 tiles of one image instead (tried), the
     * weights, 4 times the direct kernel's and read once per image at batch 1 (54 MB for the bench
     * model), leave the caches and the whole model ran 0.78-0.90x the direct kernel at batches 1-8. */
    const int lanes = (N + G4 - 1) / G4 * G4;
    return cv->wino4 && N >= 12 && 4 * N >= 3 * lanes && H >= 7 && W >= 7;
}

#ifdef HAVE_W4
#define AVX512W __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

static float *align64(float *p) { return (float *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

struct w4_job {
    float *out;
    const float *in, *res;
    const conv_i *cv;
    const affine_i *pre;
    int N, H, W, th, tw, Wp;
    ptrdiff_t P, HW;
    float *panel;             /* (threads, panel_floats) */
    size_t panel_floats;
    int rows, groups, g0;     /* (group, tile row)s in all; groups of 16 images, from group g0 */
    int whole, parts;         /* the first `whole` rows are items; each of the others is `parts` items,
                                 one per share of the output channels (so threads end together) */
    int items;                /* whole + (rows - whole) parts */
    atomic_int next;          /* first item not yet claimed */
};

/* 16x16 transposition in registers: r[n] lane k -> r[k] lane n. */
AVX512W static inline __attribute__((always_inline)) void transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
    #pragma GCC unroll 16
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* u[4i+m], 128-bit lane L: rows 4i .. 4i+3 of column 4L + m */
    #pragma GCC unroll 16
    for (int i = 0; i < 4; i++) {
        u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    #pragma GCC unroll 16
    for (int m = 0; m < 4; m++) {
        const __m512 v0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xdd),
                     w0 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88),
                     w1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xdd);
        r[m] = _mm512_shuffle_f32x4(v0, w0, 0x88);
        r[8 + m] = _mm512_shuffle_f32x4(v0, w0, 0xdd);
        r[4 + m] = _mm512_shuffle_f32x4(v1, w1, 0x88);
        r[12 + m] = _mm512_shuffle_f32x4(v1, w1, 0xdd);
    }
}

/* Rows y0 .. y0+5 of channel c of images n0 .. n0+ng-1 into R (6, Wp, 16): R[r][x][n] =
 * pre(in[c][n0 + n][y0 + r][x - 1]) inside the image, 0 outside it (padding is 0, not pre(0)) and in
 * the lanes n >= ng, for x < 4 tw + 2. */
AVX512W static void pack_rows(float *R, const struct w4_job *j, int c, int n0, int ng, int y0)
{
    const int H = j->H, W = j->W, xend = 4 * j->tw + 2, xpad = (W + 15) / 16 * 16 + 1;
    const ptrdiff_t rs = (ptrdiff_t)j->Wp * G4, end = (ptrdiff_t)j->cv->cin * j->P;
    const int affine = j->pre && j->pre->a, relu = j->pre != NULL;
    const __m512 a16 = _mm512_set1_ps(affine ? j->pre->a[c] : 1.0f), s16 = _mm512_set1_ps(affine ? j->pre->s[c] : 0.0f);
    const __m512 z = _mm512_setzero_ps();
    for (int r = 0; r < 6; r++) {
        float *tr = R + r * rs;
        const int y = y0 + r;
        if (y < 0 || y >= H) {
            for (int x = 0; x < xend; x++) _mm512_store_ps(tr + (ptrdiff_t)x * G4, z);
            continue;
        }
        _mm512_store_ps(tr, z);
        for (int x = xpad; x < xend; x++) _mm512_store_ps(tr + (ptrdiff_t)x * G4, z);
        for (int x0 = 0; x0 < W; x0 += 16) {
            const int nc = W - x0 < 16 ? W - x0 : 16;
            const __mmask16 cm = (__mmask16)((1u << nc) - 1);
            __m512 v[16];
            #pragma GCC unroll 16
            for (int n = 0; n < 16; n++) {
                if (n >= ng) {
                    v[n] = z;
                    continue;
                }
                const ptrdiff_t o = (ptrdiff_t)c * j->P + (n0 + n) * j->HW + (ptrdiff_t)y * W + x0;
                /* the same columns PF4 channels ahead (the 16 images' short runs, channels P floats
                 * apart, are streams the hardware prefetchers do not follow): one prefetch per load,
                 * spread over the work */
                if (o + PF4 * j->P + 16 <= end) {
                    _mm_prefetch((const char *)(j->in + o + PF4 * j->P), _MM_HINT_T0);
                    _mm_prefetch((const char *)(j->in + o + PF4 * j->P + 15), _MM_HINT_T0);
                }
                __m512 x = o + 16 <= end ? _mm512_loadu_ps(j->in + o) : _mm512_maskz_loadu_ps(cm, j->in + o);
                if (affine) x = _mm512_fmadd_ps(a16, x, s16);
                v[n] = relu ? _mm512_maskz_max_ps(cm, x, z) : _mm512_maskz_mov_ps(cm, x);
            }
            transpose16(v);
            float *d = tr + (ptrdiff_t)(1 + x0) * G4;   /* all 16: the columns past W are zeros */
#pragma GCC unroll 16
            for (int k = 0; k < 16; k++) _mm512_store_ps(d + k * G4, v[k]);
        }
    }
}

/* B^T along one line of 6: y0 = 4x0 - 5x2 + x4, y1,2 = (x4 - 4x2) +- (x3 - 4x1),
 * y3,4 = (x4 - x2) +- 2 (x3 - x1), y5 = 4x1 - 5x3 + x5. */
#define BT_LINE(y0, y1, y2, y3, y4, y5, x0, x1, x2, x3, x4, x5)                             \
    {                                                                                      \
        const __m512 a_ = _mm512_fnmadd_ps(four, x2, x4), b_ = _mm512_fnmadd_ps(four, x1, x3); \
        const __m512 c_ = _mm512_sub_ps(x4, x2), d_ = _mm512_sub_ps(x3, x1);                \
        y0 = _mm512_fnmadd_ps(five, x2, _mm512_fmadd_ps(four, x0, x4));                     \
        y1 = _mm512_add_ps(a_, b_);                                                         \
        y2 = _mm512_sub_ps(a_, b_);                                                         \
        y3 = _mm512_fmadd_ps(two, d_, c_);                                                  \
        y4 = _mm512_fnmadd_ps(two, d_, c_);                                                 \
        y5 = _mm512_fnmadd_ps(five, x3, _mm512_fmadd_ps(four, x1, x5));                     \
    }

/* One tile of 16 images, one channel: v[xi xs] (xi = 6 i + j) = (B^T d B)[i][j], d[r][s] at
 * rp[r] + off + 16 s (rows of the pack, or of a block's ring). Columns 0-2 of d B first, then 3-5
 * (18 registers each). */
AVX512W static inline __attribute__((always_inline)) void tile_in4(float *v, ptrdiff_t xs, const float *const rp[6],
                                                                    ptrdiff_t off)
{
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), five = _mm512_set1_ps(5.0f);
    __m512 e0[6], e1[6], e2[6];
#define LD(r, k) _mm512_load_ps(rp[r] + off + 16 * (k))
    #pragma GCC unroll 16
    for (int r = 0; r < 6; r++) {
        const __m512 x0 = LD(r, 0), x1 = LD(r, 1), x2 = LD(r, 2), x3 = LD(r, 3), x4 = LD(r, 4);
        const __m512 a_ = _mm512_fnmadd_ps(four, x2, x4), b_ = _mm512_fnmadd_ps(four, x1, x3);
        e0[r] = _mm512_fnmadd_ps(five, x2, _mm512_fmadd_ps(four, x0, x4));
        e1[r] = _mm512_add_ps(a_, b_);
        e2[r] = _mm512_sub_ps(a_, b_);
    }
#define COL(e, jj)                                                                                   \
    {                                                                                                \
        __m512 y0, y1, y2, y3, y4, y5;                                                               \
        BT_LINE(y0, y1, y2, y3, y4, y5, e[0], e[1], e[2], e[3], e[4], e[5])                          \
        _mm512_store_ps(v + (jj) * xs, y0);                                                          \
        _mm512_store_ps(v + (6 + (jj)) * xs, y1);                                                    \
        _mm512_store_ps(v + (12 + (jj)) * xs, y2);                                                   \
        _mm512_store_ps(v + (18 + (jj)) * xs, y3);                                                   \
        _mm512_store_ps(v + (24 + (jj)) * xs, y4);                                                   \
        _mm512_store_ps(v + (30 + (jj)) * xs, y5);                                                   \
    }
    COL(e0, 0) COL(e1, 1) COL(e2, 2)
    #pragma GCC unroll 16
    for (int r = 0; r < 6; r++) {
        const __m512 x1 = LD(r, 1), x2 = LD(r, 2), x3 = LD(r, 3), x4 = LD(r, 4), x5 = LD(r, 5);
        const __m512 c_ = _mm512_sub_ps(x4, x2), d_ = _mm512_sub_ps(x3, x1);
        e0[r] = _mm512_fmadd_ps(two, d_, c_);
        e1[r] = _mm512_fnmadd_ps(two, d_, c_);
        e2[r] = _mm512_fnmadd_ps(five, x3, _mm512_fmadd_ps(four, x1, x5));
    }
    COL(e0, 3) COL(e1, 4) COL(e2, 5)
#undef COL
#undef LD
}

/* A^T along one line of 6: y0 = x0 + (x1 + x2) + (x3 + x4), y1 = (x1 - x2) + 2 (x3 - x4),
 * y2 = (x1 + x2) + 4 (x3 + x4), y3 = (x1 - x2) + 8 (x3 - x4) + x5. */
#define AT_LINE(y0, y1, y2, y3, x0, x1, x2, x3, x4, x5)                              \
    {                                                                               \
        const __m512 p_ = _mm512_add_ps(x1, x2), q_ = _mm512_sub_ps(x1, x2);         \
        const __m512 s_ = _mm512_add_ps(x3, x4), t_ = _mm512_sub_ps(x3, x4);         \
        y0 = _mm512_add_ps(_mm512_add_ps(x0, p_), s_);                               \
        y1 = _mm512_fmadd_ps(two, t_, q_);                                           \
        y2 = _mm512_fmadd_ps(four, s_, p_);                                          \
        y3 = _mm512_add_ps(_mm512_fmadd_ps(eight, t_, q_), x5);                      \
    }

/* (row i of A^T m) A + bias into a, b_, c, d (t: row i's 6 values of A^T m) */
#define ROW_BIAS(a, b_, c, d, t)                                       \
    AT_LINE(a, b_, c, d, t[0], t[1], t[2], t[3], t[4], t[5])          \
    a = _mm512_add_ps(a, bias);                                       \
    b_ = _mm512_add_ps(b_, bias);                                     \
    c = _mm512_add_ps(c, bias);                                       \
    d = _mm512_add_ps(d, bias);
/* A^T m A + bias of the 16 lanes at mp (m[xi] at mp + xi mxs; two, four, eight, bias in scope), each
 * output row i as a 4x4 transposition per 128-bit lane: SINK(i, w0, w1, w2, w3), where w_m's 128-bit
 * lane l holds lane 4 l + m's 4 columns of row i. Two rows of A^T M at a time (12 registers). */
#define OUT_ROW(i, t, SINK)                                                                             \
    {                                                                                                   \
        __m512 a, b_, c, d;   /* row i, columns 0-3 */                                                  \
        ROW_BIAS(a, b_, c, d, t)                                                                        \
        const __m512 u0 = _mm512_unpacklo_ps(a, b_), u1 = _mm512_unpackhi_ps(a, b_),                    \
                     u2 = _mm512_unpacklo_ps(c, d), u3 = _mm512_unpackhi_ps(c, d);                      \
        const __m512 w0 = _mm512_shuffle_ps(u0, u2, 0x44), w1 = _mm512_shuffle_ps(u0, u2, 0xee),        \
                     w2 = _mm512_shuffle_ps(u1, u3, 0x44), w3 = _mm512_shuffle_ps(u1, u3, 0xee);        \
        SINK(i, w0, w1, w2, w3)                                                                         \
    }
/* As OUT_ROW, the 4 columns left in lanes (lane n: image n): SINK(i, a, b, c, d) */
#define OUT_ROW_LANES(i, t, SINK)                                      \
    {                                                                 \
        __m512 a, b_, c, d;   /* row i, columns 0-3 */                \
        ROW_BIAS(a, b_, c, d, t)                                      \
        SINK(i, a, b_, c, d)                                          \
    }
#define OUT_TILE(mp, mxs, SINK) OUT_TILE_WITH(mp, mxs, SINK, OUT_ROW)
#define OUT_TILE_LANES(mp, mxs, SINK) OUT_TILE_WITH(mp, mxs, SINK, OUT_ROW_LANES)
#define OUT_TILE_WITH(mp, mxs, SINK, ROW)                                                                         \
    {                                                                                                   \
        __m512 ta[6], tb[6];                                                                            \
        _Pragma("GCC unroll 16") for (int c6 = 0; c6 < 6; c6++) { /* rows 0 and 2 */                    \
            const __m512 p_ = _mm512_add_ps(_mm512_load_ps((mp) + (6 + c6) * (mxs)),                    \
                                            _mm512_load_ps((mp) + (12 + c6) * (mxs)));                  \
            const __m512 s_ = _mm512_add_ps(_mm512_load_ps((mp) + (18 + c6) * (mxs)),                   \
                                            _mm512_load_ps((mp) + (24 + c6) * (mxs)));                  \
            ta[c6] = _mm512_add_ps(_mm512_add_ps(_mm512_load_ps((mp) + c6 * (mxs)), p_), s_);           \
            tb[c6] = _mm512_fmadd_ps(four, s_, p_);                                                     \
        }                                                                                               \
        ROW(0, ta, SINK) ROW(2, tb, SINK)                                                               \
        _Pragma("GCC unroll 16") for (int c6 = 0; c6 < 6; c6++) { /* rows 1 and 3 */                    \
            const __m512 q_ = _mm512_sub_ps(_mm512_load_ps((mp) + (6 + c6) * (mxs)),                    \
                                            _mm512_load_ps((mp) + (12 + c6) * (mxs)));                  \
            const __m512 t_ = _mm512_sub_ps(_mm512_load_ps((mp) + (18 + c6) * (mxs)),                   \
                                            _mm512_load_ps((mp) + (24 + c6) * (mxs)));                  \
            ta[c6] = _mm512_fmadd_ps(two, t_, q_);                                                      \
            tb[c6] = _mm512_add_ps(_mm512_fmadd_ps(eight, t_, q_), _mm512_load_ps((mp) + (30 + c6) * (mxs))); \
        }                                                                                               \
        ROW(1, ta, SINK) ROW(3, tb, SINK)                                                               \
    }

/* Output channel o's row of tiles from M (its row r of each xi, lanes 16 tj of tile tj): S (16, 4, W)
 * = A^T M A + b, S[n][i][4 tj + jj], each image's 4 rows as in out. A partial last tile (W % 4) goes
 * first: its columns past W spill into the next row's first ones, which tile 0 writes after (the
 * last image's into the 16 floats beyond S). */
AVX512W static inline __attribute__((always_inline)) void output4_row(float *S, const float *M, ptrdiff_t mxs,
                                                                       ptrdiff_t ms, int r, int tw, int W, float b)
{
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), eight = _mm512_set1_ps(8.0f);
    const __m512 bias = _mm512_set1_ps(b);
    const ptrdiff_t W4 = 4 * (ptrdiff_t)W;   /* floats per image */
    const int first = W % 4 ? tw - 1 : 0;
    for (int k = 0; k < tw; k++) {
        const int tj = (first + k) % tw;
        const float *mp = M + r * ms + 16 * tj;
        float *sp = S + 4 * tj;
#define TO_S(i, w0, w1, w2, w3)                                                                         \
    {                                                                                                   \
        float *q = sp + (ptrdiff_t)(i) * W;   /* image 4 l + m at q + (4 l + m) W4 */                  \
        _mm_storeu_ps(q, _mm512_castps512_ps128(w0));                                                   \
        _mm_storeu_ps(q + W4, _mm512_castps512_ps128(w1));                                              \
        _mm_storeu_ps(q + 2 * W4, _mm512_castps512_ps128(w2));                                          \
        _mm_storeu_ps(q + 3 * W4, _mm512_castps512_ps128(w3));                                          \
        _mm_storeu_ps(q + 4 * W4, _mm512_extractf32x4_ps(w0, 1));                                       \
        _mm_storeu_ps(q + 5 * W4, _mm512_extractf32x4_ps(w1, 1));                                       \
        _mm_storeu_ps(q + 6 * W4, _mm512_extractf32x4_ps(w2, 1));                                       \
        _mm_storeu_ps(q + 7 * W4, _mm512_extractf32x4_ps(w3, 1));                                       \
        _mm_storeu_ps(q + 8 * W4, _mm512_extractf32x4_ps(w0, 2));                                       \
        _mm_storeu_ps(q + 9 * W4, _mm512_extractf32x4_ps(w1, 2));                                       \
        _mm_storeu_ps(q + 10 * W4, _mm512_extractf32x4_ps(w2, 2));                                      \
        _mm_storeu_ps(q + 11 * W4, _mm512_extractf32x4_ps(w3, 2));                                      \
        _mm_storeu_ps(q + 12 * W4, _mm512_extractf32x4_ps(w0, 3));                                      \
        _mm_storeu_ps(q + 13 * W4, _mm512_extractf32x4_ps(w1, 3));                                      \
        _mm_storeu_ps(q + 14 * W4, _mm512_extractf32x4_ps(w2, 3));                                      \
        _mm_storeu_ps(q + 15 * W4, _mm512_extractf32x4_ps(w3, 3));                                      \
    }
        OUT_TILE(mp, mxs, TO_S)
#undef TO_S
    }
}

/* The staging rows S (16, 4, W) of output channel o into out (+ res): for each of images n0 ..
 * n0+ng-1, its rows y0 .. y0+3 inside the image, contiguous in out as in S. */
AVX512W static inline __attribute__((always_inline)) void flush_rows(const struct w4_job *j, const float *S, int o,
                                                                      int n0, int ng, int y0)
{
    const int W = j->W, rows = j->H - y0 < 4 ? j->H - y0 : 4, L = rows * W;
    const ptrdiff_t rend = (ptrdiff_t)j->cv->cout * j->P;
    for (int n = 0; n < ng; n++) {
        const float *sp = S + (ptrdiff_t)n * 4 * W;
        const ptrdiff_t off = (ptrdiff_t)o * j->P + (n0 + n) * j->HW + (ptrdiff_t)y0 * W;
        for (int x = 0; x < L; x += 16) {
            const __mmask16 m = L - x >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (L - x)) - 1);
            /* the same floats PFO output channels ahead, for writing (and res when it is not out) */
            if (o + PFO < j->cv->cout) {
                const ptrdiff_t ahead = off + x + (ptrdiff_t)PFO * j->P;
                if (j->res && j->res != j->out) _mm_prefetch((const char *)(j->res + ahead), _MM_HINT_T0);
                __builtin_prefetch(j->out + ahead, 1, 3);
            }
            __m512 v = _mm512_loadu_ps(sp + x);
            if (j->res) /* a plain load where all 16 lie in res (masked loads are slow on AMD Zen) */
                v = _mm512_add_ps(v, off + x + 16 <= rend ? _mm512_loadu_ps(j->res + off + x)
                                                          : _mm512_maskz_loadu_ps(m, j->res + off + x));
            if (m == 0xffff) _mm512_storeu_ps(j->out + off + x, v);
            else _mm512_mask_storeu_ps(j->out + off + x, m, v);
        }
        if (o + PFO < j->cv->cout) __builtin_prefetch(j->out + off + L - 1 + (ptrdiff_t)PFO * j->P, 1, 3);
    }
}

/* Tile row ti of group g (images 16 g ..) on one thread, its panel at base. */
AVX512W static void row4(const struct w4_job *j, float *base, int g, int ti, int oa, int ob)
{
    const conv_i *cv = j->cv;
    const int cin = cv->cin, cout = cv->cout, tw = j->tw;
    const int n0 = g * G4, ng = j->N - n0 < G4 ? j->N - n0 : G4;
    const ptrdiff_t rs = (ptrdiff_t)j->Wp * G4;
    struct w4_panel pl;
    panel_layout(&pl, base, cin, j->W);
    const ptrdiff_t LW = pl.LW, xs = pl.xs, mxs = pl.mxs;
    const float *const rp[6] = {pl.rows, pl.rows + rs, pl.rows + 2 * rs, pl.rows + 3 * rs, pl.rows + 4 * rs,
                                pl.rows + 5 * rs};
    for (int c = 0; c < cin; c++) {
        pack_rows(pl.rows, j, c, n0, ng, 4 * ti - 1);
        for (int tj = 0; tj < tw; tj++) tile_in4(pl.V + (ptrdiff_t)c * LW + 16 * tj, xs, rp, 4 * tj * G4);
    }
    for (int o0 = oa; o0 < ob; o0 += RNVPI_WINO_MR) {
        const int mr = ob - o0 < RNVPI_WINO_MR ? ob - o0 : RNVPI_WINO_MR;
        rnvpi_winograd512_gemm(pl.M, mxs, LW, cv->wino4, XI, cout, cin, pl.V, xs, LW, tw, o0, mr);
        for (int r = 0; r < mr; r++) {
            output4_row(pl.S, pl.M, mxs, LW, r, tw, j->W, cv->b[o0 + r]);
            flush_rows(j, pl.S, o0 + r, n0, ng, 4 * ti);
        }
    }
}

static void w4_job_run(void *arg, int t, int nt)
{
    struct w4_job *j = arg;
    float *panel = align64(j->panel + (size_t)t * j->panel_floats);
    (void)nt;
    for (;;) {
        const int i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (i >= j->items) break;
        /* row q = i, or share part of row q */
        const int q = i < j->whole ? i : j->whole + (i - j->whole) / j->parts, part = i < j->whole ? 0 : (i - j->whole) % j->parts;
        const int np = i < j->whole ? 1 : j->parts, cout = j->cv->cout;
        /* rows in the order group 0 tile row 0, group 1 tile row 0, ...: neighbouring claims (the
         * threads') apart in memory; one group: tile rows 0, h, 1, h+1, ... (h = th/2 rounded up) */
        const int g = j->g0 + q % j->groups, k = q / j->groups, h = (j->th + 1) / 2;
        const int ti = j->groups > 1 ? k : k % 2 ? h + k / 2 : k / 2;
        /* the share: output channels in whole register blocks */
        const int blocks = (cout + RNVPI_WINO_MR - 1) / RNVPI_WINO_MR;
        const int oa = blocks * part / np * RNVPI_WINO_MR, ob = blocks * (part + 1) / np * RNVPI_WINO_MR;
        if (oa < cout) row4(j, panel, g, ti, oa, ob < cout ? ob : cout);
    }
}
#endif

/* A block's intermediate, per channel: RING rows of RW = 4 tw + 2 columns of 16 lanes (pre(b) of
 * conv a's output, zero outside the image), as the pack lays them out; conv b's tile row t - 1
 * reads rows 4t - 5 .. 4t just after conv a's tile row t wrote 4t .. 4t + 3, so 9 rows suffice.
 * Channels a line more than their size apart. */
#define RING 9
static ptrdiff_t ring_channel(int W)
{
    const int RW = 4 * ((W + 3) / 4) + 2;
    return (ptrdiff_t)RING * RW * G4 + 16;
}

/* A group's features h, per channel, in the pack's layout for the whole plane: rows -1 .. 4 th (a
 * multiple of 6 of them: pack_rows fills 6 at a time), Wp columns of 16 lanes, zero outside the
 * image; channels a line more than their size apart. */
static int hp_rows(int H) { return (4 * ((H + 3) / 4) + 2 + 5) / 6 * 6; }
static ptrdiff_t hp_channel(int H, int W)
{
    int th, tw, Wp;
    geometry(H, W, &th, &tw, &Wp);
    return (ptrdiff_t)hp_rows(H) * Wp * G4 + 16;
}

size_t rnvpi_winograd4_block_panel_floats(int cin, int cmid, int H, int W)
{
    const size_t pa = panel_layout(NULL, NULL, cin > cmid ? cin : cmid, W);
    return (pa + 15) / 16 * 16 + (size_t)cmid * (size_t)ring_channel(W) + (size_t)cin * (size_t)hp_channel(H, W) + 16;
}

int rnvpi_winograd4_block_wins(const conv_i *ca, const conv_i *cb, int threads, int N, int H, int W)
{
    /* whole groups of 16 images per thread: a group's tile rows run in order on one thread (the
     * ring), so fewer groups than threads would leave threads idle */
    const int groups = (N + G4 - 1) / G4;
    return rnvpi_winograd4_wins(ca, N, H, W) && rnvpi_winograd4_wins(cb, N, H, W) && ca->cout == cb->cin &&
           cb->cout == ca->cin && groups >= threads;
}

#ifdef HAVE_W4
static void job_init(struct w4_job *j, float *out, const float *in, const conv_i *cv, const affine_i *pre,
                     const float *res, int N, int H, int W)
{
    *j = (struct w4_job){.out = out, .in = in, .res = res, .cv = cv, .pre = pre, .N = N, .H = H, .W = W,
                         .P = (ptrdiff_t)N * H * W, .HW = (ptrdiff_t)H * W};
    geometry(H, W, &j->th, &j->tw, &j->Wp);
    j->groups = (N + G4 - 1) / G4;
    j->rows = j->groups * j->th;
}

/* The GEMMs of a row's V (in the panel) for all of the convolution's output channels, each tile's 4x4
 * outputs left in lanes: to_ring, relu'd into the ring (zero past H and W; dst the ring, channels
 * dcs apart); else added into the packed features hp (rows and columns inside the image only). */
AVX512W static inline __attribute__((always_inline)) void gemm_to_lanes(const struct w4_job *j,
                                                                         const struct w4_panel *pl, float *dst,
                                                                         ptrdiff_t dcs, int ti, int to_ring)
{
    const conv_i *cv = j->cv;
    const int cin = cv->cin, cout = cv->cout, tw = j->tw, W = j->W, H = j->H, RW = 4 * tw + 2, y0 = 4 * ti;
    const ptrdiff_t LW = pl->LW, xs = pl->xs, mxs = pl->mxs, hrs = (ptrdiff_t)j->Wp * G4;
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), eight = _mm512_set1_ps(8.0f);
    const __m512 z = _mm512_setzero_ps();
    for (int o0 = 0; o0 < cout; o0 += RNVPI_WINO_MR) {
        const int mr = cout - o0 < RNVPI_WINO_MR ? cout - o0 : RNVPI_WINO_MR;
        rnvpi_winograd512_gemm(pl->M, mxs, LW, cv->wino4, XI, cout, cin, pl->V, xs, LW, tw, o0, mr);
        for (int r = 0; r < mr; r++) {
            const __m512 bias = _mm512_set1_ps(cv->b[o0 + r]);
            float *dc = dst + (ptrdiff_t)(o0 + r) * dcs;
            for (int tj = 0; tj < tw; tj++) {
                const float *mp = pl->M + r * LW + 16 * tj;
                const int lim = W - 4 * tj;   /* columns of this tile inside the image (>= 1) */
#define TO_RING(i, w0, w1, w2, w3)                                                                   \
    {                                                                                               \
        float *q = dc + (ptrdiff_t)((y0 + (i)) % RING) * RW * G4 + (ptrdiff_t)(1 + 4 * tj) * G4;      \
        const int in_ = y0 + (i) < H;                                                               \
        _mm512_store_ps(q, in_ ? _mm512_max_ps(w0, z) : z);                                         \
        _mm512_store_ps(q + 16, in_ && lim > 1 ? _mm512_max_ps(w1, z) : z);                         \
        _mm512_store_ps(q + 32, in_ && lim > 2 ? _mm512_max_ps(w2, z) : z);                         \
        _mm512_store_ps(q + 48, in_ && lim > 3 ? _mm512_max_ps(w3, z) : z);                         \
    }
#define TO_HP(i, w0, w1, w2, w3)                                                                     \
    if (y0 + (i) < H) {                                                                             \
        float *q = dc + (ptrdiff_t)(y0 + (i) + 1) * hrs + (ptrdiff_t)(1 + 4 * tj) * G4;               \
        _mm512_store_ps(q, _mm512_add_ps(_mm512_load_ps(q), w0));                                   \
        if (lim > 1) _mm512_store_ps(q + 16, _mm512_add_ps(_mm512_load_ps(q + 16), w1));            \
        if (lim > 2) _mm512_store_ps(q + 32, _mm512_add_ps(_mm512_load_ps(q + 32), w2));            \
        if (lim > 3) _mm512_store_ps(q + 48, _mm512_add_ps(_mm512_load_ps(q + 48), w3));            \
    }
                if (to_ring) OUT_TILE_LANES(mp, mxs, TO_RING)
                else OUT_TILE_LANES(mp, mxs, TO_HP)
#undef TO_RING
#undef TO_HP
            }
        }
    }
}

/* Conv a's tile row ti of group g into the ring ((cmid, RING, RW, 16) at ring, channels rcs apart):
 * rows 4 ti .. 4 ti + 3 of relu(conv_a(pre_a(h))) (conv b's pre: relu only), zero past H and W. */
AVX512W static void row4_ring(const struct w4_job *j, const struct w4_panel *pl, const float *hp, ptrdiff_t hcs,
                              float *ring, ptrdiff_t rcs, int ti)
{
    const int cin = j->cv->cin, tw = j->tw, W = j->W, H = j->H, RW = 4 * tw + 2, y0 = 4 * ti;
    const ptrdiff_t rs = (ptrdiff_t)j->Wp * G4, LW = pl->LW, xs = pl->xs;
    const float *const rp[6] = {pl->rows, pl->rows + rs, pl->rows + 2 * rs, pl->rows + 3 * rs, pl->rows + 4 * rs,
                                pl->rows + 5 * rs};
    const affine_i *pre = j->pre;
    const __m512 z = _mm512_setzero_ps();
    for (int c = 0; c < cin; c++) {
        /* pre(h) of rows y0 - 1 .. y0 + 4 into the pack's rows (pre(0) is not 0: the borders stay 0) */
        const __m512 a16 = _mm512_set1_ps(pre && pre->a ? pre->a[c] : 1.0f), s16 = _mm512_set1_ps(pre && pre->a ? pre->s[c] : 0.0f);
        for (int r = 0; r < 6; r++) {
            const int y = y0 - 1 + r;
            float *d = pl->rows + r * rs;
            const float *src = hp + (ptrdiff_t)c * hcs + (ptrdiff_t)(y + 1) * rs;
            if (y < 0 || y >= H) {
                for (int x = 0; x < RW; x++) _mm512_store_ps(d + (ptrdiff_t)x * G4, z);
                continue;
            }
            _mm512_store_ps(d, z);
            for (int x = 1; x <= W; x++) {
                __m512 v = _mm512_load_ps(src + (ptrdiff_t)x * G4);
                if (pre && pre->a) v = _mm512_fmadd_ps(a16, v, s16);
                if (pre) v = _mm512_max_ps(v, z);
                _mm512_store_ps(d + (ptrdiff_t)x * G4, v);
            }
            for (int x = W + 1; x < RW; x++) _mm512_store_ps(d + (ptrdiff_t)x * G4, z);
        }
        for (int tj = 0; tj < tw; tj++) tile_in4(pl->V + (ptrdiff_t)c * LW + 16 * tj, xs, rp, 4 * tj * G4);
    }
    gemm_to_lanes(j, pl, ring, rcs, ti, 1);
}

/* Conv b's tile row ti from the ring: hp (+)= conv_b(ring) + b, rows 4 ti .. 4 ti + 3 inside the
 * image (the rest of hp stays 0). */
AVX512W static void row4_from_ring(const struct w4_job *j, const struct w4_panel *pl, const float *ring,
                                   ptrdiff_t rcs, float *hp, ptrdiff_t hcs, int ti)
{
    const int cin = j->cv->cin, tw = j->tw, RW = 4 * tw + 2, y0 = 4 * ti;
    const ptrdiff_t LW = pl->LW, xs = pl->xs, rws = (ptrdiff_t)RW * G4;
    for (int c = 0; c < cin; c++) {
        const float *rc = ring + (ptrdiff_t)c * rcs;
        const float *const rp[6] = {rc + ((y0 + RING - 1) % RING) * rws, rc + (y0 % RING) * rws,
                                    rc + ((y0 + 1) % RING) * rws,        rc + ((y0 + 2) % RING) * rws,
                                    rc + ((y0 + 3) % RING) * rws,        rc + ((y0 + 4) % RING) * rws};
        for (int tj = 0; tj < tw; tj++) tile_in4(pl->V + (ptrdiff_t)c * LW + 16 * tj, xs, rp, 4 * tj * G4);
    }
    gemm_to_lanes(j, pl, hp, hcs, ti, 0);
}

/* hp (C, rows, Wp, 16) <-> images n0 .. n0+ng-1 of h (C, N, H, W). */
AVX512W static void hp_pack(float *hp, ptrdiff_t hcs, const struct w4_job *j, int n0, int ng)
{
    const ptrdiff_t rs = (ptrdiff_t)j->Wp * G4;
    for (int c = 0; c < j->cv->cin; c++)
        for (int y0 = -1; y0 + 1 < hp_rows(j->H); y0 += 6) pack_rows(hp + (ptrdiff_t)c * hcs + (y0 + 1) * rs, j, c, n0, ng, y0);
}

AVX512W static void hp_unpack(float *h, const float *hp, ptrdiff_t hcs, int C, const struct w4_job *j, int n0, int ng)
{
    const int H = j->H, W = j->W;
    const ptrdiff_t rs = (ptrdiff_t)j->Wp * G4;
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x0 = 0; x0 < W; x0 += 16) {
                const __mmask16 cm = W - x0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (W - x0)) - 1);
                const float *src = hp + (ptrdiff_t)c * hcs + (ptrdiff_t)(y + 1) * rs + (ptrdiff_t)(1 + x0) * G4;
                __m512 v[16];
#pragma GCC unroll 16
                for (int k = 0; k < 16; k++) v[k] = _mm512_load_ps(src + k * G4);
                transpose16(v);
                for (int n = 0; n < ng; n++) {
                    float *d = h + (ptrdiff_t)c * j->P + (n0 + n) * j->HW + (ptrdiff_t)y * W + x0;
                    if (cm == 0xffff) _mm512_storeu_ps(d, v[n]);
                    else _mm512_mask_storeu_ps(d, cm, v[n]);
                }
            }
}

struct w4_block_job {
    float *h;
    const conv_i *ca, *cb;   /* (K) blocks: a: h -> ring, b: ring -> h (+=) */
    const affine_i *pre_a;   /* (K) */
    int K, N, H, W, groups;
    float *panel;
    size_t panel_floats;
    atomic_int next;         /* the next group */
};

/* Block k of group g on one thread (h in hp), its panel at base. */
AVX512W static void block_group(const struct w4_block_job *bj, float *base, float *hp, int k)
{
    struct w4_job a, b;
    job_init(&a, NULL, NULL, &bj->ca[k], &bj->pre_a[k], NULL, bj->N, bj->H, bj->W);
    job_init(&b, NULL, NULL, &bj->cb[k], NULL, NULL, bj->N, bj->H, bj->W);
    const int cin = a.cv->cin, cmid = a.cv->cout, W = a.W, RW = 4 * a.tw + 2;
    struct w4_panel pl;
    const size_t pa = panel_layout(&pl, base, cin > cmid ? cin : cmid, W);
    float *ring = base + (pa + 15) / 16 * 16;
    const ptrdiff_t rcs = ring_channel(W), rws = (ptrdiff_t)RW * G4, hcs = hp_channel(bj->H, W);
    /* the borders conv a never writes: columns 0 and RW - 1 of every row; row -1 whole */
    for (int c = 0; c < cmid; c++) {
        float *rc = ring + (ptrdiff_t)c * rcs;
        for (int y = 0; y < RING; y++) {
            memset(rc + y * rws, 0, sizeof(float) * G4);
            memset(rc + y * rws + (ptrdiff_t)(RW - 1) * G4, 0, sizeof(float) * G4);
        }
        memset(rc + (RING - 1) * rws, 0, sizeof(float) * (size_t)rws);
    }
    for (int ti = 0; ti <= a.th; ti++) {
        if (ti < a.th) row4_ring(&a, &pl, hp, hcs, ring, rcs, ti);
        else   /* row 4 th (past H): zero */
            for (int c = 0; c < cmid; c++) memset(ring + c * rcs + ((4 * ti) % RING) * rws, 0, sizeof(float) * (size_t)rws);
        if (ti >= 1) row4_from_ring(&b, &pl, ring, rcs, hp, hcs, ti - 1);
    }
}

static void w4_block_run(void *arg, int t, int nt)
{
    struct w4_block_job *bj = arg;
    float *base = align64(bj->panel + (size_t)t * bj->panel_floats);
    (void)nt;
    for (;;) {
        const int g = atomic_fetch_add_explicit(&bj->next, 1, memory_order_relaxed);
        if (g >= bj->groups) break;
        /* all the blocks of one group at a time, its 16 images' features packed in the panel */
        struct w4_job j;
        job_init(&j, NULL, bj->h, &bj->ca[0], NULL, NULL, bj->N, bj->H, bj->W);
        const int C = bj->ca[0].cin, n0 = g * G4, ng = bj->N - n0 < G4 ? bj->N - n0 : G4;
        const ptrdiff_t hcs = hp_channel(bj->H, bj->W);
        size_t pa = 0;
        for (int k = 0; k < bj->K; k++) {
            const int cm = bj->ca[k].cout, cx = C > cm ? C : cm;
            const size_t f = (panel_layout(NULL, NULL, cx, bj->W) + 15) / 16 * 16 + (size_t)cm * (size_t)ring_channel(bj->W);
            if (f > pa) pa = f;
        }
        float *hp = base + pa;
        hp_pack(hp, hcs, &j, n0, ng);
        for (int k = 0; k < bj->K; k++) block_group(bj, base, hp, k);
        hp_unpack(bj->h, hp, hcs, C, &j, n0, ng);
    }
}
#endif

void rnvpi_winograd4_blocks(float *h, int K, const conv_i *ca, const affine_i *pre_a, const conv_i *cb,
                            const net_ws *ws, int N, int H, int W, int groups)
{
#ifdef HAVE_W4
    struct w4_block_job bj = {.h = h, .ca = ca, .cb = cb, .pre_a = pre_a, .K = K, .N = N, .H = H, .W = W,
                              .groups = groups, .panel = ws->panel, .panel_floats = ws->panel_floats};
    atomic_init(&bj.next, 0);
    rnvpi_tpool_run_shared(ws->tp, w4_block_run, &bj);
#else
    (void)h; (void)K; (void)ca; (void)pre_a; (void)cb; (void)ws; (void)N; (void)H; (void)W; (void)groups;
#endif
}

void rnvpi_conv_winograd4(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                          const net_ws *ws, int N, int H, int W)
{
    rnvpi_conv_winograd4_from(out, in, cv, pre, res, ws, N, H, W, 0);
}

void rnvpi_conv_winograd4_from(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                               const net_ws *ws, int N, int H, int W, int g0)
{
#ifdef HAVE_W4
    struct w4_job j;
    job_init(&j, out, in, cv, pre, res, N, H, W);
    j.g0 = g0;
    j.groups -= g0;
    j.rows = j.groups * j.th;
    /* rows left over after each thread took as many: split by output channels, each part transforming
     * the row's input again (about a tenth of a row's work) */
    const int threads = ws->panel ? rnvpi_tpool_size(ws->tp) : 1;
    j.whole = j.rows - j.rows % threads;
    j.parts = threads;
    j.items = j.whole + (j.rows - j.whole) * threads;
    atomic_init(&j.next, 0);
    if (ws->panel) {
        j.panel = ws->panel;
        j.panel_floats = ws->panel_floats;
        rnvpi_tpool_run_shared(ws->tp, w4_job_run, &j);
    } else {   /* one thread, its panel in col */
        j.panel = ws->col;
        j.panel_floats = 0;
        w4_job_run(&j, 0, 1);
    }
#else
    (void)out; (void)in; (void)cv; (void)pre; (void)res; (void)ws; (void)N; (void)H; (void)W; (void)g0;
#endif
}
