/* NATS connection set-up and subject names. */
#include "chat_nats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_mem.h"
#include "chat_redact.h"
#include "chat_time.h"

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

/* nats.c's asynchronous errors: a refused subscription or publish is logged (a credential that
 * lacks a permission, seen at once rather than as a silent hole); the others (a slow consumer's
 * drops) are counted where they matter. */
static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)sub;
    if (err != NATS_NOT_PERMITTED)
        return;
    const char *text = NULL;
    natsConnection_GetLastError(nc, &text);
    LOG_ERROR((const char *)closure, "event=nats_not_permitted detail=\"%s\"", text ? text : "");
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
                                const char *inbox_prefix, natsConnection **out);

/* The URL list with any user:password@ replaced by ***@, for logs and error lines. */
chat_status chat_nats_connect(const chat_cfg *cfg, const char *name, bool wait_initial, natsConnection **out)
{
    return connect_with(cfg, name, wait_initial, 0, NULL, out);
}

chat_status chat_nats_connect_shared(const chat_cfg *cfg, const char *name, int pool_threads, natsConnection **out)
{
    return connect_with(cfg, name, false, pool_threads, NULL, out);
}

chat_status chat_nats_connect_inbox(const chat_cfg *cfg, const char *name, const char *inbox_prefix,
                                    natsConnection **out)
{
    return connect_with(cfg, name, false, 0, inbox_prefix, out);
}

/* true for tls:// URLs (chat_config.c allows no mix of tls:// and nats://) */
static bool tls_urls(const chat_cfg *cfg)
{
    return strncmp(cfg->nats_url + strspn(cfg->nats_url, " \t"), "tls://", 6) == 0;
}

/* tls:// URLs: the connection must be secure, since
 * nats.c itself ignores the scheme and would talk plain text to a server that offers no TLS;
 * CHAT_NATS_CA is trusted besides the system's CAs, CHAT_NATS_CERT/KEY is the client certificate
 * for servers that verify clients. nats.c checks each server's certificate against the host of
 * its URL. The files were parsed at start (chat_config.c). */
static natsStatus set_tls(natsOptions *opts, const chat_cfg *cfg)
{
    if (!tls_urls(cfg))
        return NATS_OK;
    natsStatus s = natsOptions_SetSecure(opts, true);
    if (s == NATS_OK && cfg->nats_ca[0])
        s = natsOptions_LoadCATrustedCertificates(opts, cfg->nats_ca);
    if (s == NATS_OK && cfg->nats_cert[0])
        s = natsOptions_LoadCertificatesChain(opts, cfg->nats_cert, cfg->nats_key);
    return s;
}

/* What an operator should look at when a server answered and the connection still failed. */
static const char *refusal_hint(const chat_cfg *cfg, natsStatus s)
{
    bool tls = tls_urls(cfg);
    if (s == NATS_SSL_ERROR && !tls)
        return "the server requires TLS: use tls:// URLs, with CHAT_NATS_CA for a private CA";
    if (s == NATS_SSL_ERROR)
        return "the server's certificate is not trusted: CHAT_NATS_CA must hold the CA that signed it, and "
               "the certificate must name the URL's host";
    if (s == NATS_PROTOCOL_ERROR && tls && cfg->nats_cert[0] == '\0')
        return "the server closed the connection after the TLS handshake: it may require a client "
               "certificate (CHAT_NATS_CERT, CHAT_NATS_KEY)";
    if (s == NATS_PROTOCOL_ERROR && tls)
        return "the server closed the connection after the TLS handshake: it may not accept the client "
               "certificate of CHAT_NATS_CERT";
    if (s == NATS_CONNECTION_AUTH_FAILED)
        return "the server refused the credentials of CHAT_NATS_URL";
    return "";
}

