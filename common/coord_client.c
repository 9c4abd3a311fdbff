/* Client side of the coordinator protocol (see coord_client.h). */
#include "coord_client.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "moe_checksum.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_tensor.h"
#include "moe_wire.h"
#include "moe_time.h"

/* Seconds between the lines that say what a wait is waiting for: a
 * quarter of the client's timeout, at most this. */
#define WAIT_LOG_SECONDS 5.0

struct coord_client {
    void *sock;
    char endpoint[256];
    int role, index, E;
    int64_t timeout_ms;
    uint64_t request_id;
    uint32_t epoch, seen_epoch; /* ours; the newest the coordinator mentioned */
    float *buf; /* 3E */
    /* what it registered with, to register again after a coordinator restart */
    bool registered, reregistering;
    char served[256];
    char *contract;
    bool has_id;
    uint32_t id;
    uint64_t incarnation; /* random per process: registering again is not a restart */
    char workers[4096];
    /* what heartbeat answers said */
    bool unregistered, stopped, failed;
    char failure[1024];
    double born, last_answer; /* seconds, monotonic */
    double wait_log;          /* seconds between "waiting" lines (WAIT_LOG_SECONDS) */
    /* a worker's activity, told by its own thread (coord_client_activity_begin) */
    pthread_t act_thread;
    bool act_running;
    atomic_bool act_stop;
    int64_t act_step;
    char act_what[64];
};

/* The process's count of SIGTERM/SIGINT (coord_client_stop_on_signal). */
static const volatile sig_atomic_t *stop_signals;

void coord_client_stop_on_signal(const volatile sig_atomic_t *count) { stop_signals = count; }

/* Whether a wait that began at t0 ends for a signal: it has lasted
 * c->wait_log (the coordinator is slow to answer, or gone) and the
 * operator asked this process to stop. err gets the sentence. */
static bool stop_waiting(const coord_client_t *c, double t0, double now, const char *what,
                         char *err, size_t errlen)
{
    if (!stop_signals || !*stop_signals || now - t0 < c->wait_log)
        return false;
    moe_err_set(err, errlen, "stopped by a signal after %.0f s of waiting for the coordinator at "
                "%s (%s)", now - t0, c->endpoint, what);
    return true;
}


/* A number no other process is likely to draw (the kernel's randomness,
 * else the clock and the pid), drawn once per process: a server's main
 * socket and its heartbeat thread carry the same one, so the coordinator
 * can tell the heartbeats of the process it registered from those of
 * another process claiming the same endpoint. */
static uint64_t process_incarnation;
static pthread_once_t incarnation_once = PTHREAD_ONCE_INIT;

static void draw_incarnation(void)
{
    uint64_t v = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        if (fread(&v, sizeof v, 1, f) != 1)
            v = 0;
        fclose(f);
    }
    if (v == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16);
    }
    process_incarnation = v ? v : 1;
}

static uint64_t random_incarnation(void)
{
    pthread_once(&incarnation_once, draw_incarnation);
    return process_incarnation;
}

