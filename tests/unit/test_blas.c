/* Unit tests for common/moe_blas: the OpenBLAS path (moe_sgemm) against the
 * plain-loop reference (moe_sgemm_ref) for every transpose combination,
 * non-square shapes, sub-matrix views (leading dimension wider than the
 * view, padding left untouched), alpha/beta handling including a C full of
 * NaN under beta = 0, and the degenerate k = 0 and m or n = 0 cases.
 *
 * Tolerance: |c - c_ref| <= 1e-5 * (|alpha| sum_p |a_ip b_pj| + |beta c0_ij|)
 * per element, the scale a float dot product of that length is accurate to;
 * an element-wise relative error would be meaningless where terms cancel. */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "moe_blas.h"
#include "test_util.h"

Suite *test_blas_suite(void);

#define PAD_VALUE 12345.0f

/* A stored matrix of `rows` x `ld` floats filled with random values in the
 * first `cols` columns and PAD_VALUE in the padding. */
static float *stored(int rows, int cols, int ld, uint32_t stream)
{
    size_t n = (size_t)(rows > 0 ? rows : 1) * (size_t)(ld > 0 ? ld : 1);
    float *m = malloc(sizeof(float) * n);
    ck_assert_ptr_nonnull(m);
    for (size_t i = 0; i < n; i++)
        m[i] = PAD_VALUE;
    for (int r = 0; r < rows; r++)
        tu_fill(m + (size_t)r * ld, (size_t)cols, stream * 1000u + (uint32_t)r, 1.0f);
    return m;
}

struct gemm_case {
    bool ta, tb;
    int m, n, k;
    int pad_a, pad_b, pad_c; /* extra columns of each stored matrix */
    float alpha, beta;
};

static void run_case(const struct gemm_case *g, uint32_t stream)
{
    /* stored shapes: A is (m,k) or (k,m) when transposed; B (k,n) or (n,k) */
    const int ar = g->ta ? g->k : g->m, ac = g->ta ? g->m : g->k;
    const int br = g->tb ? g->n : g->k, bc = g->tb ? g->k : g->n;
    const int lda = ac + g->pad_a, ldb = bc + g->pad_b, ldc = g->n + g->pad_c;
    float *a = stored(ar, ac, lda, stream), *b = stored(br, bc, ldb, stream + 1);
    float *c = stored(g->m, g->n, ldc, stream + 2), *c0 = stored(g->m, g->n, ldc, stream + 2);
    float *cr = stored(g->m, g->n, ldc, stream + 2);
    if (g->beta == 0.0f) /* beta = 0 means C is not read: NaN must not leak */
        for (int i = 0; i < g->m; i++)
            for (int j = 0; j < g->n; j++)
                c[(size_t)i * ldc + j] = cr[(size_t)i * ldc + j] = NAN;

    moe_sgemm(g->ta, g->tb, g->m, g->n, g->k, g->alpha, a, lda, b, ldb, g->beta, c, ldc);
    moe_sgemm_ref(g->ta, g->tb, g->m, g->n, g->k, g->alpha, a, lda, b, ldb, g->beta, cr, ldc);

    for (int i = 0; i < g->m; i++) {
        for (int j = 0; j < ldc; j++) {
            const size_t o = (size_t)i * ldc + j;
            if (j >= g->n) {
                ck_assert_msg(c[o] == PAD_VALUE && cr[o] == PAD_VALUE,
                              "padding of C touched at (%d,%d)", i, j);
                continue;
            }
            double abs_ab = 0, exact = 0;
            for (int p = 0; p < g->k; p++) {
                double av = g->ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                double bv = g->tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                abs_ab += fabs(av * bv);
                exact += av * bv;
            }
            double scale = fabs(g->alpha) * abs_ab + (g->beta != 0.0f ? fabs(g->beta * c0[o]) : 0);
            exact = g->alpha * exact + (g->beta != 0.0f ? (double)g->beta * c0[o] : 0.0);
            ck_assert_msg(isfinite(c[o]), "C(%d,%d) = %g", i, j, c[o]);
            ck_assert_msg(fabs(c[o] - cr[o]) <= 1e-5 * scale + 1e-30,
                          "ta=%d tb=%d m=%d n=%d k=%d: C(%d,%d) blas %.9g ref %.9g", g->ta, g->tb,
                          g->m, g->n, g->k, i, j, c[o], cr[o]);
            ck_assert_msg(fabs(cr[o] - exact) <= 1e-5 * scale + 1e-30,
                          "reference C(%d,%d) %.9g, exact %.9g", i, j, cr[o], exact);
        }
    }
    /* Inputs are const: padding and values untouched. */
    float *a2 = stored(ar, ac, lda, stream), *b2 = stored(br, bc, ldb, stream + 1);
    ck_assert_int_eq(memcmp(a, a2, sizeof(float) * (size_t)(ar > 0 ? ar : 1) * (size_t)lda), 0);
    ck_assert_int_eq(memcmp(b, b2, sizeof(float) * (size_t)(br > 0 ? br : 1) * (size_t)ldb), 0);
    free(a);
    free(b);
    free(c);
    free(c0);
    free(cr);
    free(a2);
    free(b2);
}

