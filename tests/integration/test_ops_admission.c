/* Admission control (issue 7, docs/benchmarks.md "What to change" item 5; docs/operations.md
 * CHAT_WS_INFLIGHT_MAX). A gateway of the test's own with CHAT_WS_INFLIGHT_MAX=8 (the stack's
 * environment, a port of its own). A flooder writes FLOOD sends to one conversation back to back;
 * another user on another connection sends one message at a time meanwhile. Checked:
 *   - sends past the bound are refused at once: `rate_limited` with a `retry_after_ms` hint, within
 *     REFUSE_LIMIT_MS of the send (not after the 5 s request deadline, which would be `unavailable`);
 *     the gateway never holds more than the bound and its reserve in flight (chat_gateway_sends_in_flight);
 *   - the flooder sends each refused message again with the same cmid after the hint, and in the end
 *     every message is acked exactly once, stored exactly once (chatctl history, every page), with
 *     the seq of its ack, the seqs 1..N without a gap, in the order the gateway took them (the order
 *     of each message's last attempt on the connection);
 *   - the other user (nothing in flight when it sends) is never refused and every send is acked;
 *   - chat_gateway_shed_total and chat_gateway_failed_total{reason="rate_limited"} grew by the
 *     refusals the flooder saw, and chat_gateway_sends_in_flight is back to 0 at the end.
 * Idle connections (docs/operations.md CHAT_WS_PING), a gateway of its own with CHAT_WS_PING=1s:
 * a client that answers pings (and sends nothing) is pinged at least twice in IDLE_WATCH_MS and
 * stays connected; a client that reads nothing, and so never answers, is hung up (no close frame)
 * within twice the interval plus the once-a-second sweep, counted as
 * chat_gateway_disconnects_total{reason="client"}, with an idle_hangup line in the log.
 * Gateway logs: $CHAT_HOME/logs/test_ops_admission-small.log, -idle.log. */
#include <check.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_time.h"

#include "test_check.h"
#include "test_ops.h"

#define PROG "test_ops_admission"
#define say(...) (printf(__VA_ARGS__), fflush(stdout))

#define INFLIGHT_MAX 8
#define RESERVE (INFLIGHT_MAX / 4) /* a user with nothing in flight may go this far over the bound */
#define FLOOD 150
#define OTHER_SENDS 20
#define OTHER_EVERY_MS 50
#define REFUSE_LIMIT_MS 1000 /* "at once": far below the gateway's 5 s request deadline */
#define DONE_LIMIT_MS 60000

static test_stack stack;
static test_gateway gw;

static void setup(void)
{
    memset(&gw, 0, sizeof gw);
}

static void teardown(void)
{
    test_gateway_stop(&gw, 10000);
}

typedef struct msgrec {
    char cmid[96];
    int attempts;
    int64_t last_sent_ms; /* the latest attempt */
    long last_order;      /* its place among every send written on the connection */
    int64_t retry_at_ms;  /* refused: send again at this time (0: not waiting) */
    int acks;
    int64_t seq;
    char id[40];
} msgrec;

static msgrec flood[FLOOD + 1]; /* [0]: the warm-up message */
static msgrec other[OTHER_SENDS];
static long order; /* sends written on the flooder's connection */

static ws_client *connect_user(const char *user)
{
    return test_gateway_user(&stack, &gw, user);
}

static void create_conversation(const char *conv, const char *u1, const char *u2)
{
    test_conv_create(&stack, conv, u1, u2);
}

static void send_msg(ws_client *c, const char *conv, msgrec *m)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", m->cmid, "body", m->cmid);
    chat_status s = ws_client_send_json(c, f);
    json_decref(f);
    ck_assert_msg(s == CHAT_OK, "send %s: %s (%s)", m->cmid, chat_status_str(s), ws_client_error(c));
    m->attempts++;
    m->last_sent_ms = test_mono_ms();
    m->retry_at_ms = 0;
}

static msgrec *find(msgrec *set, int n, const char *cmid)
{
    for (int i = 0; cmid && i < n; i++)
        if (strcmp(set[i].cmid, cmid) == 0)
            return &set[i];
    return NULL;
}

