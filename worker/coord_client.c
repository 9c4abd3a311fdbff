/* Client side of the coordinator protocol (see coord_client.h). */
#include "coord_client.h"

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

struct coord_client {
    void *sock;
    const char *endpoint_name;
    char endpoint[256];
    int role, index, E;
    int64_t timeout_ms;
    uint64_t request_id;
    uint32_t epoch, seen_epoch; /* ours; the newest the coordinator mentioned */
    float *buf; /* 3E */
};

coord_client_t *coord_client_new(void *zmq_ctx, const char *endpoint, int role, int index,
                                 const char *served, int n_experts, int64_t timeout_ms, char *err,
                                 size_t errlen)
{
    coord_client_t *c = calloc(1, sizeof *c);
    if (!c || n_experts < 1)
        goto fail;
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    c->role = role;
    c->index = index;
    c->E = n_experts;
    c->timeout_ms = timeout_ms;
    c->buf = moe_alloc_floats(3 * (size_t)n_experts);
    char id[300];
    if (role == 2)
        snprintf(id, sizeof id, "moe-server@%s", served ? served : "");
    else if (role == COORD_ROLE_SERVER_HEARTBEAT)
        snprintf(id, sizeof id, "moe-heart@%s", served ? served : "");
    else
        snprintf(id, sizeof id, "moe-worker-%d", index);
    if (role == COORD_ROLE_SERVER_HEARTBEAT)
        c->role = 2; /* speaks for the server */
    c->sock = zmq_socket(zmq_ctx, ZMQ_DEALER);
    int linger = 0;
    if (!c->buf || !c->sock || zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(c->sock, ZMQ_ROUTING_ID, id, strlen(id)) ||
        zmq_connect(c->sock, endpoint) != 0) {
        snprintf(err, errlen, "cannot connect to the coordinator at %s: %s", endpoint,
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    return c;
fail:
    coord_client_destroy(&c);
    return NULL;
}

void coord_client_destroy(coord_client_t **cp)
{
    if (!cp || !*cp)
        return;
    coord_client_t *c = *cp;
    if (c->sock)
        zmq_close(c->sock);
    moe_free_floats(&c->buf);
    free(c);
    *cp = NULL;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + 1e-6 * (double)ts.tv_nsec;
}

/* Waits for the reply to request `req` of type `want`; drops stale replies. */
static int await(coord_client_t *c, uint64_t req, Moe__MsgType want, uint32_t width,
                 struct moe_wire_msg *m, char *err, size_t errlen)
{
    const double deadline = now_ms() + (double)c->timeout_ms;
    struct moe_wire_limits lim = {64u << 20, width, 1u << 20, 1u << 20};
    for (;;) {
        double wait = deadline - now_ms();
        if (wait <= 0) {
            snprintf(err, errlen,
                     "the coordinator (%s) did not answer within %" PRId64
                     " ms (it is down, or another worker of this step is late or gone)",
                     c->endpoint, c->timeout_ms);
            return MOE_ERR_IO;
        }
        zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, (long)wait + 1);
        if (n < 0 && zmq_errno() == EINTR)
            continue;
        if (n <= 0)
            continue;
        memset(m, 0, sizeof *m);
        char why[256];
        int rc = moe_wire_recv(c->sock, false, ZMQ_DONTWAIT, &lim, m, why, sizeof why);
        if (rc == MOE_ERR_STATE && !m->hdr)
            continue;
        if (rc) {
            snprintf(err, errlen, "bad reply from the coordinator (%s): %s", c->endpoint, why);
            moe_wire_msg_free(m);
            return rc;
        }
        if (m->hdr->epoch > c->seen_epoch)
            c->seen_epoch = m->hdr->epoch;
        if (m->hdr->request_id != req) {
            moe_wire_msg_free(m);
            continue;
        }
        if (m->hdr->type == MOE__MSG_TYPE__MSG_ERROR) {
            snprintf(err, errlen, "the coordinator (%s) refused: %s", c->endpoint,
                     m->hdr->error_text ? m->hdr->error_text : "");
            rc = m->hdr->error_code < 0 ? m->hdr->error_code : MOE_ERR_STATE;
            moe_wire_msg_free(m);
            return rc;
        }
        if (m->hdr->type != want) {
            snprintf(err, errlen, "the coordinator (%s) answered message type %d, expected %d",
                     c->endpoint, (int)m->hdr->type, (int)want);
            moe_wire_msg_free(m);
            return MOE_ERR_FORMAT;
        }
        return 0;
    }
}

/* A request of this client: type, step, its rank and role, a fresh
 * request id, its epoch. */
static struct moe_wire_out request(coord_client_t *c, Moe__MsgType type, int64_t step)
{
    struct moe_wire_out o = {0};
    o.type = type;
    o.step = (uint64_t)step;
    o.rank = (uint32_t)c->index;
    o.role = (uint32_t)c->role;
    o.request_id = ++c->request_id;
    o.epoch = c->epoch;
    return o;
}

/* Sends o (with `rows` rows of data) and waits for its reply of type want. */
static int call(coord_client_t *c, const struct moe_wire_out *o, const float *data, uint64_t rows,
                Moe__MsgType want, uint32_t width, struct moe_wire_msg *m, char *err, size_t errlen)
{
    int rc = moe_wire_send(c->sock, NULL, 0, o, data, rows, err, errlen);
    return rc ? rc : await(c, o->request_id, want, width, m, err, errlen);
}

int coord_client_register(coord_client_t *c, const char *endpoint_served, char *err,
                          size_t errlen)
{
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_REGISTER, 0);
    o.endpoint = endpoint_served;
    struct moe_wire_msg m;
    int rc = call(c, &o, NULL, 0, MOE__MSG_TYPE__MSG_REGISTER, 0, &m, err, errlen);
    if (!rc)
        moe_wire_msg_free(&m);
    return rc;
}

