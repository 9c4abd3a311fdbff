/* Benchmark: the gate of a step, flat against hierarchical (issue 17, point
 * 6), as time per step and GEMM FLOPs per row, each against OpenBLAS sgemm
 * on the same GEMM shapes measured in the same run.
 *
 * Flat: the noisy top-k gate of worker/gate.c over E experts on N rows,
 * forward, balancing loss, backward. Hierarchical (A groups of B experts):
 * the primary noisy top-K1 gate over A groups on the N rows, each group's
 * rows gathered (the rows with a non-zero primary gate), the group's noisy
 * top-K gate over its B experts on them, and both backwards; the same gate
 * code worker/hmoe_layer.c runs (the secondary gates with the group's noise
 * key). Weights are small and fixed, so that routing follows the noise as
 * early in training. FLOPs as in the paper: the GEMMs of forward and
 * backward, multiply-add = 2 (flat 12 D E per row; hierarchical
 * 12 D (A + K1 B) per row, the secondary gate's rows being K1 per row);
 * they come from the GEMMs actually issued (moe_blas's trace). The limit is
 * the time those GEMMs take at the sgemm rate of each shape measured alone
 * with the best correct kernel set (gemm_best_kernels); the fraction of
 * sgemm is that time over the measured one (softplus, the noise, top-k and
 * Phi are what separate them). ROUNDS rounds alternate the two timings;
 * medians count.
 *
 * Usage: bench_gate [--d-model D] [--rows N] [--experts E] [--k KF]
 *        [--groups A] [--experts-per-group B] [--k-primary K1]
 *        [--k-secondary K] [--threads T] [--seconds S] [--json FILE]
 *        (defaults: D 512, N 8192, E 4096 = A 64 x B 64, KF 4, K1 2, K 2) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "gemm_rate.h"
#include "moe_blas.h"
#include "moe_kernels.h"
#include "moe_rng.h"
#include "moe_tensor.h"

#define ROUNDS 3

/* One gate's buffers: weights, gradients, cache, backward work. */
struct gate_buf {
    struct gate_dims d;
    float *wg, *wn, *dwg, *dwn, *fbuf, *work, *imp, *load, *dimp, *dload, *dgates;
    int32_t *ibuf;
    struct gate_cache c;
};

/* A deterministic value in [-scale, scale). */
static float fill_value(size_t i, uint32_t salt, float scale)
{
    uint32_t h = (uint32_t)(i * 2654435761u) ^ (salt * 40503u);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return scale * ((float)(h % 20001u) / 10000.0f - 1.0f);
}

/* Buffers for up to nmax rows; the cache and backward work too unless
 * `shared` (a hierarchical MoE's secondary gates share theirs). */
static int gate_buf_init(struct gate_buf *g, int nmax, int D, int E, int K, uint32_t purpose,
                         uint32_t col0, bool shared)
{
    memset(g, 0, sizeof *g);
    g->d = (struct gate_dims){.N = nmax, .D = D, .E = E, .K = K, .train = true, .seed = 1,
                              .purpose = purpose, .col0 = col0};
    const size_t DE = (size_t)D * E;
    g->wg = moe_alloc_floats(DE);
    g->wn = moe_alloc_floats(DE);
    g->dwg = moe_alloc_floats(DE);
    g->dwn = moe_alloc_floats(DE);
    if (!shared) {
        g->fbuf = moe_alloc_floats(gate_cache_floats(&g->d));
        g->ibuf = malloc(sizeof(int32_t) * (gate_cache_ints(&g->d) + 1));
        g->work = moe_alloc_floats(2 * (size_t)nmax * E);
    }
    g->imp = moe_alloc_floats((size_t)E);
    g->load = moe_alloc_floats((size_t)E);
    g->dimp = moe_alloc_floats((size_t)E);
    g->dload = moe_alloc_floats((size_t)E);
    g->dgates = moe_alloc_floats((size_t)nmax * K);
    if (!g->wg || !g->wn || !g->dwg || !g->dwn || (!shared && (!g->fbuf || !g->ibuf || !g->work)) || !g->imp ||
        !g->load || !g->dimp || !g->dload || !g->dgates)
        return -1;
    for (size_t i = 0; i < DE; i++) {
        g->wg[i] = fill_value(i, 1 + col0, 0.02f);
        g->wn[i] = fill_value(i, 7 + col0, 0.02f);
    }
    for (size_t i = 0; i < (size_t)nmax * K; i++)
        g->dgates[i] = fill_value(i, 3, 1e-3f);
    return 0;
}

