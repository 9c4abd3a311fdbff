/* Unit tests for worker/gate (noisy top-k gating, DESIGN §2) with
 * hand-made inputs. x = [clean logits | noise logits] and
 * W_g = [I; 0], W_noise = [0; I], so that clean = x W_g and nl = x W_noise
 * are exactly the numbers the test chose.
 *
 * Checked: ties go to the lower expert index; the softmax covers the top k
 * only and every other expert gets exactly 0; H = clean + eps * std with
 * std = softplus(nl) + 1e-2 and eps the counter-RNG normal of (seed, step,
 * global row, expert); the load threshold rule (an expert in the top k is
 * measured against the (k+1)-th largest H, one outside against the k-th,
 * with a strict >); at evaluation std = 0 and the load counts non-zero
 * gates, as it does when K == E; cv^2 with population variance and
 * tensor2tensor's epsilons; and splitting a batch by rows (shifting row0)
 * gives bitwise the same results as one call. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "moe_par.h"
#include "moe_rng.h"
#include "moe_tensor.h"
#include "test_util.h"

Suite *test_gate_suite(void);

struct gfix {
    struct gate_dims d;
    float *fbuf, *x, *wg, *wn, *imp, *load;
    int32_t *ibuf;
    struct gate_cache c;
};

/* D = 2E, identity gating weights (see the file comment). */
static void gfix_init(struct gfix *f, int N, int E, int K, bool train)
{
    memset(f, 0, sizeof *f);
    f->d = (struct gate_dims){.N = N, .D = 2 * E, .E = E, .K = K, .train = train, .seed = 77,
                              .step = 5, .row0 = 1000};
    f->fbuf = moe_alloc_floats(gate_cache_floats(&f->d));
    f->ibuf = calloc(gate_cache_ints(&f->d), sizeof(int32_t));
    f->x = moe_alloc_floats((size_t)N * 2 * E);
    f->wg = moe_alloc_floats((size_t)2 * E * E);
    f->wn = moe_alloc_floats((size_t)2 * E * E);
    f->imp = moe_alloc_floats((size_t)E);
    f->load = moe_alloc_floats((size_t)E);
    ck_assert_ptr_nonnull(f->ibuf);
    ck_assert_ptr_nonnull(f->load);
    for (int e = 0; e < E; e++) {
        f->wg[(size_t)e * E + e] = 1.0f;
        f->wn[(size_t)(E + e) * E + e] = 1.0f;
    }
    f->c = gate_cache_view(f->fbuf, f->ibuf, &f->d);
}

static void gfix_free(struct gfix *f)
{
    moe_free_floats(&f->fbuf);
    moe_free_floats(&f->x);
    moe_free_floats(&f->wg);
    moe_free_floats(&f->wn);
    moe_free_floats(&f->imp);
    moe_free_floats(&f->load);
    free(f->ibuf);
}

static void set_row(struct gfix *f, int r, const float *clean, const float *nl)
{
    const int E = f->d.E;
    for (int e = 0; e < E; e++) {
        f->x[(size_t)r * 2 * E + e] = clean[e];
        f->x[(size_t)r * 2 * E + E + e] = nl ? nl[e] : 0.0f;
    }
}

static void run(struct gfix *f)
{
    gate_forward(&f->c, f->imp, f->load, f->x, f->wg, f->wn, &f->d);
}

/* Indices of h sorted by descending value, ties to the lower index. */
static void order_desc(int *ord, const float *h, int E)
{
    for (int i = 0; i < E; i++)
        ord[i] = i;
    for (int i = 1; i < E; i++) /* insertion sort: stable */
        for (int j = i; j > 0 && h[ord[j]] > h[ord[j - 1]]; j--) {
            int t = ord[j];
            ord[j] = ord[j - 1];
            ord[j - 1] = t;
        }
}

