/* Expert feed-forward math (see expert_ffn.h). Runs in workers (in-process
 * backend) and expert servers. GEMMs go through moe_blas; the elementwise
 * parts are fused into one pass each. */
#include "expert_ffn.h"

#include <string.h>

#include "moe_blas.h"
#include "moe_par.h"

size_t expert_ffn_param_count(int D, int H)
{
    return (size_t)H * D + (size_t)H + (size_t)D * H + (size_t)D;
}

struct expert_ffn_params expert_ffn_view(float *block, int D, int H)
{
    struct expert_ffn_params p;
    p.w1 = block;
    p.b1 = p.w1 + (size_t)H * D;
    p.w2 = p.b1 + H;
    p.b2 = p.w2 + (size_t)D * H;
    return p;
}

/* The elementwise passes run as moe_par tasks: the ReLU over chunks of
 * rows, the bias gradients over chunks of columns (rows added in order), so
 * the results are the same bits for any thread count. */
#define FFN_ROWS 64
#define FFN_COLS 256

struct ffn_job {
    float *z, *dz;
    const float *zc;
    int R, C;
};

static void relu_rows(void *ctx, int task)
{
    const struct ffn_job *j = ctx;
    int r0, r1;
    moe_par_span(task, FFN_ROWS, j->R, &r0, &r1);
    float *z = j->z + (size_t)r0 * j->C;
    for (size_t i = 0, n = (size_t)(r1 - r0) * j->C; i < n; i++)
        z[i] = z[i] > 0.0f ? z[i] : 0.0f;
}

/* dz = dz * [z > 0] for the task's columns. */
static void relu_back_cols(void *ctx, int task)
{
    const struct ffn_job *j = ctx;
    int c0, c1;
    moe_par_span(task, FFN_COLS, j->C, &c0, &c1);
    for (int r = 0; r < j->R; r++) {
        float *d = j->dz + (size_t)r * j->C;
        const float *z = j->zc + (size_t)r * j->C;
        for (int c = c0; c < c1; c++)
            d[c] = z[c] > 0.0f ? d[c] : 0.0f;
    }
}

void expert_ffn_hidden(float *z, const float *x, const struct expert_ffn_params *p, int R, int D,
                       int H)
{
    if (R <= 0)
        return;
    /* bias preloaded so the GEMM adds onto it */
    for (int r = 0; r < R; r++)
        memcpy(z + (size_t)r * H, p->b1, sizeof(float) * (size_t)H);
    moe_sgemm(false, true, R, H, D, 1.0f, x, D, p->w1, D, 1.0f, z, H);
    struct ffn_job j = {.z = z, .R = R, .C = H};
    moe_par_for(moe_par_tasks(R, FFN_ROWS), relu_rows, &j);
}

void expert_ffn_forward(float *y, float *z, const float *x, const struct expert_ffn_params *p,
                        int R, int D, int H)
{
    if (R <= 0)
        return;
    expert_ffn_hidden(z, x, p, R, D, H);
    for (int r = 0; r < R; r++)
        memcpy(y + (size_t)r * D, p->b2, sizeof(float) * (size_t)D);
    moe_sgemm(false, true, R, D, H, 1.0f, z, H, p->w2, H, 1.0f, y, D);
}

void expert_ffn_backward(float *dx, const struct expert_ffn_params *dp, float *dz_work,
                         const float *dy, const float *x, const float *z,
                         const struct expert_ffn_params *p, int R, int D, int H)
{
    expert_ffn_backward_input(dx, dz_work, dy, z, p, R, D, H);
    expert_ffn_backward_weights(dp, dy, x, z, dz_work, R, D, H);
}

/* dz = (dy W2) * [z > 0]; dx = dz W1 */
void expert_ffn_backward_input(float *dx, float *dz, const float *dy, const float *z,
                               const struct expert_ffn_params *p, int R, int D, int H)
{
    if (R <= 0)
        return;
    moe_sgemm(false, false, R, H, D, 1.0f, dy, D, p->w2, H, 0.0f, dz, H);
    struct ffn_job j1 = {.dz = dz, .zc = z, .R = R, .C = H};
    moe_par_for(moe_par_tasks(H, FFN_COLS), relu_back_cols, &j1);
    moe_sgemm(false, false, R, D, H, 1.0f, dz, H, p->w1, D, 0.0f, dx, D);
}

/* dW2 += dy^T z; db2 += sum_r dy; db1 += sum_r dz; dW1 += dz^T x (column
 * sums with rows in order, as moe_par_colsum_acc adds them) */
void expert_ffn_backward_weights(const struct expert_ffn_params *dp, const float *dy,
                                 const float *x, const float *z, const float *dz, int R, int D,
                                 int H)
{
    if (R <= 0)
        return;
    moe_sgemm(true, false, D, H, R, 1.0f, dy, D, z, H, 1.0f, dp->w2, H);
    moe_par_colsum_acc(dp->b2, dy, R, D);
    moe_par_colsum_acc(dp->b1, dz, R, H);
    moe_sgemm(true, false, H, D, R, 1.0f, dz, H, x, D, 1.0f, dp->w1, D);
}

void expert_ffn_forward_ref(float *y, float *z, const float *x, const struct expert_ffn_params *p,
                            int R, int D, int H)
{
    for (int r = 0; r < R; r++) {
        const float *xr = x + (size_t)r * D;
        float *zr = z + (size_t)r * H;
        for (int h = 0; h < H; h++) {
            double s = p->b1[h];
            for (int d = 0; d < D; d++)
                s += (double)xr[d] * p->w1[(size_t)h * D + d];
            zr[h] = s > 0 ? (float)s : 0.0f;
        }
        for (int d = 0; d < D; d++) {
            double s = p->b2[d];
            for (int h = 0; h < H; h++)
                s += (double)zr[h] * p->w2[(size_t)d * H + h];
            y[(size_t)r * D + d] = (float)s;
        }
    }
}

void expert_ffn_backward_ref(float *dx, const struct expert_ffn_params *dp, const float *dy,
                             const float *x, const float *z, const struct expert_ffn_params *p,
                             int R, int D, int H)
{
    for (int r = 0; r < R; r++) {
        const float *dyr = dy + (size_t)r * D, *zr = z + (size_t)r * H, *xr = x + (size_t)r * D;
        float *dxr = dx + (size_t)r * D;
        for (int d = 0; d < D; d++)
            dxr[d] = 0.0f;
        for (int d = 0; d < D; d++) {
            dp->b2[d] += dyr[d];
            for (int h = 0; h < H; h++)
                dp->w2[(size_t)d * H + h] += dyr[d] * zr[h];
        }
        for (int h = 0; h < H; h++) {
            if (zr[h] <= 0.0f)
                continue;
            double s = 0;
            for (int d = 0; d < D; d++)
                s += (double)dyr[d] * p->w2[(size_t)d * H + h];
            float dz = (float)s;
            dp->b1[h] += dz;
            for (int d = 0; d < D; d++) {
                dp->w1[(size_t)h * D + d] += dz * xr[d];
                dxr[d] += dz * p->w1[(size_t)h * D + d];
            }
        }
    }
}
