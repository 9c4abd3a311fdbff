/* The training loop of one worker process (DESIGN §2, §3): data, model,
 * optimizers, evaluation, progress lines, checkpoints and the final report.
 * trainer_main.c only parses the configuration and calls trainer_run(). */
#ifndef TRAINER_H
#define TRAINER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe_config.h"

#define TRAINER_PATH_MAX 1024

struct trainer_config {
    /* data */
    char train[TRAINER_PATH_MAX], valid[TRAINER_PATH_MAX];
    int vocab_max;
    /* model */
    int d_model, d_hidden, n_experts, k;
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
    char shard_out[TRAINER_PATH_MAX]; /* moe-server: write the shard here when stopping */
    char coordinator[256];  /* coordinator endpoint (empty: none) */
    char http[256];         /* moe-coordinator: HTTP monitoring address HOST:PORT */
    char http_token[256];   /* moe-coordinator: bearer token of mutating endpoints */
    int min_servers;        /* moe-coordinator: servers to wait for before the first step */
    int64_t heartbeat_timeout_ms; /* moe-coordinator: silence that makes a server dead */
    int keep_checkpoints;   /* moe-coordinator: committed checkpoints kept */
    /* checkpoints, output */
    char checkpoint_dir[TRAINER_PATH_MAX], resume[TRAINER_PATH_MAX], report[TRAINER_PATH_MAX];
    int64_t checkpoint_every, log_every, valid_every, valid_max_tokens;
    char log_level[16];
};

/* The option table of moe-worker (every key is also a --flag). */
extern const struct moe_opt trainer_options[];
extern const size_t trainer_options_count;

/* Runs training as configured. Returns 0 on success; on failure prints a
 * sentence naming the file or key to stderr and returns non-zero. */
int trainer_run(const struct trainer_config *cfg);

#endif
