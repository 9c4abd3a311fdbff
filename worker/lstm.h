/* One LSTM layer over a whole unroll (worker process), PyTorch layout and
 * gate order i, f, g, o: weight_ih (4H,I), weight_hh (4H,H), bias_ih (4H),
 * bias_hh (4H). Input projections of all time steps are one GEMM; the
 * recurrence is one (B,H)x(H,4H) GEMM per step, reading rows of the b-major
 * batch (r = b*T + t) through a row stride.
 *
 * Truncated BPTT: the initial state (h0, c0) comes from the previous unroll
 * and receives no gradient. */
#ifndef LSTM_H
#define LSTM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layer.h"

struct lstm_dims {
    int B, T, I, H;
};

struct lstm_params {
    float *w_ih, *w_hh, *b_ih, *b_hh;
};

/* What backward needs, sized by lstm_cache_floats(). */
struct lstm_cache {
    float *acts;   /* (N,4H) activated gates i,f,g,o */
    float *c;      /* (N,H) cell states */
    float *h0, *c0; /* (B,H) initial state of this unroll */
};

size_t lstm_cache_floats(const struct lstm_dims *d);
/* Carves a cache out of `buf` (lstm_cache_floats floats). */
struct lstm_cache lstm_cache_view(float *buf, const struct lstm_dims *d);
/* Workspace floats backward needs. */
size_t lstm_work_floats(const struct lstm_dims *d);

/* h (N,H) outputs; x (N,I) inputs; h0, c0 (B,H) initial state (copied into
 * the cache). */
void lstm_forward(float *h, struct lstm_cache *cache, const float *x, const struct lstm_params *p,
                  const float *h0, const float *c0, const struct lstm_dims *d);

/* Writes into cache->acts and cache->c what lstm_forward wrote there, from
 * the forward's input x and output h (h0, c0 already in the cache): the same
 * operations in the same order, so the same bits. For --recompute all, with
 * acts and c in the backward's workspace (lstm_backward allows that: acts at
 * work, c at work + N*4H). */
void lstm_recompute(const struct lstm_cache *cache, const float *x, const float *h,
                    const struct lstm_params *p, const struct lstm_dims *d);

/* Accumulates dx (N,I) and parameter gradients from dh (N,H). h is the
 * forward's output. */
void lstm_backward(float *dx, const struct lstm_params *dp, float *work, const float *dh,
                   const float *x, const float *h, const struct lstm_cache *cache,
                   const struct lstm_params *p, const struct lstm_dims *d);

/* Final state of the unroll (rows t = T-1) into h_out, c_out (B,H). */
void lstm_final_state(float *h_out, float *c_out, const float *h, const struct lstm_cache *cache,
                      const struct lstm_dims *d);

/* Plain-loop reference of the forward pass for tests (no cache). */
void lstm_forward_ref(float *h, float *c_last, const float *x, const struct lstm_params *p,
                      const float *h0, const float *c0, const struct lstm_dims *d);

/* One LSTM as a layer (layer.h) of width D for batches of up to B_max x
 * T_max: parameters NAME.weight_ih_l0 (4D,D), NAME.weight_hh_l0 (4D,D),
 * NAME.bias_ih_l0, NAME.bias_hh_l0 (4D), initialised uniform in
 * [-1/sqrt(D), 1/sqrt(D)) from `seed` by name; carried state
 * state.NAME.h and state.NAME.c (B_max, D), one pair for training and one
 * for evaluation (which carries its state forward at once). NULL when out
 * of memory. */
struct layer *lstm_layer_new(const char *name, int D, int B_max, int T_max, uint64_t seed,
                             bool recompute);
#endif
