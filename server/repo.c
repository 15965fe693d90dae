/* repo.c: the model repository of bin/realnvp-server: the models it serves (one --model file, or
 * every DIR/<name>/<version>/model.safetensors of --model-repository), loading, atomic swaps and
 * unloading under the model memory limit, and the state the /v2/repository endpoints report.
 * Leaves out HTTP (http.c, oip_endpoints.c), signals (main.c) and the batching itself (queue.c).
 *
 * Memory model: a srv_model (one loaded version) is read-only once built and reference-counted:
 * the repository holds one reference while the version is served, each request one while it uses
 * it. A load builds the new version completely (file, workspace, queue) beside the old one, then
 * swaps the pointer under the repository's lock; the old version is freed by whoever lets go of
 * it last (requests in flight finish on the version they started with). Entries (model names)
 * are never removed, so per-model counters stay valid for the server's life. */
#include "server.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct srv_repo {
    srv_options o;               /* model, model_repository, model_name, version policy and limits */
    srv_sched *sc;
    pthread_mutex_t mu;          /* entries' version lists (acquire, swap, index) */
    pthread_mutex_t load_mu;     /* one load, unload or rescan at a time */
    srv_entry entries[SRV_MAX_MODELS];
    int n;
    atomic_llong model_bytes;    /* every live srv_model's bytes, served or still in use */
    int scanned;                 /* the start-up scan is done (load_mu) */
};

/* a directory name usable as a model name: [A-Za-z0-9._-], not starting with '.', not {m}-decoder */
static int good_name(const char *s)
{
    size_t n = strlen(s);
    if (!n || n >= SRV_MODEL_NAMELEN || s[0] == '.') return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
              *p == '_' || *p == '-'))
            return 0;
    return !(n >= 8 && !strcmp(s + n - 8, "-decoder"));
}

/* a version directory name: 1..999999999 without leading zeros; 0 otherwise */
static long version_of(const char *s)
{
    if (!*s || *s == '0' || strlen(s) > 9) return 0;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    return atol(s);
}

static int is_file(const char *path, struct stat *st)
{
    return !stat(path, st) && S_ISREG(st->st_mode);
}

/* The versions of model `name` on disk: (version, path) pairs sorted by version, at most cap.
 * DIR/name/N/model.safetensors is version N; DIR/name/model.safetensors is version 1 unless
 * DIR/name/1/ has one. In --model mode the one file is version 1. Returns the count. */
typedef struct disk_version {
    long v;
    char path[PATH_MAX];
} disk_version;

static int disk_versions(const srv_repo *r, const char *name, disk_version *out, int cap)
{
    struct stat st;
    if (!r->o.model_repository) {
        out[0].v = 1;
        snprintf(out[0].path, sizeof out[0].path, "%s", r->o.model);
        return 1;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/%s", r->o.model_repository, name);
    int n = 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d));) {
        long v = version_of(e->d_name);
        if (!v) continue;
        disk_version dv = {.v = v};
        if (snprintf(dv.path, sizeof dv.path, "%s/%s/model.safetensors", dir, e->d_name) >= (int)sizeof dv.path) continue;
        if (!is_file(dv.path, &st)) continue;
        if (n == cap) {   /* full: the lowest goes, unless v is lower still */
            if (v < out[0].v) continue;
            memmove(out, out + 1, (size_t)(cap - 1) * sizeof *out);
            n--;
        }
        int i = n++;
        out[i] = dv;
        for (; i > 0 && out[i - 1].v > out[i].v; i--) {   /* insertion: ascending */
            disk_version t = out[i - 1];
            out[i - 1] = out[i], out[i] = t;
        }
    }
    closedir(d);
    if (!n || out[0].v != 1) {
        disk_version dv = {.v = 1};
        if (snprintf(dv.path, sizeof dv.path, "%s/model.safetensors", dir) >= (int)sizeof dv.path) return n;
        if (is_file(dv.path, &st) && n < cap) {
            memmove(out + 1, out, (size_t)n * sizeof *out);
            out[0] = dv;
            n++;
        }
    }
    return n;
}

/* ---- loading one version ---- */

