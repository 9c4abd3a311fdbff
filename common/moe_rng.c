/* Philox4x32-10 (Salmon et al., SC'11) and derived distributions. */
#include "moe_rng.h"

#include <math.h>

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

void moe_rng_block(uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row, uint32_t col,
                   uint32_t out[4])
{
    /* Key: the seed, with the purpose mixed into its high word. Counter:
     * step (low 32 bits) | row | col | step (high 32 bits). */
    const uint32_t key[2] = {(uint32_t)seed,
                             (uint32_t)(seed >> 32) ^ (purpose * 0x85EBCA6Bu + 0x27D4EB2Fu)};
    const uint32_t ctr[4] = {(uint32_t)step, row, col, (uint32_t)(step >> 32)};
    moe_rng_philox(ctr, key, out);
}

float moe_rng_uniform(uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row, uint32_t col)
{
    uint32_t b[4];
    moe_rng_block(seed, purpose, step, row, col, b);
    return (float)(b[0] >> 8) * (1.0f / 16777216.0f);
}

float moe_rng_normal(uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row, uint32_t col)
{
    uint32_t b[4];
    moe_rng_block(seed, purpose, step, row, col, b);
    /* u1 in (0, 1] so the log is finite; computed in double for accuracy,
     * rounded once to float. */
    double u1 = ((double)(b[0] >> 8) + 1.0) * (1.0 / 16777216.0);
    double u2 = (double)(b[1] >> 8) * (1.0 / 16777216.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
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
