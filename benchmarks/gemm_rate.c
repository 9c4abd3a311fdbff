/* GEMM shape tracing and sgemm rates for the benchmarks (see gemm_rate.h). */
#include "gemm_rate.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe_blas.h"
#include "moe_tensor.h"

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void on_gemm(void *ctx, bool ta, bool tb, int m, int n, int k)
{
    struct gemm_trace *t = ctx;
    for (int i = 0; i < t->n; i++) {
        struct gemm_shape *s = &t->s[i];
        if (s->ta == ta && s->tb == tb && s->m == m && s->n == n && s->k == k) {
            s->calls++;
            return;
        }
    }
    if (t->n < GEMM_TRACE_MAX)
        t->s[t->n++] = (struct gemm_shape){ta, tb, m, n, k, 1, 0};
}

void gemm_trace_start(struct gemm_trace *t) { moe_blas_set_trace(on_gemm, t); }
void gemm_trace_stop(void) { moe_blas_set_trace(NULL, NULL); }

double gemm_rate(const struct gemm_shape *s, double seconds)
{
    size_t na = (size_t)s->m * s->k, nb = (size_t)s->k * s->n, nc = (size_t)s->m * s->n;
    float *a = moe_alloc_floats(na), *b = moe_alloc_floats(nb), *c = moe_alloc_floats(nc);
    for (size_t i = 0; i < na; i++)
        a[i] = (float)(i % 7) * 0.01f;
    for (size_t i = 0; i < nb; i++)
        b[i] = (float)(i % 5) * 0.01f;
    int lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n;
    moe_sgemm(s->ta, s->tb, s->m, s->n, s->k, 1, a, lda, b, ldb, 0, c, s->n);
    int reps = 0;
    double t0 = bench_now(), t;
    do {
        moe_sgemm(s->ta, s->tb, s->m, s->n, s->k, 1, a, lda, b, ldb, 1, c, s->n);
        reps++;
        t = bench_now() - t0;
    } while (t < seconds);
    moe_free_floats(&a);
    moe_free_floats(&b);
    moe_free_floats(&c);
    return 2.0 * s->m * s->n * (double)s->k * reps / t / 1e9;
}

double gemm_trace_rates(struct gemm_trace *t, double seconds, double *limit_time)
{
    double flops = 0, lt = 0;
    for (int i = 0; i < t->n; i++) {
        struct gemm_shape *s = &t->s[i];
        s->rate = gemm_rate(s, seconds);
        double f = 2.0 * s->m * s->n * (double)s->k * (double)s->calls;
        flops += f;
        lt += f / (s->rate * 1e9);
    }
    *limit_time = lt;
    return flops;
}

double memcpy_gbps(size_t bytes, double seconds)
{
    const size_t n = bytes / sizeof(float);
    float *a = moe_alloc_floats(n), *b = moe_alloc_floats(n);
    if (!a || !b) {
        moe_free_floats(&a);
        moe_free_floats(&b);
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        a[i] = (float)i;
    memcpy(b, a, n * sizeof(float));
    int reps = 0;
    double t0 = bench_now(), t;
    do {
        memcpy(reps % 2 ? a : b, reps % 2 ? b : a, n * sizeof(float));
        reps++;
        t = bench_now() - t0;
    } while (t < seconds);
    moe_free_floats(&a);
    moe_free_floats(&b);
    return (double)n * sizeof(float) * reps / t / 1e9;
}

double bench_median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            const double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v[n / 2];
}