static chat_status connect_with(const chat_cfg *cfg, const char *name, bool wait_initial, int pool_threads,
                                const char *inbox_prefix, natsConnection **out)
{
    natsOptions *opts = NULL;
    natsStatus s = natsOptions_Create(&opts);
    char *urls = chat_xstrdup(cfg->nats_url);
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
        s = set_tls(opts, cfg);
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
    /* Writes to such a server stall once the socket buffer is full, and nats.c writes holding the
     * connection's lock: without a deadline every publish (the gateway's service thread) and the
     * ping timer wait with it for as long as the partition lasts. */
    if (s == NATS_OK)
        s = natsOptions_SetWriteDeadline(opts, 2000);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(opts, 64 * 1024 * 1024);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPendingMsgs(opts, 1000000);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(opts, on_disconnected, (void *)name);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(opts, on_reconnected, (void *)name);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(opts, on_async_error, (void *)name);
    if (s == NATS_OK && pool_threads > 0) {
        s = nats_SetMessageDeliveryPoolSize(pool_threads);
        if (s == NATS_OK)
            s = natsOptions_UseGlobalMessageDelivery(opts, true);
    }
    if (s == NATS_OK && inbox_prefix)
        s = natsOptions_SetCustomInboxPrefix(opts, inbox_prefix);
    natsConnection *nc = NULL;
    if (s == NATS_OK)
        s = natsConnection_Connect(&nc, opts);
    /* Not waiting: when no server answered, nats.c goes on trying in the background. Only then:
     * a server that answered and refused (TLS verification, credentials) fails here with its
     * reason, since nats.c 3.4.1 closes a connection retrying in the background for good after
     * such a refusal, leaving the program up and never ready. */
    if (s == NATS_NO_SERVER && !wait_initial) {
        s = natsOptions_SetRetryOnFailedConnect(opts, true, on_connected, (void *)name);
        if (s == NATS_OK)
            s = natsConnection_Connect(&nc, opts);
    }
    char shown[1024];
    chat_redact_url(cfg->nats_url, shown, sizeof shown);
    if (s == NATS_NOT_YET_CONNECTED) {
        LOG_WARN(name, "event=nats_unreachable url=\"%s\" action=retrying_in_background", shown);
        s = NATS_OK;
    }
    natsOptions_Destroy(opts);
    free(urls);
    if (s != NATS_OK) {
        LOG_ERROR(
            name, "event=nats_connect_failed setting=CHAT_NATS_URL url=\"%s\" status=\"%s\" detail=\"%s\" hint=\"%s\"",
            shown, natsStatus_GetText(s), nats_GetLastError(NULL) ? nats_GetLastError(NULL) : "", refusal_hint(cfg, s));
        /* that line is the one report: no second one from chat_nats_check */
        return s == NATS_NO_MEMORY ? CHAT_ERR_NOMEM : s == NATS_INVALID_ARG ? CHAT_ERR_INVALID : CHAT_ERR_UNAVAILABLE;
    }
    *out = nc;
    return CHAT_OK;
}

bool chat_nats_connected(natsConnection *nc)
{
    return nc != NULL && natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED;
}

uint64_t chat_nats_reconnects(natsConnection *nc)
{
    natsStatistics *st = NULL;
    uint64_t n = 0;
    if (natsStatistics_Create(&st) == NATS_OK && natsConnection_GetStats(nc, st) == NATS_OK)
        natsStatistics_GetCounts(st, NULL, NULL, NULL, NULL, &n);
    natsStatistics_Destroy(st);
    return n;
}

static bool fits(int n, size_t size)
{
    return n > 0 && (size_t)n < size;
}

bool chat_js_ack_parse(const char *reply, chat_js_ack *out)
{
    if (reply == NULL || strncmp(reply, "$JS.ACK.", 8) != 0)
        return false;
    const char *tok[16];
    int n = 0;
    for (const char *p = reply; p && n < 16; p = strchr(p, '.'), p = p ? p + 1 : NULL)
        tok[n++] = p;
    int base = n == 9 ? 2 : n >= 11 ? 4 : -1;
    if (base < 0)
        return false;
    char *end = NULL;
    unsigned long long delivered = strtoull(tok[base + 2], &end, 10);
    if (end == tok[base + 2] || *end != '.' || delivered == 0)
        return false;
    long long ts = strtoll(tok[base + 5], &end, 10);
    if (end == tok[base + 5] || ts <= 0)
        return false;
    out->delivered = delivered;
    out->ts_ns = ts;
    out->pending = strtoll(tok[base + 6], NULL, 10);
    return true;
}

int chat_nats_status(natsMsg *m)
{
    const char *status = NULL;
    if (m == NULL || natsMsg_GetDataLength(m) != 0 || natsMsgHeader_Get(m, "Status", &status) != NATS_OK ||
        status == NULL)
        return 0;
    int code = atoi(status);
    return code > 0 ? code : 0;
}

natsStatus chat_js_pull(natsConnection *nc, const char *next_subject, const char *reply, int batch,
                        int64_t expires_ms)
{
    char req[96];
    if (expires_ms > 0)
        snprintf(req, sizeof req, "{\"batch\":%d,\"expires\":%lld}", batch, (long long)expires_ms * 1000000LL);
    else
        snprintf(req, sizeof req, "{\"batch\":%d,\"no_wait\":true}", batch);
    return natsConnection_PublishRequestString(nc, next_subject, reply, req);
}

int64_t chat_js_pull_left(natsMsg *m)
{
    const char *left = NULL;
    if (natsMsgHeader_Get(m, "Nats-Pending-Messages", &left) != NATS_OK || left == NULL)
        return -1;
    return strtoll(left, NULL, 10);
}

