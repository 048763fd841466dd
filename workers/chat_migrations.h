/* The SQL migrations compiled into chat-worker (generated from the migrations folder at build time),
 * in version order. */
#ifndef CHAT_MIGRATIONS_H
#define CHAT_MIGRATIONS_H

typedef struct chat_migration {
    const char *version; /* file name without .sql, e.g. "0001_core" */
    const char *sql;
} chat_migration;

extern const chat_migration chat_migrations[];
extern const int chat_migrations_count;

#endif
