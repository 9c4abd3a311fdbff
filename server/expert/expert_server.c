/* The expert server's life cycle and loop (moe-server; see expert_server.h):
 * creation, the heartbeat thread, the coordinator's epochs and signals, and
 * the loop that hands each message to expert_server_step.c. */
#include "expert_server.h"

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

#include "expert_server_internal.h"
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
#include "moe_time.h"

int64_t expert_server_step(const expert_server_t *s) { return s->step; }
const char *expert_server_exit_reason(const expert_server_t *s) { return s->exit_why; }
const char *expert_server_endpoint(const expert_server_t *s) { return s->own; }
int64_t expert_server_id(const expert_server_t *s) { return s->coord ? (int64_t)s->id : (int64_t)s->cfg->server_index; }
int64_t expert_server_errors(const expert_server_t *s) { return s->errors; }

/* ------------------------------------------------------------------------ */

/* Entry server_index of the comma-separated --servers, or --bind when
 * --servers is empty. */
static bool own_endpoint(const struct moe_options *cfg, char *out, size_t cap, char *err,
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
        moe_err_set(err, errlen, "server %d: no address to serve on (give --servers, or --bind with "
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
    expert_server_t *s = arg;
    char err[256];
    coord_client_t *c = coord_client_new(s->ctx, &s->net, s->cfg->coordinator,
                                         COORD_ROLE_SERVER_HEARTBEAT,
                                         0, s->own, moe_options_experts_total(s->cfg),
                                         s->cfg->timeout_ms, err,
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
        struct moe_guard_counts gc;
        moe_guard_counts(s->guard, &gc);
        struct moe_hist compute;
        uint64_t reasons[MOE_REASONS];
        pthread_mutex_lock(&s->hb_lock);
        compute = s->hb_compute;
        memcpy(reasons, s->hb_reasons, sizeof reasons);
        const uint64_t in = s->hb_bytes_in, out = s->hb_bytes_out;
        pthread_mutex_unlock(&s->hb_lock);
        const struct coord_heartbeat hb = {
            .step = (int64_t)atomic_load(&s->hb_step), .rows = atomic_load(&s->hb_rows),
            .bytes = atomic_load(&s->hb_bytes), .errors = atomic_load(&s->hb_errors),
            .refused = gc.refused_keys + gc.handshake_failures + gc.refused_connections,
            .latency = lat, .bytes_in = in, .bytes_out = out, .errors_by_reason = reasons,
            .compute = &compute};
        if (coord_client_heartbeat(c, &hb, err, sizeof err))
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
static void publish(expert_server_t *s)
{
    atomic_store(&s->hb_step, s->step);
    atomic_store(&s->hb_rows, s->rows_total);
    atomic_store(&s->hb_bytes, s->bytes_total);
    atomic_store(&s->hb_errors, (uint64_t)s->errors);
    double lat = s->step > 0 ? s->compute_seconds / (double)s->step : 0;
    uint64_t bits;
    memcpy(&bits, &lat, sizeof bits);
    atomic_store(&s->hb_latency_bits, bits);
    pthread_mutex_lock(&s->hb_lock);
    s->hb_compute = s->compute;
    memcpy(s->hb_reasons, s->reasons, sizeof s->reasons);
    s->hb_bytes_in = s->bytes_in;
    s->hb_bytes_out = s->bytes_out;
    pthread_mutex_unlock(&s->hb_lock);
}

/* Whether a shard of n experts (of a hierarchical model: with the
 * secondary gates of their n / B groups) fits in the machine's memory now
 * (with a sentence naming this server, the experts and the bytes when it
 * does not). */
int expert_server__check_shard_memory(const expert_server_t *s, int n, char *err, size_t errlen)
{
    char what[240];
    int len = snprintf(what, sizeof what, "its %d experts of %d -> %d -> %d", n, s->D, s->H, s->D);
    double b = expert_shard_bytes(s->D, s->H, n, false);
    if (s->B > 0) {
        b += hmoe_groups_bytes(s->D, s->B, n / s->B);
        snprintf(what + len, sizeof what - (size_t)len, " (in %d group%s, with the secondary gates)",
                 n / s->B, n / s->B == 1 ? "" : "s");
    }
    return moe_mem_check(b >= 1.8e19 ? UINT64_MAX : (uint64_t)b, what, err, errlen);
}

/* The ROUTER socket workers reach: bound at --bind, or at this server's
 * entry of --servers; s->own gets the address workers use (--advertise
 * when binding a wildcard). Returns the address bound, or NULL. */
static const char *bind_socket(expert_server_t *s, char *bound, size_t cap, char *err,
                               size_t errlen)
{
    const struct moe_options *cfg = s->cfg;
    char own[256] = "";
    if (!own_endpoint(cfg, own, sizeof own, err, errlen))
        return NULL;
    snprintf(bound, cap, "%s", cfg->bind[0] ? cfg->bind : own);
    if (moe_sec_init(&s->sec, MOE_SEC_SERVER, cfg->keys, cfg->insecure, err, errlen) ||
        moe_sec_check(&s->sec, bound, "this server's address", err, errlen) ||
        moe_sec_check(&s->sec, cfg->coordinator, "the coordinator", err, errlen))
        return NULL;
    if (cfg->insecure)
        moe_warn("--insecure: this server talks plain TCP; anyone who reaches %s can read its "
                 "experts or disturb the training", bound);
    s->ctx = zmq_ctx_new();
    if (s->ctx && s->sec.keys && !(s->guard = moe_guard_new(s->ctx, &s->sec, err, errlen)))
        return NULL;
    s->net = (struct moe_net){&s->sec, s->guard, cfg->max_connections};
    s->curve = moe_sec_curve(&s->sec, bound);
    s->sock = s->ctx ? zmq_socket(s->ctx, ZMQ_ROUTER) : NULL;
    int linger = 0;
    /* libzmq drops a peer whose frame exceeds ZMQ_MAXMSGSIZE, with no reply
     * possible (and it reserves a frame's declared size when it starts
     * receiving it); a little over our own limit the message is received
     * and answered with an error instead. */
    int64_t maxmsg = (int64_t)s->lim.max_bytes + 65536;
    if (!s->sock || zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg)) {
        moe_err_set(err, errlen, "cannot bind %s: %s", bound, zmq_strerror(zmq_errno()));
        return NULL;
    }
    if (moe_net_bind(&s->net, s->sock, MOE_SEC_DOMAIN_SERVER, bound, "the expert server socket",
                     err, errlen))
        return NULL;
    if (cfg->advertise[0])
        snprintf(own, sizeof own, "%s", cfg->advertise);
    if (cfg->coordinator[0] && (strchr(own, '*') || strstr(own, "0.0.0.0"))) {
        moe_err_set(err, errlen, "%s is where this server listens, not an address workers can "
                    "reach: give --advertise tcp://HOST:PORT", own);
        return NULL;
    }
    snprintf(s->own, sizeof s->own, "%s", own);
    return bound;
}

/* With a coordinator: registration with this server's configuration (its
 * id and, when --workers was not given, the worker list come back) and the
 * heartbeat thread. The experts come with the first epoch. */
static int join_coordinator(expert_server_t *s, char *err, size_t errlen)
{
    const struct moe_options *cfg = s->cfg;
    int handover = 1;
    zmq_setsockopt(s->sock, ZMQ_ROUTER_HANDOVER, &handover, sizeof handover);
    s->coord = coord_client_new(s->ctx, &s->net, cfg->coordinator, 2, 0, s->own,
                                moe_options_experts_total(cfg),
                                cfg->timeout_ms, err, errlen);
    if (!s->coord)
        return MOE_ERR_IO;
    if (moe_options_contract(cfg, MOE_ROLE_SERVER, s->contract, sizeof s->contract) < 0)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "the training configuration is too long to send");
    int rc = coord_client_register(s->coord, s->own, s->contract, cfg->coordinator_wait_s, err,
                                   errlen);
    if (rc)
        return rc;
    s->id = coord_client_id(s->coord);
    if (!cfg->workers[0] && coord_client_workers(s->coord)[0])
        moe_info("the cluster's workers (from the coordinator): %s",
                 coord_client_workers(s->coord));
    if (pthread_create(&s->hb_thread, NULL, heartbeat_main, s) != 0)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "cannot start the heartbeat thread");
    s->hb_running = true;
    s->waiting = true;
    s->index = -1;
    return 0;
}

