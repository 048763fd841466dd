/* Metrics after a burst of traffic (issue 6, metrics; docs/operations.md "Metrics"), as an
 * operator scraping /metrics sees them. The test starts a gateway of its own (the stack's
 * environment, a port of its own), connects two users on three devices (alice twice, bob once),
 * sends N messages between them in one conversation, provokes one error frame of each kind a
 * client causes and one refused upgrade, then scrapes the gateway's /metrics and the stack
 * worker's (CHAT_WORKER_LISTEN) and checks:
 *   - both answer valid Prometheus text (every sample under a # TYPE line, no series twice);
 *   - every metric docs/operations.md calls critical is there, with every documented label value:
 *     delivery latency and the per-stage histograms, connection counts, connects, disconnects and
 *     refusals by reason, broker lag per partition, failed sends by reason, offline queue depth,
 *     process basics; no label carries a user or conversation id;
 *   - the values add up: chat_delivery_latency_seconds_count grew by exactly the msg frames the
 *     clients received (each message reaches every device of every member, the sender's too), its
 *     sum is at most what the clients measured from their sends, acks and PubAck observations by
 *     N, frames in/out by exactly what the clients sent/received, failed_total by one per error
 *     frame, refused{auth} by one; connections and users equal what is open; a closed device
 *     counts as disconnects{client}; histograms are cumulative with +Inf = count;
 *   - the worker: events and broker-to-commit observations by at least N, per-batch stage
 *     histograms by the batch count, a pending/ack-pending gauge for each partition, and the
 *     offline queue: each message read by the notify role from CHAT_EVENTS
 *     (chat_notify_requests_total, or chat_notify_pending while they wait out CHAT_PUSH_GRACE when
 *     a push webhook is set).
 * Gateway log: $CHAT_HOME/logs/test_ops_metrics-gw.log. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat_duration.h"
#include "test_ops.h"

#define PROG "test_ops_metrics"
#define say(...) (printf(__VA_ARGS__), fflush(stdout))
#define N_MSGS 200
#define WINDOW 50
#define N_DEVS 3
#define BURST_MS 60000

static test_stack stack;
static test_gateway gw;

static int64_t real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void setup(void)
{
    memset(&gw, 0, sizeof gw);
}

static void teardown(void)
{
    test_gateway_stop(&gw, 10000);
}

typedef struct dev {
    const char *name;
    ws_client *ws;
    long frames, msgs, acks, errors, others;
    int64_t last_seq; /* the msg frames of one conversation come in seq order */
    char *errs;       /* codes of the error frames, space separated */
} dev;

typedef struct sent {
    char cmid[96];
    int64_t sent_us;
    int acks;
    int64_t seq;
} sent;

static sent msgs[N_MSGS];
static double client_latency_s; /* summed over every msg frame */

static int msg_of(const char *cmid)
{
    for (int i = 0; cmid && i < N_MSGS; i++)
        if (strcmp(msgs[i].cmid, cmid) == 0)
            return i;
    return -1;
}

/* Reads everything buffered or readable on d now. */
static void drain(dev *d)
{
    for (;;) {
        json_t *f = NULL;
        chat_status s = ws_client_recv_json(d->ws, 0, &f);
        if (s == CHAT_ERR_TIMEOUT)
            return;
        ck_assert_msg(s == CHAT_OK, "%s: %s (%s)", d->name, chat_status_str(s), ws_client_error(d->ws));
        d->frames++;
        const char *type = test_str(f, "type");
        type = type ? type : "";
        if (strcmp(type, "msg") == 0) {
            int64_t now = real_us();
            int i = msg_of(test_str(f, "cmid"));
            ck_assert_msg(i >= 0, "%s: msg of a cmid the test did not send: %s", d->name, test_json(f));
            client_latency_s += (double)(now - msgs[i].sent_us) / 1e6;
            int64_t seq = test_int(f, "seq");
            ck_assert_msg(seq == d->last_seq + 1, "%s: msg seq %lld after %lld: %s", d->name, (long long)seq,
                          (long long)d->last_seq, test_json(f));
            d->last_seq = seq;
            d->msgs++;
        } else if (strcmp(type, "ack") == 0) {
            int i = msg_of(test_str(f, "cmid"));
            ck_assert_msg(i >= 0, "%s: ack of a cmid the test did not send: %s", d->name, test_json(f));
            msgs[i].acks++;
            msgs[i].seq = test_int(f, "seq");
            d->acks++;
        } else if (strcmp(type, "error") == 0) {
            const char *code = test_str(f, "code");
            size_t n = d->errs ? strlen(d->errs) : 0;
            d->errs = realloc(d->errs, n + strlen(code ? code : "?") + 2);
            sprintf(d->errs + n, "%s%s", n ? " " : "", code ? code : "?");
            d->errors++;
        } else {
            d->others++;
        }
        json_decref(f);
    }
}

