/* Stream set-up. Main thread at start, or a role thread; idempotent. */
#include "wk_streams.h"

#include <stdbool.h>

#include "chat_log.h"
#include "chat_nats.h"
#include "chat_revoke.h"

static chat_status ensure(jsCtx *js, jsStreamConfig *sc, bool update)
{
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    natsStatus s = js_AddStream(&si, js, sc, NULL, &jerr);
    if (s != NATS_OK && jerr == JSStreamNameExistErr && !update) {
        s = NATS_OK; /* exists; its configuration is the ingest role's business */
    } else if (s != NATS_OK && jerr == JSStreamNameExistErr) {
        jerr = 0;
        s = js_UpdateStream(&si, js, sc, NULL, &jerr);
    }
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK) {
        LOG_ERROR("streams", "event=stream_setup_failed stream=%s status=\"%s\" jerr=%d detail=\"%s\"", sc->Name,
                  natsStatus_GetText(s), (int)jerr, nats_GetLastError(NULL));
        return s == NATS_TIMEOUT || s == NATS_NO_RESPONDERS ? CHAT_ERR_UNAVAILABLE : CHAT_ERR_INTERNAL;
    }
    return CHAT_OK;
}

/* What the chat streams share: on disk, with the platform's duplicate window. */
static void chat_stream(jsStreamConfig *sc, const char *name, const char **subjects, int n, jsRetentionPolicy r,
                        int replicas)
{
    jsStreamConfig_Init(sc);
    sc->Name = name;
    sc->Subjects = subjects;
    sc->SubjectsLen = n;
    sc->Storage = js_FileStorage;
    sc->Retention = r;
    sc->Duplicates = WK_DUPLICATE_WINDOW_NS;
    sc->Replicas = replicas;
}

chat_status wk_streams_ensure(jsCtx *js, int replicas, bool update)
{
    jsStreamConfig in;
    /* users' posts (from gateways) and backends' (trusted: any sender), one partition order */
    const char *in_subjects[] = {"chat.in.*.*", "chat.in.*.*.backend"};
    chat_stream(&in, CHAT_STREAM_IN, in_subjects, 2, js_WorkQueuePolicy, replicas);
    chat_status st = ensure(js, &in, update);
    if (st != CHAT_OK)
        return st;

    jsStreamConfig ev;
    const char *ev_subjects[] = {"chat.evt.>"};
    chat_stream(&ev, CHAT_STREAM_EVENTS, ev_subjects, 1, js_LimitsPolicy, replicas);
    ev.MaxAge = 7LL * 24 * 3600 * 1000000000LL;
    /* CHAT_NOTIFY, the notify requests of older releases, is no longer created; a stream left
     * from one is not touched here (an operator removes it once drained, docs/notifications.md) */
    st = ensure(js, &ev, update);
    if (st != CHAT_OK)
        return st;

    /* bulk imports (chatctl import; docs/nats.md): a lane of the ingest of their own, drained after
     * the live posts and at most CHAT_INGEST_BULK_RATE a second, so an import may wait here for a
     * long time: kept a week, and a full stream refuses new imports (the importer's PubAck says so
     * and it sends again later) instead of dropping what it holds */
    jsStreamConfig bulk;
    const char *bulk_subjects[] = {"chat.bulk.*.*"};
    chat_stream(&bulk, CHAT_STREAM_BULK, bulk_subjects, 1, js_WorkQueuePolicy, replicas);
    bulk.MaxAge = 7LL * 24 * 3600 * 1000000000LL;
    bulk.MaxBytes = WK_BULK_MAX_BYTES;
    bulk.Discard = js_DiscardNew;
    st = ensure(js, &bulk, update);
    /* a running role goes on without it (a broker whose permissions predate CHAT_BULK, while an
     * upgrade is under way): the ingest then runs its partitions without the bulk lane */
    return update ? st : CHAT_OK;
}

chat_status wk_streams_ensure_revoked(jsCtx *js, int replicas, int64_t max_ttl_s, bool update)
{
    /* what nats.c's js_CreateKeyValue makes (so `nats kv` and kvStore_* see a bucket), built here
     * because js_CreateKeyValue updates an existing bucket, which the running worker may not */
    jsStreamConfig kv;
    jsStreamConfig_Init(&kv);
    const char *subjects[] = {CHAT_REVOKE_SUBJECTS};
    kv.Name = CHAT_REVOKE_STREAM;
    kv.Subjects = subjects;
    kv.SubjectsLen = 1;
    kv.Storage = js_FileStorage;
    kv.Retention = js_LimitsPolicy;
    kv.MaxMsgsPerSubject = 1; /* the bucket's history: the latest value of a key */
    kv.MaxAge = chat_revoke_keep_s(max_ttl_s) * 1000000000LL;
    kv.Discard = js_DiscardNew;
    kv.AllowRollup = true;
    kv.DenyDelete = true;
    kv.AllowDirect = true;
    kv.Replicas = replicas;
    return ensure(js, &kv, update);
}
