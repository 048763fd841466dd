/* CHAT_EVENTS is written off the ack path and repaired from PostgreSQL (docs/architecture.md,
 * "Ingest"): with CHAT_EVENTS refusing every event (its subjects updated so that chat.evt.> is
 * not captured), messages sent over WebSocket are still acked to the sender and delivered to the
 * other member at once; once the stream takes events again, every one of them is in CHAT_EVENTS
 * within a few seconds, exactly once, in seq order, and the partition's cursor
 * (ingest_leases.events_upto) has moved past them. Then the same with the stack's worker
 * restarted while the stream refuses: the cursor stayed before the refused events, and the new
 * owner republishes them; and a takeover with nothing missing settles without counting a loss.
 * Against the running stack; the stream's configuration is put back, and
 * the stack's worker started again (scripts/up --no-build), however the test ends. */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "test_ops.h"
#include "test_stack.h"

#define PROG "test_events_repair"
#define N_MESSAGES 20
#define ACK_MS 2000       /* each send is acked, and delivered to the other member, within this */
#define REPAIRED_MS 15000 /* after the stream takes events again (or the worker stopped), all are in it */
#define QUIET_MS 1500     /* after the last expected event: nothing more may come */
#define EVENTS_CHECK_EVERY_MS 1500 /* the ingest confirms and checks about once a second */

static test_stack stack;

static void pause_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Whether conv's partition has a cursor at or past the newest event of conv: 1 yes, 0 no (or
 * NULL). */
static int cursor_past(const char *conv)
{
    PGconn *pg = PQconnectdb(stack.cfg.pg_dsn);
    ck_assert_msg(PQstatus(pg) == CONNECTION_OK, "PostgreSQL: %s", PQerrorMessage(pg));
    char part[16];
    snprintf(part, sizeof part, "%u", chat_partition_of(conv, (uint32_t)stack.cfg.partitions));
    const char *params[] = {part, conv};
    PGresult *r = PQexecParams(pg,
                               "SELECT coalesce(l.events_upto >= (SELECT max(created_at) FROM messages"
                               " WHERE conversation_id = $2), false) FROM ingest_leases l WHERE l.partition = $1::int",
                               2, NULL, params, NULL, NULL, 0);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "the cursor of partition %s: %s", part,
                  PQresultErrorMessage(r));
    int past = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    PQfinish(pg);
    return past;
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
                      "%s: no %s for cmid %s within %d ms of the send (%s): CHAT_EVENTS refusing must not hold acks "
                      "or deliveries back",
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

/* A conversation of two users, each connected over WebSocket, and what alice sent into it. */
typedef struct talk {
    char conv[80], alice[80], bob[80];
    ws_client *wa, *wb;
    char cmids[N_MESSAGES][80];
    int64_t seqs[N_MESSAGES];
    int n;
} talk;

static void talk_open(talk *t)
{
    memset(t, 0, sizeof *t);
    test_stack_unique_id("conv", t->conv, sizeof t->conv);
    test_stack_unique_id("alice", t->alice, sizeof t->alice);
    test_stack_unique_id("bob", t->bob, sizeof t->bob);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", t->conv, t->alice, t->bob, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create exited %d: %s", rc, out ? out : "");
    free(out);
    t->wa = connect_user(t->alice);
    t->wb = connect_user(t->bob);
}

static void talk_close(talk *t)
{
    ws_client_destroy(t->wa);
    ws_client_destroy(t->wb);
}

/* alice sends n more messages, one after the other: each is acked to her and delivered to bob
 * within ACK_MS, with the next seq. */
static void send_all(talk *t, int n)
{
    int64_t slowest = 0;
    for (int i = t->n; i < t->n + n; i++) {
        test_stack_unique_id("m", t->cmids[i], sizeof t->cmids[i]);
        char body[64];
        snprintf(body, sizeof body, "while CHAT_EVENTS refuses %d", i + 1);
        json_t *f =
            json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", t->conv, "cmid", t->cmids[i], "body", body);
        int64_t t0 = test_mono_ms();
        ck_assert(ws_client_send_json(t->wa, f) == CHAT_OK);
        json_decref(f);
        t->seqs[i] = await_frame(t->wa, t->alice, "ack", t->cmids[i], t0 + ACK_MS);
        int64_t seq_b = await_frame(t->wb, t->bob, "msg", t->cmids[i], t0 + ACK_MS);
        ck_assert_msg(t->seqs[i] == i + 1 && seq_b == t->seqs[i], "send %d: acked seq %lld, delivered seq %lld", i + 1,
                      (long long)t->seqs[i], (long long)seq_b);
        if (test_mono_ms() - t0 > slowest)
            slowest = test_mono_ms() - t0;
    }
    t->n += n;
    printf(PROG ": %d sends acked and delivered, the slowest in %lld ms\n", n, (long long)slowest);
}

