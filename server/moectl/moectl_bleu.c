/* Corpus BLEU-4 (see moectl_bleu.h). Runs in moectl. Tokens are interned
 * through the reference's vocabulary (worker/data.h); a hypothesis word
 * the reference never uses gets an id of its own below zero, so it can
 * match nothing. */
#include "moectl_bleu.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "moe_err.h"
#include "parallel.h"

/* ------------------------------------------------------------------ */
/* Counting                                                            */

struct ngram {
    int32_t w[BLEU_N];
};

static int ngram_cmp(const void *a, const void *b)
{
    const struct ngram *x = a, *y = b;
    for (int i = 0; i < BLEU_N; i++)
        if (x->w[i] != y->w[i])
            return x->w[i] < y->w[i] ? -1 : 1;
    return 0;
}

/* The sorted n-grams of ids[0..len) into out (room for len); their count. */
static int ngrams_sorted(struct ngram *out, const int32_t *ids, int len, int n)
{
    int m = len - n + 1 > 0 ? len - n + 1 : 0;
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < BLEU_N; j++)
            out[i].w[j] = j < n ? ids[i + j] : INT32_MIN;
    }
    qsort(out, (size_t)m, sizeof *out, ngram_cmp);
    return m;
}

int bleu_add_line(struct bleu_stats *s, const int32_t *ref, int nr, const int32_t *hyp, int nh)
{
    struct ngram *r = malloc(sizeof *r * (size_t)(nr > 0 ? nr : 1));
    struct ngram *h = malloc(sizeof *h * (size_t)(nh > 0 ? nh : 1));
    if (!r || !h) {
        free(r);
        free(h);
        return MOE_ERR_NOMEM;
    }
    for (int n = 1; n <= BLEU_N; n++) {
        int mr = ngrams_sorted(r, ref, nr, n), mh = ngrams_sorted(h, hyp, nh, n);
        /* Merge the two sorted lists: each distinct n-gram matches
         * min(count in hypothesis, count in reference) times. */
        int i = 0, j = 0;
        while (i < mh) {
            int i_end = i;
            while (i_end < mh && ngram_cmp(&h[i_end], &h[i]) == 0)
                i_end++;
            while (j < mr && ngram_cmp(&r[j], &h[i]) < 0)
                j++;
            int j_end = j;
            while (j_end < mr && ngram_cmp(&r[j_end], &h[i]) == 0)
                j_end++;
            s->match[n - 1] += i_end - i < j_end - j ? i_end - i : j_end - j;
            i = i_end;
            j = j_end;
        }
        s->total[n - 1] += mh > 1 ? mh : 1;
    }
    s->hyp_len += nh;
    s->ref_len += nr;
    free(r);
    free(h);
    return 0;
}

double bleu_score(const struct bleu_stats *s, double p[BLEU_N], double *bp_out)
{
    double bp;
    if (s->hyp_len > s->ref_len)
        bp = 1;
    else if (s->hyp_len == 0)
        bp = 0;
    else
        bp = exp(1 - (double)s->ref_len / (double)s->hyp_len);
    double sum = 0;
    int zero = 0;
    for (int n = 0; n < BLEU_N; n++) {
        double pn = s->total[n] ? (double)s->match[n] / (double)s->total[n] : 0;
        if (p)
            p[n] = pn;
        if (pn > 0)
            sum += 0.25 * log(pn);
        else
            zero = 1;
    }
    if (bp_out)
        *bp_out = bp;
    return zero ? 0 : bp * exp(sum);
}

/* ------------------------------------------------------------------ */
/* The command                                                         */

/* A whole file, NUL-terminated, and its number of lines (a last line
 * without '\n' counts). NULL with errno on failure. */
static char *slurp(const char *path, long *n_lines)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf)
            break;
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                errno = ENOMEM;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - 1 - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) {
                free(buf);
                buf = NULL;
                errno = EIO;
            }
            break;
        }
    }
    fclose(f);
    if (!buf)
        return NULL;
    buf[len] = '\0';
    long n = 0;
    for (size_t i = 0; i < len; i++)
        n += buf[i] == '\n';
    *n_lines = n + (len > 0 && buf[len - 1] != '\n');
    return buf;
}

/* The ids of the line at *pos (advanced past it) into ids (room: the
 * line's length); its token count. Unknown words get ids from *next_oov
 * downwards. */
static int line_ids(const char **pos, const vocab_t *v, int32_t *ids, int32_t *next_oov)
{
    const char *w;
    size_t len;
    int n = 0;
    while ((len = pcorpus_next_word(pos, &w))) {
        int32_t id = vocab_lookup(v, w, len);
        if (id == VOCAB_UNK && !(len == 5 && memcmp(w, "<unk>", 5) == 0))
            id = (*next_oov)--;
        ids[n++] = id;
    }
    return n;
}

int moectl_bleu(const char *ref_path, const char *hyp_path)
{
    long n_ref = 0, n_hyp = 0;
    int rc = 1;
    char err[512];
    int32_t *ri = NULL, *hi = NULL;
    vocab_t *v = NULL;
    char *ref = slurp(ref_path, &n_ref), *hyp = NULL;
    if (!ref) {
        fprintf(stderr, "moectl: bleu: cannot read %s: %s\n", ref_path, strerror(errno));
        goto out;
    }
    hyp = slurp(hyp_path, &n_hyp);
    if (!hyp) {
        fprintf(stderr, "moectl: bleu: cannot read %s: %s\n", hyp_path, strerror(errno));
        goto out;
    }
    if (n_ref != n_hyp) {
        fprintf(stderr,
                "moectl: bleu: %s has %ld lines and %s has %ld; line i of one must be the "
                "reference or translation of line i of the other\n",
                ref_path, n_ref, hyp_path, n_hyp);
        goto out;
    }
    v = vocab_build(ref_path, 0, err, sizeof err);
    if (!v) {
        fprintf(stderr, "moectl: bleu: %s\n", err);
        goto out;
    }
    ri = malloc(sizeof *ri * (strlen(ref) + 1));
    hi = malloc(sizeof *hi * (strlen(hyp) + 1));
    if (!ri || !hi) {
        fprintf(stderr, "moectl: bleu: out of memory\n");
        goto out;
    }
    struct bleu_stats s;
    memset(&s, 0, sizeof s);
    const char *rp = ref, *hp = hyp;
    int32_t next_oov = -1;
    for (long i = 0; i < n_ref; i++) {
        int nr = line_ids(&rp, v, ri, &next_oov);
        int nh = line_ids(&hp, v, hi, &next_oov);
        if (bleu_add_line(&s, ri, nr, hi, nh)) {
            fprintf(stderr, "moectl: bleu: out of memory\n");
            goto out;
        }
    }
    double p[BLEU_N], bp;
    double b = bleu_score(&s, p, &bp);
    printf("BLEU = %.4f (%.10f): 1-4 gram precisions %.4f/%.4f/%.4f/%.4f, brevity penalty %.4f "
           "(hypothesis %lld, reference %lld tokens, %ld lines)\n",
           100 * b, b, p[0], p[1], p[2], p[3], bp, (long long)s.hyp_len, (long long)s.ref_len,
           n_ref);
    rc = 0;
out:
    free(ri);
    free(hi);
    vocab_destroy(&v);
    free(ref);
    free(hyp);
    return rc;
}
