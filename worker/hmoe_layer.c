/* The hierarchical MoE layer (see hmoe_layer.h): the primary gate, its
 * dispatch over groups and its combine, Load_H and the balancing loss; the
 * groups themselves run behind the backend (hmoe_group.h). */
#include "hmoe_layer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "moe_err.h"
#include "moe_tensor.h"
#include "nn_ops.h"

#define TRUE_LOAD_EPS 1e-10

struct hmoe_layer {
    struct layer base;
    struct hmoe_layer_config cfg;
    struct moe_backend backend;
    /* parameters: the primary gate's w_gate, w_noise (D,A) */
    moe_tensor w[2], g[2];
    /* the primary gate (N rows, A groups) and its dispatch: d1.xe holds
     * each group's rows X^(i), packed; d1.ye the groups' outputs */
    float *pf, *pwork, *dgp_slot;
    int32_t *pi;
    struct gate_dims pd;
    struct gate_cache pc;
    struct moe_dispatch d1;
    int32_t *gids;        /* (A) 0 .. A-1 */
    uint32_t *grows;      /* (A) |X^(i)| */
    float *gp, *dgp;      /* (P) the primary gate of each packed row, its gradient */
    float *gstats, *dgstats; /* (A,3B) and (A,2B): what the groups return and get */
    /* statistics */
    float *imp, *load, *load_p, *load2, *dimp, *dload, *dload_p, *dload2, *zero, *scratch;
    float *fx;            /* (2A) Load_p, then |X^(i)| as floats: what workers sum */
    int *cnt;             /* (A) |X^(i)| */
    int *counts;          /* (A*B) rows routed to each expert */
    float *mo, *dsig;     /* sigmoid: its input, and the gradient through it */
};

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
    for (int i = 0; i < c->A; i++) {
        m->cnt[i] = m->d1.counts[i];
        m->grows[i] = (uint32_t)m->cnt[i];
    }
}

/* The batch of the groups, over the packed rows of the last forward. */
static struct moe_group_batch group_batch(const struct hmoe_layer *m, const struct layer_pass *p)
{
    const struct hmoe_layer_config *c = &m->cfg;
    return (struct moe_group_batch){
        .A = c->A, .B = c->B, .D = c->D, .ids = m->gids, .rows = m->grows, .row0 = p->row0,
        .row_index = (const uint32_t *)m->d1.src, .gp = m->gp, .x = m->d1.xe, .y = m->d1.ye,
        .stats = m->gstats, .dy = m->d1.dye, .dstats = m->dgstats, .dx = m->d1.dxe,
        .dgp = m->dgp};
}

static int hmoe_forward(struct layer *l, struct layer_pass *p, float *out, const float *in,
                        char *err, size_t errlen)
{
    struct hmoe_layer *m = (struct hmoe_layer *)l;
    const struct hmoe_layer_config *c = &m->cfg;
    const int N = p->B * p->T, A = c->A, B = c->B;
    if (!m->backend.group_forward) {
        snprintf(err, errlen, "a hierarchical MoE needs a backend that runs its groups");
        return MOE_ERR_STATE;
    }
    primary_forward(m, p, in);
    /* each group's secondary gate, experts and combine where it lives */
    const struct moe_group_batch gb = group_batch(m, p);
    int rc = m->backend.group_forward(m->backend.ctx, p->step, p->train, &gb, err, errlen);
    if (rc)
        return rc;
    for (int i = 0; i < A; i++) {
        const float *st = m->gstats + (size_t)i * 3 * B;
        for (int j = 0; j < B; j++) {
            const size_t e = (size_t)i * B + j;
            m->imp[e] = st[j];
            m->load2[e] = st[B + j];
            m->counts[e] = (int)st[2 * B + j];
        }
        m->fx[i] = m->load_p[i];
        m->fx[A + i] = (float)m->cnt[i];
    }
    load_h(m->load, m->load2, m->fx, A, B);
    /* the primary combine per row */
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
    /* what each group's secondary gate gets: d Importance_H, d Load_i */
    for (int i = 0; i < A; i++) {
        float *d = m->dgstats + (size_t)i * 2 * B;
        memcpy(d, m->dimp + (size_t)i * B, sizeof(float) * (size_t)B);
        memcpy(d + B, m->dload2 + (size_t)i * B, sizeof(float) * (size_t)B);
    }
    return loss;
}

