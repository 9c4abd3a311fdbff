/* moectl: the operator's command-line tool. Talks HTTP to the coordinator's
 * monitoring address (--http HOST:PORT, default 127.0.0.1:8780), except for
 * the checkpoint commands, which work offline on the files:
 *
 *   moectl [--http HOST:PORT] [--json] status
 *   moectl [--http HOST:PORT] [--json] experts [--top N] [--sort load|importance|rows]
 *   moectl [--http HOST:PORT] [--token T] checkpoint
 *   moectl [--http HOST:PORT] [--token T] drain SERVER
 *   moectl verify CHECKPOINT
 *   moectl export CHECKPOINT OUT.safetensors [--params-only]
 *   moectl free-ports N        N free TCP ports on 127.0.0.1 (for launchers and tests)
 *
 * CHECKPOINT is a cluster checkpoint folder (DIR/step-NNNNNNNN with its
 * manifest.json) or a checkpoint directory DIR; then verify checks the newest
 * committed checkpoint and export uses the newest one that verifies, and the
 * folder used is printed (common/moe_manifest.h).
 * Human tables by default; --json prints the coordinator's JSON as is. */
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "moe_err.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moe_safetensors.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: moectl [--http HOST:PORT] [--json] [--token T] COMMAND\n"
               "  status                           cluster, servers, workers, step\n"
               "  experts [--top N] [--sort load|importance|rows]\n"
               "                                   per-expert load table (most loaded first)\n"
               "  checkpoint                       ask for a checkpoint now (needs --token)\n"
               "  drain SERVER                     move a server's experts away (needs --token);\n"
               "                                   SERVER is its id (moectl status)\n"
               "  verify CHECKPOINT                check a checkpoint's files against its manifest\n"
               "  export CHECKPOINT OUT.safetensors [--params-only]\n"
               "                                   one canonical file of the model (and, unless\n"
               "                                   --params-only, its optimizer state)\n"
               "  free-ports N                     print N free TCP ports of 127.0.0.1\n"
               "CHECKPOINT is a step-NNNNNNNN folder or a checkpoint directory: verify checks\n"
               "its newest committed checkpoint, export uses its newest one that verifies.\n"
               "verify and export work offline.\n");
}

/* One HTTP/1.0 request; returns the body (malloc'd) and the status. */
static char *http(const char *hostport, const char *method, const char *path, const char *token,
                  int *status)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || (size_t)(colon - hostport) >= sizeof host) {
        fprintf(stderr, "moectl: --http: expected HOST:PORT, got \"%s\"\n", hostport);
        return NULL;
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, colon + 1, &hints, &ai) != 0 || !ai) {
        fprintf(stderr, "moectl: cannot resolve %s\n", hostport);
        return NULL;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    struct timeval tv = {10, 0};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        fprintf(stderr, "moectl: cannot connect to the coordinator at %s: %s\n", hostport,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return NULL;
    }
    freeaddrinfo(ai);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.0\r\nHost: %s\r\n%s%s%sContent-Length: 0\r\n\r\n", method, path,
                     hostport, token ? "Authorization: Bearer " : "", token ? token : "",
                     token ? "\r\n" : "");
    if (write(fd, req, (size_t)n) != n) {
        fprintf(stderr, "moectl: cannot send to %s\n", hostport);
        close(fd);
        return NULL;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 > cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    if (!body || sscanf(buf, "HTTP/%*s %d", status) != 1) {
        fprintf(stderr, "moectl: malformed answer from %s\n", hostport);
        free(buf);
        return NULL;
    }
    char *out = strdup(body + 4);
    free(buf);
    return out;
}

static json_t *get_json(const char *hp, const char *path)
{
    int status = 0;
    char *body = http(hp, "GET", path, NULL, &status);
    if (!body)
        return NULL;
    json_error_t je;
    json_t *j = status == 200 ? json_loads(body, 0, &je) : NULL;
    if (!j)
        fprintf(stderr, "moectl: %s answered %d: %.200s\n", path, status, body);
    free(body);
    return j;
}

/* CHECKPOINT of verify and export: a folder holding a manifest (or named
 * step-*) is used as is; otherwise it is a checkpoint directory and its
 * newest committed checkpoint (newest_good: the newest that verifies) is
 * used. Fills folder and m (read, and verified if *verified). Returns 0 or
 * prints the error. */
