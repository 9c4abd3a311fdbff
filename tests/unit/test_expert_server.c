/* Unit tests for server/expert/expert_server: a real expert server (expert_server_new +
 * expert_server_run in a thread) bound on tcp://127.0.0.1 at a port picked free at
 * run time, driven by DEALER sockets that connect as "moe-worker-0" and
 * "moe-worker-1". Tiny dims (D 4, H 5, 4 experts over two servers: this one
 * is server 0 and owns experts 0 and 1; the other endpoint is never used).
 *
 * Every reply is compared bitwise with a local expert_shard created with the
 * same ids, seed and optimizer options, run through the same steps with the
 * rows of each expert assembled in worker-rank order; the server's
 * parameters and factored-Adam state are read back with EXPERT_FETCH. The
 * barrier (no forward or backward reply before every worker's message is
 * in), zero-row workers, evaluation forwards, fetches in the middle of a
 * step, and every rejected message (exact error code, no state change: the
 * next valid step still matches the reference, and the error count is
 * exact) are covered, and so are stopping (idle, mid-step, mid-step past the
 * timeout) and the shard file. Every wait is bounded (5 s for a reply). */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
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

#include "expert_ffn.h"
#include "expert_shard.h"
#include "expert_server.h"
#include "moe_config.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_optim.h"
#include "moe_safetensors.h"
#include "moe_wire.h"
#include "test_util.h"
#include "moe_options.h"

Suite *test_expert_server_suite(void);

enum {
    D = 4,          /* d_model */
    H = 5,          /* d_hidden */
    NE = 4,         /* experts in the model */
    W = 2,          /* workers */
    N_OWN = 2,      /* experts of server 0: 0 and 1 */
    MAXR = 16,      /* rows per worker message in these tests */
    WAIT_MS = 5000, /* bound on every expected reply */
    QUIET_MS = 300, /* how long "no reply yet" is watched */
};
#define SEED 7

static const int32_t own_ids[N_OWN] = {0, 1};

#define T_FWD MOE__MSG_TYPE__MSG_EXPERT_FORWARD
#define T_FWD_R MOE__MSG_TYPE__MSG_EXPERT_FORWARD_REPLY
#define T_BWD MOE__MSG_TYPE__MSG_EXPERT_BACKWARD
#define T_BWD_R MOE__MSG_TYPE__MSG_EXPERT_BACKWARD_REPLY
#define T_ERR MOE__MSG_TYPE__MSG_ERROR
#define T_FETCH MOE__MSG_TYPE__MSG_EXPERT_FETCH
#define T_FETCH_R MOE__MSG_TYPE__MSG_EXPERT_FETCH_REPLY

/* ------------------------------------------------------------ the server */

struct srv {
    struct moe_options cfg; /* outlives the server, which keeps a pointer */
    expert_server_t *s;
    pthread_t th;
    bool started, joined;
    volatile sig_atomic_t stop;
    atomic_int done; /* set by the thread when expert_server_run returned */
    int rc;
    char ep[64];
    void *ctx;
    void *wk[W];  /* DEALERs "moe-worker-0", "moe-worker-1" */
    void *tool;   /* DEALER "moe-tool": a peer that is no worker (refused) */
    uint64_t req; /* last request id used */
};

static struct srv SV;
/* The MoE layer stamped on the forwards and backwards sent (0 but in the
 * two-layer test). */
static uint32_t send_layer;

static void *srv_thread(void *arg)
{
    struct srv *v = arg;
    v->rc = expert_server_run(v->s, &v->stop);
    atomic_store(&v->done, 1);
    return NULL;
}

static void *dealer(const char *identity)
{
    void *d = zmq_socket(SV.ctx, ZMQ_DEALER);
    ck_assert_ptr_nonnull(d);
    int linger = 0;
    ck_assert_int_eq(zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger), 0);
    ck_assert_int_eq(zmq_setsockopt(d, ZMQ_ROUTING_ID, identity, strlen(identity)), 0);
    ck_assert_int_eq(zmq_connect(d, SV.ep), 0);
    return d;
}

/* Starts server 0 of two with two workers; timeout_ms bounds a stop
 * during a step. With translate, the translation model's two MoE layers
 * (2 x NE experts, placed alternately: this server holds 0, 2, 4, 6). */
static void srv_start_model(int64_t timeout_ms, bool translate)
{
    memset(&SV, 0, sizeof SV);
    send_layer = 0;
    moe_log_set_level(MOE_LOG_ERROR); /* rejected messages are expected here */
    char err[512] = "";
    ck_assert_msg(moe_config_defaults(moe_options_table, moe_options_count, &SV.cfg, err,
                                      sizeof err) == 0,
                  "defaults: %s", err);
    SV.cfg.d_model = D;
    SV.cfg.d_hidden = H;
    SV.cfg.n_experts = NE;
    SV.cfg.k = 2;
    SV.cfg.seed = SEED;
    SV.cfg.lr = 0.01;
    SV.cfg.warmup = 3; /* steps 1, 2, 3 get different rates */
    SV.cfg.timeout_ms = timeout_ms;
    SV.cfg.server_index = 0;
    SV.cfg.insecure = true; /* the protocol, not the keys (test_sec, test_security) */
    snprintf(SV.cfg.workers, sizeof SV.cfg.workers, "tcp://127.0.0.1:1,tcp://127.0.0.1:2");
    if (translate) {
        snprintf(SV.cfg.task, sizeof SV.cfg.task, "translate");
        snprintf(SV.cfg.placement, sizeof SV.cfg.placement, "0,1,0,1,0,1,0,1");
    }
    for (int attempt = 0; attempt < 20 && !SV.s; attempt++) {
        snprintf(SV.ep, sizeof SV.ep, "tcp://127.0.0.1:%d", tu_free_port());
        snprintf(SV.cfg.servers, sizeof SV.cfg.servers, "%s,tcp://127.0.0.1:3", SV.ep);
        SV.s = expert_server_new(&SV.cfg, err, sizeof err);
    }
    ck_assert_msg(SV.s != NULL, "expert_server_new: %s", err);
    ck_assert_int_eq(expert_server_step(SV.s), 0);
    ck_assert_int_eq(expert_server_errors(SV.s), 0);
    ck_assert_int_eq(pthread_create(&SV.th, NULL, srv_thread, &SV), 0);
    SV.started = true;
    SV.ctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(SV.ctx);
    SV.wk[0] = dealer("moe-worker-0");
    SV.wk[1] = dealer("moe-worker-1");
    SV.tool = dealer("moe-tool");
}

static void srv_start(int64_t timeout_ms) { srv_start_model(timeout_ms, false); }

/* Stops the loop (the SIGTERM path of moe-server) and joins it. */
static void srv_join(void)
{
    SV.stop = 1;
    ck_assert_int_eq(pthread_join(SV.th, NULL), 0);
    SV.joined = true;
    ck_assert_int_eq(SV.rc, 0);
}

static void srv_close_socket(void **d)
{
    if (*d)
        zmq_close(*d);
    *d = NULL;
}

static void srv_finish(void)
{
    if (!SV.joined)
        srv_join();
    for (int r = 0; r < W; r++)
        srv_close_socket(&SV.wk[r]);
    srv_close_socket(&SV.tool);
    zmq_ctx_term(SV.ctx);
    SV.ctx = NULL;
    expert_server_destroy(&SV.s);
    ck_assert_ptr_null(SV.s);
}

