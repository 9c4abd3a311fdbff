/* The coordinator's state and message handling (moe-coordinator process),
 * independent of the event loop that feeds it: coord_main.c runs it under
 * libuv (ZeroMQ through moe_zloop, HTTP through coord_http).
 *
 * It keeps the membership (expert servers and workers that registered, when
 * each was last heard from), the placement it hands out, and the balancing
 * statistics: each worker sends its Importance, Load and rows routed per
 * expert for a step; when every worker of the step is in, all of them get
 * the global vectors (rank-order sums, coord_stats.c). Every message is
 * validated; a bad one gets an MSG_ERROR reply and changes nothing. */
#ifndef COORD_H
#define COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord_stats.h"
#include "trainer.h"

typedef struct coord coord_t;

struct coord_member {
    bool registered, alive;
    char endpoint[256];
    double last_seen;   /* seconds, monotonic clock */
    int64_t step;
    uint64_t messages, errors;
    /* expert servers, from their heartbeats */
    uint64_t rows_total, bytes_total, errors_total;
    double latency_seconds, rows_per_sec;
    double rate_time;       /* when rows_per_sec was last computed */
    uint64_t rate_rows;
};

/* Binds the ROUTER at cfg->coordinator. NULL with a sentence. Caller owns. */
coord_t *coord_new(const struct trainer_config *cfg, char *err, size_t errlen);
void coord_destroy(coord_t **c);

/* The ROUTER socket, for the event loop. */
void *coord_socket(coord_t *c);

/* Receives and handles one message if there is one (non-blocking).
 * Returns 1 if one was handled, 0 if none was waiting. */
int coord_handle_one(coord_t *c, double now);

/* Marks members not heard from within `timeout` seconds as not alive. */
void coord_check_liveness(coord_t *c, double now, double timeout);

const coord_stats_t *coord_stats(const coord_t *c);
int coord_n_servers(const coord_t *c);
int coord_n_workers(const coord_t *c);
const struct coord_member *coord_server(const coord_t *c, int i);
const struct coord_member *coord_worker(const coord_t *c, int r);
/* Server index of expert e under the current placement. */
int coord_server_of(const coord_t *c, int e);
uint32_t coord_placement_version(const coord_t *c);
uint64_t coord_errors(const coord_t *c);

/* Renders /api/v1/experts, /api/v1/cluster (JSON) and /metrics
 * (Prometheus text). Return a malloc'd NUL-terminated string, or NULL. */
char *coord_render_experts_json(const coord_t *c);
char *coord_render_cluster_json(const coord_t *c);
char *coord_render_metrics(const coord_t *c);

#endif
