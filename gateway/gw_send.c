/* The send path: a post (send, edit, delete, react) or a cursor of a member, the member check
 * that may come first (and the actions waiting behind it), admission, the publish to CHAT_IN, the
 * broker's PubAck, post.status for a duplicate, the publish again, the ack. lws thread only. */
#include "gw_send.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "chat.pb-c.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_time.h"
#include "gw_admit.h"
#include "gw_cursor.h"
#include "gw_membership.h"

#define POST_STATUS_TRIES 40
#define POST_STATUS_RETRY_MS 250

/* The membership cache (gw_membership.h), at the monotonic now. */
static gw_member membership_get(gw_server *srv, const char *conv, const char *user)
{
    return gw_membership_get(srv->membership, conv, user, chat_mono_ms());
}

static void membership_put(gw_server *srv, const char *conv, const char *user, bool member)
{
    gw_membership_put(srv->membership, conv, user, member, chat_mono_ms());
}

/* A send refused by admission control (gw_admit_take): the client sends it again with the same
 * cmid, not before retry_after_ms (a hint; clients keep their own backoff too). */
static void send_retry_later(gw_server *srv, gw_session *s, const char *cmid, int retry_after_ms)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:i}", "type", "error", "code", "rate_limited", "message",
                          "the service is busy; retry with the same cmid later", "retry_after_ms", retry_after_ms);
    if (cmid)
        json_object_set_new(f, "ref", json_string(cmid));
    gw_session_count_error(srv, "rate_limited");
    gw_session_send_json(srv, s, f);
}

/* The answers of the send path's requests: each request carries its own (gw_request.on_reply). */
static bool on_publish_reply(gw_server *srv, gw_request *req, natsMsg *msg);
static bool on_status_reply(gw_server *srv, gw_request *req, natsMsg *msg);
static bool on_status_retry(gw_server *srv, gw_request *req);
static bool on_member_check_reply(gw_server *srv, gw_request *req, natsMsg *msg);

/* The send of session (by id) is answered or failed: it leaves admission control's count. */
static void inflight_done(gw_server *srv, uint64_t session, const char *conv, const char *cmid)
{
    char id[48];
    snprintf(id, sizeof id, "%s-%" PRIu64, srv->gateway_id, session);
    gw_admit_done(srv->admit, id, conv, cmid);
}

/* Publishes a send to CHAT_IN, or refuses it at once when this gateway has CHAT_WS_INFLIGHT_MAX
 * sends in flight (gw_admit_take). A send whose session is gone is published all the same (as
 * before: the client resends with the same cmid when it comes back) but not counted. */
static void publish_post(gw_server *srv, uint64_t session, const char *conv, const char *cmid, const uint8_t *post,
                         size_t len)
{
    gw_session *s = gw_session_find(srv, session);
    int retry_after_ms = 0;
    if (s && !gw_admit_take(srv->admit, gw_session_user(s), chat_mono_ms(), &retry_after_ms)) {
        send_retry_later(srv, s, cmid, retry_after_ms);
        return;
    }
    gw_request *req = gw_bus_request_new(srv, on_publish_reply, session, GW_REQUEST_TIMEOUT_MS);
    snprintf(req->conv, sizeof req->conv, "%s", conv);
    snprintf(req->cmid, sizeof req->cmid, "%s", cmid);
    snprintf(req->user, sizeof req->user, "%s", s ? gw_session_user(s) : ""); /* for post.status */
    /* kept for publish_again (a duplicate the broker does not have) */
    req->payload = malloc(len ? len : 1);
    if (req->payload == NULL)
        CHAT_OOM();
    memcpy(req->payload, post, len);
    req->payload_len = len;
    char subject[128], msg_id[160];
    chat_subject_in(subject, sizeof subject, (int)chat_partition_of(conv, (uint32_t)srv->cfg->partitions), conv);
    snprintf(msg_id, sizeof msg_id, "%s/%s", conv, cmid);
    if (gw_bus_request_send(srv, req, subject, post, len, msg_id) != CHAT_OK) {
        gw_bus_request_free(srv, req);
        if (s)
            gw_session_send_error(srv, s, cmid, "unavailable", "the message broker is not reachable; retry with the same cmid");
        return;
    }
    char name[GW_SESSION_NAME_MAX];
    if (s)
        gw_admit_add(srv->admit, gw_session_name(srv, s, name), gw_session_user(s), conv, cmid, chat_mono_ms());
    LOG_DEBUG("gateway", "event=published session=%" PRIu64 " conv=%s cmid=%s", session, conv, cmid);
}

