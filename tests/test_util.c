/* Test helpers (see test_util.h). */
#define _XOPEN_SOURCE 700
#include "test_util.h"

#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe_rng.h"

void tu_fill(float *x, size_t n, uint32_t stream, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (2.0f * moe_rng_uniform(12345, MOE_RNG_TEST, stream, (uint32_t)i, 0) - 1.0f) * scale;
}

double tu_dotw(const float *a, const float *w, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * w[i];
    return s;
}

double tu_max_rel_err(const float *a, const float *b, size_t n, double floor)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(fabs((double)b[i]), floor);
        if (d > worst || isnan(d))
            worst = isnan(d) ? INFINITY : d;
    }
    return worst;
}

static double fd_along(tu_loss_fn loss, void *ctx, float *theta, const float *save,
                       const float *v, double norm, size_t n, double h)
{
    for (size_t i = 0; i < n; i++)
        theta[i] = (float)(save[i] + h * v[i] / norm);
    double lp = loss(ctx);
    for (size_t i = 0; i < n; i++)
        theta[i] = (float)(save[i] - h * v[i] / norm);
    double lm = loss(ctx);
    memcpy(theta, save, sizeof(float) * n);
    return (lp - lm) / (2 * h);
}

double tu_grad_check(tu_loss_fn loss, void *ctx, float *theta, const float *g, size_t n,
                     double h, int dirs, uint32_t stream, double abs_floor)
{
    float *save = malloc(sizeof(float) * n), *v = malloc(sizeof(float) * n);
    ck_assert_ptr_nonnull(save);
    ck_assert_ptr_nonnull(v);
    memcpy(save, theta, sizeof(float) * n);
    /* A direction almost orthogonal to g has a derivative near 0 that float
     * rounding in the loss swamps; measure errors against a small fraction
     * of |g| there. A wrong sign or a missing term is still an O(|g|) error. */
    double gnorm = 0;
    for (size_t i = 0; i < n; i++)
        gnorm += (double)g[i] * g[i];
    abs_floor = fmax(abs_floor, 2e-2 * sqrt(gnorm));
    double worst = 0;
    int valid = 0;
    /* Top-k routing and ReLU make the loss piecewise smooth. A direction
     * whose step crosses a kink shows as differences at h and h/2 that
     * disagree; such a direction says nothing about the gradient and is
     * replaced by another. A wrong gradient gives consistent differences
     * that disagree with <g, v>, and is caught. */
    for (int k = 0; k < 4 * dirs && valid < dirs; k++) {
        tu_fill(v, n, stream * 131u + (uint32_t)k, 1.0f);
        double an = 0, norm = 0;
        for (size_t i = 0; i < n; i++) {
            an += (double)g[i] * v[i];
            norm += (double)v[i] * v[i];
        }
        norm = sqrt(norm);
        an /= norm;
        double fd1 = fd_along(loss, ctx, theta, save, v, norm, n, h);
        double fd2 = fd_along(loss, ctx, theta, save, v, norm, n, h / 2);
        double scale = fmax(fmax(fabs(fd2), fabs(an)), abs_floor);
        if (getenv("TU_DEBUG"))
            fprintf(stderr, "dir %d: fd(h) %.6g fd(h/2) %.6g analytic %.6g\n", k, fd1, fd2, an);
        if (fabs(fd1 - fd2) > 1e-2 * scale)
            continue;
        valid++;
        double err = fabs(fd2 - an) / scale;
        if (err > worst || isnan(err))
            worst = isnan(err) ? INFINITY : err;
    }
    free(save);
    free(v);
    if (valid < dirs) {
        fprintf(stderr, "grad check: only %d of %d directions were smooth enough\n", valid, dirs);
        return INFINITY;
    }
    return worst;
}

double tu_grad_check_coords(tu_loss_fn loss, void *ctx, float *theta, const float *g, size_t n,
                            double h, int count, double abs_floor)
{
    double worst = 0;
    size_t stride = n / (size_t)count ? n / (size_t)count : 1;
    for (size_t i = 0; i < n; i += stride) {
        float s = theta[i];
        theta[i] = (float)(s + h);
        double lp = loss(ctx);
        theta[i] = (float)(s - h);
        double lm = loss(ctx);
        theta[i] = s;
        double fd = (lp - lm) / (2 * h);
        double err = fabs(fd - g[i]) / fmax(fmax(fabs(fd), fabs((double)g[i])), abs_floor);
        if (err > worst || isnan(err))
            worst = isnan(err) ? INFINITY : err;
    }
    return worst;
}

void tu_tmpdir(char *out, size_t cap)
{
    const char *base = getenv("TMPDIR");
    snprintf(out, cap, "%s/moe-test-XXXXXX", base && *base ? base : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(out));
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

void tu_rmtree(const char *path)
{
    nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

int tu_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}
