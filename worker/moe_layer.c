/* Dispatch and combine, and the MoE layer made of them and the gate (see
 * moe_layer.h). */
#include "moe_layer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "moe_err.h"
#include "moe_tensor.h"
#include "nn_ops.h"

int moe_dispatch_init(struct moe_dispatch *m, int N, int K, int E, int D)
{
    memset(m, 0, sizeof *m);
    m->N = N;
    m->K = K;
    m->E = E;
    m->D = D;
    size_t nk = (size_t)N * K;
    m->pos = malloc(sizeof(int32_t) * (nk ? nk : 1));
    m->src = malloc(sizeof(int32_t) * (nk ? nk : 1));
    m->counts = calloc((size_t)E, sizeof(int));
    m->ids = malloc(sizeof(int32_t) * (size_t)E);
    m->rows = malloc(sizeof(int) * (size_t)E);
    m->xe = moe_alloc_floats(nk * (size_t)D);
    m->ye = moe_alloc_floats(nk * (size_t)D);
    m->dye = moe_alloc_floats(nk * (size_t)D);
    m->dxe = moe_alloc_floats(nk * (size_t)D);
    if (!m->pos || !m->src || !m->counts || !m->ids || !m->rows || !m->xe || !m->ye || !m->dye ||
        !m->dxe) {
        moe_dispatch_free(m);
        return MOE_ERR_NOMEM;
    }
    return 0;
}

void moe_dispatch_free(struct moe_dispatch *m)
{
    free(m->pos);
    free(m->src);
    free(m->counts);
    free(m->ids);
    free(m->rows);
    moe_free_floats(&m->xe);
    moe_free_floats(&m->ye);
    moe_free_floats(&m->dye);
    moe_free_floats(&m->dxe);
    memset(m, 0, sizeof *m);
}

void moe_dispatch_forward(struct moe_dispatch *m, int n, const int32_t *idx, const float *gates,
                          const float *x)
{
    const int K = m->K, E = m->E, D = m->D;
    memset(m->counts, 0, sizeof(int) * (size_t)E);
    for (int r = 0; r < n * K; r++)
        if (gates[r] != 0.0f)
            m->counts[idx[r]]++;
    /* Offsets per expert; then rows ascending within each expert. */
    int off = 0;
    m->n_active = 0;
    for (int e = 0; e < E; e++) {
        int c = m->counts[e];
        if (c > 0) {
            m->ids[m->n_active] = e;
            m->rows[m->n_active] = c;
            m->n_active++;
        }
        m->counts[e] = off; /* reused as a fill cursor below */
        off += c;
    }
    m->total = off;
    for (int r = 0; r < n; r++) {
        for (int j = 0; j < K; j++) {
            const int s = r * K + j;
            if (gates[s] == 0.0f) {
                m->pos[s] = -1;
                continue;
            }
            int p = m->counts[idx[s]]++;
            m->pos[s] = p;
            m->src[p] = r;
        }
    }
    /* Restore counts to rows per expert. */
    for (int e = 0; e < E; e++)
        m->counts[e] = 0;
    for (int a = 0; a < m->n_active; a++)
        m->counts[m->ids[a]] = m->rows[a];
    for (int p = 0; p < m->total; p++)
        memcpy(m->xe + (size_t)p * D, x + (size_t)m->src[p] * D, sizeof(float) * (size_t)D);
}

void moe_combine_forward(float *y, const struct moe_dispatch *m, int n, const float *gates)
{
    const int K = m->K, D = m->D;
    memset(y, 0, sizeof(float) * (size_t)n * D);
    for (int r = 0; r < n; r++) {
        float *yr = y + (size_t)r * D;
        for (int j = 0; j < K; j++) {
            const int p = m->pos[r * K + j];
            if (p < 0)
                continue;
            const float g = gates[r * K + j];
            const float *ye = m->ye + (size_t)p * D;
            for (int d = 0; d < D; d++)
                yr[d] += g * ye[d];
        }
    }
}