static int resolve_checkpoint(const char *arg, bool newest_good, char *folder, size_t cap,
                              struct moe_manifest *m, bool *verified)
{
    char err[1024], mpath[4096];
    size_t len = strlen(arg);
    while (len > 1 && arg[len - 1] == '/') /* "DIR/step-N/" */
        len--;
    if (len >= cap) {
        fprintf(stderr, "moectl: %s: path too long\n", arg);
        return 1;
    }
    memcpy(folder, arg, len);
    folder[len] = '\0';
    const char *slash = strrchr(folder, '/');
    const char *base = slash ? slash + 1 : folder;
    snprintf(mpath, sizeof mpath, "%s/%s", folder, MOE_MANIFEST_NAME);
    if (access(mpath, F_OK) == 0 || strncmp(base, "step-", 5) == 0) {
        int rc = moe_manifest_read(folder, m, err, sizeof err);
        if (rc) {
            fprintf(stderr, "moectl: %s\n", err);
            return 1;
        }
        *verified = false;
        return 0;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", folder);
    int rc = moe_manifest_latest(dir, newest_good, folder, cap, m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "moectl: %s\n", err);
        return 1;
    }
    printf("using %s\n", folder);
    *verified = newest_good;
    return 0;
}

static int cmd_verify(const char *arg)
{
    char folder[4096], err[1024];
    struct moe_manifest m;
    bool verified;
    if (resolve_checkpoint(arg, false, folder, sizeof folder, &m, &verified))
        return 1;
    int rc = verified ? 0 : moe_manifest_verify(folder, &m, err, sizeof err);
    if (rc)
        fprintf(stderr, "moectl: %s\n", err);
    else
        printf("OK step %lld, %d files\n", (long long)m.step, m.n_files);
    moe_manifest_free(&m);
    return rc ? 1 : 0;
}

static int cmd_export(const char *arg, const char *out, bool params_only)
{
    char folder[4096], err[1024];
    struct moe_manifest m;
    bool verified;
    if (resolve_checkpoint(arg, true, folder, sizeof folder, &m, &verified))
        return 1;
    (void)verified; /* export verifies again */
    int64_t step = m.step;
    moe_manifest_free(&m);
    int rc = moe_manifest_export(folder, out, params_only, err, sizeof err);
    if (rc) {
        fprintf(stderr, "moectl: %s\n", err);
        return 1;
    }
    moe_safetensors_t *st = moe_safetensors_open(out, err, sizeof err);
    if (!st) {
        fprintf(stderr, "moectl: the export was written but does not read back: %s\n", err);
        return 1;
    }
    size_t tensors = moe_safetensors_count(st);
    moe_safetensors_close(&st);
    struct stat sb;
    long long bytes = stat(out, &sb) == 0 ? (long long)sb.st_size : -1;
    printf("exported step %lld%s: %zu tensors, %lld bytes -> %s\n", (long long)step,
           params_only ? " (parameters only)" : "", tensors, bytes, out);
    return 0;
}

/* N distinct TCP ports of 127.0.0.1 that nothing listens on now: random
 * candidates below the kernel's ephemeral range (so that outgoing
 * connections do not take them in the meantime), each bound to check it,
 * all held until every one is found. */
static int cmd_free_ports(const char *arg)
{
    char *end;
    long n = arg ? strtol(arg, &end, 10) : 0;
    if (!arg || *end || n < 1 || n > 1000) {
        fprintf(stderr, "moectl: free-ports needs a count from 1 to 1000\n");
        return 2;
    }
    int *fds = malloc(sizeof(int) * (size_t)n), *ports = malloc(sizeof(int) * (size_t)n);
    if (!fds || !ports) {
        free(fds);
        free(ports);
        fprintf(stderr, "moectl: out of memory\n");
        return 1;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    unsigned seed = (unsigned)tv.tv_usec ^ (unsigned)getpid() * 2654435761u;
    long found = 0;
    for (int tries = 0; found < n && tries < 20000; tries++) {
        seed = seed * 1103515245u + 12345u;
        const int port = 20000 + (int)((seed >> 8) % 12000);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            break;
        struct sockaddr_in a;
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons((uint16_t)port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 1) != 0) {
            close(fd);
            continue;
        }
        fds[found] = fd;
        ports[found++] = port;
    }
    for (long i = 0; i < found; i++) {
        printf("%s%d", i ? " " : "", ports[i]);
        close(fds[i]);
    }
    printf("\n");
    free(fds);
    free(ports);
    if (found < n) {
        fprintf(stderr, "moectl: found only %ld free ports\n", found);
        return 1;
    }
    return 0;
}

