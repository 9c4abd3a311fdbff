/* HTTP/1.1 server of the coordinator (see coord_http.h). Runs on the
 * coordinator's libuv loop thread; nothing here blocks or takes a lock.
 *
 * A connection is a uv_tcp_t plus a uv_timer_t for its deadlines. Bytes are
 * read into a per-connection buffer and fed to http_parser; the parser is
 * paused at the end of each request so that the handler runs outside the
 * parser's callbacks, and so that parsing can stop when too many response
 * bytes are queued (the unparsed rest waits in the buffer, reading stops, and
 * both resume as writes complete). A connection that must end with a final
 * answer (an error, `Connection: close`) "lingers": its write side is shut
 * down after the answer and input is read and discarded for a short while,
 * so that the client sees the answer instead of a reset. Connections are
 * freed only from their handles' close callbacks, never while one of their
 * own callbacks is still on the stack. */
#include "coord_http.h"

#include <assert.h>
#include <http_parser.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "moe_log.h"
#include "moe_err.h"

#define CH_READ_BYTES 16384         /* input buffer per connection */
#define CH_MAX_HEADERS 100          /* header lines per request */
#define CH_URL_MAX 65535            /* http_parser_parse_url's offsets are 16-bit */
#define CH_OUT_HIGH (4u << 20)      /* stop parsing above this many queued bytes */
#define CH_OUT_MAX_WRITES 64        /* ... or this many queued responses */
#define CH_LINGER_MS 2000           /* reading and discarding after a final answer */
#define CH_LINGER_BYTES (256u << 10)
#define CH_MAX_REJECTING 64         /* 503 answers in flight; beyond, plain close */
#define CH_LOG_PER_SECOND 10        /* bad-request log lines */
#define CH_DEFAULT_TYPE "text/plain; charset=utf-8"

static const struct coord_http_limits ch_default_limits = {
    .max_header_bytes = 16384,
    .max_body_bytes = 1u << 20,
    .max_connections = 256,
    .idle_timeout_ms = 30000,
    .request_timeout_ms = 10000,
};

/* A growable byte string, NUL-terminated, with a hard cap. */
struct ch_buf {
    char *p;
    size_t len, cap;
};

enum ch_phase {
    CH_READ,   /* reading and answering requests */
    CH_LINGER, /* final answer queued: write side shut after it, input discarded */
};

enum ch_field { CH_FIELD_OTHER, CH_FIELD_AUTH, CH_FIELD_EXPECT };

struct coord_http;

struct ch_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shut;
    http_parser parser;
    struct coord_http *srv;
    struct ch_conn *prev, *next;
    int closes_left;    /* handles whose close callback has not run */
    bool closing;       /* uv_close called; the callbacks free us */
    bool rejected;      /* over max_connections: answered 503 */
    bool reading;       /* uv_read_start in effect */
    bool held;          /* too much output queued: parsing and reading paused */
    bool peer_eof;      /* the client sent EOF (or an error ended reading) */
    bool in_request;    /* first byte of a request seen, last byte not yet */
    bool shut_done;     /* linger: shutdown completed, only discarding input */
    enum ch_phase phase;
    char peer[64];

    /* input not yet parsed: rbuf[roff, roff + rlen) */
    size_t roff, rlen;
    size_t linger_bytes;

    /* the request being parsed */
    struct ch_buf url, auth, body;
    char field[16];
    size_t field_len;    /* bytes of the current field name seen (may exceed field) */
    enum ch_field field_kind;
    bool in_value;       /* the last header callback was a value */
    bool head_done;      /* past the head: later fields are chunked trailers */
    bool have_auth;
    char expect[16];
    size_t expect_len;
    size_t head_bytes;
    int n_headers;
    int err_status;      /* set by a parser callback before it fails */
    const char *err_reason;
    /* copied out of the parser when a request completes */
    unsigned method;
    bool keep_alive, upgrade;

    /* deadlines (loop time, ms) */
    uint64_t req_start;   /* first byte of the current request */
    uint64_t quiet_since; /* connection made, or last write completed/started */
    uint64_t shut_since;  /* linger: shutdown completed */

    /* output queued in libuv */
    size_t out_bytes;
    int out_writes;

    char rbuf[CH_READ_BYTES];
};

