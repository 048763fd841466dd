/* The slow consumer (issue 6, protection; docs/operations.md CHAT_WS_QUEUE_MAX,
 * CHAT_WS_SLOW_GRACE). Two cases, each with a gateway of its own (the stack's environment, a port
 * of its own) and a short grace (CHAT_WS_SLOW_GRACE=1s).
 *
 * slow_consumer_is_closed_and_syncs (CHAT_WS_QUEUE_MAX=1.5 MiB): three users share a busy
 * conversation (60 messages a second of 12 KB, 0.7 MB/s: less than the cap within the grace): a
 * sender, a fast reader and a slow reader, one device each, and a control reader on a second
 * gateway. After a warm-up the slow reader stops reading its socket (its TCP receive buffer
 * and the gateway's send buffer fill, then the gateway's queue) while the sender goes on. Checked:
 *   - the gateway gives up on the slow reader (disconnects_total{reason="slow_consumer"} + 1, an
 *     `event=slow_consumer` log line) within the time its buffers take to fill + the grace + the
 *     once-a-second sweep + slack, by the grace rule (its log line's `queued=` is over the cap and
 *     below twice the cap, about one grace of traffic over it), and when the reader reads again it
 *     finds the frames that were already on the wire (no gap) and then a close frame with code 4008,
 *     or (its buffers full, the close frame never got out) the reset the gateway hung up with;
 *   - the fast reader keeps its latency meanwhile: send-to-msg p99 under 200 ms over the stall (or,
 *     on a machine so busy that a control reader of the same conversation on a second gateway is
 *     itself slow, at most 50 ms above that reader's p99), every message in seq order, none
 *     missing;
 *   - the gateway's RSS stays bounded while the slow reader is stalled and the traffic goes on: it
 *     grows by at most 2 x CHAT_WS_QUEUE_MAX per connection plus 4 MiB in all, and by at most 1 MiB
 *     from the moment the slow reader is given up while 3 s more of traffic (2 MiB) is meant for
 *     it (a gateway without the cap never gives up; one that kept queueing would grow by that);
 *   - the slow reader reconnects, sends sync with its cursor (the last seq it holds) and then holds
 *     every message of the conversation exactly once, in seq order, with the ids the sender's acks
 *     and the fast reader have; the connections gauge follows (2, then 3 again).
 *
 * sync_backlog_over_twice_the_cap (CHAT_WS_QUEUE_MAX=65536, the documented minimum): a reader
 * that was offline while 120 messages of 12 KB were sent (one at a time) connects and syncs from
 * 0, reading as fast as it can: it must get all of them and `synced`, not a 4008 (the docs: a
 * closed slow consumer "loses nothing ... and syncs when it reconnects").
 *
 * Gateway logs: $CHAT_HOME/logs/test_ops_slow_consumer-{gw,small}.log. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "test_ops.h"

#define PROG "test_ops_slow_consumer"
#define say(...) (printf(__VA_ARGS__), fflush(stdout))

#define QUEUE_MAX (3 << 19) /* 1.5 MiB: the grace rule, not twice the cap, even if the gateway is late by 1 s */
#define SMALL_QUEUE_MAX 65536
#define BACKLOG_MSGS 120
#define GRACE_MS 1000
#define SWEEP_MS 1000
#define BODY_BYTES 12000
#define RATE 60             /* messages per second from the sender */
#define WARMUP_MS 600       /* everyone reads */
#define AFTER_CLOSE_MS 6000 /* traffic goes on with the slow reader still stalled (~4 MiB for it) */
#define MAX_MSGS 8000
#define FILL_LIMIT_MS 9000 /* kernel buffers (about 2.6 MB on loopback here) and the cap filled by then */
#define P99_LIMIT_MS 200
#define CONTROL_MARGIN_MS 50 /* on a busy machine: at most this much above the control reader's p99 */
#define RSS_SLACK (4 << 20)
/* growth allowed once the slow reader was given up: 0.1-0.3 MiB measured in the plain build;
 * AddressSanitizer (scripts/test builds everything with it) takes about 2 MiB over the same
 * traffic of its own, even without its quarantine (asan_no_quarantine); keeping the frames would
 * take the ~4 MiB sent to the slow reader meanwhile on top of that */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_AFTER_SLACK (3 << 20)
#else
#define RSS_AFTER_SLACK (1 << 20)
#endif

static test_stack stack;
static test_gateway gw;
static test_gateway ctl_gw; /* slow_consumer_is_closed_and_syncs: a second gateway for the control reader */

