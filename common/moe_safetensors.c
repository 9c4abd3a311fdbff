/* safetensors reader and writer (see moe_safetensors.h).
 *
 * The writer builds the header with jansson (insertion-ordered objects, so
 * the key order is ours), pads it and writes through a temp file. The reader
 * reads the file into one malloc'd buffer, offset so that the data region is
 * 8-byte aligned, and validates every header field before exposing views.
 * Bytes from the file are never trusted: every length and offset is checked
 * before use. No logging, no printf, no mmap. */
#include "moe_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe_err.h"
#include "moe_file.h"

#define ST_MAX_HEADER ((uint64_t)100000000) /* same limit as the reference implementation */
#define ST_META_KEY "__metadata__"
#define ST_NAME_SHOW 96                     /* bytes of a name quoted in an error */
#define ST_SHAPE_SHOW (MOE_ST_MAX_DIMS * 22 + 4)

struct st_dtype {
    const char *name;
    size_t size;
};

static const struct st_dtype st_dtypes[] = {
    {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}, {"I64", 8},
    {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U8", 1},  {"BOOL", 1},
};

struct st_tensor {
    const char *name;  /* borrowed from root */
    const char *dtype; /* static, from st_dtypes */
    int ndim;
    int64_t shape[MOE_ST_MAX_DIMS];
    size_t begin, end; /* byte range within the data region */
};

struct moe_safetensors {
    char *path;
    unsigned char *buf;        /* malloc'd: alignment pad, then the whole file */
    const unsigned char *data; /* data region inside buf, 8-byte aligned */
    size_t data_size;
    json_t *root;              /* owns the names and metadata strings */
    json_t *meta;              /* borrowed from root, or NULL */
    struct st_tensor *t;       /* sorted by strcmp of name */
    size_t n;
};

/* Printable copy of a string that may come from a file: bytes outside
 * 0x20..0x7e become \xHH, and "..." marks truncation. */
static void show(char *out, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return;
    for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
        if (o + 8 >= cap) {
            if (o + 4 <= cap)
                memcpy(out + o, "...", 3), o += 3;
            break;
        }
        if (*p >= 0x20 && *p < 0x7f && *p != '\\') {
            out[o++] = (char)*p;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
}

static void shape_str(char *out, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = 0;
    int k = snprintf(out, cap, "[");
    if (k > 0)
        o = (size_t)k;
    for (int d = 0; d < ndim && o < cap; d++) {
        k = snprintf(out + o, cap - o, d ? ", %lld" : "%lld", (long long)shape[d]);
        if (k < 0)
            return;
        o += (size_t)k;
    }
    if (o < cap)
        snprintf(out + o, cap - o, "]");
}

static const struct st_dtype *dtype_lookup(const char *name)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0)
            return &st_dtypes[i];
    return NULL;
}

static int host_is_le(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* numel * elem_size of a shape with overflow checks (result fits int64 and
 * size_t). Returns 0, MOE_ERR_SHAPE (negative dim, *bad_axis set) or
 * MOE_ERR_RANGE. */
static int shape_nbytes(int ndim, const int64_t *shape, size_t elem_size, size_t *out,
                        int *bad_axis)
{
    int64_t numel = 1;
    int zero = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) {
            *bad_axis = d;
            return MOE_ERR_SHAPE;
        }
    }
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 0)
            zero = 1;
        else if (numel > INT64_MAX / shape[d])
            return MOE_ERR_RANGE; /* even if a later dim is 0: such shapes are nonsense */
        else
            numel *= shape[d];
    }
    if (zero)
        numel = 0;
    if (numel > INT64_MAX / (int64_t)elem_size ||
        (uint64_t)numel * elem_size > (uint64_t)SIZE_MAX)
        return MOE_ERR_RANGE;
    *out = (size_t)numel * elem_size;
    return 0;
}

/* The checks jansson applies to strings: well-formed UTF-8, no overlongs, no
 * surrogates, nothing above U+10FFFF. */
static int utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            p++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            len = 2, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4, cp = c & 0x07;
        } else {
            return 0;
        }
        for (size_t i = 1; i < len; i++) { /* stops at the NUL: 0 is not a continuation */
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i] & 0x3fu);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        p += len;
    }
    return 1;
}


