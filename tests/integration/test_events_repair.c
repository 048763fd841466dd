/* CHAT_EVENTS is written off the ack path and repaired from PostgreSQL (docs/architecture.md,
 * "Ingest"): with CHAT_EVENTS refusing every event (its subjects updated so that chat.evt.> is
 * not captured), messages sent over WebSocket are still acked to the sender and delivered to the
 * other member at once; once the stream takes events again, every one of them is in CHAT_EVENTS
 * within a few seconds, exactly once, in seq order. Against the running stack; the stream's
 * configuration is put back however the test ends. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "test_ops.h"
#include "test_stack.h"

#define PROG "test_events_repair"
#define N_MESSAGES 20
#define ACK_MS 2000      /* each send is acked, and delivered to the other member, within this */
#define REPAIRED_MS 8000 /* after the stream takes events again, all are in it within this */
#define QUIET_MS 1500    /* after the last expected event: nothing more may come */

static test_stack stack;

/* A counter of the stack's worker (chat_ingest_events_*). */
static double worker_metric(const char *key)
{
    const char *listen = getenv("CHAT_WORKER_LISTEN");
    ck_assert_msg(listen != NULL, "CHAT_WORKER_LISTEN is not set");
    char why[300];
    json_t *m = test_metrics_scrape(listen, why, sizeof why);
    ck_assert_msg(m != NULL, "worker metrics: %s", why);
    double v = test_metric(m, key);
    json_decref(m);
    return v;
}

/* The CHAT_EVENTS subjects the test sets while the stream must refuse events, and the real ones. */
static const char *const off_subjects[] = {"chat.evt-off.>"};
static const char *const on_subjects[] = {"chat.evt.>"};

/* Sets CHAT_EVENTS' subjects (the rest of its configuration as it is). */
static natsStatus set_event_subjects(jsCtx *js, const char *const *subjects, jsErrCode *jerr)
{
    jsStreamInfo *si = NULL;
    natsStatus s = js_GetStreamInfo(&si, js, "CHAT_EVENTS", NULL, jerr);
    if (s != NATS_OK)
        return s;
    jsStreamConfig *sc = si->Config;
    const char **saved = sc->Subjects;
    int saved_len = sc->SubjectsLen;
    sc->Subjects = (const char **)subjects;
    sc->SubjectsLen = 1;
    jsStreamInfo *updated = NULL;
    s = js_UpdateStream(&updated, js, sc, NULL, jerr);
    sc->Subjects = saved;
    sc->SubjectsLen = saved_len;
    jsStreamInfo_Destroy(updated);
    jsStreamInfo_Destroy(si);
    return s;
}

/* Puts CHAT_EVENTS back (used on every way out of the test, in its own connection). */
static void restore_stream(void)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsErrCode jerr = 0;
    if (natsConnection_ConnectTo(&nc, stack.cfg.nats_url) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK)
        set_event_subjects(js, on_subjects, &jerr);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static ws_client *connect_user(const char *user)
{
    ws_client *ws = NULL;
    json_t *hello = NULL;
    char why[256];
    chat_status s = test_stack_connect(&stack, user, 5000, &ws, &hello, why, sizeof why);
    ck_assert_msg(s == CHAT_OK, "connect %s: %s", user, why);
    json_decref(hello);
    return ws;
}

/* Waits for the frame of `type` about cmid on ws: its seq. */
static int64_t await_frame(ws_client *ws, const char *who, const char *type, const char *cmid, int64_t deadline_ms)
{
    for (;;) {
        json_t *f = NULL;
        chat_status s = test_recv_by(ws, deadline_ms, &f);
        ck_assert_msg(s == CHAT_OK,
                      "%s: no %s for cmid %s within %d ms of the send (%s): CHAT_EVENTS refusing must not "
                      "hold acks or deliveries back",
                      who, type, cmid, ACK_MS, chat_status_str(s));
        const char *t = test_str(f, "type"), *c = test_str(f, "cmid");
        if (t && strcmp(t, type) == 0 && c && strcmp(c, cmid) == 0) {
            int64_t seq = test_int(f, "seq");
            json_decref(f);
            return seq;
        }
        json_decref(f);
    }
}

