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
#include "moe_metrics.h"
#include "moe_prom.h"
#include "moe_wire.h"

static char *dump(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    return s;
}

/* A hierarchical MoE's groups (issue 17): per group its server, rows
 * routed to it (|X^(i)|) and to its experts, Importance and Load_p. */
static json_t *groups_json(const coord_t *c)
{
    const int A = coord_stats_n_groups(c->stats), B = A ? c->cfg->n_experts / A : 0;
    json_t *arr = json_array();
    double total = 0;
    for (int i = 0; i < A; i++)
        total += coord_stats_group(c->stats, i)->rows_last;
    for (int i = 0; i < A; i++) {
        const struct coord_group_stats *g = coord_stats_group(c->stats, i);
        const int64_t sid = coord_server_of(c, i * B);
        json_t *j = json_object();
        json_object_set_new(j, "id", json_integer(i));
        json_object_set_new(j, "server", sid < 0 ? json_null() : json_integer(sid));
        json_object_set_new(j, "first_expert", json_integer((json_int_t)i * B));
        json_object_set_new(j, "n_experts", json_integer(B));
        json_object_set_new(j, "rows_routed_last", json_real(g->rows_last));
        json_object_set_new(j, "rows_routed_total", json_real(g->rows_total));
        json_object_set_new(j, "rows_routed_share", json_real(total > 0 ? g->rows_last / total : 0));
        json_object_set_new(j, "expert_rows_routed_last", json_real(g->expert_rows_last));
        json_object_set_new(j, "importance_last", json_real(g->importance_last));
        json_object_set_new(j, "importance_avg", json_real(g->importance_avg));
        json_object_set_new(j, "load_last", json_real(g->load_last));
        json_object_set_new(j, "load_avg", json_real(g->load_avg));
        json_array_append_new(arr, j);
    }
    return arr;
}

/* The balance summaries of /api/v1/experts and /api/v1/cluster. */
static void balance_json(json_t *o, const coord_t *c)
{
    const bool hier = coord_stats_n_groups(c->stats) > 0;
    json_object_set_new(o, "cv_importance", json_real(coord_stats_cv_importance(c->stats)));
    json_object_set_new(o, "cv_load", json_real(coord_stats_cv_load(c->stats)));
    json_object_set_new(o, "cv2_importance", json_real(coord_stats_cv2_importance(c->stats)));
    json_object_set_new(o, "cv2_load", json_real(coord_stats_cv2_load(c->stats)));
    json_object_set_new(o, "cv_group_importance",
                        hier ? json_real(coord_stats_cv_group_importance(c->stats)) : json_null());
    json_object_set_new(o, "cv_group_load",
                        hier ? json_real(coord_stats_cv_group_load(c->stats)) : json_null());
}

