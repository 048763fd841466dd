/* The api role's private header: the lane and call plumbing every method group shares (failures,
 * replies, the lane's PostgreSQL, the asking user), the method table's entry and handlers, and the
 * hot/cold event reading of history and sync. Threads: as wk_api.c says; an api_call lives on its
 * lane's delivery thread and everything here that takes one runs there. Not for other roles. */
#ifndef WK_APIP_H
#define WK_APIP_H
#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <pthread.h>

#include "chat_id.h"
#include "chat_metrics.h"
#include "wk_api.h"
#include "wk_cold.h"

#define API_PUBLISH_WAIT_MS 5000 /* JetStream publish acknowledgement */

/* ------------------------------------------------------------------------------------------ */
/* Lanes, calls, the method table                                                               */
/* ------------------------------------------------------------------------------------------ */

typedef struct api_lane {
    struct wk_api *api;
    int index;
    char name[32]; /* application_name of its PGconn: chat-api-<index> */
    natsSubscription *sub;
    jsCtx *js;
    PGconn *pg;
    struct wk_routes *routes; /* deliveries by the recipients' routes (wk_routes.h) */
    bool in_tx;
    int64_t pg_retry_at_ms; /* monotonic */
    pthread_mutex_t lock;   /* guards done */
    pthread_cond_t cv;
    bool done; /* the delivery thread has returned from its last callback */
} api_lane;

/* One request being answered; lives on the delivery thread's stack. */
typedef struct api_call {
    api_lane *lane;
    const uint8_t *data;
    size_t len;
    char code[16]; /* "" = success */
    char message[256];
    char detail[256]; /* for the log only (a database error) */
    char conv[CHAT_ID_MAX + 1];
    bool from_gateway; /* asked on chat.api.v1.gw.<method>: for one named user, never trusted */
    uint8_t *reply;    /* packed reply, malloc'd; NULL: a status-only reply is sent */
    size_t reply_len;
} api_call;

/* A method answers c: a reply through api_reply_with, or c failed through api_fail (then the
 * dispatcher answers with the status alone). It may leave a transaction open on failure only. */
typedef void (*api_handler)(api_call *c);

typedef struct api_method {
    const char *name; /* subject suffix after chat.api.v1. (and after chat.api.v1.gw.) */
    api_handler fn;
    const char *labels; /* metric labels */
    bool gateway_form;  /* a gateway may call it, as chat.api.v1.gw.<name>, for a named user */
} api_method;

#define API_NMETHODS 12 /* entries of the method table (wk_api.c checks it) */
#define API_NCODES 5    /* error codes counted: bad_request not_found not_member unavailable internal */

struct wk_api {
    wk_app *app;
    api_lane lanes[WK_API_LANES];
    atomic_uint_fast64_t *m_requests[API_NMETHODS + 1]; /* last: unknown methods */
    atomic_uint_fast64_t *m_errors[API_NCODES];
    chat_histogram *h_seconds;
    atomic_uint_fast64_t *m_deliveries_gateway, *m_deliveries_dropped; /* recipients of its deliveries, reached or not */
    wk_cold *cold; /* archived events: chunk reads and their cache, shared by the lanes */
};

/* The handlers, one method group per file. */
void api_conv_create(api_call *c);    /* wk_api_conv.c */
void api_conv_delete(api_call *c);    /* wk_api_conv.c */
void api_members_add(api_call *c);    /* wk_api_conv.c */
void api_members_remove(api_call *c); /* wk_api_conv.c */
void api_members_check(api_call *c);  /* wk_api_conv.c */
void api_members_list(api_call *c);   /* wk_api_conv.c */
void api_post(api_call *c);           /* wk_api_post.c */
void api_post_status(api_call *c);    /* wk_api_post.c */
void api_history(api_call *c);        /* wk_api_history.c */
void api_sync(api_call *c);           /* wk_api_sync.c */
void api_cursor(api_call *c);         /* wk_api_cursor.c */
void api_conv_list(api_call *c);      /* wk_api_cursor.c */

/* ------------------------------------------------------------------------------------------ */
/* A call's plumbing (wk_api_call.c)                                                            */
/* ------------------------------------------------------------------------------------------ */

