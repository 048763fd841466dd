/* The notify role's pure parts: the retry delays, reading JetStream ack subjects, sorting the
 * messages of CHAT_EVENTS (only text and system messages can need a push), and the JSON body of a
 * push (with and without the preview). */
#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "wk_notify.h"
#include "unit_run.h"

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


/* Packs e and sorts it as a message with header Chat-Type: type. */
static wk_notify_kind classify(const char *type, const Chat__V1__Event *e, Chat__V1__Event **out)
{
    uint8_t buf[512];
    size_t len = chat__v1__event__pack(e, buf);
    return wk_notify_classify(type, buf, len, out);
}

START_TEST(classify_events)
{
    Chat__V1__Event e = CHAT__V1__EVENT__INIT;
    e.conv = "general";
    e.seq = 41;
    e.sender = "alice";
    e.ts_ms = 1795832157506;
    e.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    e.body = "see you at 10";
    Chat__V1__Event *out = NULL;
    ck_assert_int_eq(classify("event", &e, &out), WK_NOTIFY_MESSAGE);
    ck_assert_ptr_nonnull(out);
    ck_assert_str_eq(out->conv, "general");
    ck_assert_str_eq(out->sender, "alice");
    ck_assert_uint_eq(out->seq, 41);
    ck_assert_int_eq(out->ts_ms, 1795832157506);
    chat__v1__event__free_unpacked(out, NULL);
    e.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM;
    ck_assert_int_eq(classify("event", &e, &out), WK_NOTIFY_MESSAGE);
    chat__v1__event__free_unpacked(out, NULL);

    /* changes of a message and unknown kinds: acked, never pushed */
    const Chat__V1__EventKind quiet[] = {CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT, CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE,
                                         CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION,
                                         CHAT__V1__EVENT_KIND__EVENT_KIND_UNSPECIFIED};
    for (size_t i = 0; i < sizeof quiet / sizeof quiet[0]; i++) {
        e.kind = quiet[i];
        e.target = 40;
        out = (Chat__V1__Event *)&e;
        ck_assert_int_eq(classify("event", &e, &out), WK_NOTIFY_SKIP);
        ck_assert_ptr_null(out);
    }

    /* a membership change, or no Chat-Type at all: not a message, whatever the bytes */
    e.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    e.target = 0;
    ck_assert_int_eq(classify("members", &e, &out), WK_NOTIFY_SKIP);
    ck_assert_ptr_null(out);
    ck_assert_int_eq(classify(NULL, &e, &out), WK_NOTIFY_SKIP);
    Chat__V1__MembershipEvent me = CHAT__V1__MEMBERSHIP_EVENT__INIT;
    me.conv = "general";
    uint8_t buf[256];
    size_t len = chat__v1__membership_event__pack(&me, buf);
    ck_assert_int_eq(wk_notify_classify("members", buf, len, &out), WK_NOTIFY_SKIP);
    ck_assert_ptr_null(out);

    /* Chat-Type event that is no usable Event: terminated */
    ck_assert_int_eq(wk_notify_classify("event", "\xff\xff\xff", 3, &out), WK_NOTIFY_INVALID);
    ck_assert_ptr_null(out);
    e.seq = 0;
    ck_assert_int_eq(classify("event", &e, &out), WK_NOTIFY_INVALID);
    e.seq = 41;
    e.sender = "not a valid id";
    ck_assert_int_eq(classify("event", &e, &out), WK_NOTIFY_INVALID);
    ck_assert_ptr_null(out);
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
    tcase_add_test(tc, classify_events);
    tcase_add_test(tc, payload_with_preview);
    tcase_add_test(tc, payload_without_preview);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
