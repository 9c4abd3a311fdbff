/* Dropout, sigmoid and residual add (see nn_ops.h). */
#include "nn_ops.h"

#include <math.h>

#include "moe_rng.h"

void dropout_forward(float *out, float *mask, const float *in, float p, uint64_t seed, int site,
                     int64_t step, int64_t row0, int N, int D)
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
