/* moectl: the operator's command-line tool. Talks HTTP to the coordinator's
 * monitoring address (--http HOST:PORT or http://HOST:PORT, default
 * 127.0.0.1:8780), except for the checkpoint commands, which work offline
 * on the files:
 *
 *   moectl [--http ADDR] [--json] status
 *   moectl [--http ADDR] [--json] experts [--top N] [--sort rows|total|load|importance]
 *                                         [--groups]
 *   moectl [--http ADDR] [--token T] checkpoint
 *   moectl [--http ADDR] [--token T] drain SERVER
 *   moectl verify CHECKPOINT
 *   moectl export CHECKPOINT OUT [--params-only]   OUT: a bundle folder, or OUT.safetensors
 *   moectl eval CHECKPOINT --corpus FILE [--batch B] [--threads N] [--json]
 *   moectl generate CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T]
 *                   [--top-k K] [--seed S] [--threads N]
 *   moectl translate CHECKPOINT --input FILE [--beam K] [--max-len-ratio R]
 *                   [--length-penalty A] [--threads N]
 *   moectl bleu REF HYP           corpus BLEU-4 of tokenized HYP against REF
 *   moectl free-ports N        N free TCP ports on 127.0.0.1 (for launchers and tests)
 *   moectl keygen DIR [--force]   the cluster's CURVE keys (common/moe_sec.h)
 *
 * Options go before or after the command, as --flag VALUE or --flag=VALUE
 * (getopt_long). Exit status: 0 done, 1 the command failed, 2 the command
 * line is wrong (nothing was done). Errors are one sentence on stderr;
 * --json prints the coordinator's JSON as is.
 *
 * CHECKPOINT is a checkpoint folder (DIR/step-NNNNNNNN with its
 * manifest.json, of a cluster or of one process) or a checkpoint directory
 * DIR; then verify checks the newest committed checkpoint and export uses
 * the newest one that verifies, and the folder used is printed
 * (common/moe_manifest.h). eval and generate also take an export. */
#include <errno.h>
#include <getopt.h>
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

#include "moectl_bleu.h"
#include "moectl_translate.h"
#include "moe_cli.h"
#include "moe_err.h"
#include "moe_file.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moectl_export.h"
#include "moectl_model.h"
#include "moe_safetensors.h"
#include "moe_sec.h"

