/* Philox4x32-10 (Salmon et al., SC'11) and derived distributions. */
#include "moe_rng.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "moe_vmath.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void moe_rng_philox(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(PHILOX_M0, c0, &hi0, &lo0);
        mulhilo(PHILOX_M1, c2, &hi1, &lo1);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* Key: the seed, with the purpose mixed into its high word. */
static inline void rng_key(uint32_t key[2], uint64_t seed, uint32_t purpose)
{
    key[0] = (uint32_t)seed;
    key[1] = (uint32_t)(seed >> 32) ^ (purpose * 0x85EBCA6Bu + 0x27D4EB2Fu);
}

void moe_rng_block(uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row, uint32_t col,
                   uint32_t out[4])
{
    /* Counter: step (low 32 bits) | row | col | step (high 32 bits). */
    uint32_t key[2];
    rng_key(key, seed, purpose);
    const uint32_t ctr[4] = {(uint32_t)step, row, col, (uint32_t)(step >> 32)};
    moe_rng_philox(ctr, key, out);
}

/* A uniform in [0, 1) from the top 24 bits of a word. */
static inline float uniform_of(uint32_t w) { return (float)(w >> 8) * (1.0f / 16777216.0f); }

float moe_rng_uniform(uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row, uint32_t col)
{
    uint32_t b[4];
    moe_rng_block(seed, purpose, step, row, col, b);
    return uniform_of(b[0]);
}

/* Box-Muller on two words of a block, in float (moe_vmath): u1 in (0, 1] so
 * the log is finite, u2 in [0, 1); both are exact 24-bit fractions. The row
 * function below and the scalar draw share this, so they give the same bits. */
static inline float box_muller(uint32_t w0, uint32_t w1)
{
    const float u1 = (float)((w0 >> 8) + 1u) * (1.0f / 16777216.0f);
    const float u2 = (float)(w1 >> 8) * (1.0f / 16777216.0f);
    return sqrtf(-2.0f * moe_vlogf(u1)) * moe_vcos_turns(u2);
}

float moe_rng_normal(uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row, uint32_t col)
{
    uint32_t b[4];
    moe_rng_block(seed, purpose, step, row, col, b);
    return box_muller(b[0], b[1]);
}

#if defined(__AVX2__)
#include <immintrin.h>

/* hi and lo words of a * m for 8 lanes: mul_epu32 multiplies the even
 * lanes, so the odd ones are shifted down and multiplied separately. */
static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
{
    const __m256i pe = _mm256_mul_epu32(a, m);
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

/* Philox4x32-10 for the 8 counters (step, row, col0 + l, step >> 32);
 * the first two output words of each into w0, w1. */
static void philox8(uint32_t w0[8], uint32_t w1[8], const uint32_t key[2], uint64_t step,
                    uint32_t row, uint32_t col0)
{
    __m256i c0 = _mm256_set1_epi32((int)(uint32_t)step), c1 = _mm256_set1_epi32((int)row);
    __m256i c2 = _mm256_add_epi32(_mm256_set1_epi32((int)col0),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c3 = _mm256_set1_epi32((int)(uint32_t)(step >> 32));
    const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        __m256i hi0, lo0, hi1, lo1;
        mulhilo8(c0, m0, &hi0, &lo0);
        mulhilo8(c2, m1, &hi1, &lo1);
        c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32((int)k0));
        c1 = lo1;
        c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32((int)k1));
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    _mm256_storeu_si256((__m256i *)w0, c0);
    _mm256_storeu_si256((__m256i *)w1, c1);
}
#else
static void philox8(uint32_t w0[8], uint32_t w1[8], const uint32_t key[2], uint64_t step,
                    uint32_t row, uint32_t col0)
{
    for (uint32_t l = 0; l < 8; l++) {
        const uint32_t ctr[4] = {(uint32_t)step, row, col0 + l, (uint32_t)(step >> 32)};
        uint32_t b[4];
        moe_rng_philox(ctr, key, b);
        w0[l] = b[0];
        w1[l] = b[1];
    }
}
#endif

/* n draws of one row, eight counters at a time: normals (Box-Muller on
 * the first two words) or uniforms (the first word), each the scalar
 * draw's bits. */
static inline void rng_row(float *out, uint64_t seed, uint32_t purpose, uint64_t step,
                           uint32_t row, uint32_t col0, size_t n, bool normal)
{
    uint32_t key[2];
    rng_key(key, seed, purpose);
    for (size_t j0 = 0; j0 < n; j0 += 8) {
        uint32_t w0[8], w1[8];
        philox8(w0, w1, key, step, row, col0 + (uint32_t)j0);
        float z[8];
        for (int l = 0; l < 8; l++)
            z[l] = normal ? box_muller(w0[l], w1[l]) : uniform_of(w0[l]);
        const size_t m = n - j0 < 8 ? n - j0 : 8;
        memcpy(out + j0, z, m * sizeof(float));
    }
}

void moe_rng_normal_row(float *out, uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row,
                        uint32_t col0, size_t n)
{
    rng_row(out, seed, purpose, step, row, col0, n, true);
}

void moe_rng_uniform_row(float *out, uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row,
                         uint32_t col0, size_t n)
{
    rng_row(out, seed, purpose, step, row, col0, n, false);
}

uint32_t moe_rng_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

void moe_rng_fill_uniform(float *w, size_t n, const char *name, uint64_t seed, float bound)
{
    uint32_t h = moe_rng_hash(name);
    for (size_t i = 0; i < n; i++) {
        float u = moe_rng_uniform(seed, MOE_RNG_INIT, h, (uint32_t)i, (uint32_t)(i >> 32));
        w[i] = (2.0f * u - 1.0f) * bound;
    }
}
