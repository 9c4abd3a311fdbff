/* LSTM forward and backward over an unroll (see lstm.h). */
#include "lstm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_blas.h"
#include "moe_par.h"
#include "moe_rng.h"

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

size_t lstm_cache_floats(const struct lstm_dims *d)
{
    size_t N = (size_t)d->B * d->T, H = (size_t)d->H;
    return N * 4 * H + N * H + 2 * (size_t)d->B * H;
}

struct lstm_cache lstm_cache_view(float *buf, const struct lstm_dims *d)
{
    size_t N = (size_t)d->B * d->T, H = (size_t)d->H;
    struct lstm_cache c;
    c.acts = buf;
    c.c = c.acts + N * 4 * H;
    c.h0 = c.c + N * H;
    c.c0 = c.h0 + (size_t)d->B * H;
    return c;
}

size_t lstm_work_floats(const struct lstm_dims *d)
{
    size_t N = (size_t)d->B * d->T, H = (size_t)d->H;
    /* dG (N,4H), previous-h matrix (N,H), dh_next and dc_next (B,H) */
    return N * 4 * H + N * H + 2 * (size_t)d->B * H;
}

/* The gate passes run as moe_par tasks over the batch's sequences: every
 * element is computed by the same operations whatever the thread, so the
 * bits do not depend on the thread count (DESIGN §4). */
#define LSTM_SEQS 8

struct gate_job {
    float *acts;          /* (N,4H) pre-activations in, activated gates out */
    float *c;             /* (N,H) cell states */
    const float *c0;      /* (B,H) */
    float *h;             /* (N,H) output, NULL when recomputing */
    int t, B, T, H;
};

/* Sequences [b0, b1) at time t: gates activated in place, c and h. */
static void gate_forward_seqs(void *ctx, int task)
{
    const struct gate_job *j = ctx;
    const int H = j->H, T = j->T, t = j->t;
    int b0, b1;
    moe_par_span(task, LSTM_SEQS, j->B, &b0, &b1);
    for (int b = b0; b < b1; b++) {
        const size_t r = (size_t)b * T + t;
        float *a = j->acts + r * 4 * H;
        const float *cp = t == 0 ? j->c0 + (size_t)b * H : j->c + (r - 1) * H;
        float *cr = j->c + r * H;
        for (int k = 0; k < H; k++) {
            float ig = sigmoidf(a[k]);
            float fg = sigmoidf(a[H + k]);
            float gg = tanhf(a[2 * H + k]);
            float og = sigmoidf(a[3 * H + k]);
            a[k] = ig;
            a[H + k] = fg;
            a[2 * H + k] = gg;
            a[3 * H + k] = og;
            cr[k] = fg * cp[k] + ig * gg;
        }
        if (j->h) {
            float *hr = j->h + r * H;
            for (int k = 0; k < H; k++)
                hr[k] = a[3 * H + k] * tanhf(cr[k]);
        }
    }
}

/* acts (activated gates) and c of the whole unroll, and h when h_out is
 * not NULL; the recurrent products read h_in (h_out itself in the forward,
 * the forward's output when recomputing). */
static void lstm_run(float *h_out, const float *h_in, const struct lstm_cache *cache,
                     const float *x, const struct lstm_params *p, const struct lstm_dims *d)
{
    const int B = d->B, T = d->T, H = d->H, G = 4 * d->H, N = B * T;
    /* acts = x W_ih^T + b_ih + b_hh, for all time steps at once */
    float *acts = cache->acts;
    for (int g = 0; g < G; g++)
        acts[g] = p->b_ih[g] + p->b_hh[g];
    for (int r = 1; r < N; r++)
        memcpy(acts + (size_t)r * G, acts, sizeof(float) * (size_t)G);
    moe_sgemm(false, true, N, G, d->I, 1.0f, x, d->I, p->w_ih, d->I, 1.0f, acts, G);

    struct gate_job j = {.acts = acts, .c = cache->c, .c0 = cache->c0, .h = h_out, .B = B,
                         .T = T, .H = H};
    for (int t = 0; t < T; t++) {
        const float *hp = t == 0 ? cache->h0 : h_in + (size_t)(t - 1) * H;
        const int ldh = t == 0 ? H : T * H;
        moe_sgemm(false, true, B, G, H, 1.0f, hp, ldh, p->w_hh, H, 1.0f, acts + (size_t)t * G,
                  T * G);
        j.t = t;
        moe_par_for(moe_par_tasks(B, LSTM_SEQS), gate_forward_seqs, &j);
    }
}

