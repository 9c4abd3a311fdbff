/* Unit tests for common/expert_ffn: the parameter block layout, a hand
 * computed forward, the BLAS passes against the plain-loop references for
 * 0, 1, 7 and 300 rows, accumulation (+=) of parameter gradients and
 * overwriting of dx, and bitwise determinism of repeated runs (DESIGN §4:
 * worker and expert server must agree to the bit). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "expert_ffn.h"
#include "moe_par.h"
#include "moe_tensor.h"
#include "test_util.h"

Suite *test_expert_ffn_suite(void);

enum { D = 12, H = 20 };

/* Worst |a-b| over n values, relative to the largest |b| (at least 1e-3):
 * float-vs-double sums of D or H terms. */
static double rel_to_max(const float *a, const float *b, size_t n)
{
    double m = 1e-3, worst = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)b[i]));
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        worst = isnan(d) ? INFINITY : fmax(worst, d);
    }
    return worst / m;
}

START_TEST(ffn_view_layout)
{
    const int d = 3, h = 5;
    ck_assert_uint_eq(expert_ffn_param_count(d, h), (size_t)(h * d + h + d * h + d));
    ck_assert_uint_eq(expert_ffn_param_count(512, 1024), 512u * 1024 * 2 + 1024 + 512);
    float block[15 + 5 + 15 + 3];
    struct expert_ffn_params p = expert_ffn_view(block, d, h);
    ck_assert_ptr_eq(p.w1, block);
    ck_assert_ptr_eq(p.b1, block + h * d);
    ck_assert_ptr_eq(p.w2, block + h * d + h);
    ck_assert_ptr_eq(p.b2, block + h * d + h + d * h);
    ck_assert_ptr_eq(p.b2 + d, block + expert_ffn_param_count(d, h));
}
END_TEST

START_TEST(ffn_forward_by_hand)
{
    /* D = 2, H = 3, small integers: every operation is exact.
     * w1 (3,2) = [[1,0],[0,1],[1,1]], b1 = [0,-5,1]
     * w2 (2,3) = [[1,2,3],[-1,0,1]], b2 = [10, 20]
     * x = [2, 3]: pre = [2, -2, 6] -> z = [2, 0, 6]; y = [10+2+18, 20-2+6] */
    float block[6 + 3 + 6 + 2] = {1, 0, 0, 1, 1, 1, 0, -5, 1, 1, 2, 3, -1, 0, 1, 10, 20};
    struct expert_ffn_params p = expert_ffn_view(block, 2, 3);
    const float x[4] = {2, 3, -1, -1}; /* second row: pre = [-1,-6,-1] -> z = 0, y = b2 */
    float y[4], z[6];
    expert_ffn_forward(y, z, x, &p, 2, 2, 3);
    const float zw[6] = {2, 0, 6, 0, 0, 0}, yw[4] = {30, 24, 10, 20};
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(z[i], zw[i]);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq(y[i], yw[i]);

    /* backward of dy = [[1,0],[0,0]]: dz = (dy W2) * [z>0] = [1,0,3];
     * dW2 += dy^T z = [[2,0,6],[0,0,0]]; db2 += [1,0]; db1 += [1,0,3];
     * dW1 += dz^T x = [[2,3],[0,0],[6,9]]; dx = dz W1 = [1+3, 3] */
    float gblock[17];
    for (int i = 0; i < 17; i++)
        gblock[i] = 1.0f; /* accumulation starts from 1 */
    struct expert_ffn_params g = expert_ffn_view(gblock, 2, 3);
    const float dy[4] = {1, 0, 0, 0};
    float dx[4] = {NAN, NAN, NAN, NAN}, dz[6];
    expert_ffn_backward(dx, &g, dz, dy, x, z, &p, 2, 2, 3);
    const float gw[17] = {3, 4, 1, 1, 7, 10, /* w1 */ 2, 1, 4, /* b1 */
                          3, 1, 7, 1, 1, 1, /* w2 */ 2, 1 /* b2 */};
    for (int i = 0; i < 17; i++)
        ck_assert_msg(gblock[i] == gw[i], "grad %d: %g, expected %g", i, gblock[i], gw[i]);
    const float dxw[4] = {4, 3, 0, 0};
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq(dx[i], dxw[i]);
}
END_TEST

