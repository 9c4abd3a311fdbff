/* Whole-model forward and backward of one worker (see model.h). */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "moe_err.h"
#include "moe_rng.h"
#include "nn_ops.h"
#include "softmax_xent.h"

enum { DROP_EMB, DROP_LSTM1, DROP_MOE, DROP_LSTM2 };

struct model {
    struct model_config cfg;
    struct moe_backend backend;
    moe_tensor param[MP_COUNT], grad[MP_COUNT];

    /* activations, each (Nmax, D) */
    float *e, *a0, *mask0, *h1, *a1, *mask1, *mo, *ms, *a2, *mask2, *h2, *a3, *mask3;
    /* gradients of activations */
    float *da0, *da1, *da2, *da3, *dtmp;
    float *probs;           /* (Nmax, V) */
    float *lstm_cache_buf[2], *lstm_work;
    struct lstm_cache lc[2];
    float *gate_f, *gate_work, *dgates;
    int32_t *gate_i;
    struct gate_cache gc;
    struct moe_dispatch disp;
    float *imp, *load, *dimp, *dload;
    float *state[2][2][2]; /* [eval][layer][cell] (B_max, D) */

    /* what the last forward used */
    struct model_batch batch;
    int64_t step;
    bool train, have_forward;
    struct lstm_dims ld[2];
    struct gate_dims gd;
};

static const char *const param_names[MP_COUNT] = {
    "embedding.weight",
    "lstm1.weight_ih_l0", "lstm1.weight_hh_l0", "lstm1.bias_ih_l0", "lstm1.bias_hh_l0",
    "moe.w_gate", "moe.w_noise",
    "lstm2.weight_ih_l0", "lstm2.weight_hh_l0", "lstm2.bias_ih_l0", "lstm2.bias_hh_l0",
    "softmax.weight", "softmax.bias",
};

const char *model_param_name(enum model_param p) { return param_names[p]; }
const struct model_config *model_config_of(const model_t *m) { return &m->cfg; }
moe_tensor *model_param(model_t *m, enum model_param p) { return &m->param[p]; }
moe_tensor *model_grad(model_t *m, enum model_param p) { return &m->grad[p]; }
const float *model_local_importance(const model_t *m) { return m->imp; }
const float *model_local_load(const model_t *m) { return m->load; }
const int *model_local_counts(const model_t *m) { return m->disp.counts; }

float *model_state(model_t *m, bool eval, int layer, bool cell)
{
    return m->state[eval][layer][cell];
}

void model_reset_state(model_t *m, bool eval)
{
    for (int l = 0; l < 2; l++)
        for (int c = 0; c < 2; c++)
            memset(m->state[eval][l][c], 0, sizeof(float) * (size_t)m->cfg.B_max * m->cfg.D);
}

static int param_shape(const struct model_config *c, enum model_param p, int64_t shape[2])
{
    const int64_t D = c->D, V = c->V, E = c->E;
    switch (p) {
    case MP_EMBEDDING: shape[0] = V; shape[1] = D; return 2;
    case MP_L1_W_IH: case MP_L1_W_HH: case MP_L2_W_IH: case MP_L2_W_HH:
        shape[0] = 4 * D; shape[1] = D; return 2;
    case MP_L1_B_IH: case MP_L1_B_HH: case MP_L2_B_IH: case MP_L2_B_HH:
        shape[0] = 4 * D; return 1;
    case MP_W_GATE: case MP_W_NOISE: shape[0] = D; shape[1] = E; return 2;
    case MP_SOFTMAX_W: shape[0] = V; shape[1] = D; return 2;
    case MP_SOFTMAX_B: shape[0] = V; return 1;
    case MP_COUNT: break;
    }
    return 0;
}

static void init_params(model_t *m)
{
    const struct model_config *c = &m->cfg;
    const float lstm_bound = 1.0f / sqrtf((float)c->D);
    for (int p = 0; p < MP_COUNT; p++) {
        moe_tensor *t = &m->param[p];
        float bound = 0.0f;
        switch ((enum model_param)p) {
        case MP_EMBEDDING: bound = 0.1f; break;
        case MP_W_GATE: case MP_W_NOISE: case MP_SOFTMAX_B: bound = 0.0f; break;
        case MP_SOFTMAX_W: bound = 1.0f / sqrtf((float)c->D); break;
        default: bound = lstm_bound; break;
        }
        if (bound > 0.0f)
            moe_rng_fill_uniform(t->data, t->numel, t->name, c->seed, bound);
    }
}

void model_set_backend(model_t *m, const struct moe_backend *backend) { m->backend = *backend; }

