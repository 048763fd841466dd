/* The edge against a stranger: every input a client controls is checked and bounded. Real
 * WebSocket clients (tests/support/ws_client.c) over real sockets:
 *   tokens    beyond test_auth: a real RS256 signature, HS256 keyed with an RSA public key's PEM
 *             (key confusion), HS384, lower-case alg, expiry past the leeway, bad `sub`, broken
 *             compact forms: all 401 before the upgrade (the stack's gateway);
 *   origin    a forged Origin is refused with 403 when CHAT_ALLOWED_ORIGINS is set (own gateway);
 *   authz     every frame that names a conversation (send, edit, delete, react, sync, history,
 *             read, seen, typing) from a non-member gets not_member, and the non-member never
 *             receives a frame of that conversation; a removed member loses access at once;
 *   inputs    frames over 64 KiB (1009, also in fragments), fragments that never finish (1008
 *             within ~10 s), deep JSON nesting, invalid UTF-8 (1007), huge body/meta (too_large),
 *             ids outside [A-Za-z0-9_-] incl. NATS wildcards and separators (bad_request, and
 *             nothing of them reaches NATS);
 *   limits    a flood from one connection or one user is rate_limited while another user's
 *             latency stays normal (measured); connections over the per-user and per-address
 *             limits get 429 (own gateway with the default limits);
 *   http      no development endpoints without CHAT_DEV_MODE, no path traversal, malformed request
 *             lines and oversized heads answered or dropped without harm (own gateway).
 * A test case that fails on the current code goes into a TCase tagged "known_bug", which the
 * registered run leaves out (CK_EXCLUDE_TAGS=known_bug in tests/CMakeLists.txt; run those with
 * CK_INCLUDE_TAGS=known_bug build/bin/test_security); none today. Own gateways log to
 * $CHAT_HOME/logs/test-security-<name>.log. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <nats/nats.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "chat_jwt.h"
#include "test_jwt.h"
#include "test_check.h"
#include "test_ops.h"
#include "test_stack.h"

#define PROG "test_security"

static test_stack stack;

/* ------------------------------------------------------------------ small helpers */

/* The status of an upgrade of /ws with token from src. */
static int raw_upgrade_status(const char *src, int port, const char *token)
{
    return test_raw_upgrade(src, port, token, NULL, 0);
}

/* A plain GET of path with the extra header lines (each ending in \r\n, or NULL). */
static int http_get(int port, const char *path, const char *headers, char *resp, size_t respsz)
{
    size_t cap = strlen(path) + (headers ? strlen(headers) : 0) + 256;
    char *req = malloc(cap);
    int n = snprintf(req, cap, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n%s\r\n", path, port,
                     headers ? headers : "");
    int st = test_raw_http(NULL, port, req, (size_t)n, resp, respsz, 5000);
    free(req);
    return st;
}

static void create_conv(const char *conv, const char *a, const char *b)
{
    test_conv_create(&stack, conv, a, b);
}

/* ------------------------------------------------------------------ gateways of the test */

typedef struct own_gateway {
    pid_t pid;
    int port;
    char log[PATH_MAX];
} own_gateway;

static bool pid_running(pid_t pid)
{
    int st;
    return pid > 0 && waitpid(pid, &st, WNOHANG) == 0;
}

/* Starts a chat-gateway with the stack's environment (NATS, Redis, secret), the production
 * defaults of every protection setting, no development endpoints, on a free port, plus the
 * overrides ("NAME=value", NULL-terminated); waits for /readyz. */
static own_gateway start_gateway(const char *name, const char *const *overrides)
{
    own_gateway g = {0};
    g.port = test_free_port();
    snprintf(g.log, sizeof g.log, "%s/logs/test-security-%s.log", getenv("CHAT_HOME") ? getenv("CHAT_HOME") : "/tmp",
             name);
    char bin[sizeof stack.build_dir + 32];
    snprintf(bin, sizeof bin, "%s/bin/chat-gateway", stack.build_dir);
    /* a gateway holding a thousand connections needs more than 1024 descriptors */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        char listen[64];
        snprintf(listen, sizeof listen, "127.0.0.1:%d", g.port);
        setenv("CHAT_GATEWAY_LISTEN", listen, 1);
        setenv("CHAT_WS_RATE", "50", 1);
        setenv("CHAT_WS_USER_RATE", "100", 1);
        setenv("CHAT_WS_MAX_PER_USER", "20", 1);
        setenv("CHAT_WS_MAX_PER_IP", "1000", 1);
        setenv("CHAT_WS_QUEUE_MAX", "8388608", 1);
        setenv("CHAT_DEV_MODE", "0", 1);
        setenv("CHAT_ALLOWED_ORIGINS", "", 1);
        setenv("CHAT_LOG", "info", 1);
        for (const char *const *o = overrides; o && *o; o++)
            putenv(strdup(*o));
        int in = open("/dev/null", O_RDONLY);
        int out = open(g.log, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (in < 0 || out < 0)
            _exit(127);
        dup2(in, 0);
        dup2(out, 1);
        dup2(out, 2);
        execl(bin, "chat-gateway", (char *)NULL);
        _exit(127);
    }
    g.pid = pid;
    int64_t t0 = test_mono_ms();
    char resp[4096];
    for (;;) {
        ck_assert_msg(pid_running(pid), "gateway %s (pid %d) exited while starting; see %s", name, (int)pid, g.log);
        if (http_get(g.port, "/readyz", NULL, resp, sizeof resp) == 200)
            break;
        ck_assert_msg(test_mono_ms() - t0 < 20000, "gateway %s not ready within 20 s: %s; see %s", name, resp, g.log);
        usleep(50000);
    }
    printf(PROG ": gateway %s (pid %d) ready on 127.0.0.1:%d in %lld ms\n", name, (int)pid, g.port,
           (long long)(test_mono_ms() - t0));
    fflush(stdout);
    return g;
}

/* chat_gateway_connections of the gateway on port, -1 when it cannot be read. */
static long gateway_connections(int port)
{
    static char resp[1 << 17];
    if (http_get(port, "/metrics", NULL, resp, sizeof resp) != 200)
        return -1;
    const char *p = strstr(resp, "\nchat_gateway_connections ");
    return p ? strtol(p + 27, NULL, 10) : -1;
}

/* Fails when the gateway is gone (a crash), then stops it. */
static void stop_gateway(own_gateway *g)
{
    if (g->pid <= 0)
        return;
    int st = 0;
    pid_t r = waitpid(g->pid, &st, WNOHANG);
    if (r == g->pid) {
        g->pid = 0;
        ck_abort_msg("the test's gateway exited during the test (%s %d); see %s",
                     WIFSIGNALED(st) ? "signal" : "exit status", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
                     g->log);
    }
    kill(g->pid, SIGTERM);
    int64_t t0 = test_mono_ms();
    while (waitpid(g->pid, &st, WNOHANG) == 0) {
        if (test_mono_ms() - t0 > 10000) {
            kill(g->pid, SIGKILL);
            waitpid(g->pid, &st, 0);
            break;
        }
        usleep(20000);
    }
    g->pid = 0;
}

/* ------------------------------------------------------------------ WebSocket helpers */

/* Connects as user to 127.0.0.1:port with a good token (Authorization: Bearer) and the Origin
 * header when origin is not NULL. */
static chat_status open_ws(int port, const char *user, const char *origin, ws_client **out, ws_connect_info *info)
{
    char *token = test_stack_token(&stack, user, 600);
    char auth[CHAT_JWT_MAX_LEN + 64], org[600];
    const char *headers[3] = {NULL, NULL, NULL};
    int h = 0;
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    headers[h++] = auth;
    if (origin) {
        snprintf(org, sizeof org, "Origin: %s", origin);
        headers[h++] = org;
    }
    ws_connect_opts o = {.host = "127.0.0.1", .port = port, .path = "/ws", .headers = headers, .timeout_ms = 10000};
    chat_status s = ws_client_connect(&o, out, info);
    free(token);
    return s;
}

/* open_ws that must succeed, and reads the hello. */
static ws_client *must_open(int port, const char *user)
{
    ws_client *c = NULL;
    ws_connect_info info;
    chat_status s = open_ws(port, user, NULL, &c, &info);
    ck_assert_msg(s == CHAT_OK, "connect as %s to port %d: %s, HTTP %d %s %.200s", user, port, chat_status_str(s),
                  info.http_status, info.error, info.body);
    json_t *hello = NULL;
    s = test_recv_type(c, "hello", 10000, &hello, NULL);
    ck_assert_msg(s == CHAT_OK, "no hello for %s: %s", user, chat_status_str(s));
    json_decref(hello);
    return c;
}

static ws_client *stack_open(const char *user)
{
    return must_open(stack.gateway_port, user);
}

static void send_json(ws_client *c, json_t *frame)
{
    chat_status s = ws_client_send_json(c, frame);
    ck_assert_msg(s == CHAT_OK, "send %s: %s (%s)", test_json(frame), chat_status_str(s), ws_client_error(c));
    json_decref(frame);
}

static void send_text(ws_client *c, const char *text)
{
    chat_status s = ws_client_send_text(c, text, strlen(text));
    ck_assert_msg(s == CHAT_OK, "send %.200s: %s (%s)", text, chat_status_str(s), ws_client_error(c));
}

/* The next frame of type `type` within timeout_ms; other frames go to log (a JSON array) when it
 * is not NULL. Fails when none comes. */
static json_t *expect_type(ws_client *c, const char *type, int timeout_ms, json_t *log, const char *what)
{
    json_t *skipped = json_array(), *f = NULL;
    chat_status s = test_recv_type(c, type, timeout_ms, &f, skipped);
    ck_assert_msg(s == CHAT_OK, "%s: no %s frame within %d ms (%s, close code %d); got %s", what, type, timeout_ms,
                  chat_status_str(s), ws_client_close_code(c), test_json(skipped));
    if (log)
        json_array_extend(log, skipped);
    json_decref(skipped);
    return f;
}

/* The next error frame must have code (and ref when ref is not NULL; "" means no ref at all). */
static void expect_error(ws_client *c, const char *code, const char *ref, json_t *log, const char *what)
{
    json_t *e = expect_type(c, "error", 10000, log, what);
    const char *got = test_str(e, "code"), *gref = test_str(e, "ref");
    ck_assert_msg(got && strcmp(got, code) == 0, "%s: answered %s, want code %s", what, test_json(e), code);
    if (ref && ref[0])
        ck_assert_msg(gref && strcmp(gref, ref) == 0, "%s: answered %s, want ref %s", what, test_json(e), ref);
    else if (ref)
        ck_assert_msg(json_object_get(e, "ref") == NULL, "%s: answered %s, want no ref", what, test_json(e));
    json_decref(e);
}

/* ping -> pong: the connection is open and serves. */
static void expect_alive(ws_client *c, const char *what)
{
    send_text(c, "{\"type\":\"ping\"}");
    json_t *p = expect_type(c, "pong", 10000, NULL, what);
    json_decref(p);
}

