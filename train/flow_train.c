/* flow_train.c: the trainer's workspace, the whole flow's training forward/backward and loss (train.h), initialisation.
 * Leaves out the optimiser (optim.c), data sets (data.c) and checkpoints (run.c).
 *
 * Running statistics: update_stats averages the BIASED batch variance (the one the forward
 * normalises with, docs/model.md 2.5 / 2.6 "biased variance") into running_var, for the net's batch
 * norms and the flow batch norms alike; PyTorch's BatchNorm would average the unbiased one.
 *
 * Threads: tr_ws_create makes a pool of openblas_get_num_threads() threads. During
 * tr_forward_backward OpenBLAS is set to 1 thread (process-wide; restored on return) and the
 * pool's threads run single-threaded gemms on their own chunks of the batch, the batch norms'
 * channels, the im2col / col2im passes and the Winograd passes (core/winograd.c): one workspace must not be used by two threads, and
 * no other thread should call OpenBLAS meanwhile. */
#include "train.h"

#include "coupling.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct tr_ws {
    const rnvp_model *m;
    int max_batch;
    char *block;
    size_t bytes;
    coupling_saved *cs;    /* (L) */
    float **x, **y;        /* (L) each coupling's input and output (C, N, H, W); x[k+1] is y[k]
                              inside a stage, a separate buffer after a squeeze or a split */
    int **drop;            /* (L) for the last coupling of a stage: the 2C dropped channels */
    double *ld, *lp, *dld; /* (N) log-dets, log prior, the loss's gradient per image's log p */
    float *da, *db;        /* (D * N) ping-pong gradients of the flow's activations */
    coupling_scratch scr;  /* backward scratch; scr.cs the convolutions' buffers and threads */
    tpool *tp;             /* NULL when single-threaded */
    int threads;
    const tr_comm *comm;   /* the processes of a data-parallel run, NULL: one */
};

void tr_ws_set_comm(tr_ws *w, const tr_comm *comm)
{
    w->comm = comm;
    w->scr.cs.comm = comm;
}

