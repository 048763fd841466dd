/* A Delivery to users by their routes (wk_routes.h). One owner thread per wk_routes. */
#include "wk_routes.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_map.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_redis.h"
#include "chat_routes.h"
#include "chat_time.h"

#define BACKOFF_MIN_MS 500  /* after a failure, no Redis until then, doubling ... */
#define BACKOFF_MAX_MS 5000 /* ... up to this */
#define GATEWAYS_MAX 64     /* routes of one user read (as the ingest's, wk_ingest_routes.c) */

struct wk_routes {
    wk_redis_link redis;
    atomic_uint_fast64_t *via_gateway, *dropped;
};

redisContext *wk_redis_open(const chat_cfg *cfg, int timeout_ms, char *err, size_t errsz)
{
    return chat_redis_open(cfg, timeout_ms, err, errsz);
}

void wk_redis_link_init(wk_redis_link *l, const chat_cfg *cfg, const char *comp, const char *label,
                        atomic_uint_fast64_t *errors)
{
    memset(l, 0, sizeof *l);
    l->cfg = cfg;
    l->comp = comp;
    snprintf(l->label, sizeof l->label, "%s", label);
    l->errors = errors;
    l->up = true; /* the first failure is logged */
}

void wk_redis_link_fail(wk_redis_link *l, const char *what)
{
    if (l->up)
        LOG_WARN(l->comp, "event=routes_down %s%sdetail=\"%s\"", l->label, l->label[0] ? " " : "", what);
    l->up = false;
    if (l->c)
        redisFree(l->c);
    l->c = NULL;
    l->backoff_ms = l->backoff_ms ? 2 * l->backoff_ms : BACKOFF_MIN_MS;
    if (l->backoff_ms > BACKOFF_MAX_MS)
        l->backoff_ms = BACKOFF_MAX_MS;
    l->retry_ms = chat_mono_ms() + l->backoff_ms;
    if (l->errors)
        atomic_fetch_add(l->errors, 1);
}

bool wk_redis_link_ready(wk_redis_link *l)
{
    if (l->c && !l->c->err)
        return true;
    if (l->c)
        wk_redis_link_fail(l, l->c->errstr);
    if (chat_mono_ms() < l->retry_ms)
        return false;
    char err[160];
    l->c = wk_redis_open(l->cfg, WK_ROUTES_TIMEOUT_MS, err, sizeof err);
    if (l->c == NULL) {
        wk_redis_link_fail(l, err);
        return false;
    }
    if (!l->up)
        LOG_INFO(l->comp, "event=routes_up%s%s", l->label[0] ? " " : "", l->label);
    l->up = true;
    l->backoff_ms = 0;
    return true;
}

void wk_redis_link_retry_now(wk_redis_link *l)
{
    l->retry_ms = 0;
}

void wk_redis_link_close(wk_redis_link *l)
{
    if (l->c)
        redisFree(l->c);
    l->c = NULL;
}

wk_routes *wk_routes_create(const chat_cfg *cfg, const char *who, atomic_uint_fast64_t *via_gateway,
                            atomic_uint_fast64_t *dropped)
{
    wk_routes *r = chat_xcalloc(1, sizeof *r);
    wk_redis_link_init(&r->redis, cfg, who, "", NULL);
    r->via_gateway = via_gateway;
    r->dropped = dropped;
    return r;
}

void wk_routes_destroy(wk_routes *r)
{
    if (r == NULL)
        return;
    wk_redis_link_close(&r->redis);
    free(r);
}

/* One try of read_routes on the connection there is; false when Redis did not answer (the
 * connection is given up). */
static bool try_read_routes(wk_routes *r, const char *const *users, int n, char **gws)
{
    redisContext *c = r->redis.c;
    long long now = chat_now_ms();
    for (int i = 0; i < n; i++)
        redisAppendCommand(c, "ZRANGEBYSCORE presence:%s (%lld +inf LIMIT 0 %d", users[i], now, GATEWAYS_MAX);
    for (int i = 0; i < n; i++) {
        redisReply *z = NULL;
        if (redisGetReply(c, (void **)&z) != REDIS_OK) {
            wk_redis_link_fail(&r->redis, c->errstr);
            for (int j = 0; j < i; j++) {
                free(gws[j]);
                gws[j] = NULL;
            }
            return false;
        }
        if (z && z->type == REDIS_REPLY_ARRAY && z->elements > 0) {
            size_t len = 1;
            for (size_t k = 0; k < z->elements; k++)
                len += z->element[k]->len + 1;
            char *list = chat_xmalloc(len), *w = list;
            for (size_t k = 0; k < z->elements; k++) {
                const redisReply *g = z->element[k];
                /* a gateway id is a subject token (CHAT_GATEWAY_ID's rules); anything else is skipped */
                if (g->type != REDIS_REPLY_STRING || g->len == 0 || g->len > CHAT_GATEWAY_ID_MAX ||
                    strpbrk(g->str, ".*> \t\r\n"))
                    continue;
                memcpy(w, g->str, g->len + 1);
                w += g->len + 1;
            }
            *w = '\0';
            if (w == list)
                free(list);
            else
                gws[i] = list;
        }
        freeReplyObject(z);
    }
    return true;
}

