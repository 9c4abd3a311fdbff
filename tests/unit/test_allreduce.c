/* Unit tests for worker/moe_allreduce: rings of 1 to 4 ranks run as threads
 * of the test process, over inproc:// (one shared context) and over
 * tcp://127.0.0.1 with ports picked free at run time. Every rank must end
 * with the same bits, equal to a reference summed in the order documented
 * in moe_allreduce.h, on inputs that mix 1e8 and 1.0 magnitudes so that any
 * other order changes bits. Also: n = 0, 1, world-1, 3M floats (several
 * pieces), repeated calls with different tags, a silent rank named within
 * the timeout, mismatched calls, and a table of malformed messages injected
 * by a proxy between two ranks. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "moe_allreduce.h"
#include "moe_checksum.h"
#include "moe_err.h"
#include "moe_guard.h"
#include "moe_rng.h"

Suite *test_allreduce_suite(void);

enum { AR_WORLD_MAX = 4, AR_CASES_MAX = 8, AR_ERR = 1024 };

/* ------------------------------------------------------------ inputs and reference */

/* Rank `rank`'s element i in call `call`: a value of about 1 plus, for half
 * the elements, one of +-1e8 or +-3e7 (1e16 for doubles). A function of its
 * key only, so the reference can recompute any rank's input. */
static double ar_input(int rank, int call, size_t i, bool f64)
{
    uint32_t w[4];
    moe_rng_block(2024, MOE_RNG_TEST, (uint64_t)call, (uint32_t)i, (uint32_t)rank, w);
    double small = 2.0 * ((double)(w[0] >> 8) / 16777216.0) - 1.0;
    static const double big[8] = {1e8, -1e8, 3e7, -3e7, 0, 0, 0, 0};
    return big[w[1] & 7] * (f64 ? 1e8 : 1.0) + small;
}

static void ar_fill(void *buf, int rank, int call, size_t n, bool f64)
{
    for (size_t i = 0; i < n; i++) {
        if (f64)
            ((double *)buf)[i] = ar_input(rank, call, i, true);
        else
            ((float *)buf)[i] = (float)ar_input(rank, call, i, false);
    }
}

/* The chunk of element i, as moe_allreduce.h defines the chunks. */
static int ar_chunk_of(size_t i, size_t n, int world)
{
    size_t base = n / (size_t)world, rem = n % (size_t)world;
    if (i < rem * (base + 1))
        return (int)(i / (base + 1));
    return (int)(rem + (i - rem * (base + 1)) / base);
}

/* The documented sum: x[c] + x[c+1] + ... + x[c+world-1], left to right,
 * starting at the element's chunk c. `start` < 0 instead starts every
 * element at rank -start - 1 (an order the all-reduce must not use). */
static float ar_ref_f32(int world, int call, size_t i, size_t n, int start)
{
    int c = start < 0 ? -start - 1 : ar_chunk_of(i, n, world);
    float acc = (float)ar_input(c, call, i, false);
    for (int j = 1; j < world; j++)
        acc = acc + (float)ar_input((c + j) % world, call, i, false);
    return acc;
}

static double ar_ref_f64(int world, int call, size_t i, size_t n, int start)
{
    int c = start < 0 ? -start - 1 : ar_chunk_of(i, n, world);
    double acc = ar_input(c, call, i, true);
    for (int j = 1; j < world; j++)
        acc = acc + ar_input((c + j) % world, call, i, true);
    return acc;
}

/* Does summing every element in plain rank order (as if chunk 0) change
 * the bits of at least one element? That proves the inputs can tell the
 * documented order from another one. */
