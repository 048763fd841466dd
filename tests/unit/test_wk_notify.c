/* The notify role's pure parts: the retry delays, reading JetStream ack subjects, and the JSON body
 * of a push (with and without the preview). */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "wk_notify.h"

START_TEST(backoff_doubles_up_to_a_minute)
{
    ck_assert_int_eq(wk_notify_backoff_ms(0), 1000);
    ck_assert_int_eq(wk_notify_backoff_ms(1), 1000);
    ck_assert_int_eq(wk_notify_backoff_ms(2), 1000);
    ck_assert_int_eq(wk_notify_backoff_ms(3), 2000);
    ck_assert_int_eq(wk_notify_backoff_ms(4), 4000);
    ck_assert_int_eq(wk_notify_backoff_ms(7), 32000);
    ck_assert_int_eq(wk_notify_backoff_ms(8), WK_NOTIFY_BACKOFF_MAX_MS);
    ck_assert_int_eq(wk_notify_backoff_ms(WK_NOTIFY_MAX_DELIVER), WK_NOTIFY_BACKOFF_MAX_MS);
    ck_assert_int_eq(wk_notify_backoff_ms(1000000), WK_NOTIFY_BACKOFF_MAX_MS);
}
END_TEST

START_TEST(ack_subjects)
{
    uint64_t dc = 0;
    int64_t ts = 0;
    ck_assert(wk_notify_parse_ack("$JS.ACK.CHAT_NOTIFY.notify.3.17.12.1795832157506000000.4", &dc, &ts));
    ck_assert_uint_eq(dc, 3);
    ck_assert_int_eq(ts, 1795832157506000000LL);
    /* v2: domain and account hash after ACK, a random token at the end */
    ck_assert(wk_notify_parse_ack("$JS.ACK.hub.ACCHASH.CHAT_NOTIFY.notify.1.5.5.1795832157506000001.0.xyz", &dc, &ts));
    ck_assert_uint_eq(dc, 1);
    ck_assert_int_eq(ts, 1795832157506000001LL);
    ck_assert(!wk_notify_parse_ack(NULL, &dc, &ts));
    ck_assert(!wk_notify_parse_ack("_INBOX.abc", &dc, &ts));
    ck_assert(!wk_notify_parse_ack("$JS.ACK.CHAT_NOTIFY.notify.x.17.12.179.4", &dc, &ts));
    ck_assert(!wk_notify_parse_ack("$JS.ACK.CHAT_NOTIFY.notify.0.17.12.179.4", &dc, &ts));
    ck_assert(!wk_notify_parse_ack("$JS.ACK.CHAT_NOTIFY.notify.3.17", &dc, &ts));
}
END_TEST

START_TEST(payload_with_preview)
{
    wk_push_conv convs[] = {{"general", 20, 41}, {"dm-1", 2, 7}};
    wk_push_msg newest = {"general", 41, "alice", 1795832157506, "hi \"there\" ✅"};
    char *text = wk_notify_payload("bob", convs, 2, &newest, true);
    ck_assert_ptr_nonnull(text);
    ck_assert_str_eq(text, "{\"user\":\"bob\",\"conversations\":[{\"conv\":\"general\",\"unread\":20,\"last_seq\":41},"
                           "{\"conv\":\"dm-1\",\"unread\":2,\"last_seq\":7}],\"unread_total\":22,"
                           "\"newest\":{\"conv\":\"general\",\"seq\":41,\"from\":\"alice\",\"ts\":1795832157506,"
                           "\"preview\":\"hi \\\"there\\\" ✅\"}}");
    free(text);
}
END_TEST

START_TEST(payload_without_preview)
{
    wk_push_conv convs[] = {{"general", 3, 3}};
    wk_push_msg newest = {"general", 3, "alice", 5, "secret"};
    char *text = wk_notify_payload("bob", convs, 1, &newest, false);
    ck_assert_ptr_nonnull(text);
    ck_assert_ptr_null(strstr(text, "secret"));
    ck_assert_ptr_null(strstr(text, "preview"));
    json_t *j = json_loads(text, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "newest"), "seq")), 3);
    json_decref(j);
    free(text);
    /* no newest at all */
    text = wk_notify_payload("bob", convs, 1, NULL, true);
    ck_assert_str_eq(text, "{\"user\":\"bob\",\"conversations\":[{\"conv\":\"general\",\"unread\":3,\"last_seq\":3}],"
                           "\"unread_total\":3}");
    free(text);
    /* a preview that is not UTF-8 is left out, the push is still made */
    newest.preview = "\xff\xfe";
    text = wk_notify_payload("bob", convs, 1, &newest, true);
    ck_assert_ptr_nonnull(text);
    ck_assert_ptr_null(strstr(text, "preview"));
    free(text);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wk_notify");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, backoff_doubles_up_to_a_minute);
    tcase_add_test(tc, ack_subjects);
    tcase_add_test(tc, payload_with_preview);
    tcase_add_test(tc, payload_without_preview);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
