/* The notify role's claims (table push_state): the members a batch's messages wait on, claimed
 * with SKIP LOCKED so one worker pushes for a member at a time, read with their unread counts,
 * and settled after the POSTs. Threads: the pullers, each on its own PGconn. */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "chat_buf.h"
#include "chat_log.h"
#include "chat_time.h"
#include "wk_notifyp.h"
#include "wk_pg.h"

/* Rows of members behind the batch's messages: one INSERT makes sure each has a push_state row
 * (in key order, so two workers never deadlock), then one statement claims those not claimed by
 * anyone (SKIP LOCKED) and reads, for the claimed ones, the unread count and the newest message. */
static const char *SQL_ENSURE = "INSERT INTO push_state (conversation_id, user_id)"
                                " SELECT DISTINCT m.conversation_id, m.user_id"
                                " FROM unnest($1::text[], $2::bigint[], $3::text[]) AS r(conv, seq, sender)"
                                " JOIN conversations c ON c.id = r.conv AND c.deleted_at IS NULL"
                                " JOIN conversation_members m ON m.conversation_id = r.conv AND m.user_id <> r.sender"
                                " AND m.delivered_seq < r.seq"
                                " ORDER BY 1, 2 ON CONFLICT DO NOTHING";

/* A message x deleted by the time the push is built (within the grace, as a rule) neither counts
 * as unread nor is the newest: its text is in no push (docs/notifications.md). One probe of
 * messages_changes_target_idx per message, as history's tombstones. */
#define NOT_DELETED                                                                                                    \
    "NOT EXISTS (SELECT 1 FROM messages d WHERE d.conversation_id = x.conversation_id AND d.kind = 'delete'"           \
    " AND d.target_seq = x.seq)"

static const char *SQL_CLAIM =
    "WITH r AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) AS r(conv, seq, sender)),"
    " need AS (SELECT m.conversation_id AS conv, m.user_id AS usr, max(r.seq) AS req_seq,"
    "   min(m.delivered_seq) AS delivered, min(c.last_seq) AS last_seq"
    "   FROM r JOIN conversations c ON c.id = r.conv AND c.deleted_at IS NULL"
    "   JOIN conversation_members m ON m.conversation_id = r.conv AND m.user_id <> r.sender"
    "   AND m.delivered_seq < r.seq GROUP BY 1, 2),"
    " cand AS (SELECT n.*, p.pushed_seq, p.claimed_until FROM need n"
    "   JOIN push_state p ON p.conversation_id = n.conv AND p.user_id = n.usr WHERE p.pushed_seq < n.req_seq),"
    " lockable AS (SELECT p.conversation_id, p.user_id, k.last_seq FROM push_state p"
    "   JOIN cand k ON p.conversation_id = k.conv AND p.user_id = k.usr"
    "   WHERE p.pushed_seq < k.req_seq AND (p.claimed_until IS NULL OR p.claimed_until < now())"
    "   ORDER BY p.conversation_id, p.user_id FOR UPDATE OF p SKIP LOCKED),"
    " claimed AS (UPDATE push_state p SET claim_token = $4, claimed_seq = l.last_seq,"
    "   claimed_until = now() + $5::interval FROM lockable l"
    "   WHERE p.conversation_id = l.conversation_id AND p.user_id = l.user_id"
    "   RETURNING p.conversation_id, p.user_id)"
    " SELECT k.conv, k.usr, k.delivered, k.pushed_seq, k.last_seq, cl.user_id IS NOT NULL,"
    "   CASE WHEN k.claimed_until > now()"
    "   THEN (extract(epoch FROM k.claimed_until - now()) * 1000)::bigint ELSE 0 END,"
    "   coalesce(u.n, 0), nw.seq, nw.sender_id, nw.ts_ms, nw.preview"
    " FROM cand k LEFT JOIN claimed cl ON cl.conversation_id = k.conv AND cl.user_id = k.usr"
    " LEFT JOIN LATERAL (SELECT count(*) AS n FROM (SELECT 1 FROM messages x"
    "   WHERE cl.user_id IS NOT NULL AND x.conversation_id = k.conv AND x.seq > k.delivered"
    "   AND x.seq <= k.last_seq AND x.kind IN ('text', 'system') AND x.sender_id <> k.usr AND " NOT_DELETED
    "   LIMIT $6::int) s) u"
    "   ON true"
    " LEFT JOIN LATERAL (SELECT x.seq, x.sender_id, (extract(epoch FROM x.created_at) * 1000)::bigint AS ts_ms,"
    "   left(x.body, $7::int) AS preview FROM messages x"
    "   WHERE cl.user_id IS NOT NULL AND x.conversation_id = k.conv AND x.seq > k.delivered"
    "   AND x.seq <= k.last_seq AND x.kind IN ('text', 'system') AND x.sender_id <> k.usr AND " NOT_DELETED
    "   ORDER BY x.seq DESC LIMIT 1) nw ON true"
    " ORDER BY k.usr, k.conv";

