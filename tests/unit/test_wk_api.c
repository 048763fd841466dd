/* The api role's pure parts: post validation, page and wait limits, conversation kinds, and the
 * wire fact that failures rely on (a status-only reply has the same bytes whatever its type). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "wk_api.h"

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
    char *body = malloc(WK_API_BODY_MAX + 1);
    memset(body, 'x', WK_API_BODY_MAX);
    body[WK_API_BODY_MAX] = '\0';
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
    char *body = malloc(WK_API_BODY_MAX + 2);
    memset(body, 'x', WK_API_BODY_MAX + 1);
    body[WK_API_BODY_MAX + 1] = '\0';
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

int main(void)
{
    Suite *s = suite_create("wk_api");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, post_accepts);
    tcase_add_test(tc, post_refuses);
    tcase_add_test(tc, limits);
    tcase_add_test(tc, conv_kinds);
    tcase_add_test(tc, status_only_reply_is_any_reply);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
