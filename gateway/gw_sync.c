/* sync and history over the api role. lws thread only. */
#include "gw_sync.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.pb-c.h"
#include "chat_frames.h"
#include "chat_id.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"

#define SYNC_TIMEOUT_MS 10000
#define HISTORY_TIMEOUT_MS 10000

/* The next page waits while the queue holds more than this: 1 MiB, or half the queue cap when
 * that is smaller; it is asked for again once the queue is down to a quarter of it. */
static size_t pause_bytes(const gw_server *srv)
{
    size_t half = (size_t)srv->cfg->ws_queue_max / 2;
    return half < GW_SYNC_PAUSE_BYTES ? half : GW_SYNC_PAUSE_BYTES;
}

/* The asking session of a sync, history or conversations reply, or NULL (it left: the request is
 * let go). *msg becomes NULL when it is the broker's status without data (no responders: the api
 * role is down), as for a timeout. */
static gw_session *asker_of(gw_server *srv, gw_request *req, natsMsg **msg)
{
    gw_session *s = gw_session_find(srv, req->session);
    if (s == NULL)
        return NULL;
    if (*msg && chat_nats_status(*msg) != 0)
        *msg = NULL; /* no responders: the api role is down */
    return s;
}

static bool on_sync_reply(gw_server *srv, gw_request *req, natsMsg *msg);
static bool on_history_reply(gw_server *srv, gw_request *req, natsMsg *msg);
static bool on_conv_list_reply(gw_server *srv, gw_request *req, natsMsg *msg);

static bool send_page(gw_server *srv, gw_session *s, uint8_t *packed, size_t len)
{
    gw_request *req = gw_bus_request_new(srv, on_sync_reply, s->id, SYNC_TIMEOUT_MS);
    snprintf(req->user, sizeof req->user, "%s", gw_session_user(s));
    bool ok = gw_bus_request_send(srv, req, CHAT_API_GW_PREFIX "sync", packed, len, NULL) == CHAT_OK;
    if (!ok)
        gw_bus_request_free(srv, req);
    free(packed);
    return ok;
}

static uint8_t *pack_sync(const gw_server *srv, const char *user, Chat__V1__SyncCursor **cursors, size_t n,
                          bool listed_only, size_t *len)
{
    Chat__V1__SyncRequest rq = CHAT__V1__SYNC_REQUEST__INIT;
    rq.max_bytes = (uint32_t)(pause_bytes(srv) / 2); /* a page fits well inside the client's queue */
    rq.user = (char *)user;
    rq.cursors = cursors;
    rq.n_cursors = n;
    rq.max_events = GW_SYNC_PAGE;
    rq.listed_only = listed_only;
    *len = chat__v1__sync_request__get_packed_size(&rq);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf == NULL)
        CHAT_OOM();
    chat__v1__sync_request__pack(&rq, buf);
    return buf;
}

/* Keeps the next page's request (packed, freed here) in s->sync_next until gw_sync_resume. */
static void park_page(gw_session *s, uint8_t *packed, size_t len)
{
    free(s->sync_next);
    s->sync_next = chat_xmalloc(sizeof *s->sync_next + len);
    s->sync_next->len = len;
    memcpy(s->sync_next->data, packed, len);
    free(packed);
}

