/* The wire codec: ZeroMQ multipart messages <-> validated moe.Header + tensor
 * (DESIGN §5). A message is [identity (ROUTER side only)] [header] [payload];
 * the payload is rows x width elements, little-endian, in the header's dtype
 * (F32, BF16 or F16), and is always handed to the caller as float32.
 *
 * Used by every process that talks on the network: the expert servers and the
 * coordinator (ROUTER side) and the workers (DEALER side). This is the one
 * place that bounds and checks bytes off the wire; it does not check what
 * depends on state (which experts a server owns, the expected step, the
 * placement version), does not reply to bad messages, log, count errors or
 * create sockets. Stateless: any thread may call it on a socket it owns. */
#ifndef MOE_WIRE_H
#define MOE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe.pb-c.h"

/* 3: a hierarchical MoE's group messages (issue 17); 4: Header.layer, the
 * MoE layer of a training call (the translation model, issue 19). A peer of
 * another version gets "protocol version 3, expected 4 ..." and the sender
 * the same sentence back. */
#define MOE_WIRE_VERSION 4

/* Longest error_text accepted, in bytes (without the terminating NUL). */
#define MOE_WIRE_ERROR_TEXT_MAX 1024

/* Caps checked on every received message. All three caps are real limits
 * (0 means "nothing is allowed", not "unlimited"); only width has a wildcard. */
struct moe_wire_limits {
    size_t max_bytes;     /* cap on the whole message (also what to set as ZMQ_MAXMSGSIZE) */
    uint32_t width;       /* required row width of tensor payloads; 0 = any */
    uint32_t max_experts; /* cap on expert_ids entries */
    uint64_t max_rows;    /* cap on the sum of row_counts */
};

/* One received message. Zero it (or moe_wire_msg_free it) before reuse. */
struct moe_wire_msg {
    Moe__Header *hdr;      /* unpacked header, owned (NULL if it did not decode) */
    float *data;           /* payload as float32, rows * width floats, owned by msg and
                            * writable; NULL when rows == 0 and always NULL for non-tensor
                            * types. From moe_wire_recv, a float32 payload stays in the
                            * received frame (no copy); from moe_wire_decode, or in another
                            * dtype, it is a 64-byte aligned copy. */
    void *frame;           /* the zmq_msg_t data lies in, when it was not copied */
    uint64_t rows;         /* sum of row_counts */
    uint8_t identity[256]; /* ROUTER peer identity (router receives) */
    size_t identity_len;
    char user_id[16];      /* what the ZAP handler authenticated the sender as ("" when the
                            * connection is not authenticated; moe_sec_peer reads it) */
};

/* What to send: the header fields the sender chooses (version is set by
 * moe_wire_send). Everything is borrowed for the duration of the call. */
