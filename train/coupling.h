/* coupling.h: training-mode forward and backward of one coupling (s/t network docs/model.md 2.6, map 2.3/2.4, flow BN 2.5).
 * Leaves out the flow's order of couplings, squeeze/split and the loss (flow_train.c). */
#ifndef RNVP_TRAIN_COUPLING_H
#define RNVP_TRAIN_COUPLING_H

#include "layers.h"

/* What the s/t network's forward keeps for its backward (P = N*H*W of the coupling). */
typedef struct net_saved {
    wn_saved in, out;       /* effective weights of in_conv and out_conv */
    wn_saved *a, *b;        /* (K) conv_a, conv_b */
    bn_saved *bn_a, *bn_b;  /* (K) */
    bn_saved bn_out;
    float *inp;             /* (Cin, N, H, W) the net input; for a channel coupling it points
                               into the coupling's input (the conditioning half) */
    float **h;              /* (K+1) of (F, N, H, W): h_0 = in_conv(inp), h_{j+1} after block j */
    float **u;              /* (K) of (F, N, H, W): conv_a's output in block j */
    float *st;              /* (2Ct, N, H, W) the net's output: s_raw then t */
} net_saved;

typedef struct coupling_saved {
    net_saved net;
    fbn_saved fbn;          /* used when the model has flow batch norm */
} coupling_saved;

/* Backward scratch shared by every coupling (sized for the largest). */
typedef struct coupling_scratch {
    float *dh, *du, *dr;    /* (F, N, H, W) each */
    float *dst;             /* (2Ct, N, H, W) */
    float *dinp;            /* (Cin, N, H, W) */
    float *dw;              /* (cout, cin*kh*kw) of the largest convolution */
    conv_scratch cs;        /* the convolutions' per-thread buffers and the thread pool */
} coupling_scratch;

/* A bump allocator over one block: with base == NULL it only counts (take returns NULL), so
 * the same code first sizes a workspace and then lays it out. Pieces are 64-byte aligned. */
typedef struct arena {
    char *base;
    size_t used;
} arena;
void *tr_arena_take(arena *a, size_t bytes);

/* Lays out sv's buffers and K-long arrays for coupling c and batch N in a; kernel
 * (conv_scratch.kernel) decides which convolutions get Winograd weights (wn_saved.wino). */
void tr_coupling_carve(coupling_saved *sv, arena *a, const coupling *c, int kernel, int N);

/* y (C, N, H, W) = the coupling (and its flow batch norm when c->fbn_mean) applied to
 * x (C, N, H, W); ld (N) += the log-dets. cs: the convolutions' scratch and thread pool.
 * update_stats: update the running statistics of the net's and the flow batch norm. */
void tr_coupling_train_forward(coupling_saved *sv, float *y, double *ld, const float *x,
                            const coupling *c, const rnvp_config *cfg, const conv_scratch *cs,
                            int update_stats, int N);
/* Accumulates dx (C, N, H, W) += and the parameter gradients into grad (the same offsets as
 * base = m->params). dy (C, N, H, W): the gradient of y on entry, CLOBBERED (the flow batch
 * norm's backward runs in place). dld (N): the gradient of ld[n]. x, y: the forward's input
 * and output. */
void tr_coupling_train_backward(float *dx, float *grad, float *dy, const double *dld,
                             const coupling_saved *sv, const float *x, const float *y,
                             const coupling *c, const float *base, coupling_scratch *ws, int N);

#endif
