/* SIGTERM to a gateway under traffic (issue 6, graceful stop; docs/operations.md "Graceful
 * stop"). sigterm_under_traffic: the test starts two gateways of its own, A and B (the stack's environment, ports of
 * their own), and four users with six devices, three on each gateway, in a group of all four and a
 * 1:1 conversation. Every device sends at a steady pace, pipelining. Mid-traffic A gets SIGTERM:
 *   - right after kill(), with A's clients not read meanwhile, the test probes A again and again
 *     until it is gone: once /readyz has answered 503 it never answers 200 again and no new
 *     upgrade succeeds (one upgraded before the signal was handled gets 1001 like the others);
 *     B's /readyz stays 200;
 *   - every client of A gets a close frame with code 1001 (within the 3 s A gives requests in
 *     flight plus slack); B's clients are untouched (their live stream stays gapless, in order);
 *   - A's clients reconnect to B like a client behind a load balancer would, send again every
 *     message that had no ack (same cmid), sync from their cursors and go on sending;
 *   - A exits with status 0 within a few seconds, its log saying it drained every session;
 *   - in the end nothing is lost or doubled: every message is acked with one seq and id (also
 *     when acked twice), each conversation's seqs run 1..N with one message each, and every device
 *     of every member holds every seq with the same id (a repeat after a sync is dropped by id, as
 *     the protocol allows, and counted).
 * stopping_gateway_answers_503 (docs/operations.md, Graceful stop, step 1): a gateway with
 * publishes in flight gets SIGTERM and is probed at once: its /readyz must answer 503 ("gateway
 * stopping") and a new upgrade must get HTTP 503 before it is gone.
 * Gateway logs: $CHAT_HOME/logs/test_ops_sigterm-{A,B,C}.log. */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_ops.h"

#define PROG "test_ops_sigterm"
#define say(...) (printf(__VA_ARGS__), fflush(stdout))

#define N_USERS 4
#define N_DEVS 6
#define N_CONVS 2
#define PER_DEV_RATE 25    /* messages per second per device */
#define KILL_AT_MS 1500    /* SIGTERM to A after this much traffic */
#define SEND_UNTIL_MS 4000 /* scheduled sends stop here */
#define DRAIN_MS 20000     /* then everything must be acked and delivered within this */
#define MAX_MSGS 2000
#define CLOSE_LIMIT_MS 5000 /* 3 s for requests in flight, 0.3 s for cursors, slack */
#define EXIT_LIMIT_MS 8000
#define RETRY_MS 4000 /* no ack for this long: send the same cmid again */

static test_stack stack;
static test_gateway gws[2]; /* A, B */

static void setup(void)
{
    memset(gws, 0, sizeof gws);
}

static void teardown(void)
{
    for (int i = 0; i < 2; i++)
        test_gateway_stop(&gws[i], 10000);
}

typedef struct msgrec {
    char cmid[96];
    int conv, dev;
    int sends, acks;
    int64_t seq;
    char id[40];
    int64_t last_send_ms;
} msgrec;

typedef struct convstate {
    json_t *ids;       /* seq (text) -> id, what this device holds */
    int64_t live_next; /* the next seq live delivery must bring (0: not checked, after a reconnect) */
    long repeats;
} convstate;

typedef struct dev {
    char name[128];
    int user;
    int gw;        /* 0 A, 1 B: where it is connected now */
    ws_client *ws; /* NULL while away */
    bool syncing;
    int64_t closed_ms; /* when A's close frame came */
    int close_code;
    int reconnects;
    convstate cs[N_CONVS];
    int64_t next_due_ms; /* the next scheduled send */
    int sent_sched;      /* scheduled sends so far */
    int64_t sync_sent_ms, synced_ms;
    long sync_msgs;
} dev;

static struct {
    char users[N_USERS][80];
    char convs[N_CONVS][80];
    bool member[N_CONVS][N_USERS];
    dev devs[N_DEVS];
    msgrec msgs[MAX_MSGS];
    int nmsgs;
    json_t *index; /* cmid -> message */
    char run[80];
    long resends, unavailable;
} t;

