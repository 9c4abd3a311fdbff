/* Deterministic ring all-reduce over ZeroMQ (see moe_allreduce.h for the
 * contract and the summation order). Runs in each trainer worker process,
 * on the thread that owns the object. Wire format: one frame per message, a
 * fixed 48-byte little-endian header followed by the payload of data and
 * abort messages; everything received is checked against what this rank
 * expects before a byte of it is used. It does not retry, reconnect or
 * recover: after an error the ring is out of step, so the object fails
 * every later call and the caller rebuilds the ring. */
#include "moe_allreduce.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "moe_err.h"
#include "moe_log.h"
#include "moe_time.h"

/* Payloads are host-order floats; every rank runs on the same kind of
 * machine, and the header's magic would expose a byte-order mix anyway. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "moe_allreduce sends host-order floats and assumes little-endian hosts"
#endif

/* Why PUSH/PULL. Data in a ring flows one way, rank r -> r+1: exactly a PUSH
 * connected to the next rank's bound PULL. A PUSH never drops: it blocks at
 * the high-water mark, and it queues messages while its connection is still
 * being made, even before the peer has bound (tcp retries the connect, inproc
 * supports connect-before-bind), so a first message is not lost. A PAIR
 * would also work but is meant for inproc (its tcp reconnection is weak), and
 * a DEALER would add a return path that the ring does not need: failures
 * travel forward round the ring as ABORT messages instead. PULL fair-queues
 * all connected pushers, so a stray client could interleave messages; every
 * header therefore names its sender, call and position, and is checked. */

/* ------------------------------------------------------------ wire format */

enum {
    AR_MAGIC = 0x41454f4d, /* "MOEA" as little-endian bytes */
    AR_VERSION = 1,
    AR_HDR_SIZE = 48,
    AR_WIRE_SLACK = 4096, /* room for what a transport adds (CURVE: about 33 bytes) */
    AR_WORLD_MAX = 65536,
    AR_ENDPOINT_MAX = 255, /* characters, to bound error sentences */
    AR_MSG_MAX = 768,      /* error sentences, and the text of an abort */
};

/* Every message is one frame: the header, then the payload.
 * HELLO: no payload, sent once by moe_allreduce_new; aux = piece bytes.
 * DATA:  one piece of one chunk; aux = pieces in the chunk.
 * WAIT:  no payload: "I am alive but waiting for rank aux" (advisory).
 * ABORT: a sentence; chunk = the rank that failed first, aux = -code.
 * One frame rather than header and payload frames because libzmq leaks the
 * first frames of a multipart message whose pipe closes between its frames
 * (lb_t::sendpipe), which happens when a peer leaves while we send; a single
 * frame is also delivered whole or not at all without further thought. */
enum ar_kind { AR_KIND_HELLO = 1, AR_KIND_DATA = 2, AR_KIND_WAIT = 3, AR_KIND_ABORT = 4 };
enum ar_dtype { AR_DTYPE_NONE = 0, AR_DTYPE_F32 = 1, AR_DTYPE_F64 = 2 };

/* Byte offsets in the header: magic u32 @0, version u8 @4, kind u8 @5,
 * dtype u8 @6, zero u8 @7, rank u32 @8, world u32 @12, tag u64 @16,
 * n u64 @24, step u32 @32, chunk u32 @36, piece u32 @40, aux u32 @44. */
struct ar_hdr {
    uint8_t kind, dtype;
    uint32_t rank, world;
    uint64_t tag, n;
    uint32_t step, chunk, piece, aux;
};

static void ar_put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void ar_put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t ar_get32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t ar_get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void ar_hdr_encode(unsigned char out[AR_HDR_SIZE], const struct ar_hdr *h)
{
    ar_put32(out, AR_MAGIC);
    out[4] = AR_VERSION;
    out[5] = h->kind;
    out[6] = h->dtype;
    out[7] = 0;
    ar_put32(out + 8, h->rank);
    ar_put32(out + 12, h->world);
    ar_put64(out + 16, h->tag);
    ar_put64(out + 24, h->n);
    ar_put32(out + 32, h->step);
    ar_put32(out + 36, h->chunk);
    ar_put32(out + 40, h->piece);
    ar_put32(out + 44, h->aux);
}

static const char *ar_kind_name(unsigned kind)
{
    switch (kind) {
    case AR_KIND_HELLO:
        return "hello";
    case AR_KIND_DATA:
        return "data";
    case AR_KIND_WAIT:
        return "wait";
    case AR_KIND_ABORT:
        return "abort";
    default:
        return "unknown";
    }
}

static const char *ar_dtype_name(unsigned dtype)
{
    return dtype == AR_DTYPE_F32 ? "float" : dtype == AR_DTYPE_F64 ? "double" : "unknown-type";
}

