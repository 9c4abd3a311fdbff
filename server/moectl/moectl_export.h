/* Export of a checkpoint (moectl): one canonical safetensors file of a
 * committed checkpoint (a cluster's or a single process's: both have a
 * manifest), whose bytes depend only on the model, not on how many
 * processes held it (DESIGN §6). Runs offline, in moectl. */
#ifndef MOECTL_EXPORT_H
#define MOECTL_EXPORT_H

#include <stdbool.h>
#include <stddef.h>

#define MOE_EXPORT_FORMAT "moe-export-1"

/* Gathers a verified checkpoint into one canonical safetensors file at
 * out_path: every tensor of every listed file except the per-worker state
 * ("state.*") and, if params_only, the optimizer state (names ending in
 * ".adam_m", ".adam_v" or ".fadam"); sorted by strcmp of name (the writer's
 * canonical layout); metadata {"format":"moe-export-1","step":"S"} and,
 * when the checkpoint describes itself, "config" (the model's INI text,
 * moe_options_model_ini) and "vocab" (its vocabulary, vocab_to_text).
 * The bytes depend only on the tensors, not on how many files held them or
 * in what order. Checks first: the manifest reads and every file verifies;
 * every tensor is F32; no tensor appears twice (MOE_ERR_FORMAT naming it and
 * both files); every expert 0..n_experts-1 has all its parts (and, unless
 * params_only, their ".fadam" state) with the shapes of d_model and d_hidden
 * in the file the manifest names for it (MOE_ERR_NOTFOUND / MOE_ERR_FORMAT /
 * MOE_ERR_SHAPE naming the tensor); no tensor names an expert outside
 * 0..n_experts-1; out_path is not one of the checkpoint's files. Holds every
 * listed file in memory at once. The write is atomic (temp file, fsync,
 * rename). Returns 0 or a negative MOE_ERR_* code. */
int moectl_export(const char *folder, const char *out_path, bool params_only, char *err,
                        size_t errlen);

/* The bundle a PyTorch user loads: folder `dir` (created if missing)
 * with model.safetensors (moectl_export), config.ini, vocab.txt and
 * tools/torch_model.py (the model's modules and a loader). */
int moectl_export_bundle(const char *folder, const char *dir, bool params_only, char *err,
                         size_t errlen);

#endif
