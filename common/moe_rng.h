/* Counter-based random numbers (Philox4x32-10) for every process.
 *
 * Every random number of training is a pure function of
 * (seed, purpose, step, row, col): nothing depends on which process or
 * thread draws it, or in which order (DESIGN §4). `row` is a global row
 * index (b * T + t over the global batch), or a tensor element row for
 * initialisation; `col` the column or expert index. No state, thread-safe. */
#ifndef MOE_RNG_H
#define MOE_RNG_H

#include <stddef.h>
#include <stdint.h>

/* What a draw is for; part of the key so streams never overlap. */
enum moe_rng_purpose {
    MOE_RNG_INIT = 1,       /* parameter initialisation; step = hash of the tensor name */
    MOE_RNG_GATE_NOISE = 2, /* noisy top-k gating noise; col = expert */
    MOE_RNG_SAMPLE = 3,     /* sampling from a trained model; step = position */
    MOE_RNG_GATE_NOISE_GROUP = 4, /* a hierarchical MoE's secondary gates; col = group * B + expert */
    MOE_RNG_DATA_ORDER = 5, /* the order of a translation epoch's batches; step = epoch */
    MOE_RNG_DROPOUT = 16,   /* dropout; purpose + site index (0..15) */
    MOE_RNG_TEST = 99,      /* tests only */
};

/* Philox4x32-10 itself: counter ctr, key key -> out. */
void moe_rng_philox(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* The raw Philox4x32-10 block for key (seed, purpose), counter (step, row, col, 0). */
void moe_rng_block(uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row, uint32_t col,
                   uint32_t out[4]);

/* Uniform in [0, 1), 24 random bits. */
float moe_rng_uniform(uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row, uint32_t col);

/* Standard normal by Box-Muller on the first two 32-bit words of the block,
 * in float with moe_vmath's log and cos. */
float moe_rng_normal(uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row, uint32_t col);

/* out[j] = moe_rng_normal(seed, purpose, step, row, col0 + j) for j < n,
 * bit for bit, many columns at a time. */
void moe_rng_normal_row(float *out, uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row,
                        uint32_t col0, size_t n);

/* out[j] = moe_rng_uniform(seed, purpose, step, row, col0 + j) for j < n,
 * bit for bit, many columns at a time. */
void moe_rng_uniform_row(float *out, uint64_t seed, uint32_t purpose, uint64_t step, uint32_t row,
                         uint32_t col0, size_t n);

/* FNV-1a hash of a string; used to key initialisation by tensor name. */
uint32_t moe_rng_hash(const char *s);

/* Fills w[0..n) with uniform values in [-bound, bound) keyed by
 * (seed, MOE_RNG_INIT, hash(name), element index): the same tensor name and
 * seed give the same values in every process. */
void moe_rng_fill_uniform(float *w, size_t n, const char *name, uint64_t seed, float bound);

#endif
