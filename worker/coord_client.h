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

/* Connects a DEALER to `endpoint` with routing id "<role>-<index>" (role 1:
 * "moe-worker", 2: "moe-server"). zmq_ctx is borrowed. NULL with a sentence. */
coord_client_t *coord_client_new(void *zmq_ctx, const char *endpoint, int role, int index,
                                 int n_experts, int64_t timeout_ms, char *err, size_t errlen);
void coord_client_destroy(coord_client_t **c);

/* Sends REGISTER (with `endpoint_served`, may be "") and waits for the
 * reply. 0 or a negative code with a sentence. */
int coord_client_register(coord_client_t *c, const char *endpoint_served, char *err,
                          size_t errlen);

/* Asks for the placement until every expert server has registered (or the
 * timeout passes): writes the servers' endpoints, comma-separated, into
 * servers and the server of each expert, comma-separated, into placement.
 * 0 or a negative code with a sentence. */
int coord_client_placement(coord_client_t *c, char *servers, size_t servers_cap,
                           char *placement, size_t placement_cap, char *err, size_t errlen);

/* Sends this worker's vectors of `step` (n_experts floats each) with its
 * loss and speed, waits for the global vectors (same layout) into g_imp,
 * g_load, g_rows. */
int coord_client_stats(coord_client_t *c, int64_t step, const float *imp, const float *load,
                       const float *rows, double loss, double tokens_per_sec, float *g_imp,
                       float *g_load, float *g_rows, char *err, size_t errlen);

/* Sends a HEARTBEAT without waiting (servers call it from their loop),
 * with the server's counters: rows computed, tensor bytes moved, messages
 * rejected, mean compute seconds per step. */
int coord_client_heartbeat(coord_client_t *c, int64_t step, uint64_t rows, uint64_t bytes,
                           uint64_t errors, double latency, char *err, size_t errlen);

/* Receives and drops whatever the coordinator sent (heartbeat answers);
 * never blocks. */
void coord_client_drain(coord_client_t *c);

#endif
