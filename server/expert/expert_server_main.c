/* moe-server: the expert-server daemon. Wiring only: configuration,
 * signals, the loop of expert_server.c, and the shard written on the way out.
 * SIGTERM or SIGINT: with a coordinator, the server is drained (its experts
 * move to the others at the next step boundary) and exits 0; without one
 * it finishes the current step, writes the shard (--shard-out) and exits
 * 0. A second signal stops it at once. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "expert_server.h"
#include "moe_blas.h"
#include "moe_config.h"
#include "coord_client.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_tensor.h"
#include "moe_options.h"

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    if (++stop_flag > 1) {
        static const char msg[] = "moe-server: second signal: stopping at once\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(130);
    }
}

static const char summary[] =
    "Expert server of the sparsely-gated Mixture-of-Experts trainer. Owns the experts that\n"
    "`placement` gives to entry --server-index of --servers, with their factored-Adam state,\n"
    "and serves the forward and backward requests of every worker of each step. Shares the\n"
    "configuration file (and its keys) with moe-worker: model sizes, seed, learning-rate\n"
    "schedule and expert optimizer must be the same on every process.";

/* a SIGTERM before main's handlers waits for them (moe_options_signals_ready) */
MOE_HOLD_SIGNALS_AT_LOAD

int main(int argc, char **argv)
{
    static struct moe_options cfg;
    char err[1024];
    moe_log_set_name("moe-server");
    int rc = moe_config_parse_args(moe_options_table, moe_options_count, &cfg, argc, argv,
                                   MOE_FOR_SERVER, cfg.given, cfg.flagged, err, sizeof err);
    if (rc == 1) {
        moe_config_print_help(moe_options_table, moe_options_count, stdout, "moe-server", summary,
                              MOE_FOR_SERVER,
                              "The other options of moe-worker and moe-coordinator are accepted "
                              "too (one configuration\nfile serves the whole cluster); see their "
                              "--help.");
        return 0;
    }
    if (rc >= 0)
        moe_options_derive(&cfg);
    if (rc < 0 || (rc = moe_options_check(&cfg, MOE_FOR_SERVER, err, sizeof err))) {
        fprintf(stderr, "moe-server: error: %s\n", err);
        return 2;
    }
    /* Log level, values the table cannot check, the BLAS kernels (this may
     * re-execute the process): before any thread of ours starts. */
    if ((rc = moe_options_start(&cfg, argc, argv, err, sizeof err))) {
        fprintf(stderr, "moe-server: error: %s\n", err);
        return rc == MOE_ERR_CONFIG ? 2 : 1;
    }
    moe_malloc_keep_freed();
    moe_blas_set_threads(cfg.threads);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    coord_client_stop_on_signal(&stop_flag);
    moe_options_signals_ready();
    expert_server_t *s = expert_server_new(&cfg, err, sizeof err);
    if (!s) {
        /* a signal while it waited for the coordinator is the operator's stop */
        fprintf(stderr, "moe-server: %s%s\n", stop_flag ? "" : "error: ", err);
        return stop_flag ? 0 : 1;
    }
    /* The line launchers wait for, whatever the log level. */
    printf("moe-server: server %lld serving on %s\n", (long long)expert_server_id(s), expert_server_endpoint(s));
    fflush(stdout);
    rc = expert_server_run(s, &stop_flag);
    if (rc)
        fprintf(stderr, "moe-server: error: %s\n",
                expert_server_exit_reason(s)[0] ? expert_server_exit_reason(s) : moe_strerror(rc));
    if (rc == 0 && cfg.shard_out[0]) {
        rc = expert_server_write_shard(s, cfg.shard_out, err, sizeof err);
        if (rc)
            fprintf(stderr, "moe-server: error: %s\n", err);
        else
            moe_info("shard of step %lld written to %s", (long long)expert_server_step(s), cfg.shard_out);
    }
    expert_server_destroy(&s);
    return rc ? 1 : 0;
}