START_TEST(blas_transpose_combinations)
{
    /* _i: bit 0 trans_a, bit 1 trans_b */
    const bool ta = _i & 1, tb = (_i >> 1) & 1;
    const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 4, 33}, {64, 48, 40}, {5, 129, 2},
                             {70, 1, 65}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        struct gemm_case g = {ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], 0, 0, 0, 1.0f,
                              0.0f};
        run_case(&g, 10u * (uint32_t)s + 1);
        g.beta = 1.0f;
        run_case(&g, 10u * (uint32_t)s + 2);
        g.alpha = -0.5f;
        g.beta = 0.75f;
        run_case(&g, 10u * (uint32_t)s + 3);
    }
}
END_TEST

START_TEST(blas_submatrix_views)
{
    const bool ta = _i & 1, tb = (_i >> 1) & 1;
    struct gemm_case g = {ta, tb, 9, 11, 13, 3, 5, 7, 1.0f, 0.0f};
    run_case(&g, 100);
    g.beta = 1.0f;
    run_case(&g, 101);
    g.m = 31;
    g.n = 2;
    g.k = 50;
    g.pad_a = 1;
    g.pad_b = 14;
    g.pad_c = 1;
    run_case(&g, 102);
}
END_TEST

START_TEST(blas_views_into_larger_matrix)
{
    /* A (4,5) block at row 2, column 3 of a (10,12) matrix times a (5,3)
     * block of another; C is a (4,3) block at (1,6) of a (8,10) matrix. */
    float big_a[10 * 12], big_b[9 * 8], big_c[8 * 10], big_c_ref[8 * 10];
    tu_fill(big_a, 120, 200, 1.0f);
    tu_fill(big_b, 72, 201, 1.0f);
    tu_fill(big_c, 80, 202, 1.0f);
    memcpy(big_c_ref, big_c, sizeof big_c);
    const float *a = big_a + 2 * 12 + 3, *b = big_b + 1 * 8 + 2;
    moe_sgemm(false, false, 4, 3, 5, 1.0f, a, 12, b, 8, 1.0f, big_c + 1 * 10 + 6, 10);
    moe_sgemm_ref(false, false, 4, 3, 5, 1.0f, a, 12, b, 8, 1.0f, big_c_ref + 1 * 10 + 6, 10);
    for (int i = 1; i < 5; i++) {
        for (int j = 6; j < 9; j++) {
            double sa = 0;
            for (int p = 0; p < 5; p++)
                sa += fabs((double)a[(i - 1) * 12 + p] * b[p * 8 + (j - 6)]);
            ck_assert(fabs(big_c[i * 10 + j] - big_c_ref[i * 10 + j]) <= 1e-5 * (sa + 1));
        }
    }
    /* Untouched elements are bitwise the originals. */
    float orig[80];
    tu_fill(orig, 80, 202, 1.0f);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 10; j++)
            if (!(i >= 1 && i < 5 && j >= 6 && j < 9))
                ck_assert(big_c[i * 10 + j] == orig[i * 10 + j]);
}
END_TEST

