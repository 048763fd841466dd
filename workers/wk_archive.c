/* Role `archive` (docs/storage.md), split by job behind wk_archivep.h; here the pass's plumbing
 * (failures, statements, pause points, the one-pass lock), below every other part; the role's
 * thread is wk_archive_role.c. A pass runs on the role's thread or in chatctl, one at a time. Invariant: an object is recorded
 * in archive_objects before it is uploaded and deleted from storage before its row goes, and the
 * rows of a partition leave `messages` in the same transaction that makes its chunks live. */
#include "wk_archive.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_time.h"
#include "wk_archivep.h"
#include "wk_pg.h"

/* ------------------------------------------------------------------------------------------ */
/* Pass state                                                                                   */
/* ------------------------------------------------------------------------------------------ */

chat_status arc_stepfail(arc_pass *ps, chat_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err, sizeof ps->err, fmt, ap);
    va_end(ap);
    chat_log_clean(ps->err);
    return st;
}

/* Runs one statement (wk_pg_run); the result when it has status `expect` (caller PQclears), else
 * NULL with ps->err set to "<what>: <server message>". */
PGresult *arc_sql(arc_pass *ps, const char *what, const char *text, int n, const char *const *params,
                  ExecStatusType expect)
{
    wk_pg_error e;
    PGresult *r = wk_pg_run(ps->pg, text, n, params, expect, &e);
    if (r == NULL)
        arc_stepfail(ps, CHAT_ERR_UNAVAILABLE, "%s: %s", what, e.detail);
    return r;
}

bool arc_exec_ok(arc_pass *ps, const char *what, const char *text, int n, const char *const *params)
{
    PGresult *r = arc_sql(ps, what, text, n, params, PGRES_COMMAND_OK);
    PQclear(r);
    return r != NULL;
}

bool arc_begin(arc_pass *ps)
{
    wk_pg_error e;
    if (wk_pg_begin(ps->pg, &e))
        return true;
    arc_stepfail(ps, CHAT_ERR_UNAVAILABLE, "begin: %s", e.detail);
    return false;
}

bool arc_commit(arc_pass *ps)
{
    wk_pg_error e;
    if (wk_pg_commit(ps->pg, &e))
        return true;
    arc_stepfail(ps, CHAT_ERR_UNAVAILABLE, "commit: %s", e.detail);
    return false;
}

void arc_rollback(arc_pass *ps)
{
    if (PQtransactionStatus(ps->pg) != PQTRANS_IDLE)
        wk_pg_rollback(ps->pg);
}

/* The first failure of the pass goes into the report; the partition's row keeps its last one. */
void arc_record_failure(arc_pass *ps, arc_part *p, chat_status st)
{
    ps->rep->failed++;
    if (ps->rep->error[0] == '\0')
        snprintf(ps->rep->error, sizeof ps->rep->error, "%.120s: %.380s", p->name, ps->err);
    LOG_WARN("archive", "event=archive_failed partition=%s state=%s status=%s detail=\"%s\"", p->name,
             p->state[0] ? p->state : "hot", chat_status_str(st), ps->err);
    arc_rollback(ps);
    if (p->id > 0) {
        char id[24];
        snprintf(id, sizeof id, "%lld", (long long)p->id);
        const char *params[] = {id, ps->err};
        wk_pg_error ignored; /* the failure itself is already logged above */
        PQclear(wk_pg_run(ps->pg, "UPDATE archive_partitions SET last_error = $2 WHERE id = $1::bigint", 2, params,
                          PGRES_COMMAND_OK, &ignored));
    }
}

/* The crash tests' hook: stop right after `step` and wait to be killed. */
void arc_pause_point(arc_pass *ps, const char *step, const arc_part *p)
{
    const char *at = ps->opt ? ps->opt->pause_at : NULL;
    if (at == NULL || strcmp(at, step) != 0)
        return;
    fprintf(stderr, "archive: paused after %s of %s (pid %d)\n", step, p->name, (int)getpid());
    fflush(stderr);
    for (;;)
        pause();
}

bool arc_stopping(const arc_pass *ps)
{
    return ps->opt && ps->opt->stopping && atomic_load(ps->opt->stopping);
}

/* The partition's table name quoted as an SQL identifier (PQescapeIdentifier); caller frees
 * with PQfreemem. */
char *arc_ident(arc_pass *ps, const char *name)
{
    char *q = PQescapeIdentifier(ps->pg, name, strlen(name));
    if (q == NULL)
        arc_stepfail(ps, CHAT_ERR_INTERNAL, "cannot quote %s: %s", name, PQerrorMessage(ps->pg));
    return q;
}

bool arc_set_state(arc_pass *ps, arc_part *p, const char *state, const char *stamp_column)
{
    char id[24], q[256];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    /* stamp_column is one of our own column names, never input */
    snprintf(q, sizeof q,
             "UPDATE archive_partitions SET state = $2, %s = now(), last_error = NULL WHERE id = $1::bigint",
             stamp_column);
    const char *params[] = {id, state};
    if (!arc_exec_ok(ps, "set_state", q, 2, params))
        return false;
    snprintf(p->state, sizeof p->state, "%s", state);
    return true;
}

bool arc_take_lock(arc_pass *ps)
{
    int64_t deadline = chat_mono_ms() + (ps->opt ? ps->opt->lock_wait_ms : 0);
    for (;;) {
        PGresult *r = arc_sql(ps, "pass_lock", "SELECT pg_try_advisory_lock(727002, 0)", 0, NULL, PGRES_TUPLES_OK);
        if (r == NULL)
            return false;
        bool got = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (got)
            return true;
        if (chat_mono_ms() >= deadline || arc_stopping(ps)) {
            arc_stepfail(ps, CHAT_ERR_CONFLICT,
                         "another archive pass is running (pg_advisory_lock(727002, 0) is held)");
            return false;
        }
        chat_sleep_ms(250);
    }
}

void arc_drop_lock(arc_pass *ps)
{
    wk_pg_error ignored; /* the lock goes with the session anyway */
    PQclear(wk_pg_run(ps->pg, "SELECT pg_advisory_unlock(727002, 0)", 0, NULL, PGRES_TUPLES_OK, &ignored));
}

void arc_part_from_row(arc_part *p, PGresult *r, int i, bool with_state)
{
    memset(p, 0, sizeof *p);
    p->id = with_state ? strtoll(PQgetvalue(r, i, 5), NULL, 10) : 0;
    snprintf(p->name, sizeof p->name, "%s", PQgetvalue(r, i, 0));
    p->from_us = strtoll(PQgetvalue(r, i, 1), NULL, 10);
    p->until_us = strtoll(PQgetvalue(r, i, 2), NULL, 10);
    if (with_state) {
        snprintf(p->state, sizeof p->state, "%s", PQgetvalue(r, i, 3));
        p->rows = strtoll(PQgetvalue(r, i, 4), NULL, 10);
    }
}
