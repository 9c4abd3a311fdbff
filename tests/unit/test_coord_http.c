/* Unit tests of the coordinator's HTTP server (server/coordinator/coord_http.c).
 *
 * The server runs on 127.0.0.1, port 0, in a uv loop on a second thread;
 * the test thread talks to it through raw sockets, and every wait is bounded
 * (poll with a deadline). Statistics are read on the loop thread through a
 * uv_async request. Each test ends by closing the server from the loop
 * thread and checking that the done callback ran and uv_loop_close found no
 * handle left, so the sanitizer build also proves that nothing leaks.
 *
 * Cases: GET with and without keep-alive (HTTP/1.1, 1.0, HEAD, 204),
 * pipelining, POST bodies (Content-Length, chunked, 100-continue) with the
 * Authorization header, query splitting, 404 from the handler, a table of
 * malformed requests, a slow client cut by the request timeout, idle
 * connections closed, 200 concurrent clients x 5 requests, an 8 MB answer
 * abandoned or never read, max_connections + 1, back-pressure with many
 * pipelined large answers, half-closed clients, and closing the server with
 * clients in every state, including from inside the handler. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "coord_http.h"

Suite *test_coord_http_suite(void);

#define BIG_BYTES (8u << 20)
#define MEDIUM_BYTES (256u << 10)
#define WAIT_MS 5000

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------------- */
/* The server thread */

struct hs {
    uv_loop_t loop;
    uv_async_t async;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    coord_http_t *srv;
    int port;
    /* under mu */
    bool want_stats, stats_ready, want_close, closed_by_handler;
    struct coord_http_stats stats;
    /* loop thread; read by the test thread after the join */
    bool done_called;
    int loop_close_rc;
};

static void hs_done(void *arg)
{
    struct hs *h = arg;
    h->done_called = true;
}

static char *dup_str(const char *s)
{
    char *p = strdup(s);
    ck_assert_ptr_nonnull(p);
    return p;
}

static void set_body(struct coord_http_response *resp, char *body)
{
    resp->body = body;
    resp->body_len = strlen(body);
}

static char *fill(size_t n)
{
    char *p = malloc(n);
    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('a' + i % 26);
    return p;
}

/* The routes the tests use. Runs on the loop thread. */
static void hs_handler(void *user, const struct coord_http_request *req,
                       struct coord_http_response *resp)
{
    struct hs *h = user;
    char tmp[4096];
    if (strcmp(req->path, "/hello") == 0) {
        set_body(resp, dup_str("hello\n"));
    } else if (strcmp(req->path, "/echo") == 0) {
        snprintf(tmp, sizeof tmp, "method=%s path=%s query=%s auth=%s len=%zu body=%.*s",
                 req->method, req->path, req->query,
                 req->authorization ? req->authorization : "(none)", req->body_len,
                 (int)(req->body_len < 1000 ? req->body_len : 1000), req->body);
        set_body(resp, dup_str(tmp));
    } else if (strcmp(req->path, "/big") == 0) {
        resp->body = fill(BIG_BYTES);
        resp->body_len = BIG_BYTES;
        resp->content_type = "application/octet-stream";
    } else if (strcmp(req->path, "/medium") == 0) {
        resp->body = fill(MEDIUM_BYTES);
        resp->body_len = MEDIUM_BYTES;
    } else if (strcmp(req->path, "/nocontent") == 0) {
        resp->status = 204;
    } else if (strcmp(req->path, "/json") == 0) {
        resp->content_type = "application/json";
        set_body(resp, dup_str("{\"ok\":true}"));
    } else if (strcmp(req->path, "/slow") == 0) {
        sleep_ms(30);
        set_body(resp, dup_str("slow\n"));
    } else if (strcmp(req->path, "/shutdown") == 0) {
        pthread_mutex_lock(&h->mu);
        h->closed_by_handler = true;
        pthread_mutex_unlock(&h->mu);
        coord_http_close(&h->srv, hs_done, h);
        uv_close((uv_handle_t *)&h->async, NULL);
        set_body(resp, dup_str("bye\n"));
    } else if (strncmp(req->path, "/c/", 3) == 0) {
        set_body(resp, dup_str(req->path));
    } else {
        resp->status = 404;
        set_body(resp, dup_str("not found\n"));
    }
}

static void hs_async_cb(uv_async_t *a)
{
    struct hs *h = a->data;
    pthread_mutex_lock(&h->mu);
    if (h->want_stats && h->srv) {
        coord_http_stats(h->srv, &h->stats);
        h->want_stats = false;
        h->stats_ready = true;
        pthread_cond_broadcast(&h->cv);
    }
    if (h->want_close && !h->closed_by_handler) {
        coord_http_close(&h->srv, hs_done, h);
        uv_close((uv_handle_t *)&h->async, NULL);
    }
    pthread_mutex_unlock(&h->mu);
}

static void *hs_main(void *arg)
{
    struct hs *h = arg;
    uv_run(&h->loop, UV_RUN_DEFAULT);
    h->loop_close_rc = uv_loop_close(&h->loop);
    return NULL;
}

static void hs_start(struct hs *h, const struct coord_http_limits *lim)
{
    memset(h, 0, sizeof *h);
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    ck_assert_int_eq(uv_loop_init(&h->loop), 0);
    ck_assert_int_eq(uv_async_init(&h->loop, &h->async, hs_async_cb), 0);
    h->async.data = h;
    char err[256];
    h->srv = coord_http_new(&h->loop, NULL, 0, lim, hs_handler, h, err, sizeof err);
    ck_assert_msg(h->srv != NULL, "%s", err);
    h->port = coord_http_port(h->srv);
    ck_assert_int_gt(h->port, 0);
    ck_assert_int_eq(pthread_create(&h->thread, NULL, hs_main, h), 0);
}

