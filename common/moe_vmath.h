/* Float exp, log, cos, softplus, sigmoid and the normal CDF as branch-free
 * polynomials, for per-element work over long rows (the gate's noise, noise
 * scale and smooth Load, at 16 million elements a step with 1024 experts).
 *
 * They are static inline so that a loop calling them is vectorised by the
 * compiler: libm's functions are calls, one element at a time. They use no
 * libm, so their bits are the same on every C library, and with
 * -ffp-contract=off a vectorised loop gives the same bits as a scalar one.
 *
 * Accuracy (asserted by tests/unit/test_vmath.c over dense sweeps, against
 * double libm): exp and log within 1 ulp, cos of turns within 1.2e-7,
 * softplus within 2 ulp, sigmoid within 3 ulp, the normal CDF within 3e-7
 * absolute and 1e-4 relative in its lower tail. exp, log and the sine and
 * cosine polynomials use Cephes' single-precision coefficients (Moshier,
 * public domain); the CDF uses the erfc fit of Numerical Recipes. */
#ifndef MOE_VMATH_H
#define MOE_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float moe__vm_float(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static inline uint32_t moe__vm_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* e^x, with overflow to infinity above 88.72 and gradual underflow below
 * -87.3 (anything below -104 gives 0); NaN gives NaN. */
static inline float moe_vexpf(float x)
{
    /* k from a clamp that maps NaN to a finite value (the conversion to int
     * must stay defined); r from one that keeps NaN */
    float kx = x > -104.0f ? x : -104.0f;
    kx = kx < 89.0f ? kx : 89.0f;
    const float xr = x < -104.0f ? -104.0f : x > 89.0f ? 89.0f : x;
    const float k = floorf(kx * 1.44269504088896341f + 0.5f);
    /* x - k ln 2 in two steps: 0.693359375 has few bits, so k * it is exact */
    float r = xr - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    const float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * z + r + 1.0f;
    /* times 2^k, k in [-150, 128], as two normal powers of two, so that the
     * only rounding is into the subnormals or to infinity at the end */
    const int32_t k1 = (int32_t)k / 2, k2 = (int32_t)k - k1;
    return p * moe__vm_float((uint32_t)(k1 + 127) << 23) *
           moe__vm_float((uint32_t)(k2 + 127) << 23);
}

/* Natural log of a positive normal float (not of 0, subnormals or infinity;
 * the callers' arguments are in [2^-24, 2]). */
static inline float moe_vlogf(float x)
{
    const uint32_t b = moe__vm_bits(x);
    /* x = m 2^e with m in [0.5, 1) */
    int32_t e = (int32_t)((b >> 23) & 0xffu) - 126;
    float m = moe__vm_float((b & 0x007fffffu) | 0x3f000000u);
    /* m in [sqrt(1/2), sqrt(2)) and take 1 off it: both exact */
    const int lo = m < 0.707106781186547524f;
    e = lo ? e - 1 : e;
    m = lo ? m + m - 1.0f : m - 1.0f;
    const float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m + -1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m + -1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m + -1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m + -2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z;
    const float fe = (float)e;
    y = y + fe * -2.12194440e-4f;
    y = y + -0.5f * z;
    return (m + y) + fe * 0.693359375f;
}

/* cos(2 pi u) for |u| < 2^22. u is reduced to the nearest quarter turn
 * exactly (u - q/4 needs no rounding), so the polynomials see |angle| <= pi/4. */
static inline float moe_vcos_turns(float u)
{
    const float q = rintf(4.0f * u);
    const float a = (u - 0.25f * q) * 6.28318530717958648f;
    const float z = a * a;
    float s = -1.9515295891e-4f;
    s = s * z + 8.3321608736e-3f;
    s = s * z + -1.6666654611e-1f;
    s = s * z * a + a;
    float c = 2.443315711809948e-5f;
    c = c * z + -1.388731625493765e-3f;
    c = c * z + 4.166664568298827e-2f;
    c = c * z * z - 0.5f * z + 1.0f;
    /* cos(a + q pi / 2) by quadrant */
    const int32_t quad = (int32_t)q & 3;
    const float v = quad & 1 ? s : c;
    return quad == 1 || quad == 2 ? -v : v;
}

/* log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|), with log1p(t)
 * = log(1 + t) - ((1 + t) - 1 - t) / (1 + t), exact to rounding for tiny t. */
static inline float moe_vsoftplusf(float x)
{
    const float t = moe_vexpf(-fabsf(x));
    const float u = 1.0f + t;
    const float l1p = moe_vlogf(u) - ((u - 1.0f) - t) / u;
    return (x > 0.0f ? x : 0.0f) + l1p;
}

/* 1 / (1 + e^-x) */
static inline float moe_vsigmoidf(float x) { return 1.0f / (1.0f + moe_vexpf(-x)); }

/* The standard normal CDF at sqrt(2) u, 0.5 (1 + erf(u)) = 0.5 erfc(-u),
 * with erfc by the Chebyshev fit of Numerical Recipes (erfcc: relative
 * error under 1.2e-7 for every argument). The lower tail is 0.5 erfc(|u|)
 * itself, not 1 minus something, so it keeps its relative accuracy. */
static inline float moe_vphif(float u)
{
    const float a = fabsf(u);
    const float t = 1.0f / (1.0f + 0.5f * a);
    float p = 0.17087277f;
    p = p * t + -0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t + -1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t + -0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t + -1.26551223f;
    const float q = 0.5f * t * moe_vexpf(p - a * a);
    return u >= 0.0f ? 1.0f - q : q;
}

#endif
