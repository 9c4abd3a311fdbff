/* A hierarchical MoE's groups on an expert server (moe-server; issue 17):
 * the checks a GROUP_FORWARD or GROUP_BACKWARD passes beyond those of every
 * step message, and the step's group forward and backward over every
 * worker's rows, through the same code the worker runs in-process
 * (common/hmoe_group.h): each group's secondary gate, its experts, the
 * combine within the group; in the backward the gates' and experts'
 * gradients and their factored-Adam update, and what the workers' primary
 * gates need back. The step bookkeeping (slots, phases, the barrier) is
 * expert_server_step.c's. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expert_server_internal.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_optim.h"
#include "moe_tensor.h"
#include "moe_time.h"

/* ------------------------------------------------------------------------ */
/* Validation */

static bool all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

int expert_server__check_group(const expert_server_t *s, const struct moe_wire_msg *m, char *why,
                               size_t len)
{
    const Moe__Header *h = m->hdr;
    const bool fwd = h->type == MOE__MSG_TYPE__MSG_GROUP_FORWARD;
    if (!s->groups) {
        snprintf(why, len, "this server runs a flat MoE's experts: it takes no group messages");
        return MOE_ERR_STATE;
    }
    for (size_t j = 0; j < h->n_expert_ids; j++) {
        if (hmoe_groups_find(s->groups, h->expert_ids[j]) < 0) {
            snprintf(why, len, "group %d is not on this server", h->expert_ids[j]);
            return MOE_ERR_NOTFOUND;
        }
        if (h->row_counts[j] > INT32_MAX) {
            snprintf(why, len, "group %d: %u rows is too many", h->expert_ids[j], h->row_counts[j]);
            return MOE_ERR_RANGE;
        }
    }
    if (fwd) {
        /* the wire codec checked one index and one gate per row */
        for (size_t r = 0; r < h->n_row_index; r++)
            if (h->row_index[r] > INT32_MAX) {
                snprintf(why, len, "row index %u is out of range", h->row_index[r]);
                return MOE_ERR_RANGE;
            }
        for (size_t r = 0; r < h->n_row_gate; r++)
            if (!(h->row_gate[r] >= 0.0f && h->row_gate[r] <= 1.0f)) {
                snprintf(why, len, "row %zu: primary gate value %g is not in [0, 1]", r,
                         (double)h->row_gate[r]);
                return MOE_ERR_RANGE;
            }
    } else {
        const size_t want = 2 * (size_t)s->B * h->n_expert_ids;
        if (h->n_group_stats != want) {
            snprintf(why, len, "group backward with %zu statistics gradients, expected %zu "
                     "(2 x %d per group)", h->n_group_stats, want, s->B);
            return MOE_ERR_SHAPE;
        }
        if (!all_finite(h->group_stats, h->n_group_stats)) {
            snprintf(why, len, "group backward with a statistics gradient that is not finite");
            return MOE_ERR_RANGE;
        }
    }
    if (m->data && !all_finite(m->data, m->rows * (size_t)s->D)) {
        snprintf(why, len, "group %s with a value that is not finite",
                 fwd ? "forward" : "backward");
        return MOE_ERR_RANGE;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The step */

/* Room for the parts' statistics and primary-gate gradients. */
static int reserve(expert_server_t *s, size_t stats, size_t rows)
{
    if (stats > s->cap_gstats) {
        float *p = moe_alloc_floats(stats);
        if (!p)
            return MOE_ERR_NOMEM;
        moe_free_floats(&s->gstats);
        s->gstats = p;
        s->cap_gstats = stats;
    }
    if (rows > s->cap_gdgp) {
        float *p = moe_alloc_floats(rows);
        if (!p)
            return MOE_ERR_NOMEM;
        moe_free_floats(&s->gdgp);
        s->gdgp = p;
        s->cap_gdgp = rows;
    }
    return 0;
}

/* The parts of the held messages of a phase (the forward's, or the
 * backward's with its gradients), their results into the messages' own
 * payloads (in place) and the server's buffers. */
static int make_parts(expert_server_t *s, struct slot *sl, int W, bool backward)
{
    size_t stats = 0, rows = 0;
    for (int r = 0; r < W; r++) {
        stats += 3 * (size_t)s->B * sl[r].msg.hdr->n_expert_ids;
        rows += sl[r].msg.rows;
    }
    int rc = reserve(s, stats ? stats : 1, rows ? rows : 1);
    if (rc)
        return rc;
    stats = rows = 0;
    for (int r = 0; r < W; r++) {
        const Moe__Header *h = sl[r].msg.hdr;
        struct hmoe_part *p = &s->parts[r];
        if (!backward)
            *p = (struct hmoe_part){.n = (int)h->n_expert_ids, .ids = h->expert_ids,
                                    .rows = h->row_counts, .row0 = (int64_t)h->row0,
                                    .row_index = h->row_index, .gp = h->row_gate,
                                    .x = sl[r].msg.data, .y = sl[r].msg.data,
                                    .stats = s->gstats + stats};
        else
            *p = (struct hmoe_part){.n = (int)h->n_expert_ids, .ids = h->expert_ids,
                                    .rows = h->row_counts, .dy = sl[r].msg.data,
                                    .dstats = h->group_stats, .dx = sl[r].msg.data,
                                    .dgp = s->gdgp + rows};
        stats += 3 * (size_t)s->B * h->n_expert_ids;
        rows += sl[r].msg.rows;
    }
    return 0;
}

/* Answers the message of a part: its payload (in place), with its
 * statistics (forward) or its primary-gate gradients (backward). */
static void reply_part(expert_server_t *s, const struct moe_wire_msg *m, const struct hmoe_part *p,
                       Moe__MsgType type)
{
    const Moe__Header *h = m->hdr;
    struct moe_wire_out o;
    expert_server__reply_header(s, m, type, &o);
    o.rank = (uint32_t)(s->index < 0 ? 0 : s->index);
    if (type == MOE__MSG_TYPE__MSG_GROUP_FORWARD_REPLY) {
        o.group_stats = p->stats;
        o.n_group_stats = 3 * (size_t)s->B * h->n_expert_ids;
    } else {
        o.row_gate = p->dgp;
        o.n_row_gate = m->rows;
    }
    char err[256];
    if (moe_wire_send_in_place(s->sock, m->identity, m->identity_len, &o, m, err, sizeof err))
        moe_warn("cannot reply to worker %u: %s", h->rank, err);
}

/* The step's counters: rows the experts computed; the tensor bytes of the
 * group messages (`rows` rows each way, forward and backward). */
static void count_rows(expert_server_t *s, size_t rows)
{
    s->rows_total += hmoe_groups_expert_rows(s->groups);
    const uint64_t half = 2 * rows * (size_t)s->D * moe_wire_dtype_size((int)s->dtype);
    s->bytes_total += 2 * half;
    s->bytes_in += half;
    s->bytes_out += half;
}

int expert_server__finish_group_forward(expert_server_t *s)
{
    s->step_started = moe_now_sec();
    int rc = make_parts(s, s->fwd, s->W, false);
    if (rc)
        return rc;
    const struct hmoe_experts ex = hmoe_experts_of_shard(s->shard);
    if ((rc = hmoe_groups_forward(s->groups, &ex, s->step, true, s->W, s->parts)))
        return rc;
    size_t rows = 0;
    for (int r = 0; r < s->W; r++) {
        reply_part(s, &s->fwd[r].msg, &s->parts[r], MOE__MSG_TYPE__MSG_GROUP_FORWARD_REPLY);
        rows += s->fwd[r].msg.rows;
    }
    count_rows(s, rows);
    s->step_compute = moe_now_sec() - s->step_started;
    s->compute_seconds += s->step_compute;
    s->phase = PH_BACKWARD;
    return 0;
}

int expert_server__finish_group_backward(expert_server_t *s)
{
    const double t0 = moe_now_sec();
    int rc = make_parts(s, s->bwd, s->W, true);
    if (rc)
        return rc;
    /* every worker's gradients are in: the experts' and the gates' update
     * of step t come with the backward (DESIGN §3 step 7) */
    const int64_t t = s->step + 1;
    const double lr = moe_lr_at(&s->sched, t);
    const struct hmoe_experts ex = hmoe_experts_of_shard(s->shard);
    /* without recompute the workers get their answers first and the
     * updates follow (as in the flat layer's finish_backward) */
    const bool split = hmoe_groups_can_split_backward(&ex);
    if ((rc = split ? hmoe_groups_backward_input(s->groups, &ex, s->W, s->parts)
                    : hmoe_groups_backward(s->groups, &ex, s->W, s->parts, t, lr)))
        return rc;
    for (int r = 0; r < s->W; r++)
        reply_part(s, &s->bwd[r].msg, &s->parts[r], MOE__MSG_TYPE__MSG_GROUP_BACKWARD_REPLY);
    if (split && hmoe_groups_backward_finish(s->groups, &ex, t, lr))
        expert_server__update_failed(s, "groups'", t);
    expert_server__end_step(s, moe_now_sec() - t0);
    return 0;
}

/* An evaluation forward: answered at once, nothing kept (the groups' step
 * buffers are free between a step's backward and the next forward, when
 * evaluations come; during a step one is refused). */
void expert_server__group_eval(expert_server_t *s, struct moe_wire_msg *m)
{
    if (s->phase != PH_FORWARD) {
        expert_server__reply_error(s, m, MOE_ERR_STATE,
                                   "an evaluation forward in the middle of a training step");
        return;
    }
    const size_t stats = 3 * (size_t)s->B * m->hdr->n_expert_ids;
    float *st = moe_alloc_floats(stats ? stats : 1);
    if (!st) {
        expert_server__reply_error(s, m, MOE_ERR_NOMEM, "out of memory for an evaluation batch");
        return;
    }
    const Moe__Header *h = m->hdr;
    struct hmoe_part p = {.n = (int)h->n_expert_ids, .ids = h->expert_ids, .rows = h->row_counts,
                          .row0 = (int64_t)h->row0, .row_index = h->row_index, .gp = h->row_gate,
                          .x = m->data, .y = m->data, .stats = st};
    const struct hmoe_experts ex = hmoe_experts_of_shard(s->shard);
    int rc = hmoe_groups_forward(s->groups, &ex, (int64_t)h->step, false, 1, &p);
    if (rc)
        expert_server__reply_error(s, m, rc, "evaluation forward failed");
    else
        reply_part(s, m, &p, MOE__MSG_TYPE__MSG_GROUP_FORWARD_REPLY);
    moe_free_floats(&st);
}

int expert_server__make_groups(expert_server_t *s)
{
    hmoe_groups_destroy(&s->groups);
    if (!s->B)
        return 0;
    s->groups = hmoe_groups_of_shard(s->cfg, s->shard);
    return s->groups ? 0 : MOE_ERR_NOMEM;
}

bool expert_server__fetch_groups_missing(const expert_server_t *s, const Moe__Header *h, char *why,
                                       size_t len)
{
    for (size_t j = 0; j < h->n_expert_ids; j++)
        if (!s->groups || hmoe_groups_find(s->groups, h->expert_ids[j]) < 0) {
            snprintf(why, len, "group %d is not on this server", h->expert_ids[j]);
            return true;
        }
    return false;
}
