/* fuzz_query.c: libFuzzer harness for the server's query-string parser and typed getters.
 * Leaves out which parameters each endpoint accepts (http.c). */
#include "../../server/server.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *qs = malloc(size + 1);
    memcpy(qs, data, size);
    qs[size] = 0;
    srv_query q;
    char err[SRV_ERRLEN];
    if (srv_query_parse(&q, qs, err, sizeof err) == 0) {
        long v;
        double d;
        uint64_t u;
        int present;
        const char *const allowed[] = {"n", "temp", "seed", NULL};
        const char *const choices[] = {"png", "json", NULL};
        srv_query_int(&q, "n", 1, 256, 16, &v, err, sizeof err);
        srv_query_double(&q, "temp", 0, 100, 1, &d, err, sizeof err);
        srv_query_u64(&q, "seed", &u, &present, err, sizeof err);
        srv_query_choice(&q, "format", choices, 0, err, sizeof err);
        srv_query_check_allowed(&q, allowed, err, sizeof err);
        for (int i = 0; i < q.n; i++)
            if (strlen(q.key[i]) >= sizeof q.key[i] || strlen(q.val[i]) >= sizeof q.val[i]) abort();
    }
    free(qs);
    return 0;
}