void tr_ws_log_prob(const tr_ws *w, double *log_prob, int n)
{
    for (int i = 0; i < n; i++) log_prob[i] = rnvpi_log_likelihood(w->lp[i], w->ld[i], w->m->D);
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/* Lays the workspace out in a (counting when a->base == NULL). */
static void ws_carve(tr_ws *w, arena *a, const rnvp_model *m, int N)
{
    const int L = m->L;
    const int counting = a->base == NULL;
    w->cs = tr_arena_take(a, sizeof(coupling_saved) * (size_t)L);
    w->x = tr_arena_take(a, sizeof(float *) * (size_t)L);
    w->y = tr_arena_take(a, sizeof(float *) * (size_t)L);
    w->drop = tr_arena_take(a, sizeof(int *) * (size_t)L);
    w->ld = tr_arena_take(a, sizeof(double) * (size_t)N);
    w->lp = tr_arena_take(a, sizeof(double) * (size_t)N);
    w->dld = tr_arena_take(a, sizeof(double) * (size_t)N);
    size_t fp = 0, ctp = 0, cinp = 0, dw = 0, col = 0, mask = 0, winot = 0, zeros = 0;
    coupling_saved dummy;
    for (int k = 0; k < L; k++) {
        const coupling *c = &m->cp[k];
        const size_t P = (size_t)N * c->H * c->W;
        float *x = k == 0 || rnvpi_flow_next(m, k - 1) != RNVPI_NEXT_SAME ? tr_arena_take(a, sizeof(float) * c->C * P)
                                                             : counting ? NULL : w->y[k - 1];
        float *y = tr_arena_take(a, sizeof(float) * c->C * P);   /* (C, N, H, W) */
        int *drop = NULL;
        if (rnvpi_flow_next(m, k) == RNVPI_NEXT_SPLIT) drop = tr_arena_take(a, sizeof(int) * c->C / 2);
        if (!counting) {
            w->x[k] = x;
            w->y[k] = y;
            w->drop[k] = drop;
            if (drop)
                for (int i = 0; i < c->C / 2; i++) drop[i] = rnvpi_split_drop(i, c->C / 4);
        }
        tr_coupling_carve(counting ? &dummy : &w->cs[k], a, c, w->scr.cs.kernel, N);
        fp = max_sz(fp, (size_t)c->F * P);
        ctp = max_sz(ctp, 2 * (size_t)c->Ct * P);
        cinp = max_sz(cinp, (size_t)c->Cin * P);
        const conv_p *cv[2] = {&c->in_conv, &c->out_conv};
        for (int i = 0; i < 2 + 2 * c->K; i++) {
            const conv_p *p = i < 2 ? cv[i] : (i & 1) ? &c->conv_b[(i - 2) / 2] : &c->conv_a[(i - 2) / 2];
            dw = max_sz(dw, (size_t)p->cout * p->cin * p->kh * p->kw);
            mask = max_sz(mask, (size_t)p->kh * p->kw * c->H * c->W);
            col = max_sz(col, tr_conv_ws_floats(p->cin, p->kh, p->kw, N, c->H, c->W, w->threads));
            if (tr_conv_winograd(w->scr.cs.kernel, p->cout, p->cin, p->kh, p->kw, N, c->H, c->W)) {
                col = max_sz(col, tr_conv_ws_floats_wino(p->cout, p->cin, p->kh, p->kw, N, c->H, c->W,
                                                         w->threads));
                winot = max_sz(winot, (size_t)16 * p->cout * p->cin);
                zeros = max_sz(zeros, (size_t)p->cin);
            }
        }
    }
    w->da = tr_arena_take(a, sizeof(float) * (size_t)m->D * N);
    w->db = tr_arena_take(a, sizeof(float) * (size_t)m->D * N);
    col = (col + 15) & ~(size_t)15;   /* keep each thread's buffer 64-byte aligned */
    dw = (dw + 15) & ~(size_t)15;
    w->scr.cs.col = tr_arena_take(a, sizeof(float) * col * w->threads);
    w->scr.cs.dcol = tr_arena_take(a, sizeof(float) * col * w->threads);
    w->scr.cs.dwp = tr_arena_take(a, sizeof(float) * dw * (w->threads - 1));
    w->scr.cs.mask = tr_arena_take(a, sizeof(float) * mask);
    w->scr.cs.winot = tr_arena_take(a, sizeof(float) * winot);   /* (16, cin, cout) */
    w->scr.cs.zeros = tr_arena_take(a, sizeof(float) * zeros);   /* (cin) */
    winot = (winot + 15) & ~(size_t)15;
    w->scr.cs.dut = tr_arena_take(a, sizeof(float) * winot * w->threads);   /* (threads, 16 cin cout) */
    w->scr.cs.dut_floats = winot;
    if (!counting && zeros) memset(w->scr.cs.zeros, 0, sizeof(float) * zeros);
    w->scr.cs.col_floats = col;
    w->scr.cs.dw_floats = dw;
    w->scr.dw = tr_arena_take(a, sizeof(float) * dw);
    w->scr.dh = tr_arena_take(a, sizeof(float) * fp);
    w->scr.du = tr_arena_take(a, sizeof(float) * fp);
    w->scr.dr = tr_arena_take(a, sizeof(float) * fp);
    w->scr.dst = tr_arena_take(a, sizeof(float) * ctp);
    w->scr.dinp = tr_arena_take(a, sizeof(float) * cinp);
}

/* The convolutions' kernel (conv_scratch.kernel): the AVX2 direct one where the CPU has it (also
 * on AVX-512 CPUs: the trainer has no AVX-512 direct kernel), with Winograd on the 3x3 layers
 * where tr_conv_winograd says (rnvpi_winograd_wins, as inference; with the AVX-512 Winograd
 * kernels every layer of 32 or more channels), else the portable one; REALNVP_CONV=blas forces the
 * portable one, avx2 the AVX2 direct one alone, winograd Winograd on every 3x3 layer. */
static int train_kernel(void)
{
    const int k = rnvpi_conv_choose();
    if (k == RNVPI_CONV_BLAS || !rnvpi_conv_avx2_available()) return RNVPI_CONV_BLAS;
    if (k == RNVPI_CONV_AVX2_DIRECT || !rnvpi_winograd_available()) return RNVPI_CONV_AVX2_DIRECT;
    return k == RNVPI_CONV_WINOGRAD ? RNVPI_CONV_WINOGRAD : RNVPI_CONV_AVX2;
}

enum rnvp_status tr_ws_create(tr_ws **out, const rnvp_model *m, int max_batch, rnvp_error *err)
{
    *out = NULL;
    if (max_batch < 1) return rnvpi_fail(err, RNVP_ERR_ARG, "max_batch %d < 1", max_batch);
    tr_ws *w = calloc(1, sizeof *w);
    if (!w) return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory");
    /* as many threads as OpenBLAS was told to use (OPENBLAS_NUM_THREADS, rnvp_set_num_threads);
     * during the passes each thread runs its own single-threaded gemms */
    w->threads = openblas_get_num_threads();
    if (w->threads > 1) w->tp = rnvpi_tpool_create(w->threads);
    w->threads = rnvpi_tpool_size(w->tp);
    w->scr.cs.kernel = train_kernel();   /* the carve gives Winograd weights by it */
    w->scr.cs.wino_kind = rnvpi_winograd_kind();
    arena a = {NULL, 0};
    ws_carve(w, &a, m, max_batch);
    w->block = aligned_alloc(64, (a.used + 63) & ~(size_t)63);
    if (!w->block) {
        rnvpi_tpool_free(w->tp);
        free(w);
        return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory for a %zu MB training workspace",
                         a.used >> 20);
    }
    w->bytes = a.used;
    arena b = {w->block, 0};
    ws_carve(w, &b, m, max_batch);
    w->scr.cs.tp = w->tp;
    w->m = m;
    w->max_batch = max_batch;
    *out = w;
    return RNVP_OK;
}

