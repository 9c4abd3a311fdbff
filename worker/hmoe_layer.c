/* The hierarchical MoE layer (see hmoe_layer.h): the primary gate and its
 * dispatch over groups, the secondary gates on each group's packed rows,
 * the experts' dispatch over all A*B experts, and the two combines. */
#include "hmoe_layer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "moe_err.h"
#include "moe_rng.h"
#include "moe_tensor.h"
#include "nn_ops.h"

#define TRUE_LOAD_EPS 1e-10

struct hmoe_layer {
    struct layer base;
    struct hmoe_layer_config cfg;
    struct moe_backend backend;
    /* parameters: 0, 1 the primary gate; 2 + 2i, 3 + 2i group i's */
    moe_tensor *w, *g;
    /* the primary gate (N rows, A groups) and its dispatch: d1.xe holds
     * each group's rows X^(i), packed; d1.ye their secondary combine */
    float *pf, *pwork, *dgp_slot;
    int32_t *pi;
    struct gate_dims pd;
    struct gate_cache pc;
    struct moe_dispatch d1;
    /* the secondary gates on the P = d1.total packed rows, group after group */
    float *sf, *swork;
    int32_t *si;
    struct gate_dims *sd; /* (A) of the last forward */
    struct gate_cache *sc;
    int *off;             /* (A) first packed row of each group */
    int32_t *idx2;        /* (P, K) expert i*B + j of each slot */
    float *gates2, *dgates2;
    float *gp, *dgp;      /* (P) the primary gate of each packed row, its gradient */
    struct moe_dispatch d2; /* packed rows -> experts */
    /* statistics */
    float *imp, *load, *load_p, *load2, *dimp, *dload, *dload_p, *dload2, *zero, *scratch;
    float *fx;            /* (2A) Load_p, then |X^(i)| as floats: what workers sum */
    int *cnt;             /* (A) |X^(i)| */
    float *mo, *dsig;     /* sigmoid: its input, and the gradient through it */
};

static int n_params_of(const struct hmoe_layer_config *c) { return 2 + 2 * c->A; }

/* ------------------------------------------------------------------------ */
/* Forward */

/* Load_H[i,j] = Load_i,j Load_p,i / (|X^(i)| + 1e-10), from the secondary
 * loads load2 (A*B) and fx = Load_p | |X^(i)| (A each). */
static void load_h(float *load, const float *load2, const float *fx, int A, int B)
{
    for (int i = 0; i < A; i++)
        for (int j = 0; j < B; j++) {
            const size_t e = (size_t)i * B + j;
            load[e] = (float)((double)load2[e] * fx[i] / ((double)fx[A + i] + TRUE_LOAD_EPS));
        }
}

/* Group i's secondary gate on its packed rows; copies its slots into
 * idx2/gates2 (expert ids i*B + j) and adds to Importance_H. */
static void secondary_forward(struct hmoe_layer *m, const struct layer_pass *p, int i,
                              size_t *fo, size_t *io)
{
    const struct hmoe_layer_config *c = &m->cfg;
    const int n = m->d1.counts[i], o = m->off[i], B = c->B, K = c->K;
    m->sd[i] = (struct gate_dims){.N = n, .D = c->D, .E = B, .K = K, .train = p->train,
                                  .seed = c->seed, .step = p->step, .row0 = p->row0,
                                  .purpose = MOE_RNG_GATE_NOISE_GROUP,
                                  .col0 = (uint32_t)(i * B), .rows = m->d1.src + o};
    m->sc[i] = gate_cache_view(m->sf + *fo, m->si + *io, &m->sd[i]);
    *fo += gate_cache_floats(&m->sd[i]);
    *io += gate_cache_ints(&m->sd[i]);
    if (n == 0)
        return;
    gate_forward(&m->sc[i], m->scratch, m->load2 + (size_t)i * B, m->d1.xe + (size_t)o * c->D,
                 m->w[2 + 2 * i].data, m->w[3 + 2 * i].data, &m->sd[i]);
    for (int q = 0; q < n; q++) {
        const float gp = m->gp[o + q];
        for (int j = 0; j < K; j++) {
            const size_t s = (size_t)(o + q) * K + j;
            const int32_t e = i * B + m->sc[i].idx[(size_t)q * K + j];
            const float g = m->sc[i].gates[(size_t)q * K + j];
            m->idx2[s] = e;
            m->gates2[s] = g;
            m->imp[e] += gp * g;
        }
    }
}