START_TEST(gate_cache_sizes)
{
    const struct gate_dims a = {.N = 7, .D = 3, .E = 5, .K = 2};
    ck_assert_uint_eq(gate_cache_floats(&a), 6 * 7 * 5 + 7 * 3 + 7 * 2);
    ck_assert_uint_eq(gate_cache_ints(&a), 7 * 3 + 7 * 2);
    const struct gate_dims b = {.N = 7, .D = 3, .E = 4, .K = 4}; /* M = E when K == E */
    ck_assert_uint_eq(gate_cache_floats(&b), 6 * 7 * 4 + 7 * 4 + 7 * 4);
    ck_assert_uint_eq(gate_cache_ints(&b), 7 * 4 + 7 * 4);
}
END_TEST

START_TEST(gate_eval_ties_softmax_and_count_load)
{
    struct gfix f;
    gfix_init(&f, 3, 5, 2, false);
    const float r0[5] = {1, 3, 3, 2, 3};           /* three-way tie at the top */
    const float r1[5] = {0, 1, 2, 3, -1};          /* plain order */
    const float r2[5] = {100, -150, -100, -120, -110}; /* second gate underflows to 0 */
    const float junk[5] = {9, 9, 9, 9, 9};         /* noise logits unused at evaluation */
    set_row(&f, 0, r0, junk);
    set_row(&f, 1, r1, junk);
    set_row(&f, 2, r2, junk);
    run(&f);

    /* top k+1 = 3, descending, ties to the lower index */
    const int32_t topi[3][3] = {{1, 2, 4}, {3, 2, 1}, {0, 2, 4}};
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 3; j++)
            ck_assert_msg(f.c.topi[r * 3 + j] == topi[r][j], "row %d top %d: expert %d", r, j,
                          f.c.topi[r * 3 + j]);
    /* slot experts and gates: softmax over the top k only */
    const int32_t idx[3][2] = {{1, 2}, {3, 2}, {0, 2}};
    const double e1 = exp(-1.0);
    const double gw[3][2] = {{0.5, 0.5}, {1 / (1 + e1), e1 / (1 + e1)}, {1.0, 0.0}};
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 2; j++) {
            ck_assert_int_eq(f.c.idx[r * 2 + j], idx[r][j]);
            /* two float roundings: (float)((float)e / sum) */
            ck_assert_msg(fabs(f.c.gates[r * 2 + j] - gw[r][j]) <= 1.2e-7 * gw[r][j],
                          "row %d slot %d gate %.9g, expected %.9g", r, j, f.c.gates[r * 2 + j],
                          gw[r][j]);
        }
    ck_assert(f.c.gates[2 * 2 + 1] == 0.0f);
    ck_assert_float_eq(f.c.gates[0], 0.5f);
    ck_assert_float_eq(f.c.gates[1], 0.5f);
    /* at evaluation: no noise, std 0, H = clean */
    for (int i = 0; i < 15; i++) {
        ck_assert(f.c.std[i] == 0.0f && f.c.eps[i] == 0.0f);
        ck_assert(f.c.H[i] == f.c.clean[i]);
    }
    /* Importance: exact zeros for experts never in a top k (expert 4 was
     * the (k+1)-th twice, which gives it nothing) */
    const double imp[5] = {1.0, 0.5, 0.5 + e1 / (1 + e1), 1 / (1 + e1), 0.0};
    for (int e = 0; e < 5; e++)
        ck_assert_msg(fabs(f.imp[e] - imp[e]) <= 1e-7, "imp[%d] = %.9g", e, f.imp[e]);
    ck_assert(f.imp[4] == 0.0f);
    /* Load at evaluation = count of non-zero gates; expert 2's zero gate in
     * row 2 does not count. */
    const float load[5] = {1, 1, 2, 1, 0};
    for (int e = 0; e < 5; e++)
        ck_assert_msg(f.load[e] == load[e], "load[%d] = %g, expected %g", e, f.load[e], load[e]);
    gfix_free(&f);
}
END_TEST