/* ------------------------------------------------------------ the object */

struct moe_allreduce {
    void *push;       /* connected to the next rank */
    void *pull;       /* bound at endpoints[rank], fed by the previous rank */
    int rank, world, timeout_ms;
    bool failed;      /* a call failed: the ring is out of step */
    char **endpoints; /* world copies, in the same allocation as the pointers */
    const struct moe_net *net;
};



static int ar_prev(const moe_allreduce_t *a) { return (a->rank + a->world - 1) % a->world; }
static int ar_next(const moe_allreduce_t *a) { return (a->rank + 1) % a->world; }

/* Sends one message, header and `bytes` bytes of payload, without blocking.
 * The frame is built in place in a ZeroMQ message, so the payload is copied
 * once, as zmq_send would. Returns 0, 1 if the queue to the next rank is full
 * (nothing was sent), or -1 with errno. */
static int ar_send_msg(moe_allreduce_t *a, const struct ar_hdr *h, const void *body, size_t bytes)
{
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, AR_HDR_SIZE + bytes))
        return -1;
    unsigned char *p = zmq_msg_data(&m);
    ar_hdr_encode(p, h);
    if (bytes > 0)
        memcpy(p + AR_HDR_SIZE, body, bytes);
    if (zmq_msg_send(&m, a->push, ZMQ_DONTWAIT) >= 0)
        return 0;
    int e = errno;
    zmq_msg_close(&m);
    errno = e;
    return e == EAGAIN ? 1 : -1;
}

/* A received payload: the bytes after the header, inside the message. */
struct ar_body {
    const unsigned char *p;
    size_t size;
};

/* Receives one message that zmq_poll reported, checks that it is a single
 * frame with magic, version, a known kind, the sender we expect and a
 * payload size that fits its kind, and decodes the header; `body` points
 * into `msg`. Returns 0, 1 if there was nothing to receive after all, or a
 * negative code with a sentence naming the previous rank's endpoint. The
 * caller closes msg either way. */
static int ar_recv_msg(moe_allreduce_t *a, zmq_msg_t *msg, struct ar_hdr *h, struct ar_body *body,
                       char *err, size_t errlen)
{
    const int prev = ar_prev(a);
    const char *ep = a->endpoints[prev];
    if (zmq_msg_recv(msg, a->pull, ZMQ_DONTWAIT) < 0) {
        if (errno == EAGAIN)
            return 1; /* nothing after all: the caller polls again */
        return moe_err_fail(MOE_ERR_IO, err, errlen, "rank %d: receiving from rank %d at %s failed: %s",
                       a->rank, prev, ep, zmq_strerror(errno));
    }
    const size_t size = zmq_msg_size(msg);
    const unsigned char *p = zmq_msg_data(msg);
    if (zmq_msg_more(msg))
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                       "rank %d: malformed message from %s: more than one frame", a->rank, ep);
    if (size < AR_HDR_SIZE || ar_get32(p) != AR_MAGIC)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                       "rank %d: malformed message from %s: %zu bytes that do not start with an "
                       "all-reduce header",
                       a->rank, ep, size);
    if (p[4] != AR_VERSION)
        return moe_err_fail(MOE_ERR_VERSION, err, errlen,
                       "rank %d: message from %s has all-reduce protocol version %u, expected %u",
                       a->rank, ep, p[4], (unsigned)AR_VERSION);
    *h = (struct ar_hdr){.kind = p[5], .dtype = p[6], .rank = ar_get32(p + 8),
                         .world = ar_get32(p + 12), .tag = ar_get64(p + 16), .n = ar_get64(p + 24),
                         .step = ar_get32(p + 32), .chunk = ar_get32(p + 36),
                         .piece = ar_get32(p + 40), .aux = ar_get32(p + 44)};
    if (h->kind < AR_KIND_HELLO || h->kind > AR_KIND_ABORT || p[7] != 0)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                       "rank %d: message from %s has kind %u and reserved byte %u (known kinds "
                       "are 1 to 4, the byte must be 0)",
                       a->rank, ep, h->kind, p[7]);
    *body = (struct ar_body){.p = p + AR_HDR_SIZE, .size = size - AR_HDR_SIZE};
    /* DATA sizes are checked against the expected piece later. */
    const size_t body_max = h->kind == AR_KIND_DATA    ? MOE_ALLREDUCE_PIECE_BYTES
                            : h->kind == AR_KIND_ABORT ? AR_MSG_MAX
                                                       : 0;
    if (body->size > body_max)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                       "rank %d: %s message from %s has %zu bytes of payload, at most %zu allowed",
                       a->rank, ar_kind_name(h->kind), ep, body->size, body_max);
    if (h->rank != (uint32_t)prev || h->world != (uint32_t)a->world)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                       "rank %d: message at %s claims to come from rank %u of a ring of %u, "
                       "expected rank %d of %d (were all ranks given the same endpoints?)",
                       a->rank, a->endpoints[a->rank], h->rank, h->world, prev, a->world);
    return 0;
}

