/* Unit tests for common/moe_optim against the textbook formulas computed in
 * double:
 *  - the paper's schedule: linear warm-up, then lr * sqrt(warmup / t);
 *  - Adam for 3 steps (m, v, bias corrections, eps outside the sqrt);
 *  - factored Adam on a 3x4 matrix for 3 steps: R = row means of g^2 + eps1,
 *    C = column means, V = R C^T / mean(R), Vhat = V / (1 - beta2^t),
 *    w -= lr g / (sqrt(Vhat) + eps); and the 1-D case with a full moment;
 *  - Adafactor's options: decay 1 - t^-0.8 without bias correction, update
 *    clipping by 1 / max(1, RMS(U) / d), relative step
 *    min(1e-2, 1/sqrt t) * max(eps2, RMS(w)).
 * And the point of factoring: rows + cols state floats for a matrix. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe_optim.h"
#include "moe_par.h"
#include "test_util.h"

Suite *test_optim_suite(void);

/* ------------------------------------------------------------- schedule */

START_TEST(optim_lr_schedule)
{
    const struct moe_lr_schedule s = {.lr = 1e-3, .warmup = 100};
    const struct {
        int64_t t;
        double want;
    } cases[] = {
        {1, 1e-5},  {2, 2e-5},       {50, 5e-4},      {99, 9.9e-4},
        {100, 1e-3}, {101, 1e-3 * sqrt(100.0 / 101)}, {400, 5e-4}, {10000, 1e-4},
        {0, 1e-5}, /* t < 1 is treated as the first step */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double got = moe_lr_at(&s, cases[i].t);
        ck_assert_msg(fabs(got - cases[i].want) <= 1e-15 * cases[i].want, "t=%lld: %.17g vs %.17g",
                      (long long)cases[i].t, got, cases[i].want);
    }
    /* monotone up to the peak, then down */
    for (int64_t t = 2; t <= 300; t++) {
        if (t <= 100)
            ck_assert(moe_lr_at(&s, t) > moe_lr_at(&s, t - 1));
        else
            ck_assert(moe_lr_at(&s, t) < moe_lr_at(&s, t - 1));
    }
    const struct moe_lr_schedule flat = {.lr = 0.25, .warmup = 0};
    ck_assert(moe_lr_at(&flat, 1) == 0.25 && moe_lr_at(&flat, 123456) == 0.25);
}
END_TEST

/* ----------------------------------------------------------------- Adam */

/* Adam runs chunks of 32768 parameters as moe_par tasks: 100003
 * parameters (four chunks, the last short) give the same bits with 1 and
 * with 3 threads. */
START_TEST(optim_adam_threads_bitwise)
{
    enum { AN = 100003 };
    const struct moe_adam_opts o = {0.9, 0.999, 1e-8};
    float *w[2], *st[2], *g = malloc(sizeof(float) * AN);
    ck_assert_ptr_nonnull(g);
    for (int k = 0; k < 2; k++) {
        w[k] = malloc(sizeof(float) * AN);
        st[k] = calloc(moe_adam_state_size(AN), sizeof(float));
        ck_assert(w[k] && st[k]);
        tu_fill(w[k], AN, 90, 1.0f);
        moe_par_set_threads(k ? 3 : 1);
        for (int t = 1; t <= 3; t++) {
            tu_fill(g, AN, 91 + (uint32_t)t, 1.0f);
            moe_adam_update(w[k], g, st[k], AN, t, 1e-2, &o);
        }
    }
    moe_par_set_threads(1);
    ck_assert_int_eq(memcmp(w[0], w[1], sizeof(float) * AN), 0);
    ck_assert_int_eq(memcmp(st[0], st[1], sizeof(float) * moe_adam_state_size(AN)), 0);
    /* the first and the last parameter moved (the short chunk ran too) */
    tu_fill(g, AN, 90, 1.0f);
    ck_assert(w[0][0] != g[0]);
    ck_assert(w[0][AN - 1] != g[AN - 1]);
    for (int k = 0; k < 2; k++) {
        free(w[k]);
        free(st[k]);
    }
    free(g);
}
END_TEST

