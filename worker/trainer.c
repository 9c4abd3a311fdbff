/* The worker's training loop (see trainer.h). A step is forward ->
 * balancing statistics -> backward -> update, as in llm.c's train loop;
 * everything it needs is allocated before the first step. */
#include "trainer.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <zmq.h>

#include "checkpoint.h"
#include "coord_client.h"
#include "data.h"
#include "expert_local.h"
#include "expert_remote.h"
#include "expert_shard.h"
#include "gate.h"
#include "model.h"
#include "moe_allreduce.h"
#include "moe_blas.h"
#include "moe_cluster.h"
#include "moe_checksum.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_mem.h"
#include "moe_wire.h"
#include "moe_optim.h"

#define OPT(key, sec, type, field, lo, hi, def, help) \
    {key, sec, type, offsetof(struct trainer_config, field), sizeof(((struct trainer_config *)0)->field), lo, hi, def, help}

const struct moe_opt trainer_options[] = {
    OPT("train", "data", MOE_OPT_STRING, train, 1, 0, "data/wikitext-2/wiki.train.tokens", "training corpus (one sentence per line)"),
    OPT("valid", "data", MOE_OPT_STRING, valid, 1, 0, "data/wikitext-2/wiki.valid.tokens", "validation corpus (empty: none)"),
    OPT("vocab_max", "data", MOE_OPT_INT, vocab_max, 0, 10000000, "0", "vocabulary cap including <unk> and <eos> (0: no cap)"),
    OPT("d_model", "model", MOE_OPT_INT, d_model, 1, 65536, "128", "model width D (embedding, LSTMs, expert input/output)"),
    OPT("d_hidden", "model", MOE_OPT_INT, d_hidden, 1, 1 << 20, "256", "expert hidden width H"),
    OPT("n_experts", "model", MOE_OPT_INT, n_experts, 1, 1 << 20, "16", "number of experts E"),
    OPT("k", "model", MOE_OPT_INT, k, 1, 1 << 20, "4", "experts per row (top-k)"),
    OPT("residual", "model", MOE_OPT_BOOL, residual, 1, 0, "true", "residual add around every layer (paper, App. C)"),
    OPT("moe_sigmoid", "model", MOE_OPT_BOOL, moe_sigmoid, 1, 0, "false", "sigmoid on the MoE output before dropout"),
    OPT("dropout", "model", MOE_OPT_DOUBLE, dropout, 0, 0.95, "0.1", "dropout probability on layer outputs"),
    OPT("w_importance", "model", MOE_OPT_DOUBLE, w_importance, 0, 1e6, "0.1", "weight of the importance loss"),
    OPT("w_load", "model", MOE_OPT_DOUBLE, w_load, 0, 1e6, "0.1", "weight of the load loss"),
    OPT("steps", "train", MOE_OPT_I64, steps, 0, 1e15, "2000", "training steps (total, counting resumed ones)"),
    OPT("seed", "train", MOE_OPT_I64, seed, 0, 9.2e18, "1", "seed of every random number (init, noise, dropout)"),
    OPT("batch", "train", MOE_OPT_INT, batch, 1, 1 << 20, "32", "sequences per batch B"),
    OPT("unroll", "train", MOE_OPT_INT, unroll, 1, 1 << 20, "35", "time steps per unroll T (truncated BPTT)"),
    OPT("eval_batch", "train", MOE_OPT_INT, eval_batch, 1, 1 << 20, "10", "sequences per validation batch"),
    OPT("threads", "train", MOE_OPT_INT, threads, 1, 256, "2", "OpenBLAS threads (part of the determinism contract)"),
    OPT("warmup", "train", MOE_OPT_I64, warmup, 0, 1e15, "100", "steps of linear learning-rate warm-up, then 1/sqrt(step)"),
    OPT("lr", "train", MOE_OPT_DOUBLE, lr, 0, 10, "0.005", "peak learning rate"),
    OPT("beta1", "train", MOE_OPT_DOUBLE, beta1, 0, 0.999999, "0.9", "Adam beta1 (dense parameters)"),
    OPT("beta2", "train", MOE_OPT_DOUBLE, beta2, 0, 0.999999, "0.999", "Adam beta2 (dense parameters)"),
    OPT("adam_eps", "train", MOE_OPT_DOUBLE, adam_eps, 0, 1, "1e-8", "Adam epsilon"),
    OPT("dense_optimizer", "train", MOE_OPT_STRING, dense_optimizer, 1, 0, "adam", "adam or factored (factored Adam for dense matrices too)"),
    OPT("expert_beta2", "experts", MOE_OPT_DOUBLE, expert_beta2, 0, 0.999999, "0.999", "factored Adam decay of second moments"),
    OPT("expert_eps", "experts", MOE_OPT_DOUBLE, expert_eps, 0, 1, "1e-8", "factored Adam epsilon added to sqrt(V)"),
    OPT("expert_decay_pow", "experts", MOE_OPT_DOUBLE, expert_decay_pow, 0, 10, "0", "Adafactor decay: beta2_t = 1 - t^-pow (0.8); 0 = fixed beta2"),
    OPT("expert_clip", "experts", MOE_OPT_DOUBLE, expert_clip, 0, 1e6, "0", "Adafactor update clipping threshold (0 = off)"),
    OPT("expert_relative_step", "experts", MOE_OPT_BOOL, expert_relative_step, 1, 0, "false", "Adafactor relative step size instead of the lr schedule"),
    OPT("experts", "cluster", MOE_OPT_STRING, experts, 1, 0, "local", "where experts run: local (this process) or remote (expert servers)"),
    OPT("servers", "cluster", MOE_OPT_STRING, servers, 1, 0, "", "expert-server endpoints, comma-separated (entry j is server j)"),
    OPT("placement", "cluster", MOE_OPT_STRING, placement, 1, 0, "", "server of each expert, comma-separated (empty: contiguous blocks)"),
    OPT("workers", "cluster", MOE_OPT_STRING, workers, 1, 0, "", "all-reduce endpoints of the workers by rank, comma-separated (empty: one worker)"),
    OPT("rank", "cluster", MOE_OPT_INT, rank, 0, 65535, "0", "this worker's rank"),
    OPT("server_index", "cluster", MOE_OPT_INT, server_index, 0, 65535, "0", "moe-server: which entry of `servers` this daemon is"),
    OPT("bind", "cluster", MOE_OPT_STRING, bind, 1, 0, "", "moe-server: address to bind (default: its entry of `servers`)"),
    OPT("advertise", "cluster", MOE_OPT_STRING, advertise, 1, 0, "", "moe-server: address workers reach it at, given to the coordinator (default: --bind; needed when binding tcp://*:PORT)"),
    OPT("timeout_ms", "cluster", MOE_OPT_I64, timeout_ms, 1, 86400000, "30000", "a peer that does not answer within this many ms is an error"),
    OPT("wire_dtype", "cluster", MOE_OPT_STRING, wire_dtype, 1, 0, "f32", "tensor encoding on the wire: f32 or bf16"),
    OPT("max_message_mb", "cluster", MOE_OPT_INT, max_message_mb, 1, 65536, "512", "largest message accepted, in MiB"),
    OPT("shard_out", "cluster", MOE_OPT_STRING, shard_out, 1, 0, "", "moe-server: write its shard (safetensors) here when it stops"),
    OPT("coordinator", "cluster", MOE_OPT_STRING, coordinator, 1, 0, "", "coordinator endpoint (empty: no coordinator)"),
    OPT("http", "cluster", MOE_OPT_STRING, http, 1, 0, "127.0.0.1:8780", "moe-coordinator: HTTP monitoring address HOST:PORT"),
    OPT("http_token", "cluster", MOE_OPT_STRING, http_token, 1, 0, "", "moe-coordinator: bearer token for mutating endpoints"),
    OPT("min_servers", "cluster", MOE_OPT_INT, min_servers, 0, 65535, "0", "moe-coordinator: expert servers to wait for before training starts (0: as many as `servers` lists, at least 1)"),
    OPT("heartbeat_timeout_ms", "cluster", MOE_OPT_I64, heartbeat_timeout_ms, 100, 86400000, "3000", "moe-coordinator: a server silent this long is dead (its experts move, the cluster rolls back)"),
    OPT("keep_checkpoints", "output", MOE_OPT_INT, keep_checkpoints, 1, 1000000, "3", "moe-coordinator: committed cluster checkpoints kept (older ones are pruned)"),
    OPT("checkpoint_dir", "output", MOE_OPT_STRING, checkpoint_dir, 1, 0, "", "folder for checkpoints (empty: none)"),
    OPT("checkpoint_every", "output", MOE_OPT_I64, checkpoint_every, 0, 1e15, "0", "checkpoint every N steps (0: only at the end)"),
    OPT("resume", "output", MOE_OPT_STRING, resume, 1, 0, "", "checkpoint folder (or its parent with `latest`) to resume from"),
    OPT("report", "output", MOE_OPT_STRING, report, 1, 0, "", "write a JSON report of the run to this file (worker r > 0: FILE.rank<r>)"),
    OPT("log_every", "output", MOE_OPT_I64, log_every, 1, 1e15, "50", "steps between progress lines"),
    OPT("valid_every", "output", MOE_OPT_I64, valid_every, 0, 1e15, "0", "validate every N steps (0: only at the end)"),
    OPT("valid_max_tokens", "output", MOE_OPT_I64, valid_max_tokens, 0, 1e15, "0", "validate on at most this many tokens (0: all)"),
    OPT("log_level", "output", MOE_OPT_STRING, log_level, 1, 0, "info", "debug, info, warn or error"),
    OPT("max_rollbacks", "operations", MOE_OPT_INT, max_rollbacks, 0, 1000000, "3", "moe-coordinator: rollbacks to the same checkpoint without progress before the cluster stops with the cause (0: never stop)"),
    OPT("coordinator_wait_s", "operations", MOE_OPT_I64, coordinator_wait_s, 1, 1e9, "600", "servers and workers: seconds to keep waiting for a silent coordinator before giving up"),
    OPT("memory_check", "operations", MOE_OPT_BOOL, memory_check, 1, 0, "true", "compare the memory a model or shard needs with MemAvailable before allocating it"),
};
const size_t trainer_options_count = sizeof trainer_options / sizeof trainer_options[0];