START_TEST(blas_k_zero_scales_c)
{
    /* With k = 0, op(A) op(B) is the zero matrix: C = beta C; beta = 0
     * clears C even when it holds NaN. A and B are never read (NULL). */
    for (int ref = 0; ref < 2; ref++) {
        void (*f)(bool, bool, int, int, int, float, const float *, int, const float *, int, float,
                  float *, int) = ref ? moe_sgemm_ref : moe_sgemm;
        float c[3 * 4];
        for (int i = 0; i < 12; i++)
            c[i] = (float)i - 5.0f;
        f(false, false, 3, 4, 0, 1.0f, NULL, 1, NULL, 4, 1.0f, c, 4);
        for (int i = 0; i < 12; i++)
            ck_assert_float_eq(c[i], (float)i - 5.0f);
        f(true, true, 3, 4, 0, 2.0f, NULL, 3, NULL, 1, 0.5f, c, 4);
        for (int i = 0; i < 12; i++)
            ck_assert_float_eq(c[i], ((float)i - 5.0f) * 0.5f);
        for (int i = 0; i < 12; i++)
            c[i] = NAN;
        f(false, true, 3, 4, 0, 1.0f, NULL, 1, NULL, 1, 0.0f, c, 4);
        for (int i = 0; i < 12; i++)
            ck_assert_msg(c[i] == 0.0f && !signbit(c[i]), "ref=%d c[%d] = %g", ref, i, c[i]);
    }
}
END_TEST

START_TEST(blas_empty_m_or_n)
{
    /* Nothing is read or written when the product is empty. */
    for (int ref = 0; ref < 2; ref++) {
        void (*f)(bool, bool, int, int, int, float, const float *, int, const float *, int, float,
                  float *, int) = ref ? moe_sgemm_ref : moe_sgemm;
        float a[6], b[6], c[6];
        tu_fill(a, 6, 300, 1.0f);
        tu_fill(b, 6, 301, 1.0f);
        for (int i = 0; i < 6; i++)
            c[i] = PAD_VALUE;
        f(false, false, 0, 3, 2, 1.0f, a, 2, b, 3, 0.0f, c, 3);
        f(false, false, 2, 0, 3, 1.0f, a, 3, b, 1, 0.0f, c, 1);
        f(true, true, 0, 0, 3, 1.0f, a, 1, b, 3, 0.0f, c, 1);
        f(false, false, 0, 3, 0, 1.0f, NULL, 1, NULL, 3, 0.0f, c, 3);
        for (int i = 0; i < 6; i++)
            ck_assert_float_eq(c[i], PAD_VALUE);
    }
}
END_TEST

START_TEST(blas_exact_small_product)
{
    /* Integers: every path must be exact. A (2,3), B (3,2). */
    const float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {7, 8, 9, 10, 11, 12};
    const float want[4] = {58, 64, 139, 154};
    float c[4] = {1, 1, 1, 1}, at[6], bt[6];
    for (int i = 0; i < 2; i++)
        for (int p = 0; p < 3; p++)
            at[p * 2 + i] = a[i * 3 + p];
    for (int p = 0; p < 3; p++)
        for (int j = 0; j < 2; j++)
            bt[j * 3 + p] = b[p * 2 + j];
    for (int t = 0; t < 4; t++) {
        const bool ta = t & 1, tb = t >> 1;
        for (int i = 0; i < 4; i++)
            c[i] = 1;
        moe_sgemm(ta, tb, 2, 2, 3, 2.0f, ta ? at : a, ta ? 2 : 3, tb ? bt : b, tb ? 3 : 2, 3.0f, c,
                  2);
        for (int i = 0; i < 4; i++)
            ck_assert_float_eq(c[i], 2 * want[i] + 3);
    }
}
END_TEST

/* Products split into one single-threaded OpenBLAS call per thread
 * (MOE_BLAS_SPLIT=1): against the reference for every transpose, with
 * strides, split by rows and by columns, with 2 and 3 threads; and a
 * rerun with the same thread count gives the same bits (the blocks follow
 * the thread count, which is part of the determinism contract: OpenBLAS's
 * kernels may round an element differently in another block). */