/* The first shard: this server's experts of the static placement, or none
 * until a coordinator's epoch; the step's buffers. */
static int make_shard(expert_server_t *s, int *n_out, char *err, size_t errlen)
{
    const struct moe_options *cfg = s->cfg;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)moe_options_experts_total(cfg));
    if (!ids)
        return MOE_ERR_NOMEM;
    /* a hierarchical model's experts are named by group in its files */
    expert_shard_set_group_size(moe_options_hierarchical(cfg) ? cfg->experts_per_group : 0);
    const int n = s->coord ? 0 : moe_cluster_experts_of(&s->cl, cfg->server_index, ids);
    const struct moe_fadam_opts fo = {cfg->expert_beta2, cfg->expert_decay_pow, cfg->expert_eps,
                                      1e-30, cfg->expert_clip, cfg->expert_relative_step, 1e-3};
    int rc = 0;
    s->B = moe_options_hierarchical(cfg) ? cfg->experts_per_group : 0;
    if (cfg->memory_check && n > 0 &&
        (rc = expert_server__check_shard_memory(s, n, err, errlen))) {
        char e2[1200];
        snprintf(e2, sizeof e2, "server %d: %s", cfg->server_index, err);
        moe_err_set(err, errlen, "%s", e2);
    } else if (!(s->shard = expert_shard_new_ex(s->D, s->H, n, ids, (uint64_t)cfg->seed, &fo,
                                                false))) {
        rc = moe_err_fail(MOE_ERR_NOMEM, err, errlen, "cannot allocate %d experts of %dx%d", n,
                          s->D, s->H);
    } else {
        expert_shard_set_recompute(s->shard,
                                   moe_options_recompute_mode(cfg) != MOE_RECOMPUTE_NONE);
    }
    free(ids);
    if (!rc && (rc = expert_server__make_groups(s)))
        moe_err_set(err, errlen, "cannot allocate the gates of this server's groups");
    s->layers = moe_options_moe_layers(cfg);
    s->parts = calloc((size_t)s->W, sizeof *s->parts);
    s->fwd = calloc((size_t)s->W * (size_t)s->layers, sizeof *s->fwd);
    s->bwd = calloc((size_t)s->W, sizeof *s->bwd);
    /* room for every expert: an epoch may give this server any of them */
    s->u_ids = malloc(sizeof(int32_t) * (size_t)moe_options_experts_total(cfg));
    s->u_rows = malloc(sizeof(int) * (size_t)moe_options_experts_total(cfg));
    s->u_base = malloc(sizeof(size_t) * (size_t)moe_options_experts_total(cfg));
    if (!rc && (!s->fwd || !s->bwd || !s->parts || !s->u_ids || !s->u_rows || !s->u_base))
        rc = MOE_ERR_NOMEM;
    *n_out = n;
    return rc;
}

