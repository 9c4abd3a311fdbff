/* Expert-server loop, validation and step bookkeeping (see expsrv.h). */
#include "expsrv.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "coord_client.h"
#include "expert_shard.h"
#include "moe_blas.h"
#include "moe_checksum.h"
#include "moe_cluster.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_mem.h"
#include "moe_optim.h"
#include "moe_safetensors.h"
#include "moe_tensor.h"
#include "moe_wire.h"

enum phase { PH_FORWARD, PH_BACKWARD };

/* What one worker sent in the current step. */
struct slot {
    bool have;
    struct moe_wire_msg msg; /* owns header and data; data is reused for the reply */
};

struct expsrv {
    const struct trainer_config *cfg;
    struct moe_cluster cl;
    expert_shard_t *shard;
    void *ctx, *sock;
    int W, D, H;
    struct moe_wire_limits lim;
    Moe__DType dtype;
    struct moe_lr_schedule sched;
    int64_t step; /* the step being served (0-based); steps completed = step */
    enum phase phase;
    struct slot *fwd, *bwd;
    /* assembled layout of the step: union of experts over workers */
    int n_union;
    int32_t *u_ids;
    int *u_rows;
    size_t *u_base;
    float *x_all, *y_all;
    size_t cap_rows;
    int64_t errors, msgs;
    double stop_since;
    coord_client_t *coord; /* registration, heartbeats and epochs, when configured */
    uint32_t epoch;        /* configuration served (0: static, without a coordinator) */
    int index;             /* this server's index in the epoch (or --server-index) */
    bool waiting;          /* between epochs: serves nothing until the next one loads */
    char own[256];         /* the endpoint it serves on */
    /* heartbeats come from their own thread, so that a long step does not
     * make this server look dead; it reads these, the loop writes them */
    pthread_t hb_thread;
    bool hb_running;
    atomic_int hb_stop;
    atomic_llong hb_step;
    atomic_ullong hb_rows, hb_bytes, hb_errors, hb_latency_bits;
    atomic_uint hb_seen_epoch;
    /* what the heartbeat answers said, for the loop */
    atomic_int hb_unregistered, hb_stopped, hb_failed;
    char hb_failure[1024];        /* written before hb_failed is set */
    atomic_llong hb_silence_ms;   /* since the coordinator last answered */
    char contract[8192];          /* the training configuration it registered with */
    char workers[4096];           /* the worker list it serves (--workers or the coordinator's) */
    uint32_t id;                  /* its id from the coordinator (file names, logs) */
    bool leave_sent;              /* asked the coordinator to drain it (first signal) */
    bool exit_after_step;         /* stop once no step is in progress */
    int exit_code;                /* of expsrv_run when it stops on its own */
    char exit_why[1100];          /* ... and its sentence */
    uint64_t rows_total, bytes_total; /* forward rows computed, tensor bytes in and out */
    double compute_seconds;           /* forward + backward compute of every step */
    double step_started;
};

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int64_t expsrv_step(const expsrv_t *s) { return s->step; }
const char *expsrv_exit_reason(const expsrv_t *s) { return s->exit_why; }
const char *expsrv_endpoint(const expsrv_t *s) { return s->own; }
int64_t expsrv_id(const expsrv_t *s) { return s->coord ? (int64_t)s->id : (int64_t)s->cfg->server_index; }
int64_t expsrv_errors(const expsrv_t *s) { return s->errors; }

/* ------------------------------------------------------------------------ */

/* Entry server_index of the comma-separated --servers, or --bind when
 * --servers is empty. */
static bool own_endpoint(const struct trainer_config *cfg, char *out, size_t cap, char *err,
                         size_t errlen)
{
    const char *p = cfg->servers;
    for (int i = 0; *p && i < cfg->server_index; i++) {
        p = strchr(p, ',');
        p = p ? p + 1 : "";
    }
    size_t len = strcspn(p, ",");
    while (len && *p == ' ') {
        p++;
        len--;
    }
    while (len && p[len - 1] == ' ')
        len--;
    if (len == 0 && cfg->bind[0]) {
        p = cfg->bind;
        len = strlen(p);
    }
    if (len == 0 || len >= cap) {
        snprintf(err, errlen, "server %d: no address to serve on (give --servers, or --bind with "
                              "--coordinator)", cfg->server_index);
        return false;
    }
    memcpy(out, p, len);
    out[len] = '\0';
    return true;
}

/* The heartbeat thread: every 250 ms the server's counters to the
 * coordinator, on its own socket ("moe-heart/INC@ENDPOINT"); the newest epoch
 * the coordinator mentions and what its answers say (unknown server,
 * stopped, failed, silent) go back to the loop. */
static void *heartbeat_main(void *arg)
{
    expsrv_t *s = arg;
    char err[256];
    coord_client_t *c = coord_client_new(s->ctx, s->cfg->coordinator, COORD_ROLE_SERVER_HEARTBEAT,
                                         0, s->own, s->cfg->n_experts, s->cfg->timeout_ms, err,
                                         sizeof err);
    if (!c) {
        moe_error("heartbeat: %s", err);
        return NULL;
    }
    double logged = 0;
    while (!atomic_load(&s->hb_stop)) {
        uint64_t bits = atomic_load(&s->hb_latency_bits);
        double lat;
        memcpy(&lat, &bits, sizeof lat);
        if (coord_client_heartbeat(c, (int64_t)atomic_load(&s->hb_step), atomic_load(&s->hb_rows),
                                   atomic_load(&s->hb_bytes), atomic_load(&s->hb_errors), lat, err,
                                   sizeof err))
            moe_warn("heartbeat: %s", err);
        for (int i = 0; i < 5 && !atomic_load(&s->hb_stop); i++) {
            struct timespec ts = {0, 50 * 1000000L};
            nanosleep(&ts, NULL);
            coord_client_drain(c);
            atomic_store(&s->hb_seen_epoch, coord_client_seen_epoch(c));
        }
        const double silent = coord_client_silence(c);
        atomic_store(&s->hb_silence_ms, (long long)(silent * 1000));
        if (silent >= 5.0 && silent - logged >= 5.0) {
            logged = silent;
            moe_warn("the coordinator at %s has not answered for %.0f s; serving on and waiting "
                     "for it (gives up after %lld s)", s->cfg->coordinator, silent,
                     (long long)s->cfg->coordinator_wait_s);
        } else if (silent < 5.0) {
            logged = 0;
        }
        if (coord_client_take_unregistered(c))
            atomic_store(&s->hb_unregistered, 1);
        if (coord_client_stopped(c))
            atomic_store(&s->hb_stopped, 1);
        const char *f = coord_client_failure(c);
        if (f && !atomic_load(&s->hb_failed)) {
            snprintf(s->hb_failure, sizeof s->hb_failure, "%s", f);
            atomic_store(&s->hb_failed, 1);
        }
    }
    coord_client_destroy(&c);
    return NULL;
}

