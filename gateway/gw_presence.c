/* The presence thread: a queue from the lws thread, one hiredis connection, pipelined calls. */
#include "gw_presence.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "chat.pb-c.h"
#include "chat_log.h"
#include "chat_map.h"
#include "chat_mem.h"
#include "chat_routes.h"
#include "chat_time.h"
#include "gw_bus.h"

#define SWEEP_MS 5000
#define REDIS_RETRY_MS 1000 /* after a failed connection attempt, the next one waits this long */

typedef enum { W_ONLINE, W_OFFLINE, W_QUERY, W_BEAT } work_kind;

/* Users per heartbeat work item (one pipeline flush): one pipeline for every user held would grow
 * hiredis's output buffer to ~380 bytes per user (3.8 MB at 10,000), memory malloc keeps. */
#define BEAT_USERS 256

typedef struct work {
    work_kind kind;
    char user[65];
    uint32_t route_gen; /* W_ONLINE: handed back with the user once its route is written */
    uint64_t session;
    gw_bus_fn on_answer; /* W_QUERY */
    int n;
    char (*users)[65]; /* W_QUERY */
    char *names;       /* W_BEAT: n user ids, each ending in NUL */
    struct work *next;
} work;

struct gw_presence {
    gw_server *srv;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    work *head, *tail;       /* under lock */
    bool stop;               /* under lock */
    gw_presence_handlers on; /* read-only after start */
    /* presence thread only */
    redisContext *redis;
    bool redis_ok;
    int64_t connect_after_ms; /* no new connection before this (mono ms) after one failed */
    int64_t routes_ok_ms;     /* the last route write Redis took (Unix ms, 0: none yet) */
    bool routes_failed;       /* a route write failed since then */
    bool first_failed;        /* a user's first route write failed since then */
};

static void enqueue(gw_presence *p, work *w)
{
    pthread_mutex_lock(&p->lock);
    if (p->tail)
        p->tail->next = w;
    else
        p->head = w;
    p->tail = w;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
}

static work *work_new(work_kind kind, const char *user)
{
    work *w = calloc(1, sizeof *w);
    if (w == NULL)
        CHAT_OOM();
    w->kind = kind;
    if (user)
        snprintf(w->user, sizeof w->user, "%s", user);
    return w;
}

void gw_presence_online(gw_presence *p, const char *user, uint32_t route_gen)
{
    if (p == NULL)
        return;
    work *w = work_new(W_ONLINE, user);
    w->route_gen = route_gen;
    enqueue(p, w);
}

void gw_presence_offline(gw_presence *p, const char *user)
{
    if (p)
        enqueue(p, work_new(W_OFFLINE, user));
}

void gw_presence_query(gw_presence *p, uint64_t session, const char *const *users, int n, gw_bus_fn on_answer)
{
    if (p == NULL)
        return;
    work *w = work_new(W_QUERY, NULL);
    w->session = session;
    w->on_answer = on_answer;
    w->n = n;
    w->users = chat_xcalloc((size_t)(n ? n : 1), sizeof *w->users);
    for (int i = 0; i < n; i++)
        snprintf(w->users[i], sizeof w->users[i], "%s", users[i]);
    enqueue(p, w);
}

typedef struct beat_batch {
    gw_presence *p;
    work *w;
    size_t used, cap;
} beat_batch;

static void beat_flush(beat_batch *b)
{
    if (b->w)
        enqueue(b->p, b->w);
    b->w = NULL;
}

static void beat_collect(const char *user, void *value, void *ctx)
{
    (void)value;
    beat_batch *b = ctx;
    size_t len = strlen(user) + 1;
    if (b->w == NULL) {
        b->w = work_new(W_BEAT, NULL);
        b->cap = BEAT_USERS * 16;
        b->used = 0;
        if ((b->w->names = malloc(b->cap)) == NULL)
            CHAT_OOM();
    }
    if (b->used + len > b->cap) {
        b->cap = 2 * (b->used + len);
        if ((b->w->names = realloc(b->w->names, b->cap)) == NULL)
            CHAT_OOM();
    }
    memcpy(b->w->names + b->used, user, len);
    b->used += len;
    if (++b->w->n == BEAT_USERS)
        beat_flush(b);
}

void gw_presence_beat(gw_presence *p, const chat_map *users)
{
    if (p == NULL)
        return;
    beat_batch b = {p, NULL, 0, 0};
    chat_map_each(users, beat_collect, &b);
    beat_flush(&b);
}

/* ---- presence thread ---- */

/* The connection, made when missing. After a failed attempt the next one waits REDIS_RETRY_MS: a
 * Redis that does not answer (each attempt waits up to 1 s) must not hold every user's first sync,
 * which waits for the route write (a reconnect storm would queue one attempt per user). */