/* Sends waiting for a member check, in the order they came; the list takes ownership of post. */
typedef struct waiting_post {
    uint64_t session;
    char cmid[CHAT_ID_MAX + 1]; /* "" for a cursor */
    uint8_t *post;              /* a packed Post, or NULL for a cursor update */
    size_t len;
    uint64_t seen, read;
    struct waiting_post *next;
} waiting_post;

typedef struct waiting {
    waiting_post *head, *tail;
} waiting;

struct gw_send_checks {
    chat_map *waiting; /* "conv/user" -> waiting */
};

static void waiting_add(waiting *w, uint64_t session, const char *cmid, uint8_t *post, size_t len, uint64_t seen,
                        uint64_t read)
{
    waiting_post *p = calloc(1, sizeof *p);
    if (p == NULL)
        CHAT_OOM();
    p->session = session;
    snprintf(p->cmid, sizeof p->cmid, "%s", cmid ? cmid : "");
    p->post = post;
    p->len = len;
    p->seen = seen;
    p->read = read;
    if (w->tail)
        w->tail->next = p;
    else
        w->head = p;
    w->tail = p;
}

/* The check for conv/user answered (GW_MEMBER, GW_NOT_MEMBER) or failed (GW_MEMBER_UNKNOWN):
 * release the sends behind it. */
static void waiting_release(gw_server *srv, const char *conv, const char *user, gw_member member)
{
    char key[2 * CHAT_ID_MAX + 2];
    snprintf(key, sizeof key, "%s/%s", conv, user);
    waiting *w = chat_map_remove(srv->checking->waiting, key);
    if (w == NULL)
        return;
    for (waiting_post *p = w->head, *next; p; p = next) {
        next = p->next;
        gw_session *s = gw_session_find(srv, p->session);
        const char *ref = p->cmid[0] ? p->cmid : NULL;
        if (s)
            gw_budget_waiting_done(s->budget);
        if (member == GW_MEMBER && p->post)
            publish_post(srv, p->session, conv, p->cmid, p->post, p->len);
        else if (member == GW_MEMBER)
            gw_cursor_merge(srv, conv, user, p->seen, p->read);
        else if (s && member == GW_NOT_MEMBER)
            gw_session_send_error(srv, s, ref, "not_member", "not a member of this conversation");
        else if (s)
            gw_session_send_error(srv, s, ref, "unavailable", "membership cannot be checked now; retry");
        free(p->post);
        free(p);
    }
    free(w);
}

/* An action of a member that waits for (or skips) the membership check of its conversation. */
static void member_action(gw_server *srv, gw_session *s, const char *conv, const char *cmid, uint8_t *packed,
                          size_t len, uint64_t seen, uint64_t read);

/* send, edit, delete and react: each becomes a Post of its kind, stored as an event with its own
 * seq and acked like a send. Whether a change is allowed (its target exists, only the sender
 * edits or deletes) is decided by the ingest, which answers a refusal through a Rejection. */
void gw_send_post(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    static const Chat__V1__EventKind kinds[] = {
        [GW_IN_SEND] = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT,
        [GW_IN_EDIT] = CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT,
        [GW_IN_DELETE] = CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE,
        [GW_IN_REACT] = CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION,
    };
    gw_user *u = s->u;
    if (u && !gw_bucket_take(&u->post_tokens, &u->post_refill_ms, srv->cfg->ws_user_rate, chat_mono_ms())) {
        gw_session_send_error(srv, s, f->cmid, "rate_limited", "too many messages from this user; slow down");
        return;
    }
    Chat__V1__Post p = CHAT__V1__POST__INIT;
    p.conv = (char *)f->conv;
    p.cmid = (char *)f->cmid;
    p.sender = (char *)gw_session_user(s);
    p.kind = kinds[f->type];
    p.body = (char *)f->body;
    p.meta_json = f->meta ? f->meta : "";
    p.target = f->target;
    p.emoji = f->emoji ? (char *)f->emoji : "";
    p.reaction_on = f->on;
    p.sent_ms = chat_now_ms();
    p.gateway = srv->gateway_id;
    char name[GW_SESSION_NAME_MAX];
    p.session = (char *)gw_session_name(srv, s, name);
    size_t len = chat__v1__post__get_packed_size(&p);
    uint8_t *packed = chat_xmalloc(len ? len : 1);
    chat__v1__post__pack(&p, packed);
    member_action(srv, s, f->conv, f->cmid, packed, len, 0, 0);
}