static void gate_buf_free(struct gate_buf *g)
{
    moe_free_floats(&g->wg);
    moe_free_floats(&g->wn);
    moe_free_floats(&g->dwg);
    moe_free_floats(&g->dwn);
    moe_free_floats(&g->fbuf);
    free(g->ibuf);
    moe_free_floats(&g->work);
    moe_free_floats(&g->imp);
    moe_free_floats(&g->load);
    moe_free_floats(&g->dimp);
    moe_free_floats(&g->dload);
    moe_free_floats(&g->dgates);
}

/* Forward of n rows of x, then the balancing loss of its own statistics. */
static void gate_buf_forward(struct gate_buf *g, const float *x, int n, int64_t step)
{
    g->d.N = n;
    g->d.step = step;
    g->c = gate_cache_view(g->fbuf, g->ibuf, &g->d);
    memset(g->imp, 0, sizeof(float) * (size_t)g->d.E);
    memset(g->load, 0, sizeof(float) * (size_t)g->d.E);
    if (n > 0)
        gate_forward(&g->c, g->imp, g->load, x, g->wg, g->wn, &g->d);
    gate_balance_loss(g->imp, g->load, g->d.E, 0.1, 0.1, g->dimp, g->dload);
}

static void gate_buf_backward(struct gate_buf *g, float *dx, const float *x)
{
    if (g->d.N > 0)
        gate_backward(dx, g->dwg, g->dwn, g->work, g->dgates, g->dimp, g->dload, x, g->wg, g->wn,
                      &g->c, &g->d);
}

/* The hierarchical gate: primary over A groups, then each group's. */
struct hier {
    int A, B, K1, N, D;
    struct gate_buf p, *s;
    float *xs, *dxs;   /* (N*K1, D) the groups' rows, packed group after group */
    float *sf, *swork; /* the secondary gates' caches, group after group; backward work */
    int32_t *si;
    int32_t *src;      /* (N*K1) the row of each packed row */
    int *cnt, *off;    /* (A) */
};

static int hier_init(struct hier *h, int N, int D, int A, int B, int K1, int K)
{
    memset(h, 0, sizeof *h);
    *h = (struct hier){.A = A, .B = B, .K1 = K1, .N = N, .D = D};
    h->s = calloc((size_t)A, sizeof *h->s);
    h->xs = moe_alloc_floats((size_t)N * K1 * D);
    h->dxs = moe_alloc_floats((size_t)N * K1 * D);
    h->src = malloc(sizeof(int32_t) * (size_t)N * K1);
    h->cnt = calloc((size_t)A, sizeof(int));
    h->off = calloc((size_t)A, sizeof(int));
    /* the caches of all groups hold N*K1 rows (a group may get up to N);
     * one backward work area, each group's in turn */
    struct gate_dims all = {.N = N * K1, .D = D, .E = B, .K = K, .train = true};
    h->sf = moe_alloc_floats(gate_cache_floats(&all));
    h->si = malloc(sizeof(int32_t) * (gate_cache_ints(&all) + 1));
    h->swork = moe_alloc_floats(2 * (size_t)N * B);
    if (!h->s || !h->xs || !h->dxs || !h->src || !h->cnt || !h->off || !h->sf || !h->si ||
        !h->swork || gate_buf_init(&h->p, N, D, A, K1, 0, 0, false))
        return -1;
    for (int i = 0; i < A; i++)
        if (gate_buf_init(&h->s[i], N, D, B, K, MOE_RNG_GATE_NOISE_GROUP, (uint32_t)(i * B), true))
            return -1;
    return 0;
}

static void hier_free(struct hier *h)
{
    gate_buf_free(&h->p);
    for (int i = 0; h->s && i < h->A; i++) {
        /* their cache pointers are into sf, si, swork */
        h->s[i].fbuf = h->s[i].work = NULL;
        h->s[i].ibuf = NULL;
        gate_buf_free(&h->s[i]);
    }
    moe_free_floats(&h->sf);
    moe_free_floats(&h->swork);
    free(h->si);
    free(h->s);
    moe_free_floats(&h->xs);
    moe_free_floats(&h->dxs);
    free(h->src);
    free(h->cnt);
    free(h->off);
}

