/* A hierarchical MoE's groups: secondary gates, experts, the combine within
 * a group (see hmoe_group.h). Runs in workers (in-process) and in expert
 * servers. */
#include "hmoe_group.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "moe_err.h"
#include "moe_rng.h"
#include "moe_tensor.h"

/* One part's rows of one group: a gate call of its own. */
struct seg {
    int part, gi;     /* part, local group index */
    size_t row;       /* first row in the work buffers */
    size_t local;     /* first row in its part's arrays */
    size_t stat;      /* its part's group index (stats rows) */
    struct gate_dims d;
    struct gate_cache c;
};

struct hmoe_groups {
    int D, B, K, n;
    uint64_t seed;
    struct moe_fadam_opts opts;
    int32_t *ids;
    float *w, *g, *st;    /* (n) blocks of params, grads, state */
    /* the last forward (grown on demand) */
    size_t cap_rows, cap_segs, cap_cf, cap_ci;
    float *x, *gp, *gates, *dgates, *cf, *gwork, *xe, *ye, *zero;
    int32_t *idx, *ci;
    int64_t *pos;
    struct seg *seg;
    int n_seg, W;         /* gate calls and parts of the last forward */
    size_t rows;          /* rows of all parts */
    int n_active;
    int32_t *u_ids;       /* (n B) experts with rows, ascending */
    int *u_rows, *fill;   /* (n B) */
    size_t *u_base;       /* (n B) first union row of each expert (by local expert) */
    bool have_forward;
    bool finish_pending;  /* hmoe_groups_backward_input done, _finish not yet */
};

static int shard_forward(void *ctx, bool train, int n, const int32_t *ids, const int *rows,
                         const float *x, float *y)
{
    return train ? expert_shard_forward(ctx, n, ids, rows, x, y)
                 : expert_shard_infer(ctx, n, ids, rows, x, y);
}

static int shard_backward(void *ctx, int n, const int32_t *ids, const int *rows, const float *dy,
                          float *dx, int64_t t, double lr)
{
    return t > 0 ? expert_shard_backward_apply(ctx, n, ids, rows, dy, dx, t, lr)
                 : expert_shard_backward(ctx, n, ids, rows, dy, dx);
}

static bool shard_can_split(void *ctx) { return expert_shard_can_split_backward(ctx); }

static int shard_backward_input(void *ctx, int n, const int32_t *ids, const int *rows,
                                const float *dy, float *dx)
{
    return expert_shard_backward_input(ctx, n, ids, rows, dy, dx);
}

static int shard_backward_finish(void *ctx, int n, const int32_t *ids, const int *rows,
                                 const float *dy, int64_t t, double lr)
{
    return expert_shard_backward_finish(ctx, n, ids, rows, dy, t, lr);
}

struct hmoe_experts hmoe_experts_of_shard(expert_shard_t *shard)
{
    return (struct hmoe_experts){shard, shard_forward, shard_backward, shard_can_split,
                                 shard_backward_input, shard_backward_finish};
}

size_t hmoe_groups_param_count(int D, int B) { return 2 * (size_t)D * (size_t)B; }
size_t hmoe_groups_state_count(int D, int B)
{
    return 2 * moe_fadam_state_size((size_t)D, (size_t)B);
}

int hmoe_groups_count(const hmoe_groups_t *g) { return g->n; }
int32_t hmoe_groups_id(const hmoe_groups_t *g, int i) { return g->ids[i]; }

