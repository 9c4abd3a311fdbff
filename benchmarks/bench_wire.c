/* Benchmark: raw ZeroMQ throughput on this machine, the network limit the
 * distributed training step is compared against (DESIGN §9). A DEALER
 * sends a message of SIZE bytes to a ROUTER in another thread, which
 * answers with a message of the same size, as an expert server answers a
 * forward; repeated for at least half a second. Reports bytes moved (both
 * directions) per second and the round-trip time.
 *
 * Usage: bench_wire TRANSPORT SIZE...   (TRANSPORT: tcp or ipc)
 * Prints one line per size; with --json FILE also writes them as JSON.
 *
 * bench_wire --codec TRANSPORT ROWS WIDTH [--json FILE]: the cost of bf16
 * on the wire. A worker's round trip through the real codec (a pooled
 * send, the server's moe_wire_recv and in-place answer, the worker's
 * moe_wire_recv) of ROWS x WIDTH floats, as float32 and as bf16 (both
 * conversions each way), in 7 alternating rounds of at least 0.3 s each;
 * the ratio bf16 / f32 of the round-trip time is the median of the rounds'
 * ratios. Also the conversion rates alone (moe_bf16 kernels and the
 * per-element references) on that message, in GB/s of float32. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "gemm_rate.h"
#include "moe_bf16.h"
#include "moe_wire.h"

/* The answering side of a benchmark: a ROUTER in its own thread. */
struct echo {
    void *ctx;
    char endpoint[256];
    struct moe_wire_limits lim; /* --codec */
    volatile int ready;
};

/* The thread's ROUTER, bound to e->endpoint (which then holds the address
 * actually bound); tells the main thread it is ready. */
static void *bind_router(struct echo *e)
{
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
    return s;
}

/* Starts fn(e) on a thread answering on `transport` and returns a DEALER
 * connected to it. */
