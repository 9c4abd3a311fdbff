/* A trained model for evaluation and sampling (see inference.h). */
#include "inference.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "expert_local.h"
#include "expert_shard.h"
#include "moe_blas.h"
#include "moe_config.h"
#include "moe_err.h"
#include "moe_rng.h"
#include "moe_tensor.h"

int eval_corpus(model_t *m, const struct batcher *vb, int64_t step, int64_t cap,
                const double *uni_logp, int32_t *tok, int32_t *tgt, struct eval_result *r,
                char *err, size_t errlen)
{
    model_reset_state(m, true);
    double sum = 0, uni = 0;
    int64_t count = 0, chunks = batcher_eval_chunks(vb);
    for (int64_t c = 0; c < chunks; c++) {
        int T = batcher_eval(vb, c, tok, tgt);
        struct model_batch b = {vb->B, T, tok, tgt, 0, (int64_t)vb->B * T};
        double xs;
        int rc = model_forward(m, &b, step, false, &xs, err, errlen);
        if (rc)
            return rc;
        sum += xs;
        for (int i = 0; uni_logp && i < vb->B * T; i++)
            uni -= uni_logp[tgt[i]];
        count += (int64_t)vb->B * T;
        if (cap > 0 && count >= cap)
            break;
    }
    r->ppl = exp(sum / (double)count);
    r->unigram_ppl = uni_logp ? exp(uni / (double)count) : NAN;
    r->tokens = count;
    return 0;
}

/* Every parameter of the model and of its experts from the source. */
static int load_params(struct inference *in, char *err, size_t errlen)
{
    int rc = 0;
    for (int p = 0; p < model_n_params(in->model) && !rc; p++) {
        moe_tensor *w = model_param_at(in->model, p).w;
        rc = model_source_read(&in->src, w->name, w->ndim, w->shape, w->data, err, errlen);
    }
    const struct model_config *mc = model_config_of(in->model);
    for (int i = 0; i < expert_shard_count(in->shard) && !rc; i++) {
        float *dst = expert_shard_params(in->shard, i);
        for (int k = 0; k < EXPERT_PARTS && !rc; k++) {
            const char *suffix;
            int nd;
            int64_t shape[2];
            size_t nst;
            char name[96];
            expert_shard_part(k, mc->D, mc->H, &suffix, &nd, shape, &nst);
            expert_shard_tensor_name(name, sizeof name, expert_shard_id(in->shard, i), k, false);
            rc = model_source_read(&in->src, name, nd, shape, dst, err, errlen);
            dst += shape[0] * (nd == 2 ? shape[1] : 1);
        }
    }
    /* a hierarchical MoE's secondary gates */
    for (int i = 0; in->groups && i < hmoe_groups_count(in->groups) && !rc; i++) {
        const int64_t shape[2] = {mc->D, mc->B};
        float *w = hmoe_groups_params(in->groups, i);
        for (int k = 0; k < 2 && !rc; k++) {
            char name[96];
            hmoe_groups_tensor_name(name, sizeof name, hmoe_groups_id(in->groups, i), k, false);
            rc = model_source_read(&in->src, name, 2, shape, w + (size_t)k * mc->D * mc->B, err,
                                   errlen);
        }
    }
    return rc;
}

int inference_open(struct inference *in, const char *path, int B_max, int T_max, int threads,
                   char *err, size_t errlen)
{
    memset(in, 0, sizeof *in);
    int rc = model_source_open(&in->src, path, err, errlen);
    if (rc)
        return rc;
    if (!(in->cfg = calloc(1, sizeof *in->cfg)))
        return MOE_ERR_NOMEM;
    if ((rc = moe_config_defaults(moe_options_table, moe_options_count, in->cfg, err, errlen)) ||
        (rc = moe_options_adopt(in->cfg, in->src.config, in->src.path, false, err, errlen)))
        return rc;
    const struct moe_options *c = in->cfg;
    expert_shard_set_group_size(moe_options_hierarchical(c) ? c->experts_per_group : 0);
    moe_blas_set_threads(threads);
    in->B_max = B_max = B_max > 0 ? B_max : c->eval_batch;
    in->T_max = T_max = T_max > 0 ? T_max : c->unroll;
    const struct model_config mc =
        model_config_from_options(c, vocab_size(in->src.vocab), B_max, T_max);
    in->shard = model_experts_from_options(c, c->n_experts, false);
    if (moe_options_hierarchical(c) && !(in->groups = hmoe_groups_from_options(c, c->groups, NULL)))
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "not enough memory for the gates of %d "
                            "groups", c->groups);
    struct moe_backend be;
    in->local = (struct expert_local){.shard = in->shard, .groups = in->groups};
    if (in->shard && in->groups)
        expert_local_group_backend(&be, &in->local);
    else if (in->shard)
        expert_local_backend(&be, in->shard);
    in->tok = malloc(sizeof(int32_t) * (size_t)B_max * (size_t)T_max);
    in->tgt = calloc((size_t)B_max * (size_t)T_max, sizeof(int32_t));
    if (!in->shard || !in->tok || !in->tgt || !(in->model = model_new(&mc, &be)))
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen,
                            "not enough memory for the model of %s (V=%d D=%d H=%d E=%d)",
                            in->src.path, mc.V, mc.D, mc.H, mc.E);
    return load_params(in, err, errlen);
}