static void model_free(srv_repo *r, srv_model *m)
{
    if (!m) return;
    srv_queue_free(m->q);
    rnvp_model_free(m->model);
    atomic_fetch_sub(&r->model_bytes, (long long)m->bytes);
    free(m);
}

void srv_model_release(srv_model *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) model_free(m->repo, m);
}

/* the name of --model PATH: --model-name, else metadata "name", else the file name without its
 * extension (its directory's name when that is "model") */
static void single_name(const srv_options *o, const rnvp_model *model, char *buf, size_t cap)
{
    const char *mn = model ? rnvp_model_metadata(model, "name") : NULL;
    if (o->model_name) snprintf(buf, cap, "%s", o->model_name);
    else if (mn) snprintf(buf, cap, "%s", mn);
    else {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s", o->model);
        char *base = strrchr(path, '/');
        char *dir = NULL;
        if (base) *base = 0, dir = strrchr(path, '/'), base++;
        else base = path;
        char *dot = strrchr(base, '.');
        if (dot && dot != base) *dot = 0;
        if (!strcmp(base, "model") && base != path) base = dir ? dir + 1 : path;
        snprintf(buf, cap, "%.*s", (int)cap - 1, base);
    }
}

/* Builds version dv of entry e completely (file, workspace check, queue), charged to the model
 * memory; NULL with err when anything fails (nothing is left behind). */
static srv_model *model_build(srv_repo *r, srv_entry *e, const disk_version *dv, char *err, size_t cap)
{
    srv_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    m->repo = r;
    m->entry = e;
    m->version = dv->v;
    snprintf(m->path, sizeof m->path, "%s", dv->path);
    struct stat st;
    if (stat(dv->path, &st)) {
        snprintf(err, cap, "%s: %s", dv->path, strerror(errno));
        free(m);
        return NULL;
    }
    m->dev = st.st_dev, m->ino = st.st_ino, m->size = st.st_size, m->mtime = st.st_mtim;
    rnvp_error re;
    if (rnvp_model_load(&m->model, dv->path, &re)) {
        snprintf(err, cap, "%s", re.msg);
        free(m);
        return NULL;
    }
    const rnvp_config *c = rnvp_model_config(m->model);
    m->C = c->channels, m->H = c->height, m->W = c->width, m->D = rnvp_model_dim(m->model);
    m->nparts = rnvp_model_num_latent_parts(m->model);
    for (int i = 0; i < m->nparts; i++) m->layout[i] = rnvp_model_latent_part(m->model, i);
    if (r->o.model_repository) snprintf(m->name, sizeof m->name, "%s", e->name);
    else single_name(&r->o, m->model, m->name, sizeof m->name);
    /* refused before it is allocated: a tiny file can declare a huge image */
    size_t ws = rnvp_ctx_workspace_bytes(m->model, r->o.max_batch);
    if (ws > (size_t)r->o.max_workspace_bytes) {
        if (ws == SIZE_MAX)
            snprintf(err, cap, "the batch workspace of this model (%d x %d x %d) for --max-batch %d does not fit in memory",
                     m->W, m->H, m->C, r->o.max_batch);
        else
            snprintf(err, cap, "the batch workspace of this model (%d x %d x %d) for --max-batch %d would take %zu bytes, "
                               "more than --max-workspace-bytes %ld; lower --max-batch or raise the limit",
                     m->W, m->H, m->C, r->o.max_batch, ws, r->o.max_workspace_bytes);
        rnvp_model_free(m->model);
        free(m);
        return NULL;
    }
    m->workspace = ws;
    /* the model (parameters and derived weights), the context's workspace and the queue's batch
     * buffers (B x D x 10 bytes) */
    m->bytes = rnvp_model_bytes(m->model) + ws + (size_t)r->o.max_batch * (size_t)m->D * 10;
    long long before = atomic_fetch_add(&r->model_bytes, (long long)m->bytes);
    if (before + (long long)m->bytes > r->o.model_memory) {
        atomic_fetch_sub(&r->model_bytes, (long long)m->bytes);
        snprintf(err, cap, "loading it would take %zu bytes of model memory, with %lld in use by the models loaded (a "
                           "reload holds the old and the new version until the swap): more than --model-memory-bytes %ld",
                 m->bytes, before, r->o.model_memory);
        rnvp_model_free(m->model);
        free(m);
        return NULL;
    }
    m->q = srv_queue_create(r->sc, m->model, r->o.max_delay_us, r->o.request_timeout_ms, r->o.prec, &re);
    if (!m->q) {
        snprintf(err, cap, "cannot start the batching queue: %.200s", re.msg);
        atomic_fetch_sub(&r->model_bytes, (long long)m->bytes);
        rnvp_model_free(m->model);
        free(m);
        return NULL;
    }
    atomic_store(&m->refs, 1);   /* the repository's */
    return m;
}

