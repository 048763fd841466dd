/* chat_redact_url and chat_redact_dsn: what a printed connection string may show. Pure; any thread. */
#include "chat_redact.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <libpq-fe.h>

/* Appends len bytes of text to out[*used..size), keeping out terminated; drops what does not fit. */
static void put(char *out, size_t size, size_t *used, const char *text, size_t len)
{
    if (*used + 1 >= size)
        return;
    size_t room = size - 1 - *used;
    if (len > room)
        len = room;
    memcpy(out + *used, text, len);
    *used += len;
    out[*used] = '\0';
}

/* Whether a query parameter's name (len bytes) names a secret. */
static bool secret_name(const char *name, size_t len)
{
    static const char *words[] = {"pass", "token", "secret", "key", "sig", "auth"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        size_t w = strlen(words[i]);
        for (size_t j = 0; j + w <= len; j++)
            if (strncasecmp(name + j, words[i], w) == 0)
                return true;
    }
    return false;
}

/* The query of one URL (from after '?' to end), each secret value as ***. */
static void put_query(char *out, size_t size, size_t *used, const char *q, const char *end)
{
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(stop - q));
        if (eq && secret_name(q, (size_t)(eq - q))) {
            put(out, size, used, q, (size_t)(eq + 1 - q));
            put(out, size, used, "***", 3);
        } else {
            put(out, size, used, q, (size_t)(stop - q));
        }
        if (amp)
            put(out, size, used, "&", 1);
        q = amp ? amp + 1 : end;
    }
}

/* One URL of len bytes. The user information ends at the last '@' before the path. */
static void put_url(char *out, size_t size, size_t *used, const char *url, const char *end)
{
    const char *scheme = strstr(url, "://");
    const char *auth = scheme && scheme < end ? scheme + 3 : url;
    const char *path = auth;
    while (path < end && *path != '/' && *path != '?' && *path != '#')
        path++;
    const char *at = NULL;
    for (const char *p = auth; p < path; p++)
        if (*p == '@')
            at = p;
    if (at) {
        put(out, size, used, url, (size_t)(auth - url));
        put(out, size, used, "***", 3);
        url = at;
    }
    const char *query = memchr(path, '?', (size_t)(end - path));
    if (query == NULL) {
        put(out, size, used, url, (size_t)(end - url));
        return;
    }
    const char *hash = memchr(query, '#', (size_t)(end - query));
    put(out, size, used, url, (size_t)(query + 1 - url));
    put_query(out, size, used, query + 1, hash ? hash : end);
    if (hash)
        put(out, size, used, hash, (size_t)(end - hash));
}

void chat_redact_url(const char *urls, char *out, size_t size)
{
    size_t used = 0;
    if (size == 0)
        return;
    out[0] = '\0';
    for (const char *p = urls; *p;) {
        const char *end = strchr(p, ',');
        if (end == NULL)
            end = p + strlen(p);
        put_url(out, size, &used, p, end);
        if (*end == '\0')
            break;
        put(out, size, &used, ",", 1);
        p = end + 1;
    }
}

/* A value as libpq's keyword=value syntax reads it back: bare when it has no space, quote or
 * backslash, else in single quotes with those escaped. */
static void put_dsn_value(char *out, size_t size, size_t *used, const char *v)
{
    bool bare = v[0] != '\0' && strpbrk(v, " \t\n'\\") == NULL;
    if (bare) {
        put(out, size, used, v, strlen(v));
        return;
    }
    put(out, size, used, "'", 1);
    for (; *v; v++) {
        if (*v == '\'' || *v == '\\')
            put(out, size, used, "\\", 1);
        put(out, size, used, v, 1);
    }
    put(out, size, used, "'", 1);
}

void chat_redact_dsn(const char *dsn, char *out, size_t size)
{
    size_t used = 0;
    if (size == 0)
        return;
    out[0] = '\0';
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(dsn, &err);
    PQfreemem(err); /* libpq's message quotes the string's pieces: never shown */
    if (opts == NULL) {
        const char *msg = "(malformed connection string, not shown)";
        put(out, size, &used, msg, strlen(msg));
        return;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (o->val == NULL)
            continue;
        if (used)
            put(out, size, &used, " ", 1);
        put(out, size, &used, o->keyword, strlen(o->keyword));
        put(out, size, &used, "=", 1);
        /* libpq marks its password-type options with dispchar "*" (password, sslpassword) */
        if (o->dispchar && o->dispchar[0] == '*')
            put(out, size, &used, "***", 3);
        else
            put_dsn_value(out, size, &used, o->val);
    }
    PQconninfoFree(opts);
}

/* Whether the len bytes at word are one of libpq's option names. */
static bool pq_keyword(const char *word, size_t len)
{
    PQconninfoOption *defs = PQconndefaults();
    bool found = false;
    for (PQconninfoOption *o = defs; o && o->keyword && !found; o++)
        found = strlen(o->keyword) == len && strncmp(o->keyword, word, len) == 0;
    PQconninfoFree(defs);
    return found;
}

void chat_redact_pq_message(const char *msg, char *out, size_t size)
{
    size_t used = 0;
    if (size == 0)
        return;
    out[0] = '\0';
    for (const char *p = msg; *p;) {
        const char *open = strchr(p, '"');
        const char *close = open ? strchr(open + 1, '"') : NULL;
        if (close == NULL) {
            put(out, size, &used, p, strlen(p));
            break;
        }
        size_t len = (size_t)(close - open - 1);
        put(out, size, &used, p, (size_t)(open + 1 - p));
        if (len <= 1 || pq_keyword(open + 1, len))
            put(out, size, &used, open + 1, len);
        else
            put(out, size, &used, "***", 3);
        put(out, size, &used, "\"", 1);
        p = close + 1;
    }
}
