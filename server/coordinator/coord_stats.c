/* Balancing statistics of the coordinator (see coord_stats.h). */
#include "coord_stats.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_err.h"

struct coord_stats {
    int E, W;
    double ema;
    int64_t current, completed;
    /* per rank submissions of the step in progress: imp | load | rows */
    float *sub;
    bool *have;
    double *loss_sub;
    int missing;
    float *g_imp, *g_load, *g_rows;
    int A;                /* groups of a hierarchical MoE (0: flat) */
    int X;                /* extra values per worker: 2A */
    float *sub_x, *g_x;   /* (W*X) their submissions, (X) their sums */
    float *load_h;        /* (E + A) Load_H of the last step, then each group's
                           * Importance (hierarchical) */
    struct coord_expert_stats *experts;
    struct coord_worker_stats *workers;
    struct coord_group_stats *groups; /* (A) */
    double cv2_imp, cv2_load, max_mean, cv_gimp, cv_gload;
    /* loss history as a sliding window, kept contiguous by shifting */
    int64_t *h_step;
    double *h_loss;
    size_t h_n, h_cap;
    coord_history_t *experts_history;
};

coord_stats_t *coord_stats_new(int n_experts, int n_workers, double ema, int history)
{
    if (n_experts < 1 || n_workers < 1 || !(ema >= 0 && ema < 1) || history < 1)
        return NULL;
    coord_stats_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->E = n_experts;
    s->W = n_workers;
    s->ema = ema;
    s->current = s->completed = -1;
    s->missing = n_workers;
    const size_t E = (size_t)n_experts, W = (size_t)n_workers;
    s->sub = calloc(3 * E * W, sizeof(float));
    s->have = calloc(W, sizeof(bool));
    s->loss_sub = calloc(W, sizeof(double));
    s->g_imp = calloc(E, sizeof(float));
    s->g_load = calloc(E, sizeof(float));
    s->g_rows = calloc(E, sizeof(float));
    s->experts = calloc(E, sizeof *s->experts);
    s->workers = calloc(W, sizeof *s->workers);
    s->h_cap = (size_t)history;
    s->h_step = calloc(s->h_cap, sizeof(int64_t));
    s->h_loss = calloc(s->h_cap, sizeof(double));
    s->experts_history = coord_history_new(n_experts, COORD_HISTORY_COLUMNS);
    if (!s->experts_history || !s->sub || !s->have || !s->loss_sub || !s->g_imp || !s->g_load || !s->g_rows ||
        !s->experts || !s->workers || !s->h_step || !s->h_loss)
        coord_stats_destroy(&s);
    return s;
}

void coord_stats_destroy(coord_stats_t **sp)
{
    if (!sp || !*sp)
        return;
    coord_stats_t *s = *sp;
    free(s->sub);
    free(s->have);
    free(s->loss_sub);
    free(s->g_imp);
    free(s->g_load);
    free(s->g_rows);
    free(s->sub_x);
    free(s->g_x);
    free(s->load_h);
    free(s->groups);
    free(s->experts);
    free(s->workers);
    free(s->h_step);
    free(s->h_loss);
    coord_history_destroy(&s->experts_history);
    free(s);
    *sp = NULL;
}

/* CV squared with the balancing loss's population variance (as
 * gate_cv_squared computes it). */
static double cv2(const float *v, int n)
{
    const double np = (double)n + 1e-10;
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += v[i];
    const double mean = sum / np;
    double var = 0;
    for (int i = 0; i < n; i++)
        var += ((double)v[i] - mean) * ((double)v[i] - mean);
    var /= np;
    return var / (mean * mean + 1e-10);
}

/* The Load_H of a hierarchical MoE's step and its groups' numbers, from
 * the summed secondary loads and factors (Load_p | |X^(i)|). The product
 * is taken in double and rounded once, as hmoe_layer's load_h. */
static void complete_groups(coord_stats_t *s, bool first)
{
    const int A = s->A, B = s->E / s->A;
    float *gimp = s->load_h + s->E;
    for (int i = 0; i < A; i++) {
        struct coord_group_stats *g = &s->groups[i];
        const double load_p = s->g_x[i], n = s->g_x[A + i];
        double imp = 0, rows = 0;
        for (int j = 0; j < B; j++) {
            const size_t e = (size_t)i * B + j;
            s->load_h[e] = (float)((double)s->g_load[e] * load_p / (n + 1e-10));
            imp += s->g_imp[e];
            rows += s->g_rows[e];
        }
        g->rows_last = n;
        g->rows_total += n;
        g->expert_rows_last = rows;
        g->importance_last = imp;
        g->load_last = load_p;
        g->importance_avg = first ? imp : s->ema * g->importance_avg + (1 - s->ema) * imp;
        g->load_avg = first ? load_p : s->ema * g->load_avg + (1 - s->ema) * load_p;
        gimp[i] = (float)imp;
    }
    s->cv_gimp = sqrt(cv2(gimp, A));
    s->cv_gload = sqrt(cv2(s->g_x, A));
}