START_TEST(gate_accumulates_into_imp_and_load)
{
    /* imp and load are += : a second call adds the same amounts */
    struct gfix f;
    gfix_init(&f, 1, 4, 1, false);
    const float r0[4] = {0, 2, 1, -1};
    set_row(&f, 0, r0, NULL);
    f.imp[1] = 10.0f;
    f.load[3] = 5.0f;
    run(&f);
    ck_assert_float_eq(f.imp[1], 11.0f); /* K = 1: the single gate is 1 */
    ck_assert_float_eq(f.load[1], 1.0f);
    ck_assert_float_eq(f.load[3], 5.0f);
    ck_assert_float_eq(f.imp[0] + f.imp[2] + f.imp[3], 0.0f);
    gfix_free(&f);
}
END_TEST

/* Train mode: checks H, std and eps element by element, the top k+1, the
 * gates, Importance and the smooth Load with the threshold rule, all from
 * values computed here in double. */
START_TEST(gate_train_noise_threshold_and_load)
{
    enum { N = 40, E = 6, K = 2 };
    struct gfix f;
    gfix_init(&f, N, E, K, true);
    for (int r = 0; r < N; r++) {
        float cl[E], nl[E];
        for (int e = 0; e < E; e++) {
            cl[e] = 0.3f * (float)e * (r % 2 ? 1.0f : -1.0f) + 0.05f * (float)(r % 7);
            nl[e] = -2.0f + 0.5f * (float)((r + e) % 6); /* std from 0.14 to 1.2 */
        }
        set_row(&f, r, cl, nl);
    }
    run(&f);

    double imp[E] = {0}, load[E] = {0}, load_ge[E] = {0}, load_swap[E] = {0};
    for (int r = 0; r < N; r++) {
        const float *x = f.x + (size_t)r * 2 * E;
        float h[E];
        for (int e = 0; e < E; e++) {
            const size_t o = (size_t)r * E + e;
            ck_assert(f.c.clean[o] == x[e]);
            ck_assert(f.c.nl[o] == x[E + e]);
            const float eps = moe_rng_normal(77, MOE_RNG_GATE_NOISE, 5, (uint32_t)(1000 + r),
                                             (uint32_t)e);
            ck_assert_msg(f.c.eps[o] == eps, "row %d expert %d: noise is not the counter draw", r,
                          e);
            const double sd = log1p(exp((double)x[E + e])) + 1e-2;
            ck_assert_msg(fabs(f.c.std[o] - sd) <= 5e-7 * sd, "std %.9g, expected %.9g", f.c.std[o],
                          sd);
            h[e] = x[e] + eps * f.c.std[o];
            ck_assert(f.c.H[o] == h[e]);
        }
        int ord[E];
        order_desc(ord, h, E);
        for (int j = 0; j < K + 1; j++) {
            ck_assert_int_eq(f.c.topi[r * (K + 1) + j], ord[j]);
            ck_assert(f.c.topv[r * (K + 1) + j] == h[ord[j]]);
        }
        /* gates: softmax over the top k of H */
        double s = 0, gd[K];
        for (int j = 0; j < K; j++)
            s += gd[j] = exp((double)h[ord[j]] - h[ord[0]]);
        for (int j = 0; j < K; j++) {
            gd[j] /= s;
            ck_assert_int_eq(f.c.idx[r * K + j], ord[j]);
            ck_assert(fabs(f.c.gates[r * K + j] - gd[j]) <= 1e-7);
            imp[ord[j]] += gd[j];
        }
        /* load: thr_i = (k+1)-th largest H if i is in the top k, else the
         * k-th largest; in/out by membership of the top k, which is
         * what "H_i strictly greater than the (k+1)-th" means */
        const double kth = h[ord[K - 1]], k1th = h[ord[K]];
        for (int i = 0; i < E; i++) {
            bool in = false;
            for (int j = 0; j < K; j++)
                in |= ord[j] == i;
            const double sd = f.c.std[(size_t)r * E + i], cl = x[i];
            const double thr = in ? k1th : kth;
            const double den = sqrt(2.0) * sd + 1e-20;
            load[i] += 0.5 * (1 + erf((cl - thr) / den));
            /* two wrong rules the test must tell apart: >= instead of >
             * (the (k+1)-th expert measured against itself), and the two
             * thresholds swapped */
            const double thr_ge = h[i] >= k1th ? k1th : kth, thr_sw = in ? kth : k1th;
            load_ge[i] += 0.5 * (1 + erf((cl - thr_ge) / den));
            load_swap[i] += 0.5 * (1 + erf((cl - thr_sw) / den));
        }
    }
    double sens_ge = 0, sens_swap = 0;
    for (int e = 0; e < E; e++) {
        ck_assert_msg(fabs(f.imp[e] - imp[e]) <= 1e-5, "imp[%d] %.9g, expected %.9g", e, f.imp[e],
                      imp[e]);
        /* 40 float additions of terms <= 1 */
        ck_assert_msg(fabs(f.load[e] - load[e]) <= 5e-5, "load[%d] %.9g, expected %.9g", e,
                      f.load[e], load[e]);
        sens_ge = fmax(sens_ge, fabs(load_ge[e] - load[e]));
        sens_swap = fmax(sens_swap, fabs(load_swap[e] - load[e]));
    }
    /* the case discriminates the rule: the wrong thresholds are far off */
    ck_assert_msg(sens_ge > 0.1 && sens_swap > 0.1, "not sensitive to the rule (%g, %g)", sens_ge,
                  sens_swap);
    gfix_free(&f);
}
END_TEST

