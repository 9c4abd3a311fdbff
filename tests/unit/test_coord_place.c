/* Tests of the coordinator's placement (coord_placement_compute): balanced
 * by expert count (every live slot holds E/n or one more), and the fewest
 * experts moved, checked against the optimum computed independently
 * (keep min(held, share) on every slot, the larger shares going to the
 * slots holding most), on hand-made cases and on random ones. */
#include <stdlib.h>
#include <string.h>

#include "coord.h"
#include "moe_cluster.h"
#include "moe_err.h"
#include "test_util.h"

#define EMAX 64
#define SMAX 8

/* xorshift64: the random cases only need to be varied and repeatable */
static uint32_t next_rand(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return (uint32_t)(*x >> 32);
}

static int moved(int E, const int32_t *a, const int32_t *b)
{
    int n = 0;
    for (int e = 0; e < E; e++)
        n += a[e] != b[e];
    return n;
}

/* Balance and membership; returns the per-slot counts in cnt. */
static void check_balanced(int E, const int32_t *out, const int *live, int n, int *cnt)
{
    memset(cnt, 0, sizeof(int) * SMAX);
    for (int e = 0; e < E; e++) {
        int j = -1;
        for (int i = 0; i < n; i++)
            if (out[e] == live[i])
                j = i;
        ck_assert_msg(j >= 0, "expert %d placed on slot %d, which is not live", e, out[e]);
        cnt[j]++;
    }
    for (int i = 0; i < n; i++)
        ck_assert_msg(cnt[i] == E / n || cnt[i] == E / n + 1, "slot %d holds %d of %d experts (%d slots)",
                      live[i], cnt[i], E, n);
}

/* The fewest moves possible from `old` to a balanced placement on `live`. */
static int optimum(int E, const int32_t *old, const int *live, int n)
{
    int held[SMAX] = {0};
    for (int e = 0; e < E; e++)
        for (int i = 0; i < n; i++)
            if (old[e] == live[i])
                held[i]++;
    const int base = E / n, extra = E % n;
    int kept = 0, over = 0;
    for (int i = 0; i < n; i++) {
        kept += held[i] < base ? held[i] : base;
        over += held[i] > base;
    }
    kept += over < extra ? over : extra;
    return E - kept;
}

START_TEST(place_first_is_contiguous)
{
    int32_t old[16], out[16];
    for (int e = 0; e < 16; e++)
        old[e] = -1;
    const int live[2] = {0, 1};
    coord_placement_compute(16, old, live, 2, out);
    for (int e = 0; e < 16; e++)
        ck_assert_int_eq(out[e], e < 8 ? 0 : 1);
}
END_TEST

START_TEST(place_join_and_leave)
{
    int32_t a[16], b[16], c[16];
    int cnt[SMAX];
    for (int e = 0; e < 16; e++)
        a[e] = e < 8 ? 0 : 1;
    /* a third slot joins: it needs 5, and exactly 5 move, all to it */
    const int three[3] = {0, 1, 2};
    coord_placement_compute(16, a, three, 3, b);
    check_balanced(16, b, three, 3, cnt);
    ck_assert_int_eq(moved(16, a, b), 5);
    for (int e = 0; e < 16; e++)
        ck_assert(b[e] == a[e] || b[e] == 2);
    /* slot 1 leaves: only its experts move */
    const int two[2] = {0, 2};
    coord_placement_compute(16, b, two, 2, c);
    check_balanced(16, c, two, 2, cnt);
    int on1 = 0;
    for (int e = 0; e < 16; e++) {
        on1 += b[e] == 1;
        if (b[e] != 1)
            ck_assert_int_eq(c[e], b[e]);
    }
    ck_assert_int_eq(moved(16, b, c), on1);
    /* the same live set again changes nothing */
    coord_placement_compute(16, c, two, 2, b);
    ck_assert_int_eq(moved(16, c, b), 0);
}
END_TEST

START_TEST(place_random_is_optimal)
{
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    int32_t old[EMAX], out[EMAX];
    int cnt[SMAX];
    for (int trial = 0; trial < 2000; trial++) {
        const int E = 1 + (int)(next_rand(&rng) % EMAX);
        const int slots = 1 + (int)(next_rand(&rng) % SMAX);
        int live[SMAX], n = 0;
        for (int s = 0; s < slots; s++)
            if (next_rand(&rng) % 3 || (n == 0 && s == slots - 1))
                live[n++] = s;
        for (int e = 0; e < E; e++) {
            uint32_t r = next_rand(&rng) % (uint32_t)(slots + 1);
            old[e] = r == (uint32_t)slots ? -1 : (int32_t)r;
        }
        coord_placement_compute(E, old, live, n, out);
        check_balanced(E, out, live, n, cnt);
        ck_assert_msg(moved(E, old, out) == optimum(E, old, live, n),
                      "trial %d: E %d, %d live slots: moved %d, optimum %d", trial, E, n,
                      moved(E, old, out), optimum(E, old, live, n));
    }
}
END_TEST

/* Hierarchical MoE (issue 17): groups of B experts move whole. On random
 * cases: no group is split, every live slot holds A/n groups or one more,
 * and the groups moved are the fewest possible (the optimum above, on
 * groups, a group counting as held where it is whole); B = 1 is the flat
 * placement. */
