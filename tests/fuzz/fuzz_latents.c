/* fuzz_latents.c: libFuzzer harness for the /decode body parser (srv_latents_parse, Jansson).
 * Leaves out decoding the latents (the core's job). */
#include "../../server/server.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *json = malloc(size ? size : 1);
    memcpy(json, data, size);
    float *z = NULL;
    int n = 0;
    char err[SRV_ERRLEN];
    rnvp_latent_part lay[2] = {{0, 1, 2, 2}, {4, 1, 2, 2}};
    if (srv_latents_parse(&z, &n, json, size, 8, 16, lay, 2, err, sizeof err) == 0) {
        if (n < 1 || n > 16) abort();
        for (int i = 0; i < n * 8; i++)
            if (!isfinite(z[i])) abort();
        free(z);
    } else if (z) {
        abort();
    }
    free(json);
    return 0;
}
