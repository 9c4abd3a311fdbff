/* The translation model assembled from layers (see seq2seq.h). */
#include "seq2seq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "embed.h"
#include "lstm.h"
#include "moe_err.h"
#include "moe_tensor.h"
#include "nn_ops.h"
#include "softmax_xent.h"

/* A block: a layer whose output h gets dropout (at its own RNG site) and,
 * with `residual`, the block's input added: a = drop(h) + in. A packed
 * block (the MoE layers) sees only the real rows: they are gathered into
 * pin, its output pout is scattered back into h (0 at padding). */
struct s2s_block {
    struct layer *layer;
    int site;
    bool residual, packed;
    float *h, *a, *mask, *da;
    float *pin, *pout;
};

enum { S2S_ENC_BLOCKS = 5, S2S_DEC_BLOCKS = 5 };

/* Dropout sites, one RNG stream each. */
enum { SITE_ENC_EMB, SITE_ENC_L1, SITE_ENC_L2, SITE_ENC_MOE, SITE_ENC_L3,
       SITE_DEC_EMB, SITE_DEC_L1, SITE_DEC_ATT, SITE_DEC_MOE, SITE_DEC_L2 };

/* One side of the model: its blocks, the pass over its grid and the real
 * rows of that grid. */
struct s2s_side {
    struct s2s_block blocks[S2S_ENC_BLOCKS > S2S_DEC_BLOCKS ? S2S_ENC_BLOCKS : S2S_DEC_BLOCKS];
    int n_blocks;
    struct layer_pass pass;
    int32_t *idx;     /* real rows of the grid, ascending */
    int n_real;
    int64_t pk0;      /* global index of the first real row */
};

struct s2s {
    struct s2s_config cfg;
    struct s2s_side side[2];       /* S2S_ENCODER, S2S_DECODER */
    struct layer *moe[S2S_N_MOE], *att, *head;
    float *dtmp, *pdin, *pdout;    /* (max grid rows, D) scratch */
    float *hin, *hdin;             /* the head's packed input and its gradient */
    int32_t *tgt_packed;
    int *src_len, *tgt_len;        /* of the pass (decoding: its own) */
    bool have_forward;
    /* decoding */
    int32_t *dec_tok;
    float *state_tmp;
    int dec_rows;
};

/* ------------------------------------------------------------------------ */
/* Assembly */

static int add_block(struct s2s *m, struct s2s_side *sd, struct layer *l, int site, bool residual,
                     bool packed, size_t N)
{
    if (!l)
        return MOE_ERR_NOMEM;
    struct s2s_block *b = &sd->blocks[sd->n_blocks++];
    const size_t ND = N * (size_t)m->cfg.D;
    *b = (struct s2s_block){.layer = l, .site = site, .residual = residual, .packed = packed};
    b->h = moe_alloc_floats(ND);
    b->a = moe_alloc_floats(ND);
    b->mask = moe_alloc_floats(ND);
    b->da = moe_alloc_floats(ND);
    if (packed) {
        b->pin = moe_alloc_floats(ND);
        b->pout = moe_alloc_floats(ND);
    }
    return b->h && b->a && b->mask && b->da && (!packed || (b->pin && b->pout)) ? 0
                                                                                : MOE_ERR_NOMEM;
}

