/* Tests of the coordinator's balancing statistics (server/coordinator/coord_stats.c):
 * global vectors are rank-order sums whatever the arrival order, every bad
 * submission is rejected without a change, and the history adds up. */
#include <math.h>
#include <string.h>

#include "coord_stats.h"
#include "moe_err.h"
#include "test_util.h"

#define E 4

/* Values whose float sum depends on the order: 1e8 + 1 + (-1e8). */
static const float imp_r[3][E] = {{1e8f, 1, 2, 3}, {1, 1, 1, 1}, {-1e8f, 0.5f, 0.25f, 0}};

static void submit_ok(coord_stats_t *s, int64_t step, int rank, int want)
{
    float load[E], rows[E];
    for (int e = 0; e < E; e++) {
        load[e] = (float)(rank + e);
        rows[e] = (float)(10 * rank + e);
    }
    char err[256] = "";
    int rc = coord_stats_submit(s, step, rank, imp_r[rank], load, rows, 2.0 + rank, 100.0 * (rank + 1),
                                err, sizeof err);
    ck_assert_msg(rc == want, "submit(step %lld, rank %d) = %d (%s)", (long long)step, rank, rc, err);
}

START_TEST(stats_rank_order_sum)
{
    /* arrival order 2, 0, 1: the sum must still be ((r0 + r1) + r2) */
    coord_stats_t *s = coord_stats_new(E, 3, 0.5, 8);
    ck_assert_ptr_nonnull(s);
    submit_ok(s, 5, 2, 0);
    ck_assert_int_eq(coord_stats_missing(s), 2);
    submit_ok(s, 5, 0, 0);
    submit_ok(s, 5, 1, 1);
    ck_assert_int_eq(coord_stats_completed_step(s), 5);
    ck_assert_int_eq(coord_stats_current_step(s), 6);
    const float *g = coord_stats_global_importance(s);
    for (int e = 0; e < E; e++) {
        float want = (imp_r[0][e] + imp_r[1][e]) + imp_r[2][e];
        ck_assert_msg(memcmp(&g[e], &want, sizeof want) == 0, "expert %d: %g != %g", e, g[e], want);
    }
    /* the order matters for expert 0: arrival order would give 1e8 + ... */
    float arrival = (imp_r[2][0] + imp_r[0][0]) + imp_r[1][0];
    ck_assert_float_ne(arrival, g[0]);
    const float *rows = coord_stats_global_rows(s), *load = coord_stats_global_load(s);
    for (int e = 0; e < E; e++) {
        ck_assert_float_eq(rows[e], (float)(0 + 10 + 20 + 3 * e));
        ck_assert_float_eq(load[e], (float)(0 + 1 + 2 + 3 * e));
    }
    coord_stats_destroy(&s);
    ck_assert_ptr_null(s);
}
END_TEST