/* ------------------------------------------------------------ setup */

/* Sends our hello to the next rank and waits for the previous rank's, both
 * within the timeout. Only the hello's arrival proves the previous rank is
 * up; the next rank checks ours. */
static int ar_handshake(moe_allreduce_t *a, char *err, size_t errlen)
{
    const int prev = ar_prev(a), next = ar_next(a);
    const int64_t deadline = (int64_t)moe_now_ms() + a->timeout_ms;
    const struct ar_hdr hello = {.kind = AR_KIND_HELLO, .rank = (uint32_t)a->rank,
                                 .world = (uint32_t)a->world,
                                 .aux = (uint32_t)MOE_ALLREDUCE_PIECE_BYTES};
    bool sent = false;
    for (;;) {
        if (!sent) {
            int rc = ar_send_msg(a, &hello, NULL, 0);
            if (rc < 0)
                return moe_err_fail(MOE_ERR_IO, err, errlen,
                               "rank %d: sending the hello to rank %d at %s failed: %s", a->rank,
                               next, a->endpoints[next], zmq_strerror(errno));
            sent = rc == 0;
        }
        int64_t now = (int64_t)moe_now_ms();
        if (now >= deadline) {
            if (!sent)
                return moe_err_fail(MOE_ERR_IO, err, errlen,
                               "rank %d: rank %d at %s took no hello within %d ms", a->rank, next,
                               a->endpoints[next], a->timeout_ms);
            return moe_err_fail(MOE_ERR_IO, err, errlen,
                           "rank %d: no hello from rank %d at %s within %d ms (every rank must "
                           "join the ring within the timeout)",
                           a->rank, prev, a->endpoints[prev], a->timeout_ms);
        }
        zmq_pollitem_t it = {.socket = sent ? a->pull : a->push,
                             .events = sent ? ZMQ_POLLIN : ZMQ_POLLOUT};
        if (zmq_poll(&it, 1, (long)(deadline - now)) < 0) {
            if (errno == EINTR)
                continue;
            return moe_err_fail(MOE_ERR_IO, err, errlen, "rank %d: zmq_poll failed: %s", a->rank,
                           zmq_strerror(errno));
        }
        if (!sent || !(it.revents & ZMQ_POLLIN))
            continue;
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        struct ar_hdr h;
        struct ar_body body;
        int rc = ar_recv_msg(a, &msg, &h, &body, err, errlen);
        zmq_msg_close(&msg);
        if (rc == 1)
            continue;
        if (rc)
            return rc;
        if (h.kind != AR_KIND_HELLO)
            return moe_err_fail(MOE_ERR_STATE, err, errlen,
                           "rank %d: a %s message from rank %d at %s came before its hello "
                           "(a ring left over from an earlier run?)",
                           a->rank, ar_kind_name(h.kind), prev, a->endpoints[prev]);
        if (h.aux != (uint32_t)MOE_ALLREDUCE_PIECE_BYTES)
            return moe_err_fail(MOE_ERR_VERSION, err, errlen,
                           "rank %d: rank %d at %s cuts messages at %u bytes, this rank at %zu "
                           "(different builds?)",
                           a->rank, prev, a->endpoints[prev], h.aux, MOE_ALLREDUCE_PIECE_BYTES);
        return 0;
    }
}

/* Copies the endpoint strings into one allocation after the pointers. */
static char **ar_copy_endpoints(const char *const *endpoints, int world, char *err, size_t errlen)
{
    size_t total = (size_t)world * sizeof(char *);
    for (int r = 0; r < world; r++) {
        size_t len = endpoints[r] ? strlen(endpoints[r]) : 0;
        if (len == 0 || len > AR_ENDPOINT_MAX) {
            moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                    "all-reduce: endpoint of rank %d is %s (1 to %d characters needed)", r,
                    !endpoints[r] ? "NULL" : len == 0 ? "empty" : "too long", AR_ENDPOINT_MAX);
            return NULL;
        }
        total += len + 1;
    }
    char **copy = malloc(total);
    if (!copy) {
        moe_err_fail(MOE_ERR_NOMEM, err, errlen, "all-reduce: out of memory for %d endpoints", world);
        return NULL;
    }
    char *s = (char *)(copy + world);
    for (int r = 0; r < world; r++) {
        size_t len = strlen(endpoints[r]) + 1;
        memcpy(s, endpoints[r], len);
        copy[r] = s;
        s += len;
    }
    return copy;
}