void lstm_forward(float *h, struct lstm_cache *cache, const float *x, const struct lstm_params *p,
                  const float *h0, const float *c0, const struct lstm_dims *d)
{
    const size_t BH = (size_t)d->B * d->H;
    memcpy(cache->h0, h0, sizeof(float) * BH);
    memcpy(cache->c0, c0, sizeof(float) * BH);
    lstm_run(h, h, cache, x, p, d);
}

void lstm_recompute(const struct lstm_cache *cache, const float *x, const float *h,
                    const struct lstm_params *p, const struct lstm_dims *d)
{
    lstm_run(NULL, h, cache, x, p, d);
}

struct gate_back_job {
    const struct lstm_cache *cache;
    const float *dh;
    float *dG, *dh_next, *dc_next;
    int t, B, T, H;
};

/* Sequences [b0, b1) at time t: the gates' gradients and the cell's
 * gradient carried to t - 1. dG may be cache->acts itself (recompute):
 * each element's four gates are read before its four gradients are
 * written, so the pass works in place. */
static void gate_backward_seqs(void *ctx, int task)
{
    const struct gate_back_job *j = ctx;
    const int H = j->H, T = j->T, t = j->t, G = 4 * j->H;
    int b0, b1;
    moe_par_span(task, LSTM_SEQS, j->B, &b0, &b1);
    for (int b = b0; b < b1; b++) {
        const size_t r = (size_t)b * T + t;
        const float *a = j->cache->acts + r * G;
        const float *cr = j->cache->c + r * H;
        const float *cp = t == 0 ? j->cache->c0 + (size_t)b * H : j->cache->c + (r - 1) * H;
        const float *dhr = j->dh + r * H;
        float *dg = j->dG + r * G, *dhn = j->dh_next + (size_t)b * H;
        float *dcn = j->dc_next + (size_t)b * H;
        for (int k = 0; k < H; k++) {
            float ig = a[k], fg = a[H + k], gg = a[2 * H + k], og = a[3 * H + k];
            float tc = tanhf(cr[k]);
            float dht = dhr[k] + dhn[k];
            float dc = dht * og * (1.0f - tc * tc) + dcn[k];
            dg[k] = dc * gg * ig * (1.0f - ig);
            dg[H + k] = dc * cp[k] * fg * (1.0f - fg);
            dg[2 * H + k] = dc * ig * (1.0f - gg * gg);
            dg[3 * H + k] = dht * tc * og * (1.0f - og);
            dcn[k] = dc * fg;
        }
    }
}

