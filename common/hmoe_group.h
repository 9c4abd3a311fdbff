/* A hierarchical MoE's groups (issue 17; the paper's App. B, DESIGN §2):
 * for the rows a primary gate sent to group i, X^(i), group i's noisy
 * top-K secondary gate over its B experts, those experts, the combine
 * within the group, and in the backward the secondary gate's and the
 * experts' gradients and what the primary gate needs back. Common code:
 * a worker runs it in-process for all A groups, an expert server for the
 * groups it hosts, so both compute the same bits (DESIGN §4).
 *
 * The rows come in parts, one per worker (rank order): part p brings, for
 * some of the groups held, each group's rows in the sender's row order,
 * with each row's index in the sender's batch (the secondary noise is
 * keyed (seed, MOE_RNG_GATE_NOISE_GROUP, step, row0 + index, i*B + j))
 * and its primary gate value G_p(x)_i. The gate runs on each part's rows
 * of a group on their own; expert i*B + j gets its rows part after part,
 * in row order (the expert server's canonical order).
 *
 * Group i's parameters: w_gate and w_noise (D,B), zero at start, trained
 * with factored Adam like the experts (state D + B floats each). Checkpoint
 * names moe.groups.I.w_gate, moe.groups.I.w_noise (".fadam" for the
 * state). Not thread-safe; buffers grow when a larger batch comes. */
#ifndef HMOE_GROUP_H
#define HMOE_GROUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "expert_shard.h"
#include "moe_optim.h"
#include "moe_options.h"

typedef struct hmoe_groups hmoe_groups_t;

/* What every part carries. Rows are packed group after group. */
struct hmoe_part {
    int n;                     /* groups of this part, ascending ids, each held */
    const int32_t *ids;        /* (n) */
    const uint32_t *rows;      /* (n) rows of each group */
    int64_t row0;              /* global index of the sender's row 0 */
    const uint32_t *row_index; /* (R) index of each row in the sender's batch */
    const float *gp;           /* (R) the primary gate G_p(x)_i of each row */
    const float *x;            /* (R,D) the rows */
    /* forward results */
    float *y;                  /* (R,D) sum_j G_i(x)_j E_ij(x) */
    float *stats;              /* (n,3B) per group: Importance_H[i,.] = sum G_p G_i,j,
                                * the secondary load Load_i(X^(i))_j, rows routed to j */
    /* backward input and results */
    const float *dy;           /* (R,D) gradient of y */
    const float *dstats;       /* (n,2B) per group: d Importance_H[i,.], d Load_i(X^(i)) */
    float *dx;                 /* (R,D) gradient of x */
    float *dgp;                /* (R) d loss / d G_p(x)_i through Importance_H:
                                * sum_j G_i(x)_j dImportance_H[i,j] */
};

/* The experts of the groups: an expert shard (hmoe_experts_of_shard), or
 * any code with the shard's contract (tests). backward with t > 0 applies
 * the update of step t with rate lr (expert_shard_backward_apply), with
 * t == 0 only accumulates (expert_shard_backward). */
struct hmoe_experts {
    void *ctx;
    int (*forward)(void *ctx, bool train, int n, const int32_t *ids, const int *rows,
                   const float *x, float *y);
    int (*backward)(void *ctx, int n, const int32_t *ids, const int *rows, const float *dy,
                    float *dx, int64_t t, double lr);
    /* the backward in two halves (expert_shard_backward_input, _finish),
     * when can_split says the experts can; all three may be NULL */
    bool (*can_split)(void *ctx);
    int (*backward_input)(void *ctx, int n, const int32_t *ids, const int *rows,
                          const float *dy, float *dx);
    int (*backward_finish)(void *ctx, int n, const int32_t *ids, const int *rows,
                           const float *dy, int64_t t, double lr);
};
struct hmoe_experts hmoe_experts_of_shard(expert_shard_t *shard);

/* Groups `ids` (n, distinct) of a layer of width D with B experts each and
 * secondary top-K; opts: the experts' factored Adam. Caller owns; NULL on
 * bad arguments or out of memory. */
hmoe_groups_t *hmoe_groups_new(int D, int B, int K, int n, const int32_t *ids, uint64_t seed,
                               const struct moe_fadam_opts *opts);
void hmoe_groups_destroy(hmoe_groups_t **g);
/* The groups `ids` (n; NULL: 0 .. n-1) of the configuration's hierarchical
 * MoE (d_model, experts_per_group, k, seed, the experts' optimizer). */
