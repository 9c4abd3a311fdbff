/* File-system helpers (see moe_file.h). */
#include "moe_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe_err.h"

int moe_write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        const size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        const ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (w == 0) {
            errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int moe_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

int moe_path_join(char *out, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= cap ? MOE_ERR_RANGE : 0;
}

bool moe_has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* The folder that holds path: "." for a bare name, "/" for "/x". */
static void parent_of(const char *path, char *out, size_t cap)
{
    snprintf(out, cap, "%s", path);
    size_t n = strlen(out);
    while (n > 1 && out[n - 1] == '/')
        out[--n] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash)
        snprintf(out, cap, ".");
    else if (slash == out)
        out[1] = '\0';
    else
        *slash = '\0';
}

/* Whether dir is an existing folder this process may create files in. */
static int check_folder(const char *path, const char *dir, const char *what, char *err,
                        size_t errlen)
{
    struct stat st;
    if (stat(dir, &st) != 0 && errno == ENOENT)
        return moe_err_fail(MOE_ERR_IO, err, errlen,
                            "%s: cannot write %s here: the folder %s does not exist", path, what,
                            dir);
    if (stat(dir, &st) != 0)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot write %s here: %s", path, what,
                            strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot write %s here: %s is not a folder",
                            path, what, dir);
    if (access(dir, W_OK | X_OK) != 0)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot write %s here: %s", path, what,
                            strerror(errno));
    return 0;
}

int moe_file_check_dir_writable(const char *path, const char *what, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) == 0)
        return check_folder(path, path, what, err, errlen);
    char parent[4096];
    parent_of(path, parent, sizeof parent);
    return check_folder(path, parent, what, err, errlen);
}

int moe_file_check_file_writable(const char *path, const char *what, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot write %s here: it is a folder",
                            path, what);
    char parent[4096];
    parent_of(path, parent, sizeof parent);
    return check_folder(path, parent, what, err, errlen);
}

char *moe_file_read_text(const char *path, size_t *len, char *err, size_t errlen)
{
    /* O_NONBLOCK: a FIFO given as a corpus is refused below instead of
     * blocking the open until a writer comes (no effect on regular files). */
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
        moe_err_set(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        moe_err_set(err, errlen, "%s: not a regular file", path);
        close(fd);
        return NULL;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        moe_err_set(err, errlen, "%s: out of memory reading %lld bytes", path, (long long)st.st_size);
        close(fd);
        return NULL;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            moe_err_set(err, errlen, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "file shrank");
            free(buf);
            close(fd);
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    /* Words are C strings from here on: a NUL byte would cut them. */
    const char *nul = memchr(buf, '\0', got);
    if (nul) {
        moe_err_set(err, errlen, "%s: not a text file (a NUL byte at offset %zu)", path,
                    (size_t)(nul - buf));
        free(buf);
        return NULL;
    }
    *len = got;
    return buf;
}
