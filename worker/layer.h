/* The layer interface of a worker's model (DESIGN §2): what the model
 * assembly (model.c) needs of each layer, so that a new model is a new list
 * of layers, not an edit of a monolith.
 *
 * A layer maps its input activations (N rows of in_width) to its output
 * (N rows of out_width) for the batch described by the pass (struct
 * layer_pass), and back: forward and backward sit side by side, as in
 * llm.c, and take every buffer explicitly. Backward accumulates (+=) into
 * the input gradient and into the parameter gradients; the model zeroes the
 * gradients before each backward. A layer lists its parameters and
 * gradients with their checkpoint names (PyTorch's, DESIGN §6) and the
 * state it carries from one step to the next (the LSTM's h and c). Every
 * buffer is allocated when the layer is created; a pass never allocates.
 * Single-threaded use (the math inside may use the moe_par pool). */
#ifndef LAYER_H
#define LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe_tensor.h"

/* One pass of the model over a batch: what every layer may read, and the
 * outputs some layers give (the loss, the balancing statistics). */
struct layer_pass {
    int B, T;                 /* sequences x time steps; rows r = b*T + t */
    const int32_t *tok, *tgt; /* (B*T) input and target token ids */
    int64_t row0;             /* global index of row 0 (noise, dropout) */
    int64_t n_global;         /* rows of the global batch (the loss is its mean) */
    int64_t step;             /* 0-based step (noise, dropout) */
    bool train;               /* training (noise, dropout, caches kept) or evaluation */
    /* backward: the global Importance and Load of the step (E each) */
    const float *imp_global, *load_global;
    /* a hierarchical MoE's per-group factors of Load_H summed over the
     * workers, Load_p then |X^(i)| (A each), with load_global the summed
     * secondary loads Load_i(X^(i))_j; NULL: load_global is Load_H itself
     * and the factors are the layer's own (one process) */
    const float *groups_global;
    /* outputs */
    double xent_sum;          /* forward of the output layer: sum of -log p */
    double balance_loss;      /* backward of an MoE layer: its balancing loss */
};

/* A parameter: its checkpoint name, value and gradient (same shape). */
struct layer_param {
    const char *name;
    moe_tensor *w, *g;
};

/* State carried across steps, per stream: (rows, width) floats under a
 * checkpoint name ("state.lstm1.h"). */
struct layer_state {
    const char *name;
    float *data;
    int rows, width;
};

struct layer;

struct layer_ops {
    /* out (N, out_width) from in (N, in_width); in is NULL for the first
     * layer (it reads the tokens). 0 or a negative MOE_ERR_* with a
     * sentence in err (an expert backend may fail). */
    int (*forward)(struct layer *l, struct layer_pass *p, float *out, const float *in, char *err,
                   size_t errlen);
    /* din (N, in_width) += d(out) / d(in) applied to dout (N, out_width);
     * parameter gradients +=. in and out are the forward's. din is NULL for
     * the first layer. */
    int (*backward)(struct layer *l, struct layer_pass *p, float *din, const float *dout,
                    const float *in, const float *out, char *err, size_t errlen);
    /* Parameter i (0 <= i < n_params) with its gradient. */
    struct layer_param (*param)(struct layer *l, int i);
    /* Carried state i (0 <= i < n_states) of training (eval false) or of
     * evaluation (eval true). NULL when the layer keeps none. */
    struct layer_state (*state)(struct layer *l, bool eval, int i);
    /* After a training step: the final state becomes the next step's initial
     * state. NULL when the layer keeps none. */
    void (*carry)(struct layer *l);
    void (*destroy)(struct layer *l);
};

struct layer {
    const struct layer_ops *ops;
    char name[32];       /* prefix of its checkpoint names: "lstm1" */
    int in_width, out_width;
    int n_params, n_states;
};

/* Zeroes the carried state of training or of evaluation. */
void layer_reset_state(struct layer *l, bool eval);

#endif
