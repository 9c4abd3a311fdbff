/* libFuzzer target for moe_wire_decode (common/moe_wire.c), the function
 * every daemon runs on bytes off the network. Built by `make fuzz-wire` with
 * clang -fsanitize=fuzzer,address,undefined; not part of moe-tests.
 *
 * Input layout (gen_corpus_wire.c writes seeds in it):
 *   byte 0      frames = 1 + (b & 3) % 3; bit 7 set: limits require width 4
 *   then        frames - 1 lengths, 4 bytes little-endian each, clamped to
 *               what is left; the last frame takes the rest
 * Each frame is copied into its own exact-size heap block so that ASan sees
 * any read past a frame. Besides crashes, the invariants of a decoded
 * message are checked and violations trap. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_frames.h"
#include "moe_err.h"
#include "moe_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_has_tensor(int type)
{
    return type == MOE__MSG_TYPE__MSG_EXPERT_FORWARD ||
           type == MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY ||
           type == MOE__MSG_TYPE__MSG_EXPERT_BACKWARD ||
           type == MOE__MSG_TYPE__MSG_EXPERT_BACKWARD_REPLY ||
           type == MOE__MSG_TYPE__MSG_EXPERT_FETCH_REPLY ||
           type == MOE__MSG_TYPE__MSG_STATS || type == MOE__MSG_TYPE__MSG_STATS_REPLY ||
           type == MOE__MSG_TYPE__MSG_GROUP_FORWARD ||
           type == MOE__MSG_TYPE__MSG_GROUP_FORWARD_REPLY ||
           type == MOE__MSG_TYPE__MSG_GROUP_BACKWARD ||
           type == MOE__MSG_TYPE__MSG_GROUP_BACKWARD_REPLY;
}

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        if (!(cond))                                                                             \
            __builtin_trap();                                                                    \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const struct moe_wire_limits lim = {
        .max_bytes = 4096, .width = (data[0] & 0x80) ? 4 : 0, .max_experts = 8, .max_rows = 64};
    uint8_t *frame[3];
    size_t len[3];
    const int nframes = fuzz_frames_split(data, size, frame, len);
    const void *frames[3] = {frame[0], frame[1], frame[2]};

    struct moe_wire_msg msg;
    char err[128];
    const int rc = moe_wire_decode(frames, len, nframes, &lim, &msg, err, sizeof err);
    if (rc == 0) {
        CHECK(msg.hdr && msg.hdr->version == MOE_WIRE_VERSION);
        CHECK(msg.rows <= lim.max_rows && msg.hdr->n_expert_ids <= lim.max_experts);
        const int tensor = fuzz_has_tensor(msg.hdr->type);
        CHECK((msg.data != NULL) == (tensor && msg.rows > 0));
        /* a group forward: one row index and one gate per row; a group
         * backward reply: one gate gradient per row (touched for ASan) */
        const Moe__MsgType t = msg.hdr->type;
        if (t == MOE__MSG_TYPE__MSG_GROUP_FORWARD)
            CHECK(msg.hdr->n_row_index == msg.rows);
        if (t == MOE__MSG_TYPE__MSG_GROUP_FORWARD || t == MOE__MSG_TYPE__MSG_GROUP_BACKWARD_REPLY) {
            CHECK(msg.hdr->n_row_gate == msg.rows);
            volatile float gsink = 0;
            for (size_t i = 0; i < msg.rows; i++)
                gsink += msg.hdr->row_gate[i] + (float)(t == MOE__MSG_TYPE__MSG_GROUP_FORWARD
                                                            ? msg.hdr->row_index[i]
                                                            : 0);
            (void)gsink;
        }
        if (msg.data) {
            CHECK(((uintptr_t)msg.data & 63) == 0);
            CHECK(lim.width == 0 || msg.hdr->width == lim.width);
            /* touch every float the header promises, so ASan checks the size */
            volatile float sink = 0;
            for (size_t i = 0; i < msg.rows * msg.hdr->width; i++)
                sink += msg.data[i];
            (void)sink;
        }
    } else {
        CHECK(rc == MOE_ERR_FORMAT || rc == MOE_ERR_VERSION || rc == MOE_ERR_SHAPE ||
              rc == MOE_ERR_RANGE || rc == MOE_ERR_NOMEM);
        CHECK(msg.data == NULL);
        CHECK(memchr(err, 0, sizeof err) != NULL && err[0] != 0);
    }
    moe_wire_msg_free(&msg);
    fuzz_frames_free(frame);
    return 0;
}
