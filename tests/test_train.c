/* test_train.c: bin/realnvp-train end to end from the repository root, its data loaders and its
 * learning-rate schedule: exact resume (also onto a new schedule), a falling loss, SIGTERM, a full
 * disk, bad data and bad options, stale temporary files and the one-trainer-per-folder lock.
 * Leaves out gradients (test_gradcheck.c). */
#include "../train/data.h"
#include "../train/optim.h"
#include "realnvp.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#define NIMG 96
#define SIDE 8

static char dir[64];
static const char *exe = "bin/realnvp-train";
static uint8_t images[NIMG * SIDE * SIDE];   /* (N, 1, 8, 8) */

static char *path_in(const char *name)
{
    static char buf[8][400];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    rewind(f);
    char *b = malloc((size_t)l + 1);
    size_t n = fread(b, 1, (size_t)l, f);
    fclose(f);
    b[n] = 0;
    if (len) *len = n;
    return b;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(p, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

/* An IDX image file of n 8x8 images (the first n of `images`), header optionally altered. */
static void write_idx(const char *path, int n, uint32_t magic, int claimed_n, int gz)
{
    unsigned char h[16];
    uint32_t v[4] = {magic, (uint32_t)claimed_n, SIDE, SIDE};
    for (int i = 0; i < 4; i++)
        for (int b = 0; b < 4; b++) h[4 * i + b] = (unsigned char)(v[i] >> (24 - 8 * b));
    if (gz) {
        gzFile f = gzopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        gzwrite(f, h, 16);
        gzwrite(f, images, (unsigned)(n * SIDE * SIDE));
        ck_assert_int_eq(gzclose(f), Z_OK);
    } else {
        FILE *f = fopen(path, "wb");
        ck_assert_ptr_nonnull(f);
        fwrite(h, 1, 16, f);
        fwrite(images, 1, (size_t)n * SIDE * SIDE, f);
        ck_assert_int_eq(fclose(f), 0);
    }
}

/* Runs `exe ARGS` with stdout/stderr to dir/out, dir/err; prefix is a shell prefix (may be ""). */
__attribute__((format(printf, 2, 3))) static int run_with(const char *prefix, const char *fmt, ...)
{
    char args[1500], cmd[2200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s %s >%s/out 2>%s/err", prefix, exe, args, dir, dir);
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}
#define run(...) run_with("", __VA_ARGS__)

/* The common small-run options: 8x8 images, 2 scales, 1 block of 4 features, batch 8. */
#define TINY "--data %s --scales 2 --res-blocks 1 --features 4 --batch 8 --threads 1 --seed 3 --eval-images 5"

/* The checkpoint's tensor data section (everything after the header). */
static char *data_section(const char *path, size_t *n)
{
    size_t len;
    char *b = slurp(path, &len);
    ck_assert_msg(b != NULL, "%s missing", path);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (unsigned char)b[i];
    ck_assert_uint_le(8 + hl, len);
    *n = len - 8 - hl;
    char *d = malloc(*n ? *n : 1);
    memcpy(d, b + 8 + hl, *n);
    free(b);
    return d;
}

static long ckpt_step(const char *path)
{
    rnvp_model *m;
    rnvp_error err;
    ck_assert_msg(rnvp_model_load(&m, path, &err) == RNVP_OK, "%s", err.msg);
    const char *s = rnvp_model_metadata(m, "train_state");
    ck_assert_ptr_nonnull(s);
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    ck_assert_ptr_nonnull(j);
    long step = (long)json_integer_value(json_object_get(j, "step"));
    json_decref(j);
    rnvp_model_free(m);
    return step;
}

static void setup(void)
{
    const char *x = getenv("REALNVP_TRAIN_BIN");
    if (x && *x) exe = x;
    snprintf(dir, sizeof dir, "/tmp/rnvp_train_test_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    /* discs of random centre, radius and brightness on a dark background, with noise */
    uint64_t s = 12345;
    for (int k = 0; k < NIMG; k++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double cx = 2 + 4 * ((s >> 33) & 1023) / 1023.0, cy = 2 + 4 * ((s >> 43) & 1023) / 1023.0;
        double r = 1.5 + 1.5 * ((s >> 20) & 255) / 255.0;
        int br = 120 + (int)((s >> 10) & 127);
        for (int i = 0; i < SIDE; i++)
            for (int j = 0; j < SIDE; j++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                int v = ((i - cy) * (i - cy) + (j - cx) * (j - cx) < r * r ? br : 10) + (int)((s >> 60) & 15) - 8;
                images[(k * SIDE + i) * SIDE + j] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    }
    write_idx(path_in("train.idx"), NIMG, 0x803, NIMG, 0);
}

static void teardown(void)
{
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) { /* best effort */ }
}

/* ---------------------------------------------------------------- data loaders */

START_TEST(test_idx_ok_and_gz)
{
    tr_data a, b;
    rnvp_error err;
    ck_assert_int_eq(tr_idx_read(&a, path_in("train.idx"), &err), RNVP_OK);
    write_idx(path_in("train.idx.gz"), NIMG, 0x803, NIMG, 1);
    ck_assert_int_eq(tr_idx_read(&b, path_in("train.idx.gz"), &err), RNVP_OK);
    ck_assert_int_eq(a.n, NIMG);
    ck_assert_int_eq(a.h, SIDE);
    ck_assert_int_eq(a.c, 1);
    ck_assert_int_eq(b.n, NIMG);
    ck_assert_mem_eq(a.px, images, sizeof images);
    ck_assert_mem_eq(b.px, images, sizeof images);
    tr_data v;
    ck_assert_int_eq(tr_data_split(&a, &v, 6, &err), RNVP_OK);
    ck_assert_int_eq(a.n, NIMG - 6);
    ck_assert_int_eq(v.n, 6);
    ck_assert_mem_eq(v.px, images + (NIMG - 6) * SIDE * SIDE, 6 * SIDE * SIDE);
    tr_data_free(&a);
    tr_data_free(&b);
    tr_data_free(&v);
}
END_TEST

START_TEST(test_idx_errors)
{
    tr_data d;
    rnvp_error err;
    ck_assert_int_eq(tr_idx_read(&d, path_in("nope.idx"), &err), RNVP_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err.msg, "nope.idx"));
    write_idx(path_in("labels.idx"), NIMG, 0x801, NIMG, 0);
    ck_assert_int_eq(tr_idx_read(&d, path_in("labels.idx"), &err), RNVP_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "labels.idx"));
    ck_assert_ptr_nonnull(strstr(err.msg, "magic"));
    write_idx(path_in("short.idx"), NIMG - 1, 0x803, NIMG, 0);
    ck_assert_int_eq(tr_idx_read(&d, path_in("short.idx"), &err), RNVP_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "truncated"));
    write_idx(path_in("short.idx.gz"), NIMG - 1, 0x803, NIMG, 1);
    ck_assert_int_eq(tr_idx_read(&d, path_in("short.idx.gz"), &err), RNVP_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "short.idx.gz"));
    write_idx(path_in("long.idx"), NIMG, 0x803, NIMG - 1, 0);
    ck_assert_int_eq(tr_idx_read(&d, path_in("long.idx"), &err), RNVP_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "longer"));
    write_bytes(path_in("tiny.idx"), "\0\0\x08", 3);
    ck_assert_int_eq(tr_idx_read(&d, path_in("tiny.idx"), &err), RNVP_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "header"));
    write_idx(path_in("huge.idx"), 1, 0x803, 2000000000, 0);
    ck_assert_int_eq(tr_idx_read(&d, path_in("huge.idx"), &err), RNVP_ERR_FORMAT);
}
END_TEST

