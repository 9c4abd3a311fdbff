#include "moe_guard.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <zmq.h>

#include "moe_err.h"
#include "moe_log.h"
#include "moe_time.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define MAX_WATCHED 512
#define LOG_SLOTS 64
#define LOG_EVERY_S 60.0

struct watched {
    void *pair;           /* the monitor's events, read by the guard thread */
    char what[96];
    bool bound;           /* accepts connections (else it connects) */
    int max_connections;  /* of a bound socket; 0: no cap */
    int open;             /* accepted connections not yet disconnected */
    int failures;         /* connecting: handshakes failed since the last success */
    double logged, logged_cap; /* when its last lines were written */
};

struct moe_guard {
    void *ctx;
    const struct moe_sec *sec;
    void *zap;
    pthread_t thread;
    bool running;
    atomic_int stop;
    pthread_mutex_t lock; /* guards the pending list */
    struct watched *pending[MAX_WATCHED];
    int n_pending;
    struct watched *watched[MAX_WATCHED]; /* the guard thread's only */
    int n_watched;
    atomic_uint_fast64_t refused_keys, handshake_failures, refused_connections;
    struct {
        char address[64];
        double at;
    } logged[LOG_SLOTS];  /* the guard thread's only */
    atomic_uint monitor_seq;
};

/* Whether a line about `address` may be written now (once a minute each). */
static bool may_log(moe_guard_t *g, const char *address)
{
    const double now = moe_now_sec();
    int oldest = 0;
    for (int i = 0; i < LOG_SLOTS; i++) {
        if (strcmp(g->logged[i].address, address) == 0) {
            if (now - g->logged[i].at < LOG_EVERY_S)
                return false;
            g->logged[i].at = now;
            return true;
        }
        if (g->logged[i].at < g->logged[oldest].at)
            oldest = i;
    }
    snprintf(g->logged[oldest].address, sizeof g->logged[oldest].address, "%s", address);
    g->logged[oldest].at = now;
    return true;
}

/* ------------------------------------------------------------------------ */
/* ZAP (RFC 27): version, request id, domain, address, identity, mechanism,
 * credentials -> version, request id, status code, status text, user id,
 * metadata. */

static const char *const domain_names[] = {"moe-coordinator", "moe-server", "moe-ring"};

/* Whether a key of `role` may connect to a socket of `domain`. */
static bool admits(const char *domain, int role)
{
    if (strcmp(domain, domain_names[MOE_SEC_DOMAIN_COORDINATOR]) == 0)
        return role == MOE_SEC_WORKER || role == MOE_SEC_SERVER;
    if (strcmp(domain, domain_names[MOE_SEC_DOMAIN_SERVER]) == 0 ||
        strcmp(domain, domain_names[MOE_SEC_DOMAIN_RING]) == 0)
        return role == MOE_SEC_WORKER;
    return false;
}

static void frame_text(char *out, size_t cap, zmq_msg_t *m)
{
    moe_log_sanitize(out, cap, zmq_msg_data(m), zmq_msg_size(m));
}

/* The verdict on one request: the role admitted, or 0 with why. */
static int judge(moe_guard_t *g, zmq_msg_t *f, int n, char *why, size_t cap)
{
    char domain[64], mech[16];
    frame_text(domain, sizeof domain, &f[2]);
    frame_text(mech, sizeof mech, &f[5]);
    if (n != 7 || strcmp(mech, "CURVE") != 0 || zmq_msg_size(&f[6]) != 32) {
        snprintf(why, cap, "no CURVE key (mechanism %s)", mech);
        return 0;
    }
    char key[MOE_SEC_KEY_LEN + 1];
    if (!zmq_z85_encode(key, zmq_msg_data(&f[6]), 32)) {
        snprintf(why, cap, "a malformed key");
        return 0;
    }
    for (int r = MOE_SEC_WORKER; r <= MOE_SEC_COORDINATOR; r++) {
        if (!g->sec->public_of[r][0] || strcmp(g->sec->public_of[r], key) != 0)
            continue;
        if (admits(domain, r))
            return r;
        snprintf(why, cap, "the %s key may not connect to a %s socket", moe_sec_role_name(r),
                 domain + 4);
        return 0;
    }
    snprintf(why, cap, "key %.8s... is not one of this cluster's keys", key);
    return 0;
}