static bool ar_order_matters(int world, int call, size_t n, bool f64)
{
    for (size_t i = 0; i < n; i++) {
        if (ar_chunk_of(i, n, world) == 0)
            continue;
        if (f64) {
            double a = ar_ref_f64(world, call, i, n, 0), b = ar_ref_f64(world, call, i, n, -1);
            if (memcmp(&a, &b, sizeof a) != 0)
                return true;
        } else {
            float a = ar_ref_f32(world, call, i, n, 0), b = ar_ref_f32(world, call, i, n, -1);
            if (memcmp(&a, &b, sizeof a) != 0)
                return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------ ranks as threads */

struct ar_case {
    size_t n;
    uint64_t tag;
    bool f64;
};

/* One rank: joins the ring, runs the calls, and records what happened (the
 * checks run in the main thread, since Check asserts only there). */
struct ar_job {
    void *ctx;
    const struct moe_net *net; /* NULL: plain sockets */
    int rank, world, delay_ms;
    int timeout_ms;        /* if > 0 before ar_run, overrides its timeout */
    const char *const *endpoints;
    const struct ar_case *cases;
    int ncases;
    bool idle;             /* joins the ring but never calls, until released */
    atomic_int *release;
    /* results */
    bool joined;
    char err_new[AR_ERR];
    int calls;             /* calls made, including a failed one */
    int rc[AR_CASES_MAX];
    char err[AR_CASES_MAX][AR_ERR];
    double ms[AR_CASES_MAX];
    uint64_t hash[AR_CASES_MAX];
    size_t bad[AR_CASES_MAX], first_bad[AR_CASES_MAX];
    int rc_after;          /* a call after a failure */
    char err_after[AR_ERR];
};

static double ar_ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) * 1e3 + (double)(t1.tv_nsec - t0->tv_nsec) / 1e6;
}

static void ar_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void ar_job_verify(struct ar_job *j, int k, const void *buf)
{
    const struct ar_case *c = &j->cases[k];
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < c->n; i++) {
        bool same;
        if (c->f64) {
            double want = ar_ref_f64(j->world, k, i, c->n, 0);
            same = memcmp(&want, (const double *)buf + i, sizeof want) == 0;
        } else {
            float want = ar_ref_f32(j->world, k, i, c->n, 0);
            same = memcmp(&want, (const float *)buf + i, sizeof want) == 0;
        }
        if (!same && bad++ == 0)
            first = i;
    }
    j->bad[k] = bad;
    j->first_bad[k] = first;
    j->hash[k] = moe_checksum64(MOE_CHECKSUM_INIT, buf, c->n * (c->f64 ? 8 : 4));
}

static void *ar_job_main(void *arg)
{
    struct ar_job *j = arg;
    if (j->delay_ms > 0)
        ar_sleep_ms(j->delay_ms);
    moe_allreduce_t *a = moe_allreduce_new(j->ctx, j->net, j->rank, j->world, j->endpoints, j->timeout_ms,
                                           j->err_new, sizeof j->err_new);
    j->joined = a != NULL;
    if (!a)
        return NULL;
    if (j->idle) {
        while (!atomic_load(j->release))
            ar_sleep_ms(2);
        moe_allreduce_destroy(&a);
        return NULL;
    }
    size_t cap = 1;
    for (int k = 0; k < j->ncases; k++)
        cap = j->cases[k].n > cap ? j->cases[k].n : cap;
    double *buf = malloc(cap * sizeof(double));
    for (int k = 0; buf && k < j->ncases; k++) {
        const struct ar_case *c = &j->cases[k];
        ar_fill(buf, j->rank, k, c->n, c->f64);
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (c->f64)
            j->rc[k] = moe_allreduce_sum_f64(a, buf, c->n, c->tag, j->err[k], AR_ERR);
        else
            j->rc[k] = moe_allreduce_sum(a, (float *)buf, c->n, c->tag, j->err[k], AR_ERR);
        j->ms[k] = ar_ms_since(&t0);
        j->calls = k + 1;
        if (j->rc[k] != 0) {
            j->rc_after = moe_allreduce_sum(a, (float *)buf, 1, c->tag + 1, j->err_after, AR_ERR);
            break;
        }
        ar_job_verify(j, k, buf);
    }
    free(buf);
    moe_allreduce_destroy(&a);
    return NULL;
}

/* Runs one ring: rank r gets eps[r] as its endpoint list. `idle` is a rank
 * that joins but never calls (-1 for none); it is released once all the
 * others are done. */
static void ar_run(struct ar_job *jobs, void *ctx, int world, const char *const *const *eps,
                   int timeout_ms, const struct ar_case *cases, int ncases, int idle)
{
    pthread_t th[AR_WORLD_MAX];
    atomic_int release = 0;
    for (int r = 0; r < world; r++) {
        jobs[r].ctx = ctx;
        jobs[r].rank = r;
        jobs[r].world = world;
        jobs[r].timeout_ms = jobs[r].timeout_ms > 0 ? jobs[r].timeout_ms : timeout_ms;
        jobs[r].endpoints = eps[r];
        jobs[r].cases = cases;
        jobs[r].ncases = ncases;
        jobs[r].idle = r == idle;
        jobs[r].release = &release;
        ck_assert_int_eq(pthread_create(&th[r], NULL, ar_job_main, &jobs[r]), 0);
    }
    for (int r = 0; r < world; r++)
        if (r != idle)
            pthread_join(th[r], NULL);
    atomic_store(&release, 1);
    if (idle >= 0)
        pthread_join(th[idle], NULL);
}

/* Every rank joined, every call succeeded with the reference bits, and all
 * ranks hold the same bytes. */
