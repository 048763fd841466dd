/* Route claims and presence (wk_claims.h). */
#include "wk_claims.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "chat.pb-c.h"
#include "chat_id.h"
#include "chat_jwt.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_revoke.h"
#include "chat_revoke_watch.h"
#include "chat_routes.h"
#include "chat_time.h"
#include "wk_routes.h"
#include "wk_sub.h"

#define CLAIMS_QUEUE "routes"
#define DRAIN_TIMEOUT_MS 5000
#define SWEEP_BATCH 500

struct wk_claims {
    wk_app *app;
    natsSubscription *sub;
    wk_redis_link redis;       /* delivery thread only */
    pthread_mutex_t lock;      /* guards done, stop */
    pthread_cond_t cv;
    bool done;                 /* the delivery thread returned from its last callback */
    bool stop;                 /* the sweeper must return */
    pthread_t sweeper;
    bool sweeper_started;
    wk_redis_link sweep_redis; /* sweeper only */
    pthread_mutex_t rv_lock;   /* guards revoked */
    chat_revoke_set *revoked;
    chat_revoke_watch *watch;
    atomic_uint_fast64_t *m_accepted, *m_refused, *m_dropped, *m_failed;
};

/* ------------------------------------------------------------------------------------------ */
/* revocations (watcher thread in, delivery thread out)                                         */
/* ------------------------------------------------------------------------------------------ */

static void on_revocation(chat_revoke_change op, uint32_t watch, const char *key, int64_t value, void *ctx)
{
    wk_claims *c = ctx;
    pthread_mutex_lock(&c->rv_lock);
    if (op == CHAT_REVOKE_PUT) {
        if (chat_revoke_set_put(c->revoked, key, value, watch, NULL) == 0)
            LOG_WARN("claims", "event=revocation_ignored reason=\"not a u. or j. key\"");
    } else if (op == CHAT_REVOKE_DELETE) {
        chat_revoke_set_delete(c->revoked, key);
    } else {
        bool first = !chat_revoke_set_is_loaded(c->revoked);
        chat_revoke_set_loaded(c->revoked, watch);
        if (first)
            LOG_INFO("claims", "event=revocations_loaded held=%zu", chat_revoke_set_size(c->revoked));
    }
    pthread_mutex_unlock(&c->rv_lock);
}

static bool revocations_loaded(wk_claims *c)
{
    pthread_mutex_lock(&c->rv_lock);
    bool loaded = chat_revoke_set_is_loaded(c->revoked);
    pthread_mutex_unlock(&c->rv_lock);
    return loaded;
}

