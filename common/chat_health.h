/* Dependency health for /readyz: NATS from the connection's own status, PostgreSQL and Redis
 * probed once a second by a thread of its own (so a request never waits on a dead server). */
#ifndef CHAT_HEALTH_H
#define CHAT_HEALTH_H
#include <stdbool.h>
#include <stddef.h>

#include <nats/nats.h>

#include "chat_config.h"
#include "chat_status.h"

enum {
    CHAT_DEP_NATS = 1 << 0,
    CHAT_DEP_PG = 1 << 1,
    CHAT_DEP_REDIS = 1 << 2,
};

typedef struct chat_health chat_health;

/* Watches the dependencies in `deps`; nc may be NULL when NATS is not among them. cfg and nc
 * must outlive the monitor. */
chat_status chat_health_start(const chat_cfg *cfg, unsigned deps, natsConnection *nc, chat_health **out);
/* A chat_ready_fn: true when every watched dependency answers; detail gets a line for each,
 * "postgres ok" or "postgres down" (no error text: that is logged, not served). */
bool chat_health_ready(void *health, char *detail, size_t size);
/* Whether one dependency answered at the last probe. */
bool chat_health_dep_ok(chat_health *h, unsigned dep);
void chat_health_destroy(chat_health *h);

#endif
