/* realnvp.c: bin/realnvp on the public API: info, log-prob, encode, decode, sample and init.
 * Leaves out training (bin/realnvp-train), serving (bin/realnvp-server) and all internals. */
#include "realnvp.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* exit statuses */
#define EXIT_RUN 1     /* a file, model or computation failed */
#define EXIT_USAGE 2   /* a bad command line */

#define MAX_CONFIG_BYTES (1 << 20)

/* ---- messages ---- */

/* One line to stderr, control characters (newlines in file names) replaced by '?'. */
static void say(const char *prefix, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20) *p = '?';
    fprintf(stderr, "%s%s\n", prefix, msg);
}

/* A run-time failure: "realnvp: MESSAGE". Returns EXIT_RUN. */
__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    say("realnvp: ", fmt, ap);
    va_end(ap);
    return EXIT_RUN;
}

static const char *cur_cmd = "";   /* the subcommand, for usage errors */

/* A bad command line: "realnvp CMD: MESSAGE (see realnvp CMD --help)". Returns EXIT_USAGE. */
__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    char msg[768], prefix[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(prefix, sizeof prefix, "realnvp%s%s: ", *cur_cmd ? " " : "", cur_cmd);
    fprintf(stderr, "%s", prefix);
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20) *p = '?';
    fprintf(stderr, "%s (see realnvp%s%s --help)\n", msg, *cur_cmd ? " " : "", cur_cmd);
    return EXIT_USAGE;
}

/* ---- argument parsing ---- */

/* Matches argv[*i] against the option `name` (e.g. "--model") or its short form `shrt` (may be
 * NULL). With want_val, the value is "--name V", "--name=V" or "-s V". Returns 1 on a match
 * (value in *val, *i advanced past it), 0 if argv[*i] is another option, -1 when the value is
 * missing (the error is printed). */