static void ar_check_all_ok(const struct ar_job *jobs, int world, const struct ar_case *cases,
                            int ncases)
{
    for (int r = 0; r < world; r++) {
        ck_assert_msg(jobs[r].joined, "world %d rank %d did not join: %s", world, r,
                      jobs[r].err_new);
        ck_assert_int_eq(jobs[r].calls, ncases);
        for (int k = 0; k < ncases; k++) {
            ck_assert_msg(jobs[r].rc[k] == 0, "world %d rank %d call %d (n %zu): %d %s", world, r,
                          k, cases[k].n, jobs[r].rc[k], jobs[r].err[k]);
            ck_assert_msg(jobs[r].bad[k] == 0,
                          "world %d rank %d call %d (n %zu %s): %zu elements differ from the "
                          "reference, first %zu",
                          world, r, k, cases[k].n, cases[k].f64 ? "f64" : "f32", jobs[r].bad[k],
                          jobs[r].first_bad[k]);
            ck_assert_msg(jobs[r].hash[k] == jobs[0].hash[k],
                          "world %d call %d: rank %d and rank 0 differ", world, k, r);
        }
    }
}

static void ar_inproc_endpoints(char names[AR_WORLD_MAX][64], const char *eps[AR_WORLD_MAX],
                                const char *prefix, int world)
{
    for (int r = 0; r < world; r++) {
        snprintf(names[r], sizeof names[r], "inproc://%s-%d", prefix, r);
        eps[r] = names[r];
    }
}

/* ------------------------------------------------------------ no ring */

START_TEST(allreduce_world1_is_noop)
{
    char err[AR_ERR] = "";
    moe_allreduce_t *a = moe_allreduce_new(NULL, NULL, 0, 1, NULL, 100, err, sizeof err);
    ck_assert_msg(a != NULL, "%s", err);
    float x[5] = {1e8f, 1.0f, -3.5f, 0.0f, 7.0f}, y[5];
    memcpy(y, x, sizeof x);
    ck_assert_int_eq(moe_allreduce_sum(a, x, 5, 1, err, sizeof err), 0);
    ck_assert_int_eq(memcmp(x, y, sizeof x), 0);
    double d = 2.5;
    ck_assert_int_eq(moe_allreduce_sum_f64(a, &d, 1, 2, err, sizeof err), 0);
    ck_assert(d == 2.5);
    ck_assert_int_eq(moe_allreduce_sum(a, NULL, 0, 3, err, sizeof err), 0);
    moe_allreduce_destroy(&a);
    ck_assert_ptr_null(a);
    moe_allreduce_destroy(&a);
    moe_allreduce_destroy(NULL);
}
END_TEST

START_TEST(allreduce_bad_arguments)
{
    void *ctx = zmq_ctx_new();
    const char *eps[2] = {"inproc://bad-0", "inproc://bad-1"};
    const char *holes[2] = {"inproc://bad-0", NULL};
    const char *blank[2] = {"inproc://bad-0", ""};
    char err[AR_ERR];
    struct {
        void *ctx;
        int rank, world;
        const char *const *eps;
        int timeout_ms;
    } bad[] = {
        {ctx, -1, 2, eps, 100}, {ctx, 2, 2, eps, 100},   {ctx, 0, 0, eps, 100},
        {ctx, 0, 2, eps, 0},    {ctx, 0, 2, NULL, 100},  {NULL, 0, 2, eps, 100},
        {ctx, 0, 2, holes, 100}, {ctx, 0, 2, blank, 100}, {ctx, 0, 70000, eps, 100},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        moe_allreduce_t *a = moe_allreduce_new(bad[i].ctx, NULL, bad[i].rank, bad[i].world, bad[i].eps,
                                               bad[i].timeout_ms, err, sizeof err);
        ck_assert_msg(a == NULL, "case %zu accepted", i);
        ck_assert_msg(strlen(err) > 10, "case %zu: no sentence", i);
    }
    /* err may be NULL. */
    ck_assert_ptr_null(moe_allreduce_new(ctx, NULL, 5, 2, eps, 100, NULL, 0));
    ck_assert_int_eq(moe_allreduce_sum(NULL, NULL, 0, 0, err, sizeof err), MOE_ERR_CONFIG);
    ck_assert_int_eq(moe_allreduce_sum_f64(NULL, NULL, 0, 0, NULL, 0), MOE_ERR_CONFIG);
    zmq_ctx_term(ctx);
}
END_TEST

/* ------------------------------------------------------------ sums */

/* Rings of 2, 3 and 4 ranks over inproc; eight calls with different tags,
 * sizes 0, 1, world-1, world, 7, 1000 and 4099, floats and doubles. */