START_TEST(optim_adam_three_steps)
{
    enum { N = 6 };
    const struct moe_adam_opts o = {.beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
    const double lr = 0.05;
    float w[N] = {0}, st[2 * N] = {0};
    double wd[N] = {0}, m[N] = {0}, v[N] = {0};
    ck_assert_uint_eq(moe_adam_state_size(N), 2 * N);
    /* g of element 5 is at the scale of eps: eps must sit outside the sqrt
     * of the bias-corrected second moment, where it halves the step. */
    const float gs[3][N] = {{0.5f, -1.0f, 2.0f, 1e-3f, -0.25f, 1e-8f},
                            {0.4f, 1.0f, -2.0f, 2e-3f, 0.0f, 1e-8f},
                            {-0.3f, -1.5f, 1.0f, 1e-3f, 0.5f, 1e-8f}};
    for (int t = 1; t <= 3; t++) {
        moe_adam_update(w, gs[t - 1], st, N, t, lr, &o);
        for (int i = 0; i < N; i++) {
            double g = gs[t - 1][i];
            m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
            v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
            double mhat = m[i] / (1 - pow(o.beta1, t)), vhat = v[i] / (1 - pow(o.beta2, t));
            wd[i] -= lr * mhat / (sqrt(vhat) + o.eps);
        }
        for (int i = 0; i < N; i++) {
            ck_assert_msg(fabs(st[i] - m[i]) <= 1e-6 * fabs(m[i]) + 1e-30, "t=%d m[%d]", t, i);
            ck_assert_msg(fabs(st[N + i] - v[i]) <= 1e-6 * v[i] + 1e-36, "t=%d v[%d]", t, i);
            ck_assert_msg(fabs(w[i] - wd[i]) <= 1e-5 * fabs(wd[i]) + 1e-12,
                          "t=%d w[%d] = %.9g, expected %.9g", t, i, w[i], wd[i]);
        }
    }
    /* first step of Adam is lr * sign(g) for |g| >> eps, and about half of
     * that for |g| = eps: checked through the trajectory above; spot check */
    float w1[1] = {0}, s1[2] = {0};
    const float g1[1] = {1e-8f};
    moe_adam_update(w1, g1, s1, 1, 1, 1.0, &o);
    ck_assert_msg(fabs(w1[0] + 0.5) < 1e-6, "w = %g", w1[0]);
}
END_TEST

/* ---------------------------------------------------- factored Adam ref */

/* Double-precision reference of one factored step. R (rows) and C (cols)
 * are the running averages; cols == 0 is the 1-D case (R is the moment).
 * Returns RMS(U) before clipping. */
static double ref_fadam(double *w, const float *g, double *R, double *C, int rows, int cols,
                        int64_t t, double lr, const struct moe_fadam_opts *o)
{
    const double b2 = o->decay_pow > 0 ? 1.0 - pow((double)t, -o->decay_pow) : o->beta2;
    const double bc = o->decay_pow > 0 ? 1.0 : 1.0 - pow(o->beta2, (double)t);
    const int n = cols ? rows * cols : rows;
    double alpha = lr;
    if (o->relative_step) {
        double ss = 0;
        for (int i = 0; i < n; i++)
            ss += w[i] * w[i];
        alpha = fmin(1e-2, 1.0 / sqrt((double)t)) * fmax(o->eps2, sqrt(ss / n));
    }
    double *U = malloc(sizeof(double) * (size_t)n);
    if (cols == 0) {
        for (int i = 0; i < rows; i++) {
            R[i] = b2 * R[i] + (1 - b2) * ((double)g[i] * g[i] + o->eps1);
            U[i] = g[i] / (sqrt(R[i] / bc) + o->eps);
        }
    } else {
        for (int i = 0; i < rows; i++) {
            double s = 0;
            for (int j = 0; j < cols; j++)
                s += (double)g[i * cols + j] * g[i * cols + j] + o->eps1;
            R[i] = b2 * R[i] + (1 - b2) * s / cols;
        }
        for (int j = 0; j < cols; j++) {
            double s = 0;
            for (int i = 0; i < rows; i++)
                s += (double)g[i * cols + j] * g[i * cols + j] + o->eps1;
            C[j] = b2 * C[j] + (1 - b2) * s / rows;
        }
        double mr = 0;
        for (int i = 0; i < rows; i++)
            mr += R[i];
        mr /= rows;
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) {
                double V = R[i] * C[j] / mr;
                U[i * cols + j] = g[i * cols + j] / (sqrt(V / bc) + o->eps);
            }
    }
    double su = 0;
    for (int i = 0; i < n; i++)
        su += U[i] * U[i];
    const double rms_u = sqrt(su / n);
    const double scale = o->clip > 0 ? 1.0 / fmax(1.0, rms_u / o->clip) : 1.0;
    for (int i = 0; i < n; i++)
        w[i] -= alpha * scale * U[i];
    free(U);
    return rms_u;
}

