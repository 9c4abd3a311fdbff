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
    float *buf; /* 3E */
};

coord_client_t *coord_client_new(void *zmq_ctx, const char *endpoint, int role, int index,
                                 int n_experts, int64_t timeout_ms, char *err, size_t errlen)
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
    char id[48];
    snprintf(id, sizeof id, "%s-%d", role == 2 ? "moe-server" : "moe-worker", index);
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

int coord_client_register(coord_client_t *c, const char *endpoint_served, char *err,
                          size_t errlen)
{
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_REGISTER;
    o.rank = (uint32_t)c->index;
    o.request_id = ++c->request_id;
    o.role = (uint32_t)c->role;
    o.endpoint = endpoint_served;
    int rc = moe_wire_send(c->sock, NULL, 0, &o, NULL, 0, err, errlen);
    if (rc)
        return rc;
    struct moe_wire_msg m;
    rc = await(c, o.request_id, MOE__MSG_TYPE__MSG_REGISTER, 0, &m, err, errlen);
    if (!rc)
        moe_wire_msg_free(&m);
    return rc;
}

int coord_client_placement(coord_client_t *c, char *servers, size_t servers_cap,
                           char *placement, size_t placement_cap, char *err, size_t errlen)
{
    const double deadline = now_ms() + (double)c->timeout_ms;
    for (;;) {
        struct moe_wire_out o = {0};
        o.type = MOE__MSG_TYPE__MSG_REGISTER;
        o.rank = (uint32_t)c->index;
        o.request_id = ++c->request_id;
        o.role = (uint32_t)c->role;
        int rc = moe_wire_send(c->sock, NULL, 0, &o, NULL, 0, err, errlen);
        struct moe_wire_msg m;
        if (!rc)
            rc = await(c, o.request_id, MOE__MSG_TYPE__MSG_REGISTER, 0, &m, err, errlen);
        if (rc)
            return rc;
        const Moe__Header *h = m.hdr;
        bool complete = h->n_servers > 0 && h->n_placement == (size_t)c->E;
        for (size_t s = 0; complete && s < h->n_servers; s++)
            complete = h->servers[s][0] != '\0';
        if (complete) {
            size_t o1 = 0, o2 = 0;
            servers[0] = placement[0] = '\0';
            for (size_t s = 0; s < h->n_servers && o1 < servers_cap; s++)
                o1 += (size_t)snprintf(servers + o1, servers_cap - o1, "%s%s", s ? "," : "",
                                       h->servers[s]);
            for (size_t e = 0; e < h->n_placement && o2 < placement_cap; e++)
                o2 += (size_t)snprintf(placement + o2, placement_cap - o2, "%s%d", e ? "," : "",
                                       h->placement[e]);
            moe_wire_msg_free(&m);
            if (o1 >= servers_cap || o2 >= placement_cap) {
                snprintf(err, errlen, "the coordinator's placement does not fit in %zu bytes",
                         servers_cap);
                return MOE_ERR_RANGE;
            }
            return 0;
        }
        moe_wire_msg_free(&m);
        if (now_ms() > deadline) {
            snprintf(err, errlen,
                     "not every expert server registered with the coordinator (%s) within %" PRId64
                     " ms",
                     c->endpoint, c->timeout_ms);
            return MOE_ERR_IO;
        }
        struct timespec ts = {0, 100 * 1000000};
        nanosleep(&ts, NULL);
    }
}

int coord_client_stats(coord_client_t *c, int64_t step, const float *imp, const float *load,
                       const float *rows, double loss, double tokens_per_sec, float *g_imp,
                       float *g_load, float *g_rows, char *err, size_t errlen)
{
    const size_t E = (size_t)c->E;
    memcpy(c->buf, imp, sizeof(float) * E);
    memcpy(c->buf + E, load, sizeof(float) * E);
    memcpy(c->buf + 2 * E, rows, sizeof(float) * E);
    uint32_t one = 1;
    int32_t zero_id = 0;
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_STATS;
    o.step = (uint64_t)step;
    o.rank = (uint32_t)c->index;
    o.role = (uint32_t)c->role;
    o.request_id = ++c->request_id;
    o.expert_ids = &zero_id;
    o.row_counts = &one;
    o.n_experts = 1;
    o.dtype = MOE__DTYPE__DTYPE_F32;
    o.width = (uint32_t)(3 * E);
    o.loss = loss;
    o.tokens_per_sec = tokens_per_sec;
    int rc = moe_wire_send(c->sock, NULL, 0, &o, c->buf, 1, err, errlen);
    if (rc)
        return rc;
    struct moe_wire_msg m;
    rc = await(c, o.request_id, MOE__MSG_TYPE__MSG_STATS_REPLY, (uint32_t)(3 * E), &m, err, errlen);
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
    moe_wire_msg_free(&m);
    return 0;
}

int coord_client_heartbeat(coord_client_t *c, int64_t step, uint64_t rows, uint64_t bytes,
                           uint64_t errors, double latency, char *err, size_t errlen)
{
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_HEARTBEAT;
    o.step = (uint64_t)step;
    o.rank = (uint32_t)c->index;
    o.request_id = ++c->request_id;
    o.role = (uint32_t)c->role;
    o.rows_total = rows;
    o.bytes_total = bytes;
    o.errors_total = errors;
    o.latency_seconds = latency;
    return moe_wire_send(c->sock, NULL, 0, &o, NULL, 0, err, errlen);
}

void coord_client_drain(coord_client_t *c)
{
    for (int i = 0; i < 64; i++) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        int more = 0;
        size_t len = sizeof more;
        if (zmq_msg_recv(&part, c->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&part);
            return;
        }
        zmq_getsockopt(c->sock, ZMQ_RCVMORE, &more, &len);
        zmq_msg_close(&part);
        while (more) {
            zmq_msg_init(&part);
            if (zmq_msg_recv(&part, c->sock, 0) < 0) {
                zmq_msg_close(&part);
                return;
            }
            zmq_getsockopt(c->sock, ZMQ_RCVMORE, &more, &len);
            zmq_msg_close(&part);
        }
    }
}