/* Waits until the worker found its publishes refused at a confirmation (about a second): the
 * stream is put back after that, so that every one of the events was refused (one published
 * after the stream is back would be there before the repaired ones: docs/nats.md). */
static void await_unconfirmed(double before)
{
    for (int64_t end = test_mono_ms() + 5000; test_worker_metric("chat_ingest_events_unconfirmed_total") <= before;) {
        ck_assert_msg(test_mono_ms() < end,
                      "chat_ingest_events_unconfirmed_total did not grow within 5 s of the refused publishes");
        pause_ms(100);
    }
}

/* Reads conv's events from CHAT_EVENTS until all of t's are there (within REPAIRED_MS of
 * `restored`), once each, in seq order, and nothing more for QUIET_MS. Returns when the last came
 * (test_mono_ms()). */
static int64_t await_stream(jsCtx *js, const talk *t, int64_t restored)
{
    char subject[128];
    snprintf(subject, sizeof subject, "chat.evt.%s", t->conv);
    int got = 0;
    int64_t last_at = 0;
    while (got < t->n) {
        int64_t left = restored + REPAIRED_MS - test_mono_ms();
        ck_assert_msg(left > 0, "only %d of the %d events in CHAT_EVENTS %d ms after it took events again", got, t->n,
                      REPAIRED_MS);
        /* an ordered consumer from the start of the conversation's events, read again each round */
        natsSubscription *sub = test_events_reader(js, subject);
        int n = 0;
        natsMsg *m = NULL;
        while (natsSubscription_NextMsg(&m, sub, n < t->n ? 300 : QUIET_MS) == NATS_OK) {
            const char *type = NULL;
            natsMsgHeader_Get(m, "Chat-Type", &type);
            if (type && strcmp(type, "event") == 0) {
                Chat__V1__Event *ev = chat__v1__event__unpack(NULL, (size_t)natsMsg_GetDataLength(m),
                                                              (const uint8_t *)natsMsg_GetData(m));
                ck_assert_msg(ev != NULL, "event %d is not a chat.v1.Event", n + 1);
                ck_assert_msg(n < t->n, "CHAT_EVENTS holds event seq %llu after the %d expected: a repeat",
                              (unsigned long long)ev->seq, t->n);
                ck_assert_msg((int64_t)ev->seq == t->seqs[n] && strcmp(ev->cmid, t->cmids[n]) == 0,
                              "event %d of %s in CHAT_EVENTS is seq %llu cmid %s, want seq %lld cmid %s: out of order, "
                              "missing or repeated",
                              n + 1, t->conv, (unsigned long long)ev->seq, ev->cmid, (long long)t->seqs[n],
                              t->cmids[n]);
                ck_assert_msg(strcmp(ev->sender, t->alice) == 0, "event seq %llu: sender %s, want %s",
                              (unsigned long long)ev->seq, ev->sender, t->alice);
                chat__v1__event__free_unpacked(ev, NULL);
                n++;
                if (n == t->n)
                    last_at = test_mono_ms();
            }
            natsMsg_Destroy(m);
        }
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
        got = n;
    }
    return last_at;
}

/* Waits until conv's partition's cursor is past conv's newest event: a confirmation or a repair
 * moves it once the PubAcks came and the broker has had time to sync them (CHAT_NATS_SYNC), and
 * it has read the newest back: 3 s more than that. */
static void await_cursor(const char *conv)
{
    int64_t wait_ms = 3000 + chat_nats_synced_after_ms(stack.cfg.nats_sync_ms);
    for (int64_t end = test_mono_ms() + wait_ms; !cursor_past(conv);) {
        ck_assert_msg(test_mono_ms() < end,
                      "the cursor (ingest_leases.events_upto) of %s's partition is not past its newest event %lld ms "
                      "after the events were in CHAT_EVENTS",
                      conv, (long long)wait_ms);
        pause_ms(100);
    }
}