int coord_client_stats(coord_client_t *c, int64_t step, const float *imp, const float *load,
                       const float *rows, double loss, double tokens_per_sec, float *g_imp,
                       float *g_load, float *g_rows, uint32_t *flags, char *err, size_t errlen)
{
    const size_t E = (size_t)c->E;
    memcpy(c->buf, imp, sizeof(float) * E);
    memcpy(c->buf + E, load, sizeof(float) * E);
    memcpy(c->buf + 2 * E, rows, sizeof(float) * E);
    uint32_t one = 1;
    int32_t zero_id = 0;
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_STATS, step);
    o.expert_ids = &zero_id;
    o.row_counts = &one;
    o.n_experts = 1;
    o.dtype = MOE__DTYPE__DTYPE_F32;
    o.width = (uint32_t)(3 * E);
    o.loss = loss;
    o.tokens_per_sec = tokens_per_sec;
    struct moe_wire_msg m;
    int rc = call(c, &o, c->buf, 1, MOE__MSG_TYPE__MSG_STATS_REPLY, (uint32_t)(3 * E), &m, err,
                  errlen);
    if (rc)
        return rc;
    if (m.rows != 1 || m.hdr->step != (uint64_t)step) {
        snprintf(err, errlen, "the coordinator (%s) answered statistics of another step",
                 c->endpoint);
        moe_wire_msg_free(&m);
        return MOE_ERR_FORMAT;
    }
    memcpy(g_imp, m.data, sizeof(float) * E);
    memcpy(g_load, m.data + E, sizeof(float) * E);
    memcpy(g_rows, m.data + 2 * E, sizeof(float) * E);
    if (flags)
        *flags = m.hdr->flags;
    moe_wire_msg_free(&m);
    return 0;
}

int coord_client_heartbeat(coord_client_t *c, int64_t step, uint64_t rows, uint64_t bytes,
                           uint64_t errors, double latency, char *err, size_t errlen)
{
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_HEARTBEAT, step);
    o.rows_total = rows;
    o.bytes_total = bytes;
    o.errors_total = errors;
    o.latency_seconds = latency;
    return moe_wire_send(c->sock, NULL, 0, &o, NULL, 0, err, errlen);
}

