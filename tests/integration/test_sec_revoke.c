/* Token revocation (issue 19, finding 8): `chatctl revoke user` closes the user's live sessions with
 * 4001 within 2 s and its old tokens are refused at the upgrade (401 "token revoked") while a token
 * issued afterwards works; `chatctl revoke token` refuses one token (by jti) and closes its session
 * while the user's other token works; a gateway started after a revocation refuses the revoked token
 * from its first upgrade (503 until it has the revocations, then 401, never 101). Tokens are made
 * here (HS256 with the stack's secret), not by the code under test. Against the stack. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test_check.h"
#include "test_jwt.h"
#include "test_ops.h"

#define PROG "test_sec_revoke"
#define REVOKE_BOUND_MS 2000 /* a revocation reaches every gateway within this (docs/operations.md) */

static test_stack stack;

/* An HS256 token of the stack's secret for user, issued at iat (0: no iat claim), with jti ("" or
 * NULL: none), valid an hour. The caller frees it. */
/* A token of user expiring at exp (unix s), with iat and jti when given. */
static char *token_until(const char *user, long long exp, long long iat, const char *jti)
{
    char payload[512];
    int n = snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"exp\":%lld", user, exp);
    if (iat)
        n += snprintf(payload + n, sizeof payload - (size_t)n, ",\"iat\":%lld", iat);
    if (jti && jti[0])
        n += snprintf(payload + n, sizeof payload - (size_t)n, ",\"jti\":\"%s\"", jti);
    snprintf(payload + n, sizeof payload - (size_t)n, "}");
    return test_jwt_forge("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, stack.cfg.jwt_secret, "HS256");
}

static char *token_for(const char *user, long long iat, const char *jti)
{
    return token_until(user, (long long)time(NULL) + 3600, iat, jti);
}

/* Upgrades at port (0: the stack's gateway) with token. 101: *out is the session (hello read);
 * otherwise the HTTP status, the refusal's body in body. */
static int upgrade(int port, const char *token, ws_client **out, char *body, size_t bodysz)
{
    return test_ws_upgrade(port ? "127.0.0.1" : stack.gateway_host, port ? port : stack.gateway_port, token, NULL, out,
                           body, bodysz);
}

static ws_client *session(const char *token)
{
    ws_client *c = NULL;
    char body[1024] = "";
    int status = upgrade(0, token, &c, body, sizeof body);
    ck_assert_msg(status == 101, "upgrade with a good token: %d %s", status, body);
    return c;
}

static void expect_refused(int port, const char *what, const char *token)
{
    char body[1024] = "";
    int status = upgrade(port, token, NULL, body, sizeof body);
    ck_assert_msg(status == 401 && strstr(body, "token revoked"), "%s: want 401 \"token revoked\", got %d \"%s\"", what,
                  status, body);
}

/* Waits for c to be closed by the server: the close code, and in *ms when, in ms after since (a
 * test_mono_ms() time). */
static int closed_code(ws_client *c, int64_t since, int64_t *ms)
{
    json_t *f = NULL;
    chat_status st;
    while ((st = test_recv_by(c, since + 10000, &f)) == CHAT_OK)
        json_decref(f);
    *ms = test_mono_ms() - since;
    return st == CHAT_ERR_IO ? ws_client_close_code(c) : 0;
}

/* The session still answers a ping. */
static void expect_alive(ws_client *c, const char *what)
{
    json_t *ping = json_pack("{s:s}", "type", "ping"), *pong = NULL;
    ck_assert_msg(ws_client_send_json(c, ping) == CHAT_OK, "%s: send ping", what);
    json_decref(ping);
    ck_assert_msg(test_recv_type(c, "pong", 5000, &pong, NULL) == CHAT_OK, "%s: closed or silent", what);
    json_decref(pong);
}

/* chatctl revoke started on a thread of its own: the gateways close what it hits as soon as its
 * write is in the broker, while chatctl still waits to read it back from the broker's disk
 * (CHAT_NATS_SYNC of an interval: docs/operations.md, "Revoking tokens"). */
typedef struct revoke_run {
    pthread_t thread;
    const char *a1, *a2;
    int rc;
    char *out;
} revoke_run;

static void *revoke_thread(void *arg)
{
    revoke_run *r = arg;
    r->rc = test_stack_chatctl(&stack, &r->out, "revoke", r->a1, r->a2, (char *)NULL);
    return NULL;
}

