/* wss:// with a certificate the test makes (issue 6, TLS for clients). The test makes a
 * self-signed certificate and key with `openssl req -x509` in a temporary directory, starts a
 * gateway of its own with CHAT_TLS_CERT/CHAT_TLS_KEY (the stack's NATS, Redis and worker), and:
 *   - over TLS (tests/support/tls_tunnel: OpenSSL, the server's certificate verified against the
 *     test's certificate and 127.0.0.1): /healthz, /readyz and /metrics answer (https://);
 *     two users connect over wss://, get hello, one sends and gets its ack, both get the msg;
 *   - a client that trusts another certificate cannot connect (the test really talks to this
 *     certificate);
 *   - plain ws:// and http:// to the same port fail;
 *   - SIGTERM closes the wss:// clients with 1001;
 *   - a gateway with CHAT_TLS_CERT and no CHAT_TLS_KEY does not start and names the setting.
 * Gateway logs: $CHAT_HOME/logs/test_ops_tls-*.log. */
#include <check.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_ops.h"
#include "tls_tunnel.h"

#define PROG "test_ops_tls"
#define say(...) (printf(__VA_ARGS__), fflush(stdout))

static test_stack stack;
static char tmpdir[PATH_MAX];
static test_gateway gw;

static void make_cert(const char *name, const char *cn)
{
    fflush(NULL);
    ck_assert_msg(system("command -v openssl >/dev/null 2>&1") == 0,
                  "the openssl command is not installed (Debian package openssl): it makes the test certificate");
    char cmd[4 * PATH_MAX];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
             "-subj '/CN=%s' -addext 'subjectAltName=IP:127.0.0.1,DNS:localhost' "
             "-keyout '%s/%s.key' -out '%s/%s.crt' >'%s/openssl.log' 2>&1",
             cn, tmpdir, name, tmpdir, name, tmpdir);
    fflush(NULL);
    int rc = system(cmd);
    ck_assert_msg(rc == 0, "openssl req -x509 failed (%d): %s (output in %s/openssl.log)", rc, cmd, tmpdir);
}

static void setup(void)
{
    memset(&gw, 0, sizeof gw);
}

static void teardown(void)
{
    test_gateway_stop(&gw, 10000);
}

/* Connects as user through the tunnel (wss:// to the gateway) and checks the hello. */
static ws_client *connect_wss(tls_tunnel *tun, const char *user)
{
    test_gateway via = gw;
    via.port = tls_tunnel_port(tun);
    ws_client *c = NULL;
    json_t *hello = NULL;
    char why[700];
    chat_status s = test_gateway_connect(&stack, &via, user, 10000, &c, &hello, why, sizeof why);
    char last[512];
    tls_tunnel_last(tun, last, sizeof last);
    ck_assert_msg(s == CHAT_OK, "wss:// connect as %s: %s (TLS: %s)", user, why, last);
    ck_assert_msg(strcmp(test_str(hello, "type") ? test_str(hello, "type") : "", "hello") == 0 &&
                      strcmp(test_str(hello, "user") ? test_str(hello, "user") : "", user) == 0,
                  "first frame over wss:// is not a hello for %s: %s", user, test_json(hello));
    json_decref(hello);
    return c;
}

