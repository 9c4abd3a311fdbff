/* The coordinator's per-step balancing statistics and their history
 * (coordinator process; DESIGN §3 step 4, §7).
 *
 * Every worker of a step submits its local Importance, Load and rows routed
 * per expert (E values each), its loss and its speed. When the last worker
 * of the step is in, the global vectors are the sums over workers taken in
 * rank order (so they do not depend on arrival order), and the history is
 * updated: per expert rows routed (last step, total), Importance and Load
 * (last step, exponential moving average), per worker step, tokens/s and
 * loss, the per-expert history of rows routed and Load (coord_history.h),
 * and cluster-wide CV of Importance and Load and the max/mean of rows
 * routed.
 * A hierarchical MoE (issue 17; coord_stats_set_groups) also sends per group
 * its Load_p and |X^(i)|: the Load shown (and the history's, and the CV's)
 * is then Load_H[i,j] = Load_i(X^(i))_j Load_p(X)_i / (|X^(i)| + 1e-10)
 * from the sums, as the workers' balancing loss computes it, and each group
 * gets its own numbers (coord_group_stats).
 * Pure data: no sockets, no clock, single-threaded. */
#ifndef COORD_STATS_H
#define COORD_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord_history.h"

/* Columns of the per-expert history (coord_history.h): 2 x 128 doubles
 * per expert, 2 MiB at 1,024 experts. */
#define COORD_HISTORY_COLUMNS 128

typedef struct coord_stats coord_stats_t;

struct coord_expert_stats {
    double rows_last, rows_total;
    double importance_last, importance_avg;
    /* Load: a hierarchical MoE's Load_H */
    double load_last, load_avg;
    /* a hierarchical MoE's secondary Load_i(X^(i))_j summed over the
     * workers (within its group); the Load itself for a flat MoE */
    double load_group_last;
};

/* One group of a hierarchical MoE. */
struct coord_group_stats {
    /* |X^(i)|: rows the primary gate sent to the group */
    double rows_last, rows_total;
    /* rows routed to its experts (sum over j; K x |X^(i)| when K <= B) */
    double expert_rows_last;
    /* sum_j Importance_H[i,j] (the primary Importance when every row's
     * secondary gates sum to 1), and its moving average */
    double importance_last, importance_avg;
    /* Load_p(X)_i, the primary gate's smooth estimate of rows sent */
    double load_last, load_avg;
};

struct coord_worker_stats {
    bool seen;
    int64_t step;      /* last step it submitted */
    double tokens_per_sec, loss;
};

/* n_experts, n_workers >= 1; ema in [0, 1): weight of the old average;
 * history: loss points kept (>= 1). NULL on bad arguments or no memory. */
coord_stats_t *coord_stats_new(int n_experts, int n_workers, double ema, int history);
void coord_stats_destroy(coord_stats_t **s);

/* Worker `rank`'s vectors of `step` (imp, load, rows: n_experts floats
 * each). The first submission fixes the step the statistics start at;
 * after that only the step in progress is accepted. Returns 1 if this
 * completed the step, 0 if other workers are still missing, or a negative
 * code with a sentence (bad rank: MOE_ERR_RANGE; stale, future or duplicate:
 * MOE_ERR_STATE; a non-finite value: MOE_ERR_FORMAT); a rejected submission
 * changes nothing. */
int coord_stats_submit(coord_stats_t *s, int64_t step, int rank, const float *imp,
                       const float *load, const float *rows, double loss, double tokens_per_sec,
                       char *err, size_t errlen);

/* The model is a hierarchical MoE of `groups` groups of n_experts / groups
 * experts (expert i*B + j is expert j of group i; issue 17): each worker
 * submits 2 x groups extra values with its vectors, its per-group factors
 * of Load_H (Load_p, then |X^(i)|), summed in rank order too. Call before
 * the first submission. 0, or MOE_ERR_RANGE (groups < 1 or not dividing
 * n_experts) / MOE_ERR_NOMEM, changing nothing. */
