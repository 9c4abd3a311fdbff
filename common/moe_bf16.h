/* bfloat16 <-> float32 for tensors on the wire (--wire-dtype bf16, DESIGN
 * §5), in every networked process. bf16 keeps float32's sign, exponent and
 * top 7 mantissa bits: f32 -> bf16 rounds to nearest, ties to even, and
 * keeps a NaN a (quiet) NaN; bf16 -> f32 is exact.
 *
 * The moe_bf16_* kernels are written so that the compiler vectorises them
 * (branch-free, no dependence between elements; 16 or 32 elements per
 * instruction with AVX-512): a message converts at memory speed, so bf16
 * costs less than the float32 bytes it saves on the wire. The *_ref
 * functions are the plain per-element definitions they are tested against,
 * bit for bit. No state; any thread. */
#ifndef MOE_BF16_H
#define MOE_BF16_H

#include <stddef.h>
#include <stdint.h>

/* The bf16 of the float32 with bits x. NaN first: rounding a NaN whose
 * payload sits only in the low 16 bits would carry it into infinity (or,
 * for 0x7fffffff, into the sign bit), so its top bits are kept and it is
 * quieted. Otherwise add just under half an ulp of bf16, plus one when the
 * kept part is odd, and truncate. */
static inline uint16_t moe_bf16_round(uint32_t x)
{
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x0040u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* n floats -> n bf16 in host byte order at dst (any alignment: a frame's
 * bytes); dst and src must not overlap. */
void moe_bf16_from_f32(void *dst, const float *src, size_t n);
/* n bf16 in host byte order at src (any alignment) -> n floats. */
void moe_bf16_to_f32(float *dst, const void *src, size_t n);

/* The references: one element at a time through moe_bf16_round. */
void moe_bf16_from_f32_ref(uint16_t *dst, const float *src, size_t n);
void moe_bf16_to_f32_ref(float *dst, const uint16_t *src, size_t n);

#endif
