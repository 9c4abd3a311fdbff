/* Unit tests for a hierarchical MoE's groups on an expert server (issue 17,
 * point 3; server/expert/expert_server_group.c): a real server (thread,
 * tcp://127.0.0.1, a free port) of a model of 2 groups of 2 experts (D 4,
 * H 5, k 1 within a group), server 0 of two, so it holds group 0 (experts 0
 * and 1); two workers connect as "moe-worker-0" and "moe-worker-1".
 *
 * Two steps of GROUP_FORWARD / GROUP_BACKWARD from both workers are
 * compared bitwise with the common code run locally (hmoe_group.h with the
 * two workers' rows as two parts, an expert shard of the same ids, seed and
 * optimizer): group outputs, statistics, input gradients, primary-gate
 * gradients, and, fetched back with EXPERT_FETCH + MOE_FLAG_GROUPS, the
 * secondary gate and its factored-Adam state; an evaluation forward between
 * steps equals the common code's (and one mid-step is refused). The
 * malformed-group catalogue:
 * each message gets its exact error code and changes nothing (the next
 * valid step still matches the reference; the error count is exact). Every
 * wait is bounded (5 s). */
#include <arpa/inet.h>
#include <check.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "expert_server.h"
#include "expert_shard.h"
#include "hmoe_group.h"
#include "moe_config.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_optim.h"
#include "moe_options.h"
#include "moe_wire.h"
#include "test_util.h"

Suite *test_expert_server_groups_suite(void);

enum { D = 4, H = 5, B = 2, A = 2, K = 1, W = 2, MAXR = 8, WAIT_MS = 5000 };
#define SEED 9

static struct {
    struct moe_options cfg;
    expert_server_t *s;
    pthread_t th;
    volatile sig_atomic_t stop;
    int rc;
    char ep[64];
    void *ctx, *wk[W];
    uint64_t req;
} SV;

static void *srv_thread(void *arg)
{
    (void)arg;
    SV.rc = expert_server_run(SV.s, &SV.stop);
    return NULL;
}

/* The server's configuration in SV.cfg, and the server made of it (bound
 * to a free port, tried again if another process took it): NULL with err
 * when it refuses to start. */
static expert_server_t *srv_new(char *err, size_t errlen)
{
    memset(&SV, 0, sizeof SV);
    moe_log_set_level(MOE_LOG_ERROR);
    ck_assert_int_eq(moe_config_defaults(moe_options_table, moe_options_count, &SV.cfg, err,
                                         errlen), 0);
    SV.cfg.d_model = D;
    SV.cfg.d_hidden = H;
    SV.cfg.n_experts = A * B;
    snprintf(SV.cfg.moe, sizeof SV.cfg.moe, "hierarchical");
    SV.cfg.groups = A;
    SV.cfg.experts_per_group = B;
    SV.cfg.k_primary = 1;
    SV.cfg.k = K;
    SV.cfg.seed = SEED;
    SV.cfg.lr = 0.01;
    SV.cfg.warmup = 3;
    SV.cfg.timeout_ms = 30000;
    SV.cfg.insecure = true;
    snprintf(SV.cfg.workers, sizeof SV.cfg.workers, "tcp://127.0.0.1:1,tcp://127.0.0.1:2");
    expert_server_t *s = NULL;
    for (int attempt = 0; attempt < 20 && !s; attempt++) {
        snprintf(SV.ep, sizeof SV.ep, "tcp://127.0.0.1:%d", tu_free_port());
        snprintf(SV.cfg.servers, sizeof SV.cfg.servers, "%s,tcp://127.0.0.1:3", SV.ep);
        err[0] = 0;
        s = expert_server_new(&SV.cfg, err, errlen);
        if (!s && strstr(err, "needs about"))
            break;
    }
    return s;
}

