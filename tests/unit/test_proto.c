/* Unit tests of the generated protobuf-c code for moe.Header (proto/moe.proto):
 * a header with every field set (repeated expert_ids with negative and
 * large values, row_counts, 64-bit extremes, a string) packs and unpacks to
 * the same values; the encoding is canonical (packing the copy gives the
 * same bytes); and truncated or garbage bytes make unpack return NULL
 * without crashing, as the wire boundary relies on (STYLE: treat NULL as
 * malformed). Run under ASan/UBSan to catch reads past the input. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moe.pb-c.h"
#include "test_util.h"

Suite *test_proto_suite(void);

static int32_t ids[5] = {0, 3, 17, -1, INT32_MAX};
static uint32_t counts[5] = {1, 0, 128, 300, UINT32_MAX};
static char text[] = "expert 17: rows \xc3\xa9 != width";

static void fill(Moe__Header *h)
{
    moe__header__init(h);
    h->type = MOE__MSG_TYPE__MSG_EXPERT_BACKWARD_REPLY;
    h->version = 1;
    h->step = UINT64_MAX;
    h->rank = 7;
    h->request_id = UINT64_C(0x0123456789abcdef);
    h->n_expert_ids = 5;
    h->expert_ids = ids;
    h->n_row_counts = 5;
    h->row_counts = counts;
    h->dtype = MOE__DTYPE__DTYPE_BF16;
    h->width = 512;
    h->row0 = UINT64_C(1) << 40;
    h->error_code = -9;
    h->error_text = text;
    h->placement_version = 300; /* a two-byte varint, and the last field */
}

