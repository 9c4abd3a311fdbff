/* GEMM shape tracing and sgemm rates for the benchmarks (see gemm_rate.h). */
#include "gemm_rate.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "moe_blas.h"
#include "moe_kernels.h"
#include "moe_par.h"
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
        t->s[t->n++] = (struct gemm_shape){ta, tb, m, n, k, 1, 0, 0};
}

void gemm_trace_start(struct gemm_trace *t) { moe_blas_set_trace(on_gemm, t); }
void gemm_trace_stop(void) { moe_blas_set_trace(NULL, NULL); }

static double gemm_rate_as_set(const struct gemm_shape *s, double seconds);

/* The better of the products as the programs run them and OpenBLAS's own
 * threads (when the programs split products themselves): the limit is the
 * machine's best sgemm on the shape. */
double gemm_rate(const struct gemm_shape *s, double seconds)
{
    double r = gemm_rate_as_set(s, seconds);
    if (moe_blas_split()) {
        moe_blas_set_split(false);
        const double native = gemm_rate_as_set(s, seconds);
        moe_blas_set_split(true);
        r = native > r ? native : r;
    }
    return r;
}

static double gemm_rate_as_set(const struct gemm_shape *s, double seconds)
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

const char *gemm_best_kernels(void)
{
    const char *b = getenv("MOE_BENCH_BEST_KERNELS");
    return b && b[0] ? b : moe_kernels_name();
}

int gemm_run_tool(const char *tool, const char *coretype, const char *args, char *out,
                  size_t cap)
{
    char exe[1024], path[1100];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0 || cap == 0)
        return -1;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    snprintf(path, sizeof path, "%.*s/%s", slash ? (int)(slash - exe) : 1, slash ? exe : ".",
             tool);
    char *buf = strdup(args);
    char **argv = calloc(strlen(args) / 2 + 3, sizeof *argv); /* tokens are 1+ chars apart */
    int argc = 0, fds[2];
    if (!buf || !argv || pipe(fds)) {
        free(buf);
        free(argv);
        return -1;
    }
    argv[argc++] = path;
    for (char *t = strtok(buf, " "); t; t = strtok(NULL, " "))
        argv[argc++] = t;
    argv[argc] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        free(buf);
        free(argv);
        return -1;
    }
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        if (coretype)
            setenv("OPENBLAS_CORETYPE", coretype, 1);
        else
            unsetenv("OPENBLAS_CORETYPE");
        execv(path, argv);
        _exit(127);
    }
    close(fds[1]);
    free(buf);
    free(argv);
    size_t len = 0;
    for (ssize_t r; len + 1 < cap && (r = read(fds[0], out + len, cap - 1 - len)) != 0;)
        if (r > 0)
            len += (size_t)r;
        else if (errno != EINTR)
            break;
    out[len] = '\0';
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

double gemm_trace_rates_best(struct gemm_trace *t, double seconds, double *limit_time)
{
    const bool here = strcasecmp(gemm_best_kernels(), moe_kernels_name()) == 0;
    char args[32768], out[65536];
    int o = snprintf(args, sizeof args, "--threads %d --seconds %g", moe_par_threads(), seconds);
    for (int i = 0; i < t->n && !here && (size_t)o < sizeof args; i++)
        o += snprintf(args + o, sizeof args - (size_t)o, " %d,%d,%d,%d,%d", t->s[i].m, t->s[i].n,
                      t->s[i].k, t->s[i].ta, t->s[i].tb);
    if (!here && gemm_run_tool("bench_gemm", gemm_best_kernels(), args, out, sizeof out))
        return -1;
    /* the child prints one "rate M,N,K,TA,TB GFLOPS" line per shape, in order */
    const char *p = out;
    double flops = 0, lt = 0;
    for (int i = 0; i < t->n; i++) {
        struct gemm_shape *s = &t->s[i];
        if (here) {
            s->rate_best = s->rate;
        } else {
            p = strstr(p, "\nrate ");
            if (!p || !(p = strchr(p + 7, ' ')))
                return -1;
            s->rate_best = atof(++p);
        }
        const double f = 2.0 * s->m * s->n * (double)s->k * (double)s->calls;
        flops += f;
        lt += f / (s->rate_best * 1e9);
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
