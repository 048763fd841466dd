/* The gateway's lws protocol callback: HTTP routes, the upgrade check (token, Origin), and the
 * WebSocket events handed to gw_session; the service loop (libev on epoll, through lws's evlib
 * plugin). Runs only on the lws service thread. */
#include "gw_server.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ev.h>

#include "chat.pb-c.h"
#include "chat_nats.h"

#include <jansson.h>

#include "chat_egress.h"
#include "chat_http.h"
#include "chat_jwt.h"
#include "chat_log.h"
#include "chat_mem.h"
#include "chat_revoke.h"
#include "chat_time.h"
#include "gw_admit.h"
#include "gw_bus.h"
#include "gw_cursor.h"
#include "gw_delivery.h"
#include "gw_membership.h"
#include "gw_peer.h"
#include "gw_strikes.h"
#include "gw_presence.h"
#include "gw_revoke.h"
#include "gw_route.h"
#include "gw_send.h"
#include "gw_session.h"
#include "gw_sync.h"
#include "gw_watch.h"

#define TICK_US (100 * LWS_US_PER_MS)

/* lws gives every WebSocket connection a receive buffer of this size (plus LWS_PRE) at the
 * upgrade and keeps it for the connection's life. A larger frame is still taken (up to
 * GW_FRAME_MAX): lws hands it over in pieces and gw_session_receive joins them. 64 KiB (the frame
 * limit) cost about 4 KiB of RSS per idle connection (the pages the allocator touches around each
 * buffer), 1 KiB about 1 KiB (docs/benchmarks.md). 128 bytes (the most a control frame carries, 125)
 * take a typical send in two pieces, joined into one allocation sized from the frame's header. */
#define RX_BUFFER_SIZE 128
/* What lws hands to one send(2): frames up to the frame limit in one call, as before. */
#define TX_PACKET_SIZE GW_FRAME_MAX
/* lws sets SO_SNDBUF to the receive buffer's size at the upgrade (a fixed size: the kernel's
 * autotuning is off from then on); the gateway keeps the send buffer of a 64 KiB receive buffer,
 * so that a burst of frames (a sync page) goes to the kernel, not to lws's own copies. */
#define SNDBUF_SIZE (GW_FRAME_MAX + LWS_PRE)

/* The token a user's route claims show the worker (gw_presence_beat). */
static const char *user_token(const void *entry)
{
    return ((const gw_user *)entry)->token;
}

/* Every 100 ms on the lws thread: requests past their deadline. */
static void tick(lws_sorted_usec_list_t *sul)
{
    gw_server *srv = lws_container_of(sul, gw_server, tick_sul);
    gw_bus_tick(srv);
    gw_admit_tick(srv->admit, chat_mono_ms());
    if (++srv->ticks % 2 == 0)
        gw_cursor_flush(srv); /* every 200 ms */
    if (srv->ticks % 10 == 0)
        gw_session_sweep(srv); /* every second */
    if (srv->ticks % 100 == 0) {
        gw_membership_trim(srv->membership, chat_mono_ms()); /* every 10 s */
        gw_strikes_sweep(srv->strikes, chat_mono_ms());
        gw_revoke_trim(srv->revoke);
    }
    if (srv->ticks % (GW_PRESENCE_HEARTBEAT_MS / 100) == 50)
        gw_presence_beat(srv->presence, srv->users, user_token);
    lws_sul_schedule(srv->context, 0, &srv->tick_sul, tick, TICK_US);
}

/* The token: ?token=... or Authorization: Bearer ... */
static bool get_token(struct lws *wsi, char *buf, int size)
{
    /* lws copies "token=<value>" into buf and returns a pointer to the value */
    const char *v = lws_get_urlarg_by_name(wsi, "token=", buf, size);
    if (v && v[0]) {
        memmove(buf, v, strlen(v) + 1);
        return true;
    }
    char auth[CHAT_JWT_MAX_LEN + 64];
    if (lws_hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION) > 0 &&
        strncasecmp(auth, "Bearer ", 7) == 0) {
        size_t n = strlen(auth + 7);
        if (n >= (size_t)size)
            return false; /* longer than any token we accept */
        memcpy(buf, auth + 7, n + 1);
        return true;
    }
    return false;
}

/* A refused upgrade, written whole as HTTP/1.1 with its length and Connection: close.
 * lws_return_http_status would answer "HTTP/1.0" here (lws reads the request's version only after
 * this callback), a status line Python's websockets 10 refuses to parse: such a client could not
 * tell an expired token (refresh it) from a broken server (back off). */