static natsConnection *nats_open(jsCtx **js)
{
    natsConnection *nc = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, stack.cfg.nats_url);
    ck_assert_msg(s == NATS_OK, "connect to %s: %s", stack.cfg.nats_url, natsStatus_GetText(s));
    ck_assert(natsConnection_JetStream(js, nc, NULL) == NATS_OK);
    return nc;
}

static void stream_set(jsCtx *js, const char *const *subjects)
{
    jsErrCode jerr = 0;
    natsStatus s = set_event_subjects(js, subjects, &jerr);
    ck_assert_msg(s == NATS_OK, "update CHAT_EVENTS' subjects to %s: %s (jerr %d)", subjects[0], natsStatus_GetText(s),
                  (int)jerr);
}

START_TEST(events_refused_then_repaired)
{
    talk t;
    talk_open(&t);
    jsCtx *js = NULL;
    natsConnection *nc = nats_open(&js);
    double unconfirmed0 = test_worker_metric("chat_ingest_events_unconfirmed_total");
    double republished0 = test_worker_metric("chat_ingest_events_republished_total");

    stream_set(js, off_subjects); /* CHAT_EVENTS refuses: nothing captures chat.evt.> */
    send_all(&t, N_MESSAGES);
    await_unconfirmed(unconfirmed0);
    ck_assert_msg(!cursor_past(t.conv), "the cursor of %s's partition moved past events CHAT_EVENTS refused", t.conv);

    /* the stream takes events again: the worker's repair republishes them from PostgreSQL */
    stream_set(js, on_subjects);
    int64_t restored = test_mono_ms();
    int64_t last_at = await_stream(js, &t, restored);
    await_cursor(t.conv);
    double republished = test_worker_metric("chat_ingest_events_republished_total") - republished0;
    ck_assert_msg(republished >= N_MESSAGES, "chat_ingest_events_republished_total grew by %g, want at least %d",
                  republished, N_MESSAGES);
    printf(PROG ": all %d events in CHAT_EVENTS, once each and in seq order, %lld ms after it took events again"
                " (%g republished); the cursor moved past them\n",
           N_MESSAGES, (long long)(last_at - restored), republished);
    fflush(stdout);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    talk_close(&t);
}
END_TEST

/* ------------------------------------------------------------------ the stack's worker */

/* Stops the stack's worker ($CHAT_HOME/run/worker.pid) with SIGTERM and waits for its end. */
static void stop_stack_worker(void)
{
    const char *home = getenv("CHAT_HOME");
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/run/worker.pid", home ? home : ".local");
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "no pid file %s: is the stack's worker running?", path);
    int pid = 0;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    ck_assert_msg(pid > 0 && test_pid_alive(pid) && test_comm_is(pid, "chat-worker"), "%s names no running chat-worker", path);
    ck_assert_msg(kill(pid, SIGTERM) == 0, "SIGTERM to the stack's worker (pid %d): %s", pid, strerror(errno));
    for (int64_t end = test_mono_ms() + 15000; test_pid_alive(pid) && test_comm_is(pid, "chat-worker");) {
        ck_assert_msg(test_mono_ms() < end, "the stack's worker (pid %d) did not stop within 15 s", pid);
        pause_ms(50);
    }
}

/* Starts what of the stack is missing (scripts/up --no-build; idempotent). Its set-up step
 * (`chat-worker streams`) also brings CHAT_EVENTS back to its configuration. */
static int stack_up(void)
{
    const char *src = getenv("CHAT_TEST_SOURCE_DIR"), *home = getenv("CHAT_HOME");
    if (src == NULL)
        return -1;
    char cmd[2 * PATH_MAX + 128];
    snprintf(cmd, sizeof cmd, "cd '%s' && scripts/up --no-build >>'%s/logs/test-events-repair-up.log' 2>&1", src,
             home ? home : ".local");
    fflush(NULL);
    return system(cmd);
}

