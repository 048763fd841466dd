/* The archive pass: choosing the partitions past retention (and those an earlier pass left
 * part-way), reading each into chunks and objects, recording the plan, uploading, and taking it
 * through its states to `dropped`. Threads: the pass's (wk_archivep.h). Invariant: an object is
 * recorded in archive_objects before it is uploaded. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_time.h"
#include "wk_archivep.h"
#include "wk_cold.h"

/* ------------------------------------------------------------------------------------------ */
/* Planning: read the partition in (conversation, seq) order, build chunks into object parts    */
/* ------------------------------------------------------------------------------------------ */

typedef struct obj_part {
    FILE *f; /* anonymous temporary file holding the object */
    size_t len;
    char sha_hex[65];
    char url[WK_OBJSTORE_URL_MAX];
    int chunks;
    int64_t rows;
} obj_part;

typedef struct chunk_entry {
    int part;
    uint64_t offset, length, raw;
    char conv[CHAT_ID_MAX + 1];
    uint64_t seq_lo, seq_hi;
    uint32_t rows;
} chunk_entry;

typedef struct plan {
    int64_t attempt_ms;
    obj_part *parts;
    int nparts;
    chunk_entry *chunks;
    size_t nchunks, cap;
    int conversations;
    int64_t rows, bytes, raw;
    wk_cold_writer w;
    bool open; /* the writer holds events */
    chat_buf frame;
} plan;

static void plan_free(plan *pl)
{
    for (int i = 0; i < pl->nparts; i++) {
        if (pl->parts[i].f)
            fclose(pl->parts[i].f);
    }
    free(pl->parts);
    free(pl->chunks);
    wk_cold_writer_free(&pl->w);
    chat_buf_free(&pl->frame);
    memset(pl, 0, sizeof *pl);
}

static obj_part *new_part(arc_pass *ps, plan *pl, const arc_part *p)
{
    pl->parts = chat_xrealloc(pl->parts, (size_t)(pl->nparts + 1) * sizeof *pl->parts);
    obj_part *o = &pl->parts[pl->nparts];
    memset(o, 0, sizeof *o);
    o->f = tmpfile();
    char key[256];
    snprintf(key, sizeof key, "%s/%lld-%03d.chunks", p->name, (long long)pl->attempt_ms, pl->nparts);
    if (o->f == NULL || !wk_objstore_join(ps->cfg->archive_url, key, o->url, sizeof o->url)) {
        if (o->f)
            fclose(o->f);
        arc_stepfail(ps, CHAT_ERR_IO, "cannot start object %d (temporary file or URL)", pl->nparts);
        return NULL;
    }
    pl->nparts++;
    return o;
}

/* Compresses the writer's events into a chunk at the end of the current object part. */
static chat_status flush_chunk(arc_pass *ps, plan *pl, const arc_part *p)
{
    if (!pl->open)
        return CHAT_OK;
    pl->open = false;
    obj_part *o = pl->nparts > 0 ? &pl->parts[pl->nparts - 1] : NULL;
    if (o == NULL || o->len >= WK_ARCHIVE_OBJECT_MAX) {
        o = new_part(ps, pl, p);
        if (o == NULL)
            return CHAT_ERR_IO;
    }
    chat_buf_reset(&pl->frame);
    size_t raw = 0;
    chat_status st = wk_cold_writer_finish(&pl->w, &pl->frame, &raw);
    if (st != CHAT_OK)
        return arc_stepfail(ps, st, "compressing the chunk of %s failed", pl->w.h.conv);
    if (fwrite(pl->frame.data, 1, pl->frame.len, o->f) != pl->frame.len)
        return arc_stepfail(ps, CHAT_ERR_IO, "writing a temporary file failed");
    if (pl->nchunks == pl->cap) {
        pl->cap = pl->cap ? pl->cap * 2 : 256;
        pl->chunks = chat_xrealloc(pl->chunks, pl->cap * sizeof *pl->chunks);
    }
    chunk_entry *c = &pl->chunks[pl->nchunks++];
    c->part = pl->nparts - 1;
    c->offset = o->len;
    c->length = pl->frame.len;
    c->raw = raw;
    snprintf(c->conv, sizeof c->conv, "%s", pl->w.h.conv);
    c->seq_lo = pl->w.h.seq_lo;
    c->seq_hi = pl->w.h.seq_hi;
    c->rows = pl->w.h.count;
    o->len += pl->frame.len;
    o->chunks++;
    o->rows += c->rows;
    pl->bytes += (int64_t)pl->frame.len;
    pl->raw += (int64_t)raw;
    return CHAT_OK;
}

