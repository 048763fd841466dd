/* Client sessions: frames in, frames out, the send path. lws thread only. */
#include "gw_session.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <jansson.h>

#include "chat.pb-c.h"
#include "chat_frames.h"
#include "chat_log.h"
#include "chat_nats.h"
#include "chat_partition.h"
#include "chat_time.h"
#include "gw_cursor.h"
#include "gw_frame.h"
#include "gw_membership.h"
#include "gw_presence.h"
#include "gw_sync.h"

#define REQUEST_TIMEOUT_MS 5000
#define POST_STATUS_TRIES 40
#define POST_STATUS_RETRY_MS 250

/* ------------------------------------------------------------------------------------------ */
/* Outbound frames                                                                              */
/* ------------------------------------------------------------------------------------------ */

static gw_frame *frame_new(const char *text, size_t len, int64_t event_ts_ms)
{
    gw_frame *f = malloc(sizeof *f + LWS_PRE + len);
    if (f == NULL)
        abort();
    f->refs = 1;
    f->len = len;
    f->event_ts_ms = event_ts_ms;
    memcpy(f->data + LWS_PRE, text, len);
    return f;
}

static void frame_release(gw_frame *f)
{
    if (f && --f->refs == 0)
        free(f);
}

static gw_frame *frame_from_json(json_t *frame, int64_t event_ts_ms)
{
    chat_buf b = {0};
    chat_frame_render(frame, &b);
    gw_frame *f = frame_new(b.data ? b.data : "{}", b.len ? b.len : 2, event_ts_ms);
    chat_buf_free(&b);
    return f;
}

static void queue_free(gw_session *s)
{
    for (gw_qnode *n = s->qhead, *next; n; n = next) {
        next = n->next;
        frame_release(n->frame);
        free(n);
    }
    s->qhead = s->qtail = NULL;
    s->qbytes = 0;
}

/* Closes s with code: its queue is freed at once (a client that reads nothing would otherwise keep
 * it until the close frame gets out, which is never), the close frame goes at the next WRITEABLE,
 * and the connection is hung up GW_CLOSE_WAIT_MS later if it is still there (lws's timer when no
 * WRITEABLE comes; gw_session_sweep when the client never answers the close). */
static void close_now(gw_session *s, int code)
{
    if (s->close_code)
        return;
    queue_free(s);
    free(s->sync_next);
    s->sync_next = NULL;
    s->close_code = code;
    s->closing_ms = chat_mono_ns() / 1000000;
    lws_callback_on_writable(s->wsi);
    lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, (GW_CLOSE_WAIT_MS + 999) / 1000);
}

/* A hang-up without a close handshake and with a TCP reset: the kernel drops what it still holds
 * for the socket (a client that reads nothing has its send buffer full) instead of trying to
 * deliver it for minutes. */
static void reset_on_close(gw_session *s)
{
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    setsockopt(lws_get_socket_fd(s->wsi), SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
}

static void hang_up(gw_session *s)
{
    reset_on_close(s);
    lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

/* A session whose queue passes the cap is closed as a slow consumer: it lost nothing that is not
 * in PostgreSQL, and syncs when it reconnects. */
static void close_slow(gw_server *srv, gw_session *s)
{
    LOG_WARN("gateway", "event=slow_consumer session=%s-%" PRIu64 " user=%s queued=%zu", srv->gateway_id, s->id, gw_session_user(s), s->qbytes);
    atomic_fetch_add(srv->m.disc_slow, 1);
    close_now(s, GW_CLOSE_SLOW_CONSUMER);
}

/* Queues f for s. Over the cap for longer than the grace, or twice over it, the session is
 * closed as a slow consumer: memory stays bounded. `paced` frames (sync pages, which the sync
 * itself holds back while the queue is full: gw_sync.h) count only against the grace, so a page
 * bigger than a small cap does not close a client that reads as fast as it can. */
static void enqueue_frame(gw_server *srv, gw_session *s, gw_frame *f, bool paced)
{
    if (s->close_code)
        return;
    size_t max = (size_t)srv->cfg->ws_queue_max;
    if (s->qbytes + f->len > max) {
        int64_t now = chat_mono_ns() / 1000000;
        if (s->over_since_ms == 0)
            s->over_since_ms = now;
        if (now - s->over_since_ms > srv->cfg->ws_slow_grace_ms || (!paced && s->qbytes + f->len > 2 * max)) {
            close_slow(srv, s);
            return;
        }
    }
    gw_qnode *n = malloc(sizeof *n);
    if (n == NULL)
        abort();
    f->refs++;
    n->frame = f;
    n->next = NULL;
    if (s->qtail)
        s->qtail->next = n;
    else
        s->qhead = n;
    s->qtail = n;
    s->qbytes += f->len;
    if (n == s->qhead)
        lws_callback_on_writable(s->wsi);
}

static void enqueue(gw_server *srv, gw_session *s, gw_frame *f)
{
    enqueue_frame(srv, s, f, false);
}

void gw_session_send_json(gw_server *srv, gw_session *s, json_t *frame)
{
    gw_frame *f = frame_from_json(frame, 0);
    enqueue(srv, s, f);
    frame_release(f);
}

/* chat_gateway_failed_total{reason=code} */
static void error_count(gw_server *srv, const char *code)
{
    atomic_uint_fast64_t *c = strcmp(code, "not_member") == 0     ? srv->m.fail_not_member
                              : strcmp(code, "too_large") == 0    ? srv->m.fail_too_large
                              : strcmp(code, "unavailable") == 0  ? srv->m.fail_unavailable
                              : strcmp(code, "rate_limited") == 0 ? srv->m.fail_rate_limited
                                                                  : srv->m.fail_bad_request;
    atomic_fetch_add(c, 1);
}

void gw_session_send_error(gw_server *srv, gw_session *s, const char *ref, const char *code, const char *message)
{
    json_t *f = json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message", message);
    if (ref)
        json_object_set_new(f, "ref", json_string(ref));
    error_count(srv, code);
    LOG_DEBUG("gateway", "event=send_error session=%s-%" PRIu64 " ref=%s code=%s", srv->gateway_id, s->id, ref ? ref : "", code);
    gw_session_send_json(srv, s, f);
}

/* A send refused by admission control (gw_bus_admit): the client sends it again with the same
 * cmid, not before retry_after_ms (a hint; clients keep their own backoff too). */
static void send_retry_later(gw_server *srv, gw_session *s, const char *cmid, int retry_after_ms)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:i}", "type", "error", "code", "rate_limited", "message",
                          "the service is busy; retry with the same cmid later", "retry_after_ms", retry_after_ms);
    if (cmid)
        json_object_set_new(f, "ref", json_string(cmid));
    error_count(srv, "rate_limited");
    gw_session_send_json(srv, s, f);
}

