/* chat-bench: the client side of RFC 6455 over a non-blocking TCP socket, driven by the caller's
 * epoll loop. One bench_ws per connection; it owns the socket and two small buffers (allocated
 * only while they hold bytes, so an idle connection costs a few dozen bytes here). Bytes are read
 * through a scratch buffer shared by all connections of the process. One thread. */
#ifndef BENCH_WS_H
#define BENCH_WS_H
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_status.h"

enum {
    BENCH_WS_OP_CONT = 0x0,
    BENCH_WS_OP_TEXT = 0x1,
    BENCH_WS_OP_BINARY = 0x2,
    BENCH_WS_OP_CLOSE = 0x8,
    BENCH_WS_OP_PING = 0x9,
    BENCH_WS_OP_PONG = 0xa,
};

typedef enum bench_ws_state {
    BENCH_WS_IDLE = 0,   /* no socket */
    BENCH_WS_CONNECTING, /* connect(2) in progress: wait for EPOLLOUT, then bench_ws_upgrade */
    BENCH_WS_UPGRADING,  /* the upgrade request is sent, the 101 not yet read */
    BENCH_WS_OPEN,
    BENCH_WS_CLOSED, /* the socket is gone; bench_ws_reset makes it IDLE again */
} bench_ws_state;

/* What bench_ws_read found. */
typedef enum bench_ws_event {
    BENCH_WS_AGAIN = 0, /* nothing more to read now */
    BENCH_WS_EOF,       /* the peer closed or reset the connection (close_code tells a close frame) */
    BENCH_WS_REFUSED,   /* the upgrade was answered with another status (http_status) */
    BENCH_WS_BROKEN,    /* the peer broke the protocol (why says how) */
} bench_ws_event;

typedef struct bench_ws {
    int fd;
    uint8_t state;        /* bench_ws_state */
    uint8_t frag_op;      /* opcode of a fragmented message being reassembled, 0 when none */
    uint16_t http_status; /* of the upgrade answer */
    uint16_t close_code;  /* from the peer's close frame; 1005 when it had none */
    uint32_t mask_seed;   /* xorshift state for frame masks */
    char *rx;             /* bytes of an incomplete frame or HTTP head */
    uint32_t rx_len, rx_cap;
    char *tx; /* bytes not yet written: tx[tx_off .. tx_len) */
    uint32_t tx_off, tx_len, tx_cap;
    char *frag;
    uint32_t frag_len, frag_cap;
    char accept[32]; /* the Sec-WebSocket-Accept we expect */
    const char *protocol; /* the subprotocol asked for (static), or NULL */
    const char *why; /* static text about the last failure */
} bench_ws;

/* Called for every whole text or binary message (fragments reassembled); data is valid only
 * during the call. Pings are answered and pongs dropped inside; a close frame ends the read with
 * BENCH_WS_EOF after it was answered. */
typedef void (*bench_ws_message_fn)(void *ctx, int opcode, const char *data, size_t len);

/* Opens a non-blocking socket bound to src (port 0, IP_BIND_ADDRESS_NO_PORT, so one source
 * address serves many destinations) and starts connecting to dst. CHAT_OK with state
 * CONNECTING (register fd for EPOLLIN | EPOLLOUT); CHAT_ERR_IO with why otherwise. */
chat_status bench_ws_connect(bench_ws *ws, const struct sockaddr_in *dst, const struct sockaddr_in *src);

/* On the first EPOLLOUT of a CONNECTING socket: checks that connect succeeded and queues the
 * upgrade request GET <target> (path and query) with Host: host, and Sec-WebSocket-Protocol:
 * protocol unless it is NULL (then the answer must name it too). CHAT_OK (state UPGRADING; call
 * bench_ws_flush) or CHAT_ERR_IO (connect failed, why says so). */
chat_status bench_ws_upgrade(bench_ws *ws, const char *host, const char *target, const char *protocol);

/* Reads what the socket has (at most a few chunks, so one busy connection cannot starve the
 * others) through scratch (scratch_size bytes, at least 64 KiB), parses the upgrade answer and
 * frames, and calls on_message for each message. Pongs and close answers are queued in tx: the
 * caller flushes after. */
bench_ws_event bench_ws_read(bench_ws *ws, char *scratch, size_t scratch_size, bench_ws_message_fn on_message,
                             void *ctx);

/* Queues one masked frame (FIN set) with the payload. */
void bench_ws_queue(bench_ws *ws, int opcode, const char *payload, size_t len);

/* Writes what is queued. 1: bytes are left (wait for EPOLLOUT), 0: all written, -1: the socket
 * failed (the caller aborts it). */
int bench_ws_flush(bench_ws *ws);

static inline bool bench_ws_pending(const bench_ws *ws)
{
    return ws->tx_len > ws->tx_off;
}

/* Closes the socket at once (reset: SO_LINGER 0, the peer sees a reset, no TIME_WAIT) and frees
 * the buffers; state CLOSED. NULL-safe, idempotent. */
void bench_ws_abort(bench_ws *ws, bool reset);

/* After bench_ws_abort: back to IDLE for a new connect (keeps mask_seed). */
void bench_ws_reset(bench_ws *ws);

#endif