static void hs_stats(struct hs *h, struct coord_http_stats *out)
{
    pthread_mutex_lock(&h->mu);
    h->want_stats = true;
    h->stats_ready = false;
    pthread_mutex_unlock(&h->mu);
    uv_async_send(&h->async);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 5;
    pthread_mutex_lock(&h->mu);
    while (!h->stats_ready)
        if (pthread_cond_timedwait(&h->cv, &h->mu, &dl) == ETIMEDOUT)
            break;
    bool ok = h->stats_ready;
    *out = h->stats;
    pthread_mutex_unlock(&h->mu);
    ck_assert_msg(ok, "the loop thread did not answer within 5 s");
}

/* Polls the statistics until `cond` holds (bounded). */
#define HS_WAIT(h, st, cond)                                                       \
    do {                                                                           \
        uint64_t hs_dl_ = now_ms() + WAIT_MS;                                      \
        for (;;) {                                                                 \
            hs_stats((h), &(st));                                                  \
            if (cond)                                                              \
                break;                                                             \
            ck_assert_msg(now_ms() < hs_dl_, "timed out waiting for: %s", #cond); \
            sleep_ms(10);                                                          \
        }                                                                          \
    } while (0)

/* Closes the server from its loop thread (unless the handler did) and
 * checks that every handle is gone. */
static void hs_stop(struct hs *h)
{
    pthread_mutex_lock(&h->mu);
    h->want_close = true;
    bool by_handler = h->closed_by_handler;
    pthread_mutex_unlock(&h->mu);
    if (!by_handler)
        uv_async_send(&h->async);
    pthread_join(h->thread, NULL);
    ck_assert(h->done_called);
    ck_assert_int_eq(h->loop_close_rc, 0);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
}

/* ------------------------------------------------------------------------- */
/* The client side: raw sockets and a small response reader */

struct cl {
    int fd;
    char *buf;
    size_t len, cap;
};

struct resp {
    int status;
    long content_length; /* -1: absent */
    char connection[32], cache_control[32], content_type[64];
    char *body;
    size_t body_len;
};

static void cl_open(struct cl *c, int port)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(c->fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
}

static void cl_close(struct cl *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

/* Sends everything, or returns -1 once the server has closed. */
static int cl_send(struct cl *c, const void *p, size_t n)
{
    const char *q = p;
    while (n > 0) {
        ssize_t w = send(c->fd, q, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        q += w;
        n -= (size_t)w;
    }
    return 0;
}

static void cl_send_str(struct cl *c, const char *s)
{
    ck_assert_int_eq(cl_send(c, s, strlen(s)), 0);
}

/* Reads what is there within timeout_ms: >0 bytes, 0 EOF, -1 reset, -2 timeout. */
static ssize_t cl_fill(struct cl *c, int timeout_ms)
{
    if (c->cap - c->len < 65536) {
        size_t cap = c->cap ? c->cap * 2 : 131072;
        while (cap - c->len < 65536)
            cap *= 2;
        c->buf = realloc(c->buf, cap);
        ck_assert_ptr_nonnull(c->buf);
        c->cap = cap;
    }
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int r = poll(&pfd, 1, timeout_ms < 0 ? 0 : timeout_ms);
    if (r == 0)
        return -2;
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n < 0)
        return -1;
    c->len += (size_t)n;
    return n;
}

static const char *find_head_end(const char *b, size_t n)
{
    for (size_t i = 0; i + 4 <= n; i++)
        if (memcmp(b + i, "\r\n\r\n", 4) == 0)
            return b + i;
    return NULL;
}

static void copy_value(char *dst, size_t cap, const char *v, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

/* 1: a whole response is in b (its size in *used), 0: more bytes needed. */
static int resp_parse(const char *b, size_t n, bool head, struct resp *r, size_t *used)
{
    const char *at = find_head_end(b, n);
    if (!at)
        return 0;
    memset(r, 0, sizeof *r);
    r->content_length = -1;
    /* Parse a NUL-terminated copy of the head: b is not a string. */
    size_t hlen = (size_t)(at - b) + 4;
    char *hd = malloc(hlen + 1);
    ck_assert_ptr_nonnull(hd);
    memcpy(hd, b, hlen);
    hd[hlen] = '\0';
    const char *end = hd + hlen - 4;
    ck_assert_int_eq(sscanf(hd, "HTTP/1.1 %d", &r->status), 1);
    const char *line = strstr(hd, "\r\n") + 2;
    while (line < end + 2) {
        const char *eol = strstr(line, "\r\n");
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        ck_assert_ptr_nonnull(colon);
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        size_t name_len = (size_t)(colon - line), vlen = (size_t)(eol - v);
        if (name_len == 14 && strncasecmp(line, "Content-Length", 14) == 0)
            r->content_length = strtol(v, NULL, 10);
        else if (name_len == 10 && strncasecmp(line, "Connection", 10) == 0)
            copy_value(r->connection, sizeof r->connection, v, vlen);
        else if (name_len == 13 && strncasecmp(line, "Cache-Control", 13) == 0)
            copy_value(r->cache_control, sizeof r->cache_control, v, vlen);
        else if (name_len == 12 && strncasecmp(line, "Content-Type", 12) == 0)
            copy_value(r->content_type, sizeof r->content_type, v, vlen);
        line = eol + 2;
    }
    free(hd);
    size_t blen = (head || r->content_length < 0) ? 0 : (size_t)r->content_length;
    if (n < hlen + blen)
        return 0;
    r->body = malloc(blen + 1);
    ck_assert_ptr_nonnull(r->body);
    memcpy(r->body, b + hlen, blen);
    r->body[blen] = '\0';
    r->body_len = blen;
    *used = hlen + blen;
    return 1;
}

/* 0 with a response, -1 the connection ended first, -2 timeout. */
static int cl_read_resp_ex(struct cl *c, struct resp *r, int timeout_ms, bool head)
{
    uint64_t dl = now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        size_t used = 0;
        if (c->len && resp_parse(c->buf, c->len, head, r, &used)) {
            memmove(c->buf, c->buf + used, c->len - used);
            c->len -= used;
            return 0;
        }
        uint64_t t = now_ms();
        if (t >= dl)
            return -2;
        ssize_t n = cl_fill(c, (int)(dl - t));
        if (n == 0 || n == -1)
            return -1;
    }
}

static void cl_read_resp(struct cl *c, struct resp *r)
{
    int rc = cl_read_resp_ex(c, r, WAIT_MS, false);
    ck_assert_msg(rc == 0, "no response (%d)", rc);
}

/* True if the server closes the connection within timeout_ms; bytes that
 * arrive meanwhile are dropped. */
static bool cl_wait_closed(struct cl *c, int timeout_ms)
{
    uint64_t dl = now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t t = now_ms();
        if (t >= dl)
            return false;
        c->len = 0;
        ssize_t n = cl_fill(c, (int)(dl - t));
        if (n == 0 || n == -1)
            return true;
    }
}

static void resp_free(struct resp *r)
{
    free(r->body);
    r->body = NULL;
}

/* One request on an open connection; checks status and body. */
static void expect_get(struct cl *c, const char *path, int status, const char *body)
{
    char req[512];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path);
    cl_send_str(c, req);
    struct resp r;
    cl_read_resp(c, &r);
    ck_assert_int_eq(r.status, status);
    if (body)
        ck_assert_str_eq(r.body, body);
    ck_assert_str_eq(r.connection, "keep-alive");
    ck_assert_str_eq(r.cache_control, "no-store");
    resp_free(&r);
}