static int match(int argc, char **argv, int *i, const char *name, const char *shrt, int want_val,
                 const char **val)
{
    const char *a = argv[*i];
    size_t nl = strlen(name);
    int exact = !strcmp(a, name) || (shrt && !strcmp(a, shrt));
    if (want_val && !strncmp(a, name, nl) && a[nl] == '=') {
        *val = a + nl + 1;
        return 1;
    }
    if (!exact) return 0;
    if (!want_val) return 1;
    if (*i + 1 >= argc) {
        usage_error("option %s needs a value", a);
        return -1;
    }
    *val = argv[++*i];
    return 1;
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        usage_error("%s must be an integer in %ld..%ld, not '%s'", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_seed(const char *opt, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *s == '-' || *s == '+' || *end || errno) {
        usage_error("%s must be an integer in 0..%" PRIu64 ", not '%s'", opt, UINT64_MAX, s);
        return -1;
    }
    *out = (uint64_t)v;
    return 0;
}

static int parse_double(const char *opt, const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < lo || v > hi) {
        usage_error("%s must be a number in %g..%g, not '%s'", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Options every subcommand accepts. Returns 1 when argv[*i] was one (and handled), 0 if not,
 * -1 on an error (printed), 2 when --help was asked for. */
static enum rnvp_precision cli_precision;   /* --precision, else REALNVP_PRECISION, else fp32 */
static char cli_precision_err[400];          /* REALNVP_PRECISION's error, reported by make_ctx (so
                                                --help, info and init still run) unless --precision
                                                replaces it */

static int common_option(int argc, char **argv, int *i)
{
    const char *v;
    int r = match(argc, argv, i, "--precision", NULL, 1, &v);
    if (r < 0) return -1;
    if (r) {
        rnvp_error e;
        if (rnvp_precision_parse(&cli_precision, v, &e)) return usage_error("--precision: %s", e.msg), -1;
        if (rnvp_precision_check(cli_precision, &e)) return usage_error("--precision %s: %s", v, e.msg), -1;
        cli_precision_err[0] = 0;
        return 1;
    }
    r = match(argc, argv, i, "--threads", NULL, 1, &v);
    if (r < 0) return -1;
    if (r) {
        long t;
        if (parse_long("--threads", v, 1, 1024, &t)) return -1;
        rnvp_set_num_threads((int)t);
        return 1;
    }
    if (match(argc, argv, i, "--help", "-h", 0, &v)) return 2;
    return 0;
}

/* The loop shared by the subcommands: positional arguments are collected in pos (argc
 * entries); `opt` is called for every other option and returns like match() (0: unknown). */
typedef int (*opt_fn)(void *st, int argc, char **argv, int *i);

/* Returns 0 to go on, or the exit status: 0 after printing help, EXIT_USAGE on an error. */
static int parse_args(int argc, char **argv, void *st, opt_fn opt, const char **pos, int *npos,
                      const char *help, int *done)
{
    int only_pos = 0;
    *npos = 0;
    *done = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || !a[1]) {
            pos[(*npos)++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            only_pos = 1;
            continue;
        }
        int r = common_option(argc, argv, &i);
        if (r == 2) {
            fputs(help, stdout);
            *done = 1;
            return 0;
        }
        if (r < 0) return EXIT_USAGE;
        if (r) continue;
        r = opt ? opt(st, argc, argv, &i) : 0;
        if (r < 0) return EXIT_USAGE;
        if (!r) return usage_error("unknown option '%s'", a);
    }
    return 0;
}

/* ---- shared helpers ---- */

static rnvp_model *load_model(const char *path)
{
    rnvp_model *m = NULL;
    rnvp_error e;
    if (rnvp_model_load(&m, path, &e)) {
        fail("%s", e.msg);
        return NULL;
    }
    return m;
}

static rnvp_ctx *make_ctx(const rnvp_model *m, int batch)
{
    rnvp_ctx *c = NULL;
    rnvp_error e;
    if (cli_precision_err[0]) {
        fail("%s", cli_precision_err);
        return NULL;
    }
    if (rnvp_ctx_create(&c, m, batch, &e)) {
        fail("%s", e.msg);
        return NULL;
    }
    if (rnvp_ctx_set_precision(c, cli_precision, &e)) {
        fail("%s", e.msg);
        rnvp_ctx_free(c);
        return NULL;
    }
    return c;
}

/* s as a JSON string; bytes that are not UTF-8 are read as Latin-1 */
static void print_json_string(FILE *f, const char *s)
{
    json_t *j = json_string(s);
    if (!j) {
        size_t n = strlen(s);
        char *u = malloc(2 * n + 1), *p = u;
        if (!u) {
            fputs("\"\"", f);
            return;
        }
        for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
            if (*q < 0x80) *p++ = (char)*q;
            else {
                *p++ = (char)(0xC0 | (*q >> 6));
                *p++ = (char)(0x80 | (*q & 0x3F));
            }
        }
        *p = 0;
        j = json_string(u);
        free(u);
    }
    char *d = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    fputs(d ? d : "\"\"", f);
    free(d);
    json_decref(j);
}

/* a double as JSON: shortest round-trip digits, null when not finite */
static void print_json_double(FILE *f, double v)
{
    if (isfinite(v)) fprintf(f, "%.17g", v);
    else fputs("null", f);
}

static int finish_stdout(void)
{
    if (fflush(stdout) || ferror(stdout)) return fail("writing the output failed: %s", strerror(errno));
    return 0;
}

/* ---- info ---- */

static const char help_info[] =
    "Usage: realnvp info [--threads N] MODEL\n"
    "\n"
    "Prints what a checkpoint (safetensors, docs/model.md) holds: its configuration, the image\n"
    "size and D = C*H*W, the latent layout (shape and offset in z of each factored-out part\n"
    "z_s), the number of couplings, parameters and tensors, the FLOPs of one image through the\n"
    "flow (a multiply-add counts 2) and the metadata. The model is loaded and validated in full.\n"
    "\n"
    "Options:\n"
    "  --threads N  BLAS threads (not used by info; accepted everywhere)\n"
    "  -h, --help   this text\n";

static int cmd_info(int argc, char **argv)
{
    const char **pos = calloc((size_t)argc, sizeof *pos);
    int npos, done, rc = parse_args(argc, argv, NULL, NULL, pos, &npos, help_info, &done);
    if (rc || done) goto out0;
    if (npos != 1) {
        rc = npos ? usage_error("expected one MODEL, got %d arguments", npos) : usage_error("MODEL is required");
        goto out0;
    }
    rnvp_model *m = load_model(pos[0]);
    if (!m) {
        rc = EXIT_RUN;
        goto out0;
    }
    const rnvp_config *c = rnvp_model_config(m);
    char cj[512];
    rnvp_config_to_json(c, cj, sizeof cj);
    int S = rnvp_model_num_latent_parts(m), D = rnvp_model_dim(m);
    size_t np = rnvp_model_num_params(m);
    printf("model        %s\n", pos[0]);
    printf("config       %s\n", cj);
    printf("image        %d x %d x %d (W x H x C), D = %d\n", c->width, c->height, c->channels, D);
    printf("flow         %d scales, %d couplings; in each s/t network %d residual blocks, kernel %d,\n"
           "             features by scale", c->num_scales, 6 * (c->num_scales - 1) + 4, c->res_blocks,
           c->kernel ? c->kernel : 3);
    for (int s = 0; s < c->num_scales; s++) printf(" %d", c->features[s]);
    printf("; flow batch norm %s\n", c->flow_batchnorm ? "yes" : "no");
    printf("latents      %d parts (C x H x W, offset in z, size)\n", S);
    for (int s = 0; s < S; s++) {
        rnvp_latent_part p = rnvp_model_latent_part(m, s);
        char shape[48];
        snprintf(shape, sizeof shape, "%d x %d x %d", p.channels, p.height, p.width);
        printf("  z_%-9d %-16s offset %-9d size %d\n", s, shape, p.offset, p.channels * p.height * p.width);
    }
    printf("parameters   %zu in %d tensors (%.2f MB as float32)\n", np, rnvp_model_num_tensors(m),
           np * 4.0 / 1e6);
    printf("memory       %.2f MB loaded (the parameters and the inference weights derived from them)\n",
           rnvp_model_bytes(m) / 1e6);
    double fl = rnvp_model_flops(m);
    printf("FLOPs/image  %.4g (%.1f MFLOP, forward)\n", fl, fl / 1e6);
    int nm = rnvp_model_num_metadata(m);
    printf("metadata     %d keys\n", nm);
    for (int i = 0; i < nm; i++) {
        const char *k = rnvp_model_metadata_key(m, i);
        printf("  %-10s %s\n", k, rnvp_model_metadata(m, k));
    }
    rnvp_model_free(m);
    rc = finish_stdout();
out0:
    free(pos);
    return rc;
}

/* ---- log-prob ---- */

static const char help_log_prob[] =
    "Usage: realnvp log-prob --model MODEL [--json] [--batch N] [--threads N] [--precision P] IMG.png...\n"
    "\n"
    "The exact log-likelihood of each 8-bit image under the model: log_prob in nats (of the\n"
    "discrete image, docs/model.md 3) and bits/dim = -log_prob / (D ln 2). Dequantization is\n"
    "deterministic (u = 0.5), so the same image always gets the same value.\n"
    "Images must have the model's width and height. Channels are converted: palette expanded,\n"
    "16-bit rounded to 8, alpha dropped, grey replicated to RGB, RGB to grey by ITU-R BT.601.\n"
    "Each image also gets png_bits_per_dim, its own size as a PNG at zlib level 9 (IDAT data\n"
    "bytes only, 8 * bytes / D), and ood_score = bits_per_dim - png_bits_per_dim, the input-\n"
    "complexity correction of Serra et al. (ICLR 2020): higher means more unusual for the model.\n"
    "Prints a table (log_prob, bits/dim, png bits/dim, ood score, file), or with --json one\n"
    "object per line:\n"
    "  {\"file\": \"a.png\", \"log_prob\": -1234.5, \"bits_per_dim\": 2.27,\n"
    "   \"png_bits_per_dim\": 3.9, \"ood_score\": -1.63}\n"
    "A file that cannot be read stops the run with exit status 1; the images before it are printed.\n"
    "\n"
    "Options:\n"
    "  --model MODEL  the checkpoint (required)\n"
    "  --json         JSON lines instead of the table\n"
    "  --batch N      images per batch through one context (1..4096, default 16)\n"
    "  --threads N    BLAS threads\n"
    "  --precision P  fp32 (default) or bf16 (AVX512_BF16 CPUs; less exact, faster\n"
    "                 below 12 images a batch: docs/benchmarks.md#bf16); also\n"
    "                 REALNVP_PRECISION\n"
    "  -h, --help     this text\n";

typedef struct lp_opts {
    const char *model;
    int json;
    long batch;
} lp_opts;

static int lp_opt(void *st, int argc, char **argv, int *i)
{
    lp_opts *o = st;
    const char *v;
    int r;
    if ((r = match(argc, argv, i, "--model", NULL, 1, &v))) {
        if (r > 0) o->model = v;
        return r;
    }
    if (match(argc, argv, i, "--json", NULL, 0, &v)) {
        o->json = 1;
        return 1;
    }
    if ((r = match(argc, argv, i, "--batch", NULL, 1, &v))) {
        if (r > 0 && parse_long("--batch", v, 1, 4096, &o->batch)) return -1;
        return r;
    }
    return 0;
}

static void lp_print(const lp_opts *o, const char *file, double lp, double bpd, double pbpd)
{
    if (o->json) {
        fputs("{\"file\": ", stdout);
        print_json_string(stdout, file);
        fputs(", \"log_prob\": ", stdout);
        print_json_double(stdout, lp);
        fputs(", \"bits_per_dim\": ", stdout);
        print_json_double(stdout, bpd);
        fputs(", \"png_bits_per_dim\": ", stdout);
        print_json_double(stdout, pbpd);
        fputs(", \"ood_score\": ", stdout);
        print_json_double(stdout, bpd - pbpd);
        fputs("}\n", stdout);
    } else {
        printf("%15.4f  %9.5f  %9.5f  %9.5f  %s\n", lp, bpd, pbpd, bpd - pbpd, file);
    }
}

static int cmd_log_prob(int argc, char **argv)
{
    lp_opts o = {.batch = 16};
    const char **pos = calloc((size_t)argc, sizeof *pos);
    int npos, done, rc = parse_args(argc, argv, &o, lp_opt, pos, &npos, help_log_prob, &done);
    if (rc || done) goto out0;
    if (!o.model) {
        rc = usage_error("--model MODEL is required");
        goto out0;
    }
    if (!npos) {
        rc = usage_error("no images given");
        goto out0;
    }
    rnvp_model *m = load_model(o.model);
    if (!m) {
        rc = EXIT_RUN;
        goto out0;
    }
    const rnvp_config *c = rnvp_model_config(m);
    size_t D = (size_t)rnvp_model_dim(m);
    int B = npos < o.batch ? npos : (int)o.batch;
    rnvp_ctx *ctx = make_ctx(m, B);
    uint8_t *px = malloc((size_t)B * D);   /* (B, C, H, W) */
    double *lp = malloc((size_t)B * sizeof *lp), *bpd = malloc((size_t)B * sizeof *bpd);   /* (B) each */
    rnvp_error e;
    if (!ctx) {
        rc = EXIT_RUN;
        goto out;
    }
    if (!px || !lp || !bpd) {
        rc = fail("out of memory for a batch of %d images", B);
        goto out;
    }
    for (int first = 0; first < npos && !rc; first += B) {
        int n = 0, bad = 0;
        for (; n < B && first + n < npos; n++)
            if (rnvp_png_read(px + n * D, pos[first + n], c->channels, c->height, c->width, &e)) {
                bad = 1;
                break;
            }
        rnvp_error e2;
        if (n && rnvp_log_prob(ctx, lp, bpd, px, NULL, n, &e2)) {
            rc = fail("%s", e2.msg);
            break;
        }
        if (n && !first && !o.json)
            printf("%15s  %9s  %9s  %9s  %s\n", "log_prob/nats", "bits/dim", "png b/d", "ood", "file");
        for (int i = 0; i < n; i++) {
            double pbpd = NAN;
            if (rnvp_png_bits_per_dim(&pbpd, px + i * D, c->channels, c->height, c->width, &e2)) {
                rc = fail("%s: %s", pos[first + i], e2.msg);
                break;
            }
            lp_print(&o, pos[first + i], lp[i], bpd[i], pbpd);
        }
        if (bad) rc = fail("%s", e.msg);
    }
    if (!rc) rc = finish_stdout();
out:
    free(px);
    free(lp);
    free(bpd);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);
out0:
    free(pos);
    return rc;
}

