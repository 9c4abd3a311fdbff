/* The coordinator's state, shared by its files (moe-coordinator process):
 * coord.c (life cycle, replies, the dispatch of each message, the clock),
 * coord_members.c (membership), coord_epochs.c (epochs, failures,
 * checkpoints, statistics) and coord_render.c (JSON and /metrics). Nothing
 * outside server/coordinator/ includes it; coord.h is the interface. */
#ifndef COORD_INTERNAL_H
#define COORD_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord.h"
#include "moe_guard.h"
#include "moe_wire.h"

#define MAX_SLOTS 1024
/* Routing ids of members: "moe-server/INC@EP", "moe-heart/INC@EP" (a
 * server's heartbeat thread) and "moe-worker-R/INC", INC being 16 hex
 * digits drawn by each process (coord_client.h). */
#define SERVER_ID_PREFIX "moe-server/"
#define HEART_ID_PREFIX "moe-heart/"
#define INC_DIGITS 16
#define CONTRACT_MAX 8192
/* How long members have to hear that the cluster stopped or failed before
 * the coordinator exits anyway (servers ask every 0.25 s). */
#define TELL_GRACE_SECONDS 10.0

struct pending {          /* a worker waiting for the global vectors */
    bool waiting;
    uint8_t identity[256];
    size_t identity_len;
    uint64_t request_id;
};

struct coord {
    const struct moe_options *cfg;
    int E, W;
    coord_stats_t *stats;
    void *ctx, *sock;
    struct moe_sec sec;    /* keys: on tcp:// the socket runs CURVE */
    struct moe_net net;
    moe_guard_t *guard;    /* ZAP handler and monitor of ctx */
    bool curve;            /* the socket authenticates (worker and server keys) */
    struct coord_member *servers, *workers;
    int n_slots, min_servers;
    char (*listed)[256];  /* --servers: endpoint of ids 0..n_listed-1 */
    int n_listed;
    uint32_t next_id;     /* the id the next new server gets */
    int32_t *server_of;   /* (E) slot of each expert, -1 before the first epoch */
    struct pending *pending;
    struct moe_wire_limits lim;
    float *reply;         /* 3E */
    uint32_t placement_version;
    uint64_t errors, messages;
    uint64_t generation;  /* bumped on every change the renders can show */
    /* the contract every member must agree on (moe_options_contract) */
    char contract_server[CONTRACT_MAX], contract_worker[CONTRACT_MAX];
    /* the epoch */
    uint32_t epoch;
    bool started;                 /* the first epoch was formed */
    enum coord_phase phase;
    bool failed;                  /* cannot recover: every member is told why and exits */
    char failed_why[1024];
    double end_since;             /* when it stopped or failed */
    int64_t ep_step;              /* checkpoint step it starts from (0: fresh) */
    char ep_ckpt[MOE_PATH_MAX + 32]; /* its folder ("" = fresh) */
    bool ep_initial;              /* fresh start: write the step-0 checkpoint */
    int ep_n;                     /* servers in the epoch */
    int *ep_slot;                 /* (MAX_SLOTS) slot of epoch index i */
    int32_t *ep_place;            /* (E) epoch index of each expert */
    int64_t ep_high;              /* steps completed in this epoch (its high-water mark) */
    /* the livelock guard: failures without progress in between */
    int64_t rb_target, rb_high;   /* checkpoint step and high-water mark of the last rollback */
    int rb_strikes;
    bool rb_committed;            /* a checkpoint was committed since the last rollback */
    uint64_t rollbacks;
    /* checkpoints */
    int64_t ck_step;              /* in progress, -1: none */
    bool ck_reconf, ck_requested, reconf_pending, ck_stop;
    int64_t committed_step;       /* -1: none */
    char committed[MOE_PATH_MAX + 32];
    double ck_started;
    /* stopping */
    bool stop_requested;          /* stop after the next checkpoint */
    bool trained;                 /* the last step was committed: the workers are done */
    bool stall_logged;            /* the stall now going on was logged */
    double stall_since;           /* when it was */
    char stop_why[256];
    double now, forming_logged;
    /* for /metrics */
    uint64_t reasons[MOE_REASONS]; /* rejected messages by reason */
    struct moe_hist step_hist;     /* seconds between step completions in an epoch */
    double step_done_at;           /* when the last step completed (0: none this epoch) */
    double last_step_at;           /* ... across epochs (0: none yet) */
    struct moe_hist ckpt_hist;     /* seconds from a checkpoint's step to its commit */
    uint64_t checkpoints_committed;
    uint64_t servers_lost;         /* servers declared dead (silent beyond the timeout) */
    double committed_at;           /* when the newest one was committed (0: none yet) */
    double born;                   /* the first clock reading (0: none yet) */
};

/* coord.c: replies (an error with a code and a sentence, counted and sampled;
 * acknowledgements; the answers to workers waiting for the global vectors) */
void coord__send_out(coord_t *c, const uint8_t *id, size_t id_len, struct moe_wire_out *o,
                     const float *data, uint64_t rows);
void coord__reply_error_flags(coord_t *c, const struct moe_wire_msg *m, int code, const char *text,
                              uint32_t flags);
void coord__reply_error(coord_t *c, const struct moe_wire_msg *m, int code, const char *text);
void coord__ack_flags(coord_t *c, const struct moe_wire_msg *m, Moe__MsgType type, uint32_t flags,
                      const char *text);
void coord__ack(coord_t *c, const struct moe_wire_msg *m, Moe__MsgType type);
void coord__answer_pending(coord_t *c, struct moe_wire_out *o, const float *data, uint64_t rows);
void coord__fail_pending(coord_t *c, const char *why, uint32_t flags);

/* coord_members.c: who a message comes from, server slots and ids, and the
 * handlers of registration, heartbeats and LEAVE */
int coord__slot_of_id(const coord_t *c, uint64_t id);
void coord__prune_slot(coord_t *c, int s);
struct coord_member *coord__worker_of(coord_t *c, const struct moe_wire_msg *m, bool registered,
                                      int *code, char *why, size_t len);
struct coord_member *coord__sender(coord_t *c, const struct moe_wire_msg *m);
void coord__member_name(const coord_t *c, const struct coord_member *mem, char *buf, size_t cap);
void coord__handle_register(coord_t *c, struct moe_wire_msg *m, double now);
void coord__handle_heartbeat(coord_t *c, struct moe_wire_msg *m, double now);
void coord__handle_leave(coord_t *c, struct moe_wire_msg *m);
/* The first worker telling an activity (validating, writing the final
 * model, finished: the cluster is not stalled meanwhile), or -1. */
int coord__busy_worker(const coord_t *c);

/* coord_epochs.c: epochs, rollbacks and the livelock guard, stopping,
 * checkpoints, drains, the statistics of each step and EPOCH_WAIT */
void coord__start_epoch(coord_t *c, int64_t step, const char *folder, bool initial,
                        const char *reason);
void coord__rollback(coord_t *c, const char *reason);
void coord__try_form(coord_t *c);
void coord__catch_up_epoch(coord_t *c, uint32_t theirs);
void coord__handle_ckpt_done(coord_t *c, struct moe_wire_msg *m);
int coord__drain_slot(coord_t *c, int slot, char *err, size_t errlen);
bool coord__answer_ended(coord_t *c, const struct moe_wire_msg *m, struct coord_member *mem);
void coord__handle_stats(coord_t *c, struct moe_wire_msg *m, double now);
void coord__handle_epoch_wait(coord_t *c, struct moe_wire_msg *m, double now);

#endif
