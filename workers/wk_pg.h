/* PostgreSQL helpers for the worker roles: connecting with a timeout, checking results. */
#ifndef WK_PG_H
#define WK_PG_H
#include <stdbool.h>

#include <libpq-fe.h>

#include "chat_status.h"

/* Connects with a 5 s connect timeout; *out set only on CHAT_OK (CHAT_ERR_UNAVAILABLE and a log
 * line naming CHAT_PG_DSN otherwise). application_name is set to `name`. */
chat_status wk_pg_connect(const char *dsn, const char *name, PGconn **out);

/* Runs sql (no parameters); true when it returned `expect`; logs the server's error if not. */
bool wk_pg_exec(PGconn *pg, const char *sql, ExecStatusType expect, const char *what);

#endif
