/* moectl translate (see moectl_translate.h). */
#include "moectl_translate.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "moe_blas.h"
#include "moe_cli.h"
#include "moe_err.h"
#include "moe_kernels.h"
#include "moe_safetensors.h"
#include "parallel.h"
#include "s2s_beam.h"
#include "s2s_checkpoint.h"

/* The source ids of one line (its words, then <eos>) into ids (room for
 * cap); the count of words, or -1 when more than cap - 1. *oov counts the
 * words the vocabulary lacks. */
static int line_source(const char *line, const vocab_t *v, int32_t *ids, int cap, long *oov)
{
    const char *w;
    size_t len;
    int n = 0;
    while ((len = pcorpus_next_word(&line, &w))) {
        if (n + 1 >= cap)
            return -1;
        ids[n] = vocab_lookup(v, w, len);
        *oov += ids[n] == VOCAB_UNK && !(len == 5 && !memcmp(w, "<unk>", 5));
        n++;
    }
    ids[n] = VOCAB_EOS;
    return n;
}

/* Every line within the model's max_len, before anything is printed. */
static int check_lengths(const struct s2s_model *x, FILE *in, const char *path)
{
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int rc = MOE_EXIT_OK;
    while (rc == MOE_EXIT_OK && getline(&line, &cap, in) >= 0) {
        int n = 0;
        lineno++;
        const char *p = line, *w;
        while (pcorpus_next_word(&p, &w))
            n++;
        if (n > x->cfg.max_len) {
            fprintf(stderr, "moectl: translate: %s: line %ld has %d tokens, more than the "
                            "model's max_len %d\n", path, lineno, n, x->cfg.max_len);
            rc = MOE_EXIT_FAILURE;
        }
    }
    free(line);
    rewind(in);
    return rc;
}

static int translate_file(struct s2s_model *x, FILE *in, const struct moectl_model_opts *o)
{
    const int S_max = x->cfg.max_len + 1;
    int32_t *src = malloc(sizeof(int32_t) * (size_t)S_max);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)(4 * S_max + 8));
    char *line = NULL, err[1024];
    size_t cap = 0;
    long lineno = 0, oov = 0;
    int rc = src && out ? MOE_EXIT_OK : MOE_EXIT_FAILURE;
    while (rc == MOE_EXIT_OK && getline(&line, &cap, in) >= 0) {
        lineno++;
        int n = line_source(line, x->vs, src, S_max, &oov);
        if (n < 0) {
            fprintf(stderr, "moectl: translate: %s: line %ld has more than %d tokens, the "
                            "model's max_len\n", o->input, lineno, x->cfg.max_len);
            rc = MOE_EXIT_FAILURE;
            break;
        }
        if (n == 0) {
            putchar('\n');
            continue;
        }
        const double want = ceil(o->max_len_ratio * (double)(n + 1));
        const struct s2s_beam_opts bo = {(int)o->beam,
                                         want < 1 ? 1 : want > 4 * S_max ? 4 * S_max : (int)want,
                                         o->length_penalty};
        int len;
        double score;
        if (s2s_beam_translate(x->m, src, n + 1, &bo, out, &len, &score, err, sizeof err)) {
            fprintf(stderr, "moectl: translate: %s: line %ld: %s\n", o->input, lineno, err);
            rc = MOE_EXIT_FAILURE;
            break;
        }
        for (int i = 0; i < len; i++)
            printf("%s%s", i ? " " : "", vocab_word(x->vt, out[i]));
        putchar('\n');
    }
    fflush(stdout);
    if (rc == MOE_EXIT_OK && ferror(in)) {
        fprintf(stderr, "moectl: translate: %s: read failed\n", o->input);
        rc = MOE_EXIT_FAILURE;
    }
    if (rc == MOE_EXIT_OK && oov)
        fprintf(stderr, "moectl: translate: %ld words of %s are not in the model's source "
                        "vocabulary of %d words: each reads as <unk>\n",
                oov, o->input, vocab_size(x->vs));
    free(line);
    free(src);
    free(out);
    return rc;
}

/* Whether `file` is a safetensors file of the given format. */
static bool has_format(const char *file, const char *format)
{
    struct stat sb;
    if (stat(file, &sb) != 0 || !S_ISREG(sb.st_mode))
        return false;
    moe_safetensors_t *st = moe_safetensors_open(file, NULL, 0);
    const char *fmt = st ? moe_safetensors_meta(st, "format") : NULL;
    const bool yes = fmt && !strcmp(fmt, format);
    moe_safetensors_close(&st);
    return yes;
}

bool moectl_is_translation(const char *ckpt)
{
    char file[4096], w0[4200];
    s2s_model_file(ckpt, file, sizeof file);
    /* or a cluster checkpoint of one, whose worker 0 wrote its dense state */
    const char *slash = strrchr(file, '/');
    snprintf(w0, sizeof w0, "%.*s/worker-0.safetensors", slash ? (int)(slash - file) : 1,
             slash ? file : ".");
    return has_format(file, S2S_FORMAT) || has_format(w0, S2S_STATE_FORMAT);
}

int moectl_translate(const char *ckpt, const struct moectl_model_opts *o)
{
    if (!o->input) {
        fprintf(stderr, "moectl: translate needs --input FILE (one sentence per line, "
                        "tokenized as the training corpus)\n");
        return MOE_EXIT_USAGE;
    }
    char err[1024];
    if (moe_kernels_init(o->argc, o->argv, "auto", err, sizeof err)) {
        fprintf(stderr, "moectl: translate: %s\n", err);
        return MOE_EXIT_FAILURE;
    }
    moe_blas_set_threads((int)o->threads);
    FILE *in = fopen(o->input, "r");
    if (!in) {
        fprintf(stderr, "moectl: translate: cannot open %s: %s\n", o->input, strerror(errno));
        return MOE_EXIT_FAILURE;
    }
    struct s2s_model x;
    int64_t step;
    if (s2s_model_load(&x, ckpt, (int)o->beam, 1, &step, err, sizeof err)) {
        fprintf(stderr, "moectl: translate: %s\n", err);
        fclose(in);
        return MOE_EXIT_FAILURE;
    }
    int rc = check_lengths(&x, in, o->input);
    if (rc == MOE_EXIT_OK)
        rc = translate_file(&x, in, o);
    fclose(in);
    s2s_model_free(&x);
    return rc;
}