struct ffn_fix {
    float *w, *g, *gr, *x, *y, *yr, *z, *zr, *dy, *dx, *dxr, *dz;
    struct expert_ffn_params p, dp, dpr;
};

static void fix_init(struct ffn_fix *f, int R)
{
    const size_t P = expert_ffn_param_count(D, H), r = (size_t)(R > 0 ? R : 1);
    f->w = moe_alloc_floats(P);
    f->g = moe_alloc_floats(P);
    f->gr = moe_alloc_floats(P);
    f->x = moe_alloc_floats(r * D);
    f->y = moe_alloc_floats(r * D);
    f->yr = moe_alloc_floats(r * D);
    f->z = moe_alloc_floats(r * H);
    f->zr = moe_alloc_floats(r * H);
    f->dy = moe_alloc_floats(r * D);
    f->dx = moe_alloc_floats(r * D);
    f->dxr = moe_alloc_floats(r * D);
    f->dz = moe_alloc_floats(r * H);
    ck_assert_ptr_nonnull(f->dz);
    tu_fill(f->w, P, 1, 0.4f);
    tu_fill(f->x, r * D, 2, 1.0f);
    tu_fill(f->dy, r * D, 3, 1.0f);
    /* gradients accumulate onto an arbitrary non-zero start */
    tu_fill(f->g, P, 4, 0.1f);
    memcpy(f->gr, f->g, sizeof(float) * P);
    f->p = expert_ffn_view(f->w, D, H);
    f->dp = expert_ffn_view(f->g, D, H);
    f->dpr = expert_ffn_view(f->gr, D, H);
}

static void fix_free(struct ffn_fix *f)
{
    float **all[] = {&f->w, &f->g, &f->gr, &f->x, &f->y, &f->yr, &f->z,
                     &f->zr, &f->dy, &f->dx, &f->dxr, &f->dz};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        moe_free_floats(all[i]);
}

static const int rows_cases[] = {0, 1, 7, 300};

START_TEST(ffn_forward_matches_ref)
{
    const int R = rows_cases[_i];
    struct ffn_fix f;
    fix_init(&f, R);
    const size_t nr = (size_t)(R > 0 ? R : 1);
    for (size_t i = 0; i < nr * D; i++)
        f.y[i] = f.yr[i] = 7.0f;
    expert_ffn_forward(f.y, f.z, f.x, &f.p, R, D, H);
    expert_ffn_forward_ref(f.yr, f.zr, f.x, &f.p, R, D, H);
    if (R == 0) {
        ck_assert_float_eq(f.y[0], 7.0f); /* nothing written */
        ck_assert_float_eq(f.yr[0], 7.0f);
    } else {
        double ez = rel_to_max(f.z, f.zr, (size_t)R * H), ey = rel_to_max(f.y, f.yr, (size_t)R * D);
        ck_assert_msg(ez < 1e-5, "R=%d: z error %g", R, ez);
        ck_assert_msg(ey < 1e-5, "R=%d: y error %g", R, ey);
        /* ReLU really cuts: some hidden units are zero, some are not */
        size_t zeros = 0;
        for (size_t i = 0; i < (size_t)R * H; i++)
            zeros += f.z[i] == 0.0f;
        ck_assert(zeros > 0 && zeros < (size_t)R * H);
    }
    fix_free(&f);
}
END_TEST

