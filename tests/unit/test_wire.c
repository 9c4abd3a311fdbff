/* Unit tests of the wire codec (common/moe_wire.c).
 *
 * decode: a table of malformed messages run through moe_wire_decode, each
 * with the exact error code and whether the header is kept; every frame is a
 * heap copy of exactly its size so that ASan sees any over-read. Then valid
 * messages in each dtype.
 * sockets: a DEALER and a ROUTER over inproc:// in one process (linger 0,
 * receive timeout so nothing hangs): f32 bitwise, bf16 and f16 rounded,
 * 0-row and error messages, identities, an over-long message drained and
 * rejected with the next one still fine, EAGAIN, refused sends.
 * bf16: round to nearest even on hand-picked bit patterns, NaN and inf. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "moe_err.h"
#include "moe_wire.h"
#include "test_util.h"

Suite *test_wire_suite(void);

/* ------------------------------------------------------------------------- */
/* decode: the table */

#define W 4 /* width of the baseline message */

/* One message under construction. The mutator of a case edits the header,
 * the limits or the frame layout; wt_run packs and decodes it. */
struct wt {
    Moe__Header h;
    int32_t ids[8];
    uint32_t counts[8];
    struct moe_wire_limits lim;
    int nframes;          /* frames handed to decode (0..3) */
    size_t payload_len;   /* bytes of frame 1 */
    const uint8_t *raw;   /* when set, frame 0 is these bytes instead of the packed header */
    size_t raw_len;
    size_t header_cut;    /* bytes removed from the end of the packed header */
    char *text;           /* error_text storage, freed by wt_run */
};

/* A valid EXPERT_FORWARD: experts 2 and 5 with 1 and 2 rows of width 4, f32. */
static void wt_init(struct wt *t)
{
    memset(t, 0, sizeof *t);
    moe__header__init(&t->h);
    t->h.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD;
    t->h.version = MOE_WIRE_VERSION;
    t->h.step = 41;
    t->h.request_id = 77;
    t->ids[0] = 2;
    t->ids[1] = 5;
    t->counts[0] = 1;
    t->counts[1] = 2;
    t->h.n_expert_ids = t->h.n_row_counts = 2;
    t->h.expert_ids = t->ids;
    t->h.row_counts = t->counts;
    t->h.dtype = MOE__DTYPE__DTYPE_F32;
    t->h.width = W;
    t->lim = (struct moe_wire_limits){.max_bytes = 4096, .width = W, .max_experts = 4,
                                      .max_rows = 16};
    t->nframes = 2;
    t->payload_len = 3 * W * 4;
}

static uint8_t *dup_bytes(const void *p, size_t n)
{
    uint8_t *q = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(q);
    if (n)
        memcpy(q, p, n);
    return q;
}

/* Packs and decodes t; frames are exact-size heap copies. */
static int wt_run(struct wt *t, struct moe_wire_msg *msg, char *err, size_t errlen)
{
    uint8_t *f[3] = {0};
    size_t sizes[3] = {0};
    if (t->raw) {
        f[0] = dup_bytes(t->raw, t->raw_len);
        sizes[0] = t->raw_len;
    } else {
        const size_t n = moe__header__get_packed_size(&t->h);
        uint8_t *full = malloc(n);
        ck_assert_ptr_nonnull(full);
        ck_assert_uint_eq(moe__header__pack(&t->h, full), n);
        ck_assert_uint_le(t->header_cut, n);
        sizes[0] = n - t->header_cut;
        f[0] = dup_bytes(full, sizes[0]);
        free(full);
    }
    sizes[1] = t->payload_len;
    f[1] = malloc(t->payload_len ? t->payload_len : 1);
    ck_assert_ptr_nonnull(f[1]);
    for (size_t i = 0; i < t->payload_len; i++)
        f[1][i] = (uint8_t)(i * 7 + 1);
    f[2] = dup_bytes("x", 1);
    sizes[2] = 1;
    const void *frames[3] = {f[0], f[1], f[2]};
    err[0] = 0;
    const int rc = moe_wire_decode(t->nframes ? frames : NULL, t->nframes ? sizes : NULL,
                                   t->nframes, &t->lim, msg, err, errlen);
    for (int i = 0; i < 3; i++)
        free(f[i]);
    free(t->text);
    t->text = NULL;
    return rc;
}

static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x32, 0x64};

static void m_zero_frames(struct wt *t) { t->nframes = 0; }
static void m_three_frames(struct wt *t) { t->nframes = 3; }
static void m_empty_header(struct wt *t) { t->raw = (const uint8_t *)""; t->raw_len = 0; }
static void m_garbage(struct wt *t) { t->raw = garbage; t->raw_len = sizeof garbage; }
static void m_truncated(struct wt *t)
{
    t->h.placement_version = 300; /* last field, a two-byte varint: cut inside it */
    t->header_cut = 1;
}
static void m_version(struct wt *t) { t->h.version = MOE_WIRE_VERSION + 1; }
static void m_version0(struct wt *t) { t->h.version = 0; }
static void m_type_unknown_value(struct wt *t) { t->h.type = (Moe__MsgType)99; }
static void m_type_msg_unknown(struct wt *t) { t->h.type = MOE__MSG_TYPE__MSG_UNKNOWN; }
static void m_dtype(struct wt *t) { t->h.dtype = (Moe__DType)7; }
static void m_len_mismatch(struct wt *t) { t->h.n_row_counts = 1; }
static void m_not_ascending(struct wt *t) { t->ids[0] = 5, t->ids[1] = 2; }
static void m_duplicate(struct wt *t) { t->ids[0] = 5, t->ids[1] = 5; }
static void m_negative(struct wt *t) { t->ids[0] = -1; }
static void m_too_many_experts(struct wt *t)
{
    for (int i = 0; i < 5; i++)
        t->ids[i] = i, t->counts[i] = 0;
    t->counts[0] = 3;
    t->h.n_expert_ids = t->h.n_row_counts = 5;
}
static void m_rows_over(struct wt *t)
{
    t->counts[0] = 10, t->counts[1] = 7; /* 17 > 16 */
    t->payload_len = 17 * W * 4;
}
static void m_sum_overflow(struct wt *t)
{
    /* Summed in 32 bits these would wrap to 1, under max_rows. */
    t->counts[0] = UINT32_MAX, t->counts[1] = 2;
    t->payload_len = 1 * W * 4;
}
static void m_short(struct wt *t) { t->payload_len -= 4; }
static void m_long(struct wt *t) { t->payload_len += 4; }
static void m_odd_byte(struct wt *t) { t->payload_len += 1; }
static void m_missing(struct wt *t) { t->nframes = 1; }
static void m_empty_payload(struct wt *t) { t->payload_len = 0; }
static void m_width_mismatch(struct wt *t)
{
    t->h.width = 2 * W; /* payload sized for the header's width */
    t->payload_len = 3 * 2 * W * 4;
}
static void m_width0(struct wt *t)
{
    t->lim.width = 0;
    t->h.width = 0;
    t->payload_len = 0;
}
static void m_width0_zero_rows(struct wt *t)
{
    m_width0(t);
    t->counts[0] = t->counts[1] = 0;
    t->nframes = 1;
}
static void m_bf16_size(struct wt *t) { t->h.dtype = MOE__DTYPE__DTYPE_BF16; } /* f32-sized */
static void m_payload_on_control(struct wt *t)
{
    t->h.type = MOE__MSG_TYPE__MSG_HEARTBEAT;
    t->h.n_expert_ids = t->h.n_row_counts = 0;
    t->payload_len = 4;
}
static void m_payload_on_fetch(struct wt *t) { t->h.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH; }
static void m_over_max_bytes(struct wt *t)
{
    /* header + 48 payload bytes, one byte over the limit */
    t->lim.max_bytes = moe__header__get_packed_size(&t->h) + 3 * W * 4 - 1;
}
static void m_header_over_max_bytes(struct wt *t)
{
    t->lim.max_bytes = moe__header__get_packed_size(&t->h) - 1;
}
static void m_error_text_long(struct wt *t)
{
    t->h.type = MOE__MSG_TYPE__MSG_ERROR;
    t->h.n_expert_ids = t->h.n_row_counts = 0;
    t->nframes = 1;
    t->h.error_code = MOE_ERR_SHAPE;
    t->text = malloc(MOE_WIRE_ERROR_TEXT_MAX + 2);
    memset(t->text, 'x', MOE_WIRE_ERROR_TEXT_MAX + 1);
    t->text[MOE_WIRE_ERROR_TEXT_MAX + 1] = 0;
    t->h.error_text = t->text;
}