static int refuse_http(struct lws *wsi, unsigned status, const char *why)
{
    static const struct {
        unsigned status;
        const char *text;
    } texts[] = {{401, "Unauthorized"}, {403, "Forbidden"}, {404, "Not Found"}, {429, "Too Many Requests"},
                 {503, "Service Unavailable"}};
    const char *text = "Error";
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (texts[i].status == status)
            text = texts[i].text;
    unsigned char buf[LWS_PRE + 768];
    char *head = (char *)buf + LWS_PRE;
    int n = snprintf(head, sizeof buf - LWS_PRE,
                     "HTTP/1.1 %u %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\nCache-Control: no-store\r\n%s\r\n%s\n",
                     status, text, strlen(why) + 1,
                     status == 401 ? "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n" : "", why);
    if (n < 0 || (size_t)n >= sizeof buf - LWS_PRE || lws_write(wsi, (unsigned char *)head, (size_t)n, LWS_WRITE_HTTP_HEADERS) != n)
        return -1; /* hang up */
    return 1; /* we answered; lws completes the transaction (and closes: no keep-alive here) */
}

static int refuse(struct lws *wsi, gw_server *srv, unsigned status, const char *why)
{
    LOG_INFO("gateway", "event=upgrade_refused status=%u reason=\"%s\"", status, why);
    atomic_fetch_add(status == 401 ? srv->m.refused_auth : status == 429 ? srv->m.refused_limit : srv->m.refused_origin, 1);
    return refuse_http(wsi, status, why);
}

/* A refusal that counts against the client's address (a bad token, path or Origin): past
 * CHAT_WS_REFUSED_PER_IP of them the address is refused before its token is checked. */
static int strike(struct lws *wsi, gw_server *srv, const char *addr, unsigned status, const char *why)
{
    if (addr[0])
        gw_strikes_add(srv->strikes, addr, chat_mono_ms());
    return refuse(wsi, srv, status, why);
}

/* Before the upgrade (no per-session memory yet): path, Origin and token, or an HTTP refusal. */
static int confirm_upgrade(gw_server *srv, struct lws *wsi)
{
    if (atomic_load(&srv->stopping)) {
        atomic_fetch_add(srv->m.refused_stopping, 1);
        return refuse_http(wsi, 503, "server going away");
    }
    char addr[64] = "";
    if (!lws_get_peer_simple(wsi, addr, sizeof addr))
        addr[0] = '\0';
    /* the same answer whatever the token: an address that used up its refusals learns nothing */
    if (addr[0] && gw_strikes_exhausted(srv->strikes, addr, chat_mono_ms()))
        return refuse(wsi, srv, 429, "too many refused upgrades from this address: try again in a few seconds");
    char uri[256];
    if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0 || strcmp(uri, "/ws") != 0)
        return strike(wsi, srv, addr, 404, "WebSocket endpoint is /ws");
    if (srv->cfg->allowed_origins[0]) {
        char origin[512] = "";
        lws_hdr_copy(wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN);
        if (!chat_origin_allowed(srv->cfg->allowed_origins, origin[0] ? origin : NULL))
            return strike(wsi, srv, addr, 403, "origin not allowed");
    }
    char token[CHAT_JWT_MAX_LEN + 2] = "";
    if (!get_token(wsi, token, sizeof token))
        return strike(wsi, srv, addr, 401, "missing token");
    const char *why = NULL;
    chat_jwt_claims claims;
    if (chat_jwt_verify(srv->cfg->jwt, token, chat_now_ms() / 1000, &claims, &why) != CHAT_OK)
        return strike(wsi, srv, addr, 401, why);
    gw_revoke_verdict revoked = gw_revoke_check(srv->revoke, &claims);
    if (revoked == GW_REVOKE_REFUSED)
        return strike(wsi, srv, addr, 401, "token revoked");
    if (revoked == GW_REVOKE_LOADING) {
        /* a gateway that does not yet know every revocation lets no token in (it is not ready) */
        atomic_fetch_add(srv->m.refused_loading, 1);
        return refuse_http(wsi, 503, "revocation list not loaded yet: try again");
    }
    gw_user *u = chat_map_get(srv->users, claims.user);
    if (srv->cfg->ws_max_per_user && u && u->count >= srv->cfg->ws_max_per_user)
        return refuse(wsi, srv, 429, "too many connections for this user");
    if (srv->cfg->ws_max_per_ip && addr[0] && gw_peer_count(srv->peers, addr) >= srv->cfg->ws_max_per_ip)
        return refuse(wsi, srv, 429, "too many connections from this address");
    return 0;
}

