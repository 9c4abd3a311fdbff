/* Epochs, checkpoints and shard files of an expert server (moe-server):
 * building the shard of each epoch (experts kept in memory, read from the
 * epoch's checkpoint after verifying its file, or initialised), writing this
 * server's file of a checkpoint and reporting it, and the shard file
 * written on the way out. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "expert_server_internal.h"
#include "moe_checksum.h"
#include "moe_err.h"
#include "moe_kernels.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_safetensors.h"
#include "moe_tensor.h"
#include "moe_time.h"

/* Copies expert `id` (parameters, factored-Adam state) from the shard file
 * of a checkpoint into slot i of dst. */
static int load_expert(expert_server_t *s, moe_safetensors_t *st, expert_shard_t *dst, int i, char *err,
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

/* Copies group `id`'s secondary gate (parameters, factored-Adam state)
 * from the shard file of a checkpoint into slot gi of dst. */
static int load_group(expert_server_t *s, moe_safetensors_t *st, hmoe_groups_t *dst, int gi,
                      char *err, size_t errlen)
{
    const int32_t id = hmoe_groups_id(dst, gi);
    const size_t DB = (size_t)s->D * (size_t)s->B, S1 = hmoe_groups_state_count(s->D, s->B) / 2;
    float *p = hmoe_groups_params(dst, gi), *o = hmoe_groups_opt_state(dst, gi);
    for (int part = 0; part < 2; part++) {
        char name[96];
        const int64_t shape[2] = {s->D, s->B}, sh1[2] = {(int64_t)S1, 0};
        hmoe_groups_tensor_name(name, sizeof name, id, part, false);
        int rc = moe_safetensors_read_f32(st, name, 2, shape, p + part * DB, err, errlen);
        hmoe_groups_tensor_name(name, sizeof name, id, part, true);
        if (rc || (rc = moe_safetensors_read_f32(st, name, 1, sh1, o + part * S1, err, errlen)))
            return rc;
    }
    return 0;
}

/* A hierarchical MoE: group `id / B` (id its first expert) of the new
 * shard, as its experts: kept from the current groups, or read from f. */
static int take_group(expert_server_t *s, hmoe_groups_t *next, int32_t id, bool kept,
                      moe_safetensors_t *f, char *err, size_t errlen)
{
    const int gi = hmoe_groups_find(next, id / s->B);
    if (gi < 0 || id % s->B != 0)
        return 0;
    if (kept) {
        const int old = s->groups ? hmoe_groups_find(s->groups, id / s->B) : -1;
        if (old < 0) {
            moe_err_set(err, errlen, "group %d's experts are here without its gate", id / s->B);
            return MOE_ERR_STATE;
        }
        memcpy(hmoe_groups_params(next, gi), hmoe_groups_params(s->groups, old),
               sizeof(float) * hmoe_groups_param_count(s->D, s->B));
        memcpy(hmoe_groups_opt_state(next, gi), hmoe_groups_opt_state(s->groups, old),
               sizeof(float) * hmoe_groups_state_count(s->D, s->B));
        return 0;
    }
    return f ? load_group(s, f, next, gi, err, errlen) : 0;
}

/* The shard file of the epoch's checkpoint that holds expert `id`, opened
 * (and verified against its manifest, read first) into (*files)[f] unless
 * it already is. */
static int open_checkpoint_file(expert_server_t *s, const struct coord_epoch *ep,
                                struct moe_manifest *man, bool *have_man,
                                moe_safetensors_t ***files, int32_t id, char *err, size_t errlen)
{
    const struct moe_options *cfg = s->cfg;
    int rc;
    if (!*have_man) {
        if ((rc = moe_manifest_read(ep->checkpoint, man, err, errlen)))
            return rc;
        *have_man = true;
        if (man->n_experts != moe_options_experts_total(cfg) || man->step != ep->step) {
            moe_err_set(err, errlen, "%s: manifest of step %" PRId64 " with %d experts, "
                     "expected step %" PRId64 " with %d", ep->checkpoint, man->step,
                     man->n_experts, ep->step, moe_options_experts_total(cfg));
            return MOE_ERR_FORMAT;
        }
        if (!(*files = calloc((size_t)man->n_files, sizeof **files)))
            return MOE_ERR_NOMEM;
    }
    const int f = man->expert_file[id];
    if ((*files)[f])
        return 0;
    char path[MOE_PATH_MAX + 200];
    snprintf(path, sizeof path, "%s/%s", ep->checkpoint, man->files[f].name);
    if ((rc = moe_manifest_verify_file(ep->checkpoint, man, f, err, errlen)))
        return rc;
    if (!((*files)[f] = moe_safetensors_open(path, err, errlen)))
        return MOE_ERR_FORMAT;
    return moe_kernels_compare(moe_safetensors_meta((*files)[f], "blas_kernels"), path,
                               cfg->strict_determinism, err, errlen);
}

/* Builds the shard of the epoch: experts this server already holds at the
 * epoch's step stay as they are; the others are read from the epoch's
 * checkpoint (every file verified against the manifest's checksum first)
 * or, on a fresh start, initialised from the seed. */
int expert_server__load_epoch(expert_server_t *s, const struct coord_epoch *ep, char *err,
                              size_t errlen)
{
    const struct moe_options *cfg = s->cfg;
    struct moe_cluster cl;
    memset(&cl, 0, sizeof cl);
    int rc = moe_cluster_parse_groups(&cl, ep->servers, s->workers, ep->placement,
                                      moe_options_experts_total(cfg), moe_options_group_size(cfg), err,
                                      errlen);
    if (rc)
        return rc;
    if (ep->index < 0 || ep->index >= cl.n_servers) {
        moe_err_set(err, errlen, "epoch %u gives this server index %d of %d", ep->epoch, ep->index,
                 cl.n_servers);
        moe_cluster_free(&cl);
        return MOE_ERR_FORMAT;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)moe_options_experts_total(cfg));
    if (!ids) {
        moe_cluster_free(&cl);
        return MOE_ERR_NOMEM;
    }
    const int n = moe_cluster_experts_of(&cl, ep->index, ids);
    moe_cluster_free(&cl);
    struct moe_fadam_opts fo = {cfg->expert_beta2, cfg->expert_decay_pow, cfg->expert_eps, 1e-30,
                                cfg->expert_clip, cfg->expert_relative_step, 1e-3};
    /* The new shard is built beside the old one: it must fit on its own. */
    if (cfg->memory_check && (rc = expert_server__check_shard_memory(s, n, err, errlen))) {
        free(ids);
        return rc;
    }
    expert_shard_t *next = expert_shard_new_ex(s->D, s->H, n, ids, (uint64_t)cfg->seed, &fo, false);
    free(ids);
    if (!next) {
        moe_err_set(err, errlen, "cannot allocate %d experts", n);
        return MOE_ERR_NOMEM;
    }
    expert_shard_set_recompute(next, moe_options_recompute_mode(cfg) != MOE_RECOMPUTE_NONE);
    /* a hierarchical MoE's groups move with their experts: their gates */
    hmoe_groups_t *nextg = s->B ? hmoe_groups_of_shard(cfg, next) : NULL;
    if (s->B && !nextg) {
        expert_shard_destroy(&next);
        moe_err_set(err, errlen, "cannot allocate the gates of this server's groups");
        return MOE_ERR_NOMEM;
    }
    const double t0 = moe_now_sec();
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
            if (nextg)
                rc = take_group(s, nextg, id, true, NULL, err, errlen);
            kept++;
        } else if (ep->checkpoint[0]) {
            if ((rc = open_checkpoint_file(s, ep, &man, &have_man, &files, id, err, errlen)))
                break;
            moe_safetensors_t *f = files[man.expert_file[id]];
            rc = load_expert(s, f, next, i, err, errlen);
            if (!rc && nextg)
                rc = take_group(s, nextg, id, false, f, err, errlen);
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
        hmoe_groups_destroy(&nextg);
        return rc;
    }
    const double dt = moe_now_sec() - t0;
    expert_shard_destroy(&s->shard);
    s->shard = next;
    if (s->B) {
        hmoe_groups_destroy(&s->groups);
        s->groups = nextg;
    }
    s->step = ep->step;
    s->phase = PH_FORWARD;
    s->layer = 0;
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
void expert_server__report_trouble(expert_server_t *s, const char *why)
{
    char err[512];
    struct coord_epoch ep;
    moe_error("%s", why);
    if (coord_client_epoch_wait(s->coord, s->step, MOE_FLAG_TROUBLE, why, &ep, err, sizeof err) == 0)
        coord_epoch_free(&ep);
}

