/* The client connection: lws events, frames received (whole frames go to the router given at
 * creation, gw_session_handlers), the outbound queue and WRITEABLE, the sweep, the slot table.
 * lws thread only. */
#include "gw_session.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <jansson.h>

#include "chat_frames.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_revoke.h"
#include "chat_time.h"
#include "gw_presence.h"

static void queue_free(gw_session *s)
{
    for (gw_qnode *n = s->qhead, *next; n; n = next) {
        next = n->next;
        gw_outframe_release(n->frame);
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
    s->closing_ms = chat_mono_ms();
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
static void enqueue_frame(gw_server *srv, gw_session *s, gw_outframe *f, bool paced)
{
    if (s->close_code)
        return;
    size_t max = (size_t)srv->cfg->ws_queue_max;
    if (s->qbytes + f->len > max) {
        int64_t now = chat_mono_ms();
        if (s->over_since_ms == 0)
            s->over_since_ms = now;
        if (now - s->over_since_ms > srv->cfg->ws_slow_grace_ms || (!paced && s->qbytes + f->len > 2 * max)) {
            close_slow(srv, s);
            return;
        }
    }
    gw_qnode *n = malloc(sizeof *n);
    if (n == NULL)
        CHAT_OOM();
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

void gw_session_enqueue(gw_server *srv, gw_session *s, gw_outframe *f)
{
    enqueue_frame(srv, s, f, false);
}

void gw_session_send_json(gw_server *srv, gw_session *s, json_t *frame)
{
    gw_outframe *f = gw_outframe_from_json(frame, 0);
    gw_session_enqueue(srv, s, f);
    gw_outframe_release(f);
}

void gw_session_count_error(gw_server *srv, const char *code)
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
    gw_session_count_error(srv, code);
    LOG_DEBUG("gateway", "event=send_error session=%s-%" PRIu64 " ref=%s code=%s", srv->gateway_id, s->id, ref ? ref : "", code);
    gw_session_send_json(srv, s, f);
}

void gw_session_send_event(gw_server *srv, gw_session *s, const Chat__V1__Event *e)
{
    gw_outframe *f = gw_outframe_from_json(chat_event_json(e), 0);
    enqueue_frame(srv, s, f, true);
    gw_outframe_release(f);
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
            CHAT_OOM();
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

uint64_t gw_session_number(const gw_server *srv, const char *name)
{
    size_t n = strlen(srv->gateway_id);
    if (name == NULL || strncmp(name, srv->gateway_id, n) != 0 || name[n] != '-')
        return 0;
    char *end;
    unsigned long long v = strtoull(name + n + 1, &end, 10);
    return *end == '\0' ? (uint64_t)v : 0;
}

/* The session that asked for a membership lookup got its answer (or its timeout). */
void gw_session_lookup_done(gw_server *srv, uint64_t session)
{
    gw_session *s = gw_session_find(srv, session);
    if (s)
        gw_budget_lookup_done(s->budget);
}

/* ------------------------------------------------------------------------------------------ */
/* lws events                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* The user's entry shows the token of its sessions that lives longest (its route claims). */
static void pick_token(gw_user *u)
{
    const gw_session *best = NULL;
    for (const gw_session *s = u->sessions; s; s = s->next_of_user)
        if (s->token && (best == NULL || s->token_exp > best->token_exp))
            best = s;
    u->token = best ? best->token : NULL;
}

void gw_session_established(gw_server *srv, gw_session *s, struct lws *wsi, const char *user)
{
    s->wsi = wsi;
    s->last_rx_ms = chat_mono_ms();
    gw_user *u = chat_map_get(srv->users, user);
    if (u == NULL) {
        size_t len = strlen(user);
        u = calloc(1, sizeof *u + len + 1);
        if (u == NULL)
            CHAT_OOM();
        memcpy(u->id, user, len + 1);
        chat_map_put(srv->users, u->id, u, NULL);
        atomic_store(srv->m.users, (int_fast64_t)chat_map_size(srv->users));
        u->route_gen = ++srv->route_gens;
        gw_presence_online(srv->presence, u->id, u->route_gen, s->token);
    }
    s->next_of_user = u->sessions;
    if (u->sessions)
        u->sessions->prev_of_user = s;
    u->sessions = s;
    u->count++;
    s->u = u;
    pick_token(u);
    s->established = true;
    slot_take(srv, s);
    char addr[64];
    if (lws_get_peer_simple(wsi, addr, sizeof addr) && addr[0])
        s->peer = gw_peer_join(srv->peers, addr);
    atomic_fetch_add(srv->m.connects, 1);
    atomic_store(srv->m.connections, (int_fast64_t)srv->nsessions);
    LOG_DEBUG("gateway", "event=connected session=%s-%" PRIu64 " user=%s", srv->gateway_id, s->id, gw_session_user(s));
    char name[GW_SESSION_NAME_MAX];
    json_t *hello = json_pack("{s:s, s:s, s:s, s:I}", "type", "hello", "user", gw_session_user(s), "session",
                              gw_session_name(srv, s, name),
                              "server_time", (json_int_t)chat_now_ms());
    gw_session_send_json(srv, s, hello);
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
    s->last_rx_ms = chat_mono_ms();
    bool complete = lws_is_final_fragment(s->wsi) && lws_remaining_packet_payload(s->wsi) == 0;
    size_t have = s->rx ? s->rx->buf.len : 0;
    if (have + len > GW_FRAME_MAX) {
        lws_close_reason(s->wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)"frame too large", 15);
        atomic_fetch_add(srv->m.disc_too_large, 1);
        return -1;
    }
    if (complete && have == 0) { /* the common case: one whole frame, no copy */
        srv->session_on->on_frame(srv, s, in, len);
        return 0;
    }
    if (s->rx == NULL) {
        if ((s->rx = calloc(1, sizeof *s->rx)) == NULL)
            CHAT_OOM();
        s->rx->started_ms = chat_mono_ms();
        /* lws hands a frame over in RX_BUFFER_SIZE pieces: room for the whole of it at once */
        size_t rest = lws_remaining_packet_payload(s->wsi);
        chat_buf_reserve(&s->rx->buf, len + (rest < GW_FRAME_MAX ? rest : GW_FRAME_MAX));
    }
    chat_buf_append(&s->rx->buf, in, len);
    if (!complete)
        return 0;
    srv->session_on->on_frame(srv, s, s->rx->buf.data, s->rx->buf.len);
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
                          : s->close_code == GW_CLOSE_TOKEN_EXPIRED            ? "token expired"
                                                                               : "try again";
        s->close_written = true;
        lws_close_reason(s->wsi, (enum lws_close_status)s->close_code, (unsigned char *)why, strlen(why));
        return -1;
    }
    if (s->want_ping) {
        /* with a payload: lws hands an empty pong to no callback, and the pong is what we wait for */
        unsigned char ping[LWS_PRE + 4] = {[LWS_PRE] = 'c', 'h', 'a', 't'};
        s->want_ping = false;
        s->ping_sent_ms = chat_mono_ms();
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
        gw_outframe *f = n->frame;
        s->qbytes -= f->len;
        if (s->qbytes <= (size_t)srv->cfg->ws_queue_max)
            s->over_since_ms = 0;
        free(n);
        int w = lws_write(s->wsi, f->data + LWS_PRE, f->len, LWS_WRITE_TEXT);
        if (f->event_ts_ms)
            chat_histogram_observe_us(srv->m.delivery, (chat_now_ms() - f->event_ts_ms) * 1000);
        bool ok = w >= (int)f->len;
        gw_outframe_release(f);
        if (!ok)
            return -1;
        atomic_fetch_add(srv->m.frames_out, 1);
    }
    if (s->sync_next)
        srv->session_on->on_drained(srv, s);
    if (s->qhead)
        lws_callback_on_writable(s->wsi);
    return 0;
}

static void sweep_one(gw_server *srv, gw_session *s, void *ctx)
{
    int64_t now = chat_mono_ms(), now_s = *(const int64_t *)ctx;
    if (s->close_code) {
        if (now - s->closing_ms >= GW_CLOSE_WAIT_MS - 100) /* the sweep's second, give or take a tick */
            hang_up(s);
        return;
    }
    if (s->established && s->token_exp && now_s >= (int64_t)s->token_exp) {
        /* a session lives as long as its token, unless an auth frame brought a newer one */
        LOG_INFO("gateway", "event=token_expired session=%s-%" PRIu64 " user=%s", srv->gateway_id, s->id,
                 gw_session_user(s));
        atomic_fetch_add(srv->m.disc_expired, 1);
        close_now(s, GW_CLOSE_TOKEN_EXPIRED);
    } else if (s->over_since_ms && now - s->over_since_ms > srv->cfg->ws_slow_grace_ms)
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
    s->last_rx_ms = chat_mono_ms();
}

void gw_session_sweep(gw_server *srv)
{
    int64_t now_s = chat_now_ms() / 1000;
    each_session(srv, sweep_one, &now_s);
}

void gw_session_set_token(gw_session *s, const chat_jwt_claims *claims, const char *token)
{
    s->token_iat = (uint32_t)claims->iat;
    s->token_jti = claims->jti[0] ? chat_revoke_jti_id(claims->jti) : 0;
    s->token_exp = (uint32_t)claims->exp;
    free(s->token);
    s->token = chat_xstrdup(token);
    if (s->u)
        pick_token(s->u);
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

void gw_session_routes_lost(gw_server *srv, void *unused)
{
    (void)unused;
    int code = GW_CLOSE_SERVICE_RESTART;
    each_session(srv, close_with, &code);
    LOG_WARN("gateway", "event=routes_lost_resync sessions_closed=%zu close_code=%d", srv->nsessions,
             GW_CLOSE_SERVICE_RESTART);
}

typedef struct epoch_close {
    uint32_t cutoff;
    int closed;
} epoch_close;

/* Closes the sessions of a user claimed up to the cutoff (a chat_map_each callback). */
static void close_claimed_before(const char *user, void *value, void *ctx)
{
    (void)user;
    gw_user *u = value;
    epoch_close *e = ctx;
    if (u->route_gen > e->cutoff)
        return;
    for (gw_session *s = u->sessions; s; s = s->next_of_user, e->closed++)
        close_now(s, GW_CLOSE_SERVICE_RESTART);
}

void gw_session_routes_epoch(gw_server *srv, void *data)
{
    epoch_close e = {.cutoff = *(uint32_t *)data};
    free(data);
    chat_map_each(srv->users, close_claimed_before, &e);
    LOG_WARN("gateway", "event=routes_epoch_resync sessions_closed=%d close_code=%d", e.closed, GW_CLOSE_SERVICE_RESTART);
}

void gw_session_close_user(gw_server *srv, void *data)
{
    char *user = data;
    gw_user *u = chat_map_get(srv->users, user);
    int closed = 0;
    for (gw_session *s = u ? u->sessions : NULL; s; s = s->next_of_user, closed++)
        close_now(s, GW_CLOSE_SERVICE_RESTART);
    if (closed)
        LOG_INFO("gateway", "event=route_unwritten_resync user=%s closed=%d code=%d", user, closed,
                 GW_CLOSE_SERVICE_RESTART);
    free(user);
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
    if (!s->established) {
        free(s->token);
        s->token = NULL;
        return;
    }
    srv->session_on->on_closing(srv, s);
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
            free(u);
        } else {
            pick_token(u); /* s is out of the list: its token is no longer the user's */
        }
    }
    free(s->token);
    s->token = NULL;
    slot_give_back(srv, s);
    gw_peer_leave(srv->peers, s->peer);
    s->peer = NULL;
    if (s->close_code != GW_CLOSE_SLOW_CONSUMER)
        atomic_fetch_add(atomic_load(&srv->stopping) ? srv->m.disc_shutdown : srv->m.disc_client, 1);
    atomic_store(srv->m.connections, (int_fast64_t)srv->nsessions);
    atomic_store(srv->m.users, (int_fast64_t)chat_map_size(srv->users));
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

