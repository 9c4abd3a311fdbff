/* moectl translate: a trained translation model (moe-worker --task
 * translate; worker/s2s_checkpoint.h) run in this process on a file, one
 * translation per input line (worker/s2s_beam.h). */
#ifndef MOECTL_TRANSLATE_H
#define MOECTL_TRANSLATE_H

#include <stdbool.h>

#include "moectl_model.h"

/* Prints one line per line of o->input; the exit status (0, 1 failed with
 * one sentence on stderr naming the file and line, 2 usage). */
int moectl_translate(const char *ckpt, const struct moectl_model_opts *o);

/* Whether ckpt (a file, or a folder with model.safetensors) is a
 * translation model; eval and generate refuse one with a sentence saying
 * so. */
bool moectl_is_translation(const char *ckpt);

#endif