static int64_t real_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void setup(void)
{
    memset(&gw, 0, sizeof gw);
    memset(&ctl_gw, 0, sizeof ctl_gw);
}

static void teardown(void)
{
    test_gateway_stop(&gw, 10000);
    test_gateway_stop(&ctl_gw, 10000);
}

typedef struct msgrec {
    char cmid[96];
    int64_t sent_us, sent_ms;
    int64_t seq; /* from the ack */
    int acks;
    char id[40];
} msgrec;

static msgrec msgs[MAX_MSGS];
static int nsent;
static json_t *by_cmid; /* cmid -> index */

typedef struct reader {
    const char *name;
    ws_client *ws;
    int64_t last_seq;
    json_t *ids;    /* seq (as text) -> id */
    double *lat_ms; /* send-to-msg latency per message index, NAN until seen */
    long msgs;
} reader;

static int index_of(const char *cmid)
{
    json_t *v = cmid ? json_object_get(by_cmid, cmid) : NULL;
    return v ? (int)json_integer_value(v) : -1;
}

/* A msg frame at reader r: in seq order without gaps (live delivery of one conversation). */
static void on_msg(reader *r, json_t *f, int64_t now_us)
{
    int64_t seq = test_int(f, "seq");
    ck_assert_msg(seq == r->last_seq + 1, "%s: msg seq %lld after %lld (live delivery must not skip or reorder): %s",
                  r->name, (long long)seq, (long long)r->last_seq, test_json(f));
    r->last_seq = seq;
    char key[32];
    snprintf(key, sizeof key, "%lld", (long long)seq);
    json_object_set_new(r->ids, key, json_string(test_str(f, "id") ? test_str(f, "id") : ""));
    int i = index_of(test_str(f, "cmid"));
    ck_assert_msg(i >= 0, "%s: msg of a cmid the test did not send: %s", r->name, test_json(f));
    if (r->lat_ms && isnan(r->lat_ms[i]))
        r->lat_ms[i] = (double)(now_us - msgs[i].sent_us) / 1000.0;
    r->msgs++;
}

static void on_ack(json_t *f)
{
    int i = index_of(test_str(f, "cmid"));
    ck_assert_msg(i >= 0, "ack of a cmid the test did not send: %s", test_json(f));
    msgrec *m = &msgs[i];
    if (m->acks++ == 0) {
        m->seq = test_int(f, "seq");
        snprintf(m->id, sizeof m->id, "%s", test_str(f, "id") ? test_str(f, "id") : "");
    }
}

/* Everything buffered or readable on c now: the sender's acks and msgs, a reader's msgs. */
static void drain(reader *r, bool sender)
{
    for (;;) {
        json_t *f = NULL;
        chat_status s = ws_client_recv_json(r->ws, 0, &f);
        if (s == CHAT_ERR_TIMEOUT)
            return;
        ck_assert_msg(s == CHAT_OK, "%s: %s (%s)", r->name, chat_status_str(s), ws_client_error(r->ws));
        int64_t now = real_us();
        const char *type = test_str(f, "type");
        if (type && strcmp(type, "msg") == 0)
            on_msg(r, f, now);
        else if (type && strcmp(type, "ack") == 0 && sender)
            on_ack(f);
        else
            ck_abort_msg("%s: unexpected frame %s", r->name, test_json(f));
        json_decref(f);
    }
}

static ws_client *connect_user_to(const test_gateway *g, const char *user)
{
    ws_client *c = NULL;
    json_t *hello = NULL;
    char why[700];
    ck_assert_msg(test_gateway_connect(&stack, g, user, 10000, &c, &hello, why, sizeof why) == CHAT_OK, "%s", why);
    json_decref(hello);
    return c;
}

static ws_client *connect_user(const char *user)
{
    return connect_user_to(&gw, user);
}

static double percentile(double *v, int n, double p)
{
    if (n == 0)
        return 0;
    double *s = malloc((size_t)n * sizeof *s);
    memcpy(s, v, (size_t)n * sizeof *s);
    for (int i = 1; i < n; i++) /* insertion sort: a few thousand values */
        for (int k = i; k > 0 && s[k - 1] > s[k]; k--) {
            double t = s[k];
            s[k] = s[k - 1];
            s[k - 1] = t;
        }
    int at = (int)ceil(p * n) - 1;
    double r = s[at < 0 ? 0 : at >= n ? n - 1 : at];
    free(s);
    return r;
}

