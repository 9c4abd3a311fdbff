/* The coordinator's life cycle, its replies, the dispatch of each message
 * and its clock (moe-coordinator process; see coord.h). */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "coord_internal.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_prom.h"
#include "moe_wire.h"

static int count_list(const char *s)
{
    if (!s[0])
        return 0;
    int n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* The highest N of "server-N.safetensors" among a manifest's files: ids
 * given before a coordinator restart stay taken. -1 if none. */
static int64_t max_server_file_id(const struct moe_manifest *m)
{
    int64_t best = -1;
    for (int i = 0; i < m->n_files; i++) {
        unsigned long long id;
        char tail[32];
        if (sscanf(m->files[i].name, "server-%llu.%31s", &id, tail) == 2 &&
            strcmp(tail, "safetensors") == 0 && id < UINT32_MAX && (int64_t)id > best)
            best = (int64_t)id;
    }
    return best;
}

/* --servers: the endpoints expected; entry i is server id i. */
static int parse_servers(coord_t *c, const char *list, char *err, size_t errlen)
{
    const char *p = list;
    while (*p) {
        size_t len = strcspn(p, ",");
        while (len && *p == ' ') {
            p++;
            len--;
        }
        size_t l2 = len;
        while (l2 && p[l2 - 1] == ' ')
            l2--;
        if (l2 == 0 || l2 >= sizeof c->listed[0] || c->n_slots == MAX_SLOTS) {
            moe_err_set(err, errlen, "servers: empty or too long entry (or more than %d)", MAX_SLOTS);
            return MOE_ERR_CONFIG;
        }
        struct coord_member *m = &c->servers[c->n_slots];
        memcpy(m->endpoint, p, l2);
        memcpy(c->listed[c->n_slots], p, l2);
        m->used = true;
        m->id = (uint32_t)c->n_slots;
        c->n_slots++;
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

/* The newest committed checkpoint of --checkpoint-dir, if any: its step
 * (training resumes there) and the server ids it used. */
static int resume_from_checkpoint(coord_t *c, const struct moe_options *cfg, char *err,
                                  size_t errlen)
{
    struct moe_manifest m;
    memset(&m, 0, sizeof m);
    char why[512];
    int rc = moe_manifest_latest(cfg->checkpoint_dir, true, c->committed, sizeof c->committed,
                                 &m, why, sizeof why);
    if (rc == 0) {
        if (m.n_experts != c->E || m.d_model != cfg->d_model || m.d_hidden != cfg->d_hidden ||
            m.workers != c->W) {
            moe_err_set(err, errlen,
                     "%s: checkpoint of another shape (E %d, D %d, H %d, %d workers; this "
                     "cluster: E %d, D %d, H %d, %d workers)",
                     c->committed, m.n_experts, m.d_model, m.d_hidden, m.workers, c->E,
                     cfg->d_model, cfg->d_hidden, c->W);
            moe_manifest_free(&m);
            return MOE_ERR_CONFIG;
        }
        c->committed_step = m.step;
        const int64_t top = max_server_file_id(&m);
        if (top >= (int64_t)c->next_id)
            c->next_id = (uint32_t)top + 1;
        moe_manifest_free(&m);
        moe_info("resuming from %s (step %" PRId64 ")", c->committed, c->committed_step);
    } else if (rc != MOE_ERR_NOTFOUND) {
        moe_err_set(err, errlen, "%s", why);
        return MOE_ERR_CONFIG;
    } else {
        c->committed[0] = '\0';
    }
    return 0;
}

/* The keys, the context with its guard (ZAP handler), and the ROUTER
 * socket members register with. */
static int bind_socket(coord_t *c, const char *endpoint, char *err, size_t errlen)
{
    const struct moe_options *cfg = c->cfg;
    int rc = moe_sec_init(&c->sec, MOE_SEC_COORDINATOR, cfg->keys, cfg->insecure, err, errlen);
    if (!rc)
        rc = moe_sec_check(&c->sec, endpoint, "the coordinator's address", err, errlen);
    if (rc)
        return rc;
    if (cfg->insecure)
        moe_warn("--insecure: the coordinator talks plain TCP; anyone who reaches %s can join, "
                 "stall or drain the cluster", endpoint);
    c->ctx = zmq_ctx_new();
    if (c->ctx && c->sec.keys && !(c->guard = moe_guard_new(c->ctx, &c->sec, err, errlen)))
        return MOE_ERR_IO;
    c->net = (struct moe_net){&c->sec, c->guard, cfg->max_connections};
    c->curve = moe_sec_curve(&c->sec, endpoint);
    c->sock = c->ctx ? zmq_socket(c->ctx, ZMQ_ROUTER) : NULL;
    /* No ROUTER_HANDOVER: every process has its own routing id, so a
     * newcomer never takes over the connection of a member. */
    int linger = 0;
    int64_t maxmsg = (int64_t)c->lim.max_bytes + 4096;
    if (!c->sock || zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg))
        return moe_err_fail(MOE_ERR_IO, err, errlen, "cannot bind %s: %s", endpoint,
                            zmq_strerror(zmq_errno()));
    return moe_net_bind(&c->net, c->sock, MOE_SEC_DOMAIN_COORDINATOR, endpoint,
                        "the coordinator socket", err, errlen);
}

coord_t *coord_new(const struct moe_options *cfg, char *err, size_t errlen)
{
    coord_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cfg = cfg;
    c->E = moe_options_experts_total(cfg); /* every MoE layer's experts */
    c->W = count_list(cfg->workers);
    if (c->W == 0)
        c->W = 1;
    if (!cfg->coordinator[0]) {
        moe_err_set(err, errlen, "coordinator: no endpoint to bind (use --coordinator tcp://HOST:PORT)");
        goto fail;
    }
    c->stats = coord_stats_new(c->E, c->W, 0.9, 1000);
    c->servers = calloc(MAX_SLOTS, sizeof *c->servers);
    c->listed = calloc(MAX_SLOTS, sizeof *c->listed);
    c->workers = calloc((size_t)c->W, sizeof *c->workers);
    c->pending = calloc((size_t)c->W, sizeof *c->pending);
    /* a hierarchical MoE's workers send its per-group factors of Load_H too */
    const int X = moe_options_hierarchical(cfg) ? 2 * cfg->groups : 0;
    if (c->stats && X && coord_stats_set_groups(c->stats, cfg->groups))
        coord_stats_destroy(&c->stats);
    c->reply = calloc(3 * (size_t)c->E + (size_t)X, sizeof(float));
    c->server_of = malloc(sizeof(int32_t) * (size_t)c->E);
    c->ep_place = malloc(sizeof(int32_t) * (size_t)c->E);
    c->ep_slot = calloc(MAX_SLOTS, sizeof(int));
    if (!c->stats || !c->servers || !c->listed || !c->workers || !c->pending || !c->reply ||
        !c->server_of || !c->ep_place || !c->ep_slot) {
        moe_err_set(err, errlen, "out of memory");
        goto fail;
    }
    /* The cluster's BLAS kernels are its first member's, not ours: blank
     * until then (moe_options_contract_kernels). */
    if (moe_options_contract(cfg, MOE_ROLE_SERVER, c->contract_server, CONTRACT_MAX) < 0 ||
        moe_options_contract(cfg, MOE_ROLE_WORKER, c->contract_worker, CONTRACT_MAX) < 0 ||
        moe_options_contract_put(c->contract_server, CONTRACT_MAX, "blas_kernels", "") ||
        moe_options_contract_put(c->contract_worker, CONTRACT_MAX, "blas_kernels", "")) {
        moe_err_set(err, errlen, "the training configuration is too long to compare");
        goto fail;
    }
    for (int e = 0; e < c->E; e++)
        c->server_of[e] = c->ep_place[e] = -1;
    for (int s = 0; s < MAX_SLOTS; s++)
        c->servers[s].index = -1;
    if (parse_servers(c, cfg->servers, err, errlen))
        goto fail;
    c->n_listed = c->n_slots;
    c->next_id = (uint32_t)c->n_listed;
    c->min_servers = cfg->min_servers > 0 ? cfg->min_servers : (c->n_slots > 0 ? c->n_slots : 1);
    c->placement_version = 0;
    c->ck_step = c->committed_step = -1;
    moe_hist_init(&c->step_hist, moe_hist_step_bounds, moe_hist_step_n);
    moe_hist_init(&c->ckpt_hist, moe_hist_ckpt_bounds, moe_hist_ckpt_n);
    c->rb_target = c->rb_high = -1;
    c->phase = COORD_FORMING;
    if (cfg->checkpoint_dir[0] && resume_from_checkpoint(c, cfg, err, errlen))
        goto fail;
    if (!cfg->checkpoint_dir[0])
        moe_warn("no --checkpoint-dir: a failed server or worker stops the cluster instead of "
                 "rolling back, and only worker 0's final model (--final-model) is kept");
    c->lim = (struct moe_wire_limits){moe_options_message_limit(cfg, MOE_ROLE_COORDINATOR), 0,
                                      (uint32_t)c->E, 1};
    if (bind_socket(c, cfg->coordinator, err, errlen))
        goto fail;
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
    if (c->sock) {
        /* the last answers (stop, failure) still get out */
        int linger = 1000;
        zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(c->sock);
    }
    moe_guard_destroy(&c->guard); /* after the socket it guards */
    if (c->ctx)
        zmq_ctx_term(c->ctx);
    coord_stats_destroy(&c->stats);
    free(c->servers);
    free(c->listed);
    free(c->workers);
    free(c->pending);
    free(c->reply);
    free(c->server_of);
    free(c->ep_place);
    free(c->ep_slot);
    free(c);
    *cp = NULL;
}

void *coord_socket(coord_t *c) { return c->sock; }

bool coord_insecure(const coord_t *c)
{
    return c->sec.insecure && strncmp(c->cfg->coordinator, "tcp://", 6) == 0;
}

void coord_refused(const coord_t *c, uint64_t *keys, uint64_t *handshakes, uint64_t *over_cap)
{
    struct moe_guard_counts g;
    moe_guard_counts(c->guard, &g);
    *keys = g.refused_keys;
    *handshakes = g.handshake_failures;
    *over_cap = g.refused_connections;
}

const coord_stats_t *coord_stats(const coord_t *c) { return c->stats; }

int coord_n_servers(const coord_t *c) { return c->n_slots; }

int coord_n_workers(const coord_t *c) { return c->W; }

const struct coord_member *coord_server(const coord_t *c, int i) { return &c->servers[i]; }

const struct coord_member *coord_worker(const coord_t *c, int r) { return &c->workers[r]; }

uint32_t coord_placement_version(const coord_t *c) { return c->placement_version; }

uint32_t coord_epoch(const coord_t *c) { return c->epoch; }

enum coord_phase coord_phase(const coord_t *c) { return c->phase; }

int64_t coord_committed_step(const coord_t *c) { return c->committed_step; }

uint64_t coord_errors(const coord_t *c) { return c->errors; }

uint64_t coord_generation(const coord_t *c) { return c->generation; }

uint64_t coord_rollbacks(const coord_t *c) { return c->rollbacks; }

const char *coord_failure(const coord_t *c) { return c->failed ? c->failed_why : NULL; }

int64_t coord_server_of(const coord_t *c, int e)
{
    return c->server_of[e] < 0 ? -1 : (int64_t)c->servers[c->server_of[e]].id;
}


void coord_placement_compute(int E, const int32_t *old, const int *live, int n_live, int32_t *out)
{
    int target[MAX_SLOTS], have[MAX_SLOTS], cur[MAX_SLOTS], order[MAX_SLOTS];
    const int base = E / n_live, extra = E % n_live;
    for (int j = 0; j < n_live; j++) {
        cur[j] = 0;
        have[j] = 0;
        order[j] = j;
    }
    for (int e = 0; e < E; e++)
        for (int j = 0; j < n_live; j++)
            if (old[e] == live[j])
                cur[j]++;
    /* the +1 shares go to the slots holding most now (ties: lower slot) */
    for (int a = 1; a < n_live; a++) {
        int x = order[a], b = a;
        while (b > 0 && cur[order[b - 1]] < cur[x]) {
            order[b] = order[b - 1];
            b--;
        }
        order[b] = x;
    }
    for (int r = 0; r < n_live; r++)
        target[order[r]] = base + (r < extra ? 1 : 0);
    for (int e = 0; e < E; e++) {
        out[e] = -1;
        for (int j = 0; j < n_live; j++)
            if (old[e] == live[j] && have[j] < target[j]) {
                out[e] = live[j];
                have[j]++;
                break;
            }
    }
    int j = 0;
    for (int e = 0; e < E; e++) {
        if (out[e] >= 0)
            continue;
        while (have[j] >= target[j])
            j++;
        out[e] = live[j];
        have[j]++;
    }
}

void coord_placement_compute_groups(int E, int B, const int32_t *old, const int *live, int n_live,
                                    int32_t *out)
{
    if (B <= 1 || E % B) {
        coord_placement_compute(E, old, live, n_live, out);
        return;
    }
    const int A = E / B;
    int32_t *og = malloc(sizeof(int32_t) * 2 * (size_t)A);
    if (!og) { /* the flat placement: the same whenever every group is whole */
        coord_placement_compute(E, old, live, n_live, out);
        return;
    }
    int32_t *ng = og + A;
    /* a group counts as held by a slot only when it is whole there */
    for (int i = 0; i < A; i++) {
        og[i] = old[i * B];
        for (int j = 1; j < B; j++)
            if (old[i * B + j] != og[i])
                og[i] = -1;
    }
    coord_placement_compute(A, og, live, n_live, ng);
    for (int e = 0; e < E; e++)
        out[e] = ng[e / B];
    free(og);
}

int coord_placement_live(int units, const int32_t *old, int n_old, int *live, int n_live)
{
    if (n_live <= units)
        return n_live;
    int keep[MAX_SLOTS], k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int j = 0; j < n_live && k < units; j++) {
            bool holds = false;
            for (int e = 0; e < n_old && !holds; e++)
                holds = old[e] == live[j];
            bool taken = false;
            for (int q = 0; q < k && !taken; q++)
                taken = keep[q] == live[j];
            if (holds == (pass == 0) && !taken)
                keep[k++] = live[j];
        }
    /* ascending, as the caller gave them */
    for (int a = 1; a < k; a++)
        for (int b = a; b > 0 && keep[b - 1] > keep[b]; b--) {
            const int x = keep[b];
            keep[b] = keep[b - 1];
            keep[b - 1] = x;
        }
    memcpy(live, keep, sizeof(int) * (size_t)k);
    return k;
}

void coord__send_out(coord_t *c, const uint8_t *id, size_t id_len, struct moe_wire_out *o,
                     const float *data, uint64_t rows)
{
    char err[128];
    o->epoch = c->epoch;
    if (moe_wire_send(c->sock, id, id_len, o, data, rows, err, sizeof err))
        moe_warn("cannot send a reply: %s", err);
}

/* An error reply with a code and a sentence (and flags, e.g. FAILED). */
void coord__reply_error_flags(coord_t *c, const struct moe_wire_msg *m, int code, const char *text,
                              uint32_t flags)
{
    if (!(flags & (MOE_FLAG_FAILED | MOE_FLAG_STOP)) && code != MOE_ERR_UNREGISTERED &&
        code != MOE_ERR_AGAIN) {
        c->errors++;
        c->reasons[moe_reason_index(code)]++;
        if (c->errors <= 20 || c->errors % 100 == 0) {
            char safe[200];
            moe_log_sanitize(safe, sizeof safe, text, strlen(text));
            moe_warn("rejected message #%" PRIu64 ": %s", c->errors, safe);
        }
    }
    if (!m->identity_len)
        return;
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_ERROR;
    o.step = m->hdr ? m->hdr->step : 0;
    o.request_id = m->hdr ? m->hdr->request_id : 0;
    o.error_code = code;
    o.error_text = text;
    o.flags = flags;
    coord__send_out(c, m->identity, m->identity_len, &o, NULL, 0);
}

void coord__reply_error(coord_t *c, const struct moe_wire_msg *m, int code, const char *text)
{
    coord__reply_error_flags(c, m, code, text, 0);
}

void coord__ack_flags(coord_t *c, const struct moe_wire_msg *m, Moe__MsgType type, uint32_t flags,
                      const char *text)
{
    struct moe_wire_out o = {0};
    o.type = type;
    o.step = m->hdr->step;
    o.request_id = m->hdr->request_id;
    o.placement_version = c->placement_version;
    o.flags = flags;
    o.error_text = text;
    coord__send_out(c, m->identity, m->identity_len, &o, NULL, 0);
}

void coord__ack(coord_t *c, const struct moe_wire_msg *m, Moe__MsgType type)
{
    coord__ack_flags(c, m, type, 0, NULL);
}

/* Sends `o` (with `rows` rows of data) to every worker waiting for the
 * global vectors, each with its own request id; none waits afterwards. */
void coord__answer_pending(coord_t *c, struct moe_wire_out *o, const float *data, uint64_t rows)
{
    for (int r = 0; r < c->W; r++) {
        struct pending *p = &c->pending[r];
        if (!p->waiting)
            continue;
        o->request_id = p->request_id;
        coord__send_out(c, p->identity, p->identity_len, o, data, rows);
        p->waiting = false;
    }
}

/* Workers waiting for the global vectors of a step that will not complete. */
void coord__fail_pending(coord_t *c, const char *why, uint32_t flags)
{
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_ERROR;
    o.error_code = MOE_ERR_STATE;
    o.error_text = why;
    o.flags = flags;
    coord__answer_pending(c, &o, NULL, 0);
}


/* Every message speaks for a role (header.role: 1 worker, 2 server); with
 * CURVE it must be the role its key was authenticated as. */
static bool role_matches_key(const coord_t *c, const struct moe_wire_msg *m, char *why, size_t len)
{
    if (!c->curve)
        return true;
    const int peer = moe_sec_peer(m), claimed = (int)m->hdr->role;
    if ((claimed == MOE_ROLE_WORKER && peer == MOE_SEC_WORKER) ||
        (claimed == MOE_ROLE_SERVER && peer == MOE_SEC_SERVER))
        return true;
    snprintf(why, len, "this connection is authenticated with the %s key: it cannot speak as %s",
             moe_sec_role_name(peer),
             claimed == MOE_ROLE_WORKER   ? "a worker"
             : claimed == MOE_ROLE_SERVER ? "an expert server"
                                          : "an unknown role");
    return false;
}

/* One decoded message to its handler. */
static void dispatch(coord_t *c, struct moe_wire_msg *m, double now)
{
    char why[160];
    if (!role_matches_key(c, m, why, sizeof why)) {
        coord__reply_error(c, m, MOE_ERR_STATE, why);
        return;
    }
    switch (m->hdr->type) {
    case MOE__MSG_TYPE__MSG_REGISTER: coord__handle_register(c, m, now); break;
    case MOE__MSG_TYPE__MSG_HEARTBEAT: coord__handle_heartbeat(c, m, now); break;
    case MOE__MSG_TYPE__MSG_STATS: coord__handle_stats(c, m, now); break;
    case MOE__MSG_TYPE__MSG_EPOCH_WAIT: coord__handle_epoch_wait(c, m, now); break;
    case MOE__MSG_TYPE__MSG_CHECKPOINT_DONE: coord__handle_ckpt_done(c, m); break;
    case MOE__MSG_TYPE__MSG_LEAVE: coord__handle_leave(c, m); break;
    default:
        snprintf(why, sizeof why, "message type %d is not served by the coordinator",
                 (int)m->hdr->type);
        coord__reply_error(c, m, MOE_ERR_FORMAT, why);
    }
}

/* A received message (rc: its decoding) to its handler or its error reply. */
static void handle(coord_t *c, struct moe_wire_msg *m, int rc, const char *err, double now)
{
    c->messages++;
    c->generation++;
    if (rc)
        coord__reply_error(c, m, rc, err);
    else
        dispatch(c, m, now);
    moe_wire_msg_free(m);
}

int coord_handle_one(coord_t *c, double now)
{
    struct moe_wire_msg m;
    memset(&m, 0, sizeof m);
    char err[256];
    c->lim.width = 0;
    c->now = now;
    if (c->born == 0)
        c->born = now;
    int rc = moe_wire_recv(c->sock, true, ZMQ_DONTWAIT, &c->lim, &m, err, sizeof err);
    if (rc == MOE_ERR_STATE && !m.hdr && m.identity_len == 0)
        return 0;
    handle(c, &m, rc, err, now);
    return 1;
}

void coord_inject(coord_t *c, const void *const *frames, const size_t *sizes, int nframes,
                  const uint8_t *identity, size_t identity_len, const char *user_id, double now)
{
    struct moe_wire_msg m;
    char err[256];
    c->lim.width = 0;
    c->now = now;
    if (c->born == 0)
        c->born = now;
    int rc = moe_wire_decode_as(frames, sizes, nframes, &c->lim, identity, identity_len, user_id,
                                &m, err, sizeof err);
    handle(c, &m, rc, err, now);
}

void coord_tick(coord_t *c, double now)
{
    c->now = now;
    if (c->born == 0)
        c->born = now;
    const double timeout = (double)c->cfg->heartbeat_timeout_ms / 1000.0;
    for (int s = 0; s < c->n_slots; s++) {
        struct coord_member *m = &c->servers[s];
        if (m->used && m->alive && now - m->last_seen > timeout) {
            m->alive = false;
            c->servers_lost++;
            c->generation++;
            moe_warn("server %u (%s) not heard from for %.1f s", m->id, m->endpoint,
                     now - m->last_seen);
            if (m->index >= 0 && (c->phase == COORD_RUNNING || c->phase == COORD_LOADING)) {
                char why[320];
                snprintf(why, sizeof why, "server %u (%.200s) is silent", m->id, m->endpoint);
                coord__rollback(c, why);
            } else if (m->index < 0 && c->started && c->phase != COORD_FORMING) {
                /* held nothing: nothing moves, it is simply gone */
                coord__prune_slot(c, s);
            }
        }
    }
    for (int r = 0; r < c->W; r++) {
        struct coord_member *m = &c->workers[r];
        if (m->alive && now - m->last_seen > timeout) {
            m->alive = false;
            c->generation++;
        }
    }
    coord__try_form(c);
    /* a stall and its end, once each in the log (the dashboard's banner) */
    const bool stalled = coord_stalled(c);
    if (stalled && !c->stall_logged) {
        c->stall_since = now;
        moe_warn("stalled: no step completed for %" PRIu64 " heartbeats while %s (moectl status "
                 "shows each member's state)", coord_beats_since_step(c),
                 c->phase == COORD_LOADING ? "loading" : "running");
    } else if (!stalled && c->stall_logged && !c->failed) {
        const int busy = coord__busy_worker(c);
        char why[96];
        snprintf(why, sizeof why, "worker %d is %s", busy,
                 busy >= 0 ? coord_worker_activity(coord_worker(c, busy)) : "");
        /* the first cause that applies (a step may complete and the run
         * finish between two ticks) */
        moe_warn("no longer stalled: %s", c->last_step_at >= c->stall_since ? "a step completed"
                                          : c->phase == COORD_STOPPED        ? "the cluster stopped"
                                          : busy >= 0                        ? why
                                                                             : "a new epoch began");
    }
    c->stall_logged = stalled;
}