char *coord_render_experts_json(const coord_t *c)
{
    const int E = c->E, A = coord_stats_n_groups(c->stats), B = A ? E / A : 0;
    json_t *o = json_object(), *arr = json_array();
    double total = 0;
    for (int e = 0; e < E; e++)
        total += coord_stats_expert(c->stats, e)->rows_last;
    for (int e = 0; e < E; e++) {
        const struct coord_expert_stats *x = coord_stats_expert(c->stats, e);
        json_t *j = json_object();
        json_object_set_new(j, "id", json_integer(e));
        if (moe_options_moe_layers(c->cfg) > 1) {
            /* the translation model: experts 0..n-1 are the encoder's MoE
             * layer, n..2n-1 the decoder's (its expert e - n) */
            const int n = c->cfg->n_experts;
            json_object_set_new(j, "layer", json_string(e < n ? "encoder" : "decoder"));
            json_object_set_new(j, "layer_expert", json_integer(e % n));
        }
        const int64_t sid = coord_server_of(c, e);
        json_object_set_new(j, "server", sid < 0 ? json_null() : json_integer(sid));
        json_object_set_new(j, "rows_routed_last", json_real(x->rows_last));
        json_object_set_new(j, "rows_routed_total", json_real(x->rows_total));
        json_object_set_new(j, "rows_routed_share", json_real(total > 0 ? x->rows_last / total : 0));
        json_object_set_new(j, "importance_last", json_real(x->importance_last));
        json_object_set_new(j, "importance_avg", json_real(x->importance_avg));
        json_object_set_new(j, "load_last", json_real(x->load_last));
        json_object_set_new(j, "load_avg", json_real(x->load_avg));
        if (A) {
            json_object_set_new(j, "group", json_integer(e / B));
            json_object_set_new(j, "expert_in_group", json_integer(e % B));
            json_object_set_new(j, "load_in_group_last", json_real(x->load_group_last));
        }
        json_array_append_new(arr, j);
    }
    json_object_set_new(o, "step", json_integer(coord_stats_completed_step(c->stats)));
    json_object_set_new(o, "placement_version", json_integer(c->placement_version));
    /* groups and experts_per_group as in /api/v1/cluster and /api/v1/history */
    json_object_set_new(o, "n_experts", json_integer(E));
    json_object_set_new(o, "groups", A ? json_integer(A) : json_null());
    json_object_set_new(o, "experts_per_group", A ? json_integer(B) : json_null());
    balance_json(o, c);
    json_object_set_new(o, "experts", arr);
    json_object_set_new(o, "group_stats", A ? groups_json(c) : json_null());
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
        for (int e = 0; e < c->E; e++)
            n += c->server_of[e] == s;
        json_t *j = json_object();
        json_object_set_new(j, "id", json_integer(m->id));
        json_object_set_new(j, "endpoint", json_string(m->endpoint));
        json_object_set_new(j, "alive", json_boolean(m->alive));
        json_object_set_new(j, "registered", json_boolean(m->registered));
        json_object_set_new(j, "state", json_string(coord_server_state(c, m)));
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
        json_object_set_new(j, "state", json_string(coord_worker_state(c, m)));
        const char *act = coord_worker_activity(m);
        json_object_set_new(j, "activity", act ? json_string(act) : json_null());
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
    const char *slash = strrchr(c->committed, '/');
    json_object_set_new(o, "committed_checkpoint",
                        c->committed[0] ? json_string(slash ? slash + 1 : c->committed) : json_null());
    json_object_set_new(o, "heartbeats_since_step", json_integer((json_int_t)coord_beats_since_step(c)));
    json_object_set_new(o, "stall_heartbeats", json_integer(c->cfg->stall_heartbeats));
    json_object_set_new(o, "stalled", json_boolean(coord_stalled(c)));
    json_object_set_new(o, "n_experts", json_integer(c->E));
    json_object_set_new(o, "moe_layers", json_integer(moe_options_moe_layers(c->cfg)));
    const bool hier = moe_options_hierarchical(c->cfg);
    json_object_set_new(o, "groups", hier ? json_integer(c->cfg->groups) : json_null());
    json_object_set_new(o, "experts_per_group",
                        hier ? json_integer(c->cfg->experts_per_group) : json_null());
    json_object_set_new(o, "servers", servers);
    json_object_set_new(o, "workers", workers);
    balance_json(o, c);
    json_object_set_new(o, "max_over_mean_rows_routed",
                        json_real(coord_stats_max_over_mean_rows(c->stats)));
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

char *coord_render_history_json(const coord_t *c, bool load)
{
    const coord_history_t *h = coord_stats_history(c->stats);
    const int n = coord_history_columns(h), E = coord_history_n_experts(h);
    json_t *o = json_object(), *steps = json_array(), *rows = json_array();
    for (int col = 0; col < n; col++)
        json_array_append_new(steps, json_integer((json_int_t)coord_history_steps(h, col)));
    for (int e = 0; e < E; e++) {
        json_t *r = json_array();
        for (int col = 0; col < n; col++)
            json_array_append_new(r, load ? json_real(coord_history_load(h, col, e))
                                          : json_integer((json_int_t)llround(
                                                coord_history_rows(h, col, e))));
        json_array_append_new(rows, r);
    }
    const bool hier = moe_options_hierarchical(c->cfg);
    json_object_set_new(o, "field", json_string(load ? "load" : "rows_routed"));
    json_object_set_new(o, "n_experts", json_integer(E));
    json_object_set_new(o, "groups", hier ? json_integer(c->cfg->groups) : json_null());
    json_object_set_new(o, "experts_per_group",
                        hier ? json_integer(c->cfg->experts_per_group) : json_null());
    json_object_set_new(o, "first_step", json_integer(coord_history_first_step(h)));
    json_object_set_new(o, "last_step", json_integer(coord_history_last_step(h)));
    json_object_set_new(o, "steps_per_column", json_integer(coord_history_width(h)));
    json_object_set_new(o, "max_columns", json_integer(coord_history_capacity(h)));
    json_object_set_new(o, "column_steps", steps);
    json_object_set_new(o, load ? "load" : "rows_routed", rows);
    return dump(o);
}

#ifndef MOE_VERSION
#define MOE_VERSION "unknown"
#endif
#define MOE_STR2(x) #x
#define MOE_STR(x) MOE_STR2(x)
#define TOP_EXPERTS 10

/* A family of per-expert, per-server or per-worker samples. */
struct family_spec {
    const char *name, *help;
    enum moe_prom_type type;
};

/* A family with one sample without labels. */
static int prom_one(struct moe_prom_buf *b, const char *name, enum moe_prom_type type,
                    const char *help, double v)
{
    int rc = moe_prom_family(b, name, type, help);
    return rc ? rc : moe_prom_sample(b, NULL, NULL, v);
}

/* The labels that name an expert in every per-expert series: its global id
 * (`expert`, 0 .. moe_experts-1), its MoE layer (`layer`: 0 for the language
 * model; the translation model's 0 encoder, 1 decoder, as Header.layer) and
 * its id within that layer (`layer_expert`), then up to two more pairs
 * (k1, v1, k2, v2; NULL to stop). Not its server: that is
 * moe_expert_placement_info's, so that a migration starts no new series. */
struct prom_expert_labels {
    char id[16], layer[16], layer_expert[16];
    const char *labels[11];
};

static const char *const *prom_expert_labels(struct prom_expert_labels *l, const coord_t *c,
                                             int e, const char *k1, const char *v1,
                                             const char *k2, const char *v2)
{
    const int n = c->cfg->n_experts; /* experts per MoE layer */
    snprintf(l->id, sizeof l->id, "%d", e);
    snprintf(l->layer, sizeof l->layer, "%d", e / n);
    snprintf(l->layer_expert, sizeof l->layer_expert, "%d", e % n);
    const char *pairs[] = {"expert", l->id, "layer", l->layer, "layer_expert", l->layer_expert,
                           k1, v1, k2, v2, NULL};
    memcpy(l->labels, pairs, sizeof pairs);
    return l->labels;
}

/* One gauge or counter sample per expert (labels: prom_expert_labels). */
static int prom_per_expert(struct moe_prom_buf *b, const coord_t *c, const char *name,
                           enum moe_prom_type type, const char *help, int field)
{
    int rc = moe_prom_family(b, name, type, help);
    for (int e = 0; rc == 0 && e < c->E; e++) {
        const struct coord_expert_stats *x = coord_stats_expert(c->stats, e);
        const double v[] = {x->rows_total, x->rows_last, x->importance_last, x->importance_avg,
                            x->load_last, x->load_avg};
        struct prom_expert_labels l;
        rc = moe_prom_sample(b, NULL, prom_expert_labels(&l, c, e, NULL, NULL, NULL, NULL),
                             v[field]);
    }
    return rc;
}

static int prom_placement(struct moe_prom_buf *b, const coord_t *c)
{
    int rc = moe_prom_family(b, "moe_expert_placement_info", MOE_PROM_GAUGE,
                             "1 for the server that holds the expert now (experts not placed "
                             "yet are left out).");
    for (int e = 0; rc == 0 && e < c->E; e++) {
        const int64_t sid = coord_server_of(c, e);
        if (sid < 0)
            continue;
        char srv[24];
        snprintf(srv, sizeof srv, "%" PRId64, sid);
        struct prom_expert_labels l;
        rc = moe_prom_sample(b, NULL, prom_expert_labels(&l, c, e, "server", srv, NULL, NULL), 1);
    }
    return rc;
}

/* The experts with the most rows routed in the last step, most first (ties:
 * the lower id). */
static int prom_top_experts(struct moe_prom_buf *b, const coord_t *c)
{
    const int E = c->E, n = E < TOP_EXPERTS ? E : TOP_EXPERTS;
    int top[TOP_EXPERTS];
    for (int i = 0; i < n; i++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int j = 0; j < i && !taken; j++)
                taken = top[j] == e;
            if (!taken && (best < 0 || coord_stats_expert(c->stats, e)->rows_last >
                                           coord_stats_expert(c->stats, best)->rows_last))
                best = e;
        }
        top[i] = best;
    }
    int rc = moe_prom_family(b, "moe_expert_top_rows_routed_last_step", MOE_PROM_GAUGE,
                             "Rows routed in the last step to the experts with the most (position "
                             "1 = most), shown whatever metrics_max_experts says.");
    for (int i = 0; rc == 0 && i < n; i++) {
        char pos[16];
        snprintf(pos, sizeof pos, "%d", i + 1);
        struct prom_expert_labels l;
        rc = moe_prom_sample(b, NULL, prom_expert_labels(&l, c, top[i], "position", pos, NULL, NULL),
                             coord_stats_expert(c->stats, top[i])->rows_last);
    }
    return rc;
}

