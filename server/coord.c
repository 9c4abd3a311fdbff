/* Coordinator state and message handling (see coord.h). */
#include "coord.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "moe_cluster.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_prom.h"
#include "moe_wire.h"

struct pending {          /* a worker waiting for the global vectors */
    bool waiting;
    uint8_t identity[256];
    size_t identity_len;
    uint64_t request_id;
};

struct coord {
    const struct trainer_config *cfg;
    struct moe_cluster cl;
    coord_stats_t *stats;
    void *ctx, *sock;
    struct coord_member *servers, *workers;
    struct pending *pending;
    struct moe_wire_limits lim;
    float *reply;         /* 3E */
    uint32_t placement_version;
    uint64_t errors, messages;
};

coord_t *coord_new(const struct trainer_config *cfg, char *err, size_t errlen)
{
    coord_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cfg = cfg;
    if (moe_cluster_parse(&c->cl, cfg->servers, cfg->workers, cfg->placement, cfg->n_experts, err,
                          errlen))
        goto fail;
    if (!cfg->coordinator[0]) {
        snprintf(err, errlen, "coordinator: no endpoint to bind (use --coordinator tcp://HOST:PORT)");
        goto fail;
    }
    c->stats = coord_stats_new(cfg->n_experts, c->cl.n_workers, 0.9, 1000);
    c->servers = calloc((size_t)c->cl.n_servers, sizeof *c->servers);
    c->workers = calloc((size_t)c->cl.n_workers, sizeof *c->workers);
    c->pending = calloc((size_t)c->cl.n_workers, sizeof *c->pending);
    c->reply = calloc(3 * (size_t)cfg->n_experts, sizeof(float));
    if (!c->stats || !c->servers || !c->workers || !c->pending || !c->reply) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int s = 0; s < c->cl.n_servers; s++)
        snprintf(c->servers[s].endpoint, sizeof c->servers[s].endpoint, "%s", c->cl.servers[s]);
    c->placement_version = 1;
    c->lim = (struct moe_wire_limits){1u << 20, 0, (uint32_t)cfg->n_experts, 1u << 20};
    c->ctx = zmq_ctx_new();
    c->sock = c->ctx ? zmq_socket(c->ctx, ZMQ_ROUTER) : NULL;
    int linger = 0;
    int64_t maxmsg = 2 << 20;
    if (!c->sock || zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        zmq_bind(c->sock, cfg->coordinator) != 0) {
        snprintf(err, errlen, "cannot bind %s: %s", cfg->coordinator, zmq_strerror(zmq_errno()));
        goto fail;
    }
    return c;
fail:
    coord_destroy(&c);
    return NULL;
}

void coord_destroy(coord_t **cp)
{
    if (!cp || !*cp)
        return;
    coord_t *c = *cp;
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    coord_stats_destroy(&c->stats);
    free(c->servers);
    free(c->workers);
    free(c->pending);
    free(c->reply);
    moe_cluster_free(&c->cl);
    free(c);
    *cp = NULL;
}

void *coord_socket(coord_t *c) { return c->sock; }
const coord_stats_t *coord_stats(const coord_t *c) { return c->stats; }
int coord_n_servers(const coord_t *c) { return c->cl.n_servers; }
int coord_n_workers(const coord_t *c) { return c->cl.n_workers; }
const struct coord_member *coord_server(const coord_t *c, int i) { return &c->servers[i]; }
const struct coord_member *coord_worker(const coord_t *c, int r) { return &c->workers[r]; }
int coord_server_of(const coord_t *c, int e) { return c->cl.server_of[e]; }
uint32_t coord_placement_version(const coord_t *c) { return c->placement_version; }
uint64_t coord_errors(const coord_t *c) { return c->errors; }

/* ------------------------------------------------------------------------ */