struct moe_wire_out {
    Moe__MsgType type;
    uint64_t step;
    uint32_t rank;
    uint64_t request_id;
    const int32_t *expert_ids; /* n_experts, ascending, >= 0 */
    const uint32_t *row_counts;/* n_experts; their sum must equal the rows passed to send */
    size_t n_experts;
    Moe__DType dtype;          /* payload encoding on the wire: F32, or BF16 (round to nearest
                                * even); F16 also works (round to nearest even) */
    uint32_t width;
    uint64_t row0;
    int32_t error_code;
    const char *error_text;    /* NULL = empty; at most MOE_WIRE_ERROR_TEXT_MAX bytes */
    uint32_t placement_version;
    bool eval;                 /* EXPERT_FORWARD for evaluation (no barrier, nothing kept) */
    uint32_t layer;            /* EXPERT_FORWARD/BACKWARD: the MoE layer of a training call */
    uint32_t role;             /* REGISTER / HEARTBEAT: 1 worker, 2 server, 3 tool */
    const char *endpoint;      /* REGISTER: where the sender serves; NULL = empty */
    double loss, tokens_per_sec; /* STATS */
    const int32_t *placement;  /* REGISTER reply: server of each expert */
    size_t n_placement;
    const char *const *servers; /* REGISTER reply: endpoint of each server */
    size_t n_servers;
    uint64_t rows_total, bytes_total, errors_total; /* HEARTBEAT of a server */
    uint64_t refused_total;    /* HEARTBEAT of a server: connections refused */
    double latency_seconds;
    uint32_t epoch;            /* configuration the sender runs in */
    uint32_t flags;            /* MOE_FLAG_* */
    const char *checkpoint;    /* EPOCH: checkpoint folder; NULL = empty */
    const char *config;        /* REGISTER: "key=value" lines of the training configuration */
    uint64_t config_digest;    /* REGISTER: digest of config */
    const char *workers;       /* REGISTER reply: the cluster's worker list; NULL = empty */
    uint64_t incarnation;      /* REGISTER: random per process */
    /* for /metrics (proto/moe.proto fields 33-40) */
    uint64_t bytes_in_total, bytes_out_total; /* HEARTBEAT of a server */
    const uint64_t *compute_buckets;          /* HEARTBEAT of a server: n_compute_buckets */
    size_t n_compute_buckets;
    double compute_seconds_sum;
    const uint64_t *errors_by_reason;         /* HEARTBEAT of a server: n_errors_by_reason */
    size_t n_errors_by_reason;
    double cpu_seconds;                       /* HEARTBEAT (server), STATS (worker) */
    uint64_t rss_bytes;
    uint64_t tokens;                          /* STATS */
    /* GROUP_* messages (proto fields 41-43) */
    const uint32_t *row_index;                /* GROUP_FORWARD: n_row_index (= rows) */
    size_t n_row_index;
    const float *row_gate;                    /* GROUP_FORWARD, GROUP_BACKWARD_REPLY: n_row_gate */
    size_t n_row_gate;
    const float *group_stats;                 /* GROUP_FORWARD_REPLY, GROUP_BACKWARD */
    size_t n_group_stats;
};

/* Header flags, by message type. */
enum {
    /* STATS_REPLY and EXPERT_BACKWARD: checkpoint once this step is done */
    MOE_FLAG_CHECKPOINT = 1u << 0,
    /* STATS_REPLY: after this step (and its checkpoint) wait for a new epoch */
    MOE_FLAG_RECONFIGURE = 1u << 1,
    /* EPOCH_WAIT: the sender failed in its epoch (a peer is late or gone) */
    MOE_FLAG_TROUBLE = 1u << 2,
    /* EPOCH_WAIT (server): the sender has loaded the state of its epoch */
    MOE_FLAG_LOADED = 1u << 3,
    /* EPOCH: not ready yet, ask again shortly */
    MOE_FLAG_NOT_READY = 1u << 4,
    /* EPOCH: write the initial checkpoint (step = 0) before the first step */
    MOE_FLAG_INITIAL_CHECKPOINT = 1u << 5,
    /* EPOCH (server): this server has no part in the epoch: drained, exit */
    MOE_FLAG_DRAINED = 1u << 6,
    /* EPOCH: training is over (every step done), stop */
    MOE_FLAG_FINISHED = 1u << 7,
    /* STATS_REPLY: checkpoint after this step (with MOE_FLAG_CHECKPOINT), then
     * stop; EPOCH and ACK: the cluster was stopped by the operator, exit 0 */
    MOE_FLAG_STOP = 1u << 8,
    /* ERROR: the cluster stopped on a failure it cannot recover from (the
     * error text says which): exit non-zero */
    MOE_FLAG_FAILED = 1u << 9,
    /* REGISTER (server): `rank` is the id this server already has */
    MOE_FLAG_HAS_ID = 1u << 10,
    /* EXPERT_FETCH (and its reply): the ids are groups of a hierarchical
     * MoE; a row per group holds its secondary gate and their state */
    MOE_FLAG_GROUPS = 1u << 11,
};