void moe_combine_backward(float *dgates, struct moe_dispatch *m, int n, const float *dy,
                          const float *gates)
{
    const int K = m->K, D = m->D;
    for (int r = 0; r < n; r++) {
        const float *dyr = dy + (size_t)r * D;
        for (int j = 0; j < K; j++) {
            const int s = r * K + j, p = m->pos[s];
            if (p < 0) {
                dgates[s] = 0.0f;
                continue;
            }
            const float g = gates[s];
            const float *ye = m->ye + (size_t)p * D;
            float *dye = m->dye + (size_t)p * D;
            double dot = 0;
            for (int d = 0; d < D; d++) {
                dot += (double)dyr[d] * ye[d];
                dye[d] = g * dyr[d];
            }
            dgates[s] = (float)dot;
        }
    }
}

void moe_dispatch_backward(float *dx, const struct moe_dispatch *m, int n)
{
    const int K = m->K, D = m->D;
    for (int r = 0; r < n; r++) {
        float *dxr = dx + (size_t)r * D;
        for (int j = 0; j < K; j++) {
            const int p = m->pos[r * K + j];
            if (p < 0)
                continue;
            const float *src = m->dxe + (size_t)p * D;
            for (int d = 0; d < D; d++)
                dxr[d] += src[d];
        }
    }
}

/* ------------------------------------------------------------------------ */
/* The layer */

struct moe_layer {
    struct layer base;
    struct moe_layer_config cfg;
    struct moe_backend backend;
    moe_tensor w[2], g[2];        /* w_gate, w_noise */
    float *gate_f, *gate_work, *dgates;
    int32_t *gate_i;
    struct gate_dims gd;          /* of the last forward */
    struct gate_cache gc;
    struct moe_dispatch disp;
    float *imp, *load, *dimp, *dload;
    float *mo, *dsig;             /* sigmoid: its input, and the gradient through it */
};

static int moe_layer_forward(struct layer *l, struct layer_pass *p, float *out, const float *in,
                             char *err, size_t errlen)
{
    struct moe_layer *m = (struct moe_layer *)l;
    const struct moe_layer_config *c = &m->cfg;
    const int N = p->B * p->T;
    m->gd = (struct gate_dims){.N = N, .D = c->D, .E = c->E, .K = c->K, .train = p->train,
                               .seed = c->seed, .step = p->step, .row0 = p->row0};
    m->gc = gate_cache_view(m->gate_f, m->gate_i, &m->gd);
    memset(m->imp, 0, sizeof(float) * (size_t)c->E);
    memset(m->load, 0, sizeof(float) * (size_t)c->E);
    gate_forward(&m->gc, m->imp, m->load, in, m->w[0].data, m->w[1].data, &m->gd);
    moe_dispatch_forward(&m->disp, N, m->gc.idx, m->gc.gates, in);
    int rc = m->backend.forward(m->backend.ctx, p->step, p->train, m->disp.n_active, m->disp.ids,
                                m->disp.rows, m->disp.xe, m->disp.ye, err, errlen);
    if (rc)
        return rc;
    if (c->sigmoid) {
        moe_combine_forward(m->mo, &m->disp, N, m->gc.gates);
        sigmoid_forward(out, m->mo, N * c->D);
    } else {
        moe_combine_forward(out, &m->disp, N, m->gc.gates);
    }
    return 0;
}

static int moe_layer_backward(struct layer *l, struct layer_pass *p, float *din, const float *dout,
                              const float *in, const float *out, char *err, size_t errlen)
{
    struct moe_layer *m = (struct moe_layer *)l;
    const struct moe_layer_config *c = &m->cfg;
    const int N = p->B * p->T, ND = N * c->D;
    p->balance_loss = gate_balance_loss(p->imp_global, p->load_global, c->E, c->w_importance,
                                        c->w_load, m->dimp, m->dload);
    const float *dmo = dout;
    if (c->sigmoid) {
        memset(m->dsig, 0, sizeof(float) * (size_t)ND);
        sigmoid_backward(m->dsig, dout, out, ND);
        dmo = m->dsig;
    }
    moe_combine_backward(m->dgates, &m->disp, N, dmo, m->gc.gates);
    int rc = m->backend.backward(m->backend.ctx, p->step, m->disp.n_active, m->disp.ids,
                                 m->disp.rows, m->disp.dye, m->disp.dxe, err, errlen);
    if (rc)
        return rc;
    moe_dispatch_backward(din, &m->disp, N);
    gate_backward(din, m->g[0].data, m->g[1].data, m->gate_work, m->dgates, m->dimp, m->dload, in,
                  m->w[0].data, m->w[1].data, &m->gc, &m->gd);
    return 0;
}

