/* The expert server's state, shared by the three files of the moe-server
 * process: expert_server.c (life cycle, the loop, the coordinator),
 * expert_server_step.c (what arrives: validation, the step's forward,
 * backward and update, fetches) and expert_server_epoch.c (epochs,
 * checkpoints, shard files). Nothing outside server/expert/ includes it. */
#ifndef EXPERT_SERVER_INTERNAL_H
#define EXPERT_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord_client.h"
#include "expert_server.h"
#include "expert_shard.h"
#include "hmoe_group.h"
#include "moe_cluster.h"
#include "moe_guard.h"
#include "moe_metrics.h"
#include "moe_optim.h"
#include "moe_wire.h"

enum phase { PH_FORWARD, PH_BACKWARD };

/* What one worker sent in the current step. */
struct slot {
    bool have;
    struct moe_wire_msg msg; /* owns header and data; data is reused for the reply */
};

struct expert_server {
    const struct moe_options *cfg;
    struct moe_cluster cl;
    expert_shard_t *shard;
    void *ctx, *sock;
    struct moe_sec sec;    /* keys: on tcp:// the socket runs CURVE */
    struct moe_net net;
    moe_guard_t *guard;    /* ZAP handler and monitor of ctx */
    bool curve;            /* the socket authenticates (only worker keys get in) */
    int W, D, H;
    struct moe_wire_limits lim;
    Moe__DType dtype;
    struct moe_lr_schedule sched;
    int64_t step; /* the step being served (0-based); steps completed = step */
    enum phase phase;
    /* MoE layers of the model (moe_options_moe_layers) and the one whose
     * forward or backward the step waits for: forwards of layers 0, 1, ...
     * then backwards from the last layer down to 0 */
    int layers, layer;
    struct slot *fwd, *bwd; /* fwd: W slots per layer (layer l at fwd + l W); bwd: W */
    /* assembled layout of the step: union of experts over workers */
    int n_union;
    int32_t *u_ids;
    int *u_rows;
    size_t *u_base;
    float *x_all, *y_all;
    size_t cap_rows;
    /* a hierarchical MoE (issue 17): the groups of the shard, their
     * secondary gates run here (NULL: a flat MoE); B experts per group; the
     * step's parts (one per worker) and their statistics and primary-gate
     * gradients */
    hmoe_groups_t *groups;
    int B;
    struct hmoe_part *parts;
    float *gstats, *gdgp;
    size_t cap_gstats, cap_gdgp;
    int64_t errors, msgs;
    double stop_since;
    coord_client_t *coord; /* registration, heartbeats and epochs, when configured */
    uint32_t epoch;        /* configuration served (0: static, without a coordinator) */
    int index;             /* this server's index in the epoch (or --server-index) */
    bool waiting;          /* between epochs: serves nothing until the next one loads */
    char own[256];         /* the endpoint it serves on */
    /* heartbeats come from their own thread, so that a long step does not
     * make this server look dead; it reads these, the loop writes them */
    pthread_t hb_thread;
    bool hb_running;
    atomic_int hb_stop;
    atomic_llong hb_step;
    atomic_ullong hb_rows, hb_bytes, hb_errors, hb_latency_bits;
    /* what /metrics wants beyond single numbers, copied under hb_lock */
    pthread_mutex_t hb_lock;
    struct moe_hist hb_compute;
    uint64_t hb_reasons[MOE_REASONS], hb_bytes_in, hb_bytes_out;
    atomic_uint hb_seen_epoch;
    /* what the heartbeat answers said, for the loop */
    atomic_int hb_unregistered, hb_stopped, hb_failed;
    char hb_failure[1024];        /* written before hb_failed is set */
    atomic_llong hb_silence_ms;   /* since the coordinator last answered */
    char contract[8192];          /* the training configuration it registered with */
    char workers[4096];           /* the worker list it serves (--workers or the coordinator's) */
    uint32_t id;                  /* its id from the coordinator (file names, logs) */
    bool leave_sent;              /* asked the coordinator to drain it (first signal) */
    bool exit_after_step;         /* stop once no step is in progress */
    int exit_code;                /* of expert_server_run when it stops on its own */
    char exit_why[1100];          /* ... and its sentence */
    uint64_t rows_total, bytes_total; /* forward rows computed, tensor bytes in and out */
    uint64_t bytes_in, bytes_out;     /* ... by direction */
    uint64_t reasons[MOE_REASONS];    /* errors by reason (moe_reason_index) */
    double compute_seconds;           /* forward + backward compute of every step */
    double step_compute;              /* ... of the step in progress */
    struct moe_hist compute;          /* each step's forward + backward compute seconds */
    double step_started;
};