/* A hierarchical MoE's experts by group (only with the per-expert series):
 * which group each is in, and its secondary Load within the group. */
static int prom_experts_in_groups(struct moe_prom_buf *b, const coord_t *c)
{
    const int E = c->cfg->n_experts, A = coord_stats_n_groups(c->stats), B = E / A;
    int rc = moe_prom_family(b, "moe_expert_group_info", MOE_PROM_GAUGE,
                             "1, labelled with the expert's group and its index in the group "
                             "(hierarchical MoE: expert = group x experts_per_group + index).");
    for (int e = 0; rc == 0 && e < E; e++) {
        char g[16], j[16];
        snprintf(g, sizeof g, "%d", e / B);
        snprintf(j, sizeof j, "%d", e % B);
        struct prom_expert_labels l;
        rc = moe_prom_sample(b, NULL, prom_expert_labels(&l, c, e, "group", g, "index", j), 1);
    }
    if (!rc)
        rc = moe_prom_family(b, "moe_expert_load_in_group", MOE_PROM_GAUGE,
                             "The group's secondary Load of the expert in the last step, "
                             "Load_i(X^(i))_j summed over the workers (moe_expert_load is Load_H).");
    for (int e = 0; rc == 0 && e < E; e++) {
        struct prom_expert_labels l;
        rc = moe_prom_sample(b, NULL, prom_expert_labels(&l, c, e, NULL, NULL, NULL, NULL),
                             coord_stats_expert(c->stats, e)->load_group_last);
    }
    return rc;
}

