/* Parallel corpora and their batches for the translation model (worker
 * process, issue 19). Two files pair line by line: line i of the source
 * file translates line i of the target file. Tokens are separated by
 * whitespace; every sentence gets an <eos> (data.h's vocabularies, one per
 * language).
 *
 * Batches are length-sorted buckets: the pairs sorted by (source length,
 * target length, line), cut into runs of B; each batch is padded to its
 * longest source and target. An epoch visits the batches in an order
 * drawn from (seed, MOE_RNG_DATA_ORDER, epoch), so a step's batch is a
 * pure function of (corpus, B, seed, step). */
#ifndef PARALLEL_H
#define PARALLEL_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"

/* The next whitespace-separated word of the line at *pos: its start in
 * *word and its length; 0 at the end of the line, *pos then past its
 * '\n' (or at the text's end). */
size_t pcorpus_next_word(const char **pos, const char **word);

struct pcorpus {
    int n;                       /* pairs */
    int32_t *src, *tgt;          /* every sentence's ids, each ending in <eos> */
    int64_t *src_off, *tgt_off;  /* (n + 1) where sentence i starts */
    int64_t src_tokens, tgt_tokens; /* ids, <eos> included */
    int64_t src_unk, tgt_unk;    /* ids that are <unk> */
};

/* Reads the pairs of two files. Refused with one sentence naming the file
 * and line (MOE_ERR_FORMAT), nothing kept: files of different line counts,
 * an empty line (no token), a line of more than max_len tokens, no line at
 * all; a missing or unreadable file (MOE_ERR_IO). */
int pcorpus_load(struct pcorpus *c, const char *src_path, const char *tgt_path,
                 const vocab_t *vs, const vocab_t *vt, int max_len, char *err, size_t errlen);
void pcorpus_free(struct pcorpus *c);
static inline int pcorpus_src_len(const struct pcorpus *c, int i)
{
    return (int)(c->src_off[i + 1] - c->src_off[i]);
}
static inline int pcorpus_tgt_len(const struct pcorpus *c, int i)
{
    return (int)(c->tgt_off[i + 1] - c->tgt_off[i]);
}

/* The buckets of a corpus for batches of up to B pairs. */
struct pbatches {
    int n_batches, B;
    int *order;     /* (n) pair indices, length-sorted */
    int *perm;      /* (n_batches) this epoch's order of the batches */
    int64_t epoch;  /* of perm; -1 before the first */
};
int pbatches_init(struct pbatches *b, const struct pcorpus *c, int B);
void pbatches_free(struct pbatches *b);

/* One padded batch (the layout of seq2seq.h's s2s_batch): src (B*S),
 * tgt_in (<eos> y1 .. yn) and tgt_out (y1 .. yn <eos>) (B*T), lengths;
 * padding ids are 0. Buffers hold B x (max_len + 1) each. */
struct pbatch {
    int B, S, T;
    int32_t *src, *tgt_in, *tgt_out;
    int *src_len, *tgt_len;
    int64_t tokens;  /* target ids, <eos> included */
};
int pbatch_init(struct pbatch *p, int B, int max_len);
void pbatch_free(struct pbatch *p);

/* Batch i (< n_batches) in length order into p. */
void pbatches_fill(const struct pbatches *b, const struct pcorpus *c, int i, struct pbatch *p);
/* The batch of training step s (0-based): epoch s / n_batches, in that
 * epoch's order (drawn when the epoch changes). */
void pbatches_fill_step(struct pbatches *b, const struct pcorpus *c, int64_t s, uint64_t seed,
                        struct pbatch *p);

#endif
