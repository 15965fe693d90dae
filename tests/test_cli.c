/* test_cli.c: bin/realnvp end to end, run from the repository root: init, info, sample, log-prob,
 * encode/decode round trips, help, and bad arguments. Leaves out the flow's numerics (test_flow.c). */
#include "realnvp.h"

#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CONFIG                                                                                  \
    "{\"height\":8,\"width\":8,\"channels\":1,\"num_scales\":2,\"res_blocks\":1,\"features\":[4,4]," \
    "\"alpha\":0.05,\"bn_eps\":1e-5,\"flow_batchnorm\":true,\"flow_bn_eps\":1e-4}"
#define D 64

static char dir[64];        /* a fresh directory for this run */
static char model[128];     /* dir/m.safetensors, made by the fixture */
static const char *exe = "bin/realnvp";
static int setup_ok;

/* ---- helpers ---- */

static char *path_in(const char *name)
{
    static char buf[4][400];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    ck_assert_int_eq(fclose(f), 0);
}

/* the whole file, NUL-terminated (len may be NULL); NULL if it cannot be read */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    size_t got;
    while ((got = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n < 2) b = realloc(b, cap *= 2);
    }
    fclose(f);
    b[n] = 0;
    if (len) *len = n;
    return b;
}

/* Runs `exe ARGS` from the current directory with stdout to dir/out and stderr to dir/err.
 * Returns the exit status, or -1 when it did not exit normally (a crash). */
__attribute__((format(printf, 1, 2))) static int run(const char *fmt, ...)
{
    char args[1024], cmd[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s %s >%s/out 2>%s/err", exe, args, dir, dir);
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

static char *out_text(void) { return slurp(path_in("out"), NULL); }
static char *err_text(void) { return slurp(path_in("err"), NULL); }

/* stderr holds exactly one non-empty line */
static void assert_one_line_error(const char *what)
{
    char *e = err_text();
    ck_assert_ptr_nonnull(e);
    size_t n = strlen(e);
    ck_assert_msg(n > 1 && e[n - 1] == '\n' && !memchr(e, '\n', n - 1),
                  "%s: stderr is not one line: [%s]", what, e);
    ck_assert_msg(!strncmp(e, "realnvp", 7), "%s: stderr does not start with 'realnvp': %s", what, e);
    free(e);
}

static void assert_no_stderr(const char *what)
{
    char *e = err_text();
    ck_assert_msg(e && !*e, "%s: unexpected stderr: %s", what, e ? e : "(none)");
    free(e);
}

static rnvp_model *load(void)
{
    rnvp_model *m = NULL;
    rnvp_error e;
    ck_assert_msg(rnvp_model_load(&m, model, &e) == RNVP_OK, "%s", e.msg);
    return m;
}

/* (C, H, W) pixels of a PNG file, with its size checked */
static void read_png(uint8_t *px, const char *path, int h, int w)
{
    rnvp_error e;
    ck_assert_msg(rnvp_png_read(px, path, 1, h, w, &e) == RNVP_OK, "%s", e.msg);
}

static void png_size(const char *path, int *c, int *h, int *w)
{
    size_t len;
    char *b = slurp(path, &len);
    ck_assert_msg(b != NULL, "%s was not written", path);
    rnvp_error e;
    ck_assert_msg(rnvp_png_info(b, len, c, h, w, &e) == RNVP_OK, "%s", e.msg);
    free(b);
}

/* Two single images to work with: dir/a.png and dir/b.png, samples of the model. */
static void make_images(void)
{
    ck_assert_int_eq(run("sample --model %s -n 1 --seed 2 --temp 1 -o %s", model, path_in("a.png")), 0);
    ck_assert_int_eq(run("sample --model %s -n 1 --seed 3 --temp 1 -o %s", model, path_in("b.png")), 0);
}

static void remove_dir(void)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) unlink(path_in(de->d_name));
    closedir(d);
    rmdir(dir);
}

