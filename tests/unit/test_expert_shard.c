/* Unit tests for common/expert_shard: ids kept sorted and found by binary
 * search; initialisation keyed by global expert id only (the same expert in
 * two shards holding different id sets starts bitwise equal, which is what
 * lets experts move between servers); a batch of several experts equals
 * expert_ffn on each group alone, bitwise; errors (unknown id, a backward
 * whose layout differs from the forward's) change nothing; apply with zero
 * gradients leaves the weights alone (beta1 = 0) but decays the second
 * moment; the optimizer state is O(rows + cols) per matrix; recomputed
 * hidden activations give the same bits as kept ones. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "expert_ffn.h"
#include "expert_shard.h"
#include "moe_blas.h"
#include "moe_err.h"
#include "moe_optim.h"
#include "moe_par.h"
#include "moe_rng.h"
#include "moe_tensor.h"
#include "test_util.h"

Suite *test_expert_shard_suite(void);

enum { D = 8, H = 12 };
#define SEED 2024u

static const struct moe_fadam_opts opts = {
    .beta2 = 0.999, .decay_pow = 0, .eps = 1e-8, .eps1 = 1e-30, .clip = 0,
    .relative_step = false, .eps2 = 1e-3};

static expert_shard_t *new_shard(int n, const int32_t *ids)
{
    expert_shard_t *s = expert_shard_new(D, H, n, ids, SEED, &opts);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Every expert's parameters and optimizer state, bit for bit. */
static void assert_shards_equal(expert_shard_t *a, expert_shard_t *b, int n)
{
    int D_, H_;
    expert_shard_dims(a, &D_, &H_);
    const size_t P = expert_ffn_param_count(D_, H_), S = expert_shard_opt_state_size(a);
    for (int e = 0; e < n; e++) {
        ck_assert_int_eq(memcmp(expert_shard_params(a, e), expert_shard_params(b, e),
                                sizeof(float) * P), 0);
        ck_assert_int_eq(memcmp(expert_shard_opt_state(a, e), expert_shard_opt_state(b, e),
                                sizeof(float) * S), 0);
    }
}

START_TEST(shard_ids_sorted_and_found)
{
    const int32_t ids[] = {17, 3, 42, 8, 0};
    expert_shard_t *s = new_shard(5, ids);
    ck_assert_int_eq(expert_shard_count(s), 5);
    const int32_t sorted[] = {0, 3, 8, 17, 42};
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(expert_shard_id(s, i), sorted[i]);
        ck_assert_int_eq(expert_shard_find(s, sorted[i]), i);
    }
    const int32_t absent[] = {-1, 1, 2, 4, 9, 16, 18, 41, 43, 1000000};
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++)
        ck_assert_int_eq(expert_shard_find(s, absent[i]), -1);
    expert_shard_destroy(&s);
    ck_assert_ptr_null(s);
    expert_shard_destroy(&s); /* NULL is fine */

    /* an empty shard finds nothing */
    expert_shard_t *e = expert_shard_new(D, H, 0, NULL, SEED, &opts);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(expert_shard_count(e), 0);
    ck_assert_int_eq(expert_shard_find(e, 0), -1);
    expert_shard_destroy(&e);
}
END_TEST

START_TEST(shard_rejects_bad_ids)
{
    const int32_t dup[] = {4, 1, 4}, neg[] = {2, -3}, one_neg[] = {-1};
    ck_assert_ptr_null(expert_shard_new(D, H, 3, dup, SEED, &opts));
    ck_assert_ptr_null(expert_shard_new(D, H, 2, neg, SEED, &opts));
    ck_assert_ptr_null(expert_shard_new(D, H, 1, one_neg, SEED, &opts));
    const int32_t ok[] = {1};
    ck_assert_ptr_null(expert_shard_new(0, H, 1, ok, SEED, &opts));
    ck_assert_ptr_null(expert_shard_new(D, 0, 1, ok, SEED, &opts));
    ck_assert_ptr_null(expert_shard_new(D, H, -1, ok, SEED, &opts));
}
END_TEST

