/* The routes of a batch's recipients: which gateways hold each of them (presence:<user> in Redis,
 * written by the gateways), cached and checked in one pipelined round trip per batch on the
 * committer's own Redis connection (the epoch, the log of new routes, the users not cached).
 * Committer thread. Redis slow or down never holds the committer more than ROUTES_TIMEOUT_MS: the
 * batch goes per user (chat.deliver.u.<user>) as without routes. */
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

#define ROUTES_TIMEOUT_MS 200      /* connect, and each pipeline's answers */
#define ROUTES_BACKOFF_MIN_MS 500  /* after a failure, no Redis until then, doubling ... */
#define ROUTES_BACKOFF_MAX_MS 5000 /* ... up to this */
#define ROUTES_GATEWAYS_MAX 16     /* gateways of one user taken (more: the user goes per user) */
/* The cache: users' routes are read again only when they expire, when the log of new routes
 * (CHAT_ROUTES_LOG_KEY, written with every user's first route on a gateway) names them, or when the
 * epoch (CHAT_ROUTES_SINCE_KEY) changes. At most ROUTES_LOG_READ_MAX log entries a batch (as many:
 * the cache is dropped for it); a log not read for ROUTES_LOG_TRUST_MS (it keeps 60 s) is read
 * again from its end with an empty cache. */
#define ROUTES_LOG_READ_MAX 4096
#define ROUTES_LOG_TRUST_MS 30000
#define ROUTES_CACHE_MAX 200000

/* Forgets c's Redis connection after a failure and backs off. */
static void routes_fail(committer *c, const char *what)
{
    if (c->redis_ok)
        LOG_WARN("ingest", "event=routes_down committer=%d detail=\"%s\"", c->index, what);
    c->redis_ok = false;
    if (c->redis)
        redisFree(c->redis);
    c->redis = NULL;
    c->redis_backoff_ms = c->redis_backoff_ms ? 2 * c->redis_backoff_ms : ROUTES_BACKOFF_MIN_MS;
    if (c->redis_backoff_ms > ROUTES_BACKOFF_MAX_MS)
        c->redis_backoff_ms = ROUTES_BACKOFF_MAX_MS;
    c->redis_retry_ms = chat_mono_ms() + c->redis_backoff_ms;
    atomic_fetch_add(c->in->m_route_errors, 1);
}

/* Runs one command during the connection's set-up; false on an error reply or a broken link. */
static bool routes_setup_command(committer *c, const char *fmt, const char *arg, int n)
{
    redisReply *r = arg ? redisCommand(c->redis, fmt, arg) : redisCommand(c->redis, fmt, n);
    bool ok = r && r->type != REDIS_REPLY_ERROR;
    if (r)
        freeReplyObject(r);
    return ok;
}

/* c's Redis connection (CHAT_REDIS_URL, as the gateway uses it), made when missing and not backing
 * off; false when there is none now. */
static bool routes_connect(committer *c)
{
    if (c->redis && !c->redis->err)
        return true;
    if (c->redis)
        routes_fail(c, c->redis->errstr);
    if (chat_mono_ms() < c->redis_retry_ms)
        return false;
    const chat_cfg *cfg = c->in->app->cfg;
    struct timeval tv = {0, ROUTES_TIMEOUT_MS * 1000};
    c->redis = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, tv);
    if (c->redis == NULL || c->redis->err) {
        routes_fail(c, c->redis ? c->redis->errstr : "no memory");
        return false;
    }
    redisSetTimeout(c->redis, tv);
    if ((cfg->redis_password[0] && !routes_setup_command(c, "AUTH %s", cfg->redis_password, 0)) ||
        (cfg->redis_db && !routes_setup_command(c, "SELECT %d", NULL, cfg->redis_db))) {
        routes_fail(c, "AUTH or SELECT refused");
        return false;
    }
    if (!c->redis_ok)
        LOG_INFO("ingest", "event=routes_up committer=%d", c->index);
    c->redis_ok = true;
    c->redis_backoff_ms = 0;
    return true;
}

/* The users of b's routed conversations (CHAT_ROUTED_MIN_MEMBERS members or more), each once:
 * a map user -> NULL, or NULL when there is none. */
