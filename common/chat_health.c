/* The dependency probe thread. State is read by the HTTP thread under a mutex. */
#include "chat_health.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "chat_log.h"
#include "chat_nats.h"
#include "chat_redis.h"
#include "chat_time.h"

struct chat_health {
    const chat_cfg *cfg;
    unsigned deps;
    natsConnection *nc;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop;
    bool pg_ok, redis_ok;
    PGconn *pg;
    redisContext *redis;
};

static void probe_pg(chat_health *h, bool *ok, char *err, size_t size)
{
    if (h->pg && PQstatus(h->pg) != CONNECTION_OK) {
        PQfinish(h->pg);
        h->pg = NULL;
    }
    if (h->pg == NULL) {
        const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
        const char *vals[] = {h->cfg->pg_dsn, "2", "chat-health", NULL};
        h->pg = PQconnectdbParams(keys, vals, 1);
    }
    PGresult *r = NULL;
    if (PQstatus(h->pg) == CONNECTION_OK)
        r = PQexec(h->pg, "SELECT 1");
    *ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;
    if (!*ok) {
        snprintf(err, size, "%s", PQerrorMessage(h->pg));
        char *nl = strchr(err, '\n');
        if (nl)
            *nl = '\0';
        PQfinish(h->pg);
        h->pg = NULL;
    }
    PQclear(r);
}

/* PING as CHAT_REDIS_URL's user (chat_redis_open authenticates: a Redis that wants a password
 * answers nothing else, and the gateway's read-only user may PING). */
static void probe_redis(chat_health *h, bool *ok, char *err, size_t size)
{
    if (h->redis && h->redis->err) {
        redisFree(h->redis);
        h->redis = NULL;
    }
    if (h->redis == NULL)
        h->redis = chat_redis_open(h->cfg, 1000, err, size);
    redisReply *r = h->redis ? redisCommand(h->redis, "PING") : NULL;
    *ok = r && r->type == REDIS_REPLY_STATUS;
    if (!*ok && h->redis) {
        const char *why = h->redis->errstr[0] ? h->redis->errstr : "no answer to PING";
        snprintf(err, size, "%s", r && r->type == REDIS_REPLY_ERROR ? r->str : why);
        redisFree(h->redis);
        h->redis = NULL;
    }
    if (r)
        freeReplyObject(r);
}

static void *health_thread(void *arg)
{
    chat_health *h = arg;
    bool was_pg = true, was_redis = true;
    for (;;) {
        bool pg_ok = true, redis_ok = true;
        char pg_err[256] = "", redis_err[256] = "";
        if (h->deps & CHAT_DEP_PG)
            probe_pg(h, &pg_ok, pg_err, sizeof pg_err);
        if (h->deps & CHAT_DEP_REDIS)
            probe_redis(h, &redis_ok, redis_err, sizeof redis_err);
        if (pg_ok != was_pg)
            CHAT_LOG(pg_ok ? CHAT_LOG_INFO : CHAT_LOG_WARN, "health", "event=%s dep=postgres detail=\"%s\"",
                     pg_ok ? "dep_up" : "dep_down", pg_err);
        if (redis_ok != was_redis)
            CHAT_LOG(redis_ok ? CHAT_LOG_INFO : CHAT_LOG_WARN, "health", "event=%s dep=redis detail=\"%s\"",
                     redis_ok ? "dep_up" : "dep_down", redis_err);
        was_pg = pg_ok;
        was_redis = redis_ok;
        pthread_mutex_lock(&h->lock);
        h->pg_ok = pg_ok;
        h->redis_ok = redis_ok;
        if (!h->stop)
            chat_cond_wait_ms(&h->wake, &h->lock, 1000);
        bool stop = h->stop;
        pthread_mutex_unlock(&h->lock);
        if (stop)
            break;
    }
    PQfinish(h->pg);
    if (h->redis)
        redisFree(h->redis);
    return NULL;
}

chat_status chat_health_start(const chat_cfg *cfg, unsigned deps, natsConnection *nc, chat_health **out)
{
    chat_health *h = calloc(1, sizeof *h);
    if (h == NULL)
        return CHAT_ERR_NOMEM;
    h->cfg = cfg;
    h->deps = deps;
    h->nc = nc;
    pthread_mutex_init(&h->lock, NULL);
    chat_cond_init_mono(&h->wake);
    if (pthread_create(&h->thread, NULL, health_thread, h) != 0) {
        free(h);
        return CHAT_ERR_INTERNAL;
    }
    *out = h;
    return CHAT_OK;
}

bool chat_health_dep_ok(chat_health *h, unsigned dep)
{
    if (dep == CHAT_DEP_NATS)
        return chat_nats_connected(h->nc);
    pthread_mutex_lock(&h->lock);
    bool ok = dep == CHAT_DEP_PG ? h->pg_ok : h->redis_ok;
    pthread_mutex_unlock(&h->lock);
    return ok;
}

/* /readyz answers anyone who can reach the port: up or down per dependency and nothing more. The
 * error text (addresses, user names, server versions) goes to the log, at each change (dep_down). */
bool chat_health_ready(void *health, char *detail, size_t size)
{
    chat_health *h = health;
    bool all = true;
    size_t used = 0;
    detail[0] = '\0';
#define LINE(...) \
    do { \
        int n_ = snprintf(detail + used, size - used, __VA_ARGS__); \
        if (n_ > 0 && (size_t)n_ < size - used) \
            used += (size_t)n_; \
    } while (0)
    if (h->deps & CHAT_DEP_NATS) {
        bool ok = chat_nats_connected(h->nc);
        all &= ok;
        LINE("nats %s\n", ok ? "ok" : "down");
    }
    pthread_mutex_lock(&h->lock);
    if (h->deps & CHAT_DEP_PG) {
        all &= h->pg_ok;
        LINE("postgres %s\n", h->pg_ok ? "ok" : "down");
    }
    if (h->deps & CHAT_DEP_REDIS) {
        all &= h->redis_ok;
        LINE("redis %s\n", h->redis_ok ? "ok" : "down");
    }
    pthread_mutex_unlock(&h->lock);
#undef LINE
    return all;
}

void chat_health_destroy(chat_health *h)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&h->lock);
    h->stop = true;
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->thread, NULL);
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->wake);
    free(h);
}