void chat_js_keep_pulling(chat_js_puller *p, natsConnection *nc, const char *next_subject, const char *reply,
                          int batch, int64_t expires_ms, int64_t retry_ms)
{
    int64_t now = chat_mono_ms();
    if (now < p->retry_at_ms)
        return;
    if (p->credit > 0 && now > p->deadline_ms)
        p->credit = 0;
    if (p->credit > batch / 2)
        return;
    if (chat_js_pull(nc, next_subject, reply, batch, expires_ms) != NATS_OK) {
        p->retry_at_ms = now + retry_ms;
        return;
    }
    p->credit += batch;
    p->deadline_ms = now + expires_ms + 1000;
}

int chat_js_pull_took(chat_js_puller *p, natsMsg *m, int64_t retry_ms)
{
    int status = chat_nats_status(m);
    if (status == 0) {
        if (p->credit > 0)
            p->credit--;
        return 0;
    }
    int64_t left = chat_js_pull_left(m);
    p->credit = left >= 0 && left <= p->credit ? p->credit - (int)left : 0;
    if (status != 408)
        p->retry_at_ms = chat_mono_ms() + retry_ms;
    return status;
}

bool chat_subject_in(char *buf, size_t size, int partition, const char *conv)
{
    return fits(snprintf(buf, size, "chat.in.%d.%s", partition, conv), size);
}

bool chat_subject_in_backend(char *buf, size_t size, int partition, const char *conv)
{
    return fits(snprintf(buf, size, "chat.in.%d.%s.backend", partition, conv), size);
}

bool chat_subject_bulk(char *buf, size_t size, int partition, const char *conv)
{
    return fits(snprintf(buf, size, "chat.bulk.%d.%s", partition, conv), size);
}

bool chat_subject_in_parse(const char *subject, const char **conv, size_t *conv_len, bool *backend)
{
    bool bulk = strncmp(subject, "chat.bulk.", 10) == 0;
    if (!bulk && strncmp(subject, "chat.in.", 8) != 0)
        return false;
    const char *start = subject + (bulk ? 10 : 8), *p = start;
    while (*p >= '0' && *p <= '9')
        p++;
    if (p == start || *p != '.')
        return false;
    const char *c = p + 1;
    const char *dot = strchr(c, '.');
    size_t n = dot ? (size_t)(dot - c) : strlen(c);
    if (n == 0 || (dot && (bulk || strcmp(dot, ".backend") != 0)))
        return false;
    *conv = c;
    *conv_len = n;
    *backend = bulk || dot != NULL;
    return true;
}

bool chat_subject_deliver_gateway(char *buf, size_t size, const char *gateway)
{
    return fits(snprintf(buf, size, "chat.deliver.g.%s", gateway), size);
}

bool chat_subject_typing(char *buf, size_t size, const char *conv)
{
    return fits(snprintf(buf, size, "chat.typing.%s", conv), size);
}

bool chat_subject_event(char *buf, size_t size, const char *conv)
{
    return fits(snprintf(buf, size, "chat.evt.%s", conv), size);
}

bool chat_subject_members(char *buf, size_t size, const char *conv)
{
    return fits(snprintf(buf, size, "chat.members.%s", conv), size);
}

bool chat_subject_in_partition(char *buf, size_t size, int partition)
{
    return fits(snprintf(buf, size, "chat.in.%d.>", partition), size);
}

bool chat_subject_bulk_partition(char *buf, size_t size, int partition)
{
    return fits(snprintf(buf, size, "chat.bulk.%d.*", partition), size);
}

bool chat_subject_api(char *buf, size_t size, const char *method)
{
    return fits(snprintf(buf, size, "%s%s", CHAT_API_PREFIX, method), size);
}

static const char *after_prefix(const char *subject, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(subject, prefix, n) == 0 ? subject + n : NULL;
}

const char *chat_subject_typing_parse(const char *subject)
{
    return after_prefix(subject, "chat.typing.");
}

bool chat_subject_route(char *buf, size_t size, const char *gateway)
{
    return fits(snprintf(buf, size, "chat.route.%s", gateway), size);
}

const char *chat_subject_route_parse(const char *subject)
{
    return after_prefix(subject, "chat.route.");
}

const char *chat_subject_members_parse(const char *subject)
{
    return after_prefix(subject, "chat.members.");
}

bool chat_subject_js_next(char *buf, size_t size, const char *stream, const char *consumer)
{
    return fits(snprintf(buf, size, "$JS.API.CONSUMER.MSG.NEXT.%s.%s", stream, consumer), size);
}

bool chat_subject_js_info(char *buf, size_t size, const char *stream, const char *consumer)
{
    return fits(snprintf(buf, size, "$JS.API.CONSUMER.INFO.%s.%s", stream, consumer), size);
}

void chat_nats_shutdown(void)
{
    if (nats_CloseAndWait(2000) == NATS_TIMEOUT) /* anything else: the library was never opened */
        LOG_WARN("nats", "event=shutdown_timeout detail=\"nats.c threads still running after 2 s\"");
}

int64_t chat_nats_synced_after_ms(int64_t sync_ms)
{
    return sync_ms + sync_ms / 2 + 1000;
}
