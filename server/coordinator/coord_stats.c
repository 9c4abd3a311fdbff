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
    int X;                /* extra values per worker (coord_stats_set_extras) */
    float *sub_x, *g_x;   /* (W*X) their submissions, (X) their sums */
    struct coord_expert_stats *experts;
    struct coord_worker_stats *workers;
    double cv_imp, cv_load, max_mean;
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
    free(s->experts);
    free(s->workers);
    free(s->h_step);
    free(s->h_loss);
    coord_history_destroy(&s->experts_history);
    free(s);
    *sp = NULL;
}

/* CV (not squared) with the balancing loss's population variance. */
static double cv(const float *v, int n)
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
    return sqrt(var / (mean * mean + 1e-10));
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
    double mx = 0, total = 0;
    for (int e = 0; e < E; e++) {
        struct coord_expert_stats *x = &s->experts[e];
        x->rows_last = s->g_rows[e];
        x->rows_total += s->g_rows[e];
        x->importance_last = s->g_imp[e];
        x->load_last = s->g_load[e];
        x->importance_avg = first ? s->g_imp[e] : s->ema * x->importance_avg + (1 - s->ema) * s->g_imp[e];
        x->load_avg = first ? s->g_load[e] : s->ema * x->load_avg + (1 - s->ema) * s->g_load[e];
        mx = s->g_rows[e] > mx ? s->g_rows[e] : mx;
        total += s->g_rows[e];
    }
    s->cv_imp = cv(s->g_imp, E);
    s->cv_load = cv(s->g_load, E);
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
    coord_history_add(s->experts_history, s->current, s->g_rows, s->g_load);
    s->completed = s->current;
    s->current++;
    memset(s->have, 0, sizeof(bool) * (size_t)s->W);
    s->missing = s->W;
}

int coord_stats_set_extras(coord_stats_t *s, int n)
{
    float *sub = calloc((size_t)(n > 0 ? n : 1) * (size_t)s->W, sizeof(float));
    float *g = calloc((size_t)(n > 0 ? n : 1), sizeof(float));
    if (n < 0 || !sub || !g) {
        free(sub);
        free(g);
        return n < 0 ? MOE_ERR_RANGE : MOE_ERR_NOMEM;
    }
    free(s->sub_x);
    free(s->g_x);
    s->sub_x = sub;
    s->g_x = g;
    s->X = n;
    return 0;
}

int coord_stats_n_extras(const coord_stats_t *s) { return s->X; }
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
    if (s->X)
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
double coord_stats_cv_importance(const coord_stats_t *s) { return s->cv_imp; }
double coord_stats_cv_load(const coord_stats_t *s) { return s->cv_load; }
double coord_stats_max_over_mean_rows(const coord_stats_t *s) { return s->max_mean; }

size_t coord_stats_loss_history(const coord_stats_t *s, const int64_t **steps, const double **loss)
{
    *steps = s->h_step;
    *loss = s->h_loss;
    return s->h_n;
}

const coord_history_t *coord_stats_history(const coord_stats_t *s) { return s->experts_history; }