static int assemble(struct s2s *m, const struct moe_backend backends[S2S_N_MOE])
{
    const struct s2s_config *c = &m->cfg;
    const size_t NS = (size_t)c->B_max * c->S_max, NT = (size_t)c->B_max * c->T_max;
    struct moe_layer_config mc = {.D = c->D, .E = c->E, .K = c->K, .sigmoid = c->moe_sigmoid,
                                  .w_importance = c->w_importance, .w_load = c->w_load,
                                  .seed = c->seed, .N_max = (int)NS};
    struct s2s_side *e = &m->side[S2S_ENCODER], *d = &m->side[S2S_DECODER];
    int rc = add_block(m, e, embed_layer_new("encoder.embedding", c->V_src, c->D, c->seed),
                       SITE_ENC_EMB, false, false, NS);
    static const char *const enc_lstm[3] = {"encoder.lstm1", "encoder.lstm2", "encoder.lstm3"};
    for (int i = 0; i < 3 && !rc; i++) {
        if (i == 2) {
            m->moe[S2S_ENCODER] = moe_layer_new("encoder.moe", &mc, &backends[S2S_ENCODER]);
            rc = add_block(m, e, m->moe[S2S_ENCODER], SITE_ENC_MOE, c->residual, true, NS);
        }
        if (!rc)
            rc = add_block(m, e, lstm_layer_new(enc_lstm[i], c->D, c->B_max, c->S_max, c->seed,
                                                false),
                           i == 2 ? SITE_ENC_L3 : SITE_ENC_L1 + i, c->residual, false, NS);
    }
    if (!rc)
        rc = add_block(m, d, embed_layer_new("decoder.embedding", c->V_tgt, c->D, c->seed),
                       SITE_DEC_EMB, false, false, NT);
    if (!rc)
        rc = add_block(m, d, lstm_layer_new("decoder.lstm1", c->D, c->B_max, c->T_max, c->seed,
                                            false),
                       SITE_DEC_L1, c->residual, false, NT);
    if (!rc) {
        m->att = attention_layer_new("decoder.attention", c->D, c->B_max, c->T_max, c->S_max,
                                     c->seed);
        rc = add_block(m, d, m->att, SITE_DEC_ATT, c->residual, false, NT);
    }
    if (!rc) {
        mc.seed = c->seed + 1;
        mc.N_max = (int)NT;
        m->moe[S2S_DECODER] = moe_layer_new("decoder.moe", &mc, &backends[S2S_DECODER]);
        rc = add_block(m, d, m->moe[S2S_DECODER], SITE_DEC_MOE, c->residual, true, NT);
    }
    if (!rc)
        rc = add_block(m, d, lstm_layer_new("decoder.lstm2", c->D, c->B_max, c->T_max, c->seed,
                                            false),
                       SITE_DEC_L2, c->residual, false, NT);
    if (!rc && !(m->head = softmax_layer_new("decoder.softmax", c->V_tgt, c->D, (int)NT, c->seed)))
        rc = MOE_ERR_NOMEM;
    return rc;
}

double s2s_dense_params(const struct s2s_config *c)
{
    const double D = c->D, lstm = 4 * D * D * 2 + 2 * 4 * D;
    return (double)c->V_src * D + 3 * lstm + 2 * D * c->E      /* encoder */
           + (double)c->V_tgt * D + 2 * lstm + 2 * D * D + 2 * D /* decoder, attention */
           + 2 * D * c->E + (double)c->V_tgt * D + c->V_tgt;     /* its gate, softmax */
}

double s2s_bytes(const struct s2s_config *c)
{
    const double NS = (double)c->B_max * c->S_max, NT = (double)c->B_max * c->T_max;
    const double D = c->D, E = c->E, K = c->K;
    /* blocks (h, a, mask, da; pin, pout of the MoE), scratch, the head */
    const double blocks = (5 * 4 + 2) * (NS + NT) * D + 5 * (NS > NT ? NS : NT) * D + NT * c->V_tgt;
    /* LSTMs: cache and work of 5 N D floats each; attention: projections,
     * weights and its work */
    const double lstm = 3 * 10 * NS * D + 2 * 10 * NT * D;
    const double att = 2 * (NT + NS) * D + 2 * NT * c->S_max + c->B_max * (D + c->S_max);
    /* each MoE layer: gate cache and work, dispatch (4 N K D) */
    const double moe = (NS + NT) * (8 * E + 3 * (K + 1) + 4 * K * D);
    return 4 * (2 * s2s_dense_params(c) + blocks + lstm + att + moe);
}

