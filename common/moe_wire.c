/* The wire codec (see moe_wire.h): ZeroMQ multipart frames <-> moe.Header
 * plus a float32 tensor, with every length bounded before it is used.
 *
 * Runs in every networked process (expert servers, coordinator, workers).
 * Validation is one straight sequence of checks in moe_wire_decode, in the
 * order the header documents; the socket functions only move frames. Nothing
 * here logs, keeps state or trusts a byte that came off the network: sizes
 * are multiplied and added with overflow checks, and element conversion reads
 * the payload byte by byte (little-endian) so that frame alignment and host
 * byte order do not matter. */
#include "moe_wire.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "moe_bf16.h"
#include "moe_err.h"
#include "moe_tensor.h"

/* ------------------------------------------------------------------------- */
/* Errors */


/* The schema's name of a message type, for error sentences. */
static const char *wire_type_name(int type)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&moe__msg_type__descriptor,
                                                                       type);
    return v ? v->name : "an unknown type";
}

/* ------------------------------------------------------------------------- */
/* Element conversions. Scalar helpers on bit patterns, shared by the public
 * host-order functions and the little-endian frame readers and writers;
 * bf16 has vectorised kernels of its own (moe_bf16.h). */

/* IEEE binary16 from binary32 bits, round to nearest even, in integers so
 * that the FPU rounding mode plays no part. */
static inline uint16_t wire_f16_from_bits(uint32_t x)
{
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet, keep the top of the payload */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) /* >= 65520 = 65504 + half an ulp: rounds to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* >= 2^-14: a normal half */
        uint32_t h = (ax >> 13) - (112u << 10); /* rebias the exponent 127 -> 15 */
        const uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
            h++; /* a carry into the exponent is the right answer */
        return (uint16_t)(sign | h);
    }
    if (ax <= 0x33000000u) /* <= 2^-25, half the smallest subnormal: ties to 0 */
        return sign;
    /* A subnormal half counts units of 2^-24. The value is m * 2^(e-150) with
     * the implicit bit in m, so the count is m >> (126 - e); 14 <= shift <= 24. */
    const uint32_t e = ax >> 23;
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u)))
        q++; /* 0x400 is the smallest normal, also right */
    return (uint16_t)(sign | q);
}

static inline uint32_t wire_f16_to_bits(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0x1fu) /* inf or NaN */
        return sign | 0x7f800000u | (mant << 13);
    if (exp != 0)
        return sign | ((exp + 112u) << 23) | (mant << 13);
    /* zero or subnormal: mant * 2^-24 is exact in float */
    const float f = (float)mant * 0x1p-24f;
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return sign | bits;
}

void moe_wire_f32_to_bf16(uint16_t *dst, const float *src, size_t n)
{
    moe_bf16_from_f32(dst, src, n);
}

void moe_wire_bf16_to_f32(float *dst, const uint16_t *src, size_t n)
{
    moe_bf16_to_f32(dst, src, n);
}

int moe_wire_dtype_parse(const char *name, Moe__DType *out, char *err, size_t errlen)
{
    if (strcmp(name, "f32") == 0)
        *out = MOE__DTYPE__DTYPE_F32;
    else if (strcmp(name, "bf16") == 0)
        *out = MOE__DTYPE__DTYPE_BF16;
    else
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "--wire-dtype: expected f32 or bf16, got \"%s\"", name);
    return 0;
}

size_t moe_wire_dtype_size(int dtype)
{
    switch (dtype) {
    case MOE__DTYPE__DTYPE_F32: return 4;
    case MOE__DTYPE__DTYPE_BF16: return 2;
    case MOE__DTYPE__DTYPE_F16: return 2;
    }
    return 0;
}

