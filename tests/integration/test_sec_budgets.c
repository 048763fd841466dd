/* Per-connection budgets (issue 19, finding 3; docs/security.md, "Budgets"): every cost one
 * connection can make the gateway pay is bounded by a number, and each case here goes past one of
 * them against a gateway of its own (the stack's NATS, PostgreSQL, Redis and workers; the
 * production defaults unless a case says otherwise), with real WebSocket clients:
 *   typing     alternating between two conversations is still one typing per conversation per
 *              second (the old limiter remembered one conversation), and typing into many at once
 *              stops at the connection's typing budget;
 *   presence   a burst of presence queries is answered up to the connection's budget, the rest
 *              get rate_limited;
 *   status     resending a refused cmid over and over makes at most GW_STATUS_CHAINS sends poll
 *              post.status at a time, at most GW_STATUS_POLL_RATE polls a second (counted on NATS);
 *   lookups    seen frames for random conversations make at most GW_LOOKUPS_INFLIGHT
 *              members.check requests at once (counted on NATS), posts into random conversations
 *              are refused once their not_member answers spent the lookup budget, and a member's
 *              sends queued behind a check keep their order;
 *   cache      the membership cache holds at most CHAT_WS_MEMBERSHIP_CACHE conversations: past it
 *              the oldest answer is asked for again;
 *   rate       a frame over CHAT_WS_RATE is refused before it is parsed: rate_limited without ref;
 *   reader     a client that never reads (a raw socket after the handshake) in a flooded
 *              conversation is dropped (reset) within CHAT_WS_SLOW_GRACE + 2 s of being given up.
 * Gateway logs: $CHAT_HOME/logs/test_sec_budgets-<case>.log. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nats/nats.h>

#include "chat_nats.h"
#include "test_check.h"
#include "test_ops.h"

#define PROG "test_sec_budgets"
#define say(...) (printf(__VA_ARGS__), fflush(stdout))

/* the gateway's budgets (gateway/gw_budget.h), as documented */
#define TYPING_RATE 2
#define PRESENCE_BURST 4
#define STATUS_CHAINS 4
#define STATUS_POLL_RATE 8
#define LOOKUPS_INFLIGHT 8
#define LOOKUP_BURST 20

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

/* A gateway of the test's own with the production defaults of the limits the test stack raises
 * (scripts/test), then env on top. */
