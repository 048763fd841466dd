/* The revocations watcher (chat_revoke_watch.h). Its thread alone reads NATS and calls fn; the
 * creating thread only sets `stopping` and closes the connection to end it. */
#include "chat_revoke_watch.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_revoke.h"

#define RETRY_MS 1000     /* between attempts to open the bucket (NATS down, bucket missing) */
#define NEXT_WAIT_MS 1000 /* the watcher's wait for a change, between looks at the stop flag */

struct chat_revoke_watch {
    natsConnection *nc; /* the watcher's own: its inboxes live under the caller's prefix */
    int64_t max_ttl_s;
    chat_revoke_watch_fn fn;
    void *ctx;
    pthread_t thread;
    bool thread_started;
    atomic_bool stopping;
    uint32_t watches; /* watcher thread: watches opened so far */
};

/* One entry of the watch to fn; entries that are not revocations are skipped. */
static void deliver_entry(chat_revoke_watch *w, uint32_t watch, kvEntry *e)
{
    const char *key = kvEntry_Key(e);
    kvOperation op = kvEntry_Operation(e);
    int64_t value = 0;
    if (key == NULL || strlen(key) >= CHAT_REVOKE_KEY_MAX)
        return;
    if (op == kvOp_Delete || op == kvOp_Purge) {
        w->fn(CHAT_REVOKE_DELETE, watch, key, 0, w->ctx);
    } else if (chat_revoke_value_parse(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e), &value)) {
        w->fn(CHAT_REVOKE_PUT, watch, key, value, w->ctx);
    } else {
        LOG_WARN("revoke", "event=revocation_ignored key=%s reason=\"value is not unix seconds\"", key);
    }
}

/* Warns when the bucket forgets revocations before the tokens they refuse expire (a bucket made
 * by a set-up step that saw a shorter CHAT_JWT_MAX_TTL than this process). */
static void check_keep(const chat_revoke_watch *w, kvStore *kv)
{
    kvStatus *sts = NULL;
    if (kvStore_Status(&sts, kv) != NATS_OK)
        return;
    int64_t keep_s = kvStatus_TTL(sts) / 1000000000LL;
    int64_t need_s = chat_revoke_keep_s(w->max_ttl_s);
    if (keep_s > 0 && keep_s < need_s)
        LOG_WARN("revoke", "event=revocations_kept_too_short keep_s=%lld need_s=%lld hint=\"run chat-worker streams "
                 "with this CHAT_JWT_MAX_TTL\"", (long long)keep_s, (long long)need_s);
    kvStatus_Destroy(sts);
}

/* Opens the bucket and its watcher (*kv, *kw set on NATS_OK). *missing_logged: the bucket's
 * absence was logged already (once, not every second). */
static natsStatus open_watch(chat_revoke_watch *w, jsCtx **js, kvStore **kv, kvWatcher **kw, bool *missing_logged)
{
    natsStatus s = natsConnection_JetStream(js, w->nc, NULL);
    if (s == NATS_OK)
        s = js_KeyValue(kv, *js, CHAT_REVOKE_BUCKET);
    if (s == NATS_NOT_FOUND && !*missing_logged) {
        LOG_WARN("revoke", "event=revocations_missing bucket=" CHAT_REVOKE_BUCKET " hint=\"run chat-worker streams; "
                 "upgrades are refused (503) until the bucket exists\"");
        *missing_logged = true;
    }
    if (s == NATS_OK) {
        check_keep(w, *kv);
        s = kvStore_WatchAll(kw, *kv, NULL);
    }
    return s;
}

/* Watches the bucket until the watch fails or the watcher stops. */
static void watch_once(chat_revoke_watch *w, bool *missing_logged)
{
    jsCtx *js = NULL;
    kvStore *kv = NULL;
    kvWatcher *kw = NULL;
    natsStatus s = open_watch(w, &js, &kv, &kw, missing_logged);
    uint32_t watch = ++w->watches;
    while (s == NATS_OK && !atomic_load(&w->stopping)) {
        kvEntry *e = NULL;
        s = kvWatcher_Next(&e, kw, NEXT_WAIT_MS);
        if (s == NATS_TIMEOUT) {
            s = NATS_OK; /* nothing changed; nats.c re-creates the consumer after a reconnect */
        } else if (s == NATS_OK && e == NULL) {
            w->fn(CHAT_REVOKE_LOADED, watch, NULL, 0, w->ctx); /* the bucket as it was is all here */
        } else if (s == NATS_OK) {
            deliver_entry(w, watch, e);
            kvEntry_Destroy(e);
        }
    }
    if (s != NATS_OK && !atomic_load(&w->stopping) && s != NATS_NOT_FOUND)
        LOG_DEBUG("revoke", "event=watch_failed status=\"%s\" detail=\"%s\"", natsStatus_GetText(s),
                  nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
    kvWatcher_Destroy(kw);
    kvStore_Destroy(kv);
    jsCtx_Destroy(js);
}

static void *watch_thread(void *arg)
{
    chat_revoke_watch *w = arg;
    bool missing_logged = false;
    while (!atomic_load(&w->stopping)) {
        watch_once(w, &missing_logged);
        for (int waited = 0; waited < RETRY_MS && !atomic_load(&w->stopping); waited += 100)
            nats_Sleep(100);
    }
    nats_ReleaseThreadMemory();
    return NULL;
}

chat_status chat_revoke_watch_start(const chat_cfg *cfg, const char *name, const char *inbox_prefix,
                                    int64_t max_ttl_s, chat_revoke_watch_fn fn, void *ctx, chat_revoke_watch **out)
{
    chat_revoke_watch *w = chat_xcalloc(1, sizeof *w);
    w->max_ttl_s = max_ttl_s;
    w->fn = fn;
    w->ctx = ctx;
    chat_status st = chat_nats_connect_inbox(cfg, name, inbox_prefix, &w->nc);
    if (st == CHAT_OK && pthread_create(&w->thread, NULL, watch_thread, w) != 0)
        st = CHAT_ERR_INTERNAL;
    w->thread_started = st == CHAT_OK;
    if (st != CHAT_OK) {
        chat_revoke_watch_destroy(w);
        return st;
    }
    *out = w;
    return CHAT_OK;
}

void chat_revoke_watch_destroy(chat_revoke_watch *w)
{
    if (w == NULL)
        return;
    atomic_store(&w->stopping, true);
    if (w->nc)
        natsConnection_Close(w->nc); /* wakes the watcher from its wait */
    if (w->thread_started)
        pthread_join(w->thread, NULL);
    natsConnection_Destroy(w->nc);
    free(w);
}
