/* Unit tests for common/moe_kernels: the decision as a table (CPU features
 * x OpenBLAS's choice x OPENBLAS_CORETYPE in the environment x option, each
 * row with its expected action and target); the sgemm self-test with the
 * real product and with deliberately broken ones; feature detection against
 * /proc/cpuinfo; and the real re-execution, end to end.
 *
 * The re-execution tests run this binary again as `moe-tests kernels helper`
 * in a child process with stdout and stderr on a pipe. The "helper" test
 * case does nothing unless MOE_KERNELS_HELPER is set; then it calls
 * moe_kernels__init_with(), which may re-execute that process (same argv)
 * once or twice, and the final process prints one "helper:" line with what
 * it ended up with. By hand, for example:
 *   MOE_KERNELS_HELPER=1 MOE_KERNELS_HELPER_OPTION=auto build/bin/moe-tests kernels helper
 * (add MOE_KERNELS_HELPER_PRETEND=Prescott to act as if OpenBLAS had chosen
 * Prescott, MOE_KERNELS_HELPER_BREAK=1 to break the switched set's sgemm). */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "moe_blas.h"
#include "moe_err.h"
#include "moe_kernels.h"
#include "moe_log.h"

Suite *test_kernels_suite(void);

/* ------------------------------------------------------------------------
 * The decision table */

#define F_NONE 0u
#define F_SSE3 (MOE_KERNELS_SSE2 | MOE_KERNELS_SSE3)
#define F_AVX                                                                                  \
    (F_SSE3 | MOE_KERNELS_SSSE3 | MOE_KERNELS_SSE41 | MOE_KERNELS_SSE42 | MOE_KERNELS_AVX)
#define F_AVX2 (F_AVX | MOE_KERNELS_AVX2 | MOE_KERNELS_FMA)
#define F_512 (F_AVX2 | MOE_KERNELS_AVX512)
#define F_BF16 (F_512 | MOE_KERNELS_AVX512_BF16)

/* The options every row is tried with, in this order. Bulldozer needs FMA4,
 * which none of the feature sets above has. */
enum { OPT_AUTO, OPT_KEEP, OPT_HASWELL, OPT_SKYLAKEX, OPT_UNSUPPORTED, OPT_GARBAGE, N_OPTS };
static const char *const options[N_OPTS] = {"auto", "keep", "Haswell", "SkylakeX", "Bulldozer",
                                            "fast please"};

/* Expected outcome: "K:<name>" keep (target = name), "S:<name>" switch to
 * name, "E" MOE_ERR_CONFIG. */
struct decision_row {
    unsigned features;
    const char *chosen;
    const char *env; /* OPENBLAS_CORETYPE, NULL = unset */
    const char *want[N_OPTS];
};

#define UNKNOWN "Frobnicator"
/* With OPENBLAS_CORETYPE set, every good option keeps OpenBLAS's choice;
 * a name the table does not know, or a set the CPU cannot run, is still an
 * error (the command line is wrong for this machine). */
#define KEEP_ENV_SSE(c) {"K:" c, "K:" c, "E", "E", "E", "E"}
#define KEEP_ENV_AVX2(c) {"K:" c, "K:" c, "K:" c, "E", "E", "E"}
#define KEEP_ENV_512(c) {"K:" c, "K:" c, "K:" c, "K:" c, "E", "E"}

