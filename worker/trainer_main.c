/* moe-worker: the trainer binary. Parses the configuration (INI file and
 * flags, see --help) and runs the training loop of trainer.c. Only this
 * file exits the process. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coord_client.h"
#include "moe_config.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_options.h"
#include "moe_tensor.h"
#include "model_source.h"
#include "s2s_checkpoint.h"
#include "s2s_train.h"
#include "trainer.h"

static const char summary[] =
    "Trains the sparsely-gated Mixture-of-Experts language model (Shazeer et al. 2017):\n"
    "Embedding -> LSTM -> MoE (noisy top-k gating, balancing losses) -> LSTM -> Softmax.\n"
    "With --experts local every expert runs in this process; with --experts remote the\n"
    "experts live on moe-server daemons (--servers) and --workers lists the data-parallel\n"
    "workers (see deploy/launch-local.sh). Prints a progress line every --log-every steps\n"
    "and the validation perplexity at the end. With --task translate it trains the\n"
    "encoder-decoder translation model (paper 5.3: 3 encoder and 2 decoder LSTMs, an MoE\n"
    "layer in each, additive attention) on src_train -> tgt_train instead (its experts in\n"
    "this process or, with --experts remote, both layers' on the expert servers).";

static const char also[] =
    "moe-server and moe-coordinator options are accepted too (one configuration file serves\n"
    "the whole cluster); see their --help.";

static volatile sig_atomic_t signals_seen;

/* The first SIGTERM/SIGINT asks for a clean stop (trainer_run looks at
 * the count); a second one ends the process at once. */
static void on_signal(int sig)
{
    (void)sig;
    if (++signals_seen > 1) {
        static const char msg[] = "moe-worker: second signal: stopping at once\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(130);
    }
}

/* --resume: the model's configuration comes from the checkpoint; flags
 * may change how it trains on (rate, steps, data), not its shape. Without
 * --train or --valid it trains on the corpora the checkpoint records
 * (note: the line saying so, logged once the log level is set). */
static int adopt_model(struct moe_options *cfg, char *note, size_t notelen, char *err,
                       size_t errlen)
{
    struct model_source ms;
    int rc = model_source_open(&ms, cfg->resume, err, errlen);
    if (!rc)
        rc = moe_options_adopt(cfg, ms.config, ms.path, true, err, errlen);
    if (!rc)
        rc = moe_options_adopt_corpus(cfg, ms.train, ms.valid, ms.path, note, notelen, err,
                                      errlen);
    model_source_close(&ms);
    return rc;
}

/* a SIGTERM before main's handlers waits for them (moe_options_signals_ready) */
MOE_HOLD_SIGNALS_AT_LOAD

int main(int argc, char **argv)
{
    static struct moe_options cfg;
    char err[1024];
    moe_log_set_name("moe-worker");
    int rc = moe_config_parse_args(moe_options_table, moe_options_count, &cfg, argc, argv,
                                   MOE_FOR_WORKER, cfg.given, cfg.flagged, err, sizeof err);
    if (rc == 1) {
        moe_config_print_help(moe_options_table, moe_options_count, stdout, "moe-worker", summary,
                              MOE_FOR_WORKER, also);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "moe-worker: error: %s\n", err);
        return 2;
    }
    char adopted[3 * MOE_PATH_MAX] = "";
    if (cfg.resume[0] &&
        (rc = moe_options_translate(&cfg)
                  ? s2s_resume_adopt(&cfg, err, sizeof err)
                  : adopt_model(&cfg, adopted, sizeof adopted, err, sizeof err))) {
        fprintf(stderr, "moe-worker: error: %s\n", err);
        return moe_options_exit_code(rc);
    }
    moe_options_derive(&cfg);
    if ((rc = moe_options_check(&cfg, MOE_FOR_WORKER, err, sizeof err))) {
        fprintf(stderr, "moe-worker: error: %s\n", err);
        return 2;
    }
    /* Log level, values the table cannot check, the BLAS kernels (this may
     * re-execute the process): before any thread of ours starts. */
    if ((rc = moe_options_start(&cfg, argc, argv, err, sizeof err))) {
        fprintf(stderr, "moe-worker: error: %s\n", err);
        return rc == MOE_ERR_CONFIG ? 2 : 1;
    }
    if (adopted[0])
        moe_info("%s", adopted);
    moe_malloc_keep_freed();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    coord_client_stop_on_signal(&signals_seen);
    moe_options_signals_ready();
    if (moe_options_translate(&cfg))
        return s2s_train_run(&cfg, &signals_seen);
    return trainer_run(&cfg, &signals_seen);
}
