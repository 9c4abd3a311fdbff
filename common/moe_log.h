/* Logging for every process: one line per call on stderr, with level, time
 * and component. Thread-safe (one write(2) per line). Library code reports
 * through this instead of printf; moe_log_sample() is rate-limited and
 * sanitises bytes that came off the network or out of a file. */
#ifndef MOE_LOG_H
#define MOE_LOG_H

#include <stddef.h>

enum moe_log_level { MOE_LOG_DEBUG = 0, MOE_LOG_INFO, MOE_LOG_WARN, MOE_LOG_ERROR };

/* Messages below `level` are dropped. Default MOE_LOG_INFO. */
void moe_log_set_level(enum moe_log_level level);
/* Parses "debug", "info", "warn" or "error"; returns 0 or MOE_ERR_CONFIG. */
int moe_log_parse_level(const char *s, enum moe_log_level *out);
/* Component name printed on each line (borrowed; must outlive logging). */
void moe_log_set_name(const char *name);

void moe_log(enum moe_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Writes into `out` (size cap >= 1) a printable copy of at most `n` bytes of
 * `data`: non-printable bytes become \xHH, and "..." marks truncation. */
void moe_log_sanitize(char *out, size_t cap, const void *data, size_t n);

#define moe_debug(...) moe_log(MOE_LOG_DEBUG, __VA_ARGS__)
#define moe_info(...) moe_log(MOE_LOG_INFO, __VA_ARGS__)
#define moe_warn(...) moe_log(MOE_LOG_WARN, __VA_ARGS__)
#define moe_error(...) moe_log(MOE_LOG_ERROR, __VA_ARGS__)

#endif