/* ------------------------------------------------------------ messages */

static uint64_t next_req(void) { return ++SV.req; }

static uint64_t send_msg(void *sock, Moe__MsgType type, uint64_t step, uint32_t rank, bool eval,
                         size_t n, const int32_t *ids, const uint32_t *rows, const float *data,
                         uint32_t width)
{
    struct moe_wire_out o = {0};
    o.type = type;
    o.step = step;
    o.rank = rank;
    o.request_id = next_req();
    o.expert_ids = ids;
    o.row_counts = rows;
    o.n_experts = n;
    o.dtype = MOE__DTYPE__DTYPE_F32;
    o.width = width;
    o.eval = eval;
    o.layer = send_layer;
    uint64_t total = 0;
    for (size_t j = 0; j < n; j++)
        total += rows[j];
    char err[256] = "";
    int rc = moe_wire_send(sock, NULL, 0, &o, total ? data : NULL, total, err, sizeof err);
    ck_assert_msg(rc == 0, "moe_wire_send: %s", err);
    return o.request_id;
}

/* Receives one message within ms; false if none came. */
static bool try_recv(void *sock, int ms, struct moe_wire_msg *m)
{
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&it, 1, ms);
    ck_assert_int_ge(rc, 0);
    memset(m, 0, sizeof *m);
    if (rc == 0)
        return false;
    const struct moe_wire_limits lim = {(size_t)1 << 24, 0, NE, (uint64_t)1 << 20};
    char err[256] = "";
    rc = moe_wire_recv(sock, false, ZMQ_DONTWAIT, &lim, m, err, sizeof err);
    ck_assert_msg(rc == 0, "moe_wire_recv: %s", err);
    return true;
}

static void recv_one(void *sock, struct moe_wire_msg *m)
{
    ck_assert_msg(try_recv(sock, WAIT_MS, m), "no reply within %d ms", WAIT_MS);
}

static void expect_quiet(void *sock, const char *what)
{
    struct moe_wire_msg m;
    if (try_recv(sock, QUIET_MS, &m)) {
        int type = m.hdr->type, code = m.hdr->error_code;
        moe_wire_msg_free(&m);
        ck_abort_msg("%s: got a message of type %d (error code %d) too early", what, type, code);
    }
}

/* Returns 1, for counting the server's rejections. line: the caller's. */
static int expect_error_at(int line, void *sock, int code, uint64_t req)
{
    struct moe_wire_msg m;
    recv_one(sock, &m);
    const Moe__Header *h = m.hdr;
    ck_assert_msg(h->type == T_ERR, "line %d: expected error %d (%s), got a message of type %d",
                  line, code, moe_strerror(code), h->type);
    ck_assert_msg(h->error_code == code, "line %d: expected error %d (%s), got %d: %s", line, code,
                  moe_strerror(code), h->error_code, h->error_text ? h->error_text : "");
    ck_assert_uint_eq(h->request_id, req);
    ck_assert_uint_eq(h->rank, 0);
    ck_assert_ptr_nonnull(h->error_text);
    ck_assert_uint_gt(strlen(h->error_text), 0);
    ck_assert_ptr_null(m.data);
    moe_wire_msg_free(&m);
    return 1;
}
#define expect_error(sock, code, req) expect_error_at(__LINE__, sock, code, req)

/* ------------------------------------------------------------ batches */

/* What one worker sends in a step and what it must get back. */
struct wb {
    size_t n;
    int32_t ids[NE];
    uint32_t rows[NE];
    size_t total;
    float x[MAXR * D], dy[MAXR * D]; /* sent */
    float y[MAXR * D], dx[MAXR * D]; /* expected replies */
};

static void wb_set(struct wb *b, size_t n, const int32_t *ids, const uint32_t *rows,
                   uint32_t stream)
{
    memset(b, 0, sizeof *b);
    b->n = n;
    for (size_t j = 0; j < n; j++) {
        b->ids[j] = ids[j];
        b->rows[j] = rows[j];
        b->total += rows[j];
    }
    ck_assert_uint_le(b->total, MAXR);
    tu_fill(b->x, b->total * D, stream, 1.0f);
    tu_fill(b->dy, b->total * D, stream + 7919, 0.5f);
}

/* The usual layout: both workers have rows of both experts. */
static void std_batches(struct wb *b0, struct wb *b1, uint32_t stream)
{
    const uint32_t r0[] = {3, 2}, r1[] = {2, 4};
    wb_set(b0, 2, own_ids, r0, stream);
    wb_set(b1, 2, own_ids, r1, stream + 100);
}

static uint64_t send_fwd(int w, uint64_t step, const struct wb *b)
{
    return send_msg(SV.wk[w], T_FWD, step, (uint32_t)w, false, b->n, b->ids, b->rows, b->x, D);
}

static uint64_t send_eval(int w, uint64_t step, const struct wb *b)
{
    return send_msg(SV.wk[w], T_FWD, step, (uint32_t)w, true, b->n, b->ids, b->rows, b->x, D);
}

static uint64_t send_bwd(int w, uint64_t step, const struct wb *b)
{
    return send_msg(SV.wk[w], T_BWD, step, (uint32_t)w, false, b->n, b->ids, b->rows, b->dy, D);
}

/* A tensor reply with b's layout and exactly the floats `want`. */
static void expect_tensor(void *sock, Moe__MsgType type, uint64_t step, uint64_t req,
                          const struct wb *b, const float *want)
{
    struct moe_wire_msg m;
    recv_one(sock, &m);
    const Moe__Header *h = m.hdr;
    ck_assert_msg(h->type == type, "expected type %d, got %d (error %d: %s)", type, h->type,
                  h->error_code, h->error_text ? h->error_text : "");
    ck_assert_uint_eq(h->step, step);
    ck_assert_uint_eq(h->request_id, req);
    ck_assert_uint_eq(h->rank, 0);
    ck_assert_uint_eq(h->width, D);
    ck_assert_uint_eq(h->n_expert_ids, b->n);
    ck_assert_uint_eq(h->n_row_counts, b->n);
    for (size_t j = 0; j < b->n; j++) {
        ck_assert_int_eq(h->expert_ids[j], b->ids[j]);
        ck_assert_uint_eq(h->row_counts[j], b->rows[j]);
    }
    ck_assert_uint_eq(m.rows, b->total);
    if (b->total == 0) {
        ck_assert_ptr_null(m.data);
    } else {
        ck_assert_ptr_nonnull(m.data);
        for (size_t i = 0; i < b->total * D; i++)
            ck_assert_msg(memcmp(&m.data[i], &want[i], sizeof(float)) == 0,
                          "type %d, float %zu: got %.9g, expected %.9g", type, i, (double)m.data[i],
                          (double)want[i]);
    }
    moe_wire_msg_free(&m);
}

/* Messages of one connection are served in order, but the server
 * interleaves connections as it likes: to be sure that what worker w sent
 * so far has been handled before another socket sends, worker w sends an
 * empty evaluation forward and waits for its (immediate) reply. */
