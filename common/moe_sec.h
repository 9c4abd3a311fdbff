/* Security of the cluster's ZeroMQ sockets (DESIGN §5, README "Security"):
 * CURVE keys by role, which sockets use them, and the role a received
 * message was authenticated as.
 *
 * One key pair per role: coordinator, server (every expert server) and
 * worker (every worker, also for the workers' all-reduce ring). A process
 * holds its own role's secret key and the public keys of the others, all
 * from one key directory (`moectl keygen DIR`):
 *
 *   DIR/coordinator.key  server.key  worker.key     secret + public (mode 0600)
 *   DIR/coordinator.pub  server.pub  worker.pub     public only
 *
 * Every tcp:// socket runs CURVE (encrypted, and each side proves its key);
 * the binding side authenticates the connecting key through the ZAP handler
 * of moe_guard.h, which tells each message its sender's role. ipc:// and
 * inproc:// stay plain (the file system guards them); --insecure makes
 * tcp:// plain too, with a warning. No state; thread-safe. */
#ifndef MOE_SEC_H
#define MOE_SEC_H

#include <stdbool.h>
#include <stddef.h>

#include "moe_wire.h"

/* Roles as keys know them (1 and 2 are also the wire header's roles). */
enum moe_sec_role {
    MOE_SEC_NONE = 0, /* not authenticated: plain tcp (--insecure), ipc, inproc */
    MOE_SEC_WORKER = 1,
    MOE_SEC_SERVER = 2,
    MOE_SEC_COORDINATOR = 3,
};

/* What a bound socket accepts (its ZAP domain). */
enum moe_sec_domain {
    MOE_SEC_DOMAIN_COORDINATOR, /* workers and servers */
    MOE_SEC_DOMAIN_SERVER,      /* workers */
    MOE_SEC_DOMAIN_RING,        /* workers */
};

#define MOE_SEC_KEY_LEN 40 /* a key in Z85 text */

struct moe_sec {
    int role;           /* this process's */
    bool insecure;      /* --insecure: tcp without CURVE */
    bool keys;          /* the key directory was read */
    char own_secret[MOE_SEC_KEY_LEN + 1];
    char public_of[4][MOE_SEC_KEY_LEN + 1]; /* by role; "" when unknown */
};

/* Reads the keys of `role` from dir (NULL or "": none). Sentences name the
 * file and what is wrong; a secret key readable by others gets a warning. */
int moe_sec_init(struct moe_sec *s, int role, const char *dir, bool insecure, char *err,
                 size_t errlen);

/* Whether a socket on `endpoint` runs CURVE. */
bool moe_sec_curve(const struct moe_sec *s, const char *endpoint);

/* 0 when `endpoint` can be used as configured; MOE_ERR_CONFIG with the
 * sentence of what to do when it is tcp:// and neither keys nor --insecure
 * were given. `what` names it ("the coordinator", "server 1"). */
int moe_sec_check(const struct moe_sec *s, const char *endpoint, const char *what, char *err,
                  size_t errlen);

/* The comma-separated endpoints of `list` checked with moe_sec_check. */
int moe_sec_check_list(const struct moe_sec *s, const char *list, const char *what, char *err,
                       size_t errlen);

/* Sets sock up as a CURVE server of the given domain when moe_sec_curve
 * (before zmq_bind; moe_sec_bind does both). */
int moe_sec_serve(const struct moe_sec *s, void *sock, int domain, const char *endpoint, char *err,
                  size_t errlen);

/* Binds sock to endpoint, as a CURVE server of the given domain when
 * moe_sec_curve (the context's moe_guard must be running: it answers the
 * ZAP requests). Sentences name the endpoint. */
int moe_sec_bind(const struct moe_sec *s, void *sock, int domain, const char *endpoint, char *err,
                 size_t errlen);

/* Connects sock to endpoint, a process of peer_role, as a CURVE client
 * when moe_sec_curve. */
int moe_sec_connect(const struct moe_sec *s, void *sock, int peer_role, const char *endpoint,
                    char *err, size_t errlen);

/* The role a received message was authenticated as (its ZAP user id), or
 * MOE_SEC_NONE. */
int moe_sec_peer(const struct moe_wire_msg *m);

/* "worker", "server", "coordinator" or "unauthenticated". */
const char *moe_sec_role_name(int role);

/* Writes a new cluster key directory (created 0700 when missing): the three
 * key pairs and public keys above. Refuses to overwrite keys unless force.
 * Returns 0, or an error with the sentence. */
int moe_sec_keygen(const char *dir, bool force, char *err, size_t errlen);

/* Compares two strings in time independent of where they differ (for
 * secrets such as the HTTP token): true when equal. */
bool moe_sec_equal(const char *a, const char *b);

/* A secret (the HTTP token): the first line of `file` when given, else
 * `value` when not empty, else the environment variable `env`; into out.
 * Returns 0, or MOE_ERR_IO naming the file. */
int moe_sec_secret(const char *value, const char *file, const char *env, char *out, size_t cap,
                   char *err, size_t errlen);

#endif
