/* Finite-difference checks of the translation model (issue 19): the
 * additive attention alone with padded source positions and padded target
 * rows (every parameter, the queries and the memory), and the whole
 * encoder-decoder (seq2seq.h) with gating noise, dropout, residuals, the
 * MoE sigmoid and both balancing losses of each MoE layer, on a batch with
 * padding: every dense parameter and experts of both layers. Masking is
 * checked exactly: padded positions get no attention weight and no
 * gradient, and changing the ids at padded positions changes no bit of the
 * loss or of any gradient. The checks are directional, as in
 * test_grad.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "expert_ffn.h"
#include "expert_local.h"
#include "expert_offset.h"
#include "expert_shard.h"
#include "gate.h"
#include "moe_tensor.h"
#include "seq2seq.h"
#include "test_util.h"

#define TOL 2e-2

Suite *test_grad_s2s_suite(void);

/* ------------------------------------------------------------- attention */

struct att_ctx {
    struct attention_dims d;
    struct attention_params p;
    float *q, *mem, *ctx, *cache_buf, *wout;
    struct attention_cache c;
    const int *src_len, *tgt_len;
};

static double att_loss(void *vc)
{
    struct att_ctx *c = vc;
    attention_forward(c->ctx, &c->c, c->q, c->mem, c->src_len, c->tgt_len, &c->p, &c->d);
    return tu_dotw(c->ctx, c->wout, (size_t)c->d.B * c->d.T * c->d.D);
}