enum { FR = 3, FC = 4 };

/* Runs `steps` steps from t0 of the implementation and of the reference on
 * a rows x cols matrix (cols == 0: a vector of rows) and compares state and
 * weights after each step. Returns the largest RMS(U) seen. */
static double run_fadam_shape(const struct moe_fadam_opts *o, int rows, int cols, int64_t t0,
                              int steps, double lr, float w_scale, uint32_t stream)
{
    const int n = cols ? rows * cols : rows;
    const size_t ns = moe_fadam_state_size((size_t)rows, (size_t)cols);
    ck_assert_uint_eq(ns, (size_t)(rows + cols));
    float *w = malloc(sizeof(float) * (size_t)n), *g = malloc(sizeof(float) * (size_t)n);
    float *st = calloc(ns, sizeof(float));
    double *wd = malloc(sizeof(double) * (size_t)n), *before = malloc(sizeof(double) * (size_t)n);
    double *moved = calloc((size_t)n, sizeof(double));
    double *R = calloc((size_t)rows, sizeof(double)), *C = calloc((size_t)cols + 1, sizeof(double));
    ck_assert(w && g && st && wd && before && moved && R && C);
    tu_fill(w, (size_t)n, stream, w_scale);
    for (int i = 0; i < n; i++)
        wd[i] = w[i];
    double worst_rms = 0;
    for (int k = 0; k < steps; k++) {
        const int64_t t = t0 + k;
        tu_fill(g, (size_t)n, stream * 7u + (uint32_t)k + 1, 1.0f);
        /* a wide spread of magnitudes across rows and columns */
        for (int i = 0; i < n; i++)
            g[i] *= (float)(1 + (i % 3)) * (cols ? (float)(1 + i / cols) : 1.0f);
        memcpy(before, wd, sizeof(double) * (size_t)n);
        moe_fadam_update(w, g, st, (size_t)rows, (size_t)cols, t, lr, o);
        worst_rms = fmax(worst_rms, ref_fadam(wd, g, R, C, rows, cols, t, lr, o));
        for (int i = 0; i < n; i++)
            moved[i] += fabs(wd[i] - before[i]);
        for (int i = 0; i < rows; i++)
            ck_assert_msg(fabs(st[i] - R[i]) <= 2e-6 * R[i], "t=%lld R[%d] = %.9g, expected %.9g",
                          (long long)t, i, st[i], R[i]);
        for (int j = 0; j < cols; j++)
            ck_assert_msg(fabs(st[rows + j] - C[j]) <= 2e-6 * C[j],
                          "t=%lld C[%d] = %.9g, expected %.9g", (long long)t, j, st[rows + j],
                          C[j]);
        for (int i = 0; i < n; i++)
            ck_assert_msg(fabs(w[i] - wd[i]) <= 1e-5 * moved[i] + 2.5e-7 * fabs(wd[i]),
                          "%dx%d t=%lld w[%d] = %.9g, expected %.9g (moved %g)", rows, cols,
                          (long long)t, i, w[i], wd[i], moved[i]);
    }
    free(w);
    free(g);
    free(st);
    free(wd);
    free(before);
    free(moved);
    free(R);
    free(C);
    return worst_rms;
}