/* ---- encode ---- */

static const char help_encode[] =
    "Usage: realnvp encode --model MODEL [--threads N] [--precision P] IMG.png...\n"
    "\n"
    "Prints the latent code z = f(x) of each image (deterministic dequantization, u = 0.5) as one\n"
    "JSON object. With one image:\n"
    "  {\"model\": \"MODEL\", \"file\": \"IMG.png\", \"log_prob\": -1234.5,\n"
    "   \"layout\": [{\"offset\": 0, \"channels\": 2, \"height\": 14, \"width\": 14}, ...],\n"
    "   \"latents\": [D numbers]}\n"
    "With several images, \"files\" and \"log_probs\" are arrays and \"latents\" is an array of\n"
    "arrays, one per image. \"layout\" gives each factored-out part z_s of z (docs/model.md 2.7):\n"
    "its offset in \"latents\" and its shape. Latents are printed with 9 significant digits\n"
    "(%.9g), exact for float32, so `realnvp decode` gives back the same pixels; log_prob is in\n"
    "nats, as in log-prob. Images are read and converted as in log-prob.\n"
    "\n"
    "Options:\n"
    "  --model MODEL  the checkpoint (required)\n"
    "  --threads N    BLAS threads\n"
    "  --precision P  fp32 (default) or bf16 (AVX512_BF16 CPUs; less exact, faster\n"
    "                 below 12 images a batch: docs/benchmarks.md#bf16); also\n"
    "                 REALNVP_PRECISION\n"
    "  -h, --help     this text\n";

