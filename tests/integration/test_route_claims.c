/* Route claims (issue 19, finding 4; workers/wk_claims.h): a gateway writes nothing in Redis, it
 * asks the worker on chat.route.<gateway id> for its users' routes, each claim with the user's token.
 * Here a NATS client of the stack plays a gateway whose credential fell into an attacker's hands
 * (the stack's NATS has no permissions: that each gateway user may publish only its own
 * chat.route.<id> is nats_cluster_test.sh's). Tokens are made here (HS256 with the stack's secret).
 *
 * claims_need_the_users_own_token: claims for a victim with another user's token, a forged
 *   signature, an expired token and a token revoked by `chatctl revoke user` are each refused by
 *   index; the victim gets no route (presence:<victim> has no member for that gateway), no
 *   routes:log entry and no presence announcement. A claim with the victim's own token is
 *   accepted: the route expires about CHAT_ROUTE_TTL_MS from now, the user is announced online;
 *   a heartbeat's refresh never makes a route (a user without one here is answered "gone") and
 *   keeps a live one; a drop removes the route and announces the user offline with last_seen set. A malformed
 *   request is answered "malformed" and writes nothing. */
#include <check.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_redis.h"
#include "chat_routes.h"
#include "chat_time.h"
#include "test_check.h"
#include "test_jwt.h"
#include "test_ops.h"

#define PROG "test_route_claims"
#define REPLY_MS 5000

static test_stack stack;

static char *token_until(const char *user, long long exp, long long iat, const char *secret)
{
    char payload[256];
    snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"exp\":%lld,\"iat\":%lld}", user, exp, iat);
    return test_jwt_forge("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, secret, "HS256");
}

static char *token_of(const char *user)
{
    long long now = (long long)time(NULL);
    return token_until(user, now + 3600, now, stack.cfg.jwt_secret);
}

/* Sends a request of n claims (and drops) on chat.route.<gw>: the reply (the caller frees). */
static Chat__V1__RouteReply *route_request_as(natsConnection *nc, const char *gw, const char *const *users,
                                              char *const *tokens, int n, char *const *drops, int n_drops, bool refresh)
{
    Chat__V1__RouteClaim items[8], *claims[8];
    ck_assert(n <= 8);
    for (int i = 0; i < n; i++) {
        chat__v1__route_claim__init(&items[i]);
        items[i].user = (char *)users[i];
        items[i].token = tokens[i];
        claims[i] = &items[i];
    }
    Chat__V1__RouteRequest rq = CHAT__V1__ROUTE_REQUEST__INIT;
    rq.claims = claims;
    rq.n_claims = (size_t)n;
    rq.drops = (char **)drops;
    rq.n_drops = (size_t)n_drops;
    rq.refresh = refresh;
    uint8_t buf[16384];
    ck_assert(chat__v1__route_request__get_packed_size(&rq) <= sizeof buf);
    size_t len = chat__v1__route_request__pack(&rq, buf);
    char subject[96];
    snprintf(subject, sizeof subject, "chat.route.%s", gw);
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, nc, subject, buf, (int)len, REPLY_MS);
    ck_assert_msg(s == NATS_OK, "no answer on %s: %s", subject, natsStatus_GetText(s));
    Chat__V1__RouteReply *rr =
        chat__v1__route_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(reply), (const uint8_t *)natsMsg_GetData(reply));
    natsMsg_Destroy(reply);
    ck_assert_msg(rr != NULL, "the answer is not a RouteReply");
    return rr;
}

static Chat__V1__RouteReply *route_request(natsConnection *nc, const char *gw, const char *const *users,
                                           char *const *tokens, int n, char *const *drops, int n_drops)
{
    return route_request_as(nc, gw, users, tokens, n, drops, n_drops, false);
}

/* A heartbeat's request: claims that refresh routes only. */
static Chat__V1__RouteReply *route_request_refresh(natsConnection *nc, const char *gw, const char *const *users,
                                                   char *const *tokens, int n)
{
    return route_request_as(nc, gw, users, tokens, n, NULL, 0, true);
}

static redisReply *redis_cmd(const char *fmt, const char *a, const char *b)
{
    char err[160];
    redisContext *r = chat_redis_open(&stack.cfg, 2000, err, sizeof err);
    ck_assert_msg(r != NULL, "Redis: %s", err);
    redisReply *x = redisCommand(r, fmt, a, b);
    ck_assert_msg(x != NULL, "Redis: %s", r->errstr);
    redisFree(r);
    return x;
}