void gw_session_send_event(gw_server *srv, gw_session *s, const Chat__V1__Event *e)
{
    gw_frame *f = frame_from_json(chat_event_json(e), 0);
    enqueue_frame(srv, s, f, true);
    frame_release(f);
}

gw_session *gw_session_find(gw_server *srv, uint64_t id)
{
    uint32_t slot = (uint32_t)id;
    gw_session *s = slot < srv->nslots ? srv->slots[slot] : NULL;
    return s && s->id == id ? s : NULL;
}

/* Gives s a slot and its id. */
static void slot_take(gw_server *srv, gw_session *s)
{
    if (srv->nfree == 0) {
        uint32_t n = srv->nslots ? 2 * srv->nslots : 1024;
        gw_session **slots = realloc(srv->slots, n * sizeof *slots);
        uint32_t *free_slots = realloc(srv->free_slots, n * sizeof *free_slots);
        if (slots == NULL || free_slots == NULL)
            abort();
        srv->slots = slots;
        srv->free_slots = free_slots;
        for (uint32_t i = n; i > srv->nslots; i--) { /* the lowest slot first */
            slots[i - 1] = NULL;
            free_slots[srv->nfree++] = i - 1;
        }
        srv->nslots = n;
    }
    uint32_t slot = srv->free_slots[--srv->nfree];
    s->id = (++srv->next_session << 32) | slot;
    srv->slots[slot] = s;
    srv->nsessions++;
}

static void slot_give_back(gw_server *srv, gw_session *s)
{
    uint32_t slot = (uint32_t)s->id;
    if (slot < srv->nslots && srv->slots[slot] == s) {
        srv->slots[slot] = NULL;
        srv->free_slots[srv->nfree++] = slot;
        srv->nsessions--;
    }
}

/* fn for every open session; fn must not open or close one (closing is asked for, it happens later). */
static void each_session(gw_server *srv, void (*fn)(gw_server *srv, gw_session *s, void *ctx), void *ctx)
{
    for (uint32_t i = 0; i < srv->nslots; i++)
        if (srv->slots[i])
            fn(srv, srv->slots[i], ctx);
}

const char *gw_session_name(const gw_server *srv, const gw_session *s, char *buf)
{
    snprintf(buf, GW_SESSION_NAME_MAX, "%s-%" PRIu64, srv->gateway_id, s->id);
    return buf;
}

/* The number of a session named by gw_session_name on this gateway, or 0 (another gateway's). */
static uint64_t session_number(const gw_server *srv, const char *name)
{
    size_t n = strlen(srv->gateway_id);
    if (name == NULL || strncmp(name, srv->gateway_id, n) != 0 || name[n] != '-')
        return 0;
    char *end;
    unsigned long long v = strtoull(name + n + 1, &end, 10);
    return *end == '\0' ? (uint64_t)v : 0;
}

/* The membership cache (gw_membership.h), at the monotonic now. */
static gw_member membership_get(gw_server *srv, const char *conv, const char *user)
{
    return gw_membership_get(srv->membership, conv, user, chat_mono_ns() / 1000000);
}

static void membership_put(gw_server *srv, const char *conv, const char *user, bool member)
{
    gw_membership_put(srv->membership, conv, user, member, chat_mono_ns() / 1000000);
}

/* ------------------------------------------------------------------------------------------ */
/* The send path                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* The answers of the send path's requests: each request carries its own (gw_request.on_reply). */
static bool on_publish_reply(gw_server *srv, gw_request *req, natsMsg *msg);
static bool on_status_reply(gw_server *srv, gw_request *req, natsMsg *msg);
static bool on_status_retry(gw_server *srv, gw_request *req);
static bool on_member_check_reply(gw_server *srv, gw_request *req, natsMsg *msg);
static bool on_members_list_reply(gw_server *srv, gw_request *req, natsMsg *msg);
static void lookup_done(gw_server *srv, uint64_t session);

/* The send of session (by id) is answered or failed: it leaves admission control's count. */
static void inflight_done(gw_server *srv, uint64_t session, const char *conv, const char *cmid)
{
    char id[48];
    snprintf(id, sizeof id, "%s-%" PRIu64, srv->gateway_id, session);
    gw_bus_inflight_done(srv, id, conv, cmid);
}

/* Publishes a send to CHAT_IN, or refuses it at once when this gateway has CHAT_WS_INFLIGHT_MAX
 * sends in flight (gw_bus_admit). A send whose session is gone is published all the same (as
 * before: the client resends with the same cmid when it comes back) but not counted. */
