/* Additive attention of the translation model's decoder (worker process;
 * paper §5.3 / App. E, GNMT's "normalized Bahdanau" form without the
 * weight normalisation). For decoder row r = b*T + t with query q_r (the
 * first decoder LSTM's output) and the encoder outputs m_{b,s}, s < S_b:
 *
 *   e_{r,s}   = v . tanh(W_q q_r + b + W_k m_{b,s})       W_q, W_k (A,D); b, v (A)
 *   alpha_r   = softmax over s < S_b of e_{r,s}            (0 for s >= S_b: padding)
 *   ctx_r     = sum_s alpha_{r,s} m_{b,s}                  (values are the encoder outputs)
 *
 * Rows t >= T_b (padding of the target) get ctx 0 and pass no gradient.
 * Rows are b-major: queries (B*T, D) at b*T + t, memory (B*S, D) at b*S + s.
 * tanh is computed through moe_vexpf (the same bits for every libm). Work
 * is split over sequences (moe_par tasks), each task summing in a fixed
 * order, so results do not depend on the thread count. */
#ifndef ATTENTION_H
#define ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "layer.h"

struct attention_dims {
    int B, T, S, D, A;
};

struct attention_params {
    float *w_q, *w_k; /* (A,D) */
    float *b, *v;     /* (A) */
};

/* What backward needs (attention_cache_floats floats). */
struct attention_cache {
    float *qp;    /* (B*T, A) W_q q + b */
    float *kp;    /* (B*S, A) W_k m */
    float *alpha; /* (B*T, S) weights */
};

size_t attention_cache_floats(const struct attention_dims *d);
struct attention_cache attention_cache_view(float *buf, const struct attention_dims *d);
/* Workspace floats backward needs. */
size_t attention_work_floats(const struct attention_dims *d);

/* ctx (B*T, D) from q (B*T, D) and mem (B*S, D); src_len[b] in [1, S],
 * tgt_len[b] in [0, T]. */
void attention_forward(float *ctx, struct attention_cache *c, const float *q, const float *mem,
                       const int *src_len, const int *tgt_len, const struct attention_params *p,
                       const struct attention_dims *d);

/* Accumulates dq (B*T, D), dmem (B*S, D) and the parameter gradients dp
 * from dctx (B*T, D). */
void attention_backward(float *dq, float *dmem, const struct attention_params *dp, float *work,
                        const float *dctx, const float *q, const float *mem,
                        const struct attention_cache *c, const int *src_len, const int *tgt_len,
                        const struct attention_params *p, const struct attention_dims *d);

/* The attention as a layer (layer.h) of width D (A = D) for batches up to
 * B_max x T_max queries and S_max source positions: in = the queries, out
 * = the context. Its memory (the encoder's output and the gradient it
 * accumulates into) and the lengths are bound before each pass with
 * attention_layer_bind. Parameters NAME.query.weight, NAME.key.weight
 * (D,D) and NAME.v (D), uniform in [-1/sqrt(D), 1/sqrt(D)) from `seed` by
 * name, and NAME.bias (D), zero. NULL when out of memory. */
struct layer *attention_layer_new(const char *name, int D, int B_max, int T_max, int S_max,
                                  uint64_t seed);
/* mem (B*S, D) and dmem (NULL outside training) are borrowed until the
 * next bind; so are the lengths. */
void attention_layer_bind(struct layer *l, const float *mem, float *dmem, int S,
                          const int *src_len, const int *tgt_len);
/* The weights (B*T, S) of its last forward. */
const float *attention_layer_alpha(const struct layer *l);

#endif
