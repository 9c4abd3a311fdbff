/* Writes the seed inputs of fuzz_wire.c into a directory:
 *   gen_corpus_wire DIR
 * Each seed is one valid (or deliberately near-valid) message in the
 * fuzzer's input layout: a selector byte (frame count, width-4 limit flag),
 * the little-endian lengths of all frames but the last, then the frames.
 * Built and run by `make test-fuzz`; a build-time tool, not a test. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe.pb-c.h"
#include "moe_wire.h"

#define WIDTH4 0x80

static const char *dir;

/* selector byte for n frames (1..3) */
static uint8_t sel(int nframes, int flags) { return (uint8_t)((nframes - 1) | flags); }

static int write_seed(const char *name, uint8_t selector, const Moe__Header *h,
                      const void *payload, size_t payload_len, int nframes)
{
    const size_t hlen = moe__header__get_packed_size(h);
    uint8_t *hb = malloc(hlen ? hlen : 1);
    if (!hb)
        return -1;
    moe__header__pack(h, hb);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        free(hb);
        return -1;
    }
    fputc(selector, f);
    if (nframes >= 2) {
        const uint32_t n = (uint32_t)hlen;
        for (int k = 0; k < 4; k++)
            fputc((int)((n >> (8 * k)) & 0xff), f);
    }
    if (nframes == 3) {
        const uint32_t n = (uint32_t)payload_len;
        for (int k = 0; k < 4; k++)
            fputc((int)((n >> (8 * k)) & 0xff), f);
    }
    fwrite(hb, 1, hlen, f);
    if (nframes >= 2)
        fwrite(payload, 1, payload_len, f);
    if (nframes == 3)
        fputc('x', f);
    free(hb);
    return fclose(f) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    int32_t ids[2] = {1, 3};
    uint32_t counts[2] = {1, 2};
    float x[3 * 4];
    for (int i = 0; i < 12; i++)
        x[i] = (float)i * 0.25f - 1.0f;
    uint16_t half[3 * 4];
    for (int i = 0; i < 12; i++)
        half[i] = (uint16_t)(0x3c00 + 17 * i); /* little-endian host: bytes as on the wire */

    Moe__Header h = MOE__HEADER__INIT;
    h.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD;
    h.version = MOE_WIRE_VERSION;
    h.step = 12;
    h.rank = 1;
    h.request_id = 99;
    h.n_expert_ids = h.n_row_counts = 2;
    h.expert_ids = ids;
    h.row_counts = counts;
    h.width = 4;
    h.row0 = 64;
    h.placement_version = 3;
    int rc = 0;
    rc |= write_seed("forward_f32", sel(2, WIDTH4), &h, x, sizeof x, 2);
    h.dtype = MOE__DTYPE__DTYPE_BF16;
    h.type = MOE__MSG_TYPE__MSG_EXPERT_BACKWARD;
    rc |= write_seed("backward_bf16", sel(2, 0), &h, half, sizeof half, 2);
    h.dtype = MOE__DTYPE__DTYPE_F16;
    h.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH_REPLY;
    rc |= write_seed("fetch_reply_f16", sel(2, WIDTH4), &h, half, sizeof half, 2);
    h.dtype = MOE__DTYPE__DTYPE_F32;
    h.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH;
    rc |= write_seed("fetch", sel(1, 0), &h, NULL, 0, 1);
    counts[0] = counts[1] = 0;
    h.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY;
    rc |= write_seed("forward_reply_0rows", sel(2, WIDTH4), &h, NULL, 0, 2);
    rc |= write_seed("three_frames", sel(3, 0), &h, x, sizeof x, 3);

    /* a hierarchical MoE's group messages (version 3): groups 0 and 2 of
     * fuzz_dispatch.c's hierarchical server (3 groups of 2, d_model 16),
     * from worker 0 at step 0; with width 4 for fuzz_wire's limit flag */
    float x16[3 * 16];
    for (int i = 0; i < 48; i++)
        x16[i] = (float)(i % 7) * 0.125f - 0.4f;
    int32_t gids[2] = {0, 2};
    uint32_t grows[2] = {1, 2}, gindex[3] = {0, 3, 5};
    float ggate[3] = {0.5f, 1.0f, 0.25f}, gstats[8] = {0.1f, -0.2f, 0.3f, 0, 0, 0.5f, -1, 2};
    Moe__Header g = MOE__HEADER__INIT;
    g.type = MOE__MSG_TYPE__MSG_GROUP_FORWARD;
    g.version = MOE_WIRE_VERSION;
    g.request_id = 5;
    g.n_expert_ids = g.n_row_counts = 2;
    g.expert_ids = gids;
    g.row_counts = grows;
    g.width = 16;
    g.n_row_index = g.n_row_gate = 3;
    g.row_index = gindex;
    g.row_gate = ggate;
    rc |= write_seed("group_forward_w16", sel(2, 0), &g, x16, sizeof x16, 2);
    g.width = 4;
    rc |= write_seed("group_forward", sel(2, WIDTH4), &g, x, sizeof x, 2);
    g.eval = true;
    g.width = 16;
    rc |= write_seed("group_forward_eval_w16", sel(2, 0), &g, x16, sizeof x16, 2);
    g.eval = false;
    g.type = MOE__MSG_TYPE__MSG_GROUP_BACKWARD;
    g.n_row_index = g.n_row_gate = 0;
    g.n_group_stats = 8;
    g.group_stats = gstats;
    rc |= write_seed("group_backward_w16", sel(2, 0), &g, x16, sizeof x16, 2);
    g.type = MOE__MSG_TYPE__MSG_GROUP_BACKWARD_REPLY;
    g.n_group_stats = 0;
    g.n_row_gate = 3;
    g.width = 4;
    rc |= write_seed("group_backward_reply", sel(2, WIDTH4), &g, x, sizeof x, 2);
    g.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH;
    g.n_row_gate = 0;
    g.flags = MOE_FLAG_GROUPS;
    grows[0] = grows[1] = 0;
    rc |= write_seed("fetch_groups", sel(1, 0), &g, NULL, 0, 1);

    Moe__Header e = MOE__HEADER__INIT;
    e.type = MOE__MSG_TYPE__MSG_ERROR;
    e.version = MOE_WIRE_VERSION;
    e.step = 12;
    e.request_id = 99;
    e.error_code = -4;
    e.error_text = "payload is 40 bytes, expected 48";
    rc |= write_seed("error", sel(1, 0), &e, NULL, 0, 1);
    e.type = MOE__MSG_TYPE__MSG_HEARTBEAT;
    e.error_code = 0;
    e.error_text = (char *)protobuf_c_empty_string;
    rc |= write_seed("heartbeat", sel(1, 0), &e, NULL, 0, 1);
    return rc ? 1 : 0;
}
