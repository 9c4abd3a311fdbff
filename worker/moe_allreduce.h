/* Deterministic ring all-reduce over ZeroMQ, for data-parallel trainer
 * workers summing their dense gradients each step (DESIGN §3 step 8) and
 * their loss sums. Runs inside each worker process, one object per worker,
 * one ring of `world` ranks. Every rank ends with bitwise identical sums
 * and a rerun gives the same bits (DESIGN §4). It does not discover peers,
 * recover from a failure (after an error the object refuses further calls:
 * destroy it and rebuild the ring), encrypt, or average: it only sums.
 *
 * Algorithm: the n elements are cut into `world` chunks; a reduce-scatter
 * (world-1 steps) leaves the finished chunk c on rank (c-1) mod world, and an
 * all-gather (world-1 steps) copies those exact bits to every rank. In each
 * step a rank sends one chunk to the next rank and receives one chunk from
 * the previous one. Chunks travel as pieces of at most
 * MOE_ALLREDUCE_PIECE_BYTES bytes, each with a header carrying the tag, the
 * step, the chunk and the piece, all checked on receipt.
 *
 * Chunks: with base = n / world and rem = n % world, chunk c (0 <= c < world)
 * holds base + (c < rem ? 1 : 0) elements and starts at element
 * c * base + min(c, rem). Chunks may be empty (n < world).
 *
 * Summation order (the determinism contract): element i of chunk c is
 *     ((x[c] + x[c+1]) + x[c+2]) + ... + x[c+world-1]     (rank indices mod world)
 * where x[r] is rank r's value, added left to right, in the precision of the
 * data (float for moe_allreduce_sum, double for moe_allreduce_sum_f64), with
 * no fused multiply-add. Chunk 0 is thus summed in rank order 0, 1, ...,
 * world-1, and chunk c starts at rank c. The order is a fixed function of
 * (chunk index, world) and does not depend on timing or piece size; the bits
 * of a sum therefore depend on (n, world) and the inputs only. With world 2
 * the order cannot matter (IEEE addition is commutative). DESIGN §4 says
 * "rank order"; a ring, whose links all work at once, can give plain rank
 * order to chunk 0 only, and gives every other chunk a rotation of it, which
 * is just as reproducible. */
#ifndef MOE_ALLREDUCE_H
#define MOE_ALLREDUCE_H

#include <stddef.h>
#include <stdint.h>

#include "moe_guard.h"

/* Largest payload of one message; the receiving socket's ZMQ_MAXMSGSIZE is
 * set to this plus the 48-byte header, so a larger message is refused by
 * ZeroMQ (tcp, ipc: the connection is dropped) or by our own size check. */
#define MOE_ALLREDUCE_PIECE_BYTES ((size_t)1 << 20)

typedef struct moe_allreduce moe_allreduce_t;

/* Joins a ring of `world` ranks (1 <= world <= 65536) as rank `rank`.
 * endpoints[r] (r < world) is where rank r binds, e.g. "tcp://127.0.0.1:5601",
 * "ipc:///tmp/x" or "inproc://x"; this rank binds endpoints[rank] (PULL,
 * receives from the previous rank) and connects to endpoints[(rank+1) % world]
 * (PUSH, sends to the next rank). The strings are copied. zmq_ctx is
 * borrowed and must outlive the object.
 *
 * Collective: every rank must call it, within timeout_ms of each other. It
 * sends a hello to the next rank and waits for the previous rank's hello,
 * checking its rank, world size, protocol version and piece size; a missing
 * or malformed hello fails with an error naming the previous rank's endpoint.
 *
 * timeout_ms (> 0) bounds every wait here and in the sums: a peer that sends
 * nothing for that long gives an error naming its endpoint, never a hang.
 * world == 1 creates no socket (zmq_ctx and endpoints may then be NULL) and
 * every sum is a no-op. net (the keys and guard of the process; NULL: plain
 * sockets) is borrowed and must outlive the ring. Sockets get ZMQ_LINGER 0. Returns NULL on error with a sentence in
 * err (err may be NULL). Caller owns (moe_allreduce_destroy). The object must
 * be used by one thread at a time (ZeroMQ sockets are not thread-safe). */
moe_allreduce_t *moe_allreduce_new(void *zmq_ctx, const struct moe_net *net, int rank, int world,
                                   const char *const *endpoints, int timeout_ms, char *err,
                                   size_t errlen);

/* In place: data (n floats) becomes the sum over ranks, in the order given at
 * the top of this file; all ranks end bitwise identical. Collective: every
 * rank calls it with the same n and tag (e.g. the training step); each piece
 * carries the tag and a piece from another call is an error, never mixed in.
 * Bits MOE_ALLREDUCE_EPOCH_SHIFT and up of the tag are an epoch: a message
 * of an earlier epoch (left over from a call that failed part-way before
 * the cluster rolled back) is dropped instead.
 * Works for any n >= 0 (data may be NULL when n == 0; even then the ranks
 * exchange headers, so a mismatch is still detected).
 *
 * Returns 0, or a negative code with a sentence in err:
 *   MOE_ERR_CONFIG  bad arguments;
 *   MOE_ERR_IO      a peer sent nothing within timeout_ms (the error names the
 *                   rank the ring is waiting for and its endpoint), or ZeroMQ
 *                   failed;
 *   MOE_ERR_FORMAT  a malformed message (sizes, frames, magic, sender);
 *   MOE_ERR_STATE   a message of another call (tag, step, chunk or piece out
 *                   of place), or the object failed before;
 *   MOE_ERR_SHAPE   another rank sums a different n or type;
 *   MOE_ERR_RANGE   n is too large;
 *   or the code another rank failed with, when it aborted the ring.
 * On error data holds partial sums, the rank tells its next rank to abort,
 * and the object refuses every later call (MOE_ERR_STATE).
 * Allocates nothing itself (libzmq allocates its messages). */
#define MOE_ALLREDUCE_EPOCH_SHIFT 40

int moe_allreduce_sum(moe_allreduce_t *a, float *data, size_t n, uint64_t tag, char *err,
                      size_t errlen);

/* Same for doubles (loss sums); a rank calling the float version while
 * another calls this one gets MOE_ERR_SHAPE. */
int moe_allreduce_sum_f64(moe_allreduce_t *a, double *data, size_t n, uint64_t tag, char *err,
                          size_t errlen);

/* Closes the sockets (unsent messages are dropped), frees the object and
 * sets *a to NULL. NULL and *a == NULL are fine. Does not touch the context. */
void moe_allreduce_destroy(moe_allreduce_t **a);

#endif
