/* test_png.c: rnvp_png_*: round trips, grid geometry, conversions (palette, grey+alpha, RGBA,
 * 16-bit, low depths, interlace), size errors, truncated and garbage input. Leaves out the CLI. */
#include "realnvp.h"

#include <check.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* ---- helpers ---- */

typedef struct membuf {
    uint8_t *buf;
    size_t len, cap;
} membuf;

static void mem_write(png_structp png, png_bytep d, size_t n)
{
    membuf *m = png_get_io_ptr(png);
    if (m->len + n > m->cap) {
        m->cap = (m->len + n) * 2;
        m->buf = realloc(m->buf, m->cap);
        ck_assert_ptr_nonnull(m->buf);
    }
    memcpy(m->buf + m->len, d, n);
    m->len += n;
}

static void mem_flush(png_structp png) { (void)png; }

/* A PNG written with libpng directly. data: (h, rowbytes) samples as PNG stores them (16 bits
 * big-endian, low depths packed). pal/trns may be NULL. Returns malloc'ed bytes. */
static uint8_t *make_png(size_t *len, int w, int h, int depth, int color, const uint8_t *data,
                         const png_color *pal, int npal, const uint8_t *trns, int ntrns,
                         const png_color_16 *trns_col, int interlace)
{
    membuf m = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    ck_assert_ptr_nonnull(info);
    if (setjmp(png_jmpbuf(png))) ck_abort_msg("libpng failed to write a test PNG");
    png_set_write_fn(png, &m, mem_write, mem_flush);
    png_set_IHDR(png, info, w, h, depth, color, interlace, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (pal) png_set_PLTE(png, info, pal, npal);
    if (trns || trns_col) png_set_tRNS(png, info, trns, ntrns, trns_col);
    png_write_info(png, info);
    size_t rb = png_get_rowbytes(png, info);
    png_bytep *rows = malloc(h * sizeof *rows);
    for (int y = 0; y < h; y++) rows[y] = (png_bytep)data + y * rb;
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    *len = m.len;
    return m.buf;
}

static void fill_random(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

static uint8_t bt601_ref(unsigned r, unsigned g, unsigned b)
{
    return (uint8_t)((299 * r + 587 * g + 114 * b + 500) / 1000);
}

/* decode as both grey and RGB; out1 (h*w), out3 (3*h*w) */
static void decode_both(const uint8_t *png, size_t len, int h, int w, uint8_t *out1, uint8_t *out3)
{
    rnvp_error e;
    ck_assert_msg(rnvp_png_decode(out1, png, len, 1, h, w, &e) == RNVP_OK, "%s", e.msg);
    ck_assert_msg(rnvp_png_decode(out3, png, len, 3, h, w, &e) == RNVP_OK, "%s", e.msg);
}

static char tmpdir[64];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/rnvp_test_png_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

/* ---- round trips ---- */

static void roundtrip(int c, int h, int w, int level)
{
    size_t d = (size_t)c * h * w;
    uint8_t *px = malloc(d), *back = malloc(d);
    fill_random(px, d, 7u + c + level);
    uint8_t *png;
    size_t len;
    rnvp_error e;
    ck_assert_msg(rnvp_png_encode_grid(&png, &len, px, 1, c, h, w, 0, level, &e) == RNVP_OK, "%s", e.msg);
    int ic, ih, iw;
    ck_assert_msg(rnvp_png_info(png, len, &ic, &ih, &iw, &e) == RNVP_OK, "%s", e.msg);
    ck_assert_int_eq(ic, c);
    ck_assert_int_eq(ih, h);
    ck_assert_int_eq(iw, w);
    memset(back, 0xAA, d);
    ck_assert_msg(rnvp_png_decode(back, png, len, c, h, w, &e) == RNVP_OK, "%s", e.msg);
    ck_assert_mem_eq(back, px, d);
    free(png);
    free(px);
    free(back);
}

START_TEST(test_roundtrip_grey)
{
    for (int level = -1; level <= 9; level++) roundtrip(1, 5, 7, level);
    roundtrip(1, 1, 1, -1);
    roundtrip(1, 28, 28, 6);
}
END_TEST

START_TEST(test_roundtrip_rgb)
{
    for (int level = -1; level <= 9; level += 5) roundtrip(3, 5, 7, level);
    roundtrip(3, 32, 32, -1);
}
END_TEST

START_TEST(test_file_roundtrip)
{
    make_tmpdir();
    char path[128];
    snprintf(path, sizeof path, "%s/a.png", tmpdir);
    uint8_t px[3 * 6 * 4], back[sizeof px];
    fill_random(px, sizeof px, 3);
    rnvp_error e;
    ck_assert_msg(rnvp_png_write_grid(path, px, 1, 3, 6, 4, 0, &e) == RNVP_OK, "%s", e.msg);
    ck_assert_msg(rnvp_png_read(back, path, 3, 6, 4, &e) == RNVP_OK, "%s", e.msg);
    ck_assert_mem_eq(back, px, sizeof px);
    /* wrong size from a file: the message names the file */
    ck_assert_int_eq(rnvp_png_read(back, path, 1, 6, 6, &e), RNVP_ERR_SIZE);
    char want[256];
    snprintf(want, sizeof want, "%s: image is 4x6x3, the model expects 6x6x1 (W x H x C)", path);
    ck_assert_str_eq(e.msg, want);
    unlink(path);
    /* missing file, unwritable path */
    ck_assert_int_eq(rnvp_png_read(back, path, 3, 6, 4, &e), RNVP_ERR_IO);
    ck_assert_int_eq(e.status, RNVP_ERR_IO);
    ck_assert_ptr_nonnull(strstr(e.msg, path));
    snprintf(path, sizeof path, "%s/no/such/dir.png", tmpdir);
    ck_assert_int_eq(rnvp_png_write_grid(path, px, 1, 3, 6, 4, 0, &e), RNVP_ERR_IO);
    /* a directory is not a PNG */
    ck_assert_int_ne(rnvp_png_read(back, tmpdir, 3, 6, 4, &e), RNVP_OK);
    /* an empty file */
    snprintf(path, sizeof path, "%s/empty.png", tmpdir);
    fclose(fopen(path, "wb"));
    ck_assert_int_eq(rnvp_png_read(back, path, 3, 6, 4, &e), RNVP_ERR_FORMAT);
    unlink(path);
    rmdir(tmpdir);
}
END_TEST

/* ---- grid ---- */

static void check_grid(int n, int c, int h, int w, int cols, int want_cols, int want_rows)
{
    size_t d = (size_t)c * h * w;
    uint8_t *px = malloc(n * d);
    fill_random(px, n * d, 11u + n);
    for (size_t i = 0; i < n * d; i++)
        if (px[i] == 255) px[i] = 254;   /* so tiles never look like the border */
    uint8_t *png;
    size_t len;
    rnvp_error e;
    ck_assert_msg(rnvp_png_encode_grid(&png, &len, px, n, c, h, w, cols, 1, &e) == RNVP_OK, "%s", e.msg);
    int gw = want_cols * w + (want_cols - 1) * 2, gh = want_rows * h + (want_rows - 1) * 2;
    int ic, ih, iw;
    ck_assert_msg(rnvp_png_info(png, len, &ic, &ih, &iw, &e) == RNVP_OK, "%s", e.msg);
    ck_assert_int_eq(ic, c);
    ck_assert_int_eq(iw, gw);
    ck_assert_int_eq(ih, gh);
    uint8_t *g = malloc((size_t)c * gw * gh);   /* (C, gh, gw) */
    ck_assert_msg(rnvp_png_decode(g, png, len, c, gh, gw, &e) == RNVP_OK, "%s", e.msg);
    for (int ch = 0; ch < c; ch++)
        for (int y = 0; y < gh; y++)
            for (int x = 0; x < gw; x++) {
                int ty = y / (h + 2), tx = x / (w + 2), oy = y % (h + 2), ox = x % (w + 2);
                int t = ty * want_cols + tx;
                uint8_t want = 255;
                if (oy < h && ox < w && t < n) want = px[t * d + ((size_t)ch * h + oy) * w + ox];
                ck_assert_msg(g[((size_t)ch * gh + y) * gw + x] == want,
                              "n=%d cols=%d: pixel (%d,%d,%d) is %d, expected %d", n, cols, ch, y, x,
                              g[((size_t)ch * gh + y) * gw + x], want);
            }
    free(g);
    free(png);
    free(px);
}

START_TEST(test_grid_geometry)
{
    check_grid(1, 1, 3, 4, 0, 1, 1);    /* bare image */
    check_grid(1, 3, 3, 4, 5, 1, 1);    /* bare image, whatever cols says */
    check_grid(4, 1, 3, 4, 0, 2, 2);
    check_grid(5, 3, 3, 4, 0, 3, 2);    /* ceil(sqrt(5)) = 3; the sixth tile is empty (white) */
    check_grid(5, 3, 3, 4, -1, 3, 2);
    check_grid(5, 1, 3, 4, 2, 2, 3);
    check_grid(5, 1, 3, 4, 10, 5, 1);   /* cols > n: one row */
    check_grid(16, 1, 8, 8, 0, 4, 4);
    check_grid(17, 3, 2, 2, 0, 5, 4);
    check_grid(3, 1, 2, 5, 1, 1, 3);
}
END_TEST

START_TEST(test_grid_args)
{
    uint8_t px[12] = {0}, *png = (uint8_t *)1;
    size_t len = 99;
    rnvp_error e;
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, px, 0, 1, 3, 4, 0, -1, &e), RNVP_ERR_ARG);
    ck_assert_ptr_null(png);
    ck_assert_int_eq(len, 0);
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, px, 1, 2, 3, 2, 0, -1, &e), RNVP_ERR_ARG);
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, px, 1, 1, 3, 4, 0, 10, &e), RNVP_ERR_ARG);
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, px, 1, 1, 3, 4, 0, -2, &e), RNVP_ERR_ARG);
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, px, 1, 1, 0, 4, 0, -1, &e), RNVP_ERR_ARG);
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, NULL, 1, 1, 3, 4, 0, -1, &e), RNVP_ERR_ARG);
    /* a grid larger than 16384 a side is refused before allocating */
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, px, 100000, 1, 1, 1, 1, -1, &e), RNVP_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(e.msg, "16384"));
    ck_assert_int_eq(rnvp_png_decode(px, "x", 1, 2, 3, 4, &e), RNVP_ERR_ARG);
    ck_assert_int_eq(rnvp_png_decode(px, "x", 1, 1, 0, 4, &e), RNVP_ERR_ARG);
    /* err may be NULL */
    ck_assert_int_eq(rnvp_png_decode(px, "x", 1, 1, 3, 4, NULL), RNVP_ERR_FORMAT);
}
END_TEST

