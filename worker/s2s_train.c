/* Training loop of the translation model (see s2s_train.h). */
#include "s2s_train.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "model.h"
#include "moe_blas.h"
#include "moe_err.h"
#include "moe_file.h"
#include "moe_kernels.h"
#include "moe_log.h"
#include "moe_mem.h"
#include "moe_optim.h"
#include "moe_time.h"
#include "moe_wire.h"
#include "parallel.h"
#include "s2s_checkpoint.h"
#include "trainer_internal.h"

struct s2s_run {
    const struct moe_options *c;
    struct s2s_model x;
    struct pcorpus train, valid;
    struct pbatches tb, vb;
    struct pbatch pb;
    float **opt;       /* Adam state per dense parameter */
    int n_opt;
    /* With expert servers (--experts remote) the language model's cluster
     * logic runs this model too (trainer_cluster.c, through hooks): t holds
     * the servers, the coordinator and the epoch; t.step = steps done. */
    struct trainer t;
    struct trainer_hooks hooks;
    struct moe_backend rbe[S2S_N_MOE]; /* each MoE layer's remote backend */
    struct expert_offset roff;         /* the decoder's ids E..2E-1 over layer 1's */
    float *stats, *gstats; /* Importance | Load | rows of the 2E experts (| loss, the ring's),
                            * local and global */
    float *flat;           /* several workers: the dense gradients, for the ring */
    size_t flat_n;
    double last_tps;
    /* this run, for the report (this worker's share, a rollback's replayed
     * steps included) */
    int64_t start_step, src_tokens, tgt_tokens;
    double *rows_routed;   /* (2E) rows sent to each expert, the encoder's first */
    double train_secs, last_ppl;
};

/* ------------------------------------------------------------------------ */
/* Setup */

static int load_data(struct s2s_run *r, vocab_t **vs, vocab_t **vt, char *err, size_t errlen)
{
    const struct moe_options *c = r->c;
    if (c->resume[0]) { /* the resumed model's vocabularies */
        if (s2s_resume_vocabs(c->resume, vs, vt, err, errlen))
            return MOE_ERR_FORMAT;
    } else if (!(*vs = vocab_build(c->src_train, c->src_vocab_max, err, errlen)) ||
               !(*vt = vocab_build(c->tgt_train, c->tgt_vocab_max, err, errlen))) {
        return MOE_ERR_FORMAT;
    }
    int rc = pcorpus_load(&r->train, c->src_train, c->tgt_train, *vs, *vt, c->max_len, err,
                          errlen);
    if (!rc && c->src_valid[0])
        rc = pcorpus_load(&r->valid, c->src_valid, c->tgt_valid, *vs, *vt, c->max_len, err,
                          errlen);
    if (!rc && (pbatches_init(&r->tb, &r->train, c->batch) ||
                (r->valid.n && pbatches_init(&r->vb, &r->valid, c->batch)) ||
                pbatch_init(&r->pb, c->batch, c->max_len)))
        rc = moe_err_fail(MOE_ERR_NOMEM, err, errlen, "out of memory for the batches");
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Expert servers: both MoE layers' experts, with global ids (encoder
 * 0..E-1 as MoE layer 0, decoder E..2E-1 as layer 1), on the servers of
 * t's epoch; the hooks of trainer_cluster.c. */

static int hook_bind(void *ctx, struct trainer *t, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct s2s_run *r = ctx;
    expert_remote_backend_layer(&r->rbe[S2S_ENCODER], t->remote_be, S2S_ENCODER);
    expert_remote_backend_layer(&r->roff.inner, t->remote_be, S2S_DECODER);
    for (int w = 0; w < S2S_N_MOE; w++)
        s2s_set_backend(r->x.m, w, &r->rbe[w]);
    return 0;
}

static int hook_save(void *ctx, struct trainer *t, const char *folder, char *file, size_t cap,
                     char *err, size_t errlen)
{
    struct s2s_run *r = ctx;
    char path[MOE_PATH_MAX + 96];
    snprintf(file, cap, "worker-%d.safetensors", t->rank);
    snprintf(path, sizeof path, "%s/%s", folder, file);
    return s2s_state_save(&r->x, t->rank ? NULL : r->opt, path, t->step, err, errlen);
}

