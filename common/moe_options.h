/* The configuration every process of the cluster reads (DESIGN §7): one
 * struct, one option table (each key an INI key and a --flag), and the
 * contract of keys the members of a cluster must agree on (DESIGN §6).
 * Shared by moe-worker, moe-server, moe-coordinator and the tests; the
 * parsing itself is moe_config's. Holds no state. */
#ifndef MOE_OPTIONS_H
#define MOE_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe_config.h"

#define MOE_PATH_MAX 1024
#define MOE_OPTIONS_MAX 128 /* entries of the option table, at most */

struct moe_options {
    /* data */
    char train[MOE_PATH_MAX], valid[MOE_PATH_MAX];
    int vocab_max;
    /* model */
    int d_model, d_hidden, n_experts, k;
    char moe[16];               /* flat or hierarchical */
    int groups, experts_per_group, k_primary; /* hierarchical: A, B, K1 (k is the secondary k) */
    bool residual, moe_sigmoid;
    double dropout, w_importance, w_load;
    /* training */
    int64_t steps, seed;
    int batch, unroll, eval_batch, threads;
    int64_t warmup;
    double lr, beta1, beta2, adam_eps;
    char dense_optimizer[16];
    /* experts */
    char experts[16];
    double expert_beta2, expert_eps, expert_decay_pow, expert_clip;
    bool expert_relative_step;
    /* cluster (expert servers and data-parallel workers) */
    char servers[4096];   /* comma-separated expert-server endpoints; entry j is server j */
    char placement[4096]; /* comma-separated server of each expert; empty: contiguous blocks */
    char workers[4096];   /* comma-separated all-reduce endpoints of the workers, by rank */
    int rank;             /* this worker's rank */
    int server_index;     /* moe-server: which entry of `servers` this daemon is */
    char bind[256];       /* moe-server: address to bind (default: its entry of `servers`) */
    char advertise[256];  /* moe-server: address others reach it at (default: bind) */
    int64_t timeout_ms;   /* a peer that does not answer within this is an error */
    char wire_dtype[8];   /* f32 or bf16: tensors on the wire */
    int max_message_mb;   /* cap on any message received */
    char shard_out[MOE_PATH_MAX]; /* moe-server: write the shard here when stopping */
    char coordinator[256];  /* coordinator endpoint (empty: none) */
    char http[256];         /* moe-coordinator: HTTP monitoring address HOST:PORT */
    char http_token[256];   /* moe-coordinator: bearer token of mutating endpoints */
    char http_token_file[MOE_PATH_MAX]; /* ... read from this file's first line */
    char keys[MOE_PATH_MAX];   /* directory of the cluster's CURVE keys (moectl keygen) */
    bool insecure;             /* plain TCP without CURVE */
    int max_connections;       /* connections a bound socket accepts */
    int min_servers;        /* moe-coordinator: servers to wait for before the first step */
    int64_t heartbeat_timeout_ms; /* moe-coordinator: silence that makes a server dead */
    int keep_checkpoints;   /* moe-coordinator: committed checkpoints kept */
    int metrics_max_experts; /* moe-coordinator: above this many experts, per-expert series
                              * in /metrics only with ?experts=1 */
    /* checkpoints, output */
    char checkpoint_dir[MOE_PATH_MAX], resume[MOE_PATH_MAX], report[MOE_PATH_MAX];
    char final_model[MOE_PATH_MAX];
    int64_t checkpoint_every, log_every, valid_every, valid_max_tokens;
    char log_level[16];
    /* operations */
    int max_rollbacks;          /* moe-coordinator: failures without progress before it stops */
    int stall_heartbeats;       /* moe-coordinator: heartbeats of a server without a step
                                 * completed before the cluster counts as stalled */
    int64_t coordinator_wait_s; /* servers, workers: how long to wait for a silent coordinator */
    bool memory_check;          /* compare the memory needed with MemAvailable before allocating */
    /* which keys the INI file or a flag set (moe_config_parse_args), by table index */
    bool given[MOE_OPTIONS_MAX];
    /* of those, the keys a flag set (a flag overrides the file) */
    bool flagged[MOE_OPTIONS_MAX];
    /* compute: BLAS kernels, determinism, memory (DESIGN §4, §10) */
    char blas_kernels[32];      /* auto, keep or an OpenBLAS kernel set (moe_kernels_decide) */
    bool strict_determinism;    /* other kernels on resume or join: refuse, not warn */
    char recompute[16];         /* none, experts or all (enum moe_recompute) */
    /* translation (issue 19; moe-worker --task translate, worker/s2s_train.h) */
    char task[16];              /* lm or translate */
    char src_train[MOE_PATH_MAX], tgt_train[MOE_PATH_MAX]; /* parallel corpora: line i of */
    char src_valid[MOE_PATH_MAX], tgt_valid[MOE_PATH_MAX]; /* one translates line i of the other */
    int src_vocab_max, tgt_vocab_max; /* vocabulary caps including <unk> and <eos> */
    int max_len;                /* tokens a line may hold */
};