/* Why claim cl does not prove its user at now_s, or NULL when it does: the checks of the upgrade. */
static const char *disproved(wk_claims *c, const Chat__V1__RouteClaim *cl, int64_t now_s)
{
    if (cl->user == NULL || !chat_id_valid(cl->user))
        return "bad user id";
    if (cl->token == NULL || strlen(cl->token) > CHAT_JWT_MAX_LEN)
        return "bad token";
    chat_jwt_claims jc;
    const char *why = NULL;
    if (chat_jwt_verify(c->app->cfg->jwt, cl->token, now_s, &jc, &why) != CHAT_OK)
        return why ? why : "bad token";
    if (strcmp(jc.user, cl->user) != 0)
        return "another user's token";
    pthread_mutex_lock(&c->rv_lock);
    bool refused = chat_revoke_set_refuses(c->revoked, &jc);
    pthread_mutex_unlock(&c->rv_lock);
    return refused ? "revoked" : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Redis (delivery thread)                                                                      */
/* ------------------------------------------------------------------------------------------ */

static void announce(wk_claims *c, const char *user, bool online, int64_t last_seen)
{
    Chat__V1__Presence pr = CHAT__V1__PRESENCE__INIT;
    pr.user = (char *)user;
    pr.online = online;
    pr.last_seen_ms = last_seen;
    uint8_t buf[128];
    size_t len = chat__v1__presence__pack(&pr, buf);
    char subject[96];
    snprintf(subject, sizeof subject, "chat.presence.%s", user);
    natsConnection_Publish(c->app->nc, subject, buf, (int)len);
}

/* What one request does to Redis and what came back. */
typedef struct plan {
    const char *gateway;
    const Chat__V1__RouteRequest *rq;
    const int *ok; /* indexes of the claims that proved their user */
    int n_ok;
    int64_t now;
    int64_t since;   /* out: routes:since before the writes (0: missing) */
    int64_t epoch;   /* out: routes:since after them (0: no claim written) */
    bool *gone;      /* out, per drop: no live route left (offline) */
    uint32_t *refresh_gone; /* out, refresh: indexes of the claims whose route was gone */
    size_t n_gone;
} plan;

static bool reply_ok(const redisReply *r)
{
    return r && r->type != REDIS_REPLY_ERROR;
}

static int64_t number_of(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
}

/* Reads n replies into r[0..n) (the caller frees them); false (the connection given up) on a
 * broken link, or on an error reply (logged; the rest read all the same: the connection stays in
 * step). */
static bool read_replies(wk_claims *c, int n, redisReply **r)
{
    bool ok = true;
    for (int i = 0; i < n && c->redis.c; i++) {
        if (redisGetReply(c->redis.c, (void **)&r[i]) != REDIS_OK) {
            wk_redis_link_fail(&c->redis, c->redis.c->errstr);
            return false;
        }
        if (!reply_ok(r[i])) {
            LOG_WARN("claims", "event=route_write_refused detail=\"%s\"", r[i] && r[i]->str ? r[i]->str : "");
            ok = false;
        }
    }
    return ok && c->redis.c != NULL;
}

static void free_replies(redisReply **r, int n)
{
    for (int i = 0; i < n; i++)
        if (r[i])
            freeReplyObject(r[i]);
    free(r);
}

/* One try of the plan's writes on the connection there is. */
static bool try_write(wk_claims *c, plan *p)
{
    redisContext *r = c->redis.c;
    const char *gw = p->gateway;
    long long exp = (long long)(p->now + CHAT_ROUTE_TTL_MS);
    int n = 0;
    p->n_gone = 0;
    if (p->n_ok) {
        redisAppendCommand(r, "GET %s", CHAT_ROUTES_SINCE_KEY);
        redisAppendCommand(r, "SET %s %lld NX PX %d", CHAT_ROUTES_SINCE_KEY, (long long)p->now,
                           CHAT_ROUTES_SINCE_TTL_MS);
        redisAppendCommand(r, "PEXPIRE %s %d", CHAT_ROUTES_SINCE_KEY, CHAT_ROUTES_SINCE_TTL_MS);
        redisAppendCommand(r, "GET %s", CHAT_ROUTES_SINCE_KEY);
        n += 4;
        for (int i = 0; i < p->n_ok; i++) {
            const char *user = p->rq->claims[p->ok[i]]->user;
            /* a refresh keeps a route alive, never makes one: a route is made by a first claim,
             * which logs it (the ingest caches "no route" until the log names the user) */
            if (p->rq->refresh)
                redisAppendCommand(r, "ZADD presence:%s XX CH %lld %s", user, exp, gw);
            else
                redisAppendCommand(r, "ZADD presence:%s %lld %s", user, exp, gw);
            redisAppendCommand(r, "ZADD presence:online GT %lld %s", exp, user);
            redisAppendCommand(r, "PEXPIRE presence:%s %d", user, 2 * CHAT_ROUTE_TTL_MS);
            redisAppendCommand(r, "SET last_seen:%s %lld", user, (long long)p->now);
            n += 4;
            if (!p->rq->refresh) { /* the log the ingest's route cache follows: after the route */
                redisAppendCommand(r, "XADD %s MINID ~ %lld * u %s", CHAT_ROUTES_LOG_KEY,
                                   (long long)(p->now - CHAT_ROUTES_LOG_KEEP_MS), user);
                n++;
            }
        }
    }
    int drops_at = n;
    for (size_t i = 0; i < p->rq->n_drops; i++) {
        redisAppendCommand(r, "ZREM presence:%s %s", p->rq->drops[i], gw);
        redisAppendCommand(r, "ZCOUNT presence:%s (%lld +inf", p->rq->drops[i], (long long)p->now);
        n += 2;
    }
    redisReply **got = chat_xcalloc((size_t)n + 1, sizeof *got);
    bool ok = read_replies(c, n, got);
    if (ok && p->n_ok) {
        p->since = number_of(got[0]);
        p->epoch = number_of(got[3]);
    }
    for (int i = 0; ok && p->rq->refresh && i < p->n_ok; i++) { /* ZADD XX CH: 0 when the route was gone */
        const redisReply *changed = got[4 + 4 * i];
        if (changed->type == REDIS_REPLY_INTEGER && changed->integer == 0)
            p->refresh_gone[p->n_gone++] = (uint32_t)p->ok[i];
    }
    for (size_t i = 0; ok && i < p->rq->n_drops; i++) {
        const redisReply *count = got[drops_at + 2 * (int)i + 1];
        p->gone[i] = count->type == REDIS_REPLY_INTEGER && count->integer == 0;
    }
    free_replies(got, n);
    if (!ok || p->rq->n_drops == 0)
        return ok;
    /* the users no gateway holds any more: offline, last seen now */
    int m = 0;
    for (size_t i = 0; i < p->rq->n_drops; i++)
        if (p->gone[i]) {
            redisAppendCommand(r, "SET last_seen:%s %lld", p->rq->drops[i], (long long)p->now);
            redisAppendCommand(r, "ZREM presence:online %s", p->rq->drops[i]);
            m += 2;
        }
    got = chat_xcalloc((size_t)m + 1, sizeof *got);
    ok = read_replies(c, m, got);
    free_replies(got, m);
    return ok;
}

/* The plan's writes, once more on a fresh connection when the one there was broke (Redis
 * restarted): a gateway's heartbeat must put every route back within CHAT_ROUTES_SETTLE_MS. */
static bool write_routes(wk_claims *c, plan *p)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!wk_redis_link_ready(&c->redis))
            return false;
        if (try_write(c, p))
            return true;
        if (c->redis.c == NULL)
            wk_redis_link_retry_now(&c->redis); /* broken link: one retry now */
        else
            return false; /* Redis answered with an error: trying again changes nothing */
    }
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* requests (delivery thread)                                                                   */
/* ------------------------------------------------------------------------------------------ */