static void publish_post(gw_server *srv, uint64_t session, const char *conv, const char *cmid, const uint8_t *post,
                         size_t len)
{
    gw_session *s = gw_session_find(srv, session);
    int retry_after_ms = 0;
    if (s && !gw_bus_admit(srv, gw_session_user(s), &retry_after_ms)) {
        send_retry_later(srv, s, cmid, retry_after_ms);
        return;
    }
    gw_request *req = gw_bus_request_new(srv, on_publish_reply, session, REQUEST_TIMEOUT_MS);
    snprintf(req->conv, sizeof req->conv, "%s", conv);
    snprintf(req->cmid, sizeof req->cmid, "%s", cmid);
    snprintf(req->user, sizeof req->user, "%s", s ? gw_session_user(s) : ""); /* for post.status */
    /* kept for publish_again (a duplicate the broker does not have) */
    req->payload = malloc(len ? len : 1);
    if (req->payload == NULL)
        abort();
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
        gw_bus_inflight_add(srv, gw_session_name(srv, s, name), gw_session_user(s), conv, cmid);
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

static void waiting_add(waiting *w, uint64_t session, const char *cmid, uint8_t *post, size_t len, uint64_t seen,
                        uint64_t read)
{
    waiting_post *p = calloc(1, sizeof *p);
    if (p == NULL)
        abort();
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
    waiting *w = chat_map_remove(srv->checking, key);
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
static void handle_post(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    static const Chat__V1__EventKind kinds[] = {
        [GW_IN_SEND] = CHAT__V1__EVENT_KIND__EVENT_KIND_TEXT,
        [GW_IN_EDIT] = CHAT__V1__EVENT_KIND__EVENT_KIND_EDIT,
        [GW_IN_DELETE] = CHAT__V1__EVENT_KIND__EVENT_KIND_DELETE,
        [GW_IN_REACT] = CHAT__V1__EVENT_KIND__EVENT_KIND_REACTION,
    };
    gw_user *u = s->u;
    if (u && !gw_bucket_take(&u->post_tokens, &u->post_refill_ms, srv->cfg->ws_user_rate, chat_mono_ns() / 1000000)) {
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
    uint8_t *packed = malloc(len ? len : 1);
    chat__v1__post__pack(&p, packed);
    member_action(srv, s, f->conv, f->cmid, packed, len, 0, 0);
}

/* seen and read: only a member's cursors are taken (a non-member gets not_member). */
static void handle_cursor(gw_server *srv, gw_session *s, const gw_inframe *f)
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
    error_count(srv, "rate_limited");
    gw_session_send_json(srv, s, f);
}

static void member_action(gw_server *srv, gw_session *s, const char *conv, const char *cmid, uint8_t *packed,
                          size_t len, uint64_t seen, uint64_t read)
{
    char key[2 * CHAT_ID_MAX + 2];
    snprintf(key, sizeof key, "%s/%s", conv, gw_session_user(s));
    int64_t now = chat_mono_ns() / 1000000;
    waiting *w = chat_map_get(srv->checking, key);
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
     * The ack or the Rejection then fills the cache (gw_session_on_delivery); a Rejection costs the
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
    gw_request *req = gw_bus_request_new(srv, on_member_check_reply, s->id, REQUEST_TIMEOUT_MS);
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
        abort();
    waiting_add(w, s->id, cmid, packed, len, seen, read);
    chat_map_put(srv->checking, key, w, NULL);
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
    req->deadline_ms = chat_mono_ns() / 1000000 + REQUEST_TIMEOUT_MS;
    return gw_bus_request_send(srv, req, CHAT_API_GW_PREFIX "post.status", buf, len, NULL) == CHAT_OK;
}

/* nats-server 2.10 stages a Nats-Msg-Id in the stream's duplicate map (with seq 0) before it
 * proposes the message to the stream's replicas, and does not clear it when that proposal is lost
 * (a leader change at that moment: nats-io/nats-server#6415, fixed in 2.11 by #6486). Every send
 * again with the same cmid is then answered "duplicate" (seq 0) and dropped, for the whole
 * duplicate window (10 min), although the stream never had the message: the client would retry
 * into the same answer until it gives up. A duplicate of seq 0 is also what a send again gets while
 * the first copy is still in flight (proposed, not applied), so this is decided only once
 * post.status has not found the message for POST_STATUS_TRIES: the Post is then published once
 * more under a Nats-Msg-Id of this request. If the first copy did get in after all, the ingest
 * stores the (conv, cmid) once all the same (message_dedupe) and answers the copy with the stored
 * seq and id. */
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
    req->deadline_ms = chat_mono_ns() / 1000000 + REQUEST_TIMEOUT_MS;
    if (gw_bus_request_send(srv, req, subject, req->payload, req->payload_len, msg_id) != CHAT_OK)
        return false;
    LOG_WARN("gateway", "event=published_again conv=%s cmid=%s msg_id=%s reason=duplicate_not_stored", req->conv,
             req->cmid, msg_id);
    return true;
}

static void send_ack(gw_server *srv, gw_session *s, const char *conv, const char *cmid, uint64_t seq, const char *id)
{
    json_t *f = json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "ack", "conv", conv, "cmid", cmid, "seq",
                          (json_int_t)seq, "id", id);
    atomic_fetch_add(srv->m.acks, 1);
    LOG_DEBUG("gateway", "event=acked session=%s-%" PRIu64 " conv=%s cmid=%s seq=%" PRIu64, srv->gateway_id, s->id, conv, cmid, seq);
    char name[GW_SESSION_NAME_MAX];
    gw_bus_inflight_done(srv, gw_session_name(srv, s, name), conv, cmid);
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
        error_count(srv, "rate_limited");
        gw_session_send_json(srv, s, f);
        return false;
    }
    req->status_chain = true;
    if (!gw_budget_status_poll(&s->budget, chat_mono_ns() / 1000000)) {
        req->on_reply = on_status_reply;
        req->on_retry = on_status_retry;
        req->retry_at_ms = chat_mono_ns() / 1000000 + POST_STATUS_RETRY_MS;
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
    req->staged_dup = duplicate && stream_seq == 0; /* in flight, or lost: publish_again */
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
        send_ack(srv, s, req->conv, req->cmid, r->seq, r->id);
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
        req->retry_at_ms = chat_mono_ns() / 1000000 + POST_STATUS_RETRY_MS;
        return true;
    }
    if (not_yet && req->staged_dup && !req->republished && req->payload && publish_again(srv, req))
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
    if (keep && !gw_budget_status_poll(&s->budget, chat_mono_ns() / 1000000))
        req->retry_at_ms = chat_mono_ns() / 1000000 + POST_STATUS_RETRY_MS; /* the connection's polls are spent: later */
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
    lookup_done(srv, req->session);
    waiting_release(srv, req->conv, req->user, member);
    return false;
}

