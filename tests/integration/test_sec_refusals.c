/* Refused upgrades per client address (issue 19's gap: each refusal costs a signature check): a
 * gateway of the test's own with CHAT_WS_REFUSED_PER_IP=2 (twenty at once). From 127.0.0.1, twenty
 * bad tokens get 401 each, then every upgrade gets the same 429 whatever its token (a valid one
 * too: the address learns nothing of tokens it tries); 127.0.0.2 is not affected; half a second
 * later 127.0.0.1 gets in again. Against the stack's NATS, PostgreSQL, Redis and worker. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_check.h"
#include "test_ops.h"

#define PROG "test_sec_refusals"

static test_stack stack;

/* The body of an HTTP answer (after the head), for comparing refusals. */
static const char *body_of(const char *resp)
{
    const char *b = strstr(resp, "\r\n\r\n");
    return b ? b + 4 : "";
}

START_TEST(refused_upgrades_per_address)
{
    const char *env[] = {"CHAT_WS_REFUSED_PER_IP=2", NULL};
    test_gateway gw;
    char why[2048];
    ck_assert_msg(test_gateway_spawn(&stack, "refusals", env, &gw, why, sizeof why) == CHAT_OK, "%s", why);
    ck_assert_msg(test_gateway_wait_ready(&gw, false, 20000, why, sizeof why) == CHAT_OK, "%s", why);
    char user[80];
    test_stack_unique_id("refused", user, sizeof user);
    char *good = test_stack_token(&stack, user, 600);
    char *bad = strdup(good);
    bad[strlen(bad) - 2] = bad[strlen(bad) - 2] == 'A' ? 'B' : 'A'; /* a broken signature */
    char resp[4096], limited[4096];

    for (int i = 0; i < 20; i++) {
        int st = test_raw_upgrade("127.0.0.1", gw.port, bad, resp, sizeof resp);
        ck_assert_msg(st == 401, "bad token %d of 20 from 127.0.0.1: HTTP %d, want 401 (%s)", i + 1, st, gw.log);
    }
    int st = test_raw_upgrade("127.0.0.1", gw.port, bad, limited, sizeof limited);
    ck_assert_msg(st == 429, "the 21st bad token from 127.0.0.1: HTTP %d, want 429 (%s)", st, gw.log);
    ck_assert_msg(strstr(body_of(limited), "refused upgrades"), "429 body: %s", body_of(limited));
    /* a valid token from the same address now: the same answer, so trying tokens tells nothing */
    st = test_raw_upgrade("127.0.0.1", gw.port, good, resp, sizeof resp);
    ck_assert_msg(st == 429, "a valid token from the exhausted 127.0.0.1: HTTP %d, want 429", st);
    ck_assert_str_eq(body_of(resp), body_of(limited));
    /* another address is not affected, for bad and good tokens alike */
    st = test_raw_upgrade("127.0.0.2", gw.port, bad, resp, sizeof resp);
    ck_assert_msg(st == 401, "a bad token from 127.0.0.2: HTTP %d, want 401", st);
    st = test_raw_upgrade("127.0.0.2", gw.port, good, resp, sizeof resp);
    ck_assert_msg(st == 101, "a valid token from 127.0.0.2: HTTP %d, want 101", st);
    /* two refusals a second come back: within a second 127.0.0.1 gets in again */
    int64_t t0 = test_mono_ms();
    for (;;) {
        st = test_raw_upgrade("127.0.0.1", gw.port, good, resp, sizeof resp);
        if (st == 101)
            break;
        ck_assert_msg(st == 429, "waiting for 127.0.0.1: HTTP %d", st);
        ck_assert_msg(test_mono_ms() - t0 < 2000, "127.0.0.1 still refused 2 s later");
        usleep(100000);
    }
    printf(PROG ": 127.0.0.1 admitted again %lld ms after it was limited\n", (long long)(test_mono_ms() - t0));
    /* the refusals are counted: 20 under reason="auth", the 429s (at least 2) under reason="limit" */
    char body[65536];
    ck_assert_int_eq(test_ops_http_get(gw.listen, "/metrics", body, sizeof body, 3000), 200);
    const char *key = "chat_gateway_refused_total{reason=\"limit\"} ";
    const char *at = strstr(body, key);
    ck_assert_msg(at && atof(at + strlen(key)) >= 2, "refusals for the limit not counted: %s", at ? at : "(none)");
    free(good);
    free(bad);
    test_gateway_stop(&gw, 5000);
}
END_TEST

int main(void)
{
    test_stack_load_or_exit(&stack, PROG);
    test_ops_init(PROG);
    Suite *s = suite_create("sec_refusals");
    TCase *tc = tcase_create("refusals");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, refused_upgrades_per_address);
    suite_add_tcase(s, tc);
    int failed = test_ops_run(s);
    test_stack_free(&stack);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
