/* A WebSocket client connection: its lws events, the frames it receives (handed whole to the
 * router, gw_session_handlers), its outbound queue, the sweep, the slot table. Everything here runs
 * on the lws thread. A session lives in lws's per-session memory from ESTABLISHED to CLOSED; other
 * code refers to it by id (gw_server.slots) and looks it up again, never keeps the pointer. */
#ifndef GW_SESSION_H
#define GW_SESSION_H
#include <stdbool.h>
#include <stdint.h>

#include <libwebsockets.h>
#include <nats/nats.h>

#include <jansson.h>

#include "chat.pb-c.h"
#include "chat_buf.h"
#include "chat_http.h"
#include "chat_id.h"
#include "chat_revoke.h"
#include "gw_budget.h"
#include "gw_bus.h"
#include "chat_jwt.h"
#include "gw_outframe.h"
#include "gw_peer.h"
#include "gw_server.h"

#define GW_FRAME_MAX (64 * 1024)       /* larger frames close the connection with 1009 */
#define GW_CLOSE_SLOW_CONSUMER 4008    /* the client fell behind past CHAT_WS_QUEUE_MAX for CHAT_WS_SLOW_GRACE */
#define GW_CLOSE_SERVICE_RESTART 1012  /* the gateway's NATS connection was lost: live deliveries may be missing */
#define GW_CLOSE_TOKEN_REVOKED 4001    /* the session's token was revoked (chatctl revoke, gw_revoke.h) */
#define GW_CLOSE_TOKEN_EXPIRED 4003    /* the session's token reached its exp, no newer one came (gw_auth.h) */
#define GW_FRAGMENT_TIMEOUT_MS 10000   /* a fragmented frame must be complete within this */
/* A connection asked to close (4008, 1001, 1012, 1008) is hung up this long after whatever its
 * client does: one that reads nothing never lets the close frame out (its socket never becomes
 * writable), one that does may never answer it. Hung up with a TCP reset, so that the kernel's
 * buffers for it go too. */
#define GW_CLOSE_WAIT_MS 1000

typedef struct gw_qnode {
    gw_outframe *frame;
    struct gw_qnode *next;
} gw_qnode;

/* Lives in lws's per-session memory, one per connection: kept small (docs/benchmarks.md, memory
 * per connection). What only some sessions need is allocated when they need it. */
/* A frame being received in pieces (lws hands it over RX_BUFFER_SIZE bytes at a time, and a
 * client may fragment it): only sessions in the middle of one carry this. */
typedef struct gw_rx {
    chat_buf buf;
    int64_t started_ms;          /* when the frame started (GW_FRAGMENT_TIMEOUT_MS) */
} gw_rx;

/* A packed request waiting for its turn. */
typedef struct gw_parked {
    size_t len;
    uint8_t data[];
} gw_parked;

typedef struct gw_session {
    struct lws *wsi;
    struct gw_user *u;           /* the user's entry, from ESTABLISHED until CLOSED */
    chat_http_reply *http;       /* plain HTTP requests only */
    uint64_t id;
    gw_qnode *qhead, *qtail;
    size_t qbytes;
    gw_rx *rx;                   /* a frame coming in pieces, or NULL */
    int64_t over_since_ms;       /* when the queue went over CHAT_WS_QUEUE_MAX, or 0 */
    double frame_tokens;         /* token bucket: frames per connection */
    int64_t frame_refill_ms;
    gw_parked *sync_next;        /* the next page's packed SyncRequest, parked while the queue drains */
    gw_budget *budget;           /* typing, presence, lookups, status polls (gw_budget.h), or NULL */
    int close_code;              /* set: close at the next WRITEABLE with this code */
    /* the token's iat (0: none) and a hash of its jti (0: none), what gw_session_close_revoked
     * matches; iat fits 32 bits until 2106 (a verified token's iat is at most its exp, at most
     * CHAT_JWT_MAX_TTL from now). Placed in what was padding. */
    uint32_t token_iat;
    int64_t closing_ms;          /* when close_code was set (GW_CLOSE_WAIT_MS) */
    uint64_t token_jti;
    char (*watching)[CHAT_ID_MAX + 1]; /* users whose presence changes this session gets */
    int nwatching;
    bool established;
    bool syncing;                /* a sync is running: pages until `synced` */
    bool want_ping;              /* a ping goes out at the next WRITEABLE */
    bool close_written;          /* the close frame went to the socket */
    uint32_t token_exp;          /* the token's exp: the sweep closes the session then (4003); in padding */
    struct gw_session *next_of_user, *prev_of_user;
    int64_t last_rx_ms;          /* the last frame or pong from the client (idle ping, sweep) */
    int64_t ping_sent_ms;        /* the last ping sent, or 0 */
    gw_peer *peer;               /* the client address's count (per-address limit), or NULL */
    char *token;                 /* the token it runs on (owned): what its user's route claims may show */
} gw_session;

/* The sessions of one user on this gateway. */
typedef struct gw_user {
    gw_session *sessions;
    int count;
    uint32_t route_gen;          /* this entry's write of its route (gw_presence_online) */
    bool route_ready;            /* the route is written: syncs run (before: the first one waits) */
    double post_tokens;          /* token bucket: posts per user on this gateway */
    int64_t post_refill_ms;
    const char *token;           /* the token with the latest exp among its sessions' (borrowed from that
                                    session): what its route claims show the worker (gw_presence.h) */
    char id[];                   /* as long as it is (one per user held) */
} gw_user;

