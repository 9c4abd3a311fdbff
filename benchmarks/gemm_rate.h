/* Shared by the benchmarks: the GEMM shapes a piece of code issues (through
 * moe_blas's trace hook) and OpenBLAS sgemm's rate on each shape measured
 * alone, the limit every compute figure is compared with. */
#ifndef GEMM_RATE_H
#define GEMM_RATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct gemm_shape {
    bool ta, tb;
    int m, n, k;
    int64_t calls;
    double rate;      /* GFLOP/s of sgemm on this shape alone (gemm_trace_rates) */
    double rate_best; /* the same with the best kernel set (gemm_trace_rates_best) */
};

#define GEMM_TRACE_MAX 256
struct gemm_trace {
    struct gemm_shape s[GEMM_TRACE_MAX];
    int n;
};

/* Starts (trace != NULL) or stops recording the GEMMs issued through moe_sgemm. */
void gemm_trace_start(struct gemm_trace *t);
void gemm_trace_stop(void);

/* Measures every recorded shape alone (each for at least `seconds`); returns
 * the FLOPs of the recorded calls (multiply-add = 2) and in *limit_time the
 * time they would take at those rates. */
double gemm_trace_rates(struct gemm_trace *t, double seconds, double *limit_time);

/* The kernel set every limit is measured with: the best correct set of
 * this machine, from MOE_BENCH_BEST_KERNELS (benchmarks/run.sh sets it from
 * `bench_gemm --survey`), else the set this process loaded. */
const char *gemm_best_kernels(void);

/* The recorded shapes' rates with the best kernel set into rate_best (and
 * the time the calls would take at them into *limit_time; returns their
 * FLOPs): the in-process rates when the best set is the one loaded, else
 * measured by a bench_gemm child under OPENBLAS_CORETYPE=best, each shape
 * for at least `seconds`. Negative when the child fails. */
double gemm_trace_rates_best(struct gemm_trace *t, double seconds, double *limit_time);

/* Runs the benchmark program `tool` (beside this one) with the
 * space-separated `args` and OPENBLAS_CORETYPE = coretype (NULL: unset),
 * its stdout into out (cap bytes, NUL-terminated). 0, or -1 when it could
 * not run or did not exit 0. */
int gemm_run_tool(const char *tool, const char *coretype, const char *args, char *out,
                  size_t cap);

/* sgemm GFLOP/s for one shape, repeated for at least `seconds`. */
double gemm_rate(const struct gemm_shape *s, double seconds);

/* memcpy bandwidth in GB/s (bytes copied per second) on buffers of `bytes`,
 * repeated for at least `seconds`: the limit of elementwise work. */
double memcpy_gbps(size_t bytes, double seconds);

/* Monotonic seconds. */
double bench_now(void);

/* Median of v[0..n) (sorts v in place). The benchmarks alternate rounds of
 * the measured work and of its limit, and report the median of the rounds'
 * ratios: on a shared machine (a VM with stolen time) speed drifts by more
 * than 10% within minutes, and a ratio of two timings taken seconds apart
 * cancels most of that. */
double bench_median(double *v, int n);

#endif
