/* Per-connection budgets: the token bucket, the typing limiter (one a conversation a second, a
 * rate in all), the presence, lookup, waiting and post.status bounds, and a lookup's debt. */
#include <check.h>
#include <stdbool.h>
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

/* ---- the typing limiter, against a model that remembers every conversation ---- */

/* What the limiter should answer, with no bound on the conversations it remembers: a conversation
 * passed less than GW_TYPING_CONV_MS ago is refused, otherwise one token of the typing bucket. */
typedef struct typing_model {
    int64_t last_ms[64]; /* last pass per conversation, 0: never */
    double tokens;
    int64_t refill_ms;
} typing_model;

static bool typing_model_take(typing_model *m, int conv, int64_t now_ms)
{
    if (m->last_ms[conv] && now_ms - m->last_ms[conv] < GW_TYPING_CONV_MS)
        return false;
    if (!gw_bucket_take(&m->tokens, &m->refill_ms, GW_TYPING_RATE, now_ms))
        return false;
    m->last_ms[conv] = now_ms;
    return true;
}

START_TEST(typing_remembers_every_conversation_of_the_last_second)
{
    /* A connection typing into many conversations, fast and slow: GW_TYPING_CONVS slots are
     * enough to decide as if every conversation were remembered (at 2 a second, burst 4, four
     * slots are the least that do: with three this fails). */
    uint32_t rnd = 20;
    for (int run = 0; run < 20; run++) {
        gw_budget *b = NULL;
        typing_model m = {0};
        int64_t now = T0;
        int passed = 0;
        int nconv = 2 + run * 3; /* 2 to 59 conversations */
        for (int i = 0; i < 5000; i++) {
            rnd = rnd * 1103515245u + 12345u;
            int conv = (int)((rnd >> 8) % (uint32_t)nconv);
            now += (rnd >> 20) % (run % 2 ? 400 : 60); /* frames 0-60 ms or 0-400 ms apart */
            if ((rnd >> 12) % 40 == 0)
                now += 2500; /* a pause: the bucket refills, the next frames come as a burst */
            char name[16];
            snprintf(name, sizeof name, "conv-%d", conv);
            bool want = typing_model_take(&m, conv, now);
            ck_assert_msg(gw_budget_typing(&b, name, now) == want, "run %d frame %d (%s at %lld)", run, i, name,
                          (long long)now);
            passed += want;
        }
        ck_assert_int_gt(passed, 0);
        gw_budget_free(&b);
    }
}
END_TEST

START_TEST(typing_alternating_between_two_conversations)
{
    /* a frame every 100 ms, alternating: each conversation passes once a second */
    gw_budget *b = NULL;
    int passed[2] = {0, 0};
    for (int i = 0; i < 50; i++) {
        int64_t now = T0 + 100 * i;
        if (gw_budget_typing(&b, i % 2 ? "b" : "a", now)) {
            passed[i % 2]++;
            ck_assert_int_eq((now - T0 - 100 * (i % 2)) % GW_TYPING_CONV_MS, 0);
        }
    }
    ck_assert_int_eq(passed[0], 5);
    ck_assert_int_eq(passed[1], 5);
    gw_budget_free(&b);
}
END_TEST

START_TEST(typing_refused_frames_leave_no_mark)
{
    gw_budget *b = NULL;
    ck_assert(gw_budget_typing(&b, "a", T0));
    ck_assert(!gw_budget_typing(&b, "a", T0 + 500)); /* does not restart a's second */
    ck_assert(gw_budget_typing(&b, "a", T0 + GW_TYPING_CONV_MS));
    for (int i = 0; i < 2 * GW_TYPING_RATE; i++) { /* spend the bucket */
        char conv[8];
        snprintf(conv, sizeof conv, "s%d", i);
        gw_budget_typing(&b, conv, T0 + GW_TYPING_CONV_MS);
    }
    ck_assert(!gw_budget_typing(&b, "x", T0 + GW_TYPING_CONV_MS)); /* no token */
    /* a token back (2 a second): x was not marked as typed in by the refused frame */
    ck_assert(gw_budget_typing(&b, "x", T0 + GW_TYPING_CONV_MS + 1000 / GW_TYPING_RATE));
    /* the overall rate: 2 a second once the burst is spent, whatever the conversation */
    int passed = 0;
    for (int i = 0; i < 100; i++) {
        char conv[8];
        snprintf(conv, sizeof conv, "n%d", i);
        passed += gw_budget_typing(&b, conv, T0 + 5000 + 100 * i);
    }
    ck_assert_int_ge(passed, 10 * GW_TYPING_RATE);
    ck_assert_int_le(passed, 10 * GW_TYPING_RATE + 2 * GW_TYPING_RATE);
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
    TCase *typing = tcase_create("typing");
    tcase_add_test(typing, typing_remembers_every_conversation_of_the_last_second);
    tcase_add_test(typing, typing_alternating_between_two_conversations);
    tcase_add_test(typing, typing_refused_frames_leave_no_mark);
    suite_add_tcase(s, typing);
    return unit_run(s);
}
