/* The training loop of one worker process (DESIGN §2, §3): data, model,
 * optimizers, evaluation, progress lines, checkpoints and the final report.
 * trainer_main.c only parses the configuration and calls trainer_run(). */
#ifndef TRAINER_H
#define TRAINER_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe_options.h"

/* Runs training as configured. `signals` (may be NULL) counts the SIGTERM
 * and SIGINT the process received: the first stops training cleanly (with
 * a coordinator: the whole cluster, after a checkpoint at the next step
 * boundary; alone: this process, after its checkpoint). Returns the exit
 * status: 0 on success or a clean stop; on failure it prints a sentence
 * naming the file or key to stderr and returns 2 when the configuration is
 * wrong, 1 otherwise. */
int trainer_run(const struct moe_options *cfg, const volatile sig_atomic_t *signals);

#endif