/* ---- conversions ---- */

START_TEST(test_palette)
{
    const png_color pal[4] = {{0, 0, 0}, {255, 0, 0}, {0, 255, 0}, {100, 150, 200}};
    const uint8_t idx[2 * 3] = {0, 1, 2, 3, 2, 1};   /* 3x2, 8-bit indices */
    size_t len;
    uint8_t *png = make_png(&len, 3, 2, 8, PNG_COLOR_TYPE_PALETTE, idx, pal, 4, NULL, 0, NULL, 0);
    int ic, ih, iw;
    rnvp_error e;
    ck_assert_int_eq(rnvp_png_info(png, len, &ic, &ih, &iw, &e), RNVP_OK);
    ck_assert_int_eq(ic, 3);
    uint8_t g[6], rgb[18];
    decode_both(png, len, 2, 3, g, rgb);
    for (int i = 0; i < 6; i++) {
        png_color p = pal[idx[i]];
        ck_assert_int_eq(rgb[i], p.red);
        ck_assert_int_eq(rgb[6 + i], p.green);
        ck_assert_int_eq(rgb[12 + i], p.blue);
        ck_assert_int_eq(g[i], bt601_ref(p.red, p.green, p.blue));
    }
    ck_assert_int_eq(g[1], 76);    /* 0.299 * 255 = 76.245 */
    ck_assert_int_eq(g[2], 150);   /* 0.587 * 255 = 149.685 */
    ck_assert_int_eq(g[3], 141);   /* 29.9 + 88.05 + 22.8 = 140.75 */
    free(png);

    /* 2-bit palette with transparency: alpha is dropped, the colours stay */
    const uint8_t trns[4] = {0, 128, 255, 10};
    const uint8_t packed[2] = {0x1B, 0x90};   /* indices 0 1 2 3 | 2 1 0 0 (4x2, 2 bits) */
    png = make_png(&len, 4, 2, 2, PNG_COLOR_TYPE_PALETTE, packed, pal, 4, trns, 4, NULL, 0);
    uint8_t g2[8], rgb2[24];
    decode_both(png, len, 2, 4, g2, rgb2);
    const int want[8] = {0, 1, 2, 3, 2, 1, 0, 0};
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(rgb2[i], pal[want[i]].red);
        ck_assert_int_eq(rgb2[8 + i], pal[want[i]].green);
        ck_assert_int_eq(rgb2[16 + i], pal[want[i]].blue);
        ck_assert_int_eq(g2[i], bt601_ref(pal[want[i]].red, pal[want[i]].green, pal[want[i]].blue));
    }
    free(png);
}
END_TEST

