/* moe-wire-probe: sends malformed and out-of-turn messages to a running
 * expert server and checks that each one gets an MSG_ERROR reply (DESIGN
 * §5). Used by tests/integration/test_server_bad_input.sh while a worker
 * trains against the same server.
 *
 * Usage: moe-wire-probe ENDPOINT D MAX_BYTES [KEYS_DIR]
 * (with KEYS_DIR it connects with the worker key, as a member of the
 * cluster would: the malformed messages come from inside)
 * Prints one line per case; exits 1 if any case got no error reply. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "moe.pb-c.h"
#include "moe_sec.h"
#include "moe_wire.h"

static void *sock;

/* Sends frames, waits up to 5 s for a reply, returns true if it is an
 * MSG_ERROR and prints its text. */
static bool expect_error(const char *name, const void *const *frames, const size_t *sizes, int n)
{
    for (int i = 0; i < n; i++)
        zmq_send(sock, frames[i], sizes[i], i + 1 < n ? ZMQ_SNDMORE : 0);
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 5000) <= 0) {
        printf("FAIL %-28s no reply within 5 s\n", name);
        return false;
    }
    struct moe_wire_limits lim = {1u << 30, 0, 1u << 20, 1ull << 40};
    struct moe_wire_msg m;
    memset(&m, 0, sizeof m);
    char err[256];
    int rc = moe_wire_recv(sock, false, 0, &lim, &m, err, sizeof err);
    bool ok = rc == 0 && m.hdr->type == MOE__MSG_TYPE__MSG_ERROR && m.hdr->error_code < 0;
    printf("%s %-28s %s (code %d)\n", ok ? "ok  " : "FAIL", name,
           rc ? err : (m.hdr->error_text ? m.hdr->error_text : ""), rc ? rc : m.hdr->error_code);
    moe_wire_msg_free(&m);
    return ok;
}

