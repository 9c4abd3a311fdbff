/* In-process expert backend over an expert_shard (see expert_local.h). */
#include "expert_local.h"

#include <stdio.h>

#include "moe_err.h"

static int local_forward(void *ctx, int64_t step, bool train, int n, const int32_t *ids,
                         const int *rows, const float *x, float *y, char *what, size_t what_len)
{
    (void)step;
    int rc = train ? expert_shard_forward(ctx, n, ids, rows, x, y)
                   : expert_shard_infer(ctx, n, ids, rows, x, y);
    if (rc && what)
        snprintf(what, what_len, "local experts: forward failed: %s", moe_strerror(rc));
    return rc;
}

static int local_backward(void *ctx, int64_t step, int n, const int32_t *ids, const int *rows,
                          const float *dy, float *dx, char *what, size_t what_len)
{
    (void)step;
    int rc = expert_shard_backward(ctx, n, ids, rows, dy, dx);
    if (rc && what)
        snprintf(what, what_len, "local experts: backward failed: %s", moe_strerror(rc));
    return rc;
}

static int local_apply(void *ctx, int64_t t, double lr, char *what, size_t what_len)
{
    (void)what;
    (void)what_len;
    expert_shard_apply(ctx, t, lr);
    return 0;
}

void expert_local_backend(struct moe_backend *b, expert_shard_t *shard)
{
    b->ctx = shard;
    b->forward = local_forward;
    b->backward = local_backward;
    b->apply = local_apply;
}
