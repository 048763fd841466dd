/* chat_log: level names, and the cleaner that keeps a quoted log field on one line. */
#include <check.h>
#include <string.h>

#include "chat_log.h"
#include "unit_run.h"

START_TEST(clean_field)
{
    char s[] = "ERROR:  relation \"x\" does not exist\nLINE 1:\r\tSELECT";
    chat_log_clean(s);
    ck_assert_str_eq(s, "ERROR:  relation  x  does not exist LINE 1:  SELECT");
    char empty[] = "";
    chat_log_clean(empty);
    ck_assert_str_eq(empty, "");
    char plain[] = "a=b \\ 'c'"; /* backslashes and single quotes do not break a field */
    chat_log_clean(plain);
    ck_assert_str_eq(plain, "a=b \\ 'c'");
}
END_TEST

START_TEST(level_names)
{
    ck_assert_int_eq(chat_log_level_parse("error"), CHAT_LOG_ERROR);
    ck_assert_int_eq(chat_log_level_parse("debug"), CHAT_LOG_DEBUG);
    ck_assert_int_eq(chat_log_level_parse("verbose"), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_log");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, clean_field);
    tcase_add_test(tc, level_names);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