/* n elements of a little-endian payload in `dtype` -> float32. */
static void wire_payload_to_f32(float *dst, const uint8_t *src, size_t n, int dtype)
{
    switch (dtype) {
    case MOE__DTYPE__DTYPE_F32:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(dst, src, n * 4);
#else
        for (size_t i = 0; i < n; i++) {
            const uint8_t *p = src + 4 * i;
            const uint32_t x = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                               (uint32_t)p[3] << 24;
            memcpy(&dst[i], &x, sizeof x);
        }
#endif
        break;
    case MOE__DTYPE__DTYPE_BF16:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        moe_bf16_to_f32(dst, src, n); /* vectorised (moe_bf16.h) */
#else
        for (size_t i = 0; i < n; i++) {
            const uint32_t x = ((uint32_t)src[2 * i] | (uint32_t)src[2 * i + 1] << 8) << 16;
            memcpy(&dst[i], &x, sizeof x);
        }
#endif
        break;
    case MOE__DTYPE__DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            const uint32_t x =
                wire_f16_to_bits((uint16_t)(src[2 * i] | (unsigned)src[2 * i + 1] << 8));
            memcpy(&dst[i], &x, sizeof x);
        }
        break;
    default:
        assert(!"dtype validated by the caller");
    }
}

/* n float32 -> little-endian `dtype` bytes. */
static void wire_f32_to_payload(uint8_t *dst, const float *src, size_t n, int dtype)
{
    switch (dtype) {
    case MOE__DTYPE__DTYPE_F32:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        memcpy(dst, src, n * 4);
#else
        for (size_t i = 0; i < n; i++) {
            uint32_t x;
            memcpy(&x, &src[i], sizeof x);
            for (int k = 0; k < 4; k++)
                dst[4 * i + k] = (uint8_t)(x >> (8 * k));
        }
#endif
        break;
    case MOE__DTYPE__DTYPE_BF16:
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        moe_bf16_from_f32(dst, src, n); /* vectorised (moe_bf16.h) */
        break;
#endif
    case MOE__DTYPE__DTYPE_F16:
        for (size_t i = 0; i < n; i++) {
            uint32_t x;
            memcpy(&x, &src[i], sizeof x);
            const uint16_t h = dtype == MOE__DTYPE__DTYPE_BF16 ? moe_bf16_round(x)
                                                               : wire_f16_from_bits(x);
            dst[2 * i] = (uint8_t)h;
            dst[2 * i + 1] = (uint8_t)(h >> 8);
        }
        break;
    default:
        assert(!"dtype validated by the caller");
    }
}

/* ------------------------------------------------------------------------- */
/* Decoding */

/* Message types whose payload frame is a rows x width tensor. */
static bool wire_type_has_tensor(int type)
{
    switch (type) {
    case MOE__MSG_TYPE__MSG_EXPERT_FORWARD:
    case MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY:
    case MOE__MSG_TYPE__MSG_EXPERT_BACKWARD:
    case MOE__MSG_TYPE__MSG_EXPERT_BACKWARD_REPLY:
    case MOE__MSG_TYPE__MSG_EXPERT_FETCH_REPLY:
    case MOE__MSG_TYPE__MSG_STATS:
    case MOE__MSG_TYPE__MSG_STATS_REPLY:
    case MOE__MSG_TYPE__MSG_GROUP_FORWARD:
    case MOE__MSG_TYPE__MSG_GROUP_FORWARD_REPLY:
    case MOE__MSG_TYPE__MSG_GROUP_BACKWARD:
    case MOE__MSG_TYPE__MSG_GROUP_BACKWARD_REPLY:
        return true;
    }
    return false;
}

/* A hierarchical MoE's group messages carry one index and one primary
 * gate per row (GROUP_FORWARD), or one gate gradient per row
 * (GROUP_BACKWARD_REPLY). */
static int wire_check_group_rows(const Moe__Header *hdr, uint64_t rows, char *err, size_t errlen)
{
    const bool fwd = hdr->type == MOE__MSG_TYPE__MSG_GROUP_FORWARD;
    if ((fwd && hdr->n_row_index != rows) ||
        ((fwd || hdr->type == MOE__MSG_TYPE__MSG_GROUP_BACKWARD_REPLY) && hdr->n_row_gate != rows))
        return moe_err_fail(MOE_ERR_SHAPE, err, errlen,
                            "%s with %zu row indices and %zu row gates for %llu rows",
                            wire_type_name(hdr->type), hdr->n_row_index, hdr->n_row_gate,
                            (unsigned long long)rows);
    return 0;
}

/* The checks of moe_wire_decode, leaving msg->identity alone so that
 * moe_wire_recv can fill it first. Reads nothing of frames/sizes before the
 * frame count is known to be 1 or 2 (moe_wire_recv relies on that). */
