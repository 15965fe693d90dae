/* bench_conv_shapes.c: one 3x3 convolution at a time, the direct kernel against Winograd F(2x2,3x3)
 * (core/winograd.c) and, on AVX-512 CPUs from 12 images on, F(4x4,3x3) (core/winograd4.c), on the
 * layer shapes of the shipped and the 1 GFLOP/image models; interleaved
 * rounds, medians, 2 threads; the data behind rnvpi_winograd_wins (AVX2: the AVX2 kernels) and
 * rnvpi_winograd512_wins (AVX-512: its direct kernel against the AVX-512 Winograd; and the direct
 * kernel's bf16 variant where the CPU has AVX512_BF16). Leaves out whole flows (bench_core.c). Not in the
 * Makefile; build and run by hand:
 *
 *   make build/librnvp.a && cc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Icore bench/bench_conv_shapes.c \
 *       build/librnvp.a -lopenblas -ljansson -lpng -lz -lm -lpthread -o /tmp/bench_conv_shapes
 *   /tmp/bench_conv_shapes [rounds] [threads]
 */
#include "internal.h"
#include "tpool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmpd(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

struct shp { int cin, cout, H, W, N, pre, acc; };

/* seconds per call, at least ~0.15 s of calls */
static double time_conv(float *out, const float *in, const conv_i *cv, const affine_i *pre, const net_ws *ws,
                        int N, int H, int W, int acc)
{
    int reps = 1;
    for (;;) {
        const double t0 = now();
        for (int r = 0; r < reps; r++) rnvpi_conv_forward_acc(out, in, cv, pre, ws, N, H, W, acc);
        const double dt = now() - t0;
        if (dt > 0.15) return dt / reps;
        reps *= dt < 0.01 ? 8 : 2;
    }
}

