/* gw_peer: the connections per client address, counted up and down, an address gone at zero. */
#include <check.h>

#include "gw_peer.h"
#include "unit_run.h"

START_TEST(counts)
{
    gw_peers *t = gw_peer_create();
    ck_assert_int_eq(gw_peer_count(t, "10.0.0.1"), 0);
    gw_peer *a1 = gw_peer_join(t, "10.0.0.1");
    gw_peer *a2 = gw_peer_join(t, "10.0.0.1");
    gw_peer *b = gw_peer_join(t, "10.0.0.2");
    ck_assert_ptr_eq(a1, a2); /* one entry per address */
    ck_assert_int_eq(gw_peer_count(t, "10.0.0.1"), 2);
    ck_assert_int_eq(gw_peer_count(t, "10.0.0.2"), 1);
    gw_peer_leave(t, a1);
    ck_assert_int_eq(gw_peer_count(t, "10.0.0.1"), 1);
    gw_peer_leave(t, a2);
    ck_assert_int_eq(gw_peer_count(t, "10.0.0.1"), 0);
    gw_peer_leave(t, NULL); /* a session that had no address */
    ck_assert_int_eq(gw_peer_count(t, "10.0.0.2"), 1);
    gw_peer_destroy(t); /* b still in it: freed with the table */
    (void)b;
    gw_peer_destroy(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_peer");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, counts);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
