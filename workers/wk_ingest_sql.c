/* The ingest's SQL: the batch statements, prepared once per lease connection, and one-off
 * statements. Committer threads, each on its own lease connection. Below the store and the lease
 * (both use it; it uses neither). */
#include <libpq-fe.h>
#include <stdio.h>

#include "chat_log.h"
#include "wk_ingestp.h"
#include "wk_pg.h"

/* One-off statements (the lease, a missing partition): planned at each call. */
PGresult *wk_ingest_exec_params(PGconn *pg, const char *sql, int n, const char *const *params)
{
    return PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
}

/* The statements of every batch, prepared once per lease connection (prepare_statements(), from
 * try_acquire, outside any transaction: a failed Parse there aborts nothing) and sent in the
 * store's pipeline (below). The connection uses generic plans (plan_cache_mode = force_generic_plan): with
 * array parameters PostgreSQL would otherwise keep choosing custom plans, i.e. plan every batch
 * again. So each statement is written for a good generic plan, whatever the tables' statistics:
 * conversations by `id = ANY($1)` (an index scan; a join with unnest() lets the planner pick a
 * sequential scan of a small table), the rest through primary keys. */
static const struct {
    const char *name;
    int nparams;
    const char *sql;
} statements[Q_COUNT] = {
    /* Whether any post of the batch is stored already: message_dedupe alone. Q_DEDUPE reads the
     * stored rows too, and `messages` is partitioned by time with its rows found through a join:
     * a generic plan sets up a scan of every partition (two per partition, with the delete check)
     * before it runs, whether a row is found or not, so its cost grows with the hot retention
     * (CHAT_HOT_RETENTION / CHAT_PARTITION_SPAN partitions; bench/findings.md item 18). Asked
     * only when this says so, in a round trip of its own: a resend is rare. */
    [Q_SEEN] = {"ingest_seen", 2,
                "SELECT count(*) FROM message_dedupe d JOIN unnest($1::text[], $2::text[]) AS k(c, m)"
                " ON d.conversation_id = k.c AND d.client_msg_id = k.m"},
    [Q_DEDUPE] = {"ingest_dedupe", 2,
                  "SELECT d.conversation_id, d.client_msg_id, d.seq, d.id,"
                  " (extract(epoch FROM d.created_at) * 1000000)::bigint,"
                  " s.sender_id, s.kind, s.body, s.meta::text, s.target_seq, s.emoji, s.reaction_on,"
                  " s.kind IN ('text', 'system', 'edit') AND EXISTS (SELECT 1 FROM messages x"
                  " WHERE x.conversation_id = s.conversation_id AND x.kind = 'delete'"
                  " AND x.target_seq = CASE WHEN s.kind = 'edit' THEN s.target_seq ELSE s.seq END)"
                  " FROM message_dedupe d JOIN unnest($1::text[], $2::text[]) AS k(c, m)"
                  " ON d.conversation_id = k.c AND d.client_msg_id = k.m"
                  " LEFT JOIN messages s ON s.conversation_id = d.conversation_id AND s.seq = d.seq"
                  " AND s.created_at = d.created_at"},
    [Q_MEMBERS] = {"ingest_members", 1,
                   "SELECT m.conversation_id, m.user_id FROM conversations c"
                   " JOIN conversation_members m ON m.conversation_id = c.id"
                   " WHERE c.id = ANY($1::text[]) AND c.deleted_at IS NULL"},
    [Q_TARGETS] = {"ingest_targets", 2,
                   "SELECT k.c, k.s, m.sender_id, m.kind,"
                   " EXISTS (SELECT 1 FROM messages d WHERE d.conversation_id = k.c"
                   " AND d.kind = 'delete' AND d.target_seq = k.s)"
                   " FROM unnest($1::text[], $2::bigint[]) AS k(c, s)"
                   " LEFT JOIN messages m ON m.conversation_id = k.c AND m.seq = k.s"},
    [Q_WRITE] = {"ingest_write", 13,
                 "WITH b AS (UPDATE conversations c"
                 " SET last_seq = c.last_seq + ($2::int[])[array_position($1::text[], c.id)]"
                 " WHERE c.id = ANY($1::text[])"
                 " RETURNING c.id, c.last_seq - ($2::int[])[array_position($1::text[], c.id)] AS base),"
                 " k AS (SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
                 " $8::text[], $9::jsonb[], $10::bigint[], $11::text[], $12::bool[], $13::timestamptz[])"
                 " WITH ORDINALITY AS k(conv, id, cmid, sender, kind, body, meta, target, emoji, reaction_on,"
                 " created_at, ord)),"
                 " s AS (SELECT k.*, b.base + row_number() OVER (PARTITION BY k.conv ORDER BY k.ord) AS seq"
                 " FROM k JOIN b ON b.id = k.conv),"
                 " m AS (INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, kind, body,"
                 " meta, target_seq, emoji, reaction_on, created_at)"
                 " SELECT conv, seq, id, cmid, sender, kind, body, meta, target, emoji, reaction_on, created_at"
                 " FROM s),"
                 " d AS (INSERT INTO message_dedupe (conversation_id, client_msg_id, seq, id, created_at)"
                 " SELECT conv, cmid, seq, id, created_at FROM s)"
                 " SELECT ord, seq FROM s"},
};

