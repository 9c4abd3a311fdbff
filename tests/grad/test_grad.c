/* Finite-difference checks of every backward pass: each layer alone, then
 * the whole model with both balancing losses and gating noise on. The loss
 * of each check is a fixed random projection sum(w * out) so that every
 * output element matters. Directional checks compare the derivative along
 * random directions of one parameter tensor with <grad, v>: a wrong sign or
 * a missing term moves the ratio by far more than the tolerance. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "expert_ffn.h"
#include "expert_local.h"
#include "expert_shard.h"
#include "gate.h"
#include "hmoe_group.h"
#include "lstm.h"
#include "model.h"
#include "moe_layer.h"
#include "moe_rng.h"
#include "moe_tensor.h"
#include "nn_ops.h"
#include "softmax_xent.h"
#include "test_util.h"

#define TOL 2e-2

static double dotw(const float *a, const float *w, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * w[i];
    return s;
}

/* ------------------------------------------------------------------ LSTM */

struct lstm_ctx {
    struct lstm_dims d;
    struct lstm_params p;
    float *x, *h0, *c0, *h, *cache_buf, *wout;
    struct lstm_cache cache;
};

static double lstm_loss(void *vc)
{
    struct lstm_ctx *c = vc;
    lstm_forward(c->h, &c->cache, c->x, &c->p, c->h0, c->c0, &c->d);
    size_t N = (size_t)c->d.B * c->d.T;
    return dotw(c->h, c->wout, N * (size_t)c->d.H);
}

