/* Unit tests for worker/nn_ops: dropout as moe_par tasks with a row of
 * uniforms at a time gives the plain loop's masks and outputs bit for bit
 * (with 1 and 3 threads, p = 0 and p > 0, out == in); about a fraction p of
 * the mask is zero and the rest 1/(1-p). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "moe_par.h"
#include "moe_tensor.h"
#include "nn_ops.h"
#include "test_util.h"

Suite *test_nn_ops_suite(void);

START_TEST(dropout_equals_reference)
{
    enum { N = 101, D = 77 };
    const size_t n = (size_t)N * D;
    float *in = moe_alloc_floats(n), *out = moe_alloc_floats(n), *mask = moe_alloc_floats(n);
    float *rout = moe_alloc_floats(n), *rmask = moe_alloc_floats(n);
    tu_fill(in, n, 9, 1.0f);
    static const float ps[] = {0.0f, 0.1f, 0.5f};
    for (int th = 1; th <= 3; th += 2) {
        moe_par_set_threads(th);
        for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
            dropout_forward_ref(rout, rmask, in, ps[k], 7, 2, 13, 1000, N, D);
            dropout_forward(out, mask, in, ps[k], 7, 2, 13, 1000, N, D);
            ck_assert_int_eq(memcmp(out, rout, sizeof(float) * n), 0);
            ck_assert_int_eq(memcmp(mask, rmask, sizeof(float) * n), 0);
            /* in place */
            memcpy(out, in, sizeof(float) * n);
            dropout_forward(out, mask, out, ps[k], 7, 2, 13, 1000, N, D);
            ck_assert_int_eq(memcmp(out, rout, sizeof(float) * n), 0);
            size_t zeros = 0;
            for (size_t i = 0; i < n; i++) {
                zeros += mask[i] == 0.0f;
                ck_assert(mask[i] == 0.0f || mask[i] == 1.0f / (1.0f - ps[k]));
            }
            ck_assert(ps[k] == 0.0f ? zeros == 0 : zeros > n * ps[k] * 0.8 && zeros < n * ps[k] * 1.2);
        }
    }
    moe_par_set_threads(1);
    float **all[] = {&in, &out, &mask, &rout, &rmask};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        moe_free_floats(all[i]);
}
END_TEST

Suite *test_nn_ops_suite(void)
{
    Suite *s = suite_create("nn_ops");
    TCase *tc = tcase_create("dropout");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, dropout_equals_reference);
    suite_add_tcase(s, tc);
    return s;
}
