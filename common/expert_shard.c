/* Expert shard: storage, step cache and update (see expert_shard.h). */
#include "expert_shard.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_err.h"
#include "moe_par.h"
#include "moe_rng.h"
#include "moe_tensor.h"

struct expert_shard {
    int D, H, n;
    int32_t *ids;       /* sorted */
    size_t P, S;        /* params and optimizer floats per expert */
    float *params, *grads, *opt;
    int64_t *t;         /* step whose update each expert's state includes */
    bool *touched;      /* got a backward since its last update */
    bool keep_grads;    /* grads holds every expert's (else one scratch) */
    struct moe_fadam_opts opts;
    /* cache of the last forward of each MoE layer (c: the selected one,
     * expert_shard_set_layer): its inputs x and, unless recompute, the
     * hidden activations z; dz (and with recompute the recomputed z) are
     * scratch for one expert at a time */
    bool recompute;
    struct fwd_cache {
        int n;
        int32_t *ids;
        int *rows;
        float *x, *z;
        size_t rows_cap; /* rows the x (and z) buffers hold */
        int n_cap;
    } caches[EXPERT_SHARD_LAYERS], *c;
    float *dz, *z1;
    size_t e_rows_cap;  /* rows of one expert the dz (and z1) buffers hold */
    float *dz_all;      /* every row's dz between expert_shard_backward_input and _finish */
    size_t dz_all_cap;  /* rows it holds */
    float *i_z;         /* evaluation scratch (rows, H) */
    size_t i_rows_cap;
};

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

expert_shard_t *expert_shard_new(int D, int H, int n, const int32_t *ids, uint64_t seed,
                                 const struct moe_fadam_opts *opts)
{
    return expert_shard_new_ex(D, H, n, ids, seed, opts, true);
}

double expert_shard_bytes(int D, int H, int n, bool keep_grads)
{
    const double P = (double)expert_ffn_param_count(D, H), S = 3.0 * H + 3.0 * D;
    return 4.0 * ((double)n * (P + S + (keep_grads ? P : 0)) + (keep_grads ? 0 : P));
}

expert_shard_t *expert_shard_new_ex(int D, int H, int n, const int32_t *ids, uint64_t seed,
                                    const struct moe_fadam_opts *opts, bool keep_grads)
{
    if (D <= 0 || H <= 0 || n < 0)
        return NULL;
    expert_shard_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->D = D;
    s->H = H;
    s->n = n;
    s->c = &s->caches[0];
    s->opts = *opts;
    s->P = expert_ffn_param_count(D, H);
    s->S = moe_fadam_state_size((size_t)H, (size_t)D) + (size_t)H +
           moe_fadam_state_size((size_t)D, (size_t)H) + (size_t)D;
    size_t np, ns;
    s->ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    s->t = calloc((size_t)(n ? n : 1), sizeof(int64_t));
    s->touched = calloc((size_t)(n ? n : 1), sizeof(bool));
    if (!s->ids || !s->t || !s->touched || moe_size_mul(s->P, (size_t)n, &np) || moe_size_mul(s->S, (size_t)n, &ns))
        goto fail;
    s->params = moe_alloc_floats(np);
    /* without kept gradients: one expert's worth, for backward_apply */
    s->keep_grads = keep_grads;
    s->grads = moe_alloc_floats(keep_grads ? np : s->P);
    s->opt = moe_alloc_floats(ns);
    if (!s->params || !s->grads || !s->opt)
        goto fail;
    /* memcpy with a NULL pointer is undefined even for 0 bytes: an empty
     * shard may pass ids = NULL. */
    if (n > 0)
        memcpy(s->ids, ids, sizeof(int32_t) * (size_t)n);
    qsort(s->ids, (size_t)n, sizeof(int32_t), cmp_i32);
    for (int i = 1; i < n; i++)
        if (s->ids[i] == s->ids[i - 1] || s->ids[i] < 0)
            goto fail;
    if (n > 0 && s->ids[0] < 0)
        goto fail;
    for (int i = 0; i < n; i++) {
        struct expert_ffn_params p = expert_ffn_view(s->params + s->P * (size_t)i, D, H);
        char name[96];
        const float b1 = 1.0f / sqrtf((float)D), b2 = 1.0f / sqrtf((float)H);
        expert_shard_tensor_name(name, sizeof name, s->ids[i], 0, false);
        moe_rng_fill_uniform(p.w1, (size_t)H * D, name, seed, b1);
        expert_shard_tensor_name(name, sizeof name, s->ids[i], 1, false);
        moe_rng_fill_uniform(p.b1, (size_t)H, name, seed, b1);
        expert_shard_tensor_name(name, sizeof name, s->ids[i], 2, false);
        moe_rng_fill_uniform(p.w2, (size_t)D * H, name, seed, b2);
        expert_shard_tensor_name(name, sizeof name, s->ids[i], 3, false);
        moe_rng_fill_uniform(p.b2, (size_t)D, name, seed, b2);
    }
    return s;
fail:
    expert_shard_destroy(&s);
    return NULL;
}

