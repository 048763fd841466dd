/* typing frames: ephemeral, core NATS only, to the members connected now. A member's typing is
 * published once on chat.typing.<conv> (the api role's relay fans it out); the first of a
 * conversation asks members.list, which fills the membership cache. lws thread only. */
#include "gw_typing.h"

#include <stdio.h>
#include <string.h>

#include "chat.pb-c.h"
#include "chat_nats.h"
#include "chat_time.h"
#include "gw_bus.h"
#include "gw_membership.h"

static bool on_members_list_reply(gw_server *srv, gw_request *req, natsMsg *msg);

/* Publishes a member's typing once, on chat.typing.<conv>: the api role's typing relay checks the
 * membership again and sends it to the other members (workers/wk_typing.h). A gateway publishes
 * no delivery itself, so its NATS user may not (docs/security.md). */
static void typing_fanout(gw_server *srv, const char *conv, const char *user)
{
    Chat__V1__Typing t = CHAT__V1__TYPING__INIT;
    t.conv = (char *)conv;
    t.user = (char *)user;
    t.ts_ms = chat_now_ms();
    uint8_t buf[256]; /* two ids of at most 64 bytes, a timestamp and their tags */
    size_t len = chat__v1__typing__pack(&t, buf);
    char subject[128];
    if (chat_subject_typing(subject, sizeof subject, conv))
        natsConnection_Publish(srv->nc, subject, buf, (int)len);
}

gw_typing_action gw_typing_decide(gw_budget **budget, gw_membership *membership, const char *conv, const char *user,
                                  int64_t now_ms)
{
    if (!gw_budget_typing(budget, conv, now_ms))
        return GW_TYPING_DROP; /* typing is a hint: the extras are dropped */
    if (gw_membership_get(membership, conv, user, now_ms) == GW_NOT_MEMBER)
        return GW_TYPING_NOT_MEMBER;
    if (gw_membership_has_list(membership, conv) && gw_membership_get(membership, conv, user, now_ms) == GW_MEMBER)
        return GW_TYPING_FANOUT;
    if (!gw_budget_lookup(budget, now_ms))
        return GW_TYPING_DROP; /* dropped, as an extra */
    return GW_TYPING_LOOKUP;
}

void gw_typing_handle(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    const char *conv = f->conv;
    switch (gw_typing_decide(&s->budget, srv->membership, conv, gw_session_user(s), chat_mono_ms())) {
    case GW_TYPING_DROP:
        return;
    case GW_TYPING_NOT_MEMBER:
        gw_session_send_error(srv, s, NULL, "not_member", "not a member of this conversation");
        return;
    case GW_TYPING_FANOUT:
        typing_fanout(srv, conv, gw_session_user(s));
        return;
    case GW_TYPING_LOOKUP:
        break;
    }
    Chat__V1__MembersListRequest rq = CHAT__V1__MEMBERS_LIST_REQUEST__INIT;
    rq.conv = (char *)conv;
    rq.user = (char *)gw_session_user(s);
    uint8_t buf[256]; /* two ids of at most 64 bytes and their tags */
    size_t len = chat__v1__members_list_request__pack(&rq, buf);
    gw_request *req = gw_bus_request_new(srv, on_members_list_reply, s->id, GW_REQUEST_TIMEOUT_MS);
    snprintf(req->conv, sizeof req->conv, "%s", conv);
    snprintf(req->user, sizeof req->user, "%s", gw_session_user(s));
    if (gw_bus_request_send(srv, req, CHAT_API_GW_PREFIX "members.list", buf, len, NULL) != CHAT_OK) {
        gw_bus_request_free(srv, req); /* typing is best effort */
        gw_budget_lookup_done(s->budget);
    }
}

/* members.list's answer (or its timeout), for typing fanout. */
static bool on_members_list_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    if (msg && gw_bus_no_responders(msg))
        msg = NULL;
    gw_session_lookup_done(srv, req->session);
    Chat__V1__MembersListReply *r = NULL;
    if (msg && natsMsg_GetDataLength(msg) > 0)
        r = chat__v1__members_list_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                 (const uint8_t *)natsMsg_GetData(msg));
    if (r && r->status && strcmp(r->status->code, "not_member") == 0) {
        /* the api role answers a non-member (of a missing conversation too) with this alone */
        chat__v1__members_list_reply__free_unpacked(r, NULL);
        gw_membership_put(srv->membership, req->conv, req->user, false, chat_mono_ms());
        gw_session *s = gw_session_find(srv, req->session);
        if (s)
            gw_session_send_error(srv, s, NULL, "not_member", "not a member of this conversation");
        return false;
    }
    if (r == NULL || (r->status && r->status->code[0] && strcmp(r->status->code, "not_found") != 0)) {
        if (r)
            chat__v1__members_list_reply__free_unpacked(r, NULL);
        return false;
    }
    bool member = false;
    for (size_t i = 0; i < r->n_users && !member; i++)
        member = strcmp(r->users[i], req->user) == 0;
    gw_session *s = gw_session_find(srv, req->session);
    if (!member) {
        /* only the answer is kept: a non-member neither replaces what members use nor makes the
         * gateway hold the list of a conversation (of any size) for a minute */
        gw_membership_put(srv->membership, req->conv, req->user, false, chat_mono_ms());
        chat__v1__members_list_reply__free_unpacked(r, NULL);
        if (s)
            gw_session_send_error(srv, s, NULL, "not_member", "not a member of this conversation");
        return false;
    }
    /* replaces whatever was cached */
    gw_membership_put_list(srv->membership, req->conv, r->users, r->n_users, chat_mono_ms());
    chat__v1__members_list_reply__free_unpacked(r, NULL);
    typing_fanout(srv, req->conv, req->user);
    return false;
}

