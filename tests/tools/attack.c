/* moe-attack: what an outsider (or a member with the wrong key) sends to a
 * running cluster, for tests/integration/test_security.sh. Each mode is one
 * row of the threat table in the README's "Security" section.
 *
 * Usage: moe-attack MODE ENDPOINT [OPTIONS]
 *   MODE  register-worker   REGISTER as worker 0 (to the coordinator)
 *         register-server   REGISTER as an expert server serving --served EP
 *         stats             STATS of --count steps from --step as worker 0, values 1e6
 *         heartbeat         HEARTBEAT as the heartbeat thread of server --served EP
 *         trouble           REGISTER a made-up server, then EPOCH_WAIT with TROUBLE
 *         fetch             EXPERT_FETCH of experts 0..--experts-1 (to a server), for
 *                           every epoch from 1 to --epochs
 *         eval              an evaluation forward of --rows rows of width --width
 *         bigframes         --count raw TCP connections, each declaring a 1 GB frame
 *         connections       --count raw TCP connections held open --hold seconds
 *   --keys DIR --as ROLE    connect with CURVE, with DIR's key of ROLE (worker, server,
 *                           coordinator); without --keys: plain, no key
 *   --server-role ROLE      the role of the peer's key (default: coordinator for
 *                           register-*, stats, heartbeat, trouble; server otherwise)
 * Prints what came back. Exit status: 0 when no message other than an
 * error reply came back; 3 when the peer answered with anything else (a
 * registration, statistics, tensors); 2 for a usage error. */
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "moe_cli.h"
#include "moe_sec.h"
#include "moe_wire.h"

struct attack {
    const char *mode, *endpoint, *keys, *as, *served, *server_role;
    long step, count, experts, epochs, rows, width, hold;
    void *ctx, *sock;
    int answered, errors;       /* replies: other than an error, errors */
    unsigned long long payload; /* tensor bytes received */
};

static int role_of(const char *name)
{
    return !name                         ? 0
           : !strcmp(name, "worker")      ? MOE_SEC_WORKER
           : !strcmp(name, "server")      ? MOE_SEC_SERVER
           : !strcmp(name, "coordinator") ? MOE_SEC_COORDINATOR
                                          : -1;
}

