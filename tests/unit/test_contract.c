/* Tests of the configuration contract every member of a cluster registers
 * with (moe_options_contract, _diff, _digest, _get): which keys each role
 * carries, canonical values, the corpus compared by its bytes, and the
 * sentence that names every differing key with both values; the BLAS kernel
 * line the coordinator adopts, warns or refuses about; --recompute values. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_config.h"
#include "moe_err.h"
#include "moe_kernels.h"
#include "test_util.h"
#include "moe_options.h"

static struct moe_options base_cfg(void)
{
    struct moe_options c;
    char err[256];
    ck_assert_int_eq(moe_config_defaults(moe_options_table, moe_options_count, &c, err, sizeof err), 0);
    snprintf(c.train, sizeof c.train, "/nonexistent/corpus.txt");
    return c;
}

static int has_key(const char *contract, const char *key)
{
    char v[256];
    size_t kl = strlen(key);
    for (const char *p = contract; *p;) {
        if (strncmp(p, key, kl) == 0 && p[kl] == '=')
            return 1;
        p = strchr(p, '\n');
        if (!p)
            break;
        p++;
    }
    (void)v;
    return 0;
}

START_TEST(contract_keys_by_role)
{
    struct moe_options c = base_cfg();
    char srv[8192], wrk[8192];
    ck_assert_int_gt(moe_options_contract(&c, MOE_ROLE_SERVER, srv, sizeof srv), 0);
    ck_assert_int_gt(moe_options_contract(&c, MOE_ROLE_WORKER, wrk, sizeof wrk), 0);
    static const char *const server_keys[] = {"d_model", "d_hidden", "n_experts", "seed", "lr",
                                              "warmup", "expert_beta2", "wire_dtype", "workers"};
    for (size_t i = 0; i < sizeof server_keys / sizeof *server_keys; i++) {
        ck_assert_msg(has_key(srv, server_keys[i]), "server contract lacks %s", server_keys[i]);
        ck_assert_msg(has_key(wrk, server_keys[i]), "worker contract lacks %s", server_keys[i]);
    }
    static const char *const worker_only[] = {"k", "batch", "unroll", "steps", "dropout", "train"};
    for (size_t i = 0; i < sizeof worker_only / sizeof *worker_only; i++) {
        ck_assert_msg(has_key(wrk, worker_only[i]), "worker contract lacks %s", worker_only[i]);
        ck_assert_msg(!has_key(srv, worker_only[i]), "server contract has %s", worker_only[i]);
    }
    /* per-process settings are not part of it */
    static const char *const local[] = {"threads", "rank", "bind", "timeout_ms", "checkpoint_dir",
                                        "log_level", "report"};
    for (size_t i = 0; i < sizeof local / sizeof *local; i++)
        ck_assert_msg(!has_key(wrk, local[i]), "worker contract has %s", local[i]);
    char v[64];
    moe_options_contract_get(wrk, "train", v, sizeof v);
    ck_assert_str_eq(v, "?"); /* unreadable corpus */
    moe_options_contract_get(wrk, "d_hidden", v, sizeof v);
    ck_assert_str_eq(v, "256");
    moe_options_contract_get(wrk, "no_such_key", v, sizeof v);
    ck_assert_str_eq(v, "");
    ck_assert_int_eq(moe_options_contract(&c, MOE_ROLE_WORKER, wrk, 10), MOE_ERR_RANGE);
    /* a hierarchical MoE's servers run the secondary gates: the shape of
     * the groups and their top-k are theirs too (k once in a worker's) */
    snprintf(c.moe, sizeof c.moe, "hierarchical");
    c.groups = 2;
    c.experts_per_group = 4;
    ck_assert_int_gt(moe_options_contract(&c, MOE_ROLE_SERVER, srv, sizeof srv), 0);
    ck_assert_int_gt(moe_options_contract(&c, MOE_ROLE_WORKER, wrk, sizeof wrk), 0);
    static const char *const group_keys[] = {"moe", "groups", "experts_per_group", "k"};
    for (size_t i = 0; i < sizeof group_keys / sizeof *group_keys; i++)
        ck_assert_msg(has_key(srv, group_keys[i]), "hierarchical: no %s", group_keys[i]);
    moe_options_contract_get(srv, "moe", v, sizeof v);
    ck_assert_str_eq(v, "hierarchical");
    ck_assert_ptr_null(strstr(strstr(wrk, "\nk=") + 1, "\nk="));
}
END_TEST