/* The programs an option is for (moe_opt.roles): --help lists each
 * program's own; every program accepts all of them, so that one INI file
 * or one command line serves the whole cluster. */
enum {
    MOE_FOR_WORKER = 1,
    MOE_FOR_SERVER = 2,
    MOE_FOR_COORDINATOR = 4,
    MOE_FOR_ALL = 7,
};

/* Checks what the table cannot check by itself, for a program of `role`
 * (MOE_FOR_*): words from a list (log_level, experts, wire_dtype,
 * dense_optimizer), k <= n_experts, TCP endpoints it uses without keys or
 * --insecure, and the combinations its role refuses. 0, or MOE_ERR_CONFIG
 * with one sentence naming the option: a usage error (exit 2). */
int moe_options_check(const struct moe_options *c, unsigned role, char *err, size_t errlen);

/* --moe hierarchical (issue 17): a primary gate over `groups` groups, each
 * a secondary MoE of `experts_per_group` experts; n_experts is their
 * product. moe_options_derive sets n_experts to groups x experts_per_group
 * for a hierarchical model when n_experts was not given (the file or a
 * flag); moe_options_check refuses any other n_experts, k_primary > groups,
 * k > experts_per_group. */
bool moe_options_hierarchical(const struct moe_options *c);
/* --task translate: the translation model of issue 19 (worker/s2s_train.h)
 * instead of the language model. moe_options_check refuses (for now)
 * --moe hierarchical and the factored dense optimizer with it. */
bool moe_options_translate(const struct moe_options *c);
/* MoE layers of the model: 2 for the translation model (encoder and
 * decoder), else 1. Each layer's experts have their own global ids: layer
 * l's expert e is expert l x n_experts + e on the wire, on the servers and
 * in their files; a step runs each layer's forward in order, then their
 * backwards in reverse order (DESIGN §3). */
int moe_options_moe_layers(const struct moe_options *c);
/* The experts of the whole model, what placements, shards, manifests and
 * the coordinator's statistics count: n_experts x moe_options_moe_layers. */
int moe_options_experts_total(const struct moe_options *c);
/* Rows of one MoE layer's largest batch: batch x unroll for the language
 * model (eval_batch when larger), batch x (max_len + 1) for translation. */
double moe_options_batch_rows(const struct moe_options *c);
/* Experts that a placement keeps together on one server: experts_per_group
 * for a hierarchical MoE (a whole group), else 1. */
int moe_options_group_size(const struct moe_options *c);
/* Experts each row goes to at most: k, or k_primary x k for a hierarchical
 * MoE (what bounds the rows a worker sends). */
int moe_options_slots_per_row(const struct moe_options *c);
void moe_options_derive(struct moe_options *c);
/* experts_per_group of the hierarchical model a configuration text (a
 * checkpoint's config) describes, or 0 (flat, or a text that does not
 * parse): how its experts' tensors are named (expert_shard.h). */
int moe_options_ini_group_size(const char *model_ini);

/* The exit status of a program for a result code: 0, 2 for a usage error
 * (MOE_ERR_CONFIG: the command line or the configuration is wrong), 1 for
 * any other failure. */
