/* Role `api`: request/reply on chat.api.v1.* (protobuf, schema/chat.proto, docs/nats.md) for
 * gateways and backends, in the queue group "api" so any number of workers share the load.
 * WK_API_LANES async subscriptions, each with its own nats.c delivery thread and its own PGconn;
 * every reply starts with a Status. Membership changes are published after they commit. */
#ifndef WK_API_H
#define WK_API_H
#include <stdint.h>

#include "chat.pb-c.h"
#include "chat_status.h"
#include "wk_app.h"

#define WK_API_LANES 4
#define WK_API_QUEUE "api"
#define WK_API_BODY_MAX (16 * 1024)
#define WK_API_META_MAX (16 * 1024)
#define WK_API_HISTORY_DEFAULT 50
#define WK_API_HISTORY_MAX 100
#define WK_API_POST_WAIT_DEFAULT_MS 5000
#define WK_API_POST_WAIT_MAX_MS 30000

typedef struct wk_api wk_api;

/* Registers the metrics and subscribes the lanes (main thread, at start). PostgreSQL is
 * connected lazily by each lane, so a database that is down only makes requests fail with
 * "unavailable". app must outlive the role. *out set only on CHAT_OK. */
chat_status wk_api_start(wk_app *app, wk_api **out);
/* Drains the subscriptions (requests in flight are answered), waits for the delivery threads,
 * closes the PostgreSQL connections, frees. Call after app->stopping is set. NULL-safe. */
void wk_api_destroy(wk_api *api);

/* ---- pure helpers, exposed for tests; any thread ---- */

/* Why a post from a backend cannot be accepted ("sender must be ...", "meta_json must be a JSON
 * object", ...), or NULL when it can. Kind UNSPECIFIED counts as text; only text and system for now. */
const char *wk_api_post_invalid(const Chat__V1__Post *post);
/* History page size: 0 -> WK_API_HISTORY_DEFAULT, above WK_API_HISTORY_MAX -> the max. */
uint32_t wk_api_history_limit(uint32_t asked);
/* How long `post` waits for the commit: 0 -> default, capped at WK_API_POST_WAIT_MAX_MS. */
uint32_t wk_api_post_wait_ms(uint32_t asked);
/* The stored kind of a conversation: "" -> "group", "group" and "direct" as is, else NULL. */
const char *wk_api_conv_kind(const char *asked);

#endif
