/* Helpers shared by the unit and gradient tests: deterministic random
 * fills, comparisons and finite differences. */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

/* Fills x with uniform values in [-scale, scale) from the counter RNG. */
void tu_fill(float *x, size_t n, uint32_t stream, float scale);

/* sum a[i] w[i] in double: the scalar losses of the gradient checks. */
double tu_dotw(const float *a, const float *w, size_t n);

/* Max |a-b| / max(|b|, floor) over n values. */
double tu_max_rel_err(const float *a, const float *b, size_t n, double floor);

/* Directional finite-difference check: `loss` evaluates the scalar loss
 * for the current contents of `theta` (n floats); g is the analytic
 * gradient. For `dirs` random directions v (restricted to theta), compares
 * (L(theta + h v) - L(theta - h v)) / 2h with <g, v>; returns the worst
 * relative error |fd - an| / max(|fd|, |an|, abs_floor, 0.02 |g|). theta is
 * restored. Directions whose steps cross a kink of the loss (finite
 * differences at h and h/2 disagree) are replaced; if fewer than `dirs`
 * smooth directions are found among 4*dirs, returns INFINITY. */
typedef double (*tu_loss_fn)(void *ctx);
double tu_grad_check(tu_loss_fn loss, void *ctx, float *theta, const float *g, size_t n,
                     double h, int dirs, uint32_t stream, double abs_floor);

/* Element-wise finite differences for up to `count` coordinates spread over
 * theta; returns the worst relative error (same definition). */
double tu_grad_check_coords(tu_loss_fn loss, void *ctx, float *theta, const float *g, size_t n,
                            double h, int count, double abs_floor);

/* A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0). */
int tu_free_port(void);

/* A temporary directory (mkdtemp under TMPDIR or /tmp); removed by
 * tu_rmtree. The returned string is static storage per call site copy. */
void tu_tmpdir(char *out, size_t cap);
void tu_rmtree(const char *path);

#endif
