/* chat-bench: RFC 6455 client connections (see bench_ws.h). Server frames are parsed straight
 * from the shared scratch buffer; only the tail of an incomplete frame is copied into the
 * connection's own rx. The caller's thread only. */
#include "bench_ws.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/sha.h>

#define MAX_HTTP_HEAD 16384
#define MAX_MESSAGE (64u << 20)
#define READ_ROUNDS 4
#define TX_KEEP 65536 /* a drained tx buffer larger than this is freed */

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* ------------------------------------------------------------------ small helpers */

static uint32_t next_rand(bench_ws *ws)
{
    uint32_t x = ws->mask_seed;
    if (x == 0) {
        if (getrandom(&x, sizeof x, 0) != (ssize_t)sizeof x || x == 0)
            x = (uint32_t)(uintptr_t)ws ^ 0x9e3779b9u;
    }
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    ws->mask_seed = x;
    return x;
}

static void base64(const unsigned char *in, size_t len, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v =
            (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
}

/* Grows *buf (capacity *cap) to hold need bytes; aborts when memory is gone (the bench cannot
 * measure anything then). */
static void grow(char **buf, uint32_t *cap, size_t need)
{
    if (need <= *cap)
        return;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    if (c > UINT32_MAX)
        abort();
    char *p = realloc(*buf, c);
    if (p == NULL)
        abort();
    *buf = p;
    *cap = (uint32_t)c;
}

/* ------------------------------------------------------------------ connect and upgrade */

chat_status bench_ws_connect(bench_ws *ws, const struct sockaddr_in *dst, const struct sockaddr_in *src)
{
    ws->fd = -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ws->why = errno == EMFILE || errno == ENFILE ? "socket: too many open files" : "socket failed";
        return CHAT_ERR_IO;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (src) {
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (const struct sockaddr *)src, sizeof *src) != 0) {
            ws->why = errno == EADDRNOTAVAIL ? "bind: source address not available" : "bind failed";
            close(fd);
            return CHAT_ERR_IO;
        }
    }
    if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) != 0 && errno != EINPROGRESS) {
        ws->why = errno == EADDRNOTAVAIL ? "connect: no free local port" : "connect failed";
        close(fd);
        return CHAT_ERR_IO;
    }
    ws->fd = fd;
    ws->state = BENCH_WS_CONNECTING;
    ws->why = NULL;
    return CHAT_OK;
}

chat_status bench_ws_upgrade(bench_ws *ws, const char *host, const char *target, const char *protocol)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(ws->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
        ws->why = err == ECONNREFUSED ? "connection refused"
                  : err == ETIMEDOUT  ? "connect timed out"
                                      : "connect failed";
        return CHAT_ERR_IO;
    }
    unsigned char raw[16];
    for (int i = 0; i < 4; i++) {
        uint32_t r = next_rand(ws);
        memcpy(raw + 4 * i, &r, 4);
    }
    char key[32];
    base64(raw, sizeof raw, key);
    char concat[96];
    snprintf(concat, sizeof concat, "%s%s", key, ws_guid);
    unsigned char sha[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)concat, strlen(concat), sha);
    base64(sha, sizeof sha, ws->accept);

    ws->protocol = protocol;
    const char *ph = protocol ? "Sec-WebSocket-Protocol: " : "", *pv = protocol ? protocol : "",
               *pe = protocol ? "\r\n" : "";
    int n = snprintf(NULL, 0,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s%s%s\r\n",
                     target, host, key, ph, pv, pe);
    grow(&ws->tx, &ws->tx_cap, ws->tx_len + (size_t)n + 1);
    snprintf(ws->tx + ws->tx_len, (size_t)n + 1,
             "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s%s%s\r\n",
             target, host, key, ph, pv, pe);
    ws->tx_len += (uint32_t)n;
    ws->state = BENCH_WS_UPGRADING;
    return CHAT_OK;
}

/* The value of header name in head[0..len) (case-insensitive name), copied into out. */
static bool header_value(const char *head, size_t len, const char *name, char *out, size_t outsz)
{
    size_t nl = strlen(name);
    const char *end = head + len;
    const char *line = memchr(head, '\n', len);
    while (line && line + 1 < end) {
        line++;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL)
            eol = end;
        if ((size_t)(eol - line) > nl + 1 && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            size_t vl = (size_t)(ve - v) < outsz - 1 ? (size_t)(ve - v) : outsz - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return true;
        }
        line = eol < end ? eol : NULL;
    }
    return false;
}

