/* Benchmark: tokens/s of a whole in-process training step, and the step's
 * GFLOP/s as a fraction of what OpenBLAS sgemm reaches on the same GEMM
 * shapes, measured in the same run (DESIGN §9).
 *
 * FLOPs are counted as the paper does: every GEMM of forward and backward,
 * a multiply-add = 2. The limit is the time the step's GEMMs would take if
 * each ran at the sgemm rate measured alone for its shape with the best
 * correct kernel set of the machine (gemm_best_kernels: a bench_gemm child
 * when it is not the set the step runs with); the fraction is that time
 * over the measured step time. The step runs with the set the programs
 * choose (moe_kernels_init, --blas-kernels auto unless --blas-kernels),
 * whose own sgemm rate is reported too. Elementwise work (softmax, LSTM
 * gates, gating, optimizer) is what separates the two. Five rounds
 * alternate the timed steps and the sgemm rates; the fraction is the
 * median of the rounds' ratios, the speeds the medians of each.
 *
 * Usage: bench_step [--corpus FILE] [--steps N] [--threads N] [--d-model D]
 *        [--d-hidden H] [--n-experts E] [--k K] [--batch B] [--unroll T]
 *        [--vocab-max V] [--recompute none|experts|all]
 *        [--blas-kernels auto|keep|NAME] [--json FILE] */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data.h"
#include "gemm_rate.h"
#include "expert_local.h"
#include "expert_shard.h"
#include "model.h"
#include "moe_blas.h"
#include "moe_kernels.h"
#include "moe_optim.h"
#include "moe_tensor.h"

#define ROUNDS 5

