/* Fork-join pool (see moe_par.h).
 *
 * A job is published under the mutex (function, context, task count, a new
 * generation). Helpers that see the new generation while the job is still
 * open join it under the mutex, then claim tasks from an atomic counter.
 * The caller claims tasks too; when none are left it closes the job and
 * waits only for the helpers that joined, so a sleeping helper never
 * delays a job it took no part in. */
#include "moe_par.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <time.h>

#define PAR_MAX 64
/* How long a helper spins for the next job before it sleeps: long enough
 * to cover back-to-back jobs, short next to a GEMM (which needs the core). */
#define SPIN_NS 50000L

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    pthread_t th[PAR_MAX];
    int helpers;         /* running helper threads */
    bool stop;
    int sleeping;        /* helpers waiting on `wake` */
    /* the current job */
    atomic_uint gen;
    bool open;
    moe_par_fn fn;
    void *ctx;
    int ntasks;
    int active;          /* helpers that joined it and are not done */
    atomic_int next;
    atomic_flag in_use;  /* a moe_par_for is running */
} P = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
    .in_use = ATOMIC_FLAG_INIT,
};

static long elapsed_ns(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000000000L + (t.tv_nsec - t0->tv_nsec);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void run_tasks(moe_par_fn fn, void *ctx, int n)
{
    for (int k; (k = atomic_fetch_add(&P.next, 1)) < n;)
        fn(ctx, k);
}

static void *helper(void *arg)
{
    (void)arg;
    unsigned seen = atomic_load(&P.gen);
    for (;;) {
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (unsigned i = 1; atomic_load_explicit(&P.gen, memory_order_relaxed) == seen; i++) {
            if (i % 64 == 0 && elapsed_ns(&t0) > SPIN_NS)
                break;
            cpu_relax();
        }
        pthread_mutex_lock(&P.mu);
        while (atomic_load(&P.gen) == seen && !P.stop) {
            P.sleeping++;
            pthread_cond_wait(&P.wake, &P.mu);
            P.sleeping--;
        }
        if (P.stop) {
            pthread_mutex_unlock(&P.mu);
            return NULL;
        }
        seen = atomic_load(&P.gen);
        if (!P.open) {
            pthread_mutex_unlock(&P.mu);
            continue;
        }
        moe_par_fn fn = P.fn;
        void *ctx = P.ctx;
        int n = P.ntasks;
        P.active++;
        pthread_mutex_unlock(&P.mu);

        run_tasks(fn, ctx, n);

        pthread_mutex_lock(&P.mu);
        if (--P.active == 0)
            pthread_cond_signal(&P.done);
        pthread_mutex_unlock(&P.mu);
    }
}

void moe_par_shutdown(void)
{
    pthread_mutex_lock(&P.mu);
    P.stop = true;
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);
    for (int i = 0; i < P.helpers; i++)
        pthread_join(P.th[i], NULL);
    P.helpers = 0;
    P.stop = false;
}

int moe_par_set_threads(int n)
{
    static bool registered;
    if (n < 1)
        n = 1;
    if (n > PAR_MAX + 1)
        n = PAR_MAX + 1;
    if (n - 1 == P.helpers)
        return n;
    moe_par_shutdown();
    if (!registered) {
        atexit(moe_par_shutdown);
        registered = true;
    }
    while (P.helpers < n - 1 && pthread_create(&P.th[P.helpers], NULL, helper, NULL) == 0)
        P.helpers++;
    return P.helpers + 1;
}

int moe_par_threads(void) { return P.helpers + 1; }

void moe_par_for(int n, moe_par_fn fn, void *ctx)
{
    if (n <= 0)
        return;
    if (n == 1 || P.helpers == 0 || atomic_flag_test_and_set(&P.in_use)) {
        for (int k = 0; k < n; k++)
            fn(ctx, k);
        return;
    }
    pthread_mutex_lock(&P.mu);
    P.fn = fn;
    P.ctx = ctx;
    P.ntasks = n;
    P.active = 0;
    P.open = true;
    atomic_store(&P.next, 0);
    atomic_fetch_add(&P.gen, 1);
    if (P.sleeping > 0)
        pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);

    run_tasks(fn, ctx, n);

    pthread_mutex_lock(&P.mu);
    P.open = false;
    while (P.active > 0)
        pthread_cond_wait(&P.done, &P.mu);
    pthread_mutex_unlock(&P.mu);
    atomic_flag_clear(&P.in_use);
}

int moe_par_tasks(int n, int per) { return n > 0 ? (n + per - 1) / per : 0; }

void moe_par_span(int task, int per, int n, int *lo, int *hi)
{
    *lo = task * per;
    *hi = n - *lo > per ? *lo + per : n;
}

/* Columns per task: wide enough that each row's part is a long contiguous
 * read (the matrix is usually far larger than the caches). */
#define COLSUM_COLS 2048

struct colsum_job {
    float *acc;
    const float *m;
    int rows, cols;
};

/* Four rows at a time: each column's running sum stays in a register
 * across them, the additions still one row after another. */
static void colsum_task(void *ctx, int task)
{
    const struct colsum_job *j = ctx;
    const size_t C = (size_t)j->cols;
    int c0, c1, r = 0;
    moe_par_span(task, COLSUM_COLS, j->cols, &c0, &c1);
    for (; r + 4 <= j->rows; r += 4) {
        const float *a = j->m + (size_t)r * C;
        for (int c = c0; c < c1; c++) {
            float s = j->acc[c];
            s += a[c];
            s += a[C + c];
            s += a[2 * C + c];
            s += a[3 * C + c];
            j->acc[c] = s;
        }
    }
    for (; r < j->rows; r++) {
        const float *row = j->m + (size_t)r * C;
        for (int c = c0; c < c1; c++)
            j->acc[c] += row[c];
    }
}

void moe_par_colsum_acc(float *acc, const float *m, int rows, int cols)
{
    struct colsum_job j = {acc, m, rows, cols};
    moe_par_for(moe_par_tasks(cols, COLSUM_COLS), colsum_task, &j);
}
