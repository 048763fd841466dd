/* The api role's pure parts: post validation, page and wait limits, conversation kinds, sync page
 * planning and continuation cursors, and the wire fact that failures rely on (a status-only reply
 * has the same bytes whatever its type). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat_post.h"
#include "wk_api.h"
#include "unit_run.h"

static Chat__V1__Post good_post(void)
{
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = "c1";
    p.cmid = "k1";
    p.sender = "bot";
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    p.body = "hello";
    return p;
}

START_TEST(post_accepts)
{
    Chat__V1__Post p = good_post();
    ck_assert_ptr_null(wk_api_post_invalid(&p));
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM;
    ck_assert_ptr_null(wk_api_post_invalid(&p));
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_UNSPECIFIED; /* counts as text */
    ck_assert_ptr_null(wk_api_post_invalid(&p));
    p.meta_json = "{\"a\":[1,2],\"b\":{}}";
    ck_assert_ptr_null(wk_api_post_invalid(&p));
    p.body = "";
    ck_assert_ptr_null(wk_api_post_invalid(&p));
    char *body = malloc(CHAT_BODY_MAX + 1);
    memset(body, 'x', CHAT_BODY_MAX);
    body[CHAT_BODY_MAX] = '\0';
    p.body = body;
    ck_assert_ptr_null(wk_api_post_invalid(&p));
    free(body);
}
END_TEST

START_TEST(post_refuses)
{
    ck_assert_ptr_nonnull(wk_api_post_invalid(NULL));
    Chat__V1__Post p = good_post();
    p.conv = "a.b";
    ck_assert_ptr_nonnull(strstr(wk_api_post_invalid(&p), "conv"));
    p = good_post();
    p.cmid = "";
    ck_assert_ptr_nonnull(strstr(wk_api_post_invalid(&p), "cmid"));
    p = good_post();
    p.sender = "a b";
    ck_assert_ptr_nonnull(strstr(wk_api_post_invalid(&p), "sender"));
    p = good_post();
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT;
    ck_assert_ptr_nonnull(strstr(wk_api_post_invalid(&p), "kind"));
    p.kind = (Chat__V1__EventKind)42;
    ck_assert_ptr_nonnull(strstr(wk_api_post_invalid(&p), "kind"));
    p = good_post();
    p.body = "\xff\xfe";
    ck_assert_ptr_nonnull(strstr(wk_api_post_invalid(&p), "UTF-8"));
    char *body = malloc(CHAT_BODY_MAX + 2);
    memset(body, 'x', CHAT_BODY_MAX + 1);
    body[CHAT_BODY_MAX + 1] = '\0';
    p.body = body;
    ck_assert_ptr_nonnull(strstr(wk_api_post_invalid(&p), "16 KiB"));
    free(body);
    const char *bad_meta[] = {"[1]", "1", "\"x\"", "{", "{\"a\":1,\"a\":2}", "null", NULL};
    for (int i = 0; bad_meta[i]; i++) {
        p = good_post();
        p.meta_json = (char *)bad_meta[i];
        const char *why = wk_api_post_invalid(&p);
        ck_assert_msg(why && strstr(why, "meta_json"), "accepted meta %s", bad_meta[i]);
    }
}
END_TEST

START_TEST(limits)
{
    ck_assert_uint_eq(wk_api_history_limit(0), 50);
    ck_assert_uint_eq(wk_api_history_limit(1), 1);
    ck_assert_uint_eq(wk_api_history_limit(100), 100);
    ck_assert_uint_eq(wk_api_history_limit(101), 100);
    ck_assert_uint_eq(wk_api_history_limit(UINT32_MAX), 100);
    ck_assert_uint_eq(wk_api_post_wait_ms(0), 5000);
    ck_assert_uint_eq(wk_api_post_wait_ms(250), 250);
    ck_assert_uint_eq(wk_api_post_wait_ms(30000), 30000);
    ck_assert_uint_eq(wk_api_post_wait_ms(30001), 30000);
}
END_TEST

START_TEST(conv_kinds)
{
    ck_assert_str_eq(wk_api_conv_kind(""), "group");
    ck_assert_str_eq(wk_api_conv_kind(NULL), "group");
    ck_assert_str_eq(wk_api_conv_kind("group"), "group");
    ck_assert_str_eq(wk_api_conv_kind("direct"), "direct");
    ck_assert_ptr_null(wk_api_conv_kind("channel"));
    ck_assert_ptr_null(wk_api_conv_kind("Group"));
}
END_TEST

/* Failures are answered with one status-only reply for every method. */
START_TEST(status_only_reply_is_any_reply)
{
    Chat__V1__Status st = CHAT__V1__STATUS__INIT;
    st.code = "not_found";
    st.message = "conversation not found";
    Chat__V1__ConvDeleteReply del = CHAT__V1__CONV_DELETE_REPLY__INIT;
    del.status = &st;
    uint8_t a[256];
    size_t na = chat__v1__conv_delete_reply__pack(&del, a);
    Chat__V1__PostReply *post = chat__v1__post_reply__unpack(NULL, na, a);
    ck_assert_ptr_nonnull(post);
    ck_assert_str_eq(post->status->code, "not_found");
    ck_assert_uint_eq(post->seq, 0);
    chat__v1__post_reply__free_unpacked(post, NULL);
    Chat__V1__HistoryReply *hist = chat__v1__history_reply__unpack(NULL, na, a);
    ck_assert_ptr_nonnull(hist);
    ck_assert_str_eq(hist->status->message, "conversation not found");
    ck_assert_uint_eq(hist->n_events, 0);
    chat__v1__history_reply__free_unpacked(hist, NULL);
    Chat__V1__MembersChangeReply *mc = chat__v1__members_change_reply__unpack(NULL, na, a);
    ck_assert_ptr_nonnull(mc);
    ck_assert_str_eq(mc->status->code, "not_found");
    chat__v1__members_change_reply__free_unpacked(mc, NULL);
}
END_TEST