typedef struct model_opt {
    const char *model;
} model_opt;

static int model_only_opt(void *st, int argc, char **argv, int *i)
{
    model_opt *o = st;
    const char *v;
    int r = match(argc, argv, i, "--model", NULL, 1, &v);
    if (r > 0) o->model = v;
    return r;
}

static void print_layout(const rnvp_model *m)
{
    int S = rnvp_model_num_latent_parts(m);
    fputs("[", stdout);
    for (int s = 0; s < S; s++) {
        rnvp_latent_part p = rnvp_model_latent_part(m, s);
        printf("%s{\"offset\": %d, \"channels\": %d, \"height\": %d, \"width\": %d}", s ? ", " : "",
               p.offset, p.channels, p.height, p.width);
    }
    fputs("]", stdout);
}

static void print_latents(const float *z, size_t D)
{
    fputs("[", stdout);
    for (size_t i = 0; i < D; i++) {
        if (i) fputs(", ", stdout);
        if (isfinite(z[i])) printf("%.9g", (double)z[i]);
        else fputs("null", stdout);   /* never from a valid model; decode refuses it */
    }
    fputs("]", stdout);
}

static int cmd_encode(int argc, char **argv)
{
    model_opt o = {0};
    const char **pos = calloc((size_t)argc, sizeof *pos);
    int npos, done, rc = parse_args(argc, argv, &o, model_only_opt, pos, &npos, help_encode, &done);
    if (rc || done) goto out0;
    if (!o.model) {
        rc = usage_error("--model MODEL is required");
        goto out0;
    }
    if (!npos) {
        rc = usage_error("no image given");
        goto out0;
    }
    rnvp_model *m = load_model(o.model);
    if (!m) {
        rc = EXIT_RUN;
        goto out0;
    }
    const rnvp_config *c = rnvp_model_config(m);
    size_t D = (size_t)rnvp_model_dim(m);
    int n = npos, B = n < 32 ? n : 32;
    rnvp_ctx *ctx = make_ctx(m, B);
    uint8_t *px = malloc((size_t)n * D);           /* (N, C, H, W) */
    float *z = malloc((size_t)n * D * sizeof *z);  /* (N, D) */
    double *lp = malloc((size_t)n * sizeof *lp);   /* (N) */
    rnvp_error e;
    if (!ctx) {
        rc = EXIT_RUN;
        goto out;
    }
    if (!px || !z || !lp) {
        rc = fail("out of memory for %d images", n);
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (rnvp_png_read(px + i * D, pos[i], c->channels, c->height, c->width, &e)) {
            rc = fail("%s", e.msg);
            goto out;
        }
    if (rnvp_encode(ctx, z, lp, px, NULL, n, &e)) {
        rc = fail("%s", e.msg);
        goto out;
    }
    fputs("{\"model\": ", stdout);
    print_json_string(stdout, o.model);
    if (n == 1) {
        fputs(", \"file\": ", stdout);
        print_json_string(stdout, pos[0]);
        fputs(", \"log_prob\": ", stdout);
        print_json_double(stdout, lp[0]);
    } else {
        fputs(", \"files\": [", stdout);
        for (int i = 0; i < n; i++) {
            if (i) fputs(", ", stdout);
            print_json_string(stdout, pos[i]);
        }
        fputs("], \"log_probs\": [", stdout);
        for (int i = 0; i < n; i++) {
            if (i) fputs(", ", stdout);
            print_json_double(stdout, lp[i]);
        }
        fputs("]", stdout);
    }
    fputs(", \"layout\": ", stdout);
    print_layout(m);
    fputs(", \"latents\": ", stdout);
    if (n == 1) print_latents(z, D);
    else {
        fputs("[", stdout);
        for (int i = 0; i < n; i++) {
            if (i) fputs(", ", stdout);
            print_latents(z + i * D, D);
        }
        fputs("]", stdout);
    }
    fputs("}\n", stdout);
    rc = finish_stdout();
out:
    free(px);
    free(z);
    free(lp);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);
out0:
    free(pos);
    return rc;
}

/* ---- decode ---- */

