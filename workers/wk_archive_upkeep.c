/* The archive's partition upkeep: partitions created ahead of time (and reshaped), and an
 * archived partition detached from `messages` and dropped. Threads: the pass's (wk_archivep.h);
 * wk_archive_ensure_partitions on the ingest's committer threads, each with its own PGconn. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_time.h"
#include "wk_archivep.h"
#include "wk_pg.h"

/* ------------------------------------------------------------------------------------------ */
/* Partition upkeep                                                                             */
/* ------------------------------------------------------------------------------------------ */

void arc_interval_text(char *out, size_t outsz, int64_t ms)
{
    snprintf(out, outsz, "%lld milliseconds", (long long)ms);
}

static int64_t ahead_ms(int64_t span_ms)
{
    return span_ms * 3 < 3600000 ? 3600000 : span_ms * 3; /* 1m spans: 60, not 1440 */
}

int wk_archive_ensure_partitions(void *pgconn, int64_t span_ms)
{
    PGconn *pg = pgconn;
    char span[48], ahead[48];
    arc_interval_text(span, sizeof span, span_ms);
    arc_interval_text(ahead, sizeof ahead, ahead_ms(span_ms));
    const char *params[] = {span, ahead};
    wk_pg_error e;
    PGresult *r =
        wk_pg_run(pg, "SELECT chat_ensure_partitions(now() - $1::interval, now() + $2::interval, $1::interval)", 2,
                  params, PGRES_TUPLES_OK, &e);
    if (r == NULL) {
        LOG_WARN("archive", "event=ensure_partitions_failed detail=\"%s\"", e.detail);
        return -1;
    }
    int n = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

/* Partitions of span CHAT_PARTITION_SPAN from now - span to now + ahead, after replacing the
 * empty ones of another span in that range (migration 0008: not those starting later); one
 * transaction with a short lock_timeout. */
void arc_upkeep(arc_pass *ps)
{
    char span[48], ahead[48];
    arc_interval_text(span, sizeof span, ps->cfg->partition_span_ms);
    arc_interval_text(ahead, sizeof ahead, ahead_ms(ps->cfg->partition_span_ms));
    const char *p2[] = {span, ahead};
    PGresult *r1 = NULL, *r2 = NULL;
    bool ok = arc_begin(ps) && arc_exec_ok(ps, "lock_timeout", "SET LOCAL lock_timeout = '2s'", 0, NULL) &&
              (r1 = arc_sql(ps, "reshape", "SELECT chat_reshape_partitions($1::interval, $2::interval)", 2, p2,
                            PGRES_TUPLES_OK)) &&
              (r2 = arc_sql(ps, "ensure",
                            "SELECT chat_ensure_partitions(now() - $1::interval, now() + $2::interval, $1::interval)",
                            2, p2, PGRES_TUPLES_OK)) &&
              arc_commit(ps);
    if (ok) {
        ps->rep->partitions_reshaped += atoi(PQgetvalue(r1, 0, 0));
        ps->rep->partitions_created += atoi(PQgetvalue(r2, 0, 0));
    } else {
        LOG_WARN("archive", "event=upkeep_failed detail=\"%s\"", ps->err);
    }
    PQclear(r1);
    PQclear(r2);
    arc_rollback(ps);
}

/* ------------------------------------------------------------------------------------------ */
/* Detach and drop                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* 1 attached partition of messages, 0 a table that is not a partition, -1 no such table, -2 error. */
static int table_state(arc_pass *ps, const char *name)
{
    const char *params[] = {name};
    PGresult *r =
        arc_sql(ps, "table_state", "SELECT c.relispartition FROM pg_class c WHERE c.oid = to_regclass(quote_ident($1))",
                1, params, PGRES_TUPLES_OK);
    if (r == NULL)
        return -2;
    int st = PQntuples(r) == 0 ? -1 : strcmp(PQgetvalue(r, 0, 0), "t") == 0 ? 1 : 0;
    PQclear(r);
    return st;
}

/* Moves p to state (stamping stamp_column) and commits; p->state stays as it was when either fails. */
static bool commit_state(arc_pass *ps, arc_part *p, const char *state, const char *stamp_column)
{
    char was[sizeof p->state];
    memcpy(was, p->state, sizeof was);
    if (arc_set_state(ps, p, state, stamp_column) && arc_commit(ps))
        return true;
    memcpy(p->state, was, sizeof was);
    return false;
}

/* One transaction: check the row count under a SHARE lock (no insert can reach the partition
 * any more), detach, make the chunks live, keep the delete targets as tombstones. Readers see
 * the events hot before the commit and cold after it. CHAT_ERR_CONFLICT when the count differs
 * (an event arrived late): the archiving is undone and planned again. */
static chat_status detach_once(arc_pass *ps, arc_part *p)
{
    char *q = arc_ident(ps, p->name);
    if (q == NULL)
        return CHAT_ERR_INTERNAL;
    chat_status st = CHAT_ERR_UNAVAILABLE;
    char id[24], sqltext[512];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    const char *pid[] = {id};
    int ts = table_state(ps, p->name);
    if (ts == -2)
        goto out;
    if (ts == -1) {
        st = arc_stepfail(ps, CHAT_ERR_NOT_FOUND,
                          "table %s is gone before it was detached (dropped by hand?); the "
                          "archive is verified but left out of service",
                          p->name);
        goto out;
    }
    if (!arc_begin(ps) || !arc_exec_ok(ps, "lock_timeout", "SET LOCAL lock_timeout = '1s'", 0, NULL))
        goto out;
    snprintf(sqltext, sizeof sqltext, "LOCK TABLE %s IN SHARE MODE", q);
    if (!arc_exec_ok(ps, "lock", sqltext, 0, NULL))
        goto out;
    snprintf(sqltext, sizeof sqltext, "SELECT count(*) FROM %s", q);
    PGresult *r = arc_sql(ps, "count", sqltext, 0, NULL, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    int64_t now_rows = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    if (now_rows != p->rows) {
        st = arc_stepfail(ps, CHAT_ERR_CONFLICT, "%s has %lld events now, %lld were archived: planned again", p->name,
                          (long long)now_rows, (long long)p->rows);
        goto out;
    }
    if (ts == 1) {
        snprintf(sqltext, sizeof sqltext, "ALTER TABLE messages DETACH PARTITION %s", q);
        if (!arc_exec_ok(ps, "detach", sqltext, 0, NULL))
            goto out;
    }
    if (!arc_exec_ok(ps, "chunks_live",
                     "UPDATE archive_chunks SET live = true WHERE object_id IN"
                     " (SELECT id FROM archive_objects WHERE partition_id = $1::bigint)",
                     1, pid))
        goto out;
    snprintf(sqltext, sizeof sqltext,
             "INSERT INTO archive_tombstones (conversation_id, target_seq, partition_id)"
             " SELECT conversation_id, target_seq, $1::bigint FROM %s WHERE kind = 'delete' AND target_seq IS NOT NULL"
             " ON CONFLICT DO NOTHING",
             q);
    if (!arc_exec_ok(ps, "tombstones", sqltext, 1, pid))
        goto out;
    if (!commit_state(ps, p, "detached", "detached_at"))
        goto out;
    st = CHAT_OK;
out:
    arc_rollback(ps);
    PQfreemem(q);
    return st;
}

/* DETACH needs a moment of ACCESS EXCLUSIVE on `messages`; while it waits, inserts queue behind
 * it, so it waits at most 1 s at a time and tries again a little later (5 tries). */
chat_status arc_detach(arc_pass *ps, arc_part *p)
{
    chat_status st = CHAT_OK;
    for (int attempt = 1; attempt <= 5; attempt++) {
        st = detach_once(ps, p);
        if (st == CHAT_OK || strstr(ps->err, "lock timeout") == NULL)
            break;
        LOG_INFO("archive", "event=detach_lock_busy partition=%s attempt=%d", p->name, attempt);
        chat_sleep_ms(500 * attempt);
    }
    return st;
}

/* One transaction: prune the partition's message_dedupe rows (exactly its events: a late event
 * of the same time range in a partition made again keeps its row), drop the detached table. */
chat_status arc_drop(arc_pass *ps, arc_part *p)
{
    char *q = arc_ident(ps, p->name);
    if (q == NULL)
        return CHAT_ERR_INTERNAL;
    chat_status st = CHAT_ERR_UNAVAILABLE;
    char sqltext[512];
    int ts = table_state(ps, p->name);
    if (ts == -2)
        goto out;
    if (ts == 1) {
        st = arc_stepfail(ps, CHAT_ERR_CONFLICT, "%s is attached again; not dropping it", p->name);
        goto out;
    }
    if (!arc_begin(ps))
        goto out;
    if (ts == 0) {
        snprintf(sqltext, sizeof sqltext,
                 "DELETE FROM message_dedupe d USING %s m WHERE d.conversation_id = m.conversation_id"
                 " AND d.client_msg_id = m.client_msg_id AND d.seq = m.seq",
                 q);
        if (!arc_exec_ok(ps, "prune_dedupe", sqltext, 0, NULL))
            goto out;
        snprintf(sqltext, sizeof sqltext, "DROP TABLE %s", q);
        if (!arc_exec_ok(ps, "drop", sqltext, 0, NULL))
            goto out;
    }
    if (!commit_state(ps, p, "dropped", "dropped_at"))
        goto out;
    st = CHAT_OK;
out:
    arc_rollback(ps);
    PQfreemem(q);
    return st;
}
