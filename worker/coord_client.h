/* A worker's or expert server's link to the coordinator (DESIGN §3 step 4,
 * §7): registration, heartbeats and, for workers, the exchange of each
 * step's Importance, Load and rows routed for the global vectors. Every wait
 * is bounded by the timeout; an answer that does not come is an error naming
 * the coordinator, never a hang. Single-threaded. */
#ifndef COORD_CLIENT_H
#define COORD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct coord_client coord_client_t;

/* Connects a DEALER to `endpoint` as role 1 (worker `index`, routing id
 * "moe-worker-INDEX"), 2 (expert server serving on `served`, routing id
 * "moe-server@SERVED") or COORD_ROLE_SERVER_HEARTBEAT (that server's
 * heartbeat thread, "moe-heart@SERVED", speaking as role 2). zmq_ctx is
 * borrowed. NULL with a sentence. */
#define COORD_ROLE_SERVER_HEARTBEAT 4
coord_client_t *coord_client_new(void *zmq_ctx, const char *endpoint, int role, int index,
                                 const char *served, int n_experts, int64_t timeout_ms, char *err,
                                 size_t errlen);
void coord_client_destroy(coord_client_t **c);

/* Sends REGISTER (with `endpoint_served`, may be "") and waits for the
 * reply. 0 or a negative code with a sentence. */
int coord_client_register(coord_client_t *c, const char *endpoint_served, char *err,
                          size_t errlen);

/* Sends this worker's vectors of `step` (n_experts floats each) with its
 * loss and speed, waits for the global vectors (same layout) into g_imp,
 * g_load, g_rows; *flags (may be NULL) gets the coordinator's MOE_FLAG_*
 * for the end of this step (checkpoint, reconfigure). */
int coord_client_stats(coord_client_t *c, int64_t step, const float *imp, const float *load,
                       const float *rows, double loss, double tokens_per_sec, float *g_imp,
                       float *g_load, float *g_rows, uint32_t *flags, char *err, size_t errlen);

/* Sends a HEARTBEAT without waiting (servers call it from their loop),
 * with the server's counters: rows computed, tensor bytes moved, messages
 * rejected, mean compute seconds per step. */
int coord_client_heartbeat(coord_client_t *c, int64_t step, uint64_t rows, uint64_t bytes,
                           uint64_t errors, double latency, char *err, size_t errlen);

/* Receives and drops whatever the coordinator sent (heartbeat answers);
 * never blocks. */
void coord_client_drain(coord_client_t *c);

/* Epochs (see server/coord.h). Every message carries the client's epoch. */
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
    char *servers, *placement;     /* comma lists for moe_cluster_parse (malloc'd) */
};
void coord_epoch_free(struct coord_epoch *e);

/* One EPOCH_WAIT (flags MOE_FLAG_TROUBLE / MOE_FLAG_LOADED): the answer may
 * be MOE_FLAG_NOT_READY (ask again), DRAINED, FINISHED, or the epoch. */
int coord_client_epoch_wait(coord_client_t *c, int64_t step, uint32_t flags,
                            struct coord_epoch *out, char *err, size_t errlen);

/* Reports this member's file (a name inside the checkpoint's folder) of the
 * checkpoint of `step`; waits for the acknowledgement. */
int coord_client_checkpoint_done(coord_client_t *c, int64_t step, const char *file, char *err,
                                 size_t errlen);

#endif