static void pump(dev *devs, int n, int timeout_ms)
{
    struct pollfd p[N_DEVS];
    bool buffered = false;
    for (int k = 0; k < n; k++) {
        p[k].fd = ws_client_fd(devs[k].ws);
        p[k].events = POLLIN;
        p[k].revents = 0;
        buffered |= ws_client_buffered(devs[k].ws);
    }
    if (!buffered)
        poll(p, (nfds_t)n, timeout_ms);
    for (int k = 0; k < n; k++)
        drain(&devs[k]);
}

static ws_client *connect_dev(const char *user)
{
    return test_gateway_user(&stack, &gw, user);
}

static void send_json(dev *d, json_t *f)
{
    chat_status s = ws_client_send_json(d->ws, f);
    ck_assert_msg(s == CHAT_OK, "%s: send: %s (%s)", d->name, chat_status_str(s), ws_client_error(d->ws));
    json_decref(f);
}

/* ---- checks on parsed metrics ---- */

static void need(const json_t *m, const char *where, const char *key)
{
    double v = test_metric(m, key);
    ck_assert_msg(!isnan(v), "%s: %s is missing", where, key);
    ck_assert_msg(isfinite(v) && v >= 0, "%s: %s is %g", where, key, v);
}

/* A histogram: every documented bucket, cumulative, +Inf = _count, _sum >= 0. */
static void need_histogram(const json_t *m, const char *where, const char *name)
{
    static const char *const les[] = {"0.0001", "0.00025", "0.0005", "0.001", "0.002", "0.003", "0.005", "0.0075",
                                      "0.01",   "0.015",   "0.025",  "0.05",  "0.075", "0.1",   "0.25",  "0.5",
                                      "1",      "2",       "5",      "10",    "30",    "60",    "+Inf"};
    char key[256];
    double prev = 0;
    for (size_t i = 0; i < sizeof les / sizeof les[0]; i++) {
        snprintf(key, sizeof key, "%s_bucket{le=\"%s\"}", name, les[i]);
        need(m, where, key);
        double v = test_metric(m, key);
        ck_assert_msg(v >= prev, "%s: %s is %g, below the bucket before it (%g): not cumulative", where, key, v, prev);
        prev = v;
    }
    snprintf(key, sizeof key, "%s_count", name);
    need(m, where, key);
    ck_assert_msg(test_metric(m, key) == prev, "%s: %s is %g but its +Inf bucket is %g", where, key,
                  test_metric(m, key), prev);
    snprintf(key, sizeof key, "%s_sum", name);
    need(m, where, key);
}

static void need_labels(const json_t *m, const char *where, const char *name, const char *label,
                        const char *const *values)
{
    char key[256];
    for (size_t i = 0; values[i]; i++) {
        snprintf(key, sizeof key, "%s{%s=\"%s\"}", name, label, values[i]);
        need(m, where, key);
    }
}

