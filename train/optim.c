/* optim.c: the trainer's optimiser step (L2, clipping, Adam) and its learning-rate schedule
 * (warm-up, decay); see optim.h. Leaves out the loss and the data (main.c). */
#include "optim.h"
#include "train.h"

#include <math.h>
#include <string.h>

int tr_decayed(const char *name)
{
    size_t l = strlen(name);
    return (l >= 9 && !strcmp(name + l - 9, ".weight_g")) || (l >= 6 && !strcmp(name + l - 6, ".scale"));
}

double tr_lr(const tr_adam *o, long t)
{
    const double w = o->warmup > 0 && t < o->warmup ? (double)t / (double)o->warmup : 1.0;
    const long s = o->decay_start > o->warmup ? o->decay_start : o->warmup;
    if (o->schedule == TR_LR_CONSTANT || t <= s || o->total <= s) return o->lr * w;
    double p = (double)(t - s) / (double)(o->total - s);
    if (p > 1) p = 1;
    const double base = o->schedule == TR_LR_COSINE ? o->lr_min + (o->lr - o->lr_min) * 0.5 * (1 + cos(M_PI * p))
                                                     : o->lr - (o->lr - o->lr_min) * p;
    return base * w;
}

int tr_lr_schedule_id(const char *name)
{
    static const char *names[] = {"constant", "cosine", "linear"};   /* in enum tr_lr_schedule's order */
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) return i;
    return -1;
}

double tr_adam_step(rnvp_model *m, float *grad, float *am, float *av, long t, const tr_adam *o)
{
    /* L2 penalty: loss += l2 * sum p^2 over weight_g and scale tensors -> grad += 2 l2 p */
    for (int i = 0; i < m->ntensors; i++) {
        if (!tr_decayed(m->tensors[i].name)) continue;
        const size_t off = (size_t)(m->tensors[i].data - m->params);
        for (size_t j = 0; j < m->tensors[i].size; j++) grad[off + j] += (float)(2 * o->l2 * m->params[off + j]);
    }
    /* global-norm clipping over the trainable tensors */
    double nrm2 = 0;
    for (int i = 0; i < m->ntensors; i++) {
        if (!tr_tensor_trainable(m, i)) continue;
        const size_t off = (size_t)(m->tensors[i].data - m->params);
        for (size_t j = 0; j < m->tensors[i].size; j++) nrm2 += (double)grad[off + j] * grad[off + j];
    }
    const double gn = sqrt(nrm2);
    const double cs = o->clip > 0 && gn > o->clip ? o->clip / gn : 1.0;
    /* Adam with bias correction, the learning rate of the schedule */
    const double lr = tr_lr(o, t);
    const double b1 = o->beta1, b2 = o->beta2;
    const double c1 = 1 - pow(b1, (double)t), c2 = 1 - pow(b2, (double)t);
    const double a = lr * sqrt(c2) / c1;
    const float eps_hat = (float)(o->eps * sqrt(c2));
    for (int i = 0; i < m->ntensors; i++) {
        if (!tr_tensor_trainable(m, i)) continue;
        const size_t off = (size_t)(m->tensors[i].data - m->params);
        float *p = m->params + off, *g = grad + off, *mm = am + off, *vv = av + off;
        for (size_t j = 0; j < m->tensors[i].size; j++) {
            const float gj = isfinite(g[j]) ? (float)(g[j] * cs) : 0.f;
            mm[j] = (float)(b1 * mm[j] + (1 - b1) * gj);
            vv[j] = (float)(b2 * vv[j] + (1 - b2) * (double)gj * gj);
            p[j] -= (float)(a * mm[j] / (sqrtf(vv[j]) + eps_hat));
        }
    }
    return gn;
}