static void revoke_start(revoke_run *r, const char *a1, const char *a2)
{
    r->a1 = a1;
    r->a2 = a2;
    r->rc = -1;
    r->out = NULL;
    ck_assert_int_eq(pthread_create(&r->thread, NULL, revoke_thread, r), 0);
}

/* Its JSON line once it ended (the test fails unless it exits 0). */
static json_t *revoke_end(revoke_run *r)
{
    pthread_join(r->thread, NULL);
    ck_assert_msg(r->rc == 0, "chatctl revoke %s %s: exit %d, %s", r->a1, r->a2, r->rc, r->out ? r->out : "");
    json_t *j = json_loads(r->out, 0, NULL);
    ck_assert_msg(j != NULL, "chatctl revoke printed no JSON: %s", r->out);
    free(r->out);
    return j;
}

/* chatctl revoke ARGS: its JSON line (the test fails unless it exits 0). */
static json_t *chatctl_revoke(const char *a1, const char *a2, const char *a3, const char *a4)
{
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "revoke", a1, a2, a3, a4, (char *)NULL);
    ck_assert_msg(rc == 0, "chatctl revoke %s %s: exit %d, %s", a1, a2, rc, out ? out : "");
    json_t *j = json_loads(out, 0, NULL);
    ck_assert_msg(j != NULL, "chatctl revoke printed no JSON: %s", out);
    free(out);
    return j;
}

START_TEST(user_revoked_sessions_closed_old_tokens_refused)
{
    char user[80], other[80];
    test_stack_unique_id("rvu", user, sizeof user);
    test_stack_unique_id("rvo", other, sizeof other);
    long long issued = (long long)time(NULL);
    char *old = token_for(user, issued, "old-1"), *no_iat = token_for(user, 0, NULL);
    char *other_token = token_for(other, issued, NULL);
    ws_client *a = session(old), *b = session(no_iat), *bystander = session(other_token);

    int64_t t0 = test_mono_ms(); /* from chatctl's start: its process, NATS connect and put included */
    revoke_run run;
    revoke_start(&run, "user", user);
    int64_t ms_a, ms_b;
    int code_a = closed_code(a, t0, &ms_a), code_b = closed_code(b, t0, &ms_b);
    json_t *r = revoke_end(&run);
    int64_t not_before = test_int(r, "not_before");
    ck_assert_msg(not_before > issued, "not_before %lld is not after the old token's iat %lld", (long long)not_before,
                  issued);
    json_decref(r);
    ck_assert_msg(code_a == 4001 && ms_a <= REVOKE_BOUND_MS, "live session (iat): close %d after %lld ms, want 4001 "
                  "within %d", code_a, (long long)ms_a, REVOKE_BOUND_MS);
    ck_assert_msg(code_b == 4001 && ms_b <= REVOKE_BOUND_MS, "live session (no iat): close %d after %lld ms", code_b,
                  (long long)ms_b);
    fprintf(stderr, PROG ": user revoked: sessions closed %lld and %lld ms after chatctl revoke started\n",
            (long long)ms_a, (long long)ms_b);
    expect_alive(bystander, "another user's session");

    expect_refused(0, "the old token", old);
    expect_refused(0, "a token without iat", no_iat);
    /* a token issued after the revocation (from not_before on) works */
    while ((long long)time(NULL) < not_before)
        usleep(50000);
    char *fresh = token_for(user, (long long)time(NULL), "fresh-1");
    ck_assert_int_eq(upgrade(0, fresh, NULL, NULL, 0), 101);

    ws_client_destroy(a);
    ws_client_destroy(b);
    ws_client_shutdown(bystander, 2000);
    free(old);
    free(no_iat);
    free(other_token);
    free(fresh);
}
END_TEST