/* ------------------------------------------------------------------------ */
/* The configuration contract of a cluster */

/* Keys every member depends on, then those only workers do. */
static const char *const contract_server_keys[] = {
    "d_model", "d_hidden", "n_experts", "seed", "lr", "warmup", "expert_beta2", "expert_eps",
    "expert_decay_pow", "expert_clip", "expert_relative_step", "wire_dtype", "workers",
};
static const char *const contract_worker_keys[] = {
    "vocab_max", "k", "residual", "moe_sigmoid", "dropout", "w_importance", "w_load", "steps",
    "batch", "unroll", "beta1", "beta2", "adam_eps", "dense_optimizer",
};

/* "a , b,c " -> "a,b,c" */
static void canonical_list(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (const char *p = in; *p;) {
        size_t len = strcspn(p, ",");
        const char *a = p, *b = p + len;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (o && o + 1 < cap)
            out[o++] = ',';
        for (; a < b && o + 1 < cap; a++)
            out[o++] = *a;
        out[o] = '\0';
        p += len;
        if (*p == ',')
            p++;
    }
}

static int contract_add(char *out, size_t cap, size_t *len, const char *key, const char *value)
{
    int n = snprintf(out + *len, cap - *len, "%s=%s\n", key, value);
    if (n < 0 || (size_t)n >= cap - *len)
        return MOE_ERR_RANGE;
    *len += (size_t)n;
    return 0;
}

int trainer_contract(const struct trainer_config *c, int role, char *out, size_t cap)
{
    size_t len = 0;
    char v[4200];
    if (cap == 0)
        return MOE_ERR_RANGE;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof contract_server_keys / sizeof *contract_server_keys; i++) {
        const char *key = contract_server_keys[i];
        if (strcmp(key, "workers") == 0)
            canonical_list(c->workers, v, sizeof v);
        else
            moe_config_format_value(trainer_options, trainer_options_count, c, key, v, sizeof v);
        if (contract_add(out, cap, &len, key, v))
            return MOE_ERR_RANGE;
    }
    if (role != TRAINER_ROLE_WORKER)
        return (int)len;
    for (size_t i = 0; i < sizeof contract_worker_keys / sizeof *contract_worker_keys; i++) {
        moe_config_format_value(trainer_options, trainer_options_count, c,
                                contract_worker_keys[i], v, sizeof v);
        if (contract_add(out, cap, &len, contract_worker_keys[i], v))
            return MOE_ERR_RANGE;
    }
    /* The corpus by its bytes, not its path: machines mount data differently. */
    uint64_t sum = 0, bytes = 0;
    if (moe_manifest_file_checksum(c->train, &sum, &bytes, NULL, 0) == 0)
        snprintf(v, sizeof v, "%016" PRIx64, sum);
    else
        snprintf(v, sizeof v, "?");
    if (contract_add(out, cap, &len, "train", v))
        return MOE_ERR_RANGE;
    return (int)len;
}

uint64_t trainer_contract_digest(const char *contract)
{
    return moe_checksum64(MOE_CHECKSUM_INIT, contract, strlen(contract));
}

/* The line of `key` in a contract: start of the value and its length. */
static const char *contract_find(const char *contract, const char *key, size_t *vlen)
{
    const size_t kl = strlen(key);
    for (const char *p = contract; p && *p;) {
        const char *nl = strchr(p, '\n');
        const size_t ll = nl ? (size_t)(nl - p) : strlen(p);
        if (ll > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
            *vlen = ll - kl - 1;
            return p + kl + 1;
        }
        p = nl ? nl + 1 : NULL;
    }
    return NULL;
}

void trainer_contract_get(const char *contract, const char *key, char *out, size_t cap)
{
    size_t vl = 0;
    const char *v = contract_find(contract, key, &vl);
    snprintf(out, cap, "%.*s", v ? (int)vl : 0, v ? v : "");
}

/* Whether `key` is one of the comma-separated names of `list`. */
static bool key_listed(const char *list, const char *key, size_t kl)
{
    for (const char *p = list; p && *p;) {
        size_t n = strcspn(p, ",");
        if (n == kl && strncmp(p, key, kl) == 0)
            return true;
        p += n;
        if (*p == ',')
            p++;
    }
    return false;
}

/* How a contract value reads in a sentence: absent, empty, or as it is. */
static void show_value(char *out, size_t cap, const char *v, size_t len)
{
    if (!v)
        snprintf(out, cap, "not set");
    else if (len == 0)
        snprintf(out, cap, "empty");
    else
        snprintf(out, cap, "%.*s%s", (int)(len > 80 ? 80 : len), v, len > 80 ? "..." : "");
}