int coord_stats_set_groups(coord_stats_t *s, int groups);
/* 0 for a flat MoE. */
int coord_stats_n_groups(const coord_stats_t *s);
/* Extra floats per submission: 2 x groups. */
int coord_stats_n_extras(const coord_stats_t *s);
/* coord_stats_submit with the extras (coord_stats_n_extras of them; they
 * must be finite and >= 0). */
int coord_stats_submit_ex(coord_stats_t *s, int64_t step, int rank, const float *imp,
                          const float *load, const float *rows, const float *extras, double loss,
                          double tokens_per_sec, char *err, size_t errlen);
/* Their sums of the last completed step. */
const float *coord_stats_global_extras(const coord_stats_t *s);

/* The step in progress (-1 before the first submission), the last completed
 * step (-1 if none) and the workers still missing from the step in
 * progress. */
int64_t coord_stats_current_step(const coord_stats_t *s);
/* The next step expected is `step` (a new epoch starts there, possibly
 * earlier than before: a rollback); submissions in progress are dropped.
 * Totals and the loss history keep what was counted, replayed steps
 * included; the per-expert history records each step once. */
void coord_stats_restart(coord_stats_t *s, int64_t step);
int64_t coord_stats_completed_step(const coord_stats_t *s);
int coord_stats_missing(const coord_stats_t *s);

/* Global vectors of the last completed step (n_experts each), the sums the
 * workers get back (for a hierarchical MoE, the Load is the secondary
 * loads' sum, and coord_stats_global_extras its factors). */
const float *coord_stats_global_importance(const coord_stats_t *s);
const float *coord_stats_global_load(const coord_stats_t *s);
const float *coord_stats_global_rows(const coord_stats_t *s);
/* The Load of the balancing loss, last completed step (n_experts): Load_H
 * for a hierarchical MoE (in float, as the workers compute it), else
 * coord_stats_global_load. */
const float *coord_stats_balance_load(const coord_stats_t *s);

int coord_stats_n_experts(const coord_stats_t *s);
int coord_stats_n_workers(const coord_stats_t *s);
const struct coord_expert_stats *coord_stats_expert(const coord_stats_t *s, int e);
const struct coord_worker_stats *coord_stats_worker(const coord_stats_t *s, int rank);
/* Group g of a hierarchical MoE (0 <= g < coord_stats_n_groups). */
const struct coord_group_stats *coord_stats_group(const coord_stats_t *s, int g);

/* Of the last completed step: CV (not squared; population variance as the
 * balancing loss) of Importance and of Load, and the largest rows routed to
 * one expert over the mean. 0 before the first step. */
double coord_stats_cv_importance(const coord_stats_t *s);
double coord_stats_cv_load(const coord_stats_t *s);
double coord_stats_max_over_mean_rows(const coord_stats_t *s);
/* The same squared: the terms of the balancing loss before their weights,
 * cv^2 = var / (mean^2 + 1e-10) over all n_experts entries (for a
 * hierarchical MoE, of Importance_H and Load_H over all A x B). */
double coord_stats_cv2_importance(const coord_stats_t *s);
double coord_stats_cv2_load(const coord_stats_t *s);
/* A hierarchical MoE's CV (not squared) over its groups of their
 * Importance (coord_group_stats.importance_last) and of Load_p; 0 for a
 * flat MoE or before the first step. */
double coord_stats_cv_group_importance(const coord_stats_t *s);
double coord_stats_cv_group_load(const coord_stats_t *s);

/* Loss history, oldest first: up to `history` points of (step, mean loss
 * over workers). Returns the count; *steps and *loss point into the
 * statistics (valid until the next submit). */
size_t coord_stats_loss_history(const coord_stats_t *s, const int64_t **steps,
                                const double **loss);

/* Per-expert rows routed and Load of each completed step, downsampled
 * (coord_history.h; COORD_HISTORY_COLUMNS columns); steps replayed after a
 * rollback are not recorded again. */
const coord_history_t *coord_stats_history(const coord_stats_t *s);

#endif
