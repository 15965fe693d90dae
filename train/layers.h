/* layers.h: the trainer's layer passes in the (C, N, H, W) layout, each forward paired with its hand-written backward.
 * Leaves out the s/t network, the workspace and the loss (coupling.h, train.h).
 *
 * Conventions
 * - Layout (C, N, H, W): channel c of a batch is one contiguous run of P = N*H*W floats, so a
 *   convolution over the whole batch is one matrix product (cout, K) x (K, P).
 * - Arguments: outputs first, then inputs, then sizes. Values a backward pass needs are written
 *   by the forward pass into explicit fields of a *_saved struct owned by the caller.
 * - Every backward pass ACCUMULATES (+=) into its gradient outputs unless it says otherwise.
 * - Reductions (batch statistics, sums for log-dets and parameter gradients) use double. */
#ifndef RNVP_TRAIN_LAYERS_H
#define RNVP_TRAIN_LAYERS_H

#include "internal.h"
#include "tpool.h"

/* ---- data parallelism ----
 * With several processes (train/dist.c: MPI), each runs the passes on its share of the global
 * batch; the batch norms' and flow batch norms' statistics and their backward sums are added
 * over the processes through `sum`, so that every process normalises with the global batch's
 * statistics. NULL (or sum == NULL): one process. The sums are made by the calling thread. */
typedef struct tr_comm {
    void (*sum)(double *v, int n, void *user);   /* v[0..n-1] <- the sum over the processes */
    void *user;
} tr_comm;

/* ---- weight normalisation: w[o] = g[o] * v[o] / ||v[o]|| (rnvpi_wn_weights) ---- */

typedef struct wn_saved {
    float *w;          /* (cout, cin*kh*kw) the effective weight */
    float *inv_norm;   /* (cout) 1 / ||v[o]|| */
    float *wino;       /* (16, cout, cin) G w G^T (rnvpi_winograd_weights) of a 3x3 convolution that
                          runs on the Winograd kernel (tr_conv_winograd), else NULL */
} wn_saved;

/* w (and wino, when not NULL: transformed once per step, after the fold) from v and g. */
void tr_wn_forward(wn_saved *sv, const conv_p *p);
/* dv (cout, cin*kh*kw) +=, dg (cout) += from dw (cout, cin*kh*kw), the gradient of w. */
void tr_wn_backward(float *dv, float *dg, const float *dw, const conv_p *p, const wn_saved *sv);

/* ---- convolution, stride 1, zero padding (kh/2, kw/2), bias ----
 * out = w * pre(in) + b, where pre(x) = relu(a[c]*x + s[c]) per input channel when pre != NULL
 * (a batch norm + ReLU fused into the im2col), else pre(x) = x. The forward is one of the core's
 * kernels run on chunks (conv_scratch.kernel: rnvpi_conv_avx2_chunk or rnvpi_conv_blas), or the
 * Winograd kernel (rnvpi_conv_winograd, its own split of the batch's tiles over the threads) for
 * the 3x3 convolutions where tr_conv_winograd says so; the backward recomputes the core's
 * rnvpi_im2col and gets the weight gradient from sgemm and the input gradient from sgemm +
 * col2im, or, for those 3x3 convolutions, the input gradient from the Winograd kernel on the
 * adjoint weights and the weight gradient in Winograd form (rnvpi_winograd_wgrad). The batch
 * is cut into chunks of images (tr_conv_chunk) small enough for the im2col buffer to stay in a
 * core's cache; the pool's threads take the chunks in turn, each with its own buffers and a
 * single-threaded cblas_sgemm: out[:, chunk] (cout, Q) = w (cout, K) x col (K, Q),
 * K = cin*kh*kw. */

/* Per-thread scratch of the convolutions. Thread t uses col and dcol + t * col_floats, and
 * (t > 0) dwp + (t - 1) * dw_floats for its share of the weight gradient. */
typedef struct conv_scratch {
    tpool *tp;          /* NULL: everything runs in the caller */
    float *col, *dcol;  /* (threads, col_floats) each */
    float *dwp;         /* (threads - 1, dw_floats) */
    float *mask;        /* (kh*kw, H*W) of the largest convolution: which taps read padding */
    size_t col_floats;  /* >= tr_conv_ws_floats(..., threads) of every convolution run */
    size_t dw_floats;   /* >= cout*cin*kh*kw of every convolution run */
    const tr_comm *comm;  /* the processes of a data-parallel run, NULL: one */
    int kernel;           /* the forward's kernel: RNVPI_CONV_BLAS (0: im2col + sgemm), or the AVX2
                             direct one (each thread's col is its panel) with the Winograd kernel
                             on the 3x3 convolutions where rnvpi_winograd_wins
                             (RNVPI_CONV_AVX2, the default), on none (RNVPI_CONV_AVX2_DIRECT,
                             REALNVP_CONV=avx2) or on all (RNVPI_CONV_WINOGRAD,
                             REALNVP_CONV=winograd). The backward passes are im2col + sgemm
                             (+ col2im) except where the forward ran on Winograd, whose
                             backward is Winograd too (the input gradient as a transposed
                             convolution on the AVX2 direct kernel took 1.2x the CPU time of
                             sgemm + col2im; on Winograd it takes less) */
    int wino_kind;        /* the Winograd kernels (rnvpi_winograd_kind(), read once at creation) */
    float *winot;         /* (16, cin, cout) of the largest Winograd convolution: the adjoint
                             weights (rnvpi_winograd_weights_adjoint), rebuilt by each backward */
    float *zeros;         /* (cin) of the widest Winograd convolution, all 0: the input
                             gradient's convolution has no bias */
    float *dut;           /* (threads, dut_floats): each thread's Winograd weight gradient dU^T */
    size_t dut_floats;    /* >= 16 cin cout of every Winograd convolution run */
} conv_scratch;