/* ---- the repository ---- */

srv_repo *srv_repo_create(const srv_options *o, srv_sched *sc, char *err, size_t cap)
{
    srv_repo *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    r->o = *o;
    r->sc = sc;
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->load_mu, NULL);
    return r;
}

void srv_repo_free(srv_repo *r)
{
    if (!r) return;
    for (int i = 0; i < r->n; i++)
        for (int k = 0; k < r->entries[i].nvers; k++) srv_model_release(r->entries[i].vers[k]);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->load_mu);
    free(r);
}

static srv_entry *find_entry(srv_repo *r, const char *name)
{
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->entries[i].name, name)) return &r->entries[i];
    return NULL;
}

/* entry `name`, added when new (load_mu held); NULL when the table is full */
static srv_entry *get_entry(srv_repo *r, const char *name)
{
    srv_entry *e = find_entry(r, name);
    if (e || r->n == SRV_MAX_MODELS) return e;
    pthread_mutex_lock(&r->mu);
    e = &r->entries[r->n];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    r->n++;
    pthread_mutex_unlock(&r->mu);
    return e;
}

/* e->reason (and, --model, e->name) are read under r->mu (srv_repo_acquire, ready_names) or load_mu
 * (srv_repo_index, sync_entry): their writers hold both */
static void set_reason(srv_repo *r, srv_entry *e, const char *reason)
{
    pthread_mutex_lock(&r->mu);
    snprintf(e->reason, sizeof e->reason, "%s", reason);
    pthread_mutex_unlock(&r->mu);
}

static int same_file(const srv_model *m, const disk_version *dv)
{
    struct stat st;
    if (strcmp(m->path, dv->path) || stat(dv->path, &st)) return 0;
    return st.st_dev == m->dev && st.st_ino == m->ino && st.st_size == m->size && st.st_mtim.tv_sec == m->mtime.tv_sec &&
           st.st_mtim.tv_nsec == m->mtime.tv_nsec;
}

/* Brings entry e to the versions on disk that the policy wants (load_mu held): versions new or
 * changed on disk (all of them with force) are built and swapped in, versions gone from disk or
 * no longer wanted are dropped. A version that fails to build keeps its old copy serving; the
 * reason is kept in e->reason and returned in err. Returns the number of failures. */
