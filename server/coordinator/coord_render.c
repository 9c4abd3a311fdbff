/* The coordinator's pages (moe-coordinator process; see coord.h):
 * /api/v1/experts and /api/v1/cluster as JSON, /metrics in the Prometheus
 * text format. Read-only over the state. */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "coord_internal.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_prom.h"
#include "moe_wire.h"

static char *dump(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    return s;
}

char *coord_render_experts_json(const coord_t *c)
{
    const int E = c->cfg->n_experts;
    json_t *o = json_object(), *arr = json_array();
    double total = 0;
    for (int e = 0; e < E; e++)
        total += coord_stats_expert(c->stats, e)->rows_last;
    for (int e = 0; e < E; e++) {
        const struct coord_expert_stats *x = coord_stats_expert(c->stats, e);
        json_t *j = json_object();
        json_object_set_new(j, "id", json_integer(e));
        const int64_t sid = coord_server_of(c, e);
        json_object_set_new(j, "server", sid < 0 ? json_null() : json_integer(sid));
        json_object_set_new(j, "rows_last", json_real(x->rows_last));
        json_object_set_new(j, "rows_total", json_real(x->rows_total));
        json_object_set_new(j, "importance_last", json_real(x->importance_last));
        json_object_set_new(j, "importance_avg", json_real(x->importance_avg));
        json_object_set_new(j, "load_last", json_real(x->load_last));
        json_object_set_new(j, "load_avg", json_real(x->load_avg));
        json_object_set_new(j, "load_share", json_real(total > 0 ? x->rows_last / total : 0));
        json_array_append_new(arr, j);
    }
    json_object_set_new(o, "step", json_integer(coord_stats_completed_step(c->stats)));
    json_object_set_new(o, "placement_version", json_integer(c->placement_version));
    json_object_set_new(o, "experts", arr);
    return dump(o);
}

char *coord_render_cluster_json(const coord_t *c)
{
    json_t *o = json_object(), *servers = json_array(), *workers = json_array(),
           *hist = json_array();
    for (int s = 0; s < c->n_slots; s++) {
        const struct coord_member *m = &c->servers[s];
        if (!m->used)
            continue;
        int n = 0;
        for (int e = 0; e < c->cfg->n_experts; e++)
            n += c->server_of[e] == s;
        json_t *j = json_object();
        json_object_set_new(j, "id", json_integer(m->id));
        json_object_set_new(j, "endpoint", json_string(m->endpoint));
        json_object_set_new(j, "alive", json_boolean(m->alive));
        json_object_set_new(j, "registered", json_boolean(m->registered));
        json_object_set_new(j, "experts", json_integer(n));
        json_object_set_new(j, "epoch_index", json_integer(m->index));
        json_object_set_new(j, "draining", json_boolean(m->draining));
        json_object_set_new(j, "step", json_integer(m->step));
        json_object_set_new(j, "rows_per_sec", json_real(m->rows_per_sec));
        json_object_set_new(j, "rows_total", json_integer((json_int_t)m->rows_total));
        json_object_set_new(j, "bytes_total", json_integer((json_int_t)m->bytes_total));
        json_object_set_new(j, "errors_total", json_integer((json_int_t)m->errors_total));
        json_object_set_new(j, "refused_connections_total",
                            json_integer((json_int_t)m->refused_total));
        json_object_set_new(j, "latency_seconds", json_real(m->latency_seconds));
        json_array_append_new(servers, j);
    }
    for (int r = 0; r < c->W; r++) {
        const struct coord_member *m = &c->workers[r];
        const struct coord_worker_stats *w = coord_stats_worker(c->stats, r);
        json_t *j = json_object();
        json_object_set_new(j, "rank", json_integer(r));
        json_object_set_new(j, "alive", json_boolean(m->alive));
        json_object_set_new(j, "step", json_integer(w->seen ? w->step : -1));
        json_object_set_new(j, "tokens_per_sec", json_real(w->tokens_per_sec));
        json_object_set_new(j, "loss", json_real(w->loss));
        json_array_append_new(workers, j);
    }
    const int64_t *steps;
    const double *loss;
    size_t n = coord_stats_loss_history(c->stats, &steps, &loss);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(hist, json_pack("[If]", (json_int_t)steps[i], loss[i]));
    json_object_set_new(o, "step", json_integer(coord_stats_completed_step(c->stats)));
    json_object_set_new(o, "placement_version", json_integer(c->placement_version));
    static const char *const phases[] = {"forming", "loading", "running", "finished", "stopped"};
    json_object_set_new(o, "epoch", json_integer(c->epoch));
    json_object_set_new(o, "phase", json_string(c->failed ? "failed" : phases[c->phase]));
    json_object_set_new(o, "failure", c->failed ? json_string(c->failed_why) : json_null());
    json_object_set_new(o, "stopping", json_boolean(c->stop_requested || c->ck_stop));
    json_object_set_new(o, "rollbacks", json_integer((json_int_t)c->rollbacks));
    json_object_set_new(o, "committed_checkpoint_step", json_integer(c->committed_step));
    json_object_set_new(o, "servers", servers);
    json_object_set_new(o, "workers", workers);
    json_object_set_new(o, "cv_importance", json_real(coord_stats_cv_importance(c->stats)));
    json_object_set_new(o, "cv_load", json_real(coord_stats_cv_load(c->stats)));
    json_object_set_new(o, "max_over_mean_load", json_real(coord_stats_max_over_mean_load(c->stats)));
    json_object_set_new(o, "errors_total", json_integer((json_int_t)c->errors));
    json_object_set_new(o, "insecure", json_boolean(coord_insecure(c)));
    uint64_t keys, handshakes, over_cap;
    coord_refused(c, &keys, &handshakes, &over_cap);
    json_object_set_new(o, "refused_connections",
                        json_pack("{sIsIsI}", "key", (json_int_t)keys, "handshake",
                                  (json_int_t)handshakes, "limit", (json_int_t)over_cap));
    json_object_set_new(o, "loss_history", hist);
    return dump(o);
}