static const struct decision_row decision_rows[] = {
    /* features, chosen, env; then auto, keep, Haswell, SkylakeX, Bulldozer, garbage */
    {F_NONE, "Prescott", NULL, {"K:Prescott", "K:Prescott", "E", "E", "E", "E"}},
    {F_NONE, "Haswell", NULL, {"K:Haswell", "K:Haswell", "E", "E", "E", "E"}},
    {F_NONE, "SkylakeX", NULL, {"K:SkylakeX", "K:SkylakeX", "E", "E", "E", "E"}},
    {F_NONE, "Cooperlake", NULL, {"K:Cooperlake", "K:Cooperlake", "E", "E", "E", "E"}},
    {F_NONE, UNKNOWN, NULL, {"K:" UNKNOWN, "K:" UNKNOWN, "E", "E", "E", "E"}},

    {F_SSE3, "Prescott", NULL, {"K:Prescott", "K:Prescott", "E", "E", "E", "E"}},
    {F_SSE3, "Haswell", NULL, {"K:Haswell", "K:Haswell", "E", "E", "E", "E"}},
    {F_SSE3, "SkylakeX", NULL, {"K:SkylakeX", "K:SkylakeX", "E", "E", "E", "E"}},
    {F_SSE3, "Cooperlake", NULL, {"K:Cooperlake", "K:Cooperlake", "E", "E", "E", "E"}},
    {F_SSE3, UNKNOWN, NULL, {"K:" UNKNOWN, "K:" UNKNOWN, "E", "E", "E", "E"}},

    {F_AVX, "Prescott", NULL, {"S:Sandybridge", "K:Prescott", "E", "E", "E", "E"}},
    {F_AVX, "Haswell", NULL, {"K:Haswell", "K:Haswell", "E", "E", "E", "E"}},
    {F_AVX, "SkylakeX", NULL, {"K:SkylakeX", "K:SkylakeX", "E", "E", "E", "E"}},
    {F_AVX, "Cooperlake", NULL, {"K:Cooperlake", "K:Cooperlake", "E", "E", "E", "E"}},
    {F_AVX, UNKNOWN, NULL, {"K:" UNKNOWN, "K:" UNKNOWN, "E", "E", "E", "E"}},

    {F_AVX2, "Prescott", NULL, {"S:Haswell", "K:Prescott", "S:Haswell", "E", "E", "E"}},
    {F_AVX2, "Haswell", NULL, {"K:Haswell", "K:Haswell", "K:Haswell", "E", "E", "E"}},
    {F_AVX2, "SkylakeX", NULL, {"K:SkylakeX", "K:SkylakeX", "S:Haswell", "E", "E", "E"}},
    {F_AVX2, "Cooperlake", NULL, {"K:Cooperlake", "K:Cooperlake", "S:Haswell", "E", "E", "E"}},
    {F_AVX2, UNKNOWN, NULL, {"K:" UNKNOWN, "K:" UNKNOWN, "S:Haswell", "E", "E", "E"}},

    {F_512, "Prescott", NULL, {"S:SkylakeX", "K:Prescott", "S:Haswell", "S:SkylakeX", "E", "E"}},
    {F_512, "Haswell", NULL, {"S:SkylakeX", "K:Haswell", "K:Haswell", "S:SkylakeX", "E", "E"}},
    {F_512, "SkylakeX", NULL, {"K:SkylakeX", "K:SkylakeX", "S:Haswell", "K:SkylakeX", "E", "E"}},
    {F_512, "Cooperlake", NULL,
     {"K:Cooperlake", "K:Cooperlake", "S:Haswell", "S:SkylakeX", "E", "E"}},
    {F_512, UNKNOWN, NULL, {"K:" UNKNOWN, "K:" UNKNOWN, "S:Haswell", "S:SkylakeX", "E", "E"}},

    {F_BF16, "Prescott", NULL,
     {"S:Cooperlake", "K:Prescott", "S:Haswell", "S:SkylakeX", "E", "E"}},
    {F_BF16, "Haswell", NULL, {"S:Cooperlake", "K:Haswell", "K:Haswell", "S:SkylakeX", "E", "E"}},
    {F_BF16, "SkylakeX", NULL,
     {"S:Cooperlake", "K:SkylakeX", "S:Haswell", "K:SkylakeX", "E", "E"}},
    {F_BF16, "Cooperlake", NULL,
     {"K:Cooperlake", "K:Cooperlake", "S:Haswell", "S:SkylakeX", "E", "E"}},
    {F_BF16, UNKNOWN, NULL, {"K:" UNKNOWN, "K:" UNKNOWN, "S:Haswell", "S:SkylakeX", "E", "E"}},

    /* OPENBLAS_CORETYPE in the environment: kept whatever the option (the
     * environment's value need not match `chosen`: OpenBLAS ignores names
     * it does not know), but a bad option is still refused. */
    {F_NONE, "Prescott", "Prescott", KEEP_ENV_SSE("Prescott")},
    {F_NONE, "Haswell", "Haswell", KEEP_ENV_SSE("Haswell")},
    {F_NONE, "SkylakeX", "SkylakeX", KEEP_ENV_SSE("SkylakeX")},
    {F_NONE, "Cooperlake", "Cooperlake", KEEP_ENV_SSE("Cooperlake")},
    {F_NONE, UNKNOWN, UNKNOWN, KEEP_ENV_SSE(UNKNOWN)},
    {F_SSE3, "Prescott", "Prescott", KEEP_ENV_SSE("Prescott")},
    {F_SSE3, "Haswell", "Haswell", KEEP_ENV_SSE("Haswell")},
    {F_SSE3, "SkylakeX", "SkylakeX", KEEP_ENV_SSE("SkylakeX")},
    {F_SSE3, "Cooperlake", "Cooperlake", KEEP_ENV_SSE("Cooperlake")},
    {F_SSE3, UNKNOWN, "", KEEP_ENV_SSE(UNKNOWN)},
    {F_AVX, "Prescott", "Prescott", KEEP_ENV_SSE("Prescott")},
    {F_AVX, "Haswell", "haswell", KEEP_ENV_SSE("Haswell")},
    {F_AVX, "SkylakeX", "SkylakeX", KEEP_ENV_SSE("SkylakeX")},
    {F_AVX, "Cooperlake", "Cooperlake", KEEP_ENV_SSE("Cooperlake")},
    {F_AVX, UNKNOWN, "Prescott", KEEP_ENV_SSE(UNKNOWN)},
    {F_AVX2, "Prescott", "Prescott", KEEP_ENV_AVX2("Prescott")},
    {F_AVX2, "Haswell", "Haswell", KEEP_ENV_AVX2("Haswell")},
    {F_AVX2, "SkylakeX", "SkylakeX", KEEP_ENV_AVX2("SkylakeX")},
    {F_AVX2, "Cooperlake", "Cooperlake", KEEP_ENV_AVX2("Cooperlake")},
    {F_AVX2, UNKNOWN, "Haswell", KEEP_ENV_AVX2(UNKNOWN)},
    {F_512, "Prescott", "Prescott", KEEP_ENV_512("Prescott")},
    {F_512, "Haswell", "Haswell", KEEP_ENV_512("Haswell")},
    {F_512, "SkylakeX", "SkylakeX", KEEP_ENV_512("SkylakeX")},
    {F_512, "Cooperlake", "Cooperlake", KEEP_ENV_512("Cooperlake")},
    {F_512, UNKNOWN, "garbage", KEEP_ENV_512(UNKNOWN)},
    {F_BF16, "Prescott", "Prescott", KEEP_ENV_512("Prescott")},
    {F_BF16, "Haswell", "Haswell", KEEP_ENV_512("Haswell")},
    {F_BF16, "SkylakeX", "SkylakeX", KEEP_ENV_512("SkylakeX")},
    {F_BF16, "Cooperlake", "Cooperlake", KEEP_ENV_512("Cooperlake")},
    {F_BF16, UNKNOWN, "Zen", KEEP_ENV_512(UNKNOWN)},
};