START_TEST(sync_page_size)
{
    ck_assert_uint_eq(wk_api_sync_max_events(0), 500);
    ck_assert_uint_eq(wk_api_sync_max_events(1), 1);
    ck_assert_uint_eq(wk_api_sync_max_events(1000), 1000);
    ck_assert_uint_eq(wk_api_sync_max_events(1001), 1000);
    ck_assert_uint_eq(wk_api_sync_max_events(UINT32_MAX), 1000);
}
END_TEST

/* The budget goes to the ranges in order; the first ones whole, the rest nothing. */
START_TEST(sync_plan_in_order)
{
    wk_api_sync_range r[4] = {
        {.conv = "a", .after = 0, .head = 100},
        {.conv = "b", .after = 40, .head = 50},
        {.conv = "c", .after = 7, .head = 400},
        {.conv = "d", .after = 0, .head = 3},
    };
    ck_assert_uint_eq(wk_api_sync_plan(r, 4, 150), 3);
    ck_assert_uint_eq(r[0].upto, 100);
    ck_assert_uint_eq(r[1].upto, 50);
    ck_assert_uint_eq(r[2].upto, 7 + 40);
    ck_assert_uint_eq(r[3].upto, 0); /* past the budget: nothing */

    /* everything fits */
    ck_assert_uint_eq(wk_api_sync_plan(r, 4, 1000), 4);
    ck_assert_uint_eq(r[2].upto, 400);
    ck_assert_uint_eq(r[3].upto, 3);

    /* exactly the first range */
    ck_assert_uint_eq(wk_api_sync_plan(r, 4, 100), 1);
    ck_assert_uint_eq(r[0].upto, 100);
    ck_assert_uint_eq(r[1].upto, 40);

    /* a range already complete (head <= after) takes nothing and does not stop the others */
    wk_api_sync_range z[2] = {{.conv = "x", .after = 9, .head = 9}, {.conv = "y", .after = 0, .head = 2}};
    ck_assert_uint_eq(wk_api_sync_plan(z, 2, 10), 2);
    ck_assert_uint_eq(z[0].upto, 9);
    ck_assert_uint_eq(z[1].upto, 2);
    ck_assert_uint_eq(wk_api_sync_plan(z, 0, 10), 0);
}
END_TEST

/* Where each conversation continues: before the cut at its plan, at the cut where it stopped,
 * after the cut where it began. */
START_TEST(sync_settle_next)
{
    wk_api_sync_range r[3] = {
        {.conv = "a", .after = 0, .head = 10},
        {.conv = "b", .after = 5, .head = 30},
        {.conv = "c", .after = 2, .head = 4},
    };
    wk_api_sync_plan(r, 3, 20); /* a: (0,10], b: (5,15], c: nothing */
    wk_api_sync_settle(r, 3, 3, 0);
    ck_assert_uint_eq(r[0].done, 10); /* complete: not in next */
    ck_assert_uint_eq(r[1].done, 15);
    ck_assert_uint_eq(r[2].done, 2);

    wk_api_sync_settle(r, 3, 1, 8); /* bytes ran out after b's seq 8 */
    ck_assert_uint_eq(r[0].done, 10);
    ck_assert_uint_eq(r[1].done, 8);
    ck_assert_uint_eq(r[2].done, 2);

    wk_api_sync_settle(r, 3, 0, 6); /* in a, after seq 6 */
    ck_assert_uint_eq(r[0].done, 6);
    ck_assert_uint_eq(r[1].done, 5);
    ck_assert_uint_eq(r[2].done, 2);
}
END_TEST

/* The size estimate of a next cursor is the size protobuf-c packs. */
START_TEST(sync_cursor_size_matches_packing)
{
    const char *convs[] = {"a", "general", "0123456789012345678901234567890123456789012345678901234567890123"};
    uint64_t afters[] = {0, 1, 127, 128, 16383, 16384, (uint64_t)INT64_MAX};
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < 7; j++) {
            Chat__V1__SyncCursor k = CHAT__V1__SYNC_CURSOR__INIT;
            k.conv = (char *)convs[i];
            k.after = afters[j];
            Chat__V1__SyncCursor *kp = &k;
            Chat__V1__SyncReply r = CHAT__V1__SYNC_REPLY__INIT;
            r.next = &kp;
            r.n_next = 1;
            ck_assert_uint_eq(wk_api_sync_cursor_size(convs[i], afters[j]), chat__v1__sync_reply__get_packed_size(&r));
        }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wk_api");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, post_accepts);
    tcase_add_test(tc, post_refuses);
    tcase_add_test(tc, limits);
    tcase_add_test(tc, conv_kinds);
    tcase_add_test(tc, status_only_reply_is_any_reply);
    tcase_add_test(tc, sync_page_size);
    tcase_add_test(tc, sync_plan_in_order);
    tcase_add_test(tc, sync_settle_next);
    tcase_add_test(tc, sync_cursor_size_matches_packing);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