/* ------------------------------------------------------------------------------------------ */
/* Deliveries from NATS                                                                         */
/* ------------------------------------------------------------------------------------------ */

static void fan_to_user(gw_server *srv, gw_user *u, gw_frame *f)
{
    for (gw_session *s = u->sessions; s; s = s->next_of_user)
        enqueue(srv, s, f);
}

static json_t *string_array(char **items, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(items[i]));
    return a;
}

void gw_session_on_delivery(gw_server *srv, const char *user, natsMsg *msg)
{
    gw_user *u = chat_map_get(srv->users, user);
    if (u == NULL)
        return;
    Chat__V1__Delivery *d = chat__v1__delivery__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                       (const uint8_t *)natsMsg_GetData(msg));
    if (d == NULL) {
        LOG_WARN("gateway", "event=bad_delivery user=%s", user);
        return;
    }
    switch (d->item_case) {
    case CHAT__V1__DELIVERY__ITEM_EVENT: {
        Chat__V1__Event *e = d->event;
        gw_frame *f = frame_from_json(chat_event_json(e), e->ts_ms);
        fan_to_user(srv, u, f);
        frame_release(f);
        if (e->session && e->session[0]) {
            gw_bus_inflight_done(srv, e->session, e->conv, e->cmid); /* even when the session left */
            if (membership_get(srv, e->conv, u->id) == GW_MEMBER_UNKNOWN)
                membership_put(srv, e->conv, u->id, true); /* a post of u's was stored: u is a member */
            uint64_t n = session_number(srv, e->session);
            for (gw_session *s = u->sessions; s && n; s = s->next_of_user)
                if (s->id == n)
                    send_ack(srv, s, e->conv, e->cmid, e->seq, e->id);
        }
        break;
    }
    case CHAT__V1__DELIVERY__ITEM_MEMBERS: {
        Chat__V1__MembershipEvent *m = d->members;
        gw_membership_invalidate(srv->membership, m->conv);
        json_t *j = json_pack("{s:s, s:s}", "type", "members", "conv", m->conv);
        json_object_set_new(j, "added", string_array(m->added, m->n_added));
        json_object_set_new(j, "removed", string_array(m->removed, m->n_removed));
        if (m->conversation_deleted)
            json_object_set_new(j, "deleted", json_true());
        gw_frame *f = frame_from_json(j, 0);
        fan_to_user(srv, u, f);
        frame_release(f);
        break;
    }
    case CHAT__V1__DELIVERY__ITEM_TYPING: {
        gw_frame *f = frame_from_json(
            json_pack("{s:s, s:s, s:s}", "type", "typing", "conv", d->typing->conv, "user", d->typing->user), 0);
        fan_to_user(srv, u, f);
        frame_release(f);
        break;
    }
    case CHAT__V1__DELIVERY__ITEM_RECEIPT: {
        Chat__V1__Receipt *r = d->receipt;
        gw_frame *f = frame_from_json(json_pack("{s:s, s:s, s:s, s:I, s:I}", "type", "receipt", "conv", r->conv, "user",
                                                r->user, "read", (json_int_t)r->read, "seen", (json_int_t)r->seen),
                                      0);
        fan_to_user(srv, u, f);
        frame_release(f);
        break;
    }
    case CHAT__V1__DELIVERY__ITEM_REJECTION: {
        Chat__V1__Rejection *rj = d->rejection;
        gw_bus_inflight_done(srv, rj->session, rj->conv, rj->cmid);
        uint64_t n = session_number(srv, rj->session);
        bool not_member = strcmp(rj->code, "not_member") == 0;
        for (gw_session *s = u->sessions; s && n; s = s->next_of_user)
            if (s->id == n) {
                gw_session_send_error(srv, s, rj->cmid, rj->code, rj->message);
                if (not_member) /* a post into a conversation not known here: a lookup (gw_budget.h) */
                    gw_budget_lookup_charge(s->budget, chat_mono_ns() / 1000000);
            }
        if (strcmp(rj->code, "not_member") == 0) {
            gw_membership_invalidate(srv->membership, rj->conv); /* our cache was stale */
            membership_put(srv, rj->conv, u->id, false);  /* u's next posts there are refused here */
        }
        break;
    }
    default:
        break;
    }
    chat__v1__delivery__free_unpacked(d, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* lws events                                                                                   */
/* ------------------------------------------------------------------------------------------ */

void gw_session_established(gw_server *srv, gw_session *s, struct lws *wsi, const char *user)
{
    s->wsi = wsi;
    s->last_rx_ms = chat_mono_ns() / 1000000;
    gw_user *u = chat_map_get(srv->users, user);
    if (u == NULL) {
        size_t len = strlen(user);
        u = calloc(1, sizeof *u + len + 1);
        if (u == NULL)
            abort();
        memcpy(u->id, user, len + 1);
        if (gw_bus_subscribe_user(srv, u->id, &u->sub) != CHAT_OK) {
            free(u);
            close_now(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION);
            return;
        }
        chat_map_put(srv->users, u->id, u, NULL);
        atomic_store(srv->m.users, (int_fast64_t)chat_map_size(srv->users));
        gw_presence_online(srv->presence, u->id);
    }
    s->next_of_user = u->sessions;
    if (u->sessions)
        u->sessions->prev_of_user = s;
    u->sessions = s;
    u->count++;
    s->u = u;
    s->established = true;
    slot_take(srv, s);
    char addr[64];
    if (lws_get_peer_simple(wsi, addr, sizeof addr) && addr[0]) {
        s->peer = chat_map_get(srv->per_ip, addr);
        if (s->peer == NULL) {
            size_t n = strlen(addr);
            if ((s->peer = calloc(1, sizeof *s->peer + n + 1)) == NULL)
                abort();
            memcpy(s->peer->addr, addr, n + 1);
            chat_map_put(srv->per_ip, addr, s->peer, NULL);
        }
        s->peer->count++;
    }
    atomic_fetch_add(srv->m.connects, 1);
    atomic_store(srv->m.connections, (int_fast64_t)srv->nsessions);
    LOG_DEBUG("gateway", "event=connected session=%s-%" PRIu64 " user=%s", srv->gateway_id, s->id, gw_session_user(s));
    char name[GW_SESSION_NAME_MAX];
    json_t *hello = json_pack("{s:s, s:s, s:s, s:I}", "type", "hello", "user", gw_session_user(s), "session",
                              gw_session_name(srv, s, name),
                              "server_time", (json_int_t)chat_now_ms());
    gw_session_send_json(srv, s, hello);
}

/* ---- typing: ephemeral, core NATS only, to the members connected now ---- */

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

static void handle_typing(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    const char *conv = f->conv;
    int64_t now = chat_mono_ns() / 1000000;
    if (!gw_budget_typing(&s->budget, conv, now))
        return; /* typing is a hint: the extras are dropped */
    if (membership_get(srv, conv, gw_session_user(s)) == GW_NOT_MEMBER) {
        gw_session_send_error(srv, s, NULL, "not_member", "not a member of this conversation");
        return;
    }
    if (gw_membership_has_list(srv->membership, conv) && membership_get(srv, conv, gw_session_user(s)) == GW_MEMBER) {
        typing_fanout(srv, conv, gw_session_user(s));
        return;
    }
    if (!gw_budget_lookup(&s->budget, now))
        return; /* dropped, as an extra */
    Chat__V1__MembersListRequest rq = CHAT__V1__MEMBERS_LIST_REQUEST__INIT;
    rq.conv = (char *)conv;
    rq.user = (char *)gw_session_user(s);
    uint8_t buf[256]; /* two ids of at most 64 bytes and their tags */
    size_t len = chat__v1__members_list_request__pack(&rq, buf);
    gw_request *req = gw_bus_request_new(srv, on_members_list_reply, s->id, REQUEST_TIMEOUT_MS);
    snprintf(req->conv, sizeof req->conv, "%s", conv);
    snprintf(req->user, sizeof req->user, "%s", gw_session_user(s));
    if (gw_bus_request_send(srv, req, CHAT_API_GW_PREFIX "members.list", buf, len, NULL) != CHAT_OK) {
        gw_bus_request_free(srv, req); /* typing is best effort */
        gw_budget_lookup_done(s->budget);
    }
}

/* The session that asked for a membership lookup got its answer (or its timeout). */
static void lookup_done(gw_server *srv, uint64_t session)
{
    gw_session *s = gw_session_find(srv, session);
    if (s)
        gw_budget_lookup_done(s->budget);
}

/* members.list's answer (or its timeout), for typing fanout. */
static bool on_members_list_reply(gw_server *srv, gw_request *req, natsMsg *msg)
{
    if (msg && gw_bus_no_responders(msg))
        msg = NULL;
    lookup_done(srv, req->session);
    Chat__V1__MembersListReply *r = NULL;
    if (msg && natsMsg_GetDataLength(msg) > 0)
        r = chat__v1__members_list_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                 (const uint8_t *)natsMsg_GetData(msg));
    if (r && r->status && strcmp(r->status->code, "not_member") == 0) {
        /* the api role answers a non-member (of a missing conversation too) with this alone */
        chat__v1__members_list_reply__free_unpacked(r, NULL);
        membership_put(srv, req->conv, req->user, false);
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
        membership_put(srv, req->conv, req->user, false);
        chat__v1__members_list_reply__free_unpacked(r, NULL);
        if (s)
            gw_session_send_error(srv, s, NULL, "not_member", "not a member of this conversation");
        return false;
    }
    /* replaces whatever was cached */
    gw_membership_put_list(srv->membership, req->conv, r->users, r->n_users, chat_mono_ns() / 1000000);
    chat__v1__members_list_reply__free_unpacked(r, NULL);
    typing_fanout(srv, req->conv, req->user);
    return false;
}

