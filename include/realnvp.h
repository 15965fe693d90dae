/* realnvp.h: the public API of the Real NVP inference library (prefix rnvp_):
 * checkpoints, batched log-likelihood / encode / decode / sample, PNG helpers. Training lives in train/.
 *
 * Memory model
 * ------------
 * - rnvp_model is immutable once loaded: it owns one block of parameters (as stored in the
 *   checkpoint) and one block of derived inference weights (weight norm applied, batch norms
 *   folded). Any number of threads may use one model at the same time, read-only.
 * - rnvp_ctx is a per-thread workspace, sized at creation for `max_batch` images. One thread
 *   uses one context at a time. Calls on a context never allocate; a call with n > max_batch
 *   is processed in chunks of max_batch.
 * - Threads: on CPUs with AVX-512 a context owns a small pool of threads, created by
 *   rnvp_ctx_create and joined by rnvp_ctx_free: T - 1 workers, T = the thread count set with
 *   rnvp_set_num_threads (else OPENBLAS_NUM_THREADS, else the core count) when the context is
 *   created. The calling thread works too; each convolution's columns are split among the T
 *   threads (the results do not depend on T or on the batch size). Idle workers spin briefly,
 *   then sleep. Elsewhere the convolutions use OpenBLAS and its own threads. The environment
 *   variable REALNVP_CONV=blas, read by rnvp_ctx_create, forces the OpenBLAS kernels.
 * - Every array passed in or out is owned by the caller. Shapes are written next to each
 *   argument: (N, C, H, W) pixels are uint8 0..255 in channel-major order, latents are (N, D)
 *   float32 in the layout of docs/model.md section 2.7 (z_0, z_1, ... each flattened C,H,W).
 * - Functions that can fail return enum rnvp_status and, when `err` is not NULL, fill it with
 *   a one-line message naming the problem. The library never prints and never exits.
 *
 * The math and the checkpoint format are defined by docs/model.md.
 *
 * Example (examples/score_and_sample.c; build with
 * `cc prog.c $(pkg-config --cflags --libs realnvp)` after `make install`):
 *
 *     rnvp_model *m;  rnvp_ctx *ctx;  rnvp_error e;
 *     if (rnvp_model_load(&m, "model.safetensors", &e)) { puts(e.msg); return 1; }
 *     rnvp_ctx_create(&ctx, m, 16, &e);                 // workspace for 16 images at a time
 *     const rnvp_config *c = rnvp_model_config(m);
 *     uint8_t *px = malloc(16 * (size_t)rnvp_model_dim(m));   // (16, C, H, W)
 *     double lp, bpd;
 *     rnvp_png_read(px, "shirt.png", c->channels, c->height, c->width, &e);
 *     rnvp_log_prob(ctx, &lp, &bpd, px, NULL, 1, &e);   // exact log p(x) in nats, bits/dim
 *     rnvp_sample(ctx, px, NULL, 16, 0.7, 42, &e);      // 16 samples at temperature 0.7
 *     rnvp_png_write_grid("samples.png", px, 16, c->channels, c->height, c->width, 4, &e);
 *     free(px);  rnvp_ctx_free(ctx);  rnvp_model_free(m);
 *
 * (Every call returns enum rnvp_status; check each one in real code, as the example does.)
 */
#ifndef REALNVP_H
#define REALNVP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RNVP_VERSION "0.1.0"
#define RNVP_MAX_SCALES 8
#define RNVP_MAX_BATCH 65536   /* largest max_batch of a context */

enum rnvp_status {
    RNVP_OK = 0,
    RNVP_ERR_IO,      /* a file could not be opened, read or written */
    RNVP_ERR_FORMAT,  /* malformed checkpoint, PNG, JSON or config */
    RNVP_ERR_ARG,     /* a bad argument (n <= 0, temp < 0, NaN latents, ...) */
    RNVP_ERR_SIZE,    /* an image whose size does not match the model */
    RNVP_ERR_NOMEM,   /* an allocation failed */
    RNVP_ERR_UNSUPPORTED   /* this CPU cannot do what was asked (rnvp_ctx_set_precision) */
};