static int wire_decode_frames(const void *const *frames, const size_t *sizes, int nframes,
                              const struct moe_wire_limits *lim, bool borrow,
                              struct moe_wire_msg *msg, char *err, size_t errlen)
{
    assert(lim && msg);
    msg->hdr = NULL;
    msg->data = NULL;
    msg->frame = NULL;
    msg->rows = 0;

    if (nframes < 1 || nframes > 2)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                         "message has %d frames, expected a header and at most one payload",
                         nframes);
    /* An empty frame would unpack to an all-default header (proto3); calling
     * that a version mismatch would hide what is wrong. */
    if (sizes[0] == 0)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "header frame is empty");
    if (sizes[0] > lim->max_bytes)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen,
                         "header frame of %zu bytes exceeds the %zu-byte message limit", sizes[0],
                         lim->max_bytes);
    Moe__Header *hdr = moe__header__unpack(NULL, sizes[0], frames[0]);
    if (!hdr)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "header does not decode");
    msg->hdr = hdr;

    if (hdr->version != MOE_WIRE_VERSION)
        return moe_err_fail(MOE_ERR_VERSION, err, errlen,
                            "protocol version %u, expected %d (the peer runs another release:"
                            " every member of a cluster must run the same one)",
                            hdr->version, MOE_WIRE_VERSION);
    if (hdr->type == MOE__MSG_TYPE__MSG_UNKNOWN ||
        !protobuf_c_enum_descriptor_get_value(&moe__msg_type__descriptor, hdr->type))
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "unknown message type %d", (int)hdr->type);
    const size_t dsize = moe_wire_dtype_size(hdr->dtype);
    if (dsize == 0)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "unknown dtype %d", (int)hdr->dtype);

    if (hdr->n_row_counts != hdr->n_expert_ids)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "%zu row counts for %zu expert ids",
                         hdr->n_row_counts, hdr->n_expert_ids);
    if (hdr->n_expert_ids > lim->max_experts)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen, "%zu expert ids, at most %u allowed",
                         hdr->n_expert_ids, lim->max_experts);
    uint64_t rows = 0;
    for (size_t i = 0; i < hdr->n_expert_ids; i++) {
        if (hdr->expert_ids[i] < 0)
            return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "expert id %d is negative",
                             (int)hdr->expert_ids[i]);
        if (i > 0 && hdr->expert_ids[i] <= hdr->expert_ids[i - 1])
            return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                             "expert ids are not strictly ascending (%d after %d)",
                             (int)hdr->expert_ids[i], (int)hdr->expert_ids[i - 1]);
        if (hdr->row_counts[i] > UINT64_MAX - rows)
            return moe_err_fail(MOE_ERR_RANGE, err, errlen, "row counts overflow");
        rows += hdr->row_counts[i];
    }
    if (rows > lim->max_rows)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen, "%llu rows, at most %llu allowed",
                         (unsigned long long)rows, (unsigned long long)lim->max_rows);
    msg->rows = rows;

    const size_t payload = nframes == 2 ? sizes[1] : 0;
    const bool tensor = wire_type_has_tensor(hdr->type);
    size_t need = 0, numel = 0;
    if (tensor) {
        if (hdr->width == 0)
            return moe_err_fail(MOE_ERR_SHAPE, err, errlen, "%s with width 0",
                             wire_type_name(hdr->type));
        if (lim->width != 0 && hdr->width != lim->width)
            return moe_err_fail(MOE_ERR_SHAPE, err, errlen, "width %u, expected %u", hdr->width,
                             lim->width);
        if (rows > SIZE_MAX || moe_size_mul((size_t)rows, hdr->width, &numel) ||
            moe_size_mul(numel, dsize, &need))
            return moe_err_fail(MOE_ERR_RANGE, err, errlen, "payload size overflows");
        if (payload != need)
            return moe_err_fail(MOE_ERR_SHAPE, err, errlen,
                             "payload is %zu bytes, expected %zu (%llu rows x %u x %zu bytes)",
                             payload, need, (unsigned long long)rows, hdr->width, dsize);
    } else if (payload != 0) {
        return moe_err_fail(MOE_ERR_SHAPE, err, errlen, "%s carries no payload, got %zu bytes",
                         wire_type_name(hdr->type), payload);
    }
    const int grc = wire_check_group_rows(hdr, rows, err, errlen);
    if (grc)
        return grc;
    size_t total;
    if (moe_size_add(sizes[0], payload, &total) || total > lim->max_bytes)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen,
                         "message of %zu + %zu bytes exceeds the %zu-byte limit", sizes[0],
                         payload, lim->max_bytes);
    if (hdr->error_text && strlen(hdr->error_text) > MOE_WIRE_ERROR_TEXT_MAX)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen, "error text longer than %d bytes",
                         MOE_WIRE_ERROR_TEXT_MAX);

    if (tensor && numel > 0) {
        /* With borrow, a float32 payload is used where it lies (the caller
         * keeps its frame): no allocation, no copy. */
        if (borrow && hdr->dtype == MOE__DTYPE__DTYPE_F32 &&
            (uintptr_t)frames[1] % _Alignof(float) == 0) {
            msg->data = (float *)(uintptr_t)frames[1];
            return 0;
        }
        /* Not moe_alloc_floats: every element is written just below, so its
         * zero fill would only touch the pages twice. */
        void *p = NULL;
        if (posix_memalign(&p, 64, numel * sizeof(float)) != 0)
            return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "no memory for a %zu-byte payload",
                             numel * sizeof(float));
        wire_payload_to_f32(p, frames[1], numel, hdr->dtype);
        msg->data = p;
    }
    return 0;
}

