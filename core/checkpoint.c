/* checkpoint.c: reads and validates safetensors checkpoints (docs/model.md section 5) and writes them
 * atomically. Leaves out the model's math; assumes a little-endian host (checked at build). */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "realnvp reads little-endian float32 directly; a big-endian host needs byte swapping"
#endif

#define MAX_HEADER (100u << 20)   /* a header larger than 100 MB is refused */

/* Kernel sizes come from each convolution's weight_v shape in the header. */
typedef struct kctx {
    json_t *hdr;
    char bad[128];     /* the tensor whose shape is unusable */
} kctx;

static int kernel_from_header(void *user, int k, int conv, int *kh, int *kw)
{
    kctx *kc = user;
    char nm[128];
    /* the caller numbers convs: 0 in_conv, 1+2j conv_a, 2+2j conv_b, last out_conv; we cannot
     * know K here, so try the names in turn */
    int j = (conv - 1) / 2;
    json_t *e = NULL;
    if (conv == 0) {
        snprintf(nm, sizeof nm, "flow.%d.net.in_conv.weight_v", k);
        e = json_object_get(kc->hdr, nm);
    } else {
        snprintf(nm, sizeof nm, "flow.%d.net.blocks.%d.conv_%c.weight_v", k, j, conv % 2 ? 'a' : 'b');
        e = json_object_get(kc->hdr, nm);
        if (!e && conv % 2) {   /* conv 1 + 2K is out_conv */
            snprintf(nm, sizeof nm, "flow.%d.net.out_conv.weight_v", k);
            e = json_object_get(kc->hdr, nm);
        }
    }
    if (!e) return 0;   /* missing: the default stands; the table check names the tensor */
    json_t *sh = json_object_get(e, "shape");
    if (!json_is_array(sh) || json_array_size(sh) != 4) return 0;   /* table check reports */
    json_t *a = json_array_get(sh, 2), *b = json_array_get(sh, 3);
    if (!json_is_integer(a) || !json_is_integer(b)) return 0;
    json_int_t h = json_integer_value(a), w = json_integer_value(b);
    if (h < 1 || w < 1 || h > RNVP_MAX_KERNEL || w > RNVP_MAX_KERNEL || h % 2 == 0 || w % 2 == 0) {
        snprintf(kc->bad, sizeof kc->bad, "%s", nm);
        return -1;
    }
    *kh = (int)h;
    *kw = (int)w;
    return 0;
}

static enum rnvp_status parse_offsets(json_t *e, const char *name, size_t data_len, size_t *b,
                                      size_t *en, rnvp_error *err)
{
    json_t *off = json_object_get(e, "data_offsets");
    if (!json_is_array(off) || json_array_size(off) != 2 || !json_is_integer(json_array_get(off, 0)) ||
        !json_is_integer(json_array_get(off, 1)))
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %s: \"data_offsets\" missing or not two integers", name);
    json_int_t x = json_integer_value(json_array_get(off, 0)), y = json_integer_value(json_array_get(off, 1));
    if (x < 0 || y < x || (uint64_t)y > data_len)
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %s: data_offsets [%lld, %lld] outside the data (%zu bytes)",
                         name, (long long)x, (long long)y, data_len);
    *b = (size_t)x;
    *en = (size_t)y;
    return RNVP_OK;
}

typedef struct span { size_t b, e; const char *name; } span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e < y->e ? -1 : x->e > y->e);
}

