/* Per-gateway delivery batches of one fanout. Committer thread (one owner); pure. */
#include "wk_route_batch.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_map.h"
#include "chat_mem.h"

/* One gateway's pending batch; its arrays are kept across flushes and reused. */
typedef struct gw_pending {
    char id[64];
    chat_map *user_ix; /* user -> index + 1 in users */
    char **users;      /* borrowed */
    int nusers, capusers;
    Chat__V1__RoutedEvent *events;
    int *reccap; /* capacity of each event's recipients array */
    int nevents, capevents;
    const Chat__V1__Event *last; /* the event added last (by address) */
    size_t bytes;
} gw_pending;

struct wk_route_batches {
    gw_pending *gws;
    int ngws;  /* gateways with something pending: gws[0..ngws) */
    int alloc; /* entries allocated (those past ngws keep their arrays for reuse) */
};

wk_route_batches *wk_route_batches_create(void)
{
    return chat_xcalloc(1, sizeof(wk_route_batches));
}

void wk_route_batches_destroy(wk_route_batches *rb)
{
    if (rb == NULL)
        return;
    for (int g = 0; g < rb->alloc; g++) {
        gw_pending *p = &rb->gws[g];
        chat_map_destroy(p->user_ix);
        free(p->users);
        for (int i = 0; i < p->capevents; i++)
            free(p->events[i].recipients);
        free(p->events);
        free(p->reccap);
    }
    free(rb->gws);
    free(rb);
}

/* The pending entry of gateway id, made (or reused) when it has none yet. */
static gw_pending *route_gateway(wk_route_batches *rb, const char *id)
{
    for (int g = 0; g < rb->ngws; g++)
        if (strcmp(rb->gws[g].id, id) == 0)
            return &rb->gws[g];
    if (rb->ngws == rb->alloc) {
        int cap = rb->alloc ? 2 * rb->alloc : 4;
        rb->gws = chat_xrealloc(rb->gws, (size_t)cap * sizeof *rb->gws);
        memset(rb->gws + rb->alloc, 0, (size_t)(cap - rb->alloc) * sizeof *rb->gws);
        rb->alloc = cap;
    }
    gw_pending *p = &rb->gws[rb->ngws++];
    snprintf(p->id, sizeof p->id, "%s", id);
    if (p->user_ix == NULL)
        p->user_ix = chat_map_create();
    return p;
}

/* The index of user in p's users, added when new. */
static uint32_t route_user_index(gw_pending *p, const char *user)
{
    uintptr_t ix = (uintptr_t)chat_map_get(p->user_ix, user);
    if (ix)
        return (uint32_t)(ix - 1);
    if (p->nusers == p->capusers) {
        p->capusers = p->capusers ? 2 * p->capusers : 16;
        p->users = chat_xrealloc(p->users, (size_t)p->capusers * sizeof *p->users);
    }
    p->users[p->nusers++] = (char *)user;
    chat_map_put(p->user_ix, user, (void *)(uintptr_t)p->nusers, NULL);
    return (uint32_t)(p->nusers - 1);
}

/* The entry of event e in p (a new one when e is not p's last event). */
static Chat__V1__RoutedEvent *route_event(gw_pending *p, const Chat__V1__Event *e)
{
    if (p->last == e && p->nevents > 0)
        return &p->events[p->nevents - 1];
    if (p->nevents == p->capevents) {
        int cap = p->capevents ? 2 * p->capevents : 16;
        p->events = chat_xrealloc(p->events, (size_t)cap * sizeof *p->events);
        p->reccap = chat_xrealloc(p->reccap, (size_t)cap * sizeof *p->reccap);
        for (int i = p->capevents; i < cap; i++) {
            chat__v1__routed_event__init(&p->events[i]);
            p->reccap[i] = 0;
        }
        p->capevents = cap;
    }
    Chat__V1__RoutedEvent *re = &p->events[p->nevents++];
    re->event = (Chat__V1__Event *)e;
    re->n_recipients = 0;
    p->last = e;
    p->bytes += chat__v1__event__get_packed_size(e) + 8;
    return re;
}

void wk_route_batches_add(wk_route_batches *rb, const char *gateway, const Chat__V1__Event *e, const char *user)
{
    gw_pending *p = route_gateway(rb, gateway);
    uint32_t ux = route_user_index(p, user);
    Chat__V1__RoutedEvent *re = route_event(p, e);
    int slot = (int)(re - p->events);
    if (re->n_recipients > 0 && re->recipients[re->n_recipients - 1] == ux)
        return;
    if ((int)re->n_recipients == p->reccap[slot]) {
        p->reccap[slot] = p->reccap[slot] ? 2 * p->reccap[slot] : 8;
        re->recipients = chat_xrealloc(re->recipients, (size_t)p->reccap[slot] * sizeof *re->recipients);
    }
    re->recipients[re->n_recipients++] = ux;
    p->bytes += 2;
}

size_t wk_route_batches_bytes(const wk_route_batches *rb)
{
    size_t most = 0;
    for (int g = 0; g < rb->ngws; g++)
        if (rb->gws[g].bytes > most)
            most = rb->gws[g].bytes;
    return most;
}

/* Packs p's batch and hands it to fn. */
static void route_pack(gw_pending *p, wk_route_batch_fn fn, void *ctx)
{
    Chat__V1__RoutedEvent **evp = chat_xcalloc((size_t)p->nevents, sizeof *evp);
    int recipients = 0;
    for (int i = 0; i < p->nevents; i++) {
        evp[i] = &p->events[i];
        recipients += (int)p->events[i].n_recipients;
    }
    Chat__V1__DeliveryBatch db = CHAT__V1__DELIVERY_BATCH__INIT;
    db.users = p->users;
    db.n_users = (size_t)p->nusers;
    db.events = evp;
    db.n_events = (size_t)p->nevents;
    size_t len = chat__v1__delivery_batch__get_packed_size(&db);
    uint8_t *buf = chat_xmalloc(len);
    chat__v1__delivery_batch__pack(&db, buf);
    fn(p->id, buf, len, p->nevents, recipients, ctx);
    free(buf);
    free(evp);
}

int wk_route_batches_flush(wk_route_batches *rb, wk_route_batch_fn fn, void *ctx)
{
    int n = rb->ngws;
    for (int g = 0; g < n; g++) {
        gw_pending *p = &rb->gws[g];
        route_pack(p, fn, ctx);
        chat_map_destroy(p->user_ix);
        p->user_ix = NULL;
        p->nusers = 0;
        p->nevents = 0;
        p->last = NULL;
        p->bytes = 0;
    }
    rb->ngws = 0;
    return n;
}
