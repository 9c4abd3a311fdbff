/* moe-coordinator: the coordinator daemon. Wiring only: configuration, the
 * libuv loop (ZeroMQ through moe_zloop, HTTP through coord_http, a liveness
 * timer, SIGTERM/SIGINT), and the HTTP routes:
 *   GET  /                 the live dashboard (rows routed and Load per expert,
 *                          their heatmap over the run, the loss curve, states)
 *   GET  /metrics          Prometheus text format (?experts=1: per-expert series
 *                          whatever metrics_max_experts says)
 *   GET  /api/v1/cluster   servers, workers, cluster statistics (JSON)
 *   GET  /api/v1/experts   per-expert rows routed, Importance, Load (JSON)
 *   GET  /api/v1/history   per-expert rows routed (?field=load: Load) over
 *                          the run, downsampled into columns (JSON)
 *   POST /api/v1/checkpoint          checkpoint at the end of the next step
 *   POST /api/v1/drain?server=ID     move server ID's experts away, then it exits
 *        (both need `Authorization: Bearer <http_token>`)
 * SIGTERM or SIGINT: a checkpoint at the next step boundary, then every
 * member is told to stop and the coordinator exits 0 (a second signal stops
 * it within a second: exit 1, naming them, if some member did not hear). When the cluster fails for good, it tells every member why
 * and exits 1 with that sentence. */
#include <inttypes.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <jansson.h>

#include "coord.h"
#include "moe_err.h"
#include "coord_http.h"
#include "moe_config.h"
#include "moe_log.h"
#include "moe_zloop.h"
#include "moe_options.h"
#include "moe_sec.h"

extern const char coord_dashboard_html[];
extern const size_t coord_dashboard_html_len;

/* One rendered page, reused until the coordinator's generation changes:
 * 200 scrapers then cost one render per step, not one per request. */
struct render_cache {
    uint64_t generation;
    char *body;           /* NULL: nothing cached */
    size_t len;
};

enum { PAGE_METRICS, PAGE_METRICS_ALL, PAGE_CLUSTER, PAGE_EXPERTS, PAGE_HISTORY,
       PAGE_HISTORY_LOAD, N_PAGES };

struct app {
    struct render_cache cache[N_PAGES];
    struct moe_options cfg;
    char token[256]; /* the bearer token of the mutating endpoints ("" none) */
    uv_loop_t loop;
    coord_t *coord;
    coord_http_t *http;
    moe_zloop_sock_t *zs;
    uv_timer_t timer;
    uv_signal_t sig_term, sig_int;
    int signals, exit_code;
    double exit_at; /* when to stop serving (0: not yet decided) */
    double exit_by; /* a second signal's deadline (0: none) */
};

static double now_sec(uv_loop_t *loop) { return (double)uv_now(loop) / 1000.0; }

static void on_zmq(void *sock, void *user)
{
    (void)sock;
    struct app *a = user;
    coord_handle_one(a->coord, now_sec(&a->loop));
}

static void on_timer(uv_timer_t *t)
{
    struct app *a = t->data;
    const double now = now_sec(&a->loop);
    coord_tick(a->coord, now);
    int code = 0;
    char why[1100];
    /* Every member has been told; half a second more of answers, so that
     * none misses the news (answers sent just before the socket closes
     * can be lost), then exit. A second signal sets a deadline of its own
     * (exit_by); a member not told by then makes the exit status 1. */
    const bool done = coord_should_exit(a->coord, now, &code, why, sizeof why);
    if (done && a->exit_at == 0)
        a->exit_at = now + 0.5;
    const bool due = (a->exit_at > 0 && now >= a->exit_at) || (a->exit_by > 0 && now >= a->exit_by);
    if (!due)
        return;
    if (done) {
        a->exit_code = code;
        if (code)
            fprintf(stderr, "moe-coordinator: error: %s\n", why);
    } else {
        char who[512];
        coord_untold(a->coord, who, sizeof who);
        fprintf(stderr, "moe-coordinator: error: stopped by a second signal before %s heard of "
                        "the stop (they go on waiting for the coordinator)\n", who);
        a->exit_code = 1;
    }
    uv_stop(&a->loop);
}

static void respond(struct coord_http_response *resp, int status, const char *type, char *body)
{
    resp->status = status;
    resp->content_type = type;
    resp->body = body;
    resp->body_len = body ? strlen(body) : 0;
}

static char *copy(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d)
        memcpy(d, s, n + 1);
    return d;
}

