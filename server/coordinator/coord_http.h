/* A small HTTP/1.1 server on a libuv loop, for the coordinator's monitoring
 * endpoints (/metrics, the JSON API, the dashboard). Runs in the
 * moe-coordinator process, entirely on the thread of the loop it is given.
 *
 * It parses requests with nodejs/http-parser, supports keep-alive and
 * pipelining (answers leave in request order), Content-Length and chunked
 * request bodies, and bounds everything a client controls: header and body
 * sizes, request duration, idle time, connection count, and the bytes of
 * responses queued but not yet read. A malformed request gets a 4xx answer
 * with `Connection: close`, is counted and logged (sanitised, rate-limited),
 * and the server carries on. It does not do TLS, routing, URL decoding,
 * response streaming or HTTP/2: the handler gets the raw path and query and
 * returns one whole response. */
#ifndef COORD_HTTP_H
#define COORD_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct coord_http coord_http_t;

/* One parsed request, valid only during the handler call (the server owns
 * every string). All strings are NUL-terminated, never NULL unless noted.
 *   method         "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH" or
 *                  "OPTIONS" (others are answered 501 without a call)
 *   path           as sent, not percent-decoded, e.g. "/api/v1/experts"
 *   query          after '?', without it, not decoded; "" when absent
 *   authorization  the Authorization header value (whitespace trimmed), or
 *                  NULL when absent; a repeated header is a 400
 *   body, body_len the request body (Content-Length or de-chunked), with a
 *                  NUL after it; body_len 0 and body "" when there is none */
struct coord_http_request {
    const char *method;
    const char *path;
    const char *query;
    const char *authorization;
    const char *body;
    size_t body_len;
};

/* Filled by the handler. The server preloads status 200, content_type NULL
 * (meaning "text/plain; charset=utf-8"), body NULL, body_len 0.
 *   status        200..599 (anything else, and bodies over 2 GiB, become
 *                 500); 204 and 304 go out without a body or length
 *   content_type  a static or long-lived string without CR or LF
 *   body          malloc'd by the handler; the server takes ownership and
 *                 frees it in every case (even for HEAD or when the
 *                 connection is gone) */
struct coord_http_response {
    int status;
    const char *content_type;
    char *body;
    size_t body_len;
};

/* Called on the loop thread once per complete, valid request, in the order
 * the requests arrived on the connection. It must return promptly (the loop
 * waits for it) and must not keep `req` or its strings. It may call
 * coord_http_close on its own server; the response is then dropped. */
typedef void (*coord_http_handler)(void *user, const struct coord_http_request *req,
                                   struct coord_http_response *resp);

/* Zero in any field means its default (in brackets).
 *   max_header_bytes   request line + header names and values [16384]; a
 *                      longer head gets 431 (414 for a long request target);
 *                      at most 100 header lines
 *   max_body_bytes     request body [1 MiB]; larger gets 413
 *   max_connections    served connections [256]; one more gets 503 and is
 *                      closed
 *   idle_timeout_ms    a keep-alive connection with no request in progress
 *                      is closed after this [30000]; also the longest a
 *                      queued response may wait for the client to read it
 *   request_timeout_ms from the first byte of a request to its last; after
 *                      that the client gets 408 and is closed [10000] */
struct coord_http_limits {
    size_t max_header_bytes;
    size_t max_body_bytes;
    int max_connections;
    uint64_t idle_timeout_ms;
    uint64_t request_timeout_ms;
};

/* Listens on host:port (host NULL means "127.0.0.1"; an IPv6 literal such
 * as "::1" works too; port 0 picks a free port, see coord_http_port) and
 * serves on `loop`. `lim` may be NULL (all defaults); it is copied. `h` is
 * required; `user` is passed to it. Returns the server (caller owns; release
 * with coord_http_close) or NULL with a sentence in err (errlen >= 1): bad
 * address, port in use, out of memory. After a NULL return some memory is
 * released by a close callback on the next loop turn, so run the loop once
 * before uv_loop_close. Side effect: if SIGPIPE is at its default action it
 * is set to ignored, since a client resetting the connection would otherwise
 * kill the process (a handler the program installed is kept). Loop thread
 * only, like everything below. */
coord_http_t *coord_http_new(uv_loop_t *loop, const char *host, int port,
                             const struct coord_http_limits *lim, coord_http_handler h,
                             void *user, char *err, size_t errlen);

/* The port actually bound (useful after port 0), or a negative libuv code. */
int coord_http_port(const coord_http_t *s);

/* Stops listening and closes every connection at once, dropping queued
 * responses. Sets *s to NULL (NULL or *s NULL: no-op, `done` not called).
 * `done(arg)` (may be NULL) runs from a close callback once every handle of
 * the server is closed and its memory freed; after that the loop holds
 * nothing of the server. Safe from inside the handler. */
void coord_http_close(coord_http_t **s, void (*done)(void *), void *arg);

/* Counters since coord_http_new.
 *   requests          handed to the handler
 *   bad_requests      malformed or over a limit, answered 4xx/5xx and closed
 *   timeouts          request timeouts (408) and responses the client did
 *                     not read within idle_timeout_ms
 *   disconnects       the client closed or reset the connection with a
 *                     request half received or a response not fully sent
 *   open_connections  TCP connections open now (served and rejected)
 *   rejected          over max_connections, answered 503
 *   idle_closed       keep-alive connections closed for idleness */
struct coord_http_stats {
    uint64_t requests, bad_requests, timeouts, disconnects, open_connections;
    uint64_t rejected, idle_closed;
};
void coord_http_stats(const coord_http_t *s, struct coord_http_stats *out);

#endif
