/* Unit tests for worker/hmoe_layer (issue 17): a small case computed by
 * hand (A = 2 groups of B = 2 experts, K1 = 1, k = 2 and k = 1, three
 * rows, evaluation: no noise), checking the output, Importance_H, Load_H,
 * the rows each expert receives and the balancing loss; and in training
 * (smooth loads) Load_H = Load_i(X^(i))_j Load_p(X)_i / (|X^(i)| + 1e-10)
 * with the true count of rows sent to each group; 1 and 3 threads give the
 * same bits. */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "expert_ffn.h"
#include "expert_local.h"
#include "expert_shard.h"
#include "gate.h"
#include "hmoe_group.h"
#include "hmoe_layer.h"
#include "moe_par.h"
#include "moe_tensor.h"
#include "test_util.h"

Suite *test_hmoe_layer_suite(void);

/* A made-up backend: expert e computes (e + 1) x; it records what it got. */
struct fake {
    int D, n, ids[16], rows[16];
    float x[64];
};

static int fake_forward(void *ctx, int64_t step, bool train, int n, const int32_t *ids,
                        const int *rows, const float *x, float *y, char *what, size_t what_len)
{
    (void)step, (void)train, (void)what, (void)what_len;
    struct fake *f = ctx;
    f->n = n;
    const int D = f->D;
    int off = 0;
    for (int a = 0; a < n; a++) {
        f->ids[a % 16] = ids[a];
        f->rows[a % 16] = rows[a];
        for (int i = 0; i < rows[a] * D; i++) {
            f->x[(off * D + i) % 64] = x[off * D + i];
            y[off * D + i] = (float)(ids[a] + 1) * x[off * D + i];
        }
        off += rows[a];
    }
    return 0;
}

static int fake_backward(void *ctx, int64_t step, int n, const int32_t *ids, const int *rows,
                         const float *dy, float *dx, char *what, size_t what_len)
{
    (void)step, (void)ids, (void)dy, (void)what, (void)what_len;
    const struct fake *f = ctx;
    int total = 0;
    for (int a = 0; a < n; a++)
        total += rows[a];
    memset(dx, 0, sizeof(float) * (size_t)total * (size_t)f->D);
    return 0;
}

/* The fake experts behind the groups' code (hmoe_group.h). */
static int fake_group_forward(void *ctx, bool train, int n, const int32_t *ids, const int *rows,
                              const float *x, float *y)
{
    return fake_forward(ctx, 0, train, n, ids, rows, x, y, NULL, 0);
}

static int fake_group_backward(void *ctx, int n, const int32_t *ids, const int *rows,
                               const float *dy, float *dx, int64_t t, double lr)
{
    (void)t, (void)lr;
    return fake_backward(ctx, 0, n, ids, rows, dy, dx, NULL, 0);
}

/* A layer's groups: their gates (hmoe_group.h) over the fake experts or a
 * shard, as the in-process backend runs them. */
struct rig {
    struct fake f;
    struct expert_local lg;
    struct moe_backend be;
};

static const struct moe_fadam_opts rig_fadam = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};

static void rig_init(struct rig *r, const struct hmoe_layer_config *c, expert_shard_t *shard)
{
    int32_t ids[64];
    for (int i = 0; i < c->A; i++)
        ids[i] = i;
    r->f.D = c->D;
    r->lg = (struct expert_local){.shard = shard,
                                  .groups = hmoe_groups_new(c->D, c->B, c->K, c->A, ids, c->seed,
                                                            &rig_fadam)};
    ck_assert_ptr_nonnull(r->lg.groups);
    if (!shard)
        r->lg.ex = (struct hmoe_experts){&r->f, fake_group_forward, fake_group_backward, NULL, NULL,
                                         NULL};
    expert_local_group_backend(&r->be, &r->lg);
}