hmoe_groups_t *hmoe_groups_from_options(const struct moe_options *c, int n, const int32_t *ids);

/* The groups whose experts `shard` holds (whole groups: the expert
 * servers' placement never splits one), for the configuration c. */
hmoe_groups_t *hmoe_groups_of_shard(const struct moe_options *c, const expert_shard_t *shard);

int hmoe_groups_count(const hmoe_groups_t *g);
int32_t hmoe_groups_id(const hmoe_groups_t *g, int i); /* ascending */
int hmoe_groups_find(const hmoe_groups_t *g, int32_t id); /* local index, or -1 */
/* Group i's w_gate | w_noise (2 D B floats) and their factored-Adam state
 * (2 (D + B) floats: w_gate's, then w_noise's). Mutable: checkpoints and
 * migration. */
size_t hmoe_groups_param_count(int D, int B);
size_t hmoe_groups_state_count(int D, int B);
/* Bytes hmoe_groups_new allocates for n groups' gates (parameters, their
 * gradients and factored-Adam state: 4 D B + 2 (D + B) floats a group),
 * without allocating: a size check before it, as expert_shard_bytes. The
 * per-step buffers come on top. */
double hmoe_groups_bytes(int D, int B, int n);
float *hmoe_groups_params(hmoe_groups_t *g, int i);
float *hmoe_groups_opt_state(hmoe_groups_t *g, int i);
/* Gradient block of group i (same layout as the parameters): tests. */
float *hmoe_groups_grads(hmoe_groups_t *g, int i);
/* Checkpoint name of group `id`'s part (0 w_gate, 1 w_noise), with
 * ".fadam" for its optimizer state. */
void hmoe_groups_tensor_name(char *buf, size_t cap, int32_t id, int part, bool fadam);
/* The group of a name "moe.groups.I.w_gate" / ".w_noise" (and ".fadam"):
 * 1 with *id, *part, *fadam; 0 for any other name. */
int hmoe_groups_parse_name(const char *name, long *id, int *part, bool *fadam);

/* Forward of one step's parts (W of them) through the groups and their
 * experts `ex` (every expert of the groups the parts name). train: noisy
 * gates and smooth loads, the experts keep what the backward needs
 * (expert_shard_forward); else deterministic gates (expert_shard_infer).
 * Writes each part's y and stats. 0, MOE_ERR_NOTFOUND for a group not
 * held, MOE_ERR_NOMEM; nothing is kept on error. */
int hmoe_groups_forward(hmoe_groups_t *g, const struct hmoe_experts *ex, int64_t step, bool train,
                        int W, struct hmoe_part *parts);

/* Rows the experts computed in the last forward (each row once per
 * expert it went to). */
size_t hmoe_groups_expert_rows(const hmoe_groups_t *g);

/* Backward of the last training forward (the same parts, now with dy and
 * dstats): each part's dx and dgp; the gates' gradients accumulate (over
 * the parts, in order). With t > 0 the experts' update is applied with
 * their gradients (ex->backward) and the gates' with hmoe_groups_apply,
 * at step t with rate lr; with t == 0 both wait (expert_shard_apply and
 * hmoe_groups_apply). MOE_ERR_STATE without a
 * training forward (or with another count of parts). */
int hmoe_groups_backward(hmoe_groups_t *g, const struct hmoe_experts *ex, int W,
                         struct hmoe_part *parts, int64_t t, double lr);

/* hmoe_groups_backward at step t in two halves with the same bits: the
 * parts' dx and dgp (the experts' input gradients, then the combine and the
 * gates' backward), then the experts' weight gradients and update and the
 * gates' update (hmoe_groups_apply). A server answers between the two.
 * Only when hmoe_groups_can_split_backward(ex); the finish needs the
 * experts' dy (kept in g) untouched, and MOE_ERR_STATE without a pending
 * first half (or t <= 0); the gates are updated even when the experts'
 * half fails (its code returned). */
bool hmoe_groups_can_split_backward(const struct hmoe_experts *ex);
int hmoe_groups_backward_input(hmoe_groups_t *g, const struct hmoe_experts *ex, int W,
                               struct hmoe_part *parts);
int hmoe_groups_backward_finish(hmoe_groups_t *g, const struct hmoe_experts *ex, int64_t t,
                                double lr);

/* Factored Adam on every group's gate at step t (all groups, every step: a
 * group that got no rows only decays its second moments), then zeroes the
 * gradients. */
void hmoe_groups_apply(hmoe_groups_t *g, int64_t t, double lr);

#endif