/* ---- presence ---- */

#define WATCH_MAX 200

typedef struct gw_watch {
    natsSubscription *sub;
    uint64_t *sessions;
    int n, cap;
} gw_watch;

static void watch(gw_server *srv, gw_session *s, const char *user)
{
    for (int i = 0; i < s->nwatching; i++)
        if (strcmp(s->watching[i], user) == 0)
            return;
    if (s->nwatching >= WATCH_MAX)
        return;
    gw_watch *w = chat_map_get(srv->watched, user);
    if (w == NULL) {
        w = calloc(1, sizeof *w);
        if (gw_bus_subscribe_presence(srv, user, &w->sub) != CHAT_OK) {
            free(w);
            return;
        }
        chat_map_put(srv->watched, user, w, NULL);
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 4;
        w->sessions = realloc(w->sessions, (size_t)w->cap * sizeof *w->sessions);
    }
    w->sessions[w->n++] = s->id;
    if (s->watching == NULL)
        s->watching = calloc(WATCH_MAX, sizeof *s->watching);
    snprintf(s->watching[s->nwatching++], sizeof s->watching[0], "%s", user);
}

static void unwatch_all(gw_server *srv, gw_session *s)
{
    for (int i = 0; i < s->nwatching; i++) {
        gw_watch *w = chat_map_get(srv->watched, s->watching[i]);
        if (w == NULL)
            continue;
        for (int k = 0; k < w->n; k++)
            if (w->sessions[k] == s->id) {
                w->sessions[k] = w->sessions[--w->n];
                break;
            }
        if (w->n == 0) {
            chat_map_remove(srv->watched, s->watching[i]);
            gw_bus_unsubscribe_user(w->sub);
            free(w->sessions);
            free(w);
        }
    }
    free(s->watching);
    s->watching = NULL;
    s->nwatching = 0;
}