static const struct coord_http_limits test_limits = {
    .max_header_bytes = 4096,
    .max_body_bytes = 65536,
    .max_connections = 256,
    .idle_timeout_ms = 5000,
    .request_timeout_ms = 5000,
};

/* ------------------------------------------------------------------------- */
/* Requests and answers */

START_TEST(http_get_keep_alive_and_close)
{
    struct hs h;
    hs_start(&h, &test_limits);
    struct cl c;
    cl_open(&c, h.port);
    struct resp r;
    for (int i = 0; i < 3; i++) {
        cl_send_str(&c, "GET /hello HTTP/1.1\r\nHost: test\r\n\r\n");
        cl_read_resp(&c, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_str_eq(r.body, "hello\n");
        ck_assert_int_eq(r.content_length, 6);
        ck_assert_str_eq(r.connection, "keep-alive");
        ck_assert_str_eq(r.cache_control, "no-store");
        ck_assert_str_eq(r.content_type, "text/plain; charset=utf-8");
        resp_free(&r);
    }
    /* HEAD: the length of the GET answer, no body (the next answer parses). */
    cl_send_str(&c, "HEAD /hello HTTP/1.1\r\n\r\n");
    ck_assert_int_eq(cl_read_resp_ex(&c, &r, WAIT_MS, true), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_int_eq(r.content_length, 6);
    resp_free(&r);
    /* 204: no body and no length. */
    cl_send_str(&c, "GET /nocontent HTTP/1.1\r\n\r\n");
    cl_read_resp(&c, &r);
    ck_assert_int_eq(r.status, 204);
    ck_assert_int_eq(r.content_length, -1);
    resp_free(&r);
    expect_get(&c, "/json", 200, "{\"ok\":true}");
    /* Connection: close is honoured. */
    cl_send_str(&c, "GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
    cl_read_resp(&c, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.connection, "close");
    resp_free(&r);
    ck_assert(cl_wait_closed(&c, WAIT_MS));
    cl_close(&c);
    /* HTTP/1.0 closes by default, stays open when asked. */
    cl_open(&c, h.port);
    cl_send_str(&c, "GET /hello HTTP/1.0\r\n\r\n");
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.connection, "close");
    resp_free(&r);
    ck_assert(cl_wait_closed(&c, WAIT_MS));
    cl_close(&c);
    cl_open(&c, h.port);
    for (int i = 0; i < 2; i++) {
        cl_send_str(&c, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        cl_read_resp(&c, &r);
        ck_assert_str_eq(r.connection, "keep-alive");
        resp_free(&r);
    }
    cl_close(&c);
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.requests, 10);
    ck_assert_uint_eq(st.bad_requests, 0);
    ck_assert_uint_eq(st.disconnects, 0);
    ck_assert_uint_eq(st.timeouts, 0);
    hs_stop(&h);
}
END_TEST

START_TEST(http_pipelined_in_order)
{
    struct hs h;
    hs_start(&h, &test_limits);
    struct cl c;
    cl_open(&c, h.port);
    cl_send_str(&c, "GET /c/1 HTTP/1.1\r\n\r\n"
                    "POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                    "GET /c/3 HTTP/1.1\r\n\r\n");
    struct resp r;
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.body, "/c/1");
    resp_free(&r);
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.body, "method=POST path=/echo query= auth=(none) len=3 body=abc");
    resp_free(&r);
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.body, "/c/3");
    ck_assert_str_eq(r.connection, "keep-alive");
    resp_free(&r);
    /* 100 more in one write, the last one closing; a bad request after a
     * good one gets its 400 after the good answer. */
    char *all = malloc(100 * 64);
    size_t n = 0;
    for (int i = 0; i < 100; i++)
        n += (size_t)sprintf(all + n, "GET /c/%d HTTP/1.1\r\n%s\r\n", i,
                             i == 99 ? "Connection: close\r\n" : "");
    ck_assert_int_eq(cl_send(&c, all, n), 0);
    free(all);
    for (int i = 0; i < 100; i++) {
        char want[32];
        snprintf(want, sizeof want, "/c/%d", i);
        cl_read_resp(&c, &r);
        ck_assert_str_eq(r.body, want);
        ck_assert_str_eq(r.connection, i == 99 ? "close" : "keep-alive");
        resp_free(&r);
    }
    ck_assert(cl_wait_closed(&c, WAIT_MS));
    cl_close(&c);
    cl_open(&c, h.port);
    cl_send_str(&c, "GET /c/7 HTTP/1.1\r\n\r\nGARBAGE\r\n\r\nGET /c/8 HTTP/1.1\r\n\r\n");
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.body, "/c/7");
    resp_free(&r);
    cl_read_resp(&c, &r);
    ck_assert_int_eq(r.status, 400);
    ck_assert_str_eq(r.connection, "close");
    resp_free(&r);
    ck_assert(cl_wait_closed(&c, WAIT_MS));
    cl_close(&c);
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.requests, 104);
    ck_assert_uint_eq(st.bad_requests, 1);
    hs_stop(&h);
}
END_TEST