/* unchecked fixture: runs once in the runner's process */
static void setup(void)
{
    const char *x = getenv("REALNVP_BIN");
    if (x && *x) exe = x;
    strcpy(dir, "/tmp/rnvp_test_cli_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return;
    }
    snprintf(model, sizeof model, "%s/m.safetensors", dir);
    FILE *f = fopen(path_in("config.json"), "w");
    if (!f) return;
    fputs(CONFIG, f);
    fclose(f);
    if (access(exe, X_OK)) {
        fprintf(stderr, "test_cli: %s is missing (run from the repository root after make)\n", exe);
        return;
    }
    setup_ok = run("init --config %s --seed 1 -o %s", path_in("config.json"), model) == 0;
}

static void teardown(void) { remove_dir(); }

#define NEED_SETUP() ck_assert_msg(setup_ok, "setup failed: %s init did not work (is it built? run from the repository root)", exe)

/* ---- tests ---- */

START_TEST(test_init_info)
{
    NEED_SETUP();
    ck_assert_int_eq(run("init --config %s --seed 7 -o %s", path_in("config.json"), path_in("m7.st")), 0);
    assert_no_stderr("init");
    ck_assert_int_eq(run("init --config %s --seed 7 -o %s", path_in("config.json"), path_in("m7b.st")), 0);
    size_t l1, l2;
    char *a = slurp(path_in("m7.st"), &l1), *b = slurp(path_in("m7b.st"), &l2);
    ck_assert_msg(a && b && l1 == l2 && !memcmp(a, b, l1), "init is not deterministic in the seed");
    free(a);
    free(b);

    ck_assert_int_eq(run("info %s", path_in("m7.st")), 0);
    assert_no_stderr("info");
    char *o = out_text();
    rnvp_model *m = load();
    char want[64];
    snprintf(want, sizeof want, "parameters   %zu in %d tensors", rnvp_model_num_params(m), rnvp_model_num_tensors(m));
    rnvp_model_free(m);
    const char *needles[] = {"D = 64", "8 x 8 x 1 (W x H x C)", "10 couplings", "z_0", "z_1", "2 x 4 x 4",
                             "offset 32", want, "FLOPs/image", "random init, seed 7", "\"num_scales\":2",
                             "format     realnvp"};
    for (size_t i = 0; i < sizeof needles / sizeof *needles; i++)
        ck_assert_msg(strstr(o, needles[i]), "info output lacks '%s':\n%s", needles[i], o);
    free(o);
}
END_TEST

START_TEST(test_sample_grid)
{
    NEED_SETUP();
    int c, h, w;
    ck_assert_int_eq(run("sample --model %s -n 5 -o %s", model, path_in("g5.png")), 0);
    assert_no_stderr("sample");
    png_size(path_in("g5.png"), &c, &h, &w);   /* 3 columns (about sqrt 5), 2 rows, 2-pixel borders */
    ck_assert_int_eq(c, 1);
    ck_assert_int_eq(w, 3 * 8 + 2 * 2);
    ck_assert_int_eq(h, 2 * 8 + 2);
    ck_assert_int_eq(run("sample --model %s -n 5 --cols 5 -o %s", model, path_in("g5r.png")), 0);
    png_size(path_in("g5r.png"), &c, &h, &w);
    ck_assert_int_eq(w, 5 * 8 + 4 * 2);
    ck_assert_int_eq(h, 8);
    ck_assert_int_eq(run("sample --model %s -n 1 --seed 9 -o %s", model, path_in("one.png")), 0);
    png_size(path_in("one.png"), &c, &h, &w);
    ck_assert_int_eq(w, 8);
    ck_assert_int_eq(h, 8);

    /* defaults -n 16 --temp 0.7 --seed 1: the library's samples, as a 4x4 grid */
    ck_assert_int_eq(run("--threads 1 sample --model %s -o %s", model, path_in("g16.png")), 0);
    png_size(path_in("g16.png"), &c, &h, &w);
    ck_assert_int_eq(w, 4 * 8 + 3 * 2);
    ck_assert_int_eq(h, 4 * 8 + 3 * 2);
    uint8_t grid[38 * 38], px[16 * D];
    read_png(grid, path_in("g16.png"), 38, 38);
    rnvp_model *m = load();
    rnvp_ctx *ctx;
    rnvp_error e;
    ck_assert_int_eq(rnvp_ctx_create(&ctx, m, 16, &e), RNVP_OK);
    ck_assert_int_eq(rnvp_sample(ctx, px, NULL, 16, 0.7, 1, &e), RNVP_OK);
    for (int i = 0; i < 16; i++)
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++)
                ck_assert_int_eq(grid[((i / 4) * 10 + y) * 38 + (i % 4) * 10 + x], px[i * D + y * 8 + x]);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);

    /* the same seed, the same file */
    ck_assert_int_eq(run("sample --model %s --threads 2 -o %s", model, path_in("g16b.png")), 0);
    size_t l1, l2;
    char *a = slurp(path_in("g16.png"), &l1), *b = slurp(path_in("g16b.png"), &l2);
    ck_assert_msg(l1 == l2 && !memcmp(a, b, l1), "sample is not deterministic in the seed");
    free(a);
    free(b);
}
END_TEST

