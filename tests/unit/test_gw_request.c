/* The gateway's requests in flight (gateway/gw_request.c): a reply reaches its request once, an
 * unknown or late one is ignored, the timer retries or times out as each request's callbacks say,
 * ids are never used twice. The table never reads a message or the server: tokens stand for both. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "gw_request.h"
#include "unit_run.h"

static char srv_token, msg_token;
#define SRV ((gw_server *)(void *)&srv_token)
#define MSG ((natsMsg *)(void *)&msg_token)

/* What the callbacks saw. */
static struct seen {
    int replies, timeouts, retries;
    uint64_t last_id;
    gw_server *last_srv;
    natsMsg *last_msg;
    int64_t now;           /* the test's clock, for callbacks that re-arm */
    int keep_replies;      /* answers on_reply keeps the request for */
    int resend_on_timeout; /* timeouts on_reply sends again after (new deadline a second on) */
    int retries_left;      /* on_retry: times it waits again (retry_at a second on) */
} seen;

static void reset(void)
{
    seen = (struct seen){0};
}

static bool on_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    seen.last_id = req->id;
    seen.last_srv = srv;
    seen.last_msg = msg;
    if (msg == NULL) {
        seen.timeouts++;
        if (seen.resend_on_timeout > 0) {
            seen.resend_on_timeout--;
            req->attempts++;
            req->deadline_ms = seen.now + 1000;
            return true;
        }
        return false;
    }
    seen.replies++;
    if (seen.keep_replies > 0) {
        seen.keep_replies--;
        return true;
    }
    return false;
}

static bool on_retry(gw_server *srv, gw_request *req)
{
    (void)srv;
    seen.retries++;
    req->attempts++;
    if (seen.retries_left > 0) {
        seen.retries_left--;
        req->retry_at_ms = seen.now + 1000;
        return true;
    }
    return false;
}

static void id_text(char *buf, size_t size, uint64_t id)
{
    snprintf(buf, size, "%" PRIu64, id);
}

START_TEST(ids_count_up_and_are_never_used_twice)
{
    gw_request_table *t = gw_request_table_create();
    gw_request *a = gw_request_table_add(t, on_reply, 7, 1000);
    gw_request *b = gw_request_table_add(t, on_reply, 7, 1000);
    gw_request *c = gw_request_table_add(t, on_reply, 8, 1000);
    ck_assert_uint_eq(a->id, 1);
    ck_assert_uint_eq(b->id, 2);
    ck_assert_uint_eq(c->id, 3);
    ck_assert_uint_eq(c->session, 8);
    ck_assert_int_eq(c->deadline_ms, 1000);
    ck_assert_uint_eq(gw_request_table_size(t), 3);
    gw_request_table_free(t, b);
    gw_request *d = gw_request_table_add(t, on_reply, 9, 1000);
    ck_assert_uint_eq(d->id, 4); /* not 2 again: a late reply to 2 must not reach d */
    ck_assert_ptr_null(gw_request_table_find(t, "2"));
    ck_assert_ptr_eq(gw_request_table_find(t, "1"), a);
    ck_assert_ptr_eq(gw_request_table_find(t, "3"), c);
    ck_assert_ptr_eq(gw_request_table_find(t, "4"), d);
    ck_assert_uint_eq(gw_request_table_size(t), 3);
    gw_request_table_destroy(t);
    gw_request_table_destroy(NULL);
}
END_TEST

START_TEST(a_reply_reaches_its_request_once)
{
    reset();
    gw_request_table *t = gw_request_table_create();
    gw_request *a = gw_request_table_add(t, on_reply, 1, 1000);
    gw_request *b = gw_request_table_add(t, on_reply, 2, 1000);
    uint64_t bid = b->id;
    char id[24];
    id_text(id, sizeof id, bid);
    ck_assert(gw_request_table_answer(t, SRV, id, MSG));
    ck_assert_int_eq(seen.replies, 1);
    ck_assert_uint_eq(seen.last_id, bid);
    ck_assert_ptr_eq(seen.last_srv, SRV);
    ck_assert_ptr_eq(seen.last_msg, MSG);
    ck_assert_uint_eq(gw_request_table_size(t), 1);
    ck_assert(!gw_request_table_answer(t, SRV, id, MSG)); /* the same reply again: nobody */
    ck_assert_int_eq(seen.replies, 1);
    ck_assert_ptr_eq(gw_request_table_find(t, "1"), a); /* the other one is untouched */
    gw_request_table_tick(t, SRV, 999);
    ck_assert_int_eq(seen.timeouts, 0);
    gw_request_table_destroy(t);
}
END_TEST

