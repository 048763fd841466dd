/* PostgreSQL helpers for the worker roles: connecting with a timeout, running a statement, a
 * transaction, and the one classifier of a failure by its SQLSTATE. Any thread, each on the
 * PGconn it owns. */
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

/* What a failed statement means, from its connection and SQLSTATE: one classifier for every
 * worker; each caller decides what a class means to it (the api role: GONE and SHUTDOWN
 * "unavailable", BUSY "try again", the rest "internal"; the ingest: GONE loses the lease, DATA
 * is poison, the rest is retried). */
typedef enum wk_pg_failure {
    WK_PG_GONE = 1, /* the session is over: the connection is lost (08xxx, or libpq says so), or the
                       server ended it (57P01 admin shutdown, 57P05 idle session timeout) */
    WK_PG_SHUTDOWN, /* another 57P: crash shutdown, cannot connect now, database dropped */
    WK_PG_BUSY,     /* a retry may succeed: 57014 statement timeout, 40001 serialization failure,
                       40P01 deadlock, 55P03 lock not available */
    WK_PG_DATA,     /* what the statement's values cause: 22 data exception (an encoding, a bad
                       value), 23 integrity constraint, 54 program limit (a row too large) */
    WK_PG_OTHER,    /* the database's state (53 disk full or out of memory, 25 read-only, 55, 58,
                       XX) or a mistake of ours */
} wk_pg_failure;

/* The class of a failure by its SQLSTATE alone (NULL or "": none sent). Pure. */
wk_pg_failure wk_pg_failure_of(const char *sqlstate);

/* A failed statement: its class, SQLSTATE and message. */
typedef struct wk_pg_error {
    wk_pg_failure failure;
    char sqlstate[6]; /* "" when the server sent none */
    char detail[512]; /* the result's message, else the connection's; newlines and quotes blanked */
} wk_pg_error;

/* Fills *err from a failed result r (may be NULL) on pg: WK_PG_GONE whenever pg is no longer
 * connected, else wk_pg_failure_of(its SQLSTATE). */
void wk_pg_error_of(PGconn *pg, const PGresult *r, wk_pg_error *err);

/* Runs sql with n text parameters (extended protocol; params NULL when n is 0). The result when
 * its status is `expect` (the caller PQclears it); else NULL with the result cleared and *err
 * filled. */
PGresult *wk_pg_run(PGconn *pg, const char *sql, int n, const char *const *params, ExecStatusType expect,
                    wk_pg_error *err);

/* The same for the statement prepared on pg as `name`. */
PGresult *wk_pg_run_prepared(PGconn *pg, const char *name, int n, const char *const *params, ExecStatusType expect,
                             wk_pg_error *err);

/* BEGIN and COMMIT: true when PostgreSQL took them, else false with *err filled. */
bool wk_pg_begin(PGconn *pg, wk_pg_error *err);
bool wk_pg_commit(PGconn *pg, wk_pg_error *err);

/* ROLLBACK of the open transaction: true when PostgreSQL took it (a caller that gets false may
 * no longer trust the connection). */
bool wk_pg_rollback(PGconn *pg);

#endif
