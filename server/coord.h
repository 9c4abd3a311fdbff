/* The coordinator's state and message handling (moe-coordinator process),
 * independent of the event loop that feeds it: coord_main.c runs it under
 * libuv (ZeroMQ through moe_zloop, HTTP through coord_http).
 *
 * Membership: expert servers register with the endpoint they serve on
 * (their routing id is "moe-server@ENDPOINT"), workers with their rank
 * ("moe-worker-R"); both send heartbeats. A server's slot (its index in the
 * monitoring pages) is fixed for the coordinator's lifetime.
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
 *    same bytes as a run without the failure.
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
#include "trainer.h"

typedef struct coord coord_t;

struct coord_member {
    bool registered, alive;
    char endpoint[256];
    double last_seen;   /* seconds, monotonic clock */
    int64_t step;
    uint64_t messages, errors;
    /* expert servers, from their heartbeats */
    uint64_t rows_total, bytes_total, errors_total;
    double latency_seconds, rows_per_sec;
    double rate_time;       /* when rows_per_sec was last computed */
    uint64_t rate_rows;
    /* epochs */
    int index;              /* server: index in the current epoch, -1 if none */
    uint32_t loaded_epoch;  /* server: last epoch it loaded */
    uint32_t waiting_epoch; /* worker: last epoch it asked for */
    bool draining;          /* server: to be removed at the next reconfiguration */
    bool ckpt_done;         /* wrote its files of the checkpoint in progress */
    char ckpt_file[128];    /* ... named this */
};

enum coord_phase {
    COORD_FORMING,  /* waiting for min_servers servers */
    COORD_LOADING,  /* servers loading the epoch's state, workers gathering */
    COORD_RUNNING,  /* training */
    COORD_FINISHED, /* every step done */
};

/* Binds the ROUTER at cfg->coordinator and looks for the newest committed
 * checkpoint in cfg->checkpoint_dir. NULL with a sentence. Caller owns. */
coord_t *coord_new(const struct trainer_config *cfg, char *err, size_t errlen);
void coord_destroy(coord_t **c);

/* The ROUTER socket, for the event loop. */
void *coord_socket(coord_t *c);

/* Receives and handles one message if there is one (non-blocking).
 * Returns 1 if one was handled, 0 if none was waiting. */
int coord_handle_one(coord_t *c, double now);

/* Marks members not heard from within heartbeat_timeout_ms as not alive; a
 * dead server of the running or loading epoch starts a rollback epoch. Also
 * forms the first epoch once enough servers registered. */
void coord_tick(coord_t *c, double now);

/* Operator requests (HTTP POST). Checkpoint: at the end of the next step
 * (MOE_ERR_STATE with a sentence if there is no checkpoint_dir or the
 * cluster is not training). Drain: server slot `slot` leaves at the next
 * step boundary, its experts moving to the others. */
int coord_request_checkpoint(coord_t *c, char *err, size_t errlen);
int coord_request_drain(coord_t *c, int slot, char *err, size_t errlen);

const coord_stats_t *coord_stats(const coord_t *c);
int coord_n_servers(const coord_t *c); /* slots */
int coord_n_workers(const coord_t *c);
const struct coord_member *coord_server(const coord_t *c, int i);
const struct coord_member *coord_worker(const coord_t *c, int r);
/* Server slot of expert e under the current placement (-1 before the first epoch). */
int coord_server_of(const coord_t *c, int e);
uint32_t coord_placement_version(const coord_t *c);
uint32_t coord_epoch(const coord_t *c);
enum coord_phase coord_phase(const coord_t *c);
int64_t coord_committed_step(const coord_t *c); /* -1: none */
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

/* Renders /api/v1/experts, /api/v1/cluster (JSON) and /metrics
 * (Prometheus text). Return a malloc'd NUL-terminated string, or NULL. */
char *coord_render_experts_json(const coord_t *c);
char *coord_render_cluster_json(const coord_t *c);
char *coord_render_metrics(const coord_t *c);

#endif