/* Whether the socket is bound (its last endpoint is set). */
static bool ar_bound(void *sock)
{
    char ep[256] = "";
    size_t len = sizeof ep;
    return zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, ep, &len) == 0 && ep[0] != '\0';
}

/* Creates both sockets: bind first, so that our endpoint exists as early as
 * possible, then connect (which never waits for the peer). */
static int ar_open_sockets(moe_allreduce_t *a, void *zmq_ctx, char *err, size_t errlen)
{
    const int linger = 0;
    /* on the wire a message is larger than its bytes under CURVE (the
     * MESSAGE command, its nonce and the box's MAC): libzmq checks
     * ZMQ_MAXMSGSIZE against that, and drops the connection with what is
     * queued on it when a frame is over */
    const int64_t maxmsg = (int64_t)(AR_HDR_SIZE + MOE_ALLREDUCE_PIECE_BYTES + AR_WIRE_SLACK);
    const int next = ar_next(a);
    a->pull = zmq_socket(zmq_ctx, ZMQ_PULL);
    a->push = zmq_socket(zmq_ctx, ZMQ_PUSH);
    if (!a->pull || !a->push)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "rank %d: cannot create a ZeroMQ socket: %s",
                       a->rank, zmq_strerror(errno));
    /* what this rank pushed last (the final step's pieces) must reach its
     * successor even when this rank exits right after: a bounded linger
     * (0 dropped it, and the successor waited timeout_ms for it) */
    const int push_linger = a->timeout_ms < 5000 ? (int)a->timeout_ms : 5000;
    if (zmq_setsockopt(a->pull, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(a->push, ZMQ_LINGER, &push_linger, sizeof push_linger) ||
        zmq_setsockopt(a->pull, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg))
        return moe_err_fail(MOE_ERR_IO, err, errlen, "rank %d: cannot set socket options: %s", a->rank,
                       zmq_strerror(errno));
    int rc = moe_net_serve(a->net, a->pull, MOE_SEC_DOMAIN_RING, a->endpoints[a->rank],
                           "the all-reduce ring socket", err, errlen);
    if (rc)
        return rc;
    /* A ring rebuilt in the same process (after a rollback) binds the
     * address its predecessor just closed, which ZeroMQ releases
     * asynchronously: retry within the timeout. */
    const int64_t deadline = (int64_t)moe_now_ms() + a->timeout_ms;
    while (zmq_bind(a->pull, a->endpoints[a->rank]) != 0 && errno == EADDRINUSE &&
           (int64_t)moe_now_ms() < deadline) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (!ar_bound(a->pull))
        return moe_err_fail(MOE_ERR_IO, err, errlen, "rank %d cannot bind %s: %s", a->rank,
                       a->endpoints[a->rank], zmq_strerror(errno));
    char what[64];
    snprintf(what, sizeof what, "worker %d (the next in the ring)", next);
    if (moe_net_connect(a->net, a->push, MOE_SEC_WORKER, a->endpoints[next], what, err, errlen))
        return MOE_ERR_IO;
    return 0;
}

moe_allreduce_t *moe_allreduce_new(void *zmq_ctx, const struct moe_net *net, int rank, int world,
                                   const char *const *endpoints, int timeout_ms, char *err,
                                   size_t errlen)
{
    if (world < 1 || world > AR_WORLD_MAX || rank < 0 || rank >= world) {
        moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                "all-reduce: rank %d of world %d is invalid (need 0 <= rank < world <= %d)", rank,
                world, AR_WORLD_MAX);
        return NULL;
    }
    if (timeout_ms <= 0) {
        moe_err_fail(MOE_ERR_CONFIG, err, errlen, "all-reduce: timeout_ms must be positive, not %d",
                timeout_ms);
        return NULL;
    }
    if (world > 1 && (!zmq_ctx || !endpoints)) {
        moe_err_fail(MOE_ERR_CONFIG, err, errlen, "all-reduce: %s is NULL",
                !zmq_ctx ? "the ZeroMQ context" : "the endpoint list");
        return NULL;
    }
    moe_allreduce_t *a = calloc(1, sizeof *a);
    if (!a) {
        moe_err_fail(MOE_ERR_NOMEM, err, errlen, "all-reduce: out of memory");
        return NULL;
    }
    a->rank = rank;
    a->world = world;
    a->timeout_ms = timeout_ms;
    a->net = net;
    if (world == 1)
        return a;
    a->endpoints = ar_copy_endpoints(endpoints, world, err, errlen);
    if (!a->endpoints || ar_open_sockets(a, zmq_ctx, err, errlen) || ar_handshake(a, err, errlen)) {
        moe_allreduce_destroy(&a);
        return NULL;
    }
    moe_debug("all-reduce: rank %d of %d joined the ring at %s", rank, world, a->endpoints[rank]);
    return a;
}