static const char help_decode[] =
    "Usage: realnvp decode --model MODEL [--cols C] [--threads N] [--precision P] LATENTS.json -o OUT.png\n"
    "\n"
    "Writes the images x = f^-1(z) of latent codes as a PNG. LATENTS.json (\"-\": standard input)\n"
    "is what `realnvp encode` prints: an object whose \"latents\" is an array of D numbers (one\n"
    "image) or an array of such arrays (several images, written as one grid with a 2-pixel white\n"
    "border between tiles). Values must be finite float32 numbers. Other keys are ignored except\n"
    "\"layout\", which, when present, must match the model's. Decoding what encode printed gives\n"
    "back the encoded pixels: encode uses the centre of each pixel's bin (u = 0.5), far more than\n"
    "float32 round-off away from its edges.\n"
    "\n"
    "Options:\n"
    "  --model MODEL         the checkpoint (required)\n"
    "  -o, --output OUT.png  the PNG to write (required)\n"
    "  --cols C              grid columns for several images (default: about the square root)\n"
    "  --threads N           BLAS threads\n"
    "  --precision P         fp32 (default) or bf16 (AVX512_BF16 CPUs; less exact, faster\n"
    "                        below 12 images a batch: docs/benchmarks.md#bf16); also\n"
    "                        REALNVP_PRECISION\n"
    "  -h, --help            this text\n";

typedef struct out_opts {
    const char *model, *out;
    long cols;
    /* sample only */
    long n;
    double temp;
    uint64_t seed;
    int have_seed;
    const char *config;
} out_opts;

static int out_opt(void *st, int argc, char **argv, int *i)
{
    out_opts *o = st;
    const char *v;
    int r;
    if ((r = match(argc, argv, i, "--model", NULL, 1, &v))) {
        if (r > 0) o->model = v;
        return r;
    }
    if ((r = match(argc, argv, i, "--output", "-o", 1, &v))) {
        if (r > 0) o->out = v;
        return r;
    }
    if ((r = match(argc, argv, i, "--cols", NULL, 1, &v))) {
        if (r > 0 && parse_long("--cols", v, 1, 16384, &o->cols)) return -1;
        return r;
    }
    return 0;
}

/* Fill z (n, D) from a JSON array of D numbers; `where` names it in messages. */
static int read_latent_row(float *z, const json_t *a, size_t D, const char *file, const char *where)
{
    if (!json_is_array(a)) return fail("%s: %s is not an array of numbers", file, where);
    if (json_array_size(a) != D)
        return fail("%s: %s has %zu values, the model's latent has D = %zu", file, where, json_array_size(a), D);
    for (size_t i = 0; i < D; i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_number(v)) return fail("%s: %s[%zu] is not a number", file, where, i);
        double x = json_number_value(v);
        if (!isfinite(x) || fabs(x) > FLT_MAX)
            return fail("%s: %s[%zu] = %g is not a finite float32 value", file, where, i, x);
        z[i] = (float)x;
    }
    return 0;
}

/* The "layout" of a latents file, if any, against the model's. */
static int check_layout(const json_t *root, const rnvp_model *m, const char *file)
{
    const json_t *l = json_object_get(root, "layout");
    if (!l) return 0;
    int S = rnvp_model_num_latent_parts(m), ok = json_is_array(l) && (int)json_array_size(l) == S;
    for (int s = 0; ok && s < S; s++) {
        rnvp_latent_part p = rnvp_model_latent_part(m, s);
        const json_t *e = json_array_get(l, s);
        const char *keys[4] = {"offset", "channels", "height", "width"};
        int want[4] = {p.offset, p.channels, p.height, p.width};
        for (int k = 0; k < 4 && ok; k++) {
            const json_t *v = json_object_get(e, keys[k]);
            ok = json_is_integer(v) && json_integer_value(v) == want[k];
        }
    }
    if (!ok) return fail("%s: its \"layout\" does not match the model's (latents of another model?)", file);
    return 0;
}

static int cmd_decode(int argc, char **argv)
{
    out_opts o = {0};
    const char **pos = calloc((size_t)argc, sizeof *pos);
    int npos, done, rc = parse_args(argc, argv, &o, out_opt, pos, &npos, help_decode, &done);
    if (rc || done) goto out0;
    if (!o.model) rc = usage_error("--model MODEL is required");
    else if (!o.out) rc = usage_error("-o OUT.png is required");
    else if (!npos) rc = usage_error("LATENTS.json is required");
    else if (npos > 1) rc = usage_error("expected one LATENTS.json, got %d arguments", npos);
    if (rc) goto out0;
    const char *file = pos[0], *shown = strcmp(file, "-") ? file : "standard input";
    json_error_t je;
    json_t *root = !strcmp(file, "-") ? json_loadf(stdin, JSON_REJECT_DUPLICATES, &je)
                                      : json_load_file(file, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line < 1 && !strcmp(file, "-")) rc = fail("%s: %s", shown, je.text);
        else if (je.line < 1) rc = fail("%s", je.text);   /* cannot open: Jansson names the file */
        else rc = fail("%s: invalid JSON: %s (line %d, column %d)%s", shown, je.text, je.line, je.column,
                       strstr(je.text, "NaN") || strstr(je.text, "Inf") || strstr(je.text, "overflow")
                           ? "; latents must be finite float32 numbers" : "");
        goto out0;
    }
    rnvp_model *m = NULL;
    rnvp_ctx *ctx = NULL;
    float *z = NULL;
    uint8_t *px = NULL;
    const json_t *lat = json_object_get(root, "latents");
    if (!json_is_object(root)) {
        rc = fail("%s: not a JSON object", shown);
        goto out;
    }
    if (!json_is_array(lat) || !json_array_size(lat)) {
        rc = fail("%s: no \"latents\" array (or it is empty)", shown);
        goto out;
    }
    if (!(m = load_model(o.model))) {
        rc = EXIT_RUN;
        goto out;
    }
    if ((rc = check_layout(root, m, shown))) goto out;
    const rnvp_config *c = rnvp_model_config(m);
    size_t D = (size_t)rnvp_model_dim(m);
    int multi = json_is_array(json_array_get(lat, 0));
    size_t n = multi ? json_array_size(lat) : 1;
    if (n > 1000000) {
        rc = fail("%s: %zu images are too many", shown, n);
        goto out;
    }
    z = malloc(n * D * sizeof *z);   /* (N, D) */
    px = malloc(n * D);              /* (N, C, H, W) */
    if (!z || !px) {
        rc = fail("out of memory for %zu images", n);
        goto out;
    }
    if (!multi) rc = read_latent_row(z, lat, D, shown, "\"latents\"");
    for (size_t i = 0; multi && i < n && !rc; i++) {
        char where[48];
        snprintf(where, sizeof where, "\"latents\"[%zu]", i);
        rc = read_latent_row(z + i * D, json_array_get(lat, i), D, shown, where);
    }
    if (rc) goto out;
    if (!(ctx = make_ctx(m, n < 32 ? (int)n : 32))) {
        rc = EXIT_RUN;
        goto out;
    }
    rnvp_error e;
    if (rnvp_decode(ctx, px, z, (int)n, &e) ||
        rnvp_png_write_grid(o.out, px, (int)n, c->channels, c->height, c->width, (int)o.cols, &e))
        rc = fail("%s", e.msg);