/* SHA-256 of every object part, from its temporary file. */
static chat_status finish_parts(arc_pass *ps, plan *pl)
{
    for (int i = 0; i < pl->nparts; i++) {
        obj_part *o = &pl->parts[i];
        if (fflush(o->f) != 0)
            return arc_stepfail(ps, CHAT_ERR_IO, "flushing a temporary file failed");
        void *map = o->len ? mmap(NULL, o->len, PROT_READ, MAP_PRIVATE, fileno(o->f), 0) : NULL;
        if (o->len && map == MAP_FAILED)
            return arc_stepfail(ps, CHAT_ERR_IO, "mmap of a temporary file failed");
        wk_objstore_sha256_hex(map ? map : "", o->len, o->sha_hex);
        if (map)
            munmap(map, o->len);
    }
    return CHAT_OK;
}

/* Columns read from a partition, in this order (also by restore's check). */
#define PART_COLUMNS                                                                                                   \
    "conversation_id, seq, id, client_msg_id, sender_id, kind, body, meta::text, target_seq, emoji, reaction_on,"      \
    " floor(extract(epoch FROM created_at) * 1000000)::bigint"
enum { C_CONV, C_SEQ, C_ID, C_CMID, C_SENDER, C_KIND, C_BODY, C_META, C_TARGET, C_EMOJI, C_ON, C_CREATED };

/* An Event (pointing into r) and its null mask from row i of PART_COLUMNS. */
static unsigned event_of_row(PGresult *r, int i, Chat__V1__Event *e, int64_t *created_us)
{
    chat__v1__event__init(e);
    unsigned nulls = 0;
    e->seq = strtoull(PQgetvalue(r, i, C_SEQ), NULL, 10);
    e->id = PQgetvalue(r, i, C_ID);
    e->cmid = PQgetvalue(r, i, C_CMID);
    e->sender = PQgetvalue(r, i, C_SENDER);
    e->kind = chat_kind_parse(PQgetvalue(r, i, C_KIND));
    e->body = PQgetvalue(r, i, C_BODY);
    e->meta_json = PQgetvalue(r, i, C_META);
    if (PQgetisnull(r, i, C_META))
        nulls |= WK_COLD_NULL_META;
    if (PQgetisnull(r, i, C_TARGET))
        nulls |= WK_COLD_NULL_TARGET;
    else
        e->target = strtoull(PQgetvalue(r, i, C_TARGET), NULL, 10);
    e->emoji = PQgetvalue(r, i, C_EMOJI);
    if (PQgetisnull(r, i, C_EMOJI))
        nulls |= WK_COLD_NULL_EMOJI;
    if (PQgetisnull(r, i, C_ON))
        nulls |= WK_COLD_NULL_REACTION_ON;
    else
        e->reaction_on = strcmp(PQgetvalue(r, i, C_ON), "t") == 0;
    *created_us = strtoll(PQgetvalue(r, i, C_CREATED), NULL, 10);
    e->ts_ms = *created_us >= 0 ? *created_us / 1000 : -((-*created_us + 999) / 1000);
    return nulls;
}

