/* png.c: PNG decoding with the header's conversions (size checked first) and the grid encoder.
 * Leaves out resizing, colour management (gAMA, iCCP, sRGB are ignored) and alpha compositing. */
#include "internal.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PNG_MAX_SIDE 16384   /* larger widths or heights are refused (read) or not written */
#define GRID_BORDER 2        /* pixels between tiles */
#define GRID_FILL 255        /* value of borders and empty tiles: white */

/* ---- reading ---- */

/* Where the bytes come from (memory, or a file when f != NULL) and what went wrong. */
typedef struct png_src {
    const uint8_t *buf;
    size_t len, pos;
    FILE *f;
    const char *name;       /* file name for messages, or NULL */
    int io_errno;           /* set when the file could not be read */
    int nomem;              /* set when an allocation inside libpng failed */
    char msg[200];          /* libpng's message */
} png_src;

static void on_error(png_structp png, png_const_charp msg)
{
    png_src *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof s->msg, "%s", msg);
    png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static png_voidp on_malloc(png_structp png, png_alloc_size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        png_src *s = png_get_mem_ptr(png);
        s->nomem = 1;
    }
    return p;
}

static void on_free(png_structp png, png_voidp p)
{
    (void)png;
    free(p);
}

/* Read n bytes; returns the count read (short only at the end of the data or on an error). */
static size_t src_read(png_src *s, uint8_t *out, size_t n)
{
    if (s->f) {
        size_t got = fread(out, 1, n, s->f);
        if (got != n && ferror(s->f)) s->io_errno = errno ? errno : EIO;
        return got;
    }
    size_t left = s->len - s->pos;
    if (n > left) n = left;
    if (n) memcpy(out, s->buf + s->pos, n);
    s->pos += n;
    return n;
}

static void on_read(png_structp png, png_bytep out, size_t n)
{
    png_src *s = png_get_io_ptr(png);
    if (src_read(s, out, n) != n) png_error(png, s->io_errno ? "read error" : "the data ends early (truncated)");
}

static const char *prefix(const png_src *s) { return s->name ? s->name : ""; }
static const char *colon(const png_src *s) { return s->name ? ": " : ""; }

/* Sample k of one pixel in a decoded row at bytes per sample bps; 16 bits are scaled to 8 with
 * rounding: round(v * 255 / 65535). */
static inline unsigned sample8(const uint8_t *p, int k, int bps)
{
    if (bps == 1) return p[k];
    unsigned v = ((unsigned)p[2 * k] << 8) | p[2 * k + 1];
    return (v * 255u + 32767u) / 65535u;
}

/* round(0.299 R + 0.587 G + 0.114 B), exact in integers; halves round up */
static inline uint8_t bt601(unsigned r, unsigned g, unsigned b)
{
    return (uint8_t)((299u * r + 587u * g + 114u * b + 500u) / 1000u);
}

/* Decode s. With pixels == NULL only reads the header into *ic, *ih, *iw. Otherwise checks the
 * size against (channels, height, width) and fills pixels (C, H, W) only on success. */
static enum rnvp_status png_load(png_src *s, uint8_t *pixels, int channels, int height, int width,
                                 int *ic, int *ih, int *iw, rnvp_error *err)
{
    uint8_t sig[8];
    size_t got = src_read(s, sig, 8);
    if (s->io_errno)
        return rnvpi_fail(err, RNVP_ERR_IO, "%s%sread error: %s", prefix(s), colon(s), strerror(s->io_errno));
    if (got < 8 || png_sig_cmp(sig, 0, 8))
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "%s%snot a PNG file (no PNG signature)", prefix(s), colon(s));

    png_structp png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, s, on_error, on_warning,
                                               s, on_malloc, on_free);
    if (!png) return rnvpi_fail(err, RNVP_ERR_NOMEM, "%s%sout of memory for the PNG decoder", prefix(s), colon(s));
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return rnvpi_fail(err, RNVP_ERR_NOMEM, "%s%sout of memory for the PNG decoder", prefix(s), colon(s));
    }
    uint8_t *volatile img = NULL;      /* (H, rowbytes) as libpng delivers it */
    png_bytep *volatile rows = NULL;   /* (H) */
    enum rnvp_status st = RNVP_OK;
    if (setjmp(png_jmpbuf(png))) {
        if (s->nomem) st = rnvpi_fail(err, RNVP_ERR_NOMEM, "%s%sout of memory while decoding the PNG", prefix(s), colon(s));
        else if (s->io_errno) st = rnvpi_fail(err, RNVP_ERR_IO, "%s%sread error: %s", prefix(s), colon(s), strerror(s->io_errno));
        else st = rnvpi_fail(err, RNVP_ERR_FORMAT, "%s%sbad PNG: %s", prefix(s), colon(s), s->msg);
        goto out;
    }
    png_set_read_fn(png, s, on_read);
    png_set_sig_bytes(png, 8);
    /* our own size limit below gives the clearer message; libpng's would come first */
    png_set_user_limits(png, PNG_UINT_31_MAX, PNG_UINT_31_MAX);
