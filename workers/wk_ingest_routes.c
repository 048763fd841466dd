/* The routes of a batch's recipients: which gateways hold each of them (presence:<user> in Redis,
 * written by the api role from the gateways' claims), cached and checked in one pipelined round
 * trip per batch on the committer's own Redis connection (the epoch, the log of new routes, the
 * users not cached; a second one only for cached users the log names). Committer thread. A
 * recipient without a route gets nothing live (offline, or not claimed yet: its gateway lets no
 * session run before its claim is written); Redis slow or down is the caller's to wait out
 * (wk_ingest_fanout.c): there is no per-user path. */
#include "wk_ingestp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "chat_log.h"
#include "chat_mem.h"
#include "chat_routes.h"
#include "chat_time.h"
#include "wk_routes.h"

/* gateways of one user read (a user holds at most CHAT_WS_MAX_PER_USER sessions on each gateway;
 * more gateways than this are logged and the rest get nothing live) */
#define ROUTES_GATEWAYS_MAX 64
/* The cache: users' routes are read again only when they expire, when the log of new routes
 * (CHAT_ROUTES_LOG_KEY, written with every user's first route on a gateway) names them, or when the
 * epoch (CHAT_ROUTES_SINCE_KEY) changes. At most ROUTES_LOG_READ_MAX log entries a batch (as many:
 * the cache is dropped for it); a log not read for ROUTES_LOG_TRUST_MS (it keeps 60 s) is read
 * again from its end with an empty cache. */
#define ROUTES_LOG_READ_MAX 4096
#define ROUTES_LOG_TRUST_MS 30000
#define ROUTES_CACHE_MAX 200000

/* c's Redis connection (CHAT_REDIS_URL, as the gateway uses it), made when missing and not backing
 * off (wk_redis_link); false when there is none now. */
static bool routes_connect(committer *c)
{
    return wk_redis_link_ready(&c->redis);
}

/* The members of b's conversations, each once: a map user -> NULL, or NULL when there is none. */
static chat_map *routed_users(const batch *b)
{
    chat_map *users = NULL;
    for (int k = 0; k < b->nconvs; k++) {
        const members *m = &b->convs[k];
        if (users == NULL && m->n > 0)
            users = chat_map_create();
        for (int u = 0; u < m->n; u++)
            chat_map_put(users, m->users[u], NULL, NULL);
    }
    return users;
}

/* ---- the cache of routes (committer thread) ---- */

/* A user's routes as last read: its gateways ("g1\0g2\0\0", NULL: none) until expires_ms (the
 * earliest expiry of those routes; none: until the log names the user). */
typedef struct route_entry {
    int64_t expires_ms;
    char *list;
} route_entry;

/* Frees one cache entry (a chat_map_each callback). */
static void entry_free(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    route_entry *e = value;
    free(e->list);
    free(e);
}

/* Forgets every cached route (a new epoch, a log read that may have missed entries). */
static void cache_flush(committer *c)
{
    if (c->route_cache)
        chat_map_each(c->route_cache, entry_free, NULL);
    chat_map_destroy(c->route_cache);
    c->route_cache = chat_map_create();
}

/* Forgets user's cached route. */
static void cache_drop(committer *c, const char *user)
{
    route_entry *e = chat_map_remove(c->route_cache, user);
    if (e)
        entry_free(user, e, NULL);
}

static void any_route(const char *key, void *value, void *ctx)
{
    (void)key;
    const route_entry *e = value;
    if (e->list)
        *(bool *)ctx = true;
}

/* Whether the cache knows a live route (a new epoch then lost routes someone was using). */
static bool cache_has_routes(committer *c)
{
    bool any = false;
    if (c->route_cache)
        chat_map_each(c->route_cache, any_route, &any);
    return any;
}

typedef struct ask {
    committer *c;
    const char **users; /* asked in this pipeline, in order */
    int n;
    chat_map *stale; /* cached users this batch may not trust (the log named them): read again */
    long long now;
    bool use_cache;
    bool flushed; /* the answers emptied the cache: users it held were not asked, ask them all again */
} ask;

/* Appends one user's ZRANGEBYSCORE to the pipeline unless its cached routes still hold (a
 * chat_map_each callback). */
static void ask_user(const char *user, void *value, void *ctx)
{
    (void)value;
    ask *a = ctx;
    const route_entry *e = a->use_cache ? chat_map_get(a->c->route_cache, user) : NULL;
    if (e && e->expires_ms > a->now)
        return;
    a->users[a->n++] = user;
    redisAppendCommand(a->c->redis.c, "ZRANGEBYSCORE presence:%s (%lld +inf WITHSCORES LIMIT 0 %d", user, a->now,
                       ROUTES_GATEWAYS_MAX);
}

/* The entry of a ZRANGEBYSCORE ... WITHSCORES answer: the gateway ids that are safe subject
 * tokens, the earliest of their expiries. */