START_TEST(test_grey_low_depth)
{
    /* 1-bit: 0 -> 0, 1 -> 255 */
    const uint8_t bits[2] = {0xA0, 0x50};   /* 1 0 1 0 | 0 1 0 1 (4x2) */
    size_t len;
    uint8_t *png = make_png(&len, 4, 2, 1, PNG_COLOR_TYPE_GRAY, bits, NULL, 0, NULL, 0, NULL, 0);
    uint8_t g[8], rgb[24];
    decode_both(png, len, 2, 4, g, rgb);
    const uint8_t want1[8] = {255, 0, 255, 0, 0, 255, 0, 255};
    ck_assert_mem_eq(g, want1, 8);
    for (int c = 0; c < 3; c++) ck_assert_mem_eq(rgb + 8 * c, want1, 8);
    free(png);
    /* 4-bit: v -> 17 v */
    const uint8_t nib[2] = {0x0F, 0x7A};   /* 0 15 7 10 (4x1) */
    png = make_png(&len, 4, 1, 4, PNG_COLOR_TYPE_GRAY, nib, NULL, 0, NULL, 0, NULL, 0);
    uint8_t g4[4], rgb4[12];
    decode_both(png, len, 1, 4, g4, rgb4);
    const uint8_t want4[4] = {0, 255, 119, 170};
    ck_assert_mem_eq(g4, want4, 4);
    free(png);
    /* 8-bit grey with a tRNS colour: unchanged */
    const uint8_t grey[3] = {5, 6, 7};
    png_color_16 tc = {.gray = 6};
    png = make_png(&len, 3, 1, 8, PNG_COLOR_TYPE_GRAY, grey, NULL, 0, NULL, 0, &tc, 0);
    uint8_t g8[3], rgb8[9];
    decode_both(png, len, 1, 3, g8, rgb8);
    ck_assert_mem_eq(g8, grey, 3);
    ck_assert_mem_eq(rgb8 + 3, grey, 3);
    free(png);
}
END_TEST

