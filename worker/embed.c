/* Embedding lookup and its gradient (see embed.h). */
#include "embed.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_rng.h"

void embed_forward(float *out, const int32_t *tok, const float *W, int N, int D)
{
    for (int r = 0; r < N; r++)
        memcpy(out + (size_t)r * D, W + (size_t)tok[r] * D, sizeof(float) * (size_t)D);
}

void embed_backward(float *dW, const float *dout, const int32_t *tok, int N, int D)
{
    for (int r = 0; r < N; r++) {
        float *dst = dW + (size_t)tok[r] * D;
        const float *src = dout + (size_t)r * D;
        for (int d = 0; d < D; d++)
            dst[d] += src[d];
    }
}

/* ------------------------------------------------------------------------ */
/* The layer */

struct embed_layer {
    struct layer base;
    moe_tensor w, g;
};

static int embed_layer_forward(struct layer *l, struct layer_pass *p, float *out, const float *in,
                               char *err, size_t errlen)
{
    (void)in, (void)err, (void)errlen;
    struct embed_layer *e = (struct embed_layer *)l;
    embed_forward(out, p->tok, e->w.data, p->B * p->T, l->out_width);
    return 0;
}

static int embed_layer_backward(struct layer *l, struct layer_pass *p, float *din,
                                const float *dout, const float *in, const float *out, char *err,
                                size_t errlen)
{
    (void)din, (void)in, (void)out, (void)err, (void)errlen;
    struct embed_layer *e = (struct embed_layer *)l;
    embed_backward(e->g.data, dout, p->tok, p->B * p->T, l->out_width);
    return 0;
}

static struct layer_param embed_layer_param(struct layer *l, int i)
{
    (void)i;
    struct embed_layer *e = (struct embed_layer *)l;
    return (struct layer_param){e->w.name, &e->w, &e->g};
}

static void embed_layer_destroy(struct layer *l)
{
    struct embed_layer *e = (struct embed_layer *)l;
    moe_tensor_free(&e->w);
    moe_tensor_free(&e->g);
    free(e);
}

static const struct layer_ops embed_layer_ops = {
    .forward = embed_layer_forward,
    .backward = embed_layer_backward,
    .param = embed_layer_param,
    .destroy = embed_layer_destroy,
};

struct layer *embed_layer_new(const char *name, int V, int D, uint64_t seed)
{
    struct embed_layer *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->base = (struct layer){.ops = &embed_layer_ops, .in_width = 0, .out_width = D, .n_params = 1};
    snprintf(e->base.name, sizeof e->base.name, "%s", name);
    char pname[64];
    snprintf(pname, sizeof pname, "%s.weight", name);
    if (moe_tensor_init2(&e->w, pname, V, D) || moe_tensor_init2(&e->g, pname, V, D)) {
        embed_layer_destroy(&e->base);
        return NULL;
    }
    moe_rng_fill_uniform(e->w.data, e->w.numel, e->w.name, seed, 0.1f);
    return &e->base;
}
