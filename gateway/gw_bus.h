/* The bridge between nats.c threads and the lws thread. NATS callbacks (deliveries to the users
 * this gateway holds, replies to its requests, membership changes) push the message onto one
 * locked queue and wake the lws loop with lws_cancel_service() only when the queue goes from
 * empty to non-empty (several cancels collapse into one wake-up); the lws thread drains the
 * whole queue in LWS_CALLBACK_EVENT_WAIT_CANCELLED. Requests (publishes to JetStream,
 * chat.api.v1.*) are sent without blocking: the reply comes back through the queue and is
 * matched by its id; a timer fails the ones that do not answer in time. */
#ifndef GW_BUS_H
#define GW_BUS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nats/nats.h>

#include "chat_status.h"
#include "gw_server.h"

/* What a request is for; the reply is handled by gw_session_on_reply. */
typedef enum gw_req_kind {
    GW_REQ_PUBLISH,      /* a Post to chat.in: the broker's PubAck */
    GW_REQ_MEMBER_CHECK, /* chat.api.v1.members.check before publishing a send */
    GW_REQ_POST_STATUS,  /* chat.api.v1.post.status after a duplicate PubAck */
    GW_REQ_SYNC,         /* chat.api.v1.sync: one page */
    GW_REQ_HISTORY,      /* chat.api.v1.history */
    GW_REQ_CURSOR,       /* chat.api.v1.cursor: a batch of seen/read cursors */
    GW_REQ_MEMBERS_LIST, /* chat.api.v1.members.list, for typing fanout */
    GW_REQ_CONV_LIST,    /* chat.api.v1.conv.list, for the conversations frame */
} gw_req_kind;

typedef struct gw_request {
    uint64_t id;
    gw_req_kind kind;
    uint64_t session;      /* the asking session (looked up again when the reply comes) */
    char conv[65], cmid[65], user[65];
    int attempts;
    uint8_t *payload;      /* what to send again (a send's Post) or merge back (cursor batches), or NULL */
    size_t payload_len;
    char ref[130];         /* history: the client's ref as JSON text */
    int64_t sent_ns;
    int64_t deadline_ms;   /* monotonic */
    int64_t retry_at_ms;   /* POST_STATUS waiting to be asked again, or 0 */
    bool staged_dup;       /* PUBLISH: the PubAck said duplicate of stream seq 0 (gw_session.c) */
    bool republished;      /* PUBLISH: published again under a Nats-Msg-Id of its own */
    bool status_chain;     /* PUBLISH, POST_STATUS: counts in its session's GW_STATUS_CHAINS */
    struct gw_request *prev, *next;
} gw_request;

/* Creates the bus: the reply inbox and membership subscriptions. Main thread, after the lws
 * context exists. */
chat_status gw_bus_create(gw_server *srv, gw_bus **out);
void gw_bus_destroy(gw_bus *bus);

/* lws thread: handles everything queued (deliveries, replies, membership changes). */
void gw_bus_drain(gw_server *srv);
/* lws thread: fails or retries requests past their deadline, and closes every session with 1012
 * after the NATS connection came back from a loss (gw_session_restart_all); call every ~100 ms. */
void gw_bus_tick(gw_server *srv);

/* lws thread: subscribes chat.deliver.u.<user> (first device of a user) / unsubscribes (last). */
chat_status gw_bus_subscribe_user(gw_server *srv, const char *user, natsSubscription **out);
void gw_bus_unsubscribe_user(natsSubscription *sub);

/* Any thread: runs fn(srv, data) on the lws thread (fn frees data). */
typedef void (*gw_bus_fn)(gw_server *srv, void *data);
void gw_bus_call(gw_server *srv, gw_bus_fn fn, void *data);

/* lws thread: subscribes chat.presence.<user> for the sessions watching the user. */
chat_status gw_bus_subscribe_presence(gw_server *srv, const char *user, natsSubscription **out);

/* lws thread: a new request record (owned by the bus until its reply or timeout). */
gw_request *gw_bus_request_new(gw_server *srv, gw_req_kind kind, uint64_t session, int timeout_ms);
/* lws thread: publishes data to subject with the request's reply inbox (and a Nats-Msg-Id
 * header when msg_id is not NULL). On failure an error is returned and req is left as it was: the
 * caller still owns it (gw_bus_request_free). */
chat_status gw_bus_request_send(gw_server *srv, gw_request *req, const char *subject, const void *data,
                                size_t len, const char *msg_id);
/* lws thread: requests waiting for a reply. */
size_t gw_bus_pending(gw_server *srv);
/* lws thread: forgets and frees a request. */
void gw_bus_request_free(gw_server *srv, gw_request *req);

/* Admission control (CHAT_WS_INFLIGHT_MAX, docs/operations.md). A send is in flight from its
 * publish until its answer reaches this gateway (the committed event with the ack, a refusal, an
 * error) or for at most GW_INFLIGHT_TTL_MS. That count is the work this gateway has put into the
 * pipeline (broker, ingest, PostgreSQL) and not seen come out: past the bound the pipeline is
 * behind, and a send taken now would only wait in CHAT_IN, past the clients' patience, and come
 * back as a resend. So it is refused at once (`rate_limited` with a retry hint) and the client
 * sends it again later with the same cmid. A user with nothing in flight may go a quarter over the
 * bound: one busy sender does not lock out the others. All lws thread. */
#define GW_INFLIGHT_TTL_MS 5000
/* true: take the send of user. false: refuse it; *retry_after_ms says when to try again. */
bool gw_bus_admit(gw_server *srv, const char *user, int *retry_after_ms);
/* The send (session id text, conv, cmid) of user was published: it counts until
 * gw_bus_inflight_done or the TTL. */
void gw_bus_inflight_add(gw_server *srv, const char *session, const char *user, const char *conv, const char *cmid);
/* Its answer came (or it failed): it no longer counts. Unknown sends are ignored. */
void gw_bus_inflight_done(gw_server *srv, const char *session, const char *conv, const char *cmid);
/* Sends in flight now. */
size_t gw_bus_inflight(gw_server *srv);

#endif
