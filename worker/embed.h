/* Word embedding layer (worker process). Table W is (V,D), PyTorch's
 * nn.Embedding layout. Rows of the batch are b-major (r = b*T + t). */
#ifndef EMBED_H
#define EMBED_H

#include <stdint.h>

#include "layer.h"

/* out (N,D) = W[tok[r]] for each row r. Token ids must be < V (checked by
 * the data loader). */
void embed_forward(float *out, const int32_t *tok, const float *W, int N, int D);
/* dW[tok[r]] += dout[r], rows in order. */
void embed_backward(float *dW, const float *dout, const int32_t *tok, int N, int D);

/* The embedding as a layer (layer.h): reads the pass's tokens, writes (N,D);
 * parameter NAME.weight (V,D), initialised uniform in [-0.1, 0.1) from
 * `seed` by name. NULL when out of memory. */
struct layer *embed_layer_new(const char *name, int V, int D, uint64_t seed);
#endif