/* Prepares the batch statements on a fresh lease connection. False (logged) when PostgreSQL
 * refuses one or the connection is gone: the caller closes the connection, and with it the lease. */
bool wk_ingest_prepare_statements(PGconn *pg)
{
    if (!wk_pg_exec(pg, "SET plan_cache_mode = force_generic_plan", PGRES_COMMAND_OK, "plan_cache_mode"))
        return false;
    /* A generic plan is made once, at the first batch, from the statistics of that moment: on a
     * new database (empty tables) the planner took sequential scans of message_dedupe and
     * conversations with hash joins, and kept them while the tables grew, so every batch read
     * the whole dedupe table (docs/benchmarks.md). Every statement here reaches its rows through a
     * primary key: take the other paths off the table for this connection. */
    if (!wk_pg_exec(pg, "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off",
                    PGRES_COMMAND_OK, "plan_settings"))
        return false;
    for (int q = 0; q < Q_COUNT; q++) {
        PGresult *r = PQprepare(pg, statements[q].name, statements[q].sql, statements[q].nparams, NULL);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            LOG_WARN("ingest", "event=prepare_failed statement=%s detail=\"%s\"", statements[q].name,
                     PQresultErrorMessage(r));
        PQclear(r);
        if (!ok)
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Pipelines: a batch's statements sent without waiting for each answer                        */
/* ------------------------------------------------------------------------------------------ */

/* Fills *e for a statement libpq would not send (the connection is gone, or not in the state the
 * call needs): from the connection's own message. */
static bool send_failed(PGconn *pg, wk_pg_error *e)
{
    wk_pg_error_of(pg, NULL, e);
    return false;
}

bool wk_ingest_pipe_begin(PGconn *pg, wk_pg_error *e)
{
    if (PQenterPipelineMode(pg) != 1 || PQsendQueryParams(pg, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) != 1)
        return send_failed(pg, e);
    return true;
}

bool wk_ingest_pipe_send(PGconn *pg, int q, const char *const *params, wk_pg_error *e)
{
    if (PQsendQueryPrepared(pg, statements[q].name, statements[q].nparams, params, NULL, NULL, 0) != 1)
        return send_failed(pg, e);
    return true;
}

bool wk_ingest_pipe_sync(PGconn *pg, wk_pg_error *e)
{
    if (PQpipelineSync(pg) != 1)
        return send_failed(pg, e);
    return true;
}

bool wk_ingest_pipe_synced(PGconn *pg, wk_pg_error *e)
{
    PGresult *r = PQgetResult(pg);
    bool ok = r != NULL && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    if (!ok)
        wk_pg_error_of(pg, r, e);
    PQclear(r);
    return ok;
}

bool wk_ingest_pipe_commit(PGconn *pg, wk_pg_error *e)
{
    if (PQsendQueryParams(pg, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) != 1 || PQpipelineSync(pg) != 1)
        return send_failed(pg, e);
    return true;
}

PGresult *wk_ingest_pipe_result(PGconn *pg, ExecStatusType expect, wk_pg_error *e)
{
    PGresult *r = PQgetResult(pg);
    if (r == NULL || PQresultStatus(r) != expect) {
        wk_pg_error_of(pg, r, e);
        PQclear(r);
        return NULL; /* what is left of the pipeline is read by wk_ingest_pipe_end() */
    }
    PGresult *end = PQgetResult(pg); /* NULL: the end of this statement's results */
    PQclear(end);
    return r;
}

bool wk_ingest_pipe_end(PGconn *pg, bool synced)
{
    if (PQpipelineStatus(pg) == PQ_PIPELINE_OFF)
        return true;
    if (PQstatus(pg) != CONNECTION_OK)
        return false; /* gone: the statement that found it out was classified and logged */
    if (!synced && PQpipelineSync(pg) != 1)
        return false;
    /* each statement's results end with a NULL; two in a row: nothing is due any more, the sync
     * never comes */
    for (int nulls = 0; nulls < 2 && PQstatus(pg) == CONNECTION_OK;) {
        PGresult *r = PQgetResult(pg);
        if (r == NULL) {
            nulls++;
            continue;
        }
        nulls = 0;
        ExecStatusType st = PQresultStatus(r);
        PQclear(r);
        if (st == PGRES_PIPELINE_SYNC)
            return PQexitPipelineMode(pg) == 1;
    }
    char detail[512];
    snprintf(detail, sizeof detail, "%s", PQerrorMessage(pg));
    chat_log_clean(detail);
    LOG_WARN("ingest", "event=pipeline_unfinished detail=\"%s\"", detail);
    return false;
}
