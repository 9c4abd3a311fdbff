/* Coordinator state and message handling (see coord.h). */
#include "coord.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "moe_err.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_prom.h"
#include "moe_wire.h"

#define MAX_SLOTS 1024
/* Routing ids of members: "moe-server/INC@EP", "moe-heart/INC@EP" (a
 * server's heartbeat thread) and "moe-worker-R/INC", INC being 16 hex
 * digits drawn by each process (coord_client.h). */
#define SERVER_ID_PREFIX "moe-server/"
#define HEART_ID_PREFIX "moe-heart/"
#define INC_DIGITS 16
#define CONTRACT_MAX 8192
/* How long members have to hear that the cluster stopped or failed before
 * the coordinator exits anyway (servers ask every 0.25 s). */
#define TELL_GRACE_SECONDS 10.0

struct pending {          /* a worker waiting for the global vectors */
    bool waiting;
    uint8_t identity[256];
    size_t identity_len;
    uint64_t request_id;
};

struct coord {
    const struct trainer_config *cfg;
    int E, W;
    coord_stats_t *stats;
    void *ctx, *sock;
    struct coord_member *servers, *workers;
    int n_slots, min_servers;
    char (*listed)[256];  /* --servers: endpoint of ids 0..n_listed-1 */
    int n_listed;
    uint32_t next_id;     /* the id the next new server gets */
    int32_t *server_of;   /* (E) slot of each expert, -1 before the first epoch */
    struct pending *pending;
    struct moe_wire_limits lim;
    float *reply;         /* 3E */
    uint32_t placement_version;
    uint64_t errors, messages;
    uint64_t generation;  /* bumped on every change the renders can show */
    /* the contract every member must agree on (trainer_contract) */
    char contract_server[CONTRACT_MAX], contract_worker[CONTRACT_MAX];
    /* the epoch */
    uint32_t epoch;
    bool started;                 /* the first epoch was formed */
    enum coord_phase phase;
    bool failed;                  /* cannot recover: every member is told why and exits */
    char failed_why[1024];
    double end_since;             /* when it stopped or failed */
    int64_t ep_step;              /* checkpoint step it starts from (0: fresh) */
    char ep_ckpt[TRAINER_PATH_MAX + 32]; /* its folder ("" = fresh) */
    bool ep_initial;              /* fresh start: write the step-0 checkpoint */
    int ep_n;                     /* servers in the epoch */
    int *ep_slot;                 /* (MAX_SLOTS) slot of epoch index i */
    int32_t *ep_place;            /* (E) epoch index of each expert */
    int64_t ep_high;              /* steps completed in this epoch (its high-water mark) */
    /* the livelock guard: failures without progress in between */
    int64_t rb_target, rb_high;   /* checkpoint step and high-water mark of the last rollback */
    int rb_strikes;
    bool rb_committed;            /* a checkpoint was committed since the last rollback */
    uint64_t rollbacks;
    /* checkpoints */
    int64_t ck_step;              /* in progress, -1: none */
    bool ck_reconf, ck_requested, reconf_pending, ck_stop;
    int64_t committed_step;       /* -1: none */
    char committed[TRAINER_PATH_MAX + 32];
    double ck_started;
    /* stopping */
    bool stop_requested;          /* stop after the next checkpoint */
    char stop_why[256];
    double now, forming_logged;
};

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

