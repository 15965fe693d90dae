/* internal.h: the model's internal layout shared by core/ and train/: couplings, convolutions,
 * the parameter table, and the layer kernels. Not part of the public API; no I/O here. */
#ifndef RNVP_INTERNAL_H
#define RNVP_INTERNAL_H

#include "realnvp.h"
#include <math.h>
#include <stdarg.h>

#define RNVP_MAX_KERNEL 15         /* largest kh or kw accepted from a checkpoint */
#define RNVP_MAX_FEATURES 4096
#define RNVP_MAX_RES_BLOCKS 64
#define RNVP_MAX_SIDE 4096
#define RNVP_MAX_FLOW_CHANNELS (3 << (RNVP_MAX_SCALES - 1))   /* channels of h_s at most */

/* The config's limits keep every per-image product in int: D = C*H*W, and channels * H * W of
 * every tensor the flow sees (C*H*W elements, at most 3 * 4096 * 4096). */
_Static_assert((long long)3 * RNVP_MAX_SIDE * RNVP_MAX_SIDE <= 0x7fffffff, "C*H*W must fit in int");

/* Saturating size arithmetic for sizes computed from a model's config: SIZE_MAX stands for "does
 * not fit in size_t" and stays SIZE_MAX through later sums and products. */
static inline size_t sz_mul(size_t a, size_t b)
{
    if (a == SIZE_MAX || b == SIZE_MAX) return SIZE_MAX;
    return a && b > SIZE_MAX / a ? SIZE_MAX : a * b;
}
static inline size_t sz_add(size_t a, size_t b)
{
    return b > SIZE_MAX - a ? SIZE_MAX : a + b;
}

enum coupling_kind { COUPLING_CHECKER = 0, COUPLING_CHANNEL = 1 };

/* A weight-normalised convolution. Pointers into the model's parameter block. */
typedef struct conv_p {
    int cout, cin, kh, kw;
    float *v;       /* (cout, cin, kh, kw) weight_v */
    float *g;       /* (cout) weight_g */
    float *b;       /* (cout) bias */
} conv_p;

/* A batch norm's parameters and running statistics. */
typedef struct bn_p {
    int c;
    float *w, *b, *rm, *rv;   /* (c) each */
} bn_p;

/* Folded inference weights of one convolution: w = g * v / ||v|| (times a following batch
 * norm's scale where one is folded in), bias likewise. Pointers into the model's infer block. */
typedef struct conv_i {
    int cout, cin, kh, kw;
    float *w;       /* (cout, cin*kh*kw) */
    float *b;       /* (cout) */
    float *wino;    /* (16, cout, cin) Winograd F(2x2,3x3) weights G w G^T (rnvpi_winograd_weights) of a
                       3x3 convolution, NULL: none (the Winograd kernel is not used) */
    uint32_t *w_bf16;      /* (cout, (cin*kh*kw+1)/2) w rounded to bf16, pairs along cin*kh*kw
                              (rnvpi_bf16_pairs), for a convolution of 16 or more input channels
                              where the CPU has AVX512_BF16; NULL: none */
    float *wino4;   /* (36, cout, cin) Winograd F(4x4,3x3) weights (rnvpi_winograd4_weights) of a 3x3
                       convolution of RNVPI_WINO4_MIN_CH or more channels in and out on an AVX-512
                       CPU, NULL: none (the F(4x4) kernel is not used) */
} conv_i;

/* A batch norm as a per-channel affine map y = a*x + c (inference). */
typedef struct affine_i {
    int c;
    float *a, *s;   /* (c) scale, shift */
} affine_i;

typedef struct coupling {
    int kind, parity, level;   /* index s of the scale it belongs to */
    int C, H, W;               /* shape of the tensor the coupling sees */
    int Ct, Cin, F, K;         /* transformed channels, net input channels, features, blocks */
    /* parameters (checkpoint tensors) */
    conv_p in_conv, out_conv;
    conv_p *conv_a, *conv_b;   /* (K) */
    bn_p *bn_a, *bn_b;         /* (K) */
    bn_p bn_out;
    float *scale;              /* (Ct) */
    float *fbn_mean, *fbn_var; /* (Ct) each, NULL without flow_batchnorm */
    /* folded inference weights */
    conv_i i_in, i_out;
    conv_i *i_a, *i_b;         /* (K); i_a has bn_b folded in */
    affine_i *i_bn_a;          /* (K) */
    affine_i i_bn_out;
    float *fbn_inv_std;        /* (Ct) 1/sqrt(var+eps) */
    double fbn_logdet;         /* -0.5 * sum over transformed elements of ln(var+eps), one image */
} coupling;