static void send_text(void *sock, const char *s, int flags)
{
    zmq_send(sock, s, strlen(s), flags);
}

static void handle_zap(moe_guard_t *g)
{
    zmq_msg_t f[8];
    int n = 0;
    for (bool more = true; more;) {
        zmq_msg_t spare, *m = n < 8 ? &f[n] : &spare;
        zmq_msg_init(m);
        if (zmq_msg_recv(m, g->zap, 0) < 0) {
            zmq_msg_close(m);
            break;
        }
        more = zmq_msg_more(m);
        if (m == &spare)
            zmq_msg_close(m); /* more frames than RFC 27 has: dropped */
        else
            n++;
    }
    if (n < 7) { /* not a ZAP request: a REP socket must still answer */
        for (int i = 0; i < n; i++)
            zmq_msg_close(&f[i]);
        send_text(g->zap, "1.0", ZMQ_SNDMORE);
        send_text(g->zap, "", ZMQ_SNDMORE);
        send_text(g->zap, "500", ZMQ_SNDMORE);
        send_text(g->zap, "malformed request", ZMQ_SNDMORE);
        send_text(g->zap, "", ZMQ_SNDMORE);
        send_text(g->zap, "", 0);
        return;
    }
    char why[160] = "", address[64];
    const int role = judge(g, f, n, why, sizeof why);
    frame_text(address, sizeof address, &f[3]);
    zmq_msg_send(&f[0], g->zap, ZMQ_SNDMORE); /* the version, echoed */
    zmq_msg_send(&f[1], g->zap, ZMQ_SNDMORE); /* the request id */
    if (role) {
        send_text(g->zap, "200", ZMQ_SNDMORE);
        send_text(g->zap, "OK", ZMQ_SNDMORE);
        send_text(g->zap, moe_sec_role_name(role), ZMQ_SNDMORE);
    } else {
        atomic_fetch_add(&g->refused_keys, 1);
        if (may_log(g, address))
            moe_warn("refused a connection from %s: %s (counted; logged once a minute per "
                     "address)", address, why);
        send_text(g->zap, "400", ZMQ_SNDMORE);
        send_text(g->zap, why, ZMQ_SNDMORE);
        send_text(g->zap, "", ZMQ_SNDMORE);
    }
    send_text(g->zap, "", 0);
    for (int i = 2; i < n; i++)
        zmq_msg_close(&f[i]);
}

/* ------------------------------------------------------------------------ */
/* Socket monitors */

/* One monitor event; false when the monitored socket is gone. */
static bool handle_event(moe_guard_t *g, struct watched *w)
{
    zmq_msg_t head, addr;
    zmq_msg_init(&head);
    zmq_msg_init(&addr);
    if (zmq_msg_recv(&head, w->pair, 0) < 0) {
        zmq_msg_close(&head);
        zmq_msg_close(&addr);
        return true;
    }
    if (zmq_msg_more(&head))
        zmq_msg_recv(&addr, w->pair, 0);
    uint16_t event = 0;
    uint32_t value = 0;
    if (zmq_msg_size(&head) >= 6) {
        memcpy(&event, zmq_msg_data(&head), 2);
        memcpy(&value, (const char *)zmq_msg_data(&head) + 2, 4);
    }
    char endpoint[160];
    frame_text(endpoint, sizeof endpoint, &addr);
    zmq_msg_close(&head);
    zmq_msg_close(&addr);
    const double now = moe_now_sec();
    switch (event) {
    case ZMQ_EVENT_ACCEPTED:
        if (w->bound && w->max_connections > 0 && ++w->open > w->max_connections) {
            /* the descriptor is libzmq's and still open: shut it, libzmq
             * then closes it as a dropped connection */
            shutdown((int)value, SHUT_RDWR);
            atomic_fetch_add(&g->refused_connections, 1);
            if (now - w->logged_cap >= LOG_EVERY_S) {
                w->logged_cap = now;
                moe_warn("%s: more than %d connections: new ones are shut (counted; logged once a "
                         "minute)", w->what, w->max_connections);
            }
        }
        break;
    case ZMQ_EVENT_DISCONNECTED:
        if (w->bound && w->open > 0)
            w->open--;
        break;
    case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        w->failures = 0;
        break;
    case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
    case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
    case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        if (w->bound) {
            if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
                break; /* refused by the ZAP handler, which counted and logged it */
            atomic_fetch_add(&g->handshake_failures, 1);
            if (now - w->logged >= LOG_EVERY_S) {
                w->logged = now;
                moe_warn("%s: a connection failed its secure handshake (a peer without CURVE or "
                         "with a wrong key, or a replay; counted, logged once a minute)", w->what);
            }
        } else {
            w->failures++;
            if (now - w->logged >= 10.0) {
                w->logged = now;
                if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
                    moe_error("%s (%s) refuses this process's key (ZAP status %u): it runs with "
                              "the keys of another `moectl keygen`, or not as this role",
                              w->what, endpoint, value);
                else
                    moe_error("%s (%s): the secure handshake fails: the peer has other keys "
                              "(another `moectl keygen`) or runs --insecure", w->what, endpoint);
            }
        }
        break;
    case ZMQ_EVENT_MONITOR_STOPPED:
        return false;
    default:
        break;
    }
    return true;
}

