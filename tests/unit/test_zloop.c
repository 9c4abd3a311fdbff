/* Unit tests of the ZeroMQ-in-libuv glue (server/coordinator/moe_zloop.c).
 *
 * A ROUTER watched by moe_zloop in a uv loop on the test thread; DEALERs in
 * a second thread (tcp on 127.0.0.1) or on the same thread (inproc). Each
 * message carries a sequence number; every one must be handled exactly once.
 * A uv timer bounds each run and fails the test if it fires, so a lost
 * ZMQ_FD edge shows up as a failure, not a hang. Cases: 10000 messages sent
 * as fast as possible, bursts with pauses (budgets 1, 7 and 1000), replies
 * sent from inside the callback (ping-pong and a window of 16 in flight),
 * replies sent later from a timer followed by moe_zloop_rearm, messages
 * queued before moe_zloop_add, and removal from inside the callback. */
#include <check.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>
#include <zmq.h>

#include "moe_zloop.h"

Suite *test_zloop_suite(void);

#define GUARD_MS 20000

/* ------------------------------------------------------------------------- */
/* The loop side */

struct zt {
    uv_loop_t loop;
    uv_timer_t guard;
    moe_zloop_sock_t *z;
    void *ctx, *router;
    char endpoint[128];
    uint32_t n_expected;
    uint8_t *seen;
    uint32_t got, dups, empty_calls, calls;
    bool timed_out, finished;
    /* replies */
    enum { REPLY_NONE, REPLY_INLINE, REPLY_TIMER } reply;
    uv_timer_t reply_timer;
    bool reply_timer_on;
    zmq_msg_t pending_id[64], pending_body[64];
    int n_pending;
    uint32_t remove_after; /* 0: never */
};

static void zt_finish(struct zt *t)
{
    if (t->finished)
        return;
    t->finished = true;
    moe_zloop_remove(&t->z);
    uv_close((uv_handle_t *)&t->guard, NULL);
    if (t->reply_timer_on)
        uv_close((uv_handle_t *)&t->reply_timer, NULL);
}

static void zt_guard_cb(uv_timer_t *h)
{
    struct zt *t = h->data;
    t->timed_out = true;
    zt_finish(t);
}

static void zt_record(struct zt *t, const zmq_msg_t *body)
{
    uint32_t seq = UINT32_MAX;
    if (zmq_msg_size((zmq_msg_t *)body) == 8)
        memcpy(&seq, zmq_msg_data((zmq_msg_t *)body), 4);
    if (seq >= t->n_expected || t->seen[seq]) {
        t->dups++;
        return;
    }
    t->seen[seq] = 1;
    t->got++;
}

static void zt_flush_replies(uv_timer_t *h)
{
    struct zt *t = h->data;
    for (int i = 0; i < t->n_pending; i++) {
        ck_assert_int_ge(zmq_msg_send(&t->pending_id[i], t->router, ZMQ_SNDMORE), 0);
        ck_assert_int_ge(zmq_msg_send(&t->pending_body[i], t->router, 0), 0);
    }
    t->n_pending = 0;
    if (t->got == t->n_expected) {
        zt_finish(t);
        return;
    }
    /* These sends may have consumed the ZMQ_FD edge of a request that came
     * in meanwhile: the case moe_zloop_rearm exists for. */
    moe_zloop_rearm(t->z);
}

/* One message: [identity, 8-byte body]. */
static void zt_on_readable(void *sock, void *user)
{
    struct zt *t = user;
    t->calls++;
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&id, sock, ZMQ_DONTWAIT) < 0) {
        t->empty_calls++; /* called without a message: should not happen */
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        return;
    }
    ck_assert(zmq_msg_more(&id));
    ck_assert_int_ge(zmq_msg_recv(&body, sock, ZMQ_DONTWAIT), 0);
    ck_assert(!zmq_msg_more(&body));
    zt_record(t, &body);
    if (t->reply == REPLY_INLINE) {
        ck_assert_int_ge(zmq_msg_send(&id, sock, ZMQ_SNDMORE | ZMQ_DONTWAIT), 0);
        ck_assert_int_ge(zmq_msg_send(&body, sock, ZMQ_DONTWAIT), 0);
    } else if (t->reply == REPLY_TIMER) {
        ck_assert_int_lt(t->n_pending, 64);
        zmq_msg_init(&t->pending_id[t->n_pending]);
        zmq_msg_init(&t->pending_body[t->n_pending]);
        zmq_msg_move(&t->pending_id[t->n_pending], &id);
        zmq_msg_move(&t->pending_body[t->n_pending], &body);
        t->n_pending++;
        uv_timer_start(&t->reply_timer, zt_flush_replies, 0, 0);
    }
    zmq_msg_close(&id);
    zmq_msg_close(&body);
    /* In REPLY_TIMER mode the run ends in zt_flush_replies, once the last
     * reply went out. */
    if (t->got == t->n_expected && t->reply != REPLY_TIMER)
        zt_finish(t);
    if (t->remove_after && t->calls == t->remove_after)
        zt_finish(t); /* removes the handle from inside its own callback */
}