void coord_client_drain(coord_client_t *c)
{
    struct moe_wire_limits lim = {64u << 20, 0, 1u << 20, 1u << 20};
    for (int i = 0; i < 64; i++) {
        struct moe_wire_msg m;
        memset(&m, 0, sizeof m);
        char why[128];
        int rc = moe_wire_recv(c->sock, false, ZMQ_DONTWAIT, &lim, &m, why, sizeof why);
        if (rc == MOE_ERR_STATE && !m.hdr) {
            moe_wire_msg_free(&m);
            return;
        }
        if (m.hdr && m.hdr->epoch > c->seen_epoch)
            c->seen_epoch = m.hdr->epoch;
        moe_wire_msg_free(&m);
    }
}

void coord_client_set_epoch(coord_client_t *c, uint32_t epoch) { c->epoch = epoch; }
uint32_t coord_client_epoch(const coord_client_t *c) { return c->epoch; }
uint32_t coord_client_seen_epoch(const coord_client_t *c) { return c->seen_epoch; }

void coord_epoch_free(struct coord_epoch *e)
{
    free(e->servers);
    free(e->placement);
    e->servers = e->placement = NULL;
}

int coord_client_epoch_wait(coord_client_t *c, int64_t step, uint32_t flags,
                            struct coord_epoch *out, char *err, size_t errlen)
{
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_EPOCH_WAIT, step);
    o.flags = flags;
    struct moe_wire_msg m;
    int rc = call(c, &o, NULL, 0, MOE__MSG_TYPE__MSG_EPOCH, 0, &m, err, errlen);
    if (rc)
        return rc;
    const Moe__Header *h = m.hdr;
    memset(out, 0, sizeof *out);
    out->epoch = h->epoch;
    out->flags = h->flags;
    out->step = (int64_t)h->step;
    out->index = (int)h->rank;
    out->placement_version = h->placement_version;
    snprintf(out->checkpoint, sizeof out->checkpoint, "%s", h->checkpoint ? h->checkpoint : "");
    if (!(h->flags & (MOE_FLAG_NOT_READY | MOE_FLAG_DRAINED | MOE_FLAG_FINISHED))) {
        if (h->n_placement != (size_t)c->E || h->n_servers == 0) {
            snprintf(err, errlen, "the coordinator's epoch %u has %zu placement entries for %d "
                     "experts and %zu servers", h->epoch, h->n_placement, c->E, h->n_servers);
            moe_wire_msg_free(&m);
            return MOE_ERR_FORMAT;
        }
        size_t cap1 = 1, cap2 = 12 * h->n_placement + 1;
        for (size_t i = 0; i < h->n_servers; i++)
            cap1 += strlen(h->servers[i]) + 1;
        out->servers = malloc(cap1);
        out->placement = malloc(cap2);
        if (!out->servers || !out->placement) {
            coord_epoch_free(out);
            moe_wire_msg_free(&m);
            return MOE_ERR_NOMEM;
        }
        size_t o1 = 0, o2 = 0;
        out->servers[0] = out->placement[0] = '\0';
        for (size_t i = 0; i < h->n_servers; i++)
            o1 += (size_t)snprintf(out->servers + o1, cap1 - o1, "%s%s", i ? "," : "", h->servers[i]);
        for (size_t e = 0; e < h->n_placement; e++)
            o2 += (size_t)snprintf(out->placement + o2, cap2 - o2, "%s%d", e ? "," : "",
                                   h->placement[e]);
    }
    moe_wire_msg_free(&m);
    return 0;
}

int coord_client_checkpoint_done(coord_client_t *c, int64_t step, const char *file, char *err,
                                 size_t errlen)
{
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_CHECKPOINT_DONE, step);
    o.endpoint = file;
    struct moe_wire_msg m;
    int rc = call(c, &o, NULL, 0, MOE__MSG_TYPE__MSG_ACK, 0, &m, err, errlen);
    if (!rc)
        moe_wire_msg_free(&m);
    return rc;
}