static void need_process(const json_t *m, const char *where, int64_t started_unix)
{
    need(m, where, "process_resident_memory_bytes");
    need(m, where, "process_open_fds");
    need(m, where, "process_threads");
    need(m, where, "process_start_time_seconds");
    double rss = test_metric(m, "process_resident_memory_bytes");
    ck_assert_msg(rss > 1e6 && rss < 4e9, "%s: process_resident_memory_bytes %g is not plausible", where, rss);
    ck_assert_msg(test_metric(m, "process_open_fds") >= 3, "%s: process_open_fds %g", where,
                  test_metric(m, "process_open_fds"));
    ck_assert_msg(test_metric(m, "process_threads") >= 2, "%s: process_threads %g", where,
                  test_metric(m, "process_threads"));
    double start = test_metric(m, "process_start_time_seconds"), now = (double)time(NULL);
    ck_assert_msg(start <= now + 1 && start > now - 30 * 86400.0, "%s: process_start_time_seconds %.0f (now %.0f)",
                  where, start, now);
    if (started_unix)
        ck_assert_msg(fabs(start - (double)started_unix) <= 5,
                      "%s: process_start_time_seconds %.0f, but it started at %lld", where, start,
                      (long long)started_unix);
}

static const char *const gw_refused[] = {"auth", "origin", "limit", "stopping", NULL};
static const char *const gw_disc[] = {"client", "slow_consumer", "too_large", "shutdown", NULL};
static const char *const gw_failed[] = {"bad_request", "not_member", "too_large", "unavailable", "rate_limited", NULL};
static const char *const api_codes[] = {"bad_request", "not_found", "not_member", "unavailable", "internal", NULL};
static const char *const notify_results[] = {"done", "no_webhook", "invalid", "skipped", NULL};
static const char *const drop_reasons[] = {"invalid", "not_member", "no_conversation", "poison", "no_target", NULL};

static void check_gateway_names(const json_t *m, const char *where, int64_t started_unix)
{
    need_process(m, where, started_unix);
    need(m, where, "chat_gateway_connections");
    need(m, where, "chat_gateway_users");
    need(m, where, "chat_gateway_connects_total");
    need_labels(m, where, "chat_gateway_refused_total", "reason", gw_refused);
    need_labels(m, where, "chat_gateway_disconnects_total", "reason", gw_disc);
    need_labels(m, where, "chat_gateway_failed_total", "reason", gw_failed);
    need(m, where, "chat_gateway_frames_in_total");
    need(m, where, "chat_gateway_frames_out_total");
    need(m, where, "chat_gateway_acks_total");
    need_histogram(m, where, "chat_delivery_latency_seconds");
    need_histogram(m, where, "chat_gateway_publish_ack_seconds");
}

static void check_worker_names(const json_t *m, const char *where, int partitions)
{
    need_process(m, where, 0);
    need(m, where, "chat_ingest_partitions_owned");
    double owned = test_metric(m, "chat_ingest_partitions_owned");
    ck_assert_msg(owned >= 1 && owned <= partitions, "%s: chat_ingest_partitions_owned %g of %d partitions", where,
                  owned, partitions);
    char key[128];
    for (int p = 0; p < partitions; p++) {
        snprintf(key, sizeof key, "chat_ingest_consumer_pending{partition=\"%d\"}", p);
        need(m, where, key);
        snprintf(key, sizeof key, "chat_ingest_consumer_ack_pending{partition=\"%d\"}", p);
        need(m, where, key);
        ck_assert_msg(test_metric(m, key) <= 1024, "%s: %s is %g, above MaxAckPending 1024", where, key,
                      test_metric(m, key));
    }
    snprintf(key, sizeof key, "chat_ingest_consumer_pending{partition=\"%d\"}", partitions);
    ck_assert_msg(isnan(test_metric(m, key)), "%s: a pending gauge for partition %d of %d", where, partitions,
                  partitions);
    need(m, where, "chat_ingest_events_total");
    need(m, where, "chat_ingest_redelivered_total");
    need(m, where, "chat_ingest_batches_total");
    need_labels(m, where, "chat_ingest_dropped_total", "reason", drop_reasons);
    need_histogram(m, where, "chat_ingest_fetch_to_commit_seconds");
    need_histogram(m, where, "chat_ingest_commit_to_fanout_seconds");
    need_histogram(m, where, "chat_ingest_broker_to_commit_seconds");
    need_labels(m, where, "chat_api_errors_total", "code", api_codes);
    need(m, where, "chat_api_requests_total{method=\"members.check\"}");
    need_histogram(m, where, "chat_api_request_seconds");
    need(m, where, "chat_notify_pending");
    need(m, where, "chat_notify_members_behind");
    need_labels(m, where, "chat_notify_requests_total", "result", notify_results);
}