START_TEST(allreduce_inproc_rings)
{
    const int world = _i;
    const struct ar_case cases[] = {
        {0, 100, false},    {1, 101, false},    {(size_t)world - 1, 102, false},
        {(size_t)world, 103, false}, {7, 104, true}, {1000, 105, false},
        {1000, 106, true},  {4099, 107, false},
    };
    const int ncases = (int)(sizeof cases / sizeof cases[0]);
    void *ctx = zmq_ctx_new();
    char names[AR_WORLD_MAX][64];
    const char *eps[AR_WORLD_MAX];
    ar_inproc_endpoints(names, eps, "ring", world);
    const char *const *per_rank[AR_WORLD_MAX] = {eps, eps, eps, eps};
    struct ar_job *jobs = calloc(AR_WORLD_MAX, sizeof *jobs);
    ar_run(jobs, ctx, world, per_rank, 5000, cases, ncases, -1);
    ar_check_all_ok(jobs, world, cases, ncases);
    /* With three ranks or more the test inputs do tell the orders apart
     * (with two, IEEE addition being commutative, no order could). */
    if (world >= 3) {
        ck_assert(ar_order_matters(world, 5, 1000, false));
        ck_assert(ar_order_matters(world, 6, 1000, true));
    }
    free(jobs);
    zmq_ctx_term(ctx);
}
END_TEST

/* 3M floats over 3 ranks: chunks of 1M floats, four 1 MiB pieces each;
 * twice, with different tags. */
START_TEST(allreduce_inproc_large)
{
    const int world = 3;
    const size_t n = 3000000;
    const struct ar_case cases[] = {{n, 7, false}, {n, 8, false}};
    ck_assert(n / world * sizeof(float) > 2 * MOE_ALLREDUCE_PIECE_BYTES);
    void *ctx = zmq_ctx_new();
    char names[AR_WORLD_MAX][64];
    const char *eps[AR_WORLD_MAX];
    ar_inproc_endpoints(names, eps, "large", world);
    const char *const *per_rank[AR_WORLD_MAX] = {eps, eps, eps};
    struct ar_job *jobs = calloc(AR_WORLD_MAX, sizeof *jobs);
    ar_run(jobs, ctx, world, per_rank, 10000, cases, 2, -1);
    ar_check_all_ok(jobs, world, cases, 2);
    free(jobs);
    zmq_ctx_term(ctx);
}
END_TEST

/* Free loopback ports: bind port 0, read the port back, and close only when
 * all are picked so that no two are the same. */