void gw_send_cursor(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    bool read = f->type == GW_IN_READ;
    member_action(srv, s, f->conv, NULL, NULL, 0, f->seq, read ? f->seq : 0);
}

/* A frame past the connection's lookup budget (gw_budget.h): rate_limited, with the conversation
 * (and the cmid of a post as ref) so the client knows what to send again later. */
static void lookup_refused(gw_server *srv, gw_session *s, const char *conv, const char *cmid)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "error", "code", "rate_limited", "conv", conv, "message",
                          "too many conversations looked up on this connection; slow down");
    if (cmid)
        json_object_set_new(f, "ref", json_string(cmid));
    gw_session_count_error(srv, "rate_limited");
    gw_session_send_json(srv, s, f);
}

static void member_action(gw_server *srv, gw_session *s, const char *conv, const char *cmid, uint8_t *packed,
                          size_t len, uint64_t seen, uint64_t read)
{
    char key[2 * CHAT_ID_MAX + 2];
    snprintf(key, sizeof key, "%s/%s", conv, gw_session_user(s));
    int64_t now = chat_mono_ms();
    waiting *w = chat_map_get(srv->checking->waiting, key);
    if (w) { /* a check for this member is in flight: queue behind it, keeping the order */
        if (!gw_budget_waiting(&s->budget)) {
            free(packed);
            lookup_refused(srv, s, conv, cmid);
            return;
        }
        waiting_add(w, s->id, cmid, packed, len, seen, read);
        return;
    }
    gw_member known = membership_get(srv, conv, gw_session_user(s));
    /* A post of a member not known either way is published without asking first: the ingest checks
     * the sender's membership in the transaction that stores the post (and answers a non-member
     * with a not_member Rejection), so asking the api role as well only cost a round trip through
     * NATS and PostgreSQL before the first post of each member of each conversation (the
     * 20,000-connection and reconnect rows of docs/benchmarks.md, where every send was a first).
     * The ack or the Rejection then fills the cache (gw_delivery_handle); a Rejection costs the
     * connection a lookup (gw_budget_lookup_charge), so posts into random conversations are bounded
     * like seen frames into them. Cursors have no such check downstream and still ask. */
    if (known == GW_MEMBER || (known == GW_MEMBER_UNKNOWN && packed)) {
        if (known == GW_MEMBER_UNKNOWN && !gw_budget_lookup_left(&s->budget, now)) {
            free(packed);
            lookup_refused(srv, s, conv, cmid);
            return;
        }
        if (packed)
            publish_post(srv, s->id, conv, cmid, packed, len);
        else
            gw_cursor_merge(srv, conv, gw_session_user(s), seen, read);
        free(packed);
        return;
    }
    if (known == GW_NOT_MEMBER) {
        free(packed);
        gw_session_send_error(srv, s, cmid, "not_member", "not a member of this conversation");
        return;
    }
    if (!gw_budget_waiting(&s->budget)) { /* the first in line counts too */
        free(packed);
        lookup_refused(srv, s, conv, cmid);
        return;
    }
    if (!gw_budget_lookup(&s->budget, now)) {
        gw_budget_waiting_done(s->budget);
        free(packed);
        lookup_refused(srv, s, conv, cmid);
        return;
    }
    Chat__V1__MemberCheckRequest rq = CHAT__V1__MEMBER_CHECK_REQUEST__INIT;
    rq.conv = (char *)conv;
    rq.user = (char *)gw_session_user(s);
    uint8_t buf[256];
    size_t rlen = chat__v1__member_check_request__pack(&rq, buf);
    gw_request *req = gw_bus_request_new(srv, on_member_check_reply, s->id, GW_REQUEST_TIMEOUT_MS);
    snprintf(req->conv, sizeof req->conv, "%s", conv);
    snprintf(req->cmid, sizeof req->cmid, "%s", cmid ? cmid : "");
    snprintf(req->user, sizeof req->user, "%s", gw_session_user(s));
    if (gw_bus_request_send(srv, req, CHAT_API_GW_PREFIX "members.check", buf, rlen, NULL) != CHAT_OK) {
        gw_bus_request_free(srv, req);
        gw_budget_lookup_done(s->budget);
        gw_budget_waiting_done(s->budget);
        free(packed);
        gw_session_send_error(srv, s, cmid, "unavailable", "membership cannot be checked now; retry");
        return;
    }
    w = calloc(1, sizeof *w);
    if (w == NULL)
        CHAT_OOM();
    waiting_add(w, s->id, cmid, packed, len, seen, read);
    chat_map_put(srv->checking->waiting, key, w, NULL);
}

