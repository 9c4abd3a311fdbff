/* Membership (moe-coordinator process; see coord.h): who a message comes
 * from, server slots and their stable ids, and registration (with the
 * configuration check), heartbeats and LEAVE. */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "coord_client.h"
#include "coord_internal.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_prom.h"
#include "moe_wire.h"

/* Whether p[0..n) are lower-case hex digits. */
static bool all_hex(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return false;
    return true;
}

/* The endpoint after `prefix` INC "@" in a routing id, or NULL. */
static const uint8_t *id_after(const struct moe_wire_msg *m, const char *prefix, size_t *len)
{
    const size_t pl = strlen(prefix), skip = pl + INC_DIGITS + 1;
    if (m->identity_len <= skip || memcmp(m->identity, prefix, pl) != 0 ||
        !all_hex(m->identity + pl, INC_DIGITS) || m->identity[pl + INC_DIGITS] != '@')
        return NULL;
    *len = m->identity_len - skip;
    return m->identity + skip;
}

/* The endpoint a server's routing id names: its main socket
 * ("moe-server/INC@EP") or its heartbeat thread ("moe-heart/INC@EP"). */
static const uint8_t *server_endpoint_of(const struct moe_wire_msg *m, size_t *len)
{
    const uint8_t *ep = id_after(m, SERVER_ID_PREFIX, len);
    return ep ? ep : id_after(m, HEART_ID_PREFIX, len);
}

/* The incarnation (INC) in a server's routing id, 0 when it has none. */
static uint64_t server_incarnation_of(const struct moe_wire_msg *m)
{
    size_t el = 0;
    const size_t pl = id_after(m, SERVER_ID_PREFIX, &el) ? strlen(SERVER_ID_PREFIX)
                      : id_after(m, HEART_ID_PREFIX, &el) ? strlen(HEART_ID_PREFIX) : 0;
    if (!pl)
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i < INC_DIGITS; i++) {
        const uint8_t d = m->identity[pl + i];
        v = v << 4 | (uint64_t)(d <= '9' ? d - '0' : d - 'a' + 10);
    }
    return v;
}

static int slot_of_endpoint(const coord_t *c, const char *ep, size_t len)
{
    for (int s = 0; s < c->n_slots; s++) {
        const char *own = c->servers[s].endpoint;
        if (c->servers[s].used && strlen(own) == len && memcmp(own, ep, len) == 0)
            return s;
    }
    return -1;
}

int coord__slot_of_id(const coord_t *c, uint64_t id)
{
    for (int s = 0; s < c->n_slots; s++)
        if (c->servers[s].used && c->servers[s].id == id)
            return s;
    return -1;
}

/* A free slot (the lowest), or -1 when all MAX_SLOTS are used. */
static int alloc_slot(coord_t *c)
{
    for (int s = 0; s < MAX_SLOTS; s++) {
        if (!c->servers[s].used) {
            struct coord_member *m = &c->servers[s];
            memset(m, 0, sizeof *m);
            m->used = true;
            m->index = -1;
            m->id = UINT32_MAX; /* none yet: choose_id gives it one */
            if (s >= c->n_slots)
                c->n_slots = s + 1;
            return s;
        }
    }
    return -1;
}

/* Frees the slot of a server that is gone for good (dead with its experts
 * moved, or drained). A listed endpoint keeps its id for a later comer. */
void coord__prune_slot(coord_t *c, int s)
{
    moe_info("server %u (%s) removed from the cluster", c->servers[s].id, c->servers[s].endpoint);
    memset(&c->servers[s], 0, sizeof c->servers[s]);
    c->servers[s].index = -1;
    while (c->n_slots > 0 && !c->servers[c->n_slots - 1].used)
        c->n_slots--;
    c->generation++;
}

/* The id a newly seen server at `ep` gets: its --servers position, else
 * the id it already has (after a coordinator restart), else the next. */