enum rnvp_status rnvp_model_load_memory(rnvp_model **out, const void *buf, size_t len, rnvp_error *err)
{
    *out = NULL;
    const unsigned char *p = buf;
    if (len < 8) return rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: file too short (%zu bytes) for the 8-byte header length", len);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | p[i];
    if (hl > len - 8) return rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: header length %llu runs past the end of the file (%zu bytes)",
                                       (unsigned long long)hl, len);
    if (hl > MAX_HEADER) return rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: header of %llu bytes is too large", (unsigned long long)hl);
    const unsigned char *data = p + 8 + hl;
    size_t data_len = len - 8 - (size_t)hl;
    json_error_t je;
    json_t *hdr = json_loadb((const char *)p + 8, (size_t)hl, JSON_REJECT_DUPLICATES, &je);
    if (!hdr) return rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: header is not valid JSON: %s (at byte %d)", je.text, je.position);
    enum rnvp_status st = RNVP_OK;
    rnvp_model *m = NULL;
    span *spans = NULL;
    if (!json_is_object(hdr)) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: header is not a JSON object"); goto out; }
    json_t *meta = json_object_get(hdr, "__metadata__");
    if (!json_is_object(meta)) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: \"__metadata__\" missing or not an object"); goto out; }
    const char *mk;
    json_t *mv;
    json_object_foreach(meta, mk, mv)
        if (!json_is_string(mv)) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: metadata \"%s\" is not a string", mk); goto out; }
    const char *fmt = json_string_value(json_object_get(meta, "format"));
    const char *ver = json_string_value(json_object_get(meta, "version"));
    const char *cfgs = json_string_value(json_object_get(meta, "config"));
    if (!fmt) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: metadata \"format\" missing"); goto out; }
    if (strcmp(fmt, "realnvp")) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: metadata format is \"%.40s\", expected \"realnvp\"", fmt); goto out; }
    if (!ver) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: metadata \"version\" missing"); goto out; }
    if (strcmp(ver, "1")) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: metadata version is \"%.40s\", this build reads version \"1\"", ver); goto out; }
    if (!cfgs) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: metadata \"config\" missing"); goto out; }
    {   /* a key given twice in the config would be a guess: refuse it (the parser keeps the last) */
        json_t *dup = json_loads(cfgs, JSON_REJECT_DUPLICATES, &je);
        if (!dup && strstr(je.text, "duplicate")) {
            st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: metadata config: %s", je.text);
            goto out;
        }
        json_decref(dup);   /* other JSON errors are reported by rnvp_config_parse */
    }
    rnvp_config cfg;
    if ((st = rnvp_config_parse(&cfg, cfgs, err))) goto out;
    kctx kc = {.hdr = hdr};
    if ((st = rnvpi_model_layout(&m, &cfg, kernel_from_header, &kc, err))) {
        if (kc.bad[0])
            rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %s: kernel size must be odd, 1..%d", kc.bad, RNVP_MAX_KERNEL);
        goto out;
    }
    /* every expected tensor present with the right dtype, shape and size */
    size_t nent = json_object_size(hdr);
    spans = calloc(nent ? nent : 1, sizeof *spans);
    if (!spans) { st = rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory"); goto out; }
    size_t ns = 0;
    for (int i = 0; i < m->ntensors; i++) {
        const char *name = m->names + (size_t)(uintptr_t)m->tensors[i].name;
        json_t *e = json_object_get(hdr, name);
        if (!e) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: tensor %s is missing", name); goto out; }
        if (!json_is_object(e)) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %s: entry is not an object", name); goto out; }
        const char *dt = json_string_value(json_object_get(e, "dtype"));
        if (!dt || strcmp(dt, "F32")) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %s: dtype is %s, expected F32", name, dt ? dt : "missing"); goto out; }
        json_t *sh = json_object_get(e, "shape");
        const rnvp_tensor *t = &m->tensors[i];
        int ok = json_is_array(sh) && json_array_size(sh) == (size_t)t->ndim;
        for (int d = 0; ok && d < t->ndim; d++) {
            json_t *v = json_array_get(sh, d);
            ok = json_is_integer(v) && json_integer_value(v) == t->shape[d];
        }
        if (!ok) {
            char want[64], got[160] = "";
            int w = snprintf(want, sizeof want, "[");
            for (int d = 0; d < t->ndim; d++) w += snprintf(want + w, sizeof want - w, "%s%d", d ? ", " : "", t->shape[d]);
            snprintf(want + w, sizeof want - w, "]");
            char *g = json_dumps(sh ? sh : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
            snprintf(got, sizeof got, "%.150s", g ? g : "?");
            free(g);
            st = rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %s: shape is %s, expected %s", name, got, want);
            goto out;
        }
        size_t b, en;
        if ((st = parse_offsets(e, name, data_len, &b, &en, err))) goto out;
        if (en - b != t->size * 4) {
            st = rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %s: data_offsets span %zu bytes, shape needs %zu", name, en - b, t->size * 4);
            goto out;
        }
    }
    /* unknown names, offsets of every entry (train.* too), then overlaps */
    const char *key;
    json_t *e;
    json_object_foreach(hdr, key, e) {
        if (!strcmp(key, "__metadata__")) continue;
        int known = !strncmp(key, "train.", 6);
        if (!known) {
            int idx = -1;
            for (int i = 0; i < m->ntensors && idx < 0; i++)
                if (!strcmp(m->names + (size_t)(uintptr_t)m->tensors[i].name, key)) idx = i;
            if (idx < 0) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: unknown tensor %.200s", key); goto out; }
        }
        if (!json_is_object(e)) { st = rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %.200s: entry is not an object", key); goto out; }
        if ((st = parse_offsets(e, key, data_len, &spans[ns].b, &spans[ns].e, err))) goto out;
        spans[ns++].name = key;
    }
    qsort(spans, ns, sizeof *spans, span_cmp);
    /* sorted by begin: a non-empty span overlaps an earlier one iff it begins before the largest
     * end so far (empty spans overlap nothing, and must not hide the span that reaches furthest) */
    const span *reach = NULL;
    for (size_t i = 0; i < ns; i++) {
        if (spans[i].e == spans[i].b) continue;
        if (reach && spans[i].b < reach->e) {
            st = rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %.150s: data overlaps tensor %.150s", spans[i].name, reach->name);
            goto out;
        }
        if (!reach || spans[i].e > reach->e) reach = &spans[i];
    }
    /* bytes after the last tensor mean a damaged file (safetensors requires the data to end there) */
    if ((reach ? reach->e : 0) != data_len) {
        st = rnvpi_fail(err, RNVP_ERR_FORMAT, "checkpoint: %zu bytes after the last tensor's data (damaged or appended to)",
                       data_len - (reach ? reach->e : 0));
        goto out;
    }
    /* the table is consistent with the file: the blocks are bounded by its size */
    if ((st = rnvpi_model_alloc(m, err))) goto out;
    for (int i = 0; i < m->ntensors; i++) {
        rnvp_tensor *t = &m->tensors[i];
        size_t b, en;
        parse_offsets(json_object_get(hdr, t->name), t->name, data_len, &b, &en, NULL);
        memcpy(t->data, data + b, t->size * 4);
        for (size_t j = 0; j < t->size; j++)
            if (!isfinite(t->data[j])) {
                st = rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %s: value %zu is %s", t->name, j, isnan(t->data[j]) ? "NaN" : "infinite");
                goto out;
            }
        size_t ln = strlen(t->name);
        if (ln > 11 && !strcmp(t->name + ln - 11, "running_var"))
            for (size_t j = 0; j < t->size; j++)
                if (t->data[j] < 0) {
                    st = rnvpi_fail(err, RNVP_ERR_FORMAT, "tensor %s: value %zu is negative (%g)", t->name, j, t->data[j]);
                    goto out;
                }
    }
    json_object_foreach(meta, mk, mv)
        if (rnvpi_model_set_meta(m, mk, json_string_value(mv))) { st = rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory"); goto out; }
    rnvpi_model_fold(m);
out:
    free(spans);
    json_decref(hdr);
    if (st) rnvp_model_free(m);
    else *out = m;
    return st;
}

enum rnvp_status rnvp_model_load(rnvp_model **out, const char *path, rnvp_error *err)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return rnvpi_fail(err, RNVP_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return rnvpi_fail(err, RNVP_ERR_IO, "%s: not a regular file", path);
    }
    size_t len = (size_t)sb.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) { fclose(f); return rnvpi_fail(err, RNVP_ERR_NOMEM, "%s: out of memory for %zu bytes", path, len); }
    size_t got = fread(buf, 1, len, f);
    int rerr = ferror(f);
    fclose(f);
    if (got != len || rerr) { free(buf); return rnvpi_fail(err, RNVP_ERR_IO, "%s: read error", path); }
    enum rnvp_status st = rnvp_model_load_memory(out, buf, len, err);
    free(buf);
    if (st && err) {   /* prefix the file name */
        char tmp[sizeof err->msg];
        memcpy(tmp, err->msg, sizeof tmp);
        size_t pl = strlen(path);
        if (pl > 120) pl = 120;
        memcpy(err->msg, path, pl);
        memcpy(err->msg + pl, ": ", 2);
        memcpy(err->msg + pl + 2, tmp, sizeof err->msg - pl - 3);
        err->msg[sizeof err->msg - 1] = 0;
    }
    return st;
}

/* ---------------------------------------------------------------- writing */

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

enum rnvp_status rnvpi_st_write(const char *path, const char *const *meta, const rnvp_tensor *t, int n,
                          rnvp_error *err)
{
    json_t *hdr = json_object(), *md = json_object();
    if (!hdr || !md) { json_decref(hdr); json_decref(md); return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory"); }
    json_object_set_new(hdr, "__metadata__", md);
    for (int i = 0; meta && meta[i] && meta[i + 1]; i += 2) json_object_set_new(md, meta[i], json_string(meta[i + 1]));
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        if (!t[i].data) { json_decref(hdr); return rnvpi_fail(err, RNVP_ERR_ARG, "tensor %s has no data", t[i].name); }
        json_t *sh = json_array();
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(sh, json_integer(t[i].shape[d]));
        json_t *e = json_pack("{s:s, s:o, s:[I, I]}", "dtype", "F32", "shape", sh, "data_offsets",
                              (json_int_t)off, (json_int_t)(off + t[i].size * 4));
        if (!e || json_object_set_new(hdr, t[i].name, e)) { json_decref(hdr); return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory"); }
        off += t[i].size * 4;
    }
    char *js = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    if (!js) return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory");
    size_t jl = strlen(js), padded = (jl + 7) / 8 * 8;
    char *hbuf = malloc(8 + padded);
    if (!hbuf) { free(js); return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory"); }
    for (int i = 0; i < 8; i++) hbuf[i] = (char)((uint64_t)padded >> (8 * i));
    memcpy(hbuf + 8, js, jl);
    memset(hbuf + 8 + jl, ' ', padded - jl);
    free(js);

    size_t pl = strlen(path);
    char *tmp = malloc(pl + 32);
    if (!tmp) { free(hbuf); return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory"); }
    snprintf(tmp, pl + 32, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        enum rnvp_status st = rnvpi_fail(err, RNVP_ERR_IO, "%s: %s", tmp, strerror(errno));
        free(hbuf); free(tmp);
        return st;
    }
    int bad = write_all(fd, hbuf, 8 + padded);
    free(hbuf);
    for (int i = 0; i < n && !bad; i++) bad = write_all(fd, t[i].data, t[i].size * 4);
    if (!bad) bad = fsync(fd);
    int e = errno;
    if (close(fd) && !bad) { bad = 1; e = errno; }
    if (!bad && rename(tmp, path)) { bad = 1; e = errno; }
    if (bad) {
        unlink(tmp);
        free(tmp);
        return rnvpi_fail(err, RNVP_ERR_IO, "%s: writing failed: %s (the previous file, if any, is intact)", path, strerror(e));
    }
    free(tmp);
    /* make the rename durable */
    char *dir = strdup(path);
    if (dir) {
        char *slash = strrchr(dir, '/');
        const char *d = ".";
        if (slash) { *slash = 0; d = slash == dir ? "/" : dir; }
        int dfd = open(d, O_RDONLY);
        if (dfd >= 0) { fsync(dfd); close(dfd); }
        free(dir);
    }
    return RNVP_OK;
}

enum rnvp_status rnvp_model_save(const rnvp_model *m, const char *path, const char *const *extra_meta,
                                 rnvp_error *err)
{
    char cfg[1024];
    rnvp_config_to_json(&m->cfg, cfg, sizeof cfg);
    int nx = 0;
    while (extra_meta && extra_meta[nx] && extra_meta[nx + 1]) nx += 2;
    const char **meta = malloc((size_t)(2 * m->nmeta + nx + 8) * sizeof *meta);
    if (!meta) return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory");
    int k = 0;
    meta[k++] = "format"; meta[k++] = "realnvp";
    meta[k++] = "version"; meta[k++] = "1";
    meta[k++] = "config"; meta[k++] = cfg;
    for (int i = 0; i < m->nmeta; i++) {
        const char *key = m->meta_keys[i];
        if (!strcmp(key, "format") || !strcmp(key, "version") || !strcmp(key, "config")) continue;
        /* a trainer's resumable state describes train.* tensors this file does not have */
        if (!strcmp(key, "train_state") || !strcmp(key, "train_options")) continue;
        meta[k++] = key;
        meta[k++] = m->meta_vals[i];
    }
    for (int i = 0; i < nx; i += 2) { meta[k++] = extra_meta[i]; meta[k++] = extra_meta[i + 1]; }
    meta[k] = NULL;
    enum rnvp_status st = rnvpi_st_write(path, meta, m->tensors, m->ntensors, err);
    free(meta);
    return st;
}