void moe_allreduce_destroy(moe_allreduce_t **a)
{
    if (!a || !*a)
        return;
    if ((*a)->pull)
        zmq_close((*a)->pull);
    if ((*a)->push)
        zmq_close((*a)->push);
    free((*a)->endpoints);
    free(*a);
    *a = NULL;
}

/* ------------------------------------------------------------ one call */

/* Where a chunk lies and how it is cut into pieces. */
struct ar_span {
    size_t off, len;  /* elements */
    uint32_t pieces;  /* at least 1: an empty chunk still sends its header */
};

struct ar_call {
    moe_allreduce_t *a;
    unsigned char *data; /* n elements of esize bytes; never NULL */
    size_t n, esize, piece_elems;
    uint8_t dtype;
    uint64_t tag;
    uint32_t steps;      /* 2 (world - 1) */
    int blame;           /* the rank our current wait traces back to */
    int abort_origin;    /* >= 0: the rank that aborted the ring first */
    char *msg;           /* the error sentence, AR_MSG_MAX bytes */
    char reason[AR_MSG_MAX / 2]; /* that rank's sentence, passed on unchanged */
};

static struct ar_span ar_span_of(const struct ar_call *c, int chunk)
{
    const size_t w = (size_t)c->a->world, base = c->n / w, rem = c->n % w, k = (size_t)chunk;
    struct ar_span s = {.off = k * base + (k < rem ? k : rem), .len = base + (k < rem)};
    s.pieces = s.len == 0 ? 1 : (uint32_t)((s.len - 1) / c->piece_elems + 1);
    return s;
}

static void ar_piece_of(const struct ar_call *c, const struct ar_span *s, uint32_t piece,
                        size_t *off, size_t *len)
{
    size_t start = (size_t)piece * c->piece_elems;
    *off = s->off + start;
    *len = s->len - start < c->piece_elems ? s->len - start : c->piece_elems;
}

/* partial + local, in that order, for every element: the left-to-right
 * order of the header. The partial arrives as bytes at any alignment (the
 * tcp decoder cuts messages out of a shared buffer), hence the memcpy. */
static void ar_add_f32(float *acc, const unsigned char *partial, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float p;
        memcpy(&p, partial + i * sizeof p, sizeof p);
        acc[i] = p + acc[i];
    }
}

static void ar_add_f64(double *acc, const unsigned char *partial, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        double p;
        memcpy(&p, partial + i * sizeof p, sizeof p);
        acc[i] = p + acc[i];
    }
}

static int ar_send_piece(struct ar_call *c, uint32_t step, int chunk, const struct ar_span *s,
                         uint32_t piece)
{
    moe_allreduce_t *a = c->a;
    size_t off, len;
    ar_piece_of(c, s, piece, &off, &len);
    const struct ar_hdr h = {.kind = AR_KIND_DATA, .dtype = c->dtype, .rank = (uint32_t)a->rank,
                             .world = (uint32_t)a->world, .tag = c->tag, .n = c->n, .step = step,
                             .chunk = (uint32_t)chunk, .piece = piece, .aux = s->pieces};
    int rc = ar_send_msg(a, &h, c->data + off * c->esize, len * c->esize);
    if (rc < 0)
        return moe_err_fail(MOE_ERR_IO, c->msg, AR_MSG_MAX,
                       "rank %d: sending to rank %d at %s failed: %s", a->rank, ar_next(a),
                       a->endpoints[ar_next(a)], zmq_strerror(errno));
    return rc;
}

/* Tells the next rank who we are waiting for, so that every rank stuck
 * behind a silent peer names that peer, not its own neighbour. Advisory:
 * a full queue just skips the note. Sent only while this call still has data
 * for the next rank, so the note is always read within the same call. */
static void ar_send_note(struct ar_call *c, uint32_t step)
{
    moe_allreduce_t *a = c->a;
    const struct ar_hdr h = {.kind = AR_KIND_WAIT, .dtype = c->dtype, .rank = (uint32_t)a->rank,
                             .world = (uint32_t)a->world, .tag = c->tag, .n = c->n, .step = step,
                             .aux = (uint32_t)c->blame};
    (void)ar_send_msg(a, &h, NULL, 0);
}

/* Tells the next rank that the ring failed, with the sentence of the rank
 * that failed first, so that every rank reports the first cause (an abort
 * we received is passed on as it came, not wrapped once per hop). Best
 * effort: a full queue or a dead peer loses it, and the next rank then runs
 * into its own timeout. */
static void ar_send_abort(struct ar_call *c, int code)
{
    moe_allreduce_t *a = c->a;
    const bool forward = c->abort_origin >= 0;
    const char *text = forward ? c->reason : c->msg;
    const struct ar_hdr h = {.kind = AR_KIND_ABORT, .dtype = c->dtype, .rank = (uint32_t)a->rank,
                             .world = (uint32_t)a->world, .tag = c->tag, .n = c->n,
                             .chunk = (uint32_t)(forward ? c->abort_origin : a->rank),
                             .aux = (uint32_t)-code};
    (void)ar_send_msg(a, &h, text, strlen(text));
}

