/* Softmax cross-entropy over the vocabulary (see softmax_xent.h). */
#include "softmax_xent.h"

#include <math.h>
#include <string.h>

#include "moe_blas.h"

float softmax_fast_expf(float x)
{
    /* e^x = 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2; e^r by a
     * degree-6 Taylor polynomial; 2^n built in the exponent bits. */
    if (x < -87.0f)
        x = -87.0f;
    if (x > 88.0f)
        x = 88.0f;
    const float n = rintf(x * 1.44269504088896341f);
    const float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        float f;
        int32_t i;
    } s = {.i = ((int32_t)n + 127) << 23};
    return p * s.f;
}

double softmax_xent_forward(float *probs, const float *x, const float *W, const float *b,
                            const int32_t *targets, int N, int V, int D)
{
    for (int r = 0; r < N; r++)
        memcpy(probs + (size_t)r * V, b, sizeof(float) * (size_t)V);
    moe_sgemm(false, true, N, V, D, 1.0f, x, D, W, D, 1.0f, probs, V);
    double loss = 0;
    for (int r = 0; r < N; r++) {
        float *p = probs + (size_t)r * V;
        float mx = p[0];
        for (int v = 1; v < V; v++)
            mx = p[v] > mx ? p[v] : mx;
        const float lt = p[targets[r]] - mx;
        float sum = 0.0f;
        for (int v = 0; v < V; v++) {
            p[v] = softmax_fast_expf(p[v] - mx);
            sum += p[v];
        }
        const float inv = 1.0f / sum;
        for (int v = 0; v < V; v++)
            p[v] *= inv;
        /* -log p_t from the logit itself, not from the rounded probability */
        loss += log((double)sum) - (double)lt;
    }
    return loss;
}

void softmax_xent_backward(float *dx, float *dW, float *db, float *probs, const float *x,
                           const float *W, const int32_t *targets, float scale, int N, int V,
                           int D)
{
    for (int r = 0; r < N; r++) {
        float *p = probs + (size_t)r * V;
        p[targets[r]] -= 1.0f;
        for (int v = 0; v < V; v++)
            p[v] *= scale;
        for (int v = 0; v < V; v++)
            db[v] += p[v];
    }
    moe_sgemm(true, false, V, D, N, 1.0f, probs, V, x, D, 1.0f, dW, D);
    moe_sgemm(false, false, N, D, V, 1.0f, probs, V, W, D, 1.0f, dx, D);
}
