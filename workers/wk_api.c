/* Role `api`. Threads: one nats.c delivery thread per lane runs that lane's requests; a lane's
 * PGconn, JetStream context and transaction state belong to that thread alone. The main thread
 * only starts and destroys. Replies are packed protobuf; every one starts with a Status.
 * Cursors are watermarks (one row per member), moved only forward; sync is paged (docs/sync.md). */
#include "wk_api.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "chat_buf.h"
#include "chat_frames.h"
#include "chat_id.h"
#include "chat_log.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_time.h"
#include "wk_cold.h"
#include "wk_pg.h"

#define PG_RETRY_MS 1000     /* after a failed connect, answer "unavailable" this long */
#define PUBLISH_WAIT_MS 5000 /* JetStream publish acknowledgement */
#define POLL_FIRST_MS 10
#define POLL_NEXT_MS 15
#define STOP_GRACE_MS 2000 /* a post still waiting when the worker stops */
#define DRAIN_TIMEOUT_MS 15000
#define DONE_WAIT_MS 20000

/* ------------------------------------------------------------------------------------------ */
/* State                                                                                        */
/* ------------------------------------------------------------------------------------------ */

typedef struct lane {
    struct wk_api *api;
    int index;
    char name[32]; /* application_name of its PGconn: chat-api-<index> */
    natsSubscription *sub;
    jsCtx *js;
    PGconn *pg;
    bool in_tx;
    int64_t pg_retry_at_ms; /* monotonic */
    pthread_mutex_t lock;   /* guards done */
    pthread_cond_t cv;
    bool done; /* the delivery thread has returned from its last callback */
} lane;

/* One request being answered; lives on the delivery thread's stack. */
typedef struct call {
    lane *lane;
    const uint8_t *data;
    size_t len;
    char code[16]; /* "" = success */
    char message[256];
    char detail[256]; /* for the log only (a database error) */
    char conv[CHAT_ID_MAX + 1];
    bool from_gateway; /* asked on chat.api.v1.gw.<method>: for one named user, never trusted */
    uint8_t *reply; /* packed reply, malloc'd; NULL: a status-only reply is sent */
    size_t reply_len;
} call;

typedef void (*handler_fn)(call *c);

typedef struct method {
    const char *name; /* subject suffix after chat.api.v1. (and after chat.api.v1.gw.) */
    handler_fn fn;
    const char *labels; /* metric labels */
    bool gateway_form;  /* a gateway may call it, as chat.api.v1.gw.<name>, for a named user */
} method;

static void h_conv_create(call *c);
static void h_conv_delete(call *c);
static void h_members_add(call *c);
static void h_members_remove(call *c);
static void h_members_check(call *c);
static void h_members_list(call *c);
static void h_post(call *c);
static void h_post_status(call *c);
static void h_history(call *c);
static void h_sync(call *c);
static void h_cursor(call *c);
static void h_conv_list(call *c);
static bool asking_user_ok(call *c, const char *user);
static bool check_member(call *c, const char *conv, const char *user);

static const method methods[] = {
    {"conv.create", h_conv_create, "method=\"conv.create\"", false},
    {"conv.delete", h_conv_delete, "method=\"conv.delete\"", false},
    {"members.add", h_members_add, "method=\"members.add\"", false},
    {"members.remove", h_members_remove, "method=\"members.remove\"", false},
    {"members.check", h_members_check, "method=\"members.check\"", true},
    {"members.list", h_members_list, "method=\"members.list\"", true},
    {"post", h_post, "method=\"post\"", false},
    {"post.status", h_post_status, "method=\"post.status\"", true},
    {"history", h_history, "method=\"history\"", true},
    {"sync", h_sync, "method=\"sync\"", true},
    {"cursor", h_cursor, "method=\"cursor\"", true},
    {"conv.list", h_conv_list, "method=\"conv.list\"", true},
};
#define NMETHODS (sizeof methods / sizeof methods[0])

static const char *error_codes[] = {"bad_request", "not_found", "not_member", "unavailable", "internal"};
#define NCODES (sizeof error_codes / sizeof error_codes[0])

struct wk_api {
    wk_app *app;
    lane lanes[WK_API_LANES];
    atomic_uint_fast64_t *m_requests[NMETHODS + 1]; /* last: unknown methods */
    atomic_uint_fast64_t *m_errors[NCODES];
    chat_histogram *h_seconds;
    wk_cold *cold; /* archived events: chunk reads and their cache, shared by the lanes */
};

/* ------------------------------------------------------------------------------------------ */
/* Pure helpers                                                                                 */
/* ------------------------------------------------------------------------------------------ */

const char *wk_api_post_invalid(const Chat__V1__Post *p)
{
    if (p == NULL)
        return "post is missing";
    if (!chat_id_valid(p->conv))
        return "post.conv must be 1-64 characters of [A-Za-z0-9_-]";
    if (!chat_id_valid(p->cmid))
        return "post.cmid must be 1-64 characters of [A-Za-z0-9_-]";
    if (!chat_id_valid(p->sender))
        return "post.sender must be 1-64 characters of [A-Za-z0-9_-]";
    if (p->kind != CHAT__V1__EVENT_KIND__EVENT_KIND_UNSPECIFIED && p->kind != CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT &&
        p->kind != CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM)
        return "post.kind must be text or system";
    size_t body_len = strlen(p->body);
    if (body_len > WK_API_BODY_MAX)
        return "post.body is larger than 16 KiB";
    json_t *utf8 = json_stringn(p->body, body_len); /* NULL for invalid UTF-8 */
    if (utf8 == NULL)
        return "post.body is not valid UTF-8";
    json_decref(utf8);
    if (p->meta_json[0]) {
        if (strlen(p->meta_json) > WK_API_META_MAX)
            return "post.meta_json is larger than 16 KiB";
        json_error_t err;
        json_t *meta = json_loads(p->meta_json, JSON_REJECT_DUPLICATES, &err);
        bool object = meta != NULL && json_is_object(meta);
        json_decref(meta);
        if (!object)
            return "post.meta_json must be empty or a JSON object";
    }
    return NULL;
}

uint32_t wk_api_history_limit(uint32_t asked)
{
    if (asked == 0)
        return WK_API_HISTORY_DEFAULT;
    return asked > WK_API_HISTORY_MAX ? WK_API_HISTORY_MAX : asked;
}

uint32_t wk_api_post_wait_ms(uint32_t asked)
{
    if (asked == 0)
        return WK_API_POST_WAIT_DEFAULT_MS;
    return asked > WK_API_POST_WAIT_MAX_MS ? WK_API_POST_WAIT_MAX_MS : asked;
}

const char *wk_api_conv_kind(const char *asked)
{
    if (asked == NULL || asked[0] == '\0' || strcmp(asked, "group") == 0)
        return "group";
    if (strcmp(asked, "direct") == 0)
        return "direct";
    return NULL;
}

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
/* Replies and failures                                                                         */
/* ------------------------------------------------------------------------------------------ */

static int64_t mono_ms(void)
{
    return chat_mono_ns() / 1000000;
}

static void clean(char *s)
{
    for (; *s; s++)
        if (*s == '\n' || *s == '"' || *s == '\r' || *s == '\t')
            *s = ' ';
}