/* Pure decoding and validation of already-received frames (no sockets): used
 * by moe_wire_recv, the tests and the fuzzer.
 *
 * frames: 1 or 2 byte arrays (header, optional payload), sizes[i] bytes each.
 * Checks, in this order, with the code returned:
 *   nframes is 1 or 2                                            FORMAT
 *   header frame not empty                                       FORMAT
 *   header frame <= max_bytes (before unpacking it)              RANGE
 *   header unpacks (protobuf-c returns NULL -> malformed)        FORMAT
 *   version == MOE_WIRE_VERSION                                  VERSION
 *   type is a known MsgType other than MSG_UNKNOWN               FORMAT
 *   dtype is a known DType                                       FORMAT
 *   len(row_counts) == len(expert_ids)                           FORMAT
 *   len(expert_ids) <= max_experts                               RANGE
 *   expert_ids >= 0 and strictly ascending (no duplicates)       FORMAT
 *   sum of row_counts (checked add) <= max_rows                  RANGE
 *   tensor types (EXPERT_FORWARD, _REPLY, EXPERT_BACKWARD, _REPLY,
 *   EXPERT_FETCH_REPLY, STATS, STATS_REPLY, GROUP_FORWARD, _REPLY,
 *   GROUP_BACKWARD, _REPLY):
 *     width != 0, and == lim->width when lim->width != 0         SHAPE
 *     rows * width * dtype size overflows size_t                 RANGE
 *     payload bytes == rows * width * dtype size (0 rows: the
 *     payload frame absent or empty)                             SHAPE
 *   other types: no payload frame, or an empty one               SHAPE
 *   GROUP_FORWARD: one row_index and one row_gate per row;
 *   GROUP_BACKWARD_REPLY: one row_gate per row                   SHAPE
 *   header + payload <= max_bytes                                RANGE
 *   error_text <= MOE_WIRE_ERROR_TEXT_MAX bytes                  RANGE
 *   the float32 buffer could not be allocated                    NOMEM
 * On success returns 0, msg->hdr and msg->rows are set and, for tensor types
 * with rows > 0, msg->data holds the payload converted to float32 (caller
 * owns both; release with moe_wire_msg_free). On failure returns the negative
 * MOE_ERR_* above and writes a short sentence into err (if err && errlen);
 * msg->hdr is kept if the header decoded (so the caller can echo request_id
 * and step) and is NULL otherwise; msg->data is NULL. Either way the caller
 * frees msg with moe_wire_msg_free.
 * *msg is overwritten (identity included) without freeing what it held.
 * Header strings are not sanitised: error_text may hold any bytes, so pass it
 * through moe_log_sanitize before logging it. lim and msg must not be NULL. */
int moe_wire_decode(const void *const *frames, const size_t *sizes, int nframes,
                    const struct moe_wire_limits *lim, struct moe_wire_msg *msg, char *err,
                    size_t errlen);

/* moe_wire_decode of frames as if received on a ROUTER from the peer
 * `identity`, authenticated as `user_id` (NULL or "": not): fills
 * msg->identity and msg->user_id too (tests and fuzzing feed daemons this
 * way, without a network). */
int moe_wire_decode_as(const void *const *frames, const size_t *sizes, int nframes,
                       const struct moe_wire_limits *lim, const uint8_t *identity,
                       size_t identity_len, const char *user_id, struct moe_wire_msg *msg,
                       char *err, size_t errlen);

/* Receives one whole multipart message from sock (ROUTER when router is true:
 * the first frame is the peer identity, copied into msg->identity). Always
 * drains every frame of the message, even on error or when there are more than
 * 3 frames, so the next call starts on a message boundary. flags: 0 or
 * ZMQ_DONTWAIT, for the first frame only (later frames of a multipart message
 * are already there).
 * Returns what moe_wire_decode returns; additionally MOE_ERR_STATE "no message"
 * when the first frame is not there (EAGAIN: ZMQ_DONTWAIT or ZMQ_RCVTIMEO
 * expiry; msg stays zeroed) and MOE_ERR_IO when zmq_msg_recv fails otherwise
 * (ETERM, EINTR on the first frame, ...; zmq_strerror in err). The identity is
 * filled whenever it was received, whatever the result. *msg is overwritten
 * without freeing what it held; the caller frees it with moe_wire_msg_free
 * after every call. Only the thread that owns sock may call this. */
int moe_wire_recv(void *sock, bool router, int flags, const struct moe_wire_limits *lim,
                  struct moe_wire_msg *msg, char *err, size_t errlen);

/* Frees hdr and data and zeroes *msg; safe on a zeroed msg and on NULL. */
void moe_wire_msg_free(struct moe_wire_msg *msg);