int moe_options_exit_code(int rc);

/* The configuration a trained model carries (checkpoints, exports): the
 * keys that define the model and how it was trained (sections model,
 * train, experts, and vocab_max; not paths, threads, cluster or output
 * settings, so that one process and a cluster give the same text), as INI
 * text in the table's order. Returns its length, or MOE_ERR_RANGE. */
int moe_options_model_ini(const struct moe_options *c, char *out, size_t cap);

/* Takes a model's configuration (INI text of moe_options_model_ini; `from`
 * names it in sentences) into c: keys the user did not give (c->given) take
 * the model's values; a key the user gave with another value is an error
 * naming both ("--d-hidden 512, but FROM was trained with d_hidden = 256"),
 * unless it is one that may change when training resumes (steps,
 * log_every, ...; `strict_shape_only`: only the model's shape must agree).
 * 0 or MOE_ERR_CONFIG. */
int moe_options_adopt(struct moe_options *c, const char *model_ini, const char *from,
                      bool strict_shape_only, char *err, size_t errlen);

/* --resume without --train or --valid: the corpora the model was trained
 * and validated on, as its checkpoint records them (NULL: not recorded, as
 * by earlier versions; valid "": none), instead of the defaults; a corpus
 * the user gave stays. 0 with `note` the one line to log (`""` when
 * nothing was taken), or MOE_ERR_NOTFOUND when a recorded file does not
 * exist here, with a sentence naming it and telling to give --train. */
int moe_options_adopt_corpus(struct moe_options *c, const char *train, const char *valid,
                             const char *from, char *note, size_t notelen, char *err,
                             size_t errlen);

/* The option table (every key is also a --flag). */
extern const struct moe_opt moe_options_table[];
extern const size_t moe_options_count;

/* What the backward pass recomputes instead of keeping from the forward
 * (--recompute); the results are the same bits either way. */
enum moe_recompute {
    MOE_RECOMPUTE_NONE = 0, /* keep every activation */
    MOE_RECOMPUTE_EXPERTS,  /* the experts' hidden activations (expert_shard) */
    MOE_RECOMPUTE_ALL,      /* those, and the LSTMs' gate activations and cells */
};

/* c->recompute as an enum, or MOE_ERR_CONFIG with a sentence for a value
 * that is none of none, experts, all. */
int moe_options_recompute(const struct moe_options *c, enum moe_recompute *out, char *err,
                          size_t errlen);
/* The same for values already checked (moe_options_start): NONE when bad. */
enum moe_recompute moe_options_recompute_mode(const struct moe_options *c);

/* What every program does first with its options, from main() before any
 * other thread of ours starts: sets the log level, checks the values the
 * table cannot (log_level, recompute, blas_kernels) and that checkpoint_dir
 * can be written (moe_file_check_dir_writable: a run must not fail at its
 * first checkpoint), then chooses the BLAS kernels (moe_kernels_init with
 * c->blas_kernels, which may re-execute the process with the same argv).
 * Returns 0; MOE_ERR_CONFIG for a bad value (a usage error: the program
 * exits 2); MOE_ERR_IO for a checkpoint_dir it cannot write, another code
 * when the kernels fail their self-test; each with one sentence in err. */
int moe_options_start(const struct moe_options *c, int argc, char **argv, char *err,
                      size_t errlen);

/* moe_options_start holds SIGTERM and SIGINT back (blocked in the calling
 * thread, forwarded there from any other), so that a signal during the
 * start-up (the kernels' self-test takes a fraction of a second, and may
 * re-execute the process) is not the default's silent death: the program
 * calls this once its own handlers are installed, and a signal that came
 * meanwhile reaches them then. */
void moe_options_signals_ready(void);

/* What moe_options_start does first, for the daemons to call from a
 * constructor too (MOE_HOLD_SIGNALS_AT_LOAD), before main: SIGTERM/SIGINT
 * blocked in the calling thread and forwarded there from any other (the
 * mask and a pending signal survive the kernels' re-execution; threads
 * started later inherit the mask) until moe_options_signals_ready. */
