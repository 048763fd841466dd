/* The api role's history: a page of one conversation's events, newest first, from the hot rows
 * and, below them, the archive. Runs on a lane's delivery thread; the pure helper on any. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
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
    PGresult *rows = NULL;
    Chat__V1__Event *events = NULL, **eventp = NULL;
    const Chat__V1__Event **cold_events = NULL;
    bool *from_cold = NULL;
    api_cold_set cs = {.n = 0};
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed HistoryRequest");
        goto out;
    }
    if (!api_check_conv(c, q->conv))
        goto out;
    if (!api_asking_user_ok(c, q->user))
        goto out;
    const char *p1[] = {q->conv, q->user};
    PGresult *r = api_run(c, "conversation",
                          "SELECT c.deleted_at IS NULL, EXISTS (SELECT 1 FROM conversation_members m"
                          " WHERE m.conversation_id = c.id AND m.user_id = $2)"
                          " FROM conversations c WHERE c.id = $1",
                          2, p1, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    bool exists = PQntuples(r) == 1;
    bool live = exists && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    bool member = exists && strcmp(PQgetvalue(r, 0, 1), "t") == 0;
    PQclear(r);
    if (q->user[0] && !(live && member)) {
        api_fail(c, "not_member", "not a member of this conversation");
        goto out;
    }
    if (!exists) {
        api_fail(c, "not_found", "conversation not found");
        goto out;
    }
    uint32_t limit = wk_api_history_limit(q->limit);
    uint64_t before_seq = q->before > (uint64_t)INT64_MAX ? 0 : q->before;
    char before[24], fetch[16];
    snprintf(before, sizeof before, "%" PRIu64, before_seq);
    snprintf(fetch, sizeof fetch, "%u", limit + 1);
    const char *p2[] = {q->conv, before, fetch};
    rows = api_run(c, "history",
                   "SELECT " API_EVENT_COLUMNS ","
                   " m.kind IN ('text', 'system', 'edit') AND (EXISTS (SELECT 1 FROM messages d"
                   " WHERE d.conversation_id = m.conversation_id AND d.kind = 'delete'"
                   " AND d.target_seq = CASE WHEN m.kind = 'edit' THEN m.target_seq ELSE m.seq END)"
                   " OR EXISTS (SELECT 1 FROM archive_tombstones t WHERE t.conversation_id = m.conversation_id"
                   " AND t.target_seq = CASE WHEN m.kind = 'edit' THEN m.target_seq ELSE m.seq END))"
                   " FROM messages m WHERE m.conversation_id = $1 AND ($2::bigint = 0 OR m.seq < $2::bigint)"
                   " ORDER BY m.seq DESC LIMIT $3::int",
                   3, p2, PGRES_TUPLES_OK);
    if (rows == NULL)
        goto out;
    int nhot = PQntuples(rows);
    int want = (int)limit + 1;
    uint64_t top = nhot ? strtoull(PQgetvalue(rows, 0, H_SEQ), NULL, 10) : 0;
    uint64_t low = nhot ? strtoull(PQgetvalue(rows, nhot - 1, H_SEQ), NULL, 10) : 0;
    int ncold = 0;
    cold_events = calloc((size_t)want, sizeof *cold_events);
    if (!(nhot == want && top - low == limit)) {
        /* the hot rows leave room for archived events: below them, or between them */
        ncold = history_cold(c, &cs, q->conv, nhot == want ? low : 0, before_seq, want, cold_events);
        if (ncold < 0)
            goto out;
    }
    events = calloc((size_t)want + 1, sizeof *events);
    eventp = calloc((size_t)want + 1, sizeof *eventp);
    from_cold = calloc((size_t)want + 1, sizeof *from_cold);
    int n = 0, h = 0, k = 0;
    while (n < want && (h < nhot || k < ncold)) {
        uint64_t hs = h < nhot ? strtoull(PQgetvalue(rows, h, H_SEQ), NULL, 10) : 0;
        uint64_t ks = k < ncold ? cold_events[k]->seq : 0;
        Chat__V1__Event *e = &events[n];
        if (h < nhot && (k >= ncold || hs >= ks)) {
            api_event_from_row(e, rows, h, q->conv);
            if (strcmp(PQgetvalue(rows, h, H_EXTRA), "t") == 0)
                api_tombstone(e);
            if (k < ncold && hs == ks)
                k++; /* archived between the two reads: once */
            h++;
        } else {
            api_event_from_cold(e, cold_events[k], q->conv);
            from_cold[n] = true;
            k++;
        }
        eventp[n] = e;
        n++;
    }
    bool more = n > (int)limit;
    if (more)
        n = (int)limit;
    if (ncold > 0 && !api_cold_tombstones(c, events, from_cold, (size_t)n))
        goto out;
    Chat__V1__Status st;
    Chat__V1__HistoryReply reply = CHAT__V1__HISTORY_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.events = eventp;
    reply.n_events = (size_t)n;
    reply.more = more;
    api_reply_with(c, &reply.base);
    if (ncold > 0)
        LOG_DEBUG("api", "event=history_cold conv=%s hot=%d cold=%d chunks=%d", q->conv, h, k, cs.n);
out:
    api_cold_release(c, &cs);
    free(events);
    free(eventp);
    free(cold_events);
    free(from_cold);
    PQclear(rows);
    chat__v1__history_request__free_unpacked(q, NULL);
}