struct rnvp_model {
    rnvp_config cfg;
    int D, S, L;
    rnvp_latent_part parts[RNVP_MAX_SCALES];
    coupling *cp;              /* (L) */
    int ntensors;
    rnvp_tensor *tensors;      /* (ntensors), data points into params */
    char *names;               /* storage for tensor names */
    float *params;             /* (nparams) every checkpoint tensor, in table order */
    size_t nparams;
    float *infer;              /* (ninfer) folded inference weights */
    size_t ninfer;
    int bf16;                  /* 1: the infer block also holds bf16 weights (conv_i.w_bf16), made
                                  where the CPU has AVX512_BF16 (rnvpi_bf16_available) */
    int nmeta;
    char **meta_keys, **meta_vals;
};

/* Error helper: fills err (if not NULL) and returns status. */
enum rnvp_status rnvpi_fail(rnvp_error *err, enum rnvp_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Seeded random numbers (core/util.c): splitmix64 stream, uniform in (0,1), two normals. */
uint64_t rnvpi_splitmix64(uint64_t *state);
double rnvpi_uniform(uint64_t *state);
void rnvpi_gauss2(uint64_t *state, double *a, double *b);
/* rnvp_sample_latents for images first .. first+n-1 of a request (their own streams). */
void rnvpi_sample_latents_from(float *z, int first, int n, int d, double temp, uint64_t seed);

/* Chooses the kernel (kh, kw) of convolution `conv` of coupling k: conv 0 is in_conv, 1 + 2j
 * conv_a of block j, 2 + 2j conv_b, 1 + 2K out_conv. Returns 0, or -1 to fail the build.
 * Without one, in/block convs are cfg->kernel square (3 when 0) and out_conv is 1x1. */
typedef int (*kernel_fn)(void *user, int k, int conv, int *kh, int *kw);

/* Build an empty model for cfg: couplings, tensor table, zeroed parameter and inference
 * blocks. kfn (may be NULL) chooses each convolution's kernel. On failure *out is NULL and
 * err says why. */
enum rnvp_status rnvpi_model_build(rnvp_model **out, const rnvp_config *cfg, kernel_fn kfn,
                             void *user, rnvp_error *err);
/* The two halves of rnvpi_model_build: rnvpi_model_layout makes the couplings and the tensor table
 * (names, shapes, m->nparams) without the blocks, so a loader can check a file against the
 * table before allocating; rnvpi_model_alloc then allocates the blocks and resolves the pointers
 * (on failure the caller frees the model). */
enum rnvp_status rnvpi_model_layout(rnvp_model **out, const rnvp_config *cfg, kernel_fn kfn,
                              void *user, rnvp_error *err);
enum rnvp_status rnvpi_model_alloc(rnvp_model *m, rnvp_error *err);
/* Recompute the folded inference weights from the parameters (after loading or training). */
void rnvpi_model_fold(rnvp_model *m);
/* Set metadata key to value (copies), replacing an existing key. */
enum rnvp_status rnvpi_model_set_meta(rnvp_model *m, const char *key, const char *val);
/* Index of a tensor by name, or -1. */
int rnvpi_model_find_tensor(const rnvp_model *m, const char *name);

/* ---- safetensors ---- */
typedef struct st_entry {
    const char *name;
    int ndim;
    int shape[4];
    const float *data;   /* (shape) little-endian float32 inside the file buffer, maybe unaligned */
} st_entry;

/* Write a safetensors file atomically (tmp, fsync, rename). meta: NULL-terminated key/value
 * pairs. Entries with data == NULL are rejected. */
enum rnvp_status rnvpi_st_write(const char *path, const char *const *meta, const rnvp_tensor *t,
                          int n, rnvp_error *err);

/* ---- the flow's operations, written once for inference (core/) and training (train/) ----
 * core/ops.c and the inline functions here hold every formula of docs/model.md that both use;
 * the trainer adds batch statistics and the backward passes (train/layers.c), and the
 * equivalence tests (tests/test_equiv.c) check that both paths compute the same flow. */

#define RNVP_HALF_LOG_2PI 0.91893853320467274178   /* ln(2 pi) / 2 */
#define RNVP_LN_256 5.5451774444795624753           /* ln 256 */

/* docs/model.md 1.2-1.3 for one value: p = alpha + (1 - 2 alpha) xt, returns y = ln p - ln(1-p)
 * and adds the log-det term ln(1 - 2 alpha) - ln p - ln(1 - p) to *ld; lk = ln(1 - 2 alpha). */
static inline float rnvpi_logit1(double xt, double alpha, double lk, double *ld)
{
    const double p = alpha + (1.0 - 2.0 * alpha) * xt, lp = log(p), lq = log1p(-p);
    *ld += lk - lp - lq;
    return (float)(lp - lq);
}

/* The standard normal prior of `count` values whose squares sum to sumsq (docs/model.md 3). */
static inline double rnvpi_log_normal(double sumsq, double count)
{
    return -0.5 * sumsq - count * RNVP_HALF_LOG_2PI;
}
/* log p(v) of the discrete image from log p(z) and the flow's log-dets (pre-processing
 * included), D values: the ln 256 per value of the dequantisation (docs/model.md 3). */
static inline double rnvpi_log_likelihood(double log_pz, double logdet, int D)
{
    return log_pz + logdet - D * RNVP_LN_256;
}
static inline double rnvpi_bits_per_dim(double log_likelihood, int D)
{
    return -log_likelihood / (D * 0.69314718055994530942);
}

/* A batch norm as the affine map a x + s: bn(x) = w (x - mean) / sqrt(var + eps) + b
 * (docs/model.md 2.6); mean and var are the batch's (training) or the running ones (inference). */
static inline void rnvpi_bn_affine1(float *a, float *s, double w, double b, double mean, double var,
                                    double eps)
{
    const double ac = w * (1.0 / sqrt(var + eps));
    *a = (float)ac;
    *s = (float)(b - mean * ac);
}

/* Split (docs/model.md 2.2) of 4C squeezed channels: kept channel i (i < 2C) of h_{s+1} and
 * factored-out channel i of z_s are these squeezed channels (sub-pixels (0,0), (1,1) and (0,1),
 * (1,0) of channel c). */
static inline int rnvpi_split_keep(int i, int C) { return i < C ? i * 4 : (i - C) * 4 + 3; }
static inline int rnvpi_split_drop(int i, int C) { return i < C ? i * 4 + 1 : (i - C) * 4 + 2; }

/* What follows coupling k of m (docs/model.md 2.7): the next coupling on the same tensor, a
 * squeeze, a split (half the channels go to the prior), or the end (all of them do). */
enum { RNVPI_NEXT_SAME, RNVPI_NEXT_SQUEEZE, RNVPI_NEXT_SPLIT, RNVPI_NEXT_END };
static inline int rnvpi_flow_next(const rnvp_model *m, int k)
{
    if (k + 1 >= m->L) return RNVPI_NEXT_END;
    const coupling *a = &m->cp[k], *b = &m->cp[k + 1];
    if (a->level != b->level) return RNVPI_NEXT_SPLIT;
    return a->kind != b->kind ? RNVPI_NEXT_SQUEEZE : RNVPI_NEXT_SAME;
}

/* Squeeze one tensor: out (4C, H/2, W/2) from in (C, H, W), docs/model.md 2.1, per image plane-set.
 * Layout (C, N, H, W): each channel holds N images. */
void rnvpi_squeeze_forward(float *out, const float *in, int C, int N, int H, int W);
void rnvpi_squeeze_inverse(float *out, const float *in, int C, int N, int H, int W);

/* The transformed elements of a coupling (docs/model.md 2.3-2.4): parity < 0 (channel
 * coupling) every element, else the positions (i, j) with (i + j + parity) odd (mask b = 0).
 * Row i's start column and stride, and the count in one H x W plane. */
#define RNVPI_ROW_START(parity, i) ((parity) < 0 ? 0 : (((i) + (parity) + 1) & 1))
#define RNVPI_ROW_STEP(parity) ((parity) < 0 ? 1 : 2)
int rnvpi_transformed_count(int parity, int H, int W);
/* The mask parity of coupling c as the functions below take it (-1: channel coupling). */
static inline int rnvpi_mask_parity(const coupling *c) { return c->kind == COUPLING_CHECKER ? c->parity : -1; }

/* Net input of a checkerboard coupling (docs/model.md 2.3): netin (C+1, N, H, W) =
 * concat(x * b, b) with b = 1 where (i + j + parity) is even; x: (C, N, H, W). */
void rnvpi_checker_input(float *netin, const float *x, int C, int parity, int N, int H, int W);

/* The coupling's affine map on x: (Ct, N, H, W) with st: (2Ct, N, H, W) the s/t network's output
 * (s_raw then t): s = scale[c] tanh(s_raw), y = x exp(s) + t on the transformed elements, y = x
 * elsewhere; ld (N) += the sum of s over image n's transformed elements. y may be x. With mean
 * != NULL the flow batch norm follows in the same pass, y <- (y - mean[c]) inv_std[c] (inference:
 * the running statistics; its constant log-det is the caller's), bitwise as two passes would. */
void rnvpi_affine_forward(float *y, double *ld, const float *x, const float *st, const float *scale,
                          const float *mean, const float *inv_std, int parity, int Ct, int N, int H, int W);
/* Its inverse, x = (y - t) exp(-s) on the transformed elements, after y <- y / inv_std[c] + mean[c]
 * (in double) when mean != NULL; x may be y. */
void rnvpi_affine_inverse(float *x, const float *y, const float *st, const float *scale, const float *mean,
                          const float *inv_std, int parity, int Ct, int N, int H, int W);

/* Flow batch norm (docs/model.md 2.5) on the transformed elements of x (Ct, N, H, W), in place:
 * x <- (x - mean[c]) inv_std[c] (at inference fused into rnvpi_affine_forward / _inverse). Its
 * log-det per image, -0.5 cnt sum_c ln(var[c] + eps) with cnt transformed elements per channel,
 * is rnvpi_fbn_logdet (var: the batch's in training, the running one at inference). */
void rnvpi_fbn_normalize(float *x, const float *mean, const float *inv_std, int parity, int Ct, int N,
                         int H, int W);
static inline double rnvpi_fbn_logdet1(double var, double eps, int cnt)
{
    return -0.5 * log(var + eps) * cnt;
}

/* Weight normalisation (docs/model.md 2.6): w[o] = g[o] v[o] / ||v[o]||, times mul[o] when mul
 * != NULL (a following batch norm folded in at inference); inv_norm (cout, may be NULL) gets
 * 1 / ||v[o]|| (0 for a zero row, whose w is 0). w: (cout, cin*kh*kw). */
void rnvpi_wn_weights(float *w, float *inv_norm, const conv_p *p, const float *mul);

/* Workspace of the inference couplings (core/coupling.c): netin, h, t, out and col each sized by
 * rnvpi_coupling_ws_size; tp, panel and direct are set by the context (zero: one thread, OpenBLAS). */
typedef struct net_ws {
    float *netin;   /* (Cin, N, H, W) checkerboard net input */
    float *h, *t;   /* (F, N, H, W) resnet features */
    float *out;     /* (2Ct, N, H, W) s_raw then t */
    float *col;     /* im2col: (K, N*H*W) for OpenBLAS, or one panel (+16 floats to align) */
    struct tpool *tp;      /* threads of the direct kernel, NULL: the caller's only */
    float *panel;          /* (threads, panel_floats) 64-byte aligned, NULL: one panel in col */
    size_t panel_floats;   /* per thread, a multiple of 16, >= rnvpi_conv_panel_floats of every conv */
    int direct;            /* the kernel: RNVPI_CONV_BLAS (0), RNVPI_CONV_AVX512 (rnvpi_conv_direct_available()),
                              RNVPI_CONV_AVX2 (rnvpi_conv_avx2_available(); Winograd for the 3x3 layers
                              where rnvpi_winograd_wins), RNVPI_CONV_WINOGRAD (Winograd for every 3x3
                              layer with wino weights, AVX2 direct for the rest) or
                              RNVPI_CONV_AVX2_DIRECT (the AVX2 direct kernel for every layer) */
    int wino_kind;         /* the Winograd kernels: RNVPI_WINO_AVX2 (0), RNVPI_WINO_AVX512 (the same
                              results, 32 tiles per block), or RNVPI_WINO_OFF (REALNVP_WINOGRAD=off:
                              no Winograd in AVX-512 contexts; elsewhere as RNVPI_WINO_AVX512) */
    int bf16;              /* 1: precision bf16 (rnvp_ctx_set_precision): the AVX-512 direct kernel's
                              bf16 variant for the convolutions with w_bf16 */
    int wino4;             /* 1: the F(4x4) kernel for the convolutions with wino4 weights where
                              rnvpi_winograd4_wins (fp32 AVX-512 contexts; 0 with REALNVP_WINOGRAD=2x2,
                              avx2 or off); the panels hold rnvpi_winograd4_panel_floats */
    int w4block;           /* 1: residual blocks fused on F(4x4) where rnvpi_winograd4_block_wins (with
                              wino4; 0 with REALNVP_FUSE_BLOCKS=0); the panels hold
                              rnvpi_winograd4_block_panel_floats */
    size_t guard;          /* floats readable before and after each convolution input (netin, h,
                              t, the flow state x and tmp): >= rnvpi_conv_guard_floats lets the direct
                              kernel use plain loads */
} net_ws;

enum { RNVPI_CONV_BLAS = 0, RNVPI_CONV_AVX512 = 1, RNVPI_CONV_AVX2 = 2, RNVPI_CONV_WINOGRAD = 3,
       RNVPI_CONV_AVX2_DIRECT = 4 };
enum { RNVPI_WINO_AVX2 = 0, RNVPI_WINO_AVX512 = 1, RNVPI_WINO_OFF = 2 };

/* Columns per strip of the direct kernel. */
#define RNVP_CONV_STRIP 32

/* Convolution, (C, N, H, W) layout: out (cout, N, H, W) = w * pre(in) + b, where pre is
 * relu(a*x + s) per input channel when pre != NULL (relu only when pre->a == NULL), else
 * identity. ws->direct picks the kernel (see net_ws); the OpenBLAS one uses ws->col,
 * rnvpi_conv_col_floats() floats. rnvpi_conv_forward_acc with accumulate != 0 adds the result to out
 * instead (residuals). in and out must not overlap. */
void rnvpi_conv_forward_i(float *out, const float *in, const conv_i *cv, const affine_i *pre,
                    const net_ws *ws, int N, int H, int W);
void rnvpi_conv_forward_acc(float *out, const float *in, const conv_i *cv, const affine_i *pre,
                      const net_ws *ws, int N, int H, int W, int accumulate);
/* The portable kernel on images n0 .. n0+nb-1 of N (one chunk; the caller may run chunks on
 * several threads, each with its own col): out[:, chunk] = res[:, chunk] (0 when res == NULL;
 * res may be out) + b + w x im2col(pre(in)) with one cblas_sgemm; col: (cin*kh*kw, nb*H*W)
 * unless the convolution is 1x1 without pre. out, res, in: (C, N, H, W). */
void rnvpi_conv_blas(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                     float *col, const float *mask, int n0, int nb, int N, int H, int W);
/* col (cin*kh*kw, nb*H*W) = im2col of images n0 .. n0+nb-1 of in (cin, N, H, W), zero padding
 * (kh/2, kw/2), each value passed through pre as above (the training backward recomputes it).
 * mask: the convolution's tap masks (rnvpi_tap_masks) or NULL. Two loop orders of the same
 * gather: with masks, one select per value over each image's plane (faster on small planes: the
 * trainer keeps the masks); without, one pass over the whole chunk, then the padding zeroed. */
void rnvpi_im2col(float *col, const float *in, const affine_i *pre, const float *mask, int cin, int kh, int kw,
                  int n0, int nb, int N, int H, int W);
/* mask (kh*kw, H*W): 1 where tap (di, dj) of output position (i, j) reads inside the image,
 * (i + di - kh/2, j + dj - kw/2) in [0, H) x [0, W), else 0. */
void rnvpi_tap_masks(float *mask, int kh, int kw, int H, int W);
/* Floats of ws->col either kernel needs for one thread (SIZE_MAX: does not fit). The panel
 * and guard sizes are small by the config's limits (kernel <= 15, features <= 4096). */
size_t rnvpi_conv_col_floats(const conv_i *cv, int N, int H, int W);
/* Floats of one thread's panel: (K, RNVP_CONV_STRIP) for the direct kernel, for a 3x3 one at least
 * rnvpi_winograd_panel_floats(cin) (the Winograd kernel runs in the same panels). */
size_t rnvpi_conv_panel_floats(int cin, int kh, int kw);
/* Floats the direct kernel may read beyond either end of cv's input planes (width W). */
size_t rnvpi_conv_guard_floats(const conv_i *cv, int W);
/* 1 when this CPU can run the direct kernel (AVX-512F, built for x86-64 with GCC or clang). */
int rnvpi_conv_direct_available(void);
/* The kernel to use: the AVX-512 direct one where the CPU has it, else the AVX2 one (with
 * Winograd on the 3x3 layers where rnvpi_winograd_wins), else OpenBLAS; REALNVP_CONV=blas,
 * avx2 (the AVX2 direct kernel only: RNVPI_CONV_AVX2_DIRECT), winograd (on every 3x3 layer) or
 * avx512 (also: direct) overrides the choice (a kernel the CPU lacks falls back to the default). */
int rnvpi_conv_choose(void);
/* 1 when it can run the AVX2 direct kernel (AVX2 and FMA): strips of 16 columns, each one's
 * im2col panel built in L1 (masked loads: no guard zone) and multiplied in registers. */
int rnvpi_conv_avx2_available(void);
/* The AVX2 kernel on images n0 .. n0+nb-1 of N, one thread: out[:, chunk] = res[:, chunk] (0
 * when res == NULL; res may be out) + b + w * pre(in); panel: rnvpi_conv_panel_floats() + 16
 * floats (aligned inside). Call only when rnvpi_conv_avx2_available(). */
void rnvpi_conv_avx2_chunk(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                           float *panel, int n0, int nb, int N, int H, int W);

/* ---- Winograd F(2x2,3x3) for 3x3 stride-1 pad-1 convolutions (core/winograd.c), AVX2 + FMA ---- */
/* u (16, cout, cin) = G w G^T per (o, c) of w (cout, cin, 3, 3), computed in double. */
void rnvpi_winograd_weights(float *u, const float *w, int cout, int cin);
/* ut (16, cin, cout) = the Winograd weights of w' (cin, cout, 3, 3), w'[c][o][a][b] =
 * w[o][c][2-a][2-b] (the input gradient's convolution: d in = w' * d out), from u (16, cout, cin)
 * = rnvpi_winograd_weights of w; a permutation of u's values, no rounding. */
void rnvpi_winograd_weights_adjoint(float *ut, const float *u, int cout, int cin);
/* The weight gradient of that convolution (training), one thread: dut (16, cin, cout) += dU^T,
 * dU[xi][o][c] = sum over tiles q0 .. q1-1 (of N*ceil(H/2)*ceil(W/2), row-major per image) of
 * (A dY A^T)[xi] (B^T pre(d) B)[xi], dY the tile's 2x2 of dout (cout, N, H, W), d its 4x4 patch of
 * in (cin, N, H, W); in chunks of tc tiles (rounded down to a multiple of 32), each 16 products
 * (cin, tiles) x (tiles, cout): kind RNVPI_WINO_AVX512 with the AVX-512 transforms and the
 * AVX-512 kernel of winograd.c, else the AVX2 transforms and single-threaded cblas_sgemm (the
 * two sum the tiles in different orders: the last bits differ). buf:
 * rnvpi_winograd_wgrad_floats(cin, cout, tc) floats. Then
 * rnvpi_winograd_wgrad_fold: dw (cout, cin*9) += G^T dU G per (o, c), in double. */
size_t rnvpi_winograd_wgrad_floats(int cin, int cout, int tc);
void rnvpi_winograd_wgrad(float *dut, const float *dout, const float *in, const affine_i *pre, int cin, int cout,
                          float *buf, int tc, ptrdiff_t q0, ptrdiff_t q1, int N, int H, int W, int kind);
void rnvpi_winograd_wgrad_fold(float *dw, const float *dut, int cout, int cin);
/* Floats of one thread's Winograd panel (transform buffers of one block of tiles), 16 of them
 * slack to align inside; rnvpi_conv_panel_floats of a 3x3 convolution includes it. */
size_t rnvpi_winograd_panel_floats(int cin);
/* 1 when this CPU can run it (AVX2 and FMA). */
int rnvpi_winograd_available(void);
/* 1 when it can run the AVX-512 Winograd kernels (AVX-512 F, BW, DQ, VL); and the bf16 kernels
 * (also AVX512_BF16: rnvpi_bf16_pack32 and the direct kernel's bf16 variant). */
int rnvpi_winograd512_available(void);
int rnvpi_bf16_available(void);
/* The Winograd kernels a context uses in fp32: RNVPI_WINO_AVX512 where available, else
 * RNVPI_WINO_AVX2; REALNVP_WINOGRAD=avx2 forces the AVX2 ones (the results are the same), off
 * keeps AVX-512 contexts on the direct kernel alone (RNVPI_WINO_OFF). */
int rnvpi_winograd_kind(void);
/* dst (rows, (K+1)/2) = src (rows, K) rounded to bf16 (nearest even; NaN stays NaN), elements 2k
 * (low half) and 2k+1 (high half, 0 past K) of a row in one word: the weights of the bf16 kernels. */
void rnvpi_bf16_pairs(uint32_t *dst, const float *src, int rows, int K);
/* The same for a panel, vectorised (AVX512_BF16: call only when rnvpi_bf16_available()): dst
 * ((rows+1)/2, 32) from src (rows, 32), pairs of rows per column; both 64-byte aligned. */
void rnvpi_bf16_pack32(uint32_t *dst, const float *src, int rows);
/* The automatic choice (ws->direct == RNVPI_CONV_AVX2): 1 where Winograd beat the AVX2 direct
 * kernel in bench/bench_core --conv-shapes on this shape (docs/benchmarks.md). */
int rnvpi_winograd_wins(const conv_i *cv, int N, int H, int W);
/* The same against the AVX-512 direct kernel (ws->direct == RNVPI_CONV_AVX512, fp32). */
int rnvpi_winograd512_wins(const conv_i *cv, int N, int H, int W);
/* out (cout, N, H, W) = res (0 when NULL; may be out) + b + w * pre(in) for a 3x3 convolution with
 * cv->wino set, pre as rnvpi_conv_forward_i; on ws's threads with their panels, or (ws->panel
 * NULL) on the caller with its panel in ws->col, which must then hold
 * rnvpi_winograd_panel_floats(cin) floats (more than rnvpi_conv_col_floats for few channels: the
 * contexts always give panels). in and out must not overlap. */
void rnvpi_conv_winograd(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                         const net_ws *ws, int N, int H, int W);

/* ---- Winograd F(4x4,3x3), 16 images per register, AVX-512 fp32 inference (core/winograd4.c) ---- */
#define RNVPI_WINO4_MIN_CH 32   /* channels in and out a convolution needs for wino4 weights */
#define RNVPI_WINO_MR 8         /* output channels per register block of the AVX-512 Winograd GEMM */
/* u (36, cout, cin): u[6i+j][o][c] = (G g G^T)[i][j] with g = w[o][c] (3x3), G the F(4x4,3x3)
 * filter transform (points 0, 1, -1, 2, -2), in double, rounded once. */
void rnvpi_winograd4_weights(float *u, const float *w, int cout, int cin);
/* Floats of one thread's panel for a convolution of cin channels on planes W wide (16 to align). */
size_t rnvpi_winograd4_panel_floats(int cin, int W);
/* 1 where fp32 AVX-512 contexts use the F(4x4) kernel: the CPU has AVX-512 and REALNVP_WINOGRAD is not
 * 2x2 (F(2x2) alone), avx2 or off. */
int rnvpi_winograd4_on(void);
/* 1 where the F(4x4) kernel is used (ws->direct == RNVPI_CONV_AVX512, fp32, ws->wino4): cv->wino4
 * set and N large enough to fill the registers' 16 image lanes. */
int rnvpi_winograd4_wins(const conv_i *cv, int N, int H, int W);
/* As rnvpi_conv_winograd with cv->wino4 (AVX-512 CPUs only): out = res + b + w * pre(in), on ws's
 * threads and panels (or the caller with its panel in ws->col), which must hold
 * rnvpi_winograd4_panel_floats(cin, W). in and out must not overlap. */
void rnvpi_conv_winograd4(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                          const net_ws *ws, int N, int H, int W);
/* The same on images 16 g0 .. N-1 only (the rest of out left alone). */
void rnvpi_conv_winograd4_from(float *out, const float *in, const conv_i *cv, const affine_i *pre, const float *res,
                               const net_ws *ws, int N, int H, int W, int g0);
/* K residual blocks on F(4x4), each with its intermediate kept in the thread's panel (a ring of rows
 * in the pack's layout, never written to memory as (C, N, H, W)): for k < K, h += conv_b[k](relu(
 * conv_a[k](pre_a[k](h)))), bit for bit what the convolutions give one after the other. Each thread
 * runs whole groups of 16 images, all K blocks of a group before the next group, each block's tile
 * rows in order: conv a's row t, then conv b's row t - 1. Needs ws->panel with
 * rnvpi_winograd4_block_panel_floats(cin of a, cout of a, H, W) floats per thread for every block. */
size_t rnvpi_winograd4_block_panel_floats(int cin, int cmid, int H, int W);
/* 1 where a fused block applies: both convolutions rnvpi_winograd4_wins, a's output is b's input,
 * b's output a's input, and at least one group of 16 images per thread. rnvpi_winograd4_blocks
 * runs groups 0 .. groups-1 (images from 16 groups on are left alone). */
int rnvpi_winograd4_block_wins(const conv_i *ca, const conv_i *cb, int threads, int N, int H, int W);
void rnvpi_winograd4_blocks(float *h, int K, const conv_i *ca, const affine_i *pre_a, const conv_i *cb,
                            const net_ws *ws, int N, int H, int W, int groups);
/* h += conv_b[k](relu(conv_a[k](pre_a[k](h)))) for k = 0 .. K-1: fused where every block
 * rnvpi_winograd4_block_wins and ws allows it (fp32 AVX-512, ws->w4block, panels large enough),
 * else one convolution at a time through t (cmid, N, H, W). */
void rnvpi_conv_resblocks(float *h, float *t, int K, const conv_i *ca, const affine_i *pre_a, const conv_i *cb,
                          const net_ws *ws, int N, int H, int W);
/* The AVX-512 Winograd GEMMs (core/winograd.c): for each xi < nxi, M[xi] (RNVPI_WINO_MR, 16 nh) rows
 * 0..mr-1 = U[xi] (cout, cin) rows o0 .. o0+mr-1 times V[xi] (cin, 16 nh); M[xi][r] at
 * M + xi mxs + r ms, V[xi][c] at V + xi xs + c cs (64-byte aligned rows); 32 lanes per step, an
 * odd last 16 alone. */
void rnvpi_winograd512_gemm(float *M, ptrdiff_t mxs, ptrdiff_t ms, const float *U, int nxi, int cout, int cin,
                            const float *V, ptrdiff_t xs, ptrdiff_t cs, int nh, int o0, int mr);

/* Floats of each workspace buffer a coupling needs for N images (SIZE_MAX: does not fit). */
void rnvpi_coupling_ws_size(const coupling *c, int N, size_t *netin, size_t *feat, size_t *out,
                      size_t *col);
/* Inference coupling (plus its flow batch norm) on x (C, N, H, W) in place. forward adds each
 * image's log-det to ld (N); inverse undoes forward. */
void rnvpi_coupling_forward(float *x, double *ld, const coupling *c, int N, net_ws *ws);
void rnvpi_coupling_inverse(float *y, const coupling *c, int N, net_ws *ws);

#endif