s2s_t *s2s_new(const struct s2s_config *cfg, const struct moe_backend backends[S2S_N_MOE])
{
    if (cfg->V_src < 2 || cfg->V_tgt < 2 || cfg->D < 1 || cfg->H < 1 || cfg->E < 1 ||
        cfg->K < 1 || cfg->K > cfg->E || cfg->B_max < 1 || cfg->S_max < 1 || cfg->T_max < 1 ||
        cfg->dropout < 0 || cfg->dropout >= 1 ||
        (double)cfg->B_max * (cfg->S_max > cfg->T_max ? cfg->S_max : cfg->T_max) > 1e8)
        return NULL;
    struct s2s *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->cfg = *cfg;
    const size_t NS = (size_t)cfg->B_max * cfg->S_max, NT = (size_t)cfg->B_max * cfg->T_max;
    const size_t N = NS > NT ? NS : NT, D = (size_t)cfg->D;
    m->dtmp = moe_alloc_floats(N * D);
    m->pdin = moe_alloc_floats(N * D);
    m->pdout = moe_alloc_floats(N * D);
    m->hin = moe_alloc_floats(NT * D);
    m->hdin = moe_alloc_floats(NT * D);
    m->tgt_packed = calloc(NT, sizeof(int32_t));
    m->side[S2S_ENCODER].idx = calloc(NS, sizeof(int32_t));
    m->side[S2S_DECODER].idx = calloc(NT, sizeof(int32_t));
    m->src_len = calloc((size_t)cfg->B_max, sizeof(int));
    m->tgt_len = calloc((size_t)cfg->B_max, sizeof(int));
    m->dec_tok = calloc((size_t)cfg->B_max, sizeof(int32_t));
    m->state_tmp = moe_alloc_floats((size_t)cfg->B_max * D);
    if (!m->dtmp || !m->pdin || !m->pdout || !m->hin || !m->hdin || !m->tgt_packed ||
        !m->side[0].idx || !m->side[1].idx || !m->src_len || !m->tgt_len ||
        !m->dec_tok || !m->state_tmp || assemble(m, backends)) {
        s2s_destroy(&m);
        return NULL;
    }
    return m;
}

void s2s_destroy(s2s_t **mp)
{
    if (!mp || !*mp)
        return;
    struct s2s *m = *mp;
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < m->side[s].n_blocks; i++) {
            struct s2s_block *b = &m->side[s].blocks[i];
            b->layer->ops->destroy(b->layer);
            float **bufs[] = {&b->h, &b->a, &b->mask, &b->da, &b->pin, &b->pout};
            for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++)
                moe_free_floats(bufs[k]);
        }
        free(m->side[s].idx);
    }
    if (m->head)
        m->head->ops->destroy(m->head);
    float **bufs[] = {&m->dtmp, &m->pdin, &m->pdout, &m->hin, &m->hdin, &m->state_tmp};
    for (size_t k = 0; k < sizeof bufs / sizeof bufs[0]; k++)
        moe_free_floats(bufs[k]);
    free(m->tgt_packed);
    free(m->src_len);
    free(m->tgt_len);
    free(m->dec_tok);
    free(m);
    *mp = NULL;
}

const struct s2s_config *s2s_config_of(const s2s_t *m) { return &m->cfg; }

void s2s_set_backend(s2s_t *m, int which, const struct moe_backend *backend)
{
    moe_layer_set_backend(m->moe[which], backend);
}

const float *s2s_importance(const s2s_t *m, int which) { return moe_layer_importance(m->moe[which]); }
const float *s2s_load(const s2s_t *m, int which) { return moe_layer_load(m->moe[which]); }
const int *s2s_counts(const s2s_t *m, int which) { return moe_layer_counts(m->moe[which]); }

/* Layer j in model order: the encoder's blocks, the decoder's, the head. */
static struct layer *layer_at(const s2s_t *m, int j)
{
    const int ne = m->side[0].n_blocks, nd = m->side[1].n_blocks;
    return j < ne ? m->side[0].blocks[j].layer
                  : j < ne + nd ? m->side[1].blocks[j - ne].layer : m->head;
}

static int n_layers(const s2s_t *m) { return m->side[0].n_blocks + m->side[1].n_blocks + 1; }

int s2s_n_params(const s2s_t *m)
{
    int n = 0;
    for (int j = 0; j < n_layers(m); j++)
        n += layer_at(m, j)->n_params;
    return n;
}

struct layer_param s2s_param_at(s2s_t *m, int i)
{
    for (int j = 0; j < n_layers(m); j++) {
        struct layer *l = layer_at(m, j);
        if (i < l->n_params)
            return l->ops->param(l, i);
        i -= l->n_params;
    }
    return (struct layer_param){0};
}