int moe_wire_decode(const void *const *frames, const size_t *sizes, int nframes,
                    const struct moe_wire_limits *lim, struct moe_wire_msg *msg, char *err,
                    size_t errlen)
{
    assert(msg);
    memset(msg, 0, sizeof *msg);
    return wire_decode_frames(frames, sizes, nframes, lim, false, msg, err, errlen);
}

int moe_wire_decode_as(const void *const *frames, const size_t *sizes, int nframes,
                       const struct moe_wire_limits *lim, const uint8_t *identity,
                       size_t identity_len, const char *user_id, struct moe_wire_msg *msg,
                       char *err, size_t errlen)
{
    int rc = moe_wire_decode(frames, sizes, nframes, lim, msg, err, errlen);
    if (identity_len > sizeof msg->identity)
        identity_len = sizeof msg->identity;
    memcpy(msg->identity, identity, identity_len);
    msg->identity_len = identity_len;
    snprintf(msg->user_id, sizeof msg->user_id, "%s", user_id ? user_id : "");
    return rc;
}

void moe_wire_msg_free(struct moe_wire_msg *msg)
{
    if (!msg)
        return;
    if (msg->hdr)
        moe__header__free_unpacked(msg->hdr, NULL);
    if (msg->frame) {
        zmq_msg_close(msg->frame);
        free(msg->frame);
    } else {
        free(msg->data);
    }
    memset(msg, 0, sizeof *msg);
}

/* ------------------------------------------------------------------------- */
/* Sockets */