coord_t *coord_new(const struct trainer_config *cfg, char *err, size_t errlen)
{
    coord_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->cfg = cfg;
    c->E = cfg->n_experts;
    c->W = count_list(cfg->workers);
    if (c->W == 0)
        c->W = 1;
    if (!cfg->coordinator[0]) {
        snprintf(err, errlen, "coordinator: no endpoint to bind (use --coordinator tcp://HOST:PORT)");
        goto fail;
    }
    c->stats = coord_stats_new(c->E, c->W, 0.9, 1000);
    c->servers = calloc(MAX_SLOTS, sizeof *c->servers);
    c->listed = calloc(MAX_SLOTS, sizeof *c->listed);
    c->workers = calloc((size_t)c->W, sizeof *c->workers);
    c->pending = calloc((size_t)c->W, sizeof *c->pending);
    c->reply = calloc(3 * (size_t)c->E, sizeof(float));
    c->server_of = malloc(sizeof(int32_t) * (size_t)c->E);
    c->ep_place = malloc(sizeof(int32_t) * (size_t)c->E);
    c->ep_slot = calloc(MAX_SLOTS, sizeof(int));
    if (!c->stats || !c->servers || !c->listed || !c->workers || !c->pending || !c->reply ||
        !c->server_of || !c->ep_place || !c->ep_slot) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (trainer_contract(cfg, TRAINER_ROLE_SERVER, c->contract_server, CONTRACT_MAX) < 0 ||
        trainer_contract(cfg, TRAINER_ROLE_WORKER, c->contract_worker, CONTRACT_MAX) < 0) {
        snprintf(err, errlen, "the training configuration is too long to compare");
        goto fail;
    }
    for (int e = 0; e < c->E; e++)
        c->server_of[e] = c->ep_place[e] = -1;
    for (int s = 0; s < MAX_SLOTS; s++)
        c->servers[s].index = -1;
    /* --servers: the endpoints expected; entry i is server id i */
    const char *p = cfg->servers;
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
            snprintf(err, errlen, "servers: empty or too long entry (or more than %d)", MAX_SLOTS);
            goto fail;
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
    c->n_listed = c->n_slots;
    c->next_id = (uint32_t)c->n_listed;
    c->min_servers = cfg->min_servers > 0 ? cfg->min_servers : (c->n_slots > 0 ? c->n_slots : 1);
    c->placement_version = 0;
    c->ck_step = c->committed_step = -1;
    c->rb_target = c->rb_high = -1;
    c->phase = COORD_FORMING;
    if (cfg->checkpoint_dir[0]) {
        struct moe_manifest m;
        memset(&m, 0, sizeof m);
        char why[512];
        int rc = moe_manifest_latest(cfg->checkpoint_dir, true, c->committed, sizeof c->committed,
                                     &m, why, sizeof why);
        if (rc == 0) {
            if (m.n_experts != c->E || m.d_model != cfg->d_model || m.d_hidden != cfg->d_hidden ||
                m.workers != c->W) {
                snprintf(err, errlen,
                         "%s: checkpoint of another shape (E %d, D %d, H %d, %d workers; this "
                         "cluster: E %d, D %d, H %d, %d workers)",
                         c->committed, m.n_experts, m.d_model, m.d_hidden, m.workers, c->E,
                         cfg->d_model, cfg->d_hidden, c->W);
                moe_manifest_free(&m);
                goto fail;
            }
            c->committed_step = m.step;
            const int64_t top = max_server_file_id(&m);
            if (top >= (int64_t)c->next_id)
                c->next_id = (uint32_t)top + 1;
            moe_manifest_free(&m);
            moe_info("resuming from %s (step %" PRId64 ")", c->committed, c->committed_step);
        } else if (rc != MOE_ERR_NOTFOUND) {
            snprintf(err, errlen, "%s", why);
            goto fail;
        } else {
            c->committed[0] = '\0';
        }
    }
    c->lim = (struct moe_wire_limits){1u << 20, 0, (uint32_t)c->E, 1u << 20};
    c->ctx = zmq_ctx_new();
    c->sock = c->ctx ? zmq_socket(c->ctx, ZMQ_ROUTER) : NULL;
    /* No ROUTER_HANDOVER: every process has its own routing id, so a
     * newcomer never takes over the connection of a member. */
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
    if (c->sock) {
        /* the last answers (stop, failure) still get out */
        int linger = 1000;
        zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(c->sock);
    }
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

/* ------------------------------------------------------------------------ */
/* Placement */

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

/* ------------------------------------------------------------------------ */
/* Replies */

static void send_out(coord_t *c, const uint8_t *id, size_t id_len, struct moe_wire_out *o,
                     const float *data, uint64_t rows)
{
    char err[128];
    o->epoch = c->epoch;
    if (moe_wire_send(c->sock, id, id_len, o, data, rows, err, sizeof err))
        moe_warn("cannot send a reply: %s", err);
}

/* An error reply with a code and a sentence (and flags, e.g. FAILED). */
static void reply_error_flags(coord_t *c, const struct moe_wire_msg *m, int code, const char *text,
                              uint32_t flags)
{
    if (!(flags & (MOE_FLAG_FAILED | MOE_FLAG_STOP)) && code != MOE_ERR_UNREGISTERED) {
        c->errors++;
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
    send_out(c, m->identity, m->identity_len, &o, NULL, 0);
}

static void reply_error(coord_t *c, const struct moe_wire_msg *m, int code, const char *text)
{
    reply_error_flags(c, m, code, text, 0);
}

static void ack_flags(coord_t *c, const struct moe_wire_msg *m, Moe__MsgType type, uint32_t flags,
                      const char *text)
{
    struct moe_wire_out o = {0};
    o.type = type;
    o.step = m->hdr->step;
    o.request_id = m->hdr->request_id;
    o.placement_version = c->placement_version;
    o.flags = flags;
    o.error_text = text;
    send_out(c, m->identity, m->identity_len, &o, NULL, 0);
}

static void ack(coord_t *c, const struct moe_wire_msg *m, Moe__MsgType type)
{
    ack_flags(c, m, type, 0, NULL);
}

/* Sends `o` (with `rows` rows of data) to every worker waiting for the
 * global vectors, each with its own request id; none waits afterwards. */
static void answer_pending(coord_t *c, struct moe_wire_out *o, const float *data, uint64_t rows)
{
    for (int r = 0; r < c->W; r++) {
        struct pending *p = &c->pending[r];
        if (!p->waiting)
            continue;
        o->request_id = p->request_id;
        send_out(c, p->identity, p->identity_len, o, data, rows);
        p->waiting = false;
    }
}

/* Workers waiting for the global vectors of a step that will not complete. */
static void fail_pending(coord_t *c, const char *why, uint32_t flags)
{
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_ERROR;
    o.error_code = MOE_ERR_STATE;
    o.error_text = why;
    o.flags = flags;
    answer_pending(c, &o, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* Members */

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

static int slot_of_endpoint(const coord_t *c, const char *ep, size_t len)
{
    for (int s = 0; s < c->n_slots; s++) {
        const char *own = c->servers[s].endpoint;
        if (c->servers[s].used && strlen(own) == len && memcmp(own, ep, len) == 0)
            return s;
    }
    return -1;
}

static int slot_of_id(const coord_t *c, uint64_t id)
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
static void prune_slot(coord_t *c, int s)
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
        if (strcmp(c->listed[i], ep) == 0 && slot_of_id(c, (uint64_t)i) < 0)
            return (uint32_t)i;
    if (has_claim && slot_of_id(c, claim) < 0 && claim != UINT32_MAX) {
        bool listed_elsewhere = (int64_t)claim < c->n_listed;
        if (!listed_elsewhere) {
            if (claim >= c->next_id)
                c->next_id = claim + 1;
            return claim;
        }
    }
    while (slot_of_id(c, c->next_id) >= 0)
        c->next_id++;
    return c->next_id++;
}

/* The worker a message speaks for, checked against its routing id;
 * `registered`: it must have registered. *code is the error to answer. */
static struct coord_member *worker_of(coord_t *c, const struct moe_wire_msg *m, bool registered,
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
    return &c->servers[s];
}

/* The server (role 2) or registered worker (role 1) a message speaks for. */
static struct coord_member *member_of(coord_t *c, const struct moe_wire_msg *m, int *code,
                                      char *why, size_t len)
{
    return m->hdr->role == 2 ? server_of_msg(c, m, code, why, len)
                             : worker_of(c, m, true, code, why, len);
}

/* The member a request comes from, or NULL after answering why not (a
 * stranger, an unregistered member: MOE_ERR_UNREGISTERED). */
static struct coord_member *sender(coord_t *c, const struct moe_wire_msg *m)
{
    char why[256];
    int code;
    struct coord_member *mem = member_of(c, m, &code, why, sizeof why);
    if (!mem)
        reply_error(c, m, code, why);
    return mem;
}

/* The member's name in log lines and causes: "server 3" or "worker 1". */
static void member_name(const coord_t *c, const struct coord_member *mem, char *buf, size_t cap)
{
    if (mem >= c->servers && mem < c->servers + MAX_SLOTS)
        snprintf(buf, cap, "server %u", mem->id);
    else
        snprintf(buf, cap, "worker %d", (int)(mem - c->workers));
}

/* ------------------------------------------------------------------------ */
/* Epochs */

/* A new checkpoint (or none) is in progress: nobody has written its files. */
static void clear_ckpt_done(coord_t *c)
{
    for (int s = 0; s < c->n_slots; s++)
        c->servers[s].ckpt_done = false;
    for (int r = 0; r < c->W; r++)
        c->workers[r].ckpt_done = false;
}

static bool can_recover(const coord_t *c) { return c->committed_step >= 0; }

/* Folders of checkpoints that will never be committed (newer than the
 * newest committed one, no checkpoint in progress) go: a failure mid-write
 * leaves nothing behind. */
static void remove_partial_checkpoints(coord_t *c)
{
    if (!c->cfg->checkpoint_dir[0] || c->ck_step >= 0)
        return;
    int n = moe_manifest_remove_uncommitted(c->cfg->checkpoint_dir, c->committed_step);
    if (n > 0)
        moe_info("removed %d partial checkpoint folder(s) of %s", n, c->cfg->checkpoint_dir);
}

/* The cluster cannot go on: every member is told `why` and exits non-zero. */
static void fail_cluster(coord_t *c, const char *why)
{
    if (c->failed)
        return;
    c->failed = true;
    c->end_since = c->now;
    snprintf(c->failed_why, sizeof c->failed_why, "%s", why);
    moe_error("the cluster stops: %s", c->failed_why);
    for (int r = 0; r < c->W; r++)
        c->workers[r].told |= c->pending[r].waiting;
    fail_pending(c, c->failed_why, MOE_FLAG_FAILED);
    c->ck_step = -1;
    remove_partial_checkpoints(c);
    c->generation++;
}

/* Stopped by the operator: members are told to exit 0. */
static void enter_stopped(coord_t *c, const char *why)
{
    if (c->phase == COORD_STOPPED || c->failed)
        return;
    c->phase = COORD_STOPPED;
    c->end_since = c->now;
    c->stop_requested = false;
    moe_info("the cluster stops: %s%s", why,
             c->committed_step >= 0 ? "" : " (no checkpoint to resume from)");
    if (c->committed_step >= 0)
        moe_info("resume by starting the cluster again: it continues from %s (step %" PRId64 ")",
                 c->committed, c->committed_step);
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_ERROR;
    o.error_code = MOE_ERR_STATE;
    o.error_text = "the operator stopped the cluster";
    o.flags = MOE_FLAG_STOP;
    for (int r = 0; r < c->W; r++)
        c->workers[r].told |= c->pending[r].waiting;
    answer_pending(c, &o, NULL, 0);
    c->generation++;
}

/* A new epoch on the live, non-draining servers, starting from checkpoint
 * `folder` at `step` (folder "" = fresh). */
static void start_epoch(coord_t *c, int64_t step, const char *folder, bool initial,
                        const char *reason)
{
    int live[MAX_SLOTS], n = 0;
    for (int s = 0; s < c->n_slots; s++) {
        struct coord_member *m = &c->servers[s];
        if (m->used && m->registered && m->alive && !m->draining)
            live[n++] = s;
    }
    fail_pending(c, "the cluster changed configuration (new epoch); ask again with EPOCH_WAIT", 0);
    c->generation++;
    c->started = true;
    c->ck_step = initial ? 0 : -1;
    c->ck_started = c->now;
    c->ck_reconf = c->ck_stop = false;
    clear_ckpt_done(c);
    c->epoch++;
    c->ep_high = step;
    if (n == 0) {
        c->phase = COORD_FORMING;
        moe_warn("epoch %u: no live expert server; waiting for one to register (%s)", c->epoch,
                 reason);
        c->ep_step = step;
        snprintf(c->ep_ckpt, sizeof c->ep_ckpt, "%s", folder);
        c->ep_initial = initial;
        for (int s = 0; s < c->n_slots; s++)
            c->servers[s].index = -1;
        c->ep_n = 0;
        return;
    }
    int32_t *next = malloc(sizeof(int32_t) * (size_t)c->E);
    if (!next) {
        fail_cluster(c, "the coordinator is out of memory");
        return;
    }
    coord_placement_compute(c->E, c->server_of, live, n, next);
    int moved = 0;
    for (int e = 0; e < c->E; e++)
        moved += next[e] != c->server_of[e];
    if (moved || c->placement_version == 0)
        c->placement_version++;
    memcpy(c->server_of, next, sizeof(int32_t) * (size_t)c->E);
    free(next);
    for (int s = 0; s < c->n_slots; s++)
        c->servers[s].index = -1;
    for (int i = 0; i < n; i++) {
        c->servers[live[i]].index = i;
        c->ep_slot[i] = live[i];
    }
    c->ep_n = n;
    for (int e = 0; e < c->E; e++)
        c->ep_place[e] = c->servers[c->server_of[e]].index;
    c->ep_step = step;
    snprintf(c->ep_ckpt, sizeof c->ep_ckpt, "%s", folder);
    c->ep_initial = initial;
    c->phase = COORD_LOADING;
    coord_stats_restart(c->stats, step);
    moe_info("epoch %u: %d server(s), placement version %u (%d expert(s) moved), from %s%s: %s",
             c->epoch, n, c->placement_version, moved, folder[0] ? "checkpoint " : "a fresh start",
             folder, reason);
    /* Servers that died and whose experts now live elsewhere are gone. */
    for (int s = 0; s < c->n_slots; s++) {
        struct coord_member *m = &c->servers[s];
        if (m->used && m->ever_registered && !m->alive && m->index < 0)
            prune_slot(c, s);
    }
}

/* Something failed: roll everyone back to the last committed checkpoint,
 * unless the same failure keeps repeating without progress. */
static void rollback(coord_t *c, const char *reason)
{
    if (c->phase == COORD_FINISHED || c->phase == COORD_STOPPED || c->failed)
        return;
    const int64_t target = can_recover(c) ? c->committed_step : 0;
    if (target == c->rb_target && c->ep_high <= c->rb_high && !c->rb_committed)
        c->rb_strikes++;
    else
        c->rb_strikes = 1;
    c->rb_target = target;
    c->rb_high = c->ep_high > c->rb_high || c->rb_strikes == 1 ? c->ep_high : c->rb_high;
    c->rb_committed = false;
    if (c->cfg->max_rollbacks > 0 && c->rb_strikes > c->cfg->max_rollbacks) {
        char why[1024];
        snprintf(why, sizeof why,
                 "the same failure %d times at step %" PRId64 " (rolled back to step %" PRId64
                 " each time): %s", c->rb_strikes, c->ep_high, target, reason);
        fail_cluster(c, why);
        return;
    }
    c->rollbacks++;
    if (!can_recover(c)) {
        /* nothing trained yet: a fresh start again is the same thing */
        if (c->phase == COORD_LOADING && c->ep_step == 0 && !c->ep_ckpt[0]) {
            start_epoch(c, 0, "", c->cfg->checkpoint_dir[0] != 0, reason);
            return;
        }
        char why[1024];
        snprintf(why, sizeof why,
                 "%s, and there is no committed checkpoint to roll back to (set checkpoint_dir)",
                 reason);
        fail_cluster(c, why);
        return;
    }
    moe_warn("rolling back to step %" PRId64 ": %s", c->committed_step, reason);
    if (c->ck_stop)
        c->stop_requested = true; /* the stop still stands: after the replay */
    c->ck_step = -1;
    remove_partial_checkpoints(c);
    start_epoch(c, c->committed_step, c->committed, false, reason);
}

static void maybe_run(coord_t *c)
{
    if (c->phase != COORD_LOADING)
        return;
    for (int i = 0; i < c->ep_n; i++)
        if (c->servers[c->ep_slot[i]].loaded_epoch != c->epoch)
            return;
    for (int r = 0; r < c->W; r++)
        if (c->workers[r].waiting_epoch != c->epoch)
            return;
    c->phase = COORD_RUNNING;
    c->generation++;
    moe_info("epoch %u running from step %" PRId64, c->epoch, c->ep_step);
}

static void try_form(coord_t *c)
{
    if (c->phase != COORD_FORMING || c->failed)
        return;
    int n = 0;
    for (int s = 0; s < c->n_slots; s++)
        n += c->servers[s].used && c->servers[s].registered && c->servers[s].alive &&
             !c->servers[s].draining;
    const int need = c->started ? 1 : c->min_servers;
    if (n < need) {
        if (c->now - c->forming_logged >= 10.0) {
            c->forming_logged = c->now;
            moe_info("waiting for expert servers: %d of %d registered", n, need);
        }
        return;
    }
    if (!c->started) {
        if (c->committed_step >= 0)
            start_epoch(c, c->committed_step, c->committed, false, "resuming");
        else
            start_epoch(c, 0, "", c->cfg->checkpoint_dir[0] != 0, "first start");
    } else {
        start_epoch(c, c->ep_step, c->ep_ckpt, c->ep_initial, "servers are back");
    }
}

/* A member reported an epoch newer than ours (we restarted while it ran):
 * continue above it, so that every epoch we hand out is new to everyone. */
static void catch_up_epoch(coord_t *c, uint32_t theirs)
{
    if (theirs <= c->epoch)
        return;
    if (c->phase == COORD_FORMING) {
        c->epoch = theirs;
    } else if (c->phase == COORD_LOADING) {
        c->epoch = theirs;
        start_epoch(c, c->ep_step, c->ep_ckpt, c->ep_initial,
                    "a member of a newer epoch registered");
    }
}

/* ------------------------------------------------------------------------ */
/* Checkpoints */

static void commit_checkpoint(coord_t *c)
{
    char folder[TRAINER_PATH_MAX + 32], why[512];
    moe_manifest_folder(c->cfg->checkpoint_dir, c->ck_step, folder, sizeof folder);
    struct moe_manifest m;
    memset(&m, 0, sizeof m);
    m.step = c->ck_step;
    m.epoch = c->epoch;
    m.placement_version = c->placement_version;
    m.n_experts = c->E;
    m.d_model = c->cfg->d_model;
    m.d_hidden = c->cfg->d_hidden;
    m.workers = c->W;
    m.n_files = c->W + c->ep_n;
    m.files = calloc((size_t)m.n_files, sizeof *m.files);
    m.expert_file = malloc(sizeof(int) * (size_t)c->E);
    int rc = (!m.files || !m.expert_file) ? MOE_ERR_NOMEM : 0;
    for (int i = 0; rc == 0 && i < m.n_files; i++) {
        const struct coord_member *mem = i < c->W ? &c->workers[i] : &c->servers[c->ep_slot[i - c->W]];
        snprintf(m.files[i].name, sizeof m.files[i].name, "%s", mem->ckpt_file);
        char path[TRAINER_PATH_MAX + 200];
        snprintf(path, sizeof path, "%s/%s", folder, mem->ckpt_file);
        rc = moe_manifest_file_checksum(path, &m.files[i].checksum, &m.files[i].bytes, why,
                                        sizeof why);
    }
    for (int e = 0; rc == 0 && e < c->E; e++)
        m.expert_file[e] = c->W + c->ep_place[e];
    if (rc == 0)
        rc = moe_manifest_write(folder, &m, why, sizeof why);
    free(m.files);
    free(m.expert_file);
    const bool reconf = c->ck_reconf, stop = c->ck_stop;
    c->ck_reconf = c->ck_stop = false;
    const int64_t step = c->ck_step;
    c->ck_step = -1;
    if (rc) {
        char r[700];
        snprintf(r, sizeof r, "the coordinator cannot commit the checkpoint of step %" PRId64 ": %s",
                 step, why);
        moe_error("%s", r);
        if (stop)
            c->stop_requested = true; /* the stop still stands: after the replay */
        rollback(c, r);
        return;
    }
    c->committed_step = step;
    c->rb_committed = true;
    snprintf(c->committed, sizeof c->committed, "%s", folder);
    c->generation++;
    moe_info("checkpoint of step %" PRId64 " committed (%s, %.2f s)", step, folder,
             c->now - c->ck_started);
    int pruned = moe_manifest_prune(c->cfg->checkpoint_dir, c->cfg->keep_checkpoints);
    if (pruned < 0)
        moe_warn("cannot prune old checkpoints in %s", c->cfg->checkpoint_dir);
    if (step >= c->cfg->steps) {
        c->phase = COORD_FINISHED;
        return;
    }
    if (stop) {
        enter_stopped(c, c->stop_why);
        return;
    }
    if (reconf)
        start_epoch(c, step, folder, false, "planned reconfiguration");
}

static void handle_ckpt_done(coord_t *c, struct moe_wire_msg *m)
{
    char why[256];
    const Moe__Header *h = m->hdr;
    struct coord_member *mem = sender(c, m);
    if (!mem)
        return;
    const char *f = h->endpoint;
    size_t fl = strlen(f);
    if (fl == 0 || fl >= sizeof mem->ckpt_file || strchr(f, '/') || f[0] == '.' ||
        fl < 12 || strcmp(f + fl - 12, ".safetensors") != 0) {
        reply_error(c, m, MOE_ERR_FORMAT, "checkpoint file name must be NAME.safetensors");
        return;
    }
    if (c->ck_step < 0 || (int64_t)h->step != c->ck_step || h->epoch != c->epoch ||
        (h->role == 2 && mem->index < 0)) {
        snprintf(why, sizeof why, "no checkpoint of step %" PRIu64 " in progress in epoch %u",
                 h->step, h->epoch);
        reply_error(c, m, MOE_ERR_STATE, why);
        return;
    }
    snprintf(mem->ckpt_file, sizeof mem->ckpt_file, "%s", f);
    mem->ckpt_done = true;
    ack(c, m, MOE__MSG_TYPE__MSG_ACK);
    for (int r = 0; r < c->W; r++)
        if (!c->workers[r].ckpt_done)
            return;
    for (int i = 0; i < c->ep_n; i++)
        if (!c->servers[c->ep_slot[i]].ckpt_done)
            return;
    commit_checkpoint(c);
}

int coord_request_checkpoint(coord_t *c, char *err, size_t errlen)
{
    if (!c->cfg->checkpoint_dir[0]) {
        snprintf(err, errlen, "the coordinator has no checkpoint_dir");
        return MOE_ERR_STATE;
    }
    if (c->failed || (c->phase != COORD_RUNNING && c->phase != COORD_LOADING)) {
        snprintf(err, errlen, "the cluster is not training");
        return MOE_ERR_STATE;
    }
    c->ck_requested = true;
    return 0;
}

/* Marks the server in `slot` to leave at the next step boundary. */
static int drain_slot(coord_t *c, int slot, char *err, size_t errlen)
{
    struct coord_member *m = &c->servers[slot];
    if (!c->cfg->checkpoint_dir[0]) {
        snprintf(err, errlen, "draining moves experts through a checkpoint: set checkpoint_dir");
        return MOE_ERR_STATE;
    }
    int others = 0;
    for (int s = 0; s < c->n_slots; s++)
        others += s != slot && c->servers[s].used && c->servers[s].registered &&
                  c->servers[s].alive && !c->servers[s].draining;
    if (others == 0) {
        snprintf(err, errlen, "server %u is the last one; its experts have nowhere to go", m->id);
        return MOE_ERR_STATE;
    }
    if (c->failed || c->stop_requested || c->ck_stop ||
        (c->phase != COORD_RUNNING && c->phase != COORD_LOADING)) {
        snprintf(err, errlen, "the cluster is not training (%s)",
                 c->failed                              ? "it failed"
                 : c->stop_requested || c->ck_stop      ? "it is stopping"
                 : c->phase == COORD_FORMING            ? "it waits for servers"
                                                        : "it is over");
        return MOE_ERR_STATE;
    }
    if (c->phase == COORD_LOADING) {
        /* nothing ran since the epoch's checkpoint: start it again without
         * this server */
        m->draining = true;
        char why[96];
        snprintf(why, sizeof why, "server %u is drained", m->id);
        start_epoch(c, c->ep_step, c->ep_ckpt, c->ep_initial, why);
        return 0;
    }
    m->draining = true;
    c->reconf_pending = true;
    c->generation++;
    moe_info("server %u (%s) will be drained at the next step boundary", m->id, m->endpoint);
    return 0;
}

int coord_request_drain(coord_t *c, uint64_t id, char *err, size_t errlen)
{
    const int slot = id <= UINT32_MAX ? slot_of_id(c, id) : -1;
    if (slot < 0) {
        snprintf(err, errlen, "there is no server %" PRIu64 " in this cluster", id);
        return MOE_ERR_NOTFOUND;
    }
    const struct coord_member *m = &c->servers[slot];
    if (!m->registered) {
        snprintf(err, errlen, "server %" PRIu64 " (%s) has not registered", id, m->endpoint);
        return MOE_ERR_STATE;
    }
    if (!m->alive) {
        snprintf(err, errlen, "server %" PRIu64 " (%s) is down; its experts move to the other "
                 "servers by themselves", id, m->endpoint);
        return MOE_ERR_STATE;
    }
    if (m->draining) {
        snprintf(err, errlen, "server %" PRIu64 " is already being drained", id);
        return MOE_ERR_STATE;
    }
    return drain_slot(c, slot, err, errlen);
}

void coord_request_stop(coord_t *c, const char *why)
{
    if (c->phase == COORD_STOPPED || c->failed)
        return;
    snprintf(c->stop_why, sizeof c->stop_why, "%s", why);
    if (c->phase == COORD_RUNNING && c->cfg->checkpoint_dir[0]) {
        if (!c->stop_requested)
            moe_info("%s: checkpoint at the end of the next step, then stop", why);
        c->stop_requested = true;
        c->generation++;
        return;
    }
    enter_stopped(c, why);
}

bool coord_should_exit(const coord_t *c, double now, int *code, char *why, size_t cap)
{
    if (!c->failed && c->phase != COORD_STOPPED)
        return false;
    if (why && cap)
        snprintf(why, cap, "%s", c->failed ? c->failed_why : "");
    *code = c->failed ? 1 : 0;
    if (now - c->end_since >= TELL_GRACE_SECONDS)
        return true;
    for (int s = 0; s < c->n_slots; s++) {
        const struct coord_member *m = &c->servers[s];
        if (m->used && m->registered && m->alive && !m->told)
            return false;
    }
    for (int r = 0; r < c->W; r++)
        if (c->workers[r].registered && c->workers[r].alive && !c->workers[r].told)
            return false;
    return true;
}

/* The answer to a member of a stopped or failed cluster (true: answered). */
static bool answer_ended(coord_t *c, const struct moe_wire_msg *m, struct coord_member *mem)
{
    if (c->failed) {
        reply_error_flags(c, m, MOE_ERR_STATE, c->failed_why, MOE_FLAG_FAILED);
    } else if (c->phase == COORD_STOPPED) {
        reply_error_flags(c, m, MOE_ERR_STATE, "the operator stopped the cluster", MOE_FLAG_STOP);
    } else {
        return false;
    }
    if (mem) {
        mem->told = true;
        c->generation++;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Statistics */

static void send_global(coord_t *c, uint32_t flags)
{
    const int E = c->E;
    memcpy(c->reply, coord_stats_global_importance(c->stats), sizeof(float) * (size_t)E);
    memcpy(c->reply + E, coord_stats_global_load(c->stats), sizeof(float) * (size_t)E);
    memcpy(c->reply + 2 * E, coord_stats_global_rows(c->stats), sizeof(float) * (size_t)E);
    int32_t id0 = 0;
    uint32_t one = 1;
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_STATS_REPLY;
    o.step = (uint64_t)coord_stats_completed_step(c->stats);
    o.expert_ids = &id0;
    o.row_counts = &one;
    o.n_experts = 1;
    o.dtype = MOE__DTYPE__DTYPE_F32;
    o.width = (uint32_t)(3 * E);
    o.placement_version = c->placement_version;
    o.flags = flags;
    answer_pending(c, &o, c->reply, 1);
}

/* What the workers do after step index s (s + 1 steps done). */
static uint32_t directive(coord_t *c, int64_t s)
{
    const struct trainer_config *cfg = c->cfg;
    const int64_t t1 = s + 1;
    uint32_t flags = 0;
    if (!cfg->checkpoint_dir[0]) {
        /* nothing to checkpoint: a stop is immediate */
        if (c->stop_requested) {
            enter_stopped(c, c->stop_why);
            return MOE_FLAG_STOP;
        }
        return 0;
    }
    if (c->ck_step >= 0)
        return 0; /* one checkpoint at a time; a stop waits for the next step */
    const bool last = t1 >= cfg->steps;
    if (last || (cfg->checkpoint_every > 0 && t1 % cfg->checkpoint_every == 0) ||
        c->ck_requested || c->reconf_pending || c->stop_requested) {
        flags |= MOE_FLAG_CHECKPOINT;
        c->ck_step = t1;
        c->ck_started = c->now;
        c->ck_requested = false;
        clear_ckpt_done(c);
    }
    if (c->stop_requested && !last) {
        /* stop wins over a pending reconfiguration */
        flags |= MOE_FLAG_STOP;
        c->ck_stop = true;
        c->stop_requested = false;
    } else if (c->reconf_pending && !last) {
        flags |= MOE_FLAG_RECONFIGURE;
        c->ck_reconf = true;
        c->reconf_pending = false;
    }
    return flags;
}

static void handle_stats(coord_t *c, struct moe_wire_msg *m, double now)
{
    char why[256];
    int code;
    const Moe__Header *h = m->hdr;
    const int E = c->E;
    struct coord_member *w = worker_of(c, m, true, &code, why, sizeof why);
    if (!w) {
        reply_error(c, m, code, why);
        return;
    }
    if (answer_ended(c, m, w))
        return;
    if (h->epoch != c->epoch || c->phase != COORD_RUNNING) {
        snprintf(why, sizeof why, "statistics of epoch %u: the cluster is in epoch %u (%s)",
                 h->epoch, c->epoch, c->phase == COORD_RUNNING ? "running" : "reconfiguring");
        reply_error(c, m, MOE_ERR_STATE, why);
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
    if (h->flags & MOE_FLAG_STOP) {
        char r[96];
        snprintf(r, sizeof r, "worker %u was asked to stop", h->rank);
        coord_request_stop(c, r);
    }
    struct pending *p = &c->pending[h->rank];
    p->waiting = true;
    memcpy(p->identity, m->identity, m->identity_len);
    p->identity_len = m->identity_len;
    p->request_id = h->request_id;
    if (rc == 1) {
        const int64_t s = (int64_t)h->step;
        if (s + 1 > c->ep_high)
            c->ep_high = s + 1;
        send_global(c, directive(c, s));
    }
}

/* ------------------------------------------------------------------------ */
/* Registration, heartbeats, EPOCH_WAIT, LEAVE */

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
    send_out(c, m->identity, m->identity_len, &o, NULL, 0);
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
        ack(c, m, MOE__MSG_TYPE__MSG_REGISTER);
    return true;
}

static void mark_registered(struct coord_member *mem, const Moe__Header *h, double now)
{
    mem->incarnation = h->incarnation;
    mem->registered = true;
    mem->alive = true;
    mem->last_seen = now;
    mem->told = false;
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
        trainer_contract_get(mine, "train", my_train, sizeof my_train);
        trainer_contract_get(theirs, "train", their_train, sizeof their_train);
        char *at = strstr(mine, "\ntrain=?\n");
        if (strcmp(my_train, "?") == 0 && their_train[0] && strcmp(their_train, "?") != 0 && at &&
            strlen(their_train) == 16) {
            memmove(at + 7 + 16, at + 8, strlen(at + 8) + 1);
            memcpy(at + 7, their_train, 16);
            moe_info("the training corpus of this cluster is %s (from worker %u)", their_train,
                     h->rank);
        }
    }
    if (h->config_digest == trainer_contract_digest(mine) &&
        trainer_contract_digest(theirs) == h->config_digest && strcmp(mine, theirs) == 0)
        return true;
    char diff[900];
    int n = trainer_contract_diff(mine, theirs, server ? "workers" : NULL, diff, sizeof diff);
    if (n == 0)
        return true;
    snprintf(why, len, "the configuration differs from the cluster's (%d key%s): %s", n,
             n == 1 ? "" : "s", diff);
    return false;
}

static void handle_register(coord_t *c, struct moe_wire_msg *m, double now)
{
    char why[1024];
    int code;
    const Moe__Header *h = m->hdr;
    struct coord_member *mem;
    if (h->role == 2) {
        const char *ep = h->endpoint;
        if (!ep[0] || strlen(ep) >= sizeof mem->endpoint) {
            reply_error(c, m, MOE_ERR_FORMAT, "a server registers with the endpoint it serves on (at most 255 bytes)");
            return;
        }
        size_t el = 0;
        const uint8_t *idep = server_endpoint_of(m, &el);
        if (!idep || el != strlen(ep) || memcmp(idep, ep, el) != 0) {
            snprintf(why, sizeof why, "server %.200s must connect as \"%sINC@%.200s\"", ep,
                     SERVER_ID_PREFIX, ep);
            reply_error(c, m, MOE_ERR_STATE, why);
            return;
        }
        if (!contract_agrees(c, h, why, sizeof why)) {
            reply_error(c, m, MOE_ERR_CONFIG, why);
            return;
        }
        if (answer_ended(c, m, NULL))
            return;
        int s = slot_of_endpoint(c, ep, strlen(ep));
        if (s < 0) {
            if ((s = alloc_slot(c)) < 0) {
                reply_error(c, m, MOE_ERR_RANGE, "too many expert servers");
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
        catch_up_epoch(c, h->epoch);
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
            rollback(c, r);
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
            start_epoch(c, 0, "", c->ep_initial, "a server joined while starting");
        }
        return;
    }
    if (!(mem = worker_of(c, m, false, &code, why, sizeof why))) {
        reply_error(c, m, code, why);
        return;
    }
    if (!contract_agrees(c, h, why, sizeof why)) {
        reply_error(c, m, MOE_ERR_CONFIG, why);
        return;
    }
    if (answer_ended(c, m, NULL))
        return;
    catch_up_epoch(c, h->epoch);
    if (registers_again(c, m, mem, now))
        return;
    const bool restarted = mem->registered && c->phase == COORD_RUNNING;
    mark_registered(mem, h, now);
    mem->waiting_epoch = 0;
    moe_info("worker %u registered", h->rank);
    ack(c, m, MOE__MSG_TYPE__MSG_REGISTER);
    if (restarted) {
        snprintf(why, sizeof why, "worker %u restarted", h->rank);
        rollback(c, why);
    }
}

static void handle_heartbeat(coord_t *c, struct moe_wire_msg *m, double now)
{
    const Moe__Header *h = m->hdr;
    struct coord_member *mem = sender(c, m);
    if (!mem)
        return;
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
        /* rows/s over the time between heartbeats */
        if (mem->rate_time > 0 && now > mem->rate_time && h->rows_total >= mem->rate_rows)
            mem->rows_per_sec = (double)(h->rows_total - mem->rate_rows) / (now - mem->rate_time);
        mem->rate_time = now;
        mem->rate_rows = h->rows_total;
        mem->rows_total = h->rows_total;
        mem->bytes_total = h->bytes_total;
        mem->errors_total = h->errors_total;
        mem->latency_seconds = isfinite(h->latency_seconds) ? h->latency_seconds : 0;
    }
    if (answer_ended(c, m, mem))
        return;
    ack(c, m, MOE__MSG_TYPE__MSG_ACK);
}

static void reply_epoch(coord_t *c, const struct moe_wire_msg *m, uint32_t flags, int index)
{
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_EPOCH;
    o.request_id = m->hdr->request_id;
    o.placement_version = c->placement_version;
    o.flags = flags;
    if (!(flags & (MOE_FLAG_NOT_READY | MOE_FLAG_DRAINED | MOE_FLAG_FINISHED))) {
        const char **eps = malloc(sizeof(char *) * (size_t)(c->ep_n ? c->ep_n : 1));
        if (!eps)
            return;
        for (int i = 0; i < c->ep_n; i++)
            eps[i] = c->servers[c->ep_slot[i]].endpoint;
        o.step = (uint64_t)c->ep_step;
        o.rank = index < 0 ? 0 : (uint32_t)index;
        o.checkpoint = c->ep_ckpt;
        o.placement = c->ep_place;
        o.n_placement = (size_t)c->E;
        o.servers = eps;
        o.n_servers = (size_t)c->ep_n;
        if (c->ep_initial)
            o.flags |= MOE_FLAG_INITIAL_CHECKPOINT;
        send_out(c, m->identity, m->identity_len, &o, NULL, 0);
        free(eps);
        return;
    }
    send_out(c, m->identity, m->identity_len, &o, NULL, 0);
}

/* "worker 1: <its sentence>" for a failure a member reports. */
static void reported_cause(const coord_t *c, const struct coord_member *mem, const Moe__Header *h,
                           char *out, size_t cap)
{
    char who[32], text[600];
    member_name(c, mem, who, sizeof who);
    const char *t = h->error_text ? h->error_text : "";
    if (t[0]) {
        moe_log_sanitize(text, sizeof text, t, strlen(t));
        if (strncmp(text, who, strlen(who)) == 0)
            snprintf(out, cap, "%s", text); /* it named itself */
        else
            snprintf(out, cap, "%s: %s", who, text);
    } else {
        snprintf(out, cap, "%s reported a failure at step %" PRIu64, who, h->step);
    }
}

static void handle_epoch_wait(coord_t *c, struct moe_wire_msg *m, double now)
{
    char why[800];
    const Moe__Header *h = m->hdr;
    const bool server = h->role == 2;
    struct coord_member *mem = sender(c, m);
    if (!mem)
        return;
    mem->alive = true;
    mem->last_seen = now;
    if ((h->flags & MOE_FLAG_TROUBLE) && h->epoch == c->epoch &&
        (c->phase == COORD_RUNNING || (c->phase == COORD_LOADING && (!server || mem->index >= 0)))) {
        reported_cause(c, mem, h, why, sizeof why);
        moe_warn("%s", why);
        rollback(c, why);
    }
    if (answer_ended(c, m, mem))
        return;
    if (c->phase == COORD_FINISHED) {
        reply_epoch(c, m, MOE_FLAG_FINISHED, -1);
        return;
    }
    if (server) {
        if ((h->flags & MOE_FLAG_LOADED) && h->epoch == c->epoch && mem->index >= 0 &&
            c->phase == COORD_LOADING) {
            mem->loaded_epoch = c->epoch;
            c->generation++;
            maybe_run(c);
        }
        if (c->phase == COORD_FORMING || mem->index < 0) {
            if (mem->draining && c->phase != COORD_FORMING) {
                moe_info("server %u (%s) drained", mem->id, mem->endpoint);
                reply_epoch(c, m, MOE_FLAG_DRAINED, -1);
                prune_slot(c, (int)(mem - c->servers));
            } else {
                reply_epoch(c, m, MOE_FLAG_NOT_READY, -1);
            }
            return;
        }
        reply_epoch(c, m, 0, mem->index);
        return;
    }
    /* a worker */
    if (c->phase == COORD_LOADING) {
        mem->waiting_epoch = c->epoch;
        maybe_run(c);
    }
    if (c->phase == COORD_RUNNING && mem->waiting_epoch == c->epoch && h->epoch != c->epoch) {
        reply_epoch(c, m, 0, -1);
        return;
    }
    reply_epoch(c, m, MOE_FLAG_NOT_READY, -1);
}

/* A server asks to be drained (it got SIGTERM), a worker to stop the
 * cluster (it got SIGTERM). Answered with ACK: STOP means exit now. */
static void handle_leave(coord_t *c, struct moe_wire_msg *m)
{
    char why[512];
    const Moe__Header *h = m->hdr;
    struct coord_member *mem = sender(c, m);
    if (!mem)
        return;
    if (answer_ended(c, m, mem))
        return;
    char who[32];
    member_name(c, mem, who, sizeof who);
    if (c->phase == COORD_FINISHED) {
        mem->told = true;
        ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, MOE_FLAG_STOP, "training is over");
        return;
    }
    if (h->role == 1) {
        snprintf(why, sizeof why, "%s was asked to stop", who);
        coord_request_stop(c, why);
        ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, c->phase == COORD_STOPPED ? MOE_FLAG_STOP : 0,
                  "the cluster stops after its next checkpoint");
        return;
    }
    const int slot = (int)(mem - c->servers);
    if (c->stop_requested || c->ck_stop) {
        ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, 0,
                  "the cluster is stopping: stay for its last checkpoint");
        return;
    }
    if (mem->index < 0 || c->phase == COORD_FORMING) {
        /* holds no expert: it can go at once */
        moe_info("%s (%s) leaves; it held no experts", who, mem->endpoint);
        ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, MOE_FLAG_STOP, "this server holds no experts");
        prune_slot(c, slot);
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
        ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, c->phase == COORD_STOPPED ? MOE_FLAG_STOP : 0,
                  live <= 1 ? "it is the last server: the cluster checkpoints and stops"
                            : "the cluster stops");
        return;
    }
    if (mem->draining || drain_slot(c, slot, why, sizeof why) == 0) {
        ack_flags(c, m, MOE__MSG_TYPE__MSG_ACK, 0, "drained at the next step boundary");
        return;
    }
    reply_error(c, m, MOE_ERR_STATE, why);
}

