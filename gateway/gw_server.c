/* lws protocol callback of the gateway. Runs only on the lws service thread. */
#include "gw_server.h"

#include <string.h>

#include "chat_http.h"
#include "chat_log.h"

typedef struct gw_session {
    chat_http_reply reply; /* HTTP requests */
} gw_session;

static int callback_chat(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    gw_session *s = user;
    gw_server *srv = lws_context_user(lws_get_context(wsi));
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        if (!chat_http_health((const char *)in, srv->metrics, chat_health_ready, srv->health, &s->reply))
            chat_http_reply_set(&s->reply, 404, "text/plain", "not found\n", 10);
        return chat_http_reply_begin(wsi, &s->reply);
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

static const struct lws_protocols protocols[] = {
    {"chat", callback_chat, sizeof(gw_session), 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

chat_status gw_server_create(gw_server *srv)
{
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = srv->cfg->gateway_listen.port;
    info.iface = srv->cfg->gateway_listen.host;
    info.protocols = protocols;
    info.user = srv;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_VALIDATE_UTF8;
    srv->context = lws_create_context(&info);
    return srv->context ? CHAT_OK : CHAT_ERR_IO;
}

void gw_server_run(gw_server *srv)
{
    while (!atomic_load(&srv->stopping))
        if (lws_service(srv->context, 0) < 0)
            break;
}

void gw_server_stop(gw_server *srv)
{
    atomic_store(&srv->stopping, true);
    if (srv->context)
        lws_cancel_service(srv->context);
}

void gw_server_destroy(gw_server *srv)
{
    if (srv && srv->context) {
        lws_context_destroy(srv->context);
        srv->context = NULL;
    }
}
