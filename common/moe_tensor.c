/* Tensor storage and checked size arithmetic (see moe_tensor.h). */
#include "moe_tensor.h"

#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "moe_err.h"

int moe_size_mul(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return MOE_ERR_RANGE;
    *out = a * b;
    return 0;
}

int moe_size_add(size_t a, size_t b, size_t *out)
{
    if (b > SIZE_MAX - a)
        return MOE_ERR_RANGE;
    *out = a + b;
    return 0;
}

float *moe_alloc_floats(size_t n)
{
    size_t bytes;
    if (moe_size_mul(n ? n : 1, sizeof(float), &bytes) || bytes > SIZE_MAX - 64)
        return NULL;
    bytes = (bytes + 63) & ~(size_t)63;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0)
        return NULL;
    /* Fresh pages are expensive to fault in one by one on this kind of
     * machine; huge pages make first touch of big buffers much cheaper. */
    if (bytes >= (4u << 20))
        madvise(p, bytes, MADV_HUGEPAGE);
    memset(p, 0, bytes);
    return p;
}

void moe_malloc_keep_freed(void)
{
    /* glibc serves blocks above 32 MB with mmap whatever the threshold, and
     * unmaps them on free; without mmap they come from the heap, and the
     * heap's top is kept up to 1 GB. Other C libraries: nothing to do. */
#ifdef M_MMAP_MAX
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

void moe_free_floats(float **p)
{
    if (p) {
        free(*p);
        *p = NULL;
    }
}

int moe_tensor_init(moe_tensor *t, const char *name, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    if (ndim < 0 || ndim > MOE_TENSOR_MAX_DIMS)
        return MOE_ERR_RANGE;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || moe_size_mul(n, (size_t)shape[i], &n))
            return MOE_ERR_RANGE;
        t->shape[i] = shape[i];
    }
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->numel = n;
    t->data = moe_alloc_floats(n);
    return t->data ? 0 : MOE_ERR_NOMEM;
}

int moe_tensor_init2(moe_tensor *t, const char *name, int64_t d0, int64_t d1)
{
    int64_t s[2] = {d0, d1};
    return moe_tensor_init(t, name, 2, s);
}

int moe_tensor_init1(moe_tensor *t, const char *name, int64_t d0)
{
    return moe_tensor_init(t, name, 1, &d0);
}

void moe_tensor_free(moe_tensor *t)
{
    if (t) {
        moe_free_floats(&t->data);
        t->numel = 0;
    }
}

void moe_shape_format(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = 0;
    int n = snprintf(buf, cap, "[");
    o = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < ndim && o < cap; i++) {
        n = snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
        if (n < 0)
            return;
        o += (size_t)n;
    }
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}
