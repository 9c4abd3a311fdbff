/* Sparse dispatch and linear combine of the MoE layer (worker process), and
 * the expert backend interface behind which the experts live: in this
 * process (expert_local.c) or on expert servers.
 *
 * Dispatch groups (row, slot) pairs by expert, rows ascending within each
 * expert (tensor2tensor's SparseDispatcher order). Combine is
 * y_r = sum_j G_rj E_idx(r,j)(x_r), summed in slot order j = 0..K-1. A slot
 * whose gate is exactly 0 is not dispatched. */
#ifndef MOE_LAYER_H
#define MOE_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layer.h"

/* Experts reached through function pointers. Each call gets the experts
 * with at least one row: ids[e] with rows[e] rows, consecutive in x. */
/* A hierarchical MoE's rows for its groups (issue 17, hmoe_group.h), packed
 * group after group over groups 0..A-1, with what comes back. */
struct moe_group_batch {
    int A, B, D;
    const int32_t *ids;        /* (A) 0 .. A-1 */
    const uint32_t *rows;      /* (A) rows sent to each group */
    int64_t row0;              /* global index of this pass's row 0 */
    const uint32_t *row_index; /* (P) each packed row's row in the pass */
    const float *gp;           /* (P) its primary gate value */
    const float *x;            /* (P,D) */
    float *y;                  /* (P,D) forward: each row's group output */
    float *stats;              /* (A,3B) forward: Importance_H, secondary load, rows routed */
    const float *dy;           /* (P,D) backward: gradient of y */
    const float *dstats;       /* (A,2B) backward: d Importance_H, d secondary load */
    float *dx;                 /* (P,D) backward: gradient of x */
    float *dgp;                /* (P) backward: gradient of gp through Importance_H */
};

struct moe_backend {
    void *ctx;
    /* 0 or a negative MOE_ERR_*; `what` receives a sentence on error.
     * train: part of a training step (kept for the backward, counted in
     * the step's barrier); else evaluation (nothing kept). */
    int (*forward)(void *ctx, int64_t step, bool train, int n, const int32_t *ids,
                   const int *rows, const float *x, float *y, char *what, size_t what_len);
    int (*backward)(void *ctx, int64_t step, int n, const int32_t *ids, const int *rows,
                    const float *dy, float *dx, char *what, size_t what_len);
    /* Applies the expert update of step t (1-based) with learning rate lr. */
    int (*apply)(void *ctx, int64_t t, double lr, char *what, size_t what_len);
    /* A hierarchical MoE's groups where they live (NULL for a flat layer's
     * backend): each group's secondary gate, experts and combine on its
     * rows (forward), their gradients (backward; the secondary gates are
     * updated with the experts). Same contract as forward and backward. */
    int (*group_forward)(void *ctx, int64_t step, bool train, const struct moe_group_batch *b,
                         char *what, size_t what_len);
    int (*group_backward)(void *ctx, int64_t step, const struct moe_group_batch *b, char *what,
                          size_t what_len);
};

struct moe_dispatch {
    int N, K, E, D;
    int32_t *pos;   /* (N,K) packed row of each slot, -1 if not dispatched */
    int *counts;    /* (E) rows per expert */
    int32_t *ids;   /* experts with rows, ascending */
    int *rows;      /* their row counts */
    int n_active;
    int32_t *src;   /* (N*K) source row of each packed row */
    int total;      /* packed rows */
    float *xe, *ye; /* (N*K, D) packed inputs and expert outputs */
    float *dye, *dxe;
};

/* Storage: all of the above for given sizes. Returns 0 or MOE_ERR_NOMEM.
 * Caller owns; free with moe_dispatch_free. */
int moe_dispatch_init(struct moe_dispatch *m, int N, int K, int E, int D);
void moe_dispatch_free(struct moe_dispatch *m);

/* Builds the routing for `n` rows (n <= N) from the gate's slot experts
 * idx (n,K) and gates (n,K), and gathers x (n,D) into xe. */
void moe_dispatch_forward(struct moe_dispatch *m, int n, const int32_t *idx, const float *gates,
                          const float *x);

/* y (n,D) = sum_j gates[r,j] ye[pos[r,j]]; overwrites y. */
void moe_combine_forward(float *y, const struct moe_dispatch *m, int n, const float *gates);

/* From dy (n,D): dgates (n,K) (overwritten) and dye = gate * dy. */
void moe_combine_backward(float *dgates, struct moe_dispatch *m, int n, const float *dy,
                          const float *gates);

/* dx (n,D) += dxe scattered back to the source rows, in slot order. */
void moe_dispatch_backward(float *dx, const struct moe_dispatch *m, int n);

/* ------------------------------------------------------------------------ */
/* The MoE layer (layer.h): noisy top-k gate (gate.h), dispatch, the experts
 * behind `backend`, combine, and with `sigmoid` a sigmoid on the output (the
 * paper's Appendix C). Applied to all N rows of the pass at once. Parameters
 * NAME.w_gate and NAME.w_noise (D,E), zero at start. The backward also
 * computes the balancing loss of the pass's global Importance and Load
 * (layer_pass.balance_loss) and its gradient into the gate. */
struct moe_layer_config {
    int D, E, K;
    bool sigmoid;
    double w_importance, w_load;
    uint64_t seed;
    int N_max;          /* largest batch rows */
};
struct layer *moe_layer_new(const char *name, const struct moe_layer_config *cfg,
                            const struct moe_backend *backend);
/* Replaces the expert backend (a new placement); ctx is borrowed. */
void moe_layer_set_backend(struct layer *l, const struct moe_backend *backend);
/* This pass's Importance and Load (E each, the local part of the step's
 * global vectors) and rows dispatched to each expert, from the last forward. */
const float *moe_layer_importance(const struct layer *l);
const float *moe_layer_load(const struct layer *l);
const int *moe_layer_counts(const struct layer *l);
#endif
