/* The api role's sync: the events a client missed in every conversation it is behind in, in
 * pages (docs/sync.md): planning the ranges, reading hot rows and archived events, assembling a
 * page under its byte budget, the cursors to continue from. Runs on a lane's delivery thread;
 * the pure helpers (planning, settling, sizes) on any thread. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_buf.h"
#include "chat_id.h"
#include "chat_log.h"
#include "wk_apip.h"

uint32_t wk_api_sync_max_events(uint32_t asked)
{
    if (asked == 0)
        return WK_API_SYNC_DEFAULT;
    return asked > WK_API_SYNC_MAX ? WK_API_SYNC_MAX : asked;
}

size_t wk_api_sync_plan(wk_api_sync_range *r, size_t n, uint32_t max_events)
{
    uint64_t left = max_events;
    size_t taking = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t want = r[i].head > r[i].after ? r[i].head - r[i].after : 0;
        uint64_t take = want < left ? want : left;
        r[i].upto = r[i].after + take;
        left -= take;
        if (take > 0)
            taking = i + 1;
    }
    return taking;
}

void wk_api_sync_settle(wk_api_sync_range *r, size_t n, size_t cut, uint64_t cut_done)
{
    for (size_t i = 0; i < n; i++)
        r[i].done = i < cut ? r[i].upto : i == cut ? cut_done : r[i].after;
}

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

size_t wk_api_sync_cursor_size(const char *conv, uint64_t after)
{
    size_t len = strlen(conv);
    size_t inner = 1 + varint_size(len) + len + (after ? 1 + varint_size(after) : 0);
    return 1 + varint_size(inner) + inner;
}

/* ------------------------------------------------------------------------------------------ */
/* Sync                                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* The user's live conversations that have events past the cursor, in one round trip: a listed
 * cursor where the client gave one (the smallest when listed twice), else the stored `seen`
 * (delivered_seq); with listed_only ($4) only the listed ones. A listed conversation the user
 * is not a member of (or that is deleted or unknown) simply does not come back. Byte order of
 * the ids, whatever the database's locale. */
#define SYNC_HEADS_SQL                                                                                                 \
    "SELECT m.conversation_id, c.last_seq, coalesce(k.after, m.delivered_seq)"                                         \
    " FROM conversation_members m"                                                                                     \
    " JOIN conversations c ON c.id = m.conversation_id AND c.deleted_at IS NULL"                                       \
    " LEFT JOIN (SELECT u.conv, min(u.after) AS after FROM unnest($2::text[], $3::bigint[]) AS u(conv, after)"         \
    " GROUP BY u.conv) k ON k.conv = m.conversation_id"                                                                \
    " WHERE m.user_id = $1 AND (NOT $4::bool OR k.conv IS NOT NULL)"                                                   \
    " AND c.last_seq > coalesce(k.after, m.delivered_seq)"                                                             \
    " ORDER BY m.conversation_id COLLATE \"C\""

/* One page of events: for each planned range k (in plan order) the events (after, upto] through
 * the primary key of each partition (the LATERAL with its LIMIT keeps it a nested loop of index
 * range scans, never a scan of `messages`), ordered by range then seq. `fits`: the bodies and
 * metas before this row stay under the byte budget ($4); rows past it come without body and
 * meta, so a page of big events never loads more than about the budget. `deleted`: a text or
 * system message (or an edit of one) whose delete exists, hot or archived, as history computes
 * it (one probe of messages_changes_target_idx per row): its body and meta are never read out. */