/* png_bits_per_dim and ood_score in log-prob --json; the ends of an interpolation are the inputs */
START_TEST(test_ood_and_interpolate)
{
    NEED_SETUP();
    make_images();
    /* a constant image compresses far better than a sample of a random model */
    uint8_t flat[D];
    memset(flat, 200, sizeof flat);
    rnvp_error e;
    ck_assert_int_eq(rnvp_png_write_grid(path_in("flat.png"), flat, 1, 1, 8, 8, 1, &e), RNVP_OK);
    ck_assert_int_eq(run("log-prob --model %s --json %s %s", model, path_in("a.png"), path_in("flat.png")), 0);
    char *o = out_text();
    double pb[2] = {0, 0};
    int k = 0;
    for (char *line = strtok(o, "\n"); line && k < 2; line = strtok(NULL, "\n"), k++) {
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        ck_assert_msg(j != NULL, "not JSON: %s", line);
        double bpd = json_real_value(json_object_get(j, "bits_per_dim"));
        pb[k] = json_number_value(json_object_get(j, "png_bits_per_dim"));
        double ood = json_number_value(json_object_get(j, "ood_score"));
        ck_assert(json_is_number(json_object_get(j, "png_bits_per_dim")));
        ck_assert_double_eq_tol(ood, bpd - pb[k], 1e-9 * (1 + fabs(ood)));
        json_decref(j);
    }
    free(o);
    ck_assert_int_eq(k, 2);
    ck_assert_msg(pb[1] < pb[0], "png bits/dim: flat %.3f not below the sample's %.3f", pb[1], pb[0]);
    /* independently: the IDAT bytes of a level-9 encoding of the flat image */
    double direct;
    ck_assert_int_eq(rnvp_png_bits_per_dim(&direct, flat, 1, 8, 8, &e), RNVP_OK);
    ck_assert_double_eq_tol(direct, pb[1], 1e-12);
    ck_assert(direct > 0 && direct < 8);

    for (int sph = 0; sph < 2; sph++) {
        ck_assert_int_eq(run("interpolate --model %s --steps 5 --mode %s -o %s %s %s", model, sph ? "spherical" : "linear",
                             path_in("strip.png"), path_in("a.png"), path_in("b.png")), 0);
        assert_no_stderr("interpolate");
        int c, h, w;
        png_size(path_in("strip.png"), &c, &h, &w);
        ck_assert_int_eq(h, 8);
        ck_assert_int_eq(w, 5 * 8 + 4 * 2);
        uint8_t strip[8 * 48], a[D], b[D];
        read_png(strip, path_in("strip.png"), 8, 48);
        read_png(a, path_in("a.png"), 8, 8);
        read_png(b, path_in("b.png"), 8, 8);
        int diff_a = 0, diff_b = 0, diff_mid = 0;
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++) {
                diff_a += strip[y * 48 + x] != a[y * 8 + x];
                diff_b += strip[y * 48 + 40 + x] != b[y * 8 + x];
                diff_mid += strip[y * 48 + 20 + x] != a[y * 8 + x];
            }
        ck_assert_msg(diff_a == 0 && diff_b == 0, "ends differ from the inputs: %d and %d pixels", diff_a, diff_b);
        ck_assert_msg(diff_mid > 0, "the middle of the strip is just A");
    }
    ck_assert_int_eq(run("interpolate --model %s --steps 1 -o %s %s %s", model, path_in("s.png"), path_in("a.png"), path_in("b.png")), 2);
    assert_one_line_error("steps 1");
    ck_assert_int_eq(run("interpolate --model %s --mode cubic -o %s %s %s", model, path_in("s.png"), path_in("a.png"), path_in("b.png")), 2);
    ck_assert_int_eq(run("interpolate --model %s -o %s %s", model, path_in("s.png"), path_in("a.png")), 2);
}
END_TEST

