/* Checkpoint folders of the single-process trainer (see checkpoint.h). */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe_checksum.h"
#include "moe_err.h"
#include "moe_file.h"
#include "moe_kernels.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_safetensors.h"

#define NAME_LEN 96

/* A list of tensors to write, with names stored alongside. */
struct tlist {
    struct moe_st_entry *e;
    char (*names)[NAME_LEN];
    size_t n, cap;
};

static int tlist_add(struct tlist *l, const char *name, const float *data, int ndim, int64_t d0,
                     int64_t d1)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct moe_st_entry *e = realloc(l->e, sizeof *e * cap);
        if (!e)
            return MOE_ERR_NOMEM;
        l->e = e;
        char(*nm)[NAME_LEN] = realloc(l->names, sizeof *nm * cap);
        if (!nm)
            return MOE_ERR_NOMEM;
        l->names = nm;
        l->cap = cap;
    }
    snprintf(l->names[l->n], NAME_LEN, "%s", name);
    struct moe_st_entry *e = &l->e[l->n];
    memset(e, 0, sizeof *e);
    e->ndim = ndim;
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->data = data;
    l->n++;
    return 0;
}

static void tlist_finish(struct tlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        l->e[i].name = l->names[i];
}

static void tlist_free(struct tlist *l)
{
    free(l->e);
    free(l->names);
    memset(l, 0, sizeof *l);
}

static int build_lists(const struct ckpt_state *s, struct tlist *model, struct tlist *optim)
{
    const struct model_config *mc = model_config_of(s->model);
    const int D = mc->D, H = mc->H;
    char name[NAME_LEN];
    int rc = 0;
    for (int p = 0; p < model_n_params(s->model) && !rc; p++) {
        const moe_tensor *t = model_param_at(s->model, p).w;
        rc = tlist_add(model, t->name, t->data, t->ndim, t->shape[0], t->shape[1]);
        if (rc)
            break;
        if (s->dense_adam) {
            size_t n = s->dense_opt_n[p] / 2;
            snprintf(name, sizeof name, "%s.adam_m", t->name);
            rc = tlist_add(optim, name, s->dense_opt[p], 1, (int64_t)n, 0);
            snprintf(name, sizeof name, "%s.adam_v", t->name);
            if (!rc)
                rc = tlist_add(optim, name, s->dense_opt[p] + n, 1, (int64_t)n, 0);
        } else {
            snprintf(name, sizeof name, "%s.fadam", t->name);
            rc = tlist_add(optim, name, s->dense_opt[p], 1, (int64_t)s->dense_opt_n[p], 0);
        }
    }
    for (int i = 0; s->shard && i < expert_shard_count(s->shard) && !rc; i++) {
        int32_t id = expert_shard_id(s->shard, i);
        struct expert_ffn_params p = expert_ffn_view(expert_shard_params(s->shard, i), D, H);
        const float *parts[EXPERT_PARTS] = {p.w1, p.b1, p.w2, p.b2};
        const float *st = expert_shard_opt_state(s->shard, i);
        for (int k = 0; k < EXPERT_PARTS && !rc; k++) {
            const char *suffix;
            int nd;
            int64_t shape[2];
            size_t nst;
            expert_shard_part(k, D, H, &suffix, &nd, shape, &nst);
            expert_shard_tensor_name(name, sizeof name, id, k, false);
            rc = tlist_add(model, name, parts[k], nd, shape[0], shape[1]);
            expert_shard_tensor_name(name, sizeof name, id, k, true);
            if (!rc)
                rc = tlist_add(optim, name, st, 1, (int64_t)nst, 0);
            st += nst;
        }
    }
    /* a hierarchical MoE's secondary gates, named as on the expert servers */
    for (int i = 0; s->groups && i < hmoe_groups_count(s->groups) && !rc; i++) {
        const int32_t id = hmoe_groups_id(s->groups, i);
        const float *w = hmoe_groups_params(s->groups, i), *st = hmoe_groups_opt_state(s->groups, i);
        const size_t DB = (size_t)D * (size_t)mc->B, S1 = hmoe_groups_state_count(D, mc->B) / 2;
        for (int k = 0; k < 2 && !rc; k++) {
            hmoe_groups_tensor_name(name, sizeof name, id, k, false);
            rc = tlist_add(model, name, w + k * DB, 2, D, mc->B);
            hmoe_groups_tensor_name(name, sizeof name, id, k, true);
            if (!rc)
                rc = tlist_add(optim, name, st + k * S1, 1, (int64_t)S1, 0);
        }
    }
    /* the carried state of this worker's streams */
    for (int i = 0; i < model_n_states(s->model) && !rc; i++) {
        const struct layer_state ls = model_state_at(s->model, false, i);
        rc = tlist_add(optim, ls.name, ls.data, 2, s->lstm_rows, ls.width);
    }
    tlist_finish(model);
    tlist_finish(optim);
    return rc;
}

