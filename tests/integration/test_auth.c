/* Who may connect and post: a good token in the Authorization header or the query works; every
 * bad one gets HTTP 401 before the upgrade; a non-member's send is refused with not_member and
 * reaches nobody. Against the gateway of the running stack. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_jwt.h"
#include "test_jwt.h"
#include "test_check.h"
#include "test_stack.h"

static test_stack stack;

static const char *HS256 = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
static const char *OTHER_SECRET = "another-secret-0123456789abcdef0123456789abcdef";

/* Connects with token in the header (via_header) or the query; token NULL sends none. */
static chat_status try_connect(const char *token, bool via_header, ws_client **out, ws_connect_info *info)
{
    char auth[CHAT_JWT_MAX_LEN + 64];
    const char *headers[2] = {NULL, NULL};
    if (token && via_header) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
        headers[0] = auth;
    }
    ws_connect_opts o = {.host = stack.gateway_host,
                         .port = stack.gateway_port,
                         .path = "/ws",
                         .token = via_header ? NULL : token,
                         .headers = headers,
                         .timeout_ms = 10000};
    return ws_client_connect(&o, out, info);
}

/* A good token must give 101 and a hello for user. */
static ws_client *expect_accepted(const char *what, const char *token, bool via_header, const char *user)
{
    ws_client *c = NULL;
    ws_connect_info info;
    chat_status s = try_connect(token, via_header, &c, &info);
    ck_assert_msg(s == CHAT_OK, "%s: not accepted: %s, HTTP %d, %s %.200s", what, chat_status_str(s), info.http_status,
                  info.error, info.body);
    json_t *hello = NULL;
    s = ws_client_recv_json(c, 10000, &hello);
    ck_assert_msg(s == CHAT_OK, "%s: no hello: %s (%s)", what, chat_status_str(s), ws_client_error(c));
    const char *type = test_str(hello, "type"), *u = test_str(hello, "user");
    ck_assert_msg(type && strcmp(type, "hello") == 0 && u && strcmp(u, user) == 0,
                  "%s: first frame %s, want hello for %s", what, test_json(hello), user);
    json_decref(hello);
    return c;
}

static void expect_401(const char *what, const char *token, bool via_header)
{
    ws_client *c = NULL;
    ws_connect_info info;
    chat_status s = try_connect(token, via_header, &c, &info);
    if (s == CHAT_OK) {
        json_t *first = NULL;
        ws_client_recv_json(c, 2000, &first);
        ws_client_destroy(c);
        ck_abort_msg("%s (%s): upgraded (HTTP 101), want 401; first frame %s", what,
                     via_header ? "Authorization header" : "?token=", test_json(first));
    }
    ck_assert_msg(s == CHAT_ERR_DENIED && info.http_status == 401, "%s (%s): %s, HTTP %d (want 401) %s %.200s", what,
                  via_header ? "Authorization header" : "?token=", chat_status_str(s), info.http_status, info.error,
                  info.body);
}

START_TEST(good_tokens_header_and_query)
{
    char user[80];
    test_stack_unique_id("dana", user, sizeof user);
    /* a token made by hand, in the header */
    char payload[256];
    long long now = (long long)time(NULL);
    snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"exp\":%lld,\"iat\":%lld}", user, now + 600, now);
    char *forged = test_jwt_forge(HS256, payload, stack.cfg.jwt_secret, "HS256");
    ws_client *c1 = expect_accepted("hand-made HS256 token in Authorization: Bearer", forged, true, user);
    free(forged);
    /* chatctl token's, in the query */
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "token", user, "--ttl", "600", NULL);
    ck_assert_msg(rc == 0 && out && out[0], "chatctl token %s exited %d: %s", user, rc, out ? out : "");
    out[strcspn(out, "\r\n")] = '\0';
    ws_client *c2 = expect_accepted("chatctl token in ?token=", out, false, user);
    free(out);
    ck_assert_msg(ws_client_shutdown(c1, 5000) == CHAT_OK, "close handshake not answered");
    ck_assert_msg(ws_client_shutdown(c2, 5000) == CHAT_OK, "close handshake not answered");
}
END_TEST