static route_entry *route_read(const redisReply *r)
{
    route_entry *e = chat_xcalloc(1, sizeof *e);
    e->expires_ms = INT64_MAX;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2)
        return e;
    size_t len = 1;
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        len += r->element[i]->len + 1;
    char *list = chat_xmalloc(len), *w = list;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *g = r->element[i], *score = r->element[i + 1];
        if (g->type != REDIS_REPLY_STRING || g->len == 0 || g->len > 40 || strpbrk(g->str, ".*> \t\r\n"))
            continue;
        int64_t exp = score->type == REDIS_REPLY_STRING ? strtoll(score->str, NULL, 10) : 0;
        if (exp < e->expires_ms)
            e->expires_ms = exp;
        memcpy(w, g->str, g->len + 1);
        w += g->len + 1;
    }
    *w = '\0';
    if (r->elements / 2 >= ROUTES_GATEWAYS_MAX)
        LOG_WARN("ingest", "event=routes_truncated gateways=%d", ROUTES_GATEWAYS_MAX);
    if (w == list)
        free(list);
    else
        e->list = list;
    return e;
}

/* The answer of the log read (XRANGE after the last id, or XREVRANGE for the newest): the users
 * whose routes changed are dropped from the cache and, when they were cached for this batch,
 * marked stale (read again for it); the last id moves. A read that may have missed entries (as
 * many as asked for) empties the cache. */
static void routes_log(committer *c, ask *a, const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) { /* no log read: start again from its end */
        cache_flush(c);
        c->route_log_id[0] = '\0';
        a->use_cache = false;
        a->flushed = true;
        return;
    }
    c->route_log_read_ms = (int64_t)a->now;
    if (a->use_cache && r->elements >= ROUTES_LOG_READ_MAX) {
        cache_flush(c);
        a->use_cache = false;
        a->flushed = true;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *entry = r->element[i];
        if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 || entry->element[0]->type != REDIS_REPLY_STRING)
            continue;
        snprintf(c->route_log_id, sizeof c->route_log_id, "%s", entry->element[0]->str);
        const redisReply *kv = entry->element[1];
        for (size_t k = 0; a->use_cache && kv->type == REDIS_REPLY_ARRAY && k + 1 < kv->elements; k += 2) {
            const char *user = kv->element[k + 1]->str;
            if (user == NULL || chat_map_get(c->route_cache, user) == NULL)
                continue;
            cache_drop(c, user);
            chat_map_put(a->stale, user, a, NULL); /* any value but NULL: chat_map_get tells it is there */
        }
    }
    if (!c->route_log_id[0])
        snprintf(c->route_log_id, sizeof c->route_log_id, "0-0"); /* an empty log: read it from its start */
}

/* Reads the answers of the a->n users asked into the cache; false when the link broke (logged). */
static bool users_answers(committer *c, ask *a)
{
    for (int i = 0; i < a->n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c->redis.c, (void **)&r) != REDIS_OK) {
            wk_redis_link_fail(&c->redis, c->redis.c->errstr);
            return false;
        }
        cache_drop(c, a->users[i]);
        chat_map_put(c->route_cache, a->users[i], route_read(r), NULL);
        freeReplyObject(r);
    }
    return true;
}

/* Reads the answers of the pipeline asked into the cache; false when the link broke (logged). */
static bool routes_answers(committer *c, ask *a)
{
    redisReply *since = NULL, *renewed = NULL, *log = NULL;
    if (redisGetReply(c->redis.c, (void **)&since) != REDIS_OK ||
        redisGetReply(c->redis.c, (void **)&renewed) != REDIS_OK || redisGetReply(c->redis.c, (void **)&log) != REDIS_OK) {
        freeReplyObject(since);
        freeReplyObject(renewed);
        wk_redis_link_fail(&c->redis, c->redis.c->errstr);
        return false;
    }
    int64_t since_ms = since && since->type == REDIS_REPLY_STRING ? strtoll(since->str, NULL, 10) : 0;
    freeReplyObject(since);
    freeReplyObject(renewed);
    if (since_ms != c->route_since) { /* a new epoch: nothing cached holds */
        if (c->route_since != 0 && cache_has_routes(c)) { /* Redis lost live routes under us: hold (chat_routes.h) */
            c->route_settle_ms = (since_ms ? since_ms : (int64_t)a->now) + CHAT_ROUTES_SETTLE_MS;
            LOG_WARN("ingest", "event=routes_new_epoch was=%lld now=%lld hold_ms=%lld", (long long)c->route_since,
                     (long long)since_ms, (long long)(c->route_settle_ms - a->now));
        }
        cache_flush(c);
        c->route_since = since_ms;
        a->flushed = a->use_cache; /* with use_cache false everyone was asked already */
        a->use_cache = false;
    }
    routes_log(c, a, log);
    freeReplyObject(log);
    return users_answers(c, a);
}

typedef struct pick {
    committer *c;
    chat_map *routes;
} pick;

/* Puts user's cached gateways into the batch's routes (a chat_map_each callback). */
static void pick_user(const char *user, void *value, void *ctx)
{
    (void)value;
    pick *p = ctx;
    const route_entry *e = chat_map_get(p->c->route_cache, user);
    if (e && e->list)
        chat_map_put(p->routes, user, e->list, NULL);
}

