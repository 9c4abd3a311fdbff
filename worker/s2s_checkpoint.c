/* A translation model's life cycle and file (see s2s_checkpoint.h). */
#include "s2s_checkpoint.h"

#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "expert_ffn.h"
#include "expert_local.h"
#include "model.h"
#include "moe_checksum.h"
#include "moe_err.h"
#include "moe_kernels.h"
#include "moe_mem.h"
#include "moe_optim.h"
#include "moe_safetensors.h"

/* ------------------------------------------------------------------------ */
/* Life cycle */

int s2s_model_init(struct s2s_model *x, const struct moe_options *c, vocab_t **vs, vocab_t **vt,
                   int B_max, int S_max, int T_max, bool keep_grads, char *err, size_t errlen)
{
    memset(x, 0, sizeof *x);
    x->cfg = *c;
    x->vs = *vs;
    x->vt = *vt;
    *vs = *vt = NULL;
    const int E = c->n_experts;
    const struct s2s_config sc = {
        .V_src = vocab_size(x->vs), .V_tgt = vocab_size(x->vt), .D = c->d_model,
        .H = c->d_hidden, .E = E, .K = c->k, .residual = c->residual,
        .moe_sigmoid = c->moe_sigmoid, .dropout = c->dropout, .w_importance = c->w_importance,
        .w_load = c->w_load, .seed = (uint64_t)c->seed, .B_max = B_max, .S_max = S_max,
        .T_max = T_max};
    /* with expert servers this process holds no expert while it trains */
    const int held = strcmp(c->experts, "remote") ? E : 0;
    if (c->memory_check) {
        /* the model, 2 x E experts, and (training) the dense Adam state */
        const double need = s2s_bytes(&sc) + (keep_grads ? 8 * s2s_dense_params(&sc) : 0) +
                            2 * expert_shard_bytes(c->d_model, c->d_hidden, held, keep_grads);
        char what[200];
        snprintf(what, sizeof what,
                 "the translation model (D=%d, %d + %d words, 2 x %d experts, batches of %d "
                 "pairs of up to %d tokens)",
                 c->d_model, sc.V_src, sc.V_tgt, E, B_max, S_max > T_max ? S_max : T_max);
        int rc = moe_mem_check((uint64_t)need, what, err, errlen);
        if (rc) {
            s2s_model_free(x);
            return rc;
        }
    }
    x->shard[S2S_ENCODER] = model_experts_range(c, 0, held, keep_grads);
    x->shard[S2S_DECODER] = model_experts_range(c, E, held, keep_grads);
    struct moe_backend be[S2S_N_MOE], dec;
    int rc = x->shard[0] && x->shard[1] ? 0 : MOE_ERR_NOMEM;
    if (!rc) {
        expert_local_backend(&be[S2S_ENCODER], x->shard[S2S_ENCODER]);
        expert_local_backend(&dec, x->shard[S2S_DECODER]);
        rc = expert_offset_init(&x->off, &be[S2S_DECODER], &dec, E, E);
    }
    if (!rc && !(x->m = s2s_new(&sc, be)))
        rc = MOE_ERR_NOMEM;
    if (rc) {
        s2s_model_free(x);
        return moe_err_fail(rc, err, errlen,
                            "out of memory for the translation model (%d experts per MoE layer, "
                            "batches of %d pairs of up to %d tokens)",
                            E, B_max, S_max > T_max ? S_max : T_max);
    }
    return 0;
}

void s2s_model_free(struct s2s_model *x)
{
    s2s_destroy(&x->m);
    expert_offset_free(&x->off);
    for (int w = 0; w < S2S_N_MOE; w++)
        expert_shard_destroy(&x->shard[w]);
    vocab_destroy(&x->vs);
    vocab_destroy(&x->vt);
}

/* ------------------------------------------------------------------------ */
/* The tensors of the file */

/* Calls fn for every tensor: name, shape and its floats in the model. */
typedef int (*tensor_fn)(void *ctx, const char *name, int ndim, const int64_t *shape, float *data);