static void hier_step(struct hier *h, const float *x, float *dx, int64_t step)
{
    const int N = h->N, D = h->D, A = h->A, K1 = h->K1;
    gate_buf_forward(&h->p, x, N, step);
    /* the rows of each group: those with a non-zero primary gate */
    memset(h->cnt, 0, sizeof(int) * (size_t)A);
    for (int s = 0; s < N * K1; s++)
        if (h->p.c.gates[s] != 0.0f)
            h->cnt[h->p.c.idx[s]]++;
    for (int i = 0, o = 0; i < A; i++) {
        h->off[i] = o;
        o += h->cnt[i];
        h->cnt[i] = 0;
    }
    for (int s = 0; s < N * K1; s++) {
        if (h->p.c.gates[s] == 0.0f)
            continue;
        const int i = h->p.c.idx[s], q = h->off[i] + h->cnt[i]++;
        h->src[q] = s / K1;
        memcpy(h->xs + (size_t)q * D, x + (size_t)(s / K1) * D, sizeof(float) * (size_t)D);
    }
    size_t fo = 0, io = 0;
    for (int i = 0; i < A; i++) {
        struct gate_buf *g = &h->s[i];
        g->d.N = h->cnt[i];
        g->fbuf = h->sf + fo;
        g->ibuf = h->si + io;
        g->work = h->swork;
        fo += gate_cache_floats(&g->d);
        io += gate_cache_ints(&g->d);
        gate_buf_forward(g, h->xs + (size_t)h->off[i] * D, h->cnt[i], step);
    }
    /* backward: each group's into its packed rows, scattered back, then the
     * primary's */
    for (int i = 0; i < A; i++) {
        memset(h->dxs + (size_t)h->off[i] * D, 0, sizeof(float) * (size_t)h->cnt[i] * D);
        gate_buf_backward(&h->s[i], h->dxs + (size_t)h->off[i] * D, h->xs + (size_t)h->off[i] * D);
    }
    const int P = h->off[A - 1] + h->cnt[A - 1];
    for (int q = 0; q < P; q++) {
        float *d = dx + (size_t)h->src[q] * D;
        const float *s = h->dxs + (size_t)q * D;
        for (int j = 0; j < D; j++)
            d[j] += s[j];
    }
    gate_buf_backward(&h->p, dx, x);
}

/* Times `fn` rounds against the sgemm limit of its GEMMs. */
struct timing {
    double step, flops, fraction, limit;
};

enum { FLAT, HIER };

static int time_gate(int which, struct gate_buf *flat, struct hier *h, const float *x, float *dx,
                     int N, int D, double seconds, struct timing *out)
{
    struct gemm_trace tr = {.n = 0};
    double steps[ROUNDS], ratios[ROUNDS], limits[ROUNDS], flops = 0;
    int64_t it = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int reps = 0;
        double t0 = 0, t = 0;
        for (;; it++) {
            if (it == 1)
                gemm_trace_start(&tr);
            if (it >= 1 && reps == 0)
                t0 = bench_now();
            memset(dx, 0, sizeof(float) * (size_t)N * D);
            if (which == FLAT) {
                gate_buf_forward(flat, x, N, it);
                gate_buf_backward(flat, dx, x);
            } else {
                hier_step(h, x, dx, it);
            }
            if (it == 1)
                gemm_trace_stop();
            if (it >= 1) {
                reps++;
                t = bench_now() - t0;
                if (t >= seconds && reps >= 2) {
                    it++;
                    break;
                }
            }
        }
        steps[round] = t / reps;
        for (int i = 0; i < tr.n; i++)
            tr.s[i].rate = 0;
        double chosen;
        gemm_trace_rates(&tr, seconds / (tr.n ? tr.n : 1), &chosen);
        flops = gemm_trace_rates_best(&tr, seconds / (tr.n ? tr.n : 1), &limits[round]);
        if (flops < 0)
            return -1;
        ratios[round] = limits[round] / steps[round];
    }
    out->step = bench_median(steps, ROUNDS);
    out->fraction = bench_median(ratios, ROUNDS);
    out->limit = bench_median(limits, ROUNDS);
    out->flops = flops;
    return 0;
}

