/* Benchmark: the expert server's work on one expert, as a fraction of what
 * OpenBLAS sgemm reaches on the same GEMM shapes, measured in the same run.
 *
 * For each row count: forward (x W1^T + b1, ReLU, h W2^T + b2), backward
 * (weight, bias and input gradients) and the factored-Adam update of one
 * expert of D -> H -> D, through the same code the server runs
 * (expert_shard_forward / _backward / _apply). FLOPs as in the paper: the
 * GEMMs of forward and backward, multiply-add = 2 (12 rows D H per step).
 * The limit is the time those GEMMs take at the sgemm rate of each shape
 * measured alone with the best correct kernel set of the machine
 * (gemm_best_kernels; a bench_gemm child when the expert does not run with
 * it); the fraction is that time over the measured time, so the bias adds,
 * the ReLU and the optimizer are what separate the two. The expert runs
 * with the set the programs choose (moe_kernels_init). Five rounds
 * alternate the two timings (each `seconds` long); the fraction is the
 * median of the rounds' ratios, the rates the medians of each.
 *
 * Usage: bench_expert [--d-model D] [--d-hidden H] [--threads N]
 *        [--rows R1,R2,...] [--seconds S] [--blas-kernels auto|keep|NAME]
 *        [--json FILE] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expert_ffn.h"
#include "expert_shard.h"
#include "gemm_rate.h"
#include "moe_blas.h"
#include "moe_kernels.h"
#include "moe_optim.h"
#include "moe_tensor.h"

#define ROUNDS 5

struct result {
    int rows;
    double time, gflops, sgemm_gflops, best_gflops, fraction, fraction_chosen;
};

int main(int argc, char **argv)
{
    int D = 512, H = 1024, threads = 2;
    double seconds = 0.3;
    const char *rows_arg = "64,128,256,512,1024,2048,4096", *json = NULL, *kernels = "auto";
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *f = argv[i], *v = argv[i + 1];
        if (!strcmp(f, "--d-model")) D = atoi(v);
        else if (!strcmp(f, "--d-hidden")) H = atoi(v);
        else if (!strcmp(f, "--threads")) threads = atoi(v);
        else if (!strcmp(f, "--rows")) rows_arg = v;
        else if (!strcmp(f, "--seconds")) seconds = atof(v);
        else if (!strcmp(f, "--json")) json = v;
        else if (!strcmp(f, "--blas-kernels")) kernels = v;
        else {
            fprintf(stderr, "bench_expert: unknown option %s\n", f);
            return 2;
        }
    }
    if (D <= 0 || H <= 0 || threads <= 0 || seconds <= 0) {
        fprintf(stderr, "bench_expert: sizes, threads and seconds must be positive\n");
        return 2;
    }
    char err[512];
    if (moe_kernels_init(argc, argv, kernels, err, sizeof err)) {
        fprintf(stderr, "bench_expert: %s\n", err);
        return 2;
    }
    moe_blas_set_threads(threads);
    struct result res[32];
    int nres = 0;
    const int32_t id = 0;
    struct moe_fadam_opts fo = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};
    printf("# bench_expert: one expert %d -> %d -> %d, forward + backward + factored Adam, "
           "%d thread(s); kernels %s, limit with %s\n", D, H, D, threads, moe_kernels_name(),
           gemm_best_kernels());
    printf("%6s %10s %10s %12s %12s %9s %9s\n", "rows", "ms/step", "GFLOP/s", "sgemm GFLOP/s",
           "best GFLOP/s", "fraction", "(chosen)");
    for (const char *p = rows_arg; *p && nres < 32;) {
        int rows = atoi(p);
        const char *c = strchr(p, ',');
        p = c ? c + 1 : p + strlen(p);
        if (rows <= 0)
            continue;
        expert_shard_t *sh = expert_shard_new(D, H, 1, &id, 1, &fo);
        float *x = moe_alloc_floats((size_t)rows * D), *y = moe_alloc_floats((size_t)rows * D);
        float *dy = moe_alloc_floats((size_t)rows * D), *dx = moe_alloc_floats((size_t)rows * D);
        if (!sh || !x || !y || !dy || !dx) {
            fprintf(stderr, "bench_expert: out of memory at %d rows\n", rows);
            return 1;
        }
        for (size_t i = 0; i < (size_t)rows * D; i++) {
            x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
            dy[i] = (float)((i * 104729) % 1000) / 100000.0f - 0.005f;
        }
        /* Rounds alternate the expert timing and the sgemm timing of its
         * shapes; the median of the rounds' ratios counts (bench_median). */
        struct gemm_trace tr = {.n = 0};
        double steps[ROUNDS], limits[ROUNDS], ratios[ROUNDS], flops = 0;
        double bests[ROUNDS], ratios_chosen[ROUNDS];
        int it = 0;
        for (int round = 0; round < ROUNDS; round++) {
            int reps = 0;
            double t0 = 0, t = 0;
            for (;; it++) {
                if (it == 2) {
                    gemm_trace_start(&tr);
                }
                if (it >= 2 && reps == 0)
                    t0 = bench_now();
                if (expert_shard_forward(sh, 1, &id, &rows, x, y) ||
                    expert_shard_backward(sh, 1, &id, &rows, dy, dx)) {
                    fprintf(stderr, "bench_expert: expert failed at %d rows\n", rows);
                    return 1;
                }
                expert_shard_apply(sh, it + 1, 1e-4);
                if (it == 2)
                    gemm_trace_stop();
                if (it >= 2) {
                    reps++;
                    t = bench_now() - t0;
                    if (t >= seconds && reps >= 3) {
                        it++;
                        break;
                    }
                }
            }
            steps[round] = t / reps;
            for (int i = 0; i < tr.n; i++)
                tr.s[i].rate = 0;
            flops = gemm_trace_rates(&tr, seconds / tr.n, &limits[round]);
            if (gemm_trace_rates_best(&tr, seconds / tr.n, &bests[round]) < 0) {
                fprintf(stderr, "bench_expert: cannot measure sgemm with %s\n",
                        gemm_best_kernels());
                return 1;
            }
            ratios[round] = bests[round] / steps[round];
            ratios_chosen[round] = limits[round] / steps[round];
        }
        const double fraction = bench_median(ratios, ROUNDS);
        const double fraction_chosen = bench_median(ratios_chosen, ROUNDS);
        const double step = bench_median(steps, ROUNDS), limit = bench_median(limits, ROUNDS);
        const double best = bench_median(bests, ROUNDS);
        res[nres] = (struct result){rows, step, flops / step / 1e9, flops / limit / 1e9,
                                    flops / best / 1e9, fraction, fraction_chosen};
        printf("%6d %10.3f %10.1f %12.1f %12.1f %9.3f %9.3f\n", rows, 1e3 * step,
               res[nres].gflops, res[nres].sgemm_gflops, res[nres].best_gflops, fraction,
               fraction_chosen);
        fflush(stdout);
        nres++;
        expert_shard_destroy(&sh);
        moe_free_floats(&x);
        moe_free_floats(&y);
        moe_free_floats(&dy);
        moe_free_floats(&dx);
    }
    /* Optimizer state against parameters (factored Adam: a row and a column
     * vector per matrix), and memcpy bandwidth on an expert-sized buffer. */
    expert_shard_t *one = expert_shard_new(D, H, 1, &id, 1, &fo);
    const double state_ratio = one ? (double)expert_shard_opt_state_size(one) /
                                         (double)expert_ffn_param_count(D, H)
                                   : 0;
    expert_shard_destroy(&one);
    const double mc = memcpy_gbps(sizeof(float) * expert_ffn_param_count(D, H), seconds);
    printf("optimizer state per expert parameter: %.5f (%.3f%% of the parameter bytes; Adam: 200%%)\n",
           state_ratio, 100 * state_ratio);
    printf("memcpy on %.1f MB: %.1f GB/s\n", 4e-6 * (double)expert_ffn_param_count(D, H), mc);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "bench_expert: cannot write %s\n", json);
            return 1;
        }
        fprintf(f, "[");
        for (int i = 0; i < nres; i++)
            fprintf(f,
                    "%s{\"bench\": \"expert\", \"d_model\": %d, \"d_hidden\": %d, \"threads\": %d, "
                    "\"kernels\": \"%s\", \"kernels_best\": \"%s\", "
                    "\"rows\": %d, \"step_time_s\": %.6f, \"gflops\": %.2f, \"sgemm_gflops\": %.2f, "
                    "\"sgemm_best_gflops\": %.2f, \"fraction\": %.4f, \"fraction_chosen\": %.4f, "
                    "\"opt_state_per_param\": %.6f, \"memcpy_gbps\": %.2f}",
                    i ? ",\n " : "", D, H, threads, moe_kernels_name(), gemm_best_kernels(),
                    res[i].rows, res[i].time, res[i].gflops, res[i].sgemm_gflops,
                    res[i].best_gflops, res[i].fraction, res[i].fraction_chosen, state_ratio, mc);
        fprintf(f, "]\n");
        fclose(f);
    }
    return 0;
}
