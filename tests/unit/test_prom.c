/* Unit tests of the Prometheus text writer (server/coordinator/moe_prom.c).
 *
 * text: the exact bytes of a counter, a gauge with labels, a histogram and a
 * summary, and a buffer grown over many samples then reset.
 * histogram: moe_hist (common/moe_metrics.c) bucketing observations and
 * moe_prom_histogram writing them cumulative, with +Inf, _sum and _count;
 * too many labels refused without a trace.
 * escape: label values and HELP texts with backslash, quote and newline;
 * UTF-8 kept, broken UTF-8 refused.
 * values: +Inf, -Inf, NaN, integers, and doubles that must round-trip.
 * reject: bad metric and label names, counters without _total, wrong
 * suffixes and reserved labels, samples before a family, repeated families;
 * each leaves the buffer byte-for-byte as it was. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_err.h"
#include "moe_metrics.h"
#include "moe_prom.h"

Suite *test_prom_suite(void);

#define L(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ------------------------------------------------------------------------- */
/* text */

START_TEST(prom_text_counter_and_gauge)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    ck_assert_int_eq(moe_prom_family(&b, "moe_expert_tokens_total", MOE_PROM_COUNTER,
                                     "Tokens routed to each expert."),
                     0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("expert", "0", "server", "0"), 33600), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("expert", "1", "server", "1"), 0), 0);
    ck_assert_int_eq(moe_prom_family(&b, "moe_expert_load", MOE_PROM_GAUGE,
                                     "Smoothed load of each expert."),
                     0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("expert", "0"), 70.25), 0);
    ck_assert_int_eq(moe_prom_family(&b, "moe_up", MOE_PROM_GAUGE, NULL), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, NULL, 1), 0);
    ck_assert_int_eq(moe_prom_family(&b, "moe_down", MOE_PROM_GAUGE, ""), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, NULL, 0), 0);
    ck_assert_int_eq(moe_prom_family(&b, "moe:ratio", MOE_PROM_UNTYPED, "x"), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, (const char *const[]){NULL}, -0.5), 0);
    const char *want = "# HELP moe_expert_tokens_total Tokens routed to each expert.\n"
                       "# TYPE moe_expert_tokens_total counter\n"
                       "moe_expert_tokens_total{expert=\"0\",server=\"0\"} 33600\n"
                       "moe_expert_tokens_total{expert=\"1\",server=\"1\"} 0\n"
                       "# HELP moe_expert_load Smoothed load of each expert.\n"
                       "# TYPE moe_expert_load gauge\n"
                       "moe_expert_load{expert=\"0\"} 70.25\n"
                       "# TYPE moe_up gauge\n"
                       "moe_up 1\n"
                       "# TYPE moe_down gauge\n"
                       "moe_down 0\n"
                       "# HELP moe:ratio x\n"
                       "# TYPE moe:ratio untyped\n"
                       "moe:ratio -0.5\n";
    ck_assert_str_eq(b.data, want);
    ck_assert_uint_eq(b.len, strlen(want));
    ck_assert_uint_ge(b.cap, b.len + 1);
    moe_prom_buf_free(&b);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.len, 0);
    moe_prom_buf_free(&b); /* twice is fine */
}
END_TEST

START_TEST(prom_text_histogram_and_summary)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    ck_assert_int_eq(moe_prom_family(&b, "moe_rpc_latency_seconds", MOE_PROM_HISTOGRAM,
                                     "Expert RPC round trip."),
                     0);
    ck_assert_int_eq(moe_prom_sample(&b, "_bucket", L("server", "0", "le", "0.001"), 3), 0);
    ck_assert_int_eq(moe_prom_sample(&b, "_bucket", L("server", "0", "le", "0.01"), 10), 0);
    ck_assert_int_eq(moe_prom_sample(&b, "_bucket", L("server", "0", "le", "+Inf"), 12), 0);
    ck_assert_int_eq(moe_prom_sample(&b, "_sum", L("server", "0"), 0.0625), 0);
    ck_assert_int_eq(moe_prom_sample(&b, "_count", L("server", "0"), 12), 0);
    ck_assert_int_eq(moe_prom_family(&b, "moe_step_seconds", MOE_PROM_SUMMARY, "Step time."), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("quantile", "0.5"), 0.125), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("quantile", "0.99"), 0.5), 0);
    ck_assert_int_eq(moe_prom_sample(&b, "_sum", NULL, 30), 0);
    ck_assert_int_eq(moe_prom_sample(&b, "_count", NULL, 120), 0);
    ck_assert_str_eq(b.data, "# HELP moe_rpc_latency_seconds Expert RPC round trip.\n"
                             "# TYPE moe_rpc_latency_seconds histogram\n"
                             "moe_rpc_latency_seconds_bucket{server=\"0\",le=\"0.001\"} 3\n"
                             "moe_rpc_latency_seconds_bucket{server=\"0\",le=\"0.01\"} 10\n"
                             "moe_rpc_latency_seconds_bucket{server=\"0\",le=\"+Inf\"} 12\n"
                             "moe_rpc_latency_seconds_sum{server=\"0\"} 0.0625\n"
                             "moe_rpc_latency_seconds_count{server=\"0\"} 12\n"
                             "# HELP moe_step_seconds Step time.\n"
                             "# TYPE moe_step_seconds summary\n"
                             "moe_step_seconds{quantile=\"0.5\"} 0.125\n"
                             "moe_step_seconds{quantile=\"0.99\"} 0.5\n"
                             "moe_step_seconds_sum 30\n"
                             "moe_step_seconds_count 120\n");
    moe_prom_buf_free(&b);
}
END_TEST