static struct layer *make_layer(struct rig *r, int K, double w)
{
    const struct hmoe_layer_config cfg = {.D = 2, .A = 2, .B = 2, .K1 = 1, .K = K,
                                          .w_importance = w, .w_load = w, .seed = 1, .N_max = 3};
    rig_init(r, &cfg, NULL);
    struct layer *l = hmoe_layer_new("moe", &cfg, &r->be);
    ck_assert_ptr_nonnull(l);
    /* primary W (D x A) = identity: row (1,0) -> group 0, (0,1) -> group 1,
     * (1,1) a tie -> group 0 (the lower index); G_p = 1 (top 1).
     * group 0's W = ln 3 * identity, group 1's = [[0, 0], [0, ln 4]] */
    float *wp = l->ops->param(l, 0).w->data, *w0 = hmoe_groups_params(r->lg.groups, 0);
    float *w1 = hmoe_groups_params(r->lg.groups, 1);
    char name[64];
    hmoe_groups_tensor_name(name, sizeof name, 0, 0, false);
    ck_assert_str_eq(name, "moe.groups.0.w_gate");
    hmoe_groups_tensor_name(name, sizeof name, 1, 1, true);
    ck_assert_str_eq(name, "moe.groups.1.w_noise.fadam");
    ck_assert_int_eq(l->n_params, 2);
    wp[0] = 1, wp[3] = 1;
    w0[0] = logf(3), w0[3] = logf(3);
    w1[3] = logf(4);
    return l;
}

static const float X[6] = {1, 0, 0, 1, 1, 1};

/* k = 2: group 0 gets rows 0 and 2, group 1 row 1 (|X^(0)| = 2, |X^(1)| = 1).
 *   row 0: group 0 logits (ln 3, 0) -> G_0 = (3/4, 1/4)
 *   row 2: group 0 logits (ln 3, ln 3) -> (1/2, 1/2)
 *   row 1: group 1 logits (0, ln 4) -> (1/5, 4/5)
 * y_0 = (3/4 * 1 + 1/4 * 2) x_0 = 1.25 x_0 = (1.25, 0)
 * y_1 = (1/5 * 3 + 4/5 * 4) x_1 = 3.8 x_1 = (0, 3.8)
 * y_2 = (1/2 * 1 + 1/2 * 2) x_2 = (1.5, 1.5)
 * Importance_H = (3/4 + 1/2, 1/4 + 1/2, 1/5, 4/5) = (1.25, 0.75, 0.2, 0.8)
 * Load (evaluation: rows with a non-zero gate): Load_0 = (2, 2), Load_1 =
 * (1, 1), Load_p = (2, 1): Load_H = (2, 2, 1, 1) * n/(n + 1e-10) = (2, 2, 1, 1)
 * in float.
 * cv^2(Importance_H): mean 0.75, deviations (0.5, 0, -0.55, 0.05), var
 * 0.555 / 4 = 0.13875, cv^2 = 0.13875 / 0.5625 = 0.246667.
 * cv^2(Load_H): mean 1.5, var 0.25, cv^2 = 0.25 / 2.25 = 0.111111.
 * loss = 0.1 (0.246667 + 0.111111) = 0.0357778. */
START_TEST(hmoe_by_hand_k2)
{
    struct rig rg;
    struct layer *l = make_layer(&rg, 2, 0.1);
    struct fake *fk = &rg.f;
    struct layer_pass p = {.B = 1, .T = 3, .n_global = 3, .train = false};
    float y[6];
    char err[128];
    ck_assert_int_eq(l->ops->forward(l, &p, y, X, err, sizeof err), 0);
    const float want_y[6] = {1.25f, 0, 0, 3.8f, 1.5f, 1.5f};
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq_tol(y[i], want_y[i], 1e-6f);
    const float want_imp[4] = {1.25f, 0.75f, 0.2f, 0.8f}, want_load[4] = {2, 2, 1, 1};
    for (int e = 0; e < 4; e++) {
        ck_assert_float_eq_tol(hmoe_layer_importance(l)[e], want_imp[e], 1e-6f);
        ck_assert_float_eq(hmoe_layer_load(l)[e], want_load[e]);
        ck_assert_int_eq(hmoe_layer_counts(l)[e], (int)want_load[e]);
    }
    ck_assert_int_eq(hmoe_layer_group_rows(l)[0], 2);
    ck_assert_int_eq(hmoe_layer_group_rows(l)[1], 1);
    /* every expert once, its rows in global row order: experts 0 and 1 get
     * rows 0 then 2, experts 2 and 3 row 1 */
    ck_assert_int_eq(fk->n, 4);
    const float want_x[12] = {1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1};
    for (int a = 0; a < 4; a++)
        ck_assert_int_eq(fk->ids[a], a);
    for (int i = 0; i < 12; i++)
        ck_assert_float_eq(fk->x[i], want_x[i]);
    /* the balancing loss of these statistics (an evaluation pass has no
     * backward: the groups keep nothing for one) */
    float dimp[4], dload[4];
    ck_assert_double_eq_tol(gate_balance_loss(hmoe_layer_importance(l), hmoe_layer_load(l), 4, 0.1,
                                              0.1, dimp, dload),
                            0.1 * (0.246667 + 0.111111), 1e-6);
    l->ops->destroy(l);
    hmoe_groups_destroy(&rg.lg.groups);
}
END_TEST