START_TEST(contract_canonical_values)
{
    struct moe_options a = base_cfg(), b = base_cfg();
    snprintf(a.workers, sizeof a.workers, "tcp://h:1, tcp://h:2 ");
    snprintf(b.workers, sizeof b.workers, "tcp://h:1,tcp://h:2");
    b.threads = 7; /* not part of the contract */
    char x[8192], y[8192];
    moe_options_contract(&a, MOE_ROLE_WORKER, x, sizeof x);
    moe_options_contract(&b, MOE_ROLE_WORKER, y, sizeof y);
    ck_assert_str_eq(x, y);
    ck_assert(moe_options_contract_digest(x) == moe_options_contract_digest(y));
    b.lr = 0.02;
    moe_options_contract(&b, MOE_ROLE_WORKER, y, sizeof y);
    ck_assert(moe_options_contract_digest(x) != moe_options_contract_digest(y));
}
END_TEST

/* The corpus by its bytes: two paths with the same content agree, a byte
 * more differs. */
START_TEST(contract_corpus_by_bytes)
{
    char dir[256], p1[300], p2[300];
    tu_tmpdir(dir, sizeof dir);
    snprintf(p1, sizeof p1, "%s/a.txt", dir);
    snprintf(p2, sizeof p2, "%s/b.txt", dir);
    FILE *f = fopen(p1, "w");
    fputs("the cat sat\non the mat\n", f);
    fclose(f);
    f = fopen(p2, "w");
    fputs("the cat sat\non the mat\n", f);
    fclose(f);
    struct moe_options a = base_cfg(), b = base_cfg();
    snprintf(a.train, sizeof a.train, "%s", p1);
    snprintf(b.train, sizeof b.train, "%s", p2);
    char x[8192], y[8192], why[1024];
    moe_options_contract(&a, MOE_ROLE_WORKER, x, sizeof x);
    moe_options_contract(&b, MOE_ROLE_WORKER, y, sizeof y);
    ck_assert_str_eq(x, y);
    char v[64];
    moe_options_contract_get(x, "train", v, sizeof v);
    ck_assert_uint_eq(strlen(v), 16);
    f = fopen(p2, "a");
    fputs("x", f);
    fclose(f);
    moe_options_contract(&b, MOE_ROLE_WORKER, y, sizeof y);
    ck_assert_int_eq(moe_options_contract_diff(x, y, NULL, why, sizeof why), 1);
    ck_assert_msg(strstr(why, "train is ") != NULL, "%s", why);
    tu_rmtree(dir);
}
END_TEST

START_TEST(contract_diff_names_every_key)
{
    struct moe_options a = base_cfg(), b = base_cfg();
    b.d_hidden = 512;
    b.lr = 0.02;
    snprintf(b.wire_dtype, sizeof b.wire_dtype, "bf16");
    char x[8192], y[8192], why[1024];
    moe_options_contract(&a, MOE_ROLE_SERVER, x, sizeof x);
    moe_options_contract(&b, MOE_ROLE_SERVER, y, sizeof y);
    ck_assert_int_eq(moe_options_contract_diff(x, x, NULL, why, sizeof why), 0);
    ck_assert_str_eq(why, "");
    ck_assert_int_eq(moe_options_contract_diff(x, y, NULL, why, sizeof why), 3);
    ck_assert_msg(strstr(why, "d_hidden is 512 here and 256 in the cluster"), "%s", why);
    ck_assert_msg(strstr(why, "lr is 0.02 here and 0.0050000000000000001 in the cluster"), "%s", why);
    ck_assert_msg(strstr(why, "wire_dtype is bf16 here and f32 in the cluster"), "%s", why);
}
END_TEST

/* An empty worker list may be skipped (a server takes the coordinator's);
 * keys missing on either side are differences too. */