/* The 3x4 matrix, or a vector of 5 when vec. */
static double run_fadam(const struct moe_fadam_opts *o, bool vec, int64_t t0, int steps, double lr,
                        float w_scale, uint32_t stream)
{
    return run_fadam_shape(o, vec ? 5 : FR, vec ? 0 : FC, t0, steps, lr, w_scale, stream);
}

static const struct moe_fadam_opts fadam_base = {
    .beta2 = 0.9, .decay_pow = 0, .eps = 1e-8, .eps1 = 1e-30, .clip = 0,
    .relative_step = false, .eps2 = 1e-3};

START_TEST(optim_fadam_matrix_three_steps)
{
    run_fadam(&fadam_base, false, 1, 3, 0.1, 1.0f, 1);
    /* a large eps1 shows it is added to g^2 inside both means */
    struct moe_fadam_opts o = fadam_base;
    o.eps1 = 0.05;
    run_fadam(&o, false, 1, 3, 0.1, 1.0f, 2);
    /* a large eps shows it is added to sqrt(Vhat) */
    o = fadam_base;
    o.eps = 0.5;
    run_fadam(&o, false, 1, 3, 0.1, 1.0f, 3);
}
END_TEST

/* Rows longer than the 8 double lanes of the sums (with a tail of 5, and
 * 1029 columns), vectors likewise, with and without clipping and relative
 * steps: the vectorised sums must still match the double reference. */
START_TEST(optim_fadam_wide_shapes)
{
    struct moe_fadam_opts o = fadam_base;
    run_fadam_shape(&o, 19, 45, 1, 3, 0.1, 1.0f, 11);
    run_fadam_shape(&o, 3, 1029, 1, 2, 0.1, 1.0f, 12);
    run_fadam_shape(&o, 1029, 0, 1, 3, 0.1, 1.0f, 13);
    o.clip = 0.5;
    o.decay_pow = 0.8;
    ck_assert_double_gt(run_fadam_shape(&o, 19, 45, 1, 3, 0.1, 1.0f, 14), 0.5);
    ck_assert_double_gt(run_fadam_shape(&o, 37, 0, 1, 3, 0.1, 1.0f, 15), 0.5);
    o.relative_step = true;
    run_fadam_shape(&o, 19, 45, 1, 3, 0.1, 1.0f, 16);
}
END_TEST

START_TEST(optim_fadam_first_step_by_hand)
{
    /* t = 1, beta2 = 0.5, eps = 0, eps1 = 0, lr = 1 on a 2x2 matrix
     * g = [[1, 2], [2, 4]] (rank one, so V is exact):
     * R = 0.5 * [2.5, 10], C = 0.5 * [2.5, 10], mean(R) = 3.125,
     * V = R C^T / mean(R) = [[1, 4], [4, 16]] * 0.5, Vhat = V / 0.5 = g^2,
     * so w moves by -g / |g| = -1 everywhere. */
    const struct moe_fadam_opts o = {.beta2 = 0.5, .eps = 0, .eps1 = 0};
    float w[4] = {0, 0, 0, 0}, st[4] = {0};
    const float g[4] = {1, 2, 2, 4};
    moe_fadam_update(w, g, st, 2, 2, 1, 1.0, &o);
    const float R[2] = {1.25f, 5.0f}, C[2] = {1.25f, 5.0f};
    for (int i = 0; i < 2; i++) {
        ck_assert_float_eq_tol(st[i], R[i], 1e-6f);
        ck_assert_float_eq_tol(st[2 + i], C[i], 1e-6f);
    }
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq_tol(w[i], -1.0f, 1e-6f);
}
END_TEST

START_TEST(optim_fadam_vector)
{
    run_fadam(&fadam_base, true, 1, 3, 0.1, 1.0f, 4);
    ck_assert_uint_eq(moe_fadam_state_size(5, 0), 5);
    /* 1-D with beta2 = 0.5, t = 1, eps = 0: Vhat = g^2, w -= lr sign(g) */
    const struct moe_fadam_opts o = {.beta2 = 0.5};
    float w[3] = {1, 1, 1}, st[3] = {0};
    const float g[3] = {3, -0.5f, 1e-3f};
    moe_fadam_update(w, g, st, 3, 0, 1, 0.25, &o);
    ck_assert_float_eq_tol(w[0], 0.75f, 1e-6f);
    ck_assert_float_eq_tol(w[1], 1.25f, 1e-6f);
    ck_assert_float_eq_tol(w[2], 0.75f, 1e-6f);
    ck_assert_float_eq_tol(st[0], 4.5f, 1e-6f);
}
END_TEST