static void ar_free_ports(int *ports, int count)
{
    int fds[AR_WORLD_MAX];
    for (int i = 0; i < count; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        ck_assert_int_ge(fds[i], 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof sa;
        ck_assert_int_eq(bind(fds[i], (struct sockaddr *)&sa, sizeof sa), 0);
        ck_assert_int_eq(getsockname(fds[i], (struct sockaddr *)&sa, &len), 0);
        ports[i] = ntohs(sa.sin_port);
    }
    for (int i = 0; i < count; i++)
        close(fds[i]);
}

/* tcp://127.0.0.1 endpoints on free ports, one per rank. */
static void ar_tcp_endpoints(char names[AR_WORLD_MAX][64], const char *eps[AR_WORLD_MAX],
                             int world)
{
    int ports[AR_WORLD_MAX];
    ar_free_ports(ports, world);
    for (int r = 0; r < world; r++) {
        snprintf(names[r], sizeof names[r], "tcp://127.0.0.1:%d", ports[r]);
        eps[r] = names[r];
    }
}

/* Three ranks over tcp on loopback, starting 100 ms apart (so the first
 * ranks connect before their peer binds: no message may be lost). */
START_TEST(allreduce_tcp_ring)
{
    const int world = 3;
    const struct ar_case cases[] = {
        {0, 1, false}, {1, 2, false}, {2, 3, false}, {1000, 4, false}, {1000, 5, true},
        {3000000, 6, false},
    };
    const int ncases = (int)(sizeof cases / sizeof cases[0]);
    char names[AR_WORLD_MAX][64];
    const char *eps[AR_WORLD_MAX];
    ar_tcp_endpoints(names, eps, world);
    const char *const *per_rank[AR_WORLD_MAX] = {eps, eps, eps};
    void *ctx = zmq_ctx_new();
    struct ar_job *jobs = calloc(AR_WORLD_MAX, sizeof *jobs);
    for (int r = 0; r < world; r++)
        jobs[r].delay_ms = 100 * (world - 1 - r);
    ar_run(jobs, ctx, world, per_rank, 10000, cases, ncases, -1);
    ar_check_all_ok(jobs, world, cases, ncases);
    free(jobs);
    zmq_ctx_term(ctx);
}
END_TEST

/* The same ring as the cluster runs it over tcp: CURVE with the workers'
 * key, and calls of several full pieces (a full piece is the largest
 * message the receiving socket admits, and CURVE makes it larger on the
 * wire: every piece must still arrive). */
START_TEST(allreduce_tcp_ring_curve)
{
    const int world = 2;
    const struct ar_case cases[] = {{1000, 1, false}, {3000000, 2, false}};
    ck_assert(3000000 / world * sizeof(float) > 2 * MOE_ALLREDUCE_PIECE_BYTES);
    char dir[] = "/tmp/moe-ar-keys-XXXXXX", err[512];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_msg(moe_sec_keygen(dir, true, err, sizeof err) == 0, "%s", err);
    void *ctx = zmq_ctx_new();
    struct moe_sec sec;
    ck_assert_msg(moe_sec_init(&sec, MOE_SEC_WORKER, dir, false, err, sizeof err) == 0, "%s", err);
    moe_guard_t *guard = moe_guard_new(ctx, &sec, err, sizeof err);
    ck_assert_msg(guard != NULL, "%s", err);
    struct moe_net net = {&sec, guard, 16};
    char names[AR_WORLD_MAX][64];
    const char *eps[AR_WORLD_MAX];
    ar_tcp_endpoints(names, eps, world);
    const char *const *per_rank[AR_WORLD_MAX] = {eps, eps};
    struct ar_job *jobs = calloc(AR_WORLD_MAX, sizeof *jobs);
    for (int r = 0; r < world; r++)
        jobs[r].net = &net;
    ar_run(jobs, ctx, world, per_rank, 10000, cases, 2, -1);
    ar_check_all_ok(jobs, world, cases, 2);
    free(jobs);
    moe_guard_destroy(&guard);
    zmq_ctx_term(ctx);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* ------------------------------------------------------------ failures */

/* Four ranks; rank _i joins but never calls. Every other rank must fail
 * within about the 300 ms timeout with MOE_ERR_IO and a sentence naming the
 * silent rank's endpoint (not just its own neighbour's), and refuse any
 * later call. */
START_TEST(allreduce_silent_rank_is_named)
{
    const int world = 4, idle = _i, timeout_ms = 300;
    const struct ar_case cases[] = {{1000, 42, false}};
    void *ctx = zmq_ctx_new();
    char names[AR_WORLD_MAX][64];
    const char *eps[AR_WORLD_MAX];
    ar_inproc_endpoints(names, eps, "silent", world);
    const char *const *per_rank[AR_WORLD_MAX] = {eps, eps, eps, eps};
    struct ar_job *jobs = calloc(AR_WORLD_MAX, sizeof *jobs);
    ar_run(jobs, ctx, world, per_rank, timeout_ms, cases, 1, idle);
    for (int r = 0; r < world; r++) {
        ck_assert_msg(jobs[r].joined, "rank %d: %s", r, jobs[r].err_new);
        if (r == idle)
            continue;
        ck_assert_int_eq(jobs[r].calls, 1);
        ck_assert_msg(jobs[r].rc[0] == MOE_ERR_IO, "rank %d: %d %s", r, jobs[r].rc[0],
                      jobs[r].err[0]);
        ck_assert_msg(strstr(jobs[r].err[0], eps[idle]) != NULL,
                      "rank %d does not name %s: %s", r, eps[idle], jobs[r].err[0]);
        ck_assert_msg(jobs[r].ms[0] < 3.0 * timeout_ms, "rank %d took %.0f ms", r, jobs[r].ms[0]);
        ck_assert_msg(jobs[r].rc_after == MOE_ERR_STATE, "rank %d after: %d %s", r,
                      jobs[r].rc_after, jobs[r].err_after);
    }
    free(jobs);
    zmq_ctx_term(ctx);
}
END_TEST

/* The same, but the silent rank's successor (rank 0) waits 1500 ms, so
 * that its abort comes too late: ranks 1 and 2 time out after 600 ms while
 * waiting for their live neighbours, and must still name silent rank 3,
 * learnt from the wait notes that rank 0 sends after a quarter of its own
 * timeout (375 ms) and that rank 1 passes on at once. */
START_TEST(allreduce_silent_rank_named_through_notes)
{
    const int world = 4, idle = 3;
    const struct ar_case cases[] = {{1000, 43, false}};
    void *ctx = zmq_ctx_new();
    char names[AR_WORLD_MAX][64];
    const char *eps[AR_WORLD_MAX];
    ar_inproc_endpoints(names, eps, "notes", world);
    const char *const *per_rank[AR_WORLD_MAX] = {eps, eps, eps, eps};
    struct ar_job *jobs = calloc(AR_WORLD_MAX, sizeof *jobs);
    jobs[0].timeout_ms = 1500;
    ar_run(jobs, ctx, world, per_rank, 600, cases, 1, idle);
    for (int r = 0; r < idle; r++) {
        ck_assert_msg(jobs[r].joined, "rank %d: %s", r, jobs[r].err_new);
        ck_assert_msg(jobs[r].rc[0] == MOE_ERR_IO, "rank %d: %d %s", r, jobs[r].rc[0],
                      jobs[r].err[0]);
        ck_assert_msg(strstr(jobs[r].err[0], eps[idle]) != NULL, "rank %d does not name %s: %s",
                      r, eps[idle], jobs[r].err[0]);
        double limit = r == 0 ? 3 * 1500 : 3 * 600;
        ck_assert_msg(jobs[r].ms[0] < limit, "rank %d took %.0f ms", r, jobs[r].ms[0]);
    }
    /* Rank 1 timed out first (rank 0's abort comes at 1500 ms) and named
     * rank 3 on its own; rank 2 may have heard it from rank 1's abort. */
    ck_assert_msg(strstr(jobs[1].err[0], "aborted") == NULL, "rank 1: %s", jobs[1].err[0]);
    free(jobs);
    zmq_ctx_term(ctx);
}
END_TEST

/* A rank that never joins: moe_allreduce_new fails within the timeout and
 * names the missing rank's endpoint. */
START_TEST(allreduce_missing_rank_at_join)
{
    void *ctx = zmq_ctx_new();
    const char *eps[2] = {"inproc://join-0", "inproc://join-1"};
    char err[AR_ERR] = "";
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    moe_allreduce_t *a = moe_allreduce_new(ctx, NULL, 0, 2, eps, 200, err, sizeof err);
    double ms = ar_ms_since(&t0);
    ck_assert_ptr_null(a);
    ck_assert_msg(strstr(err, eps[1]) != NULL, "%s", err);
    ck_assert_msg(ms >= 150 && ms < 1000, "%.0f ms", ms);
    zmq_ctx_term(ctx);
}
END_TEST

/* Ranks that disagree on the call: tag, n, or element type. All fail, with
 * the code of the first detection, never a mixed sum or a hang. */
START_TEST(allreduce_mismatched_calls)
{
    const int world = 3;
    static const struct ar_case same[] = {{10, 5, false}};
    static const struct ar_case odd[][1] = {{{10, 6, false}}, {{11, 5, false}}, {{10, 5, true}}};
    static const int want[] = {MOE_ERR_STATE, MOE_ERR_SHAPE, MOE_ERR_SHAPE};
    static const char *const what[] = {"tag", "n", "type"};
    void *ctx = zmq_ctx_new();
    char names[AR_WORLD_MAX][64];
    const char *eps[AR_WORLD_MAX];
    ar_inproc_endpoints(names, eps, "odd", world);
    const char *const *per_rank[AR_WORLD_MAX] = {eps, eps, eps};
    struct ar_job *jobs = calloc(AR_WORLD_MAX, sizeof *jobs);
    /* Threads take their cases from the job; rank 2 gets the odd one. */
    pthread_t th[AR_WORLD_MAX];
    atomic_int release = 0;
    for (int r = 0; r < world; r++) {
        jobs[r] = (struct ar_job){.ctx = ctx, .rank = r, .world = world, .timeout_ms = 5000,
                                  .endpoints = per_rank[r], .cases = r == 2 ? odd[_i] : same,
                                  .ncases = 1, .release = &release};
        ck_assert_int_eq(pthread_create(&th[r], NULL, ar_job_main, &jobs[r]), 0);
    }
    for (int r = 0; r < world; r++)
        pthread_join(th[r], NULL);
    for (int r = 0; r < world; r++) {
        ck_assert_msg(jobs[r].joined, "rank %d: %s", r, jobs[r].err_new);
        ck_assert_msg(jobs[r].rc[0] == want[_i], "%s mismatch, rank %d: %d %s", what[_i], r,
                      jobs[r].rc[0], jobs[r].err[0]);
        ck_assert_msg(jobs[r].ms[0] < 2000, "rank %d took %.0f ms", r, jobs[r].ms[0]);
    }
    free(jobs);
    zmq_ctx_term(ctx);
}
END_TEST

/* ------------------------------------------------------------ malformed messages */

/* A proxy between rank 0 and rank 1 of a 2-ring forwards the hello
 * (message 0) and then damages message 1, the first data piece (one frame:
 * a 48-byte header and 16 bytes of payload). Rank 1 must
 * reject it with an error (not a crash, not a hang, not a wrong sum) and the
 * ring must fail on both ranks. */
enum ar_damage {
    AR_DMG_CUT_IN_HEADER,
    AR_DMG_HEADER_INVERTED,
    AR_DMG_PAYLOAD_SHORT,
    AR_DMG_PAYLOAD_LONG,
    AR_DMG_PAYLOAD_DROPPED,
    AR_DMG_EXTRA_FRAME,
    AR_DMG_EMPTY_MESSAGE,
    AR_DMG_HELLO_AGAIN,
    AR_DMG_DUPLICATE,
    AR_DMG_TABLE,          /* then one case per header byte: flip its lowest bit */
};

static const char *const ar_damage_names[AR_DMG_TABLE] = {
    "cut inside the header", "first 48 bytes inverted", "payload one byte short",
    "payload four bytes long", "payload dropped", "extra empty frame", "one empty frame",
    "hello again", "piece duplicated",
};

enum { AR_FRAMES_MAX = 4, AR_HDR_BYTES = 48 };

struct ar_frames {
    int count;
    size_t size[AR_FRAMES_MAX + 1];
    unsigned char *data[AR_FRAMES_MAX + 1];
};

struct ar_proxy {
    void *ctx;
    const char *in_ep, *out_ep;
    int damage;
    atomic_int stop;
    int seen; /* messages forwarded */
};

static void ar_frames_free(struct ar_frames *f)
{
    for (int i = 0; i < f->count; i++)
        free(f->data[i]);
    f->count = 0;
}

static bool ar_frames_recv(void *sock, struct ar_frames *f)
{
    f->count = 0;
    int more = 1;
    while (more && f->count < AR_FRAMES_MAX) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) < 0) {
            zmq_msg_close(&m);
            return false;
        }
        size_t n = zmq_msg_size(&m);
        f->data[f->count] = malloc(n + 8);
        memcpy(f->data[f->count], zmq_msg_data(&m), n);
        f->size[f->count++] = n;
        more = zmq_msg_more(&m);
        zmq_msg_close(&m);
    }
    return !more;
}

