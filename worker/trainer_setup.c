/* Everything a worker's run needs, prepared before the first step
 * (moe-worker process): the options checked, the cluster (the coordinator
 * registration or the static server list), the memory checked, the data,
 * the experts this process holds and their backend, the model and its
 * optimizer state, a resumed checkpoint, and the first epoch. A step never
 * allocates. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "expert_local.h"
#include "moe_err.h"
#include "moe_file.h"
#include "moe_log.h"
#include "moe_mem.h"
#include "moe_optim.h"
#include "moe_wire.h"
#include "trainer_internal.h"

uint64_t trainer__bytes_of(double b) { return b >= 1.8e19 ? UINT64_MAX : (uint64_t)b; }

/* The experts this process holds: all of them in-process; with expert
 * servers and no coordinator, a mirror that checkpoints fetch into; with a
 * coordinator none (servers write their own shards). */
static int experts_held(const struct moe_options *c)
{
    return strcmp(c->experts, "remote") == 0 && c->coordinator[0] ? 0 : c->n_experts;
}

/* What the run writes at its end (the final model, the report), checked
 * before training rather than after it (checkpoint_dir: moe_options_start). */
static int check_outputs(const struct moe_options *c, char *err, size_t errlen)
{
    int rc = 0;
    if (!c->checkpoint_dir[0] && c->final_model[0] && strcmp(c->final_model, "none") != 0)
        rc = moe_file_check_dir_writable(c->final_model, "the final model", err, errlen);
    if (!rc && c->report[0])
        rc = moe_file_check_file_writable(c->report, "the report", err, errlen);
    return rc;
}

/* Those experts against the machine's memory, before anything is read or
 * allocated (they dominate large models). */
static int check_expert_memory(const struct moe_options *c, char *err, size_t errlen)
{
    const int held = experts_held(c);
    if (!c->memory_check || held == 0)
        return 0;
    /* (a hierarchical model's rows go to k_primary x k experts, and the
     * worker holds every group's secondary gate) */
    const bool h = moe_options_hierarchical(c);
    const double bytes = expert_shard_bytes(c->d_model, c->d_hidden, held, true) +
                         4.0 * c->batch * c->unroll * moe_options_slots_per_row(c) *
                             (c->d_model + 2.0 * c->d_hidden) +
                         (h ? hmoe_groups_bytes(c->d_model, c->experts_per_group, c->groups) : 0);
    char what[200];
    snprintf(what, sizeof what, "%d experts of %d -> %d -> %d (with their optimizer state%s)", held,
             c->d_model, c->d_hidden, c->d_model, h ? " and the secondary gates" : "");
    return moe_mem_check(trainer__bytes_of(bytes), what, err, errlen);
}

/* The keys (every tcp:// endpoint needs them, or --insecure), the ZeroMQ
 * context and its guard (the ZAP handler of the ring socket). */
static int setup_security(struct trainer *t, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    int rc = moe_sec_init(&t->sec, MOE_SEC_WORKER, c->keys, c->insecure, err, errlen);
    if (!rc)
        rc = moe_sec_check(&t->sec, c->coordinator, "the coordinator", err, errlen);
    if (!rc)
        rc = moe_sec_check_list(&t->sec, c->servers, "an expert server", err, errlen);
    if (!rc)
        rc = moe_sec_check_list(&t->sec, c->workers, "the workers' ring", err, errlen);
    if (rc)
        return rc;
    if (c->insecure)
        moe_warn("--insecure: this worker talks plain TCP; anyone who reaches its ports can read "
                 "or disturb the training");
    if (!(t->zctx = zmq_ctx_new()))
        return moe_err_fail(MOE_ERR_IO, err, errlen, "cannot create a ZeroMQ context");
    if (t->sec.keys && !(t->guard = moe_guard_new(t->zctx, &t->sec, err, errlen)))
        return MOE_ERR_IO;
    t->net = (struct moe_net){&t->sec, t->guard, c->max_connections};
    return 0;
}

/* Remote experts: the coordinator (registration with this worker's
 * configuration; the servers come with the epoch) or the static list; this
 * worker's streams of the global batch. */
int trainer__setup_cluster(struct trainer *t, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    t->remote = strcmp(c->experts, "remote") == 0;
    t->rank = c->rank;
    t->world = 1;
    if (t->remote) {
        int rc = setup_security(t, err, errlen);
        if (rc)
            return rc;
        const char *servers = c->servers, *placement = c->placement;
        if (c->coordinator[0]) {
            t->coord = coord_client_new(t->zctx, &t->net, c->coordinator, 1, t->rank, NULL,
                                        moe_options_experts_total(c), c->timeout_ms, err,
                                        errlen);
            if (!t->coord)
                return MOE_ERR_IO;
            char contract[8192];
            if (moe_options_contract(c, MOE_ROLE_WORKER, contract, sizeof contract) < 0)
                return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                                    "the training configuration is too long to send");
            rc = coord_client_register(t->coord, "", contract, c->coordinator_wait_s, err,
                                       errlen);
            if (rc)
                return rc;
            servers = "inproc://no-server-before-the-epoch";
            placement = "";
            t->elastic = c->checkpoint_dir[0] != 0;
        }
        rc = moe_cluster_parse_groups(&t->cl, servers, c->workers, placement,
                                      moe_options_experts_total(c), moe_options_group_size(c),
                                      err, errlen);
        if (rc)
            return rc;
        t->world = t->cl.n_workers;
    }
    if (t->rank >= t->world)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--rank %d: only %d worker(s) are listed in --workers", t->rank,
                            t->world);
    if (c->batch % t->world != 0)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--batch %d cannot be split evenly over %d workers", c->batch,
                            t->world);
    t->B = c->batch / t->world;
    t->b0 = t->rank * t->B;
    return 0;
}

