/* Finite-difference checks of the hierarchical MoE layer (issue 17,
 * hmoe_layer.h) with noise on: only the combine's loss, only
 * cv^2(Importance_H), only cv^2(Load_H) (the primary gate's gradient then
 * comes only through Load_p), and all three; every gate parameter, the
 * input and some experts. The secondary gate alone (its own noise key, on
 * a subset of the rows) and the whole model with --moe hierarchical are
 * checked in test_grad.c (grad_gate_secondary, grad_model_hierarchical).
 * The checks are directional, as there. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "expert_ffn.h"
#include "expert_local.h"
#include "expert_shard.h"
#include "gate.h"
#include "hmoe_layer.h"
#include "hmoe_group.h"
#include "moe_err.h"
#include "moe_tensor.h"
#include "test_util.h"

#define TOL 2e-2

Suite *test_grad_hmoe_suite(void);

static double dotw(const float *a, const float *w, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * w[i];
    return s;
}

static const struct moe_fadam_opts fadam = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};

/* ------------------------------------------------------------ the layer */

struct hl_ctx {
    struct layer *l;
    struct layer_pass p;
    float *x, *out, *wout;
    double w_out, w_imp, w_load;
    int E;
};

/* w_out sum(wout * y) + w_imp cv^2(Importance_H) + w_load cv^2(Load_H) */
static double hl_loss(void *vc)
{
    struct hl_ctx *c = vc;
    char err[256];
    ck_assert_int_eq(c->l->ops->forward(c->l, &c->p, c->out, c->x, err, sizeof err), 0);
    const size_t n = (size_t)c->p.B * c->p.T * c->l->out_width;
    return c->w_out * dotw(c->out, c->wout, n) +
           c->w_imp * gate_cv_squared(hmoe_layer_importance(c->l), c->E, NULL) +
           c->w_load * gate_cv_squared(hmoe_layer_load(c->l), c->E, NULL);
}

/* Checks every gate parameter, the input and two experts; returns the
 * norm of the primary gate's gradient. */
static double hl_case(double w_out, double w_imp, double w_load, int K1, int K)
{
    const int A = 3, Bg = 3, E = A * Bg, D = 5, H = 6, Bs = 3, T = 4, N = Bs * T;
    struct hmoe_layer_config cfg = {.D = D, .A = A, .B = Bg, .K1 = K1, .K = K,
                                    .w_importance = w_imp, .w_load = w_load, .seed = 5,
                                    .N_max = N};
    int32_t ids[9];
    for (int e = 0; e < E; e++)
        ids[e] = e;
    expert_shard_t *shard = expert_shard_new(D, H, E, ids, 9, &fadam);
    /* the groups (their secondary gates) run where the experts are, through
     * hmoe_group.h: the same code the expert servers run */
    struct expert_local lg = {.shard = shard,
                              .groups = hmoe_groups_new(D, Bg, K, A, ids, 5, &fadam)};
    ck_assert_ptr_nonnull(lg.groups);
    struct moe_backend be;
    expert_local_group_backend(&be, &lg);
    struct hl_ctx c = {.l = hmoe_layer_new("moe", &cfg, &be), .w_out = w_out, .w_imp = w_imp,
                       .w_load = w_load, .E = E};
    ck_assert_ptr_nonnull(c.l);
    c.p = (struct layer_pass){.B = Bs, .T = T, .row0 = 40, .n_global = N, .step = 2,
                              .train = true};
    c.x = moe_alloc_floats((size_t)N * D);
    c.out = moe_alloc_floats((size_t)N * D);
    c.wout = moe_alloc_floats((size_t)N * D);
    tu_fill(c.x, (size_t)N * D, 130, 1.0f);
    tu_fill(c.wout, (size_t)N * D, 131, 1.0f);
    for (int i = 0; i < c.l->n_params; i++) {
        struct layer_param q = c.l->ops->param(c.l, i);
        tu_fill(q.w->data, q.w->numel, 140u + (uint32_t)i, 0.8f);
    }
    const size_t ngp = hmoe_groups_param_count(D, Bg);
    for (int i = 0; i < A; i++)
        tu_fill(hmoe_groups_params(lg.groups, i), ngp, 150u + (uint32_t)i, 0.8f);
    hl_loss(&c);
    float *dx = moe_alloc_floats((size_t)N * D), *dout = moe_alloc_floats((size_t)N * D);
    for (int i = 0; i < N * D; i++)
        dout[i] = (float)(w_out * c.wout[i]);
    c.p.imp_global = hmoe_layer_importance(c.l);
    c.p.load_global = hmoe_layer_load(c.l);
    char err[256];
    ck_assert_int_eq(c.l->ops->backward(c.l, &c.p, dx, dout, c.x, c.out, err, sizeof err), 0);
    const size_t np = expert_ffn_param_count(D, H);
    float *eg = malloc(sizeof(float) * np * E);
    for (int e = 0; e < E; e++)
        memcpy(eg + np * e, expert_shard_grads(shard, e), sizeof(float) * np);
    const double h = 1e-3;
    double norm = 0;
    for (int i = 0; i < c.l->n_params; i++) {
        struct layer_param q = c.l->ops->param(c.l, i);
        float *g = malloc(sizeof(float) * q.g->numel);
        memcpy(g, q.g->data, sizeof(float) * q.g->numel);
        if (i < 2)
            norm += dotw(g, g, q.g->numel);
        double e = tu_grad_check(hl_loss, &c, q.w->data, g, q.w->numel, h, 4, 1u + (uint32_t)i,
                                 1e-4);
        ck_assert_msg(e < TOL, "%s: relative error %g", q.w->name, e);
        free(g);
    }
    /* each group's w_gate | w_noise, computed by hmoe_groups_backward */
    for (int i = 0; i < A; i++) {
        float *g = malloc(sizeof(float) * ngp);
        memcpy(g, hmoe_groups_grads(lg.groups, i), sizeof(float) * ngp);
        double e = tu_grad_check(hl_loss, &c, hmoe_groups_params(lg.groups, i), g, ngp, h, 4,
                                 20u + (uint32_t)i, 1e-4);
        ck_assert_msg(e < TOL, "moe.groups.%d gate: relative error %g", i, e);
        free(g);
    }
    double ex = tu_grad_check(hl_loss, &c, c.x, dx, (size_t)N * D, h, 4, 50, 1e-4);
    ck_assert_msg(ex < TOL, "input: relative error %g", ex);
    if (w_out != 0)
        for (int e = 1; e < E; e += 4) {
            double ee = tu_grad_check(hl_loss, &c, expert_shard_params(shard, e), eg + np * e, np,
                                      h, 3, 60u + (uint32_t)e, 1e-4);
            ck_assert_msg(ee < TOL, "expert %d: relative error %g", e, ee);
        }
    free(eg);
    free(dx);
    free(dout);
    free(c.x);
    free(c.out);
    free(c.wout);
    c.l->ops->destroy(c.l);
    expert_shard_destroy(&shard);
    hmoe_groups_destroy(&lg.groups);
    return sqrt(norm);
}