struct coord_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_tcp_t spare; /* accepts and drops a connection when calloc fails */
    bool spare_busy;
    struct coord_http_limits lim;
    coord_http_handler handler;
    void *user;
    struct ch_conn *conns;
    int n_served, n_rejecting;
    struct coord_http_stats stats;
    bool closing, listener_closed;
    void (*done)(void *);
    void *done_arg;
    uint64_t log_window;
    int log_count;
    uint64_t log_suppressed;
};

/* A queued write: the response head (stored after the struct) and body. */
struct ch_write {
    uv_write_t req;
    struct ch_conn *conn;
    char *body;
    size_t bytes;
    char head[];
};

static void ch_close(struct ch_conn *c);
static void ch_feed(struct ch_conn *c);
static void ch_update_timer(struct ch_conn *c);
static void ch_update_reading(struct ch_conn *c);
static void ch_server_maybe_done(struct coord_http *s);

/* ------------------------------------------------------------------------- */
/* Small helpers */

/* Appends n bytes, keeping a NUL after them; MOE_ERR_RANGE beyond `max`. */
static int ch_buf_add(struct ch_buf *b, const char *data, size_t n, size_t max)
{
    if (n > max || b->len > max - n)
        return -1;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > max + 1)
            cap = max + 1;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void ch_buf_free(struct ch_buf *b)
{
    free(b->p);
    *b = (struct ch_buf){0};
}

/* Sanitised, rate-limited warning about one client (at most
 * CH_LOG_PER_SECOND lines a second per server; the rest are counted). */
static void ch_log_bad(struct ch_conn *c, int status, const char *reason, const char *sample,
                       size_t n)
{
    struct coord_http *s = c->srv;
    uint64_t now = uv_now(s->loop);
    if (now - s->log_window >= 1000) {
        if (s->log_suppressed)
            moe_warn("http: %llu more rejected requests not logged",
                     (unsigned long long)s->log_suppressed);
        s->log_window = now;
        s->log_count = 0;
        s->log_suppressed = 0;
    }
    if (s->log_count >= CH_LOG_PER_SECOND) {
        s->log_suppressed++;
        return;
    }
    s->log_count++;
    char text[160] = "";
    if (sample && n)
        moe_log_sanitize(text, sizeof text, sample, n > 48 ? 48 : n);
    moe_warn("http: %s: %d %s%s%s%s", c->peer, status, reason, text[0] ? " near \"" : "", text,
             text[0] ? "\"" : "");
}

/* ------------------------------------------------------------------------- */
/* Output */

static bool ch_out_full(const struct ch_conn *c)
{
    return c->out_bytes > CH_OUT_HIGH || c->out_writes >= CH_OUT_MAX_WRITES;
}

static bool ch_out_low(const struct ch_conn *c)
{
    return c->out_bytes <= CH_OUT_HIGH / 2 && c->out_writes <= CH_OUT_MAX_WRITES / 2;
}

static void ch_write_cb(uv_write_t *req, int status)
{
    struct ch_write *w = (struct ch_write *)req;
    struct ch_conn *c = w->conn;
    c->out_bytes -= w->bytes;
    c->out_writes--;
    free(w->body);
    free(w);
    if (c->closing)
        return; /* UV_ECANCELED from our own uv_close */
    struct coord_http *s = c->srv;
    if (status < 0) {
        s->stats.disconnects++;
        moe_debug("http: %s: write failed: %s", c->peer, uv_strerror(status));
        ch_close(c);
        return;
    }
    c->quiet_since = uv_now(s->loop);
    if (c->phase == CH_READ && c->peer_eof && c->out_writes == 0) {
        ch_close(c); /* the client half-closed and has all its answers */
        return;
    }
    if (c->held && ch_out_low(c)) {
        c->held = false;
        ch_feed(c); /* parses what waited, restarts reading, rearms the timer */
        return;
    }
    ch_update_timer(c);
}

