/* OpenBLAS wrapper and naive reference GEMM (see moe_blas.h). */
#include "moe_blas.h"

#include <cblas.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "moe_par.h"

static moe_sgemm_trace_fn trace_fn;
static void *trace_ctx;
/* MOE_BLAS=reference: every product through moe_sgemm_ref (read once by
 * moe_blas_set_threads). */
static bool use_reference;
/* Products split into blocks that run as moe_par tasks, each a
 * single-threaded OpenBLAS call (MOE_BLAS_SPLIT, read by
 * moe_blas_set_threads; see moe_blas.h). */
static bool split_on;

/* A product of at least SPLIT_MIN_MACS multiply-adds is split into one
 * block per thread, of a multiple of SPLIT_ALIGN columns of C (each block
 * packs all of A again) or rows (each packs all of B again), whichever
 * repeats the smaller operand. */
#define SPLIT_MIN_MACS ((long)1 << 18)
#define SPLIT_ALIGN 16

void moe_blas_set_trace(moe_sgemm_trace_fn fn, void *ctx)
{
    trace_fn = fn;
    trace_ctx = ctx;
}

static void blas_call(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                      const float *a, int lda, const float *b, int ldb, float beta, float *c,
                      int ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

struct split_job {
    bool trans_a, trans_b, by_cols;
    int m, n, k, lda, ldb, ldc, per;
    float alpha, beta;
    const float *a, *b;
    float *c;
};

static void split_task(void *ctx, int task)
{
    const struct split_job *j = ctx;
    const int lo = task * j->per;
    if (j->by_cols) {
        /* columns [lo, hi) of C: those of op(B) */
        const int hi = j->n - lo > j->per ? lo + j->per : j->n;
        const float *b = j->trans_b ? j->b + (long)lo * j->ldb : j->b + lo;
        blas_call(j->trans_a, j->trans_b, j->m, hi - lo, j->k, j->alpha, j->a, j->lda, b, j->ldb,
                  j->beta, j->c + lo, j->ldc);
    } else {
        /* rows [lo, hi) of C: those of op(A) */
        const int hi = j->m - lo > j->per ? lo + j->per : j->m;
        const float *a = j->trans_a ? j->a + lo : j->a + (long)lo * j->lda;
        blas_call(j->trans_a, j->trans_b, hi - lo, j->n, j->k, j->alpha, a, j->lda, j->b, j->ldb,
                  j->beta, j->c + (long)lo * j->ldc, j->ldc);
    }
}

/* Items per block when `len` items go to `tasks` blocks of SPLIT_ALIGN
 * multiples (0: too short to split). */
static int split_per(int len, int tasks)
{
    if (len < tasks * SPLIT_ALIGN)
        return 0;
    const int per = (len + tasks - 1) / tasks;
    return (per + SPLIT_ALIGN - 1) / SPLIT_ALIGN * SPLIT_ALIGN;
}

void moe_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    if (m <= 0 || n <= 0)
        return;
    if (trace_fn)
        trace_fn(trace_ctx, trans_a, trans_b, m, n, k);
    if (use_reference) {
        moe_sgemm_ref(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    if (k <= 0) {
        /* BLAS would still scale C by beta; do the same without it. */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[(long)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(long)i * ldc + j];
        return;
    }
    const int tasks = split_on ? moe_par_threads() : 1;
    if (tasks > 1 && (long)m * n * k >= SPLIT_MIN_MACS) {
        /* columns repeat A (m x k), rows repeat B (k x n) */
        const bool cols_first = m <= n;
        struct split_job j = {trans_a, trans_b, cols_first, m, n, k, lda, ldb, ldc,
                              split_per(cols_first ? n : m, tasks), alpha, beta, a, b, c};
        if (!j.per) {
            j.by_cols = !cols_first;
            j.per = split_per(cols_first ? m : n, tasks);
        }
        if (j.per) {
            moe_par_for(((j.by_cols ? n : m) + j.per - 1) / j.per, split_task, &j);
            return;
        }
    }
    blas_call(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void moe_sgemm_ref(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int p = 0; p < k; p++) {
                float av = trans_a ? a[(long)p * lda + i] : a[(long)i * lda + p];
                float bv = trans_b ? b[(long)j * ldb + p] : b[(long)p * ldb + j];
                s += av * bv;
            }
            float *cv = &c[(long)i * ldc + j];
            *cv = alpha * s + (beta == 0.0f ? 0.0f : beta * *cv);
        }
    }
}

bool moe_blas_reference(void) { return use_reference; }

/* OpenBLAS's threads spin (sched_yield) for 2^OPENBLAS_THREAD_TIMEOUT
 * cycles after each product before they sleep: 2^28, about 0.1 s, unless
 * the variable says otherwise. Between two products the moe_par pool runs
 * the elementwise work on the same cores, and a spinning OpenBLAS thread
 * takes a share of them. So, unless the user set the variable, OpenBLAS's
 * threads are restarted once with BLAS_THREAD_TIMEOUT, OpenBLAS's least
 * (2^4 cycles): they sleep as soon as a product is done, and waking one
 * costs microseconds, next to products of milliseconds (2^4 and 2^14 were
 * within the noise of each other; deploy/ sets 4 for clusters too).
 * Results do not change: only how threads wait. The functions are
 * OpenBLAS's own (exported by its pthread builds, read through dlsym);
 * where one is missing nothing changes. */
#define BLAS_THREAD_TIMEOUT "4"

int moe_blas_thread_timeout(void)
{
    int (*timeout)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "openblas_thread_timeout");
    return timeout ? timeout() : -1;
}

static void blas_quiet_threads(void)
{
    static bool done;
    if (done || getenv("OPENBLAS_THREAD_TIMEOUT"))
        return;
    done = true;
    void (*read_env)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "openblas_read_env");
    int (*shutdown)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "blas_thread_shutdown_");
    int (*init)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "blas_thread_init");
    if (!read_env || !shutdown || !init || moe_blas_thread_timeout() < 0)
        return;
    if (setenv("OPENBLAS_THREAD_TIMEOUT", BLAS_THREAD_TIMEOUT, 1) != 0)
        return;
    read_env();
    /* ours: children decide for themselves, as for a variable never set */
    unsetenv("OPENBLAS_THREAD_TIMEOUT");
    shutdown();
    init();
}

void moe_blas_set_threads(int n)
{
    const char *e = getenv("MOE_BLAS");
    use_reference = e && strcmp(e, "reference") == 0;
    const char *sp = getenv("MOE_BLAS_SPLIT");
    blas_quiet_threads();
    moe_par_set_threads(n);
    moe_blas_set_split(sp && strcmp(sp, "1") == 0);
}

bool moe_blas_split(void) { return split_on; }

void moe_blas_set_split(bool on)
{
    split_on = on;
    openblas_set_num_threads(on ? 1 : moe_par_threads());
}
