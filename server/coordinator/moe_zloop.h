/* A ZeroMQ socket inside a libuv loop: the one home of the ZMQ_FD rule.
 *
 * ZMQ_FD is not a data descriptor but an edge-triggered signal: it becomes
 * readable when the socket's state *changes*, and reading ZMQ_EVENTS (or
 * sending, or receiving) consumes the signal. So after every wake-up the
 * socket must be drained while ZMQ_EVENTS shows ZMQ_POLLIN, and a send made
 * anywhere can swallow the edge of a message that arrived meanwhile. This
 * module does the draining, with a per-turn budget so that one busy socket
 * cannot starve the rest of the loop; it never receives or sends itself and
 * never owns the ZeroMQ socket. Used by daemons that run a libuv loop (the
 * coordinator); everything here runs on that loop's thread. */
#ifndef MOE_ZLOOP_H
#define MOE_ZLOOP_H

#include <uv.h>

typedef struct moe_zloop_sock moe_zloop_sock_t;

/* Called on the loop thread while ZMQ_EVENTS on `sock` shows ZMQ_POLLIN, at
 * most `budget` times per loop turn; if messages remain, the next turn goes
 * on (through a uv_idle handle, so the loop does not block meanwhile). Each
 * call should receive one whole message (every frame) with ZMQ_DONTWAIT; it
 * may send on the socket (replies) and may call moe_zloop_remove() on its
 * own handle, after which it is not called again. */
typedef void (*moe_zloop_on_readable)(void *sock, void *user);

/* Watches `zmq_sock` (borrowed: the caller keeps it open until after
 * moe_zloop_remove and closes it itself) on `loop`. budget >= 1. The first
 * check runs on the next loop turn, so messages queued before the call are
 * not missed. Returns the handle (caller owns; release with
 * moe_zloop_remove) or NULL if ZMQ_FD cannot be read or libuv refuses the
 * descriptor; on NULL, `cb` is never called. Loop thread only. */
moe_zloop_sock_t *moe_zloop_add(uv_loop_t *loop, void *zmq_sock, int budget,
                                moe_zloop_on_readable cb, void *user);

/* Schedules a ZMQ_EVENTS check on the next loop turn. Call after sending on
 * the socket from anywhere except its own readable callback (a timer, another
 * socket's callback): that send may have consumed the ZMQ_FD edge of a
 * message that arrived meanwhile, which would otherwise wait for the next
 * unrelated wake-up. Cheap; calling it too often costs one getsockopt. */
void moe_zloop_rearm(moe_zloop_sock_t *s);

/* Stops watching at once (no callback runs after this returns, and the
 * ZeroMQ socket may be closed right away), closes the libuv handles, and
 * frees the memory in their close callbacks, so the loop must run again
 * before uv_loop_close. Sets *s to NULL; NULL or *s NULL is a no-op. Safe
 * from inside the socket's own callback. Loop thread only. */
void moe_zloop_remove(moe_zloop_sock_t **s);

#endif