START_TEST(prom_text_grows_and_resets)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    ck_assert_int_eq(moe_prom_family(&b, "moe_expert_rows_total", MOE_PROM_COUNTER, "Rows."), 0);
    size_t want_len = b.len;
    for (int i = 0; i < 5000; i++) {
        char id[16], line[96];
        snprintf(id, sizeof id, "%d", i);
        ck_assert_int_eq(moe_prom_sample(&b, NULL, L("expert", id), i * 3.0), 0);
        want_len += (size_t)snprintf(line, sizeof line, "moe_expert_rows_total{expert=\"%d\"} %d\n",
                                     i, i * 3);
    }
    ck_assert_uint_eq(b.len, want_len);
    ck_assert_uint_eq(strlen(b.data), want_len);
    ck_assert_ptr_nonnull(strstr(b.data, "\nmoe_expert_rows_total{expert=\"4999\"} 14997\n"));

    const size_t cap = b.cap;
    moe_prom_buf_reset(&b);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_uint_eq(b.cap, cap);
    ck_assert_str_eq(b.data, "");
    /* after a reset there is no current family, and the old one may return */
    ck_assert_int_eq(moe_prom_sample(&b, NULL, NULL, 1), MOE_ERR_STATE);
    ck_assert_int_eq(moe_prom_family(&b, "moe_expert_rows_total", MOE_PROM_COUNTER, NULL), 0);
    moe_prom_buf_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* escape */

START_TEST(prom_escape_label_values_and_help)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    ck_assert_int_eq(moe_prom_family(&b, "moe_server_info", MOE_PROM_GAUGE,
                                     "A \\path\\ with \"quotes\"\nand a second line."),
                     0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL,
                                     L("endpoint", "tcp://127.0.0.1:5600", "note",
                                       "a\\b \"q\"\nnext", "empty", "", "utf8", "caf\xc3\xa9 \xe2\x9c\x93"),
                                     1),
                     0);
    ck_assert_str_eq(b.data,
                     "# HELP moe_server_info A \\\\path\\\\ with \"quotes\"\\nand a second line.\n"
                     "# TYPE moe_server_info gauge\n"
                     "moe_server_info{endpoint=\"tcp://127.0.0.1:5600\",note=\"a\\\\b \\\"q\\\"\\nnext\","
                     "empty=\"\",utf8=\"caf\xc3\xa9 \xe2\x9c\x93\"} 1\n");
    moe_prom_buf_free(&b);
}
END_TEST

START_TEST(prom_escape_refuses_broken_utf8)
{
    static const char *const bad[] = {
        "\xff",             /* never valid */
        "a\x80",            /* stray continuation byte */
        "\xc3",             /* truncated two-byte form */
        "\xc0\xaf",         /* overlong '/' */
        "\xe0\x80\xaf",     /* overlong three-byte form */
        "\xed\xa0\x80",     /* a surrogate */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
    };
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(moe_prom_family(&b, "moe_x", MOE_PROM_GAUGE, bad[i]) == MOE_ERR_FORMAT,
                      "help case %zu", i);
        ck_assert_uint_eq(b.len, 0);
    }
    ck_assert_int_eq(moe_prom_family(&b, "moe_x", MOE_PROM_GAUGE, "\xf0\x9f\x98\x80"), 0);
    const size_t len = b.len;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(moe_prom_sample(&b, NULL, L("v", bad[i]), 1) == MOE_ERR_FORMAT,
                      "label case %zu", i);
        ck_assert_uint_eq(b.len, len);
    }
    moe_prom_buf_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* values */

