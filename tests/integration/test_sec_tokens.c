/* Client tokens (issue 19, finding 8): gateways of the test's own with key files (two kids, one an
 * EdDSA public key, so the gateway cannot sign), issuer and audience, a maximum lifetime; the
 * documented example secret refused at start; a refused upgrade answered as HTTP/1.1 that Python's
 * websockets client (Debian's 10.4) reads. Tokens are made here with OpenSSL, not by the code under
 * test. Against the stack's NATS, PostgreSQL, Redis and worker. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "test_check.h"
#include "test_jwt.h"
#include "test_ops.h"

#define PROG "test_sec_tokens"

static test_stack stack;
static char keydir[PATH_MAX];
static EVP_PKEY *ed; /* the "new" kid's key pair; gateways get only its public half */
static const char *old_secret = "rotation-old-secret-3f9a1c77e2b84d06a5c1";
static const char *hs256_old = "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"old\"}";
static const char *eddsa_new = "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"new\"}";

/* ------------------------------------------------------------------ tokens and keys */

/* header.payload.signature signed with pkey (Ed25519: EdDSA). The caller frees it. */
static char *forge_eddsa(const char *header, const char *payload, EVP_PKEY *pkey)
{
    char *unsigned_token = test_jwt_forge(header, payload, NULL, NULL); /* "h.p." */
    size_t n = strlen(unsigned_token) - 1;
    unsigned char sig[64];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    ck_assert(EVP_DigestSignInit(ctx, NULL, NULL, NULL, pkey) == 1);
    ck_assert(EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)unsigned_token, n) == 1);
    EVP_MD_CTX_free(ctx);
    char *token = malloc(n + 1 + 100);
    memcpy(token, unsigned_token, n + 1);
    test_jwt_b64url(sig, siglen, token + n + 1);
    free(unsigned_token);
    return token;
}

/* Claims for user: exp ttl_s from now, then the extra members given ("" for none). */
static const char *claims(const char *user, long long ttl_s, const char *extra)
{
    static char p[1024];
    long long now = (long long)time(NULL);
    snprintf(p, sizeof p, "{\"sub\":\"%s\",\"iat\":%lld,\"exp\":%lld%s%s}", user, now, now + ttl_s, extra[0] ? "," : "",
             extra);
    return p;
}

static void write_file(const char *name, const char *text)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", keydir, name);
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
}

