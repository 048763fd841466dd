/* The gateway's libwebsockets server: one context, one service thread (the main thread) that
 * owns every socket. HTTP paths: /healthz, /readyz, /metrics (and /ws for clients). */
#ifndef GW_SERVER_H
#define GW_SERVER_H
#include <stdatomic.h>
#include <stdbool.h>

#include <libwebsockets.h>
#include <nats/nats.h>

#include "chat_config.h"
#include "chat_health.h"
#include "chat_metrics.h"
#include "chat_status.h"

typedef struct gw_server {
    const chat_cfg *cfg;
    natsConnection *nc;
    chat_metrics *metrics;
    chat_health *health;
    struct lws_context *context;
    atomic_bool stopping;
} gw_server;

/* Creates the lws context listening on cfg->gateway_listen. Main thread. */
chat_status gw_server_create(gw_server *srv);
/* Runs the service loop until gw_server_stop; main thread. */
void gw_server_run(gw_server *srv);
/* Asks the loop to end; any thread. */
void gw_server_stop(gw_server *srv);
/* Frees the context; main thread, after gw_server_run returned. NULL-safe. */
void gw_server_destroy(gw_server *srv);

#endif