struct layer_param s2s_param_named(s2s_t *m, const char *name)
{
    for (int i = 0; i < s2s_n_params(m); i++) {
        struct layer_param p = s2s_param_at(m, i);
        if (strcmp(p.name, name) == 0)
            return p;
    }
    return (struct layer_param){0};
}

/* ------------------------------------------------------------------------ */
/* Forward and backward */

static void rows_gather(float *out, const float *in, const int32_t *idx, int n, int D)
{
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * D, in + (size_t)idx[i] * D, sizeof(float) * (size_t)D);
}

/* out[idx[i]] += in[i] */
static void rows_scatter_add(float *out, const float *in, const int32_t *idx, int n, int D)
{
    for (int i = 0; i < n; i++)
        residual_add(out + (size_t)idx[i] * D, in + (size_t)i * D, D);
}

/* The pass of a packed layer: the real rows as one sequence. */
static struct layer_pass packed_pass(const struct s2s_side *sd)
{
    struct layer_pass p = sd->pass;
    p.B = 1;
    p.T = sd->n_real;
    p.row0 = sd->pk0;
    return p;
}

static int side_forward(struct s2s *m, struct s2s_side *sd, float p_drop, char *err,
                        size_t errlen)
{
    const int N = sd->pass.B * sd->pass.T, D = m->cfg.D;
    const float *in = NULL;
    for (int i = 0; i < sd->n_blocks; i++) {
        struct s2s_block *k = &sd->blocks[i];
        struct layer *l = k->layer;
        int rc;
        if (k->packed) {
            struct layer_pass pp = packed_pass(sd);
            rows_gather(k->pin, in, sd->idx, sd->n_real, D);
            rc = l->ops->forward(l, &pp, k->pout, k->pin, err, errlen);
            memset(k->h, 0, sizeof(float) * (size_t)N * D);
            for (int r = 0; r < sd->n_real && !rc; r++)
                memcpy(k->h + (size_t)sd->idx[r] * D, k->pout + (size_t)r * D,
                       sizeof(float) * (size_t)D);
        } else {
            rc = l->ops->forward(l, &sd->pass, k->h, in, err, errlen);
        }
        if (rc)
            return rc;
        dropout_forward(k->a, k->mask, k->h, p_drop, m->cfg.seed, k->site, sd->pass.step,
                        sd->pass.row0, N, D);
        if (k->residual && in)
            residual_add(k->a, in, N * D);
        in = k->a;
    }
    return 0;
}

static int head_forward(struct s2s *m, double *xent_sum, char *err, size_t errlen)
{
    struct s2s_side *sd = &m->side[S2S_DECODER];
    const int D = m->cfg.D;
    rows_gather(m->hin, sd->blocks[sd->n_blocks - 1].a, sd->idx, sd->n_real, D);
    for (int i = 0; i < sd->n_real; i++)
        m->tgt_packed[i] = sd->pass.tgt[sd->idx[i]];
    struct layer_pass hp = packed_pass(sd);
    hp.tgt = m->tgt_packed;
    int rc = m->head->ops->forward(m->head, &hp, NULL, m->hin, err, errlen);
    *xent_sum = hp.xent_sum;
    return rc;
}

/* The real rows of a side's grid from the lengths; false if a length is
 * out of range. */
static bool side_rows(struct s2s_side *sd, const int *len, int B, int T)
{
    sd->n_real = 0;
    for (int b = 0; b < B; b++) {
        if (len[b] < 1 || len[b] > T)
            return false;
        for (int t = 0; t < len[b]; t++)
            sd->idx[sd->n_real++] = b * T + t;
    }
    return true;
}

static void reset_states(struct s2s *m, int side, bool eval)
{
    for (int i = 0; i < m->side[side].n_blocks; i++)
        layer_reset_state(m->side[side].blocks[i].layer, eval);
}

