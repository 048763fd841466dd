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
#include "gw_request.h"
#include "gw_server.h"


/* What the bus hands on, given at creation by the one place that wires the modules (gw_server.c):
 * the bus calls no other module. wake runs on any thread (nats.c's), the others on the lws thread;
 * every msg is borrowed. */
typedef struct gw_bus_handlers {
    void (*wake)(gw_server *srv);                                       /* wake the lws loop */
    void (*on_routed)(gw_server *srv, natsMsg *msg);                     /* chat.deliver.g.<this gateway> */
    void (*on_members)(gw_server *srv, const char *conv);                /* chat.members.<conv> */
    void (*on_presence)(gw_server *srv, natsMsg *msg);                   /* chat.presence.<user> */
    /* the NATS connection came back after a loss (reconnects: nats.c's count of new sockets) */
    void (*on_reconnect)(gw_server *srv, uint64_t reconnects);
} gw_bus_handlers;

/* Creates the bus: the reply inbox, membership and chat.deliver.g.<gateway id> subscriptions;
 * handlers is copied. Main thread, after the lws context exists. */
chat_status gw_bus_create(gw_server *srv, const gw_bus_handlers *handlers, gw_bus **out);
void gw_bus_destroy(gw_bus *bus);

/* lws thread: handles everything queued (deliveries, replies, membership changes). */
void gw_bus_drain(gw_server *srv);
/* lws thread: fails or retries requests past their deadline, and closes every session with 1012
 * after the NATS connection came back from a loss (handlers.on_reconnect); call every ~100 ms. */
void gw_bus_tick(gw_server *srv);

/* lws thread: ends a subscription of gw_bus_subscribe_presence. */
void gw_bus_unsubscribe_user(natsSubscription *sub);

/* Any thread: runs fn(srv, data) on the lws thread (fn frees data). */
typedef void (*gw_bus_fn)(gw_server *srv, void *data);
void gw_bus_call(gw_server *srv, gw_bus_fn fn, void *data);

/* lws thread: subscribes chat.presence.<user> for the sessions watching the user. */
chat_status gw_bus_subscribe_presence(gw_server *srv, const char *user, natsSubscription **out);

/* How long a request to the api role or the broker waits for its answer, unless its module says
 * otherwise. */
#define GW_REQUEST_TIMEOUT_MS 5000

/* lws thread: a new request record (owned by the bus until its reply or timeout); on_reply gets
 * its answer. */
gw_request *gw_bus_request_new(gw_server *srv, gw_request_reply_fn on_reply, uint64_t session, int timeout_ms);
/* lws thread: publishes data to subject with the request's reply inbox (and a Nats-Msg-Id
 * header when msg_id is not NULL). On failure an error is returned and req is left as it was: the
 * caller still owns it (gw_bus_request_free). */
chat_status gw_bus_request_send(gw_server *srv, gw_request *req, const char *subject, const void *data,
                                size_t len, const char *msg_id);
/* The reply is the broker's "no responders" (status 503, no data): nobody serves the subject. */
bool gw_bus_no_responders(natsMsg *msg);
/* lws thread: requests waiting for a reply. */
size_t gw_bus_pending(gw_server *srv);
/* lws thread: forgets and frees a request. */
void gw_bus_request_free(gw_server *srv, gw_request *req);

#endif