/* Queues head + body (body: malloc'd, ownership taken, may be NULL). On a
 * refused write the connection is closed; callers check c->closing. */
static void ch_queue(struct ch_conn *c, const char *head, size_t head_len, char *body,
                     size_t body_len)
{
    struct ch_write *w = malloc(sizeof *w + head_len);
    if (!w) {
        free(body);
        ch_close(c);
        return;
    }
    memcpy(w->head, head, head_len);
    w->conn = c;
    w->body = body;
    w->bytes = head_len + (body ? body_len : 0);
    uv_buf_t bufs[2] = {uv_buf_init(w->head, (unsigned)head_len),
                        uv_buf_init(body, body ? (unsigned)body_len : 0)};
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, body && body_len ? 2 : 1,
                      ch_write_cb);
    if (rc != 0) {
        moe_debug("http: %s: write refused: %s", c->peer, uv_strerror(rc));
        free(body);
        free(w);
        ch_close(c);
        return;
    }
    if (c->out_writes == 0)
        c->quiet_since = uv_now(c->srv->loop);
    c->out_bytes += w->bytes;
    c->out_writes++;
}

static void ch_shutdown_cb(uv_shutdown_t *req, int status)
{
    struct ch_conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0 || c->peer_eof) {
        ch_close(c);
        return;
    }
    c->shut_done = true;
    c->shut_since = uv_now(c->srv->loop);
    ch_update_timer(c);
}

/* After the final answer: no more requests; shut the write side down once
 * the queued answers are out, and discard input until EOF or the linger
 * deadline. Closing at once could turn unread input into a reset that
 * destroys the answer before the client reads it. */
static void ch_linger(struct ch_conn *c)
{
    if (c->closing || c->phase == CH_LINGER)
        return;
    c->phase = CH_LINGER;
    c->in_request = false;
    c->held = false;
    c->rlen = c->roff = 0;
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, ch_shutdown_cb) != 0) {
        ch_close(c);
        return;
    }
    ch_update_reading(c);
    ch_update_timer(c);
}

/* Sends one response; `body` (malloc'd or NULL) is taken over. */
static void ch_respond(struct ch_conn *c, int status, const char *content_type, char *body,
                       size_t body_len, bool keep_alive, bool head_only)
{
    if (c->closing) {
        free(body);
        return;
    }
    if (status < 200 || status > 599) {
        moe_warn("http: handler returned status %d; sending 500", status);
        free(body);
        body = NULL;
        body_len = 0;
        status = 500;
        content_type = NULL;
    }
    if (!body)
        body_len = 0;
    if (body_len > (size_t)INT32_MAX) { /* uv_buf_t lengths are unsigned int */
        moe_warn("http: handler returned %zu bytes; sending 500", body_len);
        free(body);
        body = NULL;
        body_len = 0;
        status = 500;
        content_type = NULL;
    }
    if (!content_type || strpbrk(content_type, "\r\n")) {
        if (content_type)
            moe_warn("http: content type with a line break replaced");
        content_type = CH_DEFAULT_TYPE;
    }
    bool no_body = status == 204 || status == 304;
    if (no_body || head_only) {
        free(body);
        body = NULL;
    }
    char length[48] = "";
    if (!no_body)
        snprintf(length, sizeof length, "Content-Length: %zu\r\n", body_len);
    const char *reason = http_status_str((enum http_status)status);
    if (strcmp(reason, "<unknown>") == 0)
        reason = "Status";
    char fixed[512];
    const char *fmt = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%sConnection: %s\r\n"
                      "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\n";
    const char *conn = keep_alive ? "keep-alive" : "close";
    int n = snprintf(fixed, sizeof fixed, fmt, status, reason, content_type, length, conn);
    if (n < 0) {
        free(body);
        ch_close(c);
        return;
    }
    if ((size_t)n < sizeof fixed) {
        ch_queue(c, fixed, (size_t)n, body, body_len);
    } else {
        char *big = malloc((size_t)n + 1);
        if (!big) {
            free(body);
            ch_close(c);
            return;
        }
        snprintf(big, (size_t)n + 1, fmt, status, reason, content_type, length, conn);
        ch_queue(c, big, (size_t)n, body, body_len);
        free(big);
    }
    if (!c->closing && !keep_alive)
        ch_linger(c);
}