/* Marks the call failed with code and a message for the caller. The first failure wins. */
static void fail(call *c, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(call *c, const char *code, const char *fmt, ...)
{
    if (c->code[0])
        return;
    snprintf(c->code, sizeof c->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof c->message, fmt, ap);
    va_end(ap);
}

static Chat__V1__Status *status_of(call *c, Chat__V1__Status *st)
{
    chat__v1__status__init(st);
    st->code = c->code;
    st->message = c->message;
    return st;
}

static void reply_with(call *c, const ProtobufCMessage *m)
{
    free(c->reply);
    c->reply_len = protobuf_c_message_get_packed_size(m);
    c->reply = malloc(c->reply_len ? c->reply_len : 1);
    protobuf_c_message_pack(m, c->reply);
}

/* Every reply type has its Status as field 1, so a reply holding only a status has the same
 * bytes whatever its type: failures are answered with this one. */
static void reply_status_only(call *c)
{
    Chat__V1__Status st;
    Chat__V1__ConvDeleteReply r = CHAT__V1__CONV_DELETE_REPLY__INIT;
    r.status = status_of(c, &st);
    reply_with(c, &r.base);
}

static bool check_conv(call *c, const char *conv)
{
    if (!chat_id_valid(conv)) {
        fail(c, "bad_request", "conv must be 1-64 characters of [A-Za-z0-9_-]");
        return false;
    }
    snprintf(c->conv, sizeof c->conv, "%s", conv);
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* PostgreSQL on the lane's own connection                                                      */
/* ------------------------------------------------------------------------------------------ */

static void drop_pg(lane *l)
{
    PQfinish(l->pg);
    l->pg = NULL;
    l->in_tx = false;
}

/* The lane's connection, opened when missing; NULL (and the call failed "unavailable") while
 * PostgreSQL does not answer. After a failed connect the lane waits PG_RETRY_MS before trying
 * again, so requests meanwhile are answered at once instead of each waiting for a timeout. */
static PGconn *lane_pg(call *c)
{
    lane *l = c->lane;
    if (l->pg && PQstatus(l->pg) == CONNECTION_OK)
        return l->pg;
    drop_pg(l);
    int64_t now = mono_ms();
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
    fail(c, "unavailable", "database unavailable");
    return NULL;
}

/* Runs one statement with text parameters. Returns the result when its status is `expect`
 * (the caller PQclears it); else NULL with the call failed: "unavailable" for a lost
 * connection, a timeout or a serialization failure, "internal" otherwise. A connection found
 * broken outside a transaction (PostgreSQL restarted since the last request) is reopened and
 * the statement run once more. */
static PGresult *run(call *c, const char *step, const char *sql, int n, const char *const *params,
                     ExecStatusType expect)
{
    lane *l = c->lane;
    for (int attempt = 0; attempt < 2; attempt++) {
        PGconn *pg = lane_pg(c);
        if (pg == NULL)
            return NULL;
        PGresult *r = PQexecParams(pg, sql, n, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) == expect)
            return r;
        const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        snprintf(c->detail, sizeof c->detail, "%s: %s%s%s", step, state ? state : "", state ? " " : "",
                 PQresultErrorMessage(r)[0] ? PQresultErrorMessage(r) : PQerrorMessage(pg));
        clean(c->detail);
        bool broken =
            PQstatus(pg) != CONNECTION_OK || (state && (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0));
        bool transient = state && (strcmp(state, "57014") == 0 || strcmp(state, "40001") == 0 ||
                                   strcmp(state, "40P01") == 0 || strcmp(state, "55P03") == 0);
        PQclear(r);
        if (broken) {
            bool was_in_tx = l->in_tx;
            drop_pg(l);
            if (!was_in_tx && attempt == 0)
                continue;
            fail(c, "unavailable", "database unavailable");
        } else if (transient) {
            fail(c, "unavailable", "database busy, try again");
        } else {
            fail(c, "internal", "database error");
        }
        return NULL;
    }
    return NULL;
}

static bool exec_ok(call *c, const char *step, const char *sql)
{
    PGresult *r = run(c, step, sql, 0, NULL, PGRES_COMMAND_OK);
    PQclear(r);
    return r != NULL;
}

static bool begin(call *c)
{
    if (!exec_ok(c, "begin", "BEGIN"))
        return false;
    c->lane->in_tx = true;
    return true;
}

static bool commit(call *c)
{
    bool ok = exec_ok(c, "commit", "COMMIT");
    c->lane->in_tx = false;
    return ok;
}

/* Ends an open transaction (after a failure); a no-op otherwise. */
static void rollback(lane *l)
{
    if (!l->in_tx)
        return;
    l->in_tx = false;
    if (l->pg == NULL || PQstatus(l->pg) != CONNECTION_OK)
        return;
    PGresult *r = PQexec(l->pg, "ROLLBACK");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        drop_pg(l);
    PQclear(r);
}

/* ------------------------------------------------------------------------------------------ */
/* User lists                                                                                   */
/* ------------------------------------------------------------------------------------------ */

typedef struct users {
    char **v;
    size_t n;
} users;

static void users_free(users *u)
{
    for (size_t i = 0; i < u->n; i++)
        free(u->v[i]);
    free(u->v);
    u->v = NULL;
    u->n = 0;
}

/* Column 0 of every row (non-NULL), in order. */
static void users_from(users *u, PGresult *r)
{
    int rows = PQntuples(r);
    u->v = calloc((size_t)rows + 1, sizeof *u->v);
    u->n = 0;
    for (int i = 0; i < rows; i++)
        if (!PQgetisnull(r, i, 0))
            u->v[u->n++] = strdup(PQgetvalue(r, i, 0));
}

/* Checks every id of list (named `what` in the message) and builds a PostgreSQL text array of
 * them without repeats, `first` (when not "") at the front. */
static bool users_array(call *c, const char *what, char **list, size_t n, const char *first, chat_buf *out)
{
    chat_buf_pg_array_begin(out);
    if (first && first[0])
        chat_buf_pg_array_str(out, first);
    for (size_t i = 0; i < n; i++) {
        if (!chat_id_valid(list[i])) {
            fail(c, "bad_request", "%s[%zu] must be 1-64 characters of [A-Za-z0-9_-]", what, i);
            return false;
        }
        bool seen = first && strcmp(list[i], first) == 0;
        for (size_t j = 0; j < i && !seen; j++)
            seen = strcmp(list[i], list[j]) == 0;
        if (!seen)
            chat_buf_pg_array_str(out, list[i]);
    }
    chat_buf_pg_array_end(out);
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Membership events                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* After a membership change committed: a Delivery{members} to every member and every removed
 * user, the bare event on chat.members.<conv> (gateways drop their cache) and, through
 * JetStream, on chat.evt.<conv> with Chat-Type: members (replayable by backends). */
static void publish_membership(call *c, const char *conv, const users *added, const users *removed, bool deleted,
                               const users *members)
{
    wk_api *api = c->lane->api;
    natsConnection *nc = api->app->nc;
    Chat__V1__MembershipEvent ev = CHAT__V1__MEMBERSHIP_EVENT__INIT;
    ev.conv = (char *)conv;
    ev.added = added ? added->v : NULL;
    ev.n_added = added ? added->n : 0;
    ev.removed = removed ? removed->v : NULL;
    ev.n_removed = removed ? removed->n : 0;
    ev.conversation_deleted = deleted;
    ev.ts_ms = chat_now_ms();

    Chat__V1__Delivery d = CHAT__V1__DELIVERY__INIT;
    d.item_case = CHAT__V1__DELIVERY__ITEM_MEMBERS;
    d.members = &ev;
    size_t dlen = chat__v1__delivery__get_packed_size(&d);
    uint8_t *dbuf = malloc(dlen ? dlen : 1);
    chat__v1__delivery__pack(&d, dbuf);
    const users *lists[] = {members, removed};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; lists[k] && i < lists[k]->n; i++) {
            char subject[128];
            if (chat_subject_deliver(subject, sizeof subject, lists[k]->v[i]))
                natsConnection_Publish(nc, subject, dbuf, (int)dlen);
        }
    free(dbuf);

    size_t elen = chat__v1__membership_event__get_packed_size(&ev);
    uint8_t *ebuf = malloc(elen ? elen : 1);
    chat__v1__membership_event__pack(&ev, ebuf);
    char subject[128];
    snprintf(subject, sizeof subject, "chat.members.%s", conv);
    natsConnection_Publish(nc, subject, ebuf, (int)elen);

    chat_subject_event(subject, sizeof subject, conv);
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, (const char *)ebuf, (int)elen);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Chat-Type", "members");
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = PUBLISH_WAIT_MS;
    jsErrCode jerr = 0;
    if (s == NATS_OK)
        s = js_PublishMsg(NULL, c->lane->js, msg, &po, &jerr);
    natsMsg_Destroy(msg);
    free(ebuf);
    if (s != NATS_OK)
        LOG_WARN("api", "event=members_event_publish_failed conv=%s status=\"%s\" jerr=%d", conv, natsStatus_GetText(s),
                 (int)jerr);
}