START_TEST(http_post_body_and_authorization)
{
    struct hs h;
    hs_start(&h, &test_limits);
    struct cl c;
    cl_open(&c, h.port);
    struct resp r;
    cl_send_str(&c, "POST /echo?x=1 HTTP/1.1\r\nHost: t\r\nAuthorization:  Bearer tok123  \r\n"
                    "Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world");
    cl_read_resp(&c, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "method=POST path=/echo query=x=1 auth=Bearer tok123 len=11 "
                             "body=hello world");
    resp_free(&r);
    /* The header name is case-insensitive; the value split over two sends. */
    cl_send_str(&c, "PUT /echo HTTP/1.1\r\nauthorization: Bas");
    sleep_ms(20);
    cl_send_str(&c, "ic QQ==\r\nContent-Length: 0\r\n\r\n");
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.body, "method=PUT path=/echo query= auth=Basic QQ== len=0 body=");
    resp_free(&r);
    /* Chunked, with a trailer that must not count as a credential. */
    cl_send_str(&c, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n6\r\n world\r\n0\r\nAuthorization: sneaky\r\n\r\n");
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.body, "method=POST path=/echo query= auth=(none) len=11 body=hello world");
    resp_free(&r);
    /* A body with a NUL byte keeps its length. */
    static const char nul_req[] = "POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\na\0b";
    ck_assert_int_eq(cl_send(&c, nul_req, sizeof nul_req - 1), 0);
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.body, "method=POST path=/echo query= auth=(none) len=3 body=a");
    resp_free(&r);
    /* Expect: 100-continue gets the interim answer before the body is sent. */
    cl_send_str(&c, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    uint64_t dl = now_ms() + WAIT_MS;
    while (c.len < 25 && now_ms() < dl) {
        ssize_t got = cl_fill(&c, 100);
        ck_assert(got > 0 || got == -2);
    }
    ck_assert_uint_ge(c.len, 25);
    ck_assert_int_eq(memcmp(c.buf, "HTTP/1.1 100 Continue\r\n\r\n", 25), 0);
    memmove(c.buf, c.buf + 25, c.len - 25);
    c.len -= 25;
    cl_send_str(&c, "body");
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.body, "method=POST path=/echo query= auth=(none) len=4 body=body");
    resp_free(&r);
    cl_close(&c);
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.requests, 5);
    ck_assert_uint_eq(st.bad_requests, 0);
    hs_stop(&h);
}
END_TEST

START_TEST(http_query_split_and_404)
{
    struct hs h;
    hs_start(&h, &test_limits);
    struct cl c;
    cl_open(&c, h.port);
    static const struct {
        const char *target, *want;
    } cases[] = {
        {"/echo?a=1&b=2", "method=GET path=/echo query=a=1&b=2"},
        {"/echo?a=1#frag", "method=GET path=/echo query=a=1"},
        {"/echo?", "method=GET path=/echo query="},
        {"/echo", "method=GET path=/echo query="},
        {"/echo?x=%20y", "method=GET path=/echo query=x=%20y"},
        {"http://example.com:81/echo?q=1", "method=GET path=/echo query=q=1"},
    };
    struct resp r;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char req[256];
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\n\r\n", cases[i].target);
        cl_send_str(&c, req);
        cl_read_resp(&c, &r);
        ck_assert_int_eq(r.status, 200);
        ck_assert_msg(strncmp(r.body, cases[i].want, strlen(cases[i].want)) == 0,
                      "%s gave %s", cases[i].target, r.body);
        resp_free(&r);
    }
    /* 404 from the handler keeps the connection. */
    cl_send_str(&c, "GET /nope HTTP/1.1\r\n\r\n");
    cl_read_resp(&c, &r);
    ck_assert_int_eq(r.status, 404);
    ck_assert_str_eq(r.body, "not found\n");
    ck_assert_str_eq(r.connection, "keep-alive");
    resp_free(&r);
    expect_get(&c, "/hello", 200, "hello\n");
    cl_close(&c);
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.requests, 8);
    ck_assert_uint_eq(st.bad_requests, 0);
    hs_stop(&h);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* Malformed requests: a 4xx, Connection: close, the connection closed */