int hmoe_groups_find(const hmoe_groups_t *g, int32_t id)
{
    int lo = 0, hi = g->n - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        if (g->ids[mid] == id)
            return mid;
        if (g->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

double hmoe_groups_bytes(int D, int B, int n)
{
    return 4.0 * (double)n *
           (2.0 * (double)hmoe_groups_param_count(D, B) + (double)hmoe_groups_state_count(D, B));
}

float *hmoe_groups_params(hmoe_groups_t *g, int i)
{
    return g->w + (size_t)i * hmoe_groups_param_count(g->D, g->B);
}

float *hmoe_groups_grads(hmoe_groups_t *g, int i)
{
    return g->g + (size_t)i * hmoe_groups_param_count(g->D, g->B);
}

float *hmoe_groups_opt_state(hmoe_groups_t *g, int i)
{
    return g->st + (size_t)i * hmoe_groups_state_count(g->D, g->B);
}

static const char *const part_names[2] = {"w_gate", "w_noise"};

void hmoe_groups_tensor_name(char *buf, size_t cap, int32_t id, int part, bool fadam)
{
    snprintf(buf, cap, "moe.groups.%d.%s%s", (int)id, part_names[part & 1], fadam ? ".fadam" : "");
}

int hmoe_groups_parse_name(const char *name, long *id, int *part, bool *fadam)
{
    static const char pre[] = "moe.groups.";
    if (strncmp(name, pre, sizeof pre - 1) != 0)
        return 0;
    const char *d = name + sizeof pre - 1;
    size_t n = 0;
    while (d[n] >= '0' && d[n] <= '9')
        n++;
    if (n == 0 || n > 9 || d[n] != '.' || (n > 1 && d[0] == '0'))
        return 0;
    for (int p = 0; p < 2; p++) {
        const size_t l = strlen(part_names[p]);
        const char *s = d + n + 1;
        if (strncmp(s, part_names[p], l) == 0 && (s[l] == 0 || strcmp(s + l, ".fadam") == 0)) {
            *id = strtol(d, NULL, 10);
            *part = p;
            *fadam = s[l] != 0;
            return 1;
        }
    }
    return 0;
}

static int cmp_i32(const void *a, const void *b)
{
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

hmoe_groups_t *hmoe_groups_new(int D, int B, int K, int n, const int32_t *ids, uint64_t seed,
                               const struct moe_fadam_opts *opts)
{
    if (D < 1 || B < 1 || K < 1 || K > B || n < 0 || (n > 0 && !ids) || !opts)
        return NULL;
    hmoe_groups_t *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    *g = (struct hmoe_groups){.D = D, .B = B, .K = K, .n = n, .seed = seed, .opts = *opts};
    const size_t nn = n ? (size_t)n : 1, NB = nn * (size_t)B;
    g->ids = malloc(sizeof(int32_t) * nn);
    g->w = moe_alloc_floats(nn * hmoe_groups_param_count(D, B));
    g->g = moe_alloc_floats(nn * hmoe_groups_param_count(D, B));
    g->st = moe_alloc_floats(nn * hmoe_groups_state_count(D, B));
    g->u_ids = malloc(sizeof(int32_t) * NB);
    g->u_rows = malloc(sizeof(int) * NB);
    g->fill = malloc(sizeof(int) * NB);
    g->u_base = malloc(sizeof(size_t) * NB);
    g->zero = moe_alloc_floats((size_t)B);
    if (!g->ids || !g->w || !g->g || !g->st || !g->u_ids || !g->u_rows || !g->fill ||
        !g->u_base || !g->zero) {
        hmoe_groups_destroy(&g);
        return NULL;
    }
    if (n > 0)
        memcpy(g->ids, ids, sizeof(int32_t) * (size_t)n);
    qsort(g->ids, (size_t)n, sizeof(int32_t), cmp_i32);
    for (int i = 1; i < n; i++)
        if (g->ids[i] == g->ids[i - 1] || g->ids[i - 1] < 0) {
            hmoe_groups_destroy(&g);
            return NULL;
        }
    return g;
}

hmoe_groups_t *hmoe_groups_from_options(const struct moe_options *c, int n, const int32_t *ids)
{
    const struct moe_fadam_opts fo = {c->expert_beta2, c->expert_decay_pow, c->expert_eps, 1e-30,
                                      c->expert_clip, c->expert_relative_step, 1e-3};
    int32_t *all = NULL;
    if (!ids) {
        if (!(all = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1))))
            return NULL;
        for (int i = 0; i < n; i++)
            all[i] = i;
    }
    hmoe_groups_t *g = hmoe_groups_new(c->d_model, c->experts_per_group, c->k, n, ids ? ids : all,
                                       (uint64_t)c->seed, &fo);
    free(all);
    return g;
}

hmoe_groups_t *hmoe_groups_of_shard(const struct moe_options *c, const expert_shard_t *shard)
{
    const int n = expert_shard_count(shard), B = c->experts_per_group;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    if (!ids)
        return NULL;
    int m = 0;
    for (int i = 0; i < n; i++) {
        const int32_t e = expert_shard_id(shard, i);
        if (e % B == 0)
            ids[m++] = e / B;
    }
    hmoe_groups_t *g = hmoe_groups_from_options(c, m, ids);
    free(ids);
    return g;
}

static void free_work(hmoe_groups_t *g)
{
    float **f[] = {&g->x, &g->gp, &g->gates, &g->dgates, &g->cf, &g->gwork, &g->xe, &g->ye};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        moe_free_floats(f[i]);
    free(g->idx);
    free(g->ci);
    free(g->pos);
    g->idx = g->ci = NULL;
    g->pos = NULL;
    g->cap_rows = g->cap_cf = g->cap_ci = 0;
}

void hmoe_groups_destroy(hmoe_groups_t **gp)
{
    if (!gp || !*gp)
        return;
    hmoe_groups_t *g = *gp;
    free_work(g);
    free(g->seg);
    free(g->ids);
    moe_free_floats(&g->w);
    moe_free_floats(&g->g);
    moe_free_floats(&g->st);
    moe_free_floats(&g->zero);
    free(g->u_ids);
    free(g->u_rows);
    free(g->fill);
    free(g->u_base);
    free(g);
    *gp = NULL;
}

/* ------------------------------------------------------------------------ */
/* Buffers */

/* Room for `rows` rows over `segs` gate calls whose caches need cf floats
 * and ci ints. */
static int reserve(hmoe_groups_t *g, size_t rows, size_t segs, size_t cf, size_t ci)
{
    if (segs > g->cap_segs) {
        struct seg *s = realloc(g->seg, sizeof *s * segs);
        if (!s)
            return MOE_ERR_NOMEM;
        g->seg = s;
        g->cap_segs = segs;
    }
    if (g->x && rows <= g->cap_rows && cf <= g->cap_cf && ci <= g->cap_ci)
        return 0; /* (the first call allocates, even for no rows) */
    free_work(g);
    const size_t R = rows ? rows : 1, D = (size_t)g->D, K = (size_t)g->K, B = (size_t)g->B;
    size_t RD, RKD;
    if (moe_size_mul(R, D, &RD) || moe_size_mul(RD, K, &RKD))
        return MOE_ERR_RANGE;
    g->x = moe_alloc_floats(RD);
    g->gp = moe_alloc_floats(R);
    g->gates = moe_alloc_floats(R * K);
    g->dgates = moe_alloc_floats(R * K);
    g->cf = moe_alloc_floats(cf ? cf : 1);
    g->gwork = moe_alloc_floats(2 * R * B);
    g->xe = moe_alloc_floats(RKD);
    g->ye = moe_alloc_floats(RKD);
    g->idx = malloc(sizeof(int32_t) * R * K);
    g->ci = malloc(sizeof(int32_t) * (ci ? ci : 1));
    g->pos = malloc(sizeof(int64_t) * R * K);
    if (!g->x || !g->gp || !g->gates || !g->dgates || !g->cf || !g->gwork || !g->xe || !g->ye ||
        !g->idx || !g->ci || !g->pos) {
        free_work(g);
        return MOE_ERR_NOMEM;
    }
    g->cap_rows = R;
    g->cap_cf = cf ? cf : 1;
    g->cap_ci = ci ? ci : 1;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Forward */

/* The gate calls of the parts: one per (part, group), with the sizes of
 * their caches. MOE_ERR_NOTFOUND for a group not held. */
static int plan(hmoe_groups_t *g, int64_t step, bool train, int W, const struct hmoe_part *parts)
{
    size_t segs = 0, rows = 0, cf = 0, ci = 0;
    for (int p = 0; p < W; p++)
        for (int j = 0; j < parts[p].n; j++) {
            if (hmoe_groups_find(g, parts[p].ids[j]) < 0)
                return MOE_ERR_NOTFOUND;
            const struct gate_dims d = {.N = (int)parts[p].rows[j], .D = g->D, .E = g->B,
                                        .K = g->K, .train = train};
            segs++;
            rows += parts[p].rows[j];
            cf += gate_cache_floats(&d);
            ci += gate_cache_ints(&d);
        }
    int rc = reserve(g, rows, segs, cf, ci);
    if (rc)
        return rc;
    g->n_seg = 0;
    g->W = W;
    g->rows = rows;
    size_t row = 0, fo = 0, io = 0;
    for (int p = 0; p < W; p++) {
        size_t local = 0;
        for (int j = 0; j < parts[p].n; j++) {
            struct seg *s = &g->seg[g->n_seg++];
            const int32_t id = parts[p].ids[j];
            s->part = p;
            s->gi = hmoe_groups_find(g, id);
            s->row = row;
            s->local = local;
            s->stat = (size_t)j;
            s->d = (struct gate_dims){.N = (int)parts[p].rows[j], .D = g->D, .E = g->B, .K = g->K,
                                      .train = train, .seed = g->seed, .step = step,
                                      .row0 = parts[p].row0,
                                      .purpose = MOE_RNG_GATE_NOISE_GROUP,
                                      .col0 = (uint32_t)(id * g->B),
                                      .rows = parts[p].row_index
                                                  ? (const int32_t *)parts[p].row_index + local
                                                  : NULL};
            s->c = gate_cache_view(g->cf + fo, g->ci + io, &s->d);
            fo += gate_cache_floats(&s->d);
            io += gate_cache_ints(&s->d);
            row += parts[p].rows[j];
            local += parts[p].rows[j];
        }
    }
    return 0;
}

/* The union of the experts' rows: expert i*B + j gets its rows part after
 * part, in row order; pos[slot] its union row, -1 for a zero gate. */
static void dispatch(hmoe_groups_t *g)
{
    const int B = g->B, K = g->K, NB = g->n * B;
    memset(g->fill, 0, sizeof(int) * (size_t)NB);
    for (int s = 0; s < g->n_seg; s++) {
        const struct seg *sg = &g->seg[s];
        for (int r = 0; r < sg->d.N; r++)
            for (int k = 0; k < K; k++) {
                const size_t q = (sg->row + (size_t)r) * K + k;
                if (g->gates[q] != 0.0f)
                    g->fill[sg->gi * B + (g->idx[q] - g->ids[sg->gi] * B)]++;
            }
    }
    size_t base = 0;
    g->n_active = 0;
    for (int e = 0; e < NB; e++) {
        g->u_base[e] = base;
        if (g->fill[e] > 0) {
            g->u_ids[g->n_active] = g->ids[e / B] * B + e % B;
            g->u_rows[g->n_active] = g->fill[e];
            g->n_active++;
        }
        base += (size_t)g->fill[e];
        g->fill[e] = 0;
    }
    for (int s = 0; s < g->n_seg; s++) {
        const struct seg *sg = &g->seg[s];
        for (int r = 0; r < sg->d.N; r++)
            for (int k = 0; k < K; k++) {
                const size_t q = (sg->row + (size_t)r) * K + k;
                if (g->gates[q] == 0.0f) {
                    g->pos[q] = -1;
                    continue;
                }
                const int e = sg->gi * B + (g->idx[q] - g->ids[sg->gi] * B);
                const size_t p = g->u_base[e] + (size_t)g->fill[e]++;
                g->pos[q] = (int64_t)p;
                memcpy(g->xe + p * g->D, g->x + (sg->row + (size_t)r) * g->D,
                       sizeof(float) * (size_t)g->D);
            }
    }
}

/* Group gi's gate on one part's rows: slots, Importance_H, load, counts. */
static void gate_seg(hmoe_groups_t *g, struct seg *sg, float *stats)
{
    const int B = g->B, K = g->K, N = sg->d.N;
    float *imp = stats, *load = stats + B, *cnt = stats + 2 * B;
    memset(stats, 0, sizeof(float) * 3 * (size_t)B);
    if (N == 0)
        return;
    const float *w = hmoe_groups_params(g, sg->gi);
    const size_t DB = (size_t)g->D * B;
    gate_forward(&sg->c, g->zero, load, g->x + sg->row * g->D, w, w + DB, &sg->d);
    memset(g->zero, 0, sizeof(float) * (size_t)B);
    const int32_t e0 = g->ids[sg->gi] * B;
    for (int r = 0; r < N; r++) {
        const float gp = g->gp[sg->row + (size_t)r];
        for (int k = 0; k < K; k++) {
            const size_t q = (sg->row + (size_t)r) * K + k;
            const int32_t j = sg->c.idx[(size_t)r * K + k];
            const float gt = sg->c.gates[(size_t)r * K + k];
            g->idx[q] = e0 + j;
            g->gates[q] = gt;
            imp[j] += gp * gt;
            if (gt != 0.0f)
                cnt[j] += 1.0f;
        }
    }
}

int hmoe_groups_forward(hmoe_groups_t *g, const struct hmoe_experts *ex, int64_t step, bool train,
                        int W, struct hmoe_part *parts)
{
    g->have_forward = false;
    int rc = plan(g, step, train, W, parts);
    if (rc)
        return rc;
    const size_t D = (size_t)g->D;
    /* every row in first: a part's y may be its x (the server answers in
     * the buffer the rows came in) */
    for (int s = 0; s < g->n_seg; s++) {
        const struct seg *sg = &g->seg[s];
        const size_t n = (size_t)sg->d.N;
        if (n == 0)
            continue;
        memcpy(g->x + sg->row * D, parts[sg->part].x + sg->local * D, sizeof(float) * n * D);
        memcpy(g->gp + sg->row, parts[sg->part].gp + sg->local, sizeof(float) * n);
    }
    for (int s = 0; s < g->n_seg; s++) {
        struct seg *sg = &g->seg[s];
        gate_seg(g, sg, parts[sg->part].stats + sg->stat * 3 * (size_t)g->B);
        sg->d.rows = NULL; /* the part's index array is not ours to keep */
    }
    dispatch(g);
    rc = ex->forward(ex->ctx, train, g->n_active, g->u_ids, g->u_rows, g->xe, g->ye);
    if (rc)
        return rc;
    /* the combine within each group, per row */
    for (int s = 0; s < g->n_seg; s++) {
        const struct seg *sg = &g->seg[s];
        for (int r = 0; r < sg->d.N; r++) {
            const size_t row = sg->row + (size_t)r;
            float *yr = parts[sg->part].y + (sg->local + (size_t)r) * D;
            memset(yr, 0, sizeof(float) * D);
            for (int k = 0; k < g->K; k++) {
                const size_t q = row * g->K + k;
                if (g->pos[q] < 0)
                    continue;
                const float gt = g->gates[q];
                const float *ye = g->ye + (size_t)g->pos[q] * D;
                for (size_t d = 0; d < D; d++)
                    yr[d] += gt * ye[d];
            }
        }
    }
    g->have_forward = train;
    return 0;
}

size_t hmoe_groups_expert_rows(const hmoe_groups_t *g)
{
    size_t n = 0;
    for (int e = 0; e < g->n_active; e++)
        n += (size_t)g->u_rows[e];
    return n;
}

/* ------------------------------------------------------------------------ */
/* Backward */

/* hmoe_groups_backward, or with `split` its first half (the experts'
 * ex->backward_input; no update). */
static int backward(hmoe_groups_t *g, const struct hmoe_experts *ex, int W,
                    struct hmoe_part *parts, int64_t t, double lr, bool split)
{
    if (!g->have_forward || W != g->W || g->finish_pending)
        return MOE_ERR_STATE;
    const size_t D = (size_t)g->D, B = (size_t)g->B;
    const int K = g->K;
    /* the combine's and Importance_H's gradients onto each slot's gate and
     * each row's primary gate; the experts' output gradients (into xe) */
    for (int s = 0; s < g->n_seg; s++) {
        const struct seg *sg = &g->seg[s];
        const struct hmoe_part *pt = &parts[sg->part];
        const float *dimp = pt->dstats + sg->stat * 2 * B;
        for (int r = 0; r < sg->d.N; r++) {
            const size_t row = sg->row + (size_t)r;
            const float *dyr = pt->dy + (sg->local + (size_t)r) * D;
            double dgp = 0;
            for (int k = 0; k < K; k++) {
                const size_t q = row * K + k;
                const float gt = g->gates[q];
                const float di = dimp[g->idx[q] - g->ids[sg->gi] * (int32_t)B];
                double dot = 0;
                if (g->pos[q] >= 0) {
                    const float *ye = g->ye + (size_t)g->pos[q] * D;
                    float *dye = g->xe + (size_t)g->pos[q] * D;
                    for (size_t d = 0; d < D; d++) {
                        dot += (double)dyr[d] * ye[d];
                        dye[d] = gt * dyr[d];
                    }
                }
                g->dgates[q] = (float)dot + g->gp[row] * di;
                dgp += (double)gt * di;
            }
            pt->dgp[sg->local + (size_t)r] = (float)dgp;
        }
    }
    int rc = split ? ex->backward_input(ex->ctx, g->n_active, g->u_ids, g->u_rows, g->xe, g->ye)
                   : ex->backward(ex->ctx, g->n_active, g->u_ids, g->u_rows, g->xe, g->ye, t, lr);
    if (rc)
        return rc;
    /* the rows' gradients (written after every dy was read: a part's dx may
     * be its dy): through the experts, then the secondary gate */
    for (int s = 0; s < g->n_seg; s++) {
        struct seg *sg = &g->seg[s];
        const struct hmoe_part *pt = &parts[sg->part];
        if (sg->d.N == 0)
            continue;
        float *dx = pt->dx + sg->local * D;
        memset(dx, 0, sizeof(float) * (size_t)sg->d.N * D);
        for (int r = 0; r < sg->d.N; r++) {
            float *dxr = dx + (size_t)r * D;
            for (int k = 0; k < K; k++) {
                const int64_t ps = g->pos[(sg->row + (size_t)r) * K + k];
                if (ps < 0)
                    continue;
                const float *src = g->ye + (size_t)ps * D;
                for (size_t d = 0; d < D; d++)
                    dxr[d] += src[d];
            }
        }
        const float *w = hmoe_groups_params(g, sg->gi);
        float *gw = hmoe_groups_grads(g, sg->gi);
        const size_t DB = D * B;
        gate_backward(dx, gw, gw + DB, g->gwork, g->dgates + sg->row * K, g->zero,
                      pt->dstats + sg->stat * 2 * B + B, g->x + sg->row * D, w, w + DB, &sg->c,
                      &sg->d);
    }
    g->have_forward = false;
    if (split)
        g->finish_pending = true;
    else if (t > 0)
        hmoe_groups_apply(g, t, lr);
    return 0;
}

int hmoe_groups_backward(hmoe_groups_t *g, const struct hmoe_experts *ex, int W,
                         struct hmoe_part *parts, int64_t t, double lr)
{
    return backward(g, ex, W, parts, t, lr, false);
}

bool hmoe_groups_can_split_backward(const struct hmoe_experts *ex)
{
    return ex->can_split && ex->can_split(ex->ctx);
}

int hmoe_groups_backward_input(hmoe_groups_t *g, const struct hmoe_experts *ex, int W,
                               struct hmoe_part *parts)
{
    if (!hmoe_groups_can_split_backward(ex))
        return MOE_ERR_STATE;
    return backward(g, ex, W, parts, 0, 0, true);
}

int hmoe_groups_backward_finish(hmoe_groups_t *g, const struct hmoe_experts *ex, int64_t t,
                                double lr)
{
    if (!g->finish_pending || t <= 0)
        return MOE_ERR_STATE;
    g->finish_pending = false;
    int rc = ex->backward_finish(ex->ctx, g->n_active, g->u_ids, g->u_rows, g->xe, t, lr);
    /* the gates' gradients are complete either way: their update follows */
    hmoe_groups_apply(g, t, lr);
    return rc;
}

void hmoe_groups_apply(hmoe_groups_t *g, int64_t t, double lr)
{
    const size_t D = (size_t)g->D, B = (size_t)g->B, DB = D * B;
    const size_t S1 = moe_fadam_state_size(D, B);
    for (int i = 0; i < g->n; i++) {
        float *w = hmoe_groups_params(g, i), *gr = hmoe_groups_grads(g, i);
        float *st = hmoe_groups_opt_state(g, i);
        moe_fadam_update(w, gr, st, D, B, t, lr, &g->opts);
        moe_fadam_update(w + DB, gr + DB, st + S1, D, B, t, lr, &g->opts);
        memset(gr, 0, sizeof(float) * 2 * DB);
    }
}
