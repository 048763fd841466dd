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

/* When Redis started holding routes (Unix ms): set if missing (SET NX) and its expiry renewed with
 * each route write (by the worker that writes a gateway's claims). A Redis that restarted empty, or that no gateway reached
 * for CHAT_ROUTES_SINCE_TTL_MS (a route lives 30 s and is rewritten every 10 s, so none expired
 * before that), may have lost routes of users still connected; the ingest trusts the routes only
 * once the key is CHAT_ROUTES_SETTLE_MS old, when every gateway has written all its users again (a
 * heartbeat, every 10 s, rewrites them), and delivers per user until then. A gateway that alone
 * could not write for longer than CHAT_ROUTES_SINCE_TTL_MS while the key lived on closes its
 * sessions (1012) once it writes again (gw_presence.c). */
#define CHAT_ROUTES_SINCE_KEY "routes:since"
#define CHAT_ROUTES_SINCE_TTL_MS 20000
#define CHAT_ROUTES_SETTLE_MS 15000

/* A stream of the users that got a route (a user's first device on a gateway): field `u`, the
 * user. The ingest caches routes and reads this log with every batch to drop the cached routes of
 * those users; a route written with no log entry (a heartbeat) only refreshes one the log named.
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
