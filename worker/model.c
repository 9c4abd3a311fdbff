/* The language model assembled from layers (see model.h). */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "hmoe_layer.h"
#include "lstm.h"
#include "moe_err.h"
#include "nn_ops.h"
#include "softmax_xent.h"

/* A block: a layer whose output h gets dropout (mask, at its own site of
 * the RNG) and, with `residual`, the block's input added: a = drop(h) + in.
 * da is the gradient of a. */
struct block {
    struct layer *layer;
    int site;
    bool residual;
    float *h, *a, *mask, *da;
};

#define MODEL_MAX_BLOCKS 8

struct model {
    struct model_config cfg;
    struct block blocks[MODEL_MAX_BLOCKS];
    int n_blocks;
    struct layer *head;      /* the output layer (softmax and cross-entropy) */
    struct layer *moe;       /* the MoE layer (statistics, backend) */
    float *dtmp;             /* (Nmax, D) gradient through a block's dropout */
    struct layer_pass pass;  /* of the last forward */
    bool have_forward;
};

/* ------------------------------------------------------------------------ */
/* The assembly: the paper's language model (Appendix C) */

/* Dropout sites: each block's masks are drawn from its own RNG stream. */
enum { DROP_EMB, DROP_LSTM1, DROP_MOE, DROP_LSTM2 };

static int add_block(model_t *m, struct layer *l, int site, bool residual)
{
    if (!l || m->n_blocks == MODEL_MAX_BLOCKS)
        return MOE_ERR_NOMEM;
    const size_t N = (size_t)m->cfg.B_max * m->cfg.T_max, D = (size_t)l->out_width;
    struct block *b = &m->blocks[m->n_blocks++];
    *b = (struct block){.layer = l, .site = site, .residual = residual};
    b->h = moe_alloc_floats(N * D);
    b->a = moe_alloc_floats(N * D);
    b->mask = moe_alloc_floats(N * D);
    b->da = moe_alloc_floats(N * D);
    return b->h && b->a && b->mask && b->da ? 0 : MOE_ERR_NOMEM;
}

/* Embedding -> LSTM -> MoE -> LSTM, each block with dropout and (but the
 * embedding) a residual add; then the softmax. */
static int assemble_language_model(model_t *m, const struct moe_backend *backend)
{
    const struct model_config *c = &m->cfg;
    const int N = c->B_max * c->T_max;
    const struct moe_layer_config mc = {.D = c->D, .E = c->E, .K = c->K, .sigmoid = c->moe_sigmoid,
                                        .w_importance = c->w_importance, .w_load = c->w_load,
                                        .seed = c->seed, .N_max = N};
    int rc = add_block(m, embed_layer_new("embedding", c->V, c->D, c->seed), DROP_EMB, false);
    if (!rc)
        rc = add_block(m, lstm_layer_new("lstm1", c->D, c->B_max, c->T_max, c->seed,
                                          c->recompute_lstm), DROP_LSTM1,
                       c->residual);
    if (!rc) {
        const struct hmoe_layer_config hc = {.D = c->D, .A = c->A, .B = c->B, .K1 = c->K1,
                                             .K = c->K, .sigmoid = c->moe_sigmoid,
                                             .w_importance = c->w_importance,
                                             .w_load = c->w_load, .seed = c->seed, .N_max = N};
        m->moe = c->hierarchical ? hmoe_layer_new("moe", &hc, backend)
                                 : moe_layer_new("moe", &mc, backend);
        rc = add_block(m, m->moe, DROP_MOE, c->residual);
    }
    if (!rc)
        rc = add_block(m, lstm_layer_new("lstm2", c->D, c->B_max, c->T_max, c->seed,
                                          c->recompute_lstm), DROP_LSTM2,
                       c->residual);
    if (!rc && !(m->head = softmax_layer_new("softmax", c->V, c->D, N, c->seed)))
        rc = MOE_ERR_NOMEM;
    return rc;
}

