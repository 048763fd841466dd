/* The api role's history: a page of one conversation's events, newest first, from the hot rows
 * and, below them, the archive. Runs on a lane's delivery thread; the pure helper on any. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_mem.h"
#include "wk_apip.h"

uint32_t wk_api_history_limit(uint32_t asked)
{
    if (asked == 0)
        return WK_API_HISTORY_DEFAULT;
    return asked > WK_API_HISTORY_MAX ? WK_API_HISTORY_MAX : asked;
}

/* Archived events of conv with floor < seq < before (before 0: no bound), newest first, at most
 * want of them, into out (pointers into chunks kept in cs). Returns how many, -1 on failure.
 * Live chunks never overlap, so reading them by seq_hi descending gives the events in order. */
static int history_cold(api_call *c, api_cold_set *cs, const char *conv, uint64_t floor, uint64_t before, int want,
                        const Chat__V1__Event **out)
{
    char f[24], b[24], lim[16];
    snprintf(f, sizeof f, "%" PRIu64, floor);
    snprintf(b, sizeof b, "%" PRIu64, before);
    snprintf(lim, sizeof lim, "%d", API_COLD_CHUNKS_MAX);
    const char *p[] = {conv, f, b, lim};
    PGresult *r =
        api_run(c, "history_cold",
                "SELECT " API_CHUNK_COLUMNS " FROM archive_chunks k JOIN archive_objects o ON o.id = k.object_id"
                " WHERE k.live AND k.conversation_id = $1 AND k.seq_hi > $2::bigint"
                " AND ($3::bigint = 0 OR k.seq_lo < $3::bigint)"
                " ORDER BY k.seq_hi DESC LIMIT $4::int",
                4, p, PGRES_TUPLES_OK);
    if (r == NULL)
        return -1;
    int got = 0;
    for (int i = 0; i < PQntuples(r) && got < want; i++) {
        const wk_cold_chunk *ch = api_cold_read(c, cs, r, i);
        if (ch == NULL) {
            PQclear(r);
            return -1;
        }
        for (size_t k = ch->n; k-- > 0 && got < want;) {
            uint64_t seq = ch->events[k]->seq;
            if (seq > floor && (before == 0 || seq < before))
                out[got++] = ch->events[k];
        }
    }
    PQclear(r);
    return got;
}

/* One history page being built: the hot rows, the archived events below or between them, and
 * the two merged newest first (events point into rows, cold_events and the chunks of cs). */
typedef struct history_page {
    PGresult *rows;
    int nhot;
    const Chat__V1__Event **cold_events;
    int ncold;
    api_cold_set cs;
    Chat__V1__Event *events, **eventp;
    bool *from_cold;
    int n; /* events merged */
    int h; /* hot rows taken */
    int k; /* archived events taken */
} history_page;

/* Whether the asking user may read conv: a named user must be a member of the live conversation
 * (not_member otherwise, whether it exists or not); a backend ("") reads any that exists. */
static bool history_access(api_call *c, const Chat__V1__HistoryRequest *q)
{
    const char *p[] = {q->conv, q->user};
    PGresult *r = api_run(c, "conversation",
                          "SELECT c.deleted_at IS NULL, EXISTS (SELECT 1 FROM conversation_members m"
                          " WHERE m.conversation_id = c.id AND m.user_id = $2)"
                          " FROM conversations c WHERE c.id = $1",
                          2, p, PGRES_TUPLES_OK);
    if (r == NULL)
        return false;
    bool exists = PQntuples(r) == 1;
    bool live = exists && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    bool member = exists && strcmp(PQgetvalue(r, 0, 1), "t") == 0;
    PQclear(r);
    if (q->user[0] && !(live && member)) {
        api_fail(c, "not_member", "not a member of this conversation");
        return false;
    }
    if (!exists) {
        api_fail(c, "not_found", "conversation not found");
        return false;
    }
    return true;
}

/* The hot rows of conv below before_seq (0: no bound), newest first, at most fetch of them, each
 * with its tombstone flag at H_EXTRA; NULL with the call failed. */
static PGresult *history_read_hot(api_call *c, const char *conv, uint64_t before_seq, uint32_t fetch_rows)
{
    char before[24], fetch[16];
    snprintf(before, sizeof before, "%" PRIu64, before_seq);
    snprintf(fetch, sizeof fetch, "%u", fetch_rows);
    const char *p[] = {conv, before, fetch};
    return api_run(c, "history",
                   "SELECT " API_EVENT_COLUMNS ","
                   " m.kind IN ('text', 'system', 'edit') AND (EXISTS (SELECT 1 FROM messages d"
                   " WHERE d.conversation_id = m.conversation_id AND d.kind = 'delete'"
                   " AND d.target_seq = CASE WHEN m.kind = 'edit' THEN m.target_seq ELSE m.seq END)"
                   " OR EXISTS (SELECT 1 FROM archive_tombstones t WHERE t.conversation_id = m.conversation_id"
                   " AND t.target_seq = CASE WHEN m.kind = 'edit' THEN m.target_seq ELSE m.seq END))"
                   " FROM messages m WHERE m.conversation_id = $1 AND ($2::bigint = 0 OR m.seq < $2::bigint)"
                   " ORDER BY m.seq DESC LIMIT $3::int",
                   3, p, PGRES_TUPLES_OK);
}

