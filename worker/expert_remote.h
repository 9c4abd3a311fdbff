/* The remote expert backend (worker process): experts live on expert
 * servers. Each training forward and backward sends exactly one message to
 * every server (rows for its experts, possibly none, so that every step is
 * acknowledged), all servers in flight at once, and waits for every reply
 * up to a timeout. A server that does not answer, or answers an error,
 * gives an error naming it; never a hang. The update is applied by the
 * servers themselves when a step's last backward is in. */
#ifndef EXPERT_REMOTE_H
#define EXPERT_REMOTE_H

#include <stddef.h>
#include <stdint.h>

#include "expert_shard.h"
#include "hmoe_group.h"
#include "moe.pb-c.h"
#include "moe_cluster.h"
#include "moe_guard.h"
#include "moe_layer.h"

typedef struct expert_remote expert_remote_t;

/* Connects a DEALER (routing id "moe-worker-<rank>") to every server of the
 * cluster (borrowed; must outlive the backend). zmq_ctx and net (keys and
 * guard; NULL: plain sockets) are borrowed. row0 is
 * sent with every message. NULL with a sentence in err. */
expert_remote_t *expert_remote_new(void *zmq_ctx, const struct moe_net *net,
                                   const struct moe_cluster *cl, int rank, int D,
                                   int64_t timeout_ms, Moe__DType dtype, size_t max_bytes,
                                   char *err, size_t errlen);
void expert_remote_destroy(expert_remote_t **r);

/* Fills `b` with the backend over r; row0 is the global index of this
 * worker's first row, sent in the headers. */
void expert_remote_backend(struct moe_backend *b, expert_remote_t *r);
void expert_remote_set_row0(expert_remote_t *r, int64_t row0);
/* A model with several MoE layers (the translation model): the backend of
 * layer `layer` (< EXPERT_REMOTE_LAYERS) over r, whose training forwards
 * and backwards carry that layer in their headers (the servers' step
 * barrier takes each layer's calls in turn); ids are global. */
#define EXPERT_REMOTE_LAYERS 2
void expert_remote_backend_layer(struct moe_backend *b, expert_remote_t *r, int layer);
/* The epoch stamped on every message, and the flags of the next backwards
 * (MOE_FLAG_CHECKPOINT: the servers write their shards after the step). */
void expert_remote_set_epoch(expert_remote_t *r, uint32_t epoch);
void expert_remote_set_backward_flags(expert_remote_t *r, uint32_t flags);

/* Tensor payload bytes sent and received by training forwards and
 * backwards so far (headers excluded). */
uint64_t expert_remote_wire_bytes(const expert_remote_t *r);

/* Copies parameters and optimizer state of every expert of `dst` (a shard
 * with the same D, H) from the servers that own them, and checks that they
 * are those after `step` steps (MOE_ERR_STATE otherwise). It asks for
 * expert_remote_fetch_chunk(D, H) experts at a time (about
 * EXPERT_REMOTE_FETCH_BYTES of replies), so that neither the worker nor a
 * server holds a second copy of a whole shard: a server's share of
 * MoE-4096 is 8.6 GB. */
#define EXPERT_REMOTE_FETCH_BYTES ((size_t)64 << 20)
int expert_remote_fetch_chunk(int D, int H);
int expert_remote_fetch(expert_remote_t *r, expert_shard_t *dst, int64_t step, char *err,
                        size_t errlen);

/* The same for a hierarchical MoE's groups (their secondary gates and
 * factored-Adam state, width D, B experts per group) into dst. */
int expert_remote_fetch_groups(expert_remote_t *r, hmoe_groups_t *dst, int D, int B,
                               int64_t step, char *err, size_t errlen);

#endif