/* a hierarchical MoE's group messages (version 3): one row index and one
 * primary gate per row in a GROUP_FORWARD, one gate gradient per row in a
 * GROUP_BACKWARD_REPLY */
static uint32_t g_index[3] = {0, 4, 9};
static float g_gate[3] = {0.5f, 0.25f, 1.0f};
static void m_group_fwd(struct wt *t)
{
    t->h.type = MOE__MSG_TYPE__MSG_GROUP_FORWARD;
    t->h.n_row_index = t->h.n_row_gate = 3;
    t->h.row_index = g_index;
    t->h.row_gate = g_gate;
}
static void m_group_fwd_no_index(struct wt *t)
{
    m_group_fwd(t);
    t->h.n_row_index = 0;
}
static void m_group_fwd_short_gate(struct wt *t)
{
    m_group_fwd(t);
    t->h.n_row_gate = 2;
}
static void m_group_bwd_reply_no_gate(struct wt *t)
{
    t->h.type = MOE__MSG_TYPE__MSG_GROUP_BACKWARD_REPLY;
}
static void m_version_2(struct wt *t) { t->h.version = 2; } /* a peer of the release before */

enum kept { HDR_NULL, HDR_KEPT };

static const struct wcase {
    const char *name;
    void (*mutate)(struct wt *);
    int code;
    enum kept kept;
} wcases[] = {
    {"0 frames", m_zero_frames, MOE_ERR_FORMAT, HDR_NULL},
    {"3 frames", m_three_frames, MOE_ERR_FORMAT, HDR_NULL},
    {"empty header frame", m_empty_header, MOE_ERR_FORMAT, HDR_NULL},
    {"garbage bytes", m_garbage, MOE_ERR_FORMAT, HDR_NULL},
    {"truncated header", m_truncated, MOE_ERR_FORMAT, HDR_NULL},
    {"header over max_bytes", m_header_over_max_bytes, MOE_ERR_RANGE, HDR_NULL},
    {"wrong version", m_version, MOE_ERR_VERSION, HDR_KEPT},
    {"version missing", m_version0, MOE_ERR_VERSION, HDR_KEPT},
    {"unknown type", m_type_unknown_value, MOE_ERR_FORMAT, HDR_KEPT},
    {"MSG_UNKNOWN", m_type_msg_unknown, MOE_ERR_FORMAT, HDR_KEPT},
    {"unknown dtype", m_dtype, MOE_ERR_FORMAT, HDR_KEPT},
    {"row_counts/expert_ids length mismatch", m_len_mismatch, MOE_ERR_FORMAT, HDR_KEPT},
    {"ids not ascending", m_not_ascending, MOE_ERR_FORMAT, HDR_KEPT},
    {"duplicate id", m_duplicate, MOE_ERR_FORMAT, HDR_KEPT},
    {"negative id", m_negative, MOE_ERR_FORMAT, HDR_KEPT},
    {"too many experts", m_too_many_experts, MOE_ERR_RANGE, HDR_KEPT},
    {"rows over max_rows", m_rows_over, MOE_ERR_RANGE, HDR_KEPT},
    {"row sum past 2^32", m_sum_overflow, MOE_ERR_RANGE, HDR_KEPT},
    {"payload too short", m_short, MOE_ERR_SHAPE, HDR_KEPT},
    {"payload too long", m_long, MOE_ERR_SHAPE, HDR_KEPT},
    {"payload one odd byte", m_odd_byte, MOE_ERR_SHAPE, HDR_KEPT},
    {"payload missing", m_missing, MOE_ERR_SHAPE, HDR_KEPT},
    {"payload empty", m_empty_payload, MOE_ERR_SHAPE, HDR_KEPT},
    {"width mismatch", m_width_mismatch, MOE_ERR_SHAPE, HDR_KEPT},
    {"width 0 for a tensor type", m_width0, MOE_ERR_SHAPE, HDR_KEPT},
    {"width 0 with 0 rows", m_width0_zero_rows, MOE_ERR_SHAPE, HDR_KEPT},
    {"bf16 header, f32-sized payload", m_bf16_size, MOE_ERR_SHAPE, HDR_KEPT},
    {"payload on a non-tensor message", m_payload_on_control, MOE_ERR_SHAPE, HDR_KEPT},
    {"payload on EXPERT_FETCH", m_payload_on_fetch, MOE_ERR_SHAPE, HDR_KEPT},
    {"message over max_bytes", m_over_max_bytes, MOE_ERR_RANGE, HDR_KEPT},
    {"error_text too long", m_error_text_long, MOE_ERR_RANGE, HDR_KEPT},
    {"version 2 (an old peer)", m_version_2, MOE_ERR_VERSION, HDR_KEPT},
    {"GROUP_FORWARD without row indices", m_group_fwd_no_index, MOE_ERR_SHAPE, HDR_KEPT},
    {"GROUP_FORWARD with a gate short", m_group_fwd_short_gate, MOE_ERR_SHAPE, HDR_KEPT},
    {"GROUP_BACKWARD_REPLY without gates", m_group_bwd_reply_no_gate, MOE_ERR_SHAPE, HDR_KEPT},
};

