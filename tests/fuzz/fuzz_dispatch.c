/* libFuzzer target for the daemons' whole path from bytes to state: a
 * coordinator and an expert server, each with CURVE keys (so that the
 * sender's authenticated role is checked), are fed decoded-and-dispatched
 * messages through coord_inject and expert_server_inject, exactly as if
 * they had arrived on their sockets. Built by `make fuzz-dispatch` with
 * clang -fsanitize=fuzzer,address,undefined; not part of moe-tests.
 *
 * Input layout: byte 0 chooses
 *   bit 0       the daemon: 0 the coordinator, 1 the expert server
 *   bits 1-2    the authenticated role: none, worker, server, coordinator
 *   bits 3-5    the peer's routing id (a worker's, a server's, a heartbeat
 *               thread's, with or without an incarnation, or junk)
 *   bit 6       a hierarchical MoE (3 groups of 2, issue 17): with bit 0
 *               clear a second coordinator (its statistics rows carry the
 *               per-group factors of Load_H), with bit 0 set a second
 *               expert server holding every group (its group messages run
 *               the groups' secondary gates)
 * then the layout of fuzz_wire.c (frame count byte, lengths, frames), so
 * that its seeds, prefixed with byte 0, seed this target too. The daemons
 * live across inputs (their state is what is being fuzzed); the process
 * must not crash, leak or hang whatever arrives. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coord.h"
#include "expert_server.h"
#include "fuzz_frames.h"
#include "moe_config.h"
#include "moe_log.h"
#include "moe_options.h"
#include "moe_sec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct moe_options cfg_coord, cfg_server, cfg_hcoord, cfg_hserver;
static coord_t *coord, *hcoord;
static expert_server_t *server, *hserver;
static double clock_s;

static void configure(struct moe_options *c, const char *keys)
{
    char err[512];
    if (moe_config_defaults(moe_options_table, moe_options_count, c, err, sizeof err))
        abort();
    c->d_model = 16;
    c->d_hidden = 24;
    c->n_experts = 6;
    c->k = 2;
    c->batch = 4;
    c->unroll = 8;
    c->eval_batch = 3;
    c->threads = 1;
    c->timeout_ms = 1000;
    snprintf(c->keys, sizeof c->keys, "%s", keys);
    snprintf(c->workers, sizeof c->workers, "tcp://127.0.0.1:1,tcp://127.0.0.1:2");
}

/* 3 groups of 2 experts, 2 groups and 1 expert of each per row */
static void hierarchical(struct moe_options *c)
{
    snprintf(c->moe, sizeof c->moe, "hierarchical");
    c->groups = 3;
    c->experts_per_group = 2;
    c->k_primary = 2;
    c->k = 1;
}

static void start(void)
{
    moe_log_set_level(MOE_LOG_ERROR + 1); /* rejected messages are the point */
    static char keys[] = "/tmp/moe-fuzz-keys-XXXXXX";
    char err[1024];
    if (!mkdtemp(keys) || moe_sec_keygen(keys, true, err, sizeof err)) {
        fprintf(stderr, "fuzz_dispatch: keys: %s\n", err);
        abort();
    }
    configure(&cfg_coord, keys);
    snprintf(cfg_coord.coordinator, sizeof cfg_coord.coordinator, "tcp://127.0.0.1:*");
    snprintf(cfg_coord.servers, sizeof cfg_coord.servers, "tcp://127.0.0.1:1");
    configure(&cfg_server, keys);
    snprintf(cfg_server.servers, sizeof cfg_server.servers, "tcp://127.0.0.1:*");
    configure(&cfg_hcoord, keys);
    hierarchical(&cfg_hcoord);
    snprintf(cfg_hcoord.coordinator, sizeof cfg_hcoord.coordinator, "tcp://127.0.0.1:*");
    snprintf(cfg_hcoord.servers, sizeof cfg_hcoord.servers, "tcp://127.0.0.1:1");
    configure(&cfg_hserver, keys);
    hierarchical(&cfg_hserver);
    snprintf(cfg_hserver.servers, sizeof cfg_hserver.servers, "tcp://127.0.0.1:*");
    coord = coord_new(&cfg_coord, err, sizeof err);
    hcoord = coord ? coord_new(&cfg_hcoord, err, sizeof err) : NULL;
    server = hcoord ? expert_server_new(&cfg_server, err, sizeof err) : NULL;
    hserver = server ? expert_server_new(&cfg_hserver, err, sizeof err) : NULL;
    if (!coord || !hcoord || !server || !hserver) {
        fprintf(stderr, "fuzz_dispatch: %s\n", err);
        abort();
    }
}

static const char *const identities[8] = {
    "moe-worker-0",
    "moe-worker-1",
    "moe-worker-0/0123456789abcdef",
    "moe-worker-1/fedcba9876543210",
    "moe-server/0123456789abcdef@tcp://127.0.0.1:1",
    "moe-heart/0123456789abcdef@tcp://127.0.0.1:1",
    "moe-server/0123456789abcdef@tcp://127.0.0.1:7",
    "\xff\x00junk",
};
static const char *const users[4] = {"", "worker", "server", "coordinator"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!coord)
        start();
    if (size < 2)
        return 0;
    const uint8_t who = data[0];
    data++;
    size--;
    uint8_t *frame[3];
    size_t len[3];
    const int nframes = fuzz_frames_split(data, size, frame, len);
    const void *frames[3] = {frame[0], frame[1], frame[2]};
    const char *id = identities[(who >> 3) & 7];
    const char *user = users[(who >> 1) & 3];
    clock_s += 0.01;
    if (who & 1)
        expert_server_inject(who & 64 ? hserver : server, frames, len, nframes,
                             (const uint8_t *)id, strlen(id), user);
    else
        coord_inject(who & 64 ? hcoord : coord, frames, len, nframes, (const uint8_t *)id,
                     strlen(id), user, clock_s);
    fuzz_frames_free(frame);
    return 0;
}
