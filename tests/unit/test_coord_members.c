/* Tests of the coordinator's membership (coord_members.c) through
 * coord_inject, the whole decode-and-dispatch path without a network:
 *   - two live processes claiming one endpoint: the newcomer is held back
 *     while the registered server's heartbeats come, then refused; the
 *     registered one keeps its incarnation and nothing rolls back; the
 *     newcomer's own heartbeats keep nothing alive; a registration whose
 *     routing id does not carry its incarnation changes nothing
 *   - a restart (the registered process silent): held back for half the
 *     heartbeat timeout, then accepted
 *   - a worker's activities (validating, writing the final model,
 *     finished) as its heartbeats tell them; an unknown one changes nothing */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coord.h"
#include "moe.pb-c.h"
#include "moe_checksum.h"
#include "moe_config.h"
#include "moe_log.h"
#include "moe_options.h"
#include "moe_wire.h"
#include "test_util.h"

#define EP "tcp://127.0.0.1:5555"

static struct moe_options cfg;
static char contract_server[8192], contract_worker[8192];

static coord_t *make_coord(void)
{
    char err[1024];
    ck_assert_int_eq(moe_config_defaults(moe_options_table, moe_options_count, &cfg, err,
                                         sizeof err), 0);
    cfg.d_model = 16;
    cfg.d_hidden = 24;
    cfg.n_experts = 6;
    cfg.k = 2;
    cfg.batch = 4;
    cfg.unroll = 8;
    cfg.threads = 1;
    cfg.insecure = true;
    cfg.heartbeat_timeout_ms = 1500; /* a restart is told after 0.75 s of silence */
    snprintf(cfg.coordinator, sizeof cfg.coordinator, "tcp://127.0.0.1:*");
    snprintf(cfg.train, sizeof cfg.train, "/nonexistent/train.txt");
    moe_log_set_level(MOE_LOG_ERROR + 1);
    coord_t *c = coord_new(&cfg, err, sizeof err);
    ck_assert_msg(c != NULL, "%s", err);
    ck_assert_int_ge(moe_options_contract(&cfg, MOE_ROLE_SERVER, contract_server,
                                          sizeof contract_server), 0);
    ck_assert_int_ge(moe_options_contract(&cfg, MOE_ROLE_WORKER, contract_worker,
                                          sizeof contract_worker), 0);
    ck_assert_int_eq(moe_options_contract_put(contract_server, sizeof contract_server,
                                              "blas_kernels", ""), 0);
    ck_assert_int_eq(moe_options_contract_put(contract_worker, sizeof contract_worker,
                                              "blas_kernels", ""), 0);
    return c;
}

/* h as if it came from the peer `identity` at time `now`. */
static void inject(coord_t *c, Moe__Header *h, const char *identity, double now)
{
    h->version = MOE_WIRE_VERSION;
    const size_t n = moe__header__get_packed_size(h);
    uint8_t *buf = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(buf);
    moe__header__pack(h, buf);
    const void *frames[1] = {buf};
    const size_t sizes[1] = {n};
    coord_inject(c, frames, sizes, 1, (const uint8_t *)identity, strlen(identity), "", now);
    free(buf);
}

/* A server's REGISTER: header incarnation `inc`, routing id carrying `id_inc`. */
static void register_server(coord_t *c, uint64_t inc, uint64_t id_inc, double now)
{
    Moe__Header h = MOE__HEADER__INIT;
    h.type = MOE__MSG_TYPE__MSG_REGISTER;
    h.role = 2;
    h.request_id = 1;
    h.endpoint = (char *)EP;
    h.config = contract_server;
    h.config_digest = moe_checksum64(MOE_CHECKSUM_INIT, contract_server, strlen(contract_server));
    h.incarnation = inc;
    char id[128];
    snprintf(id, sizeof id, "moe-server/%016llx@%s", (unsigned long long)id_inc, EP);
    inject(c, &h, id, now);
}

static void heartbeat(coord_t *c, const char *identity, int role, const char *activity,
                      double now)
{
    Moe__Header h = MOE__HEADER__INIT;
    h.type = MOE__MSG_TYPE__MSG_HEARTBEAT;
    h.role = (uint32_t)role;
    h.request_id = 2;
    h.error_text = (char *)(activity ? activity : "");
    inject(c, &h, identity, now);
}

static void server_beat(coord_t *c, uint64_t inc, double now)
{
    char id[128];
    snprintf(id, sizeof id, "moe-heart/%016llx@%s", (unsigned long long)inc, EP);
    heartbeat(c, id, 2, NULL, now);
}

/* The slot of the server at EP (it must have one). */
static const struct coord_member *server_at(const coord_t *c)
{
    for (int s = 0; s < coord_n_servers(c); s++) {
        const struct coord_member *m = coord_server(c, s);
        if (m->used && strcmp(m->endpoint, EP) == 0)
            return m;
    }
    ck_abort_msg("no server at " EP);
    return NULL;
}