static int conv_of(const char *conv)
{
    for (int c = 0; conv && c < N_CONVS; c++)
        if (strcmp(t.convs[c], conv) == 0)
            return c;
    return -1;
}

static void send_msg(dev *d, msgrec *m, int64_t now)
{
    json_t *f =
        json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", t.convs[m->conv], "cmid", m->cmid, "body", m->cmid);
    chat_status s = ws_client_send_json(d->ws, f);
    json_decref(f);
    ck_assert_msg(s == CHAT_OK, "%s: send: %s (%s)", d->name, chat_status_str(s), ws_client_error(d->ws));
    m->sends++;
    m->last_send_ms = now;
}

static void connect_dev(dev *d, int g)
{
    json_t *hello = NULL;
    char why[700];
    chat_status s = test_gateway_connect(&stack, &gws[g], t.users[d->user], 10000, &d->ws, &hello, why, sizeof why);
    ck_assert_msg(s == CHAT_OK, "%s to gateway %c: %s", d->name, "AB"[g], why);
    ck_assert_msg(strcmp(test_str(hello, "type") ? test_str(hello, "type") : "", "hello") == 0, "%s: first frame %s",
                  d->name, test_json(hello));
    json_decref(hello);
    d->gw = g;
}

static int64_t max_contiguous(const convstate *cs)
{
    int64_t n = 0;
    char key[32];
    for (;;) {
        snprintf(key, sizeof key, "%lld", (long long)(n + 1));
        if (!json_object_get(cs->ids, key))
            return n;
        n++;
    }
}

/* A's close came: reconnect to B, send again what had no ack, sync from the cursors. */
static void reconnect(dev *d, int64_t now)
{
    ws_client_destroy(d->ws);
    d->ws = NULL;
    connect_dev(d, 1);
    d->reconnects++;
    for (int i = 0; i < t.nmsgs; i++)
        if (t.msgs[i].dev == (int)(d - t.devs) && t.msgs[i].acks == 0) {
            send_msg(d, &t.msgs[i], now);
            t.resends++;
        }
    json_t *cursors = json_object();
    for (int c = 0; c < N_CONVS; c++)
        if (t.member[c][d->user]) {
            json_object_set_new(cursors, t.convs[c], json_integer((json_int_t)max_contiguous(&d->cs[c])));
            d->cs[c].live_next = 0; /* sync pages and live messages interleave from here */
        }
    json_t *f = json_pack("{s:s, s:o}", "type", "sync", "cursors", cursors);
    ck_assert(ws_client_send_json(d->ws, f) == CHAT_OK);
    json_decref(f);
    d->syncing = true;
    d->sync_sent_ms = now;
}

static void on_frame(dev *d, json_t *f, int64_t now)
{
    const char *type = test_str(f, "type");
    type = type ? type : "";
    if (strcmp(type, "msg") == 0) {
        int c = conv_of(test_str(f, "conv"));
        ck_assert_msg(c >= 0 && t.member[c][d->user], "%s: msg of a conversation it is not in: %s", d->name,
                      test_json(f));
        convstate *cs = &d->cs[c];
        int64_t seq = test_int(f, "seq");
        const char *id = test_str(f, "id");
        ck_assert_msg(seq >= 1 && id, "%s: msg without seq or id: %s", d->name, test_json(f));
        if (cs->live_next) {
            ck_assert_msg(seq == cs->live_next,
                          "%s: live msg seq %lld in %s where %lld was next (a gap or a "
                          "reordering on a connection that was never dropped): %s",
                          d->name, (long long)seq, t.convs[c], (long long)cs->live_next, test_json(f));
            cs->live_next = seq + 1;
        }
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)seq);
        const char *had = json_string_value(json_object_get(cs->ids, key));
        if (had) {
            ck_assert_msg(strcmp(had, id) == 0, "%s: seq %lld of %s came with id %s and with id %s", d->name,
                          (long long)seq, t.convs[c], had, id);
            cs->repeats++;
        } else {
            json_object_set_new(cs->ids, key, json_string(id));
        }
        if (d->syncing)
            d->sync_msgs++;
    } else if (strcmp(type, "ack") == 0) {
        json_t *v = json_object_get(t.index, test_str(f, "cmid") ? test_str(f, "cmid") : "");
        ck_assert_msg(v != NULL, "%s: ack of an unknown cmid: %s", d->name, test_json(f));
        msgrec *m = &t.msgs[json_integer_value(v)];
        ck_assert_msg(m->dev == (int)(d - t.devs), "%s: ack of another device's message: %s", d->name, test_json(f));
        int64_t seq = test_int(f, "seq");
        const char *id = test_str(f, "id");
        if (m->acks++ == 0) {
            m->seq = seq;
            snprintf(m->id, sizeof m->id, "%s", id ? id : "");
        } else {
            ck_assert_msg(m->seq == seq && id && strcmp(m->id, id) == 0,
                          "%s acked as seq %lld id %s and again as seq %lld id %s (stored twice?)", m->cmid,
                          (long long)m->seq, m->id, (long long)seq, id ? id : "?");
        }
    } else if (strcmp(type, "synced") == 0) {
        ck_assert_msg(d->syncing, "%s: synced without a sync", d->name);
        d->syncing = false;
        d->synced_ms = now;
    } else if (strcmp(type, "error") == 0 &&
               strcmp(test_str(f, "code") ? test_str(f, "code") : "", "unavailable") == 0) {
        t.unavailable++; /* sent again after RETRY_MS */
    } else {
        ck_abort_msg("%s: unexpected frame %s", d->name, test_json(f));
    }
}

