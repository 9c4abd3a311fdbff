/* moectl eval and generate (see moectl_model.h). */
#include "moectl_model.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inference.h"
#include "moe_cli.h"
#include "moe_err.h"
#include "moe_kernels.h"

/* Opens the model for batches of B (0: the model's eval_batch) x its
 * unroll; the exit status on failure, -1 on success. */
static int open_model(struct inference *in, const struct moectl_model_opts *o, const char *ckpt,
                      const char *what, long batch)
{
    char err[1024];
    memset(in, 0, sizeof *in);
    /* the kernels moe-worker would choose (it may re-execute moectl), so
     * that the bits are a worker's */
    if (moe_kernels_init(o->argc, o->argv, "auto", err, sizeof err) ||
        inference_open(in, ckpt, (int)batch, 0, (int)o->threads, err, sizeof err)) {
        fprintf(stderr, "moectl: %s: %s\n", what, err);
        return MOE_EXIT_FAILURE;
    }
    return -1;
}

int moectl_eval(const char *ckpt, const struct moectl_model_opts *o)
{
    if (!o->corpus) {
        fprintf(stderr, "moectl: eval needs --corpus FILE (the text to measure, one sentence "
                        "per line)\n");
        return MOE_EXIT_USAGE;
    }
    struct inference in;
    int rc = open_model(&in, o, ckpt, "eval", o->batch);
    if (rc >= 0) {
        inference_close(&in);
        return rc;
    }
    struct eval_result r;
    size_t n_unk = 0, n_oov = 0;
    char err[1024];
    if ((rc = inference_eval(&in, o->corpus, in.B_max, &r, &n_oov, &n_unk, err, sizeof err))) {
        fprintf(stderr, "moectl: eval: %s\n", err);
        inference_close(&in);
        return MOE_EXIT_FAILURE;
    }
    const int V = vocab_size(in.src.vocab);
    if (o->json) {
        json_t *j = json_pack("{s:s, s:I, s:s, s:f, s:I, s:I, s:I, s:i, s:i, s:i, s:i}",
                              "model", in.src.path, "step", (json_int_t)in.src.step, "corpus",
                              o->corpus, "perplexity", r.ppl, "tokens", (json_int_t)r.tokens,
                              "unk", (json_int_t)n_unk, "out_of_vocabulary", (json_int_t)n_oov,
                              "vocab_size", V, "batch", in.B_max, "unroll", in.T_max, "threads",
                              (int)o->threads);
        char *s = j ? json_dumps(j, JSON_REAL_PRECISION(17)) : NULL;
        puts(s ? s : "null");
        free(s);
        json_decref(j);
    } else {
        printf("perplexity %.2f on %s: %lld tokens predicted, batch %d x %d, model of step %lld "
               "(%s)\n",
               r.ppl, o->corpus, (long long)r.tokens, in.B_max, in.T_max,
               (long long)in.src.step, in.src.path);
        if (n_oov)
            printf("%zu words of %s are not in the model's vocabulary of %d words: each "
                   "counts as <unk>\n",
                   n_oov, o->corpus, V);
        if (n_unk > n_oov)
            printf("%zu tokens of %s are <unk> in the text itself\n", n_unk - n_oov, o->corpus);
    }
    inference_close(&in);
    return MOE_EXIT_OK;
}

/* The prompt's words as ids; words outside the vocabulary are named on
 * stderr and read as <unk>. Returns the count, or -1 when out of memory. */
static int prompt_ids(const vocab_t *v, const char *prompt, int32_t **out)
{
    size_t cap = strlen(prompt) / 2 + 1;
    int32_t *ids = malloc(sizeof(int32_t) * cap);
    if (!ids)
        return -1;
    int n = 0;
    for (const char *p = prompt; *p;) {
        p += strspn(p, " \t\r\n");
        size_t len = strcspn(p, " \t\r\n");
        if (!len)
            break;
        ids[n] = vocab_lookup(v, p, len);
        if (ids[n] == VOCAB_UNK && !(len == 5 && !memcmp(p, "<unk>", 5)))
            fprintf(stderr, "moectl: generate: the prompt's word \"%.*s\" is not in the model's "
                            "vocabulary (%d words): it reads as <unk>\n",
                    (int)len, p, vocab_size(v));
        n++;
        p += len;
    }
    *out = ids;
    return n;
}

int moectl_generate(const char *ckpt, const struct moectl_model_opts *o)
{
    struct inference in;
    int rc = open_model(&in, o, ckpt, "generate", 1);
    if (rc >= 0) {
        inference_close(&in);
        return rc;
    }
    int32_t *prompt = NULL;
    int n = o->prompt ? prompt_ids(in.src.vocab, o->prompt, &prompt) : 0;
    int32_t *out = malloc(sizeof(int32_t) * (size_t)o->tokens);
    char err[1024];
    int made = n < 0 || !out ? MOE_ERR_NOMEM
                             : inference_generate(&in, prompt, n, (int)o->tokens, o->temperature,
                                                  (int)o->top_k, o->seed, out, err, sizeof err);
    if (made < 0) {
        fprintf(stderr, "moectl: generate: %s\n", made == MOE_ERR_NOMEM ? "out of memory" : err);
        rc = MOE_EXIT_FAILURE;
    } else {
        /* the prompt as given, then the words drawn; <eos> ends a line */
        const char *sep = "";
        for (int i = 0; i < n; i++, sep = " ")
            printf("%s%s", sep, vocab_word(in.src.vocab, prompt[i]));
        for (int i = 0; i < made; i++) {
            if (out[i] == VOCAB_EOS) {
                putchar('\n');
                sep = "";
            } else {
                printf("%s%s", sep, vocab_word(in.src.vocab, out[i]));
                sep = " ";
            }
        }
        if (*sep)
            putchar('\n');
        rc = MOE_EXIT_OK;
    }
    free(prompt);
    free(out);
    inference_close(&in);
    return rc;
}