void gw_sync_handle(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    if (s->syncing) {
        gw_session_send_error(srv, s, NULL, "bad_request", "a sync is already running");
        return;
    }
    size_t n = f->cursors ? json_object_size(f->cursors) : 0;
    Chat__V1__SyncCursor *items = chat_xcalloc(n ? n : 1, sizeof *items);
    Chat__V1__SyncCursor **ptrs = chat_xcalloc(n ? n : 1, sizeof *ptrs);
    size_t i = 0;
    const char *conv;
    json_t *seq;
    if (n)
        json_object_foreach(f->cursors, conv, seq)
        {
            chat__v1__sync_cursor__init(&items[i]);
            items[i].conv = (char *)conv;
            items[i].after = (uint64_t)json_integer_value(seq);
            ptrs[i] = &items[i];
            i++;
        }
    size_t len;
    uint8_t *packed = pack_sync(srv, gw_session_user(s), ptrs, i, false, &len);
    free(items);
    free(ptrs);
    s->syncing = true;
    if (s->u && !s->u->route_ready) {
        /* the user's route is not in Redis yet: an event committed after this sync's read might
         * miss this gateway, so the sync waits for it (route_written, gw_server.c) */
        park_page(s, packed, len);
        return;
    }
    if (!send_page(srv, s, packed, len)) {
        s->syncing = false;
        gw_session_send_error(srv, s, NULL, "unavailable", "sync cannot run now; send it again");
    }
}

static void sync_failed(gw_server *srv, gw_session *s, const char *code)
{
    s->syncing = false;
    free(s->sync_next);
    s->sync_next = NULL;
    gw_session_send_error(srv, s, NULL, strcmp(code, "not_member") == 0 ? code : "unavailable",
                          "sync stopped; send it again with your cursors");
}

/* One page of a sync (or its timeout): its events, then the next page or synced. */
static bool on_sync_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    gw_session *s = asker_of(srv, req, &msg);
    if (s == NULL)
        return false;
    Chat__V1__SyncReply *r = NULL;
    if (msg && natsMsg_GetDataLength(msg) > 0)
        r = chat__v1__sync_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg), (const uint8_t *)natsMsg_GetData(msg));
    if (r == NULL || (r->status && r->status->code[0])) {
        sync_failed(srv, s, r && r->status ? r->status->code : "unavailable");
        if (r)
            chat__v1__sync_reply__free_unpacked(r, NULL);
        return false;
    }
    for (size_t i = 0; i < r->n_not_member; i++) {
        json_t *e = json_pack("{s:s, s:s, s:s, s:s}", "type", "error", "code", "not_member", "message",
                              "not a member of this conversation", "conv", r->not_member[i]);
        gw_session_send_json(srv, s, e);
    }
    for (size_t i = 0; i < r->n_events; i++)
        gw_session_send_event(srv, s, r->events[i]);
    if (r->n_next == 0) {
        s->syncing = false;
        gw_session_send_json(srv, s, json_pack("{s:s}", "type", "synced"));
    } else {
        size_t len;
        uint8_t *packed = pack_sync(srv, gw_session_user(s), r->next, r->n_next, true, &len);
        if (s->qbytes > pause_bytes(srv)) {
            park_page(s, packed, len); /* sent from the WRITEABLE path when the client caught up */
        } else if (!send_page(srv, s, packed, len)) {
            sync_failed(srv, s, "unavailable");
        }
    }
    chat__v1__sync_reply__free_unpacked(r, NULL);
    return false;
}

void gw_sync_resume(gw_server *srv, gw_session *s)
{
    if (s->sync_next == NULL || s->qbytes > pause_bytes(srv) / 4 || (s->u && !s->u->route_ready))
        return;
    gw_parked *parked = s->sync_next;
    s->sync_next = NULL;
    size_t len = parked->len;
    uint8_t *packed = malloc(len ? len : 1);
    if (packed == NULL)
        CHAT_OOM();
    memcpy(packed, parked->data, len);
    free(parked);
    if (!send_page(srv, s, packed, len))
        sync_failed(srv, s, "unavailable");
}

