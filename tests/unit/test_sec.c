/* Tests of the cluster's security pieces: key files (moe_sec), the ZAP
 * handler and the socket monitors (moe_guard) on real CURVE sockets of
 * 127.0.0.1, and the helpers for secrets. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "moe_err.h"
#include "moe_guard.h"
#include "moe_log.h"
#include "moe_sec.h"
#include "moe_time.h"
#include "moe_wire.h"
#include "test_util.h"

/* A fresh key directory under /tmp; dir gets its path. */
static void new_keys(char *dir, size_t cap)
{
    snprintf(dir, cap, "/tmp/moe-sec-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char err[512];
    ck_assert_msg(moe_sec_keygen(dir, true, err, sizeof err) == 0, "%s", err);
}

static void rm_keys(const char *dir)
{
    const char *names[] = {"coordinator", "server", "worker"};
    char p[600];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s.key", dir, names[i]);
        unlink(p);
        snprintf(p, sizeof p, "%s/%s.pub", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

START_TEST(sec_keygen_and_load)
{
    char dir[64], err[512], p[600];
    new_keys(dir, sizeof dir);
    struct stat st;
    snprintf(p, sizeof p, "%s/worker.key", dir);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0600);
    snprintf(p, sizeof p, "%s/worker.pub", dir);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0644);
    struct moe_sec w, s, c;
    ck_assert_int_eq(moe_sec_init(&w, MOE_SEC_WORKER, dir, false, err, sizeof err), 0);
    ck_assert_int_eq(moe_sec_init(&s, MOE_SEC_SERVER, dir, false, err, sizeof err), 0);
    ck_assert_int_eq(moe_sec_init(&c, MOE_SEC_COORDINATOR, dir, false, err, sizeof err), 0);
    ck_assert(w.keys && s.keys && c.keys);
    /* every process knows the same three public keys, all different */
    for (int r = MOE_SEC_WORKER; r <= MOE_SEC_COORDINATOR; r++) {
        ck_assert_uint_eq(strlen(w.public_of[r]), MOE_SEC_KEY_LEN);
        ck_assert_str_eq(w.public_of[r], s.public_of[r]);
        ck_assert_str_eq(w.public_of[r], c.public_of[r]);
    }
    ck_assert_str_ne(w.public_of[1], w.public_of[2]);
    ck_assert_str_ne(w.own_secret, s.own_secret);
    /* keys are not replaced by accident; --force makes new ones */
    ck_assert_int_eq(moe_sec_keygen(dir, false, err, sizeof err), MOE_ERR_STATE);
    ck_assert_msg(strstr(err, "already exists") && strstr(err, "--force"), "%s", err);
    ck_assert_int_eq(moe_sec_keygen(dir, true, err, sizeof err), 0);
    struct moe_sec w2;
    ck_assert_int_eq(moe_sec_init(&w2, MOE_SEC_WORKER, dir, false, err, sizeof err), 0);
    ck_assert_str_ne(w2.public_of[MOE_SEC_WORKER], w.public_of[MOE_SEC_WORKER]);
    rm_keys(dir);
}
END_TEST

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(sec_bad_key_files)
{
    char dir[64], err[512], p[600];
    new_keys(dir, sizeof dir);
    struct moe_sec s;
    /* a missing directory or key names the file and what to do */
    ck_assert_int_eq(moe_sec_init(&s, MOE_SEC_WORKER, "/nonexistent/keys", false, err, sizeof err),
                     MOE_ERR_NOTFOUND);
    ck_assert_msg(strstr(err, "/nonexistent/keys/worker.key: missing") &&
                      strstr(err, "moectl keygen"), "%s", err);
    /* another role's key in this role's file */
    char text[1024];
    snprintf(p, sizeof p, "%s/server.key", dir);
    FILE *f = fopen(p, "r");
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    snprintf(p, sizeof p, "%s/worker.key", dir);
    write_file(p, text);
    ck_assert_int_eq(moe_sec_init(&s, MOE_SEC_WORKER, dir, false, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, "holds the key of role server, not worker"), "%s", err);
    /* a key that is not Z85 */
    write_file(p, "[curve]\nrole = worker\npublic-key = short\nsecret-key = short\n");
    ck_assert_int_eq(moe_sec_init(&s, MOE_SEC_WORKER, dir, false, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, "is not a 40-character Z85 key"), "%s", err);
    /* a public key that does not belong to the secret key */
    char pub[41], sec[41], pub2[41], sec2[41];
    ck_assert_int_eq(zmq_curve_keypair(pub, sec), 0);
    ck_assert_int_eq(zmq_curve_keypair(pub2, sec2), 0);
    snprintf(text, sizeof text, "[curve]\nrole = worker\npublic-key = %s\nsecret-key = %s\n", pub2,
             sec);
    write_file(p, text);
    ck_assert_int_eq(moe_sec_init(&s, MOE_SEC_WORKER, dir, false, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, "is not the one of its secret-key"), "%s", err);
    /* not a key file at all */
    write_file(p, "this is not an INI file\n");
    ck_assert_int_eq(moe_sec_init(&s, MOE_SEC_WORKER, dir, false, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, "not a key file"), "%s", err);
    /* a missing public key of another role */
    snprintf(p, sizeof p, "%s/coordinator.pub", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/coordinator.key", dir);
    unlink(p);
    ck_assert_int_eq(moe_sec_init(&s, MOE_SEC_SERVER, dir, false, err, sizeof err),
                     MOE_ERR_NOTFOUND);
    ck_assert_msg(strstr(err, "coordinator.pub: missing"), "%s", err);
    rm_keys(dir);
}
END_TEST

START_TEST(sec_endpoints_and_secrets)
{
    char err[512];
    struct moe_sec none, insecure;
    ck_assert_int_eq(moe_sec_init(&none, MOE_SEC_WORKER, NULL, false, err, sizeof err), 0);
    ck_assert_int_eq(moe_sec_init(&insecure, MOE_SEC_WORKER, NULL, true, err, sizeof err), 0);
    /* TCP needs keys or --insecure; ipc and inproc do not */
    ck_assert_int_eq(moe_sec_check(&none, "tcp://10.0.0.1:5550", "the coordinator", err,
                                   sizeof err), MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "the coordinator (tcp://10.0.0.1:5550) is on TCP") &&
                      strstr(err, "moectl keygen DIR") && strstr(err, "--insecure"), "%s", err);
    ck_assert_int_eq(moe_sec_check(&none, "ipc:///tmp/x", "a server", err, sizeof err), 0);
    ck_assert_int_eq(moe_sec_check(&insecure, "tcp://10.0.0.1:5550", "x", err, sizeof err), 0);
    ck_assert(!moe_sec_curve(&insecure, "tcp://10.0.0.1:5550"));
    ck_assert_int_eq(moe_sec_check_list(&none, "ipc:///a, tcp://h:1", "a server", err, sizeof err),
                     MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "(tcp://h:1)"), "%s", err);
    /* comparisons of secrets */
    ck_assert(moe_sec_equal("Bearer abc", "Bearer abc"));
    ck_assert(!moe_sec_equal("Bearer abc", "Bearer abd"));
    ck_assert(!moe_sec_equal("Bearer ab", "Bearer abc"));
    ck_assert(!moe_sec_equal("Bearer abcd", "Bearer abc"));
    ck_assert(!moe_sec_equal("", "x"));
    /* the token: file, then value, then environment */
    char tok[64], path[] = "/tmp/moe-token-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "from-file\nsecond line\n", 22), 22);
    close(fd);
    setenv("MOE_TEST_TOKEN", "from-env", 1);
    ck_assert_int_eq(moe_sec_secret("from-flag", path, "MOE_TEST_TOKEN", tok, sizeof tok, err,
                                    sizeof err), 0);
    ck_assert_str_eq(tok, "from-file");
    ck_assert_int_eq(moe_sec_secret("from-flag", "", "MOE_TEST_TOKEN", tok, sizeof tok, err,
                                    sizeof err), 0);
    ck_assert_str_eq(tok, "from-flag");
    ck_assert_int_eq(moe_sec_secret("", "", "MOE_TEST_TOKEN", tok, sizeof tok, err, sizeof err), 0);
    ck_assert_str_eq(tok, "from-env");
    unsetenv("MOE_TEST_TOKEN");
    ck_assert_int_eq(moe_sec_secret("", NULL, "MOE_TEST_TOKEN", tok, sizeof tok, err, sizeof err), 0);
    ck_assert_str_eq(tok, "");
    fd = open(path, O_WRONLY | O_TRUNC);
    close(fd);
    ck_assert_int_eq(moe_sec_secret("", path, NULL, tok, sizeof tok, err, sizeof err),
                     MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, "the token file is empty"), "%s", err);
    unlink(path);
    ck_assert_int_eq(moe_sec_secret("", path, NULL, tok, sizeof tok, err, sizeof err), MOE_ERR_IO);
}
END_TEST