START_TEST(place_groups_whole_and_optimal)
{
    uint64_t rng = 0x2545F4914F6CDD1Dull;
    int32_t old[EMAX], out[EMAX], flat[EMAX], og[EMAX], ng[EMAX];
    int cnt[SMAX];
    for (int trial = 0; trial < 2000; trial++) {
        const int B = 1 + (int)(next_rand(&rng) % 4), A = 1 + (int)(next_rand(&rng) % (EMAX / B));
        const int E = A * B, slots = 1 + (int)(next_rand(&rng) % SMAX);
        int live[SMAX], n = 0;
        for (int s = 0; s < slots; s++)
            if (next_rand(&rng) % 3 || (n == 0 && s == slots - 1))
                live[n++] = s;
        n = coord_placement_live(A, old, 0, live, n);
        ck_assert_int_eq(n, n < A ? n : A);
        for (int i = 0; i < A; i++) {
            /* mostly whole groups, now and then one split */
            const uint32_t r = next_rand(&rng) % (uint32_t)(slots + 1);
            for (int j = 0; j < B; j++)
                old[i * B + j] = r == (uint32_t)slots ? -1 : (int32_t)r;
            if (B > 1 && next_rand(&rng) % 8 == 0)
                old[i * B + B - 1] = (int32_t)(next_rand(&rng) % (uint32_t)slots);
        }
        coord_placement_compute_groups(E, B, old, live, n, out);
        for (int i = 0; i < A; i++) {
            for (int j = 1; j < B; j++)
                ck_assert_msg(out[i * B + j] == out[i * B], "trial %d: group %d split", trial, i);
            ng[i] = out[i * B];
            og[i] = old[i * B];
            for (int j = 1; j < B; j++)
                og[i] = old[i * B + j] == og[i] ? og[i] : -1;
        }
        check_balanced(A, ng, live, n, cnt);
        ck_assert_msg(moved(A, og, ng) == optimum(A, og, live, n),
                      "trial %d: %d groups of %d, %d live slots: moved %d groups, optimum %d",
                      trial, A, B, n, moved(A, og, ng), optimum(A, og, live, n));
        if (B == 1) {
            coord_placement_compute(E, old, live, n, flat);
            ck_assert_mem_eq(flat, out, sizeof(int32_t) * (size_t)E);
        }
    }
}
END_TEST

/* 3 groups of 2 on 2 slots: groups 0, 1 on the first, group 2 on the
 * second; a third slot takes exactly one group; more slots than groups
 * keep those holding groups. */
START_TEST(place_groups_by_hand)
{
    int32_t none[6] = {-1, -1, -1, -1, -1, -1}, a[6], b[6];
    const int two[2] = {0, 1};
    coord_placement_compute_groups(6, 2, none, two, 2, a);
    const int32_t want[6] = {0, 0, 0, 0, 1, 1};
    ck_assert_mem_eq(a, want, sizeof want);
    const int three[3] = {0, 1, 2};
    coord_placement_compute_groups(6, 2, a, three, 3, b);
    ck_assert_int_eq(moved(6, a, b), 2);
    ck_assert(b[2] == 2 && b[3] == 2);
    int four[4] = {0, 1, 2, 3};
    ck_assert_int_eq(coord_placement_live(3, b, 6, four, 4), 3);
    ck_assert(four[0] == 0 && four[1] == 1 && four[2] == 2);
    int four2[4] = {0, 1, 2, 3};
    const int32_t on13[6] = {1, 1, 3, 3, 3, 3};
    ck_assert_int_eq(coord_placement_live(3, on13, 6, four2, 4), 3);
    ck_assert(four2[0] == 0 && four2[1] == 1 && four2[2] == 3);
}
END_TEST

/* The static placement of a hierarchical cluster (moe_cluster_parse_groups):
 * contiguous blocks of groups, a split group and more servers than groups
 * refused with a sentence. */
START_TEST(cluster_parse_groups)
{
    struct moe_cluster cl;
    char err[256];
    ck_assert_int_eq(moe_cluster_parse_groups(&cl, "a,b", "", "", 6, 2, err, sizeof err), 0);
    const int32_t want[6] = {0, 0, 0, 0, 1, 1};
    ck_assert_mem_eq(cl.server_of, want, sizeof want);
    moe_cluster_free(&cl);
    ck_assert_int_eq(moe_cluster_parse_groups(&cl, "a,b", "", "0,0,1,1,1,1", 6, 2, err,
                                              sizeof err), 0);
    moe_cluster_free(&cl);
    ck_assert_int_eq(moe_cluster_parse_groups(&cl, "a,b", "", "0,0,0,1,1,1", 6, 2, err,
                                              sizeof err), MOE_ERR_CONFIG);
    ck_assert_str_eq(err, "placement: group 1 is split (expert 2 on server 0, expert 3 on server "
                          "1); a hierarchical MoE places whole groups");
    ck_assert_int_eq(moe_cluster_parse_groups(&cl, "a,b,c,d", "", "", 6, 2, err, sizeof err),
                     MOE_ERR_CONFIG);
    ck_assert_str_eq(err, "servers: 4 servers for 3 groups of experts (each needs one)");
    /* group size 1: the flat parse, contiguous experts */
    ck_assert_int_eq(moe_cluster_parse_groups(&cl, "a,b", "", "", 6, 1, err, sizeof err), 0);
    const int32_t flat[6] = {0, 0, 0, 1, 1, 1};
    ck_assert_mem_eq(cl.server_of, flat, sizeof flat);
    moe_cluster_free(&cl);
}
END_TEST

Suite *test_coord_place_suite(void);
Suite *test_coord_place_suite(void)
{
    Suite *s = suite_create("coord_place");
    TCase *tc = tcase_create("place");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, place_first_is_contiguous);
    tcase_add_test(tc, place_join_and_leave);
    tcase_add_test(tc, place_random_is_optimal);
    tcase_add_test(tc, place_groups_whole_and_optimal);
    tcase_add_test(tc, place_groups_by_hand);
    tcase_add_test(tc, cluster_parse_groups);
    suite_add_tcase(s, tc);
    return s;
}
