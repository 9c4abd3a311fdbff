/* OpenBLAS kernel-set choice at process start (see moe_kernels.h).
 *
 * Runs in every process that multiplies matrices, once, from main() before
 * other threads start. It reads CPUID, decides with a pure function, and may
 * re-execute the process (at most twice: switch, then fallback) with
 * OPENBLAS_CORETYPE set. It does not touch OpenBLAS's thread count, and it
 * never writes anything except one moe_log line (plus debug lines). */
#include "moe_kernels.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "moe_blas.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_rng.h"
#include "moe_tensor.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define KERNELS_X86 1
#else
#define KERNELS_X86 0
#endif

/* ------------------------------------------------------------------------
 * CPU features */

static const struct {
    unsigned bit;
    const char *name;   /* as /proc/cpuinfo spells the flag */
    const char *pretty; /* for sentences */
} kernels_features[] = {
    {MOE_KERNELS_SSE2, "sse2", "SSE2"},
    {MOE_KERNELS_SSE3, "sse3", "SSE3"},
    {MOE_KERNELS_SSSE3, "ssse3", "SSSE3"},
    {MOE_KERNELS_SSE41, "sse4_1", "SSE4.1"},
    {MOE_KERNELS_SSE42, "sse4_2", "SSE4.2"},
    {MOE_KERNELS_SSE4A, "sse4a", "SSE4a"},
    {MOE_KERNELS_AVX, "avx", "AVX"},
    {MOE_KERNELS_AVX2, "avx2", "AVX2"},
    {MOE_KERNELS_FMA, "fma", "FMA"},
    {MOE_KERNELS_FMA4, "fma4", "FMA4"},
    {MOE_KERNELS_AVX512F, "avx512f", "AVX-512 F"},
    {MOE_KERNELS_AVX512BW, "avx512bw", "AVX-512 BW"},
    {MOE_KERNELS_AVX512DQ, "avx512dq", "AVX-512 DQ"},
    {MOE_KERNELS_AVX512VL, "avx512vl", "AVX-512 VL"},
    {MOE_KERNELS_AVX512CD, "avx512cd", "AVX-512 CD"},
    {MOE_KERNELS_AVX512_BF16, "avx512_bf16", "AVX512_BF16"},
};
#define KERNELS_N_FEATURES (sizeof kernels_features / sizeof kernels_features[0])

#if KERNELS_X86
/* XCR0, the register state the OS saves on context switches. Only valid
 * when CPUID.1:ECX.OSXSAVE is set. */
static uint64_t kernels_xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

void moe_kernels_cpu_detect(struct moe_kernels_cpu *cpu)
{
    memset(cpu, 0, sizeof *cpu);
#if KERNELS_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return;
    const unsigned max_leaf = a;
    memcpy(cpu->vendor, &b, 4);
    memcpy(cpu->vendor + 4, &d, 4);
    memcpy(cpu->vendor + 8, &c, 4);
    cpu->vendor[12] = '\0';

    unsigned f = 0;
    __get_cpuid(1, &a, &b, &c, &d);
    if (d & (1u << 26))
        f |= MOE_KERNELS_SSE2;
    if (c & (1u << 0))
        f |= MOE_KERNELS_SSE3;
    if (c & (1u << 9))
        f |= MOE_KERNELS_SSSE3;
    if (c & (1u << 19))
        f |= MOE_KERNELS_SSE41;
    if (c & (1u << 20))
        f |= MOE_KERNELS_SSE42;
    /* VEX- and EVEX-encoded instructions fault unless the OS saves the
     * registers they use, whatever CPUID says: XCR0 bits 1 (SSE) and 2
     * (AVX upper halves) for AVX, and 5, 6, 7 (opmask, upper ZMM0-15,
     * ZMM16-31) for AVX-512. A hypervisor can hide them. */
    const bool osxsave = c & (1u << 27);
    const uint64_t xcr0 = osxsave ? kernels_xgetbv0() : 0;
    const bool os_avx = (xcr0 & 0x6) == 0x6;
    const bool os_avx512 = os_avx && (xcr0 & 0xe0) == 0xe0;
    if (os_avx && (c & (1u << 28)))
        f |= MOE_KERNELS_AVX;
    if (os_avx && (c & (1u << 12)))
        f |= MOE_KERNELS_FMA;

    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        const unsigned max_sub7 = a;
        if (os_avx && (b & (1u << 5)))
            f |= MOE_KERNELS_AVX2;
        if (os_avx512) {
            if (b & (1u << 16))
                f |= MOE_KERNELS_AVX512F;
            if (b & (1u << 17))
                f |= MOE_KERNELS_AVX512DQ;
            if (b & (1u << 28))
                f |= MOE_KERNELS_AVX512CD;
            if (b & (1u << 30))
                f |= MOE_KERNELS_AVX512BW;
            if (b & (1u << 31))
                f |= MOE_KERNELS_AVX512VL;
        }
        if (max_sub7 >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (os_avx512 && (a & (1u << 5)))
                f |= MOE_KERNELS_AVX512_BF16;
        }
    }
    /* __get_cpuid checks the highest extended leaf itself. */
    if (__get_cpuid(0x80000001u, &a, &b, &c, &d)) {
        if (c & (1u << 6))
            f |= MOE_KERNELS_SSE4A;
        if (os_avx && (c & (1u << 16)))
            f |= MOE_KERNELS_FMA4;
    }
    cpu->features = f;