/* --------------------------------------------- the groups, two workers */

/* hmoe_group.h on its own, as an expert server runs it: two parts (two
 * workers' rows) of groups 1 and 2 of 3 (group 0 is elsewhere), with
 * noise; the loss sum_p (wout_p . y_p + ci . Importance_H part + cl .
 * secondary load part) checks dx, the primary-gate gradient dgp of every
 * row, the gates' gradients summed over the parts, and an expert. */
enum { HG_D = 4, HG_B = 3, HG_K = 2, HG_H = 5, HG_W = 2 };
struct hg_ctx {
    hmoe_groups_t *g;
    struct hmoe_experts ex;
    struct hmoe_part p[HG_W];
    float *x[HG_W], *gp[HG_W], *y[HG_W], *st[HG_W], *wout[HG_W], *dst[HG_W];
    uint32_t rows[HG_W][2], idx[HG_W][16];
    size_t R[HG_W];
};

static double hg_loss(void *vc)
{
    struct hg_ctx *c = vc;
    ck_assert_int_eq(hmoe_groups_forward(c->g, &c->ex, 6, true, HG_W, c->p), 0);
    double L = 0;
    for (int w = 0; w < HG_W; w++) {
        L += dotw(c->y[w], c->wout[w], c->R[w] * HG_D);
        for (int j = 0; j < 2; j++)
            L += dotw(c->st[w] + j * 3 * HG_B, c->dst[w] + j * 2 * HG_B, 2 * HG_B);
    }
    return L;
}