/* What a file holds: the dense parameters, their Adam state (opt, one
 * block per parameter, "NAME.adam"), the experts' parameters, their
 * factored-Adam state ("...experts.E.w1.weight.fadam"). */
struct file_parts {
    bool dense;
    float *const *opt;
    bool experts, expert_state;
};

static const struct file_parts MODEL_FILE = {true, NULL, true, false};

static int for_each_part(const struct s2s_model *x, const struct file_parts *fp, tensor_fn fn,
                         void *ctx)
{
    int rc = 0;
    for (int i = 0; i < s2s_n_params(x->m) && !rc; i++) {
        const struct layer_param p = s2s_param_at(x->m, i);
        if (fp->dense)
            rc = fn(ctx, p.w->name, p.w->ndim, p.w->shape, p.w->data);
        if (!rc && fp->opt) {
            char name[160];
            snprintf(name, sizeof name, "%s.adam", p.w->name);
            const int64_t n = (int64_t)moe_adam_state_size(p.w->numel);
            rc = fn(ctx, name, 1, &n, fp->opt[i]);
        }
    }
    if (!fp->experts && !fp->expert_state)
        return rc;
    static const char *const side[S2S_N_MOE] = {"encoder", "decoder"};
    const int D = x->cfg.d_model, H = x->cfg.d_hidden;
    for (int w = 0; w < S2S_N_MOE && !rc; w++)
        for (int e = 0; e < x->cfg.n_experts && !rc; e++) {
            float *blk = expert_shard_params(x->shard[w], e);
            float *st = expert_shard_opt_state(x->shard[w], e);
            for (int part = 0; part < EXPERT_PARTS && !rc; part++) {
                const char *suffix;
                int ndim;
                int64_t shape[2];
                size_t state;
                expert_shard_part(part, D, H, &suffix, &ndim, shape, &state);
                char name[112];
                snprintf(name, sizeof name, "%s.moe.experts.%d.%s", side[w], e, suffix);
                if (fp->experts)
                    rc = fn(ctx, name, ndim, shape, blk);
                if (!rc && fp->expert_state) {
                    strcat(name, ".fadam");
                    rc = fn(ctx, name, 1, &(int64_t){(int64_t)state}, st);
                }
                blk += (size_t)shape[0] * (ndim == 2 ? (size_t)shape[1] : 1);
                st += state;
            }
        }
    return rc;
}

static int for_each_tensor(const struct s2s_model *x, tensor_fn fn, void *ctx)
{
    return for_each_part(x, &MODEL_FILE, fn, ctx);
}

struct entries {
    struct moe_st_entry *e;
    size_t n, cap;
    uint64_t checksum;
};

static int add_entry(void *ctx, const char *name, int ndim, const int64_t *shape, float *data)
{
    struct entries *l = ctx;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        struct moe_st_entry *ne = realloc(l->e, sizeof *ne * cap);
        if (!ne)
            return MOE_ERR_NOMEM;
        l->e = ne;
        l->cap = cap;
    }
    struct moe_st_entry *e = &l->e[l->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name)))
        return MOE_ERR_NOMEM;
    e->ndim = ndim;
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        e->shape[d] = shape[d];
        numel *= (size_t)shape[d];
    }
    e->data = data;
    l->n++;
    l->checksum += moe_checksum_tensor(name, data, numel * sizeof(float));
    return 0;
}

/* The model's configuration text (s2s_checkpoint.h). */
static int config_text(const struct moe_options *c, char *out, size_t cap)
{
    int len = moe_options_model_ini(c, out, cap);
    static const char *const keys[] = {"task", "src_vocab_max", "tgt_vocab_max", "max_len"};
    for (size_t i = 0; len >= 0 && i < sizeof keys / sizeof keys[0]; i++) {
        char v[64];
        moe_config_format_value(moe_options_table, moe_options_count, c, keys[i], v, sizeof v);
        int n = snprintf(out + len, cap - (size_t)len, "%s%s = %s\n",
                         i == 0 ? "\n[translate]\n" : "", keys[i], v);
        len = n >= 0 && (size_t)(len + n) < cap ? len + n : MOE_ERR_RANGE;
    }
    return len;
}