START_TEST(gate_threshold_by_hand)
{
    /* std pinned to 0.01 (nl = -100 makes softplus exactly 0 in float),
     * clean = [4, 1, 2, 0] far apart, K = 1: H ~ clean. Top 2 = [0, 2].
     * Expert 0 (in) vs the 2nd largest H (~2): Phi(~2 / 0.0141) = 1.
     * Expert 2 (the (k+1)-th, out, H_2 is not > itself) vs the 1st (~4):
     * Phi(~ -2 / 0.0141) = 0; with >= it would be Phi(~0) = ~0.5.
     * Experts 1, 3 (out) vs ~4: 0. */
    struct gfix f;
    gfix_init(&f, 1, 4, 1, true);
    const float cl[4] = {4, 1, 2, 0}, nl[4] = {-100, -100, -100, -100};
    set_row(&f, 0, cl, nl);
    run(&f);
    for (int e = 0; e < 4; e++)
        ck_assert_float_eq(f.c.std[e], 0.01f);
    ck_assert_int_eq(f.c.topi[0], 0);
    ck_assert_int_eq(f.c.topi[1], 2);
    ck_assert_float_eq(f.load[0], 1.0f);
    ck_assert_float_eq(f.load[1], 0.0f);
    ck_assert_float_eq(f.load[2], 0.0f);
    ck_assert_float_eq(f.load[3], 0.0f);
    ck_assert_float_eq(f.imp[0], 1.0f);
    gfix_free(&f);
}
END_TEST

START_TEST(gate_k_equals_e_count_load)
{
    enum { N = 10, E = 4 };
    for (int train = 0; train < 2; train++) {
        struct gfix f;
        gfix_init(&f, N, E, E, train);
        for (int r = 0; r < N; r++) {
            float cl[E], nl[E];
            for (int e = 0; e < E; e++) {
                cl[e] = 0.25f * (float)((r * 3 + e * 5) % 7);
                nl[e] = 0.0f;
            }
            set_row(&f, r, cl, nl);
        }
        run(&f);
        double total = 0;
        for (int e = 0; e < E; e++) {
            ck_assert_msg(f.load[e] == (float)N, "train=%d load[%d] = %g", train, e, f.load[e]);
            total += f.imp[e];
        }
        ck_assert(fabs(total - N) < 1e-5);
        for (int r = 0; r < N; r++) { /* every expert is a slot of every row */
            int seen = 0;
            for (int j = 0; j < E; j++)
                seen |= 1 << f.c.idx[r * E + j];
            ck_assert_int_eq(seen, (1 << E) - 1);
        }
        gfix_free(&f);
    }
}
END_TEST