static void complete_step(coord_stats_t *s)
{
    const int E = s->E;
    /* sums over workers in rank order */
    for (int e = 0; e < E; e++) {
        float imp = 0, load = 0, rows = 0;
        for (int r = 0; r < s->W; r++) {
            const float *v = s->sub + (size_t)r * 3 * E;
            imp += v[e];
            load += v[E + e];
            rows += v[2 * E + e];
        }
        s->g_imp[e] = imp;
        s->g_load[e] = load;
        s->g_rows[e] = rows;
    }
    for (int i = 0; i < s->X; i++) {
        float x = 0;
        for (int r = 0; r < s->W; r++)
            x += s->sub_x[(size_t)r * s->X + i];
        s->g_x[i] = x;
    }
    const bool first = s->completed < 0;
    if (s->A)
        complete_groups(s, first);
    const float *load = coord_stats_balance_load(s);
    double mx = 0, total = 0;
    for (int e = 0; e < E; e++) {
        struct coord_expert_stats *x = &s->experts[e];
        x->rows_last = s->g_rows[e];
        x->rows_total += s->g_rows[e];
        x->importance_last = s->g_imp[e];
        x->load_last = load[e];
        x->load_group_last = s->g_load[e];
        x->importance_avg = first ? s->g_imp[e] : s->ema * x->importance_avg + (1 - s->ema) * s->g_imp[e];
        x->load_avg = first ? load[e] : s->ema * x->load_avg + (1 - s->ema) * load[e];
        mx = s->g_rows[e] > mx ? s->g_rows[e] : mx;
        total += s->g_rows[e];
    }
    s->cv2_imp = cv2(s->g_imp, E);
    s->cv2_load = cv2(load, E);
    s->max_mean = total > 0 ? mx / (total / E) : 0;
    double loss = 0;
    for (int r = 0; r < s->W; r++)
        loss += s->loss_sub[r];
    loss /= s->W;
    if (s->h_n == s->h_cap) {
        memmove(s->h_step, s->h_step + 1, sizeof(int64_t) * (s->h_cap - 1));
        memmove(s->h_loss, s->h_loss + 1, sizeof(double) * (s->h_cap - 1));
        s->h_n--;
    }
    s->h_step[s->h_n] = s->current;
    s->h_loss[s->h_n] = loss;
    s->h_n++;
    coord_history_add(s->experts_history, s->current, s->g_rows, load);
    s->completed = s->current;
    s->current++;
    memset(s->have, 0, sizeof(bool) * (size_t)s->W);
    s->missing = s->W;
}

int coord_stats_set_groups(coord_stats_t *s, int groups)
{
    if (groups < 1 || s->E % groups)
        return MOE_ERR_RANGE;
    const size_t n = 2 * (size_t)groups;
    float *sub = calloc(n * (size_t)s->W, sizeof(float));
    float *g = calloc(n, sizeof(float));
    float *lh = calloc((size_t)s->E + (size_t)groups, sizeof(float));
    struct coord_group_stats *gs = calloc((size_t)groups, sizeof *gs);
    if (!sub || !g || !lh || !gs) {
        free(sub);
        free(g);
        free(lh);
        free(gs);
        return MOE_ERR_NOMEM;
    }
    free(s->sub_x);
    free(s->g_x);
    free(s->load_h);
    free(s->groups);
    s->sub_x = sub;
    s->g_x = g;
    s->load_h = lh;
    s->groups = gs;
    s->A = groups;
    s->X = (int)n;
    return 0;
}

int coord_stats_n_groups(const coord_stats_t *s) { return s->A; }
int coord_stats_n_extras(const coord_stats_t *s) { return s->X; }
const float *coord_stats_balance_load(const coord_stats_t *s) { return s->A ? s->load_h : s->g_load; }
const struct coord_group_stats *coord_stats_group(const coord_stats_t *s, int g) { return &s->groups[g]; }
double coord_stats_cv2_importance(const coord_stats_t *s) { return s->cv2_imp; }
double coord_stats_cv2_load(const coord_stats_t *s) { return s->cv2_load; }
double coord_stats_cv_group_importance(const coord_stats_t *s) { return s->cv_gimp; }
double coord_stats_cv_group_load(const coord_stats_t *s) { return s->cv_gload; }
const float *coord_stats_global_extras(const coord_stats_t *s) { return s->g_x; }

