/* moectl bleu: corpus BLEU-4 of tokenized hypotheses against one reference
 * per line (Papineni et al. 2002), as NLTK's corpus_bleu computes it with
 * its default weights (0.25 each) and no smoothing. Runs in moectl only;
 * pure computation on token ids plus one command that reads two files.
 *
 *   p_n  = sum over lines of clipped n-gram matches
 *          / sum over lines of max(1, |hyp| - n + 1)
 *   BP   = 1 if c > r, 0 if c = 0, else exp(1 - r / c)
 *          (c: hypothesis tokens, r: reference tokens, over the corpus)
 *   BLEU = BP * exp(sum_n 0.25 log p_n), 0 when some p_n is 0
 *
 * The max(1, .) of the denominator is NLTK's: a hypothesis shorter than n
 * tokens counts one unmatched n-gram (standard BLEU counts none). */
#ifndef MOECTL_BLEU_H
#define MOECTL_BLEU_H

#include <stdint.h>

#define BLEU_N 4

struct bleu_stats {
    int64_t match[BLEU_N]; /* clipped n-gram matches, n = 1..4 */
    int64_t total[BLEU_N]; /* hypothesis n-grams, at least 1 per line */
    int64_t hyp_len, ref_len;
};

/* Adds one line pair: ids of the reference (nr) and the hypothesis (nh).
 * Equal ids are equal tokens. 0 or MOE_ERR_NOMEM. */
int bleu_add_line(struct bleu_stats *s, const int32_t *ref, int nr, const int32_t *hyp, int nh);

/* The corpus score in [0, 1]; precisions p[n-1] and the brevity penalty
 * into p and bp when not NULL. */
double bleu_score(const struct bleu_stats *s, double p[BLEU_N], double *bp);

/* moectl bleu REF HYP: prints the score; 0, or 1 with one sentence on
 * stderr (a file missing or unreadable, or the two of different line
 * counts). */
int moectl_bleu(const char *ref_path, const char *hyp_path);

#endif
