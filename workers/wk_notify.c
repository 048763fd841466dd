/* Role `notify` (wk_notify.h), split by job behind wk_notifyp.h; here start and stop, and the
 * monitor (consumer set-up, pending, members behind). Threads: WK_NOTIFY_THREADS pullers, each
 * owning its PGconn, inbox subscription and CURL handle (and the messages of its batch); one
 * monitor thread owning its PGconn and jsCtx. The wk_notify struct is read-only after start
 * apart from its atomics. */
#include "wk_notify.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>

#include "chat_egress_curl.h"
#include "chat_log.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "wk_notifyp.h"
#include "wk_pg.h"
#include "wk_streams.h"

#define PENDING_POLL_MS 5000
#define BEHIND_POLL_MS 10000

static const char *SQL_BEHIND = "SELECT count(*) FROM conversation_members m"
                                " JOIN conversations c ON c.id = m.conversation_id AND c.deleted_at IS NULL"
                                " WHERE m.delivered_seq < c.last_seq AND EXISTS (SELECT 1 FROM messages x"
                                " WHERE x.conversation_id = m.conversation_id AND x.seq = m.delivered_seq + 1"
                                " AND x.created_at < now() - $1::interval)";

/* ------------------------------------------------------------------------------------------ */
/* The monitor: consumer set-up, pending, members behind                                        */
/* ------------------------------------------------------------------------------------------ */

/* Creates the shared consumer, or brings an existing one to this configuration (an update keeps
 * its position). DeliverPolicy new only matters the first time: CHAT_EVENTS is not a work queue
 * but 7 days of history, and a new notifier starts with what is posted from now on. The policy
 * cannot be changed by an update, so every release must create it with the same one. */
static bool setup_consumer(jsCtx *js, int replicas)
{
    if (wk_streams_ensure(js, replicas, false) != CHAT_OK)
        return false;
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = WK_NOTIFY_CONSUMER;
    cc.FilterSubject = WK_NOTIFY_FILTER;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = (int64_t)WK_NOTIFY_ACK_WAIT_MS * 1000000LL;
    cc.MaxDeliver = WK_NOTIFY_MAX_DELIVER;
    cc.MaxAckPending = WK_NOTIFY_MAX_ACK_PENDING;
    cc.DeliverPolicy = js_DeliverNew;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_AddConsumer(&ci, js, CHAT_STREAM_EVENTS, &cc, NULL, &jerr);
    if (s != NATS_OK && jerr != 0) { /* exists with another configuration (an older release) */
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        jerr = 0;
        s = js_UpdateConsumer(&ci, js, CHAT_STREAM_EVENTS, &cc, NULL, &jerr);
    }
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        LOG_WARN("notify", "event=consumer_setup_failed status=\"%s\" jerr=%d", natsStatus_GetText(s), (int)jerr);
        return false;
    }
    LOG_INFO("notify", "event=consumer_ready stream=%s consumer=%s", CHAT_STREAM_EVENTS, WK_NOTIFY_CONSUMER);
    return true;
}

static void poll_pending(wk_notify *w, jsCtx *js)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js, CHAT_STREAM_EVENTS, WK_NOTIFY_CONSUMER, NULL, &jerr);
    if (s == NATS_OK && ci) {
        atomic_store(w->m_pending, (int_fast64_t)ci->NumPending + ci->NumAckPending);
    } else if (jerr == JSConsumerNotFoundErr || jerr == JSStreamNotFoundErr) {
        LOG_WARN("notify", "event=consumer_missing jerr=%d", (int)jerr);
        /* set up again; a consumer created anew starts at the stream's end: what was posted while
         * it was missing gets no push */
        atomic_store(&w->consumer_ready, false);
    }
    jsConsumerInfo_Destroy(ci);
}

static void poll_behind(wk_notify *w, PGconn **pg)
{
    if (*pg == NULL || PQstatus(*pg) != CONNECTION_OK) {
        PQfinish(*pg);
        *pg = NULL;
        if (wk_pg_connect(w->app->cfg->pg_dsn, "chat-notify-monitor", pg) != CHAT_OK) {
            *pg = NULL;
            return;
        }
        wk_pg_exec(*pg, "SET statement_timeout = '5s'", PGRES_COMMAND_OK, "notify_timeout");
    }
    char grace[48];
    snprintf(grace, sizeof grace, "%lld milliseconds", (long long)w->app->cfg->push_grace_ms);
    const char *params[] = {grace};
    PGresult *r = PQexecParams(*pg, SQL_BEHIND, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        atomic_store(w->m_behind, (int_fast64_t)strtoll(PQgetvalue(r, 0, 0), NULL, 10));
    } else {
        char err[512];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
        chat_log_clean(err);
        LOG_WARN("notify", "event=members_behind_failed detail=\"%s\"", err);
    }
    PQclear(r);
}