START_TEST(a_reply_callback_may_keep_its_request)
{
    reset();
    gw_request_table *t = gw_request_table_create();
    gw_request_table_add(t, on_reply, 1, 1000);
    seen.keep_replies = 1; /* a chain: the first answer leads to a second request under the same id */
    ck_assert(gw_request_table_answer(t, SRV, "1", MSG));
    ck_assert_uint_eq(gw_request_table_size(t), 1);
    ck_assert(gw_request_table_answer(t, SRV, "1", MSG));
    ck_assert_int_eq(seen.replies, 2);
    ck_assert_uint_eq(gw_request_table_size(t), 0);
    ck_assert(!gw_request_table_answer(t, SRV, "1", MSG));
    gw_request_table_destroy(t);
}
END_TEST

START_TEST(unknown_and_late_replies_are_ignored)
{
    reset();
    gw_request_table *t = gw_request_table_create();
    gw_request_table_add(t, on_reply, 1, 1000);
    ck_assert(!gw_request_table_answer(t, SRV, "99", MSG));
    ck_assert(!gw_request_table_answer(t, SRV, "", MSG));
    ck_assert(!gw_request_table_answer(t, SRV, "x1", MSG));
    ck_assert(!gw_request_table_answer(t, SRV, "01", MSG));
    ck_assert_int_eq(seen.replies, 0);
    gw_request_table_tick(t, SRV, 1000); /* timed out */
    ck_assert_int_eq(seen.timeouts, 1);
    ck_assert_ptr_null(seen.last_msg);
    ck_assert(!gw_request_table_answer(t, SRV, "1", MSG)); /* the reply after its timeout */
    ck_assert_int_eq(seen.replies, 0);
    ck_assert_uint_eq(gw_request_table_size(t), 0);
    gw_request_table_destroy(t);
}
END_TEST

START_TEST(past_its_deadline_a_request_times_out_once)
{
    reset();
    gw_request_table *t = gw_request_table_create();
    gw_request_table_add(t, on_reply, 1, 1000);
    gw_request_table_add(t, on_reply, 1, 5000);
    gw_request_table_tick(t, SRV, 999);
    ck_assert_int_eq(seen.timeouts, 0);
    gw_request_table_tick(t, SRV, 1000);
    ck_assert_int_eq(seen.timeouts, 1);
    ck_assert_uint_eq(seen.last_id, 1);
    ck_assert_ptr_eq(seen.last_srv, SRV);
    gw_request_table_tick(t, SRV, 4999);
    ck_assert_int_eq(seen.timeouts, 1); /* not twice */
    ck_assert_uint_eq(gw_request_table_size(t), 1);
    gw_request_table_tick(t, SRV, 6000);
    ck_assert_int_eq(seen.timeouts, 2);
    ck_assert_uint_eq(seen.last_id, 2);
    ck_assert_uint_eq(gw_request_table_size(t), 0);
    gw_request_table_destroy(t);
}
END_TEST

START_TEST(a_timeout_is_sent_again_as_its_callback_says_then_expires)
{
    reset();
    gw_request_table *t = gw_request_table_create();
    gw_request *r = gw_request_table_add(t, on_reply, 1, 1000);
    seen.resend_on_timeout = 2; /* two more tries, each a second long */
    for (seen.now = 1000; seen.now <= 3000; seen.now += 500) {
        gw_request_table_tick(t, SRV, seen.now);
        ck_assert_int_eq(seen.timeouts, (int)(seen.now / 1000));
        if (seen.now < 3000)
            ck_assert_int_eq(r->attempts, seen.timeouts);
    }
    ck_assert_uint_eq(gw_request_table_size(t), 0); /* the last timeout freed it */
    gw_request_table_tick(t, SRV, 10000);
    ck_assert_int_eq(seen.timeouts, 3);
    ck_assert_int_eq(seen.replies, 0);
    gw_request_table_destroy(t);
}
END_TEST