/* log p(word) of the add-one smoothed unigram model of the training data. */
static int unigram_init(struct trainer *t)
{
    const int V = vocab_size(t->vocab);
    t->uni_logp = calloc((size_t)V, sizeof(double));
    if (!t->uni_logp)
        return MOE_ERR_NOMEM;
    for (size_t i = 0; i < t->train.n; i++)
        t->uni_logp[t->train.ids[i]] += 1;
    const double total = (double)t->train.n + V;
    for (int v = 0; v < V; v++)
        t->uni_logp[v] = log((t->uni_logp[v] + 1) / total);
    return 0;
}

/* A corpus and its batcher; errors name the file. */
static int load_corpus(struct corpus *co, struct batcher *bt, const char *path, const vocab_t *v,
                       int B, int T, char *err, size_t errlen)
{
    int rc = corpus_load(co, path, v, err, errlen);
    if (rc)
        return rc;
    if ((rc = batcher_init(bt, co, B, T, err, errlen))) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s: %s", path, err);
        moe_err_set(err, errlen, "%s", msg);
    }
    return rc;
}

/* The vocabulary (the resumed model's, taken from its source, else built
 * from the training corpus), both corpora, the unigram baseline. */
static int setup_data(struct trainer *t, struct model_source *ms, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    if (ms) {
        t->vocab = ms->vocab;
        ms->vocab = NULL;
    } else {
        t->vocab = vocab_build(c->train, c->vocab_max, err, errlen);
    }
    if (!t->vocab)
        return MOE_ERR_FORMAT;
    int rc = load_corpus(&t->train, &t->tb, c->train, t->vocab, c->batch, c->unroll, err, errlen);
    if (!rc && c->valid[0])
        rc = load_corpus(&t->valid, &t->vb, c->valid, t->vocab, c->eval_batch, c->unroll, err,
                         errlen);
    if (!rc && (rc = unigram_init(t)))
        moe_err_set(err, errlen, "out of memory for the unigram baseline");
    if (!rc)
        moe_info("vocabulary %d words; train %zu tokens (%zu <unk>)%s", vocab_size(t->vocab),
                 t->train.n, t->train.n_unk, c->valid[0] ? "" : "; no validation corpus");
    return rc;
}

/* The experts held here (experts_held) and the backend the model calls. */
static int setup_experts(struct trainer *t, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    const int held = experts_held(c);
    t->shard = model_experts_from_options(c, held, true);
    if (!t->shard)
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "cannot allocate %d experts of %dx%d",
                            c->n_experts, c->d_model, c->d_hidden);
    expert_shard_set_recompute(t->shard, moe_options_recompute_mode(c) != MOE_RECOMPUTE_NONE);
    if (moe_options_hierarchical(c) && !(t->groups = hmoe_groups_from_options(c, c->groups, NULL)))
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "cannot allocate the gates of %d groups",
                            c->groups);
    int rc;
    if (!t->remote && t->groups) {
        t->local = (struct expert_local){.shard = t->shard, .groups = t->groups};
        expert_local_group_backend(&t->backend, &t->local);
    } else if (!t->remote) {
        expert_local_backend(&t->backend, t->shard);
    } else if (t->coord) {
        if (!(t->gstats = moe_alloc_floats(3 * (size_t)c->n_experts +
                                           (moe_options_hierarchical(c) ? 2 * (size_t)c->groups
                                                                        : 0))))
            return MOE_ERR_NOMEM;
    } else {
        if ((rc = trainer__make_remote(t, err, errlen)))
            return rc;
        if (t->world > 1 &&
            !(t->ar = moe_allreduce_new(t->zctx, &t->net, t->rank, t->world,
                                        (const char *const *)t->cl.workers, (int)c->timeout_ms,
                                        err, errlen)))
            return MOE_ERR_IO;
    }
    /* Importance | Load | rows | a hierarchical MoE's group factors | loss */
    t->stats = moe_alloc_floats(3 * (size_t)c->n_experts +
                                (moe_options_hierarchical(c) ? 2 * (size_t)c->groups : 0) + 1);
    t->rows_routed = calloc((size_t)c->n_experts, sizeof(double));
    return t->stats && t->rows_routed ? 0 : MOE_ERR_NOMEM;
}

/* The model of the configuration, its optimizer state and the batch
 * buffers, after a memory check of all of it. */