START_TEST(test_cifar_and_png_dirs)
{
    tr_data tr, te;
    int kind;
    rnvp_error err;
    /* CIFAR-10 layout: 2 batches of 3 records, a test batch of 2 */
    ck_assert_int_eq(mkdir(path_in("cifar"), 0755), 0);
    unsigned char rec[3 * 3073];
    for (size_t i = 0; i < sizeof rec; i++) rec[i] = (unsigned char)(i * 7);
    write_bytes(path_in("cifar/data_batch_1.bin"), rec, 3 * 3073);
    write_bytes(path_in("cifar/data_batch_2.bin"), rec, 3 * 3073);
    write_bytes(path_in("cifar/test_batch.bin"), rec, 2 * 3073);
    ck_assert_int_eq(tr_data_open(&tr, &te, &kind, path_in("cifar"), &err), RNVP_OK);
    ck_assert_int_eq(kind, DATA_CIFAR10);
    ck_assert_int_eq(tr.n, 6);
    ck_assert_int_eq(te.n, 2);
    ck_assert_int_eq(tr.c, 3);
    ck_assert_int_eq(tr.h, 32);
    ck_assert_mem_eq(tr.px + 3072, rec + 3073 + 1, 3072);   /* the label byte is skipped */
    tr_data_free(&tr);
    tr_data_free(&te);
    write_bytes(path_in("cifar/data_batch_2.bin"), rec, 3073 + 5);
    ck_assert_int_eq(tr_data_open(&tr, &te, &kind, path_in("cifar"), &err), RNVP_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "data_batch_2.bin"));
    /* PNG folder: two 8x8 greys, then one of another size */
    ck_assert_int_eq(mkdir(path_in("pngs"), 0755), 0);
    ck_assert_int_eq(tr_data_open(&tr, &te, &kind, path_in("pngs"), &err), RNVP_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "no .png"));
    ck_assert_int_eq(rnvp_png_write_grid(path_in("pngs/a.png"), images, 1, 1, 8, 8, 1, &err), RNVP_OK);
    ck_assert_int_eq(rnvp_png_write_grid(path_in("pngs/b.png"), images + 64, 1, 1, 8, 8, 1, &err), RNVP_OK);
    ck_assert_int_eq(tr_data_open(&tr, &te, &kind, path_in("pngs"), &err), RNVP_OK);
    ck_assert_int_eq(kind, DATA_PNG_DIR);
    ck_assert_int_eq(tr.n, 2);
    ck_assert_int_eq(te.n, 0);
    ck_assert_mem_eq(tr.px, images, 128);
    tr_data_free(&tr);
    ck_assert_int_eq(rnvp_png_write_grid(path_in("pngs/c.png"), images, 1, 1, 4, 4, 1, &err), RNVP_OK);
    ck_assert_int_eq(tr_data_open(&tr, &te, &kind, path_in("pngs"), &err), RNVP_ERR_SIZE);
    ck_assert_ptr_nonnull(strstr(err.msg, "c.png"));
    ck_assert_int_eq(tr_data_open(&tr, &te, &kind, path_in("missing"), &err), RNVP_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err.msg, "missing"));
}
END_TEST

