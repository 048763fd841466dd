/* sync and history frames: pages from the api role (chat.api.v1.sync, chat.api.v1.history),
 * turned into msg / synced / history frames. A sync runs page by page and parks the next page
 * while the session's outbound queue is over GW_SYNC_PAUSE_BYTES (resumed at a quarter of it), so a user with thousands of
 * missed events never floods the gateway's memory nor stalls its loop. lws thread only. */
#ifndef GW_SYNC_H
#define GW_SYNC_H
#include <jansson.h>
#include <nats/nats.h>

#include "chat.pb-c.h"
#include "gw_bus.h"
#include "gw_frame.h"
#include "gw_session.h"

#define GW_SYNC_PAGE 500

/* What the sync needs of the sessions, given by the one place that wires the modules (gw_server.c
 * sets srv->sync_port): the session module calls the sync, the sync calls back only through this.
 * The gw_session_* functions of the same names (gw_session.h); lws thread. */
typedef struct gw_sync_port {
    gw_session *(*find)(gw_server *srv, uint64_t id);
    void (*send_json)(gw_server *srv, gw_session *s, json_t *frame); /* takes the reference */
    void (*send_error)(gw_server *srv, gw_session *s, const char *ref, const char *code, const char *message);
    void (*send_event)(gw_server *srv, gw_session *s, const Chat__V1__Event *e); /* a paced page event */
} gw_sync_port;
#define GW_SYNC_PAUSE_BYTES (1024 * 1024) /* or half of CHAT_WS_QUEUE_MAX, when smaller */

void gw_sync_handle(gw_server *srv, gw_session *s, const gw_inframe *f);
void gw_history_handle(gw_server *srv, gw_session *s, const gw_inframe *f);
/* {"type":"conversations"}: the user's conversations with their heads and cursors (an addition
 * to the contract's protocol, for clients that list conversations with unread counts). */
void gw_conversations_handle(gw_server *srv, gw_session *s);
/* From the WRITEABLE path: sends a parked page once the queue is small again. */
void gw_sync_resume(gw_server *srv, gw_session *s);

#endif