/* Parses the HTTP answer at buf[0..len). *used = bytes of the head (0: incomplete). */
static bench_ws_event parse_head(bench_ws *ws, const char *buf, size_t len, size_t *used)
{
    *used = 0;
    const char *end = NULL;
    for (size_t i = 0; i + 3 < len; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n') {
            end = buf + i + 4;
            break;
        }
    if (end == NULL) {
        if (len > MAX_HTTP_HEAD) {
            ws->why = "upgrade answer head too long";
            return BENCH_WS_BROKEN;
        }
        return BENCH_WS_AGAIN;
    }
    int status = 0;
    if (len < 12 || strncmp(buf, "HTTP/1.1 ", 9) != 0 || sscanf(buf + 9, "%3d", &status) != 1) {
        ws->why = "upgrade answer is not HTTP/1.1";
        return BENCH_WS_BROKEN;
    }
    ws->http_status = (uint16_t)status;
    if (status != 101) {
        ws->why = "upgrade refused";
        return BENCH_WS_REFUSED;
    }
    char accept[64];
    if (!header_value(buf, (size_t)(end - buf), "Sec-WebSocket-Accept", accept, sizeof accept) ||
        strcmp(accept, ws->accept) != 0) {
        ws->why = "101 without the right Sec-WebSocket-Accept";
        return BENCH_WS_BROKEN;
    }
    char proto[64];
    if (ws->protocol && (!header_value(buf, (size_t)(end - buf), "Sec-WebSocket-Protocol", proto, sizeof proto) ||
                         strcasecmp(proto, ws->protocol) != 0)) {
        ws->why = "101 without the subprotocol asked for";
        return BENCH_WS_BROKEN;
    }
    *used = (size_t)(end - buf);
    ws->state = BENCH_WS_OPEN;
    return BENCH_WS_AGAIN;
}

/* ------------------------------------------------------------------ frames */