static void srv_start(void)
{
    char err[512] = "";
    SV.s = srv_new(err, sizeof err);
    ck_assert_msg(SV.s != NULL, "expert_server_new: %s", err);
    ck_assert_int_eq(pthread_create(&SV.th, NULL, srv_thread, NULL), 0);
    SV.ctx = zmq_ctx_new();
    for (int r = 0; r < W; r++) {
        char id[32];
        snprintf(id, sizeof id, "moe-worker-%d", r);
        SV.wk[r] = zmq_socket(SV.ctx, ZMQ_DEALER);
        int linger = 0;
        zmq_setsockopt(SV.wk[r], ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(SV.wk[r], ZMQ_ROUTING_ID, id, strlen(id));
        ck_assert_int_eq(zmq_connect(SV.wk[r], SV.ep), 0);
    }
}

static void srv_finish(int64_t steps, int64_t errors)
{
    SV.stop = 1;
    ck_assert_int_eq(pthread_join(SV.th, NULL), 0);
    ck_assert_int_eq(SV.rc, 0);
    ck_assert_int_eq(expert_server_step(SV.s), steps);
    ck_assert_int_eq(expert_server_errors(SV.s), errors);
    for (int r = 0; r < W; r++)
        zmq_close(SV.wk[r]);
    zmq_ctx_term(SV.ctx);
    expert_server_destroy(&SV.s);
}

/* ------------------------------------------------------------ messages */

/* One worker's rows of group 0 for a step, and what comes back. */
struct gb {
    uint32_t rows, index[MAXR];
    float x[MAXR * D], gp[MAXR], dy[MAXR * D], dstats[2 * B];
    float y[MAXR * D], stats[3 * B], dx[MAXR * D], dgp[MAXR];
};

static const int32_t gid0[1] = {0};

static void gb_fill(struct gb *b, uint32_t rows, uint32_t stream)
{
    memset(b, 0, sizeof *b);
    b->rows = rows;
    tu_fill(b->x, rows * D, stream, 1.0f);
    tu_fill(b->dy, rows * D, stream + 1, 1.0f);
    tu_fill(b->dstats, 2 * B, stream + 2, 1.0f);
    for (uint32_t r = 0; r < rows; r++) {
        b->index[r] = 2 * r + stream % 3;
        b->gp[r] = 0.25f + 0.5f * (float)r / (float)rows;
    }
}

/* What a message may carry beyond a well-formed one (NULL: the batch's). */
struct mut {
    Moe__MsgType type;
    uint32_t version;
    int32_t group;
    const uint32_t *index;
    size_t n_index;
    const float *gate, *stats, *data;
    size_t n_stats;
    bool eval;
};

static uint64_t send_group(int w, uint64_t step, bool backward, const struct gb *b,
                           const struct mut *mu)
{
    const int32_t id[1] = {mu && mu->group ? mu->group : 0};
    struct moe_wire_out o = {0};
    o.type = mu && mu->type ? mu->type
                            : backward ? MOE__MSG_TYPE__MSG_GROUP_BACKWARD
                                       : MOE__MSG_TYPE__MSG_GROUP_FORWARD;
    o.step = step;
    o.rank = (uint32_t)w;
    o.request_id = ++SV.req;
    o.expert_ids = id;
    o.row_counts = &b->rows;
    o.n_experts = 1;
    o.dtype = MOE__DTYPE__DTYPE_F32;
    o.width = D;
    o.row0 = (uint64_t)(100 * w);
    o.eval = mu && mu->eval;
    if (!backward) {
        o.row_index = mu && mu->index ? mu->index : b->index;
        o.n_row_index = mu && mu->index ? mu->n_index : b->rows;
        o.row_gate = mu && mu->gate ? mu->gate : b->gp;
        o.n_row_gate = b->rows;
    } else {
        o.group_stats = mu && mu->stats ? mu->stats : b->dstats;
        o.n_group_stats = mu && mu->stats ? mu->n_stats : 2 * B;
    }
    const float *data = mu && mu->data ? mu->data : backward ? b->dy : b->x;
    char err[256] = "";
    ck_assert_msg(moe_wire_send(SV.wk[w], NULL, 0, &o, data, b->rows, err, sizeof err) == 0,
                  "send: %s", err);
    return o.request_id;
}

static void recv_one(int w, struct moe_wire_msg *m)
{
    zmq_pollitem_t it = {SV.wk[w], 0, ZMQ_POLLIN, 0};
    ck_assert_msg(zmq_poll(&it, 1, WAIT_MS) == 1, "no reply within %d ms", WAIT_MS);
    const struct moe_wire_limits lim = {(size_t)1 << 24, 0, 64, (uint64_t)1 << 20};
    memset(m, 0, sizeof *m);
    char err[256] = "";
    ck_assert_msg(moe_wire_recv(SV.wk[w], false, ZMQ_DONTWAIT, &lim, m, err, sizeof err) == 0,
                  "recv: %s", err);
}

static int expect_error_at(int line, int w, int code, uint64_t req)
{
    struct moe_wire_msg m;
    recv_one(w, &m);
    ck_assert_msg(m.hdr->type == MOE__MSG_TYPE__MSG_ERROR && m.hdr->error_code == code,
                  "line %d: expected error %d, got type %d code %d: %s", line, code,
                  m.hdr->type, m.hdr->error_code, m.hdr->error_text ? m.hdr->error_text : "");
    ck_assert_uint_eq(m.hdr->request_id, req);
    ck_assert_uint_gt(strlen(m.hdr->error_text), 0);
    moe_wire_msg_free(&m);
    return 1;
}
#define expect_error(w, code, req) expect_error_at(__LINE__, (w), (code), (req))

/* The reply to a group message: its payload and extras into b. */
static void expect_reply(int w, uint64_t req, bool backward, struct gb *b)
{
    struct moe_wire_msg m;
    recv_one(w, &m);
    const Moe__Header *h = m.hdr;
    ck_assert_msg(h->type == (backward ? MOE__MSG_TYPE__MSG_GROUP_BACKWARD_REPLY
                                       : MOE__MSG_TYPE__MSG_GROUP_FORWARD_REPLY),
                  "type %d: %s", h->type, h->error_text ? h->error_text : "");
    ck_assert_uint_eq(h->request_id, req);
    ck_assert_uint_eq(m.rows, b->rows);
    memcpy(backward ? b->dx : b->y, m.data, sizeof(float) * b->rows * D);
    if (backward) {
        ck_assert_uint_eq(h->n_row_gate, b->rows);
        memcpy(b->dgp, h->row_gate, sizeof(float) * b->rows);
    } else {
        ck_assert_uint_eq(h->n_group_stats, 3 * B);
        memcpy(b->stats, h->group_stats, sizeof(float) * 3 * B);
    }
    moe_wire_msg_free(&m);
}

/* ------------------------------------------------------------ the reference */

struct ref {
    expert_shard_t *sh;
    hmoe_groups_t *g;
};

static void ref_init(struct ref *r)
{
    const struct moe_fadam_opts fo = {SV.cfg.expert_beta2, SV.cfg.expert_decay_pow,
                                      SV.cfg.expert_eps, 1e-30, SV.cfg.expert_clip,
                                      SV.cfg.expert_relative_step, 1e-3};
    const int32_t ids[B] = {0, 1};
    r->sh = expert_shard_new(D, H, B, ids, SEED, &fo);
    r->g = hmoe_groups_new(D, B, K, 1, gid0, SEED, &fo);
    ck_assert_ptr_nonnull(r->sh);
    ck_assert_ptr_nonnull(r->g);
}

/* Step `step` of both workers' batches through the common code; the
 * results must equal what the server answered, bit for bit. */
static void ref_step(struct ref *r, int64_t step, struct gb *const *b)
{
    struct hmoe_part p[W];
    static struct gb want[W];
    for (int w = 0; w < W; w++) {
        want[w] = *b[w];
        p[w] = (struct hmoe_part){.n = 1, .ids = gid0, .rows = &b[w]->rows, .row0 = 100 * w,
                                  .row_index = b[w]->index, .gp = b[w]->gp, .x = b[w]->x,
                                  .y = want[w].y, .stats = want[w].stats, .dy = b[w]->dy,
                                  .dstats = b[w]->dstats, .dx = want[w].dx, .dgp = want[w].dgp};
    }
    const struct hmoe_experts ex = hmoe_experts_of_shard(r->sh);
    ck_assert_int_eq(hmoe_groups_forward(r->g, &ex, step, true, W, p), 0);
    const struct moe_lr_schedule sc = {SV.cfg.lr, SV.cfg.warmup};
    ck_assert_int_eq(hmoe_groups_backward(r->g, &ex, W, p, step + 1, moe_lr_at(&sc, step + 1)), 0);
    for (int w = 0; w < W; w++) {
        ck_assert_int_eq(memcmp(want[w].y, b[w]->y, sizeof(float) * b[w]->rows * D), 0);
        ck_assert_int_eq(memcmp(want[w].stats, b[w]->stats, sizeof want[w].stats), 0);
        ck_assert_int_eq(memcmp(want[w].dx, b[w]->dx, sizeof(float) * b[w]->rows * D), 0);
        ck_assert_int_eq(memcmp(want[w].dgp, b[w]->dgp, sizeof(float) * b[w]->rows), 0);
    }
}

/* The server's gate of group 0 and its state, fetched, equal the
 * reference's. */
static void expect_gate(struct ref *r, int64_t step)
{
    const size_t P = hmoe_groups_param_count(D, B), S = hmoe_groups_state_count(D, B);
    const uint32_t zero[1] = {0};
    struct moe_wire_out o = {0};
    o.type = MOE__MSG_TYPE__MSG_EXPERT_FETCH;
    o.request_id = ++SV.req;
    o.expert_ids = gid0;
    o.row_counts = zero;
    o.n_experts = 1;
    o.flags = MOE_FLAG_GROUPS;
    char err[256];
    ck_assert_int_eq(moe_wire_send(SV.wk[0], NULL, 0, &o, NULL, 0, err, sizeof err), 0);
    struct moe_wire_msg m;
    recv_one(0, &m);
    ck_assert_int_eq(m.hdr->type, MOE__MSG_TYPE__MSG_EXPERT_FETCH_REPLY);
    ck_assert_int_eq((int64_t)m.hdr->step, step);
    ck_assert_uint_eq(m.hdr->width, P + S);
    ck_assert_int_eq(memcmp(m.data, hmoe_groups_params(r->g, 0), sizeof(float) * P), 0);
    ck_assert_int_eq(memcmp(m.data + P, hmoe_groups_opt_state(r->g, 0), sizeof(float) * S), 0);
    /* the gate moved: it is no longer the zeros it starts from */
    bool moved = false;
    for (size_t i = 0; i < P; i++)
        moved = moved || m.data[i] != 0.0f;
    ck_assert(moved);
    moe_wire_msg_free(&m);
}

static void step_ok(struct ref *r, int64_t step, struct gb *b0, struct gb *b1)
{
    struct gb *b[W] = {b0, b1};
    uint64_t q[W];
    for (int w = 0; w < W; w++)
        q[w] = send_group(w, (uint64_t)step, false, b[w], NULL);
    for (int w = 0; w < W; w++)
        expect_reply(w, q[w], false, b[w]);
    for (int w = 0; w < W; w++)
        q[w] = send_group(w, (uint64_t)step, true, b[w], NULL);
    for (int w = 0; w < W; w++)
        expect_reply(w, q[w], true, b[w]);
    ref_step(r, step, b);
}

/* ------------------------------------------------------------ tests */

START_TEST(groups_steps_bitwise)
{
    srv_start();
    struct ref r;
    ref_init(&r);
    static struct gb b0, b1;
    for (int64_t s = 0; s < 2; s++) {
        gb_fill(&b0, 5, 300u + 10u * (uint32_t)s);
        gb_fill(&b1, 3, 305u + 10u * (uint32_t)s);
        step_ok(&r, s, &b0, &b1);
    }
    expect_gate(&r, 2);
    /* an evaluation forward between steps: answered at once, the common
     * code's deterministic gates and the trained weights, nothing kept */
    static struct gb e, want;
    gb_fill(&e, 7, 330);
    want = e;
    const struct mut eval = {.eval = true};
    expect_reply(0, send_group(0, 2, false, &e, &eval), false, &e);
    struct hmoe_part p = {.n = 1, .ids = gid0, .rows = &want.rows, .row0 = 0,
                          .row_index = want.index, .gp = want.gp, .x = want.x, .y = want.y,
                          .stats = want.stats};
    const struct hmoe_experts ex = hmoe_experts_of_shard(r.sh);
    ck_assert_int_eq(hmoe_groups_forward(r.g, &ex, 2, false, 1, &p), 0);
    ck_assert_int_eq(memcmp(want.y, e.y, sizeof(float) * e.rows * D), 0);
    ck_assert_int_eq(memcmp(want.stats, e.stats, sizeof e.stats), 0);
    /* the next step still matches */
    gb_fill(&b0, 2, 340);
    gb_fill(&b1, 4, 345);
    step_ok(&r, 2, &b0, &b1);
    expert_shard_destroy(&r.sh);
    hmoe_groups_destroy(&r.g);
    srv_finish(3, 0);
}
END_TEST

START_TEST(groups_malformed)
{
    srv_start();
    struct ref r;
    ref_init(&r);
    static struct gb b0, b1;
    gb_fill(&b0, 4, 400);
    gb_fill(&b1, 6, 410);
    int errors = 0;
    /* forwards: each refused, nothing kept */
    const struct mut not_here = {.group = 1};
    errors += expect_error(1, MOE_ERR_NOTFOUND, send_group(1, 0, false, &b1, &not_here));
    const uint32_t idx3[3] = {0, 1, 2};
    const struct mut few_idx = {.index = idx3, .n_index = 3};
    errors += expect_error(1, MOE_ERR_SHAPE, send_group(1, 0, false, &b1, &few_idx));
    uint32_t big[MAXR];
    memcpy(big, b1.index, sizeof big);
    big[2] = 0x80000000u;
    const struct mut big_idx = {.index = big, .n_index = b1.rows};
    errors += expect_error(1, MOE_ERR_RANGE, send_group(1, 0, false, &b1, &big_idx));
    float gate[MAXR];
    memcpy(gate, b1.gp, sizeof gate);
    gate[1] = 1.5f;
    const struct mut bad_gate = {.gate = gate};
    errors += expect_error(1, MOE_ERR_RANGE, send_group(1, 0, false, &b1, &bad_gate));
    gate[1] = NAN;
    errors += expect_error(1, MOE_ERR_RANGE, send_group(1, 0, false, &b1, &bad_gate));
    float x[MAXR * D];
    memcpy(x, b1.x, sizeof x);
    x[5] = INFINITY;
    const struct mut bad_x = {.data = x};
    errors += expect_error(1, MOE_ERR_RANGE, send_group(1, 0, false, &b1, &bad_x));
    const struct mut as_expert = {.type = MOE__MSG_TYPE__MSG_EXPERT_FORWARD};
    errors += expect_error(1, MOE_ERR_STATE, send_group(1, 0, false, &b1, &as_expert));
    errors += expect_error(1, MOE_ERR_STATE, send_group(1, 0, true, &b1, NULL));
    /* the step goes on: worker 0's forward, then worker 1's */
    uint64_t q0 = send_group(0, 0, false, &b0, NULL), q1 = send_group(1, 0, false, &b1, NULL);
    expect_reply(0, q0, false, &b0);
    expect_reply(1, q1, false, &b1);
    /* backwards: refused, then the right ones */
    const struct mut few_stats = {.stats = b1.dstats, .n_stats = B};
    errors += expect_error(1, MOE_ERR_SHAPE, send_group(1, 0, true, &b1, &few_stats));
    float st[2 * B] = {0, NAN, 0, 0};
    const struct mut nan_stats = {.stats = st, .n_stats = 2 * B};
    errors += expect_error(1, MOE_ERR_RANGE, send_group(1, 0, true, &b1, &nan_stats));
    errors += expect_error(1, MOE_ERR_STATE, send_group(1, 0, false, &b1, NULL)); /* duplicate */
    const struct mut eval = {.eval = true}; /* in the middle of the step */
    errors += expect_error(0, MOE_ERR_STATE, send_group(0, 0, false, &b0, &eval));
    q0 = send_group(0, 0, true, &b0, NULL);
    q1 = send_group(1, 0, true, &b1, NULL);
    expect_reply(0, q0, true, &b0);
    expect_reply(1, q1, true, &b1);
    struct gb *b[W] = {&b0, &b1};
    ref_step(&r, 0, b);
    expect_gate(&r, 1);
    expert_shard_destroy(&r.sh);
    hmoe_groups_destroy(&r.g);
    srv_finish(1, errors);
}
END_TEST

/* The memory check before the shard is allocated counts the secondary
 * gates of the server's groups (parameters, gradients, factored-Adam
 * state: 4 D B + 2 (D + B) floats a group) with its experts: with one byte
 * less than that figure the server refuses to start, naming it; with the
 * figure it starts. */
START_TEST(groups_memory_check)
{
    const double want = expert_shard_bytes(D, H, B, false) + 4.0 * (4 * D * B + 2 * (D + B));
    ck_assert(hmoe_groups_bytes(D, B, 1) == 4.0 * (4 * D * B + 2 * (D + B)));
    char avail[32], err[512] = "", msg[200];
    snprintf(avail, sizeof avail, "%.0f", want - 1);
    setenv("MOE_MEM_AVAILABLE", avail, 1);
    expert_server_t *s = srv_new(err, sizeof err);
    ck_assert_ptr_null(s);
    snprintf(msg, sizeof msg,
             "server 0: its 2 experts of 4 -> 5 -> 4 (in 1 group, with the secondary gates) "
             "needs about %.1f KB (%.0f bytes), but only",
             want / 1e3, want);
    ck_assert_msg(strstr(err, msg), "%s (expected %s)", err, msg);
    snprintf(avail, sizeof avail, "%.0f", want);
    setenv("MOE_MEM_AVAILABLE", avail, 1);
    s = srv_new(err, sizeof err);
    unsetenv("MOE_MEM_AVAILABLE");
    ck_assert_msg(s != NULL, "with %s bytes: %s", avail, err);
    expert_server_destroy(&s);
}
END_TEST

Suite *test_expert_server_groups_suite(void)
{
    Suite *s = suite_create("expert_server_groups");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, groups_steps_bitwise);
    tcase_add_test(tc, groups_malformed);
    tcase_add_test(tc, groups_memory_check);
    suite_add_tcase(s, tc);
    return s;
}
