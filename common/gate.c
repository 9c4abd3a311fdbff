/* Noisy top-k gating and balancing losses (see gate.h). Runs in workers and expert servers. */
#include "gate.h"

#include <math.h>
#include <string.h>

#include "moe_blas.h"
#include "moe_par.h"
#include "moe_rng.h"
#include "moe_vmath.h"

#define GATE_NOISE_EPS 1e-2f
#define CV_EPS 1e-10
/* rows per moe_par task */
#define GATE_ROWS 32

static inline int gate_m(const struct gate_dims *d) { return d->K + 1 < d->E ? d->K + 1 : d->E; }

size_t gate_cache_floats(const struct gate_dims *d)
{
    size_t N = (size_t)d->N, E = (size_t)d->E;
    return 6 * N * E + N * (size_t)gate_m(d) + N * (size_t)d->K;
}

size_t gate_cache_ints(const struct gate_dims *d)
{
    return (size_t)d->N * (size_t)gate_m(d) + (size_t)d->N * (size_t)d->K;
}

struct gate_cache gate_cache_view(float *fbuf, int32_t *ibuf, const struct gate_dims *d)
{
    size_t N = (size_t)d->N, E = (size_t)d->E, M = (size_t)gate_m(d);
    struct gate_cache c;
    c.clean = fbuf;
    c.nl = c.clean + N * E;
    c.std = c.nl + N * E;
    c.H = c.std + N * E;
    c.eps = c.H + N * E;
    c.p = c.eps + N * E;
    c.topv = c.p + N * E;
    c.gates = c.topv + N * M;
    c.topi = ibuf;
    c.idx = c.topi + N * M;
    return c;
}

/* Phi's argument z / (sqrt 2 std + 1e-20) */
static inline float phi_arg_denom(float s) { return 1.41421356237309505f * s + 1e-20f; }

/* Top m of h (E values), descending; ties keep the lower index first. */
static void top_m(int32_t *ti, float *tv, const float *h, int E, int m)
{
    int n = 0;
    for (int i = 0; i < E; i++) {
        float v = h[i];
        if (n == m && !(v > tv[m - 1]))
            continue;
        int p = n < m ? n : m - 1;
        /* strict > keeps earlier (lower) indices ahead on ties */
        while (p > 0 && v > tv[p - 1]) {
            tv[p] = tv[p - 1];
            ti[p] = ti[p - 1];
            p--;
        }
        tv[p] = v;
        ti[p] = i;
        if (n < m)
            n++;
    }
}

struct gate_job {
    struct gate_cache *c;
    const struct gate_cache *cc;
    const struct gate_dims *d;
    float *work;
    const float *dgates, *dimp, *dload;
};

/* Forward of rows [GATE_ROWS * task, ...): noise, top k + 1, softmax over
 * the top k and, for the smooth Load, each expert's Phi term into c->p. */
static void forward_rows(void *ctx, int task)
{
    const struct gate_job *jb = ctx;
    struct gate_cache *c = jb->c;
    const struct gate_dims *d = jb->d;
    const int N = d->N, E = d->E, K = d->K, M = gate_m(d);
    const bool smooth_load = d->train && K < E;
    int r0, r1;
    moe_par_span(task, GATE_ROWS, N, &r0, &r1);
    for (int r = r0; r < r1; r++) {
        const size_t o = (size_t)r * E;
        const float *cl = c->clean + o;
        float *sd = c->std + o, *h = c->H + o, *eps = c->eps + o;
        const float *nl = c->nl + o;
        if (d->train) {
            /* whole rows at a time, so that these loops vectorise */
            for (int i = 0; i < E; i++)
                sd[i] = moe_vsoftplusf(nl[i]) + GATE_NOISE_EPS;
            moe_rng_normal_row(eps, d->seed, d->purpose ? d->purpose : MOE_RNG_GATE_NOISE,
                               (uint64_t)d->step,
                               (uint32_t)(d->row0 + (d->rows ? d->rows[r] : r)), d->col0,
                               (size_t)E);
            for (int i = 0; i < E; i++)
                h[i] = cl[i] + eps[i] * sd[i];
        } else {
            memset(eps, 0, sizeof(float) * (size_t)E);
            memset(sd, 0, sizeof(float) * (size_t)E);
            memcpy(h, cl, sizeof(float) * (size_t)E);
        }
        int32_t *ti = c->topi + (size_t)r * M;
        float *tv = c->topv + (size_t)r * M;
        top_m(ti, tv, h, E, M);

        /* softmax over the top K */
        float *g = c->gates + (size_t)r * K;
        int32_t *id = c->idx + (size_t)r * K;
        double sum = 0;
        for (int j = 0; j < K; j++) {
            double e = exp((double)tv[j] - (double)tv[0]);
            g[j] = (float)e;
            sum += e;
        }
        for (int j = 0; j < K; j++) {
            g[j] = (float)(g[j] / sum);
            id[j] = ti[j];
        }

        if (smooth_load) {
            const float thr_in = tv[K], thr_out = tv[K - 1];
            float *p = c->p + o;
            for (int i = 0; i < E; i++) {
                const float thr = h[i] > thr_in ? thr_in : thr_out;
                p[i] = moe_vphif((cl[i] - thr) / phi_arg_denom(sd[i]));
            }
        }
    }
}