double model_dense_params(const struct model_config *c)
{
    const double D = c->D, V = c->V, E = c->E;
    /* embedding, 2 LSTMs (weights and biases), the gate's two matrices
     * (hierarchical: the primary's and each group's), the softmax */
    const double gates = c->hierarchical ? 2 * D * ((double)c->A + E) : 2 * D * E;
    return V * D + 2 * (2 * 4 * D * D + 2 * 4 * D) + gates + V * D + V;
}

double model_bytes(const struct model_config *cfg)
{
    /* The allocations of model_new, in doubles so that no size overflows. */
    const double N = (double)cfg->B_max * cfg->T_max, D = cfg->D, V = cfg->V, E = cfg->E,
                 K = cfg->K;
    /* 2 caches (lstm_cache_floats, or the initial state and final cells
     * when recomputed) and their work */
    const double lstm = (cfg->recompute_lstm ? 2 * 3 * (double)cfg->B_max * D : 2 * 5 * N * D) +
                        8 * N * D;
    double gate = 8 * N * E + 3 * N * (K + 1);        /* cache, ints, work */
    double disp = 2 * N * K * D;                        /* dispatch and combine */
    if (cfg->hierarchical) {
        /* the primary gate on N rows, the secondary gates on N*K1 rows,
         * the dispatch over groups and that over experts */
        const double A = cfg->A, B = cfg->B, P = N * cfg->K1;
        gate = 8 * N * A + 3 * N * (cfg->K1 + 1) + 8 * P * B + 6 * P * (K + 1) + 8 * E;
        disp = 4 * P * D + 4 * P * K * D;
    }
    double floats = 2 * model_dense_params(cfg) + 18 * N * D + N * V + lstm + gate + disp +
                    8 * (double)cfg->B_max * D;
    return 4 * floats;
}

/* ------------------------------------------------------------------------ */
/* Life cycle and the parameter and state lists */

model_t *model_new(const struct model_config *cfg, const struct moe_backend *backend)
{
    if (cfg->hierarchical && (cfg->A < 1 || cfg->B < 1 || (int64_t)cfg->A * cfg->B != cfg->E ||
                              cfg->K1 < 1 || cfg->K1 > cfg->A || cfg->K > cfg->B))
        return NULL;
    if (cfg->V < 2 || cfg->D < 1 || cfg->H < 1 || cfg->E < 1 || cfg->K < 1 || cfg->K > cfg->E ||
        cfg->B_max < 1 || cfg->T_max < 1 || cfg->dropout < 0 || cfg->dropout >= 1)
        return NULL;
    model_t *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->cfg = *cfg;
    m->dtmp = moe_alloc_floats((size_t)cfg->B_max * cfg->T_max * (size_t)cfg->D);
    if (!m->dtmp || assemble_language_model(m, backend) || model_n_params(m) > MODEL_MAX_PARAMS) {
        model_destroy(&m);
        return NULL;
    }
    return m;
}

void model_set_backend(model_t *m, const struct moe_backend *backend)
{
    if (m->cfg.hierarchical)
        hmoe_layer_set_backend(m->moe, backend);
    else
        moe_layer_set_backend(m->moe, backend);
}

void model_destroy(model_t **mp)
{
    if (!mp || !*mp)
        return;
    model_t *m = *mp;
    for (int i = 0; i < m->n_blocks; i++) {
        struct block *b = &m->blocks[i];
        if (b->layer)
            b->layer->ops->destroy(b->layer);
        moe_free_floats(&b->h);
        moe_free_floats(&b->a);
        moe_free_floats(&b->mask);
        moe_free_floats(&b->da);
    }
    if (m->head)
        m->head->ops->destroy(m->head);
    moe_free_floats(&m->dtmp);
    free(m);
    *mp = NULL;
}

