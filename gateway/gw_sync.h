/* sync and history frames: pages from the api role (chat.api.v1.sync, chat.api.v1.history),
 * turned into msg / synced / history frames. A sync runs page by page and parks the next page
 * while the session's outbound queue is over GW_SYNC_PAUSE_BYTES (resumed at a quarter of it), so a user with thousands of
 * missed events never floods the gateway's memory nor stalls its loop. lws thread only. */
#ifndef GW_SYNC_H
#define GW_SYNC_H
#include <jansson.h>
#include <nats/nats.h>

#include "gw_bus.h"
#include "gw_frame.h"
#include "gw_session.h"

#define GW_SYNC_PAGE 500

#define GW_SYNC_PAUSE_BYTES (1024 * 1024) /* or half of CHAT_WS_QUEUE_MAX, when smaller */

void gw_sync_handle(gw_server *srv, gw_session *s, const gw_inframe *f);
void gw_history_handle(gw_server *srv, gw_session *s, const gw_inframe *f);
/* {"type":"conversations"}: the user's conversations with their heads and cursors (an addition
 * to the contract's protocol, for clients that list conversations with unread counts). */
void gw_conversations_handle(gw_server *srv, gw_session *s);
/* From the WRITEABLE path: sends a parked page once the queue is small again. */
void gw_sync_resume(gw_server *srv, gw_session *s);

#endif
