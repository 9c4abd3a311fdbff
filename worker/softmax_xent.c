/* Softmax cross-entropy over the vocabulary (see softmax_xent.h). */
#include "softmax_xent.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_blas.h"
#include "moe_par.h"
#include "moe_rng.h"
#include "moe_vmath.h"

/* Reductions over a row with a fixed number of independent lanes, combined
 * in a fixed order: the compiler can vectorise them without reassociating
 * anything, so the result is the same on every run. */
#define LANES 16

static float row_max(const float *p, int V)
{
    float acc[LANES];
    for (int l = 0; l < LANES; l++)
        acc[l] = p[0];
    int v = 0;
    for (; v + LANES <= V; v += LANES)
        for (int l = 0; l < LANES; l++)
            acc[l] = p[v + l] > acc[l] ? p[v + l] : acc[l];
    float mx = acc[0];
    for (int l = 1; l < LANES; l++)
        mx = acc[l] > mx ? acc[l] : mx;
    for (; v < V; v++)
        mx = p[v] > mx ? p[v] : mx;
    return mx;
}

/* p = exp(p - mx), and the sum of the results over LANES lanes added in
 * a fixed order. */
static float row_exp_sum(float *p, int V, float mx)
{
    float acc[LANES] = {0};
    int v = 0;
    for (; v + LANES <= V; v += LANES)
        for (int l = 0; l < LANES; l++) {
            p[v + l] = moe_vexpf(p[v + l] - mx);
            acc[l] += p[v + l];
        }
    float s = 0.0f;
    for (int l = 0; l < LANES; l++)
        s += acc[l];
    for (; v < V; v++) {
        p[v] = moe_vexpf(p[v] - mx);
        s += p[v];
    }
    return s;
}

/* Rows per moe_par task. */
#define SX_ROWS 16

struct sx_job {
    float *probs;
    const float *bias;     /* fill_rows */
    const int32_t *targets;
    double *loss;  /* per task of SX_ROWS rows */
    float scale;
    bool grad;     /* forward leaves scale * (p - onehot) instead of p */
    int N, V;
};

static void forward_rows(void *ctx, int task)
{
    const struct sx_job *j = ctx;
    const int V = j->V;
    int r0, r1;
    moe_par_span(task, SX_ROWS, j->N, &r0, &r1);
    double loss = 0;
    for (int r = r0; r < r1; r++) {
        float *p = j->probs + (size_t)r * V;
        const float mx = row_max(p, V);
        const float lt = p[j->targets[r]] - mx;
        const float sum = row_exp_sum(p, V, mx);
        const float inv = 1.0f / sum;
        if (j->grad) {
            /* softmax_xent_backward's arithmetic, in the same pass: the
             * same bits as the forward then the backward */
            const int32_t t = j->targets[r];
            const float pt = (p[t] * inv - 1.0f) * j->scale;
            for (int v = 0; v < V; v++)
                p[v] = (p[v] * inv) * j->scale;
            p[t] = pt;
        } else {
            for (int v = 0; v < V; v++)
                p[v] *= inv;
        }
        /* -log p_t from the logit itself, not from the rounded probability */
        loss += log((double)sum) - (double)lt;
    }
    j->loss[task] = loss;
}

/* The bias copied into the task's rows: 150 MB a step at the default
 * size, a memory pass that two threads do faster than one. */
static void fill_rows(void *ctx, int task)
{
    const struct sx_job *j = ctx;
    int r0, r1;
    moe_par_span(task, SX_ROWS, j->N, &r0, &r1);
    for (int r = r0; r < r1; r++)
        memcpy(j->probs + (size_t)r * j->V, j->bias, sizeof(float) * (size_t)j->V);
}

static double forward(float *probs, const float *x, const float *W, const float *b,
                      const int32_t *targets, int N, int V, int D, bool grad, float scale)
{
    const int nt = moe_par_tasks(N, SX_ROWS);
    struct sx_job fill = {.probs = probs, .bias = b, .N = N, .V = V};
    moe_par_for(nt, fill_rows, &fill);
    moe_sgemm(false, true, N, V, D, 1.0f, x, D, W, D, 1.0f, probs, V);
    double part[nt > 0 ? nt : 1];
    struct sx_job j = {.probs = probs, .targets = targets, .loss = part, .scale = scale,
                       .grad = grad, .N = N, .V = V};
    moe_par_for(nt, forward_rows, &j);
    /* the rows' losses, summed by task in row order */
    double loss = 0;
    for (int t = 0; t < nt; t++)
        loss += part[t];
    return loss;
}

double softmax_xent_forward(float *probs, const float *x, const float *W, const float *b,
                            const int32_t *targets, int N, int V, int D)
{
    return forward(probs, x, W, b, targets, N, V, D, false, 0.0f);
}

double softmax_xent_forward_grad(float *dlogits, const float *x, const float *W, const float *b,
                                 const int32_t *targets, float scale, int N, int V, int D)
{
    return forward(dlogits, x, W, b, targets, N, V, D, true, scale);
}