static void adopt_pending(moe_guard_t *g)
{
    pthread_mutex_lock(&g->lock);
    for (int i = 0; i < g->n_pending && g->n_watched < MAX_WATCHED; i++)
        g->watched[g->n_watched++] = g->pending[i];
    g->n_pending = 0;
    pthread_mutex_unlock(&g->lock);
}

static void drop_watched(moe_guard_t *g, int i)
{
    zmq_close(g->watched[i]->pair);
    free(g->watched[i]);
    g->watched[i] = g->watched[--g->n_watched];
}

static void *guard_main(void *arg)
{
    moe_guard_t *g = arg;
    zmq_pollitem_t items[1 + MAX_WATCHED];
    while (!atomic_load(&g->stop)) {
        adopt_pending(g);
        items[0] = (zmq_pollitem_t){g->zap, 0, ZMQ_POLLIN, 0};
        for (int i = 0; i < g->n_watched; i++)
            items[1 + i] = (zmq_pollitem_t){g->watched[i]->pair, 0, ZMQ_POLLIN, 0};
        const int n = g->n_watched;
        if (zmq_poll(items, 1 + n, 100) <= 0)
            continue;
        if (items[0].revents & ZMQ_POLLIN)
            handle_zap(g);
        for (int i = n - 1; i >= 0; i--)
            if ((items[1 + i].revents & ZMQ_POLLIN) && !handle_event(g, g->watched[i]))
                drop_watched(g, i);
    }
    adopt_pending(g);
    while (g->n_watched > 0)
        drop_watched(g, g->n_watched - 1);
    zmq_close(g->zap);
    g->zap = NULL;
    return NULL;
}