static uint32_t choose_id(coord_t *c, const char *ep, bool has_claim, uint32_t claim)
{
    for (int i = 0; i < c->n_listed; i++)
        if (strcmp(c->listed[i], ep) == 0 && coord__slot_of_id(c, (uint64_t)i) < 0)
            return (uint32_t)i;
    if (has_claim && coord__slot_of_id(c, claim) < 0 && claim != UINT32_MAX) {
        bool listed_elsewhere = (int64_t)claim < c->n_listed;
        if (!listed_elsewhere) {
            if (claim >= c->next_id)
                c->next_id = claim + 1;
            return claim;
        }
    }
    while (coord__slot_of_id(c, c->next_id) >= 0)
        c->next_id++;
    return c->next_id++;
}

/* The worker a message speaks for, checked against its routing id;
 * `registered`: it must have registered. *code is the error to answer. */
struct coord_member *coord__worker_of(coord_t *c, const struct moe_wire_msg *m, bool registered,
                                      int *code, char *why, size_t len)
{
    const Moe__Header *h = m->hdr;
    *code = MOE_ERR_STATE;
    if (h->role != 1) {
        snprintf(why, len, "role %u is not a worker (1)", h->role);
        return NULL;
    }
    if (h->rank >= (uint32_t)c->W) {
        snprintf(why, len, "worker %u is not in this cluster (%d workers)", h->rank, c->W);
        return NULL;
    }
    char id[48];
    const int il = snprintf(id, sizeof id, "moe-worker-%u/", h->rank);
    if (m->identity_len != (size_t)il + INC_DIGITS || memcmp(m->identity, id, (size_t)il) != 0 ||
        !all_hex(m->identity + il, INC_DIGITS)) {
        snprintf(why, len, "worker %u must connect as \"%sINC\" (INC: 16 hex digits)", h->rank, id);
        return NULL;
    }
    if (registered && !c->workers[h->rank].registered) {
        *code = MOE_ERR_UNREGISTERED;
        snprintf(why, len, "worker %u is not registered with this coordinator: register first",
                 h->rank);
        return NULL;
    }
    return &c->workers[h->rank];
}

static struct coord_member *server_of_msg(coord_t *c, const struct moe_wire_msg *m, int *code,
                                          char *why, size_t len)
{
    *code = MOE_ERR_STATE;
    if (m->hdr->role != 2) {
        snprintf(why, len, "role %u is not an expert server (2)", m->hdr->role);
        return NULL;
    }
    size_t el = 0;
    const uint8_t *ep = server_endpoint_of(m, &el);
    int s = ep ? slot_of_endpoint(c, (const char *)ep, el) : -1;
    if (s < 0 || !c->servers[s].registered) {
        *code = MOE_ERR_UNREGISTERED;
        snprintf(why, len, "unknown expert server: register first, connecting as "
                 "\"%sINC@ENDPOINT\"", SERVER_ID_PREFIX);
        return NULL;
    }
    /* Another process at the same endpoint (the one registered restarted,
     * or two claim it): not the member, whose liveness it must not keep. */
    if (c->servers[s].incarnation && server_incarnation_of(m) != c->servers[s].incarnation) {
        *code = MOE_ERR_UNREGISTERED;
        snprintf(why, len, "this process is not the expert server registered at %.200s: "
                 "register first", c->servers[s].endpoint);
        return NULL;
    }
    return &c->servers[s];
}

/* The server (role 2) or registered worker (role 1) a message speaks for. */
static struct coord_member *member_of(coord_t *c, const struct moe_wire_msg *m, int *code,
                                      char *why, size_t len)
{
    return m->hdr->role == 2 ? server_of_msg(c, m, code, why, len)
                             : coord__worker_of(c, m, true, code, why, len);
}

/* The member a request comes from, or NULL after answering why not (a
 * stranger, an unregistered member: MOE_ERR_UNREGISTERED). */
struct coord_member *coord__sender(coord_t *c, const struct moe_wire_msg *m)
{
    char why[256];
    int code;
    struct coord_member *mem = member_of(c, m, &code, why, sizeof why);
    if (!mem)
        coord__reply_error(c, m, code, why);
    return mem;
}