/* A hierarchical MoE's groups (a few: always shown): the group count, each
 * group's server, rows routed, Importance and Load_p, and the CVs over
 * the groups. */
static int prom_groups(struct moe_prom_buf *b, const coord_t *c)
{
    static const struct family_spec per_group[] = {
        /* in the field order of v below */
        {"moe_group_rows_routed_total", "Rows the primary gate sent to the group over the run (|X^(i)| summed; replayed steps again).", MOE_PROM_COUNTER},
        {"moe_group_rows_routed_last_step", "Rows the primary gate sent to the group in the last step, |X^(i)| over all workers.", MOE_PROM_GAUGE},
        {"moe_group_expert_rows_routed_last_step", "Rows routed to the group's experts in the last step (k x |X^(i)| when k <= experts_per_group).", MOE_PROM_GAUGE},
        {"moe_group_importance", "Importance of the group in the last step: its experts' Importance_H summed.", MOE_PROM_GAUGE},
        {"moe_group_load", "Primary Load of the group in the last step, Load_p(X)_i (the smooth estimate of its rows routed).", MOE_PROM_GAUGE},
        {"moe_group_load_avg", "Moving average (0.9) of the group's primary Load.", MOE_PROM_GAUGE},
    };
    const int A = coord_stats_n_groups(c->stats), B = c->cfg->n_experts / A;
    int rc = prom_one(b, "moe_groups", MOE_PROM_GAUGE,
                      "Groups of the hierarchical MoE (moe_experts / moe_groups experts each).", A);
    if (!rc)
        rc = prom_one(b, "moe_group_importance_cv", MOE_PROM_GAUGE,
                      "Coefficient of variation of the groups' Importance, last step.",
                      coord_stats_cv_group_importance(c->stats));
    if (!rc)
        rc = prom_one(b, "moe_group_load_cv", MOE_PROM_GAUGE,
                      "Coefficient of variation of the groups' primary Load, last step.",
                      coord_stats_cv_group_load(c->stats));
    if (!rc)
        rc = moe_prom_family(b, "moe_group_info", MOE_PROM_GAUGE,
                             "1, labelled with the group's server and its first expert (groups "
                             "not placed yet have no server label).");
    for (int i = 0; !rc && i < A; i++) {
        char g[16], srv[24], first[16];
        snprintf(g, sizeof g, "%d", i);
        snprintf(first, sizeof first, "%d", i * B);
        const int64_t sid = coord_server_of(c, i * B);
        snprintf(srv, sizeof srv, "%" PRId64, sid);
        const char *placed[] = {"group", g, "server", srv, "first_expert", first, NULL};
        const char *unplaced[] = {"group", g, "first_expert", first, NULL};
        rc = moe_prom_sample(b, NULL, sid < 0 ? unplaced : placed, 1);
    }
    for (int f = 0; !rc && f < (int)(sizeof per_group / sizeof per_group[0]); f++) {
        rc = moe_prom_family(b, per_group[f].name, per_group[f].type, per_group[f].help);
        for (int i = 0; !rc && i < A; i++) {
            const struct coord_group_stats *x = coord_stats_group(c->stats, i);
            const double v[] = {x->rows_total, x->rows_last, x->expert_rows_last,
                                x->importance_last, x->load_last, x->load_avg};
            char g[16];
            snprintf(g, sizeof g, "%d", i);
            const char *labels[] = {"group", g, NULL};
            rc = moe_prom_sample(b, NULL, labels, v[f]);
        }
    }
    return rc;
}