static int sync_entry(srv_repo *r, srv_entry *e, int force, char *err, size_t cap)
{
    disk_version *dv = malloc(SRV_MAX_VERSIONS * sizeof *dv);
    if (!dv) {
        snprintf(err, cap, "out of memory");
        return 1;
    }
    int nd = disk_versions(r, e->name, dv, SRV_MAX_VERSIONS);
    int first = r->o.all_versions ? 0 : (nd ? nd - 1 : 0);   /* the wanted versions: dv[first..nd-1] */
    srv_model *keep[SRV_MAX_VERSIONS], *drop[SRV_MAX_VERSIONS];
    int nk = 0, ndrop = 0, fails = 0;
    if (!nd) {
        char why[SRV_ERRLEN];
        snprintf(why, sizeof why, "no model.safetensors found for '%s' in the repository", e->name);
        set_reason(r, e, why);
        snprintf(err, cap, "%s", e->reason);
        fails = 1;
    }
    for (int i = first; i < nd; i++) {
        srv_model *old = NULL;
        for (int k = 0; k < e->nvers; k++)
            if (e->vers[k]->version == dv[i].v) old = e->vers[k];
        if (old && !force && same_file(old, &dv[i])) {
            keep[nk++] = old;
            continue;
        }
        char why[SRV_ERRLEN];
        srv_model *m = model_build(r, e, &dv[i], why, sizeof why);
        if (m) {
            keep[nk++] = m;
            atomic_fetch_add(&e->loads, 1);
            srv_log("model %s version %ld %s from %s (%d x %d x %d, batch workspace %.1f MiB)", m->name, m->version,
                    old ? "reloaded" : "loaded", m->path, m->W, m->H, m->C, (double)m->workspace / 1048576.0);
            if (!r->o.model_repository) {
                pthread_mutex_lock(&r->mu);
                snprintf(e->name, sizeof e->name, "%s", m->name);
                pthread_mutex_unlock(&r->mu);
            }
        } else {
            fails++;
            atomic_fetch_add(&e->load_failures, 1);
            char reason[SRV_ERRLEN];
            if (r->o.model_repository)
                snprintf(reason, sizeof reason, "version %ld (%.100s): %.190s", dv[i].v, dv[i].path, why);
            else snprintf(reason, sizeof reason, "%s", why);   /* the library's message names the file */
            set_reason(r, e, reason);
            snprintf(err, cap, "%s", e->reason);
            if (r->o.model_repository || r->scanned)   /* --model at start-up: main() says it, once */
                srv_log("model %s: cannot load %s%s", e->name, e->reason, old ? "; the loaded copy keeps serving" : "");
            if (old) keep[nk++] = old;
        }
    }
    /* versions served before but not kept now (replaced, gone from disk, or no longer wanted).
     * When the wanted version fails and nothing of the new set loaded, the old ones stay. */
    for (int k = 0; k < e->nvers; k++) {
        int kept = 0;
        for (int j = 0; j < nk; j++) kept |= keep[j] == e->vers[k];
        if (!kept) drop[ndrop++] = e->vers[k];
    }
    if (!nk && fails && nd) {   /* nothing new could be built: everything served before stays */
        ndrop = 0;
        for (int k = 0; k < e->nvers; k++) keep[nk++] = e->vers[k];
    }
    for (int i = 1; i < nk; i++)   /* ascending versions */
        for (int j = i; j > 0 && keep[j - 1]->version > keep[j]->version; j--) {
            srv_model *t = keep[j - 1];
            keep[j - 1] = keep[j], keep[j] = t;
        }
    pthread_mutex_lock(&r->mu);   /* the swap: new requests see the new list from here on */
    memcpy(e->vers, keep, (size_t)nk * sizeof *keep);
    e->nvers = nk;
    if (!fails) e->reason[0] = 0;
    pthread_mutex_unlock(&r->mu);
    for (int k = 0; k < ndrop; k++) {
        int rebuilt = 0;
        for (int j = 0; j < nk; j++) rebuilt |= keep[j]->version == drop[k]->version;
        if (!rebuilt) srv_log("model %s version %ld unloaded", drop[k]->name, drop[k]->version);
        srv_model_release(drop[k]);   /* freed now, or by its last request */
    }
    free(dv);
    return fails;
}

static int cmp_names(const void *a, const void *b) { return strcmp(a, b); }