/* A request we will not serve: count, log, answer `status`, close. */
static void ch_fail(struct ch_conn *c, int status, const char *reason, const char *sample,
                    size_t n)
{
    if (c->closing)
        return;
    if (status != 408)
        c->srv->stats.bad_requests++;
    ch_log_bad(c, status, reason, sample, n);
    char *body = malloc(160);
    int len = body ? snprintf(body, 160, "%d %s\n", status, reason) : 0;
    if (len < 0)
        len = 0;
    if (len >= 160)
        len = 159;
    ch_respond(c, status, NULL, body, (size_t)len, false, false);
}

/* ------------------------------------------------------------------------- */
/* Parser callbacks: collect one request, checking every limit as bytes come */

static int ch_reject(struct ch_conn *c, int status, const char *reason)
{
    if (!c->err_status) {
        c->err_status = status;
        c->err_reason = reason;
    }
    return -1;
}

static int ch_count_head(struct ch_conn *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > c->srv->lim.max_header_bytes)
        return ch_reject(c, 431, "request header too large");
    return 0;
}

static int ch_on_message_begin(http_parser *p)
{
    struct ch_conn *c = p->data;
    c->url.len = c->auth.len = c->body.len = 0;
    c->field_len = 0;
    c->field_kind = CH_FIELD_OTHER;
    c->in_value = false;
    c->head_done = false;
    c->have_auth = false;
    c->expect_len = 0;
    c->head_bytes = 0;
    c->n_headers = 0;
    c->in_request = true;
    c->req_start = uv_now(c->srv->loop);
    return 0;
}

static int ch_on_url(http_parser *p, const char *at, size_t n)
{
    struct ch_conn *c = p->data;
    size_t max = c->srv->lim.max_header_bytes < CH_URL_MAX ? c->srv->lim.max_header_bytes
                                                           : CH_URL_MAX;
    if (ch_buf_add(&c->url, at, n, max))
        return ch_reject(c, 414, "request target too long");
    return ch_count_head(c, n);
}

static int ch_on_header_field(http_parser *p, const char *at, size_t n)
{
    struct ch_conn *c = p->data;
    if (ch_count_head(c, n))
        return -1;
    if (c->in_value || c->n_headers == 0) { /* a new header line starts */
        c->in_value = false;
        c->field_len = 0;
        if (++c->n_headers > CH_MAX_HEADERS)
            return ch_reject(c, 431, "too many header lines");
    }
    for (size_t i = 0; i < n; i++, c->field_len++)
        if (c->field_len < sizeof c->field)
            c->field[c->field_len] = at[i];
    return 0;
}

static bool ch_field_is(const struct ch_conn *c, const char *name)
{
    size_t len = strlen(name);
    return c->field_len == len && strncasecmp(c->field, name, len) == 0;
}

static int ch_on_header_value(http_parser *p, const char *at, size_t n)
{
    struct ch_conn *c = p->data;
    if (ch_count_head(c, n))
        return -1;
    if (!c->in_value) { /* first piece of this value: classify its field */
        c->in_value = true;
        c->field_kind = CH_FIELD_OTHER;
        if (c->head_done) {
            /* A trailer after a chunked body: counted, never taken as a
             * credential or an expectation. */
        } else if (ch_field_is(c, "authorization")) {
            if (c->have_auth)
                return ch_reject(c, 400, "repeated Authorization header");
            c->have_auth = true;
            c->field_kind = CH_FIELD_AUTH;
        } else if (ch_field_is(c, "expect")) {
            c->field_kind = CH_FIELD_EXPECT;
            c->expect_len = 0;
        }
    }
    if (c->field_kind == CH_FIELD_AUTH) {
        if (ch_buf_add(&c->auth, at, n, c->srv->lim.max_header_bytes))
            return ch_reject(c, 431, "request header too large");
    } else if (c->field_kind == CH_FIELD_EXPECT) {
        for (size_t i = 0; i < n; i++, c->expect_len++)
            if (c->expect_len < sizeof c->expect)
                c->expect[c->expect_len] = at[i];
    }
    return 0;
}

