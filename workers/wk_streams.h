/* JetStream streams of the platform, created idempotently at start by the worker roles, and
 * brought to this configuration only by the set-up step `chat-worker streams` (the one holder of
 * the NATS stream-update permission: an update can shrink or re-subject a stream, so a running
 * role's credential must not carry it; docs/security.md):
 *   CHAT_IN      chat.in.*.*, chat.in.*.*.backend   file storage, work-queue retention (a message leaves once the
 *                              ingest acked it), duplicate window 10 minutes
 *   CHAT_BULK    chat.bulk.*.* file storage, work-queue retention, 7 days, WK_BULK_MAX_BYTES (a full
 *                              stream refuses new posts: discard new), duplicate window 10 minutes:
 *                              bulk imports, the ingest's second lane (workers/wk_ingestp.h)
 *   CHAT_EVENTS  chat.evt.>    file storage, limits retention (7 days), duplicate window 10 minutes:
 *                              the committed events, replayable by backends; the notify role
 *                              reads its offline pushes from it too (workers/wk_notify.h)
 *   KV_CHAT_REVOKED  the KV bucket CHAT_REVOKED of token revocations (common/chat_revoke.h):
 *                              file storage, the latest value per key, kept CHAT_JWT_MAX_TTL + 5
 *                              minutes (after that every token an entry refuses has expired) */
#ifndef WK_STREAMS_H
#define WK_STREAMS_H
#include <stdbool.h>
#include <stdint.h>

#include <nats/nats.h>

#include "chat_status.h"

#define WK_DUPLICATE_WINDOW_NS (10LL * 60 * 1000000000LL)
#define WK_BULK_MAX_BYTES (1LL << 30) /* CHAT_BULK: a GiB of imports waiting, about 3 million posts */

/* Creates the missing streams with `replicas` (CHAT_JS_REPLICAS: 1 on one server, 3 on a
 * three-node cluster); with update, also brings existing ones to this configuration (only the
 * set-up step `chat-worker streams` does; the roles only create what is missing, so they never
 * fight over a stream and never need the update permission). */
chat_status wk_streams_ensure(jsCtx *js, int replicas, bool update);

/* The same for the revocations bucket, whose age limit follows max_ttl_s (CHAT_JWT_MAX_TTL):
 * created by the set-up step and, when missing, by the ingest role; the gateways only read it. */
chat_status wk_streams_ensure_revoked(jsCtx *js, int replicas, int64_t max_ttl_s, bool update);

#endif
