/* 64-bit checksum (see moe_checksum.h). */
#include "moe_checksum.h"

#include <string.h>

static inline uint64_t mix(uint64_t h, uint64_t w)
{
    h ^= w * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 31)) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

uint64_t moe_checksum64(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = mix(h, w);
    }
    uint64_t tail = 0;
    for (size_t k = 0; i + k < n; k++)
        tail |= (uint64_t)p[i + k] << (8 * k);
    /* the length goes in too, so that trailing zero bytes count */
    return mix(mix(h, tail), (uint64_t)n);
}

uint64_t moe_checksum_tensor(const char *name, const void *data, size_t nbytes)
{
    uint64_t h = moe_checksum64(MOE_CHECKSUM_INIT, name, strlen(name) + 1);
    return moe_checksum64(h, data, nbytes);
}
