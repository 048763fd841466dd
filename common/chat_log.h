/* Logging: one line per event, "ts=... level=... comp=... key=value ...", to stderr.
 * Any thread; a line is written with one write(2) so lines never interleave.
 * The macros skip formatting entirely below the current level. */
#ifndef CHAT_LOG_H
#define CHAT_LOG_H

typedef enum chat_log_level {
    CHAT_LOG_ERROR = 0,
    CHAT_LOG_WARN,
    CHAT_LOG_INFO,
    CHAT_LOG_DEBUG,
} chat_log_level;

extern int chat_log_current; /* set once at start by chat_log_set_level; read-only after */

void chat_log_set_level(chat_log_level level);
/* Parses "error|warn|info|debug"; returns -1 when unknown. */
int chat_log_level_parse(const char *name);
/* fmt continues the line with key=value fields, e.g. "event=listening addr=%s". */
void chat_log_write(chat_log_level level, const char *comp, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Makes s safe inside a quoted log field (key="..."), in place: every newline, carriage return,
 * tab and double quote becomes a space, so a line is never split and its quoting never broken.
 * s is borrowed and must be NUL-terminated; any thread. */
void chat_log_clean(char *s);

#define CHAT_LOG(level, comp, ...) \
    do { \
        if ((int)(level) <= chat_log_current) \
            chat_log_write((level), (comp), __VA_ARGS__); \
    } while (0)
#define LOG_ERROR(comp, ...) CHAT_LOG(CHAT_LOG_ERROR, comp, __VA_ARGS__)
#define LOG_WARN(comp, ...) CHAT_LOG(CHAT_LOG_WARN, comp, __VA_ARGS__)
#define LOG_INFO(comp, ...) CHAT_LOG(CHAT_LOG_INFO, comp, __VA_ARGS__)
#define LOG_DEBUG(comp, ...) CHAT_LOG(CHAT_LOG_DEBUG, comp, __VA_ARGS__)

#endif
