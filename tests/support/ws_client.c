/* The test WebSocket client (RFC 6455, plain TCP). The socket is non-blocking and every wait is a
 * poll(2) with a deadline. Received bytes go into rx; frames are parsed from rx only when a
 * whole frame is there. WS_TRACE=1 in the environment prints every message to stderr. */
#include "ws_client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/sha.h>

#define RX_CHUNK 65536
#define MAX_MESSAGE (64u << 20) /* a runaway server cannot eat the test's memory */
#define MAX_HTTP_HEAD 16384
#define SEND_TIMEOUT_MS 30000

struct ws_client {
    int fd;
    char *rx; /* received, not yet parsed bytes: rx[rx_off .. rx_len) */
    size_t rx_len, rx_cap, rx_off;
    char *frag; /* a fragmented message being reassembled */
    size_t frag_len, frag_cap;
    int frag_opcode; /* 0: no fragmented message in progress */
    bool eof;        /* the server closed its side */
    bool close_sent;
    bool close_received;
    bool close_returned;
    int close_code;
    unsigned long pings;
    bool trace;
    char error[256];
};

/* ------------------------------------------------------------------ small helpers */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until deadline (-1 = forever) for poll. */
static int left_ms(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - mono_ms();
    return left < 0 ? 0 : (int)left;
}

static int64_t deadline_of(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
}

static void set_error(ws_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(ws_client *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
}

static void random_bytes(void *buf, size_t len)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* no entropy source: a test mask need not be secret */
            for (size_t i = 0; i < len; i++)
                p[i] = (unsigned char)rand();
            return;
        }
        p += n;
        len -= (size_t)n;
    }
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

/* True when s[0..len) is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
static bool utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char b = s[i];
        size_t n;
        uint32_t cp;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xe0) == 0xc0) {
            n = 1, cp = b & 0x1f;
        } else if ((b & 0xf0) == 0xe0) {
            n = 2, cp = b & 0x0f;
        } else if ((b & 0xf8) == 0xf0) {
            n = 3, cp = b & 0x07;
        } else {
            return false;
        }
        if (i + n >= len)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

static void trace_message(const ws_client *c, const char *dir, int opcode, const char *data, size_t len)
{
    if (!c->trace)
        return;
    int shown = len > 400 ? 400 : (int)len;
    if (opcode != WS_OP_TEXT)
        shown = 0;
    fprintf(stderr, "ws[%d] %s op=%d len=%zu %.*s%s\n", c->fd, dir, opcode, len, shown, data,
            shown && len > 400 ? "..." : "");
}

/* ------------------------------------------------------------------ socket I/O */

/* Reads what the socket has now into rx. CHAT_OK (maybe nothing read), CHAT_ERR_IO on error.
 * EOF sets c->eof. */
static chat_status fill_rx(ws_client *c)
{
    for (;;) {
        if (c->rx_off > 0 && c->rx_off == c->rx_len) {
            c->rx_off = c->rx_len = 0;
        } else if (c->rx_off > RX_CHUNK) {
            memmove(c->rx, c->rx + c->rx_off, c->rx_len - c->rx_off);
            c->rx_len -= c->rx_off;
            c->rx_off = 0;
        }
        if (c->rx_cap - c->rx_len < RX_CHUNK) {
            size_t cap = c->rx_cap ? c->rx_cap * 2 : 2 * RX_CHUNK;
            char *p = realloc(c->rx, cap);
            if (!p) {
                set_error(c, "out of memory");
                return CHAT_ERR_NOMEM;
            }
            c->rx = p;
            c->rx_cap = cap;
        }
        ssize_t n = recv(c->fd, c->rx + c->rx_len, c->rx_cap - c->rx_len, 0);
        if (n > 0) {
            c->rx_len += (size_t)n;
            if ((size_t)n < RX_CHUNK)
                return CHAT_OK;
            continue;
        }
        if (n == 0) {
            c->eof = true;
            return CHAT_OK;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return CHAT_OK;
        set_error(c, "recv: %s", strerror(errno));
        c->eof = true;
        return CHAT_ERR_IO;
    }
}

/* Writes all of buf before the deadline, reading into rx whenever the socket is readable. */
static chat_status write_all(ws_client *c, const void *buf, size_t len, int64_t deadline)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            set_error(c, "send: %s", strerror(errno));
            return CHAT_ERR_IO;
        }
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT | (c->eof ? 0 : POLLIN)};
        int r = poll(&pfd, 1, left_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            set_error(c, "poll: %s", strerror(errno));
            return CHAT_ERR_IO;
        }
        if (r == 0) {
            set_error(c, "send: timed out with %zu bytes left", len);
            return CHAT_ERR_TIMEOUT;
        }
        if (pfd.revents & POLLIN) {
            chat_status st = fill_rx(c);
            if (st != CHAT_OK)
                return st;
        }
    }
    return CHAT_OK;
}