/* The member's name in log lines and causes: "server 3" or "worker 1". */
void coord__member_name(const coord_t *c, const struct coord_member *mem, char *buf, size_t cap)
{
    if (mem >= c->servers && mem < c->servers + MAX_SLOTS)
        snprintf(buf, cap, "server %u", mem->id);
    else
        snprintf(buf, cap, "worker %d", (int)(mem - c->workers));
}


/* The answer to a server's registration: its id and the worker list. */
static void reply_registered(coord_t *c, const struct moe_wire_msg *m,
                             const struct coord_member *mem)
{
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_REGISTER;
    o.step = m->hdr->step;
    o.request_id = m->hdr->request_id;
    o.placement_version = c->placement_version;
    o.rank = mem->id;
    o.workers = c->cfg->workers;
    coord__send_out(c, m->identity, m->identity_len, &o, NULL, 0);
}

/* The same process registering again (a retry, or it missed our answer):
 * nothing changes but its liveness. true once answered. */
static bool registers_again(coord_t *c, const struct moe_wire_msg *m, struct coord_member *mem,
                            double now)
{
    const Moe__Header *h = m->hdr;
    if (!mem->registered || !h->incarnation || mem->incarnation != h->incarnation)
        return false;
    mem->alive = true;
    mem->last_seen = now;
    if (h->role == 2)
        reply_registered(c, m, mem);
    else
        coord__ack(c, m, MOE__MSG_TYPE__MSG_REGISTER);
    return true;
}

/* A registration at the endpoint of a live server by another process
 * (another incarnation): either the registered server restarted (it is
 * dead, its heartbeats stopped) or two live servers claim one endpoint (an
 * operator copied --advertise or --bind to a second machine). The
 * newcomer is told to ask again (MOE_ERR_AGAIN) while the coordinator
 * watches the registered process: a message of it after the claim began
 * means both live, and the newcomer is refused for good (MOE_ERR_CONFIG,
 * it exits); silence for half the heartbeat timeout (at least 0.75 s:
 * three heartbeats) means a restart, which goes on as before. The
 * registered server and the training are untouched while it is decided.
 * true once answered (held off or refused). */
static bool rival_held_off(coord_t *c, const struct moe_wire_msg *m, struct coord_member *mem,
                           double now)
{
    const Moe__Header *h = m->hdr;
    if (!mem->registered || !mem->alive || !mem->incarnation ||
        h->incarnation == mem->incarnation) {
        mem->rival_since = 0;
        return false;
    }
    double grace = (double)c->cfg->heartbeat_timeout_ms / 2000.0;
    if (grace < 0.75)
        grace = 0.75;
    char why[600];
    if (mem->rival_since <= 0 || now - mem->rival_since > 3 * grace) {
        mem->rival_since = now;
        moe_info("another process registers as the server at %s (server %u): waiting %.2f s "
                 "for a heartbeat of server %u", mem->endpoint, mem->id, grace, mem->id);
    } else if (mem->last_seen > mem->rival_since) {
        mem->rival_since = 0;
        snprintf(why, sizeof why, "another expert server is already serving at %.200s "
                 "(server %u, alive): each server needs its own --advertise (or --bind) address",
                 mem->endpoint, mem->id);
        moe_warn("refused a second server registering at %s: server %u there is alive",
                 mem->endpoint, mem->id);
        coord__reply_error(c, m, MOE_ERR_CONFIG, why);
        return true;
    } else if (now - mem->rival_since >= grace) {
        moe_info("server %u at %s was silent for %.2f s: the newcomer there is its restart",
                 mem->id, mem->endpoint, now - mem->rival_since);
        mem->rival_since = 0;
        return false;
    }
    snprintf(why, sizeof why, "a server is registered at %.200s: waiting to see whether it is "
             "still alive", mem->endpoint);
    coord__reply_error(c, m, MOE_ERR_AGAIN, why);
    return true;
}