#define SYNC_EVENTS_SQL                                                                                                \
    "SELECT e.seq, e.id, e.client_msg_id, e.sender_id, e.kind, CASE WHEN e.fits AND NOT e.deleted THEN e.body END,"    \
    " CASE WHEN e.fits AND NOT e.deleted THEN e.meta END, e.target_seq, e.emoji, e.reaction_on, e.ts, e.ord, e.fits,"  \
    " e.deleted"                                                                                                       \
    " FROM (SELECT k.ord, m.*, coalesce(sum(m.size) OVER (ORDER BY k.ord, m.seq"                                       \
    " ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) < $4::bigint AS fits"                                      \
    " FROM unnest($1::text[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS k(conv, after, upto, ord)"                \
    " CROSS JOIN LATERAL (SELECT x.seq, x.id, x.client_msg_id, x.sender_id, x.kind, x.body,"                           \
    " x.meta::text AS meta, x.target_seq, x.emoji, x.reaction_on,"                                                     \
    " floor(extract(epoch FROM x.created_at) * 1000)::bigint AS ts,"                                                   \
    " octet_length(x.body) + coalesce(octet_length(x.meta::text), 0) AS size,"                                         \
    " x.kind IN ('text', 'system', 'edit') AND (EXISTS (SELECT 1 FROM messages d"                                      \
    " WHERE d.conversation_id = x.conversation_id AND d.kind = 'delete'"                                               \
    " AND d.target_seq = CASE WHEN x.kind = 'edit' THEN x.target_seq ELSE x.seq END)"                                  \
    " OR EXISTS (SELECT 1 FROM archive_tombstones t WHERE t.conversation_id = x.conversation_id"                       \
    " AND t.target_seq = CASE WHEN x.kind = 'edit' THEN x.target_seq ELSE x.seq END)) AS deleted"                      \
    " FROM messages x WHERE x.conversation_id = k.conv AND x.seq > k.after AND x.seq <= k.upto"                        \
    " ORDER BY x.seq LIMIT k.upto - k.after) m) e"                                                                     \
    " ORDER BY e.ord, e.seq"
enum { S_ORD = H_EXTRA, S_FITS, S_DELETED };

/* One event of a sync page, in page order (range, then seq): a hot row or an archived event. */
typedef struct sync_slot {
    size_t ord; /* index of its range */
    uint64_t seq;
    int row;                     /* row of the events result; -1: archived */
    const Chat__V1__Event *cold; /* the archived event (row -1) */
} sync_slot;

/* The events of the page in order: the hot rows and, for every planned range they do not cover
 * (fewer rows than upto - after), the archived events of (after, upto] from live chunks, merged
 * by seq (an event archived between the two reads taken once). When the chunks of the page are
 * more than one request reads, the page ends before the first chunk not read: *trunc is its range
 * (n when nothing was cut) and that range keeps only the events below it. */