/* k = 1: row 0 -> expert 0 of group 0 (ln 3 > 0), row 2 -> expert 0 (a tie
 * goes to the lower index), row 1 -> expert 1 of group 1 (global 3); every
 * gate is 1. y = (1 x_0, 4 x_1, 1 x_2) = (1, 0, 0, 4, 1, 1).
 * Importance_H = Load_H = (2, 0, 0, 1): mean 0.75, deviations (1.25, -0.75,
 * -0.75, 0.25), var 2.75 / 4 = 0.6875, cv^2 = 0.6875 / 0.5625 = 1.222222;
 * loss = 1 * 1.222222 + 1 * 1.222222 = 2.444444. */
START_TEST(hmoe_by_hand_k1)
{
    struct rig rg;
    struct layer *l = make_layer(&rg, 1, 1.0);
    struct fake *fk = &rg.f;
    struct layer_pass p = {.B = 1, .T = 3, .n_global = 3, .train = false};
    float y[6];
    char err[128];
    ck_assert_int_eq(l->ops->forward(l, &p, y, X, err, sizeof err), 0);
    const float want_y[6] = {1, 0, 0, 4, 1, 1}, want[4] = {2, 0, 0, 1};
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(y[i], want_y[i]);
    for (int e = 0; e < 4; e++) {
        ck_assert_float_eq(hmoe_layer_importance(l)[e], want[e]);
        ck_assert_float_eq(hmoe_layer_load(l)[e], want[e]);
    }
    ck_assert_int_eq(fk->n, 2);
    ck_assert_int_eq(fk->ids[0], 0);
    ck_assert_int_eq(fk->ids[1], 3);
    float dimp[4], dload[4];
    ck_assert_double_eq_tol(gate_balance_loss(hmoe_layer_importance(l), hmoe_layer_load(l), 4, 1.0,
                                              1.0, dimp, dload),
                            2.444444, 1e-5);
    l->ops->destroy(l);
    hmoe_groups_destroy(&rg.lg.groups);
}
END_TEST

/* Training (noise, smooth loads on both levels): Load_H is the product of
 * the secondary smooth load and the primary smooth load over the true
 * count, and Importance_H sums to the rows (each row's gates sum to 1 at
 * both levels). */
START_TEST(hmoe_train_load_formula)
{
    enum { A = 3, B = 3, D = 4, N = 24 };
    const struct hmoe_layer_config cfg = {.D = D, .A = A, .B = B, .K1 = 2, .K = 2,
                                          .w_importance = 0.1, .w_load = 0.1, .seed = 7,
                                          .N_max = N};
    struct rig rg;
    rig_init(&rg, &cfg, NULL);
    struct layer *l = hmoe_layer_new("moe", &cfg, &rg.be);
    ck_assert_ptr_nonnull(l);
    for (int i = 0; i < l->n_params; i++)
        tu_fill(l->ops->param(l, i).w->data, l->ops->param(l, i).w->numel, 200u + (uint32_t)i,
                0.9f);
    for (int i = 0; i < A; i++)
        tu_fill(hmoe_groups_params(rg.lg.groups, i), hmoe_groups_param_count(D, B),
                202u + (uint32_t)i, 0.9f);
    float x[N * D], y[N * D];
    tu_fill(x, N * D, 210, 1.0f);
    struct layer_pass p = {.B = 4, .T = 6, .n_global = N, .step = 3, .row0 = 10, .train = true};
    char err[128];
    ck_assert_int_eq(l->ops->forward(l, &p, y, x, err, sizeof err), 0);
    const float *lp = hmoe_layer_primary_load(l), *l2 = hmoe_layer_secondary_load(l);
    const int *cnt = hmoe_layer_group_rows(l);
    double imp_sum = 0;
    int total = 0;
    bool smooth = false;
    for (int i = 0; i < A; i++) {
        total += cnt[i];
        smooth = smooth || lp[i] != (float)cnt[i];
        for (int j = 0; j < B; j++) {
            const float want = (float)((double)l2[i * B + j] * lp[i] / ((double)cnt[i] + 1e-10));
            ck_assert_float_eq(hmoe_layer_load(l)[i * B + j], want);
            imp_sum += hmoe_layer_importance(l)[i * B + j];
        }
    }
    ck_assert_int_eq(total, N * 2);
    ck_assert(smooth);
    ck_assert_double_eq_tol(imp_sum, N, 1e-4);
    l->ops->destroy(l);
    hmoe_groups_destroy(&rg.lg.groups);
}
END_TEST

