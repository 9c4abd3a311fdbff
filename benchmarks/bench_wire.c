/* Benchmark: raw ZeroMQ throughput on this machine, the network limit the
 * distributed training step is compared against (DESIGN §9). A DEALER
 * sends a message of SIZE bytes to a ROUTER in another thread, which
 * answers with a message of the same size, as an expert server answers a
 * forward; repeated for at least half a second. Reports bytes moved (both
 * directions) per second and the round-trip time.
 *
 * Usage: bench_wire TRANSPORT SIZE...   (TRANSPORT: tcp or ipc)
 * Prints one line per size; with --json FILE also writes them as JSON. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct echo {
    void *ctx;
    char endpoint[256];
    volatile int ready;
};

static void *echo_main(void *arg)
{
    struct echo *e = arg;
    void *s = zmq_socket(e->ctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(s, e->endpoint) != 0) {
        fprintf(stderr, "bench_wire: cannot bind %s: %s\n", e->endpoint, zmq_strerror(zmq_errno()));
        exit(1);
    }
    size_t len = sizeof e->endpoint;
    zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, e->endpoint, &len);
    e->ready = 1;
    for (;;) {
        zmq_msg_t id, body;
        zmq_msg_init(&id);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&id, s, 0) < 0 || zmq_msg_recv(&body, s, 0) < 0)
            break;
        if (zmq_msg_size(&body) == 0) { /* stop */
            zmq_msg_close(&id);
            zmq_msg_close(&body);
            break;
        }
        /* answer with a message of the same size (a fresh copy, like a reply) */
        zmq_msg_t reply;
        zmq_msg_init_size(&reply, zmq_msg_size(&body));
        memcpy(zmq_msg_data(&reply), zmq_msg_data(&body), zmq_msg_size(&body));
        zmq_msg_send(&id, s, ZMQ_SNDMORE);
        zmq_msg_send(&reply, s, 0);
        zmq_msg_close(&body);
    }
    zmq_close(s);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_wire tcp|ipc SIZE... [--json FILE]\n");
        return 2;
    }
    const char *transport = argv[1], *json = NULL;
    void *ctx = zmq_ctx_new();
    struct echo e = {ctx, "", 0};
    if (strcmp(transport, "tcp") == 0)
        snprintf(e.endpoint, sizeof e.endpoint, "tcp://127.0.0.1:*");
    else
        snprintf(e.endpoint, sizeof e.endpoint, "ipc:///tmp/moe-bench-wire-%d.sock", (int)getpid());
    pthread_t th;
    pthread_create(&th, NULL, echo_main, &e);
    while (!e.ready)
        usleep(1000);
    void *c = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(c, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(c, e.endpoint);
    FILE *jf = NULL;
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            jf = fopen(json = argv[i + 1], "w");
    if (jf)
        fprintf(jf, "[");
    int first = 1;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            i++;
            continue;
        }
        size_t size = (size_t)atoll(argv[i]);
        char *buf = calloc(size ? size : 1, 1);
        char *in = malloc(size ? size : 1);
        int reps = 0;
        double t0 = now(), t;
        do {
            zmq_send(c, buf, size, 0);
            zmq_recv(c, in, size, 0);
            reps++;
            t = now() - t0;
        } while (t < 0.5 || reps < 5);
        double mbps = 2.0 * (double)size * reps / t / 1e6, rtt = t / reps * 1e3;
        printf("%s %10zu bytes: %8.1f MB/s (both directions), round trip %.3f ms\n", transport, size,
               mbps, rtt);
        if (jf)
            fprintf(jf, "%s{\"transport\": \"%s\", \"bytes\": %zu, \"mb_per_s\": %.1f, \"rtt_ms\": %.4f}",
                    first ? "" : ", ", transport, size, mbps, rtt);
        first = 0;
        free(buf);
        free(in);
    }
    if (jf) {
        fprintf(jf, "]\n");
        fclose(jf);
    }
    zmq_send(c, "", 0, 0);
    pthread_join(th, NULL);
    zmq_close(c);
    zmq_ctx_term(ctx);
    (void)json;
    return 0;
}