static bool connect_redis(gw_presence *p)
{
    if (p->redis && !p->redis->err)
        return true;
    if (p->redis)
        redisFree(p->redis);
    p->redis = NULL;
    if (chat_mono_ms() < p->connect_after_ms)
        return false;
    const chat_cfg *cfg = p->srv->cfg;
    struct timeval tv = {1, 0};
    p->redis = redisConnectWithTimeout(cfg->redis_host, cfg->redis_port, tv);
    if (p->redis == NULL || p->redis->err) {
        if (p->redis_ok)
            LOG_WARN("presence", "event=redis_down detail=\"%s\"", p->redis ? p->redis->errstr : "no memory");
        p->redis_ok = false;
        if (p->redis)
            redisFree(p->redis);
        p->redis = NULL;
        p->connect_after_ms = chat_mono_ms() + REDIS_RETRY_MS;
        return false;
    }
    redisSetTimeout(p->redis, tv);
    bool ok = true;
    if (cfg->redis_password[0]) {
        redisReply *r = redisCommand(p->redis, "AUTH %s", cfg->redis_password);
        ok = r && r->type != REDIS_REPLY_ERROR;
        if (r)
            freeReplyObject(r);
    }
    if (ok && cfg->redis_db) {
        redisReply *r = redisCommand(p->redis, "SELECT %d", cfg->redis_db);
        ok = r && r->type != REDIS_REPLY_ERROR;
        if (r)
            freeReplyObject(r);
    }
    if (!ok) {
        LOG_WARN("presence", "event=redis_auth_failed");
        redisFree(p->redis);
        p->redis = NULL;
        return false;
    }
    if (!p->redis_ok)
        LOG_INFO("presence", "event=redis_up");
    p->redis_ok = true;
    return true;
}

/* Reads n pipelined replies; returns false (and drops the connection) on a broken link. */
static bool drain_replies(gw_presence *p, int n, redisReply **keep)
{
    bool ok = true;
    for (int i = 0; i < n; i++) {
        redisReply *r = NULL;
        if (ok && redisGetReply(p->redis, (void **)&r) != REDIS_OK)
            ok = false;
        if (keep && ok)
            keep[i] = r;
        else if (r)
            freeReplyObject(r);
    }
    if (!ok) {
        redisFree(p->redis);
        p->redis = NULL;
    }
    return ok;
}

static void announce(gw_presence *p, const char *user, bool online, int64_t last_seen)
{
    Chat__V1__Presence pr = CHAT__V1__PRESENCE__INIT;
    pr.user = (char *)user;
    pr.online = online;
    pr.last_seen_ms = last_seen;
    uint8_t buf[128];
    size_t len = chat__v1__presence__pack(&pr, buf);
    char subject[96];
    snprintf(subject, sizeof subject, "chat.presence.%s", user);
    natsConnection_Publish(p->srv->nc, subject, buf, (int)len);
}

static int append_alive(gw_presence *p, const char *user, int64_t now)
{
    const char *gw = p->srv->gateway_id;
    long long exp = (long long)(now + GW_PRESENCE_TTL_MS);
    redisAppendCommand(p->redis, "ZADD presence:%s %lld %s", user, exp, gw);
    redisAppendCommand(p->redis, "ZADD presence:online GT %lld %s", exp, user);
    redisAppendCommand(p->redis, "PEXPIRE presence:%s %d", user, 2 * GW_PRESENCE_TTL_MS);
    redisAppendCommand(p->redis, "SET last_seen:%s %lld", user, (long long)now);
    return 4;
}

/* Keeps CHAT_ROUTES_SINCE_KEY (chat_routes.h): its value before (the first reply), then set when
 * missing (Redis restarted empty, or no gateway reached it for its expiry), its expiry renewed. */
static int append_routes_since(gw_presence *p, int64_t now)
{
    redisAppendCommand(p->redis, "GET %s", CHAT_ROUTES_SINCE_KEY);
    redisAppendCommand(p->redis, "SET %s %lld NX PX %d", CHAT_ROUTES_SINCE_KEY, (long long)now,
                       CHAT_ROUTES_SINCE_TTL_MS);
    redisAppendCommand(p->redis, "PEXPIRE %s %d", CHAT_ROUTES_SINCE_KEY, CHAT_ROUTES_SINCE_TTL_MS);
    return 3;
}

/* A pipeline of append_routes_since and route writes went through (since_before: its first
 * reply). When this gateway's writes failed for longer than CHAT_ROUTES_SINCE_TTL_MS while the key
 * lived on (other gateways kept it: the ingest went on trusting the routes), its own routes may
 * have expired meanwhile and events of users it shares with other gateways gone there only: every
 * session here is closed with 1012 and syncs when back, as after a NATS reconnect. */
