/* Unit tests for worker/lstm: the batched forward (one input GEMM, one
 * recurrent GEMM per step through a row stride) against the per-sequence
 * plain-loop reference, the final state taken from rows t = T-1 of the
 * b-major layout, and truncated BPTT's state hand-over: two unrolls of T
 * carrying (h, c) equal one unroll of 2T; recomputed gates and cells, and
 * 1 or 3 threads, give the same bits. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lstm.h"
#include "moe_blas.h"
#include "moe_par.h"
#include "moe_tensor.h"
#include "test_util.h"

Suite *test_lstm_suite(void);

struct lfix {
    struct lstm_dims d;
    float *w, *x, *h0, *c0, *h, *href, *cref, *cbuf;
    struct lstm_params p;
    struct lstm_cache cache;
};

static void lfix_init(struct lfix *f, int B, int T, int I, int H, uint32_t stream)
{
    f->d = (struct lstm_dims){B, T, I, H};
    const size_t G = 4 * (size_t)H, N = (size_t)B * T;
    const size_t nw = G * I + G * H + 2 * G;
    f->w = moe_alloc_floats(nw);
    f->x = moe_alloc_floats(N * I);
    f->h0 = moe_alloc_floats((size_t)B * H);
    f->c0 = moe_alloc_floats((size_t)B * H);
    f->h = moe_alloc_floats(N * H);
    f->href = moe_alloc_floats(N * H);
    f->cref = moe_alloc_floats((size_t)B * H);
    f->cbuf = moe_alloc_floats(lstm_cache_floats(&f->d));
    ck_assert_ptr_nonnull(f->cbuf);
    tu_fill(f->w, nw, stream, 0.5f);
    tu_fill(f->x, N * I, stream + 1, 1.0f);
    tu_fill(f->h0, (size_t)B * H, stream + 2, 0.5f);
    tu_fill(f->c0, (size_t)B * H, stream + 3, 1.0f);
    f->p = (struct lstm_params){f->w, f->w + G * I, f->w + G * I + G * H, f->w + G * I + G * H + G};
    f->cache = lstm_cache_view(f->cbuf, &f->d);
}

static void lfix_free(struct lfix *f)
{
    float **all[] = {&f->w, &f->x, &f->h0, &f->c0, &f->h, &f->href, &f->cref, &f->cbuf};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        moe_free_floats(all[i]);
}

/* max |a - b| relative to max(|b|, 1e-2); h and c are O(0.1 .. 1). */
static double rel_err(const float *a, const float *b, size_t n)
{
    return tu_max_rel_err(a, b, n, 1e-2);
}

START_TEST(lstm_cache_layout)
{
    const struct lstm_dims d = {3, 5, 4, 6};
    const size_t N = 15, H = 6;
    ck_assert_uint_eq(lstm_cache_floats(&d), N * 4 * H + N * H + 2 * 3 * H);
    float buf[15 * 24 + 15 * 6 + 36];
    struct lstm_cache c = lstm_cache_view(buf, &d);
    ck_assert_ptr_eq(c.acts, buf);
    ck_assert_ptr_eq(c.c, buf + N * 4 * H);
    ck_assert_ptr_eq(c.h0, buf + N * 5 * H);
    ck_assert_ptr_eq(c.c0, buf + N * 5 * H + 3 * H);
    ck_assert_ptr_eq(c.c0 + 3 * H, buf + lstm_cache_floats(&d));
}
END_TEST

static void check_vs_ref(int B, int T, int I, int H, uint32_t stream)
{
    struct lfix f;
    lfix_init(&f, B, T, I, H, stream);
    const size_t N = (size_t)B * T;
    lstm_forward(f.h, &f.cache, f.x, &f.p, f.h0, f.c0, &f.d);
    lstm_forward_ref(f.href, f.cref, f.x, &f.p, f.h0, f.c0, &f.d);
    const double eh = rel_err(f.h, f.href, N * H);
    ck_assert_msg(eh < 1e-5, "B=%d T=%d: h error %g", B, T, eh);
    /* the initial state is copied into the cache */
    ck_assert_int_eq(memcmp(f.cache.h0, f.h0, sizeof(float) * B * H), 0);
    ck_assert_int_eq(memcmp(f.cache.c0, f.c0, sizeof(float) * B * H), 0);
    /* final state: rows t = T-1 of h and of the cell cache */
    float *hT = malloc(sizeof(float) * B * H), *cT = malloc(sizeof(float) * B * H);
    lstm_final_state(hT, cT, f.h, &f.cache, &f.d);
    for (int b = 0; b < B; b++) {
        const size_t r = (size_t)b * T + (T - 1);
        ck_assert_int_eq(memcmp(hT + b * H, f.h + r * H, sizeof(float) * H), 0);
        ck_assert_int_eq(memcmp(cT + b * H, f.cache.c + r * H, sizeof(float) * H), 0);
    }
    const double ec = rel_err(cT, f.cref, (size_t)B * H);
    ck_assert_msg(ec < 1e-5, "B=%d T=%d: final c error %g", B, T, ec);
    /* activated gates are in range: sigmoids in (0,1), g in (-1,1) */
    for (size_t r = 0; r < N; r++)
        for (int j = 0; j < 4 * H; j++) {
            const float a = f.cache.acts[r * 4 * H + j];
            if (j >= 2 * H && j < 3 * H)
                ck_assert(a > -1.0f && a < 1.0f);
            else
                ck_assert(a > 0.0f && a < 1.0f);
        }
    free(hT);
    free(cT);
    lfix_free(&f);
}