typedef struct rnvp_error {
    enum rnvp_status status;
    char msg[320];
} rnvp_error;

/* Human-readable name of a status ("ok", "io", "format", ...). Never NULL. */
const char *rnvp_status_name(enum rnvp_status s);

/* The model's configuration (docs/model.md section 5.3). */
typedef struct rnvp_config {
    int height, width, channels;
    int num_scales;                    /* S, 1..RNVP_MAX_SCALES */
    int res_blocks;                    /* K, >= 0 */
    int features[RNVP_MAX_SCALES];     /* F per scale */
    double alpha;                      /* logit pre-processing, 0 <= alpha < 0.5 */
    double bn_eps;                     /* s/t network batch norm epsilon */
    int flow_batchnorm;                /* 0 or 1 */
    double flow_bn_eps;
    int kernel;                        /* kernel of in_conv and block convs (3); an optional
                                          config key (docs/model.md 5.3): read from the weights'
                                          shape on load, used by rnvp_model_init. out_conv is
                                          always 1x1 here. */
} rnvp_config;

/* A small tensor view: `data` points into memory owned by someone else (the model).
 * Shapes are C-contiguous float32; unused trailing dims are 1. */
typedef struct rnvp_tensor {
    const char *name;   /* e.g. "flow.0.net.in_conv.weight_v" */
    int ndim;           /* 1..4 */
    int shape[4];
    size_t size;        /* product of shape */
    float *data;        /* (shape...) */
} rnvp_tensor;

/* One factored-out part z_s of the latent vector. */
typedef struct rnvp_latent_part {
    int offset;                    /* index of its first value in z (D values in all) */
    int channels, height, width;
} rnvp_latent_part;

typedef struct rnvp_model rnvp_model;  /* opaque, immutable, thread-safe */
typedef struct rnvp_ctx rnvp_ctx;      /* opaque, one thread at a time */

/* ---- configuration ---- */

/* Parse a config JSON object (docs/model.md section 5.3) into *cfg. Unknown keys are ignored.
 * On failure *cfg is unspecified and err names the key. */
enum rnvp_status rnvp_config_parse(rnvp_config *cfg, const char *json, rnvp_error *err);
/* Check ranges and divisibility (H, W divisible by 2^(S-1), ...). */
enum rnvp_status rnvp_config_validate(const rnvp_config *cfg, rnvp_error *err);
/* Write the config as compact JSON into buf (NUL-terminated). Returns the length it needs
 * (excluding the NUL), like snprintf. */
int rnvp_config_to_json(const rnvp_config *cfg, char *buf, size_t cap);

/* ---- models ---- */

/* Load and validate a checkpoint. On success *out owns everything (free with rnvp_model_free).
 * On failure *out is NULL, nothing leaks, and err names the tensor or field at fault. The
 * file is read once; allocation is bounded by the file's size. Tensors named "train.*" are
 * ignored. */
enum rnvp_status rnvp_model_load(rnvp_model **out, const char *path, rnvp_error *err);
/* The same from memory (the buffer is copied from as needed and not kept). */
enum rnvp_status rnvp_model_load_memory(rnvp_model **out, const void *buf, size_t len,
                                        rnvp_error *err);
/* A randomly initialised model that follows docs/model.md, for tests and benchmarks: weights are
 * drawn so that every coupling does real work (not the identity). Deterministic in seed. */
enum rnvp_status rnvp_model_init(rnvp_model **out, const rnvp_config *cfg, uint64_t seed,
                                 rnvp_error *err);
/* Write the model as a checkpoint: temporary file, fsync, rename, so an existing file at
 * `path` survives any failure. The model's metadata is kept, except a trainer's "train_state"
 * and "train_options" (they describe train.* tensors the written file does not hold).
 * `extra_meta` is a NULL-terminated list of key, value string pairs added to (or overriding)
 * the metadata; may be NULL. */
enum rnvp_status rnvp_model_save(const rnvp_model *m, const char *path,
                                 const char *const *extra_meta, rnvp_error *err);
void rnvp_model_free(rnvp_model *m);