/* expert_server_step.c: receives and handles one message (non-blocking);
 * answers a message with an error (counted, logged, sampled); drops the
 * held messages of a step that will not complete, telling their senders. */
void expert_server__handle_message(expert_server_t *s);
/* One decoded message (its sender's role checked first) to its handler. */
void expert_server__dispatch(expert_server_t *s, struct moe_wire_msg *m);
void expert_server__reply_error(expert_server_t *s, const struct moe_wire_msg *m, int code,
                                const char *text);
/* The header of a data reply to m: its step, request id, experts, row
 * counts and first row; this server's index as rank, epoch, wire dtype and
 * width D. */
void expert_server__reply_header(const expert_server_t *s, const struct moe_wire_msg *m,
                                 Moe__MsgType type, struct moe_wire_out *o);
void expert_server__abandon_step(expert_server_t *s, const char *why);
void expert_server__clear_slots(struct slot *sl, int W);
/* The end of a step's backward (bwd_seconds its compute): the slots
 * cleared, the step counted, a checkpoint when the step carries the flag. */
void expert_server__end_step(expert_server_t *s, double bwd_seconds);
/* The second half of a split backward (the update after the workers had
 * their answers) failed, which only a broken state can cause: an error
 * line, and trouble reported to the coordinator (a rollback) when there
 * is one. whose: "experts'" or "groups'". */
void expert_server__update_failed(expert_server_t *s, const char *whose, int64_t t);

/* expert_server_group.c: a hierarchical MoE's group messages. The checks
 * of a GROUP_FORWARD or GROUP_BACKWARD beyond validate_step_request's (0,
 * or the code with a sentence in why); the step's forward and backward
 * once every worker's message is in; an evaluation forward. */
int expert_server__check_group(const expert_server_t *s, const struct moe_wire_msg *m, char *why,
                               size_t len);
int expert_server__finish_group_forward(expert_server_t *s);
int expert_server__finish_group_backward(expert_server_t *s);
void expert_server__group_eval(expert_server_t *s, struct moe_wire_msg *m);
/* The groups of s->shard (after its epoch's shard is made): 0 or
 * MOE_ERR_NOMEM. Nothing for a flat MoE. */
int expert_server__make_groups(expert_server_t *s);
/* A fetch of groups (MOE_FLAG_GROUPS): true, with a sentence in why, when
 * an id is no group of this server. */
bool expert_server__fetch_groups_missing(const expert_server_t *s, const Moe__Header *h, char *why,
                                       size_t len);

/* expert_server_epoch.c: builds the shard of an epoch (kept experts stay,
 * the others are read from its checkpoint or initialised); writes this
 * server's file of the checkpoint of the current step and reports it (a
 * failure is reported as trouble); tells the coordinator of a failure. */
int expert_server__load_epoch(expert_server_t *s, const struct coord_epoch *ep, char *err,
                              size_t errlen);
void expert_server__write_checkpoint(expert_server_t *s);
void expert_server__report_trouble(expert_server_t *s, const char *why);

/* expert_server.c: whether a shard of n experts fits in memory now. */
int expert_server__check_shard_memory(const expert_server_t *s, int n, char *err, size_t errlen);

#endif
