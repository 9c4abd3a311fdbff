/* The coordinator's epochs, seen from a worker (moe-worker process; DESIGN
 * §6): asking for the epoch, switching to it (the placement, the ring, the
 * checkpoint to roll back to) and the start barrier, recovery after a
 * failed step, the cluster checkpoints and the orders attached to a step
 * (checkpoint, stop, reconfigure). */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "expert_local.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_time.h"
#include "moe_wire.h"
#include "trainer_internal.h"

/* Asks the coordinator for the next epoch until it has one (flags: its
 * first request's MOE_FLAG_TROUBLE, with `why`). t->ep gets it. Gives up
 * when the coordinator stays silent longer than coordinator_wait_s; a
 * signal meanwhile asks it to stop the cluster. MOE_ERR_STOPPED when the
 * operator stopped the cluster. */
int trainer__wait_epoch(struct trainer *t, uint32_t flags, const char *why, char *err, size_t errlen)
{
    double waited = 0, logged = 0;
    for (;;) {
        if (t->signals && *t->signals && !t->stop_asked) {
            uint32_t f = 0;
            char said[256];
            int rc = coord_client_leave(t->coord, t->step, &f, said, sizeof said, err, errlen);
            if (rc == MOE_ERR_STOPPED || (rc == 0 && (f & MOE_FLAG_STOP)))
                return MOE_ERR_STOPPED;
            if (rc == 0) {
                t->stop_asked = true;
                moe_info("asked the coordinator to stop the cluster: %s", said);
            }
        }
        struct coord_epoch ep;
        int rc = coord_client_epoch_wait(t->coord, t->step, flags, why, &ep, err, errlen);
        if (rc == MOE_ERR_IO) {
            const double silent = coord_client_silence(t->coord);
            if (silent > (double)t->cfg->coordinator_wait_s) {
                char e2[1200];
                snprintf(e2, sizeof e2, "the coordinator at %s has not answered for %.0f s "
                         "(--coordinator-wait-s %lld); giving up: %s", t->cfg->coordinator,
                         silent, (long long)t->cfg->coordinator_wait_s, err);
                moe_err_set(err, errlen, "%s", e2);
                return MOE_ERR_IO;
            }
            moe_warn("%s; asking again", err);
            continue;
        }
        if (rc)
            return rc;
        flags &= ~(uint32_t)MOE_FLAG_TROUBLE;
        if (ep.flags & MOE_FLAG_FINISHED) {
            moe_err_set(err, errlen, "the coordinator says training is over (every step is done)");
            return MOE_ERR_STATE;
        }
        if (ep.flags & MOE_FLAG_NOT_READY) {
            const double now = moe_now_sec();
            if (waited == 0)
                waited = now;
            else if (now - waited >= 10 && now - logged >= 10) {
                logged = now;
                moe_info("%s (for %.0f s)", ep.note[0] ? ep.note : "waiting for the cluster",
                         now - waited);
            }
            moe_sleep_ms(20);
            continue;
        }
        coord_epoch_free(&t->ep);
        t->ep = ep;
        return 0;
    }
}

struct ckpt_state trainer__ckpt_state(struct trainer *t)
{
    struct ckpt_state cs = {t->model, NULL, t->vocab, {0}, {0}, t->dense_adam, t->step, t->B, t->cfg, NULL};
    memcpy(cs.dense_opt, t->dense_opt, sizeof cs.dense_opt);
    memcpy(cs.dense_opt_n, t->dense_opt_n, sizeof cs.dense_opt_n);
    return cs;
}

/* This worker's files of the checkpoint of t->step, reported to the
 * coordinator (which commits the checkpoint once every member's are in). */
static int save_cluster_checkpoint(struct trainer *t, char *err, size_t errlen)
{
    char folder[MOE_PATH_MAX + 32], file[64];
    int rc = moe_manifest_make_folder(t->cfg->checkpoint_dir, t->step, folder, sizeof folder, err,
                                      errlen);
    if (rc)
        return rc;
    if (t->hooks) {
        rc = t->hooks->save(t->hooks->ctx, t, folder, file, sizeof file, err, errlen);
    } else {
        struct ckpt_state cs = trainer__ckpt_state(t);
        rc = checkpoint_save_worker(folder, &cs, t->rank, file, sizeof file, err, errlen);
    }
    if (!rc)
        rc = coord_client_checkpoint_done(t->coord, t->step, file, err, errlen);
    if (!rc)
        moe_debug("checkpoint of step %" PRId64 ": %s/%s", t->step, folder, file);
    return rc;
}