static double cv2_ref(const float *v, int n)
{
    const double np = n + 1e-10;
    double s = 0;
    for (int i = 0; i < n; i++)
        s += v[i];
    const double mean = s / np;
    double var = 0;
    for (int i = 0; i < n; i++)
        var += (v[i] - mean) * (v[i] - mean);
    var /= np;
    return var / (mean * mean + 1e-10);
}

START_TEST(gate_cv_squared_values)
{
    const float a[4] = {1, 2, 3, 10}, b[2] = {1, 3}, c[5] = {5, 5, 5, 5, 5}, z[3] = {0, 0, 0};
    float d[64];
    tu_fill(d, 64, 3, 1.0f);
    for (int i = 0; i < 64; i++)
        d[i] += 1.5f;
    ck_assert(fabs(gate_cv_squared(a, 4, NULL) - cv2_ref(a, 4)) <= 1e-12 * cv2_ref(a, 4));
    ck_assert(fabs(gate_cv_squared(d, 64, NULL) - cv2_ref(d, 64)) <= 1e-12 * cv2_ref(d, 64));
    /* population variance: [1, 3] has variance 1 (not 2), mean 2: 1/4 */
    ck_assert(fabs(gate_cv_squared(b, 2, NULL) - 0.25) < 1e-9);
    /* a = [1,2,3,10]: mean 4, variance (9+4+1+36)/4 = 12.5: 12.5/16 */
    ck_assert(fabs(gate_cv_squared(a, 4, NULL) - 12.5 / 16) < 1e-9);
    ck_assert(gate_cv_squared(c, 5, NULL) < 1e-15);
    ck_assert(gate_cv_squared(c, 5, NULL) >= 0);
    ck_assert(gate_cv_squared(z, 3, NULL) == 0.0);
    /* the gradient of a constant vector is ~0, and the gradient of any
     * vector sums to ~0 along the scale direction (cv^2 is scale-free):
     * sum_i v_i dcv/dv_i = 0 */
    float dv[64];
    gate_cv_squared(d, 64, dv);
    double radial = 0;
    for (int i = 0; i < 64; i++)
        radial += (double)d[i] * dv[i];
    ck_assert_msg(fabs(radial) < 1e-6, "v . dcv/dv = %g", radial);
    /* balance loss: weighted sum, gradients scaled by the weights */
    float di[2], dl[2], di1[2], dl1[2];
    double L = gate_balance_loss(a, b, 2, 0.1, 0.2, di, dl);
    ck_assert(fabs(L - (0.1 * cv2_ref(a, 2) + 0.2 * cv2_ref(b, 2))) < 1e-12);
    gate_cv_squared(a, 2, di1);
    gate_cv_squared(b, 2, dl1);
    for (int i = 0; i < 2; i++) {
        ck_assert(di1[i] != 0.0f && dl1[i] != 0.0f);
        ck_assert(fabs(di[i] - 0.1 * di1[i]) <= 1e-7 * fabs(0.1 * di1[i]));
        ck_assert(fabs(dl[i] - 0.2 * dl1[i]) <= 1e-7 * fabs(0.2 * dl1[i]));
    }
}
END_TEST

/* Random inputs and weights of a real layer shape. */
static void fill_random(struct gfix *f, uint32_t stream)
{
    const int E = f->d.E, D = f->d.D;
    tu_fill(f->x, (size_t)f->d.N * D, stream, 1.0f);
    tu_fill(f->wg, (size_t)D * E, stream + 1, 0.5f);
    tu_fill(f->wn, (size_t)D * E, stream + 2, 0.5f);
}