/* Appends "KEY is X here and Y in the cluster" (ours a, theirs b). */
static void diff_note(char *why, size_t cap, size_t *len, int *n, const char *key, const char *a,
                      size_t al, const char *b, size_t bl)
{
    char x[96], y[96];
    show_value(x, sizeof x, b, bl);
    show_value(y, sizeof y, a, al);
    if (*len + 1 < cap) {
        int w = snprintf(why + *len, cap - *len, "%s%s is %s here and %s in the cluster",
                         *n ? "; " : "", key, x, y);
        if (w > 0)
            *len += (size_t)w < cap - *len ? (size_t)w : cap - *len - 1;
    }
    (*n)++;
}

int trainer_contract_diff(const char *mine, const char *theirs, const char *skip_empty, char *why,
                          size_t cap)
{
    int n = 0;
    size_t len = 0;
    if (cap)
        why[0] = '\0';
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0: every key of ours; pass 1: keys only the newcomer has */
        const char *list = pass == 0 ? mine : theirs;
        for (const char *p = list; p && *p;) {
            const char *nl = strchr(p, '\n');
            const size_t ll = nl ? (size_t)(nl - p) : strlen(p);
            const char *eq = memchr(p, '=', ll);
            if (eq) {
                const size_t kl = (size_t)(eq - p);
                char key[64];
                snprintf(key, sizeof key, "%.*s", (int)(kl < 63 ? kl : 63), p);
                size_t al = 0, bl = 0;
                const char *a = contract_find(mine, key, &al), *b = contract_find(theirs, key, &bl);
                if (pass == 0) {
                    const bool skip = b && bl == 0 && skip_empty && key_listed(skip_empty, key, kl);
                    if (!skip && (!b || al != bl || memcmp(a, b, al) != 0))
                        diff_note(why, cap, &len, &n, key, a, al, b, bl);
                } else if (!a) {
                    diff_note(why, cap, &len, &n, key, NULL, 0, b, bl);
                }
            }
            p = nl ? nl + 1 : NULL;
        }
    }
    return n;
}

/* ------------------------------------------------------------------------ */

struct trainer {
    const struct trainer_config *cfg;
    /* data parallelism: this worker's streams [b0, b0 + B) of the global batch */
    int rank, world, B, b0;
    bool remote;
    struct moe_cluster cl;
    void *zctx;
    expert_remote_t *remote_be;
    moe_allreduce_t *ar;
    struct moe_backend backend;
    float *flat;        /* dense gradients, flattened for the all-reduce */
    size_t flat_n;
    float *stats;       /* Importance | Load | rows per expert | cross-entropy */
    coord_client_t *coord; /* statistics through the coordinator, when configured */
    bool elastic;          /* coordinator + checkpoint_dir: failures roll back, not exit */
    struct coord_epoch ep; /* the epoch this worker runs in */
    const volatile sig_atomic_t *signals; /* SIGTERM/SIGINT received (trainer_run's caller) */
    bool stop_asked;       /* the coordinator was asked to stop the cluster */
    uint32_t step_flags;   /* MOE_FLAG_* the coordinator attached to this step */
    int recoveries;
    double *rows_routed;   /* rows this worker dispatched to each expert, whole run */
    float *gstats;      /* global Importance | Load | rows from the coordinator */
    double last_tps;
    vocab_t *vocab;
    struct corpus train, valid;
    struct batcher tb, vb;
    expert_shard_t *shard;
    model_t *model;
    float *dense_opt[MP_COUNT];
    size_t dense_opt_n[MP_COUNT];
    bool dense_adam;
    int32_t *tok, *tgt;
    int64_t step; /* steps completed */
    /* statistics over the last window of steps */
    double win_loss, win_bal;
    int64_t win_steps, win_tokens;
    double cv_imp_sum, cv_load_sum, maxmean_sum;
    int64_t cv_n;
    double last_train_ppl;
    int64_t start_step; /* step this run started at (after a resume) */
    double *uni_logp; /* (V) unigram log-probabilities of the training data */
};

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void dense_update(struct trainer *t, int64_t step1, double lr)
{
    const struct trainer_config *c = t->cfg;
    struct moe_adam_opts ao = {c->beta1, c->beta2, c->adam_eps};
    struct moe_fadam_opts fo = {c->beta2, 0, c->adam_eps, 1e-30, 0, false, 1e-3};
    for (int p = 0; p < MP_COUNT; p++) {
        moe_tensor *w = model_param(t->model, (enum model_param)p);
        moe_tensor *g = model_grad(t->model, (enum model_param)p);
        if (t->dense_adam)
            moe_adam_update(w->data, g->data, t->dense_opt[p], w->numel, step1, lr, &ao);
        else
            moe_fadam_update(w->data, g->data, t->dense_opt[p], (size_t)w->shape[0],
                             w->ndim == 2 ? (size_t)w->shape[1] : 0, step1, lr, &fo);
    }
}

static void format_eta(char *buf, size_t cap, double sec)
{
    if (!isfinite(sec) || sec < 0)
        snprintf(buf, cap, "?");
    else if (sec < 60)
        snprintf(buf, cap, "%.0fs", sec);
    else if (sec < 3600)
        snprintf(buf, cap, "%dm%02ds", (int)(sec / 60), (int)fmod(sec, 60));
    else
        snprintf(buf, cap, "%dh%02dm", (int)(sec / 3600), (int)fmod(sec / 60, 60));
}

/* Perplexity over the validation corpus (or its first valid_max_tokens
 * predictions, rounded up to whole chunks), with deterministic gating; and
 * that of the unigram model of the training corpus (add-one smoothing) on
 * exactly the same predictions: the baseline to beat. */
static int evaluate(struct trainer *t, double *ppl, double *uni_ppl, char *err, size_t errlen)
{
    model_reset_state(t->model, true);
    double sum = 0, uni = 0;
    int64_t count = 0, chunks = batcher_eval_chunks(&t->vb);
    const int64_t cap = t->cfg->valid_max_tokens;
    for (int64_t c = 0; c < chunks; c++) {
        int T = batcher_eval(&t->vb, c, t->tok, t->tgt);
        struct model_batch b = {t->vb.B, T, t->tok, t->tgt, 0, (int64_t)t->vb.B * T};
        double xs;
        int rc = model_forward(t->model, &b, t->step, false, &xs, err, errlen);
        if (rc)
            return rc;
        sum += xs;
        for (int i = 0; i < t->vb.B * T; i++)
            uni -= t->uni_logp[t->tgt[i]];
        count += (int64_t)t->vb.B * T;
        if (cap > 0 && count >= cap)
            break;
    }
    *ppl = exp(sum / (double)count);
    *uni_ppl = exp(uni / (double)count);
    return 0;
}

/* log p(word) of the add-one smoothed unigram model of the training data. */
static int unigram_init(struct trainer *t)
{
    const int V = vocab_size(t->vocab);
    t->uni_logp = calloc((size_t)V, sizeof(double));
    if (!t->uni_logp)
        return MOE_ERR_NOMEM;
    for (size_t i = 0; i < t->train.n; i++)
        t->uni_logp[t->train.ids[i]] += 1;
    const double total = (double)t->train.n + V;
    for (int v = 0; v < V; v++)
        t->uni_logp[v] = log((t->uni_logp[v] + 1) / total);
    return 0;
}