START_TEST(shard_init_depends_on_id_only)
{
    const int32_t ids_a[] = {5, 1}, ids_b[] = {9, 5, 2, 3, 7};
    expert_shard_t *a = new_shard(2, ids_a), *b = new_shard(5, ids_b);
    const size_t P = expert_ffn_param_count(D, H);
    const int ia = expert_shard_find(a, 5), ib = expert_shard_find(b, 5);
    ck_assert_int_ne(ia, ib); /* local positions 1 and 2: storage order differs */
    ck_assert_int_eq(memcmp(expert_shard_params(a, ia), expert_shard_params(b, ib),
                            sizeof(float) * P),
                     0);
    /* Keyed by name: w1 of expert 5 is the fill of "moe.experts.5.w1.weight". */
    float *w1 = malloc(sizeof(float) * H * D);
    moe_rng_fill_uniform(w1, (size_t)H * D, "moe.experts.5.w1.weight", SEED, 1.0f / sqrtf(D));
    ck_assert_int_eq(memcmp(expert_shard_params(a, ia), w1, sizeof(float) * H * D), 0);
    free(w1);
    /* Different experts start different; bounds 1/sqrt(fan_in). */
    const float *p1 = expert_shard_params(a, expert_shard_find(a, 1));
    const float *p5 = expert_shard_params(a, ia);
    int same = 0;
    for (size_t i = 0; i < P; i++)
        same += p1[i] == p5[i];
    ck_assert_int_lt(same, 3);
    struct expert_ffn_params p = expert_ffn_view(expert_shard_params(b, ib), D, H);
    for (int i = 0; i < H * D; i++)
        ck_assert(fabsf(p.w1[i]) <= 1.0f / sqrtf(D) && fabsf(p.w2[i]) <= 1.0f / sqrtf(H));
    /* A different seed gives different parameters. */
    expert_shard_t *c = expert_shard_new(D, H, 2, ids_a, SEED + 1, &opts);
    ck_assert(memcmp(expert_shard_params(c, ia), p5, sizeof(float) * P) != 0);
    /* Fresh shards: zero gradients, zero optimizer state, step 0. */
    const size_t S = expert_shard_opt_state_size(b);
    for (int e = 0; e < 5; e++) {
        const float *g = expert_shard_grads(b, e), *st = expert_shard_opt_state(b, e);
        for (size_t i = 0; i < P; i++)
            ck_assert(g[i] == 0.0f);
        for (size_t i = 0; i < S; i++)
            ck_assert(st[i] == 0.0f);
        ck_assert_int_eq(*expert_shard_opt_step(b, e), 0);
    }
    expert_shard_destroy(&a);
    expert_shard_destroy(&b);
    expert_shard_destroy(&c);
}
END_TEST

START_TEST(shard_opt_state_is_factored)
{
    const int32_t ids[] = {0};
    expert_shard_t *s = new_shard(1, ids);
    /* w1 (H,D): H + D; b1: H; w2 (D,H): D + H; b2: D -- not 2 * params */
    ck_assert_uint_eq(expert_shard_opt_state_size(s), (size_t)(H + D) + H + (D + H) + D);
    ck_assert_uint_lt(expert_shard_opt_state_size(s), expert_ffn_param_count(D, H));
    expert_shard_destroy(&s);
}
END_TEST

/* Two experts, 3 and 5 rows. */
static const int32_t b_ids[2] = {4, 9};
static const int b_rows[2] = {3, 5};
enum { BR = 8 };

START_TEST(shard_batch_equals_ffn_per_expert)
{
    const int32_t ids[] = {9, 1, 4};
    expert_shard_t *s = new_shard(3, ids);
    const size_t P = expert_ffn_param_count(D, H);
    float x[BR * D], y[BR * D], dy[BR * D], dx[BR * D];
    tu_fill(x, BR * D, 10, 1.0f);
    tu_fill(dy, BR * D, 11, 1.0f);
    ck_assert_int_eq(expert_shard_forward(s, 2, b_ids, b_rows, x, y), 0);
    ck_assert_int_eq(expert_shard_backward(s, 2, b_ids, b_rows, dy, dx), 0);

    size_t off = 0;
    for (int e = 0; e < 2; e++) {
        const int li = expert_shard_find(s, b_ids[e]), R = b_rows[e];
        float *w = malloc(sizeof(float) * P), *g = calloc(P, sizeof(float));
        memcpy(w, expert_shard_params(s, li), sizeof(float) * P);
        struct expert_ffn_params p = expert_ffn_view(w, D, H), dp = expert_ffn_view(g, D, H);
        float ye[5 * D], ze[5 * H], dxe[5 * D], dze[5 * H];
        expert_ffn_forward(ye, ze, x + off * D, &p, R, D, H);
        expert_ffn_backward(dxe, &dp, dze, dy + off * D, x + off * D, ze, &p, R, D, H);
        ck_assert_int_eq(memcmp(ye, y + off * D, sizeof(float) * (size_t)R * D), 0);
        ck_assert_int_eq(memcmp(dxe, dx + off * D, sizeof(float) * (size_t)R * D), 0);
        ck_assert_int_eq(memcmp(g, expert_shard_grads(s, li), sizeof(float) * P), 0);
        free(w);
        free(g);
        off += (size_t)R;
    }
    /* the expert that got no rows has no gradient */
    const float *g1 = expert_shard_grads(s, expert_shard_find(s, 1));
    for (size_t i = 0; i < P; i++)
        ck_assert(g1[i] == 0.0f);
    /* a second backward of the same batch accumulates: gradients double
     * (bias sums add row by row onto the first sum, so up to rounding) */
    float *g4 = malloc(sizeof(float) * P);
    memcpy(g4, expert_shard_grads(s, expert_shard_find(s, 4)), sizeof(float) * P);
    ck_assert_int_eq(expert_shard_backward(s, 2, b_ids, b_rows, dy, dx), 0);
    const float *g4b = expert_shard_grads(s, expert_shard_find(s, 4));
    for (size_t i = 0; i < P; i++)
        ck_assert_msg(fabsf(g4b[i] - 2.0f * g4[i]) <= 1e-6f * fabsf(g4[i]) + 1e-30f,
                      "grad %zu: %g after two backwards, %g after one", i, g4b[i], g4[i]);
    free(g4);
    expert_shard_destroy(&s);
}
END_TEST