START_TEST(stats_rejections_change_nothing)
{
    coord_stats_t *s = coord_stats_new(E, 2, 0.5, 8);
    float v[E] = {1, 2, 3, 4}, bad[E] = {1, NAN, 3, 4}, neg[E] = {1, -1, 0, 0};
    char err[256];
    submit_ok(s, 0, 0, 0);
    ck_assert_int_eq(coord_stats_submit(s, 0, 2, v, v, v, 1, 1, err, sizeof err), MOE_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(err, "rank 2"));
    ck_assert_int_eq(coord_stats_submit(s, 0, -1, v, v, v, 1, 1, err, sizeof err), MOE_ERR_RANGE);
    ck_assert_int_eq(coord_stats_submit(s, 0, 0, v, v, v, 1, 1, err, sizeof err), MOE_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(err, "duplicate"));
    ck_assert_int_eq(coord_stats_submit(s, 1, 1, v, v, v, 1, 1, err, sizeof err), MOE_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(err, "future"));
    ck_assert_int_eq(coord_stats_submit(s, 0, 1, bad, v, v, 1, 1, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_int_eq(coord_stats_submit(s, 0, 1, v, v, neg, 1, 1, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_int_eq(coord_stats_submit(s, 0, 1, v, v, v, INFINITY, 1, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_int_eq(coord_stats_missing(s), 1);
    ck_assert_int_eq(coord_stats_completed_step(s), -1);
    submit_ok(s, 0, 1, 1);
    ck_assert_int_eq(coord_stats_submit(s, 0, 1, v, v, v, 1, 1, err, sizeof err), MOE_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(err, "stale"));
    coord_stats_destroy(&s);
}
END_TEST

START_TEST(stats_history)
{
    coord_stats_t *s = coord_stats_new(E, 2, 0.5, 3);
    for (int64_t step = 10; step < 15; step++) {
        submit_ok(s, step, 0, 0);
        submit_ok(s, step, 1, 1);
    }
    /* rows: worker 0 gives e, worker 1 gives 10 + e per step, five steps */
    for (int e = 0; e < E; e++) {
        const struct coord_expert_stats *x = coord_stats_expert(s, e);
        ck_assert_double_eq(x->rows_last, 10 + 2 * e);
        ck_assert_double_eq(x->rows_total, 5.0 * (10 + 2 * e));
        ck_assert_double_eq(x->load_last, 1 + 2 * e);
        ck_assert_double_eq(x->load_avg, 1 + 2 * e); /* constant input: the average is exact */
    }
    const struct coord_worker_stats *w1 = coord_stats_worker(s, 1);
    ck_assert(w1->seen);
    ck_assert_int_eq(w1->step, 14);
    ck_assert_double_eq(w1->tokens_per_sec, 200.0);
    const int64_t *steps;
    const double *loss;
    size_t n = coord_stats_loss_history(s, &steps, &loss);
    ck_assert_uint_eq(n, 3);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(steps[i], 12 + (int64_t)i);
        ck_assert_double_eq(loss[i], 2.5); /* mean of 2 and 3 */
    }
    /* rows 10, 12, 14, 16: max/mean = 16 / 13 */
    ck_assert_double_eq_tol(coord_stats_max_over_mean_rows(s), 16.0 / 13.0, 1e-12);
    /* load 1, 3, 5, 7: population CV with the epsilons of the balancing loss */
    double mean = 16 / (4 + 1e-10), var = 0;
    for (int e = 0; e < E; e++)
        var += (1 + 2 * e - mean) * (1 + 2 * e - mean);
    var /= 4 + 1e-10;
    ck_assert_double_eq_tol(coord_stats_cv_load(s), sqrt(var / (mean * mean + 1e-10)), 1e-12);
    coord_stats_destroy(&s);
}
END_TEST

START_TEST(stats_bad_arguments)
{
    ck_assert_ptr_null(coord_stats_new(0, 1, 0.5, 1));
    ck_assert_ptr_null(coord_stats_new(1, 0, 0.5, 1));
    ck_assert_ptr_null(coord_stats_new(1, 1, 1.0, 1));
    ck_assert_ptr_null(coord_stats_new(1, 1, 0.5, 0));
    coord_stats_destroy(NULL);
}
END_TEST

/* A hierarchical MoE's per-group factors of Load_H (issue 17) travel as
 * extras: summed in rank order whatever the arrival order, and a
 * submission with a missing, non-finite or negative extra is refused with
 * nothing changed. */
START_TEST(stats_extras_rank_order)
{
    coord_stats_t *s = coord_stats_new(E, 3, 0.5, 8);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(coord_stats_set_groups(s, 1), 0);
    ck_assert_int_eq(coord_stats_n_extras(s), 2);
    const float x[3][2] = {{1e8f, 3}, {1, 4}, {-1e8f + 0.0f, 5}};
    /* float sums that depend on the order: (1e8 + 3) + 3 = 1e8, (3 + 3) + 1e8 = 1e8 + 8 */
    const float pos[3][2] = {{1e8f, 3}, {3, 4}, {3, 5}};
    float zero[E] = {0};
    char err[256];
    /* refused: no extras, a negative one, a NaN; nothing changes */
    ck_assert_int_eq(coord_stats_submit(s, 0, 0, zero, zero, zero, 1, 1, err, sizeof err),
                     MOE_ERR_FORMAT);
    ck_assert_int_eq(coord_stats_submit_ex(s, 0, 0, zero, zero, zero, x[2], 1, 1, err, sizeof err),
                     MOE_ERR_FORMAT);
    const float nan2[2] = {NAN, 0};
    ck_assert_int_eq(coord_stats_submit_ex(s, 0, 0, zero, zero, zero, nan2, 1, 1, err, sizeof err),
                     MOE_ERR_FORMAT);
    ck_assert_int_eq(coord_stats_missing(s), 3);
    /* arrival 1, 2, 0; the sum is ((r0 + r1) + r2) */
    const int order[3] = {1, 2, 0};
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(coord_stats_submit_ex(s, 0, order[k], zero, zero, zero, pos[order[k]], 1,
                                               1, err, sizeof err),
                         k == 2 ? 1 : 0);
    const float *g = coord_stats_global_extras(s);
    for (int i = 0; i < 2; i++) {
        const float want = (pos[0][i] + pos[1][i]) + pos[2][i];
        ck_assert(memcmp(&g[i], &want, sizeof want) == 0);
    }
    ck_assert_float_ne((pos[1][0] + pos[2][0]) + pos[0][0], g[0]);
    (void)x;
    coord_stats_destroy(&s);
}
END_TEST

/* A hierarchical MoE of 2 groups of 2 experts, 2 workers, by hand (issue
 * 17, point 8). The sums: Importance_H {1.5, 1, 1, 0.5}, secondary loads
 * {1.5, 1.5, 3, 1}, rows routed {2, 2, 5, 3}, Load_p {2, 4}, |X^(i)| {4, 8}.
 * Load_H = Load_i,j Load_p,i / |X^(i)| = {0.75, 0.75, 1.5, 0.5}: mean 0.875,
 * variance 0.140625, cv^2 = 0.140625 / 0.765625 = 9/49. Importance_H:
 * mean 1, variance 0.125, cv^2 = 1/8. Groups: Importance {2.5, 1.5} (CV
 * 0.5 / 2 = 1/4), Load_p {2, 4} (CV 1/3), rows routed to their experts
 * {4, 8} = |X^(i)| (k = 1). The workers get back the secondary loads' sums
 * and the factors, not Load_H. */
START_TEST(stats_hierarchical_by_hand)
{
    coord_stats_t *s = coord_stats_new(E, 2, 0.5, 8);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(coord_stats_set_groups(s, 0), MOE_ERR_RANGE);
    ck_assert_int_eq(coord_stats_set_groups(s, 3), MOE_ERR_RANGE); /* 4 experts */
    ck_assert_int_eq(coord_stats_n_groups(s), 0);
    ck_assert_int_eq(coord_stats_set_groups(s, 2), 0);
    ck_assert_int_eq(coord_stats_n_groups(s), 2);
    ck_assert_int_eq(coord_stats_n_extras(s), 4);
    const float imp[2][E] = {{1, 0.5f, 0.5f, 0.25f}, {0.5f, 0.5f, 0.5f, 0.25f}};
    const float load[2][E] = {{1, 0.5f, 2, 1}, {0.5f, 1, 1, 0}};
    const float rows[2][E] = {{1, 1, 3, 1}, {1, 1, 2, 2}};
    const float fx[2][4] = {{1.5f, 2.5f, 3, 5}, {0.5f, 1.5f, 1, 3}};
    char err[256];
    for (int step = 0; step < 2; step++)
        for (int r = 0; r < 2; r++)
            ck_assert_int_eq(coord_stats_submit_ex(s, step, r, imp[r], load[r], rows[r], fx[r], 1,
                                                   1, err, sizeof err),
                             r);
    const double load_h[E] = {0.75, 0.75, 1.5, 0.5}, load2[E] = {1.5, 1.5, 3, 1};
    const float *lh = coord_stats_balance_load(s), *lg = coord_stats_global_load(s);
    for (int e = 0; e < E; e++) {
        const struct coord_expert_stats *x = coord_stats_expert(s, e);
        ck_assert_double_eq_tol(lh[e], load_h[e], 1e-9);
        ck_assert_double_eq_tol(x->load_last, load_h[e], 1e-9);
        ck_assert_double_eq_tol(x->load_avg, load_h[e], 1e-9);
        ck_assert_double_eq(x->load_group_last, load2[e]);
        ck_assert_double_eq(lg[e], load2[e]); /* what the workers get back */
        /* the history records Load_H */
        ck_assert_double_eq(coord_history_load(coord_stats_history(s), 1, e), lh[e]);
    }
    ck_assert_double_eq_tol(coord_stats_cv2_load(s), 9.0 / 49, 1e-9);
    ck_assert_double_eq_tol(coord_stats_cv_load(s), 3.0 / 7, 1e-9);
    ck_assert_double_eq_tol(coord_stats_cv2_importance(s), 0.125, 1e-9);
    ck_assert_double_eq_tol(coord_stats_cv_group_importance(s), 0.25, 1e-9);
    ck_assert_double_eq_tol(coord_stats_cv_group_load(s), 1.0 / 3, 1e-9);
    const double g_imp[2] = {2.5, 1.5}, g_lp[2] = {2, 4}, g_n[2] = {4, 8};
    for (int i = 0; i < 2; i++) {
        const struct coord_group_stats *g = coord_stats_group(s, i);
        ck_assert_double_eq(g->rows_last, g_n[i]);
        ck_assert_double_eq(g->rows_total, 2 * g_n[i]);
        ck_assert_double_eq(g->expert_rows_last, g_n[i]);
        ck_assert_double_eq(g->importance_last, g_imp[i]);
        ck_assert_double_eq(g->importance_avg, g_imp[i]);
        ck_assert_double_eq(g->load_last, g_lp[i]);
        ck_assert_double_eq(g->load_avg, g_lp[i]);
    }
    coord_stats_destroy(&s);
}
END_TEST

Suite *test_coord_stats_suite(void);
Suite *test_coord_stats_suite(void)
{
    Suite *s = suite_create("coord_stats");
    TCase *tc = tcase_create("stats");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, stats_rank_order_sum);
    tcase_add_test(tc, stats_rejections_change_nothing);
    tcase_add_test(tc, stats_history);
    tcase_add_test(tc, stats_bad_arguments);
    tcase_add_test(tc, stats_extras_rank_order);
    tcase_add_test(tc, stats_hierarchical_by_hand);
    suite_add_tcase(s, tc);
    return s;
}
