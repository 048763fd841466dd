/* One delivery per gateway per batch (docs/architecture.md, "The hot path", step 4), against two
 * gateways of its own (the stack's NATS, PostgreSQL, Redis and worker). A group of five members
 * (over CHAT_ROUTED_MIN_MEMBERS): two on the first gateway, two on the second, one on both.
 *
 * routed_once_in_order_then_per_user_without_redis:
 *   - every connection syncs first (the sync waits for the user's route in Redis), then, once the
 *     routes are trusted (routes:since CHAT_ROUTES_SETTLE_MS old), a burst of messages reaches every
 *     connection once each, in seq order, through the per-gateway path: the worker's
 *     chat_ingest_deliveries_total{path="gateway"} grows by at least one per event and member, and
 *     both gateways count DeliveryBatches (chat_gateway_routed_batches_total);
 *   - bob's second device connects on the second gateway (a new route, while the ingest has bob's
 *     routes cached): a burst reaches it too, once each, in order, still per gateway;
 *   - with the stack's Redis stopped, a second burst still reaches every connection once, in order
 *     (per user: chat_ingest_deliveries_total{path="user"} grows by one per event and member);
 *   - with Redis started again (empty: no routes:since, so per user until the routes settle), a
 *     third burst does too.
 * Gateway logs: $CHAT_HOME/logs/test_delivery_routes-{g1,g2}.log. */
#include <check.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_routes.h"
#include "chat_time.h"
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

/* The value of routes:since in the stack's Redis (0: missing or unreachable). */
static int64_t routes_since(void)
{
    struct timeval tv = {1, 0};
    redisContext *r = redisConnectWithTimeout(stack.cfg.redis_host, stack.cfg.redis_port, tv);
    int64_t since = 0;
    if (r && !r->err) {
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
static void burst(conn *k, int n, const char *conv, const char *tag)
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
                ck_assert_msg(seq == k[j].last_seq + 1, "%s (%s): seq %lld after %lld (a repeat or a hole): %s",
                              k[j].name, tag, (long long)seq, (long long)k[j].last_seq, test_json(f));
                k[j].last_seq = seq;
                k[j].got++;
            }
            json_decref(f);
        }
    }
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

START_TEST(routed_once_in_order_then_per_user_without_redis)
{
    test_gateway g1, g2;
    char why[700];
    ck_assert_msg(test_gateway_spawn(&stack, "g1", NULL, &g1, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_spawn(&stack, "g2", NULL, &g2, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&g1, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&g2, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
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

    /* the routes are trusted once routes:since is old enough (a fresh Redis: up to 15 s) */
    int64_t since = routes_since();
    ck_assert_msg(since > 0, "no %s in Redis after users connected", CHAT_ROUTES_SINCE_KEY);
    int64_t wait = since + CHAT_ROUTES_SETTLE_MS + 300 - chat_now_ms();
    if (wait > 0) {
        say("waiting %lld ms for the routes to settle\n", (long long)wait);
        usleep((useconds_t)wait * 1000);
    }
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

    /* Redis stopped: per user */
    redis_service("chat_redis_stop");
    double user_before = deliveries("user");
    burst(k, CONNS + 1, conv, "noredis");
    double user_delta = deliveries("user") - user_before;
    say("burst without Redis: deliveries{path=user} +%.0f\n", user_delta);
    ck_assert_msg(user_delta >= BURST * MEMBERS, "only %.0f deliveries went per user without Redis", user_delta);

    /* Redis back, empty: per user until the routes settle again, nothing lost */
    redis_service("chat_redis_start && chat_redis_wait");
    burst(k, CONNS + 1, conv, "restarted");

    for (int j = 0; j <= CONNS; j++)
        ws_client_destroy(k[j].c);
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
    tcase_add_test(tc, routed_once_in_order_then_per_user_without_redis);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
