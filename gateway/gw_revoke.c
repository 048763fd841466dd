/* Token revocations on the gateway (gw_revoke.h). The watcher thread only reads NATS and pushes
 * changes onto the bus; the copy (entries, loaded) is the lws thread's alone. */
#include "gw_revoke.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "chat_log.h"
#include "chat_mem.h"
#include "chat_revoke.h"
#include "chat_revoke_watch.h"
#include "chat_time.h"
#include "gw_bus.h"
#include "gw_session.h"

struct gw_revoke {
    gw_server *srv;
    chat_revoke_watch *watch;    /* its thread calls push_change */
    /* lws thread only */
    chat_revoke_set *entries;
    atomic_int_fast64_t *m_entries;
    atomic_uint_fast64_t *m_closed;
};

/* A change, from the watcher thread to the lws thread: one allocation, which the bus frees if the
 * gateway stops before it ran. */
typedef struct change {
    chat_revoke_change op;
    uint32_t watch;
    int64_t value;
    char key[CHAT_REVOKE_KEY_MAX];
} change;

/* ------------------------------------------------------------------------------------------ */
/* lws thread                                                                                   */
/* ------------------------------------------------------------------------------------------ */

gw_revoke_verdict gw_revoke_check(const gw_revoke *rv, const chat_jwt_claims *claims)
{
    if (!chat_revoke_set_is_loaded(rv->entries))
        return GW_REVOKE_LOADING;
    return chat_revoke_set_refuses(rv->entries, claims) ? GW_REVOKE_REFUSED : GW_REVOKE_PASS;
}

bool gw_revoke_loaded(const gw_revoke *rv)
{
    return chat_revoke_set_is_loaded(rv->entries);
}

static void count_entries(gw_revoke *rv)
{
    atomic_store(rv->m_entries, (int_fast64_t)chat_revoke_set_size(rv->entries));
}

void gw_revoke_trim(gw_revoke *rv)
{
    size_t n = chat_revoke_set_trim(rv->entries, chat_now_ms() / 1000, chat_jwt_policy_max_ttl(rv->srv->cfg->jwt));
    count_entries(rv);
    if (n)
        LOG_DEBUG("revoke", "event=revocations_expired dropped=%zu held=%zu", n, chat_revoke_set_size(rv->entries));
}

/* A key now revoked: keep it, and close the live sessions it refuses. */
static void revoke_put(gw_server *srv, gw_revoke *rv, const change *c)
{
    char user[CHAT_ID_MAX + 1];
    chat_revoke_kind kind = chat_revoke_set_put(rv->entries, c->key, c->value, c->watch, user);
    if (kind == 0) {
        LOG_WARN("revoke", "event=revocation_ignored reason=\"not a u. or j. key\"");
        return;
    }
    count_entries(rv);
    size_t closed = kind == CHAT_REVOKE_USER
                        ? gw_session_close_revoked(srv, user, c->value, 0)
                        : gw_session_close_revoked(srv, NULL, 0, chat_revoke_key_jti_id(c->key));
    atomic_fetch_add(rv->m_closed, closed);
    if (closed)
        LOG_INFO("revoke", "event=sessions_revoked key=%s value=%lld closed=%zu", c->key, (long long)c->value, closed);
}

/* The watch has delivered the whole bucket (chat_revoke_set_loaded). */
static void revoke_loaded(gw_revoke *rv, uint32_t watch)
{
    bool was_loaded = chat_revoke_set_is_loaded(rv->entries);
    size_t gone = chat_revoke_set_loaded(rv->entries, watch);
    count_entries(rv);
    size_t held = chat_revoke_set_size(rv->entries);
    if (!was_loaded)
        LOG_INFO("revoke", "event=revocations_loaded held=%zu", held);
    else
        LOG_INFO("revoke", "event=revocations_reloaded held=%zu dropped=%zu", held, gone);
}

/* Runs on the lws thread (gw_bus_call); frees the change. */
static void apply_change(gw_server *srv, void *data)
{
    change *c = data;
    gw_revoke *rv = srv->revoke;
    if (c->op == CHAT_REVOKE_PUT) {
        revoke_put(srv, rv, c);
    } else if (c->op == CHAT_REVOKE_DELETE) {
        chat_revoke_set_delete(rv->entries, c->key);
        count_entries(rv);
    } else {
        revoke_loaded(rv, c->watch);
    }
    free(c);
}

/* ------------------------------------------------------------------------------------------ */
/* watcher thread (chat_revoke_watch_fn)                                                        */
/* ------------------------------------------------------------------------------------------ */

static void push_change(chat_revoke_change op, uint32_t watch, const char *key, int64_t value, void *ctx)
{
    gw_revoke *rv = ctx;
    change *c = chat_xcalloc(1, sizeof *c);
    c->op = op;
    c->watch = watch;
    c->value = value;
    if (key)
        snprintf(c->key, sizeof c->key, "%s", key);
    gw_bus_call(rv->srv, apply_change, c);
}

/* ------------------------------------------------------------------------------------------ */
/* start and stop (main thread)                                                                 */
/* ------------------------------------------------------------------------------------------ */

chat_status gw_revoke_start(gw_server *srv, gw_revoke **out)
{
    gw_revoke *rv = chat_xcalloc(1, sizeof *rv);
    rv->srv = srv;
    rv->entries = chat_revoke_set_create();
    rv->m_entries = chat_metrics_gauge(srv->metrics, "chat_gateway_revocations", NULL,
                                       "Revocations (users and tokens) this gateway holds.");
    rv->m_closed = chat_metrics_counter(srv->metrics, "chat_gateway_revoked_sessions_total", NULL,
                                        "Sessions closed because their token was revoked (4001).");
    char prefix[64];
    snprintf(prefix, sizeof prefix, "_INBOX.gw.%s.rv", srv->gateway_id);
    chat_status st = chat_revoke_watch_start(srv->cfg, "gateway-revoke", prefix, chat_jwt_policy_max_ttl(srv->cfg->jwt),
                                             push_change, rv, &rv->watch);
    if (st != CHAT_OK) {
        gw_revoke_destroy(rv);
        return st;
    }
    *out = rv;
    return CHAT_OK;
}

void gw_revoke_destroy(gw_revoke *rv)
{
    if (rv == NULL)
        return;
    chat_revoke_watch_destroy(rv->watch);
    chat_revoke_set_destroy(rv->entries);
    free(rv);
}