START_TEST(test_log_prob)
{
    NEED_SETUP();
    make_images();
    ck_assert_int_eq(run("log-prob --model %s --json %s %s", model, path_in("a.png"), path_in("b.png")), 0);
    assert_no_stderr("log-prob --json");
    char *o = out_text();

    /* the library's values for the same pixels */
    uint8_t px[2 * D];
    read_png(px, path_in("a.png"), 8, 8);
    read_png(px + D, path_in("b.png"), 8, 8);
    rnvp_model *m = load();
    rnvp_ctx *ctx;
    rnvp_error e;
    double lp[2], bpd[2];
    ck_assert_int_eq(rnvp_ctx_create(&ctx, m, 2, &e), RNVP_OK);
    ck_assert_int_eq(rnvp_log_prob(ctx, lp, bpd, px, NULL, 2, &e), RNVP_OK);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);

    char *line = o;
    for (int i = 0; i < 2; i++) {
        char *nl = strchr(line, '\n');
        ck_assert_msg(nl != NULL, "log-prob --json printed fewer than 2 lines:\n%s", o);
        *nl = 0;
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        ck_assert_msg(j != NULL, "line %d is not JSON (%s): %s", i, je.text, line);
        ck_assert_int_eq(json_object_size(j), 5);   /* file, log_prob, bits_per_dim, png_bits_per_dim, ood_score */
        ck_assert_str_eq(json_string_value(json_object_get(j, "file")), path_in(i ? "b.png" : "a.png"));
        double l = json_number_value(json_object_get(j, "log_prob"));
        double b = json_number_value(json_object_get(j, "bits_per_dim"));
        ck_assert(json_is_real(json_object_get(j, "log_prob")));
        ck_assert(isfinite(l) && l < 0);
        ck_assert_msg(fabs(l - lp[i]) <= 1e-6 * fabs(lp[i]), "log_prob %.17g, the library says %.17g", l, lp[i]);
        ck_assert_msg(fabs(b - bpd[i]) <= 1e-6 * bpd[i], "bits_per_dim %.17g, the library says %.17g", b, bpd[i]);
        ck_assert(fabs(b + l / (D * log(2.0))) < 1e-9 * b);
        json_decref(j);
        line = nl + 1;
    }
    ck_assert_str_eq(line, "");
    free(o);

    /* --batch 1 gives the same numbers; the plain table names both files */
    ck_assert_int_eq(run("log-prob --model %s --json --batch 1 %s %s", model, path_in("a.png"), path_in("b.png")), 0);
    o = out_text();
    json_t *j = json_loads(o, JSON_DISABLE_EOF_CHECK, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert(fabs(json_real_value(json_object_get(j, "log_prob")) - lp[0]) <= 1e-6 * fabs(lp[0]));
    json_decref(j);
    free(o);
    ck_assert_int_eq(run("log-prob --model %s %s %s", model, path_in("a.png"), path_in("b.png")), 0);
    o = out_text();
    ck_assert_ptr_nonnull(strstr(o, "bits/dim"));
    ck_assert_ptr_nonnull(strstr(o, path_in("a.png")));
    ck_assert_ptr_nonnull(strstr(o, path_in("b.png")));
    char num[32];
    snprintf(num, sizeof num, "%.4f", lp[1]);
    ck_assert_msg(strstr(o, num), "table lacks %s:\n%s", num, o);
    free(o);

    /* a file of the wrong size: exit 1, one line naming the sizes; earlier images are printed */
    ck_assert_int_eq(run("sample --model %s -n 4 -o %s", model, path_in("g4.png")), 0);
    ck_assert_int_eq(run("log-prob --model %s --json %s %s", model, path_in("a.png"), path_in("g4.png")), 1);
    assert_one_line_error("log-prob wrong size");
    char *er = err_text();
    ck_assert_msg(strstr(er, "image is 18x18x1, the model expects 8x8x1 (W x H x C)"), "%s", er);
    free(er);
    o = out_text();
    ck_assert_ptr_nonnull(strstr(o, "a.png"));
    ck_assert_ptr_null(strstr(o, "g4.png"));
    free(o);
}
END_TEST

