/* NATS <-> lws thread bridge. Push side: nats.c threads; everything else: the lws thread. */
#include "gw_bus.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_nats.h"
#include "chat_status.h"
#include "chat_time.h"

typedef enum { IN_DELIVERY, IN_REPLY, IN_MEMBERS, IN_PRESENCE, IN_CALL } in_kind;

typedef struct inbound {
    in_kind kind;
    natsMsg *msg;
    gw_bus_fn fn; /* IN_CALL */
    void *data;
    struct inbound *next;
} inbound;

struct gw_bus {
    gw_server *srv;
    gw_bus_handlers on; /* read-only after gw_bus_create (wake runs on nats.c's threads) */
    pthread_mutex_t lock;
    inbound *head, *tail; /* under lock */
    natsSubscription *reply_sub, *members_sub, *routed_sub;
    char reply_prefix[64];
    /* lws thread only */
    natsStatistics *stats;
    uint64_t reconnects; /* nats.c's count of new sockets, as last acted on */
    gw_request_table *requests; /* in flight, by id (the reply subject's tail) */
    natsMsg *dead[256]; /* handled messages not yet destroyed (bury) */
    int ndead;
};

/* ---- destroying messages (lws thread) ---- */

/* nats.c hands every destroyed message to its garbage-collector thread and wakes that thread
 * whenever it waits: destroyed one at a time, each message cost a futex wake and two context
 * switches (perf of the gateway at 5,000 msg/s: 9 to 13 % of the loop thread in natsMsg_Destroy).
 * So the lws thread keeps the messages it is done with and destroys them together, when 256 have
 * gathered and on every tick (100 ms): one wake per group. */
static void bury_flush(gw_bus *bus)
{
    for (int i = 0; i < bus->ndead; i++)
        natsMsg_Destroy(bus->dead[i]);
    bus->ndead = 0;
}

static void bury(gw_bus *bus, natsMsg *msg)
{
    if (msg == NULL)
        return;
    if (bus->ndead == (int)(sizeof bus->dead / sizeof bus->dead[0]))
        bury_flush(bus);
    bus->dead[bus->ndead++] = msg;
}

/* ---- push side (nats.c threads) ---- */

static void push_item(gw_bus *bus, in_kind kind, natsMsg *msg, gw_bus_fn fn, void *data)
{
    inbound *n = malloc(sizeof *n);
    if (n == NULL)
        CHAT_OOM();
    n->kind = kind;
    n->msg = msg;
    n->fn = fn;
    n->data = data;
    n->next = NULL;
    pthread_mutex_lock(&bus->lock);
    bool was_empty = bus->head == NULL;
    if (bus->tail)
        bus->tail->next = n;
    else
        bus->head = n;
    bus->tail = n;
    pthread_mutex_unlock(&bus->lock);
    if (was_empty)
        bus->on.wake(bus->srv);
}

static void push(gw_bus *bus, in_kind kind, natsMsg *msg)
{
    push_item(bus, kind, msg, NULL, NULL);
}

void gw_bus_call(gw_server *srv, gw_bus_fn fn, void *data)
{
    push_item(srv->bus, IN_CALL, NULL, fn, data);
}

static void on_presence(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, IN_PRESENCE, msg);
}

static void on_delivery(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, IN_DELIVERY, msg);
}

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, IN_REPLY, msg);
}

static void on_members(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    push(closure, IN_MEMBERS, msg);
}

/* ---- lws thread ---- */

/* New sockets the NATS connection opened since it was created (every reconnect counts one). */
static uint64_t nats_reconnects(gw_bus *bus)
{
    uint64_t n = bus->reconnects;
    if (bus->stats && natsConnection_GetStats(bus->srv->nc, bus->stats) == NATS_OK)
        natsStatistics_GetCounts(bus->stats, NULL, NULL, NULL, NULL, &n);
    return n;
}

/* Live deliveries are core NATS: while the connection was down, and until its subscriptions were
 * sent again, whatever was published to our users went nowhere, and nothing tells their devices.
 * So after a reconnect every session is closed with 1012 and syncs from its cursors when it comes
 * back. nats.c counts the reconnect before it sends the subscriptions again, so a delivery that
 * came through the new socket was pushed after the count moved: checking the count after taking
 * the queue (and before handling it) means no session gets a delivery past a hole before its
 * close; the 100 ms tick covers the sessions that get nothing new. */
