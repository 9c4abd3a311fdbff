/* The fuzz targets' input layout for a message's frames (fuzz_wire.c,
 * fuzz_dispatch.c): byte 0 gives the frame count (1 + (b & 3) % 3; the
 * targets may use its other bits), then the little-endian 4-byte lengths of
 * all frames but the last, clamped to what is left; the last frame takes
 * the rest. Each frame is copied into its own exact-size heap block, so
 * that ASan sees any read past a frame. */
#ifndef FUZZ_FRAMES_H
#define FUZZ_FRAMES_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Fills frame[] (free with fuzz_frames_free) and len[]; returns the count. */
static inline int fuzz_frames_split(const uint8_t *data, size_t size, uint8_t *frame[3],
                                    size_t len[3])
{
    const int nframes = 1 + (data[0] & 3) % 3;
    size_t pos = 1;
    for (int i = 0; i < 3; i++) {
        len[i] = 0;
        frame[i] = NULL;
    }
    for (int i = 0; i + 1 < nframes; i++) {
        uint32_t n = 0;
        for (int k = 0; k < 4 && pos < size; k++, pos++)
            n |= (uint32_t)data[pos] << (8 * k);
        len[i] = n;
    }
    for (int i = 0; i < nframes; i++) {
        const size_t left = size - pos;
        if (i + 1 == nframes || len[i] > left)
            len[i] = left;
        frame[i] = malloc(len[i] ? len[i] : 1);
        if (!frame[i])
            abort();
        memcpy(frame[i], data + pos, len[i]);
        pos += len[i];
    }
    return nframes;
}

static inline void fuzz_frames_free(uint8_t *frame[3])
{
    for (int i = 0; i < 3; i++)
        free(frame[i]);
}

#endif
