/* Unit tests for common/moe_vmath.h: each function against double libm
 * over dense sweeps of its working range, with the error bounds the header
 * states; the edges (underflow, overflow, NaN, exact points); and the same
 * bits from a vectorised loop as from one call at a time. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moe_vmath.h"
#include "test_util.h"

Suite *test_vmath_suite(void);

/* |y - ref| in units of the last place of ref rounded to float */
static double ulps(float y, double ref)
{
    const float r = fabsf((float)ref);
    const double u = (double)nextafterf(r, INFINITY) - (double)r;
    return fabs((double)y - ref) / u;
}

static float one_exp(float x) { return moe_vexpf(x); }
static float one_log(float x) { return moe_vlogf(x); }
static float one_cos(float x) { return moe_vcos_turns(x); }
static float one_softplus(float x) { return moe_vsoftplusf(x); }
static float one_sigmoid(float x) { return moe_vsigmoidf(x); }
static float one_phi(float x) { return moe_vphif(x); }

static double ref_softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
static double ref_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* The largest error in ulps of f against ref over x0 .. x1 in n steps and
 * the float just above each step (dense enough to see every polynomial
 * segment, cheap enough for a unit test); where it is, into *at. */
static double worst_ulps(float (*f)(float), double (*ref)(double), double x0, double x1, int n,
                         float *at)
{
    double worst = 0;
    for (int i = 0; i <= n; i++) {
        const float step = (float)(x0 + (x1 - x0) * (double)i / n);
        const float xs[2] = {step, nextafterf(step, INFINITY)};
        for (int k = 0; k < 2; k++) {
            const double e = ulps(f(xs[k]), ref((double)xs[k]));
            if (e > worst) {
                worst = e;
                *at = xs[k];
            }
        }
    }
    return worst;
}

START_TEST(vmath_exp_within_one_ulp)
{
    float at = 0;
    const double worst = worst_ulps(one_exp, exp, -87.0, 88.7, 400000, &at);
    ck_assert_msg(worst <= 1.0, "exp: %.3f ulp at %.9g", worst, at);
    /* exact points */
    ck_assert(moe_vexpf(0.0f) == 1.0f);
    ck_assert(moe_vexpf(-0.0f) == 1.0f);
}
END_TEST

START_TEST(vmath_exp_edges)
{
    /* gradual underflow: within one subnormal step of the true value */
    for (int i = 0; i <= 20000; i++) {
        const float x = (float)(-103.0 + 15.5 * i / 20000);
        const double ref = exp((double)x);
        ck_assert_msg(fabs(moe_vexpf(x) - ref) <= 1.5e-45, "exp(%.9g) = %.9g, expected %.9g", x,
                      moe_vexpf(x), ref);
    }
    ck_assert(moe_vexpf(-104.5f) == 0.0f);
    ck_assert(moe_vexpf(-1e30f) == 0.0f);
    ck_assert(moe_vexpf(-INFINITY) == 0.0f);
    /* overflow: the largest finite result, then infinity */
    ck_assert(isfinite(moe_vexpf(88.72f)));
    ck_assert(ulps(moe_vexpf(88.72f), exp((double)88.72f)) <= 1.0);
    ck_assert(isinf(moe_vexpf(88.73f)));
    ck_assert(isinf(moe_vexpf(1e30f)));
    ck_assert(isinf(moe_vexpf(INFINITY)));
    ck_assert(isnan(moe_vexpf(NAN)));
}
END_TEST

START_TEST(vmath_log_within_one_ulp)
{
    /* the gaussian noise's range, [2^-24, 2], densely; then the whole
     * range of normal floats by powers */
    float at = 0;
    double worst = worst_ulps(one_log, log, 0x1p-24, 2.0, 400000, &at);
    for (float x = 0x1p-126f; x < 0x1p127f; x *= 1.000123f) {
        const double e = ulps(moe_vlogf(x), log((double)x));
        if (e > worst) {
            worst = e;
            at = x;
        }
    }
    ck_assert_msg(worst <= 1.0, "log: %.3f ulp at %.9g", worst, at);
    ck_assert(moe_vlogf(1.0f) == 0.0f);
    ck_assert(moe_vlogf(2.0f) == (float)log(2.0));
}
END_TEST

START_TEST(vmath_cos_turns_every_noise_input)
{
    /* every u the gaussian noise can give: k / 2^24 */
    double worst = 0;
    for (uint32_t k = 0; k < (1u << 24); k++) {
        const float u = (float)k * (1.0f / 16777216.0f);
        const double e = fabs(moe_vcos_turns(u) - cos(6.283185307179586476925 * (double)u));
        worst = e > worst ? e : worst;
    }
    ck_assert_msg(worst <= 1.2e-7, "cos: %.3g", worst);
    /* quadrants land exactly */
    ck_assert(moe_vcos_turns(0.0f) == 1.0f);
    ck_assert(moe_vcos_turns(0.25f) == 0.0f);
    ck_assert(moe_vcos_turns(0.5f) == -1.0f);
    ck_assert(moe_vcos_turns(0.75f) == 0.0f);
    ck_assert(moe_vcos_turns(-0.5f) == -1.0f);
    ck_assert(moe_vcos_turns(3.0f) == 1.0f);
}
END_TEST