START_TEST(contract_diff_skip_and_missing)
{
    struct moe_options a = base_cfg(), b = base_cfg();
    snprintf(a.workers, sizeof a.workers, "tcp://h:1,tcp://h:2");
    char x[8192], y[8192], why[1024];
    moe_options_contract(&a, MOE_ROLE_SERVER, x, sizeof x);
    moe_options_contract(&b, MOE_ROLE_SERVER, y, sizeof y);
    ck_assert_int_eq(moe_options_contract_diff(x, y, NULL, why, sizeof why), 1);
    ck_assert_msg(strstr(why, "workers is empty here and tcp://h:1,tcp://h:2 in the cluster"), "%s",
                  why);
    ck_assert_int_eq(moe_options_contract_diff(x, y, "workers", why, sizeof why), 0);
    /* the other way round an empty cluster list is not skipped */
    ck_assert_int_eq(moe_options_contract_diff(y, x, "workers", why, sizeof why), 1);
    ck_assert_int_eq(moe_options_contract_diff("a=1\nb=2\n", "a=1\nc=3\n", NULL, why, sizeof why), 2);
    ck_assert_msg(strstr(why, "b is not set here and 2 in the cluster"), "%s", why);
    ck_assert_msg(strstr(why, "c is 3 here and not set in the cluster"), "%s", why);
    /* a tiny buffer still counts every difference, and stays a string */
    char small[8];
    ck_assert_int_eq(moe_options_contract_diff("a=1\nb=2\n", "a=2\nb=3\n", NULL, small, sizeof small), 2);
    ck_assert_uint_lt(strlen(small), sizeof small);
}
END_TEST

/* Every contract ends with the process's BLAS kernel set, which the diff
 * leaves to moe_options_contract_kernels; strict_determinism is a key the
 * members must agree on. */
START_TEST(contract_kernels_line)
{
    struct moe_options a = base_cfg();
    char srv[8192], wrk[8192], v[64], why[1024];
    ck_assert_int_gt(moe_options_contract(&a, MOE_ROLE_SERVER, srv, sizeof srv), 0);
    ck_assert_int_gt(moe_options_contract(&a, MOE_ROLE_WORKER, wrk, sizeof wrk), 0);
    for (int i = 0; i < 2; i++) {
        const char *c = i ? wrk : srv;
        moe_options_contract_get(c, "blas_kernels", v, sizeof v);
        ck_assert_str_eq(v, moe_kernels_effective());
        char last[96];
        snprintf(last, sizeof last, "\nblas_kernels=%s\n", moe_kernels_effective());
        ck_assert_msg(strlen(c) > strlen(last) && strcmp(c + strlen(c) - strlen(last), last) == 0,
                      "not the last line:\n%s", c);
        ck_assert(has_key(c, "strict_determinism"));
    }
    char other[8192];
    snprintf(other, sizeof other, "%s", wrk);
    ck_assert_int_eq(moe_options_contract_put(other, sizeof other, "blas_kernels", "Prescott"), 0);
    ck_assert_int_eq(moe_options_contract_diff(wrk, other, NULL, why, sizeof why), 0);
    a.strict_determinism = true;
    moe_options_contract(&a, MOE_ROLE_WORKER, other, sizeof other);
    ck_assert_int_eq(moe_options_contract_diff(wrk, other, NULL, why, sizeof why), 1);
    ck_assert_msg(strstr(why, "strict_determinism is true here and false in the cluster"), "%s",
                  why);
}
END_TEST

START_TEST(contract_put)
{
    char c[64] = "a=1\nbb=22\nc=3\n";
    ck_assert_int_eq(moe_options_contract_put(c, sizeof c, "bb", ""), 0);
    ck_assert_str_eq(c, "a=1\nbb=\nc=3\n");
    ck_assert_int_eq(moe_options_contract_put(c, sizeof c, "bb", "hello"), 0);
    ck_assert_str_eq(c, "a=1\nbb=hello\nc=3\n");
    ck_assert_int_eq(moe_options_contract_put(c, sizeof c, "d", "4"), 0);
    ck_assert_str_eq(c, "a=1\nbb=hello\nc=3\nd=4\n");
    char small[12] = "a=1\n";
    ck_assert_int_eq(moe_options_contract_put(small, sizeof small, "a", "123456789"),
                     MOE_ERR_RANGE);
    ck_assert_str_eq(small, "a=1\n");
}
END_TEST

/* The coordinator's view: its contracts start blank, take the first
 * member's set, then warn about (or, under strict_determinism, refuse) a
 * member with another one. */
