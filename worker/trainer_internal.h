/* One worker's state (moe-worker process), shared by the files of the
 * trainer: trainer.c (the loop: a step, evaluation, progress, the report),
 * trainer_setup.c (options, data, experts, model, resume) and
 * trainer_cluster.c (the coordinator's epochs: joining, the start barrier,
 * recovery, cluster checkpoints). Nothing outside worker/ includes it. */
#ifndef TRAINER_INTERNAL_H
#define TRAINER_INTERNAL_H

#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "coord_client.h"
#include "data.h"
#include "expert_local.h"
#include "expert_remote.h"
#include "expert_shard.h"
#include "model.h"
#include "moe_allreduce.h"
#include "moe_cluster.h"
#include "moe_guard.h"
#include "trainer.h"

struct trainer;

/* A model other than the language model (the translation model,
 * s2s_train.c) runs the same cluster logic (trainer_cluster.c) through
 * these: binding its MoE layers to the expert backend of a new epoch
 * (t->remote_be), and writing and reading this worker's files of a cluster
 * checkpoint (file: the name written, reported to the coordinator). Each
 * returns 0 or a negative code with a sentence. */
struct trainer_hooks {
    void *ctx;
    int (*bind)(void *ctx, struct trainer *t, char *err, size_t errlen);
    int (*save)(void *ctx, struct trainer *t, const char *folder, char *file, size_t cap,
                char *err, size_t errlen);
    int (*load)(void *ctx, struct trainer *t, const char *folder, char *err, size_t errlen);
};

struct trainer {
    const struct moe_options *cfg;
    const struct trainer_hooks *hooks; /* NULL: the language model (t->model) */
    /* data parallelism: this worker's streams [b0, b0 + B) of the global batch */
    int rank, world, B, b0;
    bool remote;
    struct moe_cluster cl;
    void *zctx;
    struct moe_sec sec;    /* keys (tcp:// runs CURVE) */
    struct moe_net net;    /* what this worker's sockets are made with */
    moe_guard_t *guard;    /* the ZAP handler of zctx (the ring socket authenticates workers) */
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
    /* a hierarchical MoE's secondary gates: in-process, the groups run here
     * (local: them and the shard); with expert servers, a mirror for the
     * checkpoints worker 0 writes (expert_remote_fetch_groups) */
    hmoe_groups_t *groups;
    struct expert_local local;
    model_t *model;
    float *dense_opt[MODEL_MAX_PARAMS];
    size_t dense_opt_n[MODEL_MAX_PARAMS];
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

/* trainer_setup.c: everything a run needs, allocated before the first step
 * (0 or a negative code with a sentence), and its release. */
int trainer__setup(struct trainer *t, char *err, size_t errlen);
void trainer__teardown(struct trainer *t);
/* The cluster part of trainer__setup (t->cfg set): keys, the coordinator's
 * registration or the static server list, this worker's rank and streams
 * (t->B of the global batch from t->b0); and of trainer__teardown. */
int trainer__setup_cluster(struct trainer *t, char *err, size_t errlen);
void trainer__teardown_cluster(struct trainer *t);
/* A byte count computed in double, as an unsigned integer (saturating). */
uint64_t trainer__bytes_of(double b);

/* trainer.c: writes the report o (taken) as JSON to `report` (worker 0)
 * or `report`.rank<r>, atomically. 0 or MOE_ERR_IO with a sentence. */
int trainer__write_report(json_t *o, const char *report, int rank, char *err, size_t errlen);

/* trainer_cluster.c: the coordinator's epochs. */
int trainer__wait_epoch(struct trainer *t, uint32_t flags, const char *why, char *err,
                        size_t errlen);
int trainer__enter_epoch(struct trainer *t, bool reload, char *err, size_t errlen);
/* The first epoch of this worker (a peer that does not join the ring in
 * time makes it ask for another), and its initial checkpoint. */
int trainer__join_cluster(struct trainer *t, char *err, size_t errlen);
int trainer__recover(struct trainer *t, const char *why, char *err, size_t errlen);
int trainer__make_remote(struct trainer *t, char *err, size_t errlen);
/* What the coordinator attached to the step just done: its checkpoint, a
 * stop (*stopped, with the sentence in note), a new placement. 0 to go on,
 * or a negative code; a failed checkpoint is recovered like a failed step. */
int trainer__cluster_after_step(struct trainer *t, bool *stopped, char *note, size_t notelen,
                                char *err, size_t errlen);
/* The checkpoint view of this worker's state. */
struct ckpt_state trainer__ckpt_state(struct trainer *t);

#endif
