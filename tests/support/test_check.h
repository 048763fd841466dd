/* Check glue shared by the integration tests: the runner of a test program's suite, and a
 * connection as a user that fails the test when it does not come up. Include after <check.h>. */
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

#endif
