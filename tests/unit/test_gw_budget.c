/* Per-connection budgets: the token bucket, the typing limiter (one a conversation a second, a
 * rate in all), the presence, lookup, waiting and post.status bounds, and a lookup's debt. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>

#include "gw_budget.h"
#include "unit_run.h"

#define T0 1000 /* a bucket's clock starts at its first use; 0 means "never used" */

START_TEST(bucket_bursts_twice_the_rate_then_refills)
{
    double tokens = 0;
    int64_t refill = 0;
    for (int i = 0; i < 2 * 5; i++)
        ck_assert(gw_bucket_take(&tokens, &refill, 5, T0));
    ck_assert(!gw_bucket_take(&tokens, &refill, 5, T0));
    ck_assert(!gw_bucket_take(&tokens, &refill, 5, T0 + 100)); /* half a token */
    ck_assert(gw_bucket_take(&tokens, &refill, 5, T0 + 200));
    ck_assert(gw_bucket_take(&tokens, &refill, 5, T0 + 60000)); /* refilled, capped at the burst */
    for (int i = 0; i < 2 * 5 - 1; i++)
        ck_assert(gw_bucket_take(&tokens, &refill, 5, T0 + 60000));
    ck_assert(!gw_bucket_take(&tokens, &refill, 5, T0 + 60000));
}
END_TEST

START_TEST(typing_once_a_conversation_a_second_and_a_rate_in_all)
{
    gw_budget *b = NULL;
    ck_assert(gw_budget_typing(&b, "a", T0));
    ck_assert_ptr_nonnull(b); /* allocated at its first use */
    ck_assert(!gw_budget_typing(&b, "a", T0)); /* the same conversation within a second */
    char conv[8];
    for (int i = 1; i < 2 * GW_TYPING_RATE; i++) {
        snprintf(conv, sizeof conv, "c%d", i);
        ck_assert(gw_budget_typing(&b, conv, T0));
    }
    ck_assert(!gw_budget_typing(&b, "other", T0)); /* the burst is spent */
    ck_assert(!gw_budget_typing(&b, "a", T0 + GW_TYPING_CONV_MS - 1));
    ck_assert(gw_budget_typing(&b, "a", T0 + GW_TYPING_CONV_MS)); /* a second later, a token back */
    gw_budget_free(&b);
    ck_assert_ptr_null(b);
    gw_budget_free(&b);
}
END_TEST

START_TEST(presence_and_lookups_bounded_in_flight)
{
    gw_budget *b = NULL;
    for (int i = 0; i < GW_PRESENCE_INFLIGHT; i++)
        ck_assert(gw_budget_presence(&b, T0));
    ck_assert(!gw_budget_presence(&b, T0 + 10000)); /* tokens again, but all in flight */
    gw_budget_presence_done(b);
    ck_assert(gw_budget_presence(&b, T0 + 10000));
    for (int i = 0; i < GW_LOOKUPS_INFLIGHT; i++)
        ck_assert(gw_budget_lookup(&b, T0));
    ck_assert(!gw_budget_lookup(&b, T0));
    gw_budget_lookup_done(b);
    ck_assert(gw_budget_lookup(&b, T0));
    gw_budget_lookup_done(NULL); /* NULL-safe: a connection that never needed a budget */
    gw_budget_presence_done(NULL);
    gw_budget_free(&b);
}
END_TEST

START_TEST(lookup_left_only_looks_and_a_charge_is_a_bounded_debt)
{
    gw_budget *b = NULL;
    for (int i = 0; i < 100; i++)
        ck_assert(gw_budget_lookup_left(&b, T0)); /* takes nothing */
    for (int i = 0; i < 2 * GW_LOOKUP_RATE; i++)
        gw_budget_lookup_charge(b, T0);
    ck_assert(!gw_budget_lookup_left(&b, T0));
    for (int i = 0; i < 1000; i++) /* posts answered not_member after the tokens ran out */
        gw_budget_lookup_charge(b, T0);
    /* the debt stops at a burst's worth: paid back after two seconds of refill, not 100 */
    ck_assert(!gw_budget_lookup_left(&b, T0 + 2000));
    ck_assert(gw_budget_lookup_left(&b, T0 + 2100));
    gw_budget_free(&b);
}
END_TEST

START_TEST(waiting_and_status_chains_are_counted)
{
    gw_budget *b = NULL;
    for (int i = 0; i < GW_WAITING_MAX; i++)
        ck_assert(gw_budget_waiting(&b));
    ck_assert(!gw_budget_waiting(&b));
    gw_budget_waiting_done(b);
    ck_assert(gw_budget_waiting(&b));
    for (int i = 0; i < GW_STATUS_CHAINS; i++)
        ck_assert(gw_budget_status_start(&b));
    ck_assert(!gw_budget_status_start(&b));
    gw_budget_status_done(b);
    ck_assert(gw_budget_status_start(&b));
    for (int i = 0; i < 2 * GW_STATUS_POLL_RATE; i++)
        ck_assert(gw_budget_status_poll(&b, T0));
    ck_assert(!gw_budget_status_poll(&b, T0));
    gw_budget_free(&b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_budget");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, bucket_bursts_twice_the_rate_then_refills);
    tcase_add_test(tc, typing_once_a_conversation_a_second_and_a_rate_in_all);
    tcase_add_test(tc, presence_and_lookups_bounded_in_flight);
    tcase_add_test(tc, lookup_left_only_looks_and_a_charge_is_a_bounded_debt);
    tcase_add_test(tc, waiting_and_status_chains_are_counted);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
