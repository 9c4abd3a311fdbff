/* Unit tests for worker/moe_layer: the packed order of dispatch is by
 * expert, then source row ascending (tensor2tensor's SparseDispatcher
 * order), a slot whose gate is exactly 0 is not dispatched, experts without
 * rows are left out of the batch, combine equals a naive loop over slots
 * (bitwise, same order of float additions), and the two backward passes
 * route gradients to the slots and rows they came from. */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "moe_layer.h"
#include "test_util.h"

Suite *test_moe_layer_suite(void);

/* A made-up expert output: any value that depends on (expert, row, d). */
static float fake_expert(int e, int r, int d)
{
    return 0.25f * (float)e - 0.125f * (float)r + 0.0625f * (float)d + 0.01f * (float)(e * r);
}

/* 4 rows, K = 2, E = 4 (expert 1 gets a zero gate only, expert 3 nothing):
 * row 0: experts (2, 0), row 1: (0, 1) with gate 0 on 1, row 2: (2, 0),
 * row 3: (0, 2). */
enum { N = 4, K = 2, E = 4, D = 3 };
static const int32_t h_idx[N * K] = {2, 0, 0, 1, 2, 0, 0, 2};
static const float h_gates[N * K] = {0.625f, 0.375f, 1.0f, 0.0f, 0.5f, 0.5f, 0.75f, 0.25f};

START_TEST(layer_dispatch_order_by_hand)
{
    struct moe_dispatch m;
    ck_assert_int_eq(moe_dispatch_init(&m, N, K, E, D), 0);
    float x[N * D];
    for (int i = 0; i < N * D; i++)
        x[i] = (float)i;
    moe_dispatch_forward(&m, N, h_idx, h_gates, x);
    /* expert 0: rows 0, 1, 2, 3; expert 2: rows 0, 2, 3 */
    ck_assert_int_eq(m.total, 7);
    ck_assert_int_eq(m.n_active, 2);
    ck_assert_int_eq(m.ids[0], 0);
    ck_assert_int_eq(m.ids[1], 2);
    ck_assert_int_eq(m.rows[0], 4);
    ck_assert_int_eq(m.rows[1], 3);
    const int counts[E] = {4, 0, 3, 0};
    for (int e = 0; e < E; e++)
        ck_assert_int_eq(m.counts[e], counts[e]);
    const int32_t src[7] = {0, 1, 2, 3, 0, 2, 3};
    for (int p = 0; p < 7; p++)
        ck_assert_int_eq(m.src[p], src[p]);
    /* pos of each slot: row 0 (exp 2 -> 4, exp 0 -> 0), row 1 (0 -> 1,
     * gate 0 -> -1), row 2 (2 -> 5, 0 -> 2), row 3 (0 -> 3, 2 -> 6) */
    const int32_t pos[N * K] = {4, 0, 1, -1, 5, 2, 3, 6};
    for (int s = 0; s < N * K; s++)
        ck_assert_msg(m.pos[s] == pos[s], "slot %d: pos %d, expected %d", s, m.pos[s], pos[s]);
    /* packed inputs are copies of the source rows */
    for (int p = 0; p < 7; p++)
        ck_assert_int_eq(memcmp(m.xe + p * D, x + src[p] * D, sizeof(float) * D), 0);
    moe_dispatch_free(&m);
    ck_assert_ptr_null(m.xe);
}
END_TEST

START_TEST(layer_combine_by_hand)
{
    struct moe_dispatch m;
    ck_assert_int_eq(moe_dispatch_init(&m, N, K, E, D), 0);
    float x[N * D] = {0};
    moe_dispatch_forward(&m, N, h_idx, h_gates, x);
    const int32_t pexp[7] = {0, 0, 0, 0, 2, 2, 2};
    for (int p = 0; p < m.total; p++)
        for (int d = 0; d < D; d++)
            m.ye[p * D + d] = fake_expert(pexp[p], m.src[p], d);
    float y[N * D];
    for (int i = 0; i < N * D; i++)
        y[i] = NAN; /* overwritten */
    moe_combine_forward(y, &m, N, h_gates);
    /* row 1 is expert 0 alone (gate 1; the zero-gate slot contributes
     * nothing): exactly the expert output */
    for (int d = 0; d < D; d++)
        ck_assert_float_eq(y[1 * D + d], fake_expert(0, 1, d));
    /* row 0: 0.625 E2 + 0.375 E0, slot order */
    for (int d = 0; d < D; d++) {
        float want = 0.0f;
        want += 0.625f * fake_expert(2, 0, d);
        want += 0.375f * fake_expert(0, 0, d);
        ck_assert_float_eq(y[d], want);
    }
    moe_dispatch_free(&m);
}
END_TEST