/* Reads until the server closes; returns the close code (0: the connection ended without a close
 * frame, -1: still open after timeout_ms). Frames before the close are dropped. */
static int wait_close(ws_client *c, int timeout_ms, int64_t *after_ms)
{
    int64_t t0 = test_mono_ms(), deadline = t0 + timeout_ms;
    for (;;) {
        int left = (int)(deadline - test_mono_ms());
        if (left <= 0)
            return -1;
        ws_message m = {0};
        chat_status s = ws_client_recv(c, left, &m);
        if (s == CHAT_OK && m.opcode == WS_OP_CLOSE) {
            int code = m.close_code;
            ws_message_clear(&m);
            if (after_ms)
                *after_ms = test_mono_ms() - t0;
            return code;
        }
        ws_message_clear(&m);
        if (s == CHAT_ERR_TIMEOUT)
            return -1;
        if (s != CHAT_OK) {
            if (after_ms)
                *after_ms = test_mono_ms() - t0;
            return ws_client_close_code(c);
        }
    }
}

/* Sends a text message of a client's choosing and waits for its ack; returns its seq. */
static int64_t post_ok(ws_client *c, const char *conv, const char *cmid, const char *body, json_t *log)
{
    send_json(c, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cmid, "body", body));
    json_t *ack = expect_type(c, "ack", 15000, log, "a member's send");
    int64_t seq = test_int(ack, "seq");
    ck_assert_msg(seq > 0 && test_str(ack, "cmid") && strcmp(test_str(ack, "cmid"), cmid) == 0, "ack %s for %s",
                  test_json(ack), cmid);
    json_decref(ack);
    return seq;
}

/* ------------------------------------------------------------------ tokens */

/* header.payload signed with HMAC (md) keyed with key[0..keylen), or with the RSA key (rsa), or
 * unsigned (both NULL). Caller frees. */
static char *forge(const char *header, const char *payload, const EVP_MD *md, const void *key, size_t keylen,
                   EVP_PKEY *rsa)
{
    size_t hlen = strlen(header), plen = strlen(payload);
    char *t = malloc(4 * (hlen + plen) / 3 + 1200);
    ck_assert_ptr_nonnull(t);
    size_t o = test_jwt_b64url((const unsigned char *)header, hlen, t);
    t[o++] = '.';
    o += test_jwt_b64url((const unsigned char *)payload, plen, t + o);
    size_t signed_len = o;
    t[o++] = '.';
    t[o] = '\0';
    unsigned char sig[1024];
    size_t siglen = 0;
    if (md && key) {
        unsigned int n = 0;
        HMAC(md, key, (int)keylen, (const unsigned char *)t, signed_len, sig, &n);
        siglen = n;
    } else if (rsa) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        siglen = sizeof sig;
        ck_assert(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, rsa) == 1);
        ck_assert(EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)t, signed_len) == 1);
        EVP_MD_CTX_free(ctx);
    }
    if (siglen)
        test_jwt_b64url(sig, siglen, t + o);
    return t;
}

static chat_status try_token(const char *token, bool via_header, ws_client **c, ws_connect_info *info)
{
    char *auth = malloc(strlen(token) + 64);
    sprintf(auth, "Authorization: Bearer %s", token);
    const char *headers[2] = {via_header ? auth : NULL, NULL};
    ws_connect_opts o = {.host = stack.gateway_host,
                         .port = stack.gateway_port,
                         .path = "/ws",
                         .token = via_header ? NULL : token,
                         .headers = headers,
                         .timeout_ms = 10000};
    chat_status s = ws_client_connect(&o, c, info);
    free(auth);
    return s;
}

static void expect_401_at(const char *what, const char *token)
{
    for (int via_header = 0; via_header < 2; via_header++) {
        ws_client *c = NULL;
        ws_connect_info info;
        memset(&info, 0, sizeof info);
        chat_status s = try_token(token, via_header, &c, &info);
        if (s == CHAT_OK) {
            json_t *first = NULL;
            ws_client_recv_json(c, 2000, &first);
            ws_client_destroy(c);
            ck_abort_msg("%s (%s): upgraded (101), want 401; first frame %s", what,
                         via_header ? "Authorization header" : "?token=", test_json(first));
        }
        ck_assert_msg(s == CHAT_ERR_DENIED && info.http_status == 401, "%s (%s): %s, HTTP %d (want 401) %s %.200s",
                      what, via_header ? "Authorization header" : "?token=", chat_status_str(s), info.http_status,
                      info.error, info.body);
    }
}

static void expect_accepted(const char *what, const char *token, const char *user)
{
    ws_client *c = NULL;
    ws_connect_info info;
    chat_status s = try_token(token, true, &c, &info);
    ck_assert_msg(s == CHAT_OK, "%s: not accepted: %s, HTTP %d %s", what, chat_status_str(s), info.http_status,
                  info.body);
    json_t *hello = expect_type(c, "hello", 10000, NULL, what);
    ck_assert_msg(test_str(hello, "user") && strcmp(test_str(hello, "user"), user) == 0, "%s: hello %s", what,
                  test_json(hello));
    json_decref(hello);
    ws_client_shutdown(c, 3000);
}

START_TEST(tokens_algorithms_and_key_confusion)
{
    char user[80], p[512];
    test_stack_unique_id("tok", user, sizeof user);
    long long now = (long long)time(NULL);
    snprintf(p, sizeof p, "{\"sub\":\"%s\",\"exp\":%lld,\"iat\":%lld}", user, now + 600, now);
    const char *secret = stack.cfg.jwt_secret;
    const char *hs256 = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

    /* the control: the same claims, HS256 with the secret, are accepted */
    char *t = forge(hs256, p, EVP_sha256(), secret, strlen(secret), NULL);
    expect_accepted("HS256 with the secret (control)", t, user);
    free(t);

    /* an RSA key pair of the attacker's, and its public key as PEM text */
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    ck_assert_ptr_nonnull(rsa);
    BIO *bio = BIO_new(BIO_s_mem());
    ck_assert(PEM_write_bio_PUBKEY(bio, rsa) == 1);
    char *pem = NULL;
    long pemlen = BIO_get_mem_data(bio, &pem);
    ck_assert(pemlen > 0);

    t = forge("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", p, NULL, NULL, 0, rsa);
    expect_401_at("RS256 with a real RSA signature", t);
    free(t);
    /* key confusion: a server that verified RS256 tokens would check an HS256 token with its public
     * key as the HMAC secret; this one must not accept a token keyed with any public key */
    t = forge(hs256, p, EVP_sha256(), pem, (size_t)pemlen, NULL);
    expect_401_at("HS256 keyed with an RSA public key's PEM bytes", t);
    free(t);
    t = forge("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", p, EVP_sha256(), pem, (size_t)pemlen, NULL);
    expect_401_at("RS256 header, HMAC-SHA256 keyed with the public key's PEM", t);
    free(t);
    t = forge("{\"alg\":\"HS384\",\"typ\":\"JWT\"}", p, EVP_sha384(), secret, strlen(secret), NULL);
    expect_401_at("HS384 with the right secret", t);
    free(t);
    t = forge("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", p, EVP_sha512(), secret, strlen(secret), NULL);
    expect_401_at("HS512 with the right secret", t);
    free(t);
    t = forge("{\"alg\":\"None\",\"typ\":\"JWT\"}", p, NULL, NULL, 0, NULL);
    expect_401_at("alg \"None\", unsigned", t);
    free(t);
    t = forge("{\"typ\":\"JWT\"}", p, EVP_sha256(), secret, strlen(secret), NULL);
    expect_401_at("no alg at all (HMAC-SHA256 signature)", t);
    free(t);
    t = forge("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"jku\":\"http://127.0.0.1:1/keys\",\"kid\":\"../../dev/null\"}", p,
              EVP_sha256(), "", 0, NULL);
    expect_401_at("jku/kid headers pointing elsewhere, HMAC with an empty key", t);
    free(t);
    /* an empty secret and a secret of zeros must not be what the server uses */
    t = forge(hs256, p, EVP_sha256(), "", 0, NULL);
    expect_401_at("HS256 with an empty key", t);
    free(t);
    BIO_free(bio);
    EVP_PKEY_free(rsa);
}
END_TEST

/* The contract pins the algorithm by its name: "HS256", nothing else, not "hs256" or "Hs256"
 * (libjwt 1.10, which the gateway once used, read the name without regard to case;
 * chat_jwt_verify compares it exactly with the key's own algorithm). */
START_TEST(tokens_alg_name_exact)
{
    char user[80], p[512];
    test_stack_unique_id("tok", user, sizeof user);
    long long now = (long long)time(NULL);
    snprintf(p, sizeof p, "{\"sub\":\"%s\",\"exp\":%lld}", user, now + 600);
    const char *secret = stack.cfg.jwt_secret;
    const char *names[] = {"hs256", "Hs256", "hS256"};
    for (size_t i = 0; i < 3; i++) {
        char header[64], what[96];
        snprintf(header, sizeof header, "{\"alg\":\"%s\",\"typ\":\"JWT\"}", names[i]);
        snprintf(what, sizeof what, "alg \"%s\" (HMAC-SHA256 with the secret; not the exact name HS256)", names[i]);
        char *t = forge(header, p, EVP_sha256(), secret, strlen(secret), NULL);
        expect_401_at(what, t);
        free(t);
    }
}
END_TEST

