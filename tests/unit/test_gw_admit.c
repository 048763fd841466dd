/* Admission control: sends count from their publish to their answer or the TTL; past the bound a
 * send is refused with a retry hint (the age of the oldest), except for a user with nothing in
 * flight, who may go a quarter over; 0 turns it off. */
#include <check.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "gw_admit.h"
#include "unit_run.h"

static atomic_int_fast64_t gauge;
static atomic_uint_fast64_t shed;

static gw_admit *admit_new(size_t max)
{
    atomic_store(&gauge, 0);
    atomic_store(&shed, 0);
    return gw_admit_create(max, &gauge, &shed);
}

START_TEST(off_takes_everything_and_counts_nothing)
{
    gw_admit *a = admit_new(0);
    int retry = -1;
    for (int i = 0; i < 10; i++) {
        char cmid[16];
        snprintf(cmid, sizeof cmid, "m%d", i);
        ck_assert(gw_admit_take(a, "alice", 1000, &retry));
        gw_admit_add(a, "g-1", "alice", "c1", cmid, 1000);
    }
    ck_assert_uint_eq(gw_admit_inflight(a), 0);
    ck_assert_int_eq(retry, -1);
    gw_admit_destroy(a);
    gw_admit_destroy(NULL);
}
END_TEST

START_TEST(past_the_bound_the_busy_sender_waits_the_idle_one_goes)
{
    gw_admit *a = admit_new(4);
    int retry = 0;
    char cmid[16];
    for (int i = 0; i < 4; i++) {
        snprintf(cmid, sizeof cmid, "m%d", i);
        ck_assert(gw_admit_take(a, "busy", 1000 + i, &retry));
        gw_admit_add(a, "g-1", "busy", "c1", cmid, 1000 + i);
    }
    gw_admit_add(a, "g-1", "busy", "c1", "m0", 1010); /* the same send again counts once */
    ck_assert_uint_eq(gw_admit_inflight(a), 4);
    ck_assert_int_eq(atomic_load(&gauge), 4);
    ck_assert(!gw_admit_take(a, "busy", 3000, &retry));
    ck_assert_int_eq(retry, 2000); /* the oldest send has waited 2 s */
    ck_assert(!gw_admit_take(a, "busy", 1100, &retry));
    ck_assert_int_eq(retry, 250); /* at least a quarter second */
    ck_assert_uint_eq(atomic_load(&shed), 2);
    ck_assert(gw_admit_take(a, "idle", 1100, &retry)); /* nothing in flight: within the quarter over */
    gw_admit_add(a, "g-2", "idle", "c2", "x", 1100);
    ck_assert(!gw_admit_take(a, "other", 1100, &retry)); /* the reserve (max / 4, at least 1) is used */
    gw_admit_destroy(a);
}
END_TEST

START_TEST(an_answer_or_the_ttl_ends_the_count)
{
    gw_admit *a = admit_new(2);
    int retry = 0;
    gw_admit_add(a, "g-1", "alice", "c1", "m1", 1000);
    gw_admit_add(a, "g-1", "alice", "c1", "m2", 2000);
    ck_assert(!gw_admit_take(a, "alice", 2000, &retry));
    gw_admit_done(a, "g-1", "c1", "nope"); /* unknown sends are ignored */
    gw_admit_done(a, NULL, "c1", "m1");
    ck_assert_uint_eq(gw_admit_inflight(a), 2);
    gw_admit_done(a, "g-1", "c1", "m1");
    ck_assert_uint_eq(gw_admit_inflight(a), 1);
    ck_assert_int_eq(atomic_load(&gauge), 1);
    ck_assert(gw_admit_take(a, "alice", 2000, &retry));
    gw_admit_add(a, "g-1", "alice", "c1", "m3", 3000);
    ck_assert(!gw_admit_take(a, "alice", 3000, &retry));
    /* m2 was published at 2000: it stops counting GW_INFLIGHT_TTL_MS later */
    gw_admit_tick(a, 2000 + GW_INFLIGHT_TTL_MS - 1);
    ck_assert_uint_eq(gw_admit_inflight(a), 2);
    gw_admit_tick(a, 2000 + GW_INFLIGHT_TTL_MS);
    ck_assert_uint_eq(gw_admit_inflight(a), 1);
    ck_assert(gw_admit_take(a, "alice", 2000 + GW_INFLIGHT_TTL_MS, &retry));
    gw_admit_destroy(a); /* frees what still counts */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_admit");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, off_takes_everything_and_counts_nothing);
    tcase_add_test(tc, past_the_bound_the_busy_sender_waits_the_idle_one_goes);
    tcase_add_test(tc, an_answer_or_the_ttl_ends_the_count);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