START_TEST(lstm_forward_matches_ref)
{
    check_vs_ref(3, 5, 4, 6, 1);
    check_vs_ref(1, 1, 4, 6, 2);
    check_vs_ref(1, 1, 1, 1, 3);
    check_vs_ref(4, 9, 7, 33, 4);
}
END_TEST

START_TEST(lstm_one_step_by_hand)
{
    /* B = T = I = H = 1, all weights 0 but the biases: pre-activations are
     * b_ih + b_hh = (i, f, g, o) = (0, ln 3, 0, 0) + (0, 0, 0, 0):
     * i = 0.5, f = 0.75, g = 0, o = 0.5; c = 0.75 c0; h = 0.5 tanh(c). */
    const struct lstm_dims d = {1, 1, 1, 1};
    float w[4 + 4 + 8] = {0};
    w[8 + 1] = logf(3.0f);
    const struct lstm_params p = {w, w + 4, w + 8, w + 12};
    float cbuf[4 + 1 + 2], x[1] = {5.0f}, h0[1] = {0.25f}, c0[1] = {2.0f}, h[1];
    struct lstm_cache c = lstm_cache_view(cbuf, &d);
    lstm_forward(h, &c, x, &p, h0, c0, &d);
    ck_assert_float_eq_tol(c.c[0], 1.5f, 1e-6f);
    ck_assert_float_eq_tol(h[0], 0.5f * tanhf(1.5f), 1e-6f);
    ck_assert_float_eq_tol(c.acts[0], 0.5f, 1e-7f);
    ck_assert_float_eq_tol(c.acts[1], 0.75f, 1e-6f);
    ck_assert_float_eq(c.acts[2], 0.0f);
    ck_assert_float_eq_tol(c.acts[3], 0.5f, 1e-7f);
}
END_TEST

START_TEST(lstm_two_unrolls_equal_one)
{
    /* x of the long unroll is (B, 2T, I) b-major; the two short unrolls see
     * its first and second halves of each sequence. */
    enum { B = 3, T = 4, I = 5, H = 7 };
    struct lfix l, s1, s2;
    lfix_init(&l, B, 2 * T, I, H, 10);
    lfix_init(&s1, B, T, I, H, 10); /* same weights: same stream */
    lfix_init(&s2, B, T, I, H, 10);
    ck_assert_int_eq(memcmp(l.w, s1.w, sizeof(float) * (4 * H * (I + H + 2))), 0);
    for (int b = 0; b < B; b++) {
        memcpy(s1.x + (size_t)b * T * I, l.x + (size_t)b * 2 * T * I, sizeof(float) * T * I);
        memcpy(s2.x + (size_t)b * T * I, l.x + ((size_t)b * 2 * T + T) * I, sizeof(float) * T * I);
    }
    lstm_forward(l.h, &l.cache, l.x, &l.p, l.h0, l.c0, &l.d);
    lstm_forward(s1.h, &s1.cache, s1.x, &s1.p, l.h0, l.c0, &s1.d);
    float hT[B * H], cT[B * H];
    lstm_final_state(hT, cT, s1.h, &s1.cache, &s1.d);
    lstm_forward(s2.h, &s2.cache, s2.x, &s2.p, hT, cT, &s2.d);
    double worst = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < 2 * T; t++) {
            const float *got = t < T ? s1.h + ((size_t)b * T + t) * H
                                     : s2.h + ((size_t)b * T + t - T) * H;
            const float *gc = t < T ? s1.cache.c + ((size_t)b * T + t) * H
                                    : s2.cache.c + ((size_t)b * T + t - T) * H;
            const float *want = l.h + ((size_t)b * 2 * T + t) * H;
            const float *wc = l.cache.c + ((size_t)b * 2 * T + t) * H;
            for (int j = 0; j < H; j++) {
                worst = fmax(worst, fabs(got[j] - want[j]));
                worst = fmax(worst, fabs(gc[j] - wc[j]));
            }
        }
    ck_assert_msg(worst <= 1e-6, "two unrolls differ from one by %g", worst);
    /* and the final states agree */
    float hL[B * H], cL[B * H], h2[B * H], c2[B * H];
    lstm_final_state(hL, cL, l.h, &l.cache, &l.d);
    lstm_final_state(h2, c2, s2.h, &s2.cache, &s2.d);
    for (int i = 0; i < B * H; i++)
        ck_assert(fabs(hL[i] - h2[i]) <= 1e-6 && fabs(cL[i] - c2[i]) <= 1e-6);
    lfix_free(&l);
    lfix_free(&s1);
    lfix_free(&s2);
}
END_TEST