const rnvp_config *rnvp_model_config(const rnvp_model *m);
int rnvp_model_dim(const rnvp_model *m);                 /* D = C*H*W */
int rnvp_model_num_latent_parts(const rnvp_model *m);    /* S */
rnvp_latent_part rnvp_model_latent_part(const rnvp_model *m, int s);
int rnvp_model_num_tensors(const rnvp_model *m);
const rnvp_tensor *rnvp_model_tensor(const rnvp_model *m, int i);   /* NULL if out of range */
size_t rnvp_model_num_params(const rnvp_model *m);
/* Bytes the model holds: its parameters and the inference weights derived from them at load (the
 * folded convolutions; Winograd transforms, on AVX-512 CPUs also F(4x4)'s, 4 times a convolution's
 * weights; bf16 copies), tables and metadata not counted. */
size_t rnvp_model_bytes(const rnvp_model *m);
/* Checkpoint metadata (all values are strings). rnvp_model_metadata returns NULL if absent. */
int rnvp_model_num_metadata(const rnvp_model *m);
const char *rnvp_model_metadata_key(const rnvp_model *m, int i);
const char *rnvp_model_metadata(const rnvp_model *m, const char *key);
/* FLOPs (multiply-adds count 2) of one image through the flow, forward direction. */
double rnvp_model_flops(const rnvp_model *m);

/* ---- execution ---- */

/* A workspace for up to max_batch images at once (1..RNVP_MAX_BATCH, else RNVP_ERR_ARG). Owns
 * its memory; free with rnvp_ctx_free. The model must outlive the context. On failure *out is
 * NULL. Its size is rnvp_ctx_workspace_bytes(m, max_batch); it grows with the image size, so a
 * program that loads checkpoints it does not trust should check that first. */
enum rnvp_status rnvp_ctx_create(rnvp_ctx **out, const rnvp_model *m, int max_batch,
                                 rnvp_error *err);
void rnvp_ctx_free(rnvp_ctx *ctx);
size_t rnvp_ctx_bytes(const rnvp_ctx *ctx);   /* workspace size */
/* The bytes rnvp_ctx_create(&ctx, m, max_batch, ...) called now would allocate for the context:
 * exactly what rnvp_ctx_bytes(ctx) then reports (its one workspace block of activations,
 * latents and convolution buffers, plus the handle). It depends on the convolution kernel and
 * thread count a context made now would use (rnvp_set_num_threads, REALNVP_CONV), and is linear
 * in max_batch up to rounding. Not counted: the pool's threads (their stacks and a few hundred
 * bytes of bookkeeping, see the memory model above). Allocates nothing and never fails: returns
 * SIZE_MAX when m is NULL, max_batch is outside 1..RNVP_MAX_BATCH, or the size does not fit in
 * size_t (every sum and product is checked). The model keeps ownership of everything. */
size_t rnvp_ctx_workspace_bytes(const rnvp_model *m, int max_batch);
/* The context's convolution kernel ("avx512-direct+winograd", the AVX-512 default, or
 * "avx2-direct+winograd", the AVX2 one: Winograd F(2x2,3x3) on the 3x3 layers where it wins, on
 * AVX-512 F(4x4,3x3) for batches of 12 or more images (REALNVP_WINOGRAD=2x2: F(2x2) alone), the
 * direct kernel elsewhere; "avx512-direct-bf16" at precision bf16; "avx512-direct" with
 * REALNVP_WINOGRAD=off; "avx2-direct", "winograd" or "openblas"; the
 * environment variable REALNVP_CONV=blas, avx2, winograd or avx512 overrides the CPU's choice) and
 * its thread count (the pool's threads with the caller; 1 when OpenBLAS does the threading). */
const char *rnvp_ctx_conv_kernel(const rnvp_ctx *ctx);
int rnvp_ctx_threads(const rnvp_ctx *ctx);