/* The gateways of users[0..n) from one pipeline: gws[i] "g1\0g2\0\0" (NULL: no route); false when
 * Redis did not answer. A connection that broke since its last use (Redis restarted) is made again
 * at once and the pipeline sent once more, so only a Redis that is really away loses deliveries. */
static bool read_routes(wk_routes *r, const char *const *users, int n, char **gws)
{
    memset(gws, 0, (size_t)n * sizeof *gws);
    bool had = r->redis.c != NULL && !r->redis.c->err;
    if (!wk_redis_link_ready(&r->redis))
        return false;
    if (try_read_routes(r, users, n, gws))
        return true;
    if (!had)
        return false;
    wk_redis_link_retry_now(&r->redis); /* the failure just now was the old connection's */
    return wk_redis_link_ready(&r->redis) && try_read_routes(r, users, n, gws);
}

/* One gateway's share: the users routed there, and the gateway's id. */
typedef struct share {
    const char *gateway;
    const char **users;
    int n;
} share;

int wk_routes_split(const Chat__V1__Delivery *d, const char *const *users, char *const *gws, int n,
                    wk_routes_emit_fn emit, void *ctx)
{
    share *shares = NULL;
    int nshares = 0, routed = 0;
    for (int i = 0; i < n; i++) {
        if (gws[i] == NULL) /* no route: offline, nothing live */
            continue;
        for (const char *g = gws[i]; *g; g += strlen(g) + 1) {
            int s = 0;
            while (s < nshares && strcmp(shares[s].gateway, g) != 0)
                s++;
            if (s == nshares) {
                shares = chat_xrealloc(shares, (size_t)(nshares + 1) * sizeof *shares);
                shares[nshares++] = (share){.gateway = g, .users = chat_xcalloc((size_t)n, sizeof(char *))};
            }
            if (shares[s].n == 0 || shares[s].users[shares[s].n - 1] != users[i]) /* a gateway named twice */
                shares[s].users[shares[s].n++] = users[i];
        }
        routed++;
    }
    for (int s = 0; s < nshares; s++) {
        uint32_t *ix = chat_xcalloc((size_t)shares[s].n, sizeof *ix);
        for (int k = 0; k < shares[s].n; k++)
            ix[k] = (uint32_t)k;
        Chat__V1__RoutedItem ri = CHAT__V1__ROUTED_ITEM__INIT;
        Chat__V1__RoutedItem *items[] = {&ri};
        ri.delivery = (Chat__V1__Delivery *)d;
        ri.recipients = ix;
        ri.n_recipients = (size_t)shares[s].n;
        Chat__V1__DeliveryBatch db = CHAT__V1__DELIVERY_BATCH__INIT;
        db.users = (char **)shares[s].users;
        db.n_users = (size_t)shares[s].n;
        db.items = items;
        db.n_items = 1;
        size_t blen = chat__v1__delivery_batch__get_packed_size(&db);
        uint8_t *b = chat_xmalloc(blen);
        chat__v1__delivery_batch__pack(&db, b);
        emit(shares[s].gateway, b, blen, ctx);
        free(b);
        free(ix);
        free(shares[s].users);
    }
    free(shares);
    return routed;
}

/* Publishes one wk_routes_split share on the gateway's subject. */
static void publish_share(const char *gateway, const uint8_t *data, size_t len, void *ctx)
{
    natsConnection *nc = ctx;
    char subject[128];
    if (chat_subject_deliver_gateway(subject, sizeof subject, gateway))
        natsConnection_Publish(nc, subject, data, (int)len);
}

void wk_routes_deliver(wk_routes *r, natsConnection *nc, const Chat__V1__Delivery *d, const char *const *users, int n)
{
    if (n <= 0)
        return;
    char **gws = chat_xcalloc((size_t)n, sizeof *gws);
    if (!read_routes(r, users, n, gws)) {
        if (r->dropped) /* Redis away: nothing addressed; a sync reads receipts and members back */
            atomic_fetch_add(r->dropped, (uint64_t)n);
        free(gws);
        return;
    }
    int routed = wk_routes_split(d, users, gws, n, publish_share, nc);
    for (int i = 0; i < n; i++)
        free(gws[i]);
    free(gws);
    if (r->via_gateway)
        atomic_fetch_add(r->via_gateway, (uint64_t)routed);
}
