/* The api role's call plumbing: failures and replies, the lane's own PostgreSQL connection (run,
 * transactions), the asking user and the membership check. Threads: every function runs on the
 * lane's delivery thread of the call it is given; a lane's PGconn and in_tx belong to it alone. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_mem.h"
#include "chat_time.h"
#include "wk_apip.h"
#include "wk_pg.h"

#define PG_RETRY_MS 1000 /* after a failed connect, answer "unavailable" this long */

/* ------------------------------------------------------------------------------------------ */
/* Replies and failures                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* Marks the call failed with code and a message for the caller. The first failure wins. */
void api_fail(api_call *c, const char *code, const char *fmt, ...)
{
    if (c->code[0])
        return;
    snprintf(c->code, sizeof c->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof c->message, fmt, ap);
    va_end(ap);
}

Chat__V1__Status *api_status_of(api_call *c, Chat__V1__Status *st)
{
    chat__v1__status__init(st);
    st->code = c->code;
    st->message = c->message;
    return st;
}

void api_reply_with(api_call *c, const ProtobufCMessage *m)
{
    free(c->reply);
    c->reply_len = protobuf_c_message_get_packed_size(m);
    c->reply = chat_xmalloc(c->reply_len ? c->reply_len : 1);
    protobuf_c_message_pack(m, c->reply);
}

/* Every reply type has its Status as field 1, so a reply holding only a status has the same
 * bytes whatever its type: failures are answered with this one. */
void api_reply_status_only(api_call *c)
{
    Chat__V1__Status st;
    Chat__V1__ConvDeleteReply r = CHAT__V1__CONV_DELETE_REPLY__INIT;
    r.status = api_status_of(c, &st);
    api_reply_with(c, &r.base);
}

bool api_check_conv(api_call *c, const char *conv)
{
    if (!chat_id_valid(conv)) {
        api_fail(c, "bad_request", "conv must be 1-64 characters of [A-Za-z0-9_-]");
        return false;
    }
    snprintf(c->conv, sizeof c->conv, "%s", conv);
    return true;
}

