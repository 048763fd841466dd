/* Role `archive`: partition upkeep and the archive pass (docs/storage.md). The pass runs on the
 * role's thread or in chatctl, one at a time (advisory lock). Invariant: an object is recorded in
 * archive_objects before it is uploaded and deleted from storage before its row goes, and the
 * rows of a partition leave `messages` in the same transaction that makes its chunks live. */
#include "wk_archive.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_time.h"
#include "wk_cold.h"
#include "wk_pg.h"

/* ------------------------------------------------------------------------------------------ */
/* Partition upkeep                                                                             */
/* ------------------------------------------------------------------------------------------ */

static void interval_text(char *out, size_t outsz, int64_t ms)
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
    interval_text(span, sizeof span, span_ms);
    interval_text(ahead, sizeof ahead, ahead_ms(span_ms));
    const char *params[] = {span, ahead};
    PGresult *r =
        PQexecParams(pg, "SELECT chat_ensure_partitions(now() - $1::interval, now() + $2::interval, $1::interval)", 2,
                     NULL, params, NULL, NULL, 0);
    int n = -1;
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
        n = atoi(PQgetvalue(r, 0, 0));
    else
        LOG_WARN("archive", "event=ensure_partitions_failed detail=\"%s\"", PQresultErrorMessage(r));
    PQclear(r);
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* Pass state                                                                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct pass {
    const chat_cfg *cfg;
    PGconn *pg;
    wk_objstore *os;
    const wk_archive_options *opt;
    wk_archive_report *rep;
    char err[512]; /* the current step's failure */
} pass;

/* A partition being archived (or restored). */
typedef struct part {
    int64_t id; /* archive_partitions.id; 0 before planning */
    char name[128];
    int64_t from_us, until_us;
    char state[16];
    int64_t rows;
} part;

static void clean(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '\r' || *s == '"' || *s == '\t')
            *s = ' ';
}

static chat_status stepfail(pass *ps, chat_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static chat_status stepfail(pass *ps, chat_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err, sizeof ps->err, fmt, ap);
    va_end(ap);
    clean(ps->err);
    return st;
}

/* Runs one statement; the result when it has status `expect` (caller PQclears), else NULL with
 * ps->err set to "<what>: <server message>". */
static PGresult *sql(pass *ps, const char *what, const char *text, int n, const char *const *params,
                     ExecStatusType expect)
{
    PGresult *r = PQexecParams(ps->pg, text, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == expect)
        return r;
    const char *msg = PQresultErrorMessage(r)[0] ? PQresultErrorMessage(r) : PQerrorMessage(ps->pg);
    stepfail(ps, CHAT_ERR_UNAVAILABLE, "%s: %s", what, msg);
    PQclear(r);
    return NULL;
}

static bool exec_ok(pass *ps, const char *what, const char *text, int n, const char *const *params)
{
    PGresult *r = sql(ps, what, text, n, params, PGRES_COMMAND_OK);
    PQclear(r);
    return r != NULL;
}

static void rollback(pass *ps)
{
    if (PQtransactionStatus(ps->pg) != PQTRANS_IDLE) {
        PGresult *r = PQexec(ps->pg, "ROLLBACK");
        PQclear(r);
    }
}

/* The first failure of the pass goes into the report; the partition's row keeps its last one. */
static void record_failure(pass *ps, part *p, chat_status st)
{
    ps->rep->failed++;
    if (ps->rep->error[0] == '\0')
        snprintf(ps->rep->error, sizeof ps->rep->error, "%.120s: %.380s", p->name, ps->err);
    LOG_WARN("archive", "event=archive_failed partition=%s state=%s status=%s detail=\"%s\"", p->name,
             p->state[0] ? p->state : "hot", chat_status_str(st), ps->err);
    rollback(ps);
    if (p->id > 0) {
        char id[24];
        snprintf(id, sizeof id, "%lld", (long long)p->id);
        const char *params[] = {id, ps->err};
        PGresult *r = PQexecParams(ps->pg, "UPDATE archive_partitions SET last_error = $2 WHERE id = $1::bigint", 2,
                                   NULL, params, NULL, NULL, 0);
        PQclear(r);
    }
}

/* The crash tests' hook: stop right after `step` and wait to be killed. */
static void pause_point(pass *ps, const char *step, const part *p)
{
    const char *at = ps->opt ? ps->opt->pause_at : NULL;
    if (at == NULL || strcmp(at, step) != 0)
        return;
    fprintf(stderr, "archive: paused after %s of %s (pid %d)\n", step, p->name, (int)getpid());
    fflush(stderr);
    for (;;)
        pause();
}

static bool stopping(const pass *ps)
{
    return ps->opt && ps->opt->stopping && atomic_load(ps->opt->stopping);
}

/* The partition's table name quoted as an SQL identifier (PQescapeIdentifier); caller frees
 * with PQfreemem. */
static char *ident(pass *ps, const char *name)
{
    char *q = PQescapeIdentifier(ps->pg, name, strlen(name));
    if (q == NULL)
        stepfail(ps, CHAT_ERR_INTERNAL, "cannot quote %s: %s", name, PQerrorMessage(ps->pg));
    return q;
}