/* budget 0: the socket is not watched yet (the test calls zt_watch). */
static void zt_watch(struct zt *t, int budget)
{
    t->z = moe_zloop_add(&t->loop, t->router, budget, zt_on_readable, t);
    ck_assert_ptr_nonnull(t->z);
}

static void zt_init(struct zt *t, uint32_t n, int budget, const char *bind)
{
    memset(t, 0, sizeof *t);
    t->n_expected = n;
    t->seen = calloc(n ? n : 1, 1);
    ck_assert_ptr_nonnull(t->seen);
    ck_assert_int_eq(uv_loop_init(&t->loop), 0);
    t->ctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(t->ctx);
    t->router = zmq_socket(t->ctx, ZMQ_ROUTER);
    ck_assert_ptr_nonnull(t->router);
    int zero = 0;
    zmq_setsockopt(t->router, ZMQ_LINGER, &zero, sizeof zero);
    ck_assert_int_eq(zmq_bind(t->router, bind), 0);
    size_t len = sizeof t->endpoint;
    ck_assert_int_eq(zmq_getsockopt(t->router, ZMQ_LAST_ENDPOINT, t->endpoint, &len), 0);
    uv_timer_init(&t->loop, &t->guard);
    t->guard.data = t;
    uv_timer_start(&t->guard, zt_guard_cb, GUARD_MS, 0);
    if (budget > 0)
        zt_watch(t, budget);
}

static void zt_use_reply_timer(struct zt *t)
{
    t->reply = REPLY_TIMER;
    uv_timer_init(&t->loop, &t->reply_timer);
    t->reply_timer.data = t;
    t->reply_timer_on = true;
}

/* Runs the loop to the end; every handle must be closed afterwards. */
static void zt_run(struct zt *t)
{
    uv_run(&t->loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&t->loop), 0);
}

static void zt_free(struct zt *t)
{
    for (int i = 0; i < t->n_pending; i++) {
        zmq_msg_close(&t->pending_id[i]);
        zmq_msg_close(&t->pending_body[i]);
    }
    zmq_close(t->router);
    zmq_ctx_term(t->ctx);
    free(t->seen);
}

/* ------------------------------------------------------------------------- */
/* The DEALER side, in its own thread */

struct dealer {
    void *ctx;
    const char *endpoint;
    uint32_t n;
    int burst;        /* 0: no pauses; else sleep pause_ms after each burst */
    int pause_ms;
    int window;       /* 0: fire and forget; else wait for replies, this many in flight */
    uint32_t replies; /* replies received */
    bool failed;
};

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void *dealer_main(void *arg)
{
    struct dealer *d = arg;
    void *s = zmq_socket(d->ctx, ZMQ_DEALER);
    if (!s) {
        d->failed = true;
        return NULL;
    }
    int linger = 10000, rcvtimeo = 10000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &rcvtimeo, sizeof rcvtimeo);
    if (zmq_connect(s, d->endpoint) != 0) {
        d->failed = true;
        zmq_close(s);
        return NULL;
    }
    uint32_t in_flight = 0;
    for (uint32_t i = 0; i < d->n; i++) {
        uint32_t msg[2] = {i, 0xabcd};
        if (zmq_send(s, msg, sizeof msg, 0) != (int)sizeof msg) {
            d->failed = true;
            break;
        }
        if (d->burst && (i + 1) % (uint32_t)d->burst == 0)
            sleep_ms(d->pause_ms);
        if (d->window) {
            in_flight++;
            while (in_flight >= (uint32_t)d->window || (i + 1 == d->n && in_flight > 0)) {
                uint32_t back[2];
                if (zmq_recv(s, back, sizeof back, 0) != (int)sizeof back) {
                    d->failed = true; /* a reply never came: a lost wake-up */
                    goto out;
                }
                in_flight--;
                d->replies++;
            }
        }
    }
out:
    zmq_close(s);
    return NULL;
}