void gw_history_handle(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    Chat__V1__HistoryRequest rq = CHAT__V1__HISTORY_REQUEST__INIT;
    rq.conv = (char *)f->conv;
    rq.user = (char *)gw_session_user(s);
    rq.before = f->before;
    rq.limit = f->limit;
    uint8_t buf[256];
    size_t len = chat__v1__history_request__pack(&rq, buf);
    gw_request *req = gw_bus_request_new(srv, on_history_reply, s->id, HISTORY_TIMEOUT_MS);
    snprintf(req->conv, sizeof req->conv, "%s", f->conv);
    char *ref_text = f->ref ? json_dumps(f->ref, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    snprintf(req->ref, sizeof req->ref, "%s", ref_text ? ref_text : "");
    free(ref_text);
    if (gw_bus_request_send(srv, req, CHAT_API_GW_PREFIX "history", buf, len, NULL) != CHAT_OK) {
        gw_bus_request_free(srv, req);
        gw_session_send_error(srv, s, NULL, "unavailable", "history cannot be read now");
    }
}

static bool on_history_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    gw_session *s = asker_of(srv, req, &msg);
    if (s == NULL)
        return false;
    Chat__V1__HistoryReply *r = NULL;
    if (msg && natsMsg_GetDataLength(msg) > 0)
        r = chat__v1__history_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                            (const uint8_t *)natsMsg_GetData(msg));
    json_t *ref = req->ref[0] ? json_loads(req->ref, JSON_DECODE_ANY, NULL) : NULL;
    json_t *f;
    if (r == NULL || (r->status && r->status->code[0])) {
        const char *code = r && r->status && strcmp(r->status->code, "not_member") == 0 ? "not_member" : "unavailable";
        f = json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message",
                      strcmp(code, "not_member") == 0 ? "not a member of this conversation" : "history cannot be read now");
    } else {
        json_t *messages = json_array();
        for (size_t i = 0; i < r->n_events; i++)
            json_array_append_new(messages, chat_event_json(r->events[i]));
        f = json_pack("{s:s, s:s, s:o, s:b}", "type", "history", "conv", req->conv, "messages", messages, "more",
                      r->more);
    }
    if (ref)
        json_object_set_new(f, "ref", ref);
    if (r)
        chat__v1__history_reply__free_unpacked(r, NULL);
    gw_session_send_json(srv, s, f);
    return false;
}

void gw_conversations_handle(gw_server *srv, gw_session *s)
{
    Chat__V1__ConvListRequest rq = CHAT__V1__CONV_LIST_REQUEST__INIT;
    rq.user = (char *)gw_session_user(s);
    uint8_t buf[128];
    size_t len = chat__v1__conv_list_request__pack(&rq, buf);
    gw_request *req = gw_bus_request_new(srv, on_conv_list_reply, s->id, HISTORY_TIMEOUT_MS);
    if (gw_bus_request_send(srv, req, CHAT_API_GW_PREFIX "conv.list", buf, len, NULL) != CHAT_OK) {
        gw_bus_request_free(srv, req);
        gw_session_send_error(srv, s, NULL, "unavailable", "conversations cannot be listed now");
    }
}

static bool on_conv_list_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    gw_session *s = asker_of(srv, req, &msg);
    if (s == NULL)
        return false;
    Chat__V1__ConvListReply *r = NULL;
    if (msg && natsMsg_GetDataLength(msg) > 0)
        r = chat__v1__conv_list_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                              (const uint8_t *)natsMsg_GetData(msg));
    if (r == NULL || (r->status && r->status->code[0])) {
        if (r)
            chat__v1__conv_list_reply__free_unpacked(r, NULL);
        gw_session_send_error(srv, s, NULL, "unavailable", "conversations cannot be listed now");
        return false;
    }
    json_t *list = json_array();
    for (size_t i = 0; i < r->n_conversations; i++) {
        Chat__V1__ConvSummary *c = r->conversations[i];
        json_array_append_new(list, json_pack("{s:s, s:s, s:I, s:I, s:I, s:I}", "conv", c->conv, "kind", c->kind,
                                              "last_seq", (json_int_t)c->last_seq, "seen", (json_int_t)c->seen,
                                              "read", (json_int_t)c->read, "unread",
                                              (json_int_t)(c->last_seq > c->read ? c->last_seq - c->read : 0)));
    }
    chat__v1__conv_list_reply__free_unpacked(r, NULL);
    gw_session_send_json(srv, s, json_pack("{s:s, s:o}", "type", "conversations", "conversations", list));
    return false;
}