static void presence_answered(gw_server *srv, void *data);

static void handle_presence(gw_server *srv, gw_session *s, const gw_inframe *f)
{
    if (!gw_budget_presence(&s->budget, chat_mono_ns() / 1000000)) {
        gw_session_send_error(srv, s, NULL, "rate_limited", "too many presence queries on this connection; slow down");
        return;
    }
    size_t n = json_array_size(f->users);
    const char *ids[GW_PRESENCE_USERS_MAX];
    for (size_t i = 0; i < n; i++)
        ids[i] = json_string_value(json_array_get(f->users, i));
    for (size_t i = 0; i < n; i++)
        watch(srv, s, ids[i]);
    gw_presence_query(srv->presence, s->id, ids, (int)n, presence_answered);
}

static json_t *presence_json(bool online, int64_t last_seen)
{
    json_t *j = json_pack("{s:b}", "online", online);
    json_object_set_new(j, "last_seen", last_seen ? json_integer((json_int_t)last_seen) : json_null());
    return j;
}

/* A presence query's answer (gw_presence_answer *, freed here), from the bus. */
static void presence_answered(gw_server *srv, void *data)
{
    gw_presence_answer *a = data;
    gw_session *s = gw_session_find(srv, a->session);
    if (s) {
        gw_budget_presence_done(s->budget);
        json_t *users = json_object();
        for (int i = 0; i < a->n; i++)
            json_object_set_new(users, a->states[i].user, presence_json(a->states[i].online, a->states[i].last_seen_ms));
        gw_session_send_json(srv, s, json_pack("{s:s, s:o}", "type", "presence", "users", users));
    }
    free(a);
}

void gw_session_on_presence_change(gw_server *srv, natsMsg *msg)
{
    Chat__V1__Presence *p = chat__v1__presence__unpack(NULL, (size_t)natsMsg_GetDataLength(msg),
                                                       (const uint8_t *)natsMsg_GetData(msg));
    if (p == NULL)
        return;
    gw_watch *w = chat_map_get(srv->watched, p->user);
    if (w) {
        json_t *users = json_object();
        json_object_set_new(users, p->user, presence_json(p->online, p->last_seen_ms));
        gw_frame *f = frame_from_json(json_pack("{s:s, s:o}", "type", "presence", "users", users), 0);
        for (int i = 0; i < w->n; i++) {
            gw_session *s = gw_session_find(srv, w->sessions[i]);
            if (s)
                enqueue(srv, s, f);
        }
        frame_release(f);
    }
    chat__v1__presence__free_unpacked(p, NULL);
}

static void handle_frame(gw_server *srv, gw_session *s, const char *data, size_t len)
{
    atomic_fetch_add(srv->m.frames_in, 1);
    /* the token before the parse: a frame over the rate costs no JSON parse, so its answer cannot
     * name its cmid (docs/protocol.md: rate_limited without ref) */
    if (!gw_bucket_take(&s->frame_tokens, &s->frame_refill_ms, srv->cfg->ws_rate, chat_mono_ns() / 1000000)) {
        gw_session_send_error(srv, s, NULL, "rate_limited", "too many frames on this connection; slow down");
        return;
    }
    if (lws_frame_is_binary(s->wsi)) { /* binary frames cost their token too */
        gw_session_send_error(srv, s, NULL, "bad_request", "frames are JSON text, not binary");
        return;
    }
    gw_inframe f;
    gw_frame_error err;
    bool ok = gw_frame_parse(data, len, &f, &err);
    if (!ok) {
        json_t *e = json_pack("{s:s, s:s, s:s}", "type", "error", "code", err.code, "message", err.message);
        if (err.ref)
            json_object_set_new(e, "ref", json_string(err.ref));
        else if (err.ref_json)
            json_object_set(e, "ref", err.ref_json);
        atomic_fetch_add(strcmp(err.code, "too_large") == 0 ? srv->m.fail_too_large : srv->m.fail_bad_request, 1);
        gw_session_send_json(srv, s, e);
        gw_inframe_free(&f);
        return;
    }
    switch (f.type) {
    case GW_IN_SEND:
    case GW_IN_EDIT:
    case GW_IN_DELETE:
    case GW_IN_REACT:
        handle_post(srv, s, &f);
        break;
    case GW_IN_SYNC:
        gw_sync_handle(srv, s, &f);
        break;
    case GW_IN_HISTORY:
        gw_history_handle(srv, s, &f);
        break;
    case GW_IN_CONVERSATIONS:
        gw_conversations_handle(srv, s);
        break;
    case GW_IN_SEEN:
    case GW_IN_READ:
        handle_cursor(srv, s, &f);
        break;
    case GW_IN_TYPING:
        handle_typing(srv, s, &f);
        break;
    case GW_IN_PRESENCE:
        handle_presence(srv, s, &f);
        break;
    case GW_IN_PING:
        gw_session_send_json(srv, s, json_pack("{s:s}", "type", "pong"));
        break;
    }
    gw_inframe_free(&f);
}