/* Random routing: each row picks K distinct experts of E, some gates 0. */
static void random_routing(int32_t *idx, float *gates, int n, int k, int e, uint32_t stream)
{
    float u[4096];
    tu_fill(u, (size_t)n * k * 2, stream, 1.0f);
    for (int r = 0; r < n; r++) {
        for (int j = 0; j < k; j++) {
            int pick;
            bool dup;
            int tries = 0;
            do {
                pick = (int)((u[(r * k + j) * 2] * 0.5f + 0.5f) * (float)e + (float)tries) % e;
                dup = false;
                for (int q = 0; q < j; q++)
                    dup |= idx[r * k + q] == pick;
                tries++;
            } while (dup);
            idx[r * k + j] = pick;
            float g = u[(r * k + j) * 2 + 1];
            gates[r * k + j] = g < -0.7f ? 0.0f : 0.5f + 0.5f * fabsf(g);
        }
    }
}

START_TEST(layer_dispatch_order_random)
{
    enum { RN = 57, RK = 3, RE = 9, RD = 5 };
    int32_t idx[RN * RK];
    float gates[RN * RK], x[RN * RD];
    random_routing(idx, gates, RN, RK, RE, 7);
    tu_fill(x, RN * RD, 8, 1.0f);
    struct moe_dispatch m;
    ck_assert_int_eq(moe_dispatch_init(&m, RN, RK, RE, RD), 0);
    /* dispatch only the first n < N rows: the capacity is an upper bound */
    const int n = RN - 2;
    moe_dispatch_forward(&m, n, idx, gates, x);
    int zeros = 0, nonzero = 0;
    for (int s = 0; s < n * RK; s++) {
        if (gates[s] == 0.0f) {
            zeros++;
            ck_assert_int_eq(m.pos[s], -1);
        } else {
            nonzero++;
            ck_assert(m.pos[s] >= 0 && m.pos[s] < m.total);
            ck_assert_int_eq(m.src[m.pos[s]], s / RK);
        }
    }
    ck_assert_int_gt(zeros, 0);
    ck_assert_int_eq(m.total, nonzero);
    /* each packed row is used by exactly one slot */
    int used[RN * RK] = {0};
    for (int s = 0; s < n * RK; s++)
        if (m.pos[s] >= 0)
            used[m.pos[s]]++;
    for (int p = 0; p < m.total; p++)
        ck_assert_int_eq(used[p], 1);
    /* expert of each packed row, from the slots */
    int pexp[RN * RK];
    for (int s = 0; s < n * RK; s++)
        if (m.pos[s] >= 0)
            pexp[m.pos[s]] = idx[s];
    /* order: (expert, source row) strictly increasing */
    for (int p = 1; p < m.total; p++)
        ck_assert_msg(pexp[p - 1] < pexp[p] || (pexp[p - 1] == pexp[p] && m.src[p - 1] < m.src[p]),
                      "packed rows %d, %d out of order", p - 1, p);
    /* ids/rows list the experts with rows, ascending, and their counts */
    int off = 0;
    for (int a = 0; a < m.n_active; a++) {
        ck_assert_int_gt(m.rows[a], 0);
        if (a > 0)
            ck_assert_int_lt(m.ids[a - 1], m.ids[a]);
        for (int q = 0; q < m.rows[a]; q++)
            ck_assert_int_eq(pexp[off + q], m.ids[a]);
        ck_assert_int_eq(m.counts[m.ids[a]], m.rows[a]);
        off += m.rows[a];
    }
    ck_assert_int_eq(off, m.total);

    /* combine == naive loop over slots, bitwise */
    for (int p = 0; p < m.total; p++)
        for (int d = 0; d < RD; d++)
            m.ye[p * RD + d] = fake_expert(pexp[p], m.src[p], d);
    float y[RN * RD];
    moe_combine_forward(y, &m, n, gates);
    for (int r = 0; r < n; r++)
        for (int d = 0; d < RD; d++) {
            float want = 0.0f;
            for (int j = 0; j < RK; j++)
                if (gates[r * RK + j] != 0.0f)
                    want += gates[r * RK + j] * fake_expert(idx[r * RK + j], r, d);
            ck_assert_msg(y[r * RD + d] == want, "y[%d][%d] = %.9g, naive %.9g", r, d,
                          y[r * RD + d], want);
        }
    /* and within float rounding of the sum in double */
    for (int r = 0; r < n; r++)
        for (int d = 0; d < RD; d++) {
            double want = 0;
            for (int j = 0; j < RK; j++)
                want += (double)gates[r * RK + j] * fake_expert(idx[r * RK + j], r, d);
            ck_assert(fabs(y[r * RD + d] - want) <= 1e-6 * (fabs(want) + 1));
        }
    moe_dispatch_free(&m);
}
END_TEST