static void *monitor_thread(void *arg)
{
    wk_notify *w = arg;
    jsCtx *js = NULL;
    PGconn *pg = NULL;
    int64_t next_setup = 0, next_pending = 0, next_behind = 0;
    while (!atomic_load(&w->app->stopping)) {
        int64_t now = chat_mono_ms();
        bool connected = chat_nats_connected(w->app->nc);
        if (js == NULL && connected) {
            jsOptions jo;
            jsOptions_Init(&jo);
            jo.Wait = 5000;
            if (natsConnection_JetStream(&js, w->app->nc, &jo) != NATS_OK)
                js = NULL;
        }
        if (js && connected && !atomic_load(&w->consumer_ready) && now >= next_setup) {
            if (setup_consumer(js, w->app->cfg->js_replicas)) {
                atomic_store(&w->consumer_ready, true);
                next_pending = now;
            } else {
                next_setup = now + 1000;
            }
        }
        if (js && connected && atomic_load(&w->consumer_ready) && now >= next_pending) {
            poll_pending(w, js);
            next_pending = now + PENDING_POLL_MS;
        }
        if (now >= next_behind) {
            poll_behind(w, &pg);
            next_behind = now + BEHIND_POLL_MS;
        }
        chat_sleep_ms(100);
    }
    jsCtx_Destroy(js);
    PQfinish(pg);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Start and stop                                                                               */
/* ------------------------------------------------------------------------------------------ */

chat_status wk_notify_start(wk_app *app, wk_notify **out)
{
    wk_notify *w = calloc(1, sizeof *w);
    if (w == NULL)
        return CHAT_ERR_NOMEM;
    w->app = app;
    unsigned char r[4];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        memset(r, 0, sizeof r);
    snprintf(w->worker_id, sizeof w->worker_id, "%d-%02x%02x%02x%02x", (int)getpid(), r[0], r[1], r[2], r[3]);
    snprintf(w->next_subject, sizeof w->next_subject, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", CHAT_STREAM_EVENTS,
             WK_NOTIFY_CONSUMER);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(w);
        LOG_ERROR("notify", "event=start_failed reason=curl_global_init");
        return CHAT_ERR_INTERNAL;
    }
    w->curl_global = true;
    char why[160];
    if (chat_egress_create(app->cfg->egress_allow, &w->egress, why, sizeof why) != CHAT_OK) {
        LOG_ERROR("notify", "event=start_failed setting=CHAT_EGRESS_ALLOW reason=\"%s\"", why);
        wk_notify_destroy(w);
        return CHAT_ERR_INVALID;
    }
    chat_metrics *m = app->metrics;
    w->m_pushes = chat_metrics_counter(m, "chat_notify_pushes_total", NULL, "Pushes the webhook answered with a 2xx.");
    w->m_failures = chat_metrics_counter(m, "chat_notify_push_failures_total", NULL,
                                         "Pushes that failed (no answer in time, or not a 2xx); retried.");
    w->m_given_up = chat_metrics_counter(m, "chat_notify_given_up_total", NULL,
                                         "Messages whose push was given up after the last delivery failed.");
    static const char *help_req = "Events of CHAT_EVENTS the notify role acked, by result.";
    w->m_done = chat_metrics_counter(m, "chat_notify_requests_total", "result=\"done\"", help_req);
    w->m_no_webhook = chat_metrics_counter(m, "chat_notify_requests_total", "result=\"no_webhook\"", help_req);
    w->m_invalid = chat_metrics_counter(m, "chat_notify_requests_total", "result=\"invalid\"", help_req);
    w->m_skipped = chat_metrics_counter(m, "chat_notify_requests_total", "result=\"skipped\"", help_req);
    w->m_pending = chat_metrics_gauge(m, "chat_notify_pending", NULL,
                                      "Events in the notify consumer of CHAT_EVENTS: not yet delivered plus "
                                      "awaiting ack (inside the grace, or being retried).");
    w->m_behind = chat_metrics_gauge(m, "chat_notify_members_behind", NULL,
                                     "Members whose seen cursor is behind a message older than CHAT_PUSH_GRACE.");
    w->h_webhook = chat_metrics_histogram(m, "chat_notify_webhook_seconds", NULL, "Duration of webhook POSTs.");
    *out = w;
    if (pthread_create(&w->monitor, NULL, monitor_thread, w) != 0) {
        wk_notify_destroy(w);
        *out = NULL;
        return CHAT_ERR_INTERNAL;
    }
    w->monitor_started = true;
    for (int i = 0; i < WK_NOTIFY_THREADS; i++) {
        ntf_puller *p = &w->pullers[i];
        p->n = w;
        p->index = i;
        if (pthread_create(&p->thread, NULL, ntf_puller_thread, p) != 0) {
            atomic_store(&app->stopping, true);
            wk_notify_destroy(w);
            *out = NULL;
            return CHAT_ERR_INTERNAL;
        }
        p->started = true;
    }
    LOG_INFO("notify",
             "event=role_started worker=%s threads=%d webhook=%s grace_ms=%lld preview=%d egress_allow=\"%s\"",
             w->worker_id, WK_NOTIFY_THREADS, app->cfg->push_webhook_url[0] ? "set" : "none",
             (long long)app->cfg->push_grace_ms, app->cfg->push_preview ? 1 : 0, app->cfg->egress_allow);
    return CHAT_OK;
}

void wk_notify_destroy(wk_notify *w)
{
    if (w == NULL)
        return;
    for (int i = 0; i < WK_NOTIFY_THREADS; i++)
        if (w->pullers[i].started)
            pthread_join(w->pullers[i].thread, NULL);
    if (w->monitor_started)
        pthread_join(w->monitor, NULL);
    if (w->curl_global)
        curl_global_cleanup();
    chat_egress_destroy(w->egress);
    free(w);
}