static struct layer_param moe_layer_param(struct layer *l, int i)
{
    struct moe_layer *m = (struct moe_layer *)l;
    return (struct layer_param){m->w[i].name, &m->w[i], &m->g[i]};
}

static void moe_layer_destroy(struct layer *l)
{
    struct moe_layer *m = (struct moe_layer *)l;
    for (int i = 0; i < 2; i++) {
        moe_tensor_free(&m->w[i]);
        moe_tensor_free(&m->g[i]);
    }
    float **bufs[] = {&m->gate_f, &m->gate_work, &m->dgates, &m->imp, &m->load, &m->dimp,
                      &m->dload, &m->mo, &m->dsig};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        moe_free_floats(bufs[i]);
    free(m->gate_i);
    moe_dispatch_free(&m->disp);
    free(m);
}

static const struct layer_ops moe_layer_ops = {
    .forward = moe_layer_forward,
    .backward = moe_layer_backward,
    .param = moe_layer_param,
    .destroy = moe_layer_destroy,
};

struct layer *moe_layer_new(const char *name, const struct moe_layer_config *cfg,
                            const struct moe_backend *backend)
{
    struct moe_layer *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->base = (struct layer){.ops = &moe_layer_ops, .in_width = cfg->D, .out_width = cfg->D,
                             .n_params = 2};
    snprintf(m->base.name, sizeof m->base.name, "%s", name);
    m->cfg = *cfg;
    m->backend = *backend;
    const size_t N = (size_t)cfg->N_max, E = (size_t)cfg->E;
    int rc = 0;
    static const char *const suffix[2] = {"w_gate", "w_noise"};
    for (int i = 0; i < 2 && !rc; i++) {
        char pname[64];
        snprintf(pname, sizeof pname, "%s.%s", name, suffix[i]);
        rc = moe_tensor_init2(&m->w[i], pname, cfg->D, cfg->E) ||
             moe_tensor_init2(&m->g[i], pname, cfg->D, cfg->E);
    }
    const struct gate_dims gd = {.N = cfg->N_max, .D = cfg->D, .E = cfg->E, .K = cfg->K, .train = true};
    m->gate_f = moe_alloc_floats(gate_cache_floats(&gd));
    m->gate_i = calloc(gate_cache_ints(&gd), sizeof(int32_t));
    m->gate_work = moe_alloc_floats(2 * N * E);
    m->dgates = moe_alloc_floats(N * (size_t)cfg->K);
    m->imp = moe_alloc_floats(E);
    m->load = moe_alloc_floats(E);
    m->dimp = moe_alloc_floats(E);
    m->dload = moe_alloc_floats(E);
    if (cfg->sigmoid) {
        m->mo = moe_alloc_floats(N * (size_t)cfg->D);
        m->dsig = moe_alloc_floats(N * (size_t)cfg->D);
    }
    if (rc || !m->gate_f || !m->gate_i || !m->gate_work || !m->dgates || !m->imp || !m->load ||
        !m->dimp || !m->dload || (cfg->sigmoid && (!m->mo || !m->dsig)) ||
        moe_dispatch_init(&m->disp, cfg->N_max, cfg->K, cfg->E, cfg->D)) {
        moe_layer_destroy(&m->base);
        return NULL;
    }
    return &m->base;
}

void moe_layer_set_backend(struct layer *l, const struct moe_backend *backend)
{
    ((struct moe_layer *)l)->backend = *backend;
}

const float *moe_layer_importance(const struct layer *l) { return ((const struct moe_layer *)l)->imp; }
const float *moe_layer_load(const struct layer *l) { return ((const struct moe_layer *)l)->load; }
const int *moe_layer_counts(const struct layer *l) { return ((const struct moe_layer *)l)->disp.counts; }
