/* The worker's training loop (moe-worker process; see trainer.h). A step
 * is forward -> balancing statistics -> backward -> update, as in llm.c's
 * train loop; everything it needs is allocated before the first step
 * (trainer_setup.c), and what a coordinator adds between steps is
 * trainer_cluster.c's. */
#include "trainer.h"
#include "inference.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "gate.h"
#include "moe_blas.h"
#include "moe_err.h"
#include "moe_kernels.h"
#include "moe_log.h"
#include "moe_mem.h"
#include "moe_optim.h"
#include "moe_time.h"
#include "moe_wire.h"
#include "trainer_internal.h"

static void dense_update(struct trainer *t, int64_t step1, double lr)
{
    const struct moe_options *c = t->cfg;
    struct moe_adam_opts ao = {c->beta1, c->beta2, c->adam_eps};
    struct moe_fadam_opts fo = {c->beta2, 0, c->adam_eps, 1e-30, 0, false, 1e-3};
    for (int p = 0; p < model_n_params(t->model); p++) {
        const struct layer_param lp = model_param_at(t->model, p);
        moe_tensor *w = lp.w, *g = lp.g;
        if (t->dense_adam)
            moe_adam_update(w->data, g->data, t->dense_opt[p], w->numel, step1, lr, &ao);
        else
            moe_fadam_update(w->data, g->data, t->dense_opt[p], (size_t)w->shape[0],
                             w->ndim == 2 ? (size_t)w->shape[1] : 0, step1, lr, &fo);
    }
}

static void format_eta(char *buf, size_t cap, double sec)
{
    if (!isfinite(sec) || sec < 0)
        snprintf(buf, cap, "?");
    else if (sec < 60)
        snprintf(buf, cap, "%.0fs", sec);
    else if (sec < 3600)
        snprintf(buf, cap, "%dm%02ds", (int)(sec / 60), (int)fmod(sec, 60));
    else
        snprintf(buf, cap, "%dh%02dm", (int)(sec / 3600), (int)fmod(sec / 60, 60));
}

/* Perplexity over the validation corpus (or its first valid_max_tokens
 * predictions, rounded up to whole chunks), with deterministic gating; and
 * that of the unigram model of the training corpus (add-one smoothing) on
 * exactly the same predictions: the baseline to beat. */
static int evaluate(struct trainer *t, double *ppl, double *uni_ppl, char *err, size_t errlen)
{
    struct eval_result r;
    int rc = eval_corpus(t->model, &t->vb, t->step, t->cfg->valid_max_tokens, t->uni_logp, t->tok,
                         t->tgt, &r, err, errlen);
    *ppl = r.ppl;
    *uni_ppl = r.unigram_ppl;
    return rc;
}

static int write_report(const struct trainer *t, double tokens_per_sec, double valid_ppl,
                        double uni_ppl, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    json_t *o = json_object();
    json_object_set_new(o, "steps", json_integer(t->step));
    json_object_set_new(o, "tokens", json_integer(t->step * (int64_t)c->batch * c->unroll));
    json_object_set_new(o, "tokens_per_sec", json_real(tokens_per_sec));
    json_object_set_new(o, "train_ppl", json_real(t->last_train_ppl));
    json_object_set_new(o, "valid_ppl", isfinite(valid_ppl) ? json_real(valid_ppl) : json_null());
    json_object_set_new(o, "unigram_valid_ppl", isfinite(uni_ppl) ? json_real(uni_ppl) : json_null());
    json_object_set_new(o, "importance_cv", json_real(t->cv_n ? t->cv_imp_sum / t->cv_n : 0));
    json_object_set_new(o, "load_cv", json_real(t->cv_n ? t->cv_load_sum / t->cv_n : 0));
    json_object_set_new(o, "rows_routed_max_over_mean", json_real(t->cv_n ? t->maxmean_sum / t->cv_n : 0));
    json_object_set_new(o, "stats_window_steps", json_integer(t->cv_n));
    json_object_set_new(o, "n_experts", json_integer(c->n_experts));
    json_object_set_new(o, "k", json_integer(c->k));
    json_object_set_new(o, "vocab_size", json_integer(vocab_size(t->vocab)));
    json_object_set_new(o, "seed", json_integer(c->seed));
    json_object_set_new(o, "experts", json_string(c->experts));
    json_t *rr = json_array();
    for (int e = 0; e < c->n_experts; e++)
        json_array_append_new(rr, json_integer((json_int_t)t->rows_routed[e]));
    json_object_set_new(o, "rows_routed", rr);
    json_object_set_new(o, "rank", json_integer(t->rank));
    json_object_set_new(o, "workers", json_integer(t->world));
    json_object_set_new(o, "recoveries", json_integer(t->recoveries));
    /* what computed it (DESIGN §4) and how */
    json_object_set_new(o, "blas_kernels", json_string(moe_kernels_effective()));
    json_object_set_new(o, "blas_kernels_reason", json_string(moe_kernels_reason()));
    json_object_set_new(o, "blas_sgemm_gflops_at_start", json_real(moe_kernels_gflops()));
    json_object_set_new(o, "blas_threads", json_integer(c->threads));
    json_object_set_new(o, "recompute", json_string(c->recompute));
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        json_object_set_new(o, "peak_rss_mb", json_real((double)ru.ru_maxrss / 1024.0));
    if (t->remote) {
        /* this worker's tensor bytes over its share of the tokens */
        double tok = (double)(t->step - t->start_step) * t->B * c->unroll;
        json_object_set_new(o, "wire_bytes_per_token",
                            json_real(tok > 0 ? (double)expert_remote_wire_bytes(t->remote_be) / tok : 0));
        json_object_set_new(o, "wire_dtype", json_string(c->wire_dtype));
    }
    return trainer__write_report(o, c->report, t->rank, err, errlen);
}

