/* The archive's verification: every object read back (length and SHA-256) and every chunk
 * decoded and matched against its archive_chunks row, before a partition is detached and before
 * it is restored. Threads: the pass's (wk_archivep.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_buf.h"
#include "wk_archivep.h"

/* ------------------------------------------------------------------------------------------ */
/* Verification: every object read back, length and SHA-256, every chunk decoded and matched   */
/* ------------------------------------------------------------------------------------------ */

/* Objects of the partition: id, url, bytes, sha256, rows (by part). */
PGresult *arc_objects_of(arc_pass *ps, const arc_part *p)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    const char *params[] = {id};
    return arc_sql(ps, "objects",
                   "SELECT id, url, bytes, sha256, rows FROM archive_objects WHERE partition_id = $1::bigint"
                   " ORDER BY part",
                   1, params, PGRES_TUPLES_OK);
}

/* Chunks of one object: byte_offset, byte_length, conversation_id, seq_lo, seq_hi, rows. */
static PGresult *chunks_of(arc_pass *ps, const char *object_id)
{
    const char *params[] = {object_id};
    return arc_sql(ps, "chunks",
                   "SELECT byte_offset, byte_length, conversation_id, seq_lo, seq_hi, rows FROM archive_chunks"
                   " WHERE object_id = $1::bigint ORDER BY byte_offset",
                   1, params, PGRES_TUPLES_OK);
}

/* Reads object row i of objs back and checks it whole. CHAT_ERR_INVALID: it is not what was
 * written (the archiving must be redone); other statuses: storage or database trouble. When
 * each_chunk is not NULL, it is called with every decoded chunk (restore). */
typedef chat_status (*arc_chunk_fn)(arc_pass *ps, const wk_cold_chunk *c, void *ctx);
chat_status arc_check_object(arc_pass *ps, PGresult *objs, int i, int64_t *rows, arc_chunk_fn each_chunk, void *ctx)
{
    const char *oid = PQgetvalue(objs, i, 0), *url = PQgetvalue(objs, i, 1);
    uint64_t bytes = strtoull(PQgetvalue(objs, i, 2), NULL, 10);
    chat_buf body = {0};
    chat_status st = wk_objstore_get(ps->os, url, 0, 0, &body, ps->err, sizeof ps->err);
    if (st == CHAT_ERR_NOT_FOUND || st == CHAT_ERR_IO)
        st = CHAT_ERR_INVALID; /* gone or cut: what was uploaded is not there */
    if (st != CHAT_OK)
        goto out;
    char sha[65];
    wk_objstore_sha256_hex(body.data ? body.data : "", body.len, sha);
    if (body.len != bytes || strcmp(sha, PQgetvalue(objs, i, 3)) != 0) {
        st =
            arc_stepfail(ps, CHAT_ERR_INVALID, "%s: read back %zu bytes sha256 %.12s..., recorded %" PRIu64 " %.12s...",
                         url, body.len, sha, bytes, PQgetvalue(objs, i, 3));
        goto out;
    }
    PGresult *ch = chunks_of(ps, oid);
    if (ch == NULL) {
        st = CHAT_ERR_UNAVAILABLE;
        goto out;
    }
    uint64_t at = 0;
    for (int k = 0; k < PQntuples(ch) && st == CHAT_OK; k++) {
        wk_cold_ref ref = {.url = url,
                           .offset = strtoull(PQgetvalue(ch, k, 0), NULL, 10),
                           .length = strtoull(PQgetvalue(ch, k, 1), NULL, 10),
                           .conv = PQgetvalue(ch, k, 2),
                           .seq_lo = strtoull(PQgetvalue(ch, k, 3), NULL, 10),
                           .seq_hi = strtoull(PQgetvalue(ch, k, 4), NULL, 10),
                           .rows = (uint32_t)strtoul(PQgetvalue(ch, k, 5), NULL, 10)};
        if (ref.offset != at || ref.offset + ref.length > body.len) {
            st = arc_stepfail(ps, CHAT_ERR_INVALID, "%s: chunks do not tile the object at byte %" PRIu64, url, at);
            break;
        }
        at += ref.length;
        wk_cold_chunk *c = NULL;
        char why[256];
        st = wk_cold_chunk_decode(body.data + ref.offset, (size_t)ref.length, &c, why, sizeof why);
        if (st != CHAT_OK) {
            st = arc_stepfail(ps, CHAT_ERR_INVALID, "%s@%" PRIu64 ": %s", url, ref.offset, why);
            break;
        }
        if (!wk_cold_chunk_matches(c, &ref, why, sizeof why))
            st = arc_stepfail(ps, CHAT_ERR_INVALID, "%s", why);
        else if (each_chunk)
            st = each_chunk(ps, c, ctx);
        *rows += (int64_t)c->n;
        wk_cold_chunk_free(c);
    }
    if (st == CHAT_OK && at != body.len)
        st = arc_stepfail(ps, CHAT_ERR_INVALID, "%s: %zu bytes but its chunks end at %" PRIu64, url, body.len, at);
    PQclear(ch);
out:
    chat_buf_free(&body);
    return st;
}

chat_status arc_verify(arc_pass *ps, arc_part *p)
{
    PGresult *objs = arc_objects_of(ps, p);
    if (objs == NULL)
        return CHAT_ERR_UNAVAILABLE;
    int64_t rows = 0;
    chat_status st = CHAT_OK;
    for (int i = 0; i < PQntuples(objs) && st == CHAT_OK; i++)
        st = arc_check_object(ps, objs, i, &rows, NULL, NULL);
    PQclear(objs);
    if (st == CHAT_OK && rows != p->rows)
        st = arc_stepfail(ps, CHAT_ERR_INVALID, "the objects hold %lld events, %lld were planned", (long long)rows,
                          (long long)p->rows);
    if (st != CHAT_OK)
        return st;
    return arc_set_state(ps, p, "verified", "verified_at") ? CHAT_OK : CHAT_ERR_UNAVAILABLE;
}

chat_status arc_delete_objects(arc_pass *ps, arc_part *p)
{
    PGresult *objs = arc_objects_of(ps, p);
    if (objs == NULL)
        return CHAT_ERR_UNAVAILABLE;
    chat_status st = CHAT_OK;
    for (int i = 0; i < PQntuples(objs) && st == CHAT_OK; i++)
        st = wk_objstore_delete(ps->os, PQgetvalue(objs, i, 1), ps->err, sizeof ps->err);
    PQclear(objs);
    return st;
}