int moe_wire_recv(void *sock, bool router, int flags, const struct moe_wire_limits *lim,
                  struct moe_wire_msg *msg, char *err, size_t errlen)
{
    assert(sock && lim && msg);
    memset(msg, 0, sizeof *msg);
    /* Only the first two frames after the identity are kept; the rest of an
     * over-long message is received into `spare` and dropped, so that the
     * socket is left on a message boundary whatever arrived. */
    zmq_msg_t parts[2], spare;
    for (int i = 0; i < 2; i++)
        zmq_msg_init(&parts[i]);
    zmq_msg_init(&spare);
    int nframes = 0, rc = 0;
    bool first = true, more = true;
    while (more) {
        const bool is_identity = first && router;
        zmq_msg_t *m = !is_identity && nframes < 2 ? &parts[nframes] : &spare;
        if (zmq_msg_recv(m, sock, first ? flags : 0) < 0) {
            const int e = zmq_errno();
            /* The later frames of a multipart message are already queued:
             * an interrupted wait for one of them is simply retried. */
            if (!first && e == EINTR)
                continue;
            if (first && e == EAGAIN)
                rc = moe_err_fail(MOE_ERR_STATE, err, errlen, "no message");
            else
                rc = moe_err_fail(MOE_ERR_IO, err, errlen, "receive failed: %s", zmq_strerror(e));
            goto out;
        }
        more = zmq_msg_more(m) != 0;
        if (is_identity) {
            size_t n = zmq_msg_size(m);
            if (n > sizeof msg->identity)
                n = sizeof msg->identity;
            memcpy(msg->identity, zmq_msg_data(m), n);
            msg->identity_len = n;
        } else {
            nframes++;
        }
        first = false;
    }
    {
        /* the connection's authenticated user id, set by the ZAP handler */
        const char *uid = nframes > 0 ? zmq_msg_gets(&parts[0], "User-Id") : NULL;
        if (uid)
            snprintf(msg->user_id, sizeof msg->user_id, "%s", uid);
        const void *frames[2] = {zmq_msg_data(&parts[0]), zmq_msg_data(&parts[1])};
        const size_t sizes[2] = {zmq_msg_size(&parts[0]), zmq_msg_size(&parts[1])};
        /* the payload frame is kept (moved into a zmq_msg_t of the message's
         * own) when the decode borrows it; without memory for that, copy */
        zmq_msg_t *keep = nframes == 2 ? malloc(sizeof *keep) : NULL;
        rc = wire_decode_frames(frames, sizes, nframes, lim, keep != NULL, msg, err, errlen);
        if (keep && msg->data == frames[1]) {
            zmq_msg_init(keep);
            zmq_msg_move(keep, &parts[1]);
            msg->frame = keep;
            /* a very small message lives inside its zmq_msg_t, so it moved */
            msg->data = zmq_msg_data(keep);
        } else {
            free(keep);
        }
    }
out:
    for (int i = 0; i < 2; i++)
        zmq_msg_close(&parts[i]);
    zmq_msg_close(&spare);
    return rc;
}

/* Sends one frame; after the first frame of a message has gone out, an
 * interrupted send is retried so that the peer does not get half a message. */
static int wire_send_frame(zmq_msg_t *m, void *sock, int flags, bool started, char *err,
                           size_t errlen)
{
    for (;;) {
        if (zmq_msg_send(m, sock, flags) >= 0)
            return 0;
        const int e = zmq_errno();
        if (!(started && e == EINTR))
            return moe_err_fail(MOE_ERR_IO, err, errlen, "send failed: %s", zmq_strerror(e));
    }
}

/* The sender's checks, so that a bad request sends nothing at all; the
 * payload's element count and byte size into numel, bytes. */
static int wire_send_check(const struct moe_wire_out *h, bool have_data, uint64_t rows,
                           size_t *numel, size_t *bytes, char *err, size_t errlen)
{
    assert(h);
    assert(h->n_experts == 0 || (h->expert_ids && h->row_counts));
    const size_t dsize = moe_wire_dtype_size(h->dtype);
    if (dsize == 0)
        return moe_err_fail(MOE_ERR_SHAPE, err, errlen, "cannot send dtype %d", (int)h->dtype);
    uint64_t sum = 0;
    for (size_t i = 0; i < h->n_experts; i++) {
        if (h->row_counts[i] > UINT64_MAX - sum)
            return moe_err_fail(MOE_ERR_RANGE, err, errlen, "row counts overflow");
        sum += h->row_counts[i];
    }
    if (sum != rows)
        return moe_err_fail(MOE_ERR_SHAPE, err, errlen, "row counts sum to %llu, but %llu rows given",
                         (unsigned long long)sum, (unsigned long long)rows);
    if (rows > 0 && (h->width == 0 || !have_data))
        return moe_err_fail(MOE_ERR_SHAPE, err, errlen, "%llu rows without width or data",
                         (unsigned long long)rows);
    if (h->error_text && strlen(h->error_text) > MOE_WIRE_ERROR_TEXT_MAX)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen, "error text longer than %d bytes",
                         MOE_WIRE_ERROR_TEXT_MAX);
    if (rows > SIZE_MAX || moe_size_mul((size_t)rows, h->width, numel) ||
        moe_size_mul(*numel, dsize, bytes))
        return moe_err_fail(MOE_ERR_RANGE, err, errlen, "payload size overflows");
    return 0;
}

