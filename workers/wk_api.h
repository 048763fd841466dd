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
#include "wk_cold.h"

#define WK_API_LANES 4
#define WK_API_QUEUE "api"
#define WK_API_HISTORY_DEFAULT 50
#define WK_API_HISTORY_MAX 100
#define WK_API_POST_WAIT_DEFAULT_MS 5000
#define WK_API_POST_WAIT_MAX_MS 30000
#define WK_API_SYNC_DEFAULT 500            /* sync: events per page when max_events is 0 */
#define WK_API_SYNC_MAX 1000               /* sync: at most this many events per page */
#define WK_API_SYNC_BYTES (512 * 1024)     /* sync: a page stops once its events pass this size */
#define WK_API_SYNC_REPLY_MAX (960 * 1024) /* sync: events + next stay under this (NATS max_payload 1 MB) */
#define WK_API_SYNC_CURSORS_MAX 10000      /* sync: listed cursors per request */
#define WK_API_CURSOR_BATCH_MAX 1000       /* cursor: updates per batch */

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

/* sync page size: 0 -> WK_API_SYNC_DEFAULT, above WK_API_SYNC_MAX -> the max. */
uint32_t wk_api_sync_max_events(uint32_t asked);

/* One conversation of a sync page: the events wanted are (after, head]. */
typedef struct wk_api_sync_range {
    const char *conv; /* borrowed */
    uint64_t after;   /* the cursor: the last seq the client has */
    uint64_t head;    /* the conversation's last_seq when the page was planned */
    uint64_t upto;    /* this page asks for (after, upto]; set by wk_api_sync_plan */
    uint64_t done;    /* the client has everything up to here after this page; set by wk_api_sync_settle */
} wk_api_sync_range;

/* Plans one page of at most max_events events over ranges in their order: each range gets
 * (after, min(head, after + what is left of the budget)], so the first ranges are served in
 * full and the ones past the budget get nothing (upto = after). Returns the number of ranges
 * that take part (they are the leading ones). */
size_t wk_api_sync_plan(wk_api_sync_range *r, size_t n, uint32_t max_events);
/* After the page was sent: cut is the index of the range where the page stopped early (bytes)
 * and cut_done the last seq sent of that range (its after when none); cut >= n means it did not
 * stop early. Sets done of every range: upto before the cut, cut_done at it, after beyond it.
 * A range with done < head goes into the reply's next. */
void wk_api_sync_settle(wk_api_sync_range *r, size_t n, size_t cut, uint64_t cut_done);
/* Packed size of a SyncCursor{conv, after} as an element of SyncReply.next (field tag and
 * length included), for keeping a reply under WK_API_SYNC_REPLY_MAX. */
size_t wk_api_sync_cursor_size(const char *conv, uint64_t after);

/* A hot row of a sync page's events query, in the query's order (range, then seq). */
typedef struct wk_api_sync_hot {
    size_t ord; /* index of its range */
    uint64_t seq;
} wk_api_sync_hot;

/* The archived chunks a page reads, in range then seq_lo order. */
typedef struct wk_api_sync_cold {
    const wk_cold_chunk **chunks; /* held in the request's api_cold_set */
    size_t *ord;                  /* the range of each chunk */
    int n;
    size_t events;        /* archived events in them */
    size_t trunc;         /* the range where they end the page early; SIZE_MAX: they do not */
    uint64_t trunc_below; /* that range keeps only the events below this seq */
} wk_api_sync_cold;

/* One event of a sync page, in page order (range, then seq): a hot row or an archived event. */
typedef struct wk_api_sync_slot {
    size_t ord; /* index of its range */
    uint64_t seq;
    int row;                     /* row of the events result; -1: archived */
    const Chat__V1__Event *cold; /* the archived event (row -1) */
} wk_api_sync_slot;

/* Merges, range by range, the hot rows (nrows, in the query's order) and the archived events of
 * cold into slots (room for nrows + cold->events) by seq within (after, upto] of the first planned
 * ranges, an event archived between the two reads taken once, up to the range where cold ends the
 * page (only its events below cold->trunc_below). Returns the number of slots. Borrows all. */
size_t wk_api_sync_merge(const wk_api_sync_range *ranges, size_t planned, const wk_api_sync_hot *rows, int nrows,
                         const wk_api_sync_cold *cold, wk_api_sync_slot *slots);
/* The reply's next, after wk_api_sync_settle: a cursor {conv, done} for every range with done <
 * head, in range order, into next and nextp (room for n each; conv borrowed from the range).
 * Returns how many. */
size_t wk_api_sync_next(const wk_api_sync_range *r, size_t n, Chat__V1__SyncCursor *next, Chat__V1__SyncCursor **nextp);

#endif