START_TEST(shard_unknown_id_changes_nothing)
{
    const int32_t ids[] = {4, 9};
    expert_shard_t *s = new_shard(2, ids);
    const size_t P = expert_ffn_param_count(D, H);
    float x[BR * D], y[BR * D], dy[BR * D], dx[BR * D], dx2[BR * D];
    tu_fill(x, BR * D, 20, 1.0f);
    tu_fill(dy, BR * D, 21, 1.0f);
    ck_assert_int_eq(expert_shard_forward(s, 2, b_ids, b_rows, x, y), 0);
    float *params = malloc(sizeof(float) * 2 * P);
    memcpy(params, expert_shard_params(s, 0), sizeof(float) * 2 * P);

    /* the unknown id 5 in second or first place; output untouched */
    const int32_t bad1[2] = {4, 5}, bad2[2] = {5, 9};
    float ybad[BR * D];
    for (int i = 0; i < BR * D; i++)
        ybad[i] = 99.0f;
    float xother[BR * D];
    tu_fill(xother, BR * D, 22, 1.0f);
    ck_assert_int_eq(expert_shard_forward(s, 2, bad1, b_rows, xother, ybad), MOE_ERR_NOTFOUND);
    ck_assert_int_eq(expert_shard_forward(s, 2, bad2, b_rows, xother, ybad), MOE_ERR_NOTFOUND);
    const int neg_rows[2] = {3, -1};
    ck_assert_int_eq(expert_shard_forward(s, 2, b_ids, neg_rows, xother, ybad), MOE_ERR_RANGE);
    for (int i = 0; i < BR * D; i++)
        ck_assert_float_eq(ybad[i], 99.0f);
    ck_assert_int_eq(memcmp(params, expert_shard_params(s, 0), sizeof(float) * 2 * P), 0);

    /* The cache of the good forward survived: its backward works and gives
     * what a fresh shard gives for the same forward. */
    ck_assert_int_eq(expert_shard_backward(s, 2, b_ids, b_rows, dy, dx), 0);
    expert_shard_t *t = new_shard(2, ids);
    float y2[BR * D];
    ck_assert_int_eq(expert_shard_forward(t, 2, b_ids, b_rows, x, y2), 0);
    ck_assert_int_eq(expert_shard_backward(t, 2, b_ids, b_rows, dy, dx2), 0);
    ck_assert_int_eq(memcmp(y, y2, sizeof y), 0);
    ck_assert_int_eq(memcmp(dx, dx2, sizeof dx), 0);
    ck_assert_int_eq(memcmp(expert_shard_grads(s, 0), expert_shard_grads(t, 0),
                            sizeof(float) * 2 * P),
                     0);
    free(params);
    expert_shard_destroy(&s);
    expert_shard_destroy(&t);
}
END_TEST