/* A well-formed GROUP_FORWARD decodes with its indices and gates. */
START_TEST(wire_decode_group_forward)
{
    struct wt t;
    wt_init(&t);
    m_group_fwd(&t);
    struct moe_wire_msg msg;
    memset(&msg, 0, sizeof msg);
    char err[256] = "";
    ck_assert_msg(wt_run(&t, &msg, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(msg.hdr->type, MOE__MSG_TYPE__MSG_GROUP_FORWARD);
    ck_assert_uint_eq(msg.hdr->n_row_index, 3);
    ck_assert_uint_eq(msg.hdr->row_index[2], 9);
    ck_assert_float_eq(msg.hdr->row_gate[1], 0.25f);
    moe_wire_msg_free(&msg);
}
END_TEST

START_TEST(wire_decode_malformed_table)
{
    for (size_t i = 0; i < sizeof wcases / sizeof wcases[0]; i++) {
        const struct wcase *c = &wcases[i];
        struct wt t;
        wt_init(&t);
        c->mutate(&t);
        struct moe_wire_msg msg;
        memset(&msg, 0xa5, sizeof msg); /* decode must overwrite, not free, what was there */
        char err[256];
        const int rc = wt_run(&t, &msg, err, sizeof err);
        ck_assert_msg(rc == c->code, "case '%s': got %d (%s), expected %d", c->name, rc, err,
                      c->code);
        ck_assert_msg(err[0] != 0, "case '%s': no error sentence", c->name);
        ck_assert_msg(msg.data == NULL, "case '%s': data set on error", c->name);
        if (c->kept == HDR_KEPT) {
            ck_assert_msg(msg.hdr != NULL, "case '%s': header dropped", c->name);
            ck_assert(msg.hdr->request_id == 77 && msg.hdr->step == 41);
        } else {
            ck_assert_msg(msg.hdr == NULL, "case '%s': header kept", c->name);
        }
        moe_wire_msg_free(&msg);
        ck_assert_ptr_null(msg.hdr);
    }
}
END_TEST

/* A peer of the previous schema (version 3, before Header.layer): refused
 * with a sentence naming both versions. */
START_TEST(wire_decode_previous_version)
{
    struct wt t;
    wt_init(&t);
    t.h.version = MOE_WIRE_VERSION - 1;
    struct moe_wire_msg msg;
    char err[256], want[64];
    ck_assert_int_eq(wt_run(&t, &msg, err, sizeof err), MOE_ERR_VERSION);
    snprintf(want, sizeof want, "protocol version %d, expected %d (the peer runs another",
             MOE_WIRE_VERSION - 1, MOE_WIRE_VERSION);
    ck_assert_msg(strstr(err, want), "%s", err);
    moe_wire_msg_free(&msg);
}
END_TEST

START_TEST(wire_decode_errors_fit_small_buffers)
{
    /* err may be NULL, or too small for the sentence: truncated, no overflow */
    struct wt t;
    wt_init(&t);
    m_long(&t);
    struct moe_wire_msg msg;
    char err[8];
    ck_assert_int_eq(wt_run(&t, &msg, err, sizeof err), MOE_ERR_SHAPE);
    ck_assert_uint_eq(strlen(err), sizeof err - 1);
    moe_wire_msg_free(&msg);
    wt_init(&t);
    m_long(&t);
    uint8_t pl[3 * W * 4 + 4] = {0};
    const size_t n = moe__header__get_packed_size(&t.h);
    uint8_t *hb = malloc(n);
    moe__header__pack(&t.h, hb);
    const void *frames[2] = {hb, pl};
    const size_t sizes[2] = {n, sizeof pl};
    ck_assert_int_eq(moe_wire_decode(frames, sizes, 2, &t.lim, &msg, NULL, 0), MOE_ERR_SHAPE);
    moe_wire_msg_free(&msg);
    free(hb);
    moe_wire_msg_free(NULL);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* decode: valid messages */

static void decode_ok(struct wt *t, struct moe_wire_msg *msg, const uint8_t *payload,
                      size_t payload_len)
{
    const size_t n = moe__header__get_packed_size(&t->h);
    uint8_t *hb = malloc(n);
    ck_assert_uint_eq(moe__header__pack(&t->h, hb), n);
    uint8_t *pb = dup_bytes(payload, payload_len);
    const void *frames[2] = {hb, pb};
    const size_t sizes[2] = {n, payload_len};
    char err[256] = "";
    const int rc = moe_wire_decode(frames, sizes, 2, &t->lim, msg, err, sizeof err);
    ck_assert_msg(rc == 0, "valid message rejected: %d %s", rc, err);
    free(hb);
    free(pb);
}

START_TEST(wire_decode_valid_f32)
{
    struct wt t;
    wt_init(&t);
    float x[3 * W];
    tu_fill(x, 3 * W, 5, 3.0f);
    struct moe_wire_msg msg;
    decode_ok(&t, &msg, (const uint8_t *)x, sizeof x); /* little-endian host */
    ck_assert_ptr_nonnull(msg.hdr);
    ck_assert_ptr_nonnull(msg.data);
    ck_assert_uint_eq((uintptr_t)msg.data % 64, 0);
    ck_assert_uint_eq(msg.rows, 3);
    ck_assert_uint_eq(msg.identity_len, 0);
    ck_assert_int_eq(memcmp(msg.data, x, sizeof x), 0);
    moe_wire_msg_free(&msg);
    ck_assert_ptr_null(msg.data);
    ck_assert_ptr_null(msg.hdr);

    /* limits exactly at the caps are accepted */
    wt_init(&t);
    t.lim.max_rows = 3;
    t.lim.max_experts = 2;
    t.lim.max_bytes = moe__header__get_packed_size(&t.h) + sizeof x;
    decode_ok(&t, &msg, (const uint8_t *)x, sizeof x);
    moe_wire_msg_free(&msg);

    /* any width when lim->width is 0; FETCH_REPLY is a tensor type */
    wt_init(&t);
    t.lim.width = 0;
    t.h.width = 2;
    t.h.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH_REPLY;
    decode_ok(&t, &msg, (const uint8_t *)x, 3 * 2 * 4);
    ck_assert_int_eq(memcmp(msg.data, x, 3 * 2 * 4), 0);
    moe_wire_msg_free(&msg);
}
END_TEST

START_TEST(wire_decode_valid_zero_rows_and_control)
{
    struct wt t;
    struct moe_wire_msg msg;
    char err[128];
    /* 0 rows: payload frame absent ... */
    wt_init(&t);
    t.counts[0] = t.counts[1] = 0;
    t.nframes = 1;
    t.payload_len = 0;
    ck_assert_int_eq(wt_run(&t, &msg, err, sizeof err), 0);
    ck_assert_uint_eq(msg.rows, 0);
    ck_assert_ptr_null(msg.data);
    ck_assert_uint_eq(msg.hdr->n_expert_ids, 2);
    moe_wire_msg_free(&msg);
    /* ... or present and empty */
    wt_init(&t);
    t.counts[0] = t.counts[1] = 0;
    t.payload_len = 0;
    ck_assert_int_eq(wt_run(&t, &msg, err, sizeof err), 0);
    ck_assert_ptr_null(msg.data);
    moe_wire_msg_free(&msg);
    /* a control message with an (empty) payload frame, and expert ids */
    wt_init(&t);
    t.h.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH;
    t.payload_len = 0;
    ck_assert_int_eq(wt_run(&t, &msg, err, sizeof err), 0);
    ck_assert_uint_eq(msg.rows, 3);
    ck_assert_ptr_null(msg.data);
    moe_wire_msg_free(&msg);
    /* an error message with the longest text allowed */
    wt_init(&t);
    m_error_text_long(&t);
    t.text[MOE_WIRE_ERROR_TEXT_MAX] = 0;
    ck_assert_int_eq(wt_run(&t, &msg, err, sizeof err), 0);
    ck_assert_uint_eq(strlen(msg.hdr->error_text), MOE_WIRE_ERROR_TEXT_MAX);
    ck_assert_int_eq(msg.hdr->error_code, MOE_ERR_SHAPE);
    moe_wire_msg_free(&msg);
}
END_TEST

START_TEST(wire_decode_bf16_and_f16_payloads)
{
    struct wt t;
    wt_init(&t);
    t.h.dtype = MOE__DTYPE__DTYPE_BF16;
    /* little-endian bf16 bit patterns and the floats they are */
    static const uint16_t bf[3 * W] = {0x3f80, 0xbf80, 0x0000, 0x8000, 0x7f80, 0xff80,
                                       0x4049, 0x0001, 0x7f7f, 0x3e80, 0xc2c8, 0x3c00};
    uint8_t pl[sizeof bf];
    for (size_t i = 0; i < 3 * W; i++)
        pl[2 * i] = (uint8_t)bf[i], pl[2 * i + 1] = (uint8_t)(bf[i] >> 8);
    struct moe_wire_msg msg;
    decode_ok(&t, &msg, pl, sizeof pl);
    for (size_t i = 0; i < 3 * W; i++) {
        uint32_t bits;
        memcpy(&bits, &msg.data[i], 4);
        ck_assert_uint_eq(bits, (uint32_t)bf[i] << 16);
    }
    ck_assert(msg.data[0] == 1.0f && msg.data[10] == -100.0f && msg.data[9] == 0.25f);
    moe_wire_msg_free(&msg);

    /* f16: 1, -2, 65504, 2^-24 (smallest subnormal), 2^-14 (smallest normal),
     * inf, -0, 0.5, 1023 * 2^-24 (largest subnormal), NaN, 1/3 rounded, 2^15 */
    wt_init(&t);
    t.h.dtype = MOE__DTYPE__DTYPE_F16;
    static const uint16_t hf[3 * W] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x0400, 0x7c00,
                                       0x8000, 0x3800, 0x03ff, 0x7e00, 0x3555, 0x7800};
    const float want[3 * W] = {1.0f, -2.0f, 65504.0f, 0x1p-24f, 0x1p-14f, INFINITY,
                               -0.0f, 0.5f, 1023 * 0x1p-24f, NAN, 0x1.554p-2f, 32768.0f};
    for (size_t i = 0; i < 3 * W; i++)
        pl[2 * i] = (uint8_t)hf[i], pl[2 * i + 1] = (uint8_t)(hf[i] >> 8);
    decode_ok(&t, &msg, pl, sizeof pl);
    for (size_t i = 0; i < 3 * W; i++) {
        if (isnan(want[i]))
            ck_assert(isnan(msg.data[i]));
        else
            ck_assert_int_eq(memcmp(&msg.data[i], &want[i], 4), 0);
    }
    moe_wire_msg_free(&msg);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* sockets */

struct pair {
    void *ctx, *router, *dealer;
};

static void *sock_new(void *ctx, int type)
{
    void *s = zmq_socket(ctx, type);
    ck_assert_ptr_nonnull(s);
    const int zero = 0, timeout_ms = 5000;
    ck_assert_int_eq(zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero), 0);
    ck_assert_int_eq(zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms), 0);
    return s;
}

/* A ROUTER bound to inproc://wire-test and a DEALER named `name` (NULL: let
 * ROUTER make up an identity) connected to it. */
static void pair_open(struct pair *p, const char *name)
{
    p->ctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(p->ctx);
    p->router = sock_new(p->ctx, ZMQ_ROUTER);
    ck_assert_int_eq(zmq_bind(p->router, "inproc://wire-test"), 0);
    p->dealer = sock_new(p->ctx, ZMQ_DEALER);
    if (name)
        ck_assert_int_eq(zmq_setsockopt(p->dealer, ZMQ_ROUTING_ID, name, strlen(name)), 0);
    ck_assert_int_eq(zmq_connect(p->dealer, "inproc://wire-test"), 0);
}

static void pair_close(struct pair *p)
{
    ck_assert_int_eq(zmq_close(p->dealer), 0);
    ck_assert_int_eq(zmq_close(p->router), 0);
    ck_assert_int_eq(zmq_ctx_term(p->ctx), 0);
}

static const struct moe_wire_limits big_lim = {
    .max_bytes = 1 << 20, .width = 0, .max_experts = 64, .max_rows = 1 << 16};

static const int32_t s_ids[3] = {0, 9, 1000};
static const uint32_t s_counts[3] = {2, 0, 3};

static struct moe_wire_out out_forward(Moe__DType dtype)
{
    return (struct moe_wire_out){.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD,
                                 .step = UINT64_MAX - 1,
                                 .rank = 3,
                                 .request_id = UINT64_C(0xfeedface12345678),
                                 .expert_ids = s_ids,
                                 .row_counts = s_counts,
                                 .n_experts = 3,
                                 .dtype = dtype,
                                 .width = 6,
                                 .row0 = 1234567,
                                 .placement_version = 300,
                                 .layer = 1};
}

static void check_header(const Moe__Header *h, const struct moe_wire_out *o)
{
    ck_assert_int_eq(h->type, o->type);
    ck_assert_uint_eq(h->version, MOE_WIRE_VERSION);
    ck_assert(h->step == o->step);
    ck_assert_uint_eq(h->rank, o->rank);
    ck_assert(h->request_id == o->request_id);
    ck_assert_uint_eq(h->n_expert_ids, o->n_experts);
    ck_assert_uint_eq(h->n_row_counts, o->n_experts);
    for (size_t i = 0; i < o->n_experts; i++) {
        ck_assert_int_eq(h->expert_ids[i], o->expert_ids[i]);
        ck_assert_uint_eq(h->row_counts[i], o->row_counts[i]);
    }
    ck_assert_int_eq(h->dtype, o->dtype);
    ck_assert_uint_eq(h->width, o->width);
    ck_assert(h->row0 == o->row0);
    ck_assert_int_eq(h->error_code, o->error_code);
    ck_assert_str_eq(h->error_text, o->error_text ? o->error_text : "");
    ck_assert_uint_eq(h->placement_version, o->placement_version);
    ck_assert_uint_eq(h->layer, o->layer); /* the MoE layer (version 3) */
}

/* 5 rows x 6: random values plus the awkward bit patterns. */
static void fill_awkward(float *x)
{
    tu_fill(x, 30, 77, 10.0f);
    static const uint32_t bits[] = {0x80000000u, 0x00000001u, 0x7f800000u, 0xff800000u,
                                    0x7fc00001u, 0xffbfffffu, 0x7f7fffffu, 0x3f808000u};
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++)
        memcpy(&x[3 * i], &bits[i], 4);
}

