/* What arrives at an expert server (moe-server): validation, the step's
 * forward, backward and update assembled over every worker, evaluation
 * forwards and fetches (see expert_server.h for the step protocol). Every
 * handler validates first and, on a bad message, replies an error without
 * touching the step's state. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "expert_server_internal.h"
#include "moe_sec.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_optim.h"
#include "moe_tensor.h"
#include "moe_time.h"

void expert_server__clear_slots(struct slot *sl, int W)
{
    for (int r = 0; r < W; r++) {
        moe_wire_msg_free(&sl[r].msg);
        sl[r].have = false;
    }
}

/* ------------------------------------------------------------------------ */
/* Replies */

void expert_server__reply_error(expert_server_t *s, const struct moe_wire_msg *m, int code,
                                const char *text)
{
    s->errors++;
    s->reasons[moe_reason_index(code)]++;
    /* a sampled, sanitised log line: the first 20 errors, then every 100th */
    if (s->errors <= 20 || s->errors % 100 == 0) {
        char safe[200];
        moe_log_sanitize(safe, sizeof safe, text, strlen(text));
        moe_warn("rejected message #%" PRId64 " (%s): %s", s->errors, moe_strerror(code), safe);
    }
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_ERROR;
    o.step = m->hdr ? m->hdr->step : 0;
    o.request_id = m->hdr ? m->hdr->request_id : 0;
    o.rank = (uint32_t)(s->index < 0 ? 0 : s->index);
    o.epoch = s->epoch;
    o.error_code = code;
    o.error_text = text;
    char err[256];
    if (m->identity_len && moe_wire_send(s->sock, m->identity, m->identity_len, &o, NULL, 0, err,
                                         sizeof err))
        moe_warn("cannot send an error reply: %s", err);
}

void expert_server__reply_header(const expert_server_t *s, const struct moe_wire_msg *m,
                                 Moe__MsgType type, struct moe_wire_out *o)
{
    const Moe__Header *h = m->hdr;
    *o = (struct moe_wire_out){0};
    o->type = type;
    o->step = h->step;
    o->rank = (uint32_t)s->index;
    o->epoch = s->epoch;
    o->request_id = h->request_id;
    o->expert_ids = h->expert_ids;
    o->row_counts = h->row_counts;
    o->n_experts = h->n_expert_ids;
    o->dtype = s->dtype;
    o->width = (uint32_t)s->D;
    o->row0 = h->row0;
}

/* Answers m with data (m->rows rows). When data is m's own payload,
 * overwritten with the results, it goes out in the frame the request came
 * in (no copy) if the wire dtype is float32. */