static uint8_t *pack(const Moe__Header *h, size_t *len)
{
    *len = moe__header__get_packed_size(h);
    uint8_t *buf = malloc(*len ? *len : 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(moe__header__pack(h, buf), *len);
    return buf;
}

START_TEST(proto_round_trip_every_field)
{
    Moe__Header h;
    fill(&h);
    size_t len;
    uint8_t *buf = pack(&h, &len);
    Moe__Header *u = moe__header__unpack(NULL, len, buf);
    ck_assert_ptr_nonnull(u);
    ck_assert_int_eq(u->type, MOE__MSG_TYPE__MSG_EXPERT_BACKWARD_REPLY);
    ck_assert_uint_eq(u->version, 1);
    ck_assert(u->step == UINT64_MAX);
    ck_assert_uint_eq(u->rank, 7);
    ck_assert(u->request_id == UINT64_C(0x0123456789abcdef));
    ck_assert_uint_eq(u->n_expert_ids, 5);
    ck_assert_int_eq(memcmp(u->expert_ids, ids, sizeof ids), 0);
    ck_assert_uint_eq(u->n_row_counts, 5);
    ck_assert_int_eq(memcmp(u->row_counts, counts, sizeof counts), 0);
    ck_assert_int_eq(u->dtype, MOE__DTYPE__DTYPE_BF16);
    ck_assert_uint_eq(u->width, 512);
    ck_assert(u->row0 == UINT64_C(1) << 40);
    ck_assert_int_eq(u->error_code, -9);
    ck_assert_str_eq(u->error_text, text);
    ck_assert_uint_eq(u->placement_version, 300);
    /* the unpacked copy owns its arrays */
    ck_assert_ptr_ne(u->expert_ids, ids);
    ck_assert_ptr_ne(u->error_text, text);
    /* canonical: packing the copy gives the same bytes */
    size_t len2;
    uint8_t *buf2 = pack(u, &len2);
    ck_assert_uint_eq(len2, len);
    ck_assert_int_eq(memcmp(buf, buf2, len), 0);
    moe__header__free_unpacked(u, NULL);
    free(buf);
    free(buf2);
}
END_TEST

START_TEST(proto_defaults_round_trip)
{
    /* proto3: an all-default header packs to zero bytes and unpacks to the
     * defaults, with empty repeated fields and an empty string */
    Moe__Header h = MOE__HEADER__INIT;
    ck_assert_uint_eq(moe__header__get_packed_size(&h), 0);
    Moe__Header *u = moe__header__unpack(NULL, 0, (const uint8_t *)"");
    ck_assert_ptr_nonnull(u);
    ck_assert_int_eq(u->type, MOE__MSG_TYPE__MSG_UNKNOWN);
    ck_assert_uint_eq(u->n_expert_ids, 0);
    ck_assert_uint_eq(u->n_row_counts, 0);
    ck_assert_str_eq(u->error_text, "");
    ck_assert(u->step == 0 && u->row0 == 0);
    moe__header__free_unpacked(u, NULL);
}
END_TEST

START_TEST(proto_truncated_is_null)
{
    Moe__Header h;
    fill(&h);
    size_t len;
    uint8_t *full = pack(&h, &len);
    /* Cuts inside a field: the last byte of the trailing two-byte varint,
     * inside the string, inside the packed expert_ids. */
    size_t at_text = len;
    for (size_t i = 0; i + strlen(text) <= len; i++)
        if (memcmp(full + i, text, strlen(text)) == 0) {
            at_text = i;
            break;
        }
    ck_assert_uint_lt(at_text, len);
    const size_t in_string = at_text + 5;
    /* Fields are packed in number order: the size of a header holding
     * fields 1..5 only is the offset of field 6, the packed expert_ids
     * (tag, length, then the values). */
    Moe__Header h5;
    fill(&h5);
    h5.n_expert_ids = h5.n_row_counts = 0;
    h5.dtype = MOE__DTYPE__DTYPE_F32;
    h5.width = 0;
    h5.row0 = 0;
    h5.error_code = 0;
    h5.error_text = (char *)protobuf_c_empty_string;
    h5.placement_version = 0;
    const size_t at_ids = moe__header__get_packed_size(&h5);
    ck_assert_uint_eq(full[at_ids], 0x32); /* field 6, length-delimited */
    const size_t in_ids = at_ids + 3;
    const size_t cuts[] = {len - 1, in_string, in_ids};
    for (size_t k = 0; k < 3; k++) {
        /* a heap copy of exactly the prefix, so ASan sees any over-read */
        uint8_t *p = malloc(cuts[k]);
        memcpy(p, full, cuts[k]);
        Moe__Header *u = moe__header__unpack(NULL, cuts[k], p);
        ck_assert_msg(u == NULL, "a header cut at %zu of %zu bytes was accepted", cuts[k], len);
        free(p);
    }
    /* Every prefix: NULL, or (cut at a field boundary) a valid header
     * whose fields are a prefix of the original's. Never a crash. */
    int nulls = 0;
    for (size_t n = 1; n < len; n++) {
        uint8_t *p = malloc(n);
        memcpy(p, full, n);
        Moe__Header *u = moe__header__unpack(NULL, n, p);
        if (u) {
            ck_assert(u->n_expert_ids == 0 || u->n_expert_ids == 5);
            ck_assert(u->placement_version == 0);
            moe__header__free_unpacked(u, NULL);
        } else {
            nulls++;
        }
        free(p);
    }
    ck_assert_int_gt(nulls, (int)len / 2);
    free(full);
}
END_TEST

START_TEST(proto_garbage_is_null)
{
    static const struct {
        size_t n;
        uint8_t b[12];
    } bad[] = {
        {1, {0xff}},                        /* tag varint never ends */
        {1, {0x0f}},                        /* field 1, wire type 7 */
        {1, {0x00}},                        /* field number 0 */
        {2, {0x32, 0x64}},                  /* ids claim 100 bytes, none follow */
        {2, {0x62, 0x05}},                  /* error_text claims 5 bytes */
        {12, {0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
        /* an 11-byte varint for type */
        {3, {0x32, 0x01, 0x80}},            /* packed ids end inside a varint */
        {2, {0x1b, 0x00}},                  /* start-group wire type */
        {1, {0x19}},                        /* step as fixed64: 8 bytes missing */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint8_t *p = malloc(bad[i].n);
        memcpy(p, bad[i].b, bad[i].n);
        Moe__Header *u = moe__header__unpack(NULL, bad[i].n, p);
        ck_assert_msg(u == NULL, "garbage case %zu accepted", i);
        free(p);
    }
    /* random bytes: whatever comes back is freed; ASan checks the reads */
    uint8_t *r = malloc(257);
    float f[257];
    for (uint32_t k = 0; k < 400; k++) {
        const size_t n = 1 + k % 257;
        tu_fill(f, n, 1000u + k, 1.0f);
        for (size_t i = 0; i < n; i++)
            r[i] = (uint8_t)((f[i] * 0.5f + 0.5f) * 256.0f);
        Moe__Header *u = moe__header__unpack(NULL, n, r);
        if (u)
            moe__header__free_unpacked(u, NULL);
    }
    free(r);
}
END_TEST

Suite *test_proto_suite(void)
{
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("header");
    tcase_set_timeout(tc, 10);
    tcase_add_test(tc, proto_round_trip_every_field);
    tcase_add_test(tc, proto_defaults_round_trip);
    tcase_add_test(tc, proto_truncated_is_null);
    tcase_add_test(tc, proto_garbage_is_null);
    suite_add_tcase(s, tc);
    return s;
}
