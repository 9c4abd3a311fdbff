/* moectl eval and moectl generate: a trained model run in this process
 * (worker/inference.h), from any checkpoint or export. */
#ifndef MOECTL_MODEL_H
#define MOECTL_MODEL_H

#include <stdbool.h>
#include <stdint.h>

struct moectl_model_opts {
    const char *corpus; /* eval --corpus */
    long batch;         /* eval --batch; 0: the model's eval_batch */
    long threads;       /* --threads */
    const char *prompt; /* generate --prompt; NULL: none */
    long tokens;        /* generate --tokens */
    double temperature; /* generate --temperature */
    long top_k;         /* generate --top-k; 0: all words */
    uint64_t seed;      /* generate --seed */
    const char *input;  /* translate --input */
    long beam;          /* translate --beam */
    double max_len_ratio, length_penalty; /* translate */
    bool json;
    int argc;           /* moectl's command line, for the BLAS kernel choice */
    char **argv;
};

/* Each returns the exit status (0, 1 failed, 2 usage) after printing the
 * result, or one sentence on stderr. */
int moectl_eval(const char *ckpt, const struct moectl_model_opts *o);
int moectl_generate(const char *ckpt, const struct moectl_model_opts *o);

#endif
