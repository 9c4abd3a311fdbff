/* Epochs, failures and checkpoints (moe-coordinator process; see
 * coord.h): starting an epoch, rollbacks and the livelock guard, stopping,
 * committing checkpoints, drains, the global statistics of each step and
 * what EPOCH_WAIT answers. */
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
    coord__fail_pending(c, c->failed_why, MOE_FLAG_FAILED);
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
    coord__answer_pending(c, &o, NULL, 0);
    c->generation++;
}

/* A new epoch on the live, non-draining servers, starting from checkpoint
 * `folder` at `step` (folder "" = fresh). */
void coord__start_epoch(coord_t *c, int64_t step, const char *folder, bool initial,
                        const char *reason)
{
    int live[MAX_SLOTS], n = 0;
    for (int s = 0; s < c->n_slots; s++) {
        struct coord_member *m = &c->servers[s];
        if (m->used && m->registered && m->alive && !m->draining)
            live[n++] = s;
    }
    coord__fail_pending(c, "the cluster changed configuration (new epoch); ask again with EPOCH_WAIT", 0);
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
    /* whole groups of a hierarchical MoE; at most one server per group */
    const int B = moe_options_group_size(c->cfg);
    const int kept = B > 1 ? coord_placement_live(c->E / B, c->server_of, c->E, live, n) : n;
    if (kept < n)
        moe_warn("epoch %u: %d server(s) for %d group(s) of experts: %d stay idle", c->epoch, n,
                 c->E / B, n - kept);
    n = kept;
    coord_placement_compute_groups(c->E, B, c->server_of, live, n, next);
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
    c->step_done_at = 0; /* the next step's time includes no reconfiguration */
    moe_info("epoch %u: %d server(s), placement version %u (%d expert(s) moved), from %s%s: %s",
             c->epoch, n, c->placement_version, moved, folder[0] ? "checkpoint " : "a fresh start",
             folder, reason);
    /* Servers that died and whose experts now live elsewhere are gone. */
    for (int s = 0; s < c->n_slots; s++) {
        struct coord_member *m = &c->servers[s];
        if (m->used && m->ever_registered && !m->alive && m->index < 0)
            coord__prune_slot(c, s);
    }
}

/* Something failed: roll everyone back to the last committed checkpoint,
 * unless the same failure keeps repeating without progress. */
void coord__rollback(coord_t *c, const char *reason)
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
            coord__start_epoch(c, 0, "", c->cfg->checkpoint_dir[0] != 0, reason);
            return;
        }
        char why[1024];
        snprintf(why, sizeof why, "%s, and there is no committed checkpoint to roll back to%s",
                 reason, c->cfg->checkpoint_dir[0] ? "" : " (set checkpoint_dir)");
        fail_cluster(c, why);
        return;
    }
    moe_warn("rolling back to step %" PRId64 ": %s", c->committed_step, reason);
    if (c->ck_stop)
        c->stop_requested = true; /* the stop still stands: after the replay */
    c->ck_step = -1;
    remove_partial_checkpoints(c);
    coord__start_epoch(c, c->committed_step, c->committed, false, reason);
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

void coord__try_form(coord_t *c)
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
            coord__start_epoch(c, c->committed_step, c->committed, false, "resuming");
        else
            coord__start_epoch(c, 0, "", c->cfg->checkpoint_dir[0] != 0, "first start");
    } else {
        coord__start_epoch(c, c->ep_step, c->ep_ckpt, c->ep_initial, "servers are back");
    }
}

/* A member reported an epoch newer than ours (we restarted while it ran):
 * continue above it, so that every epoch we hand out is new to everyone. */
void coord__catch_up_epoch(coord_t *c, uint32_t theirs)
{
    if (theirs <= c->epoch)
        return;
    if (c->phase == COORD_FORMING) {
        c->epoch = theirs;
    } else if (c->phase == COORD_LOADING) {
        c->epoch = theirs;
        coord__start_epoch(c, c->ep_step, c->ep_ckpt, c->ep_initial,
                    "a member of a newer epoch registered");
    }
}


