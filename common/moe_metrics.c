/* Histograms, process usage and reason names (see moe_metrics.h). */
#include "moe_metrics.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "moe_err.h"

const double moe_hist_step_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     10,   30};
const int moe_hist_step_n = (int)(sizeof moe_hist_step_bounds / sizeof moe_hist_step_bounds[0]);
const double moe_hist_ckpt_bounds[] = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
const int moe_hist_ckpt_n = (int)(sizeof moe_hist_ckpt_bounds / sizeof moe_hist_ckpt_bounds[0]);

_Static_assert(sizeof moe_hist_step_bounds / sizeof moe_hist_step_bounds[0] <= MOE_HIST_MAX_BOUNDS,
               "raise MOE_HIST_MAX_BOUNDS");
_Static_assert(sizeof moe_hist_ckpt_bounds / sizeof moe_hist_ckpt_bounds[0] <= MOE_HIST_MAX_BOUNDS,
               "raise MOE_HIST_MAX_BOUNDS");

void moe_hist_init(struct moe_hist *h, const double *bounds, int n)
{
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n = n < 0 ? 0 : n > MOE_HIST_MAX_BOUNDS ? MOE_HIST_MAX_BOUNDS : n;
}

void moe_hist_observe(struct moe_hist *h, double v)
{
    if (!(v >= 0))
        v = 0;
    int i = 0;
    while (i < h->n && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

void moe_proc_usage(double *cpu_seconds, uint64_t *rss_bytes)
{
    struct rusage ru;
    *cpu_seconds = 0;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        *cpu_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
                       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
    *rss_bytes = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return;
    unsigned long long size, resident;
    const long page = sysconf(_SC_PAGESIZE);
    if (fscanf(f, "%llu %llu", &size, &resident) == 2 && page > 0)
        *rss_bytes = (uint64_t)resident * (uint64_t)page;
    fclose(f);
}

static const char *const reason_names[MOE_REASONS] = {
    "ok",        "nomem", "io",           "format",  "shape",  "config", "range", "notfound",
    "version",   "state", "empty",        "unregistered", "stopped", "failed", "other"};

int moe_reason_index(int code)
{
    return code <= 0 && code > -(MOE_REASONS - 1) ? -code : MOE_REASONS - 1;
}

const char *moe_reason_name(int index)
{
    return index >= 0 && index < MOE_REASONS ? reason_names[index] : "other";
}