START_TEST(a_retry_waits_for_its_time_then_asks_its_callback)
{
    reset();
    gw_request_table *t = gw_request_table_create();
    gw_request *r = gw_request_table_add(t, on_reply, 1, 1000);
    r->on_retry = on_retry;
    r->retry_at_ms = 1500;
    seen.retries_left = 1;
    seen.now = 1200;
    gw_request_table_tick(t, SRV, seen.now); /* past the deadline, but waiting for its retry */
    ck_assert_int_eq(seen.timeouts, 0);
    ck_assert_int_eq(seen.retries, 0);
    seen.now = 1500;
    gw_request_table_tick(t, SRV, seen.now);
    ck_assert_int_eq(seen.retries, 1);
    ck_assert_int_eq(r->retry_at_ms, 2500); /* it waits again, as on_retry said */
    ck_assert_uint_eq(gw_request_table_size(t), 1);
    seen.now = 2499;
    gw_request_table_tick(t, SRV, seen.now);
    ck_assert_int_eq(seen.retries, 1);
    seen.now = 2500;
    gw_request_table_tick(t, SRV, seen.now); /* on_retry says no more: freed, no timeout */
    ck_assert_int_eq(seen.retries, 2);
    ck_assert_int_eq(seen.timeouts, 0);
    ck_assert_uint_eq(gw_request_table_size(t), 0);
    gw_request_table_destroy(t);
}
END_TEST

START_TEST(a_retry_without_a_callback_frees_the_request)
{
    reset();
    gw_request_table *t = gw_request_table_create();
    gw_request *r = gw_request_table_add(t, on_reply, 1, 9000);
    r->retry_at_ms = 100;
    r->payload = malloc(16); /* freed with it */
    r->payload_len = 16;
    gw_request_table_tick(t, SRV, 100);
    ck_assert_uint_eq(gw_request_table_size(t), 0);
    ck_assert_int_eq(seen.timeouts + seen.replies + seen.retries, 0);
    gw_request_table_destroy(t);
}
END_TEST

START_TEST(many_in_flight_each_found_and_timed_out_once)
{
    reset();
    enum { N = 10000 }; /* the table has no bound; far more than admission control lets through */
    gw_request_table *t = gw_request_table_create();
    for (int i = 0; i < N; i++) {
        gw_request *r = gw_request_table_add(t, on_reply, (uint64_t)i, 1000 + i % 7);
        r->payload = malloc(8);
    }
    ck_assert_uint_eq(gw_request_table_size(t), N);
    char id[24];
    for (uint64_t i = 1; i <= N; i += 2) {
        id_text(id, sizeof id, i);
        ck_assert_uint_eq(gw_request_table_find(t, id)->id, i);
        ck_assert(gw_request_table_answer(t, SRV, id, MSG));
    }
    ck_assert_int_eq(seen.replies, N / 2);
    gw_request_table_tick(t, SRV, 2000);
    ck_assert_int_eq(seen.timeouts, N / 2);
    ck_assert_uint_eq(gw_request_table_size(t), 0);
    gw_request_table_add(t, on_reply, 0, 3000); /* the rest, freed by destroy */
    gw_request_table_destroy(t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_request");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, ids_count_up_and_are_never_used_twice);
    tcase_add_test(tc, a_reply_reaches_its_request_once);
    tcase_add_test(tc, a_reply_callback_may_keep_its_request);
    tcase_add_test(tc, unknown_and_late_replies_are_ignored);
    tcase_add_test(tc, past_its_deadline_a_request_times_out_once);
    tcase_add_test(tc, a_timeout_is_sent_again_as_its_callback_says_then_expires);
    tcase_add_test(tc, a_retry_waits_for_its_time_then_asks_its_callback);
    tcase_add_test(tc, a_retry_without_a_callback_frees_the_request);
    tcase_add_test(tc, many_in_flight_each_found_and_timed_out_once);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