START_TEST(events_refused_then_repaired)
{
    char conv[80], alice[80], bob[80];
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, alice, bob, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create exited %d: %s", rc, out ? out : "");
    free(out);
    ws_client *wa = connect_user(alice), *wb = connect_user(bob);

    natsConnection *nc = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, stack.cfg.nats_url);
    ck_assert_msg(s == NATS_OK, "connect to %s: %s", stack.cfg.nats_url, natsStatus_GetText(s));
    jsCtx *js = NULL;
    ck_assert(natsConnection_JetStream(&js, nc, NULL) == NATS_OK);

    double unconfirmed0 = worker_metric("chat_ingest_events_unconfirmed_total");
    double republished0 = worker_metric("chat_ingest_events_republished_total");

    /* 1. CHAT_EVENTS refuses: nothing captures chat.evt.> */
    jsErrCode jerr = 0;
    s = set_event_subjects(js, off_subjects, &jerr);
    ck_assert_msg(s == NATS_OK, "update CHAT_EVENTS' subjects: %s (jerr %d)", natsStatus_GetText(s), (int)jerr);

    /* 2. every send is acked and delivered at once, one after the other */
    char cmids[N_MESSAGES][80];
    int64_t seqs[N_MESSAGES], slowest = 0;
    for (int i = 0; i < N_MESSAGES; i++) {
        test_stack_unique_id("m", cmids[i], sizeof cmids[i]);
        char body[64];
        snprintf(body, sizeof body, "while CHAT_EVENTS refuses %d", i + 1);
        json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cmids[i], "body", body);
        int64_t t0 = test_mono_ms();
        ck_assert(ws_client_send_json(wa, f) == CHAT_OK);
        json_decref(f);
        seqs[i] = await_frame(wa, alice, "ack", cmids[i], t0 + ACK_MS);
        int64_t seq_b = await_frame(wb, bob, "msg", cmids[i], t0 + ACK_MS);
        ck_assert_msg(seqs[i] == i + 1 && seq_b == seqs[i], "send %d: acked seq %lld, delivered seq %lld", i + 1,
                      (long long)seqs[i], (long long)seq_b);
        if (test_mono_ms() - t0 > slowest)
            slowest = test_mono_ms() - t0;
    }
    printf(PROG ": %d sends acked and delivered while CHAT_EVENTS refused, the slowest in %lld ms\n", N_MESSAGES,
           (long long)slowest);

    /* the worker finds its publishes refused at its next confirmation (about a second); the
     * stream is put back after that, so that every one of the events was refused (one published
     * after the stream is back would be there before the repaired ones: docs/nats.md) */
    for (int64_t end = test_mono_ms() + 5000; worker_metric("chat_ingest_events_unconfirmed_total") <= unconfirmed0;) {
        ck_assert_msg(test_mono_ms() < end, "chat_ingest_events_unconfirmed_total did not grow within 5 s of the "
                                            "refused publishes");
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }

    /* 3. the stream takes events again: the worker's repair republishes them from PostgreSQL */
    s = set_event_subjects(js, on_subjects, &jerr);
    ck_assert_msg(s == NATS_OK, "restore CHAT_EVENTS' subjects: %s (jerr %d)", natsStatus_GetText(s), (int)jerr);
    int64_t restored = test_mono_ms();

    char subject[128];
    snprintf(subject, sizeof subject, "chat.evt.%s", conv);
    int got = 0;
    int64_t last_at = 0;
    while (got < N_MESSAGES) {
        int64_t left = restored + REPAIRED_MS - test_mono_ms();
        ck_assert_msg(left > 0, "only %d of the %d events in CHAT_EVENTS %d ms after it took events again", got,
                      N_MESSAGES, REPAIRED_MS);
        /* an ordered consumer from the start of the conversation's events, read again each round */
        jsSubOptions so;
        jsSubOptions_Init(&so);
        so.Stream = "CHAT_EVENTS";
        so.Ordered = true;
        so.Config.DeliverPolicy = js_DeliverAll;
        natsSubscription *sub = NULL;
        s = js_SubscribeSync(&sub, js, subject, NULL, &so, &jerr);
        ck_assert_msg(s == NATS_OK, "ordered consumer on %s: %s (jerr %d)", subject, natsStatus_GetText(s), (int)jerr);
        int n = 0;
        natsMsg *m = NULL;
        while (natsSubscription_NextMsg(&m, sub, n < N_MESSAGES ? 300 : QUIET_MS) == NATS_OK) {
            const char *type = NULL;
            natsMsgHeader_Get(m, "Chat-Type", &type);
            if (type && strcmp(type, "event") == 0) {
                Chat__V1__Event *ev = chat__v1__event__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                              (const uint8_t *)natsMsg_GetData(m));
                ck_assert_msg(ev != NULL, "event %d is not a chat.v1.Event", n + 1);
                ck_assert_msg(n < N_MESSAGES, "CHAT_EVENTS holds event seq %llu after the %d expected: a repeat",
                              (unsigned long long)ev->seq, N_MESSAGES);
                ck_assert_msg((int64_t)ev->seq == seqs[n] && strcmp(ev->cmid, cmids[n]) == 0,
                              "event %d of %s in CHAT_EVENTS is seq %llu cmid %s, want seq %lld cmid %s: out of order, "
                              "missing or repeated",
                              n + 1, conv, (unsigned long long)ev->seq, ev->cmid, (long long)seqs[n], cmids[n]);
                ck_assert_msg(strcmp(ev->sender, alice) == 0, "event seq %llu: sender %s, want %s",
                              (unsigned long long)ev->seq, ev->sender, alice);
                chat__v1__event__free_unpacked(ev, NULL);
                n++;
                if (n == N_MESSAGES)
                    last_at = test_mono_ms();
            }
            natsMsg_Destroy(m);
        }
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
        got = n;
    }
    double republished = worker_metric("chat_ingest_events_republished_total") - republished0;
    ck_assert_msg(republished >= N_MESSAGES, "chat_ingest_events_republished_total grew by %g, want at least %d",
                  republished, N_MESSAGES);
    printf(PROG ": all %d events in CHAT_EVENTS, once each and in seq order, %lld ms after it took events again"
                " (%g republished)\n",
           N_MESSAGES, (long long)(last_at - restored), republished);
    fflush(stdout);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    ws_client_destroy(wa);
    ws_client_destroy(wb);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    Suite *s = suite_create("events_repair");
    TCase *tc = tcase_create("repair");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, events_refused_then_repaired);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    restore_stream(); /* whatever happened in the test's process */
    test_stack_free(&stack);
    nats_Close();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