static int write_report(const struct trainer *t, double tokens_per_sec, double valid_ppl,
                        double uni_ppl, char *err, size_t errlen)
{
    const struct trainer_config *c = t->cfg;
    json_t *o = json_object();
    json_object_set_new(o, "steps", json_integer(t->step));
    json_object_set_new(o, "tokens", json_integer(t->step * (int64_t)c->batch * c->unroll));
    json_object_set_new(o, "tokens_per_sec", json_real(tokens_per_sec));
    json_object_set_new(o, "train_ppl", json_real(t->last_train_ppl));
    json_object_set_new(o, "valid_ppl", isfinite(valid_ppl) ? json_real(valid_ppl) : json_null());
    json_object_set_new(o, "unigram_valid_ppl", isfinite(uni_ppl) ? json_real(uni_ppl) : json_null());
    json_object_set_new(o, "importance_cv", json_real(t->cv_n ? t->cv_imp_sum / t->cv_n : 0));
    json_object_set_new(o, "load_cv", json_real(t->cv_n ? t->cv_load_sum / t->cv_n : 0));
    json_object_set_new(o, "load_max_over_mean", json_real(t->cv_n ? t->maxmean_sum / t->cv_n : 0));
    json_object_set_new(o, "stats_window_steps", json_integer(t->cv_n));
    json_object_set_new(o, "n_experts", json_integer(c->n_experts));
    json_object_set_new(o, "k", json_integer(c->k));
    json_object_set_new(o, "vocab_size", json_integer(vocab_size(t->vocab)));
    json_object_set_new(o, "seed", json_integer(c->seed));
    json_object_set_new(o, "experts", json_string(c->experts));
    json_t *rr = json_array();
    for (int e = 0; e < c->n_experts; e++)
        json_array_append_new(rr, json_integer((json_int_t)t->rows_routed[e]));
    json_object_set_new(o, "rows_routed", rr);
    json_object_set_new(o, "rank", json_integer(t->rank));
    json_object_set_new(o, "workers", json_integer(t->world));
    json_object_set_new(o, "recoveries", json_integer(t->recoveries));
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        json_object_set_new(o, "peak_rss_mb", json_real((double)ru.ru_maxrss / 1024.0));
    if (t->remote) {
        /* this worker's tensor bytes over its share of the tokens */
        double tok = (double)(t->step - t->start_step) * t->B * c->unroll;
        json_object_set_new(o, "wire_bytes_per_token",
                            json_real(tok > 0 ? (double)expert_remote_wire_bytes(t->remote_be) / tok : 0));
        json_object_set_new(o, "wire_dtype", json_string(c->wire_dtype));
    }
    /* Worker 0 writes PATH; worker r > 0 writes PATH.rank<r>. */
    char path[TRAINER_PATH_MAX + 32], tmp[TRAINER_PATH_MAX + 48];
    if (t->rank == 0)
        snprintf(path, sizeof path, "%s", c->report);
    else
        snprintf(path, sizeof path, "%s.rank%d", c->report, t->rank);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = json_dump_file(o, tmp, JSON_INDENT(2) | JSON_REAL_PRECISION(8));
    json_decref(o);
    if (rc != 0 || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: cannot write the report: %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    return 0;
}

/* cv (not squared) of a vector, for reports. */
static double cv_of(const float *v, int n) { return sqrt(gate_cv_squared(v, n, NULL)); }

/* Sums the dense gradients over the workers (no-op for one worker). */
static int allreduce_grads(struct trainer *t, int64_t step, char *err, size_t errlen)
{
    if (t->world == 1)
        return 0;
    size_t off = 0;
    for (int p = 0; p < MP_COUNT; p++) {
        moe_tensor *g = model_grad(t->model, (enum model_param)p);
        memcpy(t->flat + off, g->data, sizeof(float) * g->numel);
        off += g->numel;
    }
    const uint64_t epoch = (uint64_t)t->ep.epoch << MOE_ALLREDUCE_EPOCH_SHIFT;
    int rc = moe_allreduce_sum(t->ar, t->flat, t->flat_n, epoch | ((uint64_t)step * 2 + 1), err,
                               errlen);
    if (rc)
        return rc;
    off = 0;
    for (int p = 0; p < MP_COUNT; p++) {
        moe_tensor *g = model_grad(t->model, (enum model_param)p);
        memcpy(g->data, t->flat + off, sizeof(float) * g->numel);
        off += g->numel;
    }
    return 0;
}

static int train_step(struct trainer *t, char *err, size_t errlen)
{
    const struct trainer_config *c = t->cfg;
    const int64_t s = t->step; /* 0-based index of this step */
    const int E = c->n_experts;
    if (batcher_train(&t->tb, s, t->b0, t->B, t->tok, t->tgt) && s > 0)
        model_reset_state(t->model, false);
    const int64_t N = (int64_t)c->batch * c->unroll; /* rows of the global batch */
    struct model_batch b = {t->B, c->unroll, t->tok, t->tgt, (int64_t)t->b0 * c->unroll, N};
    double xent, bal;
    int rc = model_forward(t->model, &b, s, true, &xent, err, errlen);
    if (rc)
        return rc;
    /* Global Importance and Load: the sum over every worker of this step. */
    float *imp = t->stats, *load = imp + E, *cnt = load + E;
    memcpy(imp, model_local_importance(t->model), sizeof(float) * (size_t)E);
    memcpy(load, model_local_load(t->model), sizeof(float) * (size_t)E);
    const int *lc = model_local_counts(t->model);
    for (int e = 0; e < E; e++) {
        cnt[e] = (float)lc[e];
        t->rows_routed[e] += lc[e];
    }
    cnt[E] = (float)xent;
    if (t->coord) {
        /* The coordinator sums every worker's vectors in rank order. */
        const uint32_t ask = t->signals && *t->signals ? MOE_FLAG_STOP : 0;
        rc = coord_client_stats(t->coord, s, imp, load, cnt, xent / ((double)t->B * c->unroll),
                                t->last_tps, ask, t->gstats, t->gstats + E, t->gstats + 2 * E,
                                &t->step_flags, err, errlen);
        if (rc == 0 && ask && !t->stop_asked) {
            t->stop_asked = true;
            moe_info("asked the coordinator to stop the cluster after a checkpoint");
        }
        if (rc)
            return rc;
        memcpy(t->stats, t->gstats, sizeof(float) * 3 * (size_t)E);
        cnt[E] = (float)(xent * t->world); /* the loss printed is this worker's */
    } else if (t->world > 1 &&
               (rc = moe_allreduce_sum(t->ar, t->stats, 3 * (size_t)E + 1,
                                       ((uint64_t)t->ep.epoch << MOE_ALLREDUCE_EPOCH_SHIFT) |
                                           ((uint64_t)s * 2),
                                       err, errlen))) {
        return rc;
    }
    if (t->remote_be)
        expert_remote_set_backward_flags(t->remote_be, t->step_flags & MOE_FLAG_CHECKPOINT);
    rc = model_backward(t->model, imp, load, &bal, err, errlen);
    if (rc || (rc = allreduce_grads(t, s, err, errlen)))
        return rc;
    const int64_t t1 = s + 1;
    struct moe_lr_schedule sched = {c->lr, c->warmup};
    const double lr = moe_lr_at(&sched, t1);
    dense_update(t, t1, lr);
    if ((rc = t->backend.apply(t->backend.ctx, t1, lr, err, errlen)))
        return rc;
    model_carry_state(t->model);
    t->step = t1;

    const double loss = (t->world > 1 || t->coord ? (double)cnt[E] : xent) / (double)N;
    if (!isfinite(loss)) {
        snprintf(err, errlen, "training diverged at step %" PRId64 " (loss %g); try a lower --lr",
                 t1, loss);
        return MOE_ERR_STATE;
    }
    t->win_loss += loss;
    t->win_bal += bal;
    t->win_steps++;
    t->win_tokens += N;
    /* balance statistics over the last 100 steps of the run */
    if (t1 > c->steps - 100) {
        double mx = 0, sum = 0;
        for (int e = 0; e < E; e++) {
            mx = cnt[e] > mx ? cnt[e] : mx;
            sum += cnt[e];
        }
        t->cv_imp_sum += cv_of(imp, E);
        t->cv_load_sum += cv_of(load, E);
        t->maxmean_sum += sum > 0 ? mx / (sum / E) : 0;
        t->cv_n++;
    }
    return 0;
}

static int save_checkpoint(struct trainer *t, char *err, size_t errlen)
{
    if (t->rank != 0)
        return 0;
    /* Remote experts: copy their parameters and state into the local mirror. */
    if (t->remote) {
        int rc = expert_remote_fetch(t->remote_be, t->shard, t->step, err, errlen);
        if (rc)
            return rc;
        for (int i = 0; i < expert_shard_count(t->shard); i++)
            *expert_shard_opt_step(t->shard, i) = t->step;
    } else {
        expert_shard_flush(t->shard, t->step);
    }
    struct ckpt_state cs = {t->model, t->shard, t->vocab, {0}, {0}, t->dense_adam, t->step, t->B, t->cfg};
    memcpy(cs.dense_opt, t->dense_opt, sizeof cs.dense_opt);
    memcpy(cs.dense_opt_n, t->dense_opt_n, sizeof cs.dense_opt_n);
    char where[TRAINER_PATH_MAX + 64];
    int rc = checkpoint_save(t->cfg->checkpoint_dir, &cs, where, sizeof where, err, errlen);
    if (rc == 0)
        moe_info("checkpoint of step %" PRId64 " written to %s", t->step, where);
    return rc;
}


static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Asks the coordinator for the next epoch until it has one (flags: its
 * first request's MOE_FLAG_TROUBLE, with `why`). t->ep gets it. Gives up
 * when the coordinator stays silent longer than coordinator_wait_s; a
 * signal meanwhile asks it to stop the cluster. MOE_ERR_STOPPED when the
 * operator stopped the cluster. */
static int wait_epoch(struct trainer *t, uint32_t flags, const char *why, char *err, size_t errlen)
{
    for (;;) {
        if (t->signals && *t->signals && !t->stop_asked) {
            uint32_t f = 0;
            char said[256];
            int rc = coord_client_leave(t->coord, t->step, &f, said, sizeof said, err, errlen);
            if (rc == MOE_ERR_STOPPED || (rc == 0 && (f & MOE_FLAG_STOP)))
                return MOE_ERR_STOPPED;
            if (rc == 0) {
                t->stop_asked = true;
                moe_info("asked the coordinator to stop the cluster: %s", said);
            }
        }
        struct coord_epoch ep;
        int rc = coord_client_epoch_wait(t->coord, t->step, flags, why, &ep, err, errlen);
        if (rc == MOE_ERR_IO) {
            const double silent = coord_client_silence(t->coord);
            if (silent > (double)t->cfg->coordinator_wait_s) {
                char e2[1200];
                snprintf(e2, sizeof e2, "the coordinator at %s has not answered for %.0f s "
                         "(--coordinator-wait-s %lld); giving up: %s", t->cfg->coordinator,
                         silent, (long long)t->cfg->coordinator_wait_s, err);
                snprintf(err, errlen, "%s", e2);
                return MOE_ERR_IO;
            }
            moe_warn("%s; asking again", err);
            continue;
        }
        if (rc)
            return rc;
        flags &= ~(uint32_t)MOE_FLAG_TROUBLE;
        if (ep.flags & MOE_FLAG_FINISHED) {
            snprintf(err, errlen, "the coordinator says training is over (every step is done)");
            return MOE_ERR_STATE;
        }
        if (ep.flags & MOE_FLAG_NOT_READY) {
            sleep_ms(20);
            continue;
        }
        coord_epoch_free(&t->ep);
        t->ep = ep;
        return 0;
    }
}

static struct ckpt_state ckpt_state_of(struct trainer *t)
{
    struct ckpt_state cs = {t->model, NULL, t->vocab, {0}, {0}, t->dense_adam, t->step, t->B, t->cfg};
    memcpy(cs.dense_opt, t->dense_opt, sizeof cs.dense_opt);
    memcpy(cs.dense_opt_n, t->dense_opt_n, sizeof cs.dense_opt_n);
    return cs;
}

/* This worker's files of the checkpoint of t->step, reported to the
 * coordinator (which commits the checkpoint once every member's are in). */
static int save_cluster_checkpoint(struct trainer *t, char *err, size_t errlen)
{
    char folder[TRAINER_PATH_MAX + 32], file[64];
    int rc = moe_manifest_make_folder(t->cfg->checkpoint_dir, t->step, folder, sizeof folder, err,
                                      errlen);
    if (rc)
        return rc;
    struct ckpt_state cs = ckpt_state_of(t);
    rc = checkpoint_save_worker(folder, &cs, t->rank, file, sizeof file, err, errlen);
    if (!rc)
        rc = coord_client_checkpoint_done(t->coord, t->step, file, err, errlen);
    if (!rc)
        moe_debug("checkpoint of step %" PRId64 ": %s/%s", t->step, folder, file);
    return rc;
}

static int load_cluster_checkpoint(struct trainer *t, char *err, size_t errlen)
{
    struct ckpt_state cs = ckpt_state_of(t);
    int rc = checkpoint_load_worker(t->ep.checkpoint, &cs, t->rank, err, errlen);
    if (!rc)
        moe_info("loaded checkpoint %s (step %" PRId64 ")", t->ep.checkpoint, t->ep.step);
    return rc;
}

/* The expert backend of t->cl (the servers of this epoch). */
static int make_remote(struct trainer *t, char *err, size_t errlen)
{
    const struct trainer_config *c = t->cfg;
    Moe__DType dt = strcmp(c->wire_dtype, "bf16") == 0 ? MOE__DTYPE__DTYPE_BF16
                                                       : MOE__DTYPE__DTYPE_F32;
    t->remote_be = expert_remote_new(t->zctx, &t->cl, t->rank, c->d_model, c->timeout_ms, dt,
                                     (size_t)c->max_message_mb << 20, err, errlen);
    if (!t->remote_be)
        return MOE_ERR_IO;
    expert_remote_set_row0(t->remote_be, (int64_t)t->b0 * c->unroll);
    expert_remote_set_epoch(t->remote_be, t->ep.epoch);
    expert_remote_backend(&t->backend, t->remote_be);
    return 0;
}

/* Switches to t->ep: its placement (a new expert backend), and with
 * `reload` the state of its checkpoint (a rollback). */
static int apply_epoch(struct trainer *t, bool reload, char *err, size_t errlen)
{
    const struct trainer_config *c = t->cfg;
    expert_remote_destroy(&t->remote_be);
    moe_cluster_free(&t->cl);
    int rc = moe_cluster_parse(&t->cl, t->ep.servers, c->workers, t->ep.placement, c->n_experts,
                               err, errlen);
    if (rc)
        return rc;
    if ((rc = make_remote(t, err, errlen)))
        return rc;
    model_set_backend(t->model, &t->backend);
    coord_client_set_epoch(t->coord, t->ep.epoch);
    if ((reload || !t->ar) && t->world > 1) {
        /* after a failure the ring is rebuilt: a worker may have restarted */
        moe_allreduce_destroy(&t->ar);
        t->ar = moe_allreduce_new(t->zctx, t->rank, t->world, (const char *const *)t->cl.workers,
                                  (int)c->timeout_ms, err, errlen);
        if (!t->ar)
            return MOE_ERR_IO;
    }
    if (reload || t->ep.step != t->step) {
        if (!t->ep.checkpoint[0]) {
            snprintf(err, errlen, "epoch %u starts afresh, but this worker has trained (step %" PRId64
                     "); restart it", t->ep.epoch, t->step);
            return MOE_ERR_STATE;
        }
        if ((rc = load_cluster_checkpoint(t, err, errlen)))
            return rc;
        t->step = t->ep.step;
    }
    return 0;
}

/* A byte count computed in double, as an unsigned integer (saturating). */
static uint64_t bytes_of(double b) { return b >= 1.8e19 ? UINT64_MAX : (uint64_t)b; }

/* A step failed (a peer late or gone): wait for the coordinator's next
 * epoch, roll back to its checkpoint and go on. */
static int recover(struct trainer *t, const char *why, char *err, size_t errlen)
{
    const double t0 = now_sec();
    const int64_t at = t->step;
    moe_warn("step %" PRId64 " failed: %s; waiting for the cluster to recover", at + 1, why);
    int rc;
    for (;;) {
        if ((rc = wait_epoch(t, MOE_FLAG_TROUBLE, why, err, errlen)))
            return rc;
        rc = apply_epoch(t, true, err, errlen);
        if (rc != MOE_ERR_IO)
            break;
        /* a peer did not join the new ring in time: report it, try again */
        moe_warn("epoch %u: %s; asking for another", t->ep.epoch, err);
    }
    if (rc)
        return rc;
    t->recoveries++;
    t->step_flags = 0;
    moe_warn("recovered in %.2f s: epoch %u, rolled back from step %" PRId64 " to %" PRId64,
             now_sec() - t0, t->ep.epoch, at, t->step);
    return 0;
}

static int setup(struct trainer *t, char *err, size_t errlen)
{
    const struct trainer_config *c = t->cfg;
    char ckpt[TRAINER_PATH_MAX + 64] = "";
    if (strcmp(c->experts, "local") != 0 && strcmp(c->experts, "remote") != 0) {
        snprintf(err, errlen, "--experts: expected local or remote, got \"%s\"", c->experts);
        return MOE_ERR_CONFIG;
    }
    if (strcmp(c->wire_dtype, "f32") != 0 && strcmp(c->wire_dtype, "bf16") != 0) {
        snprintf(err, errlen, "--wire-dtype: expected f32 or bf16, got \"%s\"", c->wire_dtype);
        return MOE_ERR_CONFIG;
    }
    t->remote = strcmp(c->experts, "remote") == 0;
    t->rank = c->rank;
    t->world = 1;
    /* The experts this process holds, checked against the machine's memory
     * before anything is read or allocated (they dominate large models). */
    const int held = t->remote && c->coordinator[0] ? 0 : c->n_experts;
    const double expert_bytes =
        expert_shard_bytes(c->d_model, c->d_hidden, held, true) +
        (held ? 4.0 * c->batch * c->unroll * c->k * (c->d_model + 2.0 * c->d_hidden) : 0);
    if (c->memory_check) {
        char what[160];
        snprintf(what, sizeof what, "%d experts of %d -> %d -> %d (with their optimizer state)",
                 held, c->d_model, c->d_hidden, c->d_model);
        int rc = held ? moe_mem_check(bytes_of(expert_bytes), what, err, errlen) : 0;
        if (rc)
            return rc;
    }
    if (t->remote) {
        t->zctx = zmq_ctx_new();
        if (!t->zctx) {
            snprintf(err, errlen, "cannot create a ZeroMQ context");
            return MOE_ERR_IO;
        }
        /* With a coordinator, the placement and the state to start from
         * come with its epoch. */
        const char *servers = c->servers, *placement = c->placement;
        if (c->coordinator[0]) {
            t->coord = coord_client_new(t->zctx, c->coordinator, 1, t->rank, NULL, c->n_experts,
                                        c->timeout_ms, err, errlen);
            if (!t->coord)
                return MOE_ERR_IO;
            char contract[8192];
            if (trainer_contract(c, TRAINER_ROLE_WORKER, contract, sizeof contract) < 0) {
                snprintf(err, errlen, "the training configuration is too long to send");
                return MOE_ERR_CONFIG;
            }
            int rc = coord_client_register(t->coord, "", contract, c->coordinator_wait_s, err,
                                           errlen);
            if (rc)
                return rc;
            /* the servers are known once the epoch comes (end of setup) */
            servers = "inproc://no-server-before-the-epoch";
            placement = "";
            t->elastic = c->checkpoint_dir[0] != 0;
        }
        int rc = moe_cluster_parse(&t->cl, servers, c->workers, placement, c->n_experts, err,
                                   errlen);
        if (rc)
            return rc;
        t->world = t->cl.n_workers;
        if (c->resume[0]) {
            snprintf(err, errlen, "--resume: with --experts remote the coordinator resumes the "
                                  "cluster from the newest checkpoint in checkpoint_dir");
            return MOE_ERR_CONFIG;
        }
    } else if (c->workers[0]) {
        snprintf(err, errlen, "--workers: data-parallel workers need --experts remote");
        return MOE_ERR_CONFIG;
    }
    if (t->rank >= t->world) {
        snprintf(err, errlen, "--rank %d: only %d worker(s) are listed in --workers", t->rank,
                 t->world);
        return MOE_ERR_CONFIG;
    }
    if (c->batch % t->world != 0) {
        snprintf(err, errlen, "--batch %d cannot be split evenly over %d workers", c->batch,
                 t->world);
        return MOE_ERR_CONFIG;
    }
    t->B = c->batch / t->world;
    t->b0 = t->rank * t->B;
    if (strcmp(c->dense_optimizer, "adam") != 0 && strcmp(c->dense_optimizer, "factored") != 0) {
        snprintf(err, errlen, "--dense-optimizer: expected adam or factored, got \"%s\"",
                 c->dense_optimizer);
        return MOE_ERR_CONFIG;
    }
    if (c->k > c->n_experts) {
        snprintf(err, errlen, "--k %d is larger than --n-experts %d", c->k, c->n_experts);
        return MOE_ERR_CONFIG;
    }
    t->dense_adam = strcmp(c->dense_optimizer, "adam") == 0;

    /* Vocabulary: from the checkpoint when resuming, else built. */
    if (c->resume[0]) {
        int rc = checkpoint_resolve(c->resume, ckpt, sizeof ckpt, err, errlen);
        if (rc)
            return rc;
        char vp[TRAINER_PATH_MAX + 80];
        snprintf(vp, sizeof vp, "%s/vocab.txt", ckpt);
        t->vocab = vocab_load(vp, err, errlen);
    } else {
        t->vocab = vocab_build(c->train, c->vocab_max, err, errlen);
    }
    if (!t->vocab)
        return MOE_ERR_FORMAT;
    int rc = corpus_load(&t->train, c->train, t->vocab, err, errlen);
    if (rc)
        return rc;
    if ((rc = batcher_init(&t->tb, &t->train, c->batch, c->unroll, err, errlen))) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s: %s", c->train, err);
        snprintf(err, errlen, "%s", msg);
        return rc;
    }
    if (c->valid[0]) {
        if ((rc = corpus_load(&t->valid, c->valid, t->vocab, err, errlen)))
            return rc;
        if ((rc = batcher_init(&t->vb, &t->valid, c->eval_batch, c->unroll, err, errlen))) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s: %s", c->valid, err);
            snprintf(err, errlen, "%s", msg);
            return rc;
        }
    }
    if ((rc = unigram_init(t)))
        return rc;
    moe_info("vocabulary %d words; train %zu tokens (%zu <unk>)%s", vocab_size(t->vocab),
             t->train.n, t->train.n_unk, c->valid[0] ? "" : "; no validation corpus");

    /* The experts in this process: all of them in-process; with expert
     * servers and no coordinator, a mirror that checkpoints fetch into;
     * with a coordinator none (servers write their own shards). */
    struct moe_fadam_opts fo = {c->expert_beta2, c->expert_decay_pow, c->expert_eps, 1e-30,
                                c->expert_clip, c->expert_relative_step, 1e-3};
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(held ? held : 1));
    if (!ids)
        return MOE_ERR_NOMEM;
    for (int e = 0; e < held; e++)
        ids[e] = e;
    t->shard = expert_shard_new(c->d_model, c->d_hidden, held, ids, (uint64_t)c->seed, &fo);
    free(ids);
    if (!t->shard) {
        snprintf(err, errlen, "cannot allocate %d experts of %dx%d", c->n_experts, c->d_model,
                 c->d_hidden);
        return MOE_ERR_NOMEM;
    }
    if (t->remote) {
        if (!t->coord && (rc = make_remote(t, err, errlen)))
            return rc;
        if (t->coord && !(t->gstats = moe_alloc_floats(3 * (size_t)c->n_experts)))
            return MOE_ERR_NOMEM;
        if (t->world > 1 && !t->coord) {
            t->ar = moe_allreduce_new(t->zctx, t->rank, t->world, (const char *const *)t->cl.workers,
                                      (int)c->timeout_ms, err, errlen);
            if (!t->ar)
                return MOE_ERR_IO;
        }
    } else {
        expert_local_backend(&t->backend, t->shard);
    }
    t->stats = moe_alloc_floats(3 * (size_t)c->n_experts + 1);
    t->rows_routed = calloc((size_t)c->n_experts, sizeof(double));
    if (!t->stats || !t->rows_routed)
        return MOE_ERR_NOMEM;
    struct model_config mc = {vocab_size(t->vocab), c->d_model, c->d_hidden, c->n_experts, c->k,
                              c->residual, c->moe_sigmoid, c->dropout, c->w_importance,
                              c->w_load, (uint64_t)c->seed,
                              t->B > c->eval_batch ? t->B : c->eval_batch, c->unroll};
    if (c->memory_check) {
        /* parameters, gradients, activations, Adam's two moments, and the
         * all-reduce buffer of several workers */
        const double dense = model_dense_params(&mc);
        const double need = model_bytes(&mc) + 4.0 * dense * (t->dense_adam ? 2 : 1) +
                            (t->world > 1 ? 4.0 * dense : 0);
        char what[200];
        snprintf(what, sizeof what, "the dense model (V=%d, D=%d, %.0f parameters, batch %d x %d)",
                 mc.V, mc.D, dense, mc.B_max, mc.T_max);
        if ((rc = moe_mem_check(bytes_of(need), what, err, errlen)))
            return rc;
    }
    t->model = model_new(&mc, &t->backend);
    if (!t->model) {
        snprintf(err, errlen, "cannot allocate the model (V=%d D=%d)", mc.V, mc.D);
        return MOE_ERR_NOMEM;
    }
    for (int p = 0; p < MP_COUNT; p++)
        t->flat_n += model_param(t->model, (enum model_param)p)->numel;
    if (t->world > 1 && !(t->flat = moe_alloc_floats(t->flat_n)))
        return MOE_ERR_NOMEM;
    for (int p = 0; p < MP_COUNT; p++) {
        moe_tensor *w = model_param(t->model, (enum model_param)p);
        t->dense_opt_n[p] = t->dense_adam ? moe_adam_state_size(w->numel)
                                          : moe_fadam_state_size((size_t)w->shape[0],
                                                                 w->ndim == 2 ? (size_t)w->shape[1] : 0);
        if (!(t->dense_opt[p] = moe_alloc_floats(t->dense_opt_n[p])))
            return MOE_ERR_NOMEM;
    }
    size_t nb = (size_t)mc.B_max * (size_t)c->unroll;
    t->tok = malloc(sizeof(int32_t) * nb);
    t->tgt = malloc(sizeof(int32_t) * nb);
    if (!t->tok || !t->tgt)
        return MOE_ERR_NOMEM;
    if (ckpt[0]) {
        struct ckpt_state cs = {t->model, t->shard, t->vocab, {0}, {0}, t->dense_adam, 0, t->B, c};
        memcpy(cs.dense_opt, t->dense_opt, sizeof cs.dense_opt);
        memcpy(cs.dense_opt_n, t->dense_opt_n, sizeof cs.dense_opt_n);
        if ((rc = checkpoint_load(ckpt, &cs, err, errlen)))
            return rc;
        t->step = cs.step;
        moe_info("resumed from %s at step %" PRId64, ckpt, t->step);
    }
    if (t->coord) {
        /* Only now, ready to train, wait for the epoch: the coordinator
         * hands it to every worker at once, so the ring forms at once. */
        if ((rc = wait_epoch(t, 0, NULL, err, errlen)) ||
            (rc = apply_epoch(t, t->ep.checkpoint[0] != 0, err, errlen)))
            return rc;
        moe_info("epoch %u from the coordinator: servers %s, step %" PRId64, t->ep.epoch,
                 t->ep.servers, t->step);
        if ((t->ep.flags & MOE_FLAG_INITIAL_CHECKPOINT) && c->checkpoint_dir[0] &&
            (rc = save_cluster_checkpoint(t, err, errlen)))
            return rc;
    }
    return 0;
}