static void sync_worker(int w)
{
    static struct wb none; /* zero rows */
    uint64_t q = send_msg(SV.wk[w], T_FWD, 0, (uint32_t)w, true, 0, NULL, NULL, NULL, D);
    expect_tensor(SV.wk[w], T_FWD_R, 0, q, &none, NULL);
}

/* ------------------------------------------------------------ the reference */

struct ref {
    expert_shard_t *sh;
    const int32_t *own; /* its N_OWN experts */
    struct moe_lr_schedule sched;
    int64_t t;
};

/* A reference shard of experts own[0], own[1]. */
static void ref_init_ids(struct ref *r, const int32_t *own)
{
    const struct moe_options *c = &SV.cfg;
    /* the options expert_server_new derives from the configuration */
    const struct moe_fadam_opts fo = {c->expert_beta2, c->expert_decay_pow, c->expert_eps, 1e-30,
                                      c->expert_clip, c->expert_relative_step, 1e-3};
    r->sh = expert_shard_new(D, H, N_OWN, own, (uint64_t)c->seed, &fo);
    ck_assert_ptr_nonnull(r->sh);
    r->own = own;
    r->sched = (struct moe_lr_schedule){c->lr, c->warmup};
    r->t = 0;
}

static void ref_init(struct ref *r) { ref_init_ids(r, own_ids); }

static void ref_free(struct ref *r) { expert_shard_destroy(&r->sh); }

/* The macro-batch of a step: for each owned expert, its rows from the
 * workers in `order`, and where each row came from. */
struct layout {
    int n;
    int32_t ids[N_OWN];
    int rows[N_OWN];
    size_t total;
    int src_w[W * MAXR];
    size_t src_r[W * MAXR];
};

static void layout_build(struct layout *L, const int32_t *own, struct wb *const *b,
                         const int *order)
{
    memset(L, 0, sizeof *L);
    for (int e = 0; e < N_OWN; e++) {
        int cnt = 0;
        for (int k = 0; k < W; k++) {
            const int w = order[k];
            size_t off = 0;
            for (size_t j = 0; j < b[w]->n; j++) {
                if (b[w]->ids[j] == own[e]) {
                    for (uint32_t q = 0; q < b[w]->rows[j]; q++) {
                        L->src_w[L->total] = w;
                        L->src_r[L->total] = off + q;
                        L->total++;
                        cnt++;
                    }
                }
                off += b[w]->rows[j];
            }
        }
        if (cnt > 0) {
            L->ids[L->n] = own[e];
            L->rows[L->n] = cnt;
            L->n++;
        }
    }
}

static const int rank_order[W] = {0, 1}, reverse_order[W] = {1, 0};

/* One training step of the reference on the workers' batches assembled in
 * `order`. With store, the expected forward and backward replies go into
 * the batches (y, dx). */
static void ref_step(struct ref *r, struct wb *const *b, const int *order, bool store)
{
    static float xa[W * MAXR * D], ya[W * MAXR * D], ys[W * MAXR * D], dxa[W * MAXR * D],
        za[W * MAXR * H];
    struct layout L;
    layout_build(&L, r->own, b, order);
    for (size_t i = 0; i < L.total; i++)
        memcpy(xa + i * D, b[L.src_w[i]]->x + L.src_r[i] * D, sizeof(float) * D);
    /* the outputs: expert_ffn_forward on each expert's rows, with the
     * parameters before the step */
    size_t off = 0;
    for (int e = 0; e < L.n; e++) {
        float *blk = expert_shard_params(r->sh, expert_shard_find(r->sh, L.ids[e]));
        struct expert_ffn_params p = expert_ffn_view(blk, D, H);
        expert_ffn_forward(ya + off * D, za, xa + off * D, &p, L.rows[e], D, H);
        off += (size_t)L.rows[e];
    }
    /* the shard's step (caches the forward for the backward) agrees */
    ck_assert_int_eq(expert_shard_forward(r->sh, L.n, L.ids, L.rows, xa, ys), 0);
    ck_assert_int_eq(memcmp(ya, ys, sizeof(float) * L.total * D), 0);
    for (size_t i = 0; i < L.total; i++)
        memcpy(xa + i * D, b[L.src_w[i]]->dy + L.src_r[i] * D, sizeof(float) * D);
    ck_assert_int_eq(expert_shard_backward(r->sh, L.n, L.ids, L.rows, xa, dxa), 0);
    if (store) {
        for (size_t i = 0; i < L.total; i++) {
            memcpy(b[L.src_w[i]]->y + L.src_r[i] * D, ya + i * D, sizeof(float) * D);
            memcpy(b[L.src_w[i]]->dx + L.src_r[i] * D, dxa + i * D, sizeof(float) * D);
        }
    }
    r->t++;
    expert_shard_apply(r->sh, r->t, moe_lr_at(&r->sched, r->t));
}

/* What an evaluation forward of b must return: the expert code on b's rows
 * alone, with the current parameters. */
static void ref_eval(struct ref *r, const struct wb *b, float *y)
{
    float z[MAXR * H];
    size_t off = 0;
    for (size_t j = 0; j < b->n; j++) {
        float *blk = expert_shard_params(r->sh, expert_shard_find(r->sh, b->ids[j]));
        struct expert_ffn_params p = expert_ffn_view(blk, D, H);
        expert_ffn_forward(y + off * D, z, b->x + off * D, &p, (int)b->rows[j], D, H);
        off += b->rows[j];
    }
}

/* ------------------------------------------------------------ fetch */

static size_t fetch_width(void)
{
    return expert_ffn_param_count(D, H) + (size_t)((H + D) + H + (D + H) + D);
}

/* EXPERT_FETCH of experts 0 and 1 (by worker 0, between its steps); the
 * reply goes into out (N_OWN rows of P + S floats). */
static void fetch(uint64_t step, float *out)
{
    const uint32_t zeros[N_OWN] = {0, 0};
    uint64_t req = send_msg(SV.wk[0], T_FETCH, 0, 0, false, N_OWN, own_ids, zeros, NULL, 0);
    struct moe_wire_msg m;
    recv_one(SV.wk[0], &m);
    const Moe__Header *h = m.hdr;
    ck_assert_msg(h->type == T_FETCH_R, "fetch: got type %d (error %d: %s)", h->type,
                  h->error_code, h->error_text ? h->error_text : "");
    ck_assert_uint_eq(h->request_id, req);
    ck_assert_uint_eq(h->step, step);
    ck_assert_uint_eq(h->width, fetch_width());
    ck_assert_int_eq(h->dtype, MOE__DTYPE__DTYPE_F32);
    ck_assert_uint_eq(h->n_expert_ids, N_OWN);
    for (int i = 0; i < N_OWN; i++) {
        ck_assert_int_eq(h->expert_ids[i], own_ids[i]);
        ck_assert_uint_eq(h->row_counts[i], 1);
    }
    ck_assert_uint_eq(m.rows, N_OWN);
    memcpy(out, m.data, sizeof(float) * N_OWN * fetch_width());
    moe_wire_msg_free(&m);
}