START_TEST(test_grey_alpha)
{
    const uint8_t ga[2 * 3 * 2] = {10, 0, 20, 255, 30, 128, 40, 1, 50, 2, 250, 3};   /* 3x2 (G, A) */
    size_t len;
    uint8_t *png = make_png(&len, 3, 2, 8, PNG_COLOR_TYPE_GRAY_ALPHA, ga, NULL, 0, NULL, 0, NULL, 0);
    int ic, ih, iw;
    rnvp_error e;
    ck_assert_int_eq(rnvp_png_info(png, len, &ic, &ih, &iw, &e), RNVP_OK);
    ck_assert_int_eq(ic, 1);
    uint8_t g[6], rgb[18];
    decode_both(png, len, 2, 3, g, rgb);
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(g[i], ga[2 * i]);
        for (int c = 0; c < 3; c++) ck_assert_int_eq(rgb[6 * c + i], ga[2 * i]);
    }
    free(png);
}
END_TEST

START_TEST(test_rgba)
{
    uint8_t rgba[4 * 5 * 3];   /* 5x3 */
    fill_random(rgba, sizeof rgba, 5);
    size_t len;
    uint8_t *png = make_png(&len, 5, 3, 8, PNG_COLOR_TYPE_RGB_ALPHA, rgba, NULL, 0, NULL, 0, NULL, 0);
    uint8_t g[15], rgb[45];
    decode_both(png, len, 3, 5, g, rgb);
    for (int i = 0; i < 15; i++) {
        const uint8_t *p = rgba + 4 * i;
        for (int c = 0; c < 3; c++) ck_assert_int_eq(rgb[15 * c + i], p[c]);
        ck_assert_int_eq(g[i], bt601_ref(p[0], p[1], p[2]));
    }
    free(png);
}
END_TEST

