/* Token revocations on the gateway (gw_revoke.h). The watcher thread only reads NATS and pushes
 * changes onto the bus; the copy (entries, loaded) is the lws thread's alone. */
#include "gw_revoke.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_map.h"
#include "chat_nats.h"
#include "chat_revoke.h"
#include "chat_time.h"
#include "gw_bus.h"
#include "gw_session.h"

#define RETRY_MS 1000     /* between attempts to open the bucket (NATS down, bucket missing) */
#define NEXT_WAIT_MS 1000 /* the watcher's wait for a change, between looks at the stop flag */

/* One key of the bucket as the lws thread holds it. */
typedef struct revoked {
    chat_revoke_kind kind;
    int64_t value;     /* not before (u.), the token's exp (j.) */
    uint32_t watch;    /* the watch that last delivered it (a new watch drops what it did not) */
} revoked;

struct gw_revoke {
    gw_server *srv;
    natsConnection *nc;          /* the watcher's own: its inboxes live under the gateway's prefix */
    pthread_t thread;
    bool thread_started;
    atomic_bool stopping;
    uint32_t watches;            /* watcher thread: watches opened so far */
    /* lws thread only */
    chat_map *entries;           /* key -> revoked */
    bool loaded;
    atomic_int_fast64_t *m_entries;
    atomic_uint_fast64_t *m_closed;
};

/* A change, from the watcher thread to the lws thread: one allocation, which the bus frees if the
 * gateway stops before it ran. */
typedef enum { CHANGE_PUT, CHANGE_DELETE, CHANGE_LOADED } change_op;
typedef struct change {
    change_op op;
    uint32_t watch;
    int64_t value;
    char key[CHAT_REVOKE_KEY_MAX];
} change;

/* ------------------------------------------------------------------------------------------ */
/* lws thread                                                                                   */
/* ------------------------------------------------------------------------------------------ */

gw_revoke_verdict gw_revoke_check(const gw_revoke *rv, const chat_jwt_claims *claims)
{
    if (!rv->loaded)
        return GW_REVOKE_LOADING;
    char key[CHAT_REVOKE_KEY_MAX];
    const revoked *r;
    if (chat_revoke_key_user(key, claims->user) && (r = chat_map_get(rv->entries, key)) != NULL &&
        chat_revoke_user_refuses(r->value, claims->iat))
        return GW_REVOKE_REFUSED;
    if (claims->jti[0]) {
        chat_revoke_key_token(key, claims->jti);
        if (chat_map_get(rv->entries, key) != NULL)
            return GW_REVOKE_REFUSED;
    }
    return GW_REVOKE_PASS;
}

bool gw_revoke_loaded(const gw_revoke *rv)
{
    return rv->loaded;
}

/* Keys chosen by a rule, gathered first: the map must not change while it is walked. */
typedef struct key_list {
    char (*keys)[CHAT_REVOKE_KEY_MAX];
    size_t n, cap;
    bool (*drop)(const revoked *r, const void *arg);
    const void *arg;
} key_list;

static void gather(const char *key, void *value, void *ctx)
{
    key_list *l = ctx;
    if (!l->drop(value, l->arg))
        return;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 16;
        if ((l->keys = realloc(l->keys, l->cap * sizeof *l->keys)) == NULL)
            CHAT_OOM();
    }
    snprintf(l->keys[l->n++], CHAT_REVOKE_KEY_MAX, "%s", key);
}

static size_t drop_where(gw_revoke *rv, bool (*drop)(const revoked *, const void *), const void *arg)
{
    key_list l = {.drop = drop, .arg = arg};
    chat_map_each(rv->entries, gather, &l);
    for (size_t i = 0; i < l.n; i++)
        free(chat_map_remove(rv->entries, l.keys[i]));
    free(l.keys);
    atomic_store(rv->m_entries, (int_fast64_t)chat_map_size(rv->entries));
    return l.n;
}

static bool from_older_watch(const revoked *r, const void *arg)
{
    return r->watch != *(const uint32_t *)arg;
}

typedef struct trim_arg {
    int64_t now_s, max_ttl_s;
} trim_arg;

static bool expired(const revoked *r, const void *arg)
{
    const trim_arg *t = arg;
    return chat_revoke_entry_until(r->kind, r->value, t->max_ttl_s) < t->now_s;
}

void gw_revoke_trim(gw_revoke *rv)
{
    trim_arg t = {chat_now_ms() / 1000, chat_jwt_policy_max_ttl(rv->srv->cfg->jwt)};
    size_t n = drop_where(rv, expired, &t);
    if (n)
        LOG_DEBUG("revoke", "event=revocations_expired dropped=%zu held=%zu", n, chat_map_size(rv->entries));
}

