/* The workers' one SQLSTATE classifier: each class by the codes the api role and the ingest act
 * on (the session gone, the server going away, busy, the values' fault, anything else). */
#include <check.h>
#include <stdlib.h>

#include "unit_run.h"
#include "wk_pg.h"

START_TEST(classes)
{
    const struct {
        const char *state;
        wk_pg_failure want;
    } cases[] = {
        {"08006", WK_PG_GONE},     {"08003", WK_PG_GONE},     {"57P01", WK_PG_GONE},     {"57P05", WK_PG_GONE},
        {"57P02", WK_PG_SHUTDOWN}, {"57P03", WK_PG_SHUTDOWN}, {"57P04", WK_PG_SHUTDOWN}, {"57014", WK_PG_BUSY},
        {"40001", WK_PG_BUSY},     {"40P01", WK_PG_BUSY},     {"55P03", WK_PG_BUSY},     {"22P02", WK_PG_DATA},
        {"22021", WK_PG_DATA},     {"23505", WK_PG_DATA},     {"23514", WK_PG_DATA},     {"54000", WK_PG_DATA},
        {"53100", WK_PG_OTHER},    {"25006", WK_PG_OTHER},    {"55000", WK_PG_OTHER},    {"57000", WK_PG_OTHER},
        {"40000", WK_PG_OTHER},    {"XX000", WK_PG_OTHER},    {"42P01", WK_PG_OTHER},    {"", WK_PG_OTHER},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_msg(wk_pg_failure_of(cases[i].state) == cases[i].want, "%s: %d, not %d", cases[i].state,
                      (int)wk_pg_failure_of(cases[i].state), (int)cases[i].want);
    ck_assert_int_eq(wk_pg_failure_of(NULL), WK_PG_OTHER);
}
END_TEST

/* No result and no connection: the session is gone, with no SQLSTATE. */
START_TEST(error_without_connection)
{
    wk_pg_error e;
    wk_pg_error_of(NULL, NULL, &e);
    ck_assert_int_eq(e.failure, WK_PG_GONE);
    ck_assert_str_eq(e.sqlstate, "");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wk_pg");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, classes);
    tcase_add_test(tc, error_without_connection);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