int main(int argc, char **argv)
{
    const char *corpus = "data/wikitext-2/wiki.train.tokens", *json = NULL;
    const char *kernels = "auto", *recompute = "none";
    int steps = 10, threads = 2, D = 128, H = 256, E = 16, K = 4, B = 32, T = 35, vmax = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *f = argv[i], *v = argv[i + 1];
        if (!strcmp(f, "--corpus")) corpus = v;
        else if (!strcmp(f, "--json")) json = v;
        else if (!strcmp(f, "--blas-kernels")) kernels = v;
        else if (!strcmp(f, "--recompute")) recompute = v;
        else if (!strcmp(f, "--steps")) steps = atoi(v);
        else if (!strcmp(f, "--threads")) threads = atoi(v);
        else if (!strcmp(f, "--d-model")) D = atoi(v);
        else if (!strcmp(f, "--d-hidden")) H = atoi(v);
        else if (!strcmp(f, "--n-experts")) E = atoi(v);
        else if (!strcmp(f, "--k")) K = atoi(v);
        else if (!strcmp(f, "--batch")) B = atoi(v);
        else if (!strcmp(f, "--unroll")) T = atoi(v);
        else if (!strcmp(f, "--vocab-max")) vmax = atoi(v);
        else {
            fprintf(stderr, "bench_step: unknown option %s\n", f);
            return 2;
        }
    }
    char err[512];
    if (moe_kernels_init(argc, argv, kernels, err, sizeof err) ||
        (strcmp(recompute, "none") && strcmp(recompute, "experts") && strcmp(recompute, "all"))) {
        fprintf(stderr, "bench_step: %s\n", err[0] ? err : "--recompute: none, experts or all");
        return 2;
    }
    moe_blas_set_threads(threads);
    vocab_t *voc = vocab_build(corpus, vmax, err, sizeof err);
    struct corpus cor;
    struct batcher bt;
    if (!voc || corpus_load(&cor, corpus, voc, err, sizeof err) ||
        batcher_init(&bt, &cor, B, T, err, sizeof err)) {
        fprintf(stderr, "bench_step: %s\n", err);
        return 1;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)E);
    for (int e = 0; e < E; e++)
        ids[e] = e;
    struct moe_fadam_opts fo = {0.999, 0, 1e-8, 1e-30, 0, false, 1e-3};
    expert_shard_t *shard = expert_shard_new(D, H, E, ids, 1, &fo);
    expert_shard_set_recompute(shard, strcmp(recompute, "none") != 0);
    struct moe_backend be;
    expert_local_backend(&be, shard);
    const struct model_config mc = {.V = vocab_size(voc), .D = D, .H = H, .E = E, .K = K,
                                    .residual = true, .moe_sigmoid = false, .dropout = 0.1,
                                    .w_importance = 0.1, .w_load = 0.1, .seed = 1, .B_max = B,
                                    .T_max = T, .recompute_lstm = !strcmp(recompute, "all")};
    model_t *m = model_new(&mc, &be);
    float *opt[MODEL_MAX_PARAMS] = {0};
    const int n_params = model_n_params(m);
    for (int p = 0; p < n_params; p++)
        opt[p] = moe_alloc_floats(moe_adam_state_size(model_param_at(m, p).w->numel));
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)B * T), *tgt = malloc(sizeof(int32_t) * (size_t)B * T);
    struct moe_adam_opts ao = {0.9, 0.999, 1e-8};
    struct gemm_trace tr = {.n = 0};
    /* ROUNDS rounds alternate `steps` timed steps with the sgemm rates of
     * the step's shapes, so that both see the same machine; the median of
     * the rounds' ratios counts (bench_median). */
    double t_round[ROUNDS], limit_round[ROUNDS], ratio_round[ROUNDS], flops = 0;
    double best_round[ROUNDS], ratio_chosen[ROUNDS];
    const int warm = 3;
    int s = 0;
    for (int round = 0; round < ROUNDS; round++) {
        double t_steps = 0;
        for (int i = 0; i < (round ? 0 : warm) + steps; i++, s++) {
            batcher_train(&bt, s, 0, B, tok, tgt);
            struct model_batch b = {B, T, tok, tgt, 0, (int64_t)B * T};
            const bool traced = s == warm;
            if (traced)
                gemm_trace_start(&tr);
            double t0 = bench_now(), xs, bal;
            if (model_forward(m, &b, s, true, &xs, err, sizeof err) ||
                model_backward(m, model_local_importance(m), model_local_load(m), &bal, err,
                               sizeof err)) {
                fprintf(stderr, "bench_step: %s\n", err);
                return 1;
            }
            for (int p = 0; p < n_params; p++) {
                moe_tensor *w = model_param_at(m, p).w, *g = model_param_at(m, p).g;
                moe_adam_update(w->data, g->data, opt[p], w->numel, s + 1, 1e-3, &ao);
            }
            expert_shard_apply(shard, s + 1, 1e-3);
            model_carry_state(m);
            if (traced)
                gemm_trace_stop();
            if (s >= warm)
                t_steps += bench_now() - t0;
        }
        t_round[round] = t_steps / steps;
        /* GEMMs of one step and their rate alone */
        flops = gemm_trace_rates(&tr, 0.2, &limit_round[round]);
        if (gemm_trace_rates_best(&tr, 0.2, &best_round[round]) < 0) {
            fprintf(stderr, "bench_step: cannot measure sgemm with %s\n", gemm_best_kernels());
            return 1;
        }
        ratio_round[round] = best_round[round] / t_round[round];
        ratio_chosen[round] = limit_round[round] / t_round[round];
    }
    double ratios[ROUNDS];
    memcpy(ratios, ratio_round, sizeof ratios);
    const double fraction = bench_median(ratios, ROUNDS);
    const double fraction_chosen = bench_median(ratio_chosen, ROUNDS);
    const double step_time = bench_median(t_round, ROUNDS);
    const double limit_time = bench_median(limit_round, ROUNDS), tokens = (double)B * T;
    const double best_time = bench_median(best_round, ROUNDS);
    const double gflops = flops / step_time / 1e9, sgemm_gflops = flops / limit_time / 1e9;
    const double best_gflops = flops / best_time / 1e9;
    printf("# bench_step: D=%d H=%d E=%d k=%d B=%d T=%d V=%d threads=%d steps=%d recompute=%s\n", D,
           H, E, K, B, T, vocab_size(voc), threads, steps, recompute);
    printf("# kernels: the step runs %s; the best correct set is %s\n", moe_kernels_name(),
           gemm_best_kernels());
    printf("%-5s %-5s %7s %7s %7s %6s %10s %10s\n", "transA", "transB", "M", "N", "K", "calls",
           "GFLOP/s", "best");
    for (int i = 0; i < tr.n; i++)
        printf("%-6d %-5d %7d %7d %7d %6" PRId64 " %10.1f %10.1f\n", tr.s[i].ta, tr.s[i].tb,
               tr.s[i].m, tr.s[i].n, tr.s[i].k, tr.s[i].calls, tr.s[i].rate, tr.s[i].rate_best);
    printf("step time            %.4f s\n", step_time);
    printf("tokens/s             %.0f\n", tokens / step_time);
    printf("model GFLOP/step     %.3f (forward + backward, multiply-add = 2)\n", flops / 1e9);
    printf("model GFLOP/s        %.1f\n", gflops);
    printf("sgemm GFLOP/s        %.1f with %s, %.1f with %s (same shapes, alone, time-weighted)\n",
           sgemm_gflops, moe_kernels_name(), best_gflops, gemm_best_kernels());
    printf("fraction of sgemm    %.3f of %s (rounds:", fraction, gemm_best_kernels());
    for (int r = 0; r < ROUNDS; r++)
        printf(" %.3f", ratio_round[r]);
    printf("); %.3f of %s\n", fraction_chosen, moe_kernels_name());
    if (json) {
        FILE *f = fopen(json, "w");
        if (f) {
            fprintf(f,
                    "{\"bench\": \"step\", \"d_model\": %d, \"d_hidden\": %d, \"n_experts\": %d, "
                    "\"k\": %d, \"batch\": %d, \"unroll\": %d, \"vocab\": %d, \"threads\": %d, "
                    "\"recompute\": \"%s\", \"kernels\": \"%s\", \"kernels_best\": \"%s\", "
                    "\"step_time_s\": %.6f, \"tokens_per_sec\": %.1f, \"model_gflops\": %.2f, "
                    "\"sgemm_gflops\": %.2f, \"sgemm_best_gflops\": %.2f, \"fraction\": %.4f, "
                    "\"fraction_chosen\": %.4f, \"rounds\": [",
                    D, H, E, K, B, T, vocab_size(voc), threads, recompute, moe_kernels_name(),
                    gemm_best_kernels(), step_time, tokens / step_time, gflops, sgemm_gflops,
                    best_gflops, fraction, fraction_chosen);
            for (int r = 0; r < ROUNDS; r++)
                fprintf(f, "%s%.4f", r ? ", " : "", ratio_round[r]);
            fprintf(f, "]}\n");
            fclose(f);
        }
    }
    for (int p = 0; p < n_params; p++)
        free(opt[p]);
    free(tok);
    free(tgt);
    free(ids);
    model_destroy(&m);
    expert_shard_destroy(&shard);
    corpus_free(&cor);
    vocab_destroy(&voc);
    return 0;
}