/* Reads what d has now; a close frame from A starts the reconnect. */
static void drain(dev *d, int64_t t_kill)
{
    while (d->ws) {
        ws_message m;
        chat_status s = ws_client_recv(d->ws, 0, &m);
        if (s == CHAT_ERR_TIMEOUT)
            return;
        int64_t now = test_mono_ms();
        if (s == CHAT_OK && m.opcode == WS_OP_CLOSE) {
            ck_assert_msg(d->gw == 0 && t_kill, "%s: closed by gateway %c with %d \"%s\" (only A is stopped)", d->name,
                          "AB"[d->gw], m.close_code, m.data);
            d->close_code = m.close_code;
            d->closed_ms = now;
            ws_message_clear(&m);
            reconnect(d, now);
            continue;
        }
        ck_assert_msg(s == CHAT_OK, "%s on gateway %c: %s (%s)%s", d->name, "AB"[d->gw], chat_status_str(s),
                      ws_client_error(d->ws), d -> gw == 0 && t_kill ? ": A's client lost without a close frame" : "");
        json_t *f = m.opcode == WS_OP_TEXT ? json_loadb(m.data, m.len, 0, NULL) : NULL;
        ck_assert_msg(f != NULL, "%s: a frame that is not JSON text: %.200s", d->name, m.data);
        ws_message_clear(&m);
        on_frame(d, f, now);
        json_decref(f);
    }
}

static void pump(int64_t t_kill, int timeout_ms)
{
    struct pollfd p[N_DEVS];
    int n = 0;
    bool buffered = false;
    for (int k = 0; k < N_DEVS; k++)
        if (t.devs[k].ws) {
            p[n].fd = ws_client_fd(t.devs[k].ws);
            p[n].events = POLLIN;
            p[n].revents = 0;
            n++;
            buffered |= ws_client_buffered(t.devs[k].ws);
        }
    if (!buffered)
        poll(p, (nfds_t)n, timeout_ms);
    for (int k = 0; k < N_DEVS; k++)
        drain(&t.devs[k], t_kill);
}