START_TEST(tokens_claims_and_forms)
{
    char user[80], p[1024];
    test_stack_unique_id("claims", user, sizeof user);
    long long now = (long long)time(NULL);
    const char *secret = stack.cfg.jwt_secret;
    const char *hs256 = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    char *t;
#define SIGNED(payload_fmt, ...)                                                                                       \
    (snprintf(p, sizeof p, payload_fmt, __VA_ARGS__), forge(hs256, p, EVP_sha256(), secret, strlen(secret), NULL))

    /* the leeway is 30 s: expired 10 s ago still works, 45 s ago does not */
    t = SIGNED("{\"sub\":\"%s\",\"exp\":%lld}", user, now - 10);
    expect_accepted("expired 10 s ago (inside the 30 s leeway)", t, user);
    free(t);
    t = SIGNED("{\"sub\":\"%s\",\"exp\":%lld}", user, now - 45);
    expect_401_at("expired 45 s ago (past the leeway)", t);
    free(t);
    t = SIGNED("{\"sub\":\"%s\",\"exp\":%lld,\"nbf\":%lld}", user, now + 3600, now + 60);
    expect_401_at("not valid before a minute from now", t);
    free(t);
    t = SIGNED("{\"sub\":\"%s\",\"exp\":\"%lld\"}", user, now + 3600);
    expect_401_at("exp as a string", t);
    free(t);
    t = SIGNED("{\"sub\":\"%s\",\"exp\":%lld.5}", user, now + 3600);
    expect_401_at("exp as a fraction", t);
    free(t);
    t = SIGNED("{\"sub\":\"%s\",\"exp\":null}", user);
    expect_401_at("exp null", t);
    free(t);
    const char *bad_subs[] = {"\"\"", "\"a.b\"", "\"*\"", "\">\"", "\"a b\"", "\"chat.deliver.u.x\"", "42", "null",
                              "[\"a\"]", "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
                              "\"\\u00e9\""};
    for (size_t i = 0; i < sizeof bad_subs / sizeof bad_subs[0]; i++) {
        t = SIGNED("{\"sub\":%s,\"exp\":%lld}", bad_subs[i], now + 3600);
        char what[200];
        snprintf(what, sizeof what, "sub %s", bad_subs[i]);
        expect_401_at(what, t);
        free(t);
    }
    t = SIGNED("{\"exp\":%lld,\"user\":\"%s\"}", now + 3600, user);
    expect_401_at("the user in another claim, no sub", t);
    free(t);

    /* broken compact forms of an otherwise good token */
    t = SIGNED("{\"sub\":\"%s\",\"exp\":%lld}", user, now + 3600);
    size_t n = strlen(t);
    char *bad = malloc(n + 64);
    char *last_dot = strrchr(t, '.');
    snprintf(bad, n + 64, "%.*s", (int)(last_dot - t), t);
    expect_401_at("two parts (no signature part)", bad);
    snprintf(bad, n + 64, "%s.e30", t);
    expect_401_at("four parts", bad);
    snprintf(bad, n + 64, "%s", t);
    bad[strlen(bad) - 2] = bad[strlen(bad) - 2] == 'A' ? 'B' : 'A';
    expect_401_at("a changed signature", bad);
    snprintf(bad, n + 64, "%s", t);
    bad[5] = bad[5] == 'A' ? 'B' : 'A';
    expect_401_at("a changed header", bad);
    snprintf(bad, n + 64, "%s%%00", t);
    expect_401_at("a NUL appended", bad);
    free(bad);
    /* the good one still works */
    expect_accepted("the good token after the broken ones", t, user);
    free(t);
#undef SIGNED
}
END_TEST

/* Tokens around and over CHAT_JWT_MAX_LEN (4 KiB): a good one of 3,000 bytes is accepted, every
 * one over the limit whose request head fits the gateway's header space (16 KiB) gets 401 (the
 * contract); a head beyond that (a 24 KiB token) is not upgraded (libwebsockets drops it without
 * an answer); the gateway serves on after each. Own gateway, so a crash would not take the stack
 * down. */
START_TEST(tokens_oversized)
{
    own_gateway g = start_gateway("oversized", NULL);
    char user[80];
    test_stack_unique_id("big", user, sizeof user);
    long long now = (long long)time(NULL);
    size_t sizes[] = {3000, 4200, 6000, 12000, 16000, 24000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        /* a well-signed token made big by a padding claim */
        size_t pad = sizes[i] * 3 / 4;
        char *p = malloc(pad + 256), *filler = malloc(pad + 1);
        memset(filler, 'x', pad);
        filler[pad] = '\0';
        snprintf(p, pad + 256, "{\"sub\":\"%s\",\"exp\":%lld,\"pad\":\"%s\"}", user, now + 600, filler);
        char *t = forge("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", p, EVP_sha256(), stack.cfg.jwt_secret,
                        strlen(stack.cfg.jwt_secret), NULL);
        size_t tlen = strlen(t);
        int status = raw_upgrade_status(NULL, g.port, t);
        char resp[1024];
        int health = http_get(g.port, "/healthz", NULL, resp, sizeof resp);
        printf(PROG ": token of %zu bytes in the query: HTTP %d; /healthz after it: %d\n", tlen, status, health);
        ck_assert_msg(health == 200, "the gateway stopped answering after a %zu-byte token (HTTP %d to it); see %s",
                      tlen, status, g.log);
        if (tlen > 16 * 1024)
            ck_assert_msg(status != 101, "a request head over 16 KiB (a token of %zu bytes) was upgraded", tlen);
        else if (tlen > CHAT_JWT_MAX_LEN)
            ck_assert_msg(status == 401, "a token of %zu bytes (over %d) got HTTP %d, want 401", tlen,
                          CHAT_JWT_MAX_LEN, status);
        else
            ck_assert_msg(status == 101, "a good token of %zu bytes (at most %d) got HTTP %d, want 101", tlen,
                          CHAT_JWT_MAX_LEN, status);
        free(t);
        free(p);
        free(filler);
    }
    /* any request with a big header, before any token is looked at */
    char *hdr = malloc(9000);
    memcpy(hdr, "X-Padding: ", 11);
    memset(hdr + 11, 'a', 8000);
    memcpy(hdr + 8011, "\r\n", 3);
    char resp[1024];
    int status = http_get(g.port, "/healthz", hdr, resp, sizeof resp);
    free(hdr);
    int health = http_get(g.port, "/healthz", NULL, resp, sizeof resp);
    printf(PROG ": GET /healthz with an 8 KB header: HTTP %d; /healthz after it: %d\n", status, health);
    ck_assert_msg(health == 200, "the gateway stopped answering after a request with an 8 KB header; see %s", g.log);
    stop_gateway(&g);
}
END_TEST

/* Request lines a stranger may send before any token is looked at: the gateway answers or drops
 * each, and keeps serving (a %00 in the path, or a head over lws's header space, makes lws drop
 * the request before the session memory exists; LWS_CALLBACK_CLOSED_HTTP then comes without it,
 * which crashed the gateway until 6ee9662). */
START_TEST(malformed_requests_do_not_crash)
{
    own_gateway g = start_gateway("malformed", NULL);
    char resp[4096];
    const char *paths[] = {"/index.html%00.js", "/ws%00", "/%zz", "/%", "/healthz?%00=1", "/ws?token=%00"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        int st = http_get(g.port, paths[i], NULL, resp, sizeof resp);
        int health = http_get(g.port, "/healthz", NULL, resp, sizeof resp);
        printf(PROG ": GET %s: HTTP %d; /healthz after it: %d\n", paths[i], st, health);
        ck_assert_msg(health == 200, "the gateway stopped answering after GET %s (HTTP %d to it); see %s", paths[i],
                      st, g.log);
    }
    const char *raw[] = {"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                         "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                         "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello on a plain port */
                         "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                         "\r\n\r\n\r\n"};
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        int st = test_raw_http(NULL, g.port, raw[i], strlen(raw[i]), resp, sizeof resp, 3000);
        int health = http_get(g.port, "/healthz", NULL, resp, sizeof resp);
        printf(PROG ": raw request %zu: HTTP %d; /healthz after it: %d\n", i, st, health);
        ck_assert_msg(health == 200, "the gateway stopped answering after raw request %zu; see %s", i, g.log);
    }
    stop_gateway(&g);
}
END_TEST

/* ------------------------------------------------------------------ origin */

START_TEST(forged_origin_refused)
{
    const char *env[] = {"CHAT_ALLOWED_ORIGINS=https://chat.example.com,https://app.example.com", NULL};
    own_gateway g = start_gateway("origin", env);
    char user[80];
    test_stack_unique_id("org", user, sizeof user);
    const char *allowed[] = {"https://chat.example.com", "https://app.example.com"};
    for (size_t i = 0; i < 2; i++) {
        ws_client *c = NULL;
        ws_connect_info info;
        chat_status s = open_ws(g.port, user, allowed[i], &c, &info);
        ck_assert_msg(s == CHAT_OK, "allowed Origin %s: %s, HTTP %d", allowed[i], chat_status_str(s), info.http_status);
        json_t *h = expect_type(c, "hello", 10000, NULL, "allowed origin");
        json_decref(h);
        ws_client_shutdown(c, 3000);
    }
    const char *forged[] = {"https://evil.example",
                            "https://chat.example.com.evil.example",
                            "https://evil.example/https://chat.example.com",
                            "http://chat.example.com",
                            "https://chat.example.com:8443",
                            "https://chat.example.co",
                            "https://CHAT.EXAMPLE.COM",
                            "null",
                            "https://chat.example.com,https://evil.example",
                            NULL /* no Origin header at all */};
    for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        ws_client *c = NULL;
        ws_connect_info info;
        memset(&info, 0, sizeof info);
        chat_status s = open_ws(g.port, user, forged[i], &c, &info);
        if (s == CHAT_OK)
            ws_client_destroy(c);
        ck_assert_msg(s == CHAT_ERR_DENIED && info.http_status == 403,
                      "Origin \"%s\" with a good token: %s, HTTP %d, want 403", forged[i] ? forged[i] : "(none)",
                      chat_status_str(s), info.http_status);
    }
    /* the origin is checked first: a forged origin with no token is 403 too, and an allowed one
     * with a bad token is 401 */
    char req[1024], resp[2048];
    int n = snprintf(req, sizeof req,
                     "GET /ws HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n");
    ck_assert_int_eq(test_raw_http(NULL, g.port, req, (size_t)n, resp, sizeof resp, 5000), 403);
    n = snprintf(req, sizeof req,
                 "GET /ws?token=x.y.z HTTP/1.1\r\nHost: x\r\nOrigin: https://chat.example.com\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n");
    ck_assert_int_eq(test_raw_http(NULL, g.port, req, (size_t)n, resp, sizeof resp, 5000), 401);
    stop_gateway(&g);
}
END_TEST

/* ------------------------------------------------------------------ authorization */

/* Fails if any frame of log names conv, other than an error frame (what a non-member may see). */
static void assert_learned_nothing(json_t *log, const char *conv, const char *secret_text, const char *who)
{
    size_t i;
    json_t *f;
    json_array_foreach(log, i, f)
    {
        const char *type = test_str(f, "type"), *c = test_str(f, "conv");
        ck_assert_msg(!(c && strcmp(c, conv) == 0 && !(type && strcmp(type, "error") == 0)),
                      "%s received a frame of a conversation it is not a member of: %s", who, test_json(f));
        char *text = json_dumps(f, JSON_COMPACT);
        bool leak = strstr(text, secret_text) != NULL;
        free(text);
        ck_assert_msg(!leak, "%s received the conversation's text in %s", who, test_json(f));
    }
}

/* Receives what arrives within ms into log. */
static void collect(ws_client *c, int ms, json_t *log)
{
    int64_t deadline = test_mono_ms() + ms;
    for (;;) {
        int left = (int)(deadline - test_mono_ms());
        if (left <= 0)
            return;
        json_t *f = NULL;
        chat_status s = ws_client_recv_json(c, left, &f);
        if (s != CHAT_OK)
            return;
        json_array_append_new(log, f);
    }
}