START_TEST(optim_fadam_state_size_is_factored)
{
    ck_assert_uint_eq(moe_fadam_state_size(3, 4), 7);
    ck_assert_uint_eq(moe_fadam_state_size(1024, 512), 1536);
    ck_assert_uint_eq(moe_fadam_state_size(1, 1), 2);
    ck_assert_uint_eq(moe_fadam_state_size(7, 0), 7);
    /* against Adam's 2 * rows * cols for the paper's expert matrices */
    ck_assert_uint_lt(moe_fadam_state_size(1024, 512) * 300, moe_adam_state_size(1024 * 512));
    /* the update writes nothing beyond rows + cols floats */
    float w[12] = {0}, g[12], st[7 + 4];
    tu_fill(g, 12, 9, 1.0f);
    for (int i = 0; i < 11; i++)
        st[i] = i < 7 ? 0.0f : -123.0f;
    moe_fadam_update(w, g, st, 3, 4, 1, 0.1, &fadam_base);
    for (int i = 7; i < 11; i++)
        ck_assert_float_eq(st[i], -123.0f);
}
END_TEST

/* ------------------------------------------------------------ Adafactor */

START_TEST(optim_adafactor_decay_pow)
{
    struct moe_fadam_opts o = fadam_base;
    o.decay_pow = 0.8;
    o.beta2 = 0.5; /* ignored when decay_pow > 0 */
    run_fadam(&o, false, 1, 3, 0.1, 1.0f, 5);
    run_fadam(&o, true, 1, 3, 0.1, 1.0f, 6);
    /* beta2_1 = 0: the first step's state is exactly the mean of g^2, with
     * no bias correction (1 - 0.5^1 would double it) */
    const float g[2] = {3, 4};
    o.eps = 0;
    o.eps1 = 0;
    float st2[2] = {0}, w2[2] = {0};
    moe_fadam_update(w2, g, st2, 2, 0, 1, 1.0, &o);
    ck_assert_float_eq(st2[0], 9.0f);
    ck_assert_float_eq(st2[1], 16.0f);
    ck_assert_float_eq(w2[0], -1.0f);
    ck_assert_float_eq(w2[1], -1.0f);
    /* t = 2: beta2_2 = 1 - 2^-0.8 */
    const double b2 = 1 - pow(2.0, -0.8);
    const float g2[2] = {1, 0};
    moe_fadam_update(w2, g2, st2, 2, 0, 2, 1.0, &o);
    ck_assert(fabs(st2[0] - (b2 * 9 + (1 - b2) * 1)) < 1e-6);
    ck_assert(fabs(st2[1] - b2 * 16) < 1e-5);
    ck_assert(fabs(w2[0] - (-1.0 - 1.0 / sqrt(b2 * 9 + (1 - b2)))) < 1e-6);
    ck_assert_float_eq(w2[1], -1.0f);
}
END_TEST

START_TEST(optim_adafactor_clip)
{
    struct moe_fadam_opts o = fadam_base;
    o.clip = 0.5;
    const double rms = run_fadam(&o, false, 1, 3, 0.1, 1.0f, 7);
    ck_assert_msg(rms > 2 * o.clip, "clipping never active (RMS(U) = %g)", rms);
    run_fadam(&o, true, 1, 3, 0.1, 1.0f, 8);
    /* A threshold far above RMS(U) changes nothing, bitwise. */
    float w1[12], w2[12], s1[7] = {0}, s2[7] = {0}, g[12];
    tu_fill(w1, 12, 10, 1.0f);
    memcpy(w2, w1, sizeof w1);
    tu_fill(g, 12, 11, 1.0f);
    o.clip = 1000;
    moe_fadam_update(w1, g, s1, 3, 4, 1, 0.1, &o);
    moe_fadam_update(w2, g, s2, 3, 4, 1, 0.1, &fadam_base);
    ck_assert_int_eq(memcmp(w1, w2, sizeof w1), 0);
    ck_assert_int_eq(memcmp(s1, s2, sizeof s1), 0);
    /* Clipping bounds the RMS of the applied update by lr * d: one step
     * from zero moments with d = 0.01. */
    o.clip = 0.01;
    float w3[12] = {0}, s3[7] = {0};
    moe_fadam_update(w3, g, s3, 3, 4, 1, 1.0, &o);
    double su = 0;
    for (int i = 0; i < 12; i++)
        su += (double)w3[i] * w3[i];
    ck_assert_msg(fabs(sqrt(su / 12) - 0.01) < 1e-8, "RMS of update %g", sqrt(su / 12));
}
END_TEST

