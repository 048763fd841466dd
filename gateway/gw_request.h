/* The gateway's requests in flight (gw_bus.c sends them): a table by id, the id also the tail of
 * the reply subject, and the timer's walk that retries or times them out. No NATS connection in
 * here. lws thread only. Ids count up from 1 and are never used twice in a table's life. */
#ifndef GW_REQUEST_H
#define GW_REQUEST_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

typedef struct gw_server gw_server;
typedef struct gw_request gw_request;
/* A request's answer, on the lws thread, set by the module that made the request: msg is the reply
 * (borrowed), or NULL when the request timed out. true keeps the request (sent again, or waiting
 * for retry_at_ms); false: the bus frees it. */
typedef bool (*gw_request_reply_fn)(gw_server *srv, gw_request *req, natsMsg *msg);
/* retry_at_ms came: true keeps it (sent again, or waiting again); false: the bus frees it. */
typedef bool (*gw_request_retry_fn)(gw_server *srv, gw_request *req);

typedef struct gw_request {
    uint64_t id;
    gw_request_reply_fn on_reply; /* a chain's next stage sets its own (a publish's post.status) */
    gw_request_retry_fn on_retry; /* when retry_at_ms is due; NULL: the request is freed then */
    uint64_t session;             /* the asking session (looked up again when the reply comes) */
    char conv[65], cmid[65], user[65];
    int attempts;
    uint8_t *payload; /* what to send again (a send's Post) or merge back (cursor batches), or NULL */
    size_t payload_len;
    char ref[130]; /* history: the client's ref as JSON text */
    int64_t sent_ns;
    int64_t deadline_ms; /* monotonic */
    int64_t retry_at_ms; /* a post.status waiting to be asked again, or 0 */
    bool dup_answered;   /* a publish: the PubAck said duplicate (gw_send.c, publish_again) */
    bool republished;    /* a publish: published again under a Nats-Msg-Id of its own */
    bool status_chain;   /* a publish or post.status: counts in its session's GW_STATUS_CHAINS */
    struct gw_request *prev, *next;
} gw_request;

typedef struct gw_request_table gw_request_table;

/* An empty table (aborts when out of memory); destroy frees every request still in it. NULL-safe. */
gw_request_table *gw_request_table_create(void);
void gw_request_table_destroy(gw_request_table *t);

/* A new request (owned by the table until gw_request_table_free) with the next id, answered by
 * on_reply, timing out at deadline_ms (monotonic). The table has no bound: few are in flight (one
 * per unacked send, bounded by admission control, plus the lookups each session's budget allows). */
gw_request *gw_request_table_add(gw_request_table *t, gw_request_reply_fn on_reply, uint64_t session,
                                 int64_t deadline_ms);
/* The request whose id is written (decimal) in id, the reply subject's tail; NULL: none (answered or
 * timed out already, or never made). */
gw_request *gw_request_table_find(const gw_request_table *t, const char *id);
/* Forgets and frees req (and its payload). */
void gw_request_table_free(gw_request_table *t, gw_request *req);
/* Requests in the table. */
size_t gw_request_table_size(const gw_request_table *t);

/* msg (borrowed) answers the request named id: its on_reply runs, and the request is freed when it
 * returns false. False when no request has that id (the reply is ignored). */
bool gw_request_table_answer(gw_request_table *t, gw_server *srv, const char *id, natsMsg *msg);
/* The timer, at now_ms: a request whose retry_at_ms came gets on_retry (freed without one, or when
 * it returns false); one past its deadline and not waiting for a retry gets on_reply with NULL
 * (freed when it returns false). */
void gw_request_table_tick(gw_request_table *t, gw_server *srv, int64_t now_ms);

#endif
