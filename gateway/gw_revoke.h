/* Token revocations on the gateway (docs/operations.md, "Revoking tokens"): a copy of the NATS KV
 * bucket CHAT_REVOKED (common/chat_revoke.h) in a map owned by the lws thread, so the check at the
 * upgrade is a lookup that never waits. A thread of its own watches the bucket (nats.c's KV watcher
 * on a NATS connection of its own, whose inboxes are _INBOX.gw.<gateway id>.rv.*) and hands each
 * change to the lws thread through the bus (gw_bus_call); the lws thread applies it and closes the
 * live sessions it hits (gw_session_close_revoked). Until the whole bucket has arrived once, upgrades
 * are refused with 503 and /readyz says so: a (re)started gateway never lets a revoked token in. */
#ifndef GW_REVOKE_H
#define GW_REVOKE_H
#include <stdbool.h>
#include <stdint.h>

#include "chat_jwt.h"
#include "chat_status.h"
#include "gw_server.h"

typedef enum gw_revoke_verdict {
    GW_REVOKE_PASS = 0, /* not revoked */
    GW_REVOKE_LOADING,  /* the bucket has not arrived yet: refuse with 503, the client tries again */
    GW_REVOKE_REFUSED,  /* revoked: 401 */
} gw_revoke_verdict;

/* Starts the watcher (its NATS connection and thread). Main thread, after the bus exists. *out set
 * only on CHAT_OK; destroy it with gw_revoke_destroy. */
chat_status gw_revoke_start(gw_server *srv, gw_revoke **out);
/* Stops the watcher and frees the copy. Main thread, once the lws context is gone and before the
 * bus is destroyed (the watcher pushes onto it). NULL-safe. */
void gw_revoke_destroy(gw_revoke *rv);

/* lws thread: whether the token of these (verified) claims may open a session. */
gw_revoke_verdict gw_revoke_check(const gw_revoke *rv, const chat_jwt_claims *claims);
/* lws thread: the bucket has arrived whole at least once. */
bool gw_revoke_loaded(const gw_revoke *rv);
/* lws thread, every 10 s: forgets entries that can refuse nothing any more (every token they
 * refuse has expired), so the copy stays as small as the bucket. */
void gw_revoke_trim(gw_revoke *rv);

#endif