START_TEST(kernels_decision_table)
{
    const size_t n_rows = sizeof decision_rows / sizeof decision_rows[0];
    ck_assert_uint_eq(n_rows, 6 * 5 * 2);
    for (size_t r = 0; r < n_rows; r++) {
        const struct decision_row *row = &decision_rows[r];
        const struct moe_kernels_cpu cpu = {"GenuineIntel", row->features};
        for (int o = 0; o < N_OPTS; o++) {
            struct moe_kernels_decision d;
            char err[512] = "";
            const int rc = moe_kernels_decide(&d, &cpu, row->chosen, row->env, options[o], err,
                                              sizeof err);
            const char *want = row->want[o];
            ck_assert_msg(d.reason[0] != '\0', "row %zu option %s: empty reason", r, options[o]);
            if (want[0] == 'E') {
                ck_assert_msg(rc == MOE_ERR_CONFIG && err[0] != '\0',
                              "row %zu (%s) option %s: rc %d, want MOE_ERR_CONFIG", r,
                              row->chosen, options[o], rc);
                ck_assert_int_eq(d.action, MOE_KERNELS_KEEP);
                continue;
            }
            ck_assert_msg(rc == 0, "row %zu (%s) option %s: rc %d (%s)", r, row->chosen,
                          options[o], rc, err);
            const enum moe_kernels_action want_action =
                want[0] == 'S' ? MOE_KERNELS_SWITCH : MOE_KERNELS_KEEP;
            ck_assert_msg(d.action == want_action && strcmp(d.target, want + 2) == 0,
                          "row %zu (features %#x, chosen %s, env %s) option %s: got %s %s (%s), "
                          "want %s",
                          r, row->features, row->chosen, row->env ? row->env : "unset",
                          options[o], d.action == MOE_KERNELS_SWITCH ? "switch to" : "keep",
                          d.target, d.reason, want);
            if (row->env)
                ck_assert_msg(strstr(d.reason, "OPENBLAS_CORETYPE=") != NULL, "row %zu: %s", r,
                              d.reason);
        }
    }
}
END_TEST

START_TEST(kernels_decision_reasons)
{
    const struct moe_kernels_cpu avx512 = {"GenuineIntel", F_512};
    const struct moe_kernels_cpu avx2 = {"AuthenticAMD", F_AVX2};
    struct moe_kernels_decision d;
    char err[512];

    /* The brief's example line, and NULL option meaning auto. */
    ck_assert_int_eq(moe_kernels_decide(&d, &avx512, "Prescott", NULL, NULL, err, sizeof err), 0);
    ck_assert_int_eq(d.action, MOE_KERNELS_SWITCH);
    ck_assert_str_eq(d.target, "SkylakeX");
    ck_assert_str_eq(d.reason, "OpenBLAS chose Prescott; the CPU has AVX-512");

    ck_assert_int_eq(moe_kernels_decide(&d, &avx512, "Prescott", "Haswell", "auto", err,
                                        sizeof err), 0);
    ck_assert_str_eq(d.reason, "OPENBLAS_CORETYPE=Haswell is set in the environment");

    /* Names compare case-insensitively, options too; targets are spelled
     * as OpenBLAS spells them. */
    ck_assert_int_eq(moe_kernels_decide(&d, &avx512, "haswell", NULL, "SKYLAKEX", err,
                                        sizeof err), 0);
    ck_assert_int_eq(d.action, MOE_KERNELS_SWITCH);
    ck_assert_str_eq(d.target, "SkylakeX");
    ck_assert_int_eq(moe_kernels_decide(&d, &avx512, "skylakex", NULL, "Auto", err, sizeof err),
                     0);
    ck_assert_int_eq(d.action, MOE_KERNELS_KEEP);
    ck_assert_int_eq(moe_kernels_decide(&d, &avx2, "PRESCOTT", NULL, "KEEP", err, sizeof err), 0);
    ck_assert_int_eq(d.action, MOE_KERNELS_KEEP);
    ck_assert_str_eq(d.target, "PRESCOTT");

    /* Zen (a Zen 1-3 choice, or Zen 4 under an OpenBLAS that maps it to
     * Zen) with AVX-512 goes to SkylakeX; without it stays. */
    ck_assert_int_eq(moe_kernels_decide(&d, &avx512, "Zen", NULL, "auto", err, sizeof err), 0);
    ck_assert_int_eq(d.action, MOE_KERNELS_SWITCH);
    ck_assert_str_eq(d.target, "SkylakeX");
    ck_assert_int_eq(moe_kernels_decide(&d, &avx2, "Zen", NULL, "auto", err, sizeof err), 0);
    ck_assert_int_eq(d.action, MOE_KERNELS_KEEP);
    ck_assert_str_eq(d.reason, "OpenBLAS's own choice, as good as Haswell for a CPU with AVX2 "
                               "and FMA");

    /* Errors say what is wrong. */
    ck_assert_int_eq(moe_kernels_decide(&d, &avx2, "Haswell", NULL, "SkylakeX", err, sizeof err),
                     MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "SkylakeX needs AVX-512 F") != NULL, "%s", err);
    ck_assert_int_eq(moe_kernels_decide(&d, &avx2, "Haswell", NULL, "Bulldozer", err, sizeof err),
                     MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "FMA4") != NULL, "%s", err);
    ck_assert_int_eq(moe_kernels_decide(&d, &avx2, "Haswell", NULL, "turbo\n", err, sizeof err),
                     MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "\"turbo\\x0a\"") && strstr(err, "Cooperlake"), "%s", err);
    ck_assert_int_eq(moe_kernels_decide(&d, &avx2, "Haswell", NULL, "", err, sizeof err),
                     MOE_ERR_CONFIG);
}
END_TEST

