/* A worker's or expert server's link to the coordinator (DESIGN §3 step 4,
 * §6, §7): registration with the training configuration, heartbeats and,
 * for workers, the exchange of each step's Importance, Load and rows routed
 * for the global vectors.
 *
 * Every wait is bounded by the timeout and logged every few seconds with
 * what it waits for; an answer that does not come is MOE_ERR_IO naming the
 * coordinator, never a silent hang. When the coordinator answers that it
 * does not know this process (it restarted), the client registers again
 * with what it registered the first time and repeats the request once.
 * Answers that end the run come back as MOE_ERR_STOPPED (the operator
 * stopped the cluster: exit 0) or MOE_ERR_FAILED (the cluster stopped on a
 * failure: exit non-zero with the sentence in err). Single-threaded. */
#ifndef COORD_CLIENT_H
#define COORD_CLIENT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe_guard.h"
#include "moe_metrics.h"

typedef struct coord_client coord_client_t;

/* Connects a DEALER to `endpoint` as role 1 (worker `index`, routing id
 * "moe-worker-INDEX/INC"), 2 (expert server serving on `served`, routing id
 * "moe-server/INC@SERVED") or COORD_ROLE_SERVER_HEARTBEAT (that server's
 * heartbeat thread, "moe-heart/INC@SERVED", speaking as role 2); INC is a
 * random 64-bit number of this process (the same for all its clients) in
 * 16 hex digits. zmq_ctx and net
 * (the process's keys and guard; NULL: plain) are borrowed. NULL with a
 * sentence. */
#define COORD_ROLE_SERVER_HEARTBEAT 4

/* The process's count of SIGTERM/SIGINT, set once by a program's main
 * (NULL, the default: none). Once it is non-zero, a wait of any client for
 * the coordinator (to send, or for an answer, registration included) that
 * has lasted as long as the interval of its "waiting" lines (a quarter of
 * the client's timeout, at most 5 s) ends with MOE_ERR_STOPPED and a
 * sentence naming the
 * coordinator, instead of running on to the timeout and asking again: a
 * process whose coordinator is down or unreachable stops when told to. */
void coord_client_stop_on_signal(const volatile sig_atomic_t *count);
coord_client_t *coord_client_new(void *zmq_ctx, const struct moe_net *net, const char *endpoint,
                                 int role, int index,
                                 const char *served, int n_experts, int64_t timeout_ms, char *err,
                                 size_t errlen);
void coord_client_destroy(coord_client_t **c);

/* Sends REGISTER with the endpoint served ("" for workers) and the
 * training configuration (moe_options_contract text, copied), and waits for the
 * reply, asking again while the coordinator cannot be reached or answers
 * MOE_ERR_AGAIN (it is still deciding: every 0.2 s), for at most
 * `patience_s` seconds. A server that already has an id (it registered
 * before) claims it. 0, MOE_ERR_CONFIG (the configuration differs: the
 * sentence names the keys), or another negative code with a sentence. */
int coord_client_register(coord_client_t *c, const char *endpoint_served, const char *contract,
                          int64_t patience_s, char *err, size_t errlen);

/* After a server's registration: its id, and the cluster's worker list
 * (the coordinator's --workers; "" for one worker). */
uint32_t coord_client_id(const coord_client_t *c);
const char *coord_client_workers(const coord_client_t *c);

/* Sends this worker's vectors of `step` (n_experts floats each) with its
 * loss and speed, waits for the global vectors (same layout) into g_imp,
 * g_load, g_rows; *flags (may be NULL) gets the coordinator's MOE_FLAG_*
 * for the end of this step (checkpoint, reconfigure, stop). req_flags:
 * MOE_FLAG_STOP asks the coordinator to stop the cluster after a
 * checkpoint. */
int coord_client_stats(coord_client_t *c, int64_t step, const float *imp, const float *load,
                       const float *rows, double loss, double tokens_per_sec, uint64_t tokens,
                       uint32_t req_flags,
                       float *g_imp, float *g_load, float *g_rows, uint32_t *flags, char *err,
                       size_t errlen);

/* The same with the vectors in one row of `width` floats (Importance |
 * Load | rows, then a hierarchical MoE's per-group factors of Load_H), the
 * global row into g_row (may be row). */
int coord_client_stats_row(coord_client_t *c, int64_t step, const float *row, size_t width,
                           double loss, double tokens_per_sec, uint64_t tokens, uint32_t req_flags,
                           float *g_row, uint32_t *flags, char *err, size_t errlen);

/* A server's counters in a heartbeat: rows computed, tensor bytes moved
 * (in + out, and each direction), messages rejected (and by reason,
 * moe_reason_index), connections refused, mean compute seconds per step and
 * the histogram of each step's compute seconds (moe_hist_step_bounds; NULL:
 * none). The process's CPU seconds and resident memory are added here. */