START_TEST(test_rgb_to_grey)
{
    uint8_t rgb[3 * 16 * 16], g[256], back[3 * 256];   /* 16x16 planar */
    fill_random(rgb, sizeof rgb, 9);
    rgb[0] = 255, rgb[256] = 255, rgb[512] = 255;   /* white stays white */
    rgb[1] = 1, rgb[257] = 1, rgb[513] = 1;
    uint8_t *png;
    size_t len;
    rnvp_error e;
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, rgb, 1, 3, 16, 16, 0, -1, &e), RNVP_OK);
    decode_both(png, len, 16, 16, g, back);
    ck_assert_mem_eq(back, rgb, sizeof rgb);
    for (int i = 0; i < 256; i++) {
        double exact = 0.299 * rgb[i] + 0.587 * rgb[256 + i] + 0.114 * rgb[512 + i];
        ck_assert_msg(g[i] >= exact - 0.5 - 1e-9 && g[i] <= exact + 0.5 + 1e-9, "grey %d for %.4f", g[i], exact);
        ck_assert_int_eq(g[i], bt601_ref(rgb[i], rgb[256 + i], rgb[512 + i]));
    }
    ck_assert_int_eq(g[0], 255);
    ck_assert_int_eq(g[1], 1);
    free(png);
}
END_TEST

static unsigned scale16_ref(unsigned v) { return (unsigned)((v * 255.0 / 65535.0) + 0.5); }

START_TEST(test_16bit)
{
    /* grey 16: values around the rounding points */
    const unsigned vals[8] = {0, 65535, 128, 129, 32896, 32767, 257 * 200 + 128, 257 * 200 + 129};
    const uint8_t want[8] = {0, 255, 0, 1, 128, 127, 200, 201};
    uint8_t be[16];
    for (int i = 0; i < 8; i++) {
        be[2 * i] = (uint8_t)(vals[i] >> 8);
        be[2 * i + 1] = (uint8_t)vals[i];
        ck_assert_uint_eq(scale16_ref(vals[i]), want[i]);
    }
    size_t len;
    uint8_t *png = make_png(&len, 4, 2, 16, PNG_COLOR_TYPE_GRAY, be, NULL, 0, NULL, 0, NULL, 0);
    uint8_t g[8], rgb[24];
    decode_both(png, len, 2, 4, g, rgb);
    ck_assert_mem_eq(g, want, 8);
    ck_assert_mem_eq(rgb + 16, want, 8);
    free(png);

    /* every 16-bit value of a grey ramp (256x256) against the reference */
    uint8_t *ramp = malloc(2 * 65536), *out = malloc(65536);
    for (unsigned v = 0; v < 65536; v++) ramp[2 * v] = (uint8_t)(v >> 8), ramp[2 * v + 1] = (uint8_t)v;
    png = make_png(&len, 256, 256, 16, PNG_COLOR_TYPE_GRAY, ramp, NULL, 0, NULL, 0, NULL, 0);
    rnvp_error e;
    ck_assert_int_eq(rnvp_png_decode(out, png, len, 1, 256, 256, &e), RNVP_OK);
    for (unsigned v = 0; v < 65536; v++) ck_assert_uint_eq(out[v], scale16_ref(v));
    free(png);
    free(out);
    free(ramp);

    /* RGB 16 and RGBA 16: scaled first, then converted */
    uint8_t rgb16[2 * 3 * 6], rgba16[2 * 4 * 6];   /* 3x2 */
    fill_random(rgb16, sizeof rgb16, 21);
    for (int i = 0; i < 6; i++) {
        memcpy(rgba16 + 8 * i, rgb16 + 6 * i, 6);
        rgba16[8 * i + 6] = (uint8_t)(i * 40), rgba16[8 * i + 7] = 3;
    }
    uint8_t *p1 = make_png(&len, 3, 2, 16, PNG_COLOR_TYPE_RGB, rgb16, NULL, 0, NULL, 0, NULL, 0);
    size_t len2;
    uint8_t *p2 = make_png(&len2, 3, 2, 16, PNG_COLOR_TYPE_RGB_ALPHA, rgba16, NULL, 0, NULL, 0, NULL, 0);
    uint8_t g1[6], c1[18], g2[6], c2[18];
    decode_both(p1, len, 2, 3, g1, c1);
    decode_both(p2, len2, 2, 3, g2, c2);
    ck_assert_mem_eq(g1, g2, 6);
    ck_assert_mem_eq(c1, c2, 18);
    for (int i = 0; i < 6; i++) {
        unsigned s[3];
        for (int c = 0; c < 3; c++) {
            s[c] = scale16_ref(((unsigned)rgb16[6 * i + 2 * c] << 8) | rgb16[6 * i + 2 * c + 1]);
            ck_assert_uint_eq(c1[6 * c + i], s[c]);
        }
        ck_assert_int_eq(g1[i], bt601_ref(s[0], s[1], s[2]));
    }
    free(p1);
    free(p2);
}
END_TEST