START_TEST(token_revoked_by_jti_other_token_works)
{
    char user[80], jti_a[80], jti_c[80];
    test_stack_unique_id("rvt", user, sizeof user);
    test_stack_unique_id("ja", jti_a, sizeof jti_a);
    test_stack_unique_id("jc", jti_c, sizeof jti_c);
    long long now = (long long)time(NULL);
    char *ta = token_for(user, now, jti_a), *tb = token_for(user, now, "b-kept"), *tc = token_for(user, now, jti_c);
    ws_client *a = session(ta), *b = session(tb);

    int64_t t0 = test_mono_ms();
    revoke_run run;
    revoke_start(&run, "token", ta); /* the token itself: chatctl reads its jti and exp */
    int64_t ms;
    int code = closed_code(a, t0, &ms);
    json_t *r = revoke_end(&run);
    ck_assert_str_eq(test_str(r, "jti"), jti_a);
    json_decref(r);
    ck_assert_msg(code == 4001 && ms <= REVOKE_BOUND_MS, "session of the revoked token: close %d after %lld ms", code,
                  (long long)ms);
    fprintf(stderr, PROG ": token revoked: its session closed %lld ms after chatctl revoke started\n", (long long)ms);
    expect_alive(b, "the user's session of another token");
    expect_refused(0, "the revoked token", ta);
    ck_assert_int_eq(upgrade(0, tb, NULL, NULL, 0), 101);

    /* by jti and expiry, as a backend that kept only those */
    char until[32];
    snprintf(until, sizeof until, "%lld", now + 3600);
    json_decref(chatctl_revoke("token", jti_c, "--until", until));
    int64_t deadline = test_mono_ms() + REVOKE_BOUND_MS;
    char body[1024] = "";
    int status;
    while ((status = upgrade(0, tc, NULL, body, sizeof body)) == 101 && test_mono_ms() < deadline)
        usleep(100000);
    ck_assert_msg(status == 401 && strstr(body, "token revoked"), "token revoked by jti: %d %s", status, body);

    ws_client_destroy(a);
    ws_client_shutdown(b, 2000);
    free(ta);
    free(tb);
    free(tc);
}
END_TEST

