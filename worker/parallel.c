/* Parallel corpora and length-sorted batches (see parallel.h). */
#include "parallel.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_err.h"
#include "moe_rng.h"

/* ------------------------------------------------------------------------ */
/* Reading */

struct text {
    char *buf;
    size_t len;
    int lines; /* a last line without '\n' counts */
};

static int text_read(struct text *t, const char *path, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    FILE *f = fopen(path, "rb");
    if (!f)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16;
    t->buf = malloc(cap);
    for (;;) {
        if (t->buf && t->len + 1 >= cap) {
            char *nb = realloc(t->buf, cap * 2);
            if (!nb) {
                free(t->buf);
                t->buf = NULL;
            }
            t->buf = nb;
            cap *= 2;
        }
        if (!t->buf) {
            fclose(f);
            return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "%s: out of memory", path);
        }
        size_t got = fread(t->buf + t->len, 1, cap - 1 - t->len, f);
        t->len += got;
        if (got == 0)
            break;
    }
    const bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(t->buf);
        t->buf = NULL;
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: read failed", path);
    }
    t->buf[t->len] = '\0';
    for (size_t i = 0; i < t->len; i++)
        t->lines += t->buf[i] == '\n';
    t->lines += t->len > 0 && t->buf[t->len - 1] != '\n';
    return 0;
}

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

size_t pcorpus_next_word(const char **pos, const char **word)
{
    const char *p = *pos;
    while (is_blank(*p))
        p++;
    if (*p == '\n' || !*p) {
        *pos = *p ? p + 1 : p;
        return 0;
    }
    *word = p;
    while (*p && *p != '\n' && !is_blank(*p))
        p++;
    *pos = p;
    return (size_t)(p - *word);
}

/* The tokens of the line at *pos (advanced past it): their ids into ids
 * (when not NULL) and their count. */
static int line_tokens(const char **pos, const vocab_t *v, int32_t *ids)
{
    const char *w;
    size_t len;
    int n = 0;
    while ((len = pcorpus_next_word(pos, &w))) {
        if (ids)
            ids[n] = vocab_lookup(v, w, len);
        n++;
    }
    return n;
}

/* Checks every line of one side and fills its ids and offsets. */
static int side_load(const struct text *t, const char *path, const vocab_t *v, int max_len,
                     int32_t **ids_out, int64_t **off_out, int64_t *tokens, int64_t *unk,
                     char *err, size_t errlen)
{
    const char *p = t->buf;
    int64_t total = 0;
    for (int i = 0; i < t->lines; i++) {
        int n = line_tokens(&p, v, NULL);
        if (n == 0)
            return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                                "%s: line %d is empty; every line must hold a sentence", path,
                                i + 1);
        if (n > max_len)
            return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                                "%s: line %d has %d tokens, more than --max-len %d", path, i + 1,
                                n, max_len);
        total += n + 1;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(total > 0 ? total : 1));
    int64_t *off = malloc(sizeof(int64_t) * (size_t)(t->lines + 1));
    if (!ids || !off) {
        free(ids);
        free(off);
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "%s: out of memory", path);
    }
    p = t->buf;
    off[0] = 0;
    *unk = 0;
    for (int i = 0; i < t->lines; i++) {
        int n = line_tokens(&p, v, ids + off[i]);
        ids[off[i] + n] = VOCAB_EOS;
        off[i + 1] = off[i] + n + 1;
        for (int k = 0; k < n; k++)
            *unk += ids[off[i] + k] == VOCAB_UNK;
    }
    *ids_out = ids;
    *off_out = off;
    *tokens = total;
    return 0;
}

int pcorpus_load(struct pcorpus *c, const char *src_path, const char *tgt_path,
                 const vocab_t *vs, const vocab_t *vt, int max_len, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    struct text s, t = {0};
    int rc = text_read(&s, src_path, err, errlen);
    if (!rc)
        rc = text_read(&t, tgt_path, err, errlen);
    if (!rc && s.lines != t.lines)
        rc = moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                          "%s has %d lines and %s has %d; line i of one must translate line i of "
                          "the other",
                          src_path, s.lines, tgt_path, t.lines);
    if (!rc && s.lines == 0)
        rc = moe_err_fail(MOE_ERR_FORMAT, err, errlen, "%s: no sentence at all", src_path);
    if (!rc)
        rc = side_load(&s, src_path, vs, max_len, &c->src, &c->src_off, &c->src_tokens,
                       &c->src_unk, err, errlen);
    if (!rc)
        rc = side_load(&t, tgt_path, vt, max_len, &c->tgt, &c->tgt_off, &c->tgt_tokens,
                       &c->tgt_unk, err, errlen);
    c->n = s.lines;
    free(s.buf);
    free(t.buf);
    if (rc)
        pcorpus_free(c);
    return rc;
}

