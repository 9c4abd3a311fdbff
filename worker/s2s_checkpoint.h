/* A translation model with its experts and vocabularies, as trained by
 * moe-worker --task translate and read by moectl translate (worker
 * process and moectl; issue 19).
 *
 * Its file is one safetensors file (written atomically), self-describing
 * like the language model's checkpoints: metadata "format"
 * ("moe-translate-1"), "step", "checksum" (checkpoint.h's), "blas_kernels",
 * "config" (the model's INI text: moe_options_model_ini plus a [translate]
 * section with task, src_vocab_max, tgt_vocab_max and max_len),
 * "src_vocab" and "tgt_vocab" (vocab_to_text). Tensors, PyTorch layouts:
 *
 *   encoder.embedding.weight                  (Vs, D)
 *   encoder.lstmL.{weight_ih,weight_hh}_l0    (4D, D), L = 1, 2, 3
 *   encoder.lstmL.{bias_ih,bias_hh}_l0        (4D)
 *   encoder.moe.w_gate, encoder.moe.w_noise   (D, E)
 *   encoder.moe.experts.E.w1.weight (H, D), .w1.bias (H), .w2.weight (D, H),
 *                         .w2.bias (D)       E = 0 .. n_experts-1
 *   decoder.embedding.weight                  (Vt, D)
 *   decoder.lstmL.*                           L = 1, 2
 *   decoder.attention.query.weight, decoder.attention.key.weight  (D, D)
 *   decoder.attention.bias, decoder.attention.v                   (D)
 *   decoder.moe.w_gate, decoder.moe.w_noise, decoder.moe.experts.E.*
 *   decoder.softmax.weight (Vt, D), decoder.softmax.bias (Vt)
 *
 * The decoder's expert E has global id n_experts + E (its initialisation,
 * and its id on the wire). A training run writes its optimizer state
 * beside it (s2s_optim_save), which --resume reads. */
#ifndef S2S_CHECKPOINT_H
#define S2S_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "expert_offset.h"
#include "expert_shard.h"
#include "moe_options.h"
#include "seq2seq.h"

#define S2S_FORMAT "moe-translate-1"
#define S2S_STATE_FORMAT "moe-translate-state-1"
#define S2S_OPTIM_FORMAT "moe-translate-optim-1"

struct s2s_model {
    struct moe_options cfg;
    s2s_t *m;
    expert_shard_t *shard[S2S_N_MOE]; /* experts 0..E-1 and E..2E-1 */
    struct expert_offset off;         /* the decoder's ids */
    vocab_t *vs, *vt;
};

/* The model of configuration c for the two vocabularies (taken: *vs and
 * *vt become NULL) and batches up to B_max pairs of S_max source and T_max
 * target positions, freshly initialised. keep_grads: for training. With
 * c->experts "remote" the shards hold no expert (they live on the
 * servers; the caller fills shard[] with every expert before writing the
 * model). 0, or a negative code with a sentence; x is then empty. */
int s2s_model_init(struct s2s_model *x, const struct moe_options *c, vocab_t **vs, vocab_t **vt,
                   int B_max, int S_max, int T_max, bool keep_grads, char *err, size_t errlen);
void s2s_model_free(struct s2s_model *x);

/* Writes the model as PATH (a .safetensors file) at `step`. 0 or a
 * negative code with a sentence. */
int s2s_model_save(const struct s2s_model *x, const char *path, int64_t step, char *err,
                   size_t errlen);

/* The dense training state of a translation worker (its file of a cluster
 * checkpoint, worker-0.safetensors, while the expert servers write the
 * experts): the dense parameters as in s2s_model_save, each one's Adam
 * state (opt[i] of parameter i, moe_adam_state_size floats) as
 * "NAME.adam", and the same metadata with format "moe-translate-state-1";
 * no experts (with opt NULL, the file of a worker other than 0: no tensor). s2s_state_load reads such a file into x and opt (the same
 * configuration) and the step it holds, checking its checksum. 0, or a
 * negative code with a sentence naming the file. */
int s2s_state_save(const struct s2s_model *x, float *const *opt, const char *path, int64_t step,
                   char *err, size_t errlen);
int s2s_state_load(struct s2s_model *x, float *const *opt, const char *path, int64_t *step,
                   char *err, size_t errlen);

/* Resuming a run (moe-worker --task translate --resume PATH, PATH as for
 * s2s_model_load). s2s_optim_save writes DIR/optim.safetensors: each
 * dense parameter's Adam state ("NAME.adam"), each expert's factored-Adam
 * state ("encoder.moe.experts.E.w1.weight.fadam" ...; the shards flushed
 * to `step` first) and the step, format "moe-translate-optim-1".
 * s2s_resume_adopt takes the model's configuration into c
 * (moe_options_adopt: a flag given may not contradict its shape);
 * s2s_resume_vocabs gives its vocabularies (the caller owns them);
 * s2s_resume_load reads the parameters and the optimizer state beside
 * them into x and opt (the model's configuration and vocabularies) and the
 * step. 0, or a negative code with a sentence naming the file. */
int s2s_optim_save(struct s2s_model *x, float *const *opt, const char *dir, int64_t step,
                   char *err, size_t errlen);
int s2s_resume_adopt(struct moe_options *c, char *err, size_t errlen);
int s2s_resume_vocabs(const char *path, vocab_t **vs, vocab_t **vt, char *err, size_t errlen);
int s2s_resume_load(struct s2s_model *x, float *const *opt, const char *path, int64_t *step,
                    char *err, size_t errlen);

/* Reads a file of s2s_model_save (PATH, PATH/model.safetensors, or that of
 * the newest PATH/step-NNNNNNNN folder of a checkpoint_dir) for
 * batches up to B_max x T_max (S_max: its max_len + 1). 0, or a negative
 * code with a sentence naming the file (not a translation model, a
 * checksum mismatch, a tensor missing or of another shape). */
int s2s_model_load(struct s2s_model *x, const char *path, int B_max, int T_max, int64_t *step,
                   char *err, size_t errlen);

/* The file s2s_model_load reads for PATH into file (cap bytes). */
void s2s_model_file(const char *path, char *file, size_t cap);

#endif