START_TEST(new_gateway_refuses_revoked_token_from_first_upgrade)
{
    char user[80], other[80];
    test_stack_unique_id("rvg", user, sizeof user);
    test_stack_unique_id("rvk", other, sizeof other);
    char *old = token_for(user, (long long)time(NULL), "g-1"), *good = token_for(other, (long long)time(NULL), NULL);
    json_decref(chatctl_revoke("user", user, NULL, NULL));

    test_gateway gw;
    char why[2048];
    ck_assert_msg(test_gateway_spawn(&stack, "revoke", NULL, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    /* from the first answer on: 503 while it loads the revocations, then 401; never a session */
    int64_t deadline = test_mono_ms() + 20000;
    int status = 0, answers = 0, loading = 0;
    char body[1024];
    while (status != 401 && test_mono_ms() < deadline) {
        body[0] = '\0';
        status = upgrade(gw.port, old, NULL, body, sizeof body);
        ck_assert_msg(status != 101, "the new gateway let the revoked token in (answer %d)", answers + 1);
        if (status == 0) { /* not listening yet */
            ck_assert_msg(test_gateway_running(&gw), "gateway exited: %s", test_gateway_log_tail(&gw, 1500));
            usleep(20000);
            continue;
        }
        answers++;
        loading += status == 503;
        ck_assert_msg(status == 503 || status == 401, "answer %d: %d %s", answers, status, body);
    }
    ck_assert_msg(status == 401 && strstr(body, "token revoked"), "last answer %d %s", status, body);
    ck_assert_msg(test_gateway_wait_ready(&gw, false, 10000, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_int_eq(upgrade(gw.port, good, NULL, NULL, 0), 101);
    fprintf(stderr, PROG ": new gateway: %d answers before 401, %d of them 503 (loading)\n", answers - 1, loading);
    test_gateway_stop(&gw, 10000);

    /* one that cannot read the revocations at all (no NATS) lets nobody in: 503, not a session */
    char url[64];
    snprintf(url, sizeof url, "CHAT_NATS_URL=nats://127.0.0.1:%d", test_free_port());
    const char *env[] = {url, NULL};
    ck_assert_msg(test_gateway_spawn(&stack, "revoke-nonats", env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    deadline = test_mono_ms() + 20000;
    while ((status = upgrade(gw.port, good, NULL, body, sizeof body)) == 0 && test_mono_ms() < deadline) {
        ck_assert_msg(test_gateway_running(&gw), "gateway exited: %s", test_gateway_log_tail(&gw, 1500));
        usleep(20000);
    }
    ck_assert_msg(status == 503 && strstr(body, "revocation"), "gateway without the revocations: %d %s", status, body);
    test_gateway_stop(&gw, 10000);
    free(old);
    free(good);
}
END_TEST

/* Sends {"type":"auth","token":token} on c: the frame that answers it ("auth" or "error"). */
static json_t *renew(ws_client *c, const char *token)
{
    json_t *f = json_pack("{s:s, s:s}", "type", "auth", "token", token), *answer = NULL;
    ck_assert_msg(ws_client_send_json(c, f) == CHAT_OK, "send auth");
    json_decref(f);
    int64_t end = test_mono_ms() + 5000;
    while (test_recv_by(c, end, &answer) == CHAT_OK) {
        const char *type = test_str(answer, "type");
        if (strcmp(type, "auth") == 0 || strcmp(type, "error") == 0)
            return answer;
        json_decref(answer);
    }
    ck_abort_msg("no answer to auth within 5 s");
    return NULL;
}

/* A session lives as long as its token (docs/protocol.md, close 4003): one left alone is closed
 * at its exp; one that sent a newer token of its user in an auth frame lives on; a token of
 * another user, or a revoked one, renews nothing (error bad_token, and the session still ends at
 * its first token's exp). */
START_TEST(session_ends_at_token_exp_unless_renewed)
{
    char user[80], other[80], jti[80];
    test_stack_unique_id("exu", user, sizeof user);
    test_stack_unique_id("exo", other, sizeof other);
    test_stack_unique_id("exj", jti, sizeof jti);
    char until[32];
    snprintf(until, sizeof until, "%lld", (long long)time(NULL) + 600);
    json_decref(chatctl_revoke("token", jti, "--until", until)); /* before the clock starts: it confirms */
    long long now = (long long)time(NULL), exp = now + 3;
    char *short_a = token_until(user, exp, now, NULL), *short_b = token_until(user, exp, now, NULL);
    char *short_c = token_until(user, exp, now, NULL), *longer = token_until(user, now + 600, now, NULL);
    char *others = token_until(other, now + 600, now, NULL), *revoked = token_until(user, now + 600, now, jti);
    ws_client *left = session(short_a), *renewed = session(short_b), *refused = session(short_c);

    json_t *a = renew(renewed, longer);
    ck_assert_msg(strcmp(test_str(a, "type"), "auth") == 0 && test_int(a, "exp") == now + 600,
                  "auth with a newer token of the user: %s", test_str(a, "type"));
    json_decref(a);
    const char *bad[] = {others, revoked, "not.a.token"};
    const char *what[] = {"another user's token", "a revoked token", "a malformed token"};
    for (int i = 0; i < 3; i++) {
        a = renew(refused, bad[i]);
        ck_assert_msg(strcmp(test_str(a, "type"), "error") == 0 && strcmp(test_str(a, "code"), "bad_token") == 0,
                      "auth with %s: %s %s", what[i], test_str(a, "type"), test_str(a, "code"));
        json_decref(a);
    }

    /* closed at exp (the gateway's sweep runs every second), not before */
    int64_t t0 = test_mono_ms();
    int64_t ms;
    int code = closed_code(left, t0, &ms);
    long long closed_at = (long long)time(NULL);
    ck_assert_msg(code == 4003, "a session whose token expired: close %d, want 4003", code);
    ck_assert_msg(closed_at >= exp && closed_at <= exp + 3, "closed at %lld, its token's exp %lld", closed_at, exp);
    code = closed_code(refused, t0, &ms);
    ck_assert_msg(code == 4003, "a session refused a renewal: close %d, want 4003 at its first exp", code);
    expect_alive(renewed, "the session renewed with a newer token");
    fprintf(stderr, PROG ": token expiry: closed with 4003 %lld s after exp; the renewed session lives on\n",
            closed_at - exp);
    ws_client_destroy(left);
    ws_client_destroy(renewed);
    ws_client_destroy(refused);
    free(short_a);
    free(short_b);
    free(short_c);
    free(longer);
    free(others);
    free(revoked);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create(PROG);
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, user_revoked_sessions_closed_old_tokens_refused);
    tcase_add_test(tc, token_revoked_by_jti_other_token_works);
    tcase_add_test(tc, new_gateway_refuses_revoked_token_from_first_upgrade);
    tcase_add_test(tc, session_ends_at_token_exp_unless_renewed);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