static bool set_state(pass *ps, part *p, const char *state, const char *stamp_column)
{
    char id[24], q[256];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    /* stamp_column is one of our own column names, never input */
    snprintf(q, sizeof q,
             "UPDATE archive_partitions SET state = $2, %s = now(), last_error = NULL WHERE id = $1::bigint",
             stamp_column);
    const char *params[] = {id, state};
    if (!exec_ok(ps, "set_state", q, 2, params))
        return false;
    snprintf(p->state, sizeof p->state, "%s", state);
    return true;
}

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

static obj_part *new_part(pass *ps, plan *pl, const part *p)
{
    pl->parts = realloc(pl->parts, (size_t)(pl->nparts + 1) * sizeof *pl->parts);
    obj_part *o = &pl->parts[pl->nparts];
    memset(o, 0, sizeof *o);
    o->f = tmpfile();
    char key[256];
    snprintf(key, sizeof key, "%s/%lld-%03d.chunks", p->name, (long long)pl->attempt_ms, pl->nparts);
    if (o->f == NULL || !wk_objstore_join(ps->cfg->archive_url, key, o->url, sizeof o->url)) {
        if (o->f)
            fclose(o->f);
        stepfail(ps, CHAT_ERR_IO, "cannot start object %d (temporary file or URL)", pl->nparts);
        return NULL;
    }
    pl->nparts++;
    return o;
}

