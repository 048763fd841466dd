/* Security: no one posts, or reads, as someone they are not (issue 19, findings 1 and 2). A
 * non-member who resends a member's cmid, inside the broker's duplicate window (through the
 * gateway) or after it (a Post published with another Nats-Msg-Id), gets not_member and nothing
 * else, and no member receives its text; a member resending gets the stored message; another
 * member's cmid is not acked as one's own. A deleted message's text is served by no sync, history
 * or chatctl history, to a member added later or a device syncing from 0, edits included.
 * Against the running stack. Main thread of the test program (or its Check child). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "test_check.h"
#include "test_stack.h"

static test_stack stack;

/* ------------------------------------------------------------------ helpers */

/* chatctl conv VERB conv user... must succeed. */
static void chatctl_conv(const char *verb, const char *conv, const char *u1, const char *u2)
{
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", verb, conv, u1, u2, NULL);
    ck_assert_msg(rc == 0, "chatctl conv %s %s exited %d: %s", verb, conv, rc, out ? out : "");
    free(out);
}

static void create_conversation(const char *conv, const char *u1, const char *u2)
{
    chatctl_conv("create", conv, u1, u2);
}

static void send_frame(ws_client *c, json_t *f)
{
    chat_status s = ws_client_send_json(c, f);
    ck_assert_msg(s == CHAT_OK, "send %s: %s (%s)", test_json(f), chat_status_str(s), ws_client_error(c));
    json_decref(f);
}

static void send_text(ws_client *c, const char *conv, const char *cmid, const char *body)
{
    send_frame(c, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cmid, "body", body));
}

/* Everything c receives for ms, in an array (the caller decrefs). */
static json_t *drain(ws_client *c, int ms)
{
    json_t *all = json_array();
    int64_t deadline = test_mono_ms() + ms;
    for (;;) {
        json_t *f = NULL;
        chat_status st = test_recv_by(c, deadline, &f);
        if (st == CHAT_ERR_TIMEOUT)
            return all;
        ck_assert_msg(st == CHAT_OK, "receiving: %s (%s)", chat_status_str(st), ws_client_error(c));
        json_array_append_new(all, f);
    }
}

/* Receives on c until an ack or an error with ref cmid comes (within 15 s); every frame received
 * is appended to log. Returns the frame (a borrowed reference into log). */
static json_t *answer_to(ws_client *c, const char *cmid, json_t *log)
{
    int64_t deadline = test_mono_ms() + 15000;
    for (;;) {
        json_t *f = NULL;
        chat_status st = test_recv_by(c, deadline, &f);
        ck_assert_msg(st == CHAT_OK, "no ack or error for cmid %s: %s; received %s", cmid, chat_status_str(st),
                      test_json(log));
        json_array_append_new(log, f);
        const char *type = test_str(f, "type");
        const char *ref = strcmp(type ? type : "", "ack") == 0 ? test_str(f, "cmid") : test_str(f, "ref");
        if (type && (strcmp(type, "ack") == 0 || strcmp(type, "error") == 0) && ref && strcmp(ref, cmid) == 0)
            return f;
    }
}

/* True when text occurs in the compact JSON of any frame of frames. */
static bool mentions(const json_t *frames, const char *text)
{
    char *all = json_dumps(frames, JSON_COMPACT);
    bool found = all && strstr(all, text) != NULL;
    free(all);
    return found;
}

/* The refusal a non-member must get: an error not_member for cmid, with no seq, no id, nothing of
 * the stored message; and nothing else came (no ack, no msg). */
static void check_refused_only(const json_t *frames, const char *cmid, const char *who)
{
    size_t i;
    json_t *f;
    int errors = 0;
    json_array_foreach(frames, i, f)
    {
        const char *type = test_str(f, "type");
        ck_assert_msg(type && strcmp(type, "error") == 0, "%s got a frame other than its refusal: %s (all: %s)", who,
                      test_json(f), test_json(frames));
        ck_assert_msg(strcmp(test_str(f, "code") ? test_str(f, "code") : "", "not_member") == 0 &&
                          strcmp(test_str(f, "ref") ? test_str(f, "ref") : "", cmid) == 0,
                      "%s: want error not_member for %s, got %s", who, cmid, test_json(f));
        ck_assert_msg(json_object_get(f, "seq") == NULL && json_object_get(f, "id") == NULL,
                      "%s's refusal carries a seq or id: %s", who, test_json(f));
        errors++;
    }
    ck_assert_msg(errors == 1, "%s: want exactly one not_member refusal, got %s", who, test_json(frames));
}