START_TEST(wire_socket_f32_bitwise_both_ways)
{
    struct pair p;
    pair_open(&p, "worker-7");
    float x[30];
    fill_awkward(x);
    const struct moe_wire_out o = out_forward(MOE__DTYPE__DTYPE_F32);
    char err[256] = "";
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, x, 5, err, sizeof err), 0);

    struct moe_wire_msg msg;
    int rc = moe_wire_recv(p.router, true, 0, &big_lim, &msg, err, sizeof err);
    ck_assert_msg(rc == 0, "%d %s", rc, err);
    ck_assert_uint_eq(msg.identity_len, 8);
    ck_assert_int_eq(memcmp(msg.identity, "worker-7", 8), 0);
    check_header(msg.hdr, &o);
    ck_assert_uint_eq(msg.rows, 5);
    /* float32 is used where it arrived: in its frame, not copied */
    ck_assert_ptr_nonnull(msg.frame);
    ck_assert_ptr_eq(msg.data, zmq_msg_data(msg.frame));
    ck_assert_uint_eq((uintptr_t)msg.data % _Alignof(float), 0);
    ck_assert_int_eq(memcmp(msg.data, x, sizeof x), 0);

    /* the reply goes back by the identity, in the request's own frame, and
     * arrives without one */
    struct moe_wire_out r = o;
    r.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY;
    for (size_t i = 0; i < 30; i++)
        msg.data[i] = -msg.data[i];
    ck_assert_int_eq(
        moe_wire_send_in_place(p.router, msg.identity, msg.identity_len, &r, &msg, err, sizeof err),
        0);
    struct moe_wire_msg back;
    ck_assert_int_eq(moe_wire_recv(p.dealer, false, 0, &big_lim, &back, err, sizeof err), 0);
    ck_assert_uint_eq(back.identity_len, 0);
    check_header(back.hdr, &r);
    ck_assert_int_eq(memcmp(back.data, msg.data, sizeof x), 0);
    moe_wire_msg_free(&back);
    moe_wire_msg_free(&msg);
    pair_close(&p);
}
END_TEST