static void reply_error(coord_t *c, const struct moe_wire_msg *m, int code, const char *text)
{
    c->errors++;
    if (c->errors <= 20 || c->errors % 100 == 0) {
        char safe[200];
        moe_log_sanitize(safe, sizeof safe, text, strlen(text));
        moe_warn("rejected message #%" PRIu64 ": %s", c->errors, safe);
    }
    if (!m->identity_len)
        return;
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_ERROR;
    o.step = m->hdr ? m->hdr->step : 0;
    o.request_id = m->hdr ? m->hdr->request_id : 0;
    o.error_code = code;
    o.error_text = text;
    char err[128];
    moe_wire_send(c->sock, m->identity, m->identity_len, &o, NULL, 0, err, sizeof err);
}

/* The member a message speaks for, checked against its routing id. */
static struct coord_member *member_of(coord_t *c, const struct moe_wire_msg *m, char *why,
                                      size_t len)
{
    const Moe__Header *h = m->hdr;
    const bool server = h->role == 2;
    const int n = server ? c->cl.n_servers : c->cl.n_workers;
    if (h->role != 1 && h->role != 2) {
        snprintf(why, len, "role %u is neither worker (1) nor expert server (2)", h->role);
        return NULL;
    }
    if (h->rank >= (uint32_t)n) {
        snprintf(why, len, "%s %u is not in this cluster (%d)", server ? "server" : "worker",
                 h->rank, n);
        return NULL;
    }
    char id[48];
    snprintf(id, sizeof id, "%s-%u", server ? "moe-server" : "moe-worker", h->rank);
    if (m->identity_len != strlen(id) || memcmp(m->identity, id, m->identity_len) != 0) {
        snprintf(why, len, "%s %u must connect as \"%s\"", server ? "server" : "worker", h->rank, id);
        return NULL;
    }
    return server ? &c->servers[h->rank] : &c->workers[h->rank];
}

/* Acknowledges a REGISTER or HEARTBEAT. A REGISTER is answered with the
 * placement: the server of each expert and the endpoint of each server as
 * the servers registered them ("" for one not registered yet). */
static void ack(coord_t *c, const struct moe_wire_msg *m, Moe__MsgType type)
{
    struct moe_wire_out o = {0};
    o.type = type;
    o.step = m->hdr->step;
    o.request_id = m->hdr->request_id;
    o.placement_version = c->placement_version;
    const char *eps[c->cl.n_servers > 0 ? c->cl.n_servers : 1];
    if (type == MOE__MSG_TYPE__MSG_REGISTER) {
        for (int s = 0; s < c->cl.n_servers; s++)
            eps[s] = c->servers[s].registered ? c->servers[s].endpoint : "";
        o.placement = c->cl.server_of;
        o.n_placement = (size_t)c->cl.n_experts;
        o.servers = eps;
        o.n_servers = (size_t)c->cl.n_servers;
    }
    char err[128];
    moe_wire_send(c->sock, m->identity, m->identity_len, &o, NULL, 0, err, sizeof err);
}

static void send_global(coord_t *c)
{
    const int E = c->cfg->n_experts;
    memcpy(c->reply, coord_stats_global_importance(c->stats), sizeof(float) * (size_t)E);
    memcpy(c->reply + E, coord_stats_global_load(c->stats), sizeof(float) * (size_t)E);
    memcpy(c->reply + 2 * E, coord_stats_global_rows(c->stats), sizeof(float) * (size_t)E);
    int32_t id0 = 0;
    uint32_t one = 1;
    for (int r = 0; r < c->cl.n_workers; r++) {
        struct pending *p = &c->pending[r];
        if (!p->waiting)
            continue;
        struct moe_wire_out o = {0};
        o.type = MOE__MSG_TYPE__MSG_STATS_REPLY;
        o.step = (uint64_t)coord_stats_completed_step(c->stats);
        o.request_id = p->request_id;
        o.expert_ids = &id0;
        o.row_counts = &one;
        o.n_experts = 1;
        o.dtype = MOE__DTYPE__DTYPE_F32;
        o.width = (uint32_t)(3 * E);
        o.placement_version = c->placement_version;
        char err[128];
        if (moe_wire_send(c->sock, p->identity, p->identity_len, &o, c->reply, 1, err, sizeof err))
            moe_warn("cannot send the global statistics to worker %d: %s", r, err);
        p->waiting = false;
    }
}