START_TEST(kernels_set_table)
{
    ck_assert_str_eq(moe_kernels_set_name("cooperLAKE"), "Cooperlake");
    ck_assert_str_eq(moe_kernels_set_name("skylakex"), "SkylakeX");
    ck_assert_str_eq(moe_kernels_set_name("Opteron_SSE3"), "Opteron_SSE3");
    ck_assert_ptr_null(moe_kernels_set_name("SapphireRapids")); /* not in 0.3.21 */
    ck_assert_ptr_null(moe_kernels_set_name("Katmai"));         /* 32-bit only */
    ck_assert_ptr_null(moe_kernels_set_name(""));
    ck_assert_ptr_null(moe_kernels_set_name(NULL));

    const struct moe_kernels_cpu bf16 = {"AuthenticAMD", F_BF16};
    char err[256];
    ck_assert_int_eq(moe_kernels_set_supported(&bf16, "Cooperlake", err, sizeof err), 0);
    ck_assert_int_eq(moe_kernels_set_supported(&bf16, "Zen", err, sizeof err), 0);
    ck_assert_int_eq(moe_kernels_set_supported(&bf16, "Nehalem", err, sizeof err), 0);
    ck_assert_int_eq(moe_kernels_set_supported(&bf16, "Barcelona", err, sizeof err),
                     MOE_ERR_CONFIG);
    ck_assert_int_eq(moe_kernels_set_supported(&bf16, "Excavator", err, sizeof err),
                     MOE_ERR_CONFIG);
    ck_assert_int_eq(moe_kernels_set_supported(&bf16, "Frobnicator", err, sizeof err),
                     MOE_ERR_NOTFOUND);
    const struct moe_kernels_cpu skx_no_bw = {"GenuineIntel", F_512 & ~MOE_KERNELS_AVX512BW};
    ck_assert_int_eq(moe_kernels_set_supported(&skx_no_bw, "SkylakeX", err, sizeof err),
                     MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "AVX-512 BW") != NULL, "%s", err);

    char desc[256];
    const struct moe_kernels_cpu none = {"", 0};
    moe_kernels_cpu_describe(&none, desc, sizeof desc);
    ck_assert_str_eq(desc, "none");
    const struct moe_kernels_cpu some = {"", MOE_KERNELS_SSE2 | MOE_KERNELS_AVX512_BF16};
    moe_kernels_cpu_describe(&some, desc, sizeof desc);
    ck_assert_str_eq(desc, "sse2 avx512_bf16");
}
END_TEST

/* The kernel set against a recorded one (checkpoints, DESIGN §4). */
START_TEST(kernels_compare_recorded)
{
    char err[512] = "";
    const char *mine = moe_kernels_effective();
    ck_assert_str_eq(mine, moe_blas_reference() ? "reference" : moe_kernels_name());
    ck_assert_int_eq(moe_kernels_compare(NULL, "old.safetensors", true, err, sizeof err), 0);
    ck_assert_int_eq(moe_kernels_compare("", "old.safetensors", true, err, sizeof err), 0);
    ck_assert_int_eq(moe_kernels_compare(mine, "a.safetensors", true, err, sizeof err), 0);
    const char *other = strcmp(mine, "Frobnicator") ? "Frobnicator" : "Prescott";
    ck_assert_int_eq(moe_kernels_compare(other, "a.safetensors", false, err, sizeof err), 0);
    ck_assert_int_eq(moe_kernels_compare(other, "a.safetensors", true, err, sizeof err),
                     MOE_ERR_CONFIG);
    char want[256];
    snprintf(want, sizeof want,
             "a.safetensors was computed with the BLAS kernels %s and this process runs %s", other,
             mine);
    ck_assert_msg(strstr(err, want) == err && strstr(err, "--strict-determinism"), "%s", err);
}
END_TEST