struct bad_case {
    const char *name;
    const char *head; /* sent first */
    size_t pad;       /* then this many 'a' bytes */
    const char *tail; /* then this */
    size_t tail_len;  /* 0: strlen(tail) */
    int status;
};

static const struct bad_case bad_cases[] = {
    {"garbage", "\x01\x02\x03garbage\r\n\r\n", 0, NULL, 0, 400},
    {"header over the limit", "GET / HTTP/1.1\r\nX-Big: ", 5000, "\r\n\r\n", 0, 431},
    {"request target over the limit", "GET /", 5000, " HTTP/1.1\r\n\r\n", 0, 414},
    {"body over the limit (length)", "POST /echo HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", 0,
     NULL, 0, 413},
    {"body over the limit (chunked)", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      "20000\r\n",
     70000, NULL, 0, 413},
    {"invalid method token", "G@T / HTTP/1.1\r\n\r\n", 0, NULL, 0, 400},
    {"unknown method", "BREW /pot HTTP/1.1\r\n\r\n", 0, NULL, 0, 400},
    {"method not served", "CONNECT example.com:443 HTTP/1.1\r\n\r\n", 0, NULL, 0, 501},
    {"bad content length", "POST /echo HTTP/1.1\r\nContent-Length: 12a\r\n\r\n", 0, NULL, 0, 400},
    {"two content lengths", "POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     0, NULL, 0, 400},
    {"length and chunked", "POST /echo HTTP/1.1\r\nContent-Length: 5\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n",
     0, NULL, 0, 400},
    {"bad chunk size", "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 0, NULL, 0,
     400},
    {"unsupported transfer coding", "POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 0,
     NULL, 0, 400},
    {"HTTP/2.0 request line", "GET / HTTP/2.0\r\n\r\n", 0, NULL, 0, 505},
    {"HTTP/0.9 request line", "GET /\r\n\r\n", 0, NULL, 0, 505},
    {"repeated Authorization", "GET / HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n", 0,
     NULL, 0, 400},
    {"NUL in a header value", "GET / HTTP/1.1\r\nX-A: a", 0, "\0b\r\n\r\n", 6, 400},
    {"header line without a colon", "GET / HTTP/1.1\r\nNoColon\r\n\r\n", 0, NULL, 0, 400},
    {"bare LF garbage after method", "GET\n\n", 0, NULL, 0, 400},
};
#define N_BAD_CASES (sizeof bad_cases / sizeof bad_cases[0])

static void send_bad_case(struct cl *c, const struct bad_case *b)
{
    /* The server may answer and close before everything is sent. */
    if (cl_send(c, b->head, strlen(b->head)) != 0)
        return;
    if (b->pad) {
        char *pad = malloc(b->pad);
        memset(pad, 'a', b->pad);
        int rc = cl_send(c, pad, b->pad);
        free(pad);
        if (rc != 0)
            return;
    }
    if (b->tail)
        (void)cl_send(c, b->tail, b->tail_len ? b->tail_len : strlen(b->tail));
}

START_TEST(http_malformed_table)
{
    struct hs h;
    hs_start(&h, &test_limits);
    for (size_t i = 0; i < N_BAD_CASES; i++) {
        const struct bad_case *b = &bad_cases[i];
        struct cl c;
        cl_open(&c, h.port);
        send_bad_case(&c, b);
        struct resp r;
        int rc = cl_read_resp_ex(&c, &r, WAIT_MS, false);
        ck_assert_msg(rc == 0, "%s: no answer (%d)", b->name, rc);
        ck_assert_msg(r.status == b->status, "%s: status %d, want %d", b->name, r.status,
                      b->status);
        ck_assert_msg(strcmp(r.connection, "close") == 0, "%s: not closing", b->name);
        ck_assert_str_eq(r.cache_control, "no-store");
        resp_free(&r);
        ck_assert_msg(cl_wait_closed(&c, WAIT_MS), "%s: connection left open", b->name);
        cl_close(&c);
    }
    /* The server still serves. */
    struct cl c;
    cl_open(&c, h.port);
    expect_get(&c, "/hello", 200, "hello\n");
    cl_close(&c);
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.bad_requests, N_BAD_CASES);
    ck_assert_uint_eq(st.requests, 1);
    ck_assert_uint_eq(st.timeouts, 0);
    hs_stop(&h);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* Deadlines */

START_TEST(http_slow_client_cut)
{
    struct coord_http_limits lim = test_limits;
    lim.request_timeout_ms = 400;
    struct hs h;
    hs_start(&h, &lim);
    struct cl c;
    cl_open(&c, h.port);
    const char *req = "GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Padding: 0123456789\r\n\r\n";
    uint64_t t0 = now_ms();
    bool answered = false;
    for (size_t i = 0; req[i] && !answered; i++) {
        if (cl_send(&c, req + i, 1) != 0)
            break;
        struct pollfd pfd = {.fd = c.fd, .events = POLLIN};
        answered = poll(&pfd, 1, 50) > 0; /* one byte per 50 ms */
    }
    struct resp r;
    ck_assert_int_eq(cl_read_resp_ex(&c, &r, WAIT_MS, false), 0);
    uint64_t dt = now_ms() - t0;
    ck_assert_int_eq(r.status, 408);
    ck_assert_str_eq(r.connection, "close");
    resp_free(&r);
    ck_assert(cl_wait_closed(&c, WAIT_MS));
    ck_assert_msg(dt >= 350 && dt < 2000, "cut after %llu ms", (unsigned long long)dt);
    cl_close(&c);
    /* A fast request on the same server is unaffected. */
    cl_open(&c, h.port);
    expect_get(&c, "/slow", 200, "slow\n");
    cl_close(&c);
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.timeouts, 1);
    ck_assert_uint_eq(st.bad_requests, 0);
    ck_assert_uint_eq(st.requests, 1);
    hs_stop(&h);
}
END_TEST