START_TEST(test_encode_decode)
{
    NEED_SETUP();
    make_images();
    ck_assert_int_eq(run("encode --model %s %s", model, path_in("a.png")), 0);
    assert_no_stderr("encode");
    rename(path_in("out"), path_in("z.json"));
    json_error_t je;
    json_t *j = json_load_file(path_in("z.json"), 0, &je);
    ck_assert_msg(j != NULL, "encode's output is not JSON: %s", je.text);
    ck_assert_str_eq(json_string_value(json_object_get(j, "model")), model);
    ck_assert_str_eq(json_string_value(json_object_get(j, "file")), path_in("a.png"));
    ck_assert(json_is_real(json_object_get(j, "log_prob")));
    json_t *lay = json_object_get(j, "layout"), *lat = json_object_get(j, "latents");
    ck_assert_int_eq(json_array_size(lay), 2);
    for (int s = 0; s < 2; s++) {
        json_t *p = json_array_get(lay, s);
        ck_assert_int_eq(json_integer_value(json_object_get(p, "offset")), 32 * s);
        ck_assert_int_eq(json_integer_value(json_object_get(p, "channels")), 2);
        ck_assert_int_eq(json_integer_value(json_object_get(p, "height")), 4);
        ck_assert_int_eq(json_integer_value(json_object_get(p, "width")), 4);
    }
    ck_assert_int_eq(json_array_size(lat), D);

    /* the latents are the library's, exactly (9 digits round-trip float32) */
    uint8_t a[D], b[D], back[D];
    read_png(a, path_in("a.png"), 8, 8);
    read_png(b, path_in("b.png"), 8, 8);
    rnvp_model *m = load();
    rnvp_ctx *ctx;
    rnvp_error e;
    float z[D];
    double lp;
    ck_assert_int_eq(rnvp_ctx_create(&ctx, m, 2, &e), RNVP_OK);
    ck_assert_int_eq(rnvp_encode(ctx, z, &lp, a, NULL, 1, &e), RNVP_OK);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);
    for (int i = 0; i < D; i++)
        ck_assert_msg((float)json_number_value(json_array_get(lat, i)) == z[i], "latent %d: %.9g vs %.9g", i,
                      json_number_value(json_array_get(lat, i)), (double)z[i]);
    ck_assert(fabs(json_real_value(json_object_get(j, "log_prob")) - lp) <= 1e-9 * fabs(lp));
    json_decref(j);

    /* decode gives back the same pixels, from a file and from standard input */
    ck_assert_int_eq(run("decode --model %s %s -o %s", model, path_in("z.json"), path_in("back.png")), 0);
    assert_no_stderr("decode");
    read_png(back, path_in("back.png"), 8, 8);
    ck_assert_mem_eq(back, a, D);
    ck_assert_int_eq(run("decode --model %s -o %s - < %s", model, path_in("back2.png"), path_in("z.json")), 0);
    read_png(back, path_in("back2.png"), 8, 8);
    ck_assert_mem_eq(back, a, D);

    /* several images: encode prints arrays, decode writes a grid */
    ck_assert_int_eq(run("encode --model %s %s %s", model, path_in("a.png"), path_in("b.png")), 0);
    rename(path_in("out"), path_in("z2.json"));
    j = json_load_file(path_in("z2.json"), 0, &je);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_array_size(json_object_get(j, "latents")), 2);
    ck_assert_int_eq(json_array_size(json_array_get(json_object_get(j, "latents"), 1)), D);
    ck_assert_int_eq(json_array_size(json_object_get(j, "files")), 2);
    /* the {"latents": [[...], [...]]} form alone is enough */
    json_t *only = json_pack("{sO}", "latents", json_object_get(j, "latents"));
    ck_assert_int_eq(json_dump_file(only, path_in("z3.json"), 0), 0);
    json_decref(only);
    json_decref(j);
    ck_assert_int_eq(run("decode --model %s %s -o %s", model, path_in("z3.json"), path_in("grid.png")), 0);
    int c, h, w;
    png_size(path_in("grid.png"), &c, &h, &w);
    ck_assert_int_eq(w, 18);
    ck_assert_int_eq(h, 8);
    uint8_t g[18 * 8];
    read_png(g, path_in("grid.png"), 8, 18);
    for (int y = 0; y < 8; y++) {
        ck_assert_mem_eq(g + y * 18, a + y * 8, 8);
        ck_assert_mem_eq(g + y * 18 + 10, b + y * 8, 8);
        ck_assert_int_eq(g[y * 18 + 8], 255);   /* the white border */
    }
    ck_assert_int_eq(run("decode --model %s --cols 1 %s -o %s", model, path_in("z2.json"), path_in("grid1.png")), 0);
    png_size(path_in("grid1.png"), &c, &h, &w);
    ck_assert_int_eq(w, 8);
    ck_assert_int_eq(h, 18);
}
END_TEST