void lstm_backward(float *dx, const struct lstm_params *dp, float *work, const float *dh,
                   const float *x, const float *h, const struct lstm_cache *cache,
                   const struct lstm_params *p, const struct lstm_dims *d)
{
    const int B = d->B, T = d->T, H = d->H, G = 4 * d->H, N = B * T;
    float *dG = work;
    float *hprev = dG + (size_t)N * G;
    float *dh_next = hprev + (size_t)N * H;
    float *dc_next = dh_next + (size_t)B * H;
    memset(dh_next, 0, sizeof(float) * (size_t)B * H);
    memset(dc_next, 0, sizeof(float) * (size_t)B * H);

    struct gate_back_job j = {.cache = cache, .dh = dh, .dG = dG, .dh_next = dh_next,
                              .dc_next = dc_next, .B = B, .T = T, .H = H};
    for (int t = T - 1; t >= 0; t--) {
        j.t = t;
        moe_par_for(moe_par_tasks(B, LSTM_SEQS), gate_backward_seqs, &j);
        if (t > 0)
            moe_sgemm(false, false, B, H, G, 1.0f, dG + (size_t)t * G, T * G, p->w_hh, H, 0.0f,
                      dh_next, H);
    }
    /* hprev row (b,t) = h_{t-1}, or h0 at t = 0; then one GEMM for dW_hh.
     * (With recompute, hprev held the cells until here.) */
    for (int b = 0; b < B; b++) {
        memcpy(hprev + (size_t)b * T * H, cache->h0 + (size_t)b * H, sizeof(float) * (size_t)H);
        memcpy(hprev + ((size_t)b * T + 1) * H, h + (size_t)b * T * H,
               sizeof(float) * (size_t)(T - 1) * H);
    }
    moe_sgemm(true, false, G, H, N, 1.0f, dG, G, hprev, H, 1.0f, dp->w_hh, H);
    moe_sgemm(true, false, G, d->I, N, 1.0f, dG, G, x, d->I, 1.0f, dp->w_ih, d->I);
    /* bias gradients: each column summed in row order, as rows were */
    moe_par_colsum_acc(dp->b_ih, dG, N, G);
    moe_par_colsum_acc(dp->b_hh, dG, N, G);
    moe_sgemm(false, false, N, d->I, G, 1.0f, dG, G, p->w_ih, d->I, 1.0f, dx, d->I);
}

void lstm_final_state(float *h_out, float *c_out, const float *h, const struct lstm_cache *cache,
                      const struct lstm_dims *d)
{
    const int T = d->T, H = d->H;
    for (int b = 0; b < d->B; b++) {
        const size_t r = (size_t)b * T + (T - 1);
        memcpy(h_out + (size_t)b * H, h + r * H, sizeof(float) * (size_t)H);
        memcpy(c_out + (size_t)b * H, cache->c + r * H, sizeof(float) * (size_t)H);
    }
}

void lstm_forward_ref(float *h, float *c_last, const float *x, const struct lstm_params *p,
                      const float *h0, const float *c0, const struct lstm_dims *d)
{
    const int B = d->B, T = d->T, H = d->H, I = d->I;
    for (int b = 0; b < B; b++) {
        float hp[H > 0 ? H : 1], cp[H > 0 ? H : 1], pre[4 * (H > 0 ? H : 1)];
        memcpy(hp, h0 + (size_t)b * H, sizeof(float) * (size_t)H);
        memcpy(cp, c0 + (size_t)b * H, sizeof(float) * (size_t)H);
        for (int t = 0; t < T; t++) {
            const float *xr = x + ((size_t)b * T + t) * I;
            for (int g = 0; g < 4 * H; g++) {
                double s = (double)p->b_ih[g] + p->b_hh[g];
                for (int i = 0; i < I; i++)
                    s += (double)p->w_ih[(size_t)g * I + i] * xr[i];
                for (int j = 0; j < H; j++)
                    s += (double)p->w_hh[(size_t)g * H + j] * hp[j];
                pre[g] = (float)s;
            }
            float *hr = h + ((size_t)b * T + t) * H;
            for (int j = 0; j < H; j++) {
                double ig = 1.0 / (1.0 + exp(-pre[j])), fg = 1.0 / (1.0 + exp(-pre[H + j]));
                double gg = tanh(pre[2 * H + j]), og = 1.0 / (1.0 + exp(-pre[3 * H + j]));
                double c = fg * cp[j] + ig * gg;
                cp[j] = (float)c;
                hr[j] = (float)(og * tanh(c));
            }
            memcpy(hp, hr, sizeof(float) * (size_t)H);
        }
        if (c_last)
            memcpy(c_last + (size_t)b * H, cp, sizeof(float) * (size_t)H);
    }
}