START_TEST(http_idle_closed)
{
    struct coord_http_limits lim = test_limits;
    lim.idle_timeout_ms = 300;
    struct hs h;
    hs_start(&h, &lim);
    /* Busy every 100 ms for a second: never idle long enough. */
    struct cl busy;
    cl_open(&busy, h.port);
    for (int i = 0; i < 10; i++) {
        expect_get(&busy, "/hello", 200, "hello\n");
        sleep_ms(100);
    }
    /* One request, then silence; and a connection that never sends. */
    struct cl after, silent;
    cl_open(&after, h.port);
    cl_open(&silent, h.port);
    uint64_t t0 = now_ms();
    expect_get(&after, "/hello", 200, "hello\n");
    ck_assert(cl_wait_closed(&after, WAIT_MS));
    ck_assert(cl_wait_closed(&silent, WAIT_MS));
    uint64_t dt = now_ms() - t0;
    ck_assert_msg(dt >= 250 && dt < 2000, "closed after %llu ms", (unsigned long long)dt);
    ck_assert(cl_wait_closed(&busy, WAIT_MS));
    cl_close(&busy);
    cl_close(&after);
    cl_close(&silent);
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.idle_closed, 3);
    ck_assert_uint_eq(st.timeouts, 0);
    ck_assert_uint_eq(st.disconnects, 0);
    ck_assert_uint_eq(st.requests, 11);
    hs_stop(&h);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* Load */

#define N_CLIENTS 200
#define N_PER_CLIENT 5

START_TEST(http_concurrent_clients)
{
    struct hs h;
    hs_start(&h, &test_limits);
    static struct cl cs[N_CLIENTS];
    int done[N_CLIENTS] = {0};
    for (int i = 0; i < N_CLIENTS; i++) {
        cl_open(&cs[i], h.port);
        fcntl(cs[i].fd, F_SETFL, fcntl(cs[i].fd, F_GETFL) | O_NONBLOCK);
    }
    uint64_t t0 = now_ms();
    char req[128];
    for (int i = 0; i < N_CLIENTS; i++) {
        snprintf(req, sizeof req, "GET /c/%d/0 HTTP/1.1\r\nHost: t\r\n\r\n", i);
        cl_send_str(&cs[i], req);
    }
    int finished = 0, answers = 0;
    uint64_t dl = t0 + 30000;
    static struct pollfd pfd[N_CLIENTS];
    while (finished < N_CLIENTS) {
        ck_assert_msg(now_ms() < dl, "only %d answers after 30 s", answers);
        int np = 0;
        int idx[N_CLIENTS];
        for (int i = 0; i < N_CLIENTS; i++) {
            if (done[i] == N_PER_CLIENT)
                continue;
            pfd[np] = (struct pollfd){.fd = cs[i].fd, .events = POLLIN};
            idx[np++] = i;
        }
        ck_assert_int_ge(poll(pfd, (nfds_t)np, 1000), 0);
        for (int k = 0; k < np; k++) {
            if (!(pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            int i = idx[k];
            ssize_t n = cl_fill(&cs[i], 0);
            ck_assert_msg(n > 0 || n == -2, "client %d lost its connection", i);
            struct resp r;
            size_t used;
            while (done[i] < N_PER_CLIENT && resp_parse(cs[i].buf, cs[i].len, false, &r, &used)) {
                memmove(cs[i].buf, cs[i].buf + used, cs[i].len - used);
                cs[i].len -= used;
                char want[64];
                snprintf(want, sizeof want, "/c/%d/%d", i, done[i]);
                ck_assert_int_eq(r.status, 200);
                ck_assert_str_eq(r.body, want);
                resp_free(&r);
                answers++;
                if (++done[i] == N_PER_CLIENT) {
                    finished++;
                } else {
                    snprintf(req, sizeof req, "GET /c/%d/%d HTTP/1.1\r\nHost: t\r\n\r\n", i,
                             done[i]);
                    cl_send_str(&cs[i], req);
                }
            }
        }
    }
    uint64_t dt = now_ms() - t0;
    fprintf(stderr, "coord_http: %d requests over %d concurrent connections in %llu ms "
                    "(%.0f requests/s)\n",
            answers, N_CLIENTS, (unsigned long long)dt, answers * 1000.0 / (double)(dt ? dt : 1));
    struct coord_http_stats st;
    hs_stats(&h, &st);
    ck_assert_uint_eq(st.open_connections, N_CLIENTS);
    for (int i = 0; i < N_CLIENTS; i++)
        cl_close(&cs[i]);
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.requests, N_CLIENTS * N_PER_CLIENT);
    ck_assert_uint_eq(st.bad_requests + st.timeouts + st.disconnects + st.rejected, 0);
    hs_stop(&h);
}
END_TEST

/* An 8 MB answer: abandoned unread, abandoned after a little, and never
 * read by a client that stays connected (cut at the idle timeout). */
START_TEST(http_big_answer_abandoned)
{
    struct coord_http_limits lim = test_limits;
    lim.idle_timeout_ms = 500;
    struct hs h;
    hs_start(&h, &lim);
    struct cl c;
    struct coord_http_stats st;
    cl_open(&c, h.port);
    cl_send_str(&c, "GET /big HTTP/1.1\r\n\r\n");
    HS_WAIT(&h, st, st.requests == 1);
    cl_close(&c); /* unread data: the kernel sends a reset */
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.disconnects, 1);

    cl_open(&c, h.port);
    cl_send_str(&c, "GET /big HTTP/1.1\r\n\r\n");
    size_t got = 0;
    while (got < 100000) {
        ssize_t n = cl_fill(&c, WAIT_MS);
        ck_assert_int_gt(n, 0);
        got += (size_t)n;
    }
    cl_close(&c);
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.disconnects, 2);

    /* Connected, never reading: the send stalls and the deadline ends it. */
    cl_open(&c, h.port);
    int small = 4096;
    setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    cl_send_str(&c, "GET /big HTTP/1.1\r\n\r\n");
    HS_WAIT(&h, st, st.timeouts == 1);
    HS_WAIT(&h, st, st.open_connections == 0);
    cl_close(&c);

    /* And a whole one, read to the end, still arrives intact. */
    cl_open(&c, h.port);
    cl_send_str(&c, "GET /big HTTP/1.1\r\n\r\n");
    struct resp r;
    cl_read_resp(&c, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, BIG_BYTES);
    ck_assert_str_eq(r.content_type, "application/octet-stream");
    for (size_t i = 0; i < BIG_BYTES; i += 4099)
        ck_assert_int_eq(r.body[i], 'a' + (int)(i % 26));
    resp_free(&r);
    cl_close(&c);
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.requests, 4);
    ck_assert_uint_eq(st.disconnects, 2);
    ck_assert_uint_eq(st.timeouts, 1);
    hs_stop(&h);
}
END_TEST

