/* Remote expert backend over ZeroMQ (see expert_remote.h). */
#include "expert_remote.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "moe_err.h"
#include "moe_tensor.h"
#include "moe_wire.h"
#include "moe_time.h"

struct server_io {
    void *sock;
    int n;            /* experts of this request */
    int32_t *ids;
    uint32_t *rows;
    size_t total;     /* rows of this request */
    size_t *src;      /* (n) offset in rows of each expert in the caller's packed array */
    bool done;
    /* a hierarchical MoE's group messages: the rows' indices and primary
     * gates, or the groups' statistics gradients, gathered for the header */
    uint32_t *g_index;
    float *g_gate, *g_stats;
    size_t g_cap_rows, g_cap_stats;
};

/* A group message's extras (NULL for an expert message): what goes in the
 * headers and where the replies' extras go. */
struct group_io {
    const struct moe_group_batch *b;
    bool backward;
};

/* The backend of one MoE layer (expert_remote_backend_layer). */
struct remote_layer {
    struct expert_remote *r;
    uint32_t layer;
};

struct expert_remote {
    const struct moe_cluster *cl;
    int rank, D;
    uint32_t epoch, bwd_flags; /* stamped on every message; flags on backwards */
    uint32_t layer;            /* stamped on training forwards and backwards */
    struct remote_layer layers[EXPERT_REMOTE_LAYERS];
    int64_t timeout_ms;
    Moe__DType dtype;
    struct moe_wire_limits lim;
    struct server_io *io;
    moe_wire_pool_t *pool; /* payloads, lent to ZeroMQ while they are sent */
    uint64_t request_id;
    int64_t row0;
    uint64_t bytes_sent, bytes_recv; /* tensor payload of training steps */
    size_t last_reply_bytes;         /* payload bytes of the last gather */
    int64_t min_reply_step, max_reply_step; /* header.step range of the last gather */
    int *g_rows;                            /* (n_experts) a group message's rows per group */
};

expert_remote_t *expert_remote_new(void *zmq_ctx, const struct moe_net *net,
                                   const struct moe_cluster *cl, int rank, int D,
                                   int64_t timeout_ms, Moe__DType dtype, size_t max_bytes,
                                   char *err, size_t errlen)
{
    expert_remote_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->cl = cl;
    r->rank = rank;
    r->D = D;
    r->timeout_ms = timeout_ms;
    r->dtype = dtype;
    r->lim = (struct moe_wire_limits){max_bytes, 0, (uint32_t)cl->n_experts, (uint64_t)1 << 31};
    r->io = calloc((size_t)cl->n_servers, sizeof *r->io);
    r->pool = moe_wire_pool_new();
    r->g_rows = calloc((size_t)cl->n_experts, sizeof(int));
    if (!r->io || !r->pool || !r->g_rows)
        goto fail;
    char id[32];
    snprintf(id, sizeof id, "moe-worker-%d", rank);
    for (int s = 0; s < cl->n_servers; s++) {
        struct server_io *io = &r->io[s];
        io->ids = malloc(sizeof(int32_t) * (size_t)cl->n_experts);
        io->rows = malloc(sizeof(uint32_t) * (size_t)cl->n_experts);
        io->src = malloc(sizeof(size_t) * (size_t)cl->n_experts);
        io->sock = zmq_socket(zmq_ctx, ZMQ_DEALER);
        int linger = 0;
        int64_t maxmsg = (int64_t)max_bytes + 4096;
        if (!io->ids || !io->rows || !io->src || !io->sock ||
            zmq_setsockopt(io->sock, ZMQ_LINGER, &linger, sizeof linger) ||
            zmq_setsockopt(io->sock, ZMQ_ROUTING_ID, id, strlen(id)) ||
            zmq_setsockopt(io->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg)) {
            moe_err_set(err, errlen, "cannot connect to expert server %d (%s): %s", s, cl->servers[s],
                     zmq_strerror(zmq_errno()));
            goto fail;
        }
        char what[64];
        snprintf(what, sizeof what, "expert server %d", s);
        if (moe_net_connect(net, io->sock, MOE_SEC_SERVER, cl->servers[s], what, err, errlen))
            goto fail;
    }
    return r;
fail:
    expert_remote_destroy(&r);
    return NULL;
}