/* ---------------------------------------------------------------- the learning-rate schedule */

START_TEST(test_lr_schedule)
{
    const double lr = 1e-3, lo = 1e-4, tol = 1e-15;
    /* cosine from step 10 to 110: p = (t - 10) / 100 */
    tr_adam a = {.lr = lr, .lr_min = lo, .schedule = TR_LR_COSINE, .decay_start = 10, .total = 110};
    for (long t = 0; t <= 10; t++) ck_assert_double_eq(tr_lr(&a, t), lr);   /* up to the start: lr exactly */
    ck_assert_double_lt(tr_lr(&a, 11), lr);                                  /* the first decayed step */
    ck_assert_double_gt(tr_lr(&a, 11), lr - 1e-6);
    ck_assert_double_eq_tol(tr_lr(&a, 35), lo + (lr - lo) * (1 + sqrt(0.5)) / 2, tol);   /* p = 1/4 */
    ck_assert_double_eq_tol(tr_lr(&a, 60), (lr + lo) / 2, tol);                          /* p = 1/2 */
    ck_assert_double_eq_tol(tr_lr(&a, 85), lo + (lr - lo) * (1 - sqrt(0.5)) / 2, tol);   /* p = 3/4 */
    ck_assert_double_eq(tr_lr(&a, 110), lo);                                             /* the last step */
    ck_assert_double_eq(tr_lr(&a, 111), lo);                                             /* clamped past it */
    ck_assert_double_eq(tr_lr(&a, 100000), lo);
    for (long t = 11; t <= 110; t++) ck_assert_double_lt(tr_lr(&a, t), tr_lr(&a, t - 1));
    /* linear, the same steps */
    a.schedule = TR_LR_LINEAR;
    ck_assert_double_eq(tr_lr(&a, 10), lr);
    ck_assert_double_eq_tol(tr_lr(&a, 11), lr - (lr - lo) / 100, tol);
    ck_assert_double_eq_tol(tr_lr(&a, 35), lr - (lr - lo) / 4, tol);
    ck_assert_double_eq_tol(tr_lr(&a, 60), (lr + lo) / 2, tol);
    ck_assert_double_eq_tol(tr_lr(&a, 110), lo, tol);
    ck_assert_double_eq_tol(tr_lr(&a, 500), lo, tol);
    /* constant ignores the decay options */
    a.schedule = TR_LR_CONSTANT;
    ck_assert_double_eq(tr_lr(&a, 60), lr);
    ck_assert_double_eq(tr_lr(&a, 500), lr);
    /* --decay-start 0: the decay takes the whole run (p = t / 100), lr_min 0 by default */
    tr_adam z = {.lr = lr, .schedule = TR_LR_COSINE, .total = 100};
    ck_assert_double_eq(tr_lr(&z, 0), lr);
    ck_assert_double_eq_tol(tr_lr(&z, 50), lr / 2, tol);
    ck_assert_double_eq(tr_lr(&z, 100), 0);
    /* warm-up: lr t / warmup before step 20; the decay starts after max(decay_start 10, warmup
     * 20) = 20, so p = (t - 20) / 90 */
    tr_adam w = {.lr = lr, .lr_min = lo, .warmup = 20, .schedule = TR_LR_COSINE, .decay_start = 10, .total = 110};
    ck_assert_double_eq(tr_lr(&w, 0), 0);
    ck_assert_double_eq_tol(tr_lr(&w, 5), lr / 4, tol);
    ck_assert_double_eq_tol(tr_lr(&w, 19), lr * 19 / 20, tol);
    ck_assert_double_eq(tr_lr(&w, 20), lr);
    ck_assert_double_lt(tr_lr(&w, 21), lr);
    ck_assert_double_eq_tol(tr_lr(&w, 65), (lr + lo) / 2, tol);
    ck_assert_double_eq(tr_lr(&w, 110), lo);
    /* a decay start after the warm-up: flat from step 20 to 50, then the decay over 51..110 */
    w.decay_start = 50;
    ck_assert_double_eq_tol(tr_lr(&w, 10), lr / 2, tol);
    ck_assert_double_eq(tr_lr(&w, 50), lr);
    ck_assert_double_eq_tol(tr_lr(&w, 80), (lr + lo) / 2, tol);
    /* a run that ends before the decay starts: no decay at all */
    w.decay_start = 110;
    ck_assert_double_eq(tr_lr(&w, 110), lr);
    w.decay_start = 500;
    ck_assert_double_eq(tr_lr(&w, 110), lr);
    ck_assert_double_eq(tr_lr(&w, 600), lr);
    /* the names of --lr-schedule */
    ck_assert_int_eq(tr_lr_schedule_id("constant"), TR_LR_CONSTANT);
    ck_assert_int_eq(tr_lr_schedule_id("cosine"), TR_LR_COSINE);
    ck_assert_int_eq(tr_lr_schedule_id("linear"), TR_LR_LINEAR);
    ck_assert_int_eq(tr_lr_schedule_id("Cosine"), -1);
    ck_assert_int_eq(tr_lr_schedule_id(""), -1);
}
END_TEST

