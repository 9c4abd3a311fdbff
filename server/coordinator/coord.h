/* The coordinator's state and message handling (moe-coordinator process),
 * independent of the event loop that feeds it: coord_main.c runs it under
 * libuv (ZeroMQ through moe_zloop, HTTP through coord_http).
 *
 * Membership: expert servers register with the endpoint they serve on
 * (their routing id is "moe-server/INC@ENDPOINT"), workers with their rank
 * ("moe-worker-R/INC"; INC is a random number of the process, so that no
 * newcomer can take over a member's connection), each with its training
 * configuration: a process whose
 * configuration differs from the cluster's is refused with a sentence
 * naming the keys, and nothing changes. A server gets an id at its first
 * registration (the position of its endpoint in --servers, or the next free
 * number) and keeps it: logs, moectl, the dashboard, /metrics, drain and
 * checkpoint file names all use it. A dead server's slot is pruned once its
 * experts have moved. A member the coordinator does not know (it restarted)
 * is answered MOE_ERR_UNREGISTERED and registers again; epochs stay
 * monotonic across such a restart (the coordinator continues above the
 * newest epoch its members report).
 *
 * Epochs (DESIGN §6): the cluster runs in numbered configurations. An epoch
 * is a placement of the experts on the live servers (compact indices
 * 0..n-1, sent with the endpoints) and the checkpoint it starts from (step
 * C, or a fresh start). Servers and workers ask for it with EPOCH_WAIT;
 * servers load their experts and say so (EPOCH_WAIT with LOADED); workers
 * get the configuration once every server of the epoch has loaded and every
 * worker is waiting, and all start at step C together. A new epoch begins:
 *  - at start (the newest committed checkpoint in checkpoint_dir, else fresh),
 *  - after a planned reconfiguration (a server joined, or one is drained): the
 *    statistics reply of a step tells the workers to checkpoint and stop after
 *    it; once that checkpoint is committed the new placement moves the fewest
 *    experts and starts from it, nothing rolled back,
 *  - after a failure (a server silent for heartbeat_timeout_ms, a worker or
 *    server reporting trouble, a worker restarting): everyone rolls back to
 *    the last committed checkpoint, the dead server's experts go to the
 *    survivors, and training replays; being deterministic, it ends with the
 *    same bytes as a run without the failure. The same failure repeating
 *    (more than max_rollbacks rollbacks to one checkpoint with no progress
 *    between them) stops the cluster instead: every member is told the
 *    cause (the sentence its reporter sent, e.g. a file that cannot be
 *    written) and exits non-zero; partial checkpoint folders are removed.
 *
 * Stopping: SIGTERM of the coordinator or of a worker, or of the last
 * server, checkpoints at the next step boundary and then tells everyone to
 * exit 0 (coord_request_stop). SIGTERM of one server of several drains it.
 *
 * Checkpoints: the statistics reply of step s may carry CHECKPOINT (every
 * checkpoint_every steps, at the last step, on demand, before a
 * reconfiguration). Workers pass it to the servers with their backward;
 * everyone writes its files into checkpoint_dir/step-S and reports
 * CHECKPOINT_DONE; when all have, the coordinator writes the manifest (with
 * every file's checksum), which commits the checkpoint, and prunes old ones.
 *
 * Statistics: each worker sends its Importance, Load and rows routed per
 * expert for a step; when every worker of the step is in, all of them get
 * the global vectors (rank-order sums, coord_stats.c). Every message is
 * validated; a bad one gets an MSG_ERROR reply and changes nothing. */
#ifndef COORD_H
#define COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord_stats.h"
#include "moe_metrics.h"
#include "moe_options.h"

typedef struct coord coord_t;

