/* Additive attention of the translation decoder (see attention.h). */
#include "attention.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_blas.h"
#include "moe_par.h"
#include "moe_rng.h"
#include "moe_tensor.h"
#include "moe_vmath.h"

/* tanh through the project's exp (1 - 2 / (e^2x + 1)): saturates to +-1,
 * vectorises, and its bits do not depend on libm. */
static inline float att_tanh(float x) { return 1.0f - 2.0f / (moe_vexpf(2.0f * x) + 1.0f); }

size_t attention_cache_floats(const struct attention_dims *d)
{
    const size_t NT = (size_t)d->B * d->T, NS = (size_t)d->B * d->S;
    return NT * d->A + NS * d->A + NT * d->S;
}

struct attention_cache attention_cache_view(float *buf, const struct attention_dims *d)
{
    const size_t NT = (size_t)d->B * d->T, NS = (size_t)d->B * d->S;
    struct attention_cache c = {.qp = buf, .kp = buf + NT * d->A};
    c.alpha = c.kp + NS * d->A;
    return c;
}

size_t attention_work_floats(const struct attention_dims *d)
{
    /* dqp (B*T, A), dkp (B*S, A), per sequence dv (B, A) and dalpha (B, S) */
    return (size_t)d->B * d->T * d->A + (size_t)d->B * d->S * d->A + (size_t)d->B * d->A +
           (size_t)d->B * d->S;
}

/* ------------------------------------------------------------------------ */
/* Forward: one moe_par task per sequence */

struct att_job {
    const struct attention_dims *d;
    const struct attention_params *p, *dp;
    const struct attention_cache *c;
    const float *q, *mem, *dctx;
    float *ctx, *dmem, *dqp, *dkp, *dv, *dal;
    const int *src_len, *tgt_len;
};

/* e_{r,s} for s < S_b into e. */
static void att_scores(float *e, const float *qr, const float *kp, int Sb, int A, const float *v)
{
    for (int s = 0; s < Sb; s++) {
        const float *ks = kp + (size_t)s * A;
        float sum = 0;
        for (int a = 0; a < A; a++)
            sum += v[a] * att_tanh(qr[a] + ks[a]);
        e[s] = sum;
    }
}

static void att_forward_task(void *vj, int b)
{
    const struct att_job *j = vj;
    const struct attention_dims *d = j->d;
    const int S = d->S, A = d->A, D = d->D, Sb = j->src_len[b], Tb = j->tgt_len[b];
    const float *kp = j->c->kp + (size_t)b * S * A, *mem = j->mem + (size_t)b * S * D;
    for (int t = 0; t < d->T; t++) {
        const size_t r = (size_t)b * d->T + t;
        float *al = j->c->alpha + r * S, *ctx = j->ctx + r * D;
        memset(al, 0, sizeof(float) * (size_t)S);
        memset(ctx, 0, sizeof(float) * (size_t)D);
        if (t >= Tb)
            continue;
        att_scores(al, j->c->qp + r * A, kp, Sb, A, j->p->v);
        float mx = al[0], sum = 0;
        for (int s = 1; s < Sb; s++)
            mx = al[s] > mx ? al[s] : mx;
        for (int s = 0; s < Sb; s++) {
            al[s] = moe_vexpf(al[s] - mx);
            sum += al[s];
        }
        const float inv = 1.0f / sum;
        for (int s = 0; s < Sb; s++) {
            al[s] *= inv;
            const float *ms = mem + (size_t)s * D;
            for (int k = 0; k < D; k++)
                ctx[k] += al[s] * ms[k];
        }
    }
}

void attention_forward(float *ctx, struct attention_cache *c, const float *q, const float *mem,
                       const int *src_len, const int *tgt_len, const struct attention_params *p,
                       const struct attention_dims *d)
{
    const int NT = d->B * d->T, NS = d->B * d->S;
    for (int r = 0; r < NT; r++)
        memcpy(c->qp + (size_t)r * d->A, p->b, sizeof(float) * (size_t)d->A);
    moe_sgemm(false, true, NT, d->A, d->D, 1.0f, q, d->D, p->w_q, d->D, 1.0f, c->qp, d->A);
    moe_sgemm(false, true, NS, d->A, d->D, 1.0f, mem, d->D, p->w_k, d->D, 0.0f, c->kp, d->A);
    struct att_job j = {.d = d, .p = p, .c = c, .q = q, .mem = mem, .ctx = ctx,
                        .src_len = src_len, .tgt_len = tgt_len};
    moe_par_for(d->B, att_forward_task, &j);
}

