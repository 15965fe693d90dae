/* latents.c: parses and checks the JSON body of POST /decode ({"latents": ...}) with Jansson,
 * free of libmicrohttpd so it can be fuzzed alone. Leaves out decoding itself (the queue). */
#include "server.h"

#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* position of the parse error in the text starts a NaN or Infinity token (Python's json.dumps
 * writes them) */
static int nan_token_at(const char *json, size_t len, int pos)
{
    if (pos < 0 || (size_t)pos >= len) return 0;
    const char *p = json + pos;
    size_t n = len - (size_t)pos;
    /* jansson reports the position after the offending token's first characters; look back a bit */
    for (int back = 0; back < 10 && p > json; back++, p--, n++)
        if ((n >= 3 && !strncmp(p, "NaN", 3)) || (n >= 8 && !strncmp(p, "Infinity", 8))) return 1;
    return (n >= 3 && !strncmp(p, "NaN", 3)) || (n >= 8 && !strncmp(p, "Infinity", 8));
}

static int check_layout(json_t *lay, const rnvp_latent_part *layout, int nparts, char *err, size_t errcap)
{
    if (!json_is_array(lay) || (int)json_array_size(lay) != nparts) goto bad;
    for (int s = 0; s < nparts; s++) {
        json_t *o = json_array_get(lay, (size_t)s);
        const char *keys[4] = {"offset", "channels", "height", "width"};
        int want[4] = {layout[s].offset, layout[s].channels, layout[s].height, layout[s].width};
        for (int k = 0; k < 4; k++) {
            json_t *v = json_object_get(o, keys[k]);
            if (!json_is_integer(v) || json_integer_value(v) != want[k]) goto bad;
        }
    }
    return 0;
bad:
    snprintf(err, errcap, "\"layout\" does not match this model's latent layout (see GET /info; omit \"layout\" "
                          "to skip the check)");
    return -1;
}

size_t srv_json_cost(const char *json, size_t len, size_t *containers, size_t *scalars)
{
    size_t c = 0, sep = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = json[i];
        if (in_str) {
            if (ch == '\\') i++;
            else if (ch == '"') in_str = 0;
        } else if (ch == '"') in_str = 1;
        else if (ch == '[' || ch == '{') c++;
        else if (ch == ',' || ch == ':') sep++;
    }
    /* every value but the first follows a ',' or a ':'; object keys (after '{' or ',') are not
     * values, which only makes this an over-count */
    size_t v = sep + 1, sc = v > c ? v - c : 0;
    if (containers) *containers = c;
    if (scalars) *scalars = sc;
    return c * SRV_JSON_CONTAINER_BYTES + sc * SRV_JSON_SCALAR_BYTES;
}

int srv_latents_precheck(const char *json, size_t len, int d, int maxn, size_t *cost, char *err, size_t errcap)
{
    /* Jansson builds the whole tree before the rows can be counted, at about 50 bytes a number and
     * over 100 an array: bound the tree by what maxn rows of d numbers (and a layout) need first */
    size_t nc, ns;
    size_t c = srv_json_cost(json, len, &nc, &ns);
    size_t max_c = (size_t)maxn + SRV_JSON_SLACK, max_s = (size_t)maxn * (size_t)d + 16 * SRV_JSON_SLACK;
    if (nc > max_c || ns > max_s) {
        snprintf(err, errcap, "the JSON holds more values (%zu arrays or objects, up to %zu numbers) than %d latent "
                              "vectors of D = %d need; send at most %d rows (--max-samples) and no other large keys",
                 nc, ns, maxn, d, maxn);
        return -1;
    }
    if (cost) *cost = c;
    return 0;
}

int srv_latents_parse(float **z, int *n, const char *json, size_t len, int d, int maxn,
                      const rnvp_latent_part *layout, int nparts, char *err, size_t errcap)
{
    *z = NULL;
    *n = 0;
    if (srv_latents_precheck(json, len, d, maxn, NULL, err, errcap)) return -1;
    json_error_t je;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (nan_token_at(json, len, je.position))
            snprintf(err, errcap, "latents must be finite numbers; NaN and Infinity are not JSON (line %d)", je.line);
        else
            snprintf(err, errcap, "invalid JSON at line %d, column %d: %s", je.line, je.column, je.text);
        return -1;
    }
    int rc = -1;
    json_t *lat = json_is_object(root) ? json_object_get(root, "latents") : NULL;
    if (!json_is_object(root)) {
        snprintf(err, errcap, "expected a JSON object {\"latents\": [[%d numbers], ...]}", d);
        goto out;
    }
    if (!lat) {
        snprintf(err, errcap, "missing \"latents\" (expected {\"latents\": [[%d numbers], ...]})", d);
        goto out;
    }
    json_t *lay = json_object_get(root, "layout");
    if (lay && layout && check_layout(lay, layout, nparts, err, errcap)) goto out;
    if (!json_is_array(lat) || json_array_size(lat) == 0) {
        snprintf(err, errcap, "\"latents\" must be a non-empty array: [%d numbers] or [[%d numbers], ...]", d, d);
        goto out;
    }
    int nested = json_is_array(json_array_get(lat, 0));
    size_t nrows = nested ? json_array_size(lat) : 1;
    if (nrows > (size_t)maxn) {
        snprintf(err, errcap, "%zu latent vectors in one request; at most %d", nrows, maxn);
        goto out;
    }
    int rows = (int)nrows;
    float *buf = malloc((size_t)rows * (size_t)d * sizeof *buf);   /* (rows, D) */
    if (!buf) {
        snprintf(err, errcap, "out of memory");
        goto out;
    }
    for (int r = 0; r < rows; r++) {
        json_t *row = nested ? json_array_get(lat, (size_t)r) : lat;
        if (!json_is_array(row)) {
            snprintf(err, errcap, "latents[%d] is not an array of %d numbers", r, d);
            free(buf);
            goto out;
        }
        if ((int)json_array_size(row) != d) {
            snprintf(err, errcap, "latents[%d] has %zu values; this model needs D = %d", r, json_array_size(row), d);
            free(buf);
            goto out;
        }
        for (int i = 0; i < d; i++) {
            json_t *v = json_array_get(row, (size_t)i);
            if (!json_is_number(v)) {
                snprintf(err, errcap, "latents[%d][%d] is not a number%s", r, i,
                         json_is_null(v) || json_is_string(v) ? " (latents must be finite numbers)" : "");
                free(buf);
                goto out;
            }
            double x = json_number_value(v);
            if (!isfinite(x) || fabs(x) > FLT_MAX) {
                snprintf(err, errcap, "latents[%d][%d] = %g is not a finite float32 value", r, i, x);
                free(buf);
                goto out;
            }
            buf[(size_t)r * (size_t)d + (size_t)i] = (float)x;
        }
    }
    *z = buf;
    *n = rows;
    rc = 0;
out:
    json_decref(root);
    return rc;
}
