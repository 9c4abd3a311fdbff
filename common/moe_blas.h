/* Matrix products for every process: OpenBLAS sgemm behind one row-major
 * wrapper, and a naive reference kernel beside it that tests compare against.
 *
 * All matrices are row-major. C = alpha * op(A) op(B) + beta * C where op(A)
 * is (M,K), op(B) is (K,N), C is (M,N); lda/ldb/ldc are row strides of the
 * stored matrices. Thread count of OpenBLAS is set once per process with
 * moe_blas_set_threads() and is part of the configuration (DESIGN §4). */
#ifndef MOE_BLAS_H
#define MOE_BLAS_H

#include <stdbool.h>

void moe_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* The same contract computed with plain loops (float accumulation in k
 * order). Slow; for tests only. */
void moe_sgemm_ref(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc);

/* Benchmarks only: when set, every moe_sgemm call reports its shape here
 * before running. NULL (the default) disables it. Not thread-safe. */
typedef void (*moe_sgemm_trace_fn)(void *ctx, bool trans_a, bool trans_b, int m, int n, int k);
void moe_blas_set_trace(moe_sgemm_trace_fn fn, void *ctx);

/* Sets the OpenBLAS thread count (>= 1) and sizes the moe_par pool that
 * runs the elementwise work between products to match. Call from the main
 * thread before any product. It also reads MOE_BLAS from the environment:
 * "reference" makes every moe_sgemm run moe_sgemm_ref instead of OpenBLAS,
 * so that results do not depend on the kernels OpenBLAS picks for the CPU
 * (slow: the golden-file tests of small models use it). MOE_BLAS_SPLIT=1
 * (opt-in, measured by benchmarks/bench_step) splits each large product
 * into one single-threaded OpenBLAS call per thread, run by moe_par: no
 * OpenBLAS thread then spins beside the elementwise work. Results are
 * deterministic for a given thread count, as with OpenBLAS's threads.
 * The first call also makes OpenBLAS's threads sleep soon after a product
 * instead of spinning (moe_blas_thread_timeout). */
void moe_blas_set_threads(int n);

/* Whether products are split into one single-threaded OpenBLAS call per
 * thread (run by moe_par), and switching it (OpenBLAS then runs 1 thread,
 * else moe_par_threads()); benchmarks compare the two. */
bool moe_blas_split(void);
void moe_blas_set_split(bool on);

/* OpenBLAS's thread timeout (log2 of the cycles its threads spin after a
 * product before sleeping; 0: its default, 2^28), or -1 where OpenBLAS
 * does not tell. moe_blas_set_threads lowers it once, unless
 * OPENBLAS_THREAD_TIMEOUT is set in the environment (see moe_blas.c). */
int moe_blas_thread_timeout(void);

/* Whether MOE_BLAS=reference is in effect. */
bool moe_blas_reference(void);

#endif
