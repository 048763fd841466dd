/* Growable buffer. */
#include "chat_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_status.h"

void chat_buf_reserve(chat_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->data = realloc(b->data, cap);
    if (b->data == NULL)
        CHAT_OOM();
    b->cap = cap;
}

void chat_buf_append(chat_buf *b, const char *s, size_t n)
{
    chat_buf_reserve(b, n);
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void chat_buf_puts(chat_buf *b, const char *s)
{
    chat_buf_append(b, s, strlen(s));
}

void chat_buf_putc(chat_buf *b, char c)
{
    chat_buf_append(b, &c, 1);
}

void chat_buf_printf(chat_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    chat_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void chat_buf_reset(chat_buf *b)
{
    b->len = 0;
    chat_buf_reserve(b, 0);
    b->data[0] = '\0';
}

void chat_buf_free(chat_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void chat_buf_pg_array_begin(chat_buf *b)
{
    chat_buf_putc(b, '{');
}

void chat_buf_pg_array_str(chat_buf *b, const char *s)
{
    if (b->len > 0 && b->data[b->len - 1] != '{')
        chat_buf_putc(b, ',');
    if (s == NULL) {
        chat_buf_puts(b, "NULL");
        return;
    }
    chat_buf_putc(b, '"');
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            chat_buf_putc(b, '\\');
        chat_buf_putc(b, *p);
    }
    chat_buf_putc(b, '"');
}

void chat_buf_pg_array_end(chat_buf *b)
{
    chat_buf_putc(b, '}');
}