static void answer(wk_claims *c, natsMsg *msg, const char *error, const uint32_t *refused, size_t n_refused,
                   const plan *p)
{
    const char *reply = natsMsg_GetReply(msg);
    if (reply == NULL || reply[0] == '\0')
        return;
    Chat__V1__RouteReply rr = CHAT__V1__ROUTE_REPLY__INIT;
    rr.error = (char *)error;
    rr.refused = (uint32_t *)refused;
    rr.n_refused = n_refused;
    if (p) {
        rr.since_ms = p->since;
        rr.epoch_ms = p->epoch;
        rr.gone = p->refresh_gone;
        rr.n_gone = p->n_gone;
    }
    size_t len = chat__v1__route_reply__get_packed_size(&rr);
    uint8_t *buf = chat_xcalloc(len + 1, 1);
    chat__v1__route_reply__pack(&rr, buf);
    natsConnection_Publish(c->app->nc, reply, buf, (int)len);
    free(buf);
}

static bool drops_valid(const Chat__V1__RouteRequest *rq)
{
    for (size_t i = 0; i < rq->n_drops; i++)
        if (rq->drops[i] == NULL || !chat_id_valid(rq->drops[i]))
            return false;
    return true;
}

static void handle(wk_claims *c, natsMsg *msg, const char *gw, const Chat__V1__RouteRequest *rq)
{
    if (rq->n_claims && !revocations_loaded(c)) {
        answer(c, msg, "loading", NULL, 0, NULL);
        return;
    }
    int64_t now = chat_now_ms();
    int *ok = chat_xcalloc(rq->n_claims + 1, sizeof *ok);
    uint32_t *refused = chat_xcalloc(rq->n_claims + 1, sizeof *refused);
    size_t n_refused = 0;
    int n_ok = 0;
    for (size_t i = 0; i < rq->n_claims; i++) {
        const char *why = disproved(c, rq->claims[i], now / 1000);
        if (why == NULL) {
            ok[n_ok++] = (int)i;
            continue;
        }
        refused[n_refused++] = (uint32_t)i;
        LOG_INFO("claims", "event=route_refused gateway=%s user=%s why=\"%s\"", gw,
                 rq->claims[i]->user && chat_id_valid(rq->claims[i]->user) ? rq->claims[i]->user : "-", why);
    }
    bool *gone = chat_xcalloc(rq->n_drops + 1, sizeof *gone);
    uint32_t *refresh_gone = chat_xcalloc(rq->n_claims + 1, sizeof *refresh_gone);
    plan p = {.gateway = gw, .rq = rq, .ok = ok, .n_ok = n_ok, .now = now, .gone = gone, .refresh_gone = refresh_gone};
    bool written = (n_ok == 0 && rq->n_drops == 0) || write_routes(c, &p);
    atomic_fetch_add(c->m_refused, n_refused);
    if (written) {
        atomic_fetch_add(c->m_accepted, (uint_fast64_t)n_ok);
        atomic_fetch_add(c->m_dropped, rq->n_drops);
        for (int i = 0; i < n_ok && !rq->refresh; i++)
            announce(c, rq->claims[ok[i]]->user, true, now);
        for (size_t i = 0; i < rq->n_drops; i++)
            if (gone[i])
                announce(c, rq->drops[i], false, now);
    } else {
        atomic_fetch_add(c->m_failed, 1);
    }
    answer(c, msg, written ? "" : "redis", refused, n_refused, written ? &p : NULL);
    free(refresh_gone);
    free(gone);
    free(refused);
    free(ok);
}

