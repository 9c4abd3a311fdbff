/* Reading and writing the safetensors tensor file format (checkpoints).
 *
 * Layout: 8-byte little-endian u64 N, N bytes of UTF-8 JSON header, then the
 * data region. The writer emits F32 tensors only, atomically and in one
 * canonical byte layout; the reader accepts every listed dtype, validates the
 * whole header and holds the file in one buffer. Nothing here mmaps, streams,
 * converts dtypes or logs. Open handles are read-only and may be shared by
 * threads; two writers of the same path in one process must not overlap. */
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define MOE_ST_MAX_DIMS 8

struct moe_st_entry {          /* one tensor to write, F32 only */
    const char *name;          /* non-NULL, valid UTF-8, not "__metadata__" */
    int ndim;                  /* 0..MOE_ST_MAX_DIMS; 0 is a scalar (1 value) */
    int64_t shape[MOE_ST_MAX_DIMS];
    const float *data;         /* numel floats, host order; may be NULL if numel is 0 */
};

struct moe_st_view {           /* one tensor of an opened file; valid until close */
    const char *name;
    const char *dtype;         /* "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL" */
    int ndim;
    int64_t shape[MOE_ST_MAX_DIMS]; /* entries past ndim are 0 */
    const void *data;          /* points into the file's buffer; bytes as stored, i.e.
                                  little-endian. The data region always starts 8-byte
                                  aligned in memory (the reader offsets its buffer when
                                  a foreign header is not padded), so a view is aligned
                                  as far as its begin offset is: files from this writer
                                  give 4-byte (float) aligned views; a foreign file may
                                  give unaligned ones, so read through memcpy or
                                  moe_safetensors_read_f32 */
    size_t nbytes;
};

typedef struct moe_safetensors moe_safetensors_t;

/* Writes `n` tensors and optional metadata to `path` atomically.
 * meta: NULL, or a NULL-terminated array key, value, key, value, ..., NULL of
 * UTF-8 strings; no metadata and an empty array give the same file.
 * Steps: write "<path>.tmp.<pid>", fsync, rename over `path`, fsync the
 * directory. Canonical bytes: "__metadata__" first (its keys sorted by
 * strcmp), then the tensors sorted by strcmp of name, each written as
 * {"dtype":"F32","shape":[...],"data_offsets":[b,e]}; compact JSON; the header
 * padded with spaces to a multiple of 8 bytes; data in the same name order
 * with no gaps, little-endian. Same inputs give byte-identical files whatever
 * the order of `entries` or of the metadata pairs.
 * Returns 0 or: MOE_ERR_SHAPE (ndim outside 0..8, a negative dim),
 * MOE_ERR_RANGE (size overflow, header over 100 MB), MOE_ERR_FORMAT (NULL or
 * duplicate name, "__metadata__" as a tensor name, invalid UTF-8, NULL data,
 * duplicate or value-less metadata key), MOE_ERR_NOMEM, MOE_ERR_IO.
 * On any failure before the rename the temp file is removed and `path` is
 * untouched; if only the final directory fsync fails, MOE_ERR_IO is returned
 * but the new file is already in place. On error a sentence naming the file
 * (and the tensor if relevant) goes into err (errlen bytes; err may be NULL). */
int moe_safetensors_write(const char *path, const struct moe_st_entry *entries, size_t n,
                          const char *const *meta, char *err, size_t errlen);

/* Reads and validates the whole file. NULL on error with a sentence naming the
 * file in err. Checks: at least 8 bytes; N <= size - 8 and N <= 100 MB; the
 * header is a JSON object with no duplicate keys; every tensor has exactly the
 * keys dtype (known), shape (at most 8 non-negative ints, checked multiply)
 * and data_offsets [b, e] with b <= e <= data size and e - b == numel * dtype
 * size; the ranges, sorted by begin, are contiguous from 0 to the end of the
 * file; "__metadata__", if present, is an object of strings. Files from other
 * writers need not be padded or sorted. Caller owns the handle; free with
 * moe_safetensors_close. */
moe_safetensors_t *moe_safetensors_open(const char *path, char *err, size_t errlen);

/* Frees the handle and sets *st = NULL; NULL-safe. Views become invalid. */
void moe_safetensors_close(moe_safetensors_t **st);

/* Number of tensors (not counting __metadata__); 0 for NULL. */
size_t moe_safetensors_count(const moe_safetensors_t *st);

/* i-th tensor in strcmp order of name; returns 0 or MOE_ERR_NOTFOUND. */
int moe_safetensors_at(const moe_safetensors_t *st, size_t i, struct moe_st_view *out);

/* Tensor `name`; returns 0 or MOE_ERR_NOTFOUND. `out` may be NULL to test
 * for presence only. */
int moe_safetensors_find(const moe_safetensors_t *st, const char *name, struct moe_st_view *out);

/* Metadata value for `key` or NULL. Borrowed; valid until close. */
const char *moe_safetensors_meta(const moe_safetensors_t *st, const char *key);

/* Copies F32 tensor `name` into dst (numel floats, host order; dst may be NULL
 * when numel is 0) after checking that its dtype is F32 and its shape equals
 * (ndim, shape) exactly. Returns 0, MOE_ERR_NOTFOUND if missing, or
 * MOE_ERR_SHAPE on a dtype or shape mismatch (or ndim outside 0..8), with a
 * sentence in err naming the file, the tensor and the expected and found
 * shapes written like "[128, 64]". */
int moe_safetensors_read_f32(const moe_safetensors_t *st, const char *name, int ndim,
                             const int64_t *shape, float *dst, char *err, size_t errlen);

/* The path the file was opened from (borrowed copy; valid until close). */
const char *moe_safetensors_path(const moe_safetensors_t *st);

#endif