/* ---------------------------------------------------------------- the trainer */

START_TEST(test_resume_is_exact)
{
    /* 91 training images / batch 8 = 11 steps an epoch: the resume at step 7 and the run to
     * step 16 cross an epoch boundary; evaluations at 5, 10, 15 and 16 run in between */
    char data[400];
    snprintf(data, sizeof data, "%s/train.idx", dir);
    ck_assert_int_eq(run(TINY " --steps 16 --eval-every 5 --out %s", data, path_in("A")), 0);
    ck_assert_int_eq(run(TINY " --steps 7 --eval-every 5 --out %s", data, path_in("B")), 0);
    ck_assert_int_eq(ckpt_step(path_in("B/checkpoint.safetensors")), 7);
    ck_assert_int_eq(run(TINY " --resume --steps 16 --out %s", data, path_in("B")), 0);
    ck_assert_int_eq(ckpt_step(path_in("B/checkpoint.safetensors")), 16);
    size_t na, nb;
    char *a = data_section(path_in("A/checkpoint.safetensors"), &na);
    char *b = data_section(path_in("B/checkpoint.safetensors"), &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_msg(memcmp(a, b, na) == 0, "parameters or Adam moments differ after a resume");
    /* and a different seed does differ (the comparison can fail) */
    ck_assert_int_eq(run(TINY " --steps 16 --seed 4 --eval-every 0 --out %s", data, path_in("C")), 0);
    size_t nc;
    char *c = data_section(path_in("C/checkpoint.safetensors"), &nc);
    ck_assert_uint_eq(na, nc);
    ck_assert(memcmp(a, c, na) != 0);
    free(a);
    free(b);
    free(c);
    /* the resumed run's metrics continue the first part's in step order (what the first part
     * logged past its checkpoint is dropped), and both runs end with the same test bits/dim */
    double last_test[2] = {NAN, NAN};
    const char *mf[2] = {path_in("A/metrics.jsonl"), path_in("B/metrics.jsonl")};
    for (int k = 0; k < 2; k++) {
        char *txt = slurp(mf[k], NULL);
        ck_assert_ptr_nonnull(txt);
        long prev = -1;
        for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
            json_error_t je;
            json_t *j = json_loads(line, 0, &je);
            ck_assert_ptr_nonnull(j);
            long st = (long)json_integer_value(json_object_get(j, "step"));
            ck_assert_int_ge(st, prev);
            prev = st;
            if (json_is_number(json_object_get(j, "test_bpd"))) last_test[k] = json_number_value(json_object_get(j, "test_bpd"));
            json_decref(j);
        }
        ck_assert_int_eq(prev, 16);
        free(txt);
    }
    ck_assert(isfinite(last_test[0]));
    ck_assert_double_eq(last_test[0], last_test[1]);
}
END_TEST

