/* NATS helpers: credentials never reach a log line; subjects are built or refused whole. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat_nats.h"
#include "unit_run.h"

START_TEST(redacts_credentials)
{
    char out[256];
    chat_nats_redact("nats://gw:s3cret@10.0.0.1:4222,nats://10.0.0.2:4222,tls://u:p@h:1", out, sizeof out);
    ck_assert_str_eq(out, "nats://***@10.0.0.1:4222,nats://10.0.0.2:4222,tls://***@h:1");
    ck_assert_ptr_null(strstr(out, "s3cret"));
    chat_nats_redact("nats://127.0.0.1:4222", out, sizeof out);
    ck_assert_str_eq(out, "nats://127.0.0.1:4222");
    char tiny[8];
    chat_nats_redact("nats://user:password@host:1", tiny, sizeof tiny);
    ck_assert_ptr_null(strstr(tiny, "pass"));
    ck_assert_uint_lt(strlen(tiny), sizeof tiny);
}
END_TEST

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
    tcase_add_test(tc, redacts_credentials);
    tcase_add_test(tc, subjects);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
