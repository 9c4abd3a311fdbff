/* The expert feed-forward network, D -> H (ReLU) -> D, over a macro-batch of
 * rows. This is the one implementation of expert math: the worker's
 * in-process backend and the expert server both call it (DESIGN §4), so
 * their results are bitwise equal.
 *
 * Parameters follow PyTorch's nn.Linear layout: w1 (H,D), b1 (H), w2 (D,H),
 * b2 (D). No allocation; callers pass every buffer. */
#ifndef EXPERT_FFN_H
#define EXPERT_FFN_H

#include <stddef.h>

struct expert_ffn_params {
    float *w1; /* (H,D) */
    float *b1; /* (H) */
    float *w2; /* (D,H) */
    float *b2; /* (D) */
};

/* Floats of one expert's parameters laid out as w1 | b1 | w2 | b2. */
size_t expert_ffn_param_count(int D, int H);
/* Views into a w1|b1|w2|b2 block of expert_ffn_param_count() floats. */
struct expert_ffn_params expert_ffn_view(float *block, int D, int H);

/* z (R,H) = relu(x W1^T + b1): the hidden activations, the first half of
 * expert_ffn_forward with the same operations in the same order, so that
 * a backward that recomputes them (--recompute experts) gets the same bits
 * the forward had. R may be 0. */
void expert_ffn_hidden(float *z, const float *x, const struct expert_ffn_params *p, int R, int D,
                       int H);

/* y (R,D) = relu(x W1^T + b1) W2^T + b2; z (R,H) receives relu(...) and is
 * what backward needs besides x. R may be 0. */
void expert_ffn_forward(float *y, float *z, const float *x, const struct expert_ffn_params *p,
                        int R, int D, int H);

/* Given dy (R,D): accumulates parameter gradients into dp (+=), writes
 * dx (R,D) (overwrites). dz_work needs R*H floats. x and z are the
 * forward's input and cache. The two halves below, one after the other. */
void expert_ffn_backward(float *dx, const struct expert_ffn_params *dp, float *dz_work,
                         const float *dy, const float *x, const float *z,
                         const struct expert_ffn_params *p, int R, int D, int H);

/* expert_ffn_backward in two halves: the input's
 * gradient dx (R,D) and dz (R,H) = (dy W2) * [z > 0], which the second
 * half needs; then the parameter gradients (+= into dp) from dy, x, z and
 * dz. A server answers with dx before the second half and the optimizer
 * step, which then overlap the worker's work. */
void expert_ffn_backward_input(float *dx, float *dz, const float *dy, const float *z,
                               const struct expert_ffn_params *p, int R, int D, int H);
void expert_ffn_backward_weights(const struct expert_ffn_params *dp, const float *dy,
                                 const float *x, const float *z, const float *dz, int R, int D,
                                 int H);

/* Plain-loop references of the two passes, for tests. */
void expert_ffn_forward_ref(float *y, float *z, const float *x, const struct expert_ffn_params *p,
                            int R, int D, int H);
void expert_ffn_backward_ref(float *dx, const struct expert_ffn_params *dp, const float *dy,
                             const float *x, const float *z, const struct expert_ffn_params *p,
                             int R, int D, int H);

#endif