/* step -> the "lr" of its metrics line (training lines: the ones with train_bpd) */
static void metrics_lr(const char *path, double *lr, int nmax)
{
    for (int i = 0; i < nmax; i++) lr[i] = NAN;
    char *txt = slurp(path, NULL);
    ck_assert_msg(txt != NULL, "%s missing", path);
    for (char *line = strtok(txt, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        ck_assert_ptr_nonnull(j);
        long st = (long)json_integer_value(json_object_get(j, "step"));
        if (json_is_number(json_object_get(j, "train_bpd")) && st >= 0 && st < nmax)
            lr[st] = json_number_value(json_object_get(j, "lr"));
        json_decref(j);
    }
    free(txt);
}

START_TEST(test_resume_onto_cosine_is_exact)
{
    /* what the long run does: constant, stopped at step 8, resumed with a cosine decay from there
     * to step 16 (warm-up over the first 3 steps), = the cosine run in one go; and the same when
     * the schedule comes from the checkpoint's options instead of the resume's flags */
    char data[400];
    snprintf(data, sizeof data, "%s/train.idx", dir);
#define COS " --lr-schedule cosine --decay-start 8 --lr-min 1e-4"
    ck_assert_int_eq(run(TINY " --warmup 3 --log-every 1 --steps 16 --eval-every 5" COS " --out %s", data, path_in("A")), 0);
    ck_assert_int_eq(run(TINY " --warmup 3 --log-every 1 --steps 8 --eval-every 5 --out %s", data, path_in("B")), 0);
    ck_assert_int_eq(ckpt_step(path_in("B/checkpoint.safetensors")), 8);
    ck_assert_int_eq(run(TINY " --resume --steps 16" COS " --out %s", data, path_in("B")), 0);
    char *out = slurp(path_in("out"), NULL);
    ck_assert_msg(strstr(out, "cosine decay over steps 9..16 to 0.0001") != NULL, "the schedule line: %s", out);
    free(out);
    ck_assert_int_eq(run(TINY " --warmup 3 --log-every 1 --steps 8 --eval-every 5" COS " --out %s", data, path_in("D")), 0);
    ck_assert_int_eq(run(TINY " --resume --steps 16 --out %s", data, path_in("D")), 0);
#undef COS
    ck_assert_int_eq(run(TINY " --warmup 3 --log-every 1 --steps 16 --eval-every 0 --out %s", data, path_in("E")), 0);
    size_t na, nb, nd, ne;
    char *a = data_section(path_in("A/checkpoint.safetensors"), &na);
    char *b = data_section(path_in("B/checkpoint.safetensors"), &nb);
    char *d = data_section(path_in("D/checkpoint.safetensors"), &nd);
    char *e = data_section(path_in("E/checkpoint.safetensors"), &ne);
    ck_assert_uint_eq(na, nb);
    ck_assert_uint_eq(na, nd);
    ck_assert_uint_eq(na, ne);
    ck_assert_msg(memcmp(a, b, na) == 0, "resumed onto the cosine schedule: parameters or Adam moments differ");
    ck_assert_msg(memcmp(a, d, na) == 0, "resumed with the checkpoint's cosine schedule: parameters or Adam moments differ");
    ck_assert_msg(memcmp(a, e, na) != 0, "the cosine schedule changed nothing against the constant one");
    free(a);
    free(b);
    free(d);
    free(e);
    /* the logged lr is the schedule's: warm-up 1/3, 2/3, then 1e-3 up to step 8, the cosine's
     * middle at step 12 and lr_min at 16; the resumed runs log the same */
    double la[17], lb[17], ld[17], le[17];
    metrics_lr(path_in("A/metrics.jsonl"), la, 17);
    metrics_lr(path_in("B/metrics.jsonl"), lb, 17);
    metrics_lr(path_in("D/metrics.jsonl"), ld, 17);
    metrics_lr(path_in("E/metrics.jsonl"), le, 17);
    const double want[17] = {NAN, 1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, NAN, NAN, NAN, 5.5e-4, NAN, NAN, NAN, 1e-4};
    for (int t = 1; t <= 16; t++) {
        ck_assert_msg(isfinite(la[t]) && isfinite(lb[t]) && isfinite(ld[t]), "step %d: no lr logged", t);
        if (isfinite(want[t])) ck_assert_msg(fabs(la[t] - want[t]) <= 1e-6 * want[t], "step %d: lr %g, not %g", t, la[t], want[t]);
        ck_assert_double_eq(lb[t], la[t]);
        ck_assert_double_eq(ld[t], la[t]);
        if (t > 8) ck_assert_double_lt(la[t], la[t - 1]);
        ck_assert_double_eq(le[t], t < 3 ? la[t] : 1e-3);   /* the constant run */
    }
}
END_TEST

START_TEST(test_loss_falls_and_outputs)
{
    char data[400];
    snprintf(data, sizeof data, "%s/train.idx", dir);
    ck_assert_int_eq(run(TINY " --batch 16 --steps 150 --log-every 10 --eval-every 75 --out %s", data, path_in("L")), 0);
    char *m = slurp(path_in("L/metrics.jsonl"), NULL);
    ck_assert_ptr_nonnull(m);
    double first = NAN, last = NAN, test_first = NAN, test_last = NAN;
    for (char *line = strtok(m, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        ck_assert_msg(j != NULL, "metrics line is not JSON: %s", line);
        json_t *t = json_object_get(j, "train_bpd"), *e = json_object_get(j, "test_bpd");
        if (json_is_number(t)) {
            if (isnan(first)) first = json_number_value(t);
            last = json_number_value(t);
        }
        if (json_is_number(e)) {
            if (isnan(test_first)) test_first = json_number_value(e);
            test_last = json_number_value(e);
        }
        ck_assert(json_is_number(json_object_get(j, "lr")));
        ck_assert(json_is_number(json_object_get(j, "images_per_s")));
        json_decref(j);
    }
    free(m);
    ck_assert_msg(last < first - 0.5, "train bits/dim %.3f -> %.3f did not fall by 0.5", first, last);
    ck_assert_msg(test_last < test_first, "test bits/dim %.3f -> %.3f did not fall", test_first, test_last);
    /* the best model is an inference checkpoint with its test bits/dim, loadable by the core */
    rnvp_model *bm;
    rnvp_error err;
    ck_assert_msg(rnvp_model_load(&bm, path_in("L/best.safetensors"), &err) == RNVP_OK, "%s", err.msg);
    const char *tb = rnvp_model_metadata(bm, "test_bits_per_dim");
    ck_assert_ptr_nonnull(tb);
    ck_assert_double_eq_tol(atof(tb), test_last, 1e-5);
    ck_assert_ptr_null(rnvp_model_metadata(bm, "train_state"));
    rnvp_model_free(bm);
    int c, h, w;
    size_t len;
    char *png = slurp(path_in("L/samples_t0.7.png"), &len);
    ck_assert_ptr_nonnull(png);
    ck_assert_int_eq(rnvp_png_info(png, len, &c, &h, &w, &err), RNVP_OK);
    ck_assert_int_eq(w, 8 * 8 + 7 * 2);   /* 8 x 8 tiles with 2-pixel borders */
    free(png);
    char *svg = slurp(path_in("L/curve.svg"), NULL);
    ck_assert_ptr_nonnull(svg);
    ck_assert_ptr_nonnull(strstr(svg, "<polyline"));
    free(svg);
}
END_TEST

/* a run started with the default --threads (0: every core) resumes: the saved options are
 * checked with the same ranges as the command line (0 used to be refused on --resume) */
START_TEST(test_resume_default_threads)
{
    char data[400];
    snprintf(data, sizeof data, "%s/train.idx", dir);
    ck_assert_int_eq(run("--data %s --scales 2 --res-blocks 1 --features 4 --batch 8 --seed 3 --eval-images 5 "
                         "--steps 3 --eval-every 0 --out %s", data, path_in("T0")), 0);
    ck_assert_int_eq(run("--resume --steps 5 --out %s", path_in("T0")), 0);
    ck_assert_int_eq(ckpt_step(path_in("T0/checkpoint.safetensors")), 5);
    /* the best model written by the resumed run (its final evaluation) is inference-only: it does
     * not carry the loaded checkpoint's train_state (which named an older step) */
    rnvp_model *m;
    rnvp_error e;
    ck_assert_int_eq(rnvp_model_load(&m, path_in("T0/best.safetensors"), &e), RNVP_OK);
    ck_assert_str_eq(rnvp_model_metadata(m, "steps"), "5");
    ck_assert_ptr_null(rnvp_model_metadata(m, "train_state"));
    ck_assert_ptr_null(rnvp_model_metadata(m, "train_options"));
    rnvp_model_free(m);
}
END_TEST

START_TEST(test_sigterm_saves_and_resumes)
{
    char data[400];
    snprintf(data, sizeof data, "%s/train.idx", dir);
    char args[1500];
    snprintf(args, sizeof args, "exec %s " TINY " --steps 100000000 --eval-every 0 --out %s >%s/out 2>%s/err", exe, data,
             path_in("S"), dir, dir);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", args, (char *)NULL);
        _exit(127);
    }
    /* wait until it is training (its first metrics line), then terminate it; up to 60 s, as
     * step 100 takes longer than 10 s under ASan on a busy machine */
    for (int i = 0; i < 1200; i++) {
        struct stat sb;
        if (stat(path_in("S/metrics.jsonl"), &sb) == 0 && sb.st_size > 0) break;
        usleep(50000);
    }
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "trainer did not exit 0 on SIGTERM");
    char *out = slurp(path_in("out"), NULL);
    ck_assert_ptr_nonnull(strstr(out, "terminated (SIGTERM)"));
    free(out);
    long step = ckpt_step(path_in("S/checkpoint.safetensors"));
    ck_assert_int_ge(step, 100);   /* log-every 100: it was past the first metrics line */
    ck_assert_int_eq(run(TINY " --resume --steps %ld --out %s", data, step + 3, path_in("S")), 0);
    ck_assert_int_eq(ckpt_step(path_in("S/checkpoint.safetensors")), step + 3);
}
END_TEST