static void mark_registered(struct coord_member *mem, const Moe__Header *h, double now)
{
    mem->incarnation = h->incarnation;
    mem->registered = true;
    mem->alive = true;
    mem->last_seen = now;
    mem->told = false;
    mem->activity[0] = '\0';
}

/* Checks the registrant's configuration against the cluster's. false (with
 * the sentence in why) when they differ. */
static bool contract_agrees(coord_t *c, const Moe__Header *h, char *why, size_t len)
{
    const bool server = h->role == 2;
    char *mine = server ? c->contract_server : c->contract_worker;
    const char *theirs = h->config ? h->config : "";
    if (!theirs[0]) {
        snprintf(why, len, "registration without the training configuration (an older version?)");
        return false;
    }
    if (!server) {
        /* The corpus is compared by its bytes; when this coordinator cannot
         * read its own copy, the first worker's digest sets it. */
        char my_train[32], their_train[32];
        moe_options_contract_get(mine, "train", my_train, sizeof my_train);
        moe_options_contract_get(theirs, "train", their_train, sizeof their_train);
        char *at = strstr(mine, "\ntrain=?\n");
        if (strcmp(my_train, "?") == 0 && their_train[0] && strcmp(their_train, "?") != 0 && at &&
            strlen(their_train) == 16) {
            memmove(at + 7 + 16, at + 8, strlen(at + 8) + 1);
            memcpy(at + 7, their_train, 16);
            moe_info("the training corpus of this cluster is %s (from worker %u)", their_train,
                     h->rank);
        }
    }
    /* The BLAS kernels: a warning, or a refusal under strict_determinism. */
    char who[300];
    if (server)
        snprintf(who, sizeof who, "the server at %.200s", h->endpoint);
    else
        snprintf(who, sizeof who, "worker %u", h->rank);
    char *both[2] = {c->contract_server, c->contract_worker};
    const int k = moe_options_contract_kernels(both, 2, CONTRACT_MAX, theirs, who, why, len);
    if (k < 0)
        return false;
    if (k > 0)
        moe_warn("%s", why);
    else if (why[0])
        moe_info("%s", why);
    if (h->config_digest == moe_options_contract_digest(mine) &&
        moe_options_contract_digest(theirs) == h->config_digest && strcmp(mine, theirs) == 0)
        return true;
    char diff[900];
    int n = moe_options_contract_diff(mine, theirs, server ? "workers" : NULL, diff, sizeof diff);
    if (n == 0)
        return true;
    snprintf(why, len, "the configuration differs from the cluster's (%d key%s): %s", n,
             n == 1 ? "" : "s", diff);
    return false;
}

