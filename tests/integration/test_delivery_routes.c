/* One delivery per gateway per batch (docs/architecture.md, "The hot path", step 4), against two
 * gateways of its own (the stack's NATS, PostgreSQL, Redis and worker). A group of five members:
 * two on the first gateway, two on the second, one on both. There is no per-user path.
 *
 * routed_once_in_order_then_held_without_redis:
 *   - every connection syncs first (the sync waits for the user's route claim to be written), then
 *     a burst of messages reaches every connection once each, in seq order, through the
 *     per-gateway path: the worker's chat_ingest_deliveries_total{path="gateway"} grows by at least
 *     one per event and member, and both gateways count DeliveryBatches
 *     (chat_gateway_routed_batches_total);
 *   - bob's second device connects on the second gateway (a new route, while the ingest has bob's
 *     routes cached): a burst reaches it too, once each, in order;
 *   - with the stack's Redis stopped, a second burst is held: nothing reaches anyone for 3 s;
 *   - with Redis started again (empty: a new epoch), every session is closed with 1012 within
 *     20 s; reconnected and synced from its cursor, each gets the whole held burst (by the sync,
 *     or live once the ingest's hold of the new epoch ends), in order, without a hole, and a
 *     third burst reaches everyone live.
 * rejection_to_its_gateway_only: a post the ingest refuses is told through the gateway it came
 *   from, never on the sender's own subject.
 * receipts_typing_members_by_routes: a 1:1 message, a receipt, a typing and a membership change
 *   reach the other gateway by routes, none on a user's own subject.
 * Gateway logs: $CHAT_HOME/logs/test_delivery_routes-{g1,g2}.log. */
#include <check.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_redis.h"
#include "chat_routes.h"
#include "chat_time.h"
#include "test_check.h"
#include "test_ops.h"

#define PROG "test_delivery_routes"
#define say(...) (printf(__VA_ARGS__), fflush(stdout))
#define BURST 30
#define MEMBERS 5
#define CONNS 6 /* at first; a seventh (bob's second device, on g2) comes later */

static test_stack stack;

typedef struct conn {
    const char *name;
    ws_client *c;
    int64_t last_seq; /* of the conversation, as received */
    int got;          /* msg frames of the current burst */
} conn;

/* Runs a function of scripts/lib/services.sh (chat_redis_stop, ...) on the stack's Redis. */
static void redis_service(const char *fn)
{
    const char *src = getenv("CHAT_TEST_SOURCE_DIR");
    ck_assert_msg(src && src[0], "CHAT_TEST_SOURCE_DIR is not set");
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "CHAT_PROG=%s bash -c '. \"%s/scripts/lib/common.sh\" && . \"%s/scripts/lib/services.sh\" && %s'", PROG,
             src, src, fn);
    int rc = system(cmd);
    ck_assert_msg(rc == 0, "%s exited %d", fn, rc);
}

/* The value of routes:since in the stack's Redis (0: missing or unreachable), read as the
 * stack's CHAT_REDIS_URL says (its user and database). */
static int64_t routes_since(void)
{
    char err[160];
    redisContext *r = chat_redis_open(&stack.cfg, 1000, err, sizeof err);
    int64_t since = 0;
    if (r) {
        redisReply *g = redisCommand(r, "GET %s", CHAT_ROUTES_SINCE_KEY);
        if (g && g->type == REDIS_REPLY_STRING)
            since = strtoll(g->str, NULL, 10);
        if (g)
            freeReplyObject(g);
    }
    if (r)
        redisFree(r);
    return since;
}

/* Connects as user to gw and syncs (with no cursors): the first frames are hello and synced. */
static void connect_and_sync(conn *k, const test_gateway *gw, const char *user)
{
    k->c = test_gateway_user(&stack, gw, user);
    const char *sync = "{\"type\":\"sync\",\"cursors\":{}}";
    ck_assert(ws_client_send_text(k->c, sync, strlen(sync)) == CHAT_OK);
    json_t *f = NULL;
    ck_assert_msg(test_recv_type(k->c, "synced", 10000, &f, NULL) == CHAT_OK, "%s: no synced", k->name);
    json_decref(f);
}