START_TEST(http_max_connections)
{
    struct coord_http_limits lim = test_limits;
    lim.max_connections = 4;
    struct hs h;
    hs_start(&h, &lim);
    struct cl cs[4], extra;
    for (int i = 0; i < 4; i++) {
        cl_open(&cs[i], h.port);
        expect_get(&cs[i], "/hello", 200, "hello\n");
    }
    cl_open(&extra, h.port);
    struct resp r;
    cl_read_resp(&extra, &r);
    ck_assert_int_eq(r.status, 503);
    ck_assert_str_eq(r.connection, "close");
    resp_free(&r);
    ck_assert(cl_wait_closed(&extra, WAIT_MS));
    cl_close(&extra);
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.open_connections == 4);
    ck_assert_uint_eq(st.rejected, 1);
    /* A slot freed is a slot usable again. */
    cl_close(&cs[0]);
    HS_WAIT(&h, st, st.open_connections == 3);
    cl_open(&cs[0], h.port);
    expect_get(&cs[0], "/hello", 200, "hello\n");
    for (int i = 0; i < 4; i++)
        expect_get(&cs[i], "/c/x", 200, "/c/x");
    for (int i = 0; i < 4; i++)
        cl_close(&cs[i]);
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.rejected, 1);
    ck_assert_uint_eq(st.requests, 9);
    ck_assert_uint_eq(st.bad_requests, 0);
    hs_stop(&h);
}
END_TEST

/* 80 pipelined requests, every other one for 256 KB (10 MB in all), sent
 * at once while the client reads nothing for a while: the server must stop
 * parsing (it queues at most a few MB), then resume in order. */
#define N_PIPELINED 80
START_TEST(http_backpressure_pipelined)
{
    struct hs h;
    hs_start(&h, &test_limits);
    struct cl c;
    cl_open(&c, h.port);
    char reqs[N_PIPELINED * 64];
    size_t n = 0;
    for (int i = 0; i < N_PIPELINED; i++)
        n += (size_t)sprintf(reqs + n, "GET /%s HTTP/1.1\r\n\r\n", i % 2 ? "medium" : "c/m");
    ck_assert_int_eq(cl_send(&c, reqs, n), 0);
    sleep_ms(300);
    struct coord_http_stats st;
    hs_stats(&h, &st);
    ck_assert_uint_lt(st.requests, N_PIPELINED); /* held back, waiting for the reader */
    for (int i = 0; i < N_PIPELINED; i++) {
        struct resp r;
        cl_read_resp(&c, &r);
        ck_assert_int_eq(r.status, 200);
        if (i % 2)
            ck_assert_uint_eq(r.body_len, MEDIUM_BYTES);
        else
            ck_assert_str_eq(r.body, "/c/m");
        resp_free(&r);
    }
    expect_get(&c, "/hello", 200, "hello\n");
    cl_close(&c);
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.requests, N_PIPELINED + 1);
    hs_stop(&h);
}
END_TEST

/* The client sends its request and shuts down its side: it still gets the
 * whole answer, then EOF. */
