/* Schema migrations: the numbered SQL files compiled into the binary, applied in order, each in
 * one transaction, under an advisory lock, recorded in schema_migrations. Safe to run twice and
 * from two processes at once (the second waits for the lock, then finds nothing to do). */
#ifndef WK_MIGRATE_H
#define WK_MIGRATE_H
#include "chat_status.h"

/* Applies every pending migration to the database at dsn; logs each one applied. */
chat_status wk_migrate_run(const char *dsn);

#endif
