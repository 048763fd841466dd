/* Protobuf envelopes: every field survives encode/decode; garbage is refused, not crashed on. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat.pb-c.h"
#include "unit_run.h"

START_TEST(post_round_trip)
{
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = "c1";
    p.cmid = "k1";
    p.sender = "alice";
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION;
    p.body = "héllo";
    p.meta_json = "{\"a\":1}";
    p.target = 42;
    p.emoji = "👍";
    p.reaction_on = 1;
    p.sent_ms = 1700000000123;
    p.gateway = "gw1";
    p.session = "s-9";
    size_t n = chat__v1__post__get_packed_size(&p);
    uint8_t *buf = malloc(n);
    ck_assert_uint_eq(chat__v1__post__pack(&p, buf), n);
    Chat__V1__Post *q = chat__v1__post__unpack(NULL, n, buf);
    ck_assert_ptr_nonnull(q);
    ck_assert_str_eq(q->conv, "c1");
    ck_assert_str_eq(q->cmid, "k1");
    ck_assert_str_eq(q->sender, "alice");
    ck_assert_int_eq(q->kind, CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION);
    ck_assert_str_eq(q->body, "héllo");
    ck_assert_str_eq(q->meta_json, "{\"a\":1}");
    ck_assert_uint_eq(q->target, 42);
    ck_assert_str_eq(q->emoji, "👍");
    ck_assert(q->reaction_on);
    ck_assert_int_eq(q->sent_ms, 1700000000123);
    ck_assert_str_eq(q->gateway, "gw1");
    ck_assert_str_eq(q->session, "s-9");
    chat__v1__post__free_unpacked(q, NULL);
    free(buf);
}
END_TEST

START_TEST(delivery_oneof_round_trip)
{
    Chat__V1__Event e = CHAT__V1__EVENT__INIT;
    e.conv = "c1";
    e.seq = 7;
    e.id = "01HX";
    e.cmid = "k";
    e.sender = "bob";
    e.ts_ms = 5;
    e.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    e.body = "hi";
    Chat__V1__Delivery d = CHAT__V1__DELIVERY__INIT;
    d.item_case = CHAT__V1__DELIVERY__ITEM_EVENT;
    d.event = &e;
    size_t n = chat__v1__delivery__get_packed_size(&d);
    uint8_t *buf = malloc(n);
    chat__v1__delivery__pack(&d, buf);
    Chat__V1__Delivery *q = chat__v1__delivery__unpack(NULL, n, buf);
    ck_assert_ptr_nonnull(q);
    ck_assert_int_eq(q->item_case, CHAT__V1__DELIVERY__ITEM_EVENT);
    ck_assert_uint_eq(q->event->seq, 7);
    ck_assert_str_eq(q->event->body, "hi");
    chat__v1__delivery__free_unpacked(q, NULL);
    free(buf);

    Chat__V1__MembershipEvent m = CHAT__V1__MEMBERSHIP_EVENT__INIT;
    char *added[] = {"a", "b"};
    m.conv = "c";
    m.n_added = 2;
    m.added = added;
    d.item_case = CHAT__V1__DELIVERY__ITEM_MEMBERS;
    d.members = &m;
    n = chat__v1__delivery__get_packed_size(&d);
    buf = malloc(n);
    chat__v1__delivery__pack(&d, buf);
    q = chat__v1__delivery__unpack(NULL, n, buf);
    ck_assert_int_eq(q->item_case, CHAT__V1__DELIVERY__ITEM_MEMBERS);
    ck_assert_uint_eq(q->members->n_added, 2);
    ck_assert_str_eq(q->members->added[1], "b");
    chat__v1__delivery__free_unpacked(q, NULL);
    free(buf);
}
END_TEST

START_TEST(sync_request_round_trip)
{
    Chat__V1__SyncCursor c1 = CHAT__V1__SYNC_CURSOR__INIT, c2 = CHAT__V1__SYNC_CURSOR__INIT;
    c1.conv = "a";
    c1.after = 10;
    c2.conv = "b";
    c2.after = 0;
    Chat__V1__SyncCursor *cs[] = {&c1, &c2};
    Chat__V1__SyncRequest r = CHAT__V1__SYNC_REQUEST__INIT;
    r.user = "u";
    r.n_cursors = 2;
    r.cursors = cs;
    r.max_events = 500;
    size_t n = chat__v1__sync_request__get_packed_size(&r);
    uint8_t *buf = malloc(n);
    chat__v1__sync_request__pack(&r, buf);
    Chat__V1__SyncRequest *q = chat__v1__sync_request__unpack(NULL, n, buf);
    ck_assert_uint_eq(q->n_cursors, 2);
    ck_assert_str_eq(q->cursors[0]->conv, "a");
    ck_assert_uint_eq(q->cursors[0]->after, 10);
    ck_assert_uint_eq(q->max_events, 500);
    chat__v1__sync_request__free_unpacked(q, NULL);
    free(buf);
}
END_TEST

START_TEST(garbage_is_refused)
{
    uint8_t junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01}; /* length-delimited field too long */
    ck_assert_ptr_null(chat__v1__post__unpack(NULL, sizeof junk, junk));
    uint8_t bad_wire[] = {0x0f};
    ck_assert_ptr_null(chat__v1__event__unpack(NULL, sizeof bad_wire, bad_wire));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_proto");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, post_round_trip);
    tcase_add_test(tc, delivery_oneof_round_trip);
    tcase_add_test(tc, sync_request_round_trip);
    tcase_add_test(tc, garbage_is_refused);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