static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    wk_claims *c = closure;
    const char *gw = chat_subject_route_parse(natsMsg_GetSubject(msg));
    Chat__V1__RouteRequest *rq = chat__v1__route_request__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                                 (const uint8_t *)natsMsg_GetData(msg));
    /* the subject names the gateway: NATS lets a gateway's user publish only its own */
    if (gw == NULL || strlen(gw) > CHAT_GATEWAY_ID_MAX || !chat_id_valid(gw) || rq == NULL ||
        rq->n_claims > WK_CLAIMS_MAX || rq->n_drops > WK_CLAIMS_MAX || !drops_valid(rq)) {
        LOG_WARN("claims", "event=route_request_malformed gateway=%s", gw && chat_id_valid(gw) ? gw : "-");
        answer(c, msg, "malformed", NULL, 0, NULL);
    } else {
        handle(c, msg, gw, rq);
    }
    chat__v1__route_request__free_unpacked(rq, NULL);
    natsMsg_Destroy(msg);
}

static void on_complete(void *closure)
{
    wk_claims *c = closure;
    pthread_mutex_lock(&c->lock);
    c->done = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->lock);
}

/* ------------------------------------------------------------------------------------------ */
/* sweeper thread                                                                               */
/* ------------------------------------------------------------------------------------------ */

static redisReply *command(wk_redis_link *l, const char *fmt, const char *arg, long long n)
{
    redisReply *r = arg ? redisCommand(l->c, fmt, arg, n) : redisCommand(l->c, fmt, n);
    if (r == NULL)
        wk_redis_link_fail(l, l->c->errstr);
    return r;
}

/* Users whose every route expired (their gateway died): the worker whose ZREM wins announces.
 * False when Redis did not answer: the sweeper tries again sooner than its period. */
static bool sweep(wk_claims *c)
{
    wk_redis_link *l = &c->sweep_redis;
    if (!wk_redis_link_ready(l))
        return false;
    long long now = chat_now_ms();
    /* the routes' epoch lives while an api worker does, not only while gateways claim: it goes
     * missing only when Redis lost it, which the ingest then takes for a new epoch (chat_routes.h) */
    redisReply *e = redisCommand(l->c, "PEXPIRE %s %d", CHAT_ROUTES_SINCE_KEY, CHAT_ROUTES_SINCE_TTL_MS);
    if (e == NULL) {
        wk_redis_link_fail(l, l->c->errstr);
        return false;
    }
    freeReplyObject(e);
    redisReply *r = redisCommand(l->c, "ZRANGEBYSCORE presence:online -inf %lld LIMIT 0 %d", now, SWEEP_BATCH);
    if (r == NULL) {
        wk_redis_link_fail(l, l->c->errstr);
        return false;
    }
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && l->c; i++) {
        const char *user = r->element[i]->str;
        if (user == NULL)
            continue;
        redisReply *n = command(l, "ZCOUNT presence:%s (%lld +inf", user, now);
        bool alive = n && n->type == REDIS_REPLY_INTEGER && n->integer > 0;
        if (n)
            freeReplyObject(n);
        if (alive || l->c == NULL)
            continue;
        redisReply *z = command(l, "ZREM presence:online %s", user, 0);
        bool won = z && z->type == REDIS_REPLY_INTEGER && z->integer == 1;
        if (z)
            freeReplyObject(z);
        if (!won)
            continue;
        redisReply *g = command(l, "GET last_seen:%s", user, 0);
        int64_t last = g && g->type == REDIS_REPLY_STRING ? strtoll(g->str, NULL, 10) : now;
        if (g)
            freeReplyObject(g);
        LOG_INFO("claims", "event=presence_expired user=%s last_seen=%lld", user, (long long)last);
        announce(c, user, false, last);
    }
    freeReplyObject(r);
    return l->c != NULL;
}