START_TEST(members_second_server_at_one_endpoint)
{
    coord_t *c = make_coord();
    register_server(c, 0xa, 0xa, 0.0);
    const struct coord_member *m = server_at(c);
    ck_assert(m->registered && m->alive);
    ck_assert_uint_eq(m->incarnation, 0xa);
    server_beat(c, 0xa, 0.1);
    /* another process: held back, the registered one untouched */
    register_server(c, 0xb, 0xb, 0.2);
    ck_assert_uint_eq(m->incarnation, 0xa);
    ck_assert(m->rival_since == 0.2);
    /* its heartbeats (forged, or of a process not registered) keep nothing alive */
    server_beat(c, 0xb, 0.25);
    ck_assert(m->last_seen == 0.1);
    server_beat(c, 0xa, 0.3);
    ck_assert(m->last_seen == 0.3);
    /* asked again after a heartbeat of the registered one: refused */
    register_server(c, 0xb, 0xb, 0.4);
    ck_assert_uint_eq(m->incarnation, 0xa);
    ck_assert(m->rival_since == 0);
    ck_assert(m->registered && m->alive);
    /* a routing id that does not carry the incarnation registered with */
    register_server(c, 0xc, 0xa, 2.0);
    register_server(c, 0xc, 0xd, 2.0);
    ck_assert_uint_eq(m->incarnation, 0xa);
    ck_assert(m->rival_since == 0);
    ck_assert_uint_eq(coord_rollbacks(c), 0);
    ck_assert_int_eq(coord_n_servers(c), 1);
    coord_destroy(&c);
}
END_TEST

START_TEST(members_restart_is_accepted_after_silence)
{
    coord_t *c = make_coord();
    register_server(c, 0xa, 0xa, 0.0);
    const struct coord_member *m = server_at(c);
    server_beat(c, 0xa, 0.1);
    register_server(c, 0xb, 0xb, 0.2); /* held back */
    ck_assert_uint_eq(m->incarnation, 0xa);
    register_server(c, 0xb, 0xb, 0.6); /* still within 0.75 s */
    ck_assert_uint_eq(m->incarnation, 0xa);
    register_server(c, 0xb, 0xb, 0.96); /* 0.76 s of silence: the restart */
    ck_assert_uint_eq(m->incarnation, 0xb);
    ck_assert(m->registered && m->alive && m->rival_since == 0);
    /* the old process's heartbeats (in flight) keep nothing alive now */
    server_beat(c, 0xa, 1.0);
    ck_assert(m->last_seen == 0.96);
    server_beat(c, 0xb, 1.1);
    ck_assert(m->last_seen == 1.1);
    /* the same id: one slot */
    ck_assert_int_eq(coord_n_servers(c), 1);
    coord_destroy(&c);
}
END_TEST

START_TEST(members_worker_activities)
{
    coord_t *c = make_coord();
    Moe__Header h = MOE__HEADER__INIT;
    h.type = MOE__MSG_TYPE__MSG_REGISTER;
    h.role = 1;
    h.rank = 0;
    h.request_id = 1;
    h.config = contract_worker;
    h.config_digest = moe_checksum64(MOE_CHECKSUM_INIT, contract_worker, strlen(contract_worker));
    h.incarnation = 0xe;
    const char *id = "moe-worker-0/000000000000000e";
    inject(c, &h, id, 0.0);
    const struct coord_member *w = coord_worker(c, 0);
    ck_assert(w->registered);
    ck_assert_ptr_null(coord_worker_activity(w));
    heartbeat(c, id, 1, "validating", 0.1);
    ck_assert_str_eq(coord_worker_activity(w), "validating");
    ck_assert_str_eq(coord_worker_state(c, w), "validating");
    heartbeat(c, id, 1, "mining", 0.2); /* unknown: an error reply, nothing changes */
    ck_assert_str_eq(coord_worker_activity(w), "validating");
    ck_assert(w->last_seen == 0.1);
    heartbeat(c, id, 1, "writing the final model", 0.3);
    ck_assert_str_eq(coord_worker_state(c, w), "writing");
    heartbeat(c, id, 1, "finished", 0.4);
    ck_assert_str_eq(coord_worker_state(c, w), "done");
    coord_tick(c, 10.0); /* silent since: it exited, still done */
    ck_assert(!w->alive);
    ck_assert_str_eq(coord_worker_state(c, w), "done");
    heartbeat(c, id, 1, "", 10.1); /* no activity: back to the epoch's word */
    ck_assert_ptr_null(coord_worker_activity(w));
    ck_assert_str_ne(coord_worker_state(c, w), "done");
    coord_destroy(&c);
}
END_TEST

Suite *test_coord_members_suite(void);
Suite *test_coord_members_suite(void)
{
    Suite *s = suite_create("coord_members");
    TCase *tc = tcase_create("members");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, members_second_server_at_one_endpoint);
    tcase_add_test(tc, members_restart_is_accepted_after_silence);
    tcase_add_test(tc, members_worker_activities);
    suite_add_tcase(s, tc);
    return s;
}
