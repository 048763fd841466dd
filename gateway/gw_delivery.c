/* Deliveries from NATS (chat.deliver.g.<gateway>: the batches of the users routed here and the
 * deliveries addressed to this gateway, like a rejection of a post sent here):
 * events, membership changes, typing, receipts and rejections, rendered once and queued to every
 * session of the user here; the ack of a sender's own post. lws thread only. */
#include "gw_delivery.h"

#include <inttypes.h>
#include <string.h>

#include <jansson.h>

#include "chat.pb-c.h"
#include "chat_frames.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_time.h"
#include "gw_admit.h"
#include "gw_membership.h"
#include "gw_send.h"
#include "gw_session.h"

static void fan_to_user(gw_server *srv, gw_user *u, gw_outframe *f)
{
    for (gw_session *s = u->sessions; s; s = s->next_of_user)
        gw_session_enqueue(srv, s, f);
}

static json_t *string_array(char **items, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(items[i]));
    return a;
}

/* A stored event (rendered as f) to every session of u; its sender's session (on this gateway)
 * gets the ack. */
static void deliver_event_frame(gw_server *srv, gw_user *u, const Chat__V1__Event *e, gw_outframe *f)
{
    fan_to_user(srv, u, f);
    if (e->session && e->session[0]) {
        gw_admit_done(srv->admit, e->session, e->conv, e->cmid); /* even when the session left */
        int64_t now = chat_mono_ms();
        /* a post of u's was stored: u is a member */
        if (gw_membership_get(srv->membership, e->conv, u->id, now) == GW_MEMBER_UNKNOWN)
            gw_membership_put(srv->membership, e->conv, u->id, true, now);
        uint64_t n = gw_session_number(srv, e->session);
        for (gw_session *s = u->sessions; s && n; s = s->next_of_user)
            if (s->id == n)
                gw_send_ack(srv, s, e->conv, e->cmid, e->seq, e->id);
    }
}

/* A stored event to every session of u, rendered for it alone. */
static void deliver_event(gw_server *srv, gw_user *u, const Chat__V1__Event *e)
{
    gw_outframe *f = gw_outframe_from_json(chat_event_json(e), e->ts_ms);
    deliver_event_frame(srv, u, e, f);
    gw_outframe_release(f);
}

/* The ingest refused a post of u: its sender's session gets the error; a not_member refusal
 * corrects the membership cache. */
static void deliver_rejection(gw_server *srv, gw_user *u, const Chat__V1__Rejection *rj)
{
    gw_admit_done(srv->admit, rj->session, rj->conv, rj->cmid);
    uint64_t n = gw_session_number(srv, rj->session);
    bool not_member = strcmp(rj->code, "not_member") == 0;
    for (gw_session *s = u->sessions; s && n; s = s->next_of_user)
        if (s->id == n) {
            gw_session_send_error(srv, s, rj->cmid, rj->code, rj->message);
            if (not_member) /* a post into a conversation not known here: a lookup (gw_budget.h) */
                gw_budget_lookup_charge(s->budget, chat_mono_ms());
        }
    if (strcmp(rj->code, "not_member") == 0) {
        gw_membership_invalidate(srv->membership, rj->conv); /* our cache was stale */
        /* u's next posts there are refused here */
        gw_membership_put(srv->membership, rj->conv, u->id, false, chat_mono_ms());
    }
}

/* Delivery d to every session of u, whichever subject it came on. */
static void dispatch(gw_server *srv, gw_user *u, const Chat__V1__Delivery *d)
{
    switch (d->item_case) {
    case CHAT__V1__DELIVERY__ITEM_EVENT:
        deliver_event(srv, u, d->event);
        break;
    case CHAT__V1__DELIVERY__ITEM_MEMBERS: {
        Chat__V1__MembershipEvent *m = d->members;
        gw_membership_invalidate(srv->membership, m->conv);
        json_t *j = json_pack("{s:s, s:s}", "type", "members", "conv", m->conv);
        json_object_set_new(j, "added", string_array(m->added, m->n_added));
        json_object_set_new(j, "removed", string_array(m->removed, m->n_removed));
        if (m->conversation_deleted)
            json_object_set_new(j, "deleted", json_true());
        gw_outframe *f = gw_outframe_from_json(j, 0);
        fan_to_user(srv, u, f);
        gw_outframe_release(f);
        break;
    }
    case CHAT__V1__DELIVERY__ITEM_TYPING: {
        gw_outframe *f = gw_outframe_from_json(
            json_pack("{s:s, s:s, s:s}", "type", "typing", "conv", d->typing->conv, "user", d->typing->user), 0);
        fan_to_user(srv, u, f);
        gw_outframe_release(f);
        break;
    }
    case CHAT__V1__DELIVERY__ITEM_RECEIPT: {
        Chat__V1__Receipt *r = d->receipt;
        json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:I}", "type", "receipt", "conv", r->conv, "user", r->user, "read",
                              (json_int_t)r->read, "seen", (json_int_t)r->seen);
        gw_outframe *f = gw_outframe_from_json(j, 0);
        fan_to_user(srv, u, f);
        gw_outframe_release(f);
        break;
    }
    case CHAT__V1__DELIVERY__ITEM_REJECTION:
        deliver_rejection(srv, u, d->rejection);
        break;
    default:
        break;
    }
}

void gw_delivery_handle_routed(gw_server *srv, natsMsg *msg)
{
    Chat__V1__DeliveryBatch *db = chat__v1__delivery_batch__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                                   (const uint8_t *)natsMsg_GetData(msg));
    if (db == NULL) {
        LOG_WARN("gateway", "event=bad_delivery_batch");
        return;
    }
    /* the users once: most are held here (a route outlives its user by up to its expiry) */
    gw_user **held = chat_xcalloc(db->n_users, sizeof *held);
    for (size_t k = 0; k < db->n_users; k++)
        held[k] = chat_map_get(srv->users, db->users[k]);
    for (size_t i = 0; i < db->n_events; i++) {
        const Chat__V1__RoutedEvent *re = db->events[i];
        if (re->event == NULL)
            continue;
        gw_outframe *f = NULL; /* rendered once, for the first recipient held here */
        for (size_t r = 0; r < re->n_recipients; r++) {
            uint32_t k = re->recipients[r];
            if (k >= db->n_users || held[k] == NULL)
                continue;
            if (f == NULL)
                f = gw_outframe_from_json(chat_event_json(re->event), re->event->ts_ms);
            deliver_event_frame(srv, held[k], re->event, f);
        }
        if (f)
            gw_outframe_release(f);
    }
    for (size_t i = 0; i < db->n_items; i++) {
        const Chat__V1__RoutedItem *ri = db->items[i];
        for (size_t r = 0; ri->delivery && r < ri->n_recipients; r++) {
            uint32_t k = ri->recipients[r];
            if (k < db->n_users && held[k] != NULL)
                dispatch(srv, held[k], ri->delivery);
        }
    }
    atomic_fetch_add(srv->m.routed_batches, 1);
    free(held);
    chat__v1__delivery_batch__free_unpacked(db, NULL);
}
