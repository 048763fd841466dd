/* gw_strikes: refused upgrades per client address, a token bucket each (rate, ten seconds of it at
 * once), the addresses followed capped, full buckets forgotten. */
#include <check.h>

#include "gw_strikes.h"
#include "unit_run.h"

START_TEST(bucket_per_address)
{
    gw_strikes *t = gw_strikes_create(2, 100); /* 2 a second, 20 at once */
    int64_t now = 1000000;
    ck_assert(!gw_strikes_exhausted(t, "10.0.0.1", now)); /* never refused: not followed */
    for (int i = 0; i < 20; i++) {
        ck_assert_msg(!gw_strikes_exhausted(t, "10.0.0.1", now), "exhausted after %d of 20", i);
        gw_strikes_add(t, "10.0.0.1", now);
    }
    ck_assert(gw_strikes_exhausted(t, "10.0.0.1", now));
    ck_assert(!gw_strikes_exhausted(t, "10.0.0.2", now)); /* another address is not affected */
    ck_assert(gw_strikes_exhausted(t, "10.0.0.1", now + 499));
    ck_assert(!gw_strikes_exhausted(t, "10.0.0.1", now + 500)); /* one back after half a second */
    gw_strikes_add(t, "10.0.0.1", now + 500);
    ck_assert(gw_strikes_exhausted(t, "10.0.0.1", now + 500));
    gw_strikes_add(t, "10.0.0.1", now + 500); /* refused while exhausted: stays at zero, no debt */
    ck_assert(!gw_strikes_exhausted(t, "10.0.0.1", now + 1000));
    gw_strikes_destroy(t);
    gw_strikes_destroy(NULL);
}
END_TEST

START_TEST(zero_is_no_limit)
{
    gw_strikes *t = gw_strikes_create(0, 100);
    for (int i = 0; i < 1000; i++)
        gw_strikes_add(t, "10.0.0.1", 5);
    ck_assert(!gw_strikes_exhausted(t, "10.0.0.1", 5));
    ck_assert_uint_eq(gw_strikes_sweep(t, 5), 0);
    gw_strikes_destroy(t);
}
END_TEST

START_TEST(sweep_forgets_full_buckets)
{
    gw_strikes *t = gw_strikes_create(1, 100); /* 10 at once */
    gw_strikes_add(t, "a", 0);
    gw_strikes_add(t, "b", 0);
    for (int i = 0; i < 10; i++)
        gw_strikes_add(t, "c", 0);
    ck_assert_uint_eq(gw_strikes_sweep(t, 999), 3);   /* a and b are one short of full */
    ck_assert_uint_eq(gw_strikes_sweep(t, 1000), 1);  /* a and b full again: forgotten */
    ck_assert(gw_strikes_exhausted(t, "c", 1000) == false); /* one back */
    ck_assert_uint_eq(gw_strikes_sweep(t, 10000), 0);
    gw_strikes_destroy(t);
}
END_TEST

START_TEST(addresses_capped)
{
    gw_strikes *t = gw_strikes_create(1, 3);
    const char *addr[] = {"a", "b", "c"};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 10; i++)
            gw_strikes_add(t, addr[k], 0);
    for (int i = 0; i < 10; i++)
        gw_strikes_add(t, "d", 0); /* the table is full of addresses still refused: d is not followed */
    ck_assert(gw_strikes_exhausted(t, "a", 0));
    ck_assert(!gw_strikes_exhausted(t, "d", 0));
    /* ten seconds later a, b and c are full again: a new address is followed in their place */
    for (int i = 0; i < 10; i++)
        gw_strikes_add(t, "d", 10000);
    ck_assert(gw_strikes_exhausted(t, "d", 10000));
    ck_assert(!gw_strikes_exhausted(t, "a", 10000));
    gw_strikes_destroy(t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_strikes");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, bucket_per_address);
    tcase_add_test(tc, zero_is_no_limit);
    tcase_add_test(tc, sweep_forgets_full_buckets);
    tcase_add_test(tc, addresses_capped);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