static void handle_stats(coord_t *c, struct moe_wire_msg *m, double now)
{
    char why[256];
    const Moe__Header *h = m->hdr;
    const int E = c->cfg->n_experts;
    struct coord_member *w = h->role == 1 ? member_of(c, m, why, sizeof why) : NULL;
    if (!w) {
        reply_error(c, m, MOE_ERR_STATE, h->role == 1 ? why : "statistics come from workers (role 1)");
        return;
    }
    if (m->rows != 1 || h->width != (uint32_t)(3 * E)) {
        snprintf(why, sizeof why, "statistics must be one row of 3 x %d floats", E);
        reply_error(c, m, MOE_ERR_SHAPE, why);
        return;
    }
    int rc = coord_stats_submit(c->stats, (int64_t)h->step, (int)h->rank, m->data, m->data + E,
                                m->data + 2 * E, h->loss, h->tokens_per_sec, why, sizeof why);
    if (rc < 0) {
        reply_error(c, m, rc, why);
        return;
    }
    w->last_seen = now;
    w->alive = true;
    w->step = (int64_t)h->step;
    w->messages++;
    struct pending *p = &c->pending[h->rank];
    p->waiting = true;
    memcpy(p->identity, m->identity, m->identity_len);
    p->identity_len = m->identity_len;
    p->request_id = h->request_id;
    if (rc == 1)
        send_global(c);
}

int coord_handle_one(coord_t *c, double now)
{
    struct moe_wire_msg m;
    memset(&m, 0, sizeof m);
    char err[256];
    c->lim.width = 0;
    int rc = moe_wire_recv(c->sock, true, ZMQ_DONTWAIT, &c->lim, &m, err, sizeof err);
    if (rc == MOE_ERR_STATE && !m.hdr && m.identity_len == 0)
        return 0;
    c->messages++;
    if (rc) {
        reply_error(c, &m, rc, err);
        moe_wire_msg_free(&m);
        return 1;
    }
    char why[256];
    struct coord_member *mem;
    switch (m.hdr->type) {
    case MOE__MSG_TYPE__MSG_REGISTER:
    case MOE__MSG_TYPE__MSG_HEARTBEAT:
        if (!(mem = member_of(c, &m, why, sizeof why))) {
            reply_error(c, &m, MOE_ERR_STATE, why);
            break;
        }
        if (m.hdr->type == MOE__MSG_TYPE__MSG_REGISTER) {
            if (strlen(m.hdr->endpoint) >= sizeof mem->endpoint) {
                reply_error(c, &m, MOE_ERR_RANGE, "endpoint longer than 255 bytes");
                break;
            }
            if (m.hdr->endpoint[0])
                snprintf(mem->endpoint, sizeof mem->endpoint, "%s", m.hdr->endpoint);
            mem->registered = true;
            moe_info("%s %u registered%s%s", m.hdr->role == 2 ? "server" : "worker", m.hdr->rank,
                     m.hdr->endpoint[0] ? " at " : "", m.hdr->endpoint);
        }
        mem->alive = true;
        mem->last_seen = now;
        mem->step = (int64_t)m.hdr->step;
        mem->messages++;
        if (m.hdr->role == 2 && m.hdr->type == MOE__MSG_TYPE__MSG_HEARTBEAT) {
            /* rows/s over the time between heartbeats */
            if (mem->rate_time > 0 && now > mem->rate_time && m.hdr->rows_total >= mem->rate_rows)
                mem->rows_per_sec = (double)(m.hdr->rows_total - mem->rate_rows) / (now - mem->rate_time);
            mem->rate_time = now;
            mem->rate_rows = m.hdr->rows_total;
            mem->rows_total = m.hdr->rows_total;
            mem->bytes_total = m.hdr->bytes_total;
            mem->errors_total = m.hdr->errors_total;
            mem->latency_seconds = isfinite(m.hdr->latency_seconds) ? m.hdr->latency_seconds : 0;
        }
        ack(c, &m, m.hdr->type);
        break;
    case MOE__MSG_TYPE__MSG_STATS:
        handle_stats(c, &m, now);
        break;
    default:
        snprintf(why, sizeof why, "message type %d is not served by the coordinator",
                 (int)m.hdr->type);
        reply_error(c, &m, MOE_ERR_FORMAT, why);
    }
    moe_wire_msg_free(&m);
    return 1;
}

