/* JetStream streams of the platform, created or updated idempotently at start by the worker:
 *   CHAT_IN      chat.in.*.*   file storage, work-queue retention (a message leaves once the
 *                              ingest acked it), duplicate window 10 minutes
 *   CHAT_EVENTS  chat.evt.>    file storage, limits retention (7 days), duplicate window 10 minutes:
 *                              the committed events, replayable by backends; the notify role
 *                              reads its offline pushes from it too (workers/wk_notify.h) */
#ifndef WK_STREAMS_H
#define WK_STREAMS_H
#include <stdbool.h>

#include <nats/nats.h>

#include "chat_status.h"

#define WK_DUPLICATE_WINDOW_NS (10LL * 60 * 1000000000LL)

/* Creates the missing streams with `replicas` (CHAT_JS_REPLICAS: 1 on one server, 3 on a
 * three-node cluster); with update, also brings existing ones to this configuration (the ingest
 * role does; the others only create what is missing, so they never fight over a stream). */
chat_status wk_streams_ensure(jsCtx *js, int replicas, bool update);

#endif
