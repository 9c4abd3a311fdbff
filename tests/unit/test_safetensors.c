/* Unit tests for common/moe_safetensors: round trips, canonical bytes, the
 * exact header of small files, rejection of truncated and corrupted files,
 * failed writes that must leave the target untouched, and a seeded random
 * mutation loop (not libFuzzer). Each test works in its own mkdtemp
 * directory under /tmp, removed by the fixture; nothing else is touched. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe_err.h"
#include "moe_safetensors.h"

Suite *test_safetensors_suite(void);

static char tmpdir[256];
static char pathbuf[4][512];
static int pathslot;

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/moe_st_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char p[1024];
    if (!d)
        return;
    while ((de = readdir(d)) != NULL) {
        struct stat sb;
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            rm_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static void teardown(void)
{
    rm_tree(tmpdir);
}

/* "<tmpdir>/<name>" in one of four rotating static buffers. */
static const char *tpath(const char *name)
{
    char *p = pathbuf[pathslot++ & 3];
    snprintf(p, sizeof pathbuf[0], "%s/%s", tmpdir, name);
    return p;
}

static size_t dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;
    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void put_file(const char *path, const void *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    if (n)
        ck_assert_uint_eq(fwrite(bytes, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static unsigned char *get_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    ck_assert_int_ge(len, 0);
    rewind(f);
    unsigned char *b = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

/* A raw safetensors file: length `hlen_field`, the header text, then `dlen`
 * data bytes (a counting pattern). */
static void put_raw_len(const char *path, uint64_t hlen_field, const char *header, size_t hbytes,
                        size_t dlen)
{
    size_t n = 8 + hbytes + dlen;
    unsigned char *b = malloc(n);
    ck_assert_ptr_nonnull(b);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(hlen_field >> (8 * i));
    memcpy(b + 8, header, hbytes);
    for (size_t i = 0; i < dlen; i++)
        b[8 + hbytes + i] = (unsigned char)(i * 7 + 1);
    put_file(path, b, n);
    free(b);
}

static void put_raw(const char *path, const char *header, size_t dlen)
{
    put_raw_len(path, strlen(header), header, strlen(header), dlen);
}

/* Opening `path` must fail with a sentence naming the file. */
static void expect_open_fails(const char *path, const char *what)
{
    char err[512] = "";
    moe_safetensors_t *st = moe_safetensors_open(path, err, sizeof err);
    ck_assert_msg(st == NULL, "accepted %s", what);
    ck_assert_msg(strstr(err, path) != NULL, "error for %s does not name the file: %s", what, err);
    moe_safetensors_close(&st);
}

static void expect_header_rejected(const char *header, size_t dlen)
{
    const char *p = tpath("bad.safetensors");
    put_raw(p, header, dlen);
    expect_open_fails(p, header);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ------------------------------------------------------------------------- */

/* Five tensors (0-d, 1-d, 2-d, 3-d, empty) with special float values. */
struct fixture5 {
    float scalar[1], vec[5], mat[6], cube[24];
    struct moe_st_entry e[5];
};

static void make5(struct fixture5 *f)
{
    memset(f, 0, sizeof *f);
    f->scalar[0] = 3.25f;
    f->vec[0] = -0.0f;
    f->vec[1] = INFINITY;
    f->vec[2] = bits_f32(0x7fc01234u); /* NaN with payload */
    f->vec[3] = bits_f32(0x00000001u); /* smallest subnormal */
    f->vec[4] = -1e30f;
    for (int i = 0; i < 6; i++)
        f->mat[i] = (float)i * 0.5f - 1.0f;
    for (int i = 0; i < 24; i++)
        f->cube[i] = (float)(i * i) / 7.0f;
    f->e[0] = (struct moe_st_entry){.name = "scalar", .ndim = 0, .data = f->scalar};
    f->e[1] = (struct moe_st_entry){.name = "layer.0.vec", .ndim = 1, .shape = {5}, .data = f->vec};
    f->e[2] = (struct moe_st_entry){.name = "mat", .ndim = 2, .shape = {2, 3}, .data = f->mat};
    f->e[3] = (struct moe_st_entry){.name = "cube", .ndim = 3, .shape = {2, 3, 4}, .data = f->cube};
    f->e[4] = (struct moe_st_entry){.name = "empty", .ndim = 2, .shape = {3, 0}, .data = NULL};
}

START_TEST(test_st_roundtrip)
{
    struct fixture5 f;
    make5(&f);
    const char *meta[] = {"step", "7", "model", "moe-\xc3\xa9", NULL};
    const char *p = tpath("a.safetensors");
    char err[512] = "x";
    ck_assert_int_eq(moe_safetensors_write(p, f.e, 5, meta, err, sizeof err), 0);

    moe_safetensors_t *st = moe_safetensors_open(p, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_str_eq(moe_safetensors_path(st), p);
    ck_assert_uint_eq(moe_safetensors_count(st), 5);
    ck_assert_str_eq(moe_safetensors_meta(st, "step"), "7");
    ck_assert_str_eq(moe_safetensors_meta(st, "model"), "moe-\xc3\xa9");
    ck_assert_ptr_null(moe_safetensors_meta(st, "absent"));
    ck_assert_ptr_null(moe_safetensors_meta(st, NULL));

    /* Name order. */
    static const char *order[] = {"cube", "empty", "layer.0.vec", "mat", "scalar"};
    struct moe_st_view v;
    for (size_t i = 0; i < 5; i++) {
        ck_assert_int_eq(moe_safetensors_at(st, i, &v), 0);
        ck_assert_str_eq(v.name, order[i]);
        ck_assert_str_eq(v.dtype, "F32");
        ck_assert_uint_eq((uintptr_t)v.data % sizeof(float), 0);
    }
    /* The data region starts 8-aligned: "cube" is the first tensor. */
    ck_assert_int_eq(moe_safetensors_at(st, 0, &v), 0);
    ck_assert_uint_eq((uintptr_t)v.data % 8, 0);
    ck_assert_int_eq(moe_safetensors_at(st, 5, &v), MOE_ERR_NOTFOUND);
    ck_assert_int_eq(moe_safetensors_find(st, "nope", &v), MOE_ERR_NOTFOUND);
    ck_assert_int_eq(moe_safetensors_find(st, "mat", NULL), 0);

    for (int i = 0; i < 5; i++) {
        const struct moe_st_entry *e = &f.e[i];
        ck_assert_int_eq(moe_safetensors_find(st, e->name, &v), 0);
        ck_assert_int_eq(v.ndim, e->ndim);
        size_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            ck_assert_int_eq(v.shape[d], e->shape[d]);
            numel *= (size_t)e->shape[d];
        }
        for (int d = e->ndim; d < MOE_ST_MAX_DIMS; d++)
            ck_assert_int_eq(v.shape[d], 0);
        ck_assert_uint_eq(v.nbytes, numel * 4);
        if (numel)
            ck_assert_mem_eq(v.data, e->data, numel * 4);
        float out[32];
        memset(out, 0xAB, sizeof out);
        ck_assert_int_eq(moe_safetensors_read_f32(st, e->name, e->ndim, e->shape, out, err,
                                                  sizeof err), 0);
        for (size_t k = 0; k < numel; k++)
            ck_assert_uint_eq(f32_bits(out[k]), f32_bits(e->data[k]));
    }
    /* The empty tensor with a NULL destination. */
    ck_assert_int_eq(moe_safetensors_read_f32(st, "empty", 2, (int64_t[]){3, 0}, NULL, err,
                                              sizeof err), 0);
    moe_safetensors_close(&st);
    ck_assert_ptr_null(st);
    moe_safetensors_close(&st);
    moe_safetensors_close(NULL);
}
END_TEST

START_TEST(test_st_no_tensors)
{
    const char *p = tpath("empty.safetensors");
    char err[256];
    ck_assert_int_eq(moe_safetensors_write(p, NULL, 0, NULL, err, sizeof err), 0);
    size_t n;
    unsigned char *b = get_file(p, &n);
    ck_assert_uint_eq(n, 16);
    ck_assert_mem_eq(b, "\x08\0\0\0\0\0\0\0{}      ", 16);
    free(b);
    /* An empty metadata array is the same file. */
    const char *nometa[] = {NULL};
    ck_assert_int_eq(moe_safetensors_write(tpath("e2"), NULL, 0, nometa, err, sizeof err), 0);
    b = get_file(tpath("e2"), &n);
    ck_assert_uint_eq(n, 16);
    free(b);
    moe_safetensors_t *st = moe_safetensors_open(p, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_uint_eq(moe_safetensors_count(st), 0);
    ck_assert_ptr_null(moe_safetensors_meta(st, "step"));
    moe_safetensors_close(&st);
}
END_TEST

START_TEST(test_st_order_independent)
{
    struct fixture5 f;
    make5(&f);
    struct moe_st_entry rev[5];
    for (int i = 0; i < 5; i++)
        rev[i] = f.e[4 - i];
    const char *meta1[] = {"b", "2", "a", "1", "c", "3", NULL};
    const char *meta2[] = {"c", "3", "a", "1", "b", "2", NULL};
    char err[256];
    ck_assert_int_eq(moe_safetensors_write(tpath("x1"), f.e, 5, meta1, err, sizeof err), 0);
    ck_assert_int_eq(moe_safetensors_write(tpath("x2"), rev, 5, meta2, err, sizeof err), 0);
    size_t n1, n2;
    unsigned char *b1 = get_file(tpath("x1"), &n1);
    unsigned char *b2 = get_file(tpath("x2"), &n2);
    ck_assert_uint_eq(n1, n2);
    ck_assert_mem_eq(b1, b2, n1);
    /* Overwriting an existing file with the same inputs is also identical. */
    ck_assert_int_eq(moe_safetensors_write(tpath("x1"), rev, 5, meta1, err, sizeof err), 0);
    free(b1);
    b1 = get_file(tpath("x1"), &n1);
    ck_assert_uint_eq(n1, n2);
    ck_assert_mem_eq(b1, b2, n1);
    /* Header is padded: 8 + N is a multiple of 8, with fewer than 8 spaces. */
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | b1[i];
    ck_assert_uint_eq(hl % 8, 0);
    uint64_t end = 8 + hl;
    while (b1[end - 1] == ' ')
        end--;
    ck_assert_uint_eq(b1[end - 1], '}');
    ck_assert_uint_lt(8 + hl - end, 8);
    free(b1);
    free(b2);
    ck_assert_uint_eq(dir_entries(tmpdir), 2);
}
END_TEST

static void check_exact(const char *path, const char *json, const unsigned char *data, size_t dlen)
{
    size_t n, jlen = strlen(json), hlen = (jlen + 7) / 8 * 8;
    unsigned char *b = get_file(path, &n);
    ck_assert_uint_eq(n, 8 + hlen + dlen);
    for (int i = 0; i < 8; i++)
        ck_assert_uint_eq(b[i], (hlen >> (8 * i)) & 0xff);
    ck_assert_msg(memcmp(b + 8, json, jlen) == 0, "header is %.*s", (int)jlen, (char *)b + 8);
    for (size_t i = jlen; i < hlen; i++)
        ck_assert_uint_eq(b[8 + i], ' ');
    if (dlen)
        ck_assert_mem_eq(b + 8 + hlen, data, dlen);
    free(b);
}

START_TEST(test_st_exact_header)
{
    char err[256];
    const float a[2] = {1.0f, 2.0f};
    struct moe_st_entry e = {.name = "a", .ndim = 1, .shape = {2}, .data = a};
    const char *meta[] = {"step", "7", NULL};
    ck_assert_int_eq(moe_safetensors_write(tpath("t1"), &e, 1, meta, err, sizeof err), 0);
    static const char json1[] =
        "{\"__metadata__\":{\"step\":\"7\"},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    ck_assert_uint_eq(strlen(json1), 82); /* padded to 88 */
    static const unsigned char d1[] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0x40};
    check_exact(tpath("t1"), json1, d1, sizeof d1);

    /* Sorting is by byte (uppercase first); 0-d and empty shapes; no metadata. */
    const float one = 1.5f, s = -2.0f;
    struct moe_st_entry es[3] = {
        {.name = "b", .ndim = 0, .data = &s},
        {.name = "a", .ndim = 2, .shape = {1, 0}},
        {.name = "A", .ndim = 1, .shape = {1}, .data = &one},
    };
    ck_assert_int_eq(moe_safetensors_write(tpath("t2"), es, 3, NULL, err, sizeof err), 0);
    static const char json2[] =
        "{\"A\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[1,0],\"data_offsets\":[4,4]},"
        "\"b\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[4,8]}}";
    static const unsigned char d2[] = {0, 0, 0xc0, 0x3f, 0, 0, 0, 0xc0};
    check_exact(tpath("t2"), json2, d2, sizeof d2);

    /* Names needing JSON escapes survive the round trip. */
    struct moe_st_entry q = {.name = "q\"\\\n/\xe2\x82\xac", .ndim = 1, .shape = {2}, .data = a};
    ck_assert_int_eq(moe_safetensors_write(tpath("t3"), &q, 1, NULL, err, sizeof err), 0);
    check_exact(tpath("t3"),
                "{\"q\\\"\\\\\\n/\xe2\x82\xac\":{\"dtype\":\"F32\",\"shape\":[2],"
                "\"data_offsets\":[0,8]}}",
                d1, sizeof d1);
    moe_safetensors_t *st = moe_safetensors_open(tpath("t3"), err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_int_eq(moe_safetensors_find(st, q.name, NULL), 0);
    moe_safetensors_close(&st);
}
END_TEST

/* A file by another writer: unpadded header, unsorted keys, other dtypes,
 * data ranges not in name order, no metadata. */
START_TEST(test_st_foreign_file)
{
    static const char hdr[] =
        "{\"z\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
        " \"h\":{\"shape\":[3],\"dtype\":\"F16\",\"data_offsets\":[8,14]},"
        " \"b\":{\"dtype\":\"BOOL\",\"shape\":[1,1],\"data_offsets\":[14,15]},"
        " \"i\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[15,23]},"
        " \"e\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[23,23]},"
        " \"d\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[23,31]},"
        " \"u\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[31,32]},"
        " \"s\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[32,36]},"
        " \"w\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[36,40]},"
        " \"c\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[40,41]}}";
    for (size_t extra = 0; extra < 8; extra++) { /* every header alignment */
        char h[sizeof hdr + 8];
        memcpy(h, hdr, sizeof hdr - 1);
        memset(h + sizeof hdr - 1, ' ', extra);
        h[sizeof hdr - 1 + extra] = '\0';
        const char *p = tpath("foreign");
        put_raw(p, h, 41);
        char err[512];
        moe_safetensors_t *st = moe_safetensors_open(p, err, sizeof err);
        ck_assert_msg(st != NULL, "%s", err);
        ck_assert_uint_eq(moe_safetensors_count(st), 10);
        struct moe_st_view v;
        static const char *order = "bcdehisuwz";
        const unsigned char *base = NULL;
        for (size_t i = 0; i < 10; i++) {
            ck_assert_int_eq(moe_safetensors_at(st, i, &v), 0);
            ck_assert_int_eq(v.name[0], order[i]);
            if (v.name[0] == 'z')
                base = v.data;
        }
        ck_assert_ptr_nonnull(base);
        ck_assert_uint_eq((uintptr_t)base % 8, 0);
        ck_assert_int_eq(moe_safetensors_find(st, "h", &v), 0);
        ck_assert_str_eq(v.dtype, "F16");
        ck_assert_uint_eq(v.nbytes, 6);
        ck_assert_ptr_eq(v.data, base + 8);
        ck_assert_int_eq(((const unsigned char *)v.data)[0], (unsigned char)(8 * 7 + 1));
        ck_assert_int_eq(moe_safetensors_find(st, "d", &v), 0);
        ck_assert_int_eq(v.ndim, 0);
        ck_assert_uint_eq(v.nbytes, 8);
        float z[2];
        ck_assert_int_eq(moe_safetensors_read_f32(st, "z", 1, (int64_t[]){2}, z, err, sizeof err),
                         0);
        ck_assert_mem_eq(z, base, 8);
        /* Wrong dtype is a shape error naming the dtype. */
        float hh[3];
        ck_assert_int_eq(moe_safetensors_read_f32(st, "h", 1, (int64_t[]){3}, hh, err, sizeof err),
                         MOE_ERR_SHAPE);
        ck_assert_ptr_nonnull(strstr(err, "F16"));
        ck_assert_ptr_nonnull(strstr(err, "\"h\""));
        moe_safetensors_close(&st);
    }
}
END_TEST

static unsigned char *valid_file(size_t *n)
{
    struct fixture5 f;
    make5(&f);
    const char *meta[] = {"step", "12", NULL};
    char err[256];
    ck_assert_int_eq(moe_safetensors_write(tpath("valid"), f.e, 5, meta, err, sizeof err), 0);
    return get_file(tpath("valid"), n);
}

START_TEST(test_st_reject_truncated)
{
    size_t n;
    unsigned char *b = valid_file(&n);
    const char *p = tpath("trunc");
    for (size_t len = 0; len < n; len++) {
        put_file(p, b, len);
        char what[128];
        snprintf(what, sizeof what, "a file truncated to %zu of %zu bytes", len, n);
        expect_open_fails(p, what);
    }
    /* One extra byte is rejected too (the tensors must cover the data exactly). */
    unsigned char *b2 = malloc(n + 1);
    ck_assert_ptr_nonnull(b2);
    memcpy(b2, b, n);
    b2[n] = 0;
    put_file(p, b2, n + 1);
    expect_open_fails(p, "a file with a trailing byte");
    free(b2);
    free(b);
}
END_TEST

START_TEST(test_st_reject_header_length)
{
    size_t n;
    unsigned char *b = valid_file(&n);
    const char *p = tpath("len");
    unsigned char save[8];
    memcpy(save, b, 8);

    for (int i = 0; i < 8; i++) /* byte-swapped length */
        b[i] = save[7 - i];
    put_file(p, b, n);
    expect_open_fails(p, "a byte-swapped header length");

    uint64_t big = (uint64_t)(n - 8) + 1; /* one more than the file holds */
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(big >> (8 * i));
    put_file(p, b, n);
    expect_open_fails(p, "a header length past the end of the file");

    memset(b, 0xff, 8);
    put_file(p, b, n);
    expect_open_fails(p, "a header length of 2^64-1");

    memcpy(b, save, 8);
    b[0] = (unsigned char)(b[0] - 8); /* header shorter: JSON cut, or data misaligned */
    put_file(p, b, n);
    expect_open_fails(p, "a header length 8 bytes short");
    free(b);

    /* Over the 100 MB limit, in a sparse file that is large enough. */
    const char *sp = tpath("sparse");
    int fd = open(sp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_ge(fd, 0);
    uint64_t hl = 100000008;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(hl >> (8 * i));
    ck_assert_int_eq(write(fd, len8, 8), 8);
    ck_assert_int_eq(ftruncate(fd, (off_t)(8 + hl + 16)), 0);
    close(fd);
    char err[512];
    moe_safetensors_t *st = moe_safetensors_open(sp, err, sizeof err);
    ck_assert_ptr_null(st);
    ck_assert_ptr_nonnull(strstr(err, "limit"));

    /* Missing file and a directory. */
    expect_open_fails(tpath("does-not-exist"), "a missing file");
    expect_open_fails(tmpdir, "a directory");
}
END_TEST

START_TEST(test_st_reject_bad_json)
{
    static const char *bad[] = {
        "", "{", "}", "[]", "null", "\"x\"", "7", "{}x", "{\"a\":1}",
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"), /* duplicate key */
        "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", /* bad UTF-8 */
        "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", /* NUL */
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", /* unclosed */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_header_rejected(bad[i], 4);
    /* A raw NUL byte inside the header. */
    const char *p = tpath("nul");
    static const char h[] = "{\"a\":{\"dtype\":\"F32\",\0\"shape\":[1],\"data_offsets\":[0,4]}}";
    put_raw_len(p, sizeof h - 1, h, sizeof h - 1, 4);
    expect_open_fails(p, "a NUL byte in the header");
}
END_TEST

START_TEST(test_st_reject_dtype)
{
    expect_header_rejected("{\"a\":{\"dtype\":\"F8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
    expect_header_rejected("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_header_rejected("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_header_rejected("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4);
    expect_header_rejected(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4);
}
END_TEST

START_TEST(test_st_reject_offsets)
{
    /* Out of range, reversed, negative, wrong arity, not integers. */
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", 8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}",
                           4);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}",
                           4);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0,4\"}}", 4);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                           "\"data_offsets\":[0,18446744073709551620]}}", 4);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                           "\"data_offsets\":[9223372036854775800,9223372036854775804]}}", 4);
}
END_TEST

START_TEST(test_st_reject_overlap_and_gap)
{
    /* Overlap. */
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
    /* Same range twice. */
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    /* An empty tensor inside another. */
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8);
    /* Gap between tensors, leading gap, trailing gap. */
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 20);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12);
    /* No tensors but data bytes. */
    expect_header_rejected("{}", 4);
    expect_header_rejected("{\"__metadata__\":{}}", 1);
    /* Reference: the same with correct ranges opens. */
    const char *p = tpath("ok");
    put_raw(p, "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16);
    char err[256];
    moe_safetensors_t *st = moe_safetensors_open(p, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    moe_safetensors_close(&st);
}
END_TEST

START_TEST(test_st_reject_shape)
{
    /* nbytes mismatch. */
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
                           16);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,0]}}", 0);
    /* Negative dim, non-integer dims, too many dims, overflow. */
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2,-1],\"data_offsets\":[0,8]}}",
                           8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}",
                           8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8);
    expect_header_rejected(
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
                           "\"data_offsets\":[0,0]}}", 0);
    expect_header_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2305843009213693952],"
                           "\"data_offsets\":[0,0]}}", 0);
    /* Eight dims is fine. */
    const char *p = tpath("ok8");
    put_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8);
    char err[256];
    moe_safetensors_t *st = moe_safetensors_open(p, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    moe_safetensors_close(&st);
}
END_TEST

