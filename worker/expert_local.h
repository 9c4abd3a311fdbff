/* The in-process expert backend (worker process): every expert lives in one
 * expert_shard in this process, computed by the same code the expert
 * server runs (DESIGN §4). */
#ifndef EXPERT_LOCAL_H
#define EXPERT_LOCAL_H

#include "expert_shard.h"
#include "hmoe_group.h"
#include "moe_layer.h"

/* Fills `b` with a backend over `shard` (borrowed; must outlive b). */
void expert_local_backend(struct moe_backend *b, expert_shard_t *shard);

/* A hierarchical MoE's in-process groups: their gates (all A groups) and
 * the shard of their experts, both borrowed; ex: the experts' calls
 * (hmoe_experts_of_shard(shard) when left zero; tests put others). */
struct expert_local {
    expert_shard_t *shard;
    hmoe_groups_t *groups;
    struct hmoe_experts ex;
};
/* Fills `b` with a backend over l (borrowed; must outlive b): the experts'
 * calls as expert_local_backend's, the groups' through hmoe_group.h with
 * this process's rows as the one part; apply updates the experts and the
 * secondary gates. */
void expert_local_group_backend(struct moe_backend *b, struct expert_local *l);

#endif