START_TEST(test_interlaced)
{
    uint8_t rgb[3 * 13 * 11];   /* 11x13 interleaved */
    fill_random(rgb, sizeof rgb, 17);
    size_t len;
    uint8_t *png = make_png(&len, 11, 13, 8, PNG_COLOR_TYPE_RGB, rgb, NULL, 0, NULL, 0, NULL, PNG_INTERLACE_ADAM7);
    uint8_t g[143], c3[429];
    decode_both(png, len, 13, 11, g, c3);
    for (int i = 0; i < 143; i++)
        for (int c = 0; c < 3; c++) ck_assert_int_eq(c3[143 * c + i], rgb[3 * i + c]);
    free(png);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_wrong_size)
{
    uint8_t px[3 * 32 * 32] = {0}, out[28 * 28];
    uint8_t *png;
    size_t len;
    rnvp_error e;
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, px, 1, 3, 32, 32, 0, -1, &e), RNVP_OK);
    memset(out, 7, sizeof out);
    ck_assert_int_eq(rnvp_png_decode(out, png, len, 1, 28, 28, &e), RNVP_ERR_SIZE);
    ck_assert_int_eq(e.status, RNVP_ERR_SIZE);
    ck_assert_str_eq(e.msg, "image is 32x32x3, the model expects 28x28x1 (W x H x C)");
    for (size_t i = 0; i < sizeof out; i++) ck_assert_int_eq(out[i], 7);   /* untouched */
    ck_assert_int_eq(rnvp_png_decode(out, png, len, 1, 32, 28, &e), RNVP_ERR_SIZE);
    ck_assert_str_eq(e.msg, "image is 32x32x3, the model expects 28x32x1 (W x H x C)");
    free(png);
    /* a non-square one: W and H are not swapped */
    uint8_t g[5 * 3] = {0};
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, g, 1, 1, 3, 5, 0, -1, &e), RNVP_OK);
    uint8_t o3[3 * 5 * 3];
    ck_assert_int_eq(rnvp_png_decode(o3, png, len, 3, 5, 3, &e), RNVP_ERR_SIZE);
    ck_assert_str_eq(e.msg, "image is 5x3x1, the model expects 3x5x3 (W x H x C)");
    ck_assert_int_eq(rnvp_png_decode(o3, png, len, 3, 3, 5, &e), RNVP_OK);
    free(png);
}
END_TEST