#ifdef PNG_HANDLE_AS_UNKNOWN_SUPPORTED
    /* skip every ancillary chunk but tRNS (text, ICC profiles, ...): nothing here uses them */
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);
#endif
    png_read_info(png, info);
    png_uint_32 w, h;
    int depth, color, interlace;
    png_get_IHDR(png, info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    int c_img = (color & PNG_COLOR_MASK_COLOR) ? 3 : 1;   /* palette counts as colour */
    if (w > PNG_MAX_SIDE || h > PNG_MAX_SIDE) {
        st = rnvpi_fail(err, RNVP_ERR_FORMAT, "%s%sthe PNG is %lux%lu, more than the %d pixels a side this library reads",
                       prefix(s), colon(s), (unsigned long)w, (unsigned long)h, PNG_MAX_SIDE);
        goto out;
    }
    if (!pixels) {
        *ic = c_img;
        *ih = (int)h;
        *iw = (int)w;
        goto out;
    }
    if ((int)w != width || (int)h != height) {
        st = rnvpi_fail(err, RNVP_ERR_SIZE, "%s%simage is %lux%lux%d, the model expects %dx%dx%d (W x H x C)",
                       prefix(s), colon(s), (unsigned long)w, (unsigned long)h, c_img, width, height, channels);
        goto out;
    }
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int oc = png_get_channels(png, info);         /* 1 G, 2 GA, 3 RGB, 4 RGBA */
    int bps = png_get_bit_depth(png, info) / 8;   /* 1 or 2 bytes per sample */
    size_t rb = png_get_rowbytes(png, info);
    if (oc < 1 || oc > 4 || bps < 1 || bps > 2 || rb != (size_t)w * oc * bps) {
        st = rnvpi_fail(err, RNVP_ERR_FORMAT, "%s%sbad PNG: unexpected row layout (%d channels, %d bits)",
                       prefix(s), colon(s), oc, 8 * bps);
        goto out;
    }
    img = malloc(rb * h);
    rows = malloc(h * sizeof *rows);
    if (!img || !rows) {
        st = rnvpi_fail(err, RNVP_ERR_NOMEM, "%s%sout of memory for a %lux%lu image", prefix(s), colon(s),
                       (unsigned long)w, (unsigned long)h);
        goto out;
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = img + y * rb;
    png_read_image(png, rows);
    png_read_end(png, NULL);

    size_t plane = (size_t)w * h;
    for (png_uint_32 y = 0; y < h; y++) {
        const uint8_t *row = img + y * rb;
        for (png_uint_32 x = 0; x < w; x++) {
            const uint8_t *p = row + (size_t)x * oc * bps;
            unsigned r = sample8(p, 0, bps), g = r, b = r;   /* grey replicates; alpha is skipped */
            if (oc >= 3) {
                g = sample8(p, 1, bps);
                b = sample8(p, 2, bps);
            }
            size_t i = (size_t)y * w + x;
            if (channels == 1) {
                pixels[i] = oc >= 3 ? bt601(r, g, b) : (uint8_t)r;
            } else {
                pixels[i] = (uint8_t)r;
                pixels[plane + i] = (uint8_t)g;
                pixels[2 * plane + i] = (uint8_t)b;
            }
        }
    }
out:
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    free(img);
    return st;
}

static enum rnvp_status check_shape(int channels, int height, int width, rnvp_error *err)
{
    if (channels != 1 && channels != 3)
        return rnvpi_fail(err, RNVP_ERR_ARG, "channels is %d, expected 1 or 3", channels);
    if (height < 1 || width < 1 || height > PNG_MAX_SIDE || width > PNG_MAX_SIDE)
        return rnvpi_fail(err, RNVP_ERR_ARG, "image size %dx%d (W x H) out of range 1..%d", width, height, PNG_MAX_SIDE);
    return RNVP_OK;
}

enum rnvp_status rnvp_png_decode(uint8_t *pixels, const void *png, size_t len, int channels,
                                 int height, int width, rnvp_error *err)
{
    if (!pixels || (!png && len)) return rnvpi_fail(err, RNVP_ERR_ARG, "rnvp_png_decode: NULL buffer");
    enum rnvp_status st = check_shape(channels, height, width, err);
    if (st) return st;
    png_src s = {.buf = png, .len = png ? len : 0};
    return png_load(&s, pixels, channels, height, width, NULL, NULL, NULL, err);
}

enum rnvp_status rnvp_png_read(uint8_t *pixels, const char *path, int channels, int height,
                               int width, rnvp_error *err)
{
    if (!pixels || !path) return rnvpi_fail(err, RNVP_ERR_ARG, "rnvp_png_read: NULL argument");
    enum rnvp_status st = check_shape(channels, height, width, err);
    if (st) return st;
    FILE *f = fopen(path, "rb");
    if (!f) return rnvpi_fail(err, RNVP_ERR_IO, "%s: %s", path, strerror(errno));
    png_src s = {.f = f, .name = path};
    st = png_load(&s, pixels, channels, height, width, NULL, NULL, NULL, err);
    fclose(f);
    return st;
}

enum rnvp_status rnvp_png_info(const void *png, size_t len, int *channels, int *height,
                               int *width, rnvp_error *err)
{
    if (!channels || !height || !width || (!png && len))
        return rnvpi_fail(err, RNVP_ERR_ARG, "rnvp_png_info: NULL argument");
    png_src s = {.buf = png, .len = png ? len : 0};
    return png_load(&s, NULL, 0, 0, 0, channels, height, width, err);
}

/* ---- writing ---- */

/* A growing output buffer and what went wrong. */
typedef struct png_dst {
    uint8_t *buf;
    size_t len, cap;
    int nomem;
    char msg[200];
} png_dst;

static void on_write_error(png_structp png, png_const_charp msg)
{
    png_dst *d = png_get_error_ptr(png);
    snprintf(d->msg, sizeof d->msg, "%s", msg);
    png_longjmp(png, 1);
}

static png_voidp on_write_malloc(png_structp png, png_alloc_size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        png_dst *d = png_get_mem_ptr(png);
        d->nomem = 1;
    }
    return p;
}

