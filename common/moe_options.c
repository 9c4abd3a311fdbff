/* The option table and the cluster's configuration contract (see
 * moe_options.h). */
#include "moe_options.h"

#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "expert_ffn.h"
#include "moe_checksum.h"
#include "moe_err.h"
#include "moe_file.h"
#include "moe_kernels.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_sec.h"
#include "moe_wire.h"

#define OPT(key, sec, type, field, lo, hi, def, help, roles) \
    {key, sec, type, offsetof(struct moe_options, field), sizeof(((struct moe_options *)0)->field), lo, hi, def, help, roles}

const struct moe_opt moe_options_table[] = {
    OPT("train", "data", MOE_OPT_STRING, train, 1, 0, "data/wikitext-2/wiki.train.tokens", "training corpus (one sentence per line)", MOE_FOR_WORKER | MOE_FOR_COORDINATOR),
    OPT("valid", "data", MOE_OPT_STRING, valid, 1, 0, "data/wikitext-2/wiki.valid.tokens", "validation corpus (empty: none)", MOE_FOR_WORKER),
    OPT("vocab_max", "data", MOE_OPT_INT, vocab_max, 0, 10000000, "0", "vocabulary cap including <unk> and <eos> (0: no cap)", MOE_FOR_WORKER),
    OPT("d_model", "model", MOE_OPT_INT, d_model, 1, 65536, "128", "model width D (embedding, LSTMs, expert input/output)", MOE_FOR_ALL),
    OPT("d_hidden", "model", MOE_OPT_INT, d_hidden, 1, 1 << 20, "256", "expert hidden width H", MOE_FOR_ALL),
    OPT("n_experts", "model", MOE_OPT_INT, n_experts, 1, 1 << 20, "16", "number of experts E", MOE_FOR_ALL),
    OPT("k", "model", MOE_OPT_INT, k, 1, 1 << 20, "4", "experts per row (top-k)", MOE_FOR_ALL),
    OPT("moe", "model", MOE_OPT_STRING, moe, 1, 0, "flat", "MoE layer: flat (one gate over n_experts) or hierarchical (a primary gate over groups, a secondary gate in each group; n_experts = groups x experts_per_group)", MOE_FOR_ALL),
    OPT("groups", "model", MOE_OPT_INT, groups, 1, 1 << 20, "4", "hierarchical MoE: groups A of the primary gate", MOE_FOR_ALL),
    OPT("experts_per_group", "model", MOE_OPT_INT, experts_per_group, 1, 1 << 20, "4", "hierarchical MoE: experts B in each group (k is the secondary top-k, k <= B)", MOE_FOR_ALL),
    OPT("k_primary", "model", MOE_OPT_INT, k_primary, 1, 1 << 20, "2", "hierarchical MoE: groups per row K1 (primary top-k, K1 <= groups)", MOE_FOR_ALL),
    OPT("residual", "model", MOE_OPT_BOOL, residual, 1, 0, "true", "residual add around every layer (paper, App. C)", MOE_FOR_WORKER),
    OPT("moe_sigmoid", "model", MOE_OPT_BOOL, moe_sigmoid, 1, 0, "false", "sigmoid on the MoE output before dropout", MOE_FOR_WORKER),
    OPT("dropout", "model", MOE_OPT_DOUBLE, dropout, 0, 0.95, "0.1", "dropout probability on layer outputs", MOE_FOR_WORKER),
    OPT("w_importance", "model", MOE_OPT_DOUBLE, w_importance, 0, 1e6, "0.1", "weight of the importance loss", MOE_FOR_WORKER),
    OPT("w_load", "model", MOE_OPT_DOUBLE, w_load, 0, 1e6, "0.1", "weight of the load loss", MOE_FOR_WORKER),
    OPT("steps", "train", MOE_OPT_I64, steps, 0, 1e15, "2000", "training steps (total, counting resumed ones)", MOE_FOR_WORKER | MOE_FOR_COORDINATOR),
    OPT("seed", "train", MOE_OPT_I64, seed, 0, 9.2e18, "1", "seed of every random number (init, noise, dropout)", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("batch", "train", MOE_OPT_INT, batch, 1, 1 << 20, "32", "sequences per batch B", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("unroll", "train", MOE_OPT_INT, unroll, 1, 1 << 20, "35", "time steps per unroll T (truncated BPTT)", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("eval_batch", "train", MOE_OPT_INT, eval_batch, 1, 1 << 20, "10", "sequences per validation batch", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("threads", "train", MOE_OPT_INT, threads, 1, 256, "2", "OpenBLAS threads (part of the determinism contract)", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("warmup", "train", MOE_OPT_I64, warmup, 0, 1e15, "100", "steps of linear learning-rate warm-up, then 1/sqrt(step)", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("lr", "train", MOE_OPT_DOUBLE, lr, 0, 10, "0.005", "peak learning rate", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("beta1", "train", MOE_OPT_DOUBLE, beta1, 0, 0.999999, "0.9", "Adam beta1 (dense parameters)", MOE_FOR_WORKER),
    OPT("beta2", "train", MOE_OPT_DOUBLE, beta2, 0, 0.999999, "0.999", "Adam beta2 (dense parameters)", MOE_FOR_WORKER),
    OPT("adam_eps", "train", MOE_OPT_DOUBLE, adam_eps, 0, 1, "1e-8", "Adam epsilon", MOE_FOR_WORKER),
    OPT("dense_optimizer", "train", MOE_OPT_STRING, dense_optimizer, 1, 0, "adam", "adam or factored (factored Adam for dense matrices too)", MOE_FOR_WORKER),
    OPT("expert_beta2", "experts", MOE_OPT_DOUBLE, expert_beta2, 0, 0.999999, "0.999", "factored Adam decay of second moments", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("expert_eps", "experts", MOE_OPT_DOUBLE, expert_eps, 0, 1, "1e-8", "factored Adam epsilon added to sqrt(V)", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("expert_decay_pow", "experts", MOE_OPT_DOUBLE, expert_decay_pow, 0, 10, "0", "Adafactor decay: beta2_t = 1 - t^-pow (0.8); 0 = fixed beta2", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("expert_clip", "experts", MOE_OPT_DOUBLE, expert_clip, 0, 1e6, "0", "Adafactor update clipping threshold (0 = off)", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("expert_relative_step", "experts", MOE_OPT_BOOL, expert_relative_step, 1, 0, "false", "Adafactor relative step size instead of the lr schedule", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("experts", "cluster", MOE_OPT_STRING, experts, 1, 0, "local", "where experts run: local (this process) or remote (expert servers)", MOE_FOR_WORKER),
    OPT("servers", "cluster", MOE_OPT_STRING, servers, 1, 0, "", "expert-server endpoints, comma-separated (entry j is server j)", MOE_FOR_ALL),
    OPT("placement", "cluster", MOE_OPT_STRING, placement, 1, 0, "", "server of each expert, comma-separated (empty: contiguous blocks)", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("workers", "cluster", MOE_OPT_STRING, workers, 1, 0, "", "all-reduce endpoints of the workers by rank, comma-separated (empty: one worker)", MOE_FOR_ALL),
    OPT("rank", "cluster", MOE_OPT_INT, rank, 0, 65535, "0", "this worker's rank", MOE_FOR_WORKER),
    OPT("server_index", "cluster", MOE_OPT_INT, server_index, 0, 65535, "0", "moe-server: which entry of `servers` this daemon is", MOE_FOR_SERVER),
    OPT("bind", "cluster", MOE_OPT_STRING, bind, 1, 0, "", "moe-server: address to bind (default: its entry of `servers`)", MOE_FOR_SERVER),
    OPT("advertise", "cluster", MOE_OPT_STRING, advertise, 1, 0, "", "moe-server: address workers reach it at, given to the coordinator (default: --bind; needed when binding tcp://*:PORT)", MOE_FOR_SERVER),
    OPT("timeout_ms", "cluster", MOE_OPT_I64, timeout_ms, 1, 86400000, "30000", "a peer that does not answer within this many ms is an error", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("wire_dtype", "cluster", MOE_OPT_STRING, wire_dtype, 1, 0, "f32", "tensor encoding on the wire: f32 or bf16", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("max_message_mb", "cluster", MOE_OPT_INT, max_message_mb, 0, 65536, "0", "cap on any message received, in MiB (0: only the limits derived from the model)", MOE_FOR_ALL),
    OPT("shard_out", "cluster", MOE_OPT_STRING, shard_out, 1, 0, "", "moe-server: write its shard (safetensors) here when it stops", MOE_FOR_SERVER),
    OPT("coordinator", "cluster", MOE_OPT_STRING, coordinator, 1, 0, "", "coordinator endpoint (empty: no coordinator)", MOE_FOR_ALL),
    OPT("http", "cluster", MOE_OPT_STRING, http, 1, 0, "127.0.0.1:8780", "moe-coordinator: HTTP monitoring address HOST:PORT", MOE_FOR_COORDINATOR),
    OPT("http_token", "cluster", MOE_OPT_STRING, http_token, 1, 0, "", "moe-coordinator: bearer token for mutating endpoints (prefer http_token_file or MOE_HTTP_TOKEN: a command line is visible to every user)", MOE_FOR_COORDINATOR),
    OPT("http_token_file", "cluster", MOE_OPT_STRING, http_token_file, 1, 0, "", "moe-coordinator: read the bearer token from this file's first line", MOE_FOR_COORDINATOR),
    OPT("keys", "cluster", MOE_OPT_STRING, keys, 1, 0, "", "directory of the cluster's CURVE keys (moectl keygen DIR); needed for tcp:// unless --insecure", MOE_FOR_ALL),
    OPT("insecure", "cluster", MOE_OPT_BOOL, insecure, 1, 0, "false", "plain TCP without CURVE (anyone who reaches a port can join, read or stall the cluster)", MOE_FOR_ALL),
    OPT("max_connections", "cluster", MOE_OPT_INT, max_connections, 1, 65536, "256", "connections a listening socket accepts; more are shut at once", MOE_FOR_ALL),
    OPT("min_servers", "cluster", MOE_OPT_INT, min_servers, 0, 65535, "0", "moe-coordinator: expert servers to wait for before training starts (0: as many as `servers` lists, at least 1)", MOE_FOR_COORDINATOR),
    OPT("heartbeat_timeout_ms", "cluster", MOE_OPT_I64, heartbeat_timeout_ms, 100, 86400000, "3000", "moe-coordinator: a server silent this long is dead (its experts move, the cluster rolls back)", MOE_FOR_COORDINATOR),
    OPT("keep_checkpoints", "output", MOE_OPT_INT, keep_checkpoints, 1, 1000000, "3", "moe-coordinator: committed cluster checkpoints kept (older ones are pruned)", MOE_FOR_COORDINATOR),
    OPT("checkpoint_dir", "output", MOE_OPT_STRING, checkpoint_dir, 1, 0, "", "folder for checkpoints (empty: none)", MOE_FOR_ALL),
    OPT("checkpoint_every", "output", MOE_OPT_I64, checkpoint_every, 0, 1e15, "0", "checkpoint every N steps (0: only at the end)", MOE_FOR_WORKER | MOE_FOR_COORDINATOR),
    OPT("resume", "output", MOE_OPT_STRING, resume, 1, 0, "", "checkpoint folder (or its parent with `latest`) to resume from", MOE_FOR_WORKER),
    OPT("final_model", "output", MOE_OPT_STRING, final_model, 1, 0, "moe-model", "without checkpoint_dir: the folder where worker 0 writes the final model (none: not saved)", MOE_FOR_WORKER),
    OPT("report", "output", MOE_OPT_STRING, report, 1, 0, "", "write a JSON report of the run to this file (worker r > 0: FILE.rank<r>)", MOE_FOR_WORKER),
    OPT("log_every", "output", MOE_OPT_I64, log_every, 1, 1e15, "50", "steps between progress lines", MOE_FOR_WORKER),
    OPT("valid_every", "output", MOE_OPT_I64, valid_every, 0, 1e15, "0", "validate every N steps (0: only at the end)", MOE_FOR_WORKER),
    OPT("valid_max_tokens", "output", MOE_OPT_I64, valid_max_tokens, 0, 1e15, "0", "validate on at most this many tokens (0: all)", MOE_FOR_WORKER),
    OPT("log_level", "output", MOE_OPT_STRING, log_level, 1, 0, "info", "debug, info, warn or error", MOE_FOR_ALL),
    OPT("metrics_max_experts", "operations", MOE_OPT_INT, metrics_max_experts, 0, 1000000000, "256", "moe-coordinator: with more experts than this, /metrics leaves out the per-expert series unless asked for (/metrics?experts=1); the summaries (CV, max/mean, top 10 by rows routed) stay", MOE_FOR_COORDINATOR),
    OPT("stall_heartbeats", "operations", MOE_OPT_INT, stall_heartbeats, 1, 1000000000, "40", "moe-coordinator: the dashboard warns (and /api/v1/cluster says stalled) when a server sent this many heartbeats (4 a second) since the last step completed", MOE_FOR_COORDINATOR),
    OPT("max_rollbacks", "operations", MOE_OPT_INT, max_rollbacks, 0, 1000000, "3", "moe-coordinator: rollbacks to the same checkpoint without progress before the cluster stops with the cause (0: never stop)", MOE_FOR_COORDINATOR),
    OPT("coordinator_wait_s", "operations", MOE_OPT_I64, coordinator_wait_s, 1, 1e9, "600", "servers and workers: seconds to keep waiting for a silent coordinator before giving up", MOE_FOR_WORKER | MOE_FOR_SERVER),
    OPT("memory_check", "operations", MOE_OPT_BOOL, memory_check, 1, 0, "true", "compare the memory a model or shard needs with MemAvailable before allocating it", MOE_FOR_WORKER | MOE_FOR_SERVER),
    /* compute: BLAS kernels, determinism, memory */
    OPT("blas_kernels", "compute", MOE_OPT_STRING, blas_kernels, 1, 0, "auto", "OpenBLAS kernel set: auto (the best set the CPU runs, when OpenBLAS chose an older one), keep (OpenBLAS's choice) or a set (Haswell, SkylakeX, Cooperlake, ...); an OPENBLAS_CORETYPE in the environment always wins", MOE_FOR_ALL),
    OPT("strict_determinism", "compute", MOE_OPT_BOOL, strict_determinism, 1, 0, "false", "refuse to resume a checkpoint or join a cluster computed with other BLAS kernels (default: warn)", MOE_FOR_ALL),
    OPT("recompute", "compute", MOE_OPT_STRING, recompute, 1, 0, "none", "recompute in the backward pass instead of keeping: none, experts (their hidden activations) or all (also the LSTM gates and cells); the same results", MOE_FOR_WORKER | MOE_FOR_SERVER),
    /* translation (issue 19) */
    OPT("task", "translate", MOE_OPT_STRING, task, 1, 0, "lm", "what moe-worker trains: lm (the language model of train/valid) or translate (the encoder-decoder of src_train -> tgt_train, paper 5.3: two MoE layers, the decoder's experts numbered after the encoder's; train, valid, vocab_max, unroll and eval_batch are the language model's)", MOE_FOR_ALL),
    OPT("src_train", "translate", MOE_OPT_STRING, src_train, 1, 0, "data/bible-en-es/train.en", "translate: source side of the training pairs (one sentence per line)", MOE_FOR_WORKER),
    OPT("tgt_train", "translate", MOE_OPT_STRING, tgt_train, 1, 0, "data/bible-en-es/train.es", "translate: target side of the training pairs (line i translates line i of src_train)", MOE_FOR_WORKER),
    OPT("src_valid", "translate", MOE_OPT_STRING, src_valid, 1, 0, "data/bible-en-es/valid.en", "translate: source side of the validation pairs (empty: none)", MOE_FOR_WORKER),
    OPT("tgt_valid", "translate", MOE_OPT_STRING, tgt_valid, 1, 0, "data/bible-en-es/valid.es", "translate: target side of the validation pairs", MOE_FOR_WORKER),
    OPT("src_vocab_max", "translate", MOE_OPT_INT, src_vocab_max, 0, 10000000, "8000", "translate: source vocabulary cap including <unk> and <eos> (0: no cap)", MOE_FOR_WORKER),
    OPT("tgt_vocab_max", "translate", MOE_OPT_INT, tgt_vocab_max, 0, 10000000, "8000", "translate: target vocabulary cap including <unk> and <eos> (0: no cap)", MOE_FOR_WORKER),
    OPT("max_len", "translate", MOE_OPT_INT, max_len, 1, 100000, "150", "translate: most tokens a line of the corpora may hold (a longer line is an error; bounds the rows of a message)", MOE_FOR_ALL),
};
_Static_assert(sizeof moe_options_table / sizeof moe_options_table[0] <= MOE_OPTIONS_MAX,
               "raise MOE_OPTIONS_MAX");
const size_t moe_options_count = sizeof moe_options_table / sizeof moe_options_table[0];

/* ------------------------------------------------------------------------ */
/* The configuration contract of a cluster */

/* Keys every member depends on, then those only workers do. */
static const char *const contract_server_keys[] = {
    "d_model", "d_hidden", "n_experts", "seed", "lr", "warmup", "expert_beta2", "expert_eps",
    "expert_decay_pow", "expert_clip", "expert_relative_step", "wire_dtype", "workers",
    "strict_determinism", "moe", "groups", "experts_per_group", "task", "max_len",
};
/* The last line of every contract: compared on its own terms
 * (moe_options_contract_kernels), never by moe_options_contract_diff. */
#define CONTRACT_KERNELS "blas_kernels"
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

/* The keys only workers depend on. */
static int contract_worker_keys_add(const struct moe_options *c, char *out, size_t cap,
                                    size_t *len)
{
    char v[4200];
    for (size_t i = 0; i < sizeof contract_worker_keys / sizeof *contract_worker_keys; i++) {
        moe_config_format_value(moe_options_table, moe_options_count, c,
                                contract_worker_keys[i], v, sizeof v);
        if (contract_add(out, cap, len, contract_worker_keys[i], v))
            return MOE_ERR_RANGE;
    }
    return 0;
}

/* The corpus by its bytes, not its path: machines mount data differently. */
static int contract_train_add(const struct moe_options *c, char *out, size_t cap, size_t *len)
{
    char v[32];
    uint64_t sum = 0, bytes = 0;
    if (moe_manifest_file_checksum(c->train, &sum, &bytes, NULL, 0) == 0)
        snprintf(v, sizeof v, "%016" PRIx64, sum);
    else
        snprintf(v, sizeof v, "?");
    return contract_add(out, cap, len, "train", v);
}

int moe_options_contract(const struct moe_options *c, int role, char *out, size_t cap)
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
            moe_config_format_value(moe_options_table, moe_options_count, c, key, v, sizeof v);
        if (contract_add(out, cap, &len, key, v))
            return MOE_ERR_RANGE;
    }
    /* a hierarchical MoE's servers run its secondary gates: their top-k
     * too (a worker's contract has k among its own keys) */
    if (role != MOE_ROLE_WORKER && moe_options_hierarchical(c)) {
        moe_config_format_value(moe_options_table, moe_options_count, c, "k", v, sizeof v);
        if (contract_add(out, cap, &len, "k", v))
            return MOE_ERR_RANGE;
    }
    if (role == MOE_ROLE_WORKER && (contract_worker_keys_add(c, out, cap, &len) ||
                                    contract_train_add(c, out, cap, &len)))
        return MOE_ERR_RANGE;
    if (contract_add(out, cap, &len, CONTRACT_KERNELS, moe_kernels_effective()))
        return MOE_ERR_RANGE;
    return (int)len;
}


uint64_t moe_options_contract_digest(const char *contract)
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

void moe_options_contract_get(const char *contract, const char *key, char *out, size_t cap)
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

int moe_options_contract_diff(const char *mine, const char *theirs, const char *skip_empty, char *why,
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
                if (strcmp(key, CONTRACT_KERNELS) == 0) {
                    /* compared by moe_options_contract_kernels */
                } else if (pass == 0) {
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


size_t moe_options_message_limit(const struct moe_options *c, int receiver)
{
    const double E = moe_options_experts_total(c), D = c->d_model;
    const double header = 4096.0 + 16.0 * E + MOE_WIRE_ERROR_TEXT_MAX;
    const double rows = moe_options_batch_rows(c) * moe_options_slots_per_row(c);
    double bytes;
    if (receiver == MOE_ROLE_COORDINATOR) {
        bytes = header + 65536.0 +
                4.0 * (3.0 * E + 1 + (moe_options_hierarchical(c) ? 2.0 * c->groups : 0));
    } else {
        bytes = header + 4.0 * rows * D;
        if (receiver == MOE_ROLE_WORKER) {
            const double fetch = header + 8.0 * E * (double)expert_ffn_param_count(c->d_model,
                                                                                  c->d_hidden);
            bytes = fetch > bytes ? fetch : bytes;
        }
    }
    const double cap = c->max_message_mb > 0 ? (double)c->max_message_mb * 1048576.0 : 1e300;
    bytes = bytes < cap ? bytes : cap;
    return bytes >= (double)SIZE_MAX / 2 ? SIZE_MAX / 2 : (size_t)bytes;
}

static int check_words(const char *value, const char *flag, const char *const *words, int n,
                       const char *expected, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++)
        if (strcmp(value, words[i]) == 0)
            return 0;
    return moe_err_fail(MOE_ERR_CONFIG, err, errlen, "--%s: expected %s, got \"%s\"", flag,
                        expected, value);
}

/* tcp:// endpoints of a comma list need keys or --insecure. */
static int check_endpoints(const struct moe_options *c, const char *list, const char *what,
                           char *err, size_t errlen)
{
    struct moe_sec s = {.keys = c->keys[0] != 0, .insecure = c->insecure};
    return moe_sec_check_list(&s, list, what, err, errlen);
}

static int check_worker(const struct moe_options *c, char *err, size_t errlen)
{
    static const char *const experts[] = {"local", "remote"}, *const opt[] = {"adam", "factored"};
    int rc = check_words(c->experts, "experts", experts, 2, "local or remote", err, errlen);
    if (!rc)
        rc = check_words(c->dense_optimizer, "dense-optimizer", opt, 2, "adam or factored", err,
                         errlen);
    if (rc)
        return rc;
    const bool remote = strcmp(c->experts, "remote") == 0;
    if (remote && c->resume[0])
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--resume: with --experts remote the coordinator resumes the cluster "
                            "from the newest checkpoint in checkpoint_dir");
    if (!remote && c->workers[0])
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--workers: data-parallel workers need --experts remote");
    if (!remote)
        return 0;
    if ((rc = check_endpoints(c, c->servers, "an expert server", err, errlen)))
        return rc;
    return check_endpoints(c, c->workers, "the workers' ring", err, errlen);
}

bool moe_options_hierarchical(const struct moe_options *c)
{
    return strcmp(c->moe, "hierarchical") == 0;
}

int moe_options_slots_per_row(const struct moe_options *c)
{
    return moe_options_hierarchical(c) ? c->k_primary * c->k : c->k;
}

int moe_options_group_size(const struct moe_options *c)
{
    return moe_options_hierarchical(c) ? c->experts_per_group : 1;
}

/* The table index of `key` (moe_options_count when there is none). */
static size_t key_index(const char *key)
{
    size_t i = 0;
    while (i < moe_options_count && strcmp(moe_options_table[i].key, key) != 0)
        i++;
    return i;
}

/* Whether the user gave `key` (on the command line or in --config), and
 * whether a flag did. */
static bool given(const struct moe_options *c, const char *key)
{
    const size_t i = key_index(key);
    return i < moe_options_count && c->given[i];
}

static bool flagged(const struct moe_options *c, const char *key)
{
    const size_t i = key_index(key);
    return i < moe_options_count && c->flagged[i];
}

/* A hierarchical layer has groups x experts_per_group experts. n_experts
 * is that product unless set, and a flag's shape overrides the file's
 * n_experts (a flag overrides the file): `--config default.ini --moe
 * hierarchical --groups 16 --experts-per-group 16` is 256 experts, not the
 * file's 16. */
void moe_options_derive(struct moe_options *c)
{
    const bool flag_shape = flagged(c, "groups") || flagged(c, "experts_per_group");
    if (moe_options_hierarchical(c) &&
        (!given(c, "n_experts") || (flag_shape && !flagged(c, "n_experts"))) &&
        (int64_t)c->groups * c->experts_per_group <= (1 << 20))
        c->n_experts = c->groups * c->experts_per_group;
}

/* --moe: the words, the shape of a hierarchical layer, and where it runs. */
static int check_hierarchical(const struct moe_options *c, char *err, size_t errlen)
{
    static const char *const kinds[] = {"flat", "hierarchical"};
    int rc = check_words(c->moe, "moe", kinds, 2, "flat or hierarchical", err, errlen);
    if (rc || !moe_options_hierarchical(c))
        return rc;
    if ((int64_t)c->groups * c->experts_per_group != c->n_experts)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "%s %d%s is not --groups %d x --experts-per-group %d (with --moe "
                            "hierarchical leave %s out: it is their product)",
                            flagged(c, "n_experts") ? "--n-experts" : "n_experts", c->n_experts,
                            flagged(c, "n_experts") ? "" : " (from the configuration file)",
                            c->groups, c->experts_per_group,
                            flagged(c, "n_experts") ? "--n-experts" : "n_experts");
    if (c->k_primary > c->groups)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--k-primary %d is larger than --groups %d", c->k_primary, c->groups);
    if (c->k > c->experts_per_group)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--k %d is larger than --experts-per-group %d (with --moe "
                            "hierarchical, k is the top-k within a group)",
                            c->k, c->experts_per_group);
    return 0;
}

bool moe_options_translate(const struct moe_options *c)
{
    return strcmp(c->task, "translate") == 0;
}

int moe_options_moe_layers(const struct moe_options *c) { return moe_options_translate(c) ? 2 : 1; }

int moe_options_experts_total(const struct moe_options *c)
{
    return c->n_experts * moe_options_moe_layers(c);
}

double moe_options_batch_rows(const struct moe_options *c)
{
    if (moe_options_translate(c))
        return (double)c->batch * (c->max_len + 1.0);
    return (double)(c->batch > c->eval_batch ? c->batch : c->eval_batch) * c->unroll;
}

/* --task: the word, and what the translation model does not run yet. */
static int check_task(const struct moe_options *c, char *err, size_t errlen)
{
    static const char *const tasks[] = {"lm", "translate"};
    int rc = check_words(c->task, "task", tasks, 2, "lm or translate", err, errlen);
    if (rc || !moe_options_translate(c))
        return rc;
    if (moe_options_hierarchical(c) || strcmp(c->dense_optimizer, "adam"))
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--task translate has flat MoE layers and dense Adam for now (not "
                            "--moe hierarchical, --dense-optimizer factored)");
    return 0;
}

int moe_options_check(const struct moe_options *c, unsigned role, char *err, size_t errlen)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    static const char *const dtypes[] = {"f32", "bf16"};
    int rc = check_words(c->log_level, "log-level", levels, 4, "debug, info, warn or error", err,
                         errlen);
    if (!rc)
        rc = check_words(c->wire_dtype, "wire-dtype", dtypes, 2, "f32 or bf16", err, errlen);
    if (rc)
        return rc;
    if ((rc = check_hierarchical(c, err, errlen)))
        return rc;
    if (c->k > c->n_experts)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen, "--k %d is larger than --n-experts %d",
                            c->k, c->n_experts);
    if (c->coordinator[0] && (rc = check_endpoints(c, c->coordinator, "the coordinator", err,
                                                   errlen)))
        return rc;
    if (role == MOE_FOR_WORKER && (rc = check_task(c, err, errlen)))
        return rc;
    if (role == MOE_FOR_WORKER)
        return check_worker(c, err, errlen);
    if (role == MOE_FOR_SERVER)
        return check_endpoints(c, c->bind[0] ? c->bind : c->servers, "this server's address",
                               err, errlen);
    if (role == MOE_FOR_COORDINATOR && !c->coordinator[0])
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--coordinator: the address to bind is missing (e.g. "
                            "--coordinator tcp://0.0.0.0:5550)");
    return 0;
}

int moe_options_exit_code(int rc)
{
    return rc == 0 ? 0 : rc == MOE_ERR_CONFIG ? 2 : 1;
}

/* Whether key belongs to a model's configuration (moe_options_model_ini). */
static bool is_model_key(const struct moe_opt *o)
{
    if (!strcmp(o->key, "vocab_max"))
        return true;
    if (!strcmp(o->key, "threads"))
        return false;
    return !strcmp(o->section, "model") || !strcmp(o->section, "train") ||
           !strcmp(o->section, "experts");
}

/* The keys that fix a model's shape: a checkpoint cannot be loaded into
 * another (the rest of its configuration may change when training resumes
 * with the flags given). */
static bool is_shape_key(const char *key)
{
    static const char *const shape[] = {"d_model", "d_hidden", "n_experts", "k", "residual",
                                        "moe_sigmoid", "vocab_max", "dense_optimizer", "moe",
                                        "groups", "experts_per_group", "k_primary"};
    for (size_t i = 0; i < sizeof shape / sizeof shape[0]; i++)
        if (!strcmp(key, shape[i]))
            return true;
    return false;
}

int moe_options_model_ini(const struct moe_options *c, char *out, size_t cap)
{
    size_t len = 0;
    const char *sec = "";
    for (size_t i = 0; i < moe_options_count; i++) {
        const struct moe_opt *o = &moe_options_table[i];
        if (!is_model_key(o))
            continue;
        char v[4200];
        moe_config_format_value(moe_options_table, moe_options_count, c, o->key, v, sizeof v);
        int n = snprintf(out + len, len < cap ? cap - len : 0, "%s%s%s%s = %s\n",
                         strcmp(sec, o->section) ? (len ? "\n[" : "[") : "",
                         strcmp(sec, o->section) ? o->section : "",
                         strcmp(sec, o->section) ? "]\n" : "", o->key, v);
        sec = o->section;
        len += (size_t)n;
    }
    return len < cap ? (int)len : MOE_ERR_RANGE;
}

int moe_options_adopt(struct moe_options *c, const char *model_ini, const char *from,
                      bool strict_shape_only, char *err, size_t errlen)
{
    static struct moe_options m; /* large: not on the stack */
    bool in_model[MOE_OPTIONS_MAX] = {0};
    int rc = moe_config_defaults(moe_options_table, moe_options_count, &m, err, errlen);
    if (!rc)
        rc = moe_config_load_ini_text(moe_options_table, moe_options_count, &m, model_ini, from,
                                      in_model, err, errlen);
    if (rc)
        return MOE_ERR_CONFIG;
    for (size_t i = 0; i < moe_options_count; i++) {
        const struct moe_opt *o = &moe_options_table[i];
        if (!in_model[i] || !is_model_key(o))
            continue;
        char mine[4200], theirs[4200];
        moe_config_format_value(moe_options_table, moe_options_count, c, o->key, mine,
                                sizeof mine);
        moe_config_format_value(moe_options_table, moe_options_count, &m, o->key, theirs,
                                sizeof theirs);
        if (!strcmp(mine, theirs))
            continue;
        if (c->given[i] && (is_shape_key(o->key) || !strict_shape_only)) {
            char flag[128];
            size_t k = 0;
            for (const char *p = o->key; *p && k + 1 < sizeof flag; p++)
                flag[k++] = *p == '_' ? '-' : *p;
            flag[k] = '\0';
            return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                                "--%s %s contradicts %s, which was trained with %s = %s (leave "
                                "it out to use the model's)", flag, mine, from, o->key, theirs);
        }
        if (!c->given[i])
            moe_config_set(moe_options_table, moe_options_count, c, o->key, theirs, from, err,
                           errlen);
    }
    return 0;
}

int moe_options_adopt_corpus(struct moe_options *c, const char *train, const char *valid,
                             const char *from, char *note, size_t notelen, char *err,
                             size_t errlen)
{
    note[0] = '\0';
    const bool take_train = train && !given(c, "train");
    const bool take_valid = valid && !given(c, "valid");
    if (!take_train && !take_valid)
        return 0;
    struct stat sb;
    const char *missing = take_train && stat(train, &sb) != 0   ? train
                          : take_valid && valid[0] && stat(valid, &sb) != 0 ? valid
                                                                          : NULL;
    if (missing)
        return moe_err_fail(MOE_ERR_NOTFOUND, err, errlen,
                            "%s was %s on %s, which does not exist here: give --train "
                            "(and --valid) with the corpus to train on", from,
                            missing == train ? "trained" : "validated", missing);
    if (strlen(take_train ? train : "") >= sizeof c->train ||
        strlen(take_valid ? valid : "") >= sizeof c->valid)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen, "%s: a corpus path is too long", from);
    if (take_train)
        snprintf(c->train, sizeof c->train, "%s", train);
    if (take_valid)
        snprintf(c->valid, sizeof c->valid, "%s", valid);
    char what[2 * MOE_PATH_MAX + 64];
    int k = 0;
    if (take_train)
        k = snprintf(what, sizeof what, "--train %s", train);
    if (take_valid)
        snprintf(what + k, sizeof what - (size_t)k, "%s%s%s", take_train ? ", " : "",
                 valid[0] ? "--valid " : "no validation corpus", valid);
    snprintf(note, notelen, "training on the corpora recorded in %s: %s (give --train and "
             "--valid to train on others)", from, what);
    return 0;
}

int moe_options_ini_group_size(const char *model_ini)
{
    static struct moe_options m; /* large: not on the stack */
    char err[256];
    if (moe_config_defaults(moe_options_table, moe_options_count, &m, err, sizeof err) ||
        moe_config_load_ini_text(moe_options_table, moe_options_count, &m, model_ini, "", NULL,
                                 err, sizeof err))
        return 0;
    return moe_options_hierarchical(&m) ? m.experts_per_group : 0;
}

int moe_options_contract_put(char *contract, size_t cap, const char *key, const char *value)
{
    size_t vl = 0, len = strlen(contract);
    const char *v = contract_find(contract, key, &vl);
    if (!v)
        return contract_add(contract, cap, &len, key, value);
    const size_t nl = strlen(value), at = (size_t)(v - contract);
    if (len - vl + nl >= cap)
        return MOE_ERR_RANGE;
    memmove(contract + at + nl, contract + at + vl, len - at - vl + 1);
    memcpy(contract + at, value, nl);
    return 0;
}

int moe_options_contract_kernels(char *const *mine, int n, size_t cap, const char *theirs,
                                 const char *who, char *why, size_t len)
{
    char cluster[64], newcomer[64], strict[16];
    why[0] = '\0';
    if (n < 1)
        return 0;
    moe_options_contract_get(mine[0], CONTRACT_KERNELS, cluster, sizeof cluster);
    moe_options_contract_get(theirs, CONTRACT_KERNELS, newcomer, sizeof newcomer);
    moe_options_contract_get(mine[0], "strict_determinism", strict, sizeof strict);
    char shown[64];
    moe_log_sanitize(shown, sizeof shown, newcomer, strlen(newcomer));
    if (!newcomer[0] || strcmp(cluster, newcomer) == 0)
        return 0;
    if (!cluster[0]) {
        for (int i = 0; i < n; i++)
            if (moe_options_contract_put(mine[i], cap, CONTRACT_KERNELS, shown))
                return 0; /* no room: the cluster keeps no set */
        snprintf(why, len, "the BLAS kernels of this cluster are %s (from %s)", shown, who);
        return 0;
    }
    if (strcmp(strict, "true") == 0) {
        snprintf(why, len, "%s runs the BLAS kernels %s and the cluster %s, so results would not "
                 "be bitwise those of one kernel set (refused by strict_determinism)", who, shown,
                 cluster);
        return MOE_ERR_CONFIG;
    }
    snprintf(why, len, "%s runs the BLAS kernels %s and the cluster %s: results will not be "
             "bitwise those of one kernel set", who, shown, cluster);
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Start-up */

int moe_options_recompute(const struct moe_options *c, enum moe_recompute *out, char *err,
                          size_t errlen)
{
    static const char *const names[] = {"none", "experts", "all"};
    for (int i = 0; i < 3; i++)
        if (strcmp(c->recompute, names[i]) == 0) {
            *out = (enum moe_recompute)i;
            return 0;
        }
    char shown[48];
    moe_log_sanitize(shown, sizeof shown, c->recompute, strlen(c->recompute));
    return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                        "--recompute: expected none, experts or all, got \"%s\"", shown);
}

enum moe_recompute moe_options_recompute_mode(const struct moe_options *c)
{
    enum moe_recompute m = MOE_RECOMPUTE_NONE;
    char err[160];
    return moe_options_recompute(c, &m, err, sizeof err) == 0 ? m : MOE_RECOMPUTE_NONE;
}

static pthread_t main_thread;

static void stop_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
}

/* Until the program's own handler: a SIGTERM/SIGINT that reached another
 * thread (OpenBLAS starts its threads before main) goes to the main
 * thread, where it waits, blocked. */
static void forward_to_main(int sig) { pthread_kill(main_thread, sig); }

void moe_options_hold_signals(void)
{
    sigset_t stop;
    stop_signals(&stop);
    sigprocmask(SIG_BLOCK, &stop, NULL);
    main_thread = pthread_self();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_to_main;
    sigfillset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

int moe_options_start(const struct moe_options *c, int argc, char **argv, char *err,
                      size_t errlen)
{
    enum moe_log_level lvl;
    enum moe_recompute rc_mode;
    moe_options_hold_signals();
    if (moe_log_parse_level(c->log_level, &lvl))
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--log-level: expected debug, info, warn or error");
    moe_log_set_level(lvl);
    int rc = moe_options_recompute(c, &rc_mode, err, errlen);
    if (rc)
        return rc;
    if (c->checkpoint_dir[0] &&
        (rc = moe_file_check_dir_writable(c->checkpoint_dir, "checkpoints", err, errlen)))
        return rc;
    return moe_kernels_init(argc, argv, c->blas_kernels, err, errlen);
}

void moe_options_signals_ready(void)
{
    sigset_t stop;
    stop_signals(&stop);
    sigprocmask(SIG_UNBLOCK, &stop, NULL);
}