START_TEST(blas_split_products)
{
    static const struct gemm_case cases[] = {
        {false, true, 70, 300, 130, 3, 1, 2, 1.0f, 1.0f},   /* m <= n: by columns */
        {true, false, 300, 70, 130, 0, 5, 1, 0.5f, 0.0f},   /* m > n: by rows */
        {false, false, 129, 257, 64, 1, 0, 3, -1.0f, 2.0f},
        {true, true, 257, 33, 96, 2, 2, 0, 1.0f, 1.0f},
    };
    setenv("MOE_BLAS_SPLIT", "1", 1);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (int t = 2; t <= 3; t++) {
            moe_blas_set_threads(t);
            ck_assert(moe_blas_split());
            run_case(&cases[i], 900u + (uint32_t)i * 7u);
        }
        const struct gemm_case *g = &cases[i];
        const int ar = g->ta ? g->k : g->m, ac = g->ta ? g->m : g->k;
        const int br = g->tb ? g->n : g->k, bc = g->tb ? g->k : g->n;
        const int lda = ac + g->pad_a, ldb = bc + g->pad_b, ldc = g->n + g->pad_c;
        float *a = stored(ar, ac, lda, 50), *b = stored(br, bc, ldb, 51);
        float *c[2];
        moe_blas_set_threads(2);
        for (int r = 0; r < 2; r++) {
            c[r] = stored(g->m, g->n, ldc, 52);
            moe_sgemm(g->ta, g->tb, g->m, g->n, g->k, g->alpha, a, lda, b, ldb, g->beta, c[r],
                      ldc);
        }
        ck_assert_int_eq(memcmp(c[0], c[1], sizeof(float) * (size_t)g->m * (size_t)ldc), 0);
        free(c[0]);
        free(c[1]);
        free(a);
        free(b);
    }
    unsetenv("MOE_BLAS_SPLIT");
    moe_blas_set_threads(1);
    ck_assert(!moe_blas_split());
}
END_TEST

/* OpenBLAS's threads sleep soon after a product: moe_blas_set_threads
 * sets OpenBLAS's least timeout (2^4 cycles) unless OPENBLAS_THREAD_TIMEOUT was given
 * (then it is OpenBLAS's reading of it, untouched); products on 2 threads
 * are still right after the threads' restart. Where OpenBLAS does not tell
 * its timeout (-1) the call changes nothing. */
START_TEST(blas_thread_timeout)
{
    const char *given = getenv("OPENBLAS_THREAD_TIMEOUT");
    const int before = moe_blas_thread_timeout();
    moe_blas_set_threads(2);
    const int after = moe_blas_thread_timeout();
    if (before < 0)
        ck_assert_int_eq(after, -1);
    else if (given)
        ck_assert_int_eq(after, before);
    else
        ck_assert_int_eq(after, 4);
    static const struct gemm_case c = {false, true, 300, 200, 130, 1, 2, 3, 1.0f, 0.5f};
    run_case(&c, 77u);
    moe_blas_set_threads(2); /* a second call restarts nothing */
    ck_assert_int_eq(moe_blas_thread_timeout(), after);
    run_case(&c, 78u);
    moe_blas_set_threads(1);
}
END_TEST

Suite *test_blas_suite(void)
{
    Suite *s = suite_create("blas");
    TCase *tc = tcase_create("sgemm");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, blas_transpose_combinations, 0, 4);
    tcase_add_loop_test(tc, blas_submatrix_views, 0, 4);
    tcase_add_test(tc, blas_views_into_larger_matrix);
    tcase_add_test(tc, blas_exact_small_product);
    tcase_add_test(tc, blas_split_products);
    tcase_add_test(tc, blas_thread_timeout);
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("edges");
    tcase_set_timeout(te, 10);
    tcase_add_test(te, blas_k_zero_scales_c);
    tcase_add_test(te, blas_empty_m_or_n);
    suite_add_tcase(s, te);
    return s;
}
