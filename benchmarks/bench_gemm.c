/* Benchmark tool: sgemm rates under one OpenBLAS kernel set, and the survey
 * of every set this CPU runs (DESIGN §9, §10).
 *
 *   bench_gemm [--threads N] [--seconds S] SHAPE...
 *       SHAPE is M,N,K,TA,TB (TA, TB 0 or 1). Runs under whatever
 *       OPENBLAS_CORETYPE says (it never switches: it is what other
 *       benchmarks run in a child to measure a set they did not load).
 *       Prints "kernels NAME", "selftest ok" (or "selftest failed: ..."),
 *       then "rate SHAPE GFLOPS" per shape.
 *   bench_gemm --survey [--threads N] [--rounds R] [--json FILE]
 *       Runs the above in a child per kernel set: OpenBLAS's own choice
 *       (OPENBLAS_CORETYPE unset), the environment's OPENBLAS_CORETYPE if
 *       set, and each of Cooperlake, SkylakeX, Haswell, Sandybridge the CPU
 *       runs; R rounds (default 3) alternate the sets and the median of
 *       each rate counts. Reports each set's self-test and rates, the set
 *       the programs choose (moe_kernels_decide, as moe-worker would with
 *       --blas-kernels auto in this environment) and the best correct set:
 *       the fastest (geometric mean over the shapes) that passed its
 *       self-test. benchmarks/run.sh hands that one to the other benchmarks
 *       (MOE_BENCH_BEST_KERNELS), which compute every ratio against it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gemm_rate.h"
#include "moe_blas.h"
#include "moe_err.h"
#include "moe_kernels.h"

/* The survey's shapes: the square product, an expert's (1024 rows
 * of 512 -> 1024) and the default model's softmax (1120 rows, V = 33278,
 * D = 128), forward as the programs call them. */
static const char *const survey_shapes[] = {"2048,2048,2048,0,0", "1024,1024,512,0,1",
                                            "1120,33278,128,0,1"};
#define N_SHAPES (int)(sizeof survey_shapes / sizeof survey_shapes[0])
#define MAX_SETS 8
#define MAX_ROUNDS 9

static int parse_shape(const char *s, struct gemm_shape *g)
{
    int ta = 0, tb = 0;
    memset(g, 0, sizeof *g);
    if (sscanf(s, "%d,%d,%d,%d,%d", &g->m, &g->n, &g->k, &ta, &tb) != 5 || g->m <= 0 ||
        g->n <= 0 || g->k <= 0)
        return -1;
    g->ta = ta != 0;
    g->tb = tb != 0;
    return 0;
}

/* The plain mode: self-test and rates under the loaded set. */
static int rates_main(int nshapes, char **shapes, int threads, double seconds)
{
    moe_blas_set_threads(threads);
    printf("kernels %s\n", moe_kernels_name());
    char err[512];
    if (moe_kernels_selftest(moe_sgemm, err, sizeof err))
        printf("selftest failed: %s\n", err);
    else
        printf("selftest ok\n");
    for (int i = 0; i < nshapes; i++) {
        struct gemm_shape g;
        if (parse_shape(shapes[i], &g)) {
            fprintf(stderr, "bench_gemm: bad shape %s (want M,N,K,TA,TB)\n", shapes[i]);
            return 2;
        }
        printf("rate %s %.2f\n", shapes[i], gemm_rate(&g, seconds));
        fflush(stdout);
    }
    return 0;
}

struct set_result {
    char name[32];
    bool selftest;
    char failure[256];
    double rate[MAX_ROUNDS][N_SHAPES], median[N_SHAPES], geomean;
};