START_TEST(every_conversation_frame_is_authorized)
{
    char alice[80], bob[80], mallory[80], conv[80], ghost[80], k[80], secret_text[96];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("mallory", mallory, sizeof mallory);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("ghost", ghost, sizeof ghost); /* never created */
    test_stack_unique_id("secret", secret_text, sizeof secret_text);
    create_conv(conv, alice, bob);
    ws_client *a = stack_open(alice), *b = stack_open(bob), *m = stack_open(mallory);
    json_t *mlog = json_array(), *alog = json_array();

    test_stack_unique_id("k", k, sizeof k);
    int64_t seq1 = post_ok(a, conv, k, secret_text, alog);

    /* every frame that names the conversation, from the non-member, one at a time */
    struct {
        const char *what;
        json_t *frame;
        const char *ref;
    } probes[8];
    char cm[8][80];
    for (int i = 0; i < 8; i++)
        test_stack_unique_id("mk", cm[i], sizeof cm[i]);
    probes[0].what = "send";
    probes[0].frame = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cm[0], "body", "hi");
    probes[0].ref = cm[0];
    probes[1].what = "edit";
    probes[1].frame = json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "edit", "conv", conv, "cmid", cm[1], "target",
                                (json_int_t)seq1, "body", "defaced");
    probes[1].ref = cm[1];
    probes[2].what = "delete";
    probes[2].frame =
        json_pack("{s:s, s:s, s:s, s:I}", "type", "delete", "conv", conv, "cmid", cm[2], "target", (json_int_t)seq1);
    probes[2].ref = cm[2];
    probes[3].what = "react";
    probes[3].frame = json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "react", "conv", conv, "cmid", cm[3], "target",
                                (json_int_t)seq1, "emoji", "x");
    probes[3].ref = cm[3];
    probes[4].what = "history";
    probes[4].frame = json_pack("{s:s, s:s, s:i, s:s}", "type", "history", "conv", conv, "limit", 100, "ref", "h1");
    probes[4].ref = "h1";
    probes[5].what = "read";
    probes[5].frame = json_pack("{s:s, s:s, s:I}", "type", "read", "conv", conv, "seq", (json_int_t)seq1);
    probes[5].ref = NULL;
    probes[6].what = "seen";
    probes[6].frame = json_pack("{s:s, s:s, s:I}", "type", "seen", "conv", conv, "seq", (json_int_t)seq1);
    probes[6].ref = NULL;
    probes[7].what = "typing";
    probes[7].frame = json_pack("{s:s, s:s}", "type", "typing", "conv", conv);
    probes[7].ref = NULL;
    for (int i = 0; i < 8; i++) {
        char what[64];
        snprintf(what, sizeof what, "non-member's %s", probes[i].what);
        send_json(m, probes[i].frame);
        expect_error(m, "not_member", probes[i].ref, mlog, what);
    }
    /* sync that lists the conversation: an error naming it, then synced, nothing of its content */
    send_json(m, json_pack("{s:s, s:{s:i}}", "type", "sync", "cursors", conv, 0));
    json_t *e = expect_type(m, "error", 10000, mlog, "non-member's sync");
    ck_assert_msg(test_str(e, "code") && strcmp(test_str(e, "code"), "not_member") == 0 && test_str(e, "conv") &&
                      strcmp(test_str(e, "conv"), conv) == 0,
                  "non-member's sync of %s: %s, want {\"type\":\"error\",\"code\":\"not_member\",\"conv\":\"%s\"}",
                  conv, test_json(e), conv);
    json_decref(e);
    json_t *synced = expect_type(m, "synced", 10000, mlog, "non-member's sync");
    json_decref(synced);
    /* the conversation list does not show it */
    send_text(m, "{\"type\":\"conversations\"}");
    json_t *list = expect_type(m, "conversations", 10000, mlog, "non-member's conversations");
    ck_assert_msg(strstr(test_json(list), conv) == NULL, "non-member's conversation list shows %s: %s", conv,
                  test_json(list));
    json_decref(list);
    /* a conversation that does not exist answers exactly like one the user is not in */
    char gk[80];
    test_stack_unique_id("gk", gk, sizeof gk);
    send_json(m, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", ghost, "cmid", gk, "body", "hi"));
    json_t *ghost_err = expect_type(m, "error", 10000, mlog, "send to a conversation that does not exist");
    send_json(m, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", gk, "body", "hi"));
    json_t *real_err = expect_type(m, "error", 10000, mlog, "send to a conversation of others");
    ck_assert_msg(json_equal(ghost_err, real_err), "a non-member tells a missing conversation (%s) from an existing one (%s)",
                  test_json(ghost_err), test_json(real_err));
    json_decref(ghost_err);
    json_decref(real_err);

    /* the members go on: a message, an edit, a reaction, typing, a read receipt */
    char k2[80], k3[80], k4[80];
    test_stack_unique_id("k", k2, sizeof k2);
    test_stack_unique_id("k", k3, sizeof k3);
    test_stack_unique_id("k", k4, sizeof k4);
    int64_t seq2 = post_ok(b, conv, k2, secret_text, NULL);
    send_json(a, json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "edit", "conv", conv, "cmid", k3, "target",
                           (json_int_t)seq1, "body", secret_text));
    json_decref(expect_type(a, "ack", 15000, alog, "member's edit"));
    send_json(b, json_pack("{s:s, s:s, s:s, s:I, s:s}", "type", "react", "conv", conv, "cmid", k4, "target",
                           (json_int_t)seq1, "emoji", "+1"));
    json_decref(expect_type(b, "ack", 15000, NULL, "member's reaction"));
    send_json(b, json_pack("{s:s, s:s}", "type", "typing", "conv", conv));
    json_decref(expect_type(a, "typing", 10000, alog, "the member's typing at the other member"));
    send_json(b, json_pack("{s:s, s:s, s:I}", "type", "read", "conv", conv, "seq", (json_int_t)seq2));
    json_decref(expect_type(a, "receipt", 10000, alog, "the member's receipt at the other member"));
    /* whatever arrives at the non-member meanwhile, and for a while after */
    collect(m, 2000, mlog);
    assert_learned_nothing(mlog, conv, secret_text, "the non-member");
    expect_alive(m, "the non-member's connection after the refusals");

    /* nothing of the non-member's is stored: seq1 text, seq2 text, seq3 edit, seq4 reaction */
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "history", conv, NULL);
    ck_assert_msg(rc == 0, "chatctl history exited %d", rc);
    ck_assert_msg(strstr(out, mallory) == NULL && strstr(out, "defaced") == NULL,
                  "the non-member's frames changed the conversation: %s", out);
    int lines = 0;
    for (const char *q = out; *q; q++)
        lines += *q == '\n';
    ck_assert_msg(lines == 4, "the conversation holds %d events, want 4 (the members' own): %s", lines, out);
    free(out);
    json_decref(mlog);
    json_decref(alog);
    ws_client_shutdown(a, 3000);
    ws_client_shutdown(b, 3000);
    ws_client_shutdown(m, 3000);
}
END_TEST

START_TEST(removed_member_loses_access)
{
    char alice[80], bob[80], conv[80], k[80], secret_text[96];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("after", secret_text, sizeof secret_text);
    create_conv(conv, alice, bob);
    ws_client *a = stack_open(alice), *b = stack_open(bob);
    json_t *blog = json_array();
    /* bob is a member: his send works (and fills the gateway's membership cache) */
    test_stack_unique_id("k", k, sizeof k);
    post_ok(b, conv, k, "before", blog);
    send_json(b, json_pack("{s:s, s:s}", "type", "typing", "conv", conv));
    usleep(1100 * 1000); /* past the typing rate limit */
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "remove", conv, bob, NULL);
    ck_assert_msg(rc == 0, "chatctl conv remove exited %d: %s", rc, out ? out : "");
    free(out);
    json_t *mem = expect_type(b, "members", 10000, blog, "the removed member's members frame");
    ck_assert_msg(strstr(test_json(mem), bob) != NULL, "members frame %s does not name %s", test_json(mem), bob);
    json_decref(mem);
    json_array_clear(blog);
    /* at once: every frame naming the conversation is refused */
    char k2[80];
    test_stack_unique_id("k", k2, sizeof k2);
    send_json(b, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", k2, "body", "still here?"));
    expect_error(b, "not_member", k2, blog, "send after removal");
    send_json(b, json_pack("{s:s, s:s, s:s}", "type", "history", "conv", conv, "ref", "h"));
    expect_error(b, "not_member", "h", blog, "history after removal");
    send_json(b, json_pack("{s:s, s:s, s:i}", "type", "read", "conv", conv, "seq", 1));
    expect_error(b, "not_member", NULL, blog, "read after removal");
    send_json(b, json_pack("{s:s, s:s}", "type", "typing", "conv", conv));
    expect_error(b, "not_member", NULL, blog, "typing after removal");
    /* and the conversation's new messages no longer reach him */
    char k3[80];
    test_stack_unique_id("k", k3, sizeof k3);
    post_ok(a, conv, k3, secret_text, NULL);
    collect(b, 2000, blog);
    assert_learned_nothing(blog, conv, secret_text, "the removed member");
    json_decref(blog);
    ws_client_shutdown(a, 3000);
    ws_client_shutdown(b, 3000);
}
END_TEST

/* ------------------------------------------------------------------ bounded inputs */

START_TEST(oversized_frames_close_1009)
{
    char user[80], conv[80], k[80];
    test_stack_unique_id("big", user, sizeof user);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("k", k, sizeof k);
    create_conv(conv, user, "nobody-else");
    /* exactly 64 KiB: read and answered (too_large: the body is over 16 KiB), connection open */
    ws_client *c = stack_open(user);
    size_t max = 64 * 1024;
    char *frame = malloc(max + 2);
    int head = snprintf(frame, max, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"%s\",\"body\":\"", conv, k);
    memset(frame + head, 'a', max - (size_t)head - 2);
    memcpy(frame + max - 2, "\"}", 3);
    ck_assert_int_eq(strlen(frame), max);
    ck_assert_int_eq(ws_client_send_text(c, frame, max), CHAT_OK);
    expect_error(c, "too_large", k, NULL, "a frame of exactly 64 KiB with a 64 KiB body");
    expect_alive(c, "after the 64 KiB frame");
    /* one byte more: closed with 1009 */
    frame[max - 2] = 'a';
    memcpy(frame + max - 1, "\"}", 3);
    ck_assert_int_eq(ws_client_send_text(c, frame, max + 1), CHAT_OK);
    int code = wait_close(c, 10000, NULL);
    ck_assert_msg(code == 1009, "a frame of 64 KiB + 1 byte: close code %d, want 1009", code);
    ws_client_destroy(c);
    /* the same in fragments: 64 KiB - 10 bytes, then 20 more (the sum is over the limit; the last
     * fragment is small, so the gateway has read everything when it closes and its close frame is
     * not lost to a TCP reset) */
    c = stack_open(user);
    ck_assert_int_eq(ws_client_send_frame(c, WS_OP_TEXT, true, frame, max - 10), CHAT_OK);
    ck_assert_int_eq(ws_client_send_frame(c, WS_FIN | WS_OP_CONT, true, "aaaaaaaaaaaaaaaaaa\"}", 20), CHAT_OK);
    code = wait_close(c, 10000, NULL);
    ck_assert_msg(code == 1009, "64 KiB + 10 bytes in two fragments: close code %d, want 1009", code);
    ws_client_destroy(c);
    /* a header that announces 2^63 - 1 bytes, then 64 KiB + 1 of them: closed at the limit, not
     * buffered towards the announced size */
    c = stack_open(user);
    unsigned char huge[14] = {0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4};
    ck_assert_int_eq(ws_client_send_raw(c, huge, sizeof huge), CHAT_OK);
    unsigned char *payload = malloc(max + 1);
    for (size_t i = 0; i < max + 1; i++)
        payload[i] = (unsigned char)('a' ^ huge[10 + i % 4]);
    ck_assert_int_eq(ws_client_send_raw(c, payload, max + 1), CHAT_OK);
    free(payload);
    code = wait_close(c, 10000, NULL);
    ck_assert_msg(code == 1009, "a frame announcing 2^63 - 1 bytes: close code %d after 64 KiB + 1, want 1009", code);
    ws_client_destroy(c);
    free(frame);
    /* the gateway serves on */
    c = stack_open(user);
    expect_alive(c, "a new connection after the oversized frames");
    ws_client_shutdown(c, 3000);
}
END_TEST