static void *start_pair(struct echo *e, const char *transport, void *(*fn)(void *),
                        pthread_t *th)
{
    if (strcmp(transport, "tcp") == 0)
        snprintf(e->endpoint, sizeof e->endpoint, "tcp://127.0.0.1:*");
    else
        snprintf(e->endpoint, sizeof e->endpoint, "ipc:///tmp/moe-bench-wire-%d.sock",
                 (int)getpid());
    pthread_create(th, NULL, fn, e);
    while (!e->ready)
        usleep(1000);
    void *c = zmq_socket(e->ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(c, ZMQ_LINGER, &linger, sizeof linger);
    zmq_connect(c, e->endpoint);
    return c;
}

static void *echo_main(void *arg)
{
    struct echo *e = arg;
    void *s = bind_router(e);
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

/* ------------------------------------------------------------------------
 * --codec: float32 against bf16 through moe_wire */

#define CODEC_ROUNDS 7

/* Answers every request in place (moe_wire_send_in_place), as an expert
 * server answers a forward; stops on a request of 0 rows. */
static void *codec_server_main(void *arg)
{
    struct echo *e = arg;
    void *s = bind_router(e);
    char err[256];
    for (;;) {
        struct moe_wire_msg m;
        if (moe_wire_recv(s, true, 0, &e->lim, &m, err, sizeof err)) {
            fprintf(stderr, "bench_wire: server: %s\n", err);
            exit(1);
        }
        if (m.rows == 0) {
            moe_wire_msg_free(&m);
            break;
        }
        const uint32_t rows = (uint32_t)m.rows;
        const int32_t id = 0;
        struct moe_wire_out o = {.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY,
                                 .request_id = m.hdr->request_id, .expert_ids = &id,
                                 .row_counts = &rows, .n_experts = 1, .dtype = m.hdr->dtype,
                                 .width = m.hdr->width};
        if (moe_wire_send_in_place(s, m.identity, m.identity_len, &o, &m, err, sizeof err)) {
            fprintf(stderr, "bench_wire: server: %s\n", err);
            exit(1);
        }
        moe_wire_msg_free(&m);
    }
    zmq_close(s);
    return NULL;
}

/* One worker round trip of rows x width in dtype; 0 or exits. */
static void codec_round_trip(void *c, moe_wire_pool_t *pool, const float *x, uint32_t rows,
                             uint32_t width, Moe__DType dtype, const struct moe_wire_limits *lim,
                             uint64_t req)
{
    char err[256];
    const int32_t id = 0;
    struct moe_wire_out o = {.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD, .request_id = req,
                             .expert_ids = &id, .row_counts = &rows, .n_experts = rows ? 1 : 0,
                             .dtype = dtype, .width = width};
    float *buf = rows ? moe_wire_pool_take(pool, (size_t)rows * width) : NULL;
    if (rows)
        memcpy(buf, x, sizeof(float) * rows * width); /* the worker gathers its rows */
    if (moe_wire_send_pooled(c, NULL, 0, &o, buf, rows, err, sizeof err)) {
        fprintf(stderr, "bench_wire: %s\n", err);
        exit(1);
    }
    if (!rows)
        return;
    struct moe_wire_msg m;
    if (moe_wire_recv(c, false, 0, lim, &m, err, sizeof err) || m.rows != rows) {
        fprintf(stderr, "bench_wire: worker: %s\n", err);
        exit(1);
    }
    moe_wire_msg_free(&m);
}

static double codec_time(void *c, moe_wire_pool_t *pool, const float *x, uint32_t rows,
                         uint32_t width, Moe__DType dtype, const struct moe_wire_limits *lim,
                         uint64_t *req)
{
    int reps = 0;
    double t0 = bench_now(), t;
    do {
        codec_round_trip(c, pool, x, rows, width, dtype, lim, ++*req);
        reps++;
        t = bench_now() - t0;
    } while (t < 0.3 || reps < 5);
    return t / reps;
}

/* GB/s of float32 converted by fn over n elements (at least 0.2 s). */
static double convert_rate(int which, float *f, uint16_t *h, size_t n)
{
    int reps = 0;
    double t0 = bench_now(), t;
    do {
        switch (which) {
        case 0: moe_bf16_from_f32(h, f, n); break;
        case 1: moe_bf16_to_f32(f, h, n); break;
        case 2: moe_bf16_from_f32_ref(h, f, n); break;
        default: moe_bf16_to_f32_ref(f, h, n); break;
        }
        reps++;
        t = bench_now() - t0;
    } while (t < 0.2);
    return 4.0 * (double)n * reps / t / 1e9;
}

static int codec_main(const char *transport, uint32_t rows, uint32_t width, const char *json)
{
    void *ctx = zmq_ctx_new();
    struct echo e = {.ctx = ctx};
    e.lim = (struct moe_wire_limits){(size_t)1 << 31, width, 1, rows};
    pthread_t th;
    void *c = start_pair(&e, transport, codec_server_main, &th);
    moe_wire_pool_t *pool = moe_wire_pool_new();
    const size_t n = (size_t)rows * width;
    float *x = malloc(sizeof(float) * n);
    uint16_t *h = malloc(sizeof(uint16_t) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((i * 7919) % 2001) / 1000.0f - 1.0f;
    uint64_t req = 0;
    double tf[CODEC_ROUNDS], tb[CODEC_ROUNDS], ratio[CODEC_ROUNDS];
    codec_time(c, pool, x, rows, width, MOE__DTYPE__DTYPE_F32, &e.lim, &req); /* warm-up */
    for (int r = 0; r < CODEC_ROUNDS; r++) {
        tf[r] = codec_time(c, pool, x, rows, width, MOE__DTYPE__DTYPE_F32, &e.lim, &req);
        tb[r] = codec_time(c, pool, x, rows, width, MOE__DTYPE__DTYPE_BF16, &e.lim, &req);
        ratio[r] = tb[r] / tf[r];
    }
    double rates[4];
    for (int k = 0; k < 4; k++)
        rates[k] = convert_rate(k, x, h, n);
    const double med = bench_median(ratio, CODEC_ROUNDS);
    const double f32 = bench_median(tf, CODEC_ROUNDS), bf16 = bench_median(tb, CODEC_ROUNDS);
    printf("%s codec round trip, %u x %u floats: f32 %.3f ms (%zu bytes each way), bf16 %.3f ms "
           "(%zu bytes): bf16 / f32 = %.3f (median of %d rounds' ratios)\n",
           transport, rows, width, 1e3 * f32, 4 * n, 1e3 * bf16, 2 * n, med, CODEC_ROUNDS);
    printf("conversion, GB/s of float32: f32 -> bf16 %.1f (reference %.1f), bf16 -> f32 %.1f "
           "(reference %.1f)\n", rates[0], rates[2], rates[1], rates[3]);
    if (json) {
        FILE *f = fopen(json, "w");
        if (f) {
            fprintf(f, "{\"transport\": \"%s\", \"rows\": %u, \"width\": %u, "
                       "\"f32_round_trip_ms\": %.4f, \"bf16_round_trip_ms\": %.4f, "
                       "\"bf16_over_f32\": %.4f, \"ratios\": [", transport, rows, width,
                    1e3 * f32, 1e3 * bf16, med);
            for (int r = 0; r < CODEC_ROUNDS; r++)
                fprintf(f, "%s%.4f", r ? ", " : "", tb[r] / tf[r]);
            fprintf(f, "], \"to_bf16_gbps\": %.2f, \"to_bf16_ref_gbps\": %.2f, "
                       "\"to_f32_gbps\": %.2f, \"to_f32_ref_gbps\": %.2f}\n",
                    rates[0], rates[2], rates[1], rates[3]);
            fclose(f);
        }
    }
    codec_round_trip(c, pool, x, 0, width, MOE__DTYPE__DTYPE_F32, &e.lim, ++req); /* stop */
    pthread_join(th, NULL);
    zmq_close(c);
    zmq_ctx_term(ctx);
    moe_wire_pool_destroy(&pool);
    free(x);
    free(h);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 5 && strcmp(argv[1], "--codec") == 0)
        return codec_main(argv[2], (uint32_t)atol(argv[3]), (uint32_t)atol(argv[4]),
                          argc >= 7 && strcmp(argv[5], "--json") == 0 ? argv[6] : NULL);
    if (argc < 3) {
        fprintf(stderr, "usage: bench_wire tcp|ipc SIZE... [--json FILE]\n");
        return 2;
    }
    const char *transport = argv[1], *json = NULL;
    void *ctx = zmq_ctx_new();
    struct echo e = {.ctx = ctx};
    pthread_t th;
    void *c = start_pair(&e, transport, echo_main, &th);
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
        double t0 = bench_now(), t;
        do {
            zmq_send(c, buf, size, 0);
            zmq_recv(c, in, size, 0);
            reps++;
            t = bench_now() - t0;
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