/* The primary gate, its dispatch, and each packed row's primary gate. */
static void primary_forward(struct hmoe_layer *m, const struct layer_pass *p, const float *in)
{
    const struct hmoe_layer_config *c = &m->cfg;
    const int N = p->B * p->T, K1 = c->K1;
    m->pd = (struct gate_dims){.N = N, .D = c->D, .E = c->A, .K = K1, .train = p->train,
                               .seed = c->seed, .step = p->step, .row0 = p->row0};
    m->pc = gate_cache_view(m->pf, m->pi, &m->pd);
    memset(m->load_p, 0, sizeof(float) * (size_t)c->A);
    gate_forward(&m->pc, m->scratch, m->load_p, in, m->w[0].data, m->w[1].data, &m->pd);
    moe_dispatch_forward(&m->d1, N, m->pc.idx, m->pc.gates, in);
    for (int s = 0; s < N * K1; s++)
        if (m->d1.pos[s] >= 0)
            m->gp[m->d1.pos[s]] = m->pc.gates[s];
    int o = 0;
    for (int i = 0; i < c->A; i++) {
        m->off[i] = o;
        m->cnt[i] = m->d1.counts[i];
        o += m->cnt[i];
    }
}

static int hmoe_forward(struct layer *l, struct layer_pass *p, float *out, const float *in,
                        char *err, size_t errlen)
{
    struct hmoe_layer *m = (struct hmoe_layer *)l;
    const struct hmoe_layer_config *c = &m->cfg;
    const int N = p->B * p->T, E = c->A * c->B;
    memset(m->imp, 0, sizeof(float) * (size_t)E);
    memset(m->load2, 0, sizeof(float) * (size_t)E);
    primary_forward(m, p, in);
    size_t fo = 0, io = 0;
    for (int i = 0; i < c->A; i++)
        secondary_forward(m, p, i, &fo, &io);
    for (int i = 0; i < c->A; i++) {
        m->fx[i] = m->load_p[i];
        m->fx[c->A + i] = (float)m->cnt[i];
    }
    load_h(m->load, m->load2, m->fx, c->A, c->B);
    const int P = m->d1.total;
    moe_dispatch_forward(&m->d2, P, m->idx2, m->gates2, m->d1.xe);
    int rc = m->backend.forward(m->backend.ctx, p->step, p->train, m->d2.n_active, m->d2.ids,
                                m->d2.rows, m->d2.xe, m->d2.ye, err, errlen);
    if (rc)
        return rc;
    /* the secondary combine per packed row, then the primary one per row */
    moe_combine_forward(m->d1.ye, &m->d2, P, m->gates2);
    if (c->sigmoid) {
        moe_combine_forward(m->mo, &m->d1, N, m->pc.gates);
        sigmoid_forward(out, m->mo, N * c->D);
    } else {
        moe_combine_forward(out, &m->d1, N, m->pc.gates);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Backward */

/* d loss / d Importance_H and Load_H, and through Load_H's factors the
 * gradients of the secondary loads and of the primary Load_p. */
static double balance_backward(struct hmoe_layer *m, const struct layer_pass *p)
{
    const struct hmoe_layer_config *c = &m->cfg;
    const int A = c->A, B = c->B;
    /* the factors of the step's Load_H: summed over the workers, or this
     * layer's own; with the sums, Load_H itself (the layer's load now) */
    const float *load2 = m->load2, *fx = m->fx, *load_hg = p->load_global;
    if (p->groups_global) {
        load2 = p->load_global;
        fx = p->groups_global;
        load_h(m->load, load2, fx, A, B);
        load_hg = m->load;
    }
    const double loss = gate_balance_loss(p->imp_global, load_hg, A * B, c->w_importance,
                                          c->w_load, m->dimp, m->dload);
    for (int i = 0; i < A; i++) {
        const double inv = 1.0 / ((double)fx[A + i] + TRUE_LOAD_EPS);
        double dlp = 0;
        for (int j = 0; j < B; j++) {
            const size_t e = (size_t)i * B + j;
            dlp += (double)m->dload[e] * load2[e] * inv;
            m->dload2[e] = (float)((double)m->dload[e] * fx[i] * inv);
        }
        m->dload_p[i] = (float)dlp;
    }
    return loss;
}

/* Importance_H = sum G_p G_i: its gradient onto each secondary slot
 * (G_p dImp) and onto each packed row's primary gate (sum_j G_i,j dImp). */
static void importance_backward(struct hmoe_layer *m)
{
    const int P = m->d1.total, K = m->cfg.K;
    for (int q = 0; q < P; q++) {
        double d = 0;
        for (int j = 0; j < K; j++) {
            const size_t s = (size_t)q * K + j;
            const float di = m->dimp[m->idx2[s]];
            m->dgates2[s] += m->gp[q] * di;
            d += (double)m->gates2[s] * di;
        }
        m->dgp[q] = (float)d;
    }
}

static int hmoe_backward(struct layer *l, struct layer_pass *p, float *din, const float *dout,
                         const float *in, const float *out, char *err, size_t errlen)
{
    struct hmoe_layer *m = (struct hmoe_layer *)l;
    const struct hmoe_layer_config *c = &m->cfg;
    const int N = p->B * p->T, ND = N * c->D, P = m->d1.total, K1 = c->K1;
    p->balance_loss = balance_backward(m, p);
    const float *dmo = dout;
    if (c->sigmoid) {
        memset(m->dsig, 0, sizeof(float) * (size_t)ND);
        sigmoid_backward(m->dsig, dout, out, ND);
        dmo = m->dsig;
    }
    /* primary combine: d G_p = dy . y_i; d1.dye = G_p dy; then the
     * secondary combine: d G_i = G_p dy . E_ij; d2.dye = G_i G_p dy */
    moe_combine_backward(m->dgp_slot, &m->d1, N, dmo, m->pc.gates);
    moe_combine_backward(m->dgates2, &m->d2, P, m->d1.dye, m->gates2);
    int rc = m->backend.backward(m->backend.ctx, p->step, m->d2.n_active, m->d2.ids,
                                 m->d2.rows, m->d2.dye, m->d2.dxe, err, errlen);
    if (rc)
        return rc;
    importance_backward(m);
    for (int s = 0; s < N * K1; s++)
        if (m->d1.pos[s] >= 0)
            m->dgp_slot[s] += m->dgp[m->d1.pos[s]];
    memset(m->d1.dxe, 0, sizeof(float) * (size_t)P * c->D);
    moe_dispatch_backward(m->d1.dxe, &m->d2, P);
    for (int i = 0; i < c->A; i++) {
        const size_t o = (size_t)m->off[i];
        if (m->cnt[i] == 0)
            continue;
        gate_backward(m->d1.dxe + o * c->D, m->g[2 + 2 * i].data, m->g[3 + 2 * i].data, m->swork,
                      m->dgates2 + o * c->K, m->zero, m->dload2 + (size_t)i * c->B,
                      m->d1.xe + o * c->D, m->w[2 + 2 * i].data, m->w[3 + 2 * i].data, &m->sc[i],
                      &m->sd[i]);
    }
    moe_dispatch_backward(din, &m->d1, N);
    gate_backward(din, m->g[0].data, m->g[1].data, m->pwork, m->dgp_slot, m->zero, m->dload_p, in,
                  m->w[0].data, m->w[1].data, &m->pc, &m->pd);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Life cycle */

static struct layer_param hmoe_param(struct layer *l, int i)
{
    struct hmoe_layer *m = (struct hmoe_layer *)l;
    return (struct layer_param){m->w[i].name, &m->w[i], &m->g[i]};
}

static void hmoe_destroy(struct layer *l)
{
    struct hmoe_layer *m = (struct hmoe_layer *)l;
    for (int i = 0; m->w && m->g && i < n_params_of(&m->cfg); i++) {
        moe_tensor_free(&m->w[i]);
        moe_tensor_free(&m->g[i]);
    }
    free(m->w);
    free(m->g);
    float **bufs[] = {&m->pf, &m->pwork, &m->dgp_slot, &m->sf, &m->swork, &m->gates2,
                      &m->dgates2, &m->gp, &m->dgp, &m->imp, &m->load, &m->load_p, &m->load2,
                      &m->dimp, &m->dload, &m->dload_p, &m->dload2, &m->zero, &m->scratch, &m->fx,
                      &m->mo, &m->dsig};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        moe_free_floats(bufs[i]);
    free(m->pi);
    free(m->si);
    free(m->sd);
    free(m->sc);
    free(m->off);
    free(m->idx2);
    free(m->cnt);
    moe_dispatch_free(&m->d1);
    moe_dispatch_free(&m->d2);
    free(m);
}

static const struct layer_ops hmoe_ops = {
    .forward = hmoe_forward,
    .backward = hmoe_backward,
    .param = hmoe_param,
    .destroy = hmoe_destroy,
};

/* NAME.w_gate, NAME.w_noise (D,A); NAME.groups.I.w_gate, ... (D,B). */
static int init_params(struct hmoe_layer *m, const char *name)
{
    const struct hmoe_layer_config *c = &m->cfg;
    const int n = n_params_of(c);
    m->w = calloc((size_t)n, sizeof *m->w);
    m->g = calloc((size_t)n, sizeof *m->g);
    if (!m->w || !m->g)
        return MOE_ERR_NOMEM;
    static const char *const suffix[2] = {"w_gate", "w_noise"};
    for (int i = 0; i < n; i++) {
        char pname[96];
        if (i < 2)
            snprintf(pname, sizeof pname, "%s.%s", name, suffix[i]);
        else
            snprintf(pname, sizeof pname, "%s.groups.%d.%s", name, (i - 2) / 2, suffix[i % 2]);
        const int cols = i < 2 ? c->A : c->B;
        if (moe_tensor_init2(&m->w[i], pname, c->D, cols) ||
            moe_tensor_init2(&m->g[i], pname, c->D, cols))
            return MOE_ERR_NOMEM;
    }
    return 0;
}

static int init_buffers(struct hmoe_layer *m)
{
    const struct hmoe_layer_config *c = &m->cfg;
    const size_t N = (size_t)c->N_max, A = (size_t)c->A, B = (size_t)c->B, E = A * B;
    const size_t P = N * (size_t)c->K1, PK = P * (size_t)c->K, D = (size_t)c->D;
    const struct gate_dims pd = {.N = c->N_max, .D = c->D, .E = c->A, .K = c->K1, .train = true};
    const struct gate_dims sd = {.N = (int)P, .D = c->D, .E = c->B, .K = c->K, .train = true};
    m->pf = moe_alloc_floats(gate_cache_floats(&pd));
    m->pi = calloc(gate_cache_ints(&pd), sizeof(int32_t));
    m->pwork = moe_alloc_floats(2 * N * A);
    m->dgp_slot = moe_alloc_floats(P);
    m->sf = moe_alloc_floats(gate_cache_floats(&sd));
    m->si = calloc(gate_cache_ints(&sd), sizeof(int32_t));
    m->swork = moe_alloc_floats(2 * P * B);
    m->sd = calloc(A, sizeof *m->sd);
    m->sc = calloc(A, sizeof *m->sc);
    m->off = calloc(A, sizeof(int));
    m->cnt = calloc(A, sizeof(int));
    m->idx2 = calloc(PK ? PK : 1, sizeof(int32_t));
    m->gates2 = moe_alloc_floats(PK);
    m->dgates2 = moe_alloc_floats(PK);
    m->gp = moe_alloc_floats(P);
    m->dgp = moe_alloc_floats(P);
    float **vecs[] = {&m->imp, &m->load, &m->load2, &m->dimp, &m->dload, &m->dload2};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++)
        *vecs[i] = moe_alloc_floats(E);
    m->load_p = moe_alloc_floats(A);
    m->fx = moe_alloc_floats(2 * A);
    m->dload_p = moe_alloc_floats(A);
    m->zero = moe_alloc_floats(A > B ? A : B);
    m->scratch = moe_alloc_floats(A > B ? A : B);
    if (c->sigmoid && (!(m->mo = moe_alloc_floats(N * D)) || !(m->dsig = moe_alloc_floats(N * D))))
        return MOE_ERR_NOMEM;
    if (!m->pf || !m->pi || !m->pwork || !m->dgp_slot || !m->sf || !m->si || !m->swork ||
        !m->sd || !m->sc || !m->off || !m->cnt || !m->idx2 || !m->gates2 || !m->dgates2 ||
        !m->gp || !m->dgp || !m->imp || !m->load || !m->load2 || !m->dimp || !m->dload ||
        !m->dload2 || !m->load_p || !m->fx || !m->dload_p || !m->zero || !m->scratch)
        return MOE_ERR_NOMEM;
    if (moe_dispatch_init(&m->d1, c->N_max, c->K1, c->A, c->D) ||
        moe_dispatch_init(&m->d2, (int)P, c->K, (int)E, c->D))
        return MOE_ERR_NOMEM;
    return 0;
}

struct layer *hmoe_layer_new(const char *name, const struct hmoe_layer_config *cfg,
                             const struct moe_backend *backend)
{
    if (cfg->A < 1 || cfg->B < 1 || cfg->K1 < 1 || cfg->K1 > cfg->A || cfg->K < 1 ||
        cfg->K > cfg->B || cfg->N_max < 1 || (int64_t)cfg->N_max * cfg->K1 * cfg->K > INT32_MAX)
        return NULL;
    struct hmoe_layer *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->cfg = *cfg;
    m->backend = *backend;
    m->base = (struct layer){.ops = &hmoe_ops, .in_width = cfg->D, .out_width = cfg->D,
                             .n_params = n_params_of(cfg)};
    snprintf(m->base.name, sizeof m->base.name, "%s", name);
    if (init_params(m, name) || init_buffers(m)) {
        hmoe_destroy(&m->base);
        return NULL;
    }
    return &m->base;
}

void hmoe_layer_set_backend(struct layer *l, const struct moe_backend *backend)
{
    ((struct hmoe_layer *)l)->backend = *backend;
}

#define HMOE_GET(type, fn, field) \
    type fn(const struct layer *l) { return ((const struct hmoe_layer *)l)->field; }
HMOE_GET(const float *, hmoe_layer_importance, imp)
HMOE_GET(const float *, hmoe_layer_load, load)
HMOE_GET(const int *, hmoe_layer_counts, d2.counts)
HMOE_GET(const float *, hmoe_layer_primary_load, load_p)
HMOE_GET(const int *, hmoe_layer_group_rows, cnt)
HMOE_GET(const float *, hmoe_layer_secondary_load, load2)
HMOE_GET(const float *, hmoe_layer_group_factors, fx)