void coord_check_liveness(coord_t *c, double now, double timeout)
{
    for (int s = 0; s < c->cl.n_servers; s++) {
        struct coord_member *m = &c->servers[s];
        if (m->alive && now - m->last_seen > timeout) {
            m->alive = false;
            moe_warn("server %d (%s) not heard from for %.1f s", s, m->endpoint, now - m->last_seen);
        }
    }
    for (int r = 0; r < c->cl.n_workers; r++) {
        struct coord_member *m = &c->workers[r];
        if (m->alive && now - m->last_seen > timeout)
            m->alive = false;
    }
}

/* ------------------------------------------------------------------------ */
/* Rendering */

static char *dump(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    return s;
}

char *coord_render_experts_json(const coord_t *c)
{
    const int E = c->cfg->n_experts;
    json_t *o = json_object(), *arr = json_array();
    double total = 0;
    for (int e = 0; e < E; e++)
        total += coord_stats_expert(c->stats, e)->rows_last;
    for (int e = 0; e < E; e++) {
        const struct coord_expert_stats *x = coord_stats_expert(c->stats, e);
        json_t *j = json_object();
        json_object_set_new(j, "id", json_integer(e));
        json_object_set_new(j, "server", json_integer(c->cl.server_of[e]));
        json_object_set_new(j, "rows_last", json_real(x->rows_last));
        json_object_set_new(j, "rows_total", json_real(x->rows_total));
        json_object_set_new(j, "importance_last", json_real(x->importance_last));
        json_object_set_new(j, "importance_avg", json_real(x->importance_avg));
        json_object_set_new(j, "load_last", json_real(x->load_last));
        json_object_set_new(j, "load_avg", json_real(x->load_avg));
        json_object_set_new(j, "load_share", json_real(total > 0 ? x->rows_last / total : 0));
        json_array_append_new(arr, j);
    }
    json_object_set_new(o, "step", json_integer(coord_stats_completed_step(c->stats)));
    json_object_set_new(o, "placement_version", json_integer(c->placement_version));
    json_object_set_new(o, "experts", arr);
    return dump(o);
}

char *coord_render_cluster_json(const coord_t *c)
{
    json_t *o = json_object(), *servers = json_array(), *workers = json_array(),
           *hist = json_array();
    for (int s = 0; s < c->cl.n_servers; s++) {
        const struct coord_member *m = &c->servers[s];
        int n = 0;
        for (int e = 0; e < c->cfg->n_experts; e++)
            n += c->cl.server_of[e] == s;
        json_t *j = json_object();
        json_object_set_new(j, "index", json_integer(s));
        json_object_set_new(j, "endpoint", json_string(m->endpoint));
        json_object_set_new(j, "alive", json_boolean(m->alive));
        json_object_set_new(j, "registered", json_boolean(m->registered));
        json_object_set_new(j, "experts", json_integer(n));
        json_object_set_new(j, "step", json_integer(m->step));
        json_object_set_new(j, "rows_per_sec", json_real(m->rows_per_sec));
        json_object_set_new(j, "rows_total", json_integer((json_int_t)m->rows_total));
        json_object_set_new(j, "bytes_total", json_integer((json_int_t)m->bytes_total));
        json_object_set_new(j, "errors_total", json_integer((json_int_t)m->errors_total));
        json_object_set_new(j, "latency_seconds", json_real(m->latency_seconds));
        json_array_append_new(servers, j);
    }
    for (int r = 0; r < c->cl.n_workers; r++) {
        const struct coord_member *m = &c->workers[r];
        const struct coord_worker_stats *w = coord_stats_worker(c->stats, r);
        json_t *j = json_object();
        json_object_set_new(j, "rank", json_integer(r));
        json_object_set_new(j, "alive", json_boolean(m->alive));
        json_object_set_new(j, "step", json_integer(w->seen ? w->step : -1));
        json_object_set_new(j, "tokens_per_sec", json_real(w->tokens_per_sec));
        json_object_set_new(j, "loss", json_real(w->loss));
        json_array_append_new(workers, j);
    }
    const int64_t *steps;
    const double *loss;
    size_t n = coord_stats_loss_history(c->stats, &steps, &loss);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(hist, json_pack("[If]", (json_int_t)steps[i], loss[i]));
    json_object_set_new(o, "step", json_integer(coord_stats_completed_step(c->stats)));
    json_object_set_new(o, "placement_version", json_integer(c->placement_version));
    json_object_set_new(o, "servers", servers);
    json_object_set_new(o, "workers", workers);
    json_object_set_new(o, "cv_importance", json_real(coord_stats_cv_importance(c->stats)));
    json_object_set_new(o, "cv_load", json_real(coord_stats_cv_load(c->stats)));
    json_object_set_new(o, "max_over_mean_load", json_real(coord_stats_max_over_mean_load(c->stats)));
    json_object_set_new(o, "errors_total", json_integer((json_int_t)c->errors));
    json_object_set_new(o, "loss_history", hist);
    return dump(o);
}