static bool sync_slots(api_call *c, api_cold_set *cs, const wk_api_sync_range *ranges, size_t planned, PGresult *rows,
                       int nrows, sync_slot **out, size_t *nout, size_t *trunc)
{
    size_t *hot = calloc(planned + 1, sizeof *hot);
    for (int i = 0; i < nrows; i++)
        hot[strtoull(PQgetvalue(rows, i, S_ORD), NULL, 10) - 1]++;
    chat_buf a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0};
    chat_buf_pg_array_begin(&a1);
    chat_buf_pg_array_begin(&a2);
    chat_buf_pg_array_begin(&a3);
    chat_buf_pg_array_begin(&a4);
    int ncand = 0;
    for (size_t i = 0; i < planned; i++) {
        if (hot[i] >= ranges[i].upto - ranges[i].after)
            continue;
        char after[24], upto[24], ord[24];
        snprintf(after, sizeof after, "%" PRIu64, ranges[i].after);
        snprintf(upto, sizeof upto, "%" PRIu64, ranges[i].upto);
        snprintf(ord, sizeof ord, "%zu", i);
        chat_buf_pg_array_str(&a1, ranges[i].conv);
        chat_buf_pg_array_str(&a2, after);
        chat_buf_pg_array_str(&a3, upto);
        chat_buf_pg_array_str(&a4, ord);
        ncand++;
    }
    chat_buf_pg_array_end(&a1);
    chat_buf_pg_array_end(&a2);
    chat_buf_pg_array_end(&a3);
    chat_buf_pg_array_end(&a4);
    free(hot);
    PGresult *k = NULL;
    if (ncand > 0) {
        char lim[16];
        snprintf(lim, sizeof lim, "%d", API_COLD_CHUNKS_MAX + 1);
        const char *p[] = {a1.data, a2.data, a3.data, a4.data, lim};
        k = api_run(c, "sync_cold",
                    "SELECT " API_CHUNK_COLUMNS ", u.ord FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[])"
                    " AS u(conv, after, upto, ord)"
                    " JOIN archive_chunks k ON k.live AND k.conversation_id = u.conv AND k.seq_hi > u.after"
                    " AND k.seq_lo <= u.upto"
                    " JOIN archive_objects o ON o.id = k.object_id"
                    " ORDER BY u.ord, k.seq_lo LIMIT $5::int",
                    5, p, PGRES_TUPLES_OK);
    }
    chat_buf_free(&a1);
    chat_buf_free(&a2);
    chat_buf_free(&a3);
    chat_buf_free(&a4);
    if (ncand > 0 && k == NULL)
        return false;
    int nk = k ? PQntuples(k) : 0;
    *trunc = SIZE_MAX;
    uint64_t trunc_below = UINT64_MAX;
    if (nk > API_COLD_CHUNKS_MAX) {
        *trunc = strtoull(PQgetvalue(k, API_COLD_CHUNKS_MAX, K_EXTRA), NULL, 10);
        trunc_below = strtoull(PQgetvalue(k, API_COLD_CHUNKS_MAX, K_SEQ_LO), NULL, 10);
        nk = API_COLD_CHUNKS_MAX;
    }
    const wk_cold_chunk **chunks = calloc((size_t)nk + 1, sizeof *chunks);
    size_t *chunk_ord = calloc((size_t)nk + 1, sizeof *chunk_ord);
    size_t ncold = 0;
    for (int i = 0; i < nk; i++) {
        chunks[i] = api_cold_read(c, cs, k, i);
        if (chunks[i] == NULL) {
            free(chunks);
            free(chunk_ord);
            PQclear(k);
            return false;
        }
        chunk_ord[i] = strtoull(PQgetvalue(k, i, K_EXTRA), NULL, 10);
        ncold += chunks[i]->n;
    }
    PQclear(k);

    sync_slot *slots = calloc((size_t)nrows + ncold + 1, sizeof *slots);
    size_t ns = 0;
    int h = 0, ki = 0;
    for (size_t ord = 0; ord < planned && ord <= *trunc; ord++) {
        const wk_api_sync_range *r = &ranges[ord];
        uint64_t below = ord == *trunc ? trunc_below : UINT64_MAX;
        size_t kc = 0; /* position in the current chunk */
        while (h < nrows || ki < nk) {
            /* the next hot row and the next archived event of this range */
            bool hot_here = h < nrows && strtoull(PQgetvalue(rows, h, S_ORD), NULL, 10) - 1 == ord;
            const Chat__V1__Event *ce = NULL;
            while (ki < nk && chunk_ord[ki] == ord && ce == NULL) {
                if (kc >= chunks[ki]->n) {
                    ki++;
                    kc = 0;
                    continue;
                }
                const Chat__V1__Event *e = chunks[ki]->events[kc];
                if (e->seq <= r->after || e->seq > r->upto)
                    kc++;
                else
                    ce = e;
            }
            if (!hot_here && ce == NULL)
                break;
            uint64_t hs = hot_here ? strtoull(PQgetvalue(rows, h, H_SEQ), NULL, 10) : UINT64_MAX;
            sync_slot *s = &slots[ns];
            s->ord = ord;
            if (ce == NULL || hs <= ce->seq) {
                if (ce && hs == ce->seq)
                    kc++; /* archived between the two reads: once */
                s->seq = hs;
                s->row = h++;
            } else {
                s->seq = ce->seq;
                s->row = -1;
                s->cold = ce;
                kc++;
            }
            if (s->seq < below)
                ns++;
        }
        while (h < nrows && strtoull(PQgetvalue(rows, h, S_ORD), NULL, 10) - 1 == ord)
            h++;
        while (ki < nk && chunk_ord[ki] == ord) {
            ki++;
            kc = 0;
        }
    }
    free(chunks);
    free(chunk_ord);
    *out = slots;
    *nout = ns;
    return true;
}

/* Events of every conversation the client is behind in, in pages (docs/sync.md): heads in one
 * query, then one query for the page's events; `next` says where to continue. */