/* Does a fetched block equal the shard's parameters and state, bitwise? */
static bool same_as_shard(const float *got, expert_shard_t *sh)
{
    const size_t P = expert_ffn_param_count(D, H), S = expert_shard_opt_state_size(sh);
    ck_assert_uint_eq(P + S, fetch_width());
    for (int i = 0; i < N_OWN; i++) {
        if (memcmp(got + (size_t)i * (P + S), expert_shard_params(sh, i), sizeof(float) * P) ||
            memcmp(got + (size_t)i * (P + S) + P, expert_shard_opt_state(sh, i),
                   sizeof(float) * S))
            return false;
    }
    return true;
}

/* The server's parameters and state equal the reference's (and the server
 * is at the reference's step). */
static void expect_params(struct ref *r)
{
    float got[N_OWN * 128];
    ck_assert_uint_le(N_OWN * fetch_width(), sizeof got / sizeof got[0]);
    fetch((uint64_t)r->t, got);
    expert_shard_flush(r->sh, r->t); /* the server flushes before a fetch */
    ck_assert_msg(same_as_shard(got, r->sh), "the server's experts differ from the reference after %lld steps",
                  (long long)r->t);
}

/* ------------------------------------------------------------ whole steps */

static void forwards_ok(uint64_t step, struct wb *b0, struct wb *b1)
{
    uint64_t q0 = send_fwd(0, step, b0);
    uint64_t q1 = send_fwd(1, step, b1);
    expect_tensor(SV.wk[0], T_FWD_R, step, q0, b0, b0->y);
    expect_tensor(SV.wk[1], T_FWD_R, step, q1, b1, b1->y);
}

static void backwards_ok(uint64_t step, struct wb *b0, struct wb *b1)
{
    uint64_t q0 = send_bwd(0, step, b0);
    uint64_t q1 = send_bwd(1, step, b1);
    expect_tensor(SV.wk[0], T_BWD_R, step, q0, b0, b0->dx);
    expect_tensor(SV.wk[1], T_BWD_R, step, q1, b1, b1->dx);
}

/* A normal step with the standard layout, checked against the reference. */
static void step_ok(struct ref *r, uint32_t stream)
{
    static struct wb b0, b1;
    std_batches(&b0, &b1, stream);
    struct wb *b[W] = {&b0, &b1};
    const uint64_t step = (uint64_t)r->t;
    ref_step(r, b, rank_order, true);
    forwards_ok(step, &b0, &b1);
    backwards_ok(step, &b0, &b1);
}

static void finish_expect(int64_t steps, int64_t errors)
{
    srv_join();
    ck_assert_int_eq(expert_server_step(SV.s), steps);
    ck_assert_int_eq(expert_server_errors(SV.s), errors);
    srv_finish();
}

/* ------------------------------------------------------------ tests: steps */

/* Three steps with different layouts (and a larger batch, so buffers grow):
 * replies only once every worker's message is in, outputs and input
 * gradients bitwise equal to the reference, parameters and state after each
 * step equal to a local shard applying the same lr schedule. */
START_TEST(expert_server_full_steps)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    expect_params(&r); /* initial values: same seed, same ids */
    static struct wb b0, b1;
    struct wb *b[W] = {&b0, &b1};
    for (int s = 0; s < 3; s++) {
        if (s == 0) {
            std_batches(&b0, &b1, 10);
        } else if (s == 1) {
            const int32_t i0[] = {1}, i1[] = {0, 1};
            const uint32_t r0[] = {4}, r1[] = {1, 1};
            wb_set(&b0, 1, i0, r0, 20);
            wb_set(&b1, 2, i1, r1, 21);
        } else {
            const uint32_t r0[] = {6, 5}, r1[] = {4, 7};
            wb_set(&b0, 2, own_ids, r0, 30);
            wb_set(&b1, 2, own_ids, r1, 31);
        }
        const uint64_t step = (uint64_t)r.t;
        ref_step(&r, b, rank_order, true);
        uint64_t q0 = send_fwd(0, step, &b0);
        expect_quiet(SV.wk[0], "forward before worker 1's forward");
        uint64_t q1 = send_fwd(1, step, &b1);
        expect_tensor(SV.wk[0], T_FWD_R, step, q0, &b0, b0.y);
        expect_tensor(SV.wk[1], T_FWD_R, step, q1, &b1, b1.y);
        q1 = send_bwd(1, step, &b1); /* the order of arrival does not matter */
        expect_quiet(SV.wk[1], "backward before worker 0's backward");
        q0 = send_bwd(0, step, &b0);
        expect_tensor(SV.wk[0], T_BWD_R, step, q0, &b0, b0.dx);
        expect_tensor(SV.wk[1], T_BWD_R, step, q1, &b1, b1.dx);
        expect_params(&r);
    }
    ref_free(&r);
    finish_expect(3, 0);
}
END_TEST

/* The rows of an expert are assembled in rank order whatever the arrival
 * order: worker 1 sends first, and the gradient of w2.bias (a plain sum over
 * rows) is 1e8 + -1e8 + 1 = 1 in rank order but -1e8 + 1 + 1e8 = 0 the other
 * way, so the update tells the two orders apart. */
START_TEST(expert_server_rank_order)
{
    srv_start(30000);
    struct ref r, rev;
    ref_init(&r);
    ref_init(&rev);
    static struct wb b0, b1;
    const uint32_t r0[] = {1, 2};
    const int32_t i1[] = {0};
    const uint32_t r1[] = {2};
    wb_set(&b0, 2, own_ids, r0, 40);
    wb_set(&b1, 1, i1, r1, 41);
    for (int c = 0; c < D; c++) {
        b0.dy[0 * D + c] = 1e8f;  /* worker 0, expert 0 */
        b1.dy[0 * D + c] = -1e8f; /* worker 1, expert 0 */
        b1.dy[1 * D + c] = 1.0f;
    }
    struct wb *b[W] = {&b0, &b1};
    static struct wb c0, c1; /* scratch copies for the reverse order */
    c0 = b0;
    c1 = b1;
    struct wb *c[W] = {&c0, &c1};
    ref_step(&rev, c, reverse_order, false);
    ref_step(&r, b, rank_order, true);
    float a[N_OWN * 128];
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_quiet(SV.wk[1], "forward before worker 0's forward");
    uint64_t q0 = send_fwd(0, 0, &b0);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    q1 = send_bwd(1, 0, &b1);
    expect_quiet(SV.wk[1], "backward before worker 0's backward");
    q0 = send_bwd(0, 0, &b0);
    expect_tensor(SV.wk[0], T_BWD_R, 0, q0, &b0, b0.dx);
    expect_tensor(SV.wk[1], T_BWD_R, 0, q1, &b1, b1.dx);
    fetch(1, a);
    ck_assert_msg(same_as_shard(a, r.sh), "the update differs from the rank-order reference");
    ck_assert_msg(!same_as_shard(a, rev.sh),
                  "the data does not tell rank order from reverse order (test is void)");
    ref_free(&r);
    ref_free(&rev);
    finish_expect(1, 0);
}
END_TEST

/* A worker with no rows for this server sends an empty forward and still
 * gets an (empty) reply, and the step completes. _i: 0 worker 1 sends no
 * experts; 1 worker 1 lists both experts with zero rows; 2 both workers are
 * empty (the update then only decays the second moments). */
