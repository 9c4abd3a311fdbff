/* Output layer: logits = x W^T + b over the vocabulary, softmax and
 * cross-entropy (worker process). W is (V,D), PyTorch's nn.Linear layout. */
#ifndef SOFTMAX_XENT_H
#define SOFTMAX_XENT_H

#include <stdint.h>

#include "layer.h"

/* Computes probabilities into probs (N,V) and returns the sum over rows of
 * -log p(target). Targets must be < V. Rows run as moe_par tasks of 16;
 * the loss is summed per task and then over tasks, in row order, so it is
 * the same for every thread count. */
double softmax_xent_forward(float *probs, const float *x, const float *W, const float *b,
                            const int32_t *targets, int N, int V, int D);

/* Gradient of scale * (sum of -log p): turns probs into dlogits in place,
 * accumulates dW, db and dx (+=). db sums rows in order (moe_par tasks
 * over columns). */
void softmax_xent_backward(float *dx, float *dW, float *db, float *probs, const float *x,
                           const float *W, const int32_t *targets, float scale, int N, int V,
                           int D);

/* Training: the forward and the backward's elementwise part in one pass
 * over the logits. Leaves scale * (p - onehot(target)) in dlogits (N,V),
 * bit for bit what softmax_xent_forward then softmax_xent_backward's first
 * step give, and returns the same loss. */
double softmax_xent_forward_grad(float *dlogits, const float *x, const float *W, const float *b,
                                 const int32_t *targets, float scale, int N, int V, int D);

/* The rest of the backward from those dlogits: accumulates dW, db and dx. */
void softmax_xent_backward_dlogits(float *dx, float *dW, float *db, const float *dlogits,
                                   const float *x, const float *W, int N, int V, int D);

/* The output layer as a layer (layer.h): logits over V words from (N,D),
 * softmax and cross-entropy against the pass's targets. Its forward writes
 * the sum of -log p into layer_pass.xent_sum (no output rows); in training
 * it leaves the dlogits of the mean over the global batch, which its
 * backward turns into the input gradient. Parameters NAME.weight (V,D),
 * uniform in [-1/sqrt(D), 1/sqrt(D)) from `seed` by name, and NAME.bias
 * (V), zero. NULL when out of memory. */
struct layer *softmax_layer_new(const char *name, int V, int D, int N_max, uint64_t seed);
/* The probabilities (N, V) of its last evaluation forward. */
const float *softmax_layer_probs(const struct layer *l);
#endif
