/* fuzz_oip.c: libFuzzer harness for the Open Inference Protocol request parser (srv_oip_parse: JSON header,
 * Inference-Header-Content-Length framing, binary tensors) and the response encoder on what it accepts; with
 * DECODER 2, the repository extension's bodies (srv_oip_repo_parse).
 * Leaves out the /v2 routing and the HTTP side (tests/test_oip.c). */
#include "../../server/server.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* the model: C 2, H 2, W 3 (D = 12), at most 8 tensors, 4 draws */
#define OIPF_C 2
#define OIPF_H 2
#define OIPF_W 3
#define OIPF_D (OIPF_C * OIPF_H * OIPF_W)
#define OIPF_MAXN 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* input: "HLEN DECODER\n" (HLEN -1: no Inference-Header-Content-Length; DECODER 0 or 1), then the body */
    const uint8_t *nl = memchr(data, '\n', size < 40 ? size : 40);
    if (!nl) return 0;
    char line[41];
    size_t ll = (size_t)(nl - data);
    memcpy(line, data, ll);
    line[ll] = 0;
    long long hlen = -1;
    int decoder = 0;
    if (sscanf(line, "%lld %d", &hlen, &decoder) < 1) return 0;
    if (hlen < -1) hlen = -1;
    size_t len = size - ll - 1;
    char *body = malloc(len ? len : 1);   /* exact size, so ASan sees any over-read */
    memcpy(body, nl + 1, len);
    if (decoder == 2) {   /* POST /v2/repository/index, .../load, .../unload */
        char rerr[SRV_ERRLEN] = "";
        int ready = -1;
        int rrc = srv_oip_repo_parse(body, len, &ready, rerr, sizeof rerr);
        if (rrc ? !rerr[0] : ready != 0 && ready != 1) abort();
        free(body);
        return 0;
    }
    decoder = decoder == 1;
    srv_oip_req q;
    char err[SRV_ERRLEN];
    size_t cost;
    int pre = srv_oip_precheck(body, len, hlen, decoder, OIPF_C, OIPF_H, OIPF_W, OIPF_MAXN, &cost, err, sizeof err);
    int rc = srv_oip_parse(&q, body, len, hlen, decoder, OIPF_C, OIPF_H, OIPF_W, OIPF_MAXN, 4, err, sizeof err);
    if (rc == 0 && pre) abort();   /* the parse starts with the precheck */
    if (rc) {
        if (q.pixels || q.z || !err[0]) abort();
        free(body);
        return 0;
    }
    if (q.n < 1 || q.n > OIPF_MAXN || q.decoder != decoder || (decoder ? !q.z || q.pixels : !q.pixels || q.z)) abort();
    if (q.nout < 1 || q.nout > (decoder ? 1 : 3) || q.samples < 0 || q.samples > 4) abort();
    for (int i = 0; i < q.nout; i++)
        if (decoder ? q.out[i] != OIP_IMAGE : q.out[i] < OIP_LOG_PROB || q.out[i] > OIP_LATENTS) abort();
    size_t total = (size_t)q.n * OIPF_D;
    volatile unsigned sink = 0;
    for (size_t k = 0; k < total; k++) {
        if (decoder && !isfinite(q.z[k])) abort();
        sink += decoder ? (unsigned)(q.z[k] > 0) : q.pixels[k];
    }
    (void)sink;
    /* the response to it: its JSON header must parse, its binary part fit */
    double *lp = calloc((size_t)q.n, sizeof *lp);
    float *z = calloc(total, sizeof *z);
    uint8_t *px = calloc(total, 1);
    srv_oip_results res = {.log_prob = lp, .bits_per_dim = lp, .z = z, .pixels = px};
    srv_buf b = {0};
    size_t jl;
    srv_oip_encode(&b, &jl, &q, &res, "m", OIPF_C, OIPF_H, OIPF_W);
    if (!b.oom) {
        json_t *j = json_loadb(b.p, jl ? jl : b.len, 0, NULL);
        if (!j || jl > b.len) abort();
        json_decref(j);
    }
    free(b.p);
    free(lp);
    free(z);
    free(px);
    srv_oip_req_clear(&q);
    free(body);
    return 0;
}