void pcorpus_free(struct pcorpus *c)
{
    free(c->src);
    free(c->tgt);
    free(c->src_off);
    free(c->tgt_off);
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------------------ */
/* Batches */

/* qsort has no context: the corpus being sorted, set around the call. */
static const struct pcorpus *sort_corpus;

static int by_length(const void *a, const void *b)
{
    const int i = *(const int *)a, j = *(const int *)b;
    const int si = pcorpus_src_len(sort_corpus, i), sj = pcorpus_src_len(sort_corpus, j);
    if (si != sj)
        return si < sj ? -1 : 1;
    const int ti = pcorpus_tgt_len(sort_corpus, i), tj = pcorpus_tgt_len(sort_corpus, j);
    if (ti != tj)
        return ti < tj ? -1 : 1;
    return i < j ? -1 : i > j;
}

int pbatches_init(struct pbatches *b, const struct pcorpus *c, int B)
{
    memset(b, 0, sizeof *b);
    b->B = B;
    b->n_batches = (c->n + B - 1) / B;
    b->epoch = -1;
    b->order = malloc(sizeof(int) * (size_t)c->n);
    b->perm = malloc(sizeof(int) * (size_t)b->n_batches);
    if (!b->order || !b->perm) {
        pbatches_free(b);
        return MOE_ERR_NOMEM;
    }
    for (int i = 0; i < c->n; i++)
        b->order[i] = i;
    sort_corpus = c;
    qsort(b->order, (size_t)c->n, sizeof(int), by_length);
    sort_corpus = NULL;
    return 0;
}

void pbatches_free(struct pbatches *b)
{
    free(b->order);
    free(b->perm);
    memset(b, 0, sizeof *b);
}

int pbatch_init(struct pbatch *p, int B, int max_len)
{
    memset(p, 0, sizeof *p);
    const size_t n = (size_t)B * (size_t)(max_len + 1);
    p->src = calloc(n, sizeof(int32_t));
    p->tgt_in = calloc(n, sizeof(int32_t));
    p->tgt_out = calloc(n, sizeof(int32_t));
    p->src_len = calloc((size_t)B, sizeof(int));
    p->tgt_len = calloc((size_t)B, sizeof(int));
    if (!p->src || !p->tgt_in || !p->tgt_out || !p->src_len || !p->tgt_len) {
        pbatch_free(p);
        return MOE_ERR_NOMEM;
    }
    return 0;
}

void pbatch_free(struct pbatch *p)
{
    free(p->src);
    free(p->tgt_in);
    free(p->tgt_out);
    free(p->src_len);
    free(p->tgt_len);
    memset(p, 0, sizeof *p);
}

void pbatches_fill(const struct pbatches *b, const struct pcorpus *c, int i, struct pbatch *p)
{
    const int *pairs = b->order + (size_t)i * b->B;
    const int n = i == b->n_batches - 1 ? c->n - i * b->B : b->B;
    p->B = n;
    p->S = p->T = 1;
    for (int k = 0; k < n; k++) {
        const int sl = pcorpus_src_len(c, pairs[k]), tl = pcorpus_tgt_len(c, pairs[k]);
        p->S = sl > p->S ? sl : p->S;
        p->T = tl > p->T ? tl : p->T;
    }
    memset(p->src, 0, sizeof(int32_t) * (size_t)n * p->S);
    memset(p->tgt_in, 0, sizeof(int32_t) * (size_t)n * p->T);
    memset(p->tgt_out, 0, sizeof(int32_t) * (size_t)n * p->T);
    p->tokens = 0;
    for (int k = 0; k < n; k++) {
        const int j = pairs[k], sl = pcorpus_src_len(c, j), tl = pcorpus_tgt_len(c, j);
        const int32_t *s = c->src + c->src_off[j], *t = c->tgt + c->tgt_off[j];
        memcpy(p->src + (size_t)k * p->S, s, sizeof(int32_t) * (size_t)sl);
        /* decoder input <eos> y1 .. yn, target y1 .. yn <eos> */
        p->tgt_in[(size_t)k * p->T] = VOCAB_EOS;
        memcpy(p->tgt_in + (size_t)k * p->T + 1, t, sizeof(int32_t) * (size_t)(tl - 1));
        memcpy(p->tgt_out + (size_t)k * p->T, t, sizeof(int32_t) * (size_t)tl);
        p->src_len[k] = sl;
        p->tgt_len[k] = tl;
        p->tokens += tl;
    }
}

void pbatches_fill_step(struct pbatches *b, const struct pcorpus *c, int64_t s, uint64_t seed,
                        struct pbatch *p)
{
    const int64_t epoch = s / b->n_batches;
    if (epoch != b->epoch) {
        /* Fisher-Yates with draws keyed by (epoch, position) */
        for (int i = 0; i < b->n_batches; i++)
            b->perm[i] = i;
        for (int i = b->n_batches - 1; i > 0; i--) {
            const float u = moe_rng_uniform(seed, MOE_RNG_DATA_ORDER, (uint64_t)epoch,
                                            (uint32_t)i, 0);
            int j = (int)(u * (float)(i + 1));
            j = j > i ? i : j;
            const int tmp = b->perm[i];
            b->perm[i] = b->perm[j];
            b->perm[j] = tmp;
        }
        b->epoch = epoch;
    }
    pbatches_fill(b, c, b->perm[s % b->n_batches], p);
}
