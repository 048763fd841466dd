/* The gateway: one libwebsockets context whose service thread (the main thread) owns every
 * socket and all the state below marked "lws thread". nats.c threads only push onto the bus
 * queue (gw_bus.h) and call lws_cancel_service(). HTTP: /healthz, /readyz, /metrics,
 * /dev/token (CHAT_DEV_MODE=1); WebSocket clients on /ws (docs/protocol.md). */
#ifndef GW_SERVER_H
#define GW_SERVER_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <libwebsockets.h>
#include <nats/nats.h>

#include "chat_config.h"
#include "chat_health.h"
#include "chat_map.h"
#include "chat_metrics.h"
#include "chat_status.h"

struct ev_loop;
typedef struct gw_bus gw_bus;
typedef struct gw_presence gw_presence;
typedef struct gw_revoke gw_revoke;
typedef struct gw_membership gw_membership;
typedef struct gw_admit gw_admit;
typedef struct gw_send_checks gw_send_checks;
typedef struct gw_cursors gw_cursors;
typedef struct gw_watches gw_watches;
typedef struct gw_peers gw_peers;
typedef struct gw_strikes gw_strikes;
struct gw_session_handlers;

typedef struct gw_metrics {
    atomic_int_fast64_t *connections, *users;
    atomic_uint_fast64_t *connects, *refused_auth, *refused_origin;
    atomic_uint_fast64_t *disc_client, *disc_slow, *disc_too_large, *disc_shutdown, *disc_expired;
    atomic_uint_fast64_t *fail_bad_request, *fail_not_member, *fail_too_large, *fail_unavailable, *fail_rate_limited;
    atomic_uint_fast64_t *refused_limit, *refused_stopping, *refused_loading;
    atomic_uint_fast64_t *frames_in, *frames_out, *acks;
    atomic_uint_fast64_t *routed_batches; /* DeliveryBatches on chat.deliver.g.<gateway id> */
    chat_histogram *delivery, *puback;
} gw_metrics;

typedef struct gw_server {
    const chat_cfg *cfg;
    natsConnection *nc;
    chat_metrics *metrics;
    chat_health *health;
    struct lws_context *context;
    struct ev_loop *loop; /* libev (epoll) loop lws runs on; main thread only */
    /* guards context against gw_server_stop on the signal thread while the main thread creates
     * or destroys it (the main thread's other uses need no lock: only it writes the pointer) */
    pthread_mutex_t context_lock;
    atomic_bool stopping;  /* SIGTERM: refuse new upgrades, /readyz 503, then close all with 1001 */
    char gateway_id[CHAT_GATEWAY_ID_MAX + 1];
    char web_dir[4096];   /* static files served at / ("" = none) */
    gw_bus *bus;
    gw_admit *admit;      /* sends in flight, admission control (gw_admit.h); lws thread */
    gw_metrics m;
    /* lws thread only */
    /* Open sessions by slot, the low 32 bits of a session id (the high 32 bits count sessions, so
     * an id is never used twice): a lookup without hashing, 12 bytes per connection held. */
    struct gw_session **slots;
    uint32_t nslots, nfree, *free_slots;
    size_t nsessions;
    /* user id -> gw_user *: shared, so it stays here. gw_session.c adds and removes the entries;
     * gw_delivery.c reads a user's sessions to hand out a delivery, gw_server.c the user's count at
     * the upgrade (CHAT_WS_MAX_PER_USER) and every user for the presence heartbeat. */
    chat_map *users;
    uint32_t route_gens;       /* route writes asked for (gw_user.route_gen) */
    /* Each of these is one module's own state, created and destroyed here (the wiring) and read
     * only by its module: */
    gw_membership *membership; /* the membership cache, at most CHAT_WS_MEMBERSHIP_CACHE (gw_membership.h) */
    gw_send_checks *checking;  /* sends waiting for a member check, in order (gw_send.h) */
    gw_cursors *cursors;       /* seen/read cursors waiting for the next batch (gw_cursor.h) */
    gw_watches *watches;       /* the sessions watching each user's presence (gw_watch.h) */
    gw_peers *peers;           /* open connections per client address (gw_peer.h) */
    gw_strikes *strikes;       /* refused upgrades per client address (gw_strikes.h) */
    gw_presence *presence;
    gw_revoke *revoke;    /* the copy of the revocations bucket (gw_revoke.h) */
    const struct gw_session_handlers *session_on; /* what the connections hand up (gw_session.h) */
    int ticks;
    uint64_t next_session;
    lws_sorted_usec_list_t tick_sul;
} gw_server;

/* Creates the lws context listening on cfg->gateway_listen and the bus. Main thread. */
chat_status gw_server_create(gw_server *srv);
/* Runs the service loop until gw_server_stop; main thread. */
void gw_server_run(gw_server *srv);
/* Asks the loop to end; any thread. */
void gw_server_stop(gw_server *srv);
/* Wakes the loop (lws_cancel_service) from any thread; nothing once the context is destroyed
 * (a nats.c callback may still run while the gateway shuts down). */
void gw_server_wake(gw_server *srv);
/* Frees the context and the bus; main thread, after gw_server_run returned. NULL-safe. */
void gw_server_destroy(gw_server *srv);

#endif