/* Checks a data piece against the one this rank expects next, then adds it
 * to (reduce-scatter) or copies it over (all-gather) our elements. */
static int ar_take_data(struct ar_call *c, const struct ar_hdr *h, const struct ar_body *body,
                        uint32_t step,
                        int chunk, const struct ar_span *s, uint32_t piece, bool add)
{
    moe_allreduce_t *a = c->a;
    const int prev = ar_prev(a);
    const char *ep = a->endpoints[prev];
    if (h->tag != c->tag)
        return moe_err_fail(MOE_ERR_STATE, c->msg, AR_MSG_MAX,
                       "rank %d: rank %d at %s sent a piece of call tag %llu during call tag %llu "
                       "(the ranks are not in the same call)",
                       a->rank, prev, ep, (unsigned long long)h->tag, (unsigned long long)c->tag);
    if (h->dtype != c->dtype || h->n != c->n)
        return moe_err_fail(MOE_ERR_SHAPE, c->msg, AR_MSG_MAX,
                       "rank %d: rank %d at %s sums %llu %s values, this rank %zu %s values (tag %llu)",
                       a->rank, prev, ep, (unsigned long long)h->n, ar_dtype_name(h->dtype), c->n,
                       ar_dtype_name(c->dtype), (unsigned long long)c->tag);
    if (h->step != step || h->chunk != (uint32_t)chunk || h->piece != piece ||
        h->aux != s->pieces)
        return moe_err_fail(MOE_ERR_STATE, c->msg, AR_MSG_MAX,
                       "rank %d: rank %d at %s sent step %u chunk %u piece %u of %u, expected step "
                       "%u chunk %d piece %u of %u (tag %llu)",
                       a->rank, prev, ep, h->step, h->chunk, h->piece, h->aux, step, chunk, piece,
                       s->pieces, (unsigned long long)c->tag);
    size_t off, len;
    ar_piece_of(c, s, piece, &off, &len);
    if (body->size != len * c->esize)
        return moe_err_fail(MOE_ERR_FORMAT, c->msg, AR_MSG_MAX,
                       "rank %d: piece from rank %d at %s has %zu bytes, expected %zu (tag %llu)",
                       a->rank, prev, ep, body->size, len * c->esize,
                       (unsigned long long)c->tag);
    const unsigned char *src = body->p;
    unsigned char *dst = c->data + off * c->esize;
    if (len == 0)
        return 0;
    if (!add)
        memcpy(dst, src, len * c->esize);
    else if (c->dtype == AR_DTYPE_F32)
        ar_add_f32((float *)(void *)dst, src, len);
    else
        ar_add_f64((double *)(void *)dst, src, len);
    return 0;
}

/* A wait note: the previous rank is alive but itself waiting for rank
 * h->aux. Returns 1 if that changed whom we blame, else 0. */
static int ar_take_note(struct ar_call *c, const struct ar_hdr *h)
{
    moe_allreduce_t *a = c->a;
    const int prev = ar_prev(a);
    if (h->tag != c->tag)
        return moe_err_fail(MOE_ERR_STATE, c->msg, AR_MSG_MAX,
                       "rank %d: rank %d at %s sent a note of call tag %llu during call tag %llu "
                       "(the ranks are not in the same call)",
                       a->rank, prev, a->endpoints[prev], (unsigned long long)h->tag,
                       (unsigned long long)c->tag);
    if (h->aux >= (uint32_t)a->world)
        return moe_err_fail(MOE_ERR_FORMAT, c->msg, AR_MSG_MAX,
                       "rank %d: rank %d at %s says it waits for rank %u of %d", a->rank, prev,
                       a->endpoints[prev], h->aux, a->world);
    /* Waiting for us would be a cycle: then blame our neighbour. */
    int blame = h->aux == (uint32_t)a->rank ? prev : (int)h->aux;
    if (blame == c->blame)
        return 0;
    c->blame = blame;
    return 1;
}

static int ar_take_abort(struct ar_call *c, const struct ar_hdr *h, const struct ar_body *body)
{
    moe_allreduce_t *a = c->a;
    const int prev = ar_prev(a);
    int code = -(int)(h->aux > 1000 ? 1000 : h->aux);
    if (code >= 0 || code < MOE_ERR_EMPTY)
        code = MOE_ERR_STATE;
    if (h->chunk >= (uint32_t)a->world)
        return moe_err_fail(MOE_ERR_FORMAT, c->msg, AR_MSG_MAX,
                       "rank %d: rank %d at %s sent an abort from rank %u of %d", a->rank, prev,
                       a->endpoints[prev], h->chunk, a->world);
    /* The text came off the network: keep it printable and bounded. */
    moe_log_sanitize(c->reason, sizeof c->reason, body->p, body->size);
    c->abort_origin = (int)h->chunk;
    return moe_err_fail(code, c->msg, AR_MSG_MAX, "rank %d: rank %u aborted the all-reduce (tag %llu): %s",
                   a->rank, h->chunk, (unsigned long long)c->tag, c->reason);
}