START_TEST(test_st_reject_metadata)
{
    static const char t[] = "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    char h[256];
    static const char *metas[] = {
        "{\"__metadata__\":{\"k\":1},", "{\"__metadata__\":{\"k\":\"v\",\"j\":null},",
        "{\"__metadata__\":{\"k\":[\"v\"]},", "{\"__metadata__\":\"v\",",
        "{\"__metadata__\":[],",
    };
    for (size_t i = 0; i < sizeof metas / sizeof metas[0]; i++) {
        snprintf(h, sizeof h, "%s%s", metas[i], t);
        expect_header_rejected(h, 4);
    }
    /* Valid metadata at the end of the object is fine. */
    const char *p = tpath("ok");
    put_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"__metadata__\":{\"k\":\"v\"}}", 4);
    char err[256];
    moe_safetensors_t *st = moe_safetensors_open(p, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    ck_assert_str_eq(moe_safetensors_meta(st, "k"), "v");
    ck_assert_uint_eq(moe_safetensors_count(st), 1);
    moe_safetensors_close(&st);
}
END_TEST

START_TEST(test_st_read_f32_errors)
{
    const float m[6] = {1, 2, 3, 4, 5, 6};
    struct moe_st_entry e = {.name = "expert.3.w_in", .ndim = 2, .shape = {2, 3}, .data = m};
    const char *p = tpath("w");
    char err[512];
    ck_assert_int_eq(moe_safetensors_write(p, &e, 1, NULL, err, sizeof err), 0);
    moe_safetensors_t *st = moe_safetensors_open(p, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    float out[6] = {0};

    ck_assert_int_eq(moe_safetensors_read_f32(st, "expert.3.w_in", 2, (int64_t[]){3, 2}, out,
                                              err, sizeof err), MOE_ERR_SHAPE);
    ck_assert_msg(strstr(err, "expert.3.w_in") && strstr(err, "[2, 3]") && strstr(err, "[3, 2]") &&
                      strstr(err, p), "%s", err);
    ck_assert_float_eq(out[0], 0.0f); /* untouched */

    ck_assert_int_eq(moe_safetensors_read_f32(st, "expert.3.w_in", 1, (int64_t[]){6}, out, err,
                                              sizeof err), MOE_ERR_SHAPE);
    ck_assert_msg(strstr(err, "[6]") && strstr(err, "[2, 3]"), "%s", err);
    ck_assert_int_eq(moe_safetensors_read_f32(st, "expert.3.w_in", 3, (int64_t[]){2, 3, 1}, out,
                                              err, sizeof err), MOE_ERR_SHAPE);
    ck_assert_msg(strstr(err, "[2, 3, 1]") && strstr(err, "[2, 3]"), "%s", err);
    ck_assert_int_eq(moe_safetensors_read_f32(st, "expert.3.w_in", 9, (int64_t[]){2, 3}, out,
                                              err, sizeof err), MOE_ERR_SHAPE);
    ck_assert_int_eq(moe_safetensors_read_f32(st, "expert.3.w_in", -1, NULL, out, err,
                                              sizeof err), MOE_ERR_SHAPE);

    ck_assert_int_eq(moe_safetensors_read_f32(st, "expert.4.w_in", 2, (int64_t[]){2, 3}, out, err,
                                              sizeof err), MOE_ERR_NOTFOUND);
    ck_assert_msg(strstr(err, "expert.4.w_in") && strstr(err, p), "%s", err);
    /* err may be NULL. */
    ck_assert_int_eq(moe_safetensors_read_f32(st, "nope", 0, NULL, out, NULL, 0),
                     MOE_ERR_NOTFOUND);

    ck_assert_int_eq(moe_safetensors_read_f32(st, "expert.3.w_in", 2, (int64_t[]){2, 3}, out, err,
                                              sizeof err), 0);
    ck_assert_mem_eq(out, m, sizeof m);
    /* A small err buffer is truncated, not overrun. */
    char tiny[8];
    ck_assert_int_eq(moe_safetensors_read_f32(st, "expert.3.w_in", 1, (int64_t[]){6}, out, tiny,
                                              sizeof tiny), MOE_ERR_SHAPE);
    ck_assert_uint_eq(strlen(tiny), 7);
    moe_safetensors_close(&st);

    /* NULL handles. */
    ck_assert_uint_eq(moe_safetensors_count(NULL), 0);
    ck_assert_int_eq(moe_safetensors_at(NULL, 0, NULL), MOE_ERR_NOTFOUND);
    ck_assert_int_eq(moe_safetensors_find(NULL, "x", NULL), MOE_ERR_NOTFOUND);
    ck_assert_ptr_null(moe_safetensors_meta(NULL, "x"));
    ck_assert_ptr_null(moe_safetensors_path(NULL));
}
END_TEST

START_TEST(test_st_write_fail_missing_dir)
{
    const float a[1] = {1};
    struct moe_st_entry e = {.name = "a", .ndim = 1, .shape = {1}, .data = a};
    const char *p = tpath("no/such/dir/x.safetensors");
    char err[512] = "";
    ck_assert_int_eq(moe_safetensors_write(p, &e, 1, NULL, err, sizeof err), MOE_ERR_IO);
    ck_assert_msg(strstr(err, p) != NULL, "%s", err);
    ck_assert_uint_eq(dir_entries(tmpdir), 0);
    ck_assert_int_eq(moe_safetensors_write(p, &e, 1, NULL, NULL, 0), MOE_ERR_IO);
}
END_TEST

/* Every rejected write leaves an existing file byte-identical and no temp. */
START_TEST(test_st_write_fail_keeps_file)
{
    size_t n;
    unsigned char *orig = valid_file(&n);
    const char *p = tpath("valid");
    const float a[4] = {1, 2, 3, 4};
    struct {
        struct moe_st_entry e[2];
        size_t n;
        const char *const *meta;
        int rc;
        const char *in_err;
    } cases[] = {
        {{{.name = "dup", .ndim = 1, .shape = {1}, .data = a},
          {.name = "dup", .ndim = 1, .shape = {2}, .data = a}}, 2, NULL, MOE_ERR_FORMAT, "dup"},
        {{{.name = "w", .ndim = 9, .shape = {1}, .data = a}}, 1, NULL, MOE_ERR_SHAPE, "w"},
        {{{.name = "w", .ndim = -1, .data = a}}, 1, NULL, MOE_ERR_SHAPE, "w"},
        {{{.name = "ok", .ndim = 1, .shape = {1}, .data = a},
          {.name = "neg", .ndim = 2, .shape = {2, -2}, .data = a}}, 2, NULL, MOE_ERR_SHAPE, "neg"},
        {{{.name = "big", .ndim = 2, .shape = {INT64_MAX / 2, 2}, .data = a}}, 1, NULL,
         MOE_ERR_RANGE, "big"},
        {{{.name = "big4", .ndim = 1, .shape = {INT64_MAX / 2}, .data = a}}, 1, NULL,
         MOE_ERR_RANGE, "big4"},
        {{{.name = "__metadata__", .ndim = 1, .shape = {1}, .data = a}}, 1, NULL, MOE_ERR_FORMAT,
         "__metadata__"},
        {{{.name = "nodata", .ndim = 1, .shape = {1}, .data = NULL}}, 1, NULL, MOE_ERR_FORMAT,
         "nodata"},
        {{{.name = NULL, .ndim = 1, .shape = {1}, .data = a}}, 1, NULL, MOE_ERR_FORMAT, p},
        {{{.name = "bad\xc3", .ndim = 1, .shape = {1}, .data = a}}, 1, NULL, MOE_ERR_FORMAT, p},
        {{{.name = "a", .ndim = 1, .shape = {1}, .data = a}}, 1,
         (const char *const[]){"k", "1", "k", "2", NULL}, MOE_ERR_FORMAT, "k"},
        {{{.name = "a", .ndim = 1, .shape = {1}, .data = a}}, 1,
         (const char *const[]){"k", NULL}, MOE_ERR_FORMAT, "k"},
        {{{.name = "a", .ndim = 1, .shape = {1}, .data = a}}, 1,
         (const char *const[]){"k", "\xed\xa0\x80", NULL}, MOE_ERR_FORMAT, "k"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[512] = "";
        int rc = moe_safetensors_write(p, cases[i].e, cases[i].n, cases[i].meta, err, sizeof err);
        ck_assert_msg(rc == cases[i].rc, "case %zu: rc %d, want %d (%s)", i, rc, cases[i].rc, err);
        ck_assert_msg(strstr(err, p) && strstr(err, cases[i].in_err), "case %zu: %s", i, err);
        size_t n2;
        unsigned char *now = get_file(p, &n2);
        ck_assert_uint_eq(n2, n);
        ck_assert_mem_eq(now, orig, n);
        free(now);
        ck_assert_uint_eq(dir_entries(tmpdir), 1);
    }
    free(orig);
}
END_TEST

/* The rename fails (the target is a non-empty directory): the temp file is
 * removed and the directory is untouched. */
START_TEST(test_st_write_fail_rename)
{
    const char *d = tpath("target");
    ck_assert_int_eq(mkdir(d, 0700), 0);
    put_file(tpath("target/keep"), "x", 1);
    const float a[1] = {1};
    struct moe_st_entry e = {.name = "a", .ndim = 1, .shape = {1}, .data = a};
    char err[512] = "";
    ck_assert_int_eq(moe_safetensors_write(d, &e, 1, NULL, err, sizeof err), MOE_ERR_IO);
    ck_assert_msg(strstr(err, d) != NULL, "%s", err);
    ck_assert_uint_eq(dir_entries(tmpdir), 1);
    ck_assert_uint_eq(dir_entries(d), 1);
}
END_TEST

/* ------------------------------------------------------------------------- */
/* Seeded random mutation of a valid file.                                  */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static size_t rng_below(size_t n)
{
    return n ? (size_t)(rng_next() % n) : 0;
}

static size_t dtype_size(const char *dt)
{
    static const struct { const char *n; size_t s; } t[] = {
        {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}, {"I64", 8},
        {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U8", 1},  {"BOOL", 1}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (strcmp(t[i].n, dt) == 0)
            return t[i].s;
    return 0;
}

/* For an accepted file: views are consistent and lie in one span no larger
 * than the file; touching every byte lets ASan catch an out-of-bounds view. */
static void check_views(moe_safetensors_t *st, size_t file_size)
{
    size_t n = moe_safetensors_count(st);
    const unsigned char *lo = NULL, *hi = NULL;
    size_t total = 0;
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++) {
        struct moe_st_view v, w;
        ck_assert_int_eq(moe_safetensors_at(st, i, &v), 0);
        ck_assert_int_ge(v.ndim, 0);
        ck_assert_int_le(v.ndim, MOE_ST_MAX_DIMS);
        size_t ds = dtype_size(v.dtype);
        ck_assert_uint_gt(ds, 0);
        uint64_t numel = 1;
        for (int d = 0; d < v.ndim; d++) {
            ck_assert_int_ge(v.shape[d], 0);
            numel *= (uint64_t)v.shape[d];
        }
        ck_assert_uint_eq(numel * ds, v.nbytes);
        ck_assert_uint_le(v.nbytes, file_size);
        const unsigned char *b = v.data;
        if (!lo || b < lo)
            lo = b;
        if (!hi || b + v.nbytes > hi)
            hi = b + v.nbytes;
        total += v.nbytes;
        for (size_t k = 0; k < v.nbytes; k++)
            sum += b[k];
        ck_assert_int_eq(moe_safetensors_find(st, v.name, &w), 0);
        ck_assert_ptr_eq(w.data, v.data);
        if (i > 0) {
            struct moe_st_view prev;
            ck_assert_int_eq(moe_safetensors_at(st, i - 1, &prev), 0);
            ck_assert_int_lt(strcmp(prev.name, v.name), 0);
        }
        if (strcmp(v.dtype, "F32") == 0) {
            float *dst = malloc(v.nbytes ? v.nbytes : 1);
            ck_assert_ptr_nonnull(dst);
            ck_assert_int_eq(moe_safetensors_read_f32(st, v.name, v.ndim, v.shape, dst, NULL, 0),
                             0);
            ck_assert_int_eq(memcmp(dst, v.data, v.nbytes), 0);
            free(dst);
        }
    }
    (void)sum;
    ck_assert_uint_le(total, file_size);
    if (lo)
        ck_assert_uint_le((size_t)(hi - lo), file_size);
}

START_TEST(test_st_mutation_robustness)
{
    size_t n;
    unsigned char *orig = valid_file(&n);
    unsigned char *buf = malloc(n + 64);
    ck_assert_ptr_nonnull(buf);
    static const char alphabet[] = "{}[]\",:0123456789-+.eE \\u";
    const char *p = tpath("mut");
    size_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | orig[i];
    int accepted = 0;
    rng_state = 0x9e3779b97f4a7c15ull;
    for (int iter = 0; iter < 2000; iter++) {
        memcpy(buf, orig, n);
        size_t len = n;
        int k = 1 + (int)rng_below(4);
        for (int j = 0; j < k; j++) {
            size_t r = rng_below(10);
            size_t pos = r < 7 ? rng_below(8 + hlen) : rng_below(len ? len : 1);
            if (len == 0)
                break;
            if (r < 4)
                buf[pos] = (unsigned char)rng_next();
            else if (r < 8)
                buf[pos] = (unsigned char)alphabet[rng_below(sizeof alphabet - 1)];
            else if (r < 9)
                len = pos; /* truncate */
            else
                buf[pos] ^= (unsigned char)(1u << rng_below(8));
        }
        if (rng_below(50) == 0) { /* occasionally grow the file */
            size_t add = 1 + rng_below(64);
            memset(buf + len, 0, add);
            len += add;
        }
        put_file(p, buf, len);
        char err[512] = "";
        moe_safetensors_t *st = moe_safetensors_open(p, err, sizeof err);
        if (st) {
            accepted++;
            check_views(st, len);
            moe_safetensors_close(&st);
        } else {
            ck_assert_msg(err[0] != '\0' && strstr(err, p), "iteration %d: empty error", iter);
        }
    }
    /* Data-only and whitespace mutations keep the file valid: some must pass. */
    ck_assert_int_gt(accepted, 0);
    free(buf);
    free(orig);
}
END_TEST

Suite *test_safetensors_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("write_read");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_st_roundtrip);
    tcase_add_test(tc, test_st_no_tensors);
    tcase_add_test(tc, test_st_order_independent);
    tcase_add_test(tc, test_st_exact_header);
    tcase_add_test(tc, test_st_foreign_file);
    tcase_add_test(tc, test_st_read_f32_errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("reject");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_st_reject_truncated);
    tcase_add_test(tc, test_st_reject_header_length);
    tcase_add_test(tc, test_st_reject_bad_json);
    tcase_add_test(tc, test_st_reject_dtype);
    tcase_add_test(tc, test_st_reject_offsets);
    tcase_add_test(tc, test_st_reject_overlap_and_gap);
    tcase_add_test(tc, test_st_reject_shape);
    tcase_add_test(tc, test_st_reject_metadata);
    suite_add_tcase(s, tc);

    tc = tcase_create("write_failures");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_st_write_fail_missing_dir);
    tcase_add_test(tc, test_st_write_fail_keeps_file);
    tcase_add_test(tc, test_st_write_fail_rename);
    suite_add_tcase(s, tc);

    tc = tcase_create("robustness");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_st_mutation_robustness);
    suite_add_tcase(s, tc);
    return s;
}