/* After the POSTs: a 2xx moves the watermark to what the claim covered; every claim is released.
 * A member whose push failed stays held (claimed_until, without a token) for the retry delay, so
 * the other requests of the same burst wait for it instead of each POSTing on its own. */
static const char *SQL_SETTLE =
    "UPDATE push_state p SET"
    " pushed_seq = CASE WHEN k.ok THEN GREATEST(p.pushed_seq, p.claimed_seq) ELSE p.pushed_seq END,"
    " pushed_at = CASE WHEN k.ok THEN now() ELSE p.pushed_at END,"
    " claim_token = NULL, claimed_seq = NULL,"
    " claimed_until = CASE WHEN k.hold_ms > 0 THEN now() + k.hold_ms * interval '1 millisecond' END"
    " FROM unnest($1::text[], $2::text[], $3::bool[], $4::bigint[]) AS k(conv, usr, ok, hold_ms)"
    " WHERE p.conversation_id = k.conv AND p.user_id = k.usr AND p.claim_token = $5";

/* Connects the puller's PGconn when it has none (at most once a second). */
static bool pg_ready(ntf_puller *p)
{
    if (p->pg && PQstatus(p->pg) == CONNECTION_OK)
        return true;
    PQfinish(p->pg);
    p->pg = NULL;
    int64_t now = chat_mono_ms();
    if (now < p->pg_next_try_ms)
        return false;
    p->pg_next_try_ms = now + 1000;
    char name[32];
    snprintf(name, sizeof name, "chat-notify-%d", p->index);
    if (wk_pg_connect(p->n->app->cfg->pg_dsn, name, &p->pg) != CHAT_OK)
        p->pg = NULL;
    return p->pg != NULL;
}

/* Runs the claim statements for the due requests. While PostgreSQL is unreachable the batch is
 * kept (+WPI) and the connection retried once a second. NULL when the worker stops (the batch is
 * handed back) or the database refused the statements three times (the batch was nak'ed). */
PGresult *ntf_claim(ntf_puller *p, ntf_req *rq, int n, const char *token, int64_t *last_keep)
{
    wk_notify *w = p->n;
    chat_buf convs = {0}, seqs = {0}, senders = {0};
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&seqs);
    chat_buf_pg_array_begin(&senders);
    for (int i = 0; i < n; i++) {
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, rq[i].ev->seq);
        chat_buf_pg_array_str(&convs, rq[i].ev->conv);
        chat_buf_pg_array_str(&seqs, seq);
        chat_buf_pg_array_str(&senders, rq[i].ev->sender);
    }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&seqs);
    chat_buf_pg_array_end(&senders);
    char claim_s[32], unread_max[16], preview_chars[16];
    snprintf(claim_s, sizeof claim_s, "%d seconds", WK_NOTIFY_CLAIM_S);
    snprintf(unread_max, sizeof unread_max, "%d", WK_NOTIFY_UNREAD_MAX);
    snprintf(preview_chars, sizeof preview_chars, "%d", WK_NOTIFY_PREVIEW_CHARS);
    const char *params[] = {convs.data, seqs.data, senders.data, token, claim_s, unread_max, preview_chars};
    PGresult *out = NULL;
    int refused = 0;
    bool logged_down = false;
    while (out == NULL) {
        if (atomic_load(&w->app->stopping)) {
            for (int i = 0; i < n; i++)
                ntf_nak_after(p, rq[i].msg, NTF_RETRY_SOON_MS);
            break;
        }
        if (!pg_ready(p)) {
            if (!logged_down)
                LOG_WARN("notify", "event=batch_waiting thread=%d reason=postgres_down size=%d", p->index, n);
            logged_down = true;
            ntf_keepalive(p, rq, n, last_keep);
            chat_sleep_ms(200);
            continue;
        }
        PGresult *r = PQexecParams(p->pg, SQL_ENSURE, 3, NULL, params, NULL, NULL, 0);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (ok) {
            PQclear(r);
            r = PQexecParams(p->pg, SQL_CLAIM, 7, NULL, params, NULL, NULL, 0);
            ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        }
        if (ok) {
            out = r;
            break;
        }
        char err[512];
        snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
        chat_log_clean(err);
        PQclear(r);
        if (PQstatus(p->pg) != CONNECTION_OK)
            continue; /* reconnects above */
        LOG_WARN("notify", "event=claim_failed thread=%d attempt=%d detail=\"%s\"", p->index, refused + 1, err);
        if (++refused >= 3) {
            for (int i = 0; i < n; i++)
                ntf_nak_after(p, rq[i].msg, wk_notify_backoff_ms(rq[i].delivered));
            break;
        }
        chat_sleep_ms(200 * refused);
    }
    chat_buf_free(&convs);
    chat_buf_free(&seqs);
    chat_buf_free(&senders);
    return out;
}