static void check_reconnected(gw_server *srv)
{
    gw_bus *bus = srv->bus;
    uint64_t n = nats_reconnects(bus);
    if (n == bus->reconnects)
        return;
    bus->reconnects = n;
    bus->on.on_reconnect(srv, n);
}

/* Whether the server took this gateway's own subscriptions: a credential limited to another
 * gateway's subjects (deploy/nats/accounts.conf: one user per gateway) refuses them, which would
 * leave it deaf to its replies and batches. A round trip to the server: its refusal comes before
 * the PONG. With no server yet (nats.c connects in the background) nothing can be told: true, and
 * a refusal after a later connect is logged as event=nats_not_permitted (chat_nats.c). */
static bool subscriptions_permitted(gw_server *srv)
{
    const char *text = NULL;
    if (natsConnection_FlushTimeout(srv->nc, 5000) != NATS_OK ||
        natsConnection_GetLastError(srv->nc, &text) != NATS_NOT_PERMITTED)
        return true;
    LOG_ERROR("gateway", "event=subscriptions_refused gateway=%s detail=\"%s\" hint=\"the NATS credential must be the "
              "one of CHAT_GATEWAY_ID (deploy/nats/accounts.conf)\"",
              srv->gateway_id, text ? text : "");
    fprintf(stderr, "chat-gateway: NATS refused the subscriptions of gateway %s (%s): CHAT_GATEWAY_ID must be the id "
            "its NATS user is allowed (deploy/nats/accounts.conf)\n",
            srv->gateway_id, text ? text : "");
    return false;
}

chat_status gw_bus_create(gw_server *srv, const gw_bus_handlers *handlers, gw_bus **out)
{
    gw_bus *bus = calloc(1, sizeof *bus);
    if (bus == NULL)
        return CHAT_ERR_NOMEM;
    bus->srv = srv;
    bus->on = *handlers;
    pthread_mutex_init(&bus->lock, NULL);
    bus->requests = gw_request_table_create();
    snprintf(bus->reply_prefix, sizeof bus->reply_prefix, "_INBOX.gw.%s.", srv->gateway_id);
    char subject[96];
    snprintf(subject, sizeof subject, "%s*", bus->reply_prefix);
    natsStatus s = natsStatistics_Create(&bus->stats); /* for check_reconnected */
    if (s == NATS_OK) {
        bus->reconnects = nats_reconnects(bus);
        s = natsConnection_Subscribe(&bus->reply_sub, srv->nc, subject, on_reply, bus);
    }
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(bus->reply_sub, -1, -1);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&bus->members_sub, srv->nc, CHAT_SUBJECT_MEMBERS_ALL, on_members, bus);
    /* the batches of the users routed here: on the same connection and delivery thread as the
     * per-user subjects, so the two keep the order the ingest published them in */
    if (s == NATS_OK && chat_subject_deliver_gateway(subject, sizeof subject, srv->gateway_id))
        s = natsConnection_Subscribe(&bus->routed_sub, srv->nc, subject, on_delivery, bus);
    if (s == NATS_OK)
        s = natsSubscription_SetPendingLimits(bus->routed_sub, -1, 256 * 1024 * 1024);
    if (s == NATS_OK && !subscriptions_permitted(srv)) {
        gw_bus_destroy(bus);
        return CHAT_ERR_UNAVAILABLE;
    }
    if (s != NATS_OK) {
        LOG_ERROR("gateway", "event=bus_create_failed status=\"%s\"", natsStatus_GetText(s));
        gw_bus_destroy(bus);
        return CHAT_ERR_UNAVAILABLE;
    }
    *out = bus;
    return CHAT_OK;
}

/* Ends sub (the last of ours) by draining it: nats.c's delivery thread (one, shared by every
 * subscription: chat_nats_connect_shared) finishes its drain only after every message queued before
 * it, those of subscriptions already closed included, which it destroys. Without this barrier it
 * may still be destroying them when nats_CloseAndWait stops the library's garbage collector at
 * the same moment, and such messages end on a collector list nobody frees (LeakSanitizer: two
 * natsMsg at a gateway's exit; docs/architecture.md, Status). Its messages meanwhile are pushed as
 * ever and freed with the queue. Bounded: a connection that cannot drain gets 1.5 s. */
static void drain_barrier(natsSubscription *sub)
{
    if (sub == NULL)
        return;
    if (natsSubscription_DrainTimeout(sub, 1000) != NATS_OK ||
        natsSubscription_WaitForDrainCompletion(sub, 1500) != NATS_OK)
        natsSubscription_Unsubscribe(sub);
}

