/* PostgreSQL connection and result helpers. Each worker thread owns its own PGconn. */
#include "wk_pg.h"

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
        for (char *p = err; *p; p++)
            if (*p == '\n' || *p == '"')
                *p = ' ';
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
        for (char *p = err; *p; p++)
            if (*p == '\n' || *p == '"')
                *p = ' ';
        LOG_ERROR("pg", "event=sql_failed what=%s detail=\"%s\"", what, err);
    }
    PQclear(r);
    return ok;
}