/* Order-independent checksum of a list of tensors: the sum of a hash of
 * each tensor's name and bytes. Stored as metadata "checksum" and checked
 * on load, so a flipped byte anywhere in the data is detected. */
static uint64_t tlist_checksum(const struct tlist *l)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < l->n; i++) {
        size_t n = (size_t)l->e[i].shape[0] * (l->e[i].ndim == 2 ? (size_t)l->e[i].shape[1] : 1);
        sum += moe_checksum_tensor(l->e[i].name, l->e[i].data, n * sizeof(float));
    }
    return sum;
}

int checkpoint_verify_checksum(const moe_safetensors_t *st, char *err, size_t errlen)
{
    const char *want = moe_safetensors_meta(st, "checksum");
    if (!want) {
        moe_err_set(err, errlen, "%s: no checksum in the metadata (not a checkpoint of this program?)",
                moe_safetensors_path(st));
        return MOE_ERR_FORMAT;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < moe_safetensors_count(st); i++) {
        struct moe_st_view v;
        moe_safetensors_at(st, i, &v);
        sum += moe_checksum_tensor(v.name, v.data, v.nbytes);
    }
    char got[32];
    snprintf(got, sizeof got, "%016" PRIx64, sum);
    if (strcmp(got, want) != 0) {
        moe_err_set(err, errlen, "%s: checksum mismatch (file is corrupted): stored %s, computed %s",
                moe_safetensors_path(st), want, got);
        return MOE_ERR_FORMAT;
    }
    return 0;
}

/* What makes a checkpoint self-describing, in the metadata of the file
 * with the dense model (model.safetensors; a cluster's worker-0): the
 * model's configuration (moe_options_model_ini), its vocabulary
 * (vocab_to_text) and the corpora it was trained and validated on
 * ("train", "valid": absolute paths when they resolve; "" no validation),
 * which --resume takes when not given others. */
struct self_desc {
    char config[8192];
    char *vocab;
    char train[MOE_PATH_MAX], valid[MOE_PATH_MAX];
};

/* `path` made absolute (as given when it does not resolve). */
static void absolute_path(char *out, size_t cap, const char *path)
{
    char buf[PATH_MAX];
    snprintf(out, cap, "%s", path[0] && realpath(path, buf) ? buf : path);
}

static int describe(const struct ckpt_state *s, struct self_desc *d, char *err, size_t errlen)
{
    if (moe_options_model_ini(s->cfg, d->config, sizeof d->config) < 0)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen, "the configuration is too long to store");
    absolute_path(d->train, sizeof d->train, s->cfg->train);
    absolute_path(d->valid, sizeof d->valid, s->cfg->valid);
    if (!(d->vocab = vocab_to_text(s->vocab)))
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "out of memory for the vocabulary");
    return 0;
}

/* The manifest of a single-process checkpoint (moe_manifest.h): its four
 * files with their checksums, every expert in model.safetensors. Written
 * into the folder before it is renamed into place. */