/* The expiry (Unix ms) of user's route to gw, 0 when there is none. */
static int64_t route_of(const char *user, const char *gw)
{
    redisReply *x = redis_cmd("ZSCORE presence:%s %s", user, gw);
    int64_t v = x->type == REDIS_REPLY_STRING ? strtoll(x->str, NULL, 10) : 0;
    freeReplyObject(x);
    return v;
}

/* Whether routes:log names user among its entries. */
static bool logged(const char *user)
{
    redisReply *x = redis_cmd("XRANGE %s - + COUNT 10000", CHAT_ROUTES_LOG_KEY, NULL);
    bool found = false;
    for (size_t i = 0; x->type == REDIS_REPLY_ARRAY && i < x->elements && !found; i++) {
        redisReply *fields = x->element[i]->element[1];
        for (size_t j = 1; j < fields->elements; j += 2)
            found = found || strcmp(fields->element[j]->str, user) == 0;
    }
    freeReplyObject(x);
    return found;
}

/* The next Presence on sub within ms, NULL when none came. */
static Chat__V1__Presence *next_presence(natsSubscription *sub, int ms)
{
    natsMsg *m = NULL;
    if (natsSubscription_NextMsg(&m, sub, ms) != NATS_OK)
        return NULL;
    Chat__V1__Presence *p =
        chat__v1__presence__unpack(NULL, (size_t)natsMsg_GetDataLength(m), (const uint8_t *)natsMsg_GetData(m));
    natsMsg_Destroy(m);
    ck_assert(p != NULL);
    return p;
}

/* Whether any Presence of user came on sub within ms (every other one read and dropped). */
static bool announced(natsSubscription *sub, const char *user, int ms)
{
    int64_t until = chat_mono_ms() + ms;
    bool seen = false;
    Chat__V1__Presence *p;
    while (!seen && chat_mono_ms() < until && (p = next_presence(sub, (int)(until - chat_mono_ms()) + 1)) != NULL) {
        seen = strcmp(p->user, user) == 0;
        chat__v1__presence__free_unpacked(p, NULL);
    }
    return seen;
}