static void teardown(struct trainer *t)
{
    model_destroy(&t->model);
    moe_allreduce_destroy(&t->ar);
    coord_client_destroy(&t->coord);
    coord_epoch_free(&t->ep);
    moe_free_floats(&t->gstats);
    free(t->rows_routed);
    expert_remote_destroy(&t->remote_be);
    if (t->zctx)
        zmq_ctx_term(t->zctx);
    moe_cluster_free(&t->cl);
    moe_free_floats(&t->flat);
    moe_free_floats(&t->stats);
    expert_shard_destroy(&t->shard);
    for (int p = 0; p < MP_COUNT; p++)
        moe_free_floats(&t->dense_opt[p]);
    free(t->tok);
    free(t->tgt);
    corpus_free(&t->train);
    corpus_free(&t->valid);
    free(t->uni_logp);
    vocab_destroy(&t->vocab);
}

/* Whether a failed step or checkpoint can be recovered by a rollback: not
 * when the cluster stopped or failed for good. */
static bool recoverable(const struct trainer *t, int rc)
{
    return t->elastic && rc != MOE_ERR_STOPPED && rc != MOE_ERR_FAILED;
}

int trainer_run(const struct trainer_config *c, const volatile sig_atomic_t *signals)
{
    struct trainer t;
    memset(&t, 0, sizeof t);
    t.cfg = c;
    t.signals = signals;
    char err[1024] = "";
    enum moe_log_level lvl;
    if (moe_log_parse_level(c->log_level, &lvl)) {
        fprintf(stderr, "moe-worker: --log-level: expected debug, info, warn or error\n");
        return 2;
    }
    moe_log_set_level(lvl);
    moe_blas_set_threads(c->threads);
    int rc = setup(&t, err, sizeof err);
    if (rc) {
        fprintf(stderr, "moe-worker: error: %s\n", err);
        teardown(&t);
        return 1;
    }
    const int64_t tokens_per_step = (int64_t)c->batch * c->unroll;
    double t0 = now_sec(), tw = t0, train_time = 0;
    int64_t start_step = t.step;
    t.start_step = start_step;
    bool stopped = false; /* by the operator: a signal here, or the coordinator said so */
    char stop_note[300] = "";
    while (t.step < c->steps) {
        double ts = now_sec();
        if ((rc = train_step(&t, err, sizeof err))) {
            if (!recoverable(&t, rc))
                break;
            char why[1024];
            snprintf(why, sizeof why, "%s", err);
            if ((rc = recover(&t, why, err, sizeof err)))
                break;
            continue;
        }
        if (t.coord && (t.step_flags & MOE_FLAG_CHECKPOINT) &&
            (rc = save_cluster_checkpoint(&t, err, sizeof err))) {
            if (!recoverable(&t, rc))
                break;
            char why[1024];
            snprintf(why, sizeof why, "worker %d cannot write its checkpoint of step %" PRId64
                     ": %s", t.rank, t.step, err);
            if ((rc = recover(&t, why, err, sizeof err)))
                break;
            continue;
        }
        if (t.coord && (t.step_flags & MOE_FLAG_STOP)) {
            /* The cluster stops after this step's checkpoint: wait until it
             * is committed (the coordinator then says stopped); if it fails
             * instead, the cluster rolls back and this worker goes on. */
            rc = wait_epoch(&t, 0, NULL, err, sizeof err);
            if (rc == MOE_ERR_STOPPED) {
                rc = 0;
                stopped = true;
                snprintf(stop_note, sizeof stop_note, "%s", err);
                break;
            }
            if (rc || (rc = apply_epoch(&t, true, err, sizeof err)))
                break;
            moe_warn("the checkpoint before the stop failed: epoch %u rolls back to step %" PRId64,
                     t.ep.epoch, t.step);
            t.step_flags = 0;
            continue;
        }
        if (t.coord && (t.step_flags & MOE_FLAG_RECONFIGURE)) {
            /* a server joins or leaves: the new placement starts from the
             * checkpoint just written, which is this worker's state */
            const double tr = now_sec();
            if ((rc = wait_epoch(&t, 0, NULL, err, sizeof err)) ||
                (rc = apply_epoch(&t, false, err, sizeof err)))
                break;
            moe_info("epoch %u: new placement after step %" PRId64 " (%.2f s)", t.ep.epoch, t.step,
                     now_sec() - tr);
        }
        t.step_flags = 0;
        const double dt = now_sec() - ts;
        train_time += dt;
        /* this worker's speed, sent with the next step's statistics */
        t.last_tps = dt > 0 ? (double)t.B * c->unroll / dt : 0;
        if (t.step % c->log_every == 0 || t.step == c->steps) {
            double now = now_sec();
            double tps = (double)t.win_tokens / (now - tw);
            double loss = t.win_loss / (double)t.win_steps;
            t.last_train_ppl = exp(loss);
            char eta[32];
            format_eta(eta, sizeof eta, (double)(c->steps - t.step) * (now - t0) /
                                            (double)(t.step - start_step));
            printf("step %6" PRId64 "/%" PRId64 " | %7.0f tok/s | loss %.4f | ppl %8.2f | "
                   "balance %.4f | lr %.2e | ETA %s\n",
                   t.step, c->steps, tps, loss, exp(loss), t.win_bal / (double)t.win_steps,
                   moe_lr_at(&(struct moe_lr_schedule){c->lr, c->warmup}, t.step), eta);
            fflush(stdout);
            t.win_loss = t.win_bal = 0;
            t.win_steps = t.win_tokens = 0;
            tw = now_sec();
        }
        if (!t.coord && signals && *signals) {
            /* no cluster to stop: this process checkpoints (below) and ends */
            stopped = true;
            snprintf(stop_note, sizeof stop_note, "stopped by a signal");
            break;
        }
        if (c->valid[0] && c->valid_every > 0 && t.step % c->valid_every == 0 && t.step < c->steps &&
            t.rank == 0) {
            double vp, up;
            if ((rc = evaluate(&t, &vp, &up, err, sizeof err)))
                break;
            printf("step %6" PRId64 " | valid ppl %.2f\n", t.step, vp);
            fflush(stdout);
        }
        if (!t.coord && c->checkpoint_dir[0] && c->checkpoint_every > 0 &&
            t.step % c->checkpoint_every == 0 && (rc = save_checkpoint(&t, err, sizeof err)))
            break;
    }
    if (rc == MOE_ERR_STOPPED) {
        /* the coordinator stopped the cluster while this worker waited */
        rc = 0;
        stopped = true;
        snprintf(stop_note, sizeof stop_note, "%s", err);
    }
    if (stopped) {
        if (!t.coord && c->checkpoint_dir[0] &&
            (c->checkpoint_every == 0 || t.step % c->checkpoint_every))
            rc = save_checkpoint(&t, err, sizeof err);
        if (!rc)
            printf("stopped at step %" PRId64 " of %" PRId64 " (%s); %s\n", t.step, c->steps,
                   stop_note, c->checkpoint_dir[0] ? "start it again to resume from its checkpoint"
                                                   : "no checkpoint_dir: nothing was saved");
        fflush(stdout);
    }
    double valid_ppl = NAN, uni = NAN;
    if (!rc && !stopped && c->valid[0] && t.rank == 0) {
        rc = evaluate(&t, &valid_ppl, &uni, err, sizeof err);
        if (!rc)
            printf("validation perplexity %.2f after %" PRId64 " steps (unigram baseline %.2f)\n",
                   valid_ppl, t.step, uni);
    }
    if (!rc && !stopped && !t.coord && c->checkpoint_dir[0] &&
        (c->checkpoint_every == 0 || t.step % c->checkpoint_every))
        rc = save_checkpoint(&t, err, sizeof err);
    double tps = train_time > 0 ? (double)((t.step - start_step) * tokens_per_step) / train_time : 0;
    if (!rc && c->report[0])
        rc = write_report(&t, tps, valid_ppl, uni, err, sizeof err);
    if (rc)
        fprintf(stderr, "moe-worker: error: %s\n", err);
    teardown(&t);
    return rc ? 1 : 0;
}