static void backward_rows(void *ctx, int task)
{
    const struct sx_job *j = ctx;
    const int V = j->V;
    int r0, r1;
    moe_par_span(task, SX_ROWS, j->N, &r0, &r1);
    for (int r = r0; r < r1; r++) {
        float *p = j->probs + (size_t)r * V;
        p[j->targets[r]] -= 1.0f;
        for (int v = 0; v < V; v++)
            p[v] *= j->scale;
    }
}

void softmax_xent_backward_dlogits(float *dx, float *dW, float *db, const float *dlogits,
                                   const float *x, const float *W, int N, int V, int D)
{
    moe_par_colsum_acc(db, dlogits, N, V);
    moe_sgemm(true, false, V, D, N, 1.0f, dlogits, V, x, D, 1.0f, dW, D);
    moe_sgemm(false, false, N, D, V, 1.0f, dlogits, V, W, D, 1.0f, dx, D);
}

void softmax_xent_backward(float *dx, float *dW, float *db, float *probs, const float *x,
                           const float *W, const int32_t *targets, float scale, int N, int V,
                           int D)
{
    struct sx_job j = {.probs = probs, .targets = targets, .scale = scale, .N = N, .V = V};
    moe_par_for(moe_par_tasks(N, SX_ROWS), backward_rows, &j);
    softmax_xent_backward_dlogits(dx, dW, db, probs, x, W, N, V, D);
}

/* ------------------------------------------------------------------------ */
/* The layer */

struct softmax_layer {
    struct layer base;
    moe_tensor w[2], g[2];   /* weight (V,D), bias (V) */
    int V;
    float *probs;            /* (N_max, V): probabilities, or dlogits in training */
};

static int softmax_layer_forward(struct layer *l, struct layer_pass *p, float *out,
                                 const float *in, char *err, size_t errlen)
{
    (void)out, (void)err, (void)errlen;
    struct softmax_layer *s = (struct softmax_layer *)l;
    const int N = p->B * p->T, D = l->in_width;
    /* Training leaves the softmax's dlogits (scale 1 / global tokens) in
     * probs right away, in the same pass over the logits. */
    if (p->train)
        p->xent_sum = softmax_xent_forward_grad(s->probs, in, s->w[0].data, s->w[1].data, p->tgt,
                                                (float)(1.0 / (double)p->n_global), N, s->V, D);
    else
        p->xent_sum = softmax_xent_forward(s->probs, in, s->w[0].data, s->w[1].data, p->tgt, N,
                                           s->V, D);
    return 0;
}

static int softmax_layer_backward(struct layer *l, struct layer_pass *p, float *din,
                                  const float *dout, const float *in, const float *out, char *err,
                                  size_t errlen)
{
    (void)dout, (void)out, (void)err, (void)errlen;
    struct softmax_layer *s = (struct softmax_layer *)l;
    softmax_xent_backward_dlogits(din, s->g[0].data, s->g[1].data, s->probs, in, s->w[0].data,
                                  p->B * p->T, s->V, l->in_width);
    return 0;
}

static struct layer_param softmax_layer_param(struct layer *l, int i)
{
    struct softmax_layer *s = (struct softmax_layer *)l;
    return (struct layer_param){s->w[i].name, &s->w[i], &s->g[i]};
}

static void softmax_layer_destroy(struct layer *l)
{
    struct softmax_layer *s = (struct softmax_layer *)l;
    for (int i = 0; i < 2; i++) {
        moe_tensor_free(&s->w[i]);
        moe_tensor_free(&s->g[i]);
    }
    moe_free_floats(&s->probs);
    free(s);
}

static const struct layer_ops softmax_layer_ops = {
    .forward = softmax_layer_forward,
    .backward = softmax_layer_backward,
    .param = softmax_layer_param,
    .destroy = softmax_layer_destroy,
};

struct layer *softmax_layer_new(const char *name, int V, int D, int N_max, uint64_t seed)
{
    struct softmax_layer *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->base = (struct layer){.ops = &softmax_layer_ops, .in_width = D, .out_width = 0,
                             .n_params = 2};
    snprintf(s->base.name, sizeof s->base.name, "%s", name);
    s->V = V;
    char wname[64], bname[64];
    snprintf(wname, sizeof wname, "%s.weight", name);
    snprintf(bname, sizeof bname, "%s.bias", name);
    s->probs = moe_alloc_floats((size_t)N_max * (size_t)V);
    if (!s->probs || moe_tensor_init2(&s->w[0], wname, V, D) ||
        moe_tensor_init2(&s->g[0], wname, V, D) || moe_tensor_init1(&s->w[1], bname, V) ||
        moe_tensor_init1(&s->g[1], bname, V)) {
        softmax_layer_destroy(&s->base);
        return NULL;
    }
    moe_rng_fill_uniform(s->w[0].data, s->w[0].numel, s->w[0].name, seed, 1.0f / sqrtf((float)D));
    return &s->base;
}

const float *softmax_layer_probs(const struct layer *l)
{
    return ((const struct softmax_layer *)l)->probs;
}