static int ch_method_served(unsigned m)
{
    switch (m) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_POST:
    case HTTP_PUT:
    case HTTP_DELETE:
    case HTTP_PATCH:
    case HTTP_OPTIONS:
        return 1;
    default:
        return 0;
    }
}

static int ch_on_headers_complete(http_parser *p)
{
    struct ch_conn *c = p->data;
    c->head_done = true;
    if (p->http_major != 1)
        return ch_reject(c, 505, "HTTP version not supported");
    if (!ch_method_served(p->method))
        return ch_reject(c, 501, "method not implemented");
    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_length = p->content_length != UINT64_MAX && !chunked;
    if (has_length && p->content_length > c->srv->lim.max_body_bytes)
        return ch_reject(c, 413, "request body too large");
    /* "Expect: 100-continue": a client waits for this before the body. */
    if (c->expect_len == 12 && strncasecmp(c->expect, "100-continue", 12) == 0 &&
        p->http_minor >= 1 && (chunked || (has_length && p->content_length > 0))) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        ch_queue(c, cont, sizeof cont - 1, NULL, 0);
        if (c->closing)
            return ch_reject(c, 500, "connection closed");
    }
    return 0;
}

static int ch_on_body(http_parser *p, const char *at, size_t n)
{
    struct ch_conn *c = p->data;
    if (ch_buf_add(&c->body, at, n, c->srv->lim.max_body_bytes))
        return ch_reject(c, 413, "request body too large");
    return 0;
}

/* The request is whole: pause, so that http_parser_execute returns right
 * after it and ch_feed runs the handler outside the parser. */
static int ch_on_message_complete(http_parser *p)
{
    struct ch_conn *c = p->data;
    c->in_request = false;
    c->method = p->method;
    c->keep_alive = http_should_keep_alive(p) != 0;
    c->upgrade = p->upgrade != 0;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings ch_settings = {
    .on_message_begin = ch_on_message_begin,
    .on_url = ch_on_url,
    .on_header_field = ch_on_header_field,
    .on_header_value = ch_on_header_value,
    .on_headers_complete = ch_on_headers_complete,
    .on_body = ch_on_body,
    .on_message_complete = ch_on_message_complete,
};

/* ------------------------------------------------------------------------- */
/* Requests */

static void ch_trim(struct ch_buf *b)
{
    size_t i = 0;
    while (i < b->len && (b->p[i] == ' ' || b->p[i] == '\t'))
        i++;
    size_t j = b->len;
    while (j > i && (b->p[j - 1] == ' ' || b->p[j - 1] == '\t'))
        j--;
    memmove(b->p, b->p + i, j - i);
    b->len = j - i;
    b->p[b->len] = '\0';
}

/* Runs the handler on the request just parsed and queues its answer. */
static void ch_dispatch(struct ch_conn *c)
{
    struct coord_http *s = c->srv;
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (c->url.len == 0 ||
        http_parser_parse_url(c->url.p, c->url.len, c->method == HTTP_CONNECT, &u) != 0) {
        ch_fail(c, 400, "bad request target", c->url.p, c->url.len);
        return;
    }
    /* Cut path and query in place: each is followed by '?', '#' or the end,
     * and the query comes after the path. */
    char *url = c->url.p;
    const char *path = "/", *query = "";
    if (u.field_set & (1u << UF_PATH)) {
        path = url + u.field_data[UF_PATH].off;
        url[u.field_data[UF_PATH].off + u.field_data[UF_PATH].len] = '\0';
    }
    if (u.field_set & (1u << UF_QUERY)) {
        query = url + u.field_data[UF_QUERY].off;
        url[u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len] = '\0';
    }
    if (c->have_auth)
        ch_trim(&c->auth);
    struct coord_http_request req = {
        .method = http_method_str((enum http_method)c->method),
        .path = path,
        .query = query,
        .authorization = c->have_auth ? (c->auth.p ? c->auth.p : "") : NULL,
        .body = c->body.len ? c->body.p : "",
        .body_len = c->body.len,
    };
    struct coord_http_response resp = {.status = 200};
    s->stats.requests++;
    s->handler(s->user, &req, &resp);
    uv_update_time(s->loop); /* the handler may have taken a while */
    if (c->closing) {        /* the handler closed the server */
        free(resp.body);
        return;
    }
    bool keep = c->keep_alive && !c->upgrade && !s->closing;
    ch_respond(c, resp.status, resp.content_type, resp.body, resp.body_len, keep,
               c->method == HTTP_HEAD);
}

/* Parses buffered input, one request at a time, until it is used up, the
 * connection ends, or the queued output is too large (then `held`). */
static void ch_feed(struct ch_conn *c)
{
    while (!c->closing && c->phase == CH_READ && c->rlen > 0) {
        if (ch_out_full(c))
            break;
        const char *at = c->rbuf + c->roff;
        size_t n = http_parser_execute(&c->parser, &ch_settings, at, c->rlen);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (n > c->rlen)
            n = c->rlen;
        c->roff += n;
        c->rlen -= n;
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            ch_dispatch(c);
            continue;
        }
        if (e != HPE_OK) {
            int status = c->err_status;
            const char *reason = c->err_reason;
            if (!status) {
                status = e == HPE_HEADER_OVERFLOW ? 431 : 400;
                reason = http_errno_description(e);
            }
            ch_fail(c, status, reason, at + n, c->rlen);
            break;
        }
        if (c->rlen > 0) { /* stopped without a request end: not expected */
            ch_fail(c, 400, "unparsed input", at + n, c->rlen);
            break;
        }
    }
    if (c->closing)
        return;
    if (c->rlen == 0)
        c->roff = 0;
    c->held = c->phase == CH_READ && ch_out_full(c);
    ch_update_reading(c);
    ch_update_timer(c);
}