START_TEST(bad_tokens_get_401)
{
    char user[80], p[512];
    test_stack_unique_id("eve", user, sizeof user);
    const char *secret = stack.cfg.jwt_secret;
    long long now = (long long)time(NULL);
    char *t;

    expect_401("no token at all", NULL, false);
    expect_401("empty token", "", false);
    expect_401("not a JWT", "not-a-token", false);
    expect_401("not a JWT", "not-a-token", true);
    expect_401("three empty parts", "..", false);

    snprintf(p, sizeof p, "{\"sub\":\"%s\",\"exp\":%lld}", user, now - 120);
    t = test_jwt_forge(HS256, p, secret, "HS256");
    expect_401("expired 2 minutes ago", t, false);
    expect_401("expired 2 minutes ago", t, true);
    free(t);

    snprintf(p, sizeof p, "{\"sub\":\"%s\",\"exp\":%lld,\"nbf\":%lld}", user, now + 3600, now + 300);
    t = test_jwt_forge(HS256, p, secret, "HS256");
    expect_401("not valid before 5 minutes from now", t, false);
    expect_401("not valid before 5 minutes from now", t, true);
    free(t);

    snprintf(p, sizeof p, "{\"sub\":\"%s\",\"exp\":%lld}", user, now + 3600);
    t = test_jwt_forge(HS256, p, OTHER_SECRET, "HS256");
    expect_401("signed with another secret", t, false);
    expect_401("signed with another secret", t, true);
    free(t);

    t = test_jwt_forge("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, NULL, NULL);
    expect_401("alg none, no signature", t, false);
    expect_401("alg none, no signature", t, true);
    free(t);

    t = test_jwt_forge("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, secret, "HS256");
    expect_401("alg none with an HS256 signature", t, false);
    free(t);

    t = test_jwt_forge("{\"alg\":\"RS256\",\"typ\":\"JWT\"}", p, secret, "HS256");
    expect_401("alg RS256 (HMAC-signed with the secret)", t, false);
    expect_401("alg RS256 (HMAC-signed with the secret)", t, true);
    free(t);

    t = test_jwt_forge("{\"alg\":\"HS512\",\"typ\":\"JWT\"}", p, secret, "HS512");
    expect_401("alg HS512 with the right secret", t, false);
    free(t);

    t = test_jwt_forge(HS256, p, secret, NULL);
    expect_401("HS256 without a signature", t, false);
    free(t);

    snprintf(p, sizeof p, "{\"sub\":\"%s\"}", user);
    t = test_jwt_forge(HS256, p, secret, "HS256");
    expect_401("no exp claim", t, false);
    free(t);

    snprintf(p, sizeof p, "{\"exp\":%lld}", now + 3600);
    t = test_jwt_forge(HS256, p, secret, "HS256");
    expect_401("no sub claim", t, false);
    free(t);

    /* a token for the query given as "Bearer" in the wrong header scheme */
    snprintf(p, sizeof p, "{\"sub\":\"%s\",\"exp\":%lld}", user, now + 3600);
    t = test_jwt_forge(HS256, p, secret, "HS256");
    {
        char auth[CHAT_JWT_MAX_LEN + 64];
        snprintf(auth, sizeof auth, "Authorization: Basic %s", t);
        const char *headers[] = {auth, NULL};
        ws_connect_opts o = {.host = stack.gateway_host,
                             .port = stack.gateway_port,
                             .path = "/ws",
                             .headers = headers,
                             .timeout_ms = 10000};
        ws_client *c = NULL;
        ws_connect_info info;
        chat_status s = ws_client_connect(&o, &c, &info);
        ws_client_destroy(c);
        ck_assert_msg(s == CHAT_ERR_DENIED && info.http_status == 401,
                      "Authorization: Basic <token>: %s, HTTP %d (want 401)", chat_status_str(s), info.http_status);
    }
    /* and the same token where it belongs works: the refusals above were about the tokens */
    ws_client *ok = expect_accepted("the good token after the bad ones", t, true, user);
    free(t);
    ck_assert_msg(ws_client_shutdown(ok, 5000) == CHAT_OK, "close handshake not answered");
}
END_TEST

START_TEST(non_member_cannot_post)
{
    char alice[80], bob[80], mallory[80], conv[80], cmid[80], cmid_ok[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("mallory", mallory, sizeof mallory);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("k", cmid, sizeof cmid);
    test_stack_unique_id("k", cmid_ok, sizeof cmid_ok);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, alice, bob, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create exited %d: %s", rc, out ? out : "");
    free(out);

    char why[600];
    ws_client *a = NULL, *m = NULL;
    json_t *hello = NULL;
    ck_assert_msg(test_stack_connect(&stack, alice, 10000, &a, &hello, why, sizeof why) == CHAT_OK, "%s", why);
    json_decref(hello);
    ck_assert_msg(test_stack_connect(&stack, mallory, 10000, &m, &hello, why, sizeof why) == CHAT_OK, "%s", why);
    json_decref(hello);

    json_t *f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cmid, "body", "let me in");
    ck_assert_int_eq(ws_client_send_json(m, f), CHAT_OK);
    json_decref(f);
    json_t *skipped = json_array(), *err = NULL;
    chat_status s = test_recv_type(m, "error", 10000, &err, skipped);
    ck_assert_msg(s == CHAT_OK, "non-member's send: no error frame within 10 s (%s); got %s", chat_status_str(s),
                  test_json(skipped));
    ck_assert_msg(json_array_size(skipped) == 0, "non-member got other frames first: %s", test_json(skipped));
    const char *code = test_str(err, "code"), *ref = test_str(err, "ref");
    ck_assert_msg(
        code && strcmp(code, "not_member") == 0 && ref && strcmp(ref, cmid) == 0,
        "non-member's send answered with %s, want {\"type\":\"error\",\"ref\":\"%s\",\"code\":\"not_member\"}",
        test_json(err), cmid);
    json_decref(err);

    /* the member then posts; the member gets it, the non-member never sees it or the refused one */
    f = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cmid_ok, "body", "members only");
    ck_assert_int_eq(ws_client_send_json(a, f), CHAT_OK);
    json_decref(f);
    json_t *ack = NULL;
    s = test_recv_type(a, "ack", 15000, &ack, skipped);
    ck_assert_msg(s == CHAT_OK, "member's send: no ack (%s); got %s", chat_status_str(s), test_json(skipped));
    ck_assert_msg(test_int(ack, "seq") == 1, "member's first message got %s, want seq 1 (the refused one took none)",
                  test_json(ack));
    json_decref(ack);
    /* what the member saw: only its own message */
    size_t i;
    json_array_foreach(skipped, i, f)
    {
        const char *t = test_str(f, "type");
        ck_assert_msg(
            t && (strcmp(t, "members") == 0 ||
                  (strcmp(t, "msg") == 0 && strcmp(test_str(f, "cmid") ? test_str(f, "cmid") : "", cmid_ok) == 0)),
            "member saw %s", test_json(f));
    }
    json_array_clear(skipped);
    /* the non-member: nothing of the conversation for 2 s, and its connection still works */
    json_t *none = NULL;
    s = ws_client_recv_json(m, 2000, &none);
    ck_assert_msg(s == CHAT_ERR_TIMEOUT, "non-member received %s (%s)", test_json(none), chat_status_str(s));
    ck_assert_int_eq(ws_client_send_text(m, "{\"type\":\"ping\"}", 15), CHAT_OK);
    json_t *pong = NULL;
    s = test_recv_type(m, "pong", 10000, &pong, skipped);
    ck_assert_msg(s == CHAT_OK && json_array_size(skipped) == 0, "non-member's connection after the refusal: %s, %s",
                  chat_status_str(s), test_json(skipped));
    json_decref(pong);

    out = NULL;
    rc = test_stack_chatctl(&stack, &out, "history", conv, NULL);
    ck_assert_msg(rc == 0, "chatctl history exited %d", rc);
    ck_assert_msg(strstr(out, cmid) == NULL && strstr(out, "let me in") == NULL,
                  "the refused message is in the history: %s", out);
    ck_assert_msg(strstr(out, cmid_ok) != NULL, "the member's message is not in the history: %s", out);
    free(out);

    json_decref(skipped);
    ck_assert_msg(ws_client_shutdown(a, 5000) == CHAT_OK, "close handshake not answered");
    ck_assert_msg(ws_client_shutdown(m, 5000) == CHAT_OK, "close handshake not answered");
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_auth");
    return test_run_core(
        &stack, "auth", 90, NULL, NULL, NULL,
        (const TTest *const[]){good_tokens_header_and_query, bad_tokens_get_401, non_member_cannot_post, NULL});
}