/* ------------------------------------------------------------------------ */
/* Backward */

static void att_backward_task(void *vj, int b)
{
    const struct att_job *j = vj;
    const struct attention_dims *d = j->d;
    const int S = d->S, A = d->A, D = d->D, Sb = j->src_len[b], Tb = j->tgt_len[b];
    const float *kp = j->c->kp + (size_t)b * S * A, *mem = j->mem + (size_t)b * S * D;
    const float *v = j->p->v;
    float *dmem = j->dmem + (size_t)b * S * D, *dkp = j->dkp + (size_t)b * S * A;
    float *dv = j->dv + (size_t)b * A, *dal = j->dal + (size_t)b * S;
    for (int t = 0; t < Tb; t++) {
        const size_t r = (size_t)b * d->T + t;
        const float *al = j->c->alpha + r * S, *dc = j->dctx + r * D, *qr = j->c->qp + r * A;
        float *dqr = j->dqp + r * A;
        /* through ctx = sum_s alpha_s m_s, then the softmax */
        float dot = 0;
        for (int s = 0; s < Sb; s++) {
            const float *ms = mem + (size_t)s * D;
            float *dms = dmem + (size_t)s * D, g = 0;
            for (int k = 0; k < D; k++) {
                g += dc[k] * ms[k];
                dms[k] += al[s] * dc[k];
            }
            dal[s] = g;
            dot += al[s] * g;
        }
        /* through e = v . tanh(qp + kp) */
        for (int s = 0; s < Sb; s++) {
            const float de = al[s] * (dal[s] - dot);
            const float *ks = kp + (size_t)s * A;
            float *dks = dkp + (size_t)s * A;
            for (int a = 0; a < A; a++) {
                const float u = att_tanh(qr[a] + ks[a]);
                const float g = de * v[a] * (1.0f - u * u);
                dv[a] += de * u;
                dqr[a] += g;
                dks[a] += g;
            }
        }
    }
}

void attention_backward(float *dq, float *dmem, const struct attention_params *dp, float *work,
                        const float *dctx, const float *q, const float *mem,
                        const struct attention_cache *c, const int *src_len, const int *tgt_len,
                        const struct attention_params *p, const struct attention_dims *d)
{
    const int NT = d->B * d->T, NS = d->B * d->S, A = d->A;
    float *dqp = work, *dkp = dqp + (size_t)NT * A, *dv = dkp + (size_t)NS * A;
    float *dal = dv + (size_t)d->B * A;
    memset(work, 0, sizeof(float) * attention_work_floats(d));
    struct att_job j = {.d = d, .p = p, .dp = dp, .c = c, .q = q, .mem = mem, .dctx = dctx,
                        .dmem = dmem, .dqp = dqp, .dkp = dkp, .dv = dv, .dal = dal,
                        .src_len = src_len, .tgt_len = tgt_len};
    moe_par_for(d->B, att_backward_task, &j);
    /* the per-sequence sums of dv, in sequence order */
    moe_par_colsum_acc(dp->v, dv, d->B, A);
    moe_par_colsum_acc(dp->b, dqp, NT, A);
    moe_sgemm(false, false, NT, d->D, A, 1.0f, dqp, A, p->w_q, d->D, 1.0f, dq, d->D);
    moe_sgemm(true, false, A, d->D, NT, 1.0f, dqp, A, q, d->D, 1.0f, dp->w_q, d->D);
    moe_sgemm(false, false, NS, d->D, A, 1.0f, dkp, A, p->w_k, d->D, 1.0f, dmem, d->D);
    moe_sgemm(true, false, A, d->D, NS, 1.0f, dkp, A, mem, d->D, 1.0f, dp->w_k, d->D);
}

/* ------------------------------------------------------------------------ */
/* The layer */

enum { ATT_WQ, ATT_WK, ATT_B, ATT_V, ATT_PARAMS };

struct attention_layer {
    struct layer base;
    moe_tensor w[ATT_PARAMS], g[ATT_PARAMS];
    float *cache_buf, *work;
    struct attention_dims dims;   /* of the last forward */
    struct attention_cache cache;
    int B_max, T_max, S_max;
    const float *mem;
    float *dmem;
    int S;
    const int *src_len, *tgt_len;
};

