/* ZeroMQ sockets in a libuv loop (see moe_zloop.h). Runs on the loop thread
 * of whichever daemon uses it; receives and sends nothing itself. */
#include "moe_zloop.h"

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <zmq.h>

#include "moe_log.h"

struct moe_zloop_sock {
    uv_poll_t poll;  /* readable on ZMQ_FD: "the socket's state changed" */
    uv_idle_t idle;  /* running while a check is owed on the next turn */
    void *zsock;
    moe_zloop_on_readable cb;
    void *user;
    int budget;
    int closes_left; /* handles whose close callback has not run yet */
    bool removed;
    bool idle_on;
    bool error_logged;
};

/* ------------------------------------------------------------------------- */
/* Checks */

/* 1 if a message can be received now, 0 if not, -1 if the socket is unusable
 * (context terminated, socket closed under us). Reading ZMQ_EVENTS is also
 * what makes libzmq process its pending commands and reset the ZMQ_FD
 * signal, so every wake-up must end with a call that returned 0. */
static int zl_readable(struct moe_zloop_sock *s)
{
    for (;;) {
        int ev = 0;
        size_t len = sizeof ev;
        if (zmq_getsockopt(s->zsock, ZMQ_EVENTS, &ev, &len) == 0)
            return (ev & ZMQ_POLLIN) ? 1 : 0;
        if (errno == EINTR)
            continue;
        if (!s->error_logged) {
            s->error_logged = true;
            moe_error("zloop: ZMQ_EVENTS failed: %s; no longer reading this socket",
                      zmq_strerror(errno));
        }
        return -1;
    }
}

static void zl_idle_cb(uv_idle_t *h);

static void zl_idle_set(struct moe_zloop_sock *s, bool on)
{
    if (on == s->idle_on)
        return;
    s->idle_on = on;
    if (on)
        uv_idle_start(&s->idle, zl_idle_cb);
    else
        uv_idle_stop(&s->idle);
}

/* Hands readable messages to the callback, at most `budget` of them. The
 * ZMQ_EVENTS check comes again after every callback, because a reply sent
 * from the callback makes libzmq process commands, which can both queue new
 * input and consume the ZMQ_FD edge that would have announced it. When the
 * budget runs out with messages left, the edge is already spent, so the idle
 * handle brings us back on the next turn (and keeps the loop from blocking
 * in the meantime); other handles run first. */
static void zl_drain(struct moe_zloop_sock *s)
{
    for (int n = 0; n < s->budget; n++) {
        if (zl_readable(s) <= 0) {
            zl_idle_set(s, false);
            return;
        }
        s->cb(s->zsock, s->user);
        if (s->removed)
            return; /* the handles are closing; s lives until their callbacks */
    }
    zl_idle_set(s, zl_readable(s) > 0);
}

static void zl_idle_cb(uv_idle_t *h)
{
    zl_drain(h->data);
}

static void zl_poll_cb(uv_poll_t *h, int status, int events)
{
    struct moe_zloop_sock *s = h->data;
    (void)events;
    if (status < 0 && !s->error_logged) {
        /* libuv has stopped the poll handle; drain what is there and rely
         * on rearm/idle from now on, which is all we can still do. */
        s->error_logged = true;
        moe_error("zloop: polling ZMQ_FD failed: %s", uv_strerror(status));
    }
    /* With a continuation pending, the idle handle has already drained a
     * budget this turn (idle callbacks run before I/O) and will go on next
     * turn; draining here too would double the budget. */
    if (s->idle_on)
        return;
    zl_drain(s);
}

/* ------------------------------------------------------------------------- */
/* Life cycle */

static void zl_close_cb(uv_handle_t *h)
{
    struct moe_zloop_sock *s = h->data;
    if (--s->closes_left == 0)
        free(s);
}

moe_zloop_sock_t *moe_zloop_add(uv_loop_t *loop, void *zmq_sock, int budget,
                                moe_zloop_on_readable cb, void *user)
{
    assert(loop && zmq_sock && cb && budget >= 1);
    int fd = -1;
    size_t len = sizeof fd;
    if (zmq_getsockopt(zmq_sock, ZMQ_FD, &fd, &len) != 0) {
        moe_error("zloop: cannot read ZMQ_FD: %s", zmq_strerror(errno));
        return NULL;
    }
    struct moe_zloop_sock *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->zsock = zmq_sock;
    s->cb = cb;
    s->user = user;
    s->budget = budget;
    int rc = uv_poll_init(loop, &s->poll, fd);
    if (rc != 0) {
        moe_error("zloop: cannot poll ZMQ_FD %d: %s", fd, uv_strerror(rc));
        free(s); /* a handle whose init failed was never registered */
        return NULL;
    }
    uv_idle_init(loop, &s->idle); /* cannot fail */
    s->poll.data = s->idle.data = s;
    s->closes_left = 2;
    rc = uv_poll_start(&s->poll, UV_READABLE, zl_poll_cb);
    if (rc != 0) {
        moe_error("zloop: cannot poll ZMQ_FD %d: %s", fd, uv_strerror(rc));
        moe_zloop_remove(&s);
        return NULL;
    }
    /* Messages may already be queued, their edge gone before we watched. */
    zl_idle_set(s, true);
    return s;
}

void moe_zloop_rearm(moe_zloop_sock_t *s)
{
    if (s && !s->removed)
        zl_idle_set(s, true);
}

void moe_zloop_remove(moe_zloop_sock_t **sp)
{
    if (!sp || !*sp)
        return;
    struct moe_zloop_sock *s = *sp;
    *sp = NULL;
    if (s->removed)
        return;
    s->removed = true;
    /* uv_close stops both handles now (the poll handle leaves epoll at once,
     * so closing the ZeroMQ socket next is safe); freeing waits for both
     * close callbacks. */
    uv_close((uv_handle_t *)&s->poll, zl_close_cb);
    uv_close((uv_handle_t *)&s->idle, zl_close_cb);
}