/* Waits until the socket is readable, then reads. CHAT_ERR_TIMEOUT at the deadline. */
static chat_status wait_and_fill(ws_client *c, int64_t deadline)
{
    for (;;) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        int r = poll(&pfd, 1, left_ms(deadline));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            set_error(c, "poll: %s", strerror(errno));
            return CHAT_ERR_IO;
        }
        if (r == 0)
            return CHAT_ERR_TIMEOUT;
        return fill_rx(c);
    }
}

/* ------------------------------------------------------------------ connect and upgrade */

static chat_status tcp_connect(ws_client *c, const char *host, int port, int64_t deadline)
{
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, portstr, &hints, &res);
    if (rc != 0) {
        set_error(c, "resolve %s: %s", host, gai_strerror(rc));
        return CHAT_ERR_IO;
    }
    chat_status st = CHAT_ERR_IO;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            set_error(c, "socket: %s", strerror(errno));
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            set_error(c, "connect %s:%d: %s", host, port, strerror(errno));
            close(fd);
            continue;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int r;
        do
            r = poll(&pfd, 1, left_ms(deadline));
        while (r < 0 && errno == EINTR);
        if (r == 0) {
            set_error(c, "connect %s:%d: timed out", host, port);
            close(fd);
            st = CHAT_ERR_TIMEOUT;
            break;
        }
        int err = 0;
        socklen_t errlen = sizeof err;
        if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0 || err != 0) {
            set_error(c, "connect %s:%d: %s", host, port, strerror(err ? err : errno));
            close(fd);
            continue;
        }
        c->fd = fd;
        st = CHAT_OK;
        break;
    }
    freeaddrinfo(res);
    return st;
}

/* Appends s percent-encoded (everything but RFC 3986 unreserved characters). */
static void url_escape(const char *s, char *out, size_t outsz)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && o + 4 < outsz; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' ||
            *p == '_' || *p == '.' || *p == '~') {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
}

/* The value of header name in the response head (CRLF lines), copied into out; false if absent. */
static bool header_value(const char *head, const char *name, char *out, size_t outsz)
{
    size_t nlen = strlen(name);
    const char *line = strstr(head, "\r\n");
    while (line) {
        line += 2;
        if (strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *end = strstr(v, "\r\n");
            size_t vlen = end ? (size_t)(end - v) : strlen(v);
            while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
                vlen--;
            if (vlen >= outsz)
                vlen = outsz - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return true;
        }
        line = strstr(line, "\r\n");
    }
    return false;
}

/* True when the comma separated list has token (case-insensitive). */
static bool list_has(const char *list, const char *token)
{
    size_t tlen = strlen(token);
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '\t')
            p++;
        const char *end = p;
        while (*end && *end != ',')
            end++;
        size_t len = (size_t)(end - p);
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len == tlen && strncasecmp(p, token, tlen) == 0)
            return true;
        p = end;
    }
    return false;
}

