/* LSTM forward and backward over an unroll (see lstm.h). */
#include "lstm.h"

#include <math.h>
#include <string.h>

#include "moe_blas.h"

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

size_t lstm_cache_floats(const struct lstm_dims *d)
{
    size_t N = (size_t)d->B * d->T, H = (size_t)d->H;
    return N * 4 * H + N * H + 2 * (size_t)d->B * H;
}

struct lstm_cache lstm_cache_view(float *buf, const struct lstm_dims *d)
{
    size_t N = (size_t)d->B * d->T, H = (size_t)d->H;
    struct lstm_cache c;
    c.acts = buf;
    c.c = c.acts + N * 4 * H;
    c.h0 = c.c + N * H;
    c.c0 = c.h0 + (size_t)d->B * H;
    return c;
}

size_t lstm_work_floats(const struct lstm_dims *d)
{
    size_t N = (size_t)d->B * d->T, H = (size_t)d->H;
    /* dG (N,4H), previous-h matrix (N,H), dh_next and dc_next (B,H) */
    return N * 4 * H + N * H + 2 * (size_t)d->B * H;
}

void lstm_forward(float *h, struct lstm_cache *cache, const float *x, const struct lstm_params *p,
                  const float *h0, const float *c0, const struct lstm_dims *d)
{
    const int B = d->B, T = d->T, H = d->H, G = 4 * d->H, N = B * T;
    memcpy(cache->h0, h0, sizeof(float) * (size_t)B * H);
    memcpy(cache->c0, c0, sizeof(float) * (size_t)B * H);
    /* acts = x W_ih^T + b_ih + b_hh, for all time steps at once */
    float *acts = cache->acts;
    for (int g = 0; g < G; g++)
        acts[g] = p->b_ih[g] + p->b_hh[g];
    for (int r = 1; r < N; r++)
        memcpy(acts + (size_t)r * G, acts, sizeof(float) * (size_t)G);
    moe_sgemm(false, true, N, G, d->I, 1.0f, x, d->I, p->w_ih, d->I, 1.0f, acts, G);

    for (int t = 0; t < T; t++) {
        const float *hp = t == 0 ? cache->h0 : h + (size_t)(t - 1) * H;
        const int ldh = t == 0 ? H : T * H;
        float *at = acts + (size_t)t * G;
        moe_sgemm(false, true, B, G, H, 1.0f, hp, ldh, p->w_hh, H, 1.0f, at, T * G);
        for (int b = 0; b < B; b++) {
            const size_t r = (size_t)b * T + t;
            float *a = acts + r * G;
            const float *cp = t == 0 ? cache->c0 + (size_t)b * H : cache->c + (r - 1) * H;
            float *cr = cache->c + r * H, *hr = h + r * H;
            for (int j = 0; j < H; j++) {
                float ig = sigmoidf(a[j]);
                float fg = sigmoidf(a[H + j]);
                float gg = tanhf(a[2 * H + j]);
                float og = sigmoidf(a[3 * H + j]);
                a[j] = ig;
                a[H + j] = fg;
                a[2 * H + j] = gg;
                a[3 * H + j] = og;
                float c = fg * cp[j] + ig * gg;
                cr[j] = c;
                hr[j] = og * tanhf(c);
            }
        }
    }
}

