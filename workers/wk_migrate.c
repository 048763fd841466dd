/* The migration runner. Main thread of `chat-worker migrate`, and of the worker at start. */
#include "wk_migrate.h"

#include <stdio.h>

#include "chat_log.h"
#include "chat_migrations.h"
#include "wk_pg.h"

#define MIGRATION_LOCK "SELECT pg_advisory_lock(hashtext('chat_migrations'))"
#define MIGRATION_UNLOCK "SELECT pg_advisory_unlock(hashtext('chat_migrations'))"

static int is_applied(PGconn *pg, const char *version)
{
    const char *params[] = {version};
    PGresult *r = PQexecParams(pg, "SELECT 1 FROM schema_migrations WHERE version = $1", 1, NULL, params,
                               NULL, NULL, 0);
    int applied = PQresultStatus(r) != PGRES_TUPLES_OK ? -1 : PQntuples(r) > 0;
    PQclear(r);
    return applied;
}

static chat_status apply(PGconn *pg, const chat_migration *m)
{
    if (!wk_pg_exec(pg, "BEGIN", PGRES_COMMAND_OK, "begin"))
        return CHAT_ERR_UNAVAILABLE;
    PGresult *res = PQexec(pg, m->sql); /* the status of the file's last statement */
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char err[512];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(res));
        chat_log_clean(err);
        LOG_ERROR("migrate", "event=sql_failed version=%s detail=\"%s\"", m->version, err);
        PQclear(res);
        wk_pg_exec(pg, "ROLLBACK", PGRES_COMMAND_OK, "rollback");
        return CHAT_ERR_INVALID;
    }
    PQclear(res);
    const char *params[] = {m->version};
    PGresult *r = PQexecParams(pg, "INSERT INTO schema_migrations (version) VALUES ($1)", 1, NULL, params,
                               NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!ok || !wk_pg_exec(pg, "COMMIT", PGRES_COMMAND_OK, "commit")) {
        wk_pg_exec(pg, "ROLLBACK", PGRES_COMMAND_OK, "rollback");
        return CHAT_ERR_INTERNAL;
    }
    return CHAT_OK;
}

chat_status wk_migrate_run(const char *dsn)
{
    PGconn *pg = NULL;
    chat_status st = wk_pg_connect(dsn, "migrate", &pg);
    if (st != CHAT_OK)
        return st;
    if (!wk_pg_exec(pg, MIGRATION_LOCK, PGRES_TUPLES_OK, "lock")) {
        PQfinish(pg);
        return CHAT_ERR_UNAVAILABLE;
    }
    st = wk_pg_exec(pg,
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                    PGRES_COMMAND_OK, "schema_migrations")
             ? CHAT_OK
             : CHAT_ERR_INTERNAL;
    int applied_now = 0;
    for (int i = 0; st == CHAT_OK && i < chat_migrations_count; i++) {
        int applied = is_applied(pg, chat_migrations[i].version);
        if (applied < 0) {
            st = CHAT_ERR_INTERNAL;
        } else if (!applied) {
            st = apply(pg, &chat_migrations[i]);
            if (st == CHAT_OK) {
                LOG_INFO("migrate", "event=migration_applied version=%s", chat_migrations[i].version);
                applied_now++;
            } else {
                LOG_ERROR("migrate", "event=migration_failed version=%s", chat_migrations[i].version);
            }
        }
    }
    wk_pg_exec(pg, MIGRATION_UNLOCK, PGRES_TUPLES_OK, "unlock");
    PQfinish(pg);
    if (st == CHAT_OK)
        LOG_INFO("migrate", "event=migrations_done applied=%d total=%d", applied_now, chat_migrations_count);
    return st;
}