/* ------------------------------------------------------------------------- */
/* Reading, deadlines, closing */

static void ch_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct ch_conn *c = h->data;
    (void)hint;
    /* Reading stops whenever unparsed input is held, so the buffer is free. */
    assert(c->rlen == 0);
    *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void ch_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct ch_conn *c = st->data;
    (void)buf;
    if (nread == 0 || c->closing)
        return;
    struct coord_http *s = c->srv;
    if (nread < 0) { /* EOF or error; libuv has stopped reading */
        c->reading = false;
        c->peer_eof = true;
        if (c->phase == CH_LINGER) {
            if (c->shut_done || c->out_writes == 0)
                ch_close(c);
            return;
        }
        if (c->in_request || (nread != UV_EOF && c->out_writes > 0)) {
            s->stats.disconnects++;
            ch_close(c);
        } else if (c->out_writes == 0) {
            ch_close(c); /* a normal end between requests */
        } /* else: half-closed; ch_write_cb closes after the last answer */
        return;
    }
    if (c->phase == CH_LINGER) {
        c->linger_bytes += (size_t)nread;
        if (c->linger_bytes > CH_LINGER_BYTES)
            ch_close(c);
        return;
    }
    c->roff = 0;
    c->rlen = (size_t)nread;
    ch_feed(c);
}