START_TEST(expert_server_zero_rows)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1;
    std_batches(&b0, &b1, 50);
    const uint32_t zeros[] = {0, 0};
    if (_i == 0 || _i == 2)
        wb_set(&b1, 0, NULL, NULL, 51);
    else
        wb_set(&b1, 2, own_ids, zeros, 51);
    if (_i == 2)
        wb_set(&b0, 0, NULL, NULL, 52);
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_quiet(SV.wk[1], "empty forward before worker 0's forward");
    uint64_t q0 = send_fwd(0, 0, &b0);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    backwards_ok(0, &b0, &b1);
    expect_params(&r);
    step_ok(&r, 53); /* and the next, full step is normal */
    expect_params(&r);
    ref_free(&r);
    finish_expect(2, 0);
}
END_TEST

/* Evaluation forwards are answered at once, whatever their step, with the
 * current parameters, and neither count for nor disturb the barrier of the
 * step in progress (also between its forward and backward). */
START_TEST(expert_server_eval_forward)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1, e;
    float want[MAXR * D];
    const int32_t ie[] = {0, 1};
    const uint32_t re[] = {2, 3};
    wb_set(&e, 2, ie, re, 60);
    ref_eval(&r, &e, want);
    /* idle */
    uint64_t q = send_eval(1, 0, &e);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q, &e, want);
    /* during the forward barrier */
    std_batches(&b0, &b1, 61);
    struct wb *b[W] = {&b0, &b1};
    expect_params(&r); /* the evaluation changed nothing */
    ref_step(&r, b, rank_order, true);
    uint64_t q0 = send_fwd(0, 0, &b0);
    sync_worker(0);
    expect_quiet(SV.wk[0], "forward before worker 1's forward");
    q = send_eval(1, 42, &e); /* any step */
    expect_tensor(SV.wk[1], T_FWD_R, 42, q, &e, want);
    expect_quiet(SV.wk[0], "forward after an evaluation forward of worker 1");
    q = send_eval(0, 0, &e); /* worker 0 itself, its training forward pending */
    expect_tensor(SV.wk[0], T_FWD_R, 0, q, &e, want);
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    /* between forward and backward: the forward cache must survive */
    q = send_eval(0, 0, &e);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q, &e, want);
    q0 = send_bwd(0, 0, &b0);
    expect_quiet(SV.wk[0], "backward before worker 1's backward");
    q = send_eval(1, 0, &e);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q, &e, want);
    expect_quiet(SV.wk[0], "backward after an evaluation forward");
    q1 = send_bwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_BWD_R, 0, q0, &b0, b0.dx);
    expect_tensor(SV.wk[1], T_BWD_R, 0, q1, &b1, b1.dx);
    expect_params(&r);
    /* after the update, evaluation sees the new parameters */
    float want2[MAXR * D];
    ref_eval(&r, &e, want2);
    ck_assert_int_ne(memcmp(want, want2, sizeof(float) * e.total * D), 0);
    q = send_eval(0, 1, &e);
    expect_tensor(SV.wk[0], T_FWD_R, 1, q, &e, want2);
    /* an empty evaluation forward */
    static struct wb none;
    wb_set(&none, 0, NULL, NULL, 62);
    q = send_eval(1, 1, &none);
    expect_tensor(SV.wk[1], T_FWD_R, 1, q, &none, none.y);
    step_ok(&r, 63);
    expect_params(&r);
    ref_free(&r);
    finish_expect(2, 0);
}
END_TEST

/* ------------------------------------------------------------ tests: rejected */

/* Forwards and backwards of a stale or a future step. */
START_TEST(expert_server_wrong_step)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1;
    std_batches(&b0, &b1, 70);
    int errors = 0;
    /* at step 0 */
    errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_fwd(0, 1, &b0));
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_bwd(1, 1, &b1));
    errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_fwd(0, UINT64_MAX, &b0));
    step_ok(&r, 71);
    /* at step 1 */
    errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_fwd(0, 0, &b0));
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_bwd(1, 0, &b1));
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_fwd(1, 2, &b1));
    /* in the middle of step 1 */
    std_batches(&b0, &b1, 72);
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    uint64_t q0 = send_fwd(0, 1, &b0);
    sync_worker(0);
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_fwd(1, 0, &b1));
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_fwd(1, 2, &b1));
    expect_quiet(SV.wk[0], "forward with only wrong-step forwards from worker 1");
    uint64_t q1 = send_fwd(1, 1, &b1);
    expect_tensor(SV.wk[0], T_FWD_R, 1, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 1, q1, &b1, b1.y);
    q0 = send_bwd(0, 1, &b0);
    sync_worker(0);
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_bwd(1, 2, &b1));
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_bwd(1, 0, &b1));
    expect_quiet(SV.wk[0], "backward with only wrong-step backwards from worker 1");
    q1 = send_bwd(1, 1, &b1);
    expect_tensor(SV.wk[0], T_BWD_R, 1, q0, &b0, b0.dx);
    expect_tensor(SV.wk[1], T_BWD_R, 1, q1, &b1, b1.dx);
    expect_params(&r);
    ref_free(&r);
    finish_expect(2, errors);
}
END_TEST

/* Experts this server does not own (2 and 3 live on server 1; 7 is past
 * the model's experts) in forwards, evaluation forwards and fetches, and
 * ranks that are not workers of the cluster. */
START_TEST(expert_server_unknown_expert_and_rank)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1, bad;
    int errors = 0;
    const int32_t i3[] = {3}, i12[] = {1, 2}, i07[] = {0, 7};
    const uint32_t r1[] = {1}, r11[] = {1, 1};
    wb_set(&bad, 1, i3, r1, 80);
    errors += expect_error(SV.wk[0], MOE_ERR_NOTFOUND, send_fwd(0, 0, &bad));
    errors += expect_error(SV.wk[0], MOE_ERR_NOTFOUND, send_eval(0, 0, &bad));
    wb_set(&bad, 2, i12, r11, 81);
    errors += expect_error(SV.wk[1], MOE_ERR_NOTFOUND, send_fwd(1, 0, &bad));
    wb_set(&bad, 2, i07, r11, 82);
    errors += expect_error(SV.wk[1], MOE_ERR_NOTFOUND, send_fwd(1, 0, &bad));
    const uint32_t z1[] = {0};
    errors += expect_error(SV.wk[0], MOE_ERR_NOTFOUND,
                 send_msg(SV.wk[0], T_FETCH, 0, 0, false, 1, i3, z1, NULL, 0));
    /* only a worker of the cluster may fetch: not another peer */
    errors += expect_error(SV.tool, MOE_ERR_STATE,
                 send_msg(SV.tool, T_FETCH, 0, 0, false, 1, i3, z1, NULL, 0));
    /* ranks 2 and 1000: not workers (the identity matches rank 2, so this is
     * the rank check) */
    void *w2 = dealer("moe-worker-2");
    std_batches(&b0, &b1, 83);
    errors += expect_error(w2, MOE_ERR_NOTFOUND,
                 send_msg(w2, T_FWD, 0, 2, false, b0.n, b0.ids, b0.rows, b0.x, D));
    errors += expect_error(w2, MOE_ERR_NOTFOUND,
                 send_msg(w2, T_BWD, 0, 2, false, b0.n, b0.ids, b0.rows, b0.dy, D));
    errors += expect_error(SV.wk[0], MOE_ERR_NOTFOUND,
                 send_msg(SV.wk[0], T_FWD, 0, 1000, false, b0.n, b0.ids, b0.rows, b0.x, D));
    errors += expect_error(SV.wk[0], MOE_ERR_NOTFOUND,
                 send_msg(SV.wk[0], T_FWD, 0, UINT32_MAX, true, b0.n, b0.ids, b0.rows, b0.x, D));
    /* in the middle of a step too */
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    uint64_t q0 = send_fwd(0, 0, &b0);
    sync_worker(0);
    wb_set(&bad, 1, i3, r1, 84);
    errors += expect_error(SV.wk[1], MOE_ERR_NOTFOUND, send_fwd(1, 0, &bad));
    errors += expect_error(w2, MOE_ERR_NOTFOUND,
                 send_msg(w2, T_FWD, 0, 2, false, b1.n, b1.ids, b1.rows, b1.x, D));
    expect_quiet(SV.wk[0], "forward with only rejected forwards from worker 1");
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    errors += expect_error(w2, MOE_ERR_NOTFOUND,
                 send_msg(w2, T_BWD, 0, 2, false, b1.n, b1.ids, b1.rows, b1.dy, D));
    backwards_ok(0, &b0, &b1);
    expect_params(&r);
    zmq_close(w2);
    ref_free(&r);
    finish_expect(1, errors);
}
END_TEST