static void on_write(png_structp png, png_bytep data, size_t n)
{
    png_dst *d = png_get_io_ptr(png);
    if (n > d->cap - d->len) {
        size_t cap = d->cap ? d->cap : 4096;
        while (n > cap - d->len) {
            if (cap > SIZE_MAX / 2) png_error(png, "output too large");
            cap *= 2;
        }
        uint8_t *nb = realloc(d->buf, cap);
        if (!nb) {
            d->nomem = 1;
            png_error(png, "out of memory");
        }
        d->buf = nb;
        d->cap = cap;
    }
    memcpy(d->buf + d->len, data, n);
    d->len += n;
}

static void on_flush(png_structp png) { (void)png; }

/* Encode img (gh, gw, C) interleaved into d. */
static enum rnvp_status png_store(png_dst *d, const uint8_t *img, int channels, int gh, int gw,
                                  int level, rnvp_error *err)
{
    png_bytep *rows = malloc((size_t)gh * sizeof *rows);   /* (gh) */
    if (!rows) return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory for PNG rows");
    for (int y = 0; y < gh; y++) rows[y] = (png_bytep)(img + (size_t)y * gw * channels);
    png_structp png = png_create_write_struct_2(PNG_LIBPNG_VER_STRING, d, on_write_error, on_warning,
                                                d, on_write_malloc, on_free);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        free(rows);
        return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory for the PNG encoder");
    }
    enum rnvp_status st = RNVP_OK;
    if (setjmp(png_jmpbuf(png))) {
        st = d->nomem ? rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory while encoding the PNG")
                      : rnvpi_fail(err, RNVP_ERR_FORMAT, "PNG encoder: %s", d->msg);
        goto out;
    }
    png_set_write_fn(png, d, on_write, on_flush);
    png_set_IHDR(png, info, (png_uint_32)gw, (png_uint_32)gh, 8,
                 channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (level >= 0) png_set_compression_level(png, level);
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, NULL);
out:
    png_destroy_write_struct(&png, &info);
    free(rows);
    return st;
}

/* the grid's size in pixels and its column count (cols <= 0: about square); checks everything the
 * encoder checks before it allocates */
static enum rnvp_status grid_geometry(long long *gw, long long *gh, int *cols, int n, int channels, int height, int width,
                                      rnvp_error *err)
{
    if (n < 1) return rnvpi_fail(err, RNVP_ERR_ARG, "number of images is %d, expected at least 1", n);
    enum rnvp_status st = check_shape(channels, height, width, err);
    if (st) return st;
    if (*cols <= 0) {   /* ceil(sqrt(n)) */
        *cols = 1;
        while ((long long)*cols * *cols < n) (*cols)++;
    }
    if (*cols > n) *cols = n;
    int rows = (n + *cols - 1) / *cols;
    *gw = (long long)*cols * width + (long long)(*cols - 1) * GRID_BORDER;
    *gh = (long long)rows * height + (long long)(rows - 1) * GRID_BORDER;
    if (*gw > PNG_MAX_SIDE || *gh > PNG_MAX_SIDE)
        return rnvpi_fail(err, RNVP_ERR_ARG, "a grid of %d images in %d columns would be %lldx%lld pixels, more than %d a side",
                         n, *cols, *gw, *gh, PNG_MAX_SIDE);
    return RNVP_OK;
}