START_TEST(test_full_disk_keeps_checkpoint)
{
    char data[400];
    snprintf(data, sizeof data, "%s/train.idx", dir);
    ck_assert_int_eq(run(TINY " --steps 4 --eval-every 0 --out %s", data, path_in("F")), 0);
    size_t n0;
    char *before = slurp(path_in("F/checkpoint.safetensors"), &n0);
    /* files may grow to 8 KiB only (the checkpoint is about 80 KiB): every write past that fails
     * with EFBIG, as on a full disk; SIGXFSZ is ignored so the write returns the error */
    ck_assert_int_eq(run_with("trap '' XFSZ; ulimit -f 8;", TINY " --resume --steps 8 --out %s", data, path_in("F")), 1);
    char *err = slurp(path_in("err"), NULL);
    ck_assert_msg(strstr(err, "not written") && strstr(err, "intact"), "stderr: %s", err);
    free(err);
    size_t n1;
    char *after = slurp(path_in("F/checkpoint.safetensors"), &n1);
    ck_assert_uint_eq(n0, n1);
    ck_assert_msg(memcmp(before, after, n0) == 0, "the previous checkpoint changed");
    free(before);
    free(after);
    ck_assert_int_eq(ckpt_step(path_in("F/checkpoint.safetensors")), 4);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s/F | grep -c tmp >/dev/null", dir);
    ck_assert_msg(system(cmd) != 0, "a temporary file was left behind");
}
END_TEST