/* Forward and backward of 150 rows (groups of 70 to 80 rows: several
 * moe_par tasks in each gate) with in-process experts give the same bits
 * with 1 and with 3 threads: output, statistics, input and every gate's
 * gradients, and the experts' gradients. */
START_TEST(hmoe_threads_bitwise)
{
    enum { A = 4, B = 8, E = A * B, D = 8, H = 8, N = 150 };
    const struct hmoe_layer_config cfg = {.D = D, .A = A, .B = B, .K1 = 2, .K = 2,
                                          .w_importance = 0.1, .w_load = 0.1, .seed = 7,
                                          .N_max = N};
    const struct moe_fadam_opts fo = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};
    int32_t ids[E];
    for (int e = 0; e < E; e++)
        ids[e] = e;
    float *x = moe_alloc_floats((size_t)N * D), *dy = moe_alloc_floats((size_t)N * D);
    tu_fill(x, (size_t)N * D, 220, 1.0f);
    tu_fill(dy, (size_t)N * D, 221, 1.0f);
    float *y[2], *dx[2], *st[2], *grads[2];
    const size_t np = expert_ffn_param_count(D, H);
    size_t ng = 0;
    for (int k = 0; k < 2; k++) {
        expert_shard_t *shard = expert_shard_new(D, H, E, ids, 7, &fo);
        struct rig rg;
        rig_init(&rg, &cfg, shard);
        struct layer *l = hmoe_layer_new("moe", &cfg, &rg.be);
        ck_assert_ptr_nonnull(l);
        ng = 0;
        for (int i = 0; i < l->n_params; i++) {
            tu_fill(l->ops->param(l, i).w->data, l->ops->param(l, i).w->numel,
                    230u + (uint32_t)i, 0.5f);
            ng += l->ops->param(l, i).g->numel;
        }
        const size_t ngp = hmoe_groups_param_count(D, B);
        for (int i = 0; i < A; i++)
            tu_fill(hmoe_groups_params(rg.lg.groups, i), ngp, 240u + (uint32_t)i, 0.5f);
        ng += ngp * A;
        y[k] = moe_alloc_floats((size_t)N * D);
        dx[k] = moe_alloc_floats((size_t)N * D);
        st[k] = moe_alloc_floats(2 * (size_t)E);
        grads[k] = moe_alloc_floats(ng + np * E);
        moe_par_set_threads(k ? 3 : 1);
        struct layer_pass p = {.B = 10, .T = 15, .n_global = N, .step = 4, .row0 = 30,
                               .train = true};
        char err[128];
        ck_assert_int_eq(l->ops->forward(l, &p, y[k], x, err, sizeof err), 0);
        p.imp_global = hmoe_layer_importance(l);
        p.load_global = hmoe_layer_load(l);
        ck_assert_int_eq(l->ops->backward(l, &p, dx[k], dy, x, y[k], err, sizeof err), 0);
        memcpy(st[k], p.imp_global, sizeof(float) * E);
        memcpy(st[k] + E, p.load_global, sizeof(float) * E);
        size_t o = 0;
        for (int i = 0; i < l->n_params; i++) {
            const moe_tensor *g = l->ops->param(l, i).g;
            memcpy(grads[k] + o, g->data, sizeof(float) * g->numel);
            o += g->numel;
        }
        for (int i = 0; i < A; i++, o += ngp)
            memcpy(grads[k] + o, hmoe_groups_grads(rg.lg.groups, i), sizeof(float) * ngp);
        for (int e = 0; e < E; e++)
            memcpy(grads[k] + ng + np * (size_t)e, expert_shard_grads(shard, e),
                   sizeof(float) * np);
        l->ops->destroy(l);
        expert_shard_destroy(&shard);
        hmoe_groups_destroy(&rg.lg.groups);
    }
    moe_par_set_threads(1);
    ck_assert_int_eq(memcmp(y[0], y[1], sizeof(float) * N * D), 0);
    ck_assert_int_eq(memcmp(dx[0], dx[1], sizeof(float) * N * D), 0);
    ck_assert_int_eq(memcmp(st[0], st[1], sizeof(float) * 2 * E), 0);
    ck_assert_int_eq(memcmp(grads[0], grads[1], sizeof(float) * (ng + np * E)), 0);
    for (int k = 0; k < 2; k++) {
        free(y[k]);
        free(dx[k]);
        free(st[k]);
        free(grads[k]);
    }
    free(x);
    free(dy);
}
END_TEST