void expert_remote_destroy(expert_remote_t **rp)
{
    if (!rp || !*rp)
        return;
    expert_remote_t *r = *rp;
    for (int s = 0; r->io && s < r->cl->n_servers; s++) {
        struct server_io *io = &r->io[s];
        if (io->sock)
            zmq_close(io->sock);
        free(io->ids);
        free(io->rows);
        free(io->src);
        free(io->g_index);
        free(io->g_gate);
        free(io->g_stats);
    }
    free(r->g_rows);
    /* after the sockets: closing them gives back what ZeroMQ still held */
    moe_wire_pool_destroy(&r->pool);
    free(r->io);
    free(r);
    *rp = NULL;
}

void expert_remote_set_epoch(expert_remote_t *r, uint32_t epoch) { r->epoch = epoch; }
void expert_remote_set_backward_flags(expert_remote_t *r, uint32_t flags) { r->bwd_flags = flags; }

void expert_remote_set_row0(expert_remote_t *r, int64_t row0) { r->row0 = row0; }


/* Waits for one reply per server: type `want`, this request, the layout
 * sent. Copies each payload to out (same packing as the request's input).
 * `width` is the row width expected (D, or P + S for a fetch). */
/* A group reply's extras (gio): the statistics of each group (forward) or
 * each row's primary-gate gradient (backward), into the caller's batch. 0,
 * or MOE_ERR_FORMAT when the reply carries another count of them. */
static int group_extras(const struct group_io *gio, const struct server_io *io,
                        const Moe__Header *h)
{
    const struct moe_group_batch *b = gio->b;
    const size_t B3 = 3 * (size_t)b->B;
    if (!gio->backward) {
        if (h->n_group_stats != B3 * (size_t)io->n)
            return MOE_ERR_FORMAT;
        for (int j = 0; j < io->n; j++)
            memcpy(b->stats + (size_t)io->ids[j] * B3, h->group_stats + (size_t)j * B3,
                   sizeof(float) * B3);
        return 0;
    }
    if (h->n_row_gate != io->total)
        return MOE_ERR_FORMAT;
    size_t off = 0;
    for (int j = 0; j < io->n; j++) {
        memcpy(b->dgp + io->src[j], h->row_gate + off, sizeof(float) * io->rows[j]);
        off += io->rows[j];
    }
    return 0;
}

static int gather_replies(expert_remote_t *r, Moe__MsgType want, uint64_t req, size_t width,
                          float *out, const struct group_io *gio, char *what, size_t what_len)
{
    const int S = r->cl->n_servers;
    r->last_reply_bytes = 0;
    r->min_reply_step = INT64_MAX;
    r->max_reply_step = INT64_MIN;
    if (S <= 0)
        return 0;
    int left = S;
    for (int s = 0; s < S; s++)
        r->io[s].done = false;
    const double deadline = moe_now_ms() + (double)r->timeout_ms;
    zmq_pollitem_t *items = calloc((size_t)S, sizeof *items);
    if (!items)
        return MOE_ERR_NOMEM;
    int rc = 0;
    while (left > 0 && rc == 0) {
        for (int s = 0; s < S; s++)
            items[s] = (zmq_pollitem_t){r->io[s].sock, 0, r->io[s].done ? 0 : ZMQ_POLLIN, 0};
        double wait = deadline - moe_now_ms();
        if (wait <= 0) {
            for (int s = 0; s < S; s++) {
                if (!r->io[s].done) {
                    snprintf(what, what_len,
                             "expert server %d (%s) did not answer request %" PRIu64
                             " within %" PRId64 " ms (it is down, or another worker of this"
                             " step is late or gone)",
                             s, r->cl->servers[s], req, r->timeout_ms);
                    break;
                }
            }
            rc = MOE_ERR_IO;
            break;
        }
        int n = zmq_poll(items, S, (long)wait + 1);
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            snprintf(what, what_len, "poll failed: %s", zmq_strerror(zmq_errno()));
            rc = MOE_ERR_IO;
            break;
        }
        for (int s = 0; s < S && rc == 0; s++) {
            if (!(items[s].revents & ZMQ_POLLIN))
                continue;
            struct server_io *io = &r->io[s];
            struct moe_wire_limits lim = r->lim;
            lim.width = (uint32_t)width;
            struct moe_wire_msg m;
            memset(&m, 0, sizeof m);
            char err[256];
            int e = moe_wire_recv(io->sock, false, ZMQ_DONTWAIT, &lim, &m, err, sizeof err);
            if (e == MOE_ERR_STATE && !m.hdr)
                continue;
            if (e) {
                snprintf(what, what_len, "expert server %d (%s) sent a bad reply: %s", s,
                         r->cl->servers[s], err);
                rc = e;
            } else if (m.hdr->request_id != req) {
                /* a late reply to an earlier request (after a timeout): drop it */
            } else if (m.hdr->type == MOE__MSG_TYPE__MSG_ERROR) {
                snprintf(what, what_len, "expert server %d (%s) refused: %s", s, r->cl->servers[s],
                         m.hdr->error_text ? m.hdr->error_text : "(no text)");
                rc = m.hdr->error_code < 0 ? m.hdr->error_code : MOE_ERR_STATE;
            } else if (m.hdr->type != want || m.rows != io->total ||
                       m.hdr->n_expert_ids != (size_t)io->n) {
                snprintf(what, what_len, "expert server %d (%s) answered with another layout", s,
                         r->cl->servers[s]);
                rc = MOE_ERR_FORMAT;
            } else {
                for (int j = 0; j < io->n; j++)
                    if (m.hdr->expert_ids[j] != io->ids[j] || m.hdr->row_counts[j] != io->rows[j])
                        rc = MOE_ERR_FORMAT;
                if (!rc && gio)
                    rc = group_extras(gio, io, m.hdr);
                if (rc) {
                    snprintf(what, what_len, "expert server %d (%s) answered with another layout",
                             s, r->cl->servers[s]);
                } else {
                    r->last_reply_bytes +=
                        m.rows * width * moe_wire_dtype_size((int)m.hdr->dtype);
                    if ((int64_t)m.hdr->step < r->min_reply_step)
                        r->min_reply_step = (int64_t)m.hdr->step;
                    if ((int64_t)m.hdr->step > r->max_reply_step)
                        r->max_reply_step = (int64_t)m.hdr->step;
                    size_t off = 0;
                    /* (a reply of no rows has no data frame: m.data is NULL) */
                    for (int j = 0; j < io->n; j++) {
                        if (io->rows[j])
                            memcpy(out + io->src[j] * width, m.data + off * width,
                                   sizeof(float) * io->rows[j] * width);
                        off += io->rows[j];
                    }
                    io->done = true;
                    left--;
                }
            }
            moe_wire_msg_free(&m);
        }
    }
    free(items);
    return rc;
}