struct coord_member {
    bool used;              /* server slots: the slot holds a server (listed or registered) */
    bool registered, alive;
    bool ever_registered;   /* server: registered at some point (a dead one is pruned) */
    uint32_t id;            /* server: its id, stable for its lifetime (logs, moectl,
                             * dashboard, metrics, drain, checkpoint file names) */
    char endpoint[256];
    double last_seen;   /* seconds, monotonic clock */
    int64_t step;
    uint64_t messages, errors;
    /* expert servers, from their heartbeats */
    uint64_t rows_total, bytes_total, errors_total;
    uint64_t refused_total; /* connections the server refused (its heartbeats) */
    double latency_seconds, rows_per_sec;
    double rate_time;       /* when rows_per_sec was last computed */
    uint64_t rate_rows;
    /* epochs */
    int index;              /* server: index in the current epoch, -1 if none */
    uint32_t loaded_epoch;  /* server: last epoch it loaded */
    uint32_t waiting_epoch; /* worker: last epoch it asked for */
    uint32_t started_epoch; /* worker: last epoch it loaded and is ready to train in */
    bool draining;          /* server: to be removed at the next reconfiguration */
    bool ckpt_done;         /* wrote its files of the checkpoint in progress */
    char ckpt_file[128];    /* ... named this */
    bool told;              /* was told that the cluster stopped or failed */
    uint64_t incarnation;   /* of the process registered (the same again: not a restart) */
    double rival_since;     /* server: when another process began to claim its endpoint
                             * while it was alive (0: none); see coord_members.c */
    /* for /metrics: servers from their heartbeats, workers from their statistics */
    uint64_t bytes_in, bytes_out;     /* server: tensor bytes by direction */
    uint64_t reasons[MOE_REASONS];    /* server: rejected messages by reason */
    struct moe_hist compute;          /* server: compute seconds of each step */
    double cpu_seconds;               /* the process's CPU seconds */
    uint64_t rss_bytes;               /* ... and resident memory */
    uint64_t tokens_total;            /* worker: tokens trained (replayed steps again) */
    uint64_t beats_since_step;        /* server: heartbeats since a step last completed */
    char activity[32];      /* worker: what it does outside steps, from its heartbeats
                             * (COORD_ACTIVITY_*; "" none; cleared by its statistics) */
};

enum coord_phase {
    COORD_FORMING,  /* waiting for min_servers servers */
    COORD_LOADING,  /* servers loading the epoch's state, workers gathering */
    COORD_RUNNING,  /* training */
    COORD_FINISHED, /* every step done */
    COORD_STOPPED,  /* stopped by the operator (after a checkpoint when one was possible) */
};

/* Binds the ROUTER at cfg->coordinator and looks for the newest committed
 * checkpoint in cfg->checkpoint_dir. NULL with a sentence. Caller owns. */
coord_t *coord_new(const struct moe_options *cfg, char *err, size_t errlen);
void coord_destroy(coord_t **c);

/* The ROUTER socket, for the event loop. */
void *coord_socket(coord_t *c);

/* Receives and handles one message if there is one (non-blocking).
 * Returns 1 if one was handled, 0 if none was waiting. */
int coord_handle_one(coord_t *c, double now);

/* Handles frames as if they had arrived from the peer `identity`,
 * authenticated as `user_id` ("worker", "server"; "" none): the whole
 * decode-and-dispatch path without a network (tests, fuzzing). Replies go
 * to the socket, which drops them for an unknown peer. */
void coord_inject(coord_t *c, const void *const *frames, const size_t *sizes, int nframes,
                  const uint8_t *identity, size_t identity_len, const char *user_id, double now);

/* Whether the cluster's sockets run without CURVE (--insecure), and the
 * connections this coordinator refused (its guard's counts). */
bool coord_insecure(const coord_t *c);
void coord_refused(const coord_t *c, uint64_t *keys, uint64_t *handshakes, uint64_t *over_cap);

/* Marks members not heard from within heartbeat_timeout_ms as not alive; a
 * dead server of the running or loading epoch starts a rollback epoch. Also
 * forms the first epoch once enough servers registered. */
void coord_tick(coord_t *c, double now);

/* Operator requests (HTTP POST). Checkpoint: at the end of the next step
 * (MOE_ERR_STATE with a sentence if there is no checkpoint_dir or the
 * cluster is not training). Drain: the server with id `id` leaves at the
 * next step boundary, its experts moving to the others (MOE_ERR_NOTFOUND
 * for an unknown id, MOE_ERR_STATE when it is down or cannot be drained,
 * with a sentence). */
int coord_request_checkpoint(coord_t *c, char *err, size_t errlen);
int coord_request_drain(coord_t *c, uint64_t id, char *err, size_t errlen);

/* Stops the cluster cleanly (SIGTERM of the coordinator, of a worker, of
 * the last server): a checkpoint at the end of the next step when the
 * cluster trains and has a checkpoint_dir, then every member is told to
 * exit 0; at once otherwise, and when the cluster is stalled (no step may
 * come: a worker killed): it resumes from the last committed checkpoint.
 * `why` is logged. */
void coord_request_stop(coord_t *c, const char *why);
/* The same at once, without the checkpoint (a second signal): every member
 * is still told to exit 0. */
void coord_stop_now(coord_t *c, const char *why);

/* Whether the coordinator's work is over: the cluster stopped or failed and
 * every member has been told (or a grace period passed). *code is the exit
 * status (0 stopped, 1 failed) and why (may be NULL) the failure's sentence. */
bool coord_should_exit(const coord_t *c, double now, int *code, char *why, size_t cap);

/* The live members not yet told of the end ("server 1 (tcp://...), worker
 * 0"), into buf; returns how many. */