/* Asks where a send the broker called a duplicate stands, as its user: the api role answers only a
 * member about the user's own message (never the trusted form, user ""). */
static bool ask_post_status(gw_server *srv, gw_request *req)
{
    if (req->user[0] == '\0')
        return false;
    Chat__V1__PostStatusRequest rq = CHAT__V1__POST_STATUS_REQUEST__INIT;
    rq.conv = req->conv;
    rq.cmid = req->cmid;
    rq.user = req->user;
    uint8_t buf[256];
    size_t len = chat__v1__post_status_request__pack(&rq, buf);
    req->on_reply = on_status_reply;
    req->on_retry = on_status_retry;
    req->deadline_ms = chat_mono_ms() + GW_REQUEST_TIMEOUT_MS;
    return gw_bus_request_send(srv, req, CHAT_API_GW_PREFIX "post.status", buf, len, NULL) == CHAT_OK;
}

/* A send again that the broker answers "duplicate" but that post.status does not find in the
 * store is a message the stream dropped while keeping its Nats-Msg-Id in the duplicate map, and
 * every later send with the same cmid would be answered the same for the whole duplicate window
 * (10 min): the client would retry into that answer until it gives up. Two ways that happens:
 *   - nats-server 2.10 stages a Nats-Msg-Id in the map (with seq 0) before it proposes the message
 *     to the stream's replicas, and does not clear it when that proposal is lost (a leader change
 *     at that moment: nats-io/nats-server#6415, fixed in 2.11 by #6486);
 *   - a broker that restarted on less than it had acknowledged (a power loss with CHAT_NATS_SYNC
 *     of an interval) keeps a consumer's state newer than its stream (nats-server#7693): a message
 *     stored since at a sequence the consumer had acknowledged before counts as acknowledged and
 *     is removed from the work queue at once, its Nats-Msg-Id staying in the map (seq > 0).
 * A duplicate is also what a send again gets while the first copy is still on its way (in the
 * stream, or proposed and not applied), so this is decided only once post.status has not found
 * the message for POST_STATUS_TRIES: the Post is then published once more under a Nats-Msg-Id of
 * this request. If the first copy did get in after all, the ingest stores the (conv, cmid) once
 * all the same (message_dedupe) and answers the copy with the stored seq and id. */
static bool publish_again(gw_server *srv, gw_request *req)
{
    char subject[128], msg_id[200];
    chat_subject_in(subject, sizeof subject, (int)chat_partition_of(req->conv, (uint32_t)srv->cfg->partitions),
                    req->conv);
    snprintf(msg_id, sizeof msg_id, "%s/%s/%s-%" PRIu64, req->conv, req->cmid, srv->gateway_id, req->id);
    req->on_reply = on_publish_reply; /* its PubAck comes to this request again */
    req->on_retry = NULL;
    req->republished = true;
    req->attempts = 0;
    req->deadline_ms = chat_mono_ms() + GW_REQUEST_TIMEOUT_MS;
    if (gw_bus_request_send(srv, req, subject, req->payload, req->payload_len, msg_id) != CHAT_OK)
        return false;
    LOG_WARN("gateway", "event=published_again conv=%s cmid=%s msg_id=%s reason=duplicate_not_stored", req->conv,
             req->cmid, msg_id);
    return true;
}