/* Splits the packed batch by server and sends one message to each. */
/* A group message's header extras for server io (gio->b's rows of its
 * groups): the rows' indices and primary gates (forward) or the groups'
 * statistics gradients (backward), gathered into io's buffers. */
static int group_header(struct server_io *io, const struct group_io *gio, struct moe_wire_out *h)
{
    const struct moe_group_batch *b = gio->b;
    const size_t B2 = 2 * (size_t)b->B, R = io->total ? io->total : 1;
    if (R > io->g_cap_rows) {
        uint32_t *ix = realloc(io->g_index, sizeof(uint32_t) * R);
        if (ix)
            io->g_index = ix;
        float *g = realloc(io->g_gate, sizeof(float) * R);
        if (g)
            io->g_gate = g;
        if (!ix || !g)
            return MOE_ERR_NOMEM;
        io->g_cap_rows = R;
    }
    if (B2 * (size_t)(io->n ? io->n : 1) > io->g_cap_stats) {
        float *st = realloc(io->g_stats, sizeof(float) * B2 * (size_t)(io->n ? io->n : 1));
        if (!st)
            return MOE_ERR_NOMEM;
        io->g_stats = st;
        io->g_cap_stats = B2 * (size_t)(io->n ? io->n : 1);
    }
    size_t o = 0;
    for (int j = 0; j < io->n; j++) {
        if (gio->backward) {
            memcpy(io->g_stats + (size_t)j * B2, b->dstats + (size_t)io->ids[j] * B2,
                   sizeof(float) * B2);
            continue;
        }
        memcpy(io->g_index + o, b->row_index + io->src[j], sizeof(uint32_t) * io->rows[j]);
        memcpy(io->g_gate + o, b->gp + io->src[j], sizeof(float) * io->rows[j]);
        o += io->rows[j];
    }
    if (gio->backward) {
        h->group_stats = io->g_stats;
        h->n_group_stats = B2 * (size_t)io->n;
    } else {
        h->row_index = io->g_index;
        h->row_gate = io->g_gate;
        h->n_row_index = h->n_row_gate = io->total;
    }
    return 0;
}

