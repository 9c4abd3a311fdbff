/* Prometheus text exposition format 0.0.4 writer (see moe_prom.h).
 *
 * Every public call checks all of its input before writing, and writes
 * through append helpers that may grow the buffer; if growing fails half way
 * the call restores the old length, so a failed call never leaves a partial
 * line behind. */
#include "moe_prom.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_err.h"
#include "moe_file.h"

/* ------------------------------------------------------------------------- */
/* Buffer */

void moe_prom_buf_init(struct moe_prom_buf *b)
{
    memset(b, 0, sizeof *b);
    b->type = MOE_PROM_UNTYPED;
}

void moe_prom_buf_free(struct moe_prom_buf *b)
{
    free(b->data);
    moe_prom_buf_init(b);
}

void moe_prom_buf_reset(struct moe_prom_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = 0;
    b->family[0] = 0;
    b->type = MOE_PROM_UNTYPED;
}

/* Makes room for n more bytes plus the terminating NUL. */
static int buf_reserve(struct moe_prom_buf *b, size_t n)
{
    if (n > SIZE_MAX - 1 - b->len)
        return MOE_ERR_RANGE;
    const size_t need = b->len + n + 1;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p)
        return MOE_ERR_NOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

static int buf_put(struct moe_prom_buf *b, const char *s, size_t n)
{
    const int rc = buf_reserve(b, n);
    if (rc)
        return rc;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

/* Undoes a half-written line: a failed call leaves the buffer as it was. */
static void buf_truncate(struct moe_prom_buf *b, size_t len)
{
    b->len = len;
    if (b->data)
        b->data[len] = 0;
}

static int buf_puts(struct moe_prom_buf *b, const char *s) { return buf_put(b, s, strlen(s)); }

/* Appends s with backslash and newline escaped, and the double quote too
 * when `quote` is set (label values; HELP texts leave it alone). */
static int buf_put_escaped(struct moe_prom_buf *b, const char *s, int quote)
{
    for (const char *run = s;; s++) {
        const char *esc = NULL;
        if (*s == '\\')
            esc = "\\\\";
        else if (*s == '\n')
            esc = "\\n";
        else if (*s == '"' && quote)
            esc = "\\\"";
        else if (*s)
            continue;
        int rc = buf_put(b, run, (size_t)(s - run));
        if (rc == 0 && esc)
            rc = buf_puts(b, esc);
        if (rc || !*s)
            return rc;
        run = s + 1;
    }
}

/* ------------------------------------------------------------------------- */
/* Checks */

static int is_alpha_(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* [a-zA-Z_:][a-zA-Z0-9_:]* when colon is set, else [a-zA-Z_][a-zA-Z0-9_]*. */
static int valid_name(const char *s, int colon)
{
    if (!s || !*s)
        return 0;
    if (!is_alpha_(s[0]) && !(colon && s[0] == ':'))
        return 0;
    for (s++; *s; s++)
        if (!is_alpha_(*s) && !is_digit(*s) && !(colon && *s == ':'))
            return 0;
    return 1;
}

/* Well-formed UTF-8: no stray continuation bytes, no overlong forms, no
 * surrogates, nothing above U+10FFFF. The format requires it for label
 * values and HELP text, and a scraper may drop the whole page otherwise. */
static int valid_utf8(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    while (*s) {
        const unsigned c = *s;
        int n;
        unsigned cp;
        if (c < 0x80) {
            s++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1, cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        for (int i = 1; i <= n; i++) {
            if ((s[i] & 0xC0) != 0x80)
                return 0; /* also stops at the NUL */
            cp = (cp << 6) | (s[i] & 0x3Fu);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        s += n + 1;
    }
    return 1;
}


const char *moe_prom_type_name(enum moe_prom_type type)
{
    switch (type) {
    case MOE_PROM_COUNTER: return "counter";
    case MOE_PROM_GAUGE: return "gauge";
    case MOE_PROM_HISTOGRAM: return "histogram";
    case MOE_PROM_SUMMARY: return "summary";
    case MOE_PROM_UNTYPED: return "untyped";
    }
    return NULL;
}

/* The longest suffix a type's samples may carry. */
static size_t type_max_suffix(enum moe_prom_type type)
{
    return type == MOE_PROM_HISTOGRAM ? strlen("_bucket")
           : type == MOE_PROM_SUMMARY ? strlen("_count")
                                      : 0;
}

/* Is a "# TYPE name " line already in the buffer? A linear scan: a scrape
 * holds tens of families, and this keeps the buffer free of side tables. */
static int family_written(const struct moe_prom_buf *b, const char *name)
{
    if (!b->data)
        return 0;
    const size_t n = strlen(name);
    for (const char *p = b->data; (p = strstr(p, "# TYPE ")) != NULL; p += 7) {
        if ((p == b->data || p[-1] == '\n') && strncmp(p + 7, name, n) == 0 && p[7 + n] == ' ')
            return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Families and samples */

int moe_prom_family(struct moe_prom_buf *b, const char *name, enum moe_prom_type type,
                    const char *help)
{
    const char *type_name = moe_prom_type_name(type);
    if (!type_name || !valid_name(name, 1) || (help && !valid_utf8(help)))
        return MOE_ERR_FORMAT;
    if (type == MOE_PROM_COUNTER && !moe_has_suffix(name, "_total"))
        return MOE_ERR_FORMAT;
    if (strlen(name) + type_max_suffix(type) > MOE_PROM_NAME_MAX)
        return MOE_ERR_RANGE;
    if (family_written(b, name))
        return MOE_ERR_STATE;

    const size_t old_len = b->len;
    int rc = 0;
    if (help && *help) {
        rc = buf_puts(b, "# HELP ");
        rc = rc ? rc : buf_puts(b, name);
        rc = rc ? rc : buf_puts(b, " ");
        rc = rc ? rc : buf_put_escaped(b, help, 0);
        rc = rc ? rc : buf_puts(b, "\n");
    }
    rc = rc ? rc : buf_puts(b, "# TYPE ");
    rc = rc ? rc : buf_puts(b, name);
    rc = rc ? rc : buf_puts(b, " ");
    rc = rc ? rc : buf_puts(b, type_name);
    rc = rc ? rc : buf_puts(b, "\n");
    if (rc) {
        buf_truncate(b, old_len);
        return rc;
    }
    memcpy(b->family, name, strlen(name) + 1);
    b->type = type;
    return 0;
}

/* The label that a suffix of a type requires ("le", "quantile") or forbids.
 * Returns 0 when the suffix is allowed, and sets *special to the label
 * name that this sample must carry, or NULL when it must carry neither. */
static int check_suffix(enum moe_prom_type type, const char *suffix, const char **special)
{
    *special = NULL;
    if (type == MOE_PROM_HISTOGRAM) {
        if (suffix && strcmp(suffix, "_bucket") == 0) {
            *special = "le";
            return 0;
        }
        return suffix && (strcmp(suffix, "_sum") == 0 || strcmp(suffix, "_count") == 0) ? 0 : -1;
    }
    if (type == MOE_PROM_SUMMARY) {
        if (!suffix) {
            *special = "quantile";
            return 0;
        }
        return strcmp(suffix, "_sum") == 0 || strcmp(suffix, "_count") == 0 ? 0 : -1;
    }
    return suffix ? -1 : 0;
}

static int check_labels(enum moe_prom_type type, const char *const *labels, const char *special)
{
    int have_special = 0;
    for (size_t i = 0; labels && labels[i]; i += 2) {
        const char *key = labels[i], *value = labels[i + 1];
        if (!value || !valid_name(key, 0) || strncmp(key, "__", 2) == 0 || !valid_utf8(value))
            return MOE_ERR_FORMAT;
        for (size_t j = 0; j < i; j += 2)
            if (strcmp(labels[j], key) == 0)
                return MOE_ERR_FORMAT;
        /* "le" means something only on a histogram's buckets and "quantile"
         * only on a summary's quantiles; elsewhere a scraper would misread them. */
        const int reserved = (type == MOE_PROM_HISTOGRAM && strcmp(key, "le") == 0) ||
                             (type == MOE_PROM_SUMMARY && strcmp(key, "quantile") == 0);
        if (reserved) {
            if (!special || strcmp(key, special) != 0)
                return MOE_ERR_FORMAT;
            have_special = 1;
        }
    }
    return special && !have_special ? MOE_ERR_FORMAT : 0;
}

int moe_prom_sample(struct moe_prom_buf *b, const char *suffix, const char *const *labels,
                    double value)
{
    if (!b->family[0])
        return MOE_ERR_STATE;
    const char *special;
    if (check_suffix(b->type, suffix, &special) != 0)
        return MOE_ERR_FORMAT;
    int rc = check_labels(b->type, labels, special);
    if (rc)
        return rc;
    char num[32];
    rc = moe_prom_format_value(num, sizeof num, value);
    if (rc < 0)
        return rc;

    const size_t old_len = b->len;
    rc = buf_puts(b, b->family);
    if (rc == 0 && suffix)
        rc = buf_puts(b, suffix);
    if (rc == 0 && labels && labels[0]) {
        rc = buf_puts(b, "{");
        for (size_t i = 0; rc == 0 && labels[i]; i += 2) {
            rc = buf_puts(b, i ? "," : "");
            rc = rc ? rc : buf_puts(b, labels[i]);
            rc = rc ? rc : buf_puts(b, "=\"");
            rc = rc ? rc : buf_put_escaped(b, labels[i + 1], 1);
            rc = rc ? rc : buf_puts(b, "\"");
        }
        rc = rc ? rc : buf_puts(b, "}");
    }
    rc = rc ? rc : buf_puts(b, " ");
    rc = rc ? rc : buf_puts(b, num);
    rc = rc ? rc : buf_puts(b, "\n");
    if (rc)
        buf_truncate(b, old_len);
    return rc;
}

int moe_prom_histogram(struct moe_prom_buf *b, const char *const *labels, const double *bounds,
                       int n, const uint64_t *counts, double sum)
{
    const char *with_le[2 * 8 + 1];
    size_t k = 0;
    while (labels && labels[k]) {
        if (k >= 2 * 7)
            return MOE_ERR_RANGE;
        with_le[k] = labels[k];
        with_le[k + 1] = labels[k + 1];
        k += 2;
    }
    char le[32];
    with_le[k] = "le";
    with_le[k + 1] = le;
    with_le[k + 2] = NULL;
    const size_t old_len = b->len;
    double cum = 0;
    int rc = 0;
    for (int i = 0; rc == 0 && i <= n; i++) {
        cum += (double)counts[i];
        rc = moe_prom_format_value(le, sizeof le, i < n ? bounds[i] : INFINITY);
        rc = rc < 0 ? rc : moe_prom_sample(b, "_bucket", with_le, cum);
    }
    rc = rc ? rc : moe_prom_sample(b, "_sum", labels, sum);
    rc = rc ? rc : moe_prom_sample(b, "_count", labels, cum);
    if (rc)
        buf_truncate(b, old_len);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Numbers */

int moe_prom_format_value(char *out, size_t cap, double value)
{
    char tmp[40];
    int n;
    if (isnan(value)) {
        n = snprintf(tmp, sizeof tmp, "NaN");
    } else if (isinf(value)) {
        n = snprintf(tmp, sizeof tmp, value > 0 ? "+Inf" : "-Inf");
    } else if (value == floor(value) && fabs(value) <= 9007199254740992.0) {
        /* Exact integers (counters, sizes) print in full, never as 1e+15. */
        n = snprintf(tmp, sizeof tmp, "%.0f", value);
    } else {
        /* The shortest precision that reads back to the same double: 0.1 is
         * "0.1", not "0.10000000000000001", and nothing is lost. */
        n = 0;
        for (int prec = 15; prec <= 17; prec++) {
            n = snprintf(tmp, sizeof tmp, "%.*g", prec, value);
            if (strtod(tmp, NULL) == value)
                break;
        }
    }
    if (n < 0 || (size_t)n >= cap) {
        if (cap)
            out[0] = 0;
        return MOE_ERR_RANGE;
    }
    memcpy(out, tmp, (size_t)n + 1);
    return n;
}