coord_client_t *coord_client_new(void *zmq_ctx, const struct moe_net *net, const char *endpoint,
                                 int role, int index,
                                 const char *served, int n_experts, int64_t timeout_ms, char *err,
                                 size_t errlen)
{
    coord_client_t *c = calloc(1, sizeof *c);
    if (!c || n_experts < 1)
        goto fail;
    snprintf(c->endpoint, sizeof c->endpoint, "%s", endpoint);
    snprintf(c->served, sizeof c->served, "%s", served ? served : "");
    c->role = role;
    c->index = index;
    c->E = n_experts;
    c->timeout_ms = timeout_ms;
    c->wait_log = (double)timeout_ms / 4000.0 < WAIT_LOG_SECONDS ? (double)timeout_ms / 4000.0
                                                                 : WAIT_LOG_SECONDS;
    c->born = moe_now_sec();
    c->incarnation = random_incarnation();
    c->buf = moe_alloc_floats(3 * (size_t)n_experts);
    /* Routing ids are unique per process (the incarnation is in them): a
     * second process claiming the same rank or endpoint, refused or not,
     * cannot take over the connection of the first. */
    char id[300];
    const unsigned long long inc = (unsigned long long)c->incarnation;
    if (role == 2)
        snprintf(id, sizeof id, "moe-server/%016llx@%s", inc, c->served);
    else if (role == COORD_ROLE_SERVER_HEARTBEAT)
        snprintf(id, sizeof id, "moe-heart/%016llx@%s", inc, c->served);
    else
        snprintf(id, sizeof id, "moe-worker-%d/%016llx", index, inc);
    if (role == COORD_ROLE_SERVER_HEARTBEAT)
        c->role = 2; /* speaks for the server */
    c->sock = zmq_socket(zmq_ctx, ZMQ_DEALER);
    /* Nothing is queued for a coordinator that is not connected (it may be
     * down for a while): a send waits for the connection, bounded by the
     * caller's deadline, instead of piling up stale requests. */
    int linger = 0, immediate = 1, sndtimeo = 1000;
    if (!c->buf || !c->sock || zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(c->sock, ZMQ_IMMEDIATE, &immediate, sizeof immediate) ||
        zmq_setsockopt(c->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo) ||
        zmq_setsockopt(c->sock, ZMQ_ROUTING_ID, id, strlen(id))) {
        moe_err_set(err, errlen, "cannot connect to the coordinator at %s: %s", endpoint,
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (moe_net_connect(net, c->sock, MOE_SEC_COORDINATOR, endpoint, "the coordinator", err,
                        errlen))
        goto fail;
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
    coord_client_activity_end(c, NULL);
    if (c->sock)
        zmq_close(c->sock);
    moe_free_floats(&c->buf);
    free(c->contract);
    free(c);
    *cp = NULL;
}

uint32_t coord_client_id(const coord_client_t *c) { return c->id; }
const char *coord_client_workers(const coord_client_t *c) { return c->workers; }
bool coord_client_take_unregistered(coord_client_t *c)
{
    const bool u = c->unregistered;
    c->unregistered = false;
    return u;
}
bool coord_client_stopped(const coord_client_t *c) { return c->stopped; }
const char *coord_client_failure(const coord_client_t *c) { return c->failed ? c->failure : NULL; }

double coord_client_silence(const coord_client_t *c)
{
    return moe_now_sec() - (c->last_answer > 0 ? c->last_answer : c->born);
}

static const char *type_name(Moe__MsgType t)
{
    switch (t) {
    case MOE__MSG_TYPE__MSG_REGISTER: return "the registration";
    case MOE__MSG_TYPE__MSG_STATS: return "the statistics";
    case MOE__MSG_TYPE__MSG_EPOCH_WAIT: return "the request for the next epoch";
    case MOE__MSG_TYPE__MSG_CHECKPOINT_DONE: return "the checkpoint report";
    case MOE__MSG_TYPE__MSG_LEAVE: return "the request to leave";
    default: return "a request";
    }
}

/* What any answer of the coordinator tells, whatever request it answers. */
static void note_answer(coord_client_t *c, const Moe__Header *h)
{
    c->last_answer = moe_now_sec();
    if (h->epoch > c->seen_epoch)
        c->seen_epoch = h->epoch;
}

/* The error reply m as a code and a sentence: a stop or a failure of the
 * cluster, or a refusal of this request. */
static int error_of(coord_client_t *c, const Moe__Header *h, char *err, size_t errlen)
{
    char text[MOE_WIRE_ERROR_TEXT_MAX + 1];
    const char *t = h->error_text ? h->error_text : "";
    moe_log_sanitize(text, sizeof text, t, strlen(t));
    if (h->flags & MOE_FLAG_FAILED) {
        moe_err_set(err, errlen, "the coordinator stopped the cluster: %s", text);
        return MOE_ERR_FAILED;
    }
    if (h->flags & MOE_FLAG_STOP) {
        moe_err_set(err, errlen, "%s", text[0] ? text : "the operator stopped the cluster");
        return MOE_ERR_STOPPED;
    }
    moe_err_set(err, errlen, "the coordinator (%s) refused: %s", c->endpoint, text);
    int code = h->error_code < 0 ? h->error_code : MOE_ERR_STATE;
    if (code == MOE_ERR_STOPPED || code == MOE_ERR_FAILED)
        code = MOE_ERR_STATE; /* only the flags end a run */
    return code;
}

/* Sends o, waiting (with a log line every few seconds) while the
 * coordinator is not connected, until `deadline`. */
static int send_until(coord_client_t *c, const struct moe_wire_out *o, const float *data,
                      uint64_t rows, double deadline, char *err, size_t errlen)
{
    const double t0 = moe_now_sec();
    double next_log = t0 + c->wait_log;
    for (;;) {
        zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLOUT, 0};
        const double left = deadline - moe_now_sec();
        int n = zmq_poll(&it, 1, left > 1.0 ? 1000 : (long)(left * 1000) + 1);
        if (n > 0 && (it.revents & ZMQ_POLLOUT)) {
            int rc = moe_wire_send(c->sock, NULL, 0, o, data, rows, err, errlen);
            if (rc == 0 || zmq_errno() != EAGAIN)
                return rc;
        }
        const double now = moe_now_sec();
        if (now >= deadline) {
            moe_err_set(err, errlen, "cannot reach the coordinator at %s (for %.0f s, to send %s)",
                     c->endpoint, now - t0, type_name(o->type));
            return MOE_ERR_IO;
        }
        char what[64];
        snprintf(what, sizeof what, "to send %s", type_name(o->type));
        if (stop_waiting(c, t0, now, what, err, errlen))
            return MOE_ERR_STOPPED;
        if (now >= next_log) {
            moe_warn("cannot reach the coordinator at %s for %.0f s (to send %s); still trying",
                     c->endpoint, now - t0, type_name(o->type));
            next_log += c->wait_log;
        }
    }
}

/* Waits for the reply to request `req` of type `want`; drops stale replies.
 * Logs every few seconds what it waits for. */
static int await(coord_client_t *c, uint64_t req, Moe__MsgType asked, Moe__MsgType want,
                 uint32_t width, double deadline, struct moe_wire_msg *m, char *err,
                 size_t errlen)
{
    const double t0 = moe_now_sec();
    double next_log = t0 + c->wait_log;
    struct moe_wire_limits lim = {64u << 20, width, 1u << 20, 1u << 20};
    for (;;) {
        const double now = moe_now_sec();
        if (now >= deadline) {
            moe_err_set(err, errlen,
                     "the coordinator (%s) did not answer %s within %.0f s (it is down, or "
                     "another worker of this step is late or gone)",
                     c->endpoint, type_name(asked), now - t0);
            return MOE_ERR_IO;
        }
        char what[64];
        snprintf(what, sizeof what, "for its answer to %s", type_name(asked));
        if (stop_waiting(c, t0, now, what, err, errlen))
            return MOE_ERR_STOPPED;
        if (now >= next_log) {
            moe_warn("waiting for the coordinator at %s: no answer to %s for %.0f s",
                     c->endpoint, type_name(asked), now - t0);
            next_log += c->wait_log;
        }
        const double until = deadline < next_log ? deadline : next_log;
        zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
        int n = zmq_poll(&it, 1, (long)((until - now) * 1000) + 1);
        if (n <= 0)
            continue; /* timeout, or EINTR: look at the clock again */
        memset(m, 0, sizeof *m);
        char why[256];
        int rc = moe_wire_recv(c->sock, false, ZMQ_DONTWAIT, &lim, m, why, sizeof why);
        if (rc == MOE_ERR_STATE && !m->hdr)
            continue;
        if (rc) {
            moe_err_set(err, errlen, "bad reply from the coordinator (%s): %s", c->endpoint, why);
            moe_wire_msg_free(m);
            return rc;
        }
        note_answer(c, m->hdr);
        if (m->hdr->request_id != req) {
            moe_wire_msg_free(m);
            continue;
        }
        if (m->hdr->type == MOE__MSG_TYPE__MSG_ERROR) {
            rc = error_of(c, m->hdr, err, errlen);
            if (rc != MOE_ERR_FAILED && rc != MOE_ERR_STOPPED) {
                /* name the request refused */
                char text[MOE_WIRE_ERROR_TEXT_MAX + 1];
                const char *t = m->hdr->error_text ? m->hdr->error_text : "";
                moe_log_sanitize(text, sizeof text, t, strlen(t));
                moe_err_set(err, errlen, "the coordinator (%s) %s %s: %s", c->endpoint,
                         rc == MOE_ERR_AGAIN ? "holds back" : "refused", type_name(asked), text);
            }
            moe_wire_msg_free(m);
            return rc;
        }
        if (m->hdr->type != want) {
            moe_err_set(err, errlen, "the coordinator (%s) answered message type %d, expected %d",
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

static int do_register(coord_client_t *c, char *err, size_t errlen);

/* Sends o (with `rows` rows of data) and waits for its reply of type want.
 * A coordinator that does not know us (it restarted) gets our
 * registration again, then the request once more. */
static int call(coord_client_t *c, struct moe_wire_out *o, const float *data, uint64_t rows,
                Moe__MsgType want, uint32_t width, struct moe_wire_msg *m, char *err, size_t errlen)
{
    for (int attempt = 0;; attempt++) {
        const double deadline = moe_now_sec() + (double)c->timeout_ms / 1000.0;
        int rc = send_until(c, o, data, rows, deadline, err, errlen);
        if (!rc)
            rc = await(c, o->request_id, o->type, want, width, deadline, m, err, errlen);
        if (rc != MOE_ERR_UNREGISTERED || !c->registered || c->reregistering || attempt > 0)
            return rc;
        moe_warn("the coordinator at %s does not know this process (it restarted?): registering "
                 "again", c->endpoint);
        if ((rc = do_register(c, err, errlen)))
            return rc;
        o->request_id = ++c->request_id;
        o->epoch = c->epoch;
    }
}

static int do_register(coord_client_t *c, char *err, size_t errlen)
{
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_REGISTER, 0);
    o.endpoint = c->served;
    o.config = c->contract;
    o.config_digest = moe_checksum64(MOE_CHECKSUM_INIT, c->contract, strlen(c->contract));
    o.incarnation = c->incarnation;
    if (c->has_id) {
        o.rank = c->id;
        o.flags = MOE_FLAG_HAS_ID;
    }
    struct moe_wire_msg m;
    c->reregistering = true;
    int rc = call(c, &o, NULL, 0, MOE__MSG_TYPE__MSG_REGISTER, 0, &m, err, errlen);
    c->reregistering = false;
    if (rc)
        return rc;
    if (c->role == 2) {
        if (c->has_id && c->id != m.hdr->rank)
            moe_warn("the coordinator gave this server the id %u (it was %u)", m.hdr->rank, c->id);
        c->id = m.hdr->rank;
        c->has_id = true;
        snprintf(c->workers, sizeof c->workers, "%s", m.hdr->workers ? m.hdr->workers : "");
    }
    c->registered = true;
    c->unregistered = false;
    moe_wire_msg_free(&m);
    return 0;
}

int coord_client_register(coord_client_t *c, const char *endpoint_served, const char *contract,
                          int64_t patience_s, char *err, size_t errlen)
{
    snprintf(c->served, sizeof c->served, "%s", endpoint_served ? endpoint_served : "");
    free(c->contract);
    c->contract = strdup(contract ? contract : "");
    if (!c->contract) {
        moe_err_set(err, errlen, "out of memory");
        return MOE_ERR_NOMEM;
    }
    const double t0 = moe_now_sec();
    bool told = false;
    for (;;) {
        int rc = do_register(c, err, errlen);
        if ((rc != MOE_ERR_IO && rc != MOE_ERR_AGAIN) || moe_now_sec() - t0 >= (double)patience_s ||
            (stop_signals && *stop_signals))
            return rc;
        if (rc == MOE_ERR_IO) {
            moe_warn("%s; asking again", err);
            continue;
        }
        /* The coordinator is deciding (e.g. whether the server registered
         * at our endpoint is still alive): ask again in a moment. */
        if (!told)
            moe_info("%s; asking again", err);
        told = true;
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int coord_client_stats(coord_client_t *c, int64_t step, const float *imp, const float *load,
                       const float *rows, double loss, double tokens_per_sec, uint64_t tokens,
                       uint32_t req_flags, float *g_imp, float *g_load, float *g_rows, uint32_t *flags, char *err,
                       size_t errlen)
{
    const size_t E = (size_t)c->E;
    memcpy(c->buf, imp, sizeof(float) * E);
    memcpy(c->buf + E, load, sizeof(float) * E);
    memcpy(c->buf + 2 * E, rows, sizeof(float) * E);
    int rc = coord_client_stats_row(c, step, c->buf, 3 * E, loss, tokens_per_sec, tokens,
                                    req_flags, c->buf, flags, err, errlen);
    if (rc)
        return rc;
    memcpy(g_imp, c->buf, sizeof(float) * E);
    memcpy(g_load, c->buf + E, sizeof(float) * E);
    memcpy(g_rows, c->buf + 2 * E, sizeof(float) * E);
    return 0;
}

int coord_client_stats_row(coord_client_t *c, int64_t step, const float *row, size_t width,
                           double loss, double tokens_per_sec, uint64_t tokens, uint32_t req_flags,
                           float *g_row, uint32_t *flags, char *err, size_t errlen)
{
    uint32_t one = 1;
    int32_t zero_id = 0;
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_STATS, step);
    o.expert_ids = &zero_id;
    o.row_counts = &one;
    o.n_experts = 1;
    o.dtype = MOE__DTYPE__DTYPE_F32;
    o.width = (uint32_t)width;
    o.loss = loss;
    o.tokens_per_sec = tokens_per_sec;
    o.tokens = tokens;
    moe_proc_usage(&o.cpu_seconds, &o.rss_bytes);
    o.flags = req_flags;
    struct moe_wire_msg m;
    int rc = call(c, &o, row, 1, MOE__MSG_TYPE__MSG_STATS_REPLY, (uint32_t)width, &m, err, errlen);
    if (rc)
        return rc;
    if (m.rows != 1 || m.hdr->step != (uint64_t)step) {
        moe_err_set(err, errlen, "the coordinator (%s) answered statistics of another step",
                 c->endpoint);
        moe_wire_msg_free(&m);
        return MOE_ERR_FORMAT;
    }
    memcpy(g_row, m.data, sizeof(float) * width);
    if (flags)
        *flags = m.hdr->flags;
    moe_wire_msg_free(&m);
    return 0;
}

int coord_client_heartbeat(coord_client_t *c, const struct coord_heartbeat *hb, char *err,
                           size_t errlen)
{
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_HEARTBEAT, hb->step);
    o.rows_total = hb->rows;
    o.bytes_total = hb->bytes;
    o.errors_total = hb->errors;
    o.refused_total = hb->refused;
    o.latency_seconds = hb->latency;
    o.bytes_in_total = hb->bytes_in;
    o.bytes_out_total = hb->bytes_out;
    if (hb->errors_by_reason) {
        o.errors_by_reason = hb->errors_by_reason;
        o.n_errors_by_reason = MOE_REASONS;
    }
    if (hb->compute) {
        o.compute_buckets = hb->compute->counts;
        o.n_compute_buckets = (size_t)hb->compute->n + 1;
        o.compute_seconds_sum = hb->compute->sum;
    }
    moe_proc_usage(&o.cpu_seconds, &o.rss_bytes);
    o.error_text = hb->activity;
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLOUT, 0};
    if (zmq_poll(&it, 1, 0) <= 0 || !(it.revents & ZMQ_POLLOUT))
        return 0; /* not connected: the silence tells */
    int rc = moe_wire_send(c->sock, NULL, 0, &o, NULL, 0, err, errlen);
    return rc && zmq_errno() == EAGAIN ? 0 : rc;
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
        if (m.hdr) {
            note_answer(c, m.hdr);
            if (m.hdr->type == MOE__MSG_TYPE__MSG_ERROR) {
                char err[MOE_WIRE_ERROR_TEXT_MAX + 64];
                int code = error_of(c, m.hdr, err, sizeof err);
                if (code == MOE_ERR_FAILED && !c->failed) {
                    c->failed = true;
                    snprintf(c->failure, sizeof c->failure, "%s", err);
                } else if (code == MOE_ERR_STOPPED) {
                    c->stopped = true;
                } else if (m.hdr->error_code == MOE_ERR_UNREGISTERED) {
                    c->unregistered = true;
                }
            }
        }
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

int coord_client_epoch_wait(coord_client_t *c, int64_t step, uint32_t flags, const char *why,
                            struct coord_epoch *out, char *err, size_t errlen)
{
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_EPOCH_WAIT, step);
    o.flags = flags;
    o.error_text = why;
    char cut[MOE_WIRE_ERROR_TEXT_MAX + 1];
    if (why && strlen(why) > MOE_WIRE_ERROR_TEXT_MAX) {
        snprintf(cut, sizeof cut, "%s", why);
        o.error_text = cut;
    }
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
    if (h->error_text && h->error_text[0])
        moe_log_sanitize(out->note, sizeof out->note, h->error_text, strlen(h->error_text));
    if (!(h->flags & (MOE_FLAG_NOT_READY | MOE_FLAG_DRAINED | MOE_FLAG_FINISHED))) {
        if (h->n_placement != (size_t)c->E || h->n_servers == 0) {
            moe_err_set(err, errlen, "the coordinator's epoch %u has %zu placement entries for %d "
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

int coord_client_leave(coord_client_t *c, int64_t step, uint32_t *flags, char *said,
                       size_t saidlen, char *err, size_t errlen)
{
    struct moe_wire_out o = request(c, MOE__MSG_TYPE__MSG_LEAVE, step);
    struct moe_wire_msg m;
    int rc = call(c, &o, NULL, 0, MOE__MSG_TYPE__MSG_ACK, 0, &m, err, errlen);
    if (rc)
        return rc;
    *flags = m.hdr->flags;
    if (said && saidlen) {
        const char *t = m.hdr->error_text ? m.hdr->error_text : "";
        moe_log_sanitize(said, saidlen, t, strlen(t));
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

/* ---------------------------------------------------------------------- */
/* A worker's activity outside its steps */

static void tell_activity(coord_client_t *c, const char *what)
{
    char err[256];
    const struct coord_heartbeat hb = {.step = c->act_step, .activity = what};
    if (coord_client_heartbeat(c, &hb, err, sizeof err))
        moe_warn("telling the coordinator that this worker is %s: %s", what, err);
}

static void *activity_main(void *arg)
{
    coord_client_t *c = arg;
    do { /* told at least once, however short the activity */
        tell_activity(c, c->act_what);
        for (int i = 0; i < 10 && !atomic_load(&c->act_stop); i++) {
            moe_sleep_ms(50);
            coord_client_drain(c);
        }
    } while (!atomic_load(&c->act_stop));
    return NULL;
}

int coord_client_activity_begin(coord_client_t *c, int64_t step, const char *what)
{
    coord_client_activity_end(c, NULL);
    c->act_step = step;
    snprintf(c->act_what, sizeof c->act_what, "%s", what);
    atomic_store(&c->act_stop, false);
    if (pthread_create(&c->act_thread, NULL, activity_main, c) != 0)
        return MOE_ERR_IO;
    c->act_running = true;
    return 0;
}

void coord_client_activity_end(coord_client_t *c, const char *next)
{
    if (c->act_running) {
        atomic_store(&c->act_stop, true);
        pthread_join(c->act_thread, NULL);
        c->act_running = false;
    }
    if (!next)
        return;
    tell_activity(c, next);
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 500) > 0)
        coord_client_drain(c);
}
