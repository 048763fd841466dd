/* The archive's restore: an archived partition's events put back into `messages` (and
 * message_dedupe) after every object is verified, its chunks taken out of service, then its
 * objects deleted. Threads: the pass's (wk_archivep.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_log.h"
#include "chat_time.h"
#include "wk_archivep.h"

/* ------------------------------------------------------------------------------------------ */
/* Restore                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct restore_ctx {
    int64_t rows;
} restore_ctx;

/* After a restore: delete the objects, then their rows; the partition row stays as `restored`. */
chat_status arc_finish_restore(arc_pass *ps, arc_part *p)
{
    chat_status st = arc_delete_objects(ps, p);
    if (st != CHAT_OK)
        return st;
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    const char *pid[] = {id};
    if (!arc_begin(ps) ||
        !arc_exec_ok(ps, "delete_objects", "DELETE FROM archive_objects WHERE partition_id = $1::bigint", 1, pid) ||
        !arc_exec_ok(ps, "state",
                     "UPDATE archive_partitions SET state = 'restored', last_error = NULL WHERE id = $1::bigint", 1,
                     pid) ||
        !arc_commit(ps)) {
        arc_rollback(ps);
        return CHAT_ERR_UNAVAILABLE;
    }
    snprintf(p->state, sizeof p->state, "restored");
    return CHAT_OK;
}

/* Inserts the events of one decoded chunk into `messages` and message_dedupe (inside the
 * restore's transaction). */
static chat_status restore_chunk(arc_pass *ps, const wk_cold_chunk *c, void *arg)
{
    restore_ctx *rc = arg;
    for (size_t from = 0; from < c->n; from += 1000) {
        size_t to = from + 1000 < c->n ? from + 1000 : c->n;
        chat_buf a[12] = {{0}};
        for (int k = 0; k < 12; k++)
            chat_buf_pg_array_begin(&a[k]);
        for (size_t i = from; i < to; i++) {
            const Chat__V1__Event *e = c->events[i];
            unsigned nulls = c->nulls[i];
            char seq[24], target[24], created[24];
            snprintf(seq, sizeof seq, "%" PRIu64, e->seq);
            snprintf(target, sizeof target, "%" PRIu64, e->target);
            snprintf(created, sizeof created, "%lld", (long long)c->created_us[i]);
            const char *kind = chat_kind_name(e->kind);
            chat_buf_pg_array_str(&a[0], seq);
            chat_buf_pg_array_str(&a[1], e->id);
            chat_buf_pg_array_str(&a[2], e->cmid);
            chat_buf_pg_array_str(&a[3], e->sender);
            chat_buf_pg_array_str(&a[4], kind ? kind : "text");
            chat_buf_pg_array_str(&a[5], e->body);
            chat_buf_pg_array_str(&a[6], (nulls & WK_COLD_NULL_META) ? NULL : e->meta_json);
            chat_buf_pg_array_str(&a[7], (nulls & WK_COLD_NULL_TARGET) ? NULL : target);
            chat_buf_pg_array_str(&a[8], (nulls & WK_COLD_NULL_EMOJI) ? NULL : e->emoji);
            chat_buf_pg_array_str(&a[9], (nulls & WK_COLD_NULL_REACTION_ON) ? NULL : e->reaction_on ? "t" : "f");
            chat_buf_pg_array_str(&a[10], created);
        }
        for (int k = 0; k < 12; k++)
            chat_buf_pg_array_end(&a[k]);
        const char *params[] = {c->h.conv, a[0].data, a[1].data, a[2].data, a[3].data, a[4].data,
                                a[5].data, a[6].data, a[7].data, a[8].data, a[9].data, a[10].data};
        const char *dedupe_params[] = {c->h.conv, a[0].data, a[1].data, a[2].data, a[10].data};
        bool ok =
            arc_exec_ok(ps, "restore_rows",
                        "INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, kind, body, meta,"
                        " target_seq, emoji, reaction_on, created_at)"
                        " SELECT $1, u.seq, u.id, u.cmid, u.sender, u.kind, u.body, u.meta::jsonb, u.target, u.emoji,"
                        " u.reaction_on, 'epoch'::timestamptz + u.created * interval '1 microsecond'"
                        " FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
                        " $8::text[], $9::bigint[], $10::text[], $11::bool[], $12::bigint[])"
                        " AS u(seq, id, cmid, sender, kind, body, meta, target, emoji, reaction_on, created)",
                        12, params) &&
            arc_exec_ok(ps, "restore_dedupe",
                        "INSERT INTO message_dedupe (conversation_id, client_msg_id, seq, id, created_at)"
                        " SELECT $1, u.cmid, u.seq, u.id, 'epoch'::timestamptz + u.created * interval '1 microsecond'"
                        " FROM unnest($2::bigint[], $3::text[], $4::text[], $5::bigint[]) AS u(seq, id, cmid, created)"
                        " ON CONFLICT DO NOTHING",
                        5, dedupe_params);
        for (int k = 0; k < 12; k++)
            chat_buf_free(&a[k]);
        if (!ok)
            return CHAT_ERR_UNAVAILABLE;
    }
    rc->rows += (int64_t)c->n;
    return CHAT_OK;
}