void expert_shard_destroy(expert_shard_t **sp)
{
    if (!sp || !*sp)
        return;
    expert_shard_t *s = *sp;
    free(s->ids);
    free(s->t);
    free(s->touched);
    moe_free_floats(&s->params);
    moe_free_floats(&s->grads);
    moe_free_floats(&s->opt);
    for (int l = 0; l < EXPERT_SHARD_LAYERS; l++) {
        free(s->caches[l].ids);
        free(s->caches[l].rows);
        moe_free_floats(&s->caches[l].x);
        moe_free_floats(&s->caches[l].z);
    }
    moe_free_floats(&s->dz);
    moe_free_floats(&s->z1);
    moe_free_floats(&s->dz_all);
    s->dz_all_cap = 0;
    moe_free_floats(&s->i_z);
    free(s);
    *sp = NULL;
}

int expert_shard_count(const expert_shard_t *s) { return s->n; }

void expert_shard_dims(const expert_shard_t *s, int *D, int *H)
{
    *D = s->D;
    *H = s->H;
}
int32_t expert_shard_id(const expert_shard_t *s, int i) { return s->ids[i]; }

int expert_shard_find(const expert_shard_t *s, int32_t id)
{
    int lo = 0, hi = s->n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (s->ids[mid] == id)
            return mid;
        if (s->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

float *expert_shard_params(expert_shard_t *s, int i) { return s->params + s->P * (size_t)i; }
float *expert_shard_grads(expert_shard_t *s, int i)
{
    return s->keep_grads ? s->grads + s->P * (size_t)i : s->grads;
}
float *expert_shard_opt_state(expert_shard_t *s, int i) { return s->opt + s->S * (size_t)i; }
int64_t *expert_shard_opt_step(expert_shard_t *s, int i) { return &s->t[i]; }
size_t expert_shard_opt_state_size(const expert_shard_t *s) { return s->S; }

void expert_shard_set_recompute(expert_shard_t *s, bool recompute)
{
    if (s->recompute == recompute)
        return;
    s->recompute = recompute;
    /* the buffers are sized for the other mode: sized again next forward */
    for (int l = 0; l < EXPERT_SHARD_LAYERS; l++) {
        struct fwd_cache *c = &s->caches[l];
        c->n = 0;
        moe_free_floats(&c->x);
        moe_free_floats(&c->z);
        c->rows_cap = 0;
    }
    moe_free_floats(&s->dz);
    moe_free_floats(&s->z1);
    moe_free_floats(&s->dz_all);
    s->dz_all_cap = 0;
    s->e_rows_cap = 0;
}

int expert_shard_set_layer(expert_shard_t *s, int layer)
{
    if (layer < 0 || layer >= EXPERT_SHARD_LAYERS)
        return MOE_ERR_RANGE;
    s->c = &s->caches[layer];
    return 0;
}

bool expert_shard_recompute(const expert_shard_t *s) { return s->recompute; }

/* Validates a batch layout; returns total rows through *total and the
 * largest expert's through *most. */
static int check_batch(const expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                       size_t *total, size_t *most)
{
    size_t sum = 0, mx = 0;
    if (n < 0)
        return MOE_ERR_RANGE;
    for (int e = 0; e < n; e++) {
        if (expert_shard_find(s, ids[e]) < 0)
            return MOE_ERR_NOTFOUND;
        if (rows[e] < 0 || moe_size_add(sum, (size_t)rows[e], &sum))
            return MOE_ERR_RANGE;
        mx = (size_t)rows[e] > mx ? (size_t)rows[e] : mx;
    }
    *total = sum;
    if (most)
        *most = mx;
    return 0;
}

/* Replaces *buf by a buffer of rows x width floats (what it held is not
 * kept: callers fill it again). */
static int grow(float **buf, size_t rows, size_t width)
{
    size_t nf;
    if (moe_size_mul(rows, width, &nf))
        return MOE_ERR_RANGE;
    float *b = moe_alloc_floats(nf);
    if (!b)
        return MOE_ERR_NOMEM;
    moe_free_floats(buf);
    *buf = b;
    return 0;
}

/* The forward cache for `rows` rows (x, and z unless recompute) and the
 * per-expert scratch for `most` rows (dz, and the recomputed z). */
static int reserve(expert_shard_t *s, int n, size_t rows, size_t most)
{
    if (n > s->c->n_cap) {
        int32_t *ids = realloc(s->c->ids, sizeof(int32_t) * (size_t)n);
        if (!ids)
            return MOE_ERR_NOMEM;
        s->c->ids = ids;
        int *r = realloc(s->c->rows, sizeof(int) * (size_t)n);
        if (!r)
            return MOE_ERR_NOMEM;
        s->c->rows = r;
        s->c->n_cap = n;
    }
    int rc;
    if (rows > s->c->rows_cap) {
        if ((rc = grow(&s->c->x, rows, (size_t)s->D)) ||
            (!s->recompute && (rc = grow(&s->c->z, rows, (size_t)s->H))))
            return rc;
        s->c->rows_cap = rows;
    }
    if (most > s->e_rows_cap) {
        if ((rc = grow(&s->dz, most, (size_t)s->H)) ||
            (s->recompute && (rc = grow(&s->z1, most, (size_t)s->H))))
            return rc;
        s->e_rows_cap = most;
    }
    return 0;
}

/* Where expert e's hidden activations (rows at offset off) are: in the
 * cache, or in the one-expert scratch when they are recomputed. */
/* Row `off` of a (rows, w) buffer; an empty batch may come with NULL
 * buffers, and NULL + 0 is undefined behaviour in C. */
static inline float *row_at(float *p, size_t off, int w)
{
    return p ? p + off * (size_t)w : NULL;
}

static inline const float *crow_at(const float *p, size_t off, int w)
{
    return p ? p + off * (size_t)w : NULL;
}

static float *hidden_of(expert_shard_t *s, size_t off)
{
    return s->recompute ? s->z1 : row_at(s->c->z, off, s->H);
}

int expert_shard_forward(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                         const float *x, float *y)
{
    size_t total, most;
    int rc = check_batch(s, n, ids, rows, &total, &most);
    if (rc)
        return rc;
    s->c->n = 0;
    if ((rc = reserve(s, n, total, most)))
        return rc;
    /* An empty batch leaves the cache buffers NULL; memcpy of 0 bytes
     * from or to NULL is still undefined behaviour. */
    if (total > 0)
        memcpy(s->c->x, x, sizeof(float) * total * (size_t)s->D);
    size_t off = 0;
    for (int e = 0; e < n; e++) {
        int li = expert_shard_find(s, ids[e]);
        struct expert_ffn_params p = expert_ffn_view(expert_shard_params(s, li), s->D, s->H);
        expert_ffn_forward(row_at(y, off, s->D), hidden_of(s, off), crow_at(s->c->x, off, s->D),
                           &p, rows[e], s->D, s->H);
        off += (size_t)rows[e];
    }
    if (n > 0) {
        memcpy(s->c->ids, ids, sizeof(int32_t) * (size_t)n);
        memcpy(s->c->rows, rows, sizeof(int) * (size_t)n);
    }
    s->c->n = n;
    return 0;
}

int expert_shard_infer(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                       const float *x, float *y)
{
    size_t total;
    int rc = check_batch(s, n, ids, rows, &total, NULL);
    if (rc)
        return rc;
    if (total > s->i_rows_cap) {
        size_t nz;
        if (moe_size_mul(total, (size_t)s->H, &nz))
            return MOE_ERR_RANGE;
        float *z = moe_alloc_floats(nz);
        if (!z)
            return MOE_ERR_NOMEM;
        moe_free_floats(&s->i_z);
        s->i_z = z;
        s->i_rows_cap = total;
    }
    size_t off = 0;
    for (int e = 0; e < n; e++) {
        int li = expert_shard_find(s, ids[e]);
        struct expert_ffn_params p = expert_ffn_view(expert_shard_params(s, li), s->D, s->H);
        expert_ffn_forward(row_at(y, off, s->D), s->i_z, crow_at(x, off, s->D), &p, rows[e],
                           s->D, s->H);
        off += (size_t)rows[e];
    }
    return 0;
}

static void update_one(expert_shard_t *s, int i, int64_t t, double lr);

/* Whether (n, ids, rows) is the batch of the cached forward. */
static bool is_cached_batch(const expert_shard_t *s, int n, const int32_t *ids, const int *rows)
{
    if (n != s->c->n)
        return false;
    for (int e = 0; e < n; e++)
        if (ids[e] != s->c->ids[e] || rows[e] != s->c->rows[e])
            return false;
    return true;
}

/* Backward of the last forward's batch; with `apply`, each expert's update
 * at step t follows its gradient at once (expert_shard_backward_apply). */
static int backward(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                    const float *dy, float *dx, bool apply, int64_t t, double lr)
{
    if (!is_cached_batch(s, n, ids, rows))
        return MOE_ERR_STATE;
    size_t off = 0;
    for (int e = 0; e < n; e++) {
        int li = expert_shard_find(s, ids[e]);
        struct expert_ffn_params p = expert_ffn_view(expert_shard_params(s, li), s->D, s->H);
        struct expert_ffn_params dp = expert_ffn_view(expert_shard_grads(s, li), s->D, s->H);
        s->touched[li] = true;
        const float *x = crow_at(s->c->x, off, s->D);
        if (s->recompute) /* the forward's operations again: the same bits */
            expert_ffn_hidden(s->z1, x, &p, rows[e], s->D, s->H);
        expert_ffn_backward(row_at(dx, off, s->D), &dp, s->dz, crow_at(dy, off, s->D), x,
                            hidden_of(s, off), &p, rows[e], s->D, s->H);
        if (apply)
            update_one(s, li, t, lr);
        off += (size_t)rows[e];
    }
    if (apply)
        s->c->n = 0;
    return 0;
}

bool expert_shard_can_split_backward(const expert_shard_t *s) { return !s->recompute; }

int expert_shard_backward_input(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                                const float *dy, float *dx)
{
    if (s->recompute || !is_cached_batch(s, n, ids, rows))
        return MOE_ERR_STATE;
    size_t total = 0;
    for (int e = 0; e < n; e++)
        total += (size_t)rows[e];
    if (total > s->dz_all_cap) {
        int rc = grow(&s->dz_all, total, (size_t)s->H);
        if (rc)
            return rc;
        s->dz_all_cap = total;
    }
    size_t off = 0;
    for (int e = 0; e < n; e++) {
        const int li = expert_shard_find(s, ids[e]);
        const struct expert_ffn_params p =
            expert_ffn_view(expert_shard_params(s, li), s->D, s->H);
        expert_ffn_backward_input(row_at(dx, off, s->D), row_at(s->dz_all, off, s->H),
                                  crow_at(dy, off, s->D), hidden_of(s, off), &p, rows[e], s->D,
                                  s->H);
        off += (size_t)rows[e];
    }
    return 0;
}

int expert_shard_backward_finish(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                                 const float *dy, int64_t t, double lr)
{
    if (s->recompute || !is_cached_batch(s, n, ids, rows))
        return MOE_ERR_STATE;
    size_t off = 0;
    for (int e = 0; e < n; e++) {
        const int li = expert_shard_find(s, ids[e]);
        const struct expert_ffn_params dp =
            expert_ffn_view(expert_shard_grads(s, li), s->D, s->H);
        s->touched[li] = true;
        expert_ffn_backward_weights(&dp, crow_at(dy, off, s->D), crow_at(s->c->x, off, s->D),
                                    hidden_of(s, off), row_at(s->dz_all, off, s->H), rows[e],
                                    s->D, s->H);
        update_one(s, li, t, lr);
        off += (size_t)rows[e];
    }
    s->c->n = 0;
    return 0;
}

int expert_shard_backward(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                          const float *dy, float *dx)
{
    return backward(s, n, ids, rows, dy, dx, false, 0, 0);
}

/* Where tensor `part` of an expert (w1, b1, w2, b2) lies: its offset in
 * the parameter and gradient blocks and in the optimizer state, and its
 * shape (cols 0 for the 1-D biases), from the layout of expert_shard_part. */
struct part_place {
    size_t off, soff, rows, cols;
};

static struct part_place place_of(const expert_shard_t *s, int part)
{
    struct part_place pl = {0, 0, 0, 0};
    for (int q = 0; q <= part; q++) {
        const char *suffix;
        int ndim;
        int64_t shape[2];
        size_t state;
        expert_shard_part(q, s->D, s->H, &suffix, &ndim, shape, &state);
        pl.rows = (size_t)shape[0];
        pl.cols = (size_t)shape[1];
        if (q < part) {
            pl.off += pl.rows * (ndim == 2 ? pl.cols : 1);
            pl.soff += state;
        }
    }
    return pl;
}

/* Brings expert i's second moments up to step `upto` (the decays of the
 * steps it got no rows in, in order; bitwise what updating it with a zero
 * gradient every step would have done). */
static void catch_up(expert_shard_t *s, int i, int64_t upto)
{
    float *st = expert_shard_opt_state(s, i);
    for (int64_t u = s->t[i] + 1; u <= upto; u++)
        for (int part = 0; part < EXPERT_PARTS; part++) {
            const struct part_place pl = place_of(s, part);
            moe_fadam_decay(st + pl.soff, pl.rows, pl.cols, u, &s->opts);
        }
    if (upto > s->t[i])
        s->t[i] = upto;
}

void expert_shard_flush(expert_shard_t *s, int64_t step)
{
    for (int i = 0; i < s->n; i++)
        catch_up(s, i, step);
}

struct update_job {
    expert_shard_t *s;
    int i;
    int64_t t;
    double lr;
};

/* One of the expert's four tensors (the two matrices first): its update,
 * then its gradient is zeroed. Tensors are independent, so the result does
 * not depend on which thread runs which. */
static void update_part(void *ctx, int task)
{
    static const int order[EXPERT_PARTS] = {0, 2, 1, 3};
    const struct update_job *j = ctx;
    expert_shard_t *s = j->s;
    const struct part_place pl = place_of(s, order[task]);
    float *g = expert_shard_grads(s, j->i) + pl.off;
    moe_fadam_update_zero(expert_shard_params(s, j->i) + pl.off, g,
                          expert_shard_opt_state(s, j->i) + pl.soff, pl.rows, pl.cols, j->t,
                          j->lr, &s->opts);
}

/* Factored Adam on expert i with its gradients at step t, after the
 * decays of the steps it skipped; then its gradients are zeroed. The four
 * tensors run as moe_par tasks. */
static void update_one(expert_shard_t *s, int i, int64_t t, double lr)
{
    catch_up(s, i, t - 1);
    struct update_job j = {s, i, t, lr};
    moe_par_for(EXPERT_PARTS, update_part, &j);
    s->t[i] = t;
    s->touched[i] = false;
}

void expert_shard_apply(expert_shard_t *s, int64_t t, double lr)
{
    for (int i = 0; i < s->n; i++) {
        /* An expert without rows costs nothing now: with a zero gradient
         * only its second moments would decay, which catch_up replays
         * when it is next touched (or a checkpoint flushes). */
        if (s->touched[i])
            update_one(s, i, t, lr);
    }
    for (int l = 0; l < EXPERT_SHARD_LAYERS; l++)
        s->caches[l].n = 0;
}

int expert_shard_backward_apply(expert_shard_t *s, int n, const int32_t *ids, const int *rows,
                                const float *dy, float *dx, int64_t t, double lr)
{
    return backward(s, n, ids, rows, dy, dx, true, t, lr);
}

void expert_shard_zero_grad(expert_shard_t *s)
{
    memset(s->grads, 0, sizeof(float) * s->P * (size_t)(s->keep_grads ? s->n : 1));
    memset(s->touched, 0, sizeof(bool) * (size_t)(s->n ? s->n : 1));
}

void expert_shard_part(int part, int D, int H, const char **suffix, int *ndim, int64_t shape[2],
                       size_t *state_floats)
{
    static const char *const names[EXPERT_PARTS] = {"w1.weight", "w1.bias", "w2.weight",
                                                    "w2.bias"};
    *suffix = names[part];
    *ndim = part == 0 || part == 2 ? 2 : 1;
    shape[0] = part <= 1 ? H : D;
    shape[1] = part == 0 ? D : part == 2 ? H : 0;
    *state_floats = part == 0 || part == 2 ? (size_t)(D + H) : part == 1 ? (size_t)H : (size_t)D;
}

/* Experts per group of this process's model: 0 for a flat MoE. */
static int names_group_size;

void expert_shard_set_group_size(int experts_per_group)
{
    names_group_size = experts_per_group > 0 ? experts_per_group : 0;
}

int expert_shard_group_size(void) { return names_group_size; }

/* Digits of a decimal number (no leading zero, at most 9) then '.': their
 * count, or 0. */
static size_t id_digits(const char *d)
{
    size_t n = 0;
    while (d[n] >= '0' && d[n] <= '9')
        n++;
    return n == 0 || n > 9 || d[n] != '.' || (n > 1 && d[0] == '0') ? 0 : n;
}

int expert_shard_parse_name(const char *name, long *id)
{
    static const char flat[] = "moe.experts.", groups[] = "moe.groups.", mid[] = ".experts.";
    const int b = names_group_size;
    if (b == 0 || strncmp(name, groups, sizeof groups - 1) != 0) {
        if (strncmp(name, flat, sizeof flat - 1) != 0)
            return 0;
        const char *d = name + sizeof flat - 1;
        const size_t n = id_digits(d);
        if (n == 0 || b > 0)
            return -1;
        *id = strtol(d, NULL, 10);
        return 1;
    }
    const char *d = name + sizeof groups - 1;
    const size_t ng = id_digits(d);
    if (ng == 0)
        return -1;
    if (strncmp(d + ng, mid, sizeof mid - 1) != 0)
        return 0; /* a group's own tensor: its gate */
    const char *e = d + ng + sizeof mid - 1;
    const size_t ne = id_digits(e);
    const long g = strtol(d, NULL, 10), j = ne ? strtol(e, NULL, 10) : -1;
    if (ne == 0 || j >= b)
        return -1;
    *id = g * b + j;
    return 1;
}

void expert_shard_tensor_name(char *buf, size_t cap, int32_t id, int part, bool fadam)
{
    const char *suffix;
    int ndim;
    int64_t shape[2];
    size_t nst;
    expert_shard_part(part, 1, 1, &suffix, &ndim, shape, &nst);
    const int b = names_group_size;
    if (b > 0)
        snprintf(buf, cap, "moe.groups.%d.experts.%d.%s%s", (int)(id / b), (int)(id % b), suffix,
                 fadam ? ".fadam" : "");
    else
        snprintf(buf, cap, "moe.experts.%d.%s%s", (int)id, suffix, fadam ? ".fadam" : "");
}
