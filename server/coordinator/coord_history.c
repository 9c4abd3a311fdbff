/* Per-expert history of rows routed and Load (see coord_history.h). */
#include "coord_history.h"

#include <stdlib.h>
#include <string.h>

struct coord_history {
    int E, cap, n;
    int64_t width, first, last;
    double *rows, *load; /* cap x E, column after column */
    int64_t *steps;      /* cap */
};

coord_history_t *coord_history_new(int n_experts, int columns)
{
    if (n_experts < 1 || columns < 2 || columns % 2)
        return NULL;
    coord_history_t *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->E = n_experts;
    h->cap = columns;
    h->width = 1;
    h->first = h->last = -1;
    const size_t cells = (size_t)columns * (size_t)n_experts;
    h->rows = calloc(cells, sizeof(double));
    h->load = calloc(cells, sizeof(double));
    h->steps = calloc((size_t)columns, sizeof(int64_t));
    if (!h->rows || !h->load || !h->steps)
        coord_history_destroy(&h);
    return h;
}

void coord_history_destroy(coord_history_t **hp)
{
    if (!hp || !*hp)
        return;
    free((*hp)->rows);
    free((*hp)->load);
    free((*hp)->steps);
    free(*hp);
    *hp = NULL;
}

/* Columns 2i and 2i+1 become column i; the width doubles. */
static void halve(coord_history_t *h)
{
    const size_t E = (size_t)h->E;
    for (int i = 0; 2 * i < h->n; i++) {
        const int a = 2 * i, b = 2 * i + 1;
        double *ri = h->rows + (size_t)i * E, *li = h->load + (size_t)i * E;
        const double *ra = h->rows + (size_t)a * E, *la = h->load + (size_t)a * E;
        int64_t steps = h->steps[a];
        for (size_t e = 0; e < E; e++) {
            ri[e] = ra[e];
            li[e] = la[e];
        }
        if (b < h->n) {
            const double *rb = h->rows + (size_t)b * E, *lb = h->load + (size_t)b * E;
            for (size_t e = 0; e < E; e++) {
                ri[e] += rb[e];
                li[e] += lb[e];
            }
            steps += h->steps[b];
        }
        h->steps[i] = steps;
    }
    const int kept = (h->n + 1) / 2;
    memset(h->rows + (size_t)kept * E, 0, sizeof(double) * (size_t)(h->cap - kept) * E);
    memset(h->load + (size_t)kept * E, 0, sizeof(double) * (size_t)(h->cap - kept) * E);
    memset(h->steps + kept, 0, sizeof(int64_t) * (size_t)(h->cap - kept));
    h->n = kept;
    h->width *= 2;
}

bool coord_history_add(coord_history_t *h, int64_t step, const float *rows, const float *load)
{
    if (step < 0 || step <= h->last)
        return false;
    if (h->first < 0)
        h->first = step;
    while ((step - h->first) / h->width >= h->cap)
        halve(h);
    const int col = (int)((step - h->first) / h->width);
    double *r = h->rows + (size_t)col * (size_t)h->E, *l = h->load + (size_t)col * (size_t)h->E;
    for (int e = 0; e < h->E; e++) {
        r[e] += rows[e];
        l[e] += load[e];
    }
    h->steps[col]++;
    if (col + 1 > h->n)
        h->n = col + 1;
    h->last = step;
    return true;
}

int coord_history_n_experts(const coord_history_t *h) { return h->E; }
int coord_history_capacity(const coord_history_t *h) { return h->cap; }
int coord_history_columns(const coord_history_t *h) { return h->n; }
int64_t coord_history_width(const coord_history_t *h) { return h->width; }
int64_t coord_history_first_step(const coord_history_t *h) { return h->first; }
int64_t coord_history_last_step(const coord_history_t *h) { return h->last; }
int64_t coord_history_steps(const coord_history_t *h, int col) { return h->steps[col]; }

double coord_history_rows(const coord_history_t *h, int col, int e)
{
    return h->rows[(size_t)col * (size_t)h->E + (size_t)e];
}

double coord_history_load(const coord_history_t *h, int col, int e)
{
    return h->load[(size_t)col * (size_t)h->E + (size_t)e];
}