START_TEST(wire_socket_bf16_and_f16_rounded)
{
    struct pair p;
    pair_open(&p, "w");
    float x[30];
    fill_awkward(x);
    char err[256] = "";
    struct moe_wire_msg msg;

    /* bf16: what arrives is exactly the rounded value of what was sent */
    struct moe_wire_out o = out_forward(MOE__DTYPE__DTYPE_BF16);
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, x, 5, err, sizeof err), 0);
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &big_lim, &msg, err, sizeof err), 0);
    check_header(msg.hdr, &o);
    uint16_t b[30];
    float want[30];
    moe_wire_f32_to_bf16(b, x, 30);
    moe_wire_bf16_to_f32(want, b, 30);
    ck_assert_int_eq(memcmp(msg.data, want, sizeof want), 0);
    /* converted, so a copy of its own */
    ck_assert_ptr_null(msg.frame);
    ck_assert_uint_eq((uintptr_t)msg.data % 64, 0);
    ck_assert(msg.data[21] == 1.0f); /* 0x3f808000: the tie went to even */
    ck_assert(isinf(msg.data[18]));  /* FLT_MAX rounds up past the largest bf16 */
    ck_assert(isnan(msg.data[12]) && isnan(msg.data[15]));
    moe_wire_msg_free(&msg);

    /* f16: hand-picked values and their round-to-nearest-even results */
    static const float in[12] = {1.0f,        1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65504.0f,
                                 65519.0f,    65520.0f,        0x1p-25f,            0x1.8p-25f,
                                 -0x1p-14f,   1e-10f,          INFINITY,            NAN};
    static const float outv[12] = {1.0f,      1.0f,      1.0f + 4 * 0x1p-11f, 65504.0f,
                                   65504.0f,  INFINITY,  0.0f,                0x1p-24f,
                                   -0x1p-14f, 0.0f,      INFINITY,            NAN};
    static const int32_t one_id = 4;
    static const uint32_t one_count = 2;
    o = out_forward(MOE__DTYPE__DTYPE_F16);
    o.expert_ids = &one_id, o.row_counts = &one_count, o.n_experts = 1;
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, in, 2, err, sizeof err), 0);
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &big_lim, &msg, err, sizeof err), 0);
    for (int i = 0; i < 12; i++) {
        if (isnan(outv[i]))
            ck_assert(isnan(msg.data[i]));
        else
            ck_assert_msg(memcmp(&msg.data[i], &outv[i], 4) == 0, "f16 %d: %a -> %a", i,
                          (double)in[i], (double)msg.data[i]);
    }
    moe_wire_msg_free(&msg);
    pair_close(&p);
}
END_TEST

START_TEST(wire_socket_zero_rows_and_error)
{
    struct pair p;
    pair_open(&p, "w0");
    char err[256] = "";
    static const uint32_t zero[3] = {0, 0, 0};
    struct moe_wire_out o = out_forward(MOE__DTYPE__DTYPE_F32);
    o.row_counts = zero;
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, NULL, 0, err, sizeof err), 0);
    /* on the wire: identity and header, no payload frame */
    zmq_msg_t m;
    zmq_msg_init(&m);
    ck_assert_int_eq(zmq_msg_recv(&m, p.router, 0), 2);
    ck_assert(zmq_msg_more(&m));
    ck_assert_int_ge(zmq_msg_recv(&m, p.router, 0), 1);
    ck_assert(!zmq_msg_more(&m));
    zmq_msg_close(&m);

    struct moe_wire_msg msg;
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, NULL, 0, err, sizeof err), 0);
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &big_lim, &msg, err, sizeof err), 0);
    check_header(msg.hdr, &o);
    ck_assert_uint_eq(msg.rows, 0);
    ck_assert_ptr_null(msg.data);

    /* an error reply echoing step and request id */
    const struct moe_wire_out e = {.type = MOE__MSG_TYPE__MSG_ERROR,
                                   .step = msg.hdr->step,
                                   .request_id = msg.hdr->request_id,
                                   .error_code = MOE_ERR_STATE,
                                   .error_text = "expert 9 is not on this server"};
    ck_assert_int_eq(
        moe_wire_send(p.router, msg.identity, msg.identity_len, &e, NULL, 0, err, sizeof err), 0);
    moe_wire_msg_free(&msg);
    ck_assert_int_eq(moe_wire_recv(p.dealer, false, 0, &big_lim, &msg, err, sizeof err), 0);
    check_header(msg.hdr, &e);
    moe_wire_msg_free(&msg);
    pair_close(&p);
}
END_TEST