int srv_repo_scan(srv_repo *r, char *err, size_t cap)
{
    pthread_mutex_lock(&r->load_mu);
    int fails = 0;
    err[0] = 0;
    if (!r->o.model_repository) {
        srv_entry *e = r->n ? &r->entries[0] : get_entry(r, "model");
        if (!e->unloaded) fails += sync_entry(r, e, 0, err, cap);
        r->scanned = 1;
        pthread_mutex_unlock(&r->load_mu);
        return fails;
    }
    DIR *d = opendir(r->o.model_repository);
    if (!d) {
        snprintf(err, cap, "cannot read the model repository %s: %s", r->o.model_repository, strerror(errno));
        pthread_mutex_unlock(&r->load_mu);
        return 1;
    }
    char names[SRV_MAX_MODELS][SRV_MODEL_NAMELEN];
    int nn = 0;
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.') continue;
        char path[PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", r->o.model_repository, de->d_name);
        if (stat(path, &st) || !S_ISDIR(st.st_mode)) continue;
        if (!good_name(de->d_name)) {
            srv_log("model repository: '%s' skipped (a model name is letters, digits, '.', '_', '-', under %d bytes, "
                    "not ending in -decoder)", de->d_name, SRV_MODEL_NAMELEN);
            continue;
        }
        disk_version one;
        if (!disk_versions(r, de->d_name, &one, 1)) continue;   /* a folder without a model (e.g. train-state) */
        if (nn == SRV_MAX_MODELS) {
            srv_log("model repository: more than %d models; '%s' skipped", SRV_MAX_MODELS, de->d_name);
            continue;
        }
        snprintf(names[nn++], SRV_MODEL_NAMELEN, "%.127s", de->d_name);
    }
    closedir(d);
    qsort(names, (size_t)nn, sizeof names[0], cmp_names);   /* load and list in name order */
    for (int i = 0; i < nn; i++) {
        srv_entry *e = get_entry(r, names[i]);
        if (!e || e->unloaded) continue;
        char why[SRV_ERRLEN];
        if (sync_entry(r, e, 0, why, sizeof why)) {
            fails++;
            if (!err[0]) snprintf(err, cap, "%s: %s", e->name, why);
        }
    }
    for (int i = 0; i < r->n; i++) {   /* models whose folder went away */
        srv_entry *e = &r->entries[i];
        int found = 0;
        for (int k = 0; k < nn; k++) found |= !strcmp(names[k], e->name);
        if (!found && e->nvers && !e->unloaded) {
            char why[SRV_ERRLEN];
            sync_entry(r, e, 0, why, sizeof why);   /* drops every version: none on disk */
        }
    }
    r->scanned = 1;
    pthread_mutex_unlock(&r->load_mu);
    return fails;
}

int srv_repo_load(srv_repo *r, const char *name, char *err, size_t cap)
{
    pthread_mutex_lock(&r->load_mu);
    int rc = 0;
    srv_entry *e = find_entry(r, name);
    disk_version one;
    if (!e && r->o.model_repository && good_name(name) && disk_versions(r, name, &one, 1)) e = get_entry(r, name);
    if (!e) {
        snprintf(err, cap, "no model '%.100s' in the repository", name);
        rc = 404;
    } else {
        e->unloaded = 0;
        if (sync_entry(r, e, 1, err, cap)) rc = 400;
    }
    pthread_mutex_unlock(&r->load_mu);
    return rc;
}

int srv_repo_unload(srv_repo *r, const char *name, char *err, size_t cap)
{
    pthread_mutex_lock(&r->load_mu);
    srv_entry *e = find_entry(r, name);
    if (!e) {
        snprintf(err, cap, "no model '%.100s' in the repository", name);
        pthread_mutex_unlock(&r->load_mu);
        return 404;
    }
    pthread_mutex_lock(&r->mu);
    srv_model *drop[SRV_MAX_VERSIONS];
    int nd = e->nvers;
    memcpy(drop, e->vers, (size_t)nd * sizeof *drop);
    e->nvers = 0;
    e->unloaded = 1;
    snprintf(e->reason, sizeof e->reason, "unloaded");
    pthread_mutex_unlock(&r->mu);
    for (int k = 0; k < nd; k++) {
        srv_log("model %s version %ld unloaded (requested)", drop[k]->name, drop[k]->version);
        srv_model_release(drop[k]);
    }
    pthread_mutex_unlock(&r->load_mu);
    return 0;
}

/* the names of the loaded models, ", "-separated, into buf */
static void ready_names(srv_repo *r, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (int i = 0; i < r->n && n < cap; i++)
        if (r->entries[i].nvers) n += (size_t)snprintf(buf + n, cap - n, "%s'%s'", n ? ", " : "", r->entries[i].name);
}

