/* Unit tests for worker/softmax_xent: the fast exp against expf over its
 * whole documented range (relative error < 2e-7, exact at 0), and the
 * forward pass (probabilities and the summed -log p(target)) against a
 * naive computation in double, including logits large enough to overflow
 * a softmax that did not subtract the maximum. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe_par.h"
#include "moe_tensor.h"
#include "softmax_xent.h"
#include "test_util.h"

Suite *test_softmax_xent_suite(void);

START_TEST(sx_fast_expf_accuracy)
{
    /* Dense sweep of [-87, 88] in steps of 2^-14 (2.9 million points, every
     * one exactly representable), plus the end points. */
    double worst = 0;
    float worst_x = 0;
    long count = 0;
    for (long i = 0;; i++) {
        const float x = -87.0f + (float)i * (1.0f / 16384.0f);
        if (x > 88.0f)
            break;
        const float got = softmax_fast_expf(x), want = expf(x);
        const double rel = fabs((double)got - want) / want;
        if (!(rel <= worst)) {
            worst = rel;
            worst_x = x;
        }
        count++;
    }
    ck_assert_int_gt(count, 2800000);
    ck_assert_msg(worst < 2e-7, "relative error %.3g at x = %.9g", worst, worst_x);
    /* and at points between the grid, near 0 where softmax spends its time */
    float u[100000];
    tu_fill(u, 100000, 5, 1.0f);
    for (int i = 0; i < 100000; i++) {
        const float x = u[i] * (i % 2 ? 10.0f : 0.01f);
        const double rel = fabs((double)softmax_fast_expf(x) - expf(x)) / expf(x);
        ck_assert_msg(rel < 2e-7, "relative error %.3g at x = %.9g", rel, x);
    }
    ck_assert(softmax_fast_expf(0.0f) == 1.0f);
    ck_assert(softmax_fast_expf(-0.0f) == 1.0f);
    /* the ends stay finite and normal */
    ck_assert(isnormal(softmax_fast_expf(-87.0f)) && isfinite(softmax_fast_expf(88.0f)));
}
END_TEST

enum { N = 6, V = 13, D = 5 };

struct sx {
    float x[N * D], W[V * D], b[V], probs[N * V];
    int32_t t[N];
};

static void sx_init(struct sx *s, float scale, uint32_t stream)
{
    tu_fill(s->x, N * D, stream, 1.0f);
    tu_fill(s->W, V * D, stream + 1, scale);
    tu_fill(s->b, V, stream + 2, scale);
    const int32_t t[N] = {0, V - 1, 3, 7, 7, 12};
    memcpy(s->t, t, sizeof t);
}

/* -sum log softmax(target) and the probabilities, in double. */
static double naive(const struct sx *s, double *probs)
{
    double loss = 0;
    for (int r = 0; r < N; r++) {
        double z[V], mx = -INFINITY, sum = 0;
        for (int v = 0; v < V; v++) {
            z[v] = s->b[v];
            for (int d = 0; d < D; d++)
                z[v] += (double)s->x[r * D + d] * s->W[v * D + d];
            mx = fmax(mx, z[v]);
        }
        for (int v = 0; v < V; v++)
            sum += exp(z[v] - mx);
        for (int v = 0; v < V; v++)
            probs[r * V + v] = exp(z[v] - mx) / sum;
        loss += mx + log(sum) - z[s->t[r]];
    }
    return loss;
}

static void check_forward(float scale, uint32_t stream)
{
    struct sx s;
    sx_init(&s, scale, stream);
    double pd[N * V];
    const double want = naive(&s, pd);
    const double got = softmax_xent_forward(s.probs, s.x, s.W, s.b, s.t, N, V, D);
    ck_assert_msg(isfinite(got), "loss %g", got);
    /* float logits of magnitude ~scale: absolute error ~ scale * 1e-6 */
    ck_assert_msg(fabs(got - want) <= 1e-5 * fabs(want) + 1e-6 * scale * N,
                  "scale %g: loss %.9g, expected %.9g", scale, got, want);
    for (int r = 0; r < N; r++) {
        double sum = 0;
        for (int v = 0; v < V; v++) {
            const double p = s.probs[r * V + v], q = pd[r * V + v];
            ck_assert(p >= 0 && p <= 1);
            ck_assert_msg(fabs(p - q) <= 1e-5 * q + 1e-6 * scale * q + 1e-30,
                          "scale %g: p[%d][%d] = %.9g, expected %.9g", scale, r, v, p, q);
            sum += p;
        }
        ck_assert_msg(fabs(sum - 1.0) < 1e-6, "row %d sums to %.9g", r, sum);
    }
}

