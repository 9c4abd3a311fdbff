/* Unit tests for common/moe_par: every task runs exactly once for any task
 * count and thread count, jobs follow one another without mixing (each job
 * checks its own context), a call from inside a task runs serially and
 * still completes, the thread count can be changed between jobs, and the
 * column sums keep the serial loop's bits. */
#include <check.h>
#include <stdatomic.h>
#include <string.h>

#include "moe_par.h"
#include "test_util.h"

Suite *test_par_suite(void);

enum { MAXT = 257 };

struct count_job {
    int id;
    int n;
    atomic_int hits[MAXT];
    atomic_int wrong; /* tasks that saw another job's context */
};

static void count_task(void *ctx, int task)
{
    struct count_job *j = ctx;
    if (task < 0 || task >= j->n)
        atomic_fetch_add(&j->wrong, 1);
    else
        atomic_fetch_add(&j->hits[task], 1);
}

static void run_counts(int threads)
{
    ck_assert_int_eq(moe_par_set_threads(threads), threads);
    ck_assert_int_eq(moe_par_threads(), threads);
    static struct count_job j;
    for (int rep = 0; rep < 400; rep++) {
        memset(&j, 0, sizeof j);
        j.id = rep;
        j.n = 1 + (rep * 37) % (MAXT - 1);
        moe_par_for(j.n, count_task, &j);
        ck_assert_int_eq(atomic_load(&j.wrong), 0);
        for (int k = 0; k < j.n; k++)
            ck_assert_msg(atomic_load(&j.hits[k]) == 1, "threads %d job %d: task %d ran %d times",
                          threads, rep, k, atomic_load(&j.hits[k]));
        for (int k = j.n; k < MAXT; k++)
            ck_assert_int_eq(atomic_load(&j.hits[k]), 0);
    }
}

START_TEST(par_each_task_once)
{
    run_counts(1);
    run_counts(2);
    run_counts(4);
    run_counts(2); /* shrinking stops the extra helpers */
    moe_par_for(0, count_task, NULL); /* no task: nothing runs */
    moe_par_set_threads(1);
}
END_TEST

struct nest_job {
    atomic_int inner[8][8];
};

static void inner_task(void *ctx, int task)
{
    atomic_int *row = ctx;
    atomic_fetch_add(&row[task], 1);
}

static void outer_task(void *ctx, int task)
{
    struct nest_job *j = ctx;
    moe_par_for(8, inner_task, j->inner[task]);
}

START_TEST(par_nested_runs_serially)
{
    moe_par_set_threads(2);
    static struct nest_job j;
    memset(&j, 0, sizeof j);
    moe_par_for(8, outer_task, &j);
    for (int a = 0; a < 8; a++)
        for (int b = 0; b < 8; b++)
            ck_assert_int_eq(atomic_load(&j.inner[a][b]), 1);
    moe_par_set_threads(1);
}
END_TEST

/* moe_par_colsum_acc equals the serial loop (each column summed in row
 * order, onto what was there) bit for bit, over several column tasks and
 * a short last one, rows four at a time and the rest, at 3 threads. */
START_TEST(par_colsum_equals_serial)
{
    enum { R = 77, C = 5000 };
    static float m[R * C], got[C], want[C];
    tu_fill(m, R * C, 30, 1.0f);
    tu_fill(got, C, 31, 1.0f);
    memcpy(want, got, sizeof want);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            want[c] += m[r * C + c];
    moe_par_set_threads(3);
    moe_par_colsum_acc(got, m, R, C);
    moe_par_set_threads(1);
    ck_assert_int_eq(memcmp(got, want, sizeof want), 0);
    ck_assert_int_eq(moe_par_tasks(600, 256), 3);
    ck_assert_int_eq(moe_par_tasks(0, 256), 0);
    int lo, hi;
    moe_par_span(2, 256, 600, &lo, &hi);
    ck_assert(lo == 512 && hi == 600);
}
END_TEST

Suite *test_par_suite(void)
{
    Suite *s = suite_create("par");
    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, par_each_task_once);
    tcase_add_test(tc, par_nested_runs_serially);
    tcase_add_test(tc, par_colsum_equals_serial);
    suite_add_tcase(s, tc);
    return s;
}