/* Packs a header; caller frees. */
static uint8_t *pack(Moe__Header *h, size_t *len)
{
    *len = moe__header__get_packed_size(h);
    uint8_t *b = malloc(*len ? *len : 1);
    moe__header__pack(h, b);
    return b;
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: moe-wire-probe ENDPOINT D MAX_BYTES [KEYS_DIR]\n");
        return 2;
    }
    const int D = atoi(argv[2]);
    const size_t max_bytes = (size_t)atoll(argv[3]);
    void *ctx = zmq_ctx_new();
    sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock, ZMQ_ROUTING_ID, "probe", 5);
    struct moe_sec sec;
    char err[512];
    if (moe_sec_init(&sec, MOE_SEC_WORKER, argc == 5 ? argv[4] : NULL, argc != 5, err,
                     sizeof err) ||
        moe_sec_connect(&sec, sock, MOE_SEC_SERVER, argv[1], err, sizeof err)) {
        fprintf(stderr, "moe-wire-probe: %s\n", err);
        return 2;
    }
    int failures = 0;
    int32_t ids[1] = {0};
    uint32_t rows[1] = {2};
    float *payload = calloc((size_t)D * 2, sizeof(float));

    /* a well-formed forward header to mutate */
    Moe__Header h = MOE__HEADER__INIT;
    h.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD;
    h.version = MOE_WIRE_VERSION;
    h.step = 0;
    h.rank = 0;
    h.request_id = 1;
    h.n_expert_ids = 1;
    h.expert_ids = ids;
    h.n_row_counts = 1;
    h.row_counts = rows;
    h.dtype = MOE__DTYPE__DTYPE_F32;
    h.width = (uint32_t)D;
    size_t len;
    uint8_t *good = pack(&h, &len);
    const size_t pbytes = sizeof(float) * (size_t)D * 2;

    {   /* truncated header */
        const void *f[2] = {good, payload};
        size_t s[2] = {len / 2, pbytes};
        failures += !expect_error("truncated header", f, s, 2);
    }
    {   /* empty frame */
        const void *f[1] = {""};
        size_t s[1] = {0};
        failures += !expect_error("empty frame", f, s, 1);
    }
    {   /* garbage bytes */
        static const char junk[] = "\xff\xfe garbage \x01\x02\x03 not a header";
        const void *f[2] = {junk, junk};
        size_t s[2] = {sizeof junk, sizeof junk};
        failures += !expect_error("garbage bytes", f, s, 2);
    }
    {   /* wrong protocol version */
        h.version = 99;
        uint8_t *b = pack(&h, &len);
        const void *f[2] = {b, payload};
        size_t s[2] = {len, pbytes};
        failures += !expect_error("wrong protocol version", f, s, 2);
        free(b);
        h.version = MOE_WIRE_VERSION;
    }
    {   /* payload size disagrees with the row counts */
        uint8_t *b = pack(&h, &len);
        const void *f[2] = {b, payload};
        size_t s[2] = {len, pbytes - 4};
        failures += !expect_error("sizes disagree with rows", f, s, 2);
        free(b);
    }
    {   /* unknown expert id */
        ids[0] = 999999;
        uint8_t *b = pack(&h, &len);
        const void *f[2] = {b, payload};
        size_t s[2] = {len, pbytes};
        failures += !expect_error("unknown expert id", f, s, 2);
        free(b);
        ids[0] = 0;
    }
    {   /* a stale and a future step, from a peer that is not the worker */
        h.step = 0;
        uint8_t *b = pack(&h, &len);
        const void *f[2] = {b, payload};
        size_t s[2] = {len, pbytes};
        failures += !expect_error("stale step (step 0)", f, s, 2);
        free(b);
        h.step = 1000000000;
        b = pack(&h, &len);
        f[0] = b;
        s[0] = len;
        failures += !expect_error("future step", f, s, 2);
        free(b);
        h.step = 0;
    }
    {   /* backwards claiming worker 0's rank, twice */
        h.type = MOE__MSG_TYPE__MSG_EXPERT_BACKWARD;
        uint8_t *b = pack(&h, &len);
        const void *f[2] = {b, payload};
        size_t s[2] = {len, pbytes};
        failures += !expect_error("backward as worker 0", f, s, 2);
        failures += !expect_error("duplicate backward", f, s, 2);
        free(b);
        h.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD;
    }
    {   /* a rank outside the cluster */
        h.rank = 77;
        uint8_t *b = pack(&h, &len);
        const void *f[2] = {b, payload};
        size_t s[2] = {len, pbytes};
        failures += !expect_error("unknown worker rank", f, s, 2);
        free(b);
        h.rank = 0;
    }
    {   /* a message type servers do not serve */
        h.type = MOE__MSG_TYPE__MSG_STATS;
        h.n_expert_ids = h.n_row_counts = 0;
        uint8_t *b = pack(&h, &len);
        const void *f[1] = {b};
        size_t s[1] = {len};
        failures += !expect_error("wrong message type", f, s, 1);
        free(b);
        h.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD;
        h.n_expert_ids = h.n_row_counts = 1;
    }
    {   /* a hierarchical MoE's group messages (wire version 3): without
         * their per-row fields, and well-formed to a flat MoE's server */
        uint32_t index[2] = {0, 1};
        float gate[2] = {0.5f, 1.0f}, stats[8] = {0};
        h.type = MOE__MSG_TYPE__MSG_GROUP_FORWARD;
        uint8_t *b = pack(&h, &len);
        const void *f[2] = {b, payload};
        size_t s[2] = {len, pbytes};
        failures += !expect_error("group forward without rows", f, s, 2);
        free(b);
        h.n_row_index = h.n_row_gate = 2;
        h.row_index = index;
        h.row_gate = gate;
        b = pack(&h, &len);
        f[0] = b;
        s[0] = len;
        failures += !expect_error("group forward to a flat MoE", f, s, 2);
        free(b);
        h.type = MOE__MSG_TYPE__MSG_GROUP_BACKWARD;
        h.n_row_index = h.n_row_gate = 0;
        h.n_group_stats = 8;
        h.group_stats = stats;
        b = pack(&h, &len);
        f[0] = b;
        s[0] = len;
        failures += !expect_error("group backward to a flat MoE", f, s, 2);
        free(b);
        h.n_group_stats = 0;
        h.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD;
    }
    {   /* oversized: more rows than the size limit allows */
        uint64_t big_rows = max_bytes / (sizeof(float) * (size_t)D) + 16;
        rows[0] = (uint32_t)big_rows;
        uint8_t *b = pack(&h, &len);
        size_t pb = (size_t)big_rows * D * sizeof(float);
        float *big = calloc(pb / sizeof(float), sizeof(float));
        const void *f[2] = {b, big};
        size_t s[2] = {len, pb};
        failures += !expect_error("oversized message", f, s, 2);
        free(b);
        free(big);
        rows[0] = 2;
    }
    free(good);
    free(payload);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    printf("%d case(s) without an error reply\n", failures);
    return failures ? 1 : 0;
}