START_TEST(http_half_closed_client)
{
    struct hs h;
    hs_start(&h, &test_limits);
    struct cl c;
    cl_open(&c, h.port);
    cl_send_str(&c, "GET /c/1 HTTP/1.1\r\n\r\nGET /medium HTTP/1.1\r\n\r\n");
    shutdown(c.fd, SHUT_WR);
    struct resp r;
    cl_read_resp(&c, &r);
    ck_assert_str_eq(r.body, "/c/1");
    resp_free(&r);
    cl_read_resp(&c, &r);
    ck_assert_uint_eq(r.body_len, MEDIUM_BYTES);
    resp_free(&r);
    ck_assert(cl_wait_closed(&c, WAIT_MS));
    cl_close(&c);
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.open_connections == 0);
    ck_assert_uint_eq(st.requests, 2);
    ck_assert_uint_eq(st.disconnects, 0);
    hs_stop(&h);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* Closing */

/* Clients idle, mid-request, mid-answer and lingering when the server goes. */
START_TEST(http_close_with_clients)
{
    struct hs h;
    hs_start(&h, &test_limits);
    struct cl idle, partial, reading, bad;
    cl_open(&idle, h.port);
    expect_get(&idle, "/hello", 200, "hello\n");
    cl_open(&partial, h.port);
    cl_send_str(&partial, "POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc");
    cl_open(&reading, h.port);
    cl_send_str(&reading, "GET /big HTTP/1.1\r\n\r\n");
    cl_open(&bad, h.port);
    cl_send_str(&bad, "G@T / HTTP/1.1\r\n\r\n");
    struct coord_http_stats st;
    HS_WAIT(&h, st, st.requests == 2 && st.bad_requests == 1 && st.open_connections == 4);
    hs_stop(&h);
    ck_assert(cl_wait_closed(&idle, WAIT_MS));
    ck_assert(cl_wait_closed(&partial, WAIT_MS));
    ck_assert(cl_wait_closed(&reading, WAIT_MS));
    ck_assert(cl_wait_closed(&bad, WAIT_MS));
    cl_close(&idle);
    cl_close(&partial);
    cl_close(&reading);
    cl_close(&bad);
}
END_TEST

START_TEST(http_close_from_handler)
{
    struct hs h;
    hs_start(&h, &test_limits);
    struct cl other, c;
    cl_open(&other, h.port);
    expect_get(&other, "/hello", 200, "hello\n");
    cl_open(&c, h.port);
    cl_send_str(&c, "GET /shutdown HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n");
    ck_assert(cl_wait_closed(&c, WAIT_MS)); /* no answer: the server is gone */
    ck_assert(cl_wait_closed(&other, WAIT_MS));
    hs_stop(&h);
    cl_close(&c);
    cl_close(&other);
}
END_TEST

static void count_done(void *arg)
{
    (*(int *)arg)++;
}

static void never_called(void *user, const struct coord_http_request *req,
                         struct coord_http_response *resp)
{
    (void)user;
    (void)req;
    (void)resp;
    ck_abort_msg("handler called");
}

/* Bad addresses and a port in use fail cleanly; close is idempotent. */
START_TEST(http_new_errors)
{
    uv_loop_t loop;
    ck_assert_int_eq(uv_loop_init(&loop), 0);
    char err[256];
    ck_assert_ptr_null(coord_http_new(&loop, "not-an-ip", 0, NULL, never_called, NULL, err,
                                      sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "not an IP address"));
    ck_assert_ptr_null(coord_http_new(&loop, NULL, 70000, NULL, never_called, NULL, err,
                                      sizeof err));
    coord_http_t *a = coord_http_new(&loop, "127.0.0.1", 0, NULL, never_called, NULL, err,
                                     sizeof err);
    ck_assert_msg(a != NULL, "%s", err);
    int port = coord_http_port(a);
    ck_assert_int_gt(port, 0);
    ck_assert_ptr_null(coord_http_new(&loop, "127.0.0.1", port, NULL, never_called, NULL, err,
                                      sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "cannot listen"));
    coord_http_t *v6 = coord_http_new(&loop, "::1", 0, NULL, never_called, NULL, err, sizeof err);
    int dones = 0;
    coord_http_close(&a, count_done, &dones);
    ck_assert_ptr_null(a);
    coord_http_close(&a, count_done, &dones); /* no-op */
    coord_http_close(NULL, count_done, &dones);
    coord_http_close(&v6, count_done, &dones); /* NULL if the host has no IPv6 */
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_ge(dones, 1);
    ck_assert_int_le(dones, 2);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

Suite *test_coord_http_suite(void)
{
    Suite *s = suite_create("coord_http");
    TCase *tc = tcase_create("requests");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, http_get_keep_alive_and_close);
    tcase_add_test(tc, http_pipelined_in_order);
    tcase_add_test(tc, http_post_body_and_authorization);
    tcase_add_test(tc, http_query_split_and_404);
    tcase_add_test(tc, http_malformed_table);
    suite_add_tcase(s, tc);
    tc = tcase_create("deadlines");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, http_slow_client_cut);
    tcase_add_test(tc, http_idle_closed);
    suite_add_tcase(s, tc);
    tc = tcase_create("load");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, http_concurrent_clients);
    tcase_add_test(tc, http_big_answer_abandoned);
    tcase_add_test(tc, http_max_connections);
    tcase_add_test(tc, http_backpressure_pipelined);
    tcase_add_test(tc, http_half_closed_client);
    suite_add_tcase(s, tc);
    tc = tcase_create("close");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, http_close_with_clients);
    tcase_add_test(tc, http_close_from_handler);
    tcase_add_test(tc, http_new_errors);
    suite_add_tcase(s, tc);
    return s;
}