int main(int argc, char **argv)
{
    const int rounds = argc > 1 ? atoi(argv[1]) : 5, threads = argc > 2 ? atoi(argv[2]) : 2;
    static const struct shp shapes[] = {
        /* block convs (pre: bn + relu; conv_b with the residual) and in_convs */
        {32, 32, 28, 28, 1, 2, 0}, {32, 32, 28, 28, 16, 2, 1}, {32, 32, 28, 28, 64, 2, 1},
        {32, 32, 14, 14, 1, 2, 0}, {32, 32, 14, 14, 16, 2, 1}, {32, 32, 14, 14, 64, 2, 1},
        {32, 32, 7, 7, 1, 2, 0},   {32, 32, 7, 7, 16, 2, 1},   {32, 32, 7, 7, 64, 2, 1},
        {64, 64, 14, 14, 1, 2, 0}, {64, 64, 14, 14, 16, 2, 1}, {64, 64, 14, 14, 64, 2, 1},
        {64, 64, 7, 7, 1, 2, 0},   {64, 64, 7, 7, 16, 2, 1},   {64, 64, 7, 7, 64, 2, 1},
        {2, 32, 28, 28, 16, 0, 0}, {3, 64, 14, 14, 16, 0, 0},  {5, 64, 7, 7, 16, 0, 0},
    };
    const int ns = (int)(sizeof shapes / sizeof shapes[0]);
    tpool *tp = threads > 1 ? rnvpi_tpool_create(threads) : NULL;
    const int avx512 = rnvpi_conv_direct_available() && rnvpi_winograd512_available(), bf16 = rnvpi_bf16_available();
    if (avx512)
        printf("| cin | cout | HxW | N | pre/res | avx512 direct ms | winograd ms | direct / winograd | F(4x4) ms | "
               "direct / F(4x4) |%s\n"
               "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|%s\n",
               bf16 ? " direct bf16 ms | direct / bf16 |" : "", bf16 ? "---:|---:|" : "");
    else
        printf("| cin | cout | HxW | N | pre/res | avx2 direct ms | winograd ms | direct / winograd |\n"
               "|---:|---:|---|---:|---|---:|---:|---:|\n");
    uint64_t rs = 1;
    for (int si = 0; si < ns; si++) {
        const struct shp *sh = &shapes[si];
        const size_t P = (size_t)sh->N * sh->H * sh->W;
        float *w = malloc(sizeof(float) * sh->cout * sh->cin * 9), *b = malloc(sizeof(float) * sh->cout);
        float *u = malloc(sizeof(float) * 16 * sh->cout * sh->cin), *u4 = malloc(sizeof(float) * 36 * sh->cout * sh->cin);
        uint32_t *ub = malloc(sizeof(uint32_t) * sh->cout * ((sh->cin * 9 + 1) / 2));
        float *a = malloc(sizeof(float) * sh->cin), *s = malloc(sizeof(float) * sh->cin);
        /* the input between guard zones of zeros, as in a context (the AVX-512 direct kernel's
         * plain loads read into them) */
        const conv_i shape = {sh->cout, sh->cin, 3, 3, NULL, NULL, NULL, NULL, NULL};
        const size_t guard = (rnvpi_conv_guard_floats(&shape, sh->W) + 15) / 16 * 16;
        float *inb = calloc(sh->cin * P + 2 * guard, sizeof(float)), *in = inb + guard;
        float *out = malloc(sizeof(float) * sh->cout * P);
        for (int i = 0; i < sh->cout * sh->cin * 9; i++) w[i] = (float)(rnvpi_uniform(&rs) - 0.5);
        for (int i = 0; i < sh->cout; i++) b[i] = 0.1f;
        for (int i = 0; i < sh->cin; i++) a[i] = 1.0f, s[i] = 0.1f;
        for (size_t i = 0; i < sh->cin * P; i++) in[i] = (float)(rnvpi_uniform(&rs) - 0.5);
        memset(out, 0, sizeof(float) * sh->cout * P);
        rnvpi_winograd_weights(u, w, sh->cout, sh->cin);
        rnvpi_winograd4_weights(u4, w, sh->cout, sh->cin);
        rnvpi_bf16_pairs(ub, w, sh->cout, sh->cin * 9);
        conv_i cw = {sh->cout, sh->cin, 3, 3, w, b, u, NULL, NULL}, cd = {sh->cout, sh->cin, 3, 3, w, b, NULL, ub, NULL};
        conv_i c4 = {sh->cout, sh->cin, 3, 3, w, b, NULL, NULL, u4};
        affine_i pa = {sh->cin, a, s};
        size_t pf = rnvpi_conv_panel_floats(sh->cin, 3, 3);
        if (rnvpi_winograd4_panel_floats(sh->cin, sh->W) > pf) pf = rnvpi_winograd4_panel_floats(sh->cin, sh->W);
        pf = (pf + 15) / 16 * 16;
        float *panel = aligned_alloc(64, sizeof(float) * pf * (threads > 1 ? threads : 1));
        /* AVX-512: direct (cd) with RNVPI_CONV_AVX512 (bf16: its bf16 variant), Winograd (cw) with
         * RNVPI_CONV_WINOGRAD and the AVX-512 Winograd kernels; AVX2: RNVPI_CONV_WINOGRAD for both
         * (cd has no Winograd weights, so it runs on the AVX2 direct kernel) */
        net_ws wd = {.tp = tp, .panel = panel, .panel_floats = pf, .guard = guard,
                     .direct = avx512 ? RNVPI_CONV_AVX512 : RNVPI_CONV_WINOGRAD, .wino_kind = RNVPI_WINO_OFF};
        net_ws ww = {.tp = tp, .panel = panel, .panel_floats = pf, .guard = guard, .direct = RNVPI_CONV_WINOGRAD,
                     .wino_kind = avx512 ? RNVPI_WINO_AVX512 : RNVPI_WINO_AVX2};
        net_ws wb = wd, w4 = wd;
        wb.bf16 = 1;
        w4.wino4 = 1;
        if (!tp) wd.col = ww.col = wb.col = w4.col = panel, wd.panel = ww.panel = wb.panel = w4.panel = NULL;
        const int f4 = avx512 && rnvpi_winograd4_wins(&c4, sh->N, sh->H, sh->W);
        double td[64], tw[64], tb[64], t4[64];
        for (int r = 0; r < rounds && r < 64; r++) {   /* interleaved: direct, winograd, (bf16), ... */
            td[r] = time_conv(out, in, &cd, sh->pre ? &pa : NULL, &wd, sh->N, sh->H, sh->W, sh->acc);
            tw[r] = time_conv(out, in, &cw, sh->pre ? &pa : NULL, &ww, sh->N, sh->H, sh->W, sh->acc);
            tb[r] = bf16 ? time_conv(out, in, &cd, sh->pre ? &pa : NULL, &wb, sh->N, sh->H, sh->W, sh->acc) : 0;
            t4[r] = f4 ? time_conv(out, in, &c4, sh->pre ? &pa : NULL, &w4, sh->N, sh->H, sh->W, sh->acc) : 0;
        }
        qsort(td, (size_t)rounds, sizeof(double), cmpd);
        qsort(tw, (size_t)rounds, sizeof(double), cmpd);
        qsort(tb, (size_t)rounds, sizeof(double), cmpd);
        qsort(t4, (size_t)rounds, sizeof(double), cmpd);
        const double md = td[rounds / 2], mw = tw[rounds / 2], mb = tb[rounds / 2], m4 = t4[rounds / 2];
        printf("| %d | %d | %dx%d | %d | %s | %.4f | %.4f | %.2f |", sh->cin, sh->cout, sh->H, sh->W, sh->N,
               sh->pre ? (sh->acc ? "bn+relu, res" : "bn+relu") : "-", 1e3 * md, 1e3 * mw, md / mw);
        if (avx512 && f4) printf(" %.4f | %.2f |", 1e3 * m4, md / m4);
        else if (avx512) printf(" - | - |");
        if (avx512 && bf16) printf(" %.4f | %.2f |", 1e3 * mb, md / mb);
        printf("\n");
        fflush(stdout);
        free(w); free(b); free(u); free(u4); free(ub); free(a); free(s); free(inb); free(out); free(panel);
    }
    rnvpi_tpool_free(tp);
    return 0;
}