static int write_manifest(const char *folder, const struct ckpt_state *s, char *err,
                          size_t errlen)
{
    static const char *const names[] = {"model.safetensors", "optim.safetensors", "config.ini",
                                        "vocab.txt"};
    struct moe_manifest_file files[4];
    const struct model_config *mc = model_config_of(s->model);
    int *experts = calloc((size_t)mc->E, sizeof(int));
    if (!experts)
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "out of memory");
    int rc = 0;
    for (int i = 0; i < 4 && !rc; i++) {
        char p[MOE_PATH_MAX + 96];
        snprintf(files[i].name, sizeof files[i].name, "%s", names[i]);
        snprintf(p, sizeof p, "%s/%s", folder, names[i]);
        rc = moe_manifest_file_checksum(p, &files[i].checksum, &files[i].bytes, err, errlen);
    }
    struct moe_manifest m = {.step = s->step, .n_experts = mc->E, .d_model = mc->D,
                             .d_hidden = mc->H, .workers = 1, .n_files = 4, .files = files,
                             .expert_file = experts};
    if (!rc)
        rc = moe_manifest_write(folder, &m, err, errlen);
    free(experts);
    return rc;
}

/* The BLAS kernels the file was computed with against this process's
 * (DESIGN §4): a warning, or with strict_determinism a refusal. */
