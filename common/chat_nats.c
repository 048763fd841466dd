/* NATS connection set-up and subject names. */
#include "chat_nats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"

chat_status chat_nats_check(natsStatus s, const char *comp, const char *action)
{
    if (s == NATS_OK)
        return CHAT_OK;
    LOG_WARN(comp, "event=nats_error action=%s status=\"%s\" detail=\"%s\"", action, natsStatus_GetText(s),
             nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
    switch (s) {
    case NATS_TIMEOUT: return CHAT_ERR_TIMEOUT;
    case NATS_NO_RESPONDERS:
    case NATS_NO_SERVER:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_STALE_CONNECTION: return CHAT_ERR_UNAVAILABLE;
    case NATS_NOT_FOUND: return CHAT_ERR_NOT_FOUND;
    case NATS_NO_MEMORY: return CHAT_ERR_NOMEM;
    case NATS_INVALID_ARG: return CHAT_ERR_INVALID;
    default: return CHAT_ERR_INTERNAL;
    }
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    LOG_WARN((const char *)closure, "event=nats_disconnected");
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    LOG_INFO((const char *)closure, "event=nats_reconnected");
}

static void on_connected(natsConnection *nc, void *closure)
{
    (void)nc;
    LOG_INFO((const char *)closure, "event=nats_connected");
}

static chat_status connect_with(const chat_cfg *cfg, const char *name, bool wait_initial, int pool_threads,
                                natsConnection **out);

/* The URL list with any user:password@ replaced by ***@, for logs and error lines. */
void chat_nats_redact(const char *urls, char *out, size_t size)
{
    size_t o = 0;
    for (const char *p = urls; *p && o + 1 < size;) {
        const char *scheme = strstr(p, "://");
        const char *end = strchr(p, ',');
        if (end == NULL)
            end = p + strlen(p);
        const char *at = NULL;
        for (const char *q = scheme ? scheme + 3 : p; q < end; q++)
            if (*q == '@')
                at = q;
        const char *from = p;
        if (scheme && at && scheme < end) {
            size_t n = (size_t)(scheme + 3 - p);
            o += (size_t)snprintf(out + o, size - o, "%.*s***", (int)n, p);
            from = at;
        }
        if (o + 1 < size)
            o += (size_t)snprintf(out + o, size - o, "%.*s", (int)(end - from), from);
        p = *end ? end + 1 : end;
        if (*end && o + 1 < size)
            out[o++] = ',', out[o] = '\0';
    }
    if (o < size)
        out[o] = '\0';
}

chat_status chat_nats_connect(const chat_cfg *cfg, const char *name, bool wait_initial, natsConnection **out)
{
    return connect_with(cfg, name, wait_initial, 0, out);
}

chat_status chat_nats_connect_shared(const chat_cfg *cfg, const char *name, int pool_threads, natsConnection **out)
{
    return connect_with(cfg, name, false, pool_threads, out);
}

static chat_status connect_with(const chat_cfg *cfg, const char *name, bool wait_initial, int pool_threads,
                                natsConnection **out)
{
    natsOptions *opts = NULL;
    natsStatus s = natsOptions_Create(&opts);
    char *urls = strdup(cfg->nats_url);
    const char *servers[32];
    int n = 0;
    char *save = NULL;
    for (char *u = strtok_r(urls, ",", &save); u && n < 32; u = strtok_r(NULL, ",", &save)) {
        while (*u == ' ')
            u++;
        servers[n++] = u;
    }
    if (s == NATS_OK)
        s = natsOptions_SetServers(opts, servers, n);
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, name);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(opts, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(opts, 250);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(opts, 2000);
    /* A server that went silent (a network partition: no FIN, no RST) is noticed after two
     * unanswered pings, 4-6 s, not nats.c's default of 2 x 2 minutes; then the client moves to
     * another node of the cluster. */
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(opts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(opts, 2);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(opts, 64 * 1024 * 1024);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPendingMsgs(opts, 1000000);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(opts, on_disconnected, (void *)name);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(opts, on_reconnected, (void *)name);
    if (s == NATS_OK && !wait_initial)
        s = natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, (void *)name);
    if (s == NATS_OK && pool_threads > 0) {
        s = nats_SetMessageDeliveryPoolSize(pool_threads);
        if (s == NATS_OK)
            s = natsOptions_UseGlobalMessageDelivery(opts, true);
    }
    natsConnection *nc = NULL;
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, opts);
    char shown[1024];
    chat_nats_redact(cfg->nats_url, shown, sizeof shown);
    if (s == NATS_NOT_YET_CONNECTED) {
        LOG_WARN(name, "event=nats_unreachable url=\"%s\" action=retrying_in_background", shown);
        s = NATS_OK;
    }
    natsOptions_Destroy(opts);
    free(urls);
    if (s != NATS_OK) {
        LOG_ERROR(name, "event=nats_connect_failed setting=CHAT_NATS_URL url=\"%s\" status=\"%s\" detail=\"%s\"", shown,
                  natsStatus_GetText(s), nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "");
        return s == NATS_NO_SERVER ? CHAT_ERR_UNAVAILABLE : chat_nats_check(s, name, "connect");
    }
    *out = nc;
    return CHAT_OK;
}

bool chat_nats_connected(natsConnection *nc)
{
    return nc != NULL && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED;
}

static bool fits(int n, size_t size)
{
    return n > 0 && (size_t)n < size;
}

bool chat_subject_in(char *buf, size_t size, int partition, const char *conv)
{
    return fits(snprintf(buf, size, "chat.in.%d.%s", partition, conv), size);
}

bool chat_subject_deliver(char *buf, size_t size, const char *user)
{
    return fits(snprintf(buf, size, "chat.deliver.u.%s", user), size);
}

bool chat_subject_event(char *buf, size_t size, const char *conv)
{
    return fits(snprintf(buf, size, "chat.evt.%s", conv), size);
}