bool api_check_id(api_call *c, const char *name, const char *id)
{
    if (chat_id_valid(id))
        return true;
    api_fail(c, "bad_request", "%s must be 1-64 characters of [A-Za-z0-9_-]", name);
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* PostgreSQL on the lane's own connection                                                      */
/* ------------------------------------------------------------------------------------------ */

static void drop_pg(api_lane *l)
{
    PQfinish(l->pg);
    l->pg = NULL;
    l->in_tx = false;
}

/* The lane's connection, opened when missing; NULL (and the call failed "unavailable") while
 * PostgreSQL does not answer. After a failed connect the lane waits PG_RETRY_MS before trying
 * again, so requests meanwhile are answered at once instead of each waiting for a timeout. */
static PGconn *lane_pg(api_call *c)
{
    api_lane *l = c->lane;
    if (l->pg && PQstatus(l->pg) == CONNECTION_OK)
        return l->pg;
    drop_pg(l);
    int64_t now = chat_mono_ms();
    if (now >= l->pg_retry_at_ms) {
        PGconn *pg = NULL;
        if (wk_pg_connect(l->api->app->cfg->pg_dsn, l->name, &pg) == CHAT_OK) {
            /* bounded waits: a stuck lock or query answers "unavailable" well inside the caller's timeout */
            wk_pg_exec(pg, "SET statement_timeout = '5s'", PGRES_COMMAND_OK, "api_statement_timeout");
            /* every request reaches its rows through an index; without statistics (a table filled
             * faster than autovacuum analyzes it) the planner took a sequential scan of
             * conversations with a hash join for each sync, and a storm of 10,000 syncs timed out
             * (docs/benchmarks.md, item 7). As the ingest's lease connections do. */
            wk_pg_exec(pg, "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off",
                       PGRES_COMMAND_OK, "api_plan_settings");
            l->pg = pg;
            return pg;
        }
        l->pg_retry_at_ms = now + PG_RETRY_MS;
        snprintf(c->detail, sizeof c->detail, "connect failed (see pg_connect_failed)");
    } else {
        snprintf(c->detail, sizeof c->detail, "connect failed less than %d ms ago", PG_RETRY_MS);
    }
    api_fail(c, "unavailable", "database unavailable");
    return NULL;
}

/* Runs one statement with text parameters. Returns the result when its status is `expect`
 * (the caller PQclears it); else NULL with the call failed: "unavailable" for a lost
 * connection, a timeout or a serialization failure, "internal" otherwise. A connection found
 * broken outside a transaction (PostgreSQL restarted since the last request) is reopened and
 * the statement run once more. */
PGresult *api_run(api_call *c, const char *step, const char *sql, int n, const char *const *params,
                  ExecStatusType expect)
{
    api_lane *l = c->lane;
    for (int attempt = 0; attempt < 2; attempt++) {
        PGconn *pg = lane_pg(c);
        if (pg == NULL)
            return NULL;
        wk_pg_error e;
        PGresult *r = wk_pg_run(pg, sql, n, params, expect, &e);
        if (r != NULL)
            return r;
        const char *sep = e.sqlstate[0] ? " " : "";
        /* cut to the log field: the head of a long message is kept */
        if (snprintf(c->detail, sizeof c->detail, "%s: %s%s%s", step, e.sqlstate, sep, e.detail) < 0)
            c->detail[0] = '\0';
        chat_log_clean(c->detail);
        if (e.failure == WK_PG_GONE || e.failure == WK_PG_SHUTDOWN) {
            bool was_in_tx = l->in_tx;
            drop_pg(l);
            if (!was_in_tx && attempt == 0)
                continue;
            api_fail(c, "unavailable", "database unavailable");
        } else if (e.failure == WK_PG_BUSY) {
            api_fail(c, "unavailable", "database busy, try again");
        } else {
            api_fail(c, "internal", "database error");
        }
        return NULL;
    }
    return NULL;
}

static bool exec_ok(api_call *c, const char *step, const char *sql)
{
    PGresult *r = api_run(c, step, sql, 0, NULL, PGRES_COMMAND_OK);
    PQclear(r);
    return r != NULL;
}

bool api_begin(api_call *c)
{
    if (!exec_ok(c, "begin", "BEGIN"))
        return false;
    c->lane->in_tx = true;
    return true;
}

bool api_commit(api_call *c)
{
    bool ok = exec_ok(c, "commit", "COMMIT");
    c->lane->in_tx = false;
    return ok;
}

/* Ends an open transaction (after a failure); a no-op otherwise. */
void api_rollback(api_lane *l)
{
    if (!l->in_tx)
        return;
    l->in_tx = false;
    if (l->pg == NULL || PQstatus(l->pg) != CONNECTION_OK)
        return;
    if (!wk_pg_rollback(l->pg))
        drop_pg(l);
}

/* ------------------------------------------------------------------------------------------ */
/* The asking user and membership                                                             */
/* ------------------------------------------------------------------------------------------ */

/* The asking user of a method with a trusted form: "" (a backend reading or acting for no one in
 * particular) is refused on the gateway form, where a user must be named; else a valid id. */
bool api_asking_user_ok(api_call *c, const char *user)
{
    if (user[0] == '\0' && c->from_gateway) {
        api_fail(c, "bad_request", "a gateway must name the user it asks for");
        return false;
    }
    if (user[0] && !chat_id_valid(user)) {
        api_fail(c, "bad_request", "user must be empty or 1-64 characters of [A-Za-z0-9_-]");
        return false;
    }
    return true;
}

/* True when user is a member of the live conversation conv (not_member otherwise). */
bool api_is_member(api_call *c, const char *conv, const char *user, bool *member)
{
    const char *p[] = {conv, user};
    PGresult *r = api_run(c, "member",
                          "SELECT 1 FROM conversation_members m JOIN conversations x ON x.id = m.conversation_id"
                          " AND x.deleted_at IS NULL WHERE m.conversation_id = $1 AND m.user_id = $2",
                          2, p, PGRES_TUPLES_OK);
    if (r == NULL)
        return false;
    *member = PQntuples(r) == 1;
    PQclear(r);
    return true;
}

bool api_check_live_conv(api_call *c, const char *conv)
{
    const char *p[] = {conv};
    PGresult *r = api_run(c, "conversation", "SELECT 1 FROM conversations WHERE id = $1 AND deleted_at IS NULL", 1, p,
                          PGRES_TUPLES_OK);
    if (r == NULL)
        return false;
    bool exists = PQntuples(r) == 1;
    PQclear(r);
    if (!exists)
        api_fail(c, "not_found", "conversation not found");
    return exists;
}

bool api_check_member(api_call *c, const char *conv, const char *user)
{
    bool member = false;
    if (!api_is_member(c, conv, user, &member))
        return false;
    if (!member)
        api_fail(c, "not_member", "not a member of this conversation");
    return member;
}