/* Marks the call failed with code and a message for the caller. The first failure wins. */
void api_fail(api_call *c, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* st filled with the call's code and message (borrowed from c); returns st. */
Chat__V1__Status *api_status_of(api_call *c, Chat__V1__Status *st);
/* Packs m as the call's reply (malloc'd, owned by c; replaces an earlier one). */
void api_reply_with(api_call *c, const ProtobufCMessage *m);
/* Every reply type has its Status as field 1, so a reply holding only a status has the same
 * bytes whatever its type: failures are answered with this one. */
void api_reply_status_only(api_call *c);
/* True when conv is a valid id (kept in c->conv for the log); else false with c failed. */
bool api_check_conv(api_call *c, const char *conv);
/* True when id (the request field `name`) is a valid id; else false with c failed (bad_request). */
bool api_check_id(api_call *c, const char *name, const char *id);

/* Runs one statement with text parameters on the lane's own connection. Returns the result when
 * its status is `expect` (the caller PQclears it); else NULL with the call failed: "unavailable"
 * for a lost connection, a timeout or a serialization failure, "internal" otherwise. A connection
 * found broken outside a transaction (PostgreSQL restarted since the last request) is reopened
 * and the statement run once more. */
PGresult *api_run(api_call *c, const char *step, const char *sql, int n, const char *const *params,
                  ExecStatusType expect);
bool api_begin(api_call *c);
bool api_commit(api_call *c);
/* Ends an open transaction (after a failure); a no-op otherwise. */
void api_rollback(api_lane *l);

/* The asking user of a method with a trusted form: "" (a backend reading or acting for no one in
 * particular) is refused on the gateway form, where a user must be named; else a valid id. */
bool api_asking_user_ok(api_call *c, const char *user);
/* True when user is a member of the live conversation conv; otherwise false with the call failed
 * (not_member for a conversation that does not exist too: a non-member learns nothing). */
bool api_check_member(api_call *c, const char *conv, const char *user);
/* True when conv exists and is not deleted; otherwise not_found (or the database's error) is
 * answered and it is false. */
bool api_check_live_conv(api_call *c, const char *conv);
/* Whether user is a member of the live conversation conv, into *member (false for a missing or
 * deleted conversation too); false with the call failed when the database does not answer. */
bool api_is_member(api_call *c, const char *conv, const char *user, bool *member);

/* ------------------------------------------------------------------------------------------ */
/* Events, hot and archived, as history and sync read them (wk_api_events.c)                    */
/* ------------------------------------------------------------------------------------------ */

/* The columns every event read (history, sync) selects first, in this order; a query's own
 * columns follow from H_EXTRA. */
enum { H_SEQ, H_ID, H_CMID, H_SENDER, H_KIND, H_BODY, H_META, H_TARGET, H_EMOJI, H_ON, H_TS, H_EXTRA };
#define API_EVENT_COLUMNS                                                                                              \
    "m.seq, m.id, m.client_msg_id, m.sender_id, m.kind, m.body, m.meta::text, m.target_seq, m.emoji,"                  \
    " m.reaction_on, floor(extract(epoch FROM m.created_at) * 1000)::bigint"

/* The live chunks a request reads (archive_chunks + archive_objects), in the order it reads them;
 * the columns every cold query selects first, in this order. */
enum { K_URL, K_OFFSET, K_LENGTH, K_CONV, K_SEQ_LO, K_SEQ_HI, K_ROWS, K_EXTRA };
#define API_CHUNK_COLUMNS "o.url, k.byte_offset, k.byte_length, k.conversation_id, k.seq_lo, k.seq_hi, k.rows"
#define API_COLD_CHUNKS_MAX 256 /* chunks one request reads at most (sync stops its page where they end) */

/* The archived chunks one request holds; released with api_cold_release. */
typedef struct api_cold_set {
    const wk_cold_chunk *chunk[API_COLD_CHUNKS_MAX];
    int n;
} api_cold_set;

/* Fills e from a row of API_EVENT_COLUMNS; its strings point into the result (and to conv). */
void api_event_from_row(Chat__V1__Event *e, PGresult *rows, int i, char *conv);
/* A reply's copy of an archived event: conv set, the chunk's extra fields left out. */
void api_event_from_cold(Chat__V1__Event *e, const Chat__V1__Event *src, char *conv);
/* How every reader (history, sync, hot or archived) shows a deleted message, and an edit of one
 * (it carries the deleted text too): deleted, without body and meta; sender, kind, ts, id, cmid
 * and target stay, so a client draws "message deleted" in place. */
void api_tombstone(Chat__V1__Event *e);
void api_cold_release(api_call *c, api_cold_set *cs);
/* Reads the chunk of row i of r (API_CHUNK_COLUMNS) into cs (which keeps it until released);
 * NULL with the call failed ("unavailable" while storage does not answer, "internal" for a
 * damaged chunk). */
const wk_cold_chunk *api_cold_read(api_call *c, api_cold_set *cs, PGresult *r, int i);
/* Tombstones the archived events (cold[i]) of a history or sync page whose message was deleted
 * (by a delete event that is hot, or archived: archive_tombstones); events[i].conv names each
 * one's conversation. */
bool api_cold_tombstones(api_call *c, Chat__V1__Event *events, const bool *cold, size_t n);

/* ------------------------------------------------------------------------------------------ */
/* A sync page's events (wk_api_sync.c)                                                        */
/* ------------------------------------------------------------------------------------------ */

/* The columns of sync's events query (SYNC_EVENTS_SQL) past API_EVENT_COLUMNS': the row's range
 * (1-based), whether its body and meta were read ("t"/"f"), whether its message is deleted. */
enum { API_SYNC_ORD = H_EXTRA, API_SYNC_FITS, API_SYNC_DELETED };

/* What a page's events are taken from; all borrowed. */
typedef struct api_sync_source {
    const wk_api_sync_range *ranges;
    size_t n;                      /* ranges taking part */
    PGresult *rows;                /* the events query's result (hot rows), or NULL with none */
    const wk_api_sync_slot *slots; /* the page's events in order (wk_api_sync_merge) */
    size_t nslots;
    size_t budget; /* bytes of bodies and metas the page stops after */
    size_t trunc;  /* the range where the archived chunks read end the page early; SIZE_MAX: none */
} api_sync_source;

/* The events taken: arrays of nslots + 1, owned by the caller (free each); the events' strings
 * point into rows, the archived chunks and the ranges' convs. */
typedef struct api_sync_taken {
    Chat__V1__Event *events, **eventp;
    bool *from_cold;   /* events[i] is an archived one (tombstoned later by api_cold_tombstones) */
    size_t sent;       /* events of the reply */
    size_t cut;        /* the range where the page stopped early; n: it did not */
    uint64_t cut_done; /* the last seq sent of range cut (its after when none) */
} api_sync_taken;

/* Takes the slots' events while what came before stays under the budget (so at least one), hot
 * rows of deleted messages as tombstones, and says where the page stopped (wk_api_sync_settle's
 * cut and cut_done). */
void api_sync_take_events(const api_sync_source *src, api_sync_taken *out);

#endif