START_TEST(wss_with_a_test_certificate)
{
    make_cert("server", "chat-test-gateway");
    make_cert("other", "someone-else");
    char cert[PATH_MAX + 32], key[PATH_MAX + 32], other[PATH_MAX + 32];
    snprintf(cert, sizeof cert, "%s/server.crt", tmpdir);
    snprintf(key, sizeof key, "%s/server.key", tmpdir);
    snprintf(other, sizeof other, "%s/other.crt", tmpdir);
    char env_cert[PATH_MAX + 64], env_key[PATH_MAX + 64];
    snprintf(env_cert, sizeof env_cert, "CHAT_TLS_CERT=%s", cert);
    snprintf(env_key, sizeof env_key, "CHAT_TLS_KEY=%s", key);
    const char *env[] = {env_cert, env_key, "CHAT_WS_RATE=1000", "CHAT_WS_USER_RATE=1000", NULL};
    char why[2400];
    ck_assert_msg(test_gateway_spawn(&stack, "wss", env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&gw, true, 20000, why, sizeof why) == CHAT_OK, "%s", why);

    tls_tunnel *tun = NULL;
    ck_assert_msg(tls_tunnel_start("127.0.0.1", gw.port, cert, "localhost", "127.0.0.1", &tun, why, sizeof why) ==
                      CHAT_OK,
                  "%s", why);
    char via[64], body[4096], last[512];
    snprintf(via, sizeof via, "127.0.0.1:%d", tls_tunnel_port(tun));

    /* https:// health: /readyz may take a moment (the first Redis probe) */
    int st = test_ops_http_get(via, "/healthz", body, sizeof body, 5000);
    tls_tunnel_last(tun, last, sizeof last);
    ck_assert_msg(st == 200, "GET https://%s/healthz answered %d (TLS: %s): %s", gw.listen, st, last, body);
    int64_t t0 = test_mono_ms();
    while ((st = test_ops_http_get(via, "/readyz", body, sizeof body, 5000)) != 200 && test_mono_ms() - t0 < 10000)
        usleep(100000);
    ck_assert_msg(st == 200, "GET https://%s/readyz answered %d within 10 s: %s", gw.listen, st, body);
    ck_assert_msg(strstr(body, "nats ok") != NULL, "https /readyz body does not say \"nats ok\": %s", body);
    say(PROG ": https://%s/readyz 200 (%s)\n", gw.listen, last);

    /* two users over wss://, one conversation */
    char alice[80], bob[80], conv[80], cmid[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bob", bob, sizeof bob);
    test_stack_unique_id("tls", conv, sizeof conv);
    test_stack_unique_id("m", cmid, sizeof cmid);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, alice, bob, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create %s: exit %d: %s", conv, rc, out ? out : "");
    free(out);
    ws_client *a = connect_wss(tun, alice);
    ws_client *b = connect_wss(tun, bob);

    json_t *send = json_pack("{s:s, s:s, s:s, s:s}", "type", "send", "conv", conv, "cmid", cmid, "body", "over TLS");
    ck_assert_msg(ws_client_send_json(a, send) == CHAT_OK, "send over wss://: %s", ws_client_error(a));
    json_decref(send);
    json_t *ack = NULL, *skipped = json_array();
    chat_status s = test_recv_type(a, "ack", 10000, &ack, skipped);
    ck_assert_msg(s == CHAT_OK, "no ack over wss:// within 10 s: %s (%s); other frames: %s", chat_status_str(s),
                  ws_client_error(a), test_json(skipped));
    ck_assert_msg(strcmp(test_str(ack, "cmid") ? test_str(ack, "cmid") : "", cmid) == 0 && test_int(ack, "seq") == 1 &&
                      test_str(ack, "id"),
                  "ack over wss:// is not for %s with seq 1 and an id: %s", cmid, test_json(ack));
    json_t *msg = NULL;
    s = test_recv_type(b, "msg", 10000, &msg, NULL);
    ck_assert_msg(s == CHAT_OK, "%s got no msg over wss:// within 10 s: %s (%s)", bob, chat_status_str(s),
                  ws_client_error(b));
    ck_assert_msg(strcmp(test_str(msg, "body") ? test_str(msg, "body") : "", "over TLS") == 0 &&
                      strcmp(test_str(msg, "id") ? test_str(msg, "id") : "", test_str(ack, "id")) == 0 &&
                      strcmp(test_str(msg, "from") ? test_str(msg, "from") : "", alice) == 0,
                  "msg over wss:// does not match the ack %s: %s", test_json(ack), test_json(msg));
    json_decref(ack);
    json_decref(msg);
    json_decref(skipped);

    /* https:// /metrics sees the two connections */
    char mwhy[600];
    st = test_ops_http_get(via, "/metrics", NULL, 0, 5000);
    ck_assert_msg(st == 200, "GET https://%s/metrics answered %d", gw.listen, st);
    json_t *m = test_metrics_scrape(via, mwhy, sizeof mwhy);
    ck_assert_msg(m != NULL, "%s", mwhy);
    ck_assert_msg(test_metric(m, "chat_gateway_connections") == 2.0,
                  "chat_gateway_connections over https is %g with two wss:// clients",
                  test_metric(m, "chat_gateway_connections"));
    ck_assert_msg(test_metric(m, "chat_gateway_acks_total") == 1.0, "chat_gateway_acks_total is %g after one send",
                  test_metric(m, "chat_gateway_acks_total"));
    json_decref(m);
    unsigned ok_handshakes = tls_tunnel_handshakes(tun);
    ck_assert_msg(tls_tunnel_failures(tun) == 0, "TLS handshakes failed through the tunnel");
    tls_tunnel_last(tun, last, sizeof last);
    say(PROG ": wss://%s: hello, send, ack and msg over TLS (%u handshakes, %s)\n", gw.listen, ok_handshakes, last);

    /* a client that trusts another certificate is refused by its own TLS check */
    tls_tunnel *wrong = NULL;
    ck_assert_msg(tls_tunnel_start("127.0.0.1", gw.port, other, "localhost", "127.0.0.1", &wrong, why, sizeof why) ==
                      CHAT_OK,
                  "%s", why);
    {
        test_gateway v = gw;
        v.port = tls_tunnel_port(wrong);
        ws_client *c = NULL;
        json_t *h = NULL;
        char w2[700];
        s = test_gateway_connect(&stack, &v, alice, 5000, &c, &h, w2, sizeof w2);
        ck_assert_msg(s != CHAT_OK, "a client trusting another certificate connected: %s", test_json(h));
        ck_assert_msg(tls_tunnel_failures(wrong) == 1 && tls_tunnel_handshakes(wrong) == 0,
                      "the handshake against the wrong CA did not fail (%u failures, %u handshakes)",
                      tls_tunnel_failures(wrong), tls_tunnel_handshakes(wrong));
        tls_tunnel_last(wrong, last, sizeof last);
        say(PROG ": a client trusting another certificate: %s\n", last);
    }
    tls_tunnel_stop(wrong);

    /* plain ws:// and http:// to the TLS port fail */
    {
        ws_connect_opts o = {.host = "127.0.0.1", .port = gw.port, .path = "/ws", .timeout_ms = 5000};
        char *token = test_stack_token(&stack, alice, 600);
        o.token = token;
        ws_connect_info info;
        ws_client *c = NULL;
        s = ws_client_connect(&o, &c, &info);
        free(token);
        ck_assert_msg(s != CHAT_OK && info.http_status != 101, "plain ws:// to the wss:// port %d upgraded (HTTP %d)",
                      gw.port, info.http_status);
        ws_client_destroy(c);
        say(PROG ": plain ws:// to the TLS port: %s (HTTP %d: %s)\n", chat_status_str(s), info.http_status, info.error);
        st = test_ops_http_get(gw.listen, "/readyz", body, sizeof body, 3000);
        ck_assert_msg(st != 200, "plain http://%s/readyz answered 200 on the TLS port", gw.listen);
    }
    ck_assert_msg(test_gateway_running(&gw), "the gateway exited after plain-text clients: %s",
                  test_gateway_log_tail(&gw, 1500));

    /* the wss:// clients still work, and SIGTERM closes them with 1001 */
    json_t *ping = json_pack("{s:s}", "type", "ping"), *pong = NULL;
    ck_assert(ws_client_send_json(a, ping) == CHAT_OK);
    json_decref(ping);
    s = test_recv_type(a, "pong", 5000, &pong, NULL);
    ck_assert_msg(s == CHAT_OK, "no pong over wss:// after the plain-text attempts: %s", ws_client_error(a));
    json_decref(pong);
    ck_assert_int_eq(kill(gw.pid, SIGTERM), 0);
    ws_client *clients[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        ws_message mm;
        int64_t dl = test_mono_ms() + 8000;
        int code = 0;
        while (test_mono_ms() < dl && ws_client_recv(clients[i], (int)(dl - test_mono_ms()), &mm) == CHAT_OK) {
            bool close = mm.opcode == WS_OP_CLOSE;
            code = close ? mm.close_code : code;
            ws_message_clear(&mm);
            if (close)
                break;
        }
        ck_assert_msg(code == 1001, "wss:// client %d: close code %d after SIGTERM, want 1001 (%s)", i + 1, code,
                      ws_client_error(clients[i]));
        ws_client_destroy(clients[i]);
    }
    ck_assert_msg(test_gateway_wait_exit(&gw, 10000) == CHAT_OK,
                  "the wss:// gateway did not exit within 10 s of SIGTERM");
    ck_assert_msg(WIFEXITED(gw.exit_status) && WEXITSTATUS(gw.exit_status) == 0,
                  "the wss:// gateway exited with status 0x%x after SIGTERM", gw.exit_status);
    tls_tunnel_stop(tun);
    say(PROG ": SIGTERM: both wss:// clients got 1001, the gateway exited 0\n");
}
END_TEST

START_TEST(cert_without_key_does_not_start)
{
    make_cert("server", "chat-test-gateway");
    char env_cert[PATH_MAX + 64];
    snprintf(env_cert, sizeof env_cert, "CHAT_TLS_CERT=%s/server.crt", tmpdir);
    const char *env[] = {env_cert, "CHAT_TLS_KEY=", NULL};
    char why[2400];
    ck_assert_msg(test_gateway_spawn(&stack, "cert-only", env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_exit(&gw, 10000) == CHAT_OK,
                  "a gateway with CHAT_TLS_CERT and no CHAT_TLS_KEY still runs after 10 s");
    ck_assert_msg(!(WIFEXITED(gw.exit_status) && WEXITSTATUS(gw.exit_status) == 0),
                  "a gateway with CHAT_TLS_CERT and no CHAT_TLS_KEY exited 0");
    const char *log = test_gateway_log_tail(&gw, 2000);
    ck_assert_msg(strstr(log, "CHAT_TLS_KEY") != NULL, "its error does not name CHAT_TLS_KEY: %s", log);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    /* the certificates' directory, made and removed here (a failed test skips its teardown) */
    snprintf(tmpdir, sizeof tmpdir, "/tmp/chat-ops-tls-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        fprintf(stderr, PROG ": mkdtemp: %s\n", strerror(errno));
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("ops_tls");
    TCase *tc = tcase_create("tls");
    tcase_set_timeout(tc, 90);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, wss_with_a_test_certificate);
    tcase_add_test(tc, cert_without_key_does_not_start);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, PROG ": could not remove %s\n", tmpdir);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