/* A malloc'd copy of the page (the HTTP server frees response bodies),
 * rendered again only if the coordinator changed since the cached one. */
static char *cached_page(struct app *a, int page)
{
    struct render_cache *rc = &a->cache[page];
    const bool history = page == PAGE_HISTORY || page == PAGE_HISTORY_LOAD;
    /* the history changes only when a step is recorded */
    const uint64_t gen = history ? (uint64_t)(coord_history_last_step(coord_stats_history(
                                       coord_stats(a->coord))) + 1)
                                 : coord_generation(a->coord);
    if (!rc->body || rc->generation != gen) {
        char *fresh = page == PAGE_METRICS       ? coord_render_metrics(a->coord, false)
                      : page == PAGE_METRICS_ALL ? coord_render_metrics(a->coord, true)
                      : page == PAGE_CLUSTER     ? coord_render_cluster_json(a->coord)
                      : history ? coord_render_history_json(a->coord, page == PAGE_HISTORY_LOAD)
                                                 : coord_render_experts_json(a->coord);
        if (!fresh)
            return NULL;
        free(rc->body);
        rc->body = fresh;
        rc->len = strlen(fresh);
        rc->generation = gen;
    }
    char *out = malloc(rc->len + 1);
    if (out)
        memcpy(out, rc->body, rc->len + 1);
    return out;
}

/* `status` with {"error": sentence}. */
static void respond_error(struct coord_http_response *resp, int status, const char *why)
{
    json_t *o = json_pack("{ss}", "error", why);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    respond(resp, body ? status : 500, "application/json", body);
}

/* 200 with `ok`, or 409 with the sentence as JSON (the request is well
 * formed but the cluster cannot do it: an unknown or dead server, no
 * checkpoint_dir, the last server). */
static void respond_result(struct coord_http_response *resp, int rc, const char *why,
                           const char *ok)
{
    if (rc == 0)
        respond(resp, 200, "application/json", copy(ok));
    else
        respond_error(resp, 409, why);
}

/* The value of `name` in a query string ("a=1&server=7") as an unsigned
 * number: digits only, at most max. 0, or -1 when absent, -2 when malformed
 * or out of range. */
static int query_uint(const char *query, const char *name, uint64_t max, uint64_t *out)
{
    const size_t nl = strlen(name);
    for (const char *p = query; p && *p;) {
        const char *amp = strchr(p, '&');
        const size_t len = amp ? (size_t)(amp - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            const char *v = p + nl + 1;
            const size_t vl = len - nl - 1;
            if (vl == 0 || vl > 20)
                return -2;
            uint64_t x = 0;
            for (size_t i = 0; i < vl; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return -2;
                const uint64_t d = (uint64_t)(v[i] - '0');
                if (x > (max - d) / 10)
                    return -2;
                x = x * 10 + d;
            }
            *out = x;
            return 0;
        }
        p = amp ? amp + 1 : NULL;
    }
    return -1;
}

/* /metrics: the cached page of the state, then what changes with time. */
static char *metrics_page(struct app *a, bool all_experts)
{
    char *state = cached_page(a, all_experts ? PAGE_METRICS_ALL : PAGE_METRICS);
    char *live = coord_render_metrics_live(a->coord, now_sec(&a->loop));
    char *out = NULL;
    if (state && live) {
        const size_t n = strlen(state), m = strlen(live);
        out = realloc(state, n + m + 1);
        if (out) {
            memcpy(out + n, live, m + 1);
            state = NULL;
        }
    }
    free(state);
    free(live);
    return out;
}