/* One gauge or counter sample per expert, labelled with id and server. */
static int prom_per_expert(struct moe_prom_buf *b, const coord_t *c, const char *name,
                           enum moe_prom_type type, const char *help, int field)
{
    int rc = moe_prom_family(b, name, type, help);
    for (int e = 0; rc == 0 && e < c->cfg->n_experts; e++) {
        const struct coord_expert_stats *x = coord_stats_expert(c->stats, e);
        const double v[] = {x->rows_total, x->rows_last, x->importance_last, x->importance_avg,
                            x->load_last, x->load_avg};
        char id[16], srv[24];
        snprintf(id, sizeof id, "%d", e);
        snprintf(srv, sizeof srv, "%" PRId64, coord_server_of(c, e));
        const char *labels[] = {"expert", id, "server", srv, NULL};
        rc = moe_prom_sample(b, NULL, labels, v[field]);
    }
    return rc;
}

/* Whether the cluster runs without CURVE, and the connections the
 * coordinator refused, by reason. */
static int prom_security(struct moe_prom_buf *b, const coord_t *c)
{
    int rc = moe_prom_family(b, "moe_insecure", MOE_PROM_GAUGE,
                             "1 when the cluster's TCP sockets run without CURVE (--insecure).");
    if (!rc)
        rc = moe_prom_sample(b, NULL, NULL, coord_insecure(c) ? 1 : 0);
    uint64_t n[3];
    coord_refused(c, &n[0], &n[1], &n[2]);
    static const char *const reason[] = {"key", "handshake", "limit"};
    if (!rc)
        rc = moe_prom_family(b, "moe_coordinator_refused_connections_total", MOE_PROM_COUNTER,
                             "Connections the coordinator refused: an unknown or wrong-role key, "
                             "a failed secure handshake, or beyond max_connections.");
    for (int i = 0; !rc && i < 3; i++) {
        const char *labels[] = {"reason", reason[i], NULL};
        rc = moe_prom_sample(b, NULL, labels, (double)n[i]);
    }
    return rc;
}