/* ask_user for the batch's users that reread must ask (a chat_map_each callback over them). */
static void ask_again(const char *user, void *value, void *ctx)
{
    ask *a = ctx;
    if (a->flushed || chat_map_get(a->stale, user))
        ask_user(user, value, ctx);
}

/* The batch's users the pipeline did not ask but may not take from the cache, read in a second
 * round trip: all of them when the answers emptied the cache (a new epoch, a log read that may
 * have missed entries: the users it held were not asked), else the stale ones (the log named them
 * since they were cached; a->stale may name users of other batches too). False when the link
 * broke. */
static bool reread(committer *c, ask *a, chat_map *users)
{
    if (!a->flushed && chat_map_size(a->stale) == 0)
        return true;
    a->n = 0;
    a->use_cache = false;
    chat_map_each(users, ask_again, a);
    return a->n == 0 || users_answers(c, a);
}

/* One read of the routes of users on the connection there is: a map user -> gateways ("g1\0g2\0\0",
 * NULL: none), or NULL when Redis did not answer (*answered false: the connection is given up). */
static chat_map *routes_once(committer *c, chat_map *users, bool *answered)
{
    chat_map *routes = NULL;
    int64_t now = chat_now_ms();
    if (c->route_cache == NULL || chat_map_size(c->route_cache) > ROUTES_CACHE_MAX)
        cache_flush(c);
    if (now - c->route_log_read_ms > ROUTES_LOG_TRUST_MS) { /* the log keeps 60 s: entries may be gone */
        cache_flush(c);
        c->route_log_id[0] = '\0';
    }
    ask a = {.c = c,
             .users = chat_xcalloc(chat_map_size(users), sizeof(char *)),
             .stale = chat_map_create(),
             .now = (long long)now,
             .use_cache = c->route_log_id[0] != '\0'};
    redisAppendCommand(c->redis.c, "GET %s", CHAT_ROUTES_SINCE_KEY);
    redisAppendCommand(c->redis.c, "PEXPIRE %s %d", CHAT_ROUTES_SINCE_KEY, CHAT_ROUTES_SINCE_TTL_MS); /* in use */
    if (a.use_cache)
        redisAppendCommand(c->redis.c, "XRANGE %s (%s + COUNT %d", CHAT_ROUTES_LOG_KEY, c->route_log_id,
                           ROUTES_LOG_READ_MAX);
    else
        redisAppendCommand(c->redis.c, "XREVRANGE %s + - COUNT 1", CHAT_ROUTES_LOG_KEY);
    chat_map_each(users, ask_user, &a);
    *answered = routes_answers(c, &a) && reread(c, &a, users);
    if (*answered) {
        routes = chat_map_create();
        pick p = {c, routes};
        chat_map_each(users, pick_user, &p);
    }
    free(a.users);
    chat_map_destroy(a.stale);
    return routes;
}

/* The epoch key missing under a running ingest (Redis restarted empty, no claim since): set it, so
 * that the gateways' next claims find a new epoch. */
static void epoch_start(committer *c)
{
    if (c->route_since != 0 || c->route_settle_ms == 0 || c->redis.c == NULL)
        return;
    redisReply *r = redisCommand(c->redis.c, "SET %s %lld NX PX %d", CHAT_ROUTES_SINCE_KEY, (long long)chat_now_ms(),
                                 CHAT_ROUTES_SINCE_TTL_MS);
    if (r == NULL)
        wk_redis_link_fail(&c->redis, c->redis.c->errstr);
    freeReplyObject(r);
}

bool wk_ingest_routes_read(committer *c, const batch *b, chat_map **out)
{
    *out = NULL;
    chat_map *users = routed_users(b);
    if (users == NULL)
        return true;
    bool had = c->redis.c != NULL && !c->redis.c->err, answered = false;
    if (routes_connect(c))
        *out = routes_once(c, users, &answered);
    /* a connection that broke since its last use (Redis restarted) is made again at once and the
     * pipeline sent once more: only a Redis that is really away holds the batch */
    if (!answered && had) {
        wk_redis_link_retry_now(&c->redis);
        if (routes_connect(c))
            *out = routes_once(c, users, &answered);
    }
    chat_map_destroy(users);
    if (answered && chat_now_ms() < c->route_settle_ms) { /* a new epoch: hold until the gateways resynced */
        epoch_start(c);
        wk_ingest_routes_free(*out);
        *out = NULL;
        return false;
    }
    return answered;
}

void wk_ingest_routes_free(chat_map *routes)
{
    chat_map_destroy(routes); /* the lists are the cache's */
}

void wk_ingest_routes_close(committer *c)
{
    wk_redis_link_close(&c->redis);
    if (c->route_cache)
        chat_map_each(c->route_cache, entry_free, NULL);
    chat_map_destroy(c->route_cache);
    c->route_cache = NULL;
}
