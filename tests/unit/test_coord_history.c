/* Tests of the per-expert history behind the dashboard's heatmap
 * (server/coordinator/coord_history.c): exact sums per column, pairwise
 * downsampling when full, gaps, replayed steps ignored, bounded columns
 * over a long run with many experts, and the coordinator's statistics
 * feeding it. */
#include <string.h>

#include "coord_history.h"
#include "coord_stats.h"
#include "test_util.h"

#define E 3

/* Step s gives expert e rows 10 s + e and Load s + e / 4 (exact in float). */
static void add_step(coord_history_t *h, int64_t s, bool want)
{
    float rows[E], load[E];
    for (int e = 0; e < E; e++) {
        rows[e] = (float)(10 * s + e);
        load[e] = (float)s + (float)e / 4;
    }
    ck_assert_msg(coord_history_add(h, s, rows, load) == want, "add(step %lld)", (long long)s);
}

/* Column col holds exactly the steps lo..hi (inclusive, all of them). */
static void check_column(const coord_history_t *h, int col, int64_t lo, int64_t hi)
{
    ck_assert_int_eq(coord_history_steps(h, col), hi - lo + 1);
    for (int e = 0; e < E; e++) {
        double rows = 0, load = 0;
        for (int64_t s = lo; s <= hi; s++) {
            rows += 10.0 * (double)s + e;
            load += (double)s + e / 4.0;
        }
        ck_assert_msg(coord_history_rows(h, col, e) == rows, "column %d expert %d: rows %g, want %g",
                      col, e, coord_history_rows(h, col, e), rows);
        ck_assert_msg(coord_history_load(h, col, e) == load, "column %d expert %d: Load %g, want %g",
                      col, e, coord_history_load(h, col, e), load);
    }
}

START_TEST(history_bad_arguments)
{
    ck_assert_ptr_null(coord_history_new(0, 4));
    ck_assert_ptr_null(coord_history_new(E, 0));
    ck_assert_ptr_null(coord_history_new(E, 3));
    ck_assert_ptr_null(coord_history_new(E, -2));
    coord_history_t *h = coord_history_new(E, 2);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(coord_history_columns(h), 0);
    ck_assert_int_eq(coord_history_first_step(h), -1);
    ck_assert_int_eq(coord_history_last_step(h), -1);
    add_step(h, -1, false);
    ck_assert_int_eq(coord_history_columns(h), 0);
    coord_history_destroy(&h);
    ck_assert_ptr_null(h);
    coord_history_destroy(&h);
}
END_TEST

START_TEST(history_exact_and_downsampled)
{
    coord_history_t *h = coord_history_new(E, 4);
    /* four steps fill four columns of one step each */
    for (int64_t s = 10; s < 14; s++)
        add_step(h, s, true);
    ck_assert_int_eq(coord_history_columns(h), 4);
    ck_assert_int_eq(coord_history_width(h), 1);
    ck_assert_int_eq(coord_history_first_step(h), 10);
    for (int c = 0; c < 4; c++)
        check_column(h, c, 10 + c, 10 + c);
    /* the fifth merges pairs: 10-11, 12-13, 14 */
    add_step(h, 14, true);
    ck_assert_int_eq(coord_history_columns(h), 3);
    ck_assert_int_eq(coord_history_width(h), 2);
    check_column(h, 0, 10, 11);
    check_column(h, 1, 12, 13);
    check_column(h, 2, 14, 14);
    for (int64_t s = 15; s < 18; s++)
        add_step(h, s, true);
    ck_assert_int_eq(coord_history_columns(h), 4);
    check_column(h, 3, 16, 17);
    /* step 18 halves again: 10-13, 14-17, 18 */
    add_step(h, 18, true);
    ck_assert_int_eq(coord_history_columns(h), 3);
    ck_assert_int_eq(coord_history_width(h), 4);
    check_column(h, 0, 10, 13);
    check_column(h, 1, 14, 17);
    check_column(h, 2, 18, 18);
    ck_assert_int_eq(coord_history_last_step(h), 18);
    /* the cells beyond the columns in use are zero (merged away) */
    ck_assert_int_eq(coord_history_steps(h, 3), 0);
    ck_assert(coord_history_rows(h, 3, 0) == 0 && coord_history_load(h, 3, E - 1) == 0);
    coord_history_destroy(&h);
}
END_TEST