/* Sends a checked message. The payload is pm when pm already holds it (as
 * float32, zero-copy), else data converted into a new frame. Closes pm. */
static int wire_send_checked(void *sock, const uint8_t *identity, size_t identity_len,
                             const struct moe_wire_out *h, const float *data, size_t numel,
                             size_t bytes, zmq_msg_t *pm, char *err, size_t errlen)
{
    assert(sock);
    assert(identity_len == 0 || identity);
    /* protobuf-c's struct is not const-correct; pack only reads these. */
    Moe__Header hdr = MOE__HEADER__INIT;
    hdr.type = h->type;
    hdr.version = MOE_WIRE_VERSION;
    hdr.step = h->step;
    hdr.rank = h->rank;
    hdr.request_id = h->request_id;
    hdr.n_expert_ids = h->n_experts;
    hdr.expert_ids = (int32_t *)h->expert_ids;
    hdr.n_row_counts = h->n_experts;
    hdr.row_counts = (uint32_t *)h->row_counts;
    hdr.dtype = h->dtype;
    hdr.width = h->width;
    hdr.row0 = h->row0;
    hdr.error_code = h->error_code;
    hdr.error_text = h->error_text ? (char *)h->error_text : (char *)protobuf_c_empty_string;
    hdr.placement_version = h->placement_version;
    hdr.eval = h->eval;
    hdr.layer = h->layer;
    hdr.role = h->role;
    hdr.endpoint = h->endpoint ? (char *)h->endpoint : (char *)protobuf_c_empty_string;
    hdr.loss = h->loss;
    hdr.tokens_per_sec = h->tokens_per_sec;
    hdr.n_placement = h->n_placement;
    hdr.placement = (int32_t *)h->placement;
    hdr.n_servers = h->n_servers;
    hdr.servers = (char **)h->servers;
    hdr.rows_total = h->rows_total;
    hdr.bytes_total = h->bytes_total;
    hdr.errors_total = h->errors_total;
    hdr.refused_total = h->refused_total;
    hdr.latency_seconds = h->latency_seconds;
    hdr.epoch = h->epoch;
    hdr.flags = h->flags;
    hdr.checkpoint = h->checkpoint ? (char *)h->checkpoint : (char *)protobuf_c_empty_string;
    hdr.config = h->config ? (char *)h->config : (char *)protobuf_c_empty_string;
    hdr.config_digest = h->config_digest;
    hdr.workers = h->workers ? (char *)h->workers : (char *)protobuf_c_empty_string;
    hdr.incarnation = h->incarnation;
    hdr.bytes_in_total = h->bytes_in_total;
    hdr.bytes_out_total = h->bytes_out_total;
    hdr.n_compute_buckets = h->n_compute_buckets;
    hdr.compute_buckets = (uint64_t *)h->compute_buckets;
    hdr.compute_seconds_sum = h->compute_seconds_sum;
    hdr.n_errors_by_reason = h->n_errors_by_reason;
    hdr.errors_by_reason = (uint64_t *)h->errors_by_reason;
    hdr.cpu_seconds = h->cpu_seconds;
    hdr.rss_bytes = h->rss_bytes;
    hdr.tokens = h->tokens;
    hdr.n_row_index = h->n_row_index;
    hdr.row_index = (uint32_t *)h->row_index;
    hdr.n_row_gate = h->n_row_gate;
    hdr.row_gate = (float *)h->row_gate;
    hdr.n_group_stats = h->n_group_stats;
    hdr.group_stats = (float *)h->group_stats;

    /* Both frames exist before anything is sent, so that running out of
     * memory cannot leave half a message on the wire. A payload not already
     * in pm (a lent or received frame) is converted straight into a new
     * frame (one pass). */
    zmq_msg_t hm;
    zmq_msg_init(&hm);
    int rc = 0;
    const bool fill = bytes > 0 && zmq_msg_size(pm) != bytes;
    const size_t hlen = moe__header__get_packed_size(&hdr);
    if (zmq_msg_init_size(&hm, hlen) != 0 || (fill && zmq_msg_init_size(pm, bytes) != 0)) {
        rc = moe_err_fail(MOE_ERR_NOMEM, err, errlen, "no memory for a %zu + %zu-byte message",
                       hlen, bytes);
        goto out;
    }
    const size_t packed = moe__header__pack(&hdr, zmq_msg_data(&hm));
    assert(packed == hlen);
    (void)packed;
    if (fill)
        wire_f32_to_payload(zmq_msg_data(pm), data, numel, h->dtype);

    bool started = false;
    if (identity_len > 0) {
        zmq_msg_t im;
        if (zmq_msg_init_size(&im, identity_len) != 0) {
            rc = moe_err_fail(MOE_ERR_NOMEM, err, errlen, "no memory for the identity frame");
            goto out;
        }
        memcpy(zmq_msg_data(&im), identity, identity_len);
        rc = wire_send_frame(&im, sock, ZMQ_SNDMORE, started, err, errlen);
        zmq_msg_close(&im);
        if (rc)
            goto out;
        started = true;
    }
    rc = wire_send_frame(&hm, sock, bytes > 0 ? ZMQ_SNDMORE : 0, started, err, errlen);
    if (rc)
        goto out;
    if (bytes > 0)
        rc = wire_send_frame(pm, sock, 0, true, err, errlen);
out:
    /* After a successful send a zmq_msg_t is empty, and closing it is a no-op. */
    zmq_msg_close(&hm);
    zmq_msg_close(pm);
    return rc;
}

