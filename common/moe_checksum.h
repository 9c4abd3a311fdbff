/* A 64-bit checksum of bytes, to detect corrupted files (a flipped byte in
 * a checkpoint or shard). Not cryptographic. Pure function, thread-safe. */
#ifndef MOE_CHECKSUM_H
#define MOE_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

/* Hash of n bytes continuing from `h` (start with MOE_CHECKSUM_INIT).
 * Processes 8-byte words (little-endian) with a multiply-xorshift mix, so
 * every bit of the input affects the result. */
#define MOE_CHECKSUM_INIT 0x9E3779B97F4A7C15ull
uint64_t moe_checksum64(uint64_t h, const void *data, size_t n);

/* Hash of one named tensor: its name (with the terminating NUL), then its
 * bytes. A file's checksum is the sum of these over its tensors, so it does
 * not depend on their order. */
uint64_t moe_checksum_tensor(const char *name, const void *data, size_t nbytes);

#endif