static int save_parts(const struct s2s_model *x, const struct file_parts *fp, const char *format,
                      const char *path, int64_t step, char *err, size_t errlen)
{
    struct entries l = {0};
    char *config = malloc(65536), *sv = NULL, *tv = NULL;
    int rc = config ? for_each_part(x, fp, add_entry, &l) : MOE_ERR_NOMEM;
    if (!rc && config_text(&x->cfg, config, 65536) < 0)
        rc = MOE_ERR_RANGE;
    if (!rc && (!(sv = vocab_to_text(x->vs)) || !(tv = vocab_to_text(x->vt))))
        rc = MOE_ERR_NOMEM;
    if (rc) {
        moe_err_set(err, errlen, "%s: cannot describe the model: %s", path, moe_strerror(rc));
    } else {
        char step_s[32], sum_s[32];
        snprintf(step_s, sizeof step_s, "%" PRId64, step);
        snprintf(sum_s, sizeof sum_s, "%016" PRIx64, l.checksum);
        const char *meta[] = {"format", format, "step", step_s, "checksum", sum_s,
                              "blas_kernels", moe_kernels_effective(), "config", config,
                              "src_vocab", sv, "tgt_vocab", tv, NULL};
        rc = moe_safetensors_write(path, l.e, l.n, meta, err, errlen);
    }
    for (size_t i = 0; i < l.n; i++)
        free((char *)l.e[i].name);
    free(l.e);
    free(config);
    free(sv);
    free(tv);
    return rc;
}

int s2s_model_save(const struct s2s_model *x, const char *path, int64_t step, char *err,
                   size_t errlen)
{
    return save_parts(x, &MODEL_FILE, S2S_FORMAT, path, step, err, errlen);
}

int s2s_state_save(const struct s2s_model *x, float *const *opt, const char *path, int64_t step,
                   char *err, size_t errlen)
{
    /* opt NULL: another worker's file, its step alone (worker 0's holds
     * the dense state, the same on every worker) */
    return save_parts(x, &(struct file_parts){opt != NULL, opt, false, false}, S2S_STATE_FORMAT,
                      path, step, err, errlen);
}

/* ------------------------------------------------------------------------ */
/* Loading */

struct reader {
    const moe_safetensors_t *st;
    char *err;
    size_t errlen;
};

static int read_entry(void *ctx, const char *name, int ndim, const int64_t *shape, float *data)
{
    struct reader *r = ctx;
    return moe_safetensors_read_f32(r->st, name, ndim, shape, data, r->err, r->errlen);
}

/* The configuration and vocabularies a file describes. */
static int read_description(const moe_safetensors_t *st, struct moe_options *c, vocab_t **vs,
                            vocab_t **vt, char *err, size_t errlen)
{
    const char *path = moe_safetensors_path(st), *fmt = moe_safetensors_meta(st, "format");
    if (!fmt || strcmp(fmt, S2S_FORMAT))
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                            "%s: not a translation model (format %s, expected %s)", path,
                            fmt ? fmt : "none", S2S_FORMAT);
    const char *config = moe_safetensors_meta(st, "config");
    const char *svt = moe_safetensors_meta(st, "src_vocab"), *tvt = moe_safetensors_meta(st, "tgt_vocab");
    if (!config || !svt || !tvt)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                            "%s: the metadata lacks the configuration or a vocabulary", path);
    int rc = moe_config_defaults(moe_options_table, moe_options_count, c, err, errlen);
    if (!rc)
        rc = moe_config_load_ini_text(moe_options_table, moe_options_count, c, config, path, NULL,
                                      err, errlen);
    if (!rc && !(*vs = vocab_from_text(svt, "its source vocabulary", err, errlen)))
        rc = MOE_ERR_FORMAT;
    if (!rc && !(*vt = vocab_from_text(tvt, "its target vocabulary", err, errlen)))
        rc = MOE_ERR_FORMAT;
    return rc;
}