void coord__handle_register(coord_t *c, struct moe_wire_msg *m, double now)
{
    char why[1024];
    int code;
    const Moe__Header *h = m->hdr;
    struct coord_member *mem;
    if (h->role == 2) {
        const char *ep = h->endpoint;
        if (!ep[0] || strlen(ep) >= sizeof mem->endpoint) {
            coord__reply_error(c, m, MOE_ERR_FORMAT, "a server registers with the endpoint it serves on (at most 255 bytes)");
            return;
        }
        size_t el = 0;
        const uint8_t *idep = server_endpoint_of(m, &el);
        if (!idep || el != strlen(ep) || memcmp(idep, ep, el) != 0 || !h->incarnation ||
            server_incarnation_of(m) != h->incarnation) {
            snprintf(why, sizeof why, "server %.200s must connect as \"%sINC@%.200s\", INC "
                     "being the incarnation it registers with", ep, SERVER_ID_PREFIX, ep);
            coord__reply_error(c, m, MOE_ERR_STATE, why);
            return;
        }
        if (!contract_agrees(c, h, why, sizeof why)) {
            coord__reply_error(c, m, MOE_ERR_CONFIG, why);
            return;
        }
        if (coord__answer_ended(c, m, NULL))
            return;
        int s = slot_of_endpoint(c, ep, strlen(ep));
        if (s < 0) {
            if ((s = alloc_slot(c)) < 0) {
                coord__reply_error(c, m, MOE_ERR_RANGE, "too many expert servers");
                return;
            }
            snprintf(c->servers[s].endpoint, sizeof c->servers[s].endpoint, "%s", ep);
            c->servers[s].id = choose_id(c, ep, (h->flags & MOE_FLAG_HAS_ID) != 0, h->rank);
        } else if (!c->servers[s].registered && (h->flags & MOE_FLAG_HAS_ID) &&
                   h->rank != c->servers[s].id) {
            moe_info("server at %s had id %u; it is server %u here", ep, h->rank,
                     c->servers[s].id);
        }
        mem = &c->servers[s];
        if (rival_held_off(c, m, mem, now))
            return;
        coord__catch_up_epoch(c, h->epoch);
        if (registers_again(c, m, mem, now))
            return;
        const bool was_in_epoch = mem->index >= 0 && c->phase != COORD_FORMING;
        mark_registered(mem, h, now);
        mem->ever_registered = true;
        mem->draining = false;
        mem->loaded_epoch = 0;
        moe_info("server %u registered at %s", mem->id, ep);
        reply_registered(c, m, mem);
        if (was_in_epoch && c->phase != COORD_FINISHED) {
            char r[320];
            snprintf(r, sizeof r, "server %u (%.200s) restarted and lost its experts", mem->id, ep);
            coord__rollback(c, r);
        } else if (c->phase == COORD_RUNNING) {
            if (c->cfg->checkpoint_dir[0]) {
                c->reconf_pending = true;
                moe_info("server %u joins at the next step boundary", mem->id);
            } else {
                moe_warn("server %u cannot join a running cluster without checkpoint_dir", mem->id);
            }
        } else if (c->phase == COORD_LOADING && c->ep_step == 0 && !c->ep_ckpt[0] &&
                   c->epoch == 1) {
            /* still gathering at first start: include it */
            coord__start_epoch(c, 0, "", c->ep_initial, "a server joined while starting");
        }
        return;
    }
    if (!(mem = coord__worker_of(c, m, false, &code, why, sizeof why))) {
        coord__reply_error(c, m, code, why);
        return;
    }
    if (!contract_agrees(c, h, why, sizeof why)) {
        coord__reply_error(c, m, MOE_ERR_CONFIG, why);
        return;
    }
    if (coord__answer_ended(c, m, NULL))
        return;
    coord__catch_up_epoch(c, h->epoch);
    if (registers_again(c, m, mem, now))
        return;
    const bool restarted = mem->registered && c->phase == COORD_RUNNING;
    mark_registered(mem, h, now);
    mem->waiting_epoch = 0;
    moe_info("worker %u registered", h->rank);
    coord__ack(c, m, MOE__MSG_TYPE__MSG_REGISTER);
    if (restarted) {
        snprintf(why, sizeof why, "worker %u restarted", h->rank);
        coord__rollback(c, why);
    }
}

/* What a server's heartbeat adds for /metrics (fields a server leaves out
 * or sends malformed keep their last value). */
static void take_metrics(struct coord_member *mem, const Moe__Header *h)
{
    mem->bytes_in = h->bytes_in_total;
    mem->bytes_out = h->bytes_out_total;
    if (h->n_errors_by_reason == MOE_REASONS)
        memcpy(mem->reasons, h->errors_by_reason, sizeof mem->reasons);
    if (h->n_compute_buckets == (size_t)moe_hist_step_n + 1 && isfinite(h->compute_seconds_sum) &&
        h->compute_seconds_sum >= 0) {
        moe_hist_init(&mem->compute, moe_hist_step_bounds, moe_hist_step_n);
        uint64_t n = 0;
        for (size_t i = 0; i < h->n_compute_buckets; i++)
            n += mem->compute.counts[i] = h->compute_buckets[i];
        mem->compute.count = n;
        mem->compute.sum = h->compute_seconds_sum;
    }
    mem->cpu_seconds = isfinite(h->cpu_seconds) && h->cpu_seconds >= 0 ? h->cpu_seconds : 0;
    mem->rss_bytes = h->rss_bytes;
}