void gw_send_ack(gw_server *srv, gw_session *s, const char *conv, const char *cmid, uint64_t seq, const char *id)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "ack", "conv", conv, "cmid", cmid, "seq",
                          (json_int_t)seq, "id", id);
    atomic_fetch_add(srv->m.acks, 1);
    LOG_DEBUG("gateway", "event=acked session=%s-%" PRIu64 " conv=%s cmid=%s seq=%" PRIu64, srv->gateway_id, s->id, conv, cmid, seq);
    char name[GW_SESSION_NAME_MAX];
    gw_admit_done(srv->admit, gw_session_name(srv, s, name), conv, cmid);
    gw_session_send_json(srv, s, f);
}

/* A send polling post.status is done (acked, failed, or its session gone). */
static void status_chain_end(gw_server *srv, gw_request *req)
{
    if (!req->status_chain)
        return;
    req->status_chain = false;
    gw_session *s = gw_session_find(srv, req->session);
    if (s)
        gw_budget_status_done(s->budget);
}

/* The first post.status of a duplicate send: refused at once past GW_STATUS_CHAINS of the
 * connection; past its poll rate it waits its turn (asked from on_status_retry). */
static bool start_post_status(gw_server *srv, gw_session *s, gw_request *req)
{
    if (!req->status_chain && !gw_budget_status_start(&s->budget)) {
        inflight_done(srv, req->session, req->conv, req->cmid);
        json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "error", "code", "rate_limited", "ref", req->cmid,
                              "message", "too many sends waiting for their status on this connection; retry later");
        gw_session_count_error(srv, "rate_limited");
        gw_session_send_json(srv, s, f);
        return false;
    }
    req->status_chain = true;
    if (!gw_budget_status_poll(&s->budget, chat_mono_ms())) {
        req->on_reply = on_status_reply;
        req->on_retry = on_status_retry;
        req->retry_at_ms = chat_mono_ms() + POST_STATUS_RETRY_MS;
        return true;
    }
    if (!ask_post_status(srv, req)) {
        inflight_done(srv, req->session, req->conv, req->cmid);
        gw_session_send_error(srv, s, req->cmid, "unavailable", "retry with the same cmid");
        return false;
    }
    return true;
}

/* The sender's session of a publish or post.status answer, or NULL: the client left (its send
 * leaves admission control's count; it retries with the same cmid when it comes back). */
static gw_session *sender_of(gw_server *srv, gw_request *req)
{
    gw_session *s = gw_session_find(srv, req->session);
    if (s == NULL)
        inflight_done(srv, req->session, req->conv, req->cmid);
    return s;
}

/* The broker's PubAck of a send (or its timeout). */
static bool publish_answered(gw_server *srv, gw_request *req, natsMsg *msg)
{
    gw_session *s = sender_of(srv, req);
    if (s == NULL)
        return false;
    if (msg == NULL || gw_bus_no_responders(msg)) {
        inflight_done(srv, req->session, req->conv, req->cmid);
        gw_session_send_error(srv, s, req->cmid, "unavailable", "the broker did not accept the message; retry with the same cmid");
        return false;
    }
    chat_histogram_observe_us(srv->m.puback, (chat_mono_ns() - req->sent_ns) / 1000);
    json_t *ack = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    bool error = ack == NULL || json_object_get(ack, "error") != NULL;
    bool duplicate = json_is_true(json_object_get(ack, "duplicate"));
    long long stream_seq = ack ? (long long)json_integer_value(json_object_get(ack, "seq")) : -1LL;
    LOG_DEBUG("gateway", "event=puback session=%s-%" PRIu64 " conv=%s cmid=%s error=%d duplicate=%d stream_seq=%lld",
              srv->gateway_id, s->id, req->conv, req->cmid, error, duplicate, stream_seq);
    json_decref(ack);
    req->dup_answered = duplicate; /* in flight, or dropped by the stream: publish_again */
    if (error) {
        inflight_done(srv, req->session, req->conv, req->cmid);
        gw_session_send_error(srv, s, req->cmid, "unavailable", "the broker refused the message; retry with the same cmid");
        return false;
    }
    if (!duplicate)
        return false; /* the ack comes with the committed event */
    /* a retry the broker already has: ask the api role for the stored seq and id */
    return start_post_status(srv, s, req);
}

