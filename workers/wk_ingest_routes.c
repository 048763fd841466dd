/* The routes of a batch's recipients: which gateways hold each of them (presence:<user> in Redis,
 * written by the gateways), read in one pipelined round trip on the committer's own Redis
 * connection. Committer thread. Redis slow or down never holds the committer more than
 * ROUTES_TIMEOUT_MS: the batch goes per user (chat.deliver.u.<user>) as without routes. */
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

void wk_ingest_routes_close(committer *c)
{
    if (c->redis)
        redisFree(c->redis);
    c->redis = NULL;
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

typedef struct ask {
    committer *c;
    const char **users;
    int n;
    long long now;
} ask;

/* Appends one user's ZRANGEBYSCORE to the pipeline (a chat_map_each callback). */
static void ask_user(const char *user, void *value, void *ctx)
{
    (void)value;
    ask *a = ctx;
    a->users[a->n++] = user;
    redisAppendCommand(a->c->redis, "ZRANGEBYSCORE presence:%s (%lld +inf LIMIT 0 %d", user, a->now,
                       ROUTES_GATEWAYS_MAX);
}

/* "g1\0g2\0\0": the gateway ids of a ZRANGEBYSCORE answer that are safe subject tokens, or NULL
 * when none is. */
static char *route_list(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0)
        return NULL;
    size_t len = 1;
    for (size_t i = 0; i < r->elements; i++)
        len += r->element[i]->len + 1;
    char *list = chat_xmalloc(len), *w = list;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *g = r->element[i];
        if (g->type != REDIS_REPLY_STRING || g->len == 0 || g->len > 40 || strpbrk(g->str, ".*> \t\r\n"))
            continue;
        memcpy(w, g->str, g->len + 1);
        w += g->len + 1;
    }
    *w = '\0';
    if (w == list) {
        free(list);
        return NULL;
    }
    return list;
}

/* Whether routes written since `since` (Unix ms; 0: the key is missing) are whole at now_ms. */
bool wk_ingest_routes_settled(int64_t since, int64_t now_ms)
{
    return since > 0 && now_ms - since >= CHAT_ROUTES_SETTLE_MS;
}

/* Reads the answers of the pipeline asked: the map of routes, or NULL (the link broke: logged). */
static chat_map *routes_answers(committer *c, const ask *a)
{
    redisReply *since = NULL;
    if (redisGetReply(c->redis, (void **)&since) != REDIS_OK) {
        routes_fail(c, c->redis->errstr);
        return NULL;
    }
    int64_t since_ms = since && since->type == REDIS_REPLY_STRING ? strtoll(since->str, NULL, 10) : 0;
    freeReplyObject(since);
    bool settled = wk_ingest_routes_settled(since_ms, (int64_t)a->now);
    chat_map *routes = chat_map_create();
    for (int i = 0; i < a->n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(c->redis, (void **)&r) != REDIS_OK) {
            routes_fail(c, c->redis->errstr);
            wk_ingest_routes_free(routes);
            return NULL;
        }
        char *list = settled ? route_list(r) : NULL;
        if (list)
            chat_map_put(routes, a->users[i], list, NULL);
        freeReplyObject(r);
    }
    return routes;
}

chat_map *wk_ingest_routes_read(committer *c, const batch *b)
{
    chat_map *users = routed_users(c->in, b);
    if (users == NULL)
        return NULL;
    chat_map *routes = NULL;
    if (routes_connect(c)) {
        ask a = {c, chat_xcalloc(chat_map_size(users), sizeof(char *)), 0, (long long)chat_now_ms()};
        redisAppendCommand(c->redis, "GET %s", CHAT_ROUTES_SINCE_KEY);
        chat_map_each(users, ask_user, &a);
        routes = routes_answers(c, &a);
        free(a.users);
    }
    chat_map_destroy(users); /* the routes map copied the keys it kept */
    return routes;
}

/* Frees one route list (a chat_map_each callback). */
static void free_list(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    free(value);
}

void wk_ingest_routes_free(chat_map *routes)
{
    if (routes == NULL)
        return;
    chat_map_each(routes, free_list, NULL);
    chat_map_destroy(routes);
}