/* ------------------------------------------------------------------ ZAP */

struct zap_rig {
    char dir[64], endpoint[64];
    void *ctx, *router;
    struct moe_sec sec;
    moe_guard_t *guard;
    struct moe_net net;
};

/* A coordinator-like ROUTER on 127.0.0.1 with CURVE and the guard. */
static void rig_start(struct zap_rig *z, int max_connections)
{
    char err[512];
    memset(z, 0, sizeof *z);
    new_keys(z->dir, sizeof z->dir);
    ck_assert_int_eq(moe_sec_init(&z->sec, MOE_SEC_COORDINATOR, z->dir, false, err, sizeof err),
                     0);
    z->ctx = zmq_ctx_new();
    z->guard = moe_guard_new(z->ctx, &z->sec, err, sizeof err);
    ck_assert_msg(z->guard != NULL, "%s", err);
    z->net = (struct moe_net){&z->sec, z->guard, max_connections};
    z->router = zmq_socket(z->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(z->router, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(moe_net_bind(&z->net, z->router, MOE_SEC_DOMAIN_COORDINATOR,
                                  "tcp://127.0.0.1:*", "the test socket", err, sizeof err), 0);
    size_t len = sizeof z->endpoint;
    zmq_getsockopt(z->router, ZMQ_LAST_ENDPOINT, z->endpoint, &len);
}

static void rig_stop(struct zap_rig *z)
{
    zmq_close(z->router);
    moe_guard_destroy(&z->guard);
    zmq_ctx_term(z->ctx);
    rm_keys(z->dir);
}

/* A DEALER of `role` with the keys of dir (NULL: no CURVE) sends one
 * header; returns the user id the ROUTER saw, or "-" when nothing arrived
 * within 700 ms. `ours`: it knows the rig's public keys (they are public),
 * only its own key pair is from dir. */
static void try_send(struct zap_rig *z, const char *dir, int role, bool ours, char *user,
                     size_t cap)
{
    char err[512];
    struct moe_sec s;
    ck_assert_int_eq(moe_sec_init(&s, role, dir, dir == NULL, err, sizeof err), 0);
    if (ours)
        memcpy(s.public_of[MOE_SEC_COORDINATOR], z->sec.public_of[MOE_SEC_COORDINATOR],
               sizeof s.public_of[MOE_SEC_COORDINATOR]);
    void *d = zmq_socket(z->ctx, ZMQ_DEALER);
    int linger = 0, sndtimeo = 500;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    ck_assert_int_eq(moe_sec_connect(&s, d, MOE_SEC_COORDINATOR, z->endpoint, err, sizeof err), 0);
    struct moe_wire_out o = {.type = MOE__MSG_TYPE__MSG_HEARTBEAT, .role = 1};
    moe_wire_send(d, NULL, 0, &o, NULL, 0, err, sizeof err);
    snprintf(user, cap, "-");
    zmq_pollitem_t it = {z->router, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, 700) > 0) {
        struct moe_wire_limits lim = {1 << 20, 0, 16, 16};
        struct moe_wire_msg m;
        ck_assert_int_eq(moe_wire_recv(z->router, true, 0, &lim, &m, err, sizeof err), 0);
        snprintf(user, cap, "%s", m.user_id);
        moe_wire_msg_free(&m);
    }
    zmq_close(d);
}

START_TEST(guard_admits_roles_by_key)
{
    moe_log_set_level(MOE_LOG_ERROR);
    struct zap_rig z;
    rig_start(&z, 0);
    char user[32];
    try_send(&z, z.dir, MOE_SEC_WORKER, true, user, sizeof user);
    ck_assert_str_eq(user, "worker");
    try_send(&z, z.dir, MOE_SEC_SERVER, true, user, sizeof user);
    ck_assert_str_eq(user, "server");
    struct moe_guard_counts g;
    moe_guard_counts(z.guard, &g);
    ck_assert_uint_eq(g.refused_keys, 0);
    /* a coordinator key may not connect to a coordinator socket */
    try_send(&z, z.dir, MOE_SEC_COORDINATOR, true, user, sizeof user);
    ck_assert_str_eq(user, "-");
    moe_guard_counts(z.guard, &g);
    ck_assert_uint_ge(g.refused_keys, 1);
    /* the worker key of another cluster (another keygen, or a revoked
     * one) with this coordinator's public key: the ZAP handler refuses it */
    char other[64];
    new_keys(other, sizeof other);
    const uint64_t before = g.refused_keys;
    try_send(&z, other, MOE_SEC_WORKER, true, user, sizeof user);
    ck_assert_str_eq(user, "-");
    moe_guard_counts(z.guard, &g);
    ck_assert_uint_gt(g.refused_keys, before);
    /* ... with its own cluster's coordinator key: the handshake fails */
    try_send(&z, other, MOE_SEC_WORKER, false, user, sizeof user);
    ck_assert_str_eq(user, "-");
    rm_keys(other);
    /* no key at all: the handshake fails, nothing gets through */
    try_send(&z, NULL, MOE_SEC_WORKER, false, user, sizeof user);
    ck_assert_str_eq(user, "-");
    const double t0 = moe_now_sec();
    do {
        moe_guard_counts(z.guard, &g);
        if (g.handshake_failures > 0)
            break;
        moe_sleep_ms(20);
    } while (moe_now_sec() - t0 < 3);
    ck_assert_uint_ge(g.handshake_failures, 1);
    rig_stop(&z);
}
END_TEST

START_TEST(guard_caps_connections)
{
    moe_log_set_level(MOE_LOG_ERROR);
    struct zap_rig z;
    rig_start(&z, 3);
    const char *port = strrchr(z.endpoint, ':') + 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fds[8];
    for (int i = 0; i < 8; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        ck_assert_int_eq(connect(fds[i], (struct sockaddr *)&sa, sizeof sa), 0);
    }
    struct moe_guard_counts g;
    const double t0 = moe_now_sec();
    do {
        moe_guard_counts(z.guard, &g);
        if (g.refused_connections >= 5)
            break;
        moe_sleep_ms(20);
    } while (moe_now_sec() - t0 < 3);
    ck_assert_uint_eq(g.refused_connections, 5);
    /* the connections over the cap were shut: reading them gives EOF */
    int closed = 0;
    for (int i = 0; i < 8; i++) {
        struct timeval tv = {0, 300000};
        setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char b[128];
        ssize_t r;
        while ((r = read(fds[i], b, sizeof b)) > 0) {
        }
        closed += r == 0;
        close(fds[i]);
    }
    ck_assert_int_eq(closed, 5);
    rig_stop(&z);
}
END_TEST

Suite *test_sec_suite(void);
Suite *test_sec_suite(void)
{
    Suite *s = suite_create("sec");
    TCase *tc = tcase_create("keys");
    tcase_add_test(tc, sec_keygen_and_load);
    tcase_add_test(tc, sec_bad_key_files);
    tcase_add_test(tc, sec_endpoints_and_secrets);
    suite_add_tcase(s, tc);
    TCase *tg = tcase_create("guard");
    tcase_set_timeout(tg, 20);
    tcase_add_test(tg, guard_admits_roles_by_key);
    tcase_add_test(tg, guard_caps_connections);
    suite_add_tcase(s, tg);
    return s;
}