static void *sweeper_thread(void *arg)
{
    wk_claims *c = arg;
    bool swept = true;
    pthread_mutex_lock(&c->lock);
    while (!c->stop) {
        chat_cond_wait_ms(&c->cv, &c->lock, swept ? WK_CLAIMS_SWEEP_MS : WK_CLAIMS_SWEEP_RETRY_MS);
        if (c->stop)
            break;
        pthread_mutex_unlock(&c->lock);
        swept = sweep(c);
        pthread_mutex_lock(&c->rv_lock);
        chat_revoke_set_trim(c->revoked, chat_now_ms() / 1000, chat_jwt_policy_max_ttl(c->app->cfg->jwt));
        pthread_mutex_unlock(&c->rv_lock);
        pthread_mutex_lock(&c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    nats_ReleaseThreadMemory();
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* start and stop                                                                               */
/* ------------------------------------------------------------------------------------------ */

chat_status wk_claims_start(wk_app *app, wk_claims **out)
{
    wk_claims *c = calloc(1, sizeof *c);
    if (c == NULL)
        return CHAT_ERR_NOMEM;
    c->app = app;
    pthread_mutex_init(&c->lock, NULL);
    chat_cond_init_mono(&c->cv);
    pthread_mutex_init(&c->rv_lock, NULL);
    c->revoked = chat_revoke_set_create();
    const char *help = "Route claims of gateways, by result: accepted (the token proved the user) or refused.";
    c->m_accepted = chat_metrics_counter(app->metrics, "chat_route_claims_total", "result=\"accepted\"", help);
    c->m_refused = chat_metrics_counter(app->metrics, "chat_route_claims_total", "result=\"refused\"", help);
    c->m_dropped = chat_metrics_counter(app->metrics, "chat_route_drops_total", NULL,
                                        "Routes removed because a user's last device left a gateway.");
    c->m_failed = chat_metrics_counter(app->metrics, "chat_route_write_errors_total", NULL,
                                       "Route requests answered \"redis\": Redis did not take the writes.");
    wk_redis_link_init(&c->redis, app->cfg, "claims", "", NULL);
    wk_redis_link_init(&c->sweep_redis, app->cfg, "claims", "thread=sweeper", NULL);
    chat_status st = chat_revoke_watch_start(app->cfg, "worker-revoke", NULL, chat_jwt_policy_max_ttl(app->cfg->jwt),
                                             on_revocation, c, &c->watch);
    if (st == CHAT_OK)
        st = chat_nats_check(natsConnection_QueueSubscribe(&c->sub, app->nc, CHAT_SUBJECT_ROUTE_ALL, CLAIMS_QUEUE,
                                                           on_request, c),
                             "claims", "subscribe");
    if (st == CHAT_OK)
        st = chat_nats_check(natsSubscription_SetOnCompleteCB(c->sub, on_complete, c), "claims", "on_complete");
    if (st == CHAT_OK && pthread_create(&c->sweeper, NULL, sweeper_thread, c) != 0)
        st = CHAT_ERR_INTERNAL;
    c->sweeper_started = st == CHAT_OK;
    if (st != CHAT_OK) {
        wk_claims_destroy(c);
        return st;
    }
    *out = c;
    return CHAT_OK;
}

void wk_claims_destroy(wk_claims *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->lock);
    c->stop = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->lock);
    if (c->sweeper_started)
        pthread_join(c->sweeper, NULL);
    bool done = c->sub == NULL || wk_sub_end(c->sub, DRAIN_TIMEOUT_MS, &c->lock, &c->cv, &c->done);
    chat_revoke_watch_destroy(c->watch); /* after it returns, on_revocation never runs again */
    c->watch = NULL;
    if (!done) {
        /* a callback may still run: leave its state alone rather than free it under it */
        LOG_WARN("claims", "event=stop_timeout");
        return;
    }
    natsSubscription_Destroy(c->sub);
    wk_redis_link_close(&c->redis);
    wk_redis_link_close(&c->sweep_redis);
    chat_revoke_set_destroy(c->revoked);
    pthread_mutex_destroy(&c->rv_lock);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->lock);
    free(c);
}
