/* chat_redact: no password, token or secret of a URL or DSN survives into printed text. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "chat_redact.h"
#include "unit_run.h"

START_TEST(url_lists)
{
    char out[256];
    chat_redact_url("nats://gw:s3cret@10.0.0.1:4222,nats://10.0.0.2:4222,tls://u:p@h:1", out, sizeof out);
    ck_assert_str_eq(out, "nats://***@10.0.0.1:4222,nats://10.0.0.2:4222,tls://***@h:1");
    chat_redact_url("nats://127.0.0.1:4222", out, sizeof out);
    ck_assert_str_eq(out, "nats://127.0.0.1:4222");
    chat_redact_url("nats://tok3n@h:4222", out, sizeof out); /* a token alone is the secret */
    ck_assert_str_eq(out, "nats://***@h:4222");
    chat_redact_url("redis://:s3cret@127.0.0.1:6379/2", out, sizeof out);
    ck_assert_str_eq(out, "redis://***@127.0.0.1:6379/2");
    chat_redact_url("redis://u:p@ss@h:1", out, sizeof out); /* an '@' inside the password */
    ck_assert_str_eq(out, "redis://***@h:1");
    chat_redact_url("redis://gateway:s3cret@redis:6379/0", out, sizeof out); /* an ACL user and its password */
    ck_assert_str_eq(out, "redis://***@redis:6379/0");
    chat_redact_url("redis:s3cret@h", out, sizeof out); /* malformed: still masked */
    ck_assert_ptr_null(strstr(out, "s3cret"));
}
END_TEST

START_TEST(url_queries)
{
    char out[256];
    chat_redact_url("https://hooks.example/p?x=1&token=abc&Api_Key=k1&sig=zz#frag", out, sizeof out);
    ck_assert_str_eq(out, "https://hooks.example/p?x=1&token=***&Api_Key=***&sig=***#frag");
    chat_redact_url("postgresql://chat:pw@db/chat?sslmode=require&password=pw2", out, sizeof out);
    ck_assert_str_eq(out, "postgresql://***@db/chat?sslmode=require&password=***");
    chat_redact_url("http://h/a@b", out, sizeof out); /* an '@' in the path is no user information */
    ck_assert_str_eq(out, "http://h/a@b");
}
END_TEST

START_TEST(url_cut_short)
{
    char tiny[8];
    chat_redact_url("nats://user:password@host:1", tiny, sizeof tiny);
    ck_assert_ptr_null(strstr(tiny, "pass"));
    ck_assert_uint_lt(strlen(tiny), sizeof tiny);
    char small[24];
    chat_redact_url("http://h/?token=0123456789abcdef", small, sizeof small);
    ck_assert_ptr_null(strstr(small, "0123"));
}
END_TEST

START_TEST(dsns)
{
    char out[256];
    chat_redact_dsn("host=127.0.0.1 port=5433 dbname=chat user=chat password=s3cret", out, sizeof out);
    ck_assert_ptr_null(strstr(out, "s3cret"));
    ck_assert_ptr_nonnull(strstr(out, "password=***"));
    ck_assert_ptr_nonnull(strstr(out, "host=127.0.0.1"));
    ck_assert_ptr_nonnull(strstr(out, "user=chat"));
    chat_redact_dsn("host=h password='a b\\'c' sslpassword=k3y", out, sizeof out);
    ck_assert_ptr_null(strstr(out, "a b"));
    ck_assert_ptr_null(strstr(out, "k3y"));
    chat_redact_dsn("postgresql://chat:s3cret@db:5432/chat?sslmode=require", out, sizeof out);
    ck_assert_ptr_null(strstr(out, "s3cret"));
    ck_assert_ptr_nonnull(strstr(out, "host=db"));
    ck_assert_ptr_nonnull(strstr(out, "sslmode=require"));
    chat_redact_dsn("host=h password=s3cret port", out, sizeof out); /* malformed */
    ck_assert_ptr_null(strstr(out, "s3cret"));
    ck_assert_str_eq(out, "(malformed connection string, not shown)");
}
END_TEST

START_TEST(pq_messages)
{
    char out[256];
    chat_redact_pq_message("missing \"=\" after \"s3cret\" in connection info string", out, sizeof out);
    ck_assert_str_eq(out, "missing \"=\" after \"***\" in connection info string");
    chat_redact_pq_message("invalid connection option \"sslmode\"", out, sizeof out);
    ck_assert_str_eq(out, "invalid connection option \"sslmode\"");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chat_redact");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, url_lists);
    tcase_add_test(tc, url_queries);
    tcase_add_test(tc, url_cut_short);
    tcase_add_test(tc, dsns);
    tcase_add_test(tc, pq_messages);
    suite_add_tcase(s, tc);
    return unit_run(s);
}