out:
    free(z);
    free(px);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);
    json_decref(root);
out0:
    free(pos);
    return rc;
}

/* ---- sample ---- */

static const char help_sample[] =
    "Usage: realnvp sample --model MODEL [-n N] [--temp T] [--seed S] [--cols C] [--threads N] [--precision P] -o GRID.png\n"
    "\n"
    "Draws N images from the model, x = f^-1(z) with z ~ N(0, T^2 I), and writes them as one PNG:\n"
    "a grid of C columns with a 2-pixel white border between tiles (N = 1: the bare image).\n"
    "The same seed gives the same latents on every machine (so the same images, but for float32\n"
    "round-off in the flow), and the latents of image i do not depend on N.\n"
    "\n"
    "Options:\n"
    "  --model MODEL          the checkpoint (required)\n"
    "  -o, --output GRID.png  the PNG to write (required)\n"
    "  -n, --num N            number of images (1..100000, default 16)\n"
    "  --temp T               temperature (0..100, default 0.7; 1 samples the model itself)\n"
    "  --seed S               seed (0..2^64-1, default 1)\n"
    "  --cols C               grid columns (default: about the square root of N)\n"
    "  --threads N            BLAS threads\n"
    "  --precision P          fp32 (default) or bf16 (AVX512_BF16 CPUs; less exact, faster\n"
    "                         below 12 images a batch: docs/benchmarks.md#bf16); also\n"
    "                         REALNVP_PRECISION\n"
    "  -h, --help             this text\n";

static int sample_opt(void *st, int argc, char **argv, int *i)
{
    out_opts *o = st;
    const char *v;
    int r;
    if ((r = out_opt(st, argc, argv, i))) return r;
    if ((r = match(argc, argv, i, "--num", "-n", 1, &v))) {
        if (r > 0 && parse_long("-n", v, 1, 100000, &o->n)) return -1;
        return r;
    }
    if ((r = match(argc, argv, i, "--temp", NULL, 1, &v))) {
        if (r > 0 && parse_double("--temp", v, 0, 100, &o->temp)) return -1;
        return r;
    }
    if ((r = match(argc, argv, i, "--seed", NULL, 1, &v))) {
        if (r > 0 && parse_seed("--seed", v, &o->seed)) return -1;
        return r;
    }
    return 0;
}

static int cmd_sample(int argc, char **argv)
{
    out_opts o = {.n = 16, .temp = 0.7, .seed = 1};
    const char **pos = calloc((size_t)argc, sizeof *pos);
    int npos, done, rc = parse_args(argc, argv, &o, sample_opt, pos, &npos, help_sample, &done);
    if (rc || done) goto out0;
    if (!o.model) rc = usage_error("--model MODEL is required");
    else if (!o.out) rc = usage_error("-o GRID.png is required");
    else if (npos) rc = usage_error("unexpected argument '%s'", pos[0]);
    if (rc) goto out0;
    rnvp_model *m = load_model(o.model);
    if (!m) {
        rc = EXIT_RUN;
        goto out0;
    }
    const rnvp_config *c = rnvp_model_config(m);
    size_t D = (size_t)rnvp_model_dim(m);
    int n = (int)o.n;
    rnvp_ctx *ctx = make_ctx(m, n < 64 ? n : 64);
    uint8_t *px = malloc((size_t)n * D);   /* (N, C, H, W) */
    rnvp_error e;
    if (!ctx) rc = EXIT_RUN;
    else if (!px) rc = fail("out of memory for %d images", n);
    else if (rnvp_sample(ctx, px, NULL, n, o.temp, o.seed, &e) ||
             rnvp_png_write_grid(o.out, px, n, c->channels, c->height, c->width, (int)o.cols, &e))
        rc = fail("%s", e.msg);
    free(px);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);
out0:
    free(pos);
    return rc;
}

/* ---- interpolate ---- */