void gate_forward(struct gate_cache *c, float *imp, float *load, const float *x, const float *w_g,
                  const float *w_noise, const struct gate_dims *d)
{
    const int N = d->N, E = d->E, K = d->K;
    const bool smooth_load = d->train && K < E;
    moe_sgemm(false, false, N, E, d->D, 1.0f, x, d->D, w_g, E, 0.0f, c->clean, E);
    if (d->train)
        moe_sgemm(false, false, N, E, d->D, 1.0f, x, d->D, w_noise, E, 0.0f, c->nl, E);
    else
        memset(c->nl, 0, sizeof(float) * (size_t)N * E);

    struct gate_job jb = {.c = c, .d = d};
    moe_par_for(moe_par_tasks(N, GATE_ROWS), forward_rows, &jb);
    /* Importance and Load: sums over rows in row order */
    for (int r = 0; r < N; r++) {
        const float *g = c->gates + (size_t)r * K;
        const int32_t *ti = c->idx + (size_t)r * K;
        for (int j = 0; j < K; j++)
            imp[ti[j]] += g[j];
        if (!smooth_load)
            for (int j = 0; j < K; j++)
                if (g[j] > 0.0f)
                    load[ti[j]] += 1.0f;
    }
    if (smooth_load)
        moe_par_colsum_acc(load, c->p, N, E);
}

double gate_cv_squared(const float *v, int n, float *dv)
{
    const double np = (double)n + CV_EPS;
    double s = 0;
    for (int i = 0; i < n; i++)
        s += v[i];
    const double mean = s / np;
    double var = 0, dsum = 0;
    for (int i = 0; i < n; i++) {
        double dlt = v[i] - mean;
        var += dlt * dlt;
        dsum += dlt;
    }
    var /= np;
    const double den = mean * mean + CV_EPS;
    if (dv) {
        /* d var/d v_i = 2/N' (v_i - mean - sum_j (v_j - mean) / N');
         * d mean/d v_i = 1/N'. */
        for (int i = 0; i < n; i++) {
            double dvar = 2.0 / np * ((v[i] - mean) - dsum / np);
            dv[i] = (float)(dvar / den - var * 2.0 * mean / (den * den) / np);
        }
    }
    return var / den;
}

double gate_balance_loss(const float *imp, const float *load, int E, double w_imp, double w_load,
                         float *dimp, float *dload)
{
    double li = gate_cv_squared(imp, E, dimp);
    double ll = gate_cv_squared(load, E, dload);
    for (int i = 0; i < E; i++) {
        dimp[i] = (float)(dimp[i] * w_imp);
        dload[i] = (float)(dload[i] * w_load);
    }
    return w_imp * li + w_load * ll;
}

