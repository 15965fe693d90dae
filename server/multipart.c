/* multipart.c: splits a multipart/form-data body (RFC 7578 / RFC 2046) into parts, free of
 * libmicrohttpd so it can be fuzzed alone. Leaves out streaming (the body is whole in memory),
 * nested multiparts and Content-Transfer-Encoding (form-data parts are binary as sent). */
#include "server.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* case-insensitive search for `needle` as a parameter name in a header value */
static const char *find_param(const char *s, size_t n, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl < n; i++) {
        if ((i == 0 || s[i - 1] == ';' || s[i - 1] == ' ' || s[i - 1] == '\t') && !strncasecmp(s + i, name, nl) &&
            s[i + nl] == '=')
            return s + i + nl + 1;
    }
    return NULL;
}

/* a parameter value (quoted-string with \-escapes, or a token) into out; 0 if found */
static int param_value(char *out, size_t cap, const char *s, size_t n, const char *name)
{
    const char *v = find_param(s, n, name);
    if (!v) return -1;
    const char *end = s + n;
    size_t o = 0;
    if (v < end && *v == '"') {
        v++;
        while (v < end && *v != '"') {
            if (*v == '\\' && v + 1 < end) v++;
            if (o + 1 < cap) out[o++] = *v;
            v++;
        }
    } else {
        while (v < end && *v != ';' && *v != ' ' && *v != '\t' && *v != '\r' && *v != '\n') {
            if (o + 1 < cap) out[o++] = *v;
            v++;
        }
    }
    out[o] = 0;
    return 0;
}

int srv_multipart_boundary(char *buf, size_t cap, const char *ct, char *err, size_t errcap)
{
    size_t n = ct ? strlen(ct) : 0;
    if (n < 19 || strncasecmp(ct, "multipart/form-data", 19) || (ct[19] && ct[19] != ';' && ct[19] != ' ')) {
        snprintf(err, errcap, "Content-Type is not multipart/form-data");
        return -1;
    }
    char b[128];
    if (param_value(b, sizeof b, ct + 19, n - 19, "boundary") || !b[0]) {
        snprintf(err, errcap, "multipart/form-data without a boundary parameter (expected "
                              "Content-Type: multipart/form-data; boundary=...)");
        return -1;
    }
    if (strlen(b) > 70 || strlen(b) + 1 > cap) {
        snprintf(err, errcap, "multipart boundary is longer than 70 characters (RFC 2046)");
        return -1;
    }
    strcpy(buf, b);
    return 0;
}

/* first occurrence of needle (nl bytes) in hay (n bytes) */
static const char *memfind(const char *hay, size_t n, const char *needle, size_t nl)
{
    if (nl == 0 || n < nl) return NULL;
    const char *end = hay + n - nl;
    for (const char *p = hay; p <= end; p++) {
        p = memchr(p, needle[0], (size_t)(end - p) + 1);
        if (!p) return NULL;
        if (!memcmp(p, needle, nl)) return p;
    }
    return NULL;
}

/* parses the header block [h, h+n) of part `idx` into part */
static void part_headers(srv_part *part, const char *h, size_t n, int idx)
{
    char field[128] = "", file[128] = "";
    part->content_type[0] = 0;
    const char *end = h + n;
    while (h < end) {
        const char *eol = memfind(h, (size_t)(end - h), "\r\n", 2);
        size_t ln = eol ? (size_t)(eol - h) : (size_t)(end - h);
        const char *colon = memchr(h, ':', ln);
        if (colon) {
            size_t kn = (size_t)(colon - h);
            const char *v = colon + 1;
            size_t vn = ln - kn - 1;
            while (vn && (*v == ' ' || *v == '\t')) v++, vn--;
            if (kn == 19 && !strncasecmp(h, "Content-Disposition", 19)) {
                param_value(field, sizeof field, v, vn, "name");
                param_value(file, sizeof file, v, vn, "filename");
            } else if (kn == 12 && !strncasecmp(h, "Content-Type", 12)) {
                size_t c = vn < sizeof part->content_type - 1 ? vn : sizeof part->content_type - 1;
                memcpy(part->content_type, v, c);
                part->content_type[c] = 0;
            }
        }
        h += ln + (eol ? 2 : 0);
    }
    if (file[0]) strcpy(part->name, file);
    else if (field[0]) strcpy(part->name, field);
    else snprintf(part->name, sizeof part->name, "part %d", idx + 1);
}

int srv_multipart_parse(srv_part *parts, int maxparts, const char *body, size_t len, const char *boundary,
                        char *err, size_t errcap)
{
    char delim[80];   /* "\r\n--" boundary */
    size_t bl = strlen(boundary);
    if (bl == 0 || bl > 70) {
        snprintf(err, errcap, "bad multipart boundary");
        return -1;
    }
    snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    size_t dl = bl + 4;
    /* the first delimiter may start the body without the CRLF (the preamble is skipped) */
    const char *p;
    if (len >= dl - 2 && !memcmp(body, delim + 2, dl - 2)) p = body + dl - 2;
    else {
        p = memfind(body, len, delim, dl);
        if (!p) {
            snprintf(err, errcap, "multipart body does not contain the boundary given in Content-Type");
            return -1;
        }
        p += dl;
    }
    const char *end = body + len;
    int np = 0;
    for (;;) {
        /* after a delimiter: "--" closes, else optional whitespace then CRLF */
        if (end - p >= 2 && p[0] == '-' && p[1] == '-') break;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') {
            snprintf(err, errcap, "malformed multipart body: expected CRLF after a boundary line");
            return -1;
        }
        p += 2;
        const char *hend;
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') hend = p;   /* no headers */
        else {
            hend = memfind(p, (size_t)(end - p), "\r\n\r\n", 4);
            if (!hend) {
                snprintf(err, errcap, "malformed multipart body: part %d's headers do not end with an empty line", np + 1);
                return -1;
            }
            hend += 2;
        }
        const char *data = hend + 2;
        const char *next = memfind(data, (size_t)(end - data), delim, dl);
        if (!next) {
            snprintf(err, errcap, "malformed multipart body: part %d is not closed by a boundary line (truncated upload?)",
                     np + 1);
            return -1;
        }
        if (np == maxparts) {
            snprintf(err, errcap, "too many parts in the multipart body (at most %d images per request)", maxparts);
            return -1;
        }
        srv_part *pt = &parts[np];
        part_headers(pt, p, (size_t)(hend - p), np);
        pt->data = data;
        pt->len = (size_t)(next - data);
        np++;
        p = next + dl;
    }
    if (np == 0) {
        snprintf(err, errcap, "multipart body has no parts (expected one PNG per part)");
        return -1;
    }
    return np;
}