#endif
}

void moe_kernels_cpu_describe(const struct moe_kernels_cpu *cpu, char *out, size_t cap)
{
    if (cap == 0)
        return;
    out[0] = '\0';
    size_t o = 0;
    for (size_t i = 0; i < KERNELS_N_FEATURES; i++) {
        if (!(cpu->features & kernels_features[i].bit))
            continue;
        int n = snprintf(out + o, cap - o, "%s%s", o ? " " : "", kernels_features[i].name);
        if (n < 0 || (size_t)n >= cap - o)
            return; /* truncated */
        o += (size_t)n;
    }
    if (o == 0)
        snprintf(out, cap, "none");
}

/* ------------------------------------------------------------------------
 * The kernel sets of OpenBLAS 0.3.21 (DYNAMIC_ARCH, x86-64)
 *
 * Every name here was checked against Debian's libopenblas0-pthread
 * 0.3.21+ds-4: OPENBLAS_CORETYPE=<name> makes openblas_get_corename()
 * report <name>. (SapphireRapids is not among them: 0.3.21 ignores it like
 * any unknown name and detects the CPU itself. Katmai, Coppermine, Northwood
 * and Banias are 32-bit sets that load Prescott on x86-64, so they are left
 * out.)
 *
 * `needs` is what the set's kernels execute. Where we are unsure (the AMD
 * family-15h sets, whose kernels use FMA4, and Barcelona/Bobcat, written for
 * SSE4a parts) we ask for more rather than less: a set is only chosen when
 * the CPU surely runs it.
 *
 * `tier` ranks sgemm speed by instruction set, for "strictly better": all
 * SSE sets are one tier, the 128/256-bit AVX sets the next, then AVX2/FMA
 * (Haswell, Zen and the FMA-capable AMD sets, which OpenBLAS tunes for
 * their own parts), then AVX-512, then AVX-512 with BF16. Within a tier we
 * never switch: OpenBLAS's own pick is as good and tuned for the part. */

#define K_X86 MOE_KERNELS_SSE2
#define K_SSE3 (K_X86 | MOE_KERNELS_SSE3)
#define K_SSSE3 (K_SSE3 | MOE_KERNELS_SSSE3)
#define K_SSE41 (K_SSSE3 | MOE_KERNELS_SSE41)
#define K_SSE42 (K_SSE41 | MOE_KERNELS_SSE42)
#define K_AVX (K_SSE3 | MOE_KERNELS_AVX)
#define K_AVX2 (K_AVX | MOE_KERNELS_AVX2 | MOE_KERNELS_FMA)
#define K_AVX512 (K_AVX2 | MOE_KERNELS_AVX512)

struct kernels_set {
    const char *name;
    unsigned needs;
    int tier;
};

