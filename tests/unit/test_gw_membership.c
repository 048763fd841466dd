/* The gateway's membership cache: answers per conversation and user, unknown until put, a whole
 * conversation dropped after its TTL, on invalidate, or (the oldest first) past the maximum. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>

#include "gw_membership.h"
#include "unit_run.h"

START_TEST(put_then_get)
{
    gw_membership *c = gw_membership_create(10, 1000);
    ck_assert_int_eq(gw_membership_get(c, "c1", "alice", 0), GW_MEMBER_UNKNOWN);
    gw_membership_put(c, "c1", "alice", true, 0);
    gw_membership_put(c, "c1", "bob", false, 0);
    ck_assert_int_eq(gw_membership_get(c, "c1", "alice", 10), GW_MEMBER);
    ck_assert_int_eq(gw_membership_get(c, "c1", "bob", 10), GW_NOT_MEMBER);
    ck_assert_int_eq(gw_membership_get(c, "c1", "carol", 10), GW_MEMBER_UNKNOWN);
    ck_assert_int_eq(gw_membership_get(c, "c2", "alice", 10), GW_MEMBER_UNKNOWN);
    gw_membership_put(c, "c1", "bob", true, 20); /* a later answer replaces the earlier */
    ck_assert_int_eq(gw_membership_get(c, "c1", "bob", 30), GW_MEMBER);
    ck_assert_uint_eq(gw_membership_size(c), 1);
    gw_membership_destroy(c);
    gw_membership_destroy(NULL);
}
END_TEST

START_TEST(ttl_from_first_fill)
{
    gw_membership *c = gw_membership_create(10, 1000);
    gw_membership_put(c, "c1", "alice", true, 100);
    gw_membership_put(c, "c1", "bob", true, 900); /* does not extend the conversation's TTL */
    ck_assert_int_eq(gw_membership_get(c, "c1", "bob", 1100), GW_MEMBER);
    ck_assert_int_eq(gw_membership_get(c, "c1", "bob", 1101), GW_MEMBER_UNKNOWN);
    ck_assert_uint_eq(gw_membership_size(c), 0); /* dropped on the way */
    ck_assert_int_eq(gw_membership_get(c, "c1", "alice", 0), GW_MEMBER_UNKNOWN);
    gw_membership_destroy(c);
}
END_TEST

START_TEST(trim_takes_the_expired_oldest_first)
{
    gw_membership *c = gw_membership_create(10, 1000);
    gw_membership_put(c, "c1", "alice", true, 0);
    gw_membership_put(c, "c2", "alice", true, 500);
    gw_membership_put(c, "c3", "alice", false, 800);
    gw_membership_trim(c, 1000);
    ck_assert_uint_eq(gw_membership_size(c), 3);
    gw_membership_trim(c, 1600);
    ck_assert_uint_eq(gw_membership_size(c), 1);
    ck_assert_int_eq(gw_membership_get(c, "c3", "alice", 1600), GW_NOT_MEMBER);
    gw_membership_trim(c, 5000);
    ck_assert_uint_eq(gw_membership_size(c), 0);
    gw_membership_destroy(c);
}
END_TEST

START_TEST(full_evicts_the_oldest_conversation)
{
    gw_membership *c = gw_membership_create(3, 60000);
    char conv[16];
    for (int i = 0; i < 3; i++) {
        snprintf(conv, sizeof conv, "c%d", i);
        gw_membership_put(c, conv, "alice", true, i);
    }
    gw_membership_put(c, "c0", "bob", true, 5); /* an existing conversation takes no new room */
    ck_assert_uint_eq(gw_membership_size(c), 3);
    gw_membership_put(c, "c3", "alice", true, 10);
    ck_assert_uint_eq(gw_membership_size(c), 3);
    ck_assert_int_eq(gw_membership_get(c, "c0", "alice", 10), GW_MEMBER_UNKNOWN);
    ck_assert_int_eq(gw_membership_get(c, "c0", "bob", 10), GW_MEMBER_UNKNOWN);
    ck_assert_int_eq(gw_membership_get(c, "c1", "alice", 10), GW_MEMBER);
    ck_assert_int_eq(gw_membership_get(c, "c3", "alice", 10), GW_MEMBER);
    gw_membership_destroy(c);
}
END_TEST

START_TEST(invalidate_and_member_list)
{
    gw_membership *c = gw_membership_create(10, 60000);
    gw_membership_put(c, "c1", "alice", true, 0);
    gw_membership_put(c, "c2", "alice", true, 0);
    ck_assert(!gw_membership_has_list(c, "c1"));
    gw_membership_invalidate(c, "c1");
    gw_membership_invalidate(c, "nowhere");
    ck_assert_int_eq(gw_membership_get(c, "c1", "alice", 1), GW_MEMBER_UNKNOWN);
    ck_assert_int_eq(gw_membership_get(c, "c2", "alice", 1), GW_MEMBER);
    gw_membership_put(c, "c2", "mallory", false, 1);
    char *const users[] = {"alice", "bob"};
    gw_membership_put_list(c, "c2", users, 2, 2); /* replaces what was cached */
    ck_assert(gw_membership_has_list(c, "c2"));
    ck_assert_int_eq(gw_membership_get(c, "c2", "bob", 3), GW_MEMBER);
    ck_assert_int_eq(gw_membership_get(c, "c2", "mallory", 3), GW_MEMBER_UNKNOWN);
    gw_membership_invalidate(c, "c2");
    ck_assert(!gw_membership_has_list(c, "c2"));
    gw_membership_destroy(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_membership");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, put_then_get);
    tcase_add_test(tc, ttl_from_first_fill);
    tcase_add_test(tc, trim_takes_the_expired_oldest_first);
    tcase_add_test(tc, full_evicts_the_oldest_conversation);
    tcase_add_test(tc, invalidate_and_member_list);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
