/* The in-process expert backend (worker process): every expert lives in one
 * expert_shard in this process, computed by the same code the expert
 * server runs (DESIGN §4). */
#ifndef EXPERT_LOCAL_H
#define EXPERT_LOCAL_H

#include "expert_shard.h"
#include "moe_layer.h"

/* Fills `b` with a backend over `shard` (borrowed; must outlive b). */
void expert_local_backend(struct moe_backend *b, expert_shard_t *shard);

#endif
