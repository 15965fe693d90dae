/* data.c: loads the trainer's data sets (IDX via zlib, CIFAR-10 binary, PNG folders) into memory.
 * Leaves out labels, augmentation and batching (main.c). */
#include "data.h"

#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define MAX_IMAGES 100000000L    /* refuse absurd headers before allocating */
#define MAX_PNG_BYTES (64 << 20)

const char *tr_data_kind_name(int kind)
{
    switch (kind) {
    case DATA_IDX_DIR: return "idx-dir";
    case DATA_CIFAR10: return "cifar10";
    case DATA_PNG_DIR: return "png-dir";
    case DATA_IDX_FILE: return "idx";
    }
    return "?";
}

void tr_data_free(tr_data *d)
{
    if (!d) return;
    free(d->px);
    memset(d, 0, sizeof *d);
}

static void set_name(tr_data *d, const char *path) { snprintf(d->name, sizeof d->name, "%.255s", path); }

static int exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* Reads exactly n bytes from a gz stream (raw files pass through). 0 ok, -1 short, -2 error. */
static int gz_full(gzFile f, void *buf, size_t n)
{
    char *p = buf;
    while (n) {
        unsigned chunk = n > (1u << 30) ? (1u << 30) : (unsigned)n;
        int r = gzread(f, p, chunk);
        if (r < 0) return -2;
        if (r == 0) return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

enum rnvp_status tr_idx_read(tr_data *d, const char *path, rnvp_error *err)
{
    memset(d, 0, sizeof *d);
    gzFile f = gzopen(path, "rb");
    if (!f) return rnvpi_fail(err, RNVP_ERR_IO, "%s: %s", path, errno ? strerror(errno) : "cannot open");
    unsigned char h[16];
    int r = gz_full(f, h, 16);
    if (r) {
        gzclose(f);
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "%s: %s in the 16-byte IDX header", path,
                         r == -1 ? "file ends" : "read or gzip error");
    }
    uint32_t v[4];
    for (int i = 0; i < 4; i++) v[i] = (uint32_t)h[4 * i] << 24 | (uint32_t)h[4 * i + 1] << 16 | (uint32_t)h[4 * i + 2] << 8 | h[4 * i + 3];
    if (v[0] != 0x00000803) {
        gzclose(f);
        return rnvpi_fail(err, RNVP_ERR_FORMAT,
                         "%s: IDX magic is 0x%08x, expected 0x00000803 (unsigned bytes, 3 dimensions: an image file, not labels)",
                         path, v[0]);
    }
    if (v[1] == 0 || v[1] > MAX_IMAGES || v[2] < 2 || v[2] > RNVP_MAX_SIDE || v[3] < 2 || v[3] > RNVP_MAX_SIDE ||
        (uint64_t)v[1] * v[2] * v[3] > (uint64_t)1 << 36) {
        gzclose(f);
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "%s: implausible IDX sizes %u x %u x %u", path, v[1], v[2], v[3]);
    }
    size_t bytes = (size_t)v[1] * v[2] * v[3];
    d->px = malloc(bytes);
    if (!d->px) {
        gzclose(f);
        return rnvpi_fail(err, RNVP_ERR_NOMEM, "%s: out of memory for %zu bytes", path, bytes);
    }
    r = gz_full(f, d->px, bytes);
    unsigned char extra;
    int more = r == 0 ? gzread(f, &extra, 1) : 0;
    gzclose(f);
    if (r || more != 0) {
        tr_data_free(d);
        return rnvpi_fail(err, RNVP_ERR_FORMAT, "%s: %s (header says %u images of %u x %u = %zu bytes)", path,
                         r == -1 ? "truncated" : r == -2 ? "read or gzip error" : "longer than its header says", v[1],
                         v[2], v[3], bytes);
    }
    d->n = (int)v[1];
    d->c = 1;
    d->h = (int)v[2];
    d->w = (int)v[3];
    set_name(d, path);
    return RNVP_OK;
}