static int reply_tensor(expert_server_t *s, const struct moe_wire_msg *m, Moe__MsgType type,
                        const float *data)
{
    struct moe_wire_out o;
    expert_server__reply_header(s, m, type, &o);
    char err[256];
    int rc = data == m->data
                 ? moe_wire_send_in_place(s->sock, m->identity, m->identity_len, &o, m, err,
                                          sizeof err)
                 : moe_wire_send(s->sock, m->identity, m->identity_len, &o, data, m->rows, err,
                                 sizeof err);
    if (rc)
        moe_warn("cannot reply to worker %u: %s", m->hdr->rank, err);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Validation shared by forward and backward */

static bool owned_ids(const expert_server_t *s, const Moe__Header *h, char *why, size_t len)
{
    for (size_t i = 0; i < h->n_expert_ids; i++) {
        if (expert_shard_find(s->shard, h->expert_ids[i]) < 0) {
            snprintf(why, len, "expert %d is not on this server", h->expert_ids[i]);
            return false;
        }
    }
    return true;
}

/* The peer identity a worker of `rank` connects with. */
static void worker_identity(char *buf, size_t cap, uint32_t rank)
{
    snprintf(buf, cap, "moe-worker-%u", rank);
}

static bool check_rank(const expert_server_t *s, const Moe__Header *h, char *why, size_t len)
{
    if (h->rank >= (uint32_t)s->W) {
        snprintf(why, len, "rank %u is not a worker of this cluster (%d workers)", h->rank, s->W);
        return false;
    }
    return true;
}

/* Checked last, so that a message gets the most specific error: only the
 * peer that connected as worker r may fill worker r's slot of a step. */
static bool check_identity(const struct moe_wire_msg *m, char *why, size_t len)
{
    char id[32];
    worker_identity(id, sizeof id, m->hdr->rank);
    if (m->identity_len != strlen(id) || memcmp(m->identity, id, m->identity_len) != 0) {
        snprintf(why, len, "rank %u must connect as \"%s\"", m->hdr->rank, id);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Step assembly */

/* The forwards of MoE layer `layer` (one slot per worker). */
static struct slot *fwd_slots(const expert_server_t *s, int layer)
{
    return s->fwd + (size_t)layer * (size_t)s->W;
}

static int grow(expert_server_t *s, size_t rows)
{
    if (rows <= s->cap_rows)
        return 0;
    size_t n;
    if (moe_size_mul(rows, (size_t)s->D, &n))
        return MOE_ERR_RANGE;
    float *x = moe_alloc_floats(n), *y = moe_alloc_floats(n);
    if (!x || !y) {
        moe_free_floats(&x);
        moe_free_floats(&y);
        return MOE_ERR_NOMEM;
    }
    moe_free_floats(&s->x_all);
    moe_free_floats(&s->y_all);
    s->x_all = x;
    s->y_all = y;
    s->cap_rows = rows;
    return 0;
}

/* Union of the workers' experts and each expert's base row; rows of an
 * expert are laid out worker by worker in rank order. */
static int build_union(expert_server_t *s, const struct slot *sl)
{
    const int n = expert_shard_count(s->shard);
    s->n_union = 0;
    size_t total = 0;
    for (int li = 0; li < n; li++) {
        int32_t id = expert_shard_id(s->shard, li);
        uint64_t rows = 0;
        for (int r = 0; r < s->W; r++) {
            const Moe__Header *h = sl[r].msg.hdr;
            for (size_t j = 0; j < h->n_expert_ids; j++)
                if (h->expert_ids[j] == id)
                    rows += h->row_counts[j];
        }
        if (rows == 0)
            continue;
        if (rows > INT32_MAX)
            return MOE_ERR_RANGE;
        s->u_ids[s->n_union] = id;
        s->u_rows[s->n_union] = (int)rows;
        s->u_base[s->n_union] = total;
        s->n_union++;
        total += rows;
    }
    return grow(s, total);
}

/* Copies between the workers' payloads and the assembled buffer: to_all
 * gathers (worker -> all), else scatters (all -> worker). */
static void move_rows(expert_server_t *s, struct slot *sl, float *all, bool to_all)
{
    const size_t D = (size_t)s->D;
    size_t *fill = calloc((size_t)s->n_union, sizeof(size_t));
    if (!fill)
        abort(); /* n_union floats of bookkeeping; nothing sane to do without it */
    for (int r = 0; r < s->W; r++) {
        const Moe__Header *h = sl[r].msg.hdr;
        float *data = sl[r].msg.data;
        size_t off = 0;
        int u = 0;
        for (size_t j = 0; j < h->n_expert_ids; j++) {
            const size_t rows = h->row_counts[j];
            if (rows == 0)
                continue;
            while (s->u_ids[u] != h->expert_ids[j])
                u++;
            float *a = all + (s->u_base[u] + fill[u]) * D, *w = data + off * D;
            if (to_all)
                memcpy(a, w, sizeof(float) * rows * D);
            else
                memcpy(w, a, sizeof(float) * rows * D);
            fill[u] += rows;
            off += rows;
        }
    }
    free(fill);
}

/* Every worker's forward of layer s->layer is in: computed, answered, and
 * the step waits for the next layer's forwards or, after the last, for
 * the backwards from the last layer down. */
static int finish_forward(expert_server_t *s)
{
    s->step_started = moe_now_sec();
    struct slot *fwd = fwd_slots(s, s->layer);
    int rc = build_union(s, fwd);
    if (rc || (rc = expert_shard_set_layer(s->shard, s->layer)))
        return rc;
    move_rows(s, fwd, s->x_all, true);
    rc = expert_shard_forward(s->shard, s->n_union, s->u_ids, s->u_rows, s->x_all, s->y_all);
    if (rc)
        return rc;
    move_rows(s, fwd, s->y_all, false);
    for (int r = 0; r < s->W; r++)
        reply_tensor(s, &fwd[r].msg, MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY, fwd[r].msg.data);
    size_t rows = 0;
    for (int u = 0; u < s->n_union; u++)
        rows += (size_t)s->u_rows[u];
    s->rows_total += rows;
    /* forward in and out; the backward moves as much again */
    const uint64_t half = 2 * rows * (size_t)s->D * moe_wire_dtype_size((int)s->dtype);
    s->bytes_total += 2 * half;
    s->bytes_in += half; /* the forward's rows and the backward's gradients */
    s->bytes_out += half; /* their outputs and input gradients */
    const double dt = moe_now_sec() - s->step_started;
    s->step_compute = s->layer == 0 ? dt : s->step_compute + dt;
    s->compute_seconds += dt;
    if (s->layer + 1 < s->layers)
        s->layer++;
    else
        s->phase = PH_BACKWARD;
    return 0;
}

/* Every worker's backward of layer s->layer is in: computed, applied and
 * answered; then the layer below's backward, or after layer 0 the next
 * step (and a checkpoint when the step carries the flag). */
static int finish_backward(expert_server_t *s)
{
    const double t0 = moe_now_sec();
    int rc = 0;
    /* with several layers the assembled layout is this layer's again */
    if (s->layers > 1 && (rc = build_union(s, fwd_slots(s, s->layer))))
        return rc;
    if ((rc = expert_shard_set_layer(s->shard, s->layer)))
        return rc;
    move_rows(s, s->bwd, s->x_all, true);
    /* Every worker's contribution is in: each expert's update is applied
     * as soon as its gradient exists, and only one expert's gradient is
     * ever held (DESIGN §3 step 7). Without recompute the workers get
     * their dx first (the experts' input gradients), and the weight
     * gradients and updates follow while the workers go on: the same bits,
     * and the next forward waits for them as messages are taken in order. */
    const int64_t t = s->step + 1;
    const double lr = moe_lr_at(&s->sched, t);
    const bool split = expert_shard_can_split_backward(s->shard);
    rc = split ? expert_shard_backward_input(s->shard, s->n_union, s->u_ids, s->u_rows, s->x_all,
                                             s->y_all)
               : expert_shard_backward_apply(s->shard, s->n_union, s->u_ids, s->u_rows, s->x_all,
                                             s->y_all, t, lr);
    if (rc)
        return rc;
    move_rows(s, s->bwd, s->y_all, false);
    for (int r = 0; r < s->W; r++)
        reply_tensor(s, &s->bwd[r].msg, MOE__MSG_TYPE__MSG_EXPERT_BACKWARD_REPLY, s->bwd[r].msg.data);
    /* the second half checks what the first did and allocates nothing: it
     * cannot fail unless the server's own state is broken; the workers have
     * their answers, so that goes to the coordinator (a rollback) */
    if (split && expert_shard_backward_finish(s->shard, s->n_union, s->u_ids, s->u_rows, s->x_all,
                                              t, lr))
        expert_server__update_failed(s, "experts'", t);
    expert_server__end_step(s, moe_now_sec() - t0);
    return 0;
}

void expert_server__update_failed(expert_server_t *s, const char *whose, int64_t t)
{
    char why[160];
    snprintf(why, sizeof why, "server %u: the %s update of step %" PRId64
             " failed after the workers had their gradients", s->id, whose, t);
    if (s->coord)
        expert_server__report_trouble(s, why);
    else
        moe_error("%s", why);
}

void expert_server__end_step(expert_server_t *s, double bwd)
{
    s->compute_seconds += bwd;
    s->step_compute += bwd;
    const bool ckpt = (s->bwd[0].msg.hdr->flags & MOE_FLAG_CHECKPOINT) != 0;
    expert_server__clear_slots(fwd_slots(s, s->layer), s->W);
    expert_server__clear_slots(s->bwd, s->W);
    if (s->layer > 0) { /* the backward of the layer below comes next */
        s->layer--;
        return;
    }
    moe_hist_observe(&s->compute, s->step_compute);
    s->step++;
    s->phase = PH_FORWARD;
    /* a consistent cut: before any forward of the next step */
    if (ckpt && s->coord && s->cfg->checkpoint_dir[0])
        expert_server__write_checkpoint(s);
}

/* ------------------------------------------------------------------------ */
/* Handlers: each validates, then acts; on a bad message it replies an error
 * and returns without touching the step state. */

static void handle_eval(expert_server_t *s, struct moe_wire_msg *m)
{
    const Moe__Header *h = m->hdr;
    int n = (int)h->n_expert_ids;
    int *rows = malloc(sizeof(int) * (size_t)(n ? n : 1));
    size_t nf;
    float *y = NULL;
    if (rows && !moe_size_mul(m->rows, (size_t)s->D, &nf))
        y = moe_alloc_floats(nf);
    if (!rows || !y) {
        free(rows);
        moe_free_floats(&y);
        expert_server__reply_error(s, m, MOE_ERR_NOMEM, "out of memory for an evaluation batch");
        return;
    }
    for (int j = 0; j < n; j++)
        rows[j] = (int)h->row_counts[j];
    int rc = expert_shard_infer(s->shard, n, h->expert_ids, rows, m->data, y);
    if (rc)
        expert_server__reply_error(s, m, rc, "evaluation forward failed");
    else
        reply_tensor(s, m, MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY, y);
    free(rows);
    moe_free_floats(&y);
}

/* A training call of MoE layer l names experts of that layer only: ids
 * l x n_experts .. (l + 1) x n_experts - 1. */
static bool layer_ids(const expert_server_t *s, const Moe__Header *h, char *why, size_t len)
{
    const int64_t E = s->cfg->n_experts, lo = (int64_t)h->layer * E;
    for (size_t i = 0; i < h->n_expert_ids; i++) {
        if (h->expert_ids[i] < lo || h->expert_ids[i] >= lo + E) {
            snprintf(why, len, "expert %d is not one of MoE layer %u (experts %" PRId64
                     "..%" PRId64 ")", h->expert_ids[i], h->layer, lo, lo + E - 1);
            return false;
        }
    }
    return true;
}

static bool check_rows_fit(const Moe__Header *h, char *why, size_t len)
{
    for (size_t j = 0; j < h->n_expert_ids; j++) {
        if (h->row_counts[j] > INT32_MAX) {
            snprintf(why, len, "expert %d: %u rows is too many", h->expert_ids[j], h->row_counts[j]);
            return false;
        }
    }
    return true;
}

/* A validated forward or backward takes its worker's slot of the step (the
 * slot owns the message now); when every worker's is in, the step's phase
 * is computed. If that fails (out of memory for the assembled batch), every
 * worker is told and the phase's slots are cleared. */
static void take_slot(expert_server_t *s, struct slot *sl, struct moe_wire_msg *m,
                      int (*finish)(expert_server_t *))
{
    const uint32_t rank = m->hdr->rank;
    sl[rank].msg = *m;
    sl[rank].have = true;
    memset(m, 0, sizeof *m);
    for (int r = 0; r < s->W; r++)
        if (!sl[r].have)
            return;
    int rc = finish(s);
    if (rc) {
        for (int r = 0; r < s->W; r++)
            expert_server__reply_error(s, &sl[r].msg, rc, "the server could not compute this step");
        expert_server__clear_slots(sl, s->W);
    }
}

/* The checks every forward and backward passes before it branches (an
 * evaluation forward, the step's forward, the step's backward), in the
 * order that gives the most specific error: the worker rank; for a
 * forward, its experts and row counts (an evaluation needs no more); the
 * step; the phase and duplicates; for a backward, the same experts and rows
 * as its forward; last the sender's identity (only the peer connected as
 * worker r fills worker r's slot). 0, or the code of the error reply with
 * the sentence in why. */
static int validate_step_request(const expert_server_t *s, const struct moe_wire_msg *m,
                                 char *why, size_t len)
{
    const Moe__Header *h = m->hdr;
    const bool group = h->type == MOE__MSG_TYPE__MSG_GROUP_FORWARD ||
                       h->type == MOE__MSG_TYPE__MSG_GROUP_BACKWARD;
    const bool fwd = h->type == MOE__MSG_TYPE__MSG_EXPERT_FORWARD ||
                     h->type == MOE__MSG_TYPE__MSG_GROUP_FORWARD;
    const char *what = fwd ? "forward" : "backward";
    if (!check_rank(s, h, why, len))
        return MOE_ERR_NOTFOUND;
    if (!group && s->groups) {
        /* a hierarchical MoE's experts are reached through their groups */
        snprintf(why, len, "this server runs a hierarchical MoE's groups: expert %s messages are "
                 "not served (a worker of another configuration?)", what);
        return MOE_ERR_STATE;
    }
    int code;
    if (group && (code = expert_server__check_group(s, m, why, len)))
        return code;
    if (!group && fwd && (!owned_ids(s, h, why, len) || !check_rows_fit(h, why, len)))
        return MOE_ERR_NOTFOUND;
    if (fwd && h->eval) /* answered only to a worker of the cluster */
        return check_identity(m, why, len) ? 0 : MOE_ERR_STATE;
    if ((int64_t)h->step != s->step) {
        snprintf(why, len, "%s of step %" PRIu64 " is %s: this server is at step %" PRId64, what,
                 h->step, (int64_t)h->step < s->step ? "stale" : "from the future", s->step);
        return MOE_ERR_STATE;
    }
    if (h->layer >= (uint32_t)s->layers) {
        snprintf(why, len, "%s of MoE layer %u: the model has %d MoE layer(s)", what, h->layer,
                 s->layers);
        return MOE_ERR_STATE;
    }
    if (fwd && !group && !layer_ids(s, h, why, len))
        return MOE_ERR_NOTFOUND;
    if (!fwd && s->phase != PH_BACKWARD) {
        snprintf(why, len, "backward of step %" PRIu64 " before every worker's forward", h->step);
        return MOE_ERR_STATE;
    }
    if (h->layer != (uint32_t)s->layer) {
        /* forwards of layers 0, 1, ... then backwards from the last down */
        snprintf(why, len, "%s of MoE layer %u of step %" PRIu64 " out of order: this server "
                 "waits for the %s of layer %d", what, h->layer, h->step,
                 s->phase == PH_FORWARD ? "forwards" : "backwards", s->layer);
        return MOE_ERR_STATE;
    }
    const struct slot *sl = fwd ? fwd_slots(s, s->layer) : s->bwd;
    if ((fwd && s->phase != PH_FORWARD) || sl[h->rank].have) {
        snprintf(why, len, "duplicate %s of step %" PRIu64 " from worker %u", what, h->step,
                 h->rank);
        return MOE_ERR_STATE;
    }
    if (!fwd) {
        const Moe__Header *f = fwd_slots(s, s->layer)[h->rank].msg.hdr;
        bool same = f->n_expert_ids == h->n_expert_ids;
        for (size_t j = 0; same && j < h->n_expert_ids; j++)
            same = f->expert_ids[j] == h->expert_ids[j] && f->row_counts[j] == h->row_counts[j];
        if (!same) {
            snprintf(why, len, "backward of worker %u does not match its forward's experts and rows",
                     h->rank);
            return MOE_ERR_SHAPE;
        }
    }
    return check_identity(m, why, len) ? 0 : MOE_ERR_STATE;
}

/* A forward or a backward: validated, then an evaluation answered at once,
 * or the message takes its worker's slot of the step. */
static void handle_step_request(expert_server_t *s, struct moe_wire_msg *m)
{
    char why[256];
    const int code = validate_step_request(s, m, why, sizeof why);
    const bool group = m->hdr->type == MOE__MSG_TYPE__MSG_GROUP_FORWARD ||
                       m->hdr->type == MOE__MSG_TYPE__MSG_GROUP_BACKWARD;
    if (code) {
        expert_server__reply_error(s, m, code, why);
    } else if (m->hdr->type == MOE__MSG_TYPE__MSG_EXPERT_BACKWARD ||
               m->hdr->type == MOE__MSG_TYPE__MSG_GROUP_BACKWARD) {
        take_slot(s, s->bwd, m, group ? expert_server__finish_group_backward : finish_backward);
    } else if (m->hdr->eval) {
        if (group)
            expert_server__group_eval(s, m);
        else
            handle_eval(s, m);
    } else {
        take_slot(s, fwd_slots(s, s->layer), m,
                  group ? expert_server__finish_group_forward : finish_forward);
    }
}

/* Parameters and optimizer state of the requested experts, one row of
 * P + S floats per expert; header.step = the steps they have seen. */
static void handle_fetch(expert_server_t *s, struct moe_wire_msg *m)
{
    char why[256];
    const Moe__Header *h = m->hdr;
    if (!check_rank(s, h, why, sizeof why) || !check_identity(m, why, sizeof why)) {
        expert_server__reply_error(s, m, MOE_ERR_STATE, why);
        return;
    }
    const bool groups = (h->flags & MOE_FLAG_GROUPS) != 0;
    if (groups ? expert_server__fetch_groups_missing(s, h, why, sizeof why)
               : !owned_ids(s, h, why, sizeof why)) {
        expert_server__reply_error(s, m, MOE_ERR_NOTFOUND, why);
        return;
    }
    /* Parameters change only when a step's last backward is in, so at any
     * moment they are those after s->step steps; the reply says which. */
    expert_shard_flush(s->shard, s->step);
    const size_t P = groups ? hmoe_groups_param_count(s->D, s->B)
                            : expert_ffn_param_count(s->D, s->H);
    const size_t S = groups ? hmoe_groups_state_count(s->D, s->B)
                            : expert_shard_opt_state_size(s->shard);
    const size_t n = h->n_expert_ids, width = P + S;
    float *buf = moe_alloc_floats(n * width);
    uint32_t *ones = malloc(sizeof(uint32_t) * (n ? n : 1));
    if (!buf || !ones) {
        moe_free_floats(&buf);
        free(ones);
        expert_server__reply_error(s, m, MOE_ERR_NOMEM, "out of memory for a fetch");
        return;
    }
    for (size_t j = 0; j < n; j++) {
        if (groups) {
            const int gi = hmoe_groups_find(s->groups, h->expert_ids[j]);
            memcpy(buf + j * width, hmoe_groups_params(s->groups, gi), sizeof(float) * P);
            memcpy(buf + j * width + P, hmoe_groups_opt_state(s->groups, gi), sizeof(float) * S);
        } else {
            const int li = expert_shard_find(s->shard, h->expert_ids[j]);
            memcpy(buf + j * width, expert_shard_params(s->shard, li), sizeof(float) * P);
            memcpy(buf + j * width + P, expert_shard_opt_state(s->shard, li), sizeof(float) * S);
        }
        ones[j] = 1;
    }
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH_REPLY;
    o.step = (uint64_t)s->step;
    o.rank = (uint32_t)s->index;
    o.epoch = s->epoch;
    o.request_id = h->request_id;
    o.expert_ids = h->expert_ids;
    o.row_counts = ones;
    o.n_experts = n;
    o.flags = h->flags & MOE_FLAG_GROUPS;
    o.dtype = MOE__DTYPE__DTYPE_F32; /* exact bytes, whatever the wire setting */
    o.width = (uint32_t)width;
    char err[256];
    if (moe_wire_send(s->sock, m->identity, m->identity_len, &o, buf, n, err, sizeof err))
        moe_warn("cannot send a fetch reply: %s", err);
    moe_free_floats(&buf);
    free(ones);
}

void expert_server__dispatch(expert_server_t *s, struct moe_wire_msg *m)
{
    char why[160];
    s->msgs++;
    if (s->curve && moe_sec_peer(m) != MOE_SEC_WORKER) {
        /* the ZAP handler admits only worker keys; this is the second lock */
        snprintf(why, sizeof why, "this connection is authenticated as %s, not as a worker",
                 moe_sec_role_name(moe_sec_peer(m)));
        expert_server__reply_error(s, m, MOE_ERR_STATE, why);
    } else if (s->waiting || m->hdr->epoch != s->epoch) {
        snprintf(why, sizeof why, "message of epoch %u: this server %s epoch %u", m->hdr->epoch,
                 s->waiting ? "is between epochs after" : "serves", s->epoch);
        expert_server__reply_error(s, m, MOE_ERR_STATE, why);
    } else {
        switch (m->hdr->type) {
        case MOE__MSG_TYPE__MSG_EXPERT_FORWARD:
        case MOE__MSG_TYPE__MSG_EXPERT_BACKWARD:
        case MOE__MSG_TYPE__MSG_GROUP_FORWARD:
        case MOE__MSG_TYPE__MSG_GROUP_BACKWARD: handle_step_request(s, m); break;
        case MOE__MSG_TYPE__MSG_EXPERT_FETCH: handle_fetch(s, m); break;
        default:
            snprintf(why, sizeof why, "message type %d is not served by an expert server",
                     (int)m->hdr->type);
            expert_server__reply_error(s, m, MOE_ERR_FORMAT, why);
        }
    }
}

/* A received message (rc: its decoding) to its handler or its error reply. */
static void handle(expert_server_t *s, struct moe_wire_msg *m, int rc, const char *err)
{
    if (rc) {
        s->msgs++;
        expert_server__reply_error(s, m, rc, err);
    } else {
        expert_server__dispatch(s, m);
    }
    moe_wire_msg_free(m);
}

void expert_server__handle_message(expert_server_t *s)
{
    struct moe_wire_msg m;
    memset(&m, 0, sizeof m);
    char err[256];
    /* FETCH requests carry no payload, so any width passes the decoder. */
    int rc = moe_wire_recv(s->sock, true, ZMQ_DONTWAIT, &s->lim, &m, err, sizeof err);
    if (rc == MOE_ERR_STATE && !m.hdr && m.identity_len == 0)
        return; /* nothing there */
    handle(s, &m, rc, err);
}

/* Held forward/backward messages of a step that will not complete. */
void expert_server__abandon_step(expert_server_t *s, const char *why)
{
    /* the forwards of the layer being assembled are unanswered; those of
     * earlier layers were answered and wait for their backward */
    struct slot *fwd = fwd_slots(s, s->layer);
    for (int r = 0; r < s->W; r++) {
        if (fwd[r].have && s->phase == PH_FORWARD)
            expert_server__reply_error(s, &fwd[r].msg, MOE_ERR_STATE, why);
        if (s->bwd[r].have)
            expert_server__reply_error(s, &s->bwd[r].msg, MOE_ERR_STATE, why);
    }
    expert_server__clear_slots(s->fwd, s->W * s->layers);
    expert_server__clear_slots(s->bwd, s->W);
    s->phase = PH_FORWARD;
    s->layer = 0;
}

void expert_server_inject(expert_server_t *s, const void *const *frames, const size_t *sizes,
                          int nframes, const uint8_t *identity, size_t identity_len,
                          const char *user_id)
{
    struct moe_wire_msg m;
    char err[256];
    int rc = moe_wire_decode_as(frames, sizes, nframes, &s->lim, identity, identity_len, user_id,
                                &m, err, sizeof err);
    handle(s, &m, rc, err);
}