START_TEST(wire_socket_identities)
{
    struct pair p;
    pair_open(&p, NULL); /* ROUTER makes up this one: 5 bytes, starting with 0 */
    void *d2 = sock_new(p.ctx, ZMQ_DEALER);
    char name[255];
    memset(name, 'n', sizeof name); /* the longest identity zmq allows */
    ck_assert_int_eq(zmq_setsockopt(d2, ZMQ_ROUTING_ID, name, sizeof name), 0);
    ck_assert_int_eq(zmq_connect(d2, "inproc://wire-test"), 0);
    char err[256] = "";
    struct moe_wire_out o = {.type = MOE__MSG_TYPE__MSG_HEARTBEAT, .rank = 1};
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, NULL, 0, err, sizeof err), 0);
    o.rank = 2;
    ck_assert_int_eq(moe_wire_send(d2, NULL, 0, &o, NULL, 0, err, sizeof err), 0);

    struct moe_wire_msg a, b;
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &big_lim, &a, err, sizeof err), 0);
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &big_lim, &b, err, sizeof err), 0);
    if (a.hdr->rank == 2) { /* arrival order between two peers is not fixed */
        struct moe_wire_msg t = a;
        a = b;
        b = t;
    }
    ck_assert_uint_eq(a.hdr->rank, 1);
    ck_assert_uint_eq(a.identity_len, 5);
    ck_assert_uint_eq(a.identity[0], 0);
    ck_assert_uint_eq(b.identity_len, sizeof name);
    ck_assert_int_eq(memcmp(b.identity, name, sizeof name), 0);

    /* replies reach the right peer */
    o.rank = 100;
    ck_assert_int_eq(moe_wire_send(p.router, b.identity, b.identity_len, &o, NULL, 0, err,
                                   sizeof err),
                     0);
    o.rank = 200;
    ck_assert_int_eq(moe_wire_send(p.router, a.identity, a.identity_len, &o, NULL, 0, err,
                                   sizeof err),
                     0);
    moe_wire_msg_free(&a);
    moe_wire_msg_free(&b);
    ck_assert_int_eq(moe_wire_recv(d2, false, 0, &big_lim, &a, err, sizeof err), 0);
    ck_assert_uint_eq(a.hdr->rank, 100);
    ck_assert_int_eq(moe_wire_recv(p.dealer, false, 0, &big_lim, &b, err, sizeof err), 0);
    ck_assert_uint_eq(b.hdr->rank, 200);
    moe_wire_msg_free(&a);
    moe_wire_msg_free(&b);
    ck_assert_int_eq(zmq_close(d2), 0);
    pair_close(&p);
}
END_TEST

/* Sends n frames of 8 bytes each, raw. */
static void send_raw_frames(void *s, int n)
{
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(zmq_send(s, "garbage!", 8, i + 1 < n ? ZMQ_SNDMORE : 0), 8);
}

START_TEST(wire_socket_long_message_drained)
{
    struct pair p;
    pair_open(&p, "w5");
    char err[256] = "";
    float x[30];
    fill_awkward(x);
    const struct moe_wire_out o = out_forward(MOE__DTYPE__DTYPE_F32);
    struct moe_wire_msg msg;

    /* ROUTER side: 5 frames after the identity */
    send_raw_frames(p.dealer, 5);
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, x, 5, err, sizeof err), 0);
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &big_lim, &msg, err, sizeof err),
                     MOE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err, "5 frames"));
    ck_assert_uint_eq(msg.identity_len, 2);
    ck_assert_int_eq(memcmp(msg.identity, "w5", 2), 0);
    ck_assert_ptr_null(msg.hdr);
    ck_assert_ptr_null(msg.data);
    moe_wire_msg_free(&msg);
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &big_lim, &msg, err, sizeof err), 0);
    check_header(msg.hdr, &o);
    ck_assert_int_eq(memcmp(msg.data, x, sizeof x), 0);

    /* DEALER side: 5 frames, then a good reply */
    ck_assert_int_eq(zmq_send(p.router, msg.identity, msg.identity_len, ZMQ_SNDMORE),
                     (int)msg.identity_len);
    send_raw_frames(p.router, 5);
    ck_assert_int_eq(
        moe_wire_send(p.router, msg.identity, msg.identity_len, &o, x, 5, err, sizeof err), 0);
    moe_wire_msg_free(&msg);
    ck_assert_int_eq(moe_wire_recv(p.dealer, false, 0, &big_lim, &msg, err, sizeof err),
                     MOE_ERR_FORMAT);
    moe_wire_msg_free(&msg);
    ck_assert_int_eq(moe_wire_recv(p.dealer, false, 0, &big_lim, &msg, err, sizeof err), 0);
    ck_assert_int_eq(memcmp(msg.data, x, sizeof x), 0);
    moe_wire_msg_free(&msg);

    /* a bad 2-frame message (garbage header) is rejected and the next one is
     * fine */
    send_raw_frames(p.dealer, 2);
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, x, 5, err, sizeof err), 0);
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &big_lim, &msg, err, sizeof err),
                     MOE_ERR_FORMAT);
    moe_wire_msg_free(&msg);
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &big_lim, &msg, err, sizeof err), 0);
    moe_wire_msg_free(&msg);
    pair_close(&p);
}
END_TEST

START_TEST(wire_socket_no_message_and_limits)
{
    struct pair p;
    pair_open(&p, "w");
    char err[256] = "";
    struct moe_wire_msg msg;
    ck_assert_int_eq(moe_wire_recv(p.router, true, ZMQ_DONTWAIT, &big_lim, &msg, err, sizeof err),
                     MOE_ERR_STATE);
    ck_assert_str_eq(err, "no message");
    ck_assert_ptr_null(msg.hdr);
    ck_assert_uint_eq(msg.identity_len, 0);

    /* a message over the receiver's limits is rejected after a full receive,
     * with the header kept for the error reply */
    float x[30];
    fill_awkward(x);
    const struct moe_wire_out o = out_forward(MOE__DTYPE__DTYPE_F32);
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, x, 5, err, sizeof err), 0);
    struct moe_wire_limits lim = big_lim;
    lim.width = 8;
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &lim, &msg, err, sizeof err),
                     MOE_ERR_SHAPE);
    ck_assert_ptr_nonnull(msg.hdr);
    ck_assert(msg.hdr->request_id == o.request_id);
    ck_assert_uint_eq(msg.identity_len, 1);
    moe_wire_msg_free(&msg);
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, x, 5, err, sizeof err), 0);
    lim = big_lim;
    lim.max_rows = 4;
    ck_assert_int_eq(moe_wire_recv(p.router, true, 0, &lim, &msg, err, sizeof err),
                     MOE_ERR_RANGE);
    moe_wire_msg_free(&msg);
    ck_assert_int_eq(moe_wire_recv(p.router, true, ZMQ_DONTWAIT, &big_lim, &msg, err, sizeof err),
                     MOE_ERR_STATE);
    pair_close(&p);
}
END_TEST

