/* fuzz_multipart.c: libFuzzer harness for the server's multipart/form-data parser
 * (srv_multipart_boundary on the first line, srv_multipart_parse on the rest).
 * Leaves out PNG decoding of the parts (fuzzed by the core's own tests). */
#include "../../server/server.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* input: "Content-Type value\n" then the body */
    const uint8_t *nl = memchr(data, '\n', size < 200 ? size : 200);
    if (!nl) return 0;
    char ct[201];
    size_t cl = (size_t)(nl - data);
    memcpy(ct, data, cl);
    ct[cl] = 0;
    char boundary[80], err[SRV_ERRLEN];
    if (srv_multipart_boundary(boundary, sizeof boundary, ct, err, sizeof err)) return 0;
    size_t len = size - cl - 1;
    char *body = malloc(len ? len : 1);   /* exact size, so ASan sees any over-read */
    memcpy(body, nl + 1, len);
    srv_part parts[8];
    int n = srv_multipart_parse(parts, 8, body, len, boundary, err, sizeof err);
    for (int i = 0; i < n; i++) {
        volatile char sink = 0;
        for (size_t k = 0; k < parts[i].len; k++) sink ^= parts[i].data[k];
        (void)sink;
        if (parts[i].data < body || parts[i].data + parts[i].len > body + len) abort();
    }
    free(body);
    return 0;
}