static int send_all(expert_remote_t *r, Moe__MsgType type, int64_t step, bool eval, int n,
                    const int32_t *ids, const int *rows, const float *x, uint64_t req,
                    const struct group_io *gio, char *what, size_t what_len)
{
    const size_t D = (size_t)r->D;
    for (int s = 0; s < r->cl->n_servers; s++) {
        r->io[s].n = 0;
        r->io[s].total = 0;
    }
    size_t off = 0;
    for (int e = 0; e < n; e++) {
        /* a group lives where its experts are */
        struct server_io *io = &r->io[r->cl->server_of[gio ? ids[e] * gio->b->B : ids[e]]];
        io->ids[io->n] = ids[e];
        io->rows[io->n] = (uint32_t)rows[e];
        io->src[io->n] = off;
        io->n++;
        io->total += (size_t)rows[e];
        off += (size_t)rows[e];
    }
    for (int s = 0; s < r->cl->n_servers; s++) {
        struct server_io *io = &r->io[s];
        /* gathered straight into the buffer ZeroMQ will send from */
        float *buf = moe_wire_pool_take(r->pool, io->total * D);
        if (!buf)
            return MOE_ERR_NOMEM;
        size_t o = 0;
        for (int j = 0; j < io->n; j++) {
            memcpy(buf + o * D, x + io->src[j] * D, sizeof(float) * io->rows[j] * D);
            o += io->rows[j];
        }
        struct moe_wire_out h = {0};
        h.type = type;
        h.step = (uint64_t)step;
        h.rank = (uint32_t)r->rank;
        h.request_id = req;
        h.expert_ids = io->ids;
        h.row_counts = io->rows;
        h.n_experts = (size_t)io->n;
        h.dtype = r->dtype;
        h.width = (uint32_t)D;
        h.row0 = (uint64_t)r->row0;
        h.eval = eval;
        h.layer = r->layer;
        h.epoch = r->epoch;
        h.flags = type == MOE__MSG_TYPE__MSG_EXPERT_BACKWARD ||
                          type == MOE__MSG_TYPE__MSG_GROUP_BACKWARD
                      ? r->bwd_flags
                      : 0;
        if (gio && group_header(io, gio, &h)) {
            moe_wire_pool_give(buf);
            return MOE_ERR_NOMEM;
        }
        char err[256];
        if (moe_wire_send_pooled(io->sock, NULL, 0, &h, buf, io->total, err, sizeof err)) {
            snprintf(what, what_len, "cannot send to expert server %d (%s): %s", s,
                     r->cl->servers[s], err);
            return MOE_ERR_IO;
        }
    }
    return 0;
}

/* Payload bytes of a request of `n` experts' rows. */
static uint64_t payload_bytes(const expert_remote_t *r, int n, const int *rows)
{
    uint64_t total = 0;
    for (int e = 0; e < n; e++)
        total += (uint64_t)rows[e];
    return total * (uint64_t)r->D * moe_wire_dtype_size((int)r->dtype);
}

static int remote_forward(void *ctx, int64_t step, bool train, int n, const int32_t *ids,
                          const int *rows, const float *x, float *y, char *what, size_t what_len)
{
    expert_remote_t *r = ctx;
    uint64_t req = ++r->request_id;
    int rc = send_all(r, MOE__MSG_TYPE__MSG_EXPERT_FORWARD, step, !train, n, ids, rows, x, req,
                      NULL, what, what_len);
    if (!rc)
        rc = gather_replies(r, MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY, req, (size_t)r->D, y, NULL,
                            what, what_len);
    if (!rc && train) {
        r->bytes_sent += payload_bytes(r, n, rows);
        r->bytes_recv += r->last_reply_bytes;
    }
    return rc;
}

static int remote_backward(void *ctx, int64_t step, int n, const int32_t *ids, const int *rows,
                           const float *dy, float *dx, char *what, size_t what_len)
{
    expert_remote_t *r = ctx;
    uint64_t req = ++r->request_id;
    int rc = send_all(r, MOE__MSG_TYPE__MSG_EXPERT_BACKWARD, step, false, n, ids, rows, dy, req,
                      NULL, what, what_len);
    if (!rc)
        rc = gather_replies(r, MOE__MSG_TYPE__MSG_EXPERT_BACKWARD_REPLY, req, (size_t)r->D, dx,
                            NULL, what, what_len);
    if (!rc) {
        r->bytes_sent += payload_bytes(r, n, rows);
        r->bytes_recv += r->last_reply_bytes;
    }
    return rc;
}

