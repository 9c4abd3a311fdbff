/* Embedding lookup and its gradient (see embed.h). */
#include "embed.h"

#include <string.h>

void embed_forward(float *out, const int32_t *tok, const float *W, int N, int D)
{
    for (int r = 0; r < N; r++)
        memcpy(out + (size_t)r * D, W + (size_t)tok[r] * D, sizeof(float) * (size_t)D);
}

void embed_backward(float *dW, const float *dout, const int32_t *tok, int N, int D)
{
    for (int r = 0; r < N; r++) {
        float *dst = dW + (size_t)tok[r] * D;
        const float *src = dout + (size_t)r * D;
        for (int d = 0; d < D; d++)
            dst[d] += src[d];
    }
}