/* Never blocks: once rank 1 has closed its socket, a PUSH without a peer
 * would wait for ever; what cannot be delivered is dropped. */
static void ar_frames_send(void *sock, const struct ar_frames *f)
{
    for (int i = 0; i < f->count; i++)
        if (zmq_send(sock, f->data[i], f->size[i],
                     ZMQ_DONTWAIT | (i + 1 < f->count ? ZMQ_SNDMORE : 0)) < 0)
            return;
}

static void ar_damage_apply(struct ar_frames *f, const struct ar_frames *hello, int damage)
{
    switch (damage) {
    case AR_DMG_CUT_IN_HEADER:
        f->size[0] = AR_HDR_BYTES - 1;
        break;
    case AR_DMG_HEADER_INVERTED:
        for (size_t i = 0; i < AR_HDR_BYTES; i++)
            f->data[0][i] ^= 0xff;
        break;
    case AR_DMG_PAYLOAD_SHORT:
        f->size[0]--;
        break;
    case AR_DMG_PAYLOAD_LONG:
        memset(f->data[0] + f->size[0], 0, 4);
        f->size[0] += 4;
        break;
    case AR_DMG_PAYLOAD_DROPPED:
        f->size[0] = AR_HDR_BYTES;
        break;
    case AR_DMG_EXTRA_FRAME:
        f->data[f->count] = malloc(1);
        f->size[f->count++] = 0;
        break;
    case AR_DMG_EMPTY_MESSAGE:
        ar_frames_free(f);
        f->data[0] = malloc(1);
        f->size[0] = 0;
        f->count = 1;
        break;
    case AR_DMG_HELLO_AGAIN:
        ar_frames_free(f);
        for (int i = 0; i < hello->count; i++) {
            f->data[i] = malloc(hello->size[i] + 8);
            memcpy(f->data[i], hello->data[i], hello->size[i]);
            f->size[i] = hello->size[i];
        }
        f->count = hello->count;
        break;
    case AR_DMG_DUPLICATE:
        break; /* sent twice by the caller */
    default:
        f->data[0][damage - AR_DMG_TABLE] ^= 1;
        break;
    }
}

