/* Durations: the forms settings use, and everything else refused. */
#include <check.h>
#include <stdlib.h>

#include "chat_duration.h"
#include "unit_run.h"

static const struct {
    const char *text;
    int64_t ms;
} good[] = {
    {"250ms", 250}, {"30s", 30000}, {"5m", 300000}, {"12h", 43200000}, {"30d", 2592000000LL},
    {"1w", 604800000}, {"1h30m", 5400000}, {"1m", 60000}, {"7d", 604800000},
};
static const char *bad[] = {"", "30", "d", "5 m", "-5m", "0s", "5y", "1.5h", "m5", "99999999999999999999d", NULL};

START_TEST(parses_good)
{
    int64_t ms = -1;
    ck_assert_int_eq(chat_duration_parse(good[_i].text, &ms), CHAT_OK);
    ck_assert_int_eq(ms, good[_i].ms);
}
END_TEST

START_TEST(refuses_bad)
{
    int64_t ms = 42;
    for (int i = 0; bad[i]; i++) {
        ck_assert_msg(chat_duration_parse(bad[i], &ms) == CHAT_ERR_INVALID, "accepted \"%s\"", bad[i]);
        ck_assert_int_eq(ms, 42);
    }
    ck_assert_int_eq(chat_duration_parse(NULL, &ms), CHAT_ERR_INVALID);
}
END_TEST

START_TEST(formats_round_trip)
{
    char buf[64];
    chat_duration_format(5400000, buf, sizeof buf);
    ck_assert_str_eq(buf, "1h30m");
    chat_duration_format(604800000, buf, sizeof buf);
    ck_assert_str_eq(buf, "7d");
    chat_duration_format(0, buf, sizeof buf);
    ck_assert_str_eq(buf, "0ms");
    int64_t ms;
    chat_duration_format(93784005, buf, sizeof buf);
    ck_assert_int_eq(chat_duration_parse(buf, &ms), CHAT_OK);
    ck_assert_int_eq(ms, 93784005);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_duration");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, parses_good, 0, (int)(sizeof good / sizeof good[0]));
    tcase_add_test(tc, refuses_bad);
    tcase_add_test(tc, formats_round_trip);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
