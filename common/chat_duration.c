/* Duration parsing and formatting. */
#include "chat_duration.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *unit;
    int64_t ms;
} units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}, {"w", 604800000},
};

chat_status chat_duration_parse(const char *text, int64_t *out_ms)
{
    if (text == NULL || *text == '\0')
        return CHAT_ERR_INVALID;
    int64_t total = 0;
    const char *p = text;
    while (*p) {
        if (!isdigit((unsigned char)*p))
            return CHAT_ERR_INVALID;
        int64_t n = 0;
        while (isdigit((unsigned char)*p)) {
            if (n > (INT64_MAX - 9) / 10)
                return CHAT_ERR_INVALID;
            n = n * 10 + (*p++ - '0');
        }
        size_t ulen = 0;
        while (isalpha((unsigned char)p[ulen]))
            ulen++;
        int64_t scale = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
            if (strlen(units[i].unit) == ulen && strncmp(p, units[i].unit, ulen) == 0)
                scale = units[i].ms;
        if (scale == 0)
            return CHAT_ERR_INVALID;
        if (n > (INT64_MAX - total) / scale)
            return CHAT_ERR_INVALID;
        total += n * scale;
        p += ulen;
    }
    if (total <= 0)
        return CHAT_ERR_INVALID;
    *out_ms = total;
    return CHAT_OK;
}

void chat_duration_format(int64_t ms, char *buf, size_t size)
{
    if (size == 0)
        return;
    buf[0] = '\0';
    if (ms <= 0) {
        snprintf(buf, size, "0ms");
        return;
    }
    size_t used = 0;
    for (int i = (int)(sizeof units / sizeof units[0]) - 1; i >= 0 && ms > 0; i--) {
        if (units[i].ms == 604800000)
            continue; /* prefer days: "14d" reads better than "2w" */
        int64_t n = ms / units[i].ms;
        if (n == 0)
            continue;
        ms -= n * units[i].ms;
        int w = snprintf(buf + used, size - used, "%lld%s", (long long)n, units[i].unit);
        if (w < 0 || (size_t)w >= size - used)
            return;
        used += (size_t)w;
    }
}