void api_sync(api_call *c)
{
    Chat__V1__SyncRequest *q = chat__v1__sync_request__unpack(NULL, c->len, c->data);
    chat_buf a1 = {0}, a2 = {0}, a3 = {0};
    PGresult *heads = NULL, *rows = NULL;
    api_cold_set cs = {.n = 0};
    sync_slot *slots = NULL;
    wk_api_sync_range *ranges = NULL;
    Chat__V1__Event *events = NULL, **eventp = NULL;
    bool *from_cold = NULL;
    Chat__V1__SyncCursor *next = NULL, **nextp = NULL;
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed SyncRequest");
        goto out;
    }
    if (!chat_id_valid(q->user)) {
        api_fail(c, "bad_request", "user must be 1-64 characters of [A-Za-z0-9_-]");
        goto out;
    }
    if (q->n_cursors > WK_API_SYNC_CURSORS_MAX) {
        api_fail(c, "bad_request", "at most %d cursors", WK_API_SYNC_CURSORS_MAX);
        goto out;
    }
    chat_buf_pg_array_begin(&a1);
    chat_buf_pg_array_begin(&a2);
    for (size_t i = 0; i < q->n_cursors; i++) {
        const Chat__V1__SyncCursor *k = q->cursors[i];
        if (!chat_id_valid(k->conv)) {
            api_fail(c, "bad_request", "cursors[%zu].conv must be 1-64 characters of [A-Za-z0-9_-]", i);
            goto out;
        }
        char after[24];
        snprintf(after, sizeof after, "%" PRIu64, k->after > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : k->after);
        chat_buf_pg_array_str(&a1, k->conv);
        chat_buf_pg_array_str(&a2, after);
    }
    chat_buf_pg_array_end(&a1);
    chat_buf_pg_array_end(&a2);
    const char *p1[] = {q->user, a1.data, a2.data, q->listed_only ? "t" : "f"};
    heads = api_run(c, "sync_heads", SYNC_HEADS_SQL, 4, p1, PGRES_TUPLES_OK);
    if (heads == NULL)
        goto out;

    /* Every range may end up in next: keep the ones whose cursors fit in the reply beside at
     * least one event (a user behind in more than ~10,000 conversations gets the rest at the
     * next sync: their seen cursors have not moved). */
    size_t n = (size_t)PQntuples(heads), next_bound = 0;
    ranges = calloc(n + 1, sizeof *ranges);
    for (size_t i = 0; i < n; i++) {
        wk_api_sync_range *r = &ranges[i];
        r->conv = PQgetvalue(heads, (int)i, 0);
        r->head = strtoull(PQgetvalue(heads, (int)i, 1), NULL, 10);
        r->after = strtoull(PQgetvalue(heads, (int)i, 2), NULL, 10);
        size_t size = wk_api_sync_cursor_size(r->conv, r->head);
        if (next_bound + size > WK_API_SYNC_REPLY_MAX - WK_API_SYNC_BYTES / 8) {
            LOG_WARN("api", "event=sync_too_many_conversations user=%s behind=%zu served=%zu", q->user, n, i);
            n = i;
            break;
        }
        next_bound += size;
    }
    size_t budget = WK_API_SYNC_REPLY_MAX - next_bound;
    if (budget > WK_API_SYNC_BYTES)
        budget = WK_API_SYNC_BYTES;
    if (q->max_bytes > 0 && budget > q->max_bytes)
        budget = q->max_bytes; /* the gateway sizes pages to its client's queue */
    size_t planned = wk_api_sync_plan(ranges, n, wk_api_sync_max_events(q->max_events));

    int nrows = 0;
    if (planned > 0) {
        chat_buf_reset(&a1);
        chat_buf_reset(&a2);
        chat_buf_pg_array_begin(&a1);
        chat_buf_pg_array_begin(&a2);
        chat_buf_pg_array_begin(&a3);
        for (size_t i = 0; i < planned; i++) {
            char after[24], upto[24];
            snprintf(after, sizeof after, "%" PRIu64, ranges[i].after);
            snprintf(upto, sizeof upto, "%" PRIu64, ranges[i].upto);
            chat_buf_pg_array_str(&a1, ranges[i].conv);
            chat_buf_pg_array_str(&a2, after);
            chat_buf_pg_array_str(&a3, upto);
        }
        chat_buf_pg_array_end(&a1);
        chat_buf_pg_array_end(&a2);
        chat_buf_pg_array_end(&a3);
        char bytes[24];
        snprintf(bytes, sizeof bytes, "%zu", budget);
        const char *p2[] = {a1.data, a2.data, a3.data, bytes};
        rows = api_run(c, "sync_events", SYNC_EVENTS_SQL, 4, p2, PGRES_TUPLES_OK);
        if (rows == NULL)
            goto out;
        nrows = PQntuples(rows);
    }

    /* The hot rows and, where they leave a range short, its archived events (docs/storage.md). */
    size_t nslots = 0, trunc = SIZE_MAX;
    if (!sync_slots(c, &cs, ranges, planned, rows, nrows, &slots, &nslots, &trunc))
        goto out;

    /* Take events while what came before stays under the budget (so at least one: progress).
     * `fits` is the query's for hot rows (bodies past the budget were not even read) and the same
     * sum in C once archived events come first. */
    events = calloc(nslots + 1, sizeof *events);
    eventp = calloc(nslots + 1, sizeof *eventp);
    from_cold = calloc(nslots + 1, sizeof *from_cold);
    size_t used = 0, raw = 0, cut = n, sent = 0;
    uint64_t cut_done = 0;
    for (size_t i = 0; i < nslots; i++) {
        const sync_slot *s = &slots[i];
        size_t ord = s->ord;
        bool fits = raw < budget && (s->row < 0 || strcmp(PQgetvalue(rows, s->row, S_FITS), "t") == 0);
        if (sent > 0 && (used >= budget || !fits)) {
            cut = ord;
            bool same = events[sent - 1].conv == ranges[ord].conv;
            cut_done = same ? events[sent - 1].seq : ranges[ord].after;
            break;
        }
        Chat__V1__Event *e = &events[sent];
        if (s->row >= 0) {
            api_event_from_row(e, rows, s->row, (char *)ranges[ord].conv);
            if (strcmp(PQgetvalue(rows, s->row, S_DELETED), "t") == 0)
                api_tombstone(e);
        } else {
            api_event_from_cold(e, s->cold, (char *)ranges[ord].conv);
            from_cold[sent] = true;
        }
        raw += strlen(e->body) + strlen(e->meta_json);
        size_t size = chat__v1__event__get_packed_size(e);
        used += 1 + varint_size(size) + size;
        eventp[sent++] = e;
    }
    if (cut == n && trunc < n) {
        /* the archived chunks of this page did not all fit in one request: continue there */
        cut = trunc;
        bool same = sent > 0 && events[sent - 1].conv == ranges[trunc].conv;
        cut_done = same ? events[sent - 1].seq : ranges[trunc].after;
    }
    /* a deleted message's text is served by no path: archived ones are tombstoned as history does */
    if (!api_cold_tombstones(c, events, from_cold, sent))
        goto out;
    wk_api_sync_settle(ranges, n, cut, cut_done);
    next = calloc(n + 1, sizeof *next);
    nextp = calloc(n + 1, sizeof *nextp);
    size_t nnext = 0;
    for (size_t i = 0; i < n; i++)
        if (ranges[i].done < ranges[i].head) {
            chat__v1__sync_cursor__init(&next[nnext]);
            next[nnext].conv = (char *)ranges[i].conv;
            next[nnext].after = ranges[i].done;
            nextp[nnext] = &next[nnext];
            nnext++;
        }
    /* First page: name the listed conversations the user may not read, so the client gets
     * not_member for them (and nothing of their content). */
    PGresult *refused = NULL;
    char **refusedp = NULL;
    size_t nrefused = 0;
    if (!q->listed_only && q->n_cursors > 0) {
        const char *p3[] = {q->user, a1.data};
        refused = api_run(c, "sync_not_member",
                          "SELECT u.conv FROM unnest($2::text[]) AS u(conv) WHERE NOT EXISTS (SELECT 1"
                          " FROM conversation_members m JOIN conversations x ON x.id = m.conversation_id"
                          " AND x.deleted_at IS NULL WHERE m.conversation_id = u.conv AND m.user_id = $1)",
                          2, p3, PGRES_TUPLES_OK);
        if (refused == NULL)
            goto out;
        nrefused = (size_t)PQntuples(refused);
        refusedp = calloc(nrefused + 1, sizeof *refusedp);
        for (size_t i = 0; i < nrefused; i++)
            refusedp[i] = PQgetvalue(refused, (int)i, 0);
    }
    Chat__V1__Status st;
    Chat__V1__SyncReply reply = CHAT__V1__SYNC_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.not_member = refusedp;
    reply.n_not_member = nrefused;
    reply.events = eventp;
    reply.n_events = sent;
    reply.next = nextp;
    reply.n_next = nnext;
    api_reply_with(c, &reply.base);
    LOG_DEBUG("api", "event=sync_page user=%s conversations=%zu planned=%zu events=%zu bytes=%zu next=%zu", q->user, n,
              planned, sent, c->reply_len, nnext);
    free(refusedp);
    PQclear(refused);
out:
    api_cold_release(c, &cs);
    free(slots);
    free(next);
    free(nextp);
    free(events);
    free(eventp);
    free(from_cold);
    free(ranges);
    PQclear(rows);
    PQclear(heads);
    chat_buf_free(&a1);
    chat_buf_free(&a2);
    chat_buf_free(&a3);
    chat__v1__sync_request__free_unpacked(q, NULL);
}
