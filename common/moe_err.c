/* Error code sentences (see moe_err.h). */
#include "moe_err.h"

#include <stdarg.h>
#include <stdio.h>

const char *moe_strerror(int err)
{
    switch (err) {
    case MOE_OK: return "success";
    case MOE_ERR_NOMEM: return "out of memory";
    case MOE_ERR_IO: return "input/output error";
    case MOE_ERR_FORMAT: return "malformed data";
    case MOE_ERR_SHAPE: return "wrong tensor shape or dtype";
    case MOE_ERR_CONFIG: return "invalid configuration";
    case MOE_ERR_RANGE: return "size out of range";
    case MOE_ERR_NOTFOUND: return "not found";
    case MOE_ERR_VERSION: return "version mismatch";
    case MOE_ERR_STATE: return "request does not fit the current state";
    case MOE_ERR_EMPTY: return "empty input";
    case MOE_ERR_UNREGISTERED: return "not registered with the coordinator";
    case MOE_ERR_STOPPED: return "the cluster was stopped";
    case MOE_ERR_FAILED: return "the cluster failed";
    case MOE_ERR_AGAIN: return "not decided yet: ask again shortly";
    }
    return "unknown error";
}

void moe_err_set(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int moe_err_fail(int code, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}
