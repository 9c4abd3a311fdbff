/* Training loop of the translation model (see s2s_train.h). */
#include "s2s_train.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "moe_blas.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_optim.h"
#include "moe_time.h"
#include "parallel.h"
#include "s2s_checkpoint.h"

struct s2s_run {
    const struct moe_options *c;
    struct s2s_model x;
    struct pcorpus train, valid;
    struct pbatches tb, vb;
    struct pbatch pb;
    float **opt;       /* Adam state per dense parameter */
    int n_opt;
    int64_t step;
};

/* ------------------------------------------------------------------------ */
/* Setup */

static int load_data(struct s2s_run *r, vocab_t **vs, vocab_t **vt, char *err, size_t errlen)
{
    const struct moe_options *c = r->c;
    if (!(*vs = vocab_build(c->src_train, c->src_vocab_max, err, errlen)) ||
        !(*vt = vocab_build(c->tgt_train, c->tgt_vocab_max, err, errlen)))
        return MOE_ERR_FORMAT;
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

static int setup(struct s2s_run *r, char *err, size_t errlen)
{
    vocab_t *vs = NULL, *vt = NULL;
    int rc = load_data(r, &vs, &vt, err, errlen);
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
    return 0;
}

static void teardown(struct s2s_run *r)
{
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

static struct s2s_batch batch_of(const struct pbatch *p)
{
    return (struct s2s_batch){.B = p->B, .S = p->S, .T = p->T, .src = p->src,
                              .tgt_in = p->tgt_in, .tgt_out = p->tgt_out,
                              .src_len = p->src_len, .tgt_len = p->tgt_len,
                              .n_global = p->tokens};
}

/* One training step; *xent (mean over the batch's target tokens) and
 * *bal. */
static int train_step(struct s2s_run *r, double *xent, double *bal, char *err, size_t errlen)
{
    const struct moe_options *c = r->c;
    s2s_t *m = r->x.m;
    pbatches_fill_step(&r->tb, &r->train, r->step, (uint64_t)c->seed, &r->pb);
    const struct s2s_batch b = batch_of(&r->pb);
    double sum;
    int rc = s2s_forward(m, &b, r->step, true, &sum, err, errlen);
    if (rc)
        return rc;
    *xent = sum / (double)b.n_global;
    const float *imp[S2S_N_MOE] = {s2s_importance(m, 0), s2s_importance(m, 1)};
    const float *load[S2S_N_MOE] = {s2s_load(m, 0), s2s_load(m, 1)};
    if ((rc = s2s_backward(m, imp, load, bal, err, errlen)))
        return rc;
    const int64_t t1 = r->step + 1;
    const double lr = moe_lr_at(&(struct moe_lr_schedule){c->lr, c->warmup}, t1);
    const struct moe_adam_opts ao = {c->beta1, c->beta2, c->adam_eps};
    for (int p = 0; p < r->n_opt; p++) {
        const struct layer_param q = s2s_param_at(m, p);
        moe_adam_update(q.w->data, q.g->data, r->opt[p], q.w->numel, t1, lr, &ao);
    }
    for (int w = 0; w < S2S_N_MOE; w++)
        expert_shard_apply(r->x.shard[w], t1, lr);
    r->step = t1;
    return 0;
}

/* Perplexity of the validation pairs (every pair, length order). */
static int validate(struct s2s_run *r, double *loss, char *err, size_t errlen)
{
    double sum = 0;
    int64_t tokens = 0;
    for (int i = 0; i < r->vb.n_batches; i++) {
        pbatches_fill(&r->vb, &r->valid, i, &r->pb);
        const struct s2s_batch b = batch_of(&r->pb);
        double s;
        int rc = s2s_forward(r->x.m, &b, r->step, false, &s, err, errlen);
        if (rc)
            return rc;
        sum += s;
        tokens += b.n_global;
    }
    *loss = sum / (double)(tokens ? tokens : 1);
    return 0;
}

/* The model of this step: checkpoint_dir/step-N/model.safetensors, or
 * final_model/model.safetensors at the end ("none": not written). */
static int save(struct s2s_run *r, bool final, char *err, size_t errlen)
{
    const struct moe_options *c = r->c;
    char dir[MOE_PATH_MAX + 32], path[MOE_PATH_MAX + 64];
    if (c->checkpoint_dir[0]) {
        if (mkdir(c->checkpoint_dir, 0755) != 0 && errno != EEXIST)
            return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot create: %s",
                                c->checkpoint_dir, strerror(errno));
        snprintf(dir, sizeof dir, "%s/step-%08" PRId64, c->checkpoint_dir, r->step);
    } else if (!final || !strcmp(c->final_model, "none")) {
        return 0;
    } else {
        snprintf(dir, sizeof dir, "%s", c->final_model);
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot create: %s", dir,
                            strerror(errno));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = s2s_model_save(&r->x, path, r->step, err, errlen);
    if (!rc)
        printf("model of step %" PRId64 " written to %s (moectl translate takes that folder)\n",
               r->step, dir);
    return rc;
}

static int run_steps(struct s2s_run *r, const volatile sig_atomic_t *signals, char *err,
                     size_t errlen)
{
    const struct moe_options *c = r->c;
    const double start = moe_now_sec();
    int64_t all_tokens = 0;
    double t0 = start, win_loss = 0, win_bal = 0;
    int64_t win_steps = 0, win_tokens = 0;
    int rc = 0;
    while (r->step < c->steps && !*signals && !rc) {
        double xent, bal;
        if ((rc = train_step(r, &xent, &bal, err, errlen)))
            break;
        win_loss += xent;
        win_bal += bal;
        win_steps++;
        win_tokens += r->pb.tokens;
        all_tokens += r->pb.tokens;
        if (r->step % c->log_every == 0 || r->step == c->steps) {
            const double now = moe_now_sec(), loss = win_loss / (double)win_steps;
            printf("step %6" PRId64 "/%" PRId64 " | %7.0f tok/s | loss %.4f | ppl %8.2f | "
                   "balance %.4f | lr %.2e\n",
                   r->step, c->steps, (double)win_tokens / (now - t0), loss, exp(loss),
                   win_bal / (double)win_steps,
                   moe_lr_at(&(struct moe_lr_schedule){c->lr, c->warmup}, r->step));
            fflush(stdout);
            t0 = now;
            win_loss = win_bal = 0;
            win_steps = win_tokens = 0;
        }
        double vl;
        if (c->valid_every && r->valid.n && r->step % c->valid_every == 0 && r->step < c->steps &&
            !(rc = validate(r, &vl, err, errlen)))
            printf("step %6" PRId64 " | valid ppl %.2f\n", r->step, exp(vl));
        if (!rc && c->checkpoint_every && c->checkpoint_dir[0] &&
            r->step % c->checkpoint_every == 0 && r->step < c->steps)
            rc = save(r, false, err, errlen);
    }
    const double secs = moe_now_sec() - start;
    const double dense = s2s_dense_params(s2s_config_of(r->x.m));
    const double experts = 2.0 * c->n_experts * (2.0 * c->d_model * c->d_hidden + c->d_model +
                                                  c->d_hidden);
    if (!rc)
        printf("trained %" PRId64 " steps in %.1f s: %.0f target tokens/s; %.0f parameters "
               "(%.0f dense, %.0f in 2 x %d experts)%s\n",
               r->step, secs, (double)all_tokens / (secs > 0 ? secs : 1), dense + experts, dense,
               experts, c->n_experts, *signals ? "; stopped by a signal" : "");
    return rc;
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
    int rc = setup(&r, err, sizeof err);
    if (!rc)
        rc = run_steps(&r, signals, err, sizeof err);
    double vl;
    if (!rc && r.valid.n && !(rc = validate(&r, &vl, err, sizeof err)))
        printf("validation perplexity %.2f after %" PRId64 " steps (%d pairs, %" PRId64
               " target tokens; cross-entropy %.9f per token)\n",
               exp(vl), r.step, r.valid.n, r.valid.tgt_tokens, vl);
    if (!rc)
        rc = save(&r, true, err, sizeof err);
    if (rc)
        fprintf(stderr, "moe-worker: error: %s\n", err);
    teardown(&r);
    return rc ? 1 : 0;
}