START_TEST(lstm_sequences_are_independent)
{
    /* Sequence b of a batch of 3 equals the same sequence run alone. */
    enum { B = 3, T = 6, I = 4, H = 5 };
    struct lfix f, one;
    lfix_init(&f, B, T, I, H, 20);
    lfix_init(&one, 1, T, I, H, 20);
    lstm_forward(f.h, &f.cache, f.x, &f.p, f.h0, f.c0, &f.d);
    for (int b = 0; b < B; b++) {
        memcpy(one.x, f.x + (size_t)b * T * I, sizeof(float) * T * I);
        lstm_forward(one.h, &one.cache, one.x, &one.p, f.h0 + b * H, f.c0 + b * H, &one.d);
        for (int i = 0; i < T * H; i++)
            ck_assert_msg(fabs(one.h[i] - f.h[(size_t)b * T * H + i]) <= 1e-6,
                          "sequence %d element %d", b, i);
    }
    lfix_free(&f);
    lfix_free(&one);
}
END_TEST

/* One forward and backward of the fixture: h, the cache, the input and
 * parameter gradients. With `recompute`, the backward first recomputes the
 * gates and cells into its own workspace (where lstm_backward then works in
 * place), as --recompute all does. */
struct lrun {
    float *dx, *dp, *work;
};

static void lrun_do(struct lrun *o, struct lfix *f, const float *dh, bool recompute)
{
    const struct lstm_dims *d = &f->d;
    const size_t G = 4 * (size_t)d->H, N = (size_t)d->B * d->T;
    const size_t np = G * d->I + G * d->H + 2 * G;
    o->dx = moe_alloc_floats(N * d->I);
    o->dp = moe_alloc_floats(np);
    o->work = moe_alloc_floats(lstm_work_floats(d));
    const struct lstm_params g = {o->dp, o->dp + G * d->I, o->dp + G * d->I + G * d->H,
                                  o->dp + G * d->I + G * d->H + G};
    lstm_forward(f->h, &f->cache, f->x, &f->p, f->h0, f->c0, d);
    struct lstm_cache c = f->cache;
    if (recompute) {
        c.acts = o->work;
        c.c = o->work + N * G;
        lstm_recompute(&c, f->x, f->h, &f->p, d);
        ck_assert_int_eq(memcmp(c.acts, f->cache.acts, sizeof(float) * N * G), 0);
        ck_assert_int_eq(memcmp(c.c, f->cache.c, sizeof(float) * N * d->H), 0);
    }
    lstm_backward(o->dx, &g, o->work, dh, f->x, f->h, &c, &f->p, d);
}

static void lrun_free(struct lrun *o)
{
    moe_free_floats(&o->dx);
    moe_free_floats(&o->dp);
    moe_free_floats(&o->work);
}

/* Recomputing the gates and cells in the backward (lstm_recompute, then
 * lstm_backward in place over them) gives the same bits as keeping them,
 * and the gate passes (moe_par tasks over sequences) give the same bits
 * with 1 and 3 threads; the real threaded BLAS runs the products. */
START_TEST(lstm_recompute_and_threads_same_bits)
{
    enum { B = 19, T = 7, I = 40, H = 48 };
    const size_t G = 4 * H, N = (size_t)B * T, np = G * I + G * H + 2 * G;
    float *dh = moe_alloc_floats(N * H);
    tu_fill(dh, N * H, 77, 0.5f);
    moe_blas_set_threads(2);
    struct lfix f;
    lfix_init(&f, B, T, I, H, 30);
    struct lrun keep, redo, one;
    lrun_do(&keep, &f, dh, false);
    lrun_do(&redo, &f, dh, true);
    moe_par_set_threads(3);
    struct lfix f3;
    lfix_init(&f3, B, T, I, H, 30);
    lrun_do(&one, &f3, dh, true);
    moe_blas_set_threads(1);
    ck_assert_int_eq(memcmp(f.h, f3.h, sizeof(float) * N * H), 0);
    const struct lrun *other[2] = {&redo, &one};
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(memcmp(keep.dx, other[k]->dx, sizeof(float) * N * I), 0);
        ck_assert_int_eq(memcmp(keep.dp, other[k]->dp, sizeof(float) * np), 0);
    }
    /* and something was computed */
    double s = 0;
    for (size_t i = 0; i < np; i++)
        s += fabs(keep.dp[i]);
    ck_assert(s > 0);
    lrun_free(&keep);
    lrun_free(&redo);
    lrun_free(&one);
    lfix_free(&f);
    lfix_free(&f3);
    moe_free_floats(&dh);
}
END_TEST

Suite *test_lstm_suite(void)
{
    Suite *s = suite_create("lstm");
    TCase *tc = tcase_create("forward");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, lstm_cache_layout);
    tcase_add_test(tc, lstm_forward_matches_ref);
    tcase_add_test(tc, lstm_one_step_by_hand);
    tcase_add_test(tc, lstm_two_unrolls_equal_one);
    tcase_add_test(tc, lstm_sequences_are_independent);
    tcase_add_test(tc, lstm_recompute_and_threads_same_bits);
    suite_add_tcase(s, tc);
    return s;
}
