/* Unit tests for common/moe_bf16: the vectorised conversions against the
 * per-element references, bit for bit. float32 -> bf16 on every bf16 value
 * with the low halves that decide rounding (0, 1, just under, at and just
 * over half an ulp, all ones: ties to even, carries into the exponent, to
 * infinity, NaN payloads in either half) and on a stride through all 2^32
 * bit patterns; bf16 -> float32 on all 65536 patterns; every length from 0
 * to 200 at every byte offset of the bf16 side, so that vector bodies,
 * remainders and unaligned frames all run. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moe_bf16.h"

Suite *test_bf16_suite(void);

static float f_of(uint32_t x)
{
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

/* Compares moe_bf16_from_f32 with the reference on n floats, writing the
 * bf16 at byte offset `off` of a buffer. */
static void check_from(const float *src, size_t n, size_t off)
{
    uint16_t *want = malloc(sizeof(uint16_t) * (n ? n : 1));
    uint8_t *got = malloc(2 * n + 8);
    ck_assert(want && got);
    moe_bf16_from_f32_ref(want, src, n);
    memset(got, 0xa5, 2 * n + 8);
    moe_bf16_from_f32(got + off, src, n);
    for (size_t i = memcmp(got + off, want, 2 * n) ? 0 : n; i < n; i++) {
        uint16_t h;
        memcpy(&h, got + off + 2 * i, sizeof h);
        uint32_t x;
        memcpy(&x, &src[i], sizeof x);
        ck_assert_msg(h == want[i], "f32 %08x: bf16 %04x, reference %04x (n %zu, offset %zu)", x,
                      h, want[i], n, off);
    }
    for (size_t i = 0; i < off; i++)
        ck_assert_uint_eq(got[i], 0xa5);
    for (size_t i = off + 2 * n; i < 2 * n + 8; i++)
        ck_assert_uint_eq(got[i], 0xa5); /* nothing written past the end */
    free(want);
    free(got);
}

START_TEST(bf16_from_f32_rounding_cases)
{
    static const uint16_t lows[] = {0x0000, 0x0001, 0x7ffe, 0x7fff, 0x8000, 0x8001, 0xc000,
                                    0xffff};
    enum { NL = sizeof lows / sizeof lows[0] };
    const size_t n = 65536 * NL;
    float *src = malloc(sizeof(float) * n);
    ck_assert_ptr_nonnull(src);
    for (uint32_t hi = 0; hi < 65536; hi++)
        for (int l = 0; l < NL; l++)
            src[hi * NL + (uint32_t)l] = f_of(hi << 16 | lows[l]);
    check_from(src, n, 0);
    check_from(src, n, 1);
    /* a few values by hand: ties to even, up into infinity, NaN quieted */
    uint16_t h[5];
    const float v[5] = {f_of(0x3f808000u), f_of(0x3f818000u), f_of(0x7f7fffffu),
                        f_of(0x7f800001u), f_of(0xffc00001u)};
    moe_bf16_from_f32(h, v, 5);
    ck_assert_uint_eq(h[0], 0x3f80);
    ck_assert_uint_eq(h[1], 0x3f82);
    ck_assert_uint_eq(h[2], 0x7f80);
    ck_assert_uint_eq(h[3], 0x7fc0);
    ck_assert_uint_eq(h[4], 0xffc0);
    free(src);
}
END_TEST

START_TEST(bf16_from_f32_stride_through_all)
{
    /* 2^32 / 4099 ~ 1.05 million patterns, every exponent and sign */
    const uint64_t step = 4099;
    const size_t n = (size_t)((1ull << 32) / step) + 1;
    float *src = malloc(sizeof(float) * n);
    ck_assert_ptr_nonnull(src);
    for (size_t i = 0; i < n; i++)
        src[i] = f_of((uint32_t)(i * step));
    check_from(src, n, 0);
    free(src);
}
END_TEST

START_TEST(bf16_to_f32_all_patterns)
{
    uint16_t *src = malloc(sizeof(uint16_t) * 65536);
    float *got = malloc(sizeof(float) * 65536), *want = malloc(sizeof(float) * 65536);
    ck_assert(src && got && want);
    for (uint32_t i = 0; i < 65536; i++)
        src[i] = (uint16_t)i;
    moe_bf16_to_f32(got, src, 65536);
    moe_bf16_to_f32_ref(want, src, 65536);
    ck_assert_int_eq(memcmp(got, want, sizeof(float) * 65536), 0);
    /* exact: the bf16 is the top half of the float */
    for (uint32_t i = 0; i < 65536; i++) {
        uint32_t x;
        memcpy(&x, &got[i], sizeof x);
        ck_assert_uint_eq(x, i << 16);
    }
    free(src);
    free(got);
    free(want);
}
END_TEST

START_TEST(bf16_lengths_and_offsets)
{
    enum { NMAX = 200 };
    float src[NMAX], back[NMAX + 1], want[NMAX];
    uint16_t ref[NMAX];
    uint8_t buf[2 * NMAX + 8];
    for (int i = 0; i < NMAX; i++)
        src[i] = f_of(0x3e000000u + (uint32_t)i * 0x12345u) * (i % 3 ? 1.0f : -1.0f);
    for (size_t n = 0; n <= NMAX; n++) {
        for (size_t off = 0; off < 4; off++) {
            check_from(src, n, off);
            /* and back, from the unaligned bytes */
            moe_bf16_from_f32_ref(ref, src, n);
            memcpy(buf + off, ref, 2 * n);
            back[n] = 12345.0f;
            moe_bf16_to_f32(back, buf + off, n);
            moe_bf16_to_f32_ref(want, ref, n);
            ck_assert_int_eq(memcmp(back, want, sizeof(float) * n), 0);
            ck_assert(back[n] == 12345.0f);
        }
    }
}
END_TEST

Suite *test_bf16_suite(void)
{
    Suite *s = suite_create("bf16");
    TCase *tc = tcase_create("bf16");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, bf16_from_f32_rounding_cases);
    tcase_add_test(tc, bf16_from_f32_stride_through_all);
    tcase_add_test(tc, bf16_to_f32_all_patterns);
    tcase_add_test(tc, bf16_lengths_and_offsets);
    suite_add_tcase(s, tc);
    return s;
}