static void routes_written(gw_presence *p, const redisReply *since_before, int64_t now)
{
    int64_t since = since_before && since_before->type == REDIS_REPLY_STRING ? strtoll(since_before->str, NULL, 10) : 0;
    if (chat_routes_lost(p->routes_failed, p->routes_ok_ms, since, now)) {
        LOG_WARN("presence", "event=routes_lost unwritten_ms=%lld", (long long)(now - p->routes_ok_ms));
        gw_bus_call(p->srv, p->on.on_routes_lost, NULL);
    } else if (p->first_failed) {
        gw_presence_back *back = chat_xcalloc(1, sizeof *back);
        back->same_epoch = since > 0 && (p->routes_ok_ms == 0 || since <= p->routes_ok_ms);
        gw_bus_call(p->srv, p->on.on_routes_back, back);
    }
    p->routes_ok_ms = now;
    p->routes_failed = false;
    p->first_failed = false;
}

/* Reads the n replies of a pipeline that starts with append_routes_since's: true when Redis took
 * them all (routes_written). */
static bool routes_pipeline(gw_presence *p, int n, int64_t now)
{
    redisReply **r = chat_xcalloc((size_t)n, sizeof *r);
    bool ok = drain_replies(p, n, r);
    if (ok)
        routes_written(p, r[0], now);
    else
        p->routes_failed = true;
    for (int i = 0; i < n; i++) /* those kept before a broken link too */
        if (r[i])
            freeReplyObject(r[i]);
    free(r);
    return ok;
}

/* The user's first device came: its route written (one retry on a fresh connection when the old one
 * broke, e.g. Redis restarted), then handed back to the lws thread, which lets the user's first sync
 * run only then (an event committed after that sync's read finds the route). With Redis unreachable
 * it is handed back all the same: the ingest cannot read routes then either, and goes per user. */
static void do_online(gw_presence *p, const work *w)
{
    int64_t now = chat_now_ms();
    bool written = false;
    for (int attempt = 0; attempt < 2 && !written; attempt++) {
        if (!connect_redis(p))
            break;
        int n = append_routes_since(p, now);
        n += append_alive(p, w->user, now);
        /* the log the ingest's route cache follows: after the route, in the same pipeline */
        redisAppendCommand(p->redis, "XADD %s MINID ~ %lld * u %s", CHAT_ROUTES_LOG_KEY,
                           (long long)(now - CHAT_ROUTES_LOG_KEEP_MS), w->user);
        n++;
        written = routes_pipeline(p, n, now);
    }
    if (!written)
        p->routes_failed = p->first_failed = true;
    gw_presence_route *r = chat_xcalloc(1, sizeof *r);
    snprintf(r->user, sizeof r->user, "%s", w->user);
    r->route_gen = w->route_gen;
    r->written = written;
    gw_bus_call(p->srv, p->on.on_route, r);
    announce(p, w->user, true, now);
}

/* The user left this gateway: gone offline when no other gateway holds a live entry. */
static void leave(gw_presence *p, const char *user, bool announce_offline)
{
    int64_t now = chat_now_ms();
    if (!connect_redis(p)) {
        if (announce_offline)
            announce(p, user, false, now);
        return;
    }
    redisAppendCommand(p->redis, "ZREM presence:%s %s", user, p->srv->gateway_id);
    redisAppendCommand(p->redis, "ZCOUNT presence:%s (%lld +inf", user, (long long)now);
    redisReply *r[2] = {NULL, NULL};
    if (!drain_replies(p, 2, r))
        return;
    bool others = r[1] && r[1]->type == REDIS_REPLY_INTEGER && r[1]->integer > 0;
    freeReplyObject(r[0]);
    freeReplyObject(r[1]);
    if (others)
        return;
    redisAppendCommand(p->redis, "SET last_seen:%s %lld", user, (long long)now);
    redisAppendCommand(p->redis, "ZREM presence:online %s", user);
    if (drain_replies(p, 2, NULL) && announce_offline)
        announce(p, user, false, now);
}

/* One heartbeat item: these users' entries refreshed, in one pipeline (once more on a fresh
 * connection when the old one broke: after a Redis restart every route must be back within
 * CHAT_ROUTES_SETTLE_MS). */
static void heartbeat(gw_presence *p, const work *w)
{
    for (int attempt = 0; attempt < 2 && w->n > 0; attempt++) {
        if (!connect_redis(p)) {
            p->routes_failed = true;
            return;
        }
        int64_t now = chat_now_ms();
        int replies = append_routes_since(p, now);
        const char *user = w->names;
        for (int i = 0; i < w->n; i++, user += strlen(user) + 1)
            replies += append_alive(p, user, now);
        if (routes_pipeline(p, replies, now))
            return;
    }
}