/* Sends [identity (if identity_len > 0)] [header] [payload if rows > 0].
 * data holds rows * width float32 (row-major, rows in expert_ids order),
 * converted to h->dtype on the way out; it may be NULL when rows == 0.
 * Sets version to MOE_WIRE_VERSION. Blocking as zmq_send is (a DEALER waits
 * at its high-water mark, a ROUTER drops). Returns 0; before sending anything,
 * MOE_ERR_SHAPE when rows differs from the sum of h->row_counts, h->dtype is
 * unknown, or rows > 0 with width 0 or data NULL, and MOE_ERR_RANGE when the
 * payload size overflows or error_text is longer than MOE_WIRE_ERROR_TEXT_MAX;
 * MOE_ERR_NOMEM; or MOE_ERR_IO with zmq_strerror in err (when a frame after
 * the first fails the peer may get a partial message, which it rejects). The
 * receiver's other checks (ids ascending, limits) are not repeated here. Only the
 * thread that owns sock may call this. */
int moe_wire_send(void *sock, const uint8_t *identity, size_t identity_len,
                  const struct moe_wire_out *h, const float *data, uint64_t rows, char *err,
                  size_t errlen);

/* Sends m->data (m->rows rows) as the payload, like moe_wire_send. When the
 * payload still lies in the frame it arrived in (moe_wire_recv) and goes out
 * as float32, that frame itself is sent, shared rather than copied: a server
 * answers in the buffer the request came in. m stays the caller's, to free
 * as usual; its data must not change until it is freed. */
int moe_wire_send_in_place(void *sock, const uint8_t *identity, size_t identity_len,
                           const struct moe_wire_out *h, const struct moe_wire_msg *m, char *err,
                           size_t errlen);

/* Payload buffers that ZeroMQ sends without a copy (zmq_msg_init_data):
 * take one, write the payload into it, and hand it to moe_wire_send_pooled.
 * ZeroMQ's I/O thread gives it back to the pool when the bytes have left, so
 * the steady state neither allocates nor copies. Thread-safe. */
typedef struct moe_wire_pool moe_wire_pool_t;

moe_wire_pool_t *moe_wire_pool_new(void);

/* Frees the idle buffers now, and the pool itself once ZeroMQ has given back
 * every buffer it still holds (closing the sockets or the context does). */
void moe_wire_pool_destroy(moe_wire_pool_t **pp);

/* A 64-byte aligned buffer of at least `floats` floats, or NULL when out of
 * memory. */
float *moe_wire_pool_take(moe_wire_pool_t *p, size_t floats);

/* Returns a buffer of moe_wire_pool_take to its pool; NULL is a no-op. */
void moe_wire_pool_give(float *buf);

/* Buffers taken and not yet given back (by the caller or by ZeroMQ). */
size_t moe_wire_pool_lent(moe_wire_pool_t *p);

/* moe_wire_send with the payload in buf (from moe_wire_pool_take), which it
 * takes in every case, sent or not: as float32 ZeroMQ sends straight from
 * it, in another dtype it is converted into a frame and given back at once.
 * The caller must not touch buf afterwards. */
int moe_wire_send_pooled(void *sock, const uint8_t *identity, size_t identity_len,
                         const struct moe_wire_out *h, float *buf, uint64_t rows, char *err,
                         size_t errlen);

/* The dtype named by the option wire_dtype ("f32" or "bf16") into *out.
 * 0, or MOE_ERR_CONFIG with a sentence naming the option. */
int moe_wire_dtype_parse(const char *name, Moe__DType *out, char *err, size_t errlen);

/* Bytes of one element of a dtype (4 for F32, 2 for BF16 and F16), 0 for an
 * unknown value. */
size_t moe_wire_dtype_size(int dtype);

/* bf16 conversions used on the wire, n elements in host byte order (dst and
 * src must not overlap). f32 -> bf16 rounds to nearest, ties to even;
 * overflow gives +-inf, inf stays inf, NaN stays NaN (quieted, sign kept).
 * bf16 -> f32 is exact. */
void moe_wire_f32_to_bf16(uint16_t *dst, const float *src, size_t n);
void moe_wire_bf16_to_f32(float *dst, const uint16_t *src, size_t n);

#endif