double model_dense_params(const struct model_config *cfg)
{
    double n = 0;
    for (int p = 0; p < MP_COUNT; p++) {
        int64_t shape[2] = {0, 1};
        int nd = param_shape(cfg, (enum model_param)p, shape);
        n += (double)shape[0] * (nd == 2 ? (double)shape[1] : 1.0);
    }
    return n;
}

double model_bytes(const struct model_config *cfg)
{
    /* The allocations of model_new, in doubles so that no size overflows. */
    const double N = (double)cfg->B_max * cfg->T_max, D = cfg->D, V = cfg->V, E = cfg->E,
                 K = cfg->K;
    const double lstm = 2 * 5 * N * D + 8 * N * D;         /* 2 caches (lstm_cache_floats), work */
    const double gate = 8 * N * E + 3 * N * (K + 1);        /* cache, ints, work */
    const double disp = 2 * N * K * D;                        /* dispatch and combine */
    double floats = 2 * model_dense_params(cfg) + 18 * N * D + N * V + lstm + gate + disp +
                    8 * (double)cfg->B_max * D;
    return 4 * floats;
}

model_t *model_new(const struct model_config *cfg, const struct moe_backend *backend)
{
    if (cfg->V < 2 || cfg->D < 1 || cfg->H < 1 || cfg->E < 1 || cfg->K < 1 || cfg->K > cfg->E ||
        cfg->B_max < 1 || cfg->T_max < 1 || cfg->dropout < 0 || cfg->dropout >= 1)
        return NULL;
    model_t *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->cfg = *cfg;
    m->backend = *backend;
    for (int p = 0; p < MP_COUNT; p++) {
        int64_t shape[2];
        int nd = param_shape(cfg, (enum model_param)p, shape);
        if (moe_tensor_init(&m->param[p], param_names[p], nd, shape) ||
            moe_tensor_init(&m->grad[p], param_names[p], nd, shape))
            goto fail;
    }
    init_params(m);

    const size_t N = (size_t)cfg->B_max * cfg->T_max, D = (size_t)cfg->D;
    float **acts[] = {&m->e, &m->a0, &m->mask0, &m->h1, &m->a1, &m->mask1, &m->mo, &m->ms,
                      &m->a2, &m->mask2, &m->h2, &m->a3, &m->mask3, &m->da0, &m->da1,
                      &m->da2, &m->da3, &m->dtmp};
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
        if (!(*acts[i] = moe_alloc_floats(N * D)))
            goto fail;
    if (!(m->probs = moe_alloc_floats(N * (size_t)cfg->V)))
        goto fail;
    struct lstm_dims ld = {cfg->B_max, cfg->T_max, cfg->D, cfg->D};
    for (int l = 0; l < 2; l++)
        if (!(m->lstm_cache_buf[l] = moe_alloc_floats(lstm_cache_floats(&ld))))
            goto fail;
    if (!(m->lstm_work = moe_alloc_floats(lstm_work_floats(&ld))))
        goto fail;
    struct gate_dims gd = {(int)N, cfg->D, cfg->E, cfg->K, true, 0, 0, 0};
    m->gate_f = moe_alloc_floats(gate_cache_floats(&gd));
    m->gate_i = calloc(gate_cache_ints(&gd), sizeof(int32_t));
    m->gate_work = moe_alloc_floats(2 * N * (size_t)cfg->E);
    m->dgates = moe_alloc_floats(N * (size_t)cfg->K);
    m->imp = moe_alloc_floats((size_t)cfg->E);
    m->load = moe_alloc_floats((size_t)cfg->E);
    m->dimp = moe_alloc_floats((size_t)cfg->E);
    m->dload = moe_alloc_floats((size_t)cfg->E);
    if (!m->gate_f || !m->gate_i || !m->gate_work || !m->dgates || !m->imp || !m->load ||
        !m->dimp || !m->dload)
        goto fail;
    if (moe_dispatch_init(&m->disp, (int)N, cfg->K, cfg->E, cfg->D))
        goto fail;
    for (int e = 0; e < 2; e++)
        for (int l = 0; l < 2; l++)
            for (int c = 0; c < 2; c++)
                if (!(m->state[e][l][c] = moe_alloc_floats((size_t)cfg->B_max * D)))
                    goto fail;
    return m;
fail:
    model_destroy(&m);
    return NULL;
}