/* Scheduled sends that are due, and sends again of messages without an ack for RETRY_MS. */
static void send_due(int64_t now, int64_t t0)
{
    for (int k = 0; k < N_DEVS; k++) {
        dev *d = &t.devs[k];
        if (!d->ws)
            continue;
        while (now - t0 < SEND_UNTIL_MS && d->next_due_ms <= now && t.nmsgs < MAX_MSGS) {
            msgrec *m = &t.msgs[t.nmsgs];
            /* the group gets two of three, the 1:1 conversation (users 0 and 1) the rest */
            m->conv = (d->user <= 1 && d->sent_sched % 3 == 2) ? 1 : 0;
            m->dev = k;
            snprintf(m->cmid, sizeof m->cmid, "%s-d%d-%d", t.run, k, d->sent_sched);
            json_object_set_new(t.index, m->cmid, json_integer(t.nmsgs));
            t.nmsgs++;
            d->sent_sched++;
            d->next_due_ms += 1000 / PER_DEV_RATE;
            send_msg(d, m, now);
        }
    }
    for (int i = 0; i < t.nmsgs; i++) {
        msgrec *m = &t.msgs[i];
        dev *d = &t.devs[m->dev];
        if (m->acks == 0 && d->ws && now - m->last_send_ms > RETRY_MS) {
            send_msg(d, m, now);
            t.resends++;
        }
    }
}

static bool all_done(long *acked_out, long *missing_out)
{
    long acked = 0, missing = 0;
    int64_t top[N_CONVS] = {0};
    for (int i = 0; i < t.nmsgs; i++) {
        acked += t.msgs[i].acks > 0;
        if (t.msgs[i].seq > top[t.msgs[i].conv])
            top[t.msgs[i].conv] = t.msgs[i].seq;
    }
    for (int k = 0; k < N_DEVS; k++)
        for (int c = 0; c < N_CONVS; c++)
            if (t.member[c][t.devs[k].user]) {
                int64_t have = max_contiguous(&t.devs[k].cs[c]);
                missing += have < top[c] ? top[c] - have : 0;
            }
    *acked_out = acked;
    *missing_out = missing;
    bool synced = true;
    for (int k = 0; k < N_DEVS; k++)
        synced &= !t.devs[k].syncing;
    return acked == t.nmsgs && missing == 0 && synced;
}

/* What a load balancer sees of a gateway from the moment it gets SIGTERM. */
typedef struct probe_result {
    int64_t t_kill;
    int64_t ready_503, upgrade_503, gone_ms; /* ms after SIGTERM + 1, 0: never */
    char ready_body[1024];
    char log[512];
    ws_client *upgraded; /* an upgrade accepted before the signal was handled */
} probe_result;

/* Sends SIGTERM to g, then at once (the test reads none of g's clients meanwhile): GET /readyz and
 * a new upgrade as user, again and again until g answers neither and has exited (at most 2 s).
 * Before the signal is handled g may still answer 200 (and 101); from its first 503 on, never
 * again (asserted here). */
static void probe_after_sigterm(test_gateway *g, const char *user, probe_result *pr)
{
    memset(pr, 0, sizeof *pr);
    ck_assert_int_eq(kill(g->pid, SIGTERM), 0);
    pr->t_kill = test_mono_ms();
    size_t po = 0;
    char last[32] = "";
    int repeats = 0;
    for (int i = 0; i < 400 && test_mono_ms() - pr->t_kill < 2000; i++) {
        char body[1024];
        int st = test_ops_http_get(g->listen, "/readyz", body, sizeof body, 1000);
        ck_assert_msg(!(pr->ready_503 && st == 200), "%s's /readyz answered 200 after a 503 (probes: %s)", g->name,
                      pr->log);
        if (st == 503 && !pr->ready_503) {
            pr->ready_503 = test_mono_ms() - pr->t_kill + 1;
            snprintf(pr->ready_body, sizeof pr->ready_body, "%s", body);
        }
        char *token = test_stack_token(&stack, user, 600);
        ws_connect_opts o = {.host = "127.0.0.1", .port = g->port, .path = "/ws", .token = token, .timeout_ms = 1000};
        ws_connect_info info;
        ws_client *c = NULL;
        chat_status cs = ws_client_connect(&o, &c, &info);
        free(token);
        ck_assert_msg(!(pr->ready_503 && cs == CHAT_OK),
                      "a new upgrade to %s succeeded after its /readyz said 503 "
                      "(probes: %s)",
                      g->name, pr->log);
        if (cs == CHAT_OK && !pr->upgraded)
            pr->upgraded = c;
        else
            ws_client_destroy(c);
        if (info.http_status == 503 && !pr->upgrade_503)
            pr->upgrade_503 = test_mono_ms() - pr->t_kill + 1;
        /* the log: "status/status" per probe, repeats counted ("0/0 x42") */
        char one[32];
        snprintf(one, sizeof one, "%d/%d", st, info.http_status);
        if (strcmp(one, last) == 0) {
            repeats++;
        } else {
            if (repeats > 1 && po < sizeof pr->log - 32)
                po += (size_t)snprintf(pr->log + po, sizeof pr->log - po, " x%d", repeats);
            if (po < sizeof pr->log - 32)
                po += (size_t)snprintf(pr->log + po, sizeof pr->log - po, "%s%s", po ? " " : "", one);
            snprintf(last, sizeof last, "%s", one);
            repeats = 1;
        }
        if (st == 0 && info.http_status == 0 && !test_gateway_running(g))
            break; /* gone */
    }
    if (repeats > 1 && po < sizeof pr->log - 32)
        snprintf(pr->log + po, sizeof pr->log - po, " x%d", repeats);
    pr->gone_ms = test_mono_ms() - pr->t_kill;
}

