/* NATS helpers: subjects are built or refused whole, and parsed back (credentials in URLs:
 * test_chat_redact.c). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat_nats.h"
#include "unit_run.h"

START_TEST(subjects)
{
    char buf[64];
    ck_assert(chat_subject_in(buf, sizeof buf, 3, "conv-1"));
    ck_assert_str_eq(buf, "chat.in.3.conv-1");
    ck_assert(chat_subject_deliver_gateway(buf, sizeof buf, "gateway-1"));
    ck_assert_str_eq(buf, "chat.deliver.g.gateway-1");
    ck_assert(chat_subject_route(buf, sizeof buf, "gateway-1"));
    ck_assert_str_eq(buf, "chat.route.gateway-1");
    ck_assert_str_eq(chat_subject_route_parse("chat.route.gateway-1"), "gateway-1");
    ck_assert_ptr_null(chat_subject_route_parse("chat.routes.x"));
    ck_assert(chat_subject_event(buf, sizeof buf, "c"));
    ck_assert_str_eq(buf, "chat.evt.c");
    char small[12];
    ck_assert(!chat_subject_deliver_gateway(small, sizeof small, "gateway-1"));
}
END_TEST

START_TEST(more_subjects)
{
    char buf[64];
    ck_assert(chat_subject_in_backend(buf, sizeof buf, 0, "c"));
    ck_assert_str_eq(buf, "chat.in.0.c.backend");
    ck_assert(chat_subject_typing(buf, sizeof buf, "c"));
    ck_assert_str_eq(buf, "chat.typing.c");
    ck_assert(chat_subject_members(buf, sizeof buf, "conv-1"));
    ck_assert_str_eq(buf, "chat.members.conv-1");
    ck_assert(chat_subject_in_partition(buf, sizeof buf, 17));
    ck_assert_str_eq(buf, "chat.in.17.>");
    ck_assert(chat_subject_bulk(buf, sizeof buf, 4, "c"));
    ck_assert_str_eq(buf, "chat.bulk.4.c");
    ck_assert(chat_subject_bulk_partition(buf, sizeof buf, 17));
    ck_assert_str_eq(buf, "chat.bulk.17.*");
    ck_assert(chat_subject_api(buf, sizeof buf, "gw.post_status"));
    ck_assert_str_eq(buf, "chat.api.v1.gw.post_status");
    ck_assert(chat_subject_js_next(buf, sizeof buf, CHAT_STREAM_IN, "ingest-3-7"));
    ck_assert_str_eq(buf, "$JS.API.CONSUMER.MSG.NEXT.CHAT_IN.ingest-3-7");
    ck_assert(chat_subject_js_info(buf, sizeof buf, CHAT_STREAM_EVENTS, "notify"));
    ck_assert_str_eq(buf, "$JS.API.CONSUMER.INFO.CHAT_EVENTS.notify");
    char small[20];
    ck_assert(!chat_subject_members(small, sizeof small, "conv-0123456789"));
    ck_assert(!chat_subject_js_next(small, sizeof small, "S", "c"));
}
END_TEST

/* JetStream ack subjects, v1 and v2, as the ingest's and the notify role's pulls see them. */
START_TEST(js_ack_subjects)
{
    chat_js_ack a;
    ck_assert(chat_js_ack_parse("$JS.ACK.CHAT_IN.ingest-3-7.1.17.12.1795832157506000000.4", &a));
    ck_assert_uint_eq(a.delivered, 1);
    ck_assert_int_eq(a.ts_ns, 1795832157506000000LL);
    ck_assert_int_eq(a.pending, 4);
    ck_assert(chat_js_ack_parse("$JS.ACK.CHAT_EVENTS.chat-notify-events.3.17.12.1795832157506000000.4", &a));
    ck_assert_uint_eq(a.delivered, 3);
    /* v2: domain and account hash after ACK, a random token at the end */
    ck_assert(chat_js_ack_parse("$JS.ACK.hub.ACCHASH.CHAT_IN.ingest-0-1.2.5.5.1795832157506000001.9.xyz", &a));
    ck_assert_uint_eq(a.delivered, 2);
    ck_assert_int_eq(a.ts_ns, 1795832157506000001LL);
    ck_assert_int_eq(a.pending, 9);
    chat_js_ack before = {.delivered = 7, .ts_ns = 5, .pending = 6}, b = before;
    ck_assert(!chat_js_ack_parse(NULL, &b));
    ck_assert(!chat_js_ack_parse("_INBOX.abc.1.2", &b));
    ck_assert(!chat_js_ack_parse("$JS.ACK.CHAT_IN.ingest-0-1.1.2.3", &b));       /* too few tokens */
    ck_assert(!chat_js_ack_parse("$JS.ACK.CHAT_IN.ingest-0-1.1.2.3.0.4", &b));   /* no timestamp */
    ck_assert(!chat_js_ack_parse("$JS.ACK.CHAT_EVENTS.c.x.17.12.179.4", &b));   /* delivered not a number */
    ck_assert(!chat_js_ack_parse("$JS.ACK.CHAT_EVENTS.c.0.17.12.179.4", &b));   /* delivered 0 */
    ck_assert(b.delivered == before.delivered && b.ts_ns == before.ts_ns && b.pending == before.pending);
}
END_TEST