static void commit_checkpoint(coord_t *c)
{
    char folder[MOE_PATH_MAX + 32], why[512];
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
        char path[MOE_PATH_MAX + 200];
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
        coord__rollback(c, r);
        return;
    }
    c->committed_step = step;
    c->rb_committed = true;
    c->checkpoints_committed++;
    c->committed_at = c->now;
    moe_hist_observe(&c->ckpt_hist, c->now - c->ck_started);
    snprintf(c->committed, sizeof c->committed, "%s", folder);
    c->generation++;
    moe_info("checkpoint of step %" PRId64 " committed (%s, %.2f s)", step, folder,
             c->now - c->ck_started);
    int pruned = moe_manifest_prune(c->cfg->checkpoint_dir, c->cfg->keep_checkpoints);
    if (pruned < 0)
        moe_warn("cannot prune old checkpoints in %s", c->cfg->checkpoint_dir);
    if (step >= c->cfg->steps) {
        c->trained = true;
        /* a stop asked for while the last checkpoint was being written
         * (SIGTERM once the workers are done) stops the cluster now: in
         * FINISHED it would be forgotten, and the members told to stay for
         * that checkpoint would wait for ever */
        moe_info("training finished: step %" PRId64 " of %" PRId64 ", last checkpoint %s", step,
                 (int64_t)c->cfg->steps, folder);
        if (stop || c->stop_requested)
            enter_stopped(c, c->stop_why);
        else
            c->phase = COORD_FINISHED;
        return;
    }
    if (stop) {
        enter_stopped(c, c->stop_why);
        return;
    }
    if (reconf)
        coord__start_epoch(c, step, folder, false, "planned reconfiguration");
}

void coord__handle_ckpt_done(coord_t *c, struct moe_wire_msg *m)
{
    char why[256];
    const Moe__Header *h = m->hdr;
    struct coord_member *mem = coord__sender(c, m);
    if (!mem)
        return;
    const char *f = h->endpoint;
    size_t fl = strlen(f);
    if (fl == 0 || fl >= sizeof mem->ckpt_file || strchr(f, '/') || f[0] == '.' ||
        fl < 12 || strcmp(f + fl - 12, ".safetensors") != 0) {
        coord__reply_error(c, m, MOE_ERR_FORMAT, "checkpoint file name must be NAME.safetensors");
        return;
    }
    if (c->ck_step < 0 || (int64_t)h->step != c->ck_step || h->epoch != c->epoch ||
        (h->role == 2 && mem->index < 0)) {
        snprintf(why, sizeof why, "no checkpoint of step %" PRIu64 " in progress in epoch %u",
                 h->step, h->epoch);
        coord__reply_error(c, m, MOE_ERR_STATE, why);
        return;
    }
    snprintf(mem->ckpt_file, sizeof mem->ckpt_file, "%s", f);
    mem->ckpt_done = true;
    coord__ack(c, m, MOE__MSG_TYPE__MSG_ACK);
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
        moe_err_set(err, errlen, "the coordinator has no checkpoint_dir");
        return MOE_ERR_STATE;
    }
    if (c->failed || (c->phase != COORD_RUNNING && c->phase != COORD_LOADING)) {
        moe_err_set(err, errlen, "the cluster is not training");
        return MOE_ERR_STATE;
    }
    c->ck_requested = true;
    return 0;
}

