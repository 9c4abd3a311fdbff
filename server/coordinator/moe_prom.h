/* A writer of the Prometheus text exposition format, version 0.0.4, into a
 * growable buffer; the coordinator builds its /metrics answer with it.
 *
 * Usage: one moe_prom_family() call (HELP and TYPE lines) and then the
 * samples of that family, one moe_prom_sample() call each; then the next
 * family. Names, label names, label values and HELP texts are checked and
 * escaped here, so every buffer this file produces parses. A call that fails
 * writes nothing and leaves the buffer as it was.
 *
 * It does no I/O, keeps no global state and writes no timestamps. A buffer
 * belongs to one thread at a time. Numbers are formatted with snprintf, so
 * the process must keep the "C" LC_NUMERIC locale (the default). */
#ifndef MOE_PROM_H
#define MOE_PROM_H

#include <stddef.h>
#include <stdint.h>

/* Longest metric name, suffix included, without the terminating NUL. */
#define MOE_PROM_NAME_MAX 127

enum moe_prom_type {
    MOE_PROM_COUNTER = 0, /* name must end in "_total"; samples take no suffix */
    MOE_PROM_GAUGE,       /* samples take no suffix */
    MOE_PROM_HISTOGRAM,   /* suffixes "_bucket" (with an "le" label), "_sum", "_count" */
    MOE_PROM_SUMMARY,     /* no suffix (with a "quantile" label), "_sum", "_count" */
    MOE_PROM_UNTYPED,     /* samples take no suffix */
};

/* The text. `data` is NUL-terminated whenever it is not NULL (data[len] ==
 * 0) and holds `len` bytes of exposition; cap is the allocation. The family
 * fields are the writer's state: the family that samples belong to. */
struct moe_prom_buf {
    char *data;
    size_t len;
    size_t cap;
    char family[MOE_PROM_NAME_MAX + 1]; /* "" before the first family */
    enum moe_prom_type type;
};

/* An empty buffer that owns nothing yet (no allocation). */
void moe_prom_buf_init(struct moe_prom_buf *b);
/* Frees the text and leaves an empty buffer (init state); safe to repeat. */
void moe_prom_buf_free(struct moe_prom_buf *b);
/* Empties the buffer for the next scrape, keeping its allocation. */
void moe_prom_buf_reset(struct moe_prom_buf *b);

/* The name of a type as written on a TYPE line ("counter", ...), or NULL
 * for a value outside the enum. */
const char *moe_prom_type_name(enum moe_prom_type type);

/* Starts a family: writes "# HELP name help" (unless help is NULL or "") and
 * "# TYPE name type". `name` must match [a-zA-Z_:][a-zA-Z0-9_:]* and be at
 * most MOE_PROM_NAME_MAX bytes minus the longest suffix its type allows; a
 * counter's name must end in "_total". help is UTF-8; backslash and newline
 * are escaped.
 * Returns 0; MOE_ERR_FORMAT for a bad name or type or help that is not UTF-8;
 * MOE_ERR_RANGE for a name that is too long; MOE_ERR_STATE when a family of
 * that name is already in the buffer; MOE_ERR_NOMEM. */
int moe_prom_family(struct moe_prom_buf *b, const char *name, enum moe_prom_type type,
                    const char *help);

/* Writes one sample of the current family:
 *     <family><suffix>{k1="v1",k2="v2"} <value>\n
 * suffix: NULL, or one allowed by the family's type (see the enum).
 * labels: NULL or an array of key, value, key, value, ..., NULL (borrowed).
 * Keys match [a-zA-Z_][a-zA-Z0-9_]*, do not start with "__", appear once,
 * and "le" / "quantile" only where the type gives them a meaning (and there
 * they are required). Values are UTF-8; backslash, double quote and newline
 * are escaped. value: any double (see moe_prom_format_value).
 * Returns 0; MOE_ERR_STATE before the first family; MOE_ERR_FORMAT for a bad
 * suffix, key or value (odd pair list included); MOE_ERR_NOMEM. */
int moe_prom_sample(struct moe_prom_buf *b, const char *suffix, const char *const *labels,
                    double value);

/* Writes one histogram series of the current family (a MOE_PROM_HISTOGRAM):
 * the cumulative _bucket samples of bounds[0..n) (increasing) and le="+Inf",
 * then _sum and _count. counts[0..n] are per bucket, not cumulative
 * (counts[n]: above the last bound). labels as for moe_prom_sample, without
 * "le" (at most 7 pairs). Returns as moe_prom_sample; a failure leaves the
 * buffer as it was. */
int moe_prom_histogram(struct moe_prom_buf *b, const char *const *labels, const double *bounds,
                       int n, const uint64_t *counts, double sum);

/* Formats a sample value as the text format wants it: "+Inf", "-Inf",
 * "NaN", integers without exponent or point up to 2^53 ("42", "-7"), and
 * otherwise the shortest of %.15g/%.16g/%.17g that reads back as the same
 * double. Writes at most cap bytes, NUL included (cap >= 32 always
 * suffices). Returns the length, or MOE_ERR_RANGE if cap is too small (out
 * is then ""). */
int moe_prom_format_value(char *out, size_t cap, double value);

#endif
