/* Route claims and presence (part of the api role). A gateway writes nothing in Redis: it asks on
 * chat.route.<its gateway id> (RouteRequest, core request/reply, queue group "routes") for its
 * users' delivery routes, each claim carrying a live session's token of the user. The worker checks
 * each token as the gateway checked it at the upgrade (chat_jwt_verify with the CHAT_JWT_*
 * settings, the claimed user the token's, the revocations bucket CHAT_REVOKED), then writes the
 * route (presence:<user> -> the subject's gateway), its log entry and presence:online and
 * last_seen:<user> itself, and answers RouteReply. So a gateway's NATS credential routes to itself
 * only users whose tokens it holds, and its Redis user may be read-only (docs/security.md). The
 * subject names the gateway (NATS lets gateway-<n> publish only chat.route.gateway-<n>), never the
 * payload.
 *
 * It also owns presence changes: a first route (not a refresh) announces the user online on
 * chat.presence.<user>, a drop that leaves no live route announces it offline, and a sweeper
 * thread (every WK_CLAIMS_SWEEP_MS, every api worker, the one whose ZREM wins announces) takes
 * users whose routes all expired (their gateway died) out of presence:online.
 *
 * Threads: the subscription's delivery thread (its own Redis connection), the sweeper (another),
 * and the revocations watcher (chat_revoke_watch.h, its own NATS connection; the set under a lock).
 * Until the watcher has the whole bucket, claims are answered "loading" and write nothing. */
#ifndef WK_CLAIMS_H
#define WK_CLAIMS_H

#include "chat_status.h"
#include "wk_app.h"

#define WK_CLAIMS_MAX 512        /* claims, and drops, per request (a gateway sends up to 256) */
#define WK_CLAIMS_SWEEP_MS 5000
#define WK_CLAIMS_SWEEP_RETRY_MS 1000 /* after a sweep Redis did not answer */

typedef struct wk_claims wk_claims;

/* Subscribes and starts the sweeper and the watcher; *out set only on CHAT_OK. app outlives it. */
chat_status wk_claims_start(wk_app *app, wk_claims **out);

/* Drains the subscription, waits for its last callback, stops the threads. NULL-safe. */
void wk_claims_destroy(wk_claims *c);

#endif
