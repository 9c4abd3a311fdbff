/* Choosing OpenBLAS's kernel set at process start, for every process that
 * multiplies matrices (workers and expert servers).
 *
 * OpenBLAS (DYNAMIC_ARCH) picks its kernels once, when the library is
 * loaded, from CPUID or from the environment variable OPENBLAS_CORETYPE.
 * Debian 12's 0.3.21 does not know some newer CPUs and falls back to
 * Prescott (SSE3) kernels several times slower than the CPU allows. The only
 * way to change sets is to re-execute the process with OPENBLAS_CORETYPE set,
 * which moe_kernels_init() does after checking the CPU's features, and then
 * checks the new set's sgemm against the naive reference before trusting it.
 * It never changes an OPENBLAS_CORETYPE the user set. Nothing here changes
 * the thread count (moe_blas_set_threads does). */
#ifndef MOE_KERNELS_H
#define MOE_KERNELS_H

#include <stdbool.h>
#include <stddef.h>

/* ------------------------------------------------------------------------
 * CPU features, from CPUID and XGETBV. */

enum moe_kernels_feature {
    MOE_KERNELS_SSE2 = 1u << 0, /* the x86-64 baseline; absent only off x86 */
    MOE_KERNELS_SSE3 = 1u << 1,
    MOE_KERNELS_SSSE3 = 1u << 2,
    MOE_KERNELS_SSE41 = 1u << 3,
    MOE_KERNELS_SSE42 = 1u << 4,
    MOE_KERNELS_SSE4A = 1u << 5, /* AMD */
    MOE_KERNELS_AVX = 1u << 6,
    MOE_KERNELS_AVX2 = 1u << 7,
    MOE_KERNELS_FMA = 1u << 8,
    MOE_KERNELS_FMA4 = 1u << 9, /* AMD Bulldozer family */
    MOE_KERNELS_AVX512F = 1u << 10,
    MOE_KERNELS_AVX512BW = 1u << 11,
    MOE_KERNELS_AVX512DQ = 1u << 12,
    MOE_KERNELS_AVX512VL = 1u << 13,
    MOE_KERNELS_AVX512CD = 1u << 14,
    MOE_KERNELS_AVX512_BF16 = 1u << 15,
};

/* The AVX-512 subsets OpenBLAS's SkylakeX kernels need. */
#define MOE_KERNELS_AVX512                                                                     \
    (MOE_KERNELS_AVX512F | MOE_KERNELS_AVX512BW | MOE_KERNELS_AVX512DQ | MOE_KERNELS_AVX512VL | \
     MOE_KERNELS_AVX512CD)

struct moe_kernels_cpu {
    char vendor[13];   /* "GenuineIntel", "AuthenticAMD", ...; "" off x86 */
    unsigned features; /* enum moe_kernels_feature bits */
};

/* Fills *cpu from CPUID. A feature whose register state the OS does not save
 * (XGETBV: XCR0 bits 1,2 for AVX, FMA, FMA4 and AVX2; 5,6,7 as well for
 * AVX-512) counts as absent. Off x86, no features and an empty vendor. Pure
 * reads; any thread. */
void moe_kernels_cpu_detect(struct moe_kernels_cpu *cpu);

/* Writes into out (cap bytes) the features as a space-separated list, e.g.
 * "sse2 sse3 ... avx512_bf16", or "none". For messages and tests. */
void moe_kernels_cpu_describe(const struct moe_kernels_cpu *cpu, char *out, size_t cap);

/* ------------------------------------------------------------------------
 * OpenBLAS 0.3.21's x86-64 kernel sets. */

/* The set named `name` (case-insensitive) as OpenBLAS spells it, or NULL
 * when the table does not know it. The table holds the names that 0.3.21's
 * DYNAMIC_ARCH accepts in OPENBLAS_CORETYPE and reports back from
 * openblas_get_corename() on x86-64: Prescott, Core2, Penryn, Dunnington,
 * Nehalem, Atom, Opteron, Opteron_SSE3, Barcelona, Bobcat, Nano,
 * Sandybridge, Bulldozer, Piledriver, Steamroller, Excavator, Haswell, Zen,
 * SkylakeX, Cooperlake. (0.3.21 has no SapphireRapids.) */
const char *moe_kernels_set_name(const char *name);

/* 0 when the CPU has every feature the set `name` needs; MOE_ERR_NOTFOUND
 * for a name the table does not know; MOE_ERR_CONFIG with a sentence naming
 * the first missing feature otherwise. */
int moe_kernels_set_supported(const struct moe_kernels_cpu *cpu, const char *name, char *err,
                              size_t errlen);

/* ------------------------------------------------------------------------
 * The decision: a pure function of its inputs. */

enum moe_kernels_action {
    MOE_KERNELS_KEEP = 0, /* run with the set OpenBLAS loaded */
    MOE_KERNELS_SWITCH,   /* re-execute with OPENBLAS_CORETYPE = target */
};

struct moe_kernels_decision {
    enum moe_kernels_action action;
    char target[32];   /* SWITCH: the set to load (table spelling); KEEP: `chosen` */
    char reason[192];  /* one line, no trailing period, e.g.
                          "OpenBLAS chose Prescott; the CPU has AVX-512" */
};

