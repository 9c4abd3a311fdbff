/* Small elementwise layers of the worker's model: dropout, sigmoid and the
 * residual add. Dropout masks come from the counter RNG keyed by
 * (seed, MOE_RNG_DROPOUT + site, step, global row, column), so they do not
 * depend on which worker holds a row (DESIGN §4). */
#ifndef NN_OPS_H
#define NN_OPS_H

#include <stdint.h>

/* mask (N,D) = 0 with probability p, else 1/(1-p); out = in * mask.
 * out may equal in. p == 0 fills mask with 1. Rows run as moe_par tasks
 * with a row of uniforms drawn at a time: the same bits as the plain loop
 * of dropout_forward_ref, for any thread count. */
void dropout_forward(float *out, float *mask, const float *in, float p, uint64_t seed, int site,
                     int64_t step, int64_t row0, int N, int D);
void dropout_forward_ref(float *out, float *mask, const float *in, float p, uint64_t seed,
                         int site, int64_t step, int64_t row0, int N, int D);
/* din += dout * mask */
void dropout_backward(float *din, const float *dout, const float *mask, int n);

/* out = 1 / (1 + e^-in); out may equal in. */
void sigmoid_forward(float *out, const float *in, int n);
/* din += dout * out (1 - out) */
void sigmoid_backward(float *din, const float *dout, const float *out, int n);

/* y += x */
void residual_add(float *y, const float *x, int n);

#endif