/* At ESTABLISHED the request headers are still there: take the user from the token again (a
 * second signature check: 4 us for HS256, 65 us for RS256 with a 3072-bit key, 135 us for EdDSA
 * on the 2-core test machine; simpler than carrying state across the upgrade), and look at the
 * revocations again (one may have come since CONFIRM_UPGRADE, before there was a session to close). */
static bool session_claims(gw_server *srv, struct lws *wsi, chat_jwt_claims *claims, char *token, int size)
{
    return get_token(wsi, token, size) &&
           chat_jwt_verify(srv->cfg->jwt, token, chat_now_ms() / 1000, claims, NULL) == CHAT_OK &&
           gw_revoke_check(srv->revoke, claims) == GW_REVOKE_PASS;
}

/* GET /dev/token?user=U (CHAT_DEV_MODE=1 only): a token for the demo page, valid a day or
 * CHAT_JWT_MAX_TTL if shorter, signed as chatctl token signs (CHAT_JWT_SIGNING_KEY). */
static void dev_token(gw_server *srv, struct lws *wsi, chat_http_reply *r)
{
    char arg[CHAT_ID_MAX + 16] = "";
    const char *user = lws_get_urlarg_by_name(wsi, "user=", arg, sizeof arg);
    if (user == NULL || !chat_id_valid(user)) {
        const char *msg = "{\"error\":\"user must be 1-64 characters of [A-Za-z0-9_-]\"}";
        chat_http_reply_set(r, 400, "application/json", msg, strlen(msg));
        return;
    }
    char *token = NULL;
    int64_t ttl = chat_jwt_policy_max_ttl(srv->cfg->jwt) < 86400 ? chat_jwt_policy_max_ttl(srv->cfg->jwt) : 86400;
    if (chat_jwt_issue(srv->cfg->jwt, user, chat_now_ms() / 1000, ttl, &token) != CHAT_OK) {
        chat_http_reply_set(r, 500, "application/json", "{\"error\":\"cannot sign\"}", 23);
        return;
    }
    json_t *j = json_pack("{s:s, s:s}", "user", user, "token", token);
    char *text = json_dumps(j, JSON_COMPACT);
    chat_http_reply_set(r, 200, "application/json", text, strlen(text));
    free(text);
    json_decref(j);
    free(token);
}

/* ---- static files of the demo app ---- */

static const char *mime_of(const char *path)
{
    const char *dot = strrchr(path, '.');
    static const struct {
        const char *ext, *mime;
    } types[] = {{".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
                 {".mjs", "text/javascript; charset=utf-8"}, {".css", "text/css; charset=utf-8"},
                 {".json", "application/json"}, {".svg", "image/svg+xml"}, {".png", "image/png"},
                 {".ico", "image/x-icon"}, {".ts", "text/plain; charset=utf-8"}, {".md", "text/plain; charset=utf-8"}};
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcmp(dot, types[i].ext) == 0)
            return types[i].mime;
    return "application/octet-stream";
}

/* Maps a URL path to a file under the web directory: only [A-Za-z0-9._/-], no "..", no hidden
 * files. Returns false when the path is not a servable file. */