static void run_with_dealer(struct zt *t, struct dealer *d)
{
    d->ctx = t->ctx;
    d->endpoint = t->endpoint;
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, dealer_main, d), 0);
    zt_run(t);
    pthread_join(th, NULL);
}

static void check_exactly_once(const struct zt *t)
{
    ck_assert_msg(!t->timed_out, "loop stalled: %u of %u messages after %d ms", t->got,
                  t->n_expected, GUARD_MS);
    ck_assert_uint_eq(t->got, t->n_expected);
    ck_assert_uint_eq(t->dups, 0);
    ck_assert_uint_eq(t->empty_calls, 0);
}

/* ------------------------------------------------------------------------- */
/* Tests */

START_TEST(zloop_ten_thousand_fast)
{
    struct zt t;
    zt_init(&t, 10000, 7, "tcp://127.0.0.1:*");
    struct dealer d = {.n = 10000};
    run_with_dealer(&t, &d);
    ck_assert(!d.failed);
    check_exactly_once(&t);
    zt_free(&t);
}
END_TEST

static const int burst_budgets[] = {1, 7, 1000};

START_TEST(zloop_bursts)
{
    struct zt t;
    zt_init(&t, 6000, burst_budgets[_i], "tcp://127.0.0.1:*");
    struct dealer d = {.n = 6000, .burst = 500, .pause_ms = 15};
    run_with_dealer(&t, &d);
    ck_assert(!d.failed);
    check_exactly_once(&t);
    zt_free(&t);
}
END_TEST

START_TEST(zloop_reply_inline_ping_pong)
{
    struct zt t;
    zt_init(&t, 3000, 4, "tcp://127.0.0.1:*");
    t.reply = REPLY_INLINE;
    struct dealer d = {.n = 3000, .window = 1};
    run_with_dealer(&t, &d);
    ck_assert(!d.failed);
    ck_assert_uint_eq(d.replies, 3000);
    check_exactly_once(&t);
    zt_free(&t);
}
END_TEST

START_TEST(zloop_reply_inline_window)
{
    struct zt t;
    zt_init(&t, 10000, 3, "tcp://127.0.0.1:*");
    t.reply = REPLY_INLINE;
    struct dealer d = {.n = 10000, .window = 16};
    run_with_dealer(&t, &d);
    ck_assert(!d.failed);
    ck_assert_uint_eq(d.replies, 10000);
    check_exactly_once(&t);
    zt_free(&t);
}
END_TEST

/* Replies sent from a timer, outside the readable callback, then rearm. */
START_TEST(zloop_reply_from_timer_with_rearm)
{
    struct zt t;
    zt_init(&t, 4000, 5, "tcp://127.0.0.1:*");
    zt_use_reply_timer(&t);
    struct dealer d = {.n = 4000, .window = 8};
    run_with_dealer(&t, &d);
    ck_assert(!d.failed);
    ck_assert_uint_eq(d.replies, 4000);
    check_exactly_once(&t);
    zt_free(&t);
}
END_TEST

/* The hazard rearm exists for, made deterministic: message B arrives (its
 * ZMQ_FD edge is raised) while the loop is not looking, then a send on the
 * ROUTER from outside the callback makes libzmq process its commands and
 * consume that edge. The descriptor is now quiet although B is waiting; only
 * the rearm brings the loop back to it. */
START_TEST(zloop_rearm_after_outside_send)
{
    struct zt t;
    zt_init(&t, 2, 4, "inproc://zloop-rearm");
    void *dealer = zmq_socket(t.ctx, ZMQ_DEALER);
    ck_assert_ptr_nonnull(dealer);
    int zero = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    ck_assert_int_eq(zmq_connect(dealer, "inproc://zloop-rearm"), 0);
    uint32_t a[2] = {0, 1}, b[2] = {1, 1};
    ck_assert_int_eq(zmq_send(dealer, a, sizeof a, 0), (int)sizeof a);
    for (int i = 0; i < 1000 && t.got < 1; i++)
        uv_run(&t.loop, UV_RUN_NOWAIT);
    ck_assert_uint_eq(t.got, 1);
    /* The loop is settled: nothing pending, the descriptor quiet. */
    for (int i = 0; i < 10; i++)
        uv_run(&t.loop, UV_RUN_NOWAIT);
    ck_assert_int_eq(zmq_send(dealer, b, sizeof b, 0), (int)sizeof b);
    /* libzmq throttles command processing in send to about once a ms. */
    sleep_ms(5);
    ck_assert_int_eq(zmq_send(t.router, "nobody", 6, ZMQ_SNDMORE), 6);
    ck_assert_int_eq(zmq_send(t.router, "x", 1, 0), 1); /* dropped: unknown peer */
    moe_zloop_rearm(t.z);
    for (int i = 0; i < 200 && t.got < 2; i++) {
        uv_run(&t.loop, UV_RUN_NOWAIT);
        sleep_ms(1);
    }
    ck_assert_msg(t.got == 2, "message B stranded after an outside send");
    zt_finish(&t);
    zt_run(&t);
    check_exactly_once(&t);
    zmq_close(dealer);
    zt_free(&t);
}
END_TEST

