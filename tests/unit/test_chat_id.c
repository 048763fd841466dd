/* Identifiers: 1-64 of [A-Za-z0-9_-]; never a NATS wildcard or separator. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat_id.h"
#include "unit_run.h"

START_TEST(accepts)
{
    ck_assert(chat_id_valid("a"));
    ck_assert(chat_id_valid("Alice_42-x"));
    char max[65];
    memset(max, 'z', 64);
    max[64] = '\0';
    ck_assert(chat_id_valid(max));
}
END_TEST

START_TEST(refuses)
{
    const char *bad[] = {"", "a.b", "*", ">", "a b", "a/b", "é", "a\nb", "conv*", "x>", NULL};
    for (int i = 0; bad[i]; i++)
        ck_assert_msg(!chat_id_valid(bad[i]), "accepted \"%s\"", bad[i]);
    ck_assert(!chat_id_valid(NULL));
    char long_id[66];
    memset(long_id, 'z', 65);
    long_id[65] = '\0';
    ck_assert(!chat_id_valid(long_id));
    ck_assert(!chat_id_valid_n("abc", 0));
    ck_assert(chat_id_valid_n("abc.def", 3));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_id");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, accepts);
    tcase_add_test(tc, refuses);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