/* A key now revoked: keep it, and close the live sessions it refuses. */
static void revoke_put(gw_server *srv, gw_revoke *rv, const change *c)
{
    char user[CHAT_ID_MAX + 1];
    chat_revoke_kind kind = chat_revoke_key_parse(c->key, user);
    if (kind == 0) {
        LOG_WARN("revoke", "event=revocation_ignored reason=\"not a u. or j. key\"");
        return;
    }
    revoked *r = chat_map_get(rv->entries, c->key);
    if (r == NULL) {
        if ((r = malloc(sizeof *r)) == NULL)
            CHAT_OOM();
        chat_map_put(rv->entries, c->key, r, NULL);
    }
    *r = (revoked){.kind = kind, .value = c->value, .watch = c->watch};
    atomic_store(rv->m_entries, (int_fast64_t)chat_map_size(rv->entries));
    size_t closed = kind == CHAT_REVOKE_USER
                        ? gw_session_close_revoked(srv, user, c->value, 0)
                        : gw_session_close_revoked(srv, NULL, 0, chat_revoke_key_jti_id(c->key));
    atomic_fetch_add(rv->m_closed, closed);
    if (closed)
        LOG_INFO("revoke", "event=sessions_revoked key=%s value=%lld closed=%zu", c->key, (long long)c->value, closed);
}

/* Runs on the lws thread (gw_bus_call); frees the change. */
static void apply_change(gw_server *srv, void *data)
{
    change *c = data;
    gw_revoke *rv = srv->revoke;
    if (c->op == CHANGE_PUT) {
        revoke_put(srv, rv, c);
    } else if (c->op == CHANGE_DELETE) {
        free(chat_map_remove(rv->entries, c->key));
        atomic_store(rv->m_entries, (int_fast64_t)chat_map_size(rv->entries));
    } else {
        /* the watch has delivered the whole bucket: what an older watch left and this one did not
         * deliver was deleted meanwhile */
        size_t gone = drop_where(rv, from_older_watch, &c->watch);
        if (!rv->loaded)
            LOG_INFO("revoke", "event=revocations_loaded held=%zu", chat_map_size(rv->entries));
        else
            LOG_INFO("revoke", "event=revocations_reloaded held=%zu dropped=%zu", chat_map_size(rv->entries), gone);
        rv->loaded = true;
    }
    free(c);
}

/* ------------------------------------------------------------------------------------------ */
/* watcher thread                                                                               */
/* ------------------------------------------------------------------------------------------ */

static void push_change(gw_revoke *rv, change_op op, uint32_t watch, const char *key, int64_t value)
{
    change *c = calloc(1, sizeof *c);
    if (c == NULL)
        CHAT_OOM();
    c->op = op;
    c->watch = watch;
    c->value = value;
    if (key)
        snprintf(c->key, sizeof c->key, "%s", key);
    gw_bus_call(rv->srv, apply_change, c);
}

/* One entry of the watch onto the bus; entries that are not revocations are skipped. */
static void push_entry(gw_revoke *rv, uint32_t watch, kvEntry *e)
{
    const char *key = kvEntry_Key(e);
    kvOperation op = kvEntry_Operation(e);
    int64_t value = 0;
    if (key == NULL || strlen(key) >= CHAT_REVOKE_KEY_MAX)
        return;
    if (op == kvOp_Delete || op == kvOp_Purge) {
        push_change(rv, CHANGE_DELETE, watch, key, 0);
    } else if (chat_revoke_value_parse(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e), &value)) {
        push_change(rv, CHANGE_PUT, watch, key, value);
    } else {
        LOG_WARN("revoke", "event=revocation_ignored key=%s reason=\"value is not unix seconds\"", key);
    }
}

/* Warns when the bucket forgets revocations before the tokens they refuse expire (a bucket made
 * by a set-up step that saw a shorter CHAT_JWT_MAX_TTL than this gateway). */
static void check_keep(gw_revoke *rv, kvStore *kv)
{
    kvStatus *sts = NULL;
    if (kvStore_Status(&sts, kv) != NATS_OK)
        return;
    int64_t keep_s = kvStatus_TTL(sts) / 1000000000LL;
    int64_t need_s = chat_revoke_keep_s(chat_jwt_policy_max_ttl(rv->srv->cfg->jwt));
    if (keep_s > 0 && keep_s < need_s)
        LOG_WARN("revoke", "event=revocations_kept_too_short keep_s=%lld need_s=%lld hint=\"run chat-worker streams "
                 "with this CHAT_JWT_MAX_TTL\"", (long long)keep_s, (long long)need_s);
    kvStatus_Destroy(sts);
}

