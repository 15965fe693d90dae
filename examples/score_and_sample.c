/* score_and_sample.c: a program that uses the installed realnvp library: loads a checkpoint,
 * scores a PNG (log-likelihood and bits/dim) and writes a grid of samples. Leaves out batching
 * many images (see bin/realnvp) and error recovery beyond a message.
 *
 *   cc score_and_sample.c $(pkg-config --cflags --libs realnvp) -o score_and_sample
 *   ./score_and_sample model.safetensors image.png samples.png
 */
#include <realnvp.h>

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.safetensors IMAGE.png OUT.png\n", argv[0]);
        return 2;
    }
    rnvp_model *m = NULL;
    rnvp_ctx *ctx = NULL;
    rnvp_error e;
    uint8_t *px = NULL;   /* (16, C, H, W): the image, then the samples */
    int rc = 1;
    if (rnvp_model_load(&m, argv[1], &e) || rnvp_ctx_create(&ctx, m, 16, &e)) goto out;
    const rnvp_config *c = rnvp_model_config(m);
    px = malloc((size_t)16 * (size_t)rnvp_model_dim(m));
    if (!px) goto out;
    double lp, bpd;
    if (rnvp_png_read(px, argv[2], c->channels, c->height, c->width, &e) ||
        rnvp_log_prob(ctx, &lp, &bpd, px, NULL, 1, &e))
        goto out;
    printf("%s: log_prob %.6f nats, %.4f bits/dim\n", argv[2], lp, bpd);
    if (rnvp_sample(ctx, px, NULL, 16, 0.7, 42, &e) ||
        rnvp_png_write_grid(argv[3], px, 16, c->channels, c->height, c->width, 4, &e))
        goto out;
    printf("16 samples at temperature 0.7: %s\n", argv[3]);
    rc = 0;
out:
    if (rc) fprintf(stderr, "score_and_sample: %s\n", px ? e.msg : "out of memory");
    free(px);
    rnvp_ctx_free(ctx);
    rnvp_model_free(m);
    return rc;
}
