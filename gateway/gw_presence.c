/* The presence thread: a queue from the lws thread, route requests to the worker over NATS, one
 * hiredis connection for queries. */
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
#include "chat_nats.h"
#include "chat_redis.h"
#include "chat_routes.h"
#include "chat_time.h"
#include "gw_bus.h"

#define REDIS_RETRY_MS 1000 /* after a failed connection attempt, the next one waits this long */

typedef enum { W_ONLINE, W_OFFLINE, W_QUERY, W_BEAT } work_kind;

/* Claims per request (a heartbeat work item, or a run of first devices): one request for every user
 * held would be megabytes (a token is a few hundred bytes); BEAT_BYTES keeps one under NATS's
 * default max_payload of 1 MB with tokens of up to CHAT_JWT_MAX_LEN. */
#define BEAT_USERS 256
#define BEAT_TRIES 3              /* a heartbeat batch is asked up to this many times ... */
#define BEAT_PAUSE_MS 1000        /* ... this long apart, before its users' sessions are closed */
#define FIRST_CLAIM_RETRIES 6     /* a first claim not answered is asked again this many times ... */
#define FIRST_CLAIM_PAUSE_MS 500  /* ... this long apart */
#define BEAT_BYTES (256 * 1024)

typedef struct work {
    work_kind kind;
    char user[65];
    uint32_t route_gen; /* W_ONLINE: handed back with the user once its route is written */
    char *token;        /* W_ONLINE: the user's token */
    uint64_t session;
    gw_bus_fn on_answer; /* W_QUERY */
    int n;
    char (*users)[65]; /* W_QUERY */
    char *names;       /* W_BEAT: n pairs of user id and token, each ending in NUL */
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
    char subject[64];        /* chat.route.<gateway id>; read-only after start */
    natsConnection *nc;      /* the route requests': its inboxes are _INBOX.gw.<gateway id>.rt.*, inside
                                the gateway's subscribe permission (the main connection's are not) */
    /* presence thread only */
    bool worker_ok;          /* as last logged */
    bool stopping;           /* the last round: the leaves of every user */
    redisContext *redis;
    bool redis_ok;
    int64_t connect_after_ms; /* no new connection before this (mono ms) after one failed */
    int64_t routes_ok_ms;     /* the last route write the worker made (Unix ms, 0: none yet) */
    bool routes_failed;       /* a route write failed since then */
    int64_t epoch_ms;         /* routes:since as the last written claim found it (0: none yet) */
    uint32_t claimed_gen;     /* the route_gen of the last first claim sent before this request */
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

void gw_presence_online(gw_presence *p, const char *user, uint32_t route_gen, const char *token)
{
    if (p == NULL)
        return;
    work *w = work_new(W_ONLINE, user);
    w->route_gen = route_gen;
    w->token = chat_xstrdup(token ? token : "");
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
    gw_presence_token_fn token_of;
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
    beat_batch *b = ctx;
    const char *token = b->token_of(value);
    if (token == NULL)
        token = "";
    size_t ulen = strlen(user) + 1, len = ulen + strlen(token) + 1;
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
    memcpy(b->w->names + b->used, user, ulen);
    memcpy(b->w->names + b->used + ulen, token, len - ulen);
    b->used += len;
    if (++b->w->n == BEAT_USERS || b->used >= BEAT_BYTES)
        beat_flush(b);
}

void gw_presence_beat(gw_presence *p, const chat_map *users, gw_presence_token_fn token_of)
{
    if (p == NULL)
        return;
    beat_batch b = {p, token_of, NULL, 0, 0};
    chat_map_each(users, beat_collect, &b);
    beat_flush(&b);
}

/* ---- presence thread ---- */

/* The connection for presence queries (read only), made when missing. After a failed attempt the
 * next one waits REDIS_RETRY_MS: a Redis that does not answer (each attempt waits up to 1 s) must not
 * hold the queries queued behind it. */
static bool connect_redis(gw_presence *p)
{
    if (p->redis && !p->redis->err)
        return true;
    if (p->redis)
        redisFree(p->redis);
    p->redis = NULL;
    if (chat_mono_ms() < p->connect_after_ms)
        return false;
    char err[160];
    p->redis = chat_redis_open(p->srv->cfg, 1000, err, sizeof err);
    if (p->redis == NULL) {
        if (p->redis_ok)
            LOG_WARN("presence", "event=redis_down detail=\"%s\"", err);
        p->redis_ok = false;
        p->connect_after_ms = chat_mono_ms() + REDIS_RETRY_MS;
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

/* Sends rq on chat.route.<this gateway>: the worker's answer (the caller frees it), or NULL when none
 * came within GW_ROUTE_TIMEOUT_MS (no worker, NATS away). */
static Chat__V1__RouteReply *route_call(gw_presence *p, const Chat__V1__RouteRequest *rq)
{
    size_t len = chat__v1__route_request__get_packed_size(rq);
    uint8_t *buf = chat_xcalloc(len + 1, 1);
    chat__v1__route_request__pack(rq, buf);
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, p->nc, p->subject, buf, (int)len, GW_ROUTE_TIMEOUT_MS);
    free(buf);
    Chat__V1__RouteReply *rr = NULL;
    if (s == NATS_OK)
        rr = chat__v1__route_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(reply),
                                           (const uint8_t *)natsMsg_GetData(reply));
    natsMsg_Destroy(reply);
    if (rr == NULL && p->worker_ok)
        LOG_WARN("presence", "event=route_worker_down status=\"%s\"", s == NATS_OK ? "malformed answer" : natsStatus_GetText(s));
    else if (rr && !p->worker_ok)
        LOG_INFO("presence", "event=route_worker_up");
    p->worker_ok = rr != NULL;
    if (rr && rr->error[0])
        LOG_WARN("presence", "event=route_request_failed error=%s", rr->error);
    return rr;
}

/* A route request the worker wrote (since_before: routes:since before its writes, 0 missing;
 * epoch: after them, 0 when it wrote no claim). Live deliveries this gateway's sessions may have
 * missed close them all with 1012 (they reconnect, claim, then sync), as after a NATS reconnect:
 * - a new epoch: Redis lost every route (restarted empty), so until this gateway's claims put its
 *   users back the ingest found none of them (there is no per-user path);
 * - this gateway's claims failed for longer than CHAT_ROUTES_SINCE_TTL_MS while the epoch lived on
 *   (other gateways kept it): its routes may have expired meanwhile. */
static void routes_written(gw_presence *p, int64_t since, int64_t epoch, int64_t now)
{
    if (epoch && p->epoch_ms && epoch != p->epoch_ms) {
        LOG_WARN("presence", "event=routes_new_epoch was=%lld now=%lld", (long long)p->epoch_ms, (long long)epoch);
        uint32_t *cutoff = chat_xcalloc(1, sizeof *cutoff);
        *cutoff = p->claimed_gen; /* users claimed in this request or later: in the new epoch */
        gw_bus_call(p->srv, p->on.on_routes_epoch, cutoff);
    } else if (chat_routes_lost(p->routes_failed, p->routes_ok_ms, since, now)) {
        LOG_WARN("presence", "event=routes_lost unwritten_ms=%lld", (long long)(now - p->routes_ok_ms));
        gw_bus_call(p->srv, p->on.on_routes_lost, NULL);
    }
    if (epoch)
        p->epoch_ms = epoch;
    p->routes_ok_ms = now;
    p->routes_failed = false;
}

/* Claims[0..n) in one request; written[i] says whether the worker wrote claim i's route. False
 * when the request as a whole was not answered or failed (no worker, Redis away, revocations still
 * loading). */
static bool claim(gw_presence *p, Chat__V1__RouteClaim **claims, int n, bool refresh, bool *written)
{
    Chat__V1__RouteRequest rq = CHAT__V1__ROUTE_REQUEST__INIT;
    rq.claims = claims;
    rq.n_claims = (size_t)n;
    rq.refresh = refresh;
    int64_t now = chat_now_ms();
    Chat__V1__RouteReply *rr = route_call(p, &rq);
    bool ok = rr && rr->error[0] == '\0';
    for (int i = 0; i < n; i++)
        written[i] = ok;
    for (size_t i = 0; ok && i < rr->n_refused; i++)
        if (rr->refused[i] < (uint32_t)n)
            written[rr->refused[i]] = false;
    for (size_t i = 0; ok && i < rr->n_gone; i++) /* a refresh whose route was gone: claim anew */
        if (rr->gone[i] < (uint32_t)n)
            written[rr->gone[i]] = false;
    if (ok)
        routes_written(p, rr->since_ms, rr->epoch_ms, now);
    else
        p->routes_failed = true;
    chat__v1__route_reply__free_unpacked(rr, NULL);
    return ok;
}

/* A run of first devices (W_ONLINE items from w on, at most BEAT_USERS): their routes claimed in one
 * request, each handed back to the lws thread, which lets the user's first sync run only then (an
 * event committed after that sync's read finds the route), or, unwritten (refused, no worker, Redis
 * unreachable), closes the user's sessions: none runs without a route, there is no per-user path.
 * Returns the first item after the run. */
static work *claim_first(gw_presence *p, work *w)
{
    Chat__V1__RouteClaim items[BEAT_USERS], *claims[BEAT_USERS];
    work *run[BEAT_USERS];
    int n = 0;
    for (; w && w->kind == W_ONLINE && n < BEAT_USERS; w = w->next, n++) {
        chat__v1__route_claim__init(&items[n]);
        items[n].user = w->user;
        items[n].token = w->token;
        claims[n] = &items[n];
        run[n] = w;
    }
    bool written[BEAT_USERS];
    uint32_t before = p->claimed_gen;
    /* a worker starting (revocations loading) or restarting is a moment: ask again for a few seconds
     * before the sessions are closed (their syncs wait meanwhile) */
    for (int attempt = 0; !claim(p, claims, n, false, written) && attempt < FIRST_CLAIM_RETRIES && !p->stopping;
         attempt++)
        chat_sleep_ms(FIRST_CLAIM_PAUSE_MS);
    p->claimed_gen = n ? run[n - 1]->route_gen : before;
    for (int i = 0; i < n; i++) {
        gw_presence_route *r = chat_xcalloc(1, sizeof *r);
        snprintf(r->user, sizeof r->user, "%s", run[i]->user);
        r->route_gen = run[i]->route_gen;
        r->written = written[i];
        gw_bus_call(p->srv, p->on.on_route, r);
    }
    return w;
}

/* A run of leaves (W_OFFLINE items from w on, at most BEAT_USERS): this gateway's routes of those
 * users dropped (the worker announces the ones no gateway holds any more offline). Without an
 * answer the routes expire within CHAT_ROUTE_TTL_MS and a worker's sweeper announces. Returns the
 * first item after the run. */
static work *drop(gw_presence *p, work *w)
{
    char *users[BEAT_USERS];
    int n = 0;
    for (; w && w->kind == W_OFFLINE && n < BEAT_USERS; w = w->next)
        users[n++] = w->user;
    if (p->stopping && !p->worker_ok)
        return w; /* stopping with no worker answering: no 2 s wait per run, the routes expire */
    Chat__V1__RouteRequest rq = CHAT__V1__ROUTE_REQUEST__INIT;
    rq.drops = users;
    rq.n_drops = (size_t)n;
    chat__v1__route_reply__free_unpacked(route_call(p, &rq), NULL);
    return w;
}

/* One heartbeat item: these users' routes refreshed (routes that exist only: no log entry, no
 * announcement). A claim the worker refuses (the token kept no longer proves the user: revoked) or
 * whose route was gone (Redis lost it: its events went nowhere) closes the user's sessions here:
 * they reconnect, claim anew with their own tokens, and sync. */
static void heartbeat(gw_presence *p, const work *w)
{
    Chat__V1__RouteClaim *items = chat_xcalloc((size_t)w->n + 1, sizeof *items);
    Chat__V1__RouteClaim **claims = chat_xcalloc((size_t)w->n + 1, sizeof *claims);
    bool *written = chat_xcalloc((size_t)w->n + 1, sizeof *written);
    char *at = w->names;
    for (int i = 0; i < w->n; i++) {
        chat__v1__route_claim__init(&items[i]);
        items[i].user = at;
        at += strlen(at) + 1;
        items[i].token = at;
        at += strlen(at) + 1;
        claims[i] = &items[i];
    }
    /* a batch not answered is asked again: its users' routes expire 30 s after their last refresh,
     * and another batch's success would not tell (routes_lost looks at the gateway as a whole) */
    bool answered = false;
    for (int attempt = 0; attempt < BEAT_TRIES && !p->stopping; attempt++) {
        if ((answered = claim(p, claims, w->n, true, written)))
            break;
        chat_sleep_ms(BEAT_PAUSE_MS);
    }
    /* refused or gone, or never answered (their routes will expire unseen): those users' sessions
     * are closed, to claim anew and sync */
    for (int i = 0; i < w->n && !p->stopping; i++)
        if (!answered || !written[i])
            gw_bus_call(p->srv, p->on.on_refused, chat_xstrdup(items[i].user));
    free(written);
    free(claims);
    free(items);
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
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (p->head == NULL && !p->stop)
            pthread_cond_wait(&p->wake, &p->lock);
        work *list = p->head;
        p->head = p->tail = NULL;
        bool stop = p->stop;
        pthread_mutex_unlock(&p->lock);
        p->stopping = stop;
        /* runs of first devices and of leaves go as one request each, in the order queued */
        for (work *w = list, *next; w; w = next) {
            if (w->kind == W_ONLINE) {
                next = claim_first(p, w);
            } else if (w->kind == W_OFFLINE) {
                next = drop(p, w);
            } else {
                if (w->kind == W_BEAT)
                    heartbeat(p, w);
                else
                    answer_query(p, w);
                next = w->next;
            }
            for (work *done = w, *after; done != next; done = after) {
                after = done->next;
                free(done->users);
                free(done->names);
                free(done->token);
                free(done);
            }
        }
        if (stop)
            break;
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
    p->worker_ok = true;
    chat_subject_route(p->subject, sizeof p->subject, srv->gateway_id);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "_INBOX.gw.%s.rt", srv->gateway_id);
    chat_status st = chat_nats_connect_inbox(srv->cfg, "gateway-routes", prefix, &p->nc);
    if (st != CHAT_OK) {
        free(p);
        return st;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    if (pthread_create(&p->thread, NULL, presence_thread, p) != 0) {
        natsConnection_Destroy(p->nc);
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
        free(w->token);
        free(w);
    }
    if (p->redis)
        redisFree(p->redis);
    natsConnection_Destroy(p->nc);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p);
}