/* The arithmetic of a context's convolutions. RNVP_PRECISION_FP32, the default, is the
 * reference: float32 throughout (docs/model.md's 1e-4 bound with room to spare). BF16, opt-in,
 * rounds the inputs and weights of the convolutions with 16 or more input channels (all but the
 * first of each coupling network: nearly all the work) to bfloat16 (8 significant bits) and
 * multiplies them with AVX512_BF16 dot products, accumulating in float32; everything else stays
 * float32. Faster, and less exact: log p moves by about 1e-4 to 1e-3 of itself, and
 * decode(encode(x)) may miss a few pixels by a level or two (the inverse pass's network inputs
 * differ from the forward pass's by float32 rounding, which bf16 rounding can magnify);
 * docs/benchmarks.md#bf16 has the measured error against float64 and the bits/dim on a test set
 * next to the speed. */
enum rnvp_precision { RNVP_PRECISION_FP32 = 0, RNVP_PRECISION_BF16 = 1 };
/* Sets the context's precision for the calls that follow (any time; no allocation). BF16 is
 * RNVP_ERR_UNSUPPORTED, with a message saying what is missing, where the CPU lacks AVX-512
 * (F, BW, DQ, VL) with AVX512_BF16, where the context uses the OpenBLAS kernels
 * (REALNVP_CONV=blas) or the model was loaded without its bf16 weights; the context is then
 * unchanged. A bad value is RNVP_ERR_ARG. */
enum rnvp_status rnvp_ctx_set_precision(rnvp_ctx *ctx, enum rnvp_precision p, rnvp_error *err);
/* Whether this CPU can run precision p at all (for a program to refuse an option at start):
 * RNVP_OK, RNVP_ERR_UNSUPPORTED or RNVP_ERR_ARG with a message, as rnvp_ctx_set_precision. */
enum rnvp_status rnvp_precision_check(enum rnvp_precision p, rnvp_error *err);
enum rnvp_precision rnvp_ctx_precision(const rnvp_ctx *ctx);
/* "fp32" / "bf16" to the enum (RNVP_ERR_ARG naming the accepted values otherwise), and back
 * (NULL for a value outside the enum). */
enum rnvp_status rnvp_precision_parse(enum rnvp_precision *out, const char *name, rnvp_error *err);
const char *rnvp_precision_name(enum rnvp_precision p);

/* Set the number of threads the BLAS uses (process-wide: OpenBLAS keeps it globally), and so
 * the number of threads of contexts created afterwards (see the memory model above). */
void rnvp_set_num_threads(int n);
/* The name of the OpenBLAS kernel set in use (e.g. "Haswell"). */
const char *rnvp_blas_core(void);
/* For main() only, as its first statement: OpenBLAS picks its kernels when it is loaded, and
 * on CPUs it does not recognise (many virtual machines) it falls back to SSE3 kernels 3-4x
 * slower; on some AVX-512 CPUs (AMD Zen 4/5 with OpenBLAS 0.3.21) it uses its AVX2 kernels.
 * In those cases this re-executes the program (/proc/self/exe, same argv and environment)
 * with OPENBLAS_CORETYPE=SkylakeX (AVX-512 F/DQ/BW/VL present) or Haswell (AVX2 and FMA). It
 * does nothing when OPENBLAS_CORETYPE or REALNVP_NO_REEXEC is set; it returns when nothing was
 * done. */
void rnvp_blas_select_core(char **argv);

/* Log-probability of n 8-bit images in nats (docs/model.md section 3) and bits/dim.
 * pixels: (N, C, H, W). noise: (N, C, H, W) dequantization u in [0, 1), or NULL for u = 0.5.
 * log_prob: (N). bits_per_dim: (N) or NULL. */
enum rnvp_status rnvp_log_prob(rnvp_ctx *ctx, double *log_prob, double *bits_per_dim,
                               const uint8_t *pixels, const float *noise, int n,
                               rnvp_error *err);
/* Latent codes z = f(logit(dequantize(pixels))). z: (N, D). log_prob: (N) or NULL.
 * noise as in rnvp_log_prob. */
enum rnvp_status rnvp_encode(rnvp_ctx *ctx, float *z, double *log_prob, const uint8_t *pixels,
                             const float *noise, int n, rnvp_error *err);
/* Pixels from latents (docs/model.md section 4). z: (N, D), all finite (else RNVP_ERR_ARG).
 * pixels: (N, C, H, W). */
enum rnvp_status rnvp_decode(rnvp_ctx *ctx, uint8_t *pixels, const float *z, int n,
                             rnvp_error *err);