START_TEST(grad_lstm)
{
    struct lstm_ctx c = {.d = {3, 4, 5, 6}};
    const int B = 3, T = 4, I = 5, H = 6, N = B * T, G = 4 * H;
    float *w = moe_alloc_floats((size_t)G * I + (size_t)G * H + 2 * (size_t)G);
    float *gw = moe_alloc_floats((size_t)G * I + (size_t)G * H + 2 * (size_t)G);
    size_t nw = (size_t)G * I + (size_t)G * H + 2 * (size_t)G;
    tu_fill(w, nw, 1, 0.5f);
    c.p = (struct lstm_params){w, w + G * I, w + G * I + G * H, w + G * I + G * H + G};
    struct lstm_params gp = {gw, gw + G * I, gw + G * I + G * H, gw + G * I + G * H + G};
    c.x = moe_alloc_floats((size_t)N * I);
    c.h0 = moe_alloc_floats((size_t)B * H);
    c.c0 = moe_alloc_floats((size_t)B * H);
    c.h = moe_alloc_floats((size_t)N * H);
    c.wout = moe_alloc_floats((size_t)N * H);
    c.cache_buf = moe_alloc_floats(lstm_cache_floats(&c.d));
    float *work = moe_alloc_floats(lstm_work_floats(&c.d));
    float *dx = moe_alloc_floats((size_t)N * I);
    tu_fill(c.x, (size_t)N * I, 2, 1.0f);
    tu_fill(c.h0, (size_t)B * H, 3, 0.5f);
    tu_fill(c.c0, (size_t)B * H, 4, 0.5f);
    tu_fill(c.wout, (size_t)N * H, 5, 1.0f);
    c.cache = lstm_cache_view(c.cache_buf, &c.d);

    lstm_loss(&c);
    lstm_backward(dx, &gp, work, c.wout, c.x, c.h, &c.cache, &c.p, &c.d);

    ck_assert_double_lt(tu_grad_check(lstm_loss, &c, c.x, dx, (size_t)N * I, 1e-2, 4, 1, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(lstm_loss, &c, c.p.w_ih, gp.w_ih, (size_t)G * I, 1e-2, 4, 2, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(lstm_loss, &c, c.p.w_hh, gp.w_hh, (size_t)G * H, 1e-2, 4, 3, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(lstm_loss, &c, c.p.b_ih, gp.b_ih, (size_t)G, 1e-2, 4, 4, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(lstm_loss, &c, c.p.b_hh, gp.b_hh, (size_t)G, 1e-2, 4, 5, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check_coords(lstm_loss, &c, c.p.w_hh, gp.w_hh, (size_t)G * H, 1e-2, 40, 1e-2), 5e-2);

    float *bufs[] = {w, gw, c.x, c.h0, c.c0, c.h, c.wout, c.cache_buf, work, dx};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
}
END_TEST

/* ---------------------------------------------------------- expert FFN */

struct ffn_ctx {
    int R, D, H;
    struct expert_ffn_params p;
    float *x, *y, *z, *wout;
};

static double ffn_loss(void *vc)
{
    struct ffn_ctx *c = vc;
    expert_ffn_forward(c->y, c->z, c->x, &c->p, c->R, c->D, c->H);
    return dotw(c->y, c->wout, (size_t)c->R * c->D);
}

START_TEST(grad_expert_ffn)
{
    struct ffn_ctx c = {.R = 7, .D = 5, .H = 9};
    size_t np = expert_ffn_param_count(c.D, c.H);
    float *blk = moe_alloc_floats(np), *gblk = moe_alloc_floats(np);
    tu_fill(blk, np, 10, 0.5f);
    c.p = expert_ffn_view(blk, c.D, c.H);
    struct expert_ffn_params gp = expert_ffn_view(gblk, c.D, c.H);
    c.x = moe_alloc_floats((size_t)c.R * c.D);
    c.y = moe_alloc_floats((size_t)c.R * c.D);
    c.z = moe_alloc_floats((size_t)c.R * c.H);
    c.wout = moe_alloc_floats((size_t)c.R * c.D);
    float *dx = moe_alloc_floats((size_t)c.R * c.D), *dz = moe_alloc_floats((size_t)c.R * c.H);
    tu_fill(c.x, (size_t)c.R * c.D, 11, 1.0f);
    tu_fill(c.wout, (size_t)c.R * c.D, 12, 1.0f);
    ffn_loss(&c);
    expert_ffn_backward(dx, &gp, dz, c.wout, c.x, c.z, &c.p, c.R, c.D, c.H);
    /* small h: ReLU kinks are the only non-smooth points */
    ck_assert_double_lt(tu_grad_check(ffn_loss, &c, c.x, dx, (size_t)c.R * c.D, 1e-3, 4, 1, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(ffn_loss, &c, c.p.w1, gp.w1, (size_t)c.H * c.D, 1e-3, 4, 2, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(ffn_loss, &c, c.p.b1, gp.b1, (size_t)c.H, 1e-3, 4, 3, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(ffn_loss, &c, c.p.w2, gp.w2, (size_t)c.D * c.H, 1e-3, 4, 4, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(ffn_loss, &c, c.p.b2, gp.b2, (size_t)c.D, 1e-3, 4, 5, 1e-3), TOL);
    float *bufs[] = {blk, gblk, c.x, c.y, c.z, c.wout, dx, dz};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
}
END_TEST

/* ------------------------------------------------------ gate + balancing */

struct gate_ctx {
    struct gate_dims d;
    float *x, *wg, *wn, *fbuf, *imp, *load, *wgate;
    int32_t *ibuf;
    struct gate_cache c;
    double w_imp, w_load;
};

/* loss = sum_r sum_j wgate[r, idx(r,j)] G(r,j) + w_imp cv2(Importance)
 * + w_load cv2(Load). Weights are per (row, expert), not per slot, so that
 * two experts swapping slots does not make the loss jump. */
static double gate_loss(void *vc)
{
    struct gate_ctx *c = vc;
    memset(c->imp, 0, sizeof(float) * (size_t)c->d.E);
    memset(c->load, 0, sizeof(float) * (size_t)c->d.E);
    gate_forward(&c->c, c->imp, c->load, c->x, c->wg, c->wn, &c->d);
    double s = 0;
    for (int i = 0; i < c->d.N * c->d.K; i++)
        s += (double)c->wgate[(i / c->d.K) * c->d.E + c->c.idx[i]] * c->c.gates[i];
    return s + c->w_imp * gate_cv_squared(c->imp, c->d.E, NULL) +
           c->w_load * gate_cv_squared(c->load, c->d.E, NULL);
}

/* The gate of dims d (its noise key included) under the loss above. */
static void gate_case_dims(const struct gate_dims *d, double w_gates, double w_imp, double w_load)
{
    struct gate_ctx c = {.d = *d, .w_imp = w_imp, .w_load = w_load};
    const int N = c.d.N, D = c.d.D, E = c.d.E, K = c.d.K;
    c.x = moe_alloc_floats((size_t)N * D);
    c.wg = moe_alloc_floats((size_t)D * E);
    c.wn = moe_alloc_floats((size_t)D * E);
    c.fbuf = moe_alloc_floats(gate_cache_floats(&c.d));
    c.ibuf = calloc(gate_cache_ints(&c.d), sizeof(int32_t));
    c.imp = moe_alloc_floats((size_t)E);
    c.load = moe_alloc_floats((size_t)E);
    c.wgate = moe_alloc_floats((size_t)N * E);
    tu_fill(c.x, (size_t)N * D, 20, 1.0f);
    tu_fill(c.wg, (size_t)D * E, 21, 0.7f);
    tu_fill(c.wn, (size_t)D * E, 22, 0.7f);
    tu_fill(c.wgate, (size_t)N * E, 23, (float)w_gates);
    c.c = gate_cache_view(c.fbuf, c.ibuf, &c.d);
    gate_loss(&c);
    /* the noise of row r, expert i: (row0 + rows[r] or r, col0 + i) */
    for (int r = 0; r < N; r++)
        for (int i = 0; i < E; i++)
            ck_assert_float_eq(c.c.eps[r * E + i],
                               moe_rng_normal(d->seed, d->purpose ? d->purpose : MOE_RNG_GATE_NOISE,
                                              (uint64_t)d->step,
                                              (uint32_t)(d->row0 + (d->rows ? d->rows[r] : r)),
                                              d->col0 + (uint32_t)i));

    float *dx = moe_alloc_floats((size_t)N * D), *dwg = moe_alloc_floats((size_t)D * E);
    float *dwn = moe_alloc_floats((size_t)D * E), *work = moe_alloc_floats(2 * (size_t)N * E);
    float *dimp = moe_alloc_floats((size_t)E), *dload = moe_alloc_floats((size_t)E);
    float *dgates = moe_alloc_floats((size_t)N * K);
    for (int i = 0; i < N * K; i++)
        dgates[i] = c.wgate[(i / K) * E + c.c.idx[i]];
    gate_balance_loss(c.imp, c.load, E, w_imp, w_load, dimp, dload);
    gate_backward(dx, dwg, dwn, work, dgates, dimp, dload, c.x, c.wg, c.wn, &c.c, &c.d);

    const double h = 1e-3;
    ck_assert_double_lt(tu_grad_check(gate_loss, &c, c.wg, dwg, (size_t)D * E, h, 6, 1, 1e-4), TOL);
    ck_assert_double_lt(tu_grad_check(gate_loss, &c, c.wn, dwn, (size_t)D * E, h, 6, 2, 1e-4), TOL);
    ck_assert_double_lt(tu_grad_check(gate_loss, &c, c.x, dx, (size_t)N * D, h, 6, 3, 1e-4), TOL);
    float *bufs[] = {c.x, c.wg, c.wn, c.fbuf, c.imp, c.load, c.wgate, dx, dwg, dwn, work, dimp, dload, dgates};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(c.ibuf);
}

static void gate_case(double w_gates, double w_imp, double w_load, int E, int K)
{
    const struct gate_dims d = {.N = 16, .D = 6, .E = E, .K = K, .train = true, .seed = 77,
                                .step = 3, .row0 = 100};
    gate_case_dims(&d, w_gates, w_imp, w_load);
}

START_TEST(grad_gate_gates_only) { gate_case(1.0, 0.0, 0.0, 8, 3); }
END_TEST
START_TEST(grad_gate_importance_only) { gate_case(0.0, 1.0, 0.0, 8, 3); }
END_TEST
START_TEST(grad_gate_load_only) { gate_case(0.0, 0.0, 1.0, 8, 3); }
END_TEST
START_TEST(grad_gate_all_terms) { gate_case(1.0, 0.5, 0.5, 6, 2); }
END_TEST
START_TEST(grad_gate_k1) { gate_case(1.0, 0.5, 0.5, 5, 1); }
END_TEST

/* A hierarchical MoE's secondary gate (issue 17): 9 of the pass's rows,
 * not consecutive, B = 4, k = 2, its noise keyed by
 * MOE_RNG_GATE_NOISE_GROUP and the group's columns 8..11. */
START_TEST(grad_gate_secondary)
{
    static const int32_t rows[9] = {1, 2, 4, 7, 8, 11, 12, 15, 19};
    const struct gate_dims d = {.N = 9, .D = 6, .E = 4, .K = 2, .train = true, .seed = 77,
                                .step = 3, .row0 = 100, .purpose = MOE_RNG_GATE_NOISE_GROUP,
                                .col0 = 8, .rows = rows};
    gate_case_dims(&d, 1.0, 0.5, 0.5);
}
END_TEST

START_TEST(grad_cv_squared)
{
    float v[7], dv[7];
    tu_fill(v, 7, 30, 1.0f);
    for (int i = 0; i < 7; i++)
        v[i] += 2.0f;
    gate_cv_squared(v, 7, dv);
    for (int i = 0; i < 7; i++) {
        float s = v[i];
        v[i] = s + 1e-3f;
        double p = gate_cv_squared(v, 7, NULL);
        v[i] = s - 1e-3f;
        double m = gate_cv_squared(v, 7, NULL);
        v[i] = s;
        double fd = (p - m) / (2 * (double)((s + 1e-3f) - s));
        ck_assert_double_lt(fabs(fd - dv[i]) / fmax(fabs(fd), 1e-3), 1e-2);
    }
}
END_TEST

/* ------------------------------------------------- softmax cross-entropy */

struct sm_ctx {
    int N, V, D;
    float *x, *W, *b, *probs;
    int32_t *tgt;
};

static double sm_loss(void *vc)
{
    struct sm_ctx *c = vc;
    return softmax_xent_forward(c->probs, c->x, c->W, c->b, c->tgt, c->N, c->V, c->D);
}

START_TEST(grad_softmax_xent)
{
    struct sm_ctx c = {.N = 6, .V = 13, .D = 5};
    c.x = moe_alloc_floats((size_t)c.N * c.D);
    c.W = moe_alloc_floats((size_t)c.V * c.D);
    c.b = moe_alloc_floats((size_t)c.V);
    c.probs = moe_alloc_floats((size_t)c.N * c.V);
    c.tgt = malloc(sizeof(int32_t) * (size_t)c.N);
    for (int r = 0; r < c.N; r++)
        c.tgt[r] = (r * 5 + 1) % c.V;
    tu_fill(c.x, (size_t)c.N * c.D, 40, 1.0f);
    tu_fill(c.W, (size_t)c.V * c.D, 41, 1.0f);
    tu_fill(c.b, (size_t)c.V, 42, 0.5f);
    float *dx = moe_alloc_floats((size_t)c.N * c.D), *dW = moe_alloc_floats((size_t)c.V * c.D);
    float *db = moe_alloc_floats((size_t)c.V);
    sm_loss(&c);
    softmax_xent_backward(dx, dW, db, c.probs, c.x, c.W, c.tgt, 1.0f, c.N, c.V, c.D);
    ck_assert_double_lt(tu_grad_check(sm_loss, &c, c.x, dx, (size_t)c.N * c.D, 1e-2, 4, 1, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(sm_loss, &c, c.W, dW, (size_t)c.V * c.D, 1e-2, 4, 2, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(sm_loss, &c, c.b, db, (size_t)c.V, 1e-2, 4, 3, 1e-3), TOL);
    float *bufs[] = {c.x, c.W, c.b, c.probs, dx, dW, db};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
    free(c.tgt);
}
END_TEST

/* -------------------------------------------- embedding, dropout, sigmoid */

struct small_ctx {
    int N, D, V;
    int32_t *tok;
    float *W, *out, *mask, *wout;
    int which; /* 0 embed, 1 dropout, 2 sigmoid */
};

static double small_loss(void *vc)
{
    struct small_ctx *c = vc;
    size_t n = (size_t)c->N * c->D;
    if (c->which == 0)
        embed_forward(c->out, c->tok, c->W, c->N, c->D);
    else if (c->which == 1)
        dropout_forward(c->out, c->mask, c->W, 0.3f, 5, 1, 2, 0, c->N, c->D);
    else
        sigmoid_forward(c->out, c->W, (int)n);
    return dotw(c->out, c->wout, n);
}

START_TEST(grad_embed_dropout_sigmoid)
{
    struct small_ctx c = {.N = 9, .D = 4, .V = 6};
    c.tok = malloc(sizeof(int32_t) * (size_t)c.N);
    for (int r = 0; r < c.N; r++)
        c.tok[r] = (r * 7) % c.V;
    size_t nw = (size_t)c.V * c.D > (size_t)c.N * c.D ? (size_t)c.V * c.D : (size_t)c.N * c.D;
    c.W = moe_alloc_floats(nw);
    c.out = moe_alloc_floats((size_t)c.N * c.D);
    c.mask = moe_alloc_floats((size_t)c.N * c.D);
    c.wout = moe_alloc_floats((size_t)c.N * c.D);
    float *g = moe_alloc_floats(nw);
    tu_fill(c.wout, (size_t)c.N * c.D, 50, 1.0f);
    for (c.which = 0; c.which < 3; c.which++) {
        size_t n = c.which == 0 ? (size_t)c.V * c.D : (size_t)c.N * c.D;
        tu_fill(c.W, nw, 51, 1.0f);
        memset(g, 0, sizeof(float) * nw);
        small_loss(&c);
        if (c.which == 0)
            embed_backward(g, c.wout, c.tok, c.N, c.D);
        else if (c.which == 1)
            dropout_backward(g, c.wout, c.mask, (int)n);
        else
            sigmoid_backward(g, c.wout, c.out, (int)n);
        ck_assert_double_lt(tu_grad_check(small_loss, &c, c.W, g, n, 1e-2, 4, 1, 1e-3), TOL);
    }
    free(c.tok);
    free(c.W);
    free(c.out);
    free(c.mask);
    free(c.wout);
    free(g);
}
END_TEST

/* --------------------------------------------- dispatch, experts, combine */

struct moe_ctx {
    int N, D, E, K, H;
    int32_t *idx;
    float *gates, *x, *y, *wout;
    struct moe_dispatch m;
    expert_shard_t *shard;
};

static double moe_loss(void *vc)
{
    struct moe_ctx *c = vc;
    moe_dispatch_forward(&c->m, c->N, c->idx, c->gates, c->x);
    ck_assert_int_eq(expert_shard_forward(c->shard, c->m.n_active, c->m.ids, c->m.rows, c->m.xe,
                                          c->m.ye), 0);
    moe_combine_forward(c->y, &c->m, c->N, c->gates);
    return dotw(c->y, c->wout, (size_t)c->N * c->D);
}

START_TEST(grad_dispatch_combine)
{
    struct moe_ctx c = {.N = 10, .D = 4, .E = 5, .K = 2, .H = 6};
    c.idx = malloc(sizeof(int32_t) * (size_t)c.N * c.K);
    for (int r = 0; r < c.N; r++) {
        c.idx[r * 2] = (r * 3) % c.E;
        c.idx[r * 2 + 1] = (r * 3 + 1 + r % 3) % c.E;
    }
    c.gates = moe_alloc_floats((size_t)c.N * c.K);
    tu_fill(c.gates, (size_t)c.N * c.K, 60, 1.0f);
    c.gates[3] = 0.0f; /* an undispatched slot */
    c.x = moe_alloc_floats((size_t)c.N * c.D);
    c.y = moe_alloc_floats((size_t)c.N * c.D);
    c.wout = moe_alloc_floats((size_t)c.N * c.D);
    tu_fill(c.x, (size_t)c.N * c.D, 61, 1.0f);
    tu_fill(c.wout, (size_t)c.N * c.D, 62, 1.0f);
    ck_assert_int_eq(moe_dispatch_init(&c.m, c.N, c.K, c.E, c.D), 0);
    int32_t ids[5] = {0, 1, 2, 3, 4};
    struct moe_fadam_opts fo = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};
    c.shard = expert_shard_new(c.D, c.H, c.E, ids, 9, &fo);
    ck_assert_ptr_nonnull(c.shard);

    moe_loss(&c);
    float *dgates = moe_alloc_floats((size_t)c.N * c.K), *dx = moe_alloc_floats((size_t)c.N * c.D);
    moe_combine_backward(dgates, &c.m, c.N, c.wout, c.gates);
    ck_assert_int_eq(expert_shard_backward(c.shard, c.m.n_active, c.m.ids, c.m.rows, c.m.dye,
                                           c.m.dxe), 0);
    moe_dispatch_backward(dx, &c.m, c.N);
    ck_assert_float_eq(dgates[3], 0.0f);
    ck_assert_double_lt(tu_grad_check(moe_loss, &c, c.x, dx, (size_t)c.N * c.D, 1e-3, 4, 1, 1e-3), TOL);
    /* slot 3 has gate 0 and is not dispatched: its gate is not a free
     * variable of the layer, so the check covers slots 4.. */
    ck_assert_double_lt(tu_grad_check(moe_loss, &c, c.gates + 4, dgates + 4, (size_t)c.N * c.K - 4, 1e-3, 4, 2, 1e-3), TOL);
    /* expert parameters: expert 2's block */
    int li = expert_shard_find(c.shard, 2);
    size_t np = expert_ffn_param_count(c.D, c.H);
    ck_assert_double_lt(tu_grad_check(moe_loss, &c, expert_shard_params(c.shard, li),
                                      expert_shard_grads(c.shard, li), np, 1e-3, 4, 3, 1e-3), TOL);
    expert_shard_destroy(&c.shard);
    moe_dispatch_free(&c.m);
    free(c.idx);
    free(c.gates);
    free(c.x);
    free(c.y);
    free(c.wout);
    free(dgates);
    free(dx);
}
END_TEST

/* ------------------------------------------------------- the whole model */

struct model_ctx {
    model_t *m;
    struct model_batch b;
    int E;
};

/* Total training loss: mean cross-entropy + both balancing losses, with
 * noise and dropout fixed by the counter RNG for step 5. */
static double model_loss(void *vc)
{
    struct model_ctx *c = vc;
    double xent;
    char err[256];
    ck_assert_int_eq(model_forward(c->m, &c->b, 5, true, &xent, err, sizeof err), 0);
    const struct model_config *cfg = model_config_of(c->m);
    return xent / (double)c->b.n_global +
           cfg->w_importance * gate_cv_squared(model_local_importance(c->m), c->E, NULL) +
           cfg->w_load * gate_cv_squared(model_local_load(c->m), c->E, NULL);
}

/* Every dense parameter and every other expert of the model of cfg (at
 * most 6 experts, batch 3 x 4). */
static void model_case_cfg(const struct model_config *mcfg)
{
    const struct model_config cfg = *mcfg;
    const int B = cfg.B_max, T = cfg.T_max, V = cfg.V, E = cfg.E;
    int32_t ids[6] = {0, 1, 2, 3, 4, 5};
    struct moe_fadam_opts fo = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};
    expert_shard_t *shard = expert_shard_new(cfg.D, cfg.H, E, ids, cfg.seed, &fo);
    /* a hierarchical model's groups run where their experts are */
    struct expert_local lg = {.shard = shard};
    struct moe_backend be;
    if (cfg.hierarchical) {
        lg.groups = hmoe_groups_new(cfg.D, cfg.B, cfg.K, cfg.A, ids, cfg.seed, &fo);
        ck_assert_ptr_nonnull(lg.groups);
        expert_local_group_backend(&be, &lg);
    } else {
        expert_local_backend(&be, shard);
    }
    struct model_ctx c = {.m = model_new(&cfg, &be), .E = E};
    ck_assert_ptr_nonnull(c.m);
    /* non-zero gate weights (moe.w_gate, moe.w_noise, and a hierarchical
     * model's moe.groups.I.*) so that every term is exercised */
    int n_gates = 0;
    for (int p = 0; p < model_n_params(c.m); p++) {
        const struct layer_param q = model_param_at(c.m, p);
        if (!strncmp(q.name, "moe.", 4))
            tu_fill(q.w->data, q.w->numel, 70u + (uint32_t)n_gates++, 0.8f);
    }
    const size_t ngp = hmoe_groups_param_count(cfg.D, cfg.B);
    for (int i = 0; lg.groups && i < cfg.A; i++)
        tu_fill(hmoe_groups_params(lg.groups, i), ngp, 70u + (uint32_t)n_gates++, 0.8f);
    tu_fill(model_param_named(c.m, "softmax.bias").w->data, (size_t)V, 72, 0.3f);
    /* carried state: lstm1's h and lstm2's c */
    tu_fill(model_state_at(c.m, false, 0).data, (size_t)B * cfg.D, 73, 0.3f);
    tu_fill(model_state_at(c.m, false, 3).data, (size_t)B * cfg.D, 74, 0.3f);
    int32_t tok[12], tgt[12];
    for (int i = 0; i < B * T; i++) {
        tok[i] = (i * 7 + 2) % V;
        tgt[i] = (i * 5 + 3) % V;
    }
    c.b = (struct model_batch){B, T, tok, tgt, 0, B * T};

    model_loss(&c);
    double bal;
    char err[256];
    ck_assert_int_eq(model_backward(c.m, model_local_importance(c.m), model_local_load(c.m), &bal,
                                    err, sizeof err), 0);
    /* the expert gradients stay in the shard until apply; copy them */
    size_t np = expert_ffn_param_count(cfg.D, cfg.H);
    float *eg = malloc(sizeof(float) * np * E);
    for (int e = 0; e < E; e++)
        memcpy(eg + np * e, expert_shard_grads(shard, e), sizeof(float) * np);
    const int n_params = model_n_params(c.m);
    float **dg = malloc(sizeof(float *) * (size_t)n_params);
    for (int p = 0; p < n_params; p++) {
        const moe_tensor *g = model_param_at(c.m, p).g;
        dg[p] = malloc(sizeof(float) * g->numel);
        memcpy(dg[p], g->data, sizeof(float) * g->numel);
    }
    for (int p = 0; p < n_params; p++) {
        moe_tensor *t = model_param_at(c.m, p).w;
        double err_p = tu_grad_check(model_loss, &c, t->data, dg[p], t->numel, 1e-2, 3,
                                     (uint32_t)p + 1, 1e-3);
        ck_assert_msg(err_p < TOL, "%s: relative error %g", t->name, err_p);
    }
    for (int i = 0; lg.groups && i < cfg.A; i++) {
        float *g = malloc(sizeof(float) * ngp);
        memcpy(g, hmoe_groups_grads(lg.groups, i), sizeof(float) * ngp);
        double err_g = tu_grad_check(model_loss, &c, hmoe_groups_params(lg.groups, i), g, ngp,
                                     1e-2, 3, 90u + (uint32_t)i, 1e-3);
        ck_assert_msg(err_g < TOL, "moe.groups.%d gate: relative error %g", i, err_g);
        free(g);
    }
    for (int e = 0; e < E; e += 2) {
        double err_e = tu_grad_check(model_loss, &c, expert_shard_params(shard, e), eg + np * e,
                                     np, 1e-2, 3, 100u + (uint32_t)e, 1e-3);
        ck_assert_msg(err_e < TOL, "expert %d: relative error %g", e, err_e);
    }
    for (int p = 0; p < n_params; p++)
        free(dg[p]);
    free(dg);
    free(eg);
    model_destroy(&c.m);
    expert_shard_destroy(&shard);
    hmoe_groups_destroy(&lg.groups);
}

static void model_case(bool residual, bool sigmoid, double dropout)
{
    const struct model_config cfg = {.V = 11, .D = 6, .H = 7, .E = 6, .K = 2,
                                      .residual = residual, .moe_sigmoid = sigmoid,
                                      .dropout = dropout, .w_importance = 0.5, .w_load = 0.5,
                                      .seed = 3, .B_max = 3, .T_max = 4};
    model_case_cfg(&cfg);
}

/* --moe hierarchical (issue 17): 3 groups of 2 experts, K1 = 2, k = 1. */
static void model_case_hierarchical(int K1, int K)
{
    const struct model_config cfg = {.V = 11, .D = 6, .H = 7, .E = 6, .K = K,
                                      .hierarchical = true, .A = 3, .B = 2, .K1 = K1,
                                      .residual = true, .moe_sigmoid = true, .dropout = 0.2,
                                      .w_importance = 0.5, .w_load = 0.5, .seed = 3, .B_max = 3,
                                      .T_max = 4};
    model_case_cfg(&cfg);
}

START_TEST(grad_model_residual_sigmoid_dropout) { model_case(true, true, 0.2); }
END_TEST
START_TEST(grad_model_plain) { model_case(false, false, 0.0); }
END_TEST
START_TEST(grad_model_hierarchical) { model_case_hierarchical(2, 1); }
END_TEST
START_TEST(grad_model_hierarchical_k2) { model_case_hierarchical(1, 2); }
END_TEST

Suite *test_grad_suite(void);
Suite *test_grad_suite(void)
{
    Suite *s = suite_create("grad");
    TCase *tc = tcase_create("layers");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, grad_lstm);
    tcase_add_test(tc, grad_expert_ffn);
    tcase_add_test(tc, grad_gate_gates_only);
    tcase_add_test(tc, grad_gate_importance_only);
    tcase_add_test(tc, grad_gate_load_only);
    tcase_add_test(tc, grad_gate_all_terms);
    tcase_add_test(tc, grad_gate_k1);
    tcase_add_test(tc, grad_gate_secondary);
    tcase_add_test(tc, grad_cv_squared);
    tcase_add_test(tc, grad_softmax_xent);
    tcase_add_test(tc, grad_embed_dropout_sigmoid);
    tcase_add_test(tc, grad_dispatch_combine);
    suite_add_tcase(s, tc);
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 120);
    tcase_add_test(tm, grad_model_residual_sigmoid_dropout);
    tcase_add_test(tm, grad_model_plain);
    tcase_add_test(tm, grad_model_hierarchical);
    tcase_add_test(tm, grad_model_hierarchical_k2);
    suite_add_tcase(s, tm);
    return s;
}