void model_destroy(model_t **mp)
{
    if (!mp || !*mp)
        return;
    model_t *m = *mp;
    for (int p = 0; p < MP_COUNT; p++) {
        moe_tensor_free(&m->param[p]);
        moe_tensor_free(&m->grad[p]);
    }
    float **bufs[] = {&m->e, &m->a0, &m->mask0, &m->h1, &m->a1, &m->mask1, &m->mo, &m->ms,
                      &m->a2, &m->mask2, &m->h2, &m->a3, &m->mask3, &m->da0, &m->da1,
                      &m->da2, &m->da3, &m->dtmp, &m->probs, &m->lstm_cache_buf[0],
                      &m->lstm_cache_buf[1], &m->lstm_work, &m->gate_f, &m->gate_work,
                      &m->dgates, &m->imp, &m->load, &m->dimp, &m->dload};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        moe_free_floats(bufs[i]);
    free(m->gate_i);
    moe_dispatch_free(&m->disp);
    for (int e = 0; e < 2; e++)
        for (int l = 0; l < 2; l++)
            for (int c = 0; c < 2; c++)
                moe_free_floats(&m->state[e][l][c]);
    free(m);
    *mp = NULL;
}

static struct lstm_params lstm_p(moe_tensor *t, int layer)
{
    const int o = layer == 0 ? MP_L1_W_IH : MP_L2_W_IH;
    struct lstm_params p = {t[o].data, t[o + 1].data, t[o + 2].data, t[o + 3].data};
    return p;
}

/* out = dropout(in) (+ res when residual) */
static void drop_res(model_t *m, float *out, float *mask, const float *in, const float *res,
                     int site, int N)
{
    const float p = m->train ? (float)m->cfg.dropout : 0.0f;
    dropout_forward(out, mask, in, p, m->cfg.seed, site, m->step, m->batch.row0, N, m->cfg.D);
    if (m->cfg.residual && res)
        residual_add(out, res, N * m->cfg.D);
}

int model_forward(model_t *m, const struct model_batch *b, int64_t step, bool train,
                  double *xent_sum, char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    if (b->B > c->B_max || b->T > c->T_max || b->B < 1 || b->T < 1) {
        if (err)
            snprintf(err, errlen, "batch %dx%d exceeds the model's buffers %dx%d", b->B, b->T,
                     c->B_max, c->T_max);
        return MOE_ERR_RANGE;
    }
    const int N = b->B * b->T, D = c->D;
    m->batch = *b;
    m->step = step;
    m->train = train;
    m->have_forward = false;

    embed_forward(m->e, b->tok, m->param[MP_EMBEDDING].data, N, D);
    drop_res(m, m->a0, m->mask0, m->e, NULL, DROP_EMB, N);

    for (int l = 0; l < 2; l++) {
        m->ld[l] = (struct lstm_dims){b->B, b->T, D, D};
        m->lc[l] = lstm_cache_view(m->lstm_cache_buf[l], &m->ld[l]);
    }
    struct lstm_params p1 = lstm_p(m->param, 0), p2 = lstm_p(m->param, 1);
    lstm_forward(m->h1, &m->lc[0], m->a0, &p1, model_state(m, !train, 0, false),
                 model_state(m, !train, 0, true), &m->ld[0]);
    drop_res(m, m->a1, m->mask1, m->h1, m->a0, DROP_LSTM1, N);

    /* MoE over all B*T rows at once */
    m->gd = (struct gate_dims){N, D, c->E, c->K, train, c->seed, step, b->row0};
    m->gc = gate_cache_view(m->gate_f, m->gate_i, &m->gd);
    memset(m->imp, 0, sizeof(float) * (size_t)c->E);
    memset(m->load, 0, sizeof(float) * (size_t)c->E);
    gate_forward(&m->gc, m->imp, m->load, m->a1, m->param[MP_W_GATE].data,
                 m->param[MP_W_NOISE].data, &m->gd);
    moe_dispatch_forward(&m->disp, N, m->gc.idx, m->gc.gates, m->a1);
    int rc = m->backend.forward(m->backend.ctx, step, train, m->disp.n_active, m->disp.ids,
                                m->disp.rows, m->disp.xe, m->disp.ye, err, errlen);
    if (rc)
        return rc;
    moe_combine_forward(m->mo, &m->disp, N, m->gc.gates);
    const float *moe_out = m->mo;
    if (c->moe_sigmoid) {
        sigmoid_forward(m->ms, m->mo, N * D);
        moe_out = m->ms;
    }
    drop_res(m, m->a2, m->mask2, moe_out, m->a1, DROP_MOE, N);

    lstm_forward(m->h2, &m->lc[1], m->a2, &p2, model_state(m, !train, 1, false),
                 model_state(m, !train, 1, true), &m->ld[1]);
    drop_res(m, m->a3, m->mask3, m->h2, m->a2, DROP_LSTM2, N);

    /* Training leaves the softmax's dlogits (scale 1 / global tokens) in
     * probs right away, in the same pass over the logits. */
    if (train)
        *xent_sum = softmax_xent_forward_grad(m->probs, m->a3, m->param[MP_SOFTMAX_W].data,
                                              m->param[MP_SOFTMAX_B].data, b->tgt,
                                              (float)(1.0 / (double)b->n_global), N, c->V, D);
    else
        *xent_sum = softmax_xent_forward(m->probs, m->a3, m->param[MP_SOFTMAX_W].data,
                                         m->param[MP_SOFTMAX_B].data, b->tgt, N, c->V, D);
    if (!train) {
        /* evaluation carries its own state forward right away */
        for (int l = 0; l < 2; l++)
            lstm_final_state(model_state(m, true, l, false), model_state(m, true, l, true),
                             l == 0 ? m->h1 : m->h2, &m->lc[l], &m->ld[l]);
    }
    m->have_forward = train;
    return 0;
}

