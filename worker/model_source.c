#include "model_source.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "moe_err.h"
#include "moe_file.h"
#include "moe_log.h"
#include "moe_manifest.h"

static int open_file(struct model_source *ms, const char *path, char *err, size_t errlen)
{
    if (ms->n_files == MODEL_SOURCE_FILES)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen, "%s: more than %d tensor files",
                            ms->path, MODEL_SOURCE_FILES);
    moe_safetensors_t *st = moe_safetensors_open(path, err, errlen);
    if (!st)
        return MOE_ERR_FORMAT;
    ms->st[ms->n_files++] = st;
    /* checkpoints carry a checksum of their tensors (exports do not) */
    return moe_safetensors_meta(st, "checksum") ? checkpoint_verify_checksum(st, err, errlen) : 0;
}

/* A step folder: verified against its manifest when it has one. */
static int open_folder(struct model_source *ms, const char *folder, char *err, size_t errlen)
{
    if (folder != ms->path)
        snprintf(ms->path, sizeof ms->path, "%s", folder);
    struct moe_manifest m;
    int rc = moe_manifest_read(folder, &m, err, errlen);
    if (rc == MOE_ERR_NOTFOUND) {
        /* a single-process checkpoint of an earlier version, or a bundle */
        char p[MOE_PATH_MAX + 96];
        struct stat sb;
        snprintf(p, sizeof p, "%s/model.safetensors", folder);
        if (stat(p, &sb) != 0)
            return moe_err_fail(MOE_ERR_NOTFOUND, err, errlen,
                                "%s: no checkpoint here (no manifest.json, no model.safetensors)",
                                folder);
        rc = open_file(ms, p, err, errlen);
        /* an export bundle (moectl export CKPT DIR) has no optimizer file */
        snprintf(p, sizeof p, "%s/optim.safetensors", folder);
        return rc || stat(p, &sb) != 0 ? rc : open_file(ms, p, err, errlen);
    }
    if (rc)
        return rc;
    if ((rc = moe_manifest_verify(folder, &m, err, errlen)) == 0) {
        for (int i = 0; i < m.n_files && !rc; i++) {
            char p[MOE_PATH_MAX + 200];
            if (!moe_has_suffix(m.files[i].name, ".safetensors"))
                continue;
            snprintf(p, sizeof p, "%s/%s", folder, m.files[i].name);
            rc = open_file(ms, p, err, errlen);
        }
    }
    moe_manifest_free(&m);
    return rc;
}

/* What the files say about the model: configuration, vocabulary, step. */
static int describe(struct model_source *ms, char *err, size_t errlen)
{
    const char *config = NULL, *vocab = NULL, *step = NULL;
    for (int i = 0; i < ms->n_files; i++) {
        if (!config)
            config = moe_safetensors_meta(ms->st[i], "config");
        if (!vocab)
            vocab = moe_safetensors_meta(ms->st[i], "vocab");
        if (!step)
            step = moe_safetensors_meta(ms->st[i], "step");
        if (!ms->train)
            ms->train = moe_safetensors_meta(ms->st[i], "train");
        if (!ms->valid)
            ms->valid = moe_safetensors_meta(ms->st[i], "valid");
    }
    char p[MOE_PATH_MAX + 96];
    snprintf(p, sizeof p, "%s/config.ini", ms->path);
    size_t len = 0;
    ms->config = config ? strdup(config)
                 : ms->is_export ? NULL : moe_file_read_text(p, &len, err, errlen);
    if (!ms->config)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                            "%s: holds no model configuration (written by an older version?)",
                            ms->path);
    char name[MOE_PATH_MAX + 96];
    snprintf(name, sizeof name, "%s (its vocabulary)", ms->path);
    snprintf(p, sizeof p, "%s/vocab.txt", ms->path);
    ms->vocab = vocab ? vocab_from_text(vocab, name, err, errlen)
                      : ms->is_export ? NULL : vocab_load(p, err, errlen);
    if (!ms->vocab)
        return vocab || !ms->is_export
                   ? MOE_ERR_FORMAT
                   : moe_err_fail(MOE_ERR_FORMAT, err, errlen, "%s: holds no vocabulary",
                                  ms->path);
    char *end = NULL;
    long long s = step ? strtoll(step, &end, 10) : -1;
    if (!step || *end || s < 0)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "%s: missing or bad \"step\" metadata",
                            ms->path);
    ms->step = s;
    return 0;
}

/* A step folder (step-N) or a folder holding the model itself (a bundle),
 * rather than a directory of checkpoints. */
static bool is_model_folder(const char *path)
{
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    char p[MOE_PATH_MAX + 96];
    struct stat sb;
    snprintf(p, sizeof p, "%s/model.safetensors", path);
    return strncmp(base, "step-", 5) == 0 || stat(p, &sb) == 0;
}

int model_source_open(struct model_source *ms, const char *path, char *err, size_t errlen)
{
    memset(ms, 0, sizeof *ms);
    snprintf(ms->path, sizeof ms->path, "%s", path);
    size_t len = strlen(ms->path);
    while (len > 1 && ms->path[len - 1] == '/')
        ms->path[--len] = '\0';
    struct stat sb;
    if (stat(ms->path, &sb) != 0)
        return moe_err_fail(MOE_ERR_NOTFOUND, err, errlen, "%s: %s", ms->path, strerror(errno));
    int rc;
    char mp[MOE_PATH_MAX + 96], latest[MOE_PATH_MAX + 64];
    snprintf(mp, sizeof mp, "%s/%s", ms->path, MOE_MANIFEST_NAME);
    struct stat ss;
    if (S_ISREG(sb.st_mode)) {
        ms->is_export = true;
        rc = open_file(ms, ms->path, err, errlen);
    } else if (stat(mp, &ss) == 0 || is_model_folder(ms->path)) {
        rc = open_folder(ms, ms->path, err, errlen);
    } else {
        struct moe_manifest m;
        char dir[MOE_PATH_MAX + 64];
        snprintf(dir, sizeof dir, "%s", ms->path);
        rc = moe_manifest_latest(dir, true, latest, sizeof latest, &m, err, errlen);
        moe_manifest_free(&m);
        /* a directory of an earlier version: its `latest` pointer */
        if (rc == MOE_ERR_NOTFOUND)
            rc = checkpoint_resolve(dir, latest, sizeof latest, err, errlen);
        if (rc == 0) {
            moe_info("using %s, the newest checkpoint of %s", latest, dir);
            rc = open_folder(ms, latest, err, errlen);
        }
    }
    return rc ? rc : describe(ms, err, errlen);
}

void model_source_close(struct model_source *ms)
{
    for (int i = 0; i < ms->n_files; i++)
        moe_safetensors_close(&ms->st[i]);
    ms->n_files = 0;
    ms->train = ms->valid = NULL;
    free(ms->config);
    ms->config = NULL;
    vocab_destroy(&ms->vocab);
}

bool model_source_has(const struct model_source *ms, const char *name)
{
    for (int i = 0; i < ms->n_files; i++)
        if (moe_safetensors_find(ms->st[i], name, NULL) == 0)
            return true;
    return false;
}

int model_source_read(const struct model_source *ms, const char *name, int ndim,
                      const int64_t *shape, float *dst, char *err, size_t errlen)
{
    for (int i = 0; i < ms->n_files; i++)
        if (moe_safetensors_find(ms->st[i], name, NULL) == 0)
            return moe_safetensors_read_f32(ms->st[i], name, ndim, shape, dst, err, errlen);
    return moe_err_fail(MOE_ERR_NOTFOUND, err, errlen, "%s: no tensor %s (another model?)",
                        ms->path, name);
}
