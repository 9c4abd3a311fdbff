/* Dropout, sigmoid and residual add (see nn_ops.h). */
#include "nn_ops.h"

#include <math.h>

#include "moe_par.h"
#include "moe_rng.h"

/* Rows per moe_par task of dropout. */
#define DROP_ROWS 32

struct drop_job {
    float *out, *mask;
    const float *in;
    float p, keep;
    uint64_t seed;
    int site, N, D;
    int64_t step, row0;
};

/* The task's rows: their uniforms a row at a time (moe_rng_uniform_row, the
 * same numbers as one moe_rng_uniform per element), then the masks. */
static void dropout_rows(void *ctx, int task)
{
    const struct drop_job *j = ctx;
    int r0, r1;
    moe_par_span(task, DROP_ROWS, j->N, &r0, &r1);
    for (int r = r0; r < r1; r++) {
        const size_t o = (size_t)r * j->D;
        float *m = j->mask + o;
        if (j->p > 0.0f) {
            moe_rng_uniform_row(m, j->seed, MOE_RNG_DROPOUT + (uint32_t)j->site,
                                (uint64_t)j->step, (uint32_t)(j->row0 + r), 0, (size_t)j->D);
            for (int d = 0; d < j->D; d++)
                m[d] = m[d] < j->p ? 0.0f : j->keep;
        } else {
            for (int d = 0; d < j->D; d++)
                m[d] = 1.0f;
        }
        for (int d = 0; d < j->D; d++)
            j->out[o + d] = j->in[o + d] * m[d];
    }
}

void dropout_forward(float *out, float *mask, const float *in, float p, uint64_t seed, int site,
                     int64_t step, int64_t row0, int N, int D)
{
    struct drop_job j = {out, mask, in, p, 1.0f / (1.0f - p), seed, site, N, D, step, row0};
    moe_par_for(moe_par_tasks(N, DROP_ROWS), dropout_rows, &j);
}

void dropout_forward_ref(float *out, float *mask, const float *in, float p, uint64_t seed,
                         int site, int64_t step, int64_t row0, int N, int D)
{
    const float keep = 1.0f / (1.0f - p);
    for (int r = 0; r < N; r++) {
        for (int d = 0; d < D; d++) {
            const size_t i = (size_t)r * D + d;
            float m = 1.0f;
            if (p > 0.0f)
                m = moe_rng_uniform(seed, MOE_RNG_DROPOUT + (uint32_t)site, (uint64_t)step,
                                    (uint32_t)(row0 + r), (uint32_t)d) < p ? 0.0f : keep;
            mask[i] = m;
            out[i] = in[i] * m;
        }
    }
}

void dropout_backward(float *din, const float *dout, const float *mask, int n)
{
    for (int i = 0; i < n; i++)
        din[i] += dout[i] * mask[i];
}

void sigmoid_forward(float *out, const float *in, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = 1.0f / (1.0f + expf(-in[i]));
}

void sigmoid_backward(float *din, const float *dout, const float *out, int n)
{
    for (int i = 0; i < n; i++)
        din[i] += dout[i] * out[i] * (1.0f - out[i]);
}

void residual_add(float *y, const float *x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] += x[i];
}
