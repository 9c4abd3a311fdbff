/* Tensors and size arithmetic shared by every process.
 *
 * Dimension letters used in shape comments across the project:
 *   B batch rows (sequences), T unroll length, N = B*T rows, D model width,
 *   H expert hidden width, E experts, K experts per row, V vocabulary.
 * Activations are row-major with rows in b-major order: row r = b*T + t.
 *
 * A moe_tensor is a named float array with a shape; it owns its data when
 * created with moe_tensor_init(). Nothing here talks to BLAS or the network. */
#ifndef MOE_TENSOR_H
#define MOE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#define MOE_TENSOR_MAX_DIMS 4
#define MOE_TENSOR_NAME_MAX 96

typedef struct moe_tensor {
    char name[MOE_TENSOR_NAME_MAX];
    int ndim;
    int64_t shape[MOE_TENSOR_MAX_DIMS];
    size_t numel;
    float *data; /* owned, 64-byte aligned, zero-filled at init */
} moe_tensor;

/* Overflow-checked a*b and a+b: 0, or MOE_ERR_RANGE leaving *out untouched. */
int moe_size_mul(size_t a, size_t b, size_t *out);
int moe_size_add(size_t a, size_t b, size_t *out);

/* 64-byte aligned zeroed allocation of n floats (n may be 0); NULL on failure
 * or overflow. Large blocks get MADV_HUGEPAGE. Free with moe_free_floats. */
float *moe_alloc_floats(size_t n);
void moe_free_floats(float **p);

/* For the daemons: malloc keeps freed blocks for reuse instead of giving
 * them back to the system, so that the large message buffers that ZeroMQ
 * and the wire code allocate every step do not pay for fresh pages (page
 * faults and zeroing) each time. Call once at start. */
void moe_malloc_keep_freed(void);

/* Initialises `t` with `name` (truncated to fit), shape (ndim <= 4) and zeroed
 * storage. Returns 0, MOE_ERR_RANGE or MOE_ERR_NOMEM. Caller owns; release
 * with moe_tensor_free(). */
int moe_tensor_init(moe_tensor *t, const char *name, int ndim, const int64_t *shape);
int moe_tensor_init2(moe_tensor *t, const char *name, int64_t d0, int64_t d1);
int moe_tensor_init1(moe_tensor *t, const char *name, int64_t d0);
void moe_tensor_free(moe_tensor *t);

/* Writes "[a, b, c]" into buf. */
void moe_shape_format(char *buf, size_t cap, int ndim, const int64_t *shape);

#endif