/* A hierarchical MoE's groups on the servers (issue 17): one GROUP_FORWARD
 * (or GROUP_BACKWARD) per server with its groups' rows, as for experts. */
static int remote_group_pass(expert_remote_t *r, int64_t step, bool train, bool backward,
                             const struct moe_group_batch *b, char *what, size_t what_len)
{
    const uint64_t req = ++r->request_id;
    const struct group_io gio = {b, backward};
    for (int i = 0; i < b->A; i++)
        r->g_rows[i] = (int)b->rows[i];
    const int64_t row0 = r->row0;
    r->row0 = b->row0;
    int rc = send_all(r, backward ? MOE__MSG_TYPE__MSG_GROUP_BACKWARD
                                  : MOE__MSG_TYPE__MSG_GROUP_FORWARD,
                      step, !train, b->A, b->ids, r->g_rows, backward ? b->dy : b->x, req, &gio,
                      what, what_len);
    r->row0 = row0;
    if (!rc)
        rc = gather_replies(r, backward ? MOE__MSG_TYPE__MSG_GROUP_BACKWARD_REPLY
                                        : MOE__MSG_TYPE__MSG_GROUP_FORWARD_REPLY,
                            req, (size_t)r->D, backward ? b->dx : b->y, &gio, what, what_len);
    if (!rc && train) {
        r->bytes_sent += payload_bytes(r, b->A, r->g_rows);
        r->bytes_recv += r->last_reply_bytes;
    }
    return rc;
}

static int remote_group_forward(void *ctx, int64_t step, bool train,
                                const struct moe_group_batch *b, char *what, size_t what_len)
{
    return remote_group_pass(ctx, step, train, false, b, what, what_len);
}

static int remote_group_backward(void *ctx, int64_t step, const struct moe_group_batch *b,
                                 char *what, size_t what_len)
{
    return remote_group_pass(ctx, step, true, true, b, what, what_len);
}

uint64_t expert_remote_wire_bytes(const expert_remote_t *r)
{
    return r->bytes_sent + r->bytes_recv;
}

static int remote_apply(void *ctx, int64_t t, double lr, char *what, size_t what_len)
{
    /* The servers apply the update when the step's last backward is in. */
    (void)ctx;
    (void)t;
    (void)lr;
    (void)what;
    (void)what_len;
    return 0;
}

void expert_remote_backend(struct moe_backend *b, expert_remote_t *r)
{
    *b = (struct moe_backend){.ctx = r, .forward = remote_forward, .backward = remote_backward,
                              .apply = remote_apply, .group_forward = remote_group_forward,
                              .group_backward = remote_group_backward};
}

/* Rows of `width` floats for ids (n; groups with MOE_FLAG_GROUPS in flags)
 * from the servers that hold them, into all (n, width), checking that they
 * are those after `step` steps. */
static int fetch_rows(expert_remote_t *r, int n, const int32_t *ids, int B, uint32_t flags,
                      size_t width, float *all, int64_t step, char *err, size_t errlen)
{
    uint32_t *zeros = calloc((size_t)(n ? n : 1), sizeof(uint32_t));
    if (!zeros)
        return MOE_ERR_NOMEM;
    uint64_t req = ++r->request_id;
    for (int s = 0; s < r->cl->n_servers; s++) {
        r->io[s].n = 0;
        r->io[s].total = 0;
    }
    for (int i = 0; i < n; i++) {
        struct server_io *io = &r->io[r->cl->server_of[ids[i] * B]];
        io->ids[io->n] = ids[i];
        io->rows[io->n] = 1;
        io->src[io->n] = (size_t)i;
        io->n++;
        io->total++;
    }
    int rc = 0;
    for (int s = 0; s < r->cl->n_servers && !rc; s++) {
        struct server_io *io = &r->io[s];
        struct moe_wire_out h = {0};
        h.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH;
        h.rank = (uint32_t)r->rank;
        h.epoch = r->epoch;
        h.flags = flags;
        h.request_id = req;
        h.expert_ids = io->ids;
        h.row_counts = zeros; /* a request carries no rows; the reply has one per id */
        h.n_experts = (size_t)io->n;
        rc = moe_wire_send(io->sock, NULL, 0, &h, NULL, 0, err, errlen);
    }
    free(zeros);
    if (!rc)
        rc = gather_replies(r, MOE__MSG_TYPE__MSG_EXPERT_FETCH_REPLY, req, width, all, NULL, err,
                            errlen);
    if (!rc && n > 0 && (r->min_reply_step != step || r->max_reply_step != step)) {
        moe_err_set(err, errlen, "expert servers hold %s of steps %" PRId64 "..%" PRId64
                 ", expected step %" PRId64, flags & MOE_FLAG_GROUPS ? "groups" : "experts",
                 r->min_reply_step, r->max_reply_step, step);
        rc = MOE_ERR_STATE;
    }
    return rc;
}