static json_t *scrape(void)
{
    char why[600];
    json_t *m = test_metrics_scrape(gw.listen, why, sizeof why);
    ck_assert_msg(m != NULL, "gateway metrics: %s", why);
    return m;
}

static double gauge(const char *name)
{
    json_t *m = scrape();
    double v = test_metric(m, name);
    json_decref(m);
    return v;
}

/* The refusals and their latency, from the flooder's side. */
static long refusals;
static int64_t refuse_max_ms, refuse_sum_ms;

/* Everything readable on c now. flooder: acks and errors of flood[]; else of other[]. */
static void drain(ws_client *c, bool flooder)
{
    for (;;) {
        json_t *f = NULL;
        chat_status s = ws_client_recv_json(c, 0, &f);
        if (s == CHAT_ERR_TIMEOUT)
            return;
        ck_assert_msg(s == CHAT_OK, "%s: %s (%s)", flooder ? "flooder" : "other user", chat_status_str(s),
                      ws_client_error(c));
        int64_t now = test_mono_ms();
        const char *type = test_str(f, "type");
        msgrec *set = flooder ? flood : other;
        int n = flooder ? FLOOD + 1 : OTHER_SENDS;
        if (type && strcmp(type, "ack") == 0) {
            msgrec *m = find(set, n, test_str(f, "cmid"));
            ck_assert_msg(m != NULL, "ack of a cmid the test did not send: %s", test_json(f));
            ck_assert_msg(m->acks == 0, "%s acked twice (%s)", m->cmid, test_json(f));
            m->acks++;
            m->seq = test_int(f, "seq");
            snprintf(m->id, sizeof m->id, "%s", test_str(f, "id") ? test_str(f, "id") : "");
        } else if (type && strcmp(type, "error") == 0) {
            msgrec *m = find(set, n, test_str(f, "ref"));
            const char *code = test_str(f, "code");
            ck_assert_msg(m != NULL && code && strcmp(code, "rate_limited") == 0,
                          "%s: unexpected error (only rate_limited of a send is expected): %s",
                          flooder ? "flooder" : "other user", test_json(f));
            ck_assert_msg(flooder, "the other user, with nothing in flight, was refused: %s; gateway log: %s",
                          test_json(f), test_gateway_log_tail(&gw, 600));
            int64_t took = now - m->last_sent_ms;
            ck_assert_msg(took <= REFUSE_LIMIT_MS,
                          "%s was refused %lld ms after its send: not at once (limit %d ms): %s", m->cmid,
                          (long long)took, REFUSE_LIMIT_MS, test_json(f));
            json_t *hint = json_object_get(f, "retry_after_ms");
            ck_assert_msg(json_is_integer(hint) && json_integer_value(hint) >= 250 && json_integer_value(hint) <= 5000,
                          "a refusal without a retry_after_ms hint from 250 to 5000: %s", test_json(f));
            refusals++;
            refuse_sum_ms += took;
            if (took > refuse_max_ms)
                refuse_max_ms = took;
            m->retry_at_ms = now + json_integer_value(hint); /* the same cmid again, after the hint */
        } else {
            ck_assert_msg(type && strcmp(type, "msg") == 0, "unexpected frame %s", test_json(f));
        }
        json_decref(f);
    }
}

static void wait_acked(ws_client *c, bool flooder, msgrec *m)
{
    for (int64_t t0 = test_mono_ms(); m->acks == 0;) {
        ck_assert_msg(test_mono_ms() - t0 < 10000, "%s: no ack within 10 s", m->cmid);
        struct pollfd p = {.fd = ws_client_fd(c), .events = POLLIN};
        if (!ws_client_buffered(c))
            poll(&p, 1, 20);
        drain(c, flooder);
    }
}

