/* Export of a checkpoint into one canonical file (see moectl_export.h). */
#include "moectl_export.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data.h"
#include "expert_shard.h"
#include "hmoe_group.h"
#include "moe_err.h"
#include "moe_file.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_options.h"
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
        int k = expert_shard_parse_name(x[i].name, &id);
        if (k == 0)
            continue;
        show(sn, sizeof sn, x[i].name);
        if (k < 0) {
            moe_err_set(err, errlen,
                        "%s/%s: tensor %s: expected a name %s", folder,
                        m->files[x[i].file].name, sn,
                        expert_shard_group_size() ? "moe.groups.<group>.experts.<id>.<part>"
                                                  : "moe.experts.<id>.<part>");
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
        /* a parameter lies where the manifest says (its optimizer state may
         * lie in another file: a single process keeps it apart) */
        if (x[i].file != m->expert_file[id] && !is_optimizer_name(x[i].name)) {
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

/* A hierarchical MoE: every group's secondary gate (moe.groups.I.w_gate,
 * .w_noise, D x B, and their ".fadam" state unless params_only) is there,
 * wherever it lies (the expert servers' files of a cluster checkpoint). */
static int check_groups(const struct xent *x, size_t n, const struct moe_manifest *m,
                        bool params_only, const char *folder, char *err, size_t errlen)
{
    const int B = expert_shard_group_size();
    if (B <= 0)
        return 0;
    char name[96];
    const int64_t shape[2] = {m->d_model, B}, st_shape[1] = {m->d_model + B};
    for (int g = 0; g < m->n_experts / B; g++)
        for (int part = 0; part < 2; part++)
            for (int opt = 0; opt < (params_only ? 1 : 2); opt++) {
                hmoe_groups_tensor_name(name, sizeof name, g, part, opt);
                const struct xent *t = find_xent(x, n, name);
                if (!t)
                    return moe_err_fail(MOE_ERR_NOTFOUND, err, errlen,
                                        "%s: group %d's gate is missing: no tensor %s", folder,
                                        g, name);
                int rc = check_shape(t, opt ? 1 : 2, opt ? st_shape : shape, folder, m, err,
                                     errlen);
                if (rc)
                    return rc;
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

/* The checkpoint being exported: its manifest, its open tensor files (the
 * .safetensors of the manifest; config.ini and vocab.txt are not read),
 * the tensors found, and the model's description from their metadata. */
struct source {
    struct moe_manifest m;
    moe_safetensors_t **st; /* by manifest index; NULL for other files */
    struct xent *x;
    size_t n;
    const char *config, *vocab; /* borrowed from the files' metadata, or NULL */
};

static int open_files(const char *folder, struct source *src, char *err, size_t errlen)
{
    const struct moe_manifest *m = &src->m;
    /* m->n_files >= 1 after a successful read; the guard is for the compiler */
    src->st = calloc(m->n_files > 0 ? (size_t)m->n_files : 1u, sizeof *src->st);
    if (!src->st)
        return MOE_ERR_NOMEM;
    size_t total = 0;
    char p[MF_PATH];
    for (int i = 0; i < m->n_files; i++) {
        if (!moe_has_suffix(m->files[i].name, ".safetensors"))
            continue;
        if (moe_path_join(p, sizeof p, folder, m->files[i].name))
            return moe_err_fail(MOE_ERR_RANGE, err, errlen, "%s/%s: path too long", folder,
                                m->files[i].name);
        if (!(src->st[i] = moe_safetensors_open(p, err, errlen)))
            return MOE_ERR_FORMAT;
        total += moe_safetensors_count(src->st[i]);
        if (!src->config)
            src->config = moe_safetensors_meta(src->st[i], "config");
        if (!src->vocab)
            src->vocab = moe_safetensors_meta(src->st[i], "vocab");
    }
    src->x = calloc(total ? total : 1, sizeof *src->x);
    return src->x ? 0 : MOE_ERR_NOMEM;
}

/* Every tensor to export, sorted by name and checked. */
static int collect(const char *folder, struct source *src, bool params_only, char *err,
                   size_t errlen)
{
    char sn[MF_SHOW];
    for (int i = 0; i < src->m.n_files; i++)
        for (size_t k = 0; src->st[i] && k < moe_safetensors_count(src->st[i]); k++) {
            struct moe_st_view v;
            moe_safetensors_at(src->st[i], k, &v);
            if (!strncmp(v.name, "state.", 6) || (params_only && is_optimizer_name(v.name)))
                continue;
            if (strcmp(v.dtype, "F32") != 0) {
                show(sn, sizeof sn, v.name);
                return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                                    "%s/%s: tensor %s is %s; export handles F32 only", folder,
                                    src->m.files[i].name, sn, v.dtype);
            }
            src->x[src->n++] = (struct xent){v.name, i, v};
        }
    if (src->n)
        qsort(src->x, src->n, sizeof *src->x, cmp_xent);
    /* a hierarchical model's experts are named by group */
    expert_shard_set_group_size(src->config ? moe_options_ini_group_size(src->config) : 0);
    int rc = check_unique(src->x, src->n, &src->m, folder, err, errlen);
    if (!rc)
        rc = check_experts(src->x, src->n, &src->m, params_only, folder, err, errlen);
    return rc ? rc : check_groups(src->x, src->n, &src->m, params_only, folder, err, errlen);
}

/* Writes the sorted tensors with the description as metadata. */
static int write_export(const struct source *src, const char *out_path, char *err, size_t errlen)
{
    const size_t n = src->n;
    struct moe_st_entry *e = calloc(n ? n : 1, sizeof *e);
    float **copies = calloc(n ? n : 1, sizeof *copies);
    size_t ncopies = 0;
    int rc = e && copies ? 0 : MOE_ERR_NOMEM;
    for (size_t i = 0; i < n && !rc; i++) {
        const struct xent *x = &src->x[i];
        e[i].name = x->name;
        e[i].ndim = x->v.ndim;
        memcpy(e[i].shape, x->v.shape, sizeof e[i].shape);
        e[i].data = x->v.data;
        /* views of files from other writers may be unaligned for float */
        if ((uintptr_t)x->v.data % _Alignof(float) != 0) {
            float *c = malloc(x->v.nbytes ? x->v.nbytes : 1);
            if (!c) {
                rc = MOE_ERR_NOMEM;
                break;
            }
            memcpy(c, x->v.data, x->v.nbytes);
            copies[ncopies++] = c;
            e[i].data = c;
        }
    }
    char step_s[32];
    snprintf(step_s, sizeof step_s, "%" PRId64, src->m.step);
    const char *meta[] = {"format", MOE_EXPORT_FORMAT, "step", step_s,
                          src->config ? "config" : NULL, src->config, "vocab", src->vocab, NULL};
    if (src->config && !src->vocab)
        meta[6] = NULL;
    if (rc)
        moe_err_set(err, errlen, "out of memory exporting the checkpoint");
    else
        rc = moe_safetensors_write(out_path, e, n, meta, err, errlen);
    for (size_t i = 0; i < ncopies; i++)
        free(copies[i]);
    free(copies);
    free(e);
    return rc;
}

int moectl_export(const char *folder, const char *out_path, bool params_only, char *err,
                  size_t errlen)
{
    struct source src = {.st = NULL};
    int rc = moe_manifest_read(folder, &src.m, err, errlen);
    if (rc)
        return rc;
    if (!(rc = moe_manifest_verify(folder, &src.m, err, errlen)) &&
        !(rc = check_out_path(folder, &src.m, out_path, err, errlen)) &&
        !(rc = open_files(folder, &src, err, errlen)) &&
        !(rc = collect(folder, &src, params_only, err, errlen)))
        rc = write_export(&src, out_path, err, errlen);
    if (rc == MOE_ERR_NOMEM)
        moe_err_set(err, errlen, "%s: out of memory exporting the checkpoint", folder);
    free(src.x);
    for (int i = 0; src.st && i < src.m.n_files; i++)
        moe_safetensors_close(&src.st[i]);
    free(src.st);
    moe_manifest_free(&src.m);
    return rc;
}

/* tools/torch_model.py, compiled in (deploy/torch_model.py). */
extern const char moectl_torch_model_py[];
extern const size_t moectl_torch_model_py_len;

/* Writes text to path atomically (temp file, fsync, rename). */
static int write_text(const char *path, const char *text, size_t len, char *err, size_t errlen)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot create: %s", tmp,
                            strerror(errno));
    int bad = fwrite(text, 1, len, f) != len;
    bad |= (fflush(f) != 0) | (fsync(fileno(f)) != 0);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: write failed: %s", path, strerror(e));
    }
    return 0;
}