static bool static_path(gw_server *srv, const char *path, char *file, size_t size)
{
    if (srv->web_dir[0] == '\0' || path[0] != '/' || strstr(path, "..") || strstr(path, "/."))
        return false;
    for (const char *p = path; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-' && *p != '/')
            return false;
    int n = snprintf(file, size, "%s%s%s", srv->web_dir, path, path[strlen(path) - 1] == '/' ? "index.html" : "");
    struct stat st;
    return n > 0 && (size_t)n < size && stat(file, &st) == 0 && S_ISREG(st.st_mode);
}

/* GET /dev/conv?conv=C&members=a,b (CHAT_DEV_MODE=1 only): creates a conversation for the demo
 * page. A blocking request on the loop, acceptable for a development endpoint only. */
static void dev_conv(gw_server *srv, struct lws *wsi, chat_http_reply *r)
{
    char a1[CHAT_ID_MAX + 16] = "", a2[2048] = "";
    const char *conv = lws_get_urlarg_by_name(wsi, "conv=", a1, sizeof a1);
    const char *members = lws_get_urlarg_by_name(wsi, "members=", a2, sizeof a2);
    char *list[64];
    size_t n = 0;
    char *copy = members ? strdup(members) : NULL, *save = NULL;
    bool ok = chat_id_valid(conv) && copy != NULL;
    for (char *u = copy ? strtok_r(copy, ",", &save) : NULL; ok && u; u = strtok_r(NULL, ",", &save)) {
        ok = chat_id_valid(u) && n < 64;
        if (ok)
            list[n++] = u;
    }
    if (!ok || n == 0) {
        free(copy);
        const char *msg = "{\"error\":\"conv and members (comma separated ids, at most 64) are required\"}";
        chat_http_reply_set(r, 400, "application/json", msg, strlen(msg));
        return;
    }
    Chat__V1__ConvCreateRequest rq = CHAT__V1__CONV_CREATE_REQUEST__INIT;
    rq.conv = (char *)conv;
    rq.members = list;
    rq.n_members = n;
    rq.owner = list[0];
    uint8_t buf[4096];
    size_t len = chat__v1__conv_create_request__pack(&rq, buf);
    natsMsg *reply = NULL;
    natsStatus s = natsConnection_Request(&reply, srv->nc, CHAT_API_PREFIX "conv.create", buf, (int)len, 3000);
    Chat__V1__ConvCreateReply *cr = NULL;
    if (s == NATS_OK && natsMsg_GetDataLength(reply) > 0)
        cr = chat__v1__conv_create_reply__unpack(NULL, (size_t)natsMsg_GetDataLength(reply),
                                                 (const uint8_t *)natsMsg_GetData(reply));
    natsMsg_Destroy(reply);
    free(copy);
    json_t *j;
    int status = 200;
    if (cr && (cr->status == NULL || cr->status->code[0] == '\0')) {
        j = json_pack("{s:s, s:b}", "conv", conv, "created", cr->created);
    } else {
        status = cr ? 400 : 503;
        j = json_pack("{s:s}", "error", cr && cr->status ? cr->status->message : "the api role does not answer");
    }
    if (cr)
        chat__v1__conv_create_reply__free_unpacked(cr, NULL);
    char *text = json_dumps(j, JSON_COMPACT);
    chat_http_reply_set(r, status, "application/json", text, strlen(text));
    free(text);
    json_decref(j);
}

/* ---- who may reach the operators' and the developers' endpoints ---- */

/* Whether a proxy passed the request on (Forwarded, X-Forwarded-For, X-Real-IP): the balancer of
 * deploy/ sets X-Forwarded-For on every request, so such a request may come from anyone, and a
 * proxy on this host would make it look local. */
static bool forwarded(struct lws *wsi)
{
    return lws_hdr_total_length(wsi, WSI_TOKEN_X_FORWARDED_FOR) > 0 ||
           lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_X_REAL_IP) > 0 ||
           lws_hdr_custom_length(wsi, "forwarded:", 10) >= 0;
}

/* Whether the TCP peer is a loopback address (this machine). */
static bool loopback_peer(struct lws *wsi)
{
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    int fd = lws_get_socket_fd(wsi);
    return fd >= 0 && getpeername(fd, (struct sockaddr *)&peer, &len) == 0 &&
           chat_egress_classify((struct sockaddr *)&peer) == CHAT_EGRESS_LOOPBACK;
}

/* lws hands the callback a canonical path (%xx decoded, "//", "/./" and "/../" folded), so
 * "//metrics" and "/%6detrics" arrive here as "/metrics": the gateway cannot refuse those spellings
 * by text. It refuses by origin instead: /metrics only to requests no proxy passed on (Prometheus
 * scrapes gateways directly), /dev/ only to unforwarded loopback peers. The balancer also refuses
 * every non-canonical path (deploy/haproxy/haproxy.cfg). */
static bool operator_path_refused(struct lws *wsi, const char *path)
{
    if (strcmp(path, "/metrics") == 0)
        return forwarded(wsi);
    if (strncmp(path, "/dev/", 5) == 0)
        return forwarded(wsi) || !loopback_peer(wsi);
    return false;
}

/* /readyz: every dependency answers, the revocations have arrived, and the gateway is not stopping. */
static bool gw_ready(void *ctx, char *detail, size_t size)
{
    gw_server *srv = ctx;
    bool ok = chat_health_ready(srv->health, detail, size);
    if (!gw_revoke_loaded(srv->revoke)) {
        size_t n = strlen(detail);
        snprintf(detail + n, size - n, "revocations: not loaded\n");
        ok = false;
    }
    if (atomic_load(&srv->stopping)) {
        size_t n = strlen(detail);
        snprintf(detail + n, size - n, "gateway stopping\n");
        return false;
    }
    return ok;
}

