/* Tests of the memory check before large allocations (moe_mem): the
 * reading of /proc/meminfo, the override for tests, the sentence with the
 * bytes needed and available, and the size estimates it is fed with. */
#include <stdlib.h>
#include <string.h>

#include "expert_ffn.h"
#include "expert_shard.h"
#include "moe_err.h"
#include "moe_mem.h"
#include "test_util.h"

START_TEST(mem_reads_the_machine)
{
    unsetenv("MOE_MEM_AVAILABLE");
    const int64_t a = moe_mem_available();
    /* this machine has /proc: some memory, less than a petabyte */
    ck_assert_int_gt(a, 1 << 20);
    ck_assert_int_lt(a, (int64_t)1 << 50);
}
END_TEST

START_TEST(mem_check_says_how_much)
{
    setenv("MOE_MEM_AVAILABLE", "1000000", 1);
    ck_assert_int_eq(moe_mem_available(), 1000000);
    char err[512];
    ck_assert_int_eq(moe_mem_check(999999, "a shard", err, sizeof err), 0);
    ck_assert_int_eq(moe_mem_check(1000000, "a shard", err, sizeof err), 0);
    ck_assert_int_eq(moe_mem_check(12345678901ull, "a shard", err, sizeof err), MOE_ERR_NOMEM);
    ck_assert_msg(strstr(err, "a shard needs about 12.3 GB (12345678901 bytes)"), "%s", err);
    ck_assert_msg(strstr(err, "only 1.0 MB (1000000 bytes) are available"), "%s", err);
    /* a malformed override is ignored: the machine is read */
    setenv("MOE_MEM_AVAILABLE", "12x", 1);
    ck_assert_int_gt(moe_mem_available(), 1 << 20);
    unsetenv("MOE_MEM_AVAILABLE");
    char b[32];
    moe_mem_format(b, sizeof b, 640e6);
    ck_assert_str_eq(b, "640.0 MB");
    moe_mem_format(b, sizeof b, 12e3);
    ck_assert_str_eq(b, "12.0 KB");
}
END_TEST

/* The shard estimate is what the shard allocates: parameters, factored-Adam
 * state and (kept) gradients, exactly, in doubles (no overflow at any
 * size). */
START_TEST(mem_shard_estimate)
{
    const int D = 8, H = 12, n = 5;
    const double P = (double)expert_ffn_param_count(D, H), S = 3.0 * H + 3.0 * D;
    ck_assert(expert_shard_bytes(D, H, n, true) == 4.0 * n * (2 * P + S));
    ck_assert(expert_shard_bytes(D, H, n, false) == 4.0 * (n * (P + S) + P));
    struct moe_fadam_opts fo = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};
    int32_t ids[5] = {0, 1, 2, 3, 4};
    expert_shard_t *s = expert_shard_new(D, H, n, ids, 1, &fo);
    ck_assert_ptr_nonnull(s);
    ck_assert(4.0 * (double)expert_shard_opt_state_size(s) == 4.0 * S);
    expert_shard_destroy(&s);
    /* 1000 experts of 128 -> 1e6 -> 128: about 2.1 TB, no overflow */
    const double big = expert_shard_bytes(128, 1000000, 1000, true);
    ck_assert(big > 2.0e12 && big < 2.2e12);
}
END_TEST

Suite *test_mem_suite(void);
Suite *test_mem_suite(void)
{
    Suite *s = suite_create("mem");
    TCase *tc = tcase_create("mem");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, mem_reads_the_machine);
    tcase_add_test(tc, mem_check_says_how_much);
    tcase_add_test(tc, mem_shard_estimate);
    suite_add_tcase(s, tc);
    return s;
}
