/* A shard of experts: their parameters, gradients and factored-Adam state,
 * keyed by global expert id (DESIGN §2, §6). Used unchanged by the worker's
 * in-process expert backend and by the expert-server daemon.
 *
 * A step is: expert_shard_forward() on a macro-batch (rows grouped by expert,
 * in canonical row order), expert_shard_backward() on the gradients of the
 * same layout, then expert_shard_apply() once every contribution is in.
 * The shard keeps the forward inputs it needs until the backward. Buffers
 * grow only when a batch larger than any before arrives. Not thread-safe. */
#ifndef EXPERT_SHARD_H
#define EXPERT_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "expert_ffn.h"
#include "moe_optim.h"

typedef struct expert_shard expert_shard_t;

/* Creates a shard holding experts `ids` (n, distinct, any order) of width
 * D and hidden H, initialised from `seed` by name (moe.experts.E.w1.weight
 * ...) so that an expert's initial values do not depend on its shard.
 * Caller owns; NULL on bad arguments or allocation failure. */
expert_shard_t *expert_shard_new(int D, int H, int n, const int32_t *ids, uint64_t seed,
                                 const struct moe_fadam_opts *opts);
/* keep_grads false: no gradient kept per expert (half the memory), for
 * shards updated only with expert_shard_backward_apply. */
expert_shard_t *expert_shard_new_ex(int D, int H, int n, const int32_t *ids, uint64_t seed,
                                    const struct moe_fadam_opts *opts, bool keep_grads);
void expert_shard_destroy(expert_shard_t **s);

/* Bytes expert_shard_new_ex allocates for n experts (parameters, factored
 * Adam state, gradients), without allocating: a size check before it.
 * Per-step caches come on top: rows x (D + H) floats for a step's rows plus
 * R x H for its largest expert's R rows; with recompute rows x D + 2 R x H. */
double expert_shard_bytes(int D, int H, int n, bool keep_grads);

/* Activation recomputation (--recompute experts, DESIGN §10): the forward
 * keeps only its inputs, and the backward computes each expert's hidden
 * activations again (expert_ffn_hidden) just before its gradient, so the
 * shard holds a step's rows x D floats instead of rows x (D + H). The
 * results are the same bits. Off by default; set it between steps. */
void expert_shard_set_recompute(expert_shard_t *s, bool recompute);
bool expert_shard_recompute(const expert_shard_t *s);

/* A model with several MoE layers whose experts share a shard (an expert
 * server of the translation model holds encoder and decoder experts):
 * each layer's forward keeps its own cache until that layer's backward.
 * expert_shard_set_layer selects the cache that the next forward fills and
 * the next backward reads (layer 0 when never called). 0, or
 * MOE_ERR_RANGE for a layer outside 0 .. EXPERT_SHARD_LAYERS-1. */
#define EXPERT_SHARD_LAYERS 2
int expert_shard_set_layer(expert_shard_t *s, int layer);

int expert_shard_count(const expert_shard_t *s);
/* Width D and hidden size H of the shard's experts. */
void expert_shard_dims(const expert_shard_t *s, int *D, int *H);
/* Global id of the i-th local expert (ids are kept sorted ascending). */
int32_t expert_shard_id(const expert_shard_t *s, int i);
/* Local index of global id, or -1. */
int expert_shard_find(const expert_shard_t *s, int32_t id);

/* Parameter block (w1|b1|w2|b2, expert_ffn_param_count floats), gradient
 * block and optimizer state (fadam: w1 H+D, b1 H, w2 D+H, b2 D floats) of
 * the i-th local expert, and its optimizer step count. Mutable: used by
 * checkpoints and migration. */
float *expert_shard_params(expert_shard_t *s, int i);
float *expert_shard_grads(expert_shard_t *s, int i);
float *expert_shard_opt_state(expert_shard_t *s, int i);
int64_t *expert_shard_opt_step(expert_shard_t *s, int i);
size_t expert_shard_opt_state_size(const expert_shard_t *s);

/* Forward of a macro-batch: for e < n, rows[e] rows of experts ids[e] lie
 * consecutively in x (sum rows, D); outputs go to y in the same layout.
 * Keeps x and the hidden activations for the next backward. Returns 0,
 * MOE_ERR_NOTFOUND for an id not in the shard, MOE_ERR_RANGE for a
 * negative count, MOE_ERR_NOMEM. On error nothing is cached or changed. */