/* ------------------------------------------------------------------------ */
/* The layer */

enum { LSTM_W_IH, LSTM_W_HH, LSTM_B_IH, LSTM_B_HH, LSTM_PARAMS };

struct lstm_layer {
    struct layer base;
    moe_tensor w[LSTM_PARAMS], g[LSTM_PARAMS];
    int B_max, T_max;
    /* With recompute the gates and cells of a forward live in `work` (the
     * backward's dG and hprev, free until then) and cache_buf keeps only
     * the initial state; the backward recomputes them (lstm_recompute). */
    bool recompute;
    float *cache_buf, *work;
    struct lstm_dims dims;      /* of the last forward */
    struct lstm_cache cache;
    const float *h_last;        /* the last training forward's output */
    float *c_last;              /* recompute: its final cells (B_max, D) */
    float *state[2][2];         /* [eval][h or c] (B_max, D) */
    char state_name[2][48];
};

/* The cache of a pass of dims d (see struct lstm_layer). */
static struct lstm_cache lstm_layer_cache(struct lstm_layer *s, const struct lstm_dims *d)
{
    if (!s->recompute)
        return lstm_cache_view(s->cache_buf, d);
    const size_t N = (size_t)d->B * d->T, H = (size_t)d->H, BH = (size_t)d->B * H;
    return (struct lstm_cache){.acts = s->work, .c = s->work + N * 4 * H, .h0 = s->cache_buf,
                               .c0 = s->cache_buf + BH};
}

static struct lstm_params lstm_layer_view(moe_tensor *t)
{
    return (struct lstm_params){t[LSTM_W_IH].data, t[LSTM_W_HH].data, t[LSTM_B_IH].data,
                                t[LSTM_B_HH].data};
}

static int lstm_layer_forward(struct layer *l, struct layer_pass *p, float *out, const float *in,
                              char *err, size_t errlen)
{
    (void)err, (void)errlen;
    struct lstm_layer *s = (struct lstm_layer *)l;
    const int D = l->out_width;
    s->dims = (struct lstm_dims){p->B, p->T, D, D};
    s->cache = lstm_layer_cache(s, &s->dims);
    const struct lstm_params w = lstm_layer_view(s->w);
    float **st = s->state[!p->train];
    lstm_forward(out, &s->cache, in, &w, st[0], st[1], &s->dims);
    if (!p->train) { /* evaluation carries its own state forward right away */
        lstm_final_state(st[0], st[1], out, &s->cache, &s->dims);
        return 0;
    }
    s->h_last = out;
    if (s->recompute) /* the backward reuses `work`: keep the final cells */
        for (int b = 0; b < p->B; b++)
            memcpy(s->c_last + (size_t)b * D, s->cache.c + ((size_t)b * p->T + p->T - 1) * D,
                   sizeof(float) * (size_t)D);
    return 0;
}

static int lstm_layer_backward(struct layer *l, struct layer_pass *p, float *din,
                               const float *dout, const float *in, const float *out, char *err,
                               size_t errlen)
{
    (void)p, (void)err, (void)errlen;
    struct lstm_layer *s = (struct lstm_layer *)l;
    const struct lstm_params w = lstm_layer_view(s->w), g = lstm_layer_view(s->g);
    if (s->recompute)
        lstm_recompute(&s->cache, in, out, &w, &s->dims);
    lstm_backward(din, &g, s->work, dout, in, out, &s->cache, &w, &s->dims);
    return 0;
}

static struct layer_param lstm_layer_param(struct layer *l, int i)
{
    struct lstm_layer *s = (struct lstm_layer *)l;
    return (struct layer_param){s->w[i].name, &s->w[i], &s->g[i]};
}

static struct layer_state lstm_layer_state(struct layer *l, bool eval, int i)
{
    struct lstm_layer *s = (struct lstm_layer *)l;
    return (struct layer_state){s->state_name[i], s->state[eval][i], s->B_max, l->out_width};
}