START_TEST(test_truncated)
{
    uint8_t px[3 * 9 * 7];
    fill_random(px, sizeof px, 1);
    uint8_t *png;
    size_t len;
    rnvp_error e;
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, px, 1, 3, 9, 7, 0, 9, &e), RNVP_OK);
    uint8_t out[sizeof px];
    for (size_t l = 0; l < len; l++) {
        uint8_t *cut = malloc(l ? l : 1);   /* exact size, so ASan sees any over-read */
        memcpy(cut, png, l);
        e.status = RNVP_OK;
        ck_assert_msg(rnvp_png_decode(out, cut, l, 3, 9, 7, &e) == RNVP_ERR_FORMAT, "length %zu: %s", l, e.msg);
        ck_assert_int_eq(e.status, RNVP_ERR_FORMAT);
        ck_assert_ptr_null(strchr(e.msg, '\n'));
        int ic, ih, iw;
        enum rnvp_status st = rnvp_png_info(cut, l, &ic, &ih, &iw, &e);
        ck_assert(st == RNVP_OK || st == RNVP_ERR_FORMAT);
        if (l < 33) ck_assert_int_eq(st, RNVP_ERR_FORMAT);   /* before the end of IHDR */
        free(cut);
    }
    ck_assert_int_eq(rnvp_png_decode(out, png, len, 3, 9, 7, &e), RNVP_OK);
    ck_assert_int_eq(rnvp_png_decode(out, NULL, 0, 3, 9, 7, &e), RNVP_ERR_FORMAT);
    free(png);
}
END_TEST

START_TEST(test_garbage)
{
    uint8_t px[9 * 7], out[3 * 9 * 7];
    fill_random(px, sizeof px, 2);
    uint8_t *png;
    size_t len;
    rnvp_error e;
    ck_assert_int_eq(rnvp_png_encode_grid(&png, &len, px, 1, 1, 9, 7, 0, 6, &e), RNVP_OK);
    /* random bytes, with and without a PNG signature */
    uint8_t junk[500];
    fill_random(junk, sizeof junk, 99);
    ck_assert_int_eq(rnvp_png_decode(out, junk, sizeof junk, 1, 9, 7, &e), RNVP_ERR_FORMAT);
    ck_assert_str_eq(e.msg, "not a PNG file (no PNG signature)");
    memcpy(junk, png, 8);
    ck_assert_int_eq(rnvp_png_decode(out, junk, sizeof junk, 1, 9, 7, &e), RNVP_ERR_FORMAT);
    int ic, ih, iw;
    ck_assert_int_eq(rnvp_png_info(junk, sizeof junk, &ic, &ih, &iw, &e), RNVP_ERR_FORMAT);
    /* every single-bit flip: an error or a correct decode, never a crash (CRCs catch most) */
    uint8_t *bad = malloc(len);
    for (size_t i = 0; i < len; i++)
        for (int b = 0; b < 8; b += 3) {
            memcpy(bad, png, len);
            bad[i] ^= (uint8_t)(1 << b);
            enum rnvp_status st = rnvp_png_decode(out, bad, len, 1, 9, 7, &e);
            ck_assert_msg(st == RNVP_OK || st == RNVP_ERR_FORMAT || st == RNVP_ERR_SIZE,
                          "byte %zu bit %d: %s", i, b, e.msg);
            st = rnvp_png_decode(out, bad, len, 3, 9, 7, &e);
            ck_assert(st == RNVP_OK || st == RNVP_ERR_FORMAT || st == RNVP_ERR_SIZE);
        }
    free(bad);
    /* trailing garbage after IEND is ignored; garbage replacing IEND is not */
    uint8_t *longer = malloc(len + 100);
    memcpy(longer, png, len);
    memcpy(longer + len, junk, 100);
    ck_assert_int_eq(rnvp_png_decode(out, longer, len + 100, 1, 9, 7, &e), RNVP_OK);
    memcpy(longer + len - 12, junk + 100, 100);
    ck_assert_int_eq(rnvp_png_decode(out, longer, len + 88, 1, 9, 7, &e), RNVP_ERR_FORMAT);
    free(longer);
    free(png);
}
END_TEST