START_TEST(test_bad_options_and_data)
{
    char data[400];
    snprintf(data, sizeof data, "%s/train.idx", dir);
    ck_assert_int_eq(run("--bogus 3"), 2);
    char *e = slurp(path_in("err"), NULL);
    ck_assert_ptr_nonnull(strstr(e, "--bogus"));
    free(e);
    ck_assert_int_eq(run("--data %s --scales 3 --features 4,4 --out %s", data, path_in("X")), 2);
    e = slurp(path_in("err"), NULL);
    ck_assert_ptr_nonnull(strstr(e, "--features"));
    free(e);
    ck_assert_int_eq(run("--lr -1"), 2);
    ck_assert_int_eq(run("--lr-schedule step --out %s", path_in("X")), 2);
    e = slurp(path_in("err"), NULL);
    ck_assert_ptr_nonnull(strstr(e, "--lr-schedule must be constant, cosine or linear"));
    free(e);
    ck_assert_int_eq(run("--lr-schedule cosine --lr-min 0.01 --out %s", path_in("X")), 2);
    e = slurp(path_in("err"), NULL);
    ck_assert_ptr_nonnull(strstr(e, "--lr-min"));
    free(e);
    ck_assert_int_eq(run("--decay-start -5"), 2);
    ck_assert_int_eq(run("--batch"), 2);
    ck_assert_int_eq(run("--data %s/none --out %s", dir, path_in("X")), 1);
    e = slurp(path_in("err"), NULL);
    ck_assert_ptr_nonnull(strstr(e, "none"));
    free(e);
    ck_assert_int_eq(run("--resume --out %s", path_in("nothing")), 1);
    e = slurp(path_in("err"), NULL);
    ck_assert_ptr_nonnull(strstr(e, "checkpoint.safetensors"));
    free(e);
    /* 8x8 cannot be split 4 times */
    ck_assert_int_eq(run("--data %s --scales 5 --features 4 --out %s", data, path_in("X")), 2);
    /* --help lists every option with its default */
    ck_assert_int_eq(run("--help"), 0);
    char *h = slurp(path_in("out"), NULL);
    const char *must[] = {"--scales", "--res-blocks", "--features", "--flow-batchnorm", "--alpha", "--lr", "--batch", "--l2",
                          "--clip", "--warmup", "--flip", "--threads", "--seed", "--steps", "--epochs", "--eval-every",
                          "--out", "--resume", "--config", "default: 0.001", "--lr-schedule", "--decay-start", "--lr-min",
                          "default: constant", "lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2"};
    for (size_t i = 0; i < sizeof must / sizeof must[0]; i++) ck_assert_msg(strstr(h, must[i]) != NULL, "--help lacks %s", must[i]);
    free(h);
}
END_TEST

START_TEST(test_config_file)
{
    char data[400];
    snprintf(data, sizeof data, "%s/train.idx", dir);
    FILE *f = fopen(path_in("cfg.json"), "w");
    fprintf(f, "{\"data\": \"%s\", \"scales\": 2, \"res_blocks\": 1, \"features\": [4, 6], \"batch\": 8, \"threads\": 1, "
               "\"steps\": 3, \"eval-every\": 0, \"eval_images\": 5, \"flow-batchnorm\": false}", data);
    fclose(f);
    ck_assert_int_eq(run("--config %s --out %s", path_in("cfg.json"), path_in("K")), 0);
    rnvp_model *m;
    rnvp_error err;
    ck_assert_int_eq(rnvp_model_load(&m, path_in("K/checkpoint.safetensors"), &err), RNVP_OK);
    const rnvp_config *c = rnvp_model_config(m);
    ck_assert_int_eq(c->features[1], 6);
    ck_assert_int_eq(c->flow_batchnorm, 0);
    rnvp_model_free(m);
    f = fopen(path_in("bad.json"), "w");
    fprintf(f, "{\"scales\": 2, \"nonsense\": 1}");
    fclose(f);
    ck_assert_int_eq(run("--config %s --out %s", path_in("bad.json"), path_in("K2")), 2);
    char *e = slurp(path_in("err"), NULL);
    ck_assert_ptr_nonnull(strstr(e, "nonsense"));
    free(e);
}
END_TEST

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* lines of text containing what */
static int count_lines_with(const char *text, const char *what)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, what)); p++) {
        n++;
        p = strchr(p, '\n');
        if (!p) break;
    }
    return n;
}

START_TEST(test_stale_tmp_removed)
{
    char data[400];
    snprintf(data, sizeof data, "%s/train.idx", dir);
    /* what a run SIGKILLed mid-write leaves, and names that are not the trainer's */
    const char *stale[] = {"checkpoint.safetensors.tmp.4194301", "best.safetensors.tmp.77", "metrics.jsonl.tmp",
                           "curve.svg.tmp"};
    const char *keep[] = {"notes.tmp", "checkpoint.safetensors.tmp.x1", "mine.safetensors.tmp.5", "checkpoint.safetensors.tmp."};
    ck_assert_int_eq(run(TINY " --steps 2 --eval-every 0 --out %s", data, path_in("T")), 0);
    char p[600];
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0: --resume; pass 1: a fresh run into a folder that has only the stale files */
        const char *sub = pass ? "U" : "T";
        if (pass) ck_assert_int_eq(mkdir(path_in("U"), 0755), 0);
        for (size_t i = 0; i < 4; i++) {
            snprintf(p, sizeof p, "%s/%s/%s", dir, sub, stale[i]);
            write_bytes(p, "cut short", 9);
            snprintf(p, sizeof p, "%s/%s/%s", dir, sub, keep[i]);
            write_bytes(p, "not ours", 8);
        }
        if (pass) ck_assert_int_eq(run(TINY " --steps 2 --eval-every 0 --out %s", data, path_in("U")), 0);
        else ck_assert_int_eq(run(TINY " --resume --steps 4 --eval-every 0 --out %s", data, path_in("T")), 0);
        for (size_t i = 0; i < 4; i++) {
            snprintf(p, sizeof p, "%s/%s/%s", dir, sub, stale[i]);
            ck_assert_msg(!exists(p), "pass %d: %s was not removed", pass, stale[i]);
            snprintf(p, sizeof p, "%s/%s/%s", dir, sub, keep[i]);
            ck_assert_msg(exists(p), "pass %d: %s (not the trainer's) was removed", pass, keep[i]);
        }
        char *e = slurp(path_in("err"), NULL);
        ck_assert_msg(count_lines_with(e, "stale temporary") == 1, "pass %d: not one line on it: %s", pass, e);
        ck_assert_msg(strstr(e, "removed 4 stale temporary files") && strstr(e, stale[0]) && strstr(e, stale[3]),
                      "pass %d: %s", pass, e);
        free(e);
        snprintf(p, sizeof p, "%s/%s/checkpoint.safetensors", dir, sub);
        ck_assert_int_eq(ckpt_step(p), pass ? 2 : 4);
    }
    /* nothing stale: nothing said */
    ck_assert_int_eq(run(TINY " --resume --steps 5 --eval-every 0 --out %s", data, path_in("T")), 0);
    char *e = slurp(path_in("err"), NULL);
    ck_assert_msg(!strstr(e, "stale"), "%s", e);
    free(e);
}
END_TEST