/* ------------------------------------------------------------------------
 * Self-test */

static void sgemm_ignores_beta(bool ta, bool tb, int m, int n, int k, float alpha, const float *a,
                               int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    (void)beta;
    moe_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, 0.0f, c, ldc);
}

/* Right everywhere except one element, and only for trans_a && !trans_b. */
static void sgemm_corrupts_one(bool ta, bool tb, int m, int n, int k, float alpha, const float *a,
                               int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    moe_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (ta && !tb && m > 3 && n > 5)
        c[3 * ldc + 5] += 0.25f;
}

/* Writes the first padding element of C's first row. */
static void sgemm_writes_padding(bool ta, bool tb, int m, int n, int k, float alpha,
                                 const float *a, int lda, const float *b, int ldb, float beta,
                                 float *c, int ldc)
{
    moe_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    if (ldc > n)
        c[n] = 0.0f;
}

/* Scales C by beta itself, so beta = 0 turns NaN into NaN, not 0. */
static void sgemm_reads_c_at_beta0(bool ta, bool tb, int m, int n, int k, float alpha,
                                   const float *a, int lda, const float *b, int ldb, float beta,
                                   float *c, int ldc)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            c[(size_t)i * ldc + j] *= beta;
    moe_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, 1.0f, c, ldc);
}

/* Assumes A is packed (lda = its row length). */
static void sgemm_ignores_lda(bool ta, bool tb, int m, int n, int k, float alpha, const float *a,
                              int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    (void)lda;
    moe_sgemm(ta, tb, m, n, k, alpha, a, ta ? m : k, b, ldb, beta, c, ldc);
}

START_TEST(kernels_selftest_passes_real_sgemm)
{
    char err[512] = "";
    ck_assert_msg(moe_kernels_selftest(moe_sgemm, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(moe_kernels_selftest(moe_sgemm_ref, err, sizeof err) == 0, "%s", err);
}
END_TEST

START_TEST(kernels_selftest_catches_broken_sgemm)
{
    static const struct {
        moe_kernels_sgemm_fn fn;
        const char *must_say; /* in the error sentence */
    } broken[] = {
        {sgemm_ignores_beta, "trans_a=0 trans_b=0 m=1 n=1 k=1"},
        {sgemm_corrupts_one, "trans_a=1 trans_b=0 m=17 n=33 k=5"},
        {sgemm_writes_padding, "padding"},
        {sgemm_reads_c_at_beta0, "beta=0): C(0,0) = nan"},
        {sgemm_ignores_lda, "m=17 n=33 k=5"},
    };
    for (size_t i = 0; i < sizeof broken / sizeof broken[0]; i++) {
        char err[512] = "";
        ck_assert_int_eq(moe_kernels_selftest(broken[i].fn, err, sizeof err), MOE_ERR_STATE);
        ck_assert_msg(strstr(err, broken[i].must_say) != NULL, "case %zu: %s", i, err);
        ck_assert_msg(strncmp(err, "sgemm self-test failed for ", 27) == 0, "%s", err);
    }
}
END_TEST

START_TEST(kernels_gflops_positive)
{
    const double g = moe_kernels_sgemm_gflops(moe_sgemm, 0.01);
    ck_assert_msg(g > 0.1 && isfinite(g), "%g GFLOP/s", g);
}
END_TEST

/* ------------------------------------------------------------------------
 * Feature detection against /proc/cpuinfo */

/* The first "flags" line of /proc/cpuinfo into out; false if none. */
static bool cpuinfo_line(const char *key, char *out, size_t cap)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return false;
    char *line = NULL;
    size_t n = 0;
    bool found = false;
    while (getline(&line, &n, f) > 0) {
        if (strncmp(line, key, strlen(key)) == 0 && strchr(line, ':')) {
            snprintf(out, cap, " %s", strchr(line, ':') + 1);
            out[strcspn(out, "\n")] = ' ';
            found = true;
            break;
        }
    }
    free(line);
    fclose(f);
    return found;
}

START_TEST(kernels_features_match_cpuinfo)
{
    static char flags[16384];
    if (!cpuinfo_line("flags", flags, sizeof flags)) {
        fprintf(stderr, "kernels_features_match_cpuinfo: no x86 flags in /proc/cpuinfo; "
                        "skipped\n");
        return;
    }
    /* Linux's names; it clears avx* when the OS does not save the state. */
    static const struct {
        unsigned bit;
        const char *flag;
    } map[] = {
        {MOE_KERNELS_SSE2, "sse2"},          {MOE_KERNELS_SSE3, "pni"},
        {MOE_KERNELS_SSSE3, "ssse3"},        {MOE_KERNELS_SSE41, "sse4_1"},
        {MOE_KERNELS_SSE42, "sse4_2"},       {MOE_KERNELS_SSE4A, "sse4a"},
        {MOE_KERNELS_AVX, "avx"},            {MOE_KERNELS_AVX2, "avx2"},
        {MOE_KERNELS_FMA, "fma"},            {MOE_KERNELS_FMA4, "fma4"},
        {MOE_KERNELS_AVX512F, "avx512f"},    {MOE_KERNELS_AVX512BW, "avx512bw"},
        {MOE_KERNELS_AVX512DQ, "avx512dq"},  {MOE_KERNELS_AVX512VL, "avx512vl"},
        {MOE_KERNELS_AVX512CD, "avx512cd"},  {MOE_KERNELS_AVX512_BF16, "avx512_bf16"},
    };
    struct moe_kernels_cpu cpu;
    moe_kernels_cpu_detect(&cpu);
    char desc[512];
    moe_kernels_cpu_describe(&cpu, desc, sizeof desc);
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        char word[40];
        snprintf(word, sizeof word, " %s ", map[i].flag);
        const bool in_cpuinfo = strstr(flags, word) != NULL;
        const bool detected = (cpu.features & map[i].bit) != 0;
        ck_assert_msg(in_cpuinfo == detected, "%s: /proc/cpuinfo %d, detected %d (detected: %s)",
                      map[i].flag, in_cpuinfo, detected, desc);
    }
    char vendor[64];
    if (cpuinfo_line("vendor_id", vendor, sizeof vendor)) {
        char want[64];
        ck_assert_int_eq(sscanf(vendor, " %63s", want), 1);
        ck_assert_str_eq(cpu.vendor, want);
    }
}
END_TEST