static double slow_closes(void)
{
    char why[600];
    json_t *m = test_metrics_scrape(gw.listen, why, sizeof why);
    ck_assert_msg(m != NULL, "gateway: %s", why);
    double v = test_metric(m, "chat_gateway_disconnects_total{reason=\"slow_consumer\"}");
    json_decref(m);
    return v;
}

static double gauge(const char *name)
{
    char why[600];
    json_t *m = test_metrics_scrape(gw.listen, why, sizeof why);
    ck_assert_msg(m != NULL, "gateway: %s", why);
    double v = test_metric(m, name);
    json_decref(m);
    return v;
}

/* ASAN_OPTIONS for the measured gateway: under AddressSanitizer (scripts/test) freed memory waits
 * in a quarantine (256 MiB by default) before it is reused, so the RSS would grow with every frame
 * freed and say nothing about frames kept; without the quarantine it measures what it measures in
 * the plain build. Nothing changes for a plain build (the variable is ignored). */
static const char *asan_no_quarantine(void)
{
    static char buf[1024];
    const char *cur = getenv("ASAN_OPTIONS");
    snprintf(buf, sizeof buf, "ASAN_OPTIONS=%s%squarantine_size_mb=0:thread_local_quarantine_size_kb=0:allocator_release_to_os_interval_ms=0",
             cur ? cur : "", cur && cur[0] ? ":" : "");
    return buf;
}

