/* Requests in flight: a map by id (the reply's subject tail) and a list in deadline order for the
 * timer. lws thread only. */
#include "gw_request.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "chat_map.h"
#include "chat_status.h"

struct gw_request_table {
    uint64_t next_request;
    chat_map *pending;           /* id -> gw_request */
    gw_request *oldest, *newest; /* in deadline order for the timer (timeouts are per kind) */
};

gw_request_table *gw_request_table_create(void)
{
    gw_request_table *t = calloc(1, sizeof *t);
    if (t == NULL)
        CHAT_OOM();
    t->pending = chat_map_create();
    return t;
}

static void free_request(gw_request *r)
{
    free(r->payload);
    free(r);
}

void gw_request_table_destroy(gw_request_table *t)
{
    if (t == NULL)
        return;
    for (gw_request *r = t->oldest, *next; r; r = next) {
        next = r->next;
        free_request(r);
    }
    chat_map_destroy(t->pending);
    free(t);
}

static void unlink_request(gw_request_table *t, gw_request *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        t->oldest = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        t->newest = r->prev;
    r->prev = r->next = NULL;
}

static void link_request(gw_request_table *t, gw_request *r)
{
    r->prev = t->newest;
    r->next = NULL;
    if (t->newest)
        t->newest->next = r;
    else
        t->oldest = r;
    t->newest = r;
}

gw_request *gw_request_table_add(gw_request_table *t, gw_request_reply_fn on_reply, uint64_t session,
                                 int64_t deadline_ms)
{
    gw_request *r = calloc(1, sizeof *r);
    if (r == NULL)
        CHAT_OOM();
    r->id = ++t->next_request;
    r->on_reply = on_reply;
    r->session = session;
    r->deadline_ms = deadline_ms;
    char key[24];
    snprintf(key, sizeof key, "%" PRIu64, r->id);
    chat_map_put(t->pending, key, r, NULL);
    link_request(t, r);
    return r;
}

gw_request *gw_request_table_find(const gw_request_table *t, const char *id)
{
    return chat_map_get(t->pending, id);
}

void gw_request_table_free(gw_request_table *t, gw_request *req)
{
    char key[24];
    snprintf(key, sizeof key, "%" PRIu64, req->id);
    chat_map_remove(t->pending, key);
    unlink_request(t, req);
    free_request(req);
}

size_t gw_request_table_size(const gw_request_table *t)
{
    return chat_map_size(t->pending);
}

bool gw_request_table_answer(gw_request_table *t, gw_server *srv, const char *id, natsMsg *msg)
{
    gw_request *req = gw_request_table_find(t, id);
    if (req == NULL)
        return false; /* timed out already */
    if (!req->on_reply(srv, req, msg))
        gw_request_table_free(t, req);
    return true;
}

void gw_request_table_tick(gw_request_table *t, gw_server *srv, int64_t now_ms)
{
    /* few requests are in flight at once (one per unacked send), so a full walk is cheap */
    for (gw_request *r = t->oldest, *next; r; r = next) {
        next = r->next;
        if (r->retry_at_ms && r->retry_at_ms <= now_ms) {
            r->retry_at_ms = 0;
            unlink_request(t, r);
            link_request(t, r);
            if (r->on_retry == NULL || !r->on_retry(srv, r))
                gw_request_table_free(t, r);
        } else if (r->retry_at_ms == 0 && r->deadline_ms <= now_ms) {
            if (!r->on_reply(srv, r, NULL))
                gw_request_table_free(t, r);
        }
    }
}