START_TEST(grad_attention_masked)
{
    const int B = 3, T = 4, S = 5, D = 6, A = 7, NT = B * T, NS = B * S;
    static const int src_len[3] = {5, 2, 3}, tgt_len[3] = {4, 1, 3};
    struct att_ctx c = {.d = {B, T, S, D, A}, .src_len = src_len, .tgt_len = tgt_len};
    const size_t nw = 2 * (size_t)A * D + 2 * (size_t)A;
    float *w = moe_alloc_floats(nw), *gw = moe_alloc_floats(nw);
    tu_fill(w, nw, 201, 0.6f);
    c.p = (struct attention_params){w, w + A * D, w + 2 * A * D, w + 2 * A * D + A};
    struct attention_params gp = {gw, gw + A * D, gw + 2 * A * D, gw + 2 * A * D + A};
    c.q = moe_alloc_floats((size_t)NT * D);
    c.mem = moe_alloc_floats((size_t)NS * D);
    c.ctx = moe_alloc_floats((size_t)NT * D);
    c.wout = moe_alloc_floats((size_t)NT * D);
    c.cache_buf = moe_alloc_floats(attention_cache_floats(&c.d));
    c.c = attention_cache_view(c.cache_buf, &c.d);
    float *work = moe_alloc_floats(attention_work_floats(&c.d));
    float *dq = moe_alloc_floats((size_t)NT * D), *dmem = moe_alloc_floats((size_t)NS * D);
    tu_fill(c.q, (size_t)NT * D, 202, 1.0f);
    tu_fill(c.mem, (size_t)NS * D, 203, 1.0f);
    tu_fill(c.wout, (size_t)NT * D, 204, 1.0f);

    att_loss(&c);
    attention_backward(dq, dmem, &gp, work, c.wout, c.q, c.mem, &c.c, src_len, tgt_len, &c.p,
                       &c.d);
    /* masking: weights sum to 1 over real positions and are 0 elsewhere;
     * padded rows have context 0; padded memory gets no gradient, padded
     * queries none either */
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const float *al = c.c.alpha + ((size_t)b * T + t) * S;
            double sum = 0;
            for (int s = 0; s < S; s++) {
                if (s >= src_len[b] || t >= tgt_len[b])
                    ck_assert_float_eq(al[s], 0.0f);
                sum += al[s];
            }
            ck_assert_double_eq_tol(sum, t < tgt_len[b] ? 1.0 : 0.0, 1e-6);
            for (int k = 0; k < D; k++) {
                if (t >= tgt_len[b]) {
                    ck_assert_float_eq(c.ctx[((size_t)b * T + t) * D + k], 0.0f);
                    ck_assert_float_eq(dq[((size_t)b * T + t) * D + k], 0.0f);
                }
            }
        }
    for (int b = 0; b < B; b++)
        for (int s = src_len[b]; s < S; s++)
            for (int k = 0; k < D; k++)
                ck_assert_float_eq(dmem[((size_t)b * S + s) * D + k], 0.0f);

    ck_assert_double_lt(tu_grad_check(att_loss, &c, c.q, dq, (size_t)NT * D, 1e-2, 4, 1, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(att_loss, &c, c.mem, dmem, (size_t)NS * D, 1e-2, 4, 2, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(att_loss, &c, c.p.w_q, gp.w_q, (size_t)A * D, 1e-2, 4, 3, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(att_loss, &c, c.p.w_k, gp.w_k, (size_t)A * D, 1e-2, 4, 4, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(att_loss, &c, c.p.b, gp.b, (size_t)A, 1e-2, 4, 5, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check(att_loss, &c, c.p.v, gp.v, (size_t)A, 1e-2, 4, 6, 1e-3), TOL);
    ck_assert_double_lt(tu_grad_check_coords(att_loss, &c, c.mem, dmem, (size_t)NS * D, 1e-2, 40, 1e-2), 5e-2);

    float *bufs[] = {w, gw, c.q, c.mem, c.ctx, c.wout, c.cache_buf, work, dq, dmem};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free(bufs[i]);
}
END_TEST

/* ------------------------------------------------------- the whole model */

enum { GB = 3, GS = 5, GT = 4, GE = 4 };

struct s2s_ctx {
    s2s_t *m;
    struct s2s_batch b;
    expert_shard_t *shard[S2S_N_MOE];
    struct expert_offset off;
};

/* Mean cross-entropy over the real target tokens + both balancing losses
 * of both MoE layers, with noise and dropout of step 5. */
static double s2s_loss(void *vc)
{
    struct s2s_ctx *c = vc;
    double xent;
    char err[256];
    ck_assert_int_eq(s2s_forward(c->m, &c->b, 5, true, &xent, err, sizeof err), 0);
    const struct s2s_config *cfg = s2s_config_of(c->m);
    double loss = xent / (double)c->b.n_global;
    for (int w = 0; w < S2S_N_MOE; w++)
        loss += cfg->w_importance * gate_cv_squared(s2s_importance(c->m, w), cfg->E, NULL) +
                cfg->w_load * gate_cv_squared(s2s_load(c->m, w), cfg->E, NULL);
    return loss;
}

static void s2s_ctx_init(struct s2s_ctx *c, const struct s2s_config *cfg, int32_t *src,
                         int32_t *tin, int32_t *tout, const int *sl, const int *tl)
{
    struct moe_fadam_opts fo = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};
    int32_t ids[2 * GE];
    for (int e = 0; e < 2 * GE; e++)
        ids[e] = e;
    struct moe_backend be[S2S_N_MOE], dec_inner;
    c->shard[0] = expert_shard_new(cfg->D, cfg->H, GE, ids, cfg->seed, &fo);
    c->shard[1] = expert_shard_new(cfg->D, cfg->H, GE, ids + GE, cfg->seed, &fo);
    expert_local_backend(&be[0], c->shard[0]);
    expert_local_backend(&dec_inner, c->shard[1]);
    ck_assert_int_eq(expert_offset_init(&c->off, &be[1], &dec_inner, GE, GE), 0);
    c->m = s2s_new(cfg, be);
    ck_assert_ptr_nonnull(c->m);
    /* non-zero gate weights and softmax bias, so that every term counts */
    for (int p = 0, n = 0; p < s2s_n_params(c->m); p++) {
        const struct layer_param q = s2s_param_at(c->m, p);
        if (strstr(q.name, ".moe.") || strstr(q.name, "attention.bias") ||
            strstr(q.name, "softmax.bias"))
            tu_fill(q.w->data, q.w->numel, 270u + (uint32_t)n++, 0.8f);
    }
    for (int i = 0; i < GB * GS; i++)
        src[i] = (i * 7 + 2) % cfg->V_src;
    for (int i = 0; i < GB * GT; i++) {
        tin[i] = (i * 5 + 3) % cfg->V_tgt;
        tout[i] = (i * 3 + 1) % cfg->V_tgt;
    }
    int n = 0;
    for (int b = 0; b < GB; b++)
        n += tl[b];
    c->b = (struct s2s_batch){.B = GB, .S = GS, .T = GT, .src = src, .tgt_in = tin,
                              .tgt_out = tout, .src_len = sl, .tgt_len = tl, .n_global = n};
}

static void s2s_ctx_free(struct s2s_ctx *c)
{
    s2s_destroy(&c->m);
    expert_offset_free(&c->off);
    for (int w = 0; w < S2S_N_MOE; w++)
        expert_shard_destroy(&c->shard[w]);
}

static void s2s_backward_local(struct s2s_ctx *c)
{
    const float *imp[S2S_N_MOE] = {s2s_importance(c->m, 0), s2s_importance(c->m, 1)};
    const float *load[S2S_N_MOE] = {s2s_load(c->m, 0), s2s_load(c->m, 1)};
    double bal;
    char err[256];
    ck_assert_int_eq(s2s_backward(c->m, imp, load, &bal, err, sizeof err), 0);
    ck_assert_double_gt(bal, 0.0);
}

static const int g_src_len[GB] = {5, 2, 4}, g_tgt_len[GB] = {3, 4, 1};

static struct s2s_config grad_config(void)
{
    return (struct s2s_config){.V_src = 9, .V_tgt = 11, .D = 6, .H = 7, .E = GE, .K = 2,
                               .residual = true, .moe_sigmoid = true, .dropout = 0.2,
                               .w_importance = 0.5, .w_load = 0.5, .seed = 3, .B_max = GB,
                               .S_max = GS, .T_max = GT};
}

START_TEST(grad_s2s_model)
{
    const struct s2s_config cfg = grad_config();
    int32_t src[GB * GS], tin[GB * GT], tout[GB * GT];
    struct s2s_ctx c;
    s2s_ctx_init(&c, &cfg, src, tin, tout, g_src_len, g_tgt_len);
    s2s_loss(&c);
    s2s_backward_local(&c);
    const size_t np = expert_ffn_param_count(cfg.D, cfg.H);
    float *eg = malloc(sizeof(float) * np * 2 * GE);
    for (int w = 0; w < S2S_N_MOE; w++)
        for (int e = 0; e < GE; e++)
            memcpy(eg + np * (w * GE + e), expert_shard_grads(c.shard[w], e), sizeof(float) * np);
    const int n_params = s2s_n_params(c.m);
    ck_assert_int_eq(n_params, 1 + 3 * 4 + 2 + 1 + 4 + 4 + 2 + 4 + 2);
    float **dg = malloc(sizeof(float *) * (size_t)n_params);
    for (int p = 0; p < n_params; p++) {
        const moe_tensor *g = s2s_param_at(c.m, p).g;
        dg[p] = malloc(sizeof(float) * g->numel);
        memcpy(dg[p], g->data, sizeof(float) * g->numel);
    }
    for (int p = 0; p < n_params; p++) {
        moe_tensor *t = s2s_param_at(c.m, p).w;
        double err_p = tu_grad_check(s2s_loss, &c, t->data, dg[p], t->numel, 1e-2, 3,
                                     (uint32_t)p + 1, 1e-3);
        ck_assert_msg(err_p < TOL, "%s: relative error %g", t->name, err_p);
    }
    for (int w = 0; w < S2S_N_MOE; w++)
        for (int e = w; e < GE; e += 2) {
            double err_e = tu_grad_check(s2s_loss, &c, expert_shard_params(c.shard[w], e),
                                         eg + np * (w * GE + e), np, 1e-2, 3,
                                         100u + (uint32_t)(w * GE + e), 1e-3);
            ck_assert_msg(err_e < TOL, "%s expert %d: relative error %g",
                          w ? "decoder" : "encoder", e, err_e);
        }
    for (int p = 0; p < n_params; p++)
        free(dg[p]);
    free(dg);
    free(eg);
    s2s_ctx_free(&c);
}
END_TEST

/* Changing every id at a padded position changes no bit of the loss, of
 * the gates' statistics or of any gradient. */
START_TEST(s2s_padding_is_masked)
{
    const struct s2s_config cfg = grad_config();
    int32_t src[GB * GS], tin[GB * GT], tout[GB * GT];
    struct s2s_ctx c;
    s2s_ctx_init(&c, &cfg, src, tin, tout, g_src_len, g_tgt_len);
    double l0 = s2s_loss(&c);
    float imp0[GE], load0[GE];
    memcpy(imp0, s2s_importance(c.m, S2S_ENCODER), sizeof imp0);
    memcpy(load0, s2s_load(c.m, S2S_DECODER), sizeof load0);
    s2s_backward_local(&c);
    const int n_params = s2s_n_params(c.m);
    float **dg = malloc(sizeof(float *) * (size_t)n_params);
    for (int p = 0; p < n_params; p++) {
        const moe_tensor *g = s2s_param_at(c.m, p).g;
        dg[p] = malloc(sizeof(float) * g->numel);
        memcpy(dg[p], g->data, sizeof(float) * g->numel);
    }
    for (int b = 0; b < GB; b++) {
        for (int s = g_src_len[b]; s < GS; s++)
            src[b * GS + s] = (src[b * GS + s] + 5) % cfg.V_src;
        for (int t = g_tgt_len[b]; t < GT; t++) {
            tin[b * GT + t] = (tin[b * GT + t] + 4) % cfg.V_tgt;
            tout[b * GT + t] = (tout[b * GT + t] + 7) % cfg.V_tgt;
        }
    }
    for (int w = 0; w < S2S_N_MOE; w++)
        expert_shard_zero_grad(c.shard[w]);
    double l1 = s2s_loss(&c);
    ck_assert_msg(l0 == l1, "loss %.17g with other padding ids %.17g", l0, l1);
    ck_assert_int_eq(memcmp(imp0, s2s_importance(c.m, S2S_ENCODER), sizeof imp0), 0);
    ck_assert_int_eq(memcmp(load0, s2s_load(c.m, S2S_DECODER), sizeof load0), 0);
    s2s_backward_local(&c);
    for (int p = 0; p < n_params; p++) {
        const moe_tensor *g = s2s_param_at(c.m, p).g;
        ck_assert_msg(memcmp(dg[p], g->data, sizeof(float) * g->numel) == 0,
                      "%s: gradient changed with the padding ids", g->name);
        free(dg[p]);
    }
    free(dg);
    s2s_ctx_free(&c);
}
END_TEST

/* Step-by-step decoding (beam search's) computes the probabilities of the
 * teacher-forced evaluation pass. */
START_TEST(s2s_decode_matches_forward)
{
    struct s2s_config cfg = grad_config();
    int32_t src[GB * GS], tin[GB * GT], tout[GB * GT];
    struct s2s_ctx c;
    s2s_ctx_init(&c, &cfg, src, tin, tout, g_src_len, g_tgt_len);
    static const int sl[1] = {4}, tl[1] = {GT};
    struct s2s_batch one = c.b;
    one.B = 1;
    one.src_len = sl;
    one.tgt_len = tl;
    one.n_global = GT;
    double xent;
    char err[256];
    ck_assert_int_eq(s2s_forward(c.m, &one, 0, false, &xent, err, sizeof err), 0);
    ck_assert_int_eq(s2s_decode_begin(c.m, src, 4, 2, err, sizeof err), 0);
    double xent_steps = 0;
    for (int t = 0; t < GT; t++) {
        int32_t tok[2] = {tin[t], (tin[t] + 1) % cfg.V_tgt};
        const float *p = s2s_decode_step(c.m, tok, err, sizeof err);
        ck_assert_ptr_nonnull(p);
        xent_steps -= log(p[tout[t]]);
        /* hypothesis 1 diverged; reorder both onto hypothesis 0 */
        const int from[2] = {0, 0};
        s2s_decode_reorder(c.m, from);
    }
    ck_assert_double_eq_tol(xent_steps, xent, 1e-4 * fabs(xent));
    s2s_ctx_free(&c);
}
END_TEST

Suite *test_grad_s2s_suite(void)
{
    Suite *s = suite_create("grad_s2s");
    TCase *tc = tcase_create("s2s");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, grad_attention_masked);
    tcase_add_test(tc, grad_s2s_model);
    tcase_add_test(tc, s2s_padding_is_masked);
    tcase_add_test(tc, s2s_decode_matches_forward);
    suite_add_tcase(s, tc);
    return s;
}