/* z ~ N(0, temp^2 I) from seed: z is (N, D). The same seed gives the same values everywhere
 * (own PRNG and Box-Muller; image i uses stream (seed, i)). */
void rnvp_sample_latents(float *z, int n, int d, double temp, uint64_t seed);
/* n samples at temperature temp: rnvp_sample_latents then rnvp_decode. pixels: (N, C, H, W).
 * z: (N, D) receives the latents, or NULL (then the context's workspace is used). */
enum rnvp_status rnvp_sample(rnvp_ctx *ctx, uint8_t *pixels, float *z, int n, double temp,
                             uint64_t seed, rnvp_error *err);

/* ---- PNG ---- */

/* Decode a PNG into pixels (C, H, W) for a model of that shape. Conversions: palette is
 * expanded; 16-bit samples are scaled to 8 bits (rounded); alpha is dropped (composited on
 * nothing); grey to RGB replicates the value; RGB to grey is round(0.299 R + 0.587 G +
 * 0.114 B) (ITU-R BT.601). A PNG of another width or height is RNVP_ERR_SIZE with a message
 * stating the expected W x H x C; a malformed one is RNVP_ERR_FORMAT. */
enum rnvp_status rnvp_png_decode(uint8_t *pixels, const void *png, size_t len, int channels,
                                 int height, int width, rnvp_error *err);
enum rnvp_status rnvp_png_read(uint8_t *pixels, const char *path, int channels, int height,
                               int width, rnvp_error *err);
/* Size and channel count (1 for grey / grey+alpha, 3 otherwise) of a PNG without decoding it. */
enum rnvp_status rnvp_png_info(const void *png, size_t len, int *channels, int *height,
                               int *width, rnvp_error *err);
/* Encode n images (N, C, H, W) as one PNG: a grid with `cols` columns (cols <= 0: about
 * sqrt(n)) and a 2-pixel border between tiles; n == 1 gives the bare image. level is the zlib
 * level 0..9 (-1 default). *png is allocated with malloc; the caller frees it. */
enum rnvp_status rnvp_png_encode_grid(uint8_t **png, size_t *len, const uint8_t *pixels, int n,
                                      int channels, int height, int width, int cols, int level,
                                      rnvp_error *err);
/* Whether rnvp_png_encode_grid would accept n images of this shape in `cols` columns (the grid
 * at most 16384 pixels a side), without encoding anything: RNVP_OK or RNVP_ERR_ARG with the
 * encoder's own message. */
enum rnvp_status rnvp_png_grid_check(int n, int channels, int height, int width, int cols, rnvp_error *err);
enum rnvp_status rnvp_png_write_grid(const char *path, const uint8_t *pixels, int n,
                                     int channels, int height, int width, int cols,
                                     rnvp_error *err);

/* The image's own lossless size: pixels (C, H, W) encoded alone as an 8-bit PNG by libpng at
 * zlib level 9 (libpng's adaptive row filters, no interlacing), *bpd = 8 * (bytes of the IDAT
 * chunks' data) / (C*H*W). The signature, IHDR and IEND chunks and the 12 framing bytes of each
 * chunk are excluded, so the figure counts only the compressed pixels. It is the complexity
 * estimate of Serra et al. (ICLR 2020): ood_score = bits_per_dim - png_bits_per_dim. */
enum rnvp_status rnvp_png_bits_per_dim(double *bpd, const uint8_t *pixels, int channels, int height,
                                       int width, rnvp_error *err);

/* ---- interpolation ---- */

/* z_out (steps, D): points k = 0..steps-1 at t = k / (steps - 1) between za and zb (D each).
 * Linear: (1 - t) za + t zb. Spherical: sin((1-t) w)/sin(w) za + sin(t w)/sin(w) zb with w the
 * angle between za and zb (linear when they are parallel or either is zero). Computed in
 * double; the ends are za and zb exactly. steps >= 2, else RNVP_ERR_ARG. */
enum rnvp_status rnvp_interpolate_latents(float *z_out, const float *za, const float *zb, int d,
                                          int steps, int spherical, rnvp_error *err);

#ifdef __cplusplus
}
#endif
#endif