/* Receives one message (known to be waiting) during a step. Returns 1 for
 * the expected data piece (applied), 2 for a note that changed the blame,
 * 0 for any other note, or a negative code. */
static int ar_take(struct ar_call *c, uint32_t step, int chunk, const struct ar_span *s,
                   uint32_t piece, bool add)
{
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    struct ar_hdr h;
    struct ar_body body;
    int rc = ar_recv_msg(c->a, &msg, &h, &body, c->msg, AR_MSG_MAX);
    if (rc) {
        rc = rc == 1 ? 0 : rc;
        goto done;
    }
    /* Left over from a call of an earlier epoch (the tag's bits from 40 up)
     * that failed part-way: dropped. */
    if ((h.tag >> MOE_ALLREDUCE_EPOCH_SHIFT) < (c->tag >> MOE_ALLREDUCE_EPOCH_SHIFT))
        goto done;
    switch (h.kind) {
    case AR_KIND_DATA:
        rc = ar_take_data(c, &h, &body, step, chunk, s, piece, add);
        rc = rc ? rc : 1;
        break;
    case AR_KIND_WAIT:
        rc = ar_take_note(c, &h);
        rc = rc == 1 ? 2 : rc;
        break;
    case AR_KIND_ABORT:
        rc = ar_take_abort(c, &h, &body);
        break;
    default:
        rc = moe_err_fail(MOE_ERR_STATE, c->msg, AR_MSG_MAX,
                     "rank %d: unexpected %s message from rank %d at %s during call tag %llu",
                     c->a->rank, ar_kind_name(h.kind), ar_prev(c->a),
                     c->a->endpoints[ar_prev(c->a)], (unsigned long long)c->tag);
        break;
    }
done:
    zmq_msg_close(&msg);
    return rc;
}

static int ar_fail_timeout(struct ar_call *c, uint32_t step, bool sending)
{
    moe_allreduce_t *a = c->a;
    const int prev = ar_prev(a), next = ar_next(a);
    const unsigned long long tag = (unsigned long long)c->tag;
    if (sending)
        return moe_err_fail(MOE_ERR_IO, c->msg, AR_MSG_MAX,
                       "rank %d: rank %d at %s took no message within %d ms (step %u of %u, "
                       "tag %llu)",
                       a->rank, next, a->endpoints[next], a->timeout_ms, step + 1, c->steps, tag);
    if (c->blame == prev)
        return moe_err_fail(MOE_ERR_IO, c->msg, AR_MSG_MAX,
                       "rank %d: no message from rank %d at %s within %d ms (step %u of %u, "
                       "tag %llu)",
                       a->rank, prev, a->endpoints[prev], a->timeout_ms, step + 1, c->steps, tag);
    return moe_err_fail(MOE_ERR_IO, c->msg, AR_MSG_MAX,
                   "rank %d: rank %d at %s did not answer within %d ms; the ring waits for it "
                   "(rank %d at %s was still waiting for it; step %u of %u, tag %llu)",
                   a->rank, c->blame, a->endpoints[c->blame], a->timeout_ms, prev,
                   a->endpoints[prev], step + 1, c->steps, tag);
}

/* One step of the ring: send chunk send_c to the next rank and receive
 * chunk recv_c from the previous one, adding it to ours (reduce-scatter) or
 * copying it (all-gather). Sends and receives are interleaved through one
 * poll so that neither side can block the other, whatever the queue sizes.
 * The timeout runs from the last piece that moved. */
