/* train.h: training-mode forward and backward of the whole Real NVP flow (batch statistics,
 * hand-written backward passes). Leaves out the optimiser (optim.c), data sets (data.c), options and checkpoints (options.c, run.c). */
#ifndef RNVP_TRAIN_H
#define RNVP_TRAIN_H

#include "internal.h"

/* Workspace for training-mode passes on up to max_batch images: saved activations, im2col
 * buffers and gradient scratch, allocated once here (no allocation in the passes).
 * The model must outlive it. On failure *out is NULL and err says why. */
typedef struct tr_ws tr_ws;
enum rnvp_status tr_ws_create(tr_ws **out, const rnvp_model *m, int max_batch, rnvp_error *err);
void tr_ws_free(tr_ws *w);
size_t tr_ws_bytes(const tr_ws *w);

/* Training-mode forward pass and, when grad != NULL, backward pass.
 *   xt:   (N, C, H, W) dequantized inputs (v + u) / 256, each in (0, 1).
 *   grad: (m->nparams) or NULL. The gradient of the returned loss with respect to m->params
 *         is ACCUMULATED into it (+=); entries of running statistics are left untouched.
 *   update_stats: 1: the running averages of every batch norm and flow batch norm in
 *         m->params are updated with momentum 0.1 (r <- 0.9 r + 0.1 batch); 2: set to this
 *         batch's statistics (r <- batch); 0: left alone.
 * Returns the loss: the batch mean of -log_prob in bits/dim (docs/model.md section 3, including the
 * logit pre-processing and the D ln 256 term), computed with batch statistics. n <= max_batch. */
double tr_forward_backward(tr_ws *w, rnvp_model *m, float *grad, const float *xt, int n,
                           int update_stats);

/* Data-parallel runs: comm (layers.h; NULL: one process, the default) makes every pass of w
 * use the statistics, the loss and its gradient scale of the global batch, the images of every
 * process. comm must outlive w's passes. The gradient tr_forward_backward accumulates is then
 * this process's share: the caller sums it over the processes. */
struct tr_comm;
void tr_ws_set_comm(tr_ws *w, const struct tr_comm *comm);
/* log p(v) of each of the n images of w's last pass (n <= the pass's batch), in nats, as
 * rnvp_log_prob defines it; the pass's statistics were its batch's. */
void tr_ws_log_prob(const tr_ws *w, double *log_prob, int n);

/* Initialise m->params for training from seed: weight_v random (He-style), weight_g = ||v||,
 * biases 0, batch norm weight 1 / bias 0 / running mean 0 / running var 1, out_conv weight_g
 * and every `scale` near zero so each coupling starts near the identity. */
void tr_init_params(rnvp_model *m, uint64_t seed);

/* 1 if tensor i of m is trained by the optimiser (not a running statistic). */
int tr_tensor_trainable(const rnvp_model *m, int i);

#endif