START_TEST(history_replay_and_gaps)
{
    coord_history_t *h = coord_history_new(E, 4);
    add_step(h, 5, true);
    add_step(h, 6, true);
    /* a rollback replays 5 and 6: not recorded again */
    add_step(h, 5, false);
    add_step(h, 6, false);
    check_column(h, 0, 5, 5);
    check_column(h, 1, 6, 6);
    /* a gap: step 11 is beyond column 3 (step 8): width 2, column 3
     * (steps 11-12), columns 1 and 2 empty */
    add_step(h, 11, true);
    ck_assert_int_eq(coord_history_width(h), 2);
    ck_assert_int_eq(coord_history_columns(h), 4);
    check_column(h, 0, 5, 6);
    ck_assert_int_eq(coord_history_steps(h, 1), 0);
    ck_assert_int_eq(coord_history_steps(h, 2), 0);
    check_column(h, 3, 11, 11);
    /* a gap of billions of steps: still bounded, still exact */
    add_step(h, 5 + (INT64_C(1) << 40), true);
    ck_assert_int_eq(coord_history_width(h), INT64_C(1) << 39);
    ck_assert_int_eq(coord_history_columns(h), 3);
    ck_assert_int_eq(coord_history_steps(h, 0), 3);
    ck_assert_int_eq(coord_history_steps(h, 1), 0);
    ck_assert_int_eq(coord_history_steps(h, 2), 1);
    coord_history_destroy(&h);
}
END_TEST

START_TEST(history_long_run_bounded)
{
    /* 1,024 experts, 20,000 steps: 128 columns at most, every step counted
     * once, every row routed counted once */
    enum { N = 1024, STEPS = 20000 };
    coord_history_t *h = coord_history_new(N, 128);
    static float rows[N], load[N];
    for (int e = 0; e < N; e++) {
        rows[e] = (float)(e % 7);
        load[e] = 0.5f;
    }
    for (int64_t s = 0; s < STEPS; s++) {
        ck_assert(coord_history_add(h, s, rows, load));
        ck_assert_int_le(coord_history_columns(h), 128);
    }
    /* 20,000 steps over 128 columns: width 256 (20,000 / 128 = 156.25) */
    ck_assert_int_eq(coord_history_width(h), 256);
    ck_assert_int_eq(coord_history_columns(h), (STEPS + 255) / 256);
    int64_t steps = 0;
    for (int c = 0; c < coord_history_columns(h); c++) {
        const int64_t want = c + 1 < coord_history_columns(h) ? 256 : STEPS - 256 * c;
        ck_assert_int_eq(coord_history_steps(h, c), want);
        steps += want;
        for (int e = 0; e < N; e += 101) {
            ck_assert(coord_history_rows(h, c, e) == (double)want * (e % 7));
            ck_assert(coord_history_load(h, c, e) == (double)want * 0.5);
        }
    }
    ck_assert_int_eq(steps, STEPS);
    coord_history_destroy(&h);
}
END_TEST

START_TEST(history_from_stats)
{
    /* two workers, three steps, a rollback to step 1 and its replay */
    coord_stats_t *s = coord_stats_new(E, 2, 0.5, 8);
    char err[256];
    for (int round = 0; round < 2; round++) {
        for (int64_t step = round ? 1 : 0; step < 3; step++) {
            for (int r = 0; r < 2; r++) {
                float imp[E] = {1, 1, 1}, load[E], rows[E];
                for (int e = 0; e < E; e++) {
                    rows[e] = (float)(step + 10 * r + e);
                    load[e] = (float)(r + e) / 2;
                }
                ck_assert_int_ge(coord_stats_submit(s, step, r, imp, load, rows, 1, 1, err,
                                                    sizeof err), 0);
            }
        }
        if (!round)
            coord_stats_restart(s, 1);
    }
    const coord_history_t *h = coord_stats_history(s);
    ck_assert_int_eq(coord_history_capacity(h), COORD_HISTORY_COLUMNS);
    ck_assert_int_eq(coord_history_columns(h), 3);
    for (int c = 0; c < 3; c++) {
        ck_assert_int_eq(coord_history_steps(h, c), 1);
        for (int e = 0; e < E; e++) {
            ck_assert(coord_history_rows(h, c, e) == (double)(2 * c + 10 + 2 * e));
            ck_assert(coord_history_load(h, c, e) == (double)(1 + 2 * e) / 2);
        }
    }
    /* the totals count the replay again; the history does not */
    ck_assert(coord_stats_expert(s, 0)->rows_total == 10 + 12 + 14 + 12 + 14);
    coord_stats_destroy(&s);
}
END_TEST

Suite *test_coord_history_suite(void);
Suite *test_coord_history_suite(void)
{
    Suite *s = suite_create("coord_history");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, history_bad_arguments);
    tcase_add_test(tc, history_exact_and_downsampled);
    tcase_add_test(tc, history_replay_and_gaps);
    tcase_add_test(tc, history_long_run_bounded);
    tcase_add_test(tc, history_from_stats);
    suite_add_tcase(s, tc);
    return s;
}