/* Writes `count` floats little-endian. */
static int write_f32_le(int fd, const float *src, size_t count)
{
    if (host_is_le())
        return moe_write_all(fd, src, count * sizeof(float));
    unsigned char tmp[4096];
    while (count > 0) {
        size_t k = count < sizeof tmp / 4 ? count : sizeof tmp / 4;
        for (size_t i = 0; i < k; i++) {
            uint32_t u;
            memcpy(&u, &src[i], 4);
            tmp[4 * i] = (unsigned char)u;
            tmp[4 * i + 1] = (unsigned char)(u >> 8);
            tmp[4 * i + 2] = (unsigned char)(u >> 16);
            tmp[4 * i + 3] = (unsigned char)(u >> 24);
        }
        if (moe_write_all(fd, tmp, 4 * k) < 0)
            return -1;
        src += k;
        count -= k;
    }
    return 0;
}

/* Reads up to n bytes; returns the count read (short only at EOF) or -1. */
static ssize_t read_full(int fd, void *buf, size_t n)
{
    unsigned char *p = buf;
    size_t got = 0;
    while (got < n) {
        size_t chunk = n - got > ((size_t)1 << 30) ? ((size_t)1 << 30) : n - got;
        ssize_t r = read(fd, p + got, chunk);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* fsync of the directory holding `path`. Filesystems that cannot sync a
 * directory (EINVAL) are not an error. */
static int fsync_parent(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return -1;
    char *slash = strrchr(dir, '/');
    const char *d = dir;
    if (!slash)
        d = ".";
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int rc = moe_fsync_dir(d);
    if (rc < 0 && errno == EINVAL)
        rc = 0;
    int e = errno;
    free(dir);
    errno = e;
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Writer                                                                    */

struct st_pair {
    const char *key, *value;
};

static int cmp_entry_ptr(const void *a, const void *b)
{
    const struct moe_st_entry *const *x = a;
    const struct moe_st_entry *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int cmp_pair(const void *a, const void *b)
{
    const struct st_pair *x = a, *y = b;
    return strcmp(x->key, y->key);
}

/* Adds key -> value to obj, consuming value in every case (jansson's
 * json_object_set_new already does, and NULL obj or value just fails).
 * Returns 1 on failure so that callers can accumulate `bad |= ...`. */
static int obj_add(json_t *obj, const char *key, json_t *value)
{
    if (!obj || !value) {
        json_decref(value);
        return 1;
    }
    return json_object_set_new(obj, key, value) < 0;
}

static int arr_add(json_t *arr, json_int_t v)
{
    return json_array_append_new(arr, json_integer(v)) < 0; /* NULL-safe both ways */
}

/* Validates the entries and returns them sorted by name in *out (malloc'd). */
static int check_entries(const char *path, const struct moe_st_entry *entries, size_t n,
                         const struct moe_st_entry ***out, char *err, size_t errlen)
{
    int rc = 0;
    char name[ST_NAME_SHOW];
    const struct moe_st_entry **sorted = malloc((n ? n : 1) * sizeof *sorted);

    if (!sorted) {
        moe_err_set(err, errlen, "cannot write safetensors file \"%s\": out of memory", path);
        rc = MOE_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        const struct moe_st_entry *e = &entries[i];
        int axis = 0;
        size_t nb = 0;
        if (!e->name) {
            moe_err_set(err, errlen, "cannot write safetensors file \"%s\": entry %zu has no name",
                    path, i);
            rc = MOE_ERR_FORMAT;
            break;
        }
        show(name, sizeof name, e->name);
        if (!utf8_valid(e->name) || strcmp(e->name, ST_META_KEY) == 0) {
            moe_err_set(err, errlen, "cannot write safetensors file \"%s\": tensor name \"%s\" is %s",
                    path, name, utf8_valid(e->name) ? "reserved" : "not valid UTF-8");
            rc = MOE_ERR_FORMAT;
        } else if (e->ndim < 0 || e->ndim > MOE_ST_MAX_DIMS) {
            moe_err_set(err, errlen,
                    "cannot write safetensors file \"%s\": tensor \"%s\" has %d dimensions, "
                    "outside 0..%d", path, name, e->ndim, MOE_ST_MAX_DIMS);
            rc = MOE_ERR_SHAPE;
        } else if ((rc = shape_nbytes(e->ndim, e->shape, sizeof(float), &nb, &axis)) ==
                   MOE_ERR_SHAPE) {
            moe_err_set(err, errlen,
                    "cannot write safetensors file \"%s\": tensor \"%s\" has a negative "
                    "dimension %lld at axis %d", path, name, (long long)e->shape[axis], axis);
        } else if (rc < 0) {
            moe_err_set(err, errlen,
                    "cannot write safetensors file \"%s\": the size of tensor \"%s\" overflows",
                    path, name);
        } else if (nb > 0 && !e->data) {
            moe_err_set(err, errlen, "cannot write safetensors file \"%s\": tensor \"%s\" has no data",
                    path, name);
            rc = MOE_ERR_FORMAT;
        }
        sorted[i] = e;
    }
    if (rc < 0)
        goto cleanup;
    if (n > 1)
        qsort(sorted, n, sizeof *sorted, cmp_entry_ptr);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
            show(name, sizeof name, sorted[i]->name);
            moe_err_set(err, errlen,
                    "cannot write safetensors file \"%s\": tensor \"%s\" appears twice", path, name);
            rc = MOE_ERR_FORMAT;
            goto cleanup;
        }
    }
    *out = sorted;
    sorted = NULL;
cleanup:
    free(sorted);
    return rc;
}

/* Validates the metadata array and returns its pairs sorted by key in *out
 * (malloc'd, *nout pairs; NULL and 0 when meta is NULL). */
static int check_meta(const char *path, const char *const *meta, struct st_pair **out,
                      size_t *nout, char *err, size_t errlen)
{
    int rc = 0;
    char name[ST_NAME_SHOW];
    struct st_pair *pairs = NULL;
    size_t cnt = 0;

    *out = NULL;
    *nout = 0;
    if (!meta)
        return 0;
    while (meta[2 * cnt]) {
        if (!meta[2 * cnt + 1]) {
            show(name, sizeof name, meta[2 * cnt]);
            moe_err_set(err, errlen,
                    "cannot write safetensors file \"%s\": metadata key \"%s\" has no value", path,
                    name);
            rc = MOE_ERR_FORMAT;
            goto cleanup;
        }
        cnt++;
    }
    pairs = malloc((cnt ? cnt : 1) * sizeof *pairs);
    if (!pairs) {
        moe_err_set(err, errlen, "cannot write safetensors file \"%s\": out of memory", path);
        rc = MOE_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < cnt; i++) {
        pairs[i].key = meta[2 * i];
        pairs[i].value = meta[2 * i + 1];
        if (!utf8_valid(pairs[i].key) || !utf8_valid(pairs[i].value)) {
            show(name, sizeof name, pairs[i].key);
            moe_err_set(err, errlen,
                    "cannot write safetensors file \"%s\": metadata key \"%s\" or its value is "
                    "not valid UTF-8", path, name);
            rc = MOE_ERR_FORMAT;
            goto cleanup;
        }
    }
    if (cnt > 1)
        qsort(pairs, cnt, sizeof *pairs, cmp_pair);
    for (size_t i = 1; i < cnt; i++) {
        if (strcmp(pairs[i - 1].key, pairs[i].key) == 0) {
            show(name, sizeof name, pairs[i].key);
            moe_err_set(err, errlen,
                    "cannot write safetensors file \"%s\": metadata key \"%s\" appears twice",
                    path, name);
            rc = MOE_ERR_FORMAT;
            goto cleanup;
        }
    }
    *out = pairs;
    *nout = cnt;
    pairs = NULL;
cleanup:
    free(pairs);
    return rc;
}

/* Builds the 8-byte length plus the space-padded canonical JSON header into
 * *out (malloc'd, *outlen bytes). Entries are valid and sorted. */
static int build_header(const char *path, const struct moe_st_entry *const *sorted, size_t n,
                        const struct st_pair *pairs, size_t npairs, unsigned char **out,
                        size_t *outlen, char *err, size_t errlen)
{
    int rc = MOE_ERR_NOMEM, bad = 0;
    json_t *root = json_object();
    char *json = NULL;
    unsigned char *head = NULL;
    uint64_t offset = 0;

    if (npairs > 0) {
        json_t *m = json_object();
        for (size_t i = 0; i < npairs; i++)
            bad |= obj_add(m, pairs[i].key, json_string(pairs[i].value));
        bad |= obj_add(root, ST_META_KEY, m);
    }
    for (size_t i = 0; i < n && !bad; i++) {
        const struct moe_st_entry *e = sorted[i];
        size_t nb = 0;
        int axis = 0;
        shape_nbytes(e->ndim, e->shape, sizeof(float), &nb, &axis); /* validated already */
        if (nb > (uint64_t)INT64_MAX - offset || offset + nb > (uint64_t)SIZE_MAX) {
            moe_err_set(err, errlen,
                    "cannot write safetensors file \"%s\": the total data size overflows", path);
            rc = MOE_ERR_RANGE;
            goto cleanup;
        }
        json_t *t = json_object(), *shp = json_array(), *offs = json_array();
        for (int d = 0; d < e->ndim; d++)
            bad |= arr_add(shp, (json_int_t)e->shape[d]);
        bad |= arr_add(offs, (json_int_t)offset);
        bad |= arr_add(offs, (json_int_t)(offset + nb));
        bad |= obj_add(t, "dtype", json_string("F32"));
        bad |= obj_add(t, "shape", shp);
        bad |= obj_add(t, "data_offsets", offs);
        bad |= obj_add(root, e->name, t);
        offset += nb;
    }
    if (bad || !(json = json_dumps(root, JSON_COMPACT))) {
        moe_err_set(err, errlen, "cannot write safetensors file \"%s\": out of memory", path);
        goto cleanup;
    }
    size_t jlen = strlen(json);
    size_t hlen = (jlen + 7) & ~(size_t)7;
    if (hlen > ST_MAX_HEADER) {
        moe_err_set(err, errlen,
                "cannot write safetensors file \"%s\": the header would be %zu bytes, over the "
                "%llu-byte limit", path, hlen, (unsigned long long)ST_MAX_HEADER);
        rc = MOE_ERR_RANGE;
        goto cleanup;
    }
    head = malloc(8 + hlen);
    if (!head) {
        moe_err_set(err, errlen, "cannot write safetensors file \"%s\": out of memory", path);
        goto cleanup;
    }
    for (int b = 0; b < 8; b++)
        head[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
    memcpy(head + 8, json, jlen);
    memset(head + 8 + jlen, ' ', hlen - jlen);
    *out = head;
    *outlen = 8 + hlen;
    rc = 0;
cleanup:
    free(json);
    json_decref(root);
    return rc;
}

/* Writes head and the tensor data to "<path>.tmp.<pid>", fsyncs, renames it
 * over path and fsyncs the directory; removes the temp file on failure. */
static int write_atomic(const char *path, const unsigned char *head, size_t headlen,
                        const struct moe_st_entry *const *sorted, size_t n, char *err,
                        size_t errlen)
{
    int rc = MOE_ERR_IO, fd = -1, created = 0;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    const char *step = NULL; /* the operation that failed, for the error sentence */

    if (!tmp) {
        moe_err_set(err, errlen, "cannot write safetensors file \"%s\": out of memory", path);
        rc = MOE_ERR_NOMEM;
        goto cleanup;
    }
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    step = "creating";
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0666);
    if (fd < 0)
        goto cleanup;
    created = 1;
    step = "writing";
    if (moe_write_all(fd, head, headlen) < 0)
        goto cleanup;
    for (size_t i = 0; i < n; i++) {
        size_t nb = 0;
        int axis = 0;
        shape_nbytes(sorted[i]->ndim, sorted[i]->shape, sizeof(float), &nb, &axis);
        if (nb > 0 && write_f32_le(fd, sorted[i]->data, nb / sizeof(float)) < 0)
            goto cleanup;
    }
    step = "syncing";
    if (fsync(fd) < 0)
        goto cleanup;
    step = "closing";
    int cfd = fd;
    fd = -1;
    if (close(cfd) < 0)
        goto cleanup;
    step = "renaming";
    if (rename(tmp, path) < 0)
        goto cleanup;
    created = 0; /* the temp name no longer exists */
    step = NULL;
    if (fsync_parent(path) < 0) {
        moe_err_set(err, errlen,
                "safetensors file \"%s\" was written but its directory could not be synced: %s",
                path, strerror(errno));
        goto cleanup;
    }
    rc = 0;
cleanup:
    if (rc < 0 && step)
        moe_err_set(err, errlen, "cannot write safetensors file \"%s\": %s \"%s\" failed: %s", path,
                step, tmp, strerror(errno));
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(tmp);
    free(tmp);
    return rc;
}

int moe_safetensors_write(const char *path, const struct moe_st_entry *entries, size_t n,
                          const char *const *meta, char *err, size_t errlen)
{
    int rc;
    const struct moe_st_entry **sorted = NULL;
    struct st_pair *pairs = NULL;
    size_t npairs = 0, headlen = 0;
    unsigned char *head = NULL;

    if (err && errlen)
        err[0] = '\0';
    if (!path || !*path) {
        moe_err_set(err, errlen, "cannot write a safetensors file: the path is empty");
        rc = MOE_ERR_IO;
        goto cleanup;
    }
    if (n > 0 && !entries) {
        moe_err_set(err, errlen, "cannot write safetensors file \"%s\": entries is NULL", path);
        rc = MOE_ERR_FORMAT;
        goto cleanup;
    }
    /* Everything is validated before the filesystem is touched. */
    rc = check_entries(path, entries, n, &sorted, err, errlen);
    if (rc == 0)
        rc = check_meta(path, meta, &pairs, &npairs, err, errlen);
    if (rc == 0)
        rc = build_header(path, sorted, n, pairs, npairs, &head, &headlen, err, errlen);
    if (rc == 0)
        rc = write_atomic(path, head, headlen, sorted, n, err, errlen);
cleanup:
    free(head);
    free(pairs);
    free(sorted);
    return rc;
}

/* ------------------------------------------------------------------------- */
/* Reader                                                                    */

static int cmp_tensor_name(const void *a, const void *b)
{
    const struct st_tensor *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static int cmp_tensor_range(const void *a, const void *b)
{
    const struct st_tensor *const *x = a;
    const struct st_tensor *const *y = b;
    if ((*x)->begin != (*y)->begin)
        return (*x)->begin < (*y)->begin ? -1 : 1;
    if ((*x)->end != (*y)->end)
        return (*x)->end < (*y)->end ? -1 : 1;
    return 0;
}

static int cmp_key_tensor(const void *key, const void *elem)
{
    const struct st_tensor *t = elem;
    return strcmp((const char *)key, t->name);
}

/* Non-negative JSON integer; 0 or -1. */
static int json_nonneg(const json_t *v, int64_t *out)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0)
        return -1;
    *out = (int64_t)x;
    return 0;
}

/* Parses one tensor entry; writes a reason into why (why_len) on failure. */
static int parse_tensor(const char *key, json_t *v, size_t data_size, struct st_tensor *t,
                        char *why, size_t why_len)
{
    const char *k;
    json_t *x;
    int have = 0;
    if (!json_is_object(v)) {
        snprintf(why, why_len, "is not a JSON object");
        return -1;
    }
    json_object_foreach(v, k, x) {
        if (strcmp(k, "dtype") == 0) {
            have |= 1;
        } else if (strcmp(k, "shape") == 0) {
            have |= 2;
        } else if (strcmp(k, "data_offsets") == 0) {
            have |= 4;
        } else {
            char kk[ST_NAME_SHOW];
            show(kk, sizeof kk, k);
            snprintf(why, why_len, "has an unknown key \"%s\"", kk);
            return -1;
        }
    }
    if (have != 7) {
        snprintf(why, why_len, "lacks %s", !(have & 1) ? "dtype" : !(have & 2) ? "shape"
                                                                              : "data_offsets");
        return -1;
    }
    t->name = key;

    json_t *dt = json_object_get(v, "dtype");
    const struct st_dtype *info = json_is_string(dt) ? dtype_lookup(json_string_value(dt)) : NULL;
    if (!info) {
        char dd[ST_NAME_SHOW];
        show(dd, sizeof dd, json_is_string(dt) ? json_string_value(dt) : "(not a string)");
        snprintf(why, why_len, "has an unknown dtype \"%s\"", dd);
        return -1;
    }
    t->dtype = info->name;

    json_t *shp = json_object_get(v, "shape");
    if (!json_is_array(shp) || json_array_size(shp) > MOE_ST_MAX_DIMS) {
        snprintf(why, why_len, "has a shape that is not an array of at most %d integers",
                 MOE_ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)json_array_size(shp);
    memset(t->shape, 0, sizeof t->shape);
    for (int d = 0; d < t->ndim; d++) {
        if (json_nonneg(json_array_get(shp, (size_t)d), &t->shape[d]) < 0) {
            snprintf(why, why_len, "has a shape entry %d that is not a non-negative integer", d);
            return -1;
        }
    }
    size_t nb = 0;
    int axis = 0;
    if (shape_nbytes(t->ndim, t->shape, info->size, &nb, &axis) < 0) {
        snprintf(why, why_len, "has a shape whose size overflows");
        return -1;
    }

    json_t *offs = json_object_get(v, "data_offsets");
    int64_t b = 0, e = 0;
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        json_nonneg(json_array_get(offs, 0), &b) < 0 ||
        json_nonneg(json_array_get(offs, 1), &e) < 0) {
        snprintf(why, why_len, "has data_offsets that are not two non-negative integers");
        return -1;
    }
    if (b > e || (uint64_t)e > (uint64_t)data_size) {
        snprintf(why, why_len,
                 "has data_offsets [%lld, %lld] outside the %zu-byte data region",
                 (long long)b, (long long)e, data_size);
        return -1;
    }
    if ((uint64_t)(e - b) != (uint64_t)nb) {
        snprintf(why, why_len,
                 "has data_offsets [%lld, %lld] (%lld bytes) but its dtype and shape need %zu "
                 "bytes", (long long)b, (long long)e, (long long)(e - b), nb);
        return -1;
    }
    t->begin = (size_t)b;
    t->end = (size_t)e;
    return 0;
}

/* Reads the whole file at st->path into st->buf, placed so that the data
 * region (file offset 8 + header length) lands on an 8-byte boundary;
 * sets data, data_size and *hlen after checking the sizes. 0 or -1 with
 * the sentence in err. */
static int read_file(moe_safetensors_t *st, uint64_t *hlen_out, char *err, size_t errlen)
{
    const char *path = st->path;
    unsigned char len8[8];
    int rc = -1, fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        moe_err_set(err, errlen, "cannot open safetensors file \"%s\": %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode)) {
        moe_err_set(err, errlen, "cannot open safetensors file \"%s\": not a regular file", path);
        goto out;
    }
    if (sb.st_size < 8) {
        moe_err_set(err, errlen,
                    "safetensors file \"%s\" is %lld bytes, too short for the 8-byte header "
                    "length", path, (long long)sb.st_size);
        goto out;
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX - 16) {
        moe_err_set(err, errlen, "safetensors file \"%s\" is too large to load", path);
        goto out;
    }
    const size_t size = (size_t)sb.st_size;
    ssize_t got = read_full(fd, len8, 8);
    if (got != 8) {
        moe_err_set(err, errlen, "cannot read safetensors file \"%s\": %s", path,
                    got < 0 ? strerror(errno) : "it shrank while being read");
        goto out;
    }
    uint64_t hlen = 0;
    for (int b = 7; b >= 0; b--)
        hlen = (hlen << 8) | len8[b];
    if (hlen > (uint64_t)(size - 8)) {
        moe_err_set(err, errlen,
                    "safetensors file \"%s\" declares a %llu-byte header but has only %zu bytes "
                    "after the length", path, (unsigned long long)hlen, size - 8);
        goto out;
    }
    if (hlen > ST_MAX_HEADER) {
        moe_err_set(err, errlen,
                    "safetensors file \"%s\" declares a %llu-byte header, over the %llu-byte "
                    "limit", path, (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
        goto out;
    }
    const size_t pad = (size_t)((8 - (hlen & 7)) & 7);
    if (!(st->buf = malloc(pad + size))) {
        moe_err_set(err, errlen,
                    "cannot open safetensors file \"%s\": out of memory for %zu bytes", path, size);
        goto out;
    }
    unsigned char *file = st->buf + pad;
    memcpy(file, len8, 8);
    got = read_full(fd, file + 8, size - 8);
    if (got < 0 || (size_t)got != size - 8) {
        moe_err_set(err, errlen, "cannot read safetensors file \"%s\": %s", path,
                    got < 0 ? strerror(errno) : "it shrank while being read");
        goto out;
    }
    st->data = file + 8 + hlen;
    st->data_size = size - 8 - (size_t)hlen;
    *hlen_out = hlen;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Parses the JSON header: the metadata (strings only) and every tensor
 * entry into st->t (by_range gets the same entries, for the tiling check).
 * 0 or -1 with the sentence in err. */
static int parse_header(moe_safetensors_t *st, const unsigned char *json, size_t len,
                        struct st_tensor ***by_range, char *err, size_t errlen)
{
    const char *path = st->path;
    char why[256], name[ST_NAME_SHOW];
    json_error_t jerr;
    st->root = json_loadb((const char *)json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!st->root) {
        show(why, sizeof why, jerr.text);
        return moe_err_fail(-1, err, errlen,
                            "safetensors file \"%s\" has a malformed JSON header: %s (byte %d)",
                            path, why, jerr.position);
    }
    if (!json_is_object(st->root))
        return moe_err_fail(-1, err, errlen,
                            "safetensors file \"%s\" has a header that is not a JSON object", path);
    st->meta = json_object_get(st->root, ST_META_KEY);
    const size_t cap = json_object_size(st->root) - (st->meta ? 1 : 0);
    st->t = calloc(cap ? cap : 1, sizeof *st->t);
    *by_range = malloc((cap ? cap : 1) * sizeof **by_range);
    if (!st->t || !*by_range)
        return moe_err_fail(-1, err, errlen, "cannot open safetensors file \"%s\": out of memory",
                            path);
    const char *k;
    json_t *v;
    if (st->meta && !json_is_object(st->meta))
        return moe_err_fail(-1, err, errlen,
                            "safetensors file \"%s\" has a __metadata__ that is not an object",
                            path);
    if (st->meta) {
        json_object_foreach(st->meta, k, v) {
            if (!json_is_string(v)) {
                show(name, sizeof name, k);
                return moe_err_fail(-1, err, errlen,
                                    "safetensors file \"%s\" has a non-string value for "
                                    "metadata key \"%s\"", path, name);
            }
        }
    }
    json_object_foreach(st->root, k, v) {
        if (strcmp(k, ST_META_KEY) == 0)
            continue;
        if (st->n >= cap)
            break; /* cannot happen: the object size was counted above */
        struct st_tensor *t = &st->t[st->n];
        if (parse_tensor(k, v, st->data_size, t, why, sizeof why) < 0) {
            show(name, sizeof name, k);
            return moe_err_fail(-1, err, errlen, "safetensors file \"%s\": tensor \"%s\" %s",
                                path, name, why);
        }
        (*by_range)[st->n++] = t;
    }
    return 0;
}

/* The tensors' byte ranges must tile the data region exactly. */
static int check_tiling(const moe_safetensors_t *st, struct st_tensor **by_range, char *err,
                        size_t errlen)
{
    char name[ST_NAME_SHOW];
    if (st->n > 1)
        qsort(by_range, st->n, sizeof *by_range, cmp_tensor_range);
    size_t pos = 0;
    for (size_t i = 0; i < st->n; i++) {
        const struct st_tensor *t = by_range[i];
        if (t->begin != pos) {
            show(name, sizeof name, t->name);
            return moe_err_fail(-1, err, errlen,
                                "safetensors file \"%s\": tensor \"%s\" starts at data byte "
                                "%zu, but the previous tensor ends at %zu (%s)", st->path, name,
                                t->begin, pos, t->begin < pos ? "overlap" : "gap");
        }
        pos = t->end;
    }
    if (pos != st->data_size)
        return moe_err_fail(-1, err, errlen,
                            "safetensors file \"%s\": the tensors cover %zu bytes of a "
                            "%zu-byte data region", st->path, pos, st->data_size);
    return 0;
}

moe_safetensors_t *moe_safetensors_open(const char *path, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!path) {
        moe_err_set(err, errlen, "cannot open a safetensors file: the path is NULL");
        return NULL;
    }
    moe_safetensors_t *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        moe_err_set(err, errlen, "cannot open safetensors file \"%s\": out of memory", path);
        free(st);
        return NULL;
    }
    struct st_tensor **by_range = NULL;
    uint64_t hlen = 0;
    int rc = read_file(st, &hlen, err, errlen);
    if (!rc)
        rc = parse_header(st, st->data - hlen, (size_t)hlen, &by_range, err, errlen);
    if (!rc)
        rc = check_tiling(st, by_range, err, errlen);
    free(by_range);
    if (rc) {
        moe_safetensors_close(&st);
        return NULL;
    }
    if (st->n > 1)
        qsort(st->t, st->n, sizeof *st->t, cmp_tensor_name);
    return st;
}

void moe_safetensors_close(moe_safetensors_t **st)
{
    if (!st || !*st)
        return;
    moe_safetensors_t *s = *st;
    json_decref(s->root);
    free(s->t);
    free(s->buf);
    free(s->path);
    free(s);
    *st = NULL;
}

size_t moe_safetensors_count(const moe_safetensors_t *st)
{
    return st ? st->n : 0;
}

static void fill_view(const moe_safetensors_t *st, const struct st_tensor *t,
                      struct moe_st_view *out)
{
    out->name = t->name;
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof out->shape);
    out->data = st->data + t->begin;
    out->nbytes = t->end - t->begin;
}

int moe_safetensors_at(const moe_safetensors_t *st, size_t i, struct moe_st_view *out)
{
    if (!st || i >= st->n)
        return MOE_ERR_NOTFOUND;
    if (out)
        fill_view(st, &st->t[i], out);
    return 0;
}

static const struct st_tensor *find_tensor(const moe_safetensors_t *st, const char *name)
{
    if (!st || !name || st->n == 0)
        return NULL;
    return bsearch(name, st->t, st->n, sizeof *st->t, cmp_key_tensor);
}

int moe_safetensors_find(const moe_safetensors_t *st, const char *name, struct moe_st_view *out)
{
    const struct st_tensor *t = find_tensor(st, name);
    if (!t)
        return MOE_ERR_NOTFOUND;
    if (out)
        fill_view(st, t, out);
    return 0;
}

const char *moe_safetensors_meta(const moe_safetensors_t *st, const char *key)
{
    if (!st || !st->meta || !key)
        return NULL;
    return json_string_value(json_object_get(st->meta, key));
}

int moe_safetensors_read_f32(const moe_safetensors_t *st, const char *name, int ndim,
                             const int64_t *shape, float *dst, char *err, size_t errlen)
{
    char shown[ST_NAME_SHOW], want[ST_SHAPE_SHOW], have[ST_SHAPE_SHOW];
    const char *path = st ? st->path : "(none)";

    if (err && errlen)
        err[0] = '\0';
    show(shown, sizeof shown, name ? name : "(null)");
    const struct st_tensor *t = find_tensor(st, name);
    if (!t) {
        moe_err_set(err, errlen, "safetensors file \"%s\" has no tensor \"%s\"", path, shown);
        return MOE_ERR_NOTFOUND;
    }
    shape_str(have, sizeof have, t->ndim, t->shape);
    if (ndim < 0 || ndim > MOE_ST_MAX_DIMS || (ndim > 0 && !shape)) {
        moe_err_set(err, errlen,
                "tensor \"%s\" in safetensors file \"%s\" has shape %s, but the expected shape "
                "has %d dimensions", shown, path, have, ndim);
        return MOE_ERR_SHAPE;
    }
    shape_str(want, sizeof want, ndim, shape);
    if (strcmp(t->dtype, "F32") != 0) {
        moe_err_set(err, errlen,
                "tensor \"%s\" in safetensors file \"%s\" has dtype %s, expected F32 "
                "(expected shape %s, found %s)", shown, path, t->dtype, want, have);
        return MOE_ERR_SHAPE;
    }
    int same = ndim == t->ndim;
    for (int d = 0; same && d < ndim; d++)
        same = shape[d] == t->shape[d];
    if (!same) {
        moe_err_set(err, errlen,
                "tensor \"%s\" in safetensors file \"%s\" has shape %s, expected %s", shown, path,
                have, want);
        return MOE_ERR_SHAPE;
    }
    size_t nb = t->end - t->begin;
    if (nb == 0)
        return 0;
    memcpy(dst, st->data + t->begin, nb);
    if (!host_is_le()) {
        for (size_t i = 0; i < nb / 4; i++) {
            const unsigned char *p = st->data + t->begin + 4 * i;
            uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                         (uint32_t)p[3] << 24;
            memcpy(&dst[i], &u, 4);
        }
    }
    return 0;
}

const char *moe_safetensors_path(const moe_safetensors_t *st)
{
    return st ? st->path : NULL;
}