/* Only the peer connected as "moe-worker-R" may fill rank R's slot: a
 * DEALER "intruder" (and worker 0 claiming rank 1) is refused, before and
 * after the real worker's message, in forward and in backward. */
START_TEST(expert_server_wrong_identity)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1, junk;
    std_batches(&b0, &b1, 90);
    wb_set(&junk, 2, own_ids, b0.rows, 91); /* worker 0's layout, other data */
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    void *in = dealer("intruder");
    int errors = 0;
    errors += expect_error(in, MOE_ERR_STATE,
                 send_msg(in, T_FWD, 0, 0, false, junk.n, junk.ids, junk.rows, junk.x, D));
    uint64_t q0 = send_fwd(0, 0, &b0);
    sync_worker(0);
    errors += expect_error(in, MOE_ERR_STATE,
                 send_msg(in, T_FWD, 0, 0, false, junk.n, junk.ids, junk.rows, junk.x, D));
    /* rank 1's slot is free: still refused */
    errors += expect_error(in, MOE_ERR_STATE,
                 send_msg(in, T_FWD, 0, 1, false, b1.n, b1.ids, b1.rows, b1.x, D));
    errors += expect_error(SV.wk[0], MOE_ERR_STATE,
                 send_msg(SV.wk[0], T_FWD, 0, 1, false, b1.n, b1.ids, b1.rows, b1.x, D));
    expect_quiet(SV.wk[0], "forward with only impostors for rank 1");
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    errors += expect_error(in, MOE_ERR_STATE,
                 send_msg(in, T_BWD, 0, 1, false, b1.n, b1.ids, b1.rows, b1.dy, D));
    q0 = send_bwd(0, 0, &b0);
    sync_worker(0);
    errors += expect_error(in, MOE_ERR_STATE,
                 send_msg(in, T_BWD, 0, 1, false, b1.n, b1.ids, b1.rows, b1.dy, D));
    errors += expect_error(SV.wk[0], MOE_ERR_STATE,
                 send_msg(SV.wk[0], T_BWD, 0, 1, false, b1.n, b1.ids, b1.rows, b1.dy, D));
    expect_quiet(SV.wk[0], "backward with only impostors for rank 1");
    q1 = send_bwd(1, 0, &b1);
    /* worker 0's reply comes after the error replies to its own impostor */
    expect_tensor(SV.wk[0], T_BWD_R, 0, q0, &b0, b0.dx);
    expect_tensor(SV.wk[1], T_BWD_R, 0, q1, &b1, b1.dx);
    expect_params(&r);
    zmq_close(in);
    ref_free(&r);
    finish_expect(1, errors);
}
END_TEST

/* A second forward of the same step from a worker (other data) is refused
 * and the first one is what counts; also a forward in the backward phase. */
START_TEST(expert_server_duplicate_forward)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1, again;
    std_batches(&b0, &b1, 100);
    wb_set(&again, 2, own_ids, b0.rows, 101);
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    int errors = 0;
    uint64_t q0 = send_fwd(0, 0, &b0);
    errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_fwd(0, 0, &again));
    expect_quiet(SV.wk[0], "forward after a duplicate");
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_fwd(1, 0, &b1));
    backwards_ok(0, &b0, &b1);
    expect_params(&r);
    ref_free(&r);
    finish_expect(1, errors);
}
END_TEST

/* Worker 0 sends its backward twice before worker 1 (the second with other
 * gradients): refused; the first one is what counts. */
START_TEST(expert_server_duplicate_backward)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1, again;
    std_batches(&b0, &b1, 110);
    wb_set(&again, 2, own_ids, b0.rows, 111);
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    int errors = 0;
    forwards_ok(0, &b0, &b1);
    uint64_t q0 = send_bwd(0, 0, &b0);
    sync_worker(0);
    errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_bwd(0, 0, &again));
    expect_quiet(SV.wk[0], "backward after a duplicate");
    uint64_t q1 = send_bwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_BWD_R, 0, q0, &b0, b0.dx);
    expect_tensor(SV.wk[1], T_BWD_R, 0, q1, &b1, b1.dx);
    expect_params(&r);
    /* the step is over: a late backward of it is stale */
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_bwd(1, 0, &b1));
    step_ok(&r, 112);
    expect_params(&r);
    ref_free(&r);
    finish_expect(2, errors);
}
END_TEST

/* Backwards before every worker's forward is in are refused. */
START_TEST(expert_server_backward_before_forwards)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1;
    std_batches(&b0, &b1, 120);
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    int errors = 0;
    errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_bwd(0, 0, &b0));
    uint64_t q0 = send_fwd(0, 0, &b0);
    errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_bwd(0, 0, &b0));
    errors += expect_error(SV.wk[1], MOE_ERR_STATE, send_bwd(1, 0, &b1));
    expect_quiet(SV.wk[0], "forward with worker 1's backward only");
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    backwards_ok(0, &b0, &b1);
    expect_params(&r);
    ref_free(&r);
    finish_expect(1, errors);
}
END_TEST

/* A backward whose experts or rows differ from its own forward's. */
START_TEST(expert_server_backward_layout_mismatch)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1, bad;
    std_batches(&b0, &b1, 130); /* worker 0: rows {3, 2} of experts {0, 1} */
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    forwards_ok(0, &b0, &b1);
    int errors = 0;
    const int32_t i0[] = {0}, i1[] = {1};
    const uint32_t r31[] = {3, 1}, r23[] = {2, 3}, r5[] = {5}, r0[] = {0, 0};
    wb_set(&bad, 2, own_ids, r31, 131); /* fewer rows */
    errors += expect_error(SV.wk[0], MOE_ERR_SHAPE, send_bwd(0, 0, &bad));
    wb_set(&bad, 2, own_ids, r23, 132); /* same total, other split */
    errors += expect_error(SV.wk[0], MOE_ERR_SHAPE, send_bwd(0, 0, &bad));
    wb_set(&bad, 1, i0, r5, 133); /* same total, one expert */
    errors += expect_error(SV.wk[0], MOE_ERR_SHAPE, send_bwd(0, 0, &bad));
    wb_set(&bad, 1, i1, r5, 134);
    errors += expect_error(SV.wk[0], MOE_ERR_SHAPE, send_bwd(0, 0, &bad));
    wb_set(&bad, 0, NULL, NULL, 135); /* nothing */
    errors += expect_error(SV.wk[1], MOE_ERR_SHAPE, send_bwd(1, 0, &bad));
    wb_set(&bad, 2, own_ids, r0, 136); /* the experts, no rows */
    errors += expect_error(SV.wk[1], MOE_ERR_SHAPE, send_bwd(1, 0, &bad));
    backwards_ok(0, &b0, &b1);
    expect_params(&r);
    ref_free(&r);
    finish_expect(1, errors);
}
END_TEST

