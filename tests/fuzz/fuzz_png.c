/* fuzz_png.c: libFuzzer harness for the PNG-to-tensor path the server runs on every upload
 * (rnvp_png_info, rnvp_png_decode into grey and RGB models). Leaves out the encoder. */
#include "../../include/realnvp.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FZPNG_MAX_PIXELS (256 * 256)

/* checks the invariants every decode must keep; aborts (a libFuzzer crash) when one is broken */
static void fzpng_decode(const uint8_t *data, size_t size, int c, int h, int w)
{
    size_t n = (size_t)c * (size_t)h * (size_t)w;
    uint8_t *px = malloc(n + 1);   /* (C, H, W) plus a guard byte */
    if (!px) return;
    memset(px, 0xA5, n + 1);
    rnvp_error err;
    err.msg[0] = 1;
    enum rnvp_status st = rnvp_png_decode(px, data, size, c, h, w, &err);
    if (px[n] != 0xA5) abort();   /* wrote past the image */
    if (st != RNVP_OK && (st > RNVP_ERR_NOMEM || !memchr(err.msg, 0, sizeof err.msg) || !err.msg[0])) abort();
    free(px);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int c = 0, h = 0, w = 0;
    rnvp_error err;
    if (rnvp_png_info(data, size, &c, &h, &w, &err) == RNVP_OK) {
        if ((c != 1 && c != 3) || h < 1 || w < 1) abort();
        /* the image's own size reaches the full decode; bounded so the fuzzer stays fast */
        if ((size_t)h * (size_t)w <= FZPNG_MAX_PIXELS) {
            fzpng_decode(data, size, 1, h, w);
            fzpng_decode(data, size, 3, h, w);
        }
    }
    /* the shapes the server's models have: mostly a size error, never a crash */
    fzpng_decode(data, size, 1, 28, 28);
    fzpng_decode(data, size, 3, 8, 6);
    return 0;
}