/* chatctl history of conv, every page: cmid -> seq, checking that each cmid appears once. */
static json_t *stored(const char *conv, int64_t *count)
{
    json_t *by_cmid = json_object();
    *count = 0;
    int64_t before = -1;
    for (;;) {
        char before_s[32];
        snprintf(before_s, sizeof before_s, "%lld", (long long)before);
        char *out = NULL;
        int rc = before < 0 ? test_stack_chatctl(&stack, &out, "history", conv, "--limit", "100", NULL)
                            : test_stack_chatctl(&stack, &out, "history", conv, "--limit", "100", "--before",
                                                 before_s, NULL);
        ck_assert_msg(rc == 0, "chatctl history %s exited %d: %s", conv, rc, out ? out : "");
        int lines = 0;
        for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
            json_error_t err;
            json_t *j = json_loads(line, 0, &err);
            ck_assert_msg(j != NULL, "chatctl history printed a line that is not JSON (%s): %s", err.text, line);
            const char *cmid = test_str(j, "cmid");
            int64_t seq = test_int(j, "seq");
            ck_assert_msg(cmid && json_object_get(by_cmid, cmid) == NULL, "cmid %s stored twice (seq %lld)",
                          cmid ? cmid : "(none)", (long long)seq);
            json_object_set_new(by_cmid, cmid, json_integer(seq));
            if (before < 0 || seq < before)
                before = seq;
            (*count)++;
            lines++;
            json_decref(j);
        }
        free(out);
        if (lines < 100 || before <= 1)
            break;
    }
    return by_cmid;
}