/* ------------------------------------------------------------------------
 * The real re-execution */

#define HELPER_ENV "MOE_KERNELS_HELPER"
#define HELPER_OPTION "MOE_KERNELS_HELPER_OPTION"
#define HELPER_PRETEND "MOE_KERNELS_HELPER_PRETEND"
#define HELPER_BREAK "MOE_KERNELS_HELPER_BREAK"

static void sgemm_wrong(bool ta, bool tb, int m, int n, int k, float alpha, const float *a,
                        int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    moe_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    c[0] += 1.0f;
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v ? v : dflt;
}

/* Runs only inside the child of run_helper(); see the file header. */
START_TEST(kernels_helper)
{
    if (!getenv(HELPER_ENV))
        return;
    static char a0[] = "moe-tests", a1[] = "kernels", a2[] = "helper";
    static char *argv[] = {a0, a1, a2, NULL};
    struct moe_kernels__hooks hooks = {getenv(HELPER_PRETEND), NULL};
    /* Break only the switched set, which is what a stage "switch" process
     * checks (the marker is private to moe_kernels; a test may peek). */
    if (getenv(HELPER_BREAK) && strcmp(env_or("MOE_KERNELS_STAGE", ""), "switch") == 0)
        hooks.sgemm = sgemm_wrong;
    moe_log_set_name("kernels-helper");
    char err[1024] = "";
    const int rc = moe_kernels__init_with(3, argv, getenv(HELPER_OPTION), &hooks, err, sizeof err);
    printf("helper: rc=%d name=%s switched=%d OPENBLAS_CORETYPE=%s MOE_KERNELS_STAGE=%s "
           "MOE_KERNELS_CHOSEN=%s MOE_KERNELS_WHY=%s err=%s\n",
           rc, moe_kernels_name(), moe_kernels_switched(), env_or("OPENBLAS_CORETYPE", "(unset)"),
           env_or("MOE_KERNELS_STAGE", "(unset)"), env_or("MOE_KERNELS_CHOSEN", "(unset)"),
           env_or("MOE_KERNELS_WHY", "(unset)"), err);
    fflush(stdout);
}
END_TEST

/* Runs `moe-tests kernels helper` with the given settings (NULL: unset) and
 * collects its stdout and stderr into out. Returns its wait status. */