/* 1 when the convolution (cout, cin, kh, kw) on N images of H x W runs on the Winograd kernel
 * under `kernel` (conv_scratch.kernel): a 3x3 one, and rnvpi_winograd_wins (RNVPI_CONV_AVX2) or
 * always (RNVPI_CONV_WINOGRAD). Decided once per workspace (for its largest batch). */
int tr_conv_winograd(int kernel, int cout, int cin, int kh, int kw, int N, int H, int W);
/* Floats of one thread's col when it must also hold a Winograd panel for the convolution and
 * for its input gradient (cin and cout input channels) and the weight gradient's chunk
 * (rnvpi_winograd_wgrad_floats): >= tr_conv_ws_floats. */
size_t tr_conv_ws_floats_wino(int cout, int cin, int kh, int kw, int N, int H, int W, int nt);

/* Images per chunk for a (cin*kh*kw)-row im2col of H*W columns per image, nt threads. */
int tr_conv_chunk(int cin, int kh, int kw, int N, int H, int W, int nt);
/* Floats of one thread's col (and dcol) buffer. */
size_t tr_conv_ws_floats(int cin, int kh, int kw, int N, int H, int W, int nt);

/* out: (cout, N, H, W) (overwritten) = conv + b (+ res); in: (cin, N, H, W); w: (cout,
 * cin*kh*kw); wino: (16, cout, cin) w's Winograd weights (wn_saved.wino; each thread's col must
 * then hold tr_conv_ws_floats_wino) or NULL: the chunked kernels; b: (cout); res: (cout, N, H, W)
 * a residual added to the output, or NULL. Nothing needs saving but in and pre. */
void tr_conv_forward(float *out, const float *in, const affine_i *pre, const float *w, const float *wino,
                  const float *b, const float *res, const conv_scratch *cs, int cout, int cin, int kh, int kw,
                  int N, int H, int W);
/* Accumulates dw (cout, cin*kh*kw) += and db (cout) +=. din (cin, N, H, W) gets d pre(in) (the
 * gradient with respect to the convolution's actual input pre(in), NOT in: the caller chains the
 * ReLU / batch norm): din += when acc, din = (overwritten) when acc == 0, skipped when
 * din == NULL. dout: (cout, N, H, W). The im2col is recomputed. wino: as tr_conv_forward; when
 * not NULL, din comes from the Winograd kernel on the adjoint weights (cs->winot, cs->zeros) and
 * dw from rnvpi_winograd_wgrad (cs->dut), with no im2col. */
void tr_conv_backward(float *din, float *dw, float *db, const float *dout, const float *in,
                   const affine_i *pre, const float *w, const float *wino, const conv_scratch *cs, int acc, int cout,
                   int cin, int kh, int kw, int N, int H, int W);

/* ---- batch norm (training mode) followed by ReLU ----
 * bn(x)_c = weight[c] * (x_c - mean_c) / sqrt(var_c + eps) + bias[c], mean and biased var over
 * the P = N*H*W values of channel c in the batch; r = relu(bn(x)). The forward only computes
 * the statistics and the per-channel affine map (aff.a, aff.s) = (weight*inv_std,
 * bias - mean*weight*inv_std); the next convolution applies relu(a*x + s) inside its im2col. */

typedef struct bn_saved {
    float *mean, *inv_std;   /* (C) batch mean, 1/sqrt(biased var + eps) */
    float *var;              /* (C) biased batch variance (for the running average) */
    affine_i aff;            /* .a, .s (C): the map the next im2col applies */
    double *red;             /* (2C + 1) scratch: the sums added over the processes */
} bn_saved;

/* x: (C, N, H, W). update_stats 1: rm/rv (C) <- 0.9 r + 0.1 batch (biased variance); 2: r <-
 * batch; 0: unchanged. The pool's threads (tp may be NULL) share the channels; comm (may be
 * NULL) makes the statistics those of every process's images. */
