/* Adam and factored Adam / Adafactor updates (see moe_optim.h). The sums
 * that feed the statistics are taken in double, in index order, so that the
 * result does not depend on vector width or threads. */
#include "moe_optim.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "moe_par.h"

double moe_lr_at(const struct moe_lr_schedule *s, int64_t t)
{
    if (t < 1)
        t = 1;
    if (s->warmup <= 0)
        return s->lr;
    double a = (double)t / (double)s->warmup;
    double b = sqrt((double)s->warmup / (double)t);
    return s->lr * (a < b ? a : b);
}

size_t moe_adam_state_size(size_t n) { return 2 * n; }

/* Adam is elementwise: chunks of ADAM_CHUNK parameters run as moe_par
 * tasks, each element computed the same way on any thread. */
#define ADAM_CHUNK 32768

struct adam_job {
    float *w, *m, *v;
    const float *g;
    size_t n;
    float b1, b2, omb1, omb2, step, eps_hat;
};

static void adam_chunk(void *ctx, int task)
{
    const struct adam_job *j = ctx;
    const size_t i0 = (size_t)task * ADAM_CHUNK;
    const size_t i1 = i0 + ADAM_CHUNK < j->n ? i0 + ADAM_CHUNK : j->n;
    float *w = j->w, *m = j->m, *v = j->v;
    const float *g = j->g;
    for (size_t i = i0; i < i1; i++) {
        float gi = g[i];
        m[i] = j->b1 * m[i] + j->omb1 * gi;
        v[i] = j->b2 * v[i] + j->omb2 * gi * gi;
        w[i] -= j->step * m[i] / (sqrtf(v[i]) + j->eps_hat);
    }
}

void moe_adam_update(float *w, const float *g, float *state, size_t n, int64_t t, double lr,
                     const struct moe_adam_opts *o)
{
    const double bc1 = 1.0 - pow(o->beta1, (double)t);
    const double bc2 = 1.0 - pow(o->beta2, (double)t);
    /* 1 - beta is formed in double and rounded once: 1.0f - (float)beta
     * would carry beta's rounding (relative 1e-5 of 1 - beta at 0.999).
     * The bias corrections fold into one step size and one epsilon:
     * lr * mhat / (sqrt(vhat) + eps) = step * m / (sqrt(v) + eps_hat). */
    struct adam_job j = {
        .w = w, .m = state, .v = state + n, .g = g, .n = n,
        .b1 = (float)o->beta1, .b2 = (float)o->beta2,
        .omb1 = (float)(1.0 - o->beta1), .omb2 = (float)(1.0 - o->beta2),
        .step = (float)(lr * sqrt(bc2) / bc1), .eps_hat = (float)(o->eps * sqrt(bc2)),
    };
    moe_par_for((int)((n + ADAM_CHUNK - 1) / ADAM_CHUNK), adam_chunk, &j);
}

size_t moe_fadam_state_size(size_t rows, size_t cols) { return cols ? rows + cols : rows; }

static double fadam_beta2(const struct moe_fadam_opts *o, int64_t t)
{
    return o->decay_pow > 0 ? 1.0 - pow((double)t, -o->decay_pow) : o->beta2;
}

/* Sum of squares in double, in a fixed order that vectorises: lane l
 * (of 8) adds the elements l, l + 8, l + 16, ... in turn, and the lanes are
 * added pairwise at the end. Plain C without reassociation, so every
 * build and every thread count gives the same bits. */
