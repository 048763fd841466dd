/* A growable byte buffer for building text (SQL array literals, JSON frames). One owner thread.
 * Allocation failure aborts: every caller would have to give up anyway. */
#ifndef CHAT_BUF_H
#define CHAT_BUF_H
#include <stddef.h>

typedef struct chat_buf {
    char *data; /* NUL-terminated when len > 0 or after chat_buf_reset */
    size_t len, cap;
} chat_buf;

void chat_buf_reserve(chat_buf *b, size_t extra);
void chat_buf_append(chat_buf *b, const char *s, size_t n);
void chat_buf_puts(chat_buf *b, const char *s);
void chat_buf_putc(chat_buf *b, char c);
void chat_buf_printf(chat_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Empties the buffer, keeping its memory. */
void chat_buf_reset(chat_buf *b);
void chat_buf_free(chat_buf *b);

/* PostgreSQL array literals in text format: "{", then elements, then "}". */
void chat_buf_pg_array_begin(chat_buf *b);
/* Appends one element, quoted and escaped; NULL appends the SQL NULL element. */
void chat_buf_pg_array_str(chat_buf *b, const char *s);
void chat_buf_pg_array_end(chat_buf *b);

#endif