enum rnvp_status rnvp_png_grid_check(int n, int channels, int height, int width, int cols, rnvp_error *err)
{
    long long gw, gh;
    return grid_geometry(&gw, &gh, &cols, n, channels, height, width, err);
}

enum rnvp_status rnvp_png_encode_grid(uint8_t **png, size_t *len, const uint8_t *pixels, int n,
                                      int channels, int height, int width, int cols, int level,
                                      rnvp_error *err)
{
    if (!png || !len) return rnvpi_fail(err, RNVP_ERR_ARG, "rnvp_png_encode_grid: NULL output");
    *png = NULL;
    *len = 0;
    if (!pixels) return rnvpi_fail(err, RNVP_ERR_ARG, "rnvp_png_encode_grid: NULL pixels");
    if (level < -1 || level > 9) return rnvpi_fail(err, RNVP_ERR_ARG, "zlib level %d out of range -1..9", level);
    long long gw, gh;
    enum rnvp_status st = grid_geometry(&gw, &gh, &cols, n, channels, height, width, err);
    if (st) return st;
    size_t ibytes = (size_t)gw * (size_t)gh * (size_t)channels;
    uint8_t *img = malloc(ibytes);   /* (gh, gw, C) interleaved */
    if (!img) return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory for a %lldx%lld image", gw, gh);
    memset(img, GRID_FILL, ibytes);
    size_t plane = (size_t)height * width, dim = plane * channels;
    for (int i = 0; i < n; i++) {
        const uint8_t *src = pixels + (size_t)i * dim;   /* (C, H, W) */
        size_t x0 = (size_t)(i % cols) * (width + GRID_BORDER), y0 = (size_t)(i / cols) * (height + GRID_BORDER);
        for (int y = 0; y < height; y++) {
            uint8_t *dst = img + ((y0 + y) * (size_t)gw + x0) * channels;
            for (int x = 0; x < width; x++)
                for (int c = 0; c < channels; c++)
                    dst[(size_t)x * channels + c] = src[c * plane + (size_t)y * width + x];
        }
    }
    png_dst d = {0};
    st = png_store(&d, img, channels, (int)gh, (int)gw, level, err);
    free(img);
    if (st) {
        free(d.buf);
        return st;
    }
    *png = d.buf;
    *len = d.len;
    return RNVP_OK;
}

enum rnvp_status rnvp_png_write_grid(const char *path, const uint8_t *pixels, int n,
                                     int channels, int height, int width, int cols,
                                     rnvp_error *err)
{
    if (!path) return rnvpi_fail(err, RNVP_ERR_ARG, "rnvp_png_write_grid: NULL path");
    uint8_t *buf;
    size_t len;
    enum rnvp_status st = rnvp_png_encode_grid(&buf, &len, pixels, n, channels, height, width, cols, -1, err);
    if (st) return st;
    FILE *f = fopen(path, "wb");
    if (!f) {
        st = rnvpi_fail(err, RNVP_ERR_IO, "%s: %s", path, strerror(errno));
        free(buf);
        return st;
    }
    int e = 0;
    if (fwrite(buf, 1, len, f) != len) e = errno ? errno : EIO;
    if (fclose(f) && !e) e = errno ? errno : EIO;
    free(buf);
    if (e) {
        unlink(path);   /* do not leave a truncated PNG behind */
        return rnvpi_fail(err, RNVP_ERR_IO, "%s: writing failed: %s", path, strerror(e));
    }
    return RNVP_OK;
}

enum rnvp_status rnvp_png_bits_per_dim(double *bpd, const uint8_t *pixels, int channels, int height,
                                       int width, rnvp_error *err)
{
    if (!bpd) return rnvpi_fail(err, RNVP_ERR_ARG, "rnvp_png_bits_per_dim: NULL output");
    uint8_t *buf;
    size_t len;
    enum rnvp_status st = rnvp_png_encode_grid(&buf, &len, pixels, 1, channels, height, width, 1, 9, err);
    if (st) return st;
    /* sum the data lengths of the IDAT chunks: after the 8-byte signature, each chunk is a
     * 4-byte big-endian length, a 4-byte type, the data and a 4-byte CRC */
    size_t idat = 0, p = 8;
    while (p + 12 <= len) {
        size_t cl = (size_t)buf[p] << 24 | (size_t)buf[p + 1] << 16 | (size_t)buf[p + 2] << 8 | buf[p + 3];
        if (cl > len - p - 12) break;
        if (!memcmp(buf + p + 4, "IDAT", 4)) idat += cl;
        p += 12 + cl;
    }
    free(buf);
    *bpd = 8.0 * (double)idat / ((double)channels * height * width);
    return RNVP_OK;
}