/* One child run under `coretype` (NULL: unset); fills r's round `round`. */
static int survey_child(const char *coretype, int threads, struct set_result *r, int round)
{
    char args[1024];
    int o = snprintf(args, sizeof args, "--threads %d --seconds 0.25", threads);
    for (int i = 0; i < N_SHAPES; i++)
        o += snprintf(args + o, sizeof args - (size_t)o, " %s", survey_shapes[i]);
    char out[8192];
    if (gemm_run_tool("bench_gemm", coretype, args, out, sizeof out))
        return -1;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        if (!strncmp(line, "kernels ", 8))
            snprintf(r->name, sizeof r->name, "%s", line + 8);
        else if (!strcmp(line, "selftest ok"))
            r->selftest = true;
        else if (!strncmp(line, "selftest failed: ", 17))
            snprintf(r->failure, sizeof r->failure, "%s", line + 17);
        else if (!strncmp(line, "rate ", 5))
            for (int i = 0; i < N_SHAPES; i++) {
                const size_t l = strlen(survey_shapes[i]);
                if (!strncmp(line + 5, survey_shapes[i], l) && line[5 + l] == ' ')
                    r->rate[round][i] = atof(line + 6 + l);
            }
    }
    return r->name[0] ? 0 : -1;
}

static void survey_json(FILE *f, const struct set_result *sets, int n, int own, int chosen,
                        int best, const char *reason, const struct moe_kernels_cpu *cpu,
                        int threads, int rounds)
{
    char feat[512];
    moe_kernels_cpu_describe(cpu, feat, sizeof feat);
    const char *env = getenv("OPENBLAS_CORETYPE");
    fprintf(f, "{\"cpu_features\": \"%s\", \"openblas_coretype\": %s%s%s, \"threads\": %d, "
               "\"rounds\": %d,\n \"openblas_own\": \"%s\", \"chosen\": \"%s\", "
               "\"chosen_reason\": \"%s\", \"best\": \"%s\",\n \"shapes\": [",
            feat, env ? "\"" : "", env ? env : "null", env ? "\"" : "", threads, rounds,
            sets[own].name, sets[chosen].name, reason, sets[best].name);
    for (int i = 0; i < N_SHAPES; i++)
        fprintf(f, "%s\"%s\"", i ? ", " : "", survey_shapes[i]);
    fprintf(f, "],\n \"sets\": [");
    for (int s = 0; s < n; s++) {
        fprintf(f, "%s{\"name\": \"%s\", \"selftest\": %s, \"gflops\": [", s ? ",\n  " : "",
                sets[s].name, sets[s].selftest ? "true" : "false");
        for (int i = 0; i < N_SHAPES; i++)
            fprintf(f, "%s%.2f", i ? ", " : "", sets[s].median[i]);
        fprintf(f, "], \"geomean_gflops\": %.2f}", sets[s].geomean);
    }
    fprintf(f, "]}\n");
}

/* Index of `name` in sets (adding it when absent and there is room). */
static int set_index(struct set_result *sets, int *n, const char *name)
{
    for (int s = 0; s < *n; s++)
        if (!strcasecmp(sets[s].name, name))
            return s;
    if (*n == MAX_SETS)
        return -1;
    memset(&sets[*n], 0, sizeof sets[*n]);
    snprintf(sets[*n].name, sizeof sets[*n].name, "%s", name);
    return (*n)++;
}