int s2s_forward(s2s_t *m, const struct s2s_batch *b, int64_t step, bool train, double *xent_sum,
                char *err, size_t errlen)
{
    const struct s2s_config *c = &m->cfg;
    m->have_forward = false;
    if (b->B < 1 || b->B > c->B_max || b->S < 1 || b->S > c->S_max || b->T < 1 ||
        b->T > c->T_max)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen,
                            "batch of %d pairs of %d source and %d target positions exceeds the "
                            "model's buffers (%d pairs, %d and %d)",
                            b->B, b->S, b->T, c->B_max, c->S_max, c->T_max);
    struct s2s_side *e = &m->side[S2S_ENCODER], *d = &m->side[S2S_DECODER];
    if (!side_rows(e, b->src_len, b->B, b->S) || !side_rows(d, b->tgt_len, b->B, b->T))
        return moe_err_fail(MOE_ERR_RANGE, err, errlen,
                            "a sentence length of the batch is outside 1 .. its padded length");
    memcpy(m->src_len, b->src_len, sizeof(int) * (size_t)b->B);
    memcpy(m->tgt_len, b->tgt_len, sizeof(int) * (size_t)b->B);
    e->pass = (struct layer_pass){.B = b->B, .T = b->S, .tok = b->src, .row0 = b->row0_src,
                                  .n_global = b->n_global, .step = step, .train = train};
    d->pass = (struct layer_pass){.B = b->B, .T = b->T, .tok = b->tgt_in, .tgt = b->tgt_out,
                                  .row0 = b->row0_tgt, .n_global = b->n_global, .step = step,
                                  .train = train};
    e->pk0 = b->pk0_src;
    d->pk0 = b->pk0_tgt;
    /* every sentence starts from a zero state; evaluation LSTMs carry
     * theirs forward at once, so theirs is cleared before each pass */
    reset_states(m, S2S_ENCODER, !train);
    reset_states(m, S2S_DECODER, !train);
    const float p = train ? (float)c->dropout : 0.0f;
    int rc = side_forward(m, e, p, err, errlen);
    if (!rc) {
        attention_layer_bind(m->att, e->blocks[e->n_blocks - 1].a,
                             train ? e->blocks[e->n_blocks - 1].da : NULL, b->S, m->src_len,
                             m->tgt_len);
        rc = side_forward(m, d, p, err, errlen);
    }
    if (!rc)
        rc = head_forward(m, xent_sum, err, errlen);
    m->have_forward = !rc && train;
    return rc;
}

/* Backward through a side's blocks from the gradient of its last block's
 * output (in that block's da); the balancing losses into *balance. */
static int side_backward(struct s2s *m, struct s2s_side *sd, const float *const imp[],
                         const float *const load[], int moe_which, double *balance, char *err,
                         size_t errlen)
{
    const int N = sd->pass.B * sd->pass.T, D = m->cfg.D, ND = N * D;
    int rc = 0;
    for (int i = sd->n_blocks - 1; i >= 0 && !rc; i--) {
        struct s2s_block *k = &sd->blocks[i], *prev = i > 0 ? &sd->blocks[i - 1] : NULL;
        struct layer *l = k->layer;
        memset(m->dtmp, 0, sizeof(float) * (size_t)ND);
        dropout_backward(m->dtmp, k->da, k->mask, ND);
        if (k->residual && prev)
            residual_add(prev->da, k->da, ND);
        if (k->packed) {
            struct layer_pass pp = packed_pass(sd);
            pp.imp_global = imp[moe_which];
            pp.load_global = load[moe_which];
            rows_gather(m->pdout, m->dtmp, sd->idx, sd->n_real, D);
            memset(m->pdin, 0, sizeof(float) * (size_t)sd->n_real * D);
            rc = l->ops->backward(l, &pp, m->pdin, m->pdout, k->pin, k->pout, err, errlen);
            *balance += pp.balance_loss;
            if (!rc)
                rows_scatter_add(prev->da, m->pdin, sd->idx, sd->n_real, D);
        } else {
            rc = l->ops->backward(l, &sd->pass, prev ? prev->da : NULL, m->dtmp,
                                  prev ? prev->a : NULL, k->h, err, errlen);
        }
    }
    return rc;
}

