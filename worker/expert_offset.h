/* An expert backend that adds a fixed offset to the expert ids of another
 * (worker process): a model with several MoE layers gives each layer's
 * experts their own global ids (the translation model's decoder experts
 * are E .. 2E-1) while every MoE layer numbers its experts from 0. */
#ifndef EXPERT_OFFSET_H
#define EXPERT_OFFSET_H

#include <stdint.h>

#include "moe_layer.h"

struct expert_offset {
    struct moe_backend inner;
    int32_t offset;
    int32_t *ids; /* (E) the translated ids of one call */
    int E;
};

/* Fills o and b: b calls `inner` with ids + offset (ids < E). 0 or
 * MOE_ERR_NOMEM; o owns a buffer freed by expert_offset_free, and must
 * outlive b. */
int expert_offset_init(struct expert_offset *o, struct moe_backend *b,
                       const struct moe_backend *inner, int32_t offset, int E);
void expert_offset_free(struct expert_offset *o);

#endif