/* The members of conv (inside the change's transaction). */
static bool read_members(call *c, const char *conv, users *out)
{
    const char *p[] = {conv};
    PGresult *r =
        run(c, "members", "SELECT user_id FROM conversation_members WHERE conversation_id = $1 ORDER BY user_id", 1, p,
            PGRES_TUPLES_OK);
    if (r == NULL)
        return false;
    users_from(out, r);
    PQclear(r);
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Conversations and members                                                                    */
/* ------------------------------------------------------------------------------------------ */

static void h_conv_create(call *c)
{
    Chat__V1__ConvCreateRequest *q = chat__v1__conv_create_request__unpack(NULL, c->len, c->data);
    chat_buf arr = {0};
    users added = {0}, members = {0};
    bool created = false;
    if (q == NULL) {
        fail(c, "bad_request", "malformed ConvCreateRequest");
        goto out;
    }
    if (!check_conv(c, q->conv))
        goto out;
    const char *kind = wk_api_conv_kind(q->kind);
    if (kind == NULL) {
        fail(c, "bad_request", "kind must be group or direct");
        goto out;
    }
    if (q->owner[0] && !chat_id_valid(q->owner)) {
        fail(c, "bad_request", "owner must be 1-64 characters of [A-Za-z0-9_-]");
        goto out;
    }
    if (!users_array(c, "members", q->members, q->n_members, q->owner, &arr) || !begin(c))
        goto out;
    const char *p1[] = {q->conv, kind};
    PGresult *r = run(c, "insert_conversation",
                      "INSERT INTO conversations (id, kind) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING id",
                      2, p1, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    created = PQntuples(r) == 1;
    PQclear(r);
    if (!created) {
        const char *p2[] = {q->conv};
        r = run(c, "conversation", "SELECT deleted_at IS NOT NULL FROM conversations WHERE id = $1", 1, p2,
                PGRES_TUPLES_OK);
        if (r == NULL)
            goto out;
        bool deleted = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (deleted) {
            fail(c, "bad_request", "conversation was deleted");
            goto out;
        }
    }
    const char *p3[] = {q->conv, arr.data, q->owner};
    r = run(c, "insert_members",
            "INSERT INTO conversation_members (conversation_id, user_id, role)"
            " SELECT $1, u, CASE WHEN u = $3 THEN 'owner' ELSE 'member' END FROM unnest($2::text[]) AS u"
            " ON CONFLICT (conversation_id, user_id) DO NOTHING RETURNING user_id",
            3, p3, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    users_from(&added, r);
    PQclear(r);
    if (!read_members(c, q->conv, &members) || !commit(c))
        goto out;
    if (added.n > 0)
        publish_membership(c, q->conv, &added, NULL, false, &members);
    Chat__V1__Status st;
    Chat__V1__ConvCreateReply reply = CHAT__V1__CONV_CREATE_REPLY__INIT;
    reply.status = status_of(c, &st);
    reply.created = created;
    reply_with(c, &reply.base);
out:
    users_free(&added);
    users_free(&members);
    chat_buf_free(&arr);
    chat__v1__conv_create_request__free_unpacked(q, NULL);
}

/* Soft delete; deleting a deleted conversation again succeeds without a second event. */
static void h_conv_delete(call *c)
{
    Chat__V1__ConvDeleteRequest *q = chat__v1__conv_delete_request__unpack(NULL, c->len, c->data);
    users members = {0};
    if (q == NULL) {
        fail(c, "bad_request", "malformed ConvDeleteRequest");
        goto out;
    }
    if (!check_conv(c, q->conv) || !begin(c))
        goto out;
    const char *p[] = {q->conv};
    PGresult *r = run(c, "delete_conversation",
                      "UPDATE conversations SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING id",
                      1, p, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    bool deleted_now = PQntuples(r) == 1;
    PQclear(r);
    if (!deleted_now) {
        r = run(c, "conversation", "SELECT 1 FROM conversations WHERE id = $1", 1, p, PGRES_TUPLES_OK);
        if (r == NULL)
            goto out;
        bool exists = PQntuples(r) == 1;
        PQclear(r);
        if (!exists) {
            fail(c, "not_found", "conversation not found");
            goto out;
        }
    }
    if ((deleted_now && !read_members(c, q->conv, &members)) || !commit(c))
        goto out;
    if (deleted_now)
        publish_membership(c, q->conv, NULL, NULL, true, &members);
    reply_status_only(c);
out:
    users_free(&members);
    chat__v1__conv_delete_request__free_unpacked(q, NULL);
}

/* members.add (add true) and members.remove. */
static void members_change(call *c, bool add)
{
    Chat__V1__MembersChangeRequest *q = chat__v1__members_change_request__unpack(NULL, c->len, c->data);
    chat_buf arr = {0};
    users changed = {0}, members = {0};
    if (q == NULL) {
        fail(c, "bad_request", "malformed MembersChangeRequest");
        goto out;
    }
    if (!check_conv(c, q->conv))
        goto out;
    if (q->n_users == 0) {
        fail(c, "bad_request", "users must not be empty");
        goto out;
    }
    if (!users_array(c, "users", q->users, q->n_users, NULL, &arr) || !begin(c))
        goto out;
    const char *p1[] = {q->conv};
    PGresult *r = run(c, "conversation", "SELECT 1 FROM conversations WHERE id = $1 AND deleted_at IS NULL", 1, p1,
                      PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    bool exists = PQntuples(r) == 1;
    PQclear(r);
    if (!exists) {
        fail(c, "not_found", "conversation not found");
        goto out;
    }
    const char *p2[] = {q->conv, arr.data};
    r = add ? run(c, "insert_members",
                  "INSERT INTO conversation_members (conversation_id, user_id)"
                  " SELECT $1, u FROM unnest($2::text[]) AS u"
                  " ON CONFLICT (conversation_id, user_id) DO NOTHING RETURNING user_id",
                  2, p2, PGRES_TUPLES_OK)
            : run(c, "delete_members",
                  "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = ANY ($2::text[])"
                  " RETURNING user_id",
                  2, p2, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    users_from(&changed, r);
    PQclear(r);
    if (!read_members(c, q->conv, &members) || !commit(c))
        goto out;
    if (changed.n > 0)
        publish_membership(c, q->conv, add ? &changed : NULL, add ? NULL : &changed, false, &members);
    Chat__V1__Status st;
    Chat__V1__MembersChangeReply reply = CHAT__V1__MEMBERS_CHANGE_REPLY__INIT;
    reply.status = status_of(c, &st);
    reply.changed = changed.v;
    reply.n_changed = changed.n;
    reply_with(c, &reply.base);
out:
    users_free(&changed);
    users_free(&members);
    chat_buf_free(&arr);
    chat__v1__members_change_request__free_unpacked(q, NULL);
}

static void h_members_add(call *c)
{
    members_change(c, true);
}

static void h_members_remove(call *c)
{
    members_change(c, false);
}

/* member false also when the conversation does not exist or is deleted. */
static void h_members_check(call *c)
{
    Chat__V1__MemberCheckRequest *q = chat__v1__member_check_request__unpack(NULL, c->len, c->data);
    if (q == NULL) {
        fail(c, "bad_request", "malformed MemberCheckRequest");
        goto out;
    }
    if (!check_conv(c, q->conv))
        goto out;
    if (!chat_id_valid(q->user)) {
        fail(c, "bad_request", "user must be 1-64 characters of [A-Za-z0-9_-]");
        goto out;
    }
    const char *p[] = {q->conv, q->user};
    PGresult *r = run(c, "member",
                      "SELECT 1 FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id"
                      " WHERE m.conversation_id = $1 AND m.user_id = $2 AND c.deleted_at IS NULL",
                      2, p, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    Chat__V1__Status st;
    Chat__V1__MemberCheckReply reply = CHAT__V1__MEMBER_CHECK_REPLY__INIT;
    reply.status = status_of(c, &st);
    reply.member = PQntuples(r) > 0;
    PQclear(r);
    reply_with(c, &reply.base);
out:
    chat__v1__member_check_request__free_unpacked(q, NULL);
}

static void h_members_list(call *c)
{
    Chat__V1__MembersListRequest *q = chat__v1__members_list_request__unpack(NULL, c->len, c->data);
    users members = {0};
    if (q == NULL) {
        fail(c, "bad_request", "malformed MembersListRequest");
        goto out;
    }
    if (!check_conv(c, q->conv) || !asking_user_ok(c, q->user))
        goto out;
    if (q->user[0] && !check_member(c, q->conv, q->user))
        goto out; /* a non-member learns nothing, not even whether the conversation exists */
    const char *p[] = {q->conv};
    PGresult *r = run(c, "members",
                      "SELECT m.user_id FROM conversations c"
                      " LEFT JOIN conversation_members m ON m.conversation_id = c.id"
                      " WHERE c.id = $1 AND c.deleted_at IS NULL ORDER BY m.user_id",
                      1, p, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    bool exists = PQntuples(r) > 0;
    users_from(&members, r);
    PQclear(r);
    if (!exists) {
        fail(c, "not_found", "conversation not found");
        goto out;
    }
    Chat__V1__Status st;
    Chat__V1__MembersListReply reply = CHAT__V1__MEMBERS_LIST_REPLY__INIT;
    reply.status = status_of(c, &st);
    reply.users = members.v;
    reply.n_users = members.n;
    reply_with(c, &reply.base);
out:
    users_free(&members);
    chat__v1__members_list_request__free_unpacked(q, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Posting                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* What a post whose cmid names another sender's message gets (the ingest's words too). */
#define CMID_TAKEN "cmid already names another sender's message in this conversation; send with a new cmid"

/* The stored (seq, id) of (conv, cmid) when it is sender's message (sender NULL: anyone's): 1
 * found, 0 not stored (yet), -1 failed (the call answered). Stored as another sender's, the call
 * fails with bad_request: a cmid answers only its own sender, with nothing of another's message
 * (and one whose event has just been archived, its sender unknown, with unavailable). */
static int lookup_post(call *c, const char *conv, const char *cmid, const char *sender, uint64_t *seq, char *id,
                       size_t idsz)
{
    const char *p[] = {conv, cmid};
    PGresult *r = run(c, "dedupe",
                      "SELECT d.seq, d.id, m.sender_id FROM message_dedupe d LEFT JOIN messages m"
                      " ON m.conversation_id = d.conversation_id AND m.seq = d.seq AND m.created_at = d.created_at"
                      " WHERE d.conversation_id = $1 AND d.client_msg_id = $2",
                      2, p, PGRES_TUPLES_OK);
    if (r == NULL)
        return -1;
    int found = PQntuples(r) == 1;
    if (found && sender && PQgetisnull(r, 0, 2)) {
        fail(c, "unavailable", "the message is being archived");
        found = -1;
    } else if (found && sender && strcmp(PQgetvalue(r, 0, 2), sender) != 0) {
        fail(c, "bad_request", CMID_TAKEN);
        found = -1;
    } else if (found) {
        *seq = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        snprintf(id, idsz, "%s", PQgetvalue(r, 0, 1));
    }
    PQclear(r);
    return found;
}

/* True when user is a member of the live conversation conv; otherwise false with the call failed
 * (not_member for a conversation that does not exist too: a non-member learns nothing). */
/* The asking user of a method with a trusted form: "" (a backend reading or acting for no one in
 * particular) is refused on the gateway form, where a user must be named; else a valid id. */
static bool asking_user_ok(call *c, const char *user)
{
    if (user[0] == '\0' && c->from_gateway) {
        fail(c, "bad_request", "a gateway must name the user it asks for");
        return false;
    }
    if (user[0] && !chat_id_valid(user)) {
        fail(c, "bad_request", "user must be empty or 1-64 characters of [A-Za-z0-9_-]");
        return false;
    }
    return true;
}

static bool check_member(call *c, const char *conv, const char *user)
{
    const char *p[] = {conv, user};
    PGresult *r = run(c, "member",
                      "SELECT 1 FROM conversation_members m JOIN conversations x ON x.id = m.conversation_id"
                      " AND x.deleted_at IS NULL WHERE m.conversation_id = $1 AND m.user_id = $2",
                      2, p, PGRES_TUPLES_OK);
    if (r == NULL)
        return false;
    bool member = PQntuples(r) == 1;
    PQclear(r);
    if (!member)
        fail(c, "not_member", "not a member of this conversation");
    return member;
}

static void reply_post(call *c, uint64_t seq, const char *id)
{
    Chat__V1__Status st;
    Chat__V1__PostReply reply = CHAT__V1__POST_REPLY__INIT;
    reply.status = status_of(c, &st);
    reply.seq = seq;
    reply.id = (char *)id;
    reply_with(c, &reply.base);
}

/* Publishes the post to CHAT_IN on its partition's subject with Nats-Msg-Id <conv>/<cmid>. */
static bool publish_post(call *c, const Chat__V1__Post *in)
{
    lane *l = c->lane;
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = in->conv;
    p.cmid = in->cmid;
    p.sender = in->sender;
    p.kind = in->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM ? CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM
                                                                 : CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT;
    p.body = in->body;
    p.meta_json = in->meta_json;
    p.sent_ms = chat_now_ms();
    p.gateway = "";
    p.session = "";
    size_t len = chat__v1__post__get_packed_size(&p);
    uint8_t *buf = malloc(len ? len : 1);
    chat__v1__post__pack(&p, buf);
    char subject[128], msgid[2 * CHAT_ID_MAX + 2];
    chat_subject_in(subject, sizeof subject, (int)chat_partition_of(p.conv, (uint32_t)l->api->app->cfg->partitions),
                    p.conv);
    snprintf(msgid, sizeof msgid, "%s/%s", p.conv, p.cmid);
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, (const char *)buf, (int)len);
    free(buf);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Nats-Msg-Id", msgid);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = PUBLISH_WAIT_MS;
    jsErrCode jerr = 0;
    if (s == NATS_OK)
        s = js_PublishMsg(NULL, l->js, msg, &po, &jerr);
    natsMsg_Destroy(msg);
    if (s != NATS_OK) {
        snprintf(c->detail, sizeof c->detail, "publish %s: %s jerr=%d", subject, natsStatus_GetText(s), (int)jerr);
        fail(c, "unavailable", "message stream unavailable");
        return false;
    }
    return true;
}

/* Publishes, then waits for the ingest's commit by polling message_dedupe. A retry with the
 * same cmid is stored once (broker duplicate window, then the dedupe table). */
static void h_post(call *c)
{
    Chat__V1__PostRequest *q = chat__v1__post_request__unpack(NULL, c->len, c->data);
    if (q == NULL) {
        fail(c, "bad_request", "malformed PostRequest");
        goto out;
    }
    const char *why = wk_api_post_invalid(q->post);
    if (why) {
        fail(c, "bad_request", "%s", why);
        goto out;
    }
    const Chat__V1__Post *p = q->post;
    snprintf(c->conv, sizeof c->conv, "%s", p->conv);
    uint64_t seq = 0;
    char id[64];
    int found = lookup_post(c, p->conv, p->cmid, p->sender, &seq, id, sizeof id);
    if (found < 0)
        goto out;
    if (found) {
        reply_post(c, seq, id);
        goto out;
    }
    const char *pc[] = {p->conv};
    PGresult *r = run(c, "conversation", "SELECT 1 FROM conversations WHERE id = $1 AND deleted_at IS NULL", 1, pc,
                      PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    bool exists = PQntuples(r) == 1;
    PQclear(r);
    if (!exists) {
        fail(c, "not_found", "conversation not found");
        goto out;
    }
    if (!publish_post(c, p))
        goto out;
    wk_app *app = c->lane->api->app;
    int64_t deadline = mono_ms() + wk_api_post_wait_ms(q->timeout_ms);
    int64_t wait = POLL_FIRST_MS;
    for (;;) {
        chat_sleep_ms(wait);
        wait = POLL_NEXT_MS;
        found = lookup_post(c, p->conv, p->cmid, p->sender, &seq, id, sizeof id);
        if (found < 0)
            goto out;
        if (found) {
            reply_post(c, seq, id);
            goto out;
        }
        int64_t now = mono_ms();
        if (atomic_load(&app->stopping) && deadline > now + STOP_GRACE_MS)
            deadline = now + STOP_GRACE_MS;
        if (now >= deadline)
            break;
    }
    fail(c, "unavailable", "not committed in time; retry with the same cmid");
out:
    chat__v1__post_request__free_unpacked(q, NULL);
}

/* Where a post stands. A user's form (the gateway asks on behalf of its client) answers only a
 * member of the live conversation, and only about the user's own message: anyone else gets
 * not_member and nothing else, whether the cmid is stored or not. user "" is the trusted
 * backend's form (it may post as any user): the sender is not checked then. */
static void h_post_status(call *c)
{
    Chat__V1__PostStatusRequest *q = chat__v1__post_status_request__unpack(NULL, c->len, c->data);
    if (q == NULL) {
        fail(c, "bad_request", "malformed PostStatusRequest");
        goto out;
    }
    if (!check_conv(c, q->conv))
        goto out;
    if (!chat_id_valid(q->cmid)) {
        fail(c, "bad_request", "cmid must be 1-64 characters of [A-Za-z0-9_-]");
        goto out;
    }
    if (!asking_user_ok(c, q->user))
        goto out;
    if (q->user[0] && !check_member(c, q->conv, q->user))
        goto out;
    uint64_t seq = 0;
    char id[64];
    int found = lookup_post(c, q->conv, q->cmid, q->user[0] ? q->user : NULL, &seq, id, sizeof id);
    if (found == 0)
        fail(c, "not_found", "not stored (yet)");
    else if (found == 1)
        reply_post(c, seq, id);
out:
    chat__v1__post_status_request__free_unpacked(q, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* History                                                                                      */
/* ------------------------------------------------------------------------------------------ */

/* The columns every event read (history, sync) selects first, in this order; a query's own
 * columns follow from H_EXTRA. */
enum { H_SEQ, H_ID, H_CMID, H_SENDER, H_KIND, H_BODY, H_META, H_TARGET, H_EMOJI, H_ON, H_TS, H_EXTRA };
#define EVENT_COLUMNS                                                                                                  \
    "m.seq, m.id, m.client_msg_id, m.sender_id, m.kind, m.body, m.meta::text, m.target_seq, m.emoji,"                  \
    " m.reaction_on, floor(extract(epoch FROM m.created_at) * 1000)::bigint"

/* Fills e from a row of EVENT_COLUMNS; its strings point into the result (and to conv). */
static void event_from_row(Chat__V1__Event *e, PGresult *rows, int i, char *conv)
{
    chat__v1__event__init(e);
    e->conv = conv;
    e->seq = strtoull(PQgetvalue(rows, i, H_SEQ), NULL, 10);
    e->id = PQgetvalue(rows, i, H_ID);
    e->cmid = PQgetvalue(rows, i, H_CMID);
    e->sender = PQgetvalue(rows, i, H_SENDER);
    e->kind = chat_kind_parse(PQgetvalue(rows, i, H_KIND));
    e->body = PQgetvalue(rows, i, H_BODY);      /* "" when NULL */
    e->meta_json = PQgetvalue(rows, i, H_META); /* "" when NULL */
    e->target = PQgetisnull(rows, i, H_TARGET) ? 0 : strtoull(PQgetvalue(rows, i, H_TARGET), NULL, 10);
    e->emoji = PQgetvalue(rows, i, H_EMOJI);
    e->reaction_on = strcmp(PQgetvalue(rows, i, H_ON), "t") == 0;
    e->ts_ms = strtoll(PQgetvalue(rows, i, H_TS), NULL, 10);
}

/* ------------------------------------------------------------------------------------------ */
/* Cold tier: archived events below the hot rows (docs/storage.md)                              */
/* ------------------------------------------------------------------------------------------ */

/* The live chunks a request reads (archive_chunks + archive_objects), in the order it reads them;
 * the columns every cold query selects first, in this order. */
enum { K_URL, K_OFFSET, K_LENGTH, K_CONV, K_SEQ_LO, K_SEQ_HI, K_ROWS, K_EXTRA };
#define CHUNK_COLUMNS "o.url, k.byte_offset, k.byte_length, k.conversation_id, k.seq_lo, k.seq_hi, k.rows"
#define COLD_CHUNKS_MAX 256 /* chunks one request reads at most (sync stops its page where they end) */

typedef struct cold_set {
    const wk_cold_chunk *chunk[COLD_CHUNKS_MAX];
    int n;
} cold_set;

static void cold_release(call *c, cold_set *cs)
{
    for (int i = 0; i < cs->n; i++)
        wk_cold_release(c->lane->api->cold, cs->chunk[i]);
    cs->n = 0;
}

/* Reads the chunk of row i of r (CHUNK_COLUMNS) into cs; NULL with the call failed
 * ("unavailable" while storage does not answer, "internal" for a damaged chunk). */
static const wk_cold_chunk *cold_read(call *c, cold_set *cs, PGresult *r, int i)
{
    if (cs->n == COLD_CHUNKS_MAX) {
        fail(c, "internal", "too many archived chunks for one request");
        return NULL;
    }
    wk_cold_ref ref = {.url = PQgetvalue(r, i, K_URL),
                       .offset = strtoull(PQgetvalue(r, i, K_OFFSET), NULL, 10),
                       .length = strtoull(PQgetvalue(r, i, K_LENGTH), NULL, 10),
                       .conv = PQgetvalue(r, i, K_CONV),
                       .seq_lo = strtoull(PQgetvalue(r, i, K_SEQ_LO), NULL, 10),
                       .seq_hi = strtoull(PQgetvalue(r, i, K_SEQ_HI), NULL, 10),
                       .rows = (uint32_t)strtoul(PQgetvalue(r, i, K_ROWS), NULL, 10)};
    char err[512];
    const wk_cold_chunk *ch = NULL;
    chat_status st = wk_cold_read(c->lane->api->cold, &ref, &ch, err, sizeof err);
    if (st != CHAT_OK) {
        snprintf(c->detail, sizeof c->detail, "cold: %.240s", err);
        clean(c->detail);
        if (st == CHAT_ERR_UNAVAILABLE)
            fail(c, "unavailable", "archive storage unavailable");
        else
            fail(c, "internal", "archived chunk unreadable");
        return NULL;
    }
    cs->chunk[cs->n++] = ch;
    return ch;
}

/* A reply's copy of an archived event: conv set, the chunk's extra fields left out. */
static void event_from_cold(Chat__V1__Event *e, const Chat__V1__Event *src, char *conv)
{
    *e = *src;
    e->base.n_unknown_fields = 0;
    e->base.unknown_fields = NULL;
    e->conv = conv;
}

/* How every reader (history, sync, hot or archived) shows a deleted message, and an edit of one
 * (it carries the deleted text too): deleted, without body and meta; sender, kind, ts, id, cmid
 * and target stay, so a client draws "message deleted" in place. */
static void tombstone(Chat__V1__Event *e)
{
    e->deleted = true;
    e->body = "";
    e->meta_json = "";
}

/* The seq whose delete would tombstone e (text and system: its own; edit: its target); 0 none. */
static uint64_t tombstone_key(const Chat__V1__Event *e)
{
    if (e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT || e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_SYSTEM)
        return e->seq;
    return e->kind == CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT ? e->target : 0;
}

/* Archived events of conv with floor < seq < before (before 0: no bound), newest first, at most
 * want of them, into out (pointers into chunks kept in cs). Returns how many, -1 on failure.
 * Live chunks never overlap, so reading them by seq_hi descending gives the events in order. */
static int history_cold(call *c, cold_set *cs, const char *conv, uint64_t floor, uint64_t before, int want,
                        const Chat__V1__Event **out)
{
    char f[24], b[24], lim[16];
    snprintf(f, sizeof f, "%" PRIu64, floor);
    snprintf(b, sizeof b, "%" PRIu64, before);
    snprintf(lim, sizeof lim, "%d", COLD_CHUNKS_MAX);
    const char *p[] = {conv, f, b, lim};
    PGresult *r = run(c, "history_cold",
                      "SELECT " CHUNK_COLUMNS " FROM archive_chunks k JOIN archive_objects o ON o.id = k.object_id"
                      " WHERE k.live AND k.conversation_id = $1 AND k.seq_hi > $2::bigint"
                      " AND ($3::bigint = 0 OR k.seq_lo < $3::bigint)"
                      " ORDER BY k.seq_hi DESC LIMIT $4::int",
                      4, p, PGRES_TUPLES_OK);
    if (r == NULL)
        return -1;
    int got = 0;
    for (int i = 0; i < PQntuples(r) && got < want; i++) {
        const wk_cold_chunk *ch = cold_read(c, cs, r, i);
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

/* Tombstones the archived events (cold[i]) of a history or sync page whose message was deleted
 * (by a delete event that is hot, or archived: archive_tombstones); events[i].conv names each
 * one's conversation. */
static bool cold_tombstones(call *c, Chat__V1__Event *events, const bool *cold, size_t n)
{
    chat_buf convs = {0}, keys = {0};
    chat_buf_pg_array_begin(&convs);
    chat_buf_pg_array_begin(&keys);
    int nkeys = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t key = cold[i] ? tombstone_key(&events[i]) : 0;
        if (key == 0)
            continue;
        char v[24];
        snprintf(v, sizeof v, "%" PRIu64, key);
        chat_buf_pg_array_str(&convs, events[i].conv);
        chat_buf_pg_array_str(&keys, v);
        nkeys++;
    }
    chat_buf_pg_array_end(&convs);
    chat_buf_pg_array_end(&keys);
    PGresult *r = NULL;
    if (nkeys > 0) {
        const char *p[] = {convs.data, keys.data};
        r = run(c, "cold_tombstones",
                "SELECT k.c, k.s FROM unnest($1::text[], $2::bigint[]) AS k(c, s)"
                " WHERE EXISTS (SELECT 1 FROM messages d WHERE d.conversation_id = k.c AND d.kind = 'delete'"
                " AND d.target_seq = k.s)"
                " OR EXISTS (SELECT 1 FROM archive_tombstones t WHERE t.conversation_id = k.c AND t.target_seq = k.s)",
                2, p, PGRES_TUPLES_OK);
    }
    chat_buf_free(&convs);
    chat_buf_free(&keys);
    if (nkeys > 0 && r == NULL)
        return false;
    for (int k = 0; r && k < PQntuples(r); k++) {
        const char *conv = PQgetvalue(r, k, 0);
        uint64_t s = strtoull(PQgetvalue(r, k, 1), NULL, 10);
        for (size_t i = 0; i < n; i++)
            if (cold[i] && tombstone_key(&events[i]) == s && strcmp(events[i].conv, conv) == 0)
                tombstone(&events[i]);
    }
    PQclear(r);
    return true;
}

/* Tombstones: a text or system message whose delete event exists, and an edit of such a
 * message, come with deleted = true and an empty body and meta, so history never shows what
 * was deleted (the edits carry its text too). The delete event's own row stays as it is.
 * EXISTS per row is served by messages_changes_target_idx (migration 0004); a delete event that
 * is already archived is found in archive_tombstones (migration 0006).
 * Two tiers: the hot rows first, then, when they do not fill the page with consecutive seqs, the
 * archive below them (floor = the lowest hot seq of a full page); merged newest first, an event
 * found in both (archived between the two reads) taken once. */
static void h_history(call *c)
{
    Chat__V1__HistoryRequest *q = chat__v1__history_request__unpack(NULL, c->len, c->data);
    PGresult *rows = NULL;
    Chat__V1__Event *events = NULL, **eventp = NULL;
    const Chat__V1__Event **cold_events = NULL;
    bool *from_cold = NULL;
    cold_set cs = {.n = 0};
    if (q == NULL) {
        fail(c, "bad_request", "malformed HistoryRequest");
        goto out;
    }
    if (!check_conv(c, q->conv))
        goto out;
    if (!asking_user_ok(c, q->user))
        goto out;
    const char *p1[] = {q->conv, q->user};
    PGresult *r = run(c, "conversation",
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
        fail(c, "not_member", "not a member of this conversation");
        goto out;
    }
    if (!exists) {
        fail(c, "not_found", "conversation not found");
        goto out;
    }
    uint32_t limit = wk_api_history_limit(q->limit);
    uint64_t before_seq = q->before > (uint64_t)INT64_MAX ? 0 : q->before;
    char before[24], fetch[16];
    snprintf(before, sizeof before, "%" PRIu64, before_seq);
    snprintf(fetch, sizeof fetch, "%u", limit + 1);
    const char *p2[] = {q->conv, before, fetch};
    rows = run(c, "history",
               "SELECT " EVENT_COLUMNS ","
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
            event_from_row(e, rows, h, q->conv);
            if (strcmp(PQgetvalue(rows, h, H_EXTRA), "t") == 0)
                tombstone(e);
            if (k < ncold && hs == ks)
                k++; /* archived between the two reads: once */
            h++;
        } else {
            event_from_cold(e, cold_events[k], q->conv);
            from_cold[n] = true;
            k++;
        }
        eventp[n] = e;
        n++;
    }
    bool more = n > (int)limit;
    if (more)
        n = (int)limit;
    if (ncold > 0 && !cold_tombstones(c, events, from_cold, (size_t)n))
        goto out;
    Chat__V1__Status st;
    Chat__V1__HistoryReply reply = CHAT__V1__HISTORY_REPLY__INIT;
    reply.status = status_of(c, &st);
    reply.events = eventp;
    reply.n_events = (size_t)n;
    reply.more = more;
    reply_with(c, &reply.base);
    if (ncold > 0)
        LOG_DEBUG("api", "event=history_cold conv=%s hot=%d cold=%d chunks=%d", q->conv, h, k, cs.n);
out:
    cold_release(c, &cs);
    free(events);
    free(eventp);
    free(cold_events);
    free(from_cold);
    PQclear(rows);
    chat__v1__history_request__free_unpacked(q, NULL);
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
static bool sync_slots(call *c, cold_set *cs, const wk_api_sync_range *ranges, size_t planned, PGresult *rows,
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
        snprintf(lim, sizeof lim, "%d", COLD_CHUNKS_MAX + 1);
        const char *p[] = {a1.data, a2.data, a3.data, a4.data, lim};
        k = run(c, "sync_cold",
                "SELECT " CHUNK_COLUMNS ", u.ord FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[])"
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
    if (nk > COLD_CHUNKS_MAX) {
        *trunc = strtoull(PQgetvalue(k, COLD_CHUNKS_MAX, K_EXTRA), NULL, 10);
        trunc_below = strtoull(PQgetvalue(k, COLD_CHUNKS_MAX, K_SEQ_LO), NULL, 10);
        nk = COLD_CHUNKS_MAX;
    }
    const wk_cold_chunk **chunks = calloc((size_t)nk + 1, sizeof *chunks);
    size_t *chunk_ord = calloc((size_t)nk + 1, sizeof *chunk_ord);
    size_t ncold = 0;
    for (int i = 0; i < nk; i++) {
        chunks[i] = cold_read(c, cs, k, i);
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
static void h_sync(call *c)
{
    Chat__V1__SyncRequest *q = chat__v1__sync_request__unpack(NULL, c->len, c->data);
    chat_buf a1 = {0}, a2 = {0}, a3 = {0};
    PGresult *heads = NULL, *rows = NULL;
    cold_set cs = {.n = 0};
    sync_slot *slots = NULL;
    wk_api_sync_range *ranges = NULL;
    Chat__V1__Event *events = NULL, **eventp = NULL;
    bool *from_cold = NULL;
    Chat__V1__SyncCursor *next = NULL, **nextp = NULL;
    if (q == NULL) {
        fail(c, "bad_request", "malformed SyncRequest");
        goto out;
    }
    if (!chat_id_valid(q->user)) {
        fail(c, "bad_request", "user must be 1-64 characters of [A-Za-z0-9_-]");
        goto out;
    }
    if (q->n_cursors > WK_API_SYNC_CURSORS_MAX) {
        fail(c, "bad_request", "at most %d cursors", WK_API_SYNC_CURSORS_MAX);
        goto out;
    }
    chat_buf_pg_array_begin(&a1);
    chat_buf_pg_array_begin(&a2);
    for (size_t i = 0; i < q->n_cursors; i++) {
        const Chat__V1__SyncCursor *k = q->cursors[i];
        if (!chat_id_valid(k->conv)) {
            fail(c, "bad_request", "cursors[%zu].conv must be 1-64 characters of [A-Za-z0-9_-]", i);
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
    heads = run(c, "sync_heads", SYNC_HEADS_SQL, 4, p1, PGRES_TUPLES_OK);
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
        rows = run(c, "sync_events", SYNC_EVENTS_SQL, 4, p2, PGRES_TUPLES_OK);
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
            event_from_row(e, rows, s->row, (char *)ranges[ord].conv);
            if (strcmp(PQgetvalue(rows, s->row, S_DELETED), "t") == 0)
                tombstone(e);
        } else {
            event_from_cold(e, s->cold, (char *)ranges[ord].conv);
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
    if (!cold_tombstones(c, events, from_cold, sent))
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
        refused = run(c, "sync_not_member",
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
    reply.status = status_of(c, &st);
    reply.not_member = refusedp;
    reply.n_not_member = nrefused;
    reply.events = eventp;
    reply.n_events = sent;
    reply.next = nextp;
    reply.n_next = nnext;
    reply_with(c, &reply.base);
    LOG_DEBUG("api", "event=sync_page user=%s conversations=%zu planned=%zu events=%zu bytes=%zu next=%zu", q->user, n,
              planned, sent, c->reply_len, nnext);
    free(refusedp);
    PQclear(refused);
out:
    cold_release(c, &cs);
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
static void publish_receipt(call *c, PGresult *r, int from, int to)
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
    uint8_t buf[512]; /* two ids of at most 64 bytes and three numbers */
    size_t len = chat__v1__delivery__pack(&d, buf);
    natsConnection *nc = c->lane->api->app->nc;
    for (int i = from; i < to; i++) {
        char subject[128];
        if (chat_subject_deliver(subject, sizeof subject, PQgetvalue(r, i, 4)))
            natsConnection_Publish(nc, subject, buf, (int)len);
    }
}

/* seen / read cursors from gateways; unknown pairs (not a member, deleted conversation) are
 * ignored. After the statement committed, a read that moved is told to every member. */
static void h_cursor(call *c)
{
    Chat__V1__CursorBatch *q = chat__v1__cursor_batch__unpack(NULL, c->len, c->data);
    chat_buf a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0};
    PGresult *r = NULL;
    if (q == NULL) {
        fail(c, "bad_request", "malformed CursorBatch");
        goto out;
    }
    if (q->n_updates > WK_API_CURSOR_BATCH_MAX) {
        fail(c, "bad_request", "at most %d updates per batch", WK_API_CURSOR_BATCH_MAX);
        goto out;
    }
    if (q->n_updates == 0) {
        reply_status_only(c);
        goto out;
    }
    chat_buf_pg_array_begin(&a1);
    chat_buf_pg_array_begin(&a2);
    chat_buf_pg_array_begin(&a3);
    chat_buf_pg_array_begin(&a4);
    for (size_t i = 0; i < q->n_updates; i++) {
        const Chat__V1__CursorUpdate *u = q->updates[i];
        if (!chat_id_valid(u->conv) || !chat_id_valid(u->user)) {
            fail(c, "bad_request", "updates[%zu]: conv and user must be 1-64 characters of [A-Za-z0-9_-]", i);
            goto out;
        }
        char seen[24], read[24];
        snprintf(seen, sizeof seen, "%" PRIu64, u->seen > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : u->seen);
        snprintf(read, sizeof read, "%" PRIu64, u->read > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : u->read);
        chat_buf_pg_array_str(&a1, u->conv);
        chat_buf_pg_array_str(&a2, u->user);
        chat_buf_pg_array_str(&a3, seen);
        chat_buf_pg_array_str(&a4, read);
    }
    chat_buf_pg_array_end(&a1);
    chat_buf_pg_array_end(&a2);
    chat_buf_pg_array_end(&a3);
    chat_buf_pg_array_end(&a4);
    if (q->n_updates == 1)
        snprintf(c->conv, sizeof c->conv, "%s", q->updates[0]->conv);
    const char *p[] = {a1.data, a2.data, a3.data, a4.data};
    r = run(c, "cursor", CURSOR_SQL, 4, p, PGRES_TUPLES_OK); /* autocommit: committed on return */
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
    reply_status_only(c);
out:
    PQclear(r);
    chat_buf_free(&a1);
    chat_buf_free(&a2);
    chat_buf_free(&a3);
    chat_buf_free(&a4);
    chat__v1__cursor_batch__free_unpacked(q, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Conversation list                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* The user's live conversations with their heads and the user's cursors, by id. */
static void h_conv_list(call *c)
{
    Chat__V1__ConvListRequest *q = chat__v1__conv_list_request__unpack(NULL, c->len, c->data);
    PGresult *r = NULL;
    Chat__V1__ConvSummary *convs = NULL, **convp = NULL;
    if (q == NULL) {
        fail(c, "bad_request", "malformed ConvListRequest");
        goto out;
    }
    if (!chat_id_valid(q->user)) {
        fail(c, "bad_request", "user must be 1-64 characters of [A-Za-z0-9_-]");
        goto out;
    }
    const char *p[] = {q->user};
    r = run(c, "conv_list",
            "SELECT c.id, c.kind, c.last_seq, m.delivered_seq, m.read_seq FROM conversation_members m"
            " JOIN conversations c ON c.id = m.conversation_id AND c.deleted_at IS NULL"
            " WHERE m.user_id = $1 ORDER BY c.id COLLATE \"C\"",
            1, p, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    int n = PQntuples(r);
    convs = calloc((size_t)n + 1, sizeof *convs);
    convp = calloc((size_t)n + 1, sizeof *convp);
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
    reply.status = status_of(c, &st);
    reply.conversations = convp;
    reply.n_conversations = (size_t)n;
    reply_with(c, &reply.base);
out:
    free(convs);
    free(convp);
    PQclear(r);
    chat__v1__conv_list_request__free_unpacked(q, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Dispatch                                                                                     */
/* ------------------------------------------------------------------------------------------ */

static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)sub;
    lane *l = closure;
    wk_api *api = l->api;
    int64_t t0 = chat_mono_ns();
    const char *subject = natsMsg_GetSubject(msg);
    size_t plen = strlen(CHAT_API_PREFIX), gwlen = strlen(CHAT_API_GW_PREFIX);
    bool from_gateway = strncmp(subject, CHAT_API_GW_PREFIX, gwlen) == 0;
    const char *name = from_gateway                                  ? subject + gwlen
                       : strncmp(subject, CHAT_API_PREFIX, plen) == 0 ? subject + plen
                                                                      : "";
    int mi = -1;
    for (size_t i = 0; i < NMETHODS && mi < 0; i++)
        if (strcmp(name, methods[i].name) == 0 && (!from_gateway || methods[i].gateway_form))
            mi = (int)i;
    const char *data = natsMsg_GetData(msg);
    call c = {.lane = l,
              .data = (const uint8_t *)(data ? data : ""),
              .len = (size_t)natsMsg_GetDataLength(msg),
              .from_gateway = from_gateway};
    if (mi >= 0)
        methods[mi].fn(&c);
    else
        fail(&c, "bad_request", "unknown method (see docs/nats.md)");
    rollback(l);
    if (c.code[0] || c.reply == NULL)
        reply_status_only(&c);
    const char *reply = natsMsg_GetReply(msg);
    if (reply)
        natsConnection_Publish(nc, reply, c.reply, (int)c.reply_len);

    int64_t us = (chat_mono_ns() - t0) / 1000;
    atomic_fetch_add(api->m_requests[mi >= 0 ? (size_t)mi : NMETHODS], 1);
    chat_histogram_observe_us(api->h_seconds, us);
    const char *mname = mi >= 0 ? methods[mi].name : "unknown";
    if (c.code[0]) {
        for (size_t i = 0; i < NCODES; i++)
            if (strcmp(c.code, error_codes[i]) == 0)
                atomic_fetch_add(api->m_errors[i], 1);
        /* answers a caller expects (not a member, not stored yet) are not failures of ours */
        bool expected = strcmp(c.code, "not_found") == 0 || strcmp(c.code, "not_member") == 0 ||
                        strcmp(c.code, "bad_request") == 0;
        CHAT_LOG(expected ? CHAT_LOG_DEBUG : CHAT_LOG_WARN, "api",
                 "event=request_failed lane=%d method=%s conv=%s code=%s message=\"%s\" detail=\"%s\" ms=%.1f",
                 l->index, mname, c.conv, c.code, c.message, c.detail, (double)us / 1000.0);
    } else {
        LOG_DEBUG("api", "event=request lane=%d method=%s conv=%s ms=%.1f", l->index, mname, c.conv,
                  (double)us / 1000.0);
    }
    free(c.reply);
    natsMsg_Destroy(msg);
}

/* Called by the lane's delivery thread once the subscription is closed and its last callback
 * returned: from then on the lane's connection may be closed by another thread. */
static void on_complete(void *closure)
{
    lane *l = closure;
    pthread_mutex_lock(&l->lock);
    l->done = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Start and stop                                                                               */
/* ------------------------------------------------------------------------------------------ */

chat_status wk_api_start(wk_app *app, wk_api **out)
{
    wk_api *api = calloc(1, sizeof *api);
    if (api == NULL)
        return CHAT_ERR_NOMEM;
    api->app = app;
    chat_metrics *m = app->metrics;
    for (size_t i = 0; i < NMETHODS; i++)
        api->m_requests[i] =
            chat_metrics_counter(m, "chat_api_requests_total", methods[i].labels, "API requests answered, by method.");
    api->m_requests[NMETHODS] =
        chat_metrics_counter(m, "chat_api_requests_total", "method=\"unknown\"", "API requests answered, by method.");
    static const char *code_labels[NCODES] = {"code=\"bad_request\"", "code=\"not_found\"", "code=\"not_member\"",
                                              "code=\"unavailable\"", "code=\"internal\""};
    for (size_t i = 0; i < NCODES; i++)
        api->m_errors[i] = chat_metrics_counter(m, "chat_api_errors_total", code_labels[i],
                                                "API requests answered with an error status, by code.");
    api->h_seconds =
        chat_metrics_histogram(m, "chat_api_request_seconds", NULL, "From an API request's arrival to its reply.");

    chat_status st = wk_cold_create(app->cfg, (size_t)app->cfg->archive_cache_mb << 20, m, &api->cold);
    for (int i = 0; i < WK_API_LANES && st == CHAT_OK; i++) {
        lane *l = &api->lanes[i];
        l->api = api;
        l->index = i;
        snprintf(l->name, sizeof l->name, "chat-api-%d", i);
        pthread_mutex_init(&l->lock, NULL);
        pthread_cond_init(&l->cv, NULL);
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = PUBLISH_WAIT_MS;
        st = chat_nats_check(natsConnection_JetStream(&l->js, app->nc, &jo), "api", "jetstream_context");
        if (st == CHAT_OK)
            st = chat_nats_check(
                natsConnection_QueueSubscribe(&l->sub, app->nc, CHAT_API_PREFIX ">", WK_API_QUEUE, on_request, l),
                "api", "subscribe");
        if (st == CHAT_OK)
            st = chat_nats_check(natsSubscription_SetOnCompleteCB(l->sub, on_complete, l), "api", "on_complete");
    }
    if (st != CHAT_OK) {
        wk_api_destroy(api);
        return st;
    }
    *out = api;
    LOG_INFO("api", "event=role_started lanes=%d subject=%s> queue=%s", WK_API_LANES, CHAT_API_PREFIX, WK_API_QUEUE);
    return CHAT_OK;
}

void wk_api_destroy(wk_api *api)
{
    if (api == NULL)
        return;
    for (int i = 0; i < WK_API_LANES; i++) {
        lane *l = &api->lanes[i];
        if (l->sub && natsSubscription_DrainTimeout(l->sub, DRAIN_TIMEOUT_MS) != NATS_OK)
            natsSubscription_Unsubscribe(l->sub);
    }
    bool stuck = false;
    for (int i = 0; i < WK_API_LANES; i++) {
        lane *l = &api->lanes[i];
        if (l->api == NULL)
            continue; /* never initialised */
        bool done = l->sub == NULL;
        if (!done) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += DONE_WAIT_MS / 1000;
            pthread_mutex_lock(&l->lock);
            while (!l->done && pthread_cond_timedwait(&l->cv, &l->lock, &until) == 0)
                ;
            done = l->done;
            pthread_mutex_unlock(&l->lock);
        }
        if (!done) {
            /* a callback may still run: leave its state alone rather than free it under it */
            LOG_WARN("api", "event=lane_stop_timeout lane=%d", i);
            stuck = true;
            continue;
        }
        natsSubscription_Destroy(l->sub);
        jsCtx_Destroy(l->js);
        PQfinish(l->pg);
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->lock);
    }
    if (!stuck) {
        wk_cold_destroy(api->cold);
        free(api);
    }
    LOG_INFO("api", "event=role_stopped");
}