START_TEST(wire_socket_send_refuses_bad_requests)
{
    struct pair p;
    pair_open(&p, "w");
    char err[256] = "";
    float x[30] = {0};
    struct moe_wire_out o = out_forward(MOE__DTYPE__DTYPE_F32);
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, x, 4, err, sizeof err), MOE_ERR_SHAPE);
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, NULL, 5, err, sizeof err),
                     MOE_ERR_SHAPE);
    o.dtype = (Moe__DType)9;
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, x, 5, err, sizeof err), MOE_ERR_SHAPE);
    o = out_forward(MOE__DTYPE__DTYPE_F32);
    o.width = 0;
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &o, x, 5, err, sizeof err), MOE_ERR_SHAPE);
    char *text = malloc(MOE_WIRE_ERROR_TEXT_MAX + 2);
    memset(text, 'e', MOE_WIRE_ERROR_TEXT_MAX + 1);
    text[MOE_WIRE_ERROR_TEXT_MAX + 1] = 0;
    const struct moe_wire_out e = {.type = MOE__MSG_TYPE__MSG_ERROR, .error_text = text};
    ck_assert_int_eq(moe_wire_send(p.dealer, NULL, 0, &e, NULL, 0, err, sizeof err),
                     MOE_ERR_RANGE);
    free(text);
    /* nothing of the refused messages reached the peer */
    struct moe_wire_msg msg;
    ck_assert_int_eq(moe_wire_recv(p.router, true, ZMQ_DONTWAIT, &big_lim, &msg, err, sizeof err),
                     MOE_ERR_STATE);

    /* an unroutable identity on a mandatory ROUTER is an I/O error */
    const int one = 1;
    ck_assert_int_eq(zmq_setsockopt(p.router, ZMQ_ROUTER_MANDATORY, &one, sizeof one), 0);
    o = out_forward(MOE__DTYPE__DTYPE_F32);
    ck_assert_int_eq(
        moe_wire_send(p.router, (const uint8_t *)"nobody", 6, &o, x, 5, err, sizeof err),
        MOE_ERR_IO);
    ck_assert(err[0] != 0);
    pair_close(&p);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* bf16 */

static uint16_t bf16_of_bits(uint32_t x)
{
    float f;
    memcpy(&f, &x, 4);
    uint16_t b;
    moe_wire_f32_to_bf16(&b, &f, 1);
    return b;
}

START_TEST(wire_bf16_round_to_nearest_even)
{
    static const struct {
        uint32_t in;
        uint16_t out;
    } t[] = {
        {0x3f800000u, 0x3f80}, /* 1: exact */
        {0x3f807fffu, 0x3f80}, /* just under half an ulp: down */
        {0x3f808000u, 0x3f80}, /* tie, 0x3f80 even: down */
        {0x3f808001u, 0x3f81}, /* just over half: up */
        {0x3f818000u, 0x3f82}, /* tie, 0x3f81 odd: up to even */
        {0xbf818000u, 0xbf82}, /* the same, negative */
        {0x3fffffffu, 0x4000}, /* carry into the exponent */
        {0x7f7f7fffu, 0x7f7f}, /* stays the largest finite bf16 */
        {0x7f7f8000u, 0x7f80}, /* tie at the top, odd: up to inf */
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX: inf */
        {0xff7fffffu, 0xff80}, /* -FLT_MAX: -inf */
        {0x00000000u, 0x0000},
        {0x80000000u, 0x8000}, /* -0 keeps its sign */
        {0x00008000u, 0x0000}, /* subnormal tie: down to even 0 */
        {0x00018000u, 0x0002}, /* subnormal tie: up to even */
        {0x00000001u, 0x0000}, /* smallest subnormal: 0 */
        {0x40490fdbu, 0x4049}, /* pi */
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        ck_assert_msg(bf16_of_bits(t[i].in) == t[i].out, "%08x -> %04x, expected %04x", t[i].in,
                      bf16_of_bits(t[i].in), t[i].out);

    /* bf16 -> f32 is exact, and f32 -> bf16 -> f32 -> bf16 is stable */
    for (uint32_t b = 0; b < 0x10000u; b += 7) {
        const uint16_t h = (uint16_t)b;
        float f;
        moe_wire_bf16_to_f32(&f, &h, 1);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        ck_assert_uint_eq(bits, b << 16);
        if (!isnan(f))
            ck_assert_uint_eq(bf16_of_bits(bits), h);
    }
}
END_TEST

START_TEST(wire_bf16_nan_and_inf)
{
    ck_assert_uint_eq(bf16_of_bits(0x7f800000u), 0x7f80);
    ck_assert_uint_eq(bf16_of_bits(0xff800000u), 0xff80);
    /* NaNs whose payload is only in the low half would round to inf, or
     * (0x7fffffff) carry into the sign: they must stay NaN with their sign */
    static const uint32_t nans[] = {0x7f800001u, 0x7f807fffu, 0x7f808000u, 0x7fffffffu,
                                    0x7fc00000u, 0xff800001u, 0xffffffffu, 0xffc00000u};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        const uint16_t b = bf16_of_bits(nans[i]);
        ck_assert_msg((b & 0x7f80) == 0x7f80 && (b & 0x007f) != 0, "%08x -> %04x not NaN",
                      nans[i], b);
        ck_assert_uint_eq(b & 0x8000, (nans[i] >> 16) & 0x8000);
        float f;
        moe_wire_bf16_to_f32(&f, &b, 1);
        ck_assert(isnan(f));
    }
    /* a quiet NaN keeps its top payload bits */
    ck_assert_uint_eq(bf16_of_bits(0x7fc12345u), 0x7fc1);
    float back[2];
    const uint16_t inf[2] = {0x7f80, 0xff80};
    moe_wire_bf16_to_f32(back, inf, 2);
    ck_assert(isinf(back[0]) && back[0] > 0 && isinf(back[1]) && back[1] < 0);
}
END_TEST

START_TEST(wire_dtype_sizes)
{
    ck_assert_uint_eq(moe_wire_dtype_size(MOE__DTYPE__DTYPE_F32), 4);
    ck_assert_uint_eq(moe_wire_dtype_size(MOE__DTYPE__DTYPE_BF16), 2);
    ck_assert_uint_eq(moe_wire_dtype_size(MOE__DTYPE__DTYPE_F16), 2);
    ck_assert_uint_eq(moe_wire_dtype_size(3), 0);
    ck_assert_uint_eq(moe_wire_dtype_size(-1), 0);
}
END_TEST


/* ------------------------------------------------------------------------- */
/* pooled payloads */

