/* Role `notify`: offline push notifications (docs/notifications.md). A member whose `seen` cursor
 * (conversation_members.delivered_seq) is still behind a message CHAT_PUSH_GRACE after it was
 * posted gets one HTTP POST to CHAT_PUSH_WEBHOOK_URL covering everything unread so far; a burst
 * coalesces into one push per user, a failing webhook is retried through JetStream redelivery
 * with a delay, a killed notifier's work comes back to another one.
 *
 * Input: stream CHAT_EVENTS (chat.evt.<conv>: every committed Event, Chat-Type "event", and every
 * MembershipEvent, Chat-Type "members"), through the durable pull consumer "chat-notify-events"
 * that every notify worker shares, pulled by hand with $JS.API.CONSUMER.MSG.NEXT like the ingest.
 * Only new text and system messages can need a push; everything else is acked at once. The
 * consumer is created with DeliverPolicy new: CHAT_EVENTS keeps 7 days, and a notify role
 * started for the first time must not push a week of old messages. Watermarks and claims: table
 * push_state (migrations/0005_push.sql).
 *
 * Threads: WK_NOTIFY_THREADS pullers, each with its own inbox subscription, PGconn and libcurl
 * easy handle; one monitor thread (consumer set-up, chat_notify_pending every few seconds,
 * chat_notify_members_behind every 10 s) with its own PGconn and JetStream context. */
#ifndef WK_NOTIFY_H
#define WK_NOTIFY_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.pb-c.h"
#include "chat_status.h"
#include "wk_app.h"

#define WK_NOTIFY_THREADS 2
#define WK_NOTIFY_CONSUMER "chat-notify-events" /* not "notify": that one was on CHAT_NOTIFY */
#define WK_NOTIFY_FILTER "chat.evt.>"
#define WK_NOTIFY_ACK_WAIT_MS 30000
#define WK_NOTIFY_MAX_DELIVER 10
#define WK_NOTIFY_MAX_ACK_PENDING 100000 /* messages inside their grace count: rate * grace must fit */
#define WK_NOTIFY_BATCH 64
#define WK_NOTIFY_BACKOFF_MAX_MS 60000
#define WK_NOTIFY_CLAIM_S 30      /* a claim on push_state runs out after this (= AckWait) */
#define WK_NOTIFY_UNREAD_MAX 1000 /* unread counts stop at this */
#define WK_NOTIFY_PREVIEW_CHARS 100

typedef struct wk_notify wk_notify;

/* Registers the metrics and starts the threads (main thread, at start). NATS and PostgreSQL are
 * used lazily: while either is down the role waits (nothing is acked, nothing is lost). app must
 * outlive the role. *out set only on CHAT_OK. */
chat_status wk_notify_start(wk_app *app, wk_notify **out);
/* Waits for the threads (each finishes or hands back its batch), frees. Call after
 * app->stopping is set. NULL-safe. */
void wk_notify_destroy(wk_notify *n);

/* ---- pure helpers, exposed for tests; any thread ---- */

/* Delay before the next try after the webhook failed on delivery number `delivered` (1-based):
 * 1 s for the first two deliveries (the first is usually the grace wait), then doubling, at most
 * WK_NOTIFY_BACKOFF_MAX_MS. */
int64_t wk_notify_backoff_ms(uint64_t delivered);


typedef enum {
    WK_NOTIFY_SKIP,    /* needs no push (an edit, delete, reaction, membership change): ack */
    WK_NOTIFY_INVALID, /* Chat-Type "event" that is no valid Event: terminate */
    WK_NOTIFY_MESSAGE  /* a text or system message: wait out the grace, then check its members */
} wk_notify_kind;

/* Sorts one message of CHAT_EVENTS by its Chat-Type header (NULL when it has none) and its bytes.
 * *ev is set, to an Event the caller frees with chat__v1__event__free_unpacked, only for
 * WK_NOTIFY_MESSAGE. */
wk_notify_kind wk_notify_classify(const char *chat_type, const void *data, size_t len, Chat__V1__Event **ev);

typedef struct wk_push_conv {
    const char *conv;
    int64_t unread;
    uint64_t last_seq;
} wk_push_conv;

typedef struct wk_push_msg {
    const char *conv;
    uint64_t seq;
    const char *from;
    int64_t ts_ms;
    const char *preview; /* NULL or with_preview false: no "preview" member */
} wk_push_msg;

/* The JSON body of one push: {"user":U,"conversations":[{"conv":C,"unread":N,"last_seq":S}...],
 * "unread_total":T,"newest":{"conv":C,"seq":S,"from":U,"ts":MS,"preview":P}}; newest NULL leaves
 * "newest" out. malloc'd text the caller frees, NULL when it cannot be built. */
char *wk_notify_payload(const char *user, const wk_push_conv *convs, size_t n, const wk_push_msg *newest,
                        bool with_preview);

#endif
