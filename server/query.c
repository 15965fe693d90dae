/* query.c: the server's query-string parser and typed parameter getters, free of libmicrohttpd
 * so they can be fuzzed alone. Leaves out which parameters each endpoint takes (http.c). */
#include "server.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* percent-decodes s[0..n) ('+' is a space) into out (cap bytes with the NUL); -1 on error */
static int decode(char *out, size_t cap, const char *s, size_t n, const char *what, char *err, size_t errcap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '+') c = ' ';
        else if (c == '%') {
            if (i + 2 >= n) {
                snprintf(err, errcap, "bad %%-escape in query %s (expected %%XX with two hex digits)", what);
                return -1;
            }
            int a = hexval((unsigned char)s[i + 1]), b = hexval((unsigned char)s[i + 2]);
            if (a < 0 || b < 0) {
                snprintf(err, errcap, "bad %%-escape in query %s (expected %%XX with two hex digits)", what);
                return -1;
            }
            c = a * 16 + b;
            i += 2;
        }
        if (c == 0) {
            snprintf(err, errcap, "query %s contains a NUL byte", what);
            return -1;
        }
        if (o + 1 >= cap) {
            snprintf(err, errcap, "query %s is too long (at most %zu bytes)", what, cap - 1);
            return -1;
        }
        out[o++] = (char)c;
    }
    out[o] = 0;
    return 0;
}

int srv_query_parse(srv_query *q, const char *qs, char *err, size_t errcap)
{
    q->n = 0;
    if (!qs) return 0;
    const char *p = qs;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        if (n) {
            const char *eq = memchr(p, '=', n);
            size_t kn = eq ? (size_t)(eq - p) : n;
            if (q->n == SRV_QUERY_MAX) {
                snprintf(err, errcap, "too many query parameters (at most %d)", SRV_QUERY_MAX);
                return -1;
            }
            if (decode(q->key[q->n], sizeof q->key[0], p, kn, "parameter name", err, errcap)) return -1;
            if (!q->key[q->n][0]) {
                snprintf(err, errcap, "empty query parameter name (expected name=value)");
                return -1;
            }
            char what[64];
            snprintf(what, sizeof what, "value of '%s'", q->key[q->n]);
            if (decode(q->val[q->n], sizeof q->val[0], eq ? eq + 1 : p + n, eq ? n - kn - 1 : 0, what, err, errcap))
                return -1;
            for (int i = 0; i < q->n; i++)
                if (!strcmp(q->key[i], q->key[q->n])) {
                    snprintf(err, errcap, "query parameter '%s' is given twice", q->key[i]);
                    return -1;
                }
            q->n++;
        }
        p += n;
        if (*p == '&') p++;
    }
    return 0;
}

const char *srv_query_get(const srv_query *q, const char *key)
{
    for (int i = 0; i < q->n; i++)
        if (!strcmp(q->key[i], key)) return q->val[i];
    return NULL;
}

int srv_query_check_allowed(const srv_query *q, const char *const *allowed, char *err, size_t errcap)
{
    for (int i = 0; i < q->n; i++) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++) ok |= !strcmp(*a, q->key[i]);
        if (ok) continue;
        char list[200] = "";
        size_t l = 0;
        for (const char *const *a = allowed; *a && l < sizeof list; a++)
            l += (size_t)snprintf(list + l, sizeof list - l, "%s%s", a == allowed ? "" : ", ", *a);
        /* the key is printable-checked by the caller's JSON encoder; keep it short here */
        snprintf(err, errcap, "unknown query parameter '%.24s' (accepted here: %s)", q->key[i],
                 *allowed ? list : "none");
        return -1;
    }
    return 0;
}

int srv_query_int(const srv_query *q, const char *key, long lo, long hi, long def, long *out, char *err,
                  size_t errcap)
{
    const char *v = srv_query_get(q, key);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi || *v == ' ') {
        snprintf(err, errcap, "%s must be an integer in %ld..%ld, not '%.40s'", key, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

int srv_query_u64(const srv_query *q, const char *key, uint64_t *out, int *present, char *err, size_t errcap)
{
    const char *v = srv_query_get(q, key);
    *present = v != NULL;
    if (!v) return 0;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || *v < '0' || *v > '9' || *end || errno) {
        snprintf(err, errcap, "%s must be an integer in 0..%" PRIu64 ", not '%.40s'", key, UINT64_MAX, v);
        return -1;
    }
    *out = (uint64_t)x;
    return 0;
}

int srv_query_double(const srv_query *q, const char *key, double lo, double hi, double def, double *out,
                     char *err, size_t errcap)
{
    const char *v = srv_query_get(q, key);
    if (!v) {
        *out = def;
        return 0;
    }
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *v == ' ' || *end || errno || !isfinite(x) || x < lo || x > hi) {
        snprintf(err, errcap, "%s must be a number in %g..%g, not '%.40s'", key, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

int srv_query_choice(const srv_query *q, const char *key, const char *const *choices, int def, char *err,
                     size_t errcap)
{
    const char *v = srv_query_get(q, key);
    if (!v) return def;
    for (int i = 0; choices[i]; i++)
        if (!strcmp(v, choices[i])) return i;
    char list[128] = "";
    size_t l = 0;
    for (int i = 0; choices[i] && l < sizeof list; i++)
        l += (size_t)snprintf(list + l, sizeof list - l, "%s%s", i ? " or " : "", choices[i]);
    snprintf(err, errcap, "%s must be %s, not '%.40s'", key, list, v);
    return -1;
}