/* No label value names a user or a conversation of this run (bounded cardinality). */
static void check_no_ids(const char *listen, const char *const *ids)
{
    static char body[1 << 20];
    ck_assert_int_eq(test_ops_http_get(listen, "/metrics", body, sizeof body, 5000), 200);
    for (size_t i = 0; ids[i]; i++)
        ck_assert_msg(strstr(body, ids[i]) == NULL,
                      "http://%s/metrics names \"%s\" (a per-user or per-conversation "
                      "label)",
                      listen, ids[i]);
}

START_TEST(metrics_after_a_burst)
{
    const char *env[] = {"CHAT_WS_RATE=1000", "CHAT_WS_USER_RATE=1000", "CHAT_TLS_CERT=", "CHAT_TLS_KEY=", NULL};
    char why[2400];
    ck_assert_msg(test_gateway_spawn(&stack, "gw", env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
    char wlisten[64];
    const char *wl = getenv("CHAT_WORKER_LISTEN");
    snprintf(wlisten, sizeof wlisten, "%s", wl && wl[0] ? wl : "127.0.0.1:9101");

    json_t *g0 = test_metrics_scrape(gw.listen, why, sizeof why);
    ck_assert_msg(g0 != NULL, "gateway: %s", why);
    check_gateway_names(g0, "gateway (fresh)", gw.started_unix);
    json_t *w0 = test_metrics_scrape(wlisten, why, sizeof why);
    ck_assert_msg(w0 != NULL, "worker: %s", why);
    check_worker_names(w0, "worker", stack.cfg.partitions);

    char alice[80], bob[80], conv[80], run[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("metrics", conv, sizeof conv);
    test_stack_unique_id("r", run, sizeof run);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, alice, bob, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create: exit %d: %s", rc, out ? out : "");
    free(out);

    /* one upgrade refused for its token */
    {
        ws_connect_opts o = {
            .host = "127.0.0.1", .port = gw.port, .path = "/ws", .token = "not-a-token", .timeout_ms = 5000};
        ws_connect_info info;
        ws_client *c = NULL;
        ck_assert_msg(ws_client_connect(&o, &c, &info) == CHAT_ERR_DENIED && info.http_status == 401,
                      "an upgrade with a bad token got HTTP %d, want 401", info.http_status);
    }
    dev devs[N_DEVS] = {{.name = "alice device 1"}, {.name = "alice device 2"}, {.name = "bob device 1"}};
    devs[0].ws = connect_dev(alice);
    devs[1].ws = connect_dev(alice);
    devs[2].ws = connect_dev(bob);
    json_t *g1 = test_metrics_scrape(gw.listen, why, sizeof why);
    ck_assert_msg(g1 != NULL, "gateway: %s", why);
    ck_assert_msg(test_metric(g1, "chat_gateway_connections") == 3, "chat_gateway_connections %g with 3 open",
                  test_metric(g1, "chat_gateway_connections"));
    ck_assert_msg(test_metric(g1, "chat_gateway_users") == 2, "chat_gateway_users %g with 2 users connected",
                  test_metric(g1, "chat_gateway_users"));
    ck_assert_msg(test_metric_delta(g0, g1, "chat_gateway_connects_total") == 3, "connects_total grew by %g for 3",
                  test_metric_delta(g0, g1, "chat_gateway_connects_total"));
    ck_assert_msg(test_metric_delta(g0, g1, "chat_gateway_refused_total{reason=\"auth\"}") == 1,
                  "refused_total{reason=\"auth\"} grew by %g for one bad token",
                  test_metric_delta(g0, g1, "chat_gateway_refused_total{reason=\"auth\"}"));

    /* the burst: alice (device 1) and bob take turns, WINDOW unacked each */
    memset(msgs, 0, sizeof msgs);
    client_latency_s = 0;
    for (int i = 0; i < N_MSGS; i++)
        snprintf(msgs[i].cmid, sizeof msgs[i].cmid, "%s-%d", run, i);
    int next[2] = {0, 1}; /* sender 0 sends the even messages, sender 1 the odd ones */
    dev *senders[2] = {&devs[0], &devs[2]};
    int64_t t0 = test_mono_ms();
    for (;;) {
        long acked = 0, delivered = 0;
        for (int i = 0; i < N_MSGS; i++)
            acked += msgs[i].acks > 0;
        for (int k = 0; k < N_DEVS; k++)
            delivered += devs[k].msgs;
        if (acked == N_MSGS && delivered == (long)N_DEVS * N_MSGS)
            break;
        ck_assert_msg(test_mono_ms() - t0 < BURST_MS, "burst: after %d ms %ld of %d acked, %ld of %d msg frames",
                      BURST_MS, acked, N_MSGS, delivered, N_DEVS * N_MSGS);
        for (int s = 0; s < 2; s++) {
            int unacked = 0;
            for (int i = s; i < next[s] && i < N_MSGS; i += 2)
                unacked += msgs[i].acks == 0;
            while (next[s] < N_MSGS && unacked < WINDOW) {
                sent *m = &msgs[next[s]];
                m->sent_us = real_us();
                send_json(senders[s], json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", m->cmid,
                                                "body", "a message of the burst"));
                next[s] += 2;
                unacked++;
            }
        }
        pump(devs, N_DEVS, 100);
    }
    int64_t burst_ms = test_mono_ms() - t0;
    /* one error frame of each kind a client causes, on alice's second device */
    char big[17 * 1024 + 1];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char other[80];
    test_stack_unique_id("not-mine", other, sizeof other);
    send_json(&devs[1], json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", other, "cmid", "e1", "body", "no"));
    send_json(&devs[1], json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", "e2", "body", big));
    ck_assert(ws_client_send_text(devs[1].ws, "not json", 8) == CHAT_OK);
    for (int64_t t1 = test_mono_ms(); devs[1].errors < 3;) {
        ck_assert_msg(test_mono_ms() - t1 < 10000, "3 error frames expected within 10 s, got: %s",
                      devs[1].errs ? devs[1].errs : "none");
        pump(devs, N_DEVS, 100);
    }
    pump(devs, N_DEVS, 50); /* anything late */
    for (int i = 0; i < N_MSGS; i++)
        ck_assert_msg(msgs[i].acks == 1, "%s acked %d times", msgs[i].cmid, msgs[i].acks);
    long frames = 0, msg_frames = 0;
    for (int k = 0; k < N_DEVS; k++) {
        frames += devs[k].frames;
        msg_frames += devs[k].msgs;
        ck_assert_msg(devs[k].others == 0, "%s got %ld frames of other types", devs[k].name, devs[k].others);
    }
    ck_assert_int_eq(msg_frames, N_DEVS * N_MSGS);

    json_t *g2 = test_metrics_scrape(gw.listen, why, sizeof why);
    ck_assert_msg(g2 != NULL, "gateway: %s", why);
    check_gateway_names(g2, "gateway (after the burst)", gw.started_unix);
    double lat_n = test_metric_delta(g1, g2, "chat_delivery_latency_seconds_count");
    double lat_sum = test_metric_delta(g1, g2, "chat_delivery_latency_seconds_sum");
    say(PROG ": %d messages, %ld msg frames in %lld ms; gateway: chat_delivery_latency_seconds_count +%.0f, sum "
             "+%.3f s (clients measured %.3f s from their sends), p<=25ms %.0f%%\n",
        N_MSGS, msg_frames, (long long)burst_ms, lat_n, lat_sum, client_latency_s,
        100.0 * test_metric_delta(g1, g2, "chat_delivery_latency_seconds_bucket{le=\"0.025\"}") /
            (lat_n > 0 ? lat_n : 1));
    ck_assert_msg(lat_n == (double)msg_frames,
                  "chat_delivery_latency_seconds_count grew by %.0f, but the clients received %ld msg frames", lat_n,
                  msg_frames);
    /* from the broker timestamp (after the send) to the write (before the receipt), whole ms */
    ck_assert_msg(lat_sum >= 0 && lat_sum <= client_latency_s + (double)msg_frames * 0.002,
                  "chat_delivery_latency_seconds_sum grew by %.3f s, more than the %.3f s the clients measured "
                  "from their sends to the msg frames",
                  lat_sum, client_latency_s);
    ck_assert_msg(lat_sum / lat_n < 1.0, "mean delivery latency %.3f s on loopback", lat_sum / lat_n);
    ck_assert_msg(test_metric_delta(g1, g2, "chat_delivery_latency_seconds_bucket{le=\"10\"}") == lat_n,
                  "deliveries observed above 10 s");
    ck_assert_msg(test_metric_delta(g1, g2, "chat_gateway_acks_total") == N_MSGS, "acks_total grew by %g for %d sends",
                  test_metric_delta(g1, g2, "chat_gateway_acks_total"), N_MSGS);
    /* N_MSGS and the send to a conversation alice is not in: a post of a member not known to the
     * gateway is published without asking, and the ingest refuses it (not_member) */
    ck_assert_msg(test_metric_delta(g1, g2, "chat_gateway_publish_ack_seconds_count") == N_MSGS + 1,
                  "chat_gateway_publish_ack_seconds_count grew by %g for %d publishes",
                  test_metric_delta(g1, g2, "chat_gateway_publish_ack_seconds_count"), N_MSGS + 1);
    ck_assert_msg(test_metric_delta(g1, g2, "chat_gateway_frames_in_total") == N_MSGS + 3,
                  "frames_in_total grew by %g; the clients sent %d frames",
                  test_metric_delta(g1, g2, "chat_gateway_frames_in_total"), N_MSGS + 3);
    ck_assert_msg(test_metric_delta(g1, g2, "chat_gateway_frames_out_total") == (double)frames,
                  "frames_out_total grew by %g; the clients received %ld frames",
                  test_metric_delta(g1, g2, "chat_gateway_frames_out_total"), frames);
    static const char *const want_failed[][2] = {
        {"not_member", "1"}, {"too_large", "1"}, {"bad_request", "1"}, {"unavailable", "0"}, {"rate_limited", "0"}};
    for (size_t i = 0; i < 5; i++) {
        char key[128];
        snprintf(key, sizeof key, "chat_gateway_failed_total{reason=\"%s\"}", want_failed[i][0]);
        ck_assert_msg(test_metric_delta(g1, g2, key) == atof(want_failed[i][1]), "%s grew by %g, want %s (errors: %s)",
                      key, test_metric_delta(g1, g2, key), want_failed[i][1], devs[1].errs ? devs[1].errs : "");
    }
    ck_assert_msg(test_metric(g2, "chat_gateway_connections") == 3 && test_metric(g2, "chat_gateway_users") == 2,
                  "connections %g, users %g with 3 devices of 2 users open",
                  test_metric(g2, "chat_gateway_connections"), test_metric(g2, "chat_gateway_users"));
    ck_assert_msg(test_metric(g2, "process_open_fds") >= 3 + 3, "process_open_fds %g with 3 connections open",
                  test_metric(g2, "process_open_fds"));
    const char *ids[] = {alice, bob, conv, run, NULL};
    check_no_ids(gw.listen, ids);

    /* the worker: its counters move together (it owns the partitions: the stack has one worker) */
    json_t *w2 = NULL;
    int64_t tw = test_mono_ms();
    for (;;) {
        json_decref(w2);
        w2 = test_metrics_scrape(wlisten, why, sizeof why);
        ck_assert_msg(w2 != NULL, "worker: %s", why);
        double batches = test_metric_delta(w0, w2, "chat_ingest_batches_total");
        if (test_metric_delta(w0, w2, "chat_ingest_events_total") >= N_MSGS &&
            test_metric_delta(w0, w2, "chat_ingest_commit_to_fanout_seconds_count") == batches)
            break;
        ck_assert_msg(test_mono_ms() - tw < 5000,
                      "worker: events_total grew by %g (%d sent), batches by %g, "
                      "commit_to_fanout observations by %g",
                      test_metric_delta(w0, w2, "chat_ingest_events_total"), N_MSGS, batches,
                      test_metric_delta(w0, w2, "chat_ingest_commit_to_fanout_seconds_count"));
        usleep(100000);
    }
    check_worker_names(w2, "worker (after the burst)", stack.cfg.partitions);
    double events = test_metric_delta(w0, w2, "chat_ingest_events_total");
    double batches = test_metric_delta(w0, w2, "chat_ingest_batches_total");
    ck_assert_msg(batches >= 1 && batches <= events, "worker: %g batches for %g events", batches, events);
    ck_assert_msg(test_metric_delta(w0, w2, "chat_ingest_fetch_to_commit_seconds_count") == batches,
                  "worker: fetch_to_commit observed %g times for %g batches",
                  test_metric_delta(w0, w2, "chat_ingest_fetch_to_commit_seconds_count"), batches);
    ck_assert_msg(test_metric_delta(w0, w2, "chat_ingest_broker_to_commit_seconds_count") == events,
                  "worker: broker_to_commit observed %g times for %g events",
                  test_metric_delta(w0, w2, "chat_ingest_broker_to_commit_seconds_count"), events);
    /* the send to a conversation that does not exist went to the ingest (the gateway publishes a
     * post of a member it does not know, gw_session.c member_action), which refused it */
    ck_assert_msg(test_metric_delta(w0, w2, "chat_ingest_dropped_total{reason=\"no_conversation\"}") >= 1,
                  "worker: dropped_total{reason=no_conversation} grew by %g (a send to a conversation that does "
                  "not exist)",
                  test_metric_delta(w0, w2, "chat_ingest_dropped_total{reason=\"no_conversation\"}"));
    double pending = 0;
    for (int p = 0; p < stack.cfg.partitions; p++) {
        char key[128];
        snprintf(key, sizeof key, "chat_ingest_consumer_pending{partition=\"%d\"}", p);
        pending += test_metric(w2, key);
    }
    ck_assert_msg(pending <= N_MSGS, "worker: %g posts pending after %d sent, all acked", pending, N_MSGS);
    check_no_ids(wlisten, ids);
    say(PROG ": worker: events +%.0f in %.0f batches, broker_to_commit +%.0f, consumer pending %.0f (%d partitions)\n",
        events, batches, test_metric_delta(w0, w2, "chat_ingest_broker_to_commit_seconds_count"), pending,
        stack.cfg.partitions);

    /* a closed device: the gauge follows, the close counts as reason="client" */
    ck_assert_msg(ws_client_shutdown(devs[1].ws, 5000) == CHAT_OK, "close handshake of alice device 2 not answered");
    devs[1].ws = NULL;
    json_t *g3 = NULL;
    for (int64_t t3 = test_mono_ms();;) {
        json_decref(g3);
        g3 = test_metrics_scrape(gw.listen, why, sizeof why);
        ck_assert_msg(g3 != NULL, "gateway: %s", why);
        if (test_metric(g3, "chat_gateway_connections") == 2)
            break;
        ck_assert_msg(test_mono_ms() - t3 < 3000, "chat_gateway_connections is %g 3 s after one of 3 closed",
                      test_metric(g3, "chat_gateway_connections"));
        usleep(20000);
    }
    ck_assert_msg(test_metric(g3, "chat_gateway_users") == 2, "chat_gateway_users %g: alice still has a device",
                  test_metric(g3, "chat_gateway_users"));
    ck_assert_msg(test_metric_delta(g2, g3, "chat_gateway_disconnects_total{reason=\"client\"}") == 1,
                  "disconnects_total{reason=\"client\"} grew by %g for one closed device",
                  test_metric_delta(g2, g3, "chat_gateway_disconnects_total{reason=\"client\"}"));

    /* the offline queue: the notify role reads every message from CHAT_EVENTS. With a push
     * webhook they wait out CHAT_PUSH_GRACE in its consumer (nobody sent seen) and
     * chat_notify_pending shows them within the notify role's 5 s refresh; without one (the test
     * stack) the notify role acks each at once as result="no_webhook". (Membership changes are
     * result="skipped" and not counted here.) */
    const char *webhook = getenv("CHAT_PUSH_WEBHOOK_URL");
    const char *grace_text = getenv("CHAT_PUSH_GRACE");
    int64_t grace_ms = 10000;
    if (grace_text && grace_text[0] && chat_duration_parse(grace_text, &grace_ms) != CHAT_OK)
        grace_ms = 0;
    bool with_webhook = webhook && webhook[0];
    json_t *w3 = NULL;
    for (int64_t t4 = test_mono_ms();;) {
        json_decref(w3);
        w3 = test_metrics_scrape(wlisten, why, sizeof why);
        ck_assert_msg(w3 != NULL, "worker: %s", why);
        double requests = test_metric_delta(w0, w3, "chat_notify_requests_total{result=\"done\"}") +
                          test_metric_delta(w0, w3, "chat_notify_requests_total{result=\"no_webhook\"}") +
                          test_metric_delta(w0, w3, "chat_notify_requests_total{result=\"invalid\"}");
        if (with_webhook ? test_metric(w3, "chat_notify_pending") >= 1 : requests >= N_MSGS)
            break;
        if (with_webhook && test_mono_ms() - t0 - burst_ms > grace_ms - 1000) {
            say(PROG ": CHAT_PUSH_GRACE %s is too short to watch chat_notify_pending rise\n", grace_text);
            break;
        }
        ck_assert_msg(test_mono_ms() - t4 < 6500,
                      with_webhook ? "chat_notify_pending is %g 6.5 s after %d messages that wait CHAT_PUSH_GRACE"
                                   : "chat_notify_requests_total grew by %g 6.5 s after %d messages (no webhook: "
                                     "each acked at once)",
                      with_webhook ? test_metric(w3, "chat_notify_pending") : requests, N_MSGS);
        usleep(200000);
    }
    ck_assert_msg(test_metric(w3, "chat_notify_pending") >= 0 && test_metric(w3, "chat_notify_members_behind") >= 0,
                  "negative offline queue gauges");
    say(PROG ": worker: notify requests +%.0f (no_webhook +%.0f), chat_notify_pending %.0f, "
             "chat_notify_members_behind %.0f\n",
        test_metric_delta(w0, w3, "chat_notify_requests_total{result=\"done\"}") +
            test_metric_delta(w0, w3, "chat_notify_requests_total{result=\"no_webhook\"}"),
        test_metric_delta(w0, w3, "chat_notify_requests_total{result=\"no_webhook\"}"),
        test_metric(w3, "chat_notify_pending"), test_metric(w3, "chat_notify_members_behind"));
    json_decref(w3);

    for (int k = 0; k < N_DEVS; k++) {
        if (devs[k].ws)
            ck_assert_msg(ws_client_shutdown(devs[k].ws, 5000) == CHAT_OK, "%s: close not answered", devs[k].name);
        free(devs[k].errs);
    }
    json_decref(g0);
    json_decref(g1);
    json_decref(g2);
    json_decref(g3);
    json_decref(w0);
    json_decref(w2);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create("ops_metrics");
    TCase *tc = tcase_create("metrics");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, metrics_after_a_burst);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