const struct model_config *model_config_of(const model_t *m) { return &m->cfg; }
const float *model_local_importance(const model_t *m)
{
    return m->cfg.hierarchical ? hmoe_layer_importance(m->moe) : moe_layer_importance(m->moe);
}
const float *model_local_load(const model_t *m)
{
    return m->cfg.hierarchical ? hmoe_layer_load(m->moe) : moe_layer_load(m->moe);
}
const float *model_local_load_summed(const model_t *m)
{
    return m->cfg.hierarchical ? hmoe_layer_secondary_load(m->moe) : moe_layer_load(m->moe);
}
int model_group_factor_count(const model_t *m) { return m->cfg.hierarchical ? 2 * m->cfg.A : 0; }
const float *model_local_group_factors(const model_t *m)
{
    return m->cfg.hierarchical ? hmoe_layer_group_factors(m->moe) : NULL;
}
const int *model_local_counts(const model_t *m)
{
    return m->cfg.hierarchical ? hmoe_layer_counts(m->moe) : moe_layer_counts(m->moe);
}

/* Layer j of the model in order: the blocks, then the head. */
static struct layer *layer_at(const model_t *m, int j)
{
    return j < m->n_blocks ? m->blocks[j].layer : m->head;
}

int model_n_params(const model_t *m)
{
    int n = 0;
    for (int j = 0; j <= m->n_blocks; j++)
        n += layer_at(m, j)->n_params;
    return n;
}

struct layer_param model_param_at(model_t *m, int i)
{
    for (int j = 0; j <= m->n_blocks; j++) {
        struct layer *l = layer_at(m, j);
        if (i < l->n_params)
            return l->ops->param(l, i);
        i -= l->n_params;
    }
    return (struct layer_param){0};
}

struct layer_param model_param_named(model_t *m, const char *name)
{
    for (int i = 0; i < model_n_params(m); i++) {
        struct layer_param p = model_param_at(m, i);
        if (strcmp(p.name, name) == 0)
            return p;
    }
    return (struct layer_param){0};
}

int model_n_states(const model_t *m)
{
    int n = 0;
    for (int j = 0; j <= m->n_blocks; j++)
        n += layer_at(m, j)->n_states;
    return n;
}

struct layer_state model_state_at(model_t *m, bool eval, int i)
{
    for (int j = 0; j <= m->n_blocks; j++) {
        struct layer *l = layer_at(m, j);
        if (i < l->n_states)
            return l->ops->state(l, eval, i);
        i -= l->n_states;
    }
    return (struct layer_state){0};
}

void model_reset_state(model_t *m, bool eval)
{
    for (int j = 0; j <= m->n_blocks; j++)
        layer_reset_state(layer_at(m, j), eval);
}

/* ------------------------------------------------------------------------ */
/* Forward and backward over the blocks */

int model_forward(model_t *m, const struct model_batch *b, int64_t step, bool train,
                  double *xent_sum, char *err, size_t errlen)
{
    const struct model_config *c = &m->cfg;
    if (b->B > c->B_max || b->T > c->T_max || b->B < 1 || b->T < 1)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen,
                            "batch %dx%d exceeds the model's buffers %dx%d", b->B, b->T, c->B_max,
                            c->T_max);
    const int N = b->B * b->T;
    m->pass = (struct layer_pass){.B = b->B, .T = b->T, .tok = b->tok, .tgt = b->tgt,
                                  .row0 = b->row0, .n_global = b->n_global, .step = step,
                                  .train = train};
    m->have_forward = false;
    const float p = train ? (float)c->dropout : 0.0f;
    const float *in = NULL;
    for (int i = 0; i < m->n_blocks; i++) {
        struct block *k = &m->blocks[i];
        const int D = k->layer->out_width;
        int rc = k->layer->ops->forward(k->layer, &m->pass, k->h, in, err, errlen);
        if (rc)
            return rc;
        dropout_forward(k->a, k->mask, k->h, p, c->seed, k->site, step, b->row0, N, D);
        if (k->residual && in)
            residual_add(k->a, in, N * D);
        in = k->a;
    }
    int rc = m->head->ops->forward(m->head, &m->pass, NULL, in, err, errlen);
    if (rc)
        return rc;
    *xent_sum = m->pass.xent_sum;
    m->have_forward = train;
    return 0;
}