/* Merges the hot rows and the archived events of pg newest first into its events, at most want. */
static void history_merge(history_page *pg, int want, char *conv)
{
    pg->events = chat_xcalloc((size_t)want + 1, sizeof *pg->events);
    pg->eventp = chat_xcalloc((size_t)want + 1, sizeof *pg->eventp);
    pg->from_cold = chat_xcalloc((size_t)want + 1, sizeof *pg->from_cold);
    while (pg->n < want && (pg->h < pg->nhot || pg->k < pg->ncold)) {
        int h = pg->h, k = pg->k;
        uint64_t hs = h < pg->nhot ? strtoull(PQgetvalue(pg->rows, h, H_SEQ), NULL, 10) : 0;
        uint64_t ks = k < pg->ncold ? pg->cold_events[k]->seq : 0;
        Chat__V1__Event *e = &pg->events[pg->n];
        if (h < pg->nhot && (k >= pg->ncold || hs >= ks)) {
            api_event_from_row(e, pg->rows, h, conv);
            if (strcmp(PQgetvalue(pg->rows, h, H_EXTRA), "t") == 0)
                api_tombstone(e);
            if (k < pg->ncold && hs == ks)
                pg->k++; /* archived between the two reads: once */
            pg->h++;
        } else {
            api_event_from_cold(e, pg->cold_events[k], conv);
            pg->from_cold[pg->n] = true;
            pg->k++;
        }
        pg->eventp[pg->n] = e;
        pg->n++;
    }
}

/* Tombstones: a text or system message whose delete event exists, and an edit of such a
 * message, come with deleted = true and an empty body and meta, so history never shows what
 * was deleted (the edits carry its text too). The delete event's own row stays as it is.
 * EXISTS per row is served by messages_changes_target_idx (migration 0004); a delete event that
 * is already archived is found in archive_tombstones (migration 0006).
 * Two tiers: the hot rows first, then, when they do not fill the page with consecutive seqs, the
 * archive below them (floor = the lowest hot seq of a full page); merged newest first, an event
 * found in both (archived between the two reads) taken once. */
void api_history(api_call *c)
{
    Chat__V1__HistoryRequest *q = chat__v1__history_request__unpack(NULL, c->len, c->data);
    history_page pg = {.cs = {.n = 0}};
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed HistoryRequest");
        goto out;
    }
    if (!api_check_conv(c, q->conv) || !api_asking_user_ok(c, q->user) || !history_access(c, q))
        goto out;
    uint32_t limit = wk_api_history_limit(q->limit);
    uint64_t before_seq = q->before > (uint64_t)INT64_MAX ? 0 : q->before;
    pg.rows = history_read_hot(c, q->conv, before_seq, limit + 1);
    if (pg.rows == NULL)
        goto out;
    pg.nhot = PQntuples(pg.rows);
    int want = (int)limit + 1;
    uint64_t top = pg.nhot ? strtoull(PQgetvalue(pg.rows, 0, H_SEQ), NULL, 10) : 0;
    uint64_t low = pg.nhot ? strtoull(PQgetvalue(pg.rows, pg.nhot - 1, H_SEQ), NULL, 10) : 0;
    pg.cold_events = calloc((size_t)want, sizeof *pg.cold_events);
    if (!(pg.nhot == want && top - low == limit)) {
        /* the hot rows leave room for archived events: below them, or between them */
        pg.ncold = history_cold(c, &pg.cs, q->conv, pg.nhot == want ? low : 0, before_seq, want, pg.cold_events);
        if (pg.ncold < 0)
            goto out;
    }
    history_merge(&pg, want, q->conv);
    bool more = pg.n > (int)limit;
    if (more)
        pg.n = (int)limit;
    if (pg.ncold > 0 && !api_cold_tombstones(c, pg.events, pg.from_cold, (size_t)pg.n))
        goto out;
    Chat__V1__Status st;
    Chat__V1__HistoryReply reply = CHAT__V1__HISTORY_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.events = pg.eventp;
    reply.n_events = (size_t)pg.n;
    reply.more = more;
    api_reply_with(c, &reply.base);
    if (pg.ncold > 0)
        LOG_DEBUG("api", "event=history_cold conv=%s hot=%d cold=%d chunks=%d", q->conv, pg.h, pg.k, pg.cs.n);
out:
    api_cold_release(c, &pg.cs);
    free(pg.events);
    free(pg.eventp);
    free(pg.cold_events);
    free(pg.from_cold);
    PQclear(pg.rows);
    chat__v1__history_request__free_unpacked(q, NULL);
}