static int run_helper(const char *option, const char *pretend, const char *coretype, bool brk,
                      char *out, size_t cap)
{
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        dup2(fds[1], STDERR_FILENO);
        close(fds[0]);
        close(fds[1]);
        setenv(HELPER_ENV, "1", 1);
        if (option)
            setenv(HELPER_OPTION, option, 1);
        if (pretend)
            setenv(HELPER_PRETEND, pretend, 1);
        if (brk)
            setenv(HELPER_BREAK, "1", 1);
        if (coretype)
            setenv("OPENBLAS_CORETYPE", coretype, 1);
        else
            unsetenv("OPENBLAS_CORETYPE");
        execl("/proc/self/exe", "moe-tests", "kernels", "helper", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fds[0], out + len, cap - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
        if (len == cap - 1) { /* drain the rest */
            char sink[4096];
            while (read(fds[0], sink, sizeof sink) > 0) {
            }
            break;
        }
    }
    out[len] = '\0';
    close(fds[0]);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return status;
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* The helper's "BLAS kernels: ..." info line (checked to be the only one). */
static void the_line(const char *out, char *line, size_t cap)
{
    ck_assert_msg(count_of(out, "BLAS kernels:") == 1, "want one info line:\n%s", out);
    const char *p = strstr(out, "BLAS kernels:");
    snprintf(line, cap, "%.*s", (int)strcspn(p, "\n"), p);
    fprintf(stderr, "    observed: %s\n", line);
}

/* What OpenBLAS chooses with OPENBLAS_CORETYPE unset: this process's choice
 * when its own environment has none, else NULL (unknowable here). */
static const char *own_choice(void)
{
    return getenv("OPENBLAS_CORETYPE") ? NULL : moe_kernels_name();
}

static char helper_out[1 << 16];

START_TEST(kernels_reexec_auto)
{
    /* OPENBLAS_CORETYPE unset: auto switches if OpenBLAS's own choice can
     * be beaten on this CPU, else keeps it. */
    const int st = run_helper("auto", NULL, NULL, false, helper_out, sizeof helper_out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x:\n%s", st, helper_out);
    char line[1024];
    the_line(helper_out, line, sizeof line);
    ck_assert_msg(strstr(helper_out, "helper: rc=0 ") && strstr(helper_out,
                  "OPENBLAS_CORETYPE=(unset) MOE_KERNELS_STAGE=(unset) MOE_KERNELS_CHOSEN=(unset) "
                  "MOE_KERNELS_WHY=(unset)"), "%s", helper_out);
    const char *own = own_choice();
    if (!own)
        return;
    struct moe_kernels_cpu cpu;
    moe_kernels_cpu_detect(&cpu);
    struct moe_kernels_decision d;
    char err[256];
    ck_assert_int_eq(moe_kernels_decide(&d, &cpu, own, NULL, "auto", err, sizeof err), 0);
    char want[512];
    snprintf(want, sizeof want, "BLAS kernels: %s (%s; self-test passed), sgemm ", d.target,
             d.reason);
    ck_assert_msg(strstr(line, want) == line, "want \"%s...\", got \"%s\"", want, line);
    snprintf(want, sizeof want, "name=%s switched=%d ", d.target,
             d.action == MOE_KERNELS_SWITCH);
    ck_assert_msg(strstr(helper_out, want), "want %s:\n%s", want, helper_out);
}
END_TEST

START_TEST(kernels_reexec_switch_from_prescott)
{
    /* As on an AVX-512 Xeon that 0.3.21 does not know: OpenBLAS "chose"
     * Prescott, so auto re-executes into the best set for this CPU. */
    struct moe_kernels_cpu cpu;
    moe_kernels_cpu_detect(&cpu);
    struct moe_kernels_decision d;
    char err[256];
    ck_assert_int_eq(moe_kernels_decide(&d, &cpu, "Prescott", NULL, "auto", err, sizeof err), 0);
    const int st = run_helper("auto", "Prescott", NULL, false, helper_out, sizeof helper_out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x:\n%s", st, helper_out);
    char line[1024], want[512];
    the_line(helper_out, line, sizeof line);
    if (d.action == MOE_KERNELS_KEEP) /* a CPU without AVX: nothing to switch to */
        return;
    snprintf(want, sizeof want, "BLAS kernels: %s (OpenBLAS chose Prescott; the CPU has ",
             d.target);
    ck_assert_msg(strstr(line, want) == line && strstr(line, "; self-test passed), sgemm "),
                  "want \"%s...\", got \"%s\"", want, line);
    snprintf(want, sizeof want,
             "helper: rc=0 name=%s switched=1 OPENBLAS_CORETYPE=(unset) MOE_KERNELS_STAGE=(unset) "
             "MOE_KERNELS_CHOSEN=(unset) MOE_KERNELS_WHY=(unset)",
             d.target);
    ck_assert_msg(strstr(helper_out, want), "want %s:\n%s", want, helper_out);
}
END_TEST

START_TEST(kernels_reexec_fallback)
{
    /* The switched set fails its self-test: the process re-executes once
     * more with OpenBLAS's original choice (really loading Prescott). */
    struct moe_kernels_cpu cpu;
    moe_kernels_cpu_detect(&cpu);
    struct moe_kernels_decision d;
    char err[256];
    ck_assert_int_eq(moe_kernels_decide(&d, &cpu, "Prescott", NULL, "auto", err, sizeof err), 0);
    if (d.action == MOE_KERNELS_KEEP)
        return;
    const int st = run_helper("auto", "Prescott", NULL, true, helper_out, sizeof helper_out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x:\n%s", st, helper_out);
    char line[1024], want[512];
    the_line(helper_out, line, sizeof line);
    snprintf(want, sizeof want,
             "BLAS kernels: Prescott (OpenBLAS's own choice; %s failed: sgemm self-test failed "
             "for trans_a=0 trans_b=0 m=1 n=1 k=1 ",
             d.target);
    ck_assert_msg(strstr(line, want) == line && strstr(line, "; self-test passed), sgemm "),
                  "want \"%s...\", got \"%s\"", want, line);
    ck_assert_msg(strstr(helper_out, "helper: rc=0 name=Prescott switched=0 "
                                     "OPENBLAS_CORETYPE=(unset) MOE_KERNELS_STAGE=(unset) "
                                     "MOE_KERNELS_CHOSEN=(unset) MOE_KERNELS_WHY=(unset)"),
                  "%s", helper_out);
}
END_TEST

START_TEST(kernels_reexec_respects_user_coretype)
{
    /* A user's OPENBLAS_CORETYPE stays, with every option, even a name
     * the CPU could run better. Haswell where the CPU has AVX2 (as in the
     * brief), else Prescott. */
    struct moe_kernels_cpu cpu;
    moe_kernels_cpu_detect(&cpu);
    char err[256];
    const char *user = moe_kernels_set_supported(&cpu, "Haswell", err, sizeof err) == 0
                           ? "Haswell"
                           : "Prescott";
    const char *opts[] = {"auto", "keep", "SkylakeX"};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        const int st = run_helper(opts[i], NULL, user, false, helper_out, sizeof helper_out);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x:\n%s", st, helper_out);
        char line[1024], want[512];
        the_line(helper_out, line, sizeof line);
        snprintf(want, sizeof want,
                 "BLAS kernels: %s (OPENBLAS_CORETYPE=%s is set in the environment; self-test "
                 "passed), sgemm ",
                 user, user);
        ck_assert_msg(strstr(line, want) == line, "want \"%s...\", got \"%s\"", want, line);
        snprintf(want, sizeof want,
                 "helper: rc=0 name=%s switched=0 OPENBLAS_CORETYPE=%s MOE_KERNELS_STAGE=(unset)",
                 user, user);
        ck_assert_msg(strstr(helper_out, want), "want %s:\n%s", want, helper_out);
    }
}
END_TEST

START_TEST(kernels_reexec_keep_and_name)
{
    const int st = run_helper("keep", "Prescott", NULL, false, helper_out, sizeof helper_out);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %#x:\n%s", st, helper_out);
    char line[1024], want[512];
    the_line(helper_out, line, sizeof line);
    const char *own = own_choice();
    snprintf(want, sizeof want,
             "BLAS kernels: %s (OpenBLAS's own choice, kept by option keep; self-test passed)",
             own ? own : "");
    ck_assert_msg(strstr(line, own ? want : "OpenBLAS's own choice, kept by option keep"),
                  "want \"%s\", got \"%s\"", want, line);
    ck_assert_msg(strstr(helper_out, "switched=0 OPENBLAS_CORETYPE=(unset)"), "%s", helper_out);

    /* A name: switches even where auto would not (here to Prescott). */
    const int st2 = run_helper("prescott", NULL, NULL, false, helper_out, sizeof helper_out);
    ck_assert_msg(WIFEXITED(st2) && WEXITSTATUS(st2) == 0, "status %#x:\n%s", st2, helper_out);
    the_line(helper_out, line, sizeof line);
    if (own && strcmp(own, "Prescott") != 0) {
        snprintf(want, sizeof want,
                 "BLAS kernels: Prescott (OpenBLAS chose %s; the option asks for Prescott; "
                 "self-test passed)",
                 own);
        ck_assert_msg(strstr(line, want) == line, "want \"%s\", got \"%s\"", want, line);
        ck_assert_msg(strstr(helper_out, "name=Prescott switched=1 OPENBLAS_CORETYPE=(unset) "
                                         "MOE_KERNELS_STAGE=(unset)"),
                      "%s", helper_out);
    }

    /* A bad option: an error, no info line, no re-execution. */
    const int st3 = run_helper("fastest", NULL, NULL, false, helper_out, sizeof helper_out);
    ck_assert_msg(WIFEXITED(st3) && WEXITSTATUS(st3) == 0, "status %#x:\n%s", st3, helper_out);
    ck_assert_int_eq(count_of(helper_out, "BLAS kernels:"), 0);
    ck_assert_msg(strstr(helper_out, "helper: rc=-5 ") &&
                      strstr(helper_out, "unknown BLAS kernel set \"fastest\""),
                  "%s", helper_out);
}
END_TEST

Suite *test_kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("decide");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, kernels_decision_table);
    tcase_add_test(tc, kernels_decision_reasons);
    tcase_add_test(tc, kernels_set_table);
    tcase_add_test(tc, kernels_compare_recorded);
    suite_add_tcase(s, tc);

    TCase *ts = tcase_create("selftest");
    tcase_set_timeout(ts, 30);
    tcase_add_test(ts, kernels_selftest_passes_real_sgemm);
    tcase_add_test(ts, kernels_selftest_catches_broken_sgemm);
    tcase_add_test(ts, kernels_gflops_positive);
    tcase_add_test(ts, kernels_features_match_cpuinfo);
    suite_add_tcase(s, ts);

    /* Each test starts up to three processes of this binary in turn. */
    TCase *tr = tcase_create("reexec");
    tcase_set_timeout(tr, 120);
    tcase_add_test(tr, kernels_reexec_auto);
    tcase_add_test(tr, kernels_reexec_switch_from_prescott);
    tcase_add_test(tr, kernels_reexec_fallback);
    tcase_add_test(tr, kernels_reexec_respects_user_coretype);
    tcase_add_test(tr, kernels_reexec_keep_and_name);
    suite_add_tcase(s, tr);

    TCase *th = tcase_create("helper");
    tcase_set_timeout(th, 60);
    tcase_add_test(th, kernels_helper);
    suite_add_tcase(s, th);
    return s;
}