START_TEST(unfinished_fragments_close_1008)
{
    char user[80];
    test_stack_unique_id("frag", user, sizeof user);
    /* at once: a first fragment and then nothing (a); a first fragment and one more 1-byte
     * fragment every 2 s that never finishes (b), which must not extend the deadline */
    ws_client *a = stack_open(user), *b = stack_open(user);
    const char *part = "{\"type\":\"ping\"";
    int64_t t0 = test_mono_ms();
    ck_assert_int_eq(ws_client_send_frame(a, WS_OP_TEXT, true, part, strlen(part)), CHAT_OK);
    ck_assert_int_eq(ws_client_send_frame(b, WS_OP_TEXT, true, "[", 1), CHAT_OK);
    int code_a = -1, code_b = -1;
    int64_t took_a = 0, took_b = 0, next_trickle = t0 + 2000;
    while (test_mono_ms() - t0 < 16000 && (code_a == -1 || code_b == -1)) {
        if (code_a == -1 && (code_a = wait_close(a, 100, NULL)) != -1)
            took_a = test_mono_ms() - t0;
        if (code_b == -1 && (code_b = wait_close(b, 100, NULL)) != -1)
            took_b = test_mono_ms() - t0;
        if (code_b == -1 && test_mono_ms() >= next_trickle) {
            ws_client_send_frame(b, WS_OP_CONT, true, "1", 1);
            next_trickle += 2000;
        }
    }
    printf(PROG ": an unfinished fragmented frame was closed with %d after %lld ms; a trickle of fragments with %d "
              "after %lld ms\n",
           code_a, (long long)took_a, code_b, (long long)took_b);
    ck_assert_msg(code_a == 1008 && took_a >= 9000 && took_a <= 13000,
                  "an unfinished fragmented frame: close code %d after %lld ms, want 1008 after about 10 s", code_a,
                  (long long)took_a);
    ck_assert_msg(code_b == 1008 && took_b <= 13000,
                  "a trickle of 1-byte fragments every 2 s: close %d after %lld ms, want 1008 within about 10 s", code_b,
                  (long long)took_b);
    ws_client_destroy(a);
    ws_client_destroy(b);
}
END_TEST

START_TEST(deep_nesting_is_refused)
{
    char user[80], conv[80], k[80];
    test_stack_unique_id("deep", user, sizeof user);
    test_stack_unique_id("conv", conv, sizeof conv);
    create_conv(conv, user, "nobody-else");
    ws_client *c = stack_open(user);
    /* 30,000 nested arrays (60,000 bytes: inside the frame limit, far beyond the parser's depth
     * limit) */
    size_t n = 30000;
    char *deep = malloc(2 * n + 64);
    memset(deep, '[', n);
    memset(deep + n, ']', n);
    deep[2 * n] = '\0';
    ck_assert_int_eq(ws_client_send_text(c, deep, 2 * n), CHAT_OK);
    expect_error(c, "bad_request", NULL, NULL, "30,000 nested arrays");
    expect_alive(c, "after 30,000 nested arrays");
    /* 3,000 nested objects in meta */
    test_stack_unique_id("k", k, sizeof k);
    size_t depth = 3000, o = 0;
    char *f = malloc(depth * 8 + 512);
    o += (size_t)sprintf(f, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"%s\",\"body\":\"x\",\"meta\":", conv, k);
    for (size_t i = 0; i < depth; i++)
        o += (size_t)sprintf(f + o, "{\"a\":");
    o += (size_t)sprintf(f + o, "1");
    for (size_t i = 0; i < depth; i++)
        f[o++] = '}';
    f[o++] = '}';
    f[o] = '\0';
    ck_assert_int_eq(ws_client_send_text(c, f, o), CHAT_OK);
    expect_error(c, "bad_request", NULL, NULL, "meta nested 3,000 deep");
    expect_alive(c, "after meta nested 3,000 deep");
    /* nesting the parser takes (200 deep) is carried end to end: stored, delivered, in history */
    test_stack_unique_id("k", k, sizeof k);
    depth = 200;
    o = (size_t)sprintf(f, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"%s\",\"body\":\"x\",\"meta\":", conv, k);
    for (size_t i = 0; i < depth; i++)
        o += (size_t)sprintf(f + o, "{\"a\":");
    o += (size_t)sprintf(f + o, "1");
    for (size_t i = 0; i < depth; i++)
        f[o++] = '}';
    f[o++] = '}';
    f[o] = '\0';
    ck_assert_int_eq(ws_client_send_text(c, f, o), CHAT_OK);
    json_decref(expect_type(c, "ack", 15000, NULL, "meta nested 200 deep"));
    send_json(c, json_pack("{s:s, s:s, s:s}", "type", "history", "conv", conv, "ref", "h"));
    json_t *h = expect_type(c, "history", 10000, NULL, "history with the deep meta");
    ck_assert_msg(json_array_size(json_object_get(h, "messages")) == 1, "history %s", test_json(h));
    json_decref(h);
    free(deep);
    free(f);
    ws_client_shutdown(c, 3000);
}
END_TEST