static void lstm_layer_carry(struct layer *l)
{
    struct lstm_layer *s = (struct lstm_layer *)l;
    if (!s->recompute) {
        lstm_final_state(s->state[0][0], s->state[0][1], s->h_last, &s->cache, &s->dims);
        return;
    }
    const size_t D = (size_t)l->out_width;
    for (int b = 0; b < s->dims.B; b++)
        memcpy(s->state[0][0] + (size_t)b * D,
               s->h_last + ((size_t)b * s->dims.T + s->dims.T - 1) * D, sizeof(float) * D);
    memcpy(s->state[0][1], s->c_last, sizeof(float) * (size_t)s->dims.B * D);
}

static void lstm_layer_destroy(struct layer *l)
{
    struct lstm_layer *s = (struct lstm_layer *)l;
    for (int i = 0; i < LSTM_PARAMS; i++) {
        moe_tensor_free(&s->w[i]);
        moe_tensor_free(&s->g[i]);
    }
    moe_free_floats(&s->cache_buf);
    moe_free_floats(&s->work);
    moe_free_floats(&s->c_last);
    for (int e = 0; e < 2; e++)
        for (int c = 0; c < 2; c++)
            moe_free_floats(&s->state[e][c]);
    free(s);
}

static const struct layer_ops lstm_layer_ops = {
    .forward = lstm_layer_forward,
    .backward = lstm_layer_backward,
    .param = lstm_layer_param,
    .state = lstm_layer_state,
    .carry = lstm_layer_carry,
    .destroy = lstm_layer_destroy,
};

struct layer *lstm_layer_new(const char *name, int D, int B_max, int T_max, uint64_t seed,
                             bool recompute)
{
    struct lstm_layer *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->base = (struct layer){.ops = &lstm_layer_ops, .in_width = D, .out_width = D,
                             .n_params = LSTM_PARAMS, .n_states = 2};
    snprintf(s->base.name, sizeof s->base.name, "%s", name);
    s->B_max = B_max;
    s->T_max = T_max;
    s->recompute = recompute;
    static const char *const suffix[LSTM_PARAMS] = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                                    "bias_hh_l0"};
    int rc = 0;
    for (int i = 0; i < LSTM_PARAMS && !rc; i++) {
        char pname[64];
        snprintf(pname, sizeof pname, "%s.%s", name, suffix[i]);
        rc = i < LSTM_B_IH ? moe_tensor_init2(&s->w[i], pname, 4 * (int64_t)D, D) ||
                                 moe_tensor_init2(&s->g[i], pname, 4 * (int64_t)D, D)
                           : moe_tensor_init1(&s->w[i], pname, 4 * (int64_t)D) ||
                                 moe_tensor_init1(&s->g[i], pname, 4 * (int64_t)D);
    }
    snprintf(s->state_name[0], sizeof s->state_name[0], "state.%s.h", name);
    snprintf(s->state_name[1], sizeof s->state_name[1], "state.%s.c", name);
    const struct lstm_dims dmax = {B_max, T_max, D, D};
    s->cache_buf = moe_alloc_floats(recompute ? 2 * (size_t)B_max * D : lstm_cache_floats(&dmax));
    s->work = moe_alloc_floats(lstm_work_floats(&dmax));
    if (recompute && !(s->c_last = moe_alloc_floats((size_t)B_max * D)))
        rc = 1;
    for (int e = 0; e < 2; e++)
        for (int c = 0; c < 2; c++)
            if (!(s->state[e][c] = moe_alloc_floats((size_t)B_max * D)))
                rc = 1;
    if (rc || !s->cache_buf || !s->work) {
        lstm_layer_destroy(&s->base);
        return NULL;
    }
    const float bound = 1.0f / sqrtf((float)D);
    for (int i = 0; i < LSTM_PARAMS; i++)
        moe_rng_fill_uniform(s->w[i].data, s->w[i].numel, s->w[i].name, seed, bound);
    return &s->base;
}