START_TEST(gate_split_rows_bitwise)
{
    /* One call over 11 rows from row0 = 1000 == a call over the first 4
     * (row0 = 1000) then one over the other 7 (row0 = 1004), gates, noise
     * and the += accumulated Importance and Load compared bitwise. */
    enum { N = 11, N1 = 4, E = 8, K = 2 };
    struct gfix all, h1, h2;
    gfix_init(&all, N, E, K, true);
    gfix_init(&h1, N1, E, K, true);
    gfix_init(&h2, N - N1, E, K, true);
    fill_random(&all, 40);
    const int D = all.d.D;
    memcpy(h1.wg, all.wg, sizeof(float) * D * E);
    memcpy(h2.wg, all.wg, sizeof(float) * D * E);
    memcpy(h1.wn, all.wn, sizeof(float) * D * E);
    memcpy(h2.wn, all.wn, sizeof(float) * D * E);
    memcpy(h1.x, all.x, sizeof(float) * N1 * D);
    memcpy(h2.x, all.x + (size_t)N1 * D, sizeof(float) * (N - N1) * D);
    h2.d.row0 = all.d.row0 + N1;
    run(&all);
    /* both halves accumulate into one pair of vectors, in row order */
    float imp[E] = {0}, load[E] = {0};
    gate_forward(&h1.c, imp, load, h1.x, h1.wg, h1.wn, &h1.d);
    gate_forward(&h2.c, imp, load, h2.x, h2.wg, h2.wn, &h2.d);

    const size_t E1 = (size_t)N1 * E, E2 = (size_t)(N - N1) * E;
    ck_assert_int_eq(memcmp(all.c.eps, h1.c.eps, sizeof(float) * E1), 0);
    ck_assert_int_eq(memcmp(all.c.eps + E1, h2.c.eps, sizeof(float) * E2), 0);
    ck_assert_int_eq(memcmp(all.c.H, h1.c.H, sizeof(float) * E1), 0);
    ck_assert_int_eq(memcmp(all.c.H + E1, h2.c.H, sizeof(float) * E2), 0);
    ck_assert_int_eq(memcmp(all.c.gates, h1.c.gates, sizeof(float) * N1 * K), 0);
    ck_assert_int_eq(memcmp(all.c.gates + N1 * K, h2.c.gates, sizeof(float) * (N - N1) * K), 0);
    ck_assert_int_eq(memcmp(all.c.idx, h1.c.idx, sizeof(int32_t) * N1 * K), 0);
    ck_assert_int_eq(memcmp(all.c.idx + N1 * K, h2.c.idx, sizeof(int32_t) * (N - N1) * K), 0);
    ck_assert_int_eq(memcmp(all.imp, imp, sizeof imp), 0);
    ck_assert_int_eq(memcmp(all.load, load, sizeof load), 0);

    /* The noise is a function of the global row: shifting row0 by one
     * shifts the noise by one row. Other steps and seeds differ. */
    struct gfix s1;
    gfix_init(&s1, N, E, K, true);
    fill_random(&s1, 40);
    s1.d.row0 = all.d.row0 + 1;
    run(&s1);
    ck_assert_int_eq(memcmp(all.c.eps + E, s1.c.eps, sizeof(float) * (N - 1) * E), 0);
    s1.d.row0 = all.d.row0;
    s1.d.step = all.d.step + 1;
    run(&s1);
    ck_assert(memcmp(all.c.eps, s1.c.eps, sizeof(float) * E) != 0);
    s1.d.step = all.d.step;
    s1.d.seed = all.d.seed + 1;
    run(&s1);
    ck_assert(memcmp(all.c.eps, s1.c.eps, sizeof(float) * E) != 0);
    gfix_free(&s1);
    gfix_free(&all);
    gfix_free(&h1);
    gfix_free(&h2);
}
END_TEST

