/* OpenBLAS wrapper and naive reference GEMM (see moe_blas.h). */
#include "moe_blas.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "moe_par.h"

static moe_sgemm_trace_fn trace_fn;
static void *trace_ctx;
/* MOE_BLAS=reference: every product through moe_sgemm_ref (read once by
 * moe_blas_set_threads). */
static bool use_reference;

void moe_blas_set_trace(moe_sgemm_trace_fn fn, void *ctx)
{
    trace_fn = fn;
    trace_ctx = ctx;
}

void moe_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
               int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    if (m <= 0 || n <= 0)
        return;
    if (trace_fn)
        trace_fn(trace_ctx, trans_a, trans_b, m, n, k);
    if (use_reference) {
        moe_sgemm_ref(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    if (k <= 0) {
        /* BLAS would still scale C by beta; do the same without it. */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[(long)i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[(long)i * ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void moe_sgemm_ref(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                   int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int p = 0; p < k; p++) {
                float av = trans_a ? a[(long)p * lda + i] : a[(long)i * lda + p];
                float bv = trans_b ? b[(long)j * ldb + p] : b[(long)p * ldb + j];
                s += av * bv;
            }
            float *cv = &c[(long)i * ldc + j];
            *cv = alpha * s + (beta == 0.0f ? 0.0f : beta * *cv);
        }
    }
}

bool moe_blas_reference(void) { return use_reference; }

void moe_blas_set_threads(int n)
{
    const char *e = getenv("MOE_BLAS");
    use_reference = e && strcmp(e, "reference") == 0;
    openblas_set_num_threads(n < 1 ? 1 : n);
    moe_par_set_threads(n);
}
