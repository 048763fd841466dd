/* HTTP through libwebsockets: replies built in memory and written in WRITEABLE callbacks, the
 * health endpoints every binary serves (/healthz, /readyz, /metrics), and a small HTTP server
 * on its own thread for binaries that have no lws loop of their own (the worker). */
#ifndef CHAT_HTTP_H
#define CHAT_HTTP_H
#include <stdbool.h>
#include <stddef.h>

#include <libwebsockets.h>

#include "chat_config.h"
#include "chat_metrics.h"
#include "chat_status.h"

/* A reply in progress, kept in the per-session data of an HTTP connection. */
typedef struct chat_http_reply {
    int status;
    const char *content_type;
    unsigned char *buf; /* LWS_PRE bytes of room, then the body */
    size_t len, sent;
    const char *extra_header_name, *extra_header_value; /* optional, e.g. WWW-Authenticate */
} chat_http_reply;

/* Takes a copy of body. */
void chat_http_reply_set(chat_http_reply *r, int status, const char *content_type, const char *body,
                         size_t len);
/* Writes the status line and headers, then asks for WRITEABLE. lws contract: 0 ok, -1 close. */
int chat_http_reply_begin(struct lws *wsi, chat_http_reply *r);
/* Writes the next part of the body from LWS_CALLBACK_HTTP_WRITEABLE; frees the reply at the end. */
int chat_http_reply_continue(struct lws *wsi, chat_http_reply *r);
void chat_http_reply_free(chat_http_reply *r); /* NULL-safe */

/* Readiness: fills detail with one line per dependency ("nats ok", "postgres down"; no error text). */
typedef bool (*chat_ready_fn)(void *ctx, char *detail, size_t size);

/* Fills r for /healthz, /readyz and /metrics and returns true; false for any other path. */
bool chat_http_health(const char *path, chat_metrics *m, chat_ready_fn ready, void *ctx,
                      chat_http_reply *r);

/* Routes lws's own log lines into chat_log (warnings and errors only). */
void chat_http_lws_logging(void);

typedef struct chat_httpd chat_httpd;
/* Starts a health/metrics server on its own thread. m, ready and ctx must outlive it. */
chat_status chat_httpd_start(const chat_listen *listen, chat_metrics *m, chat_ready_fn ready, void *ctx,
                             chat_httpd **out);
/* Stops and frees; NULL-safe. */
void chat_httpd_destroy(chat_httpd *h);

#endif