static const struct kernels_set kernels_sets[] = {
    {"Prescott", K_SSE3, 1},
    {"Core2", K_SSSE3, 1},
    {"Penryn", K_SSE41, 1},
    {"Dunnington", K_SSE41, 1},
    {"Nehalem", K_SSE42, 1},
    {"Atom", K_SSSE3, 1},
    {"Opteron", K_X86, 1},
    {"Opteron_SSE3", K_SSE3, 1},
    {"Barcelona", K_SSE3 | MOE_KERNELS_SSE4A, 1},
    {"Bobcat", K_SSSE3 | MOE_KERNELS_SSE4A, 1},
    {"Nano", K_SSE3, 1},
    {"Sandybridge", K_AVX, 2},
    {"Bulldozer", K_AVX | MOE_KERNELS_FMA4, 2},
    {"Piledriver", K_AVX | MOE_KERNELS_FMA | MOE_KERNELS_FMA4, 3},
    {"Steamroller", K_AVX | MOE_KERNELS_FMA | MOE_KERNELS_FMA4, 3},
    {"Excavator", K_AVX2 | MOE_KERNELS_FMA4, 3},
    {"Haswell", K_AVX2, 3},
    {"Zen", K_AVX2, 3},
    {"SkylakeX", K_AVX512, 4},
    {"Cooperlake", K_AVX512 | MOE_KERNELS_AVX512_BF16, 5},
};
#define KERNELS_N_SETS (sizeof kernels_sets / sizeof kernels_sets[0])

/* What "auto" may switch to, best first, with what the CPU then has. Zen 4
 * (AVX-512, BF16) lands on Cooperlake or SkylakeX like an Intel part. */
static const struct {
    const char *name;
    const char *has;
} kernels_auto[] = {
    {"Cooperlake", "AVX-512 and BF16"},
    {"SkylakeX", "AVX-512"},
    {"Haswell", "AVX2 and FMA"},
    {"Sandybridge", "AVX"},
};

static const struct kernels_set *kernels_set_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < KERNELS_N_SETS; i++)
        if (strcasecmp(name, kernels_sets[i].name) == 0)
            return &kernels_sets[i];
    return NULL;
}

const char *moe_kernels_set_name(const char *name)
{
    const struct kernels_set *s = kernels_set_find(name);
    return s ? s->name : NULL;
}

/* The first feature `set` needs that the CPU lacks, or NULL. */
static const char *kernels_missing(const struct moe_kernels_cpu *cpu, const struct kernels_set *set)
{
    for (size_t i = 0; i < KERNELS_N_FEATURES; i++)
        if ((set->needs & kernels_features[i].bit) && !(cpu->features & kernels_features[i].bit))
            return kernels_features[i].pretty;
    return NULL;
}

