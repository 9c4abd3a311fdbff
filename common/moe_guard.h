/* The guard of a process's ZeroMQ context: one thread that
 *   - answers ZAP requests (ZeroMQ RFC 27 on inproc://zeromq.zap.01): a
 *     connecting CURVE key is admitted only when it is the public key of a
 *     role the socket accepts (moe_sec_domain), and the role becomes the
 *     connection's user id, which moe_sec_peer reads off every message;
 *   - watches sockets (zmq_socket_monitor): counts handshake failures, caps
 *     the connections of a bound socket (a connection beyond the cap is shut
 *     at once), and explains in one log line why a connection of ours keeps
 *     failing its handshake (other keys, or a peer without CURVE).
 * Refusals are logged at most once a minute per peer address and counted.
 *
 * Written here rather than taken from libczmq's zauth: the whole handler is
 * a key-to-role lookup (zauth's certificate store knows no roles and would
 * add a second ZeroMQ layer and its actor threads), and the same thread
 * reads the socket monitors. Start the guard before binding any CURVE
 * socket of its context (libzmq admits every key when no ZAP handler is
 * bound) and destroy it after closing them. */
#ifndef MOE_GUARD_H
#define MOE_GUARD_H

#include <stdbool.h>
#include <stdint.h>

#include "moe_sec.h"

typedef struct moe_guard moe_guard_t;

/* Refusals so far (monotonic). */
struct moe_guard_counts {
    uint64_t refused_keys;       /* ZAP: unknown key, or a role the socket does not accept */
    uint64_t handshake_failures; /* bound sockets: handshakes that failed (replays, no CURVE) */
    uint64_t refused_connections; /* beyond a socket's cap */
};

/* Starts the guard of zmq_ctx for a process with the keys of s (borrowed,
 * must outlive the guard). NULL with the sentence on failure. */
moe_guard_t *moe_guard_new(void *zmq_ctx, const struct moe_sec *s, char *err, size_t errlen);

/* Stops the thread and closes its sockets; NULL-safe, clears *g. */
void moe_guard_destroy(moe_guard_t **g);

/* Watches sock (from the thread that owns sock, before it binds or
 * connects): `what` names it in log lines ("the coordinator socket");
 * `bound`: it accepts connections, capped at max_connections when > 0.
 * 0 or an error. */
int moe_guard_watch(moe_guard_t *g, void *sock, const char *what, bool bound,
                    int max_connections);

void moe_guard_counts(const moe_guard_t *g, struct moe_guard_counts *out);

/* What a process's sockets need: its keys and its context's guard. Code
 * that makes sockets takes a `const struct moe_net *`; NULL means plain
 * sockets (tests, one machine). */
struct moe_net {
    const struct moe_sec *sec;
    moe_guard_t *guard;
    int max_connections; /* of each bound socket */
};

/* moe_sec_connect / moe_sec_bind, the socket watched by the guard first
 * (bound sockets with net->max_connections). `what` names the peer or the
 * socket in log lines. */
int moe_net_connect(const struct moe_net *net, void *sock, int peer_role, const char *endpoint,
                    const char *what, char *err, size_t errlen);
int moe_net_bind(const struct moe_net *net, void *sock, int domain, const char *endpoint,
                 const char *what, char *err, size_t errlen);
/* moe_net_bind without the zmq_bind (for a caller that retries binding). */
int moe_net_serve(const struct moe_net *net, void *sock, int domain, const char *endpoint,
                  const char *what, char *err, size_t errlen);

#endif
