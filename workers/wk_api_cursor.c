/* The api role's cursors and conversation list: seen/read watermarks moved only forward in one
 * statement per batch, receipts published after it committed, and a user's conversations with
 * their heads and cursors. Runs on a lane's delivery thread. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_buf.h"
#include "chat_id.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "wk_apip.h"
#include "wk_routes.h"

/* ------------------------------------------------------------------------------------------ */
/* Cursors and receipts                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* The whole batch in one statement. Repeats of a (conv, user) in the batch are merged first
 * (the highest wins: an UPDATE ... FROM would apply only one of them); the member rows are
 * locked in key order (no deadlock between two batches) and read at their newest version; then
 * each cursor moves to GREATEST(stored, asked) clamped to last_seq, `seen` at least `read`,
 * only for members of live conversations, and only rows that move are written. The result: one
 * row per (moved read, member of its conversation), the receipts to publish. */
#define CURSOR_SQL                                                                                                     \
    "WITH u AS (SELECT k.c, k.u, max(k.s) AS s, max(k.r) AS r"                                                         \
    " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS k(c, u, s, r) GROUP BY k.c, k.u),"            \
    " cur AS MATERIALIZED (SELECT m.conversation_id, m.user_id, m.read_seq AS old_read,"                               \
    " GREATEST(m.delivered_seq, LEAST(GREATEST(u.s, u.r), c.last_seq)) AS seen,"                                       \
    " GREATEST(m.read_seq, LEAST(u.r, c.last_seq)) AS read"                                                            \
    " FROM u JOIN conversation_members m ON m.conversation_id = u.c AND m.user_id = u.u"                               \
    " JOIN conversations c ON c.id = u.c AND c.deleted_at IS NULL"                                                     \
    " ORDER BY m.conversation_id, m.user_id FOR UPDATE OF m),"                                                         \
    " moved AS (UPDATE conversation_members m SET delivered_seq = cur.seen, read_seq = cur.read,"                      \
    " updated_at = now() FROM cur"                                                                                     \
    " WHERE m.conversation_id = cur.conversation_id AND m.user_id = cur.user_id"                                       \
    " AND (cur.seen > m.delivered_seq OR cur.read > m.read_seq)"                                                       \
    " RETURNING m.conversation_id, m.user_id, m.delivered_seq, m.read_seq, cur.read > cur.old_read AS read_moved)"     \
    " SELECT mv.conversation_id, mv.user_id, mv.delivered_seq, mv.read_seq, r.user_id"                                 \
    " FROM moved mv JOIN conversation_members r ON r.conversation_id = mv.conversation_id"                             \
    " WHERE mv.read_moved ORDER BY mv.conversation_id, mv.user_id, r.user_id"

/* A Delivery{receipt} to every recipient row of one reader (rows [from, to) of the result). */
static void publish_receipt(api_call *c, PGresult *r, int from, int to)
{
    Chat__V1__Receipt rc = CHAT__V1__RECEIPT__INIT;
    rc.conv = PQgetvalue(r, from, 0);
    rc.user = PQgetvalue(r, from, 1);
    rc.seen = strtoull(PQgetvalue(r, from, 2), NULL, 10);
    rc.read = strtoull(PQgetvalue(r, from, 3), NULL, 10);
    rc.ts_ms = chat_now_ms();
    Chat__V1__Delivery d = CHAT__V1__DELIVERY__INIT;
    d.item_case = CHAT__V1__DELIVERY__ITEM_RECEIPT;
    d.receipt = &rc;
    const char **to_users = chat_xcalloc((size_t)(to - from), sizeof *to_users);
    for (int i = from; i < to; i++)
        to_users[i - from] = PQgetvalue(r, i, 4);
    wk_routes_deliver(c->lane->routes, c->lane->api->app->nc, &d, to_users, to - from);
    free(to_users);
}

/* seen / read cursors from gateways; unknown pairs (not a member, deleted conversation) are
 * ignored. After the statement committed, a read that moved is told to every member. */