START_TEST(ffn_backward_matches_ref)
{
    const int R = rows_cases[_i];
    struct ffn_fix f;
    fix_init(&f, R);
    const size_t P = expert_ffn_param_count(D, H), nr = (size_t)(R > 0 ? R : 1);
    expert_ffn_forward(f.y, f.z, f.x, &f.p, R, D, H);
    /* both backward passes see the same cache, hence the same ReLU mask */
    for (size_t i = 0; i < nr * D; i++)
        f.dx[i] = f.dxr[i] = NAN; /* dx is overwritten, never read */
    float *g0 = malloc(sizeof(float) * P);
    memcpy(g0, f.g, sizeof(float) * P);
    expert_ffn_backward(f.dx, &f.dp, f.dz, f.dy, f.x, f.z, &f.p, R, D, H);
    expert_ffn_backward_ref(f.dxr, &f.dpr, f.dy, f.x, f.z, &f.p, R, D, H);
    if (R == 0) {
        ck_assert_int_eq(memcmp(f.g, g0, sizeof(float) * P), 0);
        ck_assert_int_eq(memcmp(f.gr, g0, sizeof(float) * P), 0);
    } else {
        double edx = rel_to_max(f.dx, f.dxr, (size_t)R * D);
        ck_assert_msg(edx < 1e-5, "R=%d: dx error %g", R, edx);
        /* Compare the increments, not start + increment (which would hide
         * errors below the start value's rounding). */
        float *inc = malloc(sizeof(float) * P), *incr = malloc(sizeof(float) * P);
        for (size_t i = 0; i < P; i++) {
            inc[i] = f.g[i] - g0[i];
            incr[i] = f.gr[i] - g0[i];
        }
        struct {
            const char *name;
            size_t off, n;
        } parts[] = {{"w1", 0, (size_t)H * D},
                     {"b1", (size_t)H * D, H},
                     {"w2", (size_t)H * D + H, (size_t)D * H},
                     {"b2", (size_t)2 * H * D + H, D}};
        for (int k = 0; k < 4; k++) {
            double e = rel_to_max(inc + parts[k].off, incr + parts[k].off, parts[k].n);
            /* increments are differences of accumulated floats; the
             * rounding of the start values (|g0| <= 0.1) is far below 1e-5 */
            ck_assert_msg(e < 1e-5, "R=%d: d%s error %g", R, parts[k].name, e);
        }
        free(inc);
        free(incr);
    }
    free(g0);
    fix_free(&f);
}
END_TEST

START_TEST(ffn_bitwise_deterministic)
{
    const int R = 300;
    struct ffn_fix f, f2;
    fix_init(&f, R);
    fix_init(&f2, R);
    const size_t P = expert_ffn_param_count(D, H);
    expert_ffn_forward(f.y, f.z, f.x, &f.p, R, D, H);
    expert_ffn_forward(f2.y, f2.z, f2.x, &f2.p, R, D, H);
    ck_assert_int_eq(memcmp(f.y, f2.y, sizeof(float) * R * D), 0);
    ck_assert_int_eq(memcmp(f.z, f2.z, sizeof(float) * R * H), 0);
    expert_ffn_backward(f.dx, &f.dp, f.dz, f.dy, f.x, f.z, &f.p, R, D, H);
    expert_ffn_backward(f2.dx, &f2.dp, f2.dz, f2.dy, f2.x, f2.z, &f2.p, R, D, H);
    ck_assert_int_eq(memcmp(f.dx, f2.dx, sizeof(float) * R * D), 0);
    ck_assert_int_eq(memcmp(f.g, f2.g, sizeof(float) * P), 0);
    /* Running again in the same buffers gives the same bytes too. */
    float *y1 = malloc(sizeof(float) * R * D);
    memcpy(y1, f.y, sizeof(float) * R * D);
    expert_ffn_forward(f.y, f.z, f.x, &f.p, R, D, H);
    ck_assert_int_eq(memcmp(f.y, y1, sizeof(float) * R * D), 0);
    free(y1);
    fix_free(&f);
    fix_free(&f2);
}
END_TEST

/* The ReLU runs as moe_par tasks of 64 rows and the bias gradients as
 * tasks of 256 columns: 150 rows of 300 -> 520 -> 300 give the same bits
 * with 1 and with 3 threads. */