/* Reads every row of the partition (one REPEATABLE READ snapshot) into chunks and objects. */
static chat_status read_partition(arc_pass *ps, arc_part *p, plan *pl)
{
    char from[24], until[24];
    snprintf(from, sizeof from, "%lld", (long long)p->from_us);
    snprintf(until, sizeof until, "%lld", (long long)p->until_us);
    const char *params[] = {from, until};
    if (!arc_exec_ok(ps, "begin", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL))
        return CHAT_ERR_UNAVAILABLE;
    if (!arc_exec_ok(ps, "declare",
                     "DECLARE archive_rows NO SCROLL CURSOR FOR SELECT " PART_COLUMNS " FROM messages"
                     " WHERE created_at >= 'epoch'::timestamptz + $1::bigint * interval '1 microsecond'"
                     " AND created_at < 'epoch'::timestamptz + $2::bigint * interval '1 microsecond'"
                     " ORDER BY conversation_id, seq",
                     2, params))
        return CHAT_ERR_UNAVAILABLE;
    char fetch[64];
    snprintf(fetch, sizeof fetch, "FETCH %d FROM archive_rows", WK_ARCHIVE_FETCH_ROWS);
    for (;;) {
        PGresult *r = arc_sql(ps, "fetch", fetch, 0, NULL, PGRES_TUPLES_OK);
        if (r == NULL)
            return CHAT_ERR_UNAVAILABLE;
        int n = PQntuples(r);
        for (int i = 0; i < n; i++) {
            const char *conv = PQgetvalue(r, i, C_CONV);
            bool same = pl->open && strcmp(conv, pl->w.h.conv) == 0;
            if (!same || pl->w.h.count >= WK_COLD_CHUNK_MAX_ROWS ||
                wk_cold_writer_raw_size(&pl->w) >= WK_COLD_CHUNK_MAX_RAW) {
                chat_status st = flush_chunk(ps, pl, p);
                if (st != CHAT_OK) {
                    PQclear(r);
                    return st;
                }
                if (!same)
                    pl->conversations++;
                wk_cold_writer_begin(&pl->w, conv, p->from_us, p->until_us);
                pl->open = true;
            }
            Chat__V1__Event e;
            int64_t created_us;
            unsigned nulls = event_of_row(r, i, &e, &created_us);
            if (!wk_cold_writer_add(&pl->w, &e, created_us, nulls)) {
                PQclear(r);
                return arc_stepfail(ps, CHAT_ERR_INTERNAL, "%s seq %" PRIu64 " is not above the previous one", conv,
                                    e.seq);
            }
            pl->rows++;
        }
        PQclear(r);
        if (n < WK_ARCHIVE_FETCH_ROWS)
            break;
    }
    chat_status st = flush_chunk(ps, pl, p);
    if (st != CHAT_OK)
        return st;
    if (!arc_commit(ps))
        return CHAT_ERR_UNAVAILABLE;
    return finish_parts(ps, pl);
}

/* The chunks of object part part_no (archive_objects.id oid), from pl->chunks[*next] on, in
 * batches of 2000 rows; *next ends past them. false with ps->err set. */
static bool record_chunks(arc_pass *ps, const plan *pl, int part_no, const char *oid, size_t *next)
{
    while (*next < pl->nchunks && pl->chunks[*next].part == part_no) {
        chat_buf a[7] = {{0}};
        for (int k = 0; k < 7; k++)
            chat_buf_pg_array_begin(&a[k]);
        for (int k = 0; k < 2000 && *next < pl->nchunks && pl->chunks[*next].part == part_no; k++, (*next)++) {
            chunk_entry *c = &pl->chunks[*next];
            char v[5][24];
            snprintf(v[0], 24, "%" PRIu64, c->offset);
            snprintf(v[1], 24, "%" PRIu64, c->length);
            snprintf(v[2], 24, "%" PRIu64, c->raw);
            snprintf(v[3], 24, "%" PRIu64, c->seq_lo);
            snprintf(v[4], 24, "%" PRIu64, c->seq_hi);
            char crow[16];
            snprintf(crow, sizeof crow, "%u", c->rows);
            chat_buf_pg_array_str(&a[0], v[0]);
            chat_buf_pg_array_str(&a[1], v[1]);
            chat_buf_pg_array_str(&a[2], v[2]);
            chat_buf_pg_array_str(&a[3], c->conv);
            chat_buf_pg_array_str(&a[4], v[3]);
            chat_buf_pg_array_str(&a[5], v[4]);
            chat_buf_pg_array_str(&a[6], crow);
        }
        for (int k = 0; k < 7; k++)
            chat_buf_pg_array_end(&a[k]);
        const char *p3[] = {oid, a[0].data, a[1].data, a[2].data, a[3].data, a[4].data, a[5].data, a[6].data};
        bool ok = arc_exec_ok(ps, "insert_chunks",
                              "INSERT INTO archive_chunks (object_id, byte_offset, byte_length, raw_length,"
                              " conversation_id, seq_lo, seq_hi, rows)"
                              " SELECT $1::bigint, u.o, u.l, u.r, u.c, u.lo, u.hi, u.n FROM unnest($2::bigint[],"
                              " $3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[], $8::int[])"
                              " AS u(o, l, r, c, lo, hi, n)",
                              8, p3);
        for (int k = 0; k < 7; k++)
            chat_buf_free(&a[k]);
        if (!ok)
            return false;
    }
    return true;
}

