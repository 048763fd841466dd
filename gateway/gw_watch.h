/* Presence watches (gw_watch.c). lws thread only. */
#ifndef GW_WATCH_H
#define GW_WATCH_H
#include <nats/nats.h>

#include "gw_frame.h"
#include "gw_server.h"
#include "gw_session.h"

/* Who watches whom here: user -> the sessions watching the user, and its subscription. Opaque. */
typedef struct gw_watches gw_watches;

/* None watched; the caller (gw_server.c) owns it. */
gw_watches *gw_watch_create(void);
/* Frees it; by then every session has closed (gw_watch_drop_all), so no user is watched. NULL-safe. */
void gw_watch_destroy(gw_watches *w);

/* A presence frame of s: queries the users and watches them for s. */
void gw_watch_handle(gw_server *srv, gw_session *s, const gw_inframe *f);
/* A change on chat.presence.<user>, from the bus, to the sessions watching the user. msg is borrowed. */
void gw_watch_on_change(gw_server *srv, natsMsg *msg);
/* s closes: it watches no one any more (a user nobody watches loses its subscription). */
void gw_watch_drop_all(gw_server *srv, gw_session *s);

#endif
