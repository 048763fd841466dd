/* What every worker role shares: settings, NATS connection, metrics, the stop flag.
 * Created on the main thread before any role starts; read-only afterwards except `stopping`. */
#ifndef WK_APP_H
#define WK_APP_H
#include <stdatomic.h>
#include <stdbool.h>

#include <nats/nats.h>

#include "chat_config.h"
#include "chat_metrics.h"

typedef struct wk_app {
    const chat_cfg *cfg;
    natsConnection *nc;
    chat_metrics *metrics;
    atomic_bool stopping;
} wk_app;

#endif