int coord_untold(const coord_t *c, char *buf, size_t cap);

/* The sentence of a failure the cluster cannot recover from, or NULL. */
const char *coord_failure(const coord_t *c);
/* Rollbacks so far. */
uint64_t coord_rollbacks(const coord_t *c);

const coord_stats_t *coord_stats(const coord_t *c);
int coord_n_servers(const coord_t *c); /* slots: iterate 0..n-1, skip those not `used` */
int coord_n_workers(const coord_t *c);
const struct coord_member *coord_server(const coord_t *c, int slot);
const struct coord_member *coord_worker(const coord_t *c, int r);
/* Id of the server holding expert e under the current placement (-1 before
 * the first epoch). */
int64_t coord_server_of(const coord_t *c, int e);
uint32_t coord_placement_version(const coord_t *c);
uint32_t coord_epoch(const coord_t *c);
enum coord_phase coord_phase(const coord_t *c);
int64_t coord_committed_step(const coord_t *c); /* -1: none */
/* The most heartbeats one live server sent since a step last completed
 * (since the coordinator started when none has), and whether that is at
 * least stall_heartbeats while the cluster is loading or running: the
 * step has not advanced (a rollback loop, a hung worker, a slow load). */
uint64_t coord_beats_since_step(const coord_t *c);
bool coord_stalled(const coord_t *c);
/* What a member is doing, one word: a server "serving", "loading",
 * "draining", "spare" (alive, not in the epoch), "registering" or "down"; a
 * worker "training", "waiting" (for the epoch's servers and the other
 * workers), "loading" (has not asked for the epoch yet: loading a checkpoint,
 * finishing a step), "validating" or "writing" (the final model: it said
 * so with its heartbeats), "done" (also once it said it finished, even
 * after it exited), "absent" (never registered) or "down". The cluster is
 * not stalled while a worker tells an activity. */
const char *coord_server_state(const coord_t *c, const struct coord_member *m);
/* A worker's activity outside its steps as it told it ("validating",
 * "writing the final model", "finished"), or NULL. */
const char *coord_worker_activity(const struct coord_member *m);
const char *coord_worker_state(const coord_t *c, const struct coord_member *m);
uint64_t coord_errors(const coord_t *c);

/* Changes whenever anything the renders below show may have changed (a
 * message handled, a member gone silent): renders of the same generation
 * are identical, so callers may cache them. */
uint64_t coord_generation(const coord_t *c);

/* Placement that moves the fewest experts: old[e] is the slot of expert e
 * (-1: none), live the slots to use (n_live >= 1, ascending). Every live
 * slot gets E / n_live experts or one more; an expert stays where it is
 * while its slot is live and under its share; the others go, in id order,
 * to the live slots under their share, in slot order. out[e] = slot. */
void coord_placement_compute(int E, const int32_t *old, const int *live, int n_live, int32_t *out);
/* The same for a hierarchical MoE (issue 17): groups of B experts (expert
 * i*B + j in group i) move as units and are never split. A group counts as
 * held by a slot when all its experts are there. B == 1 (or E not a
 * multiple of B) is coord_placement_compute. */
void coord_placement_compute_groups(int E, int B, const int32_t *old, const int *live, int n_live,
                                    int32_t *out);
/* With more live slots than units (groups, or experts) to place, keeps
 * `units` of them: first those holding something in old (n_old entries),
 * then the others, each in slot order; live stays ascending. Returns the
 * count kept (n_live when it is at most units). */
int coord_placement_live(int units, const int32_t *old, int n_old, int *live, int n_live);

/* Renders /api/v1/experts, /api/v1/cluster, /api/v1/history (JSON) and
 * /metrics (Prometheus text). Return a malloc'd NUL-terminated string, or
 * NULL. The history (coord_history.h) has one array per expert, one value
 * per column: the rows routed (load false) or the Load (load true) summed
 * over the column's steps. It changes only when a step is recorded:
 * coord_history_last_step(coord_stats_history(...)) may key a cache. */
char *coord_render_experts_json(const coord_t *c);
char *coord_render_cluster_json(const coord_t *c);
char *coord_render_history_json(const coord_t *c, bool load);
/* /metrics: the part that changes with the state (cached by the caller
 * until coord_generation changes); per-expert series when all_experts or
 * when n_experts <= metrics_max_experts, labelled expert, layer and
 * layer_expert. coord_render_metrics_live: the part rendered with every
 * scrape (process CPU and memory, ages, heartbeats since a step and the
 * stall), `now` on the coordinator's clock. Both NULL when out of memory. */
char *coord_render_metrics(const coord_t *c, bool all_experts);
char *coord_render_metrics_live(const coord_t *c, double now);

#endif
