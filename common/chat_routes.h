/* The delivery routes the gateways keep in Redis and the ingest reads (docs/architecture.md, "The
 * hot path", step 4): presence:<user> (ZSET gateway id -> expiry ms, gateway/gw_presence.h) and
 * the key below. Constants and a pure rule; any thread. */
#ifndef CHAT_ROUTES_H
#define CHAT_ROUTES_H
#include <stdbool.h>
#include <stdint.h>

/* A route (presence:<user>, member: the gateway, score: its expiry in Unix ms) lives
 * CHAT_ROUTE_TTL_MS from its last write; a gateway's heartbeat claims its users' routes again every
 * CHAT_ROUTE_REFRESH_MS (workers/wk_claims.h writes them). */
#define CHAT_ROUTE_TTL_MS 30000
#define CHAT_ROUTE_REFRESH_MS 10000

/* The routes' epoch: when Redis started holding routes (Unix ms), set if missing (SET NX) and its
 * expiry renewed with each route write and every WK_CLAIMS_SWEEP_MS by every api worker (so it
 * outlives quiet times). A Redis that restarted empty (or that no api worker reached for
 * CHAT_ROUTES_SINCE_TTL_MS) lost routes of users still connected,
 * whose live deliveries went nowhere (there is no per-user path): the key then has a new value,
 * which every gateway finds in its next claim's answer (RouteReply.epoch_ms) and closes its sessions
 * with 1012 so that they sync. The ingest drops its route cache when the value changes. A gateway
 * that alone could not claim for longer than CHAT_ROUTES_SINCE_TTL_MS while the key lived on closes
 * its sessions too, once a claim is written again (gw_presence.c). */
#define CHAT_ROUTES_SINCE_KEY "routes:since"
#define CHAT_ROUTES_SINCE_TTL_MS 20000
/* After a new epoch (the key changed or went missing under a running ingest) the ingest delivers
 * nothing for this long (it holds its batches, and sets the key if missing): every gateway's
 * heartbeat (every 10 s) has then found the new epoch and closed its sessions, which reconnect,
 * claim and sync, so no client sees a gap (events of the epoch's first seconds delivered to some
 * and not to others). A first epoch (a fresh deployment, a worker just started) holds nothing. */
#define CHAT_ROUTES_SETTLE_MS 15000

/* A stream of the users that got a route (a user's first device on a gateway, or a heartbeat that
 * found its route gone and wrote it again): field `u`, the user. The ingest caches routes ("none"
 * too) and reads this log with every batch to drop the cached routes of those users, so every
 * route created is logged: with no per-user path an unlogged one would stay unseen.
 * Entries are kept CHAT_ROUTES_LOG_KEEP_MS (XADD ... MINID ~). */
#define CHAT_ROUTES_LOG_KEY "routes:log"
#define CHAT_ROUTES_LOG_KEEP_MS 60000

/* Whether a gateway's routes may have expired while the ingest kept trusting Redis, seen at a route
 * write Redis took at now_ms: its writes failed (failed) since the last one taken at last_ok_ms (0:
 * none), longer ago than CHAT_ROUTES_SINCE_TTL_MS, and CHAT_ROUTES_SINCE_KEY was there all along
 * (since_before, its value read in the same pipeline before the write, is at most last_ok_ms;
 * 0: missing, a new epoch: the ingest distrusts the routes until every gateway wrote them again). */
static inline bool chat_routes_lost(bool failed, int64_t last_ok_ms, int64_t since_before, int64_t now_ms)
{
    return failed && last_ok_ms > 0 && now_ms - last_ok_ms > CHAT_ROUTES_SINCE_TTL_MS && since_before > 0 &&
           since_before <= last_ok_ms;
}

#endif