/* The parsed command line. */
struct ctl {
    char host[256], port[16]; /* of --http */
    const char *token;
    char token_buf[256];      /* --token-file or MOE_HTTP_TOKEN */
    const char *token_file;
    bool json, params_only, force;
    bool groups;              /* experts --groups */
    long top;                 /* experts --top; 0: all */
    struct moectl_model_opts model; /* eval and generate */
    const char *sort;         /* experts --sort */
    char **args;              /* the command's operands */
    int n_args;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moectl [OPTIONS] COMMAND [ARGS]\n"
               "\n"
               "Commands talking to the coordinator:\n"
               "  status                   cluster, servers, workers, step\n"
               "  experts                  per-expert table: rows routed, Importance, Load\n"
               "  checkpoint               ask for a checkpoint now (needs --token)\n"
               "  drain SERVER             move a server's experts away (needs --token);\n"
               "                           SERVER is its id (moectl status)\n"
               "Commands on files (offline):\n"
               "  verify CHECKPOINT        check a checkpoint's files against its manifest\n"
               "  export CHECKPOINT OUT    a bundle folder OUT for PyTorch: model.safetensors\n"
               "                           (one canonical file of the model and, unless\n"
               "                           --params-only, its optimizer state), config.ini,\n"
               "                           vocab.txt and tools/torch_model.py; or, when OUT\n"
               "                           ends in .safetensors, that file alone (it carries\n"
               "                           the configuration and vocabulary as metadata)\n"
               "  eval CHECKPOINT          perplexity of --corpus FILE under the model\n"
               "  generate CHECKPOINT      text sampled from the model\n"
               "  translate CHECKPOINT     translate --input FILE with a model of moe-worker\n"
               "                           --task translate: one line out per line in (beam\n"
               "                           search, GNMT length normalisation; deterministic)\n"
               "  bleu REF HYP             corpus BLEU-4 of the tokenized lines of HYP against\n"
               "                           those of REF (one reference per line; tokens are\n"
               "                           separated by whitespace), as NLTK's corpus_bleu\n"
               "  free-ports N             print N free TCP ports of 127.0.0.1\n"
               "  keygen DIR               write a cluster's CURVE keys into DIR (one key pair\n"
               "                           per role: coordinator, server, worker); --force\n"
               "                           replaces existing keys\n"
               "\n"
               "Options (--flag VALUE or --flag=VALUE, before or after the command):\n"
               "  --http ADDR              the coordinator's monitoring address, HOST:PORT or\n"
               "                           http://HOST:PORT (default 127.0.0.1:8780)\n"
               "  --token-file FILE        the coordinator's bearer token (http_token), from\n"
               "                           FILE's first line; or set MOE_HTTP_TOKEN\n"
               "  --token T                the same on the command line (visible in ps)\n"
               "  --json                   print the coordinator's JSON answer as is\n"
               "  --top N                  experts: show the N first rows only\n"
               "  --sort KEY               experts, most first: rows (rows routed in the last\n"
               "                           step, the default), total (rows routed over the\n"
               "                           run), load (Load, last step) or importance\n"
               "  --groups                 experts of a hierarchical MoE: a table per group\n"
               "                           (its server, rows routed to it, Importance, primary\n"
               "                           Load) with its experts below, sorted by --sort\n"
               "  --params-only            export: parameters without optimizer state\n"
               "  --corpus FILE            eval: the text to measure (one sentence per line)\n"
               "  --batch B                eval: streams read in parallel (default: the\n"
               "                           model's eval_batch, as moe-worker validates)\n"
               "  --threads N              eval, generate: threads (default 2, as moe-worker)\n"
               "  --prompt TEXT            generate: words to start from (after an <eos>)\n"
               "  --tokens N               generate: words to draw (default 50)\n"
               "  --temperature T          generate: 0 the most probable word each time;\n"
               "                           else sample p^(1/T) (default 1)\n"
               "  --top-k K                generate: sample among the K most probable words\n"
               "                           (default 0: all)\n"
               "  --seed S                 generate: the sample's seed (default 1); the same\n"
               "                           seed gives the same text\n"
               "  --input FILE             translate: the sentences (one per line, tokenized as\n"
               "                           the model's training corpus)\n"
               "  --beam K                 translate: hypotheses kept (default 4; 1: greedy)\n"
               "  --max-len-ratio R        translate: at most R x (source words + 1) words out\n"
               "                           (default 1.5)\n"
               "  --length-penalty A       translate: alpha of GNMT's length normalisation\n"
               "                           ((5 + |Y|)^A / 6^A; default 0.6; 0: none)\n"
               "  --force                  keygen: replace existing keys\n"
               "  -h, --help               this help\n"
               "\n"
               "CHECKPOINT is a step-NNNNNNNN folder or a checkpoint directory, of a cluster\n"
               "or of one process: verify checks its newest committed checkpoint, the others\n"
               "use its newest one that verifies; eval and generate also read an export.\n"
               "Exit status: 0 done, 1 the command failed, 2 usage error.\n");
}

/* "HOST:PORT", "http://HOST:PORT", "http://HOST:PORT/" or "[V6]:PORT" into
 * host and port; false (with the sentence printed) otherwise. */
static bool parse_address(const char *arg, struct ctl *c)
{
    const char *s = arg;
    if (strncmp(s, "http://", 7) == 0)
        s += 7;
    else if (strstr(s, "://")) {
        fprintf(stderr, "moectl: --http: only http:// addresses are served, got \"%s\"\n", arg);
        return false;
    }
    size_t len = strcspn(s, "/");
    if (s[len] == '/' && s[len + 1] != '\0') {
        fprintf(stderr, "moectl: --http: expected HOST:PORT without a path, got \"%s\"\n", arg);
        return false;
    }
    const char *colon = NULL;
    for (size_t i = 0; i < len; i++)
        if (s[i] == ':')
            colon = s + i;
    const char *host = s;
    size_t hlen = colon ? (size_t)(colon - s) : 0;
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    long port;
    char pbuf[16];
    size_t plen = colon ? len - (size_t)(colon - s) - 1 : 0;
    if (!colon || hlen == 0 || hlen >= sizeof c->host || plen == 0 || plen >= sizeof pbuf) {
        fprintf(stderr, "moectl: --http: expected HOST:PORT or http://HOST:PORT, got \"%s\"\n",
                arg);
        return false;
    }
    memcpy(pbuf, colon + 1, plen);
    pbuf[plen] = '\0';
    if (!moe_cli_long(pbuf, 1, 65535, &port)) {
        fprintf(stderr, "moectl: --http: the port must be a number from 1 to 65535, got \"%s\"\n",
                pbuf);
        return false;
    }
    memcpy(c->host, host, hlen);
    c->host[hlen] = '\0';
    snprintf(c->port, sizeof c->port, "%ld", port);
    return true;
}