START_TEST(optim_adafactor_relative_step)
{
    struct moe_fadam_opts o = fadam_base;
    o.relative_step = true;
    /* lr is ignored: 123 would blow everything up */
    run_fadam(&o, false, 1, 3, 123.0, 1.0f, 12);
    run_fadam(&o, true, 1, 3, 123.0, 1.0f, 13);
    /* RMS(w) below eps2: eps2 sets the scale */
    run_fadam(&o, false, 1, 3, 123.0, 1e-5f, 14);
    /* late steps: 1/sqrt(t) < 1e-2 once t > 10^4 */
    run_fadam(&o, false, 40000, 3, 123.0, 1.0f, 15);
    /* everything together, as Adafactor ships it */
    o.decay_pow = 0.8;
    o.clip = 1.0;
    run_fadam(&o, false, 1, 3, 123.0, 1.0f, 16);
    run_fadam(&o, false, 90000, 3, 123.0, 0.3f, 17);

    /* By hand: 1-D, t = 1, beta2 = 0.5 (Vhat = g^2), eps = 0: U = sign(g);
     * w = [3, 4] has RMS sqrt(12.5), step = 1e-2 * sqrt(12.5). */
    struct moe_fadam_opts h = {.beta2 = 0.5, .relative_step = true, .eps2 = 1e-3};
    float w[2] = {3, 4}, st[2] = {0};
    const float g[2] = {1, -1};
    moe_fadam_update(w, g, st, 2, 0, 1, 0.0, &h);
    const double step = 1e-2 * sqrt(12.5);
    ck_assert(fabs(w[0] - (3 - step)) < 1e-6);
    ck_assert(fabs(w[1] - (4 + step)) < 1e-6);
    /* t = 10^6: rho = 1e-3; tiny w: eps2 */
    float wt[2] = {1e-6f, -1e-6f}, stt[2] = {0};
    moe_fadam_update(wt, g, stt, 2, 0, 1000000, 0.0, &h);
    /* bias correction 1 - 0.5^1e6 = 1, Vhat = 0.5 g^2: U = sqrt(2) sign(g) */
    ck_assert(fabs(wt[0] - (1e-6 - 1e-3 * 1e-3 * sqrt(2.0))) < 1e-10);
}
END_TEST

Suite *test_optim_suite(void)
{
    Suite *s = suite_create("optim");
    TCase *tc = tcase_create("adam");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, optim_lr_schedule);
    tcase_add_test(tc, optim_adam_three_steps);
    tcase_add_test(tc, optim_adam_threads_bitwise);
    suite_add_tcase(s, tc);
    TCase *tf = tcase_create("fadam");
    tcase_set_timeout(tf, 10);
    tcase_add_test(tf, optim_fadam_matrix_three_steps);
    tcase_add_test(tf, optim_fadam_first_step_by_hand);
    tcase_add_test(tf, optim_fadam_wide_shapes);
    tcase_add_test(tf, optim_fadam_vector);
    tcase_add_test(tf, optim_fadam_state_size_is_factored);
    suite_add_tcase(s, tf);
    TCase *ta = tcase_create("adafactor");
    tcase_set_timeout(ta, 10);
    tcase_add_test(ta, optim_adafactor_decay_pow);
    tcase_add_test(ta, optim_adafactor_clip);
    tcase_add_test(ta, optim_adafactor_relative_step);
    suite_add_tcase(s, ta);
    return s;
}