int expert_shard_forward(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                         const float *x, float *y);

/* Forward for evaluation: the same math, nothing cached (the training
 * cache of the current step is left alone). Same errors. */
int expert_shard_infer(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                       const float *x, float *y);

/* Backward for the batch of the last forward: the same (n, ids, rows) or
 * MOE_ERR_STATE. dy holds gradients of y (already multiplied by gates);
 * writes dx and accumulates weight gradients. */
int expert_shard_backward(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                          const float *dy, float *dx);

/* Applies factored Adam at 1-based step t with learning rate lr to every
 * expert that had a backward since its last update, then zeroes their
 * gradients and drops the forward cache. An expert with no rows costs
 * nothing: with a zero gradient its parameters would not move and only its
 * second moments decay; those decays are replayed, bit for bit, when it is
 * next updated or flushed. So results equal updating every expert every
 * step. */
void expert_shard_apply(expert_shard_t *s, int64_t t, double lr);

/* Backward and update in one pass, expert by expert: each expert's input
 * gradient is computed with its parameters before the update, then its
 * weight gradients (in one scratch buffer) are applied at step t and
 * dropped. Bitwise the same as expert_shard_backward + expert_shard_apply
 * when this batch holds every contribution of the step. */
int expert_shard_backward_apply(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                                const float *dy, float *dx, int64_t t, double lr);

/* expert_shard_backward_apply in two halves, with the same bits: the input
 * gradients dx of every expert (keeping each row's dz), then the weight
 * gradients and the update at step t of each expert, which drops the
 * forward cache. A server answers with dx between the two, so that the
 * second half overlaps the worker's work. Not with recompute (the hidden
 * activations are not kept): expert_shard_can_split_backward says. The
 * batch is the cached forward's, or MOE_ERR_STATE; dy must be the same
 * (unchanged) in both calls. MOE_ERR_NOMEM when dz cannot be kept. */
bool expert_shard_can_split_backward(const expert_shard_t *s);
int expert_shard_backward_input(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                                const float *dy, float *dx);
int expert_shard_backward_finish(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                                 const float *dy, int64_t t, double lr);

/* Brings every expert's optimizer state up to step `step` (the pending
 * decays): call before reading the state (checkpoints, fetches); the
 * expert_shard_opt_step of each is then `step`. */
void expert_shard_flush(expert_shard_t *s, int64_t step);

void expert_shard_zero_grad(expert_shard_t *s);

/* The four tensors of an expert in checkpoints and on the wire, in block
 * order: 0 w1.weight (H,D), 1 w1.bias (H), 2 w2.weight (D,H), 3 w2.bias (D).
 * Fills the name suffix ("w1.weight"), ndim, shape and the floats of its
 * factored-Adam state (rows + cols for matrices, length for vectors). */
#define EXPERT_PARTS 4
void expert_shard_part(int part, int D, int H, const char **suffix, int *ndim, int64_t shape[2],
                       size_t *state_floats);
/* The checkpoint name of part `part` of expert `id`
 * ("moe.experts.ID.w1.weight"), with ".fadam" for its optimizer state. */
void expert_shard_tensor_name(char *buf, size_t cap, int32_t id, int part, bool fadam);
/* The naming of a hierarchical MoE's experts (issue 17): with
 * experts_per_group B > 0, expert id is expert id % B of group id / B and
 * its tensors are "moe.groups.I.experts.J.w1.weight" ... (their
 * initialisation follows the names); 0 (the default) gives the flat
 * names. One setting per process, from its model's configuration, made
 * before any shard is created or named. */
void expert_shard_set_group_size(int experts_per_group);
int expert_shard_group_size(void);
/* The expert of a tensor name in this naming: 1 and *id for
 * "moe.experts.ID.<part>" (flat) or "moe.groups.I.experts.J.<part>"
 * (hierarchical, id I*B + J); 0 for a name of no expert; -1 for a
 * malformed id (leading zeros, J >= B) or a name of the other naming. */
int expert_shard_parse_name(const char *name, long *id);

#endif