/* Watches the bucket until the watch fails or the gateway stops. *missing_logged: the bucket's
 * absence was logged already (once, not every second). */
static void watch_once(gw_revoke *rv, bool *missing_logged)
{
    jsCtx *js = NULL;
    kvStore *kv = NULL;
    kvWatcher *w = NULL;
    natsStatus s = natsConnection_JetStream(&js, rv->nc, NULL);
    if (s == NATS_OK)
        s = js_KeyValue(&kv, js, CHAT_REVOKE_BUCKET);
    if (s == NATS_NOT_FOUND && !*missing_logged) {
        LOG_WARN("revoke", "event=revocations_missing bucket=" CHAT_REVOKE_BUCKET " hint=\"run chat-worker streams; "
                 "upgrades are refused (503) until the bucket exists\"");
        *missing_logged = true;
    }
    if (s == NATS_OK) {
        check_keep(rv, kv);
        s = kvStore_WatchAll(&w, kv, NULL);
    }
    uint32_t watch = ++rv->watches;
    while (s == NATS_OK && !atomic_load(&rv->stopping)) {
        kvEntry *e = NULL;
        s = kvWatcher_Next(&e, w, NEXT_WAIT_MS);
        if (s == NATS_TIMEOUT) {
            s = NATS_OK; /* nothing changed; nats.c re-creates the consumer after a reconnect */
        } else if (s == NATS_OK && e == NULL) {
            push_change(rv, CHANGE_LOADED, watch, NULL, 0); /* the bucket as it was is all here */
        } else if (s == NATS_OK) {
            push_entry(rv, watch, e);
            kvEntry_Destroy(e);
        }
    }
    if (s != NATS_OK && !atomic_load(&rv->stopping) && s != NATS_NOT_FOUND)
        LOG_DEBUG("revoke", "event=watch_failed status=\"%s\" detail=\"%s\"", natsStatus_GetText(s),
                  nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
    kvWatcher_Destroy(w);
    kvStore_Destroy(kv);
    jsCtx_Destroy(js);
}

static void *watch_thread(void *arg)
{
    gw_revoke *rv = arg;
    bool missing_logged = false;
    while (!atomic_load(&rv->stopping)) {
        watch_once(rv, &missing_logged);
        for (int waited = 0; waited < RETRY_MS && !atomic_load(&rv->stopping); waited += 100)
            nats_Sleep(100);
    }
    nats_ReleaseThreadMemory();
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* start and stop (main thread)                                                                 */
/* ------------------------------------------------------------------------------------------ */

chat_status gw_revoke_start(gw_server *srv, gw_revoke **out)
{
    gw_revoke *rv = calloc(1, sizeof *rv);
    if (rv == NULL)
        return CHAT_ERR_NOMEM;
    rv->srv = srv;
    rv->entries = chat_map_create();
    rv->m_entries = chat_metrics_gauge(srv->metrics, "chat_gateway_revocations", NULL,
                                       "Revocations (users and tokens) this gateway holds.");
    rv->m_closed = chat_metrics_counter(srv->metrics, "chat_gateway_revoked_sessions_total", NULL,
                                        "Sessions closed because their token was revoked (4001).");
    char prefix[64];
    snprintf(prefix, sizeof prefix, "_INBOX.gw.%s.rv", srv->gateway_id);
    chat_status st = chat_nats_connect_inbox(srv->cfg, "gateway-revoke", prefix, &rv->nc);
    if (st == CHAT_OK && pthread_create(&rv->thread, NULL, watch_thread, rv) != 0)
        st = CHAT_ERR_INTERNAL;
    rv->thread_started = st == CHAT_OK;
    if (st != CHAT_OK) {
        gw_revoke_destroy(rv);
        return st;
    }
    *out = rv;
    return CHAT_OK;
}

static void free_entry(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    free(value);
}

void gw_revoke_destroy(gw_revoke *rv)
{
    if (rv == NULL)
        return;
    atomic_store(&rv->stopping, true);
    if (rv->nc)
        natsConnection_Close(rv->nc); /* wakes the watcher from its wait */
    if (rv->thread_started)
        pthread_join(rv->thread, NULL);
    natsConnection_Destroy(rv->nc);
    chat_map_each(rv->entries, free_entry, NULL);
    chat_map_destroy(rv->entries);
    free(rv);
}
