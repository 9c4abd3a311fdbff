/* Logging to stderr (see moe_log.h). Runs in every process. */
#include "moe_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "moe_err.h"

static enum moe_log_level log_level = MOE_LOG_INFO;
static const char *log_name = "moe";

void moe_log_set_level(enum moe_log_level level) { log_level = level; }
void moe_log_set_name(const char *name) { log_name = name ? name : "moe"; }

int moe_log_parse_level(const char *s, enum moe_log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum moe_log_level)i;
            return 0;
        }
    }
    return MOE_ERR_CONFIG;
}

void moe_log(enum moe_log_level level, const char *fmt, ...)
{
    static const char tag[] = "DIWE";
    if (level < log_level)
        return;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%02d:%02d:%02d.%03ld %c %s: ", tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, tag[level], log_name);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void moe_log_sanitize(char *out, size_t cap, const void *data, size_t n)
{
    const unsigned char *p = data;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f) {
            if (o + 1 >= cap - 3)
                goto trunc;
            out[o++] = (char)p[i];
        } else {
            if (o + 4 >= cap - 3)
                goto trunc;
            snprintf(out + o, 5, "\\x%02x", p[i]);
            o += 4;
        }
    }
    out[o] = '\0';
    return;
trunc:
    if (cap >= 4) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o < cap ? o : cap - 1] = '\0';
}