/* EXPERT_FETCH is served at any point of a step (since e9503f2): the
 * parameters only change when the step's last backward is in, so in the
 * middle of step s it returns those after s steps, with header.step = s,
 * and the barrier of the step is not disturbed. */
START_TEST(expert_server_fetch_mid_step)
{
    srv_start(30000);
    struct ref r, r0; /* r0 stays at step 0 */
    ref_init(&r);
    ref_init(&r0);
    static struct wb b0, b1;
    std_batches(&b0, &b1, 140);
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    const uint32_t zeros[N_OWN] = {0, 0};
    expect_params(&r0);
    uint64_t q0 = send_fwd(0, 0, &b0);
    sync_worker(0); /* the forward is in before the fetch */
    expect_params(&r0);
    expect_quiet(SV.wk[0], "forward after a fetch");
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    expect_params(&r0); /* between forward and backward */
    q0 = send_bwd(0, 0, &b0);
    sync_worker(0);
    expect_params(&r0); /* with one backward in */
    /* a worker socket asking, too, with its backward still to come */
    uint64_t q = send_msg(SV.wk[1], T_FETCH, 0, 1, false, N_OWN, own_ids, zeros, NULL, 0);
    struct moe_wire_msg m;
    recv_one(SV.wk[1], &m);
    ck_assert_int_eq(m.hdr->type, T_FETCH_R);
    ck_assert_uint_eq(m.hdr->request_id, q);
    ck_assert_uint_eq(m.hdr->step, 0);
    ck_assert(same_as_shard(m.data, r0.sh));
    moe_wire_msg_free(&m);
    expect_quiet(SV.wk[0], "backward after a fetch");
    q1 = send_bwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_BWD_R, 0, q0, &b0, b0.dx);
    expect_tensor(SV.wk[1], T_BWD_R, 0, q1, &b1, b1.dx);
    expect_params(&r); /* step 1 */
    ck_assert(r.t == 1 && r0.t == 0);
    ref_free(&r);
    ref_free(&r0);
    finish_expect(1, 0);
}
END_TEST

/* Messages the codec or the dispatcher refuses: garbage bytes, a type an
 * expert server does not serve, the wrong row width, too many frames. */
START_TEST(expert_server_malformed)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1;
    std_batches(&b0, &b1, 150);
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    int errors = 0;
    uint64_t q0 = send_fwd(0, 0, &b0);
    sync_worker(0);
    ck_assert_int_eq(zmq_send(SV.wk[1], "\xff\xff\xff", 3, 0), 3);
    errors += expect_error(SV.wk[1], MOE_ERR_FORMAT, 0);
    errors += expect_error(SV.wk[1], MOE_ERR_FORMAT,
                 send_msg(SV.wk[1], MOE__MSG_TYPE__MSG_HEARTBEAT, 0, 1, false, 0, NULL, NULL, NULL,
                          0));
    errors += expect_error(SV.wk[1], MOE_ERR_FORMAT,
                 send_msg(SV.wk[1], T_FWD_R, 0, 1, false, b1.n, b1.ids, b1.rows, b1.x, D));
    const uint32_t r3[] = {1, 1};
    const float x6[6] = {1, 2, 3, 4, 5, 6};
    errors += expect_error(SV.wk[1], MOE_ERR_SHAPE,
                 send_msg(SV.wk[1], T_FWD, 0, 1, false, 2, own_ids, r3, x6, 3));
    ck_assert_int_eq(zmq_send(SV.wk[1], "a", 1, ZMQ_SNDMORE), 1);
    ck_assert_int_eq(zmq_send(SV.wk[1], "b", 1, ZMQ_SNDMORE), 1);
    ck_assert_int_eq(zmq_send(SV.wk[1], "c", 1, 0), 1);
    errors += expect_error(SV.wk[1], MOE_ERR_FORMAT, 0);
    expect_quiet(SV.wk[0], "forward with only malformed messages from worker 1");
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    backwards_ok(0, &b0, &b1);
    expect_params(&r);
    ref_free(&r);
    finish_expect(1, errors);
}
END_TEST

/* ------------------------------------------------------------ tests: lifecycle */

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

START_TEST(expert_server_stop_idle)
{
    srv_start(30000);
    sleep_ms(100);
    double t0 = now_sec();
    srv_join(); /* asserts expert_server_run returned 0 */
    ck_assert_double_lt(now_sec() - t0, 2.0);
    ck_assert_int_eq(expert_server_step(SV.s), 0);
    ck_assert_int_eq(expert_server_errors(SV.s), 0);
    srv_finish();
}
END_TEST

/* A stop in the middle of a step lets the step finish, then returns 0. */
START_TEST(expert_server_stop_mid_step)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    static struct wb b0, b1;
    std_batches(&b0, &b1, 160);
    struct wb *b[W] = {&b0, &b1};
    ref_step(&r, b, rank_order, true);
    uint64_t q0 = send_fwd(0, 0, &b0);
    sync_worker(0);
    expect_quiet(SV.wk[0], "forward before worker 1's forward");
    SV.stop = 1;
    sleep_ms(500);
    ck_assert_msg(!atomic_load(&SV.done), "expert_server_run returned in the middle of a step");
    uint64_t q1 = send_fwd(1, 0, &b1);
    expect_tensor(SV.wk[0], T_FWD_R, 0, q0, &b0, b0.y);
    expect_tensor(SV.wk[1], T_FWD_R, 0, q1, &b1, b1.y);
    sleep_ms(300);
    ck_assert_msg(!atomic_load(&SV.done), "expert_server_run returned between forward and backward");
    backwards_ok(0, &b0, &b1);
    srv_join();
    ck_assert_int_eq(expert_server_step(SV.s), 1);
    ck_assert_int_eq(expert_server_errors(SV.s), 0);
    ref_free(&r);
    srv_finish();
}
END_TEST

/* ... but gives up on a step that does not complete within timeout_ms. */
START_TEST(expert_server_stop_mid_step_timeout)
{
    srv_start(300);
    static struct wb b0, b1;
    std_batches(&b0, &b1, 170);
    send_fwd(0, 0, &b0);
    sync_worker(0);
    double t0 = now_sec();
    srv_join();
    double dt = now_sec() - t0;
    ck_assert_msg(dt > 0.25 && dt < 3.0, "stopped after %.3f s with a 0.3 s timeout", dt);
    ck_assert_int_eq(expert_server_step(SV.s), 0);
    srv_finish();
}
END_TEST

