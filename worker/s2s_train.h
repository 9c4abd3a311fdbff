/* moe-worker --task translate: trains the translation model (seq2seq.h) on
 * a parallel corpus (issue 19). Reads
 * src_train/tgt_train (and src_valid/tgt_valid), builds one vocabulary
 * per language (src_vocab_max, tgt_vocab_max), trains `steps` steps of
 * length-sorted batches of `batch` pairs (parallel.h) with teacher forcing,
 * dense Adam and factored Adam for the experts under the language model's
 * learning-rate schedule, prints a progress line every log_every steps and
 * the validation perplexity every valid_every steps and at the end, and
 * writes the model (s2s_checkpoint.h): checkpoint_dir/step-NNNNNNNN/
 * model.safetensors every checkpoint_every steps and at the end, or
 * final_model/model.safetensors without a checkpoint_dir, each with its
 * optim.safetensors (--resume continues from such a folder); --report
 * writes what it trained as JSON. With --experts remote both MoE layers'
 * experts live on expert servers and the language model's cluster logic
 * (trainer_internal.h) runs this model too: a coordinator's epochs,
 * rollbacks and checkpoints, several workers. */
#ifndef S2S_TRAIN_H
#define S2S_TRAIN_H

#include <signal.h>

#include "moe_options.h"

/* The exit status: 0 done (or stopped by a signal after writing the
 * model), 1 failed (bad input: one sentence naming the file and line),
 * 2 a usage error. */
int s2s_train_run(const struct moe_options *c, const volatile sig_atomic_t *signals);

#endif