/* Per-expert series (when shown), then the summaries that always are. */
static int prom_experts(struct moe_prom_buf *b, const coord_t *c, bool all)
{
    static const struct family_spec per_expert[] = {
        /* in the field order of prom_per_expert */
        {"moe_expert_rows_routed_total", "Rows routed to the expert over the run (all workers; replayed steps again).", MOE_PROM_COUNTER},
        {"moe_expert_rows_routed_last_step", "Rows routed to the expert in the last completed step.", MOE_PROM_GAUGE},
        {"moe_expert_importance", "Importance (sum of gates) of the expert in the last step.", MOE_PROM_GAUGE},
        {"moe_expert_importance_avg", "Moving average (0.9) of the expert's Importance.", MOE_PROM_GAUGE},
        {"moe_expert_load", "Load (the smooth estimate of rows routed) of the expert in the last step; Load_H for a hierarchical MoE.", MOE_PROM_GAUGE},
        {"moe_expert_load_avg", "Moving average (0.9) of the expert's Load.", MOE_PROM_GAUGE},
    };
    const bool shown = all || c->E <= c->cfg->metrics_max_experts;
    int rc = prom_one(b, "moe_experts", MOE_PROM_GAUGE, "Experts of the model.", c->E);
    if (!rc)
        rc = prom_one(b, "moe_expert_series_shown", MOE_PROM_GAUGE,
                      "1 when this page has the per-expert series (n_experts <= "
                      "metrics_max_experts, or /metrics?experts=1).", shown ? 1 : 0);
    for (int f = 0; shown && !rc && f < (int)(sizeof per_expert / sizeof per_expert[0]); f++)
        rc = prom_per_expert(b, c, per_expert[f].name, per_expert[f].type, per_expert[f].help, f);
    if (shown && !rc)
        rc = prom_placement(b, c);
    if (shown && !rc && coord_stats_n_groups(c->stats))
        rc = prom_experts_in_groups(b, c);
    if (!rc && coord_stats_n_groups(c->stats))
        rc = prom_groups(b, c);
    return rc ? rc : prom_top_experts(b, c);
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

/* Samples of reasons 1.. (moe_reason_name), optionally after a server label. */
static int prom_reasons(struct moe_prom_buf *b, const char *server, const uint64_t *n)
{
    int rc = 0;
    for (int i = 1; rc == 0 && i < MOE_REASONS; i++) {
        const char *with[] = {"server", server, "reason", moe_reason_name(i), NULL};
        const char *without[] = {"reason", moe_reason_name(i), NULL};
        rc = moe_prom_sample(b, NULL, server ? with : without, (double)n[i]);
    }
    return rc;
}

/* The cluster: build, step, balance summaries, epoch, phase, checkpoints,
 * rollbacks, rejected messages and the two histograms. */
static int prom_cluster(struct moe_prom_buf *b, const coord_t *c)
{
    const struct {
        const char *name, *help;
        double v;
    } gauges[] = {
        {"moe_step", "Last training step completed by every worker.",
         (double)coord_stats_completed_step(c->stats)},
        {"moe_importance_cv", "Coefficient of variation of the global Importance vector "
         "(Importance_H over every expert for a hierarchical MoE).",
         coord_stats_cv_importance(c->stats)},
        {"moe_load_cv", "Coefficient of variation of the global Load vector (Load_H over every "
         "expert for a hierarchical MoE).",
         coord_stats_cv_load(c->stats)},
        {"moe_importance_cv_squared", "moe_importance_cv squared: the balancing loss's Importance "
         "term before its weight, last step.", coord_stats_cv2_importance(c->stats)},
        {"moe_load_cv_squared", "moe_load_cv squared: the balancing loss's Load term before its "
         "weight, last step.", coord_stats_cv2_load(c->stats)},
        {"moe_rows_routed_max_over_mean", "Rows routed to the busiest expert over the mean over "
         "experts, last step.",
         coord_stats_max_over_mean_rows(c->stats)},
        {"moe_placement_version", "Version of the expert placement.", (double)c->placement_version},
        {"moe_epoch", "Cluster configuration number (bumped by joins, drains and recoveries).", (double)c->epoch},
        {"moe_committed_checkpoint_step", "Step of the newest committed checkpoint (-1: none).", (double)c->committed_step},
        {"moe_cluster_failed", "1 when the cluster stopped on a failure it cannot recover from.", c->failed ? 1.0 : 0.0},
    };
    const char *build[] = {"version", MOE_VERSION, "protocol", MOE_STR(MOE_WIRE_VERSION),
                           "compiler", __VERSION__, NULL};
    int rc = moe_prom_family(b, "moe_build_info", MOE_PROM_GAUGE,
                             "1, labelled with the coordinator's build (version: git describe) "
                             "and wire protocol.");
    rc = rc ? rc : moe_prom_sample(b, NULL, build, 1);
    for (size_t i = 0; !rc && i < sizeof gauges / sizeof gauges[0]; i++)
        rc = prom_one(b, gauges[i].name, MOE_PROM_GAUGE, gauges[i].help, gauges[i].v);
    static const char *const phases[] = {"forming", "loading", "running", "finished", "stopped", "failed"};
    const int now = c->failed ? 5 : (int)c->phase;
    if (!rc)
        rc = moe_prom_family(b, "moe_phase", MOE_PROM_GAUGE,
                             "1 for the cluster's phase, 0 for the others.");
    for (int i = 0; !rc && i < 6; i++) {
        const char *labels[] = {"phase", phases[i], NULL};
        rc = moe_prom_sample(b, NULL, labels, i == now ? 1 : 0);
    }
    if (!rc)
        rc = prom_security(b, c);
    if (!rc)
        rc = moe_prom_family(b, "moe_coordinator_rejected_messages_total", MOE_PROM_COUNTER,
                             "Messages the coordinator rejected, by the reason of the refusal.");
    if (!rc)
        rc = prom_reasons(b, NULL, c->reasons);
    if (!rc)
        rc = prom_one(b, "moe_rollbacks_total", MOE_PROM_COUNTER,
                      "Rollbacks to the last committed checkpoint after a failure.", (double)c->rollbacks);
    if (!rc)
        rc = prom_one(b, "moe_servers_lost_total", MOE_PROM_COUNTER,
                      "Expert servers declared dead (silent beyond heartbeat_timeout_ms); a "
                      "recovered cluster drops their moe_server_up series.",
                      (double)c->servers_lost);
    if (!rc)
        rc = prom_one(b, "moe_checkpoints_committed_total", MOE_PROM_COUNTER,
                      "Cluster checkpoints committed (every member's files written and checked).",
                      (double)c->checkpoints_committed);
    if (!rc)
        rc = moe_prom_family(b, "moe_step_duration_seconds", MOE_PROM_HISTOGRAM,
                             "Seconds between the completions of consecutive steps, as the "
                             "coordinator sees them (the first step of an epoch is left out).");
    if (!rc)
        rc = moe_prom_histogram(b, NULL, c->step_hist.bounds, c->step_hist.n, c->step_hist.counts,
                                c->step_hist.sum);
    if (!rc)
        rc = moe_prom_family(b, "moe_checkpoint_duration_seconds", MOE_PROM_HISTOGRAM,
                             "Seconds from the step of a checkpoint to its commit.");
    if (!rc)
        rc = moe_prom_histogram(b, NULL, c->ckpt_hist.bounds, c->ckpt_hist.n, c->ckpt_hist.counts,
                                c->ckpt_hist.sum);
    return rc;
}

/* up and info of each server. */
static int prom_servers_up(struct moe_prom_buf *b, const coord_t *c)
{
    int rc = moe_prom_family(b, "moe_server_up", MOE_PROM_GAUGE,
                             "1 if the expert server was heard from recently.");
    for (int s = 0; !rc && s < c->n_slots; s++) {
        if (!c->servers[s].used)
            continue;
        char idx[16];
        snprintf(idx, sizeof idx, "%u", c->servers[s].id);
        const char *labels[] = {"server", idx, NULL};
        rc = moe_prom_sample(b, NULL, labels, c->servers[s].alive ? 1 : 0);
    }
    if (!rc)
        rc = moe_prom_family(b, "moe_server_info", MOE_PROM_GAUGE,
                             "1, labelled with the endpoint the expert server serves on.");
    for (int s = 0; !rc && s < c->n_slots; s++) {
        if (!c->servers[s].used)
            continue;
        char idx[16];
        snprintf(idx, sizeof idx, "%u", c->servers[s].id);
        const char *labels[] = {"server", idx, "endpoint", c->servers[s].endpoint, NULL};
        rc = moe_prom_sample(b, NULL, labels, 1);
    }
    return rc;
}

/* One family of the servers' heartbeat numbers. */
static int prom_server_family(struct moe_prom_buf *b, const coord_t *c, const char *name,
                              enum moe_prom_type type, const char *help, int field)
{
    int rc = moe_prom_family(b, name, type, help);
    for (int s = 0; !rc && s < c->n_slots; s++) {
        const struct coord_member *m = &c->servers[s];
        if (!m->used)
            continue;
        char idx[16];
        snprintf(idx, sizeof idx, "%u", m->id);
        const char *labels[] = {"server", idx, NULL};
        const char *in[] = {"server", idx, "direction", "in", NULL};
        const char *out[] = {"server", idx, "direction", "out", NULL};
        switch (field) {
        case 0: rc = moe_prom_sample(b, NULL, labels, (double)m->rows_total); break;
        case 1:
            rc = moe_prom_sample(b, NULL, in, (double)m->bytes_in);
            rc = rc ? rc : moe_prom_sample(b, NULL, out, (double)m->bytes_out);
            break;
        case 2: rc = prom_reasons(b, idx, m->reasons); break;
        case 3: rc = moe_prom_sample(b, NULL, labels, m->rows_per_sec); break;
        case 4:
            rc = moe_prom_histogram(b, labels, moe_hist_step_bounds, moe_hist_step_n,
                                    m->compute.counts, m->compute.sum);
            break;
        case 5: rc = moe_prom_sample(b, NULL, labels, (double)m->refused_total); break;
        case 6: rc = moe_prom_sample(b, NULL, labels, m->cpu_seconds); break;
        default: rc = moe_prom_sample(b, NULL, labels, (double)m->rss_bytes); break;
        }
    }
    return rc;
}

static int prom_servers(struct moe_prom_buf *b, const coord_t *c)
{
    static const struct family_spec per_server[] = {
        /* in the field order of prom_server_family */
        {"moe_server_rows_total", "Rows the expert server computed (forward).", MOE_PROM_COUNTER},
        {"moe_server_bytes_total", "Tensor bytes the expert server received (in) and sent (out).", MOE_PROM_COUNTER},
        {"moe_server_rejected_messages_total", "Messages the expert server rejected, by the reason of the refusal.", MOE_PROM_COUNTER},
        {"moe_server_rows_per_second", "Rows per second computed by the expert server (between its last two heartbeats).", MOE_PROM_GAUGE},
        {"moe_server_step_compute_seconds", "Compute seconds (forward + backward) of each step on the expert server.", MOE_PROM_HISTOGRAM},
        {"moe_server_refused_connections_total", "Connections the expert server refused (keys, handshakes, connection cap).", MOE_PROM_COUNTER},
        {"moe_server_process_cpu_seconds_total", "User and system CPU seconds of the expert server process.", MOE_PROM_COUNTER},
        {"moe_server_process_resident_memory_bytes", "Resident memory of the expert server process.", MOE_PROM_GAUGE},
    };
    int rc = prom_servers_up(b, c);
    for (int f = 0; !rc && f < (int)(sizeof per_server / sizeof per_server[0]); f++)
        rc = prom_server_family(b, c, per_server[f].name, per_server[f].type, per_server[f].help, f);
    return rc;
}

static int prom_workers(struct moe_prom_buf *b, const coord_t *c)
{
    static const struct family_spec per_worker[] = {
        {"moe_worker_up", "1 if the worker was heard from recently.", MOE_PROM_GAUGE},
        {"moe_worker_tokens_total", "Tokens the worker trained on (replayed steps again).", MOE_PROM_COUNTER},
        {"moe_worker_tokens_per_second", "Training speed the worker reported with its last step.", MOE_PROM_GAUGE},
        {"moe_worker_loss", "Training loss (cross-entropy) reported by the worker.", MOE_PROM_GAUGE},
        {"moe_worker_process_cpu_seconds_total", "User and system CPU seconds of the worker process.", MOE_PROM_COUNTER},
        {"moe_worker_process_resident_memory_bytes", "Resident memory of the worker process.", MOE_PROM_GAUGE},
    };
    int rc = 0;
    for (int f = 0; !rc && f < (int)(sizeof per_worker / sizeof per_worker[0]); f++) {
        rc = moe_prom_family(b, per_worker[f].name, per_worker[f].type, per_worker[f].help);
        for (int r = 0; !rc && r < c->W; r++) {
            const struct coord_worker_stats *w = coord_stats_worker(c->stats, r);
            const struct coord_member *m = &c->workers[r];
            const double v[] = {m->alive ? 1 : 0, (double)m->tokens_total, w->tokens_per_sec,
                                w->loss, m->cpu_seconds, (double)m->rss_bytes};
            char idx[16];
            snprintf(idx, sizeof idx, "%d", r);
            const char *labels[] = {"rank", idx, NULL};
            rc = moe_prom_sample(b, NULL, labels, v[f]);
        }
    }
    return rc;
}

static char *finish(struct moe_prom_buf *b, int rc)
{
    if (rc) {
        moe_prom_buf_free(b);
        return NULL;
    }
    return b->data; /* NUL-terminated, owned by the caller now */
}

char *coord_render_metrics(const coord_t *c, bool all_experts)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    int rc = prom_experts(&b, c, all_experts);
    rc = rc ? rc : prom_cluster(&b, c);
    rc = rc ? rc : prom_servers(&b, c);
    rc = rc ? rc : prom_workers(&b, c);
    return finish(&b, rc);
}