/* Appends CIFAR-10 binary batch `path` (records of 1 label byte + 3072 pixel bytes) to d. */
static enum rnvp_status cifar_append(tr_data *d, const char *path, rnvp_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return rnvpi_fail(err, RNVP_ERR_IO, "%s: %s", path, strerror(errno));
    const size_t rec = 1 + 3072;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return rnvpi_fail(err, RNVP_ERR_IO, "%s: cannot seek", path); }
    long len = ftell(f);
    rewind(f);
    if (len <= 0 || (size_t)len % rec) {
        fclose(f);
        return rnvpi_fail(err, RNVP_ERR_FORMAT,
                         "%s: %ld bytes is not a whole number of CIFAR-10 records (1 label + 3072 pixel bytes each)", path, len);
    }
    size_t k = (size_t)len / rec;
    uint8_t *px = realloc(d->px, ((size_t)d->n + k) * 3072);
    if (!px) { fclose(f); return rnvpi_fail(err, RNVP_ERR_NOMEM, "%s: out of memory", path); }
    d->px = px;
    uint8_t buf[1 + 3072];
    for (size_t i = 0; i < k; i++) {
        if (fread(buf, 1, rec, f) != rec) { fclose(f); return rnvpi_fail(err, RNVP_ERR_IO, "%s: read failed at record %zu", path, i); }
        memcpy(d->px + ((size_t)d->n + i) * 3072, buf + 1, 3072);   /* already (3, 32, 32) */
    }
    fclose(f);
    d->n += (int)k;
    d->c = 3;
    d->h = d->w = 32;
    return RNVP_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcasecmp(s + a - b, suf);
}

/* Lists the *.png files of dir, sorted. *names and each name are malloc'd. */
static int list_png(const char *dir, char ***names)
{
    *names = NULL;
    DIR *dp = opendir(dir);
    if (!dp) return -1;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dp))) {
        if (!has_suffix(e->d_name, ".png") || e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            char **t = realloc(*names, sizeof(char *) * (size_t)cap);
            if (!t) break;
            *names = t;
        }
        (*names)[n] = strdup(e->d_name);
        if (!(*names)[n]) break;
        n++;
    }
    closedir(dp);
    if (n) qsort(*names, (size_t)n, sizeof(char *), cmp_str);
    return n;
}