int coord_handle_one(coord_t *c, double now)
{
    struct moe_wire_msg m;
    memset(&m, 0, sizeof m);
    char err[256];
    c->lim.width = 0;
    c->now = now;
    int rc = moe_wire_recv(c->sock, true, ZMQ_DONTWAIT, &c->lim, &m, err, sizeof err);
    if (rc == MOE_ERR_STATE && !m.hdr && m.identity_len == 0)
        return 0;
    c->messages++;
    c->generation++;
    if (rc) {
        reply_error(c, &m, rc, err);
        moe_wire_msg_free(&m);
        return 1;
    }
    switch (m.hdr->type) {
    case MOE__MSG_TYPE__MSG_REGISTER: handle_register(c, &m, now); break;
    case MOE__MSG_TYPE__MSG_HEARTBEAT: handle_heartbeat(c, &m, now); break;
    case MOE__MSG_TYPE__MSG_STATS: handle_stats(c, &m, now); break;
    case MOE__MSG_TYPE__MSG_EPOCH_WAIT: handle_epoch_wait(c, &m, now); break;
    case MOE__MSG_TYPE__MSG_CHECKPOINT_DONE: handle_ckpt_done(c, &m); break;
    case MOE__MSG_TYPE__MSG_LEAVE: handle_leave(c, &m); break;
    default: {
        char why[96];
        snprintf(why, sizeof why, "message type %d is not served by the coordinator",
                 (int)m.hdr->type);
        reply_error(c, &m, MOE_ERR_FORMAT, why);
    }
    }
    moe_wire_msg_free(&m);
    return 1;
}