START_TEST(layer_backward_routes)
{
    struct moe_dispatch m;
    ck_assert_int_eq(moe_dispatch_init(&m, N, K, E, D), 0);
    float x[N * D] = {0}, dy[N * D];
    moe_dispatch_forward(&m, N, h_idx, h_gates, x);
    tu_fill(m.ye, (size_t)m.total * D, 20, 1.0f);
    tu_fill(dy, N * D, 21, 1.0f);
    float dgates[N * K];
    for (int s = 0; s < N * K; s++)
        dgates[s] = NAN;
    moe_combine_backward(dgates, &m, N, dy, h_gates);
    for (int s = 0; s < N * K; s++) {
        const int r = s / K, p = m.pos[s];
        if (p < 0) {
            ck_assert(dgates[s] == 0.0f);
            continue;
        }
        double dot = 0;
        for (int d = 0; d < D; d++) {
            dot += (double)dy[r * D + d] * m.ye[p * D + d];
            ck_assert_float_eq(m.dye[p * D + d], h_gates[s] * dy[r * D + d]);
        }
        ck_assert(fabs(dgates[s] - dot) <= 1e-6 * (fabs(dot) + 1e-3));
    }
    /* dispatch backward: dx += sum of dxe over a row's slots, onto a
     * non-zero start */
    tu_fill(m.dxe, (size_t)m.total * D, 22, 1.0f);
    float dx[N * D];
    for (int i = 0; i < N * D; i++)
        dx[i] = 1.0f;
    moe_dispatch_backward(dx, &m, N);
    for (int r = 0; r < N; r++)
        for (int d = 0; d < D; d++) {
            float want = 1.0f;
            for (int j = 0; j < K; j++)
                if (m.pos[r * K + j] >= 0)
                    want += m.dxe[m.pos[r * K + j] * D + d];
            ck_assert_float_eq(dx[r * D + d], want);
        }
    moe_dispatch_free(&m);
}
END_TEST

START_TEST(layer_all_gates_zero)
{
    /* Nothing dispatched: no active experts, y = 0, dx unchanged. */
    struct moe_dispatch m;
    ck_assert_int_eq(moe_dispatch_init(&m, 2, 2, 3, 2), 0);
    const int32_t idx[4] = {0, 1, 2, 0};
    const float gates[4] = {0, 0, 0, 0};
    const float x[4] = {1, 2, 3, 4};
    moe_dispatch_forward(&m, 2, idx, gates, x);
    ck_assert_int_eq(m.total, 0);
    ck_assert_int_eq(m.n_active, 0);
    float y[4] = {5, 5, 5, 5}, dx[4] = {1, 1, 1, 1};
    moe_combine_forward(y, &m, 2, gates);
    for (int i = 0; i < 4; i++)
        ck_assert(y[i] == 0.0f && !signbit(y[i]));
    moe_dispatch_backward(dx, &m, 2);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq(dx[i], 1.0f);
    moe_dispatch_free(&m);
}
END_TEST

Suite *test_moe_layer_suite(void)
{
    Suite *s = suite_create("moe_layer");
    TCase *tc = tcase_create("dispatch");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, layer_dispatch_order_by_hand);
    tcase_add_test(tc, layer_combine_by_hand);
    tcase_add_test(tc, layer_dispatch_order_random);
    tcase_add_test(tc, layer_backward_routes);
    tcase_add_test(tc, layer_all_gates_zero);
    suite_add_tcase(s, tc);
    return s;
}
