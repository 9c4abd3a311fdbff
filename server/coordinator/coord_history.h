/* The per-expert history behind the dashboard's heatmap (coordinator
 * process; DESIGN §7): for every completed step, each expert's rows routed
 * and Load (the smooth estimate), kept in a fixed number of columns so that
 * memory stays bounded however long the run and however many experts.
 *
 * Column c covers the steps [first + c*width, first + (c+1)*width), where
 * `first` is the first step recorded and `width` (steps per column) starts
 * at 1. When a step falls beyond the last column, neighbouring columns are
 * merged in pairs (their sums added, width doubled) until it fits: the
 * history is downsampled, never truncated, and always spans the run. Each
 * column holds the sums over its recorded steps and how many steps it
 * holds (a column may miss steps: the coordinator restarted, or statistics
 * of a step never arrived).
 *
 * A step is recorded once: a step at or below the last one recorded (a
 * rollback's replay, deterministic and so the same values) is ignored.
 * Memory: 2 x columns x n_experts doubles plus columns counts, allocated
 * once. Pure data: no sockets, no clock, single-threaded. */
#ifndef COORD_HISTORY_H
#define COORD_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct coord_history coord_history_t;

/* n_experts >= 1; columns even and >= 2. NULL on bad arguments or no
 * memory. */
coord_history_t *coord_history_new(int n_experts, int columns);
void coord_history_destroy(coord_history_t **h);

/* Records step `step` (>= 0): rows routed and Load of each expert
 * (n_experts values each, finite, checked by the caller). Returns true if
 * recorded, false if ignored (a step at or below the last one recorded). */
bool coord_history_add(coord_history_t *h, int64_t step, const float *rows, const float *load);

int coord_history_n_experts(const coord_history_t *h);
int coord_history_capacity(const coord_history_t *h);
/* Columns in use (0 before the first step), steps per column, first step
 * of column 0 (-1 before the first step) and the last step recorded (-1). */
int coord_history_columns(const coord_history_t *h);
int64_t coord_history_width(const coord_history_t *h);
int64_t coord_history_first_step(const coord_history_t *h);
int64_t coord_history_last_step(const coord_history_t *h);

/* Column `col` (0 .. columns-1): steps recorded in it, and the sums over
 * them of the rows routed to and the Load of expert e. */
int64_t coord_history_steps(const coord_history_t *h, int col);
double coord_history_rows(const coord_history_t *h, int col, int e);
double coord_history_load(const coord_history_t *h, int col, int e);

#endif