static int load_cluster_checkpoint(struct trainer *t, char *err, size_t errlen)
{
    int rc;
    if (t->hooks) {
        rc = t->hooks->load(t->hooks->ctx, t, t->ep.checkpoint, err, errlen);
    } else {
        struct ckpt_state cs = trainer__ckpt_state(t);
        rc = checkpoint_load_worker(t->ep.checkpoint, &cs, t->rank, err, errlen);
    }
    if (!rc)
        moe_info("loaded checkpoint %s (step %" PRId64 ")", t->ep.checkpoint, t->ep.step);
    return rc;
}

/* The expert backend of t->cl (the servers of this epoch). */
int trainer__make_remote(struct trainer *t, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    Moe__DType dt = MOE__DTYPE__DTYPE_F32;
    moe_wire_dtype_parse(c->wire_dtype, &dt, NULL, 0); /* checked by setup */
    t->remote_be = expert_remote_new(t->zctx, &t->net, &t->cl, t->rank, c->d_model, c->timeout_ms, dt,
                                     moe_options_message_limit(c, MOE_ROLE_WORKER), err, errlen);
    if (!t->remote_be)
        return MOE_ERR_IO;
    expert_remote_set_row0(t->remote_be, (int64_t)t->b0 * c->unroll);
    expert_remote_set_epoch(t->remote_be, t->ep.epoch);
    expert_remote_backend(&t->backend, t->remote_be);
    return 0;
}

/* Switches to t->ep: its placement (a new expert backend), and with
 * `reload` the state of its checkpoint (a rollback). */
static int apply_epoch(struct trainer *t, bool reload, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    expert_remote_destroy(&t->remote_be);
    moe_cluster_free(&t->cl);
    int rc = moe_cluster_parse_groups(&t->cl, t->ep.servers, c->workers, t->ep.placement,
                                      moe_options_experts_total(c), moe_options_group_size(c),
                                      err, errlen);
    if (rc)
        return rc;
    if ((rc = trainer__make_remote(t, err, errlen)))
        return rc;
    if (t->hooks && (rc = t->hooks->bind(t->hooks->ctx, t, err, errlen)))
        return rc;
    if (!t->hooks)
        model_set_backend(t->model, &t->backend);
    coord_client_set_epoch(t->coord, t->ep.epoch);
    if ((reload || !t->ar) && t->world > 1) {
        /* after a failure the ring is rebuilt: a worker may have restarted */
        moe_allreduce_destroy(&t->ar);
        t->ar = moe_allreduce_new(t->zctx, &t->net, t->rank, t->world, (const char *const *)t->cl.workers,
                                  (int)c->timeout_ms, err, errlen);
        if (!t->ar)
            return MOE_ERR_IO;
    }
    if (reload || t->ep.step != t->step) {
        if (!t->ep.checkpoint[0]) {
            moe_err_set(err, errlen, "epoch %u starts afresh, but this worker has trained (step %" PRId64
                     "); restart it", t->ep.epoch, t->step);
            return MOE_ERR_STATE;
        }
        if ((rc = load_cluster_checkpoint(t, err, errlen)))
            return rc;
        t->step = t->ep.step;
    }
    return 0;
}

/* Switches to t->ep (apply_epoch), then the start barrier: every worker
 * has loaded the epoch before any trains in it. An epoch that replaces it
 * meanwhile (a failure) is applied in turn (a rollback). */
int trainer__enter_epoch(struct trainer *t, bool reload, char *err, size_t errlen)
{
    int rc = apply_epoch(t, reload, err, errlen);
    while (rc == 0) {
        const uint32_t mine = t->ep.epoch;
        if ((rc = trainer__wait_epoch(t, MOE_FLAG_LOADED, NULL, err, errlen)))
            return rc;
        if (t->ep.epoch == mine)
            return 0;
        rc = apply_epoch(t, true, err, errlen);
    }
    return rc;
}

/* A step failed (a peer late or gone): wait for the coordinator's next
 * epoch, roll back to its checkpoint and go on. */
