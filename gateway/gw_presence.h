/* Presence in Redis, from a thread of its own with its own hiredis connection: the lws thread
 * only queues work (a user's first device here came, its last one left, a query) and gets query
 * results back through the bus. The entries are also the delivery routes of large conversations
 * (chat_routes.h): a user's first sync waits until its route is written; with Redis down the ingest
 * delivers per user, so Redis down only makes presence answers stale until it is back.
 *
 * Keys (TTL = GW_PRESENCE_TTL_MS, heartbeat every GW_PRESENCE_HEARTBEAT_MS, all pipelined):
 *   presence:<user>   ZSET gateway id -> expiry ms: the gateways holding a device of the user
 *   presence:online   ZSET user -> expiry ms: who may be online (the sweeper's index)
 *   last_seen:<user>  Unix ms the user was last seen online (heartbeats keep it fresh)
 *   routes:since, routes:log  the routes' epoch and the log of new routes (common/chat_routes.h)
 * A user is online while presence:<user> has a member whose expiry is in the future. A gateway
 * killed with kill -9 stops heartbeating, so its entries expire within the TTL; every gateway
 * sweeps presence:online and the one whose ZREM succeeds announces the user offline.
 * Changes go out on core NATS chat.presence.<user> as chat.v1.Presence. */
#ifndef GW_PRESENCE_H
#define GW_PRESENCE_H
#include <stdbool.h>
#include <stdint.h>

#include "chat_status.h"
#include "gw_bus.h"
#include "gw_server.h"

#define GW_PRESENCE_TTL_MS 30000
#define GW_PRESENCE_HEARTBEAT_MS 10000
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

/* A user's route written (or found impossible: Redis unreachable), handed to on_route on the lws
 * thread, which frees it. route_gen is the one given to gw_presence_online. */
typedef struct gw_presence_route {
    char user[65];
    uint32_t route_gen;
    bool written; /* Redis took it */
} gw_presence_route;

/* Redis took a route write after a user's first one had failed, handed to on_routes_back on the
 * lws thread (which frees it): same_epoch says CHAT_ROUTES_SINCE_KEY lived on meanwhile (the
 * ingest may have routed that user's events to its other gateways only). */
typedef struct gw_presence_back {
    bool same_epoch;
} gw_presence_back;

/* Starts the presence thread; on_route gets every gw_presence_route (gw_presence_online),
 * on_routes_back every gw_presence_back;
 * on_routes_lost (data NULL) is called when this gateway's routes may have expired in Redis while
 * the ingest kept trusting it (it could not write them for longer than CHAT_ROUTES_SINCE_TTL_MS,
 * chat_routes.h): live deliveries may be missing, every session should sync. */
typedef struct gw_presence_handlers {
    gw_bus_fn on_route, on_routes_back, on_routes_lost;
} gw_presence_handlers;
chat_status gw_presence_start(gw_server *srv, const gw_presence_handlers *on, gw_presence **out);
/* Removes this gateway's entries (users fall offline at once when no other gateway holds them),
 * stops the thread. NULL-safe. */
void gw_presence_destroy(gw_presence *p);

/* lws thread: the first device of a user connected here (its route, presence:<user> -> this
 * gateway, is written and then handed back with route_gen to on_route) / the last one left. */
void gw_presence_online(gw_presence *p, const char *user, uint32_t route_gen);
void gw_presence_offline(gw_presence *p, const char *user);
/* lws thread, every GW_PRESENCE_HEARTBEAT_MS: refreshes the entries of every user held (the
 * gw_user map: the presence thread keeps no copy of it). */
void gw_presence_beat(gw_presence *p, const chat_map *users);
/* lws thread: asks for the state of users (at most GW_PRESENCE_QUERY_MAX); the answer (a
 * gw_presence_answer *) comes back through the bus to on_answer, which frees it. */
void gw_presence_query(gw_presence *p, uint64_t session, const char *const *users, int n, gw_bus_fn on_answer);

#endif
