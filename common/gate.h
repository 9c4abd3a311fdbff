/* Noisy top-k gating and the balancing losses (common: the workers run the
 * flat and primary gates, the expert servers a hierarchical MoE's secondary
 * gates, issue 17), exactly as
 * the paper's authors coded them (tensor2tensor expert_utils.py; DESIGN §2):
 *
 *   clean = x W_g; std = softplus(x W_noise) + 1e-2 (0 at evaluation);
 *   H = clean + N(0,1) * std; top k+1 of H, ties to the lower index;
 *   G = softmax over the top k, 0 elsewhere;
 *   Importance_i = sum_x G_i; Load_i = sum_x Phi((clean_i - thr_i) / std_i)
 *   with thr_i the (k+1)-th largest H when H_i is strictly above it, else the
 *   k-th; Phi(z/s) = 0.5 (1 + erf(z / (sqrt(2) s + 1e-20)));
 *   loss = w_imp cv^2(Importance) + w_load cv^2(Load), population variance.
 *
 * W_g and W_noise are (D,E), as in the paper and the checkpoint. The noise of
 * row r, expert i is moe_rng_normal(seed, MOE_RNG_GATE_NOISE, step, row0 + r,
 * i): it depends only on the global row index (other keys: gate_dims). softplus, the noise, Phi and
 * the derivatives' exponentials are computed in float by moe_vmath's
 * polynomials, a row at a time, so that the loops vectorise. */
#ifndef GATE_H
#define GATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gate_dims {
    int N, D, E, K;
    bool train;      /* noisy gating and the smooth load estimator */
    uint64_t seed;
    int64_t step;
    int64_t row0;    /* global index of row 0 */
    /* The noise's key (a hierarchical MoE's secondary gates, issue 17):
     * purpose 0 is MOE_RNG_GATE_NOISE; column col0 + i for expert i; with
     * rows, row r is row row0 + rows[r] of the pass (a group's rows), else
     * row0 + r. Zero and NULL for the flat gate. */
    uint32_t purpose, col0;
    const int32_t *rows;
};

/* Per-row results and what backward needs. */
struct gate_cache {
    float *clean, *nl, *std, *H, *eps; /* (N,E) each; nl = x W_noise, eps the noise */
    float *p;                    /* (N,E) each row's Phi terms of Load (forward scratch) */
    int32_t *topi;               /* (N,M) M = min(K+1, E), descending H */
    float *topv;                 /* (N,M) */
    int32_t *idx;                /* (N,K) expert of each slot */
    float *gates;                /* (N,K) gate of each slot */
};

size_t gate_cache_floats(const struct gate_dims *d);  /* float part */
size_t gate_cache_ints(const struct gate_dims *d);    /* int32 part */
struct gate_cache gate_cache_view(float *fbuf, int32_t *ibuf, const struct gate_dims *d);

/* Computes gates for every row, and adds this batch's Importance and Load
 * (E each) into imp and load (+=). At evaluation, or when K == E, Load is
 * the count of rows with a non-zero gate, as in tensor2tensor. Rows run as
 * moe_par tasks; Importance and Load are summed in row order whatever the
 * thread count. */
void gate_forward(struct gate_cache *c, float *imp, float *load, const float *x, const float *w_g,
                  const float *w_noise, const struct gate_dims *d);

/* cv^2 of v (n values) with tensor2tensor's epsilons. If dv is not NULL,
 * writes d cv^2 / d v into it. */
double gate_cv_squared(const float *v, int n, float *dv);

/* The balancing loss of the global Importance and Load vectors; writes the
 * gradients w.r.t. them into dimp, dload (E each). */
double gate_balance_loss(const float *imp, const float *load, int E, double w_imp, double w_load,
                         float *dimp, float *dload);

/* Back-propagates dgates (N,K), the gradient of the combine w.r.t. each
 * slot's gate, plus dimp and dload (E) from the balancing loss, into dx
 * (N,D, +=), dw_g and dw_noise (D,E, +=). work needs 2*N*E floats. Rows
 * run as moe_par tasks (each writes only its own rows). */
void gate_backward(float *dx, float *dw_g, float *dw_noise, float *work, const float *dgates,
                   const float *dimp, const float *dload, const float *x, const float *w_g,
                   const float *w_noise, const struct gate_cache *c, const struct gate_dims *d);

#endif