/* Writes this server's shard of the checkpoint of the current step and
 * reports it to the coordinator; a failure is reported as trouble. */
void expert_server__write_checkpoint(expert_server_t *s)
{
    char folder[MOE_PATH_MAX + 32], path[MOE_PATH_MAX + 96], file[64], err[512],
        why[1024];
    snprintf(file, sizeof file, "server-%u.safetensors", s->id);
    if (moe_manifest_make_folder(s->cfg->checkpoint_dir, s->step, folder, sizeof folder, err,
                                 sizeof err)) {
        snprintf(why, sizeof why, "server %u cannot write its checkpoint of step %" PRId64 ": %s",
                 s->id, s->step, err);
        expert_server__report_trouble(s, why);
        return;
    }
    snprintf(path, sizeof path, "%s/%s", folder, file);
    const double t0 = moe_now_sec();
    /* Fault injection for the tests: die by SIGKILL half-way through
     * writing the shard of this step (a crash during a checkpoint). */
    const char *fault = getenv("MOE_FAULT_KILL_IN_CHECKPOINT");
    if (fault && strtoll(fault, NULL, 10) == s->step) {
        char tmp[MOE_PATH_MAX + 128];
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
    if (expert_server_write_shard(s, path, err, sizeof err)) {
        snprintf(why, sizeof why, "server %u cannot write %s: %s", s->id, path, err);
        expert_server__report_trouble(s, why);
        return;
    }
    if (coord_client_checkpoint_done(s->coord, s->step, file, err, sizeof err)) {
        moe_error("checkpoint of step %" PRId64 ": %s", s->step, err);
        return;
    }
    moe_info("checkpoint of step %" PRId64 ": %s written in %.3f s", s->step, path, moe_now_sec() - t0);
}

int expert_server_write_shard(expert_server_t *s, const char *path, char *err, size_t errlen)
{
    expert_shard_flush(s->shard, s->step);
    const int n = expert_shard_count(s->shard), ng = s->groups ? hmoe_groups_count(s->groups) : 0;
    const size_t ntens = (size_t)n * EXPERT_PARTS * 2 + (size_t)ng * 4;
    struct moe_st_entry *e = calloc(ntens ? ntens : 1, sizeof *e);
    char(*names)[96] = calloc(ntens ? ntens : 1, sizeof *names);
    if (!e || !names) {
        free(e);
        free(names);
        moe_err_set(err, errlen, "out of memory writing the shard");
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
    /* a hierarchical MoE's secondary gates, with their groups' experts */
    const size_t DB = (size_t)s->D * (size_t)s->B;
    const size_t S1 = ng ? hmoe_groups_state_count(s->D, s->B) / 2 : 0;
    for (int i = 0; i < ng; i++) {
        const int32_t id = hmoe_groups_id(s->groups, i);
        for (int part = 0; part < 2; part++) {
            const float *p = hmoe_groups_params(s->groups, i) + part * DB;
            const float *st = hmoe_groups_opt_state(s->groups, i) + part * S1;
            hmoe_groups_tensor_name(names[k], 96, id, part, false);
            e[k] = (struct moe_st_entry){names[k], 2, {s->D, s->B}, p};
            sum += moe_checksum_tensor(names[k], p, DB * sizeof(float));
            k++;
            hmoe_groups_tensor_name(names[k], 96, id, part, true);
            e[k] = (struct moe_st_entry){names[k], 1, {(int64_t)S1}, st};
            sum += moe_checksum_tensor(names[k], st, S1 * sizeof(float));
            k++;
        }
    }
    char step_s[32], sum_s[32];
    snprintf(step_s, sizeof step_s, "%" PRId64, s->step);
    snprintf(sum_s, sizeof sum_s, "%016" PRIx64, sum);
    const char *meta[] = {"format", "moe-shard-1", "step", step_s, "checksum", sum_s,
                          "blas_kernels", moe_kernels_effective(), NULL};
    int rc = moe_safetensors_write(path, e, k, meta, err, errlen);
    free(e);
    free(names);
    return rc;
}