int coord_stats_submit(coord_stats_t *s, int64_t step, int rank, const float *imp,
                       const float *load, const float *rows, double loss, double tokens_per_sec,
                       char *err, size_t errlen)
{
    return coord_stats_submit_ex(s, step, rank, imp, load, rows, NULL, loss, tokens_per_sec, err,
                                 errlen);
}

int coord_stats_submit_ex(coord_stats_t *s, int64_t step, int rank, const float *imp,
                          const float *load, const float *rows, const float *extras, double loss,
                          double tokens_per_sec, char *err, size_t errlen)
{
    if (rank < 0 || rank >= s->W) {
        moe_err_set(err, errlen, "rank %d is not a worker of this cluster (%d workers)", rank, s->W);
        return MOE_ERR_RANGE;
    }
    if (step < 0 || (s->current >= 0 && step != s->current)) {
        moe_err_set(err, errlen, "statistics of step %lld are %s: the cluster is at step %lld",
                (long long)step, step < s->current ? "stale" : "from the future",
                (long long)s->current);
        return MOE_ERR_STATE;
    }
    if (s->current >= 0 && s->have[rank]) {
        moe_err_set(err, errlen, "duplicate statistics of step %lld from worker %d", (long long)step,
                rank);
        return MOE_ERR_STATE;
    }
    bool finite = isfinite(loss) && isfinite(tokens_per_sec);
    for (int e = 0; e < s->E && finite; e++)
        finite = isfinite(imp[e]) && isfinite(load[e]) && isfinite(rows[e]) && rows[e] >= 0;
    for (int i = 0; i < s->X && finite; i++)
        finite = extras && isfinite(extras[i]) && extras[i] >= 0;
    if (!finite) {
        moe_err_set(err, errlen, "statistics of worker %d at step %lld hold a non-finite or negative value",
                rank, (long long)step);
        return MOE_ERR_FORMAT;
    }
    if (s->current < 0)
        s->current = step;
    float *v = s->sub + (size_t)rank * 3 * s->E;
    memcpy(v, imp, sizeof(float) * (size_t)s->E);
    memcpy(v + s->E, load, sizeof(float) * (size_t)s->E);
    memcpy(v + 2 * s->E, rows, sizeof(float) * (size_t)s->E);
    if (s->X && extras) /* (extras is there when X > 0: checked above) */
        memcpy(s->sub_x + (size_t)rank * s->X, extras, sizeof(float) * (size_t)s->X);
    s->loss_sub[rank] = loss;
    s->have[rank] = true;
    s->workers[rank] = (struct coord_worker_stats){true, step, tokens_per_sec, loss};
    if (--s->missing > 0)
        return 0;
    complete_step(s);
    return 1;
}

void coord_stats_restart(coord_stats_t *s, int64_t step)
{
    s->current = step;
    memset(s->have, 0, sizeof(bool) * (size_t)s->W);
    s->missing = s->W;
}

int64_t coord_stats_current_step(const coord_stats_t *s) { return s->current; }
int64_t coord_stats_completed_step(const coord_stats_t *s) { return s->completed; }
int coord_stats_missing(const coord_stats_t *s) { return s->missing; }
const float *coord_stats_global_importance(const coord_stats_t *s) { return s->g_imp; }
const float *coord_stats_global_load(const coord_stats_t *s) { return s->g_load; }
const float *coord_stats_global_rows(const coord_stats_t *s) { return s->g_rows; }
int coord_stats_n_experts(const coord_stats_t *s) { return s->E; }
int coord_stats_n_workers(const coord_stats_t *s) { return s->W; }
const struct coord_expert_stats *coord_stats_expert(const coord_stats_t *s, int e) { return &s->experts[e]; }
const struct coord_worker_stats *coord_stats_worker(const coord_stats_t *s, int r) { return &s->workers[r]; }
double coord_stats_cv_importance(const coord_stats_t *s) { return sqrt(s->cv2_imp); }
double coord_stats_cv_load(const coord_stats_t *s) { return sqrt(s->cv2_load); }
double coord_stats_max_over_mean_rows(const coord_stats_t *s) { return s->max_mean; }

size_t coord_stats_loss_history(const coord_stats_t *s, const int64_t **steps, const double **loss)
{
    *steps = s->h_step;
    *loss = s->h_loss;
    return s->h_n;
}

const coord_history_t *coord_stats_history(const coord_stats_t *s) { return s->experts_history; }