int moe_wire_send(void *sock, const uint8_t *identity, size_t identity_len,
                  const struct moe_wire_out *h, const float *data, uint64_t rows, char *err,
                  size_t errlen)
{
    size_t numel = 0, bytes = 0;
    int rc = wire_send_check(h, data != NULL, rows, &numel, &bytes, err, errlen);
    if (rc)
        return rc;
    zmq_msg_t pm;
    zmq_msg_init(&pm);
    return wire_send_checked(sock, identity, identity_len, h, data, numel, bytes, &pm, err,
                             errlen);
}

int moe_wire_send_in_place(void *sock, const uint8_t *identity, size_t identity_len,
                           const struct moe_wire_out *h, const struct moe_wire_msg *m, char *err,
                           size_t errlen)
{
    assert(m);
    size_t numel = 0, bytes = 0;
    int rc = wire_send_check(h, m->data != NULL, m->rows, &numel, &bytes, err, errlen);
    if (rc)
        return rc;
    zmq_msg_t pm;
    zmq_msg_init(&pm);
    /* the received frame, shared (zmq_msg_copy counts references), when it
     * holds exactly this payload as float32 */
    if (m->frame && bytes > 0 && h->dtype == MOE__DTYPE__DTYPE_F32 &&
        zmq_msg_data(m->frame) == (void *)m->data && zmq_msg_size(m->frame) == bytes &&
        zmq_msg_copy(&pm, m->frame) != 0)
        zmq_msg_init(&pm); /* could not share it: convert a copy */
    return wire_send_checked(sock, identity, identity_len, h, m->data, numel, bytes, &pm, err,
                             errlen);
}

/* ------------------------------------------------------------------------- */
/* Payload buffers lent to ZeroMQ */

/* Each buffer starts with this header, padded to 64 bytes; the floats follow. */
struct pool_buf {
    struct moe_wire_pool *pool;
    size_t cap; /* floats */
    struct pool_buf *next;
};
#define POOL_HEAD 64
/* idle buffers kept beyond this are freed, the smallest first */
#define POOL_IDLE_MAX 8

struct moe_wire_pool {
    pthread_mutex_t mu;
    struct pool_buf *idle;
    int n_idle;
    size_t lent; /* taken and not yet given back */
    bool closing;
};

static struct pool_buf *pool_head(float *buf)
{
    return (struct pool_buf *)(void *)((char *)buf - POOL_HEAD);
}

moe_wire_pool_t *moe_wire_pool_new(void)
{
    moe_wire_pool_t *p = calloc(1, sizeof *p);
    if (p && pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return NULL;
    }
    return p;
}

static void pool_free(moe_wire_pool_t *p)
{
    pthread_mutex_destroy(&p->mu);
    free(p);
}

