/* Check glue shared by the integration tests: the runner of a test program's suite, a connection
 * as a user and a conversation made by chatctl, each failing the test when it does not come up.
 * Include after <check.h>. */
#ifndef TEST_CHECK_H
#define TEST_CHECK_H
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "test_stack.h"

/* Runs s (verbose), frees the stack; the exit status of main(). */
static inline int test_run_suite(test_stack *st, Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_VERBOSE);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    test_stack_free(st);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* The usual test program: one TCase "core" of the tests (a NULL-terminated list), with the timeout
 * and the fixtures given (each may be NULL), in a suite called name; runs it as test_run_suite. */
static inline int test_run_core(test_stack *st, const char *name, int timeout_s, SFun checked_setup,
                                SFun checked_teardown, SFun unchecked_teardown, const TTest *const *tests)
{
    Suite *s = suite_create(name);
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, timeout_s);
    if (checked_setup || checked_teardown)
        tcase_add_checked_fixture(tc, checked_setup, checked_teardown);
    if (unchecked_teardown)
        tcase_add_unchecked_fixture(tc, NULL, unchecked_teardown);
    for (int i = 0; tests[i]; i++)
        tcase_add_test(tc, tests[i]);
    suite_add_tcase(s, tc);
    return test_run_suite(st, s);
}

/* test_stack_connect as user; the test fails unless the first frame is hello. */
static inline ws_client *test_connect_user(const test_stack *st, const char *user)
{
    ws_client *c = NULL;
    json_t *hello = NULL;
    char why[600];
    ck_assert_msg(test_stack_connect(st, user, 10000, &c, &hello, why, sizeof why) == CHAT_OK, "%s", why);
    const char *type = test_str(hello, "type");
    ck_assert_msg(type && strcmp(type, "hello") == 0, "first frame is not hello: %s", test_json(hello));
    json_decref(hello);
    return c;
}

/* chatctl conv create conv u1 u2 (u2 may be NULL: u1 alone); the test fails unless it succeeds. */
static inline void test_conv_create(const test_stack *st, const char *conv, const char *u1, const char *u2)
{
    char *out = NULL;
    int rc = test_stack_chatctl(st, &out, "conv", "create", conv, u1, u2, NULL);
    ck_assert_msg(rc == 0, "chatctl conv create %s %s %s exited %d: %s", conv, u1, u2 ? u2 : "", rc, out ? out : "");
    free(out);
}

#endif
