/* The api role's posts: post (publish to CHAT_IN, then wait for the ingest's commit) and
 * post.status, and the checks a backend's post must pass. Runs on a lane's delivery thread; the
 * pure helpers on any thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_post.h"
#include "chat_time.h"
#include "wk_apip.h"

#define POLL_FIRST_MS 10
#define POLL_NEXT_MS 15
#define STOP_GRACE_MS 2000 /* a post still waiting when the worker stops */

const char *wk_api_post_invalid(const Chat__V1__Post *p)
{
    return chat_post_backend_fault(chat_post_validate(p, CHAT_POST_UTF8));
}

uint32_t wk_api_post_wait_ms(uint32_t asked)
{
    if (asked == 0)
        return WK_API_POST_WAIT_DEFAULT_MS;
    return asked > WK_API_POST_WAIT_MAX_MS ? WK_API_POST_WAIT_MAX_MS : asked;
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
static int lookup_post(api_call *c, const char *conv, const char *cmid, const char *sender, uint64_t *seq, char *id,
                       size_t idsz)
{
    const char *p[] = {conv, cmid};
    PGresult *r = api_run(c, "dedupe",
                          "SELECT d.seq, d.id, m.sender_id FROM message_dedupe d LEFT JOIN messages m"
                          " ON m.conversation_id = d.conversation_id AND m.seq = d.seq AND m.created_at = d.created_at"
                          " WHERE d.conversation_id = $1 AND d.client_msg_id = $2",
                          2, p, PGRES_TUPLES_OK);
    if (r == NULL)
        return -1;
    int found = PQntuples(r) == 1;
    if (found && sender && PQgetisnull(r, 0, 2)) {
        api_fail(c, "unavailable", "the message is being archived");
        found = -1;
    } else if (found && sender && strcmp(PQgetvalue(r, 0, 2), sender) != 0) {
        api_fail(c, "bad_request", CMID_TAKEN);
        found = -1;
    } else if (found) {
        *seq = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        snprintf(id, idsz, "%s", PQgetvalue(r, 0, 1));
    }
    PQclear(r);
    return found;
}

static void reply_post(api_call *c, uint64_t seq, const char *id)
{
    Chat__V1__Status st;
    Chat__V1__PostReply reply = CHAT__V1__POST_REPLY__INIT;
    reply.status = api_status_of(c, &st);
    reply.seq = seq;
    reply.id = (char *)id;
    api_reply_with(c, &reply.base);
}

/* Publishes the post to CHAT_IN on its partition's subject with Nats-Msg-Id <conv>/<cmid>. */
static bool publish_post(api_call *c, const Chat__V1__Post *in)
{
    api_lane *l = c->lane;
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
    uint8_t *buf = chat_xmalloc(len ? len : 1);
    chat__v1__post__pack(&p, buf);
    char subject[128], msgid[2 * CHAT_ID_MAX + 2];
    chat_subject_in_backend(subject, sizeof subject,
                            (int)chat_partition_of(p.conv, (uint32_t)l->api->app->cfg->partitions), p.conv);
    snprintf(msgid, sizeof msgid, "%s/%s", p.conv, p.cmid);
    natsMsg *msg = NULL;
    natsStatus s = natsMsg_Create(&msg, subject, NULL, (const char *)buf, (int)len);
    free(buf);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(msg, "Nats-Msg-Id", msgid);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = API_PUBLISH_WAIT_MS;
    jsErrCode jerr = 0;
    if (s == NATS_OK)
        s = js_PublishMsg(NULL, l->js, msg, &po, &jerr);
    natsMsg_Destroy(msg);
    if (s != NATS_OK) {
        snprintf(c->detail, sizeof c->detail, "publish %s: %s jerr=%d", subject, natsStatus_GetText(s), (int)jerr);
        api_fail(c, "unavailable", "message stream unavailable");
        return false;
    }
    return true;
}

/* Publishes, then waits for the ingest's commit by polling message_dedupe. A retry with the
 * same cmid is stored once (broker duplicate window, then the dedupe table). */
void api_post(api_call *c)
{
    Chat__V1__PostRequest *q = chat__v1__post_request__unpack(NULL, c->len, c->data);
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed PostRequest");
        goto out;
    }
    const char *why = wk_api_post_invalid(q->post);
    if (why) {
        api_fail(c, "bad_request", "%s", why);
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
    if (!api_check_live_conv(c, p->conv))
        goto out;
    if (!publish_post(c, p))
        goto out;
    wk_app *app = c->lane->api->app;
    int64_t deadline = chat_mono_ms() + wk_api_post_wait_ms(q->timeout_ms);
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
        int64_t now = chat_mono_ms();
        if (atomic_load(&app->stopping) && deadline > now + STOP_GRACE_MS)
            deadline = now + STOP_GRACE_MS;
        if (now >= deadline)
            break;
    }
    api_fail(c, "unavailable", "not committed in time; retry with the same cmid");
out:
    chat__v1__post_request__free_unpacked(q, NULL);
}

/* Where a post stands. A user's form (the gateway asks on behalf of its client) answers only a
 * member of the live conversation, and only about the user's own message: anyone else gets
 * not_member and nothing else, whether the cmid is stored or not. user "" is the trusted
 * backend's form (it may post as any user): the sender is not checked then. */
void api_post_status(api_call *c)
{
    Chat__V1__PostStatusRequest *q = chat__v1__post_status_request__unpack(NULL, c->len, c->data);
    if (q == NULL) {
        api_fail(c, "bad_request", "malformed PostStatusRequest");
        goto out;
    }
    if (!api_check_conv(c, q->conv))
        goto out;
    if (!api_check_id(c, "cmid", q->cmid))
        goto out;
    if (!api_asking_user_ok(c, q->user))
        goto out;
    if (q->user[0] && !api_check_member(c, q->conv, q->user))
        goto out;
    uint64_t seq = 0;
    char id[64];
    int found = lookup_post(c, q->conv, q->cmid, q->user[0] ? q->user : NULL, &seq, id, sizeof id);
    if (found == 0)
        api_fail(c, "not_found", "not stored (yet)");
    else if (found == 1)
        reply_post(c, seq, id);
out:
    chat__v1__post_status_request__free_unpacked(q, NULL);
}