void tr_ws_free(tr_ws *w)
{
    if (!w) return;
    rnvpi_tpool_free(w->tp);
    free(w->block);
    free(w);
}

size_t tr_ws_bytes(const tr_ws *w) { return w ? w->bytes + sizeof *w : 0; }

static double flow_pass(tr_ws *w, rnvp_model *m, float *grad, const float *xt, int n,
                        int update_stats);

double tr_forward_backward(tr_ws *w, rnvp_model *m, float *grad, const float *xt, int n,
                           int update_stats)
{
    if (n < 1 || n > w->max_batch || m != w->m) return NAN;
    const int blas_threads = openblas_get_num_threads();
    if (w->tp) openblas_set_num_threads(1);   /* the pool's threads run the gemms */
    const double loss = flow_pass(w, m, grad, xt, n, update_stats);
    if (w->tp) openblas_set_num_threads(blas_threads);
    return loss;
}

/* The parameters the loss does not depend on, their exact gradient 0: the biases of in_conv,
 * conv_a and conv_b (each feature they shift reaches the loss only through batch norms, which
 * subtract the batch mean), and with flow batch norm the t half of out_conv's bias (a shift of t
 * the flow batch norm subtracts again). The backward pass leaves float round-off there, which
 * Adam would turn into steps of the learning rate in a direction that depends on the summation
 * order (the thread or process count): they are set to the exact 0 instead. */
static void zero_free_gradients(float *grad, const rnvp_model *m)
{
    for (int k = 0; k < m->L; k++) {
        const coupling *c = &m->cp[k];
        const conv_p *cv[1 + 2 * RNVP_MAX_RES_BLOCKS];
        int n = 0;
        cv[n++] = &c->in_conv;
        for (int j = 0; j < c->K; j++) {
            cv[n++] = &c->conv_a[j];
            cv[n++] = &c->conv_b[j];
        }
        for (int i = 0; i < n; i++) memset(grad + (cv[i]->b - m->params), 0, sizeof(float) * cv[i]->cout);
        if (c->fbn_mean) memset(grad + (c->out_conv.b + c->Ct - m->params), 0, sizeof(float) * c->Ct);
    }
}