int trainer__recover(struct trainer *t, const char *why, char *err, size_t errlen)
{
    const double t0 = moe_now_sec();
    const int64_t at = t->step;
    moe_warn("step %" PRId64 " failed: %s; waiting for the cluster to recover", at + 1, why);
    int rc;
    for (;;) {
        if ((rc = trainer__wait_epoch(t, MOE_FLAG_TROUBLE, why, err, errlen)))
            return rc;
        rc = trainer__enter_epoch(t, true, err, errlen);
        if (rc != MOE_ERR_IO)
            break;
        /* a peer did not join the new ring in time: report it, try again */
        moe_warn("epoch %u: %s; asking for another", t->ep.epoch, err);
    }
    if (rc)
        return rc;
    t->recoveries++;
    t->step_flags = 0;
    moe_warn("recovered in %.2f s: epoch %u, rolled back from step %" PRId64 " to %" PRId64,
             moe_now_sec() - t0, t->ep.epoch, at, t->step);
    return 0;
}

/* After save_cluster_checkpoint failed with rc (err says why): the
 * cluster's recovery, which counts the failure against the rollback guard
 * (0 once recovered); rc itself without elasticity or when the cluster
 * stopped or failed. */
static int recover_from_checkpoint(struct trainer *t, int rc, char *err, size_t errlen)
{
    if (!t->elastic || rc == MOE_ERR_STOPPED || rc == MOE_ERR_FAILED)
        return rc;
    char why[1100];
    snprintf(why, sizeof why, "worker %d cannot write its checkpoint of step %" PRId64 ": %s",
             t->rank, t->step, err);
    return trainer__recover(t, why, err, errlen);
}

int trainer__join_cluster(struct trainer *t, char *err, size_t errlen)
{
    /* Only now, ready to train, wait for the epoch: the coordinator hands
     * it to every worker at once, so the ring forms at once. A peer that
     * does not join the ring in time is reported, and the next epoch tried,
     * as in trainer__recover(). */
    uint32_t flags = 0;
    char why[1100] = "";
    int rc;
    for (;;) {
        if ((rc = trainer__wait_epoch(t, flags, why, err, errlen)))
            return rc;
        rc = trainer__enter_epoch(t, t->ep.checkpoint[0] != 0, err, errlen);
        if (rc != MOE_ERR_IO)
            break;
        moe_warn("epoch %u: %s; asking for another", t->ep.epoch, err);
        snprintf(why, sizeof why, "worker %d: %s", t->rank, err);
        flags = MOE_FLAG_TROUBLE;
    }
    if (rc)
        return rc;
    moe_info("epoch %u from the coordinator: servers %s, step %" PRId64, t->ep.epoch,
             t->ep.servers, t->step);
    /* The epoch's first checkpoint; when it cannot be written (a full
     * disk) the coordinator hears of it as of any failed checkpoint, so
     * that its rollback guard stops the cluster with the cause instead of
     * waiting for this worker's files forever. */
    while ((t->ep.flags & MOE_FLAG_INITIAL_CHECKPOINT) && t->cfg->checkpoint_dir[0] &&
           (rc = save_cluster_checkpoint(t, err, errlen)))
        if ((rc = recover_from_checkpoint(t, rc, err, errlen)))
            return rc;
    return 0;
}

int trainer__cluster_after_step(struct trainer *t, bool *stopped, char *note, size_t notelen,
                                char *err, size_t errlen)
{
    int rc;
    if ((t->step_flags & MOE_FLAG_CHECKPOINT) &&
        (rc = save_cluster_checkpoint(t, err, errlen)))
        return recover_from_checkpoint(t, rc, err, errlen);
    if (t->step_flags & MOE_FLAG_STOP) {
        /* The cluster stops after this step's checkpoint: wait until it is
         * committed (the coordinator then says stopped); if it fails
         * instead, the cluster rolls back and this worker goes on. */
        rc = trainer__wait_epoch(t, 0, NULL, err, errlen);
        if (rc == MOE_ERR_STOPPED) {
            *stopped = true;
            snprintf(note, notelen, "%s", err);
            return 0;
        }
        if (rc || (rc = trainer__enter_epoch(t, true, err, errlen)))
            return rc;
        moe_warn("the checkpoint before the stop failed: epoch %u rolls back to step %" PRId64,
                 t->ep.epoch, t->step);
    } else if (t->step_flags & MOE_FLAG_RECONFIGURE) {
        /* a server joins or leaves: the new placement starts from the
         * checkpoint just written, which is this worker's state */
        const double tr = moe_now_sec();
        if ((rc = trainer__wait_epoch(t, 0, NULL, err, errlen)) ||
            (rc = trainer__enter_epoch(t, false, err, errlen)))
            return rc;
        moe_info("epoch %u: new placement after step %" PRId64 " (%.2f s)", t->ep.epoch, t->step,
                 moe_now_sec() - tr);
    }
    t->step_flags = 0;
    return 0;
}