/* Rows run as moe_par tasks (32 rows each) and Load as column sums over
 * tasks of 256 experts: forward and backward over 150 rows and 300
 * experts give the same bits with 1 and with 3 threads. */
START_TEST(gate_threads_bitwise)
{
    enum { N = 150, E = 300, K = 4 };
    struct gfix f[2];
    float *dx[2], *dwg[2], *dwn[2], *work[2];
    const int D = 2 * E;
    float *dgates = moe_alloc_floats((size_t)N * K), *dimp = moe_alloc_floats(E),
          *dload = moe_alloc_floats(E);
    tu_fill(dgates, (size_t)N * K, 60, 1.0f);
    tu_fill(dimp, E, 61, 1.0f);
    tu_fill(dload, E, 62, 1.0f);
    for (int k = 0; k < 2; k++) {
        gfix_init(&f[k], N, E, K, true);
        fill_random(&f[k], 50);
        dx[k] = moe_alloc_floats((size_t)N * D);
        dwg[k] = moe_alloc_floats((size_t)D * E);
        dwn[k] = moe_alloc_floats((size_t)D * E);
        work[k] = moe_alloc_floats((size_t)2 * N * E);
        moe_par_set_threads(k ? 3 : 1);
        run(&f[k]);
        gate_backward(dx[k], dwg[k], dwn[k], work[k], dgates, dimp, dload, f[k].x, f[k].wg,
                      f[k].wn, &f[k].c, &f[k].d);
    }
    moe_par_set_threads(1);
    ck_assert_int_eq(memcmp(f[0].c.gates, f[1].c.gates, sizeof(float) * N * K), 0);
    ck_assert_int_eq(memcmp(f[0].c.idx, f[1].c.idx, sizeof(int32_t) * N * K), 0);
    ck_assert_int_eq(memcmp(f[0].imp, f[1].imp, sizeof(float) * E), 0);
    ck_assert_int_eq(memcmp(f[0].load, f[1].load, sizeof(float) * E), 0);
    ck_assert_int_eq(memcmp(dx[0], dx[1], sizeof(float) * N * D), 0);
    ck_assert_int_eq(memcmp(dwg[0], dwg[1], sizeof(float) * D * E), 0);
    ck_assert_int_eq(memcmp(dwn[0], dwn[1], sizeof(float) * D * E), 0);
    /* Load is a sum of N probabilities; something was computed */
    double lsum = 0;
    for (int i = 0; i < E; i++)
        lsum += f[0].load[i];
    ck_assert_double_gt(lsum, 0.5 * K * N);
    for (int k = 0; k < 2; k++) {
        gfix_free(&f[k]);
        moe_free_floats(&dx[k]);
        moe_free_floats(&dwg[k]);
        moe_free_floats(&dwn[k]);
        moe_free_floats(&work[k]);
    }
    moe_free_floats(&dgates);
    moe_free_floats(&dimp);
    moe_free_floats(&dload);
}
END_TEST

Suite *test_gate_suite(void)
{
    Suite *s = suite_create("gate");
    TCase *tc = tcase_create("forward");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, gate_cache_sizes);
    tcase_add_test(tc, gate_eval_ties_softmax_and_count_load);
    tcase_add_test(tc, gate_accumulates_into_imp_and_load);
    tcase_add_test(tc, gate_train_noise_threshold_and_load);
    tcase_add_test(tc, gate_threshold_by_hand);
    tcase_add_test(tc, gate_k_equals_e_count_load);
    tcase_add_test(tc, gate_split_rows_bitwise);
    tcase_add_test(tc, gate_threads_bitwise);
    suite_add_tcase(s, tc);
    TCase *tv = tcase_create("cv");
    tcase_set_timeout(tv, 10);
    tcase_add_test(tv, gate_cv_squared_values);
    suite_add_tcase(s, tv);
    return s;
}
