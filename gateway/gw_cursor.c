/* Cursor batching. lws thread only. */
#include "gw_cursor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.pb-c.h"
#include "chat_id.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"

#define CURSOR_TIMEOUT_MS 5000

typedef struct pending_cursor {
    char conv[CHAT_ID_MAX + 1];
    char user[CHAT_ID_MAX + 1];
    uint64_t seen, read;
} pending_cursor;

struct gw_cursors {
    chat_map *pending; /* "conv/user" -> pending_cursor */
};

static void free_one(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    free(value);
}

gw_cursors *gw_cursor_create(void)
{
    gw_cursors *c = calloc(1, sizeof *c);
    if (c == NULL)
        CHAT_OOM();
    c->pending = chat_map_create();
    return c;
}

void gw_cursor_destroy(gw_cursors *c)
{
    if (c == NULL)
        return;
    chat_map_each(c->pending, free_one, NULL);
    chat_map_destroy(c->pending);
    free(c);
}

void gw_cursor_merge(gw_server *srv, const char *conv, const char *user, uint64_t seen, uint64_t read)
{
    char key[2 * CHAT_ID_MAX + 2];
    snprintf(key, sizeof key, "%s/%s", conv, user);
    pending_cursor *c = chat_map_get(srv->cursors->pending, key);
    if (c == NULL) {
        c = calloc(1, sizeof *c);
        if (c == NULL)
            CHAT_OOM();
        snprintf(c->conv, sizeof c->conv, "%s", conv);
        snprintf(c->user, sizeof c->user, "%s", user);
        chat_map_put(srv->cursors->pending, key, c, NULL);
    }
    if (seen > c->seen)
        c->seen = seen;
    if (read > c->read)
        c->read = read;
}

typedef struct collect {
    Chat__V1__CursorUpdate *items;
    Chat__V1__CursorUpdate **ptrs;
    size_t n;
    pending_cursor **taken;
} collect;

static void take(const char *key, void *value, void *ctx)
{
    (void)key;
    collect *c = ctx;
    if (c->n >= GW_CURSOR_BATCH_MAX)
        return;
    pending_cursor *p = value;
    chat__v1__cursor_update__init(&c->items[c->n]);
    c->items[c->n].conv = p->conv;
    c->items[c->n].user = p->user;
    c->items[c->n].seen = p->seen;
    c->items[c->n].read = p->read;
    c->ptrs[c->n] = &c->items[c->n];
    c->taken[c->n] = p;
    c->n++;
}

static bool batch_answered(gw_server *srv, gw_request *req, natsMsg *msg);

/* The api role's answer to a batch (or its timeout): the request's own callback. */
static bool on_batch_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    return batch_answered(srv, req, msg && !gw_bus_no_responders(msg) ? msg : NULL);
}

void gw_cursor_flush(gw_server *srv)
{
    if (chat_map_size(srv->cursors->pending) == 0)
        return;
    collect c = {
        .items = chat_xcalloc(GW_CURSOR_BATCH_MAX, sizeof *c.items),
        .ptrs = chat_xcalloc(GW_CURSOR_BATCH_MAX, sizeof *c.ptrs),
        .taken = chat_xcalloc(GW_CURSOR_BATCH_MAX, sizeof *c.taken),
    };
    chat_map_each(srv->cursors->pending, take, &c);
    Chat__V1__CursorBatch batch = CHAT__V1__CURSOR_BATCH__INIT;
    batch.updates = c.ptrs;
    batch.n_updates = c.n;
    size_t len = chat__v1__cursor_batch__get_packed_size(&batch);
    uint8_t *packed = chat_xmalloc(len ? len : 1);
    chat__v1__cursor_batch__pack(&batch, packed);
    for (size_t i = 0; i < c.n; i++) {
        char key[2 * CHAT_ID_MAX + 2];
        snprintf(key, sizeof key, "%s/%s", c.taken[i]->conv, c.taken[i]->user);
        free(chat_map_remove(srv->cursors->pending, key));
    }
    free(c.items);
    free(c.ptrs);
    free(c.taken);
    gw_request *req = gw_bus_request_new(srv, on_batch_reply, 0, CURSOR_TIMEOUT_MS);
    req->payload = packed;
    req->payload_len = len;
    if (gw_bus_request_send(srv, req, CHAT_API_GW_PREFIX "cursor", packed, len, NULL) != CHAT_OK) {
        batch_answered(srv, req, NULL); /* merges the batch back */
        gw_bus_request_free(srv, req);
    }
}

/* A batch that did not make it goes back into the pending map (highest value wins). */
static bool batch_answered(gw_server *srv, gw_request *req, natsMsg *msg)
{
    Chat__V1__CursorReply *r = NULL;
    if (msg && natsMsg_GetDataLength(msg) > 0)
        r = chat__v1__cursor_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg), (const uint8_t *)natsMsg_GetData(msg));
    bool ok = r && (r->status == NULL || r->status->code[0] == '\0');
    bool retry = !ok && !(r && r->status && strcmp(r->status->code, "bad_request") == 0);
    if (r)
        chat__v1__cursor_reply__free_unpacked(r, NULL);
    if (retry && req->payload) {
        Chat__V1__CursorBatch *b = chat__v1__cursor_batch__unpack(NULL, req->payload_len, req->payload);
        for (size_t i = 0; b && i < b->n_updates; i++)
            gw_cursor_merge(srv, b->updates[i]->conv, b->updates[i]->user, b->updates[i]->seen, b->updates[i]->read);
        if (b)
            chat__v1__cursor_batch__free_unpacked(b, NULL);
        LOG_WARN("gateway", "event=cursor_batch_retry");
    }
    return false;
}
