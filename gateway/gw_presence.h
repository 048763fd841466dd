/* Presence and delivery routes, from a thread of its own: the lws thread only queues work (a
 * user's first device here came, its last one left, a heartbeat, a query) and gets answers back
 * through the bus. The gateway writes nothing in Redis: its users' routes are claimed from the
 * worker (workers/wk_claims.h) with a request on chat.route.<gateway id> (RouteRequest), each claim
 * carrying the user's token, and the worker writes presence:<user>, presence:online, last_seen:<user>
 * and routes:since/routes:log (chat_routes.h) and announces presence changes. A user's first sync
 * waits until its route claim is written; a claim not written (no worker, Redis down, refused)
 * closes the user's sessions with 1012: deliveries go by routes only. Queries read Redis directly (ZCOUNT, GET: a read-only Redis user
 * is enough).
 *
 * Keys (written by the worker; a route lives CHAT_ROUTE_TTL_MS, claimed again every
 * CHAT_ROUTE_REFRESH_MS by the heartbeat):
 *   presence:<user>   ZSET gateway id -> expiry ms: the gateways holding a device of the user
 *   presence:online   ZSET user -> expiry ms: who may be online (the workers' sweeper's index)
 *   last_seen:<user>  Unix ms the user was last seen online (heartbeats keep it fresh)
 * A user is online while presence:<user> has a member whose expiry is in the future. A gateway
 * killed with kill -9 stops heartbeating, so its entries expire within the TTL and a worker's
 * sweeper announces the user offline. Changes go out on core NATS chat.presence.<user> as
 * chat.v1.Presence, published by the worker. */
#ifndef GW_PRESENCE_H
#define GW_PRESENCE_H
#include <stdbool.h>
#include <stdint.h>

#include "chat_routes.h"
#include "chat_status.h"
#include "gw_bus.h"
#include "gw_server.h"

#define GW_PRESENCE_HEARTBEAT_MS CHAT_ROUTE_REFRESH_MS
#define GW_ROUTE_TIMEOUT_MS 2000 /* the worker's answer to a route request */
#define GW_PRESENCE_QUERY_MAX 100

typedef struct gw_presence gw_presence;

/* One user's state in a query answer. */
typedef struct gw_presence_state {
    char user[65];
    bool online;
    int64_t last_seen_ms; /* 0: never seen */
} gw_presence_state;

/* A query answer, handed to the query's on_answer on the lws thread (which frees it). */
typedef struct gw_presence_answer {
    uint64_t session;
    int n;
    gw_presence_state states[];
} gw_presence_answer;

/* A user's route claim answered (written: the worker wrote the route; not: refused, no worker, Redis
 * unreachable), handed to on_route on the lws thread, which frees it. route_gen is the one given to
 * gw_presence_online. */
typedef struct gw_presence_route {
    char user[65];
    uint32_t route_gen;
    bool written; /* the worker wrote it */
} gw_presence_route;

/* Starts the presence thread; on_route gets every gw_presence_route (gw_presence_online),
 * on_refused the user id (a malloc'd string) of a heartbeat claim the worker refused (the user's
 * token no longer proves it); on_routes_lost (data NULL) is called when live deliveries to this
 * gateway's users may have been missed: Redis lost every route (a new epoch), or this gateway's
 * claims failed for longer than CHAT_ROUTES_SINCE_TTL_MS (chat_routes.h); every session should
 * sync. */
typedef struct gw_presence_handlers {
    gw_bus_fn on_route, on_routes_lost, on_refused;
    gw_bus_fn on_routes_epoch; /* Redis lost every route: data, a malloc'd uint32_t: the users whose
                                  route_gen is up to it were claimed before and must sync */
} gw_presence_handlers;
chat_status gw_presence_start(gw_server *srv, const gw_presence_handlers *on, gw_presence **out);
/* Drops this gateway's routes (users fall offline at once when no other gateway holds them), stops
 * the thread. NULL-safe. */
void gw_presence_destroy(gw_presence *p);

/* lws thread: the first device of a user connected here (its route, presence:<user> -> this
 * gateway, is claimed with token, copied, and then handed back with route_gen to on_route) / the
 * last one left. */
void gw_presence_online(gw_presence *p, const char *user, uint32_t route_gen, const char *token);
void gw_presence_offline(gw_presence *p, const char *user);
/* lws thread, every GW_PRESENCE_HEARTBEAT_MS: claims again the routes of every user held (users:
 * user id -> the caller's entry, whose token token_of gives; the presence thread keeps no copy). */
typedef const char *(*gw_presence_token_fn)(const void *entry);
void gw_presence_beat(gw_presence *p, const chat_map *users, gw_presence_token_fn token_of);
/* lws thread: asks for the state of users (at most GW_PRESENCE_QUERY_MAX); the answer (a
 * gw_presence_answer *) comes back through the bus to on_answer, which frees it. */
void gw_presence_query(gw_presence *p, uint64_t session, const char *const *users, int n, gw_bus_fn on_answer);

#endif
