/* Tests of the shared command-line pieces (moe_cli): strict numbers and
 * "did you mean" suggestions. */
#include <limits.h>

#include "moe_cli.h"
#include "test_util.h"

START_TEST(cli_numbers_are_strict)
{
    long v = -7;
    ck_assert(moe_cli_long("12", 0, 100, &v) && v == 12);
    ck_assert(moe_cli_long("-3", -5, 5, &v) && v == -3);
    v = 99;
    ck_assert(!moe_cli_long("abc", 0, 100, &v));
    ck_assert(!moe_cli_long("", 0, 100, &v));
    ck_assert(!moe_cli_long(NULL, 0, 100, &v));
    ck_assert(!moe_cli_long("12abc", 0, 100, &v));
    ck_assert(!moe_cli_long("1e3", 0, 10000, &v));
    ck_assert(!moe_cli_long("101", 0, 100, &v));
    ck_assert(!moe_cli_long("99999999999999999999999", 0, LONG_MAX, &v));
    ck_assert_int_eq(v, 99); /* untouched on failure */
    double d = 0;
    ck_assert(moe_cli_double("0.5", 0, 1, &d) && d == 0.5);
    ck_assert(moe_cli_double("1e-3", 0, 1, &d) && d == 1e-3);
    ck_assert(!moe_cli_double("nan", -1e9, 1e9, &d));
    ck_assert(!moe_cli_double("inf", -1e9, 1e308, &d));
    ck_assert(!moe_cli_double("0.5x", 0, 1, &d));
    ck_assert(!moe_cli_double("2", 0, 1, &d));
}
END_TEST

START_TEST(cli_suggests_the_nearest)
{
    ck_assert_int_eq(moe_cli_distance("status", "status"), 0);
    ck_assert_int_eq(moe_cli_distance("stauts", "status"), 2);
    ck_assert_int_eq(moe_cli_distance("", "abc"), 3);
    ck_assert_int_eq(moe_cli_distance("kitten", "sitting"), 3);
    const char *opts[] = {"n-experts", "n-workers", "d-model", "checkpoint-dir", "top"};
    ck_assert_str_eq(moe_cli_nearest("n-expert", opts, 5), "n-experts");
    ck_assert_str_eq(moe_cli_nearest("n-exprets", opts, 5), "n-experts");
    ck_assert_str_eq(moe_cli_nearest("d_model", opts, 5), "d-model");
    ck_assert_str_eq(moe_cli_nearest("check", opts, 5), "checkpoint-dir"); /* a prefix */
    ck_assert_ptr_null(moe_cli_nearest("learning-rate", opts, 5));
    ck_assert_ptr_null(moe_cli_nearest("x", opts, 0));
}
END_TEST

Suite *test_cli_suite(void);
Suite *test_cli_suite(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_add_test(tc, cli_numbers_are_strict);
    tcase_add_test(tc, cli_suggests_the_nearest);
    suite_add_tcase(s, tc);
    return s;
}