static void *ar_proxy_main(void *arg)
{
    struct ar_proxy *p = arg;
    const int linger = 0;
    void *in = zmq_socket(p->ctx, ZMQ_PULL), *out = zmq_socket(p->ctx, ZMQ_PUSH);
    zmq_setsockopt(in, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(out, ZMQ_LINGER, &linger, sizeof linger);
    zmq_bind(in, p->in_ep);
    zmq_connect(out, p->out_ep);
    struct ar_frames hello = {0}, f = {0};
    while (!atomic_load(&p->stop)) {
        zmq_pollitem_t it = {.socket = in, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, 20) <= 0)
            continue;
        if (!ar_frames_recv(in, &f)) {
            ar_frames_free(&f);
            continue;
        }
        if (p->seen == 0) {
            for (int i = 0; i < f.count; i++) {
                hello.data[i] = malloc(f.size[i] + 8);
                memcpy(hello.data[i], f.data[i], f.size[i]);
                hello.size[i] = f.size[i];
            }
            hello.count = f.count;
        }
        if (p->seen == 1) {
            ar_damage_apply(&f, &hello, p->damage);
            if (p->damage == AR_DMG_DUPLICATE)
                ar_frames_send(out, &f);
        }
        ar_frames_send(out, &f);
        ar_frames_free(&f);
        p->seen++;
    }
    ar_frames_free(&hello);
    zmq_close(in);
    zmq_close(out);
    return NULL;
}

