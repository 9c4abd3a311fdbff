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
    *b = (struct moe_backend){.ctx = shard, .forward = local_forward, .backward = local_backward,
                              .apply = local_apply};
}

/* ------------------------------------------------------------------------ */
/* A hierarchical MoE's groups, in this process */

/* This process's rows as the one part of hmoe_group.h. */
static struct hmoe_part local_part(const struct moe_group_batch *b)
{
    return (struct hmoe_part){.n = b->A, .ids = b->ids, .rows = b->rows, .row0 = b->row0,
                              .row_index = b->row_index, .gp = b->gp, .x = b->x, .y = b->y,
                              .stats = b->stats, .dy = b->dy, .dstats = b->dstats, .dx = b->dx,
                              .dgp = b->dgp};
}

static int group_fail(int rc, const char *pass, char *what, size_t what_len)
{
    if (rc && what)
        snprintf(what, what_len, "local groups: %s failed: %s", pass, moe_strerror(rc));
    return rc;
}

static int local_group_forward(void *ctx, int64_t step, bool train, const struct moe_group_batch *b,
                               char *what, size_t what_len)
{
    struct expert_local *l = ctx;
    struct hmoe_part part = local_part(b);
    return group_fail(hmoe_groups_forward(l->groups, &l->ex, step, train, 1, &part), "forward",
                      what, what_len);
}

static int local_group_backward(void *ctx, int64_t step, const struct moe_group_batch *b,
                                char *what, size_t what_len)
{
    (void)step;
    struct expert_local *l = ctx;
    struct hmoe_part part = local_part(b);
    return group_fail(hmoe_groups_backward(l->groups, &l->ex, 1, &part, 0, 0), "backward", what,
                      what_len);
}

static int group_expert_forward(void *ctx, int64_t step, bool train, int n, const int32_t *ids,
                                const int *rows, const float *x, float *y, char *what,
                                size_t what_len)
{
    return local_forward(((struct expert_local *)ctx)->shard, step, train, n, ids, rows, x, y,
                         what, what_len);
}

static int group_expert_backward(void *ctx, int64_t step, int n, const int32_t *ids,
                                 const int *rows, const float *dy, float *dx, char *what,
                                 size_t what_len)
{
    return local_backward(((struct expert_local *)ctx)->shard, step, n, ids, rows, dy, dx, what,
                          what_len);
}

static int local_group_apply(void *ctx, int64_t t, double lr, char *what, size_t what_len)
{
    struct expert_local *l = ctx;
    hmoe_groups_apply(l->groups, t, lr);
    return l->shard ? local_apply(l->shard, t, lr, what, what_len) : 0;
}

void expert_local_group_backend(struct moe_backend *b, struct expert_local *l)
{
    if (!l->ex.forward)
        l->ex = hmoe_experts_of_shard(l->shard);
    *b = (struct moe_backend){.ctx = l, .forward = group_expert_forward,
                              .backward = group_expert_backward, .apply = local_group_apply,
                              .group_forward = local_group_forward,
                              .group_backward = local_group_backward};
}