static uint64_t u64(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoull(PQgetvalue(r, row, col), NULL, 10);
}

static int64_t i64(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

void ntf_read_pairs(PGresult *r, ntf_pair *pairs)
{
    for (int i = 0; i < PQntuples(r); i++) {
        ntf_pair *q = &pairs[i];
        *q = (ntf_pair){.conv = PQgetvalue(r, i, 0), .user = PQgetvalue(r, i, 1)};
        q->delivered = u64(r, i, 2);
        q->pushed = u64(r, i, 3);
        q->last_seq = u64(r, i, 4);
        q->mine = strcmp(PQgetvalue(r, i, 5), "t") == 0;
        q->claim_left_ms = i64(r, i, 6);
        q->unread = i64(r, i, 7);
        q->has_newest = !PQgetisnull(r, i, 8);
        if (q->has_newest)
            q->newest = (wk_push_msg){.conv = q->conv,
                                      .seq = u64(r, i, 8),
                                      .from = PQgetvalue(r, i, 9),
                                      .ts_ms = i64(r, i, 10),
                                      .preview = PQgetisnull(r, i, 11) ? NULL : PQgetvalue(r, i, 11)};
    }
}

/* Moves the watermarks of the pushed pairs, holds the failed ones for their retry delay and
 * releases every other claim of this batch. */
void ntf_settle(ntf_puller *p, ntf_pair *pairs, int npairs, const char *token)
{
    chat_buf convs = {0}, users = {0}, oks = {0}, holds = {0};
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&users);
    chat_buf_pg_array_begin(&oks);
    chat_buf_pg_array_begin(&holds);
    int n = 0;
    for (int i = 0; i < npairs; i++) {
        if (!pairs[i].mine)
            continue;
        char hold[24];
        snprintf(hold, sizeof hold, "%lld",
                 pairs[i].outcome == O_FAILED ? (long long)wk_notify_backoff_ms(pairs[i].max_delivered) : 0LL);
        chat_buf_pg_array_str(&convs, pairs[i].conv);
        chat_buf_pg_array_str(&users, pairs[i].user);
        chat_buf_pg_array_str(&oks, pairs[i].outcome == O_PUSHED ? "t" : "f");
        chat_buf_pg_array_str(&holds, hold);
        n++;
    }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&users);
    chat_buf_pg_array_end(&oks);
    chat_buf_pg_array_end(&holds);
    if (n > 0) {
        const char *params[] = {convs.data, users.data, oks.data, holds.data, token};
        bool done = false;
        for (int attempt = 0; attempt < 3 && !done; attempt++) {
            if (!pg_ready(p)) {
                chat_sleep_ms(1000);
                continue;
            }
            PGresult *r = PQexecParams(p->pg, SQL_SETTLE, 5, NULL, params, NULL, NULL, 0);
            done = PQresultStatus(r) == PGRES_COMMAND_OK;
            if (!done) {
                char err[512];
                snprintf(err, sizeof err, "%s", PQresultErrorMessage(r));
                chat_log_clean(err);
                LOG_WARN("notify", "event=settle_failed thread=%d attempt=%d detail=\"%s\"", p->index, attempt + 1,
                         err);
            }
            PQclear(r);
        }
        /* not settled: the claims run out after WK_NOTIFY_CLAIM_S; a push already sent may be sent
         * again then (at least once) */
    }
    chat_buf_free(&convs);
    chat_buf_free(&users);
    chat_buf_free(&oks);
    chat_buf_free(&holds);
}

/* Whether message ev waits on member q: q is behind it and no push covered it yet. */
bool ntf_depends(const Chat__V1__Event *ev, const ntf_pair *q)
{
    return strcmp(q->conv, ev->conv) == 0 && strcmp(q->user, ev->sender) != 0 && q->delivered < ev->seq &&
           q->pushed < ev->seq;
}