void moe_wire_pool_destroy(moe_wire_pool_t **pp)
{
    if (!pp || !*pp)
        return;
    moe_wire_pool_t *p = *pp;
    *pp = NULL;
    pthread_mutex_lock(&p->mu);
    while (p->idle) {
        struct pool_buf *b = p->idle;
        p->idle = b->next;
        free(b);
    }
    p->n_idle = 0;
    p->closing = true;
    const bool last = p->lent == 0;
    pthread_mutex_unlock(&p->mu);
    /* otherwise the last buffer ZeroMQ gives back frees the pool */
    if (last)
        pool_free(p);
}

float *moe_wire_pool_take(moe_wire_pool_t *p, size_t floats)
{
    assert(p);
    struct pool_buf *got = NULL, *drop = NULL;
    pthread_mutex_lock(&p->mu);
    assert(!p->closing);
    struct pool_buf **smallest = NULL;
    for (struct pool_buf **b = &p->idle; *b; b = &(*b)->next) {
        if ((*b)->cap >= floats) {
            got = *b;
            *b = got->next;
            p->n_idle--;
            break;
        }
        if (!smallest || (*b)->cap < (*smallest)->cap)
            smallest = b;
    }
    if (!got && smallest && p->n_idle >= POOL_IDLE_MAX) {
        drop = *smallest;
        *smallest = drop->next;
        p->n_idle--;
    }
    if (got)
        p->lent++;
    pthread_mutex_unlock(&p->mu);
    free(drop);
    if (!got) {
        /* a quarter more than asked, so that sizes that vary a little from
         * step to step reuse the buffer */
        size_t cap = floats + floats / 4 + 16, bytes;
        void *mem = NULL;
        if (moe_size_mul(cap, sizeof(float), &bytes) || bytes > SIZE_MAX - POOL_HEAD ||
            posix_memalign(&mem, 64, POOL_HEAD + bytes) != 0)
            return NULL;
        got = mem;
        got->pool = p;
        got->cap = cap;
        pthread_mutex_lock(&p->mu);
        p->lent++;
        pthread_mutex_unlock(&p->mu);
    }
    got->next = NULL;
    return (float *)(void *)((char *)got + POOL_HEAD);
}

size_t moe_wire_pool_lent(moe_wire_pool_t *p)
{
    pthread_mutex_lock(&p->mu);
    const size_t n = p->lent;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void moe_wire_pool_give(float *buf)
{
    if (!buf)
        return;
    struct pool_buf *b = pool_head(buf);
    moe_wire_pool_t *p = b->pool;
    pthread_mutex_lock(&p->mu);
    p->lent--;
    if (p->closing) {
        const bool last = p->lent == 0;
        pthread_mutex_unlock(&p->mu);
        free(b);
        if (last)
            pool_free(p);
        return;
    }
    b->next = p->idle;
    p->idle = b;
    p->n_idle++;
    pthread_mutex_unlock(&p->mu);
}

/* ZeroMQ's free callback for lent payloads (runs in its I/O thread). */
static void pool_release(void *data, void *hint)
{
    (void)hint;
    moe_wire_pool_give(data);
}

int moe_wire_send_pooled(void *sock, const uint8_t *identity, size_t identity_len,
                         const struct moe_wire_out *h, float *buf, uint64_t rows, char *err,
                         size_t errlen)
{
    size_t numel = 0, bytes = 0;
    int rc = wire_send_check(h, buf != NULL, rows, &numel, &bytes, err, errlen);
    if (rc) {
        moe_wire_pool_give(buf);
        return rc;
    }
    zmq_msg_t pm;
    if (bytes > 0 && h->dtype == MOE__DTYPE__DTYPE_F32 &&
        zmq_msg_init_data(&pm, buf, bytes, pool_release, NULL) == 0)
        /* ZeroMQ sends from buf and gives it back when done (or when pm is
         * closed unsent) */
        return wire_send_checked(sock, identity, identity_len, h, buf, numel, bytes, &pm, err,
                                 errlen);
    /* converted (or empty): a frame of its own, and buf back right away */
    zmq_msg_init(&pm);
    rc = wire_send_checked(sock, identity, identity_len, h, buf, numel, bytes, &pm, err, errlen);
    moe_wire_pool_give(buf);
    return rc;
}