START_TEST(shard_backward_layout_must_match)
{
    const int32_t ids[] = {4, 9, 11};
    expert_shard_t *s = new_shard(3, ids);
    const size_t P = expert_ffn_param_count(D, H);
    float x[BR * D], y[BR * D], dy[BR * D], dx[BR * D];
    tu_fill(x, BR * D, 30, 1.0f);
    tu_fill(dy, BR * D, 31, 1.0f);
    /* no forward yet */
    ck_assert_int_eq(expert_shard_backward(s, 2, b_ids, b_rows, dy, dx), MOE_ERR_STATE);
    ck_assert_int_eq(expert_shard_forward(s, 2, b_ids, b_rows, x, y), 0);
    const int32_t other_ids[2] = {4, 11}, swapped[2] = {9, 4}, one[1] = {4};
    const int other_rows[2] = {5, 3}, rows_plus[2] = {3, 6}, three_rows[3] = {3, 5, 0};
    const int32_t three_ids[3] = {4, 9, 11};
    for (int i = 0; i < BR * D; i++)
        dx[i] = -7.0f;
    ck_assert_int_eq(expert_shard_backward(s, 2, other_ids, b_rows, dy, dx), MOE_ERR_STATE);
    ck_assert_int_eq(expert_shard_backward(s, 2, swapped, b_rows, dy, dx), MOE_ERR_STATE);
    ck_assert_int_eq(expert_shard_backward(s, 2, b_ids, other_rows, dy, dx), MOE_ERR_STATE);
    ck_assert_int_eq(expert_shard_backward(s, 2, b_ids, rows_plus, dy, dx), MOE_ERR_STATE);
    ck_assert_int_eq(expert_shard_backward(s, 1, one, b_rows, dy, dx), MOE_ERR_STATE);
    ck_assert_int_eq(expert_shard_backward(s, 3, three_ids, three_rows, dy, dx), MOE_ERR_STATE);
    for (int i = 0; i < BR * D; i++)
        ck_assert_float_eq(dx[i], -7.0f);
    for (int e = 0; e < 3; e++)
        for (size_t i = 0; i < P; i++)
            ck_assert(expert_shard_grads(s, e)[i] == 0.0f);
    /* the right layout still works after the refusals */
    ck_assert_int_eq(expert_shard_backward(s, 2, b_ids, b_rows, dy, dx), 0);
    /* apply drops the cache: a late backward is refused */
    expert_shard_apply(s, 1, 1e-3);
    ck_assert_int_eq(expert_shard_backward(s, 2, b_ids, b_rows, dy, dx), MOE_ERR_STATE);
    expert_shard_destroy(&s);
}
END_TEST

START_TEST(shard_empty_batch)
{
    /* A forward with no experts (a server asked for nothing this step) is
     * not an error, and neither is its backward; buffers may be NULL. */
    const int32_t ids[] = {4};
    expert_shard_t *s = new_shard(1, ids);
    ck_assert_int_eq(expert_shard_forward(s, 0, NULL, NULL, NULL, NULL), 0);
    ck_assert_int_eq(expert_shard_backward(s, 0, NULL, NULL, NULL, NULL), 0);
    /* an expert listed with zero rows is fine too */
    const int zero[1] = {0};
    float none[1];
    ck_assert_int_eq(expert_shard_forward(s, 1, ids, zero, none, none), 0);
    ck_assert_int_eq(expert_shard_backward(s, 1, ids, zero, none, none), 0);
    for (size_t i = 0; i < expert_ffn_param_count(D, H); i++)
        ck_assert(expert_shard_grads(s, 0)[i] == 0.0f);
    expert_shard_destroy(&s);
}
END_TEST

/* An expert that gets no rows skips its update; when it is next touched
 * (or flushed) the skipped decays are replayed. The result must equal, bit
 * for bit, a shard where the same expert takes part in every step with zero
 * rows (and is updated with a zero gradient each step). */
START_TEST(shard_lazy_equals_eager)
{
    const int32_t ids[] = {4, 9};
    expert_shard_t *lazy = new_shard(2, ids), *eager = new_shard(2, ids);
    const size_t S = expert_shard_opt_state_size(lazy);
    float x[BR * D], y[BR * D], dy[BR * D], dx[BR * D];
    for (int t = 1; t <= 9; t++) {
        tu_fill(x, BR * D, 100 + t, 1.0f);
        tu_fill(dy, BR * D, 200 + t, 1.0f);
        /* expert 9 gets rows only in steps 1, 5 and 9 */
        const bool both = t == 1 || t == 5 || t == 9;
        const int32_t only4[] = {4};
        const int rows_all[] = {BR, 0}, rows_both[] = {BR / 2, BR - BR / 2}, rows4[] = {BR};
        if (both) {
            ck_assert_int_eq(expert_shard_forward(lazy, 2, ids, rows_both, x, y), 0);
            ck_assert_int_eq(expert_shard_backward(lazy, 2, ids, rows_both, dy, dx), 0);
            ck_assert_int_eq(expert_shard_forward(eager, 2, ids, rows_both, x, y), 0);
            ck_assert_int_eq(expert_shard_backward(eager, 2, ids, rows_both, dy, dx), 0);
        } else {
            ck_assert_int_eq(expert_shard_forward(lazy, 1, only4, rows4, x, y), 0);
            ck_assert_int_eq(expert_shard_backward(lazy, 1, only4, rows4, dy, dx), 0);
            ck_assert_int_eq(expert_shard_forward(eager, 2, ids, rows_all, x, y), 0);
            ck_assert_int_eq(expert_shard_backward(eager, 2, ids, rows_all, dy, dx), 0);
        }
        expert_shard_apply(lazy, t, 1e-2);
        expert_shard_apply(eager, t, 1e-2);
        if (t == 3) {
            /* before the flush the skipped expert's state lags; after it, equal */
            ck_assert_int_eq(*expert_shard_opt_step(lazy, 1), 1);
            expert_shard_flush(lazy, 3);
            ck_assert_int_eq(*expert_shard_opt_step(lazy, 1), 3);
            ck_assert_int_eq(memcmp(expert_shard_opt_state(lazy, 1), expert_shard_opt_state(eager, 1),
                                    sizeof(float) * S), 0);
        }
    }
    expert_shard_flush(lazy, 9);
    assert_shards_equal(lazy, eager, 2);
    expert_shard_destroy(&lazy);
    expert_shard_destroy(&eager);
}
END_TEST