/* Sends BURST messages from k[0] and reads every connection until each has them all: once each, in
 * seq order (fails the test otherwise). */
static void burst_repeats(conn *k, int n, const char *conv, const char *tag, bool repeats_ok)
{
    for (int i = 0; i < BURST; i++) {
        char frame[256];
        snprintf(frame, sizeof frame, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"%s-%d\",\"body\":\"%s %d\"}", conv,
                 tag, i, tag, i);
        ck_assert(ws_client_send_text(k[0].c, frame, strlen(frame)) == CHAT_OK);
    }
    int64_t deadline = test_mono_ms() + 20000;
    for (int j = 0; j < n; j++) {
        k[j].got = 0;
        while (k[j].got < BURST) {
            json_t *f = NULL;
            chat_status st = test_recv_by(k[j].c, deadline, &f);
            ck_assert_msg(st == CHAT_OK, "%s (%s): %d of %d messages came", k[j].name, tag, k[j].got, BURST);
            const char *type = test_str(f, "type");
            if (type && strcmp(type, "msg") == 0 && strcmp(test_str(f, "conv"), conv) == 0) {
                int64_t seq = test_int(f, "seq");
                if (repeats_ok && seq <= k[j].last_seq) { /* at-least-once: a client drops it by id */
                    json_decref(f);
                    continue;
                }
                ck_assert_msg(seq == k[j].last_seq + 1, "%s (%s): seq %lld after %lld (a repeat or a hole): %s",
                              k[j].name, tag, (long long)seq, (long long)k[j].last_seq, test_json(f));
                k[j].last_seq = seq;
                k[j].got++;
            }
            json_decref(f);
        }
    }
}

static void burst(conn *k, int n, const char *conv, const char *tag)
{
    burst_repeats(k, n, conv, tag, false);
}

/* The worker's chat_ingest_deliveries_total{path=...}. */
static double deliveries(const char *path)
{
    char key[96];
    snprintf(key, sizeof key, "chat_ingest_deliveries_total{path=\"%s\"}", path);
    return test_worker_metric(key);
}

static double routed_batches(const test_gateway *gw)
{
    char why[300];
    json_t *m = test_metrics_scrape(gw->listen, why, sizeof why);
    ck_assert_msg(m, "%s", why);
    double v = test_metric(m, "chat_gateway_routed_batches_total");
    json_decref(m);
    return v;
}

/* Starts a gateway of the test (env: extra NAME=value settings, may be NULL) and waits until it is
 * ready. */