/* The activities a worker's heartbeat may name, and the state word each
 * shows as. */
static const char *const worker_activities[][2] = {
    {COORD_ACTIVITY_VALIDATING, "validating"},
    {COORD_ACTIVITY_WRITING, "writing"},
    {COORD_ACTIVITY_FINISHED, "done"},
};
#define N_ACTIVITIES (sizeof worker_activities / sizeof worker_activities[0])

/* The index of `what` in worker_activities, -1 for none ("" or NULL), -2
 * for one it does not know. */
static int activity_index(const char *what)
{
    if (!what || !what[0])
        return -1;
    for (size_t i = 0; i < N_ACTIVITIES; i++)
        if (strcmp(what, worker_activities[i][0]) == 0)
            return (int)i;
    return -2;
}

void coord__handle_heartbeat(coord_t *c, struct moe_wire_msg *m, double now)
{
    const Moe__Header *h = m->hdr;
    struct coord_member *mem = coord__sender(c, m);
    if (!mem)
        return;
    const int act = h->role == 1 ? activity_index(h->error_text) : -1;
    if (act == -2) {
        coord__reply_error(c, m, MOE_ERR_FORMAT, "a worker's heartbeat names an activity this "
                           "coordinator does not know (\"" COORD_ACTIVITY_VALIDATING "\", \""
                           COORD_ACTIVITY_WRITING "\" or \"" COORD_ACTIVITY_FINISHED "\")");
        return;
    }
    if (h->role == 1) {
        const char *was = mem->activity;
        const char *is = act >= 0 ? worker_activities[act][0] : "";
        if (strcmp(was, is) != 0) {
            if (is[0])
                moe_info("worker %u is %s", h->rank, is);
            snprintf(mem->activity, sizeof mem->activity, "%s", is);
            c->generation++;
        }
    }
    if (h->role == 2 && !mem->alive) {
        /* back after being declared dead: its state is stale, it joins anew */
        mem->loaded_epoch = 0;
        if (c->phase == COORD_RUNNING && c->cfg->checkpoint_dir[0])
            c->reconf_pending = true;
    }
    mem->alive = true;
    mem->last_seen = now;
    mem->step = (int64_t)h->step;
    mem->messages++;
    if (h->role == 2) {
        mem->beats_since_step++;
        /* rows/s over the time between heartbeats */
        if (mem->rate_time > 0 && now > mem->rate_time && h->rows_total >= mem->rate_rows)
            mem->rows_per_sec = (double)(h->rows_total - mem->rate_rows) / (now - mem->rate_time);
        mem->rate_time = now;
        mem->rate_rows = h->rows_total;
        mem->rows_total = h->rows_total;
        mem->bytes_total = h->bytes_total;
        mem->errors_total = h->errors_total;
        mem->refused_total = h->refused_total;
        mem->latency_seconds = isfinite(h->latency_seconds) ? h->latency_seconds : 0;
        take_metrics(mem, h);
    }
    if (coord__answer_ended(c, m, mem))
        return;
    coord__ack(c, m, MOE__MSG_TYPE__MSG_ACK);
}

/* A server asks to be drained (it got SIGTERM), a worker to stop the
 * cluster (it got SIGTERM). Answered with ACK: STOP means exit now. */
