/* Export of a checkpoint into one canonical file (see moectl_export.h). */
#include "moectl_export.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "expert_shard.h"
#include "moe_err.h"
#include "moe_file.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_safetensors.h"

#define MF_PATH 4096
#define MF_SHOW 160 /* bytes of a quoted string in an error */

static void show(char *out, size_t cap, const char *s)
{
    moe_log_sanitize(out, cap, s, strlen(s));
}





static bool is_optimizer_name(const char *name)
{
    return moe_has_suffix(name, ".adam_m") || moe_has_suffix(name, ".adam_v") || moe_has_suffix(name, ".fadam");
}

/* "[a, b]" */
static void fmt_shape(char *out, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (o < cap)
        snprintf(out + o, cap - o, "]");
}

/* ------------------------------------------------------------------------ */
/* Export */

struct xent {
    const char *name;       /* borrowed from the open file */
    int file;               /* index into the manifest's files */
    struct moe_st_view v;
};

static int cmp_xent(const void *a, const void *b)
{
    const struct xent *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->file > y->file) - (x->file < y->file);
}

static const struct xent *find_xent(const struct xent *x, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(x[mid].name, name);
        if (c == 0)
            return &x[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Expert id of a "moe.experts.<id>.<rest>" name: 1 and *id, 0 for other
 * names, -1 for a malformed id. */
static int expert_of(const char *name, long *id)
{
    static const char prefix[] = "moe.experts.";
    if (strncmp(name, prefix, sizeof prefix - 1) != 0)
        return 0;
    const char *d = name + sizeof prefix - 1;
    size_t nd = 0;
    while (d[nd] >= '0' && d[nd] <= '9')
        nd++;
    if (nd == 0 || nd > 9 || d[nd] != '.' || (nd > 1 && d[0] == '0'))
        return -1;
    *id = strtol(d, NULL, 10);
    return 1;
}

/* Checks the shape of a tensor found for expert tensor `name`. */
static int check_shape(const struct xent *x, int ndim, const int64_t *shape, const char *folder,
                       const struct moe_manifest *m, char *err, size_t errlen)
{
    bool same = x->v.ndim == ndim;
    for (int k = 0; same && k < ndim; k++)
        same = x->v.shape[k] == shape[k];
    if (same)
        return 0;
    char want[64], have[MOE_ST_MAX_DIMS * 22 + 4];
    fmt_shape(want, sizeof want, ndim, shape);
    fmt_shape(have, sizeof have, x->v.ndim, x->v.shape);
    moe_err_set(err, errlen,
                "%s/%s: tensor %s has shape %s, expected %s (d_model %d, d_hidden %d)", folder,
                m->files[x->file].name, x->name, have, want, m->d_model, m->d_hidden);
    return MOE_ERR_SHAPE;
}

static int check_experts(const struct xent *x, size_t n, const struct moe_manifest *m,
                         bool params_only, const char *folder, char *err, size_t errlen)
{
    char sn[MF_SHOW];
    /* every expert tensor names an expert of this checkpoint, in its file */
    for (size_t i = 0; i < n; i++) {
        long id;
        int k = expert_of(x[i].name, &id);
        if (k == 0)
            continue;
        show(sn, sizeof sn, x[i].name);
        if (k < 0) {
            moe_err_set(err, errlen,
                        "%s/%s: tensor %s: expected a name moe.experts.<id>.<part>", folder,
                        m->files[x[i].file].name, sn);
            return MOE_ERR_FORMAT;
        }
        if (id >= m->n_experts) {
            moe_err_set(err, errlen,
                        "%s/%s: tensor %s names expert %ld, but the checkpoint has %d experts "
                        "(0..%d)",
                        folder, m->files[x[i].file].name, sn, id, m->n_experts,
                        m->n_experts - 1);
            return MOE_ERR_RANGE;
        }
        if (x[i].file != m->expert_file[id]) {
            moe_err_set(err, errlen,
                        "%s/%s: holds tensor %s, but the manifest puts expert %ld in %s", folder,
                        m->files[x[i].file].name, sn, id, m->files[m->expert_file[id]].name);
            return MOE_ERR_FORMAT;
        }
    }
    /* every expert is complete, with the model's shapes */
    char name[96];
    for (int e = 0; e < m->n_experts; e++)
        for (int part = 0; part < EXPERT_PARTS; part++) {
            const char *suffix;
            int nd;
            int64_t shape[2];
            size_t nst;
            expert_shard_part(part, m->d_model, m->d_hidden, &suffix, &nd, shape, &nst);
            for (int opt = 0; opt < (params_only ? 1 : 2); opt++) {
                expert_shard_tensor_name(name, sizeof name, e, part, opt);
                const struct xent *t = find_xent(x, n, name);
                if (!t) {
                    moe_err_set(err, errlen,
                                "%s: expert %d is missing: no tensor %s (the manifest puts it in "
                                "%s)",
                                folder, e, name, m->files[m->expert_file[e]].name);
                    return MOE_ERR_NOTFOUND;
                }
                const int64_t st_shape[1] = {(int64_t)nst};
                int rc = check_shape(t, opt ? 1 : nd, opt ? st_shape : shape, folder, m, err,
                                     errlen);
                if (rc)
                    return rc;
            }
        }
    return 0;
}

/* x (sorted by name) names every tensor once. */
static int check_unique(const struct xent *x, size_t n, const struct moe_manifest *m,
                        const char *folder, char *err, size_t errlen)
{
    char sn[MF_SHOW];
    for (size_t i = 1; i < n; i++)
        if (!strcmp(x[i].name, x[i - 1].name)) {
            show(sn, sizeof sn, x[i].name);
            if (x[i].file == x[i - 1].file)
                moe_err_set(err, errlen, "%s/%s: tensor %s appears twice", folder,
                            m->files[x[i].file].name, sn);
            else
                moe_err_set(err, errlen, "%s: tensor %s appears twice: in %s and in %s", folder,
                            sn, m->files[x[i - 1].file].name, m->files[x[i].file].name);
            return MOE_ERR_FORMAT;
        }
    return 0;
}

/* Fails if out_path is the manifest or one of the checkpoint's files. */
static int check_out_path(const char *folder, const struct moe_manifest *m, const char *out_path,
                          char *err, size_t errlen)
{
    struct stat so, sf;
    if (stat(out_path, &so))
        return 0; /* does not exist yet: cannot be an input */
    char p[MF_PATH];
    for (int i = -1; i < m->n_files; i++) {
        if (moe_path_join(p, sizeof p, folder, i < 0 ? MOE_MANIFEST_NAME : m->files[i].name))
            continue;
        if (stat(p, &sf) == 0 && sf.st_dev == so.st_dev && sf.st_ino == so.st_ino) {
            moe_err_set(err, errlen, "%s: is %s of the checkpoint itself; export elsewhere",
                        out_path, p);
            return MOE_ERR_STATE;
        }
    }
    return 0;
}

int moectl_export(const char *folder, const char *out_path, bool params_only, char *err,
                        size_t errlen)
{
    struct moe_manifest m;
    int rc = moe_manifest_read(folder, &m, err, errlen);
    if (rc)
        return rc;
    if ((rc = moe_manifest_verify(folder, &m, err, errlen)) ||
        (rc = check_out_path(folder, &m, out_path, err, errlen))) {
        moe_manifest_free(&m);
        return rc;
    }
    /* m.n_files >= 1 after a successful read; the guard is for the compiler */
    moe_safetensors_t **st = calloc(m.n_files > 0 ? (size_t)m.n_files : 1u, sizeof *st);
    struct xent *x = NULL;
    struct moe_st_entry *e = NULL;
    float **copies = NULL;
    size_t n = 0, ncopies = 0;
    char sn[MF_SHOW], p[MF_PATH];
    if (!st) {
        rc = MOE_ERR_NOMEM;
        goto oom;
    }
    size_t total = 0;
    for (int i = 0; i < m.n_files; i++) {
        if (moe_path_join(p, sizeof p, folder, m.files[i].name)) {
            moe_err_set(err, errlen, "%s/%s: path too long", folder, m.files[i].name);
            rc = MOE_ERR_RANGE;
            goto out;
        }
        st[i] = moe_safetensors_open(p, err, errlen);
        if (!st[i]) {
            rc = MOE_ERR_FORMAT;
            goto out;
        }
        total += moe_safetensors_count(st[i]);
    }
    x = calloc(total ? total : 1, sizeof *x);
    if (!x) {
        rc = MOE_ERR_NOMEM;
        goto oom;
    }
    for (int i = 0; i < m.n_files; i++)
        for (size_t k = 0; k < moe_safetensors_count(st[i]); k++) {
            struct moe_st_view v;
            moe_safetensors_at(st[i], k, &v);
            if (!strncmp(v.name, "state.", 6) || (params_only && is_optimizer_name(v.name)))
                continue;
            if (strcmp(v.dtype, "F32") != 0) {
                show(sn, sizeof sn, v.name);
                moe_err_set(err, errlen, "%s/%s: tensor %s is %s; export handles F32 only",
                            folder, m.files[i].name, sn, v.dtype);
                rc = MOE_ERR_FORMAT;
                goto out;
            }
            x[n++] = (struct xent){v.name, i, v};
        }
    if (n)
        qsort(x, n, sizeof *x, cmp_xent);
    if ((rc = check_unique(x, n, &m, folder, err, errlen)))
        goto out;
    if ((rc = check_experts(x, n, &m, params_only, folder, err, errlen)))
        goto out;
    e = calloc(n ? n : 1, sizeof *e);
    copies = calloc(n ? n : 1, sizeof *copies);
    if (!e || !copies) {
        rc = MOE_ERR_NOMEM;
        goto oom;
    }
    for (size_t i = 0; i < n; i++) {
        e[i].name = x[i].name;
        e[i].ndim = x[i].v.ndim;
        memcpy(e[i].shape, x[i].v.shape, sizeof e[i].shape);
        /* views of files from other writers may be unaligned for float */
        if ((uintptr_t)x[i].v.data % _Alignof(float) != 0) {
            float *c = malloc(x[i].v.nbytes ? x[i].v.nbytes : 1);
            if (!c) {
                rc = MOE_ERR_NOMEM;
                goto oom;
            }
            memcpy(c, x[i].v.data, x[i].v.nbytes);
            copies[ncopies++] = c;
            e[i].data = c;
        } else {
            e[i].data = x[i].v.data;
        }
    }
    char step_s[32];
    snprintf(step_s, sizeof step_s, "%" PRId64, m.step);
    const char *meta[] = {"format", MOE_EXPORT_FORMAT, "step", step_s, NULL};
    rc = moe_safetensors_write(out_path, e, n, meta, err, errlen);
    goto out;
oom:
    moe_err_set(err, errlen, "%s: out of memory exporting the checkpoint", folder);
out:
    for (size_t i = 0; i < ncopies; i++)
        free(copies[i]);
    free(copies);
    free(e);
    free(x);
    for (int i = 0; st && i < m.n_files; i++)
        moe_safetensors_close(&st[i]);
    free(st);
    moe_manifest_free(&m);
    return rc;
}
