/* A small blocking WebSocket client for the integration tests: RFC 6455 over plain TCP, no lws,
 * so the tests do not trust the library the gateway is built on. One thread per client; several
 * clients can be driven from one thread with ws_client_fd() and poll(2). */
#ifndef WS_CLIENT_H
#define WS_CLIENT_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_status.h"

typedef struct ws_client ws_client;

enum {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xa,
    WS_FIN = 0x80, /* first header byte: final fragment */
};

/* How to connect. Only host, port and path are required. */
typedef struct ws_connect_opts {
    const char *host;
    int port;
    const char *path;           /* e.g. "/ws" or "/ws?x=1"; sent as given */
    const char *token;          /* when not NULL, appended as ?token= / &token= (percent-encoded) */
    const char *const *headers; /* extra request header lines "Name: value", NULL-terminated */
    int timeout_ms;             /* for connect and the upgrade answer; 0 means 10000 */
} ws_connect_opts;

/* What the server answered to the upgrade request (filled in every case a status line came). */
typedef struct ws_connect_info {
    int http_status; /* 101 on success, e.g. 401 when refused; 0 when no status line came */
    char body[1024]; /* start of the response body of a refused upgrade, NUL-terminated */
    char error[256]; /* why the connect failed, for test messages */
} ws_connect_info;

/* One whole message (fragments reassembled). Pings are answered inside and never returned. */
typedef struct ws_message {
    int opcode; /* WS_OP_TEXT, WS_OP_BINARY or WS_OP_CLOSE */
    char *data; /* payload, always NUL-terminated; owned, free with ws_message_clear */
    size_t len;
    int close_code; /* WS_OP_CLOSE: the status code, 1005 when the frame carried none */
} ws_message;

/* Connects and upgrades. CHAT_OK and a new client in *out (caller destroys); CHAT_ERR_DENIED when
 * the server answered with another status than 101 (info->http_status says which);
 * CHAT_ERR_TIMEOUT, CHAT_ERR_IO (no connection) or CHAT_ERR_INVALID (a 101 that breaks the
 * handshake rules) otherwise. info may be NULL. */
chat_status ws_client_connect(const ws_connect_opts *opts, ws_client **out, ws_connect_info *info);

/* Closes the socket at once (no close handshake) and frees the client. NULL-safe. */
void ws_client_destroy(ws_client *c);

/* The socket, for poll(2) (POLLIN). Data may already be buffered inside the client, so after
 * poll, and before blocking, call ws_client_recv with timeout 0 until it says CHAT_ERR_TIMEOUT. */
int ws_client_fd(const ws_client *c);

/* True when a whole frame is already buffered (poll would not show it). */
bool ws_client_buffered(const ws_client *c);

/* Sends text as one masked, final text frame of any size. While the socket does not take more,
 * what the server sends is read into the buffer, so two busy peers never block each other. */
chat_status ws_client_send_text(ws_client *c, const char *text, size_t len);

/* Sends the compact JSON of frame as a text frame; frame stays the caller's. */
chat_status ws_client_send_json(ws_client *c, const json_t *frame);

/* Sends one hand-made frame: first_byte is FIN | RSV bits | opcode exactly as given, the payload
 * is masked when masked is true. For fragments and hostile input. */
chat_status ws_client_send_frame(ws_client *c, uint8_t first_byte, bool masked, const void *payload, size_t len);

/* Sends bytes exactly as given (no framing). */
chat_status ws_client_send_raw(ws_client *c, const void *bytes, size_t len);

/* Sends a close frame with code (0: no code) and reason. Receiving goes on until the server's
 * close frame arrives. */
chat_status ws_client_close(ws_client *c, int code, const char *reason);

/* Receives one whole message within timeout_ms (0: only what is buffered or readable now, < 0:
 * forever). CHAT_OK with *out filled (clear it); CHAT_ERR_TIMEOUT; CHAT_ERR_IO when the
 * connection is gone (after a close message was returned, or EOF without one);
 * CHAT_ERR_INVALID when the server broke the protocol (ws_client_error says how). A close frame
 * from the server is answered with the same code and returned as a WS_OP_CLOSE message. */
chat_status ws_client_recv(ws_client *c, int timeout_ms, ws_message *out);

/* ws_client_recv of one text message parsed as JSON: CHAT_OK with a new reference in *out.
 * A close message gives CHAT_ERR_IO (ws_client_close_code has the code); a binary message or
 * text that is not JSON gives CHAT_ERR_INVALID. */
chat_status ws_client_recv_json(ws_client *c, int timeout_ms, json_t **out);

/* Sends a close 1000 and waits up to timeout_ms for the server's close frame, dropping other
 * messages; then destroys the client. CHAT_OK when the server answered the close. NULL-safe. */
chat_status ws_client_shutdown(ws_client *c, int timeout_ms);

/* The close code the server sent (1005: none in the frame), 0 while no close frame came. */
int ws_client_close_code(const ws_client *c);

/* A line about the last error of this client; "" when none. */
const char *ws_client_error(const ws_client *c);

/* Pings the server sent (each answered with a pong). */
unsigned long ws_client_pings(const ws_client *c);

void ws_message_clear(ws_message *m);

#endif
