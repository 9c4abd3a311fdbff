/* Cluster description parsing (see moe_cluster.h). */
#include "moe_cluster.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_err.h"

/* Splits a comma-separated list; empty items are errors. */
static int split(const char *s, char ***out, int *n, const char *key, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    if (!s || !*s)
        return 0;
    int cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    char **items = calloc((size_t)cap, sizeof(char *));
    if (!items)
        return MOE_ERR_NOMEM;
    const char *p = s;
    for (int i = 0; i < cap; i++) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && (*p == ' ')) {
            p++;
            len--;
        }
        while (len && p[len - 1] == ' ')
            len--;
        if (len == 0) {
            moe_err_set(err, errlen, "%s: empty entry %d in \"%s\"", key, i, s);
            for (int k = 0; k < i; k++)
                free(items[k]);
            free(items);
            return MOE_ERR_CONFIG;
        }
        items[i] = strndup(p, len);
        p = e ? e + 1 : p + len;
    }
    *out = items;
    *n = cap;
    return 0;
}

int moe_cluster_parse(struct moe_cluster *c, const char *servers, const char *workers,
                      const char *placement, int n_experts, char *err, size_t errlen)
{
    return moe_cluster_parse_groups(c, servers, workers, placement, n_experts, 1, err, errlen);
}

/* A placement that splits no group of `b` experts; 0 or MOE_ERR_CONFIG. */
static int check_groups(const struct moe_cluster *c, int b, char *err, size_t errlen)
{
    for (int e = 0; e < c->n_experts; e++)
        if (c->server_of[e] != c->server_of[e - e % b])
            return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                                "placement: group %d is split (expert %d on server %d, expert %d "
                                "on server %d); a hierarchical MoE places whole groups",
                                e / b, e - e % b, c->server_of[e - e % b], e, c->server_of[e]);
    return 0;
}

int moe_cluster_parse_groups(struct moe_cluster *c, const char *servers, const char *workers,
                             const char *placement, int n_experts, int group_size, char *err,
                             size_t errlen)
{
    const int b = group_size > 1 && n_experts % group_size == 0 ? group_size : 1;
    const int units = n_experts / b;
    memset(c, 0, sizeof *c);
    int rc = split(servers, &c->servers, &c->n_servers, "servers", err, errlen);
    if (!rc)
        rc = split(workers, &c->workers, &c->n_workers, "workers", err, errlen);
    if (rc)
        goto fail;
    if (c->n_servers == 0) {
        moe_err_set(err, errlen, "servers: no expert server given (use --servers tcp://HOST:PORT,...)");
        rc = MOE_ERR_CONFIG;
        goto fail;
    }
    if (c->n_workers == 0)
        c->n_workers = 1;
    if (units < c->n_servers) {
        moe_err_set(err, errlen, "servers: %d servers for %d %s (each needs one)", c->n_servers,
                    units, b > 1 ? "groups of experts" : "experts");
        rc = MOE_ERR_CONFIG;
        goto fail;
    }
    c->n_experts = n_experts;
    c->server_of = malloc(sizeof(int32_t) * (size_t)n_experts);
    if (!c->server_of) {
        rc = MOE_ERR_NOMEM;
        goto fail;
    }
    if (!placement || !*placement) {
        for (int e = 0; e < n_experts; e++)
            c->server_of[e] = (int32_t)((int64_t)(e / b) * c->n_servers / units);
    } else {
        char **items;
        int n;
        if ((rc = split(placement, &items, &n, "placement", err, errlen)))
            goto fail;
        for (int e = 0; e < n && e < n_experts && !rc; e++) {
            char *end;
            long v = strtol(items[e], &end, 10);
            if (*end || v < 0 || v >= c->n_servers) {
                moe_err_set(err, errlen, "placement: entry %d \"%s\" is not a server index 0..%d", e,
                        items[e], c->n_servers - 1);
                rc = MOE_ERR_CONFIG;
            }
            c->server_of[e] = (int32_t)v;
        }
        for (int i = 0; i < n; i++)
            free(items[i]);
        free(items);
        if (!rc && n != n_experts) {
            moe_err_set(err, errlen, "placement: %d entries for %d experts", n, n_experts);
            rc = MOE_ERR_CONFIG;
        }
        if (!rc && b > 1)
            rc = check_groups(c, b, err, errlen);
        if (rc)
            goto fail;
    }
    for (int s = 0; s < c->n_servers; s++) {
        int k = 0;
        for (int e = 0; e < n_experts; e++)
            k += c->server_of[e] == s;
        if (k == 0) {
            moe_err_set(err, errlen, "placement: server %d (%s) owns no expert", s, c->servers[s]);
            rc = MOE_ERR_CONFIG;
            goto fail;
        }
    }
    return 0;
fail:
    moe_cluster_free(c);
    return rc;
}

void moe_cluster_free(struct moe_cluster *c)
{
    for (int i = 0; c->servers && i < c->n_servers; i++)
        free(c->servers[i]);
    for (int i = 0; c->workers && i < c->n_workers; i++)
        free(c->workers[i]);
    free(c->servers);
    free(c->workers);
    free(c->server_of);
    memset(c, 0, sizeof *c);
}

int moe_cluster_experts_of(const struct moe_cluster *c, int server, int32_t *ids)
{
    int k = 0;
    for (int e = 0; e < c->n_experts; e++)
        if (c->server_of[e] == server)
            ids[k++] = e;
    return k;
}