/* Marks the server in `slot` to leave at the next step boundary. */
int coord__drain_slot(coord_t *c, int slot, char *err, size_t errlen)
{
    struct coord_member *m = &c->servers[slot];
    if (!c->cfg->checkpoint_dir[0]) {
        moe_err_set(err, errlen, "draining moves experts through a checkpoint: set checkpoint_dir");
        return MOE_ERR_STATE;
    }
    int others = 0;
    for (int s = 0; s < c->n_slots; s++)
        others += s != slot && c->servers[s].used && c->servers[s].registered &&
                  c->servers[s].alive && !c->servers[s].draining;
    if (others == 0) {
        moe_err_set(err, errlen, "server %u is the last one; its experts have nowhere to go", m->id);
        return MOE_ERR_STATE;
    }
    if (c->failed || c->stop_requested || c->ck_stop ||
        (c->phase != COORD_RUNNING && c->phase != COORD_LOADING)) {
        moe_err_set(err, errlen, "the cluster is not training (%s)",
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
        coord__start_epoch(c, c->ep_step, c->ep_ckpt, c->ep_initial, why);
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
    const int slot = id <= UINT32_MAX ? coord__slot_of_id(c, id) : -1;
    if (slot < 0) {
        moe_err_set(err, errlen, "there is no server %" PRIu64 " in this cluster", id);
        return MOE_ERR_NOTFOUND;
    }
    const struct coord_member *m = &c->servers[slot];
    if (!m->registered) {
        moe_err_set(err, errlen, "server %" PRIu64 " (%s) has not registered", id, m->endpoint);
        return MOE_ERR_STATE;
    }
    if (!m->alive) {
        moe_err_set(err, errlen, "server %" PRIu64 " (%s) is down; its experts move to the other "
                 "servers by themselves", id, m->endpoint);
        return MOE_ERR_STATE;
    }
    if (m->draining) {
        moe_err_set(err, errlen, "server %" PRIu64 " is already being drained", id);
        return MOE_ERR_STATE;
    }
    return coord__drain_slot(c, slot, err, errlen);
}

void coord_stop_now(coord_t *c, const char *why) { enter_stopped(c, why); }

void coord_request_stop(coord_t *c, const char *why)
{
    if (c->phase == COORD_STOPPED || c->failed)
        return;
    snprintf(c->stop_why, sizeof c->stop_why, "%s", why);
    if (coord_stalled(c) && c->phase == COORD_RUNNING && c->cfg->checkpoint_dir[0])
        moe_warn("%s: no step completed for %" PRIu64 " heartbeats (a worker gone?): no "
                 "checkpoint waits for the next step", why, coord_beats_since_step(c));
    if (c->phase == COORD_RUNNING && c->cfg->checkpoint_dir[0] && !coord_stalled(c)) {
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
    return coord_untold(c, NULL, 0) == 0;
}

static bool untold(const coord_t *c, const struct coord_member *m, bool server)
{
    /* after the last step the workers leave by themselves (one that is
     * gone looks alive until its heartbeat timeout): none waits for news */
    return m->registered && m->alive && !m->told && (server ? m->used : !c->trained);
}

int coord_untold(const coord_t *c, char *buf, size_t cap)
{
    int n = 0;
    size_t len = 0;
    if (buf && cap)
        buf[0] = '\0';
    for (int i = 0; i < c->n_slots + c->W; i++) {
        const bool server = i < c->n_slots;
        const struct coord_member *m = server ? &c->servers[i] : &c->workers[i - c->n_slots];
        if (!untold(c, m, server))
            continue;
        if (buf && len + 1 < cap) {
            char who[320];
            coord__member_name(c, m, who, sizeof who);
            int w = snprintf(buf + len, cap - len, "%s%s", n ? ", " : "", who);
            len = w < 0 ? len : len + (size_t)w < cap ? len + (size_t)w : cap - 1;
        }
        n++;
    }
    return n;
}

/* The answer to a member of a stopped or failed cluster (true: answered). */
bool coord__answer_ended(coord_t *c, const struct moe_wire_msg *m, struct coord_member *mem)
{
    if (c->failed) {
        coord__reply_error_flags(c, m, MOE_ERR_STATE, c->failed_why, MOE_FLAG_FAILED);
    } else if (c->phase == COORD_STOPPED) {
        coord__reply_error_flags(c, m, MOE_ERR_STATE, "the operator stopped the cluster", MOE_FLAG_STOP);
    } else {
        return false;
    }
    if (mem) {
        mem->told = true;
        c->generation++;
    }
    return true;
}


static void send_global(coord_t *c, uint32_t flags)
{
    const int E = c->E;
    memcpy(c->reply, coord_stats_global_importance(c->stats), sizeof(float) * (size_t)E);
    memcpy(c->reply + E, coord_stats_global_load(c->stats), sizeof(float) * (size_t)E);
    memcpy(c->reply + 2 * E, coord_stats_global_rows(c->stats), sizeof(float) * (size_t)E);
    const int X = coord_stats_n_extras(c->stats);
    if (X)
        memcpy(c->reply + 3 * E, coord_stats_global_extras(c->stats), sizeof(float) * (size_t)X);
    int32_t id0 = 0;
    uint32_t one = 1;
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_STATS_REPLY;
    o.step = (uint64_t)coord_stats_completed_step(c->stats);
    o.expert_ids = &id0;
    o.row_counts = &one;
    o.n_experts = 1;
    o.dtype = MOE__DTYPE__DTYPE_F32;
    o.width = (uint32_t)(3 * E + X);
    o.placement_version = c->placement_version;
    o.flags = flags;
    coord__answer_pending(c, &o, c->reply, 1);
}

/* What the workers do after step index s (s + 1 steps done). */
static uint32_t directive(coord_t *c, int64_t s)
{
    const struct moe_options *cfg = c->cfg;
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

void coord__handle_stats(coord_t *c, struct moe_wire_msg *m, double now)
{
    char why[256];
    int code;
    const Moe__Header *h = m->hdr;
    const int E = c->E;
    struct coord_member *w = coord__worker_of(c, m, true, &code, why, sizeof why);
    if (!w) {
        coord__reply_error(c, m, code, why);
        return;
    }
    if (coord__answer_ended(c, m, w))
        return;
    if (h->epoch != c->epoch || c->phase != COORD_RUNNING) {
        snprintf(why, sizeof why, "statistics of epoch %u: the cluster is in epoch %u (%s)",
                 h->epoch, c->epoch, c->phase == COORD_RUNNING ? "running" : "reconfiguring");
        coord__reply_error(c, m, MOE_ERR_STATE, why);
        return;
    }
    const int X = coord_stats_n_extras(c->stats);
    if (m->rows != 1 || h->width != (uint32_t)(3 * E + X)) {
        if (X)
            snprintf(why, sizeof why,
                     "statistics must be one row of 3 x %d + %d floats (a hierarchical MoE's "
                     "per-group factors of Load_H follow the vectors)", E, X);
        else
            snprintf(why, sizeof why, "statistics must be one row of 3 x %d floats", E);
        coord__reply_error(c, m, MOE_ERR_SHAPE, why);
        return;
    }
    int rc = coord_stats_submit_ex(c->stats, (int64_t)h->step, (int)h->rank, m->data, m->data + E,
                                   m->data + 2 * E, m->data + 3 * E, h->loss, h->tokens_per_sec,
                                   why, sizeof why);
    if (rc < 0) {
        coord__reply_error(c, m, rc, why);
        return;
    }
    w->last_seen = now;
    w->alive = true;
    w->activity[0] = '\0'; /* training again */
    w->step = (int64_t)h->step;
    w->messages++;
    w->tokens_total += h->tokens;
    w->cpu_seconds = isfinite(h->cpu_seconds) && h->cpu_seconds >= 0 ? h->cpu_seconds : 0;
    w->rss_bytes = h->rss_bytes;
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
        if (c->step_done_at > 0)
            moe_hist_observe(&c->step_hist, now - c->step_done_at);
        c->step_done_at = c->last_step_at = now;
        for (int k = 0; k < c->n_slots; k++)
            c->servers[k].beats_since_step = 0;
        send_global(c, directive(c, s));
    }
}


/* What the cluster waits for before it can train, for NOT_READY answers
 * (the members log it while they wait). */
static void waiting_for(const coord_t *c, char *out, size_t cap)
{
    if (c->phase == COORD_FORMING) {
        int n = 0;
        for (int s = 0; s < c->n_slots; s++)
            n += c->servers[s].used && c->servers[s].registered && c->servers[s].alive;
        snprintf(out, cap, "waiting for expert servers to register (%d of %d)", n,
                 c->started ? 1 : c->min_servers);
        return;
    }
    for (int i = 0; c->phase == COORD_LOADING && i < c->ep_n; i++) {
        const struct coord_member *m = &c->servers[c->ep_slot[i]];
        if (m->loaded_epoch != c->epoch) {
            snprintf(out, cap, "waiting for server %u to load epoch %u", m->id, c->epoch);
            return;
        }
    }
    for (int r = 0; r < c->W; r++) {
        const struct coord_member *m = &c->workers[r];
        if (c->phase == COORD_LOADING && m->waiting_epoch != c->epoch) {
            snprintf(out, cap, "waiting for worker %d to ask for epoch %u", r, c->epoch);
            return;
        }
        if (c->phase == COORD_RUNNING && m->started_epoch != c->epoch) {
            snprintf(out, cap, "waiting for worker %d to load epoch %u", r, c->epoch);
            return;
        }
    }
    snprintf(out, cap, "waiting for epoch %u", c->epoch);
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
        coord__send_out(c, m->identity, m->identity_len, &o, NULL, 0);
        free(eps);
        return;
    }
    char note[200];
    if (flags & MOE_FLAG_NOT_READY) {
        waiting_for(c, note, sizeof note);
        o.error_text = note;
    }
    coord__send_out(c, m->identity, m->identity_len, &o, NULL, 0);
}

/* "worker 1: <its sentence>" for a failure a member reports. */
static void reported_cause(const coord_t *c, const struct coord_member *mem, const Moe__Header *h,
                           char *out, size_t cap)
{
    char who[32], text[600];
    coord__member_name(c, mem, who, sizeof who);
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

void coord__handle_epoch_wait(coord_t *c, struct moe_wire_msg *m, double now)
{
    char why[800];
    const Moe__Header *h = m->hdr;
    const bool server = h->role == 2;
    struct coord_member *mem = coord__sender(c, m);
    if (!mem)
        return;
    mem->alive = true;
    mem->last_seen = now;
    if ((h->flags & MOE_FLAG_TROUBLE) && h->epoch == c->epoch &&
        (c->phase == COORD_RUNNING || (c->phase == COORD_LOADING && (!server || mem->index >= 0)))) {
        reported_cause(c, mem, h, why, sizeof why);
        moe_warn("%s", why);
        coord__rollback(c, why);
    }
    if (coord__answer_ended(c, m, mem))
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
                coord__prune_slot(c, (int)(mem - c->servers));
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
    /* The start barrier: a worker that loaded the epoch (its checkpoint, its
     * ring) waits until every worker has, so that all start the first step
     * together and nobody's timeout runs while another still loads. */
    if (c->phase == COORD_RUNNING && h->epoch == c->epoch && (h->flags & MOE_FLAG_LOADED)) {
        if (mem->started_epoch != c->epoch) {
            mem->started_epoch = c->epoch;
            c->generation++;
        }
        bool all = true;
        for (int r = 0; r < c->W; r++)
            all &= c->workers[r].started_epoch == c->epoch;
        reply_epoch(c, m, all ? 0 : MOE_FLAG_NOT_READY, -1);
        return;
    }
    reply_epoch(c, m, MOE_FLAG_NOT_READY, -1);
}