/* the bytes of a PNG that ends after its IHDR and an empty IDAT: (b) 45 bytes */
static size_t header_only(uint8_t *b, uint32_t w, uint32_t h, int depth, int color)
{
    static const uint8_t sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    memcpy(b, sig, 8);
    uint8_t *c = b + 8;
    c[0] = 0, c[1] = 0, c[2] = 0, c[3] = 13;
    memcpy(c + 4, "IHDR", 4);
    for (int i = 0; i < 4; i++) c[8 + i] = (uint8_t)(w >> (24 - 8 * i)), c[12 + i] = (uint8_t)(h >> (24 - 8 * i));
    c[16] = (uint8_t)depth, c[17] = (uint8_t)color, c[18] = 0, c[19] = 0, c[20] = 0;
    uLong crc = crc32(0, c + 4, 17);
    for (int i = 0; i < 4; i++) c[21 + i] = (uint8_t)(crc >> (24 - 8 * i));
    c += 25;
    c[0] = 0, c[1] = 0, c[2] = 0, c[3] = 0;
    memcpy(c + 4, "IDAT", 4);
    crc = crc32(0, c + 4, 4);
    for (int i = 0; i < 4; i++) c[8 + i] = (uint8_t)(crc >> (24 - 8 * i));
    return 45;
}

START_TEST(test_absurd_size)
{
    uint8_t b[64], out[16];
    rnvp_error e;
    int ic, ih, iw;
    size_t l = header_only(b, 7, 9, 8, 2);
    ck_assert_msg(rnvp_png_info(b, l, &ic, &ih, &iw, &e) == RNVP_OK, "%s", e.msg);   /* info stops at IDAT */
    ck_assert_int_eq(ic, 3);
    ck_assert_int_eq(ih, 9);
    ck_assert_int_eq(iw, 7);
    l = header_only(b, 20000, 9, 8, 0);
    ck_assert_int_eq(rnvp_png_info(b, l, &ic, &ih, &iw, &e), RNVP_ERR_FORMAT);
    ck_assert_str_eq(e.msg, "the PNG is 20000x9, more than the 16384 pixels a side this library reads");
    l = header_only(b, 3, 2000000000u, 8, 0);
    ck_assert_int_eq(rnvp_png_info(b, l, &ic, &ih, &iw, &e), RNVP_ERR_FORMAT);
    ck_assert_int_eq(rnvp_png_decode(out, b, l, 1, 4, 4, &e), RNVP_ERR_FORMAT);
    l = header_only(b, 0x80000001u, 0x80000001u, 16, 6);   /* beyond the PNG limit itself */
    ck_assert_int_eq(rnvp_png_info(b, l, &ic, &ih, &iw, &e), RNVP_ERR_FORMAT);
    l = header_only(b, 0, 4, 8, 0);
    ck_assert_int_eq(rnvp_png_info(b, l, &ic, &ih, &iw, &e), RNVP_ERR_FORMAT);
    l = header_only(b, 4, 4, 7, 0);   /* bad bit depth */
    ck_assert_int_eq(rnvp_png_info(b, l, &ic, &ih, &iw, &e), RNVP_ERR_FORMAT);
    l = header_only(b, 4, 4, 8, 2);   /* the right size but no image data */
    ck_assert_int_eq(rnvp_png_decode(out, b, l, 1, 4, 4, &e), RNVP_ERR_FORMAT);
}
END_TEST

static Suite *png_suite(void)
{
    Suite *s = suite_create("png");
    TCase *t = tcase_create("png");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_roundtrip_grey);
    tcase_add_test(t, test_roundtrip_rgb);
    tcase_add_test(t, test_file_roundtrip);
    tcase_add_test(t, test_grid_geometry);
    tcase_add_test(t, test_grid_args);
    tcase_add_test(t, test_palette);
    tcase_add_test(t, test_grey_low_depth);
    tcase_add_test(t, test_grey_alpha);
    tcase_add_test(t, test_rgba);
    tcase_add_test(t, test_rgb_to_grey);
    tcase_add_test(t, test_16bit);
    tcase_add_test(t, test_interlaced);
    tcase_add_test(t, test_wrong_size);
    tcase_add_test(t, test_truncated);
    tcase_add_test(t, test_garbage);
    tcase_add_test(t, test_absurd_size);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    SRunner *r = srunner_create(png_suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