static chat_status upgrade(ws_client *c, const ws_connect_opts *o, int64_t deadline, ws_connect_info *info)
{
    unsigned char keyraw[16];
    char key[32];
    random_bytes(keyraw, sizeof keyraw);
    base64(keyraw, sizeof keyraw, key);

    size_t cap = 8192 + strlen(o->path) + (o->token ? 3 * strlen(o->token) : 0);
    for (const char *const *h = o->headers; h && *h; h++)
        cap += strlen(*h) + 2;
    char *req = malloc(cap);
    char *tok = o->token ? malloc(3 * strlen(o->token) + 1) : NULL;
    if (!req || (o->token && !tok)) {
        free(req);
        free(tok);
        set_error(c, "out of memory");
        return CHAT_ERR_NOMEM;
    }
    size_t n = 0;
    n += (size_t)snprintf(req + n, cap - n, "GET %s", o->path);
    if (tok) {
        url_escape(o->token, tok, 3 * strlen(o->token) + 1);
        n += (size_t)snprintf(req + n, cap - n, "%ctoken=%s", strchr(o->path, '?') ? '&' : '?', tok);
    }
    n += (size_t)snprintf(req + n, cap - n,
                          " HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                          o->host, o->port, key);
    for (const char *const *h = o->headers; h && *h; h++)
        n += (size_t)snprintf(req + n, cap - n, "%s\r\n", *h);
    n += (size_t)snprintf(req + n, cap - n, "\r\n");
    free(tok);
    chat_status st = write_all(c, req, n, deadline);
    free(req);
    if (st != CHAT_OK)
        return st;

    /* the response head */
    char *end = NULL;
    for (;;) {
        if (c->rx_len > 0) {
            end = memmem(c->rx, c->rx_len, "\r\n\r\n", 4);
            if (end)
                break;
        }
        if (c->rx_len > MAX_HTTP_HEAD) {
            set_error(c, "upgrade answer: no end of the head in %d bytes", MAX_HTTP_HEAD);
            return CHAT_ERR_INVALID;
        }
        if (c->eof) {
            set_error(c, "upgrade answer: connection closed after %zu bytes", c->rx_len);
            return CHAT_ERR_IO;
        }
        st = wait_and_fill(c, deadline);
        if (st == CHAT_ERR_TIMEOUT)
            set_error(c, "upgrade answer: timed out after %zu bytes", c->rx_len);
        if (st != CHAT_OK)
            return st;
    }
    size_t head_len = (size_t)(end - c->rx) + 4;
    char *head = malloc(head_len + 1);
    if (!head) {
        set_error(c, "out of memory");
        return CHAT_ERR_NOMEM;
    }
    memcpy(head, c->rx, head_len);
    head[head_len] = '\0';
    c->rx_off = head_len;

    int status = 0;
    if (sscanf(head, "HTTP/1.%*d %d", &status) != 1) {
        set_error(c, "upgrade answer: bad status line: %.60s", head);
        free(head);
        return CHAT_ERR_INVALID;
    }
    if (info)
        info->http_status = status;
    char value[256];
    if (status != 101) {
        /* collect the body for the test's message: Content-Length bytes, or what comes soon */
        size_t want = 512;
        if (header_value(head, "Content-Length", value, sizeof value))
            want = (size_t)strtoul(value, NULL, 10);
        if (want > sizeof info->body - 1)
            want = sizeof info->body - 1;
        int64_t body_deadline = mono_ms() + 1000;
        if (deadline >= 0 && deadline < body_deadline)
            body_deadline = deadline;
        while (c->rx_len - c->rx_off < want && !c->eof)
            if (wait_and_fill(c, body_deadline) != CHAT_OK)
                break;
        if (info) {
            size_t blen = c->rx_len - c->rx_off;
            if (blen > sizeof info->body - 1)
                blen = sizeof info->body - 1;
            memcpy(info->body, c->rx + c->rx_off, blen);
            info->body[blen] = '\0';
        }
        set_error(c, "upgrade refused with HTTP %d", status);
        free(head);
        return CHAT_ERR_DENIED;
    }

    /* 101: the rules of RFC 6455 section 4.1 */
    st = CHAT_OK;
    if (!header_value(head, "Upgrade", value, sizeof value) || strcasecmp(value, "websocket") != 0) {
        set_error(c, "101 without \"Upgrade: websocket\"");
        st = CHAT_ERR_INVALID;
    } else if (!header_value(head, "Connection", value, sizeof value) || !list_has(value, "upgrade")) {
        set_error(c, "101 without \"Connection: Upgrade\"");
        st = CHAT_ERR_INVALID;
    } else {
        char concat[96], expect[64];
        unsigned char sha[SHA_DIGEST_LENGTH];
        snprintf(concat, sizeof concat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
        SHA1((const unsigned char *)concat, strlen(concat), sha);
        base64(sha, sizeof sha, expect);
        if (!header_value(head, "Sec-WebSocket-Accept", value, sizeof value) || strcmp(value, expect) != 0) {
            set_error(c, "101 with a wrong Sec-WebSocket-Accept (want %s)", expect);
            st = CHAT_ERR_INVALID;
        } else if (header_value(head, "Sec-WebSocket-Extensions", value, sizeof value) && value[0]) {
            set_error(c, "101 with extensions nobody asked for: %s", value);
            st = CHAT_ERR_INVALID;
        }
    }
    free(head);
    return st;
}

chat_status ws_client_connect(const ws_connect_opts *opts, ws_client **out, ws_connect_info *info)
{
    if (info)
        memset(info, 0, sizeof *info);
    ws_client *c = calloc(1, sizeof *c);
    if (!c) {
        if (info)
            snprintf(info->error, sizeof info->error, "out of memory");
        return CHAT_ERR_NOMEM;
    }
    c->fd = -1;
    const char *trace = getenv("WS_TRACE");
    c->trace = trace && trace[0] && strcmp(trace, "0") != 0;
    int64_t deadline = mono_ms() + (opts->timeout_ms > 0 ? opts->timeout_ms : 10000);
    chat_status st = tcp_connect(c, opts->host, opts->port, deadline);
    if (st == CHAT_OK)
        st = upgrade(c, opts, deadline, info);
    if (st != CHAT_OK) {
        if (info)
            snprintf(info->error, sizeof info->error, "%s", c->error);
        ws_client_destroy(c);
        return st;
    }
    if (c->trace)
        fprintf(stderr, "ws[%d] connected to %s:%d%s\n", c->fd, opts->host, opts->port, opts->path);
    *out = c;
    return CHAT_OK;
}

void ws_client_destroy(ws_client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c->rx);
    free(c->frag);
    free(c);
}

int ws_client_fd(const ws_client *c)
{
    return c->fd;
}

/* ------------------------------------------------------------------ sending */

chat_status ws_client_send_raw(ws_client *c, const void *bytes, size_t len)
{
    return write_all(c, bytes, len, deadline_of(SEND_TIMEOUT_MS));
}

chat_status ws_client_send_frame(ws_client *c, uint8_t first_byte, bool masked, const void *payload, size_t len)
{
    size_t hlen = 2 + (len > 65535 ? 8 : len > 125 ? 2 : 0) + (masked ? 4 : 0);
    unsigned char *buf = malloc(hlen + len);
    if (!buf) {
        set_error(c, "out of memory");
        return CHAT_ERR_NOMEM;
    }
    size_t o = 0;
    buf[o++] = first_byte;
    unsigned char mbit = masked ? 0x80 : 0;
    if (len > 65535) {
        buf[o++] = mbit | 127;
        for (int i = 7; i >= 0; i--)
            buf[o++] = (unsigned char)((uint64_t)len >> (8 * i));
    } else if (len > 125) {
        buf[o++] = mbit | 126;
        buf[o++] = (unsigned char)(len >> 8);
        buf[o++] = (unsigned char)len;
    } else {
        buf[o++] = mbit | (unsigned char)len;
    }
    const unsigned char *src = payload;
    if (masked) {
        unsigned char mask[4];
        random_bytes(mask, sizeof mask);
        memcpy(buf + o, mask, 4);
        o += 4;
        for (size_t i = 0; i < len; i++)
            buf[o + i] = src[i] ^ mask[i & 3];
    } else if (len) {
        memcpy(buf + o, src, len);
    }
    trace_message(c, "->", first_byte & 0x0f, payload, len);
    chat_status st = write_all(c, buf, o + len, deadline_of(SEND_TIMEOUT_MS));
    free(buf);
    return st;
}

chat_status ws_client_send_text(ws_client *c, const char *text, size_t len)
{
    return ws_client_send_frame(c, WS_FIN | WS_OP_TEXT, true, text, len);
}

chat_status ws_client_send_json(ws_client *c, const json_t *frame)
{
    char *text = json_dumps(frame, JSON_COMPACT);
    if (!text) {
        set_error(c, "json_dumps failed");
        return CHAT_ERR_INVALID;
    }
    chat_status st = ws_client_send_text(c, text, strlen(text));
    free(text);
    return st;
}

chat_status ws_client_close(ws_client *c, int code, const char *reason)
{
    unsigned char payload[125];
    size_t len = 0;
    if (code > 0) {
        payload[0] = (unsigned char)(code >> 8);
        payload[1] = (unsigned char)code;
        len = 2;
        size_t rlen = reason ? strlen(reason) : 0;
        if (rlen > sizeof payload - 2)
            rlen = sizeof payload - 2;
        memcpy(payload + 2, reason, rlen);
        len += rlen;
    }
    c->close_sent = true;
    return ws_client_send_frame(c, WS_FIN | WS_OP_CLOSE, true, payload, len);
}

/* ------------------------------------------------------------------ receiving */

/* Parses one frame header at rx[rx_off]: true when the whole frame is buffered. */
static bool frame_complete(const ws_client *c, size_t *hlen_out, uint64_t *plen_out)
{
    size_t avail = c->rx_len - c->rx_off;
    const unsigned char *p = (const unsigned char *)c->rx + c->rx_off;
    if (avail < 2)
        return false;
    size_t hlen = 2 + ((p[1] & 0x80) ? 4 : 0);
    uint64_t plen = p[1] & 0x7f;
    if (plen == 126) {
        hlen += 2;
        if (avail < hlen)
            return false;
        plen = (uint64_t)p[2] << 8 | p[3];
    } else if (plen == 127) {
        hlen += 8;
        if (avail < hlen)
            return false;
        plen = 0;
        for (int i = 0; i < 8; i++)
            plen = plen << 8 | p[2 + i];
    }
    if (avail < hlen)
        return false;
    *hlen_out = hlen;
    *plen_out = plen;
    /* a length over the limit is "complete" so that the caller reports it */
    return plen > MAX_MESSAGE || avail - hlen >= plen;
}

bool ws_client_buffered(const ws_client *c)
{
    size_t hlen;
    uint64_t plen;
    return frame_complete(c, &hlen, &plen);
}

static chat_status append_frag(ws_client *c, const char *data, size_t len)
{
    if (c->frag_len + len > MAX_MESSAGE) {
        set_error(c, "message over %u bytes", MAX_MESSAGE);
        return CHAT_ERR_INVALID;
    }
    if (c->frag_cap < c->frag_len + len + 1) {
        size_t cap = c->frag_cap ? c->frag_cap : 4096;
        while (cap < c->frag_len + len + 1)
            cap *= 2;
        char *p = realloc(c->frag, cap);
        if (!p) {
            set_error(c, "out of memory");
            return CHAT_ERR_NOMEM;
        }
        c->frag = p;
        c->frag_cap = cap;
    }
    memcpy(c->frag + c->frag_len, data, len);
    c->frag_len += len;
    c->frag[c->frag_len] = '\0';
    return CHAT_OK;
}

/* Takes the next whole frame out of rx. CHAT_OK with *done true and *out set when it finished a
 * message (or was a close); CHAT_OK with *done false when it was a fragment or a ping/pong;
 * CHAT_ERR_TIMEOUT when no whole frame is buffered; CHAT_ERR_INVALID on a protocol violation. */
static chat_status take_frame(ws_client *c, ws_message *out, bool *done)
{
    size_t hlen;
    uint64_t plen;
    *done = false;
    if (!frame_complete(c, &hlen, &plen))
        return CHAT_ERR_TIMEOUT;
    const unsigned char *p = (const unsigned char *)c->rx + c->rx_off;
    bool fin = p[0] & 0x80;
    int rsv = p[0] & 0x70, opcode = p[0] & 0x0f;
    if (p[1] & 0x80) {
        set_error(c, "server frame is masked (RFC 6455 5.1)");
        return CHAT_ERR_INVALID;
    }
    if (rsv) {
        set_error(c, "server frame has RSV bits 0x%x without an extension", rsv);
        return CHAT_ERR_INVALID;
    }
    if (plen > MAX_MESSAGE) {
        set_error(c, "server frame of %llu bytes", (unsigned long long)plen);
        return CHAT_ERR_INVALID;
    }
    const char *payload = c->rx + c->rx_off + hlen;
    size_t len = (size_t)plen;
    c->rx_off += hlen + len;
    bool control = opcode & 0x8;
    if (control && (!fin || len > 125)) {
        set_error(c, "control frame %d %s", opcode, fin ? "over 125 bytes" : "fragmented");
        return CHAT_ERR_INVALID;
    }
    if (c->close_received) {
        set_error(c, "frame (opcode %d) after the close frame", opcode);
        return CHAT_ERR_INVALID;
    }
    switch (opcode) {
    case WS_OP_PING:
        c->pings++;
        if (!c->close_sent && !c->eof) {
            chat_status st = ws_client_send_frame(c, WS_FIN | WS_OP_PONG, true, payload, len);
            if (st != CHAT_OK)
                return st;
        }
        return CHAT_OK;
    case WS_OP_PONG: return CHAT_OK;
    case WS_OP_CLOSE: {
        int code = 1005;
        if (len == 1) {
            set_error(c, "close frame with a 1-byte payload");
            return CHAT_ERR_INVALID;
        }
        if (len >= 2)
            code = (unsigned char)payload[0] << 8 | (unsigned char)payload[1];
        c->close_received = true;
        c->close_code = code;
        out->opcode = WS_OP_CLOSE;
        out->close_code = code;
        out->len = len >= 2 ? len - 2 : 0;
        out->data = malloc(out->len + 1);
        if (!out->data)
            return CHAT_ERR_NOMEM;
        memcpy(out->data, payload + (len >= 2 ? 2 : 0), out->len);
        out->data[out->len] = '\0';
        if (c->trace)
            fprintf(stderr, "ws[%d] <- close %d \"%s\"\n", c->fd, code, out->data);
        if (!c->close_sent && !c->eof) {
            /* echo the code (RFC 6455 5.5.1); the write may fail if the server already left */
            unsigned char echo[2] = {(unsigned char)(code >> 8), (unsigned char)code};
            ws_client_send_frame(c, WS_FIN | WS_OP_CLOSE, true, echo, code == 1005 ? 0 : 2);
            c->close_sent = true;
        }
        *done = true;
        return CHAT_OK;
    }
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        if (c->frag_opcode) {
            set_error(c, "new data frame (opcode %d) inside a fragmented message", opcode);
            return CHAT_ERR_INVALID;
        }
        c->frag_len = 0;
        c->frag_opcode = opcode;
        break;
    case WS_OP_CONT:
        if (!c->frag_opcode) {
            set_error(c, "continuation frame without a message to continue");
            return CHAT_ERR_INVALID;
        }
        break;
    default: set_error(c, "unknown opcode %d", opcode); return CHAT_ERR_INVALID;
    }
    chat_status st = append_frag(c, payload, len);
    if (st != CHAT_OK)
        return st;
    if (!fin)
        return CHAT_OK;
    if (c->frag_opcode == WS_OP_TEXT && !utf8_valid((const unsigned char *)c->frag, c->frag_len)) {
        set_error(c, "text message that is not UTF-8");
        return CHAT_ERR_INVALID;
    }
    out->opcode = c->frag_opcode;
    out->close_code = 0;
    out->data = c->frag;
    out->len = c->frag_len;
    c->frag = NULL;
    c->frag_len = c->frag_cap = 0;
    c->frag_opcode = 0;
    if (!out->data) { /* an empty message */
        out->data = calloc(1, 1);
        if (!out->data)
            return CHAT_ERR_NOMEM;
    }
    trace_message(c, "<-", out->opcode, out->data, out->len);
    *done = true;
    return CHAT_OK;
}

chat_status ws_client_recv(ws_client *c, int timeout_ms, ws_message *out)
{
    memset(out, 0, sizeof *out);
    int64_t deadline = deadline_of(timeout_ms);
    bool tried_read = false;
    for (;;) {
        if (c->close_returned) {
            set_error(c, "connection closed (code %d)", c->close_code);
            return CHAT_ERR_IO;
        }
        bool done = false;
        chat_status st = take_frame(c, out, &done);
        if (st == CHAT_OK && done) {
            if (out->opcode == WS_OP_CLOSE)
                c->close_returned = true;
            return CHAT_OK;
        }
        if (st == CHAT_OK)
            continue;
        if (st != CHAT_ERR_TIMEOUT)
            return st;
        /* no whole frame buffered */
        if (c->eof) {
            set_error(c, "connection closed by the server without a close frame (%zu bytes left)",
                      c->rx_len - c->rx_off);
            c->close_returned = true;
            return CHAT_ERR_IO;
        }
        if (!tried_read || timeout_ms != 0) {
            tried_read = true;
            st = fill_rx(c);
            if (st != CHAT_OK)
                return st;
            if (ws_client_buffered(c) || c->eof)
                continue;
        }
        if (timeout_ms == 0)
            return CHAT_ERR_TIMEOUT;
        st = wait_and_fill(c, deadline);
        if (st != CHAT_OK)
            return st;
    }
}

chat_status ws_client_recv_json(ws_client *c, int timeout_ms, json_t **out)
{
    ws_message m;
    chat_status st = ws_client_recv(c, timeout_ms, &m);
    if (st != CHAT_OK)
        return st;
    if (m.opcode == WS_OP_CLOSE) {
        set_error(c, "close frame %d \"%s\"", m.close_code, m.data);
        ws_message_clear(&m);
        return CHAT_ERR_IO;
    }
    if (m.opcode != WS_OP_TEXT) {
        set_error(c, "binary message of %zu bytes where JSON text was expected", m.len);
        ws_message_clear(&m);
        return CHAT_ERR_INVALID;
    }
    json_error_t jerr;
    json_t *j = json_loadb(m.data, m.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        set_error(c, "text that is not JSON (%s): %.120s", jerr.text, m.data);
        ws_message_clear(&m);
        return CHAT_ERR_INVALID;
    }
    ws_message_clear(&m);
    *out = j;
    return CHAT_OK;
}

chat_status ws_client_shutdown(ws_client *c, int timeout_ms)
{
    if (!c)
        return CHAT_OK;
    chat_status st = CHAT_OK;
    if (!c->close_sent && !c->eof)
        st = ws_client_close(c, 1000, "");
    int64_t deadline = deadline_of(timeout_ms);
    while (st == CHAT_OK && !c->close_received) {
        ws_message m;
        st = ws_client_recv(c, left_ms(deadline), &m);
        if (st == CHAT_OK)
            ws_message_clear(&m);
    }
    ws_client_destroy(c);
    return st;
}

int ws_client_close_code(const ws_client *c)
{
    return c->close_code;
}

const char *ws_client_error(const ws_client *c)
{
    return c->error;
}

unsigned long ws_client_pings(const ws_client *c)
{
    return c->pings;
}

void ws_message_clear(ws_message *m)
{
    free(m->data);
    m->data = NULL;
    m->len = 0;
}
