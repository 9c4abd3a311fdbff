/* Error codes shared by every process of the MoE trainer.
 *
 * Functions return 0 on success or a negative MOE_ERR_* code; pointer
 * functions return NULL. moe_strerror() gives a short English sentence.
 * This file holds no state and does no I/O. */
#ifndef MOE_ERR_H
#define MOE_ERR_H

#include <stddef.h>

enum moe_err {
    MOE_OK = 0,
    MOE_ERR_NOMEM = -1,      /* allocation failed */
    MOE_ERR_IO = -2,         /* read, write, fsync or rename failed (see errno) */
    MOE_ERR_FORMAT = -3,     /* a file or message is malformed */
    MOE_ERR_SHAPE = -4,      /* a tensor has the wrong shape or dtype */
    MOE_ERR_CONFIG = -5,     /* a configuration key or value is invalid */
    MOE_ERR_RANGE = -6,      /* a size overflows or exceeds a limit */
    MOE_ERR_NOTFOUND = -7,   /* a file, tensor or key does not exist */
    MOE_ERR_VERSION = -8,    /* protocol or format version mismatch */
    MOE_ERR_STATE = -9,      /* the request does not fit the current state */
    MOE_ERR_EMPTY = -10,     /* an input that must have content is empty */
    MOE_ERR_UNREGISTERED = -11, /* the coordinator does not know the sender: register first */
    MOE_ERR_STOPPED = -12,   /* the operator stopped the cluster: exit cleanly */
    MOE_ERR_FAILED = -13,    /* the cluster stopped on a failure it cannot recover from */
    MOE_ERR_AGAIN = -14,     /* not decided yet: ask again shortly */
};

/* A static sentence describing `err`; never NULL. */
const char *moe_strerror(int err);

/* Writes a printf-formatted sentence into err (errlen bytes, truncated)
 * when err is not NULL and errlen > 0: the one way library code hands an
 * error text to its caller. */
void moe_err_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The same, returning `code`: every check reads
 * `return moe_err_fail(MOE_ERR_X, err, errlen, "...")`. */
int moe_err_fail(int code, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
