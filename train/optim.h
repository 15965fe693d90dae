/* optim.h: the trainer's optimiser step, shared by bin/realnvp-train and bench/bench_train.c: L2
 * on weight_g and scale, global-norm clipping, Adam with bias correction, linear warm-up.
 * Leaves out the loss and its gradient (train.h) and the learning-rate choice beyond warm-up. */
#ifndef RNVP_OPTIM_H
#define RNVP_OPTIM_H

#include "internal.h"

typedef struct tr_adam {
    double lr, beta1, beta2, eps;
    double l2;     /* penalty l2 * sum p^2 on every weight_g and scale tensor */
    double clip;   /* global gradient-norm threshold over the trainable tensors (0: off) */
    long warmup;   /* linear learning-rate warm-up over this many steps (0: off) */
} tr_adam;

/* One optimiser step t (1-based) on m->params.
 *   grad: (m->nparams) the loss's gradient; the L2 term is added to it in place.
 *   am, av: (m->nparams) Adam's first and second moments, updated in place.
 * Non-finite gradient entries count as 0 in the update. Returns the global gradient norm
 * before clipping (L2 term included): not finite when the gradient was not. */
double tr_adam_step(rnvp_model *m, float *grad, float *am, float *av, long t, const tr_adam *o);

/* 1 if the tensor named so gets the L2 penalty (weight_g and scale tensors). */
int tr_decayed(const char *name);

#endif