/* tr_forward_backward's passes. */
static double flow_pass(tr_ws *w, rnvp_model *m, float *grad, const float *xt, int n,
                        int update_stats)
{
    const int L = m->L, D = m->D, N = n;
    const rnvp_config *cfg = &m->cfg;
    for (int i = 0; i < N; i++) w->ld[i] = w->lp[i] = 0;
    /* ---- forward ---- */
    tr_logit_forward(w->x[0], w->ld, xt, cfg->alpha, N, cfg->channels, cfg->height, cfg->width);
    for (int k = 0; k < L; k++) {
        const coupling *c = &m->cp[k];
        const size_t HW = (size_t)c->H * c->W, P = (size_t)N * HW;
        tr_coupling_train_forward(&w->cs[k], w->y[k], w->ld, w->x[k], c, cfg, &w->scr.cs, update_stats,
                               N);
        switch (rnvpi_flow_next(m, k)) {
        case RNVPI_NEXT_SQUEEZE:
            rnvpi_squeeze_forward(w->x[k + 1], w->y[k], c->C, N, c->H, c->W);
            break;
        case RNVPI_NEXT_SPLIT:   /* C = 4 C_s channels: 2 C_s go on, 2 C_s are z_s */
            tr_split_forward(w->x[k + 1], w->y[k], c->C / 4, P);
            tr_prior_forward(w->lp, w->y[k], w->drop[k], c->C / 2, N, (int)HW);
            break;
        case RNVPI_NEXT_END:
            tr_prior_forward(w->lp, w->y[k], NULL, c->C, N, (int)HW);   /* z_{S-1} */
            break;
        default:
            break;   /* x[k+1] is y[k] */
        }
    }
    /* loss = mean over the global batch of -log_prob_n / (D ln 2) (bits/dim) */
    double red[2] = {0, N};   /* the loss's sum and the images, over every process */
    for (int i = 0; i < N; i++) red[0] += rnvpi_bits_per_dim(rnvpi_log_likelihood(w->lp[i], w->ld[i], D), D);
    if (w->comm && w->comm->sum) w->comm->sum(red, 2, w->comm->user);
    const double loss = red[0] / red[1], dln2 = D * log(2.0);
    if (!grad) return loss;
    /* ---- backward: every log p(z) and log-det term of image i has gradient -1/(N D ln 2),
     * N the global batch ---- */
    for (int i = 0; i < N; i++) w->dld[i] = -1.0 / (red[1] * dln2);
    float *dy = w->da, *dx = w->db;   /* gradients of y[k] and of x[k] */
    {
        const coupling *c = &m->cp[L - 1];
        const size_t HW = (size_t)c->H * c->W;
        memset(dy, 0, sizeof(float) * c->C * N * HW);
        /* forward: tr_prior_forward(lp, y[L-1], ...)  (z_{S-1}) */
        tr_prior_backward(dy, w->dld, w->y[L - 1], NULL, c->C, N, (int)HW);
    }
    for (int k = L - 1; k >= 0; k--) {
        const coupling *c = &m->cp[k];
        const size_t P = (size_t)N * c->H * c->W;
        memset(dx, 0, sizeof(float) * c->C * P);
        /* forward: tr_coupling_train_forward(y[k], ld, x[k]) */
        tr_coupling_train_backward(dx, grad, dy, w->dld, &w->cs[k], w->x[k], w->y[k], c, m->params,
                                &w->scr, N);
        if (k == 0) break;   /* the logit pre-processing has no parameters */
        const coupling *pc = &m->cp[k - 1];
        const size_t pP = (size_t)N * pc->H * pc->W;
        switch (rnvpi_flow_next(m, k - 1)) {
        case RNVPI_NEXT_SQUEEZE:   /* forward: rnvpi_squeeze_forward(x[k], y[k-1]) */
            memset(dy, 0, sizeof(float) * pc->C * pP);
            tr_sq_backward(dy, dx, pc->C, N, pc->H, pc->W);
            break;
        case RNVPI_NEXT_SPLIT:     /* forward: tr_split_forward(x[k], y[k-1]); tr_prior_forward(lp, y[k-1] dropped) */
            memset(dy, 0, sizeof(float) * pc->C * pP);
            tr_split_backward(dy, dx, pc->C / 4, pP);
            tr_prior_backward(dy, w->dld, w->y[k - 1], w->drop[k - 1], pc->C / 2, N,
                           pc->H * pc->W);
            break;
        default: {   /* x[k] is y[k-1] */
            float *t = dy;
            dy = dx;
            dx = t;
        }
        }
    }
    zero_free_gradients(grad, m);
    return loss;
}