/* The HTTP reply of a plain HTTP request (allocated at LWS_CALLBACK_HTTP). */
static void http_free(gw_session *s)
{
    chat_http_reply_free(s->http);
    free(s->http);
    s->http = NULL;
}

static int callback_chat(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    gw_session *s = user;
    gw_server *srv = lws_context_user(lws_get_context(wsi));
    /* A connection that closes before sending a request (a TCP health check, a port scan) has no
     * per-session memory: only the reasons that need none may go on. */
    if (s == NULL && reason != LWS_CALLBACK_EVENT_WAIT_CANCELLED && reason != LWS_CALLBACK_HTTP_CONFIRM_UPGRADE)
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    switch (reason) {
    case LWS_CALLBACK_HTTP: {
        const char *path = in;
        char file[1024];
        if (s->http == NULL && (s->http = calloc(1, sizeof *s->http)) == NULL)
            CHAT_OOM();
        if (operator_path_refused(wsi, path)) {
            LOG_INFO("gateway", "event=http_refused endpoint=%s reason=%s", path[1] == 'm' ? "metrics" : "dev",
                     forwarded(wsi) ? "forwarded" : "not_loopback");
            chat_http_reply_set(s->http, 404, "text/plain", "not found\n", 10); /* as for any unknown path */
        } else if (chat_http_health(path, srv->metrics, gw_ready, srv, s->http))
            ;
        else if (srv->cfg->dev_mode && strcmp(path, "/dev/token") == 0)
            dev_token(srv, wsi, s->http);
        else if (srv->cfg->dev_mode && strcmp(path, "/dev/conv") == 0)
            dev_conv(srv, wsi, s->http);
        else if (static_path(srv, path, file, sizeof file)) {
            int rc = lws_serve_http_file(wsi, file, mime_of(file), NULL, 0);
            if (rc < 0)
                return -1;
            return rc > 0 && lws_http_transaction_completed(wsi) ? -1 : 0;
        } else
            chat_http_reply_set(s->http, 404, "text/plain", "not found\n", 10);
        return chat_http_reply_begin(wsi, s->http);
    }
    case LWS_CALLBACK_HTTP_FILE_COMPLETION:
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return chat_http_reply_continue(wsi, s->http);
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL: /* a keep-alive transaction done: lws frees the session memory */
        http_free(s);
        break;
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return confirm_upgrade(srv, wsi);
    case LWS_CALLBACK_ESTABLISHED: {
        chat_jwt_claims claims;
        char token[CHAT_JWT_MAX_LEN + 2] = "";
        if (!session_claims(srv, wsi, &claims, token, sizeof token))
            return -1; /* never a session without a checked token */
        int sndbuf = SNDBUF_SIZE;
        if (setsockopt(lws_get_socket_fd(wsi), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) != 0)
            return -1; /* as lws does when its own setsockopt fails */
        gw_session_set_token(s, &claims, token);
        gw_session_established(srv, s, wsi, claims.user);
        return 0;
    }
    case LWS_CALLBACK_RECEIVE:
        return gw_session_receive(srv, s, in, len);
    case LWS_CALLBACK_RECEIVE_PONG:
        gw_session_pong(s);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return gw_session_writeable(srv, s);
    case LWS_CALLBACK_CLOSED:
        gw_session_closed(srv, s);
        http_free(s); /* a keep-alive connection that answered HTTP, then upgraded */
        break;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        /* no per-session data here: only the bus, which looks sessions up by id */
        if (srv && srv->bus)
            gw_bus_drain(srv);
        break;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
    {"chat", callback_chat, sizeof(gw_session), RX_BUFFER_SIZE, 0, NULL, TX_PACKET_SIZE},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void register_metrics(gw_server *srv)
{
    chat_metrics *m = srv->metrics;
    gw_metrics *g = &srv->m;
    g->connections = chat_metrics_gauge(m, "chat_gateway_connections", NULL, "Open WebSocket connections.");
    g->users = chat_metrics_gauge(m, "chat_gateway_users", NULL, "Distinct users connected.");
    g->connects = chat_metrics_counter(m, "chat_gateway_connects_total", NULL, "WebSocket connections accepted.");
    const char *rh = "Upgrades refused, by reason.";
    g->refused_auth = chat_metrics_counter(m, "chat_gateway_refused_total", "reason=\"auth\"", rh);
    g->refused_origin = chat_metrics_counter(m, "chat_gateway_refused_total", "reason=\"origin\"", rh);
    g->refused_limit = chat_metrics_counter(m, "chat_gateway_refused_total", "reason=\"limit\"", rh);
    g->refused_stopping = chat_metrics_counter(m, "chat_gateway_refused_total", "reason=\"stopping\"", rh);
    g->refused_loading = chat_metrics_counter(m, "chat_gateway_refused_total", "reason=\"revocations_loading\"", rh);
    const char *dh = "Connections closed, by reason.";
    g->disc_client = chat_metrics_counter(m, "chat_gateway_disconnects_total", "reason=\"client\"", dh);
    g->disc_slow = chat_metrics_counter(m, "chat_gateway_disconnects_total", "reason=\"slow_consumer\"", dh);
    g->disc_too_large = chat_metrics_counter(m, "chat_gateway_disconnects_total", "reason=\"too_large\"", dh);
    g->disc_shutdown = chat_metrics_counter(m, "chat_gateway_disconnects_total", "reason=\"shutdown\"", dh);
    g->disc_expired = chat_metrics_counter(m, "chat_gateway_disconnects_total", "reason=\"token_expired\"", dh);
    const char *fh = "Frames answered with an error, by code.";
    g->fail_bad_request = chat_metrics_counter(m, "chat_gateway_failed_total", "reason=\"bad_request\"", fh);
    g->fail_not_member = chat_metrics_counter(m, "chat_gateway_failed_total", "reason=\"not_member\"", fh);
    g->fail_too_large = chat_metrics_counter(m, "chat_gateway_failed_total", "reason=\"too_large\"", fh);
    g->fail_unavailable = chat_metrics_counter(m, "chat_gateway_failed_total", "reason=\"unavailable\"", fh);
    g->fail_rate_limited = chat_metrics_counter(m, "chat_gateway_failed_total", "reason=\"rate_limited\"", fh);
    g->frames_in = chat_metrics_counter(m, "chat_gateway_frames_in_total", NULL, "Frames received from clients.");
    g->frames_out = chat_metrics_counter(m, "chat_gateway_frames_out_total", NULL, "Frames written to clients.");
    g->acks = chat_metrics_counter(m, "chat_gateway_acks_total", NULL, "Sends acknowledged to clients.");
    g->routed_batches = chat_metrics_counter(m, "chat_gateway_routed_batches_total", NULL,
                                             "DeliveryBatches received on chat.deliver.g.<gateway id>.");
    g->delivery = chat_metrics_histogram(m, "chat_delivery_latency_seconds", NULL,
                                         "From the broker timestamp of an event to its frame written to a recipient's socket.");
    g->puback = chat_metrics_histogram(m, "chat_gateway_publish_ack_seconds", NULL,
                                       "From a send's publish to the broker's PubAck.");
}

/* CHAT_WEB_DIR, or web/ beside the binary's bin/ (build/web as built, share/chat/web installed). */
static void find_web_dir(gw_server *srv)
{
    srv->web_dir[0] = '\0';
    if (srv->cfg->web_dir[0]) {
        snprintf(srv->web_dir, sizeof srv->web_dir, "%s", srv->cfg->web_dir);
        return;
    }
    char exe[512];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = '\0'; /* .../bin */
    const char *candidates[] = {"%s/../web", "%s/../share/chat/web"};
    for (size_t i = 0; i < 2; i++) {
        char dir[600];
        struct stat st;
        snprintf(dir, sizeof dir, candidates[i], exe);
        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && realpath(dir, srv->web_dir) != NULL)
            return;
    }
    srv->web_dir[0] = '\0';
}

/* The one place that wires the gateway's modules together: the bus and the connection call back
 * only through these (pgbouncer's sbuf_init(&client->sbuf, client_proto)), so no two modules call
 * each other in a circle. */
/* chat.members.<conv>: the conversation's members changed, its cached membership goes. */
static void members_changed(gw_server *srv, const char *conv)
{
    gw_membership_invalidate(srv->membership, conv);
}

/* A user's route claim answered (gw_presence.h): written, its sessions' first syncs, parked until
 * then, run; not, its sessions are closed with 1012 (no session runs without a route). */
static void route_written(gw_server *srv, void *data)
{
    gw_presence_route *r = data;
    gw_user *u = chat_map_get(srv->users, r->user);
    if (u && u->route_gen == r->route_gen && !u->route_ready) {
        if (r->written) {
            u->route_ready = true;
            for (gw_session *s = u->sessions; s; s = s->next_of_user)
                gw_sync_resume(srv, s);
        } else {
            gw_session_close_user(srv, chat_xstrdup(r->user));
        }
    }
    free(r);
}

static const gw_presence_handlers presence_handlers = {
    .on_route = route_written,
    .on_routes_lost = gw_session_routes_lost,
    .on_refused = gw_session_close_user,
    .on_routes_epoch = gw_session_routes_epoch,
};

static const gw_bus_handlers bus_handlers = {
    .wake = gw_server_wake,
    .on_routed = gw_delivery_handle_routed,
    .on_members = members_changed,
    .on_presence = gw_watch_on_change,
    .on_reconnect = gw_session_restart_all,
};

static const gw_session_handlers session_handlers = {
    .on_frame = gw_route_frame,
    .on_drained = gw_sync_resume,
    .on_closing = gw_watch_drop_all,
};

chat_status gw_server_create(gw_server *srv)
{
    find_web_dir(srv);
    if (srv->cfg->gateway_id[0] != '\0') { /* the id its NATS credential is limited to */
        snprintf(srv->gateway_id, sizeof srv->gateway_id, "%s", srv->cfg->gateway_id);
    } else {
        unsigned char r[6];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
            memset(r, 0, sizeof r);
        snprintf(srv->gateway_id, sizeof srv->gateway_id, "g%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4],
                 r[5]);
    }
    srv->users = chat_map_create();
    srv->membership = gw_membership_create((size_t)srv->cfg->ws_membership_cache, GW_MEMBERSHIP_TTL_MS);
    srv->checking = gw_send_create();
    srv->cursors = gw_cursor_create();
    srv->watches = gw_watch_create();
    srv->peers = gw_peer_create();
    srv->strikes = gw_strikes_create(srv->cfg->ws_refused_per_ip, GW_STRIKES_MAX);
    register_metrics(srv);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = srv->cfg->gateway_listen.port;
    info.iface = srv->cfg->gateway_listen.host;
    info.protocols = protocols;
    info.user = srv;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_VALIDATE_UTF8;
    /* lws's own loop is poll(2) over every socket at each wakeup: with thousands of idle
     * connections that scan was most of the gateway's CPU (docs/benchmarks.md). libev on epoll
     * (lws's evlib plugin, Debian package libwebsockets-evlib-ev) wakes on ready sockets only. The
     * loop is ours (a foreign loop to lws), so gw_server_run decides when to stop turning it. No
     * signal mask changes: SIGTERM stays with chat_signal's thread. */
    srv->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOSIGMASK);
    if (srv->loop == NULL) {
        LOG_ERROR("gateway", "event=loop_failed reason=\"libev cannot create an epoll loop\"");
        return CHAT_ERR_INTERNAL;
    }
    info.options |= LWS_SERVER_OPTION_LIBEV;
    info.foreign_loops = (void **)&srv->loop;
    info.timeout_secs = 10; /* handshake and HTTP transactions */
    /* room for a request head with a token of the largest size we accept (CHAT_JWT_MAX_LEN) and
     * ordinary headers: a longer one gets an answer (401), not a dropped connection */
    info.max_http_header_data = 16384;
    /* idle connections are pinged by gw_session_sweep, not by lws: a policy of zeros turns lws's
     * validity timers off (without one, lws would use its default of a ping after 5 minutes) */
    static const lws_retry_bo_t no_idle_timers;
    info.retry_and_idle_policy = &no_idle_timers;
    if (srv->cfg->tls_cert[0]) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = srv->cfg->tls_cert;
        info.ssl_private_key_filepath = srv->cfg->tls_key;
    }
    struct lws_context *context = lws_create_context(&info);
    if (context == NULL)
        return CHAT_ERR_IO;
    pthread_mutex_lock(&srv->context_lock);
    srv->context = context;
    pthread_mutex_unlock(&srv->context_lock);
    srv->session_on = &session_handlers;
    srv->admit = gw_admit_create((size_t)srv->cfg->ws_inflight_max,
                                 chat_metrics_gauge(srv->metrics, "chat_gateway_sends_in_flight", NULL,
                                                    "Sends published and not yet answered (CHAT_WS_INFLIGHT_MAX)."),
                                 chat_metrics_counter(srv->metrics, "chat_gateway_shed_total", NULL,
                                                      "Sends refused at once: CHAT_WS_INFLIGHT_MAX were in flight."));
    if (gw_bus_create(srv, &bus_handlers, &srv->bus) != CHAT_OK)
        return CHAT_ERR_UNAVAILABLE;
    if (gw_presence_start(srv, &presence_handlers, &srv->presence) != CHAT_OK)
        return CHAT_ERR_INTERNAL;
    if (gw_revoke_start(srv, &srv->revoke) != CHAT_OK)
        return CHAT_ERR_INTERNAL;
    lws_sul_schedule(srv->context, 0, &srv->tick_sul, tick, TICK_US);
    return CHAT_OK;
}

