/* The ingest's fanout stage: each stored event to its members' delivery subjects and to
 * CHAT_EVENTS (wk_ingest_events.c), and each dropped post counted, logged and told to its session.
 * Runs on the committer thread. Large conversations go once per gateway (wk_ingest_routes.c,
 * wk_route_batch.c), the others per member. */
#include "wk_ingestp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_frames.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "wk_route_batch.h"

/* ------------------------------------------------------------------------------------------ */
/* Fanout and acks                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* The content of e from the stored row `row` of b->stored (a duplicate's answer): deleted since,
 * it comes as history shows it, without body and meta. */
static void fill_from_stored(Chat__V1__Event *e, const batch *b, int row)
{
    PGresult *r = b->stored;
    e->sender = PQgetvalue(r, row, D_SENDER);
    e->kind = chat_kind_parse(PQgetvalue(r, row, D_KIND));
    e->body = PQgetvalue(r, row, D_BODY);
    e->meta_json = PQgetvalue(r, row, D_META);
    e->target = PQgetisnull(r, row, D_TARGET) ? 0 : strtoull(PQgetvalue(r, row, D_TARGET), NULL, 10);
    e->emoji = PQgetvalue(r, row, D_EMOJI);
    e->reaction_on = strcmp(PQgetvalue(r, row, D_ON), "t") == 0;
    e->deleted = strcmp(PQgetvalue(r, row, D_DELETED), "t") == 0;
    if (e->deleted) {
        e->body = "";
        e->meta_json = "";
    }
}

/* The event that answers it: a new post's own; a duplicate's (stored before, or repeated in the
 * batch) is the stored event, whatever the duplicate carries. Only the session is its own, so
 * the ack goes to the connection that sent it. */
static void fill_event(Chat__V1__Event *e, const batch *b, const item *it, int64_t committed_ms)
{
    const item *src = it->state == I_DUP ? &b->items[it->dup_of] : it;
    const Chat__V1__Post *p = src->post;
    e->conv = p->conv;
    e->seq = src->seq;
    e->id = (char *)src->id;
    e->cmid = p->cmid;
    e->ts_ms = src->created_us / 1000;
    if (src->state == I_STORED) {
        fill_from_stored(e, b, src->stored_row);
    } else {
        e->sender = p->sender;
        e->kind = p->kind;
        e->body = p->body;
        e->meta_json = p->meta_json;
        e->target = p->target;
        e->emoji = p->emoji;
        e->reaction_on = p->reaction_on;
    }
    e->committed_ms = committed_ms;
    e->session = it->post->session;
}

void wk_ingest_reply_all(natsConnection *nc, batch *b, const char *what)
{
    for (int i = 0; i < b->n; i++) {
        const char *reply = natsMsg_GetReply(b->items[i].msg);
        if (reply)
            natsConnection_PublishString(nc, reply, what);
    }
}

/* One fanout's way to its recipients: the routes read for it and the per-gateway batches being
 * built. */
typedef struct fanout {
    natsConnection *nc;
    chat_map *routes;
    wk_route_batches *routed;
    bool count; /* the first attempt: counted in chat_ingest_deliveries_total */
    uint64_t via_gateway;
} fanout;

/* Publishes one packed DeliveryBatch on chat.deliver.g.<gateway> (a wk_route_batch_fn). */
static void publish_routed(const char *gateway, const uint8_t *data, size_t len, int events, int recipients, void *ctx)
{
    (void)events;
    fanout *f = ctx;
    char subject[128];
    if (chat_subject_deliver_gateway(subject, sizeof subject, gateway))
        natsConnection_Publish(f->nc, subject, data, (int)len);
    if (f->count)
        f->via_gateway += (uint64_t)recipients;
}

/* The Delivery of event e to every member of its conversation with a route: added to f's batches
 * of the gateways routed for the member. A member without a route gets nothing live (offline, or
 * not claimed yet: no session of it runs before its claim is written). */
