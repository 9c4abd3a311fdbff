/* Unit tests for common/moe_rng: Philox4x32-10 against the published
 * known-answer vectors of Random123 (tests/kat_vectors, the three
 * "philox4x32 10" lines), the layout of the (seed, purpose, step, row, col)
 * key and counter, the ranges and moments of the derived distributions, and
 * name-keyed initialisation (DESIGN §4: every draw is a pure function of its
 * key, whichever process makes it). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moe_rng.h"

Suite *test_rng_suite(void);

/* ------------------------------------------------------------ Philox KAT */

struct kat {
    uint32_t ctr[4], key[2], out[4];
};

/* Random123 tests/kat_vectors: name, rounds, CTR[4], KEY[2], expected[4]. */
static const struct kat philox_kat[] = {
    {{0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u},
     {0x00000000u, 0x00000000u},
     {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
    {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
     {0xffffffffu, 0xffffffffu},
     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
    {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
     {0xa4093822u, 0x299f31d0u},
     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
};

START_TEST(rng_philox_known_answers)
{
    for (size_t v = 0; v < sizeof philox_kat / sizeof philox_kat[0]; v++) {
        uint32_t out[4] = {0};
        moe_rng_philox(philox_kat[v].ctr, philox_kat[v].key, out);
        for (int i = 0; i < 4; i++)
            ck_assert_msg(out[i] == philox_kat[v].out[i], "vector %zu word %d: %08x, expected %08x",
                          v, i, out[i], philox_kat[v].out[i]);
    }
}
END_TEST

START_TEST(rng_philox_pure_function)
{
    /* Same inputs, same outputs; the inputs are not modified. */
    const uint32_t ctr[4] = {1, 2, 3, 4}, key[2] = {5, 6};
    uint32_t a[4], b[4];
    moe_rng_philox(ctr, key, a);
    moe_rng_philox(ctr, key, b);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    ck_assert_uint_eq(ctr[0], 1);
    ck_assert_uint_eq(ctr[3], 4);
    ck_assert_uint_eq(key[1], 6);
    /* Flipping one bit of the counter or of the key changes every word
     * (a 10-round Philox diffuses fully; 32 matching bits would be a 2^-32
     * accident). */
    for (int w = 0; w < 6; w++) {
        uint32_t c2[4] = {1, 2, 3, 4}, k2[2] = {5, 6}, o[4];
        if (w < 4)
            c2[w] ^= 1u;
        else
            k2[w - 4] ^= 0x80000000u;
        moe_rng_philox(c2, k2, o);
        for (int i = 0; i < 4; i++)
            ck_assert_msg(o[i] != a[i], "input word %d: output word %d unchanged", w, i);
    }
}
END_TEST

/* --------------------------------------------------- key and counter use */

START_TEST(rng_block_layout)
{
    /* The documented layout: key (seed lo, seed hi ^ mix(purpose)), counter
     * (step lo, row, col, step hi). */
    const uint64_t seed = 0x0123456789abcdefull, step = 0x0000000500000007ull;
    const uint32_t purpose = MOE_RNG_GATE_NOISE, row = 11, col = 13;
    uint32_t got[4], want[4];
    moe_rng_block(seed, purpose, step, row, col, got);
    const uint32_t key[2] = {(uint32_t)seed,
                             (uint32_t)(seed >> 32) ^ (purpose * 0x85EBCA6Bu + 0x27D4EB2Fu)};
    const uint32_t ctr[4] = {(uint32_t)step, row, col, (uint32_t)(step >> 32)};
    moe_rng_philox(ctr, key, want);
    ck_assert_int_eq(memcmp(got, want, sizeof got), 0);
}
END_TEST

START_TEST(rng_each_key_part_matters)
{
    const uint64_t seed = 42, step = 7;
    const uint32_t purpose = MOE_RNG_DROPOUT, row = 3, col = 5;
    uint32_t base[4];
    moe_rng_block(seed, purpose, step, row, col, base);
    uint32_t again[4];
    moe_rng_block(seed, purpose, step, row, col, again);
    ck_assert_int_eq(memcmp(base, again, sizeof base), 0);

    uint32_t o[9][4];
    moe_rng_block(seed + 1, purpose, step, row, col, o[0]);
    moe_rng_block(seed | (1ull << 40), purpose, step, row, col, o[1]); /* high seed word */
    moe_rng_block(seed, purpose + 1, step, row, col, o[2]);
    moe_rng_block(seed, MOE_RNG_INIT, step, row, col, o[3]);
    moe_rng_block(seed, purpose, step + 1, row, col, o[4]);
    moe_rng_block(seed, purpose, step | (1ull << 32), row, col, o[5]); /* high step word */
    moe_rng_block(seed, purpose, step, row + 1, col, o[6]);
    moe_rng_block(seed, purpose, step, row, col + 1, o[7]);
    /* row and col are not interchangeable */
    moe_rng_block(seed, purpose, step, col, row, o[8]);
    for (int k = 0; k < 9; k++)
        ck_assert_msg(memcmp(o[k], base, sizeof base) != 0, "variant %d gave the same block", k);
    for (int k = 0; k < 9; k++)
        for (int l = k + 1; l < 9; l++)
            ck_assert_msg(memcmp(o[k], o[l], sizeof base) != 0, "variants %d and %d collide", k, l);

    /* The scalar draws follow the block. */
    ck_assert(moe_rng_uniform(seed, purpose, step, row, col) !=
              moe_rng_uniform(seed, purpose, step, row, col + 1));
    ck_assert(moe_rng_normal(seed, purpose, step, row, col) !=
              moe_rng_normal(seed, purpose + 1, step, row, col));
}
END_TEST

/* ---------------------------------------------------------- distributions */

START_TEST(rng_uniform_is_24_bit_fraction)
{
    for (uint32_t r = 0; r < 1000; r++) {
        uint32_t b[4];
        moe_rng_block(9, MOE_RNG_TEST, 1, r, 2, b);
        float u = moe_rng_uniform(9, MOE_RNG_TEST, 1, r, 2);
        ck_assert_float_eq(u, (float)(b[0] >> 8) / 16777216.0f);
    }
}
END_TEST

START_TEST(rng_uniform_range_and_moments)
{
    const int n = 100000;
    double s = 0, s2 = 0;
    float lo = 1, hi = 0;
    for (int i = 0; i < n; i++) {
        float u = moe_rng_uniform(1234, MOE_RNG_TEST, 3, (uint32_t)i, 0);
        ck_assert(u >= 0.0f && u < 1.0f);
        lo = fminf(lo, u);
        hi = fmaxf(hi, u);
        s += u;
        s2 += (double)u * u;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    /* mean 1/2, variance 1/12; 5 standard errors: 0.0046 and 0.0013 */
    ck_assert_msg(fabs(mean - 0.5) < 5e-3, "mean %g", mean);
    ck_assert_msg(fabs(var - 1.0 / 12) < 1.5e-3, "variance %g", var);
    ck_assert_msg(lo < 1e-3 && hi > 0.999, "range [%g, %g]", lo, hi);
}
END_TEST

START_TEST(rng_normal_moments)
{
    const int n = 100000;
    double s = 0, s2 = 0, s3 = 0, s4 = 0;
    int tail = 0;
    for (int i = 0; i < n; i++) {
        double z = moe_rng_normal(77, MOE_RNG_GATE_NOISE, 5, (uint32_t)(i / 16), (uint32_t)(i % 16));
        ck_assert(isfinite(z));
        s += z;
        s2 += z * z;
        s3 += z * z * z;
        s4 += z * z * z * z;
        tail += fabs(z) > 1.959963984540054;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    /* Standard errors: mean 0.0032, variance 0.0045, third moment 0.0077,
     * fourth 0.031, tail fraction 0.00069; bounds are about 5 of them. */
    ck_assert_msg(fabs(mean) < 0.016, "mean %g", mean);
    ck_assert_msg(fabs(var - 1.0) < 0.023, "variance %g", var);
    ck_assert_msg(fabs(s3 / n) < 0.04, "third moment %g", s3 / n);
    ck_assert_msg(fabs(s4 / n - 3.0) < 0.16, "fourth moment %g", s4 / n);
    ck_assert_msg(fabs((double)tail / n - 0.05) < 0.0035, "P(|z| > 1.96) = %g", (double)tail / n);
}
END_TEST

/* The row function gives the scalar draw's bits for every column, at row
 * lengths that end mid-block and counters with high step words, and the
 * float Box-Muller stays within 5e-7 (1 + |z|) of the same in double. */
START_TEST(rng_normal_row_matches_draws)
{
    enum { MAXN = 1037 };
    float z[MAXN + 1];
    const size_t lens[] = {1, 7, 8, 9, 64, 1000, MAXN};
    double worst = 0;
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++)
        for (uint32_t row = 0; row < 40; row++) {
            const size_t n = lens[li];
            const uint64_t step = 5 + ((uint64_t)row << 33);
            const uint32_t col0 = 3 * row + (uint32_t)li;
            z[n] = 12345.0f; /* not written past n */
            moe_rng_normal_row(z, 77, MOE_RNG_GATE_NOISE, step, row * 1000, col0, n);
            ck_assert(z[n] == 12345.0f);
            for (size_t j = 0; j < n; j++) {
                const uint32_t col = col0 + (uint32_t)j;
                const float one = moe_rng_normal(77, MOE_RNG_GATE_NOISE, step, row * 1000, col);
                ck_assert_msg(memcmp(&z[j], &one, sizeof one) == 0,
                              "row %u col %u: %a vs %a", row, col, z[j], one);
                uint32_t b[4];
                moe_rng_block(77, MOE_RNG_GATE_NOISE, step, row * 1000, col, b);
                const double u1 = ((double)(b[0] >> 8) + 1.0) / 16777216.0;
                const double u2 = (double)(b[1] >> 8) / 16777216.0;
                const double ref = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
                const double e = fabs(z[j] - ref) / (1.0 + fabs(ref));
                worst = e > worst ? e : worst;
            }
        }
    ck_assert_msg(worst <= 5e-7, "normal: %.3g from double Box-Muller", worst);
}
END_TEST

/* The uniform row function gives the scalar draw's bits for every column,
 * at lengths that end mid-block and with high step words. */
START_TEST(rng_uniform_row_matches_draws)
{
    enum { MAXN = 1037 };
    float u[MAXN + 1];
    const size_t lens[] = {1, 7, 8, 9, 64, 128, MAXN};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++)
        for (uint32_t row = 0; row < 40; row++) {
            const size_t n = lens[li];
            const uint64_t step = 5 + ((uint64_t)row << 33);
            const uint32_t col0 = 3 * row + (uint32_t)li;
            u[n] = 12345.0f;
            moe_rng_uniform_row(u, 78, MOE_RNG_DROPOUT + 2, step, row * 1000, col0, n);
            ck_assert(u[n] == 12345.0f);
            for (size_t j = 0; j < n; j++) {
                const float one = moe_rng_uniform(78, MOE_RNG_DROPOUT + 2, step, row * 1000,
                                                  col0 + (uint32_t)j);
                ck_assert_msg(memcmp(&u[j], &one, sizeof one) == 0, "row %u col %zu", row, j);
            }
        }
}
END_TEST

/* ------------------------------------------------------- initialisation */

START_TEST(rng_hash_fnv1a)
{
    /* Published FNV-1a 32-bit test values. */
    ck_assert_uint_eq(moe_rng_hash(""), 0x811c9dc5u);
    ck_assert_uint_eq(moe_rng_hash("a"), 0xe40c292cu);
    ck_assert_uint_eq(moe_rng_hash("foobar"), 0xbf9cf968u);
}
END_TEST

START_TEST(rng_fill_uniform_by_name)
{
    enum { N = 4096 };
    static float a[N], b[N], c[N], d[N], e[N];
    const float bound = 0.125f;
    moe_rng_fill_uniform(a, N, "moe.experts.3.w1.weight", 5, bound);
    moe_rng_fill_uniform(b, N, "moe.experts.3.w1.weight", 5, bound);
    moe_rng_fill_uniform(c, N, "moe.experts.4.w1.weight", 5, bound);
    moe_rng_fill_uniform(d, N, "moe.experts.3.w1.weight", 6, bound);
    ck_assert_int_eq(memcmp(a, b, sizeof a), 0);
    int same_c = 0, same_d = 0;
    const uint32_t h = moe_rng_hash("moe.experts.3.w1.weight");
    for (int i = 0; i < N; i++) {
        ck_assert_msg(a[i] >= -bound && a[i] < bound, "a[%d] = %g", i, a[i]);
        /* element i is draw (seed, INIT, hash(name), i, 0), mapped to [-b, b) */
        float want = (2.0f * moe_rng_uniform(5, MOE_RNG_INIT, h, (uint32_t)i, 0) - 1.0f) * bound;
        ck_assert_float_eq(a[i], want);
        same_c += a[i] == c[i];
        same_d += a[i] == d[i];
    }
    ck_assert_int_lt(same_c, 4);
    ck_assert_int_lt(same_d, 4);
    /* The value of an element does not depend on the length filled. */
    moe_rng_fill_uniform(e, 100, "moe.experts.3.w1.weight", 5, bound);
    ck_assert_int_eq(memcmp(a, e, 100 * sizeof(float)), 0);
    /* bound scales linearly (exactly: a power of two) */
    moe_rng_fill_uniform(e, N, "moe.experts.3.w1.weight", 5, 2 * bound);
    for (int i = 0; i < N; i++)
        ck_assert_float_eq(e[i], 2 * a[i]);
}
END_TEST

Suite *test_rng_suite(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("philox");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, rng_philox_known_answers);
    tcase_add_test(tc, rng_philox_pure_function);
    tcase_add_test(tc, rng_block_layout);
    tcase_add_test(tc, rng_each_key_part_matters);
    suite_add_tcase(s, tc);
    TCase *td = tcase_create("distributions");
    tcase_set_timeout(td, 30);
    tcase_add_test(td, rng_uniform_is_24_bit_fraction);
    tcase_add_test(td, rng_uniform_range_and_moments);
    tcase_add_test(td, rng_normal_moments);
    tcase_add_test(td, rng_normal_row_matches_draws);
    tcase_add_test(td, rng_uniform_row_matches_draws);
    suite_add_tcase(s, td);
    TCase *ti = tcase_create("init");
    tcase_set_timeout(ti, 10);
    tcase_add_test(ti, rng_hash_fnv1a);
    tcase_add_test(ti, rng_fill_uniform_by_name);
    suite_add_tcase(s, ti);
    return s;
}