START_TEST(contract_kernels_adopt_warn_refuse)
{
    struct moe_options a = base_cfg();
    char srv[8192], wrk[8192], mem[8192], why[1024], v[64];
    moe_options_contract(&a, MOE_ROLE_SERVER, srv, sizeof srv);
    moe_options_contract(&a, MOE_ROLE_WORKER, wrk, sizeof wrk);
    moe_options_contract_put(srv, sizeof srv, "blas_kernels", "");
    moe_options_contract_put(wrk, sizeof wrk, "blas_kernels", "");
    char *both[2] = {srv, wrk};
    moe_options_contract(&a, MOE_ROLE_SERVER, mem, sizeof mem);
    moe_options_contract_put(mem, sizeof mem, "blas_kernels", "SkylakeX");
    ck_assert_int_eq(moe_options_contract_kernels(both, 2, 8192, mem, "server 0", why, sizeof why),
                     0);
    ck_assert_str_eq(why, "the BLAS kernels of this cluster are SkylakeX (from server 0)");
    moe_options_contract_get(wrk, "blas_kernels", v, sizeof v);
    ck_assert_str_eq(v, "SkylakeX");
    /* the same again: nothing to say */
    ck_assert_int_eq(moe_options_contract_kernels(both, 2, 8192, mem, "server 1", why, sizeof why),
                     0);
    ck_assert_str_eq(why, "");
    /* another set: a warning naming both */
    moe_options_contract_put(mem, sizeof mem, "blas_kernels", "Haswell");
    ck_assert_int_eq(moe_options_contract_kernels(both, 2, 8192, mem, "worker 1", why, sizeof why),
                     1);
    ck_assert_msg(strstr(why, "worker 1 runs the BLAS kernels Haswell and the cluster SkylakeX"),
                  "%s", why);
    moe_options_contract_get(srv, "blas_kernels", v, sizeof v);
    ck_assert_str_eq(v, "SkylakeX");
    /* under strict_determinism: refused */
    moe_options_contract_put(srv, sizeof srv, "strict_determinism", "true");
    ck_assert_int_eq(moe_options_contract_kernels(both, 2, 8192, mem, "worker 1", why, sizeof why),
                     MOE_ERR_CONFIG);
    ck_assert_msg(strstr(why, "Haswell") && strstr(why, "SkylakeX") &&
                      strstr(why, "strict_determinism"), "%s", why);
    /* a member that sends none (an older version) is not judged here */
    ck_assert_int_eq(moe_options_contract_kernels(both, 2, 8192, "a=1\n", "worker 2", why,
                                                  sizeof why), 0);
}
END_TEST

START_TEST(options_recompute_values)
{
    struct moe_options a = base_cfg();
    enum moe_recompute m;
    char err[256];
    ck_assert_str_eq(a.recompute, "none");
    static const char *const names[] = {"none", "experts", "all"};
    for (int i = 0; i < 3; i++) {
        snprintf(a.recompute, sizeof a.recompute, "%s", names[i]);
        ck_assert_int_eq(moe_options_recompute(&a, &m, err, sizeof err), 0);
        ck_assert_int_eq((int)m, i);
        ck_assert_int_eq((int)moe_options_recompute_mode(&a), i);
    }
    snprintf(a.recompute, sizeof a.recompute, "All");
    ck_assert_int_eq(moe_options_recompute(&a, &m, err, sizeof err), MOE_ERR_CONFIG);
    ck_assert_str_eq(err, "--recompute: expected none, experts or all, got \"All\"");
    ck_assert_int_eq((int)moe_options_recompute_mode(&a), MOE_RECOMPUTE_NONE);
}
END_TEST

Suite *test_contract_suite(void);
Suite *test_contract_suite(void)
{
    Suite *s = suite_create("contract");
    TCase *tc = tcase_create("contract");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, contract_keys_by_role);
    tcase_add_test(tc, contract_canonical_values);
    tcase_add_test(tc, contract_corpus_by_bytes);
    tcase_add_test(tc, contract_diff_names_every_key);
    tcase_add_test(tc, contract_diff_skip_and_missing);
    tcase_add_test(tc, contract_kernels_line);
    tcase_add_test(tc, contract_put);
    tcase_add_test(tc, contract_kernels_adopt_warn_refuse);
    tcase_add_test(tc, options_recompute_values);
    suite_add_tcase(s, tc);
    return s;
}