static int hook_load(void *ctx, struct trainer *t, const char *folder, char *err, size_t errlen)
{
    struct s2s_run *r = ctx;
    char path[MOE_PATH_MAX + 96];
    snprintf(path, sizeof path, "%s/worker-0.safetensors", folder);
    int64_t step;
    int rc = s2s_state_load(&r->x, r->opt, path, &step, err, errlen);
    if (!rc && step != t->ep.step)
        rc = moe_err_fail(MOE_ERR_STATE, err, errlen, "%s holds step %" PRId64 ", expected %" PRId64,
                          path, step, t->ep.step);
    return rc;
}

/* The cluster (trainer__setup_cluster) and, with remote experts, the
 * backends: at once from the static server list, else from the
 * coordinator's first epoch (which may roll this worker back to its
 * checkpoint). */
static int setup_remote(struct s2s_run *r, char *err, size_t errlen)
{
    struct trainer *t = &r->t;
    int rc = trainer__setup_cluster(t, err, errlen);
    if (rc || !t->remote)
        return rc;
    const size_t n = 3 * (size_t)moe_options_experts_total(r->c) + 1;
    struct moe_backend none = {0};
    for (int p = 0; p < r->n_opt; p++)
        r->flat_n += s2s_param_at(r->x.m, p).w->numel;
    if (!(r->stats = moe_alloc_floats(n)) || !(r->gstats = moe_alloc_floats(n)) ||
        (t->world > 1 && !(r->flat = moe_alloc_floats(r->flat_n))) ||
        expert_offset_init(&r->roff, &r->rbe[S2S_DECODER], &none, r->c->n_experts,
                           r->c->n_experts))
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "out of memory for the statistics");
    /* a batch of fewer pairs than workers (the last of the corpus) would
     * leave a worker without any */
    const int last = r->train.n % r->c->batch;
    if (last && last < t->world)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "the last batch of %s holds %d pair(s), fewer than the %d workers: "
                            "choose a --batch that leaves none or at least %d",
                            r->c->src_train, last, t->world, t->world);
    r->hooks = (struct trainer_hooks){r, hook_bind, hook_save, hook_load};
    t->hooks = &r->hooks;
    if (t->coord)
        return trainer__join_cluster(t, err, errlen);
    if ((rc = trainer__make_remote(t, err, errlen)))
        return rc;
    if (t->world > 1 &&
        !(t->ar = moe_allreduce_new(t->zctx, &t->net, t->rank, t->world,
                                    (const char *const *)t->cl.workers, (int)r->c->timeout_ms, err,
                                    errlen)))
        return MOE_ERR_IO;
    return hook_bind(r, t, err, errlen);
}

static int setup(struct s2s_run *r, char *err, size_t errlen)
{
    vocab_t *vs = NULL, *vt = NULL;
    int rc = r->c->report[0]
                 ? moe_file_check_file_writable(r->c->report, "the report", err, errlen)
                 : 0;
    if (!rc && !(r->rows_routed = calloc((size_t)moe_options_experts_total(r->c),
                                         sizeof(double))))
        rc = moe_err_fail(MOE_ERR_NOMEM, err, errlen, "out of memory");
    if (!rc)
        rc = load_data(r, &vs, &vt, err, errlen);
    if (!rc) {
        moe_info("translation: %d training pairs (%" PRId64 " + %" PRId64 " tokens), %d valid; "
                 "vocabularies %d source, %d target words",
                 r->train.n, r->train.src_tokens, r->train.tgt_tokens, r->valid.n,
                 vocab_size(vs), vocab_size(vt));
        rc = s2s_model_init(&r->x, r->c, &vs, &vt, r->c->batch, r->c->max_len + 1,
                            r->c->max_len + 1, true, err, errlen);
    }
    vocab_destroy(&vs);
    vocab_destroy(&vt);
    if (rc)
        return rc;
    r->n_opt = s2s_n_params(r->x.m);
    r->opt = calloc((size_t)r->n_opt, sizeof(float *));
    for (int p = 0; r->opt && p < r->n_opt; p++)
        if (!(r->opt[p] = moe_alloc_floats(moe_adam_state_size(s2s_param_at(r->x.m, p).w->numel))))
            rc = MOE_ERR_NOMEM;
    if (!r->opt || rc)
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "out of memory for the optimizer state");
    if (r->c->resume[0]) {
        if ((rc = s2s_resume_load(&r->x, r->opt, r->c->resume, &r->t.step, err, errlen)))
            return rc;
        moe_info("resumed from %s at step %" PRId64, r->c->resume, r->t.step);
    }
    r->start_step = r->t.step;
    return setup_remote(r, err, errlen);
}