static const char *fmt(char *out, double v)
{
    ck_assert_int_ge(moe_prom_format_value(out, 32, v), 1);
    return out;
}

START_TEST(prom_values_special_and_integers)
{
    char s[32];
    ck_assert_str_eq(fmt(s, INFINITY), "+Inf");
    ck_assert_str_eq(fmt(s, -INFINITY), "-Inf");
    ck_assert_str_eq(fmt(s, NAN), "NaN");
    ck_assert_str_eq(fmt(s, -NAN), "NaN");
    ck_assert_str_eq(fmt(s, 0), "0");
    ck_assert_str_eq(fmt(s, 42), "42");
    ck_assert_str_eq(fmt(s, -7), "-7");
    ck_assert_str_eq(fmt(s, 1e15), "1000000000000000");
    ck_assert_str_eq(fmt(s, 9007199254740992.0), "9007199254740992");
    ck_assert_str_eq(fmt(s, 4294967296.0), "4294967296");
    /* beyond 2^53 an exponent is shorter and just as exact */
    ck_assert_str_eq(fmt(s, 1e20), "1e+20");
    ck_assert_str_eq(fmt(s, 0.1), "0.1");
    ck_assert_str_eq(fmt(s, 0.0625), "0.0625");
    ck_assert_str_eq(fmt(s, 1.5e-7), "1.5e-07");

    /* too small an output buffer: an error and an empty string */
    char tiny[4] = "xyz";
    ck_assert_int_eq(moe_prom_format_value(tiny, sizeof tiny, 12345), MOE_ERR_RANGE);
    ck_assert_str_eq(tiny, "");
    ck_assert_int_eq(moe_prom_format_value(tiny, sizeof tiny, 123), 3);
    ck_assert_str_eq(tiny, "123");

    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    ck_assert_int_eq(moe_prom_family(&b, "moe_v", MOE_PROM_GAUGE, NULL), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("k", "a"), INFINITY), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("k", "b"), -INFINITY), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("k", "c"), NAN), 0);
    ck_assert_str_eq(b.data, "# TYPE moe_v gauge\n"
                             "moe_v{k=\"a\"} +Inf\n"
                             "moe_v{k=\"b\"} -Inf\n"
                             "moe_v{k=\"c\"} NaN\n");
    moe_prom_buf_free(&b);
}
END_TEST

START_TEST(prom_values_round_trip)
{
    const double vals[] = {1.0 / 3, 2.0 / 3, 0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308,
                           -2.2250738585072014e-308, 123456.789, 3.141592653589793, 70.1,
                           0.0012, -1e-9, 9007199254740993.0, 1e16 + 2};
    char s[32];
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        const int n = moe_prom_format_value(s, sizeof s, vals[i]);
        ck_assert_int_gt(n, 0);
        ck_assert_uint_eq(strlen(s), (size_t)n);
        ck_assert_msg(strtod(s, NULL) == vals[i], "%s does not read back as %.17g", s, vals[i]);
        ck_assert_uint_le((size_t)n, 24);
    }
    /* the shortest form, not %.17g */
    ck_assert_str_eq(fmt(s, 70.1), "70.1");
    ck_assert_str_eq(fmt(s, 0.1 + 0.2), "0.30000000000000004");
    /* a pseudo-random sweep over magnitudes and mantissas */
    unsigned long long x = 88172645463325252ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double v;
        memcpy(&v, &x, sizeof v);
        if (!isfinite(v))
            continue;
        ck_assert_int_gt(moe_prom_format_value(s, sizeof s, v), 0);
        ck_assert_msg(strtod(s, NULL) == v, "%s vs %a", s, v);
    }
}
END_TEST

/* ------------------------------------------------------------------------- */
/* reject */