void s2s_model_file(const char *path, char *file, size_t cap)
{
    struct stat sb;
    snprintf(file, cap, "%s", path);
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return;
    snprintf(file, cap, "%s/model.safetensors", path);
    if (stat(file, &sb) == 0)
        return;
    DIR *d = opendir(path);
    char best[64] = "";
    for (struct dirent *e; d && (e = readdir(d));)
        if (strlen(e->d_name) == 13 && !strncmp(e->d_name, "step-", 5) &&
            strspn(e->d_name + 5, "0123456789") == 8 && strcmp(e->d_name, best) > 0)
            snprintf(best, sizeof best, "%s", e->d_name);
    if (d)
        closedir(d);
    if (best[0])
        snprintf(file, cap, "%s/%s/model.safetensors", path, best);
}

int s2s_model_load(struct s2s_model *x, const char *path, int B_max, int T_max, int64_t *step,
                   char *err, size_t errlen)
{
    memset(x, 0, sizeof *x);
    char file[MOE_PATH_MAX + 96];
    s2s_model_file(path, file, sizeof file);
    moe_safetensors_t *st = moe_safetensors_open(file, err, errlen);
    if (!st)
        return MOE_ERR_FORMAT;
    static struct moe_options c; /* large: not on the stack */
    vocab_t *vs = NULL, *vt = NULL;
    int rc = checkpoint_verify_checksum(st, err, errlen);
    if (!rc)
        rc = read_description(st, &c, &vs, &vt, err, errlen);
    if (!rc)
        rc = s2s_model_init(x, &c, &vs, &vt, B_max, c.max_len + 1, T_max, false, err, errlen);
    if (!rc) {
        struct reader r = {st, err, errlen};
        rc = for_each_tensor(x, read_entry, &r);
        if (rc)
            s2s_model_free(x);
    }
    const char *s = moe_safetensors_meta(st, "step");
    *step = s ? strtoll(s, NULL, 10) : 0;
    vocab_destroy(&vs);
    vocab_destroy(&vt);
    moe_safetensors_close(&st);
    return rc;
}

int s2s_state_load(struct s2s_model *x, float *const *opt, const char *path, int64_t *step,
                   char *err, size_t errlen)
{
    moe_safetensors_t *st = moe_safetensors_open(path, err, errlen);
    if (!st)
        return MOE_ERR_FORMAT;
    const char *fmt = moe_safetensors_meta(st, "format"), *s = moe_safetensors_meta(st, "step");
    int rc = checkpoint_verify_checksum(st, err, errlen);
    if (!rc && (!fmt || strcmp(fmt, S2S_STATE_FORMAT) || !s))
        rc = moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                          "%s: not the training state of a translation worker (format %s, "
                          "expected %s)", path, fmt ? fmt : "none", S2S_STATE_FORMAT);
    if (!rc) {
        struct reader r = {st, err, errlen};
        rc = for_each_part(x, &(struct file_parts){true, opt, false, false}, read_entry, &r);
    }
    if (!rc)
        *step = strtoll(s, NULL, 10);
    moe_safetensors_close(&st);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Resuming */

/* The optimizer file beside a model file: DIR/optim.safetensors. */
static void optim_file(const char *model_file, char *out, size_t cap)
{
    const char *slash = strrchr(model_file, '/');
    const int dir = slash ? (int)(slash - model_file) : 0;
    snprintf(out, cap, "%.*s%soptim.safetensors", dir, model_file, slash ? "/" : "");
}

int s2s_optim_save(struct s2s_model *x, float *const *opt, const char *dir, int64_t step,
                   char *err, size_t errlen)
{
    for (int w = 0; w < S2S_N_MOE; w++) /* the decays the experts owe (expert_shard.h) */
        expert_shard_flush(x->shard[w], step);
    char path[MOE_PATH_MAX + 96];
    snprintf(path, sizeof path, "%s/optim.safetensors", dir);
    return save_parts(x, &(struct file_parts){false, opt, false, true}, S2S_OPTIM_FORMAT, path,
                      step, err, errlen);
}

/* The "config", "src_vocab" and "tgt_vocab" of the model file at path
 * (borrowed from *st, which the caller closes). */
