/* The connections open from each client address (CHAT_WS_MAX_PER_IP): the upgrade check reads the
 * count (gw_server.c), a session joins at ESTABLISHED and leaves at CLOSED (gw_session.c). The
 * table owns its entries; an address with no connection left is removed. Opaque; lws thread only. */
#ifndef GW_PEER_H
#define GW_PEER_H

typedef struct gw_peers gw_peers; /* client address -> gw_peer */
typedef struct gw_peer gw_peer;   /* one address and its open connections; sessions point at it */

/* An empty table; the caller owns it (gw_peer_destroy). */
gw_peers *gw_peer_create(void);
/* Frees the table and any entry still in it. NULL-safe. */
void gw_peer_destroy(gw_peers *t);
/* The connections open from addr (0 when none). */
int gw_peer_count(const gw_peers *t, const char *addr);
/* One more connection from addr; the entry it counts in, borrowed until its gw_peer_leave. */
gw_peer *gw_peer_join(gw_peers *t, const char *addr);
/* That connection closed; p (from gw_peer_join, NULL-safe) may be freed. */
void gw_peer_leave(gw_peers *t, gw_peer *p);

#endif