/* The update runs an expert's four tensors as moe_par tasks: with 1 and
 * with 3 threads the parameters and optimizer state come out bit for bit
 * the same, through both apply and backward_apply. */
START_TEST(shard_threads_same_bits)
{
    const int32_t ids[] = {1, 6, 7};
    expert_shard_t *a = new_shard(3, ids), *b = new_shard(3, ids);
    const size_t P = expert_ffn_param_count(D, H);
    float x[BR * D], y[BR * D], dy[BR * D], dx[BR * D];
    const int rows[] = {3, 0, BR - 3};
    for (int t = 1; t <= 4; t++) {
        tu_fill(x, BR * D, 300 + t, 1.0f);
        tu_fill(dy, BR * D, 400 + t, 1.0f);
        for (int k = 0; k < 2; k++) {
            expert_shard_t *s = k ? b : a;
            moe_par_set_threads(k ? 3 : 1);
            ck_assert_int_eq(expert_shard_forward(s, 3, ids, rows, x, y), 0);
            if (t % 2) {
                ck_assert_int_eq(expert_shard_backward(s, 3, ids, rows, dy, dx), 0);
                expert_shard_apply(s, t, 1e-2);
            } else {
                ck_assert_int_eq(expert_shard_backward_apply(s, 3, ids, rows, dy, dx, t, 1e-2), 0);
            }
        }
    }
    moe_par_set_threads(1);
    expert_shard_flush(a, 4);
    expert_shard_flush(b, 4);
    assert_shards_equal(a, b, 3);
    /* and the experts did move */
    expert_shard_t *c = new_shard(3, ids);
    ck_assert_int_ne(memcmp(expert_shard_params(a, 0), expert_shard_params(c, 0), sizeof(float) * P), 0);
    expert_shard_destroy(&a);
    expert_shard_destroy(&b);
    expert_shard_destroy(&c);
}
END_TEST

/* Two shards run side by side on the same batches (the recompute and the
 * split-backward tests): experts of RD -> RH -> RD, four steps' rows per
 * expert (up to RMAX: sizes where the threaded BLAS blocks and splits the
 * products), and the steps' buffers. */
enum { RD = 96, RH = 160, RN = 3, RMAX = 300 };
static const int32_t pair_ids[RN] = {2, 5, 11};
static const int pair_rows[4][RN] = {{300, 7, 129}, {0, 64, 1}, {33, 300, 250}, {5, 0, 0}};

struct pair_bufs {
    float *x, *dy, *y[2], *dx[2];
};

static struct pair_bufs pair_bufs_new(void)
{
    const size_t nmax = (size_t)RN * RMAX * RD;
    struct pair_bufs b = {moe_alloc_floats(nmax), moe_alloc_floats(nmax),
                          {moe_alloc_floats(nmax), moe_alloc_floats(nmax)},
                          {moe_alloc_floats(nmax), moe_alloc_floats(nmax)}};
    return b;
}

static void pair_bufs_free(struct pair_bufs *b)
{
    moe_free_floats(&b->x);
    moe_free_floats(&b->dy);
    for (int k = 0; k < 2; k++) {
        moe_free_floats(&b->y[k]);
        moe_free_floats(&b->dx[k]);
    }
}

/* Step t's rows (*rows), x and dy filled from streams xs + t and dys + t;
 * returns the floats of the batch. */
static size_t pair_step(struct pair_bufs *b, int t, uint32_t xs, uint32_t dys, const int **rows)
{
    *rows = pair_rows[t - 1];
    const size_t n = (size_t)((*rows)[0] + (*rows)[1] + (*rows)[2]) * RD;
    tu_fill(b->x, n, xs + (uint32_t)t, 1.0f);
    tu_fill(b->dy, n, dys + (uint32_t)t, 0.1f);
    return n;
}

/* --recompute experts: the shard keeps only the forward's inputs and the
 * backward recomputes each expert's hidden activations. Outputs, input
 * gradients, parameters and optimizer state are the same bits as keeping
 * them, through apply and backward_apply, with the real (threaded) BLAS at
 * sizes where it blocks and splits the products (D = 96, H = 160, up to
 * 300 rows an expert). */