/* Restores one archiving (state dropped) of a partition, or finishes one that was restoring. */
static chat_status restore_one(arc_pass *ps, arc_part *p)
{
    if (strcmp(p->state, "detached") == 0)
        return arc_stepfail(ps, CHAT_ERR_CONFLICT,
                            "%s is still being archived (detached, not dropped): run chatctl archive run first",
                            p->name);
    if (strcmp(p->state, "restoring") == 0)
        return arc_finish_restore(ps, p);
    /* read and check everything before touching the database */
    PGresult *objs = arc_objects_of(ps, p);
    if (objs == NULL)
        return CHAT_ERR_UNAVAILABLE;
    chat_status st = CHAT_OK;
    int64_t rows = 0;
    for (int i = 0; i < PQntuples(objs) && st == CHAT_OK; i++)
        st = arc_check_object(ps, objs, i, &rows, NULL, NULL);
    if (st == CHAT_OK && rows != p->rows)
        st = arc_stepfail(ps, CHAT_ERR_INVALID, "the objects hold %lld events, %lld were archived", (long long)rows,
                          (long long)p->rows);
    if (st != CHAT_OK) {
        PQclear(objs);
        return st;
    }
    char from[24], until[24], span[48], id[24];
    snprintf(from, sizeof from, "%lld", (long long)p->from_us);
    snprintf(until, sizeof until, "%lld", (long long)p->until_us);
    snprintf(span, sizeof span, "%lld microseconds", (long long)(p->until_us - p->from_us));
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    const char *pe[] = {from, until, span};
    const char *pid[] = {id};
    restore_ctx rc = {0};
    /* the partition first, in a short transaction of its own: creating it locks `messages`,
     * which must not stay locked while the rows go in */
    bool ok = arc_begin(ps) && arc_exec_ok(ps, "lock_timeout", "SET LOCAL lock_timeout = '10s'", 0, NULL);
    PGresult *e =
        ok ? arc_sql(ps, "ensure",
                     "SELECT chat_ensure_partitions('epoch'::timestamptz + $1::bigint * interval '1 microsecond',"
                     " 'epoch'::timestamptz + $2::bigint * interval '1 microsecond', $3::interval)",
                     3, pe, PGRES_TUPLES_OK)
           : NULL;
    ok = e != NULL && arc_commit(ps) && arc_begin(ps);
    PQclear(e);
    for (int i = 0; ok && i < PQntuples(objs); i++) {
        int64_t n = 0;
        st = arc_check_object(ps, objs, i, &n, restore_chunk, &rc);
        ok = st == CHAT_OK;
    }
    PQclear(objs);
    ok = ok && rc.rows == p->rows &&
         arc_exec_ok(ps, "chunks_out",
                     "UPDATE archive_chunks SET live = false WHERE object_id IN"
                     " (SELECT id FROM archive_objects WHERE partition_id = $1::bigint)",
                     1, pid) &&
         arc_exec_ok(ps, "tombstones_out", "DELETE FROM archive_tombstones WHERE partition_id = $1::bigint", 1, pid) &&
         arc_exec_ok(ps, "state",
                     "UPDATE archive_partitions SET state = 'restoring', restored_at = now(), last_error = NULL"
                     " WHERE id = $1::bigint",
                     1, pid) &&
         arc_commit(ps);
    if (!ok) {
        arc_rollback(ps);
        return st == CHAT_OK ? CHAT_ERR_UNAVAILABLE : st;
    }
    snprintf(p->state, sizeof p->state, "restoring");
    ps->rep->rows += rc.rows;
    LOG_INFO("archive", "event=partition_restored partition=%s archiving=%lld rows=%lld", p->name, (long long)p->id,
             (long long)rc.rows);
    arc_pause_point(ps, "restored", p);
    return arc_finish_restore(ps, p);
}

chat_status wk_archive_restore(const chat_cfg *cfg, PGconn *pg, wk_objstore *os, const char *partition,
                               const wk_archive_options *opt, wk_archive_report *report)
{
    memset(report, 0, sizeof *report);
    arc_pass ps = {.cfg = cfg, .pg = pg, .os = os, .opt = opt, .rep = report};
    if (!arc_take_lock(&ps)) {
        snprintf(report->error, sizeof report->error, "%s", ps.err);
        return strstr(ps.err, "another archive pass") ? CHAT_ERR_CONFLICT : CHAT_ERR_UNAVAILABLE;
    }
    int64_t t0 = chat_mono_ns();
    chat_status st = CHAT_OK;
    /* every archiving of that partition that holds events (a partition made again for late
     * events and archived again has more than one), oldest first */
    const char *p1[] = {partition};
    PGresult *r = arc_sql(&ps, "find",
                          "SELECT partition_name, floor(extract(epoch FROM from_ts) * 1000000)::bigint,"
                          " floor(extract(epoch FROM until_ts) * 1000000)::bigint, state, rows, id"
                          " FROM archive_partitions WHERE partition_name = $1"
                          " AND state IN ('dropped', 'restoring', 'detached') ORDER BY id",
                          1, p1, PGRES_TUPLES_OK);
    if (r == NULL) {
        st = CHAT_ERR_UNAVAILABLE;
    } else if (PQntuples(r) == 0) {
        st = arc_stepfail(&ps, CHAT_ERR_NOT_FOUND, "no archived partition named %s (see chatctl archive status)",
                          partition);
    }
    if (st != CHAT_OK) {
        report->failed = 1;
        snprintf(report->error, sizeof report->error, "%s", ps.err);
    }
    for (int i = 0; r && i < PQntuples(r); i++) {
        arc_part p;
        arc_part_from_row(&p, r, i, true);
        chat_status one = restore_one(&ps, &p);
        if (one != CHAT_OK) {
            arc_record_failure(&ps, &p, one);
            if (st == CHAT_OK)
                st = one;
        }
    }
    PQclear(r);
    arc_rollback(&ps);
    report->archive_ms = (chat_mono_ns() - t0) / 1000000;
    arc_drop_lock(&ps);
    return st;
}