static int layer_forward(void *ctx, int64_t step, bool train, int n, const int32_t *ids,
                         const int *rows, const float *x, float *y, char *what, size_t what_len)
{
    struct remote_layer *l = ctx;
    l->r->layer = l->layer;
    return remote_forward(l->r, step, train, n, ids, rows, x, y, what, what_len);
}

static int layer_backward(void *ctx, int64_t step, int n, const int32_t *ids, const int *rows,
                          const float *dy, float *dx, char *what, size_t what_len)
{
    struct remote_layer *l = ctx;
    l->r->layer = l->layer;
    return remote_backward(l->r, step, n, ids, rows, dy, dx, what, what_len);
}

void expert_remote_backend_layer(struct moe_backend *b, expert_remote_t *r, int layer)
{
    r->layers[layer] = (struct remote_layer){r, (uint32_t)layer};
    b->ctx = &r->layers[layer];
    b->forward = layer_forward;
    b->backward = layer_backward;
    b->apply = remote_apply;
}

int expert_remote_fetch_chunk(int D, int H)
{
    const size_t bytes = sizeof(float) * (expert_ffn_param_count(D, H) + 3 * (size_t)(D + H));
    const size_t per = EXPERT_REMOTE_FETCH_BYTES / (bytes ? bytes : 1);
    return per < 1 ? 1 : per > 4096 ? 4096 : (int)per;
}

int expert_remote_fetch(expert_remote_t *r, expert_shard_t *dst, int64_t step, char *err,
                        size_t errlen)
{
    const int n = expert_shard_count(dst);
    int D, H;
    expert_shard_dims(dst, &D, &H);
    const size_t P = expert_ffn_param_count(D, H);
    const size_t S = expert_shard_opt_state_size(dst), width = P + S;
    const int per = expert_remote_fetch_chunk(D, H);
    int32_t *ids = calloc((size_t)(n ? n : 1), sizeof(int32_t));
    float *all = moe_alloc_floats((size_t)(n < per ? n : per) * width);
    int rc = MOE_ERR_NOMEM;
    if (!ids || !all)
        goto out;
    for (int i = 0; i < n; i++)
        ids[i] = expert_shard_id(dst, i);
    rc = 0;
    for (int i0 = 0; i0 < n && !rc; i0 += per) {
        const int m = n - i0 < per ? n - i0 : per;
        if ((rc = fetch_rows(r, m, ids + i0, 1, 0, width, all, step, err, errlen)))
            break;
        for (int i = 0; i < m; i++) {
            memcpy(expert_shard_params(dst, i0 + i), all + (size_t)i * width, sizeof(float) * P);
            memcpy(expert_shard_opt_state(dst, i0 + i), all + (size_t)i * width + P,
                   sizeof(float) * S);
        }
    }
out:
    free(ids);
    moe_free_floats(&all);
    return rc;
}

int expert_remote_fetch_groups(expert_remote_t *r, hmoe_groups_t *dst, int D, int B,
                               int64_t step, char *err, size_t errlen)
{
    const int n = hmoe_groups_count(dst);
    const size_t P = hmoe_groups_param_count(D, B), S = hmoe_groups_state_count(D, B);
    int32_t *ids = calloc((size_t)(n ? n : 1), sizeof(int32_t));
    float *all = moe_alloc_floats((size_t)n * (P + S));
    int rc = MOE_ERR_NOMEM;
    if (ids && all) {
        for (int i = 0; i < n; i++)
            ids[i] = hmoe_groups_id(dst, i);
        rc = fetch_rows(r, n, ids, B, MOE_FLAG_GROUPS, P + S, all, step, err, errlen);
    }
    for (int i = 0; i < n && !rc; i++) {
        memcpy(hmoe_groups_params(dst, i), all + (size_t)i * (P + S), sizeof(float) * P);
        memcpy(hmoe_groups_opt_state(dst, i), all + (size_t)i * (P + S) + P, sizeof(float) * S);
    }
    free(ids);
    moe_free_floats(&all);
    return rc;
}