/* What the heartbeat thread reports. */
static void publish(expsrv_t *s)
{
    atomic_store(&s->hb_step, s->step);
    atomic_store(&s->hb_rows, s->rows_total);
    atomic_store(&s->hb_bytes, s->bytes_total);
    atomic_store(&s->hb_errors, (uint64_t)s->errors);
    double lat = s->step > 0 ? s->compute_seconds / (double)s->step : 0;
    uint64_t bits;
    memcpy(&bits, &lat, sizeof bits);
    atomic_store(&s->hb_latency_bits, bits);
}

/* Whether a shard of n experts fits in the machine's memory now (with a
 * sentence naming this server, the experts and the bytes when it does not). */
static int check_shard_memory(const expsrv_t *s, int n, char *err, size_t errlen)
{
    char what[200];
    snprintf(what, sizeof what, "its %d experts of %d -> %d -> %d", n, s->D, s->H, s->D);
    const double b = expert_shard_bytes(s->D, s->H, n, false);
    return moe_mem_check(b >= 1.8e19 ? UINT64_MAX : (uint64_t)b, what, err, errlen);
}

expsrv_t *expsrv_new(const struct trainer_config *cfg, char *err, size_t errlen)
{
    expsrv_t *s = calloc(1, sizeof *s);
    int32_t *ids = NULL;
    if (!s)
        return NULL;
    s->cfg = cfg;
    if (strcmp(cfg->wire_dtype, "f32") && strcmp(cfg->wire_dtype, "bf16")) {
        snprintf(err, errlen, "wire_dtype: expected f32 or bf16, got \"%s\"", cfg->wire_dtype);
        goto fail;
    }
    s->dtype = strcmp(cfg->wire_dtype, "bf16") == 0 ? MOE__DTYPE__DTYPE_BF16 : MOE__DTYPE__DTYPE_F32;
    s->D = cfg->d_model;
    s->H = cfg->d_hidden;
    s->sched = (struct moe_lr_schedule){cfg->lr, cfg->warmup};
    s->lim = (struct moe_wire_limits){(size_t)cfg->max_message_mb << 20, (uint32_t)s->D,
                                      (uint32_t)cfg->n_experts, (uint64_t)1 << 31};

    /* Where this server listens and how it is reached: --bind, or its entry
     * of --servers (a server that learns the placement from the coordinator
     * needs only --bind and --server-index). */
    char own[256] = "";
    if (!own_endpoint(cfg, own, sizeof own, err, errlen))
        goto fail;
    const char *ep = cfg->bind[0] ? cfg->bind : own;
    s->ctx = zmq_ctx_new();
    s->sock = s->ctx ? zmq_socket(s->ctx, ZMQ_ROUTER) : NULL;
    int linger = 0;
    /* libzmq drops a peer whose message exceeds ZMQ_MAXMSGSIZE, with no
     * reply possible; up to twice our own limit the message is received and
     * answered with an error instead. */
    int64_t maxmsg = 2 * (int64_t)s->lim.max_bytes + (1 << 20);
    if (!s->sock || zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        zmq_bind(s->sock, ep) != 0) {
        snprintf(err, errlen, "cannot bind %s: %s", ep, zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (cfg->advertise[0])
        snprintf(own, sizeof own, "%s", cfg->advertise);
    if (cfg->coordinator[0] && (strchr(own, '*') || strstr(own, "0.0.0.0"))) {
        snprintf(err, errlen, "%s is where this server listens, not an address workers can reach: "
                 "give --advertise tcp://HOST:PORT", own);
        goto fail;
    }
    snprintf(s->own, sizeof s->own, "%s", own);
    s->index = cfg->server_index;
    if (cfg->coordinator[0]) {
        /* The placement and the state to start from come with the first
         * epoch (expsrv_run); until then this server owns no expert. */
        int handover = 1;
        zmq_setsockopt(s->sock, ZMQ_ROUTER_HANDOVER, &handover, sizeof handover);
        s->coord = coord_client_new(s->ctx, cfg->coordinator, 2, 0, own, cfg->n_experts,
                                    cfg->timeout_ms, err, errlen);
        if (!s->coord)
            goto fail;
        if (trainer_contract(cfg, TRAINER_ROLE_SERVER, s->contract, sizeof s->contract) < 0) {
            snprintf(err, errlen, "the training configuration is too long to send");
            goto fail;
        }
        if (coord_client_register(s->coord, own, s->contract, cfg->coordinator_wait_s, err, errlen))
            goto fail;
        s->id = coord_client_id(s->coord);
        if (!cfg->workers[0] && coord_client_workers(s->coord)[0])
            moe_info("the cluster's workers (from the coordinator): %s",
                     coord_client_workers(s->coord));
        if (pthread_create(&s->hb_thread, NULL, heartbeat_main, s) != 0) {
            snprintf(err, errlen, "cannot start the heartbeat thread");
            goto fail;
        }
        s->hb_running = true;
        s->waiting = true;
        s->index = -1;
    }
    /* A server without --workers takes the coordinator's list (the contract
     * check let it through for that reason). */
    const char *workers = s->coord && !cfg->workers[0] ? coord_client_workers(s->coord)
                                                       : cfg->workers;
    snprintf(s->workers, sizeof s->workers, "%s", workers);
    if (moe_cluster_parse(&s->cl, cfg->coordinator[0] ? own : cfg->servers, s->workers,
                          cfg->coordinator[0] ? "" : cfg->placement, cfg->n_experts, err, errlen))
        goto fail;
    if (!cfg->coordinator[0] && cfg->server_index >= s->cl.n_servers) {
        snprintf(err, errlen, "server_index %d: only %d servers are listed in servers",
                 cfg->server_index, s->cl.n_servers);
        goto fail;
    }
    s->W = s->cl.n_workers;
    ids = malloc(sizeof(int32_t) * (size_t)cfg->n_experts);
    if (!ids)
        goto fail;
    int n = cfg->coordinator[0] ? 0 : moe_cluster_experts_of(&s->cl, cfg->server_index, ids);
    struct moe_fadam_opts fo = {cfg->expert_beta2, cfg->expert_decay_pow, cfg->expert_eps, 1e-30,
                                cfg->expert_clip, cfg->expert_relative_step, 1e-3};
    if (cfg->memory_check && n > 0 && check_shard_memory(s, n, err, errlen)) {
        char e2[1200];
        snprintf(e2, sizeof e2, "server %d: %s", cfg->server_index, err);
        snprintf(err, errlen, "%s", e2);
        goto fail;
    }
    s->shard = expert_shard_new_ex(s->D, s->H, n, ids, (uint64_t)cfg->seed, &fo, false);
    if (!s->shard) {
        snprintf(err, errlen, "cannot allocate %d experts of %dx%d", n, s->D, s->H);
        goto fail;
    }
    s->fwd = calloc((size_t)s->W, sizeof *s->fwd);
    s->bwd = calloc((size_t)s->W, sizeof *s->bwd);
    /* room for every expert: an epoch may give this server any of them */
    s->u_ids = malloc(sizeof(int32_t) * (size_t)cfg->n_experts);
    s->u_rows = malloc(sizeof(int) * (size_t)cfg->n_experts);
    s->u_base = malloc(sizeof(size_t) * (size_t)cfg->n_experts);
    if (!s->fwd || !s->bwd || !s->u_ids || !s->u_rows || !s->u_base)
        goto fail;
    free(ids);
    if (s->coord)
        moe_info("serving on %s as server %u, %d worker(s); experts come with the coordinator's "
                 "epoch", ep, s->id, s->W);
    else
        moe_info("server %d of %d: %d experts (%d..%d), %d worker(s), listening on %s",
                 cfg->server_index, s->cl.n_servers, n, n ? expert_shard_id(s->shard, 0) : -1,
                 n ? expert_shard_id(s->shard, n - 1) : -1, s->W, ep);
    return s;
fail:
    free(ids);
    expsrv_destroy(&s);
    return NULL;
}

static void clear_slots(struct slot *sl, int W)
{
    for (int r = 0; r < W; r++) {
        moe_wire_msg_free(&sl[r].msg);
        sl[r].have = false;
    }
}

void expsrv_destroy(expsrv_t **sp)
{
    if (!sp || !*sp)
        return;
    expsrv_t *s = *sp;
    if (s->fwd)
        clear_slots(s->fwd, s->W);
    if (s->bwd)
        clear_slots(s->bwd, s->W);
    free(s->fwd);
    free(s->bwd);
    free(s->u_ids);
    free(s->u_rows);
    free(s->u_base);
    moe_free_floats(&s->x_all);
    moe_free_floats(&s->y_all);
    if (s->hb_running) {
        atomic_store(&s->hb_stop, 1);
        pthread_join(s->hb_thread, NULL);
    }
    coord_client_destroy(&s->coord);
    if (s->sock)
        zmq_close(s->sock);
    if (s->ctx)
        zmq_ctx_term(s->ctx);
    expert_shard_destroy(&s->shard);
    moe_cluster_free(&s->cl);
    free(s);
    *sp = NULL;
}

/* ------------------------------------------------------------------------ */
/* Replies */

static void reply_error(expsrv_t *s, const struct moe_wire_msg *m, int code, const char *text)
{
    s->errors++;
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

/* Answers m with data (m->rows rows). When data is m's own payload,
 * overwritten with the results, it goes out in the frame the request came
 * in (no copy) if the wire dtype is float32. */
static int reply_tensor(expsrv_t *s, const struct moe_wire_msg *m, Moe__MsgType type,
                        const float *data)
{
    const Moe__Header *h = m->hdr;
    struct moe_wire_out o = {0};
    o.type = type;
    o.step = h->step;
    o.rank = (uint32_t)s->index;
    o.epoch = s->epoch;
    o.request_id = h->request_id;
    o.expert_ids = h->expert_ids;
    o.row_counts = h->row_counts;
    o.n_experts = h->n_expert_ids;
    o.dtype = s->dtype;
    o.width = (uint32_t)s->D;
    o.row0 = h->row0;
    char err[256];
    int rc = data == m->data
                 ? moe_wire_send_in_place(s->sock, m->identity, m->identity_len, &o, m, err,
                                          sizeof err)
                 : moe_wire_send(s->sock, m->identity, m->identity_len, &o, data, m->rows, err,
                                 sizeof err);
    if (rc)
        moe_warn("cannot reply to worker %u: %s", h->rank, err);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Validation shared by forward and backward */

static bool owned_ids(const expsrv_t *s, const Moe__Header *h, char *why, size_t len)
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

static bool check_rank(const expsrv_t *s, const Moe__Header *h, char *why, size_t len)
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

static int grow(expsrv_t *s, size_t rows)
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
static int build_union(expsrv_t *s, const struct slot *sl)
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
static void move_rows(expsrv_t *s, struct slot *sl, float *all, bool to_all)
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

static int finish_forward(expsrv_t *s)
{
    s->step_started = now_sec();
    int rc = build_union(s, s->fwd);
    if (rc)
        return rc;
    move_rows(s, s->fwd, s->x_all, true);
    rc = expert_shard_forward(s->shard, s->n_union, s->u_ids, s->u_rows, s->x_all, s->y_all);
    if (rc)
        return rc;
    move_rows(s, s->fwd, s->y_all, false);
    for (int r = 0; r < s->W; r++)
        reply_tensor(s, &s->fwd[r].msg, MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY, s->fwd[r].msg.data);
    size_t rows = 0;
    for (int u = 0; u < s->n_union; u++)
        rows += (size_t)s->u_rows[u];
    s->rows_total += rows;
    /* forward in and out; the backward moves as much again */
    s->bytes_total += 4 * rows * (size_t)s->D * moe_wire_dtype_size((int)s->dtype);
    s->compute_seconds += now_sec() - s->step_started;
    s->phase = PH_BACKWARD;
    return 0;
}

static void write_checkpoint(expsrv_t *s);

static int finish_backward(expsrv_t *s)
{
    const double t0 = now_sec();
    move_rows(s, s->bwd, s->x_all, true);
    /* Every worker's contribution is in: each expert's update is applied
     * as soon as its gradient exists, and only one expert's gradient is
     * ever held (DESIGN §3 step 7). */
    const int64_t t = s->step + 1;
    int rc = expert_shard_backward_apply(s->shard, s->n_union, s->u_ids, s->u_rows, s->x_all,
                                         s->y_all, t, moe_lr_at(&s->sched, t));
    if (rc)
        return rc;
    move_rows(s, s->bwd, s->y_all, false);
    for (int r = 0; r < s->W; r++)
        reply_tensor(s, &s->bwd[r].msg, MOE__MSG_TYPE__MSG_EXPERT_BACKWARD_REPLY, s->bwd[r].msg.data);
    s->compute_seconds += now_sec() - t0;
    const bool ckpt = (s->bwd[0].msg.hdr->flags & MOE_FLAG_CHECKPOINT) != 0;
    clear_slots(s->fwd, s->W);
    clear_slots(s->bwd, s->W);
    s->step = t;
    s->phase = PH_FORWARD;
    /* a consistent cut: before any forward of the next step */
    if (ckpt && s->coord && s->cfg->checkpoint_dir[0])
        write_checkpoint(s);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Handlers: each validates, then acts; on a bad message it replies an error
 * and returns without touching the step state. */

static void handle_eval(expsrv_t *s, struct moe_wire_msg *m)
{
    char why[256];
    const Moe__Header *h = m->hdr;
    if (!owned_ids(s, h, why, sizeof why)) {
        reply_error(s, m, MOE_ERR_NOTFOUND, why);
        return;
    }
    int n = (int)h->n_expert_ids;
    int *rows = malloc(sizeof(int) * (size_t)(n ? n : 1));
    size_t nf;
    float *y = NULL;
    if (rows && !moe_size_mul(m->rows, (size_t)s->D, &nf))
        y = moe_alloc_floats(nf);
    if (!rows || !y) {
        free(rows);
        moe_free_floats(&y);
        reply_error(s, m, MOE_ERR_NOMEM, "out of memory for an evaluation batch");
        return;
    }
    for (int j = 0; j < n; j++)
        rows[j] = (int)h->row_counts[j];
    int rc = expert_shard_infer(s->shard, n, h->expert_ids, rows, m->data, y);
    if (rc)
        reply_error(s, m, rc, "evaluation forward failed");
    else
        reply_tensor(s, m, MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY, y);
    free(rows);
    moe_free_floats(&y);
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
static void take_slot(expsrv_t *s, struct slot *sl, struct moe_wire_msg *m,
                      int (*finish)(expsrv_t *))
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
            reply_error(s, &sl[r].msg, rc, "the server could not compute this step");
        clear_slots(sl, s->W);
    }
}

static void handle_forward(expsrv_t *s, struct moe_wire_msg *m)
{
    char why[256];
    const Moe__Header *h = m->hdr;
    if (!check_rank(s, h, why, sizeof why) || !owned_ids(s, h, why, sizeof why) ||
        !check_rows_fit(h, why, sizeof why)) {
        reply_error(s, m, MOE_ERR_NOTFOUND, why);
        return;
    }
    if (h->eval) {
        handle_eval(s, m);
        return;
    }
    if ((int64_t)h->step != s->step) {
        snprintf(why, sizeof why, "forward of step %" PRIu64 " is %s: this server is at step %" PRId64,
                 h->step, (int64_t)h->step < s->step ? "stale" : "from the future", s->step);
        reply_error(s, m, MOE_ERR_STATE, why);
        return;
    }
    if (s->phase != PH_FORWARD || s->fwd[h->rank].have) {
        snprintf(why, sizeof why, "duplicate forward of step %" PRIu64 " from worker %u", h->step,
                 h->rank);
        reply_error(s, m, MOE_ERR_STATE, why);
        return;
    }
    if (!check_identity(m, why, sizeof why)) {
        reply_error(s, m, MOE_ERR_STATE, why);
        return;
    }
    take_slot(s, s->fwd, m, finish_forward);
}

static void handle_backward(expsrv_t *s, struct moe_wire_msg *m)
{
    char why[256];
    const Moe__Header *h = m->hdr;
    if (!check_rank(s, h, why, sizeof why)) {
        reply_error(s, m, MOE_ERR_NOTFOUND, why);
        return;
    }
    if ((int64_t)h->step != s->step) {
        snprintf(why, sizeof why, "backward of step %" PRIu64 " is %s: this server is at step %" PRId64,
                 h->step, (int64_t)h->step < s->step ? "stale" : "from the future", s->step);
        reply_error(s, m, MOE_ERR_STATE, why);
        return;
    }
    if (s->phase != PH_BACKWARD) {
        snprintf(why, sizeof why, "backward of step %" PRIu64 " before every worker's forward", h->step);
        reply_error(s, m, MOE_ERR_STATE, why);
        return;
    }
    if (s->bwd[h->rank].have) {
        snprintf(why, sizeof why, "duplicate backward of step %" PRIu64 " from worker %u", h->step,
                 h->rank);
        reply_error(s, m, MOE_ERR_STATE, why);
        return;
    }
    const Moe__Header *f = s->fwd[h->rank].msg.hdr;
    bool same = f->n_expert_ids == h->n_expert_ids;
    for (size_t j = 0; same && j < h->n_expert_ids; j++)
        same = f->expert_ids[j] == h->expert_ids[j] && f->row_counts[j] == h->row_counts[j];
    if (!same) {
        snprintf(why, sizeof why, "backward of worker %u does not match its forward's experts and rows",
                 h->rank);
        reply_error(s, m, MOE_ERR_SHAPE, why);
        return;
    }
    if (!check_identity(m, why, sizeof why)) {
        reply_error(s, m, MOE_ERR_STATE, why);
        return;
    }
    take_slot(s, s->bwd, m, finish_backward);
}

/* Parameters and optimizer state of the requested experts, one row of
 * P + S floats per expert; header.step = the steps they have seen. */
static void handle_fetch(expsrv_t *s, struct moe_wire_msg *m)
{
    char why[256];
    const Moe__Header *h = m->hdr;
    if (!owned_ids(s, h, why, sizeof why)) {
        reply_error(s, m, MOE_ERR_NOTFOUND, why);
        return;
    }
    /* Parameters change only when a step's last backward is in, so at any
     * moment they are those after s->step steps; the reply says which. */
    expert_shard_flush(s->shard, s->step);
    const size_t P = expert_ffn_param_count(s->D, s->H), S = expert_shard_opt_state_size(s->shard);
    const size_t n = h->n_expert_ids, width = P + S;
    float *buf = moe_alloc_floats(n * width);
    uint32_t *ones = malloc(sizeof(uint32_t) * (n ? n : 1));
    if (!buf || !ones) {
        moe_free_floats(&buf);
        free(ones);
        reply_error(s, m, MOE_ERR_NOMEM, "out of memory for a fetch");
        return;
    }
    for (size_t j = 0; j < n; j++) {
        int li = expert_shard_find(s->shard, h->expert_ids[j]);
        memcpy(buf + j * width, expert_shard_params(s->shard, li), sizeof(float) * P);
        memcpy(buf + j * width + P, expert_shard_opt_state(s->shard, li), sizeof(float) * S);
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
    o.dtype = MOE__DTYPE__DTYPE_F32; /* exact bytes, whatever the wire setting */
    o.width = (uint32_t)width;
    char err[256];
    if (moe_wire_send(s->sock, m->identity, m->identity_len, &o, buf, n, err, sizeof err))
        moe_warn("cannot send a fetch reply: %s", err);
    moe_free_floats(&buf);
    free(ones);
}

static void handle_message(expsrv_t *s)
{
    struct moe_wire_msg m;
    memset(&m, 0, sizeof m);
    char err[256];
    /* FETCH requests carry no payload, so any width passes the decoder. */
    int rc = moe_wire_recv(s->sock, true, ZMQ_DONTWAIT, &s->lim, &m, err, sizeof err);
    if (rc == MOE_ERR_STATE && !m.hdr && m.identity_len == 0)
        return; /* nothing there */
    s->msgs++;
    if (rc) {
        reply_error(s, &m, rc, err);
    } else if (s->waiting || m.hdr->epoch != s->epoch) {
        char why[160];
        snprintf(why, sizeof why, "message of epoch %u: this server %s epoch %u", m.hdr->epoch,
                 s->waiting ? "is between epochs after" : "serves", s->epoch);
        reply_error(s, &m, MOE_ERR_STATE, why);
    } else {
        switch (m.hdr->type) {
        case MOE__MSG_TYPE__MSG_EXPERT_FORWARD: handle_forward(s, &m); break;
        case MOE__MSG_TYPE__MSG_EXPERT_BACKWARD: handle_backward(s, &m); break;
        case MOE__MSG_TYPE__MSG_EXPERT_FETCH: handle_fetch(s, &m); break;
        default: {
            char why[96];
            snprintf(why, sizeof why, "message type %d is not served by an expert server",
                     (int)m.hdr->type);
            reply_error(s, &m, MOE_ERR_FORMAT, why);
        }
        }
    }
    moe_wire_msg_free(&m);
}

/* ------------------------------------------------------------------------ */
/* Epochs (with a coordinator) */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Held forward/backward messages of a step that will not complete. */
static void abandon_step(expsrv_t *s, const char *why)
{
    for (int r = 0; r < s->W; r++) {
        if (s->fwd[r].have && s->phase == PH_FORWARD)
            reply_error(s, &s->fwd[r].msg, MOE_ERR_STATE, why);
        if (s->bwd[r].have)
            reply_error(s, &s->bwd[r].msg, MOE_ERR_STATE, why);
    }
    clear_slots(s->fwd, s->W);
    clear_slots(s->bwd, s->W);
    s->phase = PH_FORWARD;
}

/* Copies expert `id` (parameters, factored-Adam state) from the shard file
 * of a checkpoint into slot i of dst. */
static int load_expert(expsrv_t *s, moe_safetensors_t *st, expert_shard_t *dst, int i, char *err,
                       size_t errlen)
{
    const int32_t id = expert_shard_id(dst, i);
    float *p = expert_shard_params(dst, i), *o = expert_shard_opt_state(dst, i);
    for (int part = 0; part < EXPERT_PARTS; part++) {
        const char *suffix;
        int nd;
        int64_t shape[2];
        size_t nst;
        expert_shard_part(part, s->D, s->H, &suffix, &nd, shape, &nst);
        char name[96];
        expert_shard_tensor_name(name, sizeof name, id, part, false);
        int rc = moe_safetensors_read_f32(st, name, nd, shape, p, err, errlen);
        if (rc)
            return rc;
        expert_shard_tensor_name(name, sizeof name, id, part, true);
        int64_t sh1[2] = {(int64_t)nst, 0};
        if ((rc = moe_safetensors_read_f32(st, name, 1, sh1, o, err, errlen)))
            return rc;
        p += (size_t)shape[0] * (nd == 2 ? (size_t)shape[1] : 1);
        o += nst;
    }
    return 0;
}

/* Builds the shard of the epoch: experts this server already holds at the
 * epoch's step stay as they are; the others are read from the epoch's
 * checkpoint (every file verified against the manifest's checksum first)
 * or, on a fresh start, initialised from the seed. */
static int load_epoch(expsrv_t *s, const struct coord_epoch *ep, char *err, size_t errlen)
{
    const struct trainer_config *cfg = s->cfg;
    struct moe_cluster cl;
    memset(&cl, 0, sizeof cl);
    int rc = moe_cluster_parse(&cl, ep->servers, s->workers, ep->placement, cfg->n_experts, err,
                               errlen);
    if (rc)
        return rc;
    if (ep->index < 0 || ep->index >= cl.n_servers) {
        snprintf(err, errlen, "epoch %u gives this server index %d of %d", ep->epoch, ep->index,
                 cl.n_servers);
        moe_cluster_free(&cl);
        return MOE_ERR_FORMAT;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cfg->n_experts);
    if (!ids) {
        moe_cluster_free(&cl);
        return MOE_ERR_NOMEM;
    }
    const int n = moe_cluster_experts_of(&cl, ep->index, ids);
    moe_cluster_free(&cl);
    struct moe_fadam_opts fo = {cfg->expert_beta2, cfg->expert_decay_pow, cfg->expert_eps, 1e-30,
                                cfg->expert_clip, cfg->expert_relative_step, 1e-3};
    /* The new shard is built beside the old one: it must fit on its own. */
    if (cfg->memory_check && (rc = check_shard_memory(s, n, err, errlen))) {
        free(ids);
        return rc;
    }
    expert_shard_t *next = expert_shard_new_ex(s->D, s->H, n, ids, (uint64_t)cfg->seed, &fo, false);
    free(ids);
    if (!next) {
        snprintf(err, errlen, "cannot allocate %d experts", n);
        return MOE_ERR_NOMEM;
    }
    const double t0 = now_sec();
    const bool current = s->shard && s->step == ep->step;
    const size_t P = expert_ffn_param_count(s->D, s->H), S = expert_shard_opt_state_size(next);
    struct moe_manifest man;
    memset(&man, 0, sizeof man);
    bool have_man = false;
    moe_safetensors_t **files = NULL;
    int kept = 0, loaded = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const int32_t id = expert_shard_id(next, i);
        const int old = current ? expert_shard_find(s->shard, id) : -1;
        if (old >= 0) {
            memcpy(expert_shard_params(next, i), expert_shard_params(s->shard, old), sizeof(float) * P);
            memcpy(expert_shard_opt_state(next, i), expert_shard_opt_state(s->shard, old),
                   sizeof(float) * S);
            kept++;
        } else if (ep->checkpoint[0]) {
            if (!have_man) {
                if ((rc = moe_manifest_read(ep->checkpoint, &man, err, errlen)))
                    break;
                have_man = true;
                if (man.n_experts != cfg->n_experts || man.step != ep->step) {
                    snprintf(err, errlen, "%s: manifest of step %" PRId64 " with %d experts, "
                             "expected step %" PRId64 " with %d", ep->checkpoint, man.step,
                             man.n_experts, ep->step, cfg->n_experts);
                    rc = MOE_ERR_FORMAT;
                    break;
                }
                files = calloc((size_t)man.n_files, sizeof *files);
                if (!files) {
                    rc = MOE_ERR_NOMEM;
                    break;
                }
            }
            const int f = man.expert_file[id];
            if (!files[f]) {
                char path[TRAINER_PATH_MAX + 200];
                snprintf(path, sizeof path, "%s/%s", ep->checkpoint, man.files[f].name);
                if ((rc = moe_manifest_verify_file(ep->checkpoint, &man, f, err, errlen)))
                    break;
                if (!(files[f] = moe_safetensors_open(path, err, errlen))) {
                    rc = MOE_ERR_FORMAT;
                    break;
                }
            }
            rc = load_expert(s, files[f], next, i, err, errlen);
            loaded++;
        }
        *expert_shard_opt_step(next, i) = ep->step;
    }
    for (int f = 0; files && f < man.n_files; f++)
        moe_safetensors_close(&files[f]);
    free(files);
    moe_manifest_free(&man);
    if (rc) {
        expert_shard_destroy(&next);
        return rc;
    }
    const double dt = now_sec() - t0;
    expert_shard_destroy(&s->shard);
    s->shard = next;
    s->step = ep->step;
    s->phase = PH_FORWARD;
    s->epoch = ep->epoch;
    s->index = ep->index;
    coord_client_set_epoch(s->coord, ep->epoch);
    moe_info("epoch %u: server %u with %d experts at step %" PRId64 " (%d kept, %d read from the "
             "checkpoint in %.3f s)", ep->epoch, s->id, n, ep->step, kept, loaded, dt);
    if (loaded)
        moe_info("migration: %.2f ms per expert read", 1e3 * dt / loaded);
    return 0;
}

/* Tells the coordinator this server failed in its epoch (why: a sentence
 * naming the cause); the coordinator rolls the cluster back, or stops it
 * when the same failure keeps repeating. The loop sees the new epoch. */
static void report_trouble(expsrv_t *s, const char *why)
{
    char err[512];
    struct coord_epoch ep;
    moe_error("%s", why);
    if (coord_client_epoch_wait(s->coord, s->step, MOE_FLAG_TROUBLE, why, &ep, err, sizeof err) == 0)
        coord_epoch_free(&ep);
}

/* Writes this server's shard of the checkpoint of the current step and
 * reports it to the coordinator; a failure is reported as trouble. */
static void write_checkpoint(expsrv_t *s)
{
    char folder[TRAINER_PATH_MAX + 32], path[TRAINER_PATH_MAX + 96], file[64], err[512],
        why[1024];
    snprintf(file, sizeof file, "server-%u.safetensors", s->id);
    if (moe_manifest_make_folder(s->cfg->checkpoint_dir, s->step, folder, sizeof folder, err,
                                 sizeof err)) {
        snprintf(why, sizeof why, "server %u cannot write its checkpoint of step %" PRId64 ": %s",
                 s->id, s->step, err);
        report_trouble(s, why);
        return;
    }
    snprintf(path, sizeof path, "%s/%s", folder, file);
    const double t0 = now_sec();
    /* Fault injection for the tests: die by SIGKILL half-way through
     * writing the shard of this step (a crash during a checkpoint). */
    const char *fault = getenv("MOE_FAULT_KILL_IN_CHECKPOINT");
    if (fault && strtoll(fault, NULL, 10) == s->step) {
        char tmp[TRAINER_PATH_MAX + 128];
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
        FILE *f = fopen(tmp, "w");
        if (f) {
            fputs("{\"partial", f);
            fflush(f);
        }
        moe_warn("MOE_FAULT_KILL_IN_CHECKPOINT=%s: killing this server while it writes %s", fault,
                 path);
        raise(SIGKILL);
    }
    if (expsrv_write_shard(s, path, err, sizeof err)) {
        snprintf(why, sizeof why, "server %u cannot write %s: %s", s->id, path, err);
        report_trouble(s, why);
        return;
    }
    if (coord_client_checkpoint_done(s->coord, s->step, file, err, sizeof err)) {
        moe_error("checkpoint of step %" PRId64 ": %s", s->step, err);
        return;
    }
    moe_info("checkpoint of step %" PRId64 ": %s written in %.3f s", s->step, path, now_sec() - t0);
}

/* The first SIGTERM/SIGINT with a coordinator: ask to be drained. Returns
 * 1 when the server may exit at once (it holds nothing, or the cluster is
 * over), 0 when it serves on until the coordinator drains it or stops the
 * cluster, -1 when it cannot be drained (it then finishes its step and
 * exits; the cluster recovers from its absence). */
static int ask_to_leave(expsrv_t *s)
{
    char err[1024], said[256];
    uint32_t flags = 0;
    s->leave_sent = true;
    int rc = coord_client_leave(s->coord, s->step, &flags, said, sizeof said, err, sizeof err);
    if (rc == MOE_ERR_STOPPED || (rc == 0 && (flags & MOE_FLAG_STOP))) {
        moe_info("signal: leaving (%s)", rc ? "the cluster is stopped" : said);
        return 1;
    }
    if (rc == 0) {
        moe_info("signal: asked the coordinator to drain this server: %s (a second signal stops "
                 "it at once)", said);
        return 0;
    }
    moe_warn("signal: this server cannot be drained (%s); it finishes its step and exits", err);
    return -1;
}

/* What the heartbeat thread heard, acted on between messages. Returns 1 to
 * stop serving (s->exit_code says how), 0 to go on. */
static int check_coordinator(expsrv_t *s, volatile sig_atomic_t *stop)
{
    char err[1024];
    if (atomic_load(&s->hb_failed)) {
        snprintf(s->exit_why, sizeof s->exit_why, "%s", s->hb_failure);
        s->exit_code = MOE_ERR_FAILED;
        return 1;
    }
    /* Either socket may carry the news: the heartbeat thread's, and this
     * loop's (drained for stale answers). */
    const char *f = coord_client_failure(s->coord);
    if (f) {
        snprintf(s->exit_why, sizeof s->exit_why, "%s", f);
        s->exit_code = MOE_ERR_FAILED;
        return 1;
    }
    if ((atomic_load(&s->hb_stopped) || coord_client_stopped(s->coord)) && !s->exit_after_step) {
        moe_info("the operator stopped the cluster: exiting once no step is in progress");
        s->exit_after_step = true;
    }
    const long long silent_ms = atomic_load(&s->hb_silence_ms);
    if (silent_ms > s->cfg->coordinator_wait_s * 1000) {
        snprintf(s->exit_why, sizeof s->exit_why, "the coordinator at %s has not answered for "
                 "%lld s (--coordinator-wait-s); giving up", s->cfg->coordinator,
                 silent_ms / 1000);
        s->exit_code = MOE_ERR_IO;
        return 1;
    }
    if (atomic_load(&s->hb_unregistered) && !s->leave_sent) {
        /* The coordinator restarted and does not know us: register again;
         * its first epoch rolls the cluster back to the last checkpoint. */
        atomic_store(&s->hb_unregistered, 0);
        moe_warn("the coordinator at %s does not know this server (it restarted?): registering "
                 "again", s->cfg->coordinator);
        int rc = coord_client_register(s->coord, s->own, s->contract, s->cfg->coordinator_wait_s,
                                       err, sizeof err);
        if (rc == MOE_ERR_FAILED || rc == MOE_ERR_CONFIG) {
            snprintf(s->exit_why, sizeof s->exit_why, "%s", err);
            s->exit_code = rc;
            return 1;
        }
        if (rc == MOE_ERR_STOPPED) {
            s->exit_after_step = true;
        } else if (rc) {
            moe_warn("registering again: %s", err);
        } else if (coord_client_id(s->coord) != s->id) {
            s->id = coord_client_id(s->coord);
            moe_info("registered again as server %u", s->id);
        }
    }
    if (*stop && !s->leave_sent && !s->exit_after_step) {
        int r = ask_to_leave(s);
        if (r != 0)
            s->exit_after_step = true;
    }
    return 0;
}

/* Between epochs: asks the coordinator until it answers with an epoch for
 * this server, loads it, and says so. Returns 1 when it should exit (drained,
 * or the cluster stopped: s->exit_code says how), 0 when serving, a negative
 * code on error. */
static int await_epoch(expsrv_t *s, volatile sig_atomic_t *stop)
{
    char err[1024];
    s->waiting = true;
    for (;;) {
        if (check_coordinator(s, stop))
            return 1;
        if (s->exit_after_step)
            return 1; /* nothing is in progress between epochs */
        struct coord_epoch ep;
        int rc = coord_client_epoch_wait(s->coord, s->step, 0, NULL, &ep, err, sizeof err);
        if (rc == MOE_ERR_IO) {
            moe_warn("%s; asking again", err);
            continue;
        }
        if (rc == MOE_ERR_STOPPED) {
            moe_info("the operator stopped the cluster; exiting");
            return 1;
        }
        if (rc) {
            snprintf(s->exit_why, sizeof s->exit_why, "%s", err);
            s->exit_code = rc;
            return 1;
        }
        if (ep.flags & MOE_FLAG_DRAINED) {
            moe_info("drained: this server's experts moved to the others; exiting");
            return 1;
        }
        if (ep.flags & (MOE_FLAG_NOT_READY | MOE_FLAG_FINISHED) || ep.epoch <= s->epoch) {
            coord_epoch_free(&ep);
            /* serve nothing, but keep the ROUTER drained of stale requests */
            for (int i = 0; i < 64; i++) {
                int ev = 0;
                size_t len = sizeof ev;
                if (zmq_getsockopt(s->sock, ZMQ_EVENTS, &ev, &len) || !(ev & ZMQ_POLLIN))
                    break;
                handle_message(s);
            }
            sleep_ms(50);
            continue;
        }
        rc = load_epoch(s, &ep, err, sizeof err);
        const bool initial = ep.flags & MOE_FLAG_INITIAL_CHECKPOINT;
        const uint32_t epoch = ep.epoch;
        coord_epoch_free(&ep);
        if (rc) {
            /* cannot serve this epoch: report trouble, the coordinator moves on */
            char why[1200];
            snprintf(why, sizeof why, "server %u cannot load epoch %u: %s", s->id, epoch, err);
            coord_client_set_epoch(s->coord, epoch);
            report_trouble(s, why);
            sleep_ms(500);
            continue;
        }
        if (initial && s->cfg->checkpoint_dir[0])
            write_checkpoint(s);
        struct coord_epoch e2;
        rc = coord_client_epoch_wait(s->coord, s->step, MOE_FLAG_LOADED, NULL, &e2, err, sizeof err);
        if (rc == 0)
            coord_epoch_free(&e2);
        s->waiting = false;
        publish(s);
        return 0;
    }
}

int expsrv_run(expsrv_t *s, volatile sig_atomic_t *stop)
{
    if (s->coord) {
        int rc = await_epoch(s, stop);
        if (rc == 1)
            goto done;
        if (rc < 0)
            return rc;
    }
    for (;;) {
        if (s->coord && check_coordinator(s, stop))
            break;
        if ((*stop && !s->coord) || s->exit_after_step) {
            bool mid_step = s->phase == PH_BACKWARD;
            for (int r = 0; r < s->W; r++)
                mid_step |= s->fwd[r].have;
            if (!mid_step)
                break;
            if (s->stop_since == 0) {
                s->stop_since = now_sec();
                moe_info("stopping: finishing step %" PRId64 " first", s->step);
            } else if (now_sec() - s->stop_since > (double)s->cfg->timeout_ms / 1000.0) {
                moe_warn("stopping: step %" PRId64 " did not complete in time; it is dropped", s->step);
                break;
            }
        }
        if (s->coord) {
            publish(s);
            coord_client_drain(s->coord);
            if (atomic_load(&s->hb_seen_epoch) > s->epoch && !s->exit_after_step) {
                /* the cluster moved on (a failure or a reconfiguration):
                 * parameters change only when a step's last backward is in,
                 * so the experts in memory are still those after s->step
                 * steps */
                abandon_step(s, "the cluster changed configuration (new epoch)");
                int rc = await_epoch(s, stop);
                if (rc == 1)
                    break;
                if (rc < 0)
                    return rc;
                continue;
            }
        }
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, s->coord ? 50 : 200);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            moe_error("poll failed: %s", zmq_strerror(zmq_errno()));
            return MOE_ERR_IO;
        }
        /* A bounded amount of work per wake-up, then look at *stop again. */
        for (int budget = 0; budget < 64 && rc > 0; budget++) {
            int ev = 0;
            size_t len = sizeof ev;
            if (zmq_getsockopt(s->sock, ZMQ_EVENTS, &ev, &len) || !(ev & ZMQ_POLLIN))
                break;
            handle_message(s);
        }
    }
done:;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    moe_info("served %" PRId64 " steps, %" PRId64 " messages, rejected %" PRId64
             "; peak RSS %.1f MB", s->step, s->msgs, s->errors, (double)ru.ru_maxrss / 1024.0);
    return s->exit_code;
}

/* ------------------------------------------------------------------------ */

int expsrv_write_shard(expsrv_t *s, const char *path, char *err, size_t errlen)
{
    expert_shard_flush(s->shard, s->step);
    const int n = expert_shard_count(s->shard);
    const size_t ntens = (size_t)n * EXPERT_PARTS * 2;
    struct moe_st_entry *e = calloc(ntens ? ntens : 1, sizeof *e);
    char(*names)[96] = calloc(ntens ? ntens : 1, sizeof *names);
    if (!e || !names) {
        free(e);
        free(names);
        snprintf(err, errlen, "out of memory writing the shard");
        return MOE_ERR_NOMEM;
    }
    size_t k = 0;
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) {
        const float *p = expert_shard_params(s->shard, i), *st = expert_shard_opt_state(s->shard, i);
        for (int part = 0; part < EXPERT_PARTS; part++) {
            const char *suffix;
            int nd;
            int64_t shape[2];
            size_t nst;
            expert_shard_part(part, s->D, s->H, &suffix, &nd, shape, &nst);
            size_t numel = (size_t)shape[0] * (nd == 2 ? (size_t)shape[1] : 1);
            expert_shard_tensor_name(names[k], 96, expert_shard_id(s->shard, i), part, false);
            e[k] = (struct moe_st_entry){names[k], nd, {shape[0], shape[1]}, p};
            sum += moe_checksum_tensor(names[k], p, numel * sizeof(float));
            k++;
            expert_shard_tensor_name(names[k], 96, expert_shard_id(s->shard, i), part, true);
            e[k] = (struct moe_st_entry){names[k], 1, {(int64_t)nst}, st};
            sum += moe_checksum_tensor(names[k], st, nst * sizeof(float));
            k++;
            p += numel;
            st += nst;
        }
    }
    char step_s[32], sum_s[32];
    snprintf(step_s, sizeof step_s, "%" PRId64, s->step);
    snprintf(sum_s, sizeof sum_s, "%016" PRIx64, sum);
    const char *meta[] = {"format", "moe-shard-1", "step", step_s, "checksum", sum_s, NULL};
    int rc = moe_safetensors_write(path, e, k, meta, err, errlen);
    free(e);
    free(names);
    return rc;
}