/* Users whose every entry expired (their gateway died): the gateway whose ZREM wins announces. */
static void sweep(gw_presence *p)
{
    if (!connect_redis(p))
        return;
    int64_t now = chat_now_ms();
    redisReply *r = redisCommand(p->redis, "ZRANGEBYSCORE presence:online -inf %lld LIMIT 0 500", (long long)now);
    if (r == NULL) {
        redisFree(p->redis);
        p->redis = NULL;
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++) {
            const char *user = r->element[i]->str;
            if (user == NULL)
                continue;
            redisReply *c = redisCommand(p->redis, "ZCOUNT presence:%s (%lld +inf", user, (long long)now);
            bool alive = c && c->type == REDIS_REPLY_INTEGER && c->integer > 0;
            if (c)
                freeReplyObject(c);
            if (alive)
                continue;
            redisReply *z = redisCommand(p->redis, "ZREM presence:online %s", user);
            bool won = z && z->type == REDIS_REPLY_INTEGER && z->integer == 1;
            if (z)
                freeReplyObject(z);
            if (!won)
                continue;
            redisReply *g = redisCommand(p->redis, "GET last_seen:%s", user);
            int64_t last = g && g->type == REDIS_REPLY_STRING ? strtoll(g->str, NULL, 10) : now;
            if (g)
                freeReplyObject(g);
            LOG_INFO("presence", "event=expired user=%s last_seen=%lld", user, (long long)last);
            announce(p, user, false, last);
        }
    }
    freeReplyObject(r);
}

static void answer_query(gw_presence *p, work *w)
{
    gw_presence_answer *a = calloc(1, sizeof *a + (size_t)w->n * sizeof a->states[0]);
    if (a == NULL)
        CHAT_OOM();
    a->session = w->session;
    a->n = w->n;
    int64_t now = chat_now_ms();
    bool redis = connect_redis(p);
    for (int i = 0; i < w->n; i++) {
        snprintf(a->states[i].user, sizeof a->states[i].user, "%s", w->users[i]);
        if (redis) {
            redisAppendCommand(p->redis, "ZCOUNT presence:%s (%lld +inf", w->users[i], (long long)now);
            redisAppendCommand(p->redis, "GET last_seen:%s", w->users[i]);
        }
    }
    redisReply **r = calloc((size_t)(2 * w->n + 1), sizeof *r);
    if (redis && drain_replies(p, 2 * w->n, r)) {
        for (int i = 0; i < w->n; i++) {
            redisReply *c = r[2 * i], *g = r[2 * i + 1];
            a->states[i].online = c && c->type == REDIS_REPLY_INTEGER && c->integer > 0;
            a->states[i].last_seen_ms = g && g->type == REDIS_REPLY_STRING ? strtoll(g->str, NULL, 10) : 0;
        }
        for (int i = 0; i < 2 * w->n; i++)
            if (r[i])
                freeReplyObject(r[i]);
    }
    free(r);
    gw_bus_call(p->srv, w->on_answer, a);
}

static void *presence_thread(void *arg)
{
    gw_presence *p = arg;
    int64_t next_sweep = 0;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (p->head == NULL && !p->stop) {
            int64_t now = chat_mono_ms();
            int64_t due = next_sweep;
            if (due <= now)
                break;
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            int64_t ns = until.tv_nsec + (due - now) * 1000000;
            until.tv_sec += ns / 1000000000;
            until.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&p->wake, &p->lock, &until);
        }
        work *list = p->head;
        p->head = p->tail = NULL;
        bool stop = p->stop;
        pthread_mutex_unlock(&p->lock);
        for (work *w = list, *next; w; w = next) {
            next = w->next;
            if (w->kind == W_ONLINE)
                do_online(p, w);
            else if (w->kind == W_OFFLINE)
                leave(p, w->user, true);
            else if (w->kind == W_BEAT)
                heartbeat(p, w);
            else
                answer_query(p, w);
            free(w->users);
            free(w->names);
            free(w);
        }
        if (stop)
            break;
        int64_t now = chat_mono_ms();
        if (now >= next_sweep) {
            sweep(p);
            next_sweep = now + SWEEP_MS;
        }
    }
    return NULL;
}

chat_status gw_presence_start(gw_server *srv, const gw_presence_handlers *on, gw_presence **out)
{
    gw_presence *p = calloc(1, sizeof *p);
    if (p == NULL)
        return CHAT_ERR_NOMEM;
    p->srv = srv;
    p->on = *on;
    p->redis_ok = true;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    if (pthread_create(&p->thread, NULL, presence_thread, p) != 0) {
        free(p);
        return CHAT_ERR_INTERNAL;
    }
    *out = p;
    return CHAT_OK;
}

void gw_presence_destroy(gw_presence *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL); /* it did the work queued before the stop: every user's leave */
    for (work *w = p->head, *next; w; w = next) {
        next = w->next;
        free(w->users);
        free(w->names);
        free(w);
    }
    if (p->redis)
        redisFree(p->redis);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p);
}