static void on_http(void *user, const struct coord_http_request *req,
                    struct coord_http_response *resp)
{
    struct app *a = user;
    const bool get = strcmp(req->method, "GET") == 0, post = strcmp(req->method, "POST") == 0;
    if (get && strcmp(req->path, "/") == 0) {
        char *page = malloc(coord_dashboard_html_len + 1);
        if (page) {
            memcpy(page, coord_dashboard_html, coord_dashboard_html_len);
            page[coord_dashboard_html_len] = '\0';
        }
        respond(resp, page ? 200 : 500, "text/html; charset=utf-8", page);
    } else if (get && strcmp(req->path, "/metrics") == 0) {
        uint64_t all = 0;
        if (query_uint(req->query, "experts", 1, &all) == -2) {
            respond_error(resp, 400, "experts takes 0 or 1");
            return;
        }
        char *m = metrics_page(a, all == 1);
        respond(resp, m ? 200 : 500, "text/plain; version=0.0.4; charset=utf-8", m);
    } else if (get && strcmp(req->path, "/api/v1/cluster") == 0) {
        char *j = cached_page(a, PAGE_CLUSTER);
        respond(resp, j ? 200 : 500, "application/json", j);
    } else if (get && strcmp(req->path, "/api/v1/experts") == 0) {
        char *j = cached_page(a, PAGE_EXPERTS);
        respond(resp, j ? 200 : 500, "application/json", j);
    } else if (get && strcmp(req->path, "/api/v1/history") == 0) {
        const char *q = req->query ? req->query : "";
        const bool load = strcmp(q, "field=load") == 0;
        if (!load && q[0] && strcmp(q, "field=rows_routed") != 0) {
            respond_error(resp, 400, "history takes field=rows_routed (the default) or field=load");
            return;
        }
        char *j = cached_page(a, load ? PAGE_HISTORY_LOAD : PAGE_HISTORY);
        respond(resp, j ? 200 : 500, "application/json", j);
    } else if (post && (strcmp(req->path, "/api/v1/checkpoint") == 0 ||
                        strcmp(req->path, "/api/v1/drain") == 0)) {
        char want[300], why[300];
        snprintf(want, sizeof want, "Bearer %s", a->token);
        if (!a->token[0] || !req->authorization || !moe_sec_equal(req->authorization, want))
            respond(resp, 401, "application/json",
                    copy("{\"error\":\"a valid bearer token (http_token) is required\"}"));
        else if (strcmp(req->path, "/api/v1/checkpoint") == 0)
            respond_result(resp, coord_request_checkpoint(a->coord, why, sizeof why), why,
                           "{\"ok\":true,\"message\":\"checkpoint at the end of the next step\"}");
        else {
            /* ?server=ID, a server id (0 .. 2^32-1) */
            uint64_t id = 0;
            if (query_uint(req->query, "server", UINT32_MAX, &id) != 0)
                respond_error(resp, 400, "drain needs ?server=ID, a server id from 0 to 4294967295 "
                                         "(see moectl status)");
            else
                respond_result(resp, coord_request_drain(a->coord, id, why, sizeof why), why,
                               "{\"ok\":true,\"message\":\"the server leaves at the next step boundary\"}");
        }
    } else if (!get && !post) {
        respond(resp, 405, "application/json", copy("{\"error\":\"method not allowed\"}"));
    } else {
        respond(resp, 404, "application/json", copy("{\"error\":\"not found\"}"));
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct app *a = s->data;
    if (++a->signals > 1) {
        /* Up to a second still answers the servers' heartbeats (4 a
         * second) with the stop: without it a server that had not heard yet
         * would wait coordinator_wait_s for a coordinator that is gone. */
        moe_warn("signal %d again: stopping within 1 s (the servers hear of the stop at their "
                 "next heartbeat)", signum);
        coord_stop_now(a->coord, "a second signal");
        if (a->exit_by == 0)
            a->exit_by = now_sec(&a->loop) + 1.0;
        return;
    }
    char why[96];
    snprintf(why, sizeof why, "the coordinator got signal %d (%s)", signum,
             signum == SIGTERM ? "SIGTERM" : signum == SIGINT ? "SIGINT" : "?");
    coord_request_stop(a->coord, why);
}

static int split_host_port(const char *hp, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(hp, ':');
    if (!colon || colon == hp || (size_t)(colon - hp) >= cap)
        return -1;
    memcpy(host, hp, (size_t)(colon - hp));
    host[colon - hp] = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535)
        return -1;
    *port = (int)p;
    return 0;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static const char summary[] =
    "Coordinator of the sparsely-gated Mixture-of-Experts trainer: membership and\n"
    "heartbeats of expert servers and workers, the global Importance/Load statistics\n"
    "of every step (summed over workers in rank order), and monitoring over HTTP\n"
    "(--http): a dashboard at /, /metrics (Prometheus), /api/v1/cluster and\n"
    "/api/v1/experts, /api/v1/history. Shares its configuration file with moe-worker and moe-server.";

static const char coord_also[] =
    "The coordinator also reads the training configuration (the model, training and expert\n"
    "options of moe-worker --help) to check that every member that registers agrees with it:\n"
    "give it the same --config file as the workers and servers. The other options of\n"
    "moe-worker and moe-server are accepted too.";

/* a SIGTERM before main's handlers waits for them (moe_options_signals_ready) */
MOE_HOLD_SIGNALS_AT_LOAD

int main(int argc, char **argv)
{
    static struct app a;
    char err[1024];
    moe_log_set_name("moe-coordinator");
    int rc = moe_config_parse_args(moe_options_table, moe_options_count, &a.cfg, argc, argv,
                                   MOE_FOR_COORDINATOR, a.cfg.given, a.cfg.flagged, err, sizeof err);
    if (rc == 1) {
        moe_config_print_help(moe_options_table, moe_options_count, stdout, "moe-coordinator",
                              summary, MOE_FOR_COORDINATOR, coord_also);
        return 0;
    }
    if (rc >= 0)
        moe_options_derive(&a.cfg);
    if (rc < 0 || (rc = moe_options_check(&a.cfg, MOE_FOR_COORDINATOR, err, sizeof err))) {
        fprintf(stderr, "moe-coordinator: error: %s\n", err);
        return 2;
    }
    /* Log level, values the table cannot check, the BLAS kernels (this may
     * re-execute the process): before any thread of ours starts. */
    if ((rc = moe_options_start(&a.cfg, argc, argv, err, sizeof err))) {
        fprintf(stderr, "moe-coordinator: error: %s\n", err);
        return rc == MOE_ERR_CONFIG ? 2 : 1;
    }
    char host[200];
    int port;
    if (moe_sec_secret(a.cfg.http_token, a.cfg.http_token_file, "MOE_HTTP_TOKEN", a.token,
                       sizeof a.token, err, sizeof err)) {
        fprintf(stderr, "moe-coordinator: error: %s\n", err);
        return 2;
    }
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--http-token", 12) == 0 && strncmp(argv[i], "--http-token-file", 17))
            moe_warn("--http-token on the command line is visible to every user of this machine "
                     "(ps): prefer --http-token-file FILE or the MOE_HTTP_TOKEN variable");
    if (split_host_port(a.cfg.http, host, sizeof host, &port)) {
        fprintf(stderr, "moe-coordinator: error: --http: expected HOST:PORT, got \"%s\"\n",
                a.cfg.http);
        return 2;
    }
    a.coord = coord_new(&a.cfg, err, sizeof err);
    if (!a.coord) {
        fprintf(stderr, "moe-coordinator: error: %s\n", err);
        return 1;
    }
    uv_loop_init(&a.loop);
    struct coord_http_limits lim = {16384, 65536, 512, 30000, 10000};
    a.http = coord_http_new(&a.loop, host, port, &lim, on_http, &a, err, sizeof err);
    if (!a.http) {
        fprintf(stderr, "moe-coordinator: error: %s\n", err);
        coord_destroy(&a.coord);
        return 1;
    }
    a.zs = moe_zloop_add(&a.loop, coord_socket(a.coord), 64, on_zmq, &a);
    uv_timer_init(&a.loop, &a.timer);
    a.timer.data = &a;
    uv_timer_start(&a.timer, on_timer, 100, 100);
    uv_signal_init(&a.loop, &a.sig_term);
    uv_signal_init(&a.loop, &a.sig_int);
    a.sig_term.data = a.sig_int.data = &a;
    uv_signal_start(&a.sig_term, on_signal, SIGTERM);
    uv_signal_start(&a.sig_int, on_signal, SIGINT);
    moe_options_signals_ready();
    signal(SIGPIPE, SIG_IGN);
    printf("moe-coordinator: dashboard at http://%s:%d/ , statistics on %s\n", host,
           coord_http_port(a.http), a.cfg.coordinator);
    fflush(stdout);
    uv_run(&a.loop, UV_RUN_DEFAULT);

    struct coord_http_stats hs;
    coord_http_stats(a.http, &hs);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("moe-coordinator: stopped: %llu HTTP requests (%llu bad, %llu timed out, %llu disconnects), "
             "%llu rejected messages, CPU %.2f s, peak RSS %.1f MB\n",
             (unsigned long long)hs.requests, (unsigned long long)hs.bad_requests,
             (unsigned long long)hs.timeouts, (unsigned long long)hs.disconnects,
             (unsigned long long)coord_errors(a.coord),
             (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec * 1e-6, (double)ru.ru_maxrss / 1024.0);
    fflush(stdout);
    coord_http_close(&a.http, NULL, NULL);
    moe_zloop_remove(&a.zs);
    uv_walk(&a.loop, close_walk, NULL);
    uv_run(&a.loop, UV_RUN_DEFAULT);
    uv_loop_close(&a.loop);
    for (int i = 0; i < N_PAGES; i++)
        free(a.cache[i].body);
    coord_destroy(&a.coord);
    return a.exit_code;
}