struct coord_heartbeat {
    int64_t step;
    uint64_t rows, bytes, errors, refused;
    double latency;
    uint64_t bytes_in, bytes_out;
    const uint64_t *errors_by_reason; /* MOE_REASONS counts, or NULL */
    const struct moe_hist *compute;
    const char *activity; /* a worker's: what it does outside steps (below), NULL: none */
};

/* What a worker does outside its steps, told with its heartbeats (the
 * coordinator shows it in moectl status, /api/v1/cluster and the
 * dashboard, and does not call the cluster stalled meanwhile). */
#define COORD_ACTIVITY_VALIDATING "validating"
#define COORD_ACTIVITY_WRITING "writing the final model"
#define COORD_ACTIVITY_FINISHED "finished" /* its last word: it exits next */

/* A worker's activity, told every 0.5 s by a thread until
 * coord_client_activity_end (which tells `next`, NULL: nothing, and waits
 * up to 0.5 s for its answer, so that a last word reaches the coordinator
 * before the process exits). Between the two calls the client is the
 * thread's: the caller must not use it. 0, or MOE_ERR_IO when the thread
 * cannot start (nothing is told then). */
int coord_client_activity_begin(coord_client_t *c, int64_t step, const char *what);
void coord_client_activity_end(coord_client_t *c, const char *next);

/* Sends a HEARTBEAT without waiting (servers call it from their heartbeat
 * thread). An unreachable coordinator is not an error here (see
 * coord_client_silence). */
int coord_client_heartbeat(coord_client_t *c, const struct coord_heartbeat *hb, char *err,
                           size_t errlen);

/* Receives and handles whatever the coordinator sent to a heartbeat
 * socket; never blocks. What it said shows in the getters below. */
void coord_client_drain(coord_client_t *c);

/* What heartbeat answers said: the coordinator does not know this server
 * (it restarted: register again; reading it clears it), the operator
 * stopped the cluster, or the cluster failed (with its sentence). */
bool coord_client_take_unregistered(coord_client_t *c);
bool coord_client_stopped(const coord_client_t *c);
const char *coord_client_failure(const coord_client_t *c); /* NULL: none */

/* Seconds since the coordinator last answered anything (0 before the first
 * request). */
double coord_client_silence(const coord_client_t *c);

/* Epochs (see server/coordinator/coord.h). Every message carries the client's epoch. */
void coord_client_set_epoch(coord_client_t *c, uint32_t epoch);
uint32_t coord_client_epoch(const coord_client_t *c);
/* The newest epoch any coordinator reply mentioned (heartbeat acks too):
 * above ours means the cluster moved on. */
uint32_t coord_client_seen_epoch(const coord_client_t *c);

struct coord_epoch {
    uint32_t epoch, flags, placement_version; /* flags: MOE_FLAG_* of moe_wire.h */
    int64_t step;                  /* checkpoint step to start from */
    int index;                     /* expert server: its index in the epoch */
    char checkpoint[4096];         /* folder to load ("" = fresh) */
    char note[256];                /* NOT_READY: what the cluster waits for */
    char *servers, *placement;     /* comma lists for moe_cluster_parse (malloc'd) */
};
void coord_epoch_free(struct coord_epoch *e);

/* One EPOCH_WAIT (flags MOE_FLAG_TROUBLE / MOE_FLAG_LOADED; with TROUBLE,
 * `why` is the failure's sentence, which the coordinator logs and names if
 * the failure keeps repeating): the answer may be MOE_FLAG_NOT_READY (ask
 * again; `note` says what the cluster waits for), DRAINED, FINISHED, or the
 * epoch. A worker that loaded its epoch asks with LOADED and gets the same
 * epoch back once every worker has: the start barrier. */
int coord_client_epoch_wait(coord_client_t *c, int64_t step, uint32_t flags, const char *why,
                            struct coord_epoch *out, char *err, size_t errlen);

/* LEAVE: a server asks to be drained, a worker to stop the cluster (both
 * after a SIGTERM). *flags gets the answer's flags (MOE_FLAG_STOP: exit
 * now) and `said` (may be NULL) its sentence. */
int coord_client_leave(coord_client_t *c, int64_t step, uint32_t *flags, char *said,
                       size_t saidlen, char *err, size_t errlen);

/* Reports this member's file (a name inside the checkpoint's folder) of the
 * checkpoint of `step`; waits for the acknowledgement. */
int coord_client_checkpoint_done(coord_client_t *c, int64_t step, const char *file, char *err,
                                 size_t errlen);

#endif