/* Decides what to do about the kernels.
 *   cpu        the CPU's features
 *   chosen     the set OpenBLAS loaded (openblas_get_corename())
 *   env        the value of OPENBLAS_CORETYPE in the environment, NULL if unset
 *   option     "auto" (NULL means auto), "keep", or a set name (case-insensitive)
 * Rules, in order: an OPENBLAS_CORETYPE in the environment is kept whatever
 * the option; "keep" keeps; a name switches to that set (or keeps when it is
 * already loaded), and is MOE_ERR_CONFIG when the table does not know it or
 * the CPU lacks a feature it needs; "auto" picks the best set the features
 * allow (Cooperlake with AVX512_BF16, else SkylakeX with AVX-512, else
 * Haswell with AVX2 and FMA, else Sandybridge with AVX) and switches only
 * when it is strictly better than `chosen`; an unknown `chosen` is kept.
 * Returns 0, or MOE_ERR_CONFIG with a sentence in err (and *out says KEEP). */
int moe_kernels_decide(struct moe_kernels_decision *out, const struct moe_kernels_cpu *cpu,
                       const char *chosen, const char *env, const char *option, char *err,
                       size_t errlen);

/* ------------------------------------------------------------------------
 * Checking and timing the loaded sgemm. */

/* An sgemm with moe_sgemm's contract (see moe_blas.h). */
typedef void (*moe_kernels_sgemm_fn)(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                                     const float *a, int lda, const float *b, int ldb,
                                     float beta, float *c, int ldc);

/* Compares `sgemm` with moe_sgemm_ref over several shapes (1x1x1 up to
 * 257x100x63, row and column vectors), all four transpose combinations,
 * odd leading dimensions wider than the matrices, alpha/beta = 1.25/-0.75
 * and -0.5/0 (C full of NaN, which beta = 0 must not read), and checks that
 * C's padding columns are untouched. Returns 0; MOE_ERR_STATE with a
 * sentence naming the failing shape and element; MOE_ERR_NOMEM. Allocates
 * and frees its own buffers; a few milliseconds. Any thread. */
int moe_kernels_selftest(moe_kernels_sgemm_fn sgemm, char *err, size_t errlen);

/* GFLOP/s of `sgemm` on 512x512x512 products, timed for about `seconds`
 * (at least 2 products after a warm-up); negative (MOE_ERR_NOMEM) if the
 * buffers cannot be allocated. Uses the threads OpenBLAS has. */
double moe_kernels_sgemm_gflops(moe_kernels_sgemm_fn sgemm, double seconds);

/* ------------------------------------------------------------------------
 * The process entry point. */

/* Call first thing in main(), from the main thread, before any other thread
 * of ours starts and before anything is written to stdout. argv must be
 * main's (argv[argc] == NULL); option as for moe_kernels_decide.
 *
 * When the decision is SWITCH this function does not return: it re-executes
 * /proc/self/exe with the same argv, OPENBLAS_CORETYPE = the target and the
 * private markers MOE_KERNELS_STAGE, MOE_KERNELS_CHOSEN and MOE_KERNELS_WHY.
 * In that process it checks that OpenBLAS loaded the target and passes the
 * self-test; if not, it re-executes once more with OpenBLAS's original
 * choice (stage "fallback"). The process that finally returns has removed
 * the markers, and the OPENBLAS_CORETYPE it set itself, from its
 * environment, so that its children start as the user started it; an
 * OPENBLAS_CORETYPE the user set is never touched. If exec fails, the
 * process goes on with OpenBLAS's own choice.
 *
 * On success logs exactly one info line, e.g.
 *   BLAS kernels: SkylakeX (OpenBLAS chose Prescott; the CPU has AVX-512;
 *   self-test passed), sgemm 251.3 GFLOP/s on 2 threads
 * and returns 0. Returns MOE_ERR_CONFIG for a bad option and MOE_ERR_STATE
 * when the kernels finally loaded fail the self-test, with a sentence in err
 * and no info line. */
int moe_kernels_init(int argc, char **argv, const char *option, char *err, size_t errlen);

/* After moe_kernels_init: the set loaded (as openblas_get_corename() spells
 * it; it is also correct before init), whether init switched away from
 * OpenBLAS's own choice, the reason as logged, and the measured sgemm
 * GFLOP/s (0 before init). Borrowed strings; any thread after init. */
const char *moe_kernels_name(void);
bool moe_kernels_switched(void);
const char *moe_kernels_reason(void);
double moe_kernels_gflops(void);

/* ------------------------------------------------------------------------
 * The kernel set in the determinism contract (DESIGN §4) */

/* The name of what computes this process's products, as checkpoints,
 * reports and cluster registrations record it: "reference" under
 * MOE_BLAS=reference (moe_blas_reference(): the bits then depend on no
 * OpenBLAS kernel), else moe_kernels_name(). Borrowed; any thread. */
const char *moe_kernels_effective(void);

/* Compares the kernel set `recorded` by `what` (a checkpoint file, a
 * cluster: "step-00000040/worker-0.safetensors") with this process's
 * (moe_kernels_effective). Equal (case-insensitive), or nothing recorded
 * (NULL or "": files of an older version): 0. Different: the results will
 * not be bitwise those of a run on `recorded`; with strict false that is a
 * warning (one moe_warn line naming both sets) and 0, with strict true
 * MOE_ERR_CONFIG with the sentence in err. */
int moe_kernels_compare(const char *recorded, const char *what, bool strict, char *err,
                        size_t errlen);

/* ------------------------------------------------------------------------
 * Tests and tools only. */

struct moe_kernels__hooks {
    /* First stage only: act as if OpenBLAS had chosen this set (the fallback
     * then really loads it). NULL: ask OpenBLAS. */
    const char *chosen;
    /* The product the self-test and the timing use. NULL: moe_sgemm. */
    moe_kernels_sgemm_fn sgemm;
};

/* moe_kernels_init with hooks (NULL hooks = moe_kernels_init). */
int moe_kernels__init_with(int argc, char **argv, const char *option,
                           const struct moe_kernels__hooks *hooks, char *err, size_t errlen);

#endif