void coord_tick(coord_t *c, double now)
{
    c->now = now;
    const double timeout = (double)c->cfg->heartbeat_timeout_ms / 1000.0;
    for (int s = 0; s < c->n_slots; s++) {
        struct coord_member *m = &c->servers[s];
        if (m->used && m->alive && now - m->last_seen > timeout) {
            m->alive = false;
            c->generation++;
            moe_warn("server %u (%s) not heard from for %.1f s", m->id, m->endpoint,
                     now - m->last_seen);
            if (m->index >= 0 && (c->phase == COORD_RUNNING || c->phase == COORD_LOADING)) {
                char why[320];
                snprintf(why, sizeof why, "server %u (%.200s) is silent", m->id, m->endpoint);
                rollback(c, why);
            } else if (m->index < 0 && c->started && c->phase != COORD_FORMING) {
                /* held nothing: nothing moves, it is simply gone */
                prune_slot(c, s);
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
    try_form(c);
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
        const int64_t sid = coord_server_of(c, e);
        json_object_set_new(j, "server", sid < 0 ? json_null() : json_integer(sid));
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
    for (int s = 0; s < c->n_slots; s++) {
        const struct coord_member *m = &c->servers[s];
        if (!m->used)
            continue;
        int n = 0;
        for (int e = 0; e < c->cfg->n_experts; e++)
            n += c->server_of[e] == s;
        json_t *j = json_object();
        json_object_set_new(j, "id", json_integer(m->id));
        json_object_set_new(j, "endpoint", json_string(m->endpoint));
        json_object_set_new(j, "alive", json_boolean(m->alive));
        json_object_set_new(j, "registered", json_boolean(m->registered));
        json_object_set_new(j, "experts", json_integer(n));
        json_object_set_new(j, "epoch_index", json_integer(m->index));
        json_object_set_new(j, "draining", json_boolean(m->draining));
        json_object_set_new(j, "step", json_integer(m->step));
        json_object_set_new(j, "rows_per_sec", json_real(m->rows_per_sec));
        json_object_set_new(j, "rows_total", json_integer((json_int_t)m->rows_total));
        json_object_set_new(j, "bytes_total", json_integer((json_int_t)m->bytes_total));
        json_object_set_new(j, "errors_total", json_integer((json_int_t)m->errors_total));
        json_object_set_new(j, "latency_seconds", json_real(m->latency_seconds));
        json_array_append_new(servers, j);
    }
    for (int r = 0; r < c->W; r++) {
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
    static const char *const phases[] = {"forming", "loading", "running", "finished", "stopped"};
    json_object_set_new(o, "epoch", json_integer(c->epoch));
    json_object_set_new(o, "phase", json_string(c->failed ? "failed" : phases[c->phase]));
    json_object_set_new(o, "failure", c->failed ? json_string(c->failed_why) : json_null());
    json_object_set_new(o, "stopping", json_boolean(c->stop_requested || c->ck_stop));
    json_object_set_new(o, "rollbacks", json_integer((json_int_t)c->rollbacks));
    json_object_set_new(o, "committed_checkpoint_step", json_integer(c->committed_step));
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
        char id[16], srv[24];
        snprintf(id, sizeof id, "%d", e);
        snprintf(srv, sizeof srv, "%" PRId64, coord_server_of(c, e));
        const char *labels[] = {"expert", id, "server", srv, NULL};
        rc = moe_prom_sample(b, NULL, labels, v[field]);
    }
    return rc;
}

char *coord_render_metrics(const coord_t *c)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    static const struct {
        const char *name, *help;
        enum moe_prom_type type;
    } per_expert[] = {
        /* in the field order of prom_per_expert */
        {"moe_expert_rows_routed_total", "Rows routed to the expert over the run (all workers).", MOE_PROM_COUNTER},
        {"moe_expert_rows_routed_last_step", "Rows routed to the expert in the last completed step.", MOE_PROM_GAUGE},
        {"moe_expert_importance", "Importance (sum of gates) of the expert in the last step.", MOE_PROM_GAUGE},
        {"moe_expert_importance_avg", "Moving average (0.9) of the expert's importance.", MOE_PROM_GAUGE},
        {"moe_expert_load", "Smooth load estimate of the expert in the last step.", MOE_PROM_GAUGE},
        {"moe_expert_load_avg", "Moving average (0.9) of the expert's load.", MOE_PROM_GAUGE},
    };
    int rc = 0;
    for (int f = 0; !rc && f < (int)(sizeof per_expert / sizeof per_expert[0]); f++)
        rc = prom_per_expert(&b, c, per_expert[f].name, per_expert[f].type, per_expert[f].help, f);
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
        {"moe_epoch", "Cluster configuration number (bumped by joins, drains and recoveries).", (double)c->epoch},
        {"moe_committed_checkpoint_step", "Step of the newest committed checkpoint (-1: none).", (double)c->committed_step},
        {"moe_cluster_failed", "1 when the cluster stopped on a failure it cannot recover from.", c->failed ? 1.0 : 0.0},
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
        rc = moe_prom_family(&b, "moe_rollbacks_total", MOE_PROM_COUNTER,
                             "Rollbacks to the last committed checkpoint after a failure.");
    if (!rc)
        rc = moe_prom_sample(&b, NULL, NULL, (double)c->rollbacks);
    if (!rc)
        rc = moe_prom_family(&b, "moe_server_up", MOE_PROM_GAUGE,
                             "1 if the expert server was heard from recently.");
    for (int s = 0; !rc && s < c->n_slots; s++) {
        if (!c->servers[s].used)
            continue;
        char idx[16];
        snprintf(idx, sizeof idx, "%u", c->servers[s].id);
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
        for (int s = 0; !rc && s < c->n_slots; s++) {
            const struct coord_member *m = &c->servers[s];
            if (!m->used)
                continue;
            const double v[] = {(double)m->rows_total, (double)m->bytes_total,
                                (double)m->errors_total, m->rows_per_sec, m->latency_seconds};
            char idx[16];
            snprintf(idx, sizeof idx, "%u", m->id);
            const char *labels[] = {"server", idx, NULL};
            rc = moe_prom_sample(&b, NULL, labels, v[per_server[f].field]);
        }
    }
    const struct {
        const char *name, *help;
        bool loss;
    } per_worker[] = {
        {"moe_worker_tokens_per_second", "Training speed reported by the worker.", false},
        {"moe_worker_loss", "Training loss (cross-entropy) reported by the worker.", true},
    };
    for (size_t f = 0; !rc && f < sizeof per_worker / sizeof per_worker[0]; f++) {
        rc = moe_prom_family(&b, per_worker[f].name, MOE_PROM_GAUGE, per_worker[f].help);
        for (int r = 0; !rc && r < c->W; r++) {
            const struct coord_worker_stats *w = coord_stats_worker(c->stats, r);
            char idx[16];
            snprintf(idx, sizeof idx, "%d", r);
            const char *labels[] = {"rank", idx, NULL};
            rc = moe_prom_sample(&b, NULL, labels, per_worker[f].loss ? w->loss : w->tokens_per_sec);
        }
    }
    if (rc) {
        moe_prom_buf_free(&b);
        return NULL;
    }
    return b.data; /* NUL-terminated, owned by the caller now */
}