static void deliver_event(fanout *f, batch *b, const item *it, Chat__V1__Event *e)
{
    members *m = wk_ingest_find_conv(b, it->post->conv);
    const Chat__V1__Post *p = it->post;
    for (int u = 0; m && u < m->n; u++) {
        const char *gateways = f->routes ? chat_map_get(f->routes, m->users[u]) : NULL;
        for (const char *g = gateways; g && *g; g += strlen(g) + 1)
            wk_route_batches_add(f->routed, g, e, m->users[u]);
        if (p->gateway[0] && p->session[0] && strcmp(m->users[u], p->sender) == 0)
            /* the sending session's gateway too, whatever the routes say: a send can come before
             * its user's route is written (a resend right after a reconnect to another gateway
             * does), and its ack is this event (the batch lists the user there once) */
            wk_route_batches_add(f->routed, p->gateway, e, m->users[u]);
    }
    if (wk_route_batches_bytes(f->routed) > WK_ROUTE_BATCH_BYTES)
        wk_route_batches_flush(f->routed, publish_routed, f);
}

/* Publishes every event of b once: to its members' gateways (f) and, on the first
 * attempt, to CHAT_EVENTS. events[i] is item i's, filled here and kept until the batches went. */
static void fanout_once(committer *c, batch *b, fanout *f, Chat__V1__Event *events, int64_t committed_ms)
{
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (it->state == I_DROP)
            continue;
        const item *first = it->state == I_DUP ? &b->items[it->dup_of] : it;
        if (first->state == I_DROP)
            continue;
        Chat__V1__Event *e = &events[i];
        chat__v1__event__init(e);
        fill_event(e, b, it, committed_ms);
        deliver_event(f, b, it, e);
        if (f->count)
            wk_ingest_publish_event(c, &c->in->parts[it->part], e, first->created_us);
    }
    wk_route_batches_flush(f->routed, publish_routed, f);
    if (f->count)
        atomic_fetch_add(c->in->m_deliveries_gateway, f->via_gateway);
    f->count = false;
}

/* The routes of b's members, asked again until Redis answers and they can be trusted (a new epoch
 * holds CHAT_ROUTES_SETTLE_MS, chat_routes.h): without them no live delivery can be addressed
 * (there is no per-user path), so the batch is held, kept ours (+WPI) and the lease alive, as while
 * the broker fails: chat pauses rather than lose live deliveries or show gaps. F_DONE with *out
 * set, or F_STOPPING / F_LEASE_LOST. */
static int routes_of(committer *c, batch *b, uint64_t gen, chat_map **out)
{
    for (int attempt = 0; !wk_ingest_routes_read(c, b, out); attempt++) {
        if (atomic_load(&c->in->app->stopping))
            return F_STOPPING;
        if (!wk_ingest_heartbeat(c, gen))
            return F_LEASE_LOST;
        if (attempt % 10 == 0)
            LOG_WARN("ingest", "event=routes_wait partition=%d attempt=%d hint=\"no routes to deliver by: Redis does "
                     "not answer, or lost them and the gateways are claiming them again\"", b->part, attempt + 1);
        wk_ingest_reply_all(c->in->app->nc, b, "+WPI");
        chat_sleep_ms(attempt < 5 ? 200 * (attempt + 1) : 1000);
        wk_redis_link_retry_now(&c->redis);
    }
    return F_DONE;
}

/* Publishes every stored event of the batch to its members (on the worker's connection: one
 * DeliveryBatch per gateway for the members with a route in Redis) and to CHAT_EVENTS (on the committer's, once:
 * wk_ingest_events.c confirms the PubAcks later and repairs from PostgreSQL what the broker did
 * not take); returns F_DONE when a flush says the server took the deliveries. The batch is acked
 * then: the sender's ack frame is its own live delivery, and nothing on the ack path waits for a
 * stream write. While the worker's connection fails, the deliveries are published again, by the
 * same routes (they may have died with the old socket; devices drop repeats by id), keeping the
 * batch ours (+WPI) and the lease session from idling out. */