START_TEST(test_one_trainer_per_out)
{
    char data[400], args[1500];
    snprintf(data, sizeof data, "%s/train.idx", dir);
    ck_assert_int_eq(run(TINY " --steps 2 --eval-every 0 --out %s", data, path_in("W")), 0);
    snprintf(args, sizeof args, "exec %s " TINY " --resume --steps 100000000 --eval-every 0 --out %s >%s/out1 2>%s/err1",
             exe, data, path_in("W"), dir, dir);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", args, (char *)NULL);
        _exit(127);
    }
    /* it holds the folder once it prints its workspace line */
    int started = 0;
    for (int i = 0; i < 1200 && !started; i++) {
        char *o = slurp(path_in("out1"), NULL);
        started = o && strstr(o, "workspace");
        free(o);
        if (!started) usleep(50000);
    }
    if (!started) kill(pid, SIGKILL), waitpid(pid, NULL, 0);
    ck_assert_msg(started, "the first trainer did not start");
    /* a second trainer on the same folder, fresh or resuming, is refused and writes nothing */
    int rc[2];
    char msg[2][600], want[32];
    snprintf(want, sizeof want, "pid %ld", (long)pid);
    rc[0] = run(TINY " --steps 3 --eval-every 0 --out %s", data, path_in("W"));
    char *e = slurp(path_in("err"), NULL);
    snprintf(msg[0], sizeof msg[0], "%s", e);
    free(e);
    rc[1] = run(TINY " --resume --steps 3 --eval-every 0 --out %s", data, path_in("W"));
    e = slurp(path_in("err"), NULL);
    snprintf(msg[1], sizeof msg[1], "%s", e);
    free(e);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    for (int k = 0; k < 2; k++) {
        ck_assert_msg(rc[k] == 1, "%s second trainer: exit %d, stderr: %s", k ? "resuming" : "fresh", rc[k], msg[k]);
        ck_assert_msg(strstr(msg[k], "in use by another realnvp-train") && strstr(msg[k], want) && strstr(msg[k], path_in("W")),
                      "unclear refusal: %s", msg[k]);
    }
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the first trainer did not exit 0 on SIGTERM");
    /* the checkpoint is the first trainer's last one */
    char *o = slurp(path_in("out1"), NULL);
    const char *at = o ? strstr(o, "terminated (SIGTERM) at step ") : NULL;
    ck_assert_msg(at != NULL, "first trainer's output: %s", o);
    long step = atol(at + strlen("terminated (SIGTERM) at step "));
    free(o);
    ck_assert_int_eq(ckpt_step(path_in("W/checkpoint.safetensors")), step);
    /* the lock went with the first trainer: the folder can be resumed now */
    ck_assert_int_eq(run(TINY " --resume --steps %ld --eval-every 0 --out %s", data, step + 2, path_in("W")), 0);
    ck_assert_int_eq(ckpt_step(path_in("W/checkpoint.safetensors")), step + 2);
}
END_TEST

static Suite *train_suite(void)
{
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("train");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_idx_ok_and_gz);
    tcase_add_test(tc, test_idx_errors);
    tcase_add_test(tc, test_cifar_and_png_dirs);
    tcase_add_test(tc, test_lr_schedule);
    tcase_add_test(tc, test_resume_is_exact);
    tcase_add_test(tc, test_resume_onto_cosine_is_exact);
    tcase_add_test(tc, test_loss_falls_and_outputs);
    tcase_add_test(tc, test_resume_default_threads);
    tcase_add_test(tc, test_sigterm_saves_and_resumes);
    tcase_add_test(tc, test_full_disk_keeps_checkpoint);
    tcase_add_test(tc, test_bad_options_and_data);
    tcase_add_test(tc, test_config_file);
    tcase_add_test(tc, test_stale_tmp_removed);
    tcase_add_test(tc, test_one_trainer_per_out);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(train_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
