/* Expert ids shifted by a constant (see expert_offset.h). */
#include "expert_offset.h"

#include <stdlib.h>

#include "moe_err.h"

static const int32_t *shifted(struct expert_offset *o, int n, const int32_t *ids)
{
    for (int i = 0; i < n; i++)
        o->ids[i] = ids[i] + o->offset;
    return o->ids;
}

static int offset_forward(void *ctx, int64_t step, bool train, int n, const int32_t *ids,
                          const int *rows, const float *x, float *y, char *what, size_t what_len)
{
    struct expert_offset *o = ctx;
    return o->inner.forward(o->inner.ctx, step, train, n, shifted(o, n, ids), rows, x, y, what,
                            what_len);
}

static int offset_backward(void *ctx, int64_t step, int n, const int32_t *ids, const int *rows,
                           const float *dy, float *dx, char *what, size_t what_len)
{
    struct expert_offset *o = ctx;
    return o->inner.backward(o->inner.ctx, step, n, shifted(o, n, ids), rows, dy, dx, what,
                             what_len);
}

static int offset_apply(void *ctx, int64_t t, double lr, char *what, size_t what_len)
{
    struct expert_offset *o = ctx;
    return o->inner.apply(o->inner.ctx, t, lr, what, what_len);
}

int expert_offset_init(struct expert_offset *o, struct moe_backend *b,
                       const struct moe_backend *inner, int32_t offset, int E)
{
    *o = (struct expert_offset){.inner = *inner, .offset = offset, .E = E};
    o->ids = malloc(sizeof(int32_t) * (size_t)(E > 0 ? E : 1));
    if (!o->ids)
        return MOE_ERR_NOMEM;
    *b = (struct moe_backend){.ctx = o, .forward = offset_forward, .backward = offset_backward,
                              .apply = offset_apply};
    return 0;
}

void expert_offset_free(struct expert_offset *o)
{
    free(o->ids);
    o->ids = NULL;
}
