/* The expert-server daemon's core (moe-server process): owns a shard of
 * experts and their factored-Adam state, serves forward and backward
 * requests of every worker of a step over a ROUTER socket, and applies the
 * update once the step's last backward is in (DESIGN §3).
 *
 * Step protocol, per step s: every worker sends one EXPERT_FORWARD (its rows
 * for this server's experts, possibly none); when all have arrived, the
 * rows of each expert are assembled in worker-rank order (= global row
 * order), computed with the shared expert code, and each worker gets its
 * outputs. Then every worker sends one EXPERT_BACKWARD with the same layout;
 * when all are in, the server replies the input gradients, applies the
 * update of step s+1 and moves to step s+1. So a forward of step s+1 never
 * sees half-updated experts. Evaluation forwards (header.eval) are answered
 * at once and change nothing. Every message is validated first; a bad one
 * gets an MSG_ERROR reply with a code and a sentence, is counted, and
 * changes no state. Single-threaded. */
#ifndef EXPERT_SERVER_H
#define EXPERT_SERVER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "moe_options.h"

typedef struct expert_server expert_server_t;

/* Creates the shard (experts of cfg->server_index under the placement),
 * binds the ROUTER socket. NULL with a sentence in err. Caller owns. */
expert_server_t *expert_server_new(const struct moe_options *cfg, char *err, size_t errlen);

/* Serves until it should stop, and returns 0 or a negative code (with a
 * sentence in expert_server_exit_reason). *stop counts the SIGTERM/SIGINT
 * received. Without a coordinator, the first finishes the step in progress
 * (or gives up after the timeout) and returns 0. With one, the first asks
 * the coordinator to drain this server: it serves on until its experts have
 * moved, then returns 0 (the last server of a cluster stops the cluster,
 * after a checkpoint). It also returns when the coordinator says the
 * cluster stopped (0) or failed (MOE_ERR_FAILED, with the coordinator's
 * sentence), or stays silent longer than coordinator_wait_s. */
int expert_server_run(expert_server_t *s, volatile sig_atomic_t *stop);

/* Where it serves (the endpoint workers reach), and its id: from the
 * coordinator, or --server-index without one. */
const char *expert_server_endpoint(const expert_server_t *s);
int64_t expert_server_id(const expert_server_t *s);

/* Why expert_server_run returned non-zero ("" otherwise). */
const char *expert_server_exit_reason(const expert_server_t *s);

/* Writes the shard (parameters, factored-Adam state, step) as safetensors
 * at path, atomically. 0 or a negative code with a sentence. */
int expert_server_write_shard(expert_server_t *s, const char *path, char *err, size_t errlen);

/* Steps completed and messages rejected so far. */
int64_t expert_server_step(const expert_server_t *s);
int64_t expert_server_errors(const expert_server_t *s);

/* Handles frames as if they had arrived on the socket from the peer
 * `identity`, authenticated as `user_id` ("worker", ...; "" none): the
 * whole decode-and-dispatch path without a network (tests, fuzzing).
 * Replies go to the socket, which drops them for an unknown peer. */
void expert_server_inject(expert_server_t *s, const void *const *frames, const size_t *sizes,
                          int nframes, const uint8_t *identity, size_t identity_len,
                          const char *user_id);

void expert_server_destroy(expert_server_t **s);

#endif
