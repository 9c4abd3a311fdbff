/* The translation model of one worker (paper §5.3 and App. E: GNMT reduced
 * to 3 encoder and 2 decoder LSTM layers, with an MoE layer in each),
 * assembled from the language model's layers (layer.h) plus additive
 * attention (attention.h):
 *
 *   encoder: src -> Embedding(Vs,D) -> LSTM1 -> LSTM2 -> MoE -> LSTM3 = M
 *   decoder: tgt_in -> Embedding(Vt,D) -> LSTM1 = Q -> Attention(Q, M)
 *            -> MoE -> LSTM2 -> Softmax(Vt)
 *
 * Every block's output gets dropout and (option residual) a residual add of
 * the block's input, the embeddings' excepted (as the language model). The
 * attention block's output is therefore drop(context) + Q: the first
 * decoder LSTM's output queries the encoder outputs, and the context (plus
 * that query) is the next layer's input. All LSTMs start from a zero state
 * and are unidirectional (GNMT's bidirectional first encoder layer is not
 * reproduced). The decoder reads <eos> y1 .. yn and predicts y1 .. yn <eos>
 * (teacher forcing); the source is x1 .. xm <eos>.
 *
 * Padding: a batch is B sentence pairs padded to S source and T target
 * positions (rows b*S + s and b*T + t). The LSTMs run over the padded grid
 * (padding only follows real tokens, so it never reaches them); the MoE
 * layers and the softmax see only the real rows (packed in row order), so
 * padding is out of the gates' Importance and Load, of the experts and of
 * the loss; the attention gives padded source positions weight 0.
 *
 * The two MoE layers have their own experts behind their own backends;
 * their gating noise is keyed by the packed row index (seed for the
 * encoder's, seed + 1 for the decoder's). Buffers are allocated once;
 * passes never allocate. Single-threaded use. */
#ifndef SEQ2SEQ_H
#define SEQ2SEQ_H

#include <stdbool.h>
#include <stdint.h>

#include "layer.h"
#include "moe_layer.h"

enum { S2S_ENCODER, S2S_DECODER, S2S_N_MOE };

struct s2s_config {
    int V_src, V_tgt, D, H, E, K; /* E experts per MoE layer */
    bool residual, moe_sigmoid;
    double dropout;
    double w_importance, w_load;
    uint64_t seed;
    int B_max, S_max, T_max;      /* largest batch the buffers must hold */
};

/* One batch of B sentence pairs, b-major. src_len[b] in [1, S] and
 * tgt_len[b] in [1, T] real positions; ids past them are ignored (any
 * valid id). row0_src/row0_tgt: global index of the grid's row 0, and
 * pk0_src/pk0_tgt: of the first real token (dropout and gate noise);
 * n_global: target tokens of the global batch (the loss is their mean). */
struct s2s_batch {
    int B, S, T;
    const int32_t *src, *tgt_in, *tgt_out;
    const int *src_len, *tgt_len;
    int64_t row0_src, row0_tgt, pk0_src, pk0_tgt;
    int64_t n_global;
};

typedef struct s2s s2s_t;

/* Allocates the model and initialises its dense parameters from
 * cfg->seed by name (the gates' at zero). backends[S2S_ENCODER] and
 * [S2S_DECODER] are copied; their ctx is borrowed. NULL on bad sizes or no
 * memory. */
s2s_t *s2s_new(const struct s2s_config *cfg, const struct moe_backend backends[S2S_N_MOE]);
void s2s_destroy(s2s_t **m);
const struct s2s_config *s2s_config_of(const s2s_t *m);
void s2s_set_backend(s2s_t *m, int which, const struct moe_backend *backend);

/* Dense parameters in model order ("encoder.embedding.weight",
 * "encoder.lstm1.weight_ih_l0", ..., "decoder.attention.query.weight",
 * ..., "decoder.softmax.bias"); s2s_param_named gives w == NULL for an
 * unknown name. */
int s2s_n_params(const s2s_t *m);
struct layer_param s2s_param_at(s2s_t *m, int i);
struct layer_param s2s_param_named(s2s_t *m, const char *name);
double s2s_dense_params(const struct s2s_config *cfg);
/* About the bytes s2s_new allocates for cfg (parameters, gradients,
 * activations and caches of the largest batch; not the experts nor the
 * optimizer state), without allocating: a check before the allocation. */
double s2s_bytes(const struct s2s_config *cfg);

/* Forward pass over a batch: *xent_sum = sum of -log p over its real
 * target tokens. 0, or a negative code with a sentence (batch too large, a
 * length out of range, an expert backend failed). */
int s2s_forward(s2s_t *m, const struct s2s_batch *b, int64_t step, bool train, double *xent_sum,
                char *err, size_t errlen);

/* The last forward's Importance, Load and rows per expert of MoE layer
 * `which` (E each). */
const float *s2s_importance(const s2s_t *m, int which);
const float *s2s_load(const s2s_t *m, int which);
const int *s2s_counts(const s2s_t *m, int which);

/* Backward of the last training forward given each MoE layer's global
 * Importance and Load: clears and fills the dense gradients, sends the
 * expert gradients to the backends; *balance_loss = the two layers'
 * balancing losses summed. */
int s2s_backward(s2s_t *m, const float *const imp_global[S2S_N_MOE],
                 const float *const load_global[S2S_N_MOE], double *balance_loss, char *err,
                 size_t errlen);

/* ------------------------------------------------------------------------ */
/* Step-by-step decoding (beam search, evaluation only) */

/* Encodes one source sentence (len ids, <eos> included) for `rows`
 * hypotheses (rows <= B_max, len <= S_max) and resets the decoder's
 * state. */
int s2s_decode_begin(s2s_t *m, const int32_t *src, int len, int rows, char *err, size_t errlen);
/* Feeds tok[r] to hypothesis r (r < rows) and returns the next-token
 * probabilities (rows, V_tgt), valid until the next call. */
const float *s2s_decode_step(s2s_t *m, const int32_t *tok, char *err, size_t errlen);
/* Hypothesis r continues hypothesis from[r] (reorders the decoder's
 * state). */
void s2s_decode_reorder(s2s_t *m, const int *from);

#endif