START_TEST(ffn_threads_bitwise)
{
    enum { TR = 150, TD = 300, TH = 520 };
    const size_t P = expert_ffn_param_count(TD, TH);
    float *w = malloc(sizeof(float) * P), *x = malloc(sizeof(float) * TR * TD),
          *dy = malloc(sizeof(float) * TR * TD);
    ck_assert(w && x && dy);
    tu_fill(w, P, 80, 0.1f);
    tu_fill(x, TR * TD, 81, 1.0f);
    tu_fill(dy, TR * TD, 82, 1.0f);
    struct expert_ffn_params p = expert_ffn_view(w, TD, TH);
    float *y[2], *z[2], *dz[2], *dx[2], *g[2];
    for (int k = 0; k < 2; k++) {
        y[k] = malloc(sizeof(float) * TR * TD);
        z[k] = malloc(sizeof(float) * TR * TH);
        dz[k] = malloc(sizeof(float) * TR * TH);
        dx[k] = malloc(sizeof(float) * TR * TD);
        g[k] = calloc(P, sizeof(float));
        ck_assert(y[k] && z[k] && dz[k] && dx[k] && g[k]);
        struct expert_ffn_params dp = expert_ffn_view(g[k], TD, TH);
        moe_par_set_threads(k ? 3 : 1);
        expert_ffn_forward(y[k], z[k], x, &p, TR, TD, TH);
        expert_ffn_backward(dx[k], &dp, dz[k], dy, x, z[k], &p, TR, TD, TH);
    }
    moe_par_set_threads(1);
    ck_assert_int_eq(memcmp(y[0], y[1], sizeof(float) * TR * TD), 0);
    ck_assert_int_eq(memcmp(z[0], z[1], sizeof(float) * TR * TH), 0);
    ck_assert_int_eq(memcmp(dx[0], dx[1], sizeof(float) * TR * TD), 0);
    ck_assert_int_eq(memcmp(g[0], g[1], sizeof(float) * P), 0);
    /* the ReLU cut some of the last row's units and kept others */
    int zeros = 0;
    for (int h = 0; h < TH; h++)
        zeros += z[0][(size_t)(TR - 1) * TH + h] == 0.0f;
    ck_assert(zeros > 0 && zeros < TH);
    for (int k = 0; k < 2; k++) {
        free(y[k]);
        free(z[k]);
        free(dz[k]);
        free(dx[k]);
        free(g[k]);
    }
    free(w);
    free(x);
    free(dy);
}
END_TEST

START_TEST(ffn_rows_are_independent)
{
    /* Row r of a batch equals the same row computed alone: an expert's
     * output cannot depend on which other rows share its batch. */
    const int R = 7;
    struct ffn_fix f;
    fix_init(&f, R);
    expert_ffn_forward(f.y, f.z, f.x, &f.p, R, D, H);
    for (int r = 0; r < R; r++) {
        float y1[D], z1[H];
        expert_ffn_forward(y1, z1, f.x + (size_t)r * D, &f.p, 1, D, H);
        double e = rel_to_max(y1, f.y + (size_t)r * D, D);
        ck_assert_msg(e < 1e-6, "row %d: %g", r, e);
    }
    fix_free(&f);
}
END_TEST

Suite *test_expert_ffn_suite(void)
{
    Suite *s = suite_create("expert_ffn");
    TCase *tl = tcase_create("layout");
    tcase_set_timeout(tl, 10);
    tcase_add_test(tl, ffn_view_layout);
    tcase_add_test(tl, ffn_forward_by_hand);
    suite_add_tcase(s, tl);
    TCase *tc = tcase_create("vs_ref");
    tcase_set_timeout(tc, 30);
    tcase_add_loop_test(tc, ffn_forward_matches_ref, 0, 4);
    tcase_add_loop_test(tc, ffn_backward_matches_ref, 0, 4);
    tcase_add_test(tc, ffn_bitwise_deterministic);
    tcase_add_test(tc, ffn_rows_are_independent);
    tcase_add_test(tc, ffn_threads_bitwise);
    suite_add_tcase(s, tc);
    return s;
}