int trainer__write_report(json_t *o, const char *report, int rank, char *err, size_t errlen)
{
    /* Worker 0 writes PATH; worker r > 0 writes PATH.rank<r>. */
    char path[MOE_PATH_MAX + 32], tmp[MOE_PATH_MAX + 48];
    if (rank == 0)
        snprintf(path, sizeof path, "%s", report);
    else
        snprintf(path, sizeof path, "%s.rank%d", report, rank);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = json_dump_file(o, tmp, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(o);
    if (rc != 0 || rename(tmp, path) != 0) {
        moe_err_set(err, errlen, "%s: cannot write the report: %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    return 0;
}

/* cv (not squared) of a vector, for reports. */
static double cv_of(const float *v, int n) { return sqrt(gate_cv_squared(v, n, NULL)); }

/* Sums the dense gradients over the workers (no-op for one worker). */
static int allreduce_grads(struct trainer *t, int64_t step, char *err, size_t errlen)
{
    if (t->world == 1)
        return 0;
    size_t off = 0;
    for (int p = 0; p < model_n_params(t->model); p++) {
        const moe_tensor *g = model_param_at(t->model, p).g;
        memcpy(t->flat + off, g->data, sizeof(float) * g->numel);
        off += g->numel;
    }
    const uint64_t epoch = (uint64_t)t->ep.epoch << MOE_ALLREDUCE_EPOCH_SHIFT;
    int rc = moe_allreduce_sum(t->ar, t->flat, t->flat_n, epoch | ((uint64_t)step * 2 + 1), err,
                               errlen);
    if (rc)
        return rc;
    off = 0;
    for (int p = 0; p < model_n_params(t->model); p++) {
        moe_tensor *g = model_param_at(t->model, p).g;
        memcpy(g->data, t->flat + off, sizeof(float) * g->numel);
        off += g->numel;
    }
    return 0;
}

static int train_step(struct trainer *t, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    const int64_t s = t->step; /* 0-based index of this step */
    const int E = c->n_experts;
    if (batcher_train(&t->tb, s, t->b0, t->B, t->tok, t->tgt) && s > 0)
        model_reset_state(t->model, false);
    const int64_t N = (int64_t)c->batch * c->unroll; /* rows of the global batch */
    struct model_batch b = {t->B, c->unroll, t->tok, t->tgt, (int64_t)t->b0 * c->unroll, N};
    double xent, bal;
    int rc = model_forward(t->model, &b, s, true, &xent, err, errlen);
    if (rc)
        return rc;
    /* Global Importance and Load: the sum over every worker of this step. */
    /* (a hierarchical MoE's Load is summed through its factors, fx) */
    const int X = model_group_factor_count(t->model);
    float *imp = t->stats, *load = imp + E, *cnt = load + E, *fx = cnt + E, *xs = fx + X;
    memcpy(imp, model_local_importance(t->model), sizeof(float) * (size_t)E);
    memcpy(load, model_local_load_summed(t->model), sizeof(float) * (size_t)E);
    if (X)
        memcpy(fx, model_local_group_factors(t->model), sizeof(float) * (size_t)X);
    const int *lc = model_local_counts(t->model);
    for (int e = 0; e < E; e++) {
        cnt[e] = (float)lc[e];
        t->rows_routed[e] += lc[e];
    }
    *xs = (float)xent;
    if (t->coord) {
        /* The coordinator sums every worker's vectors in rank order. */
        const uint32_t ask = t->signals && *t->signals ? MOE_FLAG_STOP : 0;
        rc = coord_client_stats_row(t->coord, s, t->stats, 3 * (size_t)E + (size_t)X,
                                    xent / ((double)t->B * c->unroll), t->last_tps,
                                    (uint64_t)t->B * (uint64_t)c->unroll, ask, t->gstats,
                                    &t->step_flags, err, errlen);
        if (rc == 0 && ask && !t->stop_asked) {
            t->stop_asked = true;
            moe_info("asked the coordinator to stop the cluster after a checkpoint");
        }
        if (rc)
            return rc;
        memcpy(t->stats, t->gstats, sizeof(float) * (3 * (size_t)E + (size_t)X));
        *xs = (float)(xent * t->world); /* the loss printed is this worker's */
    } else if (t->world > 1 &&
               (rc = moe_allreduce_sum(t->ar, t->stats, 3 * (size_t)E + (size_t)X + 1,
                                       ((uint64_t)t->ep.epoch << MOE_ALLREDUCE_EPOCH_SHIFT) |
                                           ((uint64_t)s * 2),
                                       err, errlen))) {
        return rc;
    }
    if (t->remote_be)
        expert_remote_set_backward_flags(t->remote_be, t->step_flags & MOE_FLAG_CHECKPOINT);
    rc = model_backward_groups(t->model, imp, load, X ? fx : NULL, &bal, err, errlen);
    if (rc || (rc = allreduce_grads(t, s, err, errlen)))
        return rc;
    if (X) /* the step's Load_H, for the statistics below */
        memcpy(load, model_local_load(t->model), sizeof(float) * (size_t)E);
    const int64_t t1 = s + 1;
    struct moe_lr_schedule sched = {c->lr, c->warmup};
    const double lr = moe_lr_at(&sched, t1);
    dense_update(t, t1, lr);
    if ((rc = t->backend.apply(t->backend.ctx, t1, lr, err, errlen)))
        return rc;
    model_carry_state(t->model);
    t->step = t1;

    const double loss = (t->world > 1 || t->coord ? (double)*xs : xent) / (double)N;
    if (!isfinite(loss)) {
        moe_err_set(err, errlen, "training diverged at step %" PRId64 " (loss %g); try a lower --lr",
                 t1, loss);
        return MOE_ERR_STATE;
    }
    t->win_loss += loss;
    t->win_bal += bal;
    t->win_steps++;
    t->win_tokens += N;
    /* balance statistics over the last 100 steps of the run */
    if (t1 > c->steps - 100) {
        double mx = 0, sum = 0;
        for (int e = 0; e < E; e++) {
            mx = cnt[e] > mx ? cnt[e] : mx;
            sum += cnt[e];
        }
        t->cv_imp_sum += cv_of(imp, E);
        t->cv_load_sum += cv_of(load, E);
        t->maxmean_sum += sum > 0 ? mx / (sum / E) : 0;
        t->cv_n++;
    }
    return 0;
}

static int save_checkpoint_in(struct trainer *t, const char *dir, char *err, size_t errlen)
{
    if (t->rank != 0)
        return 0;
    /* Remote experts: copy their parameters and state into the local mirror. */
    if (t->remote) {
        int rc = expert_remote_fetch(t->remote_be, t->shard, t->step, err, errlen);
        if (!rc && t->groups)
            rc = expert_remote_fetch_groups(t->remote_be, t->groups, t->cfg->d_model,
                                            t->cfg->experts_per_group, t->step, err, errlen);
        if (rc)
            return rc;
        for (int i = 0; i < expert_shard_count(t->shard); i++)
            *expert_shard_opt_step(t->shard, i) = t->step;
    } else {
        expert_shard_flush(t->shard, t->step);
    }
    struct ckpt_state cs = trainer__ckpt_state(t);
    cs.shard = t->shard;
    cs.groups = t->groups;
    char where[MOE_PATH_MAX + 64];
    int rc = checkpoint_save(dir, &cs, where, sizeof where, err, errlen);
    if (rc == 0)
        moe_info("checkpoint of step %" PRId64 " written to %s", t->step, where);
    return rc;
}

static int save_checkpoint(struct trainer *t, char *err, size_t errlen)
{
    return save_checkpoint_in(t, t->cfg->checkpoint_dir, err, errlen);
}

/* Tells the coordinator (when there is one) what this worker does outside
 * its steps, until the next activity or coord_client_activity_end: without
 * it, a worker validating or writing the final model looks gone and the
 * cluster stalled. */
static void tell_activity(struct trainer *t, const char *what)
{
    if (t->coord && coord_client_activity_begin(t->coord, t->step, what))
        moe_warn("cannot tell the coordinator that this worker is %s", what);
}

/* The final model of a run without checkpoint_dir (option final_model):
 * a checkpoint folder like any other, which moectl and --resume take. With
 * a coordinator, worker 0 fetches every expert from the servers for it
 * at the end of the run, when they fit in its memory (else it says so). */
static int save_final_model(struct trainer *t, bool stopped, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    const char *dir = c->final_model;
    if (t->rank != 0 || c->checkpoint_dir[0] || !dir[0] || !strcmp(dir, "none") ||
        (t->coord && stopped))
        return 0;
    tell_activity(t, COORD_ACTIVITY_WRITING);
    expert_shard_t *held = t->shard, *all = NULL;
    if (t->coord) {
        char why[512];
        /* the experts without gradients, and one fetch's replies (as
         * received, and unpacked) */
        const double need =
            expert_shard_bytes(c->d_model, c->d_hidden, c->n_experts, false) +
            2 * expert_shard_bytes(c->d_model, c->d_hidden,
                                   expert_remote_fetch_chunk(c->d_model, c->d_hidden), false);
        if (c->memory_check && moe_mem_check(trainer__bytes_of(need),
                                             "every expert, to write the final model", why,
                                             sizeof why)) {
            moe_warn("the final model is not written: %s; give --checkpoint-dir to keep the "
                     "cluster's model", why);
            return 0;
        }
        all = model_experts_from_options(c, c->n_experts, false);
        if (!all)
            return moe_err_fail(MOE_ERR_NOMEM, err, errlen,
                                "out of memory for the experts of the final model");
        t->shard = all;
    }
    int rc = save_checkpoint_in(t, dir, err, errlen);
    t->shard = held;
    expert_shard_destroy(&all);
    if (!rc)
        printf("model of step %" PRId64 " written to %s (no --checkpoint-dir; moectl eval, "
               "generate and export take that folder)\n", t->step, dir);
    return rc;
}

/* The clock of the run: training time, the progress window. */
struct run_clock {
    double t0, window, train_time;
};

static void print_progress(struct trainer *t, struct run_clock *k)
{
    const struct moe_options *c = t->cfg;
    const double now = moe_now_sec();
    const double tps = (double)t->win_tokens / (now - k->window);
    const double loss = t->win_loss / (double)t->win_steps;
    t->last_train_ppl = exp(loss);
    char eta[32];
    format_eta(eta, sizeof eta,
               (double)(c->steps - t->step) * (now - k->t0) / (double)(t->step - t->start_step));
    printf("step %6" PRId64 "/%" PRId64 " | %7.0f tok/s | loss %.4f | ppl %8.2f | "
           "balance %.4f | lr %.2e | ETA %s\n",
           t->step, c->steps, tps, loss, exp(loss), t->win_bal / (double)t->win_steps,
           moe_lr_at(&(struct moe_lr_schedule){c->lr, c->warmup}, t->step), eta);
    fflush(stdout);
    t->win_loss = t->win_bal = 0;
    t->win_steps = t->win_tokens = 0;
    k->window = moe_now_sec();
}

/* Whether a failed step can be recovered by a rollback: not when the
 * cluster stopped or failed for good. */
static bool recoverable(const struct trainer *t, int rc)
{
    return t->elastic && rc != MOE_ERR_STOPPED && rc != MOE_ERR_FAILED;
}

/* Steps until the last, a stop or an error. *stopped with note when the
 * operator stopped the run. */
static int run_steps(struct trainer *t, struct run_clock *k, bool *stopped, char *note,
                     size_t notelen, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    int rc = 0;
    while (t->step < c->steps) {
        const double ts = moe_now_sec();
        if ((rc = train_step(t, err, errlen))) {
            char why[1024];
            snprintf(why, sizeof why, "%s", err);
            if (!recoverable(t, rc) || (rc = trainer__recover(t, why, err, errlen)))
                return rc;
            continue;
        }
        if (t->coord && (rc = trainer__cluster_after_step(t, stopped, note, notelen, err, errlen)))
            return rc;
        if (*stopped)
            return 0;
        const double dt = moe_now_sec() - ts;
        k->train_time += dt;
        /* this worker's speed, sent with the next step's statistics */
        t->last_tps = dt > 0 ? (double)t->B * c->unroll / dt : 0;
        if (t->step % c->log_every == 0 || t->step == c->steps)
            print_progress(t, k);
        if (!t->coord && t->signals && *t->signals) {
            /* no cluster to stop: this process checkpoints and ends */
            *stopped = true;
            snprintf(note, notelen, "stopped by a signal");
            return 0;
        }
        if (c->valid[0] && c->valid_every > 0 && t->step % c->valid_every == 0 &&
            t->step < c->steps && t->rank == 0) {
            double vp, up;
            tell_activity(t, COORD_ACTIVITY_VALIDATING);
            rc = evaluate(t, &vp, &up, err, errlen);
            if (t->coord)
                coord_client_activity_end(t->coord, NULL); /* its next statistics end it */
            if (rc)
                return rc;
            printf("step %6" PRId64 " | valid ppl %.2f\n", t->step, vp);
            fflush(stdout);
        }
        if (!t->coord && c->checkpoint_dir[0] && c->checkpoint_every > 0 &&
            t->step % c->checkpoint_every == 0 && (rc = save_checkpoint(t, err, errlen)))
            return rc;
    }
    return 0;
}

/* After the loop: the stop's message, or the validation perplexity; the
 * final checkpoint of a single process; the report. */
static int finish_run(struct trainer *t, const struct run_clock *k, bool stopped,
                      const char *note, char *err, size_t errlen)
{
    const struct moe_options *c = t->cfg;
    const bool last_saved = c->checkpoint_every > 0 && t->step % c->checkpoint_every == 0;
    int rc = 0;
    double valid_ppl = NAN, uni = NAN;
    if (stopped) {
        if (!t->coord && c->checkpoint_dir[0] && !last_saved)
            rc = save_checkpoint(t, err, errlen);
        if (!rc)
            printf("stopped at step %" PRId64 " of %" PRId64 " (%s); %s\n", t->step, c->steps,
                   note, c->checkpoint_dir[0] ? "start it again to resume from its checkpoint"
                                              : "the model so far is saved as final_model");
        if (!rc)
            rc = save_final_model(t, true, err, errlen);
        fflush(stdout);
    } else {
        if (c->valid[0] && t->rank == 0) {
            tell_activity(t, COORD_ACTIVITY_VALIDATING);
            if (!(rc = evaluate(t, &valid_ppl, &uni, err, errlen)))
                printf("validation perplexity %.2f after %" PRId64 " steps (unigram baseline "
                       "%.2f)\n", valid_ppl, t->step, uni);
        }
        if (!rc && !t->coord && c->checkpoint_dir[0] && !last_saved)
            rc = save_checkpoint(t, err, errlen);
        if (!rc)
            rc = save_final_model(t, false, err, errlen);
        if (t->coord) /* its last word: the silence that follows is its exit */
            coord_client_activity_end(t->coord, rc ? NULL : COORD_ACTIVITY_FINISHED);
    }
    const int64_t tokens = (t->step - t->start_step) * (int64_t)c->batch * c->unroll;
    const double tps = k->train_time > 0 ? (double)tokens / k->train_time : 0;
    if (!rc && c->report[0])
        rc = write_report(t, tps, valid_ppl, uni, err, errlen);
    return rc;
}

int trainer_run(const struct moe_options *c, const volatile sig_atomic_t *signals)
{
    struct trainer t;
    memset(&t, 0, sizeof t);
    t.cfg = c;
    t.signals = signals;
    char err[1024] = "";
    enum moe_log_level lvl = MOE_LOG_INFO;
    moe_log_parse_level(c->log_level, &lvl); /* checked by moe_options_check */
    moe_log_set_level(lvl);
    moe_blas_set_threads(c->threads);
    int rc = trainer__setup(&t, err, sizeof err);
    if (rc == MOE_ERR_STOPPED) { /* a signal while it waited to join */
        fprintf(stderr, "moe-worker: %s\n", err);
        trainer__teardown(&t);
        return 0;
    }
    if (rc) {
        fprintf(stderr, "moe-worker: error: %s\n", err);
        trainer__teardown(&t);
        return moe_options_exit_code(rc);
    }
    t.start_step = t.step;
    struct run_clock k = {moe_now_sec(), moe_now_sec(), 0};
    bool stopped = false; /* by the operator: a signal here, or the coordinator said so */
    char note[300] = "";
    rc = run_steps(&t, &k, &stopped, note, sizeof note, err, sizeof err);
    if (rc == MOE_ERR_STOPPED) {
        /* the coordinator stopped the cluster while this worker waited */
        rc = 0;
        stopped = true;
        snprintf(note, sizeof note, "%s", err);
    }
    if (!rc)
        rc = finish_run(&t, &k, stopped, note, err, sizeof err);
    if (rc)
        fprintf(stderr, "moe-worker: error: %s\n", err);
    trainer__teardown(&t);
    return rc ? 1 : 0; /* a failure while training is never a usage error */
}