static void teardown(struct s2s_run *r)
{
    trainer__teardown_cluster(&r->t);
    expert_offset_free(&r->roff);
    moe_free_floats(&r->stats);
    moe_free_floats(&r->gstats);
    moe_free_floats(&r->flat);
    free(r->rows_routed);
    for (int p = 0; r->opt && p < r->n_opt; p++)
        moe_free_floats(&r->opt[p]);
    free(r->opt);
    s2s_model_free(&r->x);
    pbatch_free(&r->pb);
    pbatches_free(&r->tb);
    pbatches_free(&r->vb);
    pcorpus_free(&r->train);
    pcorpus_free(&r->valid);
}

/* ------------------------------------------------------------------------ */
/* Steps */

/* Worker `rank` of `world` trains pairs [rank n / world, (rank + 1) n /
 * world) of a batch of n pairs: the rows, padding and random numbers of
 * those pairs in one process (row0, pk0), the loss a mean over the whole
 * batch's target tokens. */
static struct s2s_batch batch_of(const struct pbatch *p, int rank, int world)
{
    const int lo = (int)((int64_t)rank * p->B / world);
    const int n = (int)((int64_t)(rank + 1) * p->B / world) - lo;
    int64_t pk_src = 0, pk_tgt = 0;
    for (int b = 0; b < lo; b++) {
        pk_src += p->src_len[b];
        pk_tgt += p->tgt_len[b];
    }
    const size_t S = (size_t)p->S, T = (size_t)p->T;
    return (struct s2s_batch){.B = n, .S = p->S, .T = p->T, .src = p->src + (size_t)lo * S,
                              .tgt_in = p->tgt_in + (size_t)lo * T,
                              .tgt_out = p->tgt_out + (size_t)lo * T,
                              .src_len = p->src_len + lo, .tgt_len = p->tgt_len + lo,
                              .row0_src = (int64_t)lo * p->S, .row0_tgt = (int64_t)lo * p->T,
                              .pk0_src = pk_src, .pk0_tgt = pk_tgt, .n_global = p->tokens};
}