/* A connected socket to the coordinator with 10 s timeouts, or -1 (printed). */
static int connect_to(const struct ctl *c)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int gai = getaddrinfo(c->host, c->port, &hints, &ai);
    if (gai != 0 || !ai) {
        fprintf(stderr, "moectl: cannot resolve %s: %s\n", c->host, gai_strerror(gai));
        return -1;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    struct timeval tv = {10, 0};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        fprintf(stderr, "moectl: cannot connect to the coordinator at %s:%s: %s\n", c->host,
                c->port, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

/* One HTTP/1.0 request; returns the body (malloc'd) and the status, or
 * NULL with the error printed. */
static char *http(const struct ctl *c, const char *method, const char *path, int *status)
{
    int fd = connect_to(c);
    if (fd < 0)
        return NULL;
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.0\r\nHost: %s:%s\r\n%s%s%sContent-Length: 0\r\n\r\n", method,
                     path, c->host, c->port, c->token ? "Authorization: Bearer " : "",
                     c->token ? c->token : "", c->token ? "\r\n" : "");
    if (n < 0 || n >= (int)sizeof req || write(fd, req, (size_t)n) != n) {
        fprintf(stderr, "moectl: cannot send the request to %s:%s\n", c->host, c->port);
        close(fd);
        return NULL;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 4096 > cap) {
            char *bigger = realloc(buf, cap * 2);
            if (!bigger) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (!buf) {
        fprintf(stderr, "moectl: out of memory reading the answer\n");
        return NULL;
    }
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    if (!body || sscanf(buf, "HTTP/%*s %d", status) != 1) {
        fprintf(stderr, "moectl: %s:%s did not answer HTTP (is it the coordinator's --http address?)\n",
                c->host, c->port);
        free(buf);
        return NULL;
    }
    char *out = strdup(body + 4);
    free(buf);
    return out;
}

/* The sentence of an error answer: its JSON "error", else its text. */
static void print_http_error(const char *what, int status, const char *body)
{
    json_error_t je;
    json_t *j = json_loads(body, 0, &je);
    const char *msg = j ? json_string_value(json_object_get(j, "error")) : NULL;
    if (msg)
        fprintf(stderr, "moectl: %s: %s (HTTP %d)\n", what, msg, status);
    else /* not the coordinator's answer: its first line at most */
        fprintf(stderr, "moectl: %s: HTTP %d without the coordinator's JSON error (is this the "
                "coordinator's --http address?)%s%.*s\n", what, status, body[0] ? ": " : "",
                (int)(strcspn(body, "\r\n") < 200 ? strcspn(body, "\r\n") : 200), body);
    json_decref(j);
}

static json_t *get_json(const struct ctl *c, const char *path)
{
    int status = 0;
    char *body = http(c, "GET", path, &status);
    if (!body)
        return NULL;
    json_error_t je;
    json_t *j = NULL;
    if (status != 200)
        print_http_error(path, status, body);
    else if (!(j = json_loads(body, 0, &je)))
        fprintf(stderr, "moectl: %s: the answer is not JSON: %s\n", path, je.text);
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

static int cmd_verify(const struct ctl *c)
{
    const char *arg = c->args[0];
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

/* eval, generate and export take the language model; a translation model
 * gets a sentence pointing to translate. */
static bool language_model(const struct ctl *c, const char *cmd)
{
    if (!moectl_is_translation(c->args[0]))
        return true;
    fprintf(stderr, "moectl: %s: %s is a translation model (moe-worker --task translate): use "
                    "moectl translate\n", cmd, c->args[0]);
    return false;
}

static int cmd_export(const struct ctl *c)
{
    const char *arg = c->args[0], *out = c->args[1];
    const bool params_only = c->params_only;
    char folder[4096], err[1024];
    struct moe_manifest m;
    bool verified;
    if (!language_model(c, "export")) /* its model.safetensors is whole already */
        return 1;
    if (resolve_checkpoint(arg, true, folder, sizeof folder, &m, &verified))
        return 1;
    (void)verified; /* export verifies again */
    int64_t step = m.step;
    moe_manifest_free(&m);
    /* OUT.safetensors: that file alone; else a bundle folder */
    const bool bundle = !moe_has_suffix(out, ".safetensors");
    char file[4200];
    snprintf(file, sizeof file, "%s%s", out, bundle ? "/model.safetensors" : "");
    int rc = bundle ? moectl_export_bundle(folder, out, params_only, err, sizeof err)
                    : moectl_export(folder, out, params_only, err, sizeof err);
    if (rc) {
        fprintf(stderr, "moectl: %s\n", err);
        return 1;
    }
    moe_safetensors_t *st = moe_safetensors_open(file, err, sizeof err);
    if (!st) {
        fprintf(stderr, "moectl: the export was written but does not read back: %s\n", err);
        return 1;
    }
    size_t tensors = moe_safetensors_count(st);
    moe_safetensors_close(&st);
    struct stat sb;
    long long bytes = stat(file, &sb) == 0 ? (long long)sb.st_size : -1;
    printf("exported step %lld%s: %zu tensors, %lld bytes -> %s\n", (long long)step,
           params_only ? " (parameters only)" : "", tensors, bytes, file);
    if (bundle)
        printf("with %s/config.ini, %s/vocab.txt and %s/tools/torch_model.py; in PyTorch:\n"
               "  python3 %s/tools/torch_model.py %s CORPUS   (prints its perplexity)\n",
               out, out, out, out, out);
    return 0;
}

/* N distinct TCP ports of 127.0.0.1 that nothing listens on now: random
 * candidates below the kernel's ephemeral range (so that outgoing
 * connections do not take them in the meantime), each bound to check it,
 * all held until every one is found. */
static int cmd_free_ports(const struct ctl *c)
{
    long n;
    if (!moe_cli_long(c->args[0], 1, 1000, &n)) {
        fprintf(stderr, "moectl: free-ports: the count must be a number from 1 to 1000, got \"%s\"\n",
                c->args[0]);
        return MOE_EXIT_USAGE;
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

static long long jint(json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

static double jnum(json_t *o, const char *key)
{
    return json_number_value(json_object_get(o, key));
}

static void print_status(json_t *j)
{
    printf("step %lld, placement version %lld\n", jint(j, "step"), jint(j, "placement_version"));
    printf("Load CV %.3f, Importance CV %.3f, max/mean rows routed %.2f\n", jnum(j, "cv_load"),
           jnum(j, "cv_importance"), jnum(j, "max_over_mean_rows_routed"));
    if (json_is_integer(json_object_get(j, "groups")))
        printf("hierarchical: %lld groups x %lld experts; over all experts cv^2 Importance_H "
               "%.4g, cv^2 Load_H %.4g; over the groups CV Importance %.3f, CV Load_p %.3f\n",
               jint(j, "groups"), jint(j, "experts_per_group"), jnum(j, "cv2_importance"),
               jnum(j, "cv2_load"), jnum(j, "cv_group_importance"), jnum(j, "cv_group_load"));
    printf("\n");
    const char *phase = json_string_value(json_object_get(j, "phase"));
    const char *ckpt = json_string_value(json_object_get(j, "committed_checkpoint"));
    printf("epoch %lld, %s%s, %lld rollback(s), last checkpoint step %lld%s%s%s\n",
           jint(j, "epoch"), phase ? phase : "?",
           json_is_true(json_object_get(j, "stopping")) ? " (stopping)" : "", jint(j, "rollbacks"),
           jint(j, "committed_checkpoint_step"), ckpt ? " (" : "", ckpt ? ckpt : "", ckpt ? ")" : "");
    if (json_is_true(json_object_get(j, "stalled")))
        printf("STALLED: no step completed for %lld heartbeats (stall_heartbeats %lld)\n",
               jint(j, "heartbeats_since_step"), jint(j, "stall_heartbeats"));
    const char *failure = json_string_value(json_object_get(j, "failure"));
    if (failure)
        printf("FAILED: %s\n", failure);
    printf("\n%-7s %-30s %-6s %-11s %7s\n", "SERVER", "ENDPOINT", "ALIVE", "STATE", "EXPERTS");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(j, "servers"), i, v) {
        const char *alive = json_is_true(json_object_get(v, "alive"))        ? "yes"
                            : json_is_true(json_object_get(v, "registered")) ? "no"
                                                                              : "-";
        const char *ep = json_string_value(json_object_get(v, "endpoint"));
        const char *state = json_string_value(json_object_get(v, "state"));
        printf("%-7lld %-30s %-6s %-11s %7lld%s\n", jint(v, "id"), ep ? ep : "?", alive,
               state ? state : "?", jint(v, "experts"),
               json_is_true(json_object_get(v, "draining")) ? "  (draining)" : "");
    }
    printf("\n%-7s %-6s %-11s %8s %12s %8s\n", "WORKER", "ALIVE", "STATE", "STEP", "TOKENS/S",
           "LOSS");
    json_array_foreach(json_object_get(j, "workers"), i, v) {
        const char *state = json_string_value(json_object_get(v, "state"));
        const char *act = json_string_value(json_object_get(v, "activity"));
        printf("%-7lld %-6s %-11s %8lld %12.0f %8.4f%s%s%s\n", jint(v, "rank"),
               json_is_true(json_object_get(v, "alive")) ? "yes" : "no", state ? state : "?",
               jint(v, "step"), jnum(v, "tokens_per_sec"), jnum(v, "loss"), act ? "  (" : "",
               act ? act : "", act ? ")" : "");
    }
}

static const char *sort_field = "rows_routed_last"; /* of --sort, for cmp_expert */

static int cmp_expert(const void *a, const void *b)
{
    json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    double vx = jnum(x, sort_field), vy = jnum(y, sort_field);
    if (vx != vy)
        return vx > vy ? -1 : 1;
    return jint(x, "id") < jint(y, "id") ? -1 : jint(x, "id") > jint(y, "id");
}

/* experts --groups: each group of a hierarchical MoE (id order), then its
 * experts e[] (sorted already), --top of them per group. SHARE is of the
 * rows routed to the group's experts; LOAD is Load_H, LOAD IN GROUP the
 * group's secondary Load. */
static void print_groups(const struct ctl *c, json_t *j, json_t **e, size_t n, const char *by)
{
    json_t *groups = json_object_get(j, "group_stats");
    printf("step %lld; %lld groups of %lld experts, experts sorted by %s\n", jint(j, "step"),
           jint(j, "groups"), jint(j, "experts_per_group"), by);
    printf("over all experts: cv^2 Importance_H %.4g, cv^2 Load_H %.4g; over the groups: CV "
           "Importance %.3f, CV Load_p %.3f\n", jnum(j, "cv2_importance"), jnum(j, "cv2_load"),
           jnum(j, "cv_group_importance"), jnum(j, "cv_group_load"));
    size_t gi;
    json_t *g;
    json_array_foreach(groups, gi, g) {
        json_t *server = json_object_get(g, "server");
        printf("\n%-7s %-7s %12s %7s %13s %10s %10s\n", "GROUP", "SERVER", "ROWS ROUTED", "SHARE",
               "TOTAL ROUTED", "IMPORTANCE", "LOAD_P");
        printf("%-7lld %-7lld %12.0f %6.1f%% %13.0f %10.2f %10.2f\n", jint(g, "id"),
               json_is_integer(server) ? (long long)json_integer_value(server) : -1LL,
               jnum(g, "rows_routed_last"), 100 * jnum(g, "rows_routed_share"),
               jnum(g, "rows_routed_total"), jnum(g, "importance_last"), jnum(g, "load_last"));
        printf("  %-7s %5s %12s %7s %13s %10s %10s %13s\n", "EXPERT", "INDEX", "ROWS ROUTED",
               "SHARE", "TOTAL ROUTED", "IMPORTANCE", "LOAD", "LOAD IN GROUP");
        const double in = jnum(g, "expert_rows_routed_last");
        size_t shown = 0;
        for (size_t i = 0; i < n; i++) {
            if (jint(e[i], "group") != jint(g, "id") || (c->top > 0 && shown >= (size_t)c->top))
                continue;
            shown++;
            printf("  %-7lld %5lld %12.0f %6.1f%% %13.0f %10.2f %10.2f %13.2f\n", jint(e[i], "id"),
                   jint(e[i], "expert_in_group"), jnum(e[i], "rows_routed_last"),
                   in > 0 ? 100 * jnum(e[i], "rows_routed_last") / in : 0.0,
                   jnum(e[i], "rows_routed_total"), jnum(e[i], "importance_last"),
                   jnum(e[i], "load_last"), jnum(e[i], "load_in_group_last"));
        }
    }
}

static int print_experts(const struct ctl *c, json_t *j)
{
    if (c->groups && !json_is_array(json_object_get(j, "group_stats"))) {
        fprintf(stderr, "moectl: experts --groups: the cluster's model is a flat MoE (no groups)\n");
        return MOE_EXIT_FAILURE;
    }
    json_t *arr = json_object_get(j, "experts");
    size_t n = json_array_size(arr);
    json_t **e = malloc(sizeof(json_t *) * (n ? n : 1));
    if (!e) {
        fprintf(stderr, "moectl: out of memory\n");
        return MOE_EXIT_FAILURE;
    }
    for (size_t i = 0; i < n; i++)
        e[i] = json_array_get(arr, i);
    sort_field = !strcmp(c->sort, "importance") ? "importance_last"
                 : !strcmp(c->sort, "total")    ? "rows_routed_total"
                 : !strcmp(c->sort, "load")     ? "load_last"
                                                : "rows_routed_last";
    qsort(e, n, sizeof *e, cmp_expert);
    size_t shown = c->top > 0 && (size_t)c->top < n ? (size_t)c->top : n;
    const char *by = !strcmp(c->sort, "importance") ? "Importance (last step)"
                     : !strcmp(c->sort, "total")    ? "rows routed (over the run)"
                     : !strcmp(c->sort, "load")     ? "Load (last step)"
                                                    : "rows routed (last step)";
    if (c->groups) {
        print_groups(c, j, e, n, by);
        free(e);
        return MOE_EXIT_OK;
    }
    printf("step %lld; %zu experts, sorted by %s\n", jint(j, "step"), n, by);
    /* a model of several MoE layers (translation): which one, and its
     * expert there */
    const bool layered = n > 0 && json_is_string(json_object_get(e[0], "layer"));
    printf("%-7s %-7s %12s %7s %13s %10s %10s%s\n", "EXPERT", "SERVER", "ROWS ROUTED", "SHARE",
           "TOTAL ROUTED", "IMPORTANCE", "LOAD", layered ? "  LAYER" : "");
    for (size_t i = 0; i < shown; i++) {
        json_t *server = json_object_get(e[i], "server"), *layer = json_object_get(e[i], "layer");
        printf("%-7lld %-7lld %12.0f %6.1f%% %13.0f %10.2f %10.2f", jint(e[i], "id"),
               json_is_integer(server) ? (long long)json_integer_value(server) : -1LL,
               jnum(e[i], "rows_routed_last"), 100 * jnum(e[i], "rows_routed_share"),
               jnum(e[i], "rows_routed_total"),
               jnum(e[i], "importance_last"), jnum(e[i], "load_last"));
        if (layered)
            printf("  %s %lld", json_is_string(layer) ? json_string_value(layer) : "?",
                   jint(e[i], "layer_expert"));
        printf("\n");
    }
    free(e);
    return MOE_EXIT_OK;
}

/* status and experts: GET, then a table or the JSON. */
static int cmd_show(const struct ctl *c, bool status)
{
    json_t *j = get_json(c, status ? "/api/v1/cluster" : "/api/v1/experts");
    if (!j)
        return MOE_EXIT_FAILURE;
    int rc = MOE_EXIT_OK;
    if (c->json) {
        char *s = json_dumps(j, JSON_INDENT(2));
        puts(s ? s : "null");
        free(s);
    } else if (status) {
        print_status(j);
    } else {
        rc = print_experts(c, j);
    }
    json_decref(j);
    return rc;
}

static int cmd_status(const struct ctl *c) { return cmd_show(c, true); }
static int cmd_experts(const struct ctl *c) { return cmd_show(c, false); }

/* checkpoint and drain: a POST whose answer's "message" (or "error") is
 * printed as one sentence. */
static int cmd_post(const struct ctl *c, const char *what, const char *server)
{
    char path[128];
    if (server) {
        long long id;
        long v;
        if (!moe_cli_long(server, 0, 0x7fffffffL, &v)) {
            fprintf(stderr, "moectl: drain: SERVER must be a server id (a number, see moectl "
                            "status), got \"%s\"\n", server);
            return MOE_EXIT_USAGE;
        }
        id = v;
        snprintf(path, sizeof path, "/api/v1/%s?server=%lld", what, id);
    } else {
        snprintf(path, sizeof path, "/api/v1/%s", what);
    }
    int status = 0;
    char *body = http(c, "POST", path, &status);
    if (!body)
        return MOE_EXIT_FAILURE;
    const bool ok = status / 100 == 2;
    json_error_t je;
    json_t *j = json_loads(body, 0, &je);
    const char *msg = j ? json_string_value(json_object_get(j, "message")) : NULL;
    if (c->json) {
        fputs(body, stdout);
        if (body[0] && body[strlen(body) - 1] != '\n')
            putchar('\n');
    } else if (!ok) {
        print_http_error(what, status, body);
    } else {
        printf("%s\n", msg ? msg : "done");
    }
    json_decref(j);
    free(body);
    return ok ? MOE_EXIT_OK : MOE_EXIT_FAILURE;
}

static int cmd_checkpoint(const struct ctl *c) { return cmd_post(c, "checkpoint", NULL); }

static int cmd_keygen(const struct ctl *c)
{
    char err[1024];
    const char *dir = c->args[0];
    if (moe_sec_keygen(dir, c->force, err, sizeof err)) {
        fprintf(stderr, "moectl: keygen: %s\n", err);
        return MOE_EXIT_FAILURE;
    }
    printf("wrote the cluster's keys into %s:\n"
           "  coordinator.key  server.key  worker.key   secret: each only on the machines of its role\n"
           "  coordinator.pub  server.pub  worker.pub   public: on every machine\n"
           "give every process --keys DIR with its role's .key and the three .pub files\n",
           dir);
    return MOE_EXIT_OK;
}
static int cmd_drain(const struct ctl *c) { return cmd_post(c, "drain", c->args[0]); }


static int cmd_eval(const struct ctl *c)
{
    if (!language_model(c, "eval"))
        return MOE_EXIT_FAILURE;
    struct moectl_model_opts o = c->model;
    o.json = c->json;
    return moectl_eval(c->args[0], &o);
}

static int cmd_generate(const struct ctl *c)
{
    return language_model(c, "generate") ? moectl_generate(c->args[0], &c->model)
                                         : MOE_EXIT_FAILURE;
}

static int cmd_translate(const struct ctl *c) { return moectl_translate(c->args[0], &c->model); }

static int cmd_bleu(const struct ctl *c) { return moectl_bleu(c->args[0], c->args[1]); }

static const struct command {
    const char *name;
    int n_args;
    const char *operands;
    int (*run)(const struct ctl *c);
} commands[] = {
    {"status", 0, "", cmd_status},
    {"experts", 0, "", cmd_experts},
    {"checkpoint", 0, "", cmd_checkpoint},
    {"drain", 1, " SERVER", cmd_drain},
    {"verify", 1, " CHECKPOINT", cmd_verify},
    {"export", 2, " CHECKPOINT OUT", cmd_export},
    {"eval", 1, " CHECKPOINT --corpus FILE", cmd_eval},
    {"generate", 1, " CHECKPOINT", cmd_generate},
    {"translate", 1, " CHECKPOINT --input FILE", cmd_translate},
    {"bleu", 2, " REF HYP", cmd_bleu},
    {"free-ports", 1, " N", cmd_free_ports},
    {"keygen", 1, " DIR", cmd_keygen},
};
enum { N_COMMANDS = sizeof commands / sizeof commands[0] };

static const struct option long_options[] = {
    {"http", required_argument, NULL, 'H'},  {"token", required_argument, NULL, 't'},
    {"json", no_argument, NULL, 'j'},        {"top", required_argument, NULL, 'n'},
    {"sort", required_argument, NULL, 's'},  {"params-only", no_argument, NULL, 'p'},
    {"token-file", required_argument, NULL, 'T'}, {"force", no_argument, NULL, 'f'},
    {"corpus", required_argument, NULL, 'c'}, {"batch", required_argument, NULL, 'b'},
    {"threads", required_argument, NULL, 'N'}, {"prompt", required_argument, NULL, 'P'},
    {"tokens", required_argument, NULL, 'k'}, {"temperature", required_argument, NULL, 'x'},
    {"top-k", required_argument, NULL, 'K'},  {"seed", required_argument, NULL, 'S'},
    {"input", required_argument, NULL, 'i'}, {"beam", required_argument, NULL, 'B'},
    {"max-len-ratio", required_argument, NULL, 'r'},
    {"length-penalty", required_argument, NULL, 'a'},
    {"groups", no_argument, NULL, 'g'},
    {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
};

/* The nearest command or --option to a mistyped one, for "did you mean". */
static const char *suggest(const char *word, bool option)
{
    const char *names[32];
    size_t n = 0;
    if (option)
        for (const struct option *o = long_options; o->name && n < 32; o++)
            names[n++] = o->name;
    else
        for (size_t i = 0; i < N_COMMANDS; i++)
            names[n++] = commands[i].name;
    return moe_cli_nearest(word, names, n);
}

static int usage_error(const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "moectl: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, " (see moectl --help)\n");
    return MOE_EXIT_USAGE;
}

/* An unknown or incomplete option reported by getopt_long. */
static int option_error(char **argv, int at, int code)
{
    const char *arg = argv[at];
    char name[64];
    size_t len = strcspn(arg + (arg[1] == '-' ? 2 : 1), "=");
    snprintf(name, sizeof name, "%.*s", (int)(len < 63 ? len : 63), arg + (arg[1] == '-' ? 2 : 1));
    if (code == ':')
        return usage_error("%s: missing value%s", arg, "");
    const char *near = arg[1] == '-' ? suggest(name, true) : NULL;
    if (near) {
        fprintf(stderr, "moectl: unknown option %s (did you mean --%s?)\n", arg, near);
        return MOE_EXIT_USAGE;
    }
    return usage_error("unknown option %s%s", arg, "");
}

/* The numbers of eval and generate; false (with the sentence printed) on a
 * bad one. */
static bool parse_model_number(int code, const char *arg, struct moectl_model_opts *m)
{
    long v = 0;
    bool ok;
    const char *what;
    switch (code) {
    case 'b': ok = moe_cli_long(arg, 1, 1 << 20, &m->batch), what = "--batch: expected a number of streams from 1"; break;
    case 'N': ok = moe_cli_long(arg, 1, 256, &m->threads), what = "--threads: expected a number from 1 to 256"; break;
    case 'k': ok = moe_cli_long(arg, 1, 1000000, &m->tokens), what = "--tokens: expected a number of words from 1 to 1000000"; break;
    case 'K': ok = moe_cli_long(arg, 0, 1 << 30, &m->top_k), what = "--top-k: expected a number of words from 0 (all)"; break;
    case 'B': ok = moe_cli_long(arg, 1, 256, &m->beam), what = "--beam: expected a number of hypotheses from 1 to 256"; break;
    case 'r': ok = moe_cli_double(arg, 0.01, 100, &m->max_len_ratio), what = "--max-len-ratio: expected a number from 0.01 to 100"; break;
    case 'a': ok = moe_cli_double(arg, 0, 10, &m->length_penalty), what = "--length-penalty: expected a number from 0 to 10"; break;
    case 'S':
        ok = moe_cli_long(arg, 0, 0x7fffffffffffffffL, &v), what = "--seed: expected a number from 0";
        m->seed = (uint64_t)v;
        break;
    default: ok = moe_cli_double(arg, 0, 100, &m->temperature), what = "--temperature: expected a number from 0 to 100"; break;
    }
    if (!ok)
        fprintf(stderr, "moectl: %s, got \"%s\" (see moectl --help)\n", what, arg);
    return ok;
}

/* Fills c from argv; returns -1 to go on, else the exit status. */
static int parse_options(int argc, char **argv, struct ctl *c)
{
    opterr = 0;
    int code;
    while ((code = getopt_long(argc, argv, ":h", long_options, NULL)) != -1) {
        switch (code) {
        case 'H':
            if (!parse_address(optarg, c))
                return MOE_EXIT_USAGE;
            break;
        case 't': c->token = optarg; break;
        case 'T': c->token_file = optarg; break;
        case 'f': c->force = true; break;
        case 'j': c->json = true; break;
        case 'g': c->groups = true; break;
        case 'p': c->params_only = true; break;
        case 'n':
            if (!moe_cli_long(optarg, 1, 1000000000L, &c->top))
                return usage_error("--top: expected a number of rows from 1, got \"%s\"%s",
                                   optarg, "");
            break;
        case 's':
            if (strcmp(optarg, "rows") && strcmp(optarg, "total") && strcmp(optarg, "load") &&
                strcmp(optarg, "importance"))
                return usage_error("--sort: expected rows, total, load or importance, got \"%s\"%s",
                                   optarg, "");
            c->sort = optarg;
            break;
        case 'c': c->model.corpus = optarg; break;
        case 'P': c->model.prompt = optarg; break;
        case 'i': c->model.input = optarg; break;
        case 'b': case 'N': case 'k': case 'K': case 'S': case 'x': case 'B': case 'r': case 'a':
            if (!parse_model_number(code, optarg, &c->model))
                return MOE_EXIT_USAGE;
            break;
        case 'h': usage(stdout); return MOE_EXIT_OK;
        default: return option_error(argv, optind - 1, code);
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct ctl c = {.host = "127.0.0.1", .port = "8780", .sort = "rows",
                    .model = {.threads = 2, .tokens = 50, .temperature = 1, .seed = 1,
                              .beam = 4, .max_len_ratio = 1.5, .length_penalty = 0.6}};
    moe_log_set_name("moectl");
    int rc = parse_options(argc, argv, &c);
    if (rc >= 0)
        return rc;
    char err[512];
    if (moe_sec_secret(c.token, c.token_file, "MOE_HTTP_TOKEN", c.token_buf, sizeof c.token_buf,
                       err, sizeof err)) {
        fprintf(stderr, "moectl: --token-file: %s\n", err);
        return MOE_EXIT_USAGE;
    }
    c.token = c.token_buf[0] ? c.token_buf : NULL;
    if (optind >= argc) {
        usage(stderr);
        return MOE_EXIT_USAGE;
    }
    const char *name = argv[optind];
    const struct command *cmd = NULL;
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (!strcmp(commands[i].name, name))
            cmd = &commands[i];
    if (!cmd) {
        const char *near = suggest(name, false);
        if (near) {
            fprintf(stderr, "moectl: unknown command \"%s\" (did you mean %s?)\n", name, near);
            return MOE_EXIT_USAGE;
        }
        return usage_error("unknown command \"%s\"%s", name, "");
    }
    c.model.argc = argc;
    c.model.argv = argv;
    c.args = argv + optind + 1;
    c.n_args = argc - optind - 1;
    if (c.n_args != cmd->n_args) {
        fprintf(stderr, "moectl: %s %s; usage: moectl %s%s\n", cmd->name,
                c.n_args < cmd->n_args ? "needs more arguments" : "takes fewer arguments",
                cmd->name, cmd->operands);
        return MOE_EXIT_USAGE;
    }
    return cmd->run(&c);
}