static void rx_free(gw_session *s)
{
    if (s->rx) {
        chat_buf_free(&s->rx->buf);
        free(s->rx);
        s->rx = NULL;
    }
}

int gw_session_receive(gw_server *srv, gw_session *s, const void *in, size_t len)
{
    if (!s->established)
        return -1;
    s->last_rx_ms = chat_mono_ns() / 1000000;
    bool complete = lws_is_final_fragment(s->wsi) && lws_remaining_packet_payload(s->wsi) == 0;
    size_t have = s->rx ? s->rx->buf.len : 0;
    if (have + len > GW_FRAME_MAX) {
        lws_close_reason(s->wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)"frame too large", 15);
        atomic_fetch_add(srv->m.disc_too_large, 1);
        return -1;
    }
    if (complete && have == 0) { /* the common case: one whole frame, no copy */
        handle_frame(srv, s, in, len);
        return 0;
    }
    if (s->rx == NULL) {
        if ((s->rx = calloc(1, sizeof *s->rx)) == NULL)
            abort();
        s->rx->started_ms = chat_mono_ns() / 1000000;
        /* lws hands a frame over in RX_BUFFER_SIZE pieces: room for the whole of it at once */
        size_t rest = lws_remaining_packet_payload(s->wsi);
        chat_buf_reserve(&s->rx->buf, len + (rest < GW_FRAME_MAX ? rest : GW_FRAME_MAX));
    }
    chat_buf_append(&s->rx->buf, in, len);
    if (!complete)
        return 0;
    handle_frame(srv, s, s->rx->buf.data, s->rx->buf.len);
    rx_free(s); /* do not keep up to 64 KiB per idle connection */
    return 0;
}

int gw_session_writeable(gw_server *srv, gw_session *s)
{
    if (s->close_code) {
        const char *why = s->close_code == GW_CLOSE_SLOW_CONSUMER              ? "slow consumer"
                          : s->close_code == LWS_CLOSE_STATUS_GOINGAWAY        ? "server going away"
                          : s->close_code == GW_CLOSE_SERVICE_RESTART          ? "service restart: sync"
                          : s->close_code == LWS_CLOSE_STATUS_POLICY_VIOLATION ? "incomplete frame"
                          : s->close_code == GW_CLOSE_TOKEN_REVOKED            ? "token revoked"
                                                                               : "try again";
        s->close_written = true;
        lws_close_reason(s->wsi, (enum lws_close_status)s->close_code, (unsigned char *)why, strlen(why));
        return -1;
    }
    if (s->want_ping) {
        /* with a payload: lws hands an empty pong to no callback, and the pong is what we wait for */
        unsigned char ping[LWS_PRE + 4] = {[LWS_PRE] = 'c', 'h', 'a', 't'};
        s->want_ping = false;
        s->ping_sent_ms = chat_mono_ns() / 1000000;
        if (lws_write(s->wsi, ping + LWS_PRE, 4, LWS_WRITE_PING) < 4)
            return -1;
    }
    /* several frames per WRITEABLE while the socket takes them: a busy connection (a flood's
     * answers, a sync page) drains at the socket's pace, not one frame per loop turn */
    for (int written = 0; s->qhead && written < 64; written++) {
        if (written > 0 && lws_send_pipe_choked(s->wsi))
            break;
        gw_qnode *n = s->qhead;
        s->qhead = n->next;
        if (s->qhead == NULL)
            s->qtail = NULL;
        gw_frame *f = n->frame;
        s->qbytes -= f->len;
        if (s->qbytes <= (size_t)srv->cfg->ws_queue_max)
            s->over_since_ms = 0;
        free(n);
        int w = lws_write(s->wsi, f->data + LWS_PRE, f->len, LWS_WRITE_TEXT);
        if (f->event_ts_ms)
            chat_histogram_observe_us(srv->m.delivery, (chat_now_ms() - f->event_ts_ms) * 1000);
        bool ok = w >= (int)f->len;
        frame_release(f);
        if (!ok)
            return -1;
        atomic_fetch_add(srv->m.frames_out, 1);
    }
    if (s->sync_next)
        gw_sync_resume(srv, s);
    if (s->qhead)
        lws_callback_on_writable(s->wsi);
    return 0;
}