/* A DEALER with routing id `id`, with CURVE when --keys. */
static bool open_dealer(struct attack *a, const char *id, int peer_role)
{
    if (a->sock)
        zmq_close(a->sock);
    a->sock = zmq_socket(a->ctx, ZMQ_DEALER);
    int linger = 0, sndtimeo = 500;
    zmq_setsockopt(a->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(a->sock, ZMQ_SNDTIMEO, &sndtimeo, sizeof sndtimeo);
    zmq_setsockopt(a->sock, ZMQ_ROUTING_ID, id, strlen(id));
    struct moe_sec sec;
    char err[512];
    if (moe_sec_init(&sec, a->keys ? role_of(a->as) : MOE_SEC_WORKER, a->keys, !a->keys, err,
                     sizeof err) ||
        moe_sec_connect(&sec, a->sock, peer_role, a->endpoint, err, sizeof err)) {
        fprintf(stderr, "moe-attack: %s\n", err);
        return false;
    }
    return true;
}

/* Sends one message and reads what comes back within wait_ms (then 200 ms
 * after each reply). A loop of messages waits only after its last one:
 * the replies to the earlier ones are read then. */
static void send_and_read(struct attack *a, const struct moe_wire_out *o, const float *data,
                          uint64_t rows, int wait_ms)
{
    char err[256];
    if (moe_wire_send(a->sock, NULL, 0, o, data, rows, err, sizeof err)) {
        printf("send: %s\n", err);
        return;
    }
    zmq_pollitem_t it = {a->sock, 0, ZMQ_POLLIN, 0};
    while (zmq_poll(&it, 1, wait_ms) > 0) {
        struct moe_wire_limits lim = {1u << 30, 0, 1u << 20, 1ull << 40};
        struct moe_wire_msg m;
        memset(&m, 0, sizeof m);
        if (moe_wire_recv(a->sock, false, 0, &lim, &m, err, sizeof err) == 0) {
            const bool error = m.hdr->type == MOE__MSG_TYPE__MSG_ERROR;
            a->errors += error;
            a->answered += !error;
            a->payload += m.rows * m.hdr->width * 4;
            printf("reply: type %d%s%s\n", (int)m.hdr->type, error ? ": " : "",
                   error ? m.hdr->error_text : "");
        }
        moe_wire_msg_free(&m);
        wait_ms = 200;
    }
}

static void attack_coordinator(struct attack *a, const char *mode)
{
    char id[320];
    const char *served = a->served ? a->served : "tcp://127.0.0.1:1";
    const bool server = strcmp(mode, "register-worker") && strcmp(mode, "stats");
    if (!strcmp(mode, "heartbeat"))
        snprintf(id, sizeof id, "moe-heart/%016llx@%s", 0x1234ull, served);
    else if (server)
        snprintf(id, sizeof id, "moe-server/%016llx@%s", 0x1234ull, served);
    else
        snprintf(id, sizeof id, "moe-worker-0/%016llx", 0x1234ull);
    if (!open_dealer(a, id, role_of(a->server_role ? a->server_role : "coordinator")))
        return;
    struct moe_wire_out o = {0};
    o.role = server ? 2 : 1;
    o.incarnation = 0x1234;
    o.endpoint = server ? served : NULL;
    o.config = "d_model=16\n";
    o.epoch = 1;
    if (!strcmp(mode, "stats")) {
        float v[3 * 4096 + 1];
        const size_t E = a->width > 0 && a->width <= 4096 ? (size_t)a->width : 6;
        for (size_t i = 0; i < 3 * E; i++)
            v[i] = 1e6f;
        o.type = MOE__MSG_TYPE__MSG_STATS;
        o.width = (uint32_t)(3 * E);
        const int32_t ids[1] = {0};
        const uint32_t ones[1] = {1};
        o.expert_ids = ids;
        o.row_counts = ones;
        o.n_experts = 1;
        for (long s = a->step; s < a->step + a->count; s++) {
            o.step = (uint64_t)s;
            send_and_read(a, &o, v, 1, s + 1 < a->step + a->count ? 0 : 300);
        }
        return;
    }
    o.type = !strcmp(mode, "heartbeat") ? MOE__MSG_TYPE__MSG_HEARTBEAT
                                         : MOE__MSG_TYPE__MSG_REGISTER;
    send_and_read(a, &o, NULL, 0, 1000);
    if (!strcmp(mode, "trouble")) {
        o.type = MOE__MSG_TYPE__MSG_EPOCH_WAIT;
        o.flags = MOE_FLAG_TROUBLE;
        for (uint32_t e = 1; e <= (uint32_t)a->epochs; e++) {
            o.epoch = e;
            send_and_read(a, &o, NULL, 0, e < (uint32_t)a->epochs ? 0 : 300);
        }
    }
}

static void attack_server(struct attack *a, const char *mode)
{
    if (!open_dealer(a, "moe-worker-0", role_of(a->server_role ? a->server_role : "server")))
        return;
    struct moe_wire_out o = {0};
    if (!strcmp(mode, "fetch")) {
        int32_t ids[4096];
        uint32_t zero[4096] = {0};
        const size_t n = a->experts > 0 && a->experts <= 4096 ? (size_t)a->experts : 1;
        for (size_t e = 0; e < n; e++)
            ids[e] = (int32_t)e;
        o.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH;
        o.expert_ids = ids;
        o.row_counts = zero;
        o.n_experts = n;
        for (long e = 1; e <= a->epochs; e++) {
            o.epoch = (uint32_t)e;
            send_and_read(a, &o, NULL, 0, e < a->epochs ? 0 : 300);
        }
        return;
    }
    /* eval: all rows to expert 0 */
    const size_t n = (size_t)a->rows * (size_t)a->width;
    float *x = calloc(n ? n : 1, sizeof(float));
    const int32_t ids[1] = {0};
    const uint32_t rows[1] = {(uint32_t)a->rows};
    o.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD;
    o.eval = true;
    o.expert_ids = ids;
    o.row_counts = rows;
    o.n_experts = 1;
    o.width = (uint32_t)a->width;
    for (long e = 1; e <= a->epochs && x; e++) {
        o.epoch = (uint32_t)e;
        send_and_read(a, &o, x, (uint64_t)a->rows, 500);
    }
    free(x);
}

/* Raw TCP to HOST:PORT of a tcp:// endpoint; -1 on failure. */
static int raw_connect(const char *endpoint)
{
    char host[256];
    const char *p = strncmp(endpoint, "tcp://", 6) == 0 ? endpoint + 6 : endpoint;
    const char *colon = strrchr(p, ':');
    if (!colon || (size_t)(colon - p) >= sizeof host)
        return -1;
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void attack_raw(struct attack *a, bool big)
{
    int *fds = calloc((size_t)a->count, sizeof(int));
    long opened = 0;
    for (long i = 0; fds && i < a->count; i++) {
        int fd = raw_connect(a->endpoint);
        if (fd < 0)
            break;
        fds[opened++] = fd;
        if (big) {
            /* a ZMTP 3.0 greeting (NULL mechanism), then a long frame of 1 GB */
            uint8_t g[64] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0, 'N', 'U', 'L', 'L'};
            uint8_t f[9] = {0x02, 0, 0, 0, 0, 0x40, 0, 0, 0};
            if (write(fd, g, sizeof g) < 0 || write(fd, f, sizeof f) < 0)
                continue;
            uint8_t junk[4096];
            memset(junk, 0xab, sizeof junk);
            if (write(fd, junk, sizeof junk) < 0)
                continue;
        }
    }
    printf("opened %ld connections\n", opened);
    fflush(stdout);
    sleep((unsigned)a->hold);
    for (long i = 0; i < opened; i++)
        close(fds[i]);
    free(fds);
}

static const struct option options[] = {
    {"keys", required_argument, NULL, 'k'},   {"as", required_argument, NULL, 'a'},
    {"served", required_argument, NULL, 'S'}, {"server-role", required_argument, NULL, 'R'},
    {"step", required_argument, NULL, 's'},   {"count", required_argument, NULL, 'c'},
    {"experts", required_argument, NULL, 'e'}, {"epochs", required_argument, NULL, 'E'},
    {"rows", required_argument, NULL, 'r'},   {"width", required_argument, NULL, 'w'},
    {"hold", required_argument, NULL, 'h'},   {NULL, 0, NULL, 0},
};

int main(int argc, char **argv)
{
    struct attack a = {.step = 0, .count = 1, .experts = 1, .epochs = 1, .rows = 1, .width = 16,
                       .hold = 2, .as = "worker"};
    int c;
    while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
        long *num = c == 's' ? &a.step : c == 'c' ? &a.count : c == 'e' ? &a.experts
                  : c == 'E' ? &a.epochs : c == 'r' ? &a.rows : c == 'w' ? &a.width
                  : c == 'h' ? &a.hold : NULL;
        if (num && !moe_cli_long(optarg, 0, 100000000, num)) {
            fprintf(stderr, "moe-attack: not a number: %s\n", optarg);
            return 2;
        }
        if (c == 'k')
            a.keys = optarg;
        else if (c == 'a')
            a.as = optarg;
        else if (c == 'S')
            a.served = optarg;
        else if (c == 'R')
            a.server_role = optarg;
        else if (c == '?')
            return 2;
    }
    if (argc - optind != 2 || role_of(a.as) <= 0) {
        fprintf(stderr, "usage: moe-attack MODE ENDPOINT [--keys DIR --as ROLE] [...]\n");
        return 2;
    }
    a.mode = argv[optind];
    a.endpoint = argv[optind + 1];
    a.ctx = zmq_ctx_new();
    const char *m = a.mode;
    if (!strcmp(m, "bigframes") || !strcmp(m, "connections"))
        attack_raw(&a, !strcmp(m, "bigframes"));
    else if (!strcmp(m, "fetch") || !strcmp(m, "eval"))
        attack_server(&a, m);
    else if (!strcmp(m, "register-worker") || !strcmp(m, "register-server") ||
             !strcmp(m, "stats") || !strcmp(m, "heartbeat") || !strcmp(m, "trouble"))
        attack_coordinator(&a, m);
    else {
        fprintf(stderr, "moe-attack: unknown mode %s\n", m);
        return 2;
    }
    if (a.sock)
        zmq_close(a.sock);
    zmq_ctx_term(a.ctx);
    printf("answered %d, errors %d, payload bytes %llu\n", a.answered, a.errors, a.payload);
    return a.answered ? 3 : 0;
}