/* A message with the given payload and Status header (NULL: none), as nats.c hands them over. */
static natsMsg *status_msg(const char *data, const char *status, const char *left)
{
    natsMsg *m = NULL;
    ck_assert_int_eq(natsMsg_Create(&m, "_INBOX.x", NULL, data, data ? (int)strlen(data) : 0), NATS_OK);
    if (status)
        ck_assert_int_eq(natsMsgHeader_Set(m, "Status", status), NATS_OK);
    if (left)
        ck_assert_int_eq(natsMsgHeader_Set(m, "Nats-Pending-Messages", left), NATS_OK);
    return m;
}

START_TEST(status_messages)
{
    ck_assert_int_eq(nats_Open(-1), NATS_OK); /* a message with headers is freed through the library */
    natsMsg *m = status_msg(NULL, "408", "7");
    ck_assert_int_eq(chat_nats_status(m), 408);
    ck_assert_int_eq(chat_js_pull_left(m), 7);
    natsMsg_Destroy(m);
    m = status_msg(NULL, "503", NULL);
    ck_assert_int_eq(chat_nats_status(m), 503);
    ck_assert_int_eq(chat_js_pull_left(m), -1);
    natsMsg_Destroy(m);
    m = status_msg("x", "404", NULL); /* a payload: an ordinary message, whatever its headers */
    ck_assert_int_eq(chat_nats_status(m), 0);
    natsMsg_Destroy(m);
    m = status_msg(NULL, NULL, NULL); /* empty but no Status: an ordinary (empty) message */
    ck_assert_int_eq(chat_nats_status(m), 0);
    natsMsg_Destroy(m);
    m = status_msg(NULL, "nonsense", NULL);
    ck_assert_int_eq(chat_nats_status(m), 0);
    natsMsg_Destroy(m);
    ck_assert_int_eq(chat_nats_status(NULL), 0);
    nats_CloseAndWait(2000);
}
END_TEST

START_TEST(parse_subjects)
{
    ck_assert_str_eq(chat_subject_typing_parse("chat.typing.conv-1"), "conv-1");
    ck_assert_str_eq(chat_subject_typing_parse("chat.typing."), "");
    ck_assert_ptr_null(chat_subject_typing_parse("chat.typin.c"));
    ck_assert_ptr_null(chat_subject_typing_parse("chat.members.c"));
    ck_assert_str_eq(chat_subject_members_parse("chat.members.c"), "c");
    ck_assert_ptr_null(chat_subject_members_parse("chat.typing.c"));

    const char *conv = NULL;
    size_t n = 0;
    bool backend = true;
    ck_assert(chat_subject_in_parse("chat.in.2.conv1", &conv, &n, &backend));
    ck_assert(n == 5 && strncmp(conv, "conv1", n) == 0 && !backend);
    ck_assert(chat_subject_in_parse("chat.in.2.conv1.backend", &conv, &n, &backend));
    ck_assert(n == 5 && strncmp(conv, "conv1", n) == 0 && backend);
    /* a bulk import's post: trusted, and only in the one form */
    backend = false;
    ck_assert(chat_subject_in_parse("chat.bulk.7.conv1", &conv, &n, &backend));
    ck_assert(n == 5 && strncmp(conv, "conv1", n) == 0 && backend);
    const char *bad[] = {"chat.in.x.c", "chat.in.2.", "chat.in..c", "chat.in.2.c.other", "chat.evt.c",
                         "chat.bulk.7.c.backend", "chat.bulk.x.c", "chat.bulk.7.", NULL};
    for (int i = 0; bad[i]; i++)
        ck_assert_msg(!chat_subject_in_parse(bad[i], &conv, &n, &backend), "parsed %s", bad[i]);
}
END_TEST

START_TEST(synced_after)
{
    ck_assert_int_eq(chat_nats_synced_after_ms(0), 1000);     /* always: a second for the check alone */
    ck_assert_int_eq(chat_nats_synced_after_ms(1000), 2500);  /* 1s: the interval, half again, a second */
    ck_assert_int_eq(chat_nats_synced_after_ms(120000), 181000);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_nats");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, subjects);
    tcase_add_test(tc, more_subjects);
    tcase_add_test(tc, parse_subjects);
    tcase_add_test(tc, js_ack_subjects);
    tcase_add_test(tc, status_messages);
    tcase_add_test(tc, synced_after);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
