/* What a process measures about itself for the coordinator's /metrics:
 * fixed-bucket histograms (the bounds every process and the coordinator
 * agree on), its CPU seconds and resident memory, and the short name of a
 * rejected message's reason. Servers send these in their heartbeats,
 * workers with their statistics (proto/moe.proto), the coordinator renders
 * them. No I/O except moe_proc_usage; no global state. */
#ifndef MOE_METRICS_H
#define MOE_METRICS_H

#include <stdint.h>

#define MOE_HIST_MAX_BOUNDS 15

/* Upper bounds (seconds, increasing; +Inf is implicit) of the step-time and
 * expert-compute histograms, and of the checkpoint-duration histogram. */
extern const double moe_hist_step_bounds[];
extern const int moe_hist_step_n;
extern const double moe_hist_ckpt_bounds[];
extern const int moe_hist_ckpt_n;

/* counts[i]: observations in (bounds[i-1], bounds[i]]; counts[n]: above
 * bounds[n-1] (the +Inf bucket). Not cumulative: the writer of the text
 * format accumulates. */
struct moe_hist {
    const double *bounds;
    int n;
    uint64_t counts[MOE_HIST_MAX_BOUNDS + 1];
    uint64_t count;
    double sum;
};

/* An empty histogram over bounds[0..n) (n <= MOE_HIST_MAX_BOUNDS). */
void moe_hist_init(struct moe_hist *h, const double *bounds, int n);
/* Counts v (a NaN or negative value counts as 0). */
void moe_hist_observe(struct moe_hist *h, double v);

/* This process's user + system CPU seconds (getrusage) and resident set
 * in bytes (/proc/self/statm; 0 when it cannot be read). */
void moe_proc_usage(double *cpu_seconds, uint64_t *rss_bytes);

/* Rejected messages are counted by the MOE_ERR_* code of the refusal:
 * index -code, 0..MOE_REASONS-1 (anything else counts as "other", the
 * last index). moe_reason_name(i) is the label value ("format",
 * "state", ...). */
#define MOE_REASONS 15
int moe_reason_index(int code);
const char *moe_reason_name(int index);

#endif