/* A folder of keys under $CHAT_HOME: the Ed25519 public key, and the key files of both phases. */
static void setup(void)
{
    const char *home = getenv("CHAT_HOME");
    snprintf(keydir, sizeof keydir, "%s/tmp", home ? home : "/tmp");
    mkdir(keydir, 0700);
    snprintf(keydir + strlen(keydir), sizeof keydir - strlen(keydir), "/sec-tokens.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(keydir));
    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    ck_assert_ptr_nonnull(ed);
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/new.pub", keydir);
    FILE *f = fopen(path, "w");
    ck_assert(f && PEM_write_PUBKEY(f, ed) == 1);
    fclose(f);
    char text[512];
    snprintf(text, sizeof text, "# during the rotation: old and new\nold HS256 %s\nnew EdDSA new.pub\n", old_secret);
    write_file("keys-both", text);
    write_file("keys-new", "# after it: old removed\nnew EdDSA new.pub\n");
}

static void teardown(void)
{
    EVP_PKEY_free(ed);
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", keydir);
    if (system(cmd) != 0)
        fprintf(stderr, PROG ": could not remove %s\n", keydir);
}

/* ------------------------------------------------------------------ gateways and clients */

/* Starts a gateway with env (NAME=value, NULL-terminated) and waits until it is ready. */
static test_gateway gateway(const char *name, const char *const *env)
{
    test_gateway gw;
    char why[2048];
    ck_assert_msg(test_gateway_spawn(&stack, name, env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
    return gw;
}

/* Upgrades with token: the HTTP status (101 only once hello came, for user). */
static int upgrade(const test_gateway *gw, const char *token, const char *user, char *body, size_t bodysz)
{
    return test_ws_upgrade("127.0.0.1", gw->port, token, user, NULL, body, bodysz);
}

static void expect_status(const test_gateway *gw, const char *what, const char *token, const char *user, int want)
{
    char body[1024] = "";
    int got = upgrade(gw, token, user, body, sizeof body);
    printf(PROG ": %s: HTTP %d %s", what, got, body[0] ? body : "\n");
    ck_assert_msg(got == want, "%s: HTTP %d (%s), want %d; see %s", what, got, body, want, gw->log);
}

/* ------------------------------------------------------------------ the tests */

/* Rotation without downtime: while both kids are configured, tokens of either are accepted; once
 * the old kid is removed, its tokens are refused and the new ones still work. The gateway holds
 * only the EdDSA public key and no CHAT_JWT_SECRET: a token without kid, or one signed with the
 * stack's secret, is refused. */
START_TEST(rotation_by_kid)
{
    char user[80], keys[PATH_MAX + 32];
    test_stack_unique_id("rot", user, sizeof user);
    snprintf(keys, sizeof keys, "CHAT_JWT_KEYS=%s/keys-both", keydir);
    const char *both_env[] = {keys, "CHAT_JWT_SECRET=", NULL};
    test_gateway gw = gateway("rotation-both", both_env);
    char *old_t = test_jwt_forge(hs256_old, claims(user, 600, ""), old_secret, "HS256");
    char *new_t = forge_eddsa(eddsa_new, claims(user, 600, ""), ed);
    expect_status(&gw, "old kid (HS256), both configured", old_t, user, 101);
    expect_status(&gw, "new kid (EdDSA), both configured", new_t, user, 101);
    char *no_kid = test_stack_token(&stack, user, 600);
    expect_status(&gw, "no kid, the stack's secret (no CHAT_JWT_SECRET here)", no_kid, user, 401);
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    char *forged = forge_eddsa("{\"alg\":\"EdDSA\",\"kid\":\"new\"}", claims(user, 600, ""), other);
    EVP_PKEY_free(other);
    expect_status(&gw, "kid new, signed with another Ed25519 key", forged, user, 401);
    test_gateway_stop(&gw, 5000);

    snprintf(keys, sizeof keys, "CHAT_JWT_KEYS=%s/keys-new", keydir);
    const char *new_env[] = {keys, "CHAT_JWT_SECRET=", NULL};
    gw = gateway("rotation-new", new_env);
    expect_status(&gw, "old kid after its removal", old_t, user, 401);
    expect_status(&gw, "new kid after the old one's removal", new_t, user, 101);
    test_gateway_stop(&gw, 5000);
    free(old_t);
    free(new_t);
    free(no_kid);
    free(forged);
}
END_TEST

/* The stack's secret (single-secret mode) with an issuer, an audience and a one-hour maximum. */
static const char *const *claim_rules_env(void)
{
    static const char *env[] = {"CHAT_JWT_ISSUER=https://auth.test", "CHAT_JWT_AUDIENCE=chat", "CHAT_JWT_MAX_TTL=1h",
                                NULL};
    return env;
}

static char *stack_signed(const char *payload)
{
    return test_jwt_forge("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, stack.cfg.jwt_secret, "HS256");
}

START_TEST(issuer_and_audience)
{
    char user[80];
    test_stack_unique_id("iss", user, sizeof user);
    test_gateway gw = gateway("claims", claim_rules_env());
    static const struct {
        const char *what, *extra;
        int want;
    } cases[] = {
        {"iss and aud right", "\"iss\":\"https://auth.test\",\"aud\":\"chat\"", 101},
        {"aud an array holding ours", "\"iss\":\"https://auth.test\",\"aud\":[\"billing\",\"chat\"]", 101},
        {"no iss, no aud", "", 401},
        {"no iss", "\"aud\":\"chat\"", 401},
        {"another issuer", "\"iss\":\"https://evil.test\",\"aud\":\"chat\"", 401},
        {"no aud", "\"iss\":\"https://auth.test\"", 401},
        {"another audience", "\"iss\":\"https://auth.test\",\"aud\":\"billing\"", 401},
        {"an array without ours", "\"iss\":\"https://auth.test\",\"aud\":[\"billing\"]", 401},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *t = stack_signed(claims(user, 600, cases[i].extra));
        expect_status(&gw, cases[i].what, t, user, cases[i].want);
        free(t);
    }
    test_gateway_stop(&gw, 5000);
}
END_TEST

START_TEST(lifetime_bounded)
{
    char user[80], extra[128], p[512];
    test_stack_unique_id("ttl", user, sizeof user);
    snprintf(extra, sizeof extra, "\"iss\":\"https://auth.test\",\"aud\":\"chat\"");
    test_gateway gw = gateway("lifetime", claim_rules_env());
    char *t = stack_signed(claims(user, 3600, extra));
    expect_status(&gw, "an hour (the maximum)", t, user, 101);
    free(t);
    t = stack_signed(claims(user, 2 * 3600, extra));
    expect_status(&gw, "two hours", t, user, 401);
    free(t);
    t = stack_signed(claims(user, 365LL * 86400, extra));
    expect_status(&gw, "a year", t, user, 401);
    free(t);
    /* issued 50 minutes ago for 70 minutes: 20 left, but longer than the maximum from iat */
    long long now = (long long)time(NULL);
    snprintf(p, sizeof p, "{\"sub\":\"%s\",\"iat\":%lld,\"exp\":%lld,%s}", user, now - 3000, now + 1200, extra);
    t = stack_signed(p);
    expect_status(&gw, "70 minutes from iat", t, user, 401);
    free(t);
    test_gateway_stop(&gw, 5000);

    /* chatctl token stays within the maximum, and says so */
    setenv("CHAT_JWT_MAX_TTL", "1h", 1);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "token", user, "--ttl", "7200", NULL);
    ck_assert_msg(rc == 2 && out && out[0] == '\0', "chatctl token --ttl 7200 with a 1h maximum: exit %d, out %s", rc,
                  out ? out : "");
    free(out);
    rc = test_stack_chatctl(&stack, &out, "token", user, "--ttl", "3600", NULL);
    ck_assert_msg(rc == 0 && out && out[0], "chatctl token --ttl 3600: exit %d", rc);
    free(out);
    unsetenv("CHAT_JWT_MAX_TTL");
}
END_TEST

/* Starts a gateway that must refuse to start: exit status 2 within 10 s, and the one line it wrote
 * names the setting. */
static void expect_refused_start(const char *name, const char *const *env, const char *line_start)
{
    test_gateway gw;
    char why[2048];
    ck_assert_msg(test_gateway_spawn(&stack, name, env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_exit(&gw, 10000) == CHAT_OK, "%s: the gateway started; see %s", name, gw.log);
    ck_assert_msg(WIFEXITED(gw.exit_status) && WEXITSTATUS(gw.exit_status) == 2, "%s: exit status %d; see %s", name,
                  gw.exit_status, gw.log);
    /* its own lines: everything but the test's "=====" notes */
    FILE *f = fopen(gw.log, "r");
    ck_assert_ptr_nonnull(f);
    char line[2048], first[2048] = "";
    int lines = 0;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "=====", 5) != 0 && lines++ == 0)
            snprintf(first, sizeof first, "%s", line);
    fclose(f);
    printf(PROG ": %s: exit 2, %d line: %s", name, lines, first);
    ck_assert_msg(lines == 1 && strncmp(first, line_start, strlen(line_start)) == 0,
                  "%s: %d lines, the first \"%s\" (want one line starting \"%s\")", name, lines, first, line_start);
}

START_TEST(example_secret_refused_at_start)
{
    const char *example[] = {"CHAT_JWT_SECRET=changeme-changeme-changeme-changeme-0000", NULL};
    expect_refused_start("example-secret", example, "chat-gateway: CHAT_JWT_SECRET: is the documented example");
    const char *weak[] = {"CHAT_JWT_SECRET=00000000000000000000000000000000000000000000", NULL};
    expect_refused_start("weak-secret", weak, "chat-gateway: CHAT_JWT_SECRET: ");
    char text[256], keys[PATH_MAX + 32];
    snprintf(text, sizeof text, "k1 HS256 changeme-changeme-changeme-changeme-0000\n");
    write_file("keys-example", text);
    snprintf(keys, sizeof keys, "CHAT_JWT_KEYS=%s/keys-example", keydir);
    const char *in_file[] = {keys, NULL};
    expect_refused_start("example-in-keys", in_file, "chat-gateway: CHAT_JWT_KEYS: ");
    /* chatctl too (it signs with the secret) */
    setenv("CHAT_JWT_SECRET", "changeme-changeme-changeme-changeme-0000", 1);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "token", "alice", NULL);
    ck_assert_msg(rc == 2 && out && out[0] == '\0', "chatctl token with the example secret: exit %d, out %s", rc,
                  out ? out : "");
    free(out);
}
END_TEST

/* The raw answer to an upgrade with a bad token: an HTTP/1.1 status line, a Content-Length that
 * matches the body, Connection: close, then the server closes. */
static void expect_http11_refusal(int port, const char *path_and_query, int want)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ck_assert(connect(fd, (struct sockaddr *)&a, sizeof a) == 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path_and_query, port);
    ck_assert(send(fd, req, (size_t)n, 0) == n);
    char resp[4096];
    size_t len = 0;
    ssize_t r;
    while (len < sizeof resp - 1 && (r = recv(fd, resp + len, sizeof resp - 1 - len, 0)) > 0)
        len += (size_t)r;
    resp[len] = '\0';
    bool closed = r == 0;
    close(fd);
    char status_line[64];
    snprintf(status_line, sizeof status_line, "HTTP/1.1 %d ", want);
    printf(PROG ": GET %.40s...: %.*s\n", path_and_query, (int)strcspn(resp, "\r"), resp);
    ck_assert_msg(strncmp(resp, status_line, strlen(status_line)) == 0, "status line of %s: \"%.*s\", want %s",
                  path_and_query, (int)strcspn(resp, "\r"), resp, status_line);
    const char *end = strstr(resp, "\r\n\r\n"), *cl = strcasestr(resp, "\r\nContent-Length:");
    ck_assert_msg(end && cl && cl < end, "no Content-Length in %s", resp);
    long want_len = strtol(cl + 17, NULL, 10);
    ck_assert_msg((long)strlen(end + 4) == want_len, "body of %zu bytes, Content-Length %ld", strlen(end + 4),
                  want_len);
    ck_assert_msg(strcasestr(resp, "\r\nConnection: close\r\n") && strcasestr(resp, "\r\nConnection: close\r\n") < end,
                  "no Connection: close in %s", resp);
    ck_assert_msg(closed, "the server kept the connection open after the refusal");
}