int main(int argc, char **argv)
{
    int D = 512, N = 8192, E = 4096, KF = 4, A = 64, B = 64, K1 = 2, K = 2, threads = 2;
    double seconds = 0.5;
    const char *json = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *f = argv[i], *v = argv[i + 1];
        if (!strcmp(f, "--d-model")) D = atoi(v);
        else if (!strcmp(f, "--rows")) N = atoi(v);
        else if (!strcmp(f, "--experts")) E = atoi(v);
        else if (!strcmp(f, "--k")) KF = atoi(v);
        else if (!strcmp(f, "--groups")) A = atoi(v);
        else if (!strcmp(f, "--experts-per-group")) B = atoi(v);
        else if (!strcmp(f, "--k-primary")) K1 = atoi(v);
        else if (!strcmp(f, "--k-secondary")) K = atoi(v);
        else if (!strcmp(f, "--threads")) threads = atoi(v);
        else if (!strcmp(f, "--seconds")) seconds = atof(v);
        else if (!strcmp(f, "--json")) json = v;
        else {
            fprintf(stderr, "bench_gate: unknown option %s\n", f);
            return 2;
        }
    }
    if (D <= 0 || N <= 0 || E < 2 || KF < 1 || KF >= E || A < 2 || B < 2 || K1 < 1 || K1 >= A ||
        K < 1 || K >= B || threads <= 0 || seconds <= 0) {
        fprintf(stderr, "bench_gate: sizes must be positive, 1 <= k < experts (each level)\n");
        return 2;
    }
    char err[512];
    if (moe_kernels_init(argc, argv, "auto", err, sizeof err)) {
        fprintf(stderr, "bench_gate: %s\n", err);
        return 2;
    }
    moe_blas_set_threads(threads);
    float *x = moe_alloc_floats((size_t)N * D), *dx = moe_alloc_floats((size_t)N * D);
    struct gate_buf flat;
    struct hier h;
    if (!x || !dx || gate_buf_init(&flat, N, D, E, KF, 0, 0, false) || hier_init(&h, N, D, A, B, K1, K)) {
        fprintf(stderr, "bench_gate: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < (size_t)N * D; i++)
        x[i] = fill_value(i, 11, 1.0f);
    struct timing tf, th;
    if (time_gate(FLAT, &flat, &h, x, dx, N, D, seconds, &tf) ||
        time_gate(HIER, &flat, &h, x, dx, N, D, seconds, &th)) {
        fprintf(stderr, "bench_gate: cannot measure sgemm with %s\n", gemm_best_kernels());
        return 1;
    }
    printf("# bench_gate: D=%d, %d rows; kernels %s, limit with %s; %d thread(s)\n", D, N,
           moe_kernels_name(), gemm_best_kernels(), threads);
    printf("flat %d (k %d):            %9.3f ms/step  %12.0f GEMM FLOP/row  %.3f of sgemm\n", E, KF,
           1e3 * tf.step, tf.flops / N, tf.fraction);
    printf("hierarchical %dx%d (k %d, %d): %9.3f ms/step  %12.0f GEMM FLOP/row  %.3f of sgemm\n",
           A, B, K1, K, 1e3 * th.step, th.flops / N, th.fraction);
    printf("hierarchical / flat: time %.4f, GEMM FLOPs per row %.4f (1/%.1f)\n", th.step / tf.step,
           th.flops / tf.flops, tf.flops / th.flops);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "bench_gate: cannot write %s\n", json);
            return 1;
        }
        fprintf(f,
                "{\"bench\": \"gate\", \"d_model\": %d, \"rows\": %d, \"threads\": %d, "
                "\"kernels\": \"%s\", \"kernels_best\": \"%s\",\n"
                " \"flat\": {\"experts\": %d, \"k\": %d, \"step_s\": %.9g, \"gemm_flops_per_row\": %.9g, "
                "\"fraction_of_sgemm\": %.6f, \"sgemm_limit_s\": %.9g},\n"
                " \"hierarchical\": {\"groups\": %d, \"experts_per_group\": %d, \"k_primary\": %d, "
                "\"k\": %d, \"step_s\": %.9g, \"gemm_flops_per_row\": %.9g, "
                "\"fraction_of_sgemm\": %.6f, \"sgemm_limit_s\": %.9g},\n"
                " \"time_ratio\": %.6f, \"flops_ratio\": %.6f}\n",
                D, N, threads, moe_kernels_name(), gemm_best_kernels(), E, KF, tf.step,
                tf.flops / N, tf.fraction, tf.limit, A, B, K1, K, th.step, th.flops / N,
                th.fraction, th.limit, th.step / tf.step, th.flops / tf.flops);
        fclose(f);
    }
    gate_buf_free(&flat);
    hier_free(&h);
    moe_free_floats(&x);
    moe_free_floats(&dx);
    return 0;
}