void moe_options_hold_signals(void);
#define MOE_HOLD_SIGNALS_AT_LOAD                                                                   \
    __attribute__((constructor)) static void moe_hold_signals_at_load(void)                        \
    {                                                                                              \
        moe_options_hold_signals();                                                                \
    }

/* Roles of the processes of a cluster (as in the wire header's `role`). */
enum { MOE_ROLE_WORKER = 1, MOE_ROLE_SERVER = 2, MOE_ROLE_COORDINATOR = 3 };

/* The largest message, header and payload, a process of `receiver` role
 * accepts from its peers, derived from the model (DESIGN §5):
 *   MOE_ROLE_SERVER       a worker's forward, backward or evaluation: every
 *                         row of its batch (or evaluation batch) times k, of
 *                         d_model floats, plus a header of n_experts entries;
 *   MOE_ROLE_WORKER       a server's replies (the same) or a fetch of every
 *                         expert's parameters and optimizer state;
 *   MOE_ROLE_COORDINATOR  a registration (its configuration) or a step's
 *                         statistics (3 n_experts + 1 floats).
 * max_message_mb, when not 0, caps it further. */
size_t moe_options_message_limit(const struct moe_options *c, int receiver);

/* The training configuration every process of a cluster must agree on
 * (DESIGN §6), as "key=value\n" lines in a fixed order: for
 * MOE_ROLE_SERVER the keys an expert server depends on (expert shape,
 * expert optimizer, learning-rate schedule, seed, wire dtype, worker list),
 * for MOE_ROLE_WORKER all of those plus the dense model, its optimizer,
 * batch, steps and a digest of the training corpus's bytes ("train=" 16 hex
 * digits, or "train=?" when the file cannot be read). Values are in the
 * form of the INI writer; the worker list is canonical (entries trimmed).
 * Returns the length written, or MOE_ERR_RANGE when cap is too small. */
int moe_options_contract(const struct moe_options *c, int role, char *out, size_t cap);

/* Compares two contracts key by key. Writes into why (cap bytes) one
 * sentence naming every key whose values differ, with both ("d_hidden is
 * 512 here and 256 in the cluster"), keys missing on either side included,
 * and returns how many differ (0: they agree). `mine` is the cluster's,
 * `theirs` the newcomer's. Keys named in `skip_empty` (comma list) are not
 * compared when the newcomer's value is empty. */
int moe_options_contract_diff(const char *mine, const char *theirs, const char *skip_empty, char *why,
                          size_t cap);

/* The BLAS kernel set in contracts. Every contract ends with the line
 * "blas_kernels=NAME" (moe_kernels_effective of the process that wrote
 * it), which moe_options_contract_diff does not compare: machines of a
 * cluster may differ, and a different set changes bits but not the model.
 * The coordinator keeps the cluster's set in the contracts it holds
 * (`mine`, n of them, each cap bytes): empty at its start (it blanks them
 * with moe_options_contract_put), then the first member's. Compares the
 * newcomer's (`theirs`, from `who`, e.g. "worker 1") with it:
 *   0  the same, or the cluster had none (it takes the newcomer's: every
 *      `mine` is rewritten, and why says so, for an info line);
 *   1  different while the cluster's contract has strict_determinism=false:
 *      why holds the warning, naming both sets;
 *   MOE_ERR_CONFIG  different under strict_determinism=true: why holds the
 *      refusal. */
int moe_options_contract_kernels(char *const *mine, int n, size_t cap, const char *theirs,
                                 const char *who, char *why, size_t len);

/* Sets the value of `key` in a contract (cap bytes) to `value`, appending
 * the line when the key is absent. 0 or MOE_ERR_RANGE (too long). */
int moe_options_contract_put(char *contract, size_t cap, const char *key, const char *value);

/* 64-bit digest of a contract's text (moe_checksum64). */
uint64_t moe_options_contract_digest(const char *contract);

/* The value of `key` in a contract into out ("" when absent). */
void moe_options_contract_get(const char *contract, const char *key, char *out, size_t cap);

#endif