void lstm_backward(float *dx, const struct lstm_params *dp, float *work, const float *dh,
                   const float *x, const float *h, const struct lstm_cache *cache,
                   const struct lstm_params *p, const struct lstm_dims *d)
{
    const int B = d->B, T = d->T, H = d->H, G = 4 * d->H, N = B * T;
    float *dG = work;
    float *hprev = dG + (size_t)N * G;
    float *dh_next = hprev + (size_t)N * H;
    float *dc_next = dh_next + (size_t)B * H;
    memset(dh_next, 0, sizeof(float) * (size_t)B * H);
    memset(dc_next, 0, sizeof(float) * (size_t)B * H);

    for (int t = T - 1; t >= 0; t--) {
        for (int b = 0; b < B; b++) {
            const size_t r = (size_t)b * T + t;
            const float *a = cache->acts + r * G;
            const float *cr = cache->c + r * H;
            const float *cp = t == 0 ? cache->c0 + (size_t)b * H : cache->c + (r - 1) * H;
            const float *dhr = dh + r * H;
            float *dg = dG + r * G, *dhn = dh_next + (size_t)b * H, *dcn = dc_next + (size_t)b * H;
            for (int j = 0; j < H; j++) {
                float ig = a[j], fg = a[H + j], gg = a[2 * H + j], og = a[3 * H + j];
                float tc = tanhf(cr[j]);
                float dht = dhr[j] + dhn[j];
                float dc = dht * og * (1.0f - tc * tc) + dcn[j];
                dg[j] = dc * gg * ig * (1.0f - ig);
                dg[H + j] = dc * cp[j] * fg * (1.0f - fg);
                dg[2 * H + j] = dc * ig * (1.0f - gg * gg);
                dg[3 * H + j] = dht * tc * og * (1.0f - og);
                dcn[j] = dc * fg;
            }
        }
        if (t > 0)
            moe_sgemm(false, false, B, H, G, 1.0f, dG + (size_t)t * G, T * G, p->w_hh, H, 0.0f,
                      dh_next, H);
    }
    /* hprev row (b,t) = h_{t-1}, or h0 at t = 0; then one GEMM for dW_hh. */
    for (int b = 0; b < B; b++) {
        memcpy(hprev + (size_t)b * T * H, cache->h0 + (size_t)b * H, sizeof(float) * (size_t)H);
        memcpy(hprev + ((size_t)b * T + 1) * H, h + (size_t)b * T * H,
               sizeof(float) * (size_t)(T - 1) * H);
    }
    moe_sgemm(true, false, G, H, N, 1.0f, dG, G, hprev, H, 1.0f, dp->w_hh, H);
    moe_sgemm(true, false, G, d->I, N, 1.0f, dG, G, x, d->I, 1.0f, dp->w_ih, d->I);
    for (int r = 0; r < N; r++) {
        const float *dg = dG + (size_t)r * G;
        for (int g = 0; g < G; g++) {
            dp->b_ih[g] += dg[g];
            dp->b_hh[g] += dg[g];
        }
    }
    moe_sgemm(false, false, N, d->I, G, 1.0f, dG, G, p->w_ih, d->I, 1.0f, dx, d->I);
}

void lstm_final_state(float *h_out, float *c_out, const float *h, const struct lstm_cache *cache,
                      const struct lstm_dims *d)
{
    const int T = d->T, H = d->H;
    for (int b = 0; b < d->B; b++) {
        const size_t r = (size_t)b * T + (T - 1);
        memcpy(h_out + (size_t)b * H, h + r * H, sizeof(float) * (size_t)H);
        memcpy(c_out + (size_t)b * H, cache->c + r * H, sizeof(float) * (size_t)H);
    }
}

void lstm_forward_ref(float *h, float *c_last, const float *x, const struct lstm_params *p,
                      const float *h0, const float *c0, const struct lstm_dims *d)
{
    const int B = d->B, T = d->T, H = d->H, I = d->I;
    for (int b = 0; b < B; b++) {
        float hp[H > 0 ? H : 1], cp[H > 0 ? H : 1], pre[4 * (H > 0 ? H : 1)];
        memcpy(hp, h0 + (size_t)b * H, sizeof(float) * (size_t)H);
        memcpy(cp, c0 + (size_t)b * H, sizeof(float) * (size_t)H);
        for (int t = 0; t < T; t++) {
            const float *xr = x + ((size_t)b * T + t) * I;
            for (int g = 0; g < 4 * H; g++) {
                double s = (double)p->b_ih[g] + p->b_hh[g];
                for (int i = 0; i < I; i++)
                    s += (double)p->w_ih[(size_t)g * I + i] * xr[i];
                for (int j = 0; j < H; j++)
                    s += (double)p->w_hh[(size_t)g * H + j] * hp[j];
                pre[g] = (float)s;
            }
            float *hr = h + ((size_t)b * T + t) * H;
            for (int j = 0; j < H; j++) {
                double ig = 1.0 / (1.0 + exp(-pre[j])), fg = 1.0 / (1.0 + exp(-pre[H + j]));
                double gg = tanh(pre[2 * H + j]), og = 1.0 / (1.0 + exp(-pre[3 * H + j]));
                double c = fg * cp[j] + ig * gg;
                cp[j] = (float)c;
                hr[j] = (float)(og * tanh(c));
            }
            memcpy(hp, hr, sizeof(float) * (size_t)H);
        }
        if (c_last)
            memcpy(c_last + (size_t)b * H, cp, sizeof(float) * (size_t)H);
    }
}
