/* Presence watches: a presence frame queries the users' state (gw_presence.h) and makes its
 * session a watcher of each (at most WATCH_MAX per session); one chat.presence.<user> subscription
 * per watched user, whatever the number of watchers here. lws thread only. */
#include "gw_watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "chat.pb-c.h"
#include "chat_mem.h"
#include "chat_time.h"
#include "gw_bus.h"
#include "gw_outframe.h"
#include "gw_presence.h"

#define WATCH_MAX 200

/* The sessions here watching one user, and its subscription. */
typedef struct watchers {
    natsSubscription *sub;
    uint64_t *sessions;
    int n, cap;
} watchers;

struct gw_watches {
    chat_map *by_user; /* user -> watchers */
};

gw_watches *gw_watch_create(void)
{
    gw_watches *w = calloc(1, sizeof *w);
    if (w == NULL)
        CHAT_OOM();
    w->by_user = chat_map_create();
    return w;
}

void gw_watch_destroy(gw_watches *w)
{
    if (w == NULL)
        return;
    chat_map_destroy(w->by_user);
    free(w);
}

static void presence_answered(gw_server *srv, void *data);

static void watch(gw_server *srv, gw_session *s, const char *user)
{
    for (int i = 0; i < s->nwatching; i++)
        if (strcmp(s->watching[i], user) == 0)
            return;
    if (s->nwatching >= WATCH_MAX)
        return;
    watchers *w = chat_map_get(srv->watches->by_user, user);
    if (w == NULL) {
        w = calloc(1, sizeof *w);
        if (gw_bus_subscribe_presence(srv, user, &w->sub) != CHAT_OK) {
            free(w);
            return;
        }
        chat_map_put(srv->watches->by_user, user, w, NULL);
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 4;
        w->sessions = chat_xrealloc(w->sessions, (size_t)w->cap * sizeof *w->sessions);
    }
    w->sessions[w->n++] = s->id;
    if (s->watching == NULL)
        s->watching = chat_xcalloc(WATCH_MAX, sizeof *s->watching);
    snprintf(s->watching[s->nwatching++], sizeof s->watching[0], "%s", user);
}

void gw_watch_drop_all(gw_server *srv, gw_session *s)
{
    for (int i = 0; i < s->nwatching; i++) {
        watchers *w = chat_map_get(srv->watches->by_user, s->watching[i]);
        if (w == NULL)
            continue;
        for (int k = 0; k < w->n; k++)
            if (w->sessions[k] == s->id) {
                w->sessions[k] = w->sessions[--w->n];
                break;
            }
        if (w->n == 0) {
            chat_map_remove(srv->watches->by_user, s->watching[i]);
            gw_bus_unsubscribe_user(w->sub);
            free(w->sessions);
            free(w);
        }
    }
    free(s->watching);
    s->watching = NULL;
    s->nwatching = 0;
}

void gw_watch_handle(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    if (!gw_budget_presence(&s->budget, chat_mono_ms())) {
        gw_session_send_error(srv, s, NULL, "rate_limited", "too many presence queries on this connection; slow down");
        return;
    }
    size_t n = json_array_size(f->users);
    const char *ids[GW_PRESENCE_USERS_MAX];
    for (size_t i = 0; i < n; i++)
        ids[i] = json_string_value(json_array_get(f->users, i));
    for (size_t i = 0; i < n; i++)
        watch(srv, s, ids[i]);
    gw_presence_query(srv->presence, s->id, ids, (int)n, presence_answered);
}

static json_t *presence_json(bool online, int64_t last_seen)
{
    json_t *j = json_pack("{s:b}", "online", online);
    json_object_set_new(j, "last_seen", last_seen ? json_integer((json_int_t)last_seen) : json_null());
    return j;
}

/* A presence query's answer (gw_presence_answer *, freed here), from the bus. */
static void presence_answered(gw_server *srv, void *data)
{
    gw_presence_answer *a = data;
    gw_session *s = gw_session_find(srv, a->session);
    if (s) {
        gw_budget_presence_done(s->budget);
        json_t *users = json_object();
        for (int i = 0; i < a->n; i++)
            json_object_set_new(users, a->states[i].user, presence_json(a->states[i].online, a->states[i].last_seen_ms));
        gw_session_send_json(srv, s, json_pack("{s:s, s:o}", "type", "presence", "users", users));
    }
    free(a);
}

void gw_watch_on_change(gw_server *srv, natsMsg *msg)
{
    Chat__V1__Presence *p = chat__v1__presence__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                       (const uint8_t *)natsMsg_GetData(msg));
    if (p == NULL)
        return;
    watchers *w = chat_map_get(srv->watches->by_user, p->user);
    if (w) {
        json_t *users = json_object();
        json_object_set_new(users, p->user, presence_json(p->online, p->last_seen_ms));
        gw_outframe *f = gw_outframe_from_json(json_pack("{s:s, s:o}", "type", "presence", "users", users), 0);
        for (int i = 0; i < w->n; i++) {
            gw_session *s = gw_session_find(srv, w->sessions[i]);
            if (s)
                gw_session_enqueue(srv, s, f);
        }
        gw_outframe_release(f);
    }
    chat__v1__presence__free_unpacked(p, NULL);
}