static enum rnvp_status read_file(const char *path, unsigned char **buf, size_t *len, rnvp_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) return rnvpi_fail(err, RNVP_ERR_IO, "%s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    rewind(f);
    if (l < 0 || l > MAX_PNG_BYTES) { fclose(f); return rnvpi_fail(err, RNVP_ERR_FORMAT, "%s: %ld bytes is not a plausible PNG", path, l); }
    *buf = malloc(l ? (size_t)l : 1);
    if (!*buf) { fclose(f); return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory"); }
    *len = fread(*buf, 1, (size_t)l, f);
    fclose(f);
    return RNVP_OK;
}

/* A folder of same-sized PNGs; the first one fixes the size and the channel count. */
static enum rnvp_status png_dir(tr_data *d, const char *dir, rnvp_error *err)
{
    char **names;
    int n = list_png(dir, &names);
    if (n <= 0) {
        free(names);
        return rnvpi_fail(err, n < 0 ? RNVP_ERR_IO : RNVP_ERR_FORMAT, "%s: %s", dir,
                         n < 0 ? strerror(errno) : "no .png files in this folder");
    }
    enum rnvp_status st = RNVP_OK;
    char path[4096];
    unsigned char *buf = NULL;
    size_t len = 0;
    for (int i = 0; i < n && !st; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if ((st = read_file(path, &buf, &len, err))) break;
        if (i == 0) {
            int c, h, w;
            if ((st = rnvp_png_info(buf, len, &c, &h, &w, err))) {
                free(buf);
                break;
            }
            d->c = c;
            d->h = h;
            d->w = w;
            d->px = malloc((size_t)n * c * h * w);
            if (!d->px) { free(buf); st = rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory for %d images", n); break; }
        }
        const size_t per = (size_t)d->c * d->h * d->w;
        st = rnvp_png_decode(d->px + (size_t)i * per, buf, len, d->c, d->h, d->w, err);
        free(buf);
        if (st) {
            rnvp_error e2 = *err;
            rnvpi_fail(err, st, "%s: %s (every PNG of a folder must match the first, %s)", path, e2.msg, names[0]);
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (st) {
        tr_data_free(d);
        return st;
    }
    d->n = n;
    set_name(d, dir);
    return RNVP_OK;
}

enum rnvp_status tr_data_load(tr_data *d, const char *path, rnvp_error *err)
{
    memset(d, 0, sizeof *d);
    if (is_dir(path)) return png_dir(d, path, err);
    if (!exists(path)) return rnvpi_fail(err, RNVP_ERR_IO, "%s: %s", path, strerror(ENOENT));
    if (has_suffix(path, ".bin")) {
        enum rnvp_status st = cifar_append(d, path, err);
        if (st) tr_data_free(d);
        else set_name(d, path);
        return st;
    }
    return tr_idx_read(d, path, err);
}

enum rnvp_status tr_data_open(tr_data *train, tr_data *test, int *kind, const char *path,
                              rnvp_error *err)
{
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    char p[4096];
    enum rnvp_status st;
    if (!exists(path)) return rnvpi_fail(err, RNVP_ERR_IO, "%s: %s", path, strerror(ENOENT));
    if (!is_dir(path)) {
        *kind = has_suffix(path, ".bin") ? DATA_CIFAR10 : DATA_IDX_FILE;
        return tr_data_load(train, path, err);
    }
    /* Fashion-MNIST / MNIST layout */
    static const char *idx_train[] = {"train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "train-images.idx3-ubyte"};
    static const char *idx_test[] = {"t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", path, idx_train[i]);
        if (!exists(p)) continue;
        *kind = DATA_IDX_DIR;
        if ((st = tr_idx_read(train, p, err))) return st;
        for (int j = 0; j < 3; j++) {
            snprintf(p, sizeof p, "%s/%s", path, idx_test[j]);
            if (!exists(p)) continue;
            if ((st = tr_idx_read(test, p, err))) { tr_data_free(train); return st; }
            if (test->h != train->h || test->w != train->w) {
                rnvpi_fail(err, RNVP_ERR_FORMAT, "%s: images are %d x %d, the training images %d x %d", p, test->w, test->h,
                          train->w, train->h);
                tr_data_free(train);
                tr_data_free(test);
                return RNVP_ERR_FORMAT;
            }
            break;
        }
        return RNVP_OK;
    }
    /* CIFAR-10 binary layout */
    snprintf(p, sizeof p, "%s/data_batch_1.bin", path);
    if (exists(p)) {
        *kind = DATA_CIFAR10;
        for (int b = 1; b <= 5; b++) {
            snprintf(p, sizeof p, "%s/data_batch_%d.bin", path, b);
            if (b > 1 && !exists(p)) break;   /* fewer batches is fine (smaller experiments) */
            if ((st = cifar_append(train, p, err))) { tr_data_free(train); return st; }
        }
        set_name(train, path);
        snprintf(p, sizeof p, "%s/test_batch.bin", path);
        if (exists(p)) {
            if ((st = cifar_append(test, p, err))) { tr_data_free(train); tr_data_free(test); return st; }
            set_name(test, p);
        }
        return RNVP_OK;
    }
    *kind = DATA_PNG_DIR;
    return png_dir(train, path, err);
}

enum rnvp_status tr_data_split(tr_data *d, tr_data *out, int k, rnvp_error *err)
{
    memset(out, 0, sizeof *out);
    if (k <= 0 || k >= d->n) return rnvpi_fail(err, RNVP_ERR_ARG, "%s: cannot hold out %d of %d images", d->name, k, d->n);
    const size_t per = (size_t)d->c * d->h * d->w;
    out->px = malloc((size_t)k * per);
    if (!out->px) return rnvpi_fail(err, RNVP_ERR_NOMEM, "out of memory");
    memcpy(out->px, d->px + (size_t)(d->n - k) * per, (size_t)k * per);
    out->n = k;
    out->c = d->c;
    out->h = d->h;
    out->w = d->w;
    snprintf(out->name, sizeof out->name, "%.200s (last %d held out)", d->name, k);
    d->n -= k;
    return RNVP_OK;
}