/* The outsider m's answer to its post cmid, and whatever else comes within settle_ms: exactly one
 * not_member refusal and nothing else. */
static void expect_outsider_refused(ws_client *m, const char *cmid, int settle_ms)
{
    json_t *got = json_array();
    answer_to(m, cmid, got);
    json_t *rest = drain(m, settle_ms);
    json_array_extend(got, rest);
    json_decref(rest);
    check_refused_only(got, cmid, "the outsider");
    json_decref(got);
}

/* Neither member (a within a_ms, b within 500 ms) receives anything that mentions text. */
static void expect_members_never_saw(ws_client *a, int a_ms, ws_client *b, const char *text)
{
    json_t *seen_a = drain(a, a_ms), *seen_b = drain(b, 500);
    ck_assert_msg(!mentions(seen_a, text) && !mentions(seen_b, text),
                  "a member received the outsider's text: alice %s, bob %s", test_json(seen_a), test_json(seen_b));
    json_decref(seen_a);
    json_decref(seen_b);
}

/* chatctl history of conv (the trusted backend form) as an array of frames. */
static json_t *chatctl_history(const char *conv)
{
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "history", conv, "--limit", "100", NULL);
    ck_assert_msg(rc == 0, "chatctl history %s exited %d: %s", conv, rc, out ? out : "");
    json_t *lines = json_array();
    char *save = NULL;
    for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        json_t *j = json_loads(line, 0, NULL);
        ck_assert_msg(j != NULL, "chatctl history printed a line that is not JSON: %s", line);
        json_array_append_new(lines, j);
    }
    free(out);
    return lines;
}

/* The frame of seq in frames, or NULL (borrowed). */
static json_t *by_seq(const json_t *frames, int64_t seq)
{
    size_t i;
    json_t *f;
    json_array_foreach(frames, i, f)
    {
        if (test_int(f, "seq") == seq)
            return f;
    }
    return NULL;
}

/* The stored message seq of conv still is what its sender sent. */
static void check_stored(const char *conv, int64_t seq, const char *from, const char *body)
{
    json_t *h = chatctl_history(conv);
    json_t *m = by_seq(h, seq);
    ck_assert_msg(m && strcmp(test_str(m, "from") ? test_str(m, "from") : "", from) == 0 &&
                      strcmp(test_str(m, "body") ? test_str(m, "body") : "", body) == 0,
                  "stored message %lld of %s changed: want from %s body \"%s\", history has %s", (long long)seq, conv,
                  from, body, test_json(h));
    json_decref(h);
}

/* A connection to the stack's NATS (the backend's view). */
static natsConnection *nats_open(void)
{
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, stack.cfg.nats_url);
    ck_assert_msg(s == NATS_OK, "NATS %s: %s", stack.cfg.nats_url, natsStatus_GetText(s));
    return nc;
}

/* chat.api.v1.post.status as user: the reply's status code ("" when stored), seq and id. */
static void post_status(const char *conv, const char *cmid, const char *user, char *code, size_t codesz, uint64_t *seq,
                        char *id, size_t idsz)
{
    natsConnection *nc = nats_open();
    Chat__V1__PostStatusRequest q = CHAT__V1__POST_STATUS_REQUEST__INIT;
    q.conv = (char *)conv;
    q.cmid = (char *)cmid;
    q.user = (char *)user;
    uint8_t buf[512];
    size_t len = chat__v1__post_status_request__pack(&q, buf);
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, nc, CHAT_API_PREFIX "post.status", buf, (int)len, 5000);
    ck_assert_msg(s == NATS_OK, "post.status: %s", natsStatus_GetText(s));
    Chat__V1__PostReply *r = chat__v1__post_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(reply),
                                                          (const uint8_t *)natsMsg_GetData(reply));
    ck_assert_msg(r != NULL, "post.status: undecodable reply");
    snprintf(code, codesz, "%s", r->status ? r->status->code : "");
    *seq = r->seq;
    snprintf(id, idsz, "%s", r->id ? r->id : "");
    chat__v1__post_reply__free_unpacked(r, NULL);
    natsMsg_Destroy(reply);
    natsConnection_Destroy(nc);
}