static int make_dir(const char *dir, char *err, size_t errlen)
{
    struct stat sb;
    if (mkdir(dir, 0755) != 0 && !(errno == EEXIST && stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode)))
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot create the folder: %s", dir,
                            strerror(errno == EEXIST ? ENOTDIR : errno));
    return 0;
}

/* config.ini and vocab.txt of the bundle, from the export's metadata. */
static int write_description(const char *dir, const char *file, char *err, size_t errlen)
{
    moe_safetensors_t *st = moe_safetensors_open(file, err, errlen);
    if (!st)
        return MOE_ERR_FORMAT;
    const char *config = moe_safetensors_meta(st, "config");
    const char *vtext = moe_safetensors_meta(st, "vocab");
    char p[4200];
    int rc = 0;
    vocab_t *v = NULL;
    if (!config || !vtext)
        rc = moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                          "%s: the checkpoint does not describe its model (no configuration or "
                          "vocabulary; written by an older version?)", file);
    if (!rc && !(rc = moe_path_join(p, sizeof p, dir, "config.ini")))
        rc = write_text(p, config, strlen(config), err, errlen);
    if (!rc && !(v = vocab_from_text(vtext, file, err, errlen)))
        rc = MOE_ERR_FORMAT;
    if (!rc && !(rc = moe_path_join(p, sizeof p, dir, "vocab.txt")))
        rc = vocab_save(v, p, err, errlen);
    vocab_destroy(&v);
    moe_safetensors_close(&st);
    return rc;
}

int moectl_export_bundle(const char *folder, const char *dir, bool params_only, char *err,
                         size_t errlen)
{
    char file[4200], tools[4200], py[4200];
    int rc = make_dir(dir, err, errlen);
    if (!rc)
        rc = moe_path_join(file, sizeof file, dir, "model.safetensors");
    if (!rc)
        rc = moectl_export(folder, file, params_only, err, errlen);
    if (!rc)
        rc = write_description(dir, file, err, errlen);
    if (!rc && !(rc = moe_path_join(tools, sizeof tools, dir, "tools")) &&
        !(rc = make_dir(tools, err, errlen)) &&
        !(rc = moe_path_join(py, sizeof py, tools, "torch_model.py")))
        rc = write_text(py, moectl_torch_model_py, moectl_torch_model_py_len, err, errlen);
    if (!rc)
        rc = moe_fsync_dir(dir) ? moe_err_fail(MOE_ERR_IO, err, errlen, "%s: fsync: %s", dir,
                                                strerror(errno))
                                : 0;
    return rc;
}