expert_server_t *expert_server_new(const struct moe_options *cfg, char *err, size_t errlen)
{
    expert_server_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    pthread_mutex_init(&s->hb_lock, NULL);
    moe_hist_init(&s->compute, moe_hist_step_bounds, moe_hist_step_n);
    s->hb_compute = s->compute;
    s->cfg = cfg;
    if (moe_wire_dtype_parse(cfg->wire_dtype, &s->dtype, err, errlen))
        goto fail;
    s->D = cfg->d_model;
    s->H = cfg->d_hidden;
    s->sched = (struct moe_lr_schedule){cfg->lr, cfg->warmup};
    /* a worker sends at most every row of its batch times k (DESIGN §5) */
    const uint64_t max_rows = (uint64_t)moe_options_batch_rows(cfg) *
                              (uint64_t)moe_options_slots_per_row(cfg);
    s->lim = (struct moe_wire_limits){moe_options_message_limit(cfg, MOE_ROLE_SERVER),
                                      (uint32_t)s->D, (uint32_t)moe_options_experts_total(cfg),
                                      max_rows};
    s->index = cfg->server_index;
    char bound[256];
    if (!bind_socket(s, bound, sizeof bound, err, errlen) ||
        (cfg->coordinator[0] && join_coordinator(s, err, errlen)))
        goto fail;
    /* A server without --workers takes the coordinator's list (the contract
     * check let it through for that reason). */
    snprintf(s->workers, sizeof s->workers, "%s",
             s->coord && !cfg->workers[0] ? coord_client_workers(s->coord) : cfg->workers);
    if (moe_cluster_parse_groups(&s->cl, s->coord ? s->own : cfg->servers, s->workers,
                                 s->coord ? "" : cfg->placement,
                                 moe_options_experts_total(cfg), moe_options_group_size(cfg),
                                 err, errlen))
        goto fail;
    if (!s->coord && cfg->server_index >= s->cl.n_servers) {
        moe_err_set(err, errlen, "server_index %d: only %d servers are listed in servers",
                    cfg->server_index, s->cl.n_servers);
        goto fail;
    }
    s->W = s->cl.n_workers;
    int n = 0;
    if (make_shard(s, &n, err, errlen))
        goto fail;
    if (s->coord)
        moe_info("serving on %s as server %u, %d worker(s); experts come with the coordinator's "
                 "epoch", bound, s->id, s->W);
    else
        moe_info("server %d of %d: %d experts (%d..%d), %d worker(s), listening on %s",
                 cfg->server_index, s->cl.n_servers, n, n ? expert_shard_id(s->shard, 0) : -1,
                 n ? expert_shard_id(s->shard, n - 1) : -1, s->W, bound);
    return s;
fail:
    expert_server_destroy(&s);
    return NULL;
}