START_TEST(cursor_outlives_the_worker)
{
    ck_assert_msg(getenv("CHAT_TEST_SOURCE_DIR") != NULL, "CHAT_TEST_SOURCE_DIR is not set (scripts/test sets it)");
    talk t;
    talk_open(&t);
    jsCtx *js = NULL;
    natsConnection *nc = nats_open(&js);
    /* a first message that gets into CHAT_EVENTS and moves the partition's cursor */
    send_all(&t, 1);
    await_cursor(t.conv);
    double unconfirmed0 = test_worker_metric("chat_ingest_events_unconfirmed_total");

    stream_set(js, off_subjects);
    send_all(&t, N_MESSAGES / 2 - 1);
    await_unconfirmed(unconfirmed0);
    ck_assert_msg(!cursor_past(t.conv), "the cursor of %s's partition moved past events CHAT_EVENTS refused", t.conv);

    /* the worker that knew of the refused events goes while the stream still refuses (nothing of
     * them is anywhere but in PostgreSQL and the cursor); scripts/up puts the stream back and
     * starts a new worker, which takes every lease and republishes from the cursor alone */
    stop_stack_worker();
    int64_t restored = test_mono_ms();
    int rc = stack_up();
    ck_assert_msg(rc == 0, "scripts/up --no-build exited %d", rc);
    stream_set(js, on_subjects); /* as scripts/up left it */
    int64_t last_at = await_stream(js, &t, restored);
    await_cursor(t.conv);
    printf(PROG ": a new worker republished all %d events, once each and in seq order, %lld ms after the old one "
                "stopped\n",
           t.n, (long long)(last_at - restored));
    fflush(stdout);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    talk_close(&t);
}
END_TEST

/* A worker that takes over leases whose events are all in CHAT_EVENTS republishes the newest of
 * them (its repair starts a little before each cursor) and the broker answers each as a duplicate.
 * That is no loss: within two checks after the sync interval the new worker has found nothing
 * missing, and it has stopped republishing (the trust check reads the duplicate's earlier write,
 * not the tag of a publish that wrote nothing). */
START_TEST(takeover_with_nothing_missing_settles)
{
    ck_assert_msg(getenv("CHAT_TEST_SOURCE_DIR") != NULL, "CHAT_TEST_SOURCE_DIR is not set (scripts/test sets it)");
    talk t;
    talk_open(&t);
    send_all(&t, 3);
    await_cursor(t.conv);
    stop_stack_worker();
    int rc = stack_up();
    ck_assert_msg(rc == 0, "scripts/up --no-build exited %d", rc);
    /* the new worker's own counters: its first repair republished the newest events */
    for (int64_t end = test_mono_ms() + 10000; test_worker_metric("chat_ingest_events_republished_total") < 3;) {
        ck_assert_msg(test_mono_ms() < end, "the new worker republished fewer than the 3 newest events within 10 s");
        pause_ms(100);
    }
    /* its checks of those republished writes come due after the sync interval; a takeover may
     * also take its leases in more than one round, each repaired once */
    pause_ms((int)(2 * EVENTS_CHECK_EVERY_MS + chat_nats_synced_after_ms(stack.cfg.nats_sync_ms)));
    double lost = test_worker_metric("chat_ingest_events_lost_total");
    ck_assert_msg(lost == 0, "the new worker counted %g losses of CHAT_EVENTS writes after a clean takeover", lost);
    /* and it has stopped republishing: nothing more over two more checks */
    double republished = test_worker_metric("chat_ingest_events_republished_total");
    pause_ms(2 * EVENTS_CHECK_EVERY_MS);
    double again = test_worker_metric("chat_ingest_events_republished_total") - republished;
    ck_assert_msg(again == 0, "the new worker still republishes (%g events in %d ms) after its takeover", again,
                  2 * EVENTS_CHECK_EVERY_MS);
    lost = test_worker_metric("chat_ingest_events_lost_total");
    ck_assert_msg(lost == 0, "the new worker counted %g losses of CHAT_EVENTS writes after a clean takeover", lost);
    printf(PROG ": a clean takeover republished %g events, found nothing lost, and stopped\n", republished);
    fflush(stdout);
    talk_close(&t);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    Suite *s = suite_create("events_repair");
    TCase *tc = tcase_create("repair");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, events_refused_then_repaired);
    tcase_add_test(tc, cursor_outlives_the_worker);
    tcase_add_test(tc, takeover_with_nothing_missing_settles);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    restore_stream();    /* whatever happened in the test's process */
    if (stack_up() != 0) /* the worker, if a test stopped it and failed before it was back */
        fprintf(stderr, PROG ": scripts/up --no-build failed; see $CHAT_HOME/logs/test-events-repair-up.log\n");
    test_stack_free(&stack);
    nats_Close();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
