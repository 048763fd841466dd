/* Role `api`. Threads: one nats.c delivery thread per lane runs that lane's requests; a lane's
 * PGconn, JetStream context and transaction state belong to that thread alone. The main thread
 * only starts and destroys. Replies are packed protobuf; every one starts with a Status.
 * Cursors are watermarks (one row per member), moved only forward; sync is paged (docs/sync.md).
 * This file: the method table, dispatch and the lanes; each method group has a wk_api_*.c. */
#include "wk_api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_log.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "wk_apip.h"
#include "wk_routes.h"
#include "wk_sub.h"

#define DRAIN_TIMEOUT_MS 15000
#define DONE_WAIT_MS 20000

/* ------------------------------------------------------------------------------------------ */
/* The method table                                                                           */
/* ------------------------------------------------------------------------------------------ */

/* Every method the role answers, one handler per entry, each in its group's file (wk_apip.h). */
static const api_method methods[] = {
    {"conv.create", api_conv_create, "method=\"conv.create\"", false},
    {"conv.delete", api_conv_delete, "method=\"conv.delete\"", false},
    {"members.add", api_members_add, "method=\"members.add\"", false},
    {"members.remove", api_members_remove, "method=\"members.remove\"", false},
    {"members.check", api_members_check, "method=\"members.check\"", true},
    {"members.list", api_members_list, "method=\"members.list\"", true},
    {"post", api_post, "method=\"post\"", false},
    {"post.status", api_post_status, "method=\"post.status\"", true},
    {"history", api_history, "method=\"history\"", true},
    {"sync", api_sync, "method=\"sync\"", true},
    {"cursor", api_cursor, "method=\"cursor\"", true},
    {"conv.list", api_conv_list, "method=\"conv.list\"", true},
};
_Static_assert(sizeof methods / sizeof methods[0] == API_NMETHODS, "API_NMETHODS counts the method table");

static const char *error_codes[] = {"bad_request", "not_found", "not_member", "unavailable", "internal"};
_Static_assert(sizeof error_codes / sizeof error_codes[0] == API_NCODES, "API_NCODES counts the error codes");

/* ------------------------------------------------------------------------------------------ */
/* Dispatch                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    api_lane *l = closure;
    wk_api *api = l->api;
    int64_t t0 = chat_mono_ns();
    const char *subject = natsMsg_GetSubject(msg);
    size_t plen = strlen(CHAT_API_PREFIX), gwlen = strlen(CHAT_API_GW_PREFIX);
    bool from_gateway = strncmp(subject, CHAT_API_GW_PREFIX, gwlen) == 0;
    const char *name = from_gateway                                   ? subject + gwlen
                       : strncmp(subject, CHAT_API_PREFIX, plen) == 0 ? subject + plen
                                                                      : "";
    int mi = -1;
    for (size_t i = 0; i < API_NMETHODS && mi < 0; i++)
        if (strcmp(name, methods[i].name) == 0 && (!from_gateway || methods[i].gateway_form))
            mi = (int)i;
    const char *data = natsMsg_GetData(msg);
    api_call c = {.lane = l,
                  .data = (const uint8_t *)(data ? data : ""),
                  .len = (size_t)natsMsg_GetDataLength(msg),
                  .from_gateway = from_gateway};
    if (mi >= 0)
        methods[mi].fn(&c);
    else
        api_fail(&c, "bad_request", "unknown method (see docs/nats.md)");
    api_rollback(l);
    if (c.code[0] || c.reply == NULL)
        api_reply_status_only(&c);
    const char *reply = natsMsg_GetReply(msg);
    if (reply)
        natsConnection_Publish(nc, reply, c.reply, (int)c.reply_len);

    int64_t us = (chat_mono_ns() - t0) / 1000;
    atomic_fetch_add(api->m_requests[mi >= 0 ? (size_t)mi : API_NMETHODS], 1);
    chat_histogram_observe_us(api->h_seconds, us);
    const char *mname = mi >= 0 ? methods[mi].name : "unknown";
    if (c.code[0]) {
        for (size_t i = 0; i < API_NCODES; i++)
            if (strcmp(c.code, error_codes[i]) == 0)
                atomic_fetch_add(api->m_errors[i], 1);
        /* answers a caller expects (not a member, not stored yet) are not failures of ours */
        bool expected =
            strcmp(c.code, "not_found") == 0 || strcmp(c.code, "not_member") == 0 || strcmp(c.code, "bad_request") == 0;
        CHAT_LOG(expected ? CHAT_LOG_DEBUG : CHAT_LOG_WARN, "api",
                 "event=request_failed lane=%d method=%s conv=%s code=%s message=\"%s\" detail=\"%s\" ms=%.1f",
                 l->index, mname, c.conv, c.code, c.message, c.detail, (double)us / 1000.0);
    } else {
        LOG_DEBUG("api", "event=request lane=%d method=%s conv=%s ms=%.1f", l->index, mname, c.conv,
                  (double)us / 1000.0);
    }
    free(c.reply);
    natsMsg_Destroy(msg);
}

