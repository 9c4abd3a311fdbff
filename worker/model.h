/* The MoE language model of one worker (DESIGN §2), assembled from layers
 * (layer.h):
 *
 *   tokens -> Embedding(V,D) -> LSTM(D) -> MoE(E experts, top K, hidden H)
 *          -> LSTM(D) -> Softmax(V)
 *
 * The model is a list of blocks, each a layer whose output gets dropout
 * and (option `residual`) a residual add of the block's input, as in the
 * paper's Appendix C (not the embedding's), then the output layer. The MoE
 * is applied convolutionally: all B*T rows of the unroll form one
 * macro-batch; its output optionally goes through a sigmoid first.
 *
 * A training step is model_forward() -> (global Importance/Load from every
 * worker) -> model_backward() -> optimizer -> model_carry_state(). Dense
 * parameters live in the layers; experts live behind a moe_backend. Buffers
 * are allocated once by model_new(); steps never allocate. Single-threaded
 * use. */
#ifndef MODEL_H
#define MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "expert_shard.h"
#include "layer.h"
#include "moe_layer.h"
#include "moe_options.h"
#include "moe_tensor.h"

struct model_config {
    int V, D, H, E, K;
    /* hierarchical MoE (hmoe_layer.h): A groups of B experts (E = A*B),
     * K1 groups per row, K experts per row within a group */
    bool hierarchical;
    int A, B, K1;
    bool residual, moe_sigmoid;
    double dropout;
    double w_importance, w_load;
    uint64_t seed;
    int B_max, T_max; /* largest batch the buffers must hold */
    bool recompute_lstm; /* the LSTMs recompute gates and cells in backward
                            (--recompute all; the same bits) */
};

/* One batch: B sequences of T tokens, b-major; row0 = global index of
 * row 0 (b*T + t over the global batch); n_global = rows of the global
 * batch (the cross-entropy is averaged over it). */
struct model_batch {
    int B, T;
    const int32_t *tok, *tgt;
    int64_t row0, n_global;
};

/* The model of a configuration, for V words and batches up to B_max x
 * T_max. */
struct model_config model_config_from_options(const struct moe_options *c, int V, int B_max,
                                              int T_max);

/* Experts 0..n-1 of a configuration (its factored-Adam options; keep_grads
 * as expert_shard_new_ex), freshly initialised from its seed; NULL when out
 * of memory. */
expert_shard_t *model_experts_from_options(const struct moe_options *c, int n, bool keep_grads);
/* The same for experts first .. first+n-1 (a model with several MoE
 * layers gives each layer's experts their own ids). */
expert_shard_t *model_experts_range(const struct moe_options *c, int32_t first, int n,
                                    bool keep_grads);

typedef struct model model_t;

/* Most dense parameters a model has (arrays of per-parameter state). */
#define MODEL_MAX_PARAMS 1024

/* Allocates the model, initialises dense parameters from cfg->seed by name
 * (moe.w_gate and moe.w_noise start at zero, as in the paper). `backend`
 * is copied; its ctx is borrowed. NULL on bad sizes or no memory. */
model_t *model_new(const struct model_config *cfg, const struct moe_backend *backend);
/* Replaces the expert backend (a new placement). */
void model_set_backend(model_t *m, const struct moe_backend *backend);
void model_destroy(model_t **m);

/* Dense parameters of a model of this shape, and the bytes model_new
 * allocates for it (parameters, gradients, activations and caches of the
 * largest batch; optimizer state not included), computed without
 * allocating: a size check before the allocation. */
double model_dense_params(const struct model_config *cfg);
double model_bytes(const struct model_config *cfg);

const struct model_config *model_config_of(const model_t *m);

/* The dense parameters, layer by layer in model order ("embedding.weight",
 * "lstm1.weight_ih_l0", ..., "softmax.bias"): parameter i with its gradient
 * and checkpoint name. model_param_named gives w == NULL for an unknown
 * name. */
int model_n_params(const model_t *m);
struct layer_param model_param_at(model_t *m, int i);
struct layer_param model_param_named(model_t *m, const char *name);

/* State carried across unrolls ("state.lstm1.h", (B_max, D) ...), of
 * training (eval false) or evaluation. */
int model_n_states(const model_t *m);
struct layer_state model_state_at(model_t *m, bool eval, int i);
void model_reset_state(model_t *m, bool eval);

/* Forward pass. Returns 0 or a negative code (with a sentence in err) if
 * the expert backend failed. *xent_sum receives the sum of -log p over the
 * batch's rows; model_local_importance/load give this batch's Importance
 * and Load. */
int model_forward(model_t *m, const struct model_batch *b, int64_t step, bool train,
                  double *xent_sum, char *err, size_t errlen);

/* The next-word probabilities (B*T rows of V, rows b*T + t) of the last
 * evaluation forward (train false). */
const float *model_probs(const model_t *m);

/* This batch's Importance and Load vectors from the last forward (E each),
 * and the rows routed to each expert (E). */
const float *model_local_importance(const model_t *m);
const float *model_local_load(const model_t *m);
const int *model_local_counts(const model_t *m);
/* What the workers of a step sum for its Load: the Load itself (flat), or
 * a hierarchical MoE's secondary loads Load_i(X^(i))_j (E), plus its
 * per-group factors of Load_H (model_group_factor_count floats: Load_p
 * then |X^(i)|, A each; 0 and NULL for a flat MoE). After a backward given
 * their sums (model_backward_groups), model_local_load is the step's Load_H. */
const float *model_local_load_summed(const model_t *m);
int model_group_factor_count(const model_t *m);
const float *model_local_group_factors(const model_t *m);

/* Backward of the last training forward, given the global Importance and
 * Load vectors (the balancing loss is that of the global batch). Clears and
 * fills the dense gradients, sends expert gradients to the backend. Returns
 * 0 or a negative code; *balance_loss receives the balancing loss. */
int model_backward(model_t *m, const float *imp_global, const float *load_global,
                   double *balance_loss, char *err, size_t errlen);
/* The same with the sums of model_local_load_summed (load_global) and of
 * model_local_group_factors (groups_global, NULL for a flat MoE). */
int model_backward_groups(model_t *m, const float *imp_global, const float *load_global,
                          const float *groups_global, double *balance_loss, char *err,
                          size_t errlen);

/* After a training step: the final LSTM states of this unroll become the
 * initial states of the next one. */
void model_carry_state(model_t *m);

#endif