/* The shard file after a step: 8 tensors per expert (4 parameters and
 * their factored-Adam state) equal to the reference, and the step. */
START_TEST(expert_server_shard_file)
{
    srv_start(30000);
    struct ref r;
    ref_init(&r);
    step_ok(&r, 180);
    expect_params(&r);
    srv_join();
    ck_assert_int_eq(expert_server_step(SV.s), 1);
    char dir[256], path[512], err[512] = "";
    tu_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/shard.safetensors", dir);
    ck_assert_msg(expert_server_write_shard(SV.s, path, err, sizeof err) == 0, "write: %s", err);
    moe_safetensors_t *st = moe_safetensors_open(path, err, sizeof err);
    ck_assert_msg(st != NULL, "open: %s", err);
    ck_assert_uint_eq(moe_safetensors_count(st), (size_t)N_OWN * EXPERT_PARTS * 2);
    ck_assert_ptr_nonnull(moe_safetensors_meta(st, "step"));
    ck_assert_str_eq(moe_safetensors_meta(st, "step"), "1");
    ck_assert_ptr_nonnull(moe_safetensors_meta(st, "format"));
    ck_assert_str_eq(moe_safetensors_meta(st, "format"), "moe-shard-1");
    ck_assert_ptr_nonnull(moe_safetensors_meta(st, "checksum"));
    for (int i = 0; i < N_OWN; i++) {
        const float *p = expert_shard_params(r.sh, i), *o = expert_shard_opt_state(r.sh, i);
        for (int part = 0; part < EXPERT_PARTS; part++) {
            const char *suffix;
            int nd;
            int64_t shape[2];
            size_t nst;
            expert_shard_part(part, D, H, &suffix, &nd, shape, &nst);
            size_t numel = (size_t)shape[0] * (nd == 2 ? (size_t)shape[1] : 1);
            float buf[64];
            ck_assert_uint_le(numel, 64);
            ck_assert_uint_le(nst, 64);
            char name[96];
            snprintf(name, sizeof name, "moe.experts.%d.%s", own_ids[i], suffix);
            ck_assert_msg(moe_safetensors_read_f32(st, name, nd, shape, buf, err, sizeof err) == 0,
                          "%s", err);
            ck_assert_msg(memcmp(buf, p, sizeof(float) * numel) == 0, "%s differs", name);
            snprintf(name, sizeof name, "moe.experts.%d.%s.fadam", own_ids[i], suffix);
            int64_t sshape[1] = {(int64_t)nst};
            ck_assert_msg(moe_safetensors_read_f32(st, name, 1, sshape, buf, err, sizeof err) == 0,
                          "%s", err);
            ck_assert_msg(memcmp(buf, o, sizeof(float) * nst) == 0, "%s differs", name);
            p += numel;
            o += nst;
        }
    }
    moe_safetensors_close(&st);
    tu_rmtree(dir);
    ref_free(&r);
    srv_finish();
}
END_TEST

/* The translation model's two MoE layers (issue 19): this server holds
 * encoder experts 0, 2 and decoder experts 4, 6. A step is the forwards
 * of layer 0, then of layer 1, then the backwards of layer 1, then of
 * layer 0; a call of another layer is refused without a change (the
 * layer the step waits for, a layer the model lacks, an expert of the
 * other layer), and every reply of
 * two steps equals one reference shard per layer (as in-process), so the
 * shard's per-layer caches keep the encoder's forward through the
 * decoder's. */
START_TEST(expert_server_two_layers)
{
    srv_start_model(30000, true);
    static const int32_t enc[N_OWN] = {0, 2}, dec[N_OWN] = {4, 6};
    struct ref r[2];
    ref_init_ids(&r[0], enc);
    ref_init_ids(&r[1], dec);
    static struct wb b[2][W];
    int errors = 0;
    for (int step = 0; step < 2; step++) {
        const uint32_t r0[] = {3, 2}, r1[] = {2, 4};
        for (int l = 0; l < 2; l++) {
            wb_set(&b[l][0], 2, l ? dec : enc, r0, 40 + 10 * (uint32_t)step + (uint32_t)l);
            wb_set(&b[l][1], 2, l ? dec : enc, r1, 60 + 10 * (uint32_t)step + (uint32_t)l);
            struct wb *bl[W] = {&b[l][0], &b[l][1]};
            ref_step(&r[l], bl, rank_order, true);
        }
        if (step == 0) { /* waits for layer 0's forwards */
            send_layer = 1;
            errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_fwd(0, 0, &b[1][0]));
            send_layer = 2;
            errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_fwd(0, 0, &b[0][0]));
            send_layer = 0; /* a decoder expert in the encoder's call */
            errors += expect_error(SV.wk[0], MOE_ERR_NOTFOUND, send_fwd(0, 0, &b[1][0]));
        }
        send_layer = 0;
        forwards_ok((uint64_t)step, &b[0][0], &b[0][1]);
        send_layer = 1;
        forwards_ok((uint64_t)step, &b[1][0], &b[1][1]);
        if (step == 0) { /* waits for layer 1's backwards */
            send_layer = 0;
            errors += expect_error(SV.wk[0], MOE_ERR_STATE, send_bwd(0, 0, &b[0][0]));
        }
        send_layer = 1;
        backwards_ok((uint64_t)step, &b[1][0], &b[1][1]);
        ck_assert_int_eq(expert_server_step(SV.s), step); /* not before layer 0's */
        send_layer = 0;
        backwards_ok((uint64_t)step, &b[0][0], &b[0][1]);
    }
    ref_free(&r[0]);
    ref_free(&r[1]);
    finish_expect(2, errors);
}
END_TEST

Suite *test_expert_server_suite(void)
{
    Suite *s = suite_create("expert_server");
    TCase *ts = tcase_create("step");
    tcase_set_timeout(ts, 60);
    tcase_add_test(ts, expert_server_full_steps);
    tcase_add_test(ts, expert_server_rank_order);
    tcase_add_loop_test(ts, expert_server_zero_rows, 0, 3);
    tcase_add_test(ts, expert_server_eval_forward);
    tcase_add_test(ts, expert_server_two_layers);
    suite_add_tcase(s, ts);
    TCase *tr = tcase_create("rejected");
    tcase_set_timeout(tr, 60);
    tcase_add_test(tr, expert_server_wrong_step);
    tcase_add_test(tr, expert_server_unknown_expert_and_rank);
    tcase_add_test(tr, expert_server_wrong_identity);
    tcase_add_test(tr, expert_server_duplicate_forward);
    tcase_add_test(tr, expert_server_duplicate_backward);
    tcase_add_test(tr, expert_server_backward_before_forwards);
    tcase_add_test(tr, expert_server_backward_layout_mismatch);
    tcase_add_test(tr, expert_server_fetch_mid_step);
    tcase_add_test(tr, expert_server_malformed);
    suite_add_tcase(s, tr);
    TCase *tl = tcase_create("lifecycle");
    tcase_set_timeout(tl, 30);
    tcase_add_test(tl, expert_server_stop_idle);
    tcase_add_test(tl, expert_server_stop_mid_step);
    tcase_add_test(tl, expert_server_stop_mid_step_timeout);
    tcase_add_test(tl, expert_server_shard_file);
    suite_add_tcase(s, tl);
    return s;
}