static void start_gateway(const char *name, const char *const *env)
{
    const char *all[16] = {"CHAT_WS_RATE=50", "CHAT_WS_USER_RATE=100", "CHAT_WS_INFLIGHT_MAX=1000"};
    for (int i = 0, n = 3; env && env[i] && n < 15; i++)
        all[n++] = env[i];
    char why[2400];
    ck_assert_msg(test_gateway_spawn(&stack, name, all, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
}

static ws_client *connect_user(const char *user)
{
    return test_gateway_user(&stack, &gw, user);
}

static void create_conv(const char *conv, const char *a, const char *b)
{
    test_conv_create(&stack, conv, a, b);
}

static void send_json(ws_client *c, json_t *f)
{
    ck_assert_msg(ws_client_send_json(c, f) == CHAT_OK, "send: %s", ws_client_error(c));
    json_decref(f);
}

/* Frames on c until deadline_ms, each passed to fn (which may keep count in ctx). */
static void recv_until(ws_client *c, int64_t deadline_ms, void (*fn)(json_t *f, void *ctx), void *ctx)
{
    for (;;) {
        json_t *f = NULL;
        chat_status s = test_recv_by(c, deadline_ms, &f);
        if (s == CHAT_ERR_TIMEOUT)
            return;
        ck_assert_msg(s == CHAT_OK, "receive: %s (%s)", chat_status_str(s), ws_client_error(c));
        fn(f, ctx);
        json_decref(f);
    }
}

static bool is(const json_t *f, const char *type, const char *code)
{
    const char *t = test_str(f, "type"), *k = test_str(f, "code");
    return t && strcmp(t, type) == 0 && (code == NULL || (k && strcmp(k, code) == 0));
}

/* ---- a NATS observer: counts requests on one API subject ---- */

typedef struct observer {
    natsConnection *nc;
    natsSubscription *sub;
} observer;

static void observe(observer *o, const char *subject)
{
    ck_assert_msg(chat_nats_connect(&stack.cfg, "test-sec-budgets", true, &o->nc) == CHAT_OK, "NATS connect");
    ck_assert_int_eq(natsConnection_SubscribeSync(&o->sub, o->nc, subject), NATS_OK);
    natsSubscription_SetPendingLimits(o->sub, -1, -1);
    ck_assert_int_eq(natsConnection_Flush(o->nc), NATS_OK);
}

/* Requests seen so far whose payload contains text (NULL: any). */
static int observed(observer *o, const char *text)
{
    int n = 0;
    natsMsg *m = NULL;
    while (natsSubscription_NextMsg(&m, o->sub, 0) == NATS_OK) {
        int len = natsMsg_GetDataLength(m);
        const char *d = natsMsg_GetData(m);
        if (text == NULL || (d && memmem(d, (size_t)len, text, strlen(text))))
            n++;
        natsMsg_Destroy(m);
    }
    return n;
}

/* On an observer of ">": the members.check requests naming text, in all (*total) and the most
 * waiting for their reply at one time (the return value). */
static int checks_in_flight(observer *o, const char *text, int *total)
{
    json_t *waiting = json_object();
    int now = 0, most = 0;
    *total = 0;
    natsMsg *m = NULL;
    while (natsSubscription_NextMsg(&m, o->sub, 0) == NATS_OK) {
        const char *subject = natsMsg_GetSubject(m), *reply = natsMsg_GetReply(m);
        const char *d = natsMsg_GetData(m);
        int len = natsMsg_GetDataLength(m);
        if (strcmp(subject, CHAT_API_GW_PREFIX "members.check") == 0 && reply && d &&
            memmem(d, (size_t)len, text, strlen(text))) {
            json_object_set_new(waiting, reply, json_true());
            (*total)++;
            most = ++now > most ? now : most;
        } else if (json_object_get(waiting, subject)) {
            json_object_del(waiting, subject);
            now--;
        }
        natsMsg_Destroy(m);
    }
    json_decref(waiting);
    return most;
}

static void observer_close(observer *o)
{
    natsSubscription_Destroy(o->sub);
    natsConnection_Destroy(o->nc);
}

/* ------------------------------------------------------------------ typing */

typedef struct typing_count {
    const char *c1, *c2;
    int n1, n2, other;
} typing_count;

static void count_typing(json_t *f, void *ctx)
{
    typing_count *t = ctx;
    if (!is(f, "typing", NULL))
        return;
    const char *conv = test_str(f, "conv");
    if (strcmp(conv, t->c1) == 0)
        t->n1++;
    else if (strcmp(conv, t->c2) == 0)
        t->n2++;
    else
        t->other++;
}

START_TEST(typing_alternating_and_many_conversations)
{
    start_gateway("typing", NULL);
    char typer[80], watcher[80], c1[80], c2[80];
    test_stack_unique_id("typer", typer, sizeof typer);
    test_stack_unique_id("watcher", watcher, sizeof watcher);
    test_stack_unique_id("t1", c1, sizeof c1);
    test_stack_unique_id("t2", c2, sizeof c2);
    create_conv(c1, typer, watcher);
    create_conv(c2, typer, watcher);
    enum { MANY = 12 };
    char many[MANY][80];
    for (int i = 0; i < MANY; i++) {
        test_stack_unique_id("tm", many[i], sizeof many[i]);
        create_conv(many[i], typer, watcher);
    }
    ws_client *t = connect_user(typer), *w = connect_user(watcher);

    /* 20 typing frames a second for 3 s, alternating c1 and c2 (under CHAT_WS_RATE) */
    typing_count n = {.c1 = c1, .c2 = c2};
    int64_t t0 = test_mono_ms();
    for (int i = 0; i < 60; i++) {
        send_json(t, json_pack("{s:s, s:s}", "type", "typing", "conv", i % 2 ? c2 : c1));
        recv_until(w, t0 + (i + 1) * 50, count_typing, &n);
    }
    recv_until(w, test_mono_ms() + 500, count_typing, &n);
    double secs = (test_mono_ms() - t0) / 1000.0;
    say(PROG ": typing alternating two conversations, 60 frames in %.1f s: the other member got %d for one, %d for "
             "the other\n",
        secs, n.n1, n.n2);
    int per_conv = 1 + (int)secs; /* one per conversation per second */
    ck_assert_msg(n.n1 >= 1 && n.n2 >= 1, "typing must still reach the other member (%d, %d)", n.n1, n.n2);
    ck_assert_msg(n.n1 <= per_conv && n.n2 <= per_conv,
                  "alternating two conversations, typing reached the other member %d and %d times in %.1f s: the "
                  "limit is one per conversation per second (at most %d each)",
                  n.n1, n.n2, secs, per_conv);

    /* the connection's typing budget: twelve conversations at once, after a rest (a full bucket) */
    usleep(2500 * 1000);
    typing_count m = {.c1 = c1, .c2 = c2};
    t0 = test_mono_ms();
    for (int i = 0; i < MANY; i++)
        send_json(t, json_pack("{s:s, s:s}", "type", "typing", "conv", many[i]));
    recv_until(w, test_mono_ms() + 1500, count_typing, &m);
    secs = (test_mono_ms() - t0) / 1000.0;
    say(PROG ": typing into %d conversations at once: the other member got %d\n", MANY, m.other);
    ck_assert_msg(m.other <= 2 * TYPING_RATE + 1,
                  "typing into %d conversations at once reached the other member %d times: the connection's "
                  "typing budget is %d a second, burst %d",
                  MANY, m.other, TYPING_RATE, 2 * TYPING_RATE);
    ck_assert_msg(m.other >= 1, "no typing at all got through");
    ws_client_shutdown(t, 2000);
    ws_client_shutdown(w, 2000);
}
END_TEST

/* ------------------------------------------------------------------ presence */

typedef struct answers {
    int presence, limited, not_member, acked, other;
    json_t *limited_refs; /* refs (or null) of the rate_limited answers */
    json_t *acks;         /* ack frames in order */
} answers;

static void count_answer(json_t *f, void *ctx)
{
    answers *a = ctx;
    if (is(f, "presence", NULL))
        a->presence++;
    else if (is(f, "error", "rate_limited")) {
        a->limited++;
        if (a->limited_refs)
            json_array_append(a->limited_refs, json_object_get(f, "ref") ? json_object_get(f, "ref") : json_null());
    } else if (is(f, "error", "not_member"))
        a->not_member++;
    else if (is(f, "ack", NULL)) {
        a->acked++;
        if (a->acks)
            json_array_append(a->acks, f);
    } else
        a->other++;
}

START_TEST(presence_queries_limited)
{
    start_gateway("presence", NULL);
    char user[80];
    test_stack_unique_id("asker", user, sizeof user);
    ws_client *c = connect_user(user);
    enum { N = 20 };
    for (int i = 0; i < N; i++) {
        char who[80];
        test_stack_unique_id("who", who, sizeof who);
        send_json(c, json_pack("{s:s, s:[s]}", "type", "presence", "users", who));
    }
    answers a = {0};
    recv_until(c, test_mono_ms() + 2000, count_answer, &a);
    say(PROG ": %d presence queries at once: %d answered, %d rate_limited, %d other\n", N, a.presence, a.limited,
        a.other);
    ck_assert_msg(a.presence + a.limited == N && a.other == 0, "every query gets one answer: %d + %d of %d (%d other)",
                  a.presence, a.limited, N, a.other);
    ck_assert_msg(a.presence <= PRESENCE_BURST + 1,
                  "%d presence queries at once were all queued for Redis (%d answered): the connection's budget is a "
                  "burst of %d",
                  N, a.presence, PRESENCE_BURST);
    /* later, the budget is back */
    usleep(1000 * 1000);
    send_json(c, json_pack("{s:s, s:[s]}", "type", "presence", "users", user));
    answers b = {0};
    recv_until(c, test_mono_ms() + 1500, count_answer, &b);
    ck_assert_msg(b.presence == 1, "a query a second later: %d answered, %d rate_limited", b.presence, b.limited);
    ws_client_shutdown(c, 2000);
}
END_TEST

/* ------------------------------------------------------------------ post.status polls */

START_TEST(status_polls_bounded)
{
    start_gateway("status", NULL);
    char user[80], peer[80], conv[80], cmid[80];
    test_stack_unique_id("poller", user, sizeof user);
    test_stack_unique_id("peer", peer, sizeof peer);
    test_stack_unique_id("st", conv, sizeof conv);
    test_stack_unique_id("k", cmid, sizeof cmid);
    create_conv(conv, user, peer);
    ws_client *c = connect_user(user);
    /* an edit of a message that does not exist: refused by the ingest, never stored */
    json_t *edit = json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "edit", "conv", conv, "cmid", cmid, "target",
                             (json_int_t)999999, "body", "x");
    ck_assert(ws_client_send_json(c, edit) == CHAT_OK);
    json_t *f = NULL;
    ck_assert_msg(test_recv_type(c, "error", 10000, &f, NULL) == CHAT_OK, "the refused edit got no error");
    say(PROG ": the edit was refused: %s\n", test_json(f));
    json_decref(f);

    observer o;
    observe(&o, CHAT_API_GW_PREFIX "post.status");
    enum { RESENDS = 10 };
    int64_t t0 = test_mono_ms();
    for (int i = 0; i < RESENDS; i++) /* the same cmid again: a duplicate for the broker each time */
        ck_assert(ws_client_send_json(c, edit) == CHAT_OK);
    json_decref(edit);
    answers a = {.limited_refs = json_array()};
    recv_until(c, t0 + 3000, count_answer, &a);
    double secs = (test_mono_ms() - t0) / 1000.0;
    int polls = observed(&o, cmid);
    say(PROG ": %d resends of a refused cmid: %d post.status requests in %.1f s, %d rate_limited at once, %d other "
             "answers\n",
        RESENDS, polls, secs, a.limited, a.other);
    ck_assert_msg(a.limited >= RESENDS - STATUS_CHAINS,
                  "%d resends of a refused cmid: only %d refused; at most %d may poll post.status at once", RESENDS,
                  a.limited, STATUS_CHAINS);
    for (size_t i = 0; i < json_array_size(a.limited_refs); i++)
        ck_assert_msg(json_is_string(json_array_get(a.limited_refs, i)) &&
                          strcmp(json_string_value(json_array_get(a.limited_refs, i)), cmid) == 0,
                      "a rate_limited resend must name its cmid: %s", test_json(a.limited_refs));
    double allowed = 2 * STATUS_POLL_RATE + STATUS_POLL_RATE * secs + 1;
    ck_assert_msg(polls <= allowed,
                  "%d post.status requests in %.1f s for one connection's resends: the budget is %d a second "
                  "(burst %d), at most %.0f",
                  polls, secs, STATUS_POLL_RATE, 2 * STATUS_POLL_RATE, allowed);
    json_decref(a.limited_refs);
    observer_close(&o);
    ws_client_shutdown(c, 2000);
}
END_TEST

/* ------------------------------------------------------------------ membership lookups */

START_TEST(membership_lookups_bounded)
{
    start_gateway("lookups", NULL);
    char user[80], poster[80], member[80], friend[80], conv[80];
    test_stack_unique_id("seer", user, sizeof user);
    test_stack_unique_id("poster", poster, sizeof poster);
    test_stack_unique_id("member", member, sizeof member);
    test_stack_unique_id("friend", friend, sizeof friend);
    test_stack_unique_id("ok", conv, sizeof conv);
    create_conv(conv, member, friend);
    observer o;
    observe(&o, ">");

    /* seen for 100 conversations no one has (within CHAT_WS_RATE's burst): each would be a
     * members.check, a database call */
    ws_client *c = connect_user(user);
    enum { SEEN = 100 };
    int64_t t0 = test_mono_ms();
    for (int i = 0; i < SEEN; i++) {
        char rnd[80];
        test_stack_unique_id("rnd", rnd, sizeof rnd);
        send_json(c, json_pack("{s:s, s:s, s:i}", "type", "seen", "conv", rnd, "seq", 1));
    }
    answers a = {0};
    recv_until(c, test_mono_ms() + 3000, count_answer, &a);
    double secs = (test_mono_ms() - t0) / 1000.0;
    int checks = 0, most = checks_in_flight(&o, user, &checks);
    say(PROG ": %d seen frames for random conversations: %d members.check requests (at most %d waiting at once) in "
             "%.1f s, %d not_member, %d rate_limited\n",
        SEEN, checks, most, secs, a.not_member, a.limited);
    ck_assert_msg(most <= LOOKUPS_INFLIGHT,
                  "%d seen frames for random conversations had %d members.check requests waiting at once: the "
                  "connection's budget is %d in flight",
                  SEEN, most, LOOKUPS_INFLIGHT);
    ck_assert_msg(checks <= LOOKUP_BURST + LOOKUP_BURST / 2 * secs,
                  "%d seen frames for random conversations made %d members.check requests in %.1f s: the "
                  "connection's budget is %d a second, burst %d",
                  SEEN, checks, secs, LOOKUP_BURST / 2, LOOKUP_BURST);
    ck_assert_msg(a.not_member == checks && a.not_member + a.limited == SEEN && a.other == 0,
                  "answers: %d not_member, %d rate_limited, %d other of %d", a.not_member, a.limited, a.other, SEEN);

    /* posts into random conversations: published unchecked, but each not_member answer costs a lookup;
     * once the budget is spent, such posts are refused before they are published */
    ws_client *p = connect_user(poster);
    enum { POSTS = 2 * LOOKUP_BURST, MORE = 10 };
    for (int i = 0; i < POSTS; i++) {
        char rnd[80], k[80];
        test_stack_unique_id("rnd", rnd, sizeof rnd);
        test_stack_unique_id("k", k, sizeof k);
        send_json(p, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", rnd, "cmid", k, "body", "x"));
    }
    answers b = {0};
    for (int64_t end = test_mono_ms() + 5000; b.not_member + b.limited + b.other < POSTS && test_mono_ms() < end;)
        recv_until(p, test_mono_ms() + 50, count_answer, &b);
    for (int i = 0; i < MORE; i++) {
        char rnd[80], k[80];
        test_stack_unique_id("rnd", rnd, sizeof rnd);
        test_stack_unique_id("k", k, sizeof k);
        send_json(p, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", rnd, "cmid", k, "body", "x"));
    }
    answers d = {0};
    recv_until(p, test_mono_ms() + 2000, count_answer, &d);
    say(PROG ": %d posts into random conversations: %d not_member, %d rate_limited; %d more after: %d not_member, %d "
             "rate_limited\n",
        POSTS, b.not_member, b.limited, MORE, d.not_member, d.limited);
    ck_assert_msg(d.limited >= MORE - 1,
                  "after %d not_member answers, %d more posts into random conversations were published (%d refused): "
                  "each not_member costs one of the connection's lookups (%d a second, burst %d)",
                  b.not_member, d.not_member, d.limited, LOOKUP_BURST / 2, LOOKUP_BURST);

    /* a member's sends queued behind a check keep their order */
    ws_client *m = connect_user(member);
    send_json(m, json_pack("{s:s, s:s, s:i}", "type", "seen", "conv", conv, "seq", 0));
    char run[80];
    test_stack_unique_id("o", run, sizeof run);
    for (int i = 0; i < 5; i++) {
        char k[96];
        snprintf(k, sizeof k, "%s-%d", run, i);
        send_json(m, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", k, "body", "in order"));
    }
    answers e = {.acks = json_array()};
    recv_until(m, test_mono_ms() + 3000, count_answer, &e);
    ck_assert_msg(e.acked == 5, "the member's 5 sends behind a check: %d acked (%d limited, %d other)", e.acked,
                  e.limited, e.other);
    for (int i = 0; i < 5; i++) {
        json_t *ack = json_array_get(e.acks, (size_t)i);
        char k[96];
        snprintf(k, sizeof k, "%s-%d", run, i);
        ck_assert_msg(strcmp(test_str(ack, "cmid"), k) == 0 && test_int(ack, "seq") == i + 1,
                      "sends behind a membership check out of order: ack %d is %s", i, test_json(ack));
    }
    json_decref(e.acks);
    observer_close(&o);
    ws_client_shutdown(c, 2000);
    ws_client_shutdown(p, 2000);
    ws_client_shutdown(m, 2000);
}
END_TEST

/* ------------------------------------------------------------------ the membership cache */

START_TEST(membership_cache_bounded)
{
    enum { CACHE = 20 };
    const char *env[] = {"CHAT_WS_MEMBERSHIP_CACHE=20", NULL};
    start_gateway("cache", env);
    char member[80], friend[80], conv[80], stranger[80];
    test_stack_unique_id("member", member, sizeof member);
    test_stack_unique_id("friend", friend, sizeof friend);
    test_stack_unique_id("kept", conv, sizeof conv);
    test_stack_unique_id("stranger", stranger, sizeof stranger);
    create_conv(conv, member, friend);
    observer o;
    observe(&o, CHAT_API_GW_PREFIX "members.check");
    ws_client *m = connect_user(member), *s = connect_user(stranger);
    /* the member's seen: one check, then answered from the cache */
    for (int i = 0; i < 2; i++) {
        send_json(m, json_pack("{s:s, s:s, s:i}", "type", "seen", "conv", conv, "seq", 0));
        answers a = {0};
        recv_until(m, test_mono_ms() + 700, count_answer, &a);
        ck_assert_msg(a.other + a.limited + a.not_member == 0, "the member's seen was answered: %d limited %d other",
                      a.limited, a.other);
    }
    int before = observed(&o, member);
    ck_assert_msg(before == 1, "two seen frames of a member made %d members.check requests, want 1 (cached)", before);
    /* a stranger fills the cache with 2 x CACHE conversations, a few at a time (its own budget) */
    int answered = 0;
    for (int round = 0; answered < 2 * CACHE && round < 40; round++) {
        for (int i = 0; i < LOOKUPS_INFLIGHT / 2; i++) {
            char rnd[80];
            test_stack_unique_id("fill", rnd, sizeof rnd);
            send_json(s, json_pack("{s:s, s:s, s:i}", "type", "seen", "conv", rnd, "seq", 1));
        }
        answers a = {0};
        recv_until(s, test_mono_ms() + 400, count_answer, &a);
        answered += a.not_member;
    }
    ck_assert_msg(answered >= 2 * CACHE, "the stranger's lookups: only %d answered", answered);
    observed(&o, NULL);
    /* the member's conversation was the oldest entry: asked for again */
    send_json(m, json_pack("{s:s, s:s, s:i}", "type", "seen", "conv", conv, "seq", 0));
    answers a = {0};
    recv_until(m, test_mono_ms() + 1000, count_answer, &a);
    int after = observed(&o, member);
    say(PROG ": CHAT_WS_MEMBERSHIP_CACHE=%d, %d conversations looked up since: the member's seen made %d "
             "members.check again\n",
        CACHE, answered, after);
    ck_assert_msg(after == 1,
                  "after %d other conversations went through a cache of %d, the member's conversation was still "
                  "cached (%d checks): the cache is not bounded",
                  answered, CACHE, after);
    observer_close(&o);
    ws_client_shutdown(m, 2000);
    ws_client_shutdown(s, 2000);
}
END_TEST

/* ------------------------------------------------------------------ frames over the rate */

START_TEST(frame_over_rate_refused_unparsed)
{
    start_gateway("rate", NULL);
    char user[80], conv[80], friend[80];
    test_stack_unique_id("fast", user, sizeof user);
    test_stack_unique_id("friend", friend, sizeof friend);
    test_stack_unique_id("r", conv, sizeof conv);
    create_conv(conv, user, friend);
    ws_client *c = connect_user(user);
    /* 150 pings and then sends at once: CHAT_WS_RATE 50, burst 100 */
    for (int i = 0; i < 150; i++) {
        char k[32];
        snprintf(k, sizeof k, "c%d", i);
        if (i < 100)
            send_json(c, json_pack("{s:s}", "type", "ping"));
        else
            send_json(c, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", k, "body", "x"));
    }
    answers a = {.limited_refs = json_array()};
    recv_until(c, test_mono_ms() + 2000, count_answer, &a);
    say(PROG ": 150 frames at once: %d rate_limited; their refs %s\n", a.limited, test_json(a.limited_refs));
    ck_assert_msg(a.limited >= 40, "150 frames at once: only %d rate_limited", a.limited);
    for (size_t i = 0; i < json_array_size(a.limited_refs); i++)
        ck_assert_msg(json_is_null(json_array_get(a.limited_refs, i)),
                      "a frame over the rate was parsed before it was refused (its answer names its cmid): %s",
                      test_json(a.limited_refs));
    json_decref(a.limited_refs);
    ws_client_shutdown(c, 2000);
}
END_TEST

/* ------------------------------------------------------------------ a client that never reads */

/* The state (st column, 1 = ESTABLISHED) of the IPv4 TCP socket from local_port to remote_port on
 * 127.0.0.1, from /proc/net/tcp; -1 when there is none. */
static int tcp_state(int local_port, int remote_port)
{
    FILE *fp = fopen("/proc/net/tcp", "r");
    if (fp == NULL)
        return -1;
    char line[512];
    int state = -1;
    while (fgets(line, sizeof line, fp)) {
        unsigned la, lp, ra, rp, st;
        if (sscanf(line, " %*d: %x:%x %x:%x %x", &la, &lp, &ra, &rp, &st) == 5 && (int)lp == local_port &&
            (int)rp == remote_port)
            state = (int)st;
    }
    fclose(fp);
    return state;
}

/* A raw TCP connection that upgrades to /ws as user, reading the 101 answer's head byte by byte (no
 * further), with a small receive buffer. Returns the socket; *local_port is its port. */
static int raw_never_reader(int port, const char *user, int *local_port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert(fd >= 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect to the gateway");
    char *token = test_stack_token(&stack, user, 3600);
    char req[8192];
    int n = snprintf(req, sizeof req,
                     "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "Authorization: Bearer %s\r\n\r\n",
                     port, token);
    free(token);
    ck_assert(write(fd, req, (size_t)n) == n);
    char head[2048];
    size_t got = 0;
    while (got < sizeof head - 1 && (got < 4 || memcmp(head + got - 4, "\r\n\r\n", 4) != 0)) {
        ssize_t r = read(fd, head + got, 1);
        ck_assert_msg(r == 1, "the upgrade answer ended early");
        got++;
    }
    head[got] = '\0';
    ck_assert_msg(strncmp(head, "HTTP/1.1 101", 12) == 0, "upgrade refused: %s", head);
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &len);
    *local_port = ntohs(me.sin_port);
    return fd;
}

static double scrape(const char *key)
{
    char why[600];
    json_t *m = test_metrics_scrape(gw.listen, why, sizeof why);
    ck_assert_msg(m != NULL, "metrics: %s", why);
    double v = test_metric(m, key);
    json_decref(m);
    return v;
}

static void drain_all(ws_client **c, int n)
{
    for (int i = 0; i < n; i++) {
        json_t *f = NULL;
        while (ws_client_recv_json(c[i], 0, &f) == CHAT_OK)
            json_decref(f);
    }
}

START_TEST(never_reading_client_dropped)
{
    enum { GRACE_MS = 1000, FLOODERS = 3, BODY = 12000 };
    const char *env[] = {"CHAT_WS_QUEUE_MAX=65536", "CHAT_WS_SLOW_GRACE=1s", NULL};
    start_gateway("reader", env);
    char conv[80], reader[80], users[FLOODERS][80];
    test_stack_unique_id("flooded", conv, sizeof conv);
    test_stack_unique_id("deaf", reader, sizeof reader);
    char *out = NULL;
    for (int i = 0; i < FLOODERS; i++)
        test_stack_unique_id("flood", users[i], sizeof users[i]);
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, reader, users[0], users[1], users[2], NULL);
    ck_assert_msg(rc == 0, "chatctl conv create: exit %d: %s", rc, out ? out : "");
    free(out);
    /* the flooders on the stack's gateway (its default queue): on a starved test machine they
     * read late, and on this gateway's 64 KiB queue they would be given up too; here only the
     * never-reader is (the deliveries reach both gateways through NATS) */
    ws_client *fl[FLOODERS];
    for (int i = 0; i < FLOODERS; i++)
        fl[i] = test_connect_user(&stack, users[i]);
    int rport = 0;
    int fd = raw_never_reader(gw.port, reader, &rport);
    ck_assert_msg(tcp_state(rport, gw.port) == 1, "the never-reader is not connected");
    double slow0 = scrape("chat_gateway_disconnects_total{reason=\"slow_consumer\"}");
    double conns0 = scrape("chat_gateway_connections");

    char *body = malloc(BODY + 1);
    memset(body, 'z', BODY);
    body[BODY] = '\0';
    int64_t t0 = test_mono_ms(), t_slow = 0, t_gone = 0, next_scrape = 0;
    long sent = 0;
    while (!t_gone && test_mono_ms() - t0 < 20000) {
        /* each flooder 40 messages a second (under CHAT_WS_RATE), reading what comes back */
        int64_t now = test_mono_ms();
        while (sent < (now - t0) * 40 * FLOODERS / 1000) {
            char k[40];
            snprintf(k, sizeof k, "f%ld", sent);
            send_json(fl[sent % FLOODERS],
                      json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", k, "body", body));
            sent++;
        }
        drain_all(fl, FLOODERS);
        usleep(5000);
        if (now >= next_scrape) {
            next_scrape = now + 100;
            if (!t_slow && scrape("chat_gateway_disconnects_total{reason=\"slow_consumer\"}") > slow0)
                t_slow = now;
            int st = tcp_state(rport, gw.port);
            if (t_slow && st != 1 && tcp_state(gw.port, rport) != 1)
                t_gone = now;
            ck_assert_msg(!t_slow || now - t_slow <= GRACE_MS + 2000 + 500,
                          "the gateway gave up on a client that reads nothing %lld ms ago (slow_consumer counted) but "
                          "the connection is still there (client side state %d, gateway side %d; 1 = established)",
                          (long long)(now - t_slow), st, tcp_state(gw.port, rport));
        }
    }
    free(body);
    ck_assert_msg(t_slow, "no slow_consumer disconnect in %lld ms of flood (%ld messages of %d bytes)",
                  (long long)(test_mono_ms() - t0), sent, BODY);
    say(PROG ": a client that reads nothing: given up %lld ms into the flood, its connection gone %lld ms later (%ld "
             "messages sent)\n",
        (long long)(t_slow - t0), (long long)(t_gone - t_slow), sent);
    /* the gateway let go of it: its connections gauge is back to what it was without it */
    for (int64_t t1 = test_mono_ms(); scrape("chat_gateway_connections") != conns0 - 1;) {
        ck_assert_msg(test_mono_ms() - t1 < 2000, "chat_gateway_connections is %g, want %g after the drop",
                      scrape("chat_gateway_connections"), conns0 - 1);
        drain_all(fl, FLOODERS);
        usleep(50000);
    }
    ck_assert_msg(scrape("chat_gateway_disconnects_total{reason=\"slow_consumer\"}") == slow0 + 1,
                  "one slow consumer, %g counted", scrape("chat_gateway_disconnects_total{reason=\"slow_consumer\"}") - slow0);
    close(fd);
    for (int i = 0; i < FLOODERS; i++)
        ws_client_destroy(fl[i]);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create("sec_budgets");
    TCase *tc = tcase_create("budgets");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, typing_alternating_and_many_conversations);
    tcase_add_test(tc, presence_queries_limited);
    tcase_add_test(tc, status_polls_bounded);
    tcase_add_test(tc, membership_lookups_bounded);
    tcase_add_test(tc, membership_cache_bounded);
    tcase_add_test(tc, frame_over_rate_refused_unparsed);
    tcase_add_test(tc, never_reading_client_dropped);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