START_TEST(slow_consumer_is_closed_and_syncs)
{
    char qenv[64];
    snprintf(qenv, sizeof qenv, "CHAT_WS_QUEUE_MAX=%d", QUEUE_MAX);
    const char *env[] = {qenv,
                         "CHAT_WS_SLOW_GRACE=1s",
                         "CHAT_WS_RATE=1000",
                         "CHAT_WS_USER_RATE=1000",
                         "CHAT_TLS_CERT=",
                         "CHAT_TLS_KEY=",
                         asan_no_quarantine(),
                         NULL};
    char why[2400];
    ck_assert_msg(test_gateway_spawn(&stack, "gw", env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    const char *ctl_env[] = {"CHAT_WS_RATE=1000", "CHAT_WS_USER_RATE=1000", "CHAT_TLS_CERT=", "CHAT_TLS_KEY=", NULL};
    ck_assert_msg(test_gateway_spawn(&stack, "control", ctl_env, &ctl_gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&ctl_gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);

    char sender_user[80], fast_user[80], slow_user[80], ctl_user[80], conv[80], run[80];
    test_stack_unique_id("sender", sender_user, sizeof sender_user);
    test_stack_unique_id("fast", fast_user, sizeof fast_user);
    test_stack_unique_id("slow", slow_user, sizeof slow_user);
    test_stack_unique_id("control", ctl_user, sizeof ctl_user);
    test_stack_unique_id("busy", conv, sizeof conv);
    test_stack_unique_id("r", run, sizeof run);
    char *out = NULL;
    int rc =
        test_stack_chatctl(&stack, &out, "conv", "create", conv, sender_user, fast_user, slow_user, ctl_user, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create: exit %d: %s", rc, out ? out : "");
    free(out);

    by_cmid = json_object();
    nsent = 0;
    memset(msgs, 0, sizeof msgs);
    static double fast_lat[MAX_MSGS], ctl_lat[MAX_MSGS];
    for (int i = 0; i < MAX_MSGS; i++)
        fast_lat[i] = ctl_lat[i] = NAN;
    reader snd = {.name = "sender", .ids = json_object()};
    reader fast = {.name = "fast reader", .ids = json_object(), .lat_ms = fast_lat};
    reader slow = {.name = "slow reader", .ids = json_object()};
    reader ctl = {.name = "control reader (other gateway)", .ids = json_object(), .lat_ms = ctl_lat};
    snd.ws = connect_user(sender_user);
    fast.ws = connect_user(fast_user);
    slow.ws = connect_user(slow_user);
    ctl.ws = connect_user_to(&ctl_gw, ctl_user);

    char *body = malloc(BODY_BYTES + 1);
    memset(body, 'b', BODY_BYTES);
    body[BODY_BYTES] = '\0';
    double slow0 = slow_closes();
    int64_t rss0 = -1, rss_max = 0, rss_at_close = 0;
    long slow_bytes_at_close = 0;
    int64_t t0 = test_mono_ms(), t_stall = 0, t_closed = 0, t_end = 0;
    int first_stalled = -1;
    long slow_bytes_stalled = 0; /* bytes of msg frames meant for the slow reader while it stalled */
    int64_t next_scrape = 0;
    while (!t_end || test_mono_ms() < t_end) {
        int64_t now = test_mono_ms();
        /* open loop: message k goes out at t0 + k / RATE */
        while (nsent < MAX_MSGS && (!t_end || now < t_end) && t0 + (int64_t)nsent * 1000 / RATE <= now) {
            msgrec *m = &msgs[nsent];
            snprintf(m->cmid, sizeof m->cmid, "%s-%d", run, nsent);
            json_object_set_new(by_cmid, m->cmid, json_integer(nsent));
            m->sent_us = real_us();
            m->sent_ms = now;
            json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", m->cmid, "body", body);
            ck_assert_msg(ws_client_send_json(snd.ws, f) == CHAT_OK, "sender: %s", ws_client_error(snd.ws));
            json_decref(f);
            if (t_stall)
                slow_bytes_stalled += BODY_BYTES + 200;
            nsent++;
        }
        struct pollfd p[4] = {{.fd = ws_client_fd(snd.ws), .events = POLLIN},
                              {.fd = ws_client_fd(fast.ws), .events = POLLIN},
                              {.fd = ws_client_fd(ctl.ws), .events = POLLIN},
                              {.fd = ws_client_fd(slow.ws), .events = POLLIN}};
        int np = t_stall ? 3 : 4;
        if (!ws_client_buffered(snd.ws) && !ws_client_buffered(fast.ws) && !ws_client_buffered(ctl.ws) &&
            !(np == 4 && ws_client_buffered(slow.ws)))
            poll(p, (nfds_t)np, 2);
        drain(&snd, true);
        drain(&fast, false);
        drain(&ctl, false);
        if (!t_stall)
            drain(&slow, false);
        now = test_mono_ms();
        if (!t_stall && now - t0 >= WARMUP_MS) {
            /* the slow reader stops reading from here on */
            t_stall = now;
            first_stalled = nsent;
            rss0 = test_ops_rss(gw.pid);
            say(PROG ": warm-up done: %d sent, the slow reader holds seq 1..%lld and stops reading; gateway RSS "
                     "%.1f MiB\n",
                nsent, (long long)slow.last_seq, rss0 / 1048576.0);
        }
        if (t_stall && now >= next_scrape) {
            next_scrape = now + 100;
            int64_t rss = test_ops_rss(gw.pid);
            if (rss > rss_max)
                rss_max = rss;
            if (!t_closed && slow_closes() > slow0) {
                t_closed = now;
                rss_at_close = rss_max;
                slow_bytes_at_close = slow_bytes_stalled;
                t_end = now + AFTER_CLOSE_MS;
                say(PROG ": the gateway gave up on the slow reader %lld ms after it stopped reading (%ld bytes of "
                         "msg frames for it since)\n",
                    (long long)(now - t_stall), slow_bytes_stalled);
            }
            ck_assert_msg(t_closed || now - t_stall < FILL_LIMIT_MS + GRACE_MS + SWEEP_MS + 1000,
                          "the slow reader is not closed as a slow consumer %lld ms after it stopped reading (%ld "
                          "bytes of msg frames for it since, queue cap %d, grace %d ms); gateway log: %s",
                          (long long)(now - t_stall), slow_bytes_stalled, QUEUE_MAX, GRACE_MS,
                          test_gateway_log_tail(&gw, 800));
        }
    }
    /* every send acked, the fast reader has every message */
    for (int64_t t1 = test_mono_ms();;) {
        int acked = 0;
        for (int i = 0; i < nsent; i++)
            acked += msgs[i].acks > 0;
        if (acked == nsent && fast.msgs == nsent && snd.msgs == nsent && ctl.msgs == nsent)
            break;
        ck_assert_msg(test_mono_ms() - t1 < 15000,
                      "15 s after the last send: %d of %d acked, the fast reader has %ld, "
                      "the control reader %ld",
                      acked, nsent, fast.msgs, ctl.msgs);
        struct pollfd p[3] = {{.fd = ws_client_fd(snd.ws), .events = POLLIN},
                              {.fd = ws_client_fd(fast.ws), .events = POLLIN},
                              {.fd = ws_client_fd(ctl.ws), .events = POLLIN}};
        poll(p, 3, 20);
        drain(&snd, true);
        drain(&fast, false);
        drain(&ctl, false);
    }
    int64_t rss = test_ops_rss(gw.pid);
    if (rss > rss_max)
        rss_max = rss;

    /* the fast reader's latency while the slow one was stalled, beside the control reader's on the
     * other gateway (the same messages from the same ingest: what the machine and the platform
     * give without a slow consumer beside it) */
    int nlat = 0;
    static double lat[MAX_MSGS], clat[MAX_MSGS];
    for (int i = first_stalled; i < nsent; i++) {
        lat[nlat] = fast_lat[i];
        clat[nlat++] = ctl_lat[i];
    }
    double p50 = percentile(lat, nlat, 0.50), p99 = percentile(lat, nlat, 0.99), max = percentile(lat, nlat, 1.0);
    double c50 = percentile(clat, nlat, 0.50), c99 = percentile(clat, nlat, 0.99);
    say(PROG ": fast reader over the stall (%d messages of %d bytes at %d/s): p50 %.1f ms, p99 %.1f ms, max %.1f ms; "
             "control reader on the other gateway: p50 %.1f ms, p99 %.1f ms\n",
        nlat, BODY_BYTES, RATE, p50, p99, max, c50, c99);
    ck_assert_msg(p99 < P99_LIMIT_MS || p99 <= c99 + CONTROL_MARGIN_MS,
                  "the fast reader's send-to-msg p99 was %.1f ms (limit %d ms, or the control reader's %.1f ms + %d) "
                  "while the slow reader was stalled (p50 %.1f, max %.1f)",
                  p99, P99_LIMIT_MS, c99, CONTROL_MARGIN_MS, p50, max);
    /* memory: the slow reader's queue is capped; nothing more is queued for it once given up */
    long conv_bytes = (long)(nsent - first_stalled) * (BODY_BYTES + 200) * 3;
    say(PROG ": gateway RSS %.1f MiB before the stall, %.1f MiB when it gave up on the slow reader, at most %.1f MiB "
             "in all (the conversation carried %.1f MiB of msg frames meanwhile, %.1f MiB of them for the slow reader, "
             "%.1f MiB after it was given up)\n",
        rss0 / 1048576.0, rss_at_close / 1048576.0, rss_max / 1048576.0, conv_bytes / 1048576.0,
        slow_bytes_stalled / 1048576.0, (slow_bytes_stalled - slow_bytes_at_close) / 1048576.0);
    ck_assert_msg(rss_max - rss_at_close <= RSS_AFTER_SLACK,
                  "the gateway's RSS grew by %.1f MiB after it gave up on the slow reader (%.1f MiB of msg frames "
                  "for it since): frames are still kept for a closed slow consumer",
                  (rss_max - rss_at_close) / 1048576.0, (slow_bytes_stalled - slow_bytes_at_close) / 1048576.0);
    ck_assert_msg(rss_max - rss0 <= 2LL * QUEUE_MAX * 3 + RSS_SLACK,
                  "the gateway's RSS grew by %.1f MiB while the slow reader was stalled (bound: 2 x %d bytes x 3 "
                  "connections + %d MiB)",
                  (rss_max - rss0) / 1048576.0, QUEUE_MAX, RSS_SLACK >> 20);

    /* the slow reader reads again: what was on the wire, then the end of the connection. The close
     * 4008 when the gateway could write it; a reader that read nothing for all that time never
     * let it out, so the gateway hung up with a reset GW_CLOSE_WAIT_MS after giving up on it
     * (issue 19: a client that stops reading is let go whatever it does) */
    int64_t t_resume = test_mono_ms();
    int close_code = 0;
    bool reset = false;
    for (;;) {
        ws_message m;
        chat_status s = ws_client_recv(slow.ws, 10000, &m);
        if (s == CHAT_ERR_IO && ws_client_close_code(slow.ws) == 0) {
            reset = true;
            say(PROG ": the slow reader read %lld msgs in all, then the connection was reset (%s), %lld ms after "
                     "resuming\n",
                (long long)slow.last_seq, ws_client_error(slow.ws), (long long)(test_mono_ms() - t_resume));
            break;
        }
        ck_assert_msg(s == CHAT_OK, "slow reader after resuming: %s (%s) after seq %lld; want a close frame 4008 or a reset",
                      chat_status_str(s), ws_client_error(slow.ws), (long long)slow.last_seq);
        if (m.opcode == WS_OP_CLOSE) {
            close_code = m.close_code;
            say(PROG ": the slow reader read %lld msgs in all, then close %d \"%s\" (%lld ms after resuming)\n",
                (long long)slow.last_seq, m.close_code, m.data, (long long)(test_mono_ms() - t_resume));
            ws_message_clear(&m);
            break;
        }
        json_t *f = json_loadb(m.data, m.len, 0, NULL);
        ws_message_clear(&m);
        ck_assert_msg(f && strcmp(test_str(f, "type") ? test_str(f, "type") : "", "msg") == 0,
                      "slow reader: unexpected frame %s", test_json(f));
        on_msg(&slow, f, real_us());
        json_decref(f);
    }
    ck_assert_msg(close_code == 4008 || reset, "the slow reader was closed with %d, want 4008 (slow consumer) or a reset",
                  close_code);
    ck_assert_msg(slow.last_seq < nsent, "the slow reader got every message although it stalled");
    ws_client_destroy(slow.ws);
    slow.ws = NULL;
    ck_assert_msg(slow_closes() == slow0 + 1, "disconnects_total{reason=\"slow_consumer\"} grew by %g, want 1",
                  slow_closes() - slow0);
    for (int64_t t2 = test_mono_ms(); gauge("chat_gateway_connections") != 2;) {
        ck_assert_msg(test_mono_ms() - t2 < 3000, "chat_gateway_connections is %g after the slow reader's close",
                      gauge("chat_gateway_connections"));
        usleep(20000);
    }
    /* which rule closed it: over the cap for longer than the grace (what this rate is chosen for: the
     * queue grows by less than the cap within the grace), not twice over the cap at once */
    const char *log = test_gateway_log_tail(&gw, 4000);
    char line[512] = "";
    for (const char *p = log; p && *p;) {
        size_t n = strcspn(p, "\n");
        if (n < sizeof line) {
            char one[512];
            memcpy(one, p, n);
            one[n] = '\0';
            if (strstr(one, "event=slow_consumer") && strstr(one, slow_user))
                memcpy(line, one, n + 1);
        }
        p += n + (p[n] ? 1 : 0);
    }
    ck_assert_msg(line[0], "no event=slow_consumer line for %s in the gateway log: %s", slow_user, log);
    const char *q = strstr(line, "queued=");
    long long queued = q ? atoll(q + 7) : -1;
    double over_s = (double)(queued - QUEUE_MAX) / ((BODY_BYTES + 200.0) * RATE);
    say(PROG ": the gateway's log: %s (about %.2f s over the cap at %d frames a second)\n", line, over_s, RATE);
    ck_assert_msg(queued > QUEUE_MAX && queued + BODY_BYTES + 400 <= 2LL * QUEUE_MAX,
                  "the slow reader was closed with %lld bytes queued: not by CHAT_WS_SLOW_GRACE (over %d bytes for "
                  "longer than %d ms, at most about %d bytes at this rate) but by the twice-the-cap rule",
                  queued, QUEUE_MAX, GRACE_MS, QUEUE_MAX + (BODY_BYTES + 200) * RATE * GRACE_MS / 1000);
    ck_assert_msg(
        over_s >= 0.5 * GRACE_MS / 1000.0 && over_s <= (GRACE_MS + SWEEP_MS + 500) / 1000.0,
        "the slow reader was closed after about %.2f s over the cap (queued=%lld), CHAT_WS_SLOW_GRACE is %d ms", over_s,
        queued, GRACE_MS);

    /* it reconnects and syncs from its cursor */
    int64_t cursor = slow.last_seq;
    slow.ws = connect_user(slow_user);
    json_t *cursors = json_object();
    json_object_set_new(cursors, conv, json_integer((json_int_t)cursor));
    json_t *sync = json_pack("{s:s, s:o}", "type", "sync", "cursors", cursors);
    int64_t t_sync = test_mono_ms();
    ck_assert(ws_client_send_json(slow.ws, sync) == CHAT_OK);
    json_decref(sync);
    long synced_msgs = 0;
    for (;;) {
        json_t *f = NULL;
        chat_status s = ws_client_recv_json(slow.ws, 15000, &f);
        if (s != CHAT_OK && ws_client_close_code(slow.ws) == 4008) {
            const char *tail = test_gateway_log_tail(&gw, 4000), *last = tail, *p;
            while ((p = strstr(last + 1, "event=slow_consumer")) != NULL)
                last = p;
            ck_abort_msg("the reconnected slow reader, reading as fast as it can, was closed with 4008 during its "
                         "sync after %ld sync msgs (cursor %lld, %lld messages of %d bytes behind, "
                         "CHAT_WS_QUEUE_MAX %d): it can never catch up; gateway log: ...%.200s",
                         synced_msgs, (long long)cursor, (long long)(nsent - cursor), BODY_BYTES, QUEUE_MAX,
                         last == tail ? "(no slow_consumer line)" : last);
        }
        ck_assert_msg(s == CHAT_OK, "slow reader's sync from %lld: %s (%s) after seq %lld", (long long)cursor,
                      chat_status_str(s), ws_client_error(slow.ws), (long long)slow.last_seq);
        const char *type = test_str(f, "type");
        if (type && strcmp(type, "synced") == 0) {
            json_decref(f);
            break;
        }
        ck_assert_msg(type && strcmp(type, "msg") == 0 && strcmp(test_str(f, "conv"), conv) == 0,
                      "slow reader during sync: unexpected frame %s", test_json(f));
        on_msg(&slow, f, real_us()); /* exactly the next seq: no repeat, no gap, in order */
        synced_msgs++;
        json_decref(f);
    }
    say(PROG ": the slow reader synced %ld messages after its cursor %lld in %lld ms\n", synced_msgs, (long long)cursor,
        (long long)(test_mono_ms() - t_sync));
    ck_assert_msg(slow.last_seq == nsent, "after sync the slow reader holds seq 1..%lld of %d",
                  (long long)slow.last_seq, nsent);
    /* the same messages as the fast reader and the sender's acks */
    for (int i = 0; i < nsent; i++) {
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)msgs[i].seq);
        const char *a = json_string_value(json_object_get(slow.ids, key));
        const char *b = json_string_value(json_object_get(fast.ids, key));
        ck_assert_msg(msgs[i].acks == 1 && a && b && strcmp(a, msgs[i].id) == 0 && strcmp(b, msgs[i].id) == 0,
                      "%s: acked %d times as seq %lld id %s; the slow reader holds %s, the fast reader %s",
                      msgs[i].cmid, msgs[i].acks, (long long)msgs[i].seq, msgs[i].id, a ? a : "nothing",
                      b ? b : "nothing");
    }
    ck_assert_msg(json_object_size(slow.ids) == (size_t)nsent, "the slow reader holds %zu seqs for %d messages",
                  json_object_size(slow.ids), nsent);
    ck_assert_msg(gauge("chat_gateway_connections") == 3, "chat_gateway_connections %g after the reconnect",
                  gauge("chat_gateway_connections"));

    ck_assert(ws_client_shutdown(snd.ws, 5000) == CHAT_OK);
    ck_assert(ws_client_shutdown(fast.ws, 5000) == CHAT_OK);
    ck_assert(ws_client_shutdown(slow.ws, 5000) == CHAT_OK);
    ck_assert(ws_client_shutdown(ctl.ws, 5000) == CHAT_OK);
    json_decref(snd.ids);
    json_decref(fast.ids);
    json_decref(slow.ids);
    json_decref(ctl.ids);
    json_decref(by_cmid);
    free(body);
}
END_TEST

START_TEST(sync_backlog_over_twice_the_cap)
{
    char qenv[64];
    snprintf(qenv, sizeof qenv, "CHAT_WS_QUEUE_MAX=%d", SMALL_QUEUE_MAX);
    const char *env[] = {
        qenv, "CHAT_WS_SLOW_GRACE=1s", "CHAT_WS_RATE=1000", "CHAT_WS_USER_RATE=1000", "CHAT_TLS_CERT=", "CHAT_TLS_KEY=",
        NULL};
    char why[2400];
    ck_assert_msg(test_gateway_spawn(&stack, "small", env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
    char sender_user[80], reader_user[80], conv[80], run[80];
    test_stack_unique_id("sender", sender_user, sizeof sender_user);
    test_stack_unique_id("offline", reader_user, sizeof reader_user);
    test_stack_unique_id("backlog", conv, sizeof conv);
    test_stack_unique_id("r", run, sizeof run);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, sender_user, reader_user, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create: exit %d: %s", rc, out ? out : "");
    free(out);

    /* the backlog, one message at a time (never more than one 12 KB frame queued for the sender) */
    by_cmid = json_object();
    nsent = 0;
    memset(msgs, 0, sizeof msgs);
    reader snd = {.name = "sender", .ids = json_object()};
    snd.ws = connect_user(sender_user);
    char *body = malloc(BODY_BYTES + 1);
    memset(body, 'b', BODY_BYTES);
    body[BODY_BYTES] = '\0';
    for (int i = 0; i < BACKLOG_MSGS; i++) {
        msgrec *m = &msgs[nsent];
        snprintf(m->cmid, sizeof m->cmid, "%s-%d", run, nsent);
        json_object_set_new(by_cmid, m->cmid, json_integer(nsent));
        m->sent_us = real_us();
        json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", m->cmid, "body", body);
        ck_assert_msg(ws_client_send_json(snd.ws, f) == CHAT_OK, "sender: %s", ws_client_error(snd.ws));
        json_decref(f);
        nsent++;
        for (int64_t t1 = test_mono_ms(); m->acks == 0 || snd.msgs < nsent;) {
            ck_assert_msg(test_mono_ms() - t1 < 10000, "message %d: no ack and msg within 10 s", i);
            struct pollfd p = {.fd = ws_client_fd(snd.ws), .events = POLLIN};
            if (!ws_client_buffered(snd.ws))
                poll(&p, 1, 20);
            drain(&snd, true);
        }
    }
    free(body);

    /* the reader comes online and syncs from 0 */
    reader rd = {.name = "reader", .ids = json_object()};
    rd.ws = connect_user(reader_user);
    json_t *cursors = json_object();
    json_object_set_new(cursors, conv, json_integer(0));
    json_t *sync = json_pack("{s:s, s:o}", "type", "sync", "cursors", cursors);
    int64_t t_sync = test_mono_ms();
    ck_assert(ws_client_send_json(rd.ws, sync) == CHAT_OK);
    json_decref(sync);
    for (;;) {
        json_t *f = NULL;
        chat_status s = ws_client_recv_json(rd.ws, 15000, &f);
        if (s != CHAT_OK && ws_client_close_code(rd.ws) == 4008) {
            const char *tail = test_gateway_log_tail(&gw, 4000), *last = tail, *p;
            while ((p = strstr(last + 1, "event=slow_consumer")) != NULL)
                last = p;
            ck_abort_msg("a reader syncing %d messages of %d bytes (%.0f KiB, more than 2 x CHAT_WS_QUEUE_MAX = %d "
                         "KiB), reading as fast as it can, was closed with 4008 \"slow consumer\" after %ld msgs; a "
                         "reconnecting client with this backlog can never catch up; gateway log: ...%.200s",
                         nsent, BODY_BYTES, nsent * (BODY_BYTES + 200) / 1024.0, 2 * SMALL_QUEUE_MAX / 1024, rd.msgs,
                         last == tail ? "(no slow_consumer line)" : last);
        }
        ck_assert_msg(s == CHAT_OK, "reader's sync: %s (%s) after seq %lld", chat_status_str(s), ws_client_error(rd.ws),
                      (long long)rd.last_seq);
        const char *type = test_str(f, "type");
        if (type && strcmp(type, "synced") == 0) {
            json_decref(f);
            break;
        }
        ck_assert_msg(type && strcmp(type, "msg") == 0, "reader during sync: unexpected frame %s", test_json(f));
        on_msg(&rd, f, real_us()); /* exactly the next seq */
        json_decref(f);
    }
    say(PROG ": a reader synced %ld messages of %d bytes through CHAT_WS_QUEUE_MAX=%d in %lld ms\n", rd.msgs,
        BODY_BYTES, SMALL_QUEUE_MAX, (long long)(test_mono_ms() - t_sync));
    ck_assert_msg(rd.last_seq == nsent, "after sync the reader holds seq 1..%lld of %d", (long long)rd.last_seq, nsent);
    for (int i = 0; i < nsent; i++) {
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)msgs[i].seq);
        const char *a = json_string_value(json_object_get(rd.ids, key));
        ck_assert_msg(a && strcmp(a, msgs[i].id) == 0, "%s acked as seq %lld id %s; the reader holds %s", msgs[i].cmid,
                      (long long)msgs[i].seq, msgs[i].id, a ? a : "nothing");
    }
    ck_assert(ws_client_shutdown(snd.ws, 5000) == CHAT_OK);
    ck_assert(ws_client_shutdown(rd.ws, 5000) == CHAT_OK);
    json_decref(snd.ids);
    json_decref(rd.ids);
    json_decref(by_cmid);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create("ops_slow_consumer");
    TCase *tc = tcase_create("slow_consumer");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, slow_consumer_is_closed_and_syncs);
    suite_add_tcase(s, tc);
    /* its own TCase, so that it can be tagged (tcase_set_tags) on its own */
    TCase *ts = tcase_create("small_cap");
    tcase_set_timeout(ts, 60);
    tcase_add_checked_fixture(ts, setup, teardown);
    tcase_add_test(ts, sync_backlog_over_twice_the_cap);
    suite_add_tcase(s, ts);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