static int open_model(const char *path, moe_safetensors_t **st, char *file, size_t cap,
                      char *err, size_t errlen)
{
    s2s_model_file(path, file, cap);
    if (!(*st = moe_safetensors_open(file, err, errlen)))
        return MOE_ERR_FORMAT;
    const char *fmt = moe_safetensors_meta(*st, "format");
    if (!fmt || strcmp(fmt, S2S_FORMAT))
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                            "%s: not a translation model (format %s, expected %s)", file,
                            fmt ? fmt : "none", S2S_FORMAT);
    if (!moe_safetensors_meta(*st, "config") || !moe_safetensors_meta(*st, "src_vocab") ||
        !moe_safetensors_meta(*st, "tgt_vocab"))
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                            "%s: the metadata lacks the configuration or a vocabulary", file);
    return checkpoint_verify_checksum(*st, err, errlen);
}

int s2s_resume_adopt(struct moe_options *c, char *err, size_t errlen)
{
    moe_safetensors_t *st = NULL;
    char file[MOE_PATH_MAX + 96];
    int rc = open_model(c->resume, &st, file, sizeof file, err, errlen);
    if (!rc)
        rc = moe_options_adopt(c, moe_safetensors_meta(st, "config"), file, true, err, errlen);
    moe_safetensors_close(&st);
    return rc;
}

int s2s_resume_vocabs(const char *path, vocab_t **vs, vocab_t **vt, char *err, size_t errlen)
{
    moe_safetensors_t *st = NULL;
    char file[MOE_PATH_MAX + 96];
    int rc = open_model(path, &st, file, sizeof file, err, errlen);
    if (!rc &&
        (!(*vs = vocab_from_text(moe_safetensors_meta(st, "src_vocab"), "its source vocabulary",
                                 err, errlen)) ||
         !(*vt = vocab_from_text(moe_safetensors_meta(st, "tgt_vocab"), "its target vocabulary",
                                 err, errlen))))
        rc = MOE_ERR_FORMAT;
    moe_safetensors_close(&st);
    return rc;
}

int s2s_resume_load(struct s2s_model *x, float *const *opt, const char *path, int64_t *step,
                    char *err, size_t errlen)
{
    moe_safetensors_t *st = NULL, *os = NULL;
    char file[MOE_PATH_MAX + 96], ofile[MOE_PATH_MAX + 128];
    int rc = open_model(path, &st, file, sizeof file, err, errlen);
    struct reader r = {st, err, errlen};
    if (!rc)
        rc = for_each_tensor(x, read_entry, &r);
    const char *s = st ? moe_safetensors_meta(st, "step") : NULL;
    *step = s ? strtoll(s, NULL, 10) : 0;
    optim_file(file, ofile, sizeof ofile);
    if (!rc && !(os = moe_safetensors_open(ofile, err, errlen))) {
        char why[1024];
        snprintf(why, sizeof why, "%s", err);
        rc = moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                          "%s has no optimizer state beside it (%s); --resume takes a "
                          "checkpoint of a training run", file, why);
    }
    const char *fmt = os ? moe_safetensors_meta(os, "format") : NULL;
    const char *os_step = os ? moe_safetensors_meta(os, "step") : NULL;
    if (!rc && (!fmt || strcmp(fmt, S2S_OPTIM_FORMAT) || !os_step ||
                strtoll(os_step, NULL, 10) != *step))
        rc = moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                          "%s: not the optimizer state of %s (format %s, step %s; expected %s, "
                          "step %" PRId64 ")", ofile, file, fmt ? fmt : "none",
                          os_step ? os_step : "none", S2S_OPTIM_FORMAT, *step);
    if (!rc)
        rc = checkpoint_verify_checksum(os, err, errlen);
    if (!rc) {
        r.st = os;
        rc = for_each_part(x, &(struct file_parts){false, opt, false, true}, read_entry, &r);
    }
    for (int w = 0; !rc && w < S2S_N_MOE; w++)
        for (int e = 0; e < expert_shard_count(x->shard[w]); e++)
            *expert_shard_opt_step(x->shard[w], e) = *step;
    moe_safetensors_close(&st);
    moe_safetensors_close(&os);
    return rc;
}
