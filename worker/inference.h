/* A trained model in memory, for what a researcher does with it after
 * training (moectl eval, moectl generate): loaded from anything
 * model_source opens, every expert in this process, no optimizer state.
 * The evaluation is the trainer's own (eval_corpus), so moectl eval on the
 * validation corpus gives the perplexity moe-worker printed. */
#ifndef INFERENCE_H
#define INFERENCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "expert_local.h"
#include "expert_shard.h"
#include "model.h"
#include "model_source.h"

/* Perplexity of `m` over a corpus read by `vb` (B streams, chunks of T):
 * the evaluation state is reset first and carried from chunk to chunk.
 * Stops once `cap` tokens are counted (0: all). With uni_logp (log p of
 * each word under a unigram model) also that model's perplexity. tok and
 * tgt hold B x T ids. 0 or the expert backend's error. */
struct eval_result {
    double ppl, unigram_ppl;
    int64_t tokens;
};
int eval_corpus(model_t *m, const struct batcher *vb, int64_t step, int64_t cap,
                const double *uni_logp, int32_t *tok, int32_t *tgt, struct eval_result *r,
                char *err, size_t errlen);

struct inference {
    struct model_source src;
    struct moe_options *cfg; /* the model's configuration */
    model_t *model;
    expert_shard_t *shard;
    hmoe_groups_t *groups;      /* a hierarchical MoE's secondary gates (or NULL) */
    struct expert_local local;  /* both, for the groups' backend */
    int B_max, T_max;
    int32_t *tok, *tgt;
};

/* Loads the model of `path` (model_source_open) for batches of at most
 * B_max x T_max (0: the model's eval_batch, unroll), with `threads`
 * threads. Sentences name what is missing
 * or malformed. 0 or an error; inference_close either way. */
int inference_open(struct inference *in, const char *path, int B_max, int T_max, int threads,
                   char *err, size_t errlen);
void inference_close(struct inference *in);

/* Perplexity of the corpus file `path` in batches of B (<= B_max) x T_max;
 * n_oov gets the corpus's words outside the vocabulary, n_unk every token
 * read as <unk> (those and the corpus's own "<unk>"). */
int inference_eval(struct inference *in, const char *path, int B, struct eval_result *r,
                   size_t *n_oov, size_t *n_unk, char *err, size_t errlen);

/* Sampling: `prompt` (n ids, may be 0) follows an <eos>, then `count`
 * words are drawn one at a time into out: at temperature 0 the most
 * probable word, else from p^(1/temperature) renormalised over the top_k
 * most probable words (0: all), with Philox keyed by (seed, position).
 * <unk> is never drawn. Returns the words drawn (up to count), or a
 * negative error. */
int inference_generate(struct inference *in, const int32_t *prompt, int n, int count,
                       double temperature, int top_k, uint64_t seed, int32_t *out, char *err,
                       size_t errlen);

#endif
