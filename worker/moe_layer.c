/* Dispatch and combine (see moe_layer.h). */
#include "moe_layer.h"

#include <stdlib.h>
#include <string.h>

#include "moe_err.h"
#include "moe_tensor.h"

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
