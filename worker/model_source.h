/* A trained model to read, whatever wrote it (DESIGN §6): a checkpoint of
 * one process or of a cluster (a step folder, or a checkpoint directory:
 * its newest checkpoint that verifies) or a file of `moectl export`. Every
 * one describes itself: the model's configuration (moe_options_model_ini),
 * its vocabulary and its step, in the metadata of the file with the dense
 * model (or, for checkpoints of earlier versions, config.ini and vocab.txt
 * beside it). Used to resume training (trainer), and by moectl to
 * evaluate, sample and export. */
#ifndef MODEL_SOURCE_H
#define MODEL_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "moe_options.h"
#include "moe_safetensors.h"

#define MODEL_SOURCE_FILES 1024

struct model_source {
    char path[MOE_PATH_MAX + 64]; /* the step folder or the file read */
    bool is_export;
    int64_t step;                 /* steps the model was trained */
    char *config;                 /* its configuration, INI text (malloc'd) */
    const char *train, *valid;    /* the corpora it was trained and validated on, as the
                                   * checkpoint records them ("" valid: none), NULL when it
                                   * does not (exports, earlier versions); borrowed from
                                   * the files, until model_source_close */
    vocab_t *vocab;
    int n_files;
    moe_safetensors_t *st[MODEL_SOURCE_FILES]; /* its tensor files */
};

/* Opens `path`: a file (an export), a folder with a manifest (verified
 * first), a folder without one (model.safetensors and, if there,
 * optim.safetensors: an export bundle, or a checkpoint of an earlier
 * version), or a
 * directory of checkpoints (the newest verified; the folder chosen is
 * logged). Sentences name the path and what is missing. 0 or an error;
 * close with model_source_close either way. */
int model_source_open(struct model_source *ms, const char *path, char *err, size_t errlen);

void model_source_close(struct model_source *ms);

/* Copies F32 tensor `name` of shape (ndim, shape) into dst from whichever
 * file holds it: 0, MOE_ERR_NOTFOUND (no file has it; err names it and the
 * source), or MOE_ERR_SHAPE. */
int model_source_read(const struct model_source *ms, const char *name, int ndim,
                      const int64_t *shape, float *dst, char *err, size_t errlen);

/* Whether some file holds `name`. */
bool model_source_has(const struct model_source *ms, const char *name);

#endif