START_TEST(prom_reject_bad_family_names)
{
    static const char *const bad[] = {"", "0abc", "moe-x", "moe x", "moe.x", "moe_é", "moe{x}",
                                      "moe\nx", "moe\"x"};
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    ck_assert_int_eq(moe_prom_family(&b, "moe_ok", MOE_PROM_GAUGE, "ok"), 0);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, NULL, 1), 0);
    char *before = strdup(b.data);
    ck_assert_ptr_nonnull(before);
    const size_t len = b.len;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(moe_prom_family(&b, bad[i], MOE_PROM_GAUGE, "h") == MOE_ERR_FORMAT,
                      "name case %zu", i);
    }
    ck_assert_int_eq(moe_prom_family(&b, NULL, MOE_PROM_GAUGE, "h"), MOE_ERR_FORMAT);
    /* counters end in _total */
    ck_assert_int_eq(moe_prom_family(&b, "moe_rows", MOE_PROM_COUNTER, "h"), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_family(&b, "moe_total_rows", MOE_PROM_COUNTER, "h"), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_family(&b, "moe_x", (enum moe_prom_type)99, "h"), MOE_ERR_FORMAT);
    /* a repeated family */
    ck_assert_int_eq(moe_prom_family(&b, "moe_ok", MOE_PROM_UNTYPED, "again"), MOE_ERR_STATE);
    /* too long once the longest suffix is added */
    char name[MOE_PROM_NAME_MAX + 2];
    memset(name, 'a', sizeof name);
    name[MOE_PROM_NAME_MAX + 1] = 0;
    ck_assert_int_eq(moe_prom_family(&b, name, MOE_PROM_GAUGE, "h"), MOE_ERR_RANGE);
    name[MOE_PROM_NAME_MAX - 6] = 0;
    ck_assert_int_eq(moe_prom_family(&b, name, MOE_PROM_HISTOGRAM, "h"), MOE_ERR_RANGE);
    ck_assert_uint_eq(b.len, len);
    ck_assert_str_eq(b.data, before);
    /* the failures above left the current family alone */
    ck_assert_str_eq(b.family, "moe_ok");
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("k", "2"), 2), 0);
    /* the edge cases that are fine */
    ck_assert_int_eq(moe_prom_family(&b, "_x", MOE_PROM_GAUGE, NULL), 0);
    ck_assert_int_eq(moe_prom_family(&b, ":x:y", MOE_PROM_GAUGE, NULL), 0);
    ck_assert_int_eq(moe_prom_family(&b, "Ab_9", MOE_PROM_GAUGE, NULL), 0);
    ck_assert_int_eq(moe_prom_family(&b, "_total", MOE_PROM_COUNTER, NULL), 0);
    ck_assert_int_eq(moe_prom_family(&b, name, MOE_PROM_GAUGE, NULL), 0);
    name[MOE_PROM_NAME_MAX - 7] = 0;
    ck_assert_int_eq(moe_prom_family(&b, name, MOE_PROM_HISTOGRAM, NULL), 0);
    free(before);
    moe_prom_buf_free(&b);
}
END_TEST

START_TEST(prom_reject_bad_samples)
{
    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, NULL, 1), MOE_ERR_STATE);
    ck_assert_ptr_null(b.data);

    ck_assert_int_eq(moe_prom_family(&b, "moe_g", MOE_PROM_GAUGE, NULL), 0);
    const size_t len = b.len;
    const char *const *const bad_labels[] = {
        L("0k", "v"), L("k-1", "v"), L("", "v"), L("k:x", "v"), L("__name__", "v"),
        L("__x", "v"), L("k", "v", "k", "w"), L("k", "v", "j"),
    };
    for (size_t i = 0; i < sizeof bad_labels / sizeof bad_labels[0]; i++) {
        ck_assert_msg(moe_prom_sample(&b, NULL, bad_labels[i], 1) == MOE_ERR_FORMAT,
                      "labels case %zu", i);
        ck_assert_uint_eq(b.len, len);
    }
    /* gauges, counters and untyped take no suffix */
    ck_assert_int_eq(moe_prom_sample(&b, "_sum", NULL, 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, "", NULL, 1), MOE_ERR_FORMAT);
    /* "le" and "quantile" are plain labels outside histograms and summaries */
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("le", "1", "quantile", "2"), 1), 0);
    ck_assert_int_eq(moe_prom_family(&b, "moe_c_total", MOE_PROM_COUNTER, NULL), 0);
    ck_assert_int_eq(moe_prom_sample(&b, "_total", NULL, 1), MOE_ERR_FORMAT);

    ck_assert_int_eq(moe_prom_family(&b, "moe_h", MOE_PROM_HISTOGRAM, NULL), 0);
    const size_t hlen = b.len;
    ck_assert_int_eq(moe_prom_sample(&b, NULL, NULL, 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, "_bucket", NULL, 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, "_bucket", L("k", "v"), 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, "_sum", L("le", "1"), 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, "_count", L("le", "1"), 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, "_total", NULL, 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, "_bucket", L("quantile", "1", "le", "1"), 1),
                     0); /* quantile means nothing on a histogram */
    ck_assert_uint_gt(b.len, hlen);

    ck_assert_int_eq(moe_prom_family(&b, "moe_s", MOE_PROM_SUMMARY, NULL), 0);
    const size_t slen = b.len;
    ck_assert_int_eq(moe_prom_sample(&b, NULL, NULL, 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, NULL, L("k", "v"), 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, "_sum", L("quantile", "0.5"), 1), MOE_ERR_FORMAT);
    ck_assert_int_eq(moe_prom_sample(&b, "_bucket", L("le", "1"), 1), MOE_ERR_FORMAT);
    ck_assert_uint_eq(b.len, slen);
    moe_prom_buf_free(&b);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* histogram */