srv_model *srv_repo_acquire(srv_repo *r, const char *name, long version, int *status, char *err, size_t cap)
{
    pthread_mutex_lock(&r->mu);
    srv_entry *e = NULL;
    char list[512];
    if (!name || !*name) {
        int nready = 0;
        for (int i = 0; i < r->n; i++)
            if (r->entries[i].nvers) nready++, e = &r->entries[i];
        if (nready != 1) {
            ready_names(r, list, sizeof list);
            if (nready) {
                *status = 400;
                snprintf(err, cap, "this server serves several models: name one with ?model=NAME (%s)", list);
            } else {
                *status = 503;
                snprintf(err, cap, "no model is loaded");
            }
            pthread_mutex_unlock(&r->mu);
            return NULL;
        }
    } else if (!(e = find_entry(r, name))) {
        ready_names(r, list, sizeof list);
        *status = 404;
        snprintf(err, cap, "no model '%.100s'; this server serves %s", name, list[0] ? list : "no model now");
        pthread_mutex_unlock(&r->mu);
        return NULL;
    }
    srv_model *m = NULL;
    for (int k = 0; k < e->nvers; k++)
        if (version ? e->vers[k]->version == version : 1) m = e->vers[k];   /* the last: the highest */
    if (!m) {
        if (!e->nvers) {
            *status = 503;
            snprintf(err, cap, "model '%s' is not loaded (%s)", e->name, e->reason[0] ? e->reason : "not loaded");
        } else {
            size_t n = 0;
            list[0] = 0;
            for (int k = 0; k < e->nvers; k++)
                n += (size_t)snprintf(list + n, sizeof list - n, "%s%ld", k ? ", " : "", e->vers[k]->version);
            *status = 404;
            snprintf(err, cap, "model '%s' has no version %ld loaded (loaded: %s)", e->name, version, list);
        }
        pthread_mutex_unlock(&r->mu);
        return NULL;
    }
    atomic_fetch_add(&m->refs, 1);
    atomic_fetch_add(&e->requests, 1);
    pthread_mutex_unlock(&r->mu);
    return m;
}

int srv_repo_nready(srv_repo *r)
{
    pthread_mutex_lock(&r->mu);
    int n = 0;
    for (int i = 0; i < r->n; i++) n += r->entries[i].nvers > 0;
    pthread_mutex_unlock(&r->mu);
    return n;
}

void srv_repo_names(srv_repo *r, char *buf, size_t cap)
{
    pthread_mutex_lock(&r->mu);
    ready_names(r, buf, cap);
    pthread_mutex_unlock(&r->mu);
}

int srv_repo_versions(srv_repo *r, const char *name, long *out, int cap)
{
    pthread_mutex_lock(&r->mu);
    const srv_entry *e = find_entry(r, name);
    int n = 0;
    for (int k = 0; e && k < e->nvers && n < cap; k++) out[n++] = e->vers[k]->version;
    pthread_mutex_unlock(&r->mu);
    return n;
}

void srv_repo_names_json(srv_repo *r, srv_buf *b)
{
    pthread_mutex_lock(&r->mu);
    int first = 1;
    srv_buf_printf(b, "[");
    for (int i = 0; i < r->n; i++)
        if (r->entries[i].nvers) {
            if (!first) srv_buf_printf(b, ", ");
            srv_buf_json_string(b, r->entries[i].name);
            first = 0;
        }
    srv_buf_printf(b, "]");
    pthread_mutex_unlock(&r->mu);
}

/* the names of the models in the repository folder (no lock: it reads only the options and the disk) */
static int models_on_disk(const srv_repo *r, char names[][SRV_MODEL_NAMELEN], int cap)
{
    if (!r->o.model_repository) return 0;
    DIR *d = opendir(r->o.model_repository);
    if (!d) return 0;
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) && n < cap;) {
        disk_version one;
        if (!good_name(de->d_name) || !disk_versions(r, de->d_name, &one, 1)) continue;
        snprintf(names[n++], SRV_MODEL_NAMELEN, "%.127s", de->d_name);
    }
    closedir(d);
    return n;
}