/* A client a stopping gateway upgraded before the signal was handled gets 1001 like the others. */
static void check_probe_client(probe_result *pr)
{
    if (!pr->upgraded)
        return;
    ws_message m;
    int code = 0;
    while (ws_client_recv(pr->upgraded, 5000, &m) == CHAT_OK) {
        code = m.opcode == WS_OP_CLOSE ? m.close_code : code;
        ws_message_clear(&m);
        if (code)
            break;
    }
    ws_client_destroy(pr->upgraded);
    pr->upgraded = NULL;
    ck_assert_msg(code == 1001, "a client upgraded right after SIGTERM was closed with %d, want 1001", code);
}

START_TEST(sigterm_under_traffic)
{
    const char *env[] = {"CHAT_WS_RATE=1000", "CHAT_WS_USER_RATE=1000", "CHAT_TLS_CERT=", "CHAT_TLS_KEY=", NULL};
    char why[2400];
    for (int g = 0; g < 2; g++) {
        ck_assert_msg(test_gateway_spawn(&stack, g ? "B" : "A", env, &gws[g], why, sizeof why) == CHAT_OK, "%s", why);
    }
    for (int g = 0; g < 2; g++)
        ck_assert_msg(test_gateway_wait_ready(&gws[g], false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
    test_gateway *A = &gws[0], *B = &gws[1];

    memset(&t, 0, sizeof t);
    t.index = json_object();
    test_stack_unique_id("r", t.run, sizeof t.run);
    for (int u = 0; u < N_USERS; u++) {
        char prefix[16];
        snprintf(prefix, sizeof prefix, "user%d", u);
        test_stack_unique_id(prefix, t.users[u], sizeof t.users[u]);
        t.member[0][u] = true;
    }
    t.member[1][0] = t.member[1][1] = true;
    test_stack_unique_id("group", t.convs[0], sizeof t.convs[0]);
    test_stack_unique_id("direct", t.convs[1], sizeof t.convs[1]);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", t.convs[0], t.users[0], t.users[1], t.users[2],
                                t.users[3], NULL);
    ck_assert_msg(rc == 0, "chatctl conv create: exit %d: %s", rc, out ? out : "");
    free(out);
    rc = test_stack_chatctl(&stack, &out, "conv", "create", t.convs[1], t.users[0], t.users[1], NULL);
    ck_assert_msg(rc == 0, "chatctl conv create: exit %d: %s", rc, out ? out : "");
    free(out);

    /* user 0: A and B; user 1: A; user 2: B; user 3: A and B */
    static const int dev_user[N_DEVS] = {0, 0, 1, 2, 3, 3};
    static const int dev_gw[N_DEVS] = {0, 1, 0, 1, 0, 1};
    int64_t t0 = test_mono_ms();
    for (int k = 0; k < N_DEVS; k++) {
        dev *d = &t.devs[k];
        d->user = dev_user[k];
        snprintf(d->name, sizeof d->name, "%s on %c (device %d)", t.users[d->user], "AB"[dev_gw[k]], k);
        for (int c = 0; c < N_CONVS; c++) {
            d->cs[c].ids = json_object();
            d->cs[c].live_next = 1;
        }
        connect_dev(d, dev_gw[k]);
        d->next_due_ms = t0 + k * 1000 / PER_DEV_RATE / N_DEVS; /* spread the devices over a period */
    }

    int64_t t_kill = 0, t_exit = 0;
    probe_result probe;
    memset(&probe, 0, sizeof probe);
    for (;;) {
        int64_t now = test_mono_ms();
        send_due(now, t0);
        if (!t_kill && now - t0 >= KILL_AT_MS) {
            /* SIGTERM to A, then /readyz and new upgrades at once (see probe_after_sigterm) */
            probe_after_sigterm(A, t.users[2], &probe);
            t_kill = probe.t_kill;
            say(PROG ": SIGTERM to A after %d messages; probes of A since (/readyz status / upgrade status, 0: no "
                     "answer): %s (%lld ms)\n",
                t.nmsgs, probe.log, (long long)probe.gone_ms);
            char bbody[512];
            int bst = test_ops_http_get(B->listen, "/readyz", bbody, sizeof bbody, 1000);
            ck_assert_msg(bst == 200, "B's /readyz answered %d while A stops: %s", bst, bbody);
        }
        if (t_kill && !t_exit && !test_gateway_running(A))
            t_exit = test_mono_ms();
        long acked, missing;
        if (now - t0 >= SEND_UNTIL_MS && all_done(&acked, &missing))
            break;
        if (now - t0 >= SEND_UNTIL_MS + DRAIN_MS) {
            all_done(&acked, &missing);
            ck_abort_msg("%d s after the last send: %ld of %d messages acked, %ld deliveries missing at member devices",
                         DRAIN_MS / 1000, acked, t.nmsgs, missing);
        }
        for (int k = 0; k < N_DEVS; k++)
            if (t_kill && dev_gw[k] == 0 && !t.devs[k].closed_ms)
                ck_assert_msg(now - t_kill < CLOSE_LIMIT_MS, "%s: no close frame %d ms after SIGTERM to A",
                              t.devs[k].name, CLOSE_LIMIT_MS);
        pump(t_kill, 5);
    }

    /* A: gone, cleanly */
    ck_assert_msg(test_gateway_wait_exit(A, (int)(EXIT_LIMIT_MS - (test_mono_ms() - t_kill))) == CHAT_OK,
                  "A still runs %d ms after SIGTERM; its log ends: %s", EXIT_LIMIT_MS, test_gateway_log_tail(A, 1500));
    if (!t_exit)
        t_exit = test_mono_ms();
    ck_assert_msg(WIFEXITED(A->exit_status) && WEXITSTATUS(A->exit_status) == 0, "A exited with status 0x%x: %s",
                  A->exit_status, test_gateway_log_tail(A, 1500));
    const char *alog = test_gateway_log_tail(A, 3000);
    ck_assert_msg(strstr(alog, "event=draining") && strstr(alog, "event=drained sessions_left=0"),
                  "A's log does not show a drain that closed every session: %s", alog);

    /* A's clients: 1001, reconnected to B, synced */
    for (int k = 0; k < N_DEVS; k++) {
        dev *d = &t.devs[k];
        if (dev_gw[k] == 0) {
            ck_assert_msg(d->close_code == 1001, "%s: closed with %d, want 1001", d->name, d->close_code);
            ck_assert_msg(d->reconnects == 1 && d->gw == 1 && d->synced_ms, "%s: %d reconnects, on %c, synced %s",
                          d->name, d->reconnects, "AB"[d->gw], d -> synced_ms ? "yes" : "no");
            say(PROG ": %s: close 1001 %lld ms after SIGTERM, synced %ld msgs on B in %lld ms\n", d->name,
                (long long)(d->closed_ms - t_kill), d->sync_msgs, (long long)(d->synced_ms - d->sync_sent_ms));
        } else {
            ck_assert_msg(d->reconnects == 0 && d->close_code == 0, "%s (on B) was disconnected", d->name);
        }
    }

    /* nothing lost, nothing doubled */
    json_t *by_seq[N_CONVS];
    int64_t top[N_CONVS] = {0};
    long per_conv[N_CONVS] = {0};
    for (int c = 0; c < N_CONVS; c++)
        by_seq[c] = json_object();
    for (int i = 0; i < t.nmsgs; i++) {
        msgrec *m = &t.msgs[i];
        ck_assert_msg(m->acks >= 1 && m->seq >= 1, "%s never acked", m->cmid);
        char key[32];
        snprintf(key, sizeof key, "%lld", (long long)m->seq);
        json_t *other = json_object_get(by_seq[m->conv], key);
        ck_assert_msg(other == NULL, "%s and %s both acked as seq %lld of %s", m->cmid,
                      other ? t.msgs[json_integer_value(other)].cmid : "", (long long)m->seq, t.convs[m->conv]);
        json_object_set_new(by_seq[m->conv], key, json_integer(i));
        per_conv[m->conv]++;
        if (m->seq > top[m->conv])
            top[m->conv] = m->seq;
    }
    long repeats = 0;
    for (int c = 0; c < N_CONVS; c++) {
        ck_assert_msg(top[c] == per_conv[c], "%s: seqs up to %lld for %ld messages (a gap or a message stored twice)",
                      t.convs[c], (long long)top[c], per_conv[c]);
        for (int k = 0; k < N_DEVS; k++) {
            dev *d = &t.devs[k];
            if (!t.member[c][d->user])
                continue;
            ck_assert_msg(json_object_size(d->cs[c].ids) == (size_t)top[c], "%s holds %zu seqs of %s, want %lld",
                          d->name, json_object_size(d->cs[c].ids), t.convs[c], (long long)top[c]);
            for (int64_t seq = 1; seq <= top[c]; seq++) {
                char key[32];
                snprintf(key, sizeof key, "%lld", (long long)seq);
                msgrec *m = &t.msgs[json_integer_value(json_object_get(by_seq[c], key))];
                const char *id = json_string_value(json_object_get(d->cs[c].ids, key));
                ck_assert_msg(id && strcmp(id, m->id) == 0, "%s: seq %lld of %s is %s, acked as %s (%s)", d->name,
                              (long long)seq, t.convs[c], id ? id : "missing", m->id, m->cmid);
            }
            repeats += d->cs[c].repeats;
        }
        json_decref(by_seq[c]);
    }
    long acked_twice = 0;
    for (int i = 0; i < t.nmsgs; i++)
        acked_twice += t.msgs[i].acks > 1;

    /* B holds everyone now */
    json_t *bm = test_metrics_scrape(B->listen, why, sizeof why);
    ck_assert_msg(bm != NULL, "B: %s", why);
    ck_assert_msg(test_metric(bm, "chat_gateway_connections") == N_DEVS &&
                      test_metric(bm, "chat_gateway_users") == N_USERS,
                  "B: connections %g, users %g; want %d and %d", test_metric(bm, "chat_gateway_connections"),
                  test_metric(bm, "chat_gateway_users"), N_DEVS, N_USERS);
    json_decref(bm);
    say(PROG
        ": %d messages (%lld in the group, %lld in the 1:1), one message per seq; %ld sends again with the same "
        "cmid (after the reconnect or no ack), %ld messages acked twice (same seq and id), %ld `unavailable`; every "
        "device holds every seq; %ld repeats dropped by id; A exited %lld ms after SIGTERM\n",
        t.nmsgs, (long long)top[0], (long long)top[1], t.resends, acked_twice, t.unavailable, repeats,
        (long long)(t_exit - t_kill));

    /* what a load balancer saw: asserted in stopping_gateway_answers_503 */
    check_probe_client(&probe);
    say(PROG ": A's /readyz: %s; a new upgrade to A: %s\n", probe.ready_503 ? "503 seen" : "never 503 (no answer)",
        probe.upgrade_503 ? "503 seen" : "never 503 (no answer)");

    for (int k = 0; k < N_DEVS; k++) {
        ws_client_shutdown(t.devs[k].ws, 3000);
        for (int c = 0; c < N_CONVS; c++)
            json_decref(t.devs[k].cs[c].ids);
    }
    json_decref(t.index);
}
END_TEST

/* docs/operations.md, Graceful stop, step 1: "at once: /readyz answers 503 (gateway stopping) and
 * every new upgrade gets HTTP 503 ..., so the load balancer takes it out of rotation within two
 * checks". A gateway with clients that send all the time (publishes in flight) gets SIGTERM; the
 * test probes it at once, again and again, until it is gone. */
START_TEST(stopping_gateway_answers_503)
{
    const char *env[] = {"CHAT_WS_RATE=1000", "CHAT_WS_USER_RATE=1000", "CHAT_TLS_CERT=", "CHAT_TLS_KEY=", NULL};
    char why[2400];
    test_gateway *g = &gws[0];
    ck_assert_msg(test_gateway_spawn(&stack, "C", env, g, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(g, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
    char u1[80], u2[80], conv[80], run[80];
    test_stack_unique_id("stop1", u1, sizeof u1);
    test_stack_unique_id("stop2", u2, sizeof u2);
    test_stack_unique_id("stop", conv, sizeof conv);
    test_stack_unique_id("r", run, sizeof run);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, u1, u2, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create: exit %d: %s", rc, out ? out : "");
    free(out);
    ws_client *c[2];
    const char *users[2] = {u1, u2};
    for (int i = 0; i < 2; i++) {
        json_t *hello = NULL;
        ck_assert_msg(test_gateway_connect(&stack, g, users[i], 10000, &c[i], &hello, why, sizeof why) == CHAT_OK, "%s",
                      why);
        json_decref(hello);
    }
    /* traffic: both send 100 messages back to back (many in flight), read until half are acked */
    int acked = 0;
    for (int n = 0; n < 100; n++)
        for (int i = 0; i < 2; i++) {
            char cmid[128];
            snprintf(cmid, sizeof cmid, "%s-%d-%d", run, i, n);
            json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cmid, "body", cmid);
            ck_assert(ws_client_send_json(c[i], f) == CHAT_OK);
            json_decref(f);
        }
    for (int64_t t0 = test_mono_ms(); acked < 100;) {
        ck_assert_msg(test_mono_ms() - t0 < 20000, "only %d acks within 20 s", acked);
        json_t *f = NULL;
        if (ws_client_recv_json(c[0], 20, &f) == CHAT_OK) {
            acked += strcmp(test_str(f, "type") ? test_str(f, "type") : "", "ack") == 0;
            json_decref(f);
        }
    }
    probe_result pr;
    probe_after_sigterm(g, u2, &pr);
    check_probe_client(&pr);
    ck_assert_msg(test_gateway_wait_exit(g, EXIT_LIMIT_MS) == CHAT_OK, "the gateway still runs %d ms after SIGTERM",
                  EXIT_LIMIT_MS);
    say(PROG ": probes after SIGTERM (/readyz status / upgrade status, 0: no answer): %s; gone after %lld ms\n", pr.log,
        (long long)pr.gone_ms);
    ck_assert_msg(pr.ready_503,
                  "the stopping gateway's /readyz never answered 503: probes from right after kill() "
                  "(/readyz status / upgrade status, 0: no answer): %s; it drained and exited within %lld ms, so a "
                  "load balancer never sees \"gateway stopping\" (it sees connection refused)",
                  pr.log, (long long)pr.gone_ms);
    ck_assert_msg(pr.upgrade_503,
                  "no new upgrade to the stopping gateway got HTTP 503: probes (/readyz status / "
                  "upgrade status, 0: no answer): %s; /readyz said 503 %lld ms after the signal (body \"%s\"); it was "
                  "gone %lld ms after the signal",
                  pr.log, (long long)pr.ready_503 - 1, pr.ready_body, (long long)pr.gone_ms);
    for (int i = 0; i < 2; i++)
        ws_client_destroy(c[i]);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create("ops_sigterm");
    TCase *tc = tcase_create("sigterm");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, sigterm_under_traffic);
    suite_add_tcase(s, tc);
    /* its own TCase, so that it can be tagged (tcase_set_tags) on its own */
    TCase *tw = tcase_create("stop_window");
    tcase_set_timeout(tw, 60);
    tcase_add_checked_fixture(tw, setup, teardown);
    tcase_add_test(tw, stopping_gateway_answers_503);
    suite_add_tcase(s, tw);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
