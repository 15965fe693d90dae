/* fuzz_loader.c: libFuzzer harness for the checkpoint loader (rnvp_model_load_memory).
 * Leaves out inference on what loads: a valid model from fuzzed bytes is only freed. */
#include "realnvp.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    rnvp_model *m = NULL;
    rnvp_error err;
    if (rnvp_model_load_memory(&m, data, size, &err) == RNVP_OK) {
        rnvp_ctx *ctx = NULL;
        if (rnvp_model_dim(m) <= 4096 && rnvp_ctx_create(&ctx, m, 1, &err) == RNVP_OK) {
            uint8_t px[4096] = {0};
            double lp;
            rnvp_log_prob(ctx, &lp, NULL, px, NULL, 1, &err);
            rnvp_ctx_free(ctx);
        }
        rnvp_model_free(m);
    }
    return 0;
}
