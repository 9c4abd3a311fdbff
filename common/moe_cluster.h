/* The static description of a cluster, shared by workers and expert
 * servers: the expert servers' endpoints, the workers' all-reduce endpoints
 * and the placement (which server owns which expert). Read from the
 * configuration for now; the coordinator will hand it out later. Pure data,
 * no sockets. */
#ifndef MOE_CLUSTER_H
#define MOE_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

struct moe_cluster {
    int n_servers;
    char **servers;     /* endpoints, by server index */
    int n_workers;
    char **workers;     /* all-reduce endpoints, by rank (1 worker: may be empty) */
    int n_experts;
    int32_t *server_of; /* (n_experts) owning server of each expert */
};

/* Parses comma-separated lists. `placement` empty: contiguous blocks,
 * server j owning experts [j*E/S, (j+1)*E/S). Otherwise one server index
 * per expert. Every server must own at least one expert. `workers` empty:
 * one worker. 0 or MOE_ERR_CONFIG with a sentence naming the key. Caller
 * owns; free with moe_cluster_free. */
int moe_cluster_parse(struct moe_cluster *c, const char *servers, const char *workers,
                      const char *placement, int n_experts, char *err, size_t errlen);
/* The same for a hierarchical MoE whose groups of `group_size` experts
 * (expert i*B + j is expert j of group i) each live whole on one server:
 * `placement` empty places groups in contiguous blocks (server j owning
 * groups [j*A/S, (j+1)*A/S)); a given placement that splits a group is
 * refused, and so are more servers than groups. group_size 1 is
 * moe_cluster_parse. */
int moe_cluster_parse_groups(struct moe_cluster *c, const char *servers, const char *workers,
                             const char *placement, int n_experts, int group_size, char *err,
                             size_t errlen);
void moe_cluster_free(struct moe_cluster *c);

/* Experts of `server`, ascending, into ids (room for n_experts); returns
 * their count. */
int moe_cluster_experts_of(const struct moe_cluster *c, int server, int32_t *ids);

#endif