START_TEST(prom_histogram_cumulative)
{
    static const double bounds[] = {0.1, 1, 10};
    struct moe_hist h;
    moe_hist_init(&h, bounds, 3);
    const double obs[] = {0.05, 0.1, 0.5, 2, 2, 50, NAN, -1};
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++)
        moe_hist_observe(&h, obs[i]);
    /* le is inclusive; NaN and negative values count as 0 */
    ck_assert_uint_eq(h.counts[0], 4);
    ck_assert_uint_eq(h.counts[1], 1);
    ck_assert_uint_eq(h.counts[2], 2);
    ck_assert_uint_eq(h.counts[3], 1);
    ck_assert_uint_eq(h.count, 8);
    ck_assert_double_eq_tol(h.sum, 54.65, 1e-12);

    struct moe_prom_buf b;
    moe_prom_buf_init(&b);
    ck_assert_int_eq(moe_prom_family(&b, "moe_t_seconds", MOE_PROM_HISTOGRAM, NULL), 0);
    ck_assert_int_eq(moe_prom_histogram(&b, L("server", "3"), h.bounds, h.n, h.counts, 2.5), 0);
    ck_assert_str_eq(b.data, "# TYPE moe_t_seconds histogram\n"
                             "moe_t_seconds_bucket{server=\"3\",le=\"0.1\"} 4\n"
                             "moe_t_seconds_bucket{server=\"3\",le=\"1\"} 5\n"
                             "moe_t_seconds_bucket{server=\"3\",le=\"10\"} 7\n"
                             "moe_t_seconds_bucket{server=\"3\",le=\"+Inf\"} 8\n"
                             "moe_t_seconds_sum{server=\"3\"} 2.5\n"
                             "moe_t_seconds_count{server=\"3\"} 8\n");
    const size_t len = b.len;
    /* 8 label pairs leave no room for le: refused, nothing written */
    ck_assert_int_eq(moe_prom_histogram(&b, L("a", "1", "b", "1", "c", "1", "d", "1", "e", "1",
                                              "f", "1", "g", "1", "h", "1"),
                                        h.bounds, h.n, h.counts, 0),
                     MOE_ERR_RANGE);
    /* a gauge takes no buckets: refused, nothing written */
    ck_assert_int_eq(moe_prom_family(&b, "moe_g", MOE_PROM_GAUGE, NULL), 0);
    const size_t glen = b.len;
    ck_assert_int_eq(moe_prom_histogram(&b, NULL, h.bounds, h.n, h.counts, 0), MOE_ERR_FORMAT);
    ck_assert_uint_eq(b.len, glen);
    ck_assert_uint_gt(glen, len);
    moe_prom_buf_free(&b);
}
END_TEST

Suite *test_prom_suite(void)
{
    Suite *s = suite_create("prom");
    TCase *tc = tcase_create("text");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, prom_text_counter_and_gauge);
    tcase_add_test(tc, prom_text_histogram_and_summary);
    tcase_add_test(tc, prom_text_grows_and_resets);
    suite_add_tcase(s, tc);
    tc = tcase_create("escape");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, prom_escape_label_values_and_help);
    tcase_add_test(tc, prom_escape_refuses_broken_utf8);
    suite_add_tcase(s, tc);
    tc = tcase_create("values");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, prom_values_special_and_integers);
    tcase_add_test(tc, prom_values_round_trip);
    suite_add_tcase(s, tc);
    tc = tcase_create("reject");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, prom_reject_bad_family_names);
    tcase_add_test(tc, prom_reject_bad_samples);
    suite_add_tcase(s, tc);
    tc = tcase_create("histogram");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, prom_histogram_cumulative);
    suite_add_tcase(s, tc);
    return s;
}