static int ar_step(struct ar_call *c, uint32_t step, int send_c, int recv_c, bool add)
{
    moe_allreduce_t *a = c->a;
    const struct ar_span out = ar_span_of(c, send_c), in = ar_span_of(c, recv_c);
    const int64_t note_ms = a->timeout_ms / 4 > 0 ? a->timeout_ms / 4 : 1;
    const bool last_step = step + 1 == c->steps;
    uint32_t sent = 0, got = 0;
    int64_t now = (int64_t)moe_now_ms(), deadline = now + a->timeout_ms, note_at = now + note_ms;
    c->blame = ar_prev(a);
    for (;;) {
        while (sent < out.pieces) {
            int rc = ar_send_piece(c, step, send_c, &out, sent);
            if (rc < 0)
                return rc;
            if (rc == 1)
                break;
            sent++;
            deadline = (int64_t)moe_now_ms() + a->timeout_ms;
        }
        if (sent == out.pieces && got == in.pieces)
            return 0;
        const bool may_note = !last_step || sent < out.pieces;
        now = (int64_t)moe_now_ms();
        if (may_note && now >= note_at) {
            ar_send_note(c, step);
            note_at = now + note_ms;
        }
        if (now >= deadline)
            return ar_fail_timeout(c, step, got == in.pieces);
        int64_t wake = may_note && note_at < deadline ? note_at : deadline;
        zmq_pollitem_t items[2];
        int count = 0, in_i = -1;
        if (got < in.pieces) {
            items[count] = (zmq_pollitem_t){.socket = a->pull, .events = ZMQ_POLLIN};
            in_i = count++;
        }
        if (sent < out.pieces)
            items[count++] = (zmq_pollitem_t){.socket = a->push, .events = ZMQ_POLLOUT};
        if (zmq_poll(items, count, (long)(wake - now)) < 0) {
            if (errno == EINTR)
                continue;
            return moe_err_fail(MOE_ERR_IO, c->msg, AR_MSG_MAX, "rank %d: zmq_poll failed: %s",
                           a->rank, zmq_strerror(errno));
        }
        if (in_i < 0 || !(items[in_i].revents & ZMQ_POLLIN))
            continue;
        int rc = ar_take(c, step, recv_c, &in, got, add);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            got++;
            deadline = (int64_t)moe_now_ms() + a->timeout_ms;
            note_at = (int64_t)moe_now_ms() + note_ms;
            c->blame = ar_prev(a);
        } else if (rc == 2 && may_note) {
            ar_send_note(c, step); /* pass the news on at once */
        }
    }
}

static int ar_mod(int x, int w) { return ((x % w) + w) % w; }

static int ar_sum(moe_allreduce_t *a, void *data, size_t n, size_t esize, uint8_t dtype,
                  uint64_t tag, char *err, size_t errlen)
{
    if (!a)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen, "all-reduce: the object is NULL");
    if (a->world == 1)
        return data || n == 0 ? 0
                              : moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                                        "all-reduce: data is NULL for %zu elements", n);
    if (a->failed)
        return moe_err_fail(MOE_ERR_STATE, err, errlen,
                       "rank %d: this all-reduce failed before and its ring is out of step; "
                       "destroy it and rebuild the ring",
                       a->rank);
    /* Every later error breaks the ring, so every one of them is also sent
     * on to the next rank as an abort, including bad arguments: the other
     * ranks are waiting for this call. */
    static unsigned char empty[1]; /* a non-NULL address for n == 0; never written */
    char msg[AR_MSG_MAX] = "";
    const size_t piece_elems = MOE_ALLREDUCE_PIECE_BYTES / esize;
    struct ar_call c = {.a = a, .data = data ? data : empty, .n = n, .esize = esize,
                        .piece_elems = piece_elems, .dtype = dtype, .tag = tag,
                        .steps = 2 * (uint32_t)(a->world - 1), .abort_origin = -1, .msg = msg};
    int rc = 0;
    if (!data && n > 0)
        rc = moe_err_fail(MOE_ERR_CONFIG, msg, sizeof msg, "rank %d: data is NULL for %zu elements",
                     a->rank, n);
    else if (n > SIZE_MAX / esize || (uint64_t)n / piece_elems >= UINT32_MAX)
        rc = moe_err_fail(MOE_ERR_RANGE, msg, sizeof msg, "rank %d: %zu elements are too many to sum",
                     a->rank, n);
    const int r = a->rank, w = a->world;
    for (int s = 0; !rc && s < w - 1; s++)
        rc = ar_step(&c, (uint32_t)s, ar_mod(r - s, w), ar_mod(r - s - 1, w), true);
    for (int s = 0; !rc && s < w - 1; s++)
        rc = ar_step(&c, (uint32_t)(w - 1 + s), ar_mod(r + 1 - s, w), ar_mod(r - s, w), false);
    if (rc == 0)
        return 0;
    a->failed = true;
    ar_send_abort(&c, rc);
    return moe_err_fail(rc, err, errlen, "%s", msg);
}

int moe_allreduce_sum(moe_allreduce_t *a, float *data, size_t n, uint64_t tag, char *err,
                      size_t errlen)
{
    return ar_sum(a, data, n, sizeof *data, AR_DTYPE_F32, tag, err, errlen);
}

int moe_allreduce_sum_f64(moe_allreduce_t *a, double *data, size_t n, uint64_t tag, char *err,
                          size_t errlen)
{
    return ar_sum(a, data, n, sizeof *data, AR_DTYPE_F64, tag, err, errlen);
}