static void sweep_one(gw_server *srv, gw_session *s, void *ctx)
{
    (void)ctx;
    int64_t now = chat_mono_ns() / 1000000;
    if (s->close_code) {
        if (now - s->closing_ms >= GW_CLOSE_WAIT_MS - 100) /* the sweep's second, give or take a tick */
            hang_up(s);
        return;
    }
    if (s->over_since_ms && now - s->over_since_ms > srv->cfg->ws_slow_grace_ms)
        close_slow(srv, s); /* a client that reads nothing gets no more enqueues to notice it */
    else if (s->rx && now - s->rx->started_ms > GW_FRAGMENT_TIMEOUT_MS) {
        LOG_WARN("gateway", "event=incomplete_frame session=%s-%" PRIu64 " user=%s bytes=%zu", srv->gateway_id, s->id, gw_session_user(s), s->rx->buf.len);
        atomic_fetch_add(srv->m.disc_too_large, 1);
        close_now(s, LWS_CLOSE_STATUS_POLICY_VIOLATION);
    } else if (s->established && now - s->last_rx_ms >= 2 * srv->cfg->ws_ping_ms) {
        /* silent for twice CHAT_WS_PING, the ping unanswered: gone without a word, so hung up
         * without one (counted with the client's disconnects, in gw_session_closed) */
        LOG_INFO("gateway", "event=idle_hangup session=%s-%" PRIu64 " user=%s idle_ms=%lld", srv->gateway_id, s->id, gw_session_user(s),
                 (long long)(now - s->last_rx_ms));
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    } else if (s->established && now - s->last_rx_ms >= srv->cfg->ws_ping_ms && s->ping_sent_ms <= s->last_rx_ms &&
               !s->want_ping) {
        s->want_ping = true;
        lws_callback_on_writable(s->wsi);
    }
}

/* The idle ping is the gateway's, from this once-a-second sweep, not libwebsockets' (its retry
 * policy keeps one timer per connection in one sorted list and re-inserts it at every ping and
 * pong, a walk of the whole list: with 10,000 connections, connected within seconds and so pinged
 * within seconds of each other every CHAT_WS_PING, that walk took 0.7 of a core for 10 s of
 * every 30, docs/benchmarks.md). */
void gw_session_pong(gw_session *s)
{
    s->last_rx_ms = chat_mono_ns() / 1000000;
}

void gw_session_sweep(gw_server *srv)
{
    each_session(srv, sweep_one, NULL);
}

static void close_with(gw_server *srv, gw_session *s, void *ctx)
{
    (void)srv;
    close_now(s, *(const int *)ctx);
}

void gw_session_close_all(gw_server *srv)
{
    int code = LWS_CLOSE_STATUS_GOINGAWAY;
    each_session(srv, close_with, &code);
}

void gw_session_restart_all(gw_server *srv, uint64_t reconnects)
{
    int code = GW_CLOSE_SERVICE_RESTART;
    each_session(srv, close_with, &code);
    LOG_WARN("gateway", "event=nats_reconnect_resync reconnects=%" PRIu64 " sessions_closed=%zu close_code=%d",
             reconnects, srv->nsessions, GW_CLOSE_SERVICE_RESTART);
}

void gw_session_closed(gw_server *srv, gw_session *s)
{
    if (s->close_code && !s->close_written)
        reset_on_close(s); /* lws's timer (close_now) hangs it up: no close frame got out */
    rx_free(s);
    queue_free(s);
    free(s->sync_next);
    s->sync_next = NULL;
    gw_budget_free(&s->budget);
    if (!s->established)
        return;
    unwatch_all(srv, s);
    s->established = false;
    LOG_DEBUG("gateway", "event=disconnected session=%s-%" PRIu64 " user=%s", srv->gateway_id, s->id, gw_session_user(s));
    gw_user *u = s->u;
    s->u = NULL;
    if (u) {
        if (s->prev_of_user)
            s->prev_of_user->next_of_user = s->next_of_user;
        else
            u->sessions = s->next_of_user;
        if (s->next_of_user)
            s->next_of_user->prev_of_user = s->prev_of_user;
        if (--u->count == 0) {
            gw_presence_offline(srv->presence, u->id);
            chat_map_remove(srv->users, u->id);
            gw_bus_unsubscribe_user(u->sub);
            free(u);
        }
    }
    slot_give_back(srv, s);
    if (s->peer && --s->peer->count == 0) {
        chat_map_remove(srv->per_ip, s->peer->addr);
        free(s->peer);
    }
    s->peer = NULL;
    if (s->close_code != GW_CLOSE_SLOW_CONSUMER)
        atomic_fetch_add(atomic_load(&srv->stopping) ? srv->m.disc_shutdown : srv->m.disc_client, 1);
    atomic_store(srv->m.connections, (int_fast64_t)srv->nsessions);
    atomic_store(srv->m.users, (int_fast64_t)chat_map_size(srv->users));
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

void gw_session_free_caches(gw_server *srv)
{
    chat_map_each(srv->checking, free_waiting_entry, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Revocations (gw_revoke.c)                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct revocation {
    int64_t not_before; /* a user's: tokens issued before it (or without iat) */
    uint64_t jti_id;    /* or one token's: its jti hash */
    size_t closed;
} revocation;

static void close_if_revoked(gw_server *srv, gw_session *s, void *ctx)
{
    (void)srv;
    revocation *r = ctx;
    bool hit = r->jti_id ? s->token_jti == r->jti_id : chat_revoke_user_refuses(r->not_before, s->token_iat);
    if (!s->established || s->close_code || !hit)
        return;
    close_now(s, GW_CLOSE_TOKEN_REVOKED); /* nothing more is queued for it; hung up if it never reads */
    r->closed++;
}

size_t gw_session_close_revoked(gw_server *srv, const char *user, int64_t not_before, uint64_t jti_id)
{
    revocation r = {.not_before = not_before, .jti_id = user ? 0 : jti_id};
    if (user == NULL) {
        each_session(srv, close_if_revoked, &r);
        return r.closed;
    }
    gw_user *u = chat_map_get(srv->users, user);
    for (gw_session *s = u ? u->sessions : NULL; s; s = s->next_of_user)
        close_if_revoked(srv, s, &r);
    return r.closed;
}