void bench_ws_queue(bench_ws *ws, int opcode, const char *payload, size_t len)
{
    if (ws->tx_off == ws->tx_len)
        ws->tx_off = ws->tx_len = 0;
    grow(&ws->tx, &ws->tx_cap, (size_t)ws->tx_len + len + 14);
    unsigned char *p = (unsigned char *)ws->tx + ws->tx_len;
    size_t h = 0;
    p[h++] = (unsigned char)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        p[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        p[h++] = 0x80 | 126;
        p[h++] = (unsigned char)(len >> 8);
        p[h++] = (unsigned char)len;
    } else {
        p[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            p[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    uint32_t mask = next_rand(ws);
    unsigned char m[4];
    memcpy(m, &mask, 4);
    memcpy(p + h, m, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        p[h + i] = (unsigned char)payload[i] ^ m[i & 3];
    ws->tx_len += (uint32_t)(h + len);
}

/* One control frame from the server. Returns BENCH_WS_EOF after a close. */
static bench_ws_event on_control(bench_ws *ws, int opcode, const unsigned char *payload, size_t len)
{
    if (opcode == BENCH_WS_OP_PING) {
        bench_ws_queue(ws, BENCH_WS_OP_PONG, (const char *)payload, len);
        return BENCH_WS_AGAIN;
    }
    if (opcode == BENCH_WS_OP_CLOSE) {
        ws->close_code = len >= 2 ? (uint16_t)(payload[0] << 8 | payload[1]) : 1005;
        unsigned char reply[2] = {(unsigned char)(ws->close_code >> 8), (unsigned char)ws->close_code};
        bench_ws_queue(ws, BENCH_WS_OP_CLOSE, (const char *)reply, len >= 2 ? 2 : 0);
        bench_ws_flush(ws);
        ws->why = "closed by the server";
        return BENCH_WS_EOF;
    }
    return BENCH_WS_AGAIN; /* pong */
}

/* Parses whole frames from buf[0..len); *used = bytes consumed. */
static bench_ws_event parse_frames(bench_ws *ws, char *buf, size_t len, size_t *used, bench_ws_message_fn on_message,
                                   void *ctx)
{
    size_t off = 0;
    bench_ws_event ev = BENCH_WS_AGAIN;
    while (ev == BENCH_WS_AGAIN && len - off >= 2) {
        unsigned char *p = (unsigned char *)buf + off;
        size_t avail = len - off;
        int fin = p[0] & 0x80, opcode = p[0] & 0x0f;
        bool masked = p[1] & 0x80;
        uint64_t plen = p[1] & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = (uint64_t)p[2] << 8 | p[3];
            h = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = plen << 8 | p[2 + i];
            h = 10;
        }
        if (plen > MAX_MESSAGE) {
            ws->why = "frame larger than 64 MiB";
            ev = BENCH_WS_BROKEN;
            break;
        }
        if (masked)
            h += 4;
        if (avail < h + plen)
            break;
        unsigned char *payload = p + h;
        if (masked)
            for (uint64_t i = 0; i < plen; i++)
                payload[i] ^= p[h - 4 + (i & 3)];
        off += h + (size_t)plen;
        if (opcode >= 0x8) {
            if (!fin || plen > 125) {
                ws->why = "bad control frame";
                ev = BENCH_WS_BROKEN;
            } else {
                ev = on_control(ws, opcode, payload, (size_t)plen);
            }
            continue;
        }
        if (opcode == BENCH_WS_OP_CONT) {
            if (ws->frag_op == 0) {
                ws->why = "continuation without a first fragment";
                ev = BENCH_WS_BROKEN;
                continue;
            }
        } else if (opcode == BENCH_WS_OP_TEXT || opcode == BENCH_WS_OP_BINARY) {
            if (ws->frag_op != 0) {
                ws->why = "new message inside a fragmented one";
                ev = BENCH_WS_BROKEN;
                continue;
            }
            if (fin) {
                on_message(ctx, opcode, (const char *)payload, (size_t)plen);
                continue;
            }
            ws->frag_op = (uint8_t)opcode;
            ws->frag_len = 0;
        } else {
            ws->why = "unknown opcode";
            ev = BENCH_WS_BROKEN;
            continue;
        }
        if ((uint64_t)ws->frag_len + plen > MAX_MESSAGE) {
            ws->why = "message larger than 64 MiB";
            ev = BENCH_WS_BROKEN;
            continue;
        }
        grow(&ws->frag, &ws->frag_cap, ws->frag_len + (size_t)plen);
        memcpy(ws->frag + ws->frag_len, payload, (size_t)plen);
        ws->frag_len += (uint32_t)plen;
        if (fin) {
            int op = ws->frag_op;
            ws->frag_op = 0;
            on_message(ctx, op, ws->frag, ws->frag_len);
            free(ws->frag);
            ws->frag = NULL;
            ws->frag_len = ws->frag_cap = 0;
        }
    }
    *used = off;
    return ev;
}

/* Parses buf[0..len) (the head first while upgrading). *used = bytes consumed. */
static bench_ws_event consume(bench_ws *ws, char *buf, size_t len, size_t *used, bench_ws_message_fn on_message,
                              void *ctx)
{
    size_t off = 0;
    *used = 0;
    if (ws->state == BENCH_WS_UPGRADING) {
        bench_ws_event ev = parse_head(ws, buf, len, &off);
        if (ev != BENCH_WS_AGAIN || off == 0)
            return ev;
    }
    size_t n = 0;
    bench_ws_event ev = parse_frames(ws, buf + off, len - off, &n, on_message, ctx);
    *used = off + n;
    return ev;
}

bench_ws_event bench_ws_read(bench_ws *ws, char *scratch, size_t scratch_size, bench_ws_message_fn on_message,
                             void *ctx)
{
    for (int round = 0; round < READ_ROUNDS; round++) {
        ssize_t n = recv(ws->fd, scratch, scratch_size, 0);
        if (n == 0) {
            ws->why = "connection closed by the peer";
            return BENCH_WS_EOF;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return BENCH_WS_AGAIN;
            ws->why = errno == ECONNRESET ? "connection reset by the peer" : "recv failed";
            return BENCH_WS_EOF;
        }
        size_t used = 0;
        bench_ws_event ev;
        if (ws->rx_len > 0) {
            grow(&ws->rx, &ws->rx_cap, (size_t)ws->rx_len + (size_t)n);
            memcpy(ws->rx + ws->rx_len, scratch, (size_t)n);
            ws->rx_len += (uint32_t)n;
            ev = consume(ws, ws->rx, ws->rx_len, &used, on_message, ctx);
            if (ev != BENCH_WS_AGAIN)
                return ev;
            memmove(ws->rx, ws->rx + used, ws->rx_len - used);
            ws->rx_len -= (uint32_t)used;
        } else {
            ev = consume(ws, scratch, (size_t)n, &used, on_message, ctx);
            if (ev != BENCH_WS_AGAIN)
                return ev;
            if (used < (size_t)n) {
                grow(&ws->rx, &ws->rx_cap, (size_t)n - used);
                memcpy(ws->rx, scratch + used, (size_t)n - used);
                ws->rx_len = (uint32_t)((size_t)n - used);
            }
        }
        if (ws->rx_len == 0 && ws->rx_cap > 0) {
            free(ws->rx);
            ws->rx = NULL;
            ws->rx_cap = 0;
        }
        if ((size_t)n < scratch_size)
            return BENCH_WS_AGAIN;
    }
    return BENCH_WS_AGAIN;
}

int bench_ws_flush(bench_ws *ws)
{
    while (ws->tx_off < ws->tx_len) {
        ssize_t n = send(ws->fd, ws->tx + ws->tx_off, ws->tx_len - ws->tx_off, MSG_NOSIGNAL);
        if (n > 0) {
            ws->tx_off += (uint32_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        ws->why = "send failed";
        return -1;
    }
    ws->tx_off = ws->tx_len = 0;
    if (ws->tx_cap > TX_KEEP) {
        free(ws->tx);
        ws->tx = NULL;
        ws->tx_cap = 0;
    }
    return 0;
}

void bench_ws_abort(bench_ws *ws, bool reset)
{
    if (ws == NULL)
        return;
    if (ws->fd >= 0) {
        if (reset) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(ws->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(ws->fd);
    }
    ws->fd = -1;
    free(ws->rx);
    free(ws->tx);
    free(ws->frag);
    ws->rx = ws->tx = ws->frag = NULL;
    ws->rx_len = ws->rx_cap = ws->tx_off = ws->tx_len = ws->tx_cap = ws->frag_len = ws->frag_cap = 0;
    ws->frag_op = 0;
    ws->state = BENCH_WS_CLOSED;
}

void bench_ws_reset(bench_ws *ws)
{
    bench_ws_abort(ws, false);
    ws->state = BENCH_WS_IDLE;
    ws->http_status = 0;
    ws->close_code = 0;
    ws->why = NULL;
}