static int survey_main(int threads, int rounds, const char *json)
{
    struct moe_kernels_cpu cpu;
    moe_kernels_cpu_detect(&cpu);
    static struct set_result sets[MAX_SETS];
    struct set_result probe;
    memset(&probe, 0, sizeof probe);
    /* OpenBLAS's own choice, then the environment's, then the best sets
     * the CPU runs */
    if (survey_child(NULL, threads, &probe, 0)) {
        fprintf(stderr, "bench_gemm: the child under OpenBLAS's own choice failed\n");
        return 1;
    }
    int n = 0;
    const int own = set_index(sets, &n, probe.name);
    sets[own] = probe;
    const char *env = getenv("OPENBLAS_CORETYPE");
    if (env && env[0])
        set_index(sets, &n, env);
    static const char *const cands[] = {"Cooperlake", "SkylakeX", "Haswell", "Sandybridge"};
    char err[256];
    for (size_t i = 0; i < sizeof cands / sizeof *cands; i++)
        if (moe_kernels_set_supported(&cpu, cands[i], err, sizeof err) == 0)
            set_index(sets, &n, cands[i]);
    struct moe_kernels_decision d;
    moe_kernels_decide(&d, &cpu, sets[own].name, env, "auto", err, sizeof err);
    const int chosen = set_index(sets, &n, env && env[0] ? env : d.target);
    if (chosen < 0)
        return 1;
    for (int r = 0; r < rounds; r++)
        for (int s = 0; s < n; s++) {
            struct set_result tmp = sets[s];
            if (survey_child(s == own ? NULL : sets[s].name, threads, &tmp, r)) {
                fprintf(stderr, "bench_gemm: the child under %s failed\n", sets[s].name);
                return 1;
            }
            memcpy(sets[s].rate[r], tmp.rate[r], sizeof tmp.rate[r]);
            sets[s].selftest = tmp.selftest;
            snprintf(sets[s].failure, sizeof sets[s].failure, "%s", tmp.failure);
            if (s != own && strcasecmp(tmp.name, sets[s].name))
                snprintf(sets[s].failure, sizeof sets[s].failure,
                         "OpenBLAS loaded %s instead", tmp.name);
        }
    int best = -1;
    for (int s = 0; s < n; s++) {
        double lg = 0;
        for (int i = 0; i < N_SHAPES; i++) {
            double v[MAX_ROUNDS];
            for (int r = 0; r < rounds; r++)
                v[r] = sets[s].rate[r][i];
            sets[s].median[i] = bench_median(v, rounds);
            lg += log(sets[s].median[i] > 0 ? sets[s].median[i] : 1e-9);
        }
        sets[s].geomean = exp(lg / N_SHAPES);
        const bool ok = sets[s].selftest && !sets[s].failure[0];
        if (ok && (best < 0 || sets[s].geomean > sets[best].geomean))
            best = s;
        printf("%-12s %s", sets[s].name, ok ? "self-test ok    " : "NOT USABLE      ");
        for (int i = 0; i < N_SHAPES; i++)
            printf(" %8.1f", sets[s].median[i]);
        printf("  geomean %7.1f GFLOP/s%s%s%s\n", sets[s].geomean, s == own ? "  [OpenBLAS's own]" : "",
               s == chosen ? "  [programs' choice]" : "", ok ? "" : sets[s].failure);
    }
    if (best < 0) {
        fprintf(stderr, "bench_gemm: no kernel set passed its self-test\n");
        return 1;
    }
    printf("shapes (M,N,K,TA,TB): %s  %s  %s; %d thread(s), median of %d rounds\n",
           survey_shapes[0], survey_shapes[1], survey_shapes[2], threads, rounds);
    printf("best correct set: %s; the programs choose %s (%s)\n", sets[best].name,
           sets[chosen].name, env && env[0] ? "OPENBLAS_CORETYPE is set" : d.reason);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "bench_gemm: cannot write %s\n", json);
            return 1;
        }
        survey_json(f, sets, n, own, chosen, best,
                    env && env[0] ? "OPENBLAS_CORETYPE is set in the environment" : d.reason,
                    &cpu, threads, rounds);
        fclose(f);
    }
    return 0;
}

int main(int argc, char **argv)
{
    int threads = 2, rounds = 3, first_shape = argc;
    double seconds = 0.3;
    bool survey = false;
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--survey"))
            survey = true;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            json = argv[++i];
        else if (argv[i][0] != '-') {
            first_shape = i;
            break;
        } else {
            fprintf(stderr, "bench_gemm: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (threads < 1 || seconds <= 0 || rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "bench_gemm: threads, seconds and rounds (1..%d) must be positive\n",
                MAX_ROUNDS);
        return 2;
    }
    if (survey)
        return survey_main(threads, rounds, json);
    return rates_main(argc - first_shape, argv + first_shape, threads, seconds);
}
