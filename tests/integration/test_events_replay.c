/* A backend replays CHAT_EVENTS, as docs/nats.md tells it to: messages posted with `chatctl send`
 * into a fresh conversation, and its membership changes, read back from the start of the stream
 * with consumers of the test's own (an ordered ephemeral one, and a durable push consumer with
 * explicit acks) filtered on chat.evt.<conv>: every event once, in seq order, each a chat.v1.Event
 * (header Chat-Type: event, Nats-Msg-Id <conv>:<seq>) with the body, sender, seq and id that the
 * post was answered with; each membership change a chat.v1.MembershipEvent (Chat-Type: members)
 * in its place among the events. Against the running stack. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "test_ops.h"
#include "test_stack.h"

#define PROG "test_events_replay"
#define QUIET_MS 1500 /* after the last expected message: nothing more may come */

static test_stack stack;

/* What the stream must hold for the conversation, in order. */
typedef struct expected {
    bool members;    /* a MembershipEvent, else an Event */
    char added[4][80];
    int nadded;
    char removed[4][80];
    int nremoved;
    /* Event */
    int64_t seq;
    char id[40], cmid[80], sender[80], body[512], meta[256];
    bool system;
} expected;

#define MAX_EXPECTED 32
static expected want[MAX_EXPECTED];
static int nwant;
static int64_t last_seq;

/* Checks a chatctl run and frees what it printed. (Run it first, into rc and text: as arguments of
 * one call, the compiler may read `text` before chatctl has set it, and the output then leaks.) */
static void chatctl_ok(const char *what, int rc, char *text)
{
    ck_assert_msg(rc == 0, "chatctl %s exited %d: %s", what, rc, text ? text : "");
    free(text);
}

static void conv_create(const char *conv, const char *u1, const char *u2)
{
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, u1, u2, NULL);
    chatctl_ok("conv create", rc, out);
    expected *e = &want[nwant++];
    memset(e, 0, sizeof *e);
    e->members = true;
    snprintf(e->added[e->nadded++], sizeof e->added[0], "%s", u1);
    snprintf(e->added[e->nadded++], sizeof e->added[0], "%s", u2);
}

static void members_change(const char *conv, const char *verb, const char *user)
{
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", verb, conv, user, NULL);
    chatctl_ok(verb, rc, out);
    expected *e = &want[nwant++];
    memset(e, 0, sizeof *e);
    e->members = true;
    if (strcmp(verb, "add") == 0)
        snprintf(e->added[e->nadded++], sizeof e->added[0], "%s", user);
    else
        snprintf(e->removed[e->nremoved++], sizeof e->removed[0], "%s", user);
}

/* chatctl send; a repeat (same cmid as an earlier send) must answer the same seq and id and add
 * nothing to the stream. */
static void post(const char *conv, const char *from, const char *cmid, const char *meta, bool system, const char *body)
{
    const char *args[12];
    int n = 0;
    args[n++] = "send";
    args[n++] = conv;
    args[n++] = "--from";
    args[n++] = from;
    if (cmid) {
        args[n++] = "--cmid";
        args[n++] = cmid;
    }
    if (meta) {
        args[n++] = "--meta";
        args[n++] = meta;
    }
    if (system)
        args[n++] = "--system";
    args[n++] = body;
    args[n] = NULL;
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, args[0], args[1], args[2], args[3], n > 4 ? args[4] : NULL,
                                n > 5 ? args[5] : NULL, n > 6 ? args[6] : NULL, n > 7 ? args[7] : NULL,
                                n > 8 ? args[8] : NULL, n > 9 ? args[9] : NULL, n > 10 ? args[10] : NULL, NULL);
    ck_assert_msg(rc == 0, "chatctl send %s --from %s %s exited %d: %s", conv, from, body, rc, out ? out : "");
    json_error_t jerr;
    json_t *j = json_loads(out, 0, &jerr);
    ck_assert_msg(j != NULL, "chatctl send printed no JSON line: %s", out);
    const char *id = test_str(j, "id"), *c = test_str(j, "cmid"), *cv = test_str(j, "conv");
    int64_t seq = test_int(j, "seq");
    ck_assert_msg(cv && strcmp(cv, conv) == 0 && id && id[0] && c && seq > 0, "chatctl send printed %s", out);
    for (int i = 0; i < nwant; i++)
        if (!want[i].members && strcmp(want[i].cmid, c) == 0) {
            /* a retry: the stored message, once */
            ck_assert_msg(seq == want[i].seq && strcmp(id, want[i].id) == 0,
                          "chatctl send with cmid %s again answered seq %lld id %s, first seq %lld id %s", c,
                          (long long)seq, id, (long long)want[i].seq, want[i].id);
            json_decref(j);
            free(out);
            return;
        }
    ck_assert_msg(seq == last_seq + 1, "chatctl send answered seq %lld after seq %lld in a fresh conversation: %s",
                  (long long)seq, (long long)last_seq, out);
    last_seq = seq;
    expected *e = &want[nwant++];
    memset(e, 0, sizeof *e);
    e->seq = seq;
    snprintf(e->id, sizeof e->id, "%s", id);
    snprintf(e->cmid, sizeof e->cmid, "%s", c);
    snprintf(e->sender, sizeof e->sender, "%s", from);
    snprintf(e->body, sizeof e->body, "%s", body);
    snprintf(e->meta, sizeof e->meta, "%s", meta ? meta : "");
    e->system = system;
    json_decref(j);
    free(out);
}