static const char help_interpolate[] =
    "Usage: realnvp interpolate --model MODEL [--steps N] [--mode linear|spherical] [--precision P] -o STRIP.png A.png B.png\n"
    "\n"
    "Encodes A and B (u = 0.5), decodes N evenly spaced points between their latent codes and\n"
    "writes them as one PNG strip (N columns, 2-pixel borders). linear: (1-t) zA + t zB;\n"
    "spherical: along the great circle between zA and zB (slerp). The flow is exact, so the first\n"
    "and last tiles are A and B themselves.\n"
    "\n"
    "Options:\n"
    "  --model MODEL           the checkpoint (required)\n"
    "  -o, --output STRIP.png  the PNG to write (required)\n"
    "  --steps N               points including both ends (2..64, default 8)\n"
    "  --mode M                linear (default) or spherical\n"
    "  --cols C                columns (default: N, one row)\n"
    "  --threads N             BLAS threads\n"
    "  --precision P           fp32 (default) or bf16 (AVX512_BF16 CPUs; less exact, faster\n"
    "                          below 12 images a batch: docs/benchmarks.md#bf16); also\n"
    "                          REALNVP_PRECISION\n"
    "  -h, --help              this text\n";

typedef struct interp_opts {
    out_opts base;
    long steps;
    int spherical;
} interp_opts;

static int interp_opt(void *st, int argc, char **argv, int *i)
{
    interp_opts *o = st;
    const char *v;
    int r;
    if ((r = out_opt(&o->base, argc, argv, i))) return r;
    if ((r = match(argc, argv, i, "--steps", NULL, 1, &v))) {
        if (r > 0 && parse_long("--steps", v, 2, 64, &o->steps)) return -1;
        return r;
    }
    if ((r = match(argc, argv, i, "--mode", NULL, 1, &v))) {
        if (r > 0) {
            if (!strcmp(v, "linear")) o->spherical = 0;
            else if (!strcmp(v, "spherical")) o->spherical = 1;
            else {
                usage_error("--mode must be linear or spherical, not '%s'", v);
                return -1;
            }
        }
        return r;
    }
    return 0;
}

static int cmd_interpolate(int argc, char **argv)
{
    interp_opts o = {.steps = 8};
    const char **pos = calloc((size_t)argc, sizeof *pos);
    int npos, done, rc = parse_args(argc, argv, &o, interp_opt, pos, &npos, help_interpolate, &done);
    if (rc || done) goto out0;
    if (!o.base.model) rc = usage_error("--model MODEL is required");
    else if (!o.base.out) rc = usage_error("-o STRIP.png is required");
    else if (npos != 2) rc = usage_error("give exactly two images, A.png and B.png (got %d)", npos);
    if (rc) goto out0;
    rnvp_model *m = load_model(o.base.model);
    if (!m) {
        rc = EXIT_RUN;
        goto out0;
    }
    const rnvp_config *c = rnvp_model_config(m);
    size_t D = (size_t)rnvp_model_dim(m);
    int n = (int)o.steps;
    rnvp_ctx *ctx = make_ctx(m, n);
    uint8_t *px = malloc((size_t)n * D);           /* (N, C, H, W) */
    float *z = malloc((size_t)(n + 2) * D * sizeof *z);   /* (N + 2, D): the points, then zA, zB */
    rnvp_error e;
    if (!ctx) rc = EXIT_RUN;
    else if (!px || !z) rc = fail("out of memory for %d images", n);
    else {
        for (int k = 0; k < 2 && !rc; k++)
            if (rnvp_png_read(px + k * D, pos[k], c->channels, c->height, c->width, &e)) rc = fail("%s", e.msg);
        if (!rc && (rnvp_encode(ctx, z + (size_t)n * D, NULL, px, NULL, 2, &e) ||
                    rnvp_interpolate_latents(z, z + (size_t)n * D, z + (size_t)(n + 1) * D, (int)D, n, o.spherical, &e) ||
                    rnvp_decode(ctx, px, z, n, &e) ||
                    rnvp_png_write_grid(o.base.out, px, n, c->channels, c->height, c->width,
                                        o.base.cols > 0 ? (int)o.base.cols : n, &e)))
            rc = fail("%s", e.msg);
    }
    free(px);
    free(z);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);
out0:
    free(pos);
    return rc;
}

/* ---- init ---- */

static const char help_init[] =
    "Usage: realnvp init --config CONFIG.json --seed S -o MODEL [--threads N]\n"
    "\n"
    "Writes a randomly initialised model (every coupling does real work; deterministic in S) as a\n"
    "checkpoint, for tests and benchmarks. CONFIG.json is a config object (docs/model.md 5.3), e.g.\n"
    "  {\"height\": 28, \"width\": 28, \"channels\": 1, \"num_scales\": 3, \"res_blocks\": 4,\n"
    "   \"features\": [32, 64, 64], \"alpha\": 0.05, \"bn_eps\": 1e-5, \"flow_batchnorm\": true,\n"
    "   \"flow_bn_eps\": 1e-4}\n"
    "plus an optional \"kernel\" (odd, default 3; see docs/format.md). The file is written to a\n"
    "temporary name and renamed, so an existing MODEL survives any failure.\n"
    "\n"
    "Options:\n"
    "  --config FILE       the config JSON (required)\n"
    "  --seed S            seed (0..2^64-1, required)\n"
    "  -o, --output MODEL  the checkpoint to write (required)\n"
    "  --threads N         BLAS threads (not used by init; accepted everywhere)\n"
    "  -h, --help          this text\n";

static int init_opt(void *st, int argc, char **argv, int *i)
{
    out_opts *o = st;
    const char *v;
    int r;
    if ((r = match(argc, argv, i, "--config", NULL, 1, &v))) {
        if (r > 0) o->config = v;
        return r;
    }
    if ((r = match(argc, argv, i, "--seed", NULL, 1, &v))) {
        if (r > 0 && parse_seed("--seed", v, &o->seed)) return -1;
        if (r > 0) o->have_seed = 1;
        return r;
    }
    if ((r = match(argc, argv, i, "--output", "-o", 1, &v))) {
        if (r > 0) o->out = v;
        return r;
    }
    return 0;
}