START_TEST(wire_pool_reuse_and_late_give)
{
    moe_wire_pool_t *pool = moe_wire_pool_new();
    ck_assert_ptr_nonnull(pool);
    float *a = moe_wire_pool_take(pool, 1000);
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq((uintptr_t)a % 64, 0);
    memset(a, 0xab, 1000 * sizeof(float)); /* all of it is ours (ASan) */
    ck_assert_uint_eq(moe_wire_pool_lent(pool), 1);
    moe_wire_pool_give(a);
    ck_assert_uint_eq(moe_wire_pool_lent(pool), 0);
    /* a smaller or equal request reuses it; a larger one cannot */
    float *b = moe_wire_pool_take(pool, 900);
    ck_assert_ptr_eq(b, a);
    float *c = moe_wire_pool_take(pool, 5000);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_ne(c, a);
    memset(c, 0xcd, 5000 * sizeof(float));
    ck_assert_uint_eq(moe_wire_pool_lent(pool), 2);
    moe_wire_pool_give(b);
    /* destroyed while c is still out: c's return frees the pool (ASan and
     * the leak check see both) */
    moe_wire_pool_destroy(&pool);
    ck_assert_ptr_null(pool);
    moe_wire_pool_give(c);
    moe_wire_pool_give(NULL);
}
END_TEST

/* Waits up to 5 s for ZeroMQ to give every buffer back. */
static void wait_all_back(moe_wire_pool_t *pool)
{
    for (int i = 0; i < 500 && moe_wire_pool_lent(pool) > 0; i++)
        usleep(10000);
    ck_assert_uint_eq(moe_wire_pool_lent(pool), 0);
}

static void pooled_round_trip(const char *endpoint)
{
    void *ctx = zmq_ctx_new();
    void *router = sock_new(ctx, ZMQ_ROUTER), *dealer = sock_new(ctx, ZMQ_DEALER);
    ck_assert_int_eq(zmq_bind(router, endpoint), 0);
    char bound[256];
    size_t blen = sizeof bound;
    ck_assert_int_eq(zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, bound, &blen), 0);
    ck_assert_int_eq(zmq_connect(dealer, bound), 0);
    moe_wire_pool_t *pool = moe_wire_pool_new();
    char err[256] = "";
    float x[30];
    fill_awkward(x);

    /* float32: ZeroMQ sends from the pool's buffer; over inproc the
     * receiver gets that very buffer */
    struct moe_wire_out o = out_forward(MOE__DTYPE__DTYPE_F32);
    float *buf = moe_wire_pool_take(pool, 30);
    memcpy(buf, x, sizeof x);
    ck_assert_int_eq(moe_wire_send_pooled(dealer, NULL, 0, &o, buf, 5, err, sizeof err), 0);
    struct moe_wire_msg msg;
    ck_assert_int_eq(moe_wire_recv(router, true, 0, &big_lim, &msg, err, sizeof err), 0);
    check_header(msg.hdr, &o);
    ck_assert_int_eq(memcmp(msg.data, x, sizeof x), 0);
    if (strncmp(endpoint, "inproc", 6) == 0) {
        ck_assert_ptr_eq(msg.data, buf);
        ck_assert_uint_eq(moe_wire_pool_lent(pool), 1); /* held by the message */
    }
    moe_wire_msg_free(&msg);
    wait_all_back(pool);
    /* the next message reuses it */
    float *again = moe_wire_pool_take(pool, 30);
    ck_assert_ptr_eq(again, buf);

    /* bf16: converted into a frame of its own, the buffer back at once */
    o = out_forward(MOE__DTYPE__DTYPE_BF16);
    memcpy(again, x, sizeof x);
    ck_assert_int_eq(moe_wire_send_pooled(dealer, NULL, 0, &o, again, 5, err, sizeof err), 0);
    ck_assert_uint_eq(moe_wire_pool_lent(pool), 0);
    ck_assert_int_eq(moe_wire_recv(router, true, 0, &big_lim, &msg, err, sizeof err), 0);
    ck_assert_int_eq(msg.hdr->dtype, MOE__DTYPE__DTYPE_BF16);
    ck_assert(msg.data[0] != 0.0f || x[0] == 0.0f);
    moe_wire_msg_free(&msg);

    /* a bad request sends nothing and still takes the buffer back */
    o = out_forward(MOE__DTYPE__DTYPE_F32);
    buf = moe_wire_pool_take(pool, 30);
    ck_assert_int_eq(moe_wire_send_pooled(dealer, NULL, 0, &o, buf, 4, err, sizeof err),
                     MOE_ERR_SHAPE);
    ck_assert_uint_eq(moe_wire_pool_lent(pool), 0);
    ck_assert_int_eq(moe_wire_recv(router, true, ZMQ_DONTWAIT, &big_lim, &msg, err, sizeof err),
                     MOE_ERR_STATE);
    moe_wire_msg_free(&msg);

    /* a message in flight when everything closes: the pool goes last */
    buf = moe_wire_pool_take(pool, 30);
    memcpy(buf, x, sizeof x);
    ck_assert_int_eq(moe_wire_send_pooled(dealer, NULL, 0, &o, buf, 5, err, sizeof err), 0);
    moe_wire_pool_destroy(&pool);
    ck_assert_int_eq(zmq_close(dealer), 0);
    ck_assert_int_eq(zmq_close(router), 0);
    ck_assert_int_eq(zmq_ctx_term(ctx), 0);
}

START_TEST(wire_socket_pooled_inproc) { pooled_round_trip("inproc://wire-pool"); }
END_TEST

START_TEST(wire_socket_pooled_tcp) { pooled_round_trip("tcp://127.0.0.1:*"); }
END_TEST

Suite *test_wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("decode");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, wire_decode_malformed_table);
    tcase_add_test(tc, wire_decode_previous_version);
    tcase_add_test(tc, wire_decode_group_forward);
    tcase_add_test(tc, wire_decode_errors_fit_small_buffers);
    tcase_add_test(tc, wire_decode_valid_f32);
    tcase_add_test(tc, wire_decode_valid_zero_rows_and_control);
    tcase_add_test(tc, wire_decode_bf16_and_f16_payloads);
    suite_add_tcase(s, tc);
    tc = tcase_create("sockets");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, wire_socket_f32_bitwise_both_ways);
    tcase_add_test(tc, wire_socket_bf16_and_f16_rounded);
    tcase_add_test(tc, wire_socket_zero_rows_and_error);
    tcase_add_test(tc, wire_socket_identities);
    tcase_add_test(tc, wire_socket_long_message_drained);
    tcase_add_test(tc, wire_socket_no_message_and_limits);
    tcase_add_test(tc, wire_socket_send_refuses_bad_requests);
    tcase_add_test(tc, wire_pool_reuse_and_late_give);
    tcase_add_test(tc, wire_socket_pooled_inproc);
    tcase_add_test(tc, wire_socket_pooled_tcp);
    suite_add_tcase(s, tc);
    tc = tcase_create("bf16");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, wire_bf16_round_to_nearest_even);
    tcase_add_test(tc, wire_bf16_nan_and_inf);
    tcase_add_test(tc, wire_dtype_sizes);
    suite_add_tcase(s, tc);
    return s;
}