/* Called by the lane's delivery thread once the subscription is closed and its last callback
 * returned: from then on the lane's connection may be closed by another thread. */
static void on_complete(void *closure)
{
    api_lane *l = closure;
    pthread_mutex_lock(&l->lock);
    l->done = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Start and stop                                                                               */
/* ------------------------------------------------------------------------------------------ */

chat_status wk_api_start(wk_app *app, wk_api **out)
{
    wk_api *api = calloc(1, sizeof *api);
    if (api == NULL)
        return CHAT_ERR_NOMEM;
    api->app = app;
    chat_metrics *m = app->metrics;
    for (size_t i = 0; i < API_NMETHODS; i++)
        api->m_requests[i] =
            chat_metrics_counter(m, "chat_api_requests_total", methods[i].labels, "API requests answered, by method.");
    api->m_requests[API_NMETHODS] =
        chat_metrics_counter(m, "chat_api_requests_total", "method=\"unknown\"", "API requests answered, by method.");
    static const char *code_labels[API_NCODES] = {"code=\"bad_request\"", "code=\"not_found\"", "code=\"not_member\"",
                                                  "code=\"unavailable\"", "code=\"internal\""};
    for (size_t i = 0; i < API_NCODES; i++)
        api->m_errors[i] = chat_metrics_counter(m, "chat_api_errors_total", code_labels[i],
                                                "API requests answered with an error status, by code.");
    api->h_seconds =
        chat_metrics_histogram(m, "chat_api_request_seconds", NULL, "From an API request's arrival to its reply.");
    const char *help = "Recipients of the api role's deliveries (receipts, membership changes): reached through their "
                       "gateways, or dropped because Redis did not answer (a sync reads them back).";
    api->m_deliveries_gateway = chat_metrics_counter(m, "chat_api_deliveries_total", "path=\"gateway\"", help);
    api->m_deliveries_dropped = chat_metrics_counter(m, "chat_api_deliveries_total", "path=\"dropped\"", help);

    chat_status st = wk_cold_create(app->cfg, (size_t)app->cfg->archive_cache_mb << 20, m, &api->cold);
    for (int i = 0; i < WK_API_LANES && st == CHAT_OK; i++) {
        api_lane *l = &api->lanes[i];
        l->api = api;
        l->index = i;
        snprintf(l->name, sizeof l->name, "chat-api-%d", i);
        l->routes = wk_routes_create(app->cfg, "api", api->m_deliveries_gateway, api->m_deliveries_dropped);
        pthread_mutex_init(&l->lock, NULL);
        chat_cond_init_mono(&l->cv);
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = API_PUBLISH_WAIT_MS;
        st = chat_nats_check(natsConnection_JetStream(&l->js, app->nc, &jo), "api", "jetstream_context");
        if (st == CHAT_OK)
            st = chat_nats_check(
                natsConnection_QueueSubscribe(&l->sub, app->nc, CHAT_API_PREFIX ">", WK_API_QUEUE, on_request, l),
                "api", "subscribe");
        if (st == CHAT_OK)
            st = chat_nats_check(natsSubscription_SetOnCompleteCB(l->sub, on_complete, l), "api", "on_complete");
    }
    if (st != CHAT_OK) {
        wk_api_destroy(api);
        return st;
    }
    *out = api;
    LOG_INFO("api", "event=role_started lanes=%d subject=%s> queue=%s", WK_API_LANES, CHAT_API_PREFIX, WK_API_QUEUE);
    return CHAT_OK;
}

void wk_api_destroy(wk_api *api)
{
    if (api == NULL)
        return;
    for (int i = 0; i < WK_API_LANES; i++) {
        api_lane *l = &api->lanes[i];
        if (l->sub && natsSubscription_DrainTimeout(l->sub, DRAIN_TIMEOUT_MS) != NATS_OK)
            natsSubscription_Unsubscribe(l->sub);
    }
    bool stuck = false;
    for (int i = 0; i < WK_API_LANES; i++) {
        api_lane *l = &api->lanes[i];
        if (l->api == NULL)
            continue; /* never initialised */
        bool done = l->sub == NULL || wk_sub_wait_done(&l->lock, &l->cv, &l->done, DONE_WAIT_MS);
        if (!done) {
            /* a callback may still run: leave its state alone rather than free it under it */
            LOG_WARN("api", "event=lane_stop_timeout lane=%d", i);
            stuck = true;
            continue;
        }
        natsSubscription_Destroy(l->sub);
        jsCtx_Destroy(l->js);
        PQfinish(l->pg);
        wk_routes_destroy(l->routes);
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->lock);
    }
    if (!stuck) {
        wk_cold_destroy(api->cold);
        free(api);
    }
    LOG_INFO("api", "event=role_stopped");
}
