/* The ingest's fanout stage: each stored event to its members' delivery subjects and to
 * CHAT_EVENTS until acknowledged, and each dropped post counted, logged and told to its session.
 * Runs on the committer thread (the publish error handler on the committer's NATS connection). */
#include "wk_ingestp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_frames.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_time.h"

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

void wk_ingest_on_publish_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    (void)js;
    committer *c = closure;
    atomic_fetch_add(&c->publish_errors, 1);
    LOG_WARN("ingest", "event=events_publish_failed status=\"%s\" detail=\"%s\"", natsStatus_GetText(pae->Err),
             pae->ErrText ? pae->ErrText : "");
}

void wk_ingest_reply_all(natsConnection *nc, batch *b, const char *what)
{
    for (int i = 0; i < b->n; i++) {
        const char *reply = natsMsg_GetReply(b->items[i].msg);
        if (reply)
            natsConnection_PublishString(nc, reply, what);
    }
}

uint64_t wk_ingest_reconnects(natsConnection *nc)
{
    natsStatistics *st = NULL;
    uint64_t n = 0;
    if (natsStatistics_Create(&st) == NATS_OK && natsConnection_GetStats(nc, st) == NATS_OK)
        natsStatistics_GetCounts(st, NULL, NULL, NULL, NULL, &n);
    natsStatistics_Destroy(st);
    return n;
}

/* Forgets the publishes still waiting for a PubAck and returns how many there were. A PubAck lost
 * with a NATS node (or a connection that died silently) never comes: left in the context, such a
 * publish would make every later js_PublishAsyncComplete time out and stall the partition for
 * good. CHAT_EVENTS drops repeats by Nats-Msg-Id, so the caller simply publishes again. */
static int drop_pending(committer *c)
{
    natsMsgList pending = {0};
    if (js_PublishAsyncGetPendingList(&pending, c->js) != NATS_OK)
        return 0; /* NATS_NOT_FOUND: nothing pending */
    int n = pending.Count;
    natsMsgList_Destroy(&pending);
    return n;
}


/* The Delivery of event e to every member of its conversation (on the worker's connection). */
static void deliver_event(natsConnection *nc, batch *b, const item *it, Chat__V1__Event *e)
{
    Chat__V1__Delivery d = CHAT__V1__DELIVERY__INIT;
    d.item_case = CHAT__V1__DELIVERY__ITEM_EVENT;
    d.event = e;
    size_t len = chat__v1__delivery__get_packed_size(&d);
    uint8_t stackbuf[4096], *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
    chat__v1__delivery__pack(&d, buf);
    members *m = wk_ingest_find_conv(b, it->post->conv);
    for (int u = 0; m && u < m->n; u++) {
        char subject[128];
        if (chat_subject_deliver(subject, sizeof subject, m->users[u]))
            natsConnection_Publish(nc, subject, buf, (int)len);
    }
    if (buf != stackbuf)
        free(buf);
}

/* Event e to CHAT_EVENTS (on the committer's connection), its PubAck awaited later. */
static void publish_event(committer *c, const Chat__V1__Event *e)
{
    size_t len = chat__v1__event__get_packed_size(e);
    uint8_t *buf = chat_xmalloc(len ? len : 1);
    chat__v1__event__pack(e, buf);
    char subject[128], msgid[160];
    chat_subject_event(subject, sizeof subject, e->conv);
    snprintf(msgid, sizeof msgid, "%s:%" PRIu64, e->conv, e->seq);
    natsMsg *msg = NULL;
    natsMsg_Create(&msg, subject, NULL, (const char *)buf, (int)len);
    natsMsgHeader_Set(msg, "Nats-Msg-Id", msgid);
    natsMsgHeader_Set(msg, "Chat-Type", "event");
    free(buf);
    if (js_PublishMsgAsync(c->js, &msg, NULL) != NATS_OK)
        atomic_fetch_add(&c->publish_errors, 1);
    natsMsg_Destroy(msg);
}

/* Waits for the server to take the deliveries (when deliver) and for the PubAcks of CHAT_EVENTS.
 * False when the lease is lost meanwhile. */