static void ch_update_reading(struct ch_conn *c)
{
    if (c->closing)
        return;
    bool want = !c->peer_eof && (c->phase == CH_LINGER || !c->held);
    if (want && !c->reading) {
        int rc = uv_read_start((uv_stream_t *)&c->tcp, ch_alloc_cb, ch_read_cb);
        if (rc != 0) {
            moe_debug("http: %s: cannot read: %s", c->peer, uv_strerror(rc));
            ch_close(c);
            return;
        }
        c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void ch_timer_cb(uv_timer_t *t)
{
    struct ch_conn *c = t->data;
    struct coord_http *s = c->srv;
    if (c->closing)
        return;
    if (c->phase == CH_LINGER) {
        if (c->out_writes > 0)
            s->stats.timeouts++; /* the client did not read its final answer */
        ch_close(c);
    } else if (c->in_request) {
        s->stats.timeouts++;
        ch_fail(c, 408, "request timeout", NULL, 0);
    } else if (c->out_writes > 0) {
        s->stats.timeouts++;
        ch_log_bad(c, 0, "client not reading its answers", NULL, 0);
        ch_close(c);
    } else {
        s->stats.idle_closed++;
        ch_close(c);
    }
}

/* One timer per connection, always set to the deadline of the current
 * state: the request deadline while a request is arriving (fixed at its
 * first byte, so trickling bytes do not extend it), the linger deadline
 * after the shutdown, else idle_timeout after the last write activity. */
static void ch_update_timer(struct ch_conn *c)
{
    if (c->closing)
        return;
    const struct coord_http *s = c->srv;
    uint64_t now = uv_now(s->loop), deadline;
    if (c->phase == CH_LINGER && c->shut_done) {
        uint64_t linger = s->lim.idle_timeout_ms < CH_LINGER_MS ? s->lim.idle_timeout_ms
                                                                : CH_LINGER_MS;
        deadline = c->shut_since + linger;
    } else if (c->phase == CH_READ && c->in_request) {
        deadline = c->req_start + s->lim.request_timeout_ms;
    } else {
        deadline = c->quiet_since + s->lim.idle_timeout_ms;
    }
    uv_timer_start(&c->timer, ch_timer_cb, deadline > now ? deadline - now : 0, 0);
}

static void ch_conn_close_cb(uv_handle_t *h)
{
    struct ch_conn *c = h->data;
    if (--c->closes_left > 0)
        return;
    struct coord_http *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->rejected)
        s->n_rejecting--;
    else
        s->n_served--;
    s->stats.open_connections--;
    ch_buf_free(&c->url);
    ch_buf_free(&c->auth);
    ch_buf_free(&c->body);
    free(c);
    ch_server_maybe_done(s);
}

/* Closes both handles; pending writes complete with UV_ECANCELED first, and
 * the memory goes in the last close callback. Idempotent. */
static void ch_close(struct ch_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, ch_conn_close_cb);
    uv_close((uv_handle_t *)&c->timer, ch_conn_close_cb);
}

/* ------------------------------------------------------------------------- */
/* Accepting */

static void ch_spare_close_cb(uv_handle_t *h)
{
    struct coord_http *s = h->data;
    s->spare_busy = false;
    ch_server_maybe_done(s);
}

/* Out of memory: accept into the spare handle and drop the connection, so
 * that libuv keeps accepting. */
static void ch_drop_connection(struct coord_http *s)
{
    if (s->spare_busy) {
        moe_error("http: out of memory; a connection waits in the backlog");
        return;
    }
    uv_tcp_init(s->loop, &s->spare);
    s->spare.data = s;
    s->spare_busy = true;
    (void)uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&s->spare);
    uv_close((uv_handle_t *)&s->spare, ch_spare_close_cb);
}

static void ch_peer_name(struct ch_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    snprintf(c->peer, sizeof c->peer, "?");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    char ip[48] = "?";
    int port = 0;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        uv_ip4_name(a, ip, sizeof ip);
        port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(a, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    }
    snprintf(c->peer, sizeof c->peer, "%s:%d", ip, port);
}