void expert_server_destroy(expert_server_t **sp)
{
    if (!sp || !*sp)
        return;
    expert_server_t *s = *sp;
    if (s->fwd)
        expert_server__clear_slots(s->fwd, s->W * s->layers);
    if (s->bwd)
        expert_server__clear_slots(s->bwd, s->W);
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
    pthread_mutex_destroy(&s->hb_lock);
    coord_client_destroy(&s->coord);
    if (s->sock)
        zmq_close(s->sock);
    moe_guard_destroy(&s->guard); /* after every socket it guards */
    if (s->ctx)
        zmq_ctx_term(s->ctx);
    expert_shard_destroy(&s->shard);
    hmoe_groups_destroy(&s->groups);
    free(s->parts);
    moe_free_floats(&s->gstats);
    moe_free_floats(&s->gdgp);
    moe_cluster_free(&s->cl);
    free(s);
    *sp = NULL;
}

/* The first SIGTERM/SIGINT with a coordinator: ask to be drained. Returns
 * 1 when the server may exit at once (it holds nothing, or the cluster is
 * over), 0 when it serves on until the coordinator drains it or stops the
 * cluster, -1 when it cannot be drained (it then finishes its step and
 * exits; the cluster recovers from its absence). */
static int ask_to_leave(expert_server_t *s)
{
    char err[1024], said[256];
    uint32_t flags = 0;
    s->leave_sent = true;
    int rc = coord_client_leave(s->coord, s->step, &flags, said, sizeof said, err, sizeof err);
    if (rc == MOE_ERR_STOPPED || (rc == 0 && (flags & MOE_FLAG_STOP))) {
        moe_info("signal: leaving (%s)", rc ? err : said);
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
static int check_coordinator(expert_server_t *s, volatile sig_atomic_t *stop)
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
static int await_epoch(expert_server_t *s, volatile sig_atomic_t *stop)
{
    char err[1024];
    double waited = 0, logged = 0;
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
            const double now = moe_now_sec();
            if (waited == 0)
                waited = now;
            else if (now - waited >= 10 && now - logged >= 10 && ep.note[0]) {
                logged = now;
                moe_info("%s (for %.0f s)", ep.note, now - waited);
            }
            coord_epoch_free(&ep);
            /* serve nothing, but keep the ROUTER drained of stale requests */
            for (int i = 0; i < 64; i++) {
                int ev = 0;
                size_t len = sizeof ev;
                if (zmq_getsockopt(s->sock, ZMQ_EVENTS, &ev, &len) || !(ev & ZMQ_POLLIN))
                    break;
                expert_server__handle_message(s);
            }
            moe_sleep_ms(50);
            continue;
        }
        rc = expert_server__load_epoch(s, &ep, err, sizeof err);
        const bool initial = ep.flags & MOE_FLAG_INITIAL_CHECKPOINT;
        const uint32_t epoch = ep.epoch;
        coord_epoch_free(&ep);
        if (rc) {
            /* cannot serve this epoch: report trouble, the coordinator moves on */
            char why[1200];
            snprintf(why, sizeof why, "server %u cannot load epoch %u: %s", s->id, epoch, err);
            coord_client_set_epoch(s->coord, epoch);
            expert_server__report_trouble(s, why);
            moe_sleep_ms(500);
            continue;
        }
        if (initial && s->cfg->checkpoint_dir[0])
            expert_server__write_checkpoint(s);
        struct coord_epoch e2;
        rc = coord_client_epoch_wait(s->coord, s->step, MOE_FLAG_LOADED, NULL, &e2, err, sizeof err);
        if (rc == 0)
            coord_epoch_free(&e2);
        s->waiting = false;
        publish(s);
        return 0;
    }
}

int expert_server_run(expert_server_t *s, volatile sig_atomic_t *stop)
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
            for (int r = 0; r < s->W * s->layers; r++)
                mid_step |= s->fwd[r].have;
            if (!mid_step)
                break;
            if (s->stop_since == 0) {
                s->stop_since = moe_now_sec();
                moe_info("stopping: finishing step %" PRId64 " first (for at most %lld s; a "
                         "second signal stops at once)", s->step,
                         (long long)(s->cfg->timeout_ms / 1000));
            } else if (moe_now_sec() - s->stop_since > (double)s->cfg->timeout_ms / 1000.0) {
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
                expert_server__abandon_step(s, "the cluster changed configuration (new epoch)");
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
            expert_server__handle_message(s);
        }
    }
done:;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    moe_info("served %" PRId64 " steps, %" PRId64 " messages, rejected %" PRId64
             "; peak RSS %.1f MB", s->step, s->msgs, s->errors, (double)ru.ru_maxrss / 1024.0);
    return s->exit_code;
}