START_TEST(shard_recompute_same_bits)
{
    const int32_t *ids = pair_ids;
    expert_shard_t *keep = expert_shard_new(RD, RH, RN, ids, SEED, &opts);
    expert_shard_t *redo = expert_shard_new(RD, RH, RN, ids, SEED, &opts);
    ck_assert_ptr_nonnull(keep);
    ck_assert_ptr_nonnull(redo);
    expert_shard_set_recompute(redo, true);
    ck_assert(expert_shard_recompute(redo) && !expert_shard_recompute(keep));
    struct pair_bufs b = pair_bufs_new();
    float *x = b.x, *dy = b.dy, **y = b.y, **dx = b.dx;
    moe_blas_set_threads(2);
    for (int t = 1; t <= 4; t++) {
        const int *rows;
        const size_t n = pair_step(&b, t, 500, 600, &rows);
        for (int k = 0; k < 2; k++) {
            expert_shard_t *sh = k ? redo : keep;
            ck_assert_int_eq(expert_shard_forward(sh, RN, ids, rows, x, y[k]), 0);
            if (t % 2) {
                ck_assert_int_eq(expert_shard_backward(sh, RN, ids, rows, dy, dx[k]), 0);
                expert_shard_apply(sh, t, 1e-2);
            } else {
                ck_assert_int_eq(
                    expert_shard_backward_apply(sh, RN, ids, rows, dy, dx[k], t, 1e-2), 0);
            }
        }
        ck_assert_int_eq(memcmp(y[0], y[1], sizeof(float) * n), 0);
        ck_assert_int_eq(memcmp(dx[0], dx[1], sizeof(float) * n), 0);
    }
    moe_blas_set_threads(1);
    expert_shard_flush(keep, 4);
    expert_shard_flush(redo, 4);
    assert_shards_equal(keep, redo, RN);
    pair_bufs_free(&b);
    expert_shard_destroy(&keep);
    expert_shard_destroy(&redo);
}
END_TEST

/* The server's backward in two halves (dx first, then weight gradients and
 * the update): outputs, input gradients, parameters and optimizer state are
 * the bits of backward_apply, for shards with one gradient scratch (as the
 * servers hold them), with the threaded BLAS at sizes where it blocks and
 * splits. A batch other than the forward's, a finish without the first
 * half's batch, and a recomputing shard are refused with MOE_ERR_STATE. */
START_TEST(shard_split_backward_same_bits)
{
    const int32_t *ids = pair_ids;
    expert_shard_t *one = expert_shard_new_ex(RD, RH, RN, ids, SEED, &opts, false);
    expert_shard_t *two = expert_shard_new_ex(RD, RH, RN, ids, SEED, &opts, false);
    ck_assert_ptr_nonnull(one);
    ck_assert_ptr_nonnull(two);
    ck_assert(expert_shard_can_split_backward(two));
    struct pair_bufs b = pair_bufs_new();
    float *x = b.x, *dy = b.dy, **y = b.y, **dx = b.dx;
    moe_blas_set_threads(2);
    for (int t = 1; t <= 4; t++) {
        const int *rows;
        const size_t n = pair_step(&b, t, 700, 800, &rows);
        ck_assert_int_eq(expert_shard_forward(one, RN, ids, rows, x, y[0]), 0);
        ck_assert_int_eq(expert_shard_backward_apply(one, RN, ids, rows, dy, dx[0], t, 1e-2), 0);
        ck_assert_int_eq(expert_shard_forward(two, RN, ids, rows, x, y[1]), 0);
        const int other[RN] = {rows[0] + 1, rows[1], rows[2]};
        ck_assert_int_eq(expert_shard_backward_input(two, RN, ids, other, dy, dx[1]),
                         MOE_ERR_STATE);
        ck_assert_int_eq(expert_shard_backward_input(two, RN, ids, rows, dy, dx[1]), 0);
        ck_assert_int_eq(memcmp(dx[0], dx[1], sizeof(float) * n), 0);
        ck_assert_int_eq(expert_shard_backward_finish(two, RN, ids, rows, dy, t, 1e-2), 0);
        /* the cache is dropped: a second finish has no batch */
        ck_assert_int_eq(expert_shard_backward_finish(two, RN, ids, rows, dy, t, 1e-2),
                         MOE_ERR_STATE);
        ck_assert_int_eq(memcmp(y[0], y[1], sizeof(float) * n), 0);
    }
    moe_blas_set_threads(1);
    expert_shard_flush(one, 4);
    expert_shard_flush(two, 4);
    assert_shards_equal(one, two, RN);
    expert_shard_set_recompute(two, true);
    ck_assert(!expert_shard_can_split_backward(two));
    const int rows1[RN] = {1, 1, 1};
    ck_assert_int_eq(expert_shard_forward(two, RN, ids, rows1, x, y[1]), 0);
    ck_assert_int_eq(expert_shard_backward_input(two, RN, ids, rows1, dy, dx[1]), MOE_ERR_STATE);
    pair_bufs_free(&b);
    expert_shard_destroy(&one);
    expert_shard_destroy(&two);
}
END_TEST