static const char *header(natsMsg *m, const char *name)
{
    const char *v = NULL;
    return natsMsgHeader_Get(m, name, &v) == NATS_OK ? v : NULL;
}

static bool same_set(char **got, size_t ngot, char want_list[][80], int nwant_list)
{
    if ((int)ngot != nwant_list)
        return false;
    for (int i = 0; i < nwant_list; i++) {
        bool found = false;
        for (size_t k = 0; k < ngot && !found; k++)
            found = strcmp(got[k], want_list[i]) == 0;
        if (!found)
            return false;
    }
    return true;
}

static const char *list_str(char **v, size_t n)
{
    static char buf[4][512];
    static int next;
    char *b = buf[next++ % 4];
    size_t o = 0;
    b[0] = '\0';
    for (size_t i = 0; i < n && o < sizeof buf[0] - 1; i++)
        o += (size_t)snprintf(b + o, sizeof buf[0] - o, "%s%s", i ? "," : "", v[i]);
    return b;
}

/* Checks message number k of the replay (consumer `who`) against want[k]. */
static void check_msg(const char *who, const char *conv, int k, natsMsg *m)
{
    char subject[128];
    snprintf(subject, sizeof subject, "chat.evt.%s", conv);
    ck_assert_msg(strcmp(natsMsg_GetSubject(m), subject) == 0, "%s: message %d on subject %s, want %s", who, k + 1,
                  natsMsg_GetSubject(m), subject);
    ck_assert_msg(k < nwant, "%s: message %d is one more than the %d expected (Chat-Type %s, Nats-Msg-Id %s)", who,
                  k + 1, nwant, header(m, "Chat-Type") ? header(m, "Chat-Type") : "(none)",
                  header(m, "Nats-Msg-Id") ? header(m, "Nats-Msg-Id") : "(none)");
    const expected *e = &want[k];
    const char *type = header(m, "Chat-Type");
    const uint8_t *data = (const uint8_t *)natsMsg_GetData(m);
    size_t len = (size_t)natsMsg_GetDataLength(m);
    if (e->members) {
        ck_assert_msg(type && strcmp(type, "members") == 0,
                      "%s: message %d has Chat-Type %s (Nats-Msg-Id %s), want the membership change %s%s%s%s", who,
                      k + 1, type ? type : "(none)", header(m, "Nats-Msg-Id") ? header(m, "Nats-Msg-Id") : "(none)",
                      e->nadded ? "added " : "", e->nadded ? e->added[0] : "", e->nremoved ? "removed " : "",
                      e->nremoved ? e->removed[0] : "");
        Chat__V1__MembershipEvent *me = chat__v1__membership_event__unpack(NULL, len, data);
        ck_assert_msg(me != NULL, "%s: message %d (Chat-Type members) is not a chat.v1.MembershipEvent", who, k + 1);
        ck_assert_msg(strcmp(me->conv, conv) == 0, "%s: membership event %d of conv %s", who, k + 1, me->conv);
        ck_assert_msg(same_set(me->added, me->n_added, (char(*)[80])e->added, e->nadded) &&
                          same_set(me->removed, me->n_removed, (char(*)[80])e->removed, e->nremoved),
                      "%s: membership event %d: added [%s] removed [%s]; want added %d user(s) starting %s, removed "
                      "%d user(s) %s",
                      who, k + 1, list_str(me->added, me->n_added), list_str(me->removed, me->n_removed), e->nadded,
                      e->nadded ? e->added[0] : "", e->nremoved, e->nremoved ? e->removed[0] : "");
        ck_assert_msg(!me->conversation_deleted, "%s: membership event %d says the conversation was deleted", who,
                      k + 1);
        int64_t now_ms = (int64_t)time(NULL) * 1000;
        ck_assert_msg(me->ts_ms > now_ms - 600000 && me->ts_ms < now_ms + 60000,
                      "%s: membership event %d ts_ms %lld is not around now", who, k + 1, (long long)me->ts_ms);
        chat__v1__membership_event__free_unpacked(me, NULL);
        return;
    }
    ck_assert_msg(type && strcmp(type, "event") == 0,
                  "%s: message %d has Chat-Type %s, want event (seq %lld, cmid %s); Nats-Msg-Id %s", who, k + 1,
                  type ? type : "(none)", (long long)e->seq, e->cmid,
                  header(m, "Nats-Msg-Id") ? header(m, "Nats-Msg-Id") : "(none)");
    char msgid[160];
    snprintf(msgid, sizeof msgid, "%s:%lld", conv, (long long)e->seq);
    const char *got_id = header(m, "Nats-Msg-Id");
    ck_assert_msg(got_id && strcmp(got_id, msgid) == 0, "%s: message %d has Nats-Msg-Id %s, want %s", who, k + 1,
                  got_id ? got_id : "(none)", msgid);
    Chat__V1__Event *ev = chat__v1__event__unpack(NULL, len, data);
    ck_assert_msg(ev != NULL, "%s: message %d (Chat-Type event) is not a chat.v1.Event", who, k + 1);
    ck_assert_msg((int64_t)ev->seq == e->seq,
                  "%s: message %d is seq %llu (cmid %s), want seq %lld (cmid %s): out of order, missing or repeated",
                  who, k + 1, (unsigned long long)ev->seq, ev->cmid, (long long)e->seq, e->cmid);
    ck_assert_msg(strcmp(ev->conv, conv) == 0, "%s: seq %lld: conv %s", who, (long long)e->seq, ev->conv);
    ck_assert_msg(strcmp(ev->id, e->id) == 0, "%s: seq %lld: id %s, chatctl send answered %s", who, (long long)e->seq,
                  ev->id, e->id);
    ck_assert_msg(strcmp(ev->cmid, e->cmid) == 0, "%s: seq %lld: cmid %s, want %s", who, (long long)e->seq, ev->cmid,
                  e->cmid);
    ck_assert_msg(strcmp(ev->sender, e->sender) == 0, "%s: seq %lld: sender %s, want %s", who, (long long)e->seq,
                  ev->sender, e->sender);
    ck_assert_msg(strcmp(ev->body, e->body) == 0, "%s: seq %lld: body \"%s\", want \"%s\"", who, (long long)e->seq,
                  ev->body, e->body);
    Chat__V1__EventKind kind = e->system ? CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM : CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    ck_assert_msg(ev->kind == kind, "%s: seq %lld: kind %d, want %d", who, (long long)e->seq, (int)ev->kind, (int)kind);
    if (e->meta[0]) {
        json_t *a = json_loads(ev->meta_json, 0, NULL), *b = json_loads(e->meta, 0, NULL);
        ck_assert_msg(a && json_equal(a, b), "%s: seq %lld: meta_json %s, want %s", who, (long long)e->seq,
                      ev->meta_json, e->meta);
        json_decref(a);
        json_decref(b);
    } else {
        ck_assert_msg(ev->meta_json[0] == '\0', "%s: seq %lld: meta_json %s, want none", who, (long long)e->seq,
                      ev->meta_json);
    }
    int64_t now_ms = (int64_t)time(NULL) * 1000;
    ck_assert_msg(ev->ts_ms > now_ms - 600000 && ev->ts_ms < now_ms + 60000, "%s: seq %lld: ts_ms %lld is not around now",
                  who, (long long)e->seq, (long long)ev->ts_ms);
    ck_assert_msg(ev->committed_ms >= ev->ts_ms - 1000, "%s: seq %lld: committed_ms %lld before ts_ms %lld", who,
                  (long long)e->seq, (long long)ev->committed_ms, (long long)ev->ts_ms);
    chat__v1__event__free_unpacked(ev, NULL);
}