static bool await_acks(committer *c, uint64_t gen, bool deliver, natsStatus *flushed, natsStatus *acked)
{
    /* the deliveries went out on the worker's connection, the events on the committer's own: a
     * PubAck says nothing of the deliveries, a PONG on the worker's connection does (the
     * server had taken them before it; a node killed with them in its socket is not) */
    *flushed = deliver ? natsConnection_FlushTimeout(c->in->app->nc, FLUSH_WAIT_MS) : NATS_OK;
    /* the PubAcks are awaited a slice at a time with a heartbeat between: a broker that stays
     * silent must not let the lease session idle out (its timeout, 10 s, was once the sum of
     * the two waits, and a cut-off NATS node cost every lease of the committer) */
    natsStatus s = NATS_TIMEOUT;
    for (int64_t left = PUBACK_WAIT_MS; left > 0 && s == NATS_TIMEOUT;) {
        if (!wk_ingest_heartbeat(c, gen))
            return false;
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = left < PUBACK_SLICE_MS ? left : PUBACK_SLICE_MS;
        s = js_PublishAsyncComplete(c->js, &po);
        left -= po.MaxWait;
    }
    *acked = s;
    return true;
}

/* Publishes every stored event of the batch to its members (on the worker's connection) and to
 * CHAT_EVENTS (on the committer's); returns F_DONE when CHAT_EVENTS has acknowledged all of them and
 * a flush says the server took the deliveries (retrying while the broker refuses); the notify role
 * reads its offline pushes from CHAT_EVENTS too. A retry publishes the events again, and the live
 * deliveries too when the worker's connection changed since they went out or its flush failed
 * (they may have died with the old socket); devices drop repeats by id. While it retries it keeps
 * the lease session from idling out (idle_session_timeout). */
int wk_ingest_fanout(committer *c, batch *b, uint64_t gen, int64_t committed_ms)
{
    wk_ingest *in = c->in;
    natsConnection *nc = in->app->nc;
    bool deliver = true;
    uint64_t delivered_on = 0; /* wk_ingest_reconnects() when the deliveries were published */
    for (int attempt = 0;; attempt++) {
        atomic_store(&c->publish_errors, 0);
        if (deliver)
            delivered_on = wk_ingest_reconnects(nc);
        for (int i = 0; i < b->n; i++) {
            item *it = &b->items[i];
            if (it->state == I_DROP)
                continue;
            const item *first = it->state == I_DUP ? &b->items[it->dup_of] : it;
            if (first->state == I_DROP)
                continue;
            Chat__V1__Event e = CHAT__V1__EVENT__INIT;
            fill_event(&e, b, it, committed_ms);
            if (deliver)
                deliver_event(nc, b, it, &e);
            publish_event(c, &e);
        }
        int64_t waited = chat_mono_ns();
        natsStatus fs, s;
        if (!await_acks(c, gen, deliver, &fs, &s))
            return F_LEASE_LOST;
        waited = (chat_mono_ns() - waited) / 1000000;
        bool same = wk_ingest_reconnects(nc) == delivered_on;
        if (s == NATS_OK && fs == NATS_OK && same && atomic_load(&c->publish_errors) == 0)
            return F_DONE;
        int dropped = drop_pending(c);
        deliver = fs != NATS_OK || !same;
        if (atomic_load(&in->app->stopping) && attempt > 2)
            return F_STOPPING;
        if (!wk_ingest_heartbeat(c, gen))
            return F_LEASE_LOST;
        LOG_WARN("ingest",
                 "event=events_publish_retry partition=%d attempt=%d status=\"%s\" flush=\"%s\" errors=%d"
                 " dropped=%d redeliver=%d",
                 b->part, attempt + 1, natsStatus_GetText(s), natsStatus_GetText(fs),
                 atomic_load(&c->publish_errors), dropped, deliver ? 1 : 0);
        wk_ingest_reply_all(nc, b, "+WPI"); /* keep the batch ours while the broker recovers */
        /* back off when the broker refused at once; a wait that timed out has waited already */
        int64_t pause = attempt < 10 ? 200 * (attempt + 1) : 2000;
        if (waited < pause)
            chat_sleep_ms(pause - waited);
    }
}

/* Tells the sending session why its post was not stored (through the sender's delivery subject). */
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
    if (chat__v1__delivery__get_packed_size(&d) > sizeof buf)
        return;
    size_t len = chat__v1__delivery__pack(&d, buf);
    char subject[128];
    if (chat_subject_deliver(subject, sizeof subject, it->post->sender))
        natsConnection_Publish(nc, subject, buf, (int)len);
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
