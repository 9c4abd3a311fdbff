/* Small file-system helpers every writer of durable files shares (DESIGN
 * §6: temp file, fsync, rename, fsync of the folder): writing a whole
 * buffer, fsyncing a folder, joining and testing paths. They set errno and
 * return -1 (or a MOE_ERR_* code where said); no state, thread-safe. */
#ifndef MOE_FILE_H
#define MOE_FILE_H

#include <stdbool.h>
#include <stddef.h>

/* Writes all n bytes of p to fd, retrying short writes and EINTR (in
 * chunks of at most 1 GiB). 0, or -1 with errno (EIO when write returns 0). */
int moe_write_all(int fd, const void *p, size_t n);

/* fsync of a folder, so that a rename in it is durable. 0 or -1 (errno). */
int moe_fsync_dir(const char *dir);

/* dir + "/" + name into out; MOE_ERR_RANGE when it does not fit in cap. */
int moe_path_join(char *out, size_t cap, const char *dir, const char *name);

/* Whether a folder can be written where `path` names one: an existing
 * folder we may write into, or a missing one whose parent folder exists
 * and is writable (it is created later). Creates nothing. 0, or
 * MOE_ERR_IO with a sentence "PATH: cannot write WHAT here: REASON". For
 * the options that name an output, checked at start-up so that a run does
 * not fail at its end. */
int moe_file_check_dir_writable(const char *path, const char *what, char *err, size_t errlen);

/* The same for a file to be written at `path` (its folder must exist and
 * be writable; an existing folder at path itself is refused). */
int moe_file_check_file_writable(const char *path, const char *what, char *err, size_t errlen);

/* A whole text file (a corpus, config.ini, vocab.txt), NUL-terminated,
 * its length in *len: NULL with a sentence naming the path when it cannot
 * be opened, is not a regular file (a FIFO is refused, never waited on),
 * cannot be read or holds a NUL byte. Caller frees. */
char *moe_file_read_text(const char *path, size_t *len, char *err, size_t errlen);

/* Whether s ends with suffix. */
bool moe_has_suffix(const char *s, const char *suffix);

#endif