static void ch_on_connection(uv_stream_t *listener, int status)
{
    struct coord_http *s = listener->data;
    if (status < 0) {
        moe_warn("http: accept failed: %s", uv_strerror(status));
        return;
    }
    if (s->closing)
        return;
    struct ch_conn *c = calloc(1, sizeof *c);
    if (!c) {
        ch_drop_connection(s);
        return;
    }
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->closes_left = 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->stats.open_connections++;
    c->rejected = s->n_served >= s->lim.max_connections;
    if (c->rejected)
        s->n_rejecting++;
    else
        s->n_served++;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->quiet_since = uv_now(s->loop);
    int rc = uv_accept(listener, (uv_stream_t *)&c->tcp);
    if (rc != 0) {
        moe_warn("http: accept failed: %s", uv_strerror(rc));
        ch_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    ch_peer_name(c);
    if (c->rejected) {
        s->stats.rejected++;
        if (s->n_rejecting > CH_MAX_REJECTING) {
            ch_close(c); /* a flood: not even an answer */
            return;
        }
        ch_log_bad(c, 503, "too many connections", NULL, 0);
        char *body = strdup("503 too many connections\n");
        ch_respond(c, 503, NULL, body, body ? strlen(body) : 0, false, false);
        return;
    }
    ch_update_reading(c);
    ch_update_timer(c);
}

/* ------------------------------------------------------------------------- */
/* The server */

static void ch_server_maybe_done(struct coord_http *s)
{
    if (!s->closing || !s->listener_closed || s->conns || s->spare_busy)
        return;
    void (*done)(void *) = s->done;
    void *arg = s->done_arg;
    free(s);
    if (done)
        done(arg);
}

static void ch_listener_close_cb(uv_handle_t *h)
{
    struct coord_http *s = h->data;
    s->listener_closed = true;
    ch_server_maybe_done(s);
}

coord_http_t *coord_http_new(uv_loop_t *loop, const char *host, int port,
                             const struct coord_http_limits *lim, coord_http_handler h,
                             void *user, char *err, size_t errlen)
{
    assert(loop && h && err && errlen >= 1);
    err[0] = '\0';
    if (!host)
        host = "127.0.0.1";
    if (port < 0 || port > 65535) {
        moe_err_set(err, errlen, "http: port %d out of range", port);
        return NULL;
    }
    struct sockaddr_storage addr;
    int rc = strchr(host, ':') ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr)
                               : uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
    if (rc != 0) {
        moe_err_set(err, errlen, "http: \"%s\" is not an IP address", host);
        return NULL;
    }
    /* libuv writes with write(2): a client that resets the connection
     * would kill the process with SIGPIPE unless it is ignored. A handler
     * the program installed is left alone. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    struct coord_http *s = calloc(1, sizeof *s);
    if (!s) {
        moe_err_set(err, errlen, "http: out of memory");
        return NULL;
    }
    s->loop = loop;
    s->handler = h;
    s->user = user;
    s->lim = lim ? *lim : ch_default_limits;
    if (!s->lim.max_header_bytes)
        s->lim.max_header_bytes = ch_default_limits.max_header_bytes;
    if (!s->lim.max_body_bytes)
        s->lim.max_body_bytes = ch_default_limits.max_body_bytes;
    if (s->lim.max_connections <= 0)
        s->lim.max_connections = ch_default_limits.max_connections;
    if (!s->lim.idle_timeout_ms)
        s->lim.idle_timeout_ms = ch_default_limits.idle_timeout_ms;
    if (!s->lim.request_timeout_ms)
        s->lim.request_timeout_ms = ch_default_limits.request_timeout_ms;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    /* libuv reports some bind errors (EADDRINUSE) only at listen. */
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, ch_on_connection);
    if (rc != 0) {
        moe_err_set(err, errlen, "http: cannot listen on %s port %d: %s", host, port,
                 uv_strerror(rc));
        s->closing = true;
        uv_close((uv_handle_t *)&s->listener, ch_listener_close_cb);
        return NULL;
    }
    return s;
}

int coord_http_port(const coord_http_t *s)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    int rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    if (rc != 0)
        return rc;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return UV_EAFNOSUPPORT;
}

void coord_http_close(coord_http_t **sp, void (*done)(void *), void *arg)
{
    if (!sp || !*sp)
        return;
    struct coord_http *s = *sp;
    *sp = NULL;
    if (s->closing)
        return;
    s->closing = true;
    s->done = done;
    s->done_arg = arg;
    uv_close((uv_handle_t *)&s->listener, ch_listener_close_cb);
    /* ch_close only marks and calls uv_close; unlinking waits for the close
     * callbacks, so the list stays intact while we walk it. */
    for (struct ch_conn *c = s->conns; c; c = c->next)
        ch_close(c);
}

void coord_http_stats(const coord_http_t *s, struct coord_http_stats *out)
{
    *out = s->stats;
}