void inference_close(struct inference *in)
{
    model_destroy(&in->model);
    expert_shard_destroy(&in->shard);
    hmoe_groups_destroy(&in->groups);
    model_source_close(&in->src);
    free(in->cfg);
    free(in->tok);
    free(in->tgt);
    memset(in, 0, sizeof *in);
}

int inference_eval(struct inference *in, const char *path, int B, struct eval_result *r,
                   size_t *n_oov, size_t *n_unk, char *err, size_t errlen)
{
    struct corpus co = {0};
    struct batcher vb;
    int rc = corpus_load(&co, path, in->src.vocab, err, errlen);
    /* a corpus shorter than B unrolls is read in shorter chunks */
    size_t per_stream = co.n > 1 ? (co.n - 1) / (size_t)B : 0;
    int T = per_stream < (size_t)in->T_max ? (int)per_stream : in->T_max;
    if (!rc && T < 1)
        rc = moe_err_fail(MOE_ERR_RANGE, err, errlen,
                          "%s: %zu tokens are too few for %d streams (--batch)", path, co.n, B);
    else if (!rc && (rc = batcher_init(&vb, &co, B, T, err, errlen))) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s: %s", path, err);
        moe_err_set(err, errlen, "%s", msg);
    }
    if (!rc)
        rc = eval_corpus(in->model, &vb, in->src.step, 0, NULL, in->tok, in->tgt, r, err, errlen);
    *n_unk = co.n_unk;
    *n_oov = co.n_oov;
    corpus_free(&co);
    return rc;
}

/* The next word from probabilities p (V): see inference_generate. */
static int32_t draw(const float *p, int V, double temperature, int top_k, uint64_t seed,
                    int64_t pos, int32_t *order)
{
    if (temperature <= 0) {
        int32_t best = VOCAB_EOS;
        for (int v = 1; v < V; v++)
            if (p[v] > p[best])
                best = v;
        return best;
    }
    /* the candidates (<unk> left out): all of them in id order, or the
     * top_k by descending probability (ties by id) */
    int n = 0;
    for (int v = 1; v < V; v++)
        order[n++] = v;
    int keep = top_k > 0 && top_k < n ? top_k : n;
    for (int i = 0; keep < n && i < keep; i++) { /* partial selection sort: keep is small */
        int b = i;
        for (int j = i + 1; j < n; j++)
            if (p[order[j]] > p[order[b]])
                b = j;
        int32_t t = order[i];
        order[i] = order[b];
        order[b] = t;
    }
    double total = 0;
    for (int i = 0; i < keep; i++)
        total += pow((double)p[order[i]], 1.0 / temperature);
    double u = (double)moe_rng_uniform(seed, MOE_RNG_SAMPLE, (uint64_t)pos, 0, 0) * total;
    for (int i = 0; i < keep; i++) {
        u -= pow((double)p[order[i]], 1.0 / temperature);
        if (u < 0)
            return order[i];
    }
    return order[keep - 1];
}

int inference_generate(struct inference *in, const int32_t *prompt, int n, int count,
                       double temperature, int top_k, uint64_t seed, int32_t *out, char *err,
                       size_t errlen)
{
    const int V = vocab_size(in->src.vocab);
    int32_t *order = malloc(sizeof(int32_t) * (size_t)V);
    if (!order)
        return MOE_ERR_NOMEM;
    model_reset_state(in->model, true);
    /* the context so far goes through in pieces of at most T_max; only
     * the last row's probabilities are used */
    int32_t eos = VOCAB_EOS;
    const int32_t *feed = &eos;
    int left = 1, rc = 0, made = 0;
    int64_t pos = 0;
    while (!rc && made < count) {
        while (left > 0 && !rc && made < count) {
            int T = left < in->T_max ? left : in->T_max;
            memcpy(in->tok, feed, sizeof(int32_t) * (size_t)T);
            memset(in->tgt, 0, sizeof(int32_t) * (size_t)T);
            struct model_batch b = {1, T, in->tok, in->tgt, 0, T};
            double xs;
            rc = model_forward(in->model, &b, in->src.step, false, &xs, err, errlen);
            feed += T;
            left -= T;
            pos += T;
            if (!rc && left == 0 && n > 0) { /* then the prompt */
                feed = prompt;
                left = n;
                n = 0;
            } else if (!rc && left == 0) {
                const float *p = model_probs(in->model) + (size_t)(T - 1) * (size_t)V;
                out[made] = draw(p, V, temperature, top_k, seed, pos, order);
                feed = &out[made++];
                left = 1;
            }
        }
    }
    free(order);
    return rc ? rc : made;
}
