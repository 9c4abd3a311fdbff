/* Beam search of the translation model (worker library; used by moectl
 * translate). GNMT's length normalisation (Wu et al. 2016, eq. 14, without
 * the coverage penalty): a finished hypothesis Y of log-probability
 * log P(Y|X) scores
 *
 *   s(Y) = log P(Y|X) / lp(Y),   lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha
 *
 * with |Y| its words, <eos> included (every hypothesis ends in one).
 *
 * Each step extends the K live hypotheses by every word and keeps the K
 * best by log-probability (ties: the earlier hypothesis, then the lower
 * word id); a kept candidate ending in <eos> is finished, the others
 * stay live. The search stops when K hypotheses have finished or after
 * max_len words (the live ones are then finished as they are); the
 * finished hypothesis of best s(Y) wins (ties: the one finished first).
 * With K = 1 this is greedy decoding. Everything is a pure function of
 * the model and the source: the same translation every run. */
#ifndef S2S_BEAM_H
#define S2S_BEAM_H

#include <stddef.h>
#include <stdint.h>

#include "seq2seq.h"

struct s2s_beam_opts {
    int beam;       /* K, 1 .. the model's B_max */
    int max_len;    /* most words of a translation, <eos> included */
    double alpha;   /* length penalty exponent (0: none) */
};

/* Translates src (len ids, ending in <eos>) into out (room for
 * o->max_len ids; the <eos> is not written) and *out_len; *score gets
 * s(Y). 0, or a negative code with a sentence. */
int s2s_beam_translate(s2s_t *m, const int32_t *src, int len, const struct s2s_beam_opts *o,
                       int32_t *out, int *out_len, double *score, char *err, size_t errlen);

#endif