void coord__handle_leave(coord_t *c, struct moe_wire_msg *m)
{
    char why[512];
    const Moe__Header *h = m->hdr;
    struct coord_member *mem = coord__sender(c, m);
    if (!mem)
        return;
    if (coord__answer_ended(c, m, mem))
        return;
    char who[32];
    coord__member_name(c, mem, who, sizeof who);
    if (c->phase == COORD_FINISHED) {
        mem->told = true;
        coord__ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, MOE_FLAG_STOP, "training is over");
        return;
    }
    if (h->role == 1) {
        snprintf(why, sizeof why, "%s was asked to stop", who);
        coord_request_stop(c, why);
        coord__ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, c->phase == COORD_STOPPED ? MOE_FLAG_STOP : 0,
                  "the cluster stops after its next checkpoint");
        return;
    }
    const int slot = (int)(mem - c->servers);
    if (c->stop_requested || c->ck_stop) {
        coord__ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, 0,
                  "the cluster is stopping: stay for its last checkpoint");
        return;
    }
    if (mem->index < 0 || c->phase == COORD_FORMING) {
        /* holds no expert: it can go at once */
        moe_info("%s (%s) leaves; it held no experts", who, mem->endpoint);
        coord__ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, MOE_FLAG_STOP, "this server holds no experts");
        coord__prune_slot(c, slot);
        return;
    }
    int live = 0;
    for (int s = 0; s < c->n_slots; s++)
        live += c->servers[s].used && c->servers[s].registered && c->servers[s].alive &&
                !c->servers[s].draining;
    if (live <= 1 || !c->cfg->checkpoint_dir[0]) {
        /* its experts have nowhere to go: the cluster stops, with a
         * checkpoint when it can have one */
        snprintf(why, sizeof why, "%s was asked to stop and %s", who,
                 live <= 1 ? "is the last server" : "cannot be drained without checkpoint_dir");
        coord_request_stop(c, why);
        coord__ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, c->phase == COORD_STOPPED ? MOE_FLAG_STOP : 0,
                  live <= 1 ? "it is the last server: the cluster checkpoints and stops"
                            : "the cluster stops");
        return;
    }
    if (mem->draining || coord__drain_slot(c, slot, why, sizeof why) == 0) {
        coord__ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, 0, "drained at the next step boundary");
        return;
    }
    coord__reply_error(c, m, MOE_ERR_STATE, why);
}

const char *coord_server_state(const coord_t *c, const struct coord_member *m)
{
    if (!m->registered)
        return m->ever_registered ? "down" : "registering";
    if (!m->alive)
        return "down";
    if (c->failed || c->phase == COORD_FINISHED || c->phase == COORD_STOPPED)
        return "done";
    if (m->draining)
        return "draining";
    if (m->index < 0)
        return "spare";
    return m->loaded_epoch == c->epoch ? "serving" : "loading";
}

const char *coord_worker_activity(const struct coord_member *m)
{
    return m->registered && m->activity[0] ? m->activity : NULL;
}

const char *coord_worker_state(const coord_t *c, const struct coord_member *m)
{
    if (!m->registered)
        return "absent";
    const int act = activity_index(m->activity);
    if (act >= 0 && strcmp(m->activity, COORD_ACTIVITY_FINISHED) == 0)
        return "done"; /* its last word: the silence after it is its exit */
    if (!m->alive)
        return "down";
    if (act >= 0)
        return worker_activities[act][1];
    if (c->failed || c->phase == COORD_FINISHED || c->phase == COORD_STOPPED)
        return "done";
    if (c->phase == COORD_RUNNING && m->started_epoch == c->epoch)
        return "training";
    return m->waiting_epoch == c->epoch ? "waiting" : "loading";
}

uint64_t coord_beats_since_step(const coord_t *c)
{
    uint64_t most = 0;
    for (int s = 0; s < c->n_slots; s++) {
        const struct coord_member *m = &c->servers[s];
        if (m->used && m->alive && m->beats_since_step > most)
            most = m->beats_since_step;
    }
    return most;
}

int coord__busy_worker(const coord_t *c)
{
    for (int r = 0; r < c->W; r++)
        if (coord_worker_activity(&c->workers[r]) &&
            (c->workers[r].alive || strcmp(c->workers[r].activity, COORD_ACTIVITY_FINISHED) == 0))
            return r;
    return -1;
}

bool coord_stalled(const coord_t *c)
{
    /* a worker validating or writing the final model (or done) is busy,
     * not stuck: the servers wait for it */
    return !c->failed && (c->phase == COORD_LOADING || c->phase == COORD_RUNNING) &&
           coord_beats_since_step(c) >= (uint64_t)c->cfg->stall_heartbeats &&
           coord__busy_worker(c) < 0;
}