void srv_repo_index(srv_repo *r, srv_buf *b, int ready_only)
{
    /* Not under load_mu: a load holds it for as long as it builds (seconds for a large model), and the
     * index runs on a work thread. The folder is listed first, without a lock; the entries are read
     * under r->mu, which every writer of what is read here holds (get_entry, the swap, and the reason
     * with 02-entry-reason-race.patch). */
    enum { DISK_CAP = 2 * SRV_MAX_MODELS };
    char (*disk)[SRV_MODEL_NAMELEN] = ready_only ? NULL : malloc(DISK_CAP * sizeof *disk);
    int ndisk = disk ? models_on_disk(r, disk, DISK_CAP) : 0;
    pthread_mutex_lock(&r->mu);
    int first = 1;
    srv_buf_printf(b, "[");
    for (int i = 0; i < r->n; i++) {
        const srv_entry *e = &r->entries[i];
        for (int k = 0; k < e->nvers; k++) {
            srv_buf_printf(b, "%s{\"name\": ", first ? "" : ", ");
            srv_buf_json_string(b, e->name);
            srv_buf_printf(b, ", \"version\": \"%ld\", \"state\": \"READY\", \"reason\": \"\"}", e->vers[k]->version);
            first = 0;
        }
        if (!e->nvers && !ready_only) {
            srv_buf_printf(b, "%s{\"name\": ", first ? "" : ", ");
            srv_buf_json_string(b, e->name);
            srv_buf_printf(b, ", \"state\": \"UNAVAILABLE\", \"reason\": ");
            srv_buf_json_string(b, e->reason[0] ? e->reason : "not loaded");
            srv_buf_printf(b, "}");
            first = 0;
        }
    }
    for (int i = 0; i < ndisk; i++) {
        if (find_entry(r, disk[i])) continue;   /* known: listed above */
        srv_buf_printf(b, "%s{\"name\": ", first ? "" : ", ");
        srv_buf_json_string(b, disk[i]);
        srv_buf_printf(b, ", \"state\": \"UNAVAILABLE\", \"reason\": \"not loaded (new in the repository: SIGHUP or "
                          "load it)\"}");
        first = 0;
    }
    srv_buf_printf(b, "]\n");
    pthread_mutex_unlock(&r->mu);
    free(disk);
}

void srv_repo_metrics(srv_repo *r, srv_buf *b)
{
    pthread_mutex_lock(&r->mu);
    srv_buf_printf(b, "# HELP realnvp_model_loaded 1 for each model version being served.\n"
                      "# TYPE realnvp_model_loaded gauge\n");
    for (int i = 0; i < r->n; i++)
        for (int k = 0; k < r->entries[i].nvers; k++) {
            srv_buf_printf(b, "realnvp_model_loaded{model=");
            srv_metrics_label(b, r->entries[i].name);
            srv_buf_printf(b, ",version=\"%ld\"} 1\n", r->entries[i].vers[k]->version);
        }
    srv_buf_printf(b, "# HELP realnvp_model_queue_depth Images waiting in a model's queue (all its versions).\n"
                      "# TYPE realnvp_model_queue_depth gauge\n");
    for (int i = 0; i < r->n; i++) {
        int depth = 0;
        for (int k = 0; k < r->entries[i].nvers; k++) depth += srv_queue_depth(r->entries[i].vers[k]->q);
        srv_buf_printf(b, "realnvp_model_queue_depth{model=");
        srv_metrics_label(b, r->entries[i].name);
        srv_buf_printf(b, "} %d\n", depth);
    }
    static const char *const counters[][2] = {
        {"realnvp_model_requests_total", "Requests routed to a model."},
        {"realnvp_model_loads_total", "Model versions built and swapped in (start-up, loads, rescans)."},
        {"realnvp_model_load_failures_total", "Model versions that failed to load (the old copy kept serving)."},
    };
    for (int c = 0; c < 3; c++) {
        srv_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n", counters[c][0], counters[c][1], counters[c][0]);
        for (int i = 0; i < r->n; i++) {
            const srv_entry *e = &r->entries[i];
            long long v = c == 0 ? atomic_load(&e->requests) : c == 1 ? atomic_load(&e->loads) : atomic_load(&e->load_failures);
            srv_buf_printf(b, "%s{model=", counters[c][0]);
            srv_metrics_label(b, e->name);
            srv_buf_printf(b, "} %lld\n", v);
        }
    }
    srv_buf_printf(b, "# HELP realnvp_model_memory_bytes Memory of the loaded model versions (weights, workspaces, batch "
                      "buffers), old copies still in use included.\n# TYPE realnvp_model_memory_bytes gauge\n"
                      "realnvp_model_memory_bytes %lld\n"
                      "# HELP realnvp_model_memory_limit_bytes --model-memory-bytes.\n"
                      "# TYPE realnvp_model_memory_limit_bytes gauge\nrealnvp_model_memory_limit_bytes %ld\n",
                   (long long)atomic_load(&r->model_bytes), r->o.model_memory);
    pthread_mutex_unlock(&r->mu);
}