START_TEST(claims_need_the_users_own_token)
{
    char victim[64], mallory[64], revoked[64], gw[32], subject[96];
    unsigned tag = (unsigned)(chat_now_ms() % 1000000);
    snprintf(victim, sizeof victim, "victim-%u", tag);
    snprintf(mallory, sizeof mallory, "mallory-%u", tag);
    snprintf(revoked, sizeof revoked, "revoked-%u", tag);
    snprintf(gw, sizeof gw, "claims-%u", tag);
    natsConnection *nc = NULL;
    ck_assert(natsConnection_ConnectTo(&nc, stack.cfg.nats_url) == NATS_OK);
    natsSubscription *watch = NULL;
    ck_assert(natsConnection_SubscribeSync(&watch, nc, "chat.presence.*") == NATS_OK);

    /* a token of `revoked`, then every token of that user issued before now revoked */
    long long now = (long long)time(NULL);
    char *old = token_until(revoked, now + 3600, now - 60, stack.cfg.jwt_secret);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "revoke", "user", revoked, (char *)NULL);
    ck_assert_msg(rc == 0, "chatctl revoke user: exit %d: %s", rc, out ? out : "");
    free(out);
    nats_Sleep(1000); /* the worker's watcher has it (chatctl read it back from the broker already) */

    char *mallorys = token_of(mallory);
    char *forged = token_until(victim, now + 3600, now, "not-the-secret-not-the-secret-not-the-secret");
    char *expired = token_until(victim, now - 120, now - 600, stack.cfg.jwt_secret);
    const char *users[] = {victim, victim, victim, revoked};
    char *tokens[] = {mallorys, forged, expired, old};
    Chat__V1__RouteReply *rr = route_request(nc, gw, users, tokens, 4, NULL, 0);
    ck_assert_msg(rr->error[0] == '\0', "error \"%s\"", rr->error);
    ck_assert_msg(rr->n_refused == 4, "%zu of 4 bad claims refused", rr->n_refused);
    for (uint32_t i = 0; i < 4; i++)
        ck_assert_uint_eq(rr->refused[i], i);
    chat__v1__route_reply__free_unpacked(rr, NULL);
    /* ... and nothing of them reached Redis or anyone watching presence */
    ck_assert_msg(route_of(victim, gw) == 0, "a refused claim wrote the victim's route");
    ck_assert_msg(route_of(revoked, gw) == 0, "a revoked token's claim wrote a route");
    ck_assert(!logged(victim) && !logged(revoked));
    ck_assert_msg(!announced(watch, victim, 1000), "a refused claim announced %s", victim);
    ck_assert_msg(!announced(watch, revoked, 10), "a revoked token's claim announced %s", revoked);
    Chat__V1__Presence *p;

    /* the victim's own token: accepted, the route written, the user announced online */
    char *own = token_of(victim);
    const char *one[] = {victim};
    char *own_tokens[] = {own};
    int64_t before = chat_now_ms();
    rr = route_request(nc, gw, one, own_tokens, 1, NULL, 0);
    ck_assert_msg(rr->error[0] == '\0' && rr->n_refused == 0, "own token: error \"%s\", %zu refused", rr->error,
                  rr->n_refused);
    chat__v1__route_reply__free_unpacked(rr, NULL);
    int64_t exp = route_of(victim, gw);
    ck_assert_msg(exp >= before + CHAT_ROUTE_TTL_MS && exp <= chat_now_ms() + CHAT_ROUTE_TTL_MS,
                  "route expiry %lld, claimed at %lld", (long long)exp, (long long)before);
    ck_assert(logged(victim));
    snprintf(subject, sizeof subject, "chat.presence.%s", victim);
    bool online = false;
    for (int i = 0; i < 5 && !online && (p = next_presence(watch, 2000)) != NULL; i++) {
        online = strcmp(p->user, victim) == 0 && p->online;
        chat__v1__presence__free_unpacked(p, NULL);
    }
    ck_assert_msg(online, "no online announcement of %s", victim);

    /* a heartbeat (refresh) keeps a route alive but never makes one: for a user without a route
     * here it answers "gone" and writes nothing, whatever the token */
    char *mall_tokens[] = {mallorys};
    const char *mall[] = {mallory};
    rr = route_request_refresh(nc, gw, mall, mall_tokens, 1);
    ck_assert_msg(rr->error[0] == '\0' && rr->n_refused == 0 && rr->n_gone == 1 && rr->gone[0] == 0,
                  "refresh of a route that does not exist: error \"%s\", %zu refused, %zu gone", rr->error,
                  rr->n_refused, rr->n_gone);
    chat__v1__route_reply__free_unpacked(rr, NULL);
    ck_assert_msg(route_of(mallory, gw) == 0, "a refresh made a route");
    rr = route_request_refresh(nc, gw, one, own_tokens, 1);
    ck_assert_msg(rr->error[0] == '\0' && rr->n_gone == 0, "refresh of a live route: error \"%s\", %zu gone",
                  rr->error, rr->n_gone);
    chat__v1__route_reply__free_unpacked(rr, NULL);
    ck_assert(route_of(victim, gw) >= exp);

    /* its drop: the route gone, the user offline with last_seen */
    char *drops[] = {victim};
    rr = route_request(nc, gw, NULL, NULL, 0, drops, 1);
    ck_assert_msg(rr->error[0] == '\0', "drop: error \"%s\"", rr->error);
    chat__v1__route_reply__free_unpacked(rr, NULL);
    ck_assert(route_of(victim, gw) == 0);
    bool offline = false;
    for (int i = 0; i < 5 && !offline && (p = next_presence(watch, 2000)) != NULL; i++) {
        offline = strcmp(p->user, victim) == 0 && !p->online && p->last_seen_ms >= before;
        chat__v1__presence__free_unpacked(p, NULL);
    }
    ck_assert_msg(offline, "no offline announcement of %s", victim);

    /* garbage: "malformed", nothing written */
    snprintf(subject, sizeof subject, "chat.route.%s", gw);
    natsMsg *reply = NULL;
    ck_assert(natsConnection_Request(&reply, nc, subject, "\xff\xff\xff", 3, REPLY_MS) == NATS_OK);
    rr = chat__v1__route_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(reply),
                                       (const uint8_t *)natsMsg_GetData(reply));
    natsMsg_Destroy(reply);
    ck_assert_msg(rr && strcmp(rr->error, "malformed") == 0, "garbage answered \"%s\"", rr ? rr->error : "(none)");
    chat__v1__route_reply__free_unpacked(rr, NULL);

    free(own);
    free(mallorys);
    free(forged);
    free(expired);
    free(old);
    natsSubscription_Destroy(watch);
    natsConnection_Destroy(nc);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create(PROG);
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, claims_need_the_users_own_token);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
