/* Softmax cross-entropy over the vocabulary (see softmax_xent.h). */
#include "softmax_xent.h"

#include <math.h>
#include <string.h>

#include "moe_blas.h"

/* e^x = 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2; e^r by a
 * degree-7 Taylor polynomial; 2^n built in the exponent bits. Branch-free
 * so that the loops calling it vectorise. Degree 6 is not enough: its
 * remainder r^7 / 7! reaches 1.2e-7 at |r| = ln2 / 2, and with rounding the
 * error was 2.5e-7, above the 2e-7 that softmax_xent.h promises. */
static inline float fast_expf(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    /* round to nearest by adding and removing 1.5 * 2^23 */
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } s = {.i = ((int32_t)n + 127) << 23};
    return p * s.f;
}

float softmax_fast_expf(float x) { return fast_expf(x); }

/* Reductions over a row with a fixed number of independent lanes, combined
 * in a fixed order: the compiler can vectorise them without reassociating
 * anything, so the result is the same on every run. */
#define LANES 16

static float row_max(const float *p, int V)
{
    float acc[LANES];
    for (int l = 0; l < LANES; l++)
        acc[l] = p[0];
    int v = 0;
    for (; v + LANES <= V; v += LANES)
        for (int l = 0; l < LANES; l++)
            acc[l] = p[v + l] > acc[l] ? p[v + l] : acc[l];
    float mx = acc[0];
    for (int l = 1; l < LANES; l++)
        mx = acc[l] > mx ? acc[l] : mx;
    for (; v < V; v++)
        mx = p[v] > mx ? p[v] : mx;
    return mx;
}

static float row_sum(const float *p, int V)
{
    float acc[LANES] = {0};
    int v = 0;
    for (; v + LANES <= V; v += LANES)
        for (int l = 0; l < LANES; l++)
            acc[l] += p[v + l];
    float s = 0.0f;
    for (int l = 0; l < LANES; l++)
        s += acc[l];
    for (; v < V; v++)
        s += p[v];
    return s;
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
        const float mx = row_max(p, V);
        const float lt = p[targets[r]] - mx;
        for (int v = 0; v < V; v++)
            p[v] = fast_expf(p[v] - mx);
        const float sum = row_sum(p, V);
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
