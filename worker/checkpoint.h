/* Checkpoints of a worker that holds the whole model (DESIGN §6).
 *
 * A checkpoint is a folder <dir>/step-NNNNNNNN holding
 *   config.ini          the configuration it was trained with
 *   vocab.txt           one token per line, in id order
 *   model.safetensors   parameters, PyTorch names and layouts
 *   optim.safetensors   optimizer state, LSTM state carried across unrolls,
 *                       and the step (metadata "step")
 * Both safetensors files carry metadata "checksum": the sum over tensors of
 * a 64-bit hash of (name, bytes), checked on load.
 * It is written into a temporary folder, every file fsynced, renamed into
 * place, the parent fsynced, and only then named by <dir>/latest. A
 * checkpoint that is not complete is never visible under its final name. */
#ifndef CHECKPOINT_H
#define CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "expert_shard.h"
#include "hmoe_group.h"
#include "model.h"
#include "model_source.h"
#include "moe_options.h"
#include "moe_safetensors.h"

struct ckpt_state {
    model_t *model;
    expert_shard_t *shard;      /* experts held in this process */
    vocab_t *vocab;
    float *dense_opt[MODEL_MAX_PARAMS]; /* optimizer state per dense parameter */
    size_t dense_opt_n[MODEL_MAX_PARAMS];
    int dense_adam;             /* 1: Adam (m | v halves), 0: factored */
    int64_t step;               /* steps completed */
    int lstm_rows;              /* streams of this worker's carried LSTM state */
    const struct moe_options *cfg;
    hmoe_groups_t *groups;      /* a hierarchical MoE's secondary gates held here (or NULL) */
};

/* Writes checkpoint of s->step under dir (created if missing). On success
 * the folder's path is written to out. 0 or a negative code with a sentence. */
int checkpoint_save(const char *dir, const struct ckpt_state *s, char *out, size_t cap, char *err,
                    size_t errlen);

/* Resolves `path` to a checkpoint folder: the folder itself if it holds
 * model.safetensors, else the one named by path/latest. */
int checkpoint_resolve(const char *path, char *out, size_t cap, char *err, size_t errlen);

/* The file's "checksum" metadata against its tensors: 0, or MOE_ERR_FORMAT
 * with a sentence naming the file (missing, or a mismatch: corrupted). */
int checkpoint_verify_checksum(const moe_safetensors_t *st, char *err, size_t errlen);

/* Loads from any model source (a checkpoint of one process or of a
 * cluster, or an export): the parameters, required with their shapes; the
 * optimizer state, or zeros with a warning when the source has none (an
 * export with --params-only); the carried LSTM state when the source has
 * it for this batch, else zeros; the step. */
int checkpoint_load_source(const struct model_source *ms, struct ckpt_state *s, char *err,
                           size_t errlen);

/* Cluster checkpoints (with a coordinator; see server/coordinator/coord.h): worker
 * `rank` writes FOLDER/worker-RANK.safetensors (rank 0: the dense
 * parameters, their optimizer state and its carried LSTM state; other
 * ranks: their carried LSTM state), written to a temporary name, fsynced
 * and renamed; `file` gets its name. FOLDER must exist
 * (moe_manifest_make_folder). s->shard is ignored. */
int checkpoint_save_worker(const char *folder, const struct ckpt_state *s, int rank, char *file,
                           size_t cap, char *err, size_t errlen);

/* Loads the dense state from FOLDER/worker-0.safetensors and this rank's
 * carried LSTM state from FOLDER/worker-RANK.safetensors, checking each
 * file's checksum; s->step is left to the caller. */
int checkpoint_load_worker(const char *folder, struct ckpt_state *s, int rank, char *err,
                           size_t errlen);

#endif