/* One turn of the loop: waits for a ready socket, the 100 ms tick or another lws timer, or a
 * lws_cancel_service() wake-up (the bus, gw_server_stop), and runs their callbacks. false when the
 * loop has nothing left to wait for (no context). */
static bool service_once(gw_server *srv)
{
    return ev_run(srv->loop, EVRUN_ONCE) != 0;
}

static void service_until(gw_server *srv, int64_t deadline_ms, bool (*done)(gw_server *))
{
    while (!done(srv) && chat_mono_ms() < deadline_ms)
        if (!service_once(srv))
            break;
}

static bool no_requests(gw_server *srv)
{
    return gw_bus_pending(srv) == 0;
}

static bool no_sessions(gw_server *srv)
{
    return srv->nsessions == 0;
}

static bool never(gw_server *srv)
{
    (void)srv;
    return false;
}

/* Serves until SIGTERM, then stops gracefully: for CHAT_WS_STOP_DELAY (2 s) it goes on serving
 * its clients while /readyz and new upgrades answer 503, so load balancers take it out of
 * rotation; requests in flight (publishes waiting for their PubAck) then get up to 3 s; then
 * every client is closed with 1001 so it reconnects elsewhere and syncs, and gets up to 2 s. */
void gw_server_run(gw_server *srv)
{
    while (!atomic_load(&srv->stopping))
        if (!service_once(srv))
            return;
    LOG_INFO("gateway", "event=stopping delay_ms=%lld sessions=%zu", (long long)srv->cfg->ws_stop_delay_ms,
             srv->nsessions);
    service_until(srv, chat_mono_ms() + srv->cfg->ws_stop_delay_ms, never);
    int64_t now = chat_mono_ms();
    LOG_INFO("gateway", "event=draining sessions=%zu requests=%zu", srv->nsessions, gw_bus_pending(srv));
    service_until(srv, now + 3000, no_requests);
    gw_cursor_flush(srv);
    service_until(srv, chat_mono_ms() + 300, no_requests); /* acks and cursors on their way */
    gw_session_close_all(srv);
    service_until(srv, chat_mono_ms() + 2000, no_sessions);
    LOG_INFO("gateway", "event=drained sessions_left=%zu", srv->nsessions);
}

