/* chat-bench: XMPP and Socket.IO scanners (see bench_peer.h). */
#include "bench_peer.h"

#include <string.h>

/* ------------------------------------------------------------------ XMPP */

static bool name_char(char c)
{
    return c != '\0' && c != ' ' && c != '\t' && c != '\r' && c != '\n' && c != '>' && c != '/' && c != '=';
}

static bool space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The start of the root element's tag ('<' of it), or NULL. */
static const char *root_tag(const char *text, size_t len)
{
    const char *p = text, *end = text + len;
    for (;;) {
        while (p < end && space(*p))
            p++;
        if (p + 1 >= end || *p != '<')
            return NULL;
        if (p[1] != '?')
            return p;
        const char *q = memchr(p, '>', (size_t)(end - p));
        if (q == NULL)
            return NULL;
        p = q + 1;
    }
}

bool bench_xml_root(const char *text, size_t len, const char **name, size_t *name_len)
{
    const char *p = root_tag(text, len), *end = text + len;
    if (p == NULL)
        return false;
    p++;
    const char *s = p;
    while (p < end && name_char(*p))
        p++;
    if (p == s)
        return false;
    *name = s;
    *name_len = (size_t)(p - s);
    return true;
}

bool bench_xml_attr(const char *text, size_t len, const char *attr, const char **val, size_t *val_len)
{
    const char *p = root_tag(text, len), *end = text + len;
    if (p == NULL)
        return false;
    size_t al = strlen(attr);
    p++;
    while (p < end && name_char(*p)) /* the element's name */
        p++;
    while (p < end) {
        while (p < end && space(*p))
            p++;
        if (p >= end || *p == '>' || *p == '/')
            return false;
        const char *an = p;
        while (p < end && name_char(*p))
            p++;
        size_t anl = (size_t)(p - an);
        while (p < end && space(*p))
            p++;
        if (p >= end || *p != '=')
            return false;
        p++;
        while (p < end && space(*p))
            p++;
        if (p >= end || (*p != '\'' && *p != '"'))
            return false;
        char q = *p++;
        const char *v = p;
        while (p < end && *p != q)
            p++;
        if (p >= end)
            return false;
        if (anl == al && memcmp(an, attr, al) == 0) {
            *val = v;
            *val_len = (size_t)(p - v);
            return true;
        }
        p++;
    }
    return false;
}

bool bench_mem_has(const char *text, size_t len, const char *needle)
{
    return memmem(text, len, needle, strlen(needle)) != NULL;
}

bool bench_xml_child_text(const char *text, size_t len, const char *child, const char **val, size_t *val_len)
{
    size_t cl = strlen(child);
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *lt = memchr(p, '<', (size_t)(end - p));
        if (lt == NULL || (size_t)(end - lt) < cl + 2)
            return false;
        p = lt + 1;
        if (memcmp(p, child, cl) != 0 || name_char(p[cl]))
            continue;
        const char *gt = memchr(p, '>', (size_t)(end - p));
        if (gt == NULL)
            return false;
        if (gt[-1] == '/') { /* <child/> */
            *val = gt + 1;
            *val_len = 0;
            return true;
        }
        const char *s = gt + 1;
        for (const char *q = s; q + cl + 3 <= end; q++) {
            if (q[0] == '<' && q[1] == '/' && memcmp(q + 2, child, cl) == 0 && q[2 + cl] == '>') {
                *val = s;
                *val_len = (size_t)(q - s);
                return true;
            }
        }
        return false;
    }
    return false;
}

bool bench_sasl_plain(const char *user, const char *password, char *out, size_t size)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char raw[256];
    size_t ul = strlen(user), pl = strlen(password);
    if (ul + pl + 2 > sizeof raw)
        return false;
    raw[0] = '\0';
    memcpy(raw + 1, user, ul);
    raw[1 + ul] = '\0';
    memcpy(raw + 2 + ul, password, pl);
    size_t len = ul + pl + 2, o = 0;
    if ((len + 2) / 3 * 4 + 1 > size)
        return false;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)raw[i] << 16 | (i + 1 < len ? (unsigned)raw[i + 1] << 8 : 0) |
                     (i + 2 < len ? raw[i + 2] : 0);
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
    return true;
}

/* ------------------------------------------------------------------ Socket.IO */

bool bench_sio_parse(const char *text, size_t len, bench_sio_packet *out)
{
    memset(out, 0, sizeof *out);
    if (len == 0)
        return false;
    switch (text[0]) {
    case '0':
        out->kind = BENCH_SIO_OPEN;
        return true;
    case '1':
        out->kind = BENCH_SIO_CLOSE;
        return true;
    case '2':
        out->kind = BENCH_SIO_PING;
        return true;
    case '3':
    case '5':
    case '6':
        out->kind = BENCH_SIO_OTHER;
        return true;
    case '4':
        break;
    default:
        return false;
    }
    if (len < 2)
        return false;
    const char *p = text + 2, *end = text + len;
    switch (text[1]) {
    case '0':
        out->kind = BENCH_SIO_CONNECTED;
        return true;
    case '1':
        out->kind = BENCH_SIO_DISCONNECT;
        return true;
    case '4':
        out->kind = BENCH_SIO_CONNECT_ERR;
        return true;
    case '2':
    case '3':
        break;
    default:
        out->kind = BENCH_SIO_OTHER;
        return true;
    }
    if (p < end && *p == '/') { /* a namespace other than "/": "/ns,"; ours never */
        const char *comma = memchr(p, ',', (size_t)(end - p));
        if (comma == NULL)
            return false;
        p = comma + 1;
    }
    uint64_t id = 0;
    bool has_id = false;
    while (p < end && *p >= '0' && *p <= '9') {
        id = id * 10 + (uint64_t)(*p - '0');
        has_id = true;
        p++;
    }
    if (p >= end || *p != '[' || end[-1] != ']')
        return false;
    out->ack_id = id;
    out->has_ack = has_id;
    if (text[1] == '3') {
        if (!has_id)
            return false;
        out->kind = BENCH_SIO_ACK;
        return true;
    }
    p++; /* "[" */
    if (p >= end || *p != '"')
        return false;
    const char *n = ++p;
    while (p < end && *p != '"' && *p != '\\')
        p++;
    if (p >= end || *p != '"')
        return false;
    out->name = n;
    out->name_len = (size_t)(p - n);
    p++;
    out->kind = BENCH_SIO_EVENT;
    if (p < end - 1 && *p == ',') {
        out->data = p + 1;
        out->data_len = (size_t)(end - 1 - (p + 1));
    }
    return true;
}