void gw_bus_destroy(gw_bus *bus)
{
    if (bus == NULL)
        return;
    bury_flush(bus);
    natsSubscription_Unsubscribe(bus->reply_sub);
    natsSubscription_Destroy(bus->reply_sub);
    natsSubscription_Unsubscribe(bus->routed_sub);
    natsSubscription_Destroy(bus->routed_sub);
    drain_barrier(bus->members_sub);
    natsSubscription_Destroy(bus->members_sub);
    for (inbound *n = bus->head, *next; n; n = next) {
        next = n->next;
        natsMsg_Destroy(n->msg);
        free(n->kind == IN_CALL ? n->data : NULL);
        free(n);
    }
    gw_request_table_destroy(bus->requests);
    natsStatistics_Destroy(bus->stats);
    pthread_mutex_destroy(&bus->lock);
    free(bus);
}

gw_request *gw_bus_request_new(gw_server *srv, gw_request_reply_fn on_reply, uint64_t session, int timeout_ms)
{
    return gw_request_table_add(srv->bus->requests, on_reply, session, chat_mono_ms() + timeout_ms);
}

bool gw_bus_no_responders(natsMsg *msg)
{
    return chat_nats_status(msg) == 503;
}

size_t gw_bus_pending(gw_server *srv)
{
    return gw_request_table_size(srv->bus->requests);
}

void gw_bus_request_free(gw_server *srv, gw_request *req)
{
    gw_request_table_free(srv->bus->requests, req);
}

chat_status gw_bus_request_send(gw_server *srv, gw_request *req, const char *subject, const void *data,
                                size_t len, const char *msg_id)
{
    char reply[96];
    snprintf(reply, sizeof reply, "%s%" PRIu64, srv->bus->reply_prefix, req->id);
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, reply, data, (int)len);
    if (s == NATS_OK && msg_id)
        s = natsMsgHeader_Set(msg, "Nats-Msg-Id", msg_id);
    if (s == NATS_OK)
        s = natsConnection_PublishMsg(srv->nc, msg);
    bury(srv->bus, msg);
    if (s != NATS_OK)
        return chat_nats_check(s, "gateway", "request"); /* the caller frees req (every caller does) */
    req->sent_ns = chat_mono_ns();
    return CHAT_OK;
}

static void handle_reply(gw_server *srv, natsMsg *msg)
{
    const char *subject = natsMsg_GetSubject(msg);
    size_t plen = strlen(srv->bus->reply_prefix);
    if (strncmp(subject, srv->bus->reply_prefix, plen) != 0)
        return;
    gw_request_table_answer(srv->bus->requests, srv, subject + plen, msg); /* none: timed out already */
}

void gw_bus_drain(gw_server *srv)
{
    gw_bus *bus = srv->bus;
    pthread_mutex_lock(&bus->lock);
    inbound *list = bus->head;
    bus->head = bus->tail = NULL;
    pthread_mutex_unlock(&bus->lock);
    check_reconnected(srv);
    while (list) {
        inbound *n = list;
        list = n->next;
        switch (n->kind) {
        case IN_DELIVERY: {
            if (strncmp(natsMsg_GetSubject(n->msg), "chat.deliver.g.", 15) == 0)
                bus->on.on_routed(srv, n->msg);
            break;
        }
        case IN_REPLY:
            handle_reply(srv, n->msg);
            break;
        case IN_PRESENCE:
            bus->on.on_presence(srv, n->msg);
            break;
        case IN_CALL:
            n->fn(srv, n->data);
            break;
        case IN_MEMBERS: {
            const char *conv = chat_subject_members_parse(natsMsg_GetSubject(n->msg));
            if (conv)
                bus->on.on_members(srv, conv);
            break;
        }
        }
        bury(bus, n->msg);
        free(n);
    }
}

void gw_bus_tick(gw_server *srv)
{
    gw_bus *bus = srv->bus;
    bury_flush(bus);
    check_reconnected(srv);
    gw_request_table_tick(bus->requests, srv, chat_mono_ms());
}

chat_status gw_bus_subscribe_presence(gw_server *srv, const char *user, natsSubscription **out)
{
    char subject[96];
    snprintf(subject, sizeof subject, "chat.presence.%s", user);
    natsStatus s = natsConnection_Subscribe(out, srv->nc, subject, on_presence, srv->bus);
    return s == NATS_OK ? CHAT_OK : chat_nats_check(s, "gateway", "subscribe_presence");
}

void gw_bus_unsubscribe_user(natsSubscription *sub)
{
    if (sub == NULL)
        return;
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
}