static double sumsq(const float *x, size_t n)
{
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            a[l] += (double)x[i + l] * x[i + l];
    for (int l = 0; i < n; i++, l++)
        a[l] += (double)x[i] * x[i];
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* The same lanes for the sum of U^2, U = g / (sqrt(r * c) + eps). */
static double usq(const float *g, const float *c, float r, float eps, size_t n)
{
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            double u = g[i + l] / (sqrtf(r * c[i + l]) + eps);
            a[l] += u * u;
        }
    for (int l = 0; i < n; i++, l++) {
        double u = g[i] / (sqrtf(r * c[i]) + eps);
        a[l] += u * u;
    }
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

static double rms(const float *x, size_t n)
{
    return n ? sqrt(sumsq(x, n) / (double)n) : 0.0;
}

void moe_fadam_decay(float *state, size_t rows, size_t cols, int64_t t,
                     const struct moe_fadam_opts *o)
{
    /* moe_fadam_update's second-moment update with g = 0, operation for
     * operation (g * g + eps1 = eps1; a column sum of zeros adds +0), so
     * that deferring it changes no bit. The parameters do not move: the
     * update g / (sqrt(V) + eps) is 0. */
    const double b2 = fadam_beta2(o, t);
    const float fb2 = (float)b2, omb2 = (float)(1.0 - b2);
    float *R = state, *C = state + rows;
    if (cols == 0) {
        for (size_t i = 0; i < rows; i++)
            R[i] = fb2 * R[i] + omb2 * (0.0f + (float)o->eps1);
        return;
    }
    const float re = omb2 * (float)(0.0 / (double)cols + o->eps1);
    for (size_t i = 0; i < rows; i++)
        R[i] = fb2 * R[i] + re;
    for (size_t j = 0; j < cols; j++)
        C[j] *= fb2;
    if (o->eps1 != 0.0)
        for (size_t j = 0; j < cols; j++)
            C[j] += omb2 * (float)o->eps1;
}

/* moe_fadam_update, and with `zero` the gradient is set to zero in the
 * pass that reads it last (one memory pass fewer than a memset after). */
static void fadam_update(float *w, float *g, bool zero, float *state, size_t rows, size_t cols,
                         int64_t t, double lr, const struct moe_fadam_opts *o)
{
    const double b2 = fadam_beta2(o, t);
    /* With a fixed beta2 the running averages start at zero and are
     * bias-corrected as in Adam; Adafactor's decay has beta2_1 = 0, which
     * needs no correction. */
    const double bc = o->decay_pow > 0 ? 1.0 : 1.0 - pow(o->beta2, (double)t);
    const size_t n = cols ? rows * cols : rows;
    double alpha = lr;
    if (o->relative_step) {
        double rho = fmin(1e-2, 1.0 / sqrt((double)t));
        alpha = rho * fmax(o->eps2, rms(w, n));
    }
    /* As in Adam, 1 - beta2 in double: with Adafactor's decay beta2_t
     * approaches 1 and 1.0f - (float)beta2_t would be off by up to
     * 2^-25 / t^-0.8 relative (3e-4 at t = 1e5). */
    const float fb2 = (float)b2, omb2 = (float)(1.0 - b2);
    float *R = state, *C = state + rows;

    if (cols == 0) {
        for (size_t i = 0; i < rows; i++)
            R[i] = fb2 * R[i] + omb2 * (g[i] * g[i] + (float)o->eps1);
    } else {
        /* Row means, and column means accumulated row after row into C's
         * update, in one pass over g (the row is in cache for the second) */
        const float scale = omb2 / (float)rows;
        for (size_t j = 0; j < cols; j++)
            C[j] *= fb2;
        for (size_t i = 0; i < rows; i++) {
            const float *gr = g + i * cols;
            double s = sumsq(gr, cols);
            R[i] = fb2 * R[i] + omb2 * (float)(s / (double)cols + o->eps1);
            for (size_t j = 0; j < cols; j++)
                C[j] += scale * (gr[j] * gr[j]);
        }
        if (o->eps1 != 0.0)
            for (size_t j = 0; j < cols; j++)
                C[j] += omb2 * (float)o->eps1;
    }

    /* U = g / (sqrt(V / bc) + eps), V = R C^T / mean(R) for matrices. */
    double clip_scale = 1.0;
    const float inv_bc = (float)(1.0 / bc);
    const float eps = (float)o->eps;
    if (o->clip > 0) {
        double s = 0;
        if (cols == 0) {
            s = usq(g, R, inv_bc, eps, rows);
        } else {
            double rm = 0;
            for (size_t i = 0; i < rows; i++)
                rm += R[i];
            rm /= (double)rows;
            for (size_t i = 0; i < rows; i++) {
                float ri = (rm > 0 ? (float)(R[i] / rm) : 0.0f) * inv_bc;
                s += usq(g + i * cols, C, ri, eps, cols);
            }
        }
        double r = n ? sqrt(s / (double)n) : 0.0;
        clip_scale = 1.0 / fmax(1.0, r / o->clip);
    }
    const float step = (float)(alpha * clip_scale);
    if (cols == 0) {
        for (size_t i = 0; i < rows; i++)
            w[i] -= step * g[i] / (sqrtf(R[i] * inv_bc) + eps);
        if (zero)
            memset(g, 0, sizeof(float) * rows);
        return;
    }
    double rm = 0;
    for (size_t i = 0; i < rows; i++)
        rm += R[i];
    rm /= (double)rows;
    for (size_t i = 0; i < rows; i++) {
        float ri = (rm > 0 ? (float)(R[i] / rm) : 0.0f) * inv_bc;
        float *wr = w + i * cols;
        float *gr = g + i * cols;
        if (zero) {
            for (size_t j = 0; j < cols; j++) {
                wr[j] -= step * gr[j] / (sqrtf(ri * C[j]) + eps);
                gr[j] = 0.0f;
            }
        } else {
            for (size_t j = 0; j < cols; j++)
                wr[j] -= step * gr[j] / (sqrtf(ri * C[j]) + eps);
        }
    }
}

void moe_fadam_update(float *w, const float *g, float *state, size_t rows, size_t cols, int64_t t,
                      double lr, const struct moe_fadam_opts *o)
{
    /* g is only read (zero is false) */
    fadam_update(w, (float *)g, false, state, rows, cols, t, lr, o);
}

void moe_fadam_update_zero(float *w, float *g, float *state, size_t rows, size_t cols, int64_t t,
                           double lr, const struct moe_fadam_opts *o)
{
    fadam_update(w, g, true, state, rows, cols, t, lr, o);
}