/* Publishes a Post to CHAT_IN as a gateway would for session (the hello's "session", whose prefix
 * up to the last '-' is the gateway's id), under a Nats-Msg-Id of its own: what reaches the ingest
 * once the broker's duplicate window (10 minutes) has passed. */
static void publish_post_as(const char *session, const char *conv, const char *cmid, const char *sender,
                            const char *body)
{
    char gateway[128];
    snprintf(gateway, sizeof gateway, "%s", session);
    char *dash = strrchr(gateway, '-');
    ck_assert_msg(dash != NULL, "session %s names no gateway", session);
    *dash = '\0';
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = (char *)conv;
    p.cmid = (char *)cmid;
    p.sender = (char *)sender;
    p.kind = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    p.body = (char *)body;
    p.meta_json = "";
    p.emoji = "";
    p.gateway = gateway;
    p.session = (char *)session;
    uint8_t buf[4096];
    size_t len = chat__v1__post__pack(&p, buf);
    char subject[160], msgid[200];
    chat_subject_in(subject, sizeof subject, (int)chat_partition_of(conv, (uint32_t)stack.cfg.partitions), conv);
    snprintf(msgid, sizeof msgid, "%s/%s/after-window-%lld", conv, cmid, (long long)test_mono_ms());
    natsConnection *nc = nats_open();
    jsCtx *js = NULL;
    ck_assert_msg(natsConnection_JetStream(&js, nc, NULL) == NATS_OK, "JetStream context");
    natsMsg *m = NULL;
    natsMsg_Create(&m, subject, NULL, (const char *)buf, (int)len);
    natsMsgHeader_Set(m, "Nats-Msg-Id", msgid);
    jsErrCode jerr = 0;
    natsStatus s = js_PublishMsg(NULL, js, m, NULL, &jerr);
    ck_assert_msg(s == NATS_OK, "publish to %s: %s (%d)", subject, natsStatus_GetText(s), (int)jerr);
    natsMsg_Destroy(m);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

/* Connects user and returns its session name (from hello) in session. */
static ws_client *connect_with_session(const char *user, char *session, size_t sessionsz)
{
    ws_client *c = NULL;
    json_t *hello = NULL;
    char why[600];
    ck_assert_msg(test_stack_connect(&stack, user, 10000, &c, &hello, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_str(hello, "session") != NULL, "hello without session: %s", test_json(hello));
    snprintf(session, sessionsz, "%s", test_str(hello, "session"));
    json_decref(hello);
    return c;
}

/* A conversation of alice and bob with one message of alice's (cmid, body) acked: its seq. */
static int64_t setup_message(const char *conv, const char *alice, const char *bob, ws_client *a, const char *cmid,
                             const char *body, char *id, size_t idsz)
{
    create_conversation(conv, alice, bob);
    send_text(a, conv, cmid, body);
    json_t *log = json_array();
    json_t *ack = answer_to(a, cmid, log);
    ck_assert_msg(strcmp(test_str(ack, "type"), "ack") == 0, "alice's send was not acked: %s", test_json(ack));
    int64_t seq = test_int(ack, "seq");
    snprintf(id, idsz, "%s", test_str(ack, "id"));
    json_decref(log);
    return seq;
}

/* ------------------------------------------------------------------ finding 1: posting as another */

/* Inside the broker's duplicate window: the outsider's send of alice's cmid goes through the
 * gateway, which the broker calls a duplicate, and post.status answers it. */
START_TEST(outsider_resend_inside_window_learns_nothing)
{
    char alice[80], bob[80], mallory[80], conv[80], cmid[80], id[64];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("mallory", mallory, sizeof mallory);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("k", cmid, sizeof cmid);
    ws_client *a = test_connect_user(&stack, alice);
    int64_t seq = setup_message(conv, alice, bob, a, cmid, "alice's own words", id, sizeof id);
    ws_client *b = test_connect_user(&stack, bob), *m = test_connect_user(&stack, mallory);

    send_text(m, conv, cmid, "MALLORY-INSIDE-WINDOW");
    expect_outsider_refused(m, cmid, 1500);

    expect_members_never_saw(a, 500, b, "MALLORY");
    check_stored(conv, seq, alice, "alice's own words");

    /* post.status asked as the outsider: not_member and nothing else */
    char code[64], got_id[64];
    uint64_t got_seq = 0;
    post_status(conv, cmid, mallory, code, sizeof code, &got_seq, got_id, sizeof got_id);
    ck_assert_msg(strcmp(code, "not_member") == 0 && got_seq == 0 && got_id[0] == '\0',
                  "post.status as a non-member: code \"%s\" seq %llu id \"%s\", want not_member only", code,
                  (unsigned long long)got_seq, got_id);
    /* as bob, a member who did not send it: not his message */
    post_status(conv, cmid, bob, code, sizeof code, &got_seq, got_id, sizeof got_id);
    ck_assert_msg(strcmp(code, "bad_request") == 0 && got_seq == 0 && got_id[0] == '\0',
                  "post.status as another member: code \"%s\" seq %llu id \"%s\", want bad_request only", code,
                  (unsigned long long)got_seq, got_id);
    /* as alice: her message */
    post_status(conv, cmid, alice, code, sizeof code, &got_seq, got_id, sizeof got_id);
    ck_assert_msg(code[0] == '\0' && (int64_t)got_seq == seq && strcmp(got_id, id) == 0,
                  "post.status as the sender: code \"%s\" seq %llu id %s, want seq %lld id %s", code,
                  (unsigned long long)got_seq, got_id, (long long)seq, id);
    ws_client_destroy(a);
    ws_client_destroy(b);
    ws_client_destroy(m);
}
END_TEST

/* After the window: the same cmid reaches the ingest again (another Nats-Msg-Id). */
START_TEST(outsider_resend_after_window_learns_nothing)
{
    char alice[80], bob[80], mallory[80], conv[80], cmid[80], id[64], session[128];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("mallory", mallory, sizeof mallory);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("k", cmid, sizeof cmid);
    ws_client *a = test_connect_user(&stack, alice);
    int64_t seq = setup_message(conv, alice, bob, a, cmid, "alice's own words", id, sizeof id);
    ws_client *b = test_connect_user(&stack, bob), *m = connect_with_session(mallory, session, sizeof session);

    publish_post_as(session, conv, cmid, mallory, "MALLORY-AFTER-WINDOW");
    /* the members first (the ingest answers within a second; the outsider's frames wait in its
     * socket meanwhile) */
    expect_members_never_saw(a, 2000, b, "MALLORY");
    check_stored(conv, seq, alice, "alice's own words");

    expect_outsider_refused(m, cmid, 1000);
    ws_client_destroy(a);
    ws_client_destroy(b);
    ws_client_destroy(m);
}
END_TEST

/* The sender's resend is acked with the stored seq and id, inside the window and after it, and
 * what the members receive is the stored message, whatever the resend carried; another member
 * who sends the same cmid is not acked with alice's message. */
START_TEST(member_resend_answered_from_the_stored_message)
{
    char alice[80], bob[80], conv[80], cmid[80], id[64], session[128];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("k", cmid, sizeof cmid);
    ws_client *a = connect_with_session(alice, session, sizeof session);
    int64_t seq = setup_message(conv, alice, bob, a, cmid, "alice's own words", id, sizeof id);
    ws_client *b = test_connect_user(&stack, bob);

    /* inside the window, through the gateway */
    send_text(a, conv, cmid, "alice's own words");
    json_t *log = json_array();
    json_t *ack = answer_to(a, cmid, log);
    ck_assert_msg(strcmp(test_str(ack, "type"), "ack") == 0 && test_int(ack, "seq") == seq &&
                      strcmp(test_str(ack, "id"), id) == 0,
                  "alice's resend: %s, want an ack with seq %lld id %s", test_json(ack), (long long)seq, id);
    json_decref(log);

    /* after the window, with another body: the ack and the fanout carry the stored message */
    publish_post_as(session, conv, cmid, alice, "REWRITTEN-BY-RESEND");
    log = json_array();
    ack = answer_to(a, cmid, log);
    ck_assert_msg(strcmp(test_str(ack, "type"), "ack") == 0 && test_int(ack, "seq") == seq &&
                      strcmp(test_str(ack, "id"), id) == 0,
                  "alice's resend after the window: %s, want an ack with seq %lld id %s", test_json(ack),
                  (long long)seq, id);
    json_decref(log);
    json_t *seen_b = drain(b, 1500);
    json_t *again = by_seq(seen_b, seq);
    ck_assert_msg(!mentions(seen_b, "REWRITTEN"), "bob received the resend's text as message %lld: %s", (long long)seq,
                  test_json(seen_b));
    ck_assert_msg(again == NULL || strcmp(test_str(again, "body"), "alice's own words") == 0,
                  "bob received message %lld as %s", (long long)seq, test_json(again));
    json_decref(seen_b);
    check_stored(conv, seq, alice, "alice's own words");

    /* bob, a member, sends the same cmid: an error, neither an ack nor alice's text */
    send_text(b, conv, cmid, "BOB-SAME-CMID");
    log = json_array();
    json_t *answer = answer_to(b, cmid, log);
    ck_assert_msg(strcmp(test_str(answer, "type"), "error") == 0 &&
                      strcmp(test_str(answer, "code") ? test_str(answer, "code") : "", "bad_request") == 0,
                  "bob's send of alice's cmid: %s, want error bad_request", test_json(answer));
    json_t *rest = drain(b, 1000);
    json_array_extend(log, rest);
    json_decref(rest);
    size_t i;
    json_t *f;
    json_array_foreach(log, i, f)
    {
        ck_assert_msg(strcmp(test_str(f, "type") ? test_str(f, "type") : "", "ack") != 0,
                      "bob was acked for alice's cmid: %s", test_json(log));
    }
    json_decref(log);
    json_t *seen_a = drain(a, 500);
    ck_assert_msg(!mentions(seen_a, "BOB-SAME-CMID"), "alice received bob's refused text: %s", test_json(seen_a));
    json_decref(seen_a);
    check_stored(conv, seq, alice, "alice's own words");
    ws_client_destroy(a);
    ws_client_destroy(b);
}
END_TEST

/* ------------------------------------------------------------------ finding 2: deleted text */

/* sync from 0 over c for conv: the msg frames until synced (the caller decrefs). */
static json_t *sync_from_zero(ws_client *c, const char *conv)
{
    json_t *cursors = json_object();
    json_object_set_new(cursors, conv, json_integer(0));
    send_frame(c, json_pack("{s:s, s:o}", "type", "sync", "cursors", cursors));
    json_t *skipped = json_array(), *synced = NULL;
    chat_status st = test_recv_type(c, "synced", 15000, &synced, skipped);
    ck_assert_msg(st == CHAT_OK, "no synced: %s; received %s", chat_status_str(st), test_json(skipped));
    json_decref(synced);
    json_t *msgs = json_array();
    size_t i;
    json_t *f;
    json_array_foreach(skipped, i, f)
    {
        if (strcmp(test_str(f, "type") ? test_str(f, "type") : "", "msg") == 0 &&
            strcmp(test_str(f, "conv") ? test_str(f, "conv") : "", conv) == 0)
            json_array_append(msgs, f);
    }
    json_decref(skipped);
    return msgs;
}

/* history over c for conv: its messages (the caller decrefs). */
static json_t *history_of(ws_client *c, const char *conv)
{
    send_frame(c, json_pack("{s:s, s:s, s:i, s:s}", "type", "history", "conv", conv, "limit", 100, "ref", "h1"));
    json_t *h = NULL;
    chat_status st = test_recv_type(c, "history", 15000, &h, NULL);
    ck_assert_msg(st == CHAT_OK, "no history answer: %s", chat_status_str(st));
    json_t *msgs = json_incref(json_object_get(h, "messages"));
    json_decref(h);
    ck_assert_msg(json_is_array(msgs), "history without messages");
    return msgs;
}

/* The deleted message (seq text_seq) and its edit (edit_seq) are tombstones in frames, as history
 * draws them: deleted, body "", no meta, sender and kind kept; nothing says "DOOMED". */
static void check_tombstones(const json_t *frames, int64_t text_seq, int64_t edit_seq, const char *alice,
                             const char *what)
{
    ck_assert_msg(!mentions(frames, "DOOMED"), "%s serves the deleted text: %s", what, test_json(frames));
    const int64_t seqs[] = {text_seq, edit_seq};
    const char *kinds[] = {"text", "edit"};
    for (int k = 0; k < 2; k++) {
        json_t *f = by_seq(frames, seqs[k]);
        ck_assert_msg(f != NULL, "%s has no message %lld: %s", what, (long long)seqs[k], test_json(frames));
        ck_assert_msg(json_is_true(json_object_get(f, "deleted")) && strcmp(test_str(f, "body"), "") == 0 &&
                          json_object_get(f, "meta") == NULL && strcmp(test_str(f, "kind"), kinds[k]) == 0 &&
                          strcmp(test_str(f, "from"), alice) == 0,
                      "%s shows message %lld as %s, want a %s tombstone from %s", what, (long long)seqs[k],
                      test_json(f), kinds[k], alice);
    }
}

START_TEST(deleted_text_served_by_no_sync_or_history)
{
    char alice[80], bob[80], carol[80], conv[80], k1[80], k2[80], k3[80], k4[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("carol", carol, sizeof carol);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("k", k1, sizeof k1);
    test_stack_unique_id("k", k2, sizeof k2);
    test_stack_unique_id("k", k3, sizeof k3);
    test_stack_unique_id("k", k4, sizeof k4);
    ws_client *a = test_connect_user(&stack, alice);
    create_conversation(conv, alice, bob);
    json_t *log = json_array();
    send_frame(a, json_pack("{s:s, s:s, s:s, s:s, s:{s:s}}", "type", "send", "conv", conv, "cmid", k1, "body",
                            "DOOMED original text", "meta", "note", "DOOMED meta"));
    json_t *ack = answer_to(a, k1, log);
    ck_assert_msg(strcmp(test_str(ack, "type"), "ack") == 0, "the send was not acked: %s", test_json(ack));
    int64_t text_seq = test_int(ack, "seq");
    send_frame(a, json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "edit", "conv", conv, "cmid", k2, "target",
                            (json_int_t)text_seq, "body", "DOOMED edited text"));
    ack = answer_to(a, k2, log);
    ck_assert_msg(strcmp(test_str(ack, "type"), "ack") == 0, "the edit was not acked: %s", test_json(ack));
    int64_t edit_seq = test_int(ack, "seq");
    send_frame(a, json_pack("{s:s, s:s, s:s, s:I}", "type", "delete", "conv", conv, "cmid", k3, "target",
                            (json_int_t)text_seq));
    ack = answer_to(a, k3, log);
    ck_assert_msg(strcmp(test_str(ack, "type"), "ack") == 0, "the delete was not acked: %s", test_json(ack));
    send_text(a, conv, k4, "kept text");
    ack = answer_to(a, k4, log);
    ck_assert_msg(strcmp(test_str(ack, "type"), "ack") == 0, "the last send was not acked: %s", test_json(ack));
    json_decref(log);

    /* carol, added after the delete */
    chatctl_conv("add", conv, carol, NULL);
    ws_client *c = test_connect_user(&stack, carol);
    json_t *synced = sync_from_zero(c, conv);
    ck_assert_msg(json_array_size(synced) == 4 && mentions(synced, "kept text"), "carol's sync: %s, want 4 events",
                  test_json(synced));
    check_tombstones(synced, text_seq, edit_seq, alice, "carol's sync");
    json_t *history = history_of(c, conv);
    check_tombstones(history, text_seq, edit_seq, alice, "carol's history");
    /* sync and history answer the same shape */
    for (int64_t s = text_seq; s <= edit_seq; s++)
        ck_assert_msg(json_equal(by_seq(synced, s), by_seq(history, s)),
                      "sync and history differ on message %lld: %s and %s", (long long)s, test_json(by_seq(synced, s)),
                      test_json(by_seq(history, s)));
    json_decref(synced);
    json_decref(history);

    /* a new device of alice's syncing from 0 */
    ws_client *a2 = test_connect_user(&stack, alice);
    synced = sync_from_zero(a2, conv);
    check_tombstones(synced, text_seq, edit_seq, alice, "a new device's sync");
    json_decref(synced);

    /* the trusted backend's form */
    json_t *h = chatctl_history(conv);
    check_tombstones(h, text_seq, edit_seq, alice, "chatctl history");
    json_decref(h);
    ws_client_destroy(a);
    ws_client_destroy(a2);
    ws_client_destroy(c);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_sec_identity");
    return test_run_core(&stack, "sec_identity", 120, NULL, NULL, NULL,
                         (const TTest *const[]){outsider_resend_inside_window_learns_nothing,
                                                outsider_resend_after_window_learns_nothing,
                                                member_resend_answered_from_the_stored_message,
                                                deleted_text_served_by_no_sync_or_history, NULL});
}