/* Backward of rows [GATE_ROWS * task, ...) into their rows of work. */
static void backward_rows(void *ctx, int task)
{
    const struct gate_job *jb = ctx;
    const struct gate_cache *c = jb->cc;
    const struct gate_dims *d = jb->d;
    const int N = d->N, E = d->E, K = d->K, M = gate_m(d);
    const bool smooth_load = d->train && K < E;
    const float *dimp = jb->dimp, *dload = jb->dload;
    float *dclean = jb->work, *dnl = jb->work + (size_t)N * E;
    int r0, r1;
    moe_par_span(task, GATE_ROWS, N, &r0, &r1);
    for (int r = r0; r < r1; r++) {
        const size_t o = (size_t)r * E;
        const float *g = c->gates + (size_t)r * K;
        const int32_t *ti = c->topi + (size_t)r * M;
        const float *dgr = jb->dgates + (size_t)r * K;
        float *dcl = dclean + o, *dsd = dnl + o; /* dnl holds d std until the end */
        if (!smooth_load) {
            memset(dcl, 0, sizeof(float) * (size_t)E);
            memset(dsd, 0, sizeof(float) * (size_t)E);
        }
        /* dH accumulates into dcl (dH/dclean = 1) and into dsd via eps. */
        float dh[E > 0 ? E : 1];
        memset(dh, 0, sizeof(float) * (size_t)E);

        /* gates: dG = dgates + dImportance; softmax backward onto top-k H */
        double dot = 0;
        float dgt[K > 0 ? K : 1];
        for (int j = 0; j < K; j++) {
            dgt[j] = dgr[j] + dimp[ti[j]];
            dot += (double)g[j] * dgt[j];
        }
        for (int j = 0; j < K; j++)
            dh[ti[j]] += (float)(g[j] * (dgt[j] - dot));

        if (smooth_load) {
            const float *cl = c->clean + o, *sd = c->std + o, *h = c->H + o;
            const float thr_in = c->topv[(size_t)r * M + K], thr_out = c->topv[(size_t)r * M + K - 1];
            /* dPhi/du = exp(-u^2) / sqrt(pi). This loop writes every dcl
             * (d clean = dz so far) and dsd, and vectorises; the dz then go
             * onto each threshold's expert in expert order. */
            for (int i = 0; i < E; i++) {
                const float thr = h[i] > thr_in ? thr_in : thr_out;
                const float den = phi_arg_denom(sd[i]);
                const float z = cl[i] - thr;
                const float u = z / den;
                const float du = dload[i] * moe_vexpf(-u * u) * 0.564189583547756287f;
                dcl[i] = du / den;
                dsd[i] = -du * z * 1.41421356237309505f / (den * den);
            }
            const int idx_in = ti[K], idx_out = ti[K - 1];
            for (int i = 0; i < E; i++)
                dh[h[i] > thr_in ? idx_in : idx_out] -= dcl[i];
        }
        if (d->train) {
            /* std = softplus(nl) + eps: d std / d nl = sigmoid(nl) */
            const float *eps = c->eps + o, *nl = c->nl + o;
            for (int i = 0; i < E; i++) {
                dcl[i] += dh[i];
                dsd[i] = (dsd[i] + dh[i] * eps[i]) * moe_vsigmoidf(nl[i]);
            }
        } else {
            for (int i = 0; i < E; i++)
                dcl[i] += dh[i];
        }
    }
}

void gate_backward(float *dx, float *dw_g, float *dw_noise, float *work, const float *dgates,
                   const float *dimp, const float *dload, const float *x, const float *w_g,
                   const float *w_noise, const struct gate_cache *c, const struct gate_dims *d)
{
    const int N = d->N, E = d->E, D = d->D;
    float *dclean = work, *dnl = work + (size_t)N * E;
    struct gate_job jb = {.cc = c, .d = d, .work = work, .dgates = dgates, .dimp = dimp,
                          .dload = dload};
    moe_par_for(moe_par_tasks(N, GATE_ROWS), backward_rows, &jb);
    moe_sgemm(true, false, D, E, N, 1.0f, x, D, dclean, E, 1.0f, dw_g, E);
    moe_sgemm(false, true, N, D, E, 1.0f, dclean, E, w_g, E, 1.0f, dx, D);
    if (d->train) {
        moe_sgemm(true, false, D, E, N, 1.0f, x, D, dnl, E, 1.0f, dw_noise, E);
        moe_sgemm(false, true, N, D, E, 1.0f, dnl, E, w_noise, E, 1.0f, dx, D);
    }
}