/* Several workers sum the dense gradients (in rank order, the ring's). */
static int allreduce_grads(struct s2s_run *r, char *err, size_t errlen)
{
    struct trainer *t = &r->t;
    if (t->world == 1)
        return 0;
    for (int pass = 0; pass < 2; pass++) { /* 0: gather, 1: scatter */
        size_t off = 0;
        for (int p = 0; p < r->n_opt; p++) {
            moe_tensor *g = s2s_param_at(r->x.m, p).g;
            float *a = r->flat + off, *b = g->data;
            memcpy(pass ? b : a, pass ? a : b, sizeof(float) * g->numel);
            off += g->numel;
        }
        const uint64_t tag = ((uint64_t)t->ep.epoch << MOE_ALLREDUCE_EPOCH_SHIFT) |
                             ((uint64_t)t->step * 2 + 1);
        int rc = pass ? 0 : moe_allreduce_sum(t->ar, r->flat, r->flat_n, tag, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

/* The step's global statistics: both layers' Importance, Load and rows
 * routed in one row (each vector over the 2E experts, the encoder's
 * first), summed over the workers by the coordinator, which also attaches
 * its orders to the step (t.step_flags), or without one by the workers'
 * ring (with the loss: *xent becomes the whole batch's); imp and load
 * then point to the global vectors. mine: this worker's mean loss over its
 * target tokens, what the coordinator shows and *xent becomes with it. */
static int global_stats(struct s2s_run *r, double *xent, double mine,
                        const float *imp[S2S_N_MOE], const float *load[S2S_N_MOE], char *err,
                        size_t errlen)
{
    struct trainer *t = &r->t;
    if (!t->coord && t->world == 1)
        return 0;
    const size_t E = (size_t)r->c->n_experts, N = S2S_N_MOE * E;
    for (int w = 0; w < S2S_N_MOE; w++) {
        memcpy(r->stats + w * E, imp[w], sizeof(float) * E);
        memcpy(r->stats + N + w * E, load[w], sizeof(float) * E);
        const int *cnt = s2s_counts(r->x.m, w);
        for (size_t e = 0; e < E; e++)
            r->stats[2 * N + w * E + e] = (float)cnt[e];
    }
    const float *g = r->stats;
    int rc;
    if (t->coord) {
        const uint32_t ask = t->signals && *t->signals ? MOE_FLAG_STOP : 0;
        rc = coord_client_stats_row(t->coord, t->step, r->stats, 3 * N, mine, r->last_tps,
                                    (uint64_t)r->pb.tokens, ask, r->gstats, &t->step_flags, err,
                                    errlen);
        *xent = mine;
        if (!rc && ask && !t->stop_asked) {
            t->stop_asked = true;
            moe_info("asked the coordinator to stop the cluster after a checkpoint");
        }
        g = r->gstats;
    } else {
        r->stats[3 * N] = (float)*xent;
        rc = moe_allreduce_sum(t->ar, r->stats, 3 * N + 1,
                               ((uint64_t)t->ep.epoch << MOE_ALLREDUCE_EPOCH_SHIFT) |
                                   ((uint64_t)t->step * 2),
                               err, errlen);
        *xent = r->stats[3 * N];
    }
    for (int w = 0; w < S2S_N_MOE; w++) {
        imp[w] = g + w * E;
        load[w] = g + N + w * E;
    }
    return rc;
}

/* One training step; *xent (mean over the batch's target tokens) and
 * *bal. */
static int train_step(struct s2s_run *r, double *xent, double *bal, char *err, size_t errlen)
{
    const struct moe_options *c = r->c;
    s2s_t *m = r->x.m;
    const int64_t s = r->t.step;
    pbatches_fill_step(&r->tb, &r->train, s, (uint64_t)c->seed, &r->pb);
    const struct s2s_batch b = batch_of(&r->pb, r->t.rank, r->t.world);
    double sum;
    int rc = s2s_forward(m, &b, s, true, &sum, err, errlen);
    if (rc)
        return rc;
    *xent = sum / (double)b.n_global;
    int64_t mine = 0; /* target tokens of this worker's pairs */
    for (int i = 0; i < b.B; i++) {
        mine += b.tgt_len[i];
        r->src_tokens += b.src_len[i];
    }
    r->tgt_tokens += mine;
    for (int w = 0; w < S2S_N_MOE; w++)
        for (int e = 0; e < c->n_experts; e++)
            r->rows_routed[w * c->n_experts + e] += s2s_counts(m, w)[e];
    const float *imp[S2S_N_MOE] = {s2s_importance(m, 0), s2s_importance(m, 1)};
    const float *load[S2S_N_MOE] = {s2s_load(m, 0), s2s_load(m, 1)};
    if ((rc = global_stats(r, xent, sum / (double)(mine ? mine : 1), imp, load, err, errlen)))
        return rc;
    if (r->t.remote_be)
        expert_remote_set_backward_flags(r->t.remote_be, r->t.step_flags & MOE_FLAG_CHECKPOINT);
    if ((rc = s2s_backward(m, imp, load, bal, err, errlen)) ||
        (rc = allreduce_grads(r, err, errlen)))
        return rc;
    const int64_t t1 = s + 1;
    const double lr = moe_lr_at(&(struct moe_lr_schedule){c->lr, c->warmup}, t1);
    const struct moe_adam_opts ao = {c->beta1, c->beta2, c->adam_eps};
    for (int p = 0; p < r->n_opt; p++) {
        const struct layer_param q = s2s_param_at(m, p);
        moe_adam_update(q.w->data, q.g->data, r->opt[p], q.w->numel, t1, lr, &ao);
    }
    if (!r->t.remote) /* servers update their experts with the step's last backward */
        for (int w = 0; w < S2S_N_MOE; w++)
            expert_shard_apply(r->x.shard[w], t1, lr);
    r->t.step = t1;
    return 0;
}

/* Perplexity of the validation pairs (every pair, length order). */
static int validate(struct s2s_run *r, double *loss, char *err, size_t errlen)
{
    double sum = 0;
    int64_t tokens = 0;
    for (int i = 0; i < r->vb.n_batches; i++) {
        pbatches_fill(&r->vb, &r->valid, i, &r->pb);
        const struct s2s_batch b = batch_of(&r->pb, 0, 1);
        double s;
        int rc = s2s_forward(r->x.m, &b, r->t.step, false, &s, err, errlen);
        if (rc)
            return rc;
        sum += s;
        tokens += b.n_global;
    }
    *loss = sum / (double)(tokens ? tokens : 1);
    return 0;
}

/* With expert servers: every expert of both layers, with its optimizer
 * state of this step, fetched into all[] and put in the model's place
 * (the caller puts its own shards back and destroys all[]). 1 with a
 * warning when they do not fit in memory, 0, or a negative code. */
static int fetch_experts(struct s2s_run *r, expert_shard_t *all[S2S_N_MOE], char *err,
                         size_t errlen)
{
    const struct moe_options *c = r->c;
    const int E = c->n_experts;
    char why[512];
    if (c->memory_check &&
        moe_mem_check(trainer__bytes_of(2 * expert_shard_bytes(c->d_model, c->d_hidden, E, false)),
                      "every expert, to write the model", why, sizeof why)) {
        moe_warn("the model of step %" PRId64 " is not written: %s (the cluster's checkpoints "
                 "hold it)", r->t.step, why);
        return 1;
    }
    int rc = 0;
    for (int w = 0; w < S2S_N_MOE && !rc; w++) {
        if (!(all[w] = model_experts_range(c, w * E, E, false)))
            return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "out of memory for the experts");
        rc = expert_remote_fetch(r->t.remote_be, all[w], r->t.step, err, errlen);
        for (int e = 0; !rc && e < E; e++)
            *expert_shard_opt_step(all[w], e) = r->t.step;
        r->x.shard[w] = all[w];
    }
    return rc;
}

/* The model of this step: checkpoint_dir/step-N/model.safetensors, or
 * final_model/model.safetensors at the end ("none": not written). */
static int save(struct s2s_run *r, bool final, char *err, size_t errlen)
{
    const struct moe_options *c = r->c;
    if (r->t.rank != 0) /* worker 0 writes the model */
        return 0;
    char dir[MOE_PATH_MAX + 32], path[MOE_PATH_MAX + 64];
    if (c->checkpoint_dir[0]) {
        if (mkdir(c->checkpoint_dir, 0755) != 0 && errno != EEXIST)
            return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot create: %s",
                                c->checkpoint_dir, strerror(errno));
        snprintf(dir, sizeof dir, "%s/step-%08" PRId64, c->checkpoint_dir, r->t.step);
    } else if (!final || !strcmp(c->final_model, "none")) {
        return 0;
    } else {
        snprintf(dir, sizeof dir, "%s", c->final_model);
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot create: %s", dir,
                            strerror(errno));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    expert_shard_t *held[S2S_N_MOE] = {r->x.shard[0], r->x.shard[1]}, *all[S2S_N_MOE] = {0};
    int rc = r->t.remote ? fetch_experts(r, all, err, errlen) : 0;
    if (rc == 1) /* no memory for them: said so */
        return 0;
    if (!rc)
        rc = s2s_model_save(&r->x, path, r->t.step, err, errlen);
    if (!rc) /* what --resume needs beside the model */
        rc = s2s_optim_save(&r->x, r->opt, dir, r->t.step, err, errlen);
    if (!rc)
        printf("model of step %" PRId64 " written to %s (moectl translate takes that folder)\n",
               r->t.step, dir);
    for (int w = 0; w < S2S_N_MOE; w++) {
        r->x.shard[w] = held[w];
        expert_shard_destroy(&all[w]);
    }
    return rc;
}

/* A failed step of an elastic cluster (coordinator and checkpoint_dir):
 * the cluster rolls back to its last checkpoint (0: go on from there). */
static int recover(struct s2s_run *r, int rc, char *err, size_t errlen)
{
    if (!r->t.elastic || rc == MOE_ERR_STOPPED || rc == MOE_ERR_FAILED)
        return rc;
    char why[1024];
    snprintf(why, sizeof why, "%s", err);
    return trainer__recover(&r->t, why, err, errlen);
}

/* Steps until the last, a stop or an error; *stopped when the coordinator
 * stopped the cluster (the sentence in note). */
static int run_steps(struct s2s_run *r, const volatile sig_atomic_t *signals, bool *stopped,
                     char *note, size_t notelen, char *err, size_t errlen)
{
    const struct moe_options *c = r->c;
    const double start = moe_now_sec();
    int64_t all_tokens = 0;
    double t0 = start, win_loss = 0, win_bal = 0;
    int64_t win_steps = 0, win_tokens = 0;
    int rc = 0;
    while (r->t.step < c->steps && (r->t.coord || !*signals) && !rc && !*stopped) {
        double xent, bal;
        const double ts = moe_now_sec();
        if ((rc = train_step(r, &xent, &bal, err, errlen))) {
            rc = recover(r, rc, err, errlen);
            continue;
        }
        if (r->t.coord &&
            (rc = trainer__cluster_after_step(&r->t, stopped, note, notelen, err, errlen)))
            break;
        const double dt = moe_now_sec() - ts;
        r->last_tps = dt > 0 ? (double)r->pb.tokens / dt : 0;
        r->train_secs += dt;
        win_loss += xent;
        win_bal += bal;
        win_steps++;
        win_tokens += r->pb.tokens;
        all_tokens += r->pb.tokens;
        if (r->t.step % c->log_every == 0 || r->t.step == c->steps) {
            const double now = moe_now_sec(), loss = win_loss / (double)win_steps;
            r->last_ppl = exp(loss);
            printf("step %6" PRId64 "/%" PRId64 " | %7.0f tok/s | loss %.4f | ppl %8.2f | "
                   "balance %.4f | lr %.2e\n",
                   r->t.step, c->steps, (double)win_tokens / (now - t0), loss, exp(loss),
                   win_bal / (double)win_steps,
                   moe_lr_at(&(struct moe_lr_schedule){c->lr, c->warmup}, r->t.step));
            fflush(stdout);
            t0 = now;
            win_loss = win_bal = 0;
            win_steps = win_tokens = 0;
        }
        double vl;
        if (c->valid_every && r->valid.n && r->t.rank == 0 && r->t.step % c->valid_every == 0 &&
            r->t.step < c->steps &&
            !(rc = validate(r, &vl, err, errlen)))
            printf("step %6" PRId64 " | valid ppl %.2f\n", r->t.step, exp(vl));
        /* (with a coordinator the cluster's checkpoints are its orders) */
        if (!rc && !r->t.coord && c->checkpoint_every && c->checkpoint_dir[0] &&
            r->t.step % c->checkpoint_every == 0 && r->t.step < c->steps)
            rc = save(r, false, err, errlen);
    }
    if (rc == MOE_ERR_STOPPED) { /* the coordinator stopped the cluster while this worker waited */
        *stopped = true;
        snprintf(note, notelen, "%s", err);
        rc = 0;
    }
    const double secs = moe_now_sec() - start;
    const double dense = s2s_dense_params(s2s_config_of(r->x.m));
    const double experts = 2.0 * c->n_experts * (2.0 * c->d_model * c->d_hidden + c->d_model +
                                                  c->d_hidden);
    if (!rc)
        printf("trained %" PRId64 " steps in %.1f s: %.0f target tokens/s; %.0f parameters "
               "(%.0f dense, %.0f in 2 x %d experts)%s\n",
               r->t.step - r->start_step, secs, (double)all_tokens / (secs > 0 ? secs : 1),
               dense + experts, dense, experts, c->n_experts,
               *stopped ? "; the cluster stopped" : *signals ? "; stopped by a signal" : "");
    if (!rc && *stopped)
        printf("stopped at step %" PRId64 " of %" PRId64 " (%s); the cluster's last checkpoint "
               "holds the model\n", r->t.step, c->steps, note);
    return rc;
}

/* --report: what this worker trained, as JSON (trainer__write_report). */
static int write_report(const struct s2s_run *r, double valid_xent, char *err, size_t errlen)
{
    const struct moe_options *c = r->c;
    const int E = c->n_experts;
    json_t *o = json_object(), *rr = json_object();
    json_object_set_new(o, "task", json_string("translate"));
    json_object_set_new(o, "steps", json_integer(r->t.step));
    json_object_set_new(o, "steps_this_run", json_integer(r->t.step - r->start_step));
    json_object_set_new(o, "source_tokens", json_integer(r->src_tokens));
    json_object_set_new(o, "target_tokens", json_integer(r->tgt_tokens));
    json_object_set_new(o, "tokens_per_sec",
                        json_real(r->train_secs > 0 ? (double)r->tgt_tokens / r->train_secs : 0));
    json_object_set_new(o, "train_ppl", json_real(r->last_ppl));
    const bool v = isfinite(valid_xent);
    json_object_set_new(o, "valid_ppl", v ? json_real(exp(valid_xent)) : json_null());
    json_object_set_new(o, "valid_cross_entropy", v ? json_real(valid_xent) : json_null());
    const double dense = s2s_dense_params(s2s_config_of(r->x.m));
    json_object_set_new(o, "params_dense", json_integer((json_int_t)dense));
    json_object_set_new(o, "params_experts",
                        json_integer((json_int_t)moe_options_experts_total(c) *
                                     (json_int_t)expert_ffn_param_count(c->d_model, c->d_hidden)));
    json_object_set_new(o, "n_experts", json_integer(E));
    json_object_set_new(o, "moe_layers", json_integer(S2S_N_MOE));
    json_object_set_new(o, "k", json_integer(c->k));
    json_object_set_new(o, "src_vocab_size", json_integer(vocab_size(r->x.vs)));
    json_object_set_new(o, "tgt_vocab_size", json_integer(vocab_size(r->x.vt)));
    json_object_set_new(o, "seed", json_integer(c->seed));
    json_object_set_new(o, "experts", json_string(c->experts));
    static const char *const side[S2S_N_MOE] = {"encoder", "decoder"};
    for (int w = 0; w < S2S_N_MOE; w++) {
        json_t *a = json_array();
        for (int e = 0; e < E; e++)
            json_array_append_new(a, json_integer((json_int_t)r->rows_routed[w * E + e]));
        json_object_set_new(rr, side[w], a);
    }
    json_object_set_new(o, "rows_routed", rr);
    json_object_set_new(o, "rank", json_integer(r->t.rank));
    json_object_set_new(o, "workers", json_integer(r->t.world));
    json_object_set_new(o, "recoveries", json_integer(r->t.recoveries));
    json_object_set_new(o, "blas_kernels", json_string(moe_kernels_effective()));
    json_object_set_new(o, "blas_threads", json_integer(c->threads));
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        json_object_set_new(o, "peak_rss_mb", json_real((double)ru.ru_maxrss / 1024.0));
    if (r->t.remote_be && r->tgt_tokens > 0)
        json_object_set_new(o, "wire_bytes_per_token",
                            json_real((double)expert_remote_wire_bytes(r->t.remote_be) /
                                      (double)r->tgt_tokens));
    return trainer__write_report(o, c->report, r->t.rank, err, errlen);
}

int s2s_train_run(const struct moe_options *c, const volatile sig_atomic_t *signals)
{
    static struct s2s_run r; /* large: not on the stack */
    memset(&r, 0, sizeof r);
    r.c = c;
    char err[1024] = "";
    enum moe_log_level lvl = MOE_LOG_INFO;
    moe_log_parse_level(c->log_level, &lvl);
    moe_log_set_level(lvl);
    moe_blas_set_threads(c->threads);
    r.t.cfg = c;
    r.t.signals = signals;
    int rc = setup(&r, err, sizeof err);
    if (rc == MOE_ERR_STOPPED) { /* a signal while it waited to join */
        fprintf(stderr, "moe-worker: %s\n", err);
        teardown(&r);
        return 0;
    }
    bool stopped = false; /* by the coordinator: its checkpoint holds the model */
    char note[300] = "";
    if (!rc)
        rc = run_steps(&r, signals, &stopped, note, sizeof note, err, sizeof err);
    double vl = NAN;
    if (!rc && !stopped && r.valid.n && r.t.rank == 0 && !(rc = validate(&r, &vl, err, sizeof err)))
        printf("validation perplexity %.2f after %" PRId64 " steps (%d pairs, %" PRId64
               " target tokens; cross-entropy %.9f per token)\n",
               exp(vl), r.t.step, r.valid.n, r.valid.tgt_tokens, vl);
    if (!rc && !stopped) /* (stopped by the coordinator: its checkpoint holds the model) */
        rc = save(&r, true, err, sizeof err);
    if (!rc && c->report[0])
        rc = write_report(&r, vl, err, sizeof err);
    if (rc)
        fprintf(stderr, "moe-worker: error: %s\n", err);
    teardown(&r);
    return rc ? moe_options_exit_code(rc) : 0;
}
