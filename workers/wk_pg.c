/* PostgreSQL connection, statement and transaction helpers and the failure classifier (wk_pg.h).
 * Each worker thread owns its own PGconn. */
#include "wk_pg.h"

#include <stdio.h>
#include <string.h>

#include "chat_log.h"

chat_status wk_pg_connect(const char *dsn, const char *name, PGconn **out)
{
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {dsn, "5", name, NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(pg) != CONNECTION_OK) {
        char err[512];
        snprintf(err, sizeof err, "%s", PQerrorMessage(pg));
        chat_log_clean(err);
        LOG_ERROR(name, "event=pg_connect_failed setting=CHAT_PG_DSN detail=\"%s\"", err);
        PQfinish(pg);
        return CHAT_ERR_UNAVAILABLE;
    }
    *out = pg;
    return CHAT_OK;
}

bool wk_pg_exec(PGconn *pg, const char *sql, ExecStatusType expect, const char *what)
{
    PGresult *r = PQexec(pg, sql);
    bool ok = PQresultStatus(r) == expect;
    if (!ok) {
        char err[512];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
        chat_log_clean(err);
        LOG_ERROR("pg", "event=sql_failed what=%s detail=\"%s\"", what, err);
    }
    PQclear(r);
    return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* Failures                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static bool state_is(const char *state, const char *prefix)
{
    return strncmp(state, prefix, strlen(prefix)) == 0;
}

wk_pg_failure wk_pg_failure_of(const char *state)
{
    if (state == NULL || state[0] == '\0')
        return WK_PG_OTHER;
    /* 57P01 admin shutdown, 57P05 idle session timeout, 08xxx connection: the session is gone */
    if (state_is(state, "08") || strcmp(state, "57P01") == 0 || strcmp(state, "57P05") == 0)
        return WK_PG_GONE;
    if (state_is(state, "57P"))
        return WK_PG_SHUTDOWN;
    if (strcmp(state, "57014") == 0 || strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
        strcmp(state, "55P03") == 0)
        return WK_PG_BUSY;
    if (state_is(state, "22") || state_is(state, "23") || state_is(state, "54"))
        return WK_PG_DATA;
    return WK_PG_OTHER;
}

void wk_pg_error_of(PGconn *pg, const PGresult *r, wk_pg_error *err)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    snprintf(err->sqlstate, sizeof err->sqlstate, "%s", state ? state : "");
    const char *msg = PQresultErrorMessage(r);
    snprintf(err->detail, sizeof err->detail, "%s", msg[0] ? msg : PQerrorMessage(pg));
    chat_log_clean(err->detail);
    err->failure = PQstatus(pg) != CONNECTION_OK ? WK_PG_GONE : wk_pg_failure_of(state);
}

/* ------------------------------------------------------------------------------------------ */
/* Statements and transactions                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* r when its status is expect; else NULL, r cleared and *err filled. */
static PGresult *expect_result(PGconn *pg, PGresult *r, ExecStatusType expect, wk_pg_error *err)
{
    if (PQresultStatus(r) == expect)
        return r;
    wk_pg_error_of(pg, r, err);
    PQclear(r);
    return NULL;
}

PGresult *wk_pg_run(PGconn *pg, const char *sql, int n, const char *const *params, ExecStatusType expect,
                    wk_pg_error *err)
{
    return expect_result(pg, PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0), expect, err);
}

PGresult *wk_pg_run_prepared(PGconn *pg, const char *name, int n, const char *const *params, ExecStatusType expect,
                             wk_pg_error *err)
{
    return expect_result(pg, PQexecPrepared(pg, name, n, params, NULL, NULL, 0), expect, err);
}

/* A transaction command (simple protocol): true when it ran. */
static bool command(PGconn *pg, const char *sql, wk_pg_error *err)
{
    PGresult *r = expect_result(pg, PQexec(pg, sql), PGRES_COMMAND_OK, err);
    PQclear(r);
    return r != NULL;
}

bool wk_pg_begin(PGconn *pg, wk_pg_error *err)
{
    return command(pg, "BEGIN", err);
}

bool wk_pg_commit(PGconn *pg, wk_pg_error *err)
{
    return command(pg, "COMMIT", err);
}

bool wk_pg_rollback(PGconn *pg)
{
    wk_pg_error ignored;
    return command(pg, "ROLLBACK", &ignored);
}