int model_backward(model_t *m, const float *imp_global, const float *load_global,
                   double *balance_loss, char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    if (!m->have_forward) {
        if (err)
            snprintf(err, errlen, "model_backward without a training forward");
        return MOE_ERR_STATE;
    }
    const int N = m->batch.B * m->batch.T, D = c->D, ND = N * D;
    for (int p = 0; p < MP_COUNT; p++)
        memset(m->grad[p].data, 0, sizeof(float) * m->grad[p].numel);
    memset(m->da0, 0, sizeof(float) * (size_t)ND);
    memset(m->da1, 0, sizeof(float) * (size_t)ND);
    memset(m->da2, 0, sizeof(float) * (size_t)ND);
    memset(m->da3, 0, sizeof(float) * (size_t)ND);

    *balance_loss = gate_balance_loss(imp_global, load_global, c->E, c->w_importance, c->w_load,
                                      m->dimp, m->dload);

    softmax_xent_backward_dlogits(m->da3, m->grad[MP_SOFTMAX_W].data,
                                  m->grad[MP_SOFTMAX_B].data, m->probs, m->a3,
                                  m->param[MP_SOFTMAX_W].data, N, c->V, D);

    /* a3 = drop(h2) + a2 */
    struct lstm_params p1 = lstm_p(m->param, 0), p2 = lstm_p(m->param, 1);
    struct lstm_params g1 = lstm_p(m->grad, 0), g2 = lstm_p(m->grad, 1);
    memset(m->dtmp, 0, sizeof(float) * (size_t)ND);
    dropout_backward(m->dtmp, m->da3, m->mask3, ND);
    if (c->residual)
        residual_add(m->da2, m->da3, ND);
    lstm_backward(m->da2, &g2, m->lstm_work, m->dtmp, m->a2, m->h2, &m->lc[1], &p2, &m->ld[1]);

    /* a2 = drop(sigmoid?(moe(a1))) + a1 */
    memset(m->dtmp, 0, sizeof(float) * (size_t)ND);
    dropout_backward(m->dtmp, m->da2, m->mask2, ND);
    if (c->residual)
        residual_add(m->da1, m->da2, ND);
    float *dmo = m->dtmp;
    if (c->moe_sigmoid) {
        /* reuse da3 (no longer needed) for d(moe output) */
        memset(m->da3, 0, sizeof(float) * (size_t)ND);
        sigmoid_backward(m->da3, m->dtmp, m->ms, ND);
        dmo = m->da3;
    }
    moe_combine_backward(m->dgates, &m->disp, N, dmo, m->gc.gates);
    int rc = m->backend.backward(m->backend.ctx, m->step, m->disp.n_active, m->disp.ids,
                                 m->disp.rows, m->disp.dye, m->disp.dxe, err, errlen);
    if (rc)
        return rc;
    moe_dispatch_backward(m->da1, &m->disp, N);
    gate_backward(m->da1, m->grad[MP_W_GATE].data, m->grad[MP_W_NOISE].data, m->gate_work,
                  m->dgates, m->dimp, m->dload, m->a1, m->param[MP_W_GATE].data,
                  m->param[MP_W_NOISE].data, &m->gc, &m->gd);

    /* a1 = drop(h1) + a0 */
    memset(m->dtmp, 0, sizeof(float) * (size_t)ND);
    dropout_backward(m->dtmp, m->da1, m->mask1, ND);
    if (c->residual)
        residual_add(m->da0, m->da1, ND);
    lstm_backward(m->da0, &g1, m->lstm_work, m->dtmp, m->a0, m->h1, &m->lc[0], &p1, &m->ld[0]);

    /* a0 = drop(e) */
    memset(m->dtmp, 0, sizeof(float) * (size_t)ND);
    dropout_backward(m->dtmp, m->da0, m->mask0, ND);
    embed_backward(m->grad[MP_EMBEDDING].data, m->dtmp, m->batch.tok, N, D);
    return 0;
}

void model_carry_state(model_t *m)
{
    for (int l = 0; l < 2; l++)
        lstm_final_state(model_state(m, false, l, false), model_state(m, false, l, true),
                         l == 0 ? m->h1 : m->h2, &m->lc[l], &m->ld[l]);
}