int model_backward(model_t *m, const float *imp_global, const float *load_global,
                   double *balance_loss, char *err, size_t errlen)
{
    return model_backward_groups(m, imp_global, load_global, NULL, balance_loss, err, errlen);
}

int model_backward_groups(model_t *m, const float *imp_global, const float *load_global,
                          const float *groups_global, double *balance_loss, char *err,
                          size_t errlen)
{
    if (!m->have_forward)
        return moe_err_fail(MOE_ERR_STATE, err, errlen, "model_backward without a training forward");
    const int N = m->pass.B * m->pass.T, last = m->n_blocks - 1;
    for (int i = 0; i < model_n_params(m); i++) {
        const struct layer_param p = model_param_at(m, i);
        memset(p.g->data, 0, sizeof(float) * p.g->numel);
    }
    for (int i = 0; i < m->n_blocks; i++)
        memset(m->blocks[i].da, 0, sizeof(float) * (size_t)N * m->blocks[i].layer->out_width);
    m->pass.imp_global = imp_global;
    m->pass.load_global = load_global;
    m->pass.groups_global = groups_global;
    m->pass.balance_loss = 0;

    int rc = m->head->ops->backward(m->head, &m->pass, m->blocks[last].da, NULL,
                                    m->blocks[last].a, NULL, err, errlen);
    /* a_i = drop(h_i) + a_{i-1}: the residual's gradient first, then the
     * layer's, into da_{i-1} (the order of these sums is the model's) */
    for (int i = last; i >= 0 && !rc; i--) {
        struct block *k = &m->blocks[i], *prev = i > 0 ? &m->blocks[i - 1] : NULL;
        const int ND = N * k->layer->out_width;
        memset(m->dtmp, 0, sizeof(float) * (size_t)ND);
        dropout_backward(m->dtmp, k->da, k->mask, ND);
        if (k->residual && prev)
            residual_add(prev->da, k->da, ND);
        rc = k->layer->ops->backward(k->layer, &m->pass, prev ? prev->da : NULL, m->dtmp,
                                     prev ? prev->a : NULL, k->h, err, errlen);
    }
    *balance_loss = m->pass.balance_loss;
    return rc;
}

void model_carry_state(model_t *m)
{
    for (int j = 0; j <= m->n_blocks; j++) {
        struct layer *l = layer_at(m, j);
        if (l->ops->carry)
            l->ops->carry(l);
    }
}

const float *model_probs(const model_t *m)
{
    return softmax_layer_probs(m->head);
}

struct model_config model_config_from_options(const struct moe_options *c, int V, int B_max,
                                              int T_max)
{
    return (struct model_config){
        .V = V,
        .D = c->d_model,
        .H = c->d_hidden,
        .E = c->n_experts,
        .K = c->k,
        .hierarchical = moe_options_hierarchical(c),
        .A = c->groups,
        .B = c->experts_per_group,
        .K1 = c->k_primary,
        .residual = c->residual,
        .moe_sigmoid = c->moe_sigmoid,
        .dropout = c->dropout,
        .w_importance = c->w_importance,
        .w_load = c->w_load,
        .seed = (uint64_t)c->seed,
        .B_max = B_max,
        .T_max = T_max,
    };
}

expert_shard_t *model_experts_from_options(const struct moe_options *c, int n, bool keep_grads)
{
    return model_experts_range(c, 0, n, keep_grads);
}

expert_shard_t *model_experts_range(const struct moe_options *c, int32_t first, int n,
                                    bool keep_grads)
{
    const struct moe_fadam_opts fo = {c->expert_beta2, c->expert_decay_pow, c->expert_eps, 1e-30,
                                      c->expert_clip, c->expert_relative_step, 1e-3};
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (!ids)
        return NULL;
    for (int e = 0; e < n; e++)
        ids[e] = first + e;
    expert_shard_t *s = expert_shard_new_ex(c->d_model, c->d_hidden, n, ids, (uint64_t)c->seed,
                                            &fo, keep_grads);
    free(ids);
    return s;
}