static const char *sort_key = "load";

static double expert_value(json_t *e)
{
    const char *k = strcmp(sort_key, "importance") == 0 ? "importance_last"
                    : strcmp(sort_key, "rows") == 0     ? "rows_total"
                                                        : "rows_last";
    return json_number_value(json_object_get(e, k));
}

static int cmp_expert(const void *a, const void *b)
{
    double x = expert_value(*(json_t *const *)a), y = expert_value(*(json_t *const *)b);
    if (x != y)
        return x > y ? -1 : 1;
    return (int)(json_integer_value(json_object_get(*(json_t *const *)a, "id")) -
                 json_integer_value(json_object_get(*(json_t *const *)b, "id")));
}

int main(int argc, char **argv)
{
    const char *hp = "127.0.0.1:8780", *token = NULL, *cmd = NULL, *arg = NULL, *arg2 = NULL;
    bool as_json = false, params_only = false;
    int top = 0;
    moe_log_set_name("moectl");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--http") && i + 1 < argc) hp = argv[++i];
        else if (!strcmp(argv[i], "--token") && i + 1 < argc) token = argv[++i];
        else if (!strcmp(argv[i], "--json")) as_json = true;
        else if (!strcmp(argv[i], "--top") && i + 1 < argc) top = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sort") && i + 1 < argc) sort_key = argv[++i];
        else if (!strcmp(argv[i], "--params-only")) params_only = true;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
        else if (argv[i][0] == '-') { fprintf(stderr, "moectl: unknown option %s\n", argv[i]); usage(stderr); return 2; }
        else if (!cmd) cmd = argv[i];
        else if (!arg) arg = argv[i];
        else if (!arg2 && !strcmp(cmd, "export")) arg2 = argv[i];
        else { fprintf(stderr, "moectl: unexpected argument %s\n", argv[i]); return 2; }
    }
    if (!cmd) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(cmd, "free-ports"))
        return cmd_free_ports(arg);
    if (strcmp(sort_key, "load") && strcmp(sort_key, "importance") && strcmp(sort_key, "rows")) {
        fprintf(stderr, "moectl: --sort: expected load, importance or rows\n");
        return 2;
    }
    if (!strcmp(cmd, "verify") || !strcmp(cmd, "export")) {
        const bool exp = !strcmp(cmd, "export");
        if (!arg || (exp && !arg2)) {
            fprintf(stderr, "moectl: %s needs %s\n", cmd,
                    exp ? "CHECKPOINT OUT.safetensors" : "CHECKPOINT");
            usage(stderr);
            return 2;
        }
        return exp ? cmd_export(arg, arg2, params_only) : cmd_verify(arg);
    }
    if (!strcmp(cmd, "status") || !strcmp(cmd, "experts")) {
        const bool status = !strcmp(cmd, "status");
        json_t *j = get_json(hp, status ? "/api/v1/cluster" : "/api/v1/experts");
        if (!j)
            return 1;
        if (as_json) {
            char *s = json_dumps(j, JSON_INDENT(2));
            puts(s);
            free(s);
        } else if (status) {
            printf("step %lld, placement version %lld\n",
                   (long long)json_integer_value(json_object_get(j, "step")),
                   (long long)json_integer_value(json_object_get(j, "placement_version")));
            printf("load CV %.3f, importance CV %.3f, max/mean load %.2f\n\n",
                   json_number_value(json_object_get(j, "cv_load")),
                   json_number_value(json_object_get(j, "cv_importance")),
                   json_number_value(json_object_get(j, "max_over_mean_load")));
            const char *phase = json_string_value(json_object_get(j, "phase"));
            printf("epoch %lld, %s%s, %lld rollback(s), last checkpoint step %lld\n",
                   (long long)json_integer_value(json_object_get(j, "epoch")), phase ? phase : "?",
                   json_is_true(json_object_get(j, "stopping")) ? " (stopping)" : "",
                   (long long)json_integer_value(json_object_get(j, "rollbacks")),
                   (long long)json_integer_value(json_object_get(j, "committed_checkpoint_step")));
            const char *failure = json_string_value(json_object_get(j, "failure"));
            if (failure)
                printf("FAILED: %s\n", failure);
            printf("\n%-7s %-30s %-6s %7s\n", "SERVER", "ENDPOINT", "ALIVE", "EXPERTS");
            size_t i;
            json_t *v;
            json_array_foreach(json_object_get(j, "servers"), i, v)
                printf("%-7lld %-30s %-6s %7lld%s\n", (long long)json_integer_value(json_object_get(v, "id")),
                       json_string_value(json_object_get(v, "endpoint")),
                       json_is_true(json_object_get(v, "alive")) ? "yes"
                       : json_is_true(json_object_get(v, "registered")) ? "no" : "-",
                       (long long)json_integer_value(json_object_get(v, "experts")),
                       json_is_true(json_object_get(v, "draining")) ? "  (draining)" : "");
            printf("\n%-7s %-6s %8s %12s %8s\n", "WORKER", "ALIVE", "STEP", "TOKENS/S", "LOSS");
            json_array_foreach(json_object_get(j, "workers"), i, v)
                printf("%-7lld %-6s %8lld %12.0f %8.4f\n", (long long)json_integer_value(json_object_get(v, "rank")),
                       json_is_true(json_object_get(v, "alive")) ? "yes" : "no",
                       (long long)json_integer_value(json_object_get(v, "step")),
                       json_number_value(json_object_get(v, "tokens_per_sec")),
                       json_number_value(json_object_get(v, "loss")));
        } else {
            json_t *arr = json_object_get(j, "experts");
            size_t n = json_array_size(arr);
            json_t **e = malloc(sizeof(json_t *) * (n ? n : 1));
            double total = 0;
            for (size_t i = 0; i < n; i++) {
                e[i] = json_array_get(arr, i);
                total += json_number_value(json_object_get(e[i], "rows_total"));
            }
            qsort(e, n, sizeof *e, cmp_expert);
            size_t shown = top > 0 && (size_t)top < n ? (size_t)top : n;
            printf("step %lld; %zu experts, sorted by %s\n",
                   (long long)json_integer_value(json_object_get(j, "step")), n, sort_key);
            printf("%-7s %-7s %10s %11s %12s %10s %10s\n", "EXPERT", "SERVER", "ROWS", "LOAD SHARE",
                   "ROWS TOTAL", "IMPORTANCE", "LOAD");
            for (size_t i = 0; i < shown; i++)
                printf("%-7lld %-7lld %10.0f %10.1f%% %12.0f %10.2f %10.2f\n",
                       (long long)json_integer_value(json_object_get(e[i], "id")),
                       json_is_integer(json_object_get(e[i], "server"))
                           ? (long long)json_integer_value(json_object_get(e[i], "server")) : -1LL,
                       json_number_value(json_object_get(e[i], "rows_last")),
                       100 * json_number_value(json_object_get(e[i], "load_share")),
                       json_number_value(json_object_get(e[i], "rows_total")),
                       json_number_value(json_object_get(e[i], "importance_last")),
                       json_number_value(json_object_get(e[i], "load_last")));
            (void)total;
            free(e);
        }
        json_decref(j);
        return 0;
    }
    if (!strcmp(cmd, "checkpoint") || !strcmp(cmd, "drain")) {
        if (!strcmp(cmd, "drain") && !arg) {
            fprintf(stderr, "moectl: drain needs a server id (see moectl status)\n");
            return 2;
        }
        char path[128];
        snprintf(path, sizeof path, "/api/v1/%s%s%s", cmd, arg ? "?server=" : "", arg ? arg : "");
        int status = 0;
        char *body = http(hp, "POST", path, token, &status);
        if (!body)
            return 1;
        json_error_t je;
        json_t *j = json_loads(body, 0, &je);
        const char *msg = j ? json_string_value(json_object_get(j, status / 100 == 2 ? "message"
                                                                                     : "error"))
                            : NULL;
        if (as_json || !msg) {
            printf("%s", body);
            if (body[0] && body[strlen(body) - 1] != '\n')
                putchar('\n');
        } else if (status / 100 == 2) {
            printf("%s\n", msg);
        } else {
            fprintf(stderr, "moectl: %s: %s\n", cmd, msg);
        }
        json_decref(j);
        free(body);
        return status / 100 == 2 ? 0 : 1;
    }
    fprintf(stderr, "moectl: unknown command %s\n", cmd);
    usage(stderr);
    return 2;
}
