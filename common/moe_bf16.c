/* bf16 conversions (see moe_bf16.h). */
#include "moe_bf16.h"

#include <string.h>

/* Both kernels load and store through memcpy (frames need not be aligned;
 * compilers turn it into plain vector loads and stores) and select the NaN
 * case with a compare, not a branch, so that the loops vectorise: with
 * -O3 -march=native, GCC 12 uses 64-byte vectors for both
 * (-fopt-info-vec). */
void moe_bf16_from_f32(void *dst, const float *src, size_t n)
{
    uint8_t *restrict d = dst;
    const float *restrict s = src;
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, s + i, sizeof x);
        const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
        const uint32_t quiet = (x >> 16) | 0x0040u;
        const uint16_t h = (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
        memcpy(d + 2 * i, &h, sizeof h);
    }
}

void moe_bf16_to_f32(float *dst, const void *src, size_t n)
{
    float *restrict d = dst;
    const uint8_t *restrict s = src;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, sizeof h);
        const uint32_t x = (uint32_t)h << 16;
        memcpy(d + i, &x, sizeof x);
    }
}

void moe_bf16_from_f32_ref(uint16_t *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, &src[i], sizeof x);
        dst[i] = moe_bf16_round(x);
    }
}

void moe_bf16_to_f32_ref(float *dst, const uint16_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const uint32_t x = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &x, sizeof x);
    }
}
