/* A backend posts with `chatctl send CONV --from USER --cmid K TEXT`; every connected member (the
 * poster's own devices too) gets it as a text msg from that user. Against the running stack. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "test_check.h"
#include "test_stack.h"

static test_stack stack;

static ws_client *connect_user(const char *user)
{
    ws_client *c = NULL;
    json_t *hello = NULL;
    char why[600];
    ck_assert_msg(test_stack_connect(&stack, user, 10000, &c, &hello, why, sizeof why) == CHAT_OK, "%s", why);
    const char *type = test_str(hello, "type");
    ck_assert_msg(type && strcmp(type, "hello") == 0, "first frame is not hello: %s", test_json(hello));
    json_decref(hello);
    return c;
}

/* The msg frame with cmid on c within timeout_ms; members frames are skipped, anything else
 * fails. */
static json_t *expect_msg(ws_client *c, const char *who, const char *cmid, int timeout_ms)
{
    int64_t deadline = test_mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - test_mono_ms();
        json_t *f = NULL;
        chat_status s = ws_client_recv_json(c, left > 0 ? (int)left : 0, &f);
        ck_assert_msg(s == CHAT_OK, "%s: no msg with cmid %s within %d ms: %s (%s)", who, cmid, timeout_ms,
                      chat_status_str(s), ws_client_error(c));
        const char *type = test_str(f, "type");
        if (type && strcmp(type, "members") == 0) {
            json_decref(f);
            continue;
        }
        ck_assert_msg(type && strcmp(type, "msg") == 0, "%s: unexpected frame %s", who, test_json(f));
        ck_assert_msg(test_str(f, "cmid") && strcmp(test_str(f, "cmid"), cmid) == 0, "%s: msg of another cmid: %s", who,
                      test_json(f));
        return f;
    }
}

static void check_msg(const json_t *f, const char *who, const char *conv, const char *from, const char *text,
                      int64_t seq)
{
    const char *c = test_str(f, "conv"), *fr = test_str(f, "from"), *kind = test_str(f, "kind");
    const char *body = test_str(f, "body"), *id = test_str(f, "id");
    int64_t ts = test_int(f, "ts"), now_ms = (int64_t)time(NULL) * 1000;
    ck_assert_msg(c && strcmp(c, conv) == 0, "%s: conv is not %s: %s", who, conv, test_json(f));
    ck_assert_msg(fr && strcmp(fr, from) == 0, "%s: from is not %s: %s", who, from, test_json(f));
    ck_assert_msg(kind && strcmp(kind, "text") == 0, "%s: kind is not text: %s", who, test_json(f));
    ck_assert_msg(body && strcmp(body, text) == 0, "%s: body is not \"%s\": %s", who, text, test_json(f));
    ck_assert_msg(id && id[0], "%s: no id: %s", who, test_json(f));
    ck_assert_msg(test_int(f, "seq") == seq, "%s: seq is not %lld: %s", who, (long long)seq, test_json(f));
    ck_assert_msg(ts > now_ms - 600000 && ts < now_ms + 60000, "%s: ts %lld is not around now: %s", who, (long long)ts,
                  test_json(f));
}

START_TEST(backend_post_reaches_members)
{
    char alice[80], bot[80], conv[80], k1[80], k2[80];
    test_stack_unique_id("alice", alice, sizeof alice);
    test_stack_unique_id("bot", bot, sizeof bot);
    test_stack_unique_id("conv", conv, sizeof conv);
    test_stack_unique_id("k", k1, sizeof k1);
    test_stack_unique_id("k", k2, sizeof k2);
    char *out = NULL;
    int rc = test_stack_chatctl(&stack, &out, "conv", "create", conv, alice, bot, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create exited %d: %s", rc, out ? out : "");
    free(out);

    ws_client *a = connect_user(alice), *b = connect_user(bot);
    const char *text1 = "Deploy finished: 3 services, \"all green\" ✅";
    const char *text2 = "second notice, with 'quotes' and a $HOME that is not expanded";

    int64_t t0 = test_mono_ms();
    rc = test_stack_chatctl(&stack, &out, "send", conv, "--from", bot, "--cmid", k1, text1, NULL);
    ck_assert_msg(rc == 0, "chatctl send exited %d: %s", rc, out ? out : "");
    free(out);
    json_t *fa = expect_msg(a, "alice", k1, 15000);
    int64_t latency = test_mono_ms() - t0;
    json_t *fb = expect_msg(b, "the poster's own connection", k1, 15000);
    check_msg(fa, "alice", conv, bot, text1, 1);
    check_msg(fb, "the poster's own connection", conv, bot, text1, 1);
    ck_assert_msg(strcmp(test_str(fa, "id"), test_str(fb, "id")) == 0, "two ids for one message: %s and %s",
                  test_json(fa), test_json(fb));
    json_decref(fa);
    json_decref(fb);

    rc = test_stack_chatctl(&stack, &out, "send", conv, "--from", bot, "--cmid", k2, text2, NULL);
    ck_assert_msg(rc == 0, "chatctl send exited %d: %s", rc, out ? out : "");
    free(out);
    fa = expect_msg(a, "alice", k2, 15000);
    check_msg(fa, "alice", conv, bot, text2, 2);
    json_decref(fa);

    /* the backend's view agrees */
    rc = test_stack_chatctl(&stack, &out, "history", conv, "--limit", "10", NULL);
    ck_assert_msg(rc == 0, "chatctl history exited %d: %s", rc, out ? out : "");
    ck_assert_msg(strstr(out, k1) && strstr(out, k2), "chatctl history lacks %s or %s: %s", k1, k2, out);
    free(out);
    printf("test_chatctl_delivery: chatctl send to the member's msg frame in %lld ms (process start included)\n",
           (long long)latency);
    fflush(stdout);

    ck_assert_msg(ws_client_shutdown(a, 5000) == CHAT_OK, "close handshake not answered");
    ck_assert_msg(ws_client_shutdown(b, 5000) == CHAT_OK, "close handshake not answered");
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, "test_chatctl_delivery");
    return test_run_core(&stack, "chatctl_delivery", 90, NULL, NULL, NULL,
                         (const TTest *const[]){backend_post_reaches_members, NULL});
}
