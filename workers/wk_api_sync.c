/* The api role's sync: the events a client missed in every conversation it is behind in, in
 * pages (docs/sync.md): planning the ranges, reading hot rows and archived events, assembling a
 * page under its byte budget, the cursors to continue from. Runs on a lane's delivery thread;
 * the pure helpers (planning, merging, settling, next, sizes) on any thread. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_buf.h"
#include "chat_id.h"
#include "chat_log.h"
#include "chat_mem.h"
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

/* Merges, range by range, the hot rows and the archived events of cold into slots (room for
 * all of them) by seq, an event archived between the two reads taken once, up to the range
 * where cold ends the page. Returns the number of slots. */
size_t wk_api_sync_merge(const wk_api_sync_range *ranges, size_t planned, const wk_api_sync_hot *rows, int nrows,
                         const wk_api_sync_cold *cold, wk_api_sync_slot *slots)
{
    const wk_cold_chunk **chunks = cold->chunks;
    const size_t *chunk_ord = cold->ord;
    int nk = cold->n;
    size_t ns = 0;
    int h = 0, ki = 0;
    for (size_t ord = 0; ord < planned && ord <= cold->trunc; ord++) {
        const wk_api_sync_range *r = &ranges[ord];
        uint64_t below = ord == cold->trunc ? cold->trunc_below : UINT64_MAX;
        size_t kc = 0; /* position in the current chunk */
        while (h < nrows || ki < nk) {
            /* the next hot row and the next archived event of this range */
            bool hot_here = h < nrows && rows[h].ord == ord;
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
            uint64_t hs = hot_here ? rows[h].seq : UINT64_MAX;
            wk_api_sync_slot *s = &slots[ns];
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
        while (h < nrows && rows[h].ord == ord)
            h++;
        while (ki < nk && chunk_ord[ki] == ord) {
            ki++;
            kc = 0;
        }
    }
    return ns;
}

size_t wk_api_sync_next(const wk_api_sync_range *r, size_t n, Chat__V1__SyncCursor *next, Chat__V1__SyncCursor **nextp)
{
    size_t nnext = 0;
    for (size_t i = 0; i < n; i++)
        if (r[i].done < r[i].head) {
            Chat__V1__SyncCursor *k = &next[nnext];
            chat__v1__sync_cursor__init(k);
            k->conv = (char *)r[i].conv;
            k->after = r[i].done;
            nextp[nnext++] = k;
        }
    return nnext;
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
/* its columns past H_EXTRA: API_SYNC_ORD, API_SYNC_FITS, API_SYNC_DELETED (wk_apip.h) */

/* A query's parameters as PostgreSQL text arrays, one element per cursor or range, in order;
 * the arrays a query does not take stay empty. */
typedef struct sync_arrays {
    chat_buf convs;
    chat_buf afters;
    chat_buf uptos;
    chat_buf ords; /* the range's index in the page */
} sync_arrays;

/* One sync request being answered, from its cursors to its reply; freed by sync_page_free. */
typedef struct sync_page {
    sync_arrays listed;  /* the request's cursors: convs, afters */
    sync_arrays planned; /* the planned ranges: convs, afters, uptos */
    PGresult *heads, *rows;
    wk_api_sync_range *ranges;
    size_t n;        /* ranges taking part: the conversations behind whose cursors next can name */
    size_t nplanned; /* the leading ranges this page asks events of (wk_api_sync_plan) */
    size_t budget;   /* bytes of bodies and metas the page stops after */
    int nrows;       /* hot rows of the planned ranges */
    api_cold_set cs;
    wk_api_sync_slot *slots;
    size_t nslots;
    size_t trunc; /* the range where the archived chunks read end the page early; SIZE_MAX: none */
    Chat__V1__Event *events, **eventp;
    bool *from_cold;
    size_t sent;       /* events of the reply */
    size_t cut;        /* the range where the page stopped early; n: it did not */
    uint64_t cut_done; /* the last seq sent of range cut (its after when none) */
    Chat__V1__SyncCursor *next, **nextp;
    size_t nnext;
} sync_page;

static void sync_arrays_begin(sync_arrays *a)
{
    chat_buf_pg_array_begin(&a->convs);
    chat_buf_pg_array_begin(&a->afters);
    chat_buf_pg_array_begin(&a->uptos);
    chat_buf_pg_array_begin(&a->ords);
}

static void sync_arrays_end(sync_arrays *a)
{
    chat_buf_pg_array_end(&a->convs);
    chat_buf_pg_array_end(&a->afters);
    chat_buf_pg_array_end(&a->uptos);
    chat_buf_pg_array_end(&a->ords);
}

static void sync_arrays_free(sync_arrays *a)
{
    chat_buf_free(&a->convs);
    chat_buf_free(&a->afters);
    chat_buf_free(&a->uptos);
    chat_buf_free(&a->ords);
}

/* Appends range r, the ord-th of the page, to every array. */
static void sync_arrays_add_range(sync_arrays *a, const wk_api_sync_range *r, size_t ord)
{
    char after[24], upto[24], index[24];
    snprintf(after, sizeof after, "%" PRIu64, r->after);
    snprintf(upto, sizeof upto, "%" PRIu64, r->upto);
    snprintf(index, sizeof index, "%zu", ord);
    chat_buf_pg_array_str(&a->convs, r->conv);
    chat_buf_pg_array_str(&a->afters, after);
    chat_buf_pg_array_str(&a->uptos, upto);
    chat_buf_pg_array_str(&a->ords, index);
}

/* ------------------------------------------------------------------------------------------ */
/* Hot rows and archived events, merged into the page's slots                                   */
/* ------------------------------------------------------------------------------------------ */

/* The live chunks of every planned range the hot rows do not cover (fewer rows than upto -
 * after), one more than a request reads (to know where to stop); *out NULL when no range is
 * short. False with the call failed. */
static bool sync_find_chunks(api_call *c, const wk_api_sync_range *ranges, size_t planned, const wk_api_sync_hot *rows,
                             int nrows, PGresult **out)
{
    size_t *hot = chat_xcalloc(planned + 1, sizeof *hot);
    for (int i = 0; i < nrows; i++)
        hot[rows[i].ord]++;
    sync_arrays short_ranges = {0};
    sync_arrays_begin(&short_ranges);
    int nshort = 0;
    for (size_t i = 0; i < planned; i++) {
        if (hot[i] >= ranges[i].upto - ranges[i].after)
            continue;
        sync_arrays_add_range(&short_ranges, &ranges[i], i);
        nshort++;
    }
    sync_arrays_end(&short_ranges);
    free(hot);
    *out = NULL;
    if (nshort > 0) {
        char lim[16];
        snprintf(lim, sizeof lim, "%d", API_COLD_CHUNKS_MAX + 1);
        const char *p[] = {short_ranges.convs.data, short_ranges.afters.data, short_ranges.uptos.data,
                           short_ranges.ords.data, lim};
        *out =
            api_run(c, "sync_cold",
                    "SELECT " API_CHUNK_COLUMNS ", u.ord FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[])"
                    " AS u(conv, after, upto, ord)"
                    " JOIN archive_chunks k ON k.live AND k.conversation_id = u.conv AND k.seq_hi > u.after"
                    " AND k.seq_lo <= u.upto"
                    " JOIN archive_objects o ON o.id = k.object_id"
                    " ORDER BY u.ord, k.seq_lo LIMIT $5::int",
                    5, p, PGRES_TUPLES_OK);
    }
    sync_arrays_free(&short_ranges);
    return nshort == 0 || *out != NULL;
}

/* Reads the chunks of k (NULL: none) into cs and cold, at most API_COLD_CHUNKS_MAX: past them the
 * page ends before the first chunk not read. False with the call failed. */
static bool sync_read_chunks(api_call *c, api_cold_set *cs, PGresult *k, wk_api_sync_cold *cold)
{
    int nk = k ? PQntuples(k) : 0;
    cold->trunc = SIZE_MAX;
    cold->trunc_below = UINT64_MAX;
    if (nk > API_COLD_CHUNKS_MAX) {
        cold->trunc = strtoull(PQgetvalue(k, API_COLD_CHUNKS_MAX, K_EXTRA), NULL, 10);
        cold->trunc_below = strtoull(PQgetvalue(k, API_COLD_CHUNKS_MAX, K_SEQ_LO), NULL, 10);
        nk = API_COLD_CHUNKS_MAX;
    }
    cold->chunks = chat_xcalloc((size_t)nk + 1, sizeof *cold->chunks);
    cold->ord = chat_xcalloc((size_t)nk + 1, sizeof *cold->ord);
    for (int i = 0; i < nk; i++) {
        cold->chunks[i] = api_cold_read(c, cs, k, i);
        if (cold->chunks[i] == NULL)
            return false;
        cold->ord[i] = strtoull(PQgetvalue(k, i, K_EXTRA), NULL, 10);
        cold->events += cold->chunks[i]->n;
    }
    cold->n = nk;
    return true;
}

/* The events of the page in order: the hot rows and, for every planned range they do not cover
 * (fewer rows than upto - after), the archived events of (after, upto] from live chunks, merged
 * by seq (an event archived between the two reads taken once). When the chunks of the page are
 * more than one request reads, the page ends before the first chunk not read: *trunc is its range
 * (SIZE_MAX when nothing was cut) and that range keeps only the events below it. */
static bool sync_slots(api_call *c, api_cold_set *cs, const wk_api_sync_range *ranges, size_t planned, PGresult *rows,
                       int nrows, wk_api_sync_slot **out, size_t *nout, size_t *trunc)
{
    wk_api_sync_hot *hot = chat_xcalloc((size_t)nrows + 1, sizeof *hot);
    for (int i = 0; i < nrows; i++) {
        hot[i].ord = strtoull(PQgetvalue(rows, i, API_SYNC_ORD), NULL, 10) - 1;
        hot[i].seq = strtoull(PQgetvalue(rows, i, H_SEQ), NULL, 10);
    }
    PGresult *k = NULL;
    bool ok = sync_find_chunks(c, ranges, planned, hot, nrows, &k);
    wk_api_sync_cold cold = {0};
    if (ok)
        ok = sync_read_chunks(c, cs, k, &cold);
    PQclear(k);
    if (ok) {
        *trunc = cold.trunc;
        wk_api_sync_slot *slots = chat_xcalloc((size_t)nrows + cold.events + 1, sizeof *slots);
        *nout = wk_api_sync_merge(ranges, planned, hot, nrows, &cold, slots);
        *out = slots;
    }
    free(cold.chunks);
    free(cold.ord);
    free(hot);
    return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* The steps of a sync request                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Checks the request and turns its cursors into pg->listed (after clamped to INT64_MAX). */
static bool sync_check_request(api_call *c, const Chat__V1__SyncRequest *q, sync_page *pg)
{
    if (!api_check_id(c, "user", q->user))
        return false;
    if (q->n_cursors > WK_API_SYNC_CURSORS_MAX) {
        api_fail(c, "bad_request", "at most %d cursors", WK_API_SYNC_CURSORS_MAX);
        return false;
    }
    sync_arrays_begin(&pg->listed);
    for (size_t i = 0; i < q->n_cursors; i++) {
        const Chat__V1__SyncCursor *k = q->cursors[i];
        if (!chat_id_valid(k->conv)) {
            api_fail(c, "bad_request", "cursors[%zu].conv must be 1-64 characters of [A-Za-z0-9_-]", i);
            return false;
        }
        char after[24];
        snprintf(after, sizeof after, "%" PRIu64, k->after > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : k->after);
        chat_buf_pg_array_str(&pg->listed.convs, k->conv);
        chat_buf_pg_array_str(&pg->listed.afters, after);
    }
    sync_arrays_end(&pg->listed);
    return true;
}

/* The conversations the user is behind in (SYNC_HEADS_SQL) as ranges, the page's byte budget and
 * its plan. */
static bool sync_plan_page(api_call *c, const Chat__V1__SyncRequest *q, sync_page *pg)
{
    const char *p[] = {q->user, pg->listed.convs.data, pg->listed.afters.data, q->listed_only ? "t" : "f"};
    pg->heads = api_run(c, "sync_heads", SYNC_HEADS_SQL, 4, p, PGRES_TUPLES_OK);
    if (pg->heads == NULL)
        return false;

    /* Every range may end up in next: keep the ones whose cursors fit in the reply beside at
     * least one event (a user behind in more than ~10,000 conversations gets the rest at the
     * next sync: their seen cursors have not moved). */
    size_t n = (size_t)PQntuples(pg->heads), next_bound = 0;
    pg->ranges = chat_xcalloc(n + 1, sizeof *pg->ranges);
    for (size_t i = 0; i < n; i++) {
        wk_api_sync_range *r = &pg->ranges[i];
        r->conv = PQgetvalue(pg->heads, (int)i, 0);
        r->head = strtoull(PQgetvalue(pg->heads, (int)i, 1), NULL, 10);
        r->after = strtoull(PQgetvalue(pg->heads, (int)i, 2), NULL, 10);
        size_t size = wk_api_sync_cursor_size(r->conv, r->head);
        if (next_bound + size > WK_API_SYNC_REPLY_MAX - WK_API_SYNC_BYTES / 8) {
            LOG_WARN("api", "event=sync_too_many_conversations user=%s behind=%zu served=%zu", q->user, n, i);
            n = i;
            break;
        }
        next_bound += size;
    }
    pg->n = n;
    pg->budget = WK_API_SYNC_REPLY_MAX - next_bound;
    if (pg->budget > WK_API_SYNC_BYTES)
        pg->budget = WK_API_SYNC_BYTES;
    if (q->max_bytes > 0 && pg->budget > q->max_bytes)
        pg->budget = q->max_bytes; /* the gateway sizes pages to its client's queue */
    pg->nplanned = wk_api_sync_plan(pg->ranges, n, wk_api_sync_max_events(q->max_events));
    return true;
}

/* The hot rows of the planned ranges (SYNC_EVENTS_SQL); none when nothing is planned. */
static bool sync_read_events(api_call *c, sync_page *pg)
{
    if (pg->nplanned == 0)
        return true;
    sync_arrays_begin(&pg->planned);
    for (size_t i = 0; i < pg->nplanned; i++)
        sync_arrays_add_range(&pg->planned, &pg->ranges[i], i);
    sync_arrays_end(&pg->planned);
    char bytes[24];
    snprintf(bytes, sizeof bytes, "%zu", pg->budget);
    const char *p[] = {pg->planned.convs.data, pg->planned.afters.data, pg->planned.uptos.data, bytes};
    pg->rows = api_run(c, "sync_events", SYNC_EVENTS_SQL, 4, p, PGRES_TUPLES_OK);
    if (pg->rows == NULL)
        return false;
    pg->nrows = PQntuples(pg->rows);
    return true;
}

/* Take events while what came before stays under the budget (so at least one: progress).
 * `fits` is the query's for hot rows (bodies past the budget were not even read) and the same
 * sum in C once archived events come first. Sets sent, cut and cut_done. */
void api_sync_take_events(const api_sync_source *src, api_sync_taken *out)
{
    const wk_api_sync_range *ranges = src->ranges;
    out->events = chat_xcalloc(src->nslots + 1, sizeof *out->events);
    out->eventp = chat_xcalloc(src->nslots + 1, sizeof *out->eventp);
    out->from_cold = chat_xcalloc(src->nslots + 1, sizeof *out->from_cold);
    Chat__V1__Event *events = out->events;
    size_t used = 0, raw = 0, sent = 0;
    out->cut = src->n;
    out->cut_done = 0;
    for (size_t i = 0; i < src->nslots; i++) {
        const wk_api_sync_slot *s = &src->slots[i];
        size_t ord = s->ord;
        bool fits = raw < src->budget && (s->row < 0 || strcmp(PQgetvalue(src->rows, s->row, API_SYNC_FITS), "t") == 0);
        if (sent > 0 && (used >= src->budget || !fits)) {
            out->cut = ord;
            bool same = events[sent - 1].conv == ranges[ord].conv;
            out->cut_done = same ? events[sent - 1].seq : ranges[ord].after;
            break;
        }
        Chat__V1__Event *e = &events[sent];
        if (s->row >= 0) {
            api_event_from_row(e, src->rows, s->row, (char *)ranges[ord].conv);
            if (strcmp(PQgetvalue(src->rows, s->row, API_SYNC_DELETED), "t") == 0)
                api_tombstone(e);
        } else {
            api_event_from_cold(e, s->cold, (char *)ranges[ord].conv);
            out->from_cold[sent] = true;
        }
        raw += strlen(e->body) + strlen(e->meta_json);
        size_t size = chat__v1__event__get_packed_size(e);
        used += 1 + varint_size(size) + size;
        out->eventp[sent++] = e;
    }
    if (out->cut == src->n && src->trunc < src->n) {
        /* the archived chunks of this page did not all fit in one request: continue there */
        out->cut = src->trunc;
        bool same = sent > 0 && events[sent - 1].conv == ranges[src->trunc].conv;
        out->cut_done = same ? events[sent - 1].seq : ranges[src->trunc].after;
    }
    out->sent = sent;
}

/* The page's events from its slots (api_sync_take_events). */
static void sync_take_events(sync_page *pg)
{
    api_sync_source src = {.ranges = pg->ranges,
                           .n = pg->n,
                           .rows = pg->rows,
                           .slots = pg->slots,
                           .nslots = pg->nslots,
                           .budget = pg->budget,
                           .trunc = pg->trunc};
    api_sync_taken taken = {0};
    api_sync_take_events(&src, &taken);
    pg->events = taken.events;
    pg->eventp = taken.eventp;
    pg->from_cold = taken.from_cold;
    pg->sent = taken.sent;
    pg->cut = taken.cut;
    pg->cut_done = taken.cut_done;
}

/* The reply's next: a cursor for every range the page did not finish (after wk_api_sync_settle). */
static void sync_next(sync_page *pg)
{
    pg->next = chat_xcalloc(pg->n + 1, sizeof *pg->next);
    pg->nextp = chat_xcalloc(pg->n + 1, sizeof *pg->nextp);
    pg->nnext = wk_api_sync_next(pg->ranges, pg->n, pg->next, pg->nextp);
}

/* Answers with the page. First page: name the listed conversations the user may not read, so the
 * client gets not_member for them (and nothing of their content). */
static void sync_reply(api_call *c, const Chat__V1__SyncRequest *q, sync_page *pg)
{
    PGresult *refused = NULL;
    char **refusedp = NULL;
    size_t nrefused = 0;
    if (!q->listed_only && q->n_cursors > 0) {
        /* always the listed conversations: before the split one buffer served this query and the
         * planning, so a first page that carried events named no listed non-member */
        const char *p[] = {q->user, pg->listed.convs.data};
        refused = api_run(c, "sync_not_member",
                          "SELECT u.conv FROM unnest($2::text[]) AS u(conv) WHERE NOT EXISTS (SELECT 1"
                          " FROM conversation_members m JOIN conversations x ON x.id = m.conversation_id"
                          " AND x.deleted_at IS NULL WHERE m.conversation_id = u.conv AND m.user_id = $1)",
                          2, p, PGRES_TUPLES_OK);
        if (refused == NULL)
            return;
        nrefused = (size_t)PQntuples(refused);
        refusedp = chat_xcalloc(nrefused + 1, sizeof *refusedp);
        for (size_t i = 0; i < nrefused; i++)
            refusedp[i] = PQgetvalue(refused, (int)i, 0);
    }
    Chat__V1__Status st;
    Chat__V1__SyncReply reply = CHAT__V1__SYNC_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.not_member = refusedp;
    reply.n_not_member = nrefused;
    reply.events = pg->eventp;
    reply.n_events = pg->sent;
    reply.next = pg->nextp;
    reply.n_next = pg->nnext;
    api_reply_with(c, &reply.base);
    LOG_DEBUG("api", "event=sync_page user=%s conversations=%zu planned=%zu events=%zu bytes=%zu next=%zu", q->user,
              pg->n, pg->nplanned, pg->sent, c->reply_len, pg->nnext);
    free(refusedp);
    PQclear(refused);
}

static void sync_page_free(api_call *c, sync_page *pg)
{
    api_cold_release(c, &pg->cs);
    free(pg->slots);
    free(pg->next);
    free(pg->nextp);
    free(pg->events);
    free(pg->eventp);
    free(pg->from_cold);
    free(pg->ranges);
    PQclear(pg->rows);
    PQclear(pg->heads);
    sync_arrays_free(&pg->listed);
    sync_arrays_free(&pg->planned);
}

/* Events of every conversation the client is behind in, in pages (docs/sync.md): heads in one
 * query, then one query for the page's events; `next` says where to continue. */
void api_sync(api_call *c)
{
    Chat__V1__SyncRequest *q = chat__v1__sync_request__unpack(NULL, c->len, c->data);
    sync_page pg = {.cs = {.n = 0}, .trunc = SIZE_MAX};
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed SyncRequest");
        goto out;
    }
    if (!sync_check_request(c, q, &pg) || !sync_plan_page(c, q, &pg) || !sync_read_events(c, &pg))
        goto out;
    /* The hot rows and, where they leave a range short, its archived events (docs/storage.md). */
    if (!sync_slots(c, &pg.cs, pg.ranges, pg.nplanned, pg.rows, pg.nrows, &pg.slots, &pg.nslots, &pg.trunc))
        goto out;
    sync_take_events(&pg);
    /* a deleted message's text is served by no path: archived ones are tombstoned as history does */
    if (!api_cold_tombstones(c, pg.events, pg.from_cold, pg.sent))
        goto out;
    wk_api_sync_settle(pg.ranges, pg.n, pg.cut, pg.cut_done);
    sync_next(&pg);
    sync_reply(c, q, &pg);
out:
    sync_page_free(c, &pg);
    chat__v1__sync_request__free_unpacked(q, NULL);
}