moe_guard_t *moe_guard_new(void *zmq_ctx, const struct moe_sec *s, char *err, size_t errlen)
{
    moe_guard_t *g = calloc(1, sizeof *g);
    if (!g) {
        moe_err_set(err, errlen, "out of memory");
        return NULL;
    }
    g->ctx = zmq_ctx;
    g->sec = s;
    pthread_mutex_init(&g->lock, NULL);
    int linger = 0;
    g->zap = zmq_socket(zmq_ctx, ZMQ_REP);
    if (!g->zap || zmq_setsockopt(g->zap, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_bind(g->zap, ZAP_ENDPOINT) != 0) {
        moe_err_set(err, errlen, "cannot start the ZAP handler: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (pthread_create(&g->thread, NULL, guard_main, g) != 0) {
        moe_err_set(err, errlen, "cannot start the guard thread");
        goto fail;
    }
    g->running = true;
    return g;
fail:
    moe_guard_destroy(&g);
    return NULL;
}

void moe_guard_destroy(moe_guard_t **gp)
{
    if (!gp || !*gp)
        return;
    moe_guard_t *g = *gp;
    if (g->running) {
        atomic_store(&g->stop, 1);
        pthread_join(g->thread, NULL);
    } else {
        if (g->zap)
            zmq_close(g->zap);
        for (int i = 0; i < g->n_pending; i++) {
            zmq_close(g->pending[i]->pair);
            free(g->pending[i]);
        }
    }
    pthread_mutex_destroy(&g->lock);
    free(g);
    *gp = NULL;
}

int moe_guard_watch(moe_guard_t *g, void *sock, const char *what, bool bound,
                    int max_connections)
{
    if (!g)
        return 0;
    char addr[96];
    snprintf(addr, sizeof addr, "inproc://moe-guard-%p-%u", (void *)g,
             atomic_fetch_add(&g->monitor_seq, 1));
    const int events = ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED |
                       ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                       ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                       ZMQ_EVENT_MONITOR_STOPPED;
    struct watched *w = calloc(1, sizeof *w);
    if (!w)
        return MOE_ERR_NOMEM;
    snprintf(w->what, sizeof w->what, "%s", what);
    w->bound = bound;
    w->max_connections = max_connections;
    w->logged = w->logged_cap = -1e9;
    int linger = 0;
    /* the reading end is connected here, before any event, then handed to
     * the guard thread (the mutex is the memory barrier ZeroMQ asks for) */
    if (zmq_socket_monitor(sock, addr, events) != 0 ||
        !(w->pair = zmq_socket(g->ctx, ZMQ_PAIR)) ||
        zmq_setsockopt(w->pair, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_connect(w->pair, addr) != 0) {
        if (w->pair)
            zmq_close(w->pair);
        free(w);
        return MOE_ERR_IO;
    }
    pthread_mutex_lock(&g->lock);
    int rc = 0;
    if (g->n_pending < MAX_WATCHED)
        g->pending[g->n_pending++] = w;
    else
        rc = MOE_ERR_RANGE;
    pthread_mutex_unlock(&g->lock);
    if (rc) {
        zmq_socket_monitor(sock, NULL, 0);
        zmq_close(w->pair);
        free(w);
    }
    return rc;
}

void moe_guard_counts(const moe_guard_t *g, struct moe_guard_counts *out)
{
    memset(out, 0, sizeof *out);
    if (!g)
        return;
    moe_guard_t *m = (moe_guard_t *)g;
    out->refused_keys = atomic_load(&m->refused_keys);
    out->handshake_failures = atomic_load(&m->handshake_failures);
    out->refused_connections = atomic_load(&m->refused_connections);
}

/* NULL net: plain sockets, on purpose (tests, one machine). */
static const struct moe_sec plain = {.insecure = true};

int moe_net_connect(const struct moe_net *net, void *sock, int peer_role, const char *endpoint,
                    const char *what, char *err, size_t errlen)
{
    if (net && net->guard && moe_sec_curve(net->sec, endpoint))
        moe_guard_watch(net->guard, sock, what, false, 0);
    return moe_sec_connect(net ? net->sec : &plain, sock, peer_role, endpoint, err, errlen);
}

int moe_net_serve(const struct moe_net *net, void *sock, int domain, const char *endpoint,
                  const char *what, char *err, size_t errlen)
{
    if (!net)
        return 0;
    if (moe_sec_curve(net->sec, endpoint) && !net->guard)
        return moe_err_fail(MOE_ERR_STATE, err, errlen,
                            "%s: a CURVE socket needs its context's guard (ZAP handler)", what);
    if (net->guard)
        moe_guard_watch(net->guard, sock, what, true, net->max_connections);
    return moe_sec_serve(net->sec, sock, domain, endpoint, err, errlen);
}

int moe_net_bind(const struct moe_net *net, void *sock, int domain, const char *endpoint,
                 const char *what, char *err, size_t errlen)
{
    int rc = moe_net_serve(net, sock, domain, endpoint, what, err, errlen);
    if (rc)
        return rc;
    if (zmq_bind(sock, endpoint) != 0)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "cannot bind %s: %s", endpoint,
                            zmq_strerror(zmq_errno()));
    return 0;
}