int wk_ingest_fanout(committer *c, batch *b, uint64_t gen, int64_t committed_ms)
{
    wk_ingest *in = c->in;
    natsConnection *nc = in->app->nc;
    if (c->routed == NULL)
        c->routed = wk_route_batches_create();
    fanout f = {.nc = nc, .routed = c->routed, .count = true};
    int rc = routes_of(c, b, gen, &f.routes);
    if (rc != F_DONE)
        return rc;
    Chat__V1__Event *events = chat_xcalloc((size_t)b->n, sizeof *events);
    for (int attempt = 0;; attempt++) {
        uint64_t delivered_on = chat_nats_reconnects(nc);
        fanout_once(c, b, &f, events, committed_ms);
        /* a PONG on the worker's connection says the server took the deliveries before it (a
         * node killed with them in its socket has not) */
        int64_t waited = chat_mono_ns();
        natsStatus fs = natsConnection_FlushTimeout(nc, FLUSH_WAIT_MS);
        waited = (chat_mono_ns() - waited) / 1000000;
        bool same = chat_nats_reconnects(nc) == delivered_on;
        if (fs == NATS_OK && same)
            break;
        if (atomic_load(&in->app->stopping) && attempt > 2) {
            rc = F_STOPPING;
            break;
        }
        if (!wk_ingest_heartbeat(c, gen)) {
            rc = F_LEASE_LOST;
            break;
        }
        LOG_WARN("ingest", "event=delivery_retry partition=%d attempt=%d flush=\"%s\" reconnected=%d", b->part,
                 attempt + 1, natsStatus_GetText(fs), same ? 0 : 1);
        wk_ingest_reply_all(nc, b, "+WPI"); /* keep the batch ours while the broker recovers */
        /* back off when the flush failed at once; a flush that timed out has waited already */
        int64_t pause = attempt < 10 ? 200 * (attempt + 1) : 2000;
        if (waited < pause)
            chat_sleep_ms(pause - waited);
    }
    free(events);
    wk_ingest_routes_free(f.routes);
    return rc;
}

/* Tells the sending session why its post was not stored: on the subject of the gateway the post
 * came through (Post.gateway; the session is there), a DeliveryBatch with the rejection for the
 * sender alone (a post without one has no session to tell). */
static void send_rejection(natsConnection *nc, const item *it, const drop_info *why)
{
    Chat__V1__Rejection rj = CHAT__V1__REJECTION__INIT;
    rj.conv = it->post->conv;
    rj.cmid = it->post->cmid;
    rj.session = it->post->session;
    rj.code = (char *)why->reject_code;
    rj.message = (char *)why->told;
    Chat__V1__Delivery d = CHAT__V1__DELIVERY__INIT;
    d.item_case = CHAT__V1__DELIVERY__ITEM_REJECTION;
    d.rejection = &rj;
    uint8_t buf[1024];
    char subject[128];
    if (it->post->gateway[0] && chat_subject_deliver_gateway(subject, sizeof subject, it->post->gateway)) {
        uint32_t sender = 0;
        Chat__V1__RoutedItem ri = CHAT__V1__ROUTED_ITEM__INIT;
        Chat__V1__RoutedItem *items[] = {&ri};
        ri.delivery = &d;
        ri.n_recipients = 1;
        ri.recipients = &sender;
        Chat__V1__DeliveryBatch db = CHAT__V1__DELIVERY_BATCH__INIT;
        char *users[] = {it->post->sender};
        db.n_users = 1;
        db.users = users;
        db.n_items = 1;
        db.items = items;
        if (chat__v1__delivery_batch__get_packed_size(&db) > sizeof buf)
            return;
        size_t len = chat__v1__delivery_batch__pack(&db, buf);
        natsConnection_Publish(nc, subject, buf, (int)len);
    }
}

void wk_ingest_count_drops(wk_ingest *in, batch *b)
{
    for (int i = 0; i < b->n; i++) {
        item *it = &b->items[i];
        if (it->state != I_DROP)
            continue;
        const drop_info *why = wk_ingest_drop_info(it->drop);
        atomic_fetch_add(in->m_drop[why->metric], 1);
        LOG_WARN("ingest", "event=dropped partition=%d conv=%s cmid=%s reason=\"%s\"", it->part,
                 it->post ? it->post->conv : "?", it->post ? it->post->cmid : "?", why->text);
        /* a non-member is told the same whether the conversation exists or not (the gateway's
         * wording, why->told): the log and the metric above keep the difference */
        if (why->reject_code && it->post && it->post->session[0])
            send_rejection(in->app->nc, it, why);
    }
}