int s2s_backward(s2s_t *m, const float *const imp_global[S2S_N_MOE],
                 const float *const load_global[S2S_N_MOE], double *balance_loss, char *err,
                 size_t errlen)
{
    if (!m->have_forward)
        return moe_err_fail(MOE_ERR_STATE, err, errlen, "s2s_backward without a training forward");
    const int D = m->cfg.D;
    for (int i = 0; i < s2s_n_params(m); i++) {
        const struct layer_param p = s2s_param_at(m, i);
        memset(p.g->data, 0, sizeof(float) * p.g->numel);
    }
    for (int s = 0; s < 2; s++) {
        const size_t ND = (size_t)m->side[s].pass.B * m->side[s].pass.T * D;
        for (int i = 0; i < m->side[s].n_blocks; i++)
            memset(m->side[s].blocks[i].da, 0, sizeof(float) * ND);
    }
    struct s2s_side *d = &m->side[S2S_DECODER];
    struct layer_pass hp = packed_pass(d);
    hp.tgt = m->tgt_packed;
    memset(m->hdin, 0, sizeof(float) * (size_t)d->n_real * D);
    int rc = m->head->ops->backward(m->head, &hp, m->hdin, NULL, m->hin, NULL, err, errlen);
    if (!rc)
        rows_scatter_add(d->blocks[d->n_blocks - 1].da, m->hdin, d->idx, d->n_real, D);
    double bal = 0;
    /* the decoder first: its attention adds into the encoder's output gradient */
    if (!rc)
        rc = side_backward(m, d, imp_global, load_global, S2S_DECODER, &bal, err, errlen);
    if (!rc)
        rc = side_backward(m, &m->side[S2S_ENCODER], imp_global, load_global, S2S_ENCODER, &bal,
                           err, errlen);
    *balance_loss = bal;
    m->have_forward = false;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Step-by-step decoding */

int s2s_decode_begin(s2s_t *m, const int32_t *src, int len, int rows, char *err, size_t errlen)
{
    const struct s2s_config *c = &m->cfg;
    if (len < 1 || len > c->S_max || rows < 1 || rows > c->B_max)
        return moe_err_fail(MOE_ERR_RANGE, err, errlen,
                            "a source of %d tokens for %d hypotheses exceeds the model's "
                            "buffers (%d tokens, %d rows)",
                            len, rows, c->S_max, c->B_max);
    struct s2s_side *e = &m->side[S2S_ENCODER];
    m->src_len[0] = len;
    side_rows(e, m->src_len, 1, len);
    e->pass = (struct layer_pass){.B = 1, .T = len, .tok = src, .n_global = 1};
    reset_states(m, S2S_ENCODER, true);
    reset_states(m, S2S_DECODER, true);
    int rc = side_forward(m, e, 0.0f, err, errlen);
    if (rc)
        return rc;
    /* the encoder's output once per hypothesis: (rows * len, D) */
    float *mem = e->blocks[e->n_blocks - 1].a;
    const size_t SD = (size_t)len * c->D;
    for (int r = 1; r < rows; r++)
        memcpy(mem + r * SD, mem, sizeof(float) * SD);
    for (int r = 0; r < rows; r++) {
        m->src_len[r] = len;
        m->tgt_len[r] = 1;
        m->dec_tok[r] = 0;
    }
    attention_layer_bind(m->att, mem, NULL, len, m->src_len, m->tgt_len);
    m->dec_rows = rows;
    m->have_forward = false;
    return 0;
}

const float *s2s_decode_step(s2s_t *m, const int32_t *tok, char *err, size_t errlen)
{
    struct s2s_side *d = &m->side[S2S_DECODER];
    d->pass = (struct layer_pass){.B = m->dec_rows, .T = 1, .tok = tok, .tgt = m->dec_tok,
                                  .n_global = 1};
    side_rows(d, m->tgt_len, m->dec_rows, 1);
    double xent;
    if (side_forward(m, d, 0.0f, err, errlen) || head_forward(m, &xent, err, errlen))
        return NULL;
    return softmax_layer_probs(m->head);
}

void s2s_decode_reorder(s2s_t *m, const int *from)
{
    const size_t D = (size_t)m->cfg.D;
    struct s2s_side *d = &m->side[S2S_DECODER];
    for (int i = 0; i < d->n_blocks; i++) {
        struct layer *l = d->blocks[i].layer;
        for (int s = 0; l->ops->state && s < l->n_states; s++) {
            float *st = l->ops->state(l, true, s).data;
            for (int r = 0; r < m->dec_rows; r++)
                memcpy(m->state_tmp + r * D, st + (size_t)from[r] * D, sizeof(float) * D);
            memcpy(st, m->state_tmp, sizeof(float) * D * (size_t)m->dec_rows);
        }
    }
}