/* What Python's websockets client (Debian's python3-websockets, under Debian's /usr/bin/python3)
 * makes of the answer to url: "STATUS 401" when it read a refusal, "OPEN" when it connected,
 * "ERROR ..." otherwise. */
static void python_client(const char *url, char *out, size_t outsz)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 - '%s' 2>&1 <<'EOF'\n"
             "import asyncio, sys\n"
             "try:\n"
             "    import websockets\n"
             "except ImportError as e:\n"
             "    print('ERROR no websockets module (python3-websockets):', e); sys.exit(0)\n"
             "async def main(url):\n"
             "    try:\n"
             "        async with websockets.connect(url, open_timeout=5, close_timeout=1):\n"
             "            print('OPEN')\n"
             "    except websockets.exceptions.InvalidStatusCode as e:\n"
             "        print('STATUS', e.status_code)\n"
             "    except Exception as e:\n"
             "        print('ERROR', type(e).__name__, e)\n"
             "asyncio.run(main(sys.argv[1]))\n"
             "EOF",
             url);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, outsz - 1, p);
    out[n] = '\0';
    out[strcspn(out, "\n")] = '\0';
    pclose(p);
}

START_TEST(refusal_readable_by_common_clients)
{
    char user[80], url[8192], out[1024];
    test_stack_unique_id("py", user, sizeof user);
    test_gateway gw = gateway("refusal", claim_rules_env());
    char *expired = stack_signed(claims(user, -3600, "\"iss\":\"https://auth.test\",\"aud\":\"chat\""));
    char path[4200];
    snprintf(path, sizeof path, "/ws?token=%s", expired);
    expect_http11_refusal(gw.port, path, 401);
    expect_http11_refusal(gw.port, "/ws", 401);
    expect_http11_refusal(gw.port, "/elsewhere", 404);

    snprintf(url, sizeof url, "ws://127.0.0.1:%d/ws?token=%s", gw.port, expired);
    python_client(url, out, sizeof out);
    printf(PROG ": python3 websockets, expired token: %s\n", out);
    ck_assert_msg(strcmp(out, "STATUS 401") == 0, "Python's websockets client got \"%s\", want STATUS 401", out);
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/ws", gw.port);
    python_client(url, out, sizeof out);
    ck_assert_msg(strcmp(out, "STATUS 401") == 0, "no token: Python's websockets client got \"%s\"", out);
    /* and the control: a good token opens */
    char *good = stack_signed(claims(user, 600, "\"iss\":\"https://auth.test\",\"aud\":\"chat\""));
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/ws?token=%s", gw.port, good);
    python_client(url, out, sizeof out);
    ck_assert_msg(strcmp(out, "OPEN") == 0, "a good token: Python's websockets client got \"%s\"", out);
    free(good);
    free(expired);
    test_gateway_stop(&gw, 5000);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create("sec_tokens");
    TCase *tc = tcase_create("tokens");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, rotation_by_kid);
    tcase_add_test(tc, issuer_and_audience);
    tcase_add_test(tc, lifetime_bounded);
    tcase_add_test(tc, example_secret_refused_at_start);
    tcase_add_test(tc, refusal_readable_by_common_clients);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