static void gateway_up(const char *name, const char *const *env, test_gateway *gw)
{
    char why[700];
    ck_assert_msg(test_gateway_spawn(&stack, name, env, gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
}

/* A NATS subscription of the test's own to subject (the prefix and one token), in place once this
 * returns. */
static natsSubscription *watch(natsConnection *nc, const char *prefix, const char *token)
{
    char subject[160];
    snprintf(subject, sizeof subject, "%s%s", prefix, token);
    natsSubscription *sub = NULL;
    ck_assert(natsConnection_SubscribeSync(&sub, nc, subject) == NATS_OK);
    ck_assert(natsConnection_Flush(nc) == NATS_OK);
    return sub;
}

/* Checks that the routes' epoch is in Redis once users connected (their claims wrote it). */
static void expect_routes_epoch(void)
{
    ck_assert_msg(routes_since() > 0, "no %s in Redis after users connected", CHAT_ROUTES_SINCE_KEY);
}

/* The next seq of conv in msg frame f moves k's last_seq (a repeat, at or below it, is dropped by id
 * as a client does; a hole fails). */
static void next_seq(conn *k, json_t *f, const char *what)
{
    int64_t seq = test_int(f, "seq");
    if (seq <= k->last_seq)
        return;
    ck_assert_msg(seq == k->last_seq + 1, "%s (%s): seq %lld after %lld (a hole)", k->name, what, (long long)seq,
                  (long long)k->last_seq);
    k->last_seq = seq;
}

/* Reads k's frames until deadline: counts the msg frames of conv (each must be the next seq; k's
 * last_seq moves). The connection must stay open. */
static int msgs_until(conn *k, const char *conv, int64_t deadline)
{
    int got = 0;
    json_t *f = NULL;
    while (test_recv_by(k->c, deadline, &f) == CHAT_OK) {
        const char *type = test_str(f, "type");
        if (type && strcmp(type, "msg") == 0 && strcmp(test_str(f, "conv"), conv) == 0) {
            ck_assert_msg(test_int(f, "seq") == k->last_seq + 1, "%s: seq %lld after %lld", k->name,
                          (long long)test_int(f, "seq"), (long long)k->last_seq);
            k->last_seq++;
            got++;
        }
        json_decref(f);
    }
    return got;
}

/* Reads k's frames until the server closes it (by deadline): its close code (0: not closed). Live
 * msg frames of conv before it (the sender's own) move last_seq, each the next seq. */
static int closed_by(conn *k, const char *conv, int64_t deadline)
{
    json_t *f = NULL;
    chat_status st;
    while ((st = test_recv_by(k->c, deadline, &f)) == CHAT_OK) {
        const char *type = test_str(f, "type");
        if (type && strcmp(type, "msg") == 0 && strcmp(test_str(f, "conv"), conv) == 0)
            next_seq(k, f, "before the close");
        json_decref(f);
    }
    return st == CHAT_ERR_IO ? ws_client_close_code(k->c) : 0;
}

/* Connects k again as user to gw and syncs conv from its last seq: every msg frame until synced
 * must be the next seq. */
static void resync(conn *k, const test_gateway *gw, const char *user, const char *conv)
{
    k->c = test_gateway_user(&stack, gw, user);
    char sync[256];
    snprintf(sync, sizeof sync, "{\"type\":\"sync\",\"cursors\":{\"%s\":%lld}}", conv, (long long)k->last_seq);
    ck_assert(ws_client_send_text(k->c, sync, strlen(sync)) == CHAT_OK);
    int64_t deadline = test_mono_ms() + 15000;
    for (;;) {
        json_t *f = NULL;
        ck_assert_msg(test_recv_by(k->c, deadline, &f) == CHAT_OK, "%s: no synced after reconnecting", k->name);
        const char *type = test_str(f, "type");
        bool done = type && strcmp(type, "synced") == 0;
        if (type && strcmp(type, "msg") == 0 && strcmp(test_str(f, "conv"), conv) == 0)
            next_seq(k, f, "sync");
        json_decref(f);
        if (done)
            return;
    }
}

START_TEST(routed_once_in_order_then_held_without_redis)
{
    test_gateway g1, g2;
    gateway_up("g1", NULL, &g1);
    gateway_up("g2", NULL, &g2);
    char users[MEMBERS][80], conv[80];
    const char *names[MEMBERS] = {"alice", "bob", "carol", "dave", "erin"};
    for (int i = 0; i < MEMBERS; i++)
        test_stack_unique_id(names[i], users[i], sizeof users[i]);
    test_stack_unique_id("group", conv, sizeof conv);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, users[0], users[1], users[2], users[3], users[4],
                                NULL);
    ck_assert_msg(rc == 0, "chatctl conv create exited %d: %s", rc, out ? out : "");
    free(out);
    /* alice, bob and erin on g1; carol, dave and erin again on g2 */
    conn k[CONNS + 1] = {{.name = "alice@g1"}, {.name = "bob@g1"},  {.name = "erin@g1"}, {.name = "carol@g2"},
                         {.name = "dave@g2"},  {.name = "erin@g2"}, {.name = "bob@g2"}};
    const int user_of[CONNS] = {0, 1, 4, 2, 3, 4};
    for (int j = 0; j < CONNS; j++)
        connect_and_sync(&k[j], j < 3 ? &g1 : &g2, users[user_of[j]]);

    expect_routes_epoch();
    double gw_before = deliveries("gateway");
    burst(k, CONNS, conv, "routed");
    double gw_delta = deliveries("gateway") - gw_before;
    say("routed burst: deliveries{path=gateway} +%.0f\n", gw_delta);
    ck_assert_msg(gw_delta >= BURST * MEMBERS, "only %.0f deliveries went per gateway (want >= %d)", gw_delta,
                  BURST * MEMBERS);
    ck_assert_msg(routed_batches(&g1) >= 1 && routed_batches(&g2) >= 1, "a gateway got no DeliveryBatch");

    /* bob's second device, on g2: a new route (the ingest had bob's routes cached as g1 only); its
     * sync runs once the route is written, so every later event reaches it live */
    connect_and_sync(&k[CONNS], &g2, users[1]);
    k[CONNS].last_seq = k[0].last_seq;
    gw_before = deliveries("gateway");
    burst(k, CONNS + 1, conv, "newroute");
    gw_delta = deliveries("gateway") - gw_before;
    say("burst after a new route: deliveries{path=gateway} +%.0f\n", gw_delta);
    ck_assert_msg(gw_delta >= BURST * MEMBERS, "only %.0f deliveries went per gateway after a new route", gw_delta);

    /* Redis stopped: no route can be read, so the ingest holds the batch (there is no per-user
     * path): nothing of the burst reaches anyone while Redis is away */
    redis_service("chat_redis_stop");
    int64_t start_seq = k[0].last_seq;
    for (int i = 0; i < BURST; i++) {
        char frame[256];
        snprintf(frame, sizeof frame, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"noredis-%d\",\"body\":\"noredis %d\"}",
                 conv, i, i);
        ck_assert(ws_client_send_text(k[0].c, frame, strlen(frame)) == CHAT_OK);
    }
    int64_t quiet_until = test_mono_ms() + 3000;
    for (int j = 0; j <= CONNS; j++)
        ck_assert_msg(msgs_until(&k[j], conv, quiet_until) == 0, "%s got a message while Redis was away", k[j].name);
    say("burst without Redis: held, nothing delivered for 3 s\n");

    /* Redis back, empty (a new epoch): the ingest goes on and finds no route but the sender's own
     * session; each gateway sees the new epoch in its next claim's answer (a heartbeat, within
     * 10 s) and closes every session with 1012; reconnected and synced from its cursor, every
     * connection has the whole burst once, in order */
    redis_service("chat_redis_start && chat_redis_wait");
    int64_t deadline = test_mono_ms() + 20000;
    for (int j = 0; j <= CONNS; j++) {
        int code = closed_by(&k[j], conv, deadline);
        ck_assert_msg(code == 1012, "%s: closed with %d, want 1012 after Redis came back empty", k[j].name, code);
    }
    say("every session closed with 1012 after Redis came back empty\n");
    for (int j = 0; j <= CONNS; j++) {
        ws_client_destroy(k[j].c);
        resync(&k[j], j < 3 ? &g1 : &g2, users[j == CONNS ? 1 : user_of[j]], conv);
    }
    /* what the sync did not find (still held: stored once the partition goes on) comes live */
    deadline = test_mono_ms() + 30000;
    for (int j = 0; j <= CONNS; j++) {
        while (k[j].last_seq < start_seq + BURST) {
            json_t *f = NULL;
            ck_assert_msg(test_recv_by(k[j].c, deadline, &f) == CHAT_OK, "%s: has up to seq %lld, want %lld",
                          k[j].name, (long long)k[j].last_seq, (long long)(start_seq + BURST));
            const char *type = test_str(f, "type");
            if (type && strcmp(type, "msg") == 0 && strcmp(test_str(f, "conv"), conv) == 0)
                next_seq(&k[j], f, "after the sync");
            json_decref(f);
        }
    }
    /* and live delivery works again, by the new routes */
    burst_repeats(k, CONNS + 1, conv, "restarted", true); /* the held burst may come again live: repeats */

    for (int j = 0; j <= CONNS; j++)
        ws_client_destroy(k[j].c);
    test_gateway_stop(&g1, 5000);
    test_gateway_stop(&g2, 5000);
}
END_TEST

/* A post the ingest refuses (an edit of a message that does not exist: not_found) is told to its
 * session through the gateway it came from (chat.deliver.g.<CHAT_GATEWAY_ID>, a DeliveryBatch
 * item), never on the sender's own subject, which every gateway's credential may read. */
START_TEST(rejection_to_its_gateway_only)
{
    char gw_id[24], env_id[64];
    snprintf(gw_id, sizeof gw_id, "rj%06d", (int)(getpid() % 1000000));
    snprintf(env_id, sizeof env_id, "CHAT_GATEWAY_ID=%s", gw_id);
    const char *env[] = {env_id, NULL};
    test_gateway g;
    gateway_up("g-rj", env, &g);
    char alice[80], bob[80], conv[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("pair", conv, sizeof conv);
    test_conv_create(&stack, conv, alice, bob);
    conn a = {.name = "alice"};
    connect_and_sync(&a, &g, alice);

    natsConnection *nc = NULL;
    ck_assert(natsConnection_ConnectTo(&nc, stack.cfg.nats_url) == NATS_OK);
    natsSubscription *s_own = watch(nc, "chat.deliver.u.", alice), *s_gw = watch(nc, "chat.deliver.g.", gw_id);

    char frame[256];
    snprintf(frame, sizeof frame, "{\"type\":\"edit\",\"conv\":\"%s\",\"cmid\":\"rj-1\",\"target\":999,\"body\":\"x\"}",
             conv);
    ck_assert(ws_client_send_text(a.c, frame, strlen(frame)) == CHAT_OK);
    json_t *f = NULL;
    ck_assert_msg(test_recv_type(a.c, "error", 10000, &f, NULL) == CHAT_OK, "no error frame for the refused edit");
    const char *code = test_str(f, "code"), *ref = test_str(f, "ref");
    ck_assert_msg(code && strcmp(code, "not_found") == 0 && ref && strcmp(ref, "rj-1") == 0,
                  "the refused edit was answered %s, want not_found for rj-1", test_json(f));
    json_decref(f);

    natsMsg *m = NULL;
    ck_assert_msg(natsSubscription_NextMsg(&m, s_gw, 2000) == NATS_OK, "nothing came on chat.deliver.g.%s", gw_id);
    Chat__V1__DeliveryBatch *db =
        chat__v1__delivery_batch__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    ck_assert_msg(db && db->n_items == 1 && db->items[0]->delivery &&
                      db->items[0]->delivery->item_case == CHAT__V1__DELIVERY__ITEM_REJECTION &&
                      db->n_users == 1 && strcmp(db->users[0], alice) == 0,
                  "chat.deliver.g.%s carried no rejection for %s", gw_id, alice);
    chat__v1__delivery_batch__free_unpacked(db, NULL);
    natsMsg_Destroy(m);
    m = NULL;
    natsStatus s = natsSubscription_NextMsg(&m, s_own, 500);
    ck_assert_msg(s == NATS_TIMEOUT, "chat.deliver.u.%s carried a delivery (%s): the rejection went to the sender's own subject",
                  alice, natsStatus_GetText(s));
    say("the refused edit was told through chat.deliver.g.%s only\n", gw_id);

    natsSubscription_Destroy(s_own);
    natsSubscription_Destroy(s_gw);
    natsConnection_Destroy(nc);
    ws_client_destroy(a.c);
    test_gateway_stop(&g, 5000);
}
END_TEST

/* The api role's deliveries and the typing relay go by routes too: with alice on one gateway and
 * bob on another (routes trusted), a message, bob's read receipt, alice's typing and a member
 * added all reach the other side, each through the gateways' subjects (chat_api_deliveries_total
 * and chat_typing_deliveries_total{path="gateway"} grow) and nothing on either user's own subject. */
START_TEST(receipts_typing_members_by_routes)
{
    test_gateway g1, g2;
    gateway_up("g1b", NULL, &g1);
    gateway_up("g2b", NULL, &g2);
    char alice[80], bob[80], dave[80], conv[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("dave", dave, sizeof dave);
    test_stack_unique_id("pair", conv, sizeof conv);
    test_conv_create(&stack, conv, alice, bob);
    conn a = {.name = "alice@g1"}, b = {.name = "bob@g2"};
    connect_and_sync(&a, &g1, alice);
    connect_and_sync(&b, &g2, bob);
    expect_routes_epoch();
    natsConnection *nc = NULL;
    ck_assert(natsConnection_ConnectTo(&nc, stack.cfg.nats_url) == NATS_OK);
    natsSubscription *sa = watch(nc, "chat.deliver.u.", alice), *sb = watch(nc, "chat.deliver.u.", bob);
    double api0 = test_worker_metric("chat_api_deliveries_total{path=\"gateway\"}");
    double typing0 = test_worker_metric("chat_typing_deliveries_total{path=\"gateway\"}");
    double api_dropped0 = test_worker_metric("chat_api_deliveries_total{path=\"dropped\"}");
    double typing_dropped0 = test_worker_metric("chat_typing_deliveries_total{path=\"dropped\"}");

    char frame[256];
    snprintf(frame, sizeof frame, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"m1\",\"body\":\"hi\"}", conv);
    ck_assert(ws_client_send_text(a.c, frame, strlen(frame)) == CHAT_OK);
    json_t *f = NULL;
    ck_assert_msg(test_recv_type(b.c, "msg", 10000, &f, NULL) == CHAT_OK, "bob got no msg");
    json_decref(f);
    snprintf(frame, sizeof frame, "{\"type\":\"read\",\"conv\":\"%s\",\"seq\":1}", conv);
    ck_assert(ws_client_send_text(b.c, frame, strlen(frame)) == CHAT_OK);
    ck_assert_msg(test_recv_type(a.c, "receipt", 10000, &f, NULL) == CHAT_OK, "alice got no receipt of bob's read");
    ck_assert_msg(strcmp(test_str(f, "user"), bob) == 0 && test_int(f, "read") == 1, "receipt %s", test_json(f));
    json_decref(f);
    snprintf(frame, sizeof frame, "{\"type\":\"typing\",\"conv\":\"%s\"}", conv);
    ck_assert(ws_client_send_text(a.c, frame, strlen(frame)) == CHAT_OK);
    ck_assert_msg(test_recv_type(b.c, "typing", 10000, &f, NULL) == CHAT_OK, "bob got no typing from alice");
    json_decref(f);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "add", conv, dave, NULL);
    ck_assert_msg(rc == 0, "chatctl conv add exited %d: %s", rc, out ? out : "");
    free(out);
    ck_assert_msg(test_recv_type(a.c, "members", 10000, &f, NULL) == CHAT_OK, "alice got no members frame");
    json_decref(f);
    ck_assert_msg(test_recv_type(b.c, "members", 10000, &f, NULL) == CHAT_OK, "bob got no members frame");
    json_decref(f);

    double api = test_worker_metric("chat_api_deliveries_total{path=\"gateway\"}") - api0;
    double typing = test_worker_metric("chat_typing_deliveries_total{path=\"gateway\"}") - typing0;
    double api_dropped = test_worker_metric("chat_api_deliveries_total{path=\"dropped\"}") - api_dropped0;
    double typing_dropped = test_worker_metric("chat_typing_deliveries_total{path=\"dropped\"}") - typing_dropped0;
    say("by routes: api deliveries +%.0f, typing +%.0f; dropped: api +%.0f, typing +%.0f\n", api, typing, api_dropped,
        typing_dropped);
    ck_assert_msg(api_dropped == 0 && typing_dropped == 0, "deliveries dropped with Redis up");
    ck_assert_msg(api >= 4, "chat_api_deliveries_total{path=\"gateway\"} grew by %.0f, want >= 4 (receipt to 2, members to 2)",
                  api);
    ck_assert_msg(typing >= 1, "chat_typing_deliveries_total{path=\"gateway\"} grew by %.0f", typing);
    natsMsg *m = NULL;
    natsStatus s = natsSubscription_NextMsg(&m, sa, 300);
    ck_assert_msg(s == NATS_TIMEOUT, "chat.deliver.u.%s carried a delivery: something went per user", alice);
    s = natsSubscription_NextMsg(&m, sb, 300);
    ck_assert_msg(s == NATS_TIMEOUT, "chat.deliver.u.%s carried a delivery: something went per user", bob);

    natsSubscription_Destroy(sa);
    natsSubscription_Destroy(sb);
    natsConnection_Destroy(nc);
    ws_client_destroy(a.c);
    ws_client_destroy(b.c);
    test_gateway_stop(&g1, 5000);
    test_gateway_stop(&g2, 5000);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create("delivery_routes");
    TCase *tc = tcase_create("routes");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, routed_once_in_order_then_held_without_redis);
    tcase_add_test(tc, rejection_to_its_gateway_only);
    tcase_add_test(tc, receipts_typing_members_by_routes);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