static int setup_model(struct trainer *t, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    t->dense_adam = strcmp(c->dense_optimizer, "adam") == 0;
    struct model_config mc =
        model_config_from_options(c, vocab_size(t->vocab),
                                  t->B > c->eval_batch ? t->B : c->eval_batch, c->unroll);
    mc.recompute_lstm = moe_options_recompute_mode(c) == MOE_RECOMPUTE_ALL;
    int rc;
    if (c->memory_check) {
        /* parameters, gradients, activations, Adam's two moments, and the
         * all-reduce buffer of several workers */
        const double dense = model_dense_params(&mc);
        const double need = model_bytes(&mc) + 4.0 * dense * (t->dense_adam ? 2 : 1) +
                            (t->world > 1 ? 4.0 * dense : 0);
        char what[200];
        snprintf(what, sizeof what, "the dense model (V=%d, D=%d, %.0f parameters, batch %d x %d)",
                 mc.V, mc.D, dense, mc.B_max, mc.T_max);
        if ((rc = moe_mem_check(trainer__bytes_of(need), what, err, errlen)))
            return rc;
    }
    if (!(t->model = model_new(&mc, &t->backend)))
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "cannot allocate the model (V=%d D=%d)",
                            mc.V, mc.D);
    for (int p = 0; p < model_n_params(t->model); p++) {
        const moe_tensor *w = model_param_at(t->model, p).w;
        t->flat_n += w->numel;
        t->dense_opt_n[p] = t->dense_adam
                                ? moe_adam_state_size(w->numel)
                                : moe_fadam_state_size((size_t)w->shape[0],
                                                       w->ndim == 2 ? (size_t)w->shape[1] : 0);
        if (!(t->dense_opt[p] = moe_alloc_floats(t->dense_opt_n[p])))
            return MOE_ERR_NOMEM;
    }
    if (t->world > 1 && !(t->flat = moe_alloc_floats(t->flat_n)))
        return MOE_ERR_NOMEM;
    const size_t nb = (size_t)mc.B_max * (size_t)c->unroll;
    t->tok = malloc(sizeof(int32_t) * nb);
    t->tgt = malloc(sizeof(int32_t) * nb);
    return t->tok && t->tgt ? 0 : MOE_ERR_NOMEM;
}

int trainer__setup(struct trainer *t, char *err, size_t errlen)
{
    struct model_source *ms = NULL;
    int rc = moe_options_check(t->cfg, MOE_FOR_WORKER, err, errlen);
    expert_shard_set_group_size(moe_options_hierarchical(t->cfg) ? t->cfg->experts_per_group : 0);
    if (!rc)
        rc = check_outputs(t->cfg, err, errlen);
    if (!rc)
        rc = check_expert_memory(t->cfg, err, errlen);
    if (!rc)
        rc = trainer__setup_cluster(t, err, errlen);
    if (!rc && t->cfg->resume[0]) {
        if (!(ms = malloc(sizeof *ms)))
            rc = MOE_ERR_NOMEM;
        else
            rc = model_source_open(ms, t->cfg->resume, err, errlen);
    }
    if (!rc)
        rc = setup_data(t, ms, err, errlen);
    if (!rc)
        rc = setup_experts(t, err, errlen);
    if (!rc)
        rc = setup_model(t, err, errlen);
    if (!rc && ms) {
        struct ckpt_state cs = trainer__ckpt_state(t);
        cs.shard = t->shard;
        cs.groups = t->groups;
        cs.step = 0;
        if (!(rc = checkpoint_load_source(ms, &cs, err, errlen))) {
            t->step = cs.step;
            moe_info("resumed from %s at step %" PRId64, ms->path, t->step);
        }
    }
    if (ms) {
        model_source_close(ms);
        free(ms);
    }
    if (!rc && t->coord)
        rc = trainer__join_cluster(t, err, errlen);
    return rc;
}

void trainer__teardown_cluster(struct trainer *t)
{
    moe_allreduce_destroy(&t->ar);
    coord_client_destroy(&t->coord);
    coord_epoch_free(&t->ep);
    expert_remote_destroy(&t->remote_be);
    moe_guard_destroy(&t->guard); /* after every socket it guards */
    if (t->zctx)
        zmq_ctx_term(t->zctx);
    t->zctx = NULL;
    moe_cluster_free(&t->cl);
}

void trainer__teardown(struct trainer *t)
{
    model_destroy(&t->model);
    moe_free_floats(&t->gstats);
    free(t->rows_routed);
    trainer__teardown_cluster(t);
    moe_free_floats(&t->flat);
    moe_free_floats(&t->stats);
    expert_shard_destroy(&t->shard);
    hmoe_groups_destroy(&t->groups);
    for (int p = 0; p < MODEL_MAX_PARAMS; p++)
        moe_free_floats(&t->dense_opt[p]);
    free(t->tok);
    free(t->tgt);
    corpus_free(&t->train);
    corpus_free(&t->valid);
    free(t->uni_logp);
    vocab_destroy(&t->vocab);
}
