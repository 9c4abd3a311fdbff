/* Optimizers shared by workers (dense parameters) and expert servers.
 *
 *  - Adam with the paper's learning-rate schedule: linear warm-up for
 *    `warmup` steps, then proportional to 1/sqrt(step).
 *  - Factored Adam (DESIGN §2): beta1 = 0; an (r,c) matrix keeps row means R
 *    (r) and column means C (c) of g^2 as running averages, V = R C^T / mean(R),
 *    bias-corrected; 1-D tensors keep a full second moment. Adafactor's
 *    decay 1 - t^-0.8, update clipping and relative step size are options.
 *
 * State is a plain float array whose size state_size() gives, so it can be
 * saved, sent and restored as bytes. Steps are 1-based. No allocation. */
#ifndef MOE_OPTIM_H
#define MOE_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct moe_lr_schedule {
    double lr;      /* peak learning rate */
    int64_t warmup; /* steps of linear warm-up (0: none) */
};

/* Learning rate at 1-based step t: lr * min(t / warmup, sqrt(warmup / t)). */
double moe_lr_at(const struct moe_lr_schedule *s, int64_t t);

struct moe_adam_opts {
    double beta1, beta2, eps;
};

/* Adam state for n parameters: m then v, 2n floats. */
size_t moe_adam_state_size(size_t n);
/* One Adam step at 1-based t with learning rate lr. Updates w and state. */
void moe_adam_update(float *w, const float *g, float *state, size_t n, int64_t t, double lr,
                     const struct moe_adam_opts *o);

struct moe_fadam_opts {
    double beta2;          /* fixed decay, used when decay_pow == 0 */
    double decay_pow;      /* Adafactor: beta2_t = 1 - t^-decay_pow (0.8); 0 = fixed beta2 */
    double eps;            /* added to sqrt(V) (Adam-style) */
    double eps1;           /* added to g^2 before averaging (1e-30) */
    double clip;           /* Adafactor update clipping threshold d (0 = off) */
    bool relative_step;    /* Adafactor step size min(1e-2, 1/sqrt t) * max(eps2, RMS(w)) */
    double eps2;           /* 1e-3 */
};

/* State floats for a tensor of `rows` x `cols` (cols == 0 for 1-D of length
 * rows): rows + cols for a matrix, rows for a vector. */
size_t moe_fadam_state_size(size_t rows, size_t cols);
/* One factored step at 1-based t. lr is the scheduled rate (ignored when
 * relative_step). */
void moe_fadam_update(float *w, const float *g, float *state, size_t rows, size_t cols, int64_t t,
                      double lr, const struct moe_fadam_opts *o);
/* The same, and g is all zeros afterwards (set in the pass that reads it
 * last): the expert shards' update, whose gradients start the next step
 * at zero. */
void moe_fadam_update_zero(float *w, float *g, float *state, size_t rows, size_t cols, int64_t t,
                           double lr, const struct moe_fadam_opts *o);

/* The part of moe_fadam_update(..., g = 0, t, ...) that changes anything:
 * the decay of the second moments (parameters stay). Bitwise the same
 * state as moe_fadam_update with a zero gradient, so an expert that got no
 * rows can skip its update and replay the decays of the skipped steps when
 * it is next touched (expert_shard). */
void moe_fadam_decay(float *state, size_t rows, size_t cols, int64_t t,
                     const struct moe_fadam_opts *o);

#endif
