/* NATS helpers: subjects are built or refused whole (credentials in URLs: test_chat_redact.c). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat_nats.h"
#include "unit_run.h"

START_TEST(subjects)
{
    char buf[64];
    ck_assert(chat_subject_in(buf, sizeof buf, 3, "conv-1"));
    ck_assert_str_eq(buf, "chat.in.3.conv-1");
    ck_assert(chat_subject_deliver(buf, sizeof buf, "alice"));
    ck_assert_str_eq(buf, "chat.deliver.u.alice");
    ck_assert(chat_subject_event(buf, sizeof buf, "c"));
    ck_assert_str_eq(buf, "chat.evt.c");
    char small[12];
    ck_assert(!chat_subject_deliver(small, sizeof small, "alice"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_nats");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, subjects);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