/* The session's user id ("" outside ESTABLISHED..CLOSED). */
static inline const char *gw_session_user(const gw_session *s)
{
    return s->u ? s->u->id : "";
}

/* What the connection hands up, given by the one place that wires the modules (gw_server.c sets
 * srv->session_on): the connection calls no module above it (pgbouncer's sbuf_init(&client->sbuf,
 * client_proto)). lws thread. */
typedef struct gw_session_handlers {
    /* a whole frame of s (data borrowed): gw_route_frame */
    void (*on_frame)(gw_server *srv, gw_session *s, const char *data, size_t len);
    /* WRITEABLE wrote and s has a parked sync page (s->sync_next): gw_sync_resume */
    void (*on_drained)(gw_server *srv, gw_session *s);
    /* an established s closes: what other modules hold of it goes (gw_watch_drop_all) */
    void (*on_closing)(gw_server *srv, gw_session *s);
} gw_session_handlers;

/* Once a second from the tick: slow consumers past their grace, fragments that never finish,
 * idle connections (pinged after CHAT_WS_PING without a frame or pong, dropped after twice that). */
void gw_session_sweep(gw_server *srv);
/* A pong from the client: the connection is alive. */
void gw_session_pong(gw_session *s);
/* Graceful stop: close every session with 1001 (going away) so clients reconnect elsewhere. */
void gw_session_close_all(gw_server *srv);
/* The gateway's NATS connection came back after a loss (reconnects: nats.c's count of new
 * sockets): deliveries published meanwhile (and until its subscriptions were known again) went
 * nowhere, so close every session with 1012 (service restart); clients reconnect and sync from
 * their cursors. */
void gw_session_restart_all(gw_server *srv, uint64_t reconnects);
/* The same close (1012, clients sync when back) for another hole: live deliveries to this gateway's
 * users may have been missed (Redis lost every route, or this gateway's claims failed too long:
 * gw_presence.h). */
void gw_session_routes_lost(gw_server *srv, void *unused);

/* user: the checked user id of the session's token (gw_session_set_token done). */
void gw_session_established(gw_server *srv, gw_session *s, struct lws *wsi, const char *user);
/* A bus handler (data: a malloc'd uint32_t cutoff, freed): Redis lost every route (a new epoch):
 * the sessions of users whose route was claimed before it (route_gen up to the cutoff) are closed
 * with 1012 and sync when back; users claimed in the new epoch keep theirs. */
void gw_session_routes_epoch(gw_server *srv, void *data);
/* A bus handler (data: a user id, freed): the user's route is not written (its first claim failed,
 * or the worker refused a heartbeat's: its token no longer proves the user): the user's sessions
 * here are closed with 1012 and claim again with their own tokens when they reconnect. */
void gw_session_close_user(gw_server *srv, void *data);
/* The token s runs on from now (at the upgrade, or renewed by an auth frame): what a revocation is
 * matched against, and the exp the sweep closes it at. */
void gw_session_set_token(gw_session *s, const chat_jwt_claims *claims, const char *token);
/* lws contract: 0 carry on, -1 close. */
int gw_session_receive(gw_server *srv, gw_session *s, const void *in, size_t len);
int gw_session_writeable(gw_server *srv, gw_session *s);
void gw_session_closed(gw_server *srv, gw_session *s);

/* For the modules above the connection (send, sync, deliveries, typing, watches; lws thread). */
gw_session *gw_session_find(gw_server *srv, uint64_t id);
/* "<gateway id>-<n>": the session's name in hello, posts and logs; buf has GW_SESSION_NAME_MAX bytes. */
#define GW_SESSION_NAME_MAX 48
const char *gw_session_name(const gw_server *srv, const gw_session *s, char *buf);
void gw_session_send_json(gw_server *srv, gw_session *s, json_t *frame); /* takes the reference */
void gw_session_send_error(gw_server *srv, gw_session *s, const char *ref, const char *code, const char *message);
/* An event of a sync page: paced by the sync, so only the grace rule closes a slow reader. */
void gw_session_send_event(gw_server *srv, gw_session *s, const Chat__V1__Event *e);
/* Queues f (one more reference) for s: f is shared by every session it goes to. Over the cap for
 * longer than the grace, or twice over it, s is closed as a slow consumer. */
void gw_session_enqueue(gw_server *srv, gw_session *s, gw_outframe *f);
/* Counts an error frame sent: chat_gateway_failed_total{reason=code}. */
void gw_session_count_error(gw_server *srv, const char *code);
/* The number of a session named by gw_session_name on this gateway, or 0 (another gateway's). */
uint64_t gw_session_number(const gw_server *srv, const char *name);
/* The session that asked for a membership lookup (by id) got its answer or its timeout. */
void gw_session_lookup_done(gw_server *srv, uint64_t session);

/* A revocation arrived (gw_revoke.c): closes with GW_CLOSE_TOKEN_REVOKED the sessions of user whose
 * token was issued before not_before (or has no iat), or, with user NULL, every session whose
 * token's jti hash is jti_id. Returns how many. */
size_t gw_session_close_revoked(gw_server *srv, const char *user, int64_t not_before, uint64_t jti_id);

#endif