void tr_bn_forward(bn_saved *sv, const float *x, const bn_p *p, double eps, int update_stats, int C,
                size_t P, tpool *tp, const tr_comm *comm);
/* Accumulates dweight (C) += and dbias (C) +=; dx (C, N, H, W) += when acc, dx = (overwritten)
 * when acc == 0; from dr (C, N, H, W), the gradient of r = relu(bn(x)); x: (C, N, H, W) the
 * forward's input. */
void tr_bn_backward(float *dx, float *dweight, float *dbias, const float *dr, const float *x,
                 const bn_saved *sv, int acc, int C, size_t P, tpool *tp, const tr_comm *comm);

/* ---- logit pre-processing (docs/model.md 1.2, 1.3; rnvpi_logit1) ----
 * p = alpha + (1 - 2 alpha) xt, y = ln p - ln(1 - p); ld[n] += sum_i ln(1-2alpha) - ln p - ln(1-p).
 * y: (C, N, H, W); ld: (N) +=; xt: (N, C, H, W) (the layout changes here). */
void tr_logit_forward(float *y, double *ld, const float *xt, double alpha, int N, int C, int H, int W);
/* Accumulates dxt (N, C, H, W) += from dy (C, N, H, W) and dld (N), the gradient of ld[n]. */
void tr_logit_backward(float *dxt, const float *dy, const double *dld, const float *xt, double alpha,
                    int N, int C, int H, int W);

/* ---- squeeze (docs/model.md 2.1, rnvpi_squeeze_forward) and split (2.2, rnvpi_split_keep) ---- */

/* Accumulates din (C, N, H, W) += from dout (4C, N, H/2, W/2). */
void tr_sq_backward(float *din, const float *dout, int C, int N, int H, int W);
/* next (2C, N, H, W) = the kept channels of x (4C, N, H, W): c*4+0 then c*4+3 (c < C). The
 * factored-out channels c*4+1, c*4+2 stay in x and go to the prior. */
void tr_split_forward(float *next, const float *x, int C, size_t P);
/* Accumulates dx (4C, N, H, W) += dnext (2C, N, H, W) on the kept channels. */
void tr_split_backward(float *dx, const float *dnext, int C, size_t P);

/* ---- standard normal prior: lp[n] += sum_i -z_i^2/2 - ln(2 pi)/2 ----
 * z: `nch` channels of (C, N, H, W) data given by their indices ch (NULL: channels 0..nch-1)
 * of a tensor whose channels are P floats apart. */
void tr_prior_forward(double *lp, const float *z, const int *ch, int nch, int N, int HW);
/* Accumulates dz +=  -z * dlp[n] on the same channels. */
void tr_prior_backward(float *dz, const double *dlp, const float *z, const int *ch, int nch, int N,
                    int HW);

/* ---- the coupling's affine map (docs/model.md 2.3, 2.4): forward rnvpi_affine_forward ----
 * On x: (Ct, N, H, W), st: (2Ct, N, H, W), parity < 0 for a channel coupling. */
/* Accumulates dx (Ct, N, H, W) += and dscale (Ct) +=; OVERWRITES dst (2Ct, N, H, W) with the
 * gradient of st (0 where not transformed). dy: (Ct, N, H, W); dld: (N) gradient of ld[n]. */
void tr_affine_backward(float *dx, float *dst, float *dscale, const float *dy, const double *dld,
                     const float *x, const float *st, const float *scale, int parity, int Ct, int N,
                     int H, int W);

/* ---- flow batch norm (docs/model.md 2.5), training mode, in place ----
 * On x: (Ct, N, H, W) as rnvpi_affine_forward, only the transformed elements:
 *   x <- (x - mean_c) / sqrt(var_c + eps), mean and biased var over the transformed elements
 *   of channel c across N, H, W; ld[n] += -0.5 * sum over transformed elements of image n of
 *   ln(var_c + eps) (the same for every image). */
typedef struct fbn_saved {
    float *mean, *var, *inv_std;   /* (Ct) each */
    double *red;                   /* (2Ct + 3) scratch: the sums added over the processes */
} fbn_saved;

/* update_stats as tr_bn_forward (rmean, rvar may be NULL: no running statistics); the
 * normalisation itself is rnvpi_fbn_normalize. comm as tr_bn_forward. */
void tr_fbn_forward(fbn_saved *sv, float *x, double *ld, float *rmean, float *rvar, double eps,
                 int update_stats, int parity, int Ct, int N, int H, int W, const tr_comm *comm);
/* In place: d (Ct, N, H, W) holds the gradient of the output on entry and of the input on
 * return (untransformed elements pass through). y: (Ct, N, H, W) the forward's output (the
 * normalised values); dld (N) the gradient of ld[n]. */
void tr_fbn_backward(float *d, const float *y, const double *dld, const fbn_saved *sv, int parity,
                  int Ct, int N, int H, int W, const tr_comm *comm);

#endif
