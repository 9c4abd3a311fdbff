/* Unit tests for worker/softmax_xent (its exp, moe_vexpf, is tested in
 * test_vmath): the forward pass (probabilities and the summed -log p(target)) against a
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

/* A layer of n rows over v words of width d with random inputs, and two
 * sets of outputs to compare bitwise. */
struct sx_pair {
    int n, v, d;
    float *x, *W, *b;
    int32_t *t;
    float *pr[2], *dx[2], *dW[2], *db[2];
    double loss[2];
};

static void pair_init(struct sx_pair *c, int n, int v, int d, uint32_t stream, int32_t tstep)
{
    *c = (struct sx_pair){.n = n, .v = v, .d = d};
    c->x = malloc(sizeof(float) * (size_t)n * d);
    c->W = malloc(sizeof(float) * (size_t)v * d);
    c->b = malloc(sizeof(float) * (size_t)v);
    c->t = malloc(sizeof(int32_t) * (size_t)n);
    ck_assert(c->x && c->W && c->b && c->t);
    tu_fill(c->x, (size_t)n * d, stream, 1.0f);
    tu_fill(c->W, (size_t)v * d, stream + 1, 1.0f);
    tu_fill(c->b, (size_t)v, stream + 2, 1.0f);
    for (int r = 0; r < n; r++)
        c->t[r] = (int32_t)(((int64_t)r * tstep) % v);
    for (int k = 0; k < 2; k++) {
        c->pr[k] = malloc(sizeof(float) * (size_t)n * v);
        c->dx[k] = calloc((size_t)n * d, sizeof(float));
        c->dW[k] = calloc((size_t)v * d, sizeof(float));
        c->db[k] = calloc((size_t)v, sizeof(float));
        ck_assert(c->pr[k] && c->dx[k] && c->dW[k] && c->db[k]);
    }
}

/* Both sets equal, bit for bit; then freed. */
static void pair_check_free(struct sx_pair *c)
{
    const size_t n = (size_t)c->n, v = (size_t)c->v, d = (size_t)c->d;
    ck_assert(c->loss[0] == c->loss[1]);
    ck_assert_int_eq(memcmp(c->pr[0], c->pr[1], sizeof(float) * n * v), 0);
    ck_assert_int_eq(memcmp(c->db[0], c->db[1], sizeof(float) * v), 0);
    ck_assert_int_eq(memcmp(c->dW[0], c->dW[1], sizeof(float) * v * d), 0);
    ck_assert_int_eq(memcmp(c->dx[0], c->dx[1], sizeof(float) * n * d), 0);
    for (int k = 0; k < 2; k++) {
        free(c->pr[k]);
        free(c->dx[k]);
        free(c->dW[k]);
        free(c->db[k]);
    }
    free(c->x);
    free(c->W);
    free(c->b);
    free(c->t);
}

/* Training's fused pass (forward_grad, then backward_dlogits) gives the
 * same loss, dlogits and gradients, bit for bit, as forward then backward. */
START_TEST(sx_fused_equals_forward_backward)
{
    struct sx_pair c;
    pair_init(&c, 37, 3001, 9, 73, 389);
    const float scale = 1.0f / 37.0f;
    c.loss[0] = softmax_xent_forward(c.pr[0], c.x, c.W, c.b, c.t, c.n, c.v, c.d);
    softmax_xent_backward(c.dx[0], c.dW[0], c.db[0], c.pr[0], c.x, c.W, c.t, scale, c.n, c.v, c.d);
    c.loss[1] = softmax_xent_forward_grad(c.pr[1], c.x, c.W, c.b, c.t, scale, c.n, c.v, c.d);
    softmax_xent_backward_dlogits(c.dx[1], c.dW[1], c.db[1], c.pr[1], c.x, c.W, c.n, c.v, c.d);
    /* dlogits of a row sum to 0 (p sums to 1, minus the one-hot) */
    double rs = 0;
    for (int v = 0; v < c.v; v++)
        rs += c.pr[1][v];
    ck_assert(fabs(rs) < 1e-6);
    ck_assert(c.pr[1][c.t[0]] < 0.0f);
    pair_check_free(&c);
}
END_TEST

/* Rows run as moe_par tasks of 16 and the bias gradient as tasks of 256
 * columns: 100 rows over 5000 words give the same loss, dlogits and
 * gradients, bit for bit, with 1 and with 3 threads. */
START_TEST(sx_threads_bitwise)
{
    struct sx_pair c;
    pair_init(&c, 100, 5000, 7, 70, 997);
    for (int k = 0; k < 2; k++) {
        moe_par_set_threads(k ? 3 : 1);
        c.loss[k] = softmax_xent_forward(c.pr[k], c.x, c.W, c.b, c.t, c.n, c.v, c.d);
        softmax_xent_backward(c.dx[k], c.dW[k], c.db[k], c.pr[k], c.x, c.W, c.t, 0.01f, c.n, c.v,
                              c.d);
    }
    moe_par_set_threads(1);
    ck_assert_double_gt(c.loss[0], 0.1 * c.n); /* -log p over 5000 words */
    pair_check_free(&c);
}
END_TEST

Suite *test_softmax_xent_suite(void)
{
    Suite *s = suite_create("softmax_xent");
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