static struct attention_params att_view(moe_tensor *t)
{
    return (struct attention_params){t[ATT_WQ].data, t[ATT_WK].data, t[ATT_B].data,
                                     t[ATT_V].data};
}

static int attention_layer_forward(struct layer *l, struct layer_pass *p, float *out,
                                   const float *in, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    struct attention_layer *a = (struct attention_layer *)l;
    a->dims = (struct attention_dims){p->B, p->T, a->S, l->out_width, l->out_width};
    a->cache = attention_cache_view(a->cache_buf, &a->dims);
    const struct attention_params w = att_view(a->w);
    attention_forward(out, &a->cache, in, a->mem, a->src_len, a->tgt_len, &w, &a->dims);
    return 0;
}

static int attention_layer_backward(struct layer *l, struct layer_pass *p, float *din,
                                    const float *dout, const float *in, const float *out,
                                    char *err, size_t errlen)
{
    (void)p, (void)out, (void)err, (void)errlen;
    struct attention_layer *a = (struct attention_layer *)l;
    const struct attention_params w = att_view(a->w), g = att_view(a->g);
    attention_backward(din, a->dmem, &g, a->work, dout, in, a->mem, &a->cache, a->src_len,
                       a->tgt_len, &w, &a->dims);
    return 0;
}

static struct layer_param attention_layer_param(struct layer *l, int i)
{
    struct attention_layer *a = (struct attention_layer *)l;
    return (struct layer_param){a->w[i].name, &a->w[i], &a->g[i]};
}

static void attention_layer_destroy(struct layer *l)
{
    struct attention_layer *a = (struct attention_layer *)l;
    for (int i = 0; i < ATT_PARAMS; i++) {
        moe_tensor_free(&a->w[i]);
        moe_tensor_free(&a->g[i]);
    }
    moe_free_floats(&a->cache_buf);
    moe_free_floats(&a->work);
    free(a);
}

static const struct layer_ops attention_layer_ops = {
    .forward = attention_layer_forward,
    .backward = attention_layer_backward,
    .param = attention_layer_param,
    .destroy = attention_layer_destroy,
};

struct layer *attention_layer_new(const char *name, int D, int B_max, int T_max, int S_max,
                                  uint64_t seed)
{
    struct attention_layer *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->base = (struct layer){.ops = &attention_layer_ops, .in_width = D, .out_width = D,
                             .n_params = ATT_PARAMS};
    snprintf(a->base.name, sizeof a->base.name, "%s", name);
    a->B_max = B_max;
    a->T_max = T_max;
    a->S_max = S_max;
    static const char *const suffix[ATT_PARAMS] = {"query.weight", "key.weight", "bias", "v"};
    int rc = 0;
    for (int i = 0; i < ATT_PARAMS && !rc; i++) {
        char pname[64];
        snprintf(pname, sizeof pname, "%s.%s", name, suffix[i]);
        rc = i < ATT_B ? moe_tensor_init2(&a->w[i], pname, D, D) ||
                             moe_tensor_init2(&a->g[i], pname, D, D)
                       : moe_tensor_init1(&a->w[i], pname, D) || moe_tensor_init1(&a->g[i], pname, D);
    }
    const struct attention_dims dmax = {B_max, T_max, S_max, D, D};
    a->cache_buf = moe_alloc_floats(attention_cache_floats(&dmax));
    a->work = moe_alloc_floats(attention_work_floats(&dmax));
    if (rc || !a->cache_buf || !a->work) {
        attention_layer_destroy(&a->base);
        return NULL;
    }
    const float bound = 1.0f / sqrtf((float)D);
    for (int i = 0; i < ATT_PARAMS; i++)
        if (i != ATT_B)
            moe_rng_fill_uniform(a->w[i].data, a->w[i].numel, a->w[i].name, seed, bound);
    return &a->base;
}

void attention_layer_bind(struct layer *l, const float *mem, float *dmem, int S,
                          const int *src_len, const int *tgt_len)
{
    struct attention_layer *a = (struct attention_layer *)l;
    a->mem = mem;
    a->dmem = dmem;
    a->S = S;
    a->src_len = src_len;
    a->tgt_len = tgt_len;
}

const float *attention_layer_alpha(const struct layer *l)
{
    return ((const struct attention_layer *)l)->cache.alpha;
}