START_TEST(allreduce_malformed_messages)
{
    const int damage = _i;
    const char *eps0[2] = {"inproc://bad-0", "inproc://bad-proxy"}; /* rank 0 sends to the proxy */
    const char *eps1[2] = {"inproc://bad-0", "inproc://bad-1"};
    const char *const *per_rank[AR_WORLD_MAX] = {eps0, eps1};
    const struct ar_case cases[] = {{8, 9, false}};
    void *ctx = zmq_ctx_new();
    struct ar_proxy proxy = {.ctx = ctx, .in_ep = eps0[1], .out_ep = eps1[1], .damage = damage};
    pthread_t pt;
    ck_assert_int_eq(pthread_create(&pt, NULL, ar_proxy_main, &proxy), 0);
    struct ar_job *jobs = calloc(AR_WORLD_MAX, sizeof *jobs);
    ar_run(jobs, ctx, 2, per_rank, 2000, cases, 1, -1);
    atomic_store(&proxy.stop, 1);
    pthread_join(pt, NULL);
    char name[64];
    if (damage < AR_DMG_TABLE)
        snprintf(name, sizeof name, "%s", ar_damage_names[damage]);
    else
        snprintf(name, sizeof name, "header byte %d flipped", damage - AR_DMG_TABLE);
    for (int r = 0; r < 2; r++)
        ck_assert_msg(jobs[r].joined, "%s: rank %d: %s", name, r, jobs[r].err_new);
    /* Rank 1 detects the damage itself: not by waiting for the timeout. */
    int rc = jobs[1].rc[0];
    ck_assert_msg(rc == MOE_ERR_FORMAT || rc == MOE_ERR_STATE || rc == MOE_ERR_SHAPE ||
                      rc == MOE_ERR_VERSION,
                  "%s: rank 1 returned %d: %s", name, rc, jobs[1].err[0]);
    ck_assert_msg(jobs[1].ms[0] < 1000, "%s: rank 1 took %.0f ms", name, jobs[1].ms[0]);
    ck_assert_msg(jobs[1].rc_after == MOE_ERR_STATE, "%s: a later call was accepted", name);
    /* Rank 0 fails through rank 1's abort, unless it had already received
     * everything it needed (a duplicate that follows the real piece): then
     * its sum must be right, and its next call meets the abort. */
    if (jobs[0].rc[0] == 0)
        ck_assert_msg(damage == AR_DMG_DUPLICATE && jobs[0].bad[0] == 0,
                      "%s: rank 0 succeeded", name);
    else
        ck_assert_msg(jobs[0].rc_after == MOE_ERR_STATE, "%s: a later call was accepted", name);
    free(jobs);
    zmq_ctx_term(ctx);
}
END_TEST

Suite *test_allreduce_suite(void)
{
    Suite *s = suite_create("allreduce");
    TCase *tn = tcase_create("noring");
    tcase_set_timeout(tn, 10);
    tcase_add_test(tn, allreduce_world1_is_noop);
    tcase_add_test(tn, allreduce_bad_arguments);
    suite_add_tcase(s, tn);
    TCase *ts = tcase_create("sum");
    tcase_set_timeout(ts, 60);
    tcase_add_loop_test(ts, allreduce_inproc_rings, 2, AR_WORLD_MAX + 1);
    tcase_add_test(ts, allreduce_inproc_large);
    tcase_add_test(ts, allreduce_tcp_ring);
    tcase_add_test(ts, allreduce_tcp_ring_curve);
    suite_add_tcase(s, ts);
    TCase *tf = tcase_create("failure");
    tcase_set_timeout(tf, 20);
    tcase_add_loop_test(tf, allreduce_silent_rank_is_named, 0, 4);
    tcase_add_test(tf, allreduce_silent_rank_named_through_notes);
    tcase_add_test(tf, allreduce_missing_rank_at_join);
    tcase_add_loop_test(tf, allreduce_mismatched_calls, 0, 3);
    tcase_add_loop_test(tf, allreduce_malformed_messages, 0, AR_DMG_TABLE + AR_HDR_BYTES);
    suite_add_tcase(s, tf);
    return s;
}