void gw_server_wake(gw_server *srv)
{
    pthread_mutex_lock(&srv->context_lock);
    if (srv->context)
        lws_cancel_service(srv->context);
    pthread_mutex_unlock(&srv->context_lock);
}

void gw_server_stop(gw_server *srv)
{
    atomic_store(&srv->stopping, true);
    gw_server_wake(srv);
}

void gw_server_destroy(gw_server *srv)
{
    if (srv == NULL)
        return;
    pthread_mutex_lock(&srv->context_lock);
    if (srv->context) {
        gw_cursor_flush(srv); /* the last cursors; their replies are not awaited */
        lws_context_destroy(srv->context); /* closes every session (CLOSED callbacks) */
        srv->context = NULL;
    }
    pthread_mutex_unlock(&srv->context_lock);
    if (srv->loop) /* after the context: lws stops its watchers on it as it goes */
        ev_loop_destroy(srv->loop);
    srv->loop = NULL;
    gw_revoke_destroy(srv->revoke); /* before the bus, which its watcher pushes onto */
    srv->revoke = NULL;
    gw_presence_destroy(srv->presence); /* our users leave presence at once */
    srv->presence = NULL;
    gw_bus_destroy(srv->bus);
    srv->bus = NULL;
    gw_admit_destroy(srv->admit);
    srv->admit = NULL;
    gw_cursor_destroy(srv->cursors); /* the modules' state goes after the context: CLOSED callbacks reach it */
    srv->cursors = NULL;
    gw_send_destroy(srv->checking);
    srv->checking = NULL;
    free(srv->slots);
    free(srv->free_slots);
    srv->slots = NULL;
    srv->free_slots = NULL;
    srv->nslots = srv->nfree = 0;
    chat_map_destroy(srv->users);
    gw_membership_destroy(srv->membership);
    srv->membership = NULL;
    gw_watch_destroy(srv->watches);
    srv->watches = NULL;
    gw_peer_destroy(srv->peers);
    srv->peers = NULL;
    gw_strikes_destroy(srv->strikes);
    srv->strikes = NULL;
    srv->users = NULL;
}