/* The whole of a small text file, NUL-terminated, or NULL (error printed). */
static char *read_text(const char *path, size_t max)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail("%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(max + 1);
    size_t len = buf ? fread(buf, 1, max + 1, f) : 0;
    int bad = !buf || ferror(f);
    fclose(f);
    if (bad) {
        fail("%s: %s", path, buf ? "read error" : "out of memory");
        free(buf);
        return NULL;
    }
    if (len > max) {
        fail("%s: larger than %zu bytes, not a config", path, max);
        free(buf);
        return NULL;
    }
    buf[len] = 0;
    return buf;
}

static int cmd_init(int argc, char **argv)
{
    out_opts o = {0};
    const char **pos = calloc((size_t)argc, sizeof *pos);
    int npos, done, rc = parse_args(argc, argv, &o, init_opt, pos, &npos, help_init, &done);
    if (rc || done) goto out0;
    if (!o.config) rc = usage_error("--config CONFIG.json is required");
    else if (!o.have_seed) rc = usage_error("--seed S is required");
    else if (!o.out) rc = usage_error("-o MODEL is required");
    else if (npos) rc = usage_error("unexpected argument '%s'", pos[0]);
    if (rc) goto out0;
    char *text = read_text(o.config, MAX_CONFIG_BYTES);
    if (!text) {
        rc = EXIT_RUN;
        goto out0;
    }
    rnvp_config cfg;
    rnvp_model *m = NULL;
    rnvp_error e;
    if (rnvp_config_parse(&cfg, text, &e)) rc = fail("%s: %s", o.config, e.msg);
    else if (rnvp_model_init(&m, &cfg, o.seed, &e) || rnvp_model_save(m, o.out, NULL, &e)) rc = fail("%s", e.msg);
    rnvp_model_free(m);
    free(text);
out0:
    free(pos);
    return rc;
}

/* ---- main ---- */

static const char help_main[] =
    "Usage: realnvp [--threads N] COMMAND [OPTIONS] [ARGS]\n"
    "\n"
    "Real NVP normalizing flows (docs/model.md): exact likelihoods, latent codes and samples.\n"
    "\n"
    "Commands:\n"
    "  info       a checkpoint's configuration, latent layout, size and metadata\n"
    "  log-prob   log-likelihood (nats) and bits/dim of PNG images\n"
    "  encode     latent codes of PNG images, as JSON\n"
    "  decode     PNG images from latent codes (the JSON that encode prints)\n"
    "  sample     draw images from a model into a PNG grid\n"
    "  interpolate  a PNG strip of images decoded between two images' latent codes\n"
    "  init       write a randomly initialised model from a config\n"
    "  help CMD   the same as realnvp CMD --help\n"
    "\n"
    "Options (--threads and --precision are also accepted after the command):\n"
    "  --threads N  BLAS threads, 1..1024 (default: OPENBLAS_NUM_THREADS, else every core)\n"
    "  --precision P  fp32 (default) or bf16: the convolutions' arithmetic for log-prob, encode,\n"
    "                 decode, sample and interpolate; bf16 needs AVX512_BF16 and is refused without\n"
    "                 it (docs/benchmarks.md#bf16); also REALNVP_PRECISION\n"
    "  -h, --help   this text\n"
    "  --version    the version and the OpenBLAS kernels in use\n"
    "\n"
    "Exit status: 0 on success, 1 when a file, model or image cannot be used, 2 on a bad command line.\n"
    "Errors are one line on standard error.\n";

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"info", cmd_info, help_info},       {"log-prob", cmd_log_prob, help_log_prob},
    {"encode", cmd_encode, help_encode}, {"decode", cmd_decode, help_decode},
    {"sample", cmd_sample, help_sample}, {"init", cmd_init, help_init},
    {"interpolate", cmd_interpolate, help_interpolate},
};
#define NCOMMANDS (int)(sizeof commands / sizeof commands[0])

static const command *find_command(const char *name)
{
    for (int i = 0; i < NCOMMANDS; i++)
        if (!strcmp(commands[i].name, name)) return &commands[i];
    return NULL;
}

int main(int argc, char **argv)
{
    rnvp_blas_select_core(argv);
    const char *env_precision = getenv("REALNVP_PRECISION");
    if (env_precision && *env_precision) {
        rnvp_error e;
        if (rnvp_precision_parse(&cli_precision, env_precision, &e) || rnvp_precision_check(cli_precision, &e)) {
            snprintf(cli_precision_err, sizeof cli_precision_err, "REALNVP_PRECISION=%.40s: %s", env_precision, e.msg);
            cli_precision = RNVP_PRECISION_FP32;
        }
    }
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *v;
        int r = common_option(argc, argv, &i);
        if (r == 2) {
            fputs(help_main, stdout);
            return finish_stdout();
        }
        if (r < 0) return EXIT_USAGE;
        if (r) continue;
        if (match(argc, argv, &i, "--version", "-V", 0, &v)) {
            printf("realnvp %s (OpenBLAS kernels: %s)\n", RNVP_VERSION, rnvp_blas_core());
            return finish_stdout();
        }
        return usage_error("unknown option '%s'", argv[i]);
    }
    if (i >= argc) return usage_error("no command given");
    const char *name = argv[i];
    if (!strcmp(name, "help")) {
        if (i + 1 >= argc) {
            fputs(help_main, stdout);
            return finish_stdout();
        }
        const command *c = find_command(argv[i + 1]);
        if (!c) return usage_error("unknown command '%s'", argv[i + 1]);
        fputs(c->help, stdout);
        return finish_stdout();
    }
    const command *c = find_command(name);
    if (!c) return usage_error("unknown command '%s'", name);
    cur_cmd = c->name;
    return c->run(argc - i, argv + i);
}