/* Reads the whole replay from sub: every expected message in order, then nothing for QUIET_MS.
 * ack: acknowledge each message (durable consumer with explicit acks). */
static void read_replay(const char *who, const char *conv, natsSubscription *sub, bool ack)
{
    int64_t t0 = test_mono_ms();
    for (int k = 0; k < nwant; k++) {
        natsMsg *m = NULL;
        natsStatus s = natsSubscription_NextMsg(&m, sub, 10000);
        ck_assert_msg(s == NATS_OK, "%s: message %d of %d did not come within 10 s: %s", who, k + 1, nwant,
                      natsStatus_GetText(s));
        check_msg(who, conv, k, m);
        if (ack) {
            natsStatus as = natsMsg_AckSync(m, NULL, NULL);
            ck_assert_msg(as == NATS_OK, "%s: ack of message %d: %s", who, k + 1, natsStatus_GetText(as));
        }
        natsMsg_Destroy(m);
    }
    int64_t t_all = test_mono_ms() - t0;
    natsMsg *m = NULL;
    natsStatus s = natsSubscription_NextMsg(&m, sub, QUIET_MS);
    if (s == NATS_OK) {
        /* one more than expected: a repeat, or something of another kind */
        check_msg(who, conv, nwant, m);
        natsMsg_Destroy(m);
    }
    ck_assert_msg(s == NATS_TIMEOUT, "%s: after the %d expected messages: %s", who, nwant, natsStatus_GetText(s));
    printf(PROG ": %s: %d messages replayed in order in %lld ms, nothing more within %d ms\n", who, nwant,
           (long long)t_all, QUIET_MS);
    fflush(stdout);
}