char *coord_render_metrics(const coord_t *c)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    static const struct {
        const char *name, *help;
        enum moe_prom_type type;
    } per_expert[] = {
        /* in the field order of prom_per_expert */
        {"moe_expert_rows_routed_total", "Rows routed to the expert over the run (all workers).", MOE_PROM_COUNTER},
        {"moe_expert_rows_routed_last_step", "Rows routed to the expert in the last completed step.", MOE_PROM_GAUGE},
        {"moe_expert_importance", "Importance (sum of gates) of the expert in the last step.", MOE_PROM_GAUGE},
        {"moe_expert_importance_avg", "Moving average (0.9) of the expert's importance.", MOE_PROM_GAUGE},
        {"moe_expert_load", "Smooth load estimate of the expert in the last step.", MOE_PROM_GAUGE},
        {"moe_expert_load_avg", "Moving average (0.9) of the expert's load.", MOE_PROM_GAUGE},
    };
    int rc = 0;
    for (int f = 0; !rc && f < (int)(sizeof per_expert / sizeof per_expert[0]); f++)
        rc = prom_per_expert(&b, c, per_expert[f].name, per_expert[f].type, per_expert[f].help, f);
    const struct {
        const char *name, *help;
        double v;
    } gauges[] = {
        {"moe_step", "Last training step completed by every worker.",
         (double)coord_stats_completed_step(c->stats)},
        {"moe_importance_cv", "Coefficient of variation of the global Importance vector.",
         coord_stats_cv_importance(c->stats)},
        {"moe_load_cv", "Coefficient of variation of the global Load vector.",
         coord_stats_cv_load(c->stats)},
        {"moe_load_max_over_mean", "Rows of the most loaded expert over the mean, last step.",
         coord_stats_max_over_mean_load(c->stats)},
        {"moe_placement_version", "Version of the expert placement.", (double)c->placement_version},
        {"moe_epoch", "Cluster configuration number (bumped by joins, drains and recoveries).", (double)c->epoch},
        {"moe_committed_checkpoint_step", "Step of the newest committed checkpoint (-1: none).", (double)c->committed_step},
        {"moe_cluster_failed", "1 when the cluster stopped on a failure it cannot recover from.", c->failed ? 1.0 : 0.0},
    };
    for (size_t i = 0; !rc && i < sizeof gauges / sizeof gauges[0]; i++) {
        rc = moe_prom_family(&b, gauges[i].name, MOE_PROM_GAUGE, gauges[i].help);
        if (!rc)
            rc = moe_prom_sample(&b, NULL, NULL, gauges[i].v);
    }
    if (!rc)
        rc = prom_security(&b, c);
    if (!rc)
        rc = moe_prom_family(&b, "moe_coordinator_rejected_messages_total", MOE_PROM_COUNTER,
                             "Messages the coordinator rejected as malformed or out of turn.");
    if (!rc)
        rc = moe_prom_sample(&b, NULL, NULL, (double)c->errors);
    if (!rc)
        rc = moe_prom_family(&b, "moe_rollbacks_total", MOE_PROM_COUNTER,
                             "Rollbacks to the last committed checkpoint after a failure.");
    if (!rc)
        rc = moe_prom_sample(&b, NULL, NULL, (double)c->rollbacks);
    if (!rc)
        rc = moe_prom_family(&b, "moe_server_up", MOE_PROM_GAUGE,
                             "1 if the expert server was heard from recently.");
    for (int s = 0; !rc && s < c->n_slots; s++) {
        if (!c->servers[s].used)
            continue;
        char idx[16];
        snprintf(idx, sizeof idx, "%u", c->servers[s].id);
        const char *labels[] = {"server", idx, "endpoint", c->servers[s].endpoint, NULL};
        rc = moe_prom_sample(&b, NULL, labels, c->servers[s].alive ? 1 : 0);
    }
    const struct {
        const char *name, *help;
        enum moe_prom_type type;
        int field;
    } per_server[] = {
        {"moe_server_rows_total", "Rows the expert server computed (forward).", MOE_PROM_COUNTER, 0},
        {"moe_server_bytes_total", "Tensor bytes the expert server received and sent.", MOE_PROM_COUNTER, 1},
        {"moe_server_rejected_messages_total", "Messages the expert server rejected.", MOE_PROM_COUNTER, 2},
        {"moe_server_rows_per_second", "Rows per second computed by the expert server.", MOE_PROM_GAUGE, 3},
        {"moe_server_step_compute_seconds", "Mean compute time of a step on the expert server.", MOE_PROM_GAUGE, 4},
        {"moe_server_refused_connections_total", "Connections the expert server refused (keys, handshakes, connection cap).", MOE_PROM_COUNTER, 5},
    };
    for (size_t f = 0; !rc && f < sizeof per_server / sizeof per_server[0]; f++) {
        rc = moe_prom_family(&b, per_server[f].name, per_server[f].type, per_server[f].help);
        for (int s = 0; !rc && s < c->n_slots; s++) {
            const struct coord_member *m = &c->servers[s];
            if (!m->used)
                continue;
            const double v[] = {(double)m->rows_total, (double)m->bytes_total,
                                (double)m->errors_total, m->rows_per_sec, m->latency_seconds,
                                (double)m->refused_total};
            char idx[16];
            snprintf(idx, sizeof idx, "%u", m->id);
            const char *labels[] = {"server", idx, NULL};
            rc = moe_prom_sample(&b, NULL, labels, v[per_server[f].field]);
        }
    }
    const struct {
        const char *name, *help;
        bool loss;
    } per_worker[] = {
        {"moe_worker_tokens_per_second", "Training speed reported by the worker.", false},
        {"moe_worker_loss", "Training loss (cross-entropy) reported by the worker.", true},
    };
    for (size_t f = 0; !rc && f < sizeof per_worker / sizeof per_worker[0]; f++) {
        rc = moe_prom_family(&b, per_worker[f].name, MOE_PROM_GAUGE, per_worker[f].help);
        for (int r = 0; !rc && r < c->W; r++) {
            const struct coord_worker_stats *w = coord_stats_worker(c->stats, r);
            char idx[16];
            snprintf(idx, sizeof idx, "%d", r);
            const char *labels[] = {"rank", idx, NULL};
            rc = moe_prom_sample(&b, NULL, labels, per_worker[f].loss ? w->loss : w->tokens_per_sec);
        }
    }
    if (rc) {
        moe_prom_buf_free(&b);
        return NULL;
    }
    return b.data; /* NUL-terminated, owned by the caller now */
}
