/* The watcher of the revocations bucket CHAT_REVOKED (chat_revoke.h): a thread of its own, on a NATS
 * connection of its own, runs nats.c's KV watcher (kvStore_WatchAll) and hands each change to a
 * callback, on that thread. The caller decides where the change goes (the gateway: onto its bus for
 * the lws thread; a worker: into a chat_revoke_set under its lock). Each (re)opened watch gets a new
 * number, and first delivers the whole bucket as it is, then LOADED, then changes as they happen. */
#ifndef CHAT_REVOKE_WATCH_H
#define CHAT_REVOKE_WATCH_H
#include <stdint.h>

#include "chat_config.h"
#include "chat_status.h"

typedef enum chat_revoke_change { CHAT_REVOKE_PUT = 1, CHAT_REVOKE_DELETE, CHAT_REVOKE_LOADED } chat_revoke_change;

/* Called on the watcher thread for each change: PUT (key, value parsed as unix seconds), DELETE (key),
 * LOADED (the bucket as it was has all arrived through watch `watch`; key NULL). key is borrowed for
 * the call and shorter than CHAT_REVOKE_KEY_MAX, but not checked to be a u. or j. key (that is
 * chat_revoke_set_put's answer); PUTs whose value is not unix seconds are logged and skipped. */
typedef void (*chat_revoke_watch_fn)(chat_revoke_change op, uint32_t watch, const char *key, int64_t value, void *ctx);

typedef struct chat_revoke_watch chat_revoke_watch;

/* Opens a NATS connection of its own (chat_nats_connect_inbox(cfg, name, inbox_prefix, ...); inbox_prefix
 * NULL = nats.c's default "_INBOX") and a thread that watches the bucket until destroyed, re-opening it
 * every second after a failure (bucket missing: one warning, as today). max_ttl_s: the CHAT_JWT_MAX_TTL
 * the bucket's keep time is checked against (the `revocations_kept_too_short` warning). name must live
 * as long as the process (a literal: chat_nats_connect). fn may run before this returns. Any thread;
 * *out set only on CHAT_OK, destroy it with chat_revoke_watch_destroy. */
chat_status chat_revoke_watch_start(const chat_cfg *cfg, const char *name, const char *inbox_prefix,
                                    int64_t max_ttl_s, chat_revoke_watch_fn fn, void *ctx, chat_revoke_watch **out);
/* Stops the thread (closing its connection wakes it) and frees everything. NULL-safe. After it returns fn
 * is never called again. Not from fn. */
void chat_revoke_watch_destroy(chat_revoke_watch *w);

#endif