START_TEST(replay_from_the_start)
{
    char conv[80], alice[80], bob[80], carol[80], bot[80], retry_cmid[80];
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("carol", carol, sizeof carol);
    test_stack_unique_id("bot", bot, sizeof bot);
    test_stack_unique_id("retry", retry_cmid, sizeof retry_cmid);

    /* the history of the conversation, as a backend makes it */
    conv_create(conv, alice, bob);
    post(conv, alice, NULL, NULL, false, "hello from alice");
    post(conv, bob, NULL, NULL, false, "hi alice, ünïcødé 😀 \"quoted\" back\\slash");
    post(conv, alice, NULL, "{\"k\":1,\"nested\":{\"a\":[1,2]}}", false, "with meta");
    members_change(conv, "add", carol);
    post(conv, bot, retry_cmid, NULL, true, "deploy v2.3 is live");
    post(conv, bot, retry_cmid, NULL, true, "deploy v2.3 is live"); /* a retry: stored and streamed once */
    post(conv, carol, NULL, NULL, false, "carol joined the talk");
    post(conv, bob, NULL, NULL, false, "bob says goodbye");
    members_change(conv, "remove", bob);
    post(conv, alice, NULL, NULL, false, "after bob left");
    post(conv, carol, NULL, NULL, false, "the last one");
    ck_assert_int_eq(last_seq, 8);
    ck_assert_int_eq(nwant, 11);

    natsConnection *nc = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, stack.cfg.nats_url);
    ck_assert_msg(s == NATS_OK, "connect to %s: %s", stack.cfg.nats_url, natsStatus_GetText(s));
    jsCtx *js = NULL;
    s = natsConnection_JetStream(&js, nc, NULL);
    ck_assert_msg(s == NATS_OK, "JetStream context: %s", natsStatus_GetText(s));
    char subject[128];
    snprintf(subject, sizeof subject, "chat.evt.%s", conv);

    /* 1. an ordered consumer (ephemeral, flow control and heartbeats inside the library) */
    {
        natsSubscription *sub = test_events_reader(js, subject);
        read_replay("ordered consumer", conv, sub, false);
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }

    /* 2. a durable push consumer of the backend's own, explicit acks, from the start */
    {
        char durable[96];
        test_stack_unique_id("replay", durable, sizeof durable);
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = "CHAT_EVENTS";
        so.ManualAck = true;
        so.Config.Durable = durable;
        so.Config.DeliverPolicy = js_DeliverAll;
        so.Config.AckPolicy = js_AckExplicit;
        so.Config.AckWait = 30LL * 1000000000LL;
        natsSubscription *sub = NULL;
        jsErrCode jerr = 0;
        s = js_SubscribeSync(&sub, js, subject, NULL, &so, &jerr);
        ck_assert_msg(s == NATS_OK, "durable consumer %s on CHAT_EVENTS filtered %s: %s (jerr %d)", durable, subject,
                      natsStatus_GetText(s), (int)jerr);
        read_replay("durable consumer", conv, sub, true);
        /* every message acked: the consumer has nothing pending */
        jsConsumerInfo *ci = NULL;
        s = js_GetConsumerInfo(&ci, js, "CHAT_EVENTS", durable, NULL, &jerr);
        ck_assert_msg(s == NATS_OK, "consumer info of %s: %s", durable, natsStatus_GetText(s));
        ck_assert_msg(ci->NumAckPending == 0 && ci->NumPending == 0 && ci->Delivered.Consumer == (uint64_t)nwant,
                      "durable consumer %s after the replay: %lld ack pending, %llu pending, %llu delivered (want 0, "
                      "0, %d)",
                      durable, (long long)ci->NumAckPending, (unsigned long long)ci->NumPending,
                      (unsigned long long)ci->Delivered.Consumer, nwant);
        jsConsumerInfo_Destroy(ci);
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
        js_DeleteConsumer(js, "CHAT_EVENTS", durable, NULL, NULL); /* gone already when Unsubscribe removed it */
    }

    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    Suite *s = suite_create("events_replay");
    TCase *tc = tcase_create("replay");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, replay_from_the_start);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    test_stack_free(&stack);
    nats_Close();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
