/* A small fork-join pool for the elementwise work between GEMMs (the
 * optimizer, bias and activation passes), sized like the BLAS thread count.
 *
 * moe_par_for(n, fn, ctx) runs fn(ctx, 0) .. fn(ctx, n - 1), each task
 * once, on the calling thread and the pool's helpers, and returns when all
 * are done. Which thread runs a task is not defined, so callers split work
 * into tasks whose results do not depend on it (each task writes its own
 * outputs, and sums are never split across tasks): results are then the
 * same bits for every thread count, as DESIGN §4 asks.
 *
 * The pool is process-wide. A call made while another thread is inside
 * moe_par_for (or from inside a task) runs its tasks serially on the
 * calling thread. Helpers spin briefly after a job, then sleep. */
#ifndef MOE_PAR_H
#define MOE_PAR_H

typedef void (*moe_par_fn)(void *ctx, int task);

/* Threads used by moe_par_for, the caller included (1 = no helpers). Starts
 * or stops helpers; call it from one thread while no job runs. Returns the
 * count in effect (fewer than asked when a thread cannot be created). */
int moe_par_set_threads(int n);
int moe_par_threads(void);
void moe_par_for(int n, moe_par_fn fn, void *ctx);
/* Stops the helpers (also done at exit). */
void moe_par_shutdown(void);

/* Tasks of `per` items covering n items, and the items [*lo, *hi) of one. */
int moe_par_tasks(int n, int per);
void moe_par_span(int task, int per, int n, int *lo, int *hi);

/* acc[c] += m[0][c] + m[1][c] + ... (rows x cols, row-major), each column
 * summed in row order; blocks of columns are the tasks, so the result is
 * the serial loop's, bit for bit, for any thread count. */
void moe_par_colsum_acc(float *acc, const float *m, int rows, int cols);

#endif
