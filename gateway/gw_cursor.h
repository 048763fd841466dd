/* seen and read frames: cursors (watermarks) per member and conversation, gathered on the lws
 * thread (the highest value wins) and sent to chat.api.v1.cursor in one batch every 200 ms; a
 * batch that fails is merged back and sent again. The api role stores them with one statement
 * and broadcasts `read` to the conversation's members as receipts. lws thread only. */
#ifndef GW_CURSOR_H
#define GW_CURSOR_H
#include <jansson.h>
#include <nats/nats.h>

#include "gw_bus.h"
#include "gw_server.h"

#define GW_CURSOR_BATCH_MAX 1000

/* The cursors gathered for the next batch ("conv/user" -> seen and read). Opaque. */
typedef struct gw_cursors gw_cursors;

/* An empty gathering; the caller (gw_server.c) owns it. */
gw_cursors *gw_cursor_create(void);
/* Frees what is still gathered (at stop), unsent. NULL-safe. */
void gw_cursor_destroy(gw_cursors *c);

/* A member's cursors (read implies seen), kept until the next batch; the highest value wins. */
void gw_cursor_merge(gw_server *srv, const char *conv, const char *user, uint64_t seen, uint64_t read);
/* Sends what gathered; called from the tick. */
void gw_cursor_flush(gw_server *srv);

#endif