int moe_kernels_set_supported(const struct moe_kernels_cpu *cpu, const char *name, char *err,
                              size_t errlen)
{
    const struct kernels_set *s = kernels_set_find(name);
    if (!s) {
        moe_err_set(err, errlen, "the BLAS kernel set table does not know this name");
        return MOE_ERR_NOTFOUND;
    }
    const char *missing = kernels_missing(cpu, s);
    if (missing) {
        moe_err_set(err, errlen, "BLAS kernel set %s needs %s, which this CPU lacks", s->name,
                    missing);
        return MOE_ERR_CONFIG;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * The decision */

#define KERNELS_REASON(d, ...) snprintf((d)->reason, sizeof (d)->reason, __VA_ARGS__)

static void kernels_switch(struct moe_kernels_decision *d, const char *target)
{
    d->action = MOE_KERNELS_SWITCH;
    snprintf(d->target, sizeof d->target, "%s", target);
}

/* "auto": the best set the CPU allows, if strictly better than `chosen`. */
static void kernels_decide_auto(struct moe_kernels_decision *d, const struct moe_kernels_cpu *cpu,
                                const char *chosen)
{
    const struct kernels_set *cur = kernels_set_find(chosen);
    if (!cur) {
        /* A set we cannot rank (a newer OpenBLAS, another architecture, or
         * "Unknown") is trusted rather than replaced blindly. */
        KERNELS_REASON(d, "OpenBLAS's own choice, a set this table does not rank");
        return;
    }
    const struct kernels_set *best = NULL;
    const char *has = NULL;
    for (size_t i = 0; i < sizeof kernels_auto / sizeof kernels_auto[0] && !best; i++) {
        const struct kernels_set *s = kernels_set_find(kernels_auto[i].name);
        if (s && !kernels_missing(cpu, s)) {
            best = s;
            has = kernels_auto[i].has;
        }
    }
    if (!best)
        KERNELS_REASON(d, "OpenBLAS's own choice; the CPU has no AVX");
    else if (best->tier > cur->tier) {
        kernels_switch(d, best->name);
        KERNELS_REASON(d, "OpenBLAS chose %s; the CPU has %s", cur->name, has);
    } else if (best == cur)
        KERNELS_REASON(d, "OpenBLAS's own choice, the best for a CPU with %s", has);
    else if (best->tier == cur->tier)
        KERNELS_REASON(d, "OpenBLAS's own choice, as good as %s for a CPU with %s", best->name,
                       has);
    else
        KERNELS_REASON(d, "OpenBLAS's own choice, ranked above %s that the CPU's features "
                          "allow; never downgraded", best->name);
}

/* Checks `option` against the table and the CPU: NULL when it is auto or
 * keep (case-insensitive), else the set it names; *rc is MOE_ERR_CONFIG
 * (with the sentence in err and the reason in d) for a name the table does
 * not know or a set the CPU cannot run. */
static const struct kernels_set *kernels_option(struct moe_kernels_decision *d,
                                                const struct moe_kernels_cpu *cpu,
                                                const char *option, int *rc, char *err,
                                                size_t errlen)
{
    *rc = 0;
    if (!option || strcasecmp(option, "auto") == 0 || strcasecmp(option, "keep") == 0)
        return NULL;
    const struct kernels_set *want = kernels_set_find(option);
    if (!want) {
        char shown[48], names[400];
        moe_log_sanitize(shown, sizeof shown, option, strlen(option));
        size_t o = 0;
        for (size_t i = 0; i < KERNELS_N_SETS && o < sizeof names; i++) {
            int n = snprintf(names + o, sizeof names - o, "%s%s", i ? ", " : "",
                             kernels_sets[i].name);
            o += n > 0 ? (size_t)n : 0;
        }
        moe_err_set(err, errlen,
                    "--blas-kernels: unknown BLAS kernel set \"%s\": expected auto, keep or one "
                    "of %s", shown, names);
        KERNELS_REASON(d, "unknown BLAS kernel set \"%s\"", shown);
        *rc = MOE_ERR_CONFIG;
        return NULL;
    }
    const char *missing = kernels_missing(cpu, want);
    if (missing) {
        moe_err_set(err, errlen, "--blas-kernels: BLAS kernel set %s needs %s, which this CPU "
                    "lacks", want->name, missing);
        KERNELS_REASON(d, "%s needs %s, which this CPU lacks", want->name, missing);
        *rc = MOE_ERR_CONFIG;
    }
    return want;
}

int moe_kernels_decide(struct moe_kernels_decision *out, const struct moe_kernels_cpu *cpu,
                       const char *chosen, const char *env, const char *option, char *err,
                       size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->action = MOE_KERNELS_KEEP;
    if (!chosen)
        chosen = "Unknown";
    snprintf(out->target, sizeof out->target, "%s", chosen);

    /* A wrong option is an error whatever the environment says: the
     * command line is wrong for this machine. */
    int rc;
    const struct kernels_set *want = kernels_option(out, cpu, option, &rc, err, errlen);
    if (rc)
        return rc;
    /* The user's (or the machine's) own setting wins over every option:
     * some machines set it because other kernels misbehave there. */
    if (env) {
        char shown[48];
        moe_log_sanitize(shown, sizeof shown, env, strlen(env));
        KERNELS_REASON(out, "OPENBLAS_CORETYPE=%s is set in the environment", shown);
        return 0;
    }
    if (!option || strcasecmp(option, "auto") == 0) {
        kernels_decide_auto(out, cpu, chosen);
        return 0;
    }
    if (!want) {
        KERNELS_REASON(out, "OpenBLAS's own choice, kept by option keep");
        return 0;
    }
    if (strcasecmp(want->name, chosen) == 0) {
        KERNELS_REASON(out, "OpenBLAS's own choice, as the option asks");
        return 0;
    }
    kernels_switch(out, want->name);
    KERNELS_REASON(out, "OpenBLAS chose %s; the option asks for %s", chosen, want->name);
    return 0;
}

/* ------------------------------------------------------------------------
 * Self-test of an sgemm against moe_sgemm_ref
 *
 * Tolerance, per element of C:
 *   |c - ref| <= 1e-4 * (k max|a| max|b| |alpha| + |beta c0|)
 * Any summation order or blocking of a k-term float dot product is within
 * gamma_k sum_p |a_p b_p| <= k u k max|a| max|b| of the exact value
 * (Higham, Accuracy and Stability, 3.1; u = 2^-24; a fused multiply-add
 * only tightens it), and scaling by alpha and adding beta c0 adds a few u
 * of each term. Two correct results (the kernel's and the reference's)
 * therefore differ by at most about 2 k u (k max|a| max|b| |alpha|) + 3 u
 * |beta c0|; for our largest k = 129 that is 1.5e-5 of the first term, so
 * 1e-4 leaves a margin of 6 or more while staying far below what a kernel
 * bug does: a lost, doubled or misplaced term, an ignored beta, a wrong
 * stride or transpose changes C by about max|a| max|b| or |beta c0| over
 * whole rows, columns or tiles. */

#define SELFTEST_TOL 1e-4
#define SELFTEST_PAD 12345.0f /* C's padding columns; must survive untouched */

static const struct {
    int m, n, k;
} selftest_shapes[] = {
    {1, 1, 1}, {17, 33, 5}, {64, 48, 129}, {257, 100, 63}, {1, 70, 9}, {40, 1, 31},
};

static const struct {
    float alpha, beta;
} selftest_scales[] = {
    {1.25f, -0.75f},
    {-0.5f, 0.0f}, /* beta = 0: C is not read, so NaN in it must not leak */
};

/* Fills rows x cols of a stored matrix (row stride ld) with uniform values
 * in [-1, 1); returns max |value|. */
static float selftest_fill(float *x, int rows, int cols, int ld, uint32_t stream)
{
    float mx = 0.0f;
    for (int r = 0; r < rows; r++) {
        for (int j = 0; j < cols; j++) {
            const uint32_t idx = (uint32_t)r * (uint32_t)cols + (uint32_t)j;
            float v = 2.0f * moe_rng_uniform(0x6b65726eu, MOE_RNG_TEST, stream, idx, 0) - 1.0f;
            x[(size_t)r * ld + j] = v;
            mx = fabsf(v) > mx ? fabsf(v) : mx;
        }
    }
    return mx;
}

static int selftest_case(moe_kernels_sgemm_fn sgemm, bool ta, bool tb, int m, int n, int k,
                         float alpha, float beta, uint32_t stream, char *err, size_t errlen)
{
    /* Stored shapes: A is (m,k), or (k,m) when transposed; B (k,n) or (n,k).
     * Leading dimensions are odd and at least two wider than the rows. */
    const int ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    const int lda = (ac + 2) | 1, ldb = (bc + 2) | 1, ldc = (n + 2) | 1;
    const size_t na = (size_t)ar * lda, nb = (size_t)br * ldb, nc = (size_t)m * ldc;
    float *a = malloc(sizeof(float) * na), *b = malloc(sizeof(float) * nb);
    float *c = malloc(sizeof(float) * nc), *c0 = malloc(sizeof(float) * nc);
    float *cr = malloc(sizeof(float) * nc);
    int rc = 0;
    if (!a || !b || !c || !c0 || !cr) {
        moe_err_set(err, errlen, "sgemm self-test: out of memory");
        rc = MOE_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < na; i++)
        a[i] = SELFTEST_PAD;
    for (size_t i = 0; i < nb; i++)
        b[i] = SELFTEST_PAD;
    for (size_t i = 0; i < nc; i++)
        c0[i] = SELFTEST_PAD;
    const float max_a = selftest_fill(a, ar, ac, lda, stream);
    const float max_b = selftest_fill(b, br, bc, ldb, stream + 1);
    selftest_fill(c0, m, n, ldc, stream + 2);
    if (beta == 0.0f)
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c0[(size_t)i * ldc + j] = NAN;
    memcpy(c, c0, sizeof(float) * nc);
    memcpy(cr, c0, sizeof(float) * nc);

    sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    moe_sgemm_ref(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, cr, ldc);

    const double prod = (double)k * max_a * max_b * fabs((double)alpha);
    for (int i = 0; i < m && rc == 0; i++) {
        for (int j = 0; j < ldc; j++) {
            const size_t o = (size_t)i * ldc + j;
            if (j >= n) {
                if (memcmp(&c[o], &c0[o], sizeof(float)) != 0) {
                    moe_err_set(err, errlen,
                                "sgemm self-test failed for trans_a=%d trans_b=%d m=%d n=%d k=%d "
                                "(lda=%d ldb=%d ldc=%d, alpha=%g beta=%g): it wrote C(%d,%d), "
                                "in the padding beyond column n",
                                ta, tb, m, n, k, lda, ldb, ldc, alpha, beta, i, j);
                    rc = MOE_ERR_STATE;
                    break;
                }
                continue;
            }
            const double tol =
                SELFTEST_TOL * (prod + (beta != 0.0f ? fabs((double)beta * c0[o]) : 0.0));
            /* Written so that NaN fails. */
            if (!(fabs((double)c[o] - cr[o]) <= tol)) {
                moe_err_set(err, errlen,
                            "sgemm self-test failed for trans_a=%d trans_b=%d m=%d n=%d k=%d "
                            "(lda=%d ldb=%d ldc=%d, alpha=%g beta=%g): C(%d,%d) = %.9g, "
                            "reference %.9g, tolerance %.3g",
                            ta, tb, m, n, k, lda, ldb, ldc, alpha, beta, i, j, c[o], cr[o], tol);
                rc = MOE_ERR_STATE;
                break;
            }
        }
    }
out:
    free(a);
    free(b);
    free(c);
    free(c0);
    free(cr);
    return rc;
}

int moe_kernels_selftest(moe_kernels_sgemm_fn sgemm, char *err, size_t errlen)
{
    uint32_t stream = 1;
    for (size_t s = 0; s < sizeof selftest_shapes / sizeof selftest_shapes[0]; s++) {
        for (int t = 0; t < 4; t++) {
            for (size_t v = 0; v < sizeof selftest_scales / sizeof selftest_scales[0]; v++) {
                int rc = selftest_case(sgemm, t & 1, (t >> 1) & 1, selftest_shapes[s].m,
                                       selftest_shapes[s].n, selftest_shapes[s].k,
                                       selftest_scales[v].alpha, selftest_scales[v].beta,
                                       stream, err, errlen);
                if (rc)
                    return rc;
                stream += 3;
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Timing */

static double kernels_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double moe_kernels_sgemm_gflops(moe_kernels_sgemm_fn sgemm, double seconds)
{
    /* 512^3 is large enough for the kernels' steady state and small enough
     * (2.7e8 flops, under 10 ms on old SSE kernels) to time a few. */
    enum { N = 512, MAX_REPS = 200 };
    float *a = moe_alloc_floats((size_t)N * N), *b = moe_alloc_floats((size_t)N * N);
    float *c = moe_alloc_floats((size_t)N * N);
    double rate = MOE_ERR_NOMEM;
    if (!a || !b || !c)
        goto out;
    for (size_t i = 0; i < (size_t)N * N; i++) {
        a[i] = (float)(i % 7) * 0.01f;
        b[i] = (float)(i % 5) * 0.01f;
    }
    sgemm(false, false, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N); /* warm-up: threads, pages */
    int reps = 0;
    double t0 = kernels_now(), t;
    do {
        sgemm(false, false, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
        reps++;
        t = kernels_now() - t0;
    } while (reps < 2 || (t < seconds && reps < MAX_REPS));
    rate = 2.0 * N * N * (double)N * reps / (t > 0 ? t : 1e-9) / 1e9;
out:
    moe_free_floats(&a);
    moe_free_floats(&b);
    moe_free_floats(&c);
    return rate;
}

/* ------------------------------------------------------------------------
 * The process entry point
 *
 * The markers travel in the environment across exec, the only channel
 * there is. MOE_KERNELS_STAGE says which process this is ("switch": the
 * first re-execution, with the target in OPENBLAS_CORETYPE; "fallback": the
 * second, with OpenBLAS's original choice there), and so also that the
 * OPENBLAS_CORETYPE is ours, not the user's. MOE_KERNELS_CHOSEN holds
 * OpenBLAS's original choice, MOE_KERNELS_WHY the reason for the log line.
 * A process that sees a marker never re-executes into the same stage, so
 * there are at most three processes (one pid: exec keeps it). */

#define KERNELS_ENV_CORETYPE "OPENBLAS_CORETYPE"
#define KERNELS_ENV_STAGE "MOE_KERNELS_STAGE"
#define KERNELS_ENV_CHOSEN "MOE_KERNELS_CHOSEN"
#define KERNELS_ENV_WHY "MOE_KERNELS_WHY"
#define KERNELS_STAGE_SWITCH "switch"
#define KERNELS_STAGE_FALLBACK "fallback"
/* The start-up rate of the log line: 512^3 products for 50 ms (a dozen or
 * more even on SSE kernels), short because every process start pays it
 * (the benchmarks measure rates properly). */
#define KERNELS_SELFTEST_SECONDS 0.05

/* Process-wide, like OpenBLAS's own choice that it describes: written once
 * by moe_kernels_init on the main thread, read-only afterwards. */
static struct {
    bool switched;
    double gflops;
    char reason[640];
} kernels_state;

static void kernels_markers_clear(void)
{
    unsetenv(KERNELS_ENV_STAGE);
    unsetenv(KERNELS_ENV_CHOSEN);
    unsetenv(KERNELS_ENV_WHY);
}

/* Copies environment variable `name` into out; false when unset. */
static bool kernels_getenv(const char *name, char *out, size_t cap)
{
    const char *v = getenv(name);
    if (!v) {
        out[0] = '\0';
        return false;
    }
    snprintf(out, cap, "%s", v);
    return true;
}

/* Re-executes this program with OPENBLAS_CORETYPE = coretype and the
 * markers. Returns only on failure, with the environment as it was minus
 * OPENBLAS_CORETYPE (only ever called when that is ours to set). */
static int kernels_reexec(int argc, char **argv, const char *coretype, const char *stage,
                          const char *chosen, const char *why, char *err, size_t errlen)
{
    if (argc < 1 || !argv || !argv[0] || argv[argc]) {
        moe_err_set(err, errlen, "no argument vector to re-execute with");
        return MOE_ERR_STATE;
    }
    if (setenv(KERNELS_ENV_CORETYPE, coretype, 1) != 0 ||
        setenv(KERNELS_ENV_STAGE, stage, 1) != 0 || setenv(KERNELS_ENV_CHOSEN, chosen, 1) != 0 ||
        setenv(KERNELS_ENV_WHY, why, 1) != 0) {
        moe_err_set(err, errlen, "setenv: %s", strerror(errno));
    } else {
        /* Output buffered by stdio would be lost by exec. */
        fflush(NULL);
        execv("/proc/self/exe", argv);
        moe_err_set(err, errlen, "execv /proc/self/exe: %s", strerror(errno));
    }
    unsetenv(KERNELS_ENV_CORETYPE);
    kernels_markers_clear();
    return MOE_ERR_IO;
}

/* The last step of every path: self-test (unless done), timing, state and
 * the one info line. */
static int kernels_finish(const char *reason, bool switched, bool tested,
                          moe_kernels_sgemm_fn sgemm, char *err, size_t errlen)
{
    const char *name = moe_kernels_name();
    if (!tested) {
        char terr[384];
        int rc = moe_kernels_selftest(sgemm, terr, sizeof terr);
        if (rc) {
            moe_err_set(err, errlen, "BLAS kernels %s (%s): %s", name, reason, terr);
            return rc;
        }
    }
    double gflops = moe_kernels_sgemm_gflops(sgemm, KERNELS_SELFTEST_SECONDS);
    if (gflops < 0) {
        moe_err_set(err, errlen, "BLAS kernels %s: out of memory timing sgemm", name);
        return MOE_ERR_NOMEM;
    }
    kernels_state.switched = switched;
    kernels_state.gflops = gflops;
    snprintf(kernels_state.reason, sizeof kernels_state.reason, "%s", reason);
    moe_info("BLAS kernels: %s (%s; self-test passed), sgemm %.1f GFLOP/s on %d threads", name,
             reason, gflops, openblas_get_num_threads());
    return 0;
}

/* Stage "switch": OPENBLAS_CORETYPE = target was set by the first process. */
static int kernels_stage_switch(int argc, char **argv, const char *target, const char *chosen,
                                const char *why, moe_kernels_sgemm_fn sgemm, char *err,
                                size_t errlen)
{
    const char *loaded = moe_kernels_name();
    char failed[448] = "";
    if (strcasecmp(loaded, target) != 0) {
        snprintf(failed, sizeof failed, "%s did not load (OpenBLAS loaded %s)", target, loaded);
    } else {
        char terr[384];
        if (moe_kernels_selftest(sgemm, terr, sizeof terr) != 0)
            snprintf(failed, sizeof failed, "%s failed: %s", target, terr);
    }
    if (!failed[0]) {
        unsetenv(KERNELS_ENV_CORETYPE); /* ours: children decide for themselves */
        char shown[512];
        moe_log_sanitize(shown, sizeof shown, why, strlen(why));
        return kernels_finish(shown, true, true, sgemm, err, errlen);
    }
    moe_debug("BLAS kernels: %s; re-executing with OPENBLAS_CORETYPE=%s", failed, chosen);
    char xerr[160];
    kernels_reexec(argc, argv, chosen, KERNELS_STAGE_FALLBACK, chosen, failed, xerr, sizeof xerr);
    moe_err_set(err, errlen, "%s, and re-executing with OpenBLAS's own choice %s failed: %s",
                failed, chosen, xerr);
    return MOE_ERR_STATE;
}

int moe_kernels__init_with(int argc, char **argv, const char *option,
                           const struct moe_kernels__hooks *hooks, char *err, size_t errlen)
{
    const struct moe_kernels__hooks none = {NULL, NULL};
    if (!hooks)
        hooks = &none;
    moe_kernels_sgemm_fn sgemm = hooks->sgemm ? hooks->sgemm : moe_sgemm;

    char stage[16], chosen[64], why[512], coretype[64];
    if (kernels_getenv(KERNELS_ENV_STAGE, stage, sizeof stage)) {
        kernels_getenv(KERNELS_ENV_CHOSEN, chosen, sizeof chosen);
        kernels_getenv(KERNELS_ENV_WHY, why, sizeof why);
        const bool have_core = kernels_getenv(KERNELS_ENV_CORETYPE, coretype, sizeof coretype);
        kernels_markers_clear();
        const bool is_switch = strcmp(stage, KERNELS_STAGE_SWITCH) == 0;
        const bool is_fallback = strcmp(stage, KERNELS_STAGE_FALLBACK) == 0;
        if (have_core && chosen[0] && coretype[0] &&
            (is_switch || (is_fallback && strcasecmp(coretype, chosen) == 0))) {
            if (is_switch)
                return kernels_stage_switch(argc, argv, coretype, chosen, why, sgemm, err,
                                            errlen);
            unsetenv(KERNELS_ENV_CORETYPE); /* ours, and OpenBLAS has read it */
            /* The text came through the environment: keep it to one line. */
            char shown[512], reason[600];
            moe_log_sanitize(shown, sizeof shown, why, strlen(why));
            snprintf(reason, sizeof reason, "OpenBLAS's own choice; %s", shown);
            return kernels_finish(reason, false, false, sgemm, err, errlen);
        }
        /* Not a marker we wrote with this environment: treat the process
         * as a fresh start (and any OPENBLAS_CORETYPE as the user's). */
        moe_warn("BLAS kernels: ignoring an inconsistent %s marker in the environment",
                 KERNELS_ENV_STAGE);
    }

    struct moe_kernels_cpu cpu;
    moe_kernels_cpu_detect(&cpu);
    const char *openblas_chose = hooks->chosen ? hooks->chosen : moe_kernels_name();
    struct moe_kernels_decision d;
    int rc = moe_kernels_decide(&d, &cpu, openblas_chose, getenv(KERNELS_ENV_CORETYPE), option,
                                err, errlen);
    if (rc)
        return rc;
    if (d.action == MOE_KERNELS_KEEP)
        return kernels_finish(d.reason, false, false, sgemm, err, errlen);

    moe_debug("BLAS kernels: re-executing with OPENBLAS_CORETYPE=%s (%s)", d.target, d.reason);
    char xerr[160];
    kernels_reexec(argc, argv, d.target, KERNELS_STAGE_SWITCH, openblas_chose, d.reason, xerr,
                   sizeof xerr);
    char reason[448];
    snprintf(reason, sizeof reason, "OpenBLAS's own choice; switching to %s failed: %s",
             d.target, xerr);
    return kernels_finish(reason, false, false, sgemm, err, errlen);
}

int moe_kernels_init(int argc, char **argv, const char *option, char *err, size_t errlen)
{
    return moe_kernels__init_with(argc, argv, option, NULL, err, errlen);
}

const char *moe_kernels_name(void)
{
    const char *name = openblas_get_corename();
    return name ? name : "Unknown";
}

bool moe_kernels_switched(void) { return kernels_state.switched; }
const char *moe_kernels_reason(void) { return kernels_state.reason; }
double moe_kernels_gflops(void) { return kernels_state.gflops; }

const char *moe_kernels_effective(void)
{
    return moe_blas_reference() ? "reference" : moe_kernels_name();
}

int moe_kernels_compare(const char *recorded, const char *what, bool strict, char *err,
                        size_t errlen)
{
    const char *mine = moe_kernels_effective();
    if (!recorded || !recorded[0] || strcasecmp(recorded, mine) == 0)
        return 0;
    char shown[48];
    moe_log_sanitize(shown, sizeof shown, recorded, strlen(recorded));
    if (strict)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "%s was computed with the BLAS kernels %s and this process runs %s, "
                            "so the results would not be bitwise those of a run on %s "
                            "(refused by --strict-determinism)",
                            what, shown, mine, shown);
    moe_warn("%s was computed with the BLAS kernels %s and this process runs %s: the results "
             "will not be bitwise those of a run on %s", what, shown, mine, shown);
    return 0;
}
