/* Corpus, vocabulary and batching of the worker (DESIGN §2, §4).
 *
 * A corpus is text with one sentence per line; tokens are separated by
 * whitespace and every line gets an `<eos>` after its tokens. The
 * vocabulary is `<unk>` (id 0), `<eos>` (id 1), then the training corpus's
 * words by descending count (ties by byte order), capped at a maximum size;
 * other words map to `<unk>`.
 *
 * Batching is the usual contiguous-stream scheme: the token sequence is cut
 * into B streams of equal length, and step s reads unroll T of every stream
 * (truncated BPTT; the LSTM state is carried from one unroll to the next
 * and reset when an epoch starts over). Everything is a pure function of
 * (corpus, B, T, step), so a resumed run reads exactly the same data. */
#ifndef DATA_H
#define DATA_H

#include <stddef.h>
#include <stdint.h>

#define VOCAB_UNK 0
#define VOCAB_EOS 1

typedef struct vocab vocab_t;

/* Counts the words of `path` and keeps at most `max_size` entries (0: no
 * cap; else >= 3). NULL on error, with a sentence naming the file in err
 * (missing, unreadable, empty). Caller owns. */
vocab_t *vocab_build(const char *path, int max_size, char *err, size_t errlen);
/* Reads vocab.txt (one token per line in id order; first two lines <unk>,
 * <eos>). NULL with a sentence on error. */
vocab_t *vocab_load(const char *path, char *err, size_t errlen);
/* The vocabulary as text for a checkpoint's or an export's metadata: one
 * word per line in id order, as vocab.txt, with '%' and the bytes that are
 * not valid UTF-8 written %HH (JSON strings must be UTF-8). malloc'd, or
 * NULL when out of memory. vocab_from_text reads it back (`name` names it
 * in sentences). */
char *vocab_to_text(const vocab_t *v);
vocab_t *vocab_from_text(const char *text, const char *name, char *err, size_t errlen);

/* Writes vocab.txt atomically (temp file, fsync, rename). 0 or MOE_ERR_IO. */
int vocab_save(const vocab_t *v, const char *path, char *err, size_t errlen);
void vocab_destroy(vocab_t **v);
int vocab_size(const vocab_t *v);
const char *vocab_word(const vocab_t *v, int id);
/* Id of `word` (len bytes), VOCAB_UNK if absent. */
int32_t vocab_lookup(const vocab_t *v, const char *word, size_t len);
/* Count of each id in the corpus the vocabulary was built from (NULL for a
 * loaded vocabulary). */
const int64_t *vocab_counts(const vocab_t *v);

struct corpus {
    int32_t *ids;
    size_t n;       /* tokens including <eos> */
    size_t n_unk;   /* tokens that mapped to <unk> */
    size_t n_oov;   /* of those, the words not in the vocabulary (not "<unk>" itself) */
};

/* Reads `path` into ids. Error (with a sentence naming the file) if it is
 * missing, unreadable or has no word at all. */
int corpus_load(struct corpus *c, const char *path, const vocab_t *v, char *err, size_t errlen);
void corpus_free(struct corpus *c);

/* Streams of a corpus for batches of B x T. */
struct batcher {
    const int32_t *ids;
    int B, T;
    size_t stream_len;   /* predictions per stream: (n - 1) / B */
    int64_t chunks;      /* full unrolls per epoch (training) */
};

/* 0, or MOE_ERR_RANGE with a sentence if the corpus is too small for one
 * B x T batch. */
int batcher_init(struct batcher *b, const struct corpus *c, int B, int T, char *err,
                 size_t errlen);

/* Training batch of 0-based step s: fills tok and tgt (B,T) b-major, rows
 * of streams [b0, b0 + nb) only (a worker's shard; b0 = 0, nb = B for all).
 * Returns 1 if this step starts a new epoch (state must be reset), else 0. */
int batcher_train(const struct batcher *b, int64_t s, int b0, int nb, int32_t *tok, int32_t *tgt);

/* Evaluation chunk c (0-based) of the whole stream, for c < eval_chunks():
 * the last chunk may be shorter; returns its T. */
int64_t batcher_eval_chunks(const struct batcher *b);
int batcher_eval(const struct batcher *b, int64_t c, int32_t *tok, int32_t *tgt);

#endif