/* Two workers (issue 17, point 3): the rows of a pass split between two
 * layers with the same parameters, whose Importance_H, secondary loads and
 * per-group factors of Load_H (Load_p, |X^(i)|) are summed as the workers'
 * ring or the coordinator sums them, give the Load_H and the gradients of
 * one layer that saw every row (the sums in another order: within 1e-6;
 * 2.7e-7 measured).
 * Summing each worker's own Load_H instead, which is not a sum over rows,
 * gives other gradients (2.6e-3 off): the check can tell. */
static double rel_diff(const float *a, const float *b, size_t n)
{
    double d = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return d / m;
}

START_TEST(hmoe_two_workers_sum)
{
    enum { A = 3, B = 4, E = A * B, D = 6, N = 60, H = N / 2 };
    const struct hmoe_layer_config cfg = {.D = D, .A = A, .B = B, .K1 = 2, .K = 2,
                                          .w_importance = 1.0, .w_load = 1.0, .seed = 11,
                                          .N_max = N};
    float *x = moe_alloc_floats((size_t)N * D), *dy = moe_alloc_floats((size_t)N * D);
    tu_fill(x, (size_t)N * D, 310, 1.0f);
    tu_fill(dy, (size_t)N * D, 311, 1.0f);
    struct layer *l[3];
    struct rig rg[3];
    const size_t ngp = hmoe_groups_param_count(D, B);
    for (int k = 0; k < 3; k++) {
        rig_init(&rg[k], &cfg, NULL);
        l[k] = hmoe_layer_new("moe", &cfg, &rg[k].be);
        ck_assert_ptr_nonnull(l[k]);
        for (int i = 0; i < l[k]->n_params; i++)
            tu_fill(l[k]->ops->param(l[k], i).w->data, l[k]->ops->param(l[k], i).w->numel,
                    320u + (uint32_t)i, 0.7f);
        for (int i = 0; i < A; i++)
            tu_fill(hmoe_groups_params(rg[k].lg.groups, i), ngp, 330u + (uint32_t)i, 0.7f);
    }
    float *y = moe_alloc_floats((size_t)N * D), *dx = moe_alloc_floats((size_t)N * D);
    float *dxs = moe_alloc_floats((size_t)N * D);
    char err[128];
    /* l[0]: every row, its own statistics */
    struct layer_pass p = {.B = 1, .T = N, .n_global = N, .step = 3, .row0 = 0, .train = true};
    ck_assert_int_eq(l[0]->ops->forward(l[0], &p, y, x, err, sizeof err), 0);
    p.imp_global = hmoe_layer_importance(l[0]);
    p.load_global = hmoe_layer_load(l[0]);
    ck_assert_int_eq(l[0]->ops->backward(l[0], &p, dx, dy, x, y, err, sizeof err), 0);
    /* l[1], l[2]: a worker's half each */
    struct layer_pass q[2];
    for (int wrong = 0; wrong < 2; wrong++) {
        /* (a backward consumes its forward: each case runs its own) */
        for (int w = 0; w < 2; w++) {
            q[w] = (struct layer_pass){.B = 1, .T = H, .n_global = N, .step = 3, .row0 = w * H,
                                       .train = true};
            ck_assert_int_eq(l[1 + w]->ops->forward(l[1 + w], &q[w], y + (size_t)w * H * D,
                                                    x + (size_t)w * H * D, err, sizeof err), 0);
        }
        float imp[E], load[E], fx[2 * A];
        for (int e = 0; e < E; e++) {
            imp[e] = hmoe_layer_importance(l[1])[e] + hmoe_layer_importance(l[2])[e];
            load[e] = wrong ? hmoe_layer_load(l[1])[e] + hmoe_layer_load(l[2])[e]
                            : hmoe_layer_secondary_load(l[1])[e] +
                                  hmoe_layer_secondary_load(l[2])[e];
        }
        for (int i = 0; i < 2 * A; i++)
            fx[i] = hmoe_layer_group_factors(l[1])[i] + hmoe_layer_group_factors(l[2])[i];
        memset(dxs, 0, sizeof(float) * N * D);
        for (int w = 0; w < 2; w++) {
            q[w].imp_global = imp;
            q[w].load_global = load;
            q[w].groups_global = wrong ? NULL : fx;
            for (int i = 0; i < l[1 + w]->n_params; i++) {
                const moe_tensor *g = l[1 + w]->ops->param(l[1 + w], i).g;
                memset(g->data, 0, sizeof(float) * g->numel);
            }
            for (int i = 0; i < A; i++)
                memset(hmoe_groups_grads(rg[1 + w].lg.groups, i), 0, sizeof(float) * ngp);
            ck_assert_int_eq(l[1 + w]->ops->backward(l[1 + w], &q[w], dxs + (size_t)w * H * D,
                                                     dy + (size_t)w * H * D, x + (size_t)w * H * D,
                                                     y + (size_t)w * H * D, err, sizeof err), 0);
        }
        if (!wrong) {
            ck_assert_double_le(rel_diff(hmoe_layer_load(l[1]), hmoe_layer_load(l[0]), E), 1e-6);
            ck_assert_double_le(rel_diff(hmoe_layer_load(l[2]), hmoe_layer_load(l[0]), E), 1e-6);
            ck_assert_double_le(fabs(q[0].balance_loss - p.balance_loss), 1e-6 * p.balance_loss);
        }
        double worst = 0;
        for (int i = 0; i < l[0]->n_params; i++) {
            const moe_tensor *g = l[0]->ops->param(l[0], i).g;
            float *sum = moe_alloc_floats(g->numel);
            for (size_t j = 0; j < g->numel; j++)
                sum[j] = l[1]->ops->param(l[1], i).g->data[j] + l[2]->ops->param(l[2], i).g->data[j];
            worst = fmax(worst, rel_diff(sum, g->data, g->numel));
            free(sum);
        }
        for (int i = 0; i < A; i++) {
            float sum[ngp];
            for (size_t j = 0; j < ngp; j++)
                sum[j] = hmoe_groups_grads(rg[1].lg.groups, i)[j] +
                         hmoe_groups_grads(rg[2].lg.groups, i)[j];
            worst = fmax(worst, rel_diff(sum, hmoe_groups_grads(rg[0].lg.groups, i), ngp));
        }
        worst = fmax(worst, rel_diff(dxs, dx, (size_t)N * D));
        if (wrong)
            ck_assert_msg(worst > 1e-3, "summing Load_H itself went unnoticed (%g)", worst);
        else
            ck_assert_msg(worst <= 1e-6, "two workers' gradients differ from one's by %g", worst);
    }
    for (int k = 0; k < 3; k++) {
        l[k]->ops->destroy(l[k]);
        hmoe_groups_destroy(&rg[k].lg.groups);
    }
    free(x);
    free(dy);
    free(y);
    free(dx);
    free(dxs);
}
END_TEST

Suite *test_hmoe_layer_suite(void)
{
    Suite *s = suite_create("hmoe_layer");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, hmoe_by_hand_k2);
    tcase_add_test(tc, hmoe_by_hand_k1);
    tcase_add_test(tc, hmoe_train_load_formula);
    tcase_add_test(tc, hmoe_threads_bitwise);
    tcase_add_test(tc, hmoe_two_workers_sum);
    suite_add_tcase(s, tc);
    return s;
}