START_TEST(shard_apply_zero_grad)
{
    const int32_t ids[] = {4, 9};
    expert_shard_t *s = new_shard(2, ids);
    const size_t P = expert_ffn_param_count(D, H), S = expert_shard_opt_state_size(s);
    float x[BR * D], y[BR * D], dy[BR * D], dx[BR * D];
    tu_fill(x, BR * D, 40, 1.0f);
    tu_fill(dy, BR * D, 41, 1.0f);

    /* Step 1 with real gradients: weights move, state fills, grads cleared. */
    float *w0 = malloc(sizeof(float) * 2 * P);
    memcpy(w0, expert_shard_params(s, 0), sizeof(float) * 2 * P);
    ck_assert_int_eq(expert_shard_forward(s, 2, b_ids, b_rows, x, y), 0);
    ck_assert_int_eq(expert_shard_backward(s, 2, b_ids, b_rows, dy, dx), 0);
    expert_shard_apply(s, 1, 1e-2);
    ck_assert(memcmp(w0, expert_shard_params(s, 0), sizeof(float) * 2 * P) != 0);
    for (int e = 0; e < 2; e++) {
        ck_assert_int_eq(*expert_shard_opt_step(s, e), 1);
        for (size_t i = 0; i < P; i++)
            ck_assert(expert_shard_grads(s, e)[i] == 0.0f);
    }

    /* Step 2 with zero gradients: weights bitwise unchanged (beta1 = 0: no
     * momentum), every second-moment entry decays by beta2 (plus eps1). */
    float *w1 = malloc(sizeof(float) * 2 * P), *st1 = malloc(sizeof(float) * 2 * S);
    memcpy(w1, expert_shard_params(s, 0), sizeof(float) * 2 * P);
    memcpy(st1, expert_shard_opt_state(s, 0), sizeof(float) * 2 * S);
    expert_shard_apply(s, 2, 1e-2);
    /* (untouched experts defer the decay until they are flushed or updated) */
    expert_shard_flush(s, 2);
    ck_assert_int_eq(memcmp(w1, expert_shard_params(s, 0), sizeof(float) * 2 * P), 0);
    const float *st2 = expert_shard_opt_state(s, 0);
    int positive = 0;
    const double b2 = (float)opts.beta2; /* the decay, rounded to float */
    for (size_t i = 0; i < 2 * S; i++) {
        const double want = b2 * st1[i] + (1 - opts.beta2) * opts.eps1;
        positive += st1[i] > 0;
        ck_assert_msg(fabs(st2[i] - want) <= 1e-6 * want, "state %zu: %g -> %g, expected %g", i,
                      st1[i], st2[i], want);
        ck_assert(st2[i] != st1[i] || st1[i] == 0.0f);
    }
    ck_assert_int_gt(positive, (int)S); /* the first step filled the state */
    for (int e = 0; e < 2; e++)
        ck_assert_int_eq(*expert_shard_opt_step(s, e), 2);
    free(w0);
    free(w1);
    free(st1);
    expert_shard_destroy(&s);
}
END_TEST

START_TEST(shard_migration_is_exact)
{
    /* Training expert 9 in shard A {4, 9} and in shard B {9, 30} with the
     * same rows for 3 steps gives bitwise the same parameters and state. */
    const int32_t ida[] = {4, 9}, idb[] = {30, 9};
    expert_shard_t *a = new_shard(2, ida), *b = new_shard(2, idb);
    const size_t P = expert_ffn_param_count(D, H), S = expert_shard_opt_state_size(a);
    const int32_t one[1] = {9};
    const int rows[1] = {6};
    for (int t = 1; t <= 3; t++) {
        float x[6 * D], y[6 * D], yb[6 * D], dy[6 * D], dx[6 * D], dxb[6 * D];
        tu_fill(x, 6 * D, 50u + (uint32_t)t, 1.0f);
        tu_fill(dy, 6 * D, 60u + (uint32_t)t, 1.0f);
        ck_assert_int_eq(expert_shard_forward(a, 1, one, rows, x, y), 0);
        ck_assert_int_eq(expert_shard_forward(b, 1, one, rows, x, yb), 0);
        ck_assert_int_eq(memcmp(y, yb, sizeof y), 0);
        ck_assert_int_eq(expert_shard_backward(a, 1, one, rows, dy, dx), 0);
        ck_assert_int_eq(expert_shard_backward(b, 1, one, rows, dy, dxb), 0);
        ck_assert_int_eq(memcmp(dx, dxb, sizeof dx), 0);
        expert_shard_apply(a, t, 1e-2);
        expert_shard_apply(b, t, 1e-2);
    }
    const int ia = expert_shard_find(a, 9), ib = expert_shard_find(b, 9);
    ck_assert_int_eq(memcmp(expert_shard_params(a, ia), expert_shard_params(b, ib),
                            sizeof(float) * P),
                     0);
    ck_assert_int_eq(memcmp(expert_shard_opt_state(a, ia), expert_shard_opt_state(b, ib),
                            sizeof(float) * S),
                     0);
    expert_shard_destroy(&a);
    expert_shard_destroy(&b);
}
END_TEST

