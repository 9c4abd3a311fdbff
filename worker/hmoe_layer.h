/* The hierarchical MoE layer (issue 17; the paper's Appendix B, the
 * authors' DistributedMixtureOfExperts; DESIGN §2), in one process:
 *
 *   a primary noisy top-K1 gate G_p over A groups (gate.h) routes each row
 *   to K1 groups; group i runs its own noisy top-K gate G_i over its B
 *   experts on the rows it received, X^(i); expert j of group i is the
 *   backend's expert i*B + j, and
 *
 *     y = sum_i sum_j G_p(x)_i G_i(x)_j E_ij(x),
 *     Importance_H[i,j] = sum_x G_p(x)_i G_i(x)_j,
 *     Load_H[i,j] = Load_i(X^(i))_j Load_p(X)_i / (|X^(i)| + 1e-10),
 *     loss = w_importance cv^2(Importance_H) + w_load cv^2(Load_H)
 *
 * over all A*B entries, with |X^(i)| the true count of rows sent to group i
 * (a constant: the gradient reaches the primary gate through Load_p). Both
 * gates follow the flat gate's noise and threshold rules; the secondary
 * gates' noise is keyed (seed, MOE_RNG_GATE_NOISE_GROUP, step, global row,
 * i*B + j), apart from the primary's. Each expert gets its rows in global
 * row order, as in the flat layer. Parameters NAME.w_gate, NAME.w_noise
 * (D,A) and NAME.groups.I.w_gate, NAME.groups.I.w_noise (D,B), zero at
 * start.
 *
 * The layer's Importance and Load (A*B each, moe_layer's accessors' role)
 * are Importance_H and Load_H. Load_H is not a sum over rows: with several
 * workers they sum its factors (hmoe_layer_group_factors) and the
 * secondary loads, and the backward computes Load_H from those sums. */
#ifndef HMOE_LAYER_H
#define HMOE_LAYER_H

#include <stdbool.h>
#include <stdint.h>

#include "layer.h"
#include "moe_layer.h"

struct hmoe_layer_config {
    int D, A, B, K1, K; /* width, groups, experts per group, primary and secondary k */
    bool sigmoid;
    double w_importance, w_load;
    uint64_t seed;
    int N_max;          /* largest batch rows */
};

struct layer *hmoe_layer_new(const char *name, const struct hmoe_layer_config *cfg,
                             const struct moe_backend *backend);
void hmoe_layer_set_backend(struct layer *l, const struct moe_backend *backend);
/* From the last forward: Importance_H, Load_H and the rows dispatched to
 * each expert (A*B each, expert i*B + j); the primary gate's Load_p and the
 * rows sent to each group (A each); the secondary loads Load_i(X^(i))_j
 * (A*B). */
const float *hmoe_layer_importance(const struct layer *l);
const float *hmoe_layer_load(const struct layer *l);
const int *hmoe_layer_counts(const struct layer *l);
const float *hmoe_layer_primary_load(const struct layer *l);
const int *hmoe_layer_group_rows(const struct layer *l);
const float *hmoe_layer_secondary_load(const struct layer *l);
/* What workers sum for the step's Load_H besides the secondary loads
 * (hmoe_layer_secondary_load): Load_p, then |X^(i)| as floats (2A), from
 * the last forward. With their sums in layer_pass.groups_global and the
 * summed secondary loads in load_global, the backward computes the step's
 * Load_H (hmoe_layer_load afterwards) and its gradient from them. */
const float *hmoe_layer_group_factors(const struct layer *l);

#endif