START_TEST(sends_past_the_bound_are_refused_at_once)
{
    char bound[64];
    snprintf(bound, sizeof bound, "CHAT_WS_INFLIGHT_MAX=%d", INFLIGHT_MAX);
    const char *env[] = {bound, "CHAT_WS_RATE=100000", "CHAT_WS_USER_RATE=100000", "CHAT_TLS_CERT=", "CHAT_TLS_KEY=",
                         NULL};
    char why[2400];
    ck_assert_msg(test_gateway_spawn(&stack, "small", env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);

    char flooder_user[80], peer[80], other_user[80], other_peer[80], conv[80], other_conv[80], run[80];
    test_stack_unique_id("flooder", flooder_user, sizeof flooder_user);
    test_stack_unique_id("peer", peer, sizeof peer);
    test_stack_unique_id("other", other_user, sizeof other_user);
    test_stack_unique_id("otherpeer", other_peer, sizeof other_peer);
    test_stack_unique_id("flood", conv, sizeof conv);
    test_stack_unique_id("calm", other_conv, sizeof other_conv);
    test_stack_unique_id("r", run, sizeof run);
    create_conversation(conv, flooder_user, peer);
    create_conversation(other_conv, other_user, other_peer);
    ws_client *fc = connect_user(flooder_user);
    ws_client *oc = connect_user(other_user);
    memset(flood, 0, sizeof flood);
    memset(other, 0, sizeof other);
    refusals = 0;
    refuse_max_ms = refuse_sum_ms = 0;
    order = 0;
    for (int i = 0; i <= FLOOD; i++)
        snprintf(flood[i].cmid, sizeof flood[i].cmid, "%s-f%d", run, i);
    for (int i = 0; i < OTHER_SENDS; i++)
        snprintf(other[i].cmid, sizeof other[i].cmid, "%s-o%d", run, i);

    /* warm-up: one message each, so the membership cache is filled and the flood meets the bound
     * on the frames' own path */
    flood[0].last_order = order++;
    send_msg(fc, conv, &flood[0]);
    wait_acked(fc, true, &flood[0]);
    send_msg(oc, other_conv, &other[0]);
    wait_acked(oc, false, &other[0]);
    json_t *m0 = scrape();

    /* the flood: every message back to back */
    for (int i = 1; i <= FLOOD; i++) {
        flood[i].last_order = order++;
        send_msg(fc, conv, &flood[i]);
    }
    int64_t t0 = test_mono_ms(), next_other = t0, next_scrape = t0;
    int other_next = 1;
    double inflight_max = 0;
    for (;;) {
        int64_t now = test_mono_ms();
        int acked = 0;
        for (int i = 1; i <= FLOOD; i++) {
            acked += flood[i].acks;
            if (flood[i].retry_at_ms && flood[i].retry_at_ms <= now) {
                flood[i].last_order = order++;
                send_msg(fc, conv, &flood[i]);
            }
        }
        bool other_done = other_next == OTHER_SENDS && other[OTHER_SENDS - 1].acks;
        if (acked == FLOOD && other_done)
            break;
        ck_assert_msg(now - t0 < DONE_LIMIT_MS,
                      "after %d s: %d of %d flood messages acked (%ld refusals), the other user at %d of %d; "
                      "gateway log: %s",
                      DONE_LIMIT_MS / 1000, acked, FLOOD, refusals, other_next, OTHER_SENDS,
                      test_gateway_log_tail(&gw, 800));
        /* the other user: one message at a time, the next one once the last is acked */
        if (other_next < OTHER_SENDS && other[other_next - 1].acks && now >= next_other) {
            send_msg(oc, other_conv, &other[other_next++]);
            next_other = now + OTHER_EVERY_MS;
        }
        if (now >= next_scrape) {
            double v = gauge("chat_gateway_sends_in_flight");
            if (v > inflight_max)
                inflight_max = v;
            next_scrape = now + 50;
        }
        struct pollfd p[2] = {{.fd = ws_client_fd(fc), .events = POLLIN}, {.fd = ws_client_fd(oc), .events = POLLIN}};
        if (!ws_client_buffered(fc) && !ws_client_buffered(oc))
            poll(p, 2, 10);
        drain(fc, true);
        drain(oc, false);
    }
    int64_t took = test_mono_ms() - t0;
    say(PROG ": %d flood messages acked in %lld ms after %ld refusals (refused %.1f ms after the send on average, "
             "at most %lld ms); %d sends of the other user acked, none refused; at most %.0f sends in flight "
             "(bound %d)\n",
        FLOOD, (long long)took, refusals, refusals ? (double)refuse_sum_ms / (double)refusals : 0.0,
        (long long)refuse_max_ms, OTHER_SENDS, inflight_max, INFLIGHT_MAX);
    ck_assert_msg(refusals > 0, "%d sends written back to back with CHAT_WS_INFLIGHT_MAX=%d: none was refused", FLOOD,
                  INFLIGHT_MAX);
    ck_assert_msg(inflight_max <= INFLIGHT_MAX + RESERVE,
                  "chat_gateway_sends_in_flight reached %.0f: over the bound %d and the reserve %d", inflight_max,
                  INFLIGHT_MAX, RESERVE);

    /* stored once each, with the seq of its ack, 1..N, in the order the gateway took them */
    int64_t count = 0;
    json_t *by_cmid = stored(conv, &count);
    ck_assert_msg(count == FLOOD + 1, "history of %s holds %lld messages, the test sent %d (each acked once)", conv,
                  (long long)count, FLOOD + 1);
    for (int i = 0; i <= FLOOD; i++) {
        json_t *v = json_object_get(by_cmid, flood[i].cmid);
        ck_assert_msg(v && json_integer_value(v) == flood[i].seq, "%s: acked as seq %lld, stored as %s", flood[i].cmid,
                      (long long)flood[i].seq, v ? test_json(v) : "nothing");
        ck_assert_msg(flood[i].seq >= 1 && flood[i].seq <= FLOOD + 1, "%s: seq %lld outside 1..%d", flood[i].cmid,
                      (long long)flood[i].seq, FLOOD + 1);
    }
    /* by the order of the last attempt of each message (the attempt that was taken) */
    for (int i = 0; i <= FLOOD; i++)
        for (int k = 0; k <= FLOOD; k++)
            if (flood[i].last_order < flood[k].last_order)
                ck_assert_msg(flood[i].seq < flood[k].seq,
                              "%s (taken as send %ld on the connection) got seq %lld, but %s (taken later, as send "
                              "%ld) got seq %lld: not stored in the order the gateway took them",
                              flood[i].cmid, flood[i].last_order, (long long)flood[i].seq, flood[k].cmid,
                              flood[k].last_order, (long long)flood[k].seq);
    json_decref(by_cmid);
    int64_t other_count = 0;
    json_t *other_stored = stored(other_conv, &other_count);
    ck_assert_msg(other_count == OTHER_SENDS, "history of %s holds %lld messages, the other user sent %d", other_conv,
                  (long long)other_count, OTHER_SENDS);
    json_decref(other_stored);

    /* the metrics say the same */
    json_t *m1 = scrape();
    double shed = test_metric_delta(m0, m1, "chat_gateway_shed_total");
    double limited = test_metric_delta(m0, m1, "chat_gateway_failed_total{reason=\"rate_limited\"}");
    ck_assert_msg(shed == (double)refusals && limited == (double)refusals,
                  "the flooder saw %ld refusals; chat_gateway_shed_total grew by %g, "
                  "chat_gateway_failed_total{reason=\"rate_limited\"} by %g",
                  refusals, shed, limited);
    json_decref(m0);
    json_decref(m1);
    for (int64_t t1 = test_mono_ms(); gauge("chat_gateway_sends_in_flight") != 0;) {
        ck_assert_msg(test_mono_ms() - t1 < 3000, "chat_gateway_sends_in_flight is %g with every send acked",
                      gauge("chat_gateway_sends_in_flight"));
        usleep(20000);
    }
    ck_assert(ws_client_shutdown(fc, 5000) == CHAT_OK);
    ck_assert(ws_client_shutdown(oc, 5000) == CHAT_OK);
}
END_TEST

#define IDLE_WATCH_MS 4500  /* > 2 x 1 s + the 1 s sweep + slack: the silent one is gone by then */

START_TEST(idle_connections_are_pinged_and_silent_ones_dropped)
{
    const char *env[] = {"CHAT_WS_PING=1s", "CHAT_LOG=info", "CHAT_TLS_CERT=", "CHAT_TLS_KEY=", NULL};
    char why[2400];
    ck_assert_msg(test_gateway_spawn(&stack, "idle", env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
    char alive[80], silent[80];
    test_stack_unique_id("alive", alive, sizeof alive);
    test_stack_unique_id("silent", silent, sizeof silent);
    json_t *m0 = scrape();
    /* the silent one first: a client answers pings only while it reads, and the other's connect
     * (a token, a sign-in) may take a second or two on a loaded machine */
    ws_client *q = connect_user(silent);
    ws_client *a = connect_user(alive);
    int64_t start = chat_mono_ns() / 1000000;
    while (chat_mono_ns() / 1000000 - start < IDLE_WATCH_MS) { /* a reads (and answers pings); q does not */
        ws_message m = {0};
        chat_status st = ws_client_recv(a, 100, &m);
        ck_assert_msg(st == CHAT_OK || st == CHAT_ERR_TIMEOUT, "the client that answers pings lost its connection: %s (%s)",
                      chat_status_str(st), ws_client_error(a));
        ws_message_clear(&m);
    }
    ck_assert_msg(ws_client_pings(a) >= 2, "%lu pings in %d ms with CHAT_WS_PING=1s, want >= 2", ws_client_pings(a),
                  IDLE_WATCH_MS);
    /* q: what it never read (pings), then the end of the connection, without a close frame */
    chat_status st = CHAT_OK;
    for (int i = 0; i < 100 && st != CHAT_ERR_IO && st != CHAT_ERR_INVALID; i++) {
        ws_message m = {0};
        st = ws_client_recv(q, 100, &m);
        ws_message_clear(&m);
    }
    ck_assert_msg(st == CHAT_ERR_IO, "the silent client's connection is still open after %d ms: %s", IDLE_WATCH_MS,
                  chat_status_str(st));
    ck_assert_msg(ws_client_close_code(q) == 0, "the silent client got close code %d; a hang-up sends none",
                  ws_client_close_code(q));
    json_t *m1 = scrape();
    ck_assert_msg(test_metric_delta(m0, m1, "chat_gateway_disconnects_total{reason=\"client\"}") == 1,
                  "disconnects_total{reason=client} grew by %g, want 1 (the silent client)",
                  test_metric_delta(m0, m1, "chat_gateway_disconnects_total{reason=\"client\"}"));
    ck_assert_msg(test_metric(m1, "chat_gateway_connections") == 1, "%g connections open, want 1 (the one answering)",
                  test_metric(m1, "chat_gateway_connections"));
    ck_assert_msg(strstr(test_gateway_log_tail(&gw, 8000), "event=idle_hangup") != NULL,
                  "no event=idle_hangup in the gateway's log: %s", test_gateway_log_tail(&gw, 2000));
    json_decref(m0);
    json_decref(m1);
    ws_client_destroy(q);
    ck_assert(ws_client_shutdown(a, 5000) == CHAT_OK);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create("ops_admission");
    TCase *tc = tcase_create("admission");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, sends_past_the_bound_are_refused_at_once);
    tcase_add_test(tc, idle_connections_are_pinged_and_silent_ones_dropped);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
