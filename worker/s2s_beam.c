/* Beam search with GNMT's length normalisation (see s2s_beam.h). */
#include "s2s_beam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "moe_err.h"

struct cand {
    double logp;
    int hyp;
    int32_t word;
};

/* Better first: higher log-probability, then the earlier hypothesis, then
 * the lower word. */
static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->logp != y->logp)
        return x->logp > y->logp ? -1 : 1;
    if (x->hyp != y->hyp)
        return x->hyp < y->hyp ? -1 : 1;
    return x->word < y->word ? -1 : x->word > y->word;
}

/* The K best words of one row of probabilities as candidates of
 * hypothesis h (score: its log-probability so far) into c; their count. */
static int row_best(struct cand *c, const float *p, int V, int K, int h, double score)
{
    int n = 0;
    for (int32_t w = 0; w < V; w++) {
        if (!(p[w] > 0))
            continue;
        const struct cand x = {score + log((double)p[w]), h, w};
        if (n == K && cand_cmp(&x, &c[n - 1]) >= 0)
            continue;
        int i = n < K ? n++ : K - 1;
        while (i > 0 && cand_cmp(&x, &c[i - 1]) < 0) {
            c[i] = c[i - 1];
            i--;
        }
        c[i] = x;
    }
    return n;
}

static double length_penalty(int len, double alpha)
{
    return pow((5.0 + len) / 6.0, alpha);
}

struct beam {
    int K, L;
    int32_t *hist, *nhist;   /* (K, L) words of the live hypotheses */
    double *score, *nscore;  /* (K) their log-probabilities */
    int32_t *tok;            /* (K) the words fed next */
    int *from;               /* (K) parent of each new hypothesis */
    struct cand *cands;      /* (K * K) */
    int32_t *best;           /* (L) the best finished hypothesis */
    int best_len, n_fin;
    double best_score;
};

/* A finished hypothesis: words (len, <eos> not included) of total
 * log-probability logp and |Y| = ylen. */
static void finish(struct beam *b, const int32_t *words, int len, int ylen, double logp,
                   double alpha)
{
    const double s = logp / length_penalty(ylen, alpha);
    if (b->n_fin++ == 0 || s > b->best_score) {
        b->best_score = s;
        b->best_len = len;
        memcpy(b->best, words, sizeof(int32_t) * (size_t)len);
    }
}

/* One step of the search from probabilities p (live rows); returns the
 * number of live hypotheses after it. */
static int beam_step(struct beam *b, const float *p, int V, int live, int t, double alpha)
{
    const int K = b->K, L = b->L;
    int n = 0;
    for (int h = 0; h < live; h++)
        n += row_best(b->cands + n, p + (size_t)h * V, V, K, h, b->score[h]);
    qsort(b->cands, (size_t)n, sizeof *b->cands, cand_cmp);
    int nl = 0;
    for (int i = 0; i < n && nl < K && b->n_fin < K; i++) {
        const struct cand *c = &b->cands[i];
        const int32_t *prev = b->hist + (size_t)c->hyp * L;
        if (c->word == VOCAB_EOS) {
            if (i < K)
                finish(b, prev, t, t + 1, c->logp, alpha);
            continue;
        }
        int32_t *h = b->nhist + (size_t)nl * L;
        memcpy(h, prev, sizeof(int32_t) * (size_t)t);
        h[t] = c->word;
        b->nscore[nl] = c->logp;
        b->from[nl] = c->hyp;
        b->tok[nl] = c->word;
        nl++;
    }
    for (int r = nl; r < K; r++) {
        b->from[r] = 0;
        b->tok[r] = VOCAB_EOS;
    }
    int32_t *th = b->hist;
    b->hist = b->nhist;
    b->nhist = th;
    double *ts = b->score;
    b->score = b->nscore;
    b->nscore = ts;
    return nl;
}

static void beam_free(struct beam *b)
{
    free(b->hist);
    free(b->nhist);
    free(b->score);
    free(b->nscore);
    free(b->tok);
    free(b->from);
    free(b->cands);
    free(b->best);
}

int s2s_beam_translate(s2s_t *m, const int32_t *src, int len, const struct s2s_beam_opts *o,
                       int32_t *out, int *out_len, double *score, char *err, size_t errlen)
{
    const int K = o->beam, L = o->max_len, V = s2s_config_of(m)->V_tgt;
    if (K < 1 || L < 1)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen, "beam %d and length %d must be >= 1", K,
                            L);
    struct beam b = {.K = K, .L = L};
    b.hist = calloc((size_t)K * L, sizeof(int32_t));
    b.nhist = calloc((size_t)K * L, sizeof(int32_t));
    b.score = calloc((size_t)K, sizeof(double));
    b.nscore = calloc((size_t)K, sizeof(double));
    b.tok = calloc((size_t)K, sizeof(int32_t));
    b.from = calloc((size_t)K, sizeof(int));
    b.cands = calloc((size_t)K * K, sizeof(struct cand));
    b.best = calloc((size_t)L, sizeof(int32_t));
    int rc = 0;
    if (!b.hist || !b.nhist || !b.score || !b.nscore || !b.tok || !b.from || !b.cands || !b.best)
        rc = moe_err_fail(MOE_ERR_NOMEM, err, errlen, "out of memory for a beam of %d", K);
    if (!rc)
        rc = s2s_decode_begin(m, src, len, K, err, errlen);
    for (int r = 0; r < K; r++)
        b.tok[r] = VOCAB_EOS;
    int live = 1, t = 0;
    for (; !rc && t < L && live > 0 && b.n_fin < K; t++) {
        const float *p = s2s_decode_step(m, b.tok, err, errlen);
        if (!p) {
            rc = MOE_ERR_STATE;
            break;
        }
        live = beam_step(&b, p, V, live, t, o->alpha);
        s2s_decode_reorder(m, b.from);
    }
    /* out of length: the live hypotheses end here */
    for (int h = 0; !rc && b.n_fin < K && h < live; h++)
        finish(&b, b.hist + (size_t)h * L, t, t, b.score[h], o->alpha);
    if (!rc) {
        memcpy(out, b.best, sizeof(int32_t) * (size_t)b.best_len);
        *out_len = b.best_len;
        *score = b.best_score;
    }
    beam_free(&b);
    return rc;
}
