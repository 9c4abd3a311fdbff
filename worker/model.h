/* The MoE language model of one worker (DESIGN §2):
 *
 *   tokens -> Embedding(V,D) -> LSTM(D) -> MoE(E experts, top K, hidden H)
 *          -> LSTM(D) -> Softmax(V)
 *
 * Every layer output except the softmax gets dropout and (option
 * `residual`) a residual add of the previous layer's output; the MoE output
 * optionally goes through a sigmoid first (paper, Appendix C). The MoE is
 * applied convolutionally: all B*T rows of the unroll form one macro-batch.
 *
 * A training step is model_forward() -> (global Importance/Load from every
 * worker) -> model_backward() -> optimizer -> model_carry_state(). Dense
 * parameters live here; experts live behind a moe_backend. Buffers are
 * allocated once by model_new(); steps never allocate. Single-threaded use. */
#ifndef MODEL_H
#define MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "gate.h"
#include "lstm.h"
#include "moe_layer.h"
#include "moe_tensor.h"

struct model_config {
    int V, D, H, E, K;
    bool residual, moe_sigmoid;
    double dropout;
    double w_importance, w_load;
    uint64_t seed;
    int B_max, T_max; /* largest batch the buffers must hold */
};

enum model_param {
    MP_EMBEDDING,
    MP_L1_W_IH, MP_L1_W_HH, MP_L1_B_IH, MP_L1_B_HH,
    MP_W_GATE, MP_W_NOISE,
    MP_L2_W_IH, MP_L2_W_HH, MP_L2_B_IH, MP_L2_B_HH,
    MP_SOFTMAX_W, MP_SOFTMAX_B,
    MP_COUNT
};

/* One batch: B sequences of T tokens, b-major; row0 = global index of
 * row 0 (b*T + t over the global batch); n_global = rows of the global
 * batch (the cross-entropy is averaged over it). */
struct model_batch {
    int B, T;
    const int32_t *tok, *tgt;
    int64_t row0, n_global;
};

typedef struct model model_t;

/* Allocates the model, initialises dense parameters from cfg->seed
 * (moe.w_gate and moe.w_noise start at zero, as in the paper). `backend`
 * is copied; its ctx is borrowed. NULL on bad sizes or no memory. */
model_t *model_new(const struct model_config *cfg, const struct moe_backend *backend);
/* Dense parameters of a model of this shape, and the bytes model_new
 * allocates for it (parameters, gradients, activations and caches of the
 * largest batch; optimizer state not included), computed without
 * allocating: a size check before the allocation. */
double model_dense_params(const struct model_config *cfg);
double model_bytes(const struct model_config *cfg);

/* Replaces the expert backend (a new placement). */
void model_set_backend(model_t *m, const struct moe_backend *backend);
void model_destroy(model_t **m);

const struct model_config *model_config_of(const model_t *m);
moe_tensor *model_param(model_t *m, enum model_param p);
moe_tensor *model_grad(model_t *m, enum model_param p);
/* PyTorch-style name of a dense parameter ("lstm1.weight_ih_l0"). */
const char *model_param_name(enum model_param p);

/* LSTM state carried across unrolls for `B` streams: [layer][h or c], each
 * (B,D). Training and evaluation keep separate states. */
float *model_state(model_t *m, bool eval, int layer, bool cell);
void model_reset_state(model_t *m, bool eval);

/* Forward pass. Returns 0 or a negative code (with a sentence in err) if
 * the expert backend failed. *xent_sum receives the sum of -log p over the
 * batch's rows; imp and load (E each, owned by the model, see
 * model_local_stats) receive this batch's Importance and Load. */
int model_forward(model_t *m, const struct model_batch *b, int64_t step, bool train,
                  double *xent_sum, char *err, size_t errlen);

/* This batch's Importance and Load vectors from the last forward (E each). */
const float *model_local_importance(const model_t *m);
const float *model_local_load(const model_t *m);
/* Rows routed to each expert by the last forward (E). */
const int *model_local_counts(const model_t *m);

/* Backward of the last training forward, given the global Importance and
 * Load vectors (the balancing loss is that of the global batch). Clears and
 * fills the dense gradients, sends expert gradients to the backend. Returns
 * 0 or a negative code; *balance_loss receives the balancing loss. */
int model_backward(model_t *m, const float *imp_global, const float *load_global,
                   double *balance_loss, char *err, size_t errlen);

/* After a training step: the final LSTM states of this unroll become the
 * initial states of the next one. */
void model_carry_state(model_t *m);

#endif