/* a latents file with latents[k] replaced by `val` (NULL: drop the last value) */
static void write_latents_variant(const char *name, int k, const char *val)
{
    char *s = malloc(D * 16 + 64), *p = s;
    p += sprintf(p, "{\"latents\": [");
    int n = val ? D : D - 1;
    for (int i = 0; i < n; i++) p += sprintf(p, "%s%s", i ? ", " : "", i == k && val ? val : "0.25");
    sprintf(p, "]}\n");
    write_text(path_in(name), s);
    free(s);
}

START_TEST(test_decode_errors)
{
    NEED_SETUP();
    struct { const char *name; int k; const char *val; const char *needle; } cases[] = {
        {"short.json", -1, NULL, "63 values"},
        {"big.json", 5, "1e300", "[5]"},
        {"nan.json", 7, "NaN", "finite"},
        {"inf.json", 7, "1e999", "finite"},
        {"str.json", 3, "\"x\"", "[3] is not a number"},
        {"null.json", 3, "null", "[3] is not a number"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        write_latents_variant(cases[i].name, cases[i].k, cases[i].val);
        ck_assert_int_eq(run("decode --model %s %s -o %s", model, path_in(cases[i].name), path_in("x.png")), 1);
        assert_one_line_error(cases[i].name);
        char *er = err_text();
        ck_assert_msg(strstr(er, cases[i].needle), "%s: '%s' not in: %s", cases[i].name, cases[i].needle, er);
        free(er);
        ck_assert_int_ne(access(path_in("x.png"), F_OK), 0);   /* nothing written */
    }
    const char *bad[] = {
        "[1, 2]",
        "{\"latents\": []}",
        "{\"z\": [1]}",
        "{\"latents\": [[0.5], 3]}",
        "{\"latents\": [0.1,",
        "{\"layout\": [{\"offset\": 0, \"channels\": 4, \"height\": 4, \"width\": 4}], \"latents\": [0]}",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_text(path_in("bad.json"), bad[i]);
        ck_assert_msg(run("decode --model %s %s -o %s", model, path_in("bad.json"), path_in("x.png")) == 1,
                      "decode accepted %s", bad[i]);
        assert_one_line_error(bad[i]);
    }
}
END_TEST

/* --precision: bf16 where the CPU has AVX512_BF16 (log p close to fp32's on the shipped model,
 * whose 32-channel convolutions then run in bf16), else refused with exit status 2 and one line
 * naming what is missing; a bad value is a usage error everywhere */
START_TEST(test_precision)
{
    NEED_SETUP();
    const char *shipped = "models/fashion-mnist/model.safetensors", *png = "tests/fuzz/corpus_png/grey28.png";
    rnvp_error e;
    unsetenv("REALNVP_CONV");   /* bf16 needs the default (AVX-512) kernels */
    unsetenv("REALNVP_PRECISION");
    ck_assert_int_eq(run("log-prob --model %s --json %s", shipped, png), 0);
    char *o = out_text();
    json_t *j = json_loads(o, JSON_DISABLE_EOF_CHECK, NULL);
    ck_assert_ptr_nonnull(j);
    const double l32 = json_real_value(json_object_get(j, "log_prob"));
    json_decref(j);
    free(o);
    const int st = run("log-prob --precision bf16 --model %s --json %s", shipped, png);
    if (rnvp_precision_check(RNVP_PRECISION_BF16, &e) == RNVP_OK) {
        ck_assert_int_eq(st, 0);
        o = out_text();
        j = json_loads(o, JSON_DISABLE_EOF_CHECK, NULL);
        ck_assert_ptr_nonnull(j);
        const double l16 = json_real_value(json_object_get(j, "log_prob"));
        ck_assert_msg(l16 != l32 && fabs(l16 - l32) <= 1e-3 * fabs(l32), "bf16 %.17g fp32 %.17g", l16, l32);
        json_decref(j);
        free(o);
    } else {
        ck_assert_int_eq(st, 2);
        assert_one_line_error("--precision bf16 without AVX512_BF16");
        char *er = err_text();
        ck_assert_msg(strstr(er, "AVX512_BF16"), "%s", er);
        free(er);
    }
    ck_assert_int_eq(run("--precision fp16 info %s", model), 2);
    assert_one_line_error("--precision fp16");
    char *er = err_text();
    ck_assert_msg(strstr(er, "fp32 or bf16"), "%s", er);
    free(er);
    /* a bad REALNVP_PRECISION stops what computes (exit 1, one line), not info or --help */
    setenv("REALNVP_PRECISION", "fp16", 1);
    ck_assert_int_eq(run("info %s", model), 0);
    ck_assert_int_eq(run("log-prob --model %s %s", shipped, png), 1);
    assert_one_line_error("REALNVP_PRECISION=fp16");
    er = err_text();
    ck_assert_msg(strstr(er, "REALNVP_PRECISION=fp16") && strstr(er, "fp32 or bf16"), "%s", er);
    free(er);
    unsetenv("REALNVP_PRECISION");
}
END_TEST

START_TEST(test_bad_arguments)
{
    NEED_SETUP();
    make_images();
    write_text(path_in("badconfig.json"), "{\"height\": 8}");
    struct { int status; const char *args; } cases[] = {
        {2, ""},
        {2, "frobnicate"},
        {2, "--bogus"},
        {2, "--threads 0 info MODEL"},
        {2, "--threads x info MODEL"},
        {2, "info"},
        {2, "info MODEL MODEL"},
        {1, "info DIR/missing.st"},
        {1, "info DIR/config.json"},
        {2, "log-prob DIR/a.png"},
        {2, "log-prob --model MODEL"},
        {2, "log-prob --model MODEL --batch 0 DIR/a.png"},
        {2, "log-prob --model MODEL --frob DIR/a.png"},
        {1, "log-prob --model MODEL DIR/missing.png"},
        {1, "log-prob --model MODEL DIR/config.json"},
        {1, "log-prob --model DIR/missing.st DIR/a.png"},
        {2, "encode DIR/a.png"},
        {2, "encode --model MODEL"},
        {1, "encode --model MODEL DIR/missing.png"},
        {2, "decode --model MODEL DIR/z.json"},
        {2, "decode --model MODEL -o DIR/x.png"},
        {1, "decode --model MODEL DIR/missing.json -o DIR/x.png"},
        {2, "sample --model MODEL"},
        {2, "sample -o DIR/x.png"},
        {2, "sample --model MODEL -o DIR/x.png --temp abc"},
        {2, "sample --model MODEL -o DIR/x.png --temp -1"},
        {2, "sample --model MODEL -o DIR/x.png -n 0"},
        {2, "sample --model MODEL -o DIR/x.png -n 2x"},
        {2, "sample --model MODEL -o DIR/x.png --seed"},
        {2, "sample --model MODEL -o DIR/x.png --seed -4"},
        {2, "sample --model MODEL -o DIR/x.png --cols 0"},
        {2, "sample --model MODEL -o DIR/x.png extra"},
        {1, "sample --model MODEL -o DIR/nodir/x.png"},
        {2, "init --config DIR/config.json -o DIR/x.st"},
        {2, "init --seed 1 -o DIR/x.st"},
        {2, "init --config DIR/config.json --seed 1"},
        {1, "init --config DIR/missing.json --seed 1 -o DIR/x.st"},
        {1, "init --config DIR/badconfig.json --seed 1 -o DIR/x.st"},
        {1, "init --config DIR/a.png --seed 1 -o DIR/x.st"},
        {2, "help frobnicate"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        /* substitute MODEL and DIR */
        char args[512] = "", *q = args;
        for (const char *p = cases[i].args; *p;) {
            if (!strncmp(p, "MODEL", 5)) q += sprintf(q, "%s", model), p += 5;
            else if (!strncmp(p, "DIR", 3)) q += sprintf(q, "%s", dir), p += 3;
            else *q++ = *p++, *q = 0;
        }
        int st = run("%s", args);
        ck_assert_msg(st == cases[i].status, "realnvp %s: exit %d, expected %d", cases[i].args, st, cases[i].status);
        assert_one_line_error(cases[i].args);
        char *o = out_text();
        ck_assert_msg(o && !*o, "realnvp %s: printed to stdout: %s", cases[i].args, o);
        free(o);
    }
    ck_assert_int_ne(access(path_in("x.st"), F_OK), 0);
    ck_assert_int_ne(access(path_in("x.png"), F_OK), 0);
}
END_TEST

START_TEST(test_help_version)
{
    NEED_SETUP();
    const char *cmds[] = {"info", "log-prob", "encode", "decode", "sample", "init"};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        char want[64];
        snprintf(want, sizeof want, "Usage: realnvp %s ", cmds[i]);
        ck_assert_int_eq(run("%s --help", cmds[i]), 0);
        assert_no_stderr(cmds[i]);
        char *o = out_text();
        ck_assert_msg(!strncmp(o, want, strlen(want)), "%s --help: %s", cmds[i], o);
        ck_assert_int_eq(run("help %s", cmds[i]), 0);
        char *o2 = out_text();
        ck_assert_str_eq(o, o2);
        free(o);
        free(o2);
        /* --help wins over missing arguments */
        ck_assert_int_eq(run("%s -h --threads 2", cmds[i]), 0);
    }
    ck_assert_int_eq(run("--help"), 0);
    char *o = out_text();
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) ck_assert_ptr_nonnull(strstr(o, cmds[i]));
    free(o);
    ck_assert_int_eq(run("--version"), 0);
    o = out_text();
    ck_assert_msg(!strncmp(o, "realnvp " RNVP_VERSION, strlen("realnvp " RNVP_VERSION)), "%s", o);
    free(o);
}
END_TEST

static Suite *cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *t = tcase_create("cli");
    tcase_add_unchecked_fixture(t, setup, teardown);
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_init_info);
    tcase_add_test(t, test_sample_grid);
    tcase_add_test(t, test_log_prob);
    tcase_add_test(t, test_ood_and_interpolate);
    tcase_add_test(t, test_encode_decode);
    tcase_add_test(t, test_decode_errors);
    tcase_add_test(t, test_bad_arguments);
    tcase_add_test(t, test_precision);
    tcase_add_test(t, test_help_version);
    suite_add_tcase(s, t);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    /* the same OpenBLAS kernels as bin/realnvp, so the library's numbers here equal its output bit for bit */
    rnvp_blas_select_core(argv);
    SRunner *r = srunner_create(cli_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