/* One gauge or counter sample per expert, labelled with id and server. */
static int prom_per_expert(struct moe_prom_buf *b, const coord_t *c, const char *name,
                           enum moe_prom_type type, const char *help, int field)
{
    int rc = moe_prom_family(b, name, type, help);
    for (int e = 0; rc == 0 && e < c->cfg->n_experts; e++) {
        const struct coord_expert_stats *x = coord_stats_expert(c->stats, e);
        const double v[] = {x->rows_total, x->rows_last, x->importance_last, x->importance_avg,
                            x->load_last, x->load_avg};
        char id[16], srv[16];
        snprintf(id, sizeof id, "%d", e);
        snprintf(srv, sizeof srv, "%d", c->cl.server_of[e]);
        const char *labels[] = {"expert", id, "server", srv, NULL};
        rc = moe_prom_sample(b, NULL, labels, v[field]);
    }
    return rc;
}

char *coord_render_metrics(const coord_t *c)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    int rc = prom_per_expert(&b, c, "moe_expert_rows_routed_total", MOE_PROM_COUNTER,
                             "Rows routed to the expert over the run (all workers).", 0);
    if (!rc)
        rc = prom_per_expert(&b, c, "moe_expert_rows_routed_last_step", MOE_PROM_GAUGE,
                             "Rows routed to the expert in the last completed step.", 1);
    if (!rc)
        rc = prom_per_expert(&b, c, "moe_expert_importance", MOE_PROM_GAUGE,
                             "Importance (sum of gates) of the expert in the last step.", 2);
    if (!rc)
        rc = prom_per_expert(&b, c, "moe_expert_importance_avg", MOE_PROM_GAUGE,
                             "Moving average (0.9) of the expert's importance.", 3);
    if (!rc)
        rc = prom_per_expert(&b, c, "moe_expert_load", MOE_PROM_GAUGE,
                             "Smooth load estimate of the expert in the last step.", 4);
    if (!rc)
        rc = prom_per_expert(&b, c, "moe_expert_load_avg", MOE_PROM_GAUGE,
                             "Moving average (0.9) of the expert's load.", 5);
    const struct {
        const char *name, *help;
        double v;
    } gauges[] = {
        {"moe_step", "Last training step completed by every worker.",
         (double)coord_stats_completed_step(c->stats)},
        {"moe_importance_cv", "Coefficient of variation of the global Importance vector.",
         coord_stats_cv_importance(c->stats)},
        {"moe_load_cv", "Coefficient of variation of the global Load vector.",
         coord_stats_cv_load(c->stats)},
        {"moe_load_max_over_mean", "Rows of the most loaded expert over the mean, last step.",
         coord_stats_max_over_mean_load(c->stats)},
        {"moe_placement_version", "Version of the expert placement.", (double)c->placement_version},
    };
    for (size_t i = 0; !rc && i < sizeof gauges / sizeof gauges[0]; i++) {
        rc = moe_prom_family(&b, gauges[i].name, MOE_PROM_GAUGE, gauges[i].help);
        if (!rc)
            rc = moe_prom_sample(&b, NULL, NULL, gauges[i].v);
    }
    if (!rc)
        rc = moe_prom_family(&b, "moe_coordinator_rejected_messages_total", MOE_PROM_COUNTER,
                             "Messages the coordinator rejected as malformed or out of turn.");
    if (!rc)
        rc = moe_prom_sample(&b, NULL, NULL, (double)c->errors);
    if (!rc)
        rc = moe_prom_family(&b, "moe_server_up", MOE_PROM_GAUGE,
                             "1 if the expert server was heard from recently.");
    for (int s = 0; !rc && s < c->cl.n_servers; s++) {
        char idx[16];
        snprintf(idx, sizeof idx, "%d", s);
        const char *labels[] = {"server", idx, "endpoint", c->servers[s].endpoint, NULL};
        rc = moe_prom_sample(&b, NULL, labels, c->servers[s].alive ? 1 : 0);
    }
    const struct {
        const char *name, *help;
        enum moe_prom_type type;
        int field;
    } per_server[] = {
        {"moe_server_rows_total", "Rows the expert server computed (forward).", MOE_PROM_COUNTER, 0},
        {"moe_server_bytes_total", "Tensor bytes the expert server received and sent.", MOE_PROM_COUNTER, 1},
        {"moe_server_rejected_messages_total", "Messages the expert server rejected.", MOE_PROM_COUNTER, 2},
        {"moe_server_rows_per_second", "Rows per second computed by the expert server.", MOE_PROM_GAUGE, 3},
        {"moe_server_step_compute_seconds", "Mean compute time of a step on the expert server.", MOE_PROM_GAUGE, 4},
    };
    for (size_t f = 0; !rc && f < sizeof per_server / sizeof per_server[0]; f++) {
        rc = moe_prom_family(&b, per_server[f].name, per_server[f].type, per_server[f].help);
        for (int s = 0; !rc && s < c->cl.n_servers; s++) {
            const struct coord_member *m = &c->servers[s];
            const double v[] = {(double)m->rows_total, (double)m->bytes_total,
                                (double)m->errors_total, m->rows_per_sec, m->latency_seconds};
            char idx[16];
            snprintf(idx, sizeof idx, "%d", s);
            const char *labels[] = {"server", idx, NULL};
            rc = moe_prom_sample(&b, NULL, labels, v[per_server[f].field]);
        }
    }
    if (!rc)
        rc = moe_prom_family(&b, "moe_worker_tokens_per_second", MOE_PROM_GAUGE,
                             "Training speed reported by the worker.");
    for (int r = 0; !rc && r < c->cl.n_workers; r++) {
        char idx[16];
        snprintf(idx, sizeof idx, "%d", r);
        const char *labels[] = {"rank", idx, NULL};
        rc = moe_prom_sample(&b, NULL, labels, coord_stats_worker(c->stats, r)->tokens_per_sec);
    }
    if (!rc)
        rc = moe_prom_family(&b, "moe_worker_loss", MOE_PROM_GAUGE,
                             "Training loss (cross-entropy) reported by the worker.");
    for (int r = 0; !rc && r < c->cl.n_workers; r++) {
        char idx[16];
        snprintf(idx, sizeof idx, "%d", r);
        const char *labels[] = {"rank", idx, NULL};
        rc = moe_prom_sample(&b, NULL, labels, coord_stats_worker(c->stats, r)->loss);
    }
    if (rc) {
        moe_prom_buf_free(&b);
        return NULL;
    }
    return b.data; /* NUL-terminated, owned by the caller now */
}