/* Compresses the writer's events into a chunk at the end of the current object part. */
static chat_status flush_chunk(pass *ps, plan *pl, const part *p)
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
        return stepfail(ps, st, "compressing the chunk of %s failed", pl->w.h.conv);
    if (fwrite(pl->frame.data, 1, pl->frame.len, o->f) != pl->frame.len)
        return stepfail(ps, CHAT_ERR_IO, "writing a temporary file failed");
    if (pl->nchunks == pl->cap) {
        pl->cap = pl->cap ? pl->cap * 2 : 256;
        pl->chunks = realloc(pl->chunks, pl->cap * sizeof *pl->chunks);
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
static chat_status finish_parts(pass *ps, plan *pl)
{
    for (int i = 0; i < pl->nparts; i++) {
        obj_part *o = &pl->parts[i];
        if (fflush(o->f) != 0)
            return stepfail(ps, CHAT_ERR_IO, "flushing a temporary file failed");
        void *map = o->len ? mmap(NULL, o->len, PROT_READ, MAP_PRIVATE, fileno(o->f), 0) : NULL;
        if (o->len && map == MAP_FAILED)
            return stepfail(ps, CHAT_ERR_IO, "mmap of a temporary file failed");
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
static chat_status read_partition(pass *ps, part *p, plan *pl)
{
    char from[24], until[24];
    snprintf(from, sizeof from, "%lld", (long long)p->from_us);
    snprintf(until, sizeof until, "%lld", (long long)p->until_us);
    const char *params[] = {from, until};
    if (!exec_ok(ps, "begin", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL))
        return CHAT_ERR_UNAVAILABLE;
    if (!exec_ok(ps, "declare",
                 "DECLARE archive_rows NO SCROLL CURSOR FOR SELECT " PART_COLUMNS " FROM messages"
                 " WHERE created_at >= 'epoch'::timestamptz + $1::bigint * interval '1 microsecond'"
                 " AND created_at < 'epoch'::timestamptz + $2::bigint * interval '1 microsecond'"
                 " ORDER BY conversation_id, seq",
                 2, params))
        return CHAT_ERR_UNAVAILABLE;
    char fetch[64];
    snprintf(fetch, sizeof fetch, "FETCH %d FROM archive_rows", WK_ARCHIVE_FETCH_ROWS);
    for (;;) {
        PGresult *r = sql(ps, "fetch", fetch, 0, NULL, PGRES_TUPLES_OK);
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
                return stepfail(ps, CHAT_ERR_INTERNAL, "%s seq %" PRIu64 " is not above the previous one", conv, e.seq);
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
    if (!exec_ok(ps, "commit", "COMMIT", 0, NULL))
        return CHAT_ERR_UNAVAILABLE;
    return finish_parts(ps, pl);
}

/* Records the plan: the archive_partitions row (planned), its objects and chunks, in one
 * transaction, before anything is uploaded. */
static chat_status record_plan(pass *ps, part *p, plan *pl)
{
    char from[24], until[24], rows[24], convs[16], bytes[24], raw[24];
    snprintf(from, sizeof from, "%lld", (long long)p->from_us);
    snprintf(until, sizeof until, "%lld", (long long)p->until_us);
    snprintf(rows, sizeof rows, "%lld", (long long)pl->rows);
    snprintf(convs, sizeof convs, "%d", pl->conversations);
    snprintf(bytes, sizeof bytes, "%lld", (long long)pl->bytes);
    snprintf(raw, sizeof raw, "%lld", (long long)pl->raw);
    if (!exec_ok(ps, "begin", "BEGIN", 0, NULL))
        return CHAT_ERR_UNAVAILABLE;
    const char *p1[] = {p->name, from, until, rows, convs, bytes, raw};
    PGresult *r = sql(ps, "insert_partition",
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
        r = sql(ps, "insert_object",
                "INSERT INTO archive_objects (partition_id, part, url, bytes, sha256, chunks, rows)"
                " VALUES ($1::bigint, $2::int, $3, $4::bigint, $5, $6::int, $7::bigint) RETURNING id",
                7, p2, PGRES_TUPLES_OK);
        if (r == NULL)
            return CHAT_ERR_UNAVAILABLE;
        char oid[24];
        snprintf(oid, sizeof oid, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        /* its chunks, in batches */
        while (next < pl->nchunks && pl->chunks[next].part == i) {
            chat_buf a[7] = {{0}};
            for (int k = 0; k < 7; k++)
                chat_buf_pg_array_begin(&a[k]);
            for (int k = 0; k < 2000 && next < pl->nchunks && pl->chunks[next].part == i; k++, next++) {
                chunk_entry *c = &pl->chunks[next];
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
            bool ok = exec_ok(ps, "insert_chunks",
                              "INSERT INTO archive_chunks (object_id, byte_offset, byte_length, raw_length,"
                              " conversation_id, seq_lo, seq_hi, rows)"
                              " SELECT $1::bigint, u.o, u.l, u.r, u.c, u.lo, u.hi, u.n FROM unnest($2::bigint[],"
                              " $3::bigint[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[], $8::int[])"
                              " AS u(o, l, r, c, lo, hi, n)",
                              8, p3);
            for (int k = 0; k < 7; k++)
                chat_buf_free(&a[k]);
            if (!ok)
                return CHAT_ERR_UNAVAILABLE;
        }
    }
    if (!exec_ok(ps, "commit", "COMMIT", 0, NULL))
        return CHAT_ERR_UNAVAILABLE;
    snprintf(p->state, sizeof p->state, "planned");
    p->rows = pl->rows;
    return CHAT_OK;
}

static chat_status upload(pass *ps, part *p, plan *pl)
{
    for (int i = 0; i < pl->nparts; i++) {
        obj_part *o = &pl->parts[i];
        void *map = o->len ? mmap(NULL, o->len, PROT_READ, MAP_PRIVATE, fileno(o->f), 0) : NULL;
        if (o->len && map == MAP_FAILED)
            return stepfail(ps, CHAT_ERR_IO, "mmap of a temporary file failed");
        chat_status st = wk_objstore_put(ps->os, o->url, map ? map : "", o->len, ps->err, sizeof ps->err);
        if (map)
            munmap(map, o->len);
        if (st != CHAT_OK)
            return st;
    }
    pause_point(ps, "put", p);
    return set_state(ps, p, "uploaded", "uploaded_at") ? CHAT_OK : CHAT_ERR_UNAVAILABLE;
}

/* ------------------------------------------------------------------------------------------ */
/* Verification: every object read back, length and SHA-256, every chunk decoded and matched   */
/* ------------------------------------------------------------------------------------------ */

/* Objects of the partition: id, url, bytes, sha256, rows (by part). */
static PGresult *objects_of(pass *ps, const part *p)
{
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    const char *params[] = {id};
    return sql(ps, "objects",
               "SELECT id, url, bytes, sha256, rows FROM archive_objects WHERE partition_id = $1::bigint"
               " ORDER BY part",
               1, params, PGRES_TUPLES_OK);
}

/* Chunks of one object: byte_offset, byte_length, conversation_id, seq_lo, seq_hi, rows. */
static PGresult *chunks_of(pass *ps, const char *object_id)
{
    const char *params[] = {object_id};
    return sql(ps, "chunks",
               "SELECT byte_offset, byte_length, conversation_id, seq_lo, seq_hi, rows FROM archive_chunks"
               " WHERE object_id = $1::bigint ORDER BY byte_offset",
               1, params, PGRES_TUPLES_OK);
}

/* Reads object row i of objs back and checks it whole. CHAT_ERR_INVALID: it is not what was
 * written (the archiving must be redone); other statuses: storage or database trouble. When
 * each_chunk is not NULL, it is called with every decoded chunk (restore). */
typedef chat_status (*chunk_fn)(pass *ps, const wk_cold_chunk *c, void *ctx);
static chat_status check_object(pass *ps, PGresult *objs, int i, int64_t *rows, chunk_fn each_chunk, void *ctx)
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
        st = stepfail(ps, CHAT_ERR_INVALID, "%s: read back %zu bytes sha256 %.12s..., recorded %" PRIu64 " %.12s...",
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
            st = stepfail(ps, CHAT_ERR_INVALID, "%s: chunks do not tile the object at byte %" PRIu64, url, at);
            break;
        }
        at += ref.length;
        wk_cold_chunk *c = NULL;
        char why[256];
        st = wk_cold_chunk_decode(body.data + ref.offset, (size_t)ref.length, &c, why, sizeof why);
        if (st != CHAT_OK) {
            st = stepfail(ps, CHAT_ERR_INVALID, "%s@%" PRIu64 ": %s", url, ref.offset, why);
            break;
        }
        if (!wk_cold_chunk_matches(c, &ref, why, sizeof why))
            st = stepfail(ps, CHAT_ERR_INVALID, "%s", why);
        else if (each_chunk)
            st = each_chunk(ps, c, ctx);
        *rows += (int64_t)c->n;
        wk_cold_chunk_free(c);
    }
    if (st == CHAT_OK && at != body.len)
        st = stepfail(ps, CHAT_ERR_INVALID, "%s: %zu bytes but its chunks end at %" PRIu64, url, body.len, at);
    PQclear(ch);
out:
    chat_buf_free(&body);
    return st;
}

static chat_status verify(pass *ps, part *p)
{
    PGresult *objs = objects_of(ps, p);
    if (objs == NULL)
        return CHAT_ERR_UNAVAILABLE;
    int64_t rows = 0;
    chat_status st = CHAT_OK;
    for (int i = 0; i < PQntuples(objs) && st == CHAT_OK; i++)
        st = check_object(ps, objs, i, &rows, NULL, NULL);
    PQclear(objs);
    if (st == CHAT_OK && rows != p->rows)
        st = stepfail(ps, CHAT_ERR_INVALID, "the objects hold %lld events, %lld were planned", (long long)rows,
                      (long long)p->rows);
    if (st != CHAT_OK)
        return st;
    return set_state(ps, p, "verified", "verified_at") ? CHAT_OK : CHAT_ERR_UNAVAILABLE;
}

/* ------------------------------------------------------------------------------------------ */
/* Detach and drop                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* 1 attached partition of messages, 0 a table that is not a partition, -1 no such table, -2 error. */
static int table_state(pass *ps, const char *name)
{
    const char *params[] = {name};
    PGresult *r =
        sql(ps, "table_state", "SELECT c.relispartition FROM pg_class c WHERE c.oid = to_regclass(quote_ident($1))", 1,
            params, PGRES_TUPLES_OK);
    if (r == NULL)
        return -2;
    int st = PQntuples(r) == 0 ? -1 : strcmp(PQgetvalue(r, 0, 0), "t") == 0 ? 1 : 0;
    PQclear(r);
    return st;
}

/* One transaction: check the row count under a SHARE lock (no insert can reach the partition
 * any more), detach, make the chunks live, keep the delete targets as tombstones. Readers see
 * the events hot before the commit and cold after it. CHAT_ERR_CONFLICT when the count differs
 * (an event arrived late): the archiving is undone and planned again. */
static chat_status detach_once(pass *ps, part *p)
{
    char *q = ident(ps, p->name);
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
        st = stepfail(ps, CHAT_ERR_NOT_FOUND,
                      "table %s is gone before it was detached (dropped by hand?); the "
                      "archive is verified but left out of service",
                      p->name);
        goto out;
    }
    if (!exec_ok(ps, "begin", "BEGIN", 0, NULL) ||
        !exec_ok(ps, "lock_timeout", "SET LOCAL lock_timeout = '1s'", 0, NULL))
        goto out;
    snprintf(sqltext, sizeof sqltext, "LOCK TABLE %s IN SHARE MODE", q);
    if (!exec_ok(ps, "lock", sqltext, 0, NULL))
        goto out;
    snprintf(sqltext, sizeof sqltext, "SELECT count(*) FROM %s", q);
    PGresult *r = sql(ps, "count", sqltext, 0, NULL, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    int64_t now_rows = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    if (now_rows != p->rows) {
        st = stepfail(ps, CHAT_ERR_CONFLICT, "%s has %lld events now, %lld were archived: planned again", p->name,
                      (long long)now_rows, (long long)p->rows);
        goto out;
    }
    if (ts == 1) {
        snprintf(sqltext, sizeof sqltext, "ALTER TABLE messages DETACH PARTITION %s", q);
        if (!exec_ok(ps, "detach", sqltext, 0, NULL))
            goto out;
    }
    if (!exec_ok(ps, "chunks_live",
                 "UPDATE archive_chunks SET live = true WHERE object_id IN"
                 " (SELECT id FROM archive_objects WHERE partition_id = $1::bigint)",
                 1, pid))
        goto out;
    snprintf(sqltext, sizeof sqltext,
             "INSERT INTO archive_tombstones (conversation_id, target_seq, partition_id)"
             " SELECT conversation_id, target_seq, $1::bigint FROM %s WHERE kind = 'delete' AND target_seq IS NOT NULL"
             " ON CONFLICT DO NOTHING",
             q);
    if (!exec_ok(ps, "tombstones", sqltext, 1, pid))
        goto out;
    if (!exec_ok(ps, "state",
                 "UPDATE archive_partitions SET state = 'detached', detached_at = now(), last_error = NULL"
                 " WHERE id = $1::bigint",
                 1, pid) ||
        !exec_ok(ps, "commit", "COMMIT", 0, NULL))
        goto out;
    snprintf(p->state, sizeof p->state, "detached");
    st = CHAT_OK;
out:
    rollback(ps);
    PQfreemem(q);
    return st;
}

/* DETACH needs a moment of ACCESS EXCLUSIVE on `messages`; while it waits, inserts queue behind
 * it, so it waits at most 1 s at a time and tries again a little later (5 tries). */
static chat_status detach(pass *ps, part *p)
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
static chat_status drop(pass *ps, part *p)
{
    char *q = ident(ps, p->name);
    if (q == NULL)
        return CHAT_ERR_INTERNAL;
    chat_status st = CHAT_ERR_UNAVAILABLE;
    char id[24], sqltext[512];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    const char *pid[] = {id};
    int ts = table_state(ps, p->name);
    if (ts == -2)
        goto out;
    if (ts == 1) {
        st = stepfail(ps, CHAT_ERR_CONFLICT, "%s is attached again; not dropping it", p->name);
        goto out;
    }
    if (!exec_ok(ps, "begin", "BEGIN", 0, NULL))
        goto out;
    if (ts == 0) {
        snprintf(sqltext, sizeof sqltext,
                 "DELETE FROM message_dedupe d USING %s m WHERE d.conversation_id = m.conversation_id"
                 " AND d.client_msg_id = m.client_msg_id AND d.seq = m.seq",
                 q);
        if (!exec_ok(ps, "prune_dedupe", sqltext, 0, NULL))
            goto out;
        snprintf(sqltext, sizeof sqltext, "DROP TABLE %s", q);
        if (!exec_ok(ps, "drop", sqltext, 0, NULL))
            goto out;
    }
    if (!exec_ok(ps, "state",
                 "UPDATE archive_partitions SET state = 'dropped', dropped_at = now(), last_error = NULL"
                 " WHERE id = $1::bigint",
                 1, pid) ||
        !exec_ok(ps, "commit", "COMMIT", 0, NULL))
        goto out;
    snprintf(p->state, sizeof p->state, "dropped");
    st = CHAT_OK;
out:
    rollback(ps);
    PQfreemem(q);
    return st;
}

/* Deletes the objects of an archiving that did not reach `detached` (storage first, then the
 * rows), so it can be planned again. The rows stay while any delete fails. */
static chat_status abandon(pass *ps, part *p)
{
    PGresult *objs = objects_of(ps, p);
    if (objs == NULL)
        return CHAT_ERR_UNAVAILABLE;
    chat_status st = CHAT_OK;
    for (int i = 0; i < PQntuples(objs) && st == CHAT_OK; i++)
        st = wk_objstore_delete(ps->os, PQgetvalue(objs, i, 1), ps->err, sizeof ps->err);
    PQclear(objs);
    if (st != CHAT_OK)
        return st;
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    const char *pid[] = {id};
    if (!exec_ok(
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

/* After a restore: delete the objects, then their rows; the partition row stays as `restored`. */
static chat_status finish_restore(pass *ps, part *p)
{
    PGresult *objs = objects_of(ps, p);
    if (objs == NULL)
        return CHAT_ERR_UNAVAILABLE;
    chat_status st = CHAT_OK;
    for (int i = 0; i < PQntuples(objs) && st == CHAT_OK; i++)
        st = wk_objstore_delete(ps->os, PQgetvalue(objs, i, 1), ps->err, sizeof ps->err);
    PQclear(objs);
    if (st != CHAT_OK)
        return st;
    char id[24];
    snprintf(id, sizeof id, "%lld", (long long)p->id);
    const char *pid[] = {id};
    if (!exec_ok(ps, "begin", "BEGIN", 0, NULL) ||
        !exec_ok(ps, "delete_objects", "DELETE FROM archive_objects WHERE partition_id = $1::bigint", 1, pid) ||
        !exec_ok(ps, "state",
                 "UPDATE archive_partitions SET state = 'restored', last_error = NULL WHERE id = $1::bigint", 1, pid) ||
        !exec_ok(ps, "commit", "COMMIT", 0, NULL)) {
        rollback(ps);
        return CHAT_ERR_UNAVAILABLE;
    }
    snprintf(p->state, sizeof p->state, "restored");
    return CHAT_OK;
}

/* Takes a partition from its recorded state to `dropped` (or `restored`). */
static chat_status advance(pass *ps, part *p)
{
    chat_status st = CHAT_OK;
    while (st == CHAT_OK) {
        if (strcmp(p->state, "planned") == 0) {
            /* its objects may or may not have been uploaded: start over */
            return abandon(ps, p);
        } else if (strcmp(p->state, "uploaded") == 0) {
            st = verify(ps, p);
            if (st == CHAT_OK)
                pause_point(ps, "verified", p);
        } else if (strcmp(p->state, "verified") == 0) {
            st = detach(ps, p);
            if (st == CHAT_OK)
                pause_point(ps, "detached", p);
        } else if (strcmp(p->state, "detached") == 0) {
            st = drop(ps, p);
            if (st == CHAT_OK)
                pause_point(ps, "dropped", p);
        } else if (strcmp(p->state, "restoring") == 0) {
            return finish_restore(ps, p);
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
static chat_status archive_one(pass *ps, part *p)
{
    plan pl = {.attempt_ms = chat_now_ms()};
    int64_t t0 = chat_mono_ns();
    chat_status st = read_partition(ps, p, &pl);
    rollback(ps);
    if (st == CHAT_OK)
        st = record_plan(ps, p, &pl);
    rollback(ps);
    if (st == CHAT_OK) {
        pause_point(ps, "planned", p);
        st = upload(ps, p, &pl);
    }
    if (st == CHAT_OK) {
        pause_point(ps, "uploaded", p);
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

static bool take_lock(pass *ps)
{
    int64_t deadline = chat_mono_ns() / 1000000 + (ps->opt ? ps->opt->lock_wait_ms : 0);
    for (;;) {
        PGresult *r = sql(ps, "pass_lock", "SELECT pg_try_advisory_lock(727002, 0)", 0, NULL, PGRES_TUPLES_OK);
        if (r == NULL)
            return false;
        bool got = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (got)
            return true;
        if (chat_mono_ns() / 1000000 >= deadline || stopping(ps)) {
            stepfail(ps, CHAT_ERR_CONFLICT, "another archive pass is running (pg_advisory_lock(727002, 0) is held)");
            return false;
        }
        chat_sleep_ms(250);
    }
}

static void drop_lock(pass *ps)
{
    PGresult *r = PQexec(ps->pg, "SELECT pg_advisory_unlock(727002, 0)");
    PQclear(r);
}

/* Partitions of span CHAT_PARTITION_SPAN from now - span to now + ahead, after replacing the
 * empty ones of another span; one transaction with a short lock_timeout. */
static void upkeep(pass *ps)
{
    char span[48], ahead[48];
    interval_text(span, sizeof span, ps->cfg->partition_span_ms);
    interval_text(ahead, sizeof ahead, ahead_ms(ps->cfg->partition_span_ms));
    const char *p1[] = {span};
    const char *p2[] = {span, ahead};
    PGresult *r1 = NULL, *r2 = NULL;
    bool ok = exec_ok(ps, "begin", "BEGIN", 0, NULL) &&
              exec_ok(ps, "lock_timeout", "SET LOCAL lock_timeout = '2s'", 0, NULL) &&
              (r1 = sql(ps, "reshape", "SELECT chat_reshape_partitions($1::interval)", 1, p1, PGRES_TUPLES_OK)) &&
              (r2 = sql(ps, "ensure",
                        "SELECT chat_ensure_partitions(now() - $1::interval, now() + $2::interval, $1::interval)", 2,
                        p2, PGRES_TUPLES_OK)) &&
              exec_ok(ps, "commit", "COMMIT", 0, NULL);
    if (ok) {
        ps->rep->partitions_reshaped += atoi(PQgetvalue(r1, 0, 0));
        ps->rep->partitions_created += atoi(PQgetvalue(r2, 0, 0));
    } else {
        LOG_WARN("archive", "event=upkeep_failed detail=\"%s\"", ps->err);
    }
    PQclear(r1);
    PQclear(r2);
    rollback(ps);
}

static void part_from_row(part *p, PGresult *r, int i, bool with_state)
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

chat_status wk_archive_pass(const chat_cfg *cfg, PGconn *pg, wk_objstore *os, const wk_archive_options *opt,
                            wk_archive_report *report)
{
    memset(report, 0, sizeof *report);
    pass ps = {.cfg = cfg, .pg = pg, .os = os, .opt = opt, .rep = report};
    if (!take_lock(&ps)) {
        snprintf(report->error, sizeof report->error, "%s", ps.err);
        return strstr(ps.err, "another archive pass") ? CHAT_ERR_CONFLICT : CHAT_ERR_UNAVAILABLE;
    }
    chat_status first = CHAT_OK;
    upkeep(&ps);

    /* 1. archivings an earlier pass left part-way */
    PGresult *r = sql(&ps, "resume",
                      "SELECT partition_name, floor(extract(epoch FROM from_ts) * 1000000)::bigint,"
                      " floor(extract(epoch FROM until_ts) * 1000000)::bigint, state, rows, id"
                      " FROM archive_partitions WHERE state NOT IN ('dropped', 'restored') ORDER BY from_ts, id",
                      0, NULL, PGRES_TUPLES_OK);
    if (r == NULL) {
        first = CHAT_ERR_UNAVAILABLE;
        snprintf(report->error, sizeof report->error, "%s", ps.err);
        goto out;
    }
    for (int i = 0; i < PQntuples(r) && !stopping(&ps); i++) {
        part p;
        part_from_row(&p, r, i, true);
        report->resumed++;
        LOG_INFO("archive", "event=archiving_resumed partition=%s state=%s", p.name, p.state);
        chat_status st = advance(&ps, &p);
        if (st == CHAT_OK && strcmp(p.state, "dropped") == 0)
            report->archived++;
        if (st != CHAT_OK) {
            record_failure(&ps, &p, st);
            if (first == CHAT_OK)
                first = st;
        }
    }
    PQclear(r);

    /* 2. attached partitions whose whole span is older than the retention */
    char retention[48];
    interval_text(retention, sizeof retention, cfg->hot_retention_ms);
    const char *p1[] = {retention};
    r = sql(&ps, "candidates",
            "SELECT b.partition_name, floor(extract(epoch FROM b.from_ts) * 1000000)::bigint,"
            " floor(extract(epoch FROM b.until_ts) * 1000000)::bigint FROM chat_partition_bounds() b"
            " WHERE isfinite(b.from_ts) AND isfinite(b.until_ts) AND NOT b.detach_pending"
            " AND b.until_ts <= now() - $1::interval"
            " AND NOT EXISTS (SELECT 1 FROM archive_partitions a WHERE a.partition_name = b.partition_name"
            " AND a.state NOT IN ('dropped', 'restored'))"
            " ORDER BY b.from_ts",
            1, p1, PGRES_TUPLES_OK);
    if (r == NULL) {
        if (first == CHAT_OK) {
            first = CHAT_ERR_UNAVAILABLE;
            snprintf(report->error, sizeof report->error, "%s", ps.err);
        }
        goto out;
    }
    for (int i = 0; i < PQntuples(r) && !stopping(&ps); i++) {
        part p;
        part_from_row(&p, r, i, false);
        chat_status st = archive_one(&ps, &p);
        if (st != CHAT_OK) {
            record_failure(&ps, &p, st);
            if (first == CHAT_OK)
                first = st;
        }
    }
    PQclear(r);
out:
    rollback(&ps);
    drop_lock(&ps);
    return first;
}

/* ------------------------------------------------------------------------------------------ */
/* Restore                                                                                      */
/* ------------------------------------------------------------------------------------------ */

typedef struct restore_ctx {
    int64_t rows;
} restore_ctx;

/* Inserts the events of one decoded chunk into `messages` and message_dedupe (inside the
 * restore's transaction). */
static chat_status restore_chunk(pass *ps, const wk_cold_chunk *c, void *arg)
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
            exec_ok(ps, "restore_rows",
                    "INSERT INTO messages (conversation_id, seq, id, client_msg_id, sender_id, kind, body, meta,"
                    " target_seq, emoji, reaction_on, created_at)"
                    " SELECT $1, u.seq, u.id, u.cmid, u.sender, u.kind, u.body, u.meta::jsonb, u.target, u.emoji,"
                    " u.reaction_on, 'epoch'::timestamptz + u.created * interval '1 microsecond'"
                    " FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
                    " $8::text[], $9::bigint[], $10::text[], $11::bool[], $12::bigint[])"
                    " AS u(seq, id, cmid, sender, kind, body, meta, target, emoji, reaction_on, created)",
                    12, params) &&
            exec_ok(ps, "restore_dedupe",
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
static chat_status restore_one(pass *ps, part *p)
{
    if (strcmp(p->state, "detached") == 0)
        return stepfail(ps, CHAT_ERR_CONFLICT,
                        "%s is still being archived (detached, not dropped): run chatctl archive run first", p->name);
    if (strcmp(p->state, "restoring") == 0)
        return finish_restore(ps, p);
    /* read and check everything before touching the database */
    PGresult *objs = objects_of(ps, p);
    if (objs == NULL)
        return CHAT_ERR_UNAVAILABLE;
    chat_status st = CHAT_OK;
    int64_t rows = 0;
    for (int i = 0; i < PQntuples(objs) && st == CHAT_OK; i++)
        st = check_object(ps, objs, i, &rows, NULL, NULL);
    if (st == CHAT_OK && rows != p->rows)
        st = stepfail(ps, CHAT_ERR_INVALID, "the objects hold %lld events, %lld were archived", (long long)rows,
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
    bool ok = exec_ok(ps, "begin", "BEGIN", 0, NULL) &&
              exec_ok(ps, "lock_timeout", "SET LOCAL lock_timeout = '10s'", 0, NULL);
    PGresult *e = ok ? sql(ps, "ensure",
                           "SELECT chat_ensure_partitions('epoch'::timestamptz + $1::bigint * interval '1 microsecond',"
                           " 'epoch'::timestamptz + $2::bigint * interval '1 microsecond', $3::interval)",
                           3, pe, PGRES_TUPLES_OK)
                     : NULL;
    ok = e != NULL && exec_ok(ps, "commit", "COMMIT", 0, NULL) && exec_ok(ps, "begin", "BEGIN", 0, NULL);
    PQclear(e);
    for (int i = 0; ok && i < PQntuples(objs); i++) {
        int64_t n = 0;
        st = check_object(ps, objs, i, &n, restore_chunk, &rc);
        ok = st == CHAT_OK;
    }
    PQclear(objs);
    ok = ok && rc.rows == p->rows &&
         exec_ok(ps, "chunks_out",
                 "UPDATE archive_chunks SET live = false WHERE object_id IN"
                 " (SELECT id FROM archive_objects WHERE partition_id = $1::bigint)",
                 1, pid) &&
         exec_ok(ps, "tombstones_out", "DELETE FROM archive_tombstones WHERE partition_id = $1::bigint", 1, pid) &&
         exec_ok(ps, "state",
                 "UPDATE archive_partitions SET state = 'restoring', restored_at = now(), last_error = NULL"
                 " WHERE id = $1::bigint",
                 1, pid) &&
         exec_ok(ps, "commit", "COMMIT", 0, NULL);
    if (!ok) {
        rollback(ps);
        return st == CHAT_OK ? CHAT_ERR_UNAVAILABLE : st;
    }
    snprintf(p->state, sizeof p->state, "restoring");
    ps->rep->rows += rc.rows;
    LOG_INFO("archive", "event=partition_restored partition=%s archiving=%lld rows=%lld", p->name, (long long)p->id,
             (long long)rc.rows);
    pause_point(ps, "restored", p);
    return finish_restore(ps, p);
}

chat_status wk_archive_restore(const chat_cfg *cfg, PGconn *pg, wk_objstore *os, const char *partition,
                               const wk_archive_options *opt, wk_archive_report *report)
{
    memset(report, 0, sizeof *report);
    pass ps = {.cfg = cfg, .pg = pg, .os = os, .opt = opt, .rep = report};
    if (!take_lock(&ps)) {
        snprintf(report->error, sizeof report->error, "%s", ps.err);
        return strstr(ps.err, "another archive pass") ? CHAT_ERR_CONFLICT : CHAT_ERR_UNAVAILABLE;
    }
    int64_t t0 = chat_mono_ns();
    chat_status st = CHAT_OK;
    /* every archiving of that partition that holds events (a partition made again for late
     * events and archived again has more than one), oldest first */
    const char *p1[] = {partition};
    PGresult *r = sql(&ps, "find",
                      "SELECT partition_name, floor(extract(epoch FROM from_ts) * 1000000)::bigint,"
                      " floor(extract(epoch FROM until_ts) * 1000000)::bigint, state, rows, id"
                      " FROM archive_partitions WHERE partition_name = $1"
                      " AND state IN ('dropped', 'restoring', 'detached') ORDER BY id",
                      1, p1, PGRES_TUPLES_OK);
    if (r == NULL) {
        st = CHAT_ERR_UNAVAILABLE;
    } else if (PQntuples(r) == 0) {
        st =
            stepfail(&ps, CHAT_ERR_NOT_FOUND, "no archived partition named %s (see chatctl archive status)", partition);
    }
    if (st != CHAT_OK) {
        report->failed = 1;
        snprintf(report->error, sizeof report->error, "%s", ps.err);
    }
    for (int i = 0; r && i < PQntuples(r); i++) {
        part p;
        part_from_row(&p, r, i, true);
        chat_status one = restore_one(&ps, &p);
        if (one != CHAT_OK) {
            record_failure(&ps, &p, one);
            if (st == CHAT_OK)
                st = one;
        }
    }
    PQclear(r);
    rollback(&ps);
    report->archive_ms = (chat_mono_ns() - t0) / 1000000;
    drop_lock(&ps);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* The role's thread                                                                            */
/* ------------------------------------------------------------------------------------------ */

struct wk_archive {
    wk_app *app;
    wk_objstore *os;
    pthread_t thread;
    atomic_uint_fast64_t *m_passes, *m_failures, *m_rows, *m_partitions;
};

static void *archive_thread(void *arg)
{
    wk_archive *a = arg;
    const chat_cfg *cfg = a->app->cfg;
    PGconn *pg = NULL;
    int64_t next = 0;
    while (!atomic_load(&a->app->stopping)) {
        int64_t now = chat_mono_ns() / 1000000;
        if (now >= next) {
            if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
                PQfinish(pg);
                pg = NULL;
                if (wk_pg_connect(cfg->pg_dsn, "archive", &pg) != CHAT_OK)
                    pg = NULL;
            }
            bool failed = pg == NULL;
            if (pg) {
                wk_archive_options opt = {.stopping = &a->app->stopping};
                wk_archive_report rep;
                chat_status st = wk_archive_pass(cfg, pg, a->os, &opt, &rep);
                atomic_fetch_add(a->m_passes, 1);
                atomic_fetch_add(a->m_rows, (uint64_t)rep.rows);
                atomic_fetch_add(a->m_partitions, (uint64_t)rep.archived);
                failed = st != CHAT_OK && st != CHAT_ERR_CONFLICT;
                if (failed)
                    atomic_fetch_add(a->m_failures, 1);
                if (failed || rep.archived || rep.partitions_created || rep.partitions_reshaped || rep.abandoned)
                    CHAT_LOG(failed ? CHAT_LOG_WARN : CHAT_LOG_INFO, "archive",
                             "event=pass status=%s created=%d reshaped=%d archived=%d resumed=%d undone=%d failed=%d"
                             " rows=%lld bytes=%lld ms=%lld error=\"%s\"",
                             chat_status_str(st), rep.partitions_created, rep.partitions_reshaped, rep.archived,
                             rep.resumed, rep.abandoned, rep.failed, (long long)rep.rows, (long long)rep.bytes,
                             (long long)rep.archive_ms, rep.error);
            }
            next = now + (failed ? (pg ? WK_ARCHIVE_RETRY_MS : 2000) : WK_ARCHIVE_INTERVAL_MS);
        }
        chat_sleep_ms(200);
    }
    PQfinish(pg);
    return NULL;
}

chat_status wk_archive_start(wk_app *app, wk_archive **out)
{
    wk_archive *a = calloc(1, sizeof *a);
    if (a == NULL)
        return CHAT_ERR_NOMEM;
    a->app = app;
    chat_status st = wk_objstore_create(app->cfg, &a->os);
    if (st != CHAT_OK) {
        free(a);
        return st;
    }
    chat_metrics *m = app->metrics;
    a->m_passes = chat_metrics_counter(m, "chat_archive_passes_total", NULL, "Archive passes run by this worker.");
    a->m_failures = chat_metrics_counter(m, "chat_archive_pass_failures_total", NULL,
                                         "Archive passes that left a partition at an error (retried later).");
    a->m_rows = chat_metrics_counter(m, "chat_archive_rows_total", NULL, "Events moved to cold storage.");
    a->m_partitions =
        chat_metrics_counter(m, "chat_archive_partitions_total", NULL, "Partitions moved to cold storage.");
    if (pthread_create(&a->thread, NULL, archive_thread, a) != 0) {
        wk_objstore_destroy(a->os);
        free(a);
        return CHAT_ERR_INTERNAL;
    }
    LOG_INFO("archive", "event=role_started archive_url=%s span_ms=%lld retention_ms=%lld", app->cfg->archive_url,
             (long long)app->cfg->partition_span_ms, (long long)app->cfg->hot_retention_ms);
    *out = a;
    return CHAT_OK;
}

void wk_archive_destroy(wk_archive *a)
{
    if (a == NULL)
        return;
    pthread_join(a->thread, NULL);
    wk_objstore_destroy(a->os);
    free(a);
}