START_TEST(invalid_utf8_closes_1007)
{
    char user[80];
    test_stack_unique_id("utf", user, sizeof user);
    struct {
        const char *what;
        const char *bytes;
    } bad[] = {
        {"a lone continuation byte", "{\"type\":\"ping\",\"x\":\"\x80\"}"},
        {"a truncated sequence", "{\"type\":\"ping\",\"x\":\"\xc3\x28\"}"},
        {"an overlong '/'", "{\"type\":\"ping\",\"x\":\"\xc0\xaf\"}"},
        {"a UTF-16 surrogate encoded in UTF-8", "{\"type\":\"ping\",\"x\":\"\xed\xa0\x80\"}"},
        {"a code point past U+10FFFF", "{\"type\":\"ping\",\"x\":\"\xf4\x90\x80\x80\"}"},
        {"byte 0xFF", "{\"type\":\"ping\",\"x\":\"\xff\"}"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ws_client *c = stack_open(user);
        ck_assert_int_eq(ws_client_send_text(c, bad[i].bytes, strlen(bad[i].bytes)), CHAT_OK);
        int code = wait_close(c, 10000, NULL);
        ck_assert_msg(code == 1007, "%s in a text frame: close code %d, want 1007", bad[i].what, code);
        ws_client_destroy(c);
    }
    /* split over two fragments, the second one bad */
    ws_client *c = stack_open(user);
    ck_assert_int_eq(ws_client_send_frame(c, WS_OP_TEXT, true, "{\"type\":\"ping\",\"x\":\"\xc3", 21), CHAT_OK);
    ck_assert_int_eq(ws_client_send_frame(c, WS_FIN | WS_OP_CONT, true, "\x28\"}", 3), CHAT_OK);
    int code = wait_close(c, 10000, NULL);
    ck_assert_msg(code == 1007, "invalid UTF-8 across fragments: close code %d, want 1007", code);
    ws_client_destroy(c);
    /* a character split across fragments is fine */
    c = stack_open(user);
    ck_assert_int_eq(ws_client_send_frame(c, WS_OP_TEXT, true, "{\"type\":\"ping\",\"x\":\"\xc3", 21), CHAT_OK);
    ck_assert_int_eq(ws_client_send_frame(c, WS_FIN | WS_OP_CONT, true, "\xa9\"}", 3), CHAT_OK);
    json_decref(expect_type(c, "pong", 10000, NULL, "an é split across two fragments"));
    /* valid UTF-8 whose JSON escapes are not text: bad_request, connection stays */
    send_text(c, "{\"type\":\"send\",\"conv\":\"c\",\"cmid\":\"k\",\"body\":\"\\ud800\"}");
    expect_error(c, "bad_request", NULL, NULL, "a lone surrogate escape \\ud800 in body");
    send_text(c, "{\"type\":\"send\",\"conv\":\"c\",\"cmid\":\"k\",\"body\":\"a\\u0000b\"}");
    expect_error(c, "bad_request", NULL, NULL, "a NUL escape in body");
    /* a binary frame is refused with bad_request */
    ck_assert_int_eq(ws_client_send_frame(c, WS_FIN | WS_OP_BINARY, true, "\x00\x01\xff", 3), CHAT_OK);
    expect_error(c, "bad_request", NULL, NULL, "a binary frame");
    expect_alive(c, "after the escapes and the binary frame");
    ws_client_shutdown(c, 3000);
}
END_TEST

START_TEST(huge_fields_too_large)
{
    char user[80], conv[80], k[80];
    test_stack_unique_id("huge", user, sizeof user);
    test_stack_unique_id("conv", conv, sizeof conv);
    create_conv(conv, user, "nobody-else");
    ws_client *c = stack_open(user);
    size_t big = 17 * 1024;
    char *filler = malloc(big + 1);
    memset(filler, 'm', big);
    filler[big] = '\0';
    /* meta: one big string */
    test_stack_unique_id("k", k, sizeof k);
    send_json(c, json_pack("{s:s, s:s, s:s, s:s, s:{s:s}}", "type", "send", "conv", conv, "cmid", k, "body", "x",
                           "meta", "blob", filler));
    expect_error(c, "too_large", k, NULL, "meta with a 17 KiB string");
    /* meta: many small members that add up past 16 KiB */
    json_t *meta = json_object();
    for (int i = 0; i < 2000; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        json_object_set_new(meta, key, json_integer(i));
    }
    test_stack_unique_id("k", k, sizeof k);
    json_t *fr = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", k, "body", "x");
    json_object_set_new(fr, "meta", meta);
    send_json(c, fr);
    expect_error(c, "too_large", k, NULL, "meta of 2,000 small members");
    /* body: 16 KiB is taken, one byte more is not */
    filler[16 * 1024] = '\0';
    test_stack_unique_id("k", k, sizeof k);
    post_ok(c, conv, k, filler, NULL);
    filler[16 * 1024] = 'm';
    filler[16 * 1024 + 1] = '\0';
    test_stack_unique_id("k", k, sizeof k);
    send_json(c, json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", k, "body", filler));
    expect_error(c, "too_large", k, NULL, "a body of 16 KiB + 1 byte");
    /* meta that is not an object, an emoji past 64 bytes, a history limit of a million */
    test_stack_unique_id("k", k, sizeof k);
    send_json(c, json_pack("{s:s, s:s, s:s, s:s, s:[i]}", "type", "send", "conv", conv, "cmid", k, "body", "x", "meta", 1));
    expect_error(c, "bad_request", k, NULL, "meta as an array");
    test_stack_unique_id("k", k, sizeof k);
    filler[65] = '\0';
    send_json(c, json_pack("{s:s, s:s, s:s, s:i, s:s}", "type", "react", "conv", conv, "cmid", k, "target", 1, "emoji",
                           filler));
    expect_error(c, "bad_request", k, NULL, "an emoji of 65 bytes");
    send_json(c, json_pack("{s:s, s:s, s:i, s:s}", "type", "history", "conv", conv, "limit", 1000000, "ref", "h"));
    json_t *h = expect_type(c, "history", 10000, NULL, "history with limit 1,000,000");
    ck_assert_msg(json_array_size(json_object_get(h, "messages")) <= 100, "history answered %zu messages",
                  json_array_size(json_object_get(h, "messages")));
    json_decref(h);
    /* presence of 101 users (sync's 10,000-cursor limit cannot be reached: 10,001 distinct cursors
     * take more than the 64 KiB a frame may have) */
    json_t *users = json_array();
    for (int i = 0; i < 101; i++) {
        char u[16];
        snprintf(u, sizeof u, "u%d", i);
        json_array_append_new(users, json_string(u));
    }
    json_t *pr = json_pack("{s:s}", "type", "presence");
    json_object_set_new(pr, "users", users);
    send_json(c, pr);
    expect_error(c, "bad_request", NULL, NULL, "presence of 101 users");
    expect_alive(c, "after the oversized fields");
    free(filler);
    ws_client_shutdown(c, 3000);
}
END_TEST

/* Ids outside [A-Za-z0-9_-]{1,64}, including what would be a NATS wildcard or separator if it
 * ever reached a subject: bad_request for every frame that carries one, and nothing of them is
 * published on NATS (a subscriber on chat.> and $JS.> sees none of the probes' markers). */
START_TEST(bad_ids_never_reach_nats)
{
    char user[80], conv[80], marker[64];
    test_stack_unique_id("ids", user, sizeof user);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("mk", marker, sizeof marker);
    create_conv(conv, user, "nobody-else");
    /* a gateway of its own that takes a few hundred frames a second from one connection */
    const char *env[] = {"CHAT_WS_RATE=5000", "CHAT_WS_USER_RATE=5000", NULL};
    own_gateway g = start_gateway("ids", env);
    ws_client *c = must_open(g.port, user);
    /* the stack's NATS: every subject */
    natsConnection *nc = NULL;
    natsSubscription *sub = NULL;
    natsOptions *opts = NULL;
    ck_assert_int_eq(natsOptions_Create(&opts), NATS_OK);
    natsOptions_SetURL(opts, stack.cfg.nats_url);
    ck_assert_msg(natsConnection_Connect(&nc, opts) == NATS_OK, "cannot connect to NATS at the stack's URL");
    ck_assert_int_eq(natsConnection_SubscribeSync(&sub, nc, ">"), NATS_OK);
    natsSubscription_SetPendingLimits(sub, -1, -1);
    ck_assert_int_eq(natsConnection_Flush(nc), NATS_OK);

    char long_id[80];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    char ids[16][140];
    const char *shapes[] = {"%s*",  "%s.>", "%s.x", "*", ">", "", "%s x", "%s/x", "%s\\u00e9", "%s\\u0000",
                            "%s\\n", "chat.in.0.%s", "%s$", "%s%%2e"};
    size_t nids = 0;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        snprintf(ids[nids++], sizeof ids[0], shapes[i], marker);
    snprintf(ids[nids++], sizeof ids[0], "%s", long_id);
    int probes = 0;
    for (size_t i = 0; i < nids; i++) {
        const char *id = ids[i];
        char fr[4096];
        /* frames with id as the conversation */
        const char *forms[] = {
            "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"ok-k\",\"body\":\"%s\"}",
            "{\"type\":\"edit\",\"conv\":\"%s\",\"cmid\":\"ok-k\",\"target\":1,\"body\":\"%s\"}",
            "{\"type\":\"delete\",\"conv\":\"%s\",\"cmid\":\"ok-k\",\"target\":1,\"x\":\"%s\"}",
            "{\"type\":\"react\",\"conv\":\"%s\",\"cmid\":\"ok-k\",\"target\":1,\"emoji\":\"%s\"}",
            "{\"type\":\"typing\",\"conv\":\"%s\",\"x\":\"%s\"}",
            "{\"type\":\"read\",\"conv\":\"%s\",\"seq\":1,\"x\":\"%s\"}",
            "{\"type\":\"seen\",\"conv\":\"%s\",\"seq\":1,\"x\":\"%s\"}",
            "{\"type\":\"history\",\"conv\":\"%s\",\"ref\":\"h\",\"x\":\"%s\"}",
            "{\"type\":\"sync\",\"cursors\":{\"%s\":0},\"x\":\"%s\"}",
            /* id as the cmid (to a conversation the user is in), and as a presence user */
            NULL,
        };
        for (size_t f = 0; forms[f]; f++) {
            snprintf(fr, sizeof fr, forms[f], id, marker);
            const char *what = fr;
            send_text(c, fr);
            /* sends carry the valid cmid "ok-k" as ref; the others none */
            json_t *e = expect_type(c, "error", 10000, NULL, what);
            ck_assert_msg(test_str(e, "code") && strcmp(test_str(e, "code"), "bad_request") == 0, "%s answered %s, want "
                                                                                                  "bad_request",
                          what, test_json(e));
            json_decref(e);
            probes++;
        }
        snprintf(fr, sizeof fr, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"%s\",\"body\":\"%s\"}", conv, id, marker);
        send_text(c, fr);
        expect_error(c, "bad_request", "", NULL, fr); /* a bad cmid is not echoed as ref */
        snprintf(fr, sizeof fr, "{\"type\":\"presence\",\"users\":[\"%s\"],\"x\":\"%s\"}", id, marker);
        send_text(c, fr);
        expect_error(c, "bad_request", NULL, NULL, fr);
        probes += 2;
    }
    /* non-string ids */
    const char *typed[] = {"{\"type\":\"send\",\"conv\":42,\"cmid\":\"k\",\"body\":\"x\"}",
                           "{\"type\":\"send\",\"conv\":[\"a\"],\"cmid\":\"k\",\"body\":\"x\"}",
                           "{\"type\":\"send\",\"conv\":{\"a\":1},\"cmid\":\"k\",\"body\":\"x\"}",
                           "{\"type\":\"send\",\"conv\":null,\"cmid\":\"k\",\"body\":\"x\"}",
                           "{\"type\":\"send\",\"conv\":true,\"cmid\":\"k\",\"body\":\"x\"}",
                           "{\"type\":\"read\",\"conv\":\"c\",\"seq\":-1}",
                           "{\"type\":\"read\",\"conv\":\"c\",\"seq\":1.5}",
                           "{\"type\":\"edit\",\"conv\":\"c\",\"cmid\":\"k\",\"target\":0,\"body\":\"x\"}",
                           "{\"type\":\"send\",\"conv\":\"c\",\"conv\":\"d\",\"cmid\":\"k\",\"body\":\"x\"}",
                           "{\"type\":[\"send\"]}",
                           "{\"type\":\"SEND\",\"conv\":\"c\",\"cmid\":\"k\",\"body\":\"x\"}",
                           "[{\"type\":\"ping\"}]",
                           "\"ping\""};
    for (size_t i = 0; i < sizeof typed / sizeof typed[0]; i++) {
        send_text(c, typed[i]);
        expect_error(c, "bad_request", NULL, NULL, typed[i]);
        probes++;
    }
    expect_alive(c, "after the bad ids");
    /* nothing of it on NATS (what arrived meanwhile, and for 1.5 s after) */
    int seen = 0, leaks = 0;
    char first_leak[512] = "";
    natsMsg *msg = NULL;
    int64_t drain_end = test_mono_ms() + 1500;
    while (test_mono_ms() < drain_end) {
        if (natsSubscription_NextMsg(&msg, sub, 100) != NATS_OK)
            continue;
        seen++;
        const char *subj = natsMsg_GetSubject(msg);
        int len = natsMsg_GetDataLength(msg);
        bool hit = strstr(subj, marker) != NULL || memmem(natsMsg_GetData(msg), (size_t)len, marker, strlen(marker));
        if (hit && leaks++ == 0)
            snprintf(first_leak, sizeof first_leak, "%s (%d bytes)", subj, len);
        natsMsg_Destroy(msg);
    }
    printf(PROG ": %d frames with bad ids, all bad_request; %d NATS messages seen meanwhile, %d carrying a probe\n",
           probes, seen, leaks);
    ck_assert_msg(leaks == 0, "%d NATS messages carried a probe's marker, the first on %s", leaks, first_leak);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    ws_client_shutdown(c, 3000);
    stop_gateway(&g);
}
END_TEST

/* ------------------------------------------------------------------ floods and limits */

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

typedef struct flood {
    int port;
    double rate; /* frames per second; 0: as fast as the socket takes them */
    char user[80], conv[80];
    volatile int stop;
    /* results */
    long sent, acked, limited, other, pongs, pings;
    int close_code;
    int64_t first_ms, last_answer_ms; /* the window the gateway took frames in */
} flood;

static void flood_count(flood *f, ws_message *m)
{
    f->last_answer_ms = test_mono_ms();
    if (m->opcode == WS_OP_CLOSE)
        f->close_code = m->close_code;
    else if (strstr(m->data, "\"type\":\"ack\""))
        f->acked++;
    else if (strstr(m->data, "\"rate_limited\""))
        f->limited++;
    else if (strstr(m->data, "\"type\":\"pong\""))
        f->pongs++;
    else if (strstr(m->data, "\"type\":\"error\""))
        f->other++;
}

/* One connection sends posts at f->rate (or as fast as the socket takes them), reading every
 * answer; at the end a ping must still be answered. */
static void *flood_thread(void *arg)
{
    flood *f = arg;
    ws_client *c = NULL;
    ws_connect_info info;
    if (open_ws(f->port, f->user, NULL, &c, &info) != CHAT_OK)
        return NULL;
    char fr[256];
    int64_t t0 = mono_us();
    f->first_ms = test_mono_ms();
    while (!f->stop && f->close_code == 0) {
        snprintf(fr, sizeof fr, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"f%ld\",\"body\":\"flood\"}", f->conv,
                 f->sent);
        if (ws_client_send_text(c, fr, strlen(fr)) != CHAT_OK)
            break;
        f->sent++;
        ws_message m = {0};
        while (ws_client_recv(c, 0, &m) == CHAT_OK) {
            flood_count(f, &m);
            ws_message_clear(&m);
        }
        if (f->rate > 0) {
            int64_t due = t0 + (int64_t)(f->sent * 1e6 / f->rate), now = mono_us();
            if (due > now)
                usleep((useconds_t)(due - now));
        }
    }
    /* the answers still on their way; then pings, one a second from 1 s on, until one is answered
     * pong (the gateway may still be taking the flood's frames out of its socket, and answer a
     * ping rate_limited while its bucket is empty) */
    int64_t end = test_mono_ms() + 10000, ping_at = test_mono_ms() + 1000;
    while (test_mono_ms() < end && f->pongs == 0 && f->close_code == 0) {
        if (test_mono_ms() >= ping_at) {
            ws_client_send_text(c, "{\"type\":\"ping\"}", 15);
            f->pings++;
            ping_at += 1000;
        }
        ws_message m = {0};
        chat_status s = ws_client_recv(c, 200, &m);
        if (s == CHAT_ERR_TIMEOUT)
            continue;
        if (s != CHAT_OK)
            break;
        flood_count(f, &m);
        ws_message_clear(&m);
    }
    ws_client_destroy(c);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct lat {
    int64_t us[4096];
    int n;
    int errors;
} lat;

static double pct(lat *l, double q)
{
    if (l->n == 0)
        return NAN;
    qsort(l->us, (size_t)l->n, sizeof l->us[0], cmp_i64);
    int i = (int)ceil(q * l->n) - 1;
    return l->us[i < 0 ? 0 : i] / 1000.0;
}

/* The victim: a send (to ack) and a ping (to pong) every 100 ms for ms, latencies into post and
 * ping. */
static void victim_run(ws_client *v, const char *conv, int ms, lat *post, lat *ping)
{
    int64_t end = test_mono_ms() + ms;
    char fr[256], cmid[80];
    while (test_mono_ms() < end) {
        int64_t t0 = mono_us();
        test_stack_unique_id("v", cmid, sizeof cmid);
        snprintf(fr, sizeof fr, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"%s\",\"body\":\"victim\"}", conv, cmid);
        send_text(v, fr);
        json_t *skipped = json_array(), *a = NULL;
        chat_status s = test_recv_type(v, "ack", 10000, &a, skipped);
        if (s == CHAT_OK && post->n < 4096)
            post->us[post->n++] = mono_us() - t0;
        size_t i;
        json_t *f;
        json_array_foreach(skipped, i, f) if (test_str(f, "type") && strcmp(test_str(f, "type"), "error") == 0)
            post->errors++;
        if (s != CHAT_OK)
            post->errors++;
        json_decref(a);
        json_array_clear(skipped);
        t0 = mono_us();
        send_text(v, "{\"type\":\"ping\"}");
        s = test_recv_type(v, "pong", 10000, &a, skipped);
        if (s == CHAT_OK && ping->n < 4096)
            ping->us[ping->n++] = mono_us() - t0;
        else
            ping->errors++;
        json_decref(a);
        json_decref(skipped);
        int64_t left = 100000 - (mono_us() - t0);
        if (left > 0)
            usleep((useconds_t)left);
    }
}

/* A flood from one connection at rate frames/s (0: as fast as it goes) beside a victim (another
 * user) that posts and pings every 100 ms: the victim's latencies before and during the flood. */
static void run_flood(const char *name, double rate, bool strict)
{
    own_gateway g = start_gateway(name, NULL);
    static flood fl;
    memset(&fl, 0, sizeof fl);
    fl.port = g.port;
    fl.rate = rate;
    char victim[80], vconv[80];
    test_stack_unique_id("flooder", fl.user, sizeof fl.user);
    test_stack_unique_id("fconv", fl.conv, sizeof fl.conv);
    test_stack_unique_id("victim", victim, sizeof victim);
    test_stack_unique_id("vconv", vconv, sizeof vconv);
    create_conv(fl.conv, fl.user, "nobody-else");
    create_conv(vconv, victim, "nobody-else");
    ws_client *v = must_open(g.port, victim);
    static lat base_post, base_ping, flood_post, flood_ping;
    memset(&base_post, 0, sizeof base_post);
    memset(&base_ping, 0, sizeof base_ping);
    memset(&flood_post, 0, sizeof flood_post);
    memset(&flood_ping, 0, sizeof flood_ping);
    victim_run(v, vconv, 3000, &base_post, &base_ping);
    pthread_t th;
    int64_t t0 = test_mono_ms();
    ck_assert_int_eq(pthread_create(&th, NULL, flood_thread, &fl), 0);
    victim_run(v, vconv, 4000, &flood_post, &flood_ping);
    fl.stop = 1;
    double flood_s = (test_mono_ms() - t0) / 1000.0;
    pthread_join(th, NULL);
    char rate_text[32];
    snprintf(rate_text, sizeof rate_text, rate > 0 ? "%.0f/s" : "full speed", rate);
    printf(PROG ": flood (%s): %ld sends in %.1f s from one connection: %ld acked, %ld rate_limited, %ld other "
              "errors; connection afterwards: %s (close code %d)\n",
           rate_text, fl.sent, flood_s, fl.acked, fl.limited, fl.other, fl.pongs ? "serving" : "gone", fl.close_code);
    printf(PROG ": victim send->ack ms: before p50 %.2f p99 %.2f max %.2f | during p50 %.2f p99 %.2f max %.2f "
              "(errors %d/%d)\n",
           pct(&base_post, 0.5), pct(&base_post, 0.99), pct(&base_post, 1.0), pct(&flood_post, 0.5),
           pct(&flood_post, 0.99), pct(&flood_post, 1.0), base_post.errors, flood_post.errors);
    printf(PROG ": victim ping->pong ms: before p50 %.2f p99 %.2f max %.2f | during p50 %.2f p99 %.2f max %.2f "
              "(errors %d/%d)\n",
           pct(&base_ping, 0.5), pct(&base_ping, 0.99), pct(&base_ping, 1.0), pct(&flood_ping, 0.5),
           pct(&flood_ping, 0.99), pct(&flood_ping, 1.0), base_ping.errors, flood_ping.errors);
    fflush(stdout);
    /* the victim is served: no error, no close; and with strict (a flood the gateway keeps up
     * with) its latencies stay near what they were just before (the machine is shared, so
     * "normal" is the baseline of the same minute; 40 samples each, so p90, not p99): median at
     * most 3x + 25 ms, p90 at most 3x + 50 ms or 250 ms. Otherwise (a flood at full speed, which
     * keeps the gateway's one thread busy) the median must stay under 250 ms and p99 under 1 s. */
    ck_assert_msg(base_post.errors == 0 && flood_post.errors == 0 && base_ping.errors == 0 && flood_ping.errors == 0,
                  "the victim got errors: %d, %d, %d, %d", base_post.errors, flood_post.errors, base_ping.errors,
                  flood_ping.errors);
    struct {
        const char *what;
        lat *before, *during;
    } cmp[] = {{"send->ack", &base_post, &flood_post}, {"ping->pong", &base_ping, &flood_ping}};
    for (int i = 0; i < 2; i++) {
        double mb = pct(cmp[i].before, 0.5), md = pct(cmp[i].during, 0.5);
        double pb = pct(cmp[i].before, 0.9), pd = pct(cmp[i].during, 0.9), p99 = pct(cmp[i].during, 0.99);
        if (strict) {
            double pmax = 3 * pb + 50 > 250 ? 3 * pb + 50 : 250;
            ck_assert_msg(md <= 3 * mb + 25, "the victim's median %s went from %.2f to %.2f ms during the flood",
                          cmp[i].what, mb, md);
            ck_assert_msg(pd <= pmax, "the victim's p90 %s went from %.2f to %.2f ms during the flood (want at most %.0f)",
                          cmp[i].what, pb, pd, pmax);
        } else {
            ck_assert_msg(md < 250 && p99 < 1000, "the victim's %s during a full-speed flood: median %.2f ms, p99 %.2f ms",
                          cmp[i].what, md, p99);
        }
    }
    /* the flooder is limited: 50 frames/s per connection with a burst of 100 */
    ck_assert_msg(fl.sent > 1000, "the flooder sent only %ld frames", fl.sent);
    ck_assert_msg(fl.limited > 0, "a flood of %ld sends got no rate_limited", fl.sent);
    /* the gateway may take the frames later than they were sent (it reads behind a flood): the
     * window is from the first frame sent to the last answer read */
    double window = (fl.last_answer_ms - fl.first_ms) / 1000.0;
    double allowed = 100 + 50 * (window + 0.5);
    ck_assert_msg(fl.acked <= allowed, "the flooder got %ld acks in %.1f s, more than the %.0f the limits allow",
                  fl.acked, window, allowed);
    {
        /* docs/operations.md, CHAT_WS_RATE: a frame over the rate is answered rate_limited and
         * dropped; the connection stays open */
        ck_assert_msg(fl.close_code == 0 && fl.pongs == 1,
                      "the flooder's connection after the flood: close code %d (0: none), %ld pong to %ld pings in "
                      "10 s; %ld of %ld frames answered",
                      fl.close_code, fl.pongs, fl.pings, fl.acked + fl.limited + fl.other, fl.sent);
        /* (pings answered rate_limited count among `limited`) */
        ck_assert_msg(fl.acked + fl.limited + fl.other == fl.sent + fl.pings - fl.pongs,
                      "every flood frame gets an answer: %ld sent, %ld acked + %ld limited + %ld other (and %ld of %ld "
                      "pings answered rate_limited)",
                      fl.sent, fl.acked, fl.limited, fl.other, fl.pings - fl.pongs, fl.pings);
    }
    ws_client_shutdown(v, 3000);
    stop_gateway(&g);
}

/* 1,000 frames a second (20 times CHAT_WS_RATE), every answer read. */
START_TEST(flood_rate_limited_others_unaffected)
{
    run_flood("flood", 1000, true);
}
END_TEST

/* As fast as the socket takes them (40,000-120,000 frames a second): the gateway's one thread
 * spends most of its time on the flood, so the victim is slower (measured: send->ack median from
 * ~5 to 7-93 ms, ping median from 0.1 to 1 ms) but served: median under 250 ms, p99 under 1 s, no
 * error. The flooder is rate limited and stays connected: it gets at most one rate_limited answer per 100 ms,
 * not one per frame (before 4d67bd8 the answers piled up past CHAT_WS_QUEUE_MAX and it was closed
 * with 4008 "slow consumer"). */
START_TEST(flood_full_speed_connection_stays_open)
{
    run_flood("flood-full", 0, false);
}
END_TEST

/* One user, several connections, each below the per-connection rate: the per-user post limit
 * (100/s, burst 200) still holds. */
START_TEST(user_post_rate_limited_across_connections)
{
    own_gateway g = start_gateway("user-rate", NULL);
    char user[80], conv[80];
    test_stack_unique_id("busy", user, sizeof user);
    test_stack_unique_id("conv", conv, sizeof conv);
    create_conv(conv, user, "nobody-else");
    enum { NC = 5 };
    ws_client *c[NC];
    for (int i = 0; i < NC; i++)
        c[i] = must_open(g.port, user);
    long sent = 0, acked = 0, limited = 0, other = 0;
    int64_t t0 = test_mono_ms();
    double secs = 4;
    char fr[256];
    /* 40 frames/s on each connection (under CHAT_WS_RATE 50): 200 posts/s for the user */
    for (int tick = 0; tick < (int)(secs * 40); tick++) {
        for (int i = 0; i < NC; i++) {
            snprintf(fr, sizeof fr, "{\"type\":\"send\",\"conv\":\"%s\",\"cmid\":\"u%d-%d\",\"body\":\"x\"}", conv, i,
                     tick);
            send_text(c[i], fr);
            sent++;
        }
        for (int i = 0; i < NC; i++) {
            ws_message m = {0};
            while (ws_client_recv(c[i], 0, &m) == CHAT_OK) {
                if (strstr(m.data, "\"type\":\"ack\""))
                    acked++;
                else if (strstr(m.data, "\"rate_limited\""))
                    limited++;
                else if (strstr(m.data, "\"type\":\"error\""))
                    other++;
                ws_message_clear(&m);
            }
        }
        int64_t next = t0 + (int64_t)((tick + 1) * 25);
        int64_t now = test_mono_ms();
        if (next > now)
            usleep((useconds_t)(next - now) * 1000);
    }
    double took = (test_mono_ms() - t0) / 1000.0;
    int64_t end = test_mono_ms() + 5000;
    while (acked + limited + other < sent && test_mono_ms() < end)
        for (int i = 0; i < NC; i++) {
            ws_message m = {0};
            while (ws_client_recv(c[i], 50, &m) == CHAT_OK) {
                if (strstr(m.data, "\"type\":\"ack\""))
                    acked++;
                else if (strstr(m.data, "\"rate_limited\""))
                    limited++;
                else if (strstr(m.data, "\"type\":\"error\""))
                    other++;
                ws_message_clear(&m);
            }
        }
    printf(PROG ": one user on %d connections, %ld posts in %.1f s: %ld acked, %ld rate_limited, %ld other\n", NC,
           sent, took, acked, limited, other);
    ck_assert_msg(limited > 0, "200 posts/s from one user were never rate_limited");
    ck_assert_msg(acked <= 200 + 100 * (took + 1), "%ld posts acked in %.1f s, more than the user limit allows", acked,
                  took);
    ck_assert_msg(acked + limited + other == sent && other == 0, "answers: %ld acked + %ld limited + %ld other of %ld",
                  acked, limited, other, sent);
    for (int i = 0; i < NC; i++)
        ws_client_shutdown(c[i], 2000);
    stop_gateway(&g);
}
END_TEST

START_TEST(connections_over_the_limits_get_429)
{
    own_gateway g = start_gateway("conn-limits", NULL);
    /* per user: 20 */
    char user[80], other[80];
    test_stack_unique_id("many", user, sizeof user);
    test_stack_unique_id("other", other, sizeof other);
    ws_client *mine[21];
    for (int i = 0; i < 20; i++)
        mine[i] = must_open(g.port, user);
    ws_client *c = NULL;
    ws_connect_info info;
    memset(&info, 0, sizeof info);
    chat_status s = open_ws(g.port, user, NULL, &c, &info);
    ck_assert_msg(s == CHAT_ERR_DENIED && info.http_status == 429 && strstr(info.body, "user"),
                  "the 21st connection of one user: %s, HTTP %d %s, want 429", chat_status_str(s), info.http_status,
                  info.body);
    ws_client *o = must_open(g.port, other);
    ws_client_shutdown(o, 2000);
    /* one closes: there is room again */
    ws_client_shutdown(mine[19], 3000);
    mine[19] = NULL;
    int64_t t0 = test_mono_ms();
    for (;;) {
        s = open_ws(g.port, user, NULL, &c, &info);
        if (s == CHAT_OK)
            break;
        ck_assert_msg(test_mono_ms() - t0 < 3000, "after one of 20 closed, a new one still gets HTTP %d",
                      info.http_status);
        usleep(100000);
    }
    mine[19] = c;
    for (int i = 0; i < 20; i++)
        ws_client_destroy(mine[i]);
    int64_t t2 = test_mono_ms();
    while (gateway_connections(g.port) != 0) {
        ck_assert_msg(test_mono_ms() - t2 < 5000, "the gateway still counts %ld connections 5 s after they closed",
                      gateway_connections(g.port));
        usleep(50000);
    }

    /* per address: 1,000 (50 users x 20 connections from 127.0.0.1) */
    enum { NU = 50, PER = 20 };
    static ws_client *all[NU * PER];
    int n = 0;
    int64_t t1 = test_mono_ms();
    for (int u = 0; u < NU; u++) {
        char name[80];
        test_stack_unique_id("ip", name, sizeof name);
        for (int k = 0; k < PER; k++) {
            s = open_ws(g.port, name, NULL, &all[n], &info);
            ck_assert_msg(s == CHAT_OK, "connection %d of 1,000 from one address: %s, HTTP %d %s", n + 1,
                          chat_status_str(s), info.http_status, info.body);
            n++;
        }
    }
    printf(PROG ": 1,000 connections from 127.0.0.1 opened in %lld ms\n", (long long)(test_mono_ms() - t1));
    char fresh[80];
    test_stack_unique_id("fresh", fresh, sizeof fresh);
    s = open_ws(g.port, fresh, NULL, &c, &info);
    ck_assert_msg(s == CHAT_ERR_DENIED && info.http_status == 429 && strstr(info.body, "address"),
                  "the 1,001st connection from one address: %s, HTTP %d %s, want 429", chat_status_str(s),
                  info.http_status, info.body);
    /* another address is not affected */
    char *token = test_stack_token(&stack, fresh, 600);
    int st = raw_upgrade_status("127.0.0.2", g.port, token);
    free(token);
    ck_assert_msg(st == 101, "a connection from 127.0.0.2 while 127.0.0.1 is at its limit: HTTP %d, want 101", st);
    for (int i = 0; i < n; i++)
        ws_client_destroy(all[i]);
    stop_gateway(&g);
}
END_TEST

/* ------------------------------------------------------------------ HTTP surface */

START_TEST(http_surface)
{
    own_gateway g = start_gateway("http", NULL);
    char resp[65536];
    const char *not_served[] = {"/dev/token?user=x", "/dev/conv?conv=x&members=a,b"};
    for (size_t i = 0; i < 2; i++) {
        int st = http_get(g.port, not_served[i], NULL, resp, sizeof resp);
        ck_assert_msg(st == 404, "GET %s without CHAT_DEV_MODE: HTTP %d, want 404", not_served[i], st);
    }
    const char *traversal[] = {"/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                               "/..%2f..%2f..%2fetc/passwd", "/sdk/../../../../etc/passwd", "//etc/passwd",
                               "/.git/config", "/web/../CMakeCache.txt", "/%2fetc%2fpasswd"};
    for (size_t i = 0; i < sizeof traversal / sizeof traversal[0]; i++) {
        int st = http_get(g.port, traversal[i], NULL, resp, sizeof resp);
        ck_assert_msg(st != 200 && strstr(resp, "root:") == NULL && strstr(resp, "CMAKE") == NULL,
                      "GET %s: HTTP %d, %.200s", traversal[i], st, resp);
        ck_assert_msg(http_get(g.port, "/healthz", NULL, resp, sizeof resp) == 200,
                      "the gateway stopped answering after GET %s; see %s", traversal[i], g.log);
    }
    char req[1024];
    char *token = test_stack_token(&stack, "someone", 600);
    int n = snprintf(req, sizeof req,
                     "GET /other?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     token);
    free(token);
    int st = test_raw_http(NULL, g.port, req, (size_t)n, resp, sizeof resp, 5000);
    ck_assert_msg(st == 404, "an upgrade on /other: HTTP %d, want 404", st);
    stop_gateway(&g);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("security");
    TCase *tok = tcase_create("tokens");
    tcase_set_timeout(tok, 60);
    tcase_add_test(tok, tokens_algorithms_and_key_confusion);
    tcase_add_test(tok, tokens_claims_and_forms);
    suite_add_tcase(s, tok);
    /* what the first runs found, fixed since (6ee9662, 4d67bd8, 47a28a3): oversized tokens,
     * malformed request lines, the exact algorithm name. A case that fails on the code of the day
     * goes into a TCase tagged "known_bug" (tcase_set_tags), which the registered run leaves out
     * (CK_EXCLUDE_TAGS=known_bug), until it is fixed. */
    TCase *http_in = tcase_create("http_inputs");
    tcase_set_timeout(http_in, 90);
    tcase_add_test(http_in, tokens_oversized);
    tcase_add_test(http_in, malformed_requests_do_not_crash);
    tcase_add_test(http_in, tokens_alg_name_exact);
    suite_add_tcase(s, http_in);
    TCase *org = tcase_create("origin");
    tcase_set_timeout(org, 60);
    tcase_add_test(org, forged_origin_refused);
    suite_add_tcase(s, org);
    TCase *az = tcase_create("authorization");
    tcase_set_timeout(az, 90);
    tcase_add_test(az, every_conversation_frame_is_authorized);
    tcase_add_test(az, removed_member_loses_access);
    suite_add_tcase(s, az);
    TCase *in = tcase_create("inputs");
    tcase_set_timeout(in, 90);
    tcase_add_test(in, oversized_frames_close_1009);
    tcase_add_test(in, unfinished_fragments_close_1008);
    tcase_add_test(in, deep_nesting_is_refused);
    tcase_add_test(in, invalid_utf8_closes_1007);
    tcase_add_test(in, huge_fields_too_large);
    tcase_add_test(in, bad_ids_never_reach_nats);
    suite_add_tcase(s, in);
    TCase *lim = tcase_create("limits");
    tcase_set_timeout(lim, 120);
    tcase_add_test(lim, flood_rate_limited_others_unaffected);
    tcase_add_test(lim, flood_full_speed_connection_stays_open);
    tcase_add_test(lim, user_post_rate_limited_across_connections);
    tcase_add_test(lim, connections_over_the_limits_get_429);
    suite_add_tcase(s, lim);
    TCase *http = tcase_create("http");
    tcase_set_timeout(http, 60);
    tcase_add_test(http, http_surface);
    suite_add_tcase(s, http);
    return test_run_suite(&stack, s);
}