static int check_kernels(const moe_safetensors_t *st, const struct ckpt_state *s, char *err,
                         size_t errlen)
{
    return moe_kernels_compare(moe_safetensors_meta(st, "blas_kernels"),
                               moe_safetensors_path(st),
                               s->cfg ? s->cfg->strict_determinism : false, err, errlen);
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static void remove_tree(const char *dir)
{
    static const char *const files[] = {"config.ini", "vocab.txt", "model.safetensors",
                                        "optim.safetensors", MOE_MANIFEST_NAME};
    char p[MOE_PATH_MAX + 64];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

int checkpoint_save(const char *dir, const struct ckpt_state *s, char *out, size_t cap, char *err,
                    size_t errlen)
{
    struct tlist model = {0}, optim = {0};
    char tmp[MOE_PATH_MAX + 64], final[MOE_PATH_MAX + 64], p[MOE_PATH_MAX + 128];
    int rc = 0;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        moe_err_set(err, errlen, "%s: cannot create checkpoint folder: %s", dir, strerror(errno));
        return MOE_ERR_IO;
    }
    snprintf(final, sizeof final, "%s/step-%08" PRId64, dir, s->step);
    snprintf(tmp, sizeof tmp, "%s/.tmp-step-%08" PRId64 "-%ld", dir, s->step, (long)getpid());
    remove_tree(tmp);
    if (mkdir(tmp, 0755) != 0) {
        moe_err_set(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        return MOE_ERR_IO;
    }
    struct self_desc d = {.vocab = NULL};
    if ((rc = build_lists(s, &model, &optim))) {
        moe_err_set(err, errlen, "checkpoint: %s", moe_strerror(rc));
        goto fail;
    }
    if ((rc = describe(s, &d, err, errlen)))
        goto fail;
    char step_s[32], sum_s[32];
    snprintf(step_s, sizeof step_s, "%" PRId64, s->step);
    snprintf(sum_s, sizeof sum_s, "%016" PRIx64, tlist_checksum(&model));
    const char *meta[] = {"format", "moe-checkpoint-1", "step", step_s, "checksum", sum_s,
                          "blas_kernels", moe_kernels_effective(), "config", d.config, "vocab",
                          d.vocab, "train", d.train, "valid", d.valid, NULL};
    snprintf(p, sizeof p, "%s/model.safetensors", tmp);
    if ((rc = moe_safetensors_write(p, model.e, model.n, meta, err, errlen)))
        goto fail;
    snprintf(sum_s, sizeof sum_s, "%016" PRIx64, tlist_checksum(&optim));
    meta[8] = NULL; /* the description once, with the model */
    snprintf(p, sizeof p, "%s/optim.safetensors", tmp);
    if ((rc = moe_safetensors_write(p, optim.e, optim.n, meta, err, errlen)))
        goto fail;
    snprintf(p, sizeof p, "%s/vocab.txt", tmp);
    if ((rc = vocab_save(s->vocab, p, err, errlen)))
        goto fail;
    snprintf(p, sizeof p, "%s/config.ini", tmp);
    FILE *f = fopen(p, "w");
    if (!f || moe_config_write_ini_except(moe_options_table, moe_options_count, s->cfg, f,
                                               "output,cluster") ||
        fflush(f) || fsync(fileno(f))) {
        moe_err_set(err, errlen, "%s: write failed: %s", p, strerror(errno));
        if (f)
            fclose(f);
        rc = MOE_ERR_IO;
        goto fail;
    }
    fclose(f);
    if ((rc = write_manifest(tmp, s, err, errlen)))
        goto fail;
    if (fsync_path(tmp) != 0) {
        moe_err_set(err, errlen, "%s: fsync failed: %s", tmp, strerror(errno));
        rc = MOE_ERR_IO;
        goto fail;
    }
    /* A checkpoint of the same step from an earlier run is replaced. */
    remove_tree(final);
    if (rename(tmp, final) != 0 || fsync_path(dir) != 0) {
        moe_err_set(err, errlen, "%s: cannot move checkpoint into place: %s", final, strerror(errno));
        rc = MOE_ERR_IO;
        goto fail;
    }
    /* latest: written to a temporary name, then renamed. */
    char latest[MOE_PATH_MAX + 64], latest_tmp[MOE_PATH_MAX + 80];
    snprintf(latest, sizeof latest, "%s/latest", dir);
    snprintf(latest_tmp, sizeof latest_tmp, "%s/.latest.tmp.%ld", dir, (long)getpid());
    f = fopen(latest_tmp, "w");
    if (!f || fprintf(f, "step-%08" PRId64 "\n", s->step) < 0 || fflush(f) || fsync(fileno(f)) ||
        fclose(f) || rename(latest_tmp, latest) != 0 || fsync_path(dir) != 0) {
        moe_err_set(err, errlen, "%s: cannot write: %s", latest, strerror(errno));
        unlink(latest_tmp);
        tlist_free(&model);
        tlist_free(&optim);
        return MOE_ERR_IO;
    }
    if (out)
        snprintf(out, cap, "%s", final);
    tlist_free(&model);
    tlist_free(&optim);
    free(d.vocab);
    return 0;
fail:
    remove_tree(tmp);
    tlist_free(&model);
    tlist_free(&optim);
    free(d.vocab);
    return rc ? rc : MOE_ERR_IO;
}

int checkpoint_resolve(const char *path, char *out, size_t cap, char *err, size_t errlen)
{
    char p[MOE_PATH_MAX + 64];
    struct stat st;
    snprintf(p, sizeof p, "%s/model.safetensors", path);
    if (stat(p, &st) == 0) {
        snprintf(out, cap, "%s", path);
        return 0;
    }
    snprintf(p, sizeof p, "%s/latest", path);
    FILE *f = fopen(p, "r");
    if (!f) {
        moe_err_set(err, errlen, "%s: no checkpoint here (neither model.safetensors nor latest)", path);
        return MOE_ERR_NOTFOUND;
    }
    char name[256] = "";
    char *ok = fgets(name, sizeof name, f);
    fclose(f);
    size_t n = strlen(name);
    while (n && (name[n - 1] == '\n' || name[n - 1] == '\r'))
        name[--n] = '\0';
    if (!ok || n == 0 || strchr(name, '/') || strcmp(name, "..") == 0) {
        moe_err_set(err, errlen, "%s: malformed (expected a checkpoint folder name)", p);
        return MOE_ERR_FORMAT;
    }
    snprintf(out, cap, "%s/%s", path, name);
    return 0;
}

static int read_tensor(moe_safetensors_t *st, const char *name, int ndim, int64_t d0, int64_t d1,
                       float *dst, char *err, size_t errlen)
{
    int64_t shape[2] = {d0, d1};
    return moe_safetensors_read_f32(st, name, ndim, shape, dst, err, errlen);
}

/* ------------------------------------------------------------------------ */
/* Cluster checkpoints */

static bool is_state(const char *name) { return strncmp(name, "state.", 6) == 0; }

/* The tensors of worker `rank`'s file: everything for rank 0, the carried
 * LSTM state for the others. */
static int worker_list(const struct ckpt_state *s, int rank, bool want_state, struct tlist *out)
{
    struct tlist model = {0}, optim = {0};
    struct ckpt_state s2 = *s;
    s2.shard = NULL;
    s2.groups = NULL;
    int rc = build_lists(&s2, &model, &optim);
    const struct tlist *both[2] = {&model, &optim};
    for (int f = 0; f < 2 && !rc; f++)
        for (size_t i = 0; i < both[f]->n && !rc; i++) {
            const struct moe_st_entry *e = &both[f]->e[i];
            if (want_state ? !is_state(e->name) : (rank != 0 || is_state(e->name)))
                continue;
            rc = tlist_add(out, e->name, e->data, e->ndim, e->shape[0], e->shape[1]);
        }
    tlist_finish(out);
    tlist_free(&model);
    tlist_free(&optim);
    return rc;
}

int checkpoint_save_worker(const char *folder, const struct ckpt_state *s, int rank, char *file,
                           size_t cap, char *err, size_t errlen)
{
    struct tlist l = {0};
    int rc = worker_list(s, rank, false, &l);
    struct tlist st = {0};
    if (!rc)
        rc = worker_list(s, rank, true, &st);
    for (size_t i = 0; !rc && i < st.n; i++)
        rc = tlist_add(&l, st.e[i].name, st.e[i].data, st.e[i].ndim, st.e[i].shape[0],
                       st.e[i].shape[1]);
    tlist_finish(&l);
    tlist_free(&st);
    if (rc) {
        tlist_free(&l);
        moe_err_set(err, errlen, "checkpoint: %s", moe_strerror(rc));
        return rc;
    }
    char step_s[32], sum_s[32], rank_s[16], p[MOE_PATH_MAX + 96];
    snprintf(step_s, sizeof step_s, "%" PRId64, s->step);
    snprintf(sum_s, sizeof sum_s, "%016" PRIx64, tlist_checksum(&l));
    snprintf(rank_s, sizeof rank_s, "%d", rank);
    struct self_desc d = {.vocab = NULL};
    if (rank == 0 && (rc = describe(s, &d, err, errlen))) {
        tlist_free(&l);
        return rc;
    }
    const char *meta[] = {"format", "moe-worker-1", "step", step_s, "rank", rank_s,
                          "checksum", sum_s, "blas_kernels", moe_kernels_effective(), "config",
                          d.config, "vocab", d.vocab, "train", d.train, "valid", d.valid, NULL};
    if (rank != 0)
        meta[10] = NULL; /* the description once, with the dense model */
    snprintf(file, cap, "worker-%d.safetensors", rank);
    snprintf(p, sizeof p, "%s/%s", folder, file);
    rc = moe_safetensors_write(p, l.e, l.n, meta, err, errlen);
    tlist_free(&l);
    free(d.vocab);
    return rc;
}

static int load_list(const char *path, const struct tlist *l, const struct ckpt_state *s,
                     char *err, size_t errlen)
{
    moe_safetensors_t *st = moe_safetensors_open(path, err, errlen);
    if (!st)
        return MOE_ERR_FORMAT;
    int rc = checkpoint_verify_checksum(st, err, errlen);
    if (!rc)
        rc = check_kernels(st, s, err, errlen);
    for (size_t i = 0; !rc && i < l->n; i++) {
        const struct moe_st_entry *e = &l->e[i];
        rc = read_tensor(st, e->name, e->ndim, e->shape[0], e->shape[1], (float *)e->data, err,
                         errlen);
    }
    moe_safetensors_close(&st);
    return rc;
}

int checkpoint_load_worker(const char *folder, struct ckpt_state *s, int rank, char *err,
                           size_t errlen)
{
    struct tlist dense = {0}, state = {0};
    int rc = worker_list(s, 0, false, &dense);
    if (!rc)
        rc = worker_list(s, rank, true, &state);
    char p[MOE_PATH_MAX + 96];
    if (!rc) {
        snprintf(p, sizeof p, "%s/worker-0.safetensors", folder);
        rc = load_list(p, &dense, s, err, errlen);
    }
    if (!rc) {
        snprintf(p, sizeof p, "%s/worker-%d.safetensors", folder, rank);
        rc = load_list(p, &state, s, err, errlen);
    }
    tlist_free(&dense);
    tlist_free(&state);
    return rc;
}

static bool is_optimizer(const char *name)
{
    return moe_has_suffix(name, ".adam_m") || moe_has_suffix(name, ".adam_v") ||
           moe_has_suffix(name, ".fadam");
}

int checkpoint_load_source(const struct model_source *ms, struct ckpt_state *s, char *err,
                           size_t errlen)
{
    struct tlist model = {0}, optim = {0};
    int rc = build_lists(s, &model, &optim);
    if (rc)
        moe_err_set(err, errlen, "checkpoint: %s", moe_strerror(rc));
    /* the kernels each file was computed with (files of an older version
     * record none) */
    for (int f = 0; f < ms->n_files && !rc; f++)
        rc = check_kernels(ms->st[f], s, err, errlen);
    for (size_t i = 0; i < model.n && !rc; i++) {
        const struct moe_st_entry *e = &model.e[i];
        rc = model_source_read(ms, e->name, e->ndim, e->shape, (float *)e->data, err, errlen);
    }
    /* the optimizer state and the carried LSTM state, when it has them */
    bool opt_all = true, state_all = true;
    for (size_t i = 0; i < optim.n && !rc; i++) {
        const struct moe_st_entry *e = &optim.e[i];
        bool *all = is_optimizer(e->name) ? &opt_all : &state_all;
        if (*all && model_source_has(ms, e->name)) {
            int r = model_source_read(ms, e->name, e->ndim, e->shape, (float *)e->data, err,
                                      errlen);
            if (r == MOE_ERR_SHAPE && !is_optimizer(e->name))
                *all = false; /* the state of another batch split */
            else if (r)
                rc = r;
        } else {
            *all = false;
        }
    }
    if (!rc && !opt_all) {
        moe_warn("%s holds no optimizer state (exported with --params-only?): the optimizer "
                 "starts afresh from its parameters", ms->path);
        for (size_t i = 0; i < optim.n; i++)
            if (is_optimizer(optim.e[i].name))
                memset((float *)optim.e[i].data, 0,
                       sizeof(float) * (size_t)optim.e[i].shape[0]);
    }
    if (!rc && !state_all) {
        moe_info("%s holds no LSTM state for this batch: the streams start afresh", ms->path);
        for (size_t i = 0; i < optim.n; i++)
            if (!is_optimizer(optim.e[i].name))
                memset((float *)optim.e[i].data, 0,
                       sizeof(float) * (size_t)(optim.e[i].shape[0] * optim.e[i].shape[1]));
    }
    if (!rc) {
        s->step = ms->step;
        for (int i = 0; s->shard && i < expert_shard_count(s->shard); i++)
            *expert_shard_opt_step(s->shard, i) = opt_all ? ms->step : 0;
    }
    tlist_free(&model);
    tlist_free(&optim);
    return rc;
}