/* Queues `n` messages on an inproc DEALER on this thread; returns it. */
static void *queue_inproc(struct zt *t, const char *endpoint, uint32_t n)
{
    void *dealer = zmq_socket(t->ctx, ZMQ_DEALER);
    ck_assert_ptr_nonnull(dealer);
    int zero = 0;
    zmq_setsockopt(dealer, ZMQ_LINGER, &zero, sizeof zero);
    ck_assert_int_eq(zmq_connect(dealer, endpoint), 0);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t msg[2] = {i, 1};
        ck_assert_int_eq(zmq_send(dealer, msg, sizeof msg, 0), (int)sizeof msg);
    }
    return dealer;
}

/* Messages queued before the socket is watched, and nothing else ever
 * wakes the loop: the first check must find them, and budget-sized turns
 * must carry on to the end. */
START_TEST(zloop_prequeued_drained)
{
    struct zt t;
    zt_init(&t, 500, 0, "inproc://zloop-pre");
    void *dealer = queue_inproc(&t, "inproc://zloop-pre", 500);
    /* Let the ZMQ_FD edges of those messages pass unobserved. */
    int ev = 0;
    size_t len = sizeof ev;
    ck_assert_int_eq(zmq_getsockopt(t.router, ZMQ_EVENTS, &ev, &len), 0);
    ck_assert(ev & ZMQ_POLLIN);
    zt_watch(&t, 3);
    zt_run(&t);
    check_exactly_once(&t);
    zmq_close(dealer);
    zt_free(&t);
}
END_TEST

/* The callback removes its own handle: no call after that, no leak. */
START_TEST(zloop_remove_from_callback)
{
    struct zt t;
    zt_init(&t, 500, 1000, "inproc://zloop-rm");
    t.remove_after = 100;
    void *dealer = queue_inproc(&t, "inproc://zloop-rm", 500);
    zt_run(&t);
    ck_assert(!t.timed_out);
    ck_assert_ptr_null(t.z);
    ck_assert_uint_eq(t.calls, 100);
    ck_assert_uint_eq(t.got, 100);
    zmq_close(dealer);
    zt_free(&t);
}
END_TEST

/* A second handle on the same socket is refused (libuv allows one poll
 * handle per descriptor); remove clears the pointer and tolerates NULL. */
START_TEST(zloop_add_twice_refused)
{
    struct zt t;
    zt_init(&t, 1, 0, "inproc://zloop-twice");
    moe_zloop_sock_t *a = moe_zloop_add(&t.loop, t.router, 1, zt_on_readable, &t);
    ck_assert_ptr_nonnull(a);
    moe_zloop_sock_t *b = moe_zloop_add(&t.loop, t.router, 1, zt_on_readable, &t);
    ck_assert_ptr_null(b);
    moe_zloop_remove(&a);
    ck_assert_ptr_null(a);
    moe_zloop_remove(&a);
    moe_zloop_remove(NULL);
    zt_finish(&t);
    zt_run(&t);
    ck_assert_uint_eq(t.calls, 0);
    zt_free(&t);
}
END_TEST

Suite *test_zloop_suite(void)
{
    Suite *s = suite_create("zloop");
    TCase *tc = tcase_create("drain");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, zloop_ten_thousand_fast);
    tcase_add_loop_test(tc, zloop_bursts, 0, 3);
    tcase_add_test(tc, zloop_prequeued_drained);
    suite_add_tcase(s, tc);
    tc = tcase_create("reply");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, zloop_reply_inline_ping_pong);
    tcase_add_test(tc, zloop_reply_inline_window);
    tcase_add_test(tc, zloop_reply_from_timer_with_rearm);
    tcase_add_test(tc, zloop_rearm_after_outside_send);
    tcase_add_test(tc, zloop_remove_from_callback);
    tcase_add_test(tc, zloop_add_twice_refused);
    suite_add_tcase(s, tc);
    return s;
}
