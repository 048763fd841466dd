/* A Delivery to a list of users by their routes, for the api role and the typing relay (the ingest
 * has its own cached reader, wk_ingest_routes.c): one DeliveryBatch item per gateway that the
 * users' routes name (presence:<user> in Redis, written by the api role from the gateways' claims,
 * workers/wk_claims.h), on chat.deliver.g.<gateway>. A user without a route gets nothing live
 * (offline); while Redis does not answer within WK_ROUTES_TIMEOUT_MS nobody does (counted: typing
 * is a hint, receipts and membership are read back by a sync). docs/architecture.md, "The hot
 * path", step 4. One wk_routes per thread (it owns its Redis connection). */
#ifndef WK_ROUTES_H
#define WK_ROUTES_H
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>
#include <nats/nats.h>

#include "chat.pb-c.h"
#include "chat_config.h"

#define WK_ROUTES_TIMEOUT_MS 200 /* connect, and each pipeline's answers */

/* A Redis connection to CHAT_REDIS_URL with timeout_ms for the connect and every reply (AUTH as the
 * URL's user and SELECT done: chat_redis_open, common/chat_redis.h); NULL with a line in err. */
redisContext *wk_redis_open(const chat_cfg *cfg, int timeout_ms, char *err, size_t errsz);

/* A Redis connection that is made when missing and, after a failure, not again before a back-off
 * (500 ms doubling to 5 s): the routes' readers (the ingest's committers, the api lanes, the typing
 * relay) each own one. Going down and coming back is logged once each, under comp with label (an
 * extra "k=v" log field, or ""); errors, when set, counts the failures. One owner thread. */
typedef struct wk_redis_link {
    redisContext *c; /* NULL: none now */
    const chat_cfg *cfg;
    const char *comp;
    char label[32];
    atomic_uint_fast64_t *errors;
    bool up; /* as last logged */
    int64_t retry_ms, backoff_ms;
} wk_redis_link;

void wk_redis_link_init(wk_redis_link *l, const chat_cfg *cfg, const char *comp, const char *label,
                        atomic_uint_fast64_t *errors);
/* The connection, made when missing and not backing off (a broken one is given up first); false
 * when there is none now. */
bool wk_redis_link_ready(wk_redis_link *l);
/* Gives the connection up after a failure (`what` is logged) and backs off. */
void wk_redis_link_fail(wk_redis_link *l, const char *what);
/* Ends the back-off: the next wk_redis_link_ready connects at once. */
void wk_redis_link_retry_now(wk_redis_link *l);
void wk_redis_link_close(wk_redis_link *l);

typedef struct wk_routes wk_routes;

/* A reader for `who` (the log's comp field); via_gateway counts the recipients reached through their
 * gateways, dropped those not reached because Redis did not answer (may be NULL). Never NULL. */
wk_routes *wk_routes_create(const chat_cfg *cfg, const char *who, atomic_uint_fast64_t *via_gateway,
                            atomic_uint_fast64_t *dropped);
/* NULL-safe. */
void wk_routes_destroy(wk_routes *r);

/* One gateway's share of a delivery: a packed DeliveryBatch (one item: the delivery, for every user
 * listed) for `gateway`. data is borrowed for the call. */
typedef void (*wk_routes_emit_fn)(const char *gateway, const uint8_t *data, size_t len, void *ctx);

/* Splits delivery d to users[0..n) by their gateways gws[i] ("g1\0g2\0\0", NULL: no route, nothing
 * sent): one emit per gateway (its users in their order, each once), in the order the gateways
 * first appear. Pure (no NATS, no Redis). Returns how many users had a route. */
int wk_routes_split(const Chat__V1__Delivery *d, const char *const *users, char *const *gws, int n,
                    wk_routes_emit_fn emit, void *ctx);

/* Publishes d on nc to the gateways of users[0..n) (borrowed for the call), once per gateway. */
void wk_routes_deliver(wk_routes *r, natsConnection *nc, const Chat__V1__Delivery *d, const char *const *users, int n);

#endif