START_TEST(sx_forward_matches_naive)
{
    check_forward(0.5f, 10);
    check_forward(3.0f, 20);
    /* logits of several hundred: exp would overflow without the max shift */
    check_forward(150.0f, 30);
}
END_TEST

START_TEST(sx_forward_uniform_by_hand)
{
    /* W = 0, b = 0: every probability is 1/V and the loss is N log V. */
    struct sx s;
    sx_init(&s, 0.0f, 40);
    memset(s.W, 0, sizeof s.W);
    memset(s.b, 0, sizeof s.b);
    const double loss = softmax_xent_forward(s.probs, s.x, s.W, s.b, s.t, N, V, D);
    ck_assert(fabs(loss - N * log((double)V)) < 1e-12 * N * log((double)V));
    for (int i = 0; i < N * V; i++)
        ck_assert_float_eq_tol(s.probs[i], 1.0f / V, 1e-8f);
    /* a bias of log 2 on the target's logit alone: p_t = 2 / (V + 1) */
    s.b[3] = logf(2.0f);
    const int32_t t3[N] = {3, 3, 3, 3, 3, 3};
    memcpy(s.t, t3, sizeof t3);
    const double l2 = softmax_xent_forward(s.probs, s.x, s.W, s.b, s.t, N, V, D);
    ck_assert(fabs(l2 - N * -log(2.0 / (V + 1))) < 1e-6);
    ck_assert_float_eq_tol(s.probs[3], 2.0f / (V + 1), 1e-7f);
}
END_TEST

START_TEST(sx_backward_dlogits)
{
    /* After backward, probs holds scale * (p - onehot(target)); db is its
     * column sum, added onto what was there. */
    struct sx s;
    sx_init(&s, 1.0f, 50);
    softmax_xent_forward(s.probs, s.x, s.W, s.b, s.t, N, V, D);
    float p0[N * V], db[V], dW[V * D] = {0}, dx[N * D] = {0};
    memcpy(p0, s.probs, sizeof p0);
    for (int v = 0; v < V; v++)
        db[v] = 1.0f;
    const float scale = 0.25f;
    softmax_xent_backward(dx, dW, db, s.probs, s.x, s.W, s.t, scale, N, V, D);
    for (int v = 0; v < V; v++) {
        double col = 0;
        for (int r = 0; r < N; r++) {
            const float want = (p0[r * V + v] - (s.t[r] == v ? 1.0f : 0.0f)) * scale;
            ck_assert_float_eq(s.probs[r * V + v], want);
            col += want;
        }
        ck_assert(fabs(db[v] - (1.0 + col)) < 1e-6);
    }
    /* dx = dlogits W */
    for (int r = 0; r < N; r++)
        for (int d = 0; d < D; d++) {
            double want = 0;
            for (int v = 0; v < V; v++)
                want += (double)s.probs[r * V + v] * s.W[v * D + d];
            ck_assert(fabs(dx[r * D + d] - want) < 1e-6);
        }
}
END_TEST

/* Training's fused pass (forward_grad, then backward_dlogits) gives the
 * same loss, dlogits and gradients, bit for bit, as forward then backward. */