/* ---------------------------------------------------------------- initialisation */

static void init_conv(const conv_p *p, uint64_t *rs, double g)
{
    const size_t K = (size_t)p->cin * p->kh * p->kw;
    const double sd = sqrt(2.0 / (double)K);   /* He: w = v at g = ||v|| */
    for (int o = 0; o < p->cout; o++) {
        double nrm = 0;
        for (size_t i = 0; i < K; i += 2) {
            double a, b;
            rnvpi_gauss2(rs, &a, &b);
            p->v[o * K + i] = (float)(sd * a);
            nrm += (double)p->v[o * K + i] * p->v[o * K + i];
            if (i + 1 < K) {
                p->v[o * K + i + 1] = (float)(sd * b);
                nrm += (double)p->v[o * K + i + 1] * p->v[o * K + i + 1];
            }
        }
        p->g[o] = (float)(g > 0 ? g : sqrt(nrm));
        p->b[o] = 0;
    }
}

static void init_bn(const bn_p *p)
{
    for (int c = 0; c < p->c; c++) {
        p->w[c] = 1;
        p->b[c] = 0;
        p->rm[c] = 0;
        p->rv[c] = 1;
    }
}

/* Initial weight_g of every out_conv: its rows have norm 0.01, so s_raw and t start around 0.01
 * times the unit-variance features and every coupling starts near the identity. `scale` starts
 * at 1 (s = tanh(s_raw) ~ s_raw): on Fashion-MNIST (K=2, F=32, batch 64, Adam 1e-3) scale 0.1
 * made the first few hundred steps slower (flow-bn: 5.35 vs 4.47 bits/dim at step 100; without
 * flow-bn 5.93 vs 5.15 at step 200), as Adam grows it by only ~lr per step. */
#define INIT_OUT_G 0.01
#define INIT_SCALE 1.0

void tr_init_params(rnvp_model *m, uint64_t seed)
{
    uint64_t rs = seed;
    rnvpi_splitmix64(&rs);
    memset(m->params, 0, sizeof(float) * m->nparams);
    for (int k = 0; k < m->L; k++) {
        const coupling *c = &m->cp[k];
        init_conv(&c->in_conv, &rs, 0);
        for (int j = 0; j < c->K; j++) {
            init_bn(&c->bn_a[j]);
            init_conv(&c->conv_a[j], &rs, 0);
            init_bn(&c->bn_b[j]);
            init_conv(&c->conv_b[j], &rs, 0);
        }
        init_bn(&c->bn_out);
        init_conv(&c->out_conv, &rs, INIT_OUT_G);
        for (int i = 0; i < c->Ct; i++) {
            c->scale[i] = (float)INIT_SCALE;
            if (c->fbn_mean) {
                c->fbn_mean[i] = 0;
                c->fbn_var[i] = 1;
            }
        }
    }
}

int tr_tensor_trainable(const rnvp_model *m, int i)
{
    if (i < 0 || i >= m->ntensors) return 0;
    const char *n = m->tensors[i].name;
    size_t ln = strlen(n);
    static const char *stats[] = {"running_mean", "running_var"};
    for (int s = 0; s < 2; s++) {
        size_t ls = strlen(stats[s]);
        if (ln >= ls && !strcmp(n + ln - ls, stats[s])) return 0;
    }
    return 1;
}
