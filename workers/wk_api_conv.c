/* The api role's conversations and members: conv.create, conv.delete, members.add/remove/check/
 * list. Runs on a lane's delivery thread. A membership change is published (deliveries, the bare
 * event, the replayable JetStream event) only after its transaction committed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_buf.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "wk_apip.h"
#include "wk_routes.h"

const char *wk_api_conv_kind(const char *asked)
{
    if (asked == NULL || asked[0] == '\0' || strcmp(asked, "group") == 0)
        return "group";
    if (strcmp(asked, "direct") == 0)
        return "direct";
    return NULL;
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
    u->v = chat_xcalloc((size_t)rows + 1, sizeof *u->v);
    u->n = 0;
    for (int i = 0; i < rows; i++)
        if (!PQgetisnull(r, i, 0))
            u->v[u->n++] = chat_xstrdup(PQgetvalue(r, i, 0));
}

/* Checks every id of list (named `what` in the message) and builds a PostgreSQL text array of
 * them without repeats, `first` (when not "") at the front. */
static bool users_array(api_call *c, const char *what, char **list, size_t n, const char *first, chat_buf *out)
{
    chat_buf_pg_array_begin(out);
    if (first && first[0])
        chat_buf_pg_array_str(out, first);
    for (size_t i = 0; i < n; i++) {
        if (!chat_id_valid(list[i])) {
            api_fail(c, "bad_request", "%s[%zu] must be 1-64 characters of [A-Za-z0-9_-]", what, i);
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
static void publish_membership(api_call *c, const char *conv, const users *added, const users *removed, bool deleted,
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
    const users *lists[] = {members, removed};
    for (int k = 0; k < 2; k++)
        if (lists[k] && lists[k]->n > 0)
            wk_routes_deliver(c->lane->routes, nc, &d, (const char *const *)lists[k]->v, (int)lists[k]->n);

    size_t elen = chat__v1__membership_event__get_packed_size(&ev);
    uint8_t *ebuf = chat_xmalloc(elen ? elen : 1);
    chat__v1__membership_event__pack(&ev, ebuf);
    char subject[128];
    chat_subject_members(subject, sizeof subject, conv);
    natsConnection_Publish(nc, subject, ebuf, (int)elen);

    chat_subject_event(subject, sizeof subject, conv);
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, (const char *)ebuf, (int)elen);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Chat-Type", "members");
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = API_PUBLISH_WAIT_MS;
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
static bool read_members(api_call *c, const char *conv, users *out)
{
    const char *p[] = {conv};
    PGresult *r =
        api_run(c, "members", "SELECT user_id FROM conversation_members WHERE conversation_id = $1 ORDER BY user_id", 1,
                p, PGRES_TUPLES_OK);
    if (r == NULL)
        return false;
    users_from(out, r);
    PQclear(r);
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Conversations and members                                                                    */
/* ------------------------------------------------------------------------------------------ */

void api_conv_create(api_call *c)
{
    Chat__V1__ConvCreateRequest *q = chat__v1__conv_create_request__unpack(NULL, c->len, c->data);
    chat_buf arr = {0};
    users added = {0}, members = {0};
    bool created = false;
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed ConvCreateRequest");
        goto out;
    }
    if (!api_check_conv(c, q->conv))
        goto out;
    const char *kind = wk_api_conv_kind(q->kind);
    if (kind == NULL) {
        api_fail(c, "bad_request", "kind must be group or direct");
        goto out;
    }
    if (q->owner[0] && !api_check_id(c, "owner", q->owner))
        goto out;
    if (!users_array(c, "members", q->members, q->n_members, q->owner, &arr) || !api_begin(c))
        goto out;
    const char *p1[] = {q->conv, kind};
    PGresult *r =
        api_run(c, "insert_conversation",
                "INSERT INTO conversations (id, kind) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING id", 2, p1,
                PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    created = PQntuples(r) == 1;
    PQclear(r);
    if (!created) {
        const char *p2[] = {q->conv};
        r = api_run(c, "conversation", "SELECT deleted_at IS NOT NULL FROM conversations WHERE id = $1", 1, p2,
                    PGRES_TUPLES_OK);
        if (r == NULL)
            goto out;
        bool deleted = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (deleted) {
            api_fail(c, "bad_request", "conversation was deleted");
            goto out;
        }
    }
    const char *p3[] = {q->conv, arr.data, q->owner};
    r = api_run(c, "insert_members",
                "INSERT INTO conversation_members (conversation_id, user_id, role)"
                " SELECT $1, u, CASE WHEN u = $3 THEN 'owner' ELSE 'member' END FROM unnest($2::text[]) AS u"
                " ON CONFLICT (conversation_id, user_id) DO NOTHING RETURNING user_id",
                3, p3, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    users_from(&added, r);
    PQclear(r);
    if (!read_members(c, q->conv, &members) || !api_commit(c))
        goto out;
    if (added.n > 0)
        publish_membership(c, q->conv, &added, NULL, false, &members);
    Chat__V1__Status st;
    Chat__V1__ConvCreateReply reply = CHAT__V1__CONV_CREATE_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.created = created;
    api_reply_with(c, &reply.base);
out:
    users_free(&added);
    users_free(&members);
    chat_buf_free(&arr);
    chat__v1__conv_create_request__free_unpacked(q, NULL);
}

/* Soft delete; deleting a deleted conversation again succeeds without a second event. */
void api_conv_delete(api_call *c)
{
    Chat__V1__ConvDeleteRequest *q = chat__v1__conv_delete_request__unpack(NULL, c->len, c->data);
    users members = {0};
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed ConvDeleteRequest");
        goto out;
    }
    if (!api_check_conv(c, q->conv) || !api_begin(c))
        goto out;
    const char *p[] = {q->conv};
    PGresult *r =
        api_run(c, "delete_conversation",
                "UPDATE conversations SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL RETURNING id", 1, p,
                PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    bool deleted_now = PQntuples(r) == 1;
    PQclear(r);
    if (!deleted_now) {
        r = api_run(c, "conversation", "SELECT 1 FROM conversations WHERE id = $1", 1, p, PGRES_TUPLES_OK);
        if (r == NULL)
            goto out;
        bool exists = PQntuples(r) == 1;
        PQclear(r);
        if (!exists) {
            api_fail(c, "not_found", "conversation not found");
            goto out;
        }
    }
    if ((deleted_now && !read_members(c, q->conv, &members)) || !api_commit(c))
        goto out;
    if (deleted_now)
        publish_membership(c, q->conv, NULL, NULL, true, &members);
    api_reply_status_only(c);
out:
    users_free(&members);
    chat__v1__conv_delete_request__free_unpacked(q, NULL);
}

/* members.add (add true) and members.remove. */
static void members_change(api_call *c, bool add)
{
    Chat__V1__MembersChangeRequest *q = chat__v1__members_change_request__unpack(NULL, c->len, c->data);
    chat_buf arr = {0};
    users changed = {0}, members = {0};
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed MembersChangeRequest");
        goto out;
    }
    if (!api_check_conv(c, q->conv))
        goto out;
    if (q->n_users == 0) {
        api_fail(c, "bad_request", "users must not be empty");
        goto out;
    }
    if (!users_array(c, "users", q->users, q->n_users, NULL, &arr) || !api_begin(c))
        goto out;
    if (!api_check_live_conv(c, q->conv))
        goto out;
    const char *p2[] = {q->conv, arr.data};
    PGresult *r = add ? api_run(c, "insert_members",
                      "INSERT INTO conversation_members (conversation_id, user_id)"
                      " SELECT $1, u FROM unnest($2::text[]) AS u"
                      " ON CONFLICT (conversation_id, user_id) DO NOTHING RETURNING user_id",
                      2, p2, PGRES_TUPLES_OK)
            : api_run(c, "delete_members",
                      "DELETE FROM conversation_members WHERE conversation_id = $1 AND user_id = ANY ($2::text[])"
                      " RETURNING user_id",
                      2, p2, PGRES_TUPLES_OK);
    if (r == NULL)
        goto out;
    users_from(&changed, r);
    PQclear(r);
    if (!read_members(c, q->conv, &members) || !api_commit(c))
        goto out;
    if (changed.n > 0)
        publish_membership(c, q->conv, add ? &changed : NULL, add ? NULL : &changed, false, &members);
    Chat__V1__Status st;
    Chat__V1__MembersChangeReply reply = CHAT__V1__MEMBERS_CHANGE_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.changed = changed.v;
    reply.n_changed = changed.n;
    api_reply_with(c, &reply.base);
out:
    users_free(&changed);
    users_free(&members);
    chat_buf_free(&arr);
    chat__v1__members_change_request__free_unpacked(q, NULL);
}

void api_members_add(api_call *c)
{
    members_change(c, true);
}

void api_members_remove(api_call *c)
{
    members_change(c, false);
}

/* member false also when the conversation does not exist or is deleted. */
void api_members_check(api_call *c)
{
    Chat__V1__MemberCheckRequest *q = chat__v1__member_check_request__unpack(NULL, c->len, c->data);
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed MemberCheckRequest");
        goto out;
    }
    bool member = false;
    if (!api_check_conv(c, q->conv) || !api_check_id(c, "user", q->user) ||
        !api_is_member(c, q->conv, q->user, &member))
        goto out;
    Chat__V1__Status st;
    Chat__V1__MemberCheckReply reply = CHAT__V1__MEMBER_CHECK_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.member = member;
    api_reply_with(c, &reply.base);
out:
    chat__v1__member_check_request__free_unpacked(q, NULL);
}

void api_members_list(api_call *c)
{
    Chat__V1__MembersListRequest *q = chat__v1__members_list_request__unpack(NULL, c->len, c->data);
    users members = {0};
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed MembersListRequest");
        goto out;
    }
    if (!api_check_conv(c, q->conv) || !api_asking_user_ok(c, q->user))
        goto out;
    if (q->user[0] && !api_check_member(c, q->conv, q->user))
        goto out; /* a non-member learns nothing, not even whether the conversation exists */
    const char *p[] = {q->conv};
    PGresult *r = api_run(c, "members",
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
        api_fail(c, "not_found", "conversation not found");
        goto out;
    }
    Chat__V1__Status st;
    Chat__V1__MembersListReply reply = CHAT__V1__MEMBERS_LIST_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.users = members.v;
    reply.n_users = members.n;
    api_reply_with(c, &reply.base);
out:
    users_free(&members);
    chat__v1__members_list_request__free_unpacked(q, NULL);
}