START_TEST(sx_fused_equals_forward_backward)
{
    enum { BN = 37, BV = 3001, BD = 9 };
    float *x = malloc(sizeof(float) * BN * BD), *W = malloc(sizeof(float) * BV * BD),
          *b = malloc(sizeof(float) * BV);
    int32_t *t = malloc(sizeof(int32_t) * BN);
    ck_assert(x && W && b && t);
    tu_fill(x, BN * BD, 73, 1.0f);
    tu_fill(W, BV * BD, 74, 1.0f);
    tu_fill(b, BV, 75, 1.0f);
    for (int r = 0; r < BN; r++)
        t[r] = (r * 389) % BV;
    float *pr[2], *dx[2], *dW[2], *db[2];
    double loss[2];
    const float scale = 1.0f / 37.0f;
    for (int k = 0; k < 2; k++) {
        pr[k] = malloc(sizeof(float) * BN * BV);
        dx[k] = calloc(BN * BD, sizeof(float));
        dW[k] = calloc(BV * BD, sizeof(float));
        db[k] = calloc(BV, sizeof(float));
        ck_assert(pr[k] && dx[k] && dW[k] && db[k]);
    }
    loss[0] = softmax_xent_forward(pr[0], x, W, b, t, BN, BV, BD);
    softmax_xent_backward(dx[0], dW[0], db[0], pr[0], x, W, t, scale, BN, BV, BD);
    loss[1] = softmax_xent_forward_grad(pr[1], x, W, b, t, scale, BN, BV, BD);
    softmax_xent_backward_dlogits(dx[1], dW[1], db[1], pr[1], x, W, BN, BV, BD);
    ck_assert(loss[0] == loss[1]);
    ck_assert_int_eq(memcmp(pr[0], pr[1], sizeof(float) * BN * BV), 0);
    ck_assert_int_eq(memcmp(db[0], db[1], sizeof(float) * BV), 0);
    ck_assert_int_eq(memcmp(dW[0], dW[1], sizeof(float) * BV * BD), 0);
    ck_assert_int_eq(memcmp(dx[0], dx[1], sizeof(float) * BN * BD), 0);
    /* dlogits of a row sum to 0 (p sums to 1, minus the one-hot) */
    double rs = 0;
    for (int v = 0; v < BV; v++)
        rs += pr[1][v];
    ck_assert(fabs(rs) < 1e-6);
    ck_assert(pr[1][t[0]] < 0.0f);
    for (int k = 0; k < 2; k++) {
        free(pr[k]);
        free(dx[k]);
        free(dW[k]);
        free(db[k]);
    }
    free(x);
    free(W);
    free(b);
    free(t);
}
END_TEST

/* Rows run as moe_par tasks of 16 and the bias gradient as tasks of 2048
 * columns: 100 rows over 5000 words give the same loss, dlogits and
 * gradients, bit for bit, with 1 and with 3 threads. */
START_TEST(sx_threads_bitwise)
{
    enum { BN = 100, BV = 5000, BD = 7 };
    float *x = malloc(sizeof(float) * BN * BD), *W = malloc(sizeof(float) * BV * BD),
          *b = malloc(sizeof(float) * BV);
    int32_t *t = malloc(sizeof(int32_t) * BN);
    ck_assert(x && W && b && t);
    tu_fill(x, BN * BD, 70, 1.0f);
    tu_fill(W, BV * BD, 71, 1.0f);
    tu_fill(b, BV, 72, 1.0f);
    for (int r = 0; r < BN; r++)
        t[r] = (r * 997) % BV;
    float *probs[2], *dx[2], *dW[2], *db[2];
    double loss[2];
    for (int k = 0; k < 2; k++) {
        probs[k] = malloc(sizeof(float) * BN * BV);
        dx[k] = calloc(BN * BD, sizeof(float));
        dW[k] = calloc(BV * BD, sizeof(float));
        db[k] = calloc(BV, sizeof(float));
        ck_assert(probs[k] && dx[k] && dW[k] && db[k]);
        moe_par_set_threads(k ? 3 : 1);
        loss[k] = softmax_xent_forward(probs[k], x, W, b, t, BN, BV, BD);
        softmax_xent_backward(dx[k], dW[k], db[k], probs[k], x, W, t, 0.01f, BN, BV, BD);
    }
    moe_par_set_threads(1);
    ck_assert(loss[0] == loss[1]);
    ck_assert_double_gt(loss[0], 0.1 * BN); /* -log p over 5000 words */
    ck_assert_int_eq(memcmp(probs[0], probs[1], sizeof(float) * BN * BV), 0);
    ck_assert_int_eq(memcmp(db[0], db[1], sizeof(float) * BV), 0);
    ck_assert_int_eq(memcmp(dW[0], dW[1], sizeof(float) * BV * BD), 0);
    ck_assert_int_eq(memcmp(dx[0], dx[1], sizeof(float) * BN * BD), 0);
    for (int k = 0; k < 2; k++) {
        free(probs[k]);
        free(dx[k]);
        free(dW[k]);
        free(db[k]);
    }
    free(x);
    free(W);
    free(b);
    free(t);
}
END_TEST

Suite *test_softmax_xent_suite(void)
{
    Suite *s = suite_create("softmax_xent");
    TCase *te = tcase_create("expf");
    tcase_set_timeout(te, 60);
    tcase_add_test(te, sx_fast_expf_accuracy);
    suite_add_tcase(s, te);
    TCase *tc = tcase_create("forward");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, sx_forward_matches_naive);
    tcase_add_test(tc, sx_forward_uniform_by_hand);
    tcase_add_test(tc, sx_backward_dlogits);
    tcase_add_test(tc, sx_threads_bitwise);
    tcase_add_test(tc, sx_fused_equals_forward_backward);
    suite_add_tcase(s, tc);
    return s;
}