/* post.status's answer about a duplicate send (or its timeout). */
static bool status_answered(gw_server *srv, gw_request *req, natsMsg *msg)
{
    gw_session *s = sender_of(srv, req);
    if (s == NULL)
        return false;
    Chat__V1__PostReply *r = NULL;
    if (msg && !gw_bus_no_responders(msg))
        r = chat__v1__post_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                         (const uint8_t *)natsMsg_GetData(msg));
    const char *code = r == NULL ? "unavailable" : r->status ? r->status->code : "";
    if (r && code[0] == '\0') {
        gw_send_ack(srv, s, req->conv, req->cmid, r->seq, r->id);
        chat__v1__post_reply__free_unpacked(r, NULL);
        return false;
    }
    if (r && (strcmp(code, "not_member") == 0 || strcmp(code, "bad_request") == 0)) {
        /* not a member (told nothing else), or the cmid is another sender's message */
        inflight_done(srv, req->session, req->conv, req->cmid);
        if (strcmp(code, "not_member") == 0)
            membership_put(srv, req->conv, req->user, false);
        gw_session_send_error(srv, s, req->cmid, code,
                              strcmp(code, "not_member") == 0 ? "not a member of this conversation"
                                                              : r->status->message);
        chat__v1__post_reply__free_unpacked(r, NULL);
        return false;
    }
    bool not_yet = r && strcmp(code, "not_found") == 0;
    if (r)
        chat__v1__post_reply__free_unpacked(r, NULL);
    if (not_yet && ++req->attempts < POST_STATUS_TRIES) {
        /* stored by the ingest any moment now: ask again shortly */
        req->retry_at_ms = chat_mono_ms() + POST_STATUS_RETRY_MS;
        return true;
    }
    if (not_yet && req->dup_answered && !req->republished && req->payload && publish_again(srv, req))
        return true; /* its PubAck comes to this request again */
    inflight_done(srv, req->session, req->conv, req->cmid);
    gw_session_send_error(srv, s, req->cmid, "unavailable", "the message is not stored yet; retry with the same cmid");
    return false;
}

/* A send's chain (publish, post.status, publish again) ends when its request is let go. */
static bool on_publish_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    bool keep = publish_answered(srv, req, msg);
    if (!keep)
        status_chain_end(srv, req);
    return keep;
}

static bool on_status_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    bool keep = status_answered(srv, req, msg);
    if (!keep)
        status_chain_end(srv, req);
    return keep;
}

static bool on_status_retry(gw_server *srv, gw_request *req)
{
    gw_session *s = gw_session_find(srv, req->session);
    bool keep = s != NULL;
    if (keep && !gw_budget_status_poll(&s->budget, chat_mono_ms()))
        req->retry_at_ms = chat_mono_ms() + POST_STATUS_RETRY_MS; /* the connection's polls are spent: later */
    else if (keep)
        keep = ask_post_status(srv, req);
    if (!keep)
        status_chain_end(srv, req);
    return keep;
}

/* members.check's answer (or its timeout): caches it and releases the actions waiting for it. */
static bool on_member_check_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    Chat__V1__MemberCheckReply *r = NULL;
    if (msg && !gw_bus_no_responders(msg))
        r = chat__v1__member_check_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                 (const uint8_t *)natsMsg_GetData(msg));
    gw_member member = r == NULL || (r->status && r->status->code[0]) ? GW_MEMBER_UNKNOWN
                       : r->member                                   ? GW_MEMBER
                                                                     : GW_NOT_MEMBER;
    if (r)
        chat__v1__member_check_reply__free_unpacked(r, NULL);
    if (member != GW_MEMBER_UNKNOWN)
        membership_put(srv, req->conv, req->user, member == GW_MEMBER);
    gw_session_lookup_done(srv, req->session);
    waiting_release(srv, req->conv, req->user, member);
    return false;
}

static void free_waiting_entry(const char *key, void *value, void *ctx)
{
    (void)key;
    (void)ctx;
    waiting *w = value;
    for (waiting_post *p = w->head, *next; p; p = next) {
        next = p->next;
        free(p->post);
        free(p);
    }
    free(w);
}

gw_send_checks *gw_send_create(void)
{
    gw_send_checks *c = calloc(1, sizeof *c);
    if (c == NULL)
        CHAT_OOM();
    c->waiting = chat_map_create();
    return c;
}

void gw_send_destroy(gw_send_checks *c)
{
    if (c == NULL)
        return;
    chat_map_each(c->waiting, free_waiting_entry, NULL);
    chat_map_destroy(c->waiting);
    free(c);
}

