/* HTTP replies over lws, health endpoints, and the standalone health server thread. */
#include "chat_http.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_status.h"

void chat_http_reply_set(chat_http_reply *r, int status, const char *content_type, const char *body,
                         size_t len)
{
    chat_http_reply_free(r);
    r->status = status;
    r->content_type = content_type;
    r->buf = malloc(LWS_PRE + len + 1);
    if (r->buf == NULL)
        CHAT_OOM();
    memcpy(r->buf + LWS_PRE, body, len);
    r->len = len;
    r->sent = 0;
}

void chat_http_reply_free(chat_http_reply *r)
{
    if (r == NULL)
        return;
    free(r->buf);
    r->buf = NULL;
    r->len = r->sent = 0;
}

int chat_http_reply_begin(struct lws *wsi, chat_http_reply *r)
{
    unsigned char hdr[LWS_PRE + 1024], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
    if (lws_add_http_common_headers(wsi, (unsigned)r->status, r->content_type, r->len, &p, end))
        return -1;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end))
        return -1;
    if (r->extra_header_name &&
        lws_add_http_header_by_name(wsi, (const unsigned char *)r->extra_header_name,
                                    (const unsigned char *)r->extra_header_value,
                                    (int)strlen(r->extra_header_value), &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    lws_callback_on_writable(wsi);
    return 0;
}

int chat_http_reply_continue(struct lws *wsi, chat_http_reply *r)
{
    if (r == NULL || r->buf == NULL)
        return 0;
    size_t chunk = r->len - r->sent;
    if (chunk > 16384)
        chunk = 16384;
    bool last = r->sent + chunk == r->len;
    /* lws_write needs LWS_PRE writable bytes before the data; the body was sent in order, so
     * the bytes before the current position are already on the wire and may be overwritten. */
    unsigned char *at = r->buf + LWS_PRE + r->sent;
    if (lws_write(wsi, at, chunk, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) != (int)chunk)
        return -1;
    r->sent += chunk;
    if (!last) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    chat_http_reply_free(r);
    if (lws_http_transaction_completed(wsi))
        return -1;
    return 0;
}

bool chat_http_health(const char *path, chat_metrics *m, chat_ready_fn ready, void *ctx,
                      chat_http_reply *r)
{
    if (strcmp(path, "/healthz") == 0) {
        chat_http_reply_set(r, 200, "text/plain", "ok\n", 3);
        return true;
    }
    if (strcmp(path, "/readyz") == 0) {
        char detail[1024] = "";
        bool ok = ready ? ready(ctx, detail, sizeof detail) : true;
        chat_http_reply_set(r, ok ? 200 : 503, "text/plain", detail, strlen(detail));
        return true;
    }
    if (strcmp(path, "/metrics") == 0) {
        size_t len = 0;
        char *text = chat_metrics_render(m, &len);
        chat_http_reply_set(r, 200, "text/plain; version=0.0.4", text, len);
        free(text);
        return true;
    }
    return false;
}

static void lws_emit(int level, const char *line)
{
    char copy[1024];
    snprintf(copy, sizeof copy, "%s", line);
    size_t n = strlen(copy);
    while (n > 0 && (copy[n - 1] == '\n' || copy[n - 1] == '\r'))
        copy[--n] = '\0';
    if (level & LLL_ERR)
        LOG_ERROR("lws", "msg=\"%s\"", copy);
    else
        LOG_WARN("lws", "msg=\"%s\"", copy);
}

void chat_http_lws_logging(void)
{
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_emit);
}

/* ---- the standalone health server ---- */

struct chat_httpd {
    struct lws_context *context;
    pthread_t thread;
    atomic_bool stop;
    chat_metrics *metrics;
    chat_ready_fn ready;
    void *ready_ctx;
};

typedef struct httpd_session {
    chat_http_reply reply;
} httpd_session;

static int httpd_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    httpd_session *s = user;
    (void)len;
    if (s == NULL) /* a connection closed before any request: no per-session memory exists */
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    switch (reason) {
    case LWS_CALLBACK_HTTP: {
        chat_httpd *h = lws_context_user(lws_get_context(wsi));
        if (!chat_http_health((const char *)in, h->metrics, h->ready, h->ready_ctx, &s->reply))
            chat_http_reply_set(&s->reply, 404, "text/plain", "not found\n", 10);
        return chat_http_reply_begin(wsi, &s->reply);
    }
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return chat_http_reply_continue(wsi, &s->reply);
    case LWS_CALLBACK_CLOSED_HTTP:
        chat_http_reply_free(&s->reply);
        break;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols httpd_protocols[] = {
    {"http", httpd_callback, sizeof(httpd_session), 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void *httpd_thread(void *arg)
{
    chat_httpd *h = arg;
    while (!atomic_load(&h->stop))
        if (lws_service(h->context, 0) < 0)
            break;
    return NULL;
}

chat_status chat_httpd_start(const chat_listen *listen, chat_metrics *m, chat_ready_fn ready, void *ctx,
                             chat_httpd **out)
{
    chat_httpd *h = calloc(1, sizeof *h);
    if (h == NULL)
        return CHAT_ERR_NOMEM;
    h->metrics = m;
    h->ready = ready;
    h->ready_ctx = ctx;
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = listen->port;
    info.iface = listen->host;
    info.protocols = httpd_protocols;
    info.user = h;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    h->context = lws_create_context(&info);
    if (h->context == NULL) {
        free(h);
        return CHAT_ERR_IO;
    }
    if (pthread_create(&h->thread, NULL, httpd_thread, h) != 0) {
        lws_context_destroy(h->context);
        free(h);
        return CHAT_ERR_INTERNAL;
    }
    *out = h;
    return CHAT_OK;
}

void chat_httpd_destroy(chat_httpd *h)
{
    if (h == NULL)
        return;
    atomic_store(&h->stop, true);
    lws_cancel_service(h->context);
    pthread_join(h->thread, NULL);
    lws_context_destroy(h->context);
    free(h);
}