/* Records the plan: the archive_partitions row (planned), its objects and chunks, in one
 * transaction, before anything is uploaded. */
static chat_status record_plan(arc_pass *ps, arc_part *p, plan *pl)
{
    char from[24], until[24], rows[24], convs[16], bytes[24], raw[24];
    snprintf(from, sizeof from, "%lld", (long long)p->from_us);
    snprintf(until, sizeof until, "%lld", (long long)p->until_us);
    snprintf(rows, sizeof rows, "%lld", (long long)pl->rows);
    snprintf(convs, sizeof convs, "%d", pl->conversations);
    snprintf(bytes, sizeof bytes, "%lld", (long long)pl->bytes);
    snprintf(raw, sizeof raw, "%lld", (long long)pl->raw);
    if (!arc_begin(ps))
        return CHAT_ERR_UNAVAILABLE;
    const char *p1[] = {p->name, from, until, rows, convs, bytes, raw};
    PGresult *r =
        arc_sql(ps, "insert_partition",
                "INSERT INTO archive_partitions (partition_name, from_ts, until_ts, state, rows, conversations,"
                " bytes, raw_bytes) VALUES ($1, 'epoch'::timestamptz + $2::bigint * interval '1 microsecond',"
                " 'epoch'::timestamptz + $3::bigint * interval '1 microsecond', 'planned', $4::bigint,"
                " $5::int, $6::bigint, $7::bigint) RETURNING id",
                7, p1, PGRES_TUPLES_OK);
    if (r == NULL)
        return CHAT_ERR_UNAVAILABLE;
    p->id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    char pid[24];
    snprintf(pid, sizeof pid, "%lld", (long long)p->id);
    size_t next = 0;
    for (int i = 0; i < pl->nparts; i++) {
        obj_part *o = &pl->parts[i];
        char part_no[16], olen[24], ochunks[16], orows[24];
        snprintf(part_no, sizeof part_no, "%d", i);
        snprintf(olen, sizeof olen, "%zu", o->len);
        snprintf(ochunks, sizeof ochunks, "%d", o->chunks);
        snprintf(orows, sizeof orows, "%lld", (long long)o->rows);
        const char *p2[] = {pid, part_no, o->url, olen, o->sha_hex, ochunks, orows};
        r = arc_sql(ps, "insert_object",
                    "INSERT INTO archive_objects (partition_id, part, url, bytes, sha256, chunks, rows)"
                    " VALUES ($1::bigint, $2::int, $3, $4::bigint, $5, $6::int, $7::bigint) RETURNING id",
                    7, p2, PGRES_TUPLES_OK);
        if (r == NULL)
            return CHAT_ERR_UNAVAILABLE;
        char oid[24];
        snprintf(oid, sizeof oid, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        if (!record_chunks(ps, pl, i, oid, &next))
            return CHAT_ERR_UNAVAILABLE;
    }
    if (!arc_commit(ps))
        return CHAT_ERR_UNAVAILABLE;
    snprintf(p->state, sizeof p->state, "planned");
    p->rows = pl->rows;
    return CHAT_OK;
}

static chat_status upload(arc_pass *ps, arc_part *p, plan *pl)
{
    for (int i = 0; i < pl->nparts; i++) {
        obj_part *o = &pl->parts[i];
        void *map = o->len ? mmap(NULL, o->len, PROT_READ, MAP_PRIVATE, fileno(o->f), 0) : NULL;
        if (o->len && map == MAP_FAILED)
            return arc_stepfail(ps, CHAT_ERR_IO, "mmap of a temporary file failed");
        chat_status st = wk_objstore_put(ps->os, o->url, map ? map : "", o->len, ps->err, sizeof ps->err);
        if (map)
            munmap(map, o->len);
        if (st != CHAT_OK)
            return st;
    }
    arc_pause_point(ps, "put", p);
    return arc_set_state(ps, p, "uploaded", "uploaded_at") ? CHAT_OK : CHAT_ERR_UNAVAILABLE;
}

/* Deletes the objects of an archiving that did not reach `detached` (storage first, then the
 * rows), so it can be planned again. The rows stay while any delete fails. */
static chat_status abandon(arc_pass *ps, arc_part *p)
{
    chat_status st = arc_delete_objects(ps, p);
    if (st != CHAT_OK)
        return st;
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    const char *pid[] = {id};
    if (!arc_exec_ok(
            ps, "abandon",
            "DELETE FROM archive_partitions WHERE id = $1::bigint AND state IN ('planned', 'uploaded', 'verified')", 1,
            pid))
        return CHAT_ERR_UNAVAILABLE;
    ps->rep->abandoned++;
    LOG_INFO("archive", "event=archiving_undone partition=%s state=%s", p->name, p->state);
    p->id = 0;
    p->state[0] = '\0';
    return CHAT_OK;
}

/* Takes a partition from its recorded state to `dropped` (or `restored`). */
static chat_status advance(arc_pass *ps, arc_part *p)
{
    chat_status st = CHAT_OK;
    while (st == CHAT_OK) {
        if (strcmp(p->state, "planned") == 0) {
            /* its objects may or may not have been uploaded: start over */
            return abandon(ps, p);
        } else if (strcmp(p->state, "uploaded") == 0) {
            st = arc_verify(ps, p);
            if (st == CHAT_OK)
                arc_pause_point(ps, "verified", p);
        } else if (strcmp(p->state, "verified") == 0) {
            st = arc_detach(ps, p);
            if (st == CHAT_OK)
                arc_pause_point(ps, "detached", p);
        } else if (strcmp(p->state, "detached") == 0) {
            st = arc_drop(ps, p);
            if (st == CHAT_OK)
                arc_pause_point(ps, "dropped", p);
        } else if (strcmp(p->state, "restoring") == 0) {
            return arc_finish_restore(ps, p);
        } else {
            return CHAT_OK; /* dropped, restored */
        }
        if (st == CHAT_ERR_INVALID || st == CHAT_ERR_CONFLICT) {
            /* what is in storage is not what the partition holds: undo, keep the error */
            char why[sizeof ps->err];
            snprintf(why, sizeof why, "%s", ps->err);
            if ((strcmp(p->state, "uploaded") == 0 || strcmp(p->state, "verified") == 0) && abandon(ps, p) == CHAT_OK)
                snprintf(ps->err, sizeof ps->err, "%.460s (undone: planned again at the next pass)", why);
            return st;
        }
    }
    return st;
}

/* Archives one attached partition from scratch. */
static chat_status archive_one(arc_pass *ps, arc_part *p)
{
    plan pl = {.attempt_ms = chat_now_ms()};
    int64_t t0 = chat_mono_ns();
    chat_status st = read_partition(ps, p, &pl);
    arc_rollback(ps);
    if (st == CHAT_OK)
        st = record_plan(ps, p, &pl);
    arc_rollback(ps);
    if (st == CHAT_OK) {
        arc_pause_point(ps, "planned", p);
        st = upload(ps, p, &pl);
    }
    if (st == CHAT_OK) {
        arc_pause_point(ps, "uploaded", p);
        st = advance(ps, p);
    }
    if (st == CHAT_OK && strcmp(p->state, "dropped") == 0) {
        int64_t ms = (chat_mono_ns() - t0) / 1000000;
        ps->rep->archived++;
        ps->rep->rows += pl.rows;
        ps->rep->bytes += pl.bytes;
        ps->rep->raw_bytes += pl.raw;
        ps->rep->archive_ms += ms;
        LOG_INFO("archive",
                 "event=partition_archived partition=%s rows=%lld conversations=%d chunks=%zu objects=%d bytes=%lld"
                 " raw_bytes=%lld ms=%lld",
                 p->name, (long long)pl.rows, pl.conversations, pl.nchunks, pl.nparts, (long long)pl.bytes,
                 (long long)pl.raw, (long long)ms);
    }
    plan_free(&pl);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* The pass                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* 1. Archivings an earlier pass left part-way, each taken on to `dropped` (or undone). false
 * when they cannot be listed (the pass stops; *first and the report say why). */
static bool resume_partway(arc_pass *ps, chat_status *first)
{
    wk_archive_report *report = ps->rep;
    PGresult *r = arc_sql(ps, "resume",
                          "SELECT partition_name, floor(extract(epoch FROM from_ts) * 1000000)::bigint,"
                          " floor(extract(epoch FROM until_ts) * 1000000)::bigint, state, rows, id"
                          " FROM archive_partitions WHERE state NOT IN ('dropped', 'restored') ORDER BY from_ts, id",
                          0, NULL, PGRES_TUPLES_OK);
    if (r == NULL) {
        *first = CHAT_ERR_UNAVAILABLE;
        snprintf(report->error, sizeof report->error, "%s", ps->err);
        return false;
    }
    for (int i = 0; i < PQntuples(r) && !arc_stopping(ps); i++) {
        arc_part p;
        arc_part_from_row(&p, r, i, true);
        report->resumed++;
        LOG_INFO("archive", "event=archiving_resumed partition=%s state=%s", p.name, p.state);
        chat_status st = advance(ps, &p);
        if (st == CHAT_OK && strcmp(p.state, "dropped") == 0)
            report->archived++;
        if (st != CHAT_OK) {
            arc_record_failure(ps, &p, st);
            if (*first == CHAT_OK)
                *first = st;
        }
    }
    PQclear(r);
    return true;
}

/* 2. Attached partitions whose whole span is older than the retention, archived one by one. */
static void archive_candidates(arc_pass *ps, chat_status *first)
{
    wk_archive_report *report = ps->rep;
    char retention[48];
    arc_interval_text(retention, sizeof retention, ps->cfg->hot_retention_ms);
    const char *p1[] = {retention};
    PGresult *r =
        arc_sql(ps, "candidates",
                "SELECT b.partition_name, floor(extract(epoch FROM b.from_ts) * 1000000)::bigint,"
                " floor(extract(epoch FROM b.until_ts) * 1000000)::bigint FROM chat_partition_bounds() b"
                " WHERE isfinite(b.from_ts) AND isfinite(b.until_ts) AND NOT b.detach_pending"
                " AND b.until_ts <= now() - $1::interval"
                " AND NOT EXISTS (SELECT 1 FROM archive_partitions a WHERE a.partition_name = b.partition_name"
                " AND a.state NOT IN ('dropped', 'restored'))"
                " ORDER BY b.from_ts",
                1, p1, PGRES_TUPLES_OK);
    if (r == NULL) {
        if (*first == CHAT_OK) {
            *first = CHAT_ERR_UNAVAILABLE;
            snprintf(report->error, sizeof report->error, "%s", ps->err);
        }
        return;
    }
    for (int i = 0; i < PQntuples(r) && !arc_stopping(ps); i++) {
        arc_part p;
        arc_part_from_row(&p, r, i, false);
        chat_status st = archive_one(ps, &p);
        if (st != CHAT_OK) {
            arc_record_failure(ps, &p, st);
            if (*first == CHAT_OK)
                *first = st;
        }
    }
    PQclear(r);
}

chat_status wk_archive_pass(const chat_cfg *cfg, PGconn *pg, wk_objstore *os, const wk_archive_options *opt,
                            wk_archive_report *report)
{
    memset(report, 0, sizeof *report);
    arc_pass ps = {.cfg = cfg, .pg = pg, .os = os, .opt = opt, .rep = report};
    if (!arc_take_lock(&ps)) {
        snprintf(report->error, sizeof report->error, "%s", ps.err);
        return strstr(ps.err, "another archive pass") ? CHAT_ERR_CONFLICT : CHAT_ERR_UNAVAILABLE;
    }
    chat_status first = CHAT_OK;
    arc_upkeep(&ps);
    if (resume_partway(&ps, &first))
        archive_candidates(&ps, &first);
    arc_rollback(&ps);
    arc_drop_lock(&ps);
    return first;
}