/* Names of a hierarchical model's experts (issue 17): with 3 experts per
 * group, expert 7 is expert 1 of group 2; the parser inverts the naming,
 * and each naming refuses the other's expert names. */
START_TEST(shard_group_names)
{
    char name[96];
    long id = -1;
    expert_shard_tensor_name(name, sizeof name, 7, 0, false);
    ck_assert_str_eq(name, "moe.experts.7.w1.weight");
    ck_assert_int_eq(expert_shard_parse_name(name, &id), 1);
    ck_assert_int_eq(id, 7);
    ck_assert_int_eq(expert_shard_parse_name("moe.groups.2.experts.1.w1.weight", &id), 0);
    expert_shard_set_group_size(3);
    expert_shard_tensor_name(name, sizeof name, 7, 3, true);
    ck_assert_str_eq(name, "moe.groups.2.experts.1.w2.bias.fadam");
    ck_assert_int_eq(expert_shard_parse_name(name, &id), 1);
    ck_assert_int_eq(id, 7);
    ck_assert_int_eq(expert_shard_parse_name("moe.groups.2.w_gate", &id), 0);
    ck_assert_int_eq(expert_shard_parse_name("moe.w_gate", &id), 0);
    ck_assert_int_eq(expert_shard_parse_name("moe.groups.2.experts.3.w1.weight", &id), -1);
    ck_assert_int_eq(expert_shard_parse_name("moe.groups.02.experts.1.w1.weight", &id), -1);
    ck_assert_int_eq(expert_shard_parse_name("moe.experts.7.w1.weight", &id), -1);
    /* a shard's experts are initialised by their names */
    const struct moe_fadam_opts fo = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};
    const int32_t ids[1] = {7};
    expert_shard_t *s = expert_shard_new(4, 5, 1, ids, 11, &fo);
    ck_assert_ptr_nonnull(s);
    float w1[20];
    moe_rng_fill_uniform(w1, 20, "moe.groups.2.experts.1.w1.weight", 11, 0.5f);
    ck_assert_int_eq(memcmp(expert_shard_params(s, 0), w1, sizeof w1), 0);
    expert_shard_destroy(&s);
    expert_shard_set_group_size(0);
}
END_TEST

/* Experts named in a batch with no rows, and no buffers at all (what a
 * message of zero rows decodes to): every call succeeds and touches
 * nothing (found by fuzz_dispatch: NULL + 0 is undefined behaviour, which
 * the sanitizer build reports). */
START_TEST(shard_empty_batch_null_buffers)
{
    const int32_t ids[2] = {3, 7};
    const int rows[2] = {0, 0};
    expert_shard_t *s = expert_shard_new(4, 5, 2, ids, SEED, &opts);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(expert_shard_infer(s, 2, ids, rows, NULL, NULL), 0);
    ck_assert_int_eq(expert_shard_forward(s, 2, ids, rows, NULL, NULL), 0);
    ck_assert_int_eq(expert_shard_backward(s, 2, ids, rows, NULL, NULL), 0);
    expert_shard_destroy(&s);
}
END_TEST

Suite *test_expert_shard_suite(void)
{
    Suite *s = suite_create("expert_shard");
    TCase *tc = tcase_create("ids");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, shard_ids_sorted_and_found);
    tcase_add_test(tc, shard_rejects_bad_ids);
    tcase_add_test(tc, shard_init_depends_on_id_only);
    tcase_add_test(tc, shard_opt_state_is_factored);
    tcase_add_test(tc, shard_group_names);
    suite_add_tcase(s, tc);
    TCase *tb = tcase_create("batch");
    tcase_add_test(tb, shard_empty_batch_null_buffers);
    tcase_set_timeout(tb, 20);
    tcase_add_test(tb, shard_batch_equals_ffn_per_expert);
    tcase_add_test(tb, shard_unknown_id_changes_nothing);
    tcase_add_test(tb, shard_backward_layout_must_match);
    tcase_add_test(tb, shard_empty_batch);
    tcase_add_test(tb, shard_apply_zero_grad);
    tcase_add_test(tb, shard_lazy_equals_eager);
    tcase_add_test(tb, shard_threads_same_bits);
    tcase_add_test(tb, shard_migration_is_exact);
    tcase_add_test(tb, shard_recompute_same_bits);
    tcase_add_test(tb, shard_split_backward_same_bits);
    suite_add_tcase(s, tb);
    return s;
}