static chat_map *routed_users(const wk_ingest *in, const batch *b)
{
    int min = in->app->cfg->routed_min_members;
    if (min <= 0)
        return NULL;
    chat_map *users = NULL;
    for (int k = 0; k < b->nconvs; k++) {
        const members *m = &b->convs[k];
        if (m->n < min)
            continue;
        if (users == NULL)
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

typedef struct ask {
    committer *c;
    const char **users; /* asked in this pipeline, in order */
    int n;
    chat_map *stale; /* cached users this batch may not trust (the log named them): per user */
    long long now;
    bool use_cache;
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
    redisAppendCommand(a->c->redis, "ZRANGEBYSCORE presence:%s (%lld +inf WITHSCORES LIMIT 0 %d", user, a->now,
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
    if (w == list)
        free(list);
    else
        e->list = list;
    return e;
}

/* Whether routes written since `since` (Unix ms; 0: the key is missing) are whole at now_ms. */
bool wk_ingest_routes_settled(int64_t since, int64_t now_ms)
{
    return since > 0 && now_ms - since >= CHAT_ROUTES_SETTLE_MS;
}

/* The answer of the log read (XRANGE after the last id, or XREVRANGE for the newest): the users
 * whose routes changed are dropped from the cache and, when they were cached for this batch,
 * marked stale (per user this time); the last id moves. A read that may have missed entries (as
 * many as asked for) empties the cache. */
static void routes_log(committer *c, ask *a, const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) { /* no log read: start again from its end */
        cache_flush(c);
        c->route_log_id[0] = '\0';
        a->use_cache = false;
        return;
    }
    c->route_log_read_ms = (int64_t)a->now;
    if (a->use_cache && r->elements >= ROUTES_LOG_READ_MAX) {
        cache_flush(c);
        a->use_cache = false;
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
            chat_map_put(a->stale, user, NULL, NULL);
        }
    }
    if (!c->route_log_id[0])
        snprintf(c->route_log_id, sizeof c->route_log_id, "0-0"); /* an empty log: read it from its start */
}

/* Reads the answers of the pipeline asked into the cache; false when the link broke (logged). */
static bool routes_answers(committer *c, ask *a)
{
    redisReply *since = NULL, *log = NULL;
    if (redisGetReply(c->redis, (void **)&since) != REDIS_OK || redisGetReply(c->redis, (void **)&log) != REDIS_OK) {
        freeReplyObject(since);
        routes_fail(c, c->redis->errstr);
        return false;
    }
    int64_t since_ms = since && since->type == REDIS_REPLY_STRING ? strtoll(since->str, NULL, 10) : 0;
    freeReplyObject(since);
    if (since_ms != c->route_since) { /* a new epoch: nothing cached holds */
        cache_flush(c);
        c->route_since = since_ms;
        a->use_cache = false;
    }
    routes_log(c, a, log);
    freeReplyObject(log);
    for (int i = 0; i < a->n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c->redis, (void **)&r) != REDIS_OK) {
            routes_fail(c, c->redis->errstr);
            return false;
        }
        cache_drop(c, a->users[i]);
        chat_map_put(c->route_cache, a->users[i], route_read(r), NULL);
        freeReplyObject(r);
    }
    return true;
}

typedef struct pick {
    committer *c;
    chat_map *routes;
    const chat_map *stale;
} pick;

/* Puts user's cached gateways into the batch's routes unless the log made them stale (a
 * chat_map_each callback). */
static void pick_user(const char *user, void *value, void *ctx)
{
    (void)value;
    pick *p = ctx;
    const route_entry *e = chat_map_get(p->c->route_cache, user);
    if (e && e->list && chat_map_get(p->stale, user) == NULL)
        chat_map_put(p->routes, user, e->list, NULL);
}

chat_map *wk_ingest_routes_read(committer *c, const batch *b)
{
    chat_map *users = routed_users(c->in, b);
    if (users == NULL)
        return NULL;
    chat_map *routes = NULL;
    if (routes_connect(c)) {
        int64_t now = chat_now_ms();
        if (c->route_cache == NULL || chat_map_size(c->route_cache) > ROUTES_CACHE_MAX)
            cache_flush(c);
        if (now - c->route_log_read_ms > ROUTES_LOG_TRUST_MS) { /* the log keeps 60 s: entries may be gone */
            cache_flush(c);
            c->route_log_id[0] = '\0';
        }
        ask a = {c,
                 chat_xcalloc(chat_map_size(users), sizeof(char *)),
                 0,
                 chat_map_create(),
                 (long long)now,
                 c->route_log_id[0] != '\0'};
        redisAppendCommand(c->redis, "GET %s", CHAT_ROUTES_SINCE_KEY);
        if (a.use_cache)
            redisAppendCommand(c->redis, "XRANGE %s (%s + COUNT %d", CHAT_ROUTES_LOG_KEY, c->route_log_id,
                               ROUTES_LOG_READ_MAX);
        else
            redisAppendCommand(c->redis, "XREVRANGE %s + - COUNT 1", CHAT_ROUTES_LOG_KEY);
        chat_map_each(users, ask_user, &a);
        if (routes_answers(c, &a) && wk_ingest_routes_settled(c->route_since, now)) {
            routes = chat_map_create();
            pick p = {c, routes, a.stale};
            chat_map_each(users, pick_user, &p);
        }
        free(a.users);
        chat_map_destroy(a.stale);
    }
    chat_map_destroy(users);
    return routes;
}

void wk_ingest_routes_free(chat_map *routes)
{
    chat_map_destroy(routes); /* the lists are the cache's */
}

void wk_ingest_routes_close(committer *c)
{
    if (c->redis)
        redisFree(c->redis);
    c->redis = NULL;
    if (c->route_cache)
        chat_map_each(c->route_cache, entry_free, NULL);
    chat_map_destroy(c->route_cache);
    c->route_cache = NULL;
}