START_TEST(vmath_softplus_sigmoid)
{
    float at = 0;
    double worst = worst_ulps(one_softplus, ref_softplus, -87.0, 100.0, 400000, &at);
    ck_assert_msg(worst <= 2.0, "softplus: %.3f ulp at %.9g", worst, at);
    worst = worst_ulps(one_sigmoid, ref_sigmoid, -80.0, 100.0, 400000, &at);
    ck_assert_msg(worst <= 3.0, "sigmoid: %.3f ulp at %.9g", worst, at);
    /* far below: e^x itself, down to 0 */
    ck_assert(fabs(moe_vsoftplusf(-95.0f) - exp(-95.0)) <= 1.5e-45);
    ck_assert(moe_vsoftplusf(-200.0f) == 0.0f);
    ck_assert(moe_vsoftplusf(1e30f) == 1e30f);
    ck_assert(moe_vsigmoidf(-200.0f) == 0.0f);
    ck_assert(moe_vsigmoidf(200.0f) == 1.0f);
    ck_assert(moe_vsigmoidf(0.0f) == 0.5f);
    ck_assert(isnan(moe_vsoftplusf(NAN)));
    ck_assert(isnan(moe_vsigmoidf(NAN)));
}
END_TEST

START_TEST(vmath_phi)
{
    double wabs = 0, wrel = 0, wabs_u = 0, wrel_u = 0;
    for (int i = 0; i <= 400000; i++) {
        const float u = (float)(-10.0 + 20.0 * i / 400000);
        const double ref = 0.5 * erfc(-(double)u);
        const double ea = fabs(moe_vphif(u) - ref);
        if (ea > wabs) {
            wabs = ea;
            wabs_u = u;
        }
        /* the lower tail keeps its relative accuracy */
        if (u <= 0 && u >= -5 && ea / ref > wrel) {
            wrel = ea / ref;
            wrel_u = u;
        }
    }
    ck_assert_msg(wabs <= 3e-7, "Phi: %.3g absolute at %.9g", wabs, wabs_u);
    ck_assert_msg(wrel <= 1e-4, "Phi: %.3g relative at %.9g", wrel, wrel_u);
    ck_assert(moe_vphif(-20.0f) == 0.0f);
    ck_assert(moe_vphif(20.0f) == 1.0f);
    ck_assert(moe_vphif(-INFINITY) == 0.0f);
    ck_assert(moe_vphif(INFINITY) == 1.0f);
    ck_assert(isnan(moe_vphif(NAN)));
}
END_TEST

START_TEST(vmath_loop_equals_single_calls)
{
    enum { N = 4099 };
    float *x = malloc(N * sizeof(float)), *pos = malloc(N * sizeof(float));
    float *y = malloc(6 * N * sizeof(float));
    ck_assert(x && pos && y);
    tu_fill(x, N, 3, 40.0f);
    for (int i = 0; i < N; i++)
        pos[i] = fabsf(x[i]) * 0.05f + 0x1p-24f;
    /* loops the compiler vectorises at -O3 */
    for (int i = 0; i < N; i++)
        y[i] = moe_vexpf(x[i]);
    for (int i = 0; i < N; i++)
        y[N + i] = moe_vlogf(pos[i]);
    for (int i = 0; i < N; i++)
        y[2 * N + i] = moe_vcos_turns(x[i]);
    for (int i = 0; i < N; i++)
        y[3 * N + i] = moe_vsoftplusf(x[i]);
    for (int i = 0; i < N; i++)
        y[4 * N + i] = moe_vsigmoidf(x[i]);
    for (int i = 0; i < N; i++)
        y[5 * N + i] = moe_vphif(x[i] * 0.1f);
    /* one call at a time, through pointers the compiler cannot see through */
    float (*volatile f[6])(float) = {one_exp, one_log, one_cos, one_softplus, one_sigmoid, one_phi};
    for (int k = 0; k < 6; k++)
        for (int i = 0; i < N; i++) {
            const float in = k == 1 ? pos[i] : k == 5 ? x[i] * 0.1f : x[i];
            const float a = y[(size_t)k * N + (size_t)i], b = f[k](in);
            ck_assert_msg(memcmp(&a, &b, sizeof a) == 0, "function %d, element %d: %a vs %a", k,
                          i, a, b);
        }
    free(x);
    free(pos);
    free(y);
}
END_TEST

Suite *test_vmath_suite(void)
{
    Suite *s = suite_create("vmath");
    TCase *tc = tcase_create("accuracy");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, vmath_exp_within_one_ulp);
    tcase_add_test(tc, vmath_exp_edges);
    tcase_add_test(tc, vmath_log_within_one_ulp);
    tcase_add_test(tc, vmath_cos_turns_every_noise_input);
    tcase_add_test(tc, vmath_softplus_sigmoid);
    tcase_add_test(tc, vmath_phi);
    tcase_add_test(tc, vmath_loop_equals_single_calls);
    suite_add_tcase(s, tc);
    return s;
}