void api_cursor(api_call *c)
{
    Chat__V1__CursorBatch *q = chat__v1__cursor_batch__unpack(NULL, c->len, c->data);
    chat_buf convs = {0}, users = {0}, seens = {0}, reads = {0};
    PGresult *r = NULL;
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed CursorBatch");
        goto out;
    }
    if (q->n_updates > WK_API_CURSOR_BATCH_MAX) {
        api_fail(c, "bad_request", "at most %d updates per batch", WK_API_CURSOR_BATCH_MAX);
        goto out;
    }
    if (q->n_updates == 0) {
        api_reply_status_only(c);
        goto out;
    }
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&users);
    chat_buf_pg_array_begin(&seens);
    chat_buf_pg_array_begin(&reads);
    for (size_t i = 0; i < q->n_updates; i++) {
        const Chat__V1__CursorUpdate *u = q->updates[i];
        if (!chat_id_valid(u->conv) || !chat_id_valid(u->user)) {
            api_fail(c, "bad_request", "updates[%zu]: conv and user must be 1-64 characters of [A-Za-z0-9_-]", i);
            goto out;
        }
        char seen[24], read[24];
        snprintf(seen, sizeof seen, "%" PRIu64, u->seen > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : u->seen);
        snprintf(read, sizeof read, "%" PRIu64, u->read > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : u->read);
        chat_buf_pg_array_str(&convs, u->conv);
        chat_buf_pg_array_str(&users, u->user);
        chat_buf_pg_array_str(&seens, seen);
        chat_buf_pg_array_str(&reads, read);
    }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&users);
    chat_buf_pg_array_end(&seens);
    chat_buf_pg_array_end(&reads);
    if (q->n_updates == 1)
        snprintf(c->conv, sizeof c->conv, "%s", q->updates[0]->conv);
    const char *p[] = {convs.data, users.data, seens.data, reads.data};
    r = api_run(c, "cursor", CURSOR_SQL, 4, p, PGRES_TUPLES_OK); /* autocommit: committed on return */
    if (r == NULL)
        goto out;
    int rows = PQntuples(r);
    for (int from = 0; from < rows;) {
        int to = from + 1;
        while (to < rows && strcmp(PQgetvalue(r, to, 0), PQgetvalue(r, from, 0)) == 0 &&
               strcmp(PQgetvalue(r, to, 1), PQgetvalue(r, from, 1)) == 0)
            to++;
        publish_receipt(c, r, from, to);
        from = to;
    }
    api_reply_status_only(c);
out:
    PQclear(r);
    chat_buf_free(&convs);
    chat_buf_free(&users);
    chat_buf_free(&seens);
    chat_buf_free(&reads);
    chat__v1__cursor_batch__free_unpacked(q, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Conversation list                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* The user's live conversations with their heads and the user's cursors, by id. */
void api_conv_list(api_call *c)
{
    Chat__V1__ConvListRequest *q = chat__v1__conv_list_request__unpack(NULL, c->len, c->data);
    PGresult *r = NULL;
    Chat__V1__ConvSummary *convs = NULL, **convp = NULL;
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed ConvListRequest");
        goto out;
    }
    if (!api_check_id(c, "user", q->user))
        goto out;
    const char *p[] = {q->user};
    r = api_run(c, "conv_list",
                "SELECT c.id, c.kind, c.last_seq, m.delivered_seq, m.read_seq FROM conversation_members m"
                " JOIN conversations c ON c.id = m.conversation_id AND c.deleted_at IS NULL"
                " WHERE m.user_id = $1 ORDER BY c.id COLLATE \"C\"",
                1, p, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    int n = PQntuples(r);
    convs = chat_xcalloc((size_t)n + 1, sizeof *convs);
    convp = chat_xcalloc((size_t)n + 1, sizeof *convp);
    for (int i = 0; i < n; i++) {
        Chat__V1__ConvSummary *s = &convs[i];
        chat__v1__conv_summary__init(s);
        s->conv = PQgetvalue(r, i, 0);
        s->kind = PQgetvalue(r, i, 1);
        s->last_seq = strtoull(PQgetvalue(r, i, 2), NULL, 10);
        s->seen = strtoull(PQgetvalue(r, i, 3), NULL, 10);
        s->read = strtoull(PQgetvalue(r, i, 4), NULL, 10);
        convp[i] = s;
    }
    Chat__V1__Status st;
    Chat__V1__ConvListReply reply = CHAT__V1__CONV_LIST_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.conversations = convp;
    reply.n_conversations = (size_t)n;
    api_reply_with(c, &reply.base);
out:
    free(convs);
    free(convp);
    PQclear(r);
    chat__v1__conv_list_request__free_unpacked(q, NULL);
}