static int hmoe_backward(struct layer *l, struct layer_pass *p, float *din, const float *dout,
                         const float *in, const float *out, char *err, size_t errlen)
{
    struct hmoe_layer *m = (struct hmoe_layer *)l;
    const struct hmoe_layer_config *c = &m->cfg;
    const int N = p->B * p->T, ND = N * c->D, K1 = c->K1;
    p->balance_loss = balance_backward(m, p);
    const float *dmo = dout;
    if (c->sigmoid) {
        memset(m->dsig, 0, sizeof(float) * (size_t)ND);
        sigmoid_backward(m->dsig, dout, out, ND);
        dmo = m->dsig;
    }
    /* primary combine: d G_p = dy . y_i; d1.dye = G_p dy, the groups'
     * output gradient; they return d1.dxe and, through Importance_H, the
     * rest of d G_p */
    moe_combine_backward(m->dgp_slot, &m->d1, N, dmo, m->pc.gates);
    const struct moe_group_batch gb = group_batch(m, p);
    int rc = m->backend.group_backward(m->backend.ctx, p->step, &gb, err, errlen);
    if (rc)
        return rc;
    for (int s = 0; s < N * K1; s++)
        if (m->d1.pos[s] >= 0)
            m->dgp_slot[s] += m->dgp[m->d1.pos[s]];
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
    for (int i = 0; i < 2; i++) {
        moe_tensor_free(&m->w[i]);
        moe_tensor_free(&m->g[i]);
    }
    float **bufs[] = {&m->pf, &m->pwork, &m->dgp_slot, &m->gp, &m->dgp, &m->gstats, &m->dgstats,
                      &m->imp, &m->load, &m->load_p, &m->load2, &m->dimp, &m->dload,
                      &m->dload_p, &m->dload2, &m->zero, &m->scratch, &m->fx, &m->mo, &m->dsig};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        moe_free_floats(bufs[i]);
    free(m->pi);
    free(m->gids);
    free(m->grows);
    free(m->cnt);
    free(m->counts);
    moe_dispatch_free(&m->d1);
    free(m);
}

static const struct layer_ops hmoe_ops = {
    .forward = hmoe_forward,
    .backward = hmoe_backward,
    .param = hmoe_param,
    .destroy = hmoe_destroy,
};

/* NAME.w_gate, NAME.w_noise (D,A); the groups' gates live with their
 * experts (hmoe_group.h). */
static int init_params(struct hmoe_layer *m, const char *name)
{
    const struct hmoe_layer_config *c = &m->cfg;
    static const char *const suffix[2] = {"w_gate", "w_noise"};
    for (int i = 0; i < 2; i++) {
        char pname[96];
        snprintf(pname, sizeof pname, "%s.%s", name, suffix[i]);
        if (moe_tensor_init2(&m->w[i], pname, c->D, c->A) ||
            moe_tensor_init2(&m->g[i], pname, c->D, c->A))
            return MOE_ERR_NOMEM;
    }
    return 0;
}

static int init_buffers(struct hmoe_layer *m)
{
    const struct hmoe_layer_config *c = &m->cfg;
    const size_t N = (size_t)c->N_max, A = (size_t)c->A, B = (size_t)c->B, E = A * B;
    const size_t P = N * (size_t)c->K1, D = (size_t)c->D;
    const struct gate_dims pd = {.N = c->N_max, .D = c->D, .E = c->A, .K = c->K1, .train = true};
    m->pf = moe_alloc_floats(gate_cache_floats(&pd));
    m->pi = calloc(gate_cache_ints(&pd), sizeof(int32_t));
    m->pwork = moe_alloc_floats(2 * N * A);
    m->dgp_slot = moe_alloc_floats(P);
    m->gids = calloc(A, sizeof(int32_t));
    m->grows = calloc(A, sizeof(uint32_t));
    m->cnt = calloc(A, sizeof(int));
    m->counts = calloc(E, sizeof(int));
    m->gp = moe_alloc_floats(P);
    m->dgp = moe_alloc_floats(P);
    m->gstats = moe_alloc_floats(3 * E);
    m->dgstats = moe_alloc_floats(2 * E);
    float **vecs[] = {&m->imp, &m->load, &m->load2, &m->dimp, &m->dload, &m->dload2};
    for (size_t i = 0; i < sizeof vecs / sizeof vecs[0]; i++)
        *vecs[i] = moe_alloc_floats(E);
    m->load_p = moe_alloc_floats(A);
    m->fx = moe_alloc_floats(2 * A);
    m->dload_p = moe_alloc_floats(A);
    m->zero = moe_alloc_floats(A);
    m->scratch = moe_alloc_floats(A);
    if (c->sigmoid && (!(m->mo = moe_alloc_floats(N * D)) || !(m->dsig = moe_alloc_floats(N * D))))
        return MOE_ERR_NOMEM;
    if (!m->pf || !m->pi || !m->pwork || !m->dgp_slot || !m->gids || !m->grows || !m->cnt ||
        !m->counts || !m->gp || !m->dgp || !m->gstats || !m->dgstats || !m->imp || !m->load ||
        !m->load2 || !m->dimp || !m->dload || !m->dload2 || !m->load_p || !m->fx ||
        !m->dload_p || !m->zero || !m->scratch)
        return MOE_ERR_NOMEM;
    for (size_t i = 0; i < A; i++)
        m->gids[i] = (int32_t)i;
    return moe_dispatch_init(&m->d1, c->N_max, c->K1, c->A, c->D) ? MOE_ERR_NOMEM : 0;
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
                             .n_params = 2};
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
HMOE_GET(const int *, hmoe_layer_counts, counts)
HMOE_GET(const float *, hmoe_layer_primary_load, load_p)
HMOE_GET(const int *, hmoe_layer_group_rows, cnt)
HMOE_GET(const float *, hmoe_layer_secondary_load, load2)
HMOE_GET(const float *, hmoe_layer_group_factors, fx)
