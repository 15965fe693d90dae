/* optim.h: the trainer's optimiser step, shared by bin/realnvp-train and bench/bench_train.c: L2
 * on weight_g and scale, global-norm clipping, Adam with bias correction, the learning-rate
 * schedule (linear warm-up, then constant, cosine or linear decay). Leaves out the loss and its
 * gradient (train.h). */
#ifndef RNVP_OPTIM_H
#define RNVP_OPTIM_H

#include "internal.h"

/* the learning rate after warm-up (--lr-schedule) */
enum tr_lr_schedule { TR_LR_CONSTANT, TR_LR_COSINE, TR_LR_LINEAR };

typedef struct tr_adam {
    double lr, beta1, beta2, eps;
    double l2;     /* penalty l2 * sum p^2 on every weight_g and scale tensor */
    double clip;   /* global gradient-norm threshold over the trainable tensors (0: off) */
    long warmup;   /* linear learning-rate warm-up over this many steps (0: off) */
    /* decay (tr_lr): from lr after step max(decay_start, warmup) to lr_min at step total
     * (the run's last step); zeroed fields: constant */
    int schedule;  /* enum tr_lr_schedule */
    long decay_start, total;
    double lr_min;
} tr_adam;

/* The learning rate of step t (1-based: the step being taken, tr_adam_step's t; the step the
 * trainer logs after it), a pure function of t and o. With s = max(decay_start, warmup) and
 * T = total:
 *   t < warmup:                     lr * t / warmup
 *   constant, or t <= s, or T <= s: lr
 *   s < t:  p = min(1, (t - s) / (T - s));  cosine: lr_min + (lr - lr_min) (1 + cos(pi p)) / 2,
 *                                           linear: lr - (lr - lr_min) p
 * so the decay's first step is s + 1 and step T takes lr_min. */
double tr_lr(const tr_adam *o, long t);

/* enum tr_lr_schedule of a --lr-schedule name (constant, cosine, linear), or -1 */
int tr_lr_schedule_id(const char *name);

/* One optimiser step t (1-based) on m->params with the learning rate tr_lr(o, t).
 *   grad: (m->nparams) the loss's gradient; the L2 term is added to it in place.
 *   am, av: (m->nparams) Adam's first and second moments, updated in place.
 * Non-finite gradient entries count as 0 in the update. Returns the global gradient norm
 * before clipping (L2 term included): not finite when the gradient was not. */
double tr_adam_step(rnvp_model *m, float *grad, float *am, float *av, long t, const tr_adam *o);

/* 1 if the tensor named so gets the L2 penalty (weight_g and scale tensors). */
int tr_decayed(const char *name);

#endif