char *coord_render_metrics_live(const coord_t *c, double now)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    double cpu;
    uint64_t rss;
    moe_proc_usage(&cpu, &rss);
    int rc = prom_one(&b, "process_cpu_seconds_total", MOE_PROM_COUNTER,
                      "User and system CPU seconds of the coordinator process.", cpu);
    rc = rc ? rc : prom_one(&b, "process_resident_memory_bytes", MOE_PROM_GAUGE,
                            "Resident memory of the coordinator process.", (double)rss);
    const double origin = c->last_step_at > 0 ? c->last_step_at : c->born;
    rc = rc ? rc : prom_one(&b, "moe_step_age_seconds", MOE_PROM_GAUGE,
                            "Seconds since a step last completed (since the coordinator "
                            "started when none has).", origin > 0 && now > origin ? now - origin : 0);
    /* the dashboard's stall banner: heartbeats change no generation of the
     * cached page, so these are rendered with every scrape */
    rc = rc ? rc : prom_one(&b, "moe_heartbeats_since_step", MOE_PROM_GAUGE,
                            "Heartbeats (4 a second) from the live expert server that sent the "
                            "most since a step last completed.", (double)coord_beats_since_step(c));
    rc = rc ? rc : prom_one(&b, "moe_stall_heartbeats", MOE_PROM_GAUGE,
                            "stall_heartbeats: moe_heartbeats_since_step at which the cluster "
                            "counts as stalled.", c->cfg->stall_heartbeats);
    rc = rc ? rc : prom_one(&b, "moe_stalled", MOE_PROM_GAUGE,
                            "1 while the cluster loads or runs and moe_heartbeats_since_step >= "
                            "moe_stall_heartbeats (the dashboard's banner).", coord_stalled(c) ? 1 : 0);
    if (c->cfg->checkpoint_dir[0]) {
        const double ck = c->committed_at > 0 ? c->committed_at : c->born;
        rc = rc ? rc : prom_one(&b, "moe_checkpoint_age_seconds", MOE_PROM_GAUGE,
                                "Seconds since a cluster checkpoint was last committed (since the "
                                "coordinator started when none has been yet).",
                                ck > 0 && now > ck ? now - ck : 0);
    }
    return finish(&b, rc);
}
