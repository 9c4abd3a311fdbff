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

/* Extra values each worker submits with its vectors, summed in rank order
 * too (a hierarchical MoE's per-group factors of Load_H: Load_p, then
 * |X^(i)|, issue 17); 0 by default. 0, or MOE_ERR_RANGE / MOE_ERR_NOMEM. */
int coord_stats_set_extras(coord_stats_t *s, int n);
int coord_stats_n_extras(const coord_stats_t *s);
/* coord_stats_submit with the extras (n of coord_stats_set_extras; they
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

/* Global vectors of the last completed step (n_experts each). */
const float *coord_stats_global_importance(const coord_stats_t *s);
const float *coord_stats_global_load(const coord_stats_t *s);
const float *coord_stats_global_rows(const coord_stats_t *s);

int coord_stats_n_experts(const coord_stats_t *s);
int coord_stats_n_workers(const coord_stats_t *s);
const struct coord_expert_stats *coord_stats_expert(const coord_stats_t *s, int e);
const struct coord_worker_stats *coord_stats_worker(const coord_stats_t *s, int rank);

/* Of the last completed step: CV (not squared; population variance as the
 * balancing loss) of Importance and of Load, and the largest rows routed to
 * one expert over the mean. 0 before the first step. */
double coord_stats_cv_importance(const coord_stats_t *s);
double coord_stats_cv_load(const coord_stats_t *s);
double coord_stats_max_over_mean_rows(const coord_stats_t *s);

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