START_TEST(grad_hmoe_groups_two_parts)
{
    const int32_t gids[2] = {1, 2}, eids[6] = {3, 4, 5, 6, 7, 8};
    expert_shard_t *shard = expert_shard_new(HG_D, HG_H, 6, eids, 9, &fadam);
    struct hg_ctx c = {.g = hmoe_groups_new(HG_D, HG_B, HG_K, 2, gids, 5, &fadam),
                       .ex = hmoe_experts_of_shard(shard)};
    ck_assert_ptr_nonnull(c.g);
    for (int i = 0; i < 2; i++)
        tu_fill(hmoe_groups_params(c.g, i), hmoe_groups_param_count(HG_D, HG_B), 160u + i, 0.8f);
    /* worker 0: 5 rows of group 1, 3 of group 2; worker 1: 2 and 6 */
    const uint32_t rows[HG_W][2] = {{5, 3}, {2, 6}};
    for (int w = 0; w < HG_W; w++) {
        c.rows[w][0] = rows[w][0];
        c.rows[w][1] = rows[w][1];
        c.R[w] = rows[w][0] + rows[w][1];
        for (size_t r = 0; r < c.R[w]; r++)
            c.idx[w][r] = (uint32_t)(3 * r + (size_t)w); /* not consecutive */
        c.x[w] = moe_alloc_floats(c.R[w] * HG_D);
        c.y[w] = moe_alloc_floats(c.R[w] * HG_D);
        c.wout[w] = moe_alloc_floats(c.R[w] * HG_D);
        c.gp[w] = moe_alloc_floats(c.R[w]);
        c.st[w] = moe_alloc_floats(2 * 3 * HG_B);
        c.dst[w] = moe_alloc_floats(2 * 2 * HG_B);
        tu_fill(c.x[w], c.R[w] * HG_D, 170u + w, 1.0f);
        tu_fill(c.wout[w], c.R[w] * HG_D, 172u + w, 1.0f);
        tu_fill(c.dst[w], 2 * 2 * HG_B, 174u + w, 1.0f);
        for (size_t r = 0; r < c.R[w]; r++)
            c.gp[w][r] = 0.3f + 0.05f * (float)r;
        c.p[w] = (struct hmoe_part){.n = 2, .ids = gids, .rows = c.rows[w], .row0 = 100 * w,
                                    .row_index = c.idx[w], .gp = c.gp[w], .x = c.x[w],
                                    .y = c.y[w], .stats = c.st[w], .dy = c.wout[w],
                                    .dstats = c.dst[w]};
    }
    hg_loss(&c);
    float *dx[HG_W], *dgp[HG_W];
    for (int w = 0; w < HG_W; w++) {
        c.p[w].dx = dx[w] = moe_alloc_floats(c.R[w] * HG_D);
        c.p[w].dgp = dgp[w] = moe_alloc_floats(c.R[w]);
    }
    ck_assert_int_eq(hmoe_groups_backward(c.g, &c.ex, HG_W, c.p, 0, 0), 0);
    ck_assert_int_eq(hmoe_groups_backward(c.g, &c.ex, HG_W, c.p, 0, 0), MOE_ERR_STATE);
    const double h = 1e-3;
    for (int w = 0; w < HG_W; w++) {
        double e = tu_grad_check(hg_loss, &c, c.x[w], dx[w], c.R[w] * HG_D, h, 4, 180u + w, 1e-4);
        ck_assert_msg(e < TOL, "worker %d: dx relative error %g", w, e);
        e = tu_grad_check_coords(hg_loss, &c, c.gp[w], dgp[w], c.R[w], h, 8, 1e-4);
        ck_assert_msg(e < TOL, "worker %d: dgp relative error %g", w, e);
    }
    const size_t ngp = hmoe_groups_param_count(HG_D, HG_B);
    for (int i = 0; i < 2; i++) {
        float *g = malloc(sizeof(float) * ngp);
        memcpy(g, hmoe_groups_grads(c.g, i), sizeof(float) * ngp);
        double e = tu_grad_check(hg_loss, &c, hmoe_groups_params(c.g, i), g, ngp, h, 4, 184u + i,
                                 1e-4);
        ck_assert_msg(e < TOL, "group %d gate: relative error %g", gids[i], e);
        free(g);
    }
    const size_t np = expert_ffn_param_count(HG_D, HG_H);
    float *eg = malloc(sizeof(float) * np);
    memcpy(eg, expert_shard_grads(shard, 4), sizeof(float) * np);
    double e = tu_grad_check(hg_loss, &c, expert_shard_params(shard, 4), eg, np, h, 3, 186, 1e-4);
    ck_assert_msg(e < TOL, "expert 7: relative error %g", e);
    free(eg);
    for (int w = 0; w < HG_W; w++) {
        float *bufs[] = {c.x[w], c.y[w], c.wout[w], c.gp[w], c.st[w], c.dst[w], dx[w], dgp[w]};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            free(bufs[i]);
    }
    hmoe_groups_destroy(&c.g);
    expert_shard_destroy(&shard);
}
END_TEST

START_TEST(grad_hmoe_combine) { hl_case(1.0, 0.0, 0.0, 2, 2); }
END_TEST
START_TEST(grad_hmoe_importance) { ck_assert_double_gt(hl_case(0.0, 1.0, 0.0, 2, 2), 0.0); }
END_TEST
/* Load_H alone: the primary gate's gradient comes only through Load_p. */
START_TEST(grad_hmoe_load) { ck_assert_double_gt(hl_case(0.0, 0.0, 1.0, 2, 2), 0.0); }
END_TEST
START_TEST(grad_hmoe_all_terms) { hl_case(1.0, 0.5, 0.5, 2, 2); }
END_TEST
START_TEST(grad_hmoe_k1) { hl_case(1.0, 0.5, 0.5, 1, 1); }
END_TEST

Suite *test_grad_hmoe_suite(void)
{
    Suite *s = suite_create("grad_hmoe");
    TCase *tc = tcase_create("layer");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, grad_hmoe_combine);
    tcase_add_test(tc, grad_hmoe_importance);
    tcase_add_test(tc, grad_hmoe_load);
    tcase_add_test(tc, grad_hmoe_all_terms);
    tcase_add_test(tc, grad_hmoe_k1);
    tcase_add_test(tc, grad_hmoe_groups_two_parts);
    suite_add_tcase(s, tc);
    return s;
}
